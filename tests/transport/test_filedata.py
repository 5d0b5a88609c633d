"""georep.transport.filedata.read_small on real files: what a small file's SmallFile carries."""

from __future__ import annotations

import os
from pathlib import Path

from georep.protocol.digest import ExtentDigest
from georep.transport.filedata import read_small


def _small(path: Path) -> tuple[list[tuple[int, bytes]], int, bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        msg, carried = read_small(1, fd, st, st.st_mtime_ns)
    finally:
        os.close(fd)
    extents = [(int(off), bytes(data)) for off, data in msg.extents]  # type: ignore[call-overload]
    return extents, carried, msg.digest


def test_a_dense_small_file_is_one_extent(tmp_path: Path) -> None:
    data = os.urandom(12_345)
    (tmp_path / "f").write_bytes(data)
    extents, carried, digest = _small(tmp_path / "f")
    assert extents == [(0, data)] and carried == len(data)
    d = ExtentDigest()
    d.update(0, data)
    assert digest == d.finish(len(data))


def test_a_small_file_with_a_hole_keeps_it(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.truncate(16 * 1024)
        f.seek(12 * 1024)
        f.write(b"island")
    st = os.stat(tmp_path / "f")
    assert st.st_blocks * 512 < st.st_size  # the filesystem kept the hole (ext4 does)
    extents, carried, digest = _small(tmp_path / "f")
    assert extents == [(12 * 1024, b"island" + b"\0" * (4096 - 6))] or extents == [(12 * 1024, b"island")]
    assert carried < 8 * 1024
    d = ExtentDigest()
    for off, piece in extents:
        d.update(off, piece)
    assert digest == d.finish(st.st_size)


def test_an_empty_file_has_no_extent(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    assert _small(tmp_path / "f")[:2] == ([], 0)

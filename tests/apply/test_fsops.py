"""georep.apply.fsops on a real filesystem: publishing under a free name, writing around the page cache."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from georep.apply import fsops


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[int, int, Path, Path]]:
    src, dst = tmp_path / "staging", tmp_path / "dir"
    src.mkdir()
    dst.mkdir()
    sfd, dfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY), os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    yield sfd, dfd, src, dst
    os.close(sfd)
    os.close(dfd)


def test_renameat2_is_there_on_this_machine() -> None:
    # the fast path is what this test file is about: a libc without it would test only the fallback
    assert fsops._RENAMEAT2 is not None


def test_a_free_name_takes_the_file(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is True
    assert (dst / "f").read_bytes() == b"new"
    assert not (src / "tmp").exists()


def test_a_taken_name_is_left_as_it_was(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    (dst / "f").write_bytes(b"old")
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is False
    assert (dst / "f").read_bytes() == b"old"
    assert (src / "tmp").read_bytes() == b"new"


def test_a_symlink_in_the_way_is_a_taken_name_never_followed(dirs: tuple[int, int, Path, Path],
                                                             tmp_path: Path) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    os.symlink(tmp_path / "elsewhere", dst / "f")  # dangling: a rename through it would create "elsewhere"
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is False
    assert os.path.islink(dst / "f")
    assert not (tmp_path / "elsewhere").exists()
    assert (src / "tmp").read_bytes() == b"new"


def test_other_errors_are_raised(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, _src, _dst = dirs
    with pytest.raises(FileNotFoundError):
        fsops.rename_noreplace_at(sfd, b"missing", dfd, b"f")


# -- DirectWriter: large files around the page cache ------------------------------------------

MIB = 1 << 20


def _cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, as util-linux's fincore reports them."""

    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def _fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def _o_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_a_file_sent_front_to_back_is_written_around_the_page_cache(tmp_path: Path) -> None:
    data = os.urandom(32 * MIB + 12_345)  # an unaligned tail
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = fsops.DirectWriter(fd)
        assert w.direct and _o_direct(fd)
        pos = 0
        for size in itertools.cycle((100_000, 256 * 1024, 7, 3 * MIB)):  # chunks across block edges
            piece = data[pos:pos + size]
            if not piece:
                break
            w.write(pos, piece)
            pos += len(piece)
        assert w.direct  # never fell back
        w.finish()
        assert not _o_direct(fd)  # what follows (fchmod, utime, rename) sees a plain fd
    finally:
        os.close(fd)
    if _fs_type(tmp_path) != "tmpfs":  # tmpfs keeps every file in the page cache: nothing to go around
        assert _cached_bytes(path) <= 2 * MIB  # at most the tail went through the cache
    assert path.read_bytes() == data


def test_a_hole_turns_the_file_into_plain_writes_with_the_same_content(tmp_path: Path) -> None:
    head, tail = os.urandom(MIB + MIB // 2), os.urandom(MIB)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = fsops.DirectWriter(fd)
        w.write(0, head)
        w.write(3 * MIB, tail)  # the sender skipped a hole
        assert not w.direct and not _o_direct(fd)
        w.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == head + b"\0" * (3 * MIB - len(head)) + tail


def test_a_discarded_file_releases_its_buffers_and_writes_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = fsops.DirectWriter(fd)
        w.write(0, os.urandom(2 * MIB + 5))  # one block in flight, one in the buffer
        w.close()
        assert w._bufs == [] and w._pending is None
    finally:
        os.close(fd)
    assert path.stat().st_size <= 2 * MIB  # the buffered tail was never written


def test_a_filesystem_without_noreplace_is_asked_once(dirs: tuple[int, int, Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL (no RENAME_NOREPLACE there) makes every later publish take the general path at once."""

    sfd, dfd, src, _dst = dirs
    calls = []

    def refusing(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(fsops, "_RENAMEAT2", refusing)
    (src / "a").write_bytes(b"1")
    (src / "b").write_bytes(b"2")
    assert fsops.rename_noreplace_at(sfd, b"a", dfd, b"a") is False
    assert fsops.rename_noreplace_at(sfd, b"b", dfd, b"b") is False
    assert len(calls) == 1
    assert (src / "a").exists() and (src / "b").exists()  # nothing moved: the caller renames

"""georep.transport.filedata on real files: what a small file's SmallFile carries, and the batch
reader (`read_small_files`) with its native twin side by side."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import passthrough
import pytest

from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.session import Role, Session
from georep.transport import filedata
from georep.transport.channel import PipeChannel
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


# -- read_small_files: the native reader and its twin, side by side ------------------------

TWIN = filedata.read_small_files_py
NATIVE = filedata._native_read
needs_native = pytest.mark.skipif(NATIVE is None, reason="georep._native.read_small_files is not built here "
                                                        "(tests/setup-machine.sh installs libxxhash-dev for it)")


def _digest(data: bytes, size: int) -> bytes:
    d = ExtentDigest()
    if size:
        d.update(0, data)
    return d.finish(size)


def _native(paths: list[bytes], limit: int = filedata.SMALL_FILE) -> list[filedata.SmallRead]:
    assert NATIVE is not None
    result: list[filedata.SmallRead] = NATIVE(paths, limit)
    return result


@pytest.fixture
def odd_tree(tmp_path: Path) -> list[bytes]:
    """Paths of every kind the reader must tell apart, in a fixed order."""

    sizes = [0, 1, 4095, 4096, 12_345, filedata.SMALL_FILE, filedata.SMALL_FILE + 1]
    for size in sizes:
        (tmp_path / f"f{size}").write_bytes(os.urandom(size))
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(64 * 1024)
        f.seek(60 * 1024)
        f.write(b"island")
    os.symlink("f1", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    names = [f"f{size}" for size in sizes] + ["sparse", "link", "fifo", "dir", "missing"]
    return [os.fsencode(tmp_path / n) for n in names]


@needs_native
def test_native_reader_and_twin_agree_on_every_kind_of_path(odd_tree: list[bytes]) -> None:
    assert _native(odd_tree) == TWIN(odd_tree)


@pytest.mark.parametrize("read", [TWIN, pytest.param(_native, marks=needs_native)], ids=["twin", "native"])
def test_what_the_reader_finds(odd_tree: list[bytes], read: Callable[[list[bytes]], list[filedata.SmallRead]]) -> None:
    found = dict(zip([os.path.basename(p).decode() for p in odd_tree], read(odd_tree), strict=True))
    for name, (status, err, size, mtime_ns, data, digest, stable) in found.items():
        path = os.path.join(os.path.dirname(odd_tree[0]), os.fsencode(name))
        if name[0] == "f" and name[1:].isdigit() and int(name[1:]) <= filedata.SMALL_FILE:
            st = os.stat(path)
            content = open(path, "rb").read()  # noqa: SIM115 - read once, closed by refcount
            assert (status, err, size, mtime_ns, data, stable) == (filedata.READ, 0, st.st_size, st.st_mtime_ns,
                                                                   content, True), name
            assert digest == _digest(content, size), name
        else:
            assert (size, mtime_ns, data, digest, stable) == (0, 0, b"", b"", False), name
    assert found[f"f{filedata.SMALL_FILE + 1}"][:2] == (filedata.NOT_SMALL, 0)
    if os.stat(odd_tree[7]).st_blocks * 512 < 64 * 1024:  # the filesystem kept the hole
        assert found["sparse"][:2] == (filedata.NOT_SMALL, 0)
    assert found["link"][:2] == (filedata.OPEN_FAILED, errno.ELOOP)  # a symlink is never followed
    assert found["fifo"][:2] == (filedata.NOT_REGULAR, 0)  # and opening it did not hang
    assert found["dir"][:2] == (filedata.NOT_REGULAR, 0)
    assert found["missing"][:2] == (filedata.OPEN_FAILED, errno.ENOENT)


@needs_native
def test_native_reader_agrees_with_its_twin_on_many_files(tmp_path: Path) -> None:
    paths = []
    for i in range(filedata.READ_BATCH):
        (tmp_path / str(i)).write_bytes(os.urandom(i * 97))
        paths.append(os.fsencode(tmp_path / str(i)))
    assert _native(paths) == TWIN(paths)
    assert _native(paths, limit=1000) == TWIN(paths, limit=1000)  # the limit is the caller's


def test_one_call_reads_a_bounded_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most"):
        filedata.read_small_files([os.fsencode(tmp_path / "x")] * (filedata.READ_BATCH + 1))


class FifoSwapped(passthrough.Passthrough):
    """When the agent first asks for data, the file it asks for becomes a FIFO."""

    def __init__(self, inner: PipeChannel, victim: Path) -> None:
        super().__init__(inner)
        self.victim = victim
        self.seen = Session(Role.SENDER)  # a passive decoder of the agent's stream

    async def from_agent(self, data: bytes) -> None:
        for msg in self.seen.receive(data):
            if isinstance(msg, m.Results) and any(r.status == m.NEED for r in msg.items) and self.victim.is_file():
                self.victim.unlink()
                os.mkfifo(self.victim)


@pytest.mark.parametrize("listed", [16, filedata.SMALL_FILE + 1], ids=["small: read in a batch", "large: read alone"])
def test_a_file_that_became_a_fifo_fails_alone_and_does_not_hang_the_copy(tmp_path: Path, listed: int) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "victim").write_bytes(b"x" * listed)  # listed as a file
    (src / "other").write_bytes(b"sent as usual")
    summary, _chan = asyncio.run(asyncio.wait_for(
        passthrough.replicate(src, dst, state, lambda chan: FifoSwapped(chan, src / "victim")), 60))
    assert [(p.path, p.code) for p in summary.problems] == [(os.fsencode(src / "victim"), "agent")]
    assert "no regular file any more on the source" in summary.problems[0].cause
    assert (dst / "other").read_bytes() == b"sent as usual"
    assert not (dst / "victim").exists()

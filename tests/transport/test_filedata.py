"""georep.transport.filedata on real files: what a small file's SmallFile carries, and the batch
reader (`read_small_frame`) with its pure-Python twin side by side."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import passthrough
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import FrameDecoder
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


# -- read_small_files_py: the reading half of the twin -----------------------------------------

TWIN = filedata.read_small_files_py


def _digest(data: bytes, size: int) -> bytes:
    d = ExtentDigest()
    if size:
        d.update(0, data)
    return d.finish(size)


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


def test_what_the_reader_finds(odd_tree: list[bytes]) -> None:
    found = dict(zip([os.path.basename(p).decode() for p in odd_tree], TWIN(odd_tree), strict=True))
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


# -- read_small_frame: files read straight into a Blobs frame, native and twin ---------------

NATIVE_FRAME = filedata._native_frame
needs_native_frame = pytest.mark.skipif(NATIVE_FRAME is None, reason="georep._native.read_small_frame is not "
                                        "built here (tests/setup-machine.sh installs libxxhash-dev for it)")


def _native_frame(items: list[filedata.FrameItem], limit: int = filedata.SMALL_FILE,
                  budget: int = filedata.CHUNK_SIZE) -> tuple[bytes, list[filedata.Found]]:
    assert NATIVE_FRAME is not None
    done: tuple[bytes, list[filedata.Found]] | None = NATIVE_FRAME(items, limit, budget, m.Blobs.KIND)
    assert done is not None  # no read failed
    return done


def _as_listed(path: bytes, seq: int, publish: int = 1_234_567) -> filedata.FrameItem:
    """An item for ``path`` as a crawl would list it now (size and mtime from lstat)."""

    st = os.lstat(path)
    return (path, seq, st.st_size, st.st_mtime_ns, publish)


def _blobs(frame: bytes) -> list[m.SmallFile]:
    msgs = FrameDecoder().feed(frame)
    assert len(msgs) == 1 and isinstance(msgs[0], m.Blobs)
    return msgs[0].files


@needs_native_frame
def test_native_frame_and_twin_agree_on_every_kind_of_path(odd_tree: list[bytes]) -> None:
    items = [_as_listed(p, seq) if os.path.lexists(p) else (p, seq, 0, 0, 9) for seq, p in enumerate(odd_tree, 1)]
    items[2] = (items[2][0], items[2][1], items[2][2] + 1, items[2][3], items[2][4])  # not as listed: found mtime
    assert _native_frame(items) == filedata.read_small_frame_py(items)


@pytest.mark.parametrize("read", [filedata.read_small_frame_py, pytest.param(_native_frame, marks=needs_native_frame)],
                         ids=["twin", "native"])
def test_what_the_frame_holds(odd_tree: list[bytes], read: Callable[..., tuple[bytes, list[filedata.Found]]]
                              ) -> None:
    items = [_as_listed(p, seq) if os.path.lexists(p) else (p, seq, 0, 0, 9) for seq, p in enumerate(odd_tree, 1)]
    frame, found = read(items)
    by_name = dict(zip([os.path.basename(p).decode() for p in odd_tree], found, strict=True))
    small = [f"f{n}" for n in (0, 1, 4095, 4096, 12_345, filedata.SMALL_FILE)]
    for name in small:
        content = open(os.path.join(os.path.dirname(odd_tree[0]), os.fsencode(name)), "rb").read()  # noqa: SIM115
        assert by_name[name] == (filedata.READ, 0, True, len(content), len(content), 1_234_567), name
    files = _blobs(frame)
    assert [f.seq for f in files] == [seq for seq, p in enumerate(odd_tree, 1)
                                      if os.path.basename(p).decode() in small]
    for f in files:
        content = open(odd_tree[f.seq - 1], "rb").read()  # noqa: SIM115
        assert (f.size, f.digest, f.mtime_ns) == (len(content), _digest(content, len(content)), 1_234_567)
        assert f.extents == ([[0, content]] if content else [])
    assert by_name[f"f{filedata.SMALL_FILE + 1}"][:2] == (filedata.NOT_SMALL, 0)
    assert by_name["link"][:2] == (filedata.OPEN_FAILED, errno.ELOOP)
    assert by_name["fifo"][:2] == (filedata.NOT_REGULAR, 0)
    assert by_name["missing"][:2] == (filedata.OPEN_FAILED, errno.ENOENT)


@pytest.mark.parametrize("read", [filedata.read_small_frame_py, pytest.param(_native_frame, marks=needs_native_frame)],
                         ids=["twin", "native"])
def test_a_frame_stops_at_its_budget_and_the_rest_is_later(tmp_path: Path,
                                                            read: Callable[..., tuple[bytes, list[filedata.Found]]]
                                                            ) -> None:
    items = []
    for i in range(10):
        (tmp_path / str(i)).write_bytes(os.urandom(1000))
        items.append(_as_listed(os.fsencode(tmp_path / str(i)), 100 + i))
    frame, found = read(items, budget=2500)  # 3 files: 0, 1000 and 2000 bytes were packed before them
    assert [f[0] for f in found] == [filedata.READ] * 3 + [filedata.LATER] * 7
    assert [f.seq for f in _blobs(frame)] == [100, 101, 102]
    assert read([], budget=2500) == (b"", [])


@needs_native_frame
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.sampled_from([0, 1, 127, 255, 256, 4096, 65_535, 65_536, 70_000]), max_size=24),
       seq=st.integers(0, 2**63 - 1 - 24), publish=st.integers(-(2**63), 2**63 - 1),
       budget=st.integers(0, 300_000), listed_as_found=st.booleans())
def test_native_frame_is_the_twins_byte_for_byte(tmp_path: Path, sizes: list[int], seq: int, publish: int,
                                                  budget: int, listed_as_found: bool) -> None:
    """Every msgpack size class (fixint to 64-bit, bin8/16/32, fixarray/array16), every budget."""

    d = tmp_path / os.urandom(4).hex()
    d.mkdir()
    items = []
    for i, size in enumerate(sizes):
        path = os.fsencode(d / str(i))
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        item = _as_listed(path, seq + i, publish)
        items.append(item if listed_as_found else (path, seq + i, item[2], item[3] - 1, publish))
    assert _native_frame(items, budget=budget) == filedata.read_small_frame_py(items, budget=budget)


@needs_native_frame
def test_files_shrinking_while_read_still_make_valid_frames(tmp_path: Path) -> None:
    """A short read moves the data up behind a shorter bin header: the frame decodes, each digest holds.

    Files are cut from 70,000 bytes (a bin32) to 100 (a bin8) and rewritten while frames are
    read; some reads come up short, with either size class.
    """

    paths = [os.fsencode(tmp_path / str(i)) for i in range(16)]
    big = os.urandom(70_000)
    for p in paths:
        Path(os.fsdecode(p)).write_bytes(big)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for p in paths:
                os.truncate(p, 100)
                with open(p, "r+b") as f:
                    f.write(big)

    shorts: list[int] = []
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline or not any(n < 256 for n in shorts):
            assert time.monotonic() < deadline + 10, f"no short read below 256 bytes in 10 s: {shorts[:20]}"
            frame, found = _native_frame([(p, i, 70_000, 0, 0) for i, p in enumerate(paths)], budget=2**40)
            if not frame:
                continue
            for f in _blobs(frame):
                data = f.extents[0][1] if f.extents else b""
                assert isinstance(data, bytes)
                assert f.digest == _digest(data, f.size)
                assert found[f.seq][3] == len(data)
                if len(data) < f.size:
                    shorts.append(len(data))
    finally:
        stop.set()
        worker.join()


def test_one_frame_reads_a_bounded_batch_into_some_room(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most"):
        filedata.read_small_frame([(os.fsencode(tmp_path / "x"), 1, 0, 0, 0)] * (filedata.READ_BATCH + 1))
    with pytest.raises(ValueError, match="budget"):
        filedata.read_small_frame([(os.fsencode(tmp_path / "x"), 1, 0, 0, 0)], budget=0)


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

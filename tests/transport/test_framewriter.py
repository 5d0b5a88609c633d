"""georep.transport.framewriter: what reaches the channel, in which writes, and in which order.

The channel here only records the writes it is handed (the transport is not what is
tested); every byte written is decoded back with the protocol's own `FrameDecoder`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from georep.errors import ConnectionLost
from georep.model import Summary
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE, FrameDecoder
from georep.protocol.session import Role, Session
from georep.transport.filedata import SMALL_FILE, BlobPacker, open_source
from georep.transport.framewriter import WRITE_BATCH, FrameWriter


class Recorder:
    """The writes a channel was handed, as they were handed (the same objects)."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes.append(data)

    def messages(self) -> list[m.Message]:
        return FrameDecoder().feed(b"".join(self.writes))


def _writer(rec: Recorder) -> FrameWriter:
    return FrameWriter(rec, Session(Role.SENDER), lambda exc: ConnectionLost(f"test channel broke: {exc}"))  # type: ignore[arg-type]


async def _no_drain() -> None:
    return None


def test_small_frames_are_gathered_and_go_in_order_once_flushed() -> None:
    rec = Recorder()
    out = _writer(rec)
    sent = [m.Ping(i) for i in range(100)]
    for msg in sent:
        out.send(msg)
    assert rec.writes == [] and out.queued  # far below WRITE_BATCH: nothing handed over yet
    out.flush()
    assert len(rec.writes) == 1 and not out.queued
    assert rec.messages() == sent


def test_the_queue_goes_out_by_itself_once_it_holds_a_write_batch() -> None:
    rec = Recorder()
    out = _writer(rec)
    n = 0
    while not rec.writes:
        out.send(m.DataAbort(n, "x" * 1000))
        n += 1
    assert len(rec.writes[0]) >= WRITE_BATCH and not out.queued
    assert [msg.seq for msg in rec.messages()] == list(range(n))  # type: ignore[attr-defined]


def test_a_big_frame_goes_as_it_is_behind_what_was_queued() -> None:
    rec = Recorder()
    out = _writer(rec)
    out.send(m.Ping(1))
    big = out.session.send(m.Blobs([m.SmallFile(7, WRITE_BATCH, [[0, b"b" * WRITE_BATCH]], b"d" * 16, 5)]))
    out.write(big)
    out.send(m.Ping(2))
    out.flush()
    assert rec.writes[1] is big  # not copied through the queue
    got = rec.messages()
    assert [type(msg) for msg in got] == [m.Ping, m.Blobs, m.Ping]
    assert got[0] == m.Ping(1) and got[2] == m.Ping(2)


def test_chunk_data_is_handed_over_as_read_behind_its_header() -> None:
    rec = Recorder()
    out = _writer(rec)
    out.send(m.DataBegin(3, 10))
    data = os.urandom(10)
    out.write_chunk(3, 0, data)
    assert rec.writes[-1] is data
    assert rec.messages() == [m.DataBegin(3, 10), m.DataChunk(3, 0, data)]


def test_a_failed_write_raises_what_the_owner_says_it_means() -> None:
    out = _writer(Recorder(fail=True))
    out.send(m.Ping(1))
    with pytest.raises(ConnectionLost, match="test channel broke"):
        out.flush()


def _open(path: Path) -> tuple[int, os.stat_result]:
    opened = open_source(os.fsencode(path))
    assert not isinstance(opened, str), opened
    return opened


@pytest.mark.parametrize("size", [0, 5000, SMALL_FILE])
def test_send_whole_packs_a_small_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    rec, packer, summary = Recorder(), BlobPacker(), Summary()
    out = _writer(rec)
    fd, st = _open(tmp_path / "f")
    try:
        asyncio.run(out.send_whole(9, fd, st, 123, packer, summary, _no_drain))
    finally:
        os.close(fd)
    assert rec.writes == [] and summary.bytes_data == size  # it waits in the packer for company
    blobs = packer.take()
    assert blobs is not None and [f.seq for f in blobs.files] == [9]
    small = blobs.files[0]
    assert small.size == size and small.mtime_ns == 123
    assert b"".join(bytes(d) for _off, d in small.extents) == data  # type: ignore[misc]


def test_send_whole_streams_a_large_file_with_its_holes_left_out(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    head, tail = os.urandom(CHUNK_SIZE + 17), os.urandom(4096)
    with open(path, "wb") as f:
        f.write(head)
        f.seek(64 * CHUNK_SIZE)
        f.write(tail)
    size = 64 * CHUNK_SIZE + len(tail)
    rec, packer, summary = Recorder(), BlobPacker(), Summary()
    packer.add(m.SmallFile(1, 3, [[0, b"abc"]], b"d" * 16, 1))  # a small file gathered before
    drains = 0

    async def drain() -> None:
        nonlocal drains
        drains += 1

    out = _writer(rec)
    fd, st = _open(path)
    try:
        asyncio.run(out.send_whole(2, fd, st, 456, packer, summary, drain))
    finally:
        os.close(fd)
    out.flush()
    got = rec.messages()
    assert isinstance(got[0], m.Blobs) and [f.seq for f in got[0].files] == [1]  # the packer went first
    assert got[1] == m.DataBegin(2, size)
    chunks = [msg for msg in got if isinstance(msg, m.DataChunk)]
    assert drains == len(chunks)  # the channel is drained after every chunk: memory stays bounded
    expect = ExtentDigest()
    for c in chunks:
        expect.update(c.offset, bytes(c.data))
    assert sum(len(c.data) for c in chunks) == summary.bytes_data < size  # the hole was not sent
    assert chunks[-1].offset + len(chunks[-1].data) == size and bytes(chunks[-1].data).endswith(tail)
    end = got[-1]
    assert isinstance(end, m.DataEnd) and end.mtime_ns == 456 and end.digest == expect.finish(size)
    assert packer.take() is None


def test_open_source_says_why_a_name_cannot_be_sent(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block without O_NONBLOCK
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "dir", tmp_path / "link")
    assert open_source(os.fsencode(tmp_path / "missing")) == "cannot open on the source: No such file or directory"
    assert "no regular file" in str(open_source(os.fsencode(tmp_path / "fifo")))
    assert "no regular file" in str(open_source(os.fsencode(tmp_path / "dir")))
    assert str(open_source(os.fsencode(tmp_path / "link"))).startswith("cannot open on the source")  # O_NOFOLLOW

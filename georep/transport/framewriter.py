"""Frames of one session onto its channel: small ones gathered into big writes, file data as it is.

Shared by the main session's sender and every data lane (`georep.transport.lanes`), so
that both write the same way:

* one transport write per small frame costs an SSH packet (a cipher call and a socket
  send) each: 20,000 entries made 40,000 sends.  Frames are queued and written in pieces
  of at least `WRITE_BATCH` bytes; whoever then waits on the agent flushes first
  (`FrameWriter.flush`), so nothing the agent needs stays queued;
* a frame that big by itself (a Blobs of about a chunk) goes as it is, behind what is
  queued: through the queue it was copied twice more (about 0.05 s of CPU per 170 MB);
* file data goes behind its chunk header as read, never packed into a frame: packing
  1 MiB into a msgpack buffer, then a frame, then the queue cost three copies of every
  byte sent (a fifth of the sender's CPU on a large copy).

What a file's data turns into (`FrameWriter.send_whole`) is decided here too: a small
file joins a `Blobs` frame, a bigger one is streamed chunk by chunk.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from georep.model import Summary
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import chunk_header
from georep.protocol.session import Session
from georep.transport.channel import Channel
from georep.transport.filedata import SMALL_FILE, BlobPacker, read_chunks, read_small

#: Frames are queued and written to the transport in pieces of at least this size.
WRITE_BATCH = 64 * 1024

#: Waits until the channel took what was written (flushing first), or raises why it cannot.
Drain = Callable[[], Awaitable[None]]


def streamed(size: int) -> bool:
    """Whether `FrameWriter.send_whole` streams a file of ``size`` bytes (DataBegin first), not packs it."""

    return size > SMALL_FILE


class FrameWriter:
    """The frames of ``session`` onto ``chan``; ``broke`` turns a failed write into the error to raise."""

    def __init__(self, chan: Channel, session: Session, broke: Callable[[OSError], BaseException]) -> None:
        self.chan = chan
        self.session = session
        self._broke = broke
        self._out = bytearray()

    @property
    def queued(self) -> bool:
        """Frames are waiting in the queue (not yet handed to the transport)."""

        return bool(self._out)

    def send(self, msg: m.Message) -> None:
        self.write(self.session.send(msg))

    def write(self, data: bytes) -> None:
        """Queue encoded frames; a piece of `WRITE_BATCH` or more goes at once, behind the queue."""

        if len(data) >= WRITE_BATCH:
            self.flush()
            self._write_now(data)
            return
        self._out += data
        if len(self._out) >= WRITE_BATCH:
            self.flush()

    def write_chunk(self, seq: int, offset: int, data: bytes) -> None:
        """A DataChunk frame: its header through the queue, then the data handed over as is."""

        self._out += chunk_header(seq, offset, len(data))
        self.flush()
        self._write_now(data)

    def flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        try:
            self.chan.write(data)
        except OSError as exc:
            raise self._broke(exc) from None

    # -- file data -----------------------------------------------------------------

    async def send_whole(self, seq: int, fd: int, st0: os.stat_result, mtime: int, packer: BlobPacker,
                         summary: Summary, drain: Drain) -> None:
        """All of an open file's data: into ``packer`` if small (a full frame goes), else streamed."""

        if not streamed(st0.st_size):
            small, carried = read_small(seq, fd, st0, mtime)
            summary.bytes_data += carried
            await self.pack(small, packer, drain)
            return
        if (rest := packer.take()) is not None:
            self.send(rest)
        await self.stream(seq, fd, st0.st_size, mtime, summary, drain)

    async def pack(self, small: m.SmallFile, packer: BlobPacker, drain: Drain) -> None:
        """A small file into ``packer``; the frame it filled, if it did, goes and the channel drains."""

        if (full := packer.add(small)) is not None:
            self.send(full)
            await drain()

    async def stream(self, seq: int, fd: int, size: int, mtime: int, summary: Summary, drain: Drain) -> None:
        """DataBegin, the data in chunks (holes skipped), DataEnd with the digest of all of it."""

        self.send(m.DataBegin(seq, size))
        digest = ExtentDigest()
        for pos, data in read_chunks(fd, size, digest):
            self.write_chunk(seq, pos, data)
            summary.bytes_data += len(data)
            await drain()
        self.send(m.DataEnd(seq, digest.finish(size), mtime))

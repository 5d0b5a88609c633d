"""Reading a source file for the wire: its data regions, its digest, whether it held still.

Shared by the main session and the data lanes (`georep.transport.lanes`): whichever
channel carries a file, it is read the same way — holes skipped, small files whole in one
`SmallFile`, an xxh3-128 digest over what was read, and a warning when the file changed
while it was being read (the next pass sends it again).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from georep.model import Problem
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE
from georep.source.crawl import SourceEntry

#: Files up to this size travel whole inside a Blobs frame.
SMALL_FILE = 256 * 1024


def file_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file: holes are skipped (SEEK_DATA/SEEK_HOLE)."""

    if size == 0:
        return []
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            out.append((start, end - start))
            pos = end
    except OSError:
        return [(0, size)]  # the filesystem cannot tell: send it all
    return out


def publish_mtime(se: SourceEntry, st0: os.stat_result) -> int:
    """The mtime to give the copy: the listed one while the file is as listed.

    A file changed since it was listed gets the mtime it has now; on a brick that is
    the brick's own and differs from the volume's, so the next pass sees a change and
    sends it again — never the other way round (a stale copy that looks current).
    """

    if (st0.st_size, st0.st_mtime_ns) == (se.entry.size, se.stat_mtime_ns):
        return se.entry.meta.mtime_ns
    return st0.st_mtime_ns


def read_small(seq: int, fd: int, st0: os.stat_result, mtime: int) -> tuple[m.SmallFile, int]:
    """A whole small file as one `SmallFile`, and the data bytes it carries."""

    digest = ExtentDigest()
    extents: list[list[int | bytes]] = []
    carried = 0
    # as many blocks as bytes: no hole to keep, so no SEEK_DATA/SEEK_HOLE round (two lseeks
    # per file); a file with preallocated blocks past its end and a hole inside is then sent
    # with its hole as zeros: the same content, only that hole is not kept in so small a file
    dense = st0.st_blocks * 512 >= st0.st_size
    for off, length in [(0, st0.st_size)] if dense and st0.st_size else file_extents(fd, st0.st_size):
        data = os.pread(fd, length, off)
        digest.update(off, data)
        extents.append([off, data])
        carried += len(data)
    return m.SmallFile(seq, st0.st_size, extents, digest.finish(st0.st_size), mtime), carried


class BlobPacker:
    """Small files gathered into `Blobs` frames of about one chunk each."""

    def __init__(self) -> None:
        self._files: list[m.SmallFile] = []
        self._size = 0

    def add(self, small: m.SmallFile) -> m.Blobs | None:
        """Take one more file; a full frame to send, if this one filled it."""

        self._files.append(small)
        self._size += small.size
        return self.take() if self._size >= CHUNK_SIZE else None

    def take(self) -> m.Blobs | None:
        """What is gathered, as one frame (None if nothing is)."""

        if not self._files:
            return None
        out = m.Blobs(self._files)
        self._files, self._size = [], 0
        return out


def read_chunks(fd: int, size: int, digest: ExtentDigest) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of the file in pieces of at most one chunk, holes skipped, each fed to ``digest``.

    A short read (the file shrank while being read) ends that data region; `unstable`
    then reports the file.
    """

    for off, length in file_extents(fd, size):
        end = off + length
        pos = off
        while pos < end:
            data = os.pread(fd, min(CHUNK_SIZE, end - pos), pos)
            if not data:
                break
            digest.update(pos, data)
            yield pos, data
            pos += len(data)


def unstable(fd: int, st0: os.stat_result, se: SourceEntry) -> Problem | None:
    """A problem to report when the file changed while it was being read."""

    st1 = os.fstat(fd)
    if (st1.st_size, st1.st_mtime_ns) != (st0.st_size, st0.st_mtime_ns):
        return Problem(se.path, "changed while being read; the next run sends it again", "changed")
    return None

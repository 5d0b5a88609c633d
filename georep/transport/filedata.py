"""Reading a source file for the wire: its data regions, its digest, whether it held still.

Shared by the main session and the data lanes (`georep.transport.lanes`): whichever
channel carries a file, it is read the same way — holes skipped, small files whole in one
`SmallFile`, an xxh3-128 digest over what was read, and a warning when the file changed
while it was being read (the next pass sends it again).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence

from georep import accelerators
from georep.model import Problem, Summary
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE, encode
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


#: `read_small_frame` and `read_small_files_py`: what they found of one path.
READ = 0  # read whole: the other fields hold what was read
OPEN_FAILED = 1  # errno says why
READ_FAILED = 2  # errno says why
NOT_SMALL = 3  # larger than the limit, or with holes: for the general path (`read_small`, chunks)
NOT_REGULAR = 4  # no regular file any more (replaced since it was listed)

#: (status, errno, size, mtime_ns, data, digest, stable): ``size`` and ``mtime_ns`` as found
#: when opened, ``data`` as read (shorter than size if it shrank meanwhile), ``digest`` its
#: `ExtentDigest` (one extent at 0, then ``size``; none for an empty file), ``stable``: size
#: and mtime were the same after reading.  For any status but READ: 0, 0, b"", b"", False.
SmallRead = tuple[int, int, int, int, bytes, bytes, bool]

#: Paths per `read_small_frame` call, at most (each may hold an open descriptor during it).
READ_BATCH = 256

#: How every source file is opened for its data: never through a symlink, and O_NONBLOCK so
#: that a name listed as a file that has become a FIFO meanwhile cannot hang the copy (the
#: open returns, and the regular-file check after it refuses the FIFO: NOT_REGULAR).
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NOTHING: SmallRead = (READ, 0, 0, 0, b"", b"", False)


def read_small_files_py(paths: Sequence[bytes], limit: int = SMALL_FILE) -> list[SmallRead]:
    """Small files read whole, digested and looked at twice (size and mtime after reading); the
    reading half of `read_small_frame_py`.  Opened with `OPEN_FLAGS`."""

    out: list[SmallRead] = []
    for path in paths:
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as exc:
            out.append((OPEN_FAILED, exc.errno or 0, *_NOTHING[2:]))
            continue
        try:
            st0 = os.fstat(fd)
            if not stat.S_ISREG(st0.st_mode):
                out.append((NOT_REGULAR, 0, *_NOTHING[2:]))
            elif st0.st_size > limit or st0.st_blocks * 512 < st0.st_size:
                out.append((NOT_SMALL, 0, *_NOTHING[2:]))
            else:
                size = st0.st_size
                data = os.pread(fd, size, 0) if size else b""
                digest = ExtentDigest()
                if size:
                    digest.update(0, data)
                st1 = os.fstat(fd)
                stable = (st1.st_size, st1.st_mtime_ns) == (size, st0.st_mtime_ns)
                out.append((READ, 0, size, st0.st_mtime_ns, data, digest.finish(size), stable))
        except OSError as exc:
            out.append((READ_FAILED, exc.errno or 0, *_NOTHING[2:]))
        finally:
            os.close(fd)
    return out


#: `read_small_frame`: a file that did not fit (its frame held `budget` data bytes before it)
LATER = 5

#: What `read_small_frame` reads: (path, seq, listed size, st_mtime_ns as listed, the mtime to
#: publish while the file is as listed; see `publish_mtime`).
FrameItem = tuple[bytes, int, int, int, int]
#: What it found, per item: (status, errno, stable, data bytes carried, size, mtime_ns); the last
#: three for a file in the frame (READ): what it carries, and the size and mtime its SmallFile says.
Found = tuple[int, int, bool, int, int, int]

#: `georep._native.read_small_frame`, where it was built; else the twin runs
_native_frame = getattr(accelerators.extension, "read_small_frame", None)


def read_small_frame_py(items: Sequence[FrameItem], limit: int = SMALL_FILE, budget: int = CHUNK_SIZE
                        ) -> tuple[bytes, list[Found]]:
    """The pure-Python twin and reference of `read_small_frame`: `read_small_files_py`, then `encode`."""

    reads = read_small_files_py([item[0] for item in items], limit)
    files: list[m.SmallFile] = []
    found: list[Found] = []
    packed = 0
    for (_path, seq, listed_size, listed_mtime, publish), read in zip(items, reads, strict=True):
        status, err, size, mtime_ns, data, digest, stable = read
        if status != READ:
            found.append((status, err, False, 0, 0, 0))
        elif packed >= budget:
            found.append((LATER, 0, False, 0, 0, 0))
        else:
            packed += size
            mtime = publish if (size, mtime_ns) == (listed_size, listed_mtime) else mtime_ns
            files.append(m.SmallFile(seq, size, [[0, data]] if size else [], digest, mtime))
            found.append((READ, 0, stable, len(data), size, mtime))
    return (encode(m.Blobs(files)) if files else b""), found


def read_small_frame(items: Sequence[FrameItem], limit: int = SMALL_FILE, budget: int = CHUNK_SIZE
                     ) -> tuple[bytes, list[Found]]:
    """Small files read whole into one `Blobs` frame, ready to write; and what was found of each.

    A file goes in whole (`SmallFile`: one extent, its digest, the mtime `publish_mtime`
    would give) while fewer than ``budget`` data bytes were packed before it; the rest are
    LATER, for another call.  Any other status is `read_small_files_py`'s, and such a file
    is not in the frame (b"" if none is).

    Why: building a `SmallFile` per file and packing its bytes into msgpack's buffer and
    then into the frame copied every byte twice more and cost more than the reads (20,000
    small files: ~80 ms of the sender's CPU).  The native version (`georep._native`) reads
    each file once, into its place in the frame, with the GIL released; should a read fail
    after its file was opened, the twin does the batch again and reports it.
    """

    if len(items) > READ_BATCH:
        raise ValueError(f"at most {READ_BATCH} items per call")
    if budget < 1:  # else nothing would ever fit, and `small_frames` would ask again forever
        raise ValueError("a frame's budget is at least one byte")
    if _native_frame is not None:
        done: tuple[bytes, list[Found]] | None = _native_frame(items, limit, budget, m.Blobs.KIND)
        if done is not None:
            return done
    return read_small_frame_py(items, limit, budget)


def open_source(path: bytes) -> tuple[int, os.stat_result] | str:
    """A source file opened for its data (`OPEN_FLAGS`) and its stat; or why it cannot be sent.

    The caller closes the descriptor.  A name that is no regular file any more (replaced
    since it was listed: a FIFO would hang a read) is refused like `read_small_frame` does.
    """

    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        return f"cannot open on the source: {exc.strerror}"
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return f"cannot read on the source: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return unreadable_cause(NOT_REGULAR, 0)
    return fd, st


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
        return changed_while_read(se)
    return None


def changed_while_read(se: SourceEntry) -> Problem:
    return Problem(se.path, "changed while being read; the next run sends it again", "changed")


def unreadable_cause(status: int, err: int) -> str:
    """Why a file `read_small_frame` found OPEN_FAILED, READ_FAILED or NOT_REGULAR is not sent."""

    if status == NOT_REGULAR:
        return "no regular file any more on the source; the next run sends what is there"
    why = os.strerror(err)
    return f"cannot open on the source: {why}" if status == OPEN_FAILED else f"cannot read on the source: {why}"


def small_frames(batch: list[tuple[int, SourceEntry]]) -> Iterator[tuple[bytes, list[tuple[int, SourceEntry, Found]]]]:
    """`read_small_frame` over ``batch`` (items asked for whole) until none is LATER.

    Yields each frame (maybe b"") with what was found of the items it settled: in it (READ),
    or to be sent otherwise (NOT_SMALL) or not at all (the other statuses).
    """

    while batch:
        frame, found = read_small_frame([(se.path, seq, se.entry.size, se.stat_mtime_ns, se.entry.meta.mtime_ns)
                                         for seq, se in batch])
        settled, later = [], []
        for (seq, se), f in zip(batch, found, strict=True):
            if f[0] == LATER:
                later.append((seq, se))
            else:
                settled.append((seq, se, f))
        yield frame, settled
        batch = later


def count_read(summary: Summary, se: SourceEntry, found: Found) -> None:
    """A file packed into a frame (READ), in ``summary``: a file changed while read is reported there."""

    summary.bytes_data += found[3]
    summary.files += 1
    if not found[2]:
        summary.problems.append(changed_while_read(se))

"""A data lane's end on the secondary: file data into staging, digest checked, nothing published.

Why lanes exist
---------------
OpenSSH gives each channel a 2 MiB receive window.  One channel can therefore carry at
most one window per round trip: about 13 MB/s at 150 ms, whatever the link.  A sender
that opens a few more channels on the same SSH connection (`georep.transport.lanes`)
gets a window on each.  Only file data goes through lanes; names, renames, metadata and
the publishing of every file stay in the main session, in order, so the guarantees of the
main session (ids, atomic publish, the index) are untouched.

A lane writes each file to ``ROOT/.georep/staging/tmp-<pid>-L<n>`` (the agent's private
staging directory, opened without following symlinks), checks the sender's digest, and
answers `Staged` with that name; the main session's `Adopt` then checks the file and
publishes it.  A lane never opens the index and never writes outside staging.  Its
files carry its pid, so a lane that died leaves nothing the next agent does not remove.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from georep.apply import fsops
from georep.errors import DiskFull, ProtocolError, SecondaryNotWritable
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest

STATE_DIR = b".georep"
#: The names a lane gives its files; `Adopt` accepts no other.
LANE_FILE = re.compile(rb"tmp-[0-9]{1,10}-L[0-9]{1,20}")


@dataclass
class _Incoming:
    fd: int
    name: bytes
    size: int
    digest: ExtentDigest = field(default_factory=ExtentDigest)
    writer: fsops.DirectWriter | None = None  # a large file: around the page cache


class Stager:
    """Receives file data for the main session and leaves each file, verified, in staging."""

    def __init__(self, root: Path) -> None:
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                state_fd = fsops.make_dir_at(root_fd, STATE_DIR)  # a lane may start before its main session
                try:
                    self.staging_fd = fsops.make_dir_at(state_fd, b"staging")
                finally:
                    os.close(state_fd)
            finally:
                os.close(root_fd)
        except OSError as exc:
            raise SecondaryNotWritable(
                f"a data lane cannot use the staging directory under {root}: {exc.strerror}",
            ) from None
        self.receiving: dict[int, _Incoming] = {}
        self._prefix = b"tmp-%d-L" % os.getpid()
        self._n = itertools.count()

    def handle(self, msg: m.Message) -> list[m.Staged | m.Result]:
        """Apply one data message; the answers it produced (possibly none)."""

        try:
            if isinstance(msg, m.DataBegin):
                begun = self._begin(msg.seq, msg.size)
                begun.writer = fsops.DirectWriter.for_size(begun.fd, msg.size)
                return []
            if isinstance(msg, m.DataChunk):
                rec = self.receiving.get(msg.seq)
                if rec is None:
                    raise ProtocolError(f"data chunk for item {msg.seq}, which has no DataBegin on this lane")
                rec.digest.update(msg.offset, msg.data)
                fsops.write_received(rec.fd, rec.writer, msg.offset, msg.data)
                return []
            if isinstance(msg, m.DataEnd):
                return [self._end(msg.seq, msg.digest)]
            if isinstance(msg, m.Blobs):
                out: list[m.Staged | m.Result] = []
                for f in msg.files:
                    rec = self._begin(f.seq, f.size)
                    for off, data in f.extents:
                        assert isinstance(off, int) and isinstance(data, bytes)  # checked by the decoder
                        rec.digest.update(off, data)
                        os.pwrite(rec.fd, data, off)
                    out.append(self._end(f.seq, f.digest))
                return out
            if isinstance(msg, m.DataAbort):
                self._drop(msg.seq)
                return [m.Result(msg.seq, m.FAILED, f"not sent: {msg.reason}")]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"the secondary is full: {exc.strerror}") from None
            raise SecondaryNotWritable(f"a data lane cannot write to staging: {exc.strerror}") from None
        raise ProtocolError(f"{type(msg).__name__} may not be sent to a data lane")

    def discard_incoming(self) -> None:
        """Files still being received are removed (staged ones await their Adopt)."""

        for seq in list(self.receiving):
            self._drop(seq)

    def close(self) -> None:
        self.discard_incoming()
        os.close(self.staging_fd)

    def _begin(self, seq: int, size: int) -> _Incoming:
        if seq in self.receiving:
            raise ProtocolError(f"item {seq} begun twice on a data lane")
        name = self._prefix + str(next(self._n)).encode()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.staging_fd)
        rec = self.receiving[seq] = _Incoming(fd, name, size)
        return rec

    def _end(self, seq: int, digest: bytes) -> m.Staged | m.Result:
        rec = self.receiving.pop(seq, None)
        if rec is None:
            raise ProtocolError(f"DataEnd for item {seq}, which has no DataBegin on this lane")
        try:
            if rec.writer is not None:
                rec.writer.finish()
            ok = rec.digest.finish(rec.size) == digest
            if ok:
                os.ftruncate(rec.fd, rec.size)
        finally:
            if rec.writer is not None:
                rec.writer.close()
            os.close(rec.fd)
        if not ok:
            os.unlink(rec.name, dir_fd=self.staging_fd)
            return m.Result(seq, m.FAILED, "digest mismatch: the data was damaged in transit; not published")
        return m.Staged(seq, rec.name)

    def _drop(self, seq: int) -> None:
        rec = self.receiving.pop(seq, None)
        if rec is not None:
            if rec.writer is not None:
                rec.writer.close()
            os.close(rec.fd)
            os.unlink(rec.name, dir_fd=self.staging_fd)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (owned by anyone): the agent owning a staged name or a lane socket.

    Here rather than in `georep.apply.lanehub`, which the agent imports only for sessions
    that open lanes: the cleanup of staging asks it in every session.
    """

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

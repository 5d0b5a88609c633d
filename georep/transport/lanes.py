"""Data lanes: file data over extra channels of the same connection, for long round trips.

Why
---
An SSH channel moves at most one receive window per round trip, and OpenSSH's sshd
grants 2 MiB: about 13 MB/s at 150 ms however fast the link is (measured here: 12.9 MB/s
on one channel, 24 on two, 43 on four).  rsync and a single-channel sender both stop
there.  Lanes open more channels on the one connection and carry only file data; the
main session keeps everything whose order matters (entries, renames, links, removals,
publishing), so lanes change throughput, never semantics.

How
---
A lane is a channel sshd opens back to the sender when the agent dials the socket sshd
holds for it (`georep.transport.ssh.LaneCalls`: ready one round trip after the Hello), else
a channel into the main agent's own socket where sshd forwards one (`georep.apply.lanehub`:
ready a round trip later).  Either way there is no process per lane: the agent publishes
what a lane brings and answers on the main session.  Where sshd forwards neither, a lane is
a session running an agent of its own, described below.  The sender's side is the same for
all three, bar the answers.

When the agent answers NEED, the sender puts the item on one work queue that every ready
lane pulls from: a lane takes small files in a batch and big ones one at a time, so a lane
that becomes ready late, or finishes early, still finds work (pushing items to the lane
that looked least busy gave one early lane every big file of a run while the others,
ready a moment later, idled: seen in CI at 40 ms).  A lane session is its own `georep-sync
agent` session that starts with `Lane`: it writes files into the agent's staging
directory, checks their digests, and answers `Staged` with the staged file's name.  The
sender then sends `Adopt` on the main session, which applies the metadata and publishes
the file with one rename, exactly as after a direct transfer.  A lane that fails a file
(source unreadable, digest mismatch) turns into a `DataAbort` on the main session, so the
item fails there with the cause; a lane that dies ends the session like a dead main
channel would.

Each lane has a writer task pulling from the shared bounded queue and its own drain, so a
lane waiting for its window never holds the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from georep import errors
from georep.errors import AgentFailed, ConnectionLost, GeorepError, ProtocolError
from georep.model import Summary
from georep.protocol import messages as m
from georep.protocol.session import Role, Session, State
from georep.source.crawl import SourceEntry
from georep.transport.channel import Channel
from georep.transport.filedata import (
    NOT_SMALL,
    READ,
    SMALL_FILE,
    BlobPacker,
    Found,
    count_read,
    open_source,
    publish_mtime,
    small_frames,
    unreadable_cause,
    unstable,
)
from georep.transport.framewriter import FrameWriter, streamed

#: Items waiting for a lane, per lane (their data is read only when a writer pulls them).
QUEUE = 256
#: Small files one lane pulls at once (packed into blobs together).
BATCH = 64

#: The work queue the lanes share: (seq, source entry) of items whose data a lane sends.
Work = asyncio.Queue[tuple[int, SourceEntry]]


def work_queue(lanes: int) -> Work:
    return asyncio.Queue(maxsize=QUEUE * max(lanes, 1))


class LaneOwner(Protocol):
    """What a lane reports to: the main session's sender."""

    summary: Summary
    changed: asyncio.Event

    def lane_staged(self, seq: int, name: bytes, size: int, mtime_ns: int) -> None: ...

    def lane_failed(self, seq: int, cause: str) -> None: ...

    def lane_sent(self, seqs: Iterable[int]) -> None: ...


def agent_error(msg: m.ErrorMsg) -> GeorepError:
    """The GeorepError an agent's ErrorMsg names (AgentFailed if it names none we know)."""

    cls = getattr(errors, msg.error, None)
    if isinstance(cls, type) and issubclass(cls, GeorepError):
        return cls(f"secondary: {msg.message}", hint=msg.hint)
    return AgentFailed(f"secondary: {msg.message}", hint=msg.hint)


class Lane:
    """One data lane: a channel and a session of its own, a writer fed by a queue."""

    def __init__(self, chan: Channel, owner: LaneOwner, name: str, work: Work, join_token: bytes = b"") -> None:
        self.chan = chan
        self.owner = owner
        self.name = name
        #: the main agent's lane-socket token: this lane hands its data to that agent itself
        #: (`georep.apply.lanehub`), which answers every item on the main session
        self.join_token = join_token
        self.session = Session(Role.SENDER)
        self.work = work
        self._taken: set[int] = set()  # items pulled here and not yet answered
        self._sent: dict[int, tuple[int, int]] = {}  # seq → (size, mtime) as sent
        #: every frame of the lane's session goes through it
        self.out = FrameWriter(chan, self.session, self._broke)
        self._closing = False
        #: the lane's agent answered its handshake: it is running and reads what it is sent
        self.ready = False
        self._ready = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Say Hello and Lane, and start the writer.

        The handshake is not waited for here: a lane's agent is the main session's (same
        host, same command, same version, whose handshake already succeeded).  The sender
        gives lanes files only once one is `ready`, and a lane's writer pulls work only once it
        is ready itself (its HelloOk came back): before that its agent may still be starting,
        and files queued on a cold lane waited there while the main session had room
        (measured: a 2,000-file tree at 50 ms took 1.2 s, files held on eight lanes starting
        at once on two cores).  Should the agent refuse all the same, its ErrorMsg or exit
        fails the session through the reader, like any lane that breaks.
        """

        loop = asyncio.get_running_loop()
        self.reader = loop.create_task(self._read_loop())
        if self.join_token:
            # the agent is the main session's, running and reading: files may go at once
            self.out.write(self.session.initiate() + self.session.send(m.JoinLane(self.join_token)))
            self.out.flush()
            self.ready = True
            self._ready.set()
        else:
            self.out.write(self.session.initiate() + self.session.send(m.Lane()))
            self.out.flush()
        self.writer = loop.create_task(self._write_loop())

    def failure(self) -> BaseException | None:
        """Why the lane broke, if it did."""

        for task in (self.reader, self.writer):
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    return exc
        return None

    async def close(self) -> None:
        """Every item this lane took was answered: say Bye and let the agent exit."""

        self._closing = True
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer
        self.out.send(m.Bye())
        self.out.flush()
        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.wait_for(self.chan.drain(), 30)
            await self.chan.close_input()
        await asyncio.wait_for(self.chan.wait(), 30)
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, GeorepError):
                await asyncio.wait_for(self.reader, 10)

    def kill(self) -> None:
        for task in (self.reader, self.writer):
            if task is not None:
                if task.done() and not task.cancelled():
                    task.exception()  # seen: the session's failure is reported once, by the sender
                task.cancel()
        kill = getattr(self.chan, "kill", None)
        if kill is not None:
            kill()

    # -- work ----------------------------------------------------------------------

    async def _pull(self) -> list[tuple[int, SourceEntry]]:
        """The next items for this lane: small files up to `BATCH`, ending at the first big one.

        A big file is taken alone (or closing a batch of small ones) so the ones queued after
        it stay on the shared queue for the next free lane.
        """

        jobs = [await self.work.get()]
        while jobs[-1][1].entry.size <= SMALL_FILE and len(jobs) < BATCH and not self.work.empty():
            jobs.append(self.work.get_nowait())
        if not self.join_token:  # a joined lane's items are answered on the main session
            self._taken.update(seq for seq, _ in jobs)
        return jobs

    def _settled(self, seq: int) -> None:
        self._taken.discard(seq)
        self._sent.pop(seq, None)

    # -- answers -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.chan.read()
                if not data:
                    if self._closing:
                        return
                    stderr = self.chan.stderr_text().strip()
                    tail = ("; it said: " + stderr[-2000:]) if stderr else ""
                    raise ConnectionLost(f"data lane {self.name} closed mid-session{tail}")
                for msg in self.session.receive(data):
                    self._on_message(msg)
                if not self.ready and self.session.state is State.READY:
                    self.ready = True
                    self._ready.set()
                    self.owner.changed.set()
        finally:
            self.owner.changed.set()

    def _on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Staged):
            sent = self._sent.get(msg.seq)
            if sent is None:
                raise ProtocolError(f"data lane {self.name} staged item {msg.seq}, which it was not sent")
            self._settled(msg.seq)
            self.owner.lane_staged(msg.seq, msg.name, *sent)
        elif isinstance(msg, m.Results):
            for r in msg.items:
                if r.seq not in self._taken:
                    raise ProtocolError(f"data lane {self.name} answered item {r.seq}, which it was not sent")
                self._settled(r.seq)
                self.owner.lane_failed(r.seq, r.cause)
        elif isinstance(msg, m.ErrorMsg):
            raise agent_error(msg)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} on data lane {self.name}")

    # -- data ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        await self._ready.wait()
        while True:
            jobs = await self._pull()
            packer = BlobPacker()
            # the small ones (all but perhaps the last, see _pull) are read many per call
            n = 0
            while n < len(jobs) and jobs[n][1].entry.size <= SMALL_FILE:
                n += 1
            for frame, settled in small_frames(jobs[:n]):
                for seq, se, found in settled:
                    await self._send_small(seq, se, found, packer)
                if frame:
                    self.out.write(frame)
                    await self._drain()
            for seq, se in jobs[n:]:
                await self._send_file(seq, se, packer)
            if (rest := packer.take()) is not None:
                self.out.send(rest)
            self.out.flush()
            if self.join_token:
                # all of it is in the channel: the main agent answers each item (even one
                # given up above, through its DataAbort), and holds Finish until then
                self.owner.lane_sent(seq for seq, _se in jobs)
            await self._drain()

    async def _send_small(self, seq: int, se: SourceEntry, found: Found, packer: BlobPacker) -> None:
        """One small file as `small_frames` found it: in the frame that follows, or not."""

        status = found[0]
        if status == NOT_SMALL:  # it grew past the limit, or has holes: the general path
            await self._send_file(seq, se, packer)
        elif status != READ:
            self._give_up(seq, unreadable_cause(status, found[1]))
        else:
            count_read(self.owner.summary, se, found)
            if not self.join_token:
                self._sent[seq] = (found[4], found[5])  # for the Adopt, once Staged

    async def _send_file(self, seq: int, se: SourceEntry, packer: BlobPacker) -> None:
        """One file read one system call at a time: whole if small, else streamed."""

        opened = open_source(se.path)
        if isinstance(opened, str):
            self._give_up(seq, opened)
            return
        fd, st0 = opened
        streaming = streamed(st0.st_size)  # DataBegin goes on this lane: an abort must follow it here
        try:
            mtime = publish_mtime(se, st0)
            if not self.join_token:
                self._sent[seq] = (st0.st_size, mtime)  # for the Adopt, once Staged
            await self.out.send_whole(seq, fd, st0, mtime, packer, self.owner.summary, self._drain)
            problem = unstable(fd, st0, se)
            if problem is not None:
                self.owner.summary.problems.append(problem)
            self.owner.summary.files += 1
        except OSError as exc:
            if streaming:
                self.out.send(m.DataAbort(seq, f"cannot read on the source: {exc.strerror}"))
            else:
                self._give_up(seq, f"cannot read on the source: {exc.strerror}")
        finally:
            os.close(fd)

    def _give_up(self, seq: int, cause: str) -> None:
        """Nothing of ``seq`` went to the lane: the main session fails the item."""

        self._settled(seq)
        self.owner.lane_failed(seq, cause)

    # -- transport -----------------------------------------------------------------

    def _broke(self, exc: OSError) -> ConnectionLost:
        return ConnectionLost(f"data lane {self.name} broke: {exc}")

    async def _drain(self) -> None:
        self.out.flush()
        try:
            await self.chan.drain()
        except (OSError, ConnectionError) as exc:
            raise self._broke(exc) from None


async def open_lane(opener: Callable[[], Awaitable[Channel]], owner: LaneOwner, name: str, work: Work,
                    join_token: bytes = b"") -> Lane:
    """One more lane, pulling from ``work`` once ready: a sibling session of the main one, or
    (``join_token``) a channel into the main agent's lane socket.

    Raises if the channel cannot be opened (the main session goes on without the lane).
    """

    lane = Lane(await opener(), owner, name, work, join_token)
    lane.start()
    return lane

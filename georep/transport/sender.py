"""The pipelined send loop: entries out, per-item results in, data where the agent asks.

Theory of operation
-------------------
The sender never waits for an answer before sending the next item.  It keeps up to
``window`` items in flight (entries and links awaiting their `Result`); a reader task
consumes results as they come:

* DONE — the item is settled (renames and metadata need no data);
* NEED — the agent wants the file's data: small files are packed, many per `Blobs`
  frame; large files are streamed in `DataChunk` frames, never whole in memory; each
  carries an xxh3-128 digest the agent checks before publishing;
* BlockSums — NEED, with the block hashes of the copy the agent has: a large dense file
  is read block by block and only the blocks whose hash differs are sent, after a
  `DeltaBegin` (`georep.protocol.delta`); the agent copies the rest from its copy and
  checks the digest of the whole new content.  Should that fail, it answers NEED for
  the same item and the file is sent whole (once: the agent offers no second delta);
* FAILED — recorded as a `Problem`; nothing else is resent.

After the crawl, hard links are sent (their inode now exists), then `Finish` lets the
agent remove what the source no longer has.  Data is sent in preference to new entries
so the window drains.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from georep.batch.ledger import Moved
from georep.errors import AgentFailed, AgentNotFound, ConnectionLost, GeorepError, ProtocolError
from georep.model import Kind, Problem, Summary, record
from georep.protocol import messages as m
from georep.protocol.delta import BlockMatcher, DeltaEncoder
from georep.protocol.framing import CHUNK_SIZE
from georep.protocol.session import Role, Session, State
from georep.source.crawl import SourceEntry
from georep.transport.channel import Channel, reap
from georep.transport.filedata import (
    NOT_SMALL,
    READ,
    READ_BATCH,
    SMALL_FILE,
    BlobPacker,
    count_read,
    file_extents,
    open_source,
    publish_mtime,
    small_frames,
    unreadable_cause,
    unstable,
)
from georep.transport.framewriter import FrameWriter
from georep.transport.lanes import Lane, agent_error, open_lane, work_queue

if TYPE_CHECKING:  # only over SSH, which this module does not import (a pipe needs no asyncssh)
    from georep.transport.ssh import LaneCalls

T = TypeVar("T")

#: An SSH connection that took this long (four round trips and the key exchange's CPU) is on a
#: long link: lanes open at once.  Below it, a Ping decides (see `Sender._probe_round_trip`).
LONG_CONNECT_S = 0.25

#: How long the sender waits for sshd to open the channels of the lanes the agent dialled
#: (`Sender._dial_lanes`) once the agent has said how many: sshd sends them ahead of that count.
DIALLED_WAIT_S = 10.0

#: Listed bytes of small files read per `read_small_frame` call, at most (but one file always).
SMALL_BATCH_BYTES = CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class Lanes:
    """How many data lanes (`georep.transport.lanes`) to open, and when."""

    count: int = 0
    #: open them only if the round trip measured after the handshake is at least this (seconds);
    #: on a short path one channel is not window-bound and lanes only cost processes
    min_rtt: float = 0.0
    #: join the main agent through its lane socket where the channel and sshd allow it
    #: (`georep.apply.lanehub`); False: every lane is an agent session of its own
    join: bool = True
    #: at most this many when lanes have to be agent sessions (sshd's MaxSessions, default 10,
    #: counts the main session too); None: ``count`` either way
    sessions: int | None = None


#: No data lanes: everything on the main channel.
NO_LANES = Lanes()


@record
class NameOp:
    """A Link or Remove item in flight: what it does to which name (for the record and for messages)."""

    op: str  # "link" or "remove"
    oid: bytes
    parent: bytes
    name: bytes
    path: bytes


#: What an item in flight is: an entry (perhaps awaiting its data), or a name operation.
Item = SourceEntry | NameOp


@dataclass(slots=True)
class Options:
    #: items sent and not yet answered (memory: one SourceEntry each, on both sides)
    window: int = 4096
    #: the window once lanes are in use: through a lane an item waits three round trips
    #: (entry → NEED, data → Staged, Adopt → DONE); 4096 capped 150 ms links at ~9,000 files/s
    window_with_lanes: int = 16384
    mirror: bool = True
    allow_mass_delete: bool = False
    #: data lanes (extra channels for file data), opened in the background at the handshake
    lanes: Lanes = NO_LANES


def _dense(fd: int, size: int) -> bool:
    """No holes: a delta is sent only for such files (holes stay holes through a full send)."""

    return file_extents(fd, size) == [(0, size)]


class Sender:
    """Drives one session over a `Channel`."""

    def __init__(
        self,
        chan: Channel,
        opts: Options,
        on_progress: Callable[[Summary], None] | None = None,
        scope: str = "",
        on_done: Callable[[Item], None] | None = None,
    ) -> None:
        self.chan = chan
        self.opts = opts
        self.session = Session(Role.SENDER, scope=scope)
        #: every frame of the main session goes through it
        self.out = FrameWriter(chan, self.session, self._lost)
        self.summary = Summary()
        self.inflight: dict[int, Item] = {}
        #: items sent as a rename by id (MoveMsg): NEED for one of them asks for the whole entry
        self._moves: set[int] = set()
        #: told of every item the agent answered DONE (the sender's ledger, `georep.batch.ledger`)
        self.on_done = on_done
        #: whether the agent accepted the Resume token (None: none was presented)
        self.resumed: bool | None = None
        self._resumed: asyncio.Future[bool] | None = None
        #: the agent's token vouching for this session, once sealed (b"": it could not vouch)
        self.sealed = b""
        self._sealed: asyncio.Future[bytes] | None = None
        self.need: collections.deque[int] = collections.deque()
        #: items the agent answered with block sums of its copy (a delta may be sent)
        self.sums: dict[int, m.BlockSums] = {}
        #: items whose data went as a delta (a NEED for one of them asks for the whole file)
        self._delta_sent: set[int] = set()
        #: items in flight whose next answer is their last: nothing the agent can say about
        #: them makes the sender send more (whole data sent on this session, an Adopt, a
        #: DataAbort, a name op, an entry that is no regular file).  A subset of `inflight`.
        self._answer_final: set[int] = set()
        #: items whose whole data a joined lane has written to its channel: their answer is
        #: final too, but it may only be awaited after the links and removals, not before
        #: Finish, which the agent holds until every joined lane's data arrived (`run`).
        #: Disjoint from `_answer_final`, a subset of `inflight`.
        self._lane_sent: set[int] = set()
        self.changed = asyncio.Event()
        self.finished: asyncio.Future[m.Finished] = asyncio.get_running_loop().create_future()
        self.failure: BaseException | None = None
        self._seq = 0
        self._on_progress = on_progress
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._last_progress = 0.0
        self._agent_ended_session = False  # an ErrorMsg came: the agent is exiting
        self.lanes: list[Lane] = []
        #: items whose data a ready lane sends, pulled by whichever lane is free
        self.lane_work = work_queue(self.opts.lanes.count)
        self._lanes_task: asyncio.Task[None] | None = None
        #: the round trip to the agent, measured with a Ping after the handshake (None: not measured)
        self.rtt: float | None = None
        self._pong: asyncio.Future[int] | None = None
        self._ping_at = 0.0
        self._long_link = False  # the Pong took longer than the lanes' threshold
        self._lane_socket: asyncio.Future[m.LaneSocket] | None = None
        self._lanes_dialled: asyncio.Future[m.LanesDialled] | None = None
        #: sshd's socket for the lanes the agent dials, and the token they present (`_ask_to_dial`)
        self._dial: tuple[LaneCalls, bytes] | None = None
        #: why the agent dialled no lane back, if it did not (the lanes were opened from this side)
        self.dial_refused = ""
        #: lanes are being dialled back: file data waits for them, off the main session (`_dial_lanes`)
        self._lanes_coming = False
        self._lane_task_ended = False  # a lane's reader or writer is done: see `_check`

    # -- session lifecycle -------------------------------------------------------------

    async def handshake(self, resume: bytes = b"") -> None:
        """Hello (and ``resume``, a token from an earlier `seal`, in the same flight) until the agent is ready.

        With a token, `resumed` says afterwards whether the agent still vouches for it.
        """

        # the reader first: an agent that refuses at once (root not writable, wrong
        # version) explains itself on its output even if our first write finds it gone
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        dial: m.DialLanes | None = None
        if self._can_open_lanes() and getattr(self.chan, "connect_s", 0.0) >= LONG_CONNECT_S:
            # the connection alone took long enough to say the link is long: the lanes start
            # opening now, beside the main session's handshake, not a round trip later
            self._long_link = True
            if self._dials_lanes():
                # right behind Hello, ahead of any entry: the agent dials before it applies them
                # (sent from the lanes' task, it left in a later write, where entries the crawl
                # had ready could come first)
                dial = await self._ask_to_dial(self.opts.lanes.count)
            self._maybe_open_lanes()
        try:
            self.out.write(self.session.initiate())
            if dial is not None:
                self.out.send(dial)
            if resume:
                self._resumed = asyncio.get_running_loop().create_future()
                self.out.send(m.Resume(resume))
            await self._drain()
        except ConnectionLost:
            await asyncio.wait({self._reader}, timeout=10)
            await self._raise_failure()
        if not resume and not self._can_open_lanes():
            # nothing to decide on the agent's answer: entries follow Hello in the same flight,
            # a round trip sooner.  The agent applies them in order, after Hello; one that
            # refuses (another version, an unusable root) says so and the run fails on it.
            # Not with lanes opened from this side: their data would start on the main
            # session while the lanes open, filling its window ahead of the entries (measured
            # at 150 ms on the small dataset, 4.15-4.36 s against 4.06-4.13 s waiting for HelloOk).
            return
        if not resume and self._lanes_task is not None and self._dials_lanes():
            # lanes the agent dials back reach this side with its first answers: the entries
            # need not wait for HelloOk either
            self._send_ping()  # the round trip, for the record (rtt); nothing waits for it
            return
        ready = asyncio.get_running_loop().create_task(self._ready.wait())
        await asyncio.wait(self._with_reader(ready), return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self._raise_failure()
        if self._resumed is not None:
            self.resumed = await self._await(self._resumed)
        if self._can_open_lanes():
            if self._lanes_task is not None:
                self._send_ping()  # the round trip, for the record (rtt); nothing waits for it
            elif self.opts.lanes.min_rtt > 0:
                await self._probe_round_trip(self.opts.lanes.min_rtt)
            self._maybe_open_lanes()

    async def _probe_round_trip(self, threshold: float) -> None:
        """Ping the agent and wait for the Pong, but never longer than ``threshold``.

        All that is decided here is whether the round trip reaches ``threshold``, so waiting
        longer would only delay the run: on a long link the lanes start opening after
        ``threshold`` seconds, and `rtt` is filled in when the Pong arrives.  (Measured while
        entries stream instead, the Pong would be read late whenever the sender is busy,
        and every link would look long.)
        """

        pong = self._send_ping()
        await asyncio.wait(self._with_reader(pong), timeout=threshold, return_when=asyncio.FIRST_COMPLETED)
        self._check()
        self._long_link = not pong.done()

    def _send_ping(self) -> asyncio.Future[int]:
        self._pong = pong = asyncio.get_running_loop().create_future()
        self._ping_at = time.monotonic()
        self.out.send(m.Ping(1))
        self.out.flush()
        return pong

    def _with_reader(self, fut: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
        """``fut`` and the reader task: waiting on both notices a dead agent at once."""

        assert self._reader is not None
        return {fut, self._reader}

    async def _reap(self) -> None:
        """After the agent's ErrorMsg: wait for it to exit (it does at once).

        Otherwise its pipes outlive the event loop and the garbage collector closes them on
        a closed loop, printing a stray traceback after the error message.
        """

        if self._agent_ended_session:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.chan.wait(), 5)

    async def _raise_failure(self) -> None:
        await self._reap()
        if self._reader is not None and self._reader.done():
            exc = self._reader.exception()
            if exc is not None:
                raise exc
        if self.failure is not None:
            raise self.failure
        raise AgentFailed("the agent stopped")

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.chan.read()
                if not data:
                    await self._agent_ended()
                    return
                for msg in self.session.receive(data):
                    self._on_message(msg)
                if self.session.state is State.READY:
                    self._ready.set()
        except GeorepError as exc:
            self.failure = exc
            raise
        finally:
            self.changed.set()

    async def _agent_ended(self) -> None:
        if self.finished.done() and not self.session.can_send:
            return  # we said Bye: the agent answered everything and exited
        try:
            code = await asyncio.wait_for(self.chan.wait(), 10)
        except TimeoutError:
            code = None
        stderr = self.chan.stderr_text().strip()
        tail = ("; it said: " + stderr[-2000:]) if stderr else ""
        if code == 127:
            raise AgentNotFound(f"the agent command was not found on the secondary (exit 127){tail}")
        if self.session.state is not State.READY:
            raise AgentFailed(f"the agent exited (status {code}) before the handshake{tail}")
        raise ConnectionLost(f"the connection to the agent closed mid-session (status {code}){tail}")

    def _on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Results):
            for r in msg.items:
                item = self.inflight.get(r.seq)
                if item is None:
                    raise ProtocolError(f"result for unknown item {r.seq}")
                self._answer_final.discard(r.seq)
                self._lane_sent.discard(r.seq)
                if r.status == m.NEED:
                    if r.seq in self._moves:  # the agent cannot rename it by id: the whole entry
                        self._moves.discard(r.seq)
                        del self.inflight[r.seq]
                        assert isinstance(item, SourceEntry)
                        self._queue_entry(item)
                        continue
                    self.need.append(r.seq)
                    continue
                del self.inflight[r.seq]
                self._delta_sent.discard(r.seq)
                self._moves.discard(r.seq)
                if r.status == m.FAILED:
                    self.summary.problems.append(Problem(item.path, r.cause, "agent"))
                else:
                    if isinstance(item, NameOp) and item.op == "remove":
                        self.summary.deleted += 1
                    if self.on_done is not None:
                        self.on_done(item)
            self.changed.set()
        elif isinstance(msg, m.BlockSums):
            if not isinstance(self.inflight.get(msg.seq), SourceEntry) or msg.seq in self.sums:
                raise ProtocolError(f"block sums for item {msg.seq}, which awaits no data")
            self.sums[msg.seq] = msg
            self.need.append(msg.seq)
            self.changed.set()
        elif isinstance(msg, m.Finished):
            if self.finished.done():
                raise ProtocolError("Finished without a Finish")
            self.finished.set_result(msg)
        elif isinstance(msg, m.Resumed):
            if self._resumed is None or self._resumed.done():
                raise ProtocolError("Resumed without a Resume")
            self._resumed.set_result(msg.valid)
        elif isinstance(msg, m.Sealed):
            if self._sealed is None or self._sealed.done():
                raise ProtocolError("Sealed without a Seal")
            self._sealed.set_result(msg.token)
        elif isinstance(msg, m.LaneSocket):
            offer = self._lane_socket
            if offer is None or (offer.done() and not offer.cancelled()):
                raise ProtocolError("LaneSocket without an OpenLanes")
            if not offer.done():  # else the run ended before it came: no lane is wanted any more
                offer.set_result(msg)
        elif isinstance(msg, m.LanesDialled):
            dialled = self._lanes_dialled
            if dialled is None or (dialled.done() and not dialled.cancelled()):
                raise ProtocolError("LanesDialled without a DialLanes")
            if not dialled.done():
                dialled.set_result(msg)
        elif isinstance(msg, m.Pong):
            if self._pong is None or self._pong.done():
                raise ProtocolError("Pong without a Ping")
            self._pong.set_result(msg.token)
            self.rtt = time.monotonic() - self._ping_at
        elif isinstance(msg, m.ErrorMsg):
            self._agent_ended_session = True
            raise agent_error(msg)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} from the agent")

    def _lost(self, exc: BaseException) -> BaseException:
        """The best explanation of a dead transport: the reader's, else a plain ConnectionLost."""

        if self._reader is not None and self._reader.done() and not self._reader.cancelled():
            found = self._reader.exception()
            if found is not None:
                return found
        if self.failure is not None:
            return self.failure
        return ConnectionLost(f"the connection to the agent broke: {exc}")

    async def _drain(self) -> None:
        """Wait for the transport to take our bytes, unless the agent side died meanwhile.

        A peer that stopped reading (dead agent, full window) would otherwise block the
        sender forever inside drain().
        """

        assert self._reader is not None
        self.out.flush()
        drain = asyncio.ensure_future(self.chan.drain())
        await asyncio.wait(self._with_reader(drain), return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            drain.cancel()
            await self._raise_failure()
        try:
            drain.result()
        except OSError as exc:
            await asyncio.sleep(0.1)  # let the reader record why the agent went away
            raise self._lost(exc) from None

    def _check(self) -> None:
        if self._reader is not None and self._reader.done():
            exc = self._reader.exception() if not self._reader.cancelled() else None
            raise exc or ConnectionLost("the agent stopped answering")
        if self._lane_task_ended:  # (a look at every lane's two tasks per entry: 3 % of the sender at 150 ms)
            for lane in self.lanes:
                found = lane.failure()
                if found is not None:
                    raise found

    @property
    def bytes_wire(self) -> int:
        """Bytes written to the agent: the main channel and every lane."""

        return self.chan.bytes_written + sum(lane.chan.bytes_written for lane in self.lanes)

    async def abort(self) -> None:
        """Abandon the session at once: the main channel and every lane, their processes reaped.

        Reaping inside the event loop matters: a pipe transport still open when the loop
        closes prints a traceback at exit, after the clean error message.
        """

        await self._stop_opening_lanes()
        chans = [lane.chan for lane in self.lanes] + [self.chan]
        for lane in self.lanes:
            lane.kill()
        if self._reader is not None:  # its failure was reported already (or is moot now)
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        for chan in chans:
            await reap(chan)

    # -- data lanes (georep.transport.lanes) ---------------------------------------------

    def _can_open_lanes(self) -> bool:
        return self.opts.lanes.count > 0 and getattr(self.chan, "sibling", None) is not None

    def _maybe_open_lanes(self) -> None:
        """Open the lanes in the background if the link calls for them (see `handshake`).

        Nothing waits for them: file data goes over the main session until a lane is ready,
        and each lane takes its share as soon as its own handshake is done.  Opened one after
        the other at the first data request, they cost nine round trips with every transfer
        stalled (1.4 s at 150 ms).  Opened before the agent asked for anything, they are
        sometimes not needed (a rerun with nothing to copy): closing them costs no round trip
        of its own, it overlaps the end of the run.
        """

        pol = self.opts.lanes
        if self._lanes_task is not None or not self._can_open_lanes():
            return
        if pol.min_rtt > 0 and not self._long_link:
            return
        self._lanes_task = asyncio.get_running_loop().create_task(self._open_lanes(pol.count))

    async def _open_lanes(self, count: int) -> None:
        """Lanes dialled back by the agent where sshd listens for this side, else opened from it."""

        try:
            await self._open_some_lanes(count)
        finally:
            if not self.lanes:  # none at all: what waits for one goes back to the main session
                self._take_back_lane_work()

    async def _open_some_lanes(self, count: int) -> None:
        """Lanes into the main agent itself when it and sshd allow it, else lane sessions.

        Joined lanes (`georep.apply.lanehub`) cost the secondary no process.  They are all
        opened at once, in one round trip: if not one of them is let through (sshd forwards no
        channel to a socket), every lane is a session instead.  (Opening one first to find out
        cost the other lanes a round trip at the start of every run: at 150 ms, 0.15 s in
        which seven of eight lanes carried nothing.)
        """

        if self._dials_lanes() and await self._dial_lanes(count):
            return
        if self.opts.lanes.join and hasattr(self.chan, "join"):
            offer = await self._ask_lane_socket()
            if offer.path:
                path = offer.path
                failed = await self._open_lane_batch(lambda: self.chan.join(path), count,  # type: ignore[attr-defined]
                                                     offer.token)
                if self.lanes or not all(isinstance(exc, ConnectionLost) for exc in failed):
                    self.summary.lanes_kind = "joined"
                    self._report_lane_failures(failed, count)
                    return
        self.summary.lanes_kind = "sessions"
        if self.opts.lanes.sessions is not None:
            count = min(count, self.opts.lanes.sessions)
        failed = await self._open_lane_batch(self.chan.sibling, count, b"")  # type: ignore[attr-defined]
        self._report_lane_failures(failed, count)

    async def _open_lane_batch(self, opener: Callable[[], Awaitable[Channel]], count: int, token: bytes
                               ) -> list[BaseException]:
        """Open ``count`` lanes at once; each joins the work as soon as it is open.  What failed."""

        kind = "joined" if token else "sessions"
        results = await asyncio.gather(*(self._start_lane(opener, i, token, kind) for i in range(count)),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            if not isinstance(exc, Exception):
                raise exc  # cancelled: the session is being torn down
        return failed

    async def _start_lane(self, opener: Callable[[], Awaitable[Channel]], i: int, token: bytes, kind: str) -> None:
        """One lane, working as soon as its channel is open; ``kind`` goes in the summary."""

        lane = await open_lane(opener, self, f"#{i + 1}", self.lane_work, token)
        for task in (lane.reader, lane.writer):
            if task is not None:
                task.add_done_callback(self._lane_ended)
        self.summary.lanes_kind = kind  # known once a lane carries data
        self.lanes.append(lane)
        self.summary.lanes = len(self.lanes)
        self.changed.set()

    def _lanes_take_data(self) -> bool:
        """Whether file data goes to the lanes' work queue rather than the main session.

        Once a lane is ready; and while lanes are being dialled back, whose channels come
        with the agent's first answers: data sent on the main session meanwhile would fill
        its window ahead of the entries that follow (measured at 150 ms on the small dataset).
        """

        return self._lanes_coming or any(lane.ready for lane in self.lanes)

    def _take_back_lane_work(self) -> None:
        """No lane came after all: what waits for one goes back to the main session, in its order."""

        waiting: list[int] = []
        while not self.lane_work.empty():
            waiting.append(self.lane_work.get_nowait()[0])
        self.need.extendleft(reversed(waiting))
        if waiting:
            self.changed.set()

    def _lane_ended(self, _task: asyncio.Task[None]) -> None:
        """A lane's reader or writer ended (broke, or closed): `_check` looks at the lanes again."""

        self._lane_task_ended = True

    def _report_lane_failures(self, failed: list[BaseException], count: int) -> None:
        if failed:
            first = failed[0]
            why = first.message if isinstance(first, GeorepError) else (str(first) or type(first).__name__)
            hint = f"; hint: {first.hint_text}" if isinstance(first, GeorepError) and first.hint_text else ""
            self.summary.warnings.append(
                f"{len(failed)} of {count} data lanes could not be opened ({why}); file data went over "
                f"{len(self.lanes)} lane(s) and the main session{hint}"
            )

    def _dials_lanes(self) -> bool:
        """Whether lanes will be dialled back by the agent (`_dial_lanes`), if any are opened."""

        return self.opts.lanes.join and hasattr(self.chan, "call_lanes_back")

    async def _ask_to_dial(self, count: int) -> m.DialLanes:
        """Have sshd listen for the lanes the agent will dial (the request leaves now); the message that asks it to."""

        calls = await self.chan.call_lanes_back()  # type: ignore[attr-defined]
        token = secrets.token_bytes(32)
        self._dial = (calls, token)
        self._lanes_dialled = asyncio.get_running_loop().create_future()
        self._lanes_coming = True
        return m.DialLanes(calls.path.encode(), count, token)

    async def _dial_lanes(self, count: int) -> bool:
        """Lanes the agent dials back through sshd (`georep.transport.ssh.LaneCalls`); False: none came.

        Each channel sshd opens back becomes a lane as it arrives, before the agent's count
        does: the count only says how many to wait for.  Zero: the agent could not dial (why:
        `dial_refused`; no warning, sshd may simply not forward that way), and the lanes are
        opened from this side instead.
        """

        if self._dial is None:  # not asked for in the Hello's flight (see `handshake`): now
            self.out.send(await self._ask_to_dial(count))
            self.out.flush()
        assert self._dial is not None and self._lanes_dialled is not None
        calls, token = self._dial
        dialled = self._lanes_dialled
        arrived = asyncio.Event()
        taken = 0

        async def next_channel() -> Channel:
            nonlocal taken
            chan: Channel = await calls.next()
            taken += 1
            arrived.set()
            return chan

        # every task takes the next channel to arrive; a task is done once its lane runs
        tasks = [asyncio.ensure_future(self._start_lane(next_channel, i, token, "dialled")) for i in range(count)]
        try:
            answer = await self._await(dialled)
            deadline = time.monotonic() + DIALLED_WAIT_S
            while taken < answer.count and time.monotonic() < deadline:
                arrived.clear()
                waiter = asyncio.ensure_future(arrived.wait())
                await asyncio.wait(self._with_reader(waiter), timeout=deadline - time.monotonic(),
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                self._check()
        finally:
            self._lanes_coming = False
            calls.close()
            for task in tasks:
                task.cancel()  # those still waiting for a channel (the others are done)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if answer.count == 0:  # sshd refused the socket (no remote forwarding), say: nothing to warn about
            self.dial_refused = answer.why
            return False
        failed: list[BaseException] = [r for r in results if isinstance(r, Exception)]
        if taken < answer.count:
            failed.append(ConnectionLost(f"sshd opened {taken} of the {answer.count} lanes the agent dialled"))
        self._report_lane_failures(failed, count)
        if answer.count < count:  # it stopped dialling (out of descriptors, say): it said why
            self.summary.warnings.append(f"the agent dialled {answer.count} of {count} data lanes ({answer.why}); "
                                         "file data went over those and the main session")
        return True

    async def _ask_lane_socket(self) -> m.LaneSocket:
        """Where lanes may join the agent (answered one round trip later, beside the handshake's)."""

        self._lane_socket = asyncio.get_running_loop().create_future()
        self.out.send(m.OpenLanes())
        self.out.flush()
        return await self._await(self._lane_socket)

    async def _stop_opening_lanes(self) -> None:
        task, self._lanes_task = self._lanes_task, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

    def lane_staged(self, seq: int, name: bytes, size: int, mtime_ns: int) -> None:
        self.out.send(m.Adopt(seq, name, size, mtime_ns))
        self._answer_final.add(seq)
        self.out.flush()

    def lane_failed(self, seq: int, cause: str) -> None:
        self.out.send(m.DataAbort(seq, cause))
        self._answer_final.add(seq)
        self.out.flush()

    def lane_sent(self, seqs: Iterable[int]) -> None:
        self._lane_sent.update(seq for seq in seqs if seq in self.inflight and seq not in self._answer_final)
        self.changed.set()

    # -- the main loop -------------------------------------------------------------------

    async def run(
        self,
        entries: Iterable[SourceEntry | Moved],
        links: Callable[[], list[tuple[bytes, bytes, bytes, bytes]]],
        source_entries: Callable[[], int],
        *,
        removals: Callable[[], Iterable[tuple[bytes, bytes, bytes, bytes]]] | None = None,
        seal: bool = False,
        meanwhile: Callable[[], None] | None = None,
    ) -> Summary:
        """A copy (``--oneshot``): entries, then hard links, then what the source no longer has.

        Without ``removals`` the agent's mirror sweep (``Options.mirror``) removes every name
        not confirmed in this session; with it (a rerun that sent only changes), the names
        it lists are removed one by one.  ``seal``: ask the agent for a token vouching for
        what this session did (`sealed`), for the next run's `handshake`.  ``meanwhile``:
        called once everything is sent, while the agent writes what is left and answers
        (see `finish`).
        """

        t0 = time.monotonic()
        try:
            for se in entries:
                if isinstance(se, Moved):
                    await self.send_move(se.se)
                else:
                    await self.send_entry(se)
            # The agent applies this session's messages in order, so what follows only has to
            # come behind every item's last data, not behind its answer (`_drain_all`):
            # the extra names, the removals and Finish each skip a round trip.  Data that
            # joined lanes carry is not in that order: an extra name or a removal waits for
            # its answer, Finish only for the lane to have written it (the agent holds
            # Finish until it arrived), which saves a round trip at the end of a copy.
            page = links()
            if page or removals is not None:
                await self._drain_all(in_full=True)  # every inode's data is ahead of its extra names
            while page:
                for oid, parent, name, path in page:
                    await self.send_link(oid, parent, name, path)
                page = links()
            if removals is not None:
                for oid, parent, name, path in removals():
                    await self.send_remove(oid, parent, name, path)
            await self._drain_all(in_full=True, lane_sent=True)  # the lanes' work is done: they may close
            # nothing more goes to a lane: they close while the agent sweeps, and Bye rides
            # behind Finish, so the end of a run costs one round trip, not one per channel
            await self._stop_opening_lanes()
            lanes_closed = asyncio.ensure_future(self._close_lanes())
            try:
                self.summary.deleted += await self.finish(
                    self.opts.mirror and removals is None, source_entries(), bye=True, seal=seal, in_full=True,
                    meanwhile=meanwhile,
                )
            except BaseException:
                lanes_closed.cancel()
                raise
        except GeorepError:
            await self._reap()
            raise
        await self._close_main(bye_sent=True)
        await lanes_closed
        self.summary.bytes_wire = self.bytes_wire
        self.summary.seconds = time.monotonic() - t0
        return self.summary

    # -- primitives (also driven by the daemon) -------------------------------------------

    async def send_entry(self, se: SourceEntry) -> None:
        await self._room_for_one()
        self._queue_entry(se)
        if not self.out.queued:  # a batch of frames just went to the transport: let it drain
            await self._drain()
        if self._on_progress is not None and time.monotonic() - self._last_progress > 0.5:
            self._last_progress = time.monotonic()
            self.summary.bytes_wire = self.bytes_wire
            self._on_progress(self.summary)

    def _queue_entry(self, se: SourceEntry, move: bool = False) -> None:
        """Send ``se`` whole, or (``move``) as a rename by id: it changed nothing but its name."""

        self._seq += 1
        self.inflight[self._seq] = se
        e = se.entry
        if move:
            self._moves.add(self._seq)
            self.out.send(m.MoveMsg(self._seq, e.id, e.parent, e.name))
        else:
            self.out.write(self.session.send_entry(e, self._seq))
            if e.kind is not Kind.FILE:  # only a regular file is ever answered NEED
                self._answer_final.add(self._seq)
        self.summary.entries += 1

    async def send_move(self, se: SourceEntry) -> None:
        """``se`` changed nothing but its name since the agent confirmed it: a rename by id."""

        await self._room_for_one()
        self._queue_entry(se, move=True)

    async def send_link(self, oid: bytes, parent: bytes, name: bytes, path: bytes) -> None:
        await self._room_for_one()
        self._seq += 1
        self.inflight[self._seq] = NameOp("link", oid, parent, name, path)
        self._answer_final.add(self._seq)
        self.out.send(m.LinkMsg(self._seq, oid, parent, name))

    async def send_remove(self, oid: bytes, parent: bytes, name: bytes, path: bytes) -> None:
        await self._room_for_one()
        self._seq += 1
        self.inflight[self._seq] = NameOp("remove", oid, parent, name, path)
        self._answer_final.add(self._seq)
        self.out.send(m.RemoveMsg(self._seq, oid, parent, name))

    async def settle(self) -> None:
        """Wait until every item sent so far has its final result (data sent where asked)."""

        await self._drain_all()

    async def finish(self, mirror: bool, source_entries: int, *, bye: bool = False, seal: bool = False,
                     in_full: bool = False, meanwhile: Callable[[], None] | None = None) -> int:
        """End a batch: the agent sweeps (staging; names not confirmed, if ``mirror``) and settles dirs.

        ``seal``: then ask for a token vouching for this session (`sealed`).  ``bye``: this is
        the session's last request; Bye goes right behind, so the agent answers and exits in
        the same round trip (`run` then only waits for the channels to close).  ``in_full``:
        Finish may go as soon as every item's data is sent (`_drain_all`); the answers of
        the items still in flight come before Finished, which is checked.  ``meanwhile``: work
        of the caller's done here, once Finish is on its way, while the agent writes the
        last files, sweeps and commits (its answers wait in the channel meanwhile).
        """

        # in full: nor for the answers of what joined lanes sent whole (the agent holds Finish
        # until that data arrived, protocol v6); waiting for them cost a round trip per copy
        await self._drain_all(in_full=in_full, lane_sent=in_full)
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        self.out.send(m.Finish(mirror, source_entries, self.opts.allow_mass_delete))
        if seal:
            self._sealed = loop.create_future()
            self.out.send(m.Seal())
        if bye:
            self.out.send(m.Bye())
        await self._drain()
        if meanwhile is not None:
            meanwhile()
        finished = await self._await(self.finished)
        if self.inflight:  # the agent answers in order: every item before Finished
            raise ProtocolError(f"Finished came before the answers of {len(self.inflight)} items")
        if self._sealed is not None:
            self.sealed = await self._await(self._sealed)
        return finished.deleted

    async def close(self) -> None:
        """End the session once every item was answered: the lanes and the main session at once."""

        await self._stop_opening_lanes()
        await asyncio.gather(self._close_lanes(), self._close_main(bye_sent=False))
        self.summary.bytes_wire = self.bytes_wire

    async def _close_lanes(self) -> None:
        """Every item was answered: nothing waits on a lane.  One whose agent never answered its
        handshake was given nothing; it is closed at once, not waited for."""

        for lane in self.lanes:
            if not lane.ready:
                lane.kill()
        await asyncio.gather(*(lane.close() for lane in self.lanes if lane.ready))

    async def _close_main(self, bye_sent: bool) -> None:
        if not bye_sent:
            self.out.send(m.Bye())
        self.out.flush()
        with contextlib.suppress(ConnectionError):  # the agent read Bye and exited first: its end is closed
            await asyncio.wait_for(self.chan.drain(), 30)
        await self.chan.close_input()
        await self.chan.wait()

    async def _await(self, fut: asyncio.Future[T]) -> T:
        assert self._reader is not None
        await asyncio.wait(self._with_reader(fut), return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        await self._raise_failure()
        raise AssertionError("unreachable")

    async def _room_for_one(self) -> None:
        while True:
            self._check()
            if self.need:
                await self._send_data()
                continue
            if len(self.inflight) < self._window():
                return
            await self._drain()
            self.changed.clear()
            if not self.need and len(self.inflight) >= self._window():
                self.out.flush()
                await self.changed.wait()

    def _window(self) -> int:
        return self.opts.window_with_lanes if self._lanes_task is not None else self.opts.window

    async def _drain_all(self, *, in_full: bool = False, lane_sent: bool = False) -> None:
        """Wait until every item in flight has its last answer, data sent where asked.

        ``in_full``: only until nothing the agent could still say would make the sender send
        more (`_answer_final`): the first answers (NEED, block sums) and those to a delta or
        a rename by id (the agent may ask again for the whole) are awaited, the last answers
        of the rest are not.  The agent applies messages in order, so what is sent after
        this reaches it behind everything those items still need.  ``lane_sent`` (with
        ``in_full``, right before Finish): nor those of items a joined lane has sent whole.
        """

        await self._drain()
        while len(self.inflight) > self._settled(in_full, lane_sent):
            self._check()
            if self.need:
                await self._send_data()
                continue
            self.changed.clear()  # (no await since the test above: no answer can slip by)
            self.out.flush()
            await self.changed.wait()

    def _settled(self, in_full: bool, lane_sent: bool) -> int:
        """How many items in flight `_drain_all` need not wait for (see its arguments)."""

        if not in_full:
            return 0
        return len(self._answer_final) + (len(self._lane_sent) if lane_sent else 0)

    # -- data ----------------------------------------------------------------------------

    async def _send_data(self) -> None:
        """Send the data of every item the agent asked for, packing small files."""

        packer = BlobPacker()
        while self.need:
            if batch := self._small_batch():
                await self._send_small(batch, packer)
                continue
            seq = self.need.popleft()
            se = self.inflight[seq]
            assert isinstance(se, SourceEntry)
            sums = self.sums.pop(seq, None)
            again = seq in self._delta_sent  # the delta did not verify: now the whole file
            # asked per file: one call may send for seconds (big files), while lanes become ready
            if sums is None and not again and self._lanes_take_data():
                await self.lane_work.put((seq, se))  # a delta needs the main session's copy
                continue
            await self._send_file(seq, se, sums, again, packer)
        if (rest := packer.take()) is not None:
            self.out.send(rest)
        await self._drain()

    def _small_batch(self) -> list[tuple[int, SourceEntry]]:
        """The items at the head of `need` that `_send_small` reads many at a time (maybe none), with their entries.

        Listed as small, asked for whole (no block sums, no delta sent), and no lane ready
        to take them; the batch ends at the first item that is not so.
        """

        need, inflight = self.need, self.inflight
        if not need or self._lanes_take_data():
            return []
        batch: list[tuple[int, SourceEntry]] = []
        listed = 0
        for seq in need:
            se = inflight[seq]
            assert isinstance(se, SourceEntry)
            size = se.entry.size
            if size > SMALL_FILE or seq in self.sums or seq in self._delta_sent or len(batch) == READ_BATCH:
                break
            listed += size
            if listed > SMALL_BATCH_BYTES and batch:
                break
            batch.append((seq, se))
        for _ in batch:
            need.popleft()
        return batch

    async def _send_small(self, batch: list[tuple[int, SourceEntry]], packer: BlobPacker) -> None:
        """The data of the small files ``batch``: read straight into Blobs frames (`small_frames`)."""

        for frame, settled in small_frames(batch):
            for seq, se, found in settled:
                self._answer_final.add(seq)
                status = found[0]
                if status == READ:
                    count_read(self.summary, se, found)
                elif status == NOT_SMALL:  # it grew past the limit, or has holes: the general path
                    await self._send_file(seq, se, None, False, packer)
                else:
                    self.out.send(m.DataAbort(seq, unreadable_cause(status, found[1])))
            if frame:
                self.out.write(frame)
                await self._drain()

    async def _send_file(self, seq: int, se: SourceEntry, sums: m.BlockSums | None, again: bool,
                         packer: BlobPacker) -> None:
        """The data of one file, read one system call at a time: whole, as a delta, or streamed."""

        self._answer_final.add(seq)  # but for a delta (below), the agent may ask again
        opened = open_source(se.path)
        if isinstance(opened, str):
            self.out.send(m.DataAbort(seq, opened))
            return
        fd, st0 = opened
        try:
            mtime = publish_mtime(se, st0)
            if sums is not None and st0.st_size > SMALL_FILE and _dense(fd, st0.st_size):
                if (rest := packer.take()) is not None:
                    self.out.send(rest)
                self._delta_sent.add(seq)
                self._answer_final.discard(seq)
                await self._delta(seq, fd, st0, mtime, sums)
            else:
                await self.out.send_whole(seq, fd, st0, mtime, packer, self.summary, self._drain)
            problem = unstable(fd, st0, se)
            if problem is not None:
                self.summary.problems.append(problem)
            if not again:
                self.summary.files += 1
        except OSError as exc:
            self.out.send(m.DataAbort(seq, f"cannot read on the source: {exc.strerror}"))
        finally:
            os.close(fd)

    async def _delta(self, seq: int, fd: int, st0: os.stat_result, mtime: int, sums: m.BlockSums) -> None:
        """Send only the blocks the agent's copy lacks; it copies the others from that copy.

        The file is read once, block by block (one block in memory); the digest covers
        every byte, sent or not, cut on the chunk grid exactly as a full send would.
        """

        enc = DeltaEncoder(BlockMatcher(sums.block_size, sums.basis_size, sums.sums), st0.st_size, CHUNK_SIZE)
        self.out.send(m.DeltaBegin(seq, st0.st_size))
        while want := enc.want():
            # a short read (the file shrank) ends it: the stability check reports that
            for off, piece in enc.feed(os.pread(fd, want, enc.pos)):
                self.out.write_chunk(seq, off, piece)
            await self._drain()
        self.summary.bytes_data += enc.sent
        self.summary.bytes_matched += enc.matched
        self.out.send(m.DataEnd(seq, enc.finish(), mtime))

"""`georep-sync daemon`: the composition root, source → batch → transport under one event loop.

Theory of operation
-------------------
One daemon per primary brick.  With no saved position it first records where the
journals stand, then crawls the brick (as ``--oneshot`` does), then replays the journals
from the recorded position — replay is idempotent, so the hand-off has no gap — and
then follows the live journal.

Each journal record becomes changes (`georep.batch.changes`), the `Coalescer` turns a
window of them into an ordered batch, and the batch is sent as protocol items.  Objects
are read from the brick *at sync time* through their gfid handles: the journal says
which ids changed, the brick says what they are now (names from ``trusted.gfid2path``
and directory handles, data and metadata from the object).  That is what makes cross-
brick ordering (second-granular journals) and replays harmless: the secondary converges
to the brick's present state.  Removals are sent only for names the brick no longer has.

The journal position is saved only once the agent acknowledged the whole batch.  Gaps
the journals cannot cover (`georep.source.brick.Gap`) are logged with their time window
and repaired by a crawl of the brick.  SIGTERM finishes the batch in flight, saves the
position and exits 0; a lost connection is retried with back-off from the saved position.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from georep.batch.changes import (
    STAGING,
    AddLink,
    Change,
    Clear,
    Data,
    JournalConverter,
    Make,
    Move,
    Remove,
    Rename,
    Rmdir,
    SyncData,
    SyncMeta,
    Unlink,
)
from georep.batch.checkpoint import SessionState
from georep.batch.coalesce import Batch, Coalescer
from georep.batch.policy import CutPolicy, Window
from georep.errors import AgentFailed, ConnectionLost, SshUnreachable
from georep.model import ROOT_ID, Kind, Problem
from georep.protocol.messages import ANY_HOLDER
from georep.reporting import BACKOFF_FIRST_S, Reporter, Status, log
from georep.source.brick import Brick, BrickJournal, Gap, Position
from georep.source.changelog import DataRecord, MetaRecord, Record
from georep.source.crawl import Crawler, SourceEntry, make_entry
from georep.source.identity import IdStore
from georep.transport.channel import Channel
from georep.transport.sender import NO_LANES, Lanes, Options, Sender

#: How often the live journal is polled when nothing arrives (reads at EOF are cheap).
POLL_S = 0.02
#: Live batches: cut after a short quiet (a burst such as rsync's write + rename lands in
#: one batch), never hold a change longer than half a second, bound a batch's size.
LIVE_POLICY = CutPolicy(max_items=20_000, max_bytes=256 << 20, quiet_delay_s=0.03, max_latency_s=0.5)
#: An object changed less than this long ago is read a moment later (see `_place`).
SETTLE_NS = 50_000_000


#: A hard link to send once its inode exists: (id, parent, name, path on the source).
Extra = tuple[bytes, bytes, bytes, bytes]


class BrickDaemon(Reporter):
    """Keeps one secondary in sync with one brick."""

    def __init__(self, brick: Brick, secondary: str, state: SessionState, store: IdStore,
                 open_channel: Any, *, mirror_crawl: bool = True, verbose: bool = False,
                 reconcile_s: float = 86400.0, lanes: Lanes = NO_LANES) -> None:
        self.brick = brick
        self.lanes = lanes
        self.secondary = secondary
        self.state = state
        self.store = store
        self.open_channel = open_channel
        self.mirror_crawl = mirror_crawl
        self.verbose = verbose
        #: a crawl this often covers what GlusterFS never journals (fallocate, discard,
        #: zerofill, copy_file_range): the agent compares size and mtime, so it is cheap
        self.reconcile_s = reconcile_s
        self._last_crawl = time.monotonic()
        self.scope = f"brick:{brick.volume_id.hex()}:{os.fsdecode(brick.root)}"
        self.status = Status(os.fsdecode(brick.root), secondary)
        self.stop = asyncio.Event()
        self.privileged = os.geteuid() == 0
        self._known_dirs: OrderedDict[bytes, None] = OrderedDict()
        self._window_removed: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()

    # -- main loop ------------------------------------------------------------------

    async def run(self) -> int:
        backoff = BACKOFF_FIRST_S
        while not self.stop.is_set():
            try:
                await self._session()
                return 0
            except (ConnectionLost, AgentFailed, SshUnreachable) as exc:
                backoff = await self.pause_after(exc, backoff)
        return 0

    async def _session(self) -> None:
        saved = self.state.load_position()
        position = Position.from_json(saved) if saved else None
        journal = BrickJournal(self.brick, position)
        chan: Channel = await self.open_channel()
        sender = Sender(chan, Options(mirror=self.mirror_crawl, lanes=self.lanes), scope=self.scope)
        try:
            await sender.handshake()
            if position is None:
                start = journal.position  # recorded before the crawl: replay covers the crawl's window
                await self._crawl(sender, "initial crawl")
                self.state.save_position(start.as_json())
                self.status.position = start.as_json()
            await self._follow(journal, sender)
            await sender.close()
        except BaseException:
            await sender.abort()
            raise
        finally:
            journal.close()

    async def _crawl(self, sender: Sender, why: str) -> None:
        self.set_state("crawl", why)
        self._last_crawl = time.monotonic()
        self.status.counters.crawls += 1
        crawler = Crawler(self.brick.root, self.store)
        for se in crawler:
            if se.entry.kind.name == "DIR":
                self._remember_dir(se.entry.id)
            await sender.send_entry(se)
        await sender.settle()
        while page := self.store.deferred_links():
            for oid, parent, name, path in page:
                await sender.send_link(oid, parent, name, path)
        deleted = await sender.finish(self.mirror_crawl, crawler.count)
        self.status.counters.deleted += deleted
        self._report(sender, crawler.problems)

    async def _follow(self, journal: BrickJournal, sender: Sender) -> None:
        self.set_state("live")
        conv = JournalConverter()
        coal = Coalescer()
        window = Window()
        last_pos: Position | None = None
        # GlusterFS journals at most one D (and one M per fop) per inode per journal: writes
        # after the first one in a rollover period leave no record.  Following the live
        # journal, we may read an object before those writes; so every object with D/M in
        # a journal is synced once more when that journal is complete (quick check: no
        # data moves unless size or mtime changed).
        period_index = journal.position.index
        period_ids: set[bytes] = set()
        while True:
            got = False
            for rec, pos in journal.poll():
                got = True
                window.note(time.monotonic())
                if pos.index != period_index:
                    await self._add(coal, [Data(oid) for oid in period_ids], sender)
                    period_ids.clear()
                    period_index = pos.index
                if isinstance(rec, DataRecord | MetaRecord):
                    period_ids.add(rec.gfid)
                await self._add(coal, self._changes(conv, rec), sender)
                last_pos = pos
                if coal.pending_changes >= LIVE_POLICY.max_items:
                    break
            if journal.position.index != period_index and period_ids:
                window.note(time.monotonic())
                await self._add(coal, [Data(oid) for oid in period_ids], sender)
                period_ids.clear()
            period_index = journal.position.index
            if journal.overwritten > self.status.counters.overwritten_journals:
                log(f"WARNING: {journal.overwritten - self.status.counters.overwritten_journals} journal(s) were "
                    "overwritten by GlusterFS's rollover bug (changelog.rollover-time too low; set it to 2 or more)"
                    + ("" if journal.gaps else "; their records were read live before that, nothing lost"))
                self.status.counters.overwritten_journals = journal.overwritten
            gaps = journal.take_gaps()
            if gaps:
                await self._repair(gaps, sender)
            elif not coal.pending_changes and time.monotonic() - self._last_crawl >= self.reconcile_s:
                await self._crawl(sender, "periodic reconciliation (operations GlusterFS never journals: "
                                          "fallocate, discard, zerofill, copy_file_range)")
                self.set_state("live")
            now = time.monotonic()
            pending = coal.pending_changes
            self.status.pending = pending
            self.status.lag_seconds = now - window.first_at if pending and window.first_at else 0.0
            if pending and (LIVE_POLICY.should_cut(now, window) or self.stop.is_set()):
                await self._apply(coal.cut(), sender)
                window.reset()
                if last_pos is not None:
                    self.state.save_position(last_pos.as_json())
                    self.status.position = last_pos.as_json()
                self.status.last_synced = time.time()
                self.status.pending = 0
                self.status.lag_seconds = 0.0
                self.write_status(force=True)
            elif not pending and last_pos is not None and self.status.position != last_pos.as_json():
                # records that changed nothing replicable (e.g. internal directories)
                window.reset()
                self.state.save_position(last_pos.as_json())
                self.status.position = last_pos.as_json()
            else:
                self.write_status()
            if self.stop.is_set() and not coal.pending_changes:
                self.set_state("stopped", "SIGTERM: position saved")
                return
            if not got:
                deadline = LIVE_POLICY.next_deadline(window)
                wait = POLL_S if deadline is None else min(POLL_S, max(deadline - time.monotonic(), 0.0))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), wait)

    def _changes(self, conv: JournalConverter, rec: Record) -> list[Change]:
        """Journal record → changes; a rename learns from the brick whether it moved a directory."""

        changes = conv.convert(rec)
        for i, ch in enumerate(changes):
            if isinstance(ch, Rename) and ch.kind is None:
                st = self.brick.lstat(ch.id)  # a directory's is read through its path
                if st is not None and stat.S_ISDIR(st.st_mode):
                    changes[i] = dataclasses.replace(ch, kind=Kind.DIR)
        return changes

    async def _add(self, coal: Coalescer, changes: list[Change], sender: Sender) -> None:
        for change in changes:
            if isinstance(change, Unlink | Rmdir):
                # The coalescer nets create+unlink to nothing, assuming the secondary is as
                # it was before the window.  After a crawl or a crash that is not so (the
                # crawl may have copied the object already), so every name a window
                # removed is also removed on the secondary if the brick no longer has it.
                self._window_removed[(change.id, change.parent, change.name)] = None
            elif isinstance(change, Rename) and change.kind is not Kind.DIR:
                # A file's old name, likewise: when the secondary already has the new name
                # as a hard link of the same object (``rm b; mv a b`` with a and b linked,
                # or names read while a rename was under way), placing the object there
                # renames nothing, and the old name would stay beside the new one.
                self._window_removed[(change.id, change.old_parent, change.old_name)] = None
            forced = coal.add(change)
            if forced is not None:
                await self._apply(forced, sender)

    async def _repair(self, gaps: list[Gap], sender: Sender) -> None:
        for gap in gaps:
            self.status.counters.gaps += 1
            log(f"WARNING: the journals miss changes: {gap.describe()}; repairing with a crawl of the brick")
        await self._crawl(sender, "reconciliation crawl: " + "; ".join(g.reason for g in gaps))
        self.set_state("live")

    # -- one batch ------------------------------------------------------------------

    async def _apply(self, batch: Batch, sender: Sender) -> None:
        """Send a batch as protocol items, reading every object from the brick now."""

        self.status.counters.batches += 1
        self.status.counters.changes += batch.changes_in
        if self.verbose:
            log(f"batch of {batch.changes_in} changes: " + "; ".join(_describe(op) for op in batch.ops))
        place: OrderedDict[bytes, None] = OrderedDict()
        links: list[AddLink] = []
        removes: list[Remove | Clear] = []
        parents: OrderedDict[bytes, None] = OrderedDict()
        for op in batch.ops:
            if isinstance(op, Make):
                place[op.id] = None
                parents[op.parent] = None
            elif isinstance(op, Move):
                if op.new_parent != STAGING:
                    place[op.id] = None
                for p in (op.old_parent, op.new_parent):
                    if p != STAGING:
                        parents[p] = None
            elif isinstance(op, SyncData | SyncMeta):
                place[op.id] = None
            elif isinstance(op, AddLink):
                links.append(op)
                parents[op.parent] = None
            elif isinstance(op, Remove | Clear):
                removes.append(op)
                if op.parent != STAGING:
                    parents[op.parent] = None
        extra_links: list[Extra] = []
        for oid in place:
            extra_links.extend(await self._place(oid, sender))
        await sender.settle()  # data published: extra names can link to the inodes now
        for op in links:
            st = self.brick.lstat(op.id)
            if st is not None and (op.parent, op.name) in self.brick.names(op.id, st):
                extra_links.append((op.id, op.parent, op.name, self.brick.handle(op.id)))
        for oid, parent, name, path in dict.fromkeys(extra_links):
            await sender.send_link(oid, parent, name, path)
        window, self._window_removed = self._window_removed, OrderedDict()
        for oid, parent, name in window:
            removes.append(Remove(oid, parent, name))
            parents[parent] = None
        for op in dict.fromkeys(removes):
            await self._remove(op, sender)
        for pid in parents:
            if pid not in place:
                await self._place(pid, sender)
        self.status.counters.deleted += await sender.finish(False, 1)
        self._report(sender, [])

    def _remember_dir(self, oid: bytes) -> None:
        self._known_dirs[oid] = None
        self._known_dirs.move_to_end(oid)
        while len(self._known_dirs) > 200_000:
            self._known_dirs.popitem(last=False)

    async def _ensure_ancestors(self, parent: bytes, sender: Sender) -> None:
        """Place the directories above an object first (they may be new to the secondary)."""

        chain: list[bytes] = []
        cur = parent
        while cur != ROOT_ID and cur not in self._known_dirs and len(chain) < 4096:
            chain.append(cur)
            loc = self.brick.dir_location(cur)
            if loc is None:
                break
            cur = loc[0]
        for did in reversed(chain):
            await self._place(did, sender, ancestors=False)

    async def _place(self, oid: bytes, sender: Sender, ancestors: bool = True) -> list[Extra]:
        """Send the object as the brick has it now; returns its extra hard links to send later."""

        st = self.brick.lstat(oid)
        if st is None:
            return []  # gone: a removal in this or a later batch takes care of it
        young = time.time_ns() - st.st_ctime_ns
        if 0 <= young < SETTLE_NS:
            # the fop that journalled this may not have finished its own metadata update
            # (trusted.glusterfs.mdata follows the data by a few µs to ms): let it land
            await asyncio.sleep((SETTLE_NS - young) / 1e9)
            st = self.brick.lstat(oid)
            if st is None:
                return []
        names = [(ROOT_ID, b"")] if oid == ROOT_ID else self.brick.names(oid, st)
        if not names:
            return []
        parent, name = names[0]
        if ancestors and parent != ROOT_ID:
            await self._ensure_ancestors(parent, sender)
        path = self.brick.object_path(oid, st)
        entry = make_entry(oid, parent, name, path, st, brick=True, privileged=self.privileged)
        if entry is None:
            return []
        await sender.send_entry(SourceEntry(entry, path, st.st_mtime_ns))
        if stat.S_ISDIR(st.st_mode):
            self._remember_dir(oid)
            return []
        handle = self.brick.handle(oid)
        return [(oid, p, n, handle) for p, n in names[1:]]

    async def _remove(self, op: Remove | Clear, sender: Sender) -> None:
        """Remove a name on the secondary only if the brick no longer has it."""

        if op.parent == STAGING:
            return
        ppath = self.brick.dir_path(op.parent)
        if ppath is not None:
            try:
                os.lstat(os.path.join(ppath, op.name))
                here = True
            except FileNotFoundError:
                here = False
            if here and isinstance(op, Clear):
                return
            if here and isinstance(op, Remove):
                st = self.brick.lstat(op.id)
                if st is not None and (op.parent, op.name) in self.brick.names(op.id, st):
                    return
        oid = op.id if isinstance(op, Remove) else ANY_HOLDER
        await sender.send_remove(oid, op.parent, op.name, op.name)

    def _report(self, sender: Sender, problems: list[Problem]) -> None:
        s = sender.summary
        self.status.counters.items = s.entries
        self.status.counters.bytes_data = s.bytes_data
        self.log_findings(s, problems)


def _describe(op: Any) -> str:
    """One operation for the verbose log: ids shortened, names shown safely."""

    parts = []
    for f in dataclasses.fields(op):
        v = getattr(op, f.name)
        if isinstance(v, bytes):
            v = v.hex()[:8] if len(v) == 16 and f.name != "name" else v.decode("utf-8", "backslashreplace")
        parts.append(f"{f.name}={v}")
    return f"{type(op).__name__}({', '.join(parts)})"


async def run_daemon(source: bytes, secondary: str, state_dir: Path, open_channel: Any,
                     verbose: bool = False, reconcile_s: float = 86400.0, lanes: Lanes = NO_LANES) -> int:
    brick = Brick(source)
    brick.check_changelogs()
    state = SessionState(state_dir, brick.root, secondary)
    state.lock()
    store = IdStore(state_dir, brick.root)
    daemon = BrickDaemon(brick, secondary, state, store, open_channel, verbose=verbose, reconcile_s=reconcile_s,
                         lanes=lanes)
    return await daemon.serve(store)

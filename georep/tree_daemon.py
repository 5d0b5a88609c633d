"""`georep-sync daemon DIR SECONDARY` when DIR is a plain directory: follow it live with inotify.

Theory of operation
-------------------
The same guarantees as the brick daemon (`georep.daemon`), with inotify instead of a
journal: renames are tracked by identity, nothing is lost, nothing half-written reaches
the secondary.

* **Identity.** Ids come from the `IdStore` keyed by ``(st_dev, st_ino)``, exactly as
  ``--oneshot`` gives them on a plain tree, so a restart (or a oneshot run before the
  daemon) keeps tracking renames.  The store is committed before the agent sees an id.
* **Start-up without a gap.** Watches are placed first (`TreeWatcher.start`), then the
  tree is crawled as ``--oneshot`` does (mirror: names the source no longer has are
  removed, with the mass-delete guard), then the events that arrived meanwhile are
  replayed.  The crawl *is* the restart marker: the agent compares every entry with its
  index (id, size, mtime) and asks for data only where they differ, so a restart sends
  only what changed while the daemon was down, never a blind full copy.
* **Live.** A batch is the set of names that changed (hints), resolved against the tree
  now: a name that exists is sent as an entry (the agent renames by id: a moved file or
  directory costs one rename and no data); a directory that appeared is crawled; a name
  that is gone is removed.  Order inside a batch: entries parents first, then extra
  hard links once their inode exists, then removals — deletes last, so an object moved
  away was already renamed by its entry.  Each batch ends with ``Finish`` (staging
  swept, directory times settled).
* **New objects get new ids.**  Inode numbers are reused: an id keyed by one that once
  belonged to a deleted object would make the agent rename that object's copy (a
  directory with its stale children) into the new place.  So whatever inotify shows
  being created — a file, a mkdir, a tree moved in from outside — gets a fresh id.  An
  item the agent cannot apply is retried, and on a second failure sent as a new object.
* **Losses** (inotify queue overflow, out of watches, a watch tree that disagrees with
  the disk) are logged as warnings naming the limit to raise and repaired by a rescan:
  a new agent session with a mirror crawl, since only a full crawl can find deletions.
  While directories stay unwatched they are rescanned periodically; the watches are
  retried every few seconds and a last rescan follows once they are all in place.
* **SIGTERM** sends the ready changes and exits 0; a lost connection is retried with
  back-off and followed by a rescan.  Status: the same ``status.json`` as the brick
  daemon, plus counters for overflows, rescans and unwatched directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from georep.batch.checkpoint import SessionState
from georep.errors import AgentFailed, ConnectionLost, SourceMissing, SshUnreachable
from georep.model import ROOT_ID, Kind, Problem
from georep.protocol.messages import ANY_HOLDER
from georep.reporting import BACKOFF_FIRST_S, Counters, Reporter, Status, log
from georep.source.crawl import Crawler, SourceEntry, make_entry
from georep.source.identity import IdStore
from georep.source.inotify import (
    MAX_HINTS,
    Change,
    DevIno,
    Losses,
    Node,
    TreeWatcher,
    limit_advice,
    overflow_advice,
    renew_id,
    walk_subtree,
)
from georep.transport.channel import Channel
from georep.transport.sender import NO_LANES, Lanes, Options, Sender

#: Wait this long between looks while something is pending (deadlines, pairing).
POLL_S = 0.02
#: Unwatched directories: try to watch them this often ...
WATCH_RETRY_S = 5.0
#: ... and rescan the tree this often (at least ten crawl durations) until they are watched.
DEGRADED_RESCAN_S = 60.0
#: Ids are committed to the store at least this often during crawls (before they are sent).
ID_CHUNK = 1000
#: An item the agent could not apply is looked at again this many times.
RETRIES = 3
#: A watched directory found elsewhere than the watch tree says for this long: rebuild the tree.
MISMATCH_S = 2.0
#: Where the items of a live batch were found, for at most this many of them (beyond it a failed
#: item is looked for at its path only).
FOUND_AT_MAX = 10_000


@dataclass
class TreeCounters(Counters):
    overflows: int = 0  # inotify queue overflows (and other event losses)
    rescans: int = 0  # crawls after the first one, to repair a loss
    unwatched_dirs: int = 0  # directories without a watch now (max_user_watches)
    bytes_wire: int = 0  # bytes written to the secondary's channel


@dataclass(slots=True)
class _Inode:
    """A hard-linked inode met in a batch."""

    key: DevIno
    nlink: int
    data: bool = False  # its data or metadata may have changed: one entry, then every name linked
    #: its names seen in this batch: entry, and whether the name is new (created, linked, renamed here)
    names: dict[tuple[DevIno, bytes], tuple[SourceEntry, bool]] = field(default_factory=dict)

    def add(self, dkey: DevIno, se: SourceEntry, *, arrived: bool, data: bool) -> None:
        self.names[(dkey, se.entry.name)] = (se, arrived)
        self.data |= data
        self.nlink = max(self.nlink, se.entry.nlink)


def _inode(inodes: dict[bytes, _Inode], se: SourceEntry, key: DevIno) -> _Inode:
    ino = inodes.get(se.entry.id)
    if ino is None:
        ino = inodes[se.entry.id] = _Inode(key, se.entry.nlink)
    return ino


class TreeDaemon(Reporter):
    """Keeps one secondary in sync with one plain directory tree."""

    def __init__(self, root: bytes, secondary: str, state: SessionState, store: IdStore, open_channel: Any,
                 *, verbose: bool = False, lanes: Lanes = NO_LANES) -> None:
        self.root = os.path.abspath(root)
        self.lanes = lanes
        self.secondary = secondary
        self.state = state
        self.store = store
        self.open_channel = open_channel
        self.verbose = verbose
        self.counters = TreeCounters()
        self.status = Status(os.fsdecode(self.root), secondary, counters=self.counters)
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.watcher = TreeWatcher(self.root, self._wake_threadsafe)
        self.privileged = os.geteuid() == 0
        self._root_key: DevIno = (0, 0)
        self._known_dirs: OrderedDict[bytes, None] = OrderedDict()  # the agent has them (this session)
        self._dir_ids: OrderedDict[bytes, None] = OrderedDict()  # ever sent as directories
        self._renewed: dict[bytes, bytes] = {}  # old → new id of non-directories, this crawl
        self._mismatch: dict[Node, float] = {}  # watched directories not where the tree says, since
        #: every name known of each inode with more than one link: id → {(dir (dev, ino), name)}, and back
        self._links: dict[bytes, set[tuple[DevIno, bytes]]] = {}
        self._link_of: dict[tuple[DevIno, bytes], bytes] = {}
        self._link_inode: dict[DevIno, bytes] = {}  # (dev, ino) → id of those inodes
        self._outbox: list[tuple[SourceEntry, DevIno, DevIno]] = []
        #: totals of the sessions before the current one (the sender counts per session)
        self._base = (0, 0, 0)
        self._crawl_seconds = 0.0
        self._retry_at = 0.0
        self._rescan_at = 0.0
        self._retries: dict[bytes, int] = {}
        #: path → (its directory's (dev, ino), name) of the live batch's items: one whose directory was
        #: renamed before its data went is looked at again in the new place.  Not kept while crawling:
        #: a directory renamed during a crawl is crawled again anyway (`Hint.subtree`).
        self._found_at: dict[bytes, tuple[DevIno, bytes]] = {}

    def _wake_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self.wake.set)

    # -- status ---------------------------------------------------------------------------

    def _refresh_status(self) -> None:
        self.counters.unwatched_dirs = self.watcher.unwatched

    def _report(self, sender: Sender, problems: list[Problem]) -> None:
        s = sender.summary
        items, data, wire = self._base
        self.counters.items = items + s.entries
        self.counters.bytes_data = data + s.bytes_data
        self.counters.bytes_wire = wire + sender.bytes_wire
        self.log_findings(s, [*problems, *self.watcher.problems])
        self.watcher.problems.clear()

    # -- sessions -----------------------------------------------------------------------

    async def run(self) -> int:
        self.set_state("starting", "placing inotify watches")
        self.watcher.start()
        self._root_key = _key(os.stat(self.root))
        why = ("restart: scanning against the secondary's index" if self.state.load_position()
               else "initial scan")
        backoff = BACKOFF_FIRST_S
        try:
            while not self.stop.is_set():
                try:
                    next_why = await self._session(why)
                except (ConnectionLost, AgentFailed, SshUnreachable) as exc:
                    backoff = await self.pause_after(exc, backoff)
                    why = "reconnected: scanning against the secondary's index"
                    continue
                if next_why is None:
                    break
                why, backoff = next_why, BACKOFF_FIRST_S
            self.set_state("stopped", "SIGTERM: ready changes sent")
            return 0
        finally:
            self.watcher.stop()

    async def _session(self, why: str) -> str | None:
        """One agent session: a mirror crawl, then live batches; returns why a rescan is due."""

        chan: Channel = await self.open_channel()
        sender = Sender(chan, Options(mirror=True, lanes=self.lanes), scope="")
        try:
            await sender.handshake()
            rescan: str | None = None
            if await self._crawl(sender, why):
                rescan = await self._follow(sender)
            await sender.close()
        except BaseException:
            await sender.abort()
            raise
        finally:
            self._report(sender, [])
            self._base = (self.counters.items, self.counters.bytes_data, self.counters.bytes_wire)
        return rescan

    async def _crawl(self, sender: Sender, why: str) -> bool:
        """The whole tree, as ``--oneshot`` sends it; False when SIGTERM cut it short."""

        self.set_state("crawl", why)
        if self.counters.crawls:
            self.counters.rescans += 1
        self.counters.crawls += 1
        t0 = time.monotonic()
        losses = self.watcher.take_losses()
        if losses:  # before this crawl: it covers them; they are reported all the same
            self._losses(losses)
            if losses.overflows or losses.too_many_hints or losses.reader_failed or losses.inconsistent:
                self.watcher.start()
        self.watcher.crawling = True
        self.watcher.discard_hints()
        try:
            crawler = Crawler(self.root, self.store)
            self._known_dirs.clear()
            self._renewed.clear()
            self._links.clear()
            self._link_of.clear()
            self._link_inode.clear()
            self._renew_fresh()
            dir_keys: dict[bytes, DevIno] = {}
            for se in crawler:
                if self.stop.is_set():
                    self._outbox.clear()  # no Finish: the next start crawls again
                    return False
                if se.entry.id == ROOT_ID:
                    await sender.send_entry(se)
                    continue
                dkey = _dir_key(os.path.dirname(se.path), dir_keys)
                if dkey is None:
                    continue
                fkey = (0, 0)
                if se.entry.nlink > 1 and se.entry.kind is not Kind.DIR:
                    with contextlib.suppress(OSError):
                        fkey = _key(os.lstat(se.path))
                self._outbox.append((se, dkey, fkey))
                if len(self._outbox) >= ID_CHUNK:
                    await self._flush(sender)
            await self._flush(sender)
            await sender.settle()
            while page := self.store.deferred_links():
                for oid, parent, name, path in page:
                    oid = self._renewed.get(oid, oid)
                    dkey = _dir_key(os.path.dirname(path), dir_keys)
                    if dkey is not None:
                        with contextlib.suppress(OSError):
                            self._note_link(oid, dkey, name, _key(os.lstat(path)))
                    await sender.send_link(oid, parent, name, path)
            deleted = await sender.finish(True, crawler.count)
            self._retry_failed(sender)
        finally:
            self.watcher.crawling = False
        self.counters.deleted += deleted
        self._crawl_seconds = time.monotonic() - t0
        self._rescan_at = time.monotonic() + max(DEGRADED_RESCAN_S, 10 * self._crawl_seconds)
        position = {"source": "inotify", "scanned_at": round(time.time(), 3), "entries": crawler.count,
                    "watches": self.watcher.watches, "unwatched": self.watcher.unwatched}
        self.state.save_position(position)
        self.status.position = position
        self.status.last_synced = time.time()
        self._report(sender, crawler.problems)
        return True

    async def _flush(self, sender: Sender) -> None:
        """Send the buffered entries, their ids committed first (a crash never loses an id the agent has)."""

        if not self._outbox:
            return
        out = [(self._not_a_dir_id(se, fkey), dkey, fkey) for se, dkey, fkey in self._outbox]
        self._outbox = []
        self.store.commit()
        record = not self.watcher.crawling
        for se, dkey, fkey in out:
            e = se.entry
            if record and len(self._found_at) < FOUND_AT_MAX:
                self._found_at[se.path] = (dkey, e.name)
            if e.kind is Kind.DIR:
                self._remember_dir(e.id)
            elif e.nlink > 1:
                self._note_link(e.id, dkey, e.name, fkey)
            await sender.send_entry(se)

    # -- live -------------------------------------------------------------------------------

    async def _follow(self, sender: Sender) -> str | None:
        """Live batches until SIGTERM (None) or until a loss calls for a rescan (why)."""

        self.set_state("live", self._degraded())
        while True:
            if self.watcher.fatal:
                raise SourceMissing(self.watcher.fatal, hint="restart the daemon once the source is back in place")
            losses = self.watcher.take_losses()
            if losses:  # reported (and the watches placed again) by the crawl that repairs them
                self.watcher.requeue_losses(losses)
                return "rescan: " + ", ".join(losses.reasons())
            now = time.monotonic()
            if self.watcher.unwatched:
                if now >= self._retry_at:
                    self._retry_at = now + WATCH_RETRY_S
                    if self.watcher.retry_unwatched() == 0:
                        log("every directory is watched again; rescanning what changed meanwhile")
                        return "rescan: the missing watches are in place"
                    self.write_status(force=True)
                if now >= self._rescan_at:
                    return f"periodic rescan: {self._degraded()}"
            stopping = self.stop.is_set()
            changes = self.watcher.take(now, force=stopping)
            if changes:
                await self._apply(changes, sender)
                self.status.last_synced = time.time()
                self.write_status(force=True)
            if stopping:
                return None
            oldest = self.watcher.oldest()
            self.status.pending = self.watcher.pending
            self.status.lag_seconds = time.monotonic() - oldest if oldest is not None else 0.0
            self.write_status()
            self.watcher.clear_woken()
            self.wake.clear()
            timeout = POLL_S if self.watcher.busy() else 1.0
            waits = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.stop.wait())]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    def _degraded(self) -> str:
        n = self.watcher.unwatched
        if not n:
            return ""
        return (f"degraded: {n} director{'y' if n == 1 else 'ies'} not watched (inotify watch limit); "
                f"rescanned every {max(DEGRADED_RESCAN_S, 10 * self._crawl_seconds):.0f}s")

    def _losses(self, losses: Losses) -> None:
        """Log what was lost, with the limit to raise (a crawl repairs it)."""

        if losses.overflows:
            self.counters.overflows += losses.overflows
            self.counters.gaps += 1
            log("WARNING: the inotify event queue overflowed: the kernel dropped events; "
                f"{overflow_advice(self.watcher.queue_size)}. Every watch is placed again on a new inotify "
                "instance (which takes the current value) and the whole tree is rescanned")
        if losses.too_many_hints:
            self.counters.overflows += 1
            self.counters.gaps += 1
            log(f"WARNING: more than {MAX_HINTS} names changed before they could be sent; rescanning the tree")
        if losses.reader_failed:
            self.counters.gaps += 1
            log(f"WARNING: the inotify reader failed ({losses.reader_failed}); watching again and rescanning")
        if losses.inconsistent:
            log("the watch tree disagreed with the disk (a race with renames); watching again and rescanning")
        if losses.new_unwatched:
            self.counters.gaps += 1
            paths = losses.new_unwatched
            missing = _count_dirs(paths, 1_000_000)
            n = len(paths)
            log(f"WARNING: out of inotify watches: {n} director{'y' if n == 1 else 'ies'} (e.g. "
                f"{paths[0].decode('utf-8', 'backslashreplace')}) and {missing} below cannot be watched, so "
                f"changes there are not seen live; {limit_advice('max_user_watches', n + missing)}. Until then "
                f"they are rescanned every {max(DEGRADED_RESCAN_S, 10 * self._crawl_seconds):.0f}s, and the "
                f"watches are retried every {WATCH_RETRY_S:.0f}s")
            self._retry_at = time.monotonic() + WATCH_RETRY_S

    # -- one batch ---------------------------------------------------------------------------

    async def _apply(self, changes: list[Change], sender: Sender) -> None:
        """Send one batch: every changed name as the tree has it now."""

        self.counters.batches += 1
        self.counters.changes += len(changes)
        last: list[tuple[bytes, Change]] = []  # removals: after everything else
        entries: list[tuple[SourceEntry, Change, DevIno]] = []
        dir_ok: dict[bytes, bool] = {}
        self._renew_fresh()  # new directories get ids of their own before anything uses them
        inodes: dict[bytes, _Inode] = {}  # hard-linked inodes met in this batch
        revisit: list[tuple[bytes, DevIno | None]] = []  # hard-linked inodes one of whose names is gone
        written: set[DevIno] = set()  # inodes changed through a name that holds something else now
        linked: set[DevIno] = set()  # ... which had other names then
        written, linked = self.watcher.take_orphans()
        for ch in changes:  # items that failed again: new ids, before anything uses the old ones
            if ch.hint.reset:
                with contextlib.suppress(OSError):
                    st = os.lstat(ch.path)
                    if not stat.S_ISDIR(st.st_mode):
                        renew_id(self.store, st.st_dev, st.st_ino)
        for ch in changes:
            ok = dir_ok.get(ch.dir_path)
            if ok is None:
                ok = dir_ok[ch.dir_path] = _is_dir(ch.dir_path, ch.dir_key)
            if not ok:
                now_path = self.watcher.node_path(ch.node)
                if now_path is not None:  # moved since the batch was cut, or its events are not read yet
                    self.watcher.requeue(ch)
                    since = self._mismatch.setdefault(ch.node, time.monotonic())
                    if now_path == ch.dir_path and time.monotonic() - since > MISMATCH_S:
                        self.watcher.inconsistent()  # it stays wrong: the watch tree is out of date
                        self._mismatch.clear()
                continue
            if self._mismatch:
                self._mismatch.pop(ch.node, None)
            parent = ROOT_ID if ch.in_root else self.store.id_for(*ch.dir_key)
            path = ch.path
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                last.append((parent, ch))
                written.update(ch.hint.inos)
                linked.update(ch.hint.linked)
                known_as = self._link_of.get((ch.dir_key, ch.name))
                if known_as is not None:  # written through this name before it went? the others show it
                    revisit.append((known_as, None))
                continue
            except OSError as exc:
                self.watcher.problems.append(Problem(path, f"cannot stat: {exc.strerror}"))
                continue
            written.update(k for k in ch.hint.inos if k != _key(st))
            linked.update(k for k in ch.hint.linked if k != _key(st))
            if not ch.name:
                oid, parent, name = ROOT_ID, ROOT_ID, b""
            elif ch.hint.fresh and not stat.S_ISDIR(st.st_mode) and st.st_nlink == 1:
                oid, name = renew_id(self.store, st.st_dev, st.st_ino), ch.name  # a new object
            else:
                oid, name = self.store.id_for(st.st_dev, st.st_ino), ch.name
                if oid in self._dir_ids and not stat.S_ISDIR(st.st_mode):
                    oid = renew_id(self.store, st.st_dev, st.st_ino)  # an inode number that changed hands
            try:
                entry = make_entry(oid, parent, name, path, st, brick=False, privileged=self.privileged)
            except OSError:
                continue  # changed under us (a symlink replaced): a new event follows
            if entry is not None:
                entries.append((SourceEntry(entry, path, st.st_mtime_ns), ch, _key(st)))
        self.store.commit()  # ids durable before the agent sees them
        if self.verbose:
            log(f"batch of {len(changes)} changed names: {len(entries)} entries, {len(last)} removals: "
                + "; ".join(_show(ch.path) for ch in changes[:20]) + (" ..." if len(changes) > 20 else ""))
        entries.sort(key=lambda t: t[0].path.count(b"/"))
        crawled: set[bytes] = set()
        problems: list[Problem] = []
        for se, ch, fkey in entries:
            if crawled and _below(se.path, crawled, self.root):
                continue  # sent by the crawl of a directory above it
            if ch.name:
                await self._ensure_ancestors(ch, sender)
            if se.entry.kind is not Kind.DIR and se.entry.nlink > 1:
                h = ch.hint
                _inode(inodes, se, fkey).add(ch.dir_key, se, arrived=h.arrived, data=h.touched or not h.created)
                continue
            self._outbox.append((se, ch.dir_key, fkey))
            await self._flush(sender)
            if ch.hint.subtree and se.entry.kind is Kind.DIR:
                crawled.add(se.path)
                for sub, dkey, skey in walk_subtree(se.path, self.store, privileged=self.privileged,
                                                    problems=problems, fresh=ch.hint.new_tree):
                    if sub.entry.kind is not Kind.DIR and sub.entry.nlink > 1:
                        sub = self._not_a_dir_id(sub, skey)
                        _inode(inodes, sub, skey).add(dkey, sub, arrived=True, data=True)
                        continue
                    self._outbox.append((sub, dkey, skey))
                    if len(self._outbox) >= ID_CHUNK:
                        await self._flush(sender)
                await self._flush(sender)
        by_key = {ino.key: ino for ino in inodes.values()}
        for wkey in written:
            if wkey in by_key:
                by_key[wkey].data = True  # changed through a name that is gone: all names again
            elif wkey in self._link_inode:
                revisit.append((self._link_inode[wkey], wkey))
            elif wkey in linked:  # its other names are not known: search for them
                with contextlib.suppress(OSError):
                    revisit.append((self.store.id_for(*wkey), wkey))
        for oid, rkey in revisit:
            if oid not in inodes:
                self._revisit(oid, rkey, inodes)
        if inodes:
            await self._hard_links(inodes, sender)
        for parent, ch in last:
            await sender.send_remove(ANY_HOLDER, parent, ch.name, ch.path)
        self.counters.deleted += await sender.finish(False, 1)
        self._retry_failed(sender)
        self._report(sender, problems)

    def _retry_failed(self, sender: Sender) -> None:
        """Items the agent could not apply are looked at again (a few times), not dropped.

        E.g. an entry whose parent the agent had set aside because an inode number changed
        hands while the daemon was down, or a file whose directory was renamed before its
        data could be read (the rename's event moves the directory, not what is in it); the
        next attempt sees the tree as it is then.
        """

        if len(self._retries) > 10_000:
            self._retries.clear()
        found_at, self._found_at = self._found_at, {}
        problems = sender.summary.problems
        for i, p in enumerate(problems):
            if p.code not in ("agent", "changed"):
                continue
            n = self._retries.get(p.path, 0)
            if n >= RETRIES:
                continue
            # by the directory it was found in first: renamed since, its old path is gone or another's
            where = found_at.get(p.path)
            if (where is not None and self.watcher.hint_at(where[0], where[1], reset=n > 0)) or (
                    self.watcher.hint_path(p.path, reset=n > 0)):
                self._retries[p.path] = n + 1
                problems[i] = dataclasses.replace(p, cause=f"{p.cause} (looking at it again: attempt {n + 2} of "
                                                           f"{RETRIES + 1})")

    # -- hard links ----------------------------------------------------------------------------
    #
    # The agent places an id at a name by *renaming* one of the id's other names there, and
    # new data makes a new inode at one name only.  So for an inode with several names, one
    # entry is sent, preferably at a name the agent already has (no rename), and every other
    # name is linked after it.  When data or metadata changed, all names must be linked again,
    # so all must be known: names are learned from the crawl and from events, and when an
    # inode has more links than known names the tree is searched once for the others (one
    # readdir walk per batch, no stat per file).  A name that only appeared (``ln``: IN_CREATE,
    # nothing else) is just linked; if the agent does not have the inode, that link fails and
    # the name is sent as an entry instead.

    def _revisit(self, oid: bytes, fkey: DevIno | None, inodes: dict[bytes, _Inode]) -> None:
        """An inode written through a name that is gone now: send it again through another name."""

        for dkey, name in sorted(self._links.get(oid, ())):
            found = self._stat_name(dkey, name)
            if found is not None and stat.S_ISREG(found[1].st_mode) and (fkey is None or _key(found[1]) == fkey):
                path, st = found
                if self.store.id_for(st.st_dev, st.st_ino) != oid:
                    continue
                se = self._entry_at(oid, dkey, name, path, st)
                if se is not None:
                    _inode(inodes, se, _key(st)).add(dkey, se, arrived=False, data=True)
                return
        if fkey is not None and self.store.id_for(*fkey) == oid:
            # none of its known names holds it: search the tree for the others (unless the inode
            # number now belongs to a new object, which has an id of its own)
            inodes[oid] = _Inode(fkey, 1 << 30, data=True)

    async def _hard_links(self, inodes: dict[bytes, _Inode], sender: Sender) -> None:
        known: dict[bytes, dict[tuple[DevIno, bytes], bytes]] = {}  # verified names → path
        search: dict[DevIno, int] = {}
        for oid, ino in inodes.items():
            names: dict[tuple[DevIno, bytes], bytes] = {}
            for dkey, name in self._links.get(oid, ()):
                found = self._stat_name(dkey, name)
                if found is not None and _key(found[1]) == ino.key:
                    names[(dkey, name)] = found[0]
            for k, (se, _arrived) in ino.names.items():
                names[k] = se.path
            known[oid] = names
            if ino.data and len(names) < ino.nlink:
                search[ino.key] = ino.nlink
        if search:
            by_key = {ino.key: oid for oid, ino in inodes.items()}
            for fkey, found_names in _find_names(self.root, search).items():
                for dkey, name, path in found_names:
                    known[by_key[fkey]].setdefault((dkey, name), path)
        for oid, names in known.items():  # what we know now, for the next time
            self._set_links(oid, set(names), inodes[oid])
        sent: dict[bytes, tuple[DevIno, bytes]] = {}
        prelinked: list[bytes] = []
        for oid, ino in inodes.items():
            if not ino.data or not known[oid]:
                continue
            names = known[oid]
            old = [k for k in names if not (k in ino.names and ino.names[k][1])]
            pick = min(old or names, key=lambda k: (names[k].count(b"/"), names[k]))  # noqa: B023 - used at once
            chosen = ino.names[pick][0] if pick in ino.names else self._entry_at(oid, *pick, names[pick])
            if chosen is not None:
                # linked first: the entry then finds the name in place and is never a rename
                # (the agent's rename path drops a name whose copy is outdated but leaves its file)
                await sender.send_link(oid, self._parent_id(pick[0]), pick[1], chosen.path)
                prelinked.append(chosen.path)
                self._outbox.append((chosen, pick[0], ino.key))
                sent[oid] = pick
        await self._flush(sender)
        await sender.settle()  # every inode exists before its extra names are linked
        for path in prelinked:  # a new inode: that link could not be made, the entry made the file
            _drop_first(sender.summary.problems, path)
        tried: dict[bytes, tuple[bytes, tuple[DevIno, bytes]]] = {}  # link path → (id, name) of link-only inodes
        for oid, ino in inodes.items():
            targets = known[oid] if ino.data else {k: se.path for k, (se, arrived) in ino.names.items() if arrived}
            for k, path in sorted(targets.items()):
                if k == sent.get(oid):
                    continue
                await sender.send_link(oid, self._parent_id(k[0]), k[1], path)
                if not ino.data:
                    tried[path] = (oid, k)
        if not tried:
            return
        await sender.settle()
        failed = [p for p in sender.summary.problems if p.code == "agent" and p.path in tried]
        if not failed:
            return
        sender.summary.problems[:] = [p for p in sender.summary.problems if p not in failed]
        again: dict[bytes, list[tuple[DevIno, bytes]]] = {}
        for p in failed:  # the agent does not have the inode: the first name brings it, the others link
            oid, k = tried[p.path]
            again.setdefault(oid, []).append(k)
        for oid, ks in again.items():
            ks.sort()
            self._outbox.append((inodes[oid].names[ks[0]][0], ks[0][0], inodes[oid].key))
        await self._flush(sender)
        await sender.settle()
        for oid, ks in again.items():
            for k in ks[1:]:
                await sender.send_link(oid, self._parent_id(k[0]), k[1], inodes[oid].names[k][0].path)

    def _stat_name(self, dkey: DevIno, name: bytes) -> tuple[bytes, os.stat_result] | None:
        dpath = self.watcher.dir_path(dkey)
        if dpath is None:
            return None  # not watched (gone, or out of watches): a rescan learns its names again
        path = os.path.join(dpath, name)
        try:
            return path, os.lstat(path)
        except OSError:
            return None

    def _entry_at(self, oid: bytes, dkey: DevIno, name: bytes, path: bytes,
                  st: os.stat_result | None = None) -> SourceEntry | None:
        try:
            st = st or os.lstat(path)
            entry = make_entry(oid, self._parent_id(dkey), name, path, st, brick=False, privileged=self.privileged)
        except OSError:
            return None
        return SourceEntry(entry, path, st.st_mtime_ns) if entry is not None else None

    def _parent_id(self, dkey: DevIno) -> bytes:
        return ROOT_ID if dkey == self._root_key else self.store.id_for(*dkey)

    def _note_link(self, oid: bytes, dkey: DevIno, name: bytes, fkey: DevIno) -> None:
        self._links.setdefault(oid, set()).add((dkey, name))
        self._link_of[(dkey, name)] = oid
        if fkey != (0, 0):
            self._link_inode[fkey] = oid

    def _set_links(self, oid: bytes, names: set[tuple[DevIno, bytes]], ino: _Inode) -> None:
        """The names of a hard-linked inode as checked now (kept while it has more than one link)."""

        for k in self._links.get(oid, set()) - names:
            if self._link_of.get(k) == oid:
                del self._link_of[k]
        if names and ino.nlink > 1:
            self._links[oid] = names
            for k in names:
                self._link_of[k] = oid
            self._link_inode[ino.key] = oid
        else:
            self._links.pop(oid, None)
            if self._link_inode.get(ino.key) == oid:
                del self._link_inode[ino.key]
            for k in names:
                if self._link_of.get(k) == oid:
                    del self._link_of[k]

    def _renew_fresh(self) -> None:
        for dev, ino in self.watcher.take_fresh():
            renew_id(self.store, dev, ino)

    async def _ensure_ancestors(self, ch: Change, sender: Sender) -> None:
        """Send the directories above a name first if the agent may not have them."""

        if ch.in_root:
            return
        chain: list[tuple[bytes, os.stat_result, bytes]] = []
        cur = ch.dir_path
        while cur != self.root and len(chain) < 4096:
            try:
                st = os.lstat(cur)
            except OSError:
                return
            oid = self.store.id_for(st.st_dev, st.st_ino)
            if oid in self._known_dirs:
                break
            chain.append((cur, st, oid))
            cur = os.path.dirname(cur)
        if not chain:
            return
        self.store.commit()
        for path, st, oid in reversed(chain):
            up = os.path.dirname(path)
            try:
                parent = ROOT_ID if up == self.root else self.store.id_for(*_key(os.lstat(up)))
                entry = make_entry(oid, parent, os.path.basename(path), path, st, brick=False,
                                   privileged=self.privileged)
            except OSError:
                return
            if entry is None:
                return
            self.store.commit()
            await sender.send_entry(SourceEntry(entry, path, st.st_mtime_ns))
            self._remember_dir(oid)

    def _remember_dir(self, oid: bytes) -> None:
        for ids in (self._known_dirs, self._dir_ids):
            ids[oid] = None
            ids.move_to_end(oid)
            while len(ids) > 200_000:
                ids.popitem(last=False)

    def _not_a_dir_id(self, se: SourceEntry, fkey: DevIno) -> SourceEntry:
        """A non-directory never takes an id sent for a directory: its inode number changed hands.

        A crawl cannot tell (no events), and the agent would set the directory aside with
        its children's names still pointing into it.
        """

        e = se.entry
        if e.kind is Kind.DIR or e.id not in self._dir_ids:
            return se
        try:
            key = fkey if fkey != (0, 0) else _key(os.lstat(se.path))
        except OSError:
            return se
        new = renew_id(self.store, *key)
        self._renewed[e.id] = new
        return SourceEntry(dataclasses.replace(e, id=new), se.path, se.stat_mtime_ns)


def _key(st: os.stat_result) -> DevIno:
    return (st.st_dev, st.st_ino)


def _drop_first(problems: list[Problem], path: bytes) -> None:
    for i, p in enumerate(problems):
        if p.code == "agent" and p.path == path:
            del problems[i]
            return


def _is_dir(path: bytes, key: DevIno) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _key(st) == key


def _dir_key(path: bytes, cache: dict[bytes, DevIno]) -> DevIno | None:
    key = cache.get(path)
    if key is None:
        try:
            key = _key(os.lstat(path))
        except OSError:
            return None
        if len(cache) > 10_000:
            cache.clear()
        cache[path] = key
    return key


def _below(path: bytes, tops: set[bytes], root: bytes) -> bool:
    cur = os.path.dirname(path)
    while len(cur) >= len(root):
        if cur in tops:
            return True
        up = os.path.dirname(cur)
        if up == cur:
            break
        cur = up
    return False


def _find_names(root: bytes, targets: dict[DevIno, int]) -> dict[DevIno, list[tuple[DevIno, bytes, bytes]]]:
    """Every name below ``root`` of the inodes ``targets`` ((dev, ino) → links): (dir (dev, ino), name, path).

    One readdir walk; ``d_ino`` filters without a stat per file; it ends once every
    inode's names are all found.
    """

    inos = {ino for _dev, ino in targets}
    found: dict[DevIno, list[tuple[DevIno, bytes, bytes]]] = {k: [] for k in targets}
    missing = sum(targets.values())
    stack = [root]
    while stack and missing > 0:
        dpath = stack.pop()
        dkey: DevIno | None = None
        try:
            with os.scandir(dpath) as it:
                for de in it:
                    if de.is_dir(follow_symlinks=False):
                        stack.append(de.path)
                    elif de.inode() in inos:
                        try:
                            st = os.lstat(de.path)
                            dkey = dkey or _key(os.lstat(dpath))
                        except OSError:
                            continue
                        names = found.get(_key(st))
                        if names is not None:
                            names.append((dkey, de.name, de.path))
                            missing -= 1
        except OSError:
            continue
    return found


def _count_dirs(paths: list[bytes], cap: int) -> int:
    """Directories below ``paths`` (not counting them), up to ``cap``: how many watches are missing."""

    n = 0
    stack = list(paths)
    while stack and n < cap:
        try:
            with os.scandir(stack.pop()) as it:
                for de in it:
                    if de.is_dir(follow_symlinks=False):
                        n += 1
                        stack.append(de.path)
        except OSError:
            continue
    return n


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _source_root(source: bytes) -> bytes:
    root = os.path.abspath(source)
    if not os.path.isdir(root):
        raise SourceMissing(f"source {os.fsdecode(root)} does not exist or is not a directory")
    return root


async def run_tree_daemon(source: bytes, secondary: str, state_dir: Path, open_channel: Any,
                          verbose: bool = False, lanes: Lanes = NO_LANES) -> int:
    """Follow the plain directory ``source`` into ``secondary`` until SIGTERM (exit 0)."""

    root = _source_root(source)
    logging.getLogger("watchdog").setLevel(logging.ERROR)  # its overflow notice is ours, with the limit to raise
    state = SessionState(state_dir, root, secondary)
    state.lock()
    store = IdStore(state_dir, root)
    daemon = TreeDaemon(root, secondary, state, store, open_channel, verbose=verbose, lanes=lanes)
    return await daemon.serve(store)


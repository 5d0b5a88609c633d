"""Follow a plain directory tree live with inotify: which names changed, and when to look.

Theory of operation
-------------------
A plain tree has no journal, so events are *hints*: "something happened to this name".
What the name holds is read from the tree when the batch is sent (`georep.tree_daemon`),
exactly as the brick daemon reads the brick at sync time.  That makes the order and the
coalescing of events harmless: the secondary converges to the tree's present state.

Watches.  Every directory gets one watch (``IN_ONLYDIR | IN_DONT_FOLLOW``), kept in a
tree of `Node` objects: a node knows its parent node and its name, never its full
path, so a directory rename is one re-parenting (O(1)) and everything recorded below it
- watches and pending hints alike - follows.  New directories (``IN_CREATE``, or a move
in from outside) are watched as they appear, on the reader thread, and their subtree is
marked for a crawl: whatever was made in them before the watch existed is found by that
crawl, which always runs later than the watch was placed.

Hints are keyed by ``(directory node, name)`` and remember what the name went through
since it was last sent: created, written and not yet closed, unlinked, left by a rename
(and where the object went), a directory to crawl.

Moves.  ``IN_MOVED_FROM``/``IN_MOVED_TO`` are paired by cookie (the kernel queues them
back to back).  A paired directory move re-parents its node: one rename on the secondary,
nothing below it is sent.  ``IN_MOVED_TO`` without a partner is a move in from outside
(a create with its whole subtree); ``IN_MOVED_FROM`` left unpaired is a move out (a delete;
its watches are dropped).

Close-after-write.  A regular file created or modified is "being written" until
``IN_CLOSE_WRITE``; it is not sent while being written, except that a file written for
longer than ``write_max_s`` is sent every ``write_max_s`` all the same.  A name left by a
rename waits for its object's new name, so a file renamed while being written does not
vanish from the secondary meanwhile.

Losses are never silent.  ``IN_Q_OVERFLOW`` (the kernel dropped events), a watch that
cannot be placed for lack of watches (ENOSPC: ``max_user_watches``), too many pending
hints, or a reader failure raise flags the daemon turns into a warning naming the limit
and a rescan.  After an overflow the whole watch tree is rebuilt on a new inotify
instance, which also picks up a raised ``max_queued_events``.

Why watchdog's `InotifyFD` and not its ``Observer``: the observer's move grouper holds
every unpaired ``IN_MOVED_FROM`` for 0.5 s at the head of one FIFO (a move out of the tree
delays every later event by 0.5 s), it drops ENOSPC for subdirectories silently and it
reports an overflow only to the logging module.  The kernel interface, the reader thread
and the overflow dispatch are watchdog's; the watch tree and the pairing are ours.

Threads: `InotifyFD` calls `on_event` on its reader thread; the daemon calls `take` on
the event loop's thread.  One lock guards the node tree and the hints.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyEvent, InotifyFD, Mask, WatchDescriptor

from georep.errors import GeorepError, SourceMissing
from georep.model import Kind, Problem, record
from georep.source.crawl import SourceEntry, make_entry
from georep.source.identity import IdStore

IC = InotifyConstants
#: What each directory watch reports.  No IN_OPEN/IN_ACCESS/IN_CLOSE_NOWRITE: readers are noise.
WATCH_MASK = Mask(
    IC.IN_MODIFY | IC.IN_ATTRIB | IC.IN_CLOSE_WRITE | IC.IN_MOVED_FROM | IC.IN_MOVED_TO | IC.IN_CREATE
    | IC.IN_DELETE | IC.IN_DELETE_SELF | IC.IN_MOVE_SELF | IC.IN_ONLYDIR | IC.IN_DONT_FOLLOW | IC.IN_EXCL_UNLINK
)

#: Cut a batch after this much quiet ...
QUIET_S = 0.03
#: ... or when its oldest ready hint is this old.
MAX_LATENCY_S = 0.5
#: A file still open for writing is sent anyway once it has been written this long.
WRITE_MAX_S = 2.0
#: An IN_MOVED_FROM with no IN_MOVED_TO after this long was a move out of the tree.
PAIR_S = 0.05
#: More pending hints than this is treated like a kernel overflow: drop them, rescan.
MAX_HINTS = 500_000

PROC_INOTIFY = "/proc/sys/fs/inotify"
PROC_USER = "/proc/sys/user"

DevIno = tuple[int, int]


class Node:
    """One watched directory: where it is (parent node + name), never a cached path."""

    __slots__ = ("alive", "children", "key", "name", "parent", "wd")

    def __init__(self, wd: int, key: DevIno, parent: Node | None, name: bytes) -> None:
        self.wd = wd
        self.key = key
        self.parent = parent
        self.name = name
        self.children: dict[bytes, Node] = {}
        self.alive = True

    def path(self, root: bytes) -> bytes | None:
        """The directory's path now, or None when it is no longer below the root."""

        names: list[bytes] = []
        node: Node | None = self
        while node is not None:
            if not node.alive:
                return None
            if node.parent is None:
                break
            names.append(node.name)
            node = node.parent
            if len(names) > 4096:
                return None
        return os.path.join(root, *reversed(names)) if names else root


@dataclass(slots=True)
class Hint:
    """What happened to one name since it was last sent."""

    first_at: float
    last_at: float
    #: open for writing (created or modified, no IN_CLOSE_WRITE yet) since
    writing_since: float | None = None
    created: bool = False  # a regular file was created here (open(O_CREAT): a close will follow)
    modified: bool = False
    unlinked: bool = False  # an object at this name was deleted (not moved away)
    moved_from: bool = False  # an object left this name by a rename
    subtree: bool = False  # a directory appeared here: crawl what is below it
    new_tree: bool = False  # ... made by mkdir or moved in from outside: everything in it is new
    pairing: bool = False  # left by a rename whose other half has not been read yet
    arrived: bool = False  # the object here now came by create, link or rename (the agent may not have it here)
    touched: bool = False  # its data or metadata changed (not only a new name: a hard link is just IN_CREATE)
    #: the non-directory here was created (open, mknod, symlink) since the last look, here or before a
    #: rename: a new object, which gets a new id even if its inode number once belonged to another
    fresh: bool = False
    reset: bool = False  # failed again: whatever is here is sent as a new object, hard-linked or not
    #: where the object that left by rename went (that name is sent first)
    partner: tuple[Node, bytes] | None = None
    #: (dev, ino) of the non-directories written or changed through this name (read at the first such
    #: event): a hard-linked inode changed through a name that is gone now is sent through its others
    inos: list[DevIno] = field(default_factory=list)
    linked: list[DevIno] = field(default_factory=list)  # those of ``inos`` that had other names then
    ino_known: bool = False  # the object at the name now has its (dev, ino) in ``inos``

    def merge(self, other: Hint) -> None:
        self.first_at = min(self.first_at, other.first_at)
        self.last_at = max(self.last_at, other.last_at)
        if other.writing_since is not None:
            self.writing_since = min(self.writing_since or other.writing_since, other.writing_since)
        self.created |= other.created
        self.modified |= other.modified
        self.unlinked |= other.unlinked
        self.moved_from |= other.moved_from
        self.subtree |= other.subtree
        self.new_tree |= other.new_tree
        self.pairing |= other.pairing
        self.arrived |= other.arrived
        self.touched |= other.touched
        self.fresh |= other.fresh
        self.reset |= other.reset
        self.partner = self.partner or other.partner
        self.inos.extend(k for k in other.inos if k not in self.inos)
        self.linked.extend(k for k in other.linked if k not in self.linked)


@record
class Change:
    """One name to look at now: ``dir_path/name`` (``name`` empty: the root itself)."""

    node: Node  # the watched directory holding the name
    dir_path: bytes
    dir_key: DevIno  # (st_dev, st_ino) the directory had when its watch was placed
    name: bytes
    hint: Hint

    @property
    def path(self) -> bytes:
        return os.path.join(self.dir_path, self.name) if self.name else self.dir_path

    @property
    def in_root(self) -> bool:
        """``dir_path`` is the source root (its id is the root id)."""

        return self.node.parent is None


@dataclass(slots=True)
class _Move:
    node: Node
    name: bytes
    is_dir: bool
    at: float
    writing_since: float | None
    fresh: bool


@dataclass(slots=True)
class Losses:
    """Why events may have been lost since the last look (the daemon reports and rescans)."""

    overflows: int = 0  # IN_Q_OVERFLOW from the kernel
    too_many_hints: int = 0  # more pending names than MAX_HINTS
    reader_failed: str = ""  # the reader thread stopped or raised
    inconsistent: int = 0  # the watch tree disagreed with the disk
    new_unwatched: list[bytes] = field(default_factory=list)  # directories left without a watch (ENOSPC)

    def __bool__(self) -> bool:
        return bool(self.reasons())

    def reasons(self) -> list[str]:
        return [why for why, lost in (
            ("inotify queue overflow", self.overflows), ("too many pending changes", self.too_many_hints),
            ("inotify reader failed", self.reader_failed), ("watch tree out of date", self.inconsistent),
            ("directories without a watch", self.new_unwatched)) if lost]

    def add(self, other: Losses) -> None:
        self.overflows += other.overflows
        self.too_many_hints += other.too_many_hints
        self.reader_failed = self.reader_failed or other.reader_failed
        self.inconsistent += other.inconsistent
        self.new_unwatched.extend(other.new_unwatched)


class _Receiver:
    """The callback one `InotifyFD` instance calls; ignores calls once that instance is retired."""

    def __init__(self, watcher: TreeWatcher, generation: int) -> None:
        self.watcher = watcher
        self.generation = generation

    def on_event(self, event: InotifyEvent) -> None:
        self.watcher._on_event(self.generation, event)

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self.watcher._on_watch_deleted(self.generation, wd)

    def on_queue_overflow(self) -> None:
        self.watcher._on_overflow(self.generation)

    def on_events_lost(self) -> None:
        """watchdog >= 7.1 calls this after every callback's `on_queue_overflow`; ours
        already marked the loss and its rescan there (older watchdog calls only that)."""


def read_limit(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def overflow_advice(queue_size: int | None) -> str:
    """What an overflow says: the queue size this instance has, the value now, a higher one."""

    now = read_limit(f"{PROC_INOTIFY}/max_queued_events")
    had = f"{queue_size} events" if queue_size is not None else "an unknown number of events"
    suggested = max(2 * (now or 0), 2 * (queue_size or 0), 32768)
    return (f"the queue held fs.inotify.max_queued_events = {had} (its value when the watches were placed; "
            f"now {now if now is not None else 'unreadable'}); if this recurs, raise it, e.g. "
            f"'sysctl -w fs.inotify.max_queued_events={suggested}' (and in /etc/sysctl.d/ to keep it after a "
            "reboot)")


def limit_advice(name: str, needed_more: int = 0) -> str:
    """The limit's current value, a higher one and the command that sets it.

    ``name`` is ``max_queued_events`` or ``max_user_watches``.  In a user namespace with a
    lower ``/proc/sys/user/max_inotify_watches`` that one binds, and is named too.
    """

    current = read_limit(f"{PROC_INOTIFY}/{name}")
    where = f"fs.inotify.{name}"
    if name == "max_user_watches":
        ns = read_limit(f"{PROC_USER}/max_inotify_watches")
        if ns is not None and current is not None and ns < current:
            suggested = max(2 * ns, ns + 2 * needed_more)
            return (f"this user namespace's user.max_inotify_watches is {ns} (fs.inotify.max_user_watches is "
                    f"{current}); raise it, e.g. 'sysctl -w user.max_inotify_watches={suggested}'")
    if current is None:
        return f"raise {where} (e.g. 'sysctl -w {where}=...'; its value could not be read)"
    suggested = max(2 * current, current + 2 * needed_more)
    return (f"{where} is {current}; raise it, e.g. 'sysctl -w {where}={suggested}' "
            f"(and in /etc/sysctl.d/ to keep it after a reboot)")


class TreeWatcher:
    """Recursive inotify watches on one plain tree, turned into per-name hints."""

    def __init__(self, root: bytes, wake: Callable[[], None], *, quiet_s: float = QUIET_S,
                 max_latency_s: float = MAX_LATENCY_S, write_max_s: float = WRITE_MAX_S,
                 max_hints: int = MAX_HINTS) -> None:
        self.root = os.path.abspath(root)
        self._wake = wake
        self.quiet_s = quiet_s
        self.max_latency_s = max_latency_s
        self.write_max_s = write_max_s
        self.max_hints = max_hints
        self._lock = threading.RLock()
        self._fd: InotifyFD | None = None
        self._receiver: _Receiver | None = None
        self._generation = 0
        self._root_node: Node | None = None
        self._by_wd: dict[int, Node] = {}
        self._by_key: dict[DevIno, Node] = {}
        self._hints: dict[tuple[Node, bytes], Hint] = {}
        self._moves: dict[int, _Move] = {}
        #: directories that could not be watched (ENOSPC), by where they are
        self._unwatched: dict[tuple[Node, bytes], None] = {}
        #: (dev, ino) of directories made by mkdir since the last look: new objects, new ids
        self._fresh: list[DevIno] = []
        #: inodes written through names whose directory is gone (``Hint.inos``, ``Hint.linked``)
        self._orphans: tuple[set[DevIno], set[DevIno]] = (set(), set())
        self._losses = Losses()
        self._woken = False
        self._last_event = 0.0
        #: fs.inotify.max_queued_events when the inotify instance was made (its queue size for good)
        self.queue_size: int | None = None
        #: set while a reconciliation crawl runs: directory moves then also get their subtree crawled
        self.crawling = False
        #: the source root itself was removed, moved or unmounted
        self.fatal: str = ""
        self.problems: list[Problem] = []

    # -- lifecycle (event loop thread) ---------------------------------------------------

    def start(self) -> None:
        """Place every watch (a new inotify instance); hints and pending moves start empty."""

        old = self._fd
        self._generation += 1  # calls from the old instance (its watches being removed) are ignored from now
        if old is not None:
            old.stop()
            old.join(5)
        try:
            self.queue_size = read_limit(f"{PROC_INOTIFY}/max_queued_events")
            fd = InotifyFD()
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise GeorepError(
                    "cannot follow the source: the inotify instance limit is reached",
                    hint=limit_advice("max_user_instances")) from None
            raise GeorepError(f"cannot follow the source: inotify_init failed: {exc.strerror}") from None
        receiver = _Receiver(self, self._generation)
        with self._lock:
            self._fd, self._receiver = fd, receiver
            self._by_wd.clear()
            self._by_key.clear()
            self._hints.clear()
            self._moves.clear()
            self._unwatched.clear()
            self._fresh.clear()
            self._losses = Losses()
            self._root_node = None
            fd.start()
            try:
                st = os.stat(self.root)
                root = self._add_watch(None, b"", self.root, st)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise GeorepError("cannot watch the source: out of inotify watches",
                                      hint=limit_advice("max_user_watches")) from None
                raise SourceMissing(f"source {os.fsdecode(self.root)} cannot be watched: {exc.strerror}") from None
            if root is None:
                raise SourceMissing(f"source {os.fsdecode(self.root)} cannot be watched: permission denied")
            self._root_node = root
        # the lock is taken per directory: the reader thread keeps draining the kernel's queue
        self._watch_below(root, self.root)

    def stop(self) -> None:
        fd = self._fd
        self._fd = None
        self._generation += 1
        if fd is not None:
            fd.stop()
            fd.join(5)

    # -- the reader thread ----------------------------------------------------------------

    def _on_event(self, generation: int, ev: InotifyEvent) -> None:
        try:
            with self._lock:
                if generation != self._generation:
                    return
                self._event(ev, time.monotonic())
                if len(self._hints) > self.max_hints:
                    self._hints.clear()
                    self._losses.too_many_hints += 1
        except Exception as exc:  # the reader thread must not die silently
            self._losses.reader_failed = f"{type(exc).__name__}: {exc}"
        self._poke()

    def _on_watch_deleted(self, generation: int, wd: WatchDescriptor) -> None:
        with self._lock:
            if generation != self._generation:
                return
            node = self._by_wd.get(wd)
            if node is not None:
                if node is self._root_node:
                    self.fatal = f"the source {os.fsdecode(self.root)} was removed or unmounted"
                self._forget(node)
        self._poke()

    def _on_overflow(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._losses.overflows += 1
        self._poke()

    def _poke(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake()

    def _event(self, ev: InotifyEvent, now: float) -> None:
        node = self._by_wd.get(ev.wd)
        if node is None or not node.alive:
            return
        mask = ev.mask
        if not mask & IC.IN_MODIFY:  # a file being written does not hold back everything else
            self._last_event = now
        if not ev.name:  # about the watched directory itself
            if mask & (IC.IN_DELETE_SELF | IC.IN_MOVE_SELF):
                if node is self._root_node:
                    self.fatal = f"the source {os.fsdecode(self.root)} was removed or moved while followed"
                elif mask & IC.IN_DELETE_SELF:
                    self._forget(node)
            elif mask & IC.IN_ATTRIB:
                self._hint(node, b"", now)
            return
        name = ev.name
        is_dir = bool(mask & IC.IN_ISDIR)
        if mask & IC.IN_MOVED_FROM:
            h = self._hint(node, name, now)
            h.moved_from = h.pairing = True
            self._moves[ev.cookie] = _Move(node, name, is_dir, now, h.writing_since, h.fresh)
            h.writing_since = None  # the writer's state (and its newness) travels with the object
            h.created = h.modified = h.arrived = h.touched = h.ino_known = h.fresh = False
            self._hint(node, b"", now)
        elif mask & IC.IN_MOVED_TO:
            mv = self._moves.pop(ev.cookie, None)
            h = self._hint(node, name, now)
            h.arrived = h.touched = True
            h.ino_known = False
            h.fresh = mv.fresh if mv is not None else True  # from outside the tree: new to it
            if mv is not None:
                src = self._hints.get((mv.node, mv.name))
                if src is not None:
                    src.partner = (node, name)
                    src.pairing = False
                self._unwatched.pop((mv.node, mv.name), None)
            if is_dir:
                moved = mv.node.children.get(mv.name) if mv is not None else None
                if moved is not None and moved.alive:
                    self._reparent(moved, node, name)
                    if self.crawling:
                        h.subtree = True  # the crawl may have missed it between two places
                else:  # moved in from outside: new to the tree, like a mkdir
                    self._watch_new(node, name, fresh=True)
                    h.subtree = h.new_tree = True
            elif mv is not None and mv.writing_since is not None:
                h.writing_since = min(h.writing_since or mv.writing_since, mv.writing_since)
                h.modified = True
            self._hint(node, b"", now)
        elif mask & IC.IN_CREATE:
            h = self._hint(node, name, now)
            h.arrived = True
            h.ino_known = False
            if is_dir:
                self._watch_new(node, name, fresh=True)
                h.subtree = h.new_tree = True
            else:
                h.fresh = True
                h.created = True
                if h.writing_since is None:
                    h.writing_since = now
            self._hint(node, b"", now)
        elif mask & IC.IN_DELETE:
            h = self._hint(node, name, now)
            h.unlinked = True
            h.writing_since = None
            h.created = h.modified = h.subtree = h.new_tree = h.arrived = h.touched = h.ino_known = False
            h.fresh = False
            if is_dir:
                child = node.children.get(name)
                if child is not None:
                    self._forget(child)
            self._unwatched.pop((node, name), None)
            self._hint(node, b"", now)
        elif mask & IC.IN_CLOSE_WRITE:
            h = self._hint(node, name, now)
            h.writing_since = None
            h.created = h.modified = False
            h.touched = True
            self._note_ino(node, name, h)
        elif mask & IC.IN_MODIFY:
            h = self._hint(node, name, now)
            h.modified = h.touched = True
            if h.writing_since is None:
                h.writing_since = now
            self._note_ino(node, name, h)
        elif mask & IC.IN_ATTRIB:
            h = self._hint(node, name, now)
            h.touched = True
            if not is_dir:
                self._note_ino(node, name, h)

    def _note_ino(self, node: Node, name: bytes, h: Hint) -> None:
        if h.ino_known:
            return
        h.ino_known = True
        path = node.path(self.root)
        if path is None:
            return
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode) and _key(st) not in h.inos:
            h.inos.append(_key(st))
            if st.st_nlink > 1:
                h.linked.append(_key(st))

    def _hint(self, node: Node, name: bytes, now: float) -> Hint:
        key = (node, name)
        h = self._hints.get(key)
        if h is None:
            h = self._hints[key] = Hint(now, now)
        else:
            h.last_at = now
        return h

    # -- the watch tree (under the lock) --------------------------------------------------

    def _add_watch(self, parent: Node | None, name: bytes, path: bytes, st: os.stat_result) -> Node | None:
        """Watch the directory ``path`` (``st`` from just before); None if it cannot be watched."""

        key = (st.st_dev, st.st_ino)
        known = self._by_key.get(key)
        if known is not None and known.alive:
            if parent is not None:
                self._reparent(known, parent, name)
            return known
        assert self._fd is not None and self._receiver is not None
        try:
            wd = int(self._fd.add_callback(path, WATCH_MASK, self._receiver, CallbackId(id(self))))
        except OSError as exc:
            if parent is None:
                raise
            if exc.errno == errno.ENOSPC:
                self._unwatched[(parent, name)] = None
                self._losses.new_unwatched.append(path)
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self.problems.append(Problem(path, f"cannot watch: {exc.strerror}", "inotify"))
            return None
        if wd < 0:  # watchdog leaves EACCES as wd -1
            self._fd.remove_callbacks([(WatchDescriptor(wd), CallbackId(id(self)))])
            self.problems.append(Problem(path, "cannot watch: permission denied", "inotify"))
            return None
        old = self._by_wd.get(wd)
        if old is not None:  # the same inode under another node: keep one
            self._forget(old)
        node = Node(wd, key, parent, name)
        self._by_wd[wd] = node
        self._by_key[key] = node
        if parent is not None:
            parent.children[name] = node
        return node

    def _watch_below(self, top: Node, top_path: bytes, fresh: bool = False) -> None:
        """Watch every directory below ``top`` (already watched), not following symlinks.

        ``fresh``: ``top`` was just made by mkdir, so what is below it was made since too
        (or moved in within microseconds: it then costs a copy of names, not of data).
        """

        stack = [(top, top_path)]
        while stack:
            node, path = stack.pop()
            try:
                with os.scandir(path) as it:
                    subdirs = [(de.name, de.path) for de in it if de.is_dir(follow_symlinks=False)]
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    self.problems.append(Problem(path, f"cannot list directory: {exc.strerror}", "inotify"))
                continue
            for name, sub in subdirs:
                try:
                    st = os.lstat(sub)
                except OSError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    continue
                with self._lock:
                    if not node.alive or name in node.children:
                        continue  # moved or deleted meanwhile, or already watched by the reader thread
                    if fresh and _key(st) not in self._by_key:
                        self._fresh.append(_key(st))
                    child = self._add_watch(node, name, sub, st)
                if child is not None:
                    stack.append((child, sub))

    def _watch_new(self, parent: Node, name: bytes, fresh: bool = False) -> None:
        """A directory appeared at ``parent/name``: watch it and everything below it (``fresh``: by mkdir)."""

        ppath = parent.path(self.root)
        if ppath is None:
            return
        path = os.path.join(ppath, name)
        try:
            st = os.lstat(path)
        except OSError:
            return  # gone again: its removal is a hint already
        if not stat.S_ISDIR(st.st_mode):
            return
        if fresh and _key(st) not in self._by_key:
            self._fresh.append(_key(st))
        node = self._add_watch(parent, name, path, st)
        if node is not None:
            self._watch_below(node, path, fresh)

    def _reparent(self, node: Node, parent: Node, name: bytes) -> None:
        old = node.parent
        if old is not None and old.children.get(node.name) is node:
            del old.children[node.name]
        node.parent, node.name = parent, name
        replaced = parent.children.get(name)
        if replaced is not None and replaced is not node:
            self._forget(replaced)  # an empty directory renamed over
        parent.children[name] = node

    def _forget(self, node: Node) -> None:
        """A directory is gone (deleted): forget it and whatever is still recorded below it."""

        stack = [node]
        while stack:
            n = stack.pop()
            n.alive = False
            stack.extend(n.children.values())
            n.children.clear()
            if self._by_wd.get(n.wd) is n:
                del self._by_wd[n.wd]
            if self._by_key.get(n.key) is n:
                del self._by_key[n.key]
        parent = node.parent
        if parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]

    def _drop_watches(self, node: Node) -> None:
        """A directory left the tree: stop watching it and everything below it."""

        wds: list[int] = []
        stack = [node]
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if self._by_wd.get(n.wd) is n:
                wds.append(n.wd)
        self._forget(node)
        if self._fd is not None and wds:
            self._fd.remove_callbacks([(WatchDescriptor(wd), CallbackId(id(self))) for wd in wds])

    # -- the event loop's side ------------------------------------------------------------

    def clear_woken(self) -> None:
        self._woken = False

    def take_fresh(self) -> list[DevIno]:
        """Directories made by mkdir since the last call (they need ids of their own)."""

        with self._lock:
            fresh, self._fresh = self._fresh, []
            # only those still here: a directory deleted meanwhile may have passed its inode
            # number on to a file that has an id (and perhaps hard links) of its own by now
            return [k for k in fresh if k in self._by_key]

    def take_losses(self) -> Losses:
        with self._lock:
            losses, self._losses = self._losses, Losses()
        fd = self._fd
        if fd is not None and not fd.is_alive() and not losses.reader_failed:
            losses.reader_failed = "the inotify reader thread stopped"
        return losses

    def discard_hints(self) -> None:
        """A crawl is about to read the whole tree: hints so far are covered by it.

        Files still open for writing keep their hint: their close must send them again.
        """

        with self._lock:
            self._hints = {k: h for k, h in self._hints.items() if h.writing_since is not None}

    @property
    def pending(self) -> int:
        return len(self._hints)

    def oldest(self) -> float | None:
        with self._lock:
            return min((h.first_at for h in self._hints.values()), default=None)

    def busy(self) -> bool:
        """Something may become ready without a new event (a deadline, an unpaired move)."""

        return bool(self._hints or self._moves)

    @property
    def unwatched(self) -> int:
        return len(self._unwatched)

    @property
    def watches(self) -> int:
        return len(self._by_wd)

    def dir_path(self, key: DevIno) -> bytes | None:
        """The path of the watched directory with this (st_dev, st_ino), if it is watched."""

        with self._lock:
            node = self._by_key.get(key)
            return node.path(self.root) if node is not None else None

    def node_path(self, node: Node) -> bytes | None:
        with self._lock:
            return node.path(self.root)

    def requeue(self, change: Change) -> None:
        """A change whose directory moved under us is looked at again in the next batch."""

        with self._lock:
            if not change.node.alive:
                return
            key = (change.node, change.name)
            h = self._hints.get(key)
            if h is None:
                self._hints[key] = change.hint
            else:
                h.merge(change.hint)

    def hint_path(self, path: bytes, reset: bool = False) -> bool:
        """Look at ``path`` again in the next batch (an item the agent could not apply).

        ``reset``: send it as a new object (new id; a directory with its whole tree), for
        an item that failed again: the agent's record of its old id may be what is stuck
        (an inode number that changed hands while the daemon was down, say).
        """

        key: DevIno | None = None
        name = b""
        if path != self.root:
            dpath, name = os.path.split(path)
            try:
                key = _key(os.lstat(dpath))
            except OSError:
                return False
        return self.hint_at(key, name, reset)

    def hint_at(self, key: DevIno | None, name: bytes, reset: bool = False) -> bool:
        """`hint_path` for ``name`` in the watched directory ``key`` (None: the root), wherever it is now.

        An item read from a directory that was renamed before its data could be sent is
        found again here: the watch tree follows the directory, its old path does not.
        """

        with self._lock:
            node = self._root_node if key is None else self._by_key.get(key)
            if node is None or not node.alive:
                return False
            h = self._hint(node, name, time.monotonic())
            h.touched = True
            if reset and name:
                child = node.children.get(name)
                if child is not None and child.alive:
                    self._fresh.append(child.key)
                    h.subtree = h.new_tree = True
                else:
                    h.reset = True
        self._poke()
        return True

    def requeue_losses(self, losses: Losses) -> None:
        """Losses taken but not handled yet: the next `take_losses` returns them again."""

        with self._lock:
            losses.add(self._losses)
            self._losses = losses

    def inconsistent(self) -> None:
        with self._lock:
            self._losses.inconsistent += 1

    def retry_unwatched(self) -> int:
        """Try again to watch the directories left without a watch; how many remain."""

        with self._lock:
            for key in list(self._unwatched):
                parent, name = key
                del self._unwatched[key]
                if parent.alive:
                    self._watch_new(parent, name)
            self._losses.new_unwatched.clear()  # already reported
            return len(self._unwatched)

    def take(self, now: float, force: bool = False) -> list[Change] | None:
        """The hints ready to send, when a batch is due (quiet, latency, or ``force``)."""

        with self._lock:
            self._expire_moves(now)
            if not self._hints:
                return None
            deferred: set[tuple[Node, bytes]] = set()
            for key, h in self._hints.items():
                if h.pairing:
                    deferred.add(key)  # where did it go?  Known within PAIR_S
                    continue
                if h.writing_since is None or now - h.writing_since >= self.write_max_s:
                    continue
                if h.created and not h.modified and not self._maybe_written(key):
                    h.writing_since = None  # a hard link, symlink, fifo...: nothing is being written
                    continue
                deferred.add(key)
            # a name changed less than quiet_s ago waits (rsync renames its temp file right after
            # closing it: the temp name should never be sent), unless it has waited max_latency_s
            for key, h in self._hints.items():
                if not force and now - h.last_at < self.quiet_s and now - h.first_at < self.max_latency_s:
                    deferred.add(key)
            more = bool(deferred)
            while more:  # a name left by rename waits for its object's new name
                more = False
                for key, h in self._hints.items():
                    if key not in deferred and h.partner is not None and h.partner in deferred:
                        deferred.add(key)
                        more = True
            ready = [k for k in self._hints if k not in deferred]
            if not ready:
                return None
            oldest = min(self._hints[k].first_at for k in ready)
            if not force and now - self._last_event < self.quiet_s and now - oldest < self.max_latency_s:
                return None
            out: list[Change] = []
            for key in ready:
                h = self._hints.pop(key)
                change = self._change(key, h)
                if change is not None:
                    out.append(change)
                elif h.inos:  # the name went with its directory; what was written through it did not
                    self._orphans[0].update(h.inos)
                    self._orphans[1].update(h.linked)
            return out

    def take_orphans(self) -> tuple[set[DevIno], set[DevIno]]:
        """Inodes written (and of those, hard-linked) through names that went with their directory."""

        with self._lock:
            orphans, self._orphans = self._orphans, (set(), set())
        return orphans

    def _maybe_written(self, key: tuple[Node, bytes]) -> bool:
        """A regular file with one link may still be written by whoever created it."""

        node, name = key
        dpath = node.path(self.root)
        if dpath is None:
            return False
        try:
            st = os.lstat(os.path.join(dpath, name))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1

    def _change(self, key: tuple[Node, bytes], h: Hint) -> Change | None:
        node, name = key
        if not node.alive:
            return None  # its directory is gone: the directory's own removal covers it
        if not name and node.parent is not None:
            node, name = node.parent, node.name  # a directory's own metadata: its name in its parent
            if not node.alive:
                return None
        dpath = node.path(self.root)
        if dpath is None:
            return None
        return Change(node, dpath, node.key, name, h)

    def _expire_moves(self, now: float) -> None:
        for cookie, mv in list(self._moves.items()):
            if now - mv.at < PAIR_S:
                continue
            del self._moves[cookie]
            h = self._hints.get((mv.node, mv.name))
            if h is not None:
                h.pairing = False
            if mv.is_dir:  # moved out of the tree: a delete; stop watching it
                child = mv.node.children.get(mv.name)
                if child is not None:
                    self._drop_watches(child)


def _key(st: os.stat_result) -> DevIno:
    return (st.st_dev, st.st_ino)


def renew_id(store: IdStore, dev: int, ino: int) -> bytes:
    """A new id for an inode that is a new object (a directory made by mkdir).

    Inode numbers are reused: a directory deleted and another made with its inode would
    inherit its id, and the agent would rename the old copy, stale children included,
    into the new place.  A directory made by mkdir has no past, so it gets an id of its own.
    """

    store.forget(dev, ino)
    return store.id_for(dev, ino)


def walk_subtree(top: bytes, store: IdStore, *, privileged: bool, problems: list[Problem],
                 fresh: bool = False) -> Iterator[tuple[SourceEntry, DevIno, DevIno]]:
    """Everything below the directory ``top``, parents first: (entry, its directory's and its own (dev, ino)).

    The ids are the `IdStore`'s, as `georep.source.crawl.Crawler` gives them; ``top``
    itself is not yielded (the caller sends it with its own parent and name).  ``fresh``:
    the tree is new (made, or moved in from outside, since the last look): its files with
    one link get new ids (its directories got theirs from `TreeWatcher.take_fresh`).
    """

    try:
        st = os.lstat(top)
    except OSError:
        return
    stack: list[tuple[bytes, DevIno, Iterator[os.DirEntry[bytes]]]] = []

    def push(path: bytes, oid: bytes, key: DevIno) -> None:
        try:
            stack.append((oid, key, os.scandir(path)))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                problems.append(Problem(path, f"cannot list directory: {exc.strerror}"))

    push(top, store.id_for(st.st_dev, st.st_ino), (st.st_dev, st.st_ino))
    while stack:
        pid, pkey, it = stack[-1]
        try:
            de = next(it)
        except StopIteration:
            stack.pop()
            continue
        except OSError as exc:
            problems.append(Problem(top, f"cannot list directory: {exc.strerror}"))
            stack.pop()
            continue
        try:
            cst = os.lstat(de.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                problems.append(Problem(de.path, f"cannot stat: {exc.strerror}"))
            continue
        if fresh and not stat.S_ISDIR(cst.st_mode) and cst.st_nlink == 1:
            oid = renew_id(store, cst.st_dev, cst.st_ino)
        else:
            oid = store.id_for(cst.st_dev, cst.st_ino)
        try:
            entry = make_entry(oid, pid, de.name, de.path, cst, brick=False, privileged=privileged)
        except OSError:
            continue  # vanished while read (a symlink's target): its removal is a hint
        if entry is None:
            continue
        yield SourceEntry(entry, de.path, cst.st_mtime_ns), pkey, (cst.st_dev, cst.st_ino)
        if entry.kind is Kind.DIR:
            push(de.path, oid, (cst.st_dev, cst.st_ino))

"""Walk a source tree (plain directory or GlusterFS brick) and yield its entries, parents first.

The walk is depth-first with one open ``scandir`` per level, so memory grows with the
depth of the tree, not its size.  Each entry carries its id: the gfid (``trusted.gfid``)
on a brick, an `IdStore` id on a plain tree.  Hard links: the first name of an inode is
yielded; further names are spooled to the store (on disk) and sent after the crawl, once
the inode surely exists on the secondary.

On a brick (detected by ``trusted.glusterfs.volume-id`` on the root) the walk skips
``.glusterfs/``, ``.trashcan/``, AFR's ``.glusterfs-anonymous-inode-*`` and DHT linkto
files, and never copies GlusterFS's internal xattrs.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from georep.errors import SourceMissing
from georep.model import KIND_BY_FMT, ROOT_ID, Entry, Kind, Meta, Problem, record, replicable_xattr
from georep.source.identity import IdStore

#: Directory entries read ahead per level: their ids are looked up in one query (plain
#: trees).  Deep below, levels read fewer, so that memory stays bounded by depth × this.
READ_AHEAD = 256
READ_AHEAD_DEEP = 16
DEEP = 64

VOLUME_ID_XATTR = "trusted.glusterfs.volume-id"
#: GlusterFS's ctime feature keeps the times clients see here, not in the brick's stat
#: (posix-metadata-disk.h: u8 version, be64 flags, then be64 sec/nsec for ctime, mtime, atime).
MDATA_XATTR = "trusted.glusterfs.mdata"
_MDATA = struct.Struct(">BQqQqQqQ")
LINKTO_XATTR = "trusted.glusterfs.dht.linkto"
BRICK_SKIP_TOP = (b".glusterfs", b".trashcan")


@record
class SourceEntry:
    entry: Entry
    path: bytes  # absolute path on the source, to read data and metadata from
    #: st_mtime_ns as stat() gave it when listed; on a brick entry.meta.mtime_ns is the
    #: volume's (trusted.glusterfs.mdata), which the brick's own stat does not show
    stat_mtime_ns: int = 0


def is_brick(root: bytes) -> bool:
    try:
        os.getxattr(root, VOLUME_ID_XATTR)
    except OSError:
        return False
    return True


def read_xattrs(path: bytes, privileged: bool) -> tuple[tuple[bytes, bytes], ...]:
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    if not keys:  # most files: nothing to sort or filter
        return ()
    out = []
    for k in sorted(keys):
        kb = os.fsencode(k)
        if not replicable_xattr(kb, privileged):
            continue
        try:
            out.append((kb, os.getxattr(path, k, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def brick_mtime(path: bytes) -> int | None:
    """The mtime clients see, when the volume keeps it in ``trusted.glusterfs.mdata``."""

    try:
        raw = os.getxattr(path, MDATA_XATTR, follow_symlinks=False)
    except OSError:
        return None
    if len(raw) != _MDATA.size:
        return None
    _v, _flags, _cs, _cn, msec, mnsec, _as, _an = _MDATA.unpack(raw)
    return int(msec) * 1_000_000_000 + int(mnsec)


def make_entry(oid: bytes, parent: bytes, name: bytes, path: bytes, st: os.stat_result, *, brick: bool,
               privileged: bool) -> Entry | None:
    """The `Entry` for an object read at ``path`` (None for a type we do not replicate).

    On a brick, the mtime comes from ``trusted.glusterfs.mdata`` when the volume keeps
    one, and a non-directory's link count leaves out its ``.glusterfs`` handle.
    """

    mode = st.st_mode
    kind = KIND_BY_FMT.get(stat.S_IFMT(mode))
    if kind is None:
        return None
    if kind is Kind.FILE and not brick:  # most of a crawl: no mdata, target, rdev or handle to look at
        return Entry(oid, parent, name, kind,
                     Meta(stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns, read_xattrs(path, privileged)),
                     st.st_size, b"", 0, st.st_nlink)
    mtime_ns = brick_mtime(path) if brick else None
    meta = Meta(
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns if mtime_ns is None else mtime_ns,
        read_xattrs(path, privileged),
    )
    target = os.readlink(path) if kind is Kind.SYMLINK else b""
    nlink = st.st_nlink - 1 if brick and kind is not Kind.DIR else st.st_nlink
    return Entry(
        oid,
        parent,
        name,
        kind,
        meta,
        size=st.st_size if kind is Kind.FILE else 0,
        target=target,
        rdev=st.st_rdev if kind in (Kind.CHR, Kind.BLK) else 0,
        nlink=nlink,
    )


class ListingObserver(Protocol):
    """Told what each directory listing held (`georep.batch.ledger` finds removals with it)."""

    def ahead(self, did: bytes, names: list[bytes]) -> None:
        """Directory ``did`` listed ``names``; the entries of those that are replicable follow.

        For lookups in bulk (`georep.batch.ledger.Ledger.look_ahead`); told before the entries.
        """

    def deferred(self, oid: bytes, parent: bytes, name: bytes) -> None:
        """A further name of a hard-linked inode, listed but not yielded (it is sent as a link)."""

    def listed(self, did: bytes, path: bytes, count: int, complete: bool) -> None:
        """Directory ``did`` at ``path`` is listed: ``count`` replicable names (all of them if ``complete``)."""


class Crawler:
    """Yields `SourceEntry` for every replicable object below ``root`` (root first)."""

    def __init__(self, root: bytes, store: IdStore, privileged: bool | None = None,
                 observer: ListingObserver | None = None) -> None:
        if not os.path.isdir(root):
            raise SourceMissing(f"source {os.fsdecode(root)} does not exist or is not a directory")
        self.root = os.path.abspath(root)
        self.store = store
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.brick = is_brick(self.root)
        self.problems: list[Problem] = []
        self.count = 0
        self.observer = observer
        store.new_crawl()

    def _id(self, path: bytes, st: os.stat_result) -> bytes | None:
        if not self.brick:
            return self.store.id_for(st.st_dev, st.st_ino)
        try:
            gfid = os.getxattr(path, "trusted.gfid", follow_symlinks=False)
        except OSError:
            return None
        return gfid if len(gfid) == 16 else None

    def _skip(self, parent_is_root: bool, name: bytes, path: bytes, st: os.stat_result) -> bool:
        if not self.brick:
            return False
        if parent_is_root and (name in BRICK_SKIP_TOP or name.startswith(b".glusterfs-anonymous-inode-")):
            return True
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == stat.S_ISVTX and st.st_size == 0:
            try:
                os.getxattr(path, LINKTO_XATTR, follow_symlinks=False)
                return True  # a DHT linkto pointer: the data lives on another brick
            except OSError:
                return False
        return False

    def __iter__(self) -> Iterator[SourceEntry]:
        st = os.stat(self.root)
        root_entry = make_entry(ROOT_ID, ROOT_ID, b"", self.root, st, brick=self.brick, privileged=self.privileged)
        assert root_entry is not None
        yield SourceEntry(root_entry, self.root, st.st_mtime_ns)
        stack: list[_Listing] = []
        self._push(stack, ROOT_ID, self.root, st.st_dev)
        # Per entry, this loop is most of a crawl's own time (the rest is lstat and
        # listxattr): names it uses for every entry are bound once, out here.
        brick, privileged, store, problems = self.brick, self.privileged, self.store, self.problems
        lstat = os.lstat
        while stack:
            top = stack[-1]
            ahead = top.ahead
            if not ahead:
                if not top.failed:
                    self._read_ahead(top, READ_AHEAD if len(stack) < DEEP else READ_AHEAD_DEEP)
                if not ahead:
                    stack.pop()
                    self._listed(top, complete=not top.failed)
                    continue
            pid, ids, dev = top.id, top.ids, top.dev
            while ahead:  # this directory's names read ahead, until one is a directory to descend into
                de = ahead.popleft()
                name = de.name
                path = de.path
                try:
                    st = lstat(path)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # vanished since listed: nothing to send
                        problems.append(Problem(path, f"cannot stat: {exc.strerror}"))
                    continue
                if brick and self._skip(pid == ROOT_ID, name, path, st):
                    continue
                oid = ids.get(st.st_ino) if st.st_dev == dev else None
                if oid is None:
                    oid = self._id(path, st)
                    if oid is None:
                        problems.append(Problem(path, "no trusted.gfid on a brick object (not healed yet?)"))
                        continue
                entry = make_entry(oid, pid, name, path, st, brick=brick, privileged=privileged)
                if entry is None:
                    continue
                self.count += 1
                top.count += 1
                kind = entry.kind
                if kind is not Kind.DIR and entry.nlink > 1 and not store.first_sighting(oid):
                    store.defer_link(oid, pid, name, path)
                    if self.observer is not None:
                        self.observer.deferred(oid, pid, name)
                    continue
                yield SourceEntry(entry, path, st.st_mtime_ns)
                if kind is Kind.DIR:
                    self._push(stack, oid, path, st.st_dev)
                    break

    def _listed(self, listing: _Listing, complete: bool) -> None:
        if self.observer is not None:
            self.observer.listed(listing.id, listing.path, listing.count, complete)

    def _push(self, stack: list[_Listing], oid: bytes, path: bytes, dev: int) -> None:
        try:
            it = os.scandir(path)
        except OSError as exc:
            self.problems.append(Problem(path, f"cannot list directory: {exc.strerror}"))
            self._listed(_Listing(oid, path, iter(()), dev), complete=False)
            return
        stack.append(_Listing(oid, path, iter(it), dev))

    def _read_ahead(self, listing: _Listing, n: int) -> None:
        """Read up to ``n`` more names of a listing; on a plain tree, look up their ids at once.

        The ids are keyed by the inode the directory entry names (``d_ino``); the lstat
        that follows must show the same inode on the directory's device for one to be
        used (a mount point or a name replaced in between takes the one-by-one path).
        """

        ahead = listing.ahead
        try:
            for de in listing.it:
                ahead.append(de)
                if len(ahead) >= n:
                    break
        except OSError as exc:
            self.problems.append(Problem(listing.path, f"cannot list directory: {exc.strerror}"))
            listing.failed = True
        if not self.brick and ahead:
            listing.ids = self.store.ids_for(listing.dev, [de.inode() for de in ahead])
        if self.observer is not None and ahead:
            self.observer.ahead(listing.id, [de.name for de in ahead])


@dataclass(slots=True)
class _Listing:
    """A directory being listed: its id, its path, the open listing and how many names it gave."""

    id: bytes
    path: bytes
    it: Iterator[os.DirEntry[bytes]]
    dev: int  # the directory's device: ids read ahead are for inodes on it
    count: int = 0
    failed: bool = False  # listing stopped by an error: what it gave is not the whole directory
    ahead: deque[os.DirEntry[bytes]] = field(default_factory=deque)
    ids: dict[int, bytes] = field(default_factory=dict)


#: Entries a head start may hold before the connection is up (about 0.5 KiB each: 16 MiB at
#: most).  Why this many: at 16,384 a rerun of 20,000 files reached the limit before the
#: connection stood and then waited; at 32,768 the whole crawl is done meanwhile (no-change
#: reruns over SSH, in turns: 0.738 -> 0.673 s median of 12, peak RSS 57.8 -> 59.8 MiB).
HEAD_START_LIMIT = 32_768


class _Recorder:
    """A `ListingObserver` that queues what it is told, as calls to replay, behind the entries crawled so far."""

    def __init__(self, queue: deque[SourceEntry | Callable[[ListingObserver], None]]) -> None:
        self._queue = queue

    def ahead(self, did: bytes, names: list[bytes]) -> None:
        self._queue.append(lambda o: o.ahead(did, names))

    def deferred(self, oid: bytes, parent: bytes, name: bytes) -> None:
        self._queue.append(lambda o: o.deferred(oid, parent, name))

    def listed(self, did: bytes, path: bytes, count: int, complete: bool) -> None:
        self._queue.append(lambda o: o.listed(did, path, count, complete))


class HeadStart:
    """The first entries of a crawl, read while the connection to the secondary is being set up.

    Why: setting up SSH and starting the agent takes 0.25 s on loopback and 1.4 s at
    150 ms RTT, and a crawl of 20,000 entries about as long (0.25 s); a rerun that finds
    nothing changed is mostly that crawl.  The caller calls `step` while it waits for the
    connection, then reads `entries`: the buffered ones first, then the rest of the crawl.

    What a `ListingObserver` must be told (a rerun's observer is known only once the agent
    has answered) is queued in its place among the entries and told, in that order, to the
    observer given to `entries`: a directory is reported listed only after its entries.
    An error of the crawl is raised where the entries reach it, as it was without a head start.
    Memory: at most ``limit`` entries wait here.
    """

    def __init__(self, crawler: Crawler, limit: int = HEAD_START_LIMIT) -> None:
        self._crawler = crawler
        self._it = iter(crawler)
        self._queue: deque[SourceEntry | Callable[[ListingObserver], None]] = deque()
        self._limit = limit
        self._held = 0
        self._error: Exception | None = None
        self._exhausted = False
        crawler.observer = _Recorder(self._queue)

    @property
    def held(self) -> int:
        """Entries read ahead so far."""

        return self._held

    def step(self, n: int, until: float | None = None) -> bool:
        """Crawl up to ``n`` more entries, stopping at ``until`` (monotonic) if given.

        False once the crawl ended, failed or the limit is reached: there is nothing more to do here.
        """

        for _ in range(n):
            if not self._more() or (until is not None and time.monotonic() >= until):
                break
            try:
                se = next(self._it)
            except StopIteration:
                self._exhausted = True
                break
            except Exception as exc:  # raised again where the entries reach it
                self._error = exc
                break
            self._queue.append(se)
            self._held += 1
        return self._more()

    def _more(self) -> bool:
        return not self._exhausted and self._error is None and self._held < self._limit

    def entries(self, observer: ListingObserver | None) -> Iterator[SourceEntry]:
        """Every entry of the crawl: those read ahead, then the rest; ``observer`` is told as they pass."""

        self._crawler.observer = observer
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, SourceEntry):
                yield item
            elif observer is not None:
                item(observer)
        if self._error is not None:
            raise self._error
        if not self._exhausted:
            yield from self._it

"""The agent: applies the sender's messages to a secondary ROOT, found by id.

Theory of operation
-------------------
The sender says "object ID is PARENT/NAME with this metadata" (`EntryMsg`).  The agent
looks ID up in its index (`georep.apply.index`):

* ID already at PARENT/NAME (and the inode on disk is the one recorded): refresh
  metadata; a regular file whose size and mtime differ is answered NEED.
* ID known under another name: one ``rename()`` moves it here (a directory moves with
  everything below it).  No data travels for a rename.
* ID unknown: directories are made at once; symlinks and special files are made in
  staging and published with ``rename()``; regular files are answered NEED, and their
  data is written into ``ROOT/.georep/staging``, checked against the sender's digest,
  given its metadata and only then renamed into place.  A reader of the secondary never
  sees a partial file or a temporary name.

Whatever stands in the way of a name is moved aside into staging under its id, not
destroyed: in a swap (a→tmp, b→a, tmp→b) the object moved aside is found there by id a
moment later and renamed into its new place.  At `Finish` of a full crawl, names the
sender did not confirm in this session (and anything still in staging) are removed,
unless the source looked empty (mass-delete guard); then directory modes and mtimes
are settled, deepest changes first being irrelevant since setting a directory's mtime
does not touch its parent.

Per-item failures are answered FAILED with a one-line cause and the rest goes on; an
exception out of `Applier.handle` means the session is broken (disk full, protocol
violation) and ends it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import os
import select
import sqlite3
import stat
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from georep.apply import fsops
from georep.apply.index import STAGING_ID, Index, Obj
from georep.apply.lane import LANE_FILE, STATE_DIR, Stager, alive
from georep.apply.writer import DigestMismatch, SmallJob, StagedWrites
from georep.errors import (
    ConnectionLost,
    DiskFull,
    GeorepError,
    ProtocolError,
    RootNotAllowed,
    SecondaryNotWritable,
    SourceLooksUnmounted,
)
from georep.model import ROOT_ID, Kind, Meta, name_problem
from georep.protocol import messages as m
from georep.protocol.delta import MIN_BASIS, DeltaError, Rebuild, block_hash, block_size_for, pieces
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE
from georep.protocol.session import Role, Session

if TYPE_CHECKING:  # imported by `_new_hub`, for sessions that open lanes: its sockets, hmac and
    # secrets were a tenth of the imports every agent made before its first answer
    from georep.apply.lanehub import LaneHub

ANY_HOLDER = m.ANY_HOLDER


class ItemFailed(Exception):
    """One item cannot be applied; reported as a FAILED result, the session goes on."""


#: Internal status of an Entry answered with BlockSums (no Result is sent for it then).
SUMS_SENT = -1
#: Directories made in this session that the agent remembers as holding nothing untracked.
#: A crawl sends a directory's entries soon after it; the bound keeps memory flat.
FRESH_DIRS = 4096


@dataclass(frozen=True, slots=True)
class Basis:
    """The copy a BlockSums was computed from: found again by id and inode at DeltaBegin."""

    id: bytes
    ino: int
    size: int


@dataclass(slots=True)
class Receiving:
    entry: m.EntryMsg
    fd: int
    tmp: bytes
    size: int
    digest: ExtentDigest = field(default_factory=ExtentDigest)
    #: a delta: which basis ranges fill the gaps between the chunks (None: a full transfer)
    rebuild: Rebuild | None = None
    basis_fd: int = -1
    #: why the delta cannot be applied; the agent then asks for the whole file (NEED)
    broken: str = ""
    #: the object was unknown when its data was asked for: it has no other name to clean up
    new: bool = False
    #: a large file received front to back: written around the page cache (fsops.DirectWriter)
    writer: fsops.DirectWriter | None = None


def xattr_digest(meta: Meta) -> bytes:
    """A short digest of the xattrs an object should carry (compared instead of listing them)."""

    return _pairs_digest(meta.xattrs)


def _pairs_digest(pairs: Iterable[Sequence[bytes]]) -> bytes:
    """`xattr_digest` of (key, value) pairs: an EntryMsg's own, without making its `Meta` first."""

    h = xxhash.xxh3_64()
    for k, v in pairs:
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(4, "little") + v)
    return h.digest()


def _meta(e: m.EntryMsg, mtime_ns: int | None = None) -> Meta:
    return Meta(
        e.mode & 0o7777,
        e.uid,
        e.gid,
        e.mtime_ns if mtime_ns is None else mtime_ns,
        tuple((kv[0], kv[1]) for kv in e.xattrs),
    )


class DirCache:
    """Directory id → open fd, resolved through the index with O_NOFOLLOW at every step.

    A directory fd follows its inode across renames, so cached fds stay right when a
    directory moves; they are dropped when a directory is removed.

    A dropped fd is closed only by `release`, after the item that dropped it: the code
    handling an item holds the fds it was given (the parent it publishes into) while it
    makes room, and making room for a file where an untracked directory stood empties the
    cache.  Closing there made the publishing rename fail with "Bad file descriptor".
    Small files in flight on the worker thread (`georep.apply.writer`) hold their parent's
    fd too: each dropped fd is stamped with `epoch`, the number of the batch being made,
    and closed only once that batch is collected.
    """

    def __init__(self, index: Index, root_fd: int, staging_fd: int, capacity: int = 512) -> None:
        self._index = index
        self._fixed = {ROOT_ID: root_fd, STAGING_ID: staging_fd}
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._cap = capacity
        self._dropped: list[tuple[int, int]] = []  # (epoch, fd)
        #: the number of the worker's batch that fds handed out now may go into
        self.epoch = 0

    def fd(self, oid: bytes) -> int:
        fixed = self._fixed.get(oid)
        if fixed is not None:
            return fixed
        cached = self._lru.get(oid)
        if cached is not None:
            self._lru.move_to_end(oid)
            return cached
        # climb to a known ancestor, then open down
        chain: list[tuple[bytes, bytes]] = []  # (id, name) from oid upward
        cur = oid
        while True:
            loc = self._index.location(cur)
            if loc is None:
                raise ItemFailed("parent directory unknown on the secondary")
            chain.append((cur, loc[1]))
            parent = loc[0]
            if parent in self._fixed or parent in self._lru:
                break
            cur = parent
            if len(chain) > 4096:
                raise ItemFailed("directory chain too deep or cyclic in the index")
        pfd = self.fd(parent)
        for did, name in reversed(chain):
            obj = self._index.obj(did)
            try:
                fd = fsops.open_dir_at(pfd, name)
            except OSError as exc:
                raise ItemFailed(f"directory on the secondary cannot be opened: {exc.strerror}") from None
            if obj is None or os.fstat(fd).st_ino != obj.ino:
                os.close(fd)
                raise ItemFailed("directory on the secondary is not the one the index recorded")
            self._put(did, fd)
            pfd = fd
        return pfd

    def _put(self, oid: bytes, fd: int) -> None:
        self._lru[oid] = fd
        while len(self._lru) > self._cap:
            _, old = self._lru.popitem(last=False)
            self._dropped.append((self.epoch, old))

    def adopt(self, oid: bytes, fd: int) -> None:
        old = self._lru.pop(oid, None)
        if old is not None:
            self._dropped.append((self.epoch, old))
        self._put(oid, fd)

    def rekey(self, old: bytes, new: bytes) -> None:
        """The directory known as ``old`` is known as ``new`` now (its fd, if open, stays right)."""

        fd = self._lru.pop(old, None)
        if fd is not None:
            self._put(new, fd)

    def clear(self) -> None:
        self._dropped.extend((self.epoch, fd) for fd in self._lru.values())
        self._lru.clear()

    def release(self, collected: int | None = None) -> None:
        """Close the fds dropped since the last call (see the class docstring).

        ``collected``: the worker's batches collected so far; an fd dropped while a later
        batch was being made stays open (None: nothing is in flight, close them all).
        """

        if not self._dropped:
            return  # the usual case: called after every item
        keep = [] if collected is None else [(e, fd) for e, fd in self._dropped if e >= collected]
        for e, fd in self._dropped:
            if collected is None or e < collected:
                os.close(fd)
        self._dropped = keep


class Applier:
    """Applies messages to one secondary root; pure bookkeeping plus `fsops` calls."""

    def __init__(self, root: Path, privileged: bool | None = None, scope: str = "") -> None:
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.state_fd = fsops.make_dir_at(self.root_fd, STATE_DIR)
            self.staging_fd = fsops.make_dir_at(self.state_fd, b"staging")
            self.index = Index(root / ".georep" / "index.db", scope)
        except OSError as exc:
            raise SecondaryNotWritable(f"secondary root {root} cannot be used: {exc.strerror}") from None
        root_st = os.fstat(self.root_fd)
        if self.index.obj(ROOT_ID) is None:
            self.index.put_obj(ROOT_ID, Kind.DIR, 0, root_st.st_mtime_ns, root_st.st_mode & 0o7777, root_st.st_ino)
        self.dirs = DirCache(self.index, self.root_fd, self.staging_fd)
        #: this session's place among the scope's writers (for Resume and Seal)
        self.claim = self.index.start_session(alive)
        self.pending: dict[int, m.EntryMsg] = {}
        #: pending items whose id was unknown when their data was asked for (see `_publish`)
        self._new_seqs: set[int] = set()
        self.receiving: dict[int, Receiving] = {}
        #: items answered with BlockSums: the basis the delta will be applied to
        self.bases: dict[int, Basis] = {}
        #: messages other than Results to send (BlockSums), in order
        self.outbox: list[m.Message] = []
        self._tmp = itertools.count()
        self._tmp_prefix = b"tmp-%d-" % os.getpid()  # the pid: a dead agent's leftovers are known as such
        #: directories whose mode/mtime must be set again once nothing more changes inside
        self.dirty_dirs: set[bytes] = set()
        #: ids of directories this session made (the latest FRESH_DIRS): nothing untracked is in them
        self._fresh_dirs: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        #: small files being written on the worker thread, their ids and names (see `handle`)
        self.writes = StagedWrites(self.staging_fd, self.privileged)
        self._writing_ids: set[bytes] = set()
        self._writing_names: set[tuple[bytes, bytes]] = set()
        self._clean_staging_tmp()

    @staticmethod
    def check_root(root: Path, allow: Path | None = None) -> None:
        """Fail early (before the handshake completes) when ROOT cannot or may not be used."""

        if allow is not None:
            real = Path(os.path.realpath(root))
            if real != allow and allow not in real.parents:
                raise RootNotAllowed(f"this agent may only write under {allow}; {root} was requested")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SecondaryNotWritable(f"secondary root {root} cannot be used: {exc.strerror}") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise SecondaryNotWritable(f"secondary root {root} is not writable")

    # -- dispatch -----------------------------------------------------------------

    def handle(self, msg: m.Message) -> list[m.Result]:
        """Apply one message; the per-item results it produced (possibly none).

        Small files (Blobs) are written on the worker thread (`georep.apply.writer`); their
        results come with a later call, or from `collect_writes`.  A message that could
        concern a file still in flight (its id or name, or anything but a new entry in a
        directory this session made) waits for every file in flight first: messages take
        effect in the order they came, as if applied one by one.
        """

        if self.writes.busy and not self._may_overtake(msg):
            return self.collect_writes(wait=True) + self._handle(msg)
        return self._handle(msg)

    def look_ahead(self, msgs: list[m.Message]) -> None:
        """Look up the ids of the entries among ``msgs`` in one go (`Index.look_ahead`), before they are applied."""

        ids = [msg.id for msg in msgs if isinstance(msg, m.EntryMsg)]
        if len(ids) > 1:
            self.index.look_ahead(ids)

    def _may_overtake(self, msg: m.Message) -> bool:
        if isinstance(msg, m.Blobs):
            return True
        return (isinstance(msg, m.EntryMsg) and msg.parent in self._fresh_dirs and msg.id not in self._writing_ids
                and (msg.parent, msg.name) not in self._writing_names)

    def _handle(self, msg: m.Message) -> list[m.Result]:
        try:
            if isinstance(msg, m.EntryMsg):
                return self._item(msg.seq, self._entry, msg)
            if isinstance(msg, m.LinkMsg):
                return self._item(msg.seq, self._link, msg)
            if isinstance(msg, m.MoveMsg):
                return self._item(msg.seq, self._move, msg)
            if isinstance(msg, m.RemoveMsg):
                return self._item(msg.seq, self._remove, msg)
            if isinstance(msg, m.DataBegin):
                return self._data_begin(msg)
            if isinstance(msg, m.DeltaBegin):
                return self._delta_begin(msg)
            if isinstance(msg, m.DataChunk):
                return self._data_chunk(msg)
            if isinstance(msg, m.DataEnd):
                return self._item(msg.seq, self._data_end, msg)
            if isinstance(msg, m.Blobs):
                return self._blobs(msg)
            if isinstance(msg, m.Adopt):
                return self._item(msg.seq, self._adopt_staged, msg)
            if isinstance(msg, m.DataAbort):
                self._drop_receiving(msg.seq)
                self.pending.pop(msg.seq, None)
                self._new_seqs.discard(msg.seq)
                self.bases.pop(msg.seq, None)
                return [m.Result(msg.seq, m.FAILED, f"not sent: {msg.reason}")]
        except OSError as exc:
            raise self._fatal(exc) from None
        raise ProtocolError(f"unexpected {type(msg).__name__}")

    def _item(self, seq: int, fn: object, msg: object) -> list[m.Result]:
        try:
            status = fn(msg)  # type: ignore[operator]
            if status == SUMS_SENT:
                return []  # answered by the BlockSums in the outbox
            return [m.Result(seq, status, "")]
        except ItemFailed as exc:
            return [m.Result(seq, m.FAILED, str(exc))]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            return [m.Result(seq, m.FAILED, f"{exc.strerror or exc}")]
        finally:
            self.dirs.release(self.writes.collected if self.writes.busy else None)

    @staticmethod
    def _fatal(exc: OSError) -> GeorepError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"the secondary is full: {exc.strerror}")
        return SecondaryNotWritable(f"the secondary cannot be written: {exc.strerror}")

    # -- entries ------------------------------------------------------------------

    def _entry(self, e: m.EntryMsg) -> int:
        try:
            kind = Kind(e.kind)
        except ValueError:
            raise ItemFailed(f"unknown kind {e.kind}") from None
        if e.id == ROOT_ID:
            if e.parent != ROOT_ID or e.name or kind is not Kind.DIR:
                raise ItemFailed("the root id can only address the root directory")
            meta = _meta(e)
            root = self.index.obj(ROOT_ID)
            root_st = os.fstat(self.root_fd)
            if root is None or not self._same_meta(root, root_st, meta):
                fsops.apply_meta_fd(self.root_fd, meta, self.privileged, times=False)
                self.index.put_obj(ROOT_ID, Kind.DIR, 0, e.mtime_ns, meta.mode, root_st.st_ino, xattr_digest(meta))
                self.dirty_dirs.add(ROOT_ID)
            return m.DONE
        self._check_name(e.parent, e.name)
        if len(e.id) != 16 or len(e.parent) != 16 or e.id == STAGING_ID:
            raise ProtocolError("invalid object id: ids are 16 bytes")
        pfd = self.dirs.fd(e.parent)
        obj = self.index.obj(e.id)
        if obj is not None and obj.kind is not kind:
            self._retire(e.id)  # same id, new type: the old object is stale
            obj = None
            pfd = self.dirs.fd(e.parent)  # setting aside may have closed cached directory fds
        here = obj is not None and self._place_by_id(e.id, obj, e.parent, e.name, pfd)
        if here and obj is not None:
            st = fsops.lstat_at(pfd, e.name)
            if st is None or st.st_ino != obj.ino or Kind.from_mode(st.st_mode) is not kind:
                self.index.drop_name(e.parent, e.name)  # the index drifted from the disk
            else:
                self.index.touch(e.parent, e.name)
                return self._refresh(e, kind, pfd, st)
        return self._create(e, kind, pfd, new=obj is None)

    def _place_by_id(self, oid: bytes, obj: Obj, parent: bytes, name: bytes, pfd: int) -> bool:
        """Make ``parent/name`` a name of ``oid`` by renaming one it has; whether it now is one."""

        names = self.index.names_of(oid)
        if any(p == parent and n == name for p, n, _ in names):
            return True
        src = self._movable_name(names)
        if src is None:
            return False
        sfd = self.dirs.fd(src[0])
        if src[0] != STAGING_ID:
            self.dirty_dirs.add(src[0])
        src_st = fsops.lstat_at(sfd, src[1])
        if src_st is None or src_st.st_ino != obj.ino:
            self._discard(sfd, *src, src_st)  # an outdated copy: it must not outlive its name
            return False
        self._make_room(pfd, parent, name, keep=oid, replace_ok=False)
        fsops.rename_at(sfd, src[1], pfd, name)
        self.index.move_name(src, (parent, name), oid)
        self.dirty_dirs.add(parent)
        return True

    def _move(self, msg: m.MoveMsg) -> int:
        """A rename by id alone (`MoveMsg`): NEED asks for the whole entry when it cannot be done."""

        self._check_name(msg.parent, msg.name)
        if len(msg.id) != 16 or msg.id in (ROOT_ID, STAGING_ID):
            raise ProtocolError("invalid object id in a move")
        obj = self.index.obj(msg.id)
        if obj is None:
            return m.NEED
        pfd = self.dirs.fd(msg.parent)
        if self._place_by_id(msg.id, obj, msg.parent, msg.name, pfd):
            st = fsops.lstat_at(pfd, msg.name)
            if st is not None and st.st_ino == obj.ino and Kind.from_mode(st.st_mode) is obj.kind:
                self.index.touch(msg.parent, msg.name)
                return m.DONE
            self.index.drop_name(msg.parent, msg.name)  # the index drifted from the disk
        return m.NEED

    def _movable_name(self, names: list[tuple[bytes, bytes, int]]) -> tuple[bytes, bytes] | None:
        """Which existing name of an object to rename: one in place not confirmed now, else one set aside.

        A name in place goes first: a sender rerunning from its ledger takes an object's one
        recorded other name to be the one renamed, and sends no removal for it.  Renaming a
        name set aside instead (one displaced earlier in this session) left that old name in
        place for good, as a hard link the source no longer had; a name set aside is swept
        at the end of the session anyway.
        """

        for p, n, g in names:
            if g < self.index.gen and p != STAGING_ID:
                return p, n
        for p, n, _g in names:
            if p == STAGING_ID:
                return p, n
        # a live session confirms names as it goes: a renamed object's old name is then
        # from this session too.  Any name will do: extra hard links are re-linked or
        # removed by the Link/Remove items that follow.
        return (names[0][0], names[0][1]) if names else None

    def _same_meta(self, obj: Obj, st: os.stat_result, meta: Meta) -> bool:
        """Whether the object on disk already has ``meta`` (then nothing is written at all).

        Mode and owner come from the lstat just made; xattrs are compared through the
        digest recorded when they were last applied (listing them costs syscalls per
        object, and a rerun of an unchanged tree must be cheap).
        """

        if obj.xhash != xattr_digest(meta):
            return False
        if self.privileged and (st.st_uid, st.st_gid) != (meta.uid, meta.gid):
            return False
        if obj.kind is Kind.DIR:  # created 0700 and settled later: compare with what was asked
            return obj.mode == meta.mode and obj.mtime_ns == meta.mtime_ns
        return stat.S_IMODE(st.st_mode) == meta.mode and (obj.kind is Kind.SYMLINK or st.st_mtime_ns == meta.mtime_ns)

    def _refresh(self, e: m.EntryMsg, kind: Kind, pfd: int, st: os.stat_result) -> int:
        """The object is in place: bring its metadata up to date, or ask for data."""

        meta = _meta(e)
        obj = self.index.obj(e.id)
        if kind is Kind.FILE:
            if st.st_size != e.size or st.st_mtime_ns != e.mtime_ns:
                self.pending[e.seq] = e
                if obj is not None and st.st_ino == obj.ino and st.st_size >= MIN_BASIS:
                    sums = self._block_sums(e, pfd, st)
                    if sums is not None:
                        self.outbox.append(sums)
                        return SUMS_SENT
                return m.NEED
            if obj is not None and self._same_meta(obj, st, meta):
                return m.DONE
            fd = os.open(e.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
            try:
                if os.fstat(fd).st_ino != st.st_ino:
                    raise ItemFailed("file replaced on the secondary while being updated")
                fsops.apply_meta_fd(fd, meta, self.privileged)
            finally:
                os.close(fd)
            self.index.put_obj(e.id, kind, e.size, e.mtime_ns, meta.mode, st.st_ino, xattr_digest(meta))
            return m.DONE
        if kind is Kind.DIR:
            if obj is not None and self._same_meta(obj, st, meta):
                return m.DONE
            fd = self.dirs.fd(e.id)
            fsops.apply_meta_fd(fd, meta, self.privileged, times=False)
            self.index.put_obj(e.id, kind, 0, e.mtime_ns, meta.mode, st.st_ino, xattr_digest(meta))
            self.dirty_dirs.add(e.id)
            return m.DONE
        same = (
            os.readlink(e.name, dir_fd=pfd) == e.target
            if kind is Kind.SYMLINK
            else (kind not in (Kind.CHR, Kind.BLK) or st.st_rdev == e.rdev)
        )
        if not same:
            return self._create(e, kind, pfd)
        if obj is not None and self._same_meta(obj, st, meta) and st.st_mtime_ns == meta.mtime_ns:
            return m.DONE
        if kind is Kind.SYMLINK:
            fsops.apply_meta_symlink(pfd, e.name, meta, self.privileged)
        else:
            fsops.apply_meta_special(pfd, e.name, meta, self.privileged)
        self.index.put_obj(e.id, kind, 0, e.mtime_ns, meta.mode, st.st_ino, xattr_digest(meta))
        return m.DONE

    def _create(self, e: m.EntryMsg, kind: Kind, pfd: int, new: bool = False) -> int:
        """Make object ``e`` at its name (asking for the data of a file); ``new``: its id is unknown here."""

        # only an untracked object already at the name is adopted: a directory this session
        # made has none, so its entries skip the look (one failing lstat per file of a first
        # copy).  Should something appear there all the same, the publishing rename refuses
        # to replace it and takes the general path (_publish).
        st = None if e.parent in self._fresh_dirs else fsops.lstat_at(pfd, e.name)
        if st is not None and self.index.occupant(e.parent, e.name) is None:
            adopted = self._adopt(e, kind, pfd, st)
            if adopted is not None:
                return adopted
        if kind is Kind.FILE:
            self.pending[e.seq] = e
            if new:
                self._new_seqs.add(e.seq)
            return m.NEED
        meta = _meta(e)
        if kind is Kind.DIR:
            self._make_room(pfd, e.parent, e.name, keep=e.id, replace_ok=False)
            os.mkdir(e.name, 0o700, dir_fd=pfd)
            fd = fsops.open_dir_at(pfd, e.name)
            fsops.apply_meta_fd(fd, meta, self.privileged, times=False)
            ino = os.fstat(fd).st_ino
            self.index.put_obj(e.id, kind, 0, e.mtime_ns, meta.mode, ino, xattr_digest(meta))
            self.dirty_dirs.update((e.parent, e.id))
            self.index.put_name(e.parent, e.name, e.id)
            self.dirs.adopt(e.id, fd)
            self._fresh_dirs[e.id] = None
            if len(self._fresh_dirs) > FRESH_DIRS:
                self._fresh_dirs.popitem(last=False)
            return m.DONE
        tmp = self._tmp_name()
        if kind is Kind.SYMLINK:
            os.symlink(e.target, tmp, dir_fd=self.staging_fd)
            fsops.apply_meta_symlink(self.staging_fd, tmp, meta, self.privileged)
        else:
            if kind in (Kind.CHR, Kind.BLK) and not self.privileged:
                raise ItemFailed("device nodes can only be made by root on the secondary")
            os.mknod(tmp, kind.fmt | meta.mode, e.rdev, dir_fd=self.staging_fd)
            fsops.apply_meta_special(self.staging_fd, tmp, meta, self.privileged)
        self._publish(tmp, e, kind, e.mtime_ns, 0, new=new)
        return m.DONE

    def _adopt(self, e: m.EntryMsg, kind: Kind, pfd: int, st: os.stat_result) -> int | None:
        """Take over an untracked object already at the name when it is the same (a seeded secondary)."""

        if Kind.from_mode(st.st_mode) is not kind:
            return None
        if kind is Kind.FILE and (st.st_size != e.size or st.st_mtime_ns != e.mtime_ns):
            return None
        if kind is Kind.SYMLINK and os.readlink(e.name, dir_fd=pfd) != e.target:
            return None
        if kind not in (Kind.FILE, Kind.DIR, Kind.SYMLINK):
            return None
        self.index.put_obj(e.id, kind, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino)
        self.index.put_name(e.parent, e.name, e.id)
        return self._refresh(e, kind, pfd, st)

    def _link(self, msg: m.LinkMsg) -> int:
        self._check_name(msg.parent, msg.name)
        self.dirty_dirs.add(msg.parent)
        obj = self.index.obj(msg.id)
        if obj is None or obj.kind is Kind.DIR:
            raise ItemFailed("hard link to an object the secondary does not have")
        pfd = self.dirs.fd(msg.parent)
        src: tuple[int, bytes] | None = None
        for p, n, _g in self.index.names_of(msg.id):
            fd = self.dirs.fd(p)
            st = fsops.lstat_at(fd, n)
            if st is not None and st.st_ino == obj.ino:
                if p == msg.parent and n == msg.name:
                    self.index.touch(p, n)
                    return m.DONE
                if src is None:
                    src = (fd, n)
        if src is None:
            raise ItemFailed("no name of the link target is present on the secondary")
        tmp = self._tmp_name()
        os.link(src[1], tmp, src_dir_fd=src[0], dst_dir_fd=self.staging_fd, follow_symlinks=False)
        self._make_room(pfd, msg.parent, msg.name, keep=msg.id, replace_ok=True)
        fsops.rename_at(self.staging_fd, tmp, pfd, msg.name)
        self.index.put_name(msg.parent, msg.name, msg.id)
        return m.DONE

    def _remove(self, msg: m.RemoveMsg) -> int:
        """Remove one name of ``id``; a directory goes with everything below it."""

        self._check_name(msg.parent, msg.name)
        holder = self.index.occupant(msg.parent, msg.name)
        if msg.id == ANY_HOLDER and holder is not None:
            msg = m.RemoveMsg(msg.seq, holder, msg.parent, msg.name)  # "clear this name"
        if holder != msg.id:
            return m.DONE  # already gone, or the name now holds another object
        obj = self.index.obj(msg.id)
        try:
            pfd = self.dirs.fd(msg.parent)
        except ItemFailed:
            self.index.drop_name(msg.parent, msg.name)
            return m.DONE  # its directory is gone already
        self.dirty_dirs.add(msg.parent)
        st = fsops.lstat_at(pfd, msg.name)
        if st is not None and obj is not None:
            if stat.S_ISDIR(st.st_mode):
                if st.st_ino == obj.ino:
                    fsops.remove_at(pfd, msg.name)
                    self.dirs.clear()
            else:
                os.unlink(msg.name, dir_fd=pfd)
        if obj is not None and obj.kind is Kind.DIR:
            self.index.drop_subtree(msg.id)
            self.dirty_dirs.discard(msg.id)
        self.index.drop_name(msg.parent, msg.name)
        return m.DONE

    # -- data ---------------------------------------------------------------------

    def _take_pending(self, seq: int) -> tuple[m.EntryMsg, bool]:
        """The entry whose data arrives, and whether its id was unknown when the data was asked for."""

        e = self.pending.pop(seq, None)
        if e is None:
            raise ProtocolError(f"data for item {seq}, which the agent did not ask for")
        new = seq in self._new_seqs
        self._new_seqs.discard(seq)
        if seq in self.receiving:
            raise ProtocolError(f"data for item {seq} begun twice")
        self.bases.pop(seq, None)  # a whole file, although block sums were offered
        return e, new

    def _open_tmp(self, e: m.EntryMsg, size: int, new: bool = False) -> Receiving:
        tmp = self._tmp_name()
        return Receiving(e, fsops.create_staged_at(self.staging_fd, tmp, e.mode), tmp, size, new=new)

    def _data_begin(self, msg: m.DataBegin) -> list[m.Result]:
        e, new = self._take_pending(msg.seq)
        rec = self._open_tmp(e, msg.size, new)
        rec.writer = fsops.DirectWriter.for_size(rec.fd, msg.size)
        self.receiving[msg.seq] = rec
        return []

    def _data_chunk(self, msg: m.DataChunk) -> list[m.Result]:
        rec = self.receiving.get(msg.seq)
        if rec is None:
            raise ProtocolError(f"data chunk for item {msg.seq}, which has no DataBegin")
        if rec.rebuild is not None:
            if rec.broken:
                return []  # the whole file will be asked for at DataEnd
            try:
                gap = rec.rebuild.chunk(msg.offset, len(msg.data))
                if gap is not None:
                    self._copy_basis(rec, *gap)
            except DeltaError as exc:
                rec.broken = str(exc)
                return []
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                rec.broken = f"the basis cannot be read: {exc.strerror}"
                return []
        elif msg.offset < rec.digest.next_offset:
            raise ProtocolError(f"data chunk for item {msg.seq} at {msg.offset} overlaps or goes backwards")
        rec.digest.update(msg.offset, msg.data)
        fsops.write_received(rec.fd, rec.writer, msg.offset, msg.data)
        return []

    def _data_end(self, msg: m.DataEnd) -> int:
        rec = self.receiving.pop(msg.seq, None)
        if rec is None:
            raise ProtocolError(f"DataEnd for item {msg.seq}, which has no DataBegin")
        if rec.rebuild is not None:
            return self._delta_end(rec, msg)
        if rec.writer is not None:
            try:
                rec.writer.finish()
            except BaseException:
                self._discard_receiving(rec)
                raise
        return self._finish_file(rec, msg.digest, msg.mtime_ns)

    # -- delta against the copy the agent has ------------------------------------------

    def _block_sums(self, e: m.EntryMsg, pfd: int, st: os.stat_result) -> m.BlockSums | None:
        """The block hashes of the file at ``pfd/e.name`` (inode ``st``), read block by block.

        None when it cannot be read (the sender then sends the whole file, as for NEED).
        """

        try:
            fd = os.open(e.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
            if fst.st_ino != st.st_ino or not stat.S_ISREG(fst.st_mode):
                return None
            if _has_holes(fd, fst.st_size):
                return None  # a sparse file: sent whole, holes skipped (hashing them would read zeros)
            bs = block_size_for(fst.st_size, CHUNK_SIZE)
            buf = bytearray(bs)
            view = memoryview(buf)
            sums = bytearray()
            pos = 0
            while pos < fst.st_size:
                want = min(bs, fst.st_size - pos)
                n = _read_full(fd, view[:want], pos)
                if n:
                    sums += block_hash(view[:n])
                    pos += n
                if n < want:
                    break  # shrank while being read: the last (short) block ends the basis
            self.bases[e.seq] = Basis(e.id, fst.st_ino, pos)
            return m.BlockSums(e.seq, bs, pos, bytes(sums))
        except OSError:
            return None
        finally:
            os.close(fd)

    def _delta_begin(self, msg: m.DeltaBegin) -> list[m.Result]:
        basis = self.bases.pop(msg.seq, None)
        if basis is None:
            raise ProtocolError(f"delta for item {msg.seq}, for which the agent sent no block sums")
        e, _new = self._take_pending(msg.seq)
        rec = self._open_tmp(e, msg.size)
        rec.rebuild = Rebuild(msg.size, basis.size)
        self.receiving[msg.seq] = rec
        try:
            rec.basis_fd = self._open_basis(basis)
        except ItemFailed as exc:
            rec.broken = str(exc)
        return []

    def _open_basis(self, basis: Basis) -> int:
        """A read-only fd of the basis: whichever name of the id still holds its inode."""

        for p, n, _g in self.index.names_of(basis.id):
            try:
                fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.dirs.fd(p))
            except (ItemFailed, OSError):
                continue  # this name is gone or is not a file: another may still hold the inode
            st = os.fstat(fd)
            if st.st_ino == basis.ino and stat.S_ISREG(st.st_mode):
                return fd
            os.close(fd)
        raise ItemFailed("the basis is no longer on the secondary")

    def _copy_basis(self, rec: Receiving, offset: int, length: int) -> None:
        """Copy a range the sender did not send from the basis, and digest what landed in staging."""

        if fsops.copy_range(rec.basis_fd, rec.fd, offset, length) != length:
            raise DeltaError("the basis became shorter than its block sums")
        for off, n in pieces(offset, offset + length, CHUNK_SIZE):
            data = os.pread(rec.fd, n, off)
            if len(data) != n:
                raise DeltaError("the staging file is shorter than what was copied into it")
            rec.digest.update(off, data)

    def _delta_end(self, rec: Receiving, msg: m.DataEnd) -> int:
        """Copy the tail from the basis, verify the whole content; on any doubt ask for the whole file."""

        assert rec.rebuild is not None
        try:
            if not rec.broken:
                try:
                    gap = rec.rebuild.end()
                    if gap is not None:
                        self._copy_basis(rec, *gap)
                except DeltaError as exc:
                    rec.broken = str(exc)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                        raise
                    rec.broken = f"the basis cannot be read: {exc.strerror}"
            if not rec.broken and rec.digest.finish(rec.size) != msg.digest:
                rec.broken = "digest mismatch (the basis changed on the secondary?)"
        except BaseException:
            self._discard_receiving(rec)
            raise
        if rec.broken:
            self._discard_receiving(rec)
            print(f"georep agent: delta of item {msg.seq} not applied: {rec.broken}; asking for the whole file",
                  file=sys.stderr)
            self.pending[msg.seq] = rec.entry  # no basis any more: only a whole file is accepted now
            return m.NEED
        self._close_basis(rec)
        return self._seal(rec, msg.mtime_ns)

    def _blobs(self, msg: m.Blobs) -> list[m.Result]:
        """Hand the files of ``msg`` to the worker thread; what fails before that is answered now."""

        # memory stays bounded: the oldest batch is recorded before another goes
        results = self._record(self.writes.collect_oldest()) if self.writes.full else []
        batch: list[SmallJob] = []
        self.dirs.epoch = self.writes.submitted  # the number this batch will have
        for f in msg.files:
            e, new = self._take_pending(f.seq)
            end = 0
            for off, data in f.extents:
                assert isinstance(off, int) and isinstance(data, bytes)  # checked by the decoder
                if off < end:
                    raise ProtocolError(f"data for item {f.seq} at {off} overlaps or goes backwards")
                end = off + len(data)
            # the digest is checked by the writer, on the data as received (which is what gets written)
            try:
                pfd = self.dirs.fd(e.parent)
            except ItemFailed as exc:
                results.append(m.Result(f.seq, m.FAILED, str(exc)))
                continue
            batch.append(SmallJob(e, new, pfd, self._tmp_name(), f, _meta(e, f.mtime_ns)))
            self._writing_ids.add(e.id)
            self._writing_names.add((e.parent, e.name))
        if batch:
            self.writes.submit(batch)
        return results

    def collect_writes(self, wait: bool) -> list[m.Result]:
        """Record the small files the worker finished (``wait``: all in flight); their results."""

        return self._collected(self.writes.collect(wait))

    def collect_some_writes(self) -> list[m.Result]:
        """Record the small files the worker finished, waiting for its oldest batch if none is; their results."""

        return self._collected(self.writes.collect_some())

    def _collected(self, batches: list[list[SmallJob]]) -> list[m.Result]:
        results = [r for batch in batches for r in self._record(batch)]
        self.dirs.release(self.writes.collected if self.writes.busy else None)
        return results

    def _record(self, batch: list[SmallJob]) -> list[m.Result]:
        """The main thread's share of a written batch: the index, a taken name; the results."""

        results = []
        for job in batch:
            e = job.entry
            self._writing_ids.discard(e.id)
            self._writing_names.discard((e.parent, e.name))
            seq, status, why = job.file.seq, m.DONE, ""
            try:
                if job.error is not None:
                    raise job.error
                if job.published:
                    self._record_published(e, Kind.FILE, job.file.mtime_ns, job.file.size, job.ino, job.new)
                else:  # its name is taken: look, make room (setting aside), publish
                    self._publish(job.tmp, e, Kind.FILE, job.file.mtime_ns, job.file.size, job.ino, new=job.new)
            except ItemFailed as exc:
                status, why = m.FAILED, str(exc)
            except DigestMismatch:
                status, why = m.FAILED, "digest mismatch: the data was damaged in transit; not published"
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise self._fatal(exc) from None
                status, why = m.FAILED, f"{exc.strerror or exc}"
            results.append(m.Result(seq, status, why))
        return results

    def _adopt_staged(self, msg: m.Adopt) -> int:
        """Publish what a data lane staged for this item (its digest was checked there)."""

        e, new = self._take_pending(msg.seq)
        if not LANE_FILE.fullmatch(msg.name):
            raise ProtocolError("Adopt names a file that no data lane makes")
        try:
            fd = os.open(msg.name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.staging_fd)
        except FileNotFoundError:
            raise ItemFailed("the data lane's staged file is gone; not published") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != msg.size:
            os.close(fd)
            os.unlink(msg.name, dir_fd=self.staging_fd)
            raise ItemFailed("the data lane's staged file is not as the lane left it; not published")
        return self._seal(Receiving(e, fd, msg.name, msg.size, new=new), msg.mtime_ns)

    def _finish_file(self, rec: Receiving, digest: bytes, mtime_ns: int) -> int:
        try:
            if rec.digest.finish(rec.size) != digest:
                raise ItemFailed("digest mismatch: the data was damaged in transit; not published")
        except BaseException:
            self._discard_receiving(rec)
            raise
        return self._seal(rec, mtime_ns)

    def _seal(self, rec: Receiving, mtime_ns: int) -> int:
        """Give a complete file in staging its final length and metadata, then publish it."""

        try:
            st = fsops.seal_staged(rec.fd, rec.size, _meta(rec.entry, mtime_ns), self.privileged)
        except BaseException:
            self._discard_receiving(rec)
            raise
        os.close(rec.fd)
        self._publish(rec.tmp, rec.entry, Kind.FILE, mtime_ns, rec.size, st.st_ino, new=rec.new)
        return m.DONE

    def _drop_receiving(self, seq: int) -> None:
        rec = self.receiving.pop(seq, None)
        if rec is not None:
            self._discard_receiving(rec)

    def _discard_receiving(self, rec: Receiving) -> None:
        self._close_basis(rec)
        if rec.writer is not None:
            rec.writer.close()
        os.close(rec.fd)
        os.unlink(rec.tmp, dir_fd=self.staging_fd)

    @staticmethod
    def _close_basis(rec: Receiving) -> None:
        if rec.basis_fd >= 0:
            os.close(rec.basis_fd)
            rec.basis_fd = -1

    def _publish(self, tmp: bytes, e: m.EntryMsg, kind: Kind, mtime_ns: int, size: int, ino: int = 0,
                 new: bool = False) -> None:
        """Rename a finished object from staging to its name: the one moment it appears.

        ``new``: the object's id was unknown when it was asked for, so it has no other name
        to clean up (one index lookup saved per new file).
        """

        self.dirty_dirs.add(e.parent)
        try:
            pfd = self.dirs.fd(e.parent)
            if not ino:
                ino = os.stat(tmp, dir_fd=self.staging_fd, follow_symlinks=False).st_ino
            # a free name takes the object at once; a taken one is looked at first (_make_room)
            if not fsops.rename_noreplace_at(self.staging_fd, tmp, pfd, e.name):
                self._make_room(pfd, e.parent, e.name, keep=e.id, replace_ok=True)
                fsops.rename_at(self.staging_fd, tmp, pfd, e.name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.staging_fd)
            raise
        self._record_published(e, kind, mtime_ns, size, ino, new)

    def _record_published(self, e: m.EntryMsg, kind: Kind, mtime_ns: int, size: int, ino: int, new: bool) -> None:
        """The index after ``e`` was published at its name (see `_publish`)."""

        self.dirty_dirs.add(e.parent)
        # names of the object's previous inode are stale now (hard links are re-sent)
        for p, n, _g in () if new else self.index.names_of(e.id):
            if (p, n) != (e.parent, e.name) and p == STAGING_ID:
                fsops.remove_at(self.staging_fd, n)
                self.index.drop_name(p, n)
        self.index.put_obj(e.id, kind, size, mtime_ns, e.mode & 0o7777, ino, _pairs_digest(e.xattrs))
        self.index.put_name(e.parent, e.name, e.id)

    # -- making room, setting aside ------------------------------------------------

    def _make_room(self, pfd: int, parent: bytes, name: bytes, *, keep: bytes, replace_ok: bool) -> None:
        """Clear ``parent/name`` for ``keep``: other objects are set aside, not destroyed.

        ``replace_ok``: a following rename() may replace a non-directory in place.
        """

        st = fsops.lstat_at(pfd, name)
        if st is None:
            # free on disk: a row the index may still have for it is replaced by the caller's
            # put_name/move_name (INSERT OR REPLACE), so it is not even looked up
            return
        occ = self.index.occupant(parent, name)
        if occ == keep:
            if replace_ok and not stat.S_ISDIR(st.st_mode):
                return
            occ = None  # our own old version in the way of a directory: discard it
            self.index.drop_name(parent, name)
        if occ is not None:
            obj = self.index.obj(occ)
            if obj is not None and obj.ino == st.st_ino:
                aside = b"id-" + occ.hex().encode() + b"-" + str(next(self._tmp)).encode()
                fsops.rename_at(pfd, name, self.staging_fd, aside)
                self.index.move_name((parent, name), (STAGING_ID, aside), occ)
                self.dirty_dirs.add(parent)
                return
            self.index.drop_name(parent, name)
        if replace_ok and not stat.S_ISDIR(st.st_mode):
            return
        junk = self._tmp_name()
        fsops.rename_at(pfd, name, self.staging_fd, junk)
        if stat.S_ISDIR(st.st_mode):
            self.dirs.clear()
        fsops.remove_at(self.staging_fd, junk)

    def _retire(self, oid: bytes) -> None:
        """Set aside the object ``oid`` names, under an id of its own: ``oid`` now means another object.

        On a plain tree an inode number freed by a delete and reused by an object of another
        type comes back with the old id.  The old object goes to staging (swept at Finish
        unless claimed) and takes a fresh id with it, children included: a directory's
        children stay reachable through it, so one of them the sender places elsewhere is
        renamed out of it, and nothing below it is mistaken for a child of the new object.
        """

        self._set_aside_all(oid)
        fresh = os.urandom(16)
        while fresh in (ROOT_ID, STAGING_ID, ANY_HOLDER):  # pragma: no cover - astronomically unlikely
            fresh = os.urandom(16)
        self.index.reassign(oid, fresh)
        self.dirs.rekey(oid, fresh)
        if oid in self.dirty_dirs:
            self.dirty_dirs.discard(oid)
            self.dirty_dirs.add(fresh)

    def _set_aside_all(self, oid: bytes) -> None:
        obj = self.index.obj(oid)
        for p, n, _g in self.index.names_of(oid):
            if p == STAGING_ID:
                continue
            try:
                pfd = self.dirs.fd(p)
            except ItemFailed:
                self.index.drop_name(p, n)
                continue
            st = fsops.lstat_at(pfd, n)
            if st is not None and obj is not None and st.st_ino == obj.ino:
                aside = b"id-" + oid.hex().encode() + b"-" + str(next(self._tmp)).encode()
                fsops.rename_at(pfd, n, self.staging_fd, aside)
                self.index.move_name((p, n), (STAGING_ID, aside), oid)
            else:
                self._discard(pfd, p, n, st)

    def _discard(self, pfd: int, parent: bytes, name: bytes, st: os.stat_result | None) -> None:
        """Drop a name of ours whose object on disk is not the one the index records.

        It is an outdated copy (a hard link left on the old inode when new data was
        published under another name) or the index drifted.  Either way the name is ours,
        so what sits there goes too: dropping only the index row would leave a file that no
        later removal can find.  It goes through staging, so a directory is never walked
        in place.
        """

        self.index.drop_name(parent, name)
        if st is None:
            return
        junk = self._tmp_name()
        fsops.rename_at(pfd, name, self.staging_fd, junk)
        self.dirty_dirs.add(parent)
        if stat.S_ISDIR(st.st_mode):
            self.dirs.clear()
        fsops.remove_at(self.staging_fd, junk)

    # -- end of a session ----------------------------------------------------------

    def finish(self, msg: m.Finish) -> m.Finished:
        """The end of a batch; the caller has collected the writes in flight (`collect_writes`)."""

        assert not self.writes.busy
        deleted = 0
        try:
            if msg.mirror and msg.source_entries == 0 and not msg.allow_mass_delete:
                # counted only when it could refuse: without an index on gen, a count scans the names
                stale = self.index.count_stale(True)
                if stale:
                    raise SourceLooksUnmounted(
                        f"the source sent no entries but the secondary holds {stale}: refusing to delete them"
                    )
            deleted = self._sweep(msg.mirror)
            self._settle_dirs()
            self.index.commit()
            if msg.mirror:
                # the next full crawl of this session (a daemon's reconciliation) must tell
                # names it confirms from names confirmed by this one
                self.index.new_generation()
        except OSError as exc:
            raise self._fatal(exc) from None
        finally:
            self.dirs.release()
        return m.Finished(deleted)

    def _sweep(self, mirror: bool) -> int:
        """Remove what was set aside in staging and (mirror) names the source no longer has."""

        deleted = 0
        for parent, name, oid in self.index.stale_names(mirror):
            try:
                pfd = self.dirs.fd(parent)
                obj = self.index.obj(oid)
                st = fsops.lstat_at(pfd, name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    # ours by the index; the inode may be an older version of a hard link
                    os.unlink(name, dir_fd=pfd)
                    deleted += 1
                elif st is not None and obj is not None and st.st_ino == obj.ino:
                    fsops.remove_at(pfd, name)
                    self.dirs.clear()
                    deleted += 1
                if obj is not None and obj.kind is Kind.DIR:
                    self.index.drop_subtree(oid)
                    self.dirty_dirs.discard(oid)
                self.index.drop_name(parent, name)
                if parent != STAGING_ID:
                    self.dirty_dirs.add(parent)
            except (ItemFailed, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                print(f"georep agent: cannot remove a stale entry: {exc}", file=sys.stderr)
                self.index.drop_name(parent, name)
        return deleted

    def _settle_dirs(self) -> None:
        """Directory modes and mtimes, once nothing more is created inside them."""

        dirty, self.dirty_dirs = self.dirty_dirs, set()
        for oid in dirty:
            obj = self.index.obj(oid)
            if obj is None or obj.kind is not Kind.DIR:
                continue
            try:
                fd = self.dirs.fd(oid)
            except ItemFailed:
                continue
            os.fchmod(fd, obj.mode)
            os.utime(fd, ns=(obj.mtime_ns, obj.mtime_ns))

    def discard_incoming(self) -> None:
        """Remove the staging files of data still arriving (the session is ending)."""

        self.writes.close()  # what it wrote and did not publish is removed with a dead agent's
        for seq in list(self.receiving):
            with contextlib.suppress(OSError):
                self._drop_receiving(seq)

    def resume(self, msg: m.Resume) -> m.Resumed:
        """Whether the sender's record is still the truth: its token is the last one issued."""

        return m.Resumed(msg.token == self.claim.token != b"")

    def seal(self) -> m.Sealed:
        assert not self.writes.busy
        try:
            return m.Sealed(self.index.seal(self.claim, alive))
        except OSError as exc:
            raise self._fatal(exc) from None

    def close(self) -> None:
        self.discard_incoming()
        with contextlib.suppress(sqlite3.Error):  # a dead writer's row is dropped by the next session
            self.index.end_session()
        self.index.close()
        self.dirs.clear()
        self.dirs.release()
        for fd in (self.staging_fd, self.state_fd, self.root_fd):
            os.close(fd)

    # -- helpers ------------------------------------------------------------------

    def _check_name(self, parent: bytes, name: bytes) -> None:
        """A name that no filesystem could have produced is an attack or a bug: end the session.

        (A real source never lists ``..``, a ``/`` or a NUL in a name, so a sender that
        sends one is not a georep sender; a legitimate ``.georep`` at the top only fails
        its own item.)
        """

        why = name_problem(name)
        if why is not None:
            raise ProtocolError(f"refused name {name[:80]!r}: {why}; nothing was written")
        if parent == ROOT_ID and name == STATE_DIR:
            raise ItemFailed("refused name: '.georep' at the top is reserved for the agent's state")
        if parent == STAGING_ID:
            raise ItemFailed("refused parent: the staging area")

    def _tmp_name(self) -> bytes:
        return self._tmp_prefix + str(next(self._tmp)).encode()

    def _clean_staging_tmp(self) -> None:
        """Remove temporary files of agents that died (others may share this root)."""

        for name in os.listdir(self.staging_fd):
            if not name.startswith("tmp-"):
                continue
            pid = name.split("-")[1]
            if pid.isdigit() and pid != str(os.getpid()) and alive(int(pid)):
                continue
            fsops.remove_at(self.staging_fd, os.fsencode(name))


# -- the agent process --------------------------------------------------------------


def serve(root: Path, in_fd: int, out_fd: int, allow: Path | None = None) -> int:
    """Speak the protocol on ``in_fd``/``out_fd`` until Bye; returns the exit code.

    ``allow``: the directory a restricted agent (an SSH forced command) may write under.
    """

    applier: Applier | None = None
    stager: Stager | None = None
    hub: LaneHub | None = None  # lanes joining this session, once the sender asked (OpenLanes, DialLanes)
    scope: str | None = None  # from Hello; the session's role is known at its first message
    session = Session(Role.AGENT, privileged=os.geteuid() == 0)
    out = bytearray(session.initiate())
    _widen_pipe(in_fd)
    try:
        Applier.check_root(root, allow)
        while True:
            if applier is not None and applier.writes.busy and not (
                    _readable(in_fd) if hub is None else hub.wait(in_fd, 0) or hub.inbox):
                # nothing to read: the files written so far are answered (the worker writes on)
                written = applier.collect_some_writes()
                applier.index.commit_if_due()
                _answers(session, applier, written, out)
                if applier.writes.busy:  # more to collect before this may wait for the sender
                    _write_all(out_fd, out)
                    out.clear()
                    continue
            _write_all(out_fd, out)
            out.clear()
            if applier is not None and applier.index.in_transaction and not (
                    _readable(in_fd) if hub is None else hub.wait(in_fd, 0) or hub.inbox):
                applier.index.commit()  # idle: never wait for the sender holding the index's write lock
            if hub is not None and (hub.inbox or not hub.wait(in_fd)):
                assert applier is not None  # the hub is the main session's
                lane_results: list[m.Result] = []
                msgs, hub.inbox = hub.inbox, []
                for msg in msgs:
                    lane_results.extend(applier.handle(msg))
                lane_results.extend(applier.collect_writes(wait=False))
                if lane_results or applier.outbox:
                    applier.index.commit_if_due()
                    _answers(session, applier, lane_results, out)
                continue
            data = os.read(in_fd, 1 << 20)
            if not data:
                session.end_of_stream()
                return 0
            results: list[m.Result] = []
            staged: list[m.Staged] = []
            msgs = session.receive(data)
            if applier is not None:
                applier.look_ahead(msgs)
            for msg in msgs:
                if isinstance(msg, m.Hello):
                    out += session.answer_hello(msg)
                    if session.refused:  # (not the state: a Bye in Hello's flight closed it too)
                        _write_all(out_fd, out)
                        return 25
                    scope = msg.scope
                    continue
                assert scope is not None  # the session admits nothing else before Hello
                if isinstance(msg, m.Ping):
                    # at once, not after the entries read with it: the sender times this
                    out += session.send(m.Pong(msg.token))
                    _write_all(out_fd, out)
                    out.clear()
                    continue
                if applier is None and stager is None:
                    if isinstance(msg, m.Lane):
                        stager = Stager(root)
                        continue
                    applier = Applier(root, scope=scope)
                if stager is not None:
                    if isinstance(msg, m.Bye):
                        out += _lane_answers(session, results, staged)
                        _write_all(out_fd, out)
                        return 0
                    for answer in stager.handle(msg):
                        if isinstance(answer, m.Staged):
                            staged.append(answer)
                        else:
                            results.append(answer)
                    continue
                assert applier is not None
                if isinstance(msg, m.Finish) and hub is not None:
                    results.extend(_lane_data_first(hub, applier))
                if isinstance(msg, m.Bye | m.Finish | m.Seal | m.Resume | m.OpenLanes | m.DialLanes):
                    results.extend(applier.collect_writes(wait=True))  # they answer after every item
                if isinstance(msg, m.Bye):
                    _answers(session, applier, results, out)
                    applier.index.commit()
                    _write_all(out_fd, out)
                    return 0
                if isinstance(msg, m.Finish | m.Seal):
                    _answers(session, applier, results, out)  # every earlier item is answered first
                    results = []
                    out += session.send(applier.finish(msg) if isinstance(msg, m.Finish) else applier.seal())
                elif isinstance(msg, m.Resume):
                    out += session.send(applier.resume(msg))
                elif isinstance(msg, m.OpenLanes):
                    hub = hub or _new_hub(applier)
                    out += session.send(m.LaneSocket(hub.path, hub.token) if _listens(hub) else m.LaneSocket(b"", b""))
                elif isinstance(msg, m.DialLanes):
                    hub = hub or _new_hub(applier)
                    out += session.send(m.LanesDialled(*hub.dial(msg.path, msg.count, msg.token)))
                else:
                    results.extend(applier.handle(msg))
                    if applier.outbox:
                        # block sums go at once: the sender reads its file while this agent hashes the next
                        _answers(session, applier, [], out)
                        _write_all(out_fd, out)
                        out.clear()
            if applier is not None and applier.writes.busy:
                results.extend(applier.collect_writes(wait=False))
            if applier is not None and (results or applier.outbox):
                applier.index.commit_if_due()
                _answers(session, applier, results, out)
            elif stager is not None:
                out += _lane_answers(session, results, staged)
    except (sqlite3.OperationalError, GeorepError) as exc:
        # staging is cleaned before the sender hears of the error: it may end this process at once
        if applier is not None:
            applier.discard_incoming()
        if stager is not None:
            stager.discard_incoming()
        err = _index_error(exc) if isinstance(exc, sqlite3.OperationalError) else exc
        return serve_error(session, out, out_fd, err)
    finally:
        if hub is not None:
            hub.close()
        if applier is not None:
            applier.close()
        if stager is not None:
            stager.close()


#: How long Finish waits for a lane to join when it owes data and no lane has joined
#: (sshd connects a lane's socket before the sender may write to it: this is a margin).
LANE_CONNECT_GRACE = 5.0


def _lane_data_first(hub: LaneHub, applier: Applier) -> list[m.Result]:
    """Before Finish: the data of every item a joined lane carries; their results.

    The sender sends Finish once its lanes have written their files into their channels,
    not once each was answered (a round trip less at the end of every copy), so their data
    may still be on its way when Finish comes.  Only data this agent asked for (NEED) can be
    owed: what is still pending or being received.  It can come only from a lane that
    joined (or joins within `LANE_CONNECT_GRACE`): should none be left with data still owed,
    it will not come, and the session fails rather than waiting for ever.  Connections that
    never joined do not count, so a local process holding the socket open cannot hold the
    session either.
    """

    results: list[m.Result] = []
    deadline: float | None = None  # set while no lane is joined
    while applier.pending or applier.receiving:
        if not hub.inbox:
            if hub.joined:
                deadline = None
                hub.wait(None)
                continue
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + LANE_CONNECT_GRACE
            if now >= deadline:
                owed = len(applier.pending) + len(applier.receiving)
                raise ConnectionLost(f"the data lanes closed with the data of {owed} files not sent",
                                     hint="a lane's connection broke; run again: what arrived is kept")
            hub.wait(None, deadline - now)
            continue
        msgs, hub.inbox = hub.inbox, []
        for msg in msgs:
            results.extend(applier.handle(msg))
    return results


def _new_hub(applier: Applier) -> LaneHub:
    """Where the lanes of this session arrive, once the sender asked for lanes."""

    from georep.apply.lanehub import LaneHub  # only sessions that open lanes (see the imports)

    return LaneHub(applier.state_fd)


def _listens(hub: LaneHub) -> bool:
    """Whether lanes can join ``hub`` through its socket (False: the sender opens lane sessions)."""

    try:
        hub.listen()
    except OSError:
        return False
    return True


def _lane_answers(session: Session, results: list[m.Result], staged: list[m.Staged]) -> bytes:
    """A lane's answers: each Staged, then the failures in one Results."""

    out = b"".join(session.send(s) for s in staged)
    if results:
        out += session.send(m.Results(results))
    staged.clear()
    results.clear()
    return out


def _answers(session: Session, applier: Applier, results: list[m.Result], out: bytearray) -> None:
    """Queue the Results gathered so far and the BlockSums waiting in the outbox."""

    if results:
        out += session.send(m.Results(results))
    for msg in applier.outbox:
        out += session.send(msg)
    applier.outbox.clear()


def _index_error(exc: sqlite3.OperationalError) -> GeorepError:
    if "full" in str(exc):
        return DiskFull(f"the secondary is full: {exc}")
    return SecondaryNotWritable(f"the agent's index cannot be written: {exc}")


def serve_error(session: Session, out: bytearray, out_fd: int, exc: GeorepError) -> int:
    """Tell the sender why the session ends (as an ErrorMsg), then exit with the error's code."""

    if session.can_send:
        out += session.send(m.ErrorMsg(type(exc).__name__, exc.message, exc.hint_text))
    with contextlib.suppress(OSError):
        _write_all(out_fd, out)
    print(f"georep agent: {exc.message}", file=sys.stderr)
    return exc.exit_code


def _readable(fd: int) -> bool:
    """Whether a read of ``fd`` would return at once."""

    return bool(select.select([fd], [], [], 0)[0])


def _has_holes(fd: int, size: int) -> bool:
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:
        return False  # the filesystem cannot tell


#: Pipe buffer asked for on the agent's input: a 1 MiB chunk in one read, not sixteen.
PIPE_SIZE = 1 << 20


def _widen_pipe(fd: int) -> None:
    """Grow the input pipe's buffer (fewer reads and wake-ups per chunk); harmless if not a pipe."""

    with contextlib.suppress(OSError, AttributeError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _read_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` (fewer bytes only at end of file)."""

    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

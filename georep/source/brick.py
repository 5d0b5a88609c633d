"""A GlusterFS brick as a change source: its journals, its gfid handles, and their traps.

Theory of operation
-------------------
Journals.  GlusterFS appends records to ``.glusterfs/changelogs/CHANGELOG`` within
milliseconds of an operation, and every ``rollover-time`` seconds renames it to
``YYYY/MM/DD/CHANGELOG.<ts>`` (flat ``changelogs/CHANGELOG.<ts>`` before GlusterFS 9),
listing the new name in ``htime/HTIME.<ts>``.  `BrickJournal` follows the *live* file:
it keeps its descriptor across the rename, reads the old inode to its end once HTIME
lists it, then moves on.  A position is ``(HTIME file, journal number, byte offset)``:
journal number *n* is the *n*-th rollover listed in HTIME, and ``len(HTIME)`` is the live
journal.  Positions therefore survive rollovers and restarts.

What the journals cannot be trusted for (each yields a `Gap` with its time window, so
the daemon warns and runs a reconciliation crawl):

* an upper-case journal name listed twice in HTIME: ``rollover-time 1`` renamed a later
  journal over an earlier, full one (measured: 98 % of creates lost at 1,000/s).  Read
  live, we saw the earlier one before it was replaced; read from history, it is gone;
* a saved position whose HTIME or journal no longer exists (history cleaned up, or
  changelog turned off and on again: a new HTIME file starts);
* operations that are never journalled (fallocate, discard, zerofill) — not detectable
  here; the periodic reconciliation crawl covers them.

Handles.  ``.glusterfs/g0g1/g2g3/<gfid>`` is a hard link to every non-directory object
(read data and metadata through it, never through a FUSE mount) and, for a directory, a
symlink ``../../p0p1/p2p3/<pargfid>/<name>`` naming its parent and name.  Current names
of a file are its ``trusted.gfid2path.*`` xattrs.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from georep.errors import ChangelogFormatError, ChangelogsOff, NotABrick
from georep.model import ROOT_ID
from georep.source.changelog import ChangelogParser, Record
from georep.source.htime import HtimeTail

VOLUME_ID_XATTR = "trusted.glusterfs.volume-id"
HEADER_LEN = 51


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading a brick's journals stands: everything before it has been handled."""

    htime: str  # "HTIME.<ts>" file the numbering refers to
    index: int  # journal number in that HTIME (== its length: the live journal)
    offset: int  # bytes of that journal consumed (0: from the start)

    def as_json(self) -> dict[str, object]:
        return {"htime": self.htime, "index": self.index, "offset": self.offset}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Position:
        htime, index, offset = d["htime"], d["index"], d["offset"]
        if not isinstance(htime, str) or not isinstance(index, int) or not isinstance(offset, int):
            raise ValueError("bad position")
        return cls(htime, index, offset)


@dataclass(frozen=True, slots=True)
class Gap:
    """A window of time whose changes the journals do not hold: reconcile by crawling."""

    reason: str
    since: int | None  # unix seconds, when known
    until: int | None

    def describe(self) -> str:
        def t(x: int | None) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(x)) if x is not None else "?"

        return f"{self.reason} (changes between {t(self.since)} and {t(self.until)})"


class Brick:
    """A brick root: identity checks and gfid → object resolution through ``.glusterfs``."""

    def __init__(self, root: bytes | str) -> None:
        self.root = os.path.abspath(os.fsencode(root))
        try:
            self.volume_id = os.getxattr(self.root, VOLUME_ID_XATTR)
        except OSError:
            raise NotABrick(
                f"{os.fsdecode(self.root)} has no {VOLUME_ID_XATTR}: not a brick root, or the brick is not mounted"
            ) from None
        self.changelogs = os.path.join(self.root, b".glusterfs", b"changelogs")
        self.volume_name = _volume_name(uuid.UUID(bytes=self.volume_id)) if len(self.volume_id) == 16 else None

    def check_changelogs(self) -> None:
        htime_dir = os.path.join(self.changelogs, b"htime")
        have = os.path.isdir(htime_dir) and any(n.startswith(b"HTIME.") for n in os.listdir(htime_dir))
        on = _volume_option(self.volume_name, "changelog.changelog") if self.volume_name else None
        vol = self.volume_name or "VOLUME"
        if not have or on == "off":
            raise ChangelogsOff(
                f"changelogs are off on brick {os.fsdecode(self.root)}",
                hint=f"enable them: gluster volume set {vol} changelog.changelog on",
            )

    # -- gfid handles ---------------------------------------------------------------

    def handle(self, gfid: bytes) -> bytes:
        if gfid == ROOT_ID:
            return self.root
        h = uuid.UUID(bytes=gfid).hex
        text = str(uuid.UUID(bytes=gfid)).encode()
        return os.path.join(self.root, b".glusterfs", h[0:2].encode(), h[2:4].encode(), text)

    def lstat(self, gfid: bytes) -> os.stat_result | None:
        """The object's stat (a directory's through its path), or None when it is gone."""

        try:
            st = os.lstat(self.handle(gfid))
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode) and gfid != ROOT_ID:
            path = self.dir_path(gfid)
            if path is not None:
                try:
                    dst = os.lstat(path)
                except FileNotFoundError:
                    return None
                if stat.S_ISDIR(dst.st_mode):
                    return dst
        return st

    def dir_location(self, gfid: bytes) -> tuple[bytes, bytes] | None:
        """(parent gfid, name) of a directory, read from its handle symlink."""

        try:
            target = os.readlink(self.handle(gfid))
        except OSError:
            return None
        parts = target.split(b"/")
        # ../../pp/pp/<pargfid>/<name>
        if len(parts) != 6 or parts[0] != b".." or parts[1] != b"..":
            return None
        try:
            parent = uuid.UUID(parts[4].decode("ascii")).bytes
        except ValueError:
            return None
        return parent, parts[5]

    def dir_path(self, gfid: bytes) -> bytes | None:
        """The directory's path on the brick, by climbing handle symlinks to the root."""

        names: list[bytes] = []
        cur = gfid
        for _ in range(4096):
            if cur == ROOT_ID:
                return os.path.join(self.root, *reversed(names)) if names else self.root
            loc = self.dir_location(cur)
            if loc is None:
                return None
            cur, name = loc
            names.append(name)
        return None

    def file_names(self, gfid: bytes) -> list[tuple[bytes, bytes]]:
        """(parent gfid, name) of every hard link of a non-directory, from trusted.gfid2path.*."""

        out = []
        try:
            keys = os.listxattr(self.handle(gfid), follow_symlinks=False)
        except OSError:
            return []
        for k in keys:
            if not k.startswith("trusted.gfid2path."):
                continue
            try:
                v = os.getxattr(self.handle(gfid), k, follow_symlinks=False)
            except OSError:
                continue
            pg, sep, name = v.partition(b"/")
            if not sep or not name:
                continue
            try:
                out.append((uuid.UUID(pg.decode("ascii")).bytes, name))
            except ValueError:
                continue
        return sorted(out)

    def names(self, gfid: bytes, st: os.stat_result) -> list[tuple[bytes, bytes]]:
        """The object's names *now*, each checked to really name this inode.

        The records alone are not enough: an unlinked file's handle (and its gfid2path
        xattrs) can outlive its last name for a while, and a directory handle may point
        at a name that was reused.  Only names whose entry in the parent is this inode
        count.
        """

        if stat.S_ISDIR(st.st_mode):
            loc = self.dir_location(gfid)
            candidates = [loc] if loc is not None else []
        else:
            candidates = self.file_names(gfid)
        out = []
        for parent, name in candidates:
            ppath = self.dir_path(parent)
            if ppath is None:
                continue
            try:
                if os.lstat(os.path.join(ppath, name)).st_ino == st.st_ino:
                    out.append((parent, name))
            except OSError:
                continue
        return out

    def object_path(self, gfid: bytes, st: os.stat_result) -> bytes:
        """Where to read the object: a directory's real path, else its handle (a hard link)."""

        if stat.S_ISDIR(st.st_mode):
            return self.dir_path(gfid) or self.handle(gfid)
        return self.handle(gfid)


def _volume_name(volume_id: uuid.UUID) -> str | None:
    base = Path("/var/lib/glusterd/vols")
    try:
        for info in base.glob("*/info"):
            for line in info.read_text(errors="replace").splitlines():
                if line == f"volume-id={volume_id}":
                    return info.parent.name
    except OSError:
        return None
    return None


def _volume_option(volume: str | None, key: str) -> str | None:
    if volume is None:
        return None
    try:
        for line in Path(f"/var/lib/glusterd/vols/{volume}/info").read_text(errors="replace").splitlines():
            if line.startswith(key + "="):
                return line.split("=", 1)[1].strip()
    except OSError:
        return None
    return None


# -- journals ---------------------------------------------------------------------------


class BrickJournal:
    """Follows one brick's journals from a `Position`: history through HTIME, then live."""

    READ = 1 << 20

    def __init__(self, brick: Brick, position: Position | None) -> None:
        self.brick = brick
        self.htime_dir = os.path.join(brick.changelogs, b"htime")
        self.gaps: list[Gap] = []
        htime = self._latest_htime()
        if htime is None:
            raise ChangelogsOff(f"no HTIME index under {os.fsdecode(self.htime_dir)}")
        if position is not None and position.htime != htime:
            self._gap(f"changelog was turned off and on again (new index {htime}, saved {position.htime})",
                      self._ts_of(position.htime), self._ts_of(htime))
            position = Position(htime, 0, 0)
        self._htime = HtimeTail(os.path.join(self.htime_dir, htime.encode()),
                                None if position is None else position.index)
        self._htime.refresh()
        if position is None:  # from the live journal on
            position = Position(htime, self._htime.listed, 0)
        self._htime.passed(position.index)
        self.position = position
        self._fd: int | None = None
        self._fd_index = -1
        self._fd_ino = -1
        self._fed = 0  # file offset of the next byte to feed the current journal's parser
        #: journals found overwritten by a later rollover of the same name (read live or lost):
        #: repeats of a name in HTIME, counted as the reader passes them
        self.overwritten = 0
        self._counted_to = position.index  # HTIME entries before this one were looked at for repeats
        self._parser: ChangelogParser | None = None

    # -- HTIME ------------------------------------------------------------------------

    def _latest_htime(self) -> str | None:
        try:
            names = [n for n in os.listdir(self.htime_dir) if n.startswith(b"HTIME.")]
        except OSError:
            return None
        if not names:
            return None
        return max(names, key=lambda n: int(n[6:]) if n[6:].isdigit() else -1).decode()

    @staticmethod
    def _ts_of(htime: str) -> int | None:
        tail = htime.partition(".")[2]
        return int(tail) if tail.isdigit() else None

    def _gap(self, reason: str, since: int | None, until: int | None) -> None:
        self.gaps.append(Gap(reason, since, until))

    def take_gaps(self) -> list[Gap]:
        gaps, self.gaps = self.gaps, []
        return gaps

    def _journal_path(self, base: bytes, ts: int) -> bytes:
        """Where a rolled-over journal lives on this brick (by its name: HTIME holds the brick's old path)."""

        dated = os.path.join(self.brick.changelogs, time.strftime("%Y/%m/%d", time.gmtime(ts)).encode(), base)
        if os.path.exists(dated):
            return dated
        flat = os.path.join(self.brick.changelogs, base)
        return flat if os.path.exists(flat) else dated

    # -- reading ----------------------------------------------------------------------

    def _new_parser(self, name: str, fd: int, offset: int) -> ChangelogParser:
        parser = ChangelogParser(name)
        if offset > 0:
            head = os.pread(fd, HEADER_LEN, 0)
            parser.feed(head)
            parser.resume_at(offset)
        return parser

    def _drain(self, fd: int, parser: ChangelogParser, start: int) -> Iterator[tuple[Record, int]]:
        """Records from the bytes at ``start`` (the next byte the parser has not seen) to the end.

        Each record comes with the offset just past it.  ``self._fed`` tracks how far the
        parser has been fed, which is ahead of the position while a record is incomplete.
        """

        pos = start
        while True:
            data = os.pread(fd, self.READ, pos)
            if not data:
                return
            pos += len(data)
            self._fed = pos
            records = parser.feed(data)
            for i, rec in enumerate(records):
                end = records[i + 1].offset if i + 1 < len(records) else parser.consumed
                yield rec, end

    def _close_live(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._parser = None

    def poll(self) -> Iterator[tuple[Record, Position]]:
        """Every record available now, each with the position just past it."""

        htime = self._htime
        while True:
            htime.refresh()
            pos = self.position
            htime.passed(pos.index)
            if pos.index < htime.listed:
                entry = htime.entry(pos.index)
                if entry.empty:
                    self._close_live()
                    self.position = Position(pos.htime, pos.index + 1, 0)
                    continue
                if pos.index >= self._counted_to:
                    self._counted_to = pos.index + 1
                    if entry.repeat:
                        self.overwritten += 1  # GlusterFS's rollover bug struck (read live, or lost)
                later = htime.listed_again(pos.index)
                path = self._journal_path(entry.name, entry.ts)
                since = htime.entry(pos.index - 1).ts if pos.index > 0 else None
                fd, parser = self._fd, self._parser
                # the live journal we hold *is* journal number pos.index, whatever its name
                # holds now: a later rollover may have renamed another journal over it
                held = fd is not None and self._fd_index == pos.index
                if held and fd is not None:
                    pino = _ino(path)
                    if (pino != self._fd_ino and os.fstat(fd).st_nlink > 0) or (later and pino == self._fd_ino):
                        # The "live" journal we opened was already a later one: GlusterFS had
                        # renamed journal pos.index away but not yet listed it in HTIME.  What
                        # that journal held is not certain to be read: report it as a gap (a
                        # crawl repairs it) and read on from history; records seen twice are
                        # harmless, every change is applied as the brick has it now.
                        self._gap(
                            f"journal {os.fsdecode(entry.name)} rolled over while it was "
                            "being opened (GlusterFS rolls over several times a second at rollover-time 1)",
                            since,
                            entry.ts,
                        )
                        self._close_live()
                        self.position = Position(pos.htime, pos.index + 1, 0)
                        continue
                if later and not held:
                    self._gap(
                        f"journal {os.fsdecode(entry.name)} was overwritten by a later "
                        "rollover of the same name (changelog.rollover-time too low; set it to 2 or more)",
                        since,
                        entry.ts,
                    )
                    self._close_live()
                    self.position = Position(pos.htime, pos.index + 1, 0)
                    continue
                if not held:
                    self._close_live()
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        self._gap(f"journal {os.fsdecode(path)} listed in HTIME is missing", since, entry.ts)
                        self.position = Position(pos.htime, pos.index + 1, 0)
                        continue
                    parser = self._new_parser(os.fsdecode(path), fd, pos.offset)
                    self._fed = pos.offset
                assert fd is not None and parser is not None
                for rec, end in self._drain(fd, parser, self._fed):
                    self.position = Position(pos.htime, pos.index, end)
                    yield rec, self.position
                parser.close()
                os.close(fd)
                self._fd = None
                self._parser = None
                self.position = Position(pos.htime, pos.index + 1, 0)
                continue
            # the live journal
            if self._fd is None:
                live = os.path.join(self.brick.changelogs, b"CHANGELOG")
                try:
                    fd = os.open(live, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return
                htime.refresh()
                if htime.listed != pos.index:
                    os.close(fd)  # a rollover happened meanwhile: take it from history first
                    continue
                self._fd, self._fd_index, self._fd_ino = fd, pos.index, os.fstat(fd).st_ino
                if os.fstat(fd).st_size < pos.offset:
                    # the saved offset belongs to an older live journal that is gone
                    self._gap("saved position is beyond the live journal (journal replaced)", None, None)
                    pos = self.position = Position(pos.htime, pos.index, 0)
                self._parser = self._new_parser("CHANGELOG", fd, pos.offset)
                self._fed = pos.offset
            assert self._fd is not None and self._parser is not None
            for rec, end in self._drain(self._fd, self._parser, self._fed):
                self.position = Position(pos.htime, pos.index, end)
                yield rec, self.position
            return

    def close(self) -> None:
        self._close_live()


def _ino(path: bytes) -> int:
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return -1
        raise


__all__ = ["Brick", "BrickJournal", "ChangelogFormatError", "ChangelogsOff", "Gap", "NotABrick", "Position"]

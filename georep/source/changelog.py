"""Incremental, pure parser of GlusterFS changelog journals (and of HTIME indexes).

Theory of operation
-------------------
A brick appends one record per operation to ``.glusterfs/changelogs/CHANGELOG`` and
renames the file at every rollover.  We read the live file while GlusterFS writes it, so
a read may end anywhere: inside the header, inside a record, inside a field.  The parser
is therefore sans-IO (h11 style): ``feed(bytes)`` returns the records completed by those
bytes and keeps the incomplete tail; ``close()`` says whether the file ended cleanly.  It
never reads a file, a clock or the environment.

Format (GlusterFS 10.3, ``changelog-encoders.c`` and libgfchangelog's reader):

* a header line ``GlusterFS Changelog | version: v1.N | encoding : 2\\n``; we accept
  v1.1 and v1.2 in ascii encoding (2), the only ones GlusterFS has ever written by
  default.  Anything else is refused rather than guessed at.
* then records, each ``TYPE`` + 36-char gfid, and every field (the first included) ends
  with NUL.  Nothing is escaped: names are raw bytes that may hold newlines, tabs,
  spaces or non-UTF-8 bytes, so the only separator is NUL and names are never decoded.
* the number and meaning of the fields depend on TYPE and fop (see `_parse_entry`).
  One irregularity comes from ``del_entry_fn``: in v1.2 an UNLINK/RMDIR carries a path
  field; when that path is empty the encoder writes an *extra* NUL, so the record ends
  ``pargfid/name\\0\\0\\0`` (libgfchangelog skips that byte the same way).  With a path
  it ends ``pargfid/name\\0path\\0``.  v1.1 has no path field at all.

Strictness: every deviation (unknown type or fop, a malformed gfid or number, a name
that is empty, ``.``, ``..``, longer than NAME_MAX or containing ``/``, a field longer
than any real one, a partial record at ``close()``) raises `ChangelogFormatError`
naming the journal and the byte offset of the offending field.  No other exception
type escapes, and nothing is skipped silently: a journal we misread would replicate
the wrong tree, so we stop instead.  After an error the parser stays failed.

Speed: this is the hot path of the brick source.  Complete fields are cut out of the
buffer with one ``bytes.split(b"\\0")`` per feed, gfid texts are converted through a
small cache (parent gfids repeat a lot), and records are NamedTuples (cheap to build).
"""

from __future__ import annotations

import binascii
import enum
import re
from typing import NamedTuple

from georep.errors import ChangelogFormatError

# -- format constants ---------------------------------------------------------------

_HEADERS: dict[bytes, tuple[int, int]] = {
    b"GlusterFS Changelog | version: v1.1 | encoding : 2\n": (1, 1),
    b"GlusterFS Changelog | version: v1.2 | encoding : 2\n": (1, 2),
}
_HEADER_LEN = 51  # both accepted headers have this length
assert all(len(h) == _HEADER_LEN for h in _HEADERS)

#: Longest name a Linux filesystem accepts (NAME_MAX).
NAME_MAX = 255
#: Longest path GlusterFS records for a deleted entry (PATH_MAX, NUL excluded).
PATH_MAX = 4095
#: No field of a real journal is longer than this; a longer one is garbage, and the
#: bound keeps a parser fed garbage without NUL from buffering without limit.
_MAX_FIELD = PATH_MAX + 1

_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: gfids that no real object has: the null gfid, and all-ones which georep reserves for
#: its staging directory (``georep.batch.changes.STAGING``).
_RESERVED_GFIDS = frozenset({bytes(16), b"\xff" * 16})


class Fop(enum.IntEnum):
    """GlusterFS fop numbers (``glusterfs_fop_t``) that appear in journals."""

    MKNOD = 3
    MKDIR = 4
    UNLINK = 5
    RMDIR = 6
    SYMLINK = 7
    RENAME = 8
    LINK = 9
    SETXATTR = 17
    REMOVEXATTR = 19
    CREATE = 23
    XATTROP = 33
    FXATTROP = 34
    FSETXATTR = 36
    SETATTR = 38
    FSETATTR = 39
    FREMOVEXATTR = 45


_ENTRY_FOPS: dict[bytes, Fop] = {
    str(int(f)).encode(): f
    for f in (Fop.MKNOD, Fop.MKDIR, Fop.UNLINK, Fop.RMDIR, Fop.SYMLINK, Fop.RENAME, Fop.LINK, Fop.CREATE)
}
_META_FOPS: dict[bytes, Fop] = {
    str(int(f)).encode(): f
    for f in (
        Fop.SETATTR,
        Fop.FSETATTR,
        Fop.SETXATTR,
        Fop.FSETXATTR,
        Fop.REMOVEXATTR,
        Fop.FREMOVEXATTR,
        Fop.XATTROP,
        Fop.FXATTROP,
    )
}

# -- records --------------------------------------------------------------------------


class DataRecord(NamedTuple):
    """``D``: the object's data changed (at most one per object per journal file)."""

    offset: int  # byte offset of the record in the journal file
    gfid: bytes  # 16 bytes


class MetaRecord(NamedTuple):
    """``M``: the object's metadata changed (at most one per object, fop and journal)."""

    offset: int
    gfid: bytes
    fop: Fop


class EntryRecord(NamedTuple):
    """``E``: a namespace operation.  Fields that a fop does not carry are None.

    mode/uid/gid are what the client asked for (CREATE, MKDIR, MKNOD), not what the
    object ended up with: real metadata is read from the brick at sync time.
    """

    offset: int
    gfid: bytes  # the object the operation is about (for LINK: the existing inode)
    fop: Fop
    pargfid: bytes  # parent of ``name``; for RENAME the old parent
    name: bytes  # for RENAME the old name
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    new_pargfid: bytes | None = None  # RENAME only
    new_name: bytes | None = None  # RENAME only
    path: bytes | None = None  # UNLINK/RMDIR in v1.2 with capture-del-path; None if empty


Record = DataRecord | MetaRecord | EntryRecord


# -- the parser -----------------------------------------------------------------------


class _Incomplete(Exception):
    """Internal: the buffered fields end inside a record; wait for more bytes."""


class ChangelogParser:
    """Bytes of one journal in, `Record`s out; any chunking of the input gives the same records."""

    def __init__(self, name: str) -> None:
        self.name = name  # used in error messages only
        self.version: tuple[int, int] | None = None
        self._buf = b""  # bytes not yet turned into records
        self._base = 0  # file offset of _buf[0]
        self._error: ChangelogFormatError | None = None
        self._closed = False
        self._gfids: dict[bytes, bytes] = {}  # gfid text → 16 bytes (parents repeat a lot)
        self._nums: dict[bytes, int] = {}  # validated numbers (modes and ids repeat too)

    @property
    def consumed(self) -> int:
        """File offset just past the last complete record (a safe position to resume from)."""

        return self._base

    def _fail(self, offset: int, why: str) -> ChangelogFormatError:
        self._error = ChangelogFormatError(f"{self.name}: byte {offset}: {why}")
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        """Parse ``data`` appended to what came before; return the records it completed."""

        if self._error is not None:
            raise self._error
        if self._closed:
            raise self._fail(self._base + len(self._buf), "data fed after close()")
        self._buf += bytes(data)
        if self.version is None and not self._header():
            return []
        return self._records()

    def close(self) -> None:
        """The journal ended: refuse a missing header or a partial trailing record."""

        if self._error is not None:
            raise self._error
        self._closed = True
        if self.version is None:
            raise self._fail(self._base + len(self._buf), "journal ends inside the header")
        if self._buf:
            raise self._fail(self._base, "journal ends inside a record")

    def resume_at(self, offset: int) -> None:
        """Continue a journal at ``offset`` (a saved `consumed`), after its header was fed.

        A reader that restarts mid-journal feeds the header (for the version) and then
        the bytes from ``offset`` on; record offsets stay file offsets.
        """

        if self.version is None or self._buf:
            raise self._fail(self._base, "resume_at() needs exactly the header fed before it")
        if offset < self._base:
            raise self._fail(offset, "cannot resume inside the header")
        self._base = offset

    # -- header ---------------------------------------------------------------------

    def _header(self) -> bool:
        buf = self._buf
        if len(buf) < _HEADER_LEN:
            if not any(h.startswith(buf) for h in _HEADERS):
                raise self._fail(self._mismatch(buf), f"not a supported changelog header: {buf[:60]!r}")
            return False
        head = buf[:_HEADER_LEN]
        version = _HEADERS.get(head)
        if version is None:
            raise self._fail(self._mismatch(head), f"not a supported changelog header: {head!r}")
        self.version = version
        self._buf = buf[_HEADER_LEN:]
        self._base = _HEADER_LEN
        return True

    @staticmethod
    def _mismatch(got: bytes) -> int:
        """Offset of the first byte where ``got`` leaves every accepted header."""

        best = 0
        for h in _HEADERS:
            n = 0
            for a, b in zip(got, h, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    # -- records --------------------------------------------------------------------

    def _gfid(self, text: bytes, offset: int) -> bytes:
        g = self._gfids.get(text)
        if g is not None:
            return g
        if len(text) != 36 or _UUID_RE.fullmatch(text) is None:
            raise self._fail(offset, f"malformed gfid {text[:40]!r}")
        g = binascii.unhexlify(text.replace(b"-", b""))
        if g in _RESERVED_GFIDS:
            raise self._fail(offset, f"reserved gfid {text!r}")
        if len(self._gfids) > 65536:
            self._gfids.clear()
        self._gfids[text] = g
        return g

    def _records(self) -> list[Record]:
        buf = self._buf
        last = buf.rfind(b"\0")
        out: list[Record] = []
        if last < 0:
            self._check_tail(buf, self._base, at_record_start=True)
            return out
        fields = buf[:last].split(b"\0")
        n = len(fields)
        i = 0
        off = self._base  # file offset of fields[i]
        rec_i, rec_off = 0, off
        v12 = self.version == (1, 2)
        gfid_of = self._gfid
        gcache = self._gfids
        try:
            while i < n:
                rec_i, rec_off = i, off
                tok = fields[i]
                if len(tok) != 37:
                    raise self._fail(off, f"bad record start {tok[:40]!r}")
                kind = tok[0]
                text = tok[1:]
                gfid = gcache.get(text) or gfid_of(text, off + 1)
                off += 38
                i += 1
                if kind == 68:  # D
                    out.append(DataRecord(rec_off, gfid))
                    continue
                if kind == 77:  # M
                    if i >= n:
                        raise _Incomplete
                    tok = fields[i]
                    fop = _META_FOPS.get(tok)
                    if fop is None:
                        raise self._fail(off, f"unknown metadata fop {tok[:20]!r}")
                    off += len(tok) + 1
                    i += 1
                    out.append(MetaRecord(rec_off, gfid, fop))
                    continue
                if kind != 69:  # E
                    raise self._fail(rec_off, f"unknown record type {bytes([kind])!r}")
                i, off = self._parse_entry(fields, i, off, rec_off, gfid, v12, out)
        except _Incomplete:
            i, off = rec_i, rec_off
        # fields[i:] (if any) plus the bytes after the last NUL are an incomplete record
        tail_start = off - self._base
        tail = buf[last + 1 :]
        self._check_tail(tail, last + 1 + self._base, at_record_start=(i >= n))
        self._buf = buf[tail_start:]
        self._base = off
        return out

    def _check_tail(self, tail: bytes, offset: int, *, at_record_start: bool) -> None:
        """Refuse an incomplete field that can already be seen to be garbage."""

        if not tail:
            return
        if at_record_start:
            if tail[0] not in b"DME":
                raise self._fail(offset, f"unknown record type {tail[:1]!r}")
            if len(tail) > 37:
                raise self._fail(offset, f"bad record start {tail[:40]!r}")
        elif len(tail) > _MAX_FIELD:
            raise self._fail(offset, "field longer than any journal field")

    def _number(self, tok: bytes, offset: int) -> int:
        value = self._nums.get(tok)
        if value is not None:
            return value
        if not tok.isdigit() or len(tok) > 10 or (tok[0] == 48 and len(tok) > 1):
            raise self._fail(offset, f"bad number {tok[:20]!r}")
        value = int(tok)
        if value > 0xFFFFFFFF:
            raise self._fail(offset, f"number out of range {tok!r}")
        if len(self._nums) < 4096:
            self._nums[tok] = value
        return value

    def _entry(self, tok: bytes, offset: int) -> tuple[bytes, bytes]:
        """``pargfid/name`` → (16-byte pargfid, name)."""

        if len(tok) < 38 or tok[36] != 47:
            raise self._fail(offset, f"bad pargfid/name field {tok[:60]!r}")
        name = tok[37:]
        if len(name) > NAME_MAX:
            raise self._fail(offset + 37, "name longer than NAME_MAX")
        if b"/" in name or name == b"." or name == b"..":
            raise self._fail(offset + 37, f"invalid name {name[:60]!r}")
        text = tok[:36]
        return self._gfids.get(text) or self._gfid(text, offset), name

    def _parse_entry(
        self,
        fields: list[bytes],
        i: int,
        off: int,
        rec_off: int,
        gfid: bytes,
        v12: bool,
        out: list[Record],
    ) -> tuple[int, int]:
        """Parse the fields of an ``E`` record after its gfid; return the next (index, offset).

        Field layout by fop (every field NUL-terminated):
        CREATE/MKDIR/MKNOD: fop, mode, uid, gid, pargfid/name;  SYMLINK, LINK: fop,
        pargfid/name;  RENAME: fop, old pargfid/name, new pargfid/name;  UNLINK/RMDIR:
        fop, pargfid/name, and in v1.2 a path (or an empty field plus a filler NUL).
        """

        n = len(fields)
        if i >= n:
            raise _Incomplete
        tok = fields[i]
        fop = _ENTRY_FOPS.get(tok)
        if fop is None:
            raise self._fail(off, f"unknown entry fop {tok[:20]!r}")
        off += len(tok) + 1
        i += 1
        if fop is Fop.CREATE or fop is Fop.MKDIR or fop is Fop.MKNOD:
            if i + 4 > n:
                # validate what is there, so garbage is refused as early as possible
                for j in range(i, n):
                    if j < i + 3:
                        self._number(fields[j], off)
                    else:
                        self._entry(fields[j], off)
                    off += len(fields[j]) + 1
                raise _Incomplete
            mode = self._number(fields[i], off)
            off += len(fields[i]) + 1
            uid = self._number(fields[i + 1], off)
            off += len(fields[i + 1]) + 1
            gid = self._number(fields[i + 2], off)
            off += len(fields[i + 2]) + 1
            tok = fields[i + 3]
            pg, name = self._entry(tok, off)
            off += len(tok) + 1
            out.append(EntryRecord(rec_off, gfid, fop, pg, name, mode, uid, gid))
            return i + 4, off
        if i >= n:
            raise _Incomplete
        tok = fields[i]
        pg, name = self._entry(tok, off)
        off += len(tok) + 1
        i += 1
        if fop is Fop.SYMLINK or fop is Fop.LINK:
            out.append(EntryRecord(rec_off, gfid, fop, pg, name))
            return i, off
        if fop is Fop.RENAME:
            if i >= n:
                raise _Incomplete
            tok = fields[i]
            npg, nname = self._entry(tok, off)
            off += len(tok) + 1
            out.append(EntryRecord(rec_off, gfid, fop, pg, name, new_pargfid=npg, new_name=nname))
            return i + 1, off
        # UNLINK, RMDIR
        if not v12:
            out.append(EntryRecord(rec_off, gfid, fop, pg, name))
            return i, off
        if i >= n:
            raise _Incomplete
        path = fields[i]
        if len(path) > PATH_MAX:
            raise self._fail(off, "deleted path longer than PATH_MAX")
        off += len(path) + 1
        i += 1
        if not path:
            # del_entry_fn writes one more NUL after an empty path
            if i >= n:
                raise _Incomplete
            if fields[i]:
                raise self._fail(off, "missing filler NUL after an empty deleted path")
            off += 1
            i += 1
        out.append(EntryRecord(rec_off, gfid, fop, pg, name, path=path or None))
        return i, off


def parse_journal(name: str, data: bytes) -> list[Record]:
    """Every record of a complete journal file (convenience for tests and tools)."""

    p = ChangelogParser(name)
    records = p.feed(data)
    p.close()
    return records


# -- HTIME -----------------------------------------------------------------------------

_HTIME_NAME_RE = re.compile(rb"(CHANGELOG|changelog)\.([0-9]{1,12})")


class HtimeEntry(NamedTuple):
    """One rollover listed in an HTIME file."""

    path: bytes  # absolute path of the rolled-over journal, as GlusterFS wrote it
    ts: int  # the rollover's unix time (second granularity)
    empty: bool  # lower-case ``changelog.<ts>``: the journal was empty and never kept


class HtimeIndex(NamedTuple):
    """The content of an HTIME file, and the fingerprint of lost journals in it."""

    entries: list[HtimeEntry]
    #: upper-case journal paths listed more than once: each repeat means an earlier,
    #: full journal of that name was replaced by rename() and its records are lost
    #: (the GlusterFS rollover-time bug; see docs/reference/gluster-brick.md).
    duplicates: list[bytes]
    #: bytes after the last NUL: a path GlusterFS is still writing; read again later.
    partial: bytes


def parse_htime(name: str, data: bytes, start: int = 0) -> HtimeIndex:
    """Parse the content of ``htime/HTIME.<ts>`` (NUL-terminated absolute paths).

    Pure: the caller reads the file.  A path that is not absolute or whose basename is
    not ``CHANGELOG.<ts>``/``changelog.<ts>`` raises `ChangelogFormatError` with its
    offset (``start``: where ``data`` starts in the file, for a piece read as it grew); the
    incomplete last path of a file being appended to is returned as ``partial``, not dropped.
    """

    last = data.rfind(b"\0")
    body, partial = (data[:last], data[last + 1 :]) if last >= 0 else (b"", data)
    entries: list[HtimeEntry] = []
    seen: set[bytes] = set()
    dups: list[bytes] = []
    dup_set: set[bytes] = set()
    off = start
    if last >= 0:
        for path in body.split(b"\0"):
            base = path.rpartition(b"/")[2]
            m = _HTIME_NAME_RE.fullmatch(base)
            if not path.startswith(b"/") or m is None:
                raise ChangelogFormatError(f"{name}: byte {off}: not a changelog path: {path[:100]!r}")
            empty = m.group(1) == b"changelog"
            entries.append(HtimeEntry(path, int(m.group(2)), empty))
            if not empty:
                if path in seen:
                    if path not in dup_set:
                        dup_set.add(path)
                        dups.append(path)
                else:
                    seen.add(path)
            off += len(path) + 1
    if len(partial) > _MAX_FIELD:
        raise ChangelogFormatError(f"{name}: byte {off}: path longer than PATH_MAX")
    return HtimeIndex(entries, dups, partial)

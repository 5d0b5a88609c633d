"""Value types shared by every stage: object ids, kinds, metadata, entries and problems.

An object (file, directory, symlink, special file) is known by a 16-byte id that never
changes while the object lives: the gfid on a GlusterFS brick, or an id kept in
source-side state for a plain tree (`georep.source.identity`).  Names are raw bytes,
never decoded: a name may hold newlines, trailing whitespace or non-UTF-8 bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # typing has it from Python 3.12 on; it only informs the type checker
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_kwargs: Any) -> Any:
        return lambda decorated: decorated

#: Id of the replicated root directory on both sides (GlusterFS's root gfid).
ROOT_ID = bytes(15) + b"\x01"

#: Longest name accepted anywhere (Linux NAME_MAX).
NAME_MAX = 255


_R = TypeVar("_R")


@dataclass_transform(frozen_default=True, eq_default=True)
def record(cls: type[_R]) -> type[_R]:
    """A value type made per entry or per message: immutable to the type checker, cheap to make.

    ``@dataclass(frozen=True)`` sets each field through ``object.__setattr__`` on every
    construction: a 13-field message took 2.9 µs against 0.36 µs for a plain slots
    dataclass, and the sender and agent make several such values per file (about a tenth
    of the sender's time on a first copy of small files).  ``mypy --strict`` still refuses
    any assignment to a field (``frozen_default``), equality and hashing are a frozen
    dataclass's, so the only thing given up is a runtime error for code that bypasses
    the type checker.

    Only ``__init__`` is generated per class; equality, hashing and repr are the same three
    functions for every record, over the fields' values in order (what a dataclass's
    generated ones compute).  Why: each generated method is source text compiled at
    import, and the message set alone is 32 records: 17 ms of every start of the agent,
    before its first answer, against 8 ms this way.
    """

    made = dataclass(slots=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    the_class: Any = made  # (methods set on a class: beyond what the type checker follows)
    for name, method in (("__eq__", _record_eq), ("__hash__", _record_hash), ("__repr__", _record_repr)):
        if name not in cls.__dict__:  # one the class defines stays, as with a dataclass
            setattr(the_class, name, method)
    the_class._record_key = staticmethod(_values_of(tuple(f.name for f in fields if f.compare)))
    the_class._record_shown = tuple(f.name for f in fields if f.repr)
    return made


def _values_of(names: tuple[str, ...]) -> Callable[[object], tuple[object, ...]]:
    """A function giving an object's values of ``names`` as a tuple (what a record compares and hashes)."""

    if len(names) >= 2:
        return operator.attrgetter(*names)  # a tuple already
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _record_eq(self: Any, other: Any) -> bool:
    if other.__class__ is self.__class__:
        return bool(self._record_key(self) == self._record_key(other))
    result: bool = NotImplemented  # (what a dataclass answers for another class: Python asks `other`)
    return result


def _record_hash(self: Any) -> int:
    return hash(self._record_key(self))


def _record_repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._record_shown)
    return f"{self.__class__.__qualname__}({shown})"


class Kind(enum.IntEnum):
    """Object type, as carried on the wire."""

    FILE = 1
    DIR = 2
    SYMLINK = 3
    FIFO = 4
    CHR = 5
    BLK = 6
    SOCK = 7

    @classmethod
    def from_mode(cls, mode: int) -> Kind | None:
        """The kind for an ``st_mode``; None for a type we do not replicate."""

        return KIND_BY_FMT.get(stat.S_IFMT(mode))

    @property
    def fmt(self) -> int:
        return _FMT_BY_KIND[self]


#: File type bits (``stat.S_IFMT``) to kind; a type missing here is not replicated.
KIND_BY_FMT = {
    stat.S_IFREG: Kind.FILE,
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFCHR: Kind.CHR,
    stat.S_IFBLK: Kind.BLK,
    stat.S_IFSOCK: Kind.SOCK,
}
_FMT_BY_KIND = {v: k for k, v in KIND_BY_FMT.items()}


def ino_to_sql(ino: int) -> int:
    """An inode number as SQLite keeps integers: signed 64-bit.

    Why: inode numbers are unsigned 64-bit, and a GlusterFS FUSE mount derives them from
    128-bit gfids, so half of them are 2**63 or more (SQLite refused them: "Python int
    too large to convert to SQLite INTEGER").  Stored as their two's-complement value.
    """

    return ino - (1 << 64) if ino >= 1 << 63 else ino


def ino_from_sql(value: int) -> int:
    """The inode number `ino_to_sql` stored."""

    return value & 0xFFFF_FFFF_FFFF_FFFF


def id_text(oid: bytes) -> str:
    """An id as the usual uuid text (what GlusterFS prints for a gfid).

    Formatted here rather than by ``uuid.UUID``: the uuid module imports platform, 5 ms
    of every start on both ends, for text that only messages and logs show.
    """

    if len(oid) != 16:
        raise ValueError(f"an id is 16 bytes, not {len(oid)}")
    h = oid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def name_problem(name: bytes) -> str | None:
    """Why ``name`` cannot be a directory entry, or None when it can.

    Checked by the agent for every name it receives: a hostile peer must not be able to
    reach outside the secondary root with ``..``, ``/`` or an absolute name.
    """

    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"reserved name {name!r}"
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains NUL"
    if len(name) > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    return None


#: xattr namespaces that belong to GlusterFS itself and are never replicated.
GLUSTER_INTERNAL = (b"trusted.gfid", b"trusted.gfid2path.", b"trusted.glusterfs.", b"trusted.afr.")


def replicable_xattr(key: bytes, privileged: bool) -> bool:
    """Whether an xattr is copied: user.* always; other namespaces only as root."""

    if key.startswith(GLUSTER_INTERNAL):
        return False
    if key.startswith(b"user."):
        return True
    return privileged and key.startswith((b"trusted.", b"security."))


@record
class Meta:
    """What is replicated of an object besides its name and data."""

    mode: int  # permission bits, including setuid/setgid/sticky (no file type)
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


@record
class Entry:
    """One name of one object, as the source sees it now."""

    id: bytes
    parent: bytes
    name: bytes
    kind: Kind
    meta: Meta
    size: int = 0  # regular files only
    target: bytes = b""  # symlinks only
    rdev: int = 0  # device nodes only
    nlink: int = 1


@dataclass(frozen=True, slots=True)
class Problem:
    """A per-path failure: reported as a value, the rest of the work goes on."""

    path: bytes
    cause: str
    code: str = "error"

    def render(self) -> str:
        return f"{self.path.decode('utf-8', 'backslashreplace')}: {self.cause}"


@dataclass(slots=True)
class Summary:
    """The outcome of one replication run (printed, or as JSON with --json)."""

    entries: int = 0
    files: int = 0  # regular files whose data was sent
    bytes_data: int = 0  # bytes of file data sent
    bytes_wire: int = 0  # bytes written to the transport (framing and metadata included)
    bytes_matched: int = 0  # bytes of changed files the secondary copied from its old copy (delta)
    deleted: int = 0
    #: entries a rerun did not send: the secondary holds them as they are (`georep.batch.ledger`)
    unchanged: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    #: what went less well than it could without making the replica wrong (shown, exit 0)
    warnings: list[str] = field(default_factory=list)
    #: data lanes opened, and how: "dialled" (the agent connected them to a socket sshd holds for the
    #: sender, `georep.transport.ssh.LaneCalls`), "joined" (channels into the agent's socket,
    #: `georep.apply.lanehub`) or "sessions" (an agent process each, `georep.apply.lane`); "" when none
    lanes: int = 0
    lanes_kind: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "entries": self.entries,
            "files": self.files,
            "bytes_data": self.bytes_data,
            "bytes_wire": self.bytes_wire,
            "bytes_matched": self.bytes_matched,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "seconds": round(self.seconds, 3),
            "errors": len(self.problems),
            "problems": [p.render() for p in self.problems[:100]],
            "warnings": self.warnings[:100],
            "lanes": self.lanes,
            "lanes_kind": self.lanes_kind,
        }

"""An in-memory namespace keyed by id, and the reference implementation of the operations.

Why this is in the package and not in a test: it is the executable form of the
operation semantics documented in `georep.batch.coalesce`.  The property tests apply
batches to it, and the real agent can be checked against it (same operations, same
resulting namespace).  Pure: no I/O.

The model is strict where a real filesystem would fail (a parent that does not exist,
a directory moved below itself, a hard link to a directory): those raise `ModelError`,
so an ordering bug cannot hide.  Situations the semantics resolve by doing nothing (a
move already done, a name no longer held) are counted in ``anomalies``: a first
application of a batch produced from a consistent stream must not have any; replays
legitimately do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from georep.batch.changes import (
    STAGING,
    AddLink,
    Clear,
    Make,
    Move,
    NameKey,
    Op,
    Remove,
    SyncData,
    SyncMeta,
)
from georep.model import ROOT_ID, Kind


class ModelError(Exception):
    """An operation a real filesystem would refuse."""


@dataclass(slots=True)
class Obj:
    """One object: its kind, content (file data or symlink target) and metadata version."""

    kind: Kind
    content: bytes = b""
    meta: int = 0


@dataclass(slots=True)
class Tree:
    """A namespace keyed by id: ``names`` maps (parent id, name) to the id holding it."""

    objects: dict[bytes, Obj] = field(default_factory=dict)
    names: dict[NameKey, bytes] = field(default_factory=dict)
    links: dict[bytes, set[NameKey]] = field(default_factory=dict)  # id → its names
    anomalies: list[str] = field(default_factory=list)
    aside: int = 0  # counter for the names of what is set aside in staging

    @classmethod
    def empty(cls, *, staging: bool = False) -> Tree:
        """A tree holding only the root (and, for a secondary, the staging directory)."""

        t = cls()
        t.objects[ROOT_ID] = Obj(Kind.DIR)
        t.links[ROOT_ID] = set()
        if staging:
            t.objects[STAGING] = Obj(Kind.DIR)
            t.links[STAGING] = set()
        return t

    def copy(self) -> Tree:
        return Tree(
            {k: Obj(o.kind, o.content, o.meta) for k, o in self.objects.items()},
            dict(self.names),
            {k: set(v) for k, v in self.links.items()},
            aside=self.aside,
        )

    # -- queries ----------------------------------------------------------------------

    def holder(self, parent: bytes, name: bytes) -> bytes | None:
        return self.names.get((parent, name))

    def parent_of(self, oid: bytes) -> bytes | None:
        """The parent of a directory (None for the root, staging, or a file's many names)."""

        ns = self.links.get(oid)
        if not ns or len(ns) != 1:
            return None
        return next(iter(ns))[0]

    def is_below(self, oid: bytes, ancestor: bytes) -> bool:
        """Whether directory ``oid`` is ``ancestor`` or inside it."""

        seen = 0
        cur: bytes | None = oid
        while cur is not None:
            if cur == ancestor:
                return True
            cur = self.parent_of(cur)
            seen += 1
            if seen > 100_000:  # pragma: no cover - the model never holds a loop
                raise ModelError("directory loop")
        return False

    def children(self, oid: bytes) -> list[tuple[bytes, bytes]]:
        return [(n, c) for (p, n), c in self.names.items() if p == oid]

    def snapshot(self) -> dict[NameKey, tuple[bytes, Kind, bytes, int]]:
        """Everything that must be equal between source and secondary, staging excluded."""

        out: dict[NameKey, tuple[bytes, Kind, bytes, int]] = {}
        for key, oid in self.names.items():
            if key[0] == STAGING:
                continue
            o = self.objects[oid]
            out[key] = (oid, o.kind, o.content if o.kind is not Kind.DIR else b"", o.meta)
        return out

    # -- primitive mutations (shared by the test source and the secondary) --------------

    def add_name(self, oid: bytes, parent: bytes, name: bytes) -> None:
        if (parent, name) in self.names:
            raise ModelError(f"name taken: {name!r}")
        self.names[(parent, name)] = oid
        self.links.setdefault(oid, set()).add((parent, name))

    def drop_name(self, parent: bytes, name: bytes) -> bytes:
        oid = self.names.pop((parent, name))
        ns = self.links[oid]
        ns.discard((parent, name))
        if not ns and oid not in (ROOT_ID, STAGING):
            self._forget(oid)
        return oid

    def _forget(self, oid: bytes) -> None:
        o = self.objects.pop(oid)
        del self.links[oid]
        if o.kind is Kind.DIR:
            for name, _child in self.children(oid):
                self.drop_name(oid, name)

    def rename(self, src: NameKey, dst: NameKey) -> None:
        oid = self.names[src]
        if self.objects[oid].kind is Kind.DIR and self.is_below(dst[0], oid):
            raise ModelError("directory moved below itself")
        if dst[0] not in self.objects or self.objects[dst[0]].kind is not Kind.DIR:
            raise ModelError("target parent is not a directory")
        if dst in self.names:
            raise ModelError(f"rename onto a taken name {dst[1]!r}")
        del self.names[src]
        self.links[oid].discard(src)
        self.names[dst] = oid
        self.links[oid].add(dst)


# -- the operations, as the agent must implement them ----------------------------------


class Source:
    """What the secondary reads from the source at sync time (the source's current tree)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def get(self, oid: bytes) -> Obj | None:
        return self.tree.objects.get(oid)


def _set_aside(t: Tree, key: NameKey) -> None:
    """Move the name ``key`` into staging under a fresh name (deleted at the end of the batch).

    Nothing is destroyed before the end of the batch: an object that loses a name stays
    reachable by id (a directory with what is below it, a file for a later AddLink).
    """

    t.aside += 1
    t.rename(key, (STAGING, b"%s.rm%d" % (t.names[key].hex().encode("ascii"), t.aside)))


def _displace(t: Tree, key: NameKey) -> None:
    """Whatever holds ``key`` loses it (set aside in staging)."""

    if key in t.names:
        _set_aside(t, key)


def _need_dir(t: Tree, parent: bytes) -> None:
    o = t.objects.get(parent)
    if o is None or o.kind is not Kind.DIR:
        raise ModelError(f"parent {parent.hex()} does not exist")


def apply_op(t: Tree, op: Op, src: Source) -> None:
    """Apply one operation to ``t`` (a secondary) with the documented semantics."""

    if type(op) is Make:
        if op.id in t.objects:
            return
        _need_dir(t, op.parent)
        s = src.get(op.id)
        kind = s.kind if s is not None else (op.kind or Kind.FILE)
        content = s.content if (s is not None and kind is Kind.SYMLINK) else b""
        _displace(t, (op.parent, op.name))
        t.objects[op.id] = Obj(kind, content, s.meta if s is not None else 0)
        t.links[op.id] = set()
        t.add_name(op.id, op.parent, op.name)
    elif type(op) is AddLink:
        key = (op.parent, op.name)
        if t.names.get(key) == op.id:
            return
        o = t.objects.get(op.id)
        if o is None:
            t.anomalies.append(f"link of missing {op.id.hex()}")
            return
        if o.kind is Kind.DIR:
            raise ModelError("hard link to a directory")
        _need_dir(t, op.parent)
        _displace(t, key)
        t.add_name(op.id, op.parent, op.name)
    elif type(op) is Move:
        old = (op.old_parent, op.old_name)
        new = (op.new_parent, op.new_name)
        if t.names.get(new) == op.id:
            return
        if t.names.get(old) != op.id:
            t.anomalies.append(f"move of {op.id.hex()} not at {op.old_name!r}")
            return
        _need_dir(t, op.new_parent)
        if t.objects[op.id].kind is Kind.DIR and t.is_below(op.new_parent, op.id):
            raise ModelError("directory moved below itself")
        _displace(t, new)
        t.rename(old, new)
    elif type(op) is Remove:
        key = (op.parent, op.name)
        if t.names.get(key) != op.id:
            t.anomalies.append(f"remove of {op.id.hex()} not at {op.name!r}")
            return
        _set_aside(t, key)
    elif type(op) is Clear:
        _displace(t, (op.parent, op.name))
    elif type(op) is SyncData:
        o = t.objects.get(op.id)
        s = src.get(op.id)
        if o is not None and s is not None and o.kind is Kind.FILE and s.kind is Kind.FILE:
            o.content = s.content
    elif type(op) is SyncMeta:
        o = t.objects.get(op.id)
        s = src.get(op.id)
        if o is not None and s is not None:
            o.meta = s.meta
    else:  # pragma: no cover - exhaustive
        raise TypeError(op)


def finish_batch(t: Tree) -> None:
    """End of a batch: empty staging (everything left there is dead)."""

    for name, _oid in t.children(STAGING):
        t.drop_name(STAGING, name)


def apply_batch(t: Tree, ops: tuple[Op, ...] | list[Op], src: Source) -> None:
    """Apply a whole batch, then empty staging."""

    for op in ops:
        apply_op(t, op, src)
    finish_batch(t)

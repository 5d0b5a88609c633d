"""Model-based properties of the batcher.

A model source filesystem (POSIX rules: rename over an existing name, EINVAL for a
directory moved below itself, rmdir only when empty, hard links) performs random
operations and emits the changes GlusterFS would journal.  The changes go through the
`Coalescer`; its batches are applied to a model secondary with the documented
operation semantics (`georep.batch.model_apply`, strict: an invalid operation raises).
Properties, each over at least 500 random programs:

* the secondary ends equal to the source (namespace, kinds, contents, metadata),
  wherever the stream is cut into batches;
* a batch never has more operations than changes went in;
* applying a batch twice, or a prefix of it and then all of it, equals applying it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from georep.batch.changes import (
    STAGING,
    Change,
    Create,
    Data,
    Link,
    Meta,
    Move,
    Rename,
    Rmdir,
    Unlink,
)
from georep.batch.coalesce import Batch, Coalescer
from georep.batch.model_apply import Obj, Source, Tree, apply_batch, apply_op, finish_batch
from georep.model import ROOT_ID, Kind

NAMES = [b"a", b"b", b"c", b"tmp", b"new\nline", b"\xff"]
SLOW_OK = [HealthCheck.too_slow]


@dataclass
class SourceFS:
    """The source: a model tree plus the journal of what was done to it."""

    tree: Tree = field(default_factory=Tree.empty)
    journal: list[Change] = field(default_factory=list)
    next_id: int = 0x100
    dir_hints: bool = False  # the brick reader tells directories apart in Rename.kind

    def new_id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(16, "big")

    def dirs(self) -> list[bytes]:
        return sorted(k for k, o in self.tree.objects.items() if o.kind is Kind.DIR)

    def entries(self) -> list[tuple[bytes, bytes]]:
        return sorted(self.tree.names)

    # operations, with POSIX's rules; each returns False when the system call would fail

    def create(self, parent: bytes, name: bytes, kind: Kind, journal: bool = True) -> bool:
        if (parent, name) in self.tree.names:
            return False
        oid = self.new_id()
        content = b"target-" + name if kind is Kind.SYMLINK else b""
        self.tree.objects[oid] = Obj(kind, content)
        self.tree.links[oid] = set()
        self.tree.add_name(oid, parent, name)
        if journal:
            self.journal.append(Create(oid, parent, name, kind))
        return True

    def write(self, oid: bytes, truncate: bool) -> bool:
        o = self.tree.objects[oid]
        if o.kind is not Kind.FILE:
            return False
        o.content = o.content[: len(o.content) // 2] if truncate else o.content + bytes([self.next_id % 251])
        self.next_id += 1
        self.journal.append(Data(oid, len(o.content)))
        return True

    def touch_meta(self, oid: bytes) -> bool:
        self.tree.objects[oid].meta += 1
        self.journal.append(Meta(oid))
        return True

    def rename(self, src: tuple[bytes, bytes], parent: bytes, name: bytes) -> bool:
        t = self.tree
        dst = (parent, name)
        if src == dst:
            return False
        oid = t.names[src]
        isdir = t.objects[oid].kind is Kind.DIR
        if isdir and t.is_below(parent, oid):
            return False  # EINVAL
        occ = t.names.get(dst)
        if occ == oid:
            # two names of one inode: rename() succeeds and does nothing; GlusterFS journals it
            self.journal.append(Rename(oid, src[0], src[1], parent, name))
            return True
        if occ is not None:
            ok = t.objects[occ].kind is Kind.DIR
            if isdir != ok or (ok and t.children(occ)):
                return False  # EISDIR / ENOTDIR / ENOTEMPTY
            t.drop_name(parent, name)
        t.rename(src, dst)
        hint = Kind.DIR if (isdir and self.dir_hints) else None
        self.journal.append(Rename(oid, src[0], src[1], parent, name, hint))
        return True

    def link(self, src: tuple[bytes, bytes], parent: bytes, name: bytes) -> bool:
        oid = self.tree.names[src]
        if self.tree.objects[oid].kind is Kind.DIR or (parent, name) in self.tree.names:
            return False
        self.tree.add_name(oid, parent, name)
        self.journal.append(Link(oid, parent, name))
        return True

    def remove(self, key: tuple[bytes, bytes]) -> bool:
        oid = self.tree.names[key]
        if self.tree.objects[oid].kind is Kind.DIR:
            if self.tree.children(oid):
                return False
            self.tree.drop_name(*key)
            self.journal.append(Rmdir(oid, *key))
        else:
            self.tree.drop_name(*key)
            self.journal.append(Unlink(oid, *key))
        return True


def initial_tree(data: st.DataObject) -> SourceFS:
    """A pre-existing tree: the batcher never saw its creation (unknown kinds and occupants)."""

    fs = SourceFS(dir_hints=data.draw(st.booleans(), label="dir hints"))
    for _ in range(data.draw(st.integers(0, 8), label="initial objects")):
        parent = data.draw(st.sampled_from(fs.dirs()))
        name = data.draw(st.sampled_from(NAMES))
        kind = data.draw(st.sampled_from([Kind.DIR, Kind.DIR, Kind.FILE, Kind.FILE, Kind.SYMLINK]))
        if fs.create(parent, name, kind, journal=False) and kind is Kind.FILE:
            oid = fs.tree.names[(parent, name)]
            fs.tree.objects[oid].content = b"initial"
            if data.draw(st.booleans(), label="hard link"):
                p2 = data.draw(st.sampled_from(fs.dirs()))
                n2 = data.draw(st.sampled_from(NAMES))
                if (p2, n2) not in fs.tree.names:
                    fs.tree.add_name(oid, p2, n2)
    return fs


def step(fs: SourceFS, data: st.DataObject) -> None:
    """One random operation on the source (an impossible one is simply not done)."""

    what = data.draw(
        st.sampled_from(["create", "mkdir", "special", "write", "truncate", "rename", "rename", "rename",
                         "link", "remove", "remove", "chmod", "setxattr"]),
        label="op",
    )
    dirs = fs.dirs()
    entries = fs.entries()
    if what in ("create", "mkdir", "special"):
        kind = {"create": Kind.FILE, "mkdir": Kind.DIR}.get(what) or data.draw(
            st.sampled_from([Kind.SYMLINK, Kind.FIFO]))
        fs.create(data.draw(st.sampled_from(dirs)), data.draw(st.sampled_from(NAMES)), kind)
        return
    if what in ("chmod", "setxattr"):
        fs.touch_meta(data.draw(st.sampled_from(sorted(fs.tree.objects))))
        return
    if not entries:
        return
    key = data.draw(st.sampled_from(entries))
    oid = fs.tree.names[key]
    if what in ("write", "truncate"):
        fs.write(oid, what == "truncate")
    elif what == "rename":
        fs.rename(key, data.draw(st.sampled_from(dirs)), data.draw(st.sampled_from(NAMES)))
    elif what == "link":
        fs.link(key, data.draw(st.sampled_from(dirs)), data.draw(st.sampled_from(NAMES)))
    else:
        fs.remove(key)


def secondary_of(fs: SourceFS) -> Tree:
    sec = fs.tree.copy()
    sec.objects[STAGING] = Obj(Kind.DIR)
    sec.links[STAGING] = set()
    return sec


def _short(x: object) -> str:
    """Readable ids in notes: the last byte of a 16-byte id."""

    import re

    return re.sub(r"b'(\\x00)+\\x0([0-9a-f])'|b'(\\x00)+\\x01\\x([0-9a-f]{2})'",
                  lambda m: "#" + (m.group(2) or m.group(4)), repr(x))


def check_batch(batch: Batch) -> None:
    note("batch: " + _short(batch.ops))
    assert batch.ops_out == len(batch.ops)
    assert batch.ops_out <= batch.changes_in, "coalescing added operations"


def run_program(data: st.DataObject, apply: object) -> tuple[SourceFS, Tree]:
    """Drive random operations, cutting where the program says; ``apply(sec, batch, fs)``."""

    fs = initial_tree(data)
    note("initial: " + _short(sorted((k, v) for k, v in fs.tree.names.items())))
    sec = secondary_of(fs)
    co = Coalescer()
    assert callable(apply)
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        step(fs, data)
        for change in fs.journal:
            note("change: " + _short(change))
            forced = co.add(change)
            if forced is not None:
                check_batch(forced)
                apply(sec, forced, fs)
        fs.journal.clear()
        if data.draw(st.integers(0, 9), label="cut") == 0:
            batch = co.cut()
            check_batch(batch)
            apply(sec, batch, fs)
    batch = co.cut()
    check_batch(batch)
    apply(sec, batch, fs)
    return fs, sec


def apply_once(sec: Tree, batch: Batch, fs: SourceFS) -> None:
    apply_batch(sec, batch.ops, Source(fs.tree))
    assert sec.anomalies == [], (sec.anomalies, batch.ops)
    assert sec.children(STAGING) == []


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.data())
def test_batches_reproduce_the_source(data: st.DataObject) -> None:
    fs, sec = run_program(data, apply_once)
    assert sec.snapshot() == fs.tree.snapshot()


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.data())
def test_one_big_batch_reproduces_the_source(data: st.DataObject) -> None:
    fs = initial_tree(data)
    note("initial: " + _short(sorted((k, v) for k, v in fs.tree.names.items())))
    sec = secondary_of(fs)
    co = Coalescer()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        step(fs, data)
    forced_any = False
    for change in fs.journal:
        note("change: " + _short(change))
        forced = co.add(change)
        if forced is not None:
            # the source is already at its final state: SyncData of this batch reads it
            forced_any = True
            check_batch(forced)
            apply_once(sec, forced, fs)
    batch = co.cut()
    check_batch(batch)
    apply_once(sec, batch, fs)
    assert sec.snapshot() == fs.tree.snapshot(), forced_any


def apply_twice(sec: Tree, batch: Batch, fs: SourceFS) -> None:
    once = sec.copy()
    apply_batch(once, batch.ops, Source(fs.tree))
    apply_batch(sec, batch.ops, Source(fs.tree))
    apply_batch(sec, batch.ops, Source(fs.tree))
    assert sec.snapshot() == once.snapshot()
    assert sec.children(STAGING) == []


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.data())
def test_replaying_a_batch_equals_applying_it_once(data: st.DataObject) -> None:
    fs, sec = run_program(data, apply_twice)
    assert sec.snapshot() == fs.tree.snapshot()


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.data())
def test_crash_inside_a_batch_then_replay(data: st.DataObject) -> None:
    def apply_crash(sec: Tree, batch: Batch, fs: SourceFS) -> None:
        once = sec.copy()
        apply_batch(once, batch.ops, Source(fs.tree))
        k = data.draw(st.integers(0, len(batch.ops)), label="crash after")
        for op in batch.ops[:k]:
            apply_op(sec, op, Source(fs.tree))
        # the agent restarts: staging keeps what was put there; the batch is sent again
        apply_batch(sec, batch.ops, Source(fs.tree))
        assert sec.snapshot() == once.snapshot()

    fs, sec = run_program(data, apply_crash)
    assert sec.snapshot() == fs.tree.snapshot()
    finish_batch(sec)


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.data())
def test_permutations_through_temporary_names(data: st.DataObject) -> None:
    """Swaps and rotations (a→tmp, b→a, tmp→b) of existing files and directories whose names
    the window knows: the coalesced moves form cycles that must go through staging."""

    fs = SourceFS(dir_hints=True)
    n = data.draw(st.integers(2, 7), label="objects")
    names = [b"n%d" % i for i in range(n)]
    objs = []
    for name in names:
        kind = data.draw(st.sampled_from([Kind.FILE, Kind.DIR]), label="kind")
        fs.create(ROOT_ID, name, kind, journal=False)
        objs.append(fs.tree.names[(ROOT_ID, name)])
    for t in (b"tmp", b"tmp2"):
        fs.create(ROOT_ID, t, Kind.FILE, journal=False)
    sec = secondary_of(fs)
    # the window learns the temporary names are free, and which objects are files
    for t in (b"tmp", b"tmp2"):
        fs.remove((ROOT_ID, t))
    for o in objs:
        if fs.tree.objects[o].kind is Kind.FILE:
            fs.write(o, truncate=False)
    perm = data.draw(st.permutations(range(n)), label="permutation")
    seen = [False] * n
    for start in range(n):
        if seen[start]:
            continue
        cycle = [start]
        seen[start] = True
        while not seen[perm[cycle[-1]]]:
            cycle.append(perm[cycle[-1]])
            seen[cycle[-1]] = True
        if len(cycle) < 2:
            continue
        # the object at names[c] goes to names[perm[c]]
        tmp = data.draw(st.sampled_from([b"tmp", b"tmp2"]), label="tmp")
        last = cycle[-1]
        assert fs.rename((ROOT_ID, names[last]), ROOT_ID, tmp)
        for c in reversed(cycle[:-1]):
            assert fs.rename((ROOT_ID, names[c]), ROOT_ID, names[perm[c]])
        assert fs.rename((ROOT_ID, tmp), ROOT_ID, names[perm[last]])
    co = Coalescer()
    batches = []
    for change in fs.journal:
        note("change: " + _short(change))
        forced = co.add(change)
        if forced is not None:
            batches.append(forced)
    batches.append(co.cut())
    for b in batches:
        check_batch(b)
        apply_once(sec, b, fs)
    assert sec.snapshot() == fs.tree.snapshot()
    if all(fs.tree.objects[o].kind is Kind.FILE for o in objs) and any(perm[i] != i for i in range(n)):
        # files are coalesced to one move each: a cycle among them needs staging
        staged = [op for b in batches for op in b.ops if isinstance(op, Move) and op.new_parent == STAGING]
        assert staged

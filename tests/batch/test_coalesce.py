"""The batcher's rules, one scenario each, checked on the ops and on a model secondary."""

from __future__ import annotations

from georep.batch.changes import (
    STAGING,
    AddLink,
    Change,
    Clear,
    Create,
    Data,
    Link,
    Make,
    Meta,
    Move,
    Op,
    Remove,
    Rename,
    Rmdir,
    SyncData,
    SyncMeta,
    Unlink,
)
from georep.batch.coalesce import Batch, Coalescer
from georep.batch.model_apply import Obj, Source, Tree, apply_batch
from georep.model import ROOT_ID, Kind

R = ROOT_ID


def oid(n: int) -> bytes:
    return (0x1000 + n).to_bytes(16, "big")


def run(changes: list[Change]) -> Batch:
    co = Coalescer()
    for c in changes:
        assert co.add(c) is None, c
    batch = co.cut()
    assert batch.changes_in == len(changes)
    assert batch.ops_out == len(batch.ops) <= batch.changes_in
    return batch


def kinds(batch: Batch) -> list[str]:
    return [type(op).__name__ for op in batch.ops]


class World:
    """A source tree and a secondary copy of it, both model trees."""

    def __init__(self) -> None:
        self.src = Tree.empty()
        self.sec = Tree.empty(staging=True)

    def have(self, i: int, parent: bytes, name: bytes, kind: Kind = Kind.FILE, content: bytes = b"") -> bytes:
        for t in (self.src, self.sec):
            if oid(i) not in t.objects:
                t.objects[oid(i)] = Obj(kind, content)
                t.links[oid(i)] = set()
            t.add_name(oid(i), parent, name)
        return oid(i)

    def apply(self, batch: Batch) -> None:
        apply_batch(self.sec, batch.ops, Source(self.src))
        assert self.sec.anomalies == []


# -- per-id coalescing ----------------------------------------------------------------


def test_create_then_unlink_is_nothing() -> None:
    b = run([Create(oid(1), R, b"f", Kind.FILE), Data(oid(1), 10), Meta(oid(1)), Unlink(oid(1), R, b"f")])
    assert b.ops == ()
    assert (b.changes_in, b.ops_out, b.data_bytes) == (4, 0, 0)


def test_mkdir_then_rmdir_is_nothing() -> None:
    b = run([Create(oid(1), R, b"d", Kind.DIR), Create(oid(2), oid(1), b"f", Kind.FILE),
             Unlink(oid(2), oid(1), b"f"), Rmdir(oid(1), R, b"d")])
    assert b.ops == ()


def test_repeated_data_is_one_sync_with_the_last_size() -> None:
    b = run([Create(oid(1), R, b"f", Kind.FILE), Data(oid(1), 10), Data(oid(1), 20), Data(oid(1), 30)])
    assert b.ops == (Make(oid(1), R, b"f", Kind.FILE), SyncData(oid(1), 30))
    assert (b.data_bytes, b.data_ops) == (30, 1)


def test_create_then_renames_is_one_make_at_the_final_name() -> None:
    b = run([Create(oid(1), R, b"a", Kind.FILE), Rename(oid(1), R, b"a", R, b"b"),
             Rename(oid(1), R, b"b", oid(9), b"c"), Data(oid(1), 1)])
    assert b.ops[0] == Make(oid(1), oid(9), b"c", Kind.FILE)
    assert kinds(b) == ["Make", "SyncData", "Clear"]  # b might have replaced something
    assert b.ops[2] == Clear(R, b"b")


def test_directory_rename_chain_is_one_move() -> None:
    d = oid(1)
    b = run([Rename(d, R, b"a", R, b"b", Kind.DIR), Rename(d, R, b"b", R, b"c", Kind.DIR),
             Rename(d, R, b"c", oid(9), b"d", Kind.DIR)])
    assert b.ops == (Move(d, R, b"a", oid(9), b"d"), Clear(R, b"b"), Clear(R, b"c"))


def test_file_rename_chain_over_known_names_is_one_move() -> None:
    # the names are known (their previous holders went away in this window)
    f = oid(1)
    b = run([Unlink(oid(7), R, b"b"), Unlink(oid(8), R, b"c"), Data(f, 5),
             Rename(f, R, b"a", R, b"b"), Rename(f, R, b"b", R, b"c")])
    assert [op for op in b.ops if type(op) is Move] == [Move(f, R, b"a", R, b"c")]


def test_data_of_an_object_later_deleted_is_not_sent() -> None:
    b = run([Create(oid(1), R, b"tmp", Kind.FILE), Data(oid(1), 100), Unlink(oid(1), R, b"tmp")])
    assert not any(type(op) is SyncData for op in b.ops)


def test_metadata_last_state_wins() -> None:
    f = oid(1)
    b = run([Meta(f), Meta(f), Data(f), Meta(f)])
    assert b.ops == (SyncData(f), SyncMeta(f))
    # a new object's metadata is read when it is made
    b = run([Create(f, R, b"f", Kind.FILE), Meta(f), Meta(f)])
    assert b.ops == (Make(f, R, b"f", Kind.FILE),)


# -- ordering -------------------------------------------------------------------------


def test_parents_before_children_and_links_after_their_inode() -> None:
    d, e, f = oid(1), oid(2), oid(3)
    b = run([Create(d, R, b"d", Kind.DIR), Create(e, d, b"e", Kind.DIR), Create(f, e, b"f", Kind.FILE),
             Link(f, d, b"hl"), Rename(f, e, b"f", R, b"f2")])
    order = [(type(op).__name__, op.id) for op in b.ops if hasattr(op, "id")]
    assert order.index(("Make", d)) < order.index(("Make", e)) < order.index(("AddLink", f))
    assert order.index(("Make", f)) < order.index(("AddLink", f))


def test_directory_renames_come_in_source_order_and_never_below_themselves() -> None:
    """/A/B → /B/A: B must leave A before A goes below B (the sort cannot see above)."""

    w = World()
    a = w.have(1, R, b"A", Kind.DIR)
    bb = w.have(2, a, b"B", Kind.DIR)
    b = run([Rename(bb, a, b"B", R, b"B", Kind.DIR), Rename(a, R, b"A", bb, b"A", Kind.DIR)])
    assert b.ops[:2] == (Move(bb, a, b"B", R, b"B"), Move(a, R, b"A", bb, b"A"))
    w.apply(b)


def test_swap_through_tmp_goes_through_staging_when_names_are_known() -> None:
    """x and y are known names; the coalesced moves x→y, y→x form a cycle."""

    w = World()
    x = w.have(1, R, b"x", content=b"X")
    y = w.have(2, R, b"y", content=b"Y")
    w.have(3, R, b"tmp")
    # the journal: rm tmp; mv x tmp; mv y x; mv tmp y (all names known to the window)
    changes: list[Change] = [Unlink(oid(3), R, b"tmp"), Data(x), Data(y), Rename(x, R, b"x", R, b"tmp"),
                             Rename(y, R, b"y", R, b"x"), Rename(x, R, b"tmp", R, b"y")]
    w.src.drop_name(R, b"tmp")
    w.src.rename((R, b"x"), (R, b"tmp"))
    w.src.rename((R, b"y"), (R, b"x"))
    w.src.rename((R, b"tmp"), (R, b"y"))
    b = run(changes)
    moves = [op for op in b.ops if type(op) is Move]
    assert any(op.new_parent == STAGING for op in moves)
    assert any(op.old_parent == STAGING for op in moves)
    assert len(moves) == 3
    w.apply(b)
    assert w.sec.snapshot() == w.src.snapshot()


def test_rename_onto_an_existing_name_replaces_it() -> None:
    w = World()
    w.have(1, R, b"victim", content=b"old")
    w.have(2, R, b"replacer", content=b"new")
    w.src.drop_name(R, b"victim")
    w.src.rename((R, b"replacer"), (R, b"victim"))
    b = run([Rename(oid(2), R, b"replacer", R, b"victim")])
    assert b.ops == (Move(oid(2), R, b"replacer", R, b"victim"),)
    w.apply(b)
    assert w.sec.snapshot() == w.src.snapshot()
    assert oid(1) not in w.sec.objects


def test_deletes_come_last() -> None:
    b = run([Unlink(oid(1), R, b"old"), Create(oid(2), R, b"new", Kind.FILE), Data(oid(2), 3),
             Rmdir(oid(3), R, b"olddir"), Meta(oid(4))])
    assert kinds(b) == ["Make", "SyncData", "SyncMeta", "Remove", "Remove"]


def test_a_name_freed_by_a_delete_and_reused_waits_for_it() -> None:
    w = World()
    w.have(1, R, b"d", Kind.DIR)
    w.have(5, oid(1), b"inner")
    b = run([Unlink(oid(5), oid(1), b"inner"), Rmdir(oid(1), R, b"d"), Create(oid(2), R, b"d", Kind.FILE)])
    # the new file displaces the old directory (set aside, emptied at the end): no Remove needed
    assert b.ops == (Make(oid(2), R, b"d", Kind.FILE),)
    w.src.drop_name(oid(1), b"inner")
    w.src.drop_name(R, b"d")
    w.src.objects[oid(2)] = Obj(Kind.FILE)
    w.src.links[oid(2)] = set()
    w.src.add_name(oid(2), R, b"d")
    w.apply(b)
    assert w.sec.snapshot() == w.src.snapshot()


def test_a_directory_is_removed_with_everything_below_it_in_one_operation() -> None:
    top, sub = oid(1), oid(2)
    changes: list[Change] = []
    for i in range(10):
        changes.append(Unlink(oid(100 + i), sub, b"f%d" % i))
    changes += [Rmdir(sub, top, b"sub"), Unlink(oid(99), top, b"g"), Rmdir(top, R, b"top")]
    b = run(changes)
    assert b.ops == (Remove(top, R, b"top"),)


# -- the story ------------------------------------------------------------------------


def test_story_temp_write_and_rename_over_player_json() -> None:
    """An editor writes a temp file and renames it over player.json: the secondary ends
    with only player.json, with the new content, and no data is ever addressed to the
    temp name."""

    w = World()
    site = w.have(1, R, b"site", Kind.DIR)
    w.have(2, site, b"player.json", content=b'{"player": 1}')
    tmp = oid(3)
    # the source does it
    w.src.objects[tmp] = Obj(Kind.FILE, b'{"player": "updated"}')
    w.src.links[tmp] = set()
    w.src.add_name(tmp, site, b".player.json.swp")
    w.src.drop_name(site, b"player.json")
    w.src.rename((site, b".player.json.swp"), (site, b"player.json"))
    changes: list[Change] = [
        Create(tmp, site, b".player.json.swp", Kind.FILE),
        Data(tmp, 21),
        Meta(tmp),
        Rename(tmp, site, b".player.json.swp", site, b"player.json"),
    ]
    b = run(changes)
    assert b.ops == (Make(tmp, site, b"player.json", Kind.FILE), SyncData(tmp, 21))
    for op in b.ops:
        assert getattr(op, "name", b"") != b".player.json.swp"
    # apply op by op: every data op addresses an object that is at player.json already
    src = Source(w.src)
    from georep.batch.model_apply import apply_op, finish_batch

    for op in b.ops:
        if isinstance(op, SyncData):
            assert w.sec.links[op.id] == {(site, b"player.json")}
        apply_op(w.sec, op, src)
    finish_batch(w.sec)
    assert w.sec.snapshot() == w.src.snapshot()
    assert w.sec.objects[tmp].content == b'{"player": "updated"}'
    assert b.data_bytes == 21


# -- duplicates and replay ------------------------------------------------------------


def test_duplicates_from_other_bricks_are_ignored() -> None:
    d, f = oid(1), oid(2)
    once: list[Change] = [Create(d, R, b"d", Kind.DIR), Create(f, d, b"f", Kind.FILE),
                          Rename(d, R, b"d", R, b"e", Kind.DIR), Unlink(f, d, b"f")]
    assert run(once + once).ops == run(once).ops


def test_counters() -> None:
    b = run([Create(oid(1), R, b"a", Kind.FILE), Data(oid(1), 7), Create(oid(2), R, b"b", Kind.FILE),
             Data(oid(2)), Meta(oid(3))])
    assert (b.changes_in, b.ops_out, b.data_bytes, b.data_ops) == (5, 5, 7, 2)


def test_replay_of_a_batch_is_harmless() -> None:
    w = World()
    w.have(1, R, b"x", content=b"X")
    w.have(2, R, b"y", content=b"Y")
    w.have(3, R, b"tmp")
    changes: list[Change] = [Unlink(oid(3), R, b"tmp"), Rename(oid(1), R, b"x", R, b"tmp"),
                             Rename(oid(2), R, b"y", R, b"x"), Rename(oid(1), R, b"tmp", R, b"y")]
    w.src.drop_name(R, b"tmp")
    w.src.rename((R, b"x"), (R, b"tmp"))
    w.src.rename((R, b"y"), (R, b"x"))
    w.src.rename((R, b"tmp"), (R, b"y"))
    b = run(changes)
    w.apply(b)
    first = w.sec.snapshot()
    apply_batch(w.sec, b.ops, Source(w.src))
    assert w.sec.snapshot() == first == w.src.snapshot()


def test_ambiguous_rename_of_an_existing_file_cuts_rather_than_guess() -> None:
    """mv a b; mv b c of an existing file: b may have been another link of the same inode
    (then the first rename did nothing), so the window is cut between the two."""

    co = Coalescer()
    f = oid(1)
    assert co.add(Rename(f, R, b"a", R, b"b")) is None
    first = co.add(Rename(f, R, b"b", R, b"c"))
    assert first is not None
    assert first.ops == (Move(f, R, b"a", R, b"b"),)
    assert co.cut().ops == (Move(f, R, b"b", R, b"c"),)


def _ops_of(batch: Batch, t: type[Op]) -> list[Op]:
    return [op for op in batch.ops if isinstance(op, t)]


def test_new_hard_link_of_an_existing_file() -> None:
    b = run([Link(oid(1), R, b"second"), Data(oid(1), 4)])
    assert _ops_of(b, AddLink) == [AddLink(oid(1), R, b"second")]


# -- journal records → changes ---------------------------------------------------------


def test_journal_records_convert_to_changes() -> None:
    from georep.batch.changes import journal_record_to_changes
    from georep.source.changelog import DataRecord, EntryRecord, Fop, MetaRecord

    g, p, q = oid(1), oid(2), oid(3)
    cases: list[tuple[object, list[Change]]] = [
        (EntryRecord(0, g, Fop.CREATE, p, b"f", 0o100644, 0, 0), [Create(g, p, b"f", Kind.FILE)]),
        (EntryRecord(0, g, Fop.MKDIR, p, b"d", 0o40755, 0, 0), [Create(g, p, b"d", Kind.DIR)]),
        (EntryRecord(0, g, Fop.MKNOD, p, b"p", 0o10644, 0, 0), [Create(g, p, b"p", Kind.FIFO)]),
        (EntryRecord(0, g, Fop.MKNOD, p, b"r", 0o644, 0, 0), [Create(g, p, b"r", Kind.FILE)]),
        (EntryRecord(0, g, Fop.SYMLINK, p, b"s"), [Create(g, p, b"s", Kind.SYMLINK)]),
        (EntryRecord(0, g, Fop.LINK, p, b"l"), [Link(g, p, b"l")]),
        (EntryRecord(0, g, Fop.RENAME, p, b"a", new_pargfid=q, new_name=b"b"), [Rename(g, p, b"a", q, b"b")]),
        (EntryRecord(0, g, Fop.UNLINK, p, b"u", path=b"x/u"), [Unlink(g, p, b"u")]),
        (EntryRecord(0, g, Fop.RMDIR, p, b"r"), [Rmdir(g, p, b"r")]),
        (DataRecord(0, g), [Data(g)]),
        (MetaRecord(0, g, Fop.SETXATTR), [Meta(g)]),
    ]
    for rec, want in cases:
        assert journal_record_to_changes(rec) == want, rec  # type: ignore[arg-type]


def test_glusterfs_internal_directories_are_hidden() -> None:
    from georep.batch.changes import JournalConverter
    from georep.source.changelog import DataRecord, EntryRecord, Fop, MetaRecord

    conv = JournalConverter()
    anon, inside, f = oid(1), oid(2), oid(3)
    name = b".glusterfs-anonymous-inode-61cee1ff-0a8e-4221-8dc1-9bb15fc16c7e"
    assert conv.convert(EntryRecord(0, anon, Fop.MKDIR, R, name, 0o40755, 0, 0)) == []
    assert conv.convert(EntryRecord(0, inside, Fop.MKDIR, anon, b"x", 0o40755, 0, 0)) == []
    assert conv.convert(MetaRecord(0, anon, Fop.SETXATTR)) == []
    assert conv.convert(EntryRecord(0, oid(5), Fop.MKDIR, R, b".trashcan", 0o40755, 0, 0)) == []
    # an object AFR moves out of its directory appears; one moved in disappears
    assert conv.convert(EntryRecord(0, f, Fop.RENAME, anon, b"f", new_pargfid=R, new_name=b"back")) == [
        Create(f, R, b"back", None)
    ]
    assert conv.convert(EntryRecord(0, f, Fop.RENAME, R, b"back", new_pargfid=anon, new_name=b"f")) == [
        Unlink(f, R, b"back")
    ]
    assert conv.convert(DataRecord(0, f)) == [Data(f)]
    # the same names below the root are ordinary
    assert conv.convert(EntryRecord(0, oid(4), Fop.MKDIR, oid(9), b".trashcan", 0o40755, 0, 0)) == [
        Create(oid(4), oid(9), b".trashcan", Kind.DIR)
    ]


def test_object_of_unknown_kind_is_ordered_like_a_directory() -> None:
    w = World()
    b = run([Create(oid(1), R, b"back", None), Create(oid(2), oid(1), b"child", Kind.FILE)])
    assert b.ops == (Make(oid(1), R, b"back", None), Make(oid(2), oid(1), b"child", Kind.FILE))
    w.src.objects[oid(1)] = Obj(Kind.DIR)
    w.src.links[oid(1)] = set()
    w.src.add_name(oid(1), R, b"back")
    w.src.objects[oid(2)] = Obj(Kind.FILE)
    w.src.links[oid(2)] = set()
    w.src.add_name(oid(2), oid(1), b"child")
    w.apply(b)
    assert w.sec.snapshot() == w.src.snapshot()


def test_a_new_directory_a_file_passed_through_is_made_even_when_removed_right_after() -> None:
    """echo >> a; mkdir c/x; touch x/tmp; mv a x/tmp; mv x/tmp c/a; rmdir x, with c/a never seen: the
    file's moves stay apart (the last one is ambiguous), so the second starts in x, which must exist
    (in staging) by then.

    Found by the hypothesis model (test_coalesce_model): the directory's Make and its removal met
    in the chain with nothing of the directories' between them, and merged into nothing.
    """

    w = World()
    f = w.have(1, R, b"a", content=b"data")
    c = w.have(2, R, b"c", Kind.DIR)
    x = oid(3)
    changes: list[Change] = [Data(f, 4), Create(x, c, b"x", Kind.DIR), Create(oid(4), x, b"tmp", Kind.FILE),
                             Rename(f, R, b"a", x, b"tmp"), Rename(f, x, b"tmp", c, b"a"), Rmdir(x, c, b"x")]
    w.src.rename((R, b"a"), (c, b"a"))
    b = run(changes)
    w.apply(b)
    assert w.sec.snapshot() == w.src.snapshot()
    assert w.sec.children(STAGING) == []

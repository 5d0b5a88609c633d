"""The agent's index when several agents share one secondary root (one daemon per brick)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from georep.apply.index import Index
from georep.model import Kind


def _open_and_write(path: str, barrier: Any, n: int, out: Any) -> None:
    barrier.wait()  # every process opens the fresh file at the same moment
    try:
        idx = Index(Path(path), scope=f"brick:{os.getpid()}")
        for _ in range(n):
            idx.put_name(os.urandom(16), b"name", os.urandom(16))
        idx.close()
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(repr(exc))
        return
    out.put("")


def test_agents_opening_a_fresh_index_together_all_succeed(tmp_path: Path) -> None:
    """Switching a new index to WAL raced: SQLite does not wait on its busy handler for it.

    Seen in CI as a brick daemon going faulty with "database is locked" when two daemons of a
    distributed volume started together.  Each round starts three agents on a new file.
    """

    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    rows = 0
    for rnd in range(30):
        path = tmp_path / f"index-{rnd}.db"
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(str(path), barrier, 50, out)) for _ in range(3)]
        for p in procs:
            p.start()
        failures += [r for r in (out.get(timeout=120) for _ in procs) if r]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        idx = Index(path)
        rows += idx.count_names()
        idx.close()
    assert failures == []
    assert rows == 30 * 3 * 50


def test_inode_numbers_of_all_64_bits_are_kept(tmp_path: Path) -> None:
    """A GlusterFS FUSE secondary gives inode numbers of 2**63 and more (SQLite integers are signed)."""

    idx = Index(tmp_path / "index.db")
    for ino in (2**64 - 1, 2**63, 5):
        oid = ino.to_bytes(16, "big")
        idx.put_obj(oid, Kind.FILE, 1, 2, 0o644, ino)
        obj = idx.obj(oid)
        assert obj is not None and obj.ino == ino
    idx.close()


def test_a_transaction_sqlite_already_rolled_back_is_not_committed_again(tmp_path: Path) -> None:
    """A COMMIT that fails for a full disk leaves SQLite with no transaction; close must not then fail.

    Seen when large files went around the page cache: the disk filled at a COMMIT, the agent
    reported "disk full", and closing the index raised "cannot commit - no transaction is
    active", an internal error that hid the clear one.
    """

    idx = Index(tmp_path / "index.db")
    idx.put_name(b"p" * 16, b"kept", b"i" * 16)
    idx.commit()
    idx.put_name(b"p" * 16, b"lost", b"j" * 16)
    assert idx.in_transaction
    idx._db.execute("ROLLBACK")  # what SQLite does by itself after SQLITE_FULL
    idx.commit()  # raised before
    assert not idx.in_transaction
    idx.put_name(b"p" * 16, b"after", b"k" * 16)  # a new transaction starts as usual
    idx.close()
    again = Index(tmp_path / "index.db")
    assert again.occupant(b"p" * 16, b"kept") == b"i" * 16
    assert again.occupant(b"p" * 16, b"lost") is None
    assert again.occupant(b"p" * 16, b"after") == b"k" * 16
    again.close()


def test_a_sweep_finds_every_stale_name_once_across_pages(tmp_path: Path) -> None:
    """The sweep reads stale names in pages of 500, in key order, while its caller deletes them.

    1,300 stale names under three parents (more than two pages) and 700 confirmed ones in
    between: each stale name comes exactly once and no confirmed one comes at all.  Also
    the case the paging must survive: the caller drops a name the sweep has not reached yet.
    """

    idx = Index(tmp_path / "index.db", scope="s")
    parents = [bytes([k]) * 16 for k in (1, 2, 3)]
    stale = {(parents[k % 3], b"old-%05d" % k, os.urandom(16)) for k in range(1300)}
    for p, n, oid in stale:
        idx.put_name(p, n, oid)
    idx.commit()
    idx.new_generation()
    kept = {(parents[k % 3], b"new-%05d" % k) for k in range(700)}
    for p, n in kept:
        idx.put_name(p, n, os.urandom(16))
    ahead = max(stale)  # the last key: dropped once the sweep has started, before it gets there
    seen = []
    for parent, name, oid in idx.stale_names(mirror=True):
        if not seen:
            idx.drop_name(*ahead[:2])
        seen.append((parent, name, oid))
        idx.drop_name(parent, name)
    assert sorted(seen) == sorted(stale - {ahead})
    assert idx.count_stale(True) == 0
    assert idx.count_names() == len(kept)
    idx.close()


def test_an_index_of_an_earlier_version_loses_the_gen_index(tmp_path: Path) -> None:
    """Index files of earlier versions have ``names_by_gen``; opening one drops it (each write paid for it)."""

    path = tmp_path / "index.db"
    Index(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE INDEX names_by_gen ON names (gen)")
    db.commit()
    db.close()
    Index(path).close()
    db = sqlite3.connect(path)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    db.close()
    assert "names_by_gen" not in names
    assert "names_by_id" in names


_IDS = [bytes([i]) * 16 for i in range(1, 7)]
_NAMES = [b"a", b"b", b"c"]
_op = st.one_of(
    st.tuples(st.just("put_obj"), st.sampled_from(_IDS), st.integers(0, 3)),
    st.tuples(st.just("put_name"), st.sampled_from(_IDS[:3]), st.sampled_from(_NAMES), st.sampled_from(_IDS)),
    st.tuples(st.just("drop_name"), st.sampled_from(_IDS[:3]), st.sampled_from(_NAMES)),
    st.tuples(st.just("move_name"), st.sampled_from(_NAMES), st.sampled_from(_NAMES), st.sampled_from(_IDS)),
    st.tuples(st.just("touch"), st.sampled_from(_IDS[:3]), st.sampled_from(_NAMES)),
    st.tuples(st.just("reassign"), st.sampled_from(_IDS), st.sampled_from(_IDS)),
    st.tuples(st.just("obj"), st.sampled_from(_IDS)),
    st.tuples(st.just("occupant"), st.sampled_from(_IDS[:3]), st.sampled_from(_NAMES)),
    st.tuples(st.just("names_of"), st.sampled_from(_IDS)),
    st.tuples(st.just("children"), st.sampled_from(_IDS[:3])),
    st.tuples(st.just("commit")),
)


def _apply(idx: Index, op: tuple[Any, ...]) -> object:
    """What ``op`` returns, or the error it raises (both indexes must raise the same one)."""

    try:
        return _call(idx, op)
    except sqlite3.IntegrityError as exc:  # reassign to an id in use: refused by the schema
        return ("IntegrityError", str(exc))


def _call(idx: Index, op: tuple[Any, ...]) -> object:
    name, *args = op
    if name == "put_obj":
        oid, size = args
        return idx.put_obj(oid, Kind.FILE, size, 7, 0o644, size + 100)
    if name == "move_name":
        old, new, oid = args
        return idx.move_name((_IDS[0], old), (_IDS[1], new), oid)
    result = getattr(idx, name)(*args)
    return sorted(result) if isinstance(result, list) else result


def _tables(idx: Index) -> tuple[list[Any], list[Any]]:
    db = idx._db
    return (db.execute("SELECT * FROM objects ORDER BY id").fetchall(),
            db.execute("SELECT * FROM names ORDER BY parent, name").fetchall())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=60), held=st.integers(2, 5))
def test_rows_held_back_read_and_write_as_if_written_at_once(tmp_path: Path, ops: list[tuple[Any, ...]],
                                                             held: int) -> None:
    """`put_obj` and `put_name` hold rows back for one executemany: no other statement may tell.

    The same operations go to an index that writes every row at once (``rows_held`` 1) and to
    one that holds up to ``held`` rows; every read and both tables at the end must agree.
    """

    d = tmp_path / os.urandom(4).hex()
    d.mkdir()
    now, held_back = Index(d / "now.db"), Index(d / "held.db")
    now.rows_held, held_back.rows_held = 1, held
    now.gen = held_back.gen = 5
    try:
        for op in ops:
            assert _apply(held_back, op) == _apply(now, op), op
        expected = _tables(now)
        assert _tables(held_back) == expected
        for op in ops:  # once more, then closed with the rows still held
            _apply(held_back, op)
            _apply(now, op)
        expected = _tables(now)
    finally:
        now.close()
        held_back.close()
    reopened = Index(d / "held.db")
    try:
        assert _tables(reopened) == expected  # close wrote what was held back
    finally:
        reopened.close()


_op_ahead = st.one_of(
    _op,
    st.tuples(st.just("look_ahead"), st.lists(st.sampled_from(_IDS), max_size=8)),
    st.tuples(st.just("drop_subtree"), st.sampled_from(_IDS[:3])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op_ahead, max_size=60), batch=st.integers(1, 3))
def test_answers_looked_up_ahead_are_those_a_query_would_give(tmp_path: Path, ops: list[tuple[Any, ...]],
                                                              batch: int, monkeypatch: Any) -> None:
    """`look_ahead` may change how `obj` finds its answer, never the answer.

    The same operations go to an index that looks ids up ahead when told to and to one that
    ignores it; every read, whatever was written in between, and both tables must agree.
    """

    monkeypatch.setattr("georep.apply.index.LOOK_AHEAD_IDS", batch)  # several statements per call too
    d = tmp_path / os.urandom(4).hex()
    d.mkdir()
    plain, ahead = Index(d / "plain.db"), Index(d / "ahead.db")
    plain.gen = ahead.gen = 5
    try:
        for op in ops:
            if op[0] == "look_ahead":
                ahead.look_ahead(op[1])
                continue
            assert _apply(ahead, op) == _apply(plain, op), op
        assert _tables(ahead) == _tables(plain)
    finally:
        plain.close()
        ahead.close()


def test_a_commit_drops_what_was_looked_up_ahead(tmp_path: Path) -> None:
    """Once this agent's transaction ends another agent sharing the index may write: a later `obj` asks again."""

    oid = b"\x07" * 16
    mine, other = Index(tmp_path / "index.db"), Index(tmp_path / "index.db")
    try:
        mine.look_ahead([oid, b"\x08" * 16])
        mine.commit()
        other.put_obj(oid, Kind.FILE, 5, 7, 0o644, 42)
        other.commit()
        found = mine.obj(oid)
        assert found is not None and found.ino == 42
    finally:
        mine.close()
        other.close()


def test_an_id_looked_up_ahead_is_answered_once_then_asked_again(tmp_path: Path) -> None:
    """An answer given ahead serves one `obj`; the next one queries (it may be for a later message)."""

    oid, absent = b"\x07" * 16, b"\x09" * 16
    idx = Index(tmp_path / "index.db")
    try:
        idx.put_obj(oid, Kind.DIR, 0, 7, 0o755, 42)
        idx.look_ahead([oid, absent, oid])
        assert idx._ahead.keys() == {oid, absent}
        first = idx.obj(oid)
        assert first is not None and first.kind is Kind.DIR and first.ino == 42
        assert idx.obj(absent) is None
        assert not idx._ahead
        idx._conn.execute("UPDATE objects SET ino=43 WHERE id=?", (oid,))  # behind the index's back
        again = idx.obj(oid)
        assert again is not None and again.ino == 43
    finally:
        idx.close()


def test_each_write_of_objects_drops_what_it_makes_stale(tmp_path: Path) -> None:
    """Looked up ahead, then written by this agent: `obj` gives what was written, never the answer before it."""

    a, b, parent = b"\x0a" * 16, b"\x0b" * 16, b"\x01" * 16
    idx = Index(tmp_path / "index.db")
    try:
        idx.look_ahead([a])
        idx.put_obj(a, Kind.FILE, 5, 7, 0o644, 42)  # was absent
        found = idx.obj(a)
        assert found is not None and found.ino == 42
        idx.put_name(parent, b"x", a)

        idx.look_ahead([a, b])
        idx.reassign(a, b)  # a is now b
        assert idx.obj(a) is None
        moved = idx.obj(b)
        assert moved is not None and moved.ino == 42

        idx.look_ahead([b])
        idx.drop_name(parent, b"x")  # its last name: the object goes
        assert idx.obj(b) is None

        idx.put_obj(b, Kind.DIR, 0, 7, 0o755, 50)
        idx.put_name(parent, b"d", b)
        idx.put_obj(a, Kind.FILE, 5, 7, 0o644, 51)
        idx.put_name(b, b"f", a)
        idx.look_ahead([a])
        idx.drop_subtree(b)  # a was below b
        assert idx.obj(a) is None
    finally:
        idx.close()

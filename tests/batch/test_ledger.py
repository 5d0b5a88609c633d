"""The sender's ledger on its own: verdicts, what DONE answers do to it, its cleanup and its lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from georep.batch.ledger import Ledger, Verdict, meta_digest
from georep.errors import DaemonRunning
from georep.model import ROOT_ID, Entry, Kind, Meta

A, B, C, D = (bytes([i]) * 16 for i in range(1, 5))


def entry(oid: bytes, parent: bytes, name: bytes, kind: Kind = Kind.FILE, *, size: int = 10, mode: int = 0o644,
          mtime: int = 1, nlink: int = 1, xattrs: tuple[tuple[bytes, bytes], ...] = ()) -> Entry:
    return Entry(oid, parent, name, kind, Meta(mode, 0, 0, mtime, xattrs), size=size, nlink=nlink)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path, b"/src", "ssh://h/dst", "")
    yield led
    led.close()


def test_every_replicated_field_is_in_the_digest() -> None:
    base = entry(A, ROOT_ID, b"f", xattrs=((b"user.a", b"1"),))
    variants = [
        entry(A, ROOT_ID, b"f", size=11, xattrs=((b"user.a", b"1"),)),
        entry(A, ROOT_ID, b"f", mode=0o600, xattrs=((b"user.a", b"1"),)),
        entry(A, ROOT_ID, b"f", mtime=2, xattrs=((b"user.a", b"1"),)),
        entry(A, ROOT_ID, b"f", xattrs=((b"user.a", b"2"),)),
        entry(A, ROOT_ID, b"f", xattrs=((b"user.a1", b""),)),
        entry(A, ROOT_ID, b"f", Kind.FIFO, xattrs=((b"user.a", b"1"),)),
        Entry(A, ROOT_ID, b"f", Kind.FILE, Meta(0o644, 7, 0, 1, ((b"user.a", b"1"),)), size=10),
        Entry(A, ROOT_ID, b"f", Kind.SYMLINK, Meta(0o644, 0, 0, 1, ((b"user.a", b"1"),)), size=10, target=b"x"),
    ]
    digests = {meta_digest(v) for v in variants}
    assert len(digests) == len(variants) and meta_digest(base) not in digests
    assert meta_digest(entry(A, D, b"other name", xattrs=((b"user.a", b"1"),))) == meta_digest(base)


def test_verdicts(ledger: Ledger) -> None:
    f = entry(A, ROOT_ID, b"f")
    assert ledger.verdict(f) is Verdict.NEW
    ledger.entry_done(f)
    assert ledger.verdict(f) is Verdict.SAME
    assert ledger.verdict(entry(A, ROOT_ID, b"f", size=99)) is Verdict.CHANGED  # data or metadata changed
    assert ledger.verdict(entry(B, ROOT_ID, b"f")) is Verdict.CHANGED  # another object at the name
    assert ledger.verdict(entry(A, ROOT_ID, b"g")) is Verdict.MOVED  # only its name changed
    assert ledger.verdict(entry(A, ROOT_ID, b"g", mode=0o600)) is Verdict.NEW  # renamed and changed: whole
    assert ledger.verdict(entry(A, ROOT_ID, b"g", nlink=2)) is Verdict.NEW  # hard-linked: never a bare move
    root = Entry(ROOT_ID, ROOT_ID, b"", Kind.DIR, Meta(0o755, 0, 0, 5, ()))
    assert ledger.verdict(root) is Verdict.CHANGED
    ledger.entry_done(root)
    assert ledger.verdict(root) is Verdict.SAME
    assert ledger.count(ROOT_ID) == 1  # the root has no name of its own


def test_a_rename_forgets_the_old_name_but_a_hard_linked_object_keeps_them(ledger: Ledger) -> None:
    ledger.entry_done(entry(A, ROOT_ID, b"old"))
    ledger.entry_done(entry(A, ROOT_ID, b"new"))
    assert list(ledger.names_in(ROOT_ID)) == [(b"new", A)]
    ledger.entry_done(entry(B, ROOT_ID, b"h1", nlink=2))
    ledger.link_done(B, ROOT_ID, b"h2")
    ledger.entry_done(entry(B, ROOT_ID, b"h3", nlink=2))  # the agent may have moved either name
    assert sorted(ledger.names_in(ROOT_ID)) == [(b"h1", B), (b"h2", B), (b"h3", B), (b"new", A)]
    ledger.remove_done(B, ROOT_ID, b"h1")
    ledger.remove_done(A, ROOT_ID, b"h2")  # not A's name: nothing happens
    assert sorted(ledger.names_in(ROOT_ID)) == [(b"h2", B), (b"h3", B), (b"new", A)]


def test_gc_forgets_unnamed_objects_and_what_was_below_a_removed_directory(ledger: Ledger) -> None:
    ledger.entry_done(entry(D, ROOT_ID, b"dir", Kind.DIR))
    ledger.entry_done(entry(A, D, b"sub", Kind.DIR))
    ledger.entry_done(entry(B, A, b"deep"))
    ledger.entry_done(entry(C, D, b"moved-out-later"))
    ledger.entry_done(entry(C, ROOT_ID, b"moved-out"))  # C now lives at the top
    ledger.remove_done(D, ROOT_ID, b"dir")
    ledger.seal(b"t" * 16)
    assert list(ledger.names_in(ROOT_ID)) == [(b"moved-out", C)]
    assert list(ledger.names_in(D)) == [] and list(ledger.names_in(A)) == []
    assert ledger.verdict(entry(B, A, b"deep")) is Verdict.NEW  # B is forgotten with its directory
    assert ledger.verdict(entry(C, ROOT_ID, b"moved-out")) is Verdict.SAME
    assert ledger.token == b"t" * 16


def test_a_replaced_object_is_forgotten_once_nothing_names_it(ledger: Ledger) -> None:
    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.entry_done(entry(B, ROOT_ID, b"f"))  # rsync's temp name renamed over f: a new object
    ledger.seal(b"")
    assert ledger.verdict(entry(A, ROOT_ID, b"elsewhere")) is Verdict.NEW
    assert ledger.token == b""


def test_forget_starts_over(ledger: Ledger) -> None:
    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.seal(b"t" * 16)
    ledger.forget()
    assert ledger.token == b"" and ledger.count(ROOT_ID) == 0


def _has_names_by_id(led: Ledger) -> bool:
    row = led._db.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='names_by_id'").fetchone()
    return row is not None


def test_a_rebuild_makes_the_by_id_index_once_at_the_end(tmp_path: Path, ledger: Ledger) -> None:
    """Dropped while the rebuild writes its rows, made again when it is sealed, or on the next open
    if the run ended without a seal; a rename found by id works on what the rebuild wrote."""

    ledger.forget()
    assert not _has_names_by_id(ledger)
    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.seal(b"t" * 16)
    assert _has_names_by_id(ledger)
    assert ledger.verdict(entry(A, ROOT_ID, b"g")) is Verdict.MOVED
    ledger.forget()
    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.close()  # the run failed before its seal
    again = Ledger(tmp_path, b"/src", "ssh://h/dst", "")
    try:
        assert _has_names_by_id(again)
    finally:
        again.close()


def test_two_runs_cannot_share_a_ledger(tmp_path: Path, ledger: Ledger) -> None:
    with pytest.raises(DaemonRunning, match="another georep-sync run"):
        Ledger(tmp_path, b"/src", "ssh://h/dst", "")
    other = Ledger(tmp_path, b"/src", "ssh://h/other", "")  # another secondary: its own ledger
    other.close()


def test_a_rebuild_is_committed_once_when_sealed(ledger: Ledger) -> None:
    """Between `forget` and `seal` nothing is committed: only a sealed rebuild counts (it carries the token).

    Another connection sees what a process killed at that point would leave: no token (the next
    run forgets the ledger and rebuilds it), whatever rows were written.
    """

    import sqlite3

    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.seal(b"t" * 16)
    ledger.forget()
    names = [entry(bytes([1, i >> 8, i & 255]) + bytes(13), ROOT_ID, b"n%d" % i) for i in range(5000)]
    for e in names:
        ledger.entry_done(e)  # (held rows are written every 2,000 entries)
    reader = sqlite3.connect(ledger.path)
    try:
        committed = reader.execute("SELECT count(*) FROM names").fetchone()[0]
        token = reader.execute("SELECT value FROM about WHERE key='token'").fetchone()
        assert committed == 0 and token is None
        ledger.seal(b"u" * 16)
        assert reader.execute("SELECT count(*) FROM names").fetchone()[0] == 5000
    finally:
        reader.close()
    assert ledger.token == b"u" * 16


def test_settle_writes_ahead_and_seal_still_decides(ledger: Ledger) -> None:
    """`settle` (while the agent finishes) writes what is held and the by-id index; entries answered
    after it are kept too, and the ledger counts only once sealed."""

    import sqlite3

    ledger.forget()
    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.settle()
    reader = sqlite3.connect(ledger.path)
    try:
        assert reader.execute("SELECT count(*) FROM names").fetchone()[0] == 1
        assert reader.execute("SELECT value FROM about WHERE key='token'").fetchone() is None
        assert _has_names_by_id(ledger)
        ledger.entry_done(entry(B, ROOT_ID, b"g"))  # an answer that came after
        ledger.seal(b"t" * 16)
        assert reader.execute("SELECT count(*) FROM names").fetchone()[0] == 2
    finally:
        reader.close()
    assert ledger.token == b"t" * 16
    assert ledger.verdict(entry(B, ROOT_ID, b"h")) is Verdict.MOVED  # found by id


# -- look_ahead: the verdicts of a rerun from one query per few hundred names ---------------------

_IDS = (A, B, C, D)
_PARENTS = (ROOT_ID, D)
_NAMES = (b"a", b"b", b"c")


def _some_entry(oid: bytes, parent: bytes, name: bytes, mtime: int, kind: Kind) -> Entry:
    return entry(oid, parent, name, kind, mtime=mtime)


_entries = st.builds(_some_entry, st.sampled_from(_IDS), st.sampled_from(_PARENTS), st.sampled_from(_NAMES),
                     st.integers(1, 2), st.sampled_from((Kind.FILE, Kind.DIR)))
_ops = st.lists(st.one_of(
    st.tuples(st.just("entry_done"), _entries),
    st.tuples(st.just("link_done"), st.sampled_from(_IDS), st.sampled_from(_PARENTS), st.sampled_from(_NAMES)),
    st.tuples(st.just("remove_done"), st.sampled_from(_IDS), st.sampled_from(_PARENTS), st.sampled_from(_NAMES)),
    st.tuples(st.just("gc")),
    st.tuples(st.just("look_ahead"), st.sampled_from(_PARENTS), st.lists(st.sampled_from(_NAMES), unique=True)),
    st.tuples(st.just("verdict"), _entries),
), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_look_ahead_changes_how_a_verdict_is_found_never_what_it_is(tmp_path_factory: pytest.TempPathFactory,
                                                                    ops: list[tuple[object, ...]]) -> None:
    where = tmp_path_factory.mktemp("ahead")
    plain, ahead = (Ledger(where / name, b"/src", "ssh://h/dst", "") for name in ("plain", "ahead"))
    try:
        for op in ops:
            if op[0] == "look_ahead":
                ahead.look_ahead(op[1], list(op[2]))  # type: ignore[arg-type]
            elif op[0] == "verdict":
                assert ahead.verdict(op[1]) is plain.verdict(op[1])  # type: ignore[arg-type]
            else:
                for led in (plain, ahead):
                    getattr(led, str(op[0]))(*op[1:])
    finally:
        plain.close()
        ahead.close()


def _queries(ledger: Ledger) -> list[str]:
    """The statements ``ledger`` runs from now on (SQLite gives them with their parameters in place)."""

    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    return seen


def test_verdicts_looked_up_ahead_need_no_query_of_their_own(ledger: Ledger) -> None:
    names = [b"f%d" % i for i in range(1200)]  # more than one query's worth
    for i, name in enumerate(names[:1000]):
        ledger.entry_done(entry(bytes([1 + i % 200, i // 200]) * 8, ROOT_ID, name))
    ledger.commit()
    seen = _queries(ledger)
    ledger.look_ahead(ROOT_ID, names)
    assert len([q for q in seen if q.startswith("SELECT")]) == 3  # 500 names per query
    seen.clear()
    verdicts = [ledger.verdict(entry(bytes([1 + i % 200, i // 200]) * 8, ROOT_ID, name))
                for i, name in enumerate(names)]
    assert verdicts == [Verdict.SAME] * 1000 + [Verdict.NEW] * 200
    assert [q for q in seen if " AND n.name=" in q] == []  # no per-entry query
    assert len([q for q in seen if "FROM objects WHERE id=" in q]) == 200  # NEW: is it a rename? (as before)
    seen.clear()
    ledger.verdict(entry(A, ROOT_ID, names[0]))  # an answer serves once: asked again, it is looked up
    assert len([q for q in seen if " AND n.name=" in q]) == 1


@pytest.mark.parametrize("write", ["entry_done", "link_done", "remove_done", "gc", "forget"])
def test_every_write_drops_the_answers_looked_up_ahead(ledger: Ledger, write: str) -> None:
    """Each write below changes the verdict of a name looked up ahead: the verdict follows the write."""

    ledger.entry_done(entry(A, ROOT_ID, b"f"))
    ledger.entry_done(entry(B, ROOT_ID, b"g", nlink=2))
    ledger.look_ahead(ROOT_ID, [b"f", b"g", b"h"])
    if write == "entry_done":
        ledger.entry_done(entry(C, ROOT_ID, b"h"))
        assert ledger.verdict(entry(C, ROOT_ID, b"h")) is Verdict.SAME  # was NEW when looked up
    elif write == "link_done":
        ledger.link_done(B, ROOT_ID, b"h")
        assert ledger.verdict(entry(B, ROOT_ID, b"h", nlink=2)) is Verdict.SAME
    elif write == "remove_done":
        ledger.remove_done(A, ROOT_ID, b"f")
        assert ledger.verdict(entry(A, ROOT_ID, b"f")) is Verdict.MOVED  # the object is known, the name not
    elif write == "gc":
        ledger.entry_done(entry(D, ROOT_ID, b"dir", Kind.DIR))
        ledger.entry_done(entry(C, D, b"below"))
        ledger.remove_done(D, ROOT_ID, b"dir")
        ledger.look_ahead(D, [b"below"])
        ledger.gc()  # the directory is gone, and what was below it
        assert ledger.verdict(entry(C, D, b"below")) is Verdict.NEW
    else:
        ledger.forget()
        assert ledger.verdict(entry(B, ROOT_ID, b"g", nlink=2)) is Verdict.NEW
        ledger.look_ahead(ROOT_ID, [b"f"])
        ledger.entry_done(entry(A, ROOT_ID, b"f", mtime=9))  # held for the rebuild, written at the verdict
        assert ledger.verdict(entry(A, ROOT_ID, b"f", mtime=9)) is Verdict.SAME

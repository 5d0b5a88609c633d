"""`georep.sqlrows.insert_rows` leaves a table as ``executemany`` would, in fewer statements."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from georep import sqlrows
from georep.sqlrows import insert_rows

SCHEMAS = {
    "without rowid": "CREATE TABLE t (k BLOB NOT NULL, n INTEGER NOT NULL, v BLOB, PRIMARY KEY (k, n)) WITHOUT ROWID",
    "rowid": "CREATE TABLE t (k BLOB NOT NULL, n INTEGER NOT NULL, v BLOB, UNIQUE (k, n))",
}
REPLACE = "INSERT OR REPLACE INTO t(k, n, v) VALUES (?,?,?)"

rows_strategy = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"\x00", b"\xff" * 16]), st.integers(0, 3),
              st.one_of(st.none(), st.binary(max_size=8), st.integers(-(2**63), 2**63 - 1))),
    max_size=40,
)


def _db(schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(schema)
    return db


def _table(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    return sorted(db.execute("SELECT k, n, v FROM t").fetchall(), key=repr)


@settings(max_examples=300, deadline=None)
@given(rows=rows_strategy, per_statement=st.integers(1, 7), schema=st.sampled_from(sorted(SCHEMAS)))
def test_replacing_rows_end_as_executemany_leaves_them(
        rows: list[tuple[bytes, int, object]], per_statement: int, schema: str) -> None:
    """Later rows of a key replace earlier ones, within a statement and across statements."""

    want, got = _db(SCHEMAS[schema]), _db(SCHEMAS[schema])
    want.executemany(REPLACE, rows)
    saved = sqlrows.ROWS_PER_STATEMENT
    sqlrows.ROWS_PER_STATEMENT = per_statement  # small chunks: every boundary case in a few rows
    try:
        insert_rows(got, REPLACE, rows)
    finally:
        sqlrows.ROWS_PER_STATEMENT = saved
    assert _table(got) == _table(want)


def test_a_duplicate_key_in_a_plain_insert_fails_as_in_executemany() -> None:
    rows = [(b"a", 1, None), (b"b", 1, None), (b"a", 1, b"again")]
    with pytest.raises(sqlite3.IntegrityError):
        _db(SCHEMAS["rowid"]).executemany("INSERT INTO t(k, n, v) VALUES (?,?,?)", rows)
    got = _db(SCHEMAS["rowid"])
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(got, "INSERT INTO t(k, n, v) VALUES (?,?,?)", rows)
    assert _table(got) == []  # the failed statement kept nothing (its rows were all in it)


def test_wide_rows_stay_within_the_oldest_parameter_limit() -> None:
    """1,000 rows of the index's 8 columns, on a connection held to SQLite's old 999 parameters."""

    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE w (a, b, c, d, e, f, g, h)")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    rows = [tuple(range(i, i + 8)) for i in range(1000)]
    insert_rows(db, "INSERT INTO w(a, b, c, d, e, f, g, h) VALUES (?,?,?,?,?,?,?,?)", rows)
    assert db.execute("SELECT count(*), sum(a), sum(h) FROM w").fetchone() == (1000, 499500, 499500 + 7000)


def test_many_rows_go_in_few_statements() -> None:
    db = _db(SCHEMAS["without rowid"])
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    insert_rows(db, REPLACE, [(b"k", i, None) for i in range(300)])
    assert len(statements) == 3  # 128 + 128 + 44
    assert db.execute("SELECT count(*) FROM t").fetchone() == (300,)


def test_no_rows_run_no_statement() -> None:
    db = _db(SCHEMAS["rowid"])
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    insert_rows(db, REPLACE, [])
    assert statements == []


@pytest.mark.parametrize("statement", [
    "INSERT INTO t(k, n, v) SELECT 1, 2, 3",
    "INSERT INTO t(k, n, v) VALUES (?,?,?), (?,?,?)",
    "UPDATE t SET v=? WHERE k=?",
    "INSERT INTO t(k, n, v) VALUES (?, 2, ?)",
])
def test_only_a_one_row_insert_of_parameters_is_taken(statement: str) -> None:
    with pytest.raises(ValueError, match="one-row INSERT"):
        insert_rows(_db(SCHEMAS["rowid"]), statement, [(1, 2, 3)])


def test_a_row_of_the_wrong_width_is_refused_before_it_is_written() -> None:
    db = _db(SCHEMAS["rowid"])
    with pytest.raises(ValueError, match="a row of 2 values for a statement of 3"):
        insert_rows(db, REPLACE, [(b"a", 1, None), (b"b", 2)])
    with pytest.raises(ValueError, match="a row of 4 values for a statement of 3"):
        insert_rows(db, REPLACE, [(b"a", 1, None, 4), (b"b", 2)])
    assert _table(db) == []

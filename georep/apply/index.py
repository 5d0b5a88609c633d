"""The secondary's index: which id holds which name, kept on disk in ``ROOT/.georep/index.db``.

Why an index at all: the sender addresses objects by id (gfid), never by path, so that
a rename is one ``rename()`` found by id and a directory rename of 100,000 entries is a
single operation.  The index maps id → names (``parent id, name``) and id → what the
agent last published (kind, size, mtime, inode), so that a rerun can tell "already
there" from "needs data" without reading file contents.

It lives in SQLite (WAL) rather than in dicts: tens of millions of entries are the
design point and memory must stay flat.  Each row of ``names`` carries the session
generation that last confirmed it; at the end of a full crawl, rows of older
generations are names the source no longer has.

The index is a cache of the truth on disk, never trusted blindly: before acting on a
row the agent checks the inode it recorded (see `georep.apply.agent`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from georep.model import Kind, ino_from_sql, ino_to_sql, record
from georep.sqlrows import insert_rows

#: Pseudo parent of objects moved aside into the staging directory.
STAGING_ID = b"\xff" * 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    xhash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (
    parent BLOB NOT NULL,
    name BLOB NOT NULL,
    id BLOB NOT NULL,
    gen INTEGER NOT NULL,
    src TEXT NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS names_by_id ON names (id);
DROP INDEX IF EXISTS names_by_gen;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS scopes (scope TEXT PRIMARY KEY, epoch INTEGER NOT NULL, token BLOB);
CREATE TABLE IF NOT EXISTS writers (pid INTEGER PRIMARY KEY, scope TEXT NOT NULL);
"""


#: Rows `Index.put_obj` and `Index.put_name` hold back at most, per table.
ROWS_HELD = 512

#: Ids per statement of `Index.look_ahead` (SQLite before 3.32 allows 999 parameters).
LOOK_AHEAD_IDS = 500

#: Seconds a statement waits for another agent's write transaction on the same root.
BUSY_TIMEOUT = 60.0
#: A write transaction is committed once it is this old (see `Index.commit_if_due`) ...
COMMIT_AFTER_S = 0.5
#: ... or holds this many writes.
COMMIT_AFTER_WRITES = 50_000


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL (persistent: later opens find it so), waiting out other openers.

    Several agents open one index when several brick daemons share a secondary.  Changing
    the journal mode needs the file to itself, and SQLite does not call its busy handler
    for that: an agent starting beside another one got "database is locked" at once.  So
    the switch is retried here, for as long as any other statement would wait.
    """

    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.005
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        else:
            if str(mode).lower() == "wal":
                return
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError("database is locked (switching it to WAL)")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


@dataclass(frozen=True, slots=True)
class SessionClaim:
    """What a session learnt of its scope when it started (see `Index.start_session`)."""

    epoch: int
    token: bytes  # the token issued before this session (now withdrawn), b"" if none
    overlapped: bool  # another writer of the scope was running when this one started


@record
class Obj:
    id: bytes
    kind: Kind
    size: int
    mtime_ns: int
    mode: int
    ino: int
    gen: int
    xhash: bytes  # digest of the xattrs last applied (see agent.xattr_digest)


class Index:
    """Id ↔ name bookkeeping for one secondary root."""

    def __init__(self, path: Path, scope: str = "") -> None:
        #: the source this session speaks for: a mirror sweep removes only its own names
        self.scope = scope
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
        #: rows of `put_obj` and `put_name` not yet written (see `_db`)
        self._objs: list[tuple[bytes, int, int, int, int, int, int, bytes]] = []
        self._names: list[tuple[bytes, bytes, bytes, int, str]] = []
        self.rows_held = ROWS_HELD
        _use_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._in_tx = False
        #: `look_ahead`'s answers, each given once by `obj` (emptied by any other write of objects)
        self._ahead: dict[bytes, Obj | None] = {}
        self._tx_started = 0.0
        self._pending = 0
        self.gen = self.new_generation()

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, once the rows `put_obj` and `put_name` hold back are written.

        Why hold them back: the agent records the files of a written batch one after the
        other, and writing the lot per table, many rows per statement (`georep.sqlrows`),
        costs less than a statement per row.  Every other use of the connection goes through
        here, so every statement still runs after the rows put before it, as if they had been
        written at once.
        """

        if self._objs or self._names:
            self._write_rows()
        return self._conn

    def _write_rows(self) -> None:
        objs, names, self._objs, self._names = self._objs, self._names, [], []
        if objs:
            insert_rows(self._conn, "INSERT OR REPLACE INTO objects(id, kind, size, mtime_ns, mode, ino, gen, xhash)"
                        " VALUES (?,?,?,?,?,?,?,?)", objs)
        if names:
            insert_rows(self._conn, "INSERT OR REPLACE INTO names(parent, name, id, gen, src) VALUES (?,?,?,?,?)",
                        names)

    def new_generation(self) -> int:
        """Start a new generation: names confirmed from now on are told apart from older ones."""

        self.begin()
        row = self._db.execute("SELECT value FROM settings WHERE key='gen'").fetchone()
        gen = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('gen', ?)", (gen,))
        self.commit()
        self.gen = gen
        return gen

    # -- sessions of a scope, and the tokens that let a sender trust its record ----------
    #
    # A sender that keeps a ledger of what it sent (georep.batch.ledger) may skip, on its
    # next run, everything unchanged since: but only if nothing else wrote this scope in
    # between.  Every session of a scope bumps the scope's epoch and withdraws its token
    # when it starts; at the end the agent issues a new token only to a session that no
    # other one overlapped (none still running when it started, none started since).

    def start_session(self, alive: Callable[[int], bool]) -> SessionClaim:
        """Register this process as a writer of the scope; returns what `seal` needs."""

        self.begin()
        row = self._db.execute("SELECT epoch, token FROM scopes WHERE scope=?", (self.scope,)).fetchone()
        epoch = (row[0] if row else 0) + 1
        token = bytes(row[1]) if row and row[1] is not None else b""
        self._db.execute("INSERT OR REPLACE INTO scopes(scope, epoch, token) VALUES (?,?,NULL)", (self.scope, epoch))
        others = self._other_writers(alive)
        self._db.execute("INSERT OR REPLACE INTO writers(pid, scope) VALUES (?,?)", (os.getpid(), self.scope))
        self.commit()
        return SessionClaim(epoch, token, overlapped=bool(others))

    def _other_writers(self, alive: Callable[[int], bool]) -> list[int]:
        rows = self._db.execute("SELECT pid FROM writers WHERE scope=? AND pid != ?", (self.scope, os.getpid()))
        live = []
        for (pid,) in rows.fetchall():
            if alive(pid):
                live.append(pid)
            else:
                self._db.execute("DELETE FROM writers WHERE pid=?", (pid,))
        return live

    def seal(self, claim: SessionClaim, alive: Callable[[int], bool]) -> bytes:
        """A new token for this scope if no other session overlapped this one, else b""."""

        self.begin()
        row = self._db.execute("SELECT epoch FROM scopes WHERE scope=?", (self.scope,)).fetchone()
        token = b""
        if not claim.overlapped and row is not None and row[0] == claim.epoch and not self._other_writers(alive):
            token = os.urandom(16)
            self._db.execute("UPDATE scopes SET token=? WHERE scope=?", (token, self.scope))
        self.commit()
        return token

    def end_session(self) -> None:
        self.begin()
        self._db.execute("DELETE FROM writers WHERE pid=?", (os.getpid(),))
        self.commit()

    # -- transactions: many small writes are grouped; commit() makes them durable ----
    #
    # Each commit writes every page it touched to the WAL, and rows keyed by random ids touch
    # pages all over the B-trees: committing after every read of the agent's input (about
    # 170 commits for 20,000 small files) wrote 75,000 pages.  A transaction is now committed
    # at Finish, Seal and Bye, or once it is COMMIT_AFTER_S old (other agents sharing this
    # index wait for the write lock meanwhile) or holds COMMIT_AFTER_WRITES writes.  Nothing
    # relies on a row being durable before Finish: a crash before it loses rows of objects
    # that are on disk, and the next session adopts those by size and mtime, without data.

    def begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            self._tx_started = time.monotonic()

    def commit(self) -> None:
        """Commit the open write transaction, if SQLite still has one.

        After some errors SQLite rolls a transaction back by itself: a COMMIT that failed
        for a full disk (SQLITE_FULL) leaves none.  Committing again then raised "cannot
        commit - no transaction is active" from `close`, and that internal error hid the
        clear "disk full" the agent had already reported.  The rows lost with it describe
        objects that are on disk: the next session adopts them by size and mtime.
        """

        self._ahead.clear()  # other agents may write once the transaction ends
        if not self._in_tx:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._in_tx = self._db.in_transaction
            if not self._in_tx:
                self._pending = 0

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def commit_if_due(self) -> None:
        """Commit a transaction that is old enough that other agents would notice the wait."""

        if self._in_tx and time.monotonic() - self._tx_started >= COMMIT_AFTER_S:
            self.commit()

    def _wrote(self) -> None:
        self._pending += 1
        if self._pending >= COMMIT_AFTER_WRITES:
            self.commit()

    def close(self) -> None:
        self.commit()
        self._db.close()

    # -- reads --------------------------------------------------------------------

    def obj(self, oid: bytes) -> Obj | None:
        ahead = self._ahead
        if ahead and oid in ahead:
            return ahead.pop(oid)
        row = self._db.execute(
            "SELECT kind, size, mtime_ns, mode, ino, gen, xhash FROM objects WHERE id=?", (oid,)
        ).fetchone()
        if row is None:
            return None
        return Obj(oid, Kind(row[0]), row[1], row[2], row[3], ino_from_sql(row[4]), row[5], bytes(row[6]))

    def look_ahead(self, ids: Iterable[bytes]) -> None:
        """Look up many ids at once; `obj` then answers each of them once without a query.

        Why: the agent looks up the id of every entry it is sent, and on a first copy
        every lookup misses.  One statement per id cost ~2 µs of binding and stepping
        (20,000 files: 40 ms of the agent's CPU); one per `LOOK_AHEAD_IDS` ids costs a
        fraction of that.  The answers are taken inside the write transaction, so no
        other agent changes them meanwhile; this agent's own writes of objects drop them
        (`put_obj` its id's, any other write all of them), and so does `commit`.
        """

        self.begin()
        want = [oid for oid in dict.fromkeys(ids) if oid not in self._ahead]
        for i in range(0, len(want), LOOK_AHEAD_IDS):
            chunk = want[i:i + LOOK_AHEAD_IDS]
            found: dict[bytes, Obj | None] = dict.fromkeys(chunk)
            rows = self._db.execute(
                "SELECT id, kind, size, mtime_ns, mode, ino, gen, xhash FROM objects WHERE id IN"
                f" ({','.join('?' * len(chunk))})", chunk)
            for row in rows:
                oid = bytes(row[0])
                found[oid] = Obj(oid, Kind(row[1]), row[2], row[3], row[4], ino_from_sql(row[5]), row[6],
                                 bytes(row[7]))
            self._ahead.update(found)

    def names_of(self, oid: bytes) -> list[tuple[bytes, bytes, int]]:
        """(parent, name, gen) of every name of ``oid``, newest confirmation first."""

        rows = self._db.execute(
            "SELECT parent, name, gen FROM names WHERE id=? ORDER BY gen DESC", (oid,)
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def occupant(self, parent: bytes, name: bytes) -> bytes | None:
        row = self._db.execute("SELECT id FROM names WHERE parent=? AND name=?", (parent, name)).fetchone()
        return None if row is None else bytes(row[0])

    def location(self, oid: bytes) -> tuple[bytes, bytes] | None:
        """One (parent, name) of ``oid``: directories have exactly one."""

        row = self._db.execute("SELECT parent, name FROM names WHERE id=? LIMIT 1", (oid,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def children(self, parent: bytes) -> list[tuple[bytes, bytes]]:
        rows = self._db.execute("SELECT name, id FROM names WHERE parent=?", (parent,)).fetchall()
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def count_names(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM names").fetchone()[0])

    # Stale names are found by scanning, not through an index on ``gen``: such an index
    # made every name written (and every name a rerun confirms) cost a third B-tree
    # update, about 4 µs of the agent's CPU per file (0.47 s against 0.40 s for 20,000
    # files), while the scan it saves runs once per full crawl, which reads every entry
    # of the tree anyway (measured: 0.15 s per scan of 1,000,000 names, page cache warm).
    # Index files of earlier versions lose the index when opened.

    def _stale_where(self, mirror: bool) -> tuple[str, tuple[object, ...]]:
        """This scope's names set aside in staging, plus (mirror) those not confirmed this session."""

        if mirror:
            return "src = ? AND (gen < ? OR parent = ?)", (self.scope, self.gen, STAGING_ID)
        return "src = ? AND parent = ?", (self.scope, STAGING_ID)

    def stale_names(self, mirror: bool) -> Iterator[tuple[bytes, bytes, bytes]]:
        """(parent, name, id) of stale names, in pages, in key order.

        Read in pages so that a huge sweep never sits in memory.  Each page starts after
        the last key of the one before, so the whole sweep is one pass over the table
        however many names are stale; the caller deletes rows as it goes (and nothing
        writes a stale row behind the cursor meanwhile).
        """

        where, args = self._stale_where(mirror)
        after: tuple[bytes, bytes] = (b"", b"")
        while True:
            rows = self._db.execute(
                f"SELECT parent, name, id FROM names WHERE (parent, name) > (?, ?) AND {where}"
                " ORDER BY parent, name LIMIT 500", (*after, *args)
            ).fetchall()
            if not rows:
                return
            after = (bytes(rows[-1][0]), bytes(rows[-1][1]))
            for r in rows:
                yield bytes(r[0]), bytes(r[1]), bytes(r[2])

    def count_stale(self, mirror: bool) -> int:
        where, args = self._stale_where(mirror)
        return int(self._db.execute(f"SELECT count(*) FROM names WHERE {where}", args).fetchone()[0])

    # -- writes -------------------------------------------------------------------

    def put_obj(self, oid: bytes, kind: Kind, size: int, mtime_ns: int, mode: int, ino: int,
                xhash: bytes = b"") -> None:
        self.begin()
        if self._ahead:
            self._ahead.pop(oid, None)
        self._objs.append((oid, int(kind), size, mtime_ns, mode, ino_to_sql(ino), self.gen, xhash))
        if len(self._objs) >= self.rows_held:
            self._write_rows()
        self._wrote()

    def put_name(self, parent: bytes, name: bytes, oid: bytes) -> None:
        self.begin()
        self._names.append((parent, name, oid, self.gen, self.scope))
        if len(self._names) >= self.rows_held:
            self._write_rows()
        self._wrote()

    def move_name(self, old: tuple[bytes, bytes], new: tuple[bytes, bytes], oid: bytes) -> None:
        self.begin()
        self._db.execute("DELETE FROM names WHERE parent=? AND name=?", old)
        self._db.execute(
            "INSERT OR REPLACE INTO names(parent, name, id, gen, src) VALUES (?,?,?,?,?)",
            (*new, oid, self.gen, self.scope),
        )
        self._wrote()

    def reassign(self, old: bytes, new: bytes) -> None:
        """Give object ``old``, its names and its children's parent links the id ``new``."""

        self.begin()
        self._ahead.clear()
        self._db.execute("UPDATE objects SET id=? WHERE id=?", (new, old))
        self._db.execute("UPDATE names SET id=? WHERE id=?", (new, old))
        self._db.execute("UPDATE names SET parent=? WHERE parent=?", (new, old))
        self._wrote()

    def drop_name(self, parent: bytes, name: bytes) -> None:
        """Forget one name; the object goes too once it has no name left."""

        self.begin()
        self._ahead.clear()
        row = self._db.execute("SELECT id FROM names WHERE parent=? AND name=?", (parent, name)).fetchone()
        self._db.execute("DELETE FROM names WHERE parent=? AND name=?", (parent, name))
        if row is not None and oid_unnamed(self._db, row[0]):
            self._db.execute("DELETE FROM objects WHERE id=?", (row[0],))
        self._wrote()

    def drop_subtree(self, oid: bytes) -> None:
        """Forget a directory's descendants (after the tree was removed from disk)."""

        self.begin()
        self._ahead.clear()
        stack = [oid]
        while stack:
            d = stack.pop()
            for name, child in self.children(d):
                stack.append(child)
                self._db.execute("DELETE FROM names WHERE parent=? AND name=?", (d, name))
                if oid_unnamed(self._db, child):
                    self._db.execute("DELETE FROM objects WHERE id=?", (child,))
        self._wrote()

    def touch(self, parent: bytes, name: bytes) -> None:
        self.begin()
        self._db.execute(
            "UPDATE names SET gen=?, src=? WHERE parent=? AND name=?", (self.gen, self.scope, parent, name)
        )
        self._wrote()


def oid_unnamed(db: sqlite3.Connection, oid: bytes) -> bool:
    return db.execute("SELECT 1 FROM names WHERE id=? LIMIT 1", (oid,)).fetchone() is None

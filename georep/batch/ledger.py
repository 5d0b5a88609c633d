"""The sender's ledger of what the secondary confirmed holding: a rerun sends only what changed.

Why
---
A full crawl sends every entry to the agent, which looks each one up in its index and
lstats it: about 90 bytes on the wire and a SQLite lookup per entry even when nothing
changed (20,000 files: 1.6 MB and 1.5 s; tens of millions of files: gigabytes).  The
sender can know what changed without asking, if it remembers what the agent confirmed.

How
---
The ledger is a SQLite file in the state directory, one per (source, secondary, scope),
holding what the agent answered DONE for: ``names`` (parent id, name → id) and
``objects`` (id → kind and a digest of the replicated metadata).  A rerun compares each
crawled entry with it and sends only entries that are new, renamed or changed, links
that are new, and removals of names the source no longer has.  The ledger is written
only from the agent's answers, so it never claims more than the secondary holds; after
a crash it can only lag behind, which costs resends, never losses.

Trust
-----
The ledger is only good while nothing else writes that scope of the secondary.  The
agent hands out a token when a session ends cleanly with nobody else writing the scope
meanwhile (`georep.apply.index`: epochs and writers); any other session withdraws it.
The next run presents the token (``Resume``): valid, it sends the changes alone; not
valid, it sends everything as before and the ledger is rebuilt from the answers.

Removals without a full list: a directory's names on the source are compared with the
ledger only when the listing says something moved there.  If no listed name is new to
the ledger and the count of listed names equals the count of recorded ones, the two sets
are equal (a subset of the same size).  Otherwise the directory is *dirty*: after the
crawl, each recorded name in it is looked up on the source, and a name that is gone
(``ENOENT``, nothing else) is removed on the secondary.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import xxhash

from georep.errors import DaemonRunning, StateError
from georep.model import Entry, Kind, record
from georep.source.crawl import SourceEntry
from georep.sqlrows import insert_rows

_NAMES_BY_ID = "CREATE INDEX IF NOT EXISTS names_by_id ON names (id)"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS names (
    parent BLOB NOT NULL, name BLOB NOT NULL, id BLOB NOT NULL, PRIMARY KEY (parent, name)
) WITHOUT ROWID;
{_NAMES_BY_ID};
CREATE TABLE IF NOT EXISTS objects (id BLOB PRIMARY KEY, kind INTEGER NOT NULL, meta BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS about (key TEXT PRIMARY KEY, value BLOB);
"""

_FIXED = struct.Struct("<BIIIqQQ")
_LEN = struct.Struct("<I")

#: Writes between two commits (the ledger may lag the agent; a commit is never needed for safety).
COMMIT_EVERY = 5000

#: Names per query of `Ledger.look_ahead`, and answers it holds at most (a depth-first crawl
#: reads ahead in every directory on its way down; past this, the older answers go).
LOOKUP_CHUNK = 500
AHEAD_MAX = 8192

#: `Ledger._ahead`: what a name's row was when looked up ahead (None: no row)
_Row = tuple[bytes, bytes | None] | None


def meta_digest(e: Entry) -> bytes:
    """xxh3-128 of everything an entry carries to the secondary except its name."""

    h = xxhash.xxh3_128(_FIXED.pack(int(e.kind), e.meta.mode, e.meta.uid, e.meta.gid, e.meta.mtime_ns, e.size, e.rdev))
    h.update(_LEN.pack(len(e.target)))
    h.update(e.target)
    for k, v in e.meta.xattrs:
        h.update(_LEN.pack(len(k)))
        h.update(k)
        h.update(_LEN.pack(len(v)))
        h.update(v)
    return h.digest()


class Verdict(enum.Enum):
    SAME = "same"  # the secondary holds this object at this name with this metadata
    MOVED = "moved"  # the secondary holds this object with this metadata, under another name
    CHANGED = "changed"  # the name is recorded, but for another object or with other metadata
    NEW = "new"  # the name is not recorded


@record
class Moved:
    """An entry whose only change is its name: it goes as a rename by id (`MoveMsg`)."""

    se: SourceEntry


class Ledger:
    """The sender's ledger of one (source, secondary, scope)."""

    def __init__(self, state_dir: Path, source: bytes, secondary: str, scope: str) -> None:
        key = hashlib.sha256(
            os.path.realpath(source) + b"\0" + secondary.encode("utf-8", "surrogateescape") + b"\0" + scope.encode()
        ).hexdigest()[:24]
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.path = state_dir / f"ledger-{key}.db"
            self._lock = os.open(state_dir / f"ledger-{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"state directory {state_dir} cannot be used: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise DaemonRunning(
                f"another georep-sync run is replicating {os.fsdecode(source)} to {secondary} with this state",
                hint="wait for it to end, or give this run another --state-dir",
            ) from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("CREATE TEMP TABLE dirty (n INTEGER PRIMARY KEY, id BLOB NOT NULL, path BLOB NOT NULL)")
            self._db.execute("CREATE TEMP TABLE orphans (id BLOB PRIMARY KEY) WITHOUT ROWID")
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            self.close()
            raise StateError(f"the ledger {self.path} cannot be used: {exc}") from None
        self._writes = 0
        self._fresh = False
        self._fresh_names: list[tuple[bytes, bytes, bytes]] = []
        self._fresh_objects: list[tuple[bytes, int, bytes]] = []
        #: (parent, name) → its row as `look_ahead` found it; valid until the next write
        self._ahead: dict[tuple[bytes, bytes], _Row] = {}

    # -- trust ----------------------------------------------------------------------

    @property
    def token(self) -> bytes:
        """The token the agent gave when this ledger was last sealed (b"": none, send everything)."""

        row = self._db.execute("SELECT value FROM about WHERE key='token'").fetchone()
        return bytes(row[0]) if row and row[0] is not None else b""

    def forget(self) -> None:
        """Start over: the secondary's state is unknown, the ledger is rebuilt from this run's answers."""

        for table in ("names", "objects", "about", "temp.dirty", "temp.orphans"):
            self._db.execute(f"DELETE FROM {table}")
        # names by id are looked up only after the rebuild (`gc`), so the index is made once
        # then, from the whole table (`seal`, or the next open): kept up to date row by row,
        # it cost a third of the rebuild's writes (measured: 0.15 s for 20,000 entries against
        # 0.13 s without it and 0.008 s to build it at the end)
        self._db.execute("DROP INDEX IF EXISTS names_by_id")
        self.commit()
        self._ahead.clear()
        self._fresh = True

    def settle(self) -> None:
        """Write what is held, make the by-id index and checkpoint, ahead of `seal`.

        Why: called while the sender waits for the agent's last answers (`Sender.finish`),
        this is work the end of a run no longer waits for.  After a first copy of 20,000
        files, `seal` and `close` took 40 ms on tmpfs and 80 ms on ext4 (most of it the
        index, and the checkpoint at close, synced), all after the agent had answered.
        Committing here vouches for nothing: only `seal` stores a token.
        """

        self._flush_fresh()
        self._db.execute(_NAMES_BY_ID)
        self._db.execute("COMMIT")
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what close would do, synced
        self._db.execute("BEGIN")
        self._writes = 0

    def seal(self, token: bytes) -> None:
        """Everything this run did is recorded: keep it, with the agent's token for the next run."""

        self._flush_fresh()
        self._db.execute(_NAMES_BY_ID)  # (dropped by `forget`)
        self.gc()
        self._db.execute("INSERT OR REPLACE INTO about(key, value) VALUES ('token', ?)", (token or None,))
        self.commit()

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._writes = 0

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            try:
                if db.in_transaction:
                    db.execute("COMMIT")
                db.close()
            except sqlite3.Error:
                pass
            self._db = None  # type: ignore[assignment]
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1

    # -- comparing a crawl with the ledger ------------------------------------------------

    def verdict(self, e: Entry) -> Verdict:
        self._flush_fresh()
        if e.id == e.parent:  # the root: no name, only metadata
            root = self._db.execute("SELECT meta FROM objects WHERE id=?", (e.id,)).fetchone()
            return Verdict.SAME if root is not None and bytes(root[0]) == meta_digest(e) else Verdict.CHANGED
        key = (e.parent, e.name)
        if key in self._ahead:
            row = self._ahead.pop(key)
        else:
            row = self._db.execute(
                "SELECT n.id, o.meta FROM names n LEFT JOIN objects o ON o.id = n.id WHERE n.parent=? AND n.name=?",
                (e.parent, e.name),
            ).fetchone()
        digest = meta_digest(e)
        if row is not None and bytes(row[0]) == e.id and row[1] is not None and bytes(row[1]) == digest:
            return Verdict.SAME
        if e.kind is Kind.DIR or e.nlink <= 1:  # a hard-linked object goes whole: see `Rerun.links`
            obj = self._db.execute("SELECT meta FROM objects WHERE id=?", (e.id,)).fetchone()
            if obj is not None and bytes(obj[0]) == digest:
                return Verdict.MOVED
        return Verdict.NEW if row is None else Verdict.CHANGED

    def look_ahead(self, parent: bytes, names: list[bytes]) -> None:
        """Look up the rows of ``names`` in ``parent`` in one go, for the `verdict` of each to come.

        Why: a rerun that finds nothing changed is the crawl and one verdict per entry, and
        one query per entry was a fifth of it (py-spy, 20,000 files: `verdict` 21 % of the
        sender's samples); one query per few hundred names costs a fraction.  An answer is
        used once, and every write to the ledger drops them all (`_wrote`, `_flush_fresh`,
        `forget`): a verdict sees what a query made at its own time would see.
        """

        self._flush_fresh()
        if len(self._ahead) + len(names) > AHEAD_MAX:
            self._ahead.clear()
        ahead = self._ahead
        for i in range(0, len(names), LOOKUP_CHUNK):
            part = names[i:i + LOOKUP_CHUNK]
            for name in part:
                ahead[(parent, name)] = None
            marks = ",".join("?" * len(part))
            for name, oid, meta in self._db.execute(
                    f"SELECT n.name, n.id, o.meta FROM names n LEFT JOIN objects o ON o.id = n.id "
                    f"WHERE n.parent=? AND n.name IN ({marks})", (parent, *part)):
                ahead[(parent, bytes(name))] = (oid, meta)

    def holds(self, oid: bytes, parent: bytes, name: bytes) -> bool:
        """Whether ``parent/name`` is recorded as a name of ``oid``."""

        self._flush_fresh()
        row = self._db.execute("SELECT id FROM names WHERE parent=? AND name=?", (parent, name)).fetchone()
        return row is not None and bytes(row[0]) == oid

    def count(self, parent: bytes) -> int:
        self._flush_fresh()
        return int(self._db.execute("SELECT count(*) FROM names WHERE parent=?", (parent,)).fetchone()[0])

    def mark_dirty(self, did: bytes, path: bytes) -> None:
        self._db.execute("INSERT INTO temp.dirty(id, path) VALUES (?,?)", (did, path))

    def dirty(self) -> Iterator[tuple[bytes, bytes]]:
        """(directory id, path on the source) of every dirty directory, in pages (memory stays flat)."""

        last = 0
        while rows := self._db.execute(
            "SELECT n, id, path FROM temp.dirty WHERE n > ? ORDER BY n LIMIT 500", (last,)
        ).fetchall():
            last = rows[-1][0]
            for _n, did, path in rows:
                yield bytes(did), bytes(path)

    def names_in(self, parent: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(name, id) of every recorded name in ``parent``, in pages."""

        self._flush_fresh()
        after = b""
        while rows := self._db.execute(
            "SELECT name, id FROM names WHERE parent=? AND name > ? ORDER BY name LIMIT 500", (parent, after)
        ).fetchall():
            after = bytes(rows[-1][0])
            for name, oid in rows:
                yield bytes(name), bytes(oid)

    # -- what the agent confirmed ---------------------------------------------------------

    def entry_done(self, e: Entry) -> None:
        """The secondary holds ``e``.

        An object with one name that had one other name was renamed by the agent: that
        name is gone too.  Any other old name (of an object that was hard-linked) stays
        recorded until the removal pass finds it gone from the source and removes it.
        """

        if self._fresh:  # rebuilding after `forget`: every entry comes once, no rename to follow
            if e.parent != e.id:
                self._fresh_names.append((e.parent, e.name, e.id))
            self._fresh_objects.append((e.id, int(e.kind), meta_digest(e)))
            if len(self._fresh_objects) >= 2000:
                self._flush_fresh()
            return
        if e.id != e.parent and (e.kind is Kind.DIR or e.nlink <= 1):
            names = self._db.execute("SELECT parent, name FROM names WHERE id=? LIMIT 2", (e.id,)).fetchall()
            if len(names) == 1 and (bytes(names[0][0]), bytes(names[0][1])) != (e.parent, e.name):
                self._db.execute("DELETE FROM names WHERE parent=? AND name=?", (names[0][0], names[0][1]))
        old = self._db.execute("SELECT id FROM names WHERE parent=? AND name=?", (e.parent, e.name)).fetchone()
        if old is not None and bytes(old[0]) != e.id:
            self._db.execute("INSERT OR IGNORE INTO temp.orphans(id) VALUES (?)", (old[0],))
        if e.parent != e.id:  # the root has no name
            self._db.execute("INSERT OR REPLACE INTO names(parent, name, id) VALUES (?,?,?)", (e.parent, e.name, e.id))
        self._db.execute("INSERT OR REPLACE INTO objects(id, kind, meta) VALUES (?,?,?)",
                         (e.id, int(e.kind), meta_digest(e)))
        self._wrote()

    def _flush_fresh(self) -> None:
        """The rows `entry_done` gathered while rebuilding, many per statement (`georep.sqlrows`).

        Not committed here (only by `settle` and `seal`, at the end): a rebuilt ledger counts
        only once `seal` gave it a token (`forget` removed the old one, durably).  A run that
        ends before that leaves a ledger the next run forgets whatever it holds, so committing
        on the way bought nothing, and it cost: each commit wrote the pages touched since the
        last one again, and checkpoints synced them (ext4 here, 20,000 entries: 0.40 s with a
        commit every 2,000 rows, 0.29 s with one at the end).
        """

        if self._fresh_objects or self._fresh_names:
            self._ahead.clear()
            insert_rows(self._db, "INSERT OR REPLACE INTO names(parent, name, id) VALUES (?,?,?)", self._fresh_names)
            insert_rows(self._db, "INSERT OR REPLACE INTO objects(id, kind, meta) VALUES (?,?,?)", self._fresh_objects)
            self._fresh_names, self._fresh_objects = [], []

    def link_done(self, oid: bytes, parent: bytes, name: bytes) -> None:
        self._flush_fresh()
        old = self._db.execute("SELECT id FROM names WHERE parent=? AND name=?", (parent, name)).fetchone()
        if old is not None and bytes(old[0]) != oid:
            self._db.execute("INSERT OR IGNORE INTO temp.orphans(id) VALUES (?)", (old[0],))
        self._db.execute("INSERT OR REPLACE INTO names(parent, name, id) VALUES (?,?,?)", (parent, name, oid))
        self._wrote()

    def remove_done(self, oid: bytes, parent: bytes, name: bytes) -> None:
        """The secondary no longer holds ``parent/name`` as a name of ``oid``."""

        self._flush_fresh()
        self._db.execute("DELETE FROM names WHERE parent=? AND name=? AND id=?", (parent, name, oid))
        self._db.execute("INSERT OR IGNORE INTO temp.orphans(id) VALUES (?)", (oid,))
        self._wrote()

    def gc(self) -> None:
        """Forget objects left without a name, and what was below such directories."""

        while rows := self._db.execute("SELECT id FROM temp.orphans LIMIT 500").fetchall():
            for (oid,) in rows:
                self._db.execute("DELETE FROM temp.orphans WHERE id=?", (oid,))
                if self._db.execute("SELECT 1 FROM names WHERE id=? LIMIT 1", (oid,)).fetchone() is not None:
                    continue  # still named (moved, or a hard link left)
                row = self._db.execute("SELECT kind FROM objects WHERE id=?", (oid,)).fetchone()
                self._db.execute("DELETE FROM objects WHERE id=?", (oid,))
                if row is not None and row[0] == int(Kind.DIR):
                    self._db.execute("INSERT OR IGNORE INTO temp.orphans(id) SELECT id FROM names WHERE parent=?",
                                     (oid,))
                    self._db.execute("DELETE FROM names WHERE parent=?", (oid,))
                self._wrote()

    def _wrote(self) -> None:
        self._ahead.clear()  # (every write of names and objects ends here)
        self._writes += 1
        if self._writes >= COMMIT_EVERY:
            self.commit()


class Rerun:
    """A crawl seen through the ledger: what to send, and which names to remove afterwards.

    It is the crawler's `georep.source.crawl.ListingObserver`: per directory it notes
    whether a listed name was new to the ledger, and compares the count of listed names
    with the count recorded (see the module's docstring).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        #: directories being listed that showed a name the ledger does not have
        self._new_names: set[bytes] = set()
        #: hard-linked objects sent in this run: all their names go as links, recorded or not
        self._sent_links: set[bytes] = set()
        self.skipped = 0  # entries the ledger says the secondary holds as they are

    def changed(self, entries: Iterator[SourceEntry]) -> Iterator[SourceEntry | Moved]:
        """The crawled entries the secondary does not hold as they are; renames alone as `Moved`."""

        for se in entries:
            e = se.entry
            verdict = self.ledger.verdict(e)
            if verdict is Verdict.SAME:
                self.skipped += 1
                continue
            if verdict is not Verdict.CHANGED and e.id != e.parent:
                self._new_names.add(e.parent)  # a name the ledger does not have
            if e.nlink > 1 and e.kind is not Kind.DIR:
                self._sent_links.add(e.id)
            yield Moved(se) if verdict is Verdict.MOVED else se

    # -- ListingObserver ------------------------------------------------------------------

    def ahead(self, did: bytes, names: list[bytes]) -> None:
        self.ledger.look_ahead(did, names)

    def deferred(self, oid: bytes, parent: bytes, name: bytes) -> None:
        if not self.ledger.holds(oid, parent, name):
            self._new_names.add(parent)

    def listed(self, did: bytes, path: bytes, count: int, complete: bool) -> None:
        fresh = did in self._new_names
        self._new_names.discard(did)
        if fresh or not complete or count != self.ledger.count(did):
            self.ledger.mark_dirty(did, path)

    # -- after the crawl ------------------------------------------------------------------

    def links(self, page: list[tuple[bytes, bytes, bytes, bytes]]) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """The deferred hard links of one page that must be sent.

        All names of an object sent in this run go again: the agent may have moved any one
        of its old names to the new one, and a link it already has costs it nothing.
        """

        return [lk for lk in page if lk[0] in self._sent_links or not self.ledger.holds(lk[0], lk[1], lk[2])]

    def removals(self) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(id, parent, name, path) of recorded names that are gone from the source.

        Only a name whose lookup says ENOENT goes: an unreadable directory or a name
        that cannot be stat'ed now is kept, and the next run looks again.
        """

        for did, dpath in self.ledger.dirty():
            for name, oid in self.ledger.names_in(did):
                path = os.path.join(dpath, name)
                try:
                    os.lstat(path)
                except FileNotFoundError:
                    yield oid, did, name, path
                except OSError:
                    continue

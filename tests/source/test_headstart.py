"""`HeadStart`: a crawl read ahead while the connection is set up yields what the crawl itself does.

A rerun's `Rerun` learns from ``listed`` that a directory's names are all in, and must hear
it after that directory's entries: told too early, it would not mark a directory holding
a new name as dirty, and a removal there would be missed.  So these tests compare the whole
sequence (entries and observer calls, in order) with the crawl's own, wherever the head
start stops: inside a directory, at its end, at the limit, or after the crawl ended.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from georep.source.crawl import READ_AHEAD, Crawler, HeadStart
from georep.source.identity import IdStore

Event = tuple[object, ...]


class Log:
    """A ListingObserver that writes what it is told into the same log as the entries."""

    def __init__(self, log: list[Event]) -> None:
        self.log = log

    def ahead(self, did: bytes, names: list[bytes]) -> None:
        self.log.append(("ahead", did, tuple(names)))

    def deferred(self, oid: bytes, parent: bytes, name: bytes) -> None:
        self.log.append(("deferred", oid, parent, name))

    def listed(self, did: bytes, path: bytes, count: int, complete: bool) -> None:
        self.log.append(("listed", did, path, count, complete))


def _tree(root: Path) -> Path:
    for d, n in (("a", READ_AHEAD + 9), ("a/sub", 5), ("b", 3), ("c", 0), ("d/e/f", 2)):
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / d / f"f{i}").write_bytes(b"x" * (i % 7))
    os.link(root / "a" / "f1", root / "b" / "hardlink")  # a further name: told as `deferred`
    os.link(root / "a" / "f2", root / "a" / "sub" / "hardlink")
    os.symlink("a/f2", root / "sym")
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IdStore]:
    s = IdStore(tmp_path / "state", os.fsencode(tmp_path / "tree"))
    yield s
    s.close()


def _consume(entries: Iterator[object], log: list[Event]) -> None:
    for se in entries:
        log.append(("entry", se.entry.id, se.entry.parent, se.entry.name, se.path))  # type: ignore[attr-defined]


def _plain(root: Path, store: IdStore) -> tuple[list[Event], int]:
    """The crawl's own sequence, and its count."""

    log: list[Event] = []
    crawler = Crawler(os.fsencode(root), store)
    crawler.observer = Log(log)
    _consume(iter(crawler), log)
    return log, crawler.count


@pytest.mark.parametrize(("step", "limit"), [
    (1, 1),  # stops after the root
    (7, 10_000),  # small slices until the crawl ends
    (100, 150),  # the limit falls inside directory a
    (READ_AHEAD, READ_AHEAD + 11),  # just past the end of a's first read-ahead
    (10_000, 10_000),  # the whole crawl in one slice
])
def test_the_same_entries_and_observer_calls_in_the_same_order(tmp_path: Path, store: IdStore, step: int,
                                                                limit: int) -> None:
    root = _tree(tmp_path / "tree")
    expected, count = _plain(root, store)  # also gives every inode its id: both crawls see the same ids
    assert all(any(e[0] == kind for e in expected) for kind in ("ahead", "deferred", "listed"))

    log: list[Event] = []
    crawler = Crawler(os.fsencode(root), store)
    head = HeadStart(crawler, limit=limit)
    while head.step(step):
        pass
    assert head.held == min(limit, sum(1 for e in expected if e[0] == "entry"))
    _consume(head.entries(Log(log)), log)
    assert log == expected
    assert crawler.count == count


def test_every_entry_is_announced_ahead_by_its_directory_first(tmp_path: Path, store: IdStore) -> None:
    """`ahead` names a directory's names before their entries come, a read-ahead at a time."""

    root = _tree(tmp_path / "tree")
    log, _ = _plain(root, store)
    announced: set[tuple[object, object]] = set()
    entries = 0
    for e in log:
        if e[0] == "ahead":
            assert isinstance(e[2], tuple) and 0 < len(e[2]) <= READ_AHEAD
            announced.update((e[1], name) for name in e[2])
        elif e[0] == "entry" and e[3] != b"":  # (the root has no name, no directory to list it)
            assert (e[2], e[3]) in announced
            entries += 1
    assert entries == sum(1 for e in log if e[0] == "entry") - 1
    assert sum(1 for e in log if e[0] == "ahead" and e[1] == log[0][1]) >= 1  # the root's names too


def test_without_an_observer_the_queued_calls_are_dropped(tmp_path: Path, store: IdStore) -> None:
    root = _tree(tmp_path / "tree")
    expected = [e for e in _plain(root, store)[0] if e[0] == "entry"]
    log: list[Event] = []
    head = HeadStart(Crawler(os.fsencode(root), store), limit=50)
    head.step(30)
    _consume(head.entries(None), log)
    assert log == expected


def test_a_crawl_error_is_raised_where_the_entries_reach_it(tmp_path: Path, store: IdStore) -> None:
    root = _tree(tmp_path / "tree")
    crawler = Crawler(os.fsencode(root), store)
    os.rename(root, tmp_path / "gone")  # the source vanishes between the check and the walk
    head = HeadStart(crawler)
    assert head.step(100) is False  # the crawl failed: no more stepping
    assert head.held == 0
    entries = head.entries(None)
    with pytest.raises(FileNotFoundError):
        next(entries)


def test_a_slice_ends_at_its_deadline(tmp_path: Path, store: IdStore) -> None:
    """The caller bounds each slice in time: the connection's packets must not wait on a cold disk."""

    root = _tree(tmp_path / "tree")
    head = HeadStart(Crawler(os.fsencode(root), store))
    assert head.step(1000, until=0.0) is True  # a deadline already past: nothing read, more to come
    assert head.held == 0
    assert head.step(1000, until=float("inf")) is False  # no deadline in reach: the whole crawl
    assert head.held > 0

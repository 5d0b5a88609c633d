"""`Crawler` on plain trees: every object once, parents first, ids as `IdStore.id_for` gives them.

The crawl reads directory entries ahead and looks their ids up in batches; these tests pin
that it still yields exactly what a one-by-one walk would, across read-ahead boundaries,
in deep trees (where less is read ahead), and when names change under it.
"""

from __future__ import annotations

import os
from pathlib import Path

from georep.model import ROOT_ID, Kind
from georep.source.crawl import DEEP, READ_AHEAD, Crawler
from georep.source.identity import IdStore


def _walk(root: Path) -> set[bytes]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), os.fsencode(root)))
    return out


def _crawl(root: Path, state: Path) -> tuple[dict[bytes, bytes], list[str]]:
    """path → id for every entry, checking parents-first order; plus the problems."""

    store = IdStore(state, os.fsencode(root))
    try:
        crawler = Crawler(os.fsencode(root), store)
        path_of: dict[bytes, bytes] = {}
        ids: dict[bytes, bytes] = {}
        for se in crawler:
            e = se.entry
            if e.id == ROOT_ID:
                path_of[ROOT_ID] = b""
                continue
            assert e.parent in path_of, "a child came before its directory"
            rel = os.path.join(path_of[e.parent], e.name) if path_of[e.parent] else e.name
            assert rel not in ids, "an entry came twice"
            ids[rel] = e.id
            if e.kind is Kind.DIR:
                path_of[e.id] = rel
            st = os.lstat(se.path)
            assert store.id_for(st.st_dev, st.st_ino) == e.id
        return ids, [p.render() for p in crawler.problems]
    finally:
        store.close()


def test_wide_directories_across_read_ahead_boundaries(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for d, n in (("a", READ_AHEAD * 3 + 7), ("a/sub", READ_AHEAD - 1), ("b", READ_AHEAD), ("c", 0)):
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / d / f"f{i}").write_bytes(b"x" * (i % 5))
    os.link(root / "a" / "f1", root / "b" / "hardlink")
    os.symlink("a/f2", root / "sym")
    first, problems = _crawl(root, tmp_path / "state")
    assert problems == []
    # the first name met of a hard-linked inode is yielded; a further one is sent as a link later
    linked = {b"a/f1", b"b/hardlink"}
    assert set(first) - linked == _walk(root) - linked
    assert len(set(first) & linked) == 1
    again, _ = _crawl(root, tmp_path / "state")
    assert again == first  # ids are kept
    os.rename(root / "a" / "sub", root / "c" / "moved")
    moved, _ = _crawl(root, tmp_path / "state")
    assert moved[b"c/moved"] == first[b"a/sub"]
    assert moved[b"c/moved/f3"] == first[b"a/sub/f3"]


def test_deep_tree_reads_less_ahead_and_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    p = root
    for depth in range(DEEP + 10):
        p = p / f"d{depth}"
        p.mkdir(parents=True)
        for i in range(3):
            (p / f"f{i}").write_bytes(b"")
    ids, problems = _crawl(root, tmp_path / "state")
    assert problems == []
    assert set(ids) == _walk(root)
    assert len(set(ids.values())) == len(ids)


def test_a_name_replaced_after_it_was_listed_gets_its_new_inodes_id(tmp_path: Path) -> None:
    """The read-ahead ids are for the listed inode; a file replaced before its lstat is looked up anew."""

    root = tmp_path / "tree"
    root.mkdir()
    for i in range(READ_AHEAD + 50):
        (root / f"f{i:04}").write_bytes(b"old")
    store = IdStore(tmp_path / "state", os.fsencode(root))
    try:
        seen: dict[bytes, bytes] = {}
        replaced: list[bytes] = []
        for se in Crawler(os.fsencode(root), store):
            if se.entry.id == ROOT_ID:
                continue
            seen[se.entry.name] = se.entry.id
            if not replaced:
                # replace every name not yet yielded by a new inode (the old ones stay alive)
                for n in sorted(os.listdir(root)):
                    if os.fsencode(n) not in seen:
                        os.link(root / n, tmp_path / f"keep-{n}")
                        (root / (n + ".new")).write_bytes(b"new")
                        os.replace(root / (n + ".new"), root / n)
                        replaced.append(os.fsencode(n))
        for n in replaced:
            if n in seen:
                st = os.lstat(root / os.fsdecode(n))
                assert seen[n] == store.id_for(st.st_dev, st.st_ino)
                old = os.lstat(tmp_path / f"keep-{os.fsdecode(n)}")
                assert seen[n] != store.id_for(old.st_dev, old.st_ino)
    finally:
        store.close()

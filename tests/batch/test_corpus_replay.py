"""Real GlusterFS 10.3 journals through parser → converter → batcher → model secondary.

For each scenario of ``tests/data/corpus/gluster-10.3`` (a copy of the workspace's
``shared/corpus``) the entry records of all bricks, in time order, must rebuild exactly
the namespace of ``expected.json`` (every path with its gfid and file type).  rep2: both
bricks journal the same operations (duplicates must be harmless) and AFR's own
``.glusterfs-anonymous-inode-*`` directory must not appear; dist2: directory operations
are journalled on every brick.
"""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

import pytest
from corpus import CORPUS as CORPUS_ROOT

from georep.batch.changes import STAGING, Change, JournalConverter, Make, Move, SyncData
from georep.batch.coalesce import Batch, Coalescer
from georep.batch.model_apply import Source, Tree, apply_batch
from georep.model import ROOT_ID, Kind
from georep.source.changelog import parse_journal

CORPUS = CORPUS_ROOT / "gluster-10.3"
SCENARIOS = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").exists()) if CORPUS.exists() else []


def scenario_changes(scenario: Path) -> list[Change]:
    """Every brick's journals, ordered by rollover time (the live CHANGELOG last), then brick."""

    journals: list[tuple[float, str, Path]] = []
    for brick in sorted(p for p in scenario.iterdir() if p.is_dir()):
        logs = brick / "changelogs"
        for path in logs.rglob("CHANGELOG*"):
            if "csnap" in path.parts or not path.is_file():
                continue
            m = re.fullmatch(r"CHANGELOG\.(\d+)", path.name)
            journals.append((int(m.group(1)) if m else float("inf"), brick.name, path))
    converters: dict[str, JournalConverter] = {}
    changes: list[Change] = []
    for _ts, brick_name, journal in sorted(journals):
        conv = converters.setdefault(brick_name, JournalConverter())
        for rec in parse_journal(str(journal), journal.read_bytes()):
            changes += conv.convert(rec)
    return changes


def replay(changes: list[Change], cut_every: int = 0) -> tuple[Tree, list[Batch]]:
    sec = Tree.empty(staging=True)
    src = Source(Tree.empty())  # contents are not in journals; Make takes the journalled kind
    co = Coalescer()
    batches: list[Batch] = []
    for i, change in enumerate(changes, 1):
        forced = co.add(change)
        if forced is not None:
            batches.append(forced)
        if cut_every and i % cut_every == 0:
            batches.append(co.cut())
    batches.append(co.cut())
    for b in batches:
        assert b.ops_out <= b.changes_in
        apply_batch(sec, b.ops, src)
        assert sec.anomalies == []
    return sec, batches


def namespace(t: Tree) -> dict[bytes, tuple[str, Kind]]:
    """path → (gfid text, kind), walking down from the root (staging excluded)."""

    out: dict[bytes, tuple[str, Kind]] = {}
    stack: list[tuple[bytes, bytes]] = [(ROOT_ID, b"")]
    children: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for (parent, name), oid in t.names.items():
        children.setdefault(parent, []).append((name, oid))
    while stack:
        did, prefix = stack.pop()
        for name, oid in children.get(did, []):
            path = prefix + name
            out[path] = (str(uuid.UUID(bytes=oid)), t.objects[oid].kind)
            if t.objects[oid].kind is Kind.DIR:
                stack.append((oid, path + b"/"))
    return out


def expected_namespace(scenario: Path) -> dict[bytes, tuple[str, Kind]]:
    data = json.loads((scenario / "expected.json").read_text())
    out: dict[bytes, tuple[str, Kind]] = {}
    for e in data["entries"]:
        kind = Kind.from_mode(e["mode"])
        assert kind is not None
        out[bytes.fromhex(e["path_hex"])] = (e["gfid"], kind)
    return out


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("cut_every", [0, 1, 3, 7])
def test_corpus_scenario_rebuilds_expected_namespace(name: str, cut_every: int) -> None:
    scenario = CORPUS / name
    sec, _batches = replay(scenario_changes(scenario), cut_every)
    assert namespace(sec) == expected_namespace(scenario)
    assert sec.children(STAGING) == []


def test_corpus_has_all_scenarios() -> None:
    assert {"dist1-basic", "dist1-names", "dist1-rsync-temp", "dist1-swap", "dist2-basic", "rep2-basic"} <= set(
        SCENARIOS
    ), f"corpus not found under {CORPUS} (set GEOREP_SHARED)"


def test_rep2_hides_afr_directory_and_tolerates_duplicates() -> None:
    changes = scenario_changes(CORPUS / "rep2-basic")
    sec, batches = replay(changes)
    assert not any(p.startswith(b".glusterfs") for p in namespace(sec))
    # both bricks journalled everything: the duplicates cost nothing
    single = scenario_changes_one_brick(CORPUS / "rep2-basic", "b1")
    _, one = replay(single)
    assert sum(b.ops_out for b in batches) == sum(b.ops_out for b in one)


def scenario_changes_one_brick(scenario: Path, brick: str) -> list[Change]:
    conv = JournalConverter()
    journals = sorted(
        (int(p.name.split(".")[1]) if "." in p.name else 1 << 62, p)
        for p in (scenario / brick / "changelogs").rglob("CHANGELOG*")
        if p.is_file()
    )
    out: list[Change] = []
    for _ts, path in journals:
        for rec in parse_journal(str(path), path.read_bytes()):
            out += conv.convert(rec)
    return out


def test_rsync_temp_names_never_receive_data() -> None:
    """rsync writes ``.player3.json.XXXXXX`` then renames it over player3.json: the
    secondary gets one Make at the final name, and data addressed to that object only."""

    changes = scenario_changes(CORPUS / "dist1-rsync-temp")
    sec, batches = replay(changes)
    ops = [op for b in batches for op in b.ops]
    for op in ops:
        if isinstance(op, Make):
            assert not op.name.startswith(b"."), op
        if isinstance(op, Move):
            assert not op.old_name.startswith(b".") or op.old_parent == STAGING
    made = {op.id for op in ops if isinstance(op, Make)}
    synced = {op.id for op in ops if isinstance(op, SyncData)}
    final_ids = {uuid.UUID(g).bytes for g, _k in namespace(sec).values()}
    assert synced <= final_ids  # never the id of a temp file that died
    assert made <= final_ids


def test_swap_scenario_goes_through_staging_when_needed() -> None:
    changes = scenario_changes(CORPUS / "dist1-swap")
    sec, batches = replay(changes)
    assert namespace(sec) == expected_namespace(CORPUS / "dist1-swap")
    # x and y were created in the same batch as the swap: made at their final names
    ops = [op for b in batches for op in b.ops]
    assert not any(isinstance(op, Move) for op in ops if getattr(op, "old_name", b"") in (b"x", b"y", b"tmp"))


def test_names_scenario_keeps_raw_bytes() -> None:
    ns = namespace(replay(scenario_changes(CORPUS / "dist1-names"))[0])
    assert b"new\nline" in ns
    assert b"tab\there" in ns
    assert b"moved-\xfe" in ns
    assert b"d\xc3(/inner" in ns
    assert b"L" * 255 in ns


def test_kinds_follow_the_journal() -> None:
    ns = namespace(replay(scenario_changes(CORPUS / "dist1-basic"))[0])
    assert ns[b"fifo"][1] is Kind.FIFO
    assert ns[b"dangling"][1] is Kind.SYMLINK
    assert ns[b"c/a-moved"][1] is Kind.DIR
    assert stat.S_ISREG(Kind.FILE.fmt)

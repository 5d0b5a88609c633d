"""Micro-benchmarks of the brick-journal and batch stages: journal parsing (records/s), catching up on a
day of rolled-over journals (journals/s), coalescing (changes/s).

Run with ``python -m pytest bench/test_micro_batch.py --benchmark-enable -s`` (the rates are
printed; ``python -m bench`` puts them in its report).  Under the repository's default
``--benchmark-disable`` each body runs once, as a smoke test; nothing here asserts a speed.

Each benchmark declares its unit of work in ``benchmark.extra_info`` (``unit``,
``per_round``) like bench/test_micro_protocol.py.  The target for coalescing is
200,000 changes/s on one core (issue: "Coalesce and order changes by identity").
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from georep.batch.changes import Change, Create, Data, JournalConverter, Meta, Rename, Rmdir, Unlink
from georep.batch.coalesce import Coalescer
from georep.model import ROOT_ID, Kind
from georep.source.brick import Brick, BrickJournal, Position
from georep.source.changelog import ChangelogParser

HEADER = b"GlusterFS Changelog | version: v1.2 | encoding : 2\n"
RECORDS = 50_000
CHANGES = 100_000
BATCH = 10_000  # changes per cut: a realistic window (policy default max_items)


def _declare(benchmark: BenchmarkFixture, unit: str, per_round: float) -> None:
    benchmark.extra_info["unit"] = unit
    benchmark.extra_info["per_round"] = per_round


def _report(benchmark: BenchmarkFixture, what: str, per_round: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean > 0:
        print(f"\n{what}: {per_round / stats.stats.mean:,.0f}/s (mean of {stats.stats.rounds} rounds)")


def _g(rng: random.Random) -> bytes:
    return str(uuid.UUID(bytes=rng.randbytes(16))).encode()


@pytest.fixture(scope="module")
def journal() -> bytes:
    """What an rsync of many small files journals: CREATE, D, M (x2), RENAME over the final name."""

    rng = random.Random(1)
    parent = _g(rng)
    out = [HEADER]
    n = 0
    while n < RECORDS:
        g = _g(rng)
        tmp = b".file%d.jpg.Xa8Kq2" % n
        out += [
            b"E%s\x0023\x0033188\x000\x000\x00%s/%s\x00" % (g, parent, tmp),
            b"D%s\x00" % g,
            b"M%s\x0038\x00" % g,
            b"M%s\x0017\x00" % g,
            b"E%s\x008\x00%s/%s\x00%s/file%d.jpg\x00" % (g, parent, tmp, parent, n),
        ]
        n += 5
    return b"".join(out)


def test_journal_parse_whole(benchmark: BenchmarkFixture, journal: bytes) -> None:
    """A rolled-over journal read in one go."""

    _declare(benchmark, "records", RECORDS)

    def run() -> int:
        p = ChangelogParser("bench")
        n = len(p.feed(journal))
        p.close()
        return n

    assert benchmark(run) == RECORDS
    _report(benchmark, "journal parsing (whole file), records", RECORDS)


def test_journal_parse_live_reads(benchmark: BenchmarkFixture, journal: bytes) -> None:
    """Following the live CHANGELOG: 64 KiB reads that end anywhere inside records."""

    _declare(benchmark, "records", RECORDS)
    reads = [journal[i : i + 65536] for i in range(0, len(journal), 65536)]

    def run() -> int:
        p = ChangelogParser("bench")
        n = sum(len(p.feed(r)) for r in reads)
        p.close()
        return n

    assert benchmark(run) == RECORDS
    _report(benchmark, "journal parsing (64 KiB reads), records", RECORDS)


#: A day of rollovers at GlusterFS's default changelog.rollover-time (15 s).
DAY_OF_JOURNALS = 5_760


@pytest.fixture(scope="module")
def day_of_journals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A brick whose HTIME lists a day of rolled-over journals, one record each, in their dated directories."""

    root = tmp_path_factory.mktemp("catch-up") / "brick"
    cl = root / ".glusterfs" / "changelogs"
    (cl / "htime").mkdir(parents=True)
    os.setxattr(root, "trusted.glusterfs.volume-id", bytes.fromhex("e05d581f8dd64a93b4307cfac1224f37"))
    record = (b"E8ff7fd0e-6a65-46fa-b999-69a9d648b7c0\x0023\x0033188\x000\x000\x00"
              b"00000000-0000-0000-0000-000000000001/name\x00")
    listed = []
    for i in range(DAY_OF_JOURNALS):
        ts = 1_795_500_000 + 15 * i
        day = time.strftime("%Y/%m/%d", time.gmtime(ts))
        (cl / day).mkdir(parents=True, exist_ok=True)
        (cl / day / f"CHANGELOG.{ts}").write_bytes(HEADER + record)
        listed.append(b"/bricks/b1/.glusterfs/changelogs/%s/CHANGELOG.%d\0" % (day.encode(), ts))
    (cl / "htime" / "HTIME.1795500000").write_bytes(b"".join(listed))
    (cl / "CHANGELOG").write_bytes(HEADER)
    return root


def test_journal_catch_up_a_day(benchmark: BenchmarkFixture, day_of_journals: Path) -> None:
    """A daemon back after a day away: every journal HTIME lists, read from history (georep.source.htime)."""

    _declare(benchmark, "journals", DAY_OF_JOURNALS)

    def run() -> int:
        j = BrickJournal(Brick(day_of_journals), Position("HTIME.1795500000", 0, 0))
        n = sum(1 for _ in j.poll())
        j.close()
        return n

    assert benchmark(run) == DAY_OF_JOURNALS
    _report(benchmark, "catching up on a day of journals, journals", DAY_OF_JOURNALS)


def _rsync_like(n: int) -> list[Change]:
    """New files written under temp names and renamed over existing ones, in a few new dirs."""

    rng = random.Random(2)
    out: list[Change] = []
    dirs = [ROOT_ID]
    i = 0
    while len(out) < n:
        i += 1
        oid = (0x10000 + i).to_bytes(16, "big")
        if rng.random() < 0.02:
            out.append(Create(oid, rng.choice(dirs), b"dir%d" % i, Kind.DIR))
            dirs.append(oid)
            continue
        p = rng.choice(dirs)
        tmp = b".f%d.XXXXXX" % i
        out += [Create(oid, p, tmp, Kind.FILE), Data(oid, 4096), Meta(oid), Rename(oid, p, tmp, p, b"f%d" % i)]
    return out[:n]


def _mixed(n: int) -> list[Change]:
    """A busier mix: existing files rewritten, renamed, deleted; directories made and removed."""

    rng = random.Random(3)
    out: list[Change] = []
    i = 0
    while len(out) < n:
        i += 1
        oid = (0x10000 + i).to_bytes(16, "big")
        d = (0x20000 + i % 97).to_bytes(16, "big")
        r = rng.random()
        if r < 0.3:
            out += [Data(oid, 1000), Meta(oid)]
        elif r < 0.5:
            out += [Create(oid, d, b"n%d" % i, Kind.FILE), Data(oid, 10)]
        elif r < 0.65:
            out += [Rename(oid, d, b"o%d" % i, d, b"p%d" % i)]
        elif r < 0.8:
            out += [Unlink(oid, d, b"u%d" % i)]
        elif r < 0.9:
            out += [Create(oid, d, b"t%d" % i, Kind.FILE), Data(oid, 5), Unlink(oid, d, b"t%d" % i)]
        else:
            out += [Create(oid, d, b"d%d" % i, Kind.DIR), Rmdir(oid, d, b"d%d" % i)]
    return out[:n]


def _coalesce(changes: list[Change]) -> int:
    co = Coalescer()
    ops = 0
    for k, c in enumerate(changes, 1):
        forced = co.add(c)
        if forced is not None:
            ops += forced.ops_out
        if k % BATCH == 0:
            ops += co.cut().ops_out
    return ops + co.cut().ops_out


@pytest.mark.parametrize("workload", [_rsync_like, _mixed], ids=["rsync-like", "mixed"])
def test_coalesce(benchmark: BenchmarkFixture, workload: Callable[[int], list[Change]]) -> None:
    """add() every change and cut() every 10,000: what the daemon does per window."""

    changes = workload(CHANGES)
    _declare(benchmark, "changes", CHANGES)
    ops = benchmark(_coalesce, changes)
    assert 0 < ops <= CHANGES
    _report(benchmark, f"coalescing ({workload.__name__.strip('_')}), changes", CHANGES)


def test_journal_to_batches_end_to_end(benchmark: BenchmarkFixture, journal: bytes) -> None:
    """Parse → convert → coalesce: the source-side cost per journalled record."""

    _declare(benchmark, "records", RECORDS)

    def run() -> int:
        p = ChangelogParser("bench")
        conv = JournalConverter()
        changes = [c for r in p.feed(journal) for c in conv.convert(r)]
        p.close()
        return _coalesce(changes)

    assert benchmark(run) > 0
    _report(benchmark, "parse+convert+coalesce, records", RECORDS)

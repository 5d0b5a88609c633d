"""Micro-benchmarks of the wire and source stages: framing (MB/s, messages/s), digest (MB/s), crawl (entries/s).

Run with ``python -m pytest bench --benchmark-enable`` (``python -m bench`` does, and puts the
figures in its report).  Under the repository's default ``--benchmark-disable`` each body
runs once, so these double as smoke tests of the code they time; nothing here asserts a speed.

Each benchmark declares its unit of work in ``benchmark.extra_info``: ``unit`` (what is
counted) and ``per_round`` (how many of it one call does); bench/runner.py turns the mean
time per round into a rate with them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.datasets import make_scale
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE, FrameDecoder, encode, encode_chunk
from georep.source.crawl import Crawler
from georep.source.identity import IdStore

MB = 1_000_000
#: Frames per round in the framing benchmarks: enough that per-call overhead is noise.
CHUNKS = 16
ENTRIES = 2_000
CRAWL_ENTRIES = 10_000


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(7).randbytes(CHUNK_SIZE)


def _declare(benchmark: BenchmarkFixture, unit: str, per_round: float) -> None:
    benchmark.extra_info["unit"] = unit
    benchmark.extra_info["per_round"] = per_round


def test_framing_encode_data_chunks(benchmark: BenchmarkFixture, payload: bytes) -> None:
    """The bulk hot path: one DataChunk frame per MiB read from a file."""

    _declare(benchmark, "MB", CHUNKS * len(payload) / MB)

    def run() -> int:
        return sum(len(encode_chunk(1, i * len(payload), payload)) for i in range(CHUNKS))

    assert benchmark(run) > CHUNKS * len(payload)


def test_framing_decode_data_chunks(benchmark: BenchmarkFixture, payload: bytes) -> None:
    """The agent's side of the bulk path, fed in 256 KiB reads as a socket delivers them."""

    stream = b"".join(encode_chunk(1, i * len(payload), payload) for i in range(CHUNKS))
    pieces = [stream[i : i + 256 * 1024] for i in range(0, len(stream), 256 * 1024)]
    _declare(benchmark, "MB", CHUNKS * len(payload) / MB)

    def run() -> int:
        dec = FrameDecoder()
        return sum(len(dec.feed(p)) for p in pieces)

    assert benchmark(run) == CHUNKS


def _entry(i: int) -> m.EntryMsg:
    return m.EntryMsg(seq=i, id=i.to_bytes(16, "big"), parent=(1).to_bytes(16, "big"), name=b"f%06d.dat" % i,
                      kind=1, mode=0o644, uid=0, gid=0, mtime_ns=1_700_000_000_000_000_000 + i, xattrs=[],
                      size=4096 + i, target=b"", rdev=0)


def test_framing_entries_roundtrip(benchmark: BenchmarkFixture) -> None:
    """Per-file metadata: what bounds small-file rates once data is cheap."""

    msgs = [_entry(i) for i in range(ENTRIES)]
    _declare(benchmark, "messages", ENTRIES)

    def run() -> int:
        return len(FrameDecoder().feed(b"".join(encode(x) for x in msgs)))

    assert benchmark(run) == ENTRIES


def test_framing_blobs_small_files(benchmark: BenchmarkFixture) -> None:
    """Small files packed into Blobs frames (64 files of 16 KiB a frame), encoded and decoded."""

    rng = random.Random(8)
    files = [m.SmallFile(seq=i, size=16 * 1024, extents=[[0, rng.randbytes(16 * 1024)]], digest=b"\0" * 16,
                         mtime_ns=i) for i in range(64)]
    frame_count = 8
    _declare(benchmark, "MB", frame_count * 64 * 16 * 1024 / MB)

    def run() -> int:
        stream = b"".join(encode(m.Blobs(files=files)) for _ in range(frame_count))
        return len(FrameDecoder().feed(stream))

    assert benchmark(run) == frame_count


def test_digest_extents(benchmark: BenchmarkFixture, payload: bytes) -> None:
    """xxh3-128 over 1 MiB extents: computed by the sender while reading, again by the agent."""

    _declare(benchmark, "MB", CHUNKS * len(payload) / MB)

    def run() -> bytes:
        d = ExtentDigest()
        for i in range(CHUNKS):
            d.update(i * len(payload), payload)
        return d.finish(CHUNKS * len(payload))

    assert len(benchmark(run)) == 16


def test_digest_small_files(benchmark: BenchmarkFixture) -> None:
    """The same digest over 8 KiB files, one digest object each: per-file overhead shows here."""

    data = random.Random(9).randbytes(8 * 1024)
    files = 1_000
    _declare(benchmark, "MB", files * len(data) / MB)

    def run() -> int:
        n = 0
        for _ in range(files):
            d = ExtentDigest()
            d.update(0, data)
            n += len(d.finish(len(data)))
        return n

    assert benchmark(run) == 16 * files


@pytest.fixture(scope="module")
def crawl_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crawl") / "tree"
    make_scale(root, entries=CRAWL_ENTRIES, per_dir=500)
    return root


def test_crawl_known_ids(benchmark: BenchmarkFixture, crawl_tree: Path, tmp_path: Path) -> None:
    """The source crawl on a tree whose ids are already in the state (every run after the first)."""

    root = os.fsencode(crawl_tree)
    store = IdStore(tmp_path / "state", root)
    try:
        expected = sum(1 for _ in Crawler(root, store))
        _declare(benchmark, "entries", expected)

        def run() -> int:
            return sum(1 for _ in Crawler(root, store))

        assert benchmark(run) == expected
    finally:
        store.close()

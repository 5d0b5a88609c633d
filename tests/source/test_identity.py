"""`IdStore`: the batch lookup agrees with the one-by-one lookup, and ids persist."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from georep.model import ROOT_ID, ino_from_sql, ino_to_sql
from georep.source.identity import LOOKUP_CHUNK, IdStore, new_ids


def test_new_ids_are_distinct_time_ordered_version_7_uuids() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = new_ids(10_000)
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == 10_000
    assert ids == sorted(ids)  # one call ascends: consecutive B-tree keys
    for oid in ids[:500] + ids[-500:]:
        u = uuid.UUID(bytes=oid)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before_ms <= int.from_bytes(oid[:6], "big") <= after_ms
        assert oid != ROOT_ID
    time.sleep(0.002)
    later = new_ids(3)
    assert later[0] > ids[-1]  # a later millisecond sorts after
    assert len({*ids, *later, *new_ids(10_000)}) == 20_003


@given(st.integers(min_value=1, max_value=64))
def test_new_ids_keep_their_version_and_variant_bits_for_any_count(n: int) -> None:
    for oid in new_ids(n):
        u = uuid.UUID(bytes=oid)
        assert u.version == 7 and u.variant == uuid.RFC_4122


def test_ids_for_agrees_with_id_for_and_persists(tmp_path: Path) -> None:
    root = b"/some/tree"
    s = IdStore(tmp_path, root)
    one = {ino: s.id_for(7, ino) for ino in range(0, 3000, 3)}  # some known already
    inos = list(range(0, 2 * LOOKUP_CHUNK + 17)) + [5, 5, 6]  # more than one query's worth, repeats
    many = s.ids_for(7, inos)
    assert set(many) == set(inos)
    for ino, oid in one.items():
        if ino in many:
            assert many[ino] == oid
    assert len(set(many.values())) == len(many)
    assert s.ids_for(8, [1])[1] != many[1]  # another device, another object
    s.close()
    again = IdStore(tmp_path, root)
    assert again.ids_for(7, inos) == many
    assert all(again.id_for(7, ino) == oid for ino, oid in many.items())
    again.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=1, max_value=2**63 - 1), max_size=40), max_size=6))
def test_ids_for_is_a_function_of_the_inode(rounds: list[list[int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = IdStore(Path(d), b"/t")
        seen: dict[int, bytes] = {}
        for inos in rounds:
            got = s.ids_for(1, inos)
            assert set(got) == set(inos)
            for ino, oid in got.items():
                assert seen.setdefault(ino, oid) == oid
        assert len(set(seen.values())) == len(seen)
        s.close()


def test_inode_numbers_of_all_64_bits(tmp_path: Path) -> None:
    """A GlusterFS FUSE mount derives inode numbers from gfids: 2**63 and above are common."""

    big = [2**63, 2**64 - 1, 2**63 + 12345, 1, 0]
    assert all(ino_from_sql(ino_to_sql(i)) == i for i in big)
    assert all(-(2**63) <= ino_to_sql(i) < 2**63 for i in big)
    s = IdStore(tmp_path, b"/fuse")
    one = s.id_for(3, 2**64 - 1)
    many = s.ids_for(3, big)
    assert many[2**64 - 1] == one
    assert len(set(many.values())) == len(big)
    s.forget(3, 2**64 - 1)
    assert s.id_for(3, 2**64 - 1) != one
    s.close()

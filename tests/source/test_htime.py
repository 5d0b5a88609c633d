"""HtimeTail: an HTIME file read as it grows, holding only what the reader has not passed.

The reference is what BrickJournal did before: the whole file parsed again at each look
(`parse_htime`), a repeat found by scanning back over the listings of the same second, a
later listing found by scanning every listing after.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from georep.errors import ChangelogFormatError
from georep.source.changelog import HtimeEntry, parse_htime
from georep.source.htime import HtimeTail

PREFIX = b"/bricks/x/b1/.glusterfs/changelogs/2026/11/24/"


def _line(ts: int, empty: bool, digits: str = "") -> bytes:
    return PREFIX + (b"changelog." if empty else b"CHANGELOG.") + (digits or str(ts)).encode() + b"\0"


def _repeats_earlier(entries: list[HtimeEntry], index: int) -> bool:
    entry, j = entries[index], index - 1
    while j >= 0 and entries[j].ts == entry.ts:
        if entries[j].path == entry.path:
            return True
        j -= 1
    return False


def _check(tail: HtimeTail, data: bytes, position: int) -> None:
    """Everything held agrees with the whole file parsed again, from the listing before ``position`` on."""

    ref = parse_htime("ref", data).entries
    assert tail.listed == len(ref)
    for i in range(max(position - 1, 0), len(ref)):
        e, r = tail.entry(i), ref[i]
        assert (e.name, e.ts, e.empty) == (r.path.rpartition(b"/")[2], r.ts, r.empty)
        assert e.repeat == _repeats_earlier(ref, i)
        if i >= position:
            assert tail.listed_again(i) == (not r.empty and any(x.path == r.path for x in ref[i + 1:]))


#: Seconds that go back now and then (a clock stepped back), and repeat (several rollovers a second).
listings = st.lists(st.tuples(st.integers(1_795_500_000, 1_795_500_012), st.booleans()), max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(listed=listings, cuts=st.lists(st.integers(0, 10_000), max_size=8), steps=st.lists(st.integers(0, 12)))
def test_agrees_with_the_whole_file_parsed_again(tmp_path: Path, listed: list[tuple[int, bool]], cuts: list[int],
                                                 steps: list[int]) -> None:
    """Appended in pieces cut anywhere (inside a path too), looked at after each, the reader moving on."""

    data = b"".join(_line(ts, empty) for ts, empty in listed)
    path = tmp_path / "HTIME.1795500000"
    path.write_bytes(b"")
    tail = HtimeTail(os.fsencode(path), 0)
    position = 0
    step = iter(steps)
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        path.write_bytes(data[:cut])
        tail.refresh()
        complete = data[: data.rfind(b"\0", 0, cut) + 1]
        _check(tail, complete, position)
        position = min(position + next(step, 1), tail.listed)
        tail.passed(position)
        _check(tail, complete, position)


def test_what_the_reader_passed_is_let_go(tmp_path: Path) -> None:
    """A year of rollovers is two million listings: held are those ahead of the reader, and the one before."""

    path = tmp_path / "HTIME.1"
    path.write_bytes(b"")
    tail = HtimeTail(os.fsencode(path), 0)
    for k in range(50):
        with open(path, "ab") as f:
            f.write(b"".join(_line(1_795_500_000 + 15 * (200 * k + i), i % 7 == 0) for i in range(200)))
        tail.refresh()
        tail.passed(tail.listed - 3)  # the reader, three journals behind
        assert tail.held <= 2 * 200 + 4, tail.held
        assert tail.ahead <= 3
        with pytest.raises(IndexError):
            tail.entry(tail.listed - 5)
        assert tail.entry(tail.listed - 4).ts == 1_795_500_000 + 15 * (tail.listed - 4)


def test_a_reader_that_starts_at_the_end_holds_the_last_listing_only(tmp_path: Path) -> None:
    path = tmp_path / "HTIME.1"
    path.write_bytes(b"".join(_line(1_795_500_000 + i, False) for i in range(1000)))
    tail = HtimeTail(os.fsencode(path), None)
    tail.refresh()
    assert tail.listed == 1000 and tail.held == 1 and tail.ahead == 0
    tail.passed(1000)
    assert tail.entry(999).ts == 1_795_500_999  # what bounds a gap at the next listing
    with open(path, "ab") as f:
        f.write(_line(1_795_501_000, False) + _line(1_795_501_000, False))  # the same name twice
    tail.refresh()
    assert tail.listed_again(1000) and not tail.listed_again(1001)
    assert tail.entry(1001).repeat and not tail.entry(1000).repeat


def test_a_name_spelt_with_leading_zeros_is_kept_as_spelt(tmp_path: Path) -> None:
    path = tmp_path / "HTIME.1"
    path.write_bytes(_line(42, False, "0042") + _line(42, False))
    tail = HtimeTail(os.fsencode(path), 0)
    tail.refresh()
    assert [tail.entry(i).name for i in range(2)] == [b"CHANGELOG.0042", b"CHANGELOG.42"]
    assert not tail.listed_again(0)  # another name (another file), as a byte-wise comparison says


def test_a_bad_listing_in_an_appended_piece_names_its_offset_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "HTIME.1"
    good = _line(1_795_500_000, False)
    path.write_bytes(good)
    tail = HtimeTail(os.fsencode(path), 0)
    tail.refresh()
    with open(path, "ab") as f:
        f.write(good + b"/not/a/journal\0")
    with pytest.raises(ChangelogFormatError, match=f"byte {2 * len(good)}:"):
        tail.refresh()


def test_a_file_replaced_by_a_shorter_one_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "HTIME.1"
    path.write_bytes(b"".join(_line(1_795_500_000 + i, False) for i in range(10)))
    tail = HtimeTail(os.fsencode(path), 0)
    tail.refresh()
    assert tail.listed == 10
    path.write_bytes(_line(1_795_600_000, True))
    tail.refresh()
    assert tail.listed == 1 and tail.entry(0).empty and tail.entry(0).ts == 1_795_600_000

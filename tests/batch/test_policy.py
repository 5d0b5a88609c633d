"""When batches are cut: the four rules, with the clock as an argument."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from georep.batch.policy import CutPolicy, Window

P = CutPolicy(max_items=100, max_bytes=1000, quiet_delay_s=1.0, max_latency_s=5.0)


def test_empty_window_is_never_cut() -> None:
    w = Window()
    assert not P.should_cut(1e9, w)
    assert P.next_deadline(w) is None


def test_cut_by_items() -> None:
    w = Window()
    w.note(10.0, 99)
    assert not P.should_cut(10.0, w)
    w.note(10.0, 1)
    assert P.should_cut(10.0, w)
    assert P.next_deadline(w) == 10.0


def test_cut_by_bytes() -> None:
    w = Window()
    w.note(10.0, 1, data_bytes=999)
    assert not P.should_cut(10.0, w)
    w.note(10.1, 1, data_bytes=1000)
    assert P.should_cut(10.1, w)


def test_cut_after_quiet_delay() -> None:
    w = Window()
    w.note(10.0)
    assert not P.should_cut(10.99, w)
    assert P.should_cut(11.0, w)
    assert P.next_deadline(w) == 11.0


def test_steady_trickle_is_cut_at_max_latency() -> None:
    w = Window()
    t = 10.0
    while t < 14.95:
        w.note(t)
        assert not P.should_cut(t, w)
        t += 0.5
    w.note(t)
    assert P.should_cut(15.0, w)
    assert P.next_deadline(w) == 15.0


def test_clock_going_backwards_does_not_cut() -> None:
    w = Window()
    w.note(10.0)
    assert not P.should_cut(9.0, w)


def test_reset_starts_a_new_window() -> None:
    w = Window()
    w.note(10.0, 5, 50)
    w.reset()
    assert (w.items, w.data_bytes, w.first_at, w.last_at) == (0, 0, None, None)
    w.note(20.0, 0)
    assert w.first_at is None


@pytest.mark.parametrize(
    "kwargs",
    [{"max_items": 0}, {"max_bytes": 0}, {"quiet_delay_s": -1.0}, {"quiet_delay_s": 6.0, "max_latency_s": 5.0}],
)
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must|need"):
        CutPolicy(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.integers(1, 30), st.integers(0, 200)), min_size=1,
             max_size=50),
    st.floats(0, 5, allow_nan=False),
    st.floats(0, 10, allow_nan=False),
)
def test_deadline_is_exact_and_latency_bounded(
    arrivals: list[tuple[float, int, int]], quiet: float, extra: float
) -> None:
    """Waking at next_deadline always cuts; before it nothing cuts; no change waits past max latency."""

    policy = CutPolicy(max_items=100, max_bytes=1000, quiet_delay_s=min(quiet, 5.0), max_latency_s=5.0)
    w = Window()
    now = 0.0
    total = 0
    for gap, n, nbytes in arrivals:
        now += gap
        deadline = policy.next_deadline(w)
        if deadline is not None and deadline <= now:
            assert policy.should_cut(deadline, w)
            # (the deadline is first_at + max_latency computed in floats: compare the sums)
            assert deadline <= (w.first_at or 0) + policy.max_latency_s
            w.reset()
            total = 0
        total += nbytes
        w.note(now, n, total)
        d = policy.next_deadline(w)
        assert d is not None
        assert d >= now or w.items >= policy.max_items or w.data_bytes >= policy.max_bytes
        mid = now + (d - now) / 2
        if now <= mid < d:  # (a midpoint that rounds onto the deadline is not before it)
            assert not policy.should_cut(mid, w)
        assert policy.should_cut(d, w)
        assert policy.should_cut(d + extra, w)

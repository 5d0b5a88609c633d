"""When to cut a batch: by item count, by data bytes, after a quiet delay, at a maximum latency.

Pure: the clock is an argument (``now``, seconds on any monotonic clock), so the rules
are tested without sleeping and the driver decides how to wait (it sleeps until
`CutPolicy.next_deadline` or until the next change arrives, whichever comes first).

Why four rules: a batch must be big enough to coalesce well and amortise a round trip
(the quiet delay lets a burst finish: rsync's temp file and its rename land in one
batch), bounded in memory and in the work a crash would replay (items, bytes), and a
change must not wait forever behind a steady trickle (maximum latency).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Window:
    """What the policy needs to know about the changes accumulated since the last cut."""

    items: int = 0  # changes added
    data_bytes: int = 0  # sum of size hints (see `Coalescer.pending_data_bytes`)
    first_at: float | None = None  # when the first change of the window arrived
    last_at: float | None = None  # when the latest one arrived

    def note(self, now: float, items: int = 1, data_bytes: int | None = None) -> None:
        """Record ``items`` more changes at ``now`` (and the window's data bytes, if known)."""

        if items <= 0:
            return
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.items += items
        if data_bytes is not None:
            self.data_bytes = data_bytes

    def reset(self) -> None:
        """The window was cut."""

        self.items = 0
        self.data_bytes = 0
        self.first_at = None
        self.last_at = None


@dataclass(frozen=True, slots=True)
class CutPolicy:
    """Limits of one batch; a batch is cut when any of them is reached."""

    max_items: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    quiet_delay_s: float = 1.0  # cut when no change came for this long
    max_latency_s: float = 5.0  # never hold a change longer than this

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_bytes < 1:
            raise ValueError("max_items and max_bytes must be at least 1")
        if not 0 <= self.quiet_delay_s <= self.max_latency_s:
            raise ValueError("need 0 <= quiet_delay_s <= max_latency_s")

    def should_cut(self, now: float, window: Window) -> bool:
        """Whether the window must be cut at ``now``.  An empty window never is."""

        if window.items == 0 or window.first_at is None or window.last_at is None:
            return False
        if window.items >= self.max_items or window.data_bytes >= self.max_bytes:
            return True
        # (the same sums as next_deadline, so that waking at the deadline always cuts;
        # a clock that went backwards counts as no time elapsed)
        return now >= window.last_at + self.quiet_delay_s or now >= window.first_at + self.max_latency_s

    def next_deadline(self, window: Window) -> float | None:
        """The time at which `should_cut` becomes true if nothing else arrives (None: never)."""

        if window.items == 0 or window.first_at is None or window.last_at is None:
            return None
        if window.items >= self.max_items or window.data_bytes >= self.max_bytes:
            return window.last_at
        return min(window.last_at + self.quiet_delay_s, window.first_at + self.max_latency_s)

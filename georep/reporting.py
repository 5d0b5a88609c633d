"""What a running daemon tells its operator: a state, counters, the last error, log lines.

Both daemons (a brick's and a plain tree's) report the same way, so ``georep-sync status``
reads one format: the status file in the session's state directory, rewritten at most
twice a second and at every change of state.  A state is earned: it changes only when the
daemon actually moved on (crawl done, batch acknowledged), never on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from georep import __version__
from georep.batch.checkpoint import SessionState
from georep.errors import GeorepError
from georep.model import Problem, Summary

if TYPE_CHECKING:
    from georep.source.identity import IdStore

#: Reconnection back-off: the first wait, and the longest.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass
class Counters:
    batches: int = 0
    changes: int = 0
    items: int = 0
    bytes_data: int = 0
    deleted: int = 0
    crawls: int = 0
    gaps: int = 0
    overwritten_journals: int = 0
    errors: int = 0


@dataclass
class Status:
    source: str
    secondary: str
    state: str = "starting"
    reason: str = ""
    position: dict[str, Any] | None = None
    last_synced: float | None = None
    lag_seconds: float = 0.0
    pending: int = 0
    counters: Counters = field(default_factory=Counters)
    last_error: dict[str, str] | None = None
    pid: int = field(default_factory=os.getpid)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "secondary": self.secondary,
            "state": self.state,
            "reason": self.reason,
            "position": self.position,
            "last_synced": self.last_synced,
            "lag_seconds": round(self.lag_seconds, 3),
            "pending": self.pending,
            "counters": self.counters.__dict__,
            "last_error": self.last_error,
            "pid": self.pid,
            "software": f"georep-sync {__version__}",
            "updated": time.time(),
        }


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} georep-sync: {msg}", file=sys.stderr, flush=True)


class Reporter:
    """The status side of a daemon: its state, its status file, its errors, its back-off."""

    state: SessionState
    status: Status
    stop: asyncio.Event
    _status_at: float = 0.0

    async def run(self) -> int:
        """Replicate until `stop` is set; the exit code (each daemon has its own)."""

        raise NotImplementedError

    async def serve(self, store: IdStore) -> int:
        """`run` until SIGTERM or SIGINT.  A fatal error leaves the status Faulty with its cause;
        the id store and the state directory's lock are released however it ends."""

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            return await self.run()
        except GeorepError as exc:
            self.error(exc)
            self.set_state("faulty", exc.message)
            raise
        finally:
            store.close()
            self.state.unlock()

    def set_state(self, state: str, reason: str = "") -> None:
        if (state, reason) != (self.status.state, self.status.reason):
            log(f"{state}{': ' + reason if reason else ''}")
        self.status.state, self.status.reason = state, reason
        self.write_status(force=True)

    def write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._status_at > 0.5:
            self._status_at = now
            self._refresh_status()
            self.state.save_status(self.status.as_json())

    def _refresh_status(self) -> None:
        """Counters read from elsewhere just before the status file is written."""

    @staticmethod
    def log_findings(summary: Summary, problems: list[Problem]) -> None:
        """Log the problems and warnings gathered since the last call, then forget them."""

        for p in [*problems, *summary.problems]:
            log(f"problem: {p.render()}")
        for w in summary.warnings:
            log(f"warning: {w}")
        summary.problems.clear()
        summary.warnings.clear()

    def error(self, exc: GeorepError) -> None:
        self.status.counters.errors += 1
        self.status.last_error = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint_text}

    async def pause_after(self, exc: GeorepError, backoff: float) -> float:
        """Record a lost session, wait ``backoff`` seconds (or until stopped); the next wait."""

        self.error(exc)
        self.set_state("reconnecting", f"{exc.message}; retrying in {backoff:.0f}s")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), backoff)
        return min(backoff * 2, BACKOFF_MAX_S)

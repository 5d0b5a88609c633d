"""Live replication lag: write a file on the source, time until the secondary holds it complete.

"Complete" means the secondary's file has the expected size *and* the expected xxh3-128 of
its content: a name that appears before its data (or with no data, like gsyncd's default
sync method here) does not count as delivered.  Writes are spaced by ``interval`` so the
figure is per-file lag under a steady trickle, not the time to drain a burst.  A poller
thread checks every pending file every `POLL_S` seconds, so lags are accurate to about that.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

POLL_S = 0.005
KIB = 1024


@dataclass
class _Pending:
    path: Path
    size: int
    digest: bytes
    written_at: float


def _digest(path: Path) -> bytes | None:
    try:
        return xxhash.xxh3_128(path.read_bytes()).digest()
    except OSError:
        return None


class Deliveries:
    """Files expected on the secondary, each timed by a poller thread until it is there complete.

    `expect` registers a file just written on the source (its expected size and digest, and
    when the write ended); every `POLL_S` seconds the poller checks each pending file on the
    secondary, size first, then content.  `close` says no more files are coming and waits
    until every one is delivered or ``timeout`` seconds old; `lags` and `done_at` then hold,
    per key, seconds from write to complete and the `time.perf_counter` of completion.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.lags: dict[object, float] = {}
        self.done_at: dict[object, float] = {}
        self._pending: dict[object, _Pending] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="lag-poller", daemon=True)
        self._thread.start()

    def expect(self, key: object, path: Path, data: bytes, written_at: float) -> None:
        with self._lock:
            self._pending[key] = _Pending(path, len(data), xxhash.xxh3_128(data).digest(), written_at)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(self.timeout + 5)

    def _poll(self) -> None:
        while True:
            with self._lock:
                items = list(self._pending.items())
            if not items and self._closed.is_set():
                return
            now = time.perf_counter()
            for key, p in items:
                if now - p.written_at > self.timeout:
                    with self._lock:
                        self._pending.pop(key, None)
                    continue
                try:
                    if p.path.stat().st_size != p.size:
                        continue
                except OSError:
                    continue
                if _digest(p.path) == p.digest:
                    t = time.perf_counter()
                    with self._lock:
                        self._pending.pop(key, None)
                        self.lags[key] = t - p.written_at
                        self.done_at[key] = t
            time.sleep(POLL_S)


def measure_lag(source_dir: Path, secondary_dir: Path, *, writes: int, interval: float, timeout: float,
                seed: int = 21, subdir: str = "live") -> tuple[int, list[float]]:
    """Write ``writes`` files of 1–64 KiB into ``source_dir/subdir``, return (delivered, lags in seconds).

    Files not complete on the secondary ``timeout`` seconds after their write are not delivered.
    """

    rng = random.Random(seed)
    (source_dir / subdir).mkdir(exist_ok=True)
    deliveries = Deliveries(timeout)
    for i in range(writes):
        name = f"w{i:05d}.dat"
        data = rng.randbytes(rng.randint(KIB, 64 * KIB))
        with open(source_dir / subdir / name, "wb") as f:
            f.write(data)
        deliveries.expect(i, secondary_dir / subdir / name, data, time.perf_counter())
        time.sleep(interval)
    deliveries.close()
    lags = [deliveries.lags[i] for i in range(writes) if i in deliveries.lags]
    return len(lags), lags


def warm_up(source_dir: Path, secondary_dir: Path, timeout: float, subdir: str = "warmup") -> float | None:
    """Write one file and wait until it is complete on the secondary: seconds taken, None on timeout.

    A live replicator is measured in its steady state, not while it is still starting up or
    working through a backlog; this is the gate between the two.
    """

    delivered, lags = measure_lag(source_dir, secondary_dir, writes=1, interval=0, timeout=timeout, seed=99,
                                  subdir=subdir)
    return lags[0] if delivered else None


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds passed."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def daemon_available(python: str) -> tuple[bool, str]:
    """Whether ``georep-sync daemon`` exists in this build, decided by running its ``--help``."""

    try:
        r = subprocess.run([python, "-m", "georep", "daemon", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`georep-sync daemon --help` could not run: {exc}"
    if r.returncode == 0:
        return True, ""
    said = (r.stderr or r.stdout).strip().splitlines()
    return False, (f"georep-sync daemon not implemented yet (`georep-sync daemon --help` exited {r.returncode}"
                   + (f": {said[0]}" if said else "") + ")")


def names_and_sizes(root: Path, skip_top: frozenset[str] = frozenset({".georep"})) -> dict[bytes, int]:
    """Relative name → size (−1 for directories): cheap enough to poll while a sync settles."""

    out: dict[bytes, int] = {}
    rootb = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(rootb):
        if dirpath == rootb:
            dirnames[:] = [d for d in dirnames if os.fsdecode(d) not in skip_top]
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), rootb)] = -1
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                out[os.path.relpath(p, rootb)] = os.lstat(p).st_size
            except OSError:
                continue
    return out

"""`georep-sync daemon DIR SECONDARY` on a plain directory (inotify), live, through the WAN proxy.

One daemon follows one source tree for the whole measurement, as an operator would run it:

1. **Set-up.** A tree like the *small* dataset (`datasets.make_small`: 1–16 KiB files, one name
   in 25 awkward) — the *small* dataset itself, same size and seed — is generated in ``BASE/src/tree``; the daemon is
   started on ``BASE/src`` with an ``ssh://`` secondary through bench/proxy.py to the private
   sshd (as the other georep-sync contenders), and waited for until ``georep-sync status``
   says ``live`` with nothing pending and the secondary holds every name at its size.
2. **Trickle of writes**: `bench.live.measure_lag` (size *and* xxh3-128 on the secondary),
   after one warm-up file, so the figures are the steady state, not the start-up.
3. **touch-few**: `Plan.touch_count` files of the tree rewritten in place back to back (same
   size, new content, no ``utime``: what an ordinary writer does); each file is timed until
   its new content is on the secondary, and the row's "all complete" is from the last write.
4. **Directory rename**: ``os.rename`` of the tree's directory.  Bytes on the wire (both
   directions, the proxy's counters) from just before the rename until the secondary shows
   the new name with every file at its size and the old name gone, checked by walking the
   secondary (the walk's duration is part of the time, and stated).  Before the rename the
   daemon is left to go quiet on the wire, so nothing else is counted.  For comparison,
   ``rsync -a --delete`` of the same source over the same proxy into its own secondary:
   seeded before the rename, rerun after it, and that rerun is measured.

Every replica is compared with the source at the end (bench/verify.py), after the clocks
stopped.  The daemon is always stopped, SIGTERM then SIGKILL, whatever happened; everything
is written under ``BASE`` (inside the run's work directory).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import datasets, verify
from bench.contenders import PYTHON, REMOTE_COMMAND, Rsync
from bench.live import Deliveries, measure_lag, names_and_sizes, warm_up
from bench.measure import TreeMonitor
from bench.proxy import Counters, WanProxy
from bench.results import DatasetInfo, LiveTreeRow, NotRun, quantile

if TYPE_CHECKING:
    from bench.runner import Runner

CONTENDER = "georep-sync daemon (inotify)"
RSYNC = "rsync -a --delete (rerun)"
#: How long the daemon may take to replicate the tree at start, and any one change later.
INITIAL_TIMEOUT_S = 300.0
CHANGE_TIMEOUT_S = 60.0
#: Nothing through the proxy for this long: the daemon is idle.
QUIET_S = 0.5
#: The issue's acceptance figures (reported against the measurement, never asserted).
TARGET_P50_S = 0.5
TARGET_TOUCH_S = 1.0
TARGET_RENAME_WIRE = 64 * 1024
#: How often the rename is looked for on the secondary (the cheap test: old name gone, new there).
RENAME_POLL_S = 0.005


class Failed(Exception):
    """A step could not be measured: the reason goes to "Not run"."""


class Daemon:
    """``georep-sync daemon SRC ssh://…DST`` as a real process; `stop` always ends it."""

    def __init__(self, runner: Runner, src: Path, dst: Path, state: Path, log: Path) -> None:
        assert runner.path is not None
        path = runner.path
        self.src, self.dst, self.state, self.log = src, dst, state, log
        self.argv = [PYTHON, "-m", "georep", "daemon", str(src), f"ssh://root@127.0.0.1:{path.port}{dst}",
                     "--state-dir", str(state), "--known-hosts", str(path.known_hosts), "--identity",
                     str(path.identity), "--remote-command", REMOTE_COMMAND]
        self.proc: subprocess.Popen[bytes] | None = None
        self.was_live = False  # reached "live": from then on SIGTERM must end it with status 0

    def start(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit status (None if it never started)."""

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, n: int = 400) -> str:
        try:
            return " ⏎ ".join(self.log.read_text(errors="replace").strip().splitlines())[-n:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise Failed(f"the daemon exited {self.proc.returncode}: {self.tail()}")

    def status(self) -> dict[str, Any] | None:
        """This daemon's session from ``georep-sync status --json`` (None until it has written one)."""

        r = subprocess.run([PYTHON, "-m", "georep", "status", "--state-dir", str(self.state), "--json"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return None
        try:
            sessions = json.loads(r.stdout)
        except ValueError:
            return None
        mine = [s for s in sessions if s.get("source") == str(self.src) and s.get("pid") == self.pid]
        return mine[0] if mine else None

    def wait_live(self, want: dict[bytes, int], timeout: float) -> dict[str, Any]:
        """Until the status says live with nothing pending and the secondary holds ``want``."""

        deadline = time.monotonic() + timeout
        st: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            st = self.status()
            if st is not None and st.get("state") == "faulty":
                raise Failed(f"the daemon is faulty: {st.get('reason')}: {self.tail()}")
            if (st is not None and st.get("state") == "live" and st.get("pending") == 0
                    and self.dst.is_dir() and names_and_sizes(self.dst) == want):
                self.was_live = True
                return st
            time.sleep(0.3)
        said = f"state {st.get('state')!r} {st.get('reason') or ''}".strip() if st else "no status yet"
        raise Failed(f"initial sync not complete after {timeout:g} s ({said}): {self.tail()}")


def wait_quiet(proxy: WanProxy, quiet: float, timeout: float) -> bool:
    """Until no byte went through the proxy for ``quiet`` seconds (False after ``timeout``)."""

    deadline = time.monotonic() + timeout
    last = proxy.counters().total
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = proxy.counters().total
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


def _files(root: Path) -> list[bytes]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.fsencode(root)) for f in fs)


def _complete_files(want: dict[bytes, int], got: dict[bytes, int]) -> int:
    """Files of ``want`` present in ``got`` at their size."""

    return sum(1 for name, size in want.items() if size >= 0 and got.get(name) == size)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def run(runner: Runner, base: Path) -> None:
    """Measure the plain-directory daemon; rows to ``runner.results.live_tree``, failures to "Not run"."""

    assert runner.path is not None and runner.proxy is not None and runner.sshd is not None
    base.mkdir()
    daemon = Daemon(runner, base / "src", base / "dst", base / "state", base / "daemon.log")
    try:
        _measure(runner, base, daemon)
    except (Failed, OSError, subprocess.SubprocessError) as exc:
        # a failure here must not cost the rest of the run (the brick daemon, gsyncd, ...): it is reported
        reason = str(exc) if isinstance(exc, Failed) else f"{type(exc).__name__}: {exc}; {daemon.tail()}"
        runner.results.not_run.append(NotRun(f"{CONTENDER}, plain directory", reason))
        runner.log(f"plain-directory daemon: {reason}")
    finally:
        code = daemon.stop()
        if daemon.was_live and code not in (None, 0):
            runner.results.findings.append(f"{CONTENDER} exited {code} on SIGTERM (0 expected): {daemon.tail(300)}")


def _measure(runner: Runner, base: Path, daemon: Daemon) -> None:
    assert runner.path is not None and runner.proxy is not None and runner.sshd is not None
    plan, proxy, results = runner.plan, runner.proxy, runner.results
    src, dst = daemon.src, daemon.dst
    quick = " (quick run; the full run uses 20,000)" if results.quick else ""

    # 1. the tree, the daemon, its initial sync --------------------------------------------
    src.mkdir()
    t = time.perf_counter()
    stats = datasets.make_small(src / "tree", files=plan.small_files, dirs=plan.small_dirs)  # *small*, same seed
    tree_desc = f"{stats.files:,} files of 1–16 KiB ({stats.bytes / 1e6:.1f} MB) in {stats.dirs} directories"
    results.datasets.append(DatasetInfo(
        "plain-dir live", stats.files, stats.dirs, 0, stats.bytes, time.perf_counter() - t,
        f"the plain-directory daemon's tree: the *small* dataset (same size and seed), renamed live{quick}"))
    runner.log(f"plain-directory daemon: source tree of {tree_desc}")
    runner.proxy.set_link(runner.link(plan.rtts_ms[0]))
    want = names_and_sizes(src)
    t = time.perf_counter()
    daemon.start()
    mon = TreeMonitor(daemon.pid, runner.sshd.pid)
    mon.start()
    try:
        daemon.wait_live(want, INITIAL_TIMEOUT_S)
        initial = time.perf_counter() - t
        runner.log(f"plain-directory daemon: initial sync of {len(want):,} names in {initial:.1f}s")
        warm = warm_up(src, dst, timeout=CHANGE_TIMEOUT_S)
        if warm is None:
            raise Failed(f"a warm-up file did not reach the secondary in {CHANGE_TIMEOUT_S:.0f} s: {daemon.tail()}")

        # 2. trickle of writes -------------------------------------------------------------
        before = proxy.counters()
        delivered, lags = measure_lag(src, dst, writes=plan.live_writes, interval=plan.live_interval,
                                      timeout=CHANGE_TIMEOUT_S)
        wire = proxy.counters() - before
        daemon.check_alive()
        mon.sample()
        results.live_tree.append(LiveTreeRow(
            "trickle of writes", CONTENDER, plan.live_writes, delivered, lags, None, wire.up, wire.down, None,
            f"{plan.live_writes} new files of 1–64 KiB, one every {plan.live_interval * 1000:.0f} ms, next to a "
            f"replicated tree of {stats.files:,} files; initial sync of the tree {initial:.1f} s, warm-up file "
            f"{_ms(warm)}; peak RSS sender {mon.local.peak_bytes / 2**20:.0f} MiB, receiver "
            f"{mon.remote.peak_bytes / 2**20:.0f} MiB", f"p50 < {TARGET_P50_S * 1000:.0f} ms",
            _met(p50 < TARGET_P50_S if (p50 := quantile(lags, 0.5)) is not None else None,
                 delivered == plan.live_writes)))
        runner.log(f"plain-directory daemon: {delivered}/{plan.live_writes} writes delivered")

        # 3. touch-few -----------------------------------------------------------------------
        _touch_few(runner, daemon, stats.files)
    finally:
        mon.stop()  # rsync's receiver below runs under the same sshd: not the daemon's memory

    # 4. directory rename, and rsync redoing it --------------------------------------------
    _rename(runner, base, daemon, stats, tree_desc + quick)


def _touch_few(runner: Runner, daemon: Daemon, tree_files: int) -> None:
    plan, proxy, results = runner.plan, runner.proxy, runner.results
    assert proxy is not None
    src, dst = daemon.src, daemon.dst
    wait_quiet(proxy, QUIET_S, 10)
    rng = random.Random(43)
    chosen = rng.sample(_files(src / "tree"), min(plan.touch_count, tree_files))
    deliveries = Deliveries(CHANGE_TIMEOUT_S)
    before = proxy.counters()
    written = 0
    last_write = 0.0
    for i, path in enumerate(chosen):
        size = os.stat(path).st_size
        data = rng.randbytes(size)
        with open(path, "r+b") as f:
            f.write(data)
        last_write = time.perf_counter()
        written += size
        rel = os.path.relpath(path, os.fsencode(src))
        deliveries.expect(i, dst / os.fsdecode(rel), data, last_write)
    deliveries.close()
    wire = proxy.counters() - before
    daemon.check_alive()
    complete = len(deliveries.lags)
    done = max(deliveries.done_at.values()) - last_write if complete == len(chosen) else None
    results.live_tree.append(LiveTreeRow(
        "touch-few", CONTENDER, len(chosen), complete, list(deliveries.lags.values()), done, wire.up, wire.down,
        None, f"{len(chosen)} files ({written / 1024:.0f} KiB) of the {tree_files:,}-file tree rewritten in place "
        "back to back (same size, new content); lags from each file's write, 'all complete' from the last write",
        f"all complete < {TARGET_TOUCH_S * 1000:.0f} ms after the last write",
        _met(done < TARGET_TOUCH_S if done is not None else None, complete == len(chosen))))
    runner.log(f"plain-directory daemon: touch-few {complete}/{len(chosen)} complete"
               + (f", {_ms(done)} after the last write" if done is not None else ""))


def _rename(runner: Runner, base: Path, daemon: Daemon, stats: datasets.TreeStats, tree_desc: str) -> None:
    assert runner.path is not None and runner.proxy is not None
    proxy, results = runner.proxy, runner.results
    src, dst = daemon.src, daemon.dst
    rsync_dst = base / "dst-rsync"
    rsync_argv = Rsync().argv(runner.path, src, rsync_dst, base / "state-rsync")

    # rsync's secondary holds the tree before the rename, as the daemon's does
    seed = runner.path.run(rsync_argv)
    if seed.exit_code != 0:
        raise Failed(f"rsync could not seed its secondary (exit {seed.exit_code}): {seed.stderr.strip()[-300:]}")
    daemon.check_alive()
    if not wait_quiet(proxy, QUIET_S, 15):
        runner.log("plain-directory daemon: the wire did not go quiet before the rename")

    old, new = "tree", "tree-renamed"
    want = names_and_sizes(src / old)
    before = proxy.counters()
    t0 = time.perf_counter()
    os.rename(src / old, src / new)
    converged: float | None = None
    check_s = 0.0
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    got: dict[bytes, int] = {}
    while time.monotonic() < deadline:
        if not os.path.lexists(dst / old) and (dst / new).is_dir():
            tc = time.perf_counter()
            got = names_and_sizes(dst / new)
            if got == want:
                converged = time.perf_counter() - t0
                check_s = time.perf_counter() - tc
                break
            daemon.check_alive()
        time.sleep(RENAME_POLL_S)
    wire = proxy.counters() - before
    wait_quiet(proxy, QUIET_S, 10)
    trailing = proxy.counters() - before - wire
    daemon.check_alive()
    if converged is None:
        got = names_and_sizes(dst / new) if (dst / new).is_dir() else {}
    expected = verify.snapshot(src)
    problems = verify.differences(expected, verify.snapshot(dst))
    files = sum(1 for size in want.values() if size >= 0)
    results.live_tree.append(LiveTreeRow(
        "directory rename", CONTENDER, files, _complete_files(want, got), [], converged, wire.up, wire.down,
        not problems,
        f"os.rename of a directory holding {tree_desc}; wire and time until the new name holds every file at "
        f"its size and the old name is gone"
        + (f" (checked by a walk of the secondary, {_ms(check_s)}, included)" if converged is not None
           else f": NOT converged after {CHANGE_TIMEOUT_S:.0f} s" + (" (old name still there)"
                                                                      if os.path.lexists(dst / old) else ""))
        + f"; {_bytes(trailing)} more until the wire went quiet"
        + (f"; replica differs: {'; '.join(problems)[:300]}" if problems else ""),
        f"< {TARGET_RENAME_WIRE // 1024} KiB on the wire",
        _met(wire.total < TARGET_RENAME_WIRE, converged is not None and not problems)))
    runner.log("plain-directory daemon: directory rename "
               + (f"converged in {_ms(converged)}" if converged is not None else "NOT converged")
               + f", {wire.total:,} bytes on the wire" + ("" if not problems else f"; replica differs: {problems}"))

    # rsync over the same proxy redoes the same rename from its seeded secondary
    os.sync()
    m = runner.path.run(rsync_argv)
    rsync_got = names_and_sizes(rsync_dst / new) if (rsync_dst / new).is_dir() else {}
    rproblems = ([f"exit {m.exit_code}: {m.stderr.strip()[-300:]}"] if m.exit_code else []) + verify.differences(
        expected, verify.snapshot(rsync_dst))
    results.live_tree.append(LiveTreeRow(
        "directory rename", RSYNC, files, _complete_files(want, rsync_got), [], m.wall if m.exit_code == 0 else None,
        m.wire.up, m.wire.down, not rproblems,
        f"`rsync -a --delete` of the same source tree over the same proxy into its own secondary, seeded before "
        f"the rename ({seed.wall:.1f} s, {seed.wire.total / 1e6:.1f} MB on the wire); time = the rerun's wall "
        "time, process start to exit" + (f"; replica differs: {'; '.join(rproblems)[:300]}" if rproblems else "")))
    runner.log(f"plain-directory daemon: rsync redoing the rename: {m.wall:.2f}s, {m.wire.total:,} bytes on the wire")


def _met(figure: bool | None, complete: bool) -> bool | None:
    """A target is met only by a complete, correct result; None when there is no figure to judge."""

    return None if figure is None else (figure and complete)


def _bytes(c: Counters) -> str:
    return f"{c.total:,} bytes"

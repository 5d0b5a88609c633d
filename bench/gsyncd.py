"""gsyncd, GlusterFS's own geo-replication, between two single-brick volumes on this machine.

How the session is built without touching root's ``~/.ssh``: ``gluster system:: execute
gsec_create`` makes gsyncd's key pair (with its ``command=`` forced commands) under
/var/lib/glusterd/geo-replication; those public lines are added to *our* private sshd's
``authorized_keys`` only; the session is created with ``no-verify`` (no ``push-pem``,
which would need password-less root SSH to port 22), and ``ssh-port`` points gsyncd's
``ssh`` at the WAN proxy, so its bytes are counted like everyone else's.

gsyncd is benchmarked with ``sync-method tarssh``: with Debian's rsync 3.5.0 its default
rsync method delivers names without data (shared/reference/gluster-brick.md section 4).
That default is probed too and what it did is reported as a finding.  gsyncd is a
daemon, so "wall" for a dataset is from ``geo-replication start`` (data written into the
primary volume beforehand) until the secondary brick holds every name at its size; the
replica is then compared with the source through the secondary's FUSE mount.  Its CPU
time is not measured (it is not our child) and its peak RSS covers the monitor's process
tree and the remote processes under sshd, not the FUSE client daemons it spawns.

Each dataset is copied into a fresh primary volume through FUSE (``cp -a``, not timed) and a
fresh session is started on it, so every figure is gsyncd's initial sync (its hybrid
crawl), the mode a new 11 TB replica starts in.  The small dataset runs first as it is:
non-UTF-8 names crash gsyncd's journal reader and a crashed session replays the same
input forever, so that session is deleted, the non-UTF-8 names are renamed on the primary
(made UTF-8, everything else identical) and a new session on a new secondary gives the
numbers.  Live lag is measured on the last session once it has caught up and delivered a
warm-up file, i.e. in its steady changelog mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from bench import verify
from bench.gluster import GlusterUnavailable, Volume, ensure_glusterd, gluster, volume
from bench.live import measure_lag, names_and_sizes, wait_until, warm_up
from bench.measure import TreeMonitor
from bench.results import DatasetInfo, LiveRow, NotRun, SyncRow

if TYPE_CHECKING:
    from bench.runner import Runner

GEOREP_DIR = Path("/var/lib/glusterd/geo-replication")
LOG_DIR = Path("/var/log/glusterfs/geo-replication")
CONTENDER = "gsyncd (tarssh)"
#: How long a dataset may take to converge before gsyncd is reported as not finishing.
CONVERGE_TIMEOUT = 420.0
#: The datasets the section copies (from the sync section's sources); small first, with its rerun.
DATASETS = ("small", "large", "mixed")
#: Copies of each dataset's data the section makes at most: a local copy with UTF-8 names, the
#: primary's brick, the secondary's brick (and one more secondary for the small tree).
COPIES = 4
#: Names per dataset file: those copies, plus each brick's gfid link and its .glusterfs/xx/yy
#: directory (58,111 names in a brick holding the 20,200-entry small tree).
NAMES_PER_FILE = 10
#: A session whose secondary has not changed for this long is reported as stalled.
STALL_S = 45.0
#: After the probe's names arrive, how long their data gets before we look.
PROBE_GRACE_S = 10.0
#: How long the probe waits for names: nine of gsyncd's 5 s change intervals, three 15 s rollovers.
PROBE_WAIT_S = 45.0
#: Live lag: a write counts as delivered if complete on the secondary this long after it was made:
#: three of gsyncd's 15 s journal rollovers, each followed by a 5 s change interval, fit in it
#: (the full run of 2026-12-04 waited 60 s and saw nothing of 200 writes arrive).
LIVE_TIMEOUT_S = 45.0
#: Where the live writes go, on both volumes.
LIVE_DIR = "live"


class Session:
    """One gsyncd session PRIMARY → 127.0.0.1::SECONDARY through the runner's proxy."""

    def __init__(self, runner: Runner, primary: Volume, secondary: Volume) -> None:
        assert runner.path is not None
        self.runner = runner
        self.primary = primary
        self.secondary = secondary
        self.remote = f"127.0.0.1::{secondary.name}"
        self.name = f"{primary.name}_127.0.0.1_{secondary.name}"
        self.log = LOG_DIR / self.name / "gsyncd.log"
        self._log_offset = 0

    def georep(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return gluster("volume", "geo-replication", self.primary.name, self.remote, *args, check=check)

    def create(self, sync_method: str) -> None:
        runner = self.runner
        assert runner.sshd is not None and runner.path is not None
        gluster("system::", "execute", "gsec_create")
        for line in (GEOREP_DIR / "common_secret.pem.pub").read_text().splitlines():
            if line.strip():
                runner.sshd.authorize(line)
        port = str(runner.path.port)
        self.georep("create", "ssh-port", port, "no-verify", "force")
        self.georep("config", "ssh-port", port)
        self.georep("config", "sync-method", sync_method)

    def start(self) -> None:
        self.mark_log()
        self.georep("start")

    def stop(self) -> None:
        self.georep("stop", "force", check=False)

    def delete(self) -> None:
        self.stop()
        self.georep("delete", check=False)

    def status(self) -> str:
        out = self.georep("status", check=False).stdout
        for word in ("Faulty", "Active", "Passive", "Initializing...", "Created", "Stopped"):
            if word in out:
                return word
        return out.strip().splitlines()[-1] if out.strip() else "?"

    def mark_log(self) -> None:
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0

    def log_since_mark(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def crash(self) -> str | None:
        """The exception gsyncd's worker keeps dying of since the mark, once it has died of it twice."""

        text = self.log_since_mark()
        if text.count("FAIL:") < 2:
            return None
        errors = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", text, flags=re.M)
        return errors[-1] if errors else "worker failed (see gsyncd.log)"

    def monitor_pid(self) -> int | None:
        pidfile = Path(f"/var/run/gluster/gsyncd-{self.primary.name}-127.0.0.1-{self.secondary.name}.pid")
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@contextlib.contextmanager
def session(runner: Runner, primary: Volume, secondary: Volume, sync_method: str = "tarssh") -> Iterator[Session]:
    """A created (not started) session between two volumes; stopped and deleted afterwards."""

    s = Session(runner, primary, secondary)
    try:
        s.create(sync_method)
        yield s
    finally:
        s.delete()


@contextlib.contextmanager
def pair(runner: Runner, base: Path, tag: str) -> Iterator[tuple[Volume, Volume]]:
    """A fresh primary and secondary volume (names carry our pid: other runs share this glusterd)."""

    base.mkdir(parents=True, exist_ok=True)
    with volume(base, f"gbench{os.getpid()}{tag}p") as prim, volume(base, f"gbench{os.getpid()}{tag}s") as sec:
        yield prim, sec


def utf8_copy_names(root: Path) -> int:
    """Rename, in place, every name under ``root`` that is not valid UTF-8 (bytes → ``\\xNN`` text)."""

    renamed = 0
    rootb = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(rootb, topdown=False):
        for name in dirnames + filenames:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                fixed = name.decode("utf-8", "backslashreplace").encode()
                os.rename(os.path.join(dirpath, name), os.path.join(dirpath, fixed))
                renamed += 1
    return renamed


#: Copies running side by side while a dataset is loaded into a primary volume.
LOAD_COPIES = 4


def _load(src: Path, vol: Volume, rel: str) -> float:
    """Copy a dataset into the primary volume through FUSE; seconds taken (not part of any figure).

    What ``cp -a SRC/. DST`` does, one ``cp -a`` per top-level entry, ``LOAD_COPIES`` at a
    time: through FUSE every create waits for the brick, so one copy left both cores mostly
    idle (the small tree: 41 s alone, 17 s four at a time).  The root's owner, mode and
    times are set last, as ``cp -a`` would.
    """

    t = time.perf_counter()
    dst = vol.mount / rel
    dst.mkdir(exist_ok=True)

    def copy(name: str) -> None:
        subprocess.run(["cp", "-a", "--", str(src / name), f"{dst}/"], check=True, capture_output=True)

    with ThreadPoolExecutor(LOAD_COPIES) as pool:
        list(pool.map(copy, sorted(os.listdir(src))))  # (list: a failed copy raises here)
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    roll_over(vol)
    return time.perf_counter() - t


def roll_over(vol: Volume) -> None:
    """Close the brick's live journal now, so a session started next begins after it.

    Without this, the journal still open when the session starts (up to 15 s of the copy that
    loaded the data) is replayed once the hybrid crawl is done, and gsyncd sends that data a
    second time (measured: 2.15 GB on the wire for the 1.07 GB large dataset).  Operators start
    sessions on data written long before, so the figure should not include that.  Any volume
    reconfigure rolls the journal over (shared/reference/gluster-brick.md section 1); setting
    the rollover time to its default value is one that changes nothing else.
    """

    gluster("volume", "set", vol.name, "changelog.rollover-time", "15")
    time.sleep(1.1)  # journals are second-granular: start the session in a later second


def _brick_view(vol: Volume, rel: str) -> dict[bytes, int]:
    return names_and_sizes(vol.brick / rel) if (vol.brick / rel).exists() else {}


def catch_up(runner: Runner, s: Session, rel: str, label: str, src: Path, data_bytes: int, files: int) -> SyncRow:
    """Start the session on data already in the primary (under ``rel``); time until the secondary holds
    it all, then compare it with ``src``.  The session is left running."""

    assert runner.sshd is not None and runner.proxy is not None
    want = names_and_sizes(src)
    want_files = sorted(v for v in want.values() if v >= 0)
    before = runner.proxy.counters()
    os.sync()
    t0 = time.perf_counter()
    s.start()
    mon: TreeMonitor | None = None
    problems: list[str] = []
    converged = False
    last_view: dict[bytes, int] = {}
    last_change = t0
    while time.perf_counter() - t0 < CONVERGE_TIMEOUT:
        pid = s.monitor_pid()
        if mon is None and pid is not None:
            mon = TreeMonitor(pid, runner.sshd.pid)
            mon.start()
        view = _brick_view(s.secondary, rel)
        now = time.perf_counter()
        # done when every name is there at its size, or when every file size is there under some
        # name (gsyncd rewrites some names: the comparison below then lists them)
        if view == want or sorted(v for v in view.values() if v >= 0) == want_files:
            converged = True
            break
        if view != last_view:
            last_view, last_change = view, now
        elif view and now - last_change > STALL_S:
            problems.append(f"stalled: nothing changed on the secondary for {STALL_S:.0f} s "
                            f"({sum(1 for v in view.values() if v >= 0)} of {files} files there, status {s.status()})")
            break
        crash = s.crash()
        if crash:
            problems.append(f"worker Faulty, restarting in a loop: {crash} ({sum(1 for v in view.values() if v >= 0)}"
                            f" of {files} files on the secondary after {now - t0:.0f} s)")
            break
        time.sleep(1.0)
    wall = time.perf_counter() - t0
    wire = runner.proxy.counters() - before
    if mon is not None:
        mon.stop()
    if not converged and not problems:
        problems.append(f"not converged after {CONVERGE_TIMEOUT:.0f} s (status {s.status()})")
    if converged:
        problems += verify.differences(verify.snapshot(src), verify.snapshot(s.secondary.mount / rel))
    return SyncRow(label, "initial", runner.plan.rtts_ms[0], CONTENDER, wall, data_bytes, files, wire.up,
                   wire.down, mon.local.peak_bytes if mon else 0, mon.remote.peak_bytes if mon else 0, None,
                   0 if converged else 1, converged and not problems, problems)


def probe_default_method(runner: Runner, base: Path) -> str:
    """What gsyncd's default (rsync) sync method does here: a fresh session using it, files written, a look."""

    count, size = 10, 5000
    with pair(runner, base, "r") as (prim, sec), session(runner, prim, sec, sync_method="rsync") as s:
        s.start()
        wait_until(lambda: "Changelog Crawl" in s.georep("status", check=False).stdout, 60, every=1)
        probe = prim.mount / "probe-rsync-method"
        probe.mkdir()
        for i in range(count):
            (probe / f"p{i}").write_bytes(os.urandom(size))
        roll_over(prim)  # hand the journal over now instead of at the next 15 s rollover
        t0 = time.perf_counter()
        target = sec.mount / probe.name

        def arrived() -> dict[bytes, int]:
            return {k: v for k, v in names_and_sizes(target).items() if v >= 0} if target.exists() else {}

        while time.perf_counter() - t0 < PROBE_WAIT_S and len(arrived()) < count and not s.crash():
            time.sleep(1)
        names_after = time.perf_counter() - t0
        time.sleep(PROBE_GRACE_S)
        got = arrived()
        full = sum(1 for v in got.values() if v == size)
        empty = sum(1 for v in got.values() if v == 0)
        crash = s.crash()
        status = s.status()
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"gsyncd's default sync method (`rsync`, here {' '.join(rsync.split())}), in a session of its own: of "
            f"{count} files of {size} B written to the primary, {len(got)} names reached the secondary within "
            f"{names_after:.0f} s; {PROBE_GRACE_S:.0f} s later {full} had their data and {empty} were empty; "
            f"session status {status}" + (f"; worker error: {crash}" if crash else "") + ".")


def room_needed(datasets: Iterable[DatasetInfo]) -> tuple[int, int]:
    """Names and bytes the section may leave in its work directory (bench/scratchfs.py sizes by them)."""

    used = [d for d in datasets if d.name in DATASETS]
    return NAMES_PER_FILE * sum(d.files for d in used), COPIES * sum(d.bytes for d in used)


def run(runner: Runner, base: Path) -> None:
    """The gsyncd section: the small tree as it is, then numbers per dataset, live lag, the default-method probe."""

    res = runner.results
    try:
        ensure_glusterd()
    except GlusterUnavailable as exc:
        res.not_run.append(NotRun("gsyncd", str(exc)))
        return
    if "small" not in runner.sources:
        res.not_run.append(NotRun("gsyncd", "needs the datasets (section sync)"))
        return
    info = {d.name: d for d in res.datasets}
    t = time.perf_counter()
    try:
        _small(runner, base, info["small"].bytes, info["small"].files)
        for name in DATASETS[1:]:
            if name not in runner.sources:
                continue
            with pair(runner, base, name[0]) as (prim, sec), session(runner, prim, sec) as s:
                local = base / f"{name}-utf8"
                subprocess.run(["cp", "-a", f"{runner.sources[name]}/.", str(local)], check=True)
                renamed = utf8_copy_names(local)
                label = f"{name}, UTF-8 names" if renamed else name
                if renamed:
                    res.findings.append(f"gsyncd's '{label}' row: the {name} dataset with its {renamed} non-UTF-8 "
                                        "names made UTF-8 (gsyncd crashes on them).")
                _load(local, prim, name)
                row = catch_up(runner, s, name, label, local, info[name].bytes, info[name].files)
                res.sync.append(row)
                runner.log(f"gsyncd {label}: {row.wall:.1f}s, "
                           f"{'verified' if row.verified else '; '.join(row.problems)[:300]}")
        # live lag on a session of its own, from empty volumes: after catching up a dataset (the
        # mixed tree in 2026-11-25's run, the large one on 2026-12-03) gsyncd stayed Active and
        # delivered no warm-up file in 120 s; from a fresh start it delivers one in about 11 s
        with pair(runner, base, "v") as (prim, sec), session(runner, prim, sec) as s:  # v: not a dataset initial
            s.start()
            _live(runner, s)
        res.findings.append(probe_default_method(runner, base))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        res.not_run.append(NotRun("gsyncd (remaining steps)", f"{type(exc).__name__}: {str(exc)[:500]}"))
    runner.log(f"gsyncd: section done in {time.perf_counter() - t:.0f}s")


def _small(runner: Runner, base: Path, nbytes: int, files: int) -> None:
    """The small tree as generated (the as-found row), then with its non-UTF-8 names made UTF-8."""

    res = runner.results
    src = runner.sources["small"]
    with pair(runner, base, "a") as (prim, sec):
        load = _load(src, prim, "small")
        runner.log(f"gsyncd: small copied into the primary in {load:.0f}s")
        with session(runner, prim, sec) as s:
            row = catch_up(runner, s, "small", "small", src, nbytes, files)
        res.sync.append(row)
        runner.log(f"gsyncd small as generated: {row.wall:.0f}s, {'; '.join(row.problems)[:300] or 'verified'}")
        if row.verified:
            return
        local = base / "small-utf8"
        subprocess.run(["cp", "-a", f"{src}/.", str(local)], check=True)
        renamed = utf8_copy_names(local)
        utf8_copy_names(prim.mount / "small")
        roll_over(prim)  # the renames' journal names non-UTF-8 bytes: the new session must never read it
        label = "small, UTF-8 names"
        res.findings.append(f"gsyncd's '{label}' row: a new session (new secondary volume) on the same primary after "
                            f"its {renamed} non-UTF-8 names were renamed to UTF-8 there; everything else identical.")
        with volume(base, f"gbench{os.getpid()}as2") as sec2, session(runner, prim, sec2) as s:
            row = catch_up(runner, s, "small", label, local, nbytes, files)
        res.sync.append(row)
        runner.log(f"gsyncd {label}: {row.wall:.1f}s, {'verified' if row.verified else '; '.join(row.problems)[:300]}")


def undelivered_note(held: dict[bytes, int], writes: int, status: str, crash: str | None) -> str:
    """What the secondary held of the live writes once their time was up, and gsyncd's state then.

    Why: "0 of 200 delivered" alone does not say whether gsyncd had stopped (Faulty), was
    still behind, or delivered names without data (as its rsync method does here).
    """

    files = [size for size in held.values() if size >= 0]
    empty = sum(1 for size in files if size == 0)
    return (f"once the last write's time was up: {len(files)} of {writes} names on the secondary ({empty} empty), "
            f"session status {status}" + (f", worker error: {crash}" if crash else ""))


def _live(runner: Runner, s: Session) -> None:
    res = runner.results
    warm = warm_up(s.primary.mount, s.secondary.mount, timeout=120)
    if warm is None:
        res.not_run.append(NotRun("gsyncd live lag", "a warm-up file did not reach the secondary in 120 s "
                                  f"(session status then: {s.status()[:300]})"))
        return
    s.mark_log()
    delivered, lags = measure_lag(s.primary.mount, s.secondary.mount, writes=runner.plan.live_writes,
                                  interval=runner.plan.live_interval, timeout=LIVE_TIMEOUT_S, subdir=LIVE_DIR)
    note = (f"GlusterFS defaults (changelog rollover 15 s, change_interval 5 s); warm-up file took {warm:.1f} s; "
            f"a write counts if complete within {LIVE_TIMEOUT_S:.0f} s")
    if delivered < runner.plan.live_writes:
        target = s.secondary.mount / LIVE_DIR
        held = names_and_sizes(target) if target.exists() else {}
        note += "; " + undelivered_note(held, runner.plan.live_writes, s.status(), s.crash())
    res.live.append(LiveRow(CONTENDER, runner.plan.live_writes, delivered, lags, note))
    runner.log(f"gsyncd live: {delivered}/{runner.plan.live_writes} delivered")

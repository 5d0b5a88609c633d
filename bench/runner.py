"""The benchmark run: datasets → contenders through the WAN proxy → verified rows → bench/report.py.

Order matters for fairness and is fixed: every phase runs every contender on the same source
state, each into its own secondary (and, for georep-sync, its own state directory), with
``sync()`` before each measured command so no contender pays for another's dirty pages.
The RTT sweep copies the small tree's initial state into fresh secondaries before any
mutation, so files/s at 0, 50 and 150 ms compare the same work.

Sections (``--only``): sync (datasets and mutations at the first RTT, plus the pipe
baseline), rtt (small tree at the other RTTs), live (georep-sync daemon on a plain
directory, then on a GlusterFS brick), gsyncd,
scale (crawl rate and memory on the scale tree), micro (pytest-benchmark).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import datasets, gluster, live_tree, verify
from bench.contenders import (
    CONTENDERS,
    PYTHON,
    REMOTE_COMMAND,
    Contender,
    Path2Secondary,
    byte_compile,
    pipe_baseline,
    tool_versions,
)
from bench.live import daemon_available, measure_lag, names_and_sizes, wait_until, warm_up
from bench.measure import Measured, TreeMonitor, run_measured
from bench.proxy import Link, WanProxy
from bench.results import (
    BaselineRow,
    DatasetInfo,
    LiveRow,
    MicroRow,
    NotRun,
    Results,
    ScaleRow,
    SyncRow,
)
from bench.scratchfs import scratch_fs
from bench.sshd import Sshd, start_sshd

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("sync", "rtt", "live", "gsyncd", "scale", "micro")


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and settings of one run: `FULL` (≈ 15 minutes here) or `QUICK` (CI, < 2 minutes)."""

    small_files: int
    small_dirs: int
    large_files: int
    large_size: int
    mixed_scale: float
    scale_entries: int
    rtts_ms: tuple[float, ...]
    bandwidth: float | None  # bytes/s on the emulated link; None: uncapped
    live_writes: int
    live_interval: float
    gsyncd: bool
    micro_max_time: float
    touch_count: int = 10
    rename_fraction: float = 0.2
    append_bytes: int = datasets.MIB
    #: copies of the small and large datasets per contender at the main RTT (median reported)
    repeat: int = 1


FULL = Plan(small_files=20_000, small_dirs=200, large_files=4, large_size=256 * datasets.MIB, mixed_scale=1.0,
            scale_entries=1_000_000, rtts_ms=(0, 50, 150), bandwidth=None, live_writes=200, live_interval=0.05,
            gsyncd=True, micro_max_time=0.5, repeat=3)
QUICK = Plan(small_files=2_000, small_dirs=40, large_files=2, large_size=16 * datasets.MIB, mixed_scale=0.05,
             scale_entries=20_000, rtts_ms=(0, 50), bandwidth=None, live_writes=20, live_interval=0.05,
             gsyncd=False, micro_max_time=0.05)


def _slug(c: Contender) -> str:
    return c.name.split()[0].replace("-", "_") + ("_" + c.name.split()[1] if len(c.name.split()) > 1 else "")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (``df -T``), "?" if it cannot be told."""

    fs = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.strip().splitlines()
    return fs[-1].split()[1] if len(fs) > 1 else "?"


def filesystem_description(path: Path) -> str:
    """The filesystem type of ``path``, and for ext4 whether it keeps a journal.

    Why say so: without a journal ext4 checks, for every inode it allocates, whether that
    inode was freed in the last 60-300 s (``recently_deleted()``): right after a mass delete
    every create steps over the freed inodes, and copies take several times as long (see
    bench/README.md).  A journaled ext4 skips that check.  The journal is told by its jbd2
    entry in /proc (``/proc/fs/jbd2/<device>-<inode>``).
    """

    kind = filesystem_type(path)
    if kind != "ext4":
        return kind
    src = subprocess.run(["df", "--output=source", str(path)], capture_output=True, text=True).stdout.split()
    jbd2 = Path("/proc/fs/jbd2")
    if len(src) < 2 or not src[-1].startswith("/dev/") or not jbd2.is_dir():
        return kind
    dev = os.path.basename(os.path.realpath(src[-1]))
    if any(entry.name.rsplit("-", 1)[0] == dev for entry in jbd2.iterdir()):
        return "ext4 (journaled)"
    return "ext4 without a journal (recently_deleted() applies: see bench/README.md)"


def machine_info(workdir: Path) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip() or " ".join(platform.uname())
    return {"uname -a": uname, "CPU": f"{cpu} × {os.cpu_count()}", "memory": mem,
            "work filesystem": filesystem_description(workdir),
            "load average at start (1/5/15 min)": load_average()}


def _count_entries(root: Path) -> int:
    """The root and every name below it; the agent's own ``.georep`` at the top is not part of a replica."""

    n = 1
    for top, dirs, files in os.walk(root):
        if top == str(root) and ".georep" in dirs:
            dirs.remove(".georep")
        n += len(dirs) + len(files)
    return n


def load_average() -> str:
    """Other work on the machine skews single-sample figures: the report states how busy it was."""

    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


class Runner:
    """Runs the chosen sections of one `Plan` in ``workdir`` and fills a `Results`."""

    def __init__(self, plan: Plan, workdir: Path, sections: set[str], results: Results,
                 log: Callable[[str], None]) -> None:
        self.plan = plan
        self.work = workdir
        self.sections = sections
        self.results = results
        self._log = log
        self.t0 = time.monotonic()
        self.sshd: Sshd | None = None
        self.proxy: WanProxy | None = None
        self.path: Path2Secondary | None = None
        self.sources: dict[str, Path] = {}
        self._discarded = 0

    def discard(self, path: Path) -> None:
        """Set a finished secondary aside; it is deleted with the work directory, after the run.

        Why not delete it now: for a while after a mass delete (60 s, or 300 s while the inode
        table is dirty) ext4's inode allocator steps over each freed inode in turn
        (``recently_deleted()``), and perf showed the next copy spending most of its time
        there: 100,000 files took 14 s on a quiet disk and 45-70 s right after such a delete.
        That is the kernel's cost, not a contender's, and it fell on whichever ran next.
        """

        if path.exists():
            trash = self.work / "discarded"
            trash.mkdir(exist_ok=True)
            self._discarded += 1
            path.rename(trash / f"{self._discarded}-{path.name}")

    def log(self, msg: str) -> None:
        self._log(f"[{time.monotonic() - self.t0:6.1f}s] {msg}")

    # -- set-up ---------------------------------------------------------------------

    def link(self, rtt_ms: float) -> Link:
        return Link(rtt=rtt_ms / 1000, bandwidth=self.plan.bandwidth)

    def start(self) -> None:
        byte_compile()
        self.sshd = start_sshd(self.work)
        self.proxy = WanProxy(self.sshd.port, self.link(self.plan.rtts_ms[0])).start()
        self.path = Path2Secondary(self.proxy, self.sshd.pid, self.sshd.identity,
                                   self.sshd.known_hosts(self.proxy.port))
        self.log(f"sshd on 127.0.0.1:{self.sshd.port}, WAN proxy on :{self.proxy.port}")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.sshd is not None:
            self.sshd.stop()

    def run(self) -> Results:
        self.start()
        try:
            if self.sections & {"sync", "rtt"}:
                self.section_sync()
            if "live" in self.sections:
                self.section_live()
            if "gsyncd" in self.sections:
                self.section_gsyncd()
            if "scale" in self.sections:
                self.section_scale()
            if "micro" in self.sections:
                self.section_micro()
        finally:
            self.stop()
        return self.results  # its elapsed time is the whole command's: bench/__main__.py sets it

    # -- datasets -------------------------------------------------------------------

    def generate(self, name: str, maker: Callable[[Path], datasets.TreeStats], description: str,
                 base: Path | None = None) -> Path:
        root = (base or self.work) / "src" / name
        t = time.perf_counter()
        stats = maker(root)
        dt = time.perf_counter() - t
        self.results.datasets.append(DatasetInfo(name, stats.files, stats.dirs, stats.symlinks, stats.bytes, dt,
                                                 description))
        self.log(f"dataset {name}: {stats.files} files, {stats.bytes / 1e6:.1f} MB in {dt:.1f}s")
        self.sources[name] = root
        return root

    # -- replication runs -----------------------------------------------------------

    def sync_phase(self, dataset: str, phase: str, data_bytes: int, files: int, rtt_ms: float, tag: str,
                   repeat: int = 1, repeated: tuple[str, ...] | None = None) -> None:
        """Every contender brings its own secondary ``tag`` of ``dataset`` up to date; verify each.

        ``repeat`` > 1 (initial copies only): each contender copies the dataset that many times,
        the contenders taking turns, each time to a new secondary; the row shows the median wall
        time and all of them (the disk here is shared and noisy: one sample misleads).  The last
        copy is the one later phases update.  ``repeated``: only these contenders repeat (the
        others copy once, in the last round).
        """

        assert self.path is not None and self.proxy is not None
        src = self.sources[dataset]
        self.proxy.set_link(self.link(rtt_ms))
        expected = verify.snapshot(src)
        runs: dict[str, list[tuple[Measured, list[str]]]] = {c.name: [] for c in CONTENDERS}
        for r in range(repeat):
            last = r == repeat - 1
            for c in CONTENDERS if r % 2 == 0 else tuple(reversed(CONTENDERS)):
                if not last and repeated is not None and c.name not in repeated:
                    continue
                name = f"{dataset}-{tag}" if last else f"{dataset}-{tag}-try{r}"
                dst = self.work / "dst" / _slug(c) / name
                state = self.work / "state" / _slug(c) / name
                os.sync()
                m = self.path.run(c.argv(self.path, src, dst, state))
                problems: list[str] = []
                if m.exit_code != 0:
                    problems.append(f"exit {m.exit_code}: {m.stderr.strip()[-400:]}")
                if dst.is_dir():
                    problems += verify.differences(expected, verify.snapshot(dst))
                else:
                    problems.append("the secondary does not exist")
                runs[c.name].append((m, problems))
                if not last:
                    self.discard(dst)
                    self.discard(state)
        for c in CONTENDERS:
            m = runs[c.name][-1][0]  # wire bytes, memory and CPU: the copy later phases build on
            problems = [p for _run, trouble in runs[c.name] for p in trouble]
            exit_code = next((run.exit_code for run, _t in runs[c.name] if run.exit_code != 0), 0)
            walls = [run.wall for run, _t in runs[c.name]]
            row = SyncRow(dataset, phase, rtt_ms, c.name, statistics.median(walls), data_bytes, files, m.wire.up,
                          m.wire.down, m.rss_local, m.rss_remote, m.cpu_local, exit_code, not problems, problems,
                          walls if len(walls) > 1 else [])
            self.results.sync.append(row)
            self.log(f"{dataset} {phase} @{rtt_ms:g}ms {c.name}: {m.wall:.2f}s, "
                     f"{m.wire.total / 1e6:.1f} MB wire, {'verified' if row.verified else 'NOT EQUAL'}"
                     + ("" if row.verified else f" ({'; '.join(problems)[:300]})"))

    def measure_ssh_setup(self, rtt_ms: float) -> None:
        """`ssh HOST true` through the proxy at ``rtt_ms``, best of three: what every SSH contender pays first."""

        assert self.path is not None and self.proxy is not None
        self.proxy.set_link(self.link(rtt_ms))
        walls = [self.path.run([*self.path.ssh_argv(), "root@127.0.0.1", "true"]).wall for _ in range(3)]
        self.results.ssh_setup[rtt_ms] = min(walls)
        self.log(f"ssh setup @{rtt_ms:g}ms: {min(walls):.3f}s")

    def section_sync(self) -> None:
        p = self.plan
        main_rtt = p.rtts_ms[0]
        small = self.generate(
            "small", lambda r: datasets.make_small(r, files=p.small_files, dirs=p.small_dirs),
            f"{p.small_files:,} files of 1–16 KiB in {p.small_dirs} directories, 1 in 25 names awkward")
        total = self.results.datasets[-1]
        phases: list[tuple[str, Callable[[], datasets.Mutation]]] = []
        if "sync" in self.sections:
            self.sync_phase("small", "initial", total.bytes, total.files, main_rtt, "main", repeat=p.repeat)
        if "rtt" in self.sections:
            for rtt in p.rtts_ms:
                self.measure_ssh_setup(rtt)
            for rtt in p.rtts_ms[1:]:
                # the farthest RTT decides a tuning target against georep-sync's own 0 ms rate: its
                # runs repeat as the 0 ms ones do, so that one noisy sample cannot decide it
                far = rtt == p.rtts_ms[-1]
                self.sync_phase("small", "initial", total.bytes, total.files, rtt, f"rtt{rtt:g}",
                                repeat=p.repeat if far else 1, repeated=(CONTENDERS[0].name,))
        if "sync" not in self.sections:
            return
        phases = [
            ("no-change", lambda: datasets.Mutation("no-change", 0, 0, "nothing changed since the last run")),
            ("touch-few", lambda: datasets.mutate_touch_few(small, count=p.touch_count)),
            ("renames", lambda: datasets.mutate_renames(small, fraction=p.rename_fraction,
                                                        dir_renames=max(1, p.small_dirs // 20),
                                                        rewrites=max(1, p.small_files // 100))),
        ]
        for phase, mutate in phases:
            mut = mutate()
            self.results.mutations[phase] = mut.description
            self.results.renamed_bytes[phase] = mut.renamed_bytes
            self.sync_phase("small", phase, mut.bytes, mut.files, main_rtt, "main")

        large = self.generate("large", lambda r: datasets.make_large(r, files=p.large_files, size=p.large_size),
                              f"{p.large_files} incompressible files of {p.large_size // datasets.MIB} MiB")
        info = self.results.datasets[-1]
        self.baseline(sorted(large.iterdir()), info.bytes)
        self.sync_phase("large", "initial", info.bytes, info.files, main_rtt, "main", repeat=p.repeat)
        mut = datasets.mutate_appends(large, nbytes=p.append_bytes)
        self.results.mutations["appends"] = mut.description
        self.sync_phase("large", "appends", mut.bytes, mut.files, main_rtt, "main")

        buckets = ", ".join(f"{max(1, round(n * p.mixed_scale)):,} × {lo // 1024}–{hi // 1024} KiB"
                            for n, lo, hi in datasets.MIXED_BUCKETS)
        self.generate("mixed", lambda r: datasets.make_mixed(r, scale=p.mixed_scale),
                      f"{buckets} (log-uniform), 3 % empty, odd modes, 30 symlinks, 10 empty dirs, "
                      "a 16 MiB sparse file holding 2 MiB")
        info = self.results.datasets[-1]
        self.sync_phase("mixed", "initial", info.bytes, info.files, main_rtt, "main")

    def baseline(self, files: list[Path], nbytes: int) -> None:
        assert self.path is not None and self.proxy is not None
        self.proxy.set_link(self.link(self.plan.rtts_ms[0]))
        for label, cipher in (("OpenSSH default cipher", None), ("aes128-gcm (georep-sync's choice)",
                                                                 "aes128-gcm@openssh.com")):
            os.sync()
            m = pipe_baseline(self.path, files, cipher)
            name = f"cat | ssh 'cat > /dev/null', {label}"
            self.results.baseline.append(BaselineRow(name, nbytes, m.wall, m.wire.total, m.exit_code))
            self.log(f"baseline {label}: {nbytes / 1e6 / m.wall:.1f} MB/s (exit {m.exit_code})")
        # a replicator also writes what it receives: the same pipe into one file on the secondary's disk
        sink = self.work / "dst" / "pipe-to-disk"
        sink.mkdir(parents=True, exist_ok=True)
        os.sync()
        m = pipe_baseline(self.path, files, None, sink=sink / "all.bin")
        label = "OpenSSH default cipher, into a file on the secondary's disk"
        self.results.baseline.append(BaselineRow(f"cat | ssh 'cat > FILE', {label}", nbytes, m.wall, m.wire.total,
                                                 m.exit_code))
        self.log(f"baseline {label}: {nbytes / 1e6 / m.wall:.1f} MB/s (exit {m.exit_code})")
        shutil.rmtree(sink, ignore_errors=True)

    # -- live -------------------------------------------------------------------------

    def section_live(self) -> None:
        """georep-sync daemon on a plain directory (bench/live_tree.py), then on a real brick."""

        available, reason = daemon_available(PYTHON)
        if not available:
            self.results.not_run.append(NotRun("georep-sync daemon (live)", reason))
            self.log(f"daemon: not run: {reason}")
            return
        assert self.proxy is not None
        self.proxy.set_link(self.link(self.plan.rtts_ms[0]))
        live_tree.run(self, self.work / "live-tree")
        self.live_brick()

    def live_brick(self) -> None:
        """georep-sync daemon on a real brick: seed, wait for the initial sync, then time a trickle of writes."""

        what = "georep-sync daemon (live)"
        try:
            gluster.ensure_glusterd()
        except gluster.GlusterUnavailable as exc:
            self.results.not_run.append(NotRun(what, f"the daemon follows a GlusterFS brick: {exc}"))
            return
        assert self.path is not None and self.proxy is not None and self.sshd is not None
        self.proxy.set_link(self.link(self.plan.rtts_ms[0]))
        base = self.work / "live"
        base.mkdir()
        dst = base / "dst"
        with gluster.volume(base, f"gbench{os.getpid()}live") as vol:
            seed = vol.mount / "seed"
            datasets.make_small(seed, files=max(100, self.plan.small_files // 20), dirs=10, seed=31)
            argv = [PYTHON, "-m", "georep", "daemon", str(vol.brick), f"ssh://root@127.0.0.1:{self.path.port}{dst}",
                    "--state-dir", str(base / "state"), "--known-hosts", str(self.path.known_hosts),
                    "--identity", str(self.path.identity), "--remote-command", REMOTE_COMMAND]
            errlog = base / "daemon.log"
            with open(errlog, "wb") as err:
                proc = subprocess.Popen(argv, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
            mon = TreeMonitor(proc.pid, self.sshd.pid)
            mon.start()
            try:
                want = names_and_sizes(seed)
                t = time.perf_counter()
                synced = wait_until(lambda: proc.poll() is not None or names_and_sizes(dst / "seed") == want, 300,
                                    every=0.5)
                if proc.poll() is not None or not synced:
                    tail = errlog.read_text(errors="replace").strip()[-400:]
                    why = (f"daemon exited {proc.returncode}" if proc.poll() is not None
                           else "initial sync not complete after 300 s")
                    self.results.not_run.append(NotRun(what, f"{why}: {tail}"))
                    self.log(f"daemon: {why}")
                    return
                self.log(f"daemon: initial sync of {len(want)} names in {time.perf_counter() - t:.1f}s")
                warm = warm_up(vol.mount, dst, timeout=120)
                if warm is None:
                    self.results.not_run.append(NotRun(what, "a warm-up file did not reach the secondary in 120 s"))
                    return
                delivered, lags = measure_lag(vol.mount, dst, writes=self.plan.live_writes,
                                              interval=self.plan.live_interval, timeout=60)
                note = (f"brick of a 1-brick volume, writes through FUSE; warm-up file took {warm:.1f} s; "
                        f"peak RSS sender {mon.local.peak_bytes / 2**20:.0f} MiB, "
                        f"receiver {mon.remote.peak_bytes / 2**20:.0f} MiB")
                self.results.live.append(LiveRow("georep-sync daemon", self.plan.live_writes, delivered, lags, note))
                self.log(f"daemon: {delivered}/{self.plan.live_writes} writes delivered")
            finally:
                mon.stop()
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- gsyncd -----------------------------------------------------------------------

    def section_gsyncd(self) -> None:
        if not self.plan.gsyncd:
            self.results.not_run.append(NotRun("gsyncd", "not part of the quick run"))
            return
        from bench import gsyncd

        assert self.path is not None and self.sshd is not None and self.proxy is not None
        self.proxy.set_link(self.link(self.plan.rtts_ms[0]))
        # its bricks, mounts and copies go with one unmount at the end (bench/scratchfs.py)
        names, data = gsyncd.room_needed(self.results.datasets)
        with scratch_fs(self.work, "gsyncd-fs", names, self.log, data_bytes=data) as scratch:
            self.results.findings.append(f"gsyncd's volumes (bricks and FUSE mounts) and its copies of the datasets "
                                         f"lived on {scratch.description}.")
            gsyncd.run(self, scratch.root / "gsyncd")

    # -- scale ------------------------------------------------------------------------

    def section_scale(self) -> None:
        with scratch_fs(self.work, "scale-fs", self.plan.scale_entries, self.log) as scratch:
            self.results.scale_place = scratch.description
            self._scale(scratch.root)

    def _scale(self, base: Path) -> None:
        """Crawl rate and memory on the scale tree; everything it writes stays under ``base``."""

        root = self.generate("scale", lambda r: datasets.make_scale(r, entries=self.plan.scale_entries),
                             f"{self.plan.scale_entries:,} entries, directories of 1,000, files empty or ≤ 64 B",
                             base=base)
        entries = self.results.datasets[-1].files + self.results.datasets[-1].dirs + 1
        state = base / "scale-state"
        empty = base / "scale-empty"
        empty.mkdir()
        runs = [
            ("georep-sync crawl, first run (ids assigned)", [PYTHON, "-m", "bench.crawl", str(root), "--state-dir",
                                                             str(state)]),
            ("georep-sync crawl, next run (ids known)", [PYTHON, "-m", "bench.crawl", str(root), "--state-dir",
                                                         str(state)]),
            ("rsync -a -n --delete (local, list and compare)", ["rsync", "-a", "-n", "--delete", f"{root}/",
                                                                f"{empty}/"]),
            ("find (walk only, the floor)", ["find", str(root), "-printf", ""]),
        ]
        for tool, argv in runs:
            os.sync()
            m = run_measured(argv)
            note = "" if m.ok else m.stderr.strip()[-300:]
            if m.ok and argv[2:3] == ["bench.crawl"]:
                got = json.loads(m.stdout)["entries"]
                if got != entries:
                    note = f"crawled {got} entries, the tree has {entries}"
            self.results.scale.append(ScaleRow(tool, entries, m.wall, m.rss_local, m.exit_code, note))
            self.log(f"scale {tool}: {entries / m.wall:,.0f} entries/s, {m.rss_local / 2**20:.0f} MiB")
        # memory as the tree grows tenfold: a whole --oneshot, sender and agent, over SSH
        tenth = base / "src" / "scale-tenth"
        datasets.make_scale(tenth, entries=self.plan.scale_entries // 10)
        for src in (tenth, root):
            self.scale_oneshot(src, base)

    def scale_oneshot(self, src: Path, base: Path) -> None:
        """``georep-sync --oneshot`` of a scale tree to an empty secondary: rate and both ends' peak RSS.

        The replica stays until ``base`` goes: nothing is deleted between the two timed copies.
        """

        assert self.path is not None and self.proxy is not None
        self.proxy.set_link(self.link(self.plan.rtts_ms[0]))
        entries = _count_entries(src)
        dst, state = base / "dst" / src.name, base / "state" / src.name
        os.sync()
        m = self.path.run(CONTENDERS[0].argv(self.path, src, dst, state))
        note = "" if m.ok else m.stderr.strip()[-300:]
        if m.ok:
            copied = _count_entries(dst)
            sent = json.loads(m.stdout)["entries"]
            note = (f"to an empty secondary over SSH (RTT {self.plan.rtts_ms[0]:g} ms); the replica holds "
                    f"{copied:,} of {entries:,} entries" + ("" if copied == entries == sent else
                                                             f"; the sender counted {sent:,}"))
        self.results.scale.append(ScaleRow(f"georep-sync --oneshot, {entries:,} entries", entries, m.wall,
                                           m.rss_local, m.exit_code, note, rss_agent=m.rss_remote))
        self.log(f"scale oneshot {entries:,}: {m.wall:.1f}s, RSS {m.rss_local / 2**20:.0f} / "
                 f"{m.rss_remote / 2**20:.0f} MiB")

    # -- micro-benchmarks -----------------------------------------------------------

    def section_micro(self) -> None:
        out = self.work / "micro.json"
        argv = [PYTHON, "-m", "pytest", str(REPO / "bench"), "-q", "-p", "no:cacheprovider", "--benchmark-enable",
                f"--benchmark-json={out}", f"--benchmark-max-time={self.plan.micro_max_time}",
                "--benchmark-min-rounds=3", "--benchmark-disable-gc", "--benchmark-warmup=off"]
        t = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900)
        self.log(f"micro-benchmarks: pytest exit {r.returncode} in {time.perf_counter() - t:.1f}s")
        if not out.exists():
            self.results.not_run.append(NotRun("micro-benchmarks", f"pytest exit {r.returncode}: "
                                               f"{(r.stdout + r.stderr).strip()[-500:]}"))
            return
        if r.returncode != 0:
            tail = [ln for ln in (r.stdout + r.stderr).splitlines() if "FAILED" in ln or "ERROR" in ln]
            self.results.not_run.append(NotRun("some micro-benchmarks",
                                               f"pytest exit {r.returncode}: {'; '.join(tail)[:500]}"))
        for b in json.loads(out.read_text())["benchmarks"]:
            extra = b.get("extra_info", {})
            self.results.micro.append(MicroRow(
                name=b["fullname"].split("::", 1)[-1] if "::" in b["fullname"] else b["name"],
                mean_s=float(b["stats"]["mean"]),
                rounds=int(b["stats"]["rounds"]),
                unit=str(extra.get("unit", "")),
                per_round=float(extra.get("per_round", 0)),
            ))


def new_results(argv: list[str], quick: bool, link: str, workdir: Path) -> Results:
    return Results(
        command=" ".join(["python -m bench", *argv]),
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(workdir),
        versions=tool_versions(),
        link=link,
        quick=quick,
    )


def prepare_workdir(workdir: Path | None) -> tuple[Path, bool]:
    """A fresh work directory outside the repository; (path, whether we created its parent)."""

    if workdir is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="georep-bench-")), True
    workdir = workdir.resolve()
    if workdir == REPO or REPO in workdir.parents:
        raise SystemExit(f"--workdir {workdir} is inside the repository: datasets are never written there")
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / f"bench-{os.getpid()}"
    run.mkdir()
    return run, False


def cleanup(workdir: Path) -> None:
    """Remove the work directory (millions of names after a full run: ``rm -rf`` is the fast way)."""

    if os.geteuid() != 0:
        # the agent's staging and the datasets can hold read-only directories; root is not held back
        subprocess.run(["chmod", "-R", "u+rwX", str(workdir)], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False, capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)  # whatever rm left (there should be nothing)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

"""Where the CPU goes in an initial copy of the small tree: georep-sync and rsync, per side.

``python -m bench.cpusplit [--rounds N] [--rtt MS] [--files N] [--work DIR] [--georep NAME=CHECKOUT ...]``

The targets table (`python -m bench`) says whether georep-sync copies the small tree as fast
as rsync; this says where each one spends its processor time, so that tuning starts from a
measurement.  The contenders take turns, each round into fresh secondaries, through the same
proxy and private sshd as the main runner; for each, the median over rounds of:

* **wall**: seconds from process start to exit;
* **sender**: CPU seconds of the command and its reaped children (rsync's include its ssh);
* **secondary**: CPU seconds of everything sshd ran for the session (sshd's per-connection
  processes, and the agent or the rsync receivers under them), from the listener's
  ``cutime + cstime`` once the session's processes are gone;
* **proxy**: CPU seconds of this process: bench/proxy.py's relay threads (and the memory
  sampler of bench/measure.py, a small share);
* **machine**: busy CPU seconds of the whole machine (``/proc/stat``, kernel included).

On a machine with C cores, wall ≥ machine / C: a contender that needs more processor time
than the other cannot overtake it by overlapping better.  The work directory defaults to
tmpfs (``/dev/shm``): the disk's writeback, and ext4's inode allocator after a mass delete
(see ``Runner.discard``), vary more between runs than the contenders do.

To judge a change over SSH, ``--georep NAME=CHECKOUT`` (repeated) puts each checkout's
georep-sync in the turns, both ends of it, next to rsync (which shows how much the run
itself drifts)::

    git worktree add /tmp/before HEAD~1 && cp georep/_native*.so /tmp/before/georep/
    python -m bench.cpusplit --rounds 8 --georep before=/tmp/before --georep after=.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import datasets
from bench.contenders import CHECKOUT, GeorepOneshot, Path2Secondary, Rsync, byte_compile
from bench.measure import run_measured, tree
from bench.proxy import Link, WanProxy
from bench.report import markdown_table
from bench.runner import filesystem_type
from bench.sshd import start_sshd

_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Busy CPU seconds of every CPU since boot (all but idle and iowait)."""

    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def reaped_cpu(pid: int) -> float:
    """CPU seconds of the children ``pid`` has reaped (cutime + cstime)."""

    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / _TICK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def wait_sessions_gone(sshd_pid: int, timeout: float = 10.0) -> bool:
    """Wait until nothing runs under the sshd listener: the session's CPU is then in its cutime."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not tree([sshd_pid], include_roots=False):
            return True
        time.sleep(0.02)
    return False


@dataclass
class Split:
    """One contender's figures, one entry per round."""

    wall: list[float] = field(default_factory=list)
    sender: list[float] = field(default_factory=list)
    secondary: list[float] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)
    machine: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in vars(self).items()}


def table(results: dict[str, Split], cores: int) -> str:
    cols = ("wall", "sender", "secondary", "proxy", "machine")
    rows = []
    for name, split in results.items():
        med = split.medians()
        rows.append([name, *(f"{med[c]:.2f}" for c in cols), f"{med['machine'] / cores:.2f}",
                     " ".join(f"{w:.2f}" for w in split.wall)])
    return "\n".join(markdown_table(["contender", "wall s", "sender CPU s", "secondary CPU s", "proxy CPU s",
                                      "machine CPU s", f"machine ÷ {cores} cores s", "wall s, each round"], rows))


def add_tree_options(p: argparse.ArgumentParser, rounds: int, each: str) -> None:
    """--rounds, --files and --work: the options of a tool that copies the small tree in turns."""

    p.add_argument("--rounds", type=int, default=rounds, help=f"copies per {each}, taking turns (default {rounds})")
    p.add_argument("--files", type=int, default=20_000, help="files in the small tree (default 20,000)")
    p.add_argument("--work", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None,
                   help="where the tree and the secondaries go (default /dev/shm)")


def parse_tree_options(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.rounds < 1 or args.files < 1:
        p.error("--rounds and --files must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpusplit", description=__doc__.split("\n\n")[0])
    add_tree_options(p, 5, "contender")
    p.add_argument("--rtt", type=float, default=0.0, help="round-trip time the proxy adds, ms (default 0)")
    p.add_argument("--georep", action="append", default=[], metavar="NAME=CHECKOUT",
                   help="a georep-sync source tree to run instead of this one (repeat to compare several)")
    args = parse_tree_options(p, argv)
    georeps: list[GeorepOneshot] = []
    for spec in args.georep:
        name, sep, checkout = spec.partition("=")
        if not sep or not name or not (Path(checkout) / "georep" / "__init__.py").is_file():
            p.error(f"--georep {spec!r}: expected NAME=PATH of a georep-sync source tree")
        georeps.append(GeorepOneshot(Path(checkout).resolve(), name))
    work = Path(tempfile.mkdtemp(prefix="georep-cpusplit-", dir=args.work))
    sshd = proxy = None
    try:
        src = work / "src"
        datasets.make_small(src, files=args.files, dirs=max(1, args.files // 100))
        for checkout in [None] if not georeps else [g.checkout for g in georeps]:
            byte_compile(checkout or CHECKOUT)
        sshd = start_sshd(work)
        proxy = WanProxy(sshd.port, Link(rtt=args.rtt / 1000)).start()
        path = Path2Secondary(proxy, sshd.pid, sshd.identity, sshd.known_hosts(proxy.port))
        # on a disk, a copy made right after a mass delete pays the kernel for it: keep them all
        delete_between = filesystem_type(work) == "tmpfs"
        contenders = (*(georeps or [GeorepOneshot()]), Rsync())
        results = {c.name: Split() for c in contenders}
        for r in range(args.rounds):
            for i, c in enumerate(contenders) if r % 2 == 0 else reversed(tuple(enumerate(contenders))):
                dst, state = work / "dst" / f"{r}-{i}", work / "state" / f"{r}-{i}"
                os.sync()
                m0, s0, p0 = machine_busy(), reaped_cpu(sshd.pid), own_cpu()
                m = run_measured(c.argv(path, src, dst, state), proxy=proxy, sshd_pid=sshd.pid)
                if not wait_sessions_gone(sshd.pid):
                    print(f"cpusplit: {c.name}: sshd's session did not end within 10 s", file=sys.stderr)
                    return 1
                if m.exit_code != 0:
                    print(f"cpusplit: {c.name} failed (exit {m.exit_code}): {m.stderr.strip()[-500:]}",
                          file=sys.stderr)
                    return 1
                split = results[c.name]
                split.wall.append(m.wall)
                split.sender.append(m.cpu_local)
                split.secondary.append(reaped_cpu(sshd.pid) - s0)
                split.proxy.append(own_cpu() - p0)
                split.machine.append(machine_busy() - m0)
                if delete_between:
                    shutil.rmtree(dst)
        print(f"small tree, {args.files:,} files, {args.rounds} rounds, RTT {args.rtt:g} ms, "
              f"work in {work.parent} (medians)\n")
        print(table(results, os.cpu_count() or 1))
        return 0
    finally:
        if proxy is not None:
            proxy.stop()
        if sshd is not None:
            sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

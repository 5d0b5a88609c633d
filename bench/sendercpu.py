"""The sender's own CPU in a first copy of the small tree to a local agent, for checkouts in turns.

``python -m bench.sendercpu [--rounds N] [--files N] [--work DIR] [NAME=CHECKOUT ...]``

Why: on loopback the sender is what a first copy waits for, so a change to it is judged by its
CPU seconds.  Over SSH those move with sshd, the proxy and the cipher as much as with the
change (±10 % between runs here).  Against a local agent (a pipe, no SSH) they are steadier.
Each checkout runs in turn, into a fresh secondary with fresh state every time.  The figures are
medians of the sender's own CPU (``getrusage(RUSAGE_SELF)`` at its exit, so the agent, its
child, is not counted), its user and system parts, its wall time, and apart the local agent's
CPU (``RUSAGE_CHILDREN``: the sender reaps it before it exits).

A checkout is ``NAME=PATH``: a georep-sync source tree whose ``georep/`` has the native
extension built (or copied in).  Each one is byte-compiled first, as an install would be.  The
default is this checkout, named ``here``.  Between two commits::

    git worktree add /tmp/before HEAD~1 && cp georep/_native*.so /tmp/before/georep/
    python -m bench.sendercpu --rounds 10 before=/tmp/before after=.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import datasets
from bench.contenders import CHECKOUT, PYTHON, byte_compile
from bench.cpusplit import add_tree_options, parse_tree_options
from bench.report import markdown_table

#: Runs georep-sync's command line in this process and reports its own CPU on stderr at exit.
_WRAPPER = """
import atexit, resource, runpy, sys, time
import georep
sys.stderr.write(f"GEOREPFROM {georep.__file__}\\n")
t0 = time.perf_counter()
def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)  # the local agent, reaped before the sender exits
    sys.stderr.write(f"SENDERCPU {r.ru_utime:.4f} {r.ru_stime:.4f} {time.perf_counter() - t0:.4f} "
                     f"{c.ru_utime + c.ru_stime:.4f}\\n")
atexit.register(report)
sys.argv = ["georep-sync", *sys.argv[1:]]
runpy.run_module("georep", run_name="__main__", alter_sys=True)
"""

_REPORT = re.compile(r"SENDERCPU (\S+) (\S+) (\S+) (\S+)")


def one_copy(checkout: Path, src: Path, work: Path) -> tuple[float, float, float, float]:
    """(user, system, wall, agent CPU) seconds of one first copy of ``src`` by ``checkout``."""

    dst, state = work / "dst", work / "state"
    for d in (dst, state):
        shutil.rmtree(d, ignore_errors=True)
    # -P and a cwd outside every checkout: with ``-c`` (and the agent's ``-m``) Python puts the
    # current directory first on sys.path, ahead of PYTHONPATH; run from a checkout, every
    # "checkout" would have been that one
    r = subprocess.run([PYTHON, "-P", "-c", _WRAPPER, "--oneshot", str(src), str(dst), "--state-dir", str(state),
                        "--no-progress"], env=dict(os.environ, PYTHONPATH=str(checkout)), cwd=work,
                       capture_output=True, text=True, timeout=600)
    found = _REPORT.search(r.stderr)
    if r.returncode != 0 or found is None:
        raise RuntimeError(f"the copy by {checkout} failed (exit {r.returncode}): {r.stderr[-2000:]}")
    if f"GEOREPFROM {checkout}/georep/" not in r.stderr:
        raise RuntimeError(f"the copy meant for {checkout} ran another georep: {r.stderr[-2000:]}")
    user, system, wall, agent = (float(x) for x in found.groups())
    shutil.rmtree(dst, ignore_errors=True)
    return user, system, wall, agent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sendercpu", description=__doc__.split("\n\n")[0])
    p.add_argument("checkouts", nargs="*", metavar="NAME=CHECKOUT", help=f"default: here={CHECKOUT}")
    add_tree_options(p, 8, "checkout")
    args = parse_tree_options(p, argv)
    checkouts: dict[str, Path] = {}
    for spec in args.checkouts or [f"here={CHECKOUT}"]:
        name, sep, path = spec.partition("=")
        if not sep or not name or not (Path(path) / "georep" / "__init__.py").is_file():
            p.error(f"{spec!r}: expected NAME=PATH of a georep-sync source tree")
        checkouts[name] = Path(path).resolve()
    for path in checkouts.values():
        byte_compile(path)
    work = Path(tempfile.mkdtemp(prefix="georep-sendercpu-", dir=args.work))
    try:
        src = work / "src"
        datasets.make_small(src, files=args.files, dirs=max(1, args.files // 100))
        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in checkouts}
        for _ in range(args.rounds):
            for name, path in checkouts.items():
                runs[name].append(one_copy(path, src, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, samples in runs.items():
        med = [statistics.median(s[i] for s in samples) for i in range(4)]
        rows.append([name, f"{med[0] + med[1]:.3f}", f"{med[0]:.3f}", f"{med[1]:.3f}", f"{med[2]:.3f}",
                     f"{med[3]:.3f}"])
    print(f"small tree, {args.files:,} files, {args.rounds} rounds, local agent, work in {args.work} (medians)\n")
    print("\n".join(markdown_table(["checkout", "sender CPU s", "user s", "system s", "wall s", "agent CPU s"],
                                    rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench``: run the benchmark suite and print (and, for a full run, write) the report.

Run from the repository root.  ``--quick`` is the reduced run CI uses (< 2 minutes); it prints
the tables and writes a file only when ``--out`` is given.  A full run writes
bench/RESULTS.md unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from bench import report
from bench.contenders import CONTENDERS
from bench.proxy import Link
from bench.runner import (
    FULL,
    QUICK,
    REPO,
    SECTIONS,
    Runner,
    cleanup,
    load_average,
    log_stderr,
    new_results,
    prepare_workdir,
)


def _rtts(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rtt wants milliseconds separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("--rtt wants one or more non-negative values")
    return values


def _sections(text: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only takes a comma list of {', '.join(SECTIONS)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes for CI (< 2 minutes); no gsyncd")
    p.add_argument("--out", type=Path, default=None,
                   help="write the markdown report here (full run default: bench/RESULTS.md)")
    p.add_argument("--only", type=_sections, default=None, metavar="SECTIONS",
                   help=f"comma list of sections to run: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--rtt", type=_rtts, default=None, metavar="MS[,MS...]",
                   help="round-trip times to emulate; the first is used for every dataset, the others for "
                        "the small tree's files/s sweep (default: 0,50,150; quick: 0,50)")
    p.add_argument("--bandwidth", type=float, default=None, metavar="MBIT",
                   help="cap the emulated link at this many Mbit/s (default: uncapped)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where datasets and secondaries go (default: a new directory under $TMPDIR or /tmp); "
                        "never inside the repository")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(args_list)
    plan = QUICK if args.quick else FULL
    if args.rtt is not None:
        plan = dataclasses.replace(plan, rtts_ms=args.rtt)
    if args.bandwidth is not None:
        plan = dataclasses.replace(plan, bandwidth=args.bandwidth * 1e6 / 8)
    sections = args.only or set(SECTIONS)
    out = args.out if args.out is not None else (None if args.quick else REPO / "bench" / "RESULTS.md")
    # children (python -m bench.crawl, pytest on bench/) must import bench from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    workdir, _ = prepare_workdir(args.workdir)
    link = Link(rtt=plan.rtts_ms[0] / 1000, bandwidth=plan.bandwidth).describe()
    results = new_results(args_list, args.quick, link, workdir)
    log_stderr(f"bench: work directory {workdir}")
    t = time.monotonic()
    runner = Runner(plan, workdir, sections, results, log_stderr)
    try:
        runner.run()
        results.machine["load average at end (1/5/15 min)"] = load_average()
    finally:
        if args.keep:
            log_stderr(f"bench: kept {workdir}")
        else:
            cleanup(workdir)
    # the whole command counts, removing the trees included: the runner never deletes one
    # during the run (ext4 would slow the next copy down), so that time is spent here
    results.elapsed = time.monotonic() - t
    text = report.render(results)
    print(text)
    if out is not None:
        out.write_text(text)
        log_stderr(f"bench: wrote {out}")
    log_stderr(f"bench: done in {time.monotonic() - t:.0f}s")
    # our own contenders must produce equal replicas; gsyncd's failures are findings, not ours
    ours = {c.name for c in CONTENDERS}
    failed = [r for r in results.sync if r.contender in ours and not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

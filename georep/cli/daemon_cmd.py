"""`georep-sync daemon SOURCE SECONDARY`: keep SECONDARY in sync with a brick, live."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
from pathlib import Path

from georep.cli.connect import add_secondary_options, channel_opener, lane_policy
from georep.errors import SourceMissing, StateError, UsageError
from georep.source.crawl import is_brick
from georep.source.identity import default_state_dir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint="usage: georep-sync daemon SOURCE SECONDARY [--state-dir DIR]")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="georep-sync daemon", description=(
        "Keep SECONDARY in sync with SOURCE, live: a GlusterFS brick is followed through its changelog "
        "journals, a plain directory through inotify. "
        "One daemon per primary brick; SIGTERM finishes the batch in flight, saves the position and exits 0."))
    p.add_argument("daemon")
    p.add_argument("source", help="a GlusterFS brick root (changelog.changelog on) or a plain directory")
    p.add_argument("secondary", help="a local directory or ssh://[user@]host[:port]/absolute/path")
    p.add_argument("--state-dir", type=Path, default=None, help="positions and status (default ~/.local/state/georep)")
    add_secondary_options(p)
    p.add_argument("--reconcile-every", type=float, default=86400.0, metavar="SECONDS",
                   help="crawl the brick this often, for operations GlusterFS never journals such as "
                        "fallocate (default: daily; the agent compares size and mtime, no data for unchanged files)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every batch's operations")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    source = os.fsencode(os.path.abspath(args.source))
    if not os.path.isdir(source):
        raise SourceMissing(f"source {args.source} does not exist or is not a directory")
    secondary = args.secondary if "://" in args.secondary else os.path.abspath(args.secondary)
    args.secondary = secondary
    state_dir = args.state_dir or default_state_dir()
    try:
        if is_brick(source) or os.path.isdir(os.path.join(source, b".glusterfs")):
            # a directory holding .glusterfs but no volume-id is a brick that is not mounted
            # (or not a brick root): Brick() refuses it rather than replicating an empty disk
            from georep.daemon import run_daemon

            return asyncio.run(run_daemon(source, secondary, state_dir, channel_opener(args), args.verbose,
                                          args.reconcile_every, lane_policy(args)))
        from georep.tree_daemon import run_tree_daemon

        return asyncio.run(run_tree_daemon(source, secondary, state_dir, channel_opener(args), args.verbose,
                                           lane_policy(args)))
    except sqlite3.Error as exc:  # the id store or the ledger, mid-run (opening them raises StateError)
        raise StateError.during_run(state_dir, exc) from None

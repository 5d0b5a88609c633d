"""`georep-sync status`: what every daemon session is doing, from its status file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from georep.batch.checkpoint import read_statuses
from georep.errors import UsageError
from georep.source.identity import default_state_dir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint="usage: georep-sync status [--state-dir DIR] [--json]")


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} ({time.time() - t:.0f}s ago)"


def run(argv: list[str]) -> int:
    p = _Parser(prog="georep-sync status", description="Show every daemon session of a state directory.")
    p.add_argument("status")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    sessions = read_statuses(args.state_dir or default_state_dir())
    for s in sessions:
        if not s.get("running") and s.get("state") not in ("stopped", "faulty"):
            s["state"] = "not running"
    if args.json:
        print(json.dumps(sessions, indent=1, sort_keys=True))
        return 0
    if not sessions:
        print("no daemon sessions in this state directory")
        return 0
    for s in sessions:
        c = s.get("counters", {})
        print(f"{s.get('source')} -> {s.get('secondary')}")
        state = s.get("state", "?")
        reason = s.get("reason") or ""
        print(f"  state:        {state}{' (' + reason + ')' if reason else ''}")
        print(f"  last synced:  {_ago(s.get('last_synced'))}")
        print(f"  lag:          {s.get('lag_seconds', 0):.2f}s, pending changes: {s.get('pending', 0)}")
        print(f"  position:     {s.get('position')}")
        print(f"  counters:     {c.get('batches', 0)} batches, {c.get('changes', 0)} changes, "
              f"{c.get('bytes_data', 0)} data bytes, {c.get('deleted', 0)} deleted, {c.get('crawls', 0)} crawls, "
              f"{c.get('gaps', 0)} journal gaps, {c.get('errors', 0)} errors")
        err = s.get("last_error")
        if err:
            print(f"  last error:   {err.get('message')}")
            print(f"  hint:         {err.get('hint')}")
    return 0

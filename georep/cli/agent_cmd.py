"""`georep-sync agent ROOT`: the remote end; speaks the protocol on stdin/stdout, nothing else there."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from georep.apply.agent import serve
from georep.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint="usage: georep-sync agent ROOT")


def run(argv: list[str]) -> int:
    parser = _Parser(prog="georep-sync agent", description="Apply a georep-sync stream to ROOT.")
    parser.add_argument("agent")
    parser.add_argument("root", help="the secondary root directory (created if missing)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    # The protocol owns stdout: keep a private copy of it and point fd 1 at stderr, so a
    # stray print from any library can never corrupt the stream.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(Path(os.path.abspath(args.root)), 0, proto_out)

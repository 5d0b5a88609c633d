"""`georep-sync agent ROOT`: the remote end; speaks the protocol on stdin/stdout, nothing else there."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import stat
import sys
from pathlib import Path

from georep.apply.agent import serve
from georep.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint="usage: georep-sync agent ROOT")


def run(argv: list[str]) -> int:
    parser = _Parser(
        prog="georep-sync agent",
        description="Apply a georep-sync stream (stdin/stdout) to ROOT. As an SSH forced command, "
        "'--allow DIR' confines it to DIR and reads the requested ROOT from SSH_ORIGINAL_COMMAND.",
    )
    parser.add_argument("agent")
    parser.add_argument("root", nargs="?", help="the secondary root directory (created if missing)")
    parser.add_argument("--allow", type=Path, default=None, metavar="DIR",
                        help="only ever write under DIR (for command= in authorized_keys)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    root = args.root
    if root is None and args.allow is not None:
        root = requested_root(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    if root is None:
        raise UsageError("ROOT is missing", hint="usage: georep-sync agent ROOT [--allow DIR]")
    # The protocol owns stdout: keep a private copy of it and point fd 1 at stderr, so a
    # stray print from any library can never corrupt the stream.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for fd in (0, proto_out):
        _widen_pipe(fd)
    allow = Path(os.path.realpath(args.allow)) if args.allow is not None else None
    return serve(Path(os.path.abspath(root)), 0, proto_out, allow)


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: far fewer wake-ups per MiB of file data."""

    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)


def requested_root(original_command: str) -> str | None:
    """The ROOT a sender asked for in ``CMD agent ROOT`` (what sshd puts in SSH_ORIGINAL_COMMAND)."""

    try:
        words = shlex.split(original_command)
    except ValueError:
        return None
    if len(words) >= 2 and words[-2] == "agent":
        return words[-1]
    return None

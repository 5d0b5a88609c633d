"""How the CLI reaches a secondary: a local agent over a pipe, or one over SSH."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from georep.errors import UsageError
from georep.transport.channel import Channel, PipeChannel, local_agent_argv
from georep.transport.sender import NO_LANES, Lanes
from georep.transport.ssh import SshTarget, open_ssh


def add_secondary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote-command", default="georep-sync", metavar="CMD",
                   help="command that starts the agent on the secondary host (default: georep-sync)")
    p.add_argument("--known-hosts", type=Path, default=None, help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("-i", "--identity", type=Path, action="append", default=None, help="SSH private key to offer")
    p.add_argument("--lanes", type=int, default=None, metavar="N",
                   help=f"extra SSH channels for file data, each with its own window (default: {SSH_LANES} over "
                        f"SSH when the round trip is {LANES_MIN_RTT * 1000:g} ms or more, else none)")


#: Data lanes over SSH by default: OpenSSH grants each channel a 2 MiB window, so one
#: channel moves at most 2 MiB per round trip (13 MB/s at 150 ms).  Eight, with the main
#: session, fit sshd's default MaxSessions (10) should lanes have to be sessions; measured
#: at 150 ms on the small dataset (bench/, both ends on one 2-core machine), as sessions:
#: 4 lanes 6.0 s, 6 lanes 5.3 s, 8 lanes 5.0 s, 12 lanes 5.4 s, 16 lanes 5.7 s; joined to
#: the agent (georep.apply.lanehub), two runs each: 4 lanes 5.7 s, 8 lanes 4.8 s, 12 lanes
#: 4.9 s, 16 lanes 4.9-5.0 s.
SSH_LANES = 8
#: Below this round trip one channel is not window-bound: lanes would only cost processes
#: (measured on loopback: 6 % slower with four lanes).
LANES_MIN_RTT = 0.010


def lane_policy(args: argparse.Namespace) -> Lanes:
    """``--lanes N``: always N; by default 4 over SSH on a long round trip, none locally."""

    if args.lanes is not None:
        if not 0 <= args.lanes <= 16:
            raise UsageError(f"--lanes {args.lanes} is out of range", hint="use 0 (no lanes) to 16")
        return Lanes(int(args.lanes))
    if str(args.secondary).startswith("ssh://"):
        return Lanes(SSH_LANES, min_rtt=LANES_MIN_RTT)
    return NO_LANES


def channel_opener(args: argparse.Namespace) -> Callable[[], Awaitable[Channel]]:
    """A function that opens a fresh channel to the secondary (called again to reconnect)."""

    secondary: str = args.secondary
    if secondary.startswith("ssh://"):
        target = SshTarget.parse(secondary)

        async def ssh() -> Channel:
            return await open_ssh(target, args.remote_command, known_hosts=args.known_hosts,
                                  identities=args.identity)

        return ssh
    if "://" in secondary:
        raise UsageError(f"unsupported secondary {secondary}", hint="use a local path or ssh://host/path")
    root = os.path.abspath(secondary)

    async def pipe() -> Channel:
        return await PipeChannel.start(local_agent_argv(root))

    return pipe

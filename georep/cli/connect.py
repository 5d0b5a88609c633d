"""How the CLI reaches a secondary: a local agent over a pipe, or one over SSH."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from georep.errors import UsageError
from georep.transport.channel import Channel, PipeChannel, local_agent_argv

if TYPE_CHECKING:
    from georep.transport.sender import Lanes

# georep.transport.ssh (asyncssh, a tenth of a second to import) and the sender are imported
# where they are needed: a local secondary needs no SSH, and a copy starts connecting before
# it imports the sender (`georep.cli.oneshot.replicate`).


def add_secondary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote-command", default="georep-sync", metavar="CMD",
                   help="command that starts the agent on the secondary host (default: georep-sync)")
    p.add_argument("--known-hosts", type=Path, default=None, help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("-i", "--identity", type=Path, action="append", default=None, help="SSH private key to offer")
    p.add_argument("--lanes", type=int, default=None, metavar="N",
                   help=f"extra SSH channels for file data, each with its own window (default: {SSH_LANES} over "
                        f"SSH when the round trip is {LANES_MIN_RTT * 1000:g} ms or more, "
                        f"{SSH_LANE_SESSIONS} if they must be sessions, else none)")


#: Data lanes over SSH by default: OpenSSH grants each channel a 2 MiB window, so one
#: channel moves at most 2 MiB per round trip (13 MB/s at 150 ms).  Joined to the agent
#: (georep.apply.lanehub) a lane costs the secondary no process and sshd no session; measured
#: at 150 ms on the small dataset (bench/, both ends on one 2-core machine), interleaved runs:
#: 8 lanes 4.5-5.7 s (median 5.0), 16 lanes 4.0-5.0 s (median 4.9); 24 and 32 no better.
#: Earlier, as sessions: 4 lanes 6.0 s, 6 lanes 5.3 s, 8 lanes 5.0 s, 12 lanes 5.4 s,
#: 16 lanes 5.7 s -- so where lanes must be sessions, eight, which with the main session
#: also fit sshd's default MaxSessions (10).
SSH_LANES = 16
SSH_LANE_SESSIONS = 8
#: Below this round trip one channel is not window-bound: lanes would only cost processes
#: (measured on loopback: 6 % slower with four lanes).
LANES_MIN_RTT = 0.010


def lane_policy(args: argparse.Namespace) -> Lanes:
    """``--lanes N``: always N; by default 16 over SSH on a long round trip (8 if they must
    be sessions), none locally."""

    from georep.transport.sender import NO_LANES, Lanes

    if args.lanes is not None:
        if not 0 <= args.lanes <= 32:
            raise UsageError(f"--lanes {args.lanes} is out of range", hint="use 0 (no lanes) to 32")
        return Lanes(int(args.lanes))
    if str(args.secondary).startswith("ssh://"):
        return Lanes(SSH_LANES, min_rtt=LANES_MIN_RTT, sessions=SSH_LANE_SESSIONS)
    return NO_LANES


def channel_opener(args: argparse.Namespace) -> Callable[[], Awaitable[Channel]]:
    """A function that opens a fresh channel to the secondary (called again to reconnect)."""

    secondary: str = args.secondary
    if secondary.startswith("ssh://"):
        from georep.transport.dial import SshTarget
        from georep.transport.ssh import open_ssh

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

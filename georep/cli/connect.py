"""How the CLI reaches a secondary: a local agent over a pipe, or one over SSH."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from georep.errors import UsageError
from georep.transport.channel import Channel, PipeChannel, local_agent_argv
from georep.transport.ssh import SshTarget, open_ssh


def add_secondary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote-command", default="georep-sync", metavar="CMD",
                   help="command that starts the agent on the secondary host (default: georep-sync)")
    p.add_argument("--known-hosts", type=Path, default=None, help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("-i", "--identity", type=Path, action="append", default=None, help="SSH private key to offer")


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

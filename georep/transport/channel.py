"""The one narrow interface between the sender and an agent, and its pipe implementation.

A `Channel` is a byte stream to a running agent plus what is needed to explain its death
(exit status and stderr).  `PipeChannel` runs the agent as a local child process — the
built-in default for a local SECONDARY, no SSH involved; `georep.transport.ssh` runs the
same agent on the far side of one SSH connection.  The engine cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Protocol

from georep.errors import ConnectionLost

STDERR_KEEP = 64 * 1024


class Channel(Protocol):
    bytes_written: int

    async def read(self) -> bytes:
        """Some bytes from the agent; b"" once it closed its output."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def close_input(self) -> None:
        """Tell the agent no more input comes (EOF on its stdin)."""

    async def wait(self) -> int | None:
        """The agent's exit status once it ended (None if unknown)."""

    def stderr_text(self) -> str:
        """The tail of what the agent printed on stderr, for error messages."""


#: How long a failed channel's agent may take to go (`reap`).
REAP_TIMEOUT_S = 10.0


async def reap(chan: object) -> None:
    """After a failure: ``chan``'s agent is gone and its pipes or connection are closed.

    Channels that own an agent (`PipeChannel`, the SSH one) have a ``reap`` that kills it if
    need be; a joined lane has none.  Reaping inside the event loop matters: a pipe transport
    still open when the loop closes prints a traceback at exit, after the clean error message.
    """

    do = getattr(chan, "reap", None)
    if do is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(do(), REAP_TIMEOUT_S)


class PipeChannel:
    """The agent as a local child process speaking on its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        self._proc = proc
        self._argv = argv
        self._stderr = bytearray()
        self.bytes_written = 0
        assert proc.stderr is not None
        self._err_task = asyncio.get_running_loop().create_task(self._collect(proc.stderr))

    @classmethod
    async def start(cls, argv: list[str]) -> PipeChannel:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=4 << 20,
        )
        return cls(proc, argv)

    async def sibling(self) -> PipeChannel:
        """One more agent like this one (a data lane, `georep.transport.lanes`)."""

        return await PipeChannel.start(self._argv)

    async def join(self, path: bytes) -> JoinedChannel:
        """A data lane into this agent's lane socket (`georep.apply.lanehub`)."""

        try:
            reader, writer = await asyncio.open_unix_connection(os.fsdecode(path), limit=4 << 20)
        except OSError as exc:
            raise ConnectionLost(f"cannot join the agent's lane socket: {exc.strerror or exc}") from None
        return JoinedChannel(reader, writer)

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while True:
            data = await stream.read(65536)
            if not data:
                return
            self._stderr += data
            del self._stderr[:-STDERR_KEEP]

    async def read(self) -> bytes:
        assert self._proc.stdout is not None
        return await self._proc.stdout.read(1 << 20)

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self.bytes_written += len(data)
        self._proc.stdin.write(data)

    async def drain(self) -> None:
        assert self._proc.stdin is not None
        await self._proc.stdin.drain()

    async def close_input(self) -> None:
        assert self._proc.stdin is not None
        if not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def wait(self) -> int | None:
        code = await self._proc.wait()
        await self._err_task
        return code

    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def kill(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()

    async def reap(self) -> None:
        """After a failure: the agent is gone (killed if need be) and its pipes are closed."""

        self.kill()
        assert self._proc.stdout is not None
        while await self._proc.stdout.read(1 << 20):
            pass  # to EOF: then the transport closes itself
        await self._proc.wait()
        await self._err_task


class StreamReaderLike(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class StreamWriterLike(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class JoinedChannel:
    """A data lane's byte stream into the main agent's lane socket (`georep.apply.lanehub`).

    Over SSH it is a ``direct-streamlocal`` channel of the main connection (asyncssh's
    reader and writer); locally, a plain connection to the socket (asyncio's).  Both have
    the same stream interface.  There is no process behind it of its own: its agent is
    the main session's, so it has no exit status and no stderr.
    """

    def __init__(self, reader: StreamReaderLike, writer: StreamWriterLike,
                 send: Callable[[bytes], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        #: how a write is sent: the writer's own, or one that sends it as it lies (over SSH:
        #: `georep.transport.ssh.DataInPlace`, as on the main session)
        self._send = send or writer.write
        self._eof = asyncio.Event()
        self.bytes_written = 0

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(1 << 20)
        except ConnectionError:
            # the agent closed the socket with our last bytes unread (reset), or before our
            # Bye was written (broken pipe, reported by asyncio's stream on the next read): it
            # ended the session (the main session's Bye overtook this lane's), or it died;
            # the same to a reader
            data = b""
        if not data:
            self._eof.set()
        return data

    def write(self, data: bytes) -> None:
        self.bytes_written += len(data)
        self._send(data)

    async def drain(self) -> None:
        await self._writer.drain()

    async def close_input(self) -> None:
        if not self._writer.is_closing() and self._writer.can_write_eof():
            self._writer.write_eof()

    async def wait(self) -> int | None:
        """The agent closes a lane's connection once it read its Bye; the lane's reader sees that."""

        await self._eof.wait()
        self._writer.close()
        with contextlib.suppress(ConnectionError):  # reset, as read() says: the end all the same
            await self._writer.wait_closed()
        return None

    def stderr_text(self) -> str:
        return ""

    def kill(self) -> None:
        self._writer.close()
        self._eof.set()


def local_agent_argv(root: str) -> list[str]:
    """The same agent the remote side runs, started from this interpreter."""

    return [sys.executable, "-m", "georep", "agent", root]

"""A pipe channel to the real agent that lets tests look at (or delay) what passes, for tests
that drive the real sender against the real agent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from georep.model import Summary
from georep.source.crawl import Crawler
from georep.source.identity import IdStore
from georep.transport.channel import JoinedChannel, PipeChannel, local_agent_argv
from georep.transport.sender import Options, Sender


class Passthrough:
    """Every byte passes unaltered; subclasses see the agent's stream in `from_agent` (and
    may take their time there, as a slow return path would) and the sender's in `from_sender`."""

    def __init__(self, inner: PipeChannel) -> None:
        self.inner = inner

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    async def read(self) -> bytes:
        data = await self.inner.read()
        await self.from_agent(data)
        return data

    def write(self, data: bytes) -> None:
        self.from_sender(data)
        self.inner.write(data)

    async def from_agent(self, data: bytes) -> None:
        """Called with each read from the agent before the sender gets it."""

    def from_sender(self, data: bytes) -> None:
        """Called with each write of the sender before the agent gets it."""

    async def drain(self) -> None:
        await self.inner.drain()

    async def close_input(self) -> None:
        await self.inner.close_input()

    async def wait(self) -> int | None:
        return await self.inner.wait()

    def stderr_text(self) -> str:
        return self.inner.stderr_text()

    async def sibling(self) -> PipeChannel:
        """A data lane as an agent of its own (not looked at)."""

        return await self.inner.sibling()

    async def join(self, path: bytes) -> JoinedChannel:
        """A data lane into the agent's lane socket (not looked at)."""

        return await self.inner.join(path)


P = TypeVar("P", bound=Passthrough)


async def replicate(src: Path, dst: Path, state: Path, wrap: Callable[[PipeChannel], P],
                    argv: list[str] | None = None) -> tuple[Summary, P]:
    """One `--oneshot`-like run of the real sender through ``wrap`` (the agent: ``argv``, by
    default this interpreter's); its summary and the channel."""

    store = IdStore(state, os.fsencode(src))
    try:
        crawler = Crawler(os.fsencode(src), store)
        chan = wrap(await PipeChannel.start(argv or local_agent_argv(str(dst))))
        sender = Sender(chan, Options())  # type: ignore[arg-type]
        await sender.handshake()
        summary = await sender.run(iter(crawler), store.deferred_links, lambda: crawler.count)
        return summary, chan
    finally:
        store.close()

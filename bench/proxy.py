"""A userspace WAN: a TCP proxy that adds round-trip time and a bandwidth cap, and counts bytes.

The kernel here has no netem, so the link is emulated between the SSH client and sshd.
Each direction of each connection is a small model of a serial link:

* a chunk read at time ``t`` starts serialising when the link is free
  (``start = max(t, link_free)``) and occupies it for ``len / bandwidth`` seconds;
* it is delivered one propagation delay (RTT / 2) after its last byte left:
  ``deliver_at = link_free + rtt / 2``;
* a writer task sleeps until ``deliver_at`` of the queue head, then writes it on.

The queue between the two is bounded (``buffer`` bytes, default 16 MiB): when it is full
the reader stops reading, the kernel buffers fill and the sender's TCP stalls — that is
the backpressure a real link gives.  What is not modelled is TCP's own congestion window
over the long path; SSH's channel window (2 MiB in OpenSSH and asyncssh) is what limits a
single connection at high RTT here, as it does on a real WAN.

Bytes are counted as they are delivered, per direction (``up`` = client → server), so
the figures include SSH's own framing, MACs and handshake: what an operator pays for.

The proxy runs its own asyncio loop in a daemon thread; `WanProxy.set_link` changes RTT
and bandwidth for chunks read afterwards, `WanProxy.counters` snapshots the counters.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from dataclasses import dataclass

READ_SIZE = 256 * 1024
DEFAULT_BUFFER = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Link:
    """The emulated path: round-trip time in seconds, bandwidth in bytes/s (None: uncapped)."""

    rtt: float = 0.0
    bandwidth: float | None = None
    buffer: int = DEFAULT_BUFFER

    def describe(self) -> str:
        bw = "uncapped" if self.bandwidth is None else f"{self.bandwidth * 8 / 1e6:g} Mbit/s"
        return f"RTT {self.rtt * 1000:g} ms, {bw}"


@dataclass(frozen=True, slots=True)
class Counters:
    """Bytes delivered each way and connections accepted since the proxy started."""

    up: int
    down: int
    connections: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.up - other.up, self.down - other.down, self.connections - other.connections)

    @property
    def total(self) -> int:
        return self.up + self.down


class _Direction:
    """One direction of one connection: a delay line with a serialiser in front."""

    def __init__(self, proxy: WanProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 upward: bool) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.upward = upward
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.link_free = 0.0
        self.have_data = asyncio.Event()
        self.have_room = asyncio.Event()
        self.have_room.set()

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            link = self.proxy.link
            now = loop.time()
            if link.bandwidth:
                start = max(now, self.link_free)
                self.link_free = start + len(data) / link.bandwidth
                deliver = self.link_free + link.rtt / 2
            else:
                deliver = now + link.rtt / 2
            self.queue.append((deliver, data))
            self.queued += len(data)
            self.have_data.set()
            if not data:
                return
            if self.queued >= link.buffer:
                self.have_room.clear()
                await self.have_room.wait()

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.have_data.clear()
                await self.have_data.wait()
                continue
            deliver, data = self.queue[0]
            wait = deliver - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            self.queued -= len(data)
            if self.queued < self.proxy.link.buffer:
                self.have_room.set()
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError):
                return
            self.proxy._count(self.upward, len(data))


class WanProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``upstream``, through the emulated `Link`."""

    def __init__(self, upstream: int, link: Link | None = None) -> None:
        self.upstream = upstream
        self.link = link or Link()
        self.port = 0
        self._up = 0
        self._down = 0
        self._connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> WanProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = fut.result(timeout=10)
        return self

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def set_link(self, link: Link) -> None:
        """Applies to data read from now on (a connection in progress keeps its queued chunks)."""

        self.link = link

    def _count(self, upward: bool, n: int) -> None:
        with self._lock:
            if upward:
                self._up += n
            else:
                self._down += n

    def counters(self) -> Counters:
        with self._lock:
            return Counters(self._up, self._down, self._connections)

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._connections += 1
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            cwriter.close()
            self._tasks.discard(task)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for d in (_Direction(self, creader, swriter, True), _Direction(self, sreader, cwriter, False)):
                    tg.create_task(d.pump_in())
                    tg.create_task(d.pump_out())
        except* (ConnectionError, OSError):
            pass
        except* asyncio.CancelledError:
            pass  # stop(): end quietly (the stream server's callback would log a cancelled task)
        finally:
            for w in (cwriter, swriter):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()
            self._tasks.discard(task)

    def stop(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            # until they have ended: a task still cancelling when the loop stops is reported
            # at exit as "destroyed but it is pending"
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

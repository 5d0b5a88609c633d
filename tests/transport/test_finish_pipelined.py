"""The real sender and the real agent: neither the start nor the end of a run waits a round trip.

At the start, the entries follow Hello in its flight: nothing in HelloOk changes what a
first copy sends.

The agent applies a session's messages in order, so Finish may follow the last file's data
at once; only items whose answer could make the sender send more (NEED, block sums, a
delta that may be refused) are waited for.  A channel that delays the agent's answers
(a slow return path, as a WAN would) shows which: Finish must be written while the
answers to data already sent are still on their way, and the run must still end with
every file answered and in place.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import passthrough
import pytest
from passthrough import Passthrough
from treecmp import diff, snapshot

from georep.errors import AgentVersionMismatch
from georep.model import Kind, Summary
from georep.protocol import messages as m
from georep.protocol.session import Role, Session, State
from georep.source.crawl import Crawler
from georep.source.identity import IdStore
from georep.transport.channel import PipeChannel, local_agent_argv
from georep.transport.sender import Lanes, Options, Sender

DELAY_S = 0.2


class SlowReturn(Passthrough):
    """The agent's answers arrive ``DELAY_S`` late; noted: how many final answers to file data
    the sender had read when it wrote Finish, and how many entries it wrote before HelloOk."""

    def __init__(self, inner: PipeChannel) -> None:
        super().__init__(inner)
        self.outgoing = Session(Role.AGENT)  # passive decoders of both streams
        self.incoming = Session(Role.SENDER)
        self.data_sent: set[int] = set()
        self.answered: set[int] = set()
        self.answered_at_finish: int | None = None
        self.entries_before_hello_ok = 0
        self.hello_ok_read = False
        self.files: set[int] = set()  # entries of regular files, wherever their data goes
        self.final: set[int] = set()  # items with their last answer
        self.files_answered_at_finish: int | None = None

    async def from_agent(self, data: bytes) -> None:
        if data:
            await asyncio.sleep(DELAY_S)
        for msg in self.incoming.receive(data):
            if isinstance(msg, m.Results):
                self.answered.update(r.seq for r in msg.items if r.status != m.NEED and r.seq in self.data_sent)
                self.final.update(r.seq for r in msg.items if r.status != m.NEED)
        self.hello_ok_read = self.hello_ok_read or self.incoming.state is State.READY  # the sender has it now

    def from_sender(self, data: bytes) -> None:
        for msg in self.outgoing.receive(data):
            if isinstance(msg, m.Blobs):
                self.data_sent.update(f.seq for f in msg.files)
            elif isinstance(msg, m.Finish):
                self.answered_at_finish = len(self.answered)
                self.files_answered_at_finish = len(self.final & self.files)
            elif isinstance(msg, m.EntryMsg):
                if msg.kind == Kind.FILE:
                    self.files.add(msg.seq)
                if not self.hello_ok_read:
                    self.entries_before_hello_ok += 1


async def replicate(src: Path, dst: Path, state: Path, argv: list[str] | None = None) -> tuple[Summary, SlowReturn]:
    return await passthrough.replicate(src, dst, state, SlowReturn, argv)


def test_finish_follows_the_last_data_without_waiting_for_its_answers(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    (src / "d").mkdir(parents=True)
    for i in range(300):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1000 + i))
    os.link(src / "d" / "f0", src / "extra name")  # a link goes out behind the data too

    summary, chan = asyncio.run(replicate(src, dst, state))

    assert len(chan.data_sent) == 300
    assert chan.answered_at_finish is not None and chan.answered_at_finish < len(chan.data_sent)
    assert chan.answered == chan.data_sent  # ... and every answer still came, before Finished
    assert summary.problems == [] and summary.files == 300
    assert diff(snapshot(src), snapshot(dst)) == []
    assert os.stat(dst / "extra name").st_ino == os.stat(dst / "d" / "f0").st_ino


def test_finish_does_not_wait_for_the_answers_to_what_joined_lanes_carried(tmp_path: Path) -> None:
    """Protocol v6: the agent holds Finish until the joined lanes' data arrived, so the sender
    sends it once the lanes wrote that data, a round trip before their answers are back."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(400):
        (src / f"f{i}").write_bytes(os.urandom(20_000 + i))

    async def run() -> tuple[Summary, SlowReturn]:
        store = IdStore(state, os.fsencode(src))
        crawler = Crawler(os.fsencode(src), store)
        chan = SlowReturn(await PipeChannel.start(local_agent_argv(str(dst))))
        sender = Sender(chan, Options(lanes=Lanes(2, join=True)))  # type: ignore[arg-type]
        try:
            await sender.handshake()
            while len(sender.lanes) < 2 or not all(lane.ready for lane in sender.lanes):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # ready lanes take every file's data
            return await sender.run(iter(crawler), store.deferred_links, lambda: crawler.count), chan
        finally:
            await sender.abort()
            store.close()

    summary, chan = asyncio.run(asyncio.wait_for(run(), 60))

    assert summary.lanes_kind == "joined" and chan.data_sent == set()  # all data went through the lanes
    assert len(chan.files) == 400
    assert chan.files_answered_at_finish is not None and chan.files_answered_at_finish < 400
    assert chan.final >= chan.files  # ... and every answer still came, before Finished
    assert summary.problems == [] and summary.files == 400
    assert diff(snapshot(src), snapshot(dst)) == []


def test_entries_follow_hello_without_waiting_for_its_answer(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(b"x" * i)

    summary, chan = asyncio.run(replicate(src, dst, state))

    assert chan.entries_before_hello_ok == 51  # the root and every file, all in Hello's flight
    assert summary.problems == [] and summary.files == 50
    assert diff(snapshot(src), snapshot(dst)) == []


def test_an_agent_of_another_version_refuses_clearly_what_came_behind_hello(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    future_agent = [sys.executable, "-c",
                    "import georep; georep.PROTOCOL_VERSION += 1\n"
                    "from georep.cli.main import main; raise SystemExit(main())", "agent", str(dst)]

    with pytest.raises(AgentVersionMismatch, match="this agent speaks v"):
        asyncio.run(replicate(src, dst, state, future_agent))
    assert not (dst / "f").exists()


def test_the_callers_work_meanwhile_runs_while_the_agent_finishes(tmp_path: Path) -> None:
    """``meanwhile`` (the ledger's `settle` in a copy) runs once Finish is written, before the
    answers it would otherwise wait behind: the end of a run no longer waits for that work."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(100):
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))
    seen: list[tuple[bool, bool, int, int]] = []

    async def run() -> tuple[Summary, SlowReturn]:
        store = IdStore(state, os.fsencode(src))
        crawler = Crawler(os.fsencode(src), store)
        chan = SlowReturn(await PipeChannel.start(local_agent_argv(str(dst))))
        sender = Sender(chan, Options())  # type: ignore[arg-type]

        def meanwhile() -> None:
            seen.append((chan.answered_at_finish is not None, sender.finished.done(), len(chan.answered),
                         len(chan.data_sent)))

        try:
            await sender.handshake()
            return await sender.run(iter(crawler), store.deferred_links, lambda: crawler.count,
                                    meanwhile=meanwhile), chan
        finally:
            await sender.abort()
            store.close()

    summary, chan = asyncio.run(asyncio.wait_for(run(), 60))

    assert len(seen) == 1
    finish_written, finished_read, answered, data_sent = seen[0]
    assert finish_written and not finished_read
    assert answered < data_sent == 100  # answers to file data were still on their way
    assert summary.problems == [] and summary.files == 100
    assert diff(snapshot(src), snapshot(dst)) == []

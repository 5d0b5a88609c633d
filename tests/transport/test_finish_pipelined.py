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
from georep.model import Summary
from georep.protocol import messages as m
from georep.protocol.session import Role, Session, State
from georep.transport.channel import PipeChannel

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

    async def from_agent(self, data: bytes) -> None:
        if data:
            await asyncio.sleep(DELAY_S)
        for msg in self.incoming.receive(data):
            if isinstance(msg, m.Results):
                self.answered.update(r.seq for r in msg.items if r.status != m.NEED and r.seq in self.data_sent)
        self.hello_ok_read = self.hello_ok_read or self.incoming.state is State.READY  # the sender has it now

    def from_sender(self, data: bytes) -> None:
        for msg in self.outgoing.receive(data):
            if isinstance(msg, m.Blobs):
                self.data_sent.update(f.seq for f in msg.files)
            elif isinstance(msg, m.Finish):
                self.answered_at_finish = len(self.answered)
            elif isinstance(msg, m.EntryMsg) and not self.hello_ok_read:
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

"""The real sender and the real agent: a delta that does not verify is sent again whole, once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import passthrough
from passthrough import Passthrough
from treecmp import diff, snapshot

from georep.model import Summary
from georep.protocol import messages as m
from georep.protocol.session import Role, Session
from georep.transport.channel import PipeChannel

MIB = 1 << 20


class Watched(Passthrough):
    """Calls ``on_sums`` when a BlockSums passes (nothing altered)."""

    def __init__(self, inner: PipeChannel, on_sums: Callable[[m.BlockSums], None]) -> None:
        super().__init__(inner)
        self.on_sums = on_sums
        self.seen = Session(Role.SENDER)  # a passive decoder of the agent's stream
        self.sums = 0

    async def from_agent(self, data: bytes) -> None:
        for msg in self.seen.receive(data):
            if isinstance(msg, m.BlockSums):
                self.sums += 1
                self.on_sums(msg)


async def replicate(
    src: Path, dst: Path, state: Path, on_sums: Callable[[m.BlockSums], None]
) -> tuple[Summary, Watched]:
    return await passthrough.replicate(src, dst, state, lambda chan: Watched(chan, on_sums))


def test_basis_changed_between_hashing_and_copying_is_resent_whole(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(8 * MIB))
    first, _ = asyncio.run(replicate(src, dst, state, lambda s: None))
    assert first.problems == [] and first.bytes_data == 8 * MIB
    with open(src / "big", "ab") as f:
        f.write(os.urandom(MIB))

    def meddle(sums: m.BlockSums) -> None:
        # the agent has hashed its copy; before the delta arrives the copy changes in place
        st = os.stat(dst / "big")
        with open(dst / "big", "r+b") as f:
            f.seek(2 * MIB)
            f.write(b"changed behind the agent's back")
        os.utime(dst / "big", ns=(st.st_atime_ns, st.st_mtime_ns))

    summary, chan = asyncio.run(replicate(src, dst, state, meddle))
    assert summary.problems == []
    assert chan.sums == 1  # one offer of a delta: the retry is a whole file
    assert diff(snapshot(src), snapshot(dst)) == []
    assert summary.files == 1
    assert summary.bytes_data == MIB + 9 * MIB  # the delta (the appended block), then the whole file
    assert "asking for the whole file" in chan.stderr_text()
    assert os.listdir(dst / ".georep" / "staging") == []

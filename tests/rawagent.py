"""The real `georep-sync agent` driven message by message, for tests that play a (hostile) sender."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from georep.model import Kind
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.session import Role, Session, State


class RawAgent:
    """The real `georep-sync agent` over a pipe, driven message by message."""

    def __init__(self, root: Path, scope: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-bb", "-m", "georep", "agent", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.session = Session(Role.SENDER, scope=scope)
        self.inbox: list[m.Message] = []
        self.raw(self.session.initiate())
        while self.session.state is not State.READY:
            self._pump()

    def raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, *msgs: m.Message) -> None:
        self.raw(b"".join(self.session.send(x) for x in msgs))

    def _pump(self) -> bool:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], 20)
        assert ready, "the agent did not answer within 20 s"
        data = os.read(fd, 65536)
        if not data:
            return False
        self.inbox.extend(self.session.receive(data))
        return True

    def results(self, n: int) -> list[m.Result]:
        out: list[m.Result] = []
        while len(out) < n:
            while not self.inbox:
                assert self._pump(), "agent closed its output"
            msg = self.inbox.pop(0)
            assert isinstance(msg, m.Results), msg
            out.extend(msg.items)
        return out

    def one(self, msg: m.Message) -> m.Result:
        self.send(msg)
        (r,) = self.results(1)
        return r

    def finish(self) -> int:
        self.send(m.Bye())
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=20)


def entry(seq: int, oid: bytes, parent: bytes, name: bytes, kind: Kind = Kind.FILE, size: int = 0) -> m.EntryMsg:
    return m.EntryMsg(seq, oid, parent, name, int(kind), 0o755, 0, 0, 1_000_000_000, [], size, b"", 0)


def oid(n: int) -> bytes:
    return n.to_bytes(16, "big") if n > 1 else bytes(15) + b"\x09"


def data_msgs(seq: int, payload: bytes, digest: bytes | None = None) -> list[m.Message]:
    d = ExtentDigest()
    d.update(0, payload)
    return [
        m.DataBegin(seq, len(payload)),
        m.DataChunk(seq, 0, payload),
        m.DataEnd(seq, digest or d.finish(len(payload)), 1_000_000_000),
    ]

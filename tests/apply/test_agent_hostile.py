"""A hostile or broken sender against the real agent process: nothing escapes ROOT."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest
from georep.protocol.session import Role, Session, State


class RawAgent:
    """The real `georep-sync agent` over a pipe, driven message by message."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-bb", "-m", "georep", "agent", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.session = Session(Role.SENDER)
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


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """ROOT inside a sandbox whose other contents must never change."""

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("keep me")
    return tmp_path / "root", tmp_path


def listing(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*") if "root" not in x.relative_to(p).parts[:1])


@pytest.mark.parametrize(
    "name", [b"../x", b"a/b", b"/etc/passwd", b".", b"..", b"", b"nul\0byte", b"x" * 256, b"../../outside/precious"]
)
@pytest.mark.parametrize("kind", [Kind.FILE, Kind.DIR, Kind.SYMLINK, None])
def test_hostile_names_end_the_session_with_a_protocol_error(
    sandbox: tuple[Path, Path], name: bytes, kind: Kind | None
) -> None:
    root, top = sandbox
    before = listing(top)
    agent = RawAgent(root)
    if kind is None:
        agent.send(m.LinkMsg(9, oid(101), ROOT_ID, name))
    else:
        agent.send(entry(1, oid(100), ROOT_ID, name, kind))
    while not agent.inbox:
        assert agent._pump(), "agent closed without an answer"
    err = agent.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError", err
    assert "refused name" in err.message
    assert agent.proc.wait(timeout=20) == 28
    assert listing(top) == before
    assert sorted(os.listdir(root)) == [".georep"]


def test_reserved_state_dir_and_unknown_parent(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    agent = RawAgent(root)
    r = agent.one(entry(1, oid(10), ROOT_ID, b".georep", Kind.DIR))
    assert r.status == m.FAILED and "reserved" in r.cause
    r = agent.one(entry(2, oid(11), oid(12345), b"orphan", Kind.DIR))
    assert r.status == m.FAILED and "parent" in r.cause
    r = agent.one(entry(3, ROOT_ID, oid(10), b"x", Kind.DIR))
    assert r.status == m.FAILED
    assert agent.finish() == 0


def test_symlinked_parent_is_never_followed(sandbox: tuple[Path, Path]) -> None:
    root, top = sandbox
    agent = RawAgent(root)
    assert agent.one(entry(1, oid(20), ROOT_ID, b"d", Kind.DIR)).status == m.DONE
    agent.finish()
    # someone on the secondary swaps the directory for a symlink to outside
    os.rmdir(root / "d")
    os.symlink(top / "outside", root / "d")
    agent = RawAgent(root)
    r = agent.one(entry(2, oid(21), oid(20), b"evil", Kind.DIR))
    assert r.status == m.FAILED
    r = agent.one(entry(3, oid(22), oid(20), b"evil-file", Kind.FILE, 4))
    assert r.status == m.FAILED
    agent.finish()
    assert sorted(os.listdir(top / "outside")) == ["precious"]


def test_planted_symlink_in_the_way_is_replaced_not_followed(sandbox: tuple[Path, Path]) -> None:
    root, top = sandbox
    root.mkdir()
    os.symlink(top / "outside", root / "e")
    agent = RawAgent(root)
    assert agent.one(entry(1, oid(30), ROOT_ID, b"e", Kind.DIR)).status == m.DONE
    assert agent.one(entry(2, oid(31), oid(30), b"precious", Kind.DIR)).status == m.DONE
    agent.finish()
    assert (root / "e").is_dir() and not (root / "e").is_symlink()
    assert (top / "outside" / "precious").read_text() == "keep me"


def _data_msgs(seq: int, payload: bytes, digest: bytes | None = None) -> list[m.Message]:
    d = ExtentDigest()
    d.update(0, payload)
    return [
        m.DataBegin(seq, len(payload)),
        m.DataChunk(seq, 0, payload),
        m.DataEnd(seq, digest or d.finish(len(payload)), 1_000_000_000),
    ]


def test_digest_mismatch_is_not_published(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    agent = RawAgent(root)
    assert agent.one(entry(1, oid(40), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
    agent.send(*_data_msgs(1, b"hello", b"\0" * 16))
    (r,) = agent.results(1)
    assert r.status == m.FAILED and "digest mismatch" in r.cause
    assert not (root / "f").exists()
    assert agent.one(entry(2, oid(40), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
    agent.send(*_data_msgs(2, b"hello"))
    assert agent.results(1)[0].status == m.DONE
    assert (root / "f").read_bytes() == b"hello"
    assert os.listdir(root / ".georep" / "staging") == []
    agent.finish()


def test_data_nobody_asked_for_ends_the_session(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    agent = RawAgent(root)
    agent.send(*_data_msgs(77, b"unrequested"))
    while not agent.inbox:
        agent._pump()
    err = agent.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError"
    assert agent.proc.wait(timeout=20) == 28
    assert not any(p.name != ".georep" for p in root.iterdir())


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack(">I", 100) + b"short",  # truncated frame, then EOF
        struct.pack(">I", 1 << 30),  # a 1 GiB frame header: refused before reading it
    ],
)
def test_truncated_or_oversized_frames_are_rejected(sandbox: tuple[Path, Path], tail: bytes) -> None:
    root, _ = sandbox
    agent = RawAgent(root)
    agent.raw(tail)
    assert agent.proc.stdin is not None
    agent.proc.stdin.close()
    assert agent.proc.wait(timeout=20) == 28
    assert agent.proc.stderr is not None
    err = agent.proc.stderr.read().decode()
    assert "frame" in err and "Traceback" not in err

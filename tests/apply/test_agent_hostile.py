"""A hostile or broken sender against the real agent process: nothing escapes ROOT."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from rawagent import RawAgent, entry, oid
from rawagent import data_msgs as _data_msgs

from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m


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

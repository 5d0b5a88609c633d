"""Block deltas against the real agent process: built in staging, verified whole, published by one rename."""

from __future__ import annotations

import os
from pathlib import Path

from test_agent_hostile import RawAgent, oid

from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m
from georep.protocol.delta import BlockMatcher, DeltaEncoder, basis_sums
from georep.protocol.digest import ExtentDigest
from georep.protocol.framing import CHUNK_SIZE

MIB = 1 << 20


def file_entry(seq: int, x: bytes, size: int, mtime_s: int, name: bytes = b"f") -> m.EntryMsg:
    return m.EntryMsg(seq, x, ROOT_ID, name, int(Kind.FILE), 0o644, 0, 0, mtime_s * 10**9, [], size, b"", 0)


def answer(agent: RawAgent) -> m.Result | m.BlockSums:
    """The agent's next answer: one Result, or a BlockSums."""

    while not agent.inbox:
        assert agent._pump(), "agent closed its output"
    msg = agent.inbox[0]
    if isinstance(msg, m.BlockSums):
        agent.inbox.pop(0)
        return msg
    assert isinstance(msg, m.Results), msg
    first = msg.items.pop(0)
    if not msg.items:
        agent.inbox.pop(0)
    return first


def full_msgs(seq: int, data: bytes, mtime_s: int) -> list[m.Message]:
    d = ExtentDigest()
    out: list[m.Message] = [m.DataBegin(seq, len(data))]
    for off in range(0, len(data), CHUNK_SIZE):
        d.update(off, data[off : off + CHUNK_SIZE])
        out.append(m.DataChunk(seq, off, data[off : off + CHUNK_SIZE]))
    out.append(m.DataEnd(seq, d.finish(len(data)), mtime_s * 10**9))
    return out


def delta_msgs(sums: m.BlockSums, new: bytes, mtime_s: int) -> tuple[list[m.Message], int]:
    """What the sender sends for a delta (and how many data bytes)."""

    enc = DeltaEncoder(BlockMatcher(sums.block_size, sums.basis_size, sums.sums), len(new), CHUNK_SIZE)
    out: list[m.Message] = [m.DeltaBegin(sums.seq, len(new))]
    while want := enc.want():
        out.extend(m.DataChunk(sums.seq, off, bytes(p)) for off, p in enc.feed(new[enc.pos : enc.pos + want]))
    out.append(m.DataEnd(sums.seq, enc.finish(), mtime_s * 10**9))
    return out, enc.sent


def place(agent: RawAgent, seq: int, x: bytes, data: bytes, mtime_s: int, name: bytes = b"f") -> None:
    agent.send(file_entry(seq, x, len(data), mtime_s, name))
    r = answer(agent)
    assert isinstance(r, m.Result) and r.status == m.NEED, r
    agent.send(*full_msgs(seq, data, mtime_s))
    assert answer(agent) == m.Result(seq, m.DONE, "")


def test_append_sends_one_block_and_publishes_by_rename(tmp_path: Path) -> None:
    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(500)
    old = os.urandom(3 * MIB + 1000)
    place(agent, 1, x, old, 1)
    ino = os.stat(root / "f").st_ino
    new = old + os.urandom(MIB)
    agent.send(file_entry(2, x, len(new), 2))
    sums = answer(agent)
    assert isinstance(sums, m.BlockSums)
    assert (sums.seq, sums.block_size, sums.basis_size) == (2, MIB, len(old))
    assert sums.sums == basis_sums(old, MIB)
    msgs, sent = delta_msgs(sums, new, 2)
    assert sent == len(new) - 3 * MIB  # the old partial block again, and the appended bytes
    agent.send(*msgs)
    assert answer(agent) == m.Result(2, m.DONE, "")
    assert (root / "f").read_bytes() == new
    assert os.stat(root / "f").st_ino != ino  # a new file, renamed into place
    assert os.stat(root / "f").st_mtime_ns == 2 * 10**9
    assert os.listdir(root / ".georep" / "staging") == []
    assert agent.finish() == 0


def test_a_small_basis_gets_a_plain_need(tmp_path: Path) -> None:
    agent = RawAgent(tmp_path / "root")
    place(agent, 1, oid(501), os.urandom(MIB - 1), 1)
    agent.send(file_entry(2, oid(501), 2 * MIB, 2))
    assert answer(agent) == m.Result(2, m.NEED, "")
    # and a delta for it is a protocol violation
    agent.send(m.DeltaBegin(2, 2 * MIB))
    while not agent.inbox:
        assert agent._pump()
    err = agent.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError" and "no block sums" in err.message
    assert agent.proc.wait(timeout=20) == 28


def test_a_basis_changed_after_hashing_is_not_published_and_the_whole_file_is_asked_for(tmp_path: Path) -> None:
    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(502)
    old = os.urandom(4 * MIB)
    place(agent, 1, x, old, 1)
    new = old[: 3 * MIB] + os.urandom(MIB)
    agent.send(file_entry(2, x, len(new), 2))
    sums = answer(agent)
    assert isinstance(sums, m.BlockSums)
    # behind the agent's back, in place (same inode, same size): block 1 of the basis changes
    with open(root / "f", "r+b") as f:
        f.seek(MIB + 10)
        f.write(b"garbage")
    damaged = (root / "f").read_bytes()
    msgs, _ = delta_msgs(sums, new, 2)
    agent.send(*msgs)
    assert answer(agent) == m.Result(2, m.NEED, "")  # not published: send it whole
    assert (root / "f").read_bytes() == damaged
    assert os.listdir(root / ".georep" / "staging") == []
    agent.send(*full_msgs(2, new, 2))
    assert answer(agent) == m.Result(2, m.DONE, "")
    assert (root / "f").read_bytes() == new
    assert agent.finish() == 0
    assert b"asking for the whole file" in agent.proc.stderr.read()  # type: ignore[union-attr]


def test_a_second_delta_for_the_same_item_is_a_protocol_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(503)
    old = os.urandom(2 * MIB)
    place(agent, 1, x, old, 1)
    agent.send(file_entry(2, x, 2 * MIB, 2))
    sums = answer(agent)
    assert isinstance(sums, m.BlockSums)
    msgs, _ = delta_msgs(sums, os.urandom(2 * MIB), 2)
    bad_end = m.DataEnd(2, b"\0" * 16, 2 * 10**9)
    agent.send(*msgs[:-1], bad_end)
    assert answer(agent) == m.Result(2, m.NEED, "")
    assert (root / "f").read_bytes() == old
    agent.send(m.DeltaBegin(2, 2 * MIB))
    while not agent.inbox:
        assert agent._pump()
    err = agent.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError"
    assert agent.proc.wait(timeout=20) == 28
    assert (root / "f").read_bytes() == old


def test_a_basis_replaced_before_the_delta_falls_back_to_the_whole_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(504)
    old = os.urandom(2 * MIB)
    place(agent, 1, x, old, 1)
    agent.send(file_entry(2, x, 3 * MIB, 2))
    sums = answer(agent)
    assert isinstance(sums, m.BlockSums)
    os.rename(root / "f", tmp_path / "stolen")  # another inode at the name, the basis gone
    (root / "f").write_bytes(old)
    new = old + os.urandom(MIB)
    msgs, _ = delta_msgs(sums, new, 2)
    agent.send(*msgs)
    assert answer(agent) == m.Result(2, m.NEED, "")
    agent.send(*full_msgs(2, new, 2))
    assert answer(agent) == m.Result(2, m.DONE, "")
    assert (root / "f").read_bytes() == new
    assert agent.finish() == 0


def test_a_hard_linked_basis_is_never_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(505)
    old = os.urandom(2 * MIB)
    place(agent, 1, x, old, 1)
    assert answer_one(agent, m.LinkMsg(2, x, ROOT_ID, b"g")).status == m.DONE
    basis_ino = os.stat(root / "g").st_ino
    new = old[:MIB] + b"changed" + old[MIB + 7 :]
    agent.send(file_entry(3, x, len(new), 2))
    sums = answer(agent)
    assert isinstance(sums, m.BlockSums)
    msgs, sent = delta_msgs(sums, new, 2)
    assert sent == MIB
    agent.send(*msgs)
    assert answer(agent) == m.Result(3, m.DONE, "")
    assert (root / "f").read_bytes() == new
    assert os.stat(root / "g").st_ino == basis_ino and (root / "g").read_bytes() == old
    assert agent.finish() == 0


def test_blobs_or_a_full_send_answer_block_sums_too(tmp_path: Path) -> None:
    """The sender may ignore the sums (a sparse file, a file now small): the agent takes the whole file."""

    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(506)
    place(agent, 1, x, os.urandom(2 * MIB), 1)
    agent.send(file_entry(2, x, 5, 2))
    assert isinstance(answer(agent), m.BlockSums)
    d = ExtentDigest()
    d.update(0, b"small")
    agent.send(m.Blobs([m.SmallFile(2, 5, [[0, b"small"]], d.finish(5), 2 * 10**9)]))
    assert answer(agent) == m.Result(2, m.DONE, "")
    assert (root / "f").read_bytes() == b"small"
    assert agent.finish() == 0


def answer_one(agent: RawAgent, msg: m.Message) -> m.Result:
    agent.send(msg)
    r = answer(agent)
    assert isinstance(r, m.Result)
    return r


def test_a_sparse_basis_gets_a_plain_need(tmp_path: Path) -> None:
    """Hashing a sparse copy would read its holes as zeros: such a file is sent whole, holes skipped."""

    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(507)
    data = os.urandom(MIB)
    d = ExtentDigest()
    d.update(0, data)
    agent.send(file_entry(1, x, 64 * MIB, 1))
    assert answer(agent) == m.Result(1, m.NEED, "")
    agent.send(m.DataBegin(1, 64 * MIB), m.DataChunk(1, 0, data), m.DataEnd(1, d.finish(64 * MIB), 10**9))
    assert answer(agent) == m.Result(1, m.DONE, "")
    assert os.stat(root / "f").st_blocks * 512 < 2 * MIB
    agent.send(file_entry(2, x, 64 * MIB, 2))
    assert answer(agent) == m.Result(2, m.NEED, "")
    assert agent.finish() == 0

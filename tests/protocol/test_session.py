"""The sans-IO session state machine, over every (state, message) pair."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from georep import PROTOCOL_VERSION
from georep.errors import AgentVersionMismatch, ProtocolError
from georep.model import Entry, Kind, Meta
from georep.protocol import messages as m
from georep.protocol.framing import encode
from georep.protocol.session import MAGIC, Role, Session, State

SAMPLES: dict[type[m.Message], m.Message] = {
    m.Hello: m.Hello(PROTOCOL_VERSION, "t", "brick-1"),
    m.RemoveMsg: m.RemoveMsg(1, b"i" * 16, b"p" * 16, b"n"),
    m.HelloOk: m.HelloOk(PROTOCOL_VERSION, "t", False),
    m.EntryMsg: m.EntryMsg(1, b"i" * 16, b"p" * 16, b"n", 1, 0o644, 0, 0, 0, [], 0, b"", 0),
    m.LinkMsg: m.LinkMsg(1, b"i" * 16, b"p" * 16, b"n"),
    m.MoveMsg: m.MoveMsg(1, b"i" * 16, b"p" * 16, b"n"),
    m.DataBegin: m.DataBegin(1, 0),
    m.DataChunk: m.DataChunk(1, 0, b""),
    m.DataEnd: m.DataEnd(1, b"d" * 16, 0),
    m.Blobs: m.Blobs([]),
    m.DataAbort: m.DataAbort(1, "x"),
    m.Finish: m.Finish(True, 1, False),
    m.Bye: m.Bye(),
    m.Results: m.Results([]),
    m.Finished: m.Finished(0),
    m.ErrorMsg: m.ErrorMsg("AgentFailed", "x", "y"),
    m.DeltaBegin: m.DeltaBegin(1, 5),
    m.BlockSums: m.BlockSums(1, 1 << 20, 5, b"s" * 16),
    m.Lane: m.Lane(),
    m.Adopt: m.Adopt(1, b"tmp-1-L1", 5, 0),
    m.Ping: m.Ping(7),
    m.Staged: m.Staged(1, b"tmp-1-L1"),
    m.Pong: m.Pong(7),
    m.Resume: m.Resume(b"t" * 16),
    m.Resumed: m.Resumed(True),
    m.Seal: m.Seal(),
    m.Sealed: m.Sealed(b"t" * 16),
    m.OpenLanes: m.OpenLanes(),
    m.JoinLane: m.JoinLane(b"k" * 32),
    m.LaneSocket: m.LaneSocket(b"/proc/1/fd/3/lanes-1.sock", b"k" * 32),
    m.DialLanes: m.DialLanes(b"/tmp/georep-lanes-" + b"0" * 32 + b".sock", 16, b"k" * 32),
    m.LanesDialled: m.LanesDialled(16, ""),
}


def test_samples_cover_every_message() -> None:
    assert set(SAMPLES) == set(m.ALL_MESSAGES)


@pytest.mark.parametrize("old", [1, 2, 3, 4, 5, 6])
def test_an_older_peer_is_refused(old: int) -> None:
    """v2 added block deltas, v3 data lanes, v4 Bye behind Finish, v5 lanes joining the agent, v6 Finish
    ahead of joined lanes' data, v7 lanes the agent dials back: an older sender is refused, not half understood."""

    assert PROTOCOL_VERSION == 7
    agent = Session(Role.AGENT)
    hello = agent.receive(MAGIC + encode(m.Hello(old, "georep-sync 0.0", "")))[0]
    assert isinstance(hello, m.Hello)
    reply = agent.answer_hello(hello)
    assert agent.state is State.CLOSED and b"AgentVersionMismatch" in reply


def connected() -> tuple[Session, Session]:
    sender, agent = Session(Role.SENDER), Session(Role.AGENT)
    hello = agent.receive(sender.initiate())
    assert len(hello) == 1 and isinstance(hello[0], m.Hello)
    assert hello[0].version == PROTOCOL_VERSION
    assert sender.receive(agent.initiate() + agent.answer_hello(hello[0])) == []
    assert sender.state is State.READY and agent.state is State.READY
    return sender, agent


def test_handshake_then_messages_flow() -> None:
    sender, agent = connected()
    assert agent.receive(sender.send(SAMPLES[m.EntryMsg])) == [SAMPLES[m.EntryMsg]]
    assert sender.receive(agent.send(SAMPLES[m.Results])) == [SAMPLES[m.Results]]


@pytest.mark.parametrize("cls", list(SAMPLES))
def test_only_the_right_role_may_send_each_message(cls: type[m.Message]) -> None:
    sender, agent = connected()
    msg = SAMPLES[cls]
    for receiver, allowed in ((agent, m.FROM_SENDER), (sender, m.FROM_AGENT)):
        if cls in allowed or cls is m.ErrorMsg:
            assert receiver.receive(encode(msg)) == [msg]
        else:
            with pytest.raises(ProtocolError):
                receiver.receive(encode(msg))


@pytest.mark.parametrize("cls", list(SAMPLES))
def test_nothing_but_the_handshake_before_it(cls: type[m.Message]) -> None:
    agent = Session(Role.AGENT)
    data = MAGIC + encode(SAMPLES[cls])
    if cls in (m.Hello, m.ErrorMsg):
        assert len(agent.receive(data)) == 1
    else:
        with pytest.raises(ProtocolError, match="expected the handshake"):
            agent.receive(data)


@pytest.mark.parametrize("cls", list(SAMPLES))
def test_nothing_after_close(cls: type[m.Message]) -> None:
    sender, agent = connected()
    agent.receive(sender.send(m.Bye()))
    assert agent.state is State.CLOSED
    with pytest.raises(ProtocolError, match="after the session closed"):
        agent.receive(encode(SAMPLES[cls]))


def test_version_mismatch_both_directions() -> None:
    agent = Session(Role.AGENT)
    hello = agent.receive(MAGIC + encode(m.Hello(PROTOCOL_VERSION + 1, "future", "")))[0]
    assert isinstance(hello, m.Hello)
    reply = agent.answer_hello(hello)
    assert agent.state is State.CLOSED
    sender = Session(Role.SENDER)
    sender.initiate()
    (err,) = sender.receive(MAGIC + reply)
    assert isinstance(err, m.ErrorMsg) and err.error == "AgentVersionMismatch"
    sender = Session(Role.SENDER)
    with pytest.raises(AgentVersionMismatch):
        sender.receive(MAGIC + encode(m.HelloOk(PROTOCOL_VERSION + 1, "future", False)))


def test_requests_behind_hello_flow_and_another_version_is_still_answered() -> None:
    """The sender may send its requests in Hello's flight; a refused Hello hides them."""

    sender = Session(Role.SENDER)
    flight = sender.initiate() + sender.send(SAMPLES[m.EntryMsg]) + sender.send(SAMPLES[m.Finish])
    agent = Session(Role.AGENT)
    assert [type(x) for x in agent.receive(flight)] == [m.Hello, m.EntryMsg, m.Finish]
    agent = Session(Role.AGENT)
    (hello, bye) = agent.receive(sender.initiate() + encode(m.Bye()))  # a whole (empty) run in one flight
    assert isinstance(hello, m.Hello) and isinstance(bye, m.Bye) and agent.state is State.CLOSED
    peer = Session(Role.SENDER)  # closed by Bye, not refused: the answer is HelloOk
    assert peer.receive(MAGIC + agent.answer_hello(hello)) == [] and peer.state is State.READY
    assert not agent.refused
    future = MAGIC + encode(m.Hello(PROTOCOL_VERSION + 1, "future", "")) + encode(SAMPLES[m.EntryMsg])
    agent = Session(Role.AGENT)
    (hello,) = agent.receive(future)
    assert isinstance(hello, m.Hello) and agent.state is State.CLOSED
    assert b"AgentVersionMismatch" in agent.answer_hello(hello) and agent.refused


def test_shell_noise_instead_of_magic_is_shown() -> None:
    with pytest.raises(ProtocolError, match="Welcome"):
        Session(Role.SENDER).receive(b"Welcome to host\n\x1b[31m")
    s = Session(Role.SENDER)
    assert s.receive(MAGIC[:3]) == []  # a prefix of the magic waits for more
    with pytest.raises(ProtocolError):
        s.end_of_stream()  # ...but a stream that ends there was cut short


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100), st.integers(min_value=1, max_value=7))
def test_any_bytes_after_magic_only_raise_protocol_errors(noise: bytes, step: int) -> None:
    agent = Session(Role.AGENT)
    data = MAGIC + noise
    try:
        for i in range(0, len(data), step):
            agent.receive(data[i : i + step])
        agent.end_of_stream()
    except ProtocolError:
        pass


def test_bye_closes_one_direction_only() -> None:
    """Bye may ride right behind the last request: the answers to what came before it still flow."""

    sender, agent = connected()
    wire = sender.send(m.Finish(True, 1, False)) + sender.send(m.Bye())
    assert not sender.can_send
    with pytest.raises(ProtocolError, match="already closed"):
        sender.send(SAMPLES[m.EntryMsg])
    assert agent.receive(wire) == [m.Finish(True, 1, False), m.Bye()]
    assert agent.state is State.CLOSED and agent.can_send  # nothing more comes in; answers still go out
    answers = agent.send(m.Results([])) + agent.send(m.Finished(0))
    assert sender.receive(answers) == [m.Results([]), m.Finished(0)]
    assert sender.state is State.READY


def test_an_error_closes_both_directions() -> None:
    sender, agent = connected()
    sender.receive(agent.send(SAMPLES[m.ErrorMsg]))
    assert not agent.can_send and not sender.can_send
    assert sender.state is State.CLOSED
    with pytest.raises(ProtocolError):
        sender.send(SAMPLES[m.EntryMsg])


def test_an_entry_sent_from_the_crawl_is_the_entry_message() -> None:
    """`Session.send_entry` skips making the EntryMsg; the bytes must be the same, and a closed
    session refuses it like any message."""

    e = Entry(b"\x01" * 16, b"\x02" * 16, b"name\xff", Kind.FILE,
              Meta(0o4755, 1000, 100, 1_700_000_000_123_456_789, ((b"user.a", b"1"), (b"user.b", b""))), size=12_345)
    s = Session(Role.SENDER)
    expected = encode(m.EntryMsg(7, e.id, e.parent, e.name, int(Kind.FILE), 0o4755, 1000, 100,
                                 1_700_000_000_123_456_789, [[b"user.a", b"1"], [b"user.b", b""]], 12_345, b"", 0))
    assert s.send_entry(e, 7) == expected
    s.send(m.Bye())
    with pytest.raises(ProtocolError, match="closed"):
        s.send_entry(e, 8)

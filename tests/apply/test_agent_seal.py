"""Resume and Seal on the real agent: a token is good only if no other session wrote the scope."""

from __future__ import annotations

from pathlib import Path

from rawagent import RawAgent

from georep.protocol import messages as m


def _next(agent: RawAgent, cls: type[m.Message]) -> m.Message:
    while not agent.inbox:
        assert agent._pump(), "agent closed its output"
    msg = agent.inbox.pop(0)
    assert isinstance(msg, cls), msg
    return msg


def seal(agent: RawAgent) -> bytes:
    agent.send(m.Seal())
    msg = _next(agent, m.Sealed)
    assert isinstance(msg, m.Sealed)
    return msg.token


def resume(agent: RawAgent, token: bytes) -> bool:
    agent.send(m.Resume(token))
    msg = _next(agent, m.Resumed)
    assert isinstance(msg, m.Resumed)
    return msg.valid


def test_a_sealed_token_resumes_once(tmp_path: Path) -> None:
    a = RawAgent(tmp_path)
    token = seal(a)
    assert len(token) == 16
    assert a.finish() == 0
    b = RawAgent(tmp_path)
    assert resume(b, token)
    again = seal(b)
    assert again not in (b"", token)
    assert b.finish() == 0
    c = RawAgent(tmp_path)
    assert not resume(c, token)  # withdrawn when b started; b's own token replaced it
    assert c.finish() == 0
    d = RawAgent(tmp_path)
    assert not resume(d, again)  # c ran after b sealed: its session withdrew b's token
    assert d.finish() == 0


def test_overlapping_sessions_get_no_token(tmp_path: Path) -> None:
    first = RawAgent(tmp_path)
    assert not resume(first, b"?" * 16)  # a session registers with its first request
    second = RawAgent(tmp_path)
    assert not resume(second, b"?" * 16)  # started while the first one runs
    assert seal(first) == b""  # someone started after it
    assert seal(second) == b""  # someone was running when it started
    assert first.finish() == 0 and second.finish() == 0
    third = RawAgent(tmp_path)
    assert len(seal(third)) == 16  # alone now
    assert third.finish() == 0


def test_a_killed_writer_does_not_block_tokens_forever(tmp_path: Path) -> None:
    dead = RawAgent(tmp_path)
    seal(dead)
    dead.proc.kill()  # no goodbye: its writer row stays behind
    dead.proc.wait()
    alive = RawAgent(tmp_path)
    assert len(seal(alive)) == 16  # the dead pid is noticed and dropped
    assert alive.finish() == 0


def test_scopes_are_separate(tmp_path: Path) -> None:
    agent = RawAgent(tmp_path)
    token = seal(agent)
    assert agent.finish() == 0
    brick = RawAgent(tmp_path, scope="brick:vol:/b1")  # another source's daemon writes its own names
    assert brick.finish() == 0
    again = RawAgent(tmp_path)
    assert resume(again, token)
    assert again.finish() == 0

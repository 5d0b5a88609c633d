"""Data lanes: file data over extra channels, published by the main session, nothing partial ever seen."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from conftest import Sshd, run_cli
from rawagent import RawAgent, entry, oid
from rawagent import data_msgs as _data_msgs
from treecmp import build_fidelity_tree, diff, snapshot

from georep.errors import GeorepError
from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m
from georep.protocol.session import Role, Session
from georep.source.crawl import Crawler
from georep.source.identity import IdStore
from georep.transport.channel import JoinedChannel, PipeChannel, local_agent_argv
from georep.transport.sender import Lanes, Options, Sender
from georep.transport.ssh import LaneCalls, SshChannel, SshTarget, open_ssh

MIB = 1 << 20


def _tree(root: Path) -> None:
    build_fidelity_tree(root, files=300)
    for i in range(3):
        (root / f"big{i}.bin").write_bytes(os.urandom(3 * MIB + i))


async def _oneshot(chan_factory: object, src: Path, state: Path, lanes: Lanes,
                   hook: Callable[[Sender], None] | None = None) -> Sender:
    store = IdStore(state, os.fsencode(src))
    try:
        crawler = Crawler(os.fsencode(src), store)
        chan = await chan_factory()  # type: ignore[operator]
        sender = Sender(chan, Options(lanes=lanes))
        if hook is not None:
            hook(sender)
        try:
            await sender.handshake()
            await sender.run(iter(crawler), store.deferred_links, lambda: crawler.count)
        except BaseException:
            await sender.abort()
            raise
        return sender
    finally:
        store.close()


def _staging(dst: Path) -> list[str]:
    return os.listdir(dst / ".georep" / "staging")


@contextlib.contextmanager
def _ssh_through_proxy(sshd: Sshd, tmp_path: Path, dst: Path, rtt: float
                       ) -> Iterator[Callable[[], Awaitable[SshChannel]]]:
    """An opener of SSH channels to ``dst`` on ``sshd``, through the WAN proxy adding ``rtt`` seconds."""

    from bench.proxy import Link, WanProxy

    proxy = WanProxy(sshd.port, Link(rtt=rtt)).start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_key_pub}\n")
        target = SshTarget.parse(f"ssh://root@127.0.0.1:{proxy.port}{dst}")

        async def ssh() -> SshChannel:
            return await open_ssh(target, sshd.remote_command, known_hosts=known, identities=[sshd.identity])

        yield ssh
    finally:
        proxy.stop()


@pytest.mark.ssh
def test_lanes_carry_the_data_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    """At 40 ms one channel moves 2 MiB per round trip: once ready, the lanes take the big files."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    build_fidelity_tree(src, files=300)
    for i in range(3):
        (src / f"big{i}.bin").write_bytes(os.urandom(24 * MIB + i))
    with _ssh_through_proxy(sshd, tmp_path, dst, 0.040) as ssh:
        sender = asyncio.run(_oneshot(ssh, src, state, Lanes(3)))
    assert sender.summary.problems == []
    assert diff(snapshot(src), snapshot(dst)) == []
    assert len(sender.lanes) == 3
    carried = [lane.chan.bytes_written for lane in sender.lanes]
    assert all(lane.ready for lane in sender.lanes)
    assert all(n > 16 * 1024 for n in carried), carried  # every lane took a share
    # the main session carries data only until the lanes are ready (at most the first big file
    # here, plus the small ones); the lanes carried the rest
    assert sum(carried) > 48 * MIB, carried
    assert sender.chan.bytes_written < 27 * MIB, sender.chan.bytes_written
    assert _staging(dst) == []
    # the agent dialled each lane to the socket sshd held for the sender: no agent process per
    # lane, and neither that socket nor one of the agent's own is left behind
    assert sender.summary.lanes_kind == "dialled" and sender.summary.lanes == 3
    assert all(isinstance(lane.chan, JoinedChannel) for lane in sender.lanes)
    assert not [n for n in os.listdir(dst / ".georep") if n.startswith("lanes-")]
    assert sender._dial is not None
    assert not os.path.lexists(sender._dial[0].path)  # the socket sshd held: the agent removed its name


@pytest.mark.ssh
def test_every_joined_lane_is_opened_in_the_same_round_trip(sshd: Sshd, tmp_path: Path) -> None:
    """No lane waits for another to open: at 40 ms, all four channel opens leave before the first is answered.

    (Opening lane #1 alone to learn whether sshd forwards to the agent's socket cost the other
    lanes a round trip at the start of every run.)
    """

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    events: list[str] = []
    listened: list[LaneCalls] = []

    async def recording(ssh: Callable[[], Awaitable[SshChannel]]) -> SshChannel:
        chan = await ssh()
        join = chan.join

        async def recorded_join(path: bytes) -> JoinedChannel:
            events.append("asked")
            try:
                return await join(path)
            finally:
                events.append("answered")

        chan.join = recorded_join  # type: ignore[method-assign]
        call_back = chan.call_lanes_back

        async def kept() -> object:
            listened.append(await call_back())
            return listened[-1]

        chan.call_lanes_back = kept  # type: ignore[method-assign]
        return chan

    from conftest import running_sshd

    (tmp_path / "sshd").mkdir()
    with running_sshd(tmp_path / "sshd", "AllowStreamLocalForwarding local\n") as server, \
            _ssh_through_proxy(server, tmp_path, dst, 0.040) as ssh:
        sender = asyncio.run(_oneshot(lambda: recording(ssh), src, state, Lanes(4)))
    assert diff(snapshot(src), snapshot(dst)) == []
    assert (sender.summary.lanes_kind, sender.summary.lanes) == ("joined", 4)
    assert events == ["asked"] * 4 + ["answered"] * 4
    # sshd would not listen for the sender (no remote forwarding), so the agent could not dial
    assert "No such file or directory" in sender.dial_refused, sender.dial_refused
    # the refusal was taken as an answer: no task left with an exception nobody retrieved (its
    # report, written from the garbage collector, once broke an ast.parse running at that moment)
    (calls,) = listened
    assert calls._listening.done() and calls._listening.exception() is None


@pytest.mark.ssh
def test_dialled_lanes_come_with_the_agents_first_answer(sshd: Sshd, tmp_path: Path) -> None:
    """At 150 ms: the agent dials its lanes as it reads the Hello's flight, and sshd's channels come back with
    its HelloOk.  Lanes opened from this side come a round trip after it at the soonest: the HelloOk
    brings the agent's socket, then each channel's open is answered.
    """

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    seen: dict[str, float] = {}
    writes: list[bytes] = []

    def now() -> float:
        return asyncio.get_running_loop().time()

    async def timed(ssh: Callable[[], Awaitable[SshChannel]]) -> SshChannel:
        chan = await ssh()
        call_back = chan.call_lanes_back

        async def recorded() -> object:
            calls = await call_back()
            take = calls.next

            async def next_channel() -> JoinedChannel:
                got = await take()
                seen.setdefault("first lane", now())
                return got

            calls.next = next_channel  # type: ignore[method-assign]
            return calls

        chan.call_lanes_back = recorded  # type: ignore[method-assign]
        write = chan.write

        def first_write(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        chan.write = first_write  # type: ignore[method-assign]
        return chan

    class Stamped(asyncio.Event):
        def set(self) -> None:
            seen.setdefault("HelloOk", now())
            super().set()

    def stamp(sender: Sender) -> None:
        sender._ready = Stamped()

    with _ssh_through_proxy(sshd, tmp_path, dst, 0.150) as ssh:
        sender = asyncio.run(_oneshot(lambda: timed(ssh), src, state, Lanes(4), stamp))
    assert diff(snapshot(src), snapshot(dst)) == []
    assert (sender.summary.lanes_kind, sender.summary.lanes, sender.summary.warnings) == ("dialled", 4, [])
    assert abs(seen["first lane"] - seen["HelloOk"]) < 0.075, seen  # within half a round trip of it
    # DialLanes goes in the Hello's first write, ahead of every entry: the agent dials before it applies any
    first = Session(Role.AGENT).receive(writes[0])
    assert [type(msg) for msg in first[:2]] == [m.Hello, m.DialLanes], first[:3]
    assert sender._dial is not None
    assert not os.path.lexists(sender._dial[0].path)  # the socket sshd held: the agent removed its name


@pytest.mark.ssh
@pytest.mark.parametrize(("rtt_ms", "opened"), [(0, 0), (20, 2), (60, 2)])
def test_by_default_lanes_open_only_on_a_long_round_trip(sshd: Sshd, tmp_path: Path, rtt_ms: int,
                                                         opened: int) -> None:
    """Through a userspace proxy adding the delay: at 60 ms the connection's own time says so
    (six round trips), at 20 ms the Ping after the handshake does, at 0 ms neither."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    with _ssh_through_proxy(sshd, tmp_path, dst, rtt_ms / 1000) as ssh:
        sender = asyncio.run(_oneshot(ssh, src, state, Lanes(2, min_rtt=0.010)))
    assert sender.rtt is not None and sender.rtt >= rtt_ms / 1000
    assert len(sender.lanes) == opened
    assert diff(snapshot(src), snapshot(dst)) == []


def test_lanes_over_pipes_and_a_rerun_needs_none(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--lanes", "2", "--json")
    assert r.code == 0, r.stderr
    assert diff(snapshot(src), snapshot(dst)) == []
    again = run_cli("--oneshot", src, dst, "--state-dir", state, "--lanes", "2", "--json")
    assert again.code == 0, again.stderr
    assert again.summary["bytes_data"] == 0
    assert _staging(dst) == []


def test_with_lanes_a_changed_large_file_still_goes_as_a_delta(tmp_path: Path) -> None:
    """The basis is the main session's: BlockSums/DeltaBegin stay there, new files go through lanes."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    assert run_cli("--oneshot", src, dst, "--state-dir", state, "--lanes", "2").code == 0
    with open(src / "big0.bin", "ab") as f:
        f.write(os.urandom(MIB))
    (src / "new.bin").write_bytes(os.urandom(2 * MIB))
    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--lanes", "2", "--json")
    assert r.code == 0, r.stderr
    assert diff(snapshot(src), snapshot(dst)) == []
    assert r.summary["bytes_matched"] >= 3 * MIB  # big0 as it was: copied from its old copy
    assert r.summary["bytes_data"] <= 1 * MIB + 2 * MIB  # the appended MiB and new.bin
    assert _staging(dst) == []


def test_bad_lane_count_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    r = run_cli("--oneshot", tmp_path / "src", tmp_path / "dst", "--state-dir", tmp_path / "st", "--lanes", "99")
    assert r.code == 2, r.stderr
    assert "--lanes 99" in r.stderr and "hint:" in r.stderr


@pytest.mark.parametrize("join", [False, True], ids=["lane session killed", "joined lane cut"])
def test_a_lane_broken_mid_transfer_publishes_nothing_partial(tmp_path: Path, join: bool) -> None:
    """A lane session's agent process killed mid-file, or a lane into the agent's socket cut mid-file:
    the session fails, no prefix is ever published, and the next run completes."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(8 * MIB))

    async def breaking() -> None:
        chan = await PipeChannel.start(local_agent_argv(str(dst)))
        store = IdStore(state, os.fsencode(src))
        crawler = Crawler(os.fsencode(src), store)
        sender = Sender(chan, Options(lanes=Lanes(2, join=join)))
        await sender.handshake()
        while len(sender.lanes) < 2 or not all(lane.ready for lane in sender.lanes):  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # lanes take files once ready: here, from the first one
        assert sender.summary.lanes_kind == ("joined" if join else "sessions")

        async def break_a_lane() -> None:
            while sender.lanes[0].chan.bytes_written < 4 * MIB:  # noqa: ASYNC110 - polls a counter
                await asyncio.sleep(0.005)
            if join:
                sender.lanes[0].chan.kill()  # type: ignore[attr-defined]
            else:
                os.kill(sender.lanes[0].chan._proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]

        breaker = asyncio.get_running_loop().create_task(break_a_lane())
        try:
            with pytest.raises(GeorepError) as err:
                await sender.run(iter(crawler), store.deferred_links, lambda: crawler.count)
            assert "lane" in err.value.message
        finally:
            breaker.cancel()
            await sender.abort()
            store.close()

    asyncio.run(breaking())
    published = {p.name: p.read_bytes() for p in dst.iterdir() if p.name != ".georep"}
    assert len(published) < 12
    for name, data in published.items():  # what a reader sees is whole, never a prefix
        assert data == (src / name).read_bytes(), name
    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--lanes", "2", "--json")
    assert r.code == 0, r.stderr
    assert r.summary["lanes_kind"] == "joined"
    assert diff(snapshot(src), snapshot(dst)) == []
    assert _staging(dst) == []  # the broken lane's file was removed by the next agent
    assert not [n for n in os.listdir(dst / ".georep") if n.startswith("lanes-")]


@pytest.mark.ssh
def test_where_sshd_forwards_no_socket_lanes_are_sessions(tmp_path: Path) -> None:
    """``AllowStreamLocalForwarding no`` (or a ``restrict`` key): each lane is an agent of its own, no warning."""

    from conftest import running_sshd

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    (tmp_path / "sshd").mkdir()
    with running_sshd(tmp_path / "sshd", "AllowStreamLocalForwarding no\n") as server:
        r = run_cli("--oneshot", src, server.url(dst), "--state-dir", state, *server.ssh_args(), "--lanes", "2",
                    "--json")
        log = server.log.read_text(errors="replace")
    assert r.code == 0, r.stderr
    assert (r.summary["lanes"], r.summary["lanes_kind"], r.summary["warnings"]) == (2, "sessions", [])
    assert diff(snapshot(src), snapshot(dst)) == []
    assert "streamlocal" in log.lower()  # sshd did refuse the socket channel
    assert _staging(dst) == []
    assert not [n for n in os.listdir(dst / ".georep") if n.startswith("lanes-")]


@pytest.mark.ssh
def test_the_session_cap_bounds_only_lanes_that_must_be_sessions(sshd: Sshd, tmp_path: Path) -> None:
    """By default 16 joined lanes but only 8 sessions (sshd's MaxSessions): the cap applies to sessions alone."""

    from conftest import running_sshd

    async def run(server: Sshd, dst: Path, state: Path) -> Sender:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {server.host_key_pub}\n")
        target = SshTarget.parse(f"ssh://root@127.0.0.1:{server.port}{dst}")

        async def ssh() -> SshChannel:
            return await open_ssh(target, server.remote_command, known_hosts=known, identities=[server.identity])

        return await _oneshot(ssh, src, state, Lanes(4, sessions=2))

    src = tmp_path / "src"
    _tree(src)
    joined = asyncio.run(run(sshd, tmp_path / "dst-joined", tmp_path / "state-joined"))
    assert (joined.summary.lanes_kind, joined.summary.lanes, joined.summary.warnings) == ("dialled", 4, [])
    (tmp_path / "sshd").mkdir()
    with running_sshd(tmp_path / "sshd", "AllowStreamLocalForwarding no\n") as server:
        sessions = asyncio.run(run(server, tmp_path / "dst-sessions", tmp_path / "state-sessions"))
    assert (sessions.summary.lanes_kind, sessions.summary.lanes, sessions.summary.warnings) == ("sessions", 2, [])
    for dst in ("dst-joined", "dst-sessions"):
        assert diff(snapshot(src), snapshot(tmp_path / dst)) == []


# -- the agent's side, message by message ------------------------------------------------


def _next(agent: RawAgent) -> m.Message:
    while not agent.inbox:
        assert agent._pump(), "agent closed its output"
    return agent.inbox.pop(0)


def _lane_and_main(root: Path) -> tuple[RawAgent, RawAgent]:
    main = RawAgent(root)
    assert main.one(entry(1, oid(90), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED  # makes staging
    lane = RawAgent(root)
    lane.send(m.Lane())
    return main, lane


def test_a_staged_file_is_published_only_on_adopt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    main, lane = _lane_and_main(root)
    lane.send(*_data_msgs(1, b"hello"))
    staged = _next(lane)
    assert isinstance(staged, m.Staged) and staged.seq == 1
    assert not (root / "f").exists()  # staged, not published
    assert main.one(m.Adopt(1, staged.name, 5, 1_000_000_000)).status == m.DONE
    assert (root / "f").read_bytes() == b"hello"
    assert lane.finish() == 0 and main.finish() == 0
    assert _staging(root) == []


def test_a_lane_checks_the_digest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    main, lane = _lane_and_main(root)
    lane.send(*_data_msgs(1, b"hello", b"\0" * 16))
    r = _next(lane)
    assert isinstance(r, m.Results) and r.items[0].status == m.FAILED and "digest" in r.items[0].cause
    assert _staging(root) == []
    assert lane.finish() == 0 and main.finish() == 0
    assert not (root / "f").exists()


@pytest.mark.parametrize("name", [b"../../x", b"tmp-1-L2/../../f", b"index.db", b"tmp-1-2", b""])
def test_adopt_accepts_only_lane_file_names(tmp_path: Path, name: bytes) -> None:
    root = tmp_path / "root"
    main, lane = _lane_and_main(root)
    lane.finish()
    main.send(m.Adopt(1, name, 5, 0))
    err = _next(main)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError", err
    assert main.proc.wait(timeout=20) == 28
    assert not (root / "f").exists()


def test_adopt_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    main, lane = _lane_and_main(root)
    lane.finish()
    (tmp_path / "secret").write_text("hello")
    os.symlink(tmp_path / "secret", root / ".georep" / "staging" / "tmp-1-L7")
    r = main.one(m.Adopt(1, b"tmp-1-L7", 5, 0))
    assert r.status == m.FAILED
    assert not (root / "f").exists()
    assert main.finish() == 0


def test_a_lane_takes_only_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    main, lane = _lane_and_main(root)
    lane.send(entry(2, oid(91), ROOT_ID, b"g", Kind.FILE, 1))
    err = _next(lane)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError"
    assert lane.proc.wait(timeout=20) == 28
    assert main.finish() == 0
    assert not (root / "g").exists()


@pytest.mark.ssh
def test_lanes_the_secondary_refuses_are_a_warning_not_a_failure(tmp_path: Path) -> None:
    """sshd's MaxSessions caps the sessions of one connection: the run goes on with fewer lanes and says so.

    (Lanes are sessions only where sshd forwards no channel to the agent's socket.)
    """

    from conftest import running_sshd

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    (tmp_path / "sshd").mkdir()
    with running_sshd(tmp_path / "sshd", "MaxSessions 3\nAllowStreamLocalForwarding no\n") as server:
        r = run_cli("--oneshot", src, server.url(dst), "--state-dir", state, *server.ssh_args(), "--lanes", "4",
                    "--json")
    assert r.code == 0, r.stderr
    assert diff(snapshot(src), snapshot(dst)) == []
    warnings = r.summary["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, r.stderr
    assert warnings[0].startswith("2 of 4 data lanes could not be opened")
    assert "over 2 lane(s) and the main session" in warnings[0] and "MaxSessions" in warnings[0]
    assert "georep-sync: warning: 2 of 4 data lanes" in r.stderr
    assert _staging(dst) == []


def test_a_joined_lane_whose_bye_met_a_closed_socket_still_ends() -> None:
    """The agent exits (the main Bye overtook the lane's) before the lane's Bye is written.

    asyncio's stream reports the broken pipe on the next read; the lane's reader must take
    that as the end, or the lane's close waits 30 s and the run ends as an internal error
    (seen in CI once small files were written on the agent's worker thread, which made the
    agent exit sooner).  Real sockets: a socketpair whose far end is closed.
    """

    async def scenario() -> None:
        near, far = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=near)
        far.close()
        chan = JoinedChannel(reader, writer)
        for _ in range(50):  # write until the kernel reports the closed peer to asyncio
            chan.write(b"x" * 65536)
            with contextlib.suppress(ConnectionError):
                await chan.drain()
            if writer.is_closing():
                break
        assert await asyncio.wait_for(chan.read(), 5) == b""
        assert await asyncio.wait_for(chan.wait(), 5) is None

    asyncio.run(scenario())

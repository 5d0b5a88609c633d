"""Authentication in one round trip per key, against a real sshd that logs every request it gets.

sshd at LogLevel DEBUG1 logs one ``userauth-request ... method M`` line per authentication
request, and ``Postponed publickey`` when it answers a key query (PK_OK) instead of a
signature.  asyncssh on its own sends three requests for one good key (``none``, the query,
the signed request); `georep.transport.ssh` sends one.

What goes in which flight is read from asyncssh's own packet log (its debug level 3), through
the bench's WAN proxy so that nothing can arrive early by chance: the signed request leaves
with the service request, the session's open right behind it, and no IGNORE packet goes
ahead of each packet.  A control shows asyncssh alone doing neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CliResult, Sshd, SshdLog, run_cli, running_sshd

from georep.protocol.session import MAGIC, Role, Session
from georep.transport import ssh

asyncssh = ssh.asyncssh  # imported there, with its import-time warnings silenced
pytestmark = pytest.mark.ssh

REQUEST = re.compile(r"userauth-request for user \S+ service ssh-connection method (\S+)")


@pytest.fixture(scope="module")
def chatty_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd-debug"), log_level="DEBUG1") as server:
        yield server


class LogSlice(SshdLog):
    """What sshd logged since this was made, and the authentication requests in it."""

    def requests(self) -> list[str]:
        return REQUEST.findall(self.text())


def _oneshot(server: Sshd, tmp_path: Path, *identities: Path, env: dict[str, str]) -> CliResult:
    """A copy of a one-file tree to ``server``, offering ``identities`` (none: the defaults)."""

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(b"x" * 100)
    ids = [arg for i in identities for arg in ("--identity", str(i))]
    return run_cli("--oneshot", src, server.url(tmp_path / "dst"), "--known-hosts", server.known_hosts, *ids,
                   "--remote-command", server.remote_command, "--state-dir", tmp_path / "state", env=env)


def _copy(server: Sshd, tmp_path: Path, *identities: Path, env: dict[str, str]) -> None:
    r = _oneshot(server, tmp_path, *identities, env=env)
    assert r.code == 0, r.stderr
    assert (tmp_path / "dst" / "f").read_bytes() == b"x" * 100


def _stranger(tmp_path: Path) -> Path:
    """A key the server does not know."""

    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _no_agent(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SSH_AUTH_SOCK": "", "HOME": str(tmp_path)}


def test_the_short_way_is_in_place() -> None:
    assert ssh.SIGNED_FIRST, (
        "georep.transport.ssh could not put SignedFirst in asyncssh's table of auth methods: "
        f"asyncssh {asyncssh.__version__} changed its internals; adapt install_signed_first() or drop it"
    )


def test_one_signed_request_for_a_good_key(chatty_sshd: Sshd, tmp_path: Path) -> None:
    log = LogSlice(chatty_sshd)
    _copy(chatty_sshd, tmp_path, chatty_sshd.identity, env=_no_agent(tmp_path))
    assert log.requests() == ["publickey"], log.text()[-3000:]
    assert "Postponed publickey" not in log.text()
    assert "Accepted publickey" in log.text()


def test_control_asyncssh_alone_asks_three_times(chatty_sshd: Sshd) -> None:
    """The log check above can fail: a connection not made by `open_ssh` goes the long way."""

    log = LogSlice(chatty_sshd)

    async def connect() -> None:
        async with asyncssh.connect("127.0.0.1", chatty_sshd.port, username="root", config=None,
                                    known_hosts=str(chatty_sshd.known_hosts), agent_path=None,
                                    client_keys=[str(chatty_sshd.identity)]) as conn:
            result = await conn.run("true", check=True)
            assert result.exit_status == 0

    asyncio.run(connect())
    assert log.requests() == ["none", "publickey", "publickey"], log.text()[-3000:]
    assert "Postponed publickey" in log.text()


def test_a_refused_key_then_the_good_one(chatty_sshd: Sshd, tmp_path: Path) -> None:
    log = LogSlice(chatty_sshd)
    _copy(chatty_sshd, tmp_path, _stranger(tmp_path), chatty_sshd.identity, env=_no_agent(tmp_path))
    assert log.requests() == ["publickey", "publickey"], log.text()[-3000:]
    assert "Postponed publickey" not in log.text()
    assert log.text().count("Accepted publickey") == 1
    # the session's open went behind the second (last) key only, never behind the refused one
    assert "dispatch_protocol_error" not in log.text()


def test_no_acceptable_key_fails_as_before(chatty_sshd: Sshd, tmp_path: Path) -> None:
    stranger = _stranger(tmp_path)
    log = LogSlice(chatty_sshd)
    r = _oneshot(chatty_sshd, tmp_path, stranger, env=_no_agent(tmp_path))
    assert r.code == 21, r.stderr
    assert "refused every identity" in r.stderr
    # the stranger's signature, refused; the refusal lists publickey only: nothing else to try
    assert log.requests() == ["publickey"], log.text()[-3000:]
    assert not (tmp_path / "dst").exists()
    # the session's open that went behind the last key: answered UNIMPLEMENTED, and nothing was left waiting
    assert "dispatch_protocol_error: type 90" in log.text(), log.text()[-3000:]
    assert "never retrieved" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_without_any_key_none_is_still_asked(chatty_sshd: Sshd, tmp_path: Path) -> None:
    """No key at all: asyncssh's ``none`` request still goes, after the key search came up empty."""

    log = LogSlice(chatty_sshd)
    r = _oneshot(chatty_sshd, tmp_path, env=_no_agent(tmp_path))
    assert r.code == 21, r.stderr
    assert log.requests() == ["none"], log.text()[-3000:]


def test_a_key_held_by_ssh_agent_is_queried_before_it_signs(chatty_sshd: Sshd, tmp_path: Path) -> None:
    """ssh-agent may ask its user to confirm each signature: no signature for a key the server would refuse."""

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        env = {**_no_agent(tmp_path), "SSH_AUTH_SOCK": str(sock)}
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(chatty_sshd.identity)], env=env, check=True,
                       stderr=subprocess.DEVNULL)
        log = LogSlice(chatty_sshd)
        _copy(chatty_sshd, tmp_path, env=env)  # no --identity: the agent's keys
        assert log.requests() == ["publickey", "publickey"], log.text()[-3000:]
        assert "Postponed publickey" in log.text()
        assert "Accepted publickey" in log.text()
    finally:
        agent.terminate()
        agent.wait()


class PacketLog(logging.Handler):
    """asyncssh's own log of the packets a client sends and receives (its debug level 3), in order."""

    PACKET = re.compile(r"\] ((?:Sent|Received) MSG_\w+) \(")  # "[conn=1, pktid=3] Sent MSG_X (50), ..."

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.packets: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if m := self.PACKET.search(record.getMessage()):
            self.packets.append(m[1])

    def auth_order(self) -> list[str]:
        watched = ("Sent MSG_USERAUTH_REQUEST", "Received MSG_SERVICE_ACCEPT", "Sent MSG_CHANNEL_OPEN",
                   "Received MSG_USERAUTH_SUCCESS")
        return [p for p in self.packets if p in watched]

    @contextlib.contextmanager
    def watching(self) -> Iterator[PacketLog]:
        logger = logging.getLogger("asyncssh")
        level, debug_level = logger.level, asyncssh.logging.SSHLogger._debug_level
        asyncssh.set_debug_level(3)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            asyncssh.set_debug_level(debug_level)


@contextlib.contextmanager
def _long_link(server: Sshd, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The bench's WAN proxy in front of ``server``, 200 ms each round trip: (its port, a known_hosts for it)."""

    from bench.proxy import Link, WanProxy

    proxy = WanProxy(server.port, Link(rtt=0.2)).start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{proxy.port} {server.host_key_pub}\n")
        yield proxy.port, known
    finally:
        proxy.stop()


def _hello(server: Sshd, port: int, known: Path, root: Path) -> tuple[bytes, int | None]:
    """`open_ssh`'s agent session: Hello, the agent's first answer, the end of input; (answer, exit status)."""

    async def session() -> tuple[bytes, int | None]:
        target = ssh.SshTarget.parse(f"ssh://root@127.0.0.1:{port}{root}")
        chan = await ssh.open_ssh(target, server.remote_command, known_hosts=known, identities=[server.identity])
        chan.write(Session(Role.SENDER).initiate())
        await chan.drain()
        answer = await chan.read()
        await chan.close_input()
        return answer, await chan.wait()

    return asyncio.run(session())


def test_the_request_rides_with_the_service_request_and_the_open_behind_it(chatty_sshd: Sshd, tmp_path: Path
                                                                           ) -> None:
    """The signed request leaves before SERVICE_ACCEPT is back, the session's open before the success: two
    round trips less."""

    assert ssh.USERAUTH_IN_FLIGHT and ssh.SESSION_IN_FLIGHT, (
        f"asyncssh {asyncssh.__version__} no longer has what UserauthInFlight and SessionInFlight work through"
    )
    log = LogSlice(chatty_sshd)
    with _long_link(chatty_sshd, tmp_path) as (port, known), PacketLog().watching() as packets:
        answer, status = _hello(chatty_sshd, port, known, tmp_path / "dst")
    assert packets.auth_order() == ["Sent MSG_USERAUTH_REQUEST", "Sent MSG_CHANNEL_OPEN", "Received MSG_SERVICE_ACCEPT",
                                    "Received MSG_USERAUTH_SUCCESS"], packets.packets
    assert answer.startswith(MAGIC), answer[:100]  # the agent ran in that session and answered Hello
    assert status == 0
    assert log.requests() == ["publickey"], log.text()[-3000:]
    assert "Accepted publickey" in log.text()
    assert "dispatch_protocol_error" not in log.text()  # sshd took the open as the session's, not as out of turn


def test_no_ignore_packet_goes_ahead_of_each_packet(chatty_sshd: Sshd, tmp_path: Path) -> None:
    """asyncssh sends an empty IGNORE ahead of every packet it encrypts (see the control below); ours do not."""

    with PacketLog().watching() as packets:
        answer, status = _hello(chatty_sshd, chatty_sshd.port, chatty_sshd.known_hosts, tmp_path / "dst")
    assert answer.startswith(MAGIC) and status == 0, answer[:100]
    sent = [p for p in packets.packets if p.startswith("Sent ")]
    assert "Sent MSG_CHANNEL_DATA" in sent and "Sent MSG_CHANNEL_OPEN" in sent, sent
    assert "Sent MSG_IGNORE" not in sent, sent


def test_control_asyncssh_alone_waits_and_sends_ignores(chatty_sshd: Sshd, tmp_path: Path) -> None:
    """The checks above can fail: a connection not made by `open_ssh` waits for the accept and the success, and
    sends IGNOREs."""

    async def connect(port: int, known: Path) -> None:
        async with asyncssh.connect("127.0.0.1", port, username="root", config=None, known_hosts=str(known),
                                    agent_path=None, client_keys=[str(chatty_sshd.identity)]) as conn:
            result = await conn.run("true", check=True)
            assert result.exit_status == 0

    with _long_link(chatty_sshd, tmp_path) as (port, known), PacketLog().watching() as packets:
        asyncio.run(connect(port, known))
    order = packets.auth_order()
    assert order.index("Received MSG_SERVICE_ACCEPT") < order.index("Sent MSG_USERAUTH_REQUEST"), order
    assert order.index("Received MSG_USERAUTH_SUCCESS") < order.index("Sent MSG_CHANNEL_OPEN"), order
    sent = [p for p in packets.packets if p.startswith("Sent ")]
    assert sent.count("Sent MSG_IGNORE") >= 3, sent  # one ahead of the request, the open, the exec...


def test_ciphers_offered_are_not_cbc() -> None:
    """`our_send_packet` keeps IGNOREs for CBC; none of the ciphers offered is one."""

    assert ssh.CIPHERS and not any("cbc" in c for c in ssh.CIPHERS)

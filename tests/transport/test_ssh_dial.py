"""The TCP connection dialled early (georep.transport.dial), against a real sshd.

A copy dials its ssh:// secondary on a thread and sends its SSH version line before it imports
asyncssh; `open_ssh` hands that socket to asyncssh, which must not send a second version line.
sshd at LogLevel DEBUG1 logs each connection and the client's version line.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sshd, SshdLog, run_cli, running_sshd

from georep.cli import main
from georep.errors import SshUnreachable
from georep.protocol.session import MAGIC, Role, Session
from georep.transport import dial, ssh

asyncssh = ssh.asyncssh
pytestmark = pytest.mark.ssh

OUR_VERSION = f"remote software version {dial.CLIENT_VERSION}"


@pytest.fixture(scope="module")
def chatty_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd-dial"), log_level="DEBUG1") as server:
        yield server


@pytest.fixture(autouse=True)
def no_early_dial_left() -> Iterator[None]:
    yield
    dial.take_early("", 0, 5.0)  # a test that failed midway leaves nothing for the next


def _url(server: Sshd, root: Path, port: int | None = None) -> str:
    return f"ssh://root@127.0.0.1:{port or server.port}{root}"


def _hello(server: Sshd, root: Path) -> tuple[bytes, int | None, str]:
    """`open_ssh`'s agent session: Hello and the agent's answer; (answer, exit status, client version)."""

    async def session() -> tuple[bytes, int | None, str]:
        target = dial.SshTarget.parse(_url(server, root))
        chan = await ssh.open_ssh(target, server.remote_command, known_hosts=server.known_hosts,
                                  identities=[server.identity])
        version = chan._conn.get_extra_info("client_version")
        chan.write(Session(Role.SENDER).initiate())
        await chan.drain()
        answer = await chan.read()
        await chan.close_input()
        return answer, await chan.wait(), version

    return asyncio.run(session())


def test_the_version_line_is_printable_ascii_without_space_or_minus() -> None:
    """RFC 4253 section 4.2 on the software version; asyncssh checks only printable ASCII."""

    assert b"SSH-2.0-" + dial.CLIENT_VERSION.encode() + b"\r\n" == dial.VERSION_LINE
    assert all(0x21 <= b <= 0x7E and b != ord("-") for b in dial.CLIENT_VERSION.encode())


@pytest.mark.parametrize(("argv", "expected"), [
    (["--oneshot", "/src", "ssh://u@host:2222/dst"], ("u", "host", 2222, "/dst")),
    (["--oneshot", "--state-dir", "/s", "/src", "ssh://host/dst", "--json"], (None, "host", 22, "/dst")),
    (["--oneshot", "/src", "/local/dst"], None),  # a local secondary: nothing to dial
    (["--oneshot", "ssh://a/x", "ssh://b/y"], None),  # which one is the secondary is argparse's to say
    (["--oneshot", "/src", "ssh://host/"], None),  # not a valid secondary: argparse's error, nothing dialled
    (["--oneshot", "/src", "ssh://host/dst", "--help"], None),
])
def test_early_target_is_the_one_ssh_secondary(argv: list[str], expected: tuple[str | None, str, int, str] | None
                                               ) -> None:
    target = dial.early_target(argv)
    if expected is None:
        assert target is None
    else:
        assert target is not None
        user, host, port, path = expected
        assert (target.host, target.port, target.path) == (host, port, path)
        assert user is None or target.user == user


def test_picking_the_copy_command_dials_its_secondary(chatty_sshd: Sshd, tmp_path: Path) -> None:
    """`georep.cli.main` starts the dial as it picks the command, before the copy's module is imported."""

    log = SshdLog(chatty_sshd)
    main._dispatch(["--oneshot", str(tmp_path), _url(chatty_sshd, tmp_path / "dst")])
    log.wait_for(OUR_VERSION)
    sock = dial.take_early("127.0.0.1", chatty_sshd.port, 5.0)
    assert sock is not None
    sock.close()


def test_other_commands_dial_nothing(chatty_sshd: Sshd, tmp_path: Path) -> None:
    main._dispatch(["daemon", str(tmp_path), _url(chatty_sshd, tmp_path / "dst")])
    main._dispatch(["agent", str(tmp_path)])
    assert dial.take_early("127.0.0.1", chatty_sshd.port, 1.0) is None


def test_the_line_leaves_before_asyncssh_is_asked_and_asyncssh_sends_no_second(chatty_sshd: Sshd, tmp_path: Path
                                                                                ) -> None:
    log = SshdLog(chatty_sshd)
    dial.start_early(["--oneshot", str(tmp_path), _url(chatty_sshd, tmp_path / "dst")])
    log.wait_for(OUR_VERSION)  # sshd has our version line: nothing of asyncssh has run for this connection
    answer, status, version = _hello(chatty_sshd, tmp_path / "dst")
    assert answer.startswith(MAGIC), answer[:100]  # the agent ran and answered Hello
    assert status == 0
    assert version == dial.VERSION_LINE.decode().strip()
    text = log.text()
    assert text.count("Connection from") == 1, text[-3000:]  # the dialled one carried the session
    assert text.count(OUR_VERSION) == 1, text[-3000:]
    assert "Accepted publickey" in text
    assert "Bad packet length" not in text and "kex_exchange_identification" not in text, text[-3000:]


def test_control_asyncssh_on_that_socket_alone_sends_its_own_line_and_fails(chatty_sshd: Sshd, tmp_path: Path
                                                                             ) -> None:
    """Without `version_sent_ahead` the server gets a second version line where a packet belongs."""

    async def connect(sock: socket.socket) -> None:
        async with asyncssh.connect("127.0.0.1", chatty_sshd.port, sock=sock, username="root", config=None,
                                    known_hosts=str(chatty_sshd.known_hosts), agent_path=None,
                                    client_keys=[str(chatty_sshd.identity)], connect_timeout=10) as conn:
            await conn.run("true", check=True)

    dial.start_early(["--oneshot", str(tmp_path), _url(chatty_sshd, tmp_path / "dst")])
    sock = dial.take_early("127.0.0.1", chatty_sshd.port, 5.0)
    assert sock is not None
    with pytest.raises((asyncssh.Error, OSError)):
        asyncio.run(connect(sock))


def test_a_dial_that_fails_leaves_the_error_to_asyncssh(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ssh://root@127.0.0.1:{port}{tmp_path}/dst"
    dial.start_early(["--oneshot", str(tmp_path), url])
    with pytest.raises(SshUnreachable, match="cannot connect to"):
        asyncio.run(ssh.open_ssh(dial.SshTarget.parse(url), "georep-sync", known_hosts=tmp_path / "kh",
                                 connect_timeout=5))


def test_a_socket_to_another_address_is_closed_not_used(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        dial.start_early(["--oneshot", str(tmp_path), f"ssh://root@127.0.0.1:{port}/dst"])
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(5)
            assert peer.recv(100) == dial.VERSION_LINE
            assert dial.take_early("127.0.0.1", port + 1, 5.0) is None  # not where the run connects
            assert peer.recv(100) == b""  # closed


def test_a_copy_over_ssh_connects_once_with_our_line(chatty_sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    log = SshdLog(chatty_sshd)
    r = run_cli("--oneshot", src, chatty_sshd.url(tmp_path / "dst"), *chatty_sshd.ssh_args(),
                "--state-dir", tmp_path / "state")
    assert r.code == 0, r.stderr
    assert (tmp_path / "dst" / "f").read_bytes() == b"x" * 1000
    text = log.text()
    assert text.count("Connection from") == 1 and text.count(OUR_VERSION) == 1, text[-3000:]

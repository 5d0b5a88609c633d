"""Lanes that join the agent through its socket: data applied by the main session, strangers refused."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import time
from pathlib import Path

import pytest
from rawagent import RawAgent, entry, oid
from rawagent import data_msgs as _data_msgs

from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m
from georep.protocol.session import MAGIC, Role, Session, State


class LaneClient:
    """A data lane speaking straight to the agent's socket (what sshd forwards a lane's channel to)."""

    def __init__(self, path: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.session = Session(Role.SENDER)
        self.inbox: list[m.Message] = []

    def send(self, *msgs: m.Message, hello: bool = False) -> None:
        head = self.session.initiate() if hello else b""
        self.sock.sendall(head + b"".join(self.session.send(x) for x in msgs))

    def join(self, token: bytes) -> None:
        self.send(m.JoinLane(token), hello=True)

    def until_closed(self) -> bool:
        """Read until the agent closes the connection; whether it answered HelloOk on the way."""

        while True:
            ready, _, _ = select.select([self.sock], [], [], 20)
            assert ready, "the agent neither answered nor closed within 20 s"
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return self.session.state is not State.MAGIC
            self.inbox.extend(self.session.receive(data))


def _main_with_socket(root: Path, size: int = 5) -> tuple[RawAgent, m.LaneSocket]:
    main = RawAgent(root)
    assert main.one(entry(1, oid(90), ROOT_ID, b"f", Kind.FILE, size)).status == m.NEED
    main.send(m.OpenLanes())
    while not main.inbox:
        assert main._pump(), "agent closed its output"
    offer = main.inbox.pop(0)
    assert isinstance(offer, m.LaneSocket), offer
    return main, offer


def _sockets(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / ".georep") if n.startswith("lanes-"))


@pytest.mark.parametrize("one_write", [False, True], ids=["joined first", "all in one write"])
def test_data_through_a_joined_lane_is_published_and_answered_on_the_main_session(tmp_path: Path,
                                                                                 one_write: bool) -> None:
    """Also when Hello, JoinLane, the data and Bye reach the agent in one read (Bye then closes the
    lane's session before its Hello is answered: that is no version mismatch)."""

    root = tmp_path / "root"
    main, offer = _main_with_socket(root)
    assert len(offer.path) < 108 and len(offer.token) == 32
    (name,) = _sockets(root)
    st = os.lstat(root / ".georep" / name)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 == 0  # its owner's alone
    assert stat.S_IMODE(os.stat(root / ".georep").st_mode) == 0o700
    lane = LaneClient(offer.path)
    if one_write:
        lane.send(m.JoinLane(offer.token), *_data_msgs(1, b"hello"), m.Bye(), hello=True)
    else:
        lane.join(offer.token)
        lane.send(*_data_msgs(1, b"hello"), m.Bye())
    (r,) = main.results(1)  # the lane's item is answered where it was asked for
    assert (r.seq, r.status) == (1, m.DONE)
    assert (root / "f").read_bytes() == b"hello"
    assert lane.until_closed()  # Bye: the agent let the lane go
    assert main.finish() == 0
    assert _sockets(root) == []  # removed with the session
    assert os.listdir(root / ".georep" / "staging") == []


def test_a_socket_for_a_root_longer_than_sun_path(tmp_path: Path) -> None:
    """sun_path holds 108 bytes: the socket is reached through the agent's own descriptor."""

    root = tmp_path / ("r" * 120) / ("s" * 120)
    root.parent.mkdir()
    main, offer = _main_with_socket(root)
    assert len(os.fsencode(root)) > 240 and len(offer.path) < 108
    lane = LaneClient(offer.path)
    lane.join(offer.token)
    lane.send(*_data_msgs(1, b"hello"))
    assert main.results(1)[0].status == m.DONE
    assert (root / "f").read_bytes() == b"hello"
    assert main.finish() == 0


@pytest.mark.parametrize("stranger", ["wrong token", "data before joining", "not the protocol", "silent",
                                      "hello and gone"])
def test_a_stranger_on_the_socket_is_turned_away_and_the_session_goes_on(tmp_path: Path, stranger: str) -> None:
    root = tmp_path / "root"
    main, offer = _main_with_socket(root)
    other = LaneClient(offer.path)
    if stranger == "wrong token":
        # one write: sent after the refusal, the data would meet a closed socket (EPIPE, seen in CI)
        other.send(m.JoinLane(bytes(32)), *_data_msgs(1, b"HACKED"), hello=True)
    elif stranger == "data before joining":
        other.send(*_data_msgs(1, b"HACKED"), hello=True)
    elif stranger == "not the protocol":
        other.sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    elif stranger == "hello and gone":
        other.sock.settimeout(20)
        assert other.sock.recv(len(MAGIC)) == MAGIC  # accepted
        os.kill(main.proc.pid, signal.SIGSTOP)  # so the agent answers Hello only once the stranger is gone
        other.send(hello=True)
        other.sock.close()
        os.kill(main.proc.pid, signal.SIGCONT)
    if stranger not in ("silent", "hello and gone"):
        other.until_closed()
        errors = [x for x in other.inbox if isinstance(x, m.ErrorMsg)]
        assert stranger == "not the protocol" or (errors and errors[0].error == "ProtocolError"), other.inbox
    assert not (root / "f").exists()
    # the session is untouched: the item still takes its data, from the sender that asked for it
    main.send(*_data_msgs(1, b"hello"))
    assert main.results(1)[0].status == m.DONE
    assert (root / "f").read_bytes() == b"hello"
    assert main.finish() == 0
    assert _sockets(root) == []


def test_a_joined_lane_carries_file_data_only(tmp_path: Path) -> None:
    """A lane that presented the token is the session's own sender: breaking the rules ends the session."""

    root = tmp_path / "root"
    main, offer = _main_with_socket(root)
    lane = LaneClient(offer.path)
    lane.join(offer.token)
    lane.send(entry(2, oid(91), ROOT_ID, b"g", Kind.FILE, 1))
    while not main.inbox:
        assert main._pump(), "agent closed its output"
    err = main.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ProtocolError" and "data lane" in err.message, err
    assert main.proc.wait(timeout=20) == 28
    assert not (root / "g").exists()
    assert _sockets(root) == []


def test_a_socket_left_by_a_killed_agent_is_removed_by_the_next_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, _ = _main_with_socket(root)
    left = _sockets(root)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=20)
    assert _sockets(root) == left  # a killed agent cannot clean up
    second, offer = _main_with_socket(root)
    assert _sockets(root) == [f"lanes-{second.proc.pid}.sock"]
    assert offer.path.endswith(f"lanes-{second.proc.pid}.sock".encode())
    assert second.finish() == 0
    assert _sockets(root) == []


def test_magic_opens_the_agents_side_of_a_lane(tmp_path: Path) -> None:
    root = tmp_path / "root"
    main, offer = _main_with_socket(root)
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(offer.path)
    raw.settimeout(20)
    assert raw.recv(len(MAGIC)) == MAGIC
    raw.close()
    assert main.finish() == 0


@pytest.mark.parametrize("mirror", [False, True])
def test_finish_ahead_of_a_lanes_data_is_held_until_it_arrived(tmp_path: Path, mirror: bool) -> None:
    """The sender sends Finish once its lanes wrote their files, not once they were answered: the agent
    answers the lane's items, then Finished, and a mirror sweep never takes a name whose data was late."""

    root = tmp_path / "root"
    main, offer = _main_with_socket(root)
    lane = LaneClient(offer.path)
    lane.join(offer.token)
    main.send(m.Finish(mirror, 1, False))
    ready, _, _ = select.select([main.proc.stdout], [], [], 0.5)
    assert not ready, "the agent answered Finish before the lane's data came"
    lane.send(*_data_msgs(1, b"hello"), m.Bye())
    (r,) = main.results(1)
    assert (r.seq, r.status) == (1, m.DONE)
    while not main.inbox:
        assert main._pump(), "agent closed its output"
    assert isinstance(main.inbox.pop(0), m.Finished)
    assert (root / "f").read_bytes() == b"hello"
    assert main.finish() == 0


@pytest.mark.parametrize("stranger", [False, True], ids=["alone", "a silent stranger connected"])
def test_finish_with_data_owed_and_every_lane_gone_fails_the_session(tmp_path: Path, stranger: bool) -> None:
    """Only a lane that joined can bring the data Finish waits for: a local process that connects to
    the socket and says nothing does not count, so the session still fails once the lanes are gone."""

    root = tmp_path / "root"
    main, offer = _main_with_socket(root, size=1 << 20)
    silent = socket.socket(socket.AF_UNIX)
    if stranger:
        silent.connect(offer.path)  # and stays silent
    lane = LaneClient(offer.path)
    lane.join(offer.token)
    lane.send(m.DataBegin(1, 1 << 20), m.DataChunk(1, 0, b"x" * 1000))  # then the lane breaks
    lane.sock.close()
    main.send(m.Finish(False, 1, False))
    while not main.inbox:
        assert main._pump(), "agent closed its output"
    err = main.inbox.pop(0)
    assert isinstance(err, m.ErrorMsg) and err.error == "ConnectionLost", err
    assert "1 files" in err.message
    assert main.proc.wait(timeout=20) != 0
    assert not (root / "f").exists()
    assert os.listdir(root / ".georep" / "staging") == []
    silent.close()


# -- lanes the agent dials back (DialLanes) ------------------------------------------------


def _dialled_path() -> bytes:
    return b"/tmp/georep-lanes-" + os.urandom(16).hex().encode() + b".sock"


def _listener(path: bytes) -> socket.socket:
    """What sshd holds for the sender (streamlocal-forward): a socket of this user's alone."""

    old = os.umask(0o177)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


def _dial(main: RawAgent, path: bytes, count: int, token: bytes) -> m.LanesDialled:
    main.send(m.DialLanes(path, count, token))
    while not main.inbox:
        assert main._pump(), "agent closed its output"
    answer = main.inbox.pop(0)
    assert isinstance(answer, m.LanesDialled), answer
    return answer


class DialledLane:
    """The sender's end of a lane the agent dialled: what sshd's channel back to the sender carries."""

    def __init__(self, sock: socket.socket) -> None:
        self.client = LaneClient.__new__(LaneClient)
        self.client.sock, self.client.session, self.client.inbox = sock, Session(Role.SENDER), []


def test_dialled_lanes_carry_data_like_joined_ones_and_the_socket_goes(tmp_path: Path) -> None:
    root, path, token = tmp_path / "root", _dialled_path(), os.urandom(32)
    main = RawAgent(root)
    assert main.one(entry(1, oid(90), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
    listener = _listener(path)
    try:
        answer = _dial(main, path, 3, token)
        assert (answer.count, answer.why) == (3, "")
        assert not os.path.exists(path)  # removed once the lanes were connected
        lanes = [DialledLane(listener.accept()[0]).client for _ in range(3)]
        lanes[1].join(token)
        lanes[1].send(*_data_msgs(1, b"hello"), m.Bye())
        (r,) = main.results(1)
        assert (r.seq, r.status) == (1, m.DONE)
        assert (root / "f").read_bytes() == b"hello"
        lanes[2].join(os.urandom(32))  # not the session's token: turned away, the session goes on
        assert lanes[2].until_closed() and isinstance(lanes[2].inbox[-1], m.ErrorMsg)
        assert main.finish() == 0
        assert _sockets(root) == []  # it never listened itself
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.mark.parametrize("case", ["no socket", "not the name", "others may connect", "another user's file",
                                  "another user's listener", "not a socket"])
def test_the_agent_dials_only_a_socket_of_its_own_users(tmp_path: Path, case: str) -> None:
    """Anything but sshd's socket for this session is left alone: nothing dialled, the reason said, no file removed."""

    root, path, token = tmp_path / "root", _dialled_path(), os.urandom(32)
    main = RawAgent(root)
    assert main.one(entry(1, oid(90), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
    listener: socket.socket | None = None
    child = 0
    dialled = path
    try:
        if case == "not the name":
            dialled = b"/tmp/lanes-" + os.urandom(16).hex().encode() + b".sock"
            listener = _listener(dialled)
        elif case == "others may connect":
            listener = _listener(path)
            os.chmod(path, 0o666)
        elif case == "another user's file":
            listener = _listener(path)
            os.chown(path, 65534, 65534)
        elif case == "another user's listener":
            # a listener running as nobody, its file then given to this user: only the peer's credentials tell
            r, w = os.pipe()
            child = os.fork()
            if child == 0:
                os.setgid(65534)
                os.setuid(65534)
                own = _listener(path)
                os.write(w, b"x")
                signal.pause()
                del own
                os._exit(0)
            assert os.read(r, 1) == b"x"
            os.chown(path, os.geteuid(), os.getegid())
        elif case == "not a socket":
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
        answer = _dial(main, dialled, 2, token)
        assert answer.count == 0 and answer.why, answer
        if case != "no socket":
            assert os.path.lexists(dialled)  # not its own: left where it was
        assert main.finish() == 0
    finally:
        if listener is not None:
            listener.close()
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        for p in (path, dialled):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def test_a_dialled_socket_no_agent_reached_is_removed_by_a_later_one(tmp_path: Path) -> None:
    """sshd never removes the socket it held for a sender: one whose agent never dialled (it failed first)
    stays in /tmp until a later agent of the same user dials.  Only old ones of this user's go, unconnected."""

    old, fresh, others = _dialled_path(), _dialled_path(), _dialled_path()
    listeners = [_listener(p) for p in (old, fresh, others)]
    try:
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        os.utime(others, (time.time() - 3600, time.time() - 3600))
        os.chown(others, 65534, 65534)
        main = RawAgent(tmp_path / "root")
        assert main.one(entry(1, oid(90), ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
        assert _dial(main, _dialled_path(), 1, os.urandom(32)).count == 0  # nothing there: no lane
        assert not os.path.lexists(old)
        assert os.path.lexists(fresh) and os.path.lexists(others)
        ready, _, _ = select.select([listeners[0]], [], [], 0)
        assert not ready  # the old one was removed, never connected to
        assert main.finish() == 0
    finally:
        for sock in listeners:
            sock.close()
        for p in (old, fresh, others):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

"""Data lanes that join the agent itself: one Unix socket, no agent process per lane.

Why
---
A lane session (`georep.apply.lane`) is one more agent process per SSH channel, which
stages files for the main agent to publish on `Adopt`.  On two cores that is dear: at
150 ms on the bench's small dataset (20,000 files), eight lane agents spent 2.2 s of CPU
and the main agent 1.4 s adopting what they staged, where one agent receiving everything
itself spends 2.0 s.  A lane needs a channel of its own (its own SSH window), not a
process: OpenSSH forwards a channel to a Unix socket (``direct-streamlocal``, allowed
unless sshd says ``AllowStreamLocalForwarding no`` or ``DisableForwarding yes``).

How
---
On `OpenLanes` the agent listens on a socket in its state directory and answers
`LaneSocket` with its path and a random token.  A connection that says Hello and
`JoinLane` with that token becomes a lane of this session: its data messages go to the
main session's `Applier`, so a file that came through a lane is written to staging,
checked against its digest and published exactly as if it had come on the main session,
and its Result goes out on the main session.  Anything else is told `ProtocolError` and
dropped, never fatal to the session: whoever can reach the socket does not thereby own
it.  A joined lane that breaks the protocol is the session's own sender: that is fatal.

Where the socket lives: ``ROOT/.georep/lanes-<pid>.sock``, bound through
``/proc/self/fd/<state fd>/``, the agent's own descriptor of its state directory (0700),
so no symlink is followed on the way and the path fits sun_path's 108 bytes however long
the root is.  Lanes connect to ``/proc/<pid>/fd/<state fd>/lanes-<pid>.sock``, which only
the agent's user can resolve.  The socket is removed when the session ends; one left by
an agent that was killed is removed by the next agent that opens a hub on the root.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
import select
import socket
import stat
import struct
import time
from dataclasses import dataclass, field

from georep.apply.lane import alive
from georep.errors import ProtocolError
from georep.protocol import messages as m
from georep.protocol.session import Role, Session

#: What a joined lane may send after JoinLane (then Bye): file data for items the main session asked for.
LANE_DATA: tuple[type[m.Message], ...] = (m.DataBegin, m.DataChunk, m.DataEnd, m.Blobs, m.DataAbort)
#: The hub's socket names; the pid is the agent's.
SOCKET_NAME = re.compile(rb"lanes-([0-9]{1,10})\.sock")
#: The names of sockets the agent dials lanes to (`LaneHub.dial`): `georep.transport.ssh.LaneCalls`'s.
DIALLED_PATH = re.compile(rb"/tmp/georep-lanes-[0-9a-f]{32}\.sock")
DIALLED_DIR = b"/tmp"
#: A dialled lanes' socket older than this is no live session's (`remove_stale_dialled`).
STALE_DIALLED_S = 600.0
#: How long one lane's connect to sshd's socket may take.
DIAL_TIMEOUT_S = 5.0
#: Bytes read from one lane at a time (a DataChunk is at most 1 MiB).
READ_SIZE = 1 << 20


@dataclass
class _Conn:
    sock: socket.socket
    token: bytes  # what it must present in its JoinLane
    session: Session = field(default_factory=lambda: Session(Role.AGENT))
    joined: bool = False


class LaneHub:
    """The lanes of one session: those that joined through its socket, and those it dialled back."""

    def __init__(self, state_fd: int) -> None:
        self._state_fd = state_fd
        self._name = f"lanes-{os.getpid()}.sock"
        #: what lanes that join through this agent's socket present (`listen`)
        self.token = secrets.token_bytes(32)
        #: what a lane connects to (through the sender's SSH connection or directly); empty until `listen`
        self.path = b""
        self._listener: socket.socket | None = None
        self._poll = select.poll()
        self._conns: dict[int, _Conn] = {}
        #: data messages read from joined lanes, for the caller to apply
        self.inbox: list[m.Message] = []

    def listen(self) -> None:
        """Open the socket lanes join through (`OpenLanes`); raises OSError if it cannot be had."""

        if self._listener is not None:
            return
        remove_stale_sockets(self._state_fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old_umask = os.umask(0o077)  # the socket is its owner's alone from the start, never briefly wider
            try:
                listener.bind(f"/proc/self/fd/{self._state_fd}/{self._name}")
            finally:
                os.umask(old_umask)
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.path = f"/proc/{os.getpid()}/fd/{self._state_fd}/{self._name}".encode()
        self._poll.register(listener.fileno(), select.POLLIN)

    def dial(self, path: bytes, count: int, token: bytes) -> tuple[int, str]:
        """Connect ``count`` lanes to the sender's socket at ``path`` (`DialLanes`): how many, and why not all.

        The socket must be sshd's for this session: named as `georep.transport.ssh.LaneCalls`
        names it, a socket of this agent's own user that no one else may connect to, with
        a peer of the same user.  Anything else is left alone: the sender opens its lanes
        the other way.  The name is removed once the lanes are connected (sshd listens on,
        but no one else can reach it); each lane then presents ``token`` in its JoinLane.
        """

        remove_stale_dialled()
        if DIALLED_PATH.fullmatch(path) is None:
            return 0, f"{path!r} is not a lane socket's name"
        try:
            st = os.lstat(path)
        except OSError as exc:
            return 0, f"{os.fsdecode(path)}: {exc.strerror}"
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return 0, f"{os.fsdecode(path)} is not a socket of this user's alone"
        dialled, why = 0, ""
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(DIAL_TIMEOUT_S)
                sock.connect(path)
                _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                    struct.calcsize("3i")))
                if uid != os.geteuid():
                    raise OSError(f"its listener runs as uid {uid}, not this agent's")
                sock.setblocking(True)
                conn = _Conn(sock, token=token)
                sock.sendall(conn.session.initiate())  # the agent's side of the stream opens with MAGIC
            except OSError as exc:
                sock.close()
                why = f"{os.fsdecode(path)}: {exc.strerror or exc}"
                break
            self._conns[sock.fileno()] = conn
            self._poll.register(sock.fileno(), select.POLLIN)
            dialled += 1
        if dialled:  # its peer answered as this user: sshd's socket, no one else's to keep
            with contextlib.suppress(OSError):
                os.unlink(path)
        return dialled, why

    def wait(self, main_fd: int | None, timeout: float | None = None) -> bool:
        """Serve the lanes until ``main_fd`` is readable (True), lane data came, or ``timeout`` passed.

        ``timeout`` in seconds; None waits as long as it takes.  ``main_fd`` None: the lanes
        alone.  Data messages from joined lanes are left in `inbox`.  Raises `ProtocolError`
        if a joined lane breaks the protocol.
        """

        if main_fd is not None:
            self._poll.register(main_fd, select.POLLIN)
        try:
            events = self._poll.poll(None if timeout is None else int(timeout * 1000))
        finally:
            if main_fd is not None:
                self._poll.unregister(main_fd)
        main_ready = False
        for fd, _ev in events:
            if fd == main_fd:
                main_ready = True
            elif self._listener is not None and fd == self._listener.fileno():
                self._accept()
            elif fd in self._conns:
                self._read(self._conns[fd])
        return main_ready

    @property
    def joined(self) -> int:
        """Connections that presented this session's token: the sender's own lanes."""

        return sum(1 for conn in self._conns.values() if conn.joined)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self._name, dir_fd=self._state_fd)

    # -- internals -------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, for one: the lane's channel closes, the sender goes on without it
            sock.setblocking(True)
            conn = _Conn(sock, token=self.token)
            try:
                sock.sendall(conn.session.initiate())  # the agent's side of the stream opens with MAGIC too
            except OSError:
                sock.close()
                continue
            self._conns[sock.fileno()] = conn
            self._poll.register(sock.fileno(), select.POLLIN)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            # a lane ends with Bye; one cut short leaves its item unanswered, and the sender,
            # whose lane broke, fails the session (what it staged goes with the session's end)
            self._drop(conn)
            return
        try:
            msgs = conn.session.receive(data)
        except ProtocolError as exc:
            if conn.joined:
                raise
            self._refuse(conn, exc.message)
            return
        for msg in msgs:
            if isinstance(msg, m.Hello):
                with contextlib.suppress(OSError):  # gone already: seen at the next read, like any lane that left
                    conn.sock.sendall(conn.session.answer_hello(msg))
                if conn.session.refused:  # another version: told so, and let go
                    self._drop(conn)
                    return
            elif not conn.joined:
                if isinstance(msg, m.JoinLane) and hmac.compare_digest(msg.token, conn.token):
                    conn.joined = True
                else:
                    self._refuse(conn, "this socket takes only the data lanes of its agent's session")
                    return
            elif isinstance(msg, LANE_DATA):
                self.inbox.append(msg)
            elif isinstance(msg, m.Bye):
                self._drop(conn)
                return
            else:
                raise ProtocolError(f"{type(msg).__name__} on a data lane, which carries file data only")

    def _refuse(self, conn: _Conn, why: str) -> None:
        with contextlib.suppress(OSError):
            conn.sock.sendall(conn.session.send(m.ErrorMsg(ProtocolError.__name__, why, "")))
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is not None:
            self._poll.unregister(fd)
        conn.sock.close()


def remove_stale_dialled() -> None:
    """Remove the lane sockets of this user's earlier sessions that no agent dialled.

    sshd never removes the socket it listened on for a sender, and an agent that dials
    removes it; one whose agent never got that far (it failed, or the session ended
    first) stays.  A sender stops listening as soon as its agent has answered, so a name
    older than `STALE_DIALLED_S` is no live session's.  Its file is removed without
    connecting to it: a connection to a live one would reach that session's sender as
    a lane.
    """

    now = time.time()
    with contextlib.suppress(OSError), os.scandir(DIALLED_DIR) as entries:
        for entry in entries:
            if DIALLED_PATH.fullmatch(entry.path) is None:
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid() and now - st.st_mtime > STALE_DIALLED_S:
                    os.unlink(entry.path)


def remove_stale_sockets(state_fd: int) -> None:
    """Remove hub sockets whose agent is gone (killed: it could not remove its own)."""

    for name in os.listdir(state_fd):
        match = SOCKET_NAME.fullmatch(os.fsencode(name))
        if match is None or int(match.group(1)) == os.getpid():
            continue
        if not alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=state_fd)

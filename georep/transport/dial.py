"""Where the secondary's sshd is (`SshTarget`), and the TCP connection to it dialled early (`EarlyDial`).

Why dial early: before its first packet a copy imports asyncio and the SSH client (asyncssh),
about 0.15–0.2 s of one core, and only then connects.  Yet the first round trips of SSH need
nothing from asyncssh: the TCP handshake, and the exchange of version lines (RFC 4253 section
4.2), after which the server sends its KEXINIT.  `EarlyDial` does those on a thread as soon as
the command line names an ``ssh://`` secondary (`start_early`, from `georep.cli.main`), while
the imports run; `georep.transport.ssh.open_ssh` then hands the socket to asyncssh, which finds
the server's version line and KEXINIT waiting and answers them at once.  On a real link that
is the TCP handshake and one round trip that no longer follow the imports.

This module imports nothing heavy (socket, threading, urllib): it runs before everything else.
"""

from __future__ import annotations

import getpass
import socket
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from georep import __version__
from georep.errors import UsageError

#: This client's software version in its SSH version line: what sshd logs as the "remote
#: software version".  RFC 4253 section 4.2: printable ASCII, no space and no minus sign.
CLIENT_VERSION = "georep_sync_" + "".join(c if c.isalnum() or c in "._" else "_" for c in __version__)
#: The version line itself, as sent ahead of asyncssh (which is told the same `CLIENT_VERSION`).
VERSION_LINE = b"SSH-2.0-" + CLIENT_VERSION.encode("ascii") + b"\r\n"


@dataclass(frozen=True, slots=True)
class SshTarget:
    user: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise UsageError(f"not an ssh:// URL: {url}", hint="use ssh://[user@]host[:port]/absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise UsageError(f"the secondary path in {url} must be absolute and not '/'",
                             hint="use ssh://[user@]host[:port]/absolute/path")
        try:
            port = parts.port or 22
        except ValueError:
            raise UsageError(f"bad port in {url}") from None
        return cls(unquote(parts.username) if parts.username else getpass.getuser(), parts.hostname, port, path)

    @property
    def display(self) -> str:
        host = f"[{self.host}]:{self.port}" if self.port != 22 else self.host
        return f"{self.user}@{host}"


class EarlyDial:
    """A TCP connection to ``host:port`` made on a thread, with `VERSION_LINE` sent on it.

    Nothing is trusted on it: the key exchange, the host key check and authentication are
    asyncssh's, as on a connection it makes itself.  A dial that fails (no such host, refused,
    timed out) leaves nothing behind: `take` returns None and asyncssh dials again, and reports
    the failure as it always has.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._taken = False  # `take` was called: a socket the thread makes later is not wanted
        self._thread = threading.Thread(target=self._dial, args=(timeout,), name="georep-dial", daemon=True)
        self._thread.start()

    def _dial(self, timeout: float) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError:
            return  # asyncssh dials again and says why it cannot connect
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(VERSION_LINE)
        except OSError:
            sock.close()
            return
        with self._lock:
            if not self._taken:
                self._sock = sock
                return
        sock.close()

    def take(self, host: str, port: int, timeout: float) -> socket.socket | None:
        """The connected socket, version line sent, if it goes to ``host:port``; None: dial as usual.

        Waits for the dial at most ``timeout`` seconds; called once (later calls return None).
        """

        self._thread.join(timeout)
        with self._lock:
            sock, self._sock, self._taken = self._sock, None, True
        if sock is not None and (host, port) != (self.host, self.port):
            sock.close()
            return None
        return sock


_EARLY: EarlyDial | None = None


def early_target(argv: list[str]) -> SshTarget | None:
    """The ``ssh://`` secondary of a copy's command line, if it names exactly one; None otherwise.

    A look ahead of argparse: the command line is parsed properly later, and a socket dialled
    for an argument that turns out not to be the secondary is simply not used.
    """

    if any(a in ("-h", "--help", "--version", "-V") for a in argv):
        return None
    urls = [a for a in argv if a.startswith("ssh://")]
    if len(urls) != 1:
        return None
    try:
        return SshTarget.parse(urls[0])
    except UsageError:
        return None  # argparse's turn to say what is wrong


def start_early(argv: list[str], timeout: float = 30.0) -> None:
    """Dial the secondary named on a copy's command line now, on a thread (see the module's docstring)."""

    global _EARLY
    target = early_target(argv)
    if target is not None and _EARLY is None:
        _EARLY = EarlyDial(target.host, target.port, timeout)


def take_early(host: str, port: int, timeout: float) -> socket.socket | None:
    """The socket `start_early` dialled to ``host:port``, once; None: there is none, dial as usual."""

    global _EARLY
    early, _EARLY = _EARLY, None
    if early is None:
        return None
    return early.take(host, port, timeout)


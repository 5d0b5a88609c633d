"""The agent on the far side of one SSH connection (asyncssh), verified like OpenSSH does.

Host keys are checked against ``~/.ssh/known_hosts`` (or ``--known-hosts``): an unknown
key is refused with its SHA256 fingerprint and the command to accept it, a changed key
is refused as a possible attack.  Identities are the usual ``~/.ssh/id_*`` and the
ssh-agent, or ``--identity``.  There is no switch that turns verification off.

The remote command is ``REMOTE_COMMAND agent PATH`` run by the remote user's shell
(like rsync's ``--rsync-path``); a shell exit of 127 means the command was not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import importlib.util
import os
import re
import secrets
import shlex
import socket
import struct
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from georep.errors import ConnectionLost, HostKeyChanged, HostKeyUnknown, SshAuthFailed, SshUnreachable
from georep.transport.channel import STDERR_KEEP, JoinedChannel
from georep.transport.dial import CLIENT_VERSION, VERSION_LINE, SshTarget, take_early


@contextlib.contextmanager
def linker_cache_lookups() -> Iterator[None]:
    """While asyncssh is imported, ctypes looks libraries up in the linker's cache only, listed once.

    Why: at import, asyncssh looks for optional C libraries with ``ctypes.util.find_library``
    (liboqs for post-quantum key exchange, under two names; nettle for UMAC).  For one that
    is not installed, find_library's fallbacks compile a test program: gcc, collect2 and ld,
    then ld again, per name.  Measured here: 30-100 ms of wall time and 20-50 ms of CPU at
    the start of every run, before its first packet.  An installed library is in the linker
    cache (``ldconfig -p``), which is the first place find_library looks: the same libraries
    are found.  That first place still runs ``ldconfig -p`` once per name (three processes,
    7 ms before the first packet): `LinkerCache` lists the cache once for all of them.
    Where ctypes has no such lookup (not Linux), nothing changes.
    """

    if getattr(ctypes.util, "_findSoname_ldconfig", None) is None:
        yield
        return
    original = ctypes.util.find_library
    ctypes.util.find_library = LinkerCache().find
    try:
        yield
    finally:
        ctypes.util.find_library = original


class LinkerCache:
    """``ctypes.util.find_library`` as its linker-cache step does it on Linux, over one listing.

    CPython's ``_findSoname_ldconfig`` (3.8-3.13) runs ``/sbin/ldconfig -p`` and takes the
    first ``libNAME.*`` entry of this process's ABI; so does `find`, with the listing made
    at the first call and kept.
    """

    #: ``uname -m`` and pointer width → the ABI tag ldconfig prints (as in ctypes.util)
    ABI = {"x86_64-64": "libc6,x86-64", "ppc64-64": "libc6,64bit", "sparc64-64": "libc6,64bit",
           "s390x-64": "libc6,64bit", "ia64-64": "libc6,IA-64"}

    def __init__(self) -> None:
        self._abi = self.ABI.get(f"{os.uname().machine}-{struct.calcsize('l') * 8}", "libc6")
        self._listing: bytes | None = None
        #: how many times ldconfig ran (once at most)
        self.listings = 0

    def find(self, name: str) -> str | None:
        if self._listing is None:
            self._listing = self._list()
        found = re.search(os.fsencode(rf"\s+(lib{re.escape(name)}\.[^\s]+)\s+\({self._abi}"), self._listing)
        return os.fsdecode(found.group(1)) if found else None

    def _list(self) -> bytes:
        self.listings += 1
        try:
            return subprocess.run(["/sbin/ldconfig", "-p"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, env={"LC_ALL": "C", "LANG": "C"}, check=False).stdout
        except OSError:
            return b""


@contextlib.contextmanager
def no_x509_without_pyopenssl() -> Iterator[None]:
    """While asyncssh is imported, its X.509 module is not tried when pyOpenSSL is missing.

    Why: asyncssh's X.509 certificate support needs pyOpenSSL, which georep-sync does not
    install.  Without it asyncssh still imports ``cryptography.x509`` (and compiles its name
    parser's regular expressions) before the import of ``OpenSSL`` fails and it goes on
    without X.509: measured here, 15-25 ms of every start, for nothing.  Marking the module
    as missing gives asyncssh the same ImportError at once.  With pyOpenSSL installed,
    nothing changes.
    """

    name = "asyncssh.crypto.x509"
    if importlib.util.find_spec("OpenSSL") is not None or name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


with warnings.catch_warnings(), linker_cache_lookups(), no_x509_without_pyopenssl():
    # asyncssh names DSA types at import, which cryptography 51 deprecates with a warning on
    # stderr: nothing an operator can act on (the user's keys are not involved), so it is
    # not shown.  Only that warning, and only while asyncssh is imported.
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh
    from asyncssh.auth import _client_auth_handlers, _ClientPublicKeyAuth  # see SignedFirst
    from asyncssh.channel import SSHChannel  # see DataInPlace
    from asyncssh.constants import (  # see the classes using them
        MSG_CHANNEL_DATA,
        MSG_CHANNEL_EOF,
        MSG_CHANNEL_EXTENDED_DATA,
        MSG_CHANNEL_OPEN,
        MSG_IGNORE,
        MSG_SERVICE_ACCEPT,
    )
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption
    from asyncssh.packet import Boolean, Byte, SSHPacket, SSHPacketLogger, String, UInt32
    from asyncssh.public_key import SSHLocalKeyPair
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Fastest first on this hardware (measured: aes128-gcm ≈ 527 MB/s on loopback).
CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]


def default_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def _known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    try:
        return asyncssh.read_known_hosts(str(path))
    except FileNotFoundError:
        return asyncssh.import_known_hosts("")


#: Connections opened by `open_ssh`: only they authenticate the short way (`SignedFirst`).
_SHORT_AUTH: weakref.WeakSet[asyncssh.SSHClientConnection] = weakref.WeakSet()
#: ... and send their first request without waiting for the service accept (`UserauthInFlight`).
_IN_FLIGHT: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, UserauthInFlight] = weakref.WeakKeyDictionary()
#: ... and open the agent's session behind the last key's signed request (`SessionInFlight`).
_SESSION: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, SessionInFlight] = weakref.WeakKeyDictionary()
_USERAUTH_SERVICE = b"ssh-userauth"


class SignedFirst(_ClientPublicKeyAuth):
    """Public-key authentication that sends the signed request at once: one round trip per key.

    Why: asyncssh, like OpenSSH's client, first asks the server whether it would accept a
    key (an unsigned query, answered by PK_OK) and signs only then.  RFC 4252 (section 7)
    lets a client send the signature straight away; the server answers success or failure,
    and on failure the next key is tried as before.  On a 150 ms link that query is 150 ms
    of every run.  Measured with `bench/`'s sshd and proxy on the small dataset at 150 ms,
    together with `_PublicKeyFirst` (8 oneshot copies each, in turns): median 3.98 -> 3.54 s.

    Only for a key read from a file that needs no one's touch: a key held by ssh-agent
    (which may ask its user to confirm each signature) and a FIDO key (``sk-*``, which
    waits for a touch) are still queried first, so that no one is asked to approve a key the
    server would refuse.  Only on connections that `open_ssh` made (``_SHORT_AUTH``).

    asyncssh has no option for this, so this subclasses its private public-key client
    and takes its place in asyncssh's table of methods (`install_signed_first`).
    """

    async def _start(self) -> None:
        if self._conn not in _SHORT_AUTH:
            await super()._start()
            return
        inflight = _IN_FLIGHT.get(self._conn)
        if inflight is not None:
            await inflight.signature_algorithms_known()
        self._keypair = await self._conn.public_key_auth_requested()
        if self._keypair is None:
            self._conn.try_next_auth(next_method=True)
            return
        if not _signs_unattended(self._keypair):
            # asyncssh's own query, as in its _start (which would fetch the next key)
            self.logger.debug1("Trying public key auth with %s key", self._keypair.algorithm)
            await self.send_request(Boolean(False), String(self._keypair.algorithm),
                                    String(self._keypair.public_data))
            return
        await self._send_signed_request()
        session = _SESSION.get(self._conn)
        if session is not None:
            session.signed_request_sent()

    def auth_failed(self) -> None:
        super().auth_failed()
        session = _SESSION.get(self._conn)
        if session is not None:
            session.request_refused()


def _signs_unattended(keypair: asyncssh.SSHKeyPair) -> bool:
    return type(keypair) is SSHLocalKeyPair and not keypair.algorithm.startswith(b"sk-")


def install_signed_first() -> bool:
    """Put `SignedFirst` in asyncssh's place for public-key authentication, if it fits.

    It fits when asyncssh's table still holds the class `SignedFirst` was written against
    with the methods it relies on; otherwise (a future asyncssh) nothing changes and every
    connection authenticates the long way.  tests/transport/test_ssh_auth.py fails then, so
    that whoever upgrades asyncssh looks at this again.
    """

    current = _client_auth_handlers.get(b"publickey")
    if current is SignedFirst:
        return True
    if current is not _ClientPublicKeyAuth or not all(
        callable(getattr(_ClientPublicKeyAuth, name, None))
        for name in ("_start", "_send_signed_request", "send_request")
    ):
        return False
    _client_auth_handlers[b"publickey"] = SignedFirst
    return True


#: Whether this process authenticates the short way (see `install_signed_first`).
SIGNED_FIRST = install_signed_first()


class UserauthInFlight:
    """Sends the first authentication request right behind the service request: a round trip less.

    Why: asyncssh, like OpenSSH's client, asks for the ``ssh-userauth`` service once the key
    exchange is done and waits for the server's SERVICE_ACCEPT before it authenticates.  A
    server handles its packets in order, and accepting that service is what makes it ready for
    authentication requests (OpenSSH's sshd installs its handler as it accepts), so the request
    can follow in the same flight: the accept then arrives with nothing left to wait for.  On a
    150 ms link that wait is 150 ms of every run.  A server that refuses the service closes the
    connection either way.

    The key's signature algorithm depends on the server's ``server-sig-algs`` (EXT_INFO, sent
    with its NEWKEYS): until that is known, `SignedFirst` waits for the accept, as before.

    asyncssh has no option for this: it is done through asyncssh's connection itself, its
    ``send_service_request`` and its handler for SERVICE_ACCEPT, on connections `open_ssh`
    makes and only while asyncssh still has both (`fits`).
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        self._started = False
        self._accepted = asyncio.Event()
        self._request_service = conn.send_service_request
        handlers = dict(conn._packet_handlers)
        self._process_accept = handlers[MSG_SERVICE_ACCEPT]
        handlers[MSG_SERVICE_ACCEPT] = self._on_accept
        conn._packet_handlers = handlers
        conn.send_service_request = self._send_service_request  # type: ignore[method-assign]
        _IN_FLIGHT[conn] = self

    @staticmethod
    def fits() -> bool:
        conn_class = asyncssh.SSHClientConnection
        return (MSG_SERVICE_ACCEPT in getattr(conn_class, "_packet_handlers", {})
                and all(callable(getattr(conn_class, name, None))
                        for name in ("send_service_request", "try_next_auth", "get_owner")))

    def _send_service_request(self, service: bytes) -> None:
        self._request_service(service)
        if service != _USERAUTH_SERVICE or self._started:
            return
        # what asyncssh does on SERVICE_ACCEPT (_process_service_accept), a round trip sooner
        self._started = True
        conn = self._conn
        conn.logger.info("Beginning auth for user %s (ahead of the service accept)", conn._username)
        conn._auth_in_progress = True
        owner = conn.get_owner()
        if owner is not None:
            owner.begin_auth(conn._username)
        conn.try_next_auth()

    def _on_accept(self, conn: asyncssh.SSHClientConnection, pkttype: int, pktid: int, packet: SSHPacket) -> None:
        if not self._started or self._accepted.is_set():
            self._process_accept(conn, pkttype, pktid, packet)
            return
        # asyncssh's checks, without starting authentication a second time
        service = packet.get_string()
        packet.check_end()
        if not conn._recv_encryption or service != conn._next_service:
            raise asyncssh.ProtocolError(f"unexpected service accept for {service!r}")
        conn.logger.debug2("Request for service %s accepted", service)
        conn._next_service = None
        self._accepted.set()

    async def signature_algorithms_known(self) -> None:
        """Returns once the server's signature algorithms are known, or it has accepted the service."""

        if not self._conn._server_sig_algs:
            await self._accepted.wait()


class SessionInFlight:
    """Opens the agent's session channel right behind the last key's signed request: a round trip less.

    Why: asyncssh holds back every connection-protocol packet until the server's
    USERAUTH_SUCCESS is in, so the session's CHANNEL_OPEN leaves a round trip after the
    signed request.  RFC 4252 (section 5.1) has the server pass what a client sends after the
    request that succeeded to the service: OpenSSH's sshd keeps such packets buffered across
    its privilege separation and handles them once the user is authenticated.  On a 150 ms
    link that is 150 ms of every run.

    Only behind the last key on offer (no other key file, no ssh-agent or PKCS#11 key left to
    try): when the server refuses that key the run fails anyway, and OpenSSH answers the open
    with UNIMPLEMENTED.  Should a later method (``none``) still succeed, the open is queued
    again with the packets asyncssh sends on success.

    asyncssh has no option for this: the open goes through asyncssh's own ``create_process``,
    and `our_send_packet` lets that one packet out ahead of the success.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection, command: str) -> None:
        self._conn = conn
        self._command = command
        self._task: asyncio.Task[asyncssh.SSHClientProcess[bytes]] | None = None
        self._let_out = False  # the next CHANNEL_OPEN may leave before the success
        self._sent_early: tuple[bytes, ...] | None = None  # that packet's fields, once it left
        _SESSION[conn] = self

    @staticmethod
    def fits() -> bool:
        conn_class = asyncssh.SSHClientConnection
        return all(callable(getattr(conn_class, name, None)) for name in ("create_process", "send_packet"))

    def signed_request_sent(self) -> None:
        conn = self._conn
        if (self._task is not None or conn._client_keys or conn._saved_rsa_key is not None
                or conn._get_agent_keys or conn._get_pkcs11_keys):
            return
        self._let_out = True
        self._task = asyncio.ensure_future(conn.create_process(self._command, encoding=None))

    def request_refused(self) -> None:
        if self._sent_early is not None and not self._conn._auth_complete:
            self._conn._deferred_packets.append((MSG_CHANNEL_OPEN, self._sent_early))
            self._sent_early = None

    def send_early(self, send: Callable[..., None], args: tuple[bytes, ...], handler: SSHPacketLogger | None
                   ) -> bool:
        """Sends the session's CHANNEL_OPEN now if it is the one to send early; False: not this one."""

        conn = self._conn
        if not self._let_out or conn._auth_complete:
            return False
        self._let_out = False
        conn._auth_complete = True  # for this packet only: asyncssh would hold it back
        try:
            send(MSG_CHANNEL_OPEN, *args, handler=handler)
        finally:
            conn._auth_complete = False
        self._sent_early = args
        return True

    async def process(self) -> asyncssh.SSHClientProcess[bytes]:
        """The agent's session: the one opened early, or one opened now."""

        if self._task is not None:
            return await self._task
        return await self._conn.create_process(self._command, encoding=None)

    def abandon(self) -> None:
        """The connection failed: the early open fails with it, and nobody waits for it."""

        if self._task is not None:
            self._task.cancel()
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())


def version_sent_ahead(conn: asyncssh.SSHClientConnection, line: bytes) -> None:
    """asyncssh's first step on a socket where `georep.transport.dial` sent the version line already.

    asyncssh sends its version line as soon as the connection is made (``_send_version``,
    called right after this client's ``connection_made``).  On a socket dialled early that
    line left before asyncssh was imported, and a second one would reach the server as the
    first binary packet and end the connection.  So the line is recorded as asyncssh would
    (the key exchange hashes it) and nothing is sent.  Only where asyncssh still starts that
    way (`VERSION_AHEAD`); otherwise `open_ssh` does not use the early socket.
    """

    version = line.removesuffix(b"\r\n")

    def send_version() -> None:
        if b"SSH-2.0-" + conn._version != version:  # told CLIENT_VERSION, as the line sent
            raise asyncssh.ProtocolError(f"version line sent ahead {version!r} is not asyncssh's")
        conn.logger.debug1("Sent version %s ahead (georep.transport.dial)", version)
        conn._client_version = version
        conn.set_extra_info(client_version=version.decode("ascii"))

    conn._send_version = send_version  # type: ignore[method-assign]


class _PublicKeyFirst(asyncssh.SSHClient):
    """Starts authentication with a public key, not with asyncssh's ``none`` request.

    Why: asyncssh opens with ``none`` to learn the server's methods, a round trip that
    this client never needs: it authenticates with keys only.  If no key is offered (or
    none is accepted), ``none`` is still tried after them, and the server's answer lists its
    methods as before.  Only when asyncssh's connection starts as it does today.

    On a socket dialled early its connection sends no version line (`version_sent_ahead`).
    Its connection also sends its packets through `our_send_packet`, its first
    authentication request at once (`UserauthInFlight`) and, behind the last key's request,
    the open of the session that runs ``command`` (`SessionInFlight`).
    """

    def __init__(self, command: str, early: socket.socket | None = None) -> None:
        self.session: SessionInFlight | None = None
        self._command = command
        self._early = early  # dialled by georep.transport.dial, its version line sent

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._early is not None:
            version_sent_ahead(conn, VERSION_LINE)
        methods = getattr(conn, "_auth_methods", None)
        if SIGNED_FIRST and methods == [b"none"]:
            conn._auth_methods = [b"publickey", b"none"]
            _SHORT_AUTH.add(conn)
            if USERAUTH_IN_FLIGHT:
                UserauthInFlight(conn)
            if SESSION_IN_FLIGHT:
                self.session = SessionInFlight(conn, self._command)
        our_send_packet(conn, self.session)

    async def process(self, conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientProcess[bytes]:
        """The session running the command, once authenticated."""

        if self.session is not None:
            return await self.session.process()
        return await conn.create_process(self._command, encoding=None)

    def abandon(self) -> None:
        if self.session is not None:
            self.session.abandon()
        if self._early is not None:  # if asyncssh did not take it over (closing twice does no harm)
            self._early.close()


_EMPTY_IGNORE = (String(b""),)


#: The `GcmDataPackets` of each connection (for the record: tests look at what it sent).
_DATA_PACKETS: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, GcmDataPackets] = weakref.WeakKeyDictionary()


class GcmDataPackets:
    """Channel data packets built and sealed in one pass, for a connection on AES-GCM.

    Why: asyncssh builds each packet in layers that copy it whole four times on the way
    (the payload with its type, with its padding, the ciphertext cut from its tag, then
    joined to it again) and makes a fresh ``AESGCM`` for every packet.  A copy of the small
    dataset sends about 5,400 packets of 32 KiB: measured 14 µs of the sender's time per
    packet in that code against 7 µs here.  The bytes on the wire are the same: RFC 5647's
    packet (length in the clear as associated data; padding length, payload and random
    padding to a multiple of 16 sealed under the connection's current nonce).

    Only the common case takes this path: channel data on an established connection whose
    cipher is AES-GCM, without compression, no key exchange due.  Anything else, and every
    other packet, goes through asyncssh, which also starts the rekeying; the nonce and the
    sequence number are asyncssh's own, advanced here as it would.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        self._cipher: object = None
        self._aead: AESGCM | None = None
        self.sent = 0  # packets sent by this path
        self._corked: list[bytes] | None = None
        self.keys = 0  # keys they were sealed with (one more after each key exchange)
        self._random = b""  # random bytes drawn ahead for the padding, and how many are used
        self._random_used = 0
        self.draws = 0  # times random bytes were drawn from the kernel for the padding
        _DATA_PACKETS[conn] = self

    @staticmethod
    def fits() -> bool:
        conn_class = asyncssh.SSHClientConnection
        return (callable(getattr(conn_class, "_send", None)) and callable(getattr(GCMCipher, "_update_iv", None))
                and GCMEncryption.get_mac_params(b"") == (0, 16, True))

    def cork(self) -> None:
        """Hold the packets sealed from now on, to go in one write at `uncork`."""

        self._corked = []

    def uncork(self) -> None:
        """Write the packets held (before any packet asyncssh sends: they are numbered in order)."""

        corked, self._corked = self._corked, None
        if corked:
            self._conn._send(b"".join(corked))

    #: Random bytes drawn from the kernel at a time for the packets' padding (4-19 bytes each).
    RANDOM_AHEAD = 4096

    def _padding(self, n: int) -> bytes:
        """``n`` random bytes, each used once, from a pool drawn `RANDOM_AHEAD` at a time.

        Why: ``os.urandom`` per packet was a ``getrandom`` system call per packet, 5,400 of
        them in a copy of the small dataset.  The bytes are as random (the kernel's), and
        sealed with the rest of the packet; RFC 4253 asks random padding, not fresh calls.
        """

        used = self._random_used
        if used + n > len(self._random):
            self._random, used = os.urandom(self.RANDOM_AHEAD), 0
            self.draws += 1
        self._random_used = used + n
        return self._random[used:used + n]

    def send(self, pkttype: int, args: tuple[bytes, ...], handler: SSHPacketLogger | None) -> bool:
        """Send one packet if this path can; False: asyncssh must (nothing was sent)."""

        conn = self._conn
        enc = conn._send_encryption
        if (type(enc) is not GCMEncryption or not conn._kex_complete or not conn._auth_complete
                or conn._compressor is not None or conn._rekey_bytes_sent >= conn._rekey_bytes
                or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)):
            return False
        cipher = enc._cipher
        if cipher is not self._cipher:  # a new key (the first, or after a key exchange)
            self._cipher, self._aead = cipher, AESGCM(cipher._key)
            self.keys += 1
        assert self._aead is not None
        size = 1 + sum(map(len, args))
        padlen = -(conn._send_enchdrlen + size) % conn._send_blocksize
        if padlen < 4:
            padlen += conn._send_blocksize
        plain = b"".join((Byte(padlen), Byte(pkttype), *args, self._padding(padlen)))
        hdr = UInt32(len(plain))
        sealed = self._aead.encrypt(cipher._iv, plain, hdr)
        cipher._update_iv()
        if self._corked is not None:
            self._corked.append(hdr)
            self._corked.append(sealed)
        else:
            conn._send(hdr + sealed)
        seq = conn._send_seq
        conn._send_seq = (seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += len(plain)
        self.sent += 1
        if conn.logger._debug_level >= 3:  # asyncssh's packet log (its debug level 3)
            (handler or conn).log_sent_packet(pkttype, seq, Byte(pkttype) + b"".join(args))
        return True


def our_send_packet(conn: asyncssh.SSHClientConnection, session: SessionInFlight | None) -> None:
    """The connection's ``send_packet``, without IGNORE chaff and with the session's open sent early.

    Why no chaff: asyncssh puts an empty SSH_MSG_IGNORE in front of each packet it encrypts,
    the old counter to attacks on CBC mode, where a packet's IV is the previous packet's
    last ciphertext block, already on the wire.  The ciphers this client offers (`CIPHERS`:
    GCM, ChaCha20-Poly1305, CTR) take a fresh nonce or counter for every packet, so there the
    IGNOREs only cost: one more encryption in the sender, one more decryption in sshd, one more
    write to the socket, for each packet (a copy of the small dataset sends about 5,000 of them
    with its data).  A connection that ended up with a CBC cipher anyway keeps them.

    The early open: `SessionInFlight`.  Channel data: `GcmDataPackets`.
    """

    send = conn.send_packet
    data = GcmDataPackets(conn) if GCM_DATA_PACKETS else None

    def send_packet(pkttype: int, *args: bytes, handler: SSHPacketLogger | None = None) -> None:
        if data is not None:
            if pkttype == MSG_CHANNEL_DATA and data.send(pkttype, args, handler):
                return
            data.uncork()  # what it holds goes first
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE and not _cbc(conn):
            return
        if pkttype == MSG_CHANNEL_OPEN and session is not None and session.send_early(send, args, handler):
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[method-assign]


def _cbc(conn: asyncssh.SSHClientConnection) -> bool:
    return "cbc" in str(conn.get_extra_info("send_cipher", ""))


#: Whether this process sends its first authentication request with the service request.
USERAUTH_IN_FLIGHT = SIGNED_FIRST and UserauthInFlight.fits()
#: Whether this process opens the agent's session behind the last key's signed request.
SESSION_IN_FLIGHT = SIGNED_FIRST and SessionInFlight.fits()
#: Whether channel data on AES-GCM goes through `GcmDataPackets`.
GCM_DATA_PACKETS = GcmDataPackets.fits()
#: Whether a socket dialled early, its version line sent, can be handed to asyncssh (`version_sent_ahead`).
VERSION_AHEAD = callable(getattr(asyncssh.SSHClientConnection, "_send_version", None))


class _Unsent:
    """What is left to send of one write, sent from where it lies (asyncssh copies it first)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def __len__(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        piece = self.data[self.pos:self.pos + n]
        self.pos += len(piece)
        return piece


class DataInPlace:
    """Writes to an asyncssh channel (the agent's session, a data lane), sent as packets from the caller's bytes.

    Why: asyncssh's ``SSHChannel.write`` copies each write into a bytearray, then copies each
    packet's share out of it, again with its length (``String``) and again with the channel
    number, before the packet itself is built (`GcmDataPackets`).  A copy of the small
    dataset writes 176 MB in frames of about 1 MiB: four copies of every byte, and two
    layers of calls per packet.  Here a write is queued as a view of the frame, and each
    packet hands the connection the channel number, the length and a slice of that view.

    The queue, the window, the packet size and the pause and resume of the writer stay
    asyncssh's: `_flush` is its ``_flush_send_buf`` (installed on this one channel), which
    also takes what asyncssh queued itself.  The packets one flush seals go to the socket in
    one write (`GcmDataPackets.cork`), not one each: on loopback every write also wakes the
    reader, and a flush sends up to the window (2 MiB, 64 packets).
    """

    def __init__(self, chan: SSHChannel[bytes], conn: asyncssh.SSHClientConnection) -> None:
        self._chan = chan
        self._conn = conn
        self._packets = _DATA_PACKETS.get(conn)  # None: asyncssh builds every packet
        chan._flush_send_buf = self._flush  # type: ignore[method-assign]

    @staticmethod
    def fits(chan: object) -> bool:
        return all(hasattr(chan, name) for name in (
            "_send_buf", "_send_buf_len", "_send_window", "_send_pktsize", "_send_state", "_send_chan",
            "_pause_resume_writing", "_close_send", "_flush_send_buf", "send_packet"))

    def write(self, data: bytes) -> None:
        chan = self._chan
        if chan._send_state != "open":
            raise BrokenPipeError("Channel not open for sending")  # as asyncssh's write
        if data:
            chan._send_buf.append((_Unsent(data), None))  # type: ignore[arg-type]
            chan._send_buf_len += len(data)
            self._flush()

    def _flush(self) -> None:
        packets = self._packets
        if packets is None:
            self._flush_queue()
            return
        packets.cork()
        try:
            self._flush_queue()
        finally:
            packets.uncork()

    def _flush_queue(self) -> None:
        chan = self._chan
        queue = chan._send_buf
        while queue and chan._send_window:
            pktsize = min(chan._send_window, chan._send_pktsize)
            buf, datatype = queue[0]
            data: bytes | bytearray | memoryview
            if isinstance(buf, _Unsent):
                data = buf.take(pktsize)
                if not len(buf):
                    del queue[0]
            elif len(buf) > pktsize:
                data = buf[:pktsize]
                del buf[:pktsize]
            else:
                data = buf
                del queue[0]
            chan._send_buf_len -= len(data)
            chan._send_window -= len(data)
            if datatype is not None:
                chan.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype), String(bytes(data)))
            elif chan._send_chan is not None:
                self._conn.send_packet(MSG_CHANNEL_DATA, UInt32(chan._send_chan), UInt32(len(data)),
                                       data, handler=chan)  # type: ignore[arg-type]
        chan._pause_resume_writing()
        if not queue:
            if chan._send_state == "eof_pending":
                chan.send_packet(MSG_CHANNEL_EOF)
                chan._send_state = "eof"
            elif chan._send_state == "close_pending":
                chan._close_send()


def lane_channel(conn: asyncssh.SSHClientConnection, reader: asyncssh.SSHReader[bytes],
                 writer: asyncssh.SSHWriter[bytes]) -> JoinedChannel:
    """A data lane's stream over one asyncssh channel, opened from this side or by sshd.

    Lane data goes out as the main session's does: no copies on the way, one socket write
    per flush (`DataInPlace`), where asyncssh's channel still has what that relies on.
    """

    chan = writer.channel
    return JoinedChannel(reader, writer, DataInPlace(chan, conn).write if DataInPlace.fits(chan) else None)


class SshChannel:
    """A `georep.transport.channel.Channel` over an asyncssh session."""

    def __init__(self, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess[bytes], command: str,
                 *, owns_connection: bool = True) -> None:
        self._conn = conn
        self._proc = proc
        self._command = command
        self._owns = owns_connection
        self._stderr = bytearray()
        self.bytes_written = 0
        chan = proc.channel
        self._data = DataInPlace(chan, conn) if DataInPlace.fits(chan) else None
        #: seconds the connection took (TCP, key exchange, authentication: four round trips)
        self.connect_s = 0.0
        self._err_task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            data = await self._proc.stderr.read(65536)
            if not data:
                return
            self._stderr += data
            del self._stderr[:-STDERR_KEEP]

    async def read(self) -> bytes:
        return await self._proc.stdout.read(1 << 20)

    def write(self, data: bytes) -> None:
        self.bytes_written += len(data)
        if self._data is not None:
            self._data.write(data)
        else:
            self._proc.stdin.write(data)

    async def drain(self) -> None:
        await self._proc.stdin.drain()

    async def close_input(self) -> None:
        if not self._proc.stdin.is_closing():
            self._proc.stdin.write_eof()

    async def wait(self) -> int | None:
        await self._proc.wait_closed()
        await self._err_task
        status = self._proc.exit_status
        if self._owns:
            self._conn.close()
            await self._conn.wait_closed()
        return status

    async def sibling(self) -> SshChannel:
        """One more agent session on the same connection (a data lane): its own channel window."""

        try:
            proc: asyncssh.SSHClientProcess[bytes] = await self._conn.create_process(self._command, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise ConnectionLost(
                f"the secondary refused one more SSH session for a data lane: {reason}",
                hint="raise MaxSessions in the secondary's sshd_config, or pass --lanes 0",
            ) from None
        return SshChannel(self._conn, proc, self._command, owns_connection=False)

    async def join(self, path: bytes) -> JoinedChannel:
        """A data lane into the agent's lane socket: a ``direct-streamlocal`` channel, its own window.

        Raises `ConnectionLost` when sshd refuses to forward to a Unix socket
        (``AllowStreamLocalForwarding no``, ``DisableForwarding yes``, or a ``restrict`` /
        ``no-port-forwarding`` key): the sender then opens lane sessions instead.
        """

        try:
            reader, writer = await self._conn.open_unix_connection(os.fsdecode(path), encoding=None)
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise ConnectionLost(f"the secondary's sshd does not forward a data lane to the agent: {reason}",
                                 hint="AllowStreamLocalForwarding in sshd_config") from None
        return lane_channel(self._conn, reader, writer)

    async def call_lanes_back(self) -> LaneCalls:
        """A socket on the secondary where sshd takes lanes the agent dials (`LaneCalls`).

        Returns once the request for it has left, ahead of anything written after: sshd
        listens before the agent can read where to dial.
        """

        calls = LaneCalls(self._conn)
        await asyncio.sleep(0)  # the listener's task runs up to its wait for the answer: the request is sent
        return calls

    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def kill(self) -> None:
        """End this session at once: a lane's own channel, or the main one's whole connection."""

        if self._owns:
            self._conn.abort()
        else:
            self._proc.close()

    async def reap(self) -> None:
        """After a failure: the connection (every session on it) is gone."""

        self._conn.abort()
        await self._conn.wait_closed()


class LaneCalls:
    """Data lanes the agent dials back: sshd listens on a Unix socket for this connection.

    Why: a lane opened from this side (``direct-streamlocal``, `SshChannel.join`) needs the
    agent's socket first, and the agent names it only once it runs: its answer, then each
    channel's open, are two round trips after the Hello before a lane carries data.  Here sshd
    listens on a socket this side names (OpenSSH's ``streamlocal-forward``, as ``ssh -R
    /path:...``), asked for in the same flight as the agent's `DialLanes`.  The agent
    connects to it as soon as it reads that message, sshd opens a channel back to this
    side for each connection, and the lanes carry data one round trip after the Hello
    (measured on the bench's small tree at 150 ms: a copy's median 2.35 -> 2.27 s).  The
    channels are as wide as those opened from this side (sshd grants 2 MiB).

    The socket is ``/tmp/georep-lanes-<128 random bits>.sock``: short enough for any
    ``sun_path``, in a directory that exists on every secondary, created by sshd as this
    login's user with its ``StreamLocalBindMask`` (0177 unless changed: the user's alone).
    The agent dials it only if it is a socket of its own user's alone, keeps a connection
    only if the peer it reaches runs as that user, and removes the name once its lanes are
    connected.  sshd never removes it (measured: not on the cancel, not when the
    connection ends); a name no agent dialled is removed by a later agent of the same user
    (`georep.apply.lanehub.remove_stale_dialled`).  A socket that
    cannot be had (``AllowStreamLocalForwarding local`` or ``no``, ``DisableForwarding``, a
    ``restrict`` key) fails the agent's dial, which says so, and the sender opens lanes as
    before.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.path = f"/tmp/georep-lanes-{secrets.token_hex(16)}.sock"
        self._conn = conn
        self._arrived: asyncio.Queue[JoinedChannel] = asyncio.Queue()
        self._listener: asyncssh.SSHListener | None = None
        self._listening = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        try:
            self._listener = await self._conn.start_unix_server(lambda: self._arrive, self.path)
        except (OSError, asyncssh.Error, asyncssh.ChannelListenError) as exc:
            # refused (no remote forwarding here): the agent finds no socket and says so
            self._conn.logger.debug1("No socket for lanes dialled back: %s", exc)

    def _arrive(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        self._arrived.put_nowait(lane_channel(self._conn, reader, writer))

    async def next(self) -> JoinedChannel:
        """The next lane's channel, as sshd opens it."""

        return await self._arrived.get()

    def close(self) -> None:
        """No more lanes: sshd stops listening (nothing waits for its answer)."""

        if self._listener is not None:
            self._listener.close()
        elif not self._listening.done():
            self._listening.cancel()


async def open_ssh(
    target: SshTarget,
    remote_command: str,
    *,
    known_hosts: Path | None = None,
    identities: list[Path] | None = None,
    connect_timeout: float = 30.0,
) -> SshChannel:
    kh_path = known_hosts or default_known_hosts()
    known = _known_hosts(kh_path)
    client_keys: list[str] | tuple[()] = [str(p) for p in identities] if identities else ()
    command = shlex.join([*shlex.split(remote_command), "agent", target.path])
    t0 = time.monotonic()
    # the TCP connection and the version line, dialled while this process imported asyncssh
    sock = take_early(target.host, target.port, connect_timeout)
    if sock is not None and not VERSION_AHEAD:
        sock.close()
        sock = None
    client = _PublicKeyFirst(command, sock)
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            sock=sock,
            client_version=CLIENT_VERSION,
            username=target.user,
            known_hosts=known,
            client_keys=client_keys,
            encryption_algs=CIPHERS,
            compression_algs=None,
            connect_timeout=connect_timeout,
            config=None,
            client_factory=lambda: client,
        )
    except asyncssh.HostKeyNotVerifiable:
        client.abandon()
        raise await _host_key_error(target, known, kh_path) from None
    except asyncssh.PermissionDenied:
        client.abandon()
        raise SshAuthFailed(f"{target.display} refused every identity offered") from None
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        client.abandon()
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise SshUnreachable(f"cannot connect to {target.display}: {reason}") from None
    except BaseException:
        client.abandon()
        raise
    # before the agent's session (its exec adds a round trip or two); on a socket dialled
    # early, without the TCP handshake and the version lines, done while asyncssh was imported
    connect_s = time.monotonic() - t0
    try:
        proc = await client.process(conn)
    except BaseException:  # refused, or the run gave up on it (cancelled): the connection goes too
        conn.abort()
        raise
    chan = SshChannel(conn, proc, command)
    chan.connect_s = connect_s
    return chan


async def _host_key_error(target: SshTarget, known: asyncssh.SSHKnownHosts, kh_path: Path) -> Exception:
    fingerprint = "unknown"
    try:
        key = await asyncssh.get_server_host_key(target.host, target.port)
        if key is not None:
            fingerprint = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
    except (OSError, asyncssh.Error):
        pass
    trusted = known.match(target.host, target.host, target.port)[0]
    port_opt = f"-p {target.port} " if target.port != 22 else ""
    if trusted:
        spec = f"[{target.host}]:{target.port}" if target.port != 22 else target.host
        return HostKeyChanged(
            f"host key of {target.display} CHANGED (now {fingerprint}); refusing to connect",
            hint=f"if the host was reinstalled, run: ssh-keygen -f {kh_path} -R '{spec}', then accept the new key",
        )
    return HostKeyUnknown(
        f"host key of {target.display} is not in {kh_path} (server offers {fingerprint})",
        hint=f"verify the fingerprint, then: ssh-keyscan {port_opt}{target.host} >> {kh_path}",
    )

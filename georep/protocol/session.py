"""The sans-IO session: magic, version handshake, and who may send what.

Theory of operation
-------------------
Each side starts its byte stream with `MAGIC`.  Shell noise on the remote side (an rc
file printing a banner, a missing command's error on stdout) therefore fails cleanly at
the first bytes, and the error shows what arrived instead.  Then the sender sends
`Hello`; the agent answers `HelloOk` when it speaks the same version, or `ErrorMsg`
naming `AgentVersionMismatch` and closes.

The sender need not wait for ``HelloOk``: unless it must learn something from the
agent first (a ``Resume`` answer, the round trip that decides on lanes), its requests
follow Hello in the same flight.  An agent that refuses the version reads nothing behind
Hello and answers the refusal.

Version-skew policy: both ends must speak the same ``PROTOCOL_VERSION``; there is no
negotiation.  A release that changes the message set bumps the version, and the
operator upgrades both sides (the error says so).  This keeps every decoder exact.

States (per side, of what the peer may still send)::

    MAGIC ──magic──▶ HANDSHAKE ──Hello/HelloOk──▶ READY ──Bye / ErrorMsg──▶ CLOSED

In READY a message that the peer's role may not send (`FROM_SENDER` / `FROM_AGENT`) is a
`ProtocolError`, as is anything at all after CLOSED.  The two directions close apart:
the sender may say ``Bye`` right behind its last request and still read the answers
(`can_send` turns false, `state` stays READY), and an agent that received ``Bye`` still
answers what came before it.  ``ErrorMsg`` closes both.  No sockets, no clock: bytes in,
messages out; messages in, bytes out.
"""

from __future__ import annotations

import enum

from georep import PROTOCOL_VERSION, __version__
from georep.errors import AgentVersionMismatch, ProtocolError
from georep.model import Entry
from georep.protocol import messages as m
from georep.protocol.framing import MAX_FRAME, FrameDecoder, encode, encode_entry

MAGIC = b"\x89GEOREP\r\n\x1a\n"
SOFTWARE = f"georep-sync {__version__}"


class Role(enum.Enum):
    SENDER = "sender"
    AGENT = "agent"


class State(enum.Enum):
    MAGIC = "magic"
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


def _shown(data: bytes) -> str:
    """Bytes from the peer made safe to print (no terminal control sequences)."""

    text = data[:200].decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text).strip()


class Session:
    """One end of a connection."""

    def __init__(self, role: Role, *, privileged: bool = False, scope: str = "", max_frame: int = MAX_FRAME) -> None:
        self.role = role
        self.scope = scope  # the sender's: sent in Hello; the agent's: learnt from it
        self.state = State.MAGIC
        self.peer_software = ""
        self.peer_privileged = False
        self._privileged = privileged
        self._decoder = FrameDecoder(max_frame)
        self._head = b""
        self._allowed = m.FROM_SENDER if role is Role.AGENT else m.FROM_AGENT
        self._can_send = True
        #: the agent's: the sender's Hello names another version (what follows it is not read;
        #: `answer_hello` refuses it)
        self.refused = False

    @property
    def can_send(self) -> bool:
        """False once this side said Bye or an ErrorMsg was sent or received."""

        return self._can_send

    # -- outgoing -----------------------------------------------------------------

    def initiate(self) -> bytes:
        """The bytes that open this side's stream (the sender also says Hello)."""

        if self.role is Role.SENDER:
            return MAGIC + encode(m.Hello(PROTOCOL_VERSION, SOFTWARE, self.scope))
        return MAGIC

    def send_entry(self, e: Entry, seq: int) -> bytes:
        """``send(EntryMsg(seq, ...))`` for entry ``e``, the message object skipped (the crawl's hot path)."""

        if not self._can_send:
            raise ProtocolError("session already closed")
        meta = e.meta
        return encode_entry(seq, e.id, e.parent, e.name, int(e.kind), meta.mode, meta.uid, meta.gid, meta.mtime_ns,
                            [[k, v] for k, v in meta.xattrs], e.size, e.target, e.rdev)

    def send(self, msg: m.Message) -> bytes:
        if not self._can_send:
            raise ProtocolError("session already closed")
        if isinstance(msg, m.Bye | m.ErrorMsg):
            self._can_send = False
        if isinstance(msg, m.ErrorMsg):
            self.state = State.CLOSED
        return encode(msg)

    # -- incoming -----------------------------------------------------------------

    def receive(self, data: bytes) -> list[m.Message]:
        """Messages completed by ``data``, after the handshake; raises on any violation."""

        if self.state is State.MAGIC:
            self._head += data
            if len(self._head) < len(MAGIC):
                if not MAGIC.startswith(self._head):
                    self._bad_magic()
                return []
            if not self._head.startswith(MAGIC):
                self._bad_magic()
            data = self._head[len(MAGIC) :]
            self._head = b""
            self.state = State.HANDSHAKE
        out: list[m.Message] = []
        for msg in self._decoder.feed(data):
            handled = self._handle(msg)
            if handled is not None:
                out.append(handled)
            if self.refused:
                break  # what the sender sent behind a refused Hello is not read: the refusal is answered
        return out

    def answer_hello(self, hello: m.Hello) -> bytes:
        """The agent's reply to Hello (HelloOk, or an ErrorMsg that closes the session)."""

        if hello.version != PROTOCOL_VERSION:
            self.state = State.CLOSED
            self._can_send = False
            err = AgentVersionMismatch(
                f"the sender speaks protocol v{hello.version} ({hello.software}), "
                f"this agent speaks v{PROTOCOL_VERSION} ({SOFTWARE})"
            )
            return encode(m.ErrorMsg(type(err).__name__, err.message, err.hint_text))
        return encode(m.HelloOk(PROTOCOL_VERSION, SOFTWARE, self._privileged))

    def end_of_stream(self) -> None:
        """The peer closed its side; raises if that cut a frame or the handshake short."""

        if self._decoder.pending:
            raise ProtocolError(f"stream ended inside a frame ({self._decoder.pending} bytes pending)")
        if self.state is State.MAGIC and self._head:
            self._bad_magic()

    # -- internals ----------------------------------------------------------------

    def _bad_magic(self) -> None:
        raise ProtocolError(
            "the peer did not start the georep protocol; it sent instead: " + repr(_shown(self._head))
        )

    def _handle(self, msg: m.Message) -> m.Message | None:
        if self.state is State.CLOSED:
            raise ProtocolError(f"{type(msg).__name__} after the session closed")
        if isinstance(msg, m.ErrorMsg):
            self.state = State.CLOSED
            self._can_send = False
            return msg
        if self.state is State.HANDSHAKE:
            if self.role is Role.AGENT and isinstance(msg, m.Hello):
                self.peer_software = msg.software
                self.scope = msg.scope
                self.refused = msg.version != PROTOCOL_VERSION
                self.state = State.CLOSED if self.refused else State.READY
                return msg
            if self.role is Role.SENDER and isinstance(msg, m.HelloOk):
                if msg.version != PROTOCOL_VERSION:
                    raise AgentVersionMismatch(
                        f"the agent speaks protocol v{msg.version} ({msg.software}), "
                        f"this sender speaks v{PROTOCOL_VERSION} ({SOFTWARE})"
                    )
                self.peer_software = msg.software
                self.peer_privileged = msg.privileged
                self.state = State.READY
                return None
            raise ProtocolError(f"expected the handshake, got {type(msg).__name__}")
        if type(msg) not in self._allowed:
            raise ProtocolError(f"{type(msg).__name__} may not be sent by the {self._peer_role()}")
        if isinstance(msg, m.Bye):
            self.state = State.CLOSED
        return msg

    def _peer_role(self) -> str:
        return "agent" if self.role is Role.SENDER else "sender"

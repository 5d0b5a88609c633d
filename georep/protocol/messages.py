"""The wire message set, version 5 (documented field by field in docs/PROTOCOL.md).

Each message is an immutable dataclass (`georep.model.record`) with a numeric ``KIND``.
On the wire a message is the msgpack array ``[KIND, field1, field2, ...]`` in
declaration order; the codec in `georep.protocol.framing` checks every field's type
against the annotations below before a message object exists, so code past the decoder
only ever sees well-typed values.  Names, ids, xattr values and file data travel as msgpack ``bin``.
"""

from __future__ import annotations

from typing import ClassVar

from georep.model import record

# -- handshake ------------------------------------------------------------------


@record
class Hello:
    """Sender → agent, first message: who speaks which version."""

    KIND: ClassVar[int] = 1
    version: int  # protocol version (georep.PROTOCOL_VERSION)
    software: str  # e.g. "georep-sync 0.1.0", for messages only
    scope: str  # which source this session speaks for (a brick of a volume; "" for a plain tree)


@record
class HelloOk:
    """Agent → sender, answer to Hello when the versions match."""

    KIND: ClassVar[int] = 2
    version: int
    software: str
    privileged: bool  # the agent may set owners and trusted.* xattrs (runs as root)


# -- sender → agent ---------------------------------------------------------------


@record
class EntryMsg:
    """Make ``parent/name`` be object ``id`` with this metadata.

    The agent answers with a Result: DONE (in place, metadata applied), NEED (send the
    data: the name is published only once the data arrived and its digest matched) or
    FAILED.  An id already known elsewhere is renamed here: no data moves.
    ``parent == id == ROOT_ID`` with an empty name addresses the root itself.
    """

    KIND: ClassVar[int] = 10
    seq: int  # sender-chosen, unique per session; answers carry it
    id: bytes  # 16 bytes
    parent: bytes  # 16 bytes, a directory already sent (or ROOT_ID)
    name: bytes
    kind: int  # georep.model.Kind
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    mtime_ns: int
    xattrs: list[list[bytes]]  # [[key, value], ...]
    size: int  # regular files: length in bytes
    target: bytes  # symlinks: the target
    rdev: int  # device nodes


@record
class LinkMsg:
    """Make ``parent/name`` one more hard link of ``id`` (already placed this session)."""

    KIND: ClassVar[int] = 11
    seq: int
    id: bytes
    parent: bytes
    name: bytes


@record
class MoveMsg:
    """Object ``id``, which the agent holds with the metadata last sent, is now at ``parent/name``.

    A rename the sender knows changed nothing else (its ledger says so): 60-odd bytes
    instead of a whole EntryMsg.  DONE once one of the object's names was renamed there
    (or it was there); NEED when the agent cannot (it does not hold the object, or its
    copy is gone): the sender then sends the whole EntryMsg as a new item.
    """

    KIND: ClassVar[int] = 13
    seq: int
    id: bytes
    parent: bytes
    name: bytes


#: RemoveMsg id meaning "whatever holds the name" (the source replaced it by a rename).
ANY_HOLDER = bytes(16)


@record
class RemoveMsg:
    """Remove ``parent/name`` if it still holds ``id`` (a directory with everything below it).

    Idempotent: a name that is gone or holds another object is left alone (DONE).  The
    all-zero id means "whatever holds the name" (a rename on the source replaced it).
    """

    KIND: ClassVar[int] = 12
    seq: int
    id: bytes
    parent: bytes
    name: bytes


@record
class DataBegin:
    """Data for the Entry ``seq`` follows in DataChunk messages, then DataEnd."""

    KIND: ClassVar[int] = 20
    seq: int
    size: int  # final length (trailing holes are made by truncation)


@record
class DataChunk:
    """Bytes at ``offset`` of the file being sent for ``seq`` (at most CHUNK_SIZE)."""

    KIND: ClassVar[int] = 21
    seq: int
    offset: int
    data: bytes


@record
class DataEnd:
    """The file for ``seq`` is complete: check ``digest`` and publish it."""

    KIND: ClassVar[int] = 22
    seq: int
    digest: bytes  # 16 bytes, see georep.protocol.digest
    mtime_ns: int  # the mtime read after the data (the file may have changed meanwhile)


@record
class SmallFile:
    """One whole small file, packed with others into a Blobs message."""

    seq: int
    size: int
    extents: list[list[int | bytes]]  # [[offset, data], ...] (holes are left out)
    digest: bytes
    mtime_ns: int


@record
class Blobs:
    """Several small files in one frame: no per-file framing or round trip."""

    KIND: ClassVar[int] = 23
    files: list[SmallFile]


@record
class DataAbort:
    """The data for ``seq`` will not come (the source vanished or could not be read)."""

    KIND: ClassVar[int] = 24
    seq: int
    reason: str


@record
class DeltaBegin:
    """The new data for ``seq`` follows as a delta against the basis the agent hashed.

    Answer to `BlockSums`.  DataChunk frames bring the blocks that differ, in increasing
    offset order; every byte of ``[0, size)`` not sent is copied from the basis at the
    same offset.  DataEnd carries the digest of the whole new content.
    """

    KIND: ClassVar[int] = 25
    seq: int
    size: int  # final length


@record
class Lane:
    """Sender → agent, first message after the handshake: this session is a data lane.

    A lane stages file data for the sender's main session on the same secondary and
    nothing else: it accepts only DataBegin/DataChunk/DataEnd, Blobs and DataAbort (for
    any ``seq``; the main session asked for the data), writes each file to the agent's
    staging directory, checks its digest, and answers `Staged` (or a FAILED Result).  The
    main session then publishes it on `Adopt`.  Several lanes on one SSH connection each
    have their own channel window, so a long round trip no longer caps the data rate at
    one window per round trip.
    """

    KIND: ClassVar[int] = 26


@record
class OpenLanes:
    """Sender → agent (main session): "open a socket my data lanes can join you through".

    Answered with `LaneSocket`.  A lane that joins this agent through it (`JoinLane`)
    hands its file data to this very agent: no agent process per lane, and no
    Staged/Adopt round trip (the agent publishes the file as if it had come on the main
    session, and answers its Result there).
    """

    KIND: ClassVar[int] = 33


@record
class DialLanes:
    """Sender → agent (main session): "connect ``count`` lanes to ``path``, where sshd listens for me".

    The sender's SSH connection asked sshd to listen on ``path`` just before (see
    `georep.transport.ssh.LaneCalls`); each connection the agent makes there reaches the
    sender as a channel of its own, which then speaks as a lane that joined through the
    agent's socket (Hello, `JoinLane` with ``token``).  Answered with `LanesDialled`.
    Lanes so made carry data one round trip sooner than through `OpenLanes`.
    """

    KIND: ClassVar[int] = 35
    path: bytes
    count: int
    token: bytes  # 32 random bytes: each lane presents them in its JoinLane


@record
class JoinLane:
    """Sender → agent, first message after the handshake on a connection to the `LaneSocket`."""

    KIND: ClassVar[int] = 34
    token: bytes  # the LaneSocket's token: only the sender of the main session knows it


@record
class Adopt:
    """Sender → agent (main session): the data asked for ``seq`` waits in staging as ``name``.

    ``name`` is what a lane's `Staged` answered; the agent checks it is one of its own
    staging files (a plain file, one link, ``size`` bytes), applies the entry's metadata
    with ``mtime_ns`` and publishes it with one rename, like the end of a direct transfer.
    """

    KIND: ClassVar[int] = 27
    seq: int
    name: bytes
    size: int
    mtime_ns: int


@record
class Ping:
    """Sender → agent: answer `Pong` with the same token at once (the sender measures the round trip)."""

    KIND: ClassVar[int] = 28
    token: int


@record
class Resume:
    """Sender → agent, right after Hello: "my record of what you hold was sealed as ``token``".

    Answered with `Resumed`.  When the token is the one the agent issued and no other
    session wrote this scope since, the sender sends only what changed since then (its
    record says what the secondary holds) and removes what is gone by name.
    """

    KIND: ClassVar[int] = 29
    token: bytes  # 16 bytes from an earlier `Sealed`


@record
class Seal:
    """Sender → agent, after a Finish: "vouch that this scope holds what I sent and nothing else wrote it".

    Answered with `Sealed`.  Sent only after a mirror Finish or in a resumed session.
    """

    KIND: ClassVar[int] = 32


@record
class Finish:
    """Everything was sent: remove what the source no longer has, settle directories.

    The agent answers Finished once every earlier item has its Result.
    """

    KIND: ClassVar[int] = 30
    mirror: bool  # remove this scope's names not placed this session (a full crawl was sent)
    source_entries: int  # how many entries the source had (mass-delete guard)
    allow_mass_delete: bool


@record
class Bye:
    """End of session; the agent exits 0."""

    KIND: ClassVar[int] = 31


# -- agent → sender ---------------------------------------------------------------

DONE = 0
NEED = 1
FAILED = 2


@record
class Result:
    """The outcome of one item (Entry, Link or data)."""

    seq: int
    status: int  # DONE, NEED or FAILED
    cause: str  # empty unless FAILED: one line, for the operator


@record
class Results:
    """Per-item acknowledgements, packed: one failure never forces a resend of others."""

    KIND: ClassVar[int] = 40
    items: list[Result]


@record
class Finished:
    """Answer to Finish."""

    KIND: ClassVar[int] = 41
    deleted: int


@record
class BlockSums:
    """Answer to an Entry instead of NEED: send the data, as a delta against my copy if you like.

    ``sums`` holds the xxh3-128 of each ``block_size`` block of the agent's current copy
    (the basis, ``basis_size`` bytes; the last block may be short), 16 bytes each.  The
    sender answers DeltaBegin (only the blocks that differ follow) or DataBegin/Blobs (the
    whole file, as for NEED).
    """

    KIND: ClassVar[int] = 42
    seq: int
    block_size: int  # a multiple of the chunk size (1 MiB)
    basis_size: int
    sums: bytes  # 16 × ceil(basis_size / block_size) bytes


@record
class Staged:
    """Lane → sender: the data of ``seq`` arrived whole, its digest matched, it waits as ``name``."""

    KIND: ClassVar[int] = 43
    seq: int
    name: bytes  # in the agent's staging directory


@record
class Pong:
    """Agent → sender: the answer to `Ping`."""

    KIND: ClassVar[int] = 44
    token: int


@record
class Resumed:
    """Agent → sender, the answer to `Resume`: whether the sender's record may be trusted."""

    KIND: ClassVar[int] = 45
    valid: bool


@record
class Sealed:
    """Agent → sender, the answer to `Seal`: a token for the next `Resume`, or b"" if it cannot vouch."""

    KIND: ClassVar[int] = 46
    token: bytes


@record
class LaneSocket:
    """Agent → sender, the answer to `OpenLanes`: lanes connect to ``path`` and present ``token``.

    ``path`` is ``/proc/<agent pid>/fd/<n>/lanes-<agent pid>.sock``: the socket sits in the
    agent's state directory, reached through the agent's own descriptor of it (short
    whatever the root's length, and no symlink on the way).  Empty: the agent has no
    socket; the sender opens lane sessions (`Lane`) instead.
    """

    KIND: ClassVar[int] = 47
    path: bytes
    token: bytes  # 32 bytes when path is not empty


@record
class LanesDialled:
    """Agent → sender, the answer to `DialLanes`: how many of the lanes it connected.

    Zero: it could not use the socket (gone, not its user's, refused); ``why`` says why,
    and the sender opens its lanes through `OpenLanes` instead.
    """

    KIND: ClassVar[int] = 48
    count: int
    why: str


@record
class ErrorMsg:
    """A fatal error: the session ends.  ``error`` names a georep.errors class."""

    KIND: ClassVar[int] = 50
    error: str
    message: str
    hint: str


Message = (
    Hello
    | HelloOk
    | EntryMsg
    | LinkMsg
    | MoveMsg
    | RemoveMsg
    | DataBegin
    | DataChunk
    | DataEnd
    | Blobs
    | DataAbort
    | DeltaBegin
    | Lane
    | OpenLanes
    | DialLanes
    | JoinLane
    | Adopt
    | Ping
    | Resume
    | Seal
    | Finish
    | Bye
    | Results
    | Finished
    | BlockSums
    | Staged
    | Pong
    | Resumed
    | Sealed
    | LaneSocket
    | LanesDialled
    | ErrorMsg
)

ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    HelloOk,
    EntryMsg,
    LinkMsg,
    MoveMsg,
    RemoveMsg,
    DataBegin,
    DataChunk,
    DataEnd,
    Blobs,
    DataAbort,
    DeltaBegin,
    Lane,
    OpenLanes,
    DialLanes,
    JoinLane,
    Adopt,
    Ping,
    Resume,
    Seal,
    Finish,
    Bye,
    Results,
    Finished,
    BlockSums,
    Staged,
    Pong,
    Resumed,
    Sealed,
    LaneSocket,
    LanesDialled,
    ErrorMsg,
)

#: What each side may send once the handshake is done.
FROM_SENDER: frozenset[type[Message]] = frozenset(
    {EntryMsg, LinkMsg, MoveMsg, RemoveMsg, DataBegin, DataChunk, DataEnd, Blobs, DataAbort, DeltaBegin, Lane,
     OpenLanes, DialLanes, JoinLane, Adopt, Ping, Resume, Seal, Finish, Bye}
)
FROM_AGENT: frozenset[type[Message]] = frozenset(
    {Results, Finished, BlockSums, Staged, Pong, Resumed, Sealed, LaneSocket, LanesDialled, ErrorMsg}
)

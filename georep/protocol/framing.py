"""Frames and the message codec: the only module that imports msgpack.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack holding
``[KIND, field, ...]``.  The decoder is fed arbitrary chunks and returns whole,
validated messages; a length above ``max_frame``, bytes that are not msgpack, an
unknown kind, a wrong field count or a field of the wrong type raise `ProtocolError`
naming the stream offset.  Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from georep.errors import ProtocolError
from georep.protocol import messages as m
from georep.protocol.delta import sums_problem

#: Data bytes per DataChunk, and the packing budget of one Blobs frame.
CHUNK_SIZE = 1 << 20
#: Largest frame accepted from a peer (a chunk plus generous room for its envelope).
MAX_FRAME = 4 * CHUNK_SIZE

_LEN = struct.Struct(">I")

Validator = Callable[[Any], Any]


def _int(v: Any) -> int:
    if type(v) is not int:
        raise TypeError("expected int")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise TypeError("expected bool")
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise TypeError("expected str")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise TypeError("expected bin")
    return v


def _xattrs(v: Any) -> list[list[bytes]]:
    if type(v) is not list:
        raise TypeError("expected array")
    for pair in v:
        if type(pair) is not list or len(pair) != 2:
            raise TypeError("expected [key, value]")
        _bytes(pair[0])
        _bytes(pair[1])
    return v


def _extents(v: Any) -> list[list[int | bytes]]:
    if type(v) is not list:
        raise TypeError("expected array")
    for pair in v:
        if type(pair) is not list or len(pair) != 2:
            raise TypeError("expected [offset, data]")
        if _int(pair[0]) < 0:
            raise TypeError("negative offset")
        _bytes(pair[1])
    return v


def _record(cls: type[Any], fields: tuple[Validator, ...]) -> Validator:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) != len(fields):
            raise TypeError(f"expected {cls.__name__} as array of {len(fields)}")
        return cls(*(f(x) for f, x in zip(fields, v, strict=True)))

    return check


def _list_of(item: Validator) -> Validator:
    def check(v: Any) -> list[Any]:
        if type(v) is not list:
            raise TypeError("expected array")
        return [item(x) for x in v]

    return check


_BY_ANNOTATION: dict[str, Validator] = {
    "int": _int,
    "bool": _bool,
    "str": _str,
    "bytes": _bytes,
    "list[list[bytes]]": _xattrs,
    "list[list[int | bytes]]": _extents,
}
#: Scalar annotations checked inline by the generated fast decoders (see `_fast_decoder`).
_INLINE = {"int": int, "bool": bool, "str": str, "bytes": bytes}


def _fast_decoder(cls: type[Any], nested: dict[str, Validator]) -> Callable[[list[Any]], Any]:
    """A decoder of ``[field, field, ...]`` into ``cls`` with every type check inlined.

    The same checks as the per-field validators above, compiled into one function per
    class: calling a validator per field cost a fifth of the agent's time on small files.
    Any failure raises TypeError; the caller then runs the per-field validators again to
    say which field was wrong.  ``nested`` converts the fields that hold records or lists.
    """

    names = [f"f{i}" for i in range(len(dataclasses.fields(cls)))]
    checks: list[str] = []
    converts: list[str] = []
    env: dict[str, Any] = {"cls": cls}
    for n, f in zip(names, dataclasses.fields(cls), strict=True):
        ann = str(f.type)
        if ann in _INLINE:
            env[f"T_{n}"] = _INLINE[ann]
            checks.append(f"type({n}) is T_{n}")
        else:
            env[f"V_{n}"] = nested[ann]
            converts.append(f"    {n} = V_{n}({n})")
    unpack = f"    {', '.join(names)}, = values" if names else ""
    test = f"    if not ({' and '.join(checks)}):\n        raise TypeError('field type')" if checks else ""
    src = "\n".join(filter(None, [
        "def decode(values):", unpack, test, *converts, f"    return cls({', '.join(names)})"]))
    exec(compile(src, f"<decoder {cls.__name__}>", "exec"), env)  # generated from the message dataclasses
    decode: Callable[[list[Any]], Any] = env["decode"]
    return decode


def _fast_records(cls: type[Any]) -> Validator:
    decode = _fast_decoder(cls, _BY_ANNOTATION)
    n = len(dataclasses.fields(cls))

    def records(v: Any) -> list[Any]:
        if type(v) is not list:
            raise TypeError("expected array")
        out = []
        for item in v:
            if type(item) is not list or len(item) != n:
                raise TypeError(f"expected {cls.__name__} as array of {n}")
            out.append(decode(item))
        return out

    return records


_BY_ANNOTATION["list[SmallFile]"] = _fast_records(m.SmallFile)
_BY_ANNOTATION["list[Result]"] = _fast_records(m.Result)
#: The same record lists, checked field by field: for saying which field was wrong.
_SLOW_NESTED = {
    name: _list_of(_record(cls, tuple(_BY_ANNOTATION[str(f.type)] for f in dataclasses.fields(cls))))
    for name, cls in (("list[SmallFile]", m.SmallFile), ("list[Result]", m.Result))
}

_SCHEMA: dict[int, tuple[type[m.Message], tuple[Validator, ...]]] = {}
for _cls in m.ALL_MESSAGES:
    if _cls.KIND in _SCHEMA:  # pragma: no cover - a programming error caught at import
        raise AssertionError(f"duplicate message kind {_cls.KIND}")
    _SCHEMA[_cls.KIND] = (_cls, tuple({**_BY_ANNOTATION, **_SLOW_NESTED}[str(f.type)]
                                      for f in dataclasses.fields(_cls)))
_FAST: dict[int, Callable[[list[Any]], Any]] = {
    cls.KIND: _fast_decoder(cls, _BY_ANNOTATION) for cls in m.ALL_MESSAGES
}


def _nonnegative(*names: str) -> Callable[[Any], str | None]:
    def check(msg: Any) -> str | None:
        for n in names:
            if getattr(msg, n) < 0:
                return f"negative {n}"
        return None

    return check


def _chunk_problem(msg: m.DataChunk) -> str | None:
    if msg.offset < 0:
        return "negative offset"
    if len(msg.data) > CHUNK_SIZE:
        return f"{len(msg.data)} bytes of data, more than {CHUNK_SIZE}"
    return None


#: Checks of values (not just types) a message must pass before it exists.
_CHECKS: dict[type[Any], Callable[[Any], str | None]] = {
    m.DataBegin: _nonnegative("size"),
    m.DataChunk: _chunk_problem,
    m.DeltaBegin: _nonnegative("size"),
    m.BlockSums: lambda msg: sums_problem(msg.block_size, msg.basis_size, msg.sums, CHUNK_SIZE),
    m.Resume: lambda msg: None if len(msg.token) == 16 else "a resume token is 16 bytes",
    m.Sealed: lambda msg: None if len(msg.token) in (0, 16) else "a seal token is 16 bytes or none",
    m.JoinLane: lambda msg: None if len(msg.token) == 32 else "a lane token is 32 bytes",
    m.DialLanes: lambda msg: (None if len(msg.token) == 32 and 0 < len(msg.path) < 108 and 0 < msg.count <= 64
                              else "lanes to dial: a 32-byte token, a socket path of 1-107 bytes, 1-64 of them"),
    m.LanesDialled: _nonnegative("count"),
    m.LaneSocket: lambda msg: (None if (len(msg.token), bool(msg.path)) in ((0, False), (32, True))
                               else "a lane socket has a 32-byte token, or neither path nor token"),
}


def _flat(cls: type[Any], nested: dict[str, Callable[[Any], list[Any]]] | None = None) -> Callable[[Any], list[Any]]:
    """A fast converter of one message class to its wire array (field order = declaration order).

    ``nested`` converts the fields that hold lists of records (Blobs.files, Results.items).
    """

    names = tuple(f.name for f in dataclasses.fields(cls))
    nested = nested or {}
    conv = [(n, nested.get(n)) for n in names]
    if all(c is None for _, c in conv):
        if len(names) == 1:
            getter1 = operator.attrgetter(names[0])
            return lambda msg: [getter1(msg)]
        if not names:
            return lambda msg: []
        getter = operator.attrgetter(*names)
        return lambda msg: list(getter(msg))

    def convert(msg: Any) -> list[Any]:
        return [getattr(msg, n) if c is None else [c(x) for x in getattr(msg, n)] for n, c in conv]

    return convert


_NESTED = {"files": _flat(m.SmallFile), "items": _flat(m.Result)}
_TO_WIRE: dict[type[Any], Callable[[Any], list[Any]]] = {cls: _flat(cls, _NESTED) for cls in m.ALL_MESSAGES}


def encode(msg: m.Message) -> bytes:
    """One frame holding ``msg``."""

    body: bytes = msgpack.packb([msg.KIND, *_TO_WIRE[type(msg)](msg)], use_bin_type=True)
    return _LEN.pack(len(body)) + body


def encode_entry(seq: int, oid: bytes, parent: bytes, name: bytes, kind: int, mode: int, uid: int, gid: int,
                 mtime_ns: int, xattrs: list[list[bytes]], size: int, target: bytes, rdev: int) -> bytes:
    """``encode(m.EntryMsg(...))`` without making the message object: once per entry of a crawl."""

    body: bytes = msgpack.packb([m.EntryMsg.KIND, seq, oid, parent, name, kind, mode, uid, gid, mtime_ns, xattrs,
                                 size, target, rdev], use_bin_type=True)
    return _LEN.pack(len(body)) + body


def encode_chunk(seq: int, offset: int, data: bytes | memoryview) -> bytes:
    """A DataChunk frame built without an intermediate message object (the hot path)."""

    body: bytes = msgpack.packb([m.DataChunk.KIND, seq, offset, data], use_bin_type=True)
    return _LEN.pack(len(body)) + body


_BIN8 = struct.Struct(">BB")
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")


def chunk_header(seq: int, offset: int, length: int) -> bytes:
    """A DataChunk frame up to its data: ``chunk_header(s, o, len(d)) + d == encode_chunk(s, o, d)``.

    The sender writes the header and then the file data itself, so a chunk is never
    copied into a msgpack buffer and again into a frame.
    """

    head: bytes = msgpack.packb([m.DataChunk.KIND, seq, offset])
    if length < 0x100:
        binh = _BIN8.pack(0xC4, length)
    elif length < 0x10000:
        binh = _BIN16.pack(0xC5, length)
    else:
        binh = _BIN32.pack(0xC6, length)
    # head is fixarray(3) + items: make it fixarray(4), the bin being the fourth item
    return _LEN.pack(len(head) + len(binh) + length) + b"\x94" + head[1:] + binh


def decode_body(body: bytes | memoryview, offset: int = 0) -> m.Message:
    """The message in one frame body; ProtocolError if it is not a valid message."""

    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_FRAME,
            max_str_len=64 * 1024,
            max_array_len=CHUNK_SIZE,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable frame at byte {offset}: {type(exc).__name__}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError(f"frame at byte {offset} is not a message")
    spec = _SCHEMA.get(obj[0])
    if spec is None:
        raise ProtocolError(f"unknown message kind {obj[0]} at byte {offset}")
    cls, fields = spec
    if len(obj) - 1 != len(fields):
        raise ProtocolError(f"{cls.__name__} at byte {offset}: {len(obj) - 1} fields, expected {len(fields)}")
    try:
        msg: m.Message = _FAST[obj[0]](obj[1:])
    except (TypeError, ValueError):
        try:  # again, field by field, to say which one is wrong
            [f(v) for f, v in zip(fields, obj[1:], strict=True)]
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{cls.__name__} at byte {offset}: {exc}") from None
        raise ProtocolError(f"{cls.__name__} at byte {offset}: invalid fields") from None  # pragma: no cover
    check = _CHECKS.get(cls)
    if check is not None:
        problem = check(msg)
        if problem is not None:
            raise ProtocolError(f"{cls.__name__} at byte {offset}: {problem}")
    return msg


class FrameDecoder:
    """Bytes in, messages out; keeps an incomplete frame until the rest arrives."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._consumed = 0  # stream offset of self._buf[0], for error messages

    def feed(self, data: bytes) -> list[m.Message]:
        self._buf += data
        out: list[m.Message] = []
        pos = 0
        buf = self._buf
        with memoryview(buf) as view:  # frames are decoded in place, not copied out first
            while len(buf) - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if n > self._max:
                    raise ProtocolError(
                        f"frame of {n} bytes at byte {self._consumed + pos} exceeds the limit of {self._max}"
                    )
                if len(buf) - pos - 4 < n:
                    break
                with view[pos + 4 : pos + 4 + n] as body:
                    out.append(decode_body(body, self._consumed + pos))
                pos += 4 + n
        if pos:
            del buf[:pos]
            self._consumed += pos
        return out

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame (non-zero at end of stream means truncation)."""

        return len(self._buf)

"""The frame codec: round trips of every message, and every way a stream can be broken."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from georep.errors import ProtocolError
from georep.protocol import messages as m
from georep.protocol.framing import (
    CHUNK_SIZE,
    MAX_FRAME,
    FrameDecoder,
    chunk_header,
    decode_body,
    encode,
    encode_chunk,
    encode_entry,
)

ids = st.binary(min_size=16, max_size=16)
names = st.binary(min_size=0, max_size=300)
u64 = st.integers(min_value=0, max_value=2**63 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=50)
xattrs = st.lists(st.lists(st.binary(max_size=40), min_size=2, max_size=2), max_size=4)
small_files = st.builds(
    m.SmallFile,
    u64,
    u64,
    st.lists(st.tuples(u64, st.binary(max_size=64)).map(list), max_size=3),
    st.binary(min_size=16, max_size=16),
    i64,
)
results = st.builds(m.Result, u64, st.sampled_from([m.DONE, m.NEED, m.FAILED]), text)

lane_tokens = st.binary(min_size=32, max_size=32)

BY_KIND: dict[type[m.Message], st.SearchStrategy[m.Message]] = {
    m.Hello: st.builds(m.Hello, u64, text, text),
    m.HelloOk: st.builds(m.HelloOk, u64, text, st.booleans()),
    m.EntryMsg: st.builds(
        m.EntryMsg, u64, ids, ids, names, st.integers(1, 7), u64, u64, u64, i64, xattrs, u64, names, u64
    ),
    m.LinkMsg: st.builds(m.LinkMsg, u64, ids, ids, names),
    m.MoveMsg: st.builds(m.MoveMsg, u64, ids, ids, names),
    m.RemoveMsg: st.builds(m.RemoveMsg, u64, ids, ids, names),
    m.DataBegin: st.builds(m.DataBegin, u64, u64),
    m.DataChunk: st.builds(m.DataChunk, u64, u64, st.binary(max_size=2000)),
    m.DataEnd: st.builds(m.DataEnd, u64, st.binary(min_size=16, max_size=16), i64),
    m.Blobs: st.builds(m.Blobs, st.lists(small_files, max_size=4)),
    m.DataAbort: st.builds(m.DataAbort, u64, text),
    m.Lane: st.builds(m.Lane),
    m.Adopt: st.builds(m.Adopt, u64, names, u64, i64),
    m.Staged: st.builds(m.Staged, u64, names),
    m.Ping: st.builds(m.Ping, u64),
    m.Pong: st.builds(m.Pong, u64),
    m.Resume: st.builds(m.Resume, ids),
    m.Resumed: st.builds(m.Resumed, st.booleans()),
    m.Seal: st.just(m.Seal()),
    m.Sealed: st.builds(m.Sealed, st.one_of(st.just(b""), ids)),
    m.OpenLanes: st.just(m.OpenLanes()),
    m.JoinLane: st.builds(m.JoinLane, lane_tokens),
    m.LaneSocket: st.one_of(st.just(m.LaneSocket(b"", b"")),
                            st.builds(m.LaneSocket, st.binary(min_size=1, max_size=120), lane_tokens)),
    m.DialLanes: st.builds(m.DialLanes, st.binary(min_size=1, max_size=107), st.integers(1, 64), lane_tokens),
    m.LanesDialled: st.builds(m.LanesDialled, st.integers(0, 64), st.text(max_size=40)),
    m.Finish: st.builds(m.Finish, st.booleans(), u64, st.booleans()),
    m.Bye: st.just(m.Bye()),
    m.Results: st.builds(m.Results, st.lists(results, max_size=5)),
    m.Finished: st.builds(m.Finished, u64),
    m.ErrorMsg: st.builds(m.ErrorMsg, text, text, text),
}


@st.composite
def block_sums(draw: st.DrawFn) -> m.BlockSums:
    bs = CHUNK_SIZE << draw(st.integers(0, 3))
    blocks = draw(st.integers(0, 5))
    size = 0 if blocks == 0 else (blocks - 1) * bs + draw(st.integers(1, bs))
    return m.BlockSums(draw(u64), bs, size, draw(st.binary(min_size=16 * blocks, max_size=16 * blocks)))


BY_KIND[m.DeltaBegin] = st.builds(m.DeltaBegin, u64, u64)
BY_KIND[m.BlockSums] = block_sums()
MESSAGES = st.one_of(*BY_KIND.values())


@settings(max_examples=500, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_round_trip_whole_and_byte_by_byte(msgs: list[m.Message]) -> None:
    stream = b"".join(encode(x) for x in msgs)
    assert FrameDecoder().feed(stream) == msgs
    dec = FrameDecoder()
    out: list[m.Message] = []
    for i in range(len(stream)):
        out.extend(dec.feed(stream[i : i + 1]))
    assert out == msgs
    assert dec.pending == 0


@settings(max_examples=500, deadline=None)
@given(MESSAGES, st.binary(min_size=1, max_size=64))
def test_trailing_garbage_is_held_or_rejected_never_misread(msg: m.Message, garbage: bytes) -> None:
    dec = FrameDecoder()
    try:
        out = dec.feed(encode(msg) + garbage)
    except ProtocolError:
        return  # the garbage formed a bad frame: rejected
    assert out[0] == msg
    # anything decoded from garbage would have had to be a valid message; an incomplete
    # remainder stays pending and is reported as truncation at end of stream
    assert dec.pending > 0 or len(out) > 1


def test_chunk_fast_path_equals_message() -> None:
    assert encode_chunk(7, 4096, b"abc") == encode(m.DataChunk(7, 4096, b"abc"))


@settings(max_examples=300, deadline=None)
@given(u64, u64, st.sampled_from([0, 1, 255, 256, 65535, 65536, 65537, CHUNK_SIZE]))
def test_chunk_header_then_data_is_the_chunk_frame(seq: int, offset: int, length: int) -> None:
    data = bytes([length % 251]) * length
    frame = chunk_header(seq, offset, length) + data
    assert frame == encode_chunk(seq, offset, data) == encode(m.DataChunk(seq, offset, data))
    assert FrameDecoder().feed(frame) == [m.DataChunk(seq, offset, data)]


@settings(max_examples=300, deadline=None)
@given(BY_KIND[m.EntryMsg])
def test_entry_fast_path_equals_message(msg: m.EntryMsg) -> None:
    fields = (msg.seq, msg.id, msg.parent, msg.name, msg.kind, msg.mode, msg.uid, msg.gid, msg.mtime_ns, msg.xattrs,
              msg.size, msg.target, msg.rdev)
    assert encode_entry(*fields) == encode(msg)
    assert FrameDecoder().feed(encode_entry(*fields)) == [msg]


def test_oversized_frame_rejected_before_reading_it() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        dec.feed(struct.pack(">I", MAX_FRAME + 1))


def test_truncated_frame_stays_pending() -> None:
    frame = encode(m.Finished(3))
    dec = FrameDecoder()
    assert dec.feed(frame[:-1]) == []
    assert dec.pending == len(frame) - 1


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xc1", "undecodable"),  # reserved msgpack byte
        (msgpack.packb({"a": 1}), "undecodable"),  # maps are never part of the protocol
        (msgpack.packb(5), "not a message"),
        (msgpack.packb([]), "not a message"),
        (msgpack.packb([999, 1]), "unknown message kind"),
        (msgpack.packb([m.Finished.KIND]), "0 fields, expected 1"),
        (msgpack.packb([m.Finished.KIND, "three"]), "expected int"),
        (msgpack.packb([m.LinkMsg.KIND, 1, "str-not-bin", b"x" * 16, b"n"], use_bin_type=True), "expected bin"),
        (msgpack.packb([m.Finish.KIND, 1, 2, True]), "expected bool"),
        (msgpack.packb([m.Blobs.KIND, [[1, 2, [[-1, b"x"]], b"d" * 16, 0]]], use_bin_type=True), "negative"),
        (msgpack.packb([m.DataChunk.KIND, 1, -5, b"x"], use_bin_type=True), "negative offset"),
        (msgpack.packb([m.DataChunk.KIND, 1, 0, b"x" * (CHUNK_SIZE + 1)], use_bin_type=True), "more than"),
        (msgpack.packb([m.DataBegin.KIND, 1, -1]), "negative size"),
        (msgpack.packb([m.DeltaBegin.KIND, 1, -1]), "negative size"),
        (msgpack.packb([m.DeltaBegin.KIND, 1, b"x"], use_bin_type=True), "expected int"),
        (msgpack.packb([m.BlockSums.KIND, 1, CHUNK_SIZE, 10, "s" * 16]), "expected bin"),
        (msgpack.packb([m.BlockSums.KIND, 1, 0, 10, b""], use_bin_type=True), "block size"),
        (msgpack.packb([m.BlockSums.KIND, 1, 4096, 10, b"s" * 16], use_bin_type=True), "block size"),
        (msgpack.packb([m.BlockSums.KIND, 1, CHUNK_SIZE, -1, b""], use_bin_type=True), "negative basis"),
        (msgpack.packb([m.BlockSums.KIND, 1, CHUNK_SIZE, 10, b"s" * 15], use_bin_type=True), "for 1 blocks"),
        (msgpack.packb([m.BlockSums.KIND, 1, CHUNK_SIZE, CHUNK_SIZE + 1, b"s" * 16], use_bin_type=True), "for 2"),
        (msgpack.packb([m.BlockSums.KIND, 1, CHUNK_SIZE, 10], use_bin_type=True), "3 fields, expected 4"),
        (msgpack.packb([m.DialLanes.KIND, b"/tmp/x.sock", 4, b"k" * 31], use_bin_type=True), "lanes to dial"),
        (msgpack.packb([m.DialLanes.KIND, b"", 4, b"k" * 32], use_bin_type=True), "lanes to dial"),
        (msgpack.packb([m.DialLanes.KIND, b"/" * 108, 4, b"k" * 32], use_bin_type=True), "lanes to dial"),
        (msgpack.packb([m.DialLanes.KIND, b"/tmp/x.sock", 0, b"k" * 32], use_bin_type=True), "lanes to dial"),
        (msgpack.packb([m.DialLanes.KIND, b"/tmp/x.sock", 65, b"k" * 32], use_bin_type=True), "lanes to dial"),
        (msgpack.packb([m.LanesDialled.KIND, -1, ""], use_bin_type=True), "negative count"),
    ],
)
def test_bad_bodies_are_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_body(body, 0)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        FrameDecoder().feed(data)


def test_every_message_kind_is_covered_by_the_strategies() -> None:
    assert set(BY_KIND) == set(m.ALL_MESSAGES)
    assert len({cls.KIND for cls in m.ALL_MESSAGES}) == len(m.ALL_MESSAGES)

"""Block deltas, sans-IO: whatever the basis and the new content, the rebuilt file is the new one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from georep.protocol.delta import (
    HASH_LEN,
    BlockMatcher,
    DeltaEncoder,
    DeltaError,
    Rebuild,
    basis_sums,
    block_size_for,
    pieces,
    sums_problem,
)
from georep.protocol.digest import ExtentDigest


def full_send_digest(data: bytes, chunk: int) -> bytes:
    """The digest a full send of this dense content carries (`FrameWriter.stream`)."""

    d = ExtentDigest()
    for off in range(0, len(data), chunk):
        d.update(off, data[off : off + chunk])
    return d.finish(len(data))


def run_delta(basis: bytes, new: bytes, chunk: int, block_size: int) -> tuple[bytes, bytes, bytes, DeltaEncoder]:
    """Both ends in memory: (rebuilt content, the sender's digest, the agent's digest, the encoder)."""

    sums = basis_sums(basis, block_size)
    assert sums_problem(block_size, len(basis), sums, chunk) is None
    enc = DeltaEncoder(BlockMatcher(block_size, len(basis), sums), len(new), chunk)
    sent: list[tuple[int, bytes]] = []
    while want := enc.want():
        sent.extend((off, bytes(p)) for off, p in enc.feed(new[enc.pos : enc.pos + want]))
    sender_digest = enc.finish()

    # the agent: copy the gaps from the basis, write the chunks, digest both on the grid
    out = bytearray(len(new))
    digest = ExtentDigest()
    rebuild = Rebuild(len(new), len(basis))

    def copy(gap: tuple[int, int] | None) -> None:
        if gap is None:
            return
        off, n = gap
        out[off : off + n] = basis[off : off + n]
        for p, k in pieces(off, off + n, chunk):
            digest.update(p, bytes(out[p : p + k]))

    for off, data in sent:
        assert len(data) <= chunk
        copy(rebuild.chunk(off, len(data)))
        out[off : off + len(data)] = data
        digest.update(off, data)
    copy(rebuild.end())
    return bytes(out), sender_digest, digest.finish(len(new)), enc


def mutate(basis: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(basis)
    for kind, at, payload in ops:
        at = at % (len(data) + 1)
        if kind == 0:  # overwrite
            data[at : at + len(payload)] = payload
        elif kind == 1:  # insert
            data[at:at] = payload
        elif kind == 2:  # truncate
            del data[at:]
        else:  # append
            data += payload
    return bytes(data)


ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.binary(max_size=40)), max_size=4)


@settings(max_examples=400, deadline=None)
@given(
    basis=st.binary(max_size=300),
    edits=ops,
    unrelated=st.none() | st.binary(max_size=300),
    chunk=st.sampled_from([1, 4, 8, 16]),
    shift=st.integers(0, 3),
)
def test_rebuilt_file_is_the_new_content(
    basis: bytes, edits: list[tuple[int, int, bytes]], unrelated: bytes | None, chunk: int, shift: int
) -> None:
    new = mutate(basis, edits) if unrelated is None else unrelated
    block_size = chunk << shift
    rebuilt, sender_digest, agent_digest, enc = run_delta(basis, new, chunk, block_size)
    assert rebuilt == new
    assert sender_digest == agent_digest == full_send_digest(new, chunk)
    assert enc.sent + enc.matched == len(new)


@settings(max_examples=200, deadline=None)
@given(basis=st.binary(min_size=1, max_size=400), tail=st.binary(min_size=1, max_size=100))
def test_an_append_sends_about_the_appended_bytes(basis: bytes, tail: bytes) -> None:
    bs = 16
    _, _, _, enc = run_delta(basis, basis + tail, 4, bs)
    # at most the basis's last (partial) block again, plus the new bytes
    assert enc.sent <= len(tail) + bs
    assert enc.matched >= len(basis) - bs


def test_a_changed_basis_is_caught_by_the_digest() -> None:
    """The agent copies from a basis that changed after it was hashed: the digests differ."""

    basis = bytes(range(256)) * 4
    new = basis + b"appended"
    sums = basis_sums(basis, 16)
    enc = DeltaEncoder(BlockMatcher(16, len(basis), sums), len(new), 8)
    sent = []
    while want := enc.want():
        sent.extend((off, bytes(p)) for off, p in enc.feed(new[enc.pos : enc.pos + want]))
    changed = b"X" + basis[1:]  # the basis on disk, changed in place after hashing
    digest = ExtentDigest()
    rebuild = Rebuild(len(new), len(basis))
    for off, data in sent:
        gap = rebuild.chunk(off, len(data))
        if gap:
            for p, k in pieces(gap[0], gap[0] + gap[1], 8):
                digest.update(p, changed[p : p + k])
        digest.update(off, data)
    assert rebuild.end() is None
    assert digest.finish(len(new)) != enc.finish()


def test_rebuild_refuses_what_the_basis_cannot_fill() -> None:
    r = Rebuild(100, 40)
    assert r.chunk(10, 5) == (0, 10)
    with pytest.raises(DeltaError, match="backwards"):
        r.chunk(12, 1)
    with pytest.raises(DeltaError, match="neither sent nor in the basis"):
        r.chunk(60, 10)  # the gap 15..60 runs past the basis's 40 bytes
    r = Rebuild(100, 40)
    with pytest.raises(DeltaError, match="beyond the new size"):
        r.chunk(95, 10)
    r = Rebuild(50, 40)
    r.chunk(0, 40)
    with pytest.raises(DeltaError):
        r.end()  # 40..50 never sent


def test_block_size_keeps_the_sums_frame_small() -> None:
    mib = 1 << 20
    assert block_size_for(256 * mib, mib) == mib
    assert block_size_for(64 * 1024 * mib, mib) == mib
    bs = block_size_for(1 << 40, mib)  # 1 TiB
    assert bs == 16 * mib and (1 << 40) // bs * HASH_LEN == 1 << 20


def test_pieces_follow_the_grid() -> None:
    assert list(pieces(0, 10, 4)) == [(0, 4), (4, 4), (8, 2)]
    assert list(pieces(6, 13, 4)) == [(6, 2), (8, 4), (12, 1)]
    assert list(pieces(5, 5, 4)) == []

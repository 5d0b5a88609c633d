"""Block-level delta of a changed file against the copy the agent already has (sans-IO).

Theory of operation
-------------------
When the agent needs new data for a regular file it already holds a copy of (the
*basis*), it answers `BlockSums` instead of a plain NEED: the xxh3-128 of every
``block_size`` block of the basis.  The sender reads its file block by block and sends
only the blocks whose hash differs, or that lie beyond the basis, as ordinary DataChunk
frames after a `DeltaBegin`; the rule is that **every byte not sent is copied from the
basis at the same offset**.  The agent builds the new file in staging from the two,
recomputes the whole-file digest over the result and publishes it with one rename, as
for a full transfer.

The digest is the ordinary `ExtentDigest` of a dense file cut on the ``chunk`` grid
(offsets ``k × chunk``): exactly what a full send of the same dense file carries.  Both
ends feed it piece by piece (`pieces`), whether a piece was sent or copied, so a basis
that changed behind the agent's back, a lost chunk or a wrong range all show as a
digest mismatch and nothing is published.

Nothing here does I/O: `DeltaEncoder` (with `BlockMatcher`) decides, block by block,
what the sender sends and computes its digest; `Rebuild` tells the agent which basis
ranges to copy around the chunks it receives.
"""

from __future__ import annotations

from collections.abc import Iterator

import xxhash

from georep.protocol.digest import ExtentDigest

#: Bytes per block hash (xxh3-128).
HASH_LEN = 16
#: A basis smaller than this is not worth a round of block hashes: the file is sent whole.
MIN_BASIS = 1 << 20
#: Blocks per file at most: the BlockSums frame stays ≤ 1 MiB (the block size grows instead).
MAX_BLOCKS = 1 << 16


class DeltaError(Exception):
    """The delta cannot be applied to this basis (the agent then asks for the whole file)."""


def block_hash(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def block_size_for(basis_size: int, chunk: int, max_blocks: int = MAX_BLOCKS) -> int:
    """The block size the agent uses: ``chunk`` doubled until the file has ≤ ``max_blocks`` blocks."""

    bs = chunk
    while block_count(basis_size, bs) > max_blocks:
        bs *= 2
    return bs


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def sums_problem(block_size: int, basis_size: int, sums: bytes, chunk: int) -> str | None:
    """Why a BlockSums is malformed (None when it is well formed)."""

    if block_size <= 0 or block_size % chunk:
        return f"block size {block_size} is not a positive multiple of {chunk}"
    if basis_size < 0:
        return "negative basis size"
    if len(sums) != HASH_LEN * block_count(basis_size, block_size):
        return f"{len(sums)} bytes of block hashes for {block_count(basis_size, block_size)} blocks"
    return None


def basis_sums(basis: bytes, block_size: int) -> bytes:
    """The block hashes of an in-memory basis (the agent streams the same from its file)."""

    return b"".join(block_hash(basis[i : i + block_size]) for i in range(0, len(basis), block_size))


def pieces(offset: int, end: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``[offset, end)`` cut on the ``chunk`` grid: the units the digest is fed in."""

    pos = offset
    while pos < end:
        n = min(chunk - pos % chunk, end - pos)
        yield pos, n
        pos += n


class BlockMatcher:
    """Sender side: is block ``i`` of the new file already on the agent, at the same offset?"""

    __slots__ = ("block_size", "basis_size", "_sums", "_count")

    def __init__(self, block_size: int, basis_size: int, sums: bytes) -> None:
        self.block_size = block_size
        self.basis_size = basis_size
        self._sums = sums
        self._count = block_count(basis_size, block_size)

    def unchanged(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` (block ``index`` of the new file, whole) equals the basis block."""

        if index >= self._count:
            return False
        start = index * self.block_size
        if len(data) != min(self.block_size, self.basis_size - start):
            return False
        return block_hash(data) == self._sums[index * HASH_LEN : (index + 1) * HASH_LEN]


class DeltaEncoder:
    """Sender side of one delta: feed the new file's blocks in order, get the pieces to send.

    ``want()`` is how many bytes to read next (at offset ``pos``; 0 once done); ``feed``
    takes them and returns the ``(offset, bytes)`` pieces (≤ ``chunk`` each, on the chunk
    grid) that must travel as DataChunk frames: none when the block equals the basis's.
    A short block (the file shrank while being read) ends the file.
    """

    __slots__ = ("matcher", "size", "chunk", "pos", "sent", "matched", "_index", "_done", "_digest")

    def __init__(self, matcher: BlockMatcher, size: int, chunk: int) -> None:
        self.matcher = matcher
        self.size = size
        self.chunk = chunk
        self.pos = 0
        self.sent = 0  # bytes to send
        self.matched = 0  # bytes the agent copies from the basis
        self._index = 0
        self._done = False
        self._digest = ExtentDigest()

    def want(self) -> int:
        return 0 if self._done else min(self.matcher.block_size, self.size - self.pos)

    def feed(self, block: bytes) -> list[tuple[int, bytes]]:
        want = self.want()
        same = len(block) == want and self.matcher.unchanged(self._index, block)
        out: list[tuple[int, bytes]] = []
        for off, n in pieces(self.pos, self.pos + len(block), self.chunk):
            # a block of one piece (the usual case: blocks of one chunk) is passed on uncopied
            piece = block if n == len(block) else block[off - self.pos : off - self.pos + n]
            self._digest.update(off, piece)
            if not same:
                out.append((off, piece))
        if same:
            self.matched += len(block)
        else:
            self.sent += len(block)
        self.pos += len(block)
        self._index += 1
        if len(block) < want or self.pos >= self.size:
            self._done = True
        return out

    def finish(self) -> bytes:
        """The digest of the whole new content (what DataEnd carries)."""

        return self._digest.finish(self.size)


class Rebuild:
    """Agent side: which basis ranges fill the gaps between the chunks received.

    Chunks must arrive in increasing offset order without overlap; each call returns the
    range ``(offset, length)`` to copy from the basis first (or None).  A gap the basis
    cannot fill (beyond its end) raises `DeltaError`.
    """

    __slots__ = ("size", "basis_size", "pos")

    def __init__(self, size: int, basis_size: int) -> None:
        self.size = size
        self.basis_size = basis_size
        self.pos = 0  # everything before this offset is written

    def chunk(self, offset: int, length: int) -> tuple[int, int] | None:
        if offset < self.pos:
            raise DeltaError(f"chunk at {offset} overlaps or goes backwards (expected ≥ {self.pos})")
        if offset + length > self.size:
            raise DeltaError(f"chunk at {offset} of {length} bytes ends beyond the new size {self.size}")
        gap = self._gap(offset)
        self.pos = offset + length
        return gap

    def end(self) -> tuple[int, int] | None:
        """The last range to copy once every chunk arrived."""

        gap = self._gap(self.size)
        self.pos = self.size
        return gap

    def _gap(self, upto: int) -> tuple[int, int] | None:
        if upto <= self.pos:
            return None
        if upto > self.basis_size:
            raise DeltaError(f"bytes {self.pos}–{upto} were neither sent nor in the basis ({self.basis_size} bytes)")
        return self.pos, upto - self.pos

"""The end-to-end file digest: xxh3-128 over the extents as sent, then the size.

Sparse files travel as data extents (holes are left out), so the digest covers each
extent's offset and length as well as its bytes, and finally the file size: a chunk
landing at the wrong offset, a lost chunk or a wrong final length all change it.  The
sender computes it while reading; the agent computes it again from what it wrote and
refuses to publish on a mismatch.  A delta (`georep.protocol.delta`) carries the same
digest of the whole new content: the agent feeds it the ranges it copied from its old
copy as well as the chunks it received.
"""

from __future__ import annotations

import struct

import xxhash

_EXTENT = struct.Struct("<QQ")
_SIZE = struct.Struct("<Q")


class ExtentDigest:
    """Incremental digest; extents must be fed in increasing offset order."""

    __slots__ = ("_h", "_next")

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self._next = 0

    def update(self, offset: int, data: bytes | memoryview) -> None:
        if offset < self._next:
            raise ValueError("extents must not overlap or go backwards")
        self._h.update(_EXTENT.pack(offset, len(data)))
        self._h.update(data)
        self._next = offset + len(data)

    @property
    def next_offset(self) -> int:
        """Where the last extent fed ended: the next one may not start before it."""

        return self._next

    def finish(self, size: int) -> bytes:
        self._h.update(_SIZE.pack(size))
        return self._h.digest()

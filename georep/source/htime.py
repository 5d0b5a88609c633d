"""A brick's HTIME index read as GlusterFS appends to it, holding only what the reader has not passed.

GlusterFS lists every rollover of the changelog in ``htime/HTIME.<ts>`` (one NUL-terminated
path per rollover, appended; a new file only when the changelog is turned off and on).  At the
default rollover of 15 s that is 5,760 listings a day, two million a year, and the file is never
trimmed.  The reader (`georep.source.brick.BrickJournal`) used to read and parse the whole file
again at each rollover, hold every listing, and, for each journal it read, scan every later
listing for a repeat of its name: catching up on 5,760 journals took 2.4 s, on 11,520 5.8 s
(quadratic), and a daemon's memory and CPU per rollover grew with the brick's history.

`HtimeTail` reads only the bytes appended since its last look, keeps the listings from the
reader's position on (8 bytes each, in an array), and knows for each listing whether its name
comes again later (`listed_again`) from a map of the names ahead of the reader.  Memory follows
the backlog, not the history; each listing is parsed once.
"""

from __future__ import annotations

import os
from array import array
from typing import NamedTuple

from georep.source.changelog import parse_htime

#: Bytes of HTIME read at a time: a backlog of any length is parsed in bounded pieces.
READ = 1 << 20

_EMPTY = 1  # lower-case ``changelog.<ts>``: the journal was empty and never kept
_REPEAT = 2  # the same name was listed just before, in the same second (see `Listing.repeat`)
_SHIFT = 2


class Listing(NamedTuple):
    """One rollover listed in HTIME."""

    name: bytes  # the journal's file name, ``CHANGELOG.<ts>`` (or ``changelog.<ts>`` when empty)
    ts: int  # the rollover's unix time (second granularity)
    empty: bool  # the journal was empty and never kept
    #: the same name was listed earlier in the run of listings of that second: a rollover of the
    #: same name replaced that journal (GlusterFS's rollover bug; counted, see BrickJournal).  The
    #: repeat is counted, not the first listing: a reader following the live journal read and
    #: passed the first before GlusterFS appended the second; every reader passes the repeat.  A
    #: name is a second, and HTIME is in rollover order: only that run needs a look.
    repeat: bool


class HtimeTail:
    """The listings of one HTIME file from ``keep_from`` on, read as the file grows.

    Indexes are those of the whole file (the first listing is 0).  `passed` lets listings
    before the reader's position go; the one just before it is kept (its time bounds a gap).
    ``keep_from`` None: the reader starts at the end of the file, whatever it is by the first
    `refresh` (then it says where, by `passed`); until then only the last listing is kept.
    """

    def __init__(self, path: bytes, keep_from: int | None) -> None:
        self.path = path
        self._ino = -1
        self._read = 0  # bytes parsed: up to and including the last complete listing's NUL
        self.listed = 0  # listings in the file so far
        self._start = 0  # index of _codes[0]
        self._codes = array("q")  # ts << _SHIFT | _REPEAT | _EMPTY, for indexes _start..listed-1
        self._odd: dict[int, bytes] = {}  # index -> name, where it is not the canonical spelling
        self._keep_from = keep_from
        #: upper-case names listed at or after the reader (by their second, or as spelt where that
        #: is not the canonical spelling): the index of their last listing
        self._last_at: dict[int | bytes, int] = {}
        self._run_ts = -1  # the second of the run of listings being parsed, and the names it listed
        self._run_names: set[bytes] = set()

    @property
    def held(self) -> int:
        """Listings held (from the one before the reader's position on)."""

        return len(self._codes)

    @property
    def ahead(self) -> int:
        """Names held in the map of what is listed at or after the reader's position."""

        return len(self._last_at)

    def refresh(self) -> None:
        """Parse what was appended since the last call (complete listings only).

        A file replaced or shorter than what was read (GlusterFS never does either) is read
        again from its start, as a new one.
        """

        st = os.stat(self.path)
        if st.st_ino != self._ino or st.st_size < self._read:
            if self._ino != -1:
                self._reset()
            self._ino = st.st_ino
        if st.st_size == self._read:
            return
        with open(self.path, "rb") as f:
            while True:
                data = os.pread(f.fileno(), READ, self._read)
                if not data:
                    return
                idx = parse_htime(os.fsdecode(self.path), data, start=self._read)
                if not idx.entries:
                    return  # only an incomplete listing: read again later
                for e in idx.entries:
                    self._append(e.path.rpartition(b"/")[2], e.ts, e.empty)
                self._read += len(data) - len(idx.partial)

    def _reset(self) -> None:
        self._read = self.listed = self._start = 0
        self._codes = array("q")
        self._odd.clear()
        self._last_at.clear()
        self._run_ts = -1
        self._run_names.clear()

    def _append(self, name: bytes, ts: int, empty: bool) -> None:
        i = self.listed
        self.listed += 1
        if ts != self._run_ts:
            self._run_ts = ts
            self._run_names.clear()
        repeat = name in self._run_names
        self._run_names.add(name)
        odd = name != _canonical(ts, empty)
        if not empty and self._keep_from is not None and i >= self._keep_from:
            self._last_at[name if odd else ts] = i
        if self._keep_from is None:  # the reader starts after the last listing: only it is kept
            del self._codes[:]
            self._odd.clear()
        elif i + 1 < self._keep_from:
            return  # behind the reader, and not the listing just before it: not kept
        if not self._codes:
            self._start = i
        self._codes.append(ts << _SHIFT | (_REPEAT if repeat else 0) | (_EMPTY if empty else 0))
        if odd:
            self._odd[i] = name

    def entry(self, i: int) -> Listing:
        """Listing ``i`` (from the one before the reader's position to the last one listed)."""

        if not self._start <= i < self.listed:
            raise IndexError(f"HTIME listing {i} is not held (held: {self._start}..{self.listed - 1})")
        code = self._codes[i - self._start]
        ts, empty = code >> _SHIFT, bool(code & _EMPTY)
        return Listing(self._odd.get(i) or _canonical(ts, empty), ts, empty, bool(code & _REPEAT))

    def listed_again(self, i: int) -> bool:
        """Whether the name of listing ``i`` (at or after the reader's position) is listed again later."""

        e = self.entry(i)
        return not e.empty and self._last_at.get(self._odd.get(i) or e.ts, i) > i

    def passed(self, i: int) -> None:
        """The reader is at listing ``i``: what comes before the one just before it can go."""

        if self._keep_from is None:
            self._keep_from = i  # nothing ahead of the reader was listed yet: no name to forget
        if i <= self._keep_from:
            return
        for j in range(max(self._keep_from, self._start), min(i, self.listed)):
            key = self._odd.get(j) or self._codes[j - self._start] >> _SHIFT
            if self._last_at.get(key) == j:
                del self._last_at[key]
        self._keep_from = i
        drop = min(i - 1, self.listed) - self._start
        if drop > 0 and drop * 2 >= len(self._codes):  # in bulk, now and then: amortised O(1) a listing
            del self._codes[:drop]
            self._start += drop
            for k in [k for k in self._odd if k < self._start]:
                del self._odd[k]


def _canonical(ts: int, empty: bool) -> bytes:
    return b"%s.%d" % (b"changelog" if empty else b"CHANGELOG", ts)

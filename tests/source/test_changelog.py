"""The changelog parser against real GlusterFS 10.3 journals, a test-side writer and fuzzing.

Every decoder is fed whole, one byte at a time and with trailing garbage (h11's habit):
a reader following the live CHANGELOG sees reads that stop anywhere.
"""

from __future__ import annotations

import contextlib
import random
import re
import uuid
from pathlib import Path

import pytest
from corpus import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from georep.errors import ChangelogFormatError
from georep.source.changelog import (
    ChangelogParser,
    DataRecord,
    EntryRecord,
    Fop,
    MetaRecord,
    Record,
    parse_htime,
    parse_journal,
)

JOURNALS = sorted(p for p in CORPUS.rglob("CHANGELOG*") if p.is_file() and "csnap" not in p.parts)
HTIMES = sorted(p for p in CORPUS.rglob("HTIME.*") if p.is_file())

V11 = b"GlusterFS Changelog | version: v1.1 | encoding : 2\n"
V12 = b"GlusterFS Changelog | version: v1.2 | encoding : 2\n"
ROOT = bytes(15) + b"\x01"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CORPUS)) for p in paths]


def _feed_chunks(name: str, data: bytes, cuts: list[int]) -> list[Record]:
    p = ChangelogParser(name)
    out: list[Record] = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        out += p.feed(data[prev:c])
        prev = c
    p.close()
    return out


# -- a test-side writer (mirrors changelog-encoders.c) --------------------------------


def _g(gfid: bytes) -> bytes:
    return str(uuid.UUID(bytes=gfid)).encode()


def write_record(rec: Record, version: tuple[int, int]) -> bytes:
    if isinstance(rec, DataRecord):
        return b"D" + _g(rec.gfid) + b"\0"
    if isinstance(rec, MetaRecord):
        return b"M" + _g(rec.gfid) + b"\0" + str(int(rec.fop)).encode() + b"\0"
    out = [b"E" + _g(rec.gfid), str(int(rec.fop)).encode()]
    entry = _g(rec.pargfid) + b"/" + rec.name
    if rec.fop in (Fop.CREATE, Fop.MKDIR, Fop.MKNOD):
        out += [str(rec.mode).encode(), str(rec.uid).encode(), str(rec.gid).encode(), entry]
    elif rec.fop is Fop.RENAME:
        assert rec.new_pargfid is not None and rec.new_name is not None
        out += [entry, _g(rec.new_pargfid) + b"/" + rec.new_name]
    elif rec.fop in (Fop.UNLINK, Fop.RMDIR) and version == (1, 2):
        # del_entry_fn: an empty path is written as an extra NUL
        out += [entry, rec.path if rec.path else b"\0"]
    else:
        out += [entry]
    return b"\0".join(out) + b"\0"


def write_journal(records: list[Record], version: tuple[int, int]) -> bytes:
    head = V11 if version == (1, 1) else V12
    return head + b"".join(write_record(r, version) for r in records)


# -- the real corpus ------------------------------------------------------------------


def test_corpus_is_there() -> None:
    assert len(JOURNALS) >= 20, f"corpus not found under {CORPUS} (set GEOREP_SHARED)"
    assert HTIMES


@pytest.mark.parametrize("path", JOURNALS, ids=_ids(JOURNALS))
def test_corpus_journal_whole_and_byte_by_byte(path: Path) -> None:
    data = path.read_bytes()
    whole = parse_journal(str(path), data)
    assert _feed_chunks(str(path), data, list(range(len(data)))) == whole
    # a read boundary at every possible place, two at a time
    rng = random.Random(path.name)
    for _ in range(20):
        assert _feed_chunks(str(path), data, rng.sample(range(len(data)), min(3, len(data)))) == whole
    # offsets point at the record's type byte
    for rec in whole:
        assert data[rec.offset : rec.offset + 1] in (b"D", b"M", b"E")
    # and the writer reproduces the file byte for byte
    assert write_journal(whole, (1, 2)) == data


GARBAGE = [
    b"X",
    b"\0",
    b"garbage\0",
    b"E" + b"z" * 36 + b"\0",
    b"D00000000-0000-0000-0000-00000000000",  # partial record
    b"D00000000-0000-0000-0000-000000000001",  # complete field missing its NUL
    b"E00000000-0000-0000-0000-000000000001\x0023\x00",  # record cut after the fop
    b"M00000000-0000-0000-0000-000000000001\x0013\x00",  # WRITE is not a metadata fop
    b"\xff" * 5000,
]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("path", JOURNALS, ids=_ids(JOURNALS))
def test_corpus_journal_with_trailing_garbage(path: Path, garbage: bytes) -> None:
    data = path.read_bytes() + garbage
    for cuts in ([], list(range(len(data)))):
        with pytest.raises(ChangelogFormatError, match=re.escape(str(path))):
            _feed_chunks(str(path), data, cuts)


def test_corpus_content_is_what_ops_sh_did() -> None:
    """Spot checks of dist1-basic against its ops.sh (the bytes were read with xxd)."""

    path = CORPUS / "gluster-10.3/dist1-basic/b1/changelogs/2026/11/24/CHANGELOG.1795507702"
    recs = parse_journal(str(path), path.read_bytes())
    entries = [r for r in recs if isinstance(r, EntryRecord)]
    assert [(r.fop, r.name) for r in entries[:3]] == [(Fop.MKDIR, b"a"), (Fop.MKDIR, b"b"), (Fop.MKDIR, b"c")]
    assert entries[0].pargfid == ROOT and entries[0].mode == 0o40755
    ren = [r for r in entries if r.fop is Fop.RENAME]
    assert [(r.name, r.new_name) for r in ren] == [(b"f1", b"f1-renamed"), (b"a", b"a-moved")]
    dels = [r for r in entries if r.fop in (Fop.UNLINK, Fop.RMDIR)]
    # capture-del-path was on: the path relative to the volume root is there
    assert [(r.name, r.path) for r in dels] == [(b"sym", b"sym"), (b"x", b"gone/x"), (b"gone", b"gone")]
    assert {r.fop for r in recs if isinstance(r, MetaRecord)} == {Fop.SETATTR, Fop.SETXATTR}


def test_corpus_names_are_raw_bytes() -> None:
    path = CORPUS / "gluster-10.3/dist1-names/b1/changelogs/2026/11/24/CHANGELOG.1795507722"
    names = {r.name for r in parse_journal(str(path), path.read_bytes()) if isinstance(r, EntryRecord)}
    assert {b"new\nline", b"tab\there", b"latin1-\xe9\xff", b"L" * 255, b"d\xc3(", b"-rf"} <= names
    assert "ünïcødé-名前.txt".encode() in names


# -- headers, versions and precise refusals --------------------------------------------

G1 = "8ff7fd0e-6a65-46fa-b999-69a9d648b7c0"
P1 = "489261ec-0a01-48c1-bc68-c803ff4fb1d4"


def _e(*fields: str | bytes) -> bytes:
    return b"".join((f.encode() if isinstance(f, str) else f) + b"\0" for f in fields)


def test_reference_example_parses() -> None:
    body = _e("E" + G1, "23", "33188", "0", "0", P1 + "/f1")
    (rec,) = parse_journal("j", V12 + body)
    assert rec == EntryRecord(51, uuid.UUID(G1).bytes, Fop.CREATE, uuid.UUID(P1).bytes, b"f1", 33188, 0, 0)


def test_v11_unlink_has_no_path_and_v12_has_path_or_filler() -> None:
    v11 = V11 + _e("E" + G1, "5", P1 + "/x") + _e("D" + G1)
    recs = parse_journal("j", v11)
    assert isinstance(recs[0], EntryRecord) and recs[0].path is None and isinstance(recs[1], DataRecord)
    v12_empty = V12 + _e("E" + G1, "6", P1 + "/x", "", "") + _e("D" + G1)
    recs = parse_journal("j", v12_empty)
    assert isinstance(recs[0], EntryRecord) and recs[0].fop is Fop.RMDIR and recs[0].path is None
    assert isinstance(recs[1], DataRecord)
    v12_path = V12 + _e("E" + G1, "5", P1 + "/x", "a/x") + _e("D" + G1)
    recs = parse_journal("j", v12_path)
    assert isinstance(recs[0], EntryRecord) and recs[0].path == b"a/x"
    # an empty path without the filler NUL is refused
    with pytest.raises(ChangelogFormatError):
        parse_journal("j", V12 + _e("E" + G1, "5", P1 + "/x", "") + _e("D" + G1))


@pytest.mark.parametrize(
    ("head", "offset"),
    [
        (b"GlusterFS Changelog | version: v1.2 | encoding : 1\n", 49),
        (b"GlusterFS Changelog | version: v2.0 | encoding : 2\n", 32),
        (b"GlusterFS Changelog | version: v1.3 | encoding : 2\n", 34),
        (b"glusterfs", 0),
        (b"", 0),
        (b"GlusterFS Changelog | version: v1.2 | encoding : 2", 50),
    ],
)
def test_bad_headers_name_file_and_offset(head: bytes, offset: int) -> None:
    with pytest.raises(ChangelogFormatError, match=f"^CHANGELOG.17: byte {offset}: "):
        parse_journal("CHANGELOG.17", head)


def test_header_refused_as_soon_as_it_diverges() -> None:
    p = ChangelogParser("j")
    assert p.feed(b"GlusterFS Chan") == []
    with pytest.raises(ChangelogFormatError, match="byte 14"):
        p.feed(b"x")
    # and stays failed
    with pytest.raises(ChangelogFormatError):
        p.feed(b"")
    with pytest.raises(ChangelogFormatError):
        p.close()


BAD_BODIES = {
    "uppercase gfid": _e("D" + G1.upper()),
    "short gfid": _e("D" + G1[:-1]) + b"0",
    "gfid without dashes": _e("D" + G1.replace("-", "") + "0000"),
    "null gfid": _e("D00000000-0000-0000-0000-000000000000"),
    "reserved gfid": _e("Dffffffff-ffff-ffff-ffff-ffffffffffff"),
    "unknown type": _e("X" + G1),
    "unknown entry fop": _e("E" + G1, "13", P1 + "/x"),
    "unknown meta fop": _e("M" + G1, "23"),
    "fop with leading zero": _e("E" + G1, "023", "1", "0", "0", P1 + "/x"),
    "mode not a number": _e("E" + G1, "23", "0x81a4", "0", "0", P1 + "/x"),
    "mode leading zero": _e("E" + G1, "23", "0644", "0", "0", P1 + "/x"),
    "uid too big": _e("E" + G1, "23", "1", "4294967296", "0", P1 + "/x"),
    "negative gid": _e("E" + G1, "23", "1", "0", "-1", P1 + "/x"),
    "empty name": _e("E" + G1, "7", P1 + "/"),
    "dot": _e("E" + G1, "7", P1 + "/."),
    "dotdot": _e("E" + G1, "9", P1 + "/.."),
    "slash in name": _e("E" + G1, "7", P1 + "/a/b"),
    "name too long": _e("E" + G1, "7", P1 + "/" + "n" * 256),
    "no slash after pargfid": _e("E" + G1, "7", P1 + "xname"),
    "bad pargfid": _e("E" + G1, "7", P1.upper() + "/x"),
    "rename new name bad": _e("E" + G1, "8", P1 + "/x", P1 + "/.."),
    "empty field": _e("E" + G1, "", P1 + "/x"),
    "stray NUL": b"\0" + _e("D" + G1),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_refused(body: bytes) -> None:
    data = V12 + body
    for cuts in ([], list(range(len(data)))):
        with pytest.raises(ChangelogFormatError, match=r"^j: byte \d+: "):
            _feed_chunks("j", data, cuts)


def test_error_offset_points_at_the_field() -> None:
    good = _e("D" + G1)
    with pytest.raises(ChangelogFormatError, match=f"^j: byte {51 + len(good) + 38}: unknown entry fop"):
        parse_journal("j", V12 + good + _e("E" + G1, "13", P1 + "/x"))


def test_garbage_without_nul_is_refused_before_close() -> None:
    p = ChangelogParser("j")
    p.feed(V12 + b"E" + G1.encode() + b"\x0023\x00")
    for _ in range(4):
        p.feed(b"\x01" * 1000)  # an unfinished mode field: could still be a (bad) number
    with pytest.raises(ChangelogFormatError, match="longer than any journal field"):
        p.feed(b"\x01" * 1000)


def test_consumed_is_a_resumable_position() -> None:
    data = V12 + _e("D" + G1) + _e("M" + G1, "38")
    p = ChangelogParser("j")
    p.feed(data[:100])
    assert p.consumed == 51 + 38
    p.feed(data[100:])
    assert p.consumed == len(data)
    p.close()


def test_feed_after_close_is_refused() -> None:
    p = ChangelogParser("j")
    p.feed(V12)
    p.close()
    with pytest.raises(ChangelogFormatError):
        p.feed(b"D")


# -- round trip through the writer ----------------------------------------------------

_RESERVED = {bytes(16), b"\xff" * 16}
gfids = st.binary(min_size=16, max_size=16).filter(lambda g: g not in _RESERVED)
SPECIAL_NAMES = [b"new\nline", b"tab\there", b" lead", b"trail ", b"trail\t", b"\xe9\xff", b"L" * 255, b"%41",
                 b"...", b".hidden", b"-rf", b"\\", "名前".encode()]
names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.binary(min_size=1, max_size=255)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
    .filter(lambda n: n not in (b".", b"..")),
)
u32 = st.integers(0, 2**32 - 1)
paths = st.one_of(st.none(), st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\0", b"_")))


@st.composite
def records(draw: st.DrawFn, version: tuple[int, int]) -> Record:
    kind = draw(st.sampled_from("DME"))
    g = draw(gfids)
    if kind == "D":
        return DataRecord(0, g)
    if kind == "M":
        return MetaRecord(0, g, draw(st.sampled_from([Fop.SETATTR, Fop.FSETATTR, Fop.SETXATTR, Fop.FSETXATTR,
                                                       Fop.REMOVEXATTR, Fop.FREMOVEXATTR, Fop.XATTROP,
                                                       Fop.FXATTROP])))
    fop = draw(st.sampled_from([Fop.CREATE, Fop.MKDIR, Fop.MKNOD, Fop.SYMLINK, Fop.LINK, Fop.RENAME,
                                Fop.UNLINK, Fop.RMDIR]))
    pg, name = draw(gfids), draw(names)
    if fop in (Fop.CREATE, Fop.MKDIR, Fop.MKNOD):
        return EntryRecord(0, g, fop, pg, name, draw(u32), draw(u32), draw(u32))
    if fop is Fop.RENAME:
        return EntryRecord(0, g, fop, pg, name, new_pargfid=draw(gfids), new_name=draw(names))
    if fop in (Fop.UNLINK, Fop.RMDIR) and version == (1, 2):
        return EntryRecord(0, g, fop, pg, name, path=draw(paths))
    return EntryRecord(0, g, fop, pg, name)


@st.composite
def journals(draw: st.DrawFn) -> tuple[tuple[int, int], list[Record]]:
    version = draw(st.sampled_from([(1, 1), (1, 2)]))
    recs = draw(st.lists(records(version), max_size=30))
    # offsets as the writer lays the records out
    out: list[Record] = []
    off = 51
    for r in recs:
        out.append(r._replace(offset=off))
        off += len(write_record(r, version))
    return version, out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals(), st.data())
def test_round_trip(journal: tuple[tuple[int, int], list[Record]], data: st.DataObject) -> None:
    version, recs = journal
    raw = write_journal(recs, version)
    assert parse_journal("j", raw) == recs
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert _feed_chunks("j", raw, cuts) == recs


# -- fuzzing: only ChangelogFormatError may come out ----------------------------------


def _run(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(ChangelogFormatError):
        _feed_chunks("fuzz", data, cuts)


SEED_JOURNALS = [p.read_bytes() for p in JOURNALS if p.stat().st_size > 60]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.booleans(), st.lists(st.integers(0, 500), max_size=5))
def test_fuzz_random_bytes(body: bytes, with_header: bool, cuts: list[int]) -> None:
    data = (V12 if with_header else b"") + body
    _run(data, [c for c in cuts if c <= len(data)])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SEED_JOURNALS))),
    st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]), st.integers(0, 10**6),
                  st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(0, 10**6), max_size=5),
)
def test_fuzz_mutated_journals(seed: int, mutations: list[tuple[str, int, int]], cuts: list[int]) -> None:
    data = bytearray(SEED_JOURNALS[seed])
    for what, pos, byte in mutations:
        pos %= len(data) + 1
        if what == "flip" and pos < len(data):
            data[pos] = byte
        elif what == "insert":
            data[pos:pos] = bytes([byte])
        elif what == "delete" and pos < len(data):
            del data[pos]
        elif what == "truncate":
            del data[pos:]
        elif what == "dup":
            data[pos:pos] = data[pos : pos + byte]
    _run(bytes(data), [c % (len(data) + 1) for c in cuts])


# -- HTIME -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", HTIMES, ids=_ids(HTIMES))
def test_corpus_htime(path: Path) -> None:
    idx = parse_htime(str(path), path.read_bytes())
    assert idx.entries and idx.partial == b""
    assert idx.duplicates == []  # the corpus README: nothing was lost
    ts = [e.ts for e in idx.entries]
    assert ts == sorted(ts)
    # every upper-case entry is a journal in the copied tree, and every kept journal is listed
    kept = {p.name for p in path.parent.parent.rglob("CHANGELOG.*")}
    listed = {e.path.rpartition(b"/")[2].decode() for e in idx.entries if not e.empty}
    assert listed == kept


def test_htime_duplicate_uppercase_is_the_rollover_bug_fingerprint() -> None:
    p = b"/bricks/b1/.glusterfs/changelogs/2026/11/24/"
    data = (p + b"changelog.10\0" + p + b"CHANGELOG.11\0" + p + b"CHANGELOG.11\0" + p + b"CHANGELOG.11\0"
            + p + b"changelog.12\0" + p + b"changelog.12\0" + p + b"CHANGELOG.13\0" + p + b"CHANG")
    idx = parse_htime("HTIME.10", data)
    assert [(e.ts, e.empty) for e in idx.entries] == [(10, True), (11, False), (11, False), (11, False),
                                                      (12, True), (12, True), (13, False)]
    assert idx.entries[1] == (p + b"CHANGELOG.11", 11, False)
    assert idx.duplicates == [p + b"CHANGELOG.11"]  # lower-case repeats are normal
    assert idx.partial == p + b"CHANG"


@pytest.mark.parametrize("bad", [b"relative/CHANGELOG.1\0", b"/x/CHANGELOG.\0", b"/x/CHANGELOG.1x\0",
                                 b"/x/Changelog.1\0", b"\0"])
def test_htime_refuses_what_is_not_a_changelog_path(bad: bytes) -> None:
    good = b"/x/CHANGELOG.5\0"
    with pytest.raises(ChangelogFormatError, match=f"^H: byte {len(good)}: "):
        parse_htime("H", good + bad)

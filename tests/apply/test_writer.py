"""georep.apply.writer: the native small-file writer and its pure-Python twin, side by side.

Every case runs the same job through `write_small` (the reference) and through
`georep._native.write_small` into two fresh roots, then compares what each left on disk and
reported.  The agent's end-to-end tests (tests/transport, tests/cli) use whichever is built.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from georep.apply import writer
from georep.apply.agent import Applier
from georep.apply.writer import MAX_BATCHES, DigestMismatch, SmallJob, StagedWrites, write_batch, write_small
from georep.model import ROOT_ID, Kind, Meta
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest

native = writer.native
needs_native = pytest.mark.skipif(native is None, reason="georep._native is not built here (.ci/run requires it)")


@dataclass
class Place:
    staging: int
    parent: int
    root: Path

    def listing(self) -> dict[str, tuple[int, int, int, bytes]]:
        """name → (mode, size, mtime_ns, content) of the parent directory and staging."""

        out = {}
        for where, fd in (("", self.parent), ("staging/", self.staging)):
            for name in sorted(os.listdir(fd)):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
                    out[where + name] = (st.st_mode, st.st_size, st.st_mtime_ns, f.read())
        return out


@pytest.fixture
def places(tmp_path: Path) -> Iterator[Callable[[str], Place]]:
    opened: list[int] = []

    def make(name: str) -> Place:
        root = tmp_path / name
        (root / "staging").mkdir(parents=True)
        (root / "dir").mkdir()
        fds = [os.open(root / d, os.O_RDONLY | os.O_DIRECTORY) for d in ("staging", "dir")]
        opened.extend(fds)
        return Place(fds[0], fds[1], root)

    yield make
    for fd in opened:
        os.close(fd)


def digest_of(extents: list[list[int | bytes]], size: int) -> bytes:
    d = ExtentDigest()
    for off, data in extents:
        assert isinstance(off, int) and isinstance(data, bytes)
        d.update(off, data)
    return d.finish(size)


def job(place: Place, name: bytes, extents: list[list[int | bytes]], size: int, mode: int = 0o644,
        mtime_ns: int = 1_500_000_000_123_456_789, tmp: bytes = b"tmp-1-0",
        xattrs: tuple[tuple[bytes, bytes], ...] = (), digest: bytes | None = None) -> SmallJob:
    e = m.EntryMsg(1, b"i" * 16, b"p" * 16, name, int(Kind.FILE), mode, 0, 0, mtime_ns, [], size, b"", 0)
    f = m.SmallFile(1, size, extents, digest_of(extents, size) if digest is None else digest, mtime_ns)
    return SmallJob(e, True, place.parent, tmp, f, Meta(mode, os.getuid(), os.getgid(), mtime_ns, xattrs))


def both(places: Callable[[str], Place], make: Callable[[Place], list[SmallJob]],
         before: Callable[[Place], None] | None = None) -> tuple[list[SmallJob], list[SmallJob], Place, Place]:
    """The same jobs through the twin and through the extension; the jobs and places of each."""

    assert native is not None
    py_place, c_place = places("py"), places("c")
    for p in (py_place, c_place):
        if before is not None:
            before(p)
    py_jobs, c_jobs = make(py_place), make(c_place)
    for j in py_jobs:
        try:
            write_small(py_place.staging, os.geteuid() == 0, j)
        except (OSError, DigestMismatch) as exc:
            j.error = exc
    for j, (err, ino, published) in zip(
        c_jobs, native.write_small(c_place.staging, [j.as_native(os.geteuid() == 0) for j in c_jobs]), strict=True
    ):
        j.error = DigestMismatch() if err == -1 else OSError(err, os.strerror(err)) if err else None
        j.ino, j.published = ino, published
    return py_jobs, c_jobs, py_place, c_place


def outcome(j: SmallJob) -> tuple[bool, int | str | None]:
    if isinstance(j.error, DigestMismatch):
        return j.published, "digest"
    return j.published, j.error.errno if isinstance(j.error, OSError) else None


@needs_native
@pytest.mark.parametrize(("extents", "size", "mode", "mtime_ns"), [
    ([[0, b"hello"]], 5, 0o644, 1_500_000_000_123_456_789),
    ([], 0, 0o600, 0),  # empty
    ([[0, b"a" * 4096], [65536, b"b" * 100]], 65636, 0o755, 10**18),  # a hole inside
    ([[0, b"head"]], 1 << 20, 0o640, 1),  # a trailing hole
    ([[0, b"x"]], 1, 0o4755, 2_000_000_000),  # setuid: set by fchmod, not by the create mode
    ([[0, b"x"]], 1, 0o1777, 3),  # sticky, and bits the umask would take
    ([[0, b"old"]], 3, 0o644, -1_500_000_000),  # before 1970: negative seconds, positive nanoseconds
])
def test_a_file_on_a_free_name_is_the_same_from_both(places: Callable[[str], Place], extents: list[list[int | bytes]],
                                                       size: int, mode: int, mtime_ns: int) -> None:
    py, c, pp, cp = both(places, lambda p: [job(p, b"f", extents, size, mode, mtime_ns)])
    assert outcome(py[0]) == outcome(c[0]) == (True, None)
    assert pp.listing() == cp.listing()
    mode_, size_, mtime_, content = cp.listing()["f"]
    assert (stat.S_IMODE(mode_), size_, mtime_) == (mode, size, mtime_ns)
    expected = bytearray(size)
    for off, data in extents:
        assert isinstance(off, int) and isinstance(data, bytes)
        expected[off:off + len(data)] = data
    assert content == bytes(expected)
    assert c[0].ino == os.stat("f", dir_fd=cp.parent).st_ino
    assert os.listdir(cp.staging) == []


@needs_native
def test_a_taken_name_is_left_alone_and_the_file_waits_in_staging(places: Callable[[str], Place]) -> None:
    def occupy(p: Place) -> None:
        (p.root / "dir" / "f").write_bytes(b"someone else")
        os.utime(p.root / "dir" / "f", ns=(1, 1))  # the same in both places

    py, c, pp, cp = both(places, lambda p: [job(p, b"f", [[0, b"mine"]], 4)], before=occupy)
    assert outcome(py[0]) == outcome(c[0]) == (False, None)
    assert pp.listing() == cp.listing()
    assert (cp.root / "dir" / "f").read_bytes() == b"someone else"
    assert (cp.root / "staging" / "tmp-1-0").read_bytes() == b"mine"
    assert c[0].ino == os.stat("tmp-1-0", dir_fd=cp.staging).st_ino


@needs_native
def test_a_failure_removes_the_temporary_file_and_says_why(places: Callable[[str], Place]) -> None:
    # the final name is under a regular file: the rename fails with ENOTDIR, after the write
    def plant(p: Place) -> None:
        (p.root / "dir" / "plain").write_bytes(b"")
        os.utime(p.root / "dir" / "plain", ns=(1, 1))  # the same in both places

    py, c, pp, cp = both(places, lambda p: [job(p, b"plain/f", [[0, b"data"]], 4)], before=plant)
    assert outcome(py[0]) == outcome(c[0]) == (False, 20)  # ENOTDIR
    assert pp.listing() == cp.listing()
    assert os.listdir(cp.staging) == []


@needs_native
def test_a_temporary_name_already_there_is_not_overwritten(places: Callable[[str], Place]) -> None:
    def plant(p: Place) -> None:
        (p.root / "staging" / "tmp-1-0").write_bytes(b"not mine")
        os.utime(p.root / "staging" / "tmp-1-0", ns=(1, 1))

    py, c, pp, cp = both(places, lambda p: [job(p, b"f", [[0, b"data"]], 4)], before=plant)
    assert outcome(py[0]) == outcome(c[0]) == (False, 17)  # EEXIST from O_EXCL
    assert pp.listing() == cp.listing()
    assert (cp.root / "staging" / "tmp-1-0").read_bytes() == b"not mine"


@needs_native
def test_a_batch_goes_on_after_one_file_fails(places: Callable[[str], Place]) -> None:
    def make(p: Place) -> list[SmallJob]:
        return [job(p, b"a", [[0, b"1"]], 1, tmp=b"t0"), job(p, b"no/such/dir", [[0, b"2"]], 1, tmp=b"t1"),
                job(p, b"c", [[0, b"3"]], 1, tmp=b"t2")]

    py, c, pp, cp = both(places, make)
    assert [outcome(j) for j in py] == [outcome(j) for j in c] == [(True, None), (False, 2), (True, None)]
    assert pp.listing() == cp.listing()


@needs_native
def test_the_extension_refuses_malformed_jobs_without_touching_the_disk(places: Callable[[str], Place]) -> None:
    assert native is not None
    p = places("c")
    good = job(p, b"f", [[0, b"x"]], 1).as_native(False)
    digest = good[10]
    for bad in (good[:9], (*good[:9], [[0, "text"]], digest), (*good[:9], [[5, b"x"], [0, b"y"]], digest),
                (*good[:9], [[0]], digest), good[:10], (*good[:10], b"short"), (*good[:10], "text")):
        with pytest.raises((TypeError, ValueError)):
            native.write_small(p.staging, [good, bad])
    assert os.listdir(p.staging) == [] and os.listdir(p.parent) == []


@needs_native
@pytest.mark.parametrize("damage", ["data", "size", "offset", "digest"])
def test_a_file_whose_digest_does_not_match_is_not_created_by_either(places: Callable[[str], Place],
                                                                      damage: str) -> None:
    """The digest covers the bytes, their offsets and the size; either writer refuses a mismatch
    before it creates anything, and the rest of the batch goes on."""

    def make(p: Place) -> list[SmallJob]:
        extents: list[list[int | bytes]] = [[0, b"hello"], [4096, b"world"]]
        right = digest_of(extents, 8192)
        wrong = {"data": ([[0, b"hellO"], [4096, b"world"]], 8192, right),
                 "size": (extents, 8193, right),
                 "offset": ([[0, b"hello"], [4097, b"world"]], 8192, right),
                 "digest": (extents, 8192, bytes(16))}[damage]
        return [job(p, b"bad", wrong[0], wrong[1], tmp=b"t0", digest=wrong[2]),
                job(p, b"good", extents, 8192, tmp=b"t1")]

    py, c, pp, cp = both(places, make)
    assert [outcome(j) for j in py] == [outcome(j) for j in c] == [(False, "digest"), (True, None)]
    assert pp.listing() == cp.listing()
    assert sorted(os.listdir(cp.parent)) == ["good"] and os.listdir(cp.staging) == []


@needs_native
def test_files_with_xattrs_are_written_by_the_twin(places: Callable[[str], Place]) -> None:
    p = places("c")
    plain = job(p, b"plain", [[0, b"1"]], 1, tmp=b"t0")
    tagged = job(p, b"tagged", [[0, b"2"]], 1, tmp=b"t1", xattrs=((b"user.origin", b"fr"),))
    write_batch(p.staging, False, [plain, tagged])
    assert plain.published and tagged.published and plain.error is None and tagged.error is None
    assert os.getxattr(p.root / "dir" / "tagged", "user.origin") == b"fr"


@needs_native
def test_a_batch_is_cut_so_files_without_xattrs_still_go_natively(
        places: Callable[[str], Place], monkeypatch: pytest.MonkeyPatch) -> None:
    assert native is not None
    runs: list[list[bytes]] = []

    class Recording:
        """The real extension, with a record of which names each call wrote."""

        @staticmethod
        def write_small(staging_fd: int, jobs: list[tuple[object, ...]]) -> list[tuple[int, int, bool]]:
            runs.append([j[2] for j in jobs])  # type: ignore[misc]
            return native.write_small(staging_fd, jobs)  # type: ignore[no-any-return, union-attr]

    monkeypatch.setattr(writer, "native", Recording)
    p = places("c")
    batch = [job(p, b"a", [[0, b"1"]], 1, tmp=b"t0"), job(p, b"b", [[0, b"2"]], 1, tmp=b"t1"),
             job(p, b"tagged", [[0, b"3"]], 1, tmp=b"t2", xattrs=((b"user.origin", b"fr"),)),
             job(p, b"c", [[0, b"4"]], 1, tmp=b"t3")]
    write_batch(p.staging, False, batch)
    assert runs == [[b"a", b"b"], [b"c"]]
    assert all(j.published and j.error is None for j in batch)
    assert [(p.root / "dir" / n).read_bytes() for n in ("a", "b", "tagged", "c")] == [b"1", b"2", b"3", b"4"]
    assert os.getxattr(p.root / "dir" / "tagged", "user.origin") == b"fr"
    assert os.listxattr(p.root / "dir" / "c") == [] and os.listdir(p.staging) == []


def test_batches_are_collected_in_order_and_the_queue_is_bounded(places: Callable[[str], Place]) -> None:
    p = places("w")
    writes = StagedWrites(p.staging, False)
    try:
        for i in range(MAX_BATCHES):
            writes.submit([job(p, b"f%d" % i, [[0, b"%d" % i]], len(b"%d" % i), tmp=b"t%d" % i)])
        assert writes.full
        oldest = writes.collect_oldest()
        assert oldest[0].entry.name == b"f0" and not writes.full
        rest = writes.collect(wait=True)
        assert [b[0].entry.name for b in rest] == [b"f%d" % i for i in range(1, MAX_BATCHES)]
        assert not writes.busy
        assert sorted(os.listdir(p.parent)) == sorted(f"f{i}" for i in range(MAX_BATCHES))
    finally:
        writes.close()


def test_collect_some_answers_what_is_written_while_the_worker_writes_on(
        places: Callable[[str], Place], monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's reader, idle, takes the finished batches without waiting for the one being written."""

    gate = threading.Event()
    real = writer.write_batch

    def gated(staging_fd: int, privileged: bool, batch: list[SmallJob]) -> None:
        if batch[0].entry.name == b"slow":
            gate.wait(30)  # the safety: a collect that waits for every batch would hang here
        real(staging_fd, privileged, batch)

    monkeypatch.setattr(writer, "write_batch", gated)
    p = places("s")
    writes = StagedWrites(p.staging, False)
    try:
        assert writes.collect_some() == []  # nothing in flight: nothing to wait for
        writes.submit([job(p, b"fast", [[0, b"1"]], 1, tmp=b"t0")])
        writes.submit([job(p, b"slow", [[0, b"2"]], 1, tmp=b"t1")])
        started = time.monotonic()
        first = writes.collect_some()
        assert time.monotonic() - started < 10
        assert [b[0].entry.name for b in first] == [b"fast"] and first[0][0].published
        assert writes.busy and not gate.is_set()
        gate.set()
        assert [b[0].entry.name for b in writes.collect_some()] == [b"slow"]
        assert not writes.busy and writes.collected == writes.submitted == 2
    finally:
        gate.set()
        writes.close()


def _small(seq: int, data: bytes, mtime_ns: int = 2 * 10**9) -> m.SmallFile:
    d = ExtentDigest()
    d.update(0, data)
    return m.SmallFile(seq, len(data), [[0, data]], d.finish(len(data)), mtime_ns)


def _entry(seq: int, n: int, name: bytes, kind: Kind = Kind.FILE, size: int = 0) -> m.EntryMsg:
    return m.EntryMsg(seq, xxhash.xxh3_128_digest(b"%d" % n), ROOT_ID, name, int(kind), 0o644, 0, 0, 10**9, [], size,
                      b"", 0)


def test_a_message_about_a_file_in_flight_waits_for_it(tmp_path: Path) -> None:
    """Blobs go to the worker; a Remove of one of its files is applied after it, as if in order."""

    applier = Applier(tmp_path / "root")
    try:
        assert applier.handle(_entry(1, 1, b"a", size=5))[0].status == m.NEED
        assert applier.handle(_entry(2, 2, b"b", size=5))[0].status == m.NEED
        early = applier.handle(m.Blobs([_small(1, b"hello"), _small(2, b"world")]))
        results = early + applier.handle(m.RemoveMsg(3, xxhash.xxh3_128_digest(b"1"), ROOT_ID, b"a"))
        assert [(r.seq, r.status) for r in results] == [(1, m.DONE), (2, m.DONE), (3, m.DONE)]
        assert not applier.writes.busy
        assert sorted(os.listdir(tmp_path / "root")) == [".georep", "b"]
        assert (tmp_path / "root" / "b").read_bytes() == b"world"
    finally:
        applier.close()


def test_a_damaged_small_file_is_refused_before_it_is_written(tmp_path: Path) -> None:
    applier = Applier(tmp_path / "root")
    try:
        assert applier.handle(_entry(1, 1, b"a", size=5))[0].status == m.NEED
        bad = m.SmallFile(1, 5, [[0, b"hellO"]], _small(1, b"hello").digest, 10**9)
        [r] = applier.handle(m.Blobs([bad])) + applier.collect_writes(wait=True)
        assert r.status == m.FAILED and "digest mismatch" in r.cause
        assert sorted(os.listdir(tmp_path / "root")) == [".georep"]
        assert os.listdir(tmp_path / "root" / ".georep" / "staging") == []
    finally:
        applier.close()


def test_a_taken_name_is_made_room_for_on_the_main_thread(tmp_path: Path) -> None:
    """An untracked file at the name: the worker leaves the new one in staging, the agent sets the old aside."""

    root = tmp_path / "root"
    applier = Applier(root)
    try:
        assert applier.handle(_entry(1, 1, b"d", Kind.DIR))[0].status == m.DONE
        d = xxhash.xxh3_128_digest(b"1")
        e = m.EntryMsg(2, xxhash.xxh3_128_digest(b"2"), d, b"f", int(Kind.FILE), 0o644, 0, 0, 10**9, [], 3, b"", 0)
        assert applier.handle(e)[0].status == m.NEED
        (root / "d" / "f").write_bytes(b"untracked")  # appears after the entry was looked at
        results = applier.handle(m.Blobs([_small(2, b"new")])) + applier.collect_writes(wait=True)
        assert [(r.seq, r.status) for r in results] == [(2, m.DONE)]
        assert (root / "d" / "f").read_bytes() == b"new"
    finally:
        applier.close()


def test_directory_fds_dropped_while_files_are_in_flight_stay_open_until_they_are_collected(tmp_path: Path) -> None:
    """Files spread over more directories than the fd cache holds, written while the cache turns over."""

    root = tmp_path / "root"
    applier = Applier(root)
    applier.dirs._cap = 2  # noqa: SLF001 - turn the cache over at every directory
    try:
        seq = 0
        dirs = []
        for d in range(6):
            seq += 1
            assert applier.handle(_entry(seq, 1000 + d, b"d%d" % d, Kind.DIR))[0].status == m.DONE
            dirs.append(xxhash.xxh3_128_digest(b"%d" % (1000 + d)))
        results: list[m.Result] = []
        wanted: dict[int, tuple[str, bytes]] = {}
        for round_ in range(3):
            smalls = []
            for d, did in enumerate(dirs):
                seq += 1
                name = b"f%d" % round_
                e = m.EntryMsg(seq, xxhash.xxh3_128_digest(b"f%d" % seq), did, name, int(Kind.FILE), 0o644, 0, 0,
                               10**9, [], 8, b"", 0)
                results += applier.handle(e)
                data = b"%08d" % seq
                smalls.append(_small(seq, data))
                wanted[seq] = (f"d{d}/{name.decode()}", data)
            results += applier.handle(m.Blobs(smalls))  # one batch over all six directories
        results += applier.collect_writes(wait=True)
        assert sorted(r.seq for r in results if r.status == m.DONE) == sorted(wanted)
        assert all(r.status in (m.DONE, m.NEED) for r in results)
        for path, data in wanted.values():
            assert (root / path).read_bytes() == data
        assert applier.dirs._dropped == []  # noqa: SLF001 - nothing in flight: every dropped fd closed
    finally:
        applier.close()

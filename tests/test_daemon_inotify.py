"""`georep-sync daemon DIR SECONDARY` on a plain directory: real inotify, real files, the real agent.

Every test runs the daemon as a separate process (as an operator would), changes the
source tree with ordinary system calls (and rsync), and waits until the secondary equals
the source byte for byte (`treecmp.snapshot`: names, content, modes, owners, mtimes,
hard-link groups, xattrs).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, state_filling_tree, tmpfs_at
from daemonproc import Daemon, converge, daemon_argv, make_every_kind_of_change
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def settled(d: Daemon, timeout: float = 30.0) -> dict[str, int]:
    """Counters once the daemon is live with nothing pending (after a converge)."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.status()
        if st["state"] == "live" and st["pending"] == 0:
            time.sleep(0.6)  # the status file is rewritten at most every 0.5 s while idle
            st2 = d.status()
            if st2["pending"] == 0 and st2["counters"] == st["counters"]:
                c = st2["counters"]
                assert isinstance(c, dict)
                return c
        time.sleep(0.1)
    pytest.fail(f"daemon did not settle: {d.status()}\n{d.logtext()[-3000:]}")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Daemon]]:
    src = tmp_path / "src"
    src.mkdir()
    d = Daemon(src, tmp_path / "dst", tmp_path / "state")
    try:
        yield src, d
    finally:
        d.kill()


def test_every_operation_kind_reaches_the_secondary(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    (m / "pre-existing").write_text("there before the daemon")
    (m / "old-dir" / "deep").mkdir(parents=True)
    (m / "old-dir" / "deep" / "f").write_bytes(os.urandom(10_000))
    d.start()
    converge(m, d.dst, d)
    make_every_kind_of_change(m)
    os.rename(m / "old-dir", m / "dir" / "renamed-dir")  # a directory synced before, with content
    (m / "da").mkdir()
    (m / "da" / "in-a").write_text("a")
    (m / "db").mkdir()
    (m / "db" / "in-b").write_text("b")
    os.rename(m / "da", m / "dtmp")  # swap two directories
    os.rename(m / "db", m / "da")
    os.rename(m / "dtmp", m / "db")
    for i in range(20):  # directory trees created and removed quickly
        os.makedirs(m / "gone-dir" / "x" / "y")
        (m / "gone-dir" / "x" / "y" / f"f{i}").write_text("x" * i)
        shutil.rmtree(m / "gone-dir")
    os.makedirs(m / "kept-dir" / "x" / "y")
    (m / "kept-dir" / "x" / "y" / "f").write_text("kept")
    os.unlink(m / "pre-existing")
    os.utime(m / "big", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    converge(m, d.dst, d)
    assert (d.dst / "a").read_text() == "B"
    assert (d.dst / "db" / "in-a").read_text() == "a"
    assert os.stat(d.dst / "file").st_ino == os.stat(d.dst / "dir" / "hardlink").st_ino
    # second round: changes to what was just replicated
    os.rename(m / "dir" / "hardlink", m / "hardlink-moved")  # one name of a hard-linked file moves
    os.link(m / "big", m / "sub-moved" / "big-link")
    with open(m / "big", "r+b") as f:  # data of a hard-linked file changes through one name
        f.write(b"changed")
    shutil.rmtree(m / "kept-dir")
    (m / "kept-dir").mkdir()  # a new directory where one was deleted: no stale children
    (m / "kept-dir" / "other").write_text("new")
    os.rename(m / "symlink", m / "dir" / "symlink")
    os.chmod(m / "dir", 0o750)
    converge(m, d.dst, d)
    assert not (d.dst / "kept-dir" / "x").exists()
    assert os.stat(d.dst / "big").st_ino == os.stat(d.dst / "sub-moved" / "big-link").st_ino
    assert d.stop() == 0
    st = d.status()
    assert st["state"] == "stopped"
    assert st["position"]
    c = st["counters"]
    assert isinstance(c, dict) and c["overflows"] == 0 and c["errors"] == 0, d.logtext()


def test_rsync_leaves_only_final_names(tree: tuple[Path, Daemon], tmp_path: Path) -> None:
    """The story: rsync -a into the watched tree (temp names + renames), twice with changes between."""

    m, d = tree
    d.start()
    d.wait_state("live")
    appeared: list[str] = []  # every name that appears on the secondary, as a reader there sees it

    class Seen(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            for p in (event.src_path, event.dest_path):
                name = os.path.basename(os.fsdecode(p))
                if p and ".georep" not in os.fsdecode(p) and event.event_type in ("created", "moved"):
                    appeared.append(name)

    observer = Observer()
    observer.schedule(Seen(), str(d.dst), recursive=True)
    observer.start()
    try:
        src = tmp_path / "rsync-src"
        (src / "games").mkdir(parents=True)
        for i in range(200):
            (src / "games" / f"player{i}.json").write_text(json.dumps({"id": i, "v": 1}))
        subprocess.run(["rsync", "-a", f"{src}/", f"{m}/"], check=True)
        converge(m, d.dst, d)
        for i in range(0, 200, 3):
            (src / "games" / f"player{i}.json").write_text(json.dumps({"id": i, "v": 2, "pad": "x" * i}))
        os.unlink(src / "games" / "player1.json")
        subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{m}/"], check=True)
        converge(m, d.dst, d)
        time.sleep(0.5)
    finally:
        observer.stop()
        observer.join()
    temp = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")
    assert "player3.json" in appeared
    assert [n for n in appeared if temp.match(n)] == []  # only final names ever arrived
    leftovers = [p for p in d.dst.rglob("*") if temp.match(p.name) and ".georep" not in p.parts]
    assert leftovers == []
    assert json.loads((d.dst / "games" / "player3.json").read_text())["v"] == 2
    assert not (d.dst / "games" / "player1.json").exists()
    assert sorted(p.name for p in (d.dst / ".georep" / "staging").iterdir()) == []


def test_restart_sends_only_what_changed_while_down(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    for i in range(50):
        (m / f"f{i}").write_bytes(os.urandom(4000))
    (m / "sub").mkdir()
    (m / "sub" / "big").write_bytes(os.urandom(1 << 20))
    d.start()
    converge(m, d.dst, d)
    assert d.stop() == 0
    # nothing changed while down: the restart scan sends no file data at all
    d.start()
    d.wait_state("live")
    converge(m, d.dst, d)
    c = settled(d)
    assert c["bytes_data"] == 0, d.logtext()
    assert d.stop() == 0
    # changed while down: only that is sent; a rename (same inode, same id) costs no data
    (m / "f1").write_bytes(b"new content")
    (m / "added").write_bytes(b"z" * 777)
    os.rename(m / "sub" / "big", m / "big-renamed")
    os.unlink(m / "f2")
    d.start()
    converge(m, d.dst, d)
    c = settled(d)
    assert c["bytes_data"] == len(b"new content") + 777, d.logtext()
    assert c["deleted"] >= 1


@pytest.mark.slow
def test_changes_during_the_startup_scan_are_not_lost(tree: tuple[Path, Daemon]) -> None:
    """Watches come before the scan; what changes while it runs is replayed after it."""

    m, d = tree
    for i in range(80):
        (m / f"d{i:02d}").mkdir()
        for j in range(100):
            (m / f"d{i:02d}" / f"f{j}").write_bytes(os.urandom(3000))
    d.start()
    d.wait_state("crawl")
    # some of these directories are scanned already, some not yet
    for i in (0, 40, 79):
        os.rename(m / f"d{i:02d}", m / f"moved-{i:02d}")
        (m / f"moved-{i:02d}" / "new").write_text("made during the scan")
        os.unlink(m / f"moved-{i:02d}" / "f1")
    os.rename(m / "d10" / "f5", m / "d30" / "f5-from-d10")
    with open(m / "d35" / "f7", "ab") as f:
        f.write(b"appended during the scan")
    shutil.rmtree(m / "d25")
    st = d.status()
    assert st["state"] == "crawl", "the scan ended before the changes: make the tree bigger"
    converge(m, d.dst, d)
    assert not (d.dst / "d25").exists()


def test_ids_are_the_oneshot_ids(tree: tuple[Path, Daemon], tmp_path: Path) -> None:
    """A tree copied by --oneshot and renamed meanwhile: the daemon's first scan renames, sends no data."""

    m, d = tree
    (m / "data").mkdir()
    (m / "data" / "blob").write_bytes(os.urandom(2 << 20))
    r = run_cli("--oneshot", m, d.dst, "--state-dir", d.state)
    assert r.code == 0, r.stderr
    os.rename(m / "data", m / "data-renamed")
    os.rename(m / "data-renamed" / "blob", m / "blob-moved")
    d.start()
    converge(m, d.dst, d)
    assert settled(d)["bytes_data"] == 0, d.logtext()


@pytest.mark.slow
def test_renaming_a_directory_of_10000_files_costs_one_rename(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    big = m / "big-dir"
    big.mkdir()
    for i in range(10_000):
        (big / f"file-{i:05d}").write_bytes(b"%d\n" % i)
    d.start()
    converge(m, d.dst, d, timeout=180)
    before = settled(d)
    inode = os.stat(d.dst / "big-dir").st_ino
    os.rename(big, m / "renamed-big-dir")
    converge(m, d.dst, d)
    after = settled(d)
    wire = after["bytes_wire"] - before["bytes_wire"]
    print(f"wire bytes for renaming a directory of 10,000 files: {wire}")
    assert wire < 64 * 1024
    assert after["bytes_data"] == before["bytes_data"]
    assert os.stat(d.dst / "renamed-big-dir").st_ino == inode  # renamed, not copied


def test_no_half_written_file_and_a_bounded_wait_for_long_writes(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    d.start()
    d.wait_state("live")
    target = d.dst / "slow"
    final = b"".join(b"%04d" % i * 256 for i in range(20))
    seen_partial: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                data = target.read_bytes()
                if data != final:
                    seen_partial.append(len(data))
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        with open(m / "slow", "wb") as f:  # written in pieces for ~1 s, well under the bound
            for i in range(20):
                f.write(b"%04d" % i * 256)
                f.flush()
                time.sleep(0.05)
        converge(m, d.dst, d)
    finally:
        stop.set()
        t.join()
    assert seen_partial == []
    # a file written for much longer than the bound still reaches the secondary meanwhile
    with open(m / "log", "wb") as f:
        t0 = time.monotonic()
        appeared = None
        while time.monotonic() - t0 < 6:
            f.write(b"line %f\n" % time.monotonic())
            f.flush()
            if appeared is None and (d.dst / "log").exists():
                appeared = time.monotonic() - t0
            time.sleep(0.02)
    assert appeared is not None and appeared < 4.5, d.logtext()[-2000:]
    converge(m, d.dst, d)


def test_directory_renamed_while_files_inside_are_written(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    (m / "work").mkdir()
    d.start()
    d.wait_state("live")
    files = [open(m / "work" / f"out{i}", "wb") for i in range(5)]  # noqa: SIM115 - kept open across the rename
    try:
        for step in range(30):
            for f in files:
                f.write(os.urandom(1000))
                f.flush()
            if step == 10:
                os.rename(m / "work", m / "work-renamed")
            if step == 20:
                (m / "elsewhere").mkdir()
                os.rename(m / "work-renamed", m / "elsewhere" / "work")
            time.sleep(0.02)
    finally:
        for f in files:
            f.close()
    converge(m, d.dst, d)
    assert not (d.dst / "work").exists()
    assert len(list((d.dst / "elsewhere" / "work").iterdir())) == 5


def test_directory_renamed_before_its_new_files_data_was_read(tree: tuple[Path, Daemon]) -> None:
    """The rename's events move the directory, not what is in it: a file the sender could not open
    at its old path is looked for again where its directory went (CI caught this in a churn)."""

    m, d = tree
    (m / "d").mkdir()
    d.start()
    d.wait_state("live")
    with open(m / "d" / "big", "wb") as f:  # streamed first: the small file's open comes ~0.2 s later
        for _ in range(96):
            f.write(os.urandom(1 << 20))
    (m / "d" / "small").write_bytes(b"written just before the rename\n")
    deadline = time.monotonic() + 30
    batch = re.compile(rb"batch of .*/d/small")
    while not batch.search(d.log.read_bytes()):
        assert time.monotonic() < deadline, d.logtext()[-3000:]
        time.sleep(0.001)
    os.rename(m / "d", m / "e")
    converge(m, d.dst, d)
    assert (d.dst / "e" / "small").read_bytes() == b"written just before the rename\n"
    # the race was really run (the big file takes ~0.2 s to stream), and the log says it is being handled
    assert "d/small: not sent: cannot open on the source: No such file or directory (looking at it again: " \
           "attempt 2 of 4)" in d.logtext()


def test_rename_onto_its_own_hard_link_leaves_one_name(tree: tuple[Path, Daemon]) -> None:
    """``a/f`` and ``b/f`` are one file; ``rm b/f; mv a/f b/f`` in one batch leaves only ``b/f``."""

    m, d = tree
    for sub in ("a", "b"):
        (m / sub).mkdir()
    for i in range(20):
        (m / "a" / f"f{i}").write_bytes(os.urandom(2000))
        os.link(m / "a" / f"f{i}", m / "b" / f"f{i}")
    d.start()
    converge(m, d.dst, d)
    assert (d.dst / "a" / "f0").stat().st_ino == (d.dst / "b" / "f0").stat().st_ino
    for i in range(20):
        os.unlink(m / "b" / f"f{i}")
        os.rename(m / "a" / f"f{i}", m / "b" / f"f{i}")
    converge(m, d.dst, d)
    assert sorted(p.name for p in (d.dst / "a").iterdir()) == []


def test_moves_out_of_and_into_the_tree(tree: tuple[Path, Daemon], tmp_path: Path) -> None:
    m, d = tree
    (m / "leaving" / "sub").mkdir(parents=True)
    (m / "leaving" / "sub" / "f").write_text("out")
    (m / "file-leaving").write_text("bye")
    outside = tmp_path / "outside"
    (outside / "arriving" / "a" / "b").mkdir(parents=True)
    for i in range(30):
        (outside / "arriving" / "a" / "b" / f"f{i}").write_text(str(i))
    (outside / "file-arriving").write_text("hello")
    d.start()
    converge(m, d.dst, d)
    os.rename(m / "leaving", outside / "left")  # a move out is a delete
    os.rename(m / "file-leaving", outside / "file-left")
    os.rename(outside / "arriving", m / "arrived")  # a move in is a create with its whole subtree
    os.rename(outside / "file-arriving", m / "file-arrived")
    converge(m, d.dst, d)
    # the arrived directory is watched: changes inside it are followed
    (m / "arrived" / "a" / "b" / "f0").write_text("changed")
    (m / "arrived" / "a" / "new").mkdir()
    (m / "arrived" / "a" / "new" / "g").write_text("g")
    # the directory that left is not: changes there never reach the secondary
    (outside / "left" / "sub" / "f").write_text("not replicated")
    converge(m, d.dst, d)
    assert not (d.dst / "leaving").exists()


@pytest.mark.slow
def test_kill_9_during_churn_and_restart_converges(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    rng = random.Random(42)
    for i in range(20):
        (m / f"d{i % 4}").mkdir(exist_ok=True)
        (m / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(rng.randrange(1, 50_000)))
    d.start()
    converge(m, d.dst, d)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                dirs = [p for p in m.rglob("*") if p.is_dir()] + [m]
                files = [p for p in m.rglob("*") if p.is_file()]
                op = rng.randrange(8)
                with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
                    if op == 0 or not files:
                        data = os.urandom(rng.randrange(1, 20_000))
                        (rng.choice(dirs) / f"n{rng.randrange(10**6)}").write_bytes(data)
                    elif op == 1:
                        with open(rng.choice(files), "ab") as f:
                            f.write(os.urandom(rng.randrange(1, 5000)))
                    elif op == 2:
                        os.rename(rng.choice(files), rng.choice(dirs) / f"r{rng.randrange(10**6)}")
                    elif op == 3:
                        os.unlink(rng.choice(files))
                    elif op == 4:
                        (rng.choice(dirs) / f"dir{rng.randrange(10**6)}").mkdir()
                    elif op == 5 and len(dirs) > 3:
                        src = rng.choice(dirs)
                        dst = rng.choice(dirs)
                        if src != m and not str(dst).startswith(str(src)):
                            os.rename(src, dst / f"moved{rng.randrange(10**6)}")
                    elif op == 6:
                        os.link(rng.choice(files), rng.choice(dirs) / f"l{rng.randrange(10**6)}")
                    elif op == 7 and len(dirs) > 6:
                        victim = rng.choice(dirs)
                        if victim != m:
                            shutil.rmtree(victim)
                time.sleep(0.002)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    try:
        time.sleep(2)
        assert d.proc is not None
        d.proc.kill()  # kill -9 in the middle of the churn
        d.proc.wait()
        time.sleep(1)
        d.start()
        time.sleep(3)
    finally:
        stop.set()
        t.join()
    assert errors == []
    converge(m, d.dst, d, timeout=90)
    staging = d.dst / ".georep" / "staging"
    assert not [p for p in staging.iterdir() if not p.name.startswith("tmp-")]


@pytest.mark.slow
def test_inotify_queue_overflow_warns_rescans_and_converges(tree: tuple[Path, Daemon]) -> None:
    if os.geteuid() != 0:
        pytest.skip("lowering fs.inotify.max_queued_events needs root")
    m, d = tree
    (m / "pre").mkdir()
    saved = MAX_QUEUED.read_text()
    try:
        MAX_QUEUED.write_text("16\n")  # read by inotify_init(): only the daemon starting now gets it
        d.start()
        d.wait_state("crawl", "live")
    finally:
        MAX_QUEUED.write_text(saved)
    d.wait_state("live")
    for i in range(3000):  # far more events than 16 before the reader can drain them
        (m / "pre" / f"f{i}").write_bytes(b"%d" % i)
    for i in range(0, 3000, 7):
        os.unlink(m / "pre" / f"f{i}")
    converge(m, d.dst, d, timeout=90)
    log = d.logtext()
    assert "WARNING: the inotify event queue overflowed" in log
    assert "fs.inotify.max_queued_events = 16 events" in log, log
    assert f"now {int(saved)}" in log and "sysctl -w fs.inotify.max_queued_events=" in log
    c = settled(d)
    assert c["overflows"] >= 1 and c["rescans"] >= 1
    # the rebuilt instance has the restored limit: live changes flow again without loss
    (m / "after").write_text("after the overflow")
    os.rename(m / "pre", m / "pre-renamed")
    converge(m, d.dst, d)


@pytest.mark.slow
def test_out_of_watches_warns_rescans_and_recovers(tree: tuple[Path, Daemon]) -> None:
    """max_user_watches reached (in a user namespace of its own, so nothing else is affected)."""

    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("util-linux unshare/nsenter are needed (apt-get install util-linux)")
    m, d = tree
    for i in range(40):
        (m / f"d{i}" / "inner").mkdir(parents=True)
        (m / f"d{i}" / "inner" / "f").write_text(str(i))
    limit = "echo 30 > /proc/sys/user/max_inotify_watches && exec \"$@\""
    d.prefix = ["unshare", "--user", "--map-root-user", "sh", "-c", limit, "sh"]
    d.start()
    converge(m, d.dst, d)
    log = d.logtext()
    assert "WARNING: out of inotify watches" in log, log
    assert "user.max_inotify_watches is 30" in log and "sysctl -w user.max_inotify_watches=" in log
    st = d.wait_state("live")
    assert "degraded" in str(st["reason"])
    c = d.counters()
    assert c["unwatched_dirs"] > 0
    # raise the limit in the daemon's namespace: the watches are placed, a rescan catches up
    assert d.proc is not None
    (m / "d39" / "inner" / "f").write_text("changed while unwatched")
    subprocess.run(["nsenter", "--user", "--target", str(d.proc.pid), "sh", "-c",
                    "echo 10000 > /proc/sys/user/max_inotify_watches"], check=True)
    converge(m, d.dst, d, timeout=30)
    deadline = time.monotonic() + 30
    while d.counters()["unwatched_dirs"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.counters()["unwatched_dirs"] == 0
    (m / "d38" / "inner" / "g").write_text("followed live again")
    converge(m, d.dst, d)


def test_an_empty_source_never_empties_the_secondary(tmp_path: Path) -> None:
    """The mass-delete guard of the start-up scan: an unmounted (empty) source deletes nothing."""

    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "f").write_text("keep me")
    dst, state = tmp_path / "dst", tmp_path / "state"
    r = run_cli("--oneshot", src, dst, "--state-dir", state)
    assert r.code == 0, r.stderr
    shutil.rmtree(src / "data")
    r = subprocess.run(daemon_argv(src, dst, state), capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, r.stderr  # SourceLooksUnmounted
    assert (dst / "data" / "f").read_text() == "keep me"
    st = json.loads(run_cli("status", "--state-dir", state, "--json").stdout)
    assert st[0]["state"] == "faulty"


def test_sigterm_during_live_exits_0_and_refuses_a_second_daemon(tree: tuple[Path, Daemon]) -> None:
    m, d = tree
    d.start()
    d.wait_state("live")
    r = subprocess.run(daemon_argv(m, d.dst, d.state), capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr  # DaemonRunning
    (m / "last").write_text("sent before exit")
    time.sleep(0.2)
    assert d.stop() == 0
    assert (d.dst / "last").read_text() == "sent before exit"
    assert d.status()["state"] == "stopped"


def test_a_full_state_directory_stops_the_daemon_with_a_clear_error(tmp_path: Path) -> None:
    """Its id store fills the state directory during the startup scan: exit 5 with a hint, not an internal error."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    state_filling_tree(src)
    with tmpfs_at(state, "160k"):
        r = subprocess.run(daemon_argv(src, dst, state), capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stderr
    assert f"error: the state directory {state} is full" in r.stderr, r.stderr
    assert "hint: free space there or give another --state-dir" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


class _Url:
    """A secondary's ssh:// URL where `Daemon` takes a path (it passes ``str(dst)`` on)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        return self.url


@pytest.mark.ssh
def test_over_ssh_the_daemons_lanes_are_dialled_back(tmp_path: Path) -> None:
    """The daemon over SSH with lanes: the initial copy and the live changes after it go through lanes the agent
    dialled back to a socket sshd held for the daemon (sshd's own log says so), and no socket name is left
    in /tmp."""

    from conftest import running_sshd

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}").write_bytes(os.urandom(200_000 + i))
    (tmp_path / "sshd").mkdir()
    with running_sshd(tmp_path / "sshd", log_level="DEBUG1") as server:
        d = Daemon(src, _Url(server.url(dst)), tmp_path / "state", *server.ssh_args(),  # type: ignore[arg-type]
                   "--lanes", "2")
        try:
            d.start()
            d.wait_state("live", timeout=60)
            converge(src, dst, d)
            for i in range(5):
                (src / f"live{i}").write_bytes(os.urandom(3 << 20))
            converge(src, dst, d)
            assert d.stop() == 0
        finally:
            d.kill()
        log = server.log.read_text(errors="replace")
    # sshd listened for the daemon, opened a channel back for each of the two lanes the agent dialled,
    # and stopped listening when the daemon said so
    held = re.search(r"streamlocal-forward listen path (/tmp/georep-lanes-[0-9a-f]{32}\.sock)", log)
    assert held, log[-3000:]
    assert len(re.findall(r"new forwarded-streamlocal@openssh\.com", log)) == 2, log[-3000:]
    assert "cancel-streamlocal-forward path /tmp/georep-lanes-" in log, log[-3000:]
    assert not os.path.lexists(held.group(1))  # the agent removed the name once its lanes were connected

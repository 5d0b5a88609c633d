"""Faults a user meets: a full secondary disk, a terminal watching, a mismatched agent."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, state_filling_tree, tmpfs_at


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs, so the secondary's disk really fills up."""

    with tmpfs_at(tmp_path / "tiny", "4m") as mnt:
        yield mnt


@pytest.fixture
def tiny_ext4(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB ext4 on a loop device: unlike tmpfs, its ``O_DIRECT`` writes really go to a disk."""

    img, mnt = tmp_path / "tiny.img", tmp_path / "tiny-ext4"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(24 << 20)
    for argv in (["mkfs.ext4", "-q", "-F", str(img)], ["mount", "-o", "loop", str(img), str(mnt)]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot make a loop-mounted ext4 (tests run as root, e2fsprogs installed): {r.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _disk_full_then_freed(src: Path, dst: Path, state: Path) -> None:
    (src / "fits").write_bytes(os.urandom(100_000))
    (src / "too-big").write_bytes(os.urandom(32 << 20))  # > the free space; 8 MiB or more: written direct
    r = run_cli("--oneshot", src, dst, "--state-dir", state)
    assert r.code == 11, r.stderr
    assert "full" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert not (dst / "too-big").exists()
    assert [p.name for p in (dst / ".georep" / "staging").iterdir()] == []
    # after freeing space (here: the big file goes away) the same command completes
    (src / "too-big").unlink()
    r = run_cli("--oneshot", src, dst, "--state-dir", state)
    assert r.code == 0, r.stderr
    assert (dst / "fits").read_bytes() == (src / "fits").read_bytes()


@pytest.mark.parametrize("fs", ["tmpfs", "ext4"])
def test_disk_full_is_a_clear_error_and_publishes_nothing_partial(tmp_path: Path, fs: str,
                                                                  request: pytest.FixtureRequest) -> None:
    """On tmpfs the page cache fills; on ext4 the large file's direct writes meet the full disk."""

    mnt = request.getfixturevalue("tiny_fs" if fs == "tmpfs" else "tiny_ext4")
    src = tmp_path / "src"
    src.mkdir()
    _disk_full_then_freed(src, mnt / "dst", tmp_path / "st")


def test_a_full_state_directory_is_a_clear_error_and_the_next_run_completes(tmp_path: Path) -> None:
    """The id store and the ledger meet a full disk mid-run: SQLite's error becomes a StateError with a hint.

    It used to end as "internal error: OperationalError: cannot commit - no transaction is
    active" (closing the id store tried to commit what SQLite had rolled back).
    """

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    state_filling_tree(src)
    with tmpfs_at(state, "160k"):
        r = run_cli("--oneshot", src, dst, "--state-dir", state)
    assert r.code == 5, r.stderr
    assert f"error: the state directory {state} is full" in r.stderr, r.stderr
    assert "hint: free space there or give another --state-dir" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    names = {p.name for p in dst.rglob("*") if ".georep" not in p.parts}
    assert names <= {p.name for p in src.rglob("*")}  # nothing half-written shows
    r = run_cli("--oneshot", src, dst, "--state-dir", tmp_path / "roomy")
    assert r.code == 0, r.stderr
    assert sorted(p.relative_to(dst) for p in dst.rglob("*") if ".georep" not in p.parts) == sorted(
        p.relative_to(src) for p in src.rglob("*"))
    assert all((dst / p.relative_to(src)).read_bytes() == p.read_bytes() for p in src.rglob("*.txt"))


def test_progress_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(b"x" * 1000)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "georep", "--oneshot", str(src), str(tmp_path / "dst"), "--state-dir",
         str(tmp_path / "st")],
        stderr=follower, stdout=subprocess.DEVNULL,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0
    text = out.decode()
    assert "ETA" in text and "entries" in text  # the live line
    assert "51 entries, 50 files sent" in text  # the summary line


def test_no_progress_line_when_not_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    r = run_cli("--oneshot", tmp_path / "src", tmp_path / "dst", "--state-dir", tmp_path / "st")
    assert r.code == 0
    assert "ETA" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

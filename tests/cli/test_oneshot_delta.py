"""`georep-sync --oneshot` on changed large files: only the changed blocks travel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli
from treecmp import diff, snapshot

MIB = 1 << 20


def oneshot(src: Path, dst: Path, state: Path) -> dict[str, int]:
    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--json")
    assert r.code == 0, r.stderr
    s = r.summary
    assert s["errors"] == 0, s
    return {k: v for k, v in s.items() if isinstance(v, int)}


@pytest.fixture
def synced(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 16 MiB (and a bit) file and a small one, replicated once."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(16 * MIB + 12345))
    (src / "small").write_bytes(b"unchanged")
    first = oneshot(src, dst, state)
    assert first["bytes_data"] == 16 * MIB + 12345 + 9 and first["bytes_matched"] == 0
    return src, dst, state


def test_append_costs_about_the_appended_bytes(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    ino = os.stat(dst / "big").st_ino
    with open(src / "big", "ab") as f:
        f.write(os.urandom(MIB))
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["files"] == 1
    assert s["bytes_data"] < 2 * MIB, s
    assert s["bytes_wire"] < 2 * MIB, s
    assert s["bytes_matched"] == 16 * MIB
    assert os.stat(dst / "big").st_ino != ino  # built in staging, renamed into place
    assert os.listdir(dst / ".georep" / "staging") == []


def test_a_change_in_the_middle_sends_one_block(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    with open(src / "big", "r+b") as f:
        f.seek(5 * MIB)
        f.write(os.urandom(4096))
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == MIB, s
    assert s["bytes_wire"] < MIB + 64 * 1024, s


def test_a_change_across_a_block_boundary_sends_two(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    with open(src / "big", "r+b") as f:
        f.seek(7 * MIB - 100)
        f.write(os.urandom(200))
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == 2 * MIB, s


def test_truncated_file(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    os.truncate(src / "big", 10 * MIB + 500)
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == 500, s  # the new short last block; the rest is in the basis


def test_a_file_that_became_sparse_goes_whole_and_keeps_its_holes(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    size = os.stat(src / "big").st_size
    with open(src / "big", "r+b") as f:  # the same inode: the agent has a basis for it
        f.truncate(0)
        f.truncate(size)
        f.seek(8 * MIB)
        f.write(os.urandom(MIB))
    assert os.stat(src / "big").st_blocks * 512 < 2 * MIB
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []  # the data map (holes) included
    assert s["bytes_data"] == MIB and s["bytes_matched"] == 0, s
    assert os.stat(dst / "big").st_blocks * 512 < 2 * MIB


def test_a_basis_damaged_on_the_secondary_is_repaired_by_the_delta(synced: tuple[Path, Path, Path]) -> None:
    """Garbage written into the replica behind the agent's back (size and mtime kept) shows in its block hashes."""

    src, dst, state = synced
    st = os.stat(dst / "big")
    with open(dst / "big", "r+b") as f:
        f.seek(3 * MIB + 7)
        f.write(b"garbage")
    os.utime(dst / "big", ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(src / "big", "ab") as f:
        f.write(os.urandom(MIB))
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] < 3 * MIB, s  # the damaged block, the old last block, the new bytes


def test_hard_linked_large_file_changed(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(4 * MIB))
    os.link(src / "a", src / "b")
    oneshot(src, dst, state)
    with open(src / "a", "ab") as f:
        f.write(b"more")
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []  # still one inode for both names
    assert s["bytes_data"] < MIB, s


def test_touch_only_sends_nothing(synced: tuple[Path, Path, Path]) -> None:
    src, dst, state = synced
    os.utime(src / "big", ns=(10**18, 10**18))
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == 0 and s["bytes_matched"] == 16 * MIB + 12345, s

"""bench/scratchfs.py: the scale section's throwaway ext4 really is a filesystem of its own, and goes;
and what the report says of an ext4 (bench/runner.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import scratchfs
from bench.runner import filesystem_description
from bench.scratchfs import scratch_fs


def test_the_scratch_fs_is_its_own_ext4_and_leaves_nothing(tmp_path: Path) -> None:
    why = scratchfs._unavailable()
    if why is not None:
        pytest.skip(f"a loop-mounted ext4 cannot be made here: {why}")
    logged: list[str] = []
    with scratch_fs(tmp_path, "s", 10_000, logged.append) as scratch:
        assert scratch.mounted, logged
        assert scratch.root == tmp_path / "s"
        assert os.stat(scratch.root).st_dev != os.stat(tmp_path).st_dev
        assert os.path.ismount(scratch.root)
        for i in range(100):
            (scratch.root / f"f{i}").write_bytes(b"x" * i)
        assert (tmp_path / "s.img").stat().st_size >= scratchfs.MIN_BYTES
        # room for the names the section makes: the tree, its tenth and both replicas
        assert os.statvfs(scratch.root).f_files >= 10_000 * scratchfs.INODES_PER_ENTRY
    assert not os.path.ismount(tmp_path / "s")
    assert list((tmp_path / "s").iterdir()) == []  # the mount point, empty again
    assert not (tmp_path / "s.img").exists()
    assert any("unmounted and deleted" in m for m in logged)


def test_the_scratch_fs_has_room_for_the_data_it_is_sized_for(tmp_path: Path) -> None:
    """gsyncd's section sizes it by names and by bytes (its copies of the datasets)."""

    why = scratchfs._unavailable()
    if why is not None:
        pytest.skip(f"a loop-mounted ext4 cannot be made here: {why}")
    data = 3 << 30
    with scratch_fs(tmp_path, "g", 1_000, lambda _: None, data_bytes=data) as scratch:
        assert scratch.mounted
        st = os.statvfs(scratch.root)
        assert st.f_bavail * st.f_frsize >= data  # the journal and metadata come on top
        assert (tmp_path / "g.img").stat().st_blocks * 512 < 1 << 30  # sparse: nothing written for it yet
    assert not (tmp_path / "g.img").exists()


def test_without_mkfs_the_section_gets_a_plain_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "mkfs.ext4" else real_which(tool))
    logged: list[str] = []
    with scratch_fs(tmp_path, "s", 10_000, logged.append) as scratch:
        assert not scratch.mounted
        assert os.stat(scratch.root).st_dev == os.stat(tmp_path).st_dev
        (scratch.root / "f").write_bytes(b"kept")
        assert "no mkfs.ext4" in scratch.description
    assert (tmp_path / "s" / "f").read_bytes() == b"kept"  # the work directory's cleanup removes it
    assert logged == ["scratch filesystem not made (no mkfs.ext4); using a plain directory"]


@pytest.mark.parametrize("journal", [True, False])
def test_the_report_says_whether_an_ext4_keeps_a_journal(tmp_path: Path, journal: bool) -> None:
    """Without one, ext4 steps over recently freed inodes on every create (bench/README.md)."""

    why = scratchfs._unavailable()
    if why is not None:
        pytest.skip(f"a loop-mounted ext4 cannot be made here: {why}")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    features = [] if journal else ["-O", "^has_journal"]
    subprocess.run(["mkfs.ext4", "-q", "-F", *features, str(img)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, capture_output=True)
    try:
        said = filesystem_description(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    if journal:
        assert said == "ext4 (journaled)"
    else:
        assert said.startswith("ext4 without a journal") and "recently_deleted()" in said
    assert filesystem_description(Path("/proc")) == "proc"  # not ext4: the type alone


def test_gsyncd_sizes_its_filesystem_by_the_datasets_it_copies() -> None:
    from bench.gsyncd import COPIES, NAMES_PER_FILE, room_needed
    from bench.results import DatasetInfo

    def ds(name: str, files: int, nbytes: int) -> DatasetInfo:
        return DatasetInfo(name, files, 1, 0, nbytes, 0.0, "")

    names, data = room_needed([ds("small", 20_000, 174_000_000), ds("large", 4, 1_073_741_824),
                               ds("plain-dir live", 20_000, 174_000_000)])  # not one gsyncd copies
    assert names == NAMES_PER_FILE * 20_004
    assert data == COPIES * (174_000_000 + 1_073_741_824)

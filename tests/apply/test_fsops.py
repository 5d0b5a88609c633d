"""georep.apply.fsops: the rename that publishes a file under a free name, on a real filesystem."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from georep.apply import fsops


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[int, int, Path, Path]]:
    src, dst = tmp_path / "staging", tmp_path / "dir"
    src.mkdir()
    dst.mkdir()
    sfd, dfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY), os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    yield sfd, dfd, src, dst
    os.close(sfd)
    os.close(dfd)


def test_renameat2_is_there_on_this_machine() -> None:
    # the fast path is what this test file is about: a libc without it would test only the fallback
    assert fsops._RENAMEAT2 is not None


def test_a_free_name_takes_the_file(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is True
    assert (dst / "f").read_bytes() == b"new"
    assert not (src / "tmp").exists()


def test_a_taken_name_is_left_as_it_was(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    (dst / "f").write_bytes(b"old")
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is False
    assert (dst / "f").read_bytes() == b"old"
    assert (src / "tmp").read_bytes() == b"new"


def test_a_symlink_in_the_way_is_a_taken_name_never_followed(dirs: tuple[int, int, Path, Path],
                                                             tmp_path: Path) -> None:
    sfd, dfd, src, dst = dirs
    (src / "tmp").write_bytes(b"new")
    os.symlink(tmp_path / "elsewhere", dst / "f")  # dangling: a rename through it would create "elsewhere"
    assert fsops.rename_noreplace_at(sfd, b"tmp", dfd, b"f") is False
    assert os.path.islink(dst / "f")
    assert not (tmp_path / "elsewhere").exists()
    assert (src / "tmp").read_bytes() == b"new"


def test_other_errors_are_raised(dirs: tuple[int, int, Path, Path]) -> None:
    sfd, dfd, _src, _dst = dirs
    with pytest.raises(FileNotFoundError):
        fsops.rename_noreplace_at(sfd, b"missing", dfd, b"f")

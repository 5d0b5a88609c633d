"""The secondary is a GlusterFS volume mounted with FUSE, as in the story (the North American cluster).

FUSE makes no unnamed (O_TMPFILE) files, so here the agent takes its other way: every file
is made in staging and renamed into place.  The fidelity checks are those of a local disk.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import oneshot
from gluster import volume
from treecmp import build_fidelity_tree, diff, snapshot

pytestmark = [pytest.mark.gluster, pytest.mark.slow]


def test_a_fuse_mounted_volume_as_the_secondary(tmp_path: Path) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    build_fidelity_tree(src, files=150)
    # large enough to be written around the page cache (O_DIRECT through FUSE), unaligned tail
    (src / "large.bin").write_bytes(os.urandom(20 * 1024 * 1024 + 123))
    with volume(tmp_path, "gr-sec") as vol:
        probe = vol.mount / "probe-dir"
        probe.mkdir()
        try:  # the reason for this test: no unnamed files on FUSE
            os.close(os.open(probe, os.O_RDWR | os.O_TMPFILE, 0o600))
            made = 0
        except OSError as exc:
            made = exc.errno or 0
        assert made in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
        dst = vol.mount / "replica"
        first = oneshot(src, dst, state)
        assert first["errors"] == 0
        assert diff(snapshot(src), snapshot(dst)) == []
        assert os.stat(dst / "hard-1").st_ino == os.stat(dst / "dir" / "random.bin").st_ino
        # an update replaces a file in place (rename over it), a rename sends no data
        (src / "dir" / "random.bin").write_bytes(os.urandom(70_000))
        os.rename(src / "mode-0640", src / "mode-0640-renamed")
        again = oneshot(src, dst, state)
        assert again["files"] == 1
        assert diff(snapshot(src), snapshot(dst)) == []
        assert os.listdir(dst / ".georep" / "staging") == []


def test_a_fuse_mounted_volume_as_a_plain_source(tmp_path: Path) -> None:
    """The story's migration read an old mount: a FUSE-mounted volume replicated as a plain tree.

    Its inode numbers come from gfids and use all 64 bits; the id store keeps them all.
    """

    dst, state = tmp_path / "dst", tmp_path / "state"
    with volume(tmp_path, "gr-psrc") as vol:
        src = vol.mount / "tree"
        build_fidelity_tree(src, files=150)
        assert any(os.lstat(p).st_ino >= 1 << 63 for p in src.rglob("*"))
        first = oneshot(src, dst, state)
        assert first["errors"] == 0
        assert diff(snapshot(src), snapshot(dst)) == []
        os.rename(src / "dir", src / "dir-renamed")
        again = oneshot(src, dst, state)
        assert again["bytes_data"] == 0  # the rename was recognised by inode: no data again
        assert diff(snapshot(src), snapshot(dst)) == []

"""`--oneshot` from a real GlusterFS brick: gfids as ids, data read on the brick, the volume's view."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from conftest import run_cli
from gluster import volume
from treecmp import build_fidelity_tree, diff, snapshot

pytestmark = [pytest.mark.gluster, pytest.mark.slow]


def test_brick_oneshot_equals_the_volume_view(tmp_path: Path) -> None:
    with volume(tmp_path, "gr-oneshot") as vol:
        build_fidelity_tree(vol.mount, files=200)
        brick = vol.bricks[0]
        assert (brick / ".glusterfs").is_dir()
        dst, state = tmp_path / "dst", tmp_path / "state"
        r = run_cli("--oneshot", brick, dst, "--state-dir", state, "--json")
        assert r.code == 0, r.stderr
        assert diff(snapshot(vol.mount), snapshot(dst)) == []
        assert not (dst / ".glusterfs").exists()
        # ids on the secondary are the gfids the volume reports
        gfid = uuid.UUID(os.getxattr(vol.mount / "dir" / "random.bin", "glusterfs.gfid.string").decode())
        with sqlite3.connect(dst / ".georep" / "index.db") as db:
            (oid,) = db.execute("SELECT id FROM names WHERE name = ?", (b"random.bin",)).fetchone()
        assert oid == gfid.bytes
        # a rename on the volume moves the name on the secondary: no data
        os.rename(vol.mount / "dir", vol.mount / "dir-renamed")
        r = run_cli("--oneshot", brick, dst, "--state-dir", state, "--json")
        assert r.code == 0, r.stderr
        assert r.summary["bytes_data"] == 0
        assert diff(snapshot(vol.mount), snapshot(dst)) == []


def test_a_directory_that_is_not_a_brick_is_a_plain_tree(tmp_path: Path) -> None:
    """Without trusted.glusterfs.volume-id, '.glusterfs' is just a name like any other."""

    src = tmp_path / "src"
    (src / ".glusterfs").mkdir(parents=True)
    (src / ".glusterfs" / "x").write_text("plain data")
    r = run_cli("--oneshot", src, tmp_path / "dst", "--state-dir", tmp_path / "st")
    assert r.code == 0, r.stderr
    assert (tmp_path / "dst" / ".glusterfs" / "x").read_text() == "plain data"

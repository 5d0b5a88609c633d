"""A block delta over a real OpenSSH connection: an append costs about the appended bytes on the wire."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Sshd, run_cli
from treecmp import diff, snapshot

pytestmark = pytest.mark.ssh

MIB = 1 << 20


def test_appends_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(2):
        (src / f"big{i}").write_bytes(os.urandom(12 * MIB))
    args = ["--oneshot", src, sshd.url(dst), "--state-dir", state, "--json", *sshd.ssh_args()]
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    for i in range(2):
        with open(src / f"big{i}", "ab") as f:
            f.write(os.urandom(MIB))
    r = run_cli(*args)
    assert r.code == 0, r.stderr
    assert diff(snapshot(src), snapshot(dst)) == []
    s = r.summary
    assert s["bytes_data"] == 2 * MIB and s["bytes_matched"] == 24 * MIB, s
    assert isinstance(s["bytes_wire"], int) and s["bytes_wire"] < 2 * 2 * MIB, s

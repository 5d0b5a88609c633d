"""`python -m bench.sendercpu` copies with each checkout in turn and reports its sender's own CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchcli import TOP, run_bench, table_rows

pytestmark = pytest.mark.slow


def test_sendercpu_reports_each_checkout(tmp_path: Path) -> None:
    r = run_bench("sendercpu", "--rounds", "2", "--files", "300", "--work", str(tmp_path), f"a={TOP}", f"b={TOP}")
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout, {"a", "b"})
    assert set(rows) == {"a", "b"}, r.stdout
    for name, (cpu, user, system, wall, agent) in rows.items():
        assert cpu > 0 and user > 0 and system >= 0 and wall > 0 and agent > 0, (name, r.stdout)
        assert abs(cpu - (user + system)) < 0.002 and cpu < 3 * wall, (name, r.stdout)
    assert list(tmp_path.iterdir()) == []  # its work directory is gone


def test_sendercpu_refuses_what_is_no_checkout(tmp_path: Path) -> None:
    r = run_bench("sendercpu", f"x={tmp_path}", timeout=60)
    assert r.returncode == 2 and "NAME=PATH" in r.stderr

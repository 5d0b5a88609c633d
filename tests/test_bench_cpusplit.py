"""`python -m bench.cpusplit` runs both contenders and reports real CPU figures for each side."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchcli import run_bench, table_rows

pytestmark = [pytest.mark.slow, pytest.mark.ssh]


def test_cpusplit_reports_each_side_of_both_contenders(tmp_path: Path) -> None:
    r = run_bench("cpusplit", "--rounds", "1", "--files", "300", "--work", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout, {"georep-sync oneshot", "rsync -a"})
    assert set(rows) == {"georep-sync oneshot", "rsync -a"}, r.stdout
    for name, (wall, sender, secondary, proxy, machine, per_core, each_round) in rows.items():
        assert wall > 0 and sender > 0 and secondary > 0 and machine > 0, (name, r.stdout)
        assert proxy >= 0 and per_core > 0, (name, r.stdout)
        assert each_round == wall, (name, r.stdout)  # one round: its wall time is the median
    assert list(tmp_path.iterdir()) == []  # its work directory is gone


def test_cpusplit_refuses_zero_rounds() -> None:
    r = run_bench("cpusplit", "--rounds", "0", timeout=60)
    assert r.returncode == 2 and "--rounds" in r.stderr


def test_cpusplit_compares_checkouts_in_turns(tmp_path: Path) -> None:
    """``--georep NAME=CHECKOUT`` puts each named checkout in the turns, next to rsync."""

    here = str(Path(__file__).resolve().parent.parent)
    r = run_bench("cpusplit", "--rounds", "1", "--files", "200", "--work", str(tmp_path),
                  "--georep", f"one={here}", "--georep", f"two={here}")
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout, {"one", "two", "rsync -a"})
    assert set(rows) == {"one", "two", "rsync -a"}, r.stdout
    assert all(row[0] > 0 and row[1] > 0 and row[2] > 0 for row in rows.values()), r.stdout
    assert all(len(row) == 7 and row[6] == row[0] for row in rows.values()), r.stdout


def test_cpusplit_refuses_a_checkout_that_is_not_one(tmp_path: Path) -> None:
    r = run_bench("cpusplit", "--georep", f"x={tmp_path}", timeout=60)
    assert r.returncode == 2 and "expected NAME=PATH" in r.stderr

"""`python -m bench --quick` runs end to end and produces its table: a smoke test of the harness.

Speed is never asserted: only that the run exits 0 and that georep-sync and rsync each have rows whose
measured values (wall time, bytes on the wire, peak RSS) are real, non-zero measurements.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.ssh]


def _rows(table_text: str, header_start: str) -> list[dict[str, str]]:
    lines = table_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {header_start} |"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split(" | ")), strict=True)))
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("×"))


def test_quick_run_produces_the_table(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--workdir", str(tmp_path)], cwd=TOP,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (TOP / "bench" / "RESULTS.md").exists() or "quick run" not in (TOP / "bench" / "RESULTS.md").read_text()
    rows = _rows(r.stdout, "dataset | phase")
    for contender in ("georep-sync oneshot", "rsync -a"):
        mine = [row for row in rows if row["contender"] == contender and row["phase"] == "initial"]
        assert mine, f"no initial-copy row for {contender}"
        for row in mine:
            assert _number(row["wall s"]) > 0
            assert _number(row["MB/s"]) > 0 and _number(row["files/s"]) > 0
            up, _down = (_number(v) for v in row["wire MB ↑/↓"].split(" / "))
            assert up > 0, row
            sender, receiver = (_number(v) for v in row["peak RSS MiB sender/receiver"].split(" / "))
            assert sender > 0 and receiver > 0, row
            assert row["replica equal"] == "yes", row
    assert list(tmp_path.iterdir()) == [], "the work directory was not cleaned up"

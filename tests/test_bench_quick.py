"""`python -m bench --quick` runs end to end and produces its table: a smoke test of the harness.

Speed is never asserted: only that the run exits 0 and that georep-sync and rsync each have rows whose
measured values (wall time, bytes on the wire, peak RSS) are real, non-zero measurements, and that the
plain-directory daemon's live rows (trickle of writes, touch-few, directory rename next to rsync) exist
with every file delivered and real lags and wire bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import _judged, targets_table
from bench.results import Results, SyncRow

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
    check_plain_directory_live(r.stdout)
    check_targets(r.stdout)
    assert list(tmp_path.iterdir()) == [], "the work directory was not cleaned up"


def check_targets(out: str) -> None:
    """Every tuning target the quick run has rows for is decided, met or not (no speed asserted here)."""

    targets = {row["target (issue 6)"].split(":")[0]: row for row in _rows(out, "target (issue 6)")}
    assert {"large", "small", "renames", "appends", "touch-few on small with the daemon", "scale"} <= targets.keys(), (
        sorted(targets))
    for row in targets.values():
        assert row["verdict"] in ("met", "**not met**"), row
        assert any(ch.isdigit() for ch in row["measured in this run"]), row


def _wire(row: dict[str, str]) -> tuple[float, float]:
    up, down = (_number(v) for v in row["wire bytes ↑ / ↓"].split(" / "))
    return up, down


def check_plain_directory_live(out: str) -> None:
    """The inotify daemon's rows: measured, complete, equal replicas (no speed threshold)."""

    not_run = out[out.find("## Not run"):] if "## Not run" in out else ""
    assert "| measurement | contender |" in out, f"no plain-directory live table; {not_run[:2000]}"
    rows = {(row["measurement"], row["contender"]): row for row in _rows(out, "measurement | contender")}
    daemon, rsync = "georep-sync daemon (inotify)", "rsync -a --delete (rerun)"
    assert {("trickle of writes", daemon), ("touch-few", daemon), ("directory rename", daemon),
            ("directory rename", rsync)} <= rows.keys(), f"{sorted(rows)}; {not_run[:2000]}"

    trickle = rows[("trickle of writes", daemon)]
    assert _number(trickle["files"]) > 0 and trickle["complete on secondary"] == trickle["files"], trickle
    assert _number(trickle["lag p50 ms"]) > 0 and _number(trickle["lag max ms"]) > 0, trickle
    assert _wire(trickle)[0] > 0, trickle

    touch = rows[("touch-few", daemon)]
    assert _number(touch["files"]) == 10 and touch["complete on secondary"] == touch["files"], touch
    assert _number(touch["lag p50 ms"]) > 0 and _number(touch["all complete after ms"]) > 0, touch
    assert _wire(touch)[0] > 0, touch

    for contender in (daemon, rsync):
        rename = rows[("directory rename", contender)]
        assert _number(rename["files"]) >= 1000, rename
        assert rename["complete on secondary"] == rename["files"], rename
        assert _number(rename["all complete after ms"]) > 0, rename
        up, down = _wire(rename)
        assert up > 0 and down > 0, rename
        assert rename["replica equal"] == "yes", rename


def _small_row(walls: list[float], rtt_ms: float = 0.0) -> SyncRow:
    wall = sorted(walls)[len(walls) // 2]
    return SyncRow("small", "initial", rtt_ms, "georep-sync oneshot", wall, 174_000_000, 20_000, 1, 1, 1, 1, 1.0, 0,
                   True, walls=walls)


def test_a_target_is_not_judged_on_runs_that_varied_widely() -> None:
    """Runs of one figure 3.9 s / 7.5 s / 11.8 s apart (a busy shared disk) decide no target either way."""

    steady, noisy = _small_row([2.26, 2.45, 2.50]), _small_row([3.92, 7.48, 11.76])
    assert _judged(True, steady) == "met"
    assert _judged(False, steady) == "**not met**"
    assert _judged(True, noisy).startswith("inconclusive: its runs varied 3.0×")
    assert _judged(False, steady, noisy).startswith("inconclusive")
    assert _judged(None, noisy) == "—"


def test_the_far_rtt_target_weighs_the_far_runs_too() -> None:
    """The 150 ms target divides two medians: if the 150 ms runs varied widely, it is not decided."""

    def verdict(far_walls: list[float]) -> str:
        res = Results("python -m bench", "now", {}, {}, "", quick=False)
        res.sync = [_small_row([2.26, 2.45, 2.50]), _small_row(far_walls, rtt_ms=150.0)]
        rows = [r for r in targets_table(res) if r.startswith("| small at 150 ms RTT")]
        assert len(rows) == 1, targets_table(res)
        return rows[0].rsplit("|", 2)[-2].strip()

    assert verdict([2.9, 3.0, 3.1]) == "met"
    assert verdict([4.0, 4.1, 4.3]) == "**not met**"
    assert verdict([2.9, 5.0, 9.0]).startswith("inconclusive")

"""Running a `python -m bench.…` tool from the tests, and reading the Markdown table it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m bench.MODULE ARGS`` from the repository root."""

    return subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=TOP, capture_output=True,
                          text=True, timeout=timeout)


def table_rows(stdout: str, names: set[str]) -> dict[str, list[float]]:
    """The numbers of the table rows whose first cell is one of ``names``."""

    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in names:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows

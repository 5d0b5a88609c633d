"""Process set-up in `georep.cli.main`, seen from the kernel's side."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates a 3 MiB buffer and prints how many anonymous mappings of that size or more
# appeared for it outside the heap: one when glibc maps it on its own, none from the heap.
_PROBE = """
import sys
def mapped():
    out = set()
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) == 5 and hi - lo >= 3 << 20:  # no path: anonymous, and not [heap]
            out.add(fields[0])
    return out
if sys.argv[1] == "steady":
    from georep.cli import main
    main._steady_malloc()
before = mapped()
buf = bytearray(3 << 20)
print(len(mapped() - before))
"""


def probe(mode: str) -> int:
    r = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(r.stdout)


def test_frame_sized_buffers_come_from_the_heap() -> None:
    """After `_steady_malloc`, a buffer of a few MiB is no mapping of its own (no page faults per frame)."""

    if probe("default") != 1:
        pytest.skip("this C library does not map a 3 MiB allocation on its own: nothing to compare")
    assert probe("steady") == 0

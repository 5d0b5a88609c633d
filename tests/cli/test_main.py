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


#: Modules an agent used to import at start that only some sessions need: lanes
#: (`georep.apply.lanehub`: sockets, hmac, secrets), writes of large files (concurrent.futures,
#: and logging with it), gfid text (uuid, and platform with it).
_LATER = ("georep.apply.lanehub", "socket", "hmac", "secrets", "concurrent.futures", "logging", "uuid", "platform")


def test_the_agent_starts_without_what_only_some_sessions_use() -> None:
    """What runs before the agent's first answer is imported; the rest when a session asks for it."""

    code = ("import sys\nimport georep.cli.main, georep.cli.agent_cmd\n"
            f"print(' '.join(sorted(m for m in {_LATER!r} if m in sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == []


def test_a_session_opening_lanes_still_finds_the_hub() -> None:
    """The hub is imported where the agent opens it (the control: what the first test left out is reachable)."""

    code = ("import os, sys, tempfile\nfrom georep.apply import agent\n"
            "class A: state_fd = os.open(tempfile.mkdtemp(), os.O_RDONLY | os.O_DIRECTORY)\n"
            "hub = agent._new_hub(A()); hub.listen()\n"
            "print(type(hub).__name__, 'georep.apply.lanehub' in sys.modules)\nhub.close()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == ["LaneHub", "True"]

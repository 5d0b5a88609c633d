"""`georep-sync demo [DIR]`: build a sample tree and replicate it to a local secondary.

The built-in default job of the README: no SSH server needed, yet the sender talks to
the same `georep-sync agent` over the same protocol (through a pipe).  It shows a first
copy, a rerun that sends nothing, and a directory rename that moves without data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE_NAMES = [b"report.pdf", b"name with spaces ", b"new\nline", b"caf\xe9-latin1", b"-dash", b"x" * 200]


def build_sample(root: Path) -> None:
    r = os.fsencode(root)
    for d in range(20):
        dpath = os.path.join(r, b"assets", b"batch-%02d" % d)
        os.makedirs(dpath, exist_ok=True)
        for i in range(50):
            with open(os.path.join(dpath, b"item-%03d.json" % i), "wb") as f:
                f.write(b'{"id": %d, "batch": %d}\n' % (i, d) * (1 + i % 7))
    odd = os.path.join(r, b"awkward names")
    os.makedirs(odd, exist_ok=True)
    for n in SAMPLE_NAMES:
        with open(os.path.join(odd, n), "wb") as f:
            f.write(n)
    with open(os.path.join(r, b"video.bin"), "wb") as f:
        f.write(os.urandom(8 << 20))
    with open(os.path.join(r, b"disk.img"), "wb") as f:  # sparse: 256 MiB, 1 MiB of data
        f.truncate(256 << 20)
        f.seek(128 << 20)
        f.write(os.urandom(1 << 20))
    os.symlink(b"video.bin", os.path.join(r, b"latest"))
    os.link(os.path.join(r, b"video.bin"), os.path.join(r, b"video-hardlink.bin"))


def run(argv: list[str]) -> int:
    base = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="georep-demo-"))
    src, dst, state = base / "source", base / "secondary", base / "state"
    if not src.exists():
        build_sample(src)
    print(f"georep-sync demo in {base}", file=sys.stderr)
    cmd = [sys.executable, "-m", "georep", "--oneshot", str(src), str(dst), "--state-dir", str(state)]
    steps = [
        ("1. first copy", None),
        ("2. rerun with nothing changed (no file data sent)", None),
        ("3. rename a directory of 50 files (moved on the secondary, no data sent)",
         lambda: os.rename(src / "assets" / "batch-00", src / "assets" / "renamed-batch")),
    ]
    for title, change in steps:
        if change is not None:
            change()
        print(title, file=sys.stderr)
        code = subprocess.call(cmd)
        if code != 0:
            return code
    differ = subprocess.call(["diff", "-r", "--no-dereference", "-x", ".georep", str(src), str(dst)])
    print("trees are identical" if differ == 0 else "trees DIFFER", file=sys.stderr)
    return 0 if differ == 0 else 1

"""A throwaway ext4 on a loop device, for the scale section's millions of names (and gsyncd's volumes).

Why
---
The scale section leaves about 2.2 million names behind (the 1,000,000-entry tree, its
100,000-entry tenth, and a replica of each).  Removing them with ``rm -rf`` took about
90 s of the 17.2-minute full run of 2026-12-04, and a full run must fit in 15 minutes.
Made on a filesystem of their own, they go with one unmount and the deletion of one image
file: 3.1 s and 0.2 s for a lone 1,000,000-entry tree, 7.8 to 8.5 s for the section's
2.2 million names in a full run.

The gsyncd section leaves eleven GlusterFS bricks behind (two of them with the small
tree and its 20,000 gfid links: 58,000 names each; ``rm -rf`` of one took 4.5 s) and its
copies of the datasets; it makes them on a filesystem of its own too.

The image lives in the work directory, so the tree stays on the same disk as everything
else; only the ext4 on top of it is new.  The report says where the scale tree lived.
Without root, ``mkfs.ext4`` or a loop device, the section runs in a plain directory of
the work directory as before, and the report says that instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Inodes per entry of the tree: the tree, its tenth, a replica of each, and slack.
INODES_PER_ENTRY = 3
#: Image bytes per entry (sparse: only what is written takes room on the disk).
BYTES_PER_ENTRY = 16 * 1024
MIN_BYTES = 1 << 30
#: Room ext4 takes from an image besides inodes (its journal, up to 128 MiB below 32 GiB, group
#: descriptors, bitmaps), on top of ``data_bytes`` and 1/32 of it: measured, a 3 GiB image left
#: 2.9 GiB to files.
DATA_OVERHEAD = 256 << 20


@dataclass(frozen=True, slots=True)
class Scratch:
    """Where the section's trees go, and how that place was made."""

    root: Path
    mounted: bool
    description: str


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _why_not(argv: list[str], r: subprocess.CompletedProcess[str]) -> str:
    return f"`{' '.join(argv[:2])}` exit {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"


@contextlib.contextmanager
def scratch_fs(parent: Path, name: str, entries: int, log: Callable[[str], None], data_bytes: int = 0
               ) -> Iterator[Scratch]:
    """A fresh ext4 mounted at ``parent/name`` for ``entries`` names and ``data_bytes`` of data, gone afterwards.

    Falls back to a plain directory ``parent/name`` (removed by the caller's cleanup, as the
    rest of the work directory is) when the filesystem cannot be made or mounted.
    """

    mnt = parent / name
    img = parent / f"{name}.img"
    mnt.mkdir(parents=True)
    why = _unavailable()
    if why is None:
        room = data_bytes + data_bytes // 32 + DATA_OVERHEAD if data_bytes else 0
        size = max(MIN_BYTES, entries * BYTES_PER_ENTRY + room)
        with open(img, "wb") as f:
            f.truncate(size)
        mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(max(entries * INODES_PER_ENTRY, 100_000)),
                "-E", "lazy_itable_init=0,lazy_journal_init=0", str(img)]
        r = _run(mkfs)
        if r.returncode != 0:
            why = _why_not(mkfs, r)
        else:
            mount = ["mount", "-o", "loop", str(img), str(mnt)]
            r = _run(mount)
            if r.returncode != 0:
                why = _why_not(mount, r)
        if why is not None:
            img.unlink(missing_ok=True)
    if why is not None:
        log(f"scratch filesystem not made ({why}); using a plain directory")
        yield Scratch(mnt, False, f"a directory of the work directory (no filesystem of its own: {why})")
        return
    try:
        yield Scratch(mnt, True, "an ext4 of its own (loop device; its sparse image in the work directory, on the "
                                 "same disk), unmounted and deleted after the section instead of removing its "
                                 "names one by one")
    finally:
        t = time.perf_counter()
        _unmount(mnt)
        img.unlink(missing_ok=True)
        log(f"scratch filesystem {name} unmounted and deleted in {time.perf_counter() - t:.1f}s")


def _unavailable() -> str | None:
    """Why a loop-mounted ext4 cannot be made here, or None."""

    if os.geteuid() != 0:
        return "not root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    return None


def _unmount(mnt: Path) -> None:
    """Unmount, waiting out a process that still holds a file there (an agent being reaped)."""

    for _ in range(50):
        if _run(["umount", str(mnt)]).returncode == 0:
            return
        time.sleep(0.1)
    r = _run(["umount", "--lazy", str(mnt)])
    if r.returncode != 0:
        raise RuntimeError(f"cannot unmount the scratch filesystem {mnt}: {r.stderr.strip()}")

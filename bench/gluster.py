"""Real GlusterFS volumes for the live benchmarks (a copy of tests/gluster.py's logic: bench must not import tests).

A volume is one brick in the work directory, ``force``-created (bricks on the root
filesystem), changelogs on, FUSE-mounted; everything is stopped and deleted afterwards.
Names carry the runner's pid so concurrent test runs on the same glusterd never collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GLUSTER = shutil.which("gluster") or "/usr/sbin/gluster"
GLUSTERD = shutil.which("glusterd") or "/usr/sbin/glusterd"


class GlusterUnavailable(RuntimeError):
    """GlusterFS is not installed or glusterd does not answer; the message says which."""


def gluster(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([GLUSTER, "--mode=script", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"gluster {' '.join(args)} failed: {(r.stdout + r.stderr).strip()}")
    return r


def ensure_glusterd() -> None:
    """glusterd answering `gluster volume list`, started if installed and not running."""

    if not os.path.exists(GLUSTERD) or not os.path.exists(GLUSTER):
        raise GlusterUnavailable("GlusterFS is not installed (apt-get install glusterfs-server)")
    if gluster("volume", "list", check=False).returncode == 0:
        return
    subprocess.run([GLUSTERD, "--log-file=/tmp/glusterd-bench.log"], check=False, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gluster("volume", "list", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise GlusterUnavailable("glusterd did not answer `gluster volume list` within 30 s")


@dataclass
class Volume:
    name: str
    brick: Path
    mount: Path


@contextlib.contextmanager
def volume(base: Path, name: str, options: dict[str, str] | None = None, mount: bool = True) -> Iterator[Volume]:
    """A started single-brick volume with changelogs on (FUSE-mounted unless ``mount`` is false)."""

    ensure_glusterd()
    host = socket.gethostname()
    brick = base / f"{name}-brick"
    mnt = base / f"{name}-mnt"
    brick.mkdir(parents=True)
    mnt.mkdir()
    gluster("volume", "create", name, f"{host}:{brick}", "force")
    try:
        gluster("volume", "set", name, "changelog.changelog", "on")
        for k, v in (options or {}).items():
            gluster("volume", "set", name, k, v)
        gluster("volume", "start", name)
        if mount:
            subprocess.run(["mount", "-t", "glusterfs", f"{host}:/{name}", str(mnt)], check=True, timeout=60,
                           capture_output=True)
        try:
            yield Volume(name, brick, mnt)
        finally:
            if mount:
                subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=60, capture_output=True)
    finally:
        gluster("volume", "stop", name, "force", check=False)
        gluster("volume", "delete", name, check=False)

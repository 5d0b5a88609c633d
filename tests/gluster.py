"""Real GlusterFS volumes for the tests: glusterd, bricks in a temp dir, a FUSE mount, changelogs on."""

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


def gluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([GLUSTER, "--mode=script", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"gluster {' '.join(args)} failed: {r.stdout} {r.stderr}")
    return r


def ensure_glusterd() -> None:
    if not os.path.exists(GLUSTERD):
        raise RuntimeError("glusterfs-server is not installed (apt-get install glusterfs-server); .ci/run installs it")
    if gluster("volume", "list", check=False).returncode == 0:
        return
    subprocess.run([GLUSTERD, "--log-file=/tmp/glusterd-tests.log"], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gluster("volume", "list", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("glusterd did not come up")


@dataclass
class Volume:
    name: str
    bricks: list[Path]
    mount: Path


@contextlib.contextmanager
def volume(base: Path, name: str, *, bricks: int = 1, replica: int = 0,
           options: dict[str, str] | None = None) -> Iterator[Volume]:
    """A started, FUSE-mounted volume with changelogs on; everything is removed afterwards."""

    ensure_glusterd()
    host = socket.gethostname()
    paths = [base / f"{name}-b{i + 1}" for i in range(bricks)]
    for p in paths:
        p.mkdir(parents=True)
    mount = base / f"{name}-mnt"
    mount.mkdir()
    layout = ["replica", str(replica)] if replica else []
    gluster("volume", "create", name, *layout, *[f"{host}:{p}" for p in paths], "force")
    try:
        gluster("volume", "set", name, "changelog.changelog", "on")
        for k, v in (options or {}).items():
            gluster("volume", "set", name, k, v)
        gluster("volume", "start", name)
        subprocess.run(["mount", "-t", "glusterfs", f"{host}:/{name}", str(mount)], check=True, timeout=60)
        try:
            yield Volume(name, paths, mount)
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=60)
    finally:
        gluster("volume", "stop", name, "force", check=False)
        gluster("volume", "delete", name, check=False)

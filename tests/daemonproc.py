"""`georep-sync daemon SOURCE SECONDARY` as a real process, for the brick and the plain-directory tests.

The daemon runs as an operator would run it; the tests read its status through
`georep-sync status --json` and wait until the secondary equals the source byte for byte
(`treecmp.snapshot`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from treecmp import HOSTILE_NAMES, diff, snapshot


def daemon_argv(src: Path, dst: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-bb", "-m", "georep", "daemon", str(src), str(dst), "--state-dir", str(state),
            "--verbose", *extra]


class Daemon:
    """One daemon of ``src`` (a brick or a plain directory); ``prefix`` runs it under a wrapper."""

    def __init__(self, src: Path, dst: Path, state: Path, *extra: str, prefix: list[str] | None = None) -> None:
        self.src, self.dst, self.state = src, dst, state
        self.extra = list(extra)
        self.prefix = prefix or []
        self.log = state.parent / f"daemon-{src.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, *daemon_argv(self.src, self.dst, self.state, *self.extra)],
                                         stdout=log, stderr=log)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def statuses(self) -> list[dict[str, object]]:
        """Every daemon's status in this state directory."""

        r = run_cli("status", "--state-dir", self.state, "--json")
        assert r.code == 0, r.stderr
        result: list[dict[str, object]] = json.loads(r.stdout)
        return result

    def status(self) -> dict[str, object]:
        mine = [s for s in self.statuses() if s["source"] == str(self.src)]
        assert len(mine) == 1
        return mine[0]

    def counters(self) -> dict[str, int]:
        c = self.status()["counters"]
        assert isinstance(c, dict)
        return c

    def wait_state(self, *states: str, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            with contextlib.suppress(AssertionError, json.JSONDecodeError, KeyError):
                st = self.status()
                if st.get("state") in states and st.get("pid") == self.proc.pid:  # type: ignore[union-attr]
                    return st
            time.sleep(0.05)
        pytest.fail(f"daemon never reached {states}:\n{self.logtext()[-3000:]}")

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.logtext()[-5000:]

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def converge(src: Path, dst: Path, daemons: Daemon | list[Daemon], timeout: float = 60.0) -> None:
    """Wait until the secondary equals the source (or fail showing the difference and the logs).

    Every daemon must stay alive meanwhile: one that exited fails the test with its log.
    """

    running = daemons if isinstance(daemons, list) else [daemons]
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while time.monotonic() < deadline:
        for d in running:
            d.alive()
        if dst.exists():
            try:
                last = diff(snapshot(src), snapshot(dst))
            except FileNotFoundError:
                last = ["(tree changing)"]
            if not last:
                return
        time.sleep(0.2)
    logs = "\n".join(d.logtext()[-4000:] for d in running)
    pytest.fail("secondary did not converge:\n" + "\n".join(last[:30]) + "\n" + logs)


def make_every_kind_of_change(m: Path) -> None:
    """In ``m``, one of each change a daemon must carry, in one burst.

    Hostile names, a write, an append, a truncation, a 5 MiB file, mode, owner, an xattr set
    and one set then removed, a symlink, a FIFO, a hard link, a directory moved across
    directories, a rename over an existing name, and two files swapped (``a`` ends up "B").
    """

    mb = os.fsencode(m)
    os.makedirs(m / "dir" / "sub")
    for n in HOSTILE_NAMES:
        with open(os.path.join(mb, b"dir", n), "wb") as f:
            f.write(n * 3)
    (m / "file").write_bytes(os.urandom(300_000))
    with open(m / "file", "ab") as f:
        f.write(b"appended")
    (m / "trunc").write_bytes(b"x" * 5000)
    os.truncate(m / "trunc", 10)
    (m / "big").write_bytes(os.urandom(5 << 20))
    os.chmod(m / "file", 0o600)
    os.chown(m / "trunc", 1234, 4321)
    os.setxattr(m / "file", "user.tag", b"v1")
    os.setxattr(m / "trunc", "user.gone", b"x")
    os.removexattr(m / "trunc", "user.gone")
    os.symlink("dir/sub", m / "symlink")
    os.mkfifo(m / "fifo")
    os.link(m / "file", m / "dir" / "hardlink")
    os.rename(m / "dir" / "sub", m / "sub-moved")  # directory rename across directories
    (m / "old").write_text("replaced by a rename")
    (m / "new").write_text("renamed over an existing name")
    os.rename(m / "new", m / "old")
    (m / "a").write_text("A")
    (m / "b").write_text("B")
    os.rename(m / "a", m / "tmp")  # swap a and b
    os.rename(m / "b", m / "a")
    os.rename(m / "tmp", m / "b")

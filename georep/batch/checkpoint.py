"""Durable session state: the journal position, saved only once the secondary acknowledged it.

One directory per (source, secondary) session under the state directory:

    sessions/<key>/position.json   where replay resumes after a restart
    sessions/<key>/status.json     what `georep-sync status` shows (replaced atomically)
    sessions/<key>/lock            held (flock) by the running daemon

Writes are write → fsync → rename → fsync(dir): a crash leaves the old file or the new
one, never a torn one.  The position is saved *after* the agent acknowledged every item
of the batch that ends there, so a restart replays at most one batch, which the agent
applies idempotently: nothing lost, nothing acknowledged sent twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from georep.errors import DaemonRunning, StateError


def session_key(source: bytes, secondary: str) -> str:
    return hashlib.sha256(os.path.realpath(source) + b"\0" + secondary.encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class SessionState:
    """The on-disk state of one daemon session."""

    def __init__(self, state_dir: Path, source: bytes, secondary: str) -> None:
        self.dir = state_dir / "sessions" / session_key(source, secondary)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state directory {self.dir} cannot be made: {exc.strerror}") from None
        self._lock_fd: int | None = None

    def lock(self) -> None:
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = (self.dir / "lock").read_text().strip() or "?"
            raise DaemonRunning(f"a daemon (pid {pid}) already runs this session ({self.dir})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load_position(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / "position.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"saved position in {self.dir} is unreadable: {exc}",
                             hint="remove position.json to start over with a full crawl") from None
        return data if isinstance(data, dict) else None

    def save_position(self, position: dict[str, Any]) -> None:
        write_atomic(self.dir / "position.json", json.dumps(position, sort_keys=True).encode())

    def save_status(self, status: dict[str, Any]) -> None:
        write_atomic(self.dir / "status.json", json.dumps(status, sort_keys=True, indent=1).encode())


def read_statuses(state_dir: Path) -> list[dict[str, Any]]:
    """Every session's last status (for `georep-sync status`)."""

    out = []
    for p in sorted((state_dir / "sessions").glob("*/status.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data["session"] = p.parent.name
            lock = p.parent / "lock"
            data["running"] = _locked(lock)
            out.append(data)
    return out


def _locked(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

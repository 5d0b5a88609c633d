"""Shared fixtures: the CLI run as a real process, and a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import georep

sys.path.insert(0, str(Path(__file__).resolve().parent))

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.stdout.strip().splitlines()[-1])
        return result


def run_cli(*args: str | os.PathLike[str], timeout: float = 600, env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m georep ARGS`` as a separate process, like an operator would."""

    proc = subprocess.run(
        [sys.executable, "-bb", "-m", "georep", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> object:
    return run_cli


def oneshot(src: Path, dst: Path | str, state: Path, *extra: str) -> dict[str, object]:
    """One `--oneshot` run that must succeed; its --json summary."""

    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--json", *extra)
    assert r.code == 0, r.stderr
    return r.summary


@contextlib.contextmanager
def tmpfs_at(mnt: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (mount's syntax: "160k", "4m") at ``mnt``, so that it really fills up."""

    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (tests run as root): {r.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def state_filling_tree(src: Path) -> None:
    """4,000 tiny files in 20 directories: more ids and ledger rows than 160 KiB of state hold."""

    for d in range(20):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(200):
            (src / f"d{d:02}" / f"file-{f:04}.txt").write_bytes(b"%d/%d\n" % (d, f))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Source, secondary and state directory of one test (none of them made yet)."""

    return tmp_path / "src", tmp_path / "dst", tmp_path / "state"


@dataclass
class Sshd:
    port: int
    host_key_pub: str
    known_hosts: Path
    identity: Path
    remote_command: str
    log: Path

    def url(self, path: Path | str, user: str = "root") -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}{path}"

    def ssh_args(self) -> list[str]:
        return ["--known-hosts", str(self.known_hosts), "--identity", str(self.identity),
                "--remote-command", self.remote_command]


class SshdLog:
    """What sshd logged since this was made (the tests of one module share a server, one after another)."""

    def __init__(self, server: Sshd) -> None:
        self.server = server
        self.start = server.log.stat().st_size

    def text(self) -> str:
        with open(self.server.log, "rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 10.0) -> None:
        """Until sshd logged ``needle`` (fails after ``timeout`` seconds)."""

        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < deadline, f"sshd never logged {needle!r}: {self.text()[-2000:]}"
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@contextlib.contextmanager
def running_sshd(d: Path, extra_config: str = "", log_level: str = "VERBOSE") -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1 with a temporary host key and authorized_keys under ``d``.

    ``log_level``: sshd's LogLevel (``DEBUG1`` also logs each authentication request).
    """

    if not os.path.exists(SSHD):
        pytest.fail("OpenSSH sshd is not installed (apt-get install openssh-server); .ci/run installs it")
    os.chmod(d, 0o755)
    _keygen(d / "host_ed25519")
    _keygen(d / "id_ed25519")
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    for _attempt in range(5):
        port = _free_port()
        cfg = d / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"PermitRootLogin prohibit-password\nLogLevel {log_level}\nMaxStartups 50\n" + extra_config
        )
        log = d / "sshd.log"
        with open(log, "ab") as logf:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=logf)
        deadline = time.monotonic() + 10
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    up = s.recv(4).startswith(b"SSH-")
                    if up:
                        break
            except OSError:
                time.sleep(0.05)
        if up:
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"sshd did not start: {log.read_text()[-2000:]}")
    host_pub = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    # the remote shell runs this same interpreter on this same checkout (not whatever
    # copy of georep happens to be installed), so both ends are the code under test
    checkout = Path(georep.__file__).resolve().parent.parent
    remote = f"env PYTHONPATH={shlex.quote(str(checkout))} {sys.executable} -m georep"
    try:
        yield Sshd(port, host_pub, known, d / "id_ed25519", remote, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1 (sshd's defaults: MaxSessions 10)."""

    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server

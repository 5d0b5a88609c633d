"""A private OpenSSH server on 127.0.0.1 for the benchmark (a copy of the tests' fixture logic).

bench/ must not import tests/, so this repeats what tests/conftest.py does: temporary host
key and client key, an ``authorized_keys`` of our own, ``sshd -D`` on a free port.  The
known_hosts file is written for whichever ports the clients will dial (the WAN proxy's
port, not sshd's), since OpenSSH and asyncssh both key host entries by ``[host]:port``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class SshdError(RuntimeError):
    """The private sshd could not be started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class Sshd:
    """A running private sshd; ``stop()`` ends it."""

    proc: subprocess.Popen[bytes]
    port: int
    dir: Path
    identity: Path
    host_key_pub: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def known_hosts(self, *ports: int) -> Path:
        """A known_hosts file naming this server's key for each of ``ports`` on 127.0.0.1."""

        path = self.dir / f"known_hosts-{'-'.join(map(str, ports))}"
        path.write_text("".join(f"[127.0.0.1]:{p} {self.host_key_pub}\n" for p in ports))
        return path

    def authorize(self, pubkey_line: str) -> None:
        """Accept one more client key (gsyncd's, for instance)."""

        with open(self.dir / "authorized_keys", "a") as f:
            f.write(pubkey_line.rstrip("\n") + "\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sshd(workdir: Path) -> Sshd:
    """Start sshd on a free 127.0.0.1 port with keys under ``workdir``; raise `SshdError` if it won't."""

    if not os.path.exists(SSHD):
        raise SshdError("OpenSSH sshd is not installed (apt-get install openssh-server)")
    d = workdir / "sshd"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    for key in ("host_ed25519", "id_ed25519"):
        if not (d / key).exists():
            _keygen(d / key)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    log = d / "sshd.log"
    for _attempt in range(5):
        port = free_port()
        cfg = d / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nLogLevel VERBOSE\nMaxStartups 50\nMaxSessions 50\n"
        )
        with open(log, "ab") as logf:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=logf)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        host_pub = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
                        return Sshd(proc, port, d, d / "id_ed25519", host_pub, log)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise SshdError(f"sshd did not start: {log.read_text()[-2000:]}")

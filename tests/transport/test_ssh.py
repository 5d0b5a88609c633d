"""Replication over a real OpenSSH sshd on 127.0.0.1, and every way SSH can go wrong."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Sshd, run_cli
from treecmp import build_fidelity_tree, diff, snapshot

from georep import PROTOCOL_VERSION

pytestmark = pytest.mark.ssh


@pytest.mark.slow
def test_acceptance_10000_files_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    """The issue's acceptance run: ≥ 10,000 files with every case, rerun, then a directory mv."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    build_fidelity_tree(src, files=10_000)
    os.makedirs(src / "thousand")
    for i in range(1000):
        (src / "thousand" / f"f{i:04d}").write_bytes(os.urandom(64))
    args = ["--oneshot", src, sshd.url(dst), "--state-dir", state, "--json", *sshd.ssh_args()]

    first = run_cli(*args)
    assert first.code == 0, first.stderr
    assert first.summary["entries"] >= 11_000
    assert diff(snapshot(src), snapshot(dst)) == []

    again = run_cli(*args)
    assert again.code == 0, again.stderr
    assert again.summary["bytes_data"] == 0
    assert diff(snapshot(src), snapshot(dst)) == []

    os.rename(src / "thousand", src / "dir" / "thousand-moved")
    moved = run_cli(*args)
    assert moved.code == 0, moved.stderr
    assert moved.summary["bytes_data"] == 0
    assert diff(snapshot(src), snapshot(dst)) == []


def test_unknown_host_key_is_refused_with_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    empty_known = tmp_path / "known_hosts"
    empty_known.write_text("")
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", empty_known,
                "--identity", sshd.identity, "--remote-command", sshd.remote_command, "--state-dir", tmp_path / "st")
    assert r.code == 22, r.stderr
    assert "SHA256:" in r.stderr
    assert "ssh-keyscan -p" in r.stderr
    assert not (tmp_path / "dst").exists()


def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    other = tmp_path / "other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", known,
                "--identity", sshd.identity, "--remote-command", sshd.remote_command, "--state-dir", tmp_path / "st")
    assert r.code == 23, r.stderr
    assert "CHANGED" in r.stderr and "ssh-keygen" in r.stderr


def test_agent_not_found_on_remote(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", sshd.known_hosts,
                "--identity", sshd.identity, "--remote-command", "/nonexistent/georep-sync",
                "--state-dir", tmp_path / "st")
    assert r.code == 24, r.stderr
    assert "--remote-command" in r.stderr


def test_shell_noise_fails_cleanly(sshd: Sshd, tmp_path: Path) -> None:
    """A remote command that prints a banner before the agent is a clear protocol error."""

    (tmp_path / "src").mkdir()
    noisy = f"sh -c 'echo Welcome to the secondary; exec {sshd.remote_command} \"$@\"' sh"
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", sshd.known_hosts,
                "--identity", sshd.identity, "--remote-command", noisy, "--state-dir", tmp_path / "st")
    assert r.code == 28, r.stderr
    assert "Welcome to the secondary" in r.stderr


def test_unreachable_and_auth_failure(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    r = run_cli("--oneshot", tmp_path / "src", f"ssh://root@127.0.0.1:{closed_port}/x", "--known-hosts",
                sshd.known_hosts, "--identity", sshd.identity, "--state-dir", tmp_path / "st")
    assert r.code == 20, r.stderr
    stranger = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {stranger}")
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", sshd.known_hosts,
                "--identity", stranger, "--remote-command", sshd.remote_command, "--state-dir", tmp_path / "st",
                env={**os.environ, "SSH_AUTH_SOCK": "", "HOME": str(tmp_path)})
    assert r.code == 21, r.stderr


def _agent_pids(dst: Path) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agent" in argv and os.fsencode(dst) in argv:
                pids.append(int(d))
    return pids


def test_dropped_connection_loses_nothing_published(sshd: Sshd, tmp_path: Path) -> None:
    """The agent killed mid-transfer: a clear error, no partial file published, the rerun completes."""

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for i in range(6):
        (src / f"big{i}").write_bytes(os.urandom(24 << 20))
    # a slow link, so the transfer is surely under way when the agent dies
    args = [sys.executable, "-bb", "-m", "georep", "--oneshot", str(src), sshd.url(dst), "--state-dir", str(state),
            *map(str, sshd.ssh_args())]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = dst / ".georep" / "staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if staging.is_dir() and any(p.stat().st_size > 0 for p in staging.iterdir()):
            break
        time.sleep(0.01)
    pids = _agent_pids(dst)
    assert pids, "the agent was not found running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (26, 27), err
    assert "Traceback" not in err and "hint:" in err
    for p in dst.iterdir():
        if p.name != ".georep":
            assert p.read_bytes() == (src / p.name).read_bytes()  # whatever was published is whole
    r = run_cli("--oneshot", src, sshd.url(dst), "--state-dir", state, "--json", *sshd.ssh_args())
    assert r.code == 0, r.stderr
    assert diff(snapshot(src), snapshot(dst)) == []
    assert os.listdir(staging) == []


def test_agent_of_another_protocol_version(sshd: Sshd, tmp_path: Path) -> None:
    """An agent that answers the handshake with another version: exit 25, both versions named."""

    fake = tmp_path / "fake_agent.py"
    fake.write_text(
        "import sys\n"
        "from georep.protocol import messages as m\n"
        "from georep.protocol.framing import encode\n"
        "from georep.protocol.session import MAGIC\n"
        "sys.stdin.buffer.read(1)\n"
        "sys.stdout.buffer.write(MAGIC + encode(m.HelloOk(99, 'georep-sync 99.0', False)))\n"
        "sys.stdout.buffer.flush()\n"
    )
    (tmp_path / "src").mkdir()
    r = run_cli("--oneshot", tmp_path / "src", sshd.url(tmp_path / "dst"), "--known-hosts", sshd.known_hosts,
                "--identity", sshd.identity, "--remote-command", f"{sys.executable} {fake}",
                "--state-dir", tmp_path / "st")
    assert r.code == 25, r.stderr
    assert "v99" in r.stderr and f"v{PROTOCOL_VERSION} " in r.stderr


def test_forced_command_confines_the_agent(sshd: Sshd, tmp_path: Path) -> None:
    """authorized_keys: command="georep-sync agent --allow DIR",restrict — the deploy/ recipe."""

    allowed = tmp_path / "allowed"
    key = tmp_path / "confined"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = Path(f"{key}.pub").read_text().strip()
    auth = sshd.known_hosts.parent / "authorized_keys"
    with open(auth, "a") as f:
        f.write(f'command="{sshd.remote_command} agent --allow {allowed}",restrict {pub}\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("confined")
    common = ["--known-hosts", sshd.known_hosts, "--identity", key, "--state-dir", tmp_path / "st"]
    r = run_cli("--oneshot", src, sshd.url(allowed / "dst"), *common)
    assert r.code == 0, r.stderr
    assert (allowed / "dst" / "f").read_text() == "confined"
    r = run_cli("--oneshot", src, sshd.url(tmp_path / "elsewhere"), *common)
    assert r.code == 12, r.stderr
    assert "may only write under" in r.stderr
    assert not (tmp_path / "elsewhere").exists()

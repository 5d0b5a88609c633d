"""The replicators compared, as command lines, all reaching the same sshd through the same WAN proxy.

* ``georep-sync --oneshot``: this project, the agent started by sshd as
  ``<this python> -m georep agent DST`` (the same interpreter, so the same build).
* ``rsync -a --delete`` over OpenSSH: what operators use instead.  ``--delete`` because a
  replica must lose the names the source lost (georep-sync mirrors); ``--mkpath`` only
  creates the destination's parents.  No ``-H``/``-A``/``-X``: the datasets have no hard
  links, ACLs or xattrs, so plain ``-a`` ends with an equal tree and pays for nothing
  it does not need (verified after every run).
* the pipe baseline ``cat FILES | ssh HOST 'cat > /dev/null'``: the most one SSH connection
  moves on this path, the ceiling for bulk data.
* ``georep-sync daemon`` (live mode) and gsyncd: see bench/live.py and bench/gsyncd.py.

Ciphers are each tool's default: OpenSSH (rsync, the baseline) negotiates
chacha20-poly1305; georep-sync's asyncssh prefers aes128-gcm (georep/transport/ssh.py).
The baseline is also measured with aes128-gcm so the two can be told apart.
"""

from __future__ import annotations

import compileall
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Measured, run_measured
from bench.proxy import WanProxy

PYTHON = sys.executable
#: This checkout: both ends run its georep, not whatever copy is installed.
CHECKOUT = Path(__file__).resolve().parent.parent
#: What the remote shell runs to start the agent: this interpreter on this checkout.
REMOTE_COMMAND = f"env PYTHONPATH={shlex.quote(str(CHECKOUT))} {PYTHON} -m georep"


def byte_compile(checkout: Path = CHECKOUT) -> None:
    """Compile a checkout's georep (this one's by default) to bytecode, as installing it would.

    Without it, every start of the sender and of the agent compiles the modules whose
    bytecode is missing or stale, and none is written back where PYTHONDONTWRITEBYTECODE
    is set (as on this machine; a fresh clone has none at all): measured here, the
    agent's start-up took 0.19 s instead of 0.10 s, and every copy waits for it.
    """

    if not compileall.compile_dir(checkout / "georep", quiet=1):
        raise RuntimeError(f"georep in {checkout} does not compile")


@dataclass(frozen=True, slots=True)
class Path2Secondary:
    """How every contender reaches the secondary: OpenSSH-style options for the proxy's port."""

    proxy: WanProxy
    sshd_pid: int
    identity: Path
    known_hosts: Path  # names the host key for [127.0.0.1]:proxy.port

    @property
    def port(self) -> int:
        return self.proxy.port

    def ssh_argv(self, cipher: str | None = None) -> list[str]:
        argv = ["ssh", "-p", str(self.port), "-i", str(self.identity), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes"]
        if cipher:
            argv += ["-c", cipher]
        return argv

    def run(self, argv: list[str], *, shell: bool = False, timeout: float = 900.0) -> Measured:
        return run_measured(argv, proxy=self.proxy, sshd_pid=self.sshd_pid, shell=shell, timeout=timeout)


class Contender:
    """A replicator run once per (dataset, phase): ``argv`` brings ``dst`` up to date with ``src``."""

    name = ""

    def argv(self, path: Path2Secondary, src: Path, dst: Path, state: Path) -> list[str]:
        raise NotImplementedError


class GeorepOneshot(Contender):
    name = "georep-sync oneshot"

    def __init__(self, checkout: Path | None = None, name: str | None = None) -> None:
        """This checkout's georep-sync; or, for comparing two versions, ``checkout``'s at both ends."""

        self.checkout = checkout
        if name is not None:
            self.name = name

    def argv(self, path: Path2Secondary, src: Path, dst: Path, state: Path) -> list[str]:
        if self.checkout is None:
            head, remote = [PYTHON, "-m", "georep"], REMOTE_COMMAND
        else:  # -P: the current directory (maybe another checkout) does not go ahead of PYTHONPATH
            pythonpath = f"PYTHONPATH={self.checkout}"
            head = ["env", pythonpath, PYTHON, "-P", "-m", "georep"]
            remote = f"env {shlex.quote(pythonpath)} {PYTHON} -P -m georep"
        return [*head, "--oneshot", str(src), f"ssh://root@127.0.0.1:{path.port}{dst}", "--state-dir", str(state),
                "--known-hosts", str(path.known_hosts), "--identity", str(path.identity), "--remote-command", remote,
                "--json", "--no-progress"]


class Rsync(Contender):
    name = "rsync -a"

    def argv(self, path: Path2Secondary, src: Path, dst: Path, state: Path) -> list[str]:
        return ["rsync", "-a", "--delete", "--mkpath", "-e", shlex.join(path.ssh_argv()), f"{src}/",
                f"root@127.0.0.1:{dst}/"]


CONTENDERS: tuple[Contender, ...] = (GeorepOneshot(), Rsync())


def pipe_baseline(path: Path2Secondary, files: list[Path], cipher: str | None = None, sink: Path | None = None
                  ) -> Measured:
    """``cat FILES | ssh HOST 'cat > /dev/null'`` through the proxy: the bulk ceiling of this path.

    With ``sink``, into that file instead: the ceiling once the secondary writes what it gets.
    """

    target = shlex.quote(str(sink)) if sink is not None else "/dev/null"
    ssh = shlex.join([*path.ssh_argv(cipher), "root@127.0.0.1", f"cat > {target}"])
    cmd = f"cat {' '.join(shlex.quote(str(f)) for f in files)} | {ssh}"
    return path.run([cmd], shell=True)


def tool_versions() -> dict[str, str]:
    """Versions of everything compared, for the report's header."""

    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        return " ".join(((r.stdout or r.stderr).strip().splitlines() or ["?"])[0].split())

    return {
        "georep-sync": first_line([PYTHON, "-m", "georep", "--version"]),
        "rsync": first_line(["rsync", "--version"]),
        "OpenSSH": first_line(["ssh", "-V"]),
        "python": sys.version.split()[0],
        "GlusterFS": first_line(["gluster", "--version"]),
        # the agent writes small files through it where built (georep.apply.writer)
        "native/": first_line([PYTHON, "-c", "from georep.apply import writer; "
                               "print('georep._native built' if writer.native else 'not built: pure-Python twin')"]),
    }

"""Run one command and measure it: wall time, peak RSS of both ends, sender CPU, bytes on the wire.

Peak RSS of a process *tree* has no single kernel counter, so it is sampled from ``/proc``
every `POLL_S` seconds and the larger of two figures is kept, a lower bound that is tight
in practice:

* the sum of VmRSS over the tree at each sample (processes that peak together are summed;
  a joint peak between samples can be missed);
* the largest VmHWM (the kernel's own per-process high-water mark) seen for any one process
  of the tree, so a short spike of a single process is never missed as long as that
  process is sampled once before it exits.

What is deliberately *not* used: ``ru_maxrss`` from ``wait4()`` or ``getrusage(RUSAGE_CHILDREN)``.
``subprocess`` starts children with ``vfork()``, and at ``exec()`` the kernel folds the high-water
mark of the mm being left — the runner's own, tens of MiB — into the child's ``ru_maxrss``
(``signal->maxrss``); every command would then "use" at least as much as the Python runner
(measured: ``find`` reported 32 MiB).  ``RUSAGE_CHILDREN`` deltas are worse still, a
maximum over every child ever reaped.  CPU time from ``wait4()`` is not affected and is used.

The remote end runs under our private sshd: its tree is every descendant of the sshd
listener except sshd's own per-connection processes, polled the same way.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.proxy import Counters, WanProxy

POLL_S = 0.05
#: Processes of sshd itself (privilege separation, per-connection): not the remote workload.
SSHD_COMMS = frozenset({b"sshd", b"sshd-session", b"sshd-auth"})


def _proc_table() -> tuple[dict[int, list[int]], dict[int, bytes]]:
    children: dict[int, list[int]] = defaultdict(list)
    comms: dict[int, bytes] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        close = data.rfind(b")")
        pid = int(name)
        comms[pid] = data[data.find(b"(") + 1 : close]
        children[int(data[close + 2 :].split()[1])].append(pid)
    return children, comms


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; (0, 0) for a kernel thread or a process that is gone."""

    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def tree(roots: Iterable[int], *, skip_comms: frozenset[bytes] = frozenset(), include_roots: bool = True
         ) -> list[int]:
    """Every live descendant of ``roots`` (and the roots), leaving out processes named in ``skip_comms``
    while still descending through them."""

    children, comms = _proc_table()
    out: list[int] = []
    stack = list(roots)
    first = set(stack)
    while stack:
        pid = stack.pop()
        if (include_roots or pid not in first) and comms.get(pid) not in skip_comms and pid in comms:
            out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


@dataclass
class TreePeak:
    """Running peak of one process tree's memory."""

    sum_rss_kib: int = 0
    hwm_kib: dict[int, int] = field(default_factory=dict)

    def sample(self, pids: Sequence[int]) -> None:
        total = 0
        for pid in pids:
            rss, hwm = _status_kib(pid)
            total += rss
            if hwm > self.hwm_kib.get(pid, 0):
                self.hwm_kib[pid] = hwm
        self.sum_rss_kib = max(self.sum_rss_kib, total)

    @property
    def peak_bytes(self) -> int:
        return 1024 * max(self.sum_rss_kib, max(self.hwm_kib.values(), default=0))


class TreeMonitor(threading.Thread):
    """Samples the local command's tree and the remote (under-sshd) tree until stopped."""

    def __init__(self, local_root: int, sshd_pid: int | None) -> None:
        super().__init__(name="rss-monitor", daemon=True)
        self.local_root = local_root
        self.sshd_pid = sshd_pid
        self.local = TreePeak()
        self.remote = TreePeak()
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._halt.wait(POLL_S):
                return

    def sample(self) -> None:
        self.local.sample(tree([self.local_root]))
        if self.sshd_pid is not None:
            self.remote.sample(tree([self.sshd_pid], skip_comms=SSHD_COMMS, include_roots=False))

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Measured:
    """What one command cost."""

    argv: list[str]
    exit_code: int
    wall: float
    stdout: str
    stderr: str
    rss_local: int  # bytes
    rss_remote: int  # bytes (0 when nothing ran under sshd)
    cpu_local: float  # user + system seconds of the command and its reaped descendants
    wire: Counters

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_measured(argv: list[str], *, proxy: WanProxy | None = None, sshd_pid: int | None = None,
                 env: dict[str, str] | None = None, timeout: float = 900.0, shell: bool = False,
                 stdin: int | None = subprocess.DEVNULL) -> Measured:
    """Run ``argv`` to completion while sampling memory on both ends and counting the proxy's bytes."""

    before = proxy.counters() if proxy else Counters(0, 0, 0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv if not shell else " ".join(argv), shell=shell, env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mon = TreeMonitor(proc.pid, sshd_pid)
    mon.start()
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else b""), daemon=True),
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read() if proc.stderr else b""), daemon=True),
    ]
    for r in readers:
        r.start()
    killer = threading.Timer(timeout, proc.kill)  # a hung contender must not hang the whole run
    killer.start()
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(timeout=30)
    mon.stop()
    mon.sample()  # the remote end may still be exiting: one last look
    wire = (proxy.counters() - before) if proxy else Counters(0, 0, 0)
    return Measured(
        argv=argv,
        exit_code=proc.returncode,
        wall=wall,
        stdout=b"".join(out_chunks).decode("utf-8", "replace"),
        stderr=b"".join(err_chunks).decode("utf-8", "replace"),
        rss_local=mon.local.peak_bytes,
        rss_remote=mon.remote.peak_bytes,
        cpu_local=rusage.ru_utime + rusage.ru_stime,
        wire=wire,
    )

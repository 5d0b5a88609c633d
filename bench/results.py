"""What one benchmark run found, as plain records: the runner fills them, bench/report.py renders them.

Every figure in a report is computed from these records of the same run; nothing is typed in
by hand.  A contender that could not run is a `NotRun` with the exact reason, never a row of
made-up numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Decimal units, as link speeds and disk vendors count: 1 MB = 10^6 bytes.
MB = 1_000_000
#: The volume the projection is made for: 11 TB.
TARGET_BYTES = 11 * 10**12
DAY_S = 86_400


@dataclass
class SyncRow:
    """One contender bringing one dataset up to date after one phase, at one RTT."""

    dataset: str
    phase: str
    rtt_ms: float
    contender: str
    wall: float
    data_bytes: int  # the phase's payload: bytes a replicator must deliver at least
    files: int  # files the phase created, changed or renamed
    wire_up: int
    wire_down: int
    rss_local: int
    rss_remote: int
    cpu_local: float | None  # None where the contender is not our child (gsyncd)
    exit_code: int
    verified: bool
    problems: list[str] = field(default_factory=list)
    #: every run's wall time when the phase was run more than once (``wall`` is their median)
    walls: list[float] = field(default_factory=list)

    @property
    def mb_s(self) -> float | None:
        """Payload rate; shown for a finished run even when its replica differs (the table says so)."""

        return self.data_bytes / MB / self.wall if self.data_bytes and self.exit_code == 0 else None

    @property
    def files_s(self) -> float | None:
        return self.files / self.wall if self.files and self.exit_code == 0 else None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.verified

    def days_for_target(self) -> float | None:
        """Days to move `TARGET_BYTES` at this row's data rate (initial copies only)."""

        if self.phase != "initial" or not self.mb_s:
            return None
        return TARGET_BYTES / (self.mb_s * MB) / DAY_S


@dataclass
class BaselineRow:
    """``cat | ssh 'cat > /dev/null'``: the most this path carries."""

    name: str
    bytes: int
    wall: float
    wire: int
    exit_code: int

    @property
    def mb_s(self) -> float | None:
        return self.bytes / MB / self.wall if self.exit_code == 0 else None


@dataclass
class LiveRow:
    """A live replicator: lag from a file's close on the source to its complete copy on the secondary."""

    contender: str
    writes: int
    delivered: int
    lags: list[float]  # seconds, one per delivered write
    note: str = ""

    def quantile(self, q: float) -> float | None:
        return quantile(self.lags, q)


@dataclass
class LiveTreeRow:
    """The daemon on a plain directory (inotify), or rsync redoing the same change: one measurement.

    ``measurement`` is one of "trickle of writes", "touch-few", "directory rename".  ``lags`` are
    per file, from its write on the source to its complete copy on the secondary (empty where
    the measurement is not per file); ``done_s`` is from the last write (or the rename, or the
    start of the rsync command) until every file was complete; wire bytes are the proxy's
    counters over that window, both directions.
    """

    measurement: str
    contender: str
    files: int  # files the measurement waits for on the secondary
    complete: int  # of those, found complete (size, and digest where per file) before the timeout
    lags: list[float]
    done_s: float | None
    wire_up: int
    wire_down: int
    verified: bool | None = None  # replica equal to the source afterwards (bench/verify.py); None: not checked
    note: str = ""
    target: str = ""  # the acceptance figure for this measurement, e.g. "p50 < 500 ms"
    target_met: bool | None = None  # decided from this row's measured figures; None: no target or no figure

    def quantile(self, q: float) -> float | None:
        return quantile(self.lags, q)


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class ScaleRow:
    """One pass over the scale tree: names per second and the memory it took."""

    tool: str
    entries: int
    wall: float
    rss: int
    exit_code: int
    note: str = ""
    rss_agent: int | None = None  # a whole --oneshot: the agent's side (under sshd), apart from the sender's

    @property
    def rate(self) -> float | None:
        return self.entries / self.wall if self.exit_code == 0 and self.wall > 0 else None


@dataclass
class MicroRow:
    """One pytest-benchmark result, converted to work per second when the test declared its unit."""

    name: str
    mean_s: float
    rounds: int
    unit: str  # e.g. "MB", "records"; "" when the benchmark declared none
    per_round: float  # units of work in one round

    @property
    def rate(self) -> float | None:
        return self.per_round / self.mean_s if self.unit and self.mean_s > 0 else None


@dataclass
class NotRun:
    """A contender or section that did not run, and the exact reason found at run time."""

    what: str
    reason: str


@dataclass
class DatasetInfo:
    name: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    generate_s: float
    description: str


@dataclass
class Results:
    """Everything one run measured, plus where and how it ran."""

    command: str
    started: str
    machine: dict[str, str]
    versions: dict[str, str]
    link: str
    quick: bool
    datasets: list[DatasetInfo] = field(default_factory=list)
    mutations: dict[str, str] = field(default_factory=dict)  # phase -> description
    renamed_bytes: dict[str, int] = field(default_factory=dict)  # phase -> bytes of files whose path changed
    #: RTT ms -> seconds of `ssh HOST true` through the proxy (connection, key exchange, auth, one session)
    ssh_setup: dict[float, float] = field(default_factory=dict)
    sync: list[SyncRow] = field(default_factory=list)
    baseline: list[BaselineRow] = field(default_factory=list)
    live: list[LiveRow] = field(default_factory=list)
    live_tree: list[LiveTreeRow] = field(default_factory=list)
    scale: list[ScaleRow] = field(default_factory=list)
    #: where the scale section's trees lived (bench/scratchfs.py)
    scale_place: str = ""
    micro: list[MicroRow] = field(default_factory=list)
    not_run: list[NotRun] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    elapsed: float = 0.0

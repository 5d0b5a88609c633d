"""Render a `Results` as markdown: the tables of bench/RESULTS.md and of ``python -m bench --quick``.

Every number printed is computed here from the records of one run (rates, ratios to rsync,
percentages of the SSH pipe ceiling, projected days for 11 TB); nothing is typed in.  A
cell with no measurement shows "—", a contender that could not run is listed with the
reason under "Not run".
"""

from __future__ import annotations

from collections import defaultdict

from bench.results import DAY_S, MB, TARGET_BYTES, Results, SyncRow

RSYNC = "rsync -a"
DASH = "—"


def _f(v: float | None, digits: int = 1) -> str:
    return DASH if v is None else f"{v:,.{digits}f}"


def _mib(n: int) -> str:
    return DASH if not n else f"{n / 2**20:,.0f}"


def _ratio(row: SyncRow, rows: list[SyncRow]) -> str:
    for r in rows:
        if (r.dataset, r.phase, r.rtt_ms, r.contender) == (row.dataset, row.phase, row.rtt_ms, RSYNC):
            if r.exit_code or row.exit_code or r.wall <= 0:
                return DASH
            return f"{row.wall / r.wall:.2f}×"
    return DASH


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def sync_table(res: Results) -> list[str]:
    header = ["dataset", "phase", "RTT ms", "contender", "wall s", "MB/s", "files/s", "wire MB ↑/↓",
              "peak RSS MiB sender/receiver", "sender CPU s", "time ÷ rsync's", "days for 11 TB", "replica equal"]
    rows = []
    for r in res.sync:
        rows.append([
            r.dataset, r.phase, f"{r.rtt_ms:g}", r.contender, f"{r.wall:.2f}", _f(r.mb_s), _f(r.files_s, 0),
            f"{r.wire_up / MB:,.1f} / {r.wire_down / MB:,.1f}", f"{_mib(r.rss_local)} / {_mib(r.rss_remote)}",
            _f(r.cpu_local), _ratio(r, res.sync), _f(r.days_for_target(), 2),
            "yes" if r.verified else ("NO" if r.exit_code == 0 else f"NO (exit {r.exit_code})"),
        ])
    return _table(header, rows)


def rtt_table(res: Results) -> list[str]:
    rtts = sorted({r.rtt_ms for r in res.sync if r.dataset == "small" and r.phase == "initial"})
    by: dict[str, dict[float, SyncRow]] = defaultdict(dict)
    for r in res.sync:
        if r.dataset == "small" and r.phase == "initial":
            by[r.contender][r.rtt_ms] = r
    rows = [[c] + [_f(by[c][t].files_s, 0) if t in by[c] else DASH for t in rtts] for c in by]
    return _table(["contender"] + [f"files/s at {t:g} ms" for t in rtts], rows)


def days_table(res: Results) -> list[str]:
    rows = []
    for r in res.sync:
        days = r.days_for_target()
        if days is None:
            continue
        rows.append([r.contender, r.dataset, f"{r.rtt_ms:g}", _f(r.mb_s), _f(days, 2)])
    return _table(["contender", "measured on", "RTT ms", "MB/s", f"days for {TARGET_BYTES / 1e12:g} TB"], rows)


def baseline_table(res: Results) -> list[str]:
    rows = [[b.name, f"{b.wall:.2f}", _f(b.mb_s), f"{b.wire / MB:,.1f}"] for b in res.baseline]
    out = _table(["SSH pipe ceiling (same proxy, same sshd)", "wall s", "MB/s", "wire MB"], rows)
    ceilings = [(b.name.split(", ", 1)[-1], b.mb_s) for b in res.baseline if b.mb_s]
    large = [r for r in res.sync if r.dataset == "large" and r.phase == "initial" and r.mb_s]
    if ceilings and large:
        out.append("")
        pct_rows = [[r.contender, _f(r.mb_s)] + [f"{100 * (r.mb_s or 0) / c:.0f} %" for _, c in ceilings]
                    for r in large]
        out += _table(["large, initial copy", "MB/s"] + [f"% of pipe ({n})" for n, _ in ceilings], pct_rows)
    return out


def live_table(res: Results) -> list[str]:
    rows = []
    for lv in res.live:
        p50, p99 = lv.quantile(0.5), lv.quantile(0.99)
        rows.append([lv.contender, str(lv.writes), str(lv.delivered), _f(p50 and p50 * 1000, 0),
                     _f(p99 and p99 * 1000, 0), _f(max(lv.lags) * 1000 if lv.lags else None, 0), lv.note])
    return _table(["live contender", "writes", "complete on secondary", "lag p50 ms", "lag p99 ms", "max ms",
                   "note"], rows)


def live_tree_table(res: Results) -> list[str]:
    rows = []
    for lv in res.live_tree:
        p50, p99 = lv.quantile(0.5), lv.quantile(0.99)
        rows.append([
            lv.measurement, lv.contender, f"{lv.files:,}", f"{lv.complete:,}", _f(p50 and p50 * 1000, 0),
            _f(p99 and p99 * 1000, 0), _f(max(lv.lags) * 1000 if lv.lags else None, 0),
            _f(lv.done_s * 1000 if lv.done_s is not None else None, 0), f"{lv.wire_up:,} / {lv.wire_down:,}",
            DASH if lv.verified is None else ("yes" if lv.verified else "NO"),
            DASH if not lv.target else f"{lv.target}: " + {True: "met", False: "NOT met", None: DASH}[lv.target_met],
            lv.note,
        ])
    return _table(["measurement", "contender", "files", "complete on secondary", "lag p50 ms", "lag p99 ms",
                   "lag max ms", "all complete after ms", "wire bytes ↑ / ↓", "replica equal", "issue target",
                   "note"], rows)


def scale_table(res: Results) -> list[str]:
    rows = [[s.tool, f"{s.entries:,}", f"{s.wall:.2f}", _f(s.rate, 0),
             _mib(s.rss) + ("" if s.rss_agent is None else f" / {_mib(s.rss_agent)}"),
             s.note or ("" if s.exit_code == 0 else f"exit {s.exit_code}")] for s in res.scale]
    return _table(["pass over the scale tree", "entries", "wall s", "entries/s", "peak RSS MiB (sender / agent)",
                   "note"], rows)


def micro_table(res: Results) -> list[str]:
    rows = [[m.name, f"{m.mean_s * 1e3:,.3f}", str(m.rounds),
             _f(m.rate, 1) + (f" {m.unit}/s" if m.rate is not None else "")] for m in res.micro]
    return _table(["micro-benchmark (pytest-benchmark)", "mean ms per round", "rounds", "rate"], rows)


def render(res: Results) -> str:
    kind = "quick run (CI smoke test of the harness; sizes reduced)" if res.quick else "full run"
    out = [
        "# georep-sync benchmark results",
        "",
        "Generated by `python -m bench` — do not edit by hand; regenerate it (bench/README.md). "
        "Speed is reported here and never asserted in tests.",
        "",
        f"- **date**: {res.started}; {kind}, {res.elapsed / 60:.1f} minutes",
        f"- **command**: `{res.command}` (from the repository root)",
    ]
    out += [f"- **{k}**: {v}" for k, v in res.machine.items()]
    out.append("- **versions**: " + "; ".join(f"{k} {v!s}" if not v.startswith(k) else v
                                              for k, v in res.versions.items()))
    out += [
        f"- **path**: every contender goes through bench/proxy.py ({res.link} unless the RTT column says "
        "otherwise) to one private OpenSSH sshd on 127.0.0.1, as root; sources and secondaries on the same disk",
        "- **noise**: each figure is one sample on a 2-core machine that other work may share (see the load "
        "averages); rerun before reading much into a small difference between two rows.",
        "- **units**: MB = 10^6 bytes. MB/s and files/s divide the phase's payload (what any replicator must "
        "deliver at least: the dataset for an initial copy, the new data and changed names for a mutation) by "
        "wall time from process start to exit. Wire = bytes through the proxy, SSH framing included. Peak RSS: "
        "bench/measure.py. *time ÷ rsync's* < 1 means faster than rsync in the same run. Days for "
        f"{TARGET_BYTES / 1e12:g} TB = {TARGET_BYTES:,} bytes ÷ the measured MB/s ÷ {DAY_S} s.",
        "",
        "## Datasets",
        "",
    ]
    out += _table(["dataset", "files", "dirs", "symlinks", "MB", "generated in s", "what"],
                  [[d.name, f"{d.files:,}", f"{d.dirs:,}", str(d.symlinks), f"{d.bytes / MB:,.1f}",
                    f"{d.generate_s:.1f}", d.description] for d in res.datasets])
    if res.mutations:
        out += ["", "Mutations (applied once to the source, then every contender replicates them):", ""]
        out += [f"- **{k}**: {v}" for k, v in res.mutations.items()]
    if res.sync:
        out += ["", "## Replication runs", ""] + sync_table(res)
        if any(r.rtt_ms for r in res.sync):
            out += ["", "## files/s against round-trip time (small dataset, initial copy)", ""] + rtt_table(res)
        if any(r.days_for_target() for r in res.sync):
            out += ["", f"## Projected days for {TARGET_BYTES / 1e12:g} TB at the measured rate", ""]
            out += days_table(res)
    if res.baseline:
        out += ["", "## Bulk data against the SSH pipe ceiling", ""] + baseline_table(res)
    if res.live_tree:
        out += ["", "## Live replication, plain directory (inotify daemon)", "",
                "Lag: from a file's write on the source to its complete copy (size and xxh3-128) on the secondary. "
                "*All complete after*: from the last write (touch-few), from the rename, or for rsync its wall "
                "time. Wire: bytes through the proxy over that window, SSH framing included.", ""]
        out += live_tree_table(res)
    if res.live:
        out += ["", "## Live replication lag (write → complete on the secondary)", ""] + live_table(res)
    if res.scale:
        out += ["", "## Scale tree: crawl rate and memory", ""] + scale_table(res)
    if res.micro:
        out += ["", "## Micro-benchmarks", ""] + micro_table(res)
    if res.not_run:
        out += ["", "## Not run", ""] + [f"- **{n.what}**: not run: {n.reason}" for n in res.not_run]
    if res.findings:
        out += ["", "## Found during this run", ""] + [f"- {f}" for f in res.findings]
    bad = [r for r in res.sync if not r.verified]
    if bad:
        out += ["", "## Replicas that were not equal to the source", ""]
        for r in bad:
            out.append(f"- {r.dataset} {r.phase} @{r.rtt_ms:g} ms, {r.contender}: " + "; ".join(r.problems)[:800])
    return "\n".join(out) + "\n"

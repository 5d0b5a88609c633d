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


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (a ``|`` in a cell escaped); every table of bench's reports goes through here."""

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def sync_table(res: Results) -> list[str]:
    header = ["dataset", "phase", "RTT ms", "contender", "wall s", "MB/s", "files/s", "wire MB ↑/↓",
              "peak RSS MiB sender/receiver", "sender CPU s", "time ÷ rsync's", "days for 11 TB", "replica equal"]
    rows = []
    for r in res.sync:
        rows.append([
            r.dataset, r.phase, f"{r.rtt_ms:g}", r.contender,
            f"{r.wall:.2f}" + (f" (median of {' / '.join(f'{w:.2f}' for w in r.walls)})" if len(r.walls) > 1 else ""),
            _f(r.mb_s), _f(r.files_s, 0),
            f"{r.wire_up / MB:,.1f} / {r.wire_down / MB:,.1f}", f"{_mib(r.rss_local)} / {_mib(r.rss_remote)}",
            _f(r.cpu_local), _ratio(r, res.sync), _f(r.days_for_target(), 2),
            "yes" if r.verified else ("NO" if r.exit_code == 0 else f"NO (exit {r.exit_code})"),
        ])
    return markdown_table(header, rows)


def _small_initial(res: Results) -> dict[str, dict[float, SyncRow]]:
    by: dict[str, dict[float, SyncRow]] = defaultdict(dict)
    for r in res.sync:
        if r.dataset == "small" and r.phase == "initial":
            by[r.contender][r.rtt_ms] = r
    return by


def after_setup(row: SyncRow, res: Results) -> float | None:
    """files/s once the SSH connection stands: wall time less `ssh HOST true` at the same RTT."""

    setup = res.ssh_setup.get(row.rtt_ms)
    if setup is None or not row.files_s or row.wall <= setup:
        return None
    return row.files / (row.wall - setup)


def rtt_table(res: Results) -> list[str]:
    rtts = sorted({r.rtt_ms for r in res.sync if r.dataset == "small" and r.phase == "initial"})
    by = _small_initial(res)
    rows = [[c] + [_f(by[c][t].files_s, 0) if t in by[c] else DASH for t in rtts] for c in by]
    if res.ssh_setup:
        rows.append(["`ssh HOST true` (connect, key exchange, auth, one session), s"]
                    + [_f(res.ssh_setup.get(t), 2) for t in rtts])
        rows += [[f"{c}, after that setup"] + [_f(after_setup(by[c][t], res), 0) if t in by[c] else DASH
                                              for t in rtts] for c in by]
    return markdown_table(["contender"] + [f"files/s at {t:g} ms" for t in rtts], rows)


def days_table(res: Results) -> list[str]:
    rows = []
    for r in res.sync:
        days = r.days_for_target()
        if days is None:
            continue
        rows.append([r.contender, r.dataset, f"{r.rtt_ms:g}", _f(r.mb_s), _f(days, 2)])
    return markdown_table(["contender", "measured on", "RTT ms", "MB/s", f"days for {TARGET_BYTES / 1e12:g} TB"], rows)


def baseline_table(res: Results) -> list[str]:
    rows = [[b.name, f"{b.wall:.2f}", _f(b.mb_s), f"{b.wire / MB:,.1f}"] for b in res.baseline]
    out = markdown_table(["SSH pipe ceiling (same proxy, same sshd)", "wall s", "MB/s", "wire MB"], rows)
    ceilings = [(b.name.split(", ", 1)[-1], b.mb_s) for b in res.baseline if b.mb_s]
    large = [r for r in res.sync if r.dataset == "large" and r.phase == "initial" and r.mb_s]
    if ceilings and large:
        out.append("")
        pct_rows = [[r.contender, _f(r.mb_s)] + [f"{100 * (r.mb_s or 0) / c:.0f} %" for _, c in ceilings]
                    for r in large]
        out += markdown_table(["large, initial copy", "MB/s"] + [f"% of pipe ({n})" for n, _ in ceilings], pct_rows)
    return out


def live_table(res: Results) -> list[str]:
    rows = []
    for lv in res.live:
        p50, p99 = lv.quantile(0.5), lv.quantile(0.99)
        rows.append([lv.contender, str(lv.writes), str(lv.delivered), _f(p50 and p50 * 1000, 0),
                     _f(p99 and p99 * 1000, 0), _f(max(lv.lags) * 1000 if lv.lags else None, 0), lv.note])
    return markdown_table(["live contender", "writes", "complete on secondary", "lag p50 ms", "lag p99 ms", "max ms",
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
    return markdown_table(["measurement", "contender", "files", "complete on secondary", "lag p50 ms", "lag p99 ms",
                           "lag max ms", "all complete after ms", "wire bytes ↑ / ↓", "replica equal", "issue target",
                           "note"], rows)


def scale_table(res: Results) -> list[str]:
    rows = [[s.tool, f"{s.entries:,}", f"{s.wall:.2f}", _f(s.rate, 0),
             _mib(s.rss) + ("" if s.rss_agent is None else f" / {_mib(s.rss_agent)}"),
             s.note or ("" if s.exit_code == 0 else f"exit {s.exit_code}")] for s in res.scale]
    return markdown_table(["pass over the scale tree", "entries", "wall s", "entries/s",
                           "peak RSS MiB (sender / agent)", "note"], rows)


def micro_table(res: Results) -> list[str]:
    rows = [[m.name, f"{m.mean_s * 1e3:,.3f}", str(m.rounds),
             _f(m.rate, 1) + (f" {m.unit}/s" if m.rate is not None else "")] for m in res.micro]
    return markdown_table(["micro-benchmark (pytest-benchmark)", "mean ms per round", "rounds", "rate"], rows)


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: DASH}[ok]


#: A figure whose repeated runs lie further apart than this (slowest ÷ fastest) was measured on a busy
#: machine: a verdict drawn from it would be a coin toss, so none is given.
NOISY = 1.5


def _judged(ok: bool | None, *rows: SyncRow | None) -> str:
    """`_verdict`, unless a row it rests on was too noisy to decide anything."""

    spreads = [max(r.walls) / min(r.walls) for r in rows if r is not None and len(r.walls) > 1 and min(r.walls) > 0]
    spread = max(spreads, default=1.0)
    if ok is not None and spread > NOISY:
        return f"inconclusive: its runs varied {spread:.1f}× (a busy machine); rerun"
    return _verdict(ok)


def targets_table(res: Results) -> list[str]:
    """The issue's tuning targets, each decided from this run's rows (a target without its rows shows —)."""

    ours, rsync = "georep-sync oneshot", RSYNC
    rows: list[list[str]] = []

    def sync(dataset: str, phase: str, rtt: float, contender: str = ours) -> SyncRow | None:
        for r in res.sync:
            if (r.dataset, r.phase, r.rtt_ms, r.contender) == (dataset, phase, rtt, contender) and r.ok:
                return r
        return None

    main = min((r.rtt_ms for r in res.sync), default=0.0)
    large = sync("large", "initial", main)
    pipes = {b.name: b.mb_s for b in res.baseline if b.mb_s}
    default_pipe = next((v for k, v in pipes.items() if "default cipher" in k and "/dev/null" in k), None)
    gcm_pipe = next((v for k, v in pipes.items() if "aes128-gcm" in k), None)
    disk_pipe = next((v for k, v in pipes.items() if "FILE" in k), None)
    if large and large.mb_s and default_pipe:
        extra = f"; {100 * large.mb_s / gcm_pipe:.0f} % of the same pipe with aes128-gcm" if gcm_pipe else ""
        if disk_pipe:
            extra += f"; {100 * large.mb_s / disk_pipe:.0f} % of it into a file on the secondary's disk"
        rows.append(["large: ≥ 90 % of `cat file | ssh host 'cat > /dev/null'`",
                     f"{large.mb_s:.1f} MB/s = {100 * large.mb_s / default_pipe:.0f} % of {default_pipe:.1f} MB/s"
                     f" (OpenSSH's default cipher){extra}", _judged(large.mb_s >= 0.9 * default_pipe, large)])
    ours0, theirs0 = sync("small", "initial", main), sync("small", "initial", main, rsync)
    if ours0 and theirs0 and ours0.files_s and theirs0.files_s:
        rows.append(["small: ≥ rsync's files/s on loopback",
                     f"{ours0.files_s:,.0f} vs {theirs0.files_s:,.0f} files/s",
                     _judged(ours0.files_s >= theirs0.files_s, ours0, theirs0)])
    far = max((r.rtt_ms for r in res.sync if r.dataset == "small" and r.phase == "initial"), default=main)
    ours_far = sync("small", "initial", far)
    if ours0 and ours_far and far > main and ours0.files_s and ours_far.files_s:
        ratio = ours_far.files_s / ours0.files_s
        a0, af = after_setup(ours0, res), after_setup(ours_far, res)
        setup = (f"; once the SSH connection stands ({res.ssh_setup[far]:.2f} s at {far:g} ms): "
                 f"{af:,.0f} vs {a0:,.0f} = {100 * af / a0:.0f} %") if a0 and af else ""
        rows.append([f"small at {far:g} ms RTT: ≥ 70 % of its own {main:g} ms files/s",
                     f"{ours_far.files_s:,.0f} vs {ours0.files_s:,.0f} files/s = {100 * ratio:.0f} % "
                     f"(wall time, SSH connection included){setup}", _judged(ratio >= 0.7, ours0, ours_far)])
    ren = sync("small", "renames", main)
    renamed = res.renamed_bytes.get("renames")
    if ren and renamed:
        overhead = ren.wire_up + ren.wire_down - ren.data_bytes
        rows.append(["renames: bytes on the wire < 1 % of the renamed files' data",
                     f"{ren.wire_up + ren.wire_down:,} B on the wire less the {ren.data_bytes:,} B of new content "
                     f"= {overhead:,} B, {100 * overhead / renamed:.2f} % of the {renamed:,} B renamed",
                     _verdict(overhead < 0.01 * renamed)])
    app = sync("large", "appends", main)
    if app:
        wire = app.wire_up + app.wire_down
        rows.append(["appends: bytes on the wire < 2× the appended bytes",
                     f"{wire:,} B for {app.data_bytes:,} B appended ({wire / app.data_bytes:.2f}×)",
                     _verdict(wire < 2 * app.data_bytes)])
    touch = next((lv for lv in res.live_tree if lv.measurement == "touch-few" and "daemon" in lv.contender), None)
    if touch is not None:
        done = touch.done_s
        rows.append(["touch-few on small with the daemon: done < 1 s after the last write",
                     DASH if done is None else f"{done * 1000:.0f} ms ({touch.complete} of {touch.files} complete)",
                     _verdict(None if done is None else done < 1.0 and touch.complete == touch.files)])
    crawls = [s for s in res.scale if s.tool.startswith("georep-sync crawl") and s.rate]
    if crawls:
        slowest = min(crawls, key=lambda s: s.rate or 0)
        rows.append(["scale: crawl ≥ 50,000 entries/s",
                     ", ".join(f"{s.rate:,.0f} ({s.tool.split('(')[-1].rstrip(')')})" for s in crawls),
                     _verdict((slowest.rate or 0) >= 50_000)])
    whole = sorted((s for s in res.scale if s.tool.startswith("georep-sync --oneshot") and s.exit_code == 0),
                   key=lambda s: s.entries)
    if len(whole) >= 2:
        small_t, big_t = whole[0], whole[-1]

        def flat(a: int | None, b: int | None) -> bool | None:
            return None if a is None or b is None else b <= max(a * 1.2, a + 8 * 1024 * 1024)

        ok = flat(small_t.rss, big_t.rss)
        ok_agent = flat(small_t.rss_agent, big_t.rss_agent)
        both = None if ok is None else ok and ok_agent is not False
        rows.append([f"scale: peak RSS flat from {small_t.entries:,} to {big_t.entries:,} entries "
                     "(here: at most +20 % or +8 MiB)",
                     f"sender {_mib(small_t.rss)} → {_mib(big_t.rss)} MiB, agent {_mib(small_t.rss_agent or 0)} → "
                     f"{_mib(big_t.rss_agent or 0)} MiB", _verdict(both)])
    if not res.quick:
        rows.append(["a full run fits in 15 minutes", f"{res.elapsed / 60:.1f} min", _verdict(res.elapsed <= 900)])
    return markdown_table(["target (issue 6)", "measured in this run", "verdict"], rows)


def render(res: Results) -> str:
    kind = "quick run (CI smoke test of the harness; sizes reduced)" if res.quick else "full run"
    out = [
        "# georep-sync benchmark results",
        "",
        "Generated by `python -m bench` — do not edit by hand; regenerate it (bench/README.md). "
        "Speed is reported here and never asserted in tests.",
        "",
        f"- **date**: {res.started}; {kind}, {res.elapsed / 60:.1f} minutes (the whole command: datasets, "
        "runs, and removing the work directory)",
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
    out += markdown_table(["dataset", "files", "dirs", "symlinks", "MB", "generated in s", "what"],
                          [[d.name, f"{d.files:,}", f"{d.dirs:,}", str(d.symlinks), f"{d.bytes / MB:,.1f}",
                            f"{d.generate_s:.1f}", d.description] for d in res.datasets])
    if res.mutations:
        out += ["", "Mutations (applied once to the source, then every contender replicates them):", ""]
        out += [f"- **{k}**: {v}" for k, v in res.mutations.items()]
    targets = targets_table(res)
    if targets[2:]:
        out += ["", "## Tuning targets", "", "Each decided from the rows below, of this same run.", ""] + targets
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
        out += ["", "## Scale tree: crawl rate and memory", ""]
        if res.scale_place:
            out += [f"The scale tree, its tenth and their replicas lived on {res.scale_place}.", ""]
        out += scale_table(res)
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

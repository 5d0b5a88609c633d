"""`georep-sync --oneshot SOURCE SECONDARY`: copy SOURCE once and exit 0 when the secondary equals it."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from georep import __version__
from georep.cli.connect import add_secondary_options, channel_opener, lane_policy
from georep.errors import SourceLooksUnmounted, StateError, SyncIncomplete, UsageError
from georep.transport.channel import Channel, reap

if TYPE_CHECKING:
    from georep.batch.ledger import Ledger, Rerun
    from georep.model import Summary
    from georep.source.crawl import Crawler, HeadStart
    from georep.source.identity import IdStore
    from georep.transport.sender import Item, Sender

#: Crawl time between two looks at the connection being set up: its packets wait at most
#: this long (a slice counted in entries could take seconds on a brick with a cold cache).
HEAD_START_SLICE_S = 0.002

#: What a copy needs besides the connection, imported while the connection is being set up
#: (`replicate`), one module between two looks at it: about 60 ms of every start that no
#: longer comes before the first packet.  The SSH client itself (asyncssh) must come first.
LATER_IMPORTS = (
    "sqlite3",
    "georep.model",
    "georep.protocol.messages",
    "georep.source.identity",
    "georep.source.crawl",
    "georep.batch.ledger",
    "georep.protocol.delta",
    "georep.protocol.session",
    "georep.transport.filedata",
    "georep.transport.lanes",
    "georep.transport.sender",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="georep-sync",
        description="Replicate a GlusterFS brick or a plain tree to a secondary (local or ssh://).",
        epilog="Also: 'georep-sync agent ROOT' (the remote end), 'georep-sync demo [DIR]' (a local demo).",
    )
    p.add_argument("--oneshot", action="store_true", required=True, help="copy SOURCE once, then exit")
    p.add_argument("source", help="a plain directory or a GlusterFS brick root")
    p.add_argument("secondary", help="a local directory or ssh://[user@]host[:port]/absolute/path")
    p.add_argument("--state-dir", type=Path, default=None, help="source-side state (default ~/.local/state/georep)")
    add_secondary_options(p)
    p.add_argument("--allow-mass-delete", action="store_true",
                   help="let an empty source empty the secondary (refused by default)")
    p.add_argument("--verify", action="store_true",
                   help="compare every entry with the secondary, as a first run does, instead of sending only what "
                        "changed since the last run")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress display even on a terminal")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"georep-sync {__version__}")
    return p


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """One refreshed status line on stderr while a terminal watches."""

    def __init__(self, source: bytes) -> None:
        self.t0 = time.monotonic()
        self.total: int | None = None
        try:
            if os.path.ismount(source):
                st = os.statvfs(source)
                self.total = (st.f_blocks - st.f_bfree) * st.f_frsize
        except OSError:
            self.total = None

    def __call__(self, s: Summary) -> None:
        dt = max(time.monotonic() - self.t0, 1e-6)
        rate = s.bytes_data / dt
        eta = "?"
        if self.total and rate > 0:
            eta = f"~{max(self.total - s.bytes_data, 0) / rate:.0f}s"
        line = (f"{s.entries} entries, {s.files} files, {_human(s.bytes_data)} "
                f"at {_human(rate)}/s, ETA {eta}")
        sys.stderr.write("\r\x1b[K" + line)
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _secondary_key(secondary: str) -> str:
    return secondary if secondary.startswith("ssh://") else os.path.abspath(secondary)


async def replicate(args: argparse.Namespace, progress: Progress | None) -> tuple[Summary, Crawler]:
    """One run: a rerun sends only what changed since the last one, when the agent still vouches for it."""

    # the connection first: its key exchange, authentication and the agent's start are
    # round trips and the other end's work, during which the rest is imported and opened
    opening = asyncio.ensure_future(channel_opener(args)())
    try:
        for name in LATER_IMPORTS:
            if name not in sys.modules:
                importlib.import_module(name)
                await asyncio.sleep(0)  # the connection's packets are answered between two imports
        if gc.get_freeze_count():  # georep-sync's own process (`georep.cli.main`): as it did for
            gc.freeze()  # the earlier imports, what these made stays out of the collector's walks
    except BaseException:
        await _abandon(opening)
        raise
    import sqlite3

    from georep.batch.ledger import Ledger, Rerun
    from georep.source.crawl import Crawler, HeadStart
    from georep.source.identity import IdStore, default_state_dir

    source = args.source_abs
    state_dir = args.state_dir or default_state_dir()
    store: IdStore | None = None
    ledger: Ledger | None = None
    try:
        try:
            store = IdStore(state_dir, source)
            ledger = Ledger(state_dir, source, _secondary_key(args.secondary), scope="")
            crawler = Crawler(source, store)
            head = HeadStart(crawler)
        except BaseException:
            await _abandon(opening)
            raise
        sender = await _connect(args, ledger, progress, head, opening)
        settle = _settler(store, ledger)
        try:
            if sender.resumed:
                rerun = Rerun(ledger)
                summary = await sender.run(rerun.changed(head.entries(rerun)), _filtered_links(store, rerun),
                                           lambda: crawler.count, seal=True,
                                           removals=lambda: _guarded(rerun.removals(), crawler, args),
                                           meanwhile=settle)
                summary.unchanged = rerun.skipped
            else:
                ledger.forget()
                summary = await sender.run(head.entries(None), store.deferred_links, lambda: crawler.count, seal=True,
                                           meanwhile=settle)
            ledger.seal(sender.sealed)
        except BaseException:
            await sender.abort()
            raise
        summary.problems[:0] = crawler.problems
    except sqlite3.Error as exc:  # the id store or the ledger, mid-run (opening them raises StateError)
        raise StateError.during_run(state_dir, exc) from None
    finally:
        _close_state(store, ledger, failing=sys.exc_info()[1] is not None, state_dir=state_dir)
    return summary, crawler


def _close_state(store: IdStore | None, ledger: Ledger | None, *, failing: bool, state_dir: Path) -> None:
    """Close the id store and the ledger; while the run fails already, their own errors do not hide why."""

    import sqlite3

    first: sqlite3.Error | None = None
    for closing in (store, ledger):
        if closing is None:
            continue
        try:
            closing.close()
        except sqlite3.Error as exc:
            first = first or exc
    if first is not None and not failing:
        raise StateError.during_run(state_dir, first) from None


async def _abandon(opening: asyncio.Future[Channel]) -> None:
    """The run failed before it used the channel being opened: stop opening it, or close it."""

    opening.cancel()
    try:
        chan = await opening
    except (asyncio.CancelledError, Exception):  # cancelled, or it failed on its own: nothing is open
        return
    await reap(chan)


async def _connect(args: argparse.Namespace, ledger: Ledger, progress: Progress | None, head: HeadStart,
                   opening: asyncio.Future[Channel]) -> Sender:
    """A sender that has greeted the agent; the crawl gets a head start while SSH and the agent start."""

    from georep.source.crawl import HEAD_START_LIMIT
    from georep.transport.sender import Options, Sender

    async def connect() -> Sender:
        chan = await opening  # (cancelled with this task while it waits)
        sender = Sender(chan, Options(allow_mass_delete=args.allow_mass_delete, lanes=lane_policy(args)), progress,
                        on_done=_recorder(ledger))
        try:
            await sender.handshake(resume=b"" if args.verify else ledger.token)
        except BaseException:
            await sender.abort()
            raise
        return sender

    ready = asyncio.ensure_future(connect())
    try:
        while not ready.done():
            if not head.step(HEAD_START_LIMIT, until=time.monotonic() + HEAD_START_SLICE_S):
                break
            await asyncio.sleep(0)  # the handshake's packets are answered between slices
        return await ready
    except BaseException:
        ready.cancel()
        raise


def _settler(store: IdStore, ledger: Ledger) -> Callable[[], None]:
    """What the end of a run can write ahead, while the agent finishes (`Sender.finish`)."""

    def settle() -> None:
        store.settle()
        ledger.settle()

    return settle


def _recorder(ledger: Ledger) -> Callable[[Item], None]:
    """What the agent confirmed goes into the ledger."""

    from georep.source.crawl import SourceEntry

    def done(item: Item) -> None:
        if isinstance(item, SourceEntry):
            ledger.entry_done(item.entry)
        elif item.op == "link":
            ledger.link_done(item.oid, item.parent, item.name)
        else:
            ledger.remove_done(item.oid, item.parent, item.name)

    return done


def _filtered_links(store: IdStore, rerun: Rerun) -> Callable[[], list[tuple[bytes, bytes, bytes, bytes]]]:
    def links() -> list[tuple[bytes, bytes, bytes, bytes]]:
        while page := store.deferred_links():
            if kept := rerun.links(page):
                return kept
        return []

    return links


def _guarded(removals: Iterator[tuple[bytes, bytes, bytes, bytes]], crawler: Crawler, args: argparse.Namespace
             ) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
    """The removals, unless the source looks unmounted (no entry at all) and the secondary is not empty."""

    first = next(removals, None)
    if first is None:
        return
    if crawler.count == 0 and not args.allow_mass_delete:
        raise SourceLooksUnmounted(
            "the source has no entries but the secondary holds what earlier runs sent: refusing to delete it"
        )
    yield first
    yield from removals


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.source_abs = os.fsencode(os.path.abspath(args.source))
    show_progress = sys.stderr.isatty() and not args.no_progress and not args.json
    progress = Progress(os.fsencode(os.path.abspath(args.source))) if show_progress else None
    try:
        summary, _ = asyncio.run(replicate(args, progress))
    finally:
        if progress is not None:
            progress.done()
    if args.json:
        print(json.dumps(summary.as_json()))
    for w in summary.warnings:
        print(f"georep-sync: warning: {w}", file=sys.stderr)
    for p in summary.problems[:50]:
        print(f"georep-sync: {p.render()}", file=sys.stderr)
    rate = summary.bytes_data / summary.seconds if summary.seconds else 0.0
    matched = f" (+{_human(summary.bytes_matched)} unchanged, not sent)" if summary.bytes_matched else ""
    unchanged = f" ({summary.unchanged} more unchanged since the last run)" if summary.unchanged else ""
    print(
        f"georep-sync: {summary.entries} entries{unchanged}, {summary.files} files sent, "
        f"{_human(summary.bytes_data)} data{matched}, {_human(summary.bytes_wire)} on the wire, "
        f"{summary.deleted} deleted, {len(summary.problems)} errors in {summary.seconds:.2f}s "
        f"({_human(rate)}/s)",
        file=sys.stderr,
    )
    if summary.problems:
        err = SyncIncomplete(f"{len(summary.problems)} entries could not be replicated")
        print(f"georep-sync: error: {err.message}", file=sys.stderr)
        print(f"georep-sync: hint: {err.hint_text}", file=sys.stderr)
        return err.exit_code
    return 0

"""`georep-sync`: dispatch to a subcommand and turn errors into one line, a hint and an exit code.

This is the only place that decides exit codes (``GeorepError.exit_code``) and the only
place that prints a traceback, and only with ``--debug``.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable

from georep import __version__
from georep.errors import GeorepError


def _dispatch(argv: list[str]) -> Callable[[list[str]], int]:
    if argv and argv[0] == "agent":
        from georep.cli import agent_cmd

        return agent_cmd.run
    if argv and argv[0] == "daemon":
        from georep.cli import daemon_cmd

        return daemon_cmd.run
    if argv and argv[0] == "status":
        from georep.cli import status_cmd

        return status_cmd.run
    if argv and argv[0] == "demo":
        from georep.cli import demo

        return demo.run
    # a copy to an ssh:// secondary starts its TCP connection now, while it imports the rest
    from georep.transport.dial import start_early

    start_early(argv)
    from georep.cli import oneshot

    return oneshot.run


#: Container allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def _quiet_gc() -> None:
    """Collect cycles less often, and never walk what was imported.

    Per file, the sender and the agent allocate a few dozen short-lived lists, tuples and
    records, and free them by reference counting: none of it forms a cycle.  With the
    default threshold the cycle collector still ran every 700 allocations and walked
    every young object: 4.5 % of the sender's samples on a first copy of small files
    (py-spy --native).  Freezing what the imports made (asyncssh, the message classes)
    keeps the rare full collections from walking it too.  Memory stays bounded: at most
    this many young objects wait for a collection.
    """

    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


#: glibc's mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap (glibc's default starts at 128 KiB).
MMAP_THRESHOLD = 16 << 20
#: Free memory at the top of the heap kept for reuse rather than given back at once.
TRIM_THRESHOLD = 32 << 20


def _steady_malloc() -> None:
    """Serve frame-sized buffers from the heap, not from a mapping made and unmade for each.

    A Blobs frame, a data chunk and msgpack's buffer for them are about 1 MiB each, and
    live for a moment.  glibc maps each allocation above its threshold (128 KiB, raised
    only as mapped blocks are freed) and gives the top of the heap back above twice that;
    either way the next frame's buffer is fresh memory that the kernel zeroes and maps
    page by page.  On a first copy of 20,000 small files the sender took 19,000–32,000
    page faults this way and `msgpack.packb` cost 1 ms per Blobs frame; with these limits
    9,500 faults and 0.15 ms.  Memory stays bounded: the heap keeps at most
    `TRIM_THRESHOLD` free.  Not glibc (no ``mallopt``): the allocator's defaults stay.
    """

    import ctypes  # asyncssh imports it anyway

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "-V"):
        print(f"georep-sync {__version__}")
        return 0
    debug = "--debug" in args
    try:
        command = _dispatch(args)
        if argv is None:  # this process is georep-sync (not a test calling in)
            _quiet_gc()
            _steady_malloc()
        return command(args)
    except GeorepError as exc:
        if debug:
            traceback.print_exc()
        print(f"georep-sync: error: {exc.message}", file=sys.stderr)
        print(f"georep-sync: hint: {exc.hint_text}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("georep-sync: interrupted; acknowledged work is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        print(f"georep-sync: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("georep-sync: hint: run again with --debug and report the traceback", file=sys.stderr)
        return 70

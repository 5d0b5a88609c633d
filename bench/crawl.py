"""``python -m bench.crawl ROOT --state-dir D``: georep-sync's source crawl alone, as its own process.

The crawl is what bounds a first sync of a tree of millions of names, and its memory is what
an operator has to provision; running it in a process of its own lets the runner take its
peak RSS from ``wait4()`` without the runner's own memory in the figure.  Prints one JSON
object: entries, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from georep.source.crawl import Crawler
from georep.source.identity import IdStore


def crawl(root: Path, state_dir: Path) -> tuple[int, float]:
    """(entries, seconds) for one full crawl, ids assigned or looked up as the real sender does."""

    t0 = time.perf_counter()
    store = IdStore(state_dir, os.fsencode(root))
    try:
        n = sum(1 for _ in Crawler(os.fsencode(root), store))
    finally:
        store.close()
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.crawl", description=__doc__)
    p.add_argument("root", type=Path)
    p.add_argument("--state-dir", type=Path, required=True)
    args = p.parse_args()
    entries, seconds = crawl(args.root, args.state_dir)
    print(json.dumps({"entries": entries, "seconds": seconds}))


if __name__ == "__main__":
    main()

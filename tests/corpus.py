"""Where the real GlusterFS 10.3 changelog corpus lives for the tests.

A copy ships in ``tests/data/corpus`` (452 KiB, captured once from a real volume; see its README), so a
fresh clone on a fresh machine runs every parser and replay test without the workspace's ``../shared``.
``GEOREP_SHARED=/path/to/shared`` points the tests at another capture instead.
"""

from __future__ import annotations

import os
from pathlib import Path

_shared = os.environ.get("GEOREP_SHARED")
CORPUS = Path(_shared) / "corpus" if _shared else Path(__file__).resolve().parent / "data" / "corpus"

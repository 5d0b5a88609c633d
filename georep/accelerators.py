"""The C accelerators of ``native/`` (the extension `georep._native`), where they were built.

One place decides whether they are used.  `extension` is None where the extension was not
built (no C compiler, or no xxHash header, where georep-sync was installed) or with
``GEOREP_NATIVE=0`` (the pure-Python twins only: for comparing the two); every user then
runs its twin, which is the reference either way.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("GEOREP_NATIVE") == "0":
        return None
    try:
        return importlib.import_module("georep._native")
    except ImportError:  # not built: the twins do it all
        return None


#: the extension (None: not built, or GEOREP_NATIVE=0)
extension = _load()

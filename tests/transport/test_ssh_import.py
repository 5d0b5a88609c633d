"""Importing the SSH transport runs no compiler: asyncssh's library probes stay in the linker cache.

`georep.transport.ssh.linker_cache_lookups` says why.  The compiler and linker are
replaced on PATH by scripts that log their calls, so what is checked is whether the real
import would have run them.  The control case shows that the logging scripts do catch
``find_library``'s fallback, so the main test can fail.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from georep.transport.ssh import LinkerCache, linker_cache_lookups

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ctypes' linker-cache lookup is Linux's")

_LOGGING_TOOL = '#!/bin/sh\necho "$0 $*" >> "$GEOREP_TOOL_LOG"\nexit 1\n'


def _tools_run_by(code: str, tmp_path: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; the calls it made to gcc, cc or ld, one per line."""

    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for name in ("gcc", "cc", "ld"):
        (tools / name).write_text(_LOGGING_TOOL)
        (tools / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}", GEOREP_TOOL_LOG=str(log))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    return log.read_text().splitlines() if log.exists() else []


def test_the_logging_tools_catch_find_librarys_compiler_fallback(tmp_path: Path) -> None:
    calls = _tools_run_by("import ctypes.util; ctypes.util.find_library('georep_no_such_library')", tmp_path)
    assert [c for c in calls if c.split()[0].endswith(("/gcc", "/cc"))], calls
    assert [c for c in calls if c.split()[0].endswith("/ld")], calls


def test_importing_the_ssh_transport_runs_no_compiler(tmp_path: Path) -> None:
    code = (
        "import ctypes.util\n"
        "before = ctypes.util.find_library\n"
        "import georep.transport.ssh\n"
        "assert ctypes.util.find_library is before, 'find_library was not given back'\n"
    )
    assert _tools_run_by(code, tmp_path) == []


def test_a_library_in_the_linker_cache_is_still_found() -> None:
    plain = ctypes.util.find_library("c")
    assert plain is not None
    with linker_cache_lookups():
        assert ctypes.util.find_library("c") == plain
        assert ctypes.util.find_library("georep_no_such_library") is None


def test_one_listing_finds_what_ctypes_finds_name_by_name() -> None:
    """The linker cache is listed once for every name asyncssh asks, with ctypes' own answers."""

    names = ["c", "m", "crypto", "nettle", "oqs", "liboqs", "stdc++", "georep_no_such_library"]
    cache = LinkerCache()
    found = {name: cache.find(name) for name in names}
    assert found == {name: ctypes.util._findSoname_ldconfig(name) for name in names}  # type: ignore[attr-defined]
    assert found["c"] is not None and found["georep_no_such_library"] is None
    assert cache.listings == 1


def _fresh(code: str, tmp_path: Path, pythonpath: str = "") -> str:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, check=True, timeout=120,
                          capture_output=True, text=True, cwd=tmp_path).stdout.strip()


_REPORT = ("import sys, asyncssh.public_key as pk\n"
           "print('cryptography.x509' in sys.modules, pk._x509_available, 'asyncssh.crypto.x509' in sys.modules)\n")


def test_without_pyopenssl_the_x509_module_is_not_tried(tmp_path: Path) -> None:
    """asyncssh alone imports cryptography.x509 and then goes without X.509 all the same (the control)."""

    alone = _fresh("import asyncssh\n" + _REPORT, tmp_path)
    ours = _fresh("import georep.transport.ssh\n" + _REPORT, tmp_path)
    assert alone == "True False False", alone  # tried, gave up: pyOpenSSL is not installed here
    assert ours == "False False False", ours  # not tried, the same outcome, no marker left behind


def test_with_pyopenssl_installed_asyncssh_tries_x509_as_before(tmp_path: Path) -> None:
    fake = tmp_path / "site"
    (fake / "OpenSSL").mkdir(parents=True)
    (fake / "OpenSSL" / "__init__.py").write_text("")
    (fake / "OpenSSL" / "crypto.py").write_text("")  # what asyncssh imports; enough to be found
    ours = _fresh("import georep.transport.ssh\n" + _REPORT, tmp_path, pythonpath=str(fake))
    assert ours.split()[0] == "True", ours

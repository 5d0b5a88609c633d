"""Did the contender actually replicate?  A speed figure for a wrong copy is worse than none.

gsyncd with Debian's rsync 3.5.0 reports success while delivering names without data
(shared/reference/gluster-brick.md section 4), so every benchmark run is followed by a
comparison of the secondary with the source: names (raw bytes), type, permission bits,
size, file mtime, symlink target and an xxh3-128 digest of every file's content.  The
comparison runs after the clock has stopped and is not part of any figure.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import xxhash

#: Names at the top of a secondary that belong to the replicator, not to the replica.
SKIP_TOP = frozenset({b".georep"})

Snapshot = dict[bytes, tuple[object, ...]]


def _content(path: bytes) -> bytes:
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def snapshot(root: Path | bytes, *, skip_top: frozenset[bytes] = SKIP_TOP) -> Snapshot:
    """Everything the benchmark datasets make a replica responsible for, keyed by relative path."""

    rootb = os.fsencode(root)
    out: Snapshot = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(rootb, rel) if rel else rootb
        with os.scandir(base) as it:
            for de in it:
                if not rel and de.name in skip_top:
                    continue
                r = os.path.join(rel, de.name) if rel else de.name
                st = de.stat(follow_symlinks=False)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    out[r] = ("dir", mode)
                    stack.append(r)
                elif stat.S_ISLNK(st.st_mode):
                    out[r] = ("link", os.readlink(de.path))
                elif stat.S_ISREG(st.st_mode):
                    out[r] = ("file", mode, st.st_size, st.st_mtime_ns, _content(de.path))
                else:
                    out[r] = ("other", stat.S_IFMT(st.st_mode), mode)
    return out


def _show(name: bytes) -> str:
    return repr(os.fsdecode(name).encode("unicode_escape").decode())


def _kind(a: tuple[object, ...] | None, b: tuple[object, ...] | None) -> str:
    if b is None:
        return "missing on the replica"
    if a is None:
        return "extra on the replica"
    if a[0] != b[0]:
        return "different type"
    if a[0] == "file":
        if a[2] != b[2]:
            return "different size"
        if a[4] != b[4]:
            return "different content"
        if a[1] != b[1]:
            return "different mode"
        assert isinstance(a[3], int) and isinstance(b[3], int)
        if a[3] // 10**9 == b[3] // 10**9:
            return "mtime lost its sub-second part"
        return "different mtime"
    if a[0] == "dir":
        return "different directory mode"
    return "different symlink target" if a[0] == "link" else "different special file"


def differences(source: Snapshot, replica: Snapshot, examples: int = 2) -> list[str]:
    """How the replica differs from the source, one line per kind of difference (count and examples);
    empty when they are equal.  Kinds that lose data come first."""

    kinds: dict[str, list[bytes]] = {}
    for name in sorted(source.keys() | replica.keys()):
        a, b = source.get(name), replica.get(name)
        if a != b:
            kinds.setdefault(_kind(a, b), []).append(name)
    order = ["missing on the replica", "different size", "different content", "different type",
             "extra on the replica", "different symlink target", "different special file", "different mode",
             "different directory mode", "different mtime", "mtime lost its sub-second part"]
    out = []
    for kind in sorted(kinds, key=order.index):
        names = kinds[kind]
        shown = ", ".join(_show(n) for n in names[:examples])
        out.append(f"{len(names):,} {'entries' if len(names) > 1 else 'entry'} {kind} (e.g. {shown})")
    return out

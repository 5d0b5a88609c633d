"""Byte-exact comparison of two trees, and builders of awkward trees, for the tests.

`snapshot` reads everything a replica must preserve: names (raw bytes), types, content
digests, mode, owner, mtime, symlink targets, device numbers, hard-link groups,
replicable xattrs and the data/hole map of sparse files.  Two trees are equal when their
snapshots are.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

SKIP_TOP = {b".georep"}


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for k in sorted(keys):
        kb = os.fsencode(k)
        if kb.startswith((b"trusted.gfid", b"trusted.glusterfs.", b"trusted.afr.", b"security.")):
            continue
        out.append((kb, os.getxattr(path, k, follow_symlinks=False)))
    return tuple(out)


def _data_map(path: bytes, size: int) -> tuple[tuple[int, int], ...]:
    """Data extents rounded to 64 KiB, enough to tell a hole from written zeros."""

    fd = os.open(path, os.O_RDONLY)
    try:
        out = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start // 65536, (end + 65535) // 65536))
            pos = end
        return tuple(out)
    finally:
        os.close(fd)


def _digest(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path | bytes, *, mtimes: bool = True, owners: bool = True) -> dict[bytes, tuple[object, ...]]:
    rootb = os.fsencode(root)
    entries: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, list[bytes]] = {}
    st = os.lstat(rootb)
    entries[b"."] = ("dir", stat.S_IMODE(st.st_mode), _xattrs(rootb))
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(rootb, rel) if rel else rootb
        for name in os.listdir(base):
            if not rel and name in SKIP_TOP:
                continue
            r = os.path.join(rel, name) if rel else name
            p = os.path.join(rootb, r)
            st = os.lstat(p)
            common: tuple[object, ...] = (stat.S_IMODE(st.st_mode),)
            if owners:
                common += (st.st_uid, st.st_gid)
            if mtimes:
                common += (st.st_mtime_ns,)
            if stat.S_ISDIR(st.st_mode):
                entries[r] = ("dir", *common, _xattrs(p))
                stack.append(r)
            elif stat.S_ISREG(st.st_mode):
                entries[r] = ("file", *common, st.st_size, _digest(p), _xattrs(p), _data_map(p, st.st_size))
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(r)
            elif stat.S_ISLNK(st.st_mode):
                entries[r] = ("symlink", *(common[1:] if owners else ()), os.readlink(p))
            else:
                entries[r] = ("special", stat.S_IFMT(st.st_mode), *common, st.st_rdev)
    groups = sorted(tuple(sorted(g)) for g in inodes.values())
    entries[b"//hardlinks"] = tuple(groups)
    return entries


def diff(a: dict[bytes, tuple[object, ...]], b: dict[bytes, tuple[object, ...]]) -> list[str]:
    """Human-readable differences (empty when equal)."""

    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k!r}: {a.get(k)!r} != {b.get(k)!r}")
    return out


HOSTILE_NAMES = [
    b"new\nline",
    b"trailing space ",
    b"trailing\ttab\t",
    b"\xff\xfe non-utf8 \x80",
    b"-leading-dash",
    b"%percent%s",
    b"x" * 255,
    b"..dots",
    b"quote\"'`$(echo)",
    "ünïcødé".encode(),
]


def build_fidelity_tree(root: Path, *, files: int = 0, privileged: bool | None = None) -> None:
    """Every case the replica must keep, plus ``files`` small files in 100 directories."""

    priv = os.geteuid() == 0 if privileged is None else privileged
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)
    j = lambda *parts: os.path.join(r, *parts)  # noqa: E731
    os.mkdir(j(b"dir"))
    os.mkdir(j(b"empty-dir"))
    os.mkdir(j(b"dir", b"sub"))
    for i, name in enumerate(HOSTILE_NAMES):
        with open(j(b"dir", name), "wb") as f:
            f.write(b"content of %d\n" % i)
        os.mkdir(j(b"dir", b"sub", name))
    with open(j(b"empty"), "wb"):
        pass
    with open(j(b"dir", b"random.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    with open(j(b"mode-0640"), "wb") as f:
        f.write(b"x")
    os.chmod(j(b"mode-0640"), 0o640)
    with open(j(b"setgid-x"), "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chmod(j(b"setgid-x"), 0o2755)
    # sparse: 64 MiB with two data islands
    with open(j(b"sparse"), "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(os.urandom(100_000))
        f.seek(40 << 20)
        f.write(b"island")
    os.symlink(b"dir/random.bin", j(b"link-rel"))
    os.symlink(b"/nonexistent/absolute", j(b"link-dangling"))
    os.symlink(b"\xff\n odd target", j(b"dir", b"link-odd"))
    os.link(j(b"dir", b"random.bin"), j(b"hard-1"))
    os.link(j(b"dir", b"random.bin"), j(b"dir", b"sub", b"hard-2"))
    os.mkfifo(j(b"fifo"))
    os.setxattr(j(b"dir", b"random.bin"), b"user.checksum", b"\x00\x01binary")
    os.setxattr(j(b"dir"), b"user.dirattr", b"d")
    if priv:
        os.mknod(j(b"null-dev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(j(b"mode-0640"), 1234, 5678)
        os.chown(j(b"dir", b"sub"), 4321, 8765)
        os.lchown(j(b"link-rel"), 1111, 2222)
        os.setxattr(j(b"empty"), b"trusted.replicated", b"yes")
    if files:
        per_dir = max(files // 100, 1)
        n = 0
        d = 0
        while n < files:
            dpath = j(b"bulk", b"d%03d" % d)
            os.makedirs(dpath)
            for _ in range(min(per_dir, files - n)):
                with open(os.path.join(dpath, b"f%05d" % n), "wb") as f:
                    f.write(b"%d\n" % n * (1 + n % 50))
                n += 1
            d += 1
    # distinct mtimes, set last (children first so directory mtimes stick)
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for nm in filenames + dirnames:
            p = os.path.join(dirpath, nm)
            os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789 + len(nm)),
                     follow_symlinks=False)
        os.utime(dirpath, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001 + len(dirpath)))

"""Seeded sample trees and the mutations applied to them between runs.

Every dataset is generated on demand into a work directory (never into the repository) from
a seed, so two runs of the benchmark see the same names, sizes and bytes.  File data is
incompressible (``random.Random.randbytes``): neither SSH compression nor a clever codec
can make a contender look faster than its wire allows.

The small tree carries awkward names (spaces, tabs, newlines, trailing whitespace,
non-UTF-8 bytes, 255-byte names, leading dashes, shell metacharacters) because those are
what break replicators in practice (gsyncd strips trailing whitespace and crashes on
non-UTF-8 names: shared/reference/gluster-brick.md section 4); a benchmark that only
used ``file0001.dat`` would measure a world operators do not live in.

Mutations change a tree in place and describe what they changed (files, data bytes), so
the report can normalise every contender's time by the same work.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB

#: Name patterns for the awkward part of the small tree; ``%d`` keeps each one unique.
AWKWARD = (
    b"with space %d",
    b"tab\there %d",
    b"new\nline %d",
    b"trailing space %d ",
    b"trailing tab %d\t",
    b"-leading-dash %d",
    b"\xff\xfenot-utf8 %d",
    b"latin1 \xe9t\xe9 %d",
    "ünïcödé %d".encode(),
    "日本語の名前 %d".encode(),
    b"emoji \xf0\x9f\x93\x81 %d",
    b"percent %%s %%n %d",
    b"glob *?[x] %d",
    b"quote ' \" ` %d",
    b"back\\slash %d",
    b".hidden %d",
    b"~tilde %d",
    b"$HOME dollar %d",
    b"semi;colon:%d",
    b"-rf %d",
)


@dataclass(frozen=True, slots=True)
class TreeStats:
    """What a generated tree holds: the denominators of files/s and MB/s."""

    files: int
    dirs: int
    symlinks: int
    bytes: int

    @property
    def entries(self) -> int:
        return self.files + self.dirs + self.symlinks


@dataclass(frozen=True, slots=True)
class Mutation:
    """One change applied to a source tree: the work every contender must then replicate.

    ``files`` counts the files whose name or content changed, ``bytes`` the new data a
    replicator has to move at least (renames move no data).
    """

    name: str
    files: int
    bytes: int
    description: str
    #: bytes of the files whose path changed (renamed, or below a renamed directory): what a
    #: replicator that cannot follow renames sends again
    renamed_bytes: int = 0


def _awkward_name(rng: random.Random, i: int) -> bytes:
    if rng.random() < 0.05:
        return (b"long name %d " % i).ljust(255, b"x")
    pattern = AWKWARD[rng.randrange(len(AWKWARD))]
    return pattern % i


def _write_random(path: bytes, rng: random.Random, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left:
            n = min(left, MIB)
            os.write(fd, rng.randbytes(n))
            left -= n
    finally:
        os.close(fd)


def _fresh(root: Path) -> bytes:
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: datasets are generated into a fresh directory")
    root.mkdir(parents=True, exist_ok=True)
    return os.fsencode(root)


def make_small(root: Path, *, files: int = 20_000, dirs: int = 200, seed: int = 1) -> TreeStats:
    """``files`` files of 1–16 KiB spread over ``dirs`` directories two levels deep.

    One file in 25 and one directory in 10 get an awkward name.
    """

    rootb = _fresh(root)
    rng = random.Random(seed)
    top = max(1, dirs // 10)
    made: list[bytes] = []
    for t in range(top):
        tname = b"d%03d" % t if t % 10 else _awkward_name(rng, t)
        tpath = os.path.join(rootb, tname)
        os.mkdir(tpath)
        made.append(tpath)
    for d in range(dirs - top):
        sname = b"s%04d" % d if d % 10 else _awkward_name(rng, 1000 + d)
        spath = os.path.join(made[d % top], sname)
        os.mkdir(spath)
        made.append(spath)
    total = 0
    for i in range(files):
        parent = made[rng.randrange(len(made))]
        name = _awkward_name(rng, i) if i % 25 == 0 else b"f%06d.dat" % i
        size = rng.randint(KIB, 16 * KIB)
        _write_random(os.path.join(parent, name), rng, size)
        total += size
    return TreeStats(files=files, dirs=len(made), symlinks=0, bytes=total)


def make_large(root: Path, *, files: int = 4, size: int = 256 * MIB, seed: int = 2) -> TreeStats:
    """``files`` incompressible files of ``size`` bytes each: the bulk-throughput case."""

    rootb = _fresh(root)
    for i in range(files):
        _write_random(os.path.join(rootb, b"large-%02d.bin" % i), random.Random(seed * 1000 + i), size)
    return TreeStats(files=files, dirs=0, symlinks=0, bytes=files * size)


#: The mixed tree's composition: (files, smallest, largest), sizes log-uniform within a bucket.
MIXED_BUCKETS = ((4000, 512, 64 * KIB), (400, 64 * KIB, 2 * MIB), (8, 8 * MIB, 32 * MIB))


def make_mixed(root: Path, *, scale: float = 1.0, seed: int = 3) -> TreeStats:
    """What a real share looks like: many small files, some medium, a few big ones (`MIXED_BUCKETS`,
    counts times ``scale``), 3 % empty files, odd modes, symlinks (some dangling), empty directories
    and one sparse file (16 MiB holding 2 MiB of data).

    No hard links: ``rsync -a`` without ``-H`` would not keep them, and the comparison must
    end with equal trees for every contender.
    """

    rootb = _fresh(root)
    rng = random.Random(seed)
    dirs: list[bytes] = [rootb]
    for d in range(40):
        parent = dirs[rng.randrange(len(dirs))]
        path = os.path.join(parent, b"dir %02d" % d if d % 7 else _awkward_name(rng, 5000 + d))
        os.mkdir(path)
        dirs.append(path)
    sizes = [
        int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        for count, lo, hi in MIXED_BUCKETS
        for _ in range(max(1, round(count * scale)))
    ]
    rng.shuffle(sizes)
    written = 0
    for i, size in enumerate(sizes):
        if rng.random() < 0.03:
            size = 0
        parent = dirs[rng.randrange(len(dirs))]
        path = os.path.join(parent, b"m%05d.bin" % i)
        _write_random(path, rng, size)
        os.chmod(path, (0o644, 0o600, 0o755, 0o444)[rng.randrange(4)])
        written += size
    files = len(sizes)
    sparse = os.path.join(rootb, b"sparse.img")
    fd = os.open(sparse, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, rng.randbytes(MIB))
        os.pwrite(fd, rng.randbytes(MIB), 15 * MIB)
    finally:
        os.close(fd)
    files += 1
    written += 16 * MIB
    symlinks = 0
    for s in range(30):
        parent = dirs[rng.randrange(len(dirs))]
        target = b"m%05d.bin" % rng.randrange(len(sizes)) if s % 5 else b"../no/such/target %d" % s
        os.symlink(target, os.path.join(parent, b"link %02d" % s))
        symlinks += 1
    for e in range(10):
        os.mkdir(os.path.join(dirs[rng.randrange(len(dirs))], b"empty %02d" % e))
    return TreeStats(files=files, dirs=len(dirs) - 1 + 10, symlinks=symlinks, bytes=written)


def make_scale(root: Path, *, entries: int = 1_000_000, per_dir: int = 1000, seed: int = 4) -> TreeStats:
    """``entries`` entries (directories of ``per_dir`` names, three levels), files empty or a few bytes.

    For crawl rate and memory only: data is negligible, so the numbers are about names.
    """

    rootb = _fresh(root)
    rng = random.Random(seed)
    ndirs = max(1, entries // per_dir)
    top = max(1, int(ndirs**0.5))
    made = 0
    nfiles = 0
    dirs = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(ndirs):
        if made >= entries:
            break
        tpath = os.path.join(rootb, b"t%04d" % (d % top))
        if d < top:
            os.mkdir(tpath)
            dirs += 1
            made += 1
        dpath = os.path.join(tpath, b"d%06d" % d)
        os.mkdir(dpath)
        dirs += 1
        made += 1
        dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(min(per_dir - 1, entries - made)):
                fd = os.open(b"e%04d" % f, flags, 0o644, dir_fd=dfd)
                if f % 10 == 0:
                    os.write(fd, rng.randbytes(rng.randint(1, 64)))
                os.close(fd)
                nfiles += 1
                made += 1
        finally:
            os.close(dfd)
    return TreeStats(files=nfiles, dirs=dirs, symlinks=0, bytes=0)


def _files(rootb: bytes) -> list[bytes]:
    out: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(rootb):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                out.append(path)
    return out


def mutate_renames(root: Path, *, fraction: float = 0.2, dir_renames: int = 10, rewrites: int = 200,
                   seed: int = 11) -> Mutation:
    """Rename ``fraction`` of the files (half in place, half into another directory), rename
    ``dir_renames`` leaf directories, and replace ``rewrites`` files the way rsync, editors and
    most writers do: new content in ``.NAME.XXXXXX`` beside it, then ``rename()`` over NAME.
    """

    rootb = os.fsencode(root)
    rng = random.Random(seed)
    files = _files(rootb)
    dirs = sorted({os.path.dirname(p) for p in files} - {rootb})
    chosen = rng.sample(files, int(len(files) * fraction))
    renamed_bytes = 0
    for n, path in enumerate(chosen):
        renamed_bytes += os.lstat(path).st_size
        parent, name = os.path.split(path)
        if n % 2:
            parent = dirs[rng.randrange(len(dirs))]
        os.rename(path, os.path.join(parent, name[:200] + b" ~r%d" % n))
    leaves = [d for d in dirs if not any(e.is_dir() for e in os.scandir(d))]
    for n, d in enumerate(rng.sample(leaves, min(dir_renames, len(leaves)))):
        renamed_bytes += sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(d) if e.is_file())
        os.rename(d, d[:200] + b" moved %d" % n)
    files = _files(rootb)
    written = 0
    for path in rng.sample(files, min(rewrites, len(files))):
        parent, name = os.path.split(path)
        suffix = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                         for _ in range(6))
        tmp = os.path.join(parent, b"." + name[:240] + b"." + suffix.encode())
        size = rng.randint(KIB, 16 * KIB)
        _write_random(tmp, rng, size)
        os.rename(tmp, path)
        written += size
    return Mutation(
        "renames",
        files=len(chosen) + min(rewrites, len(files)),
        bytes=written,
        description=(f"{len(chosen)} files renamed ({fraction:.0%}), {dir_renames} directories renamed, "
                     f"{rewrites} files replaced through a .NAME.XXXXXX temp name"),
        renamed_bytes=renamed_bytes,
    )


def mutate_appends(root: Path, *, nbytes: int = MIB, seed: int = 12) -> Mutation:
    """Append ``nbytes`` to every file of the (large) tree: a log or an image that grows."""

    rng = random.Random(seed)
    files = _files(os.fsencode(root))
    for path in files:
        with open(path, "ab") as f:
            f.write(rng.randbytes(nbytes))
    return Mutation("appends", files=len(files), bytes=len(files) * nbytes,
                    description=f"{nbytes // KIB} KiB appended to each of {len(files)} files")


def mutate_touch_few(root: Path, *, count: int = 10, seed: int = 13) -> Mutation:
    """Rewrite ``count`` files in place with new bytes of the same size (mtime moved on by 2 s so a
    size+mtime quick check sees them on any filesystem)."""

    rng = random.Random(seed)
    files = _files(os.fsencode(root))
    written = 0
    for path in rng.sample(files, min(count, len(files))):
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.write(rng.randbytes(st.st_size))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        written += st.st_size
    return Mutation("touch-few", files=min(count, len(files)), bytes=written,
                    description=f"{count} files rewritten in place (same size)")

"""Race-free filesystem primitives of the secondary: the only code that mutates it.

Every call works relative to a directory file descriptor with a single, validated name
component, and never follows a symlink: directories are opened with ``O_NOFOLLOW``,
new objects are made in the staging directory and published with one ``rename()``, and
trees are removed with ``unlinkat``/``rmdir`` on names read from the directory itself.
A hostile sender can therefore name nothing outside the root, and a symlink planted on
the secondary is treated as a name, never as a path to walk through.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from georep.model import Meta, replicable_xattr

if TYPE_CHECKING:  # imported when the first direct write happens (see `_direct_io`)
    from concurrent.futures import Future, ThreadPoolExecutor

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd: int, name: bytes) -> int:
    return os.open(name, O_DIR, dir_fd=dir_fd)


def make_dir_at(dir_fd: int, name: bytes) -> int:
    """Open directory ``name`` (mode 0700 if it has to be made), never following a symlink.

    Several agents may start on one root at once (a daemon per brick, data lanes): whoever
    makes it first wins and the others open it.
    """

    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    return open_dir_at(dir_fd, name)


def rename_at(src_fd: int, src: bytes, dst_fd: int, dst: bytes) -> None:
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


RENAME_NOREPLACE = 1


def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """libc's renameat2(2) (glibc 2.28+), which os does not wrap; None where there is none."""

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], fn)


_RENAMEAT2 = _renameat2()
#: errnos that say "this kernel or filesystem has no RENAME_NOREPLACE", not "the name is taken"
_NO_NOREPLACE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def rename_noreplace_at(src_fd: int, src: bytes, dst_fd: int, dst: bytes) -> bool:
    """Rename only if ``dst`` is free: True if renamed, False if the name is taken (nothing changed).

    Why: a file published under a free name (most of them, on a first copy) needs no lstat
    of its target first: one syscall instead of two (measured 20.8 against 24.7 µs per
    file).  Where renameat2 or the flag is missing this says False, from then on without
    trying, and the caller takes the general path (look, make room, rename) as it always could.
    """

    global _RENAMEAT2
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(src_fd, src, dst_fd, dst, RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_NOREPLACE:
        # not on this filesystem: stop asking, or every file would pay a failed call first
        # (an agent serves one root, so one filesystem)
        _RENAMEAT2 = None
        return False
    if err == errno.EEXIST:
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(dst))


def remove_at(dir_fd: int, name: bytes) -> None:
    """Remove a name; a directory with everything below it, symlinks never followed."""

    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    stack: list[tuple[int, list[str]]] = []
    fd = open_dir_at(dir_fd, name)
    stack.append((fd, os.listdir(fd)))
    parents: list[tuple[int, bytes]] = [(dir_fd, name)]
    while stack:
        fd, todo = stack[-1]
        if not todo:
            os.close(fd)
            stack.pop()
            pfd, pname = parents.pop()
            os.rmdir(pname, dir_fd=pfd)
            continue
        child = os.fsencode(todo.pop())
        cst = lstat_at(fd, child)
        if cst is None:
            continue
        if stat.S_ISDIR(cst.st_mode):
            cfd = open_dir_at(fd, child)
            stack.append((cfd, os.listdir(cfd)))
            parents.append((fd, child))
        else:
            os.unlink(child, dir_fd=fd)


def set_xattrs(target: int | str, wanted: tuple[tuple[bytes, bytes], ...], privileged: bool,
               follow: bool = True, fresh: bool = False) -> None:
    """Make the replicable xattrs of ``target`` exactly ``wanted`` (``fresh``: it has none yet)."""

    have: set[bytes] = set()
    if not fresh:
        try:
            have = {os.fsencode(k) for k in os.listxattr(target, follow_symlinks=follow)}
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
    want_keys = set()
    for key, value in wanted:
        if not replicable_xattr(key, privileged):
            continue
        want_keys.add(key)
        os.setxattr(target, key, value, follow_symlinks=follow)
    for key in have - want_keys:
        if replicable_xattr(key, privileged) and not key.startswith(b"security."):
            os.removexattr(target, key, follow_symlinks=follow)


def apply_meta_fd(fd: int, meta: Meta, privileged: bool, times: bool = True,
                  fresh: os.stat_result | None = None) -> None:
    """Owner, xattrs, mode and (optionally) mtime of an open file or directory.

    ``fresh``: the object was just made in staging and this is its stat; what it has
    already (owner, mode, no xattrs) is not set again — three syscalls fewer per new file.
    """

    chowned = False
    if privileged and (fresh is None or (fresh.st_uid, fresh.st_gid) != (meta.uid, meta.gid)):
        os.fchown(fd, meta.uid, meta.gid)
        chowned = True
    set_xattrs(fd, meta.xattrs, privileged, fresh=fresh is not None)
    if fresh is None or chowned or stat.S_IMODE(fresh.st_mode) != meta.mode:
        os.fchmod(fd, meta.mode)  # after chown: chown clears setuid/setgid
    if times:
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))


def create_staged_at(dir_fd: int, name: bytes, mode: int) -> int:
    """A new file in staging (a 0700 directory), made with its final permission bits.

    Made with them (the umask permitting), a file usually needs no fchmod once written;
    setuid/setgid/sticky bits are only ever set by fchmod, at the end (`seal_staged`).
    """

    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   (mode & 0o777) | 0o600, dir_fd=dir_fd)


def seal_staged(fd: int, size: int, meta: Meta, privileged: bool) -> os.stat_result:
    """Give a complete file made by `create_staged_at` its final length and metadata; its stat."""

    st = os.fstat(fd)
    if st.st_size != size:  # a trailing hole (or a longer basis copy): cut or extend
        os.ftruncate(fd, size)
    apply_meta_fd(fd, meta, privileged, fresh=st)
    return st


def apply_meta_symlink(dir_fd: int, name: bytes, meta: Meta, privileged: bool) -> None:
    if privileged:
        os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False)
        # xattrs on a symlink (trusted.* only) through the staging dir's /proc path
        path = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"
        set_xattrs(path, meta.xattrs, privileged, follow=False)
    os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def apply_meta_special(dir_fd: int, name: bytes, meta: Meta, privileged: bool) -> None:
    """Fifos and device nodes made by us in staging (opening them could block or act)."""

    if privileged:
        os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod(name, meta.mode, dir_fd=dir_fd)
    os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


#: Bytes per read/write when copy_file_range cannot be used.
_COPY_PIECE = 1 << 20
#: copy_file_range errors that mean "not between these files": copy through user space instead.
_NO_CFR = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.ETXTBSY})


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    """Copy ``[offset, offset + length)`` of one file to the same offset of another.

    In the kernel (``copy_file_range``: no copy through user space, a reflink where the
    filesystem shares extents), else by pread/pwrite.  Returns the bytes copied: fewer
    than ``length`` only when the source ends first.
    """

    done = 0
    in_kernel = hasattr(os, "copy_file_range")
    while done < length:
        pos = offset + done
        if in_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, length - done, pos, pos)
            except OSError as exc:
                if exc.errno not in _NO_CFR:
                    raise
                in_kernel = False
                continue
        else:
            data = os.pread(src_fd, min(_COPY_PIECE, length - done), pos)
            n = len(data)
            view = memoryview(data)
            while view:
                w = os.pwrite(dst_fd, view, pos)
                view = view[w:]
                pos += w
        if n == 0:
            break
        done += n
    return done


#: Files at least this large, sent whole, are written around the page cache (`DirectWriter`).
DIRECT_MIN = 8 * 1024 * 1024

_DIRECT_IO: ThreadPoolExecutor | None = None


def _direct_io() -> ThreadPoolExecutor:
    """The one thread that performs direct writes, so that the next block is received meanwhile.

    concurrent.futures is imported here, not with the module: with the logging it pulls in,
    it was a tenth of the agent's imports (10 ms), paid before its first answer by every
    run, and only runs writing files of `DIRECT_MIN` or more use it.
    """

    global _DIRECT_IO
    if _DIRECT_IO is None:
        from concurrent.futures import ThreadPoolExecutor

        _DIRECT_IO = ThreadPoolExecutor(max_workers=1, thread_name_prefix="georep-direct-io")
    return _DIRECT_IO


def _write_block(fd: int, buf: mmap.mmap, offset: int, n: int) -> int:
    return os.pwrite(fd, memoryview(buf)[:n], offset)


def write_all_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_received(fd: int, writer: DirectWriter | None, offset: int, data: bytes) -> None:
    """A piece of a file being received, at ``offset``: through its `DirectWriter` if it has one."""

    if writer is not None:
        writer.write(offset, data)
    else:
        os.pwrite(fd, data, offset)


class DirectWriter:
    """Writes a large file that arrives front to back around the page cache (``O_DIRECT``).

    Why: replication should not push what the secondary's readers have in its page cache
    out for data nobody reads yet, and on this 2-core VM filling new page-cache pages cost
    0.2 to 2.5 s of CPU per GiB (fresh pages are faulted in by the host), taken from the
    agent while the sender, sshd and the agent share two cores.  ``O_DIRECT`` writes go
    from two reused, page-aligned buffers straight to the disk: one is written by a
    helper thread while the other fills, so the disk and the network overlap as they do
    with buffered writes.

    Only the shape it is good at goes direct: chunks that follow each other from offset 0,
    in whole aligned blocks.  Anything else (a hole the sender skipped, a filesystem that
    refuses ``O_DIRECT``, a short write) waits for the block in flight, writes what is
    buffered plainly and turns the file into plain writes for good, so the content is
    the same either way.  The last partial block is always written plainly by `finish`.
    """

    BLOCK = 1 << 20  # one buffer, and one direct write
    ALIGN = 4096  # offsets and lengths of direct writes: covers 512- and 4096-byte sectors

    @classmethod
    def for_size(cls, fd: int, size: int) -> DirectWriter | None:
        """A writer for a file of ``size`` bytes about to arrive whole; None when it is too small to gain."""

        return cls(fd) if size >= DIRECT_MIN else None

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.base = 0  # file offset of the current buffer's first byte
        self.fill = 0
        self.direct = False
        self._bufs: list[mmap.mmap] = []
        self._cur = 0
        #: the block being written by the helper thread: (its write, its buffer, offset)
        self._pending: tuple[Future[int], int, int] | None = None
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:
            return
        self.direct = True
        self._bufs = [mmap.mmap(-1, self.BLOCK), mmap.mmap(-1, self.BLOCK)]

    def write(self, offset: int, data: bytes) -> None:
        if not self.direct:
            write_all_at(self.fd, data, offset)
            return
        if offset != self.base + self.fill:
            self._go_plain()
            write_all_at(self.fd, data, offset)
            return
        view = memoryview(data)
        while view:
            n = min(len(view), self.BLOCK - self.fill)
            self._bufs[self._cur][self.fill:self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == self.BLOCK:
                self._hand_over()
                if not self.direct:
                    write_all_at(self.fd, view, self.base + self.fill)
                    return

    def finish(self) -> None:
        """Everything written (the last partial block plainly); the buffers released.  The fd stays open."""

        self._go_plain()
        self.close()

    def close(self) -> None:
        """Release the buffers, writing nothing more (also what a discarded file gets)."""

        if self._pending is not None:
            with contextlib.suppress(OSError):
                self._pending[0].result()
            self._pending = None
        for buf in self._bufs:
            # a view of it may live on in the traceback of the error that discards this file:
            # the mapping then goes with the last reference instead
            with contextlib.suppress(BufferError):
                buf.close()
        self._bufs = []

    def _hand_over(self) -> None:
        """The full current buffer goes to the helper thread; the other one, once written, becomes current."""

        self._settle()
        if not self.direct:
            self._flush_plain()
            return
        fut = _direct_io().submit(_write_block, self.fd, self._bufs[self._cur], self.base, self.BLOCK)
        self._pending = (fut, self._cur, self.base)
        self._cur ^= 1
        self.base += self.BLOCK
        self.fill = 0

    def _settle(self) -> None:
        """Wait for the block in flight; if it was refused or cut short, write it plainly and stop going direct."""

        if self._pending is None:
            return
        fut, idx, offset = self._pending
        self._pending = None
        try:
            done = fut.result()
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            done = 0  # the filesystem takes no direct writes after all
        if done == self.BLOCK:
            return
        self._drop_direct()
        write_all_at(self.fd, memoryview(self._bufs[idx])[done:self.BLOCK], offset + done)

    def _go_plain(self) -> None:
        """Wait for the block in flight, write what is buffered plainly, and stay plain."""

        if self.direct:
            self._settle()
            self._drop_direct()
            self._flush_plain()

    def _drop_direct(self) -> None:
        if self.direct:
            self.direct = False
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def _flush_plain(self) -> None:
        if self.fill:
            write_all_at(self.fd, memoryview(self._bufs[self._cur])[:self.fill], self.base)
            self.base += self.fill
            self.fill = 0

"""Small files written and published on a worker thread while the agent reads on.

Why: on a first copy the agent is the slowest stage.  Profiled on the *small* dataset it
spent about half its time in the kernel (create in staging, write, set times, rename) and
the other half in Python (decoding, the index), one after the other on one core, while the
second core was partly idle.  The kernel half releases the GIL, so a thread can do it
while the main thread decodes the next frame and keeps the index: the two halves overlap.

The worker only ever touches what nobody else can see yet: a new name in staging, which it
writes (the main thread checked the data against its digest), gives its metadata and then
renames to its final name *only if that name is free* (renameat2 RENAME_NOREPLACE).  Everything that needs a look at
other objects (a taken name, the index, cleaning up other names) stays on the main thread,
which records each file when it collects its batch, in the order the batches were handed
over.  What the main thread must not do while files are in flight (anything that could
touch their names or ids) it does after collecting every batch (see `Applier.handle`).

In Python the worker still needs the GIL back after each system call and waits for the main
thread's switch interval to get it, so the halves barely overlapped (measured: the agent
stayed at one core).  `georep._native` (built from ``native/georep_native.c``) writes a
whole batch with the GIL released, each file's digest checked there too (the main thread
only hands the data over); `write_small` below is its pure-Python twin and the reference,
used for files with xattrs (the rest of their batch stays native), where the extension is
not built (it needs xxHash's header, libxxhash-dev), or with ``GEOREP_NATIVE=0``.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from georep import accelerators
from georep.apply import fsops
from georep.model import Meta
from georep.protocol import messages as m
from georep.protocol.digest import ExtentDigest

#: the extension (None: not built, or GEOREP_NATIVE=0)
native = accelerators.extension

#: Batches handed over and not yet collected, at most: the reader waits beyond that, so the
#: memory held is bounded (a Blobs frame carries about one chunk, 1 MiB).
MAX_BATCHES = 8


@dataclass(slots=True)
class SmallJob:
    """One small file to write in staging and publish under ``parent_fd``/``entry.name``."""

    entry: m.EntryMsg
    new: bool
    parent_fd: int
    tmp: bytes
    file: m.SmallFile
    meta: Meta
    #: set by the worker: the file's inode, and whether it now stands at its name
    ino: int = 0
    published: bool = False
    #: set by the worker: why the file is not published (an OSError; anything else is a
    #: bug, raised again on the main thread)
    error: Exception | None = None

    def as_native(self, privileged: bool) -> tuple[object, ...]:
        """The job as `georep._native.write_small` takes it."""

        meta = self.meta
        return (self.tmp, self.parent_fd, self.entry.name, meta.mode, meta.uid, meta.gid, privileged,
                meta.mtime_ns, self.file.size, self.file.extents, self.file.digest)


class DigestMismatch(Exception):
    """The data of a small file does not match the digest the sender computed: nothing was written."""


def write_small(staging_fd: int, privileged: bool, job: SmallJob) -> None:
    """Write ``job``'s file in staging and publish it if its name is free (fills in the job).

    Runs on the worker thread; touches only ``job.tmp`` in staging and, by a rename that
    never replaces anything, the final name.  The temporary file is removed on any failure.
    """

    f = job.file
    digest = ExtentDigest()
    for off, data in f.extents:
        assert isinstance(off, int) and isinstance(data, bytes)  # checked by the decoder
        digest.update(off, data)
    if digest.finish(f.size) != f.digest:  # checked on the data as received, which is what gets written
        raise DigestMismatch()
    fd = fsops.create_staged_at(staging_fd, job.tmp, job.meta.mode)
    try:
        for off, data in f.extents:
            assert isinstance(off, int) and isinstance(data, bytes)  # checked by the decoder
            fsops.write_all_at(fd, data, off)
        st = fsops.seal_staged(fd, f.size, job.meta, privileged)
    except BaseException:
        os.close(fd)
        os.unlink(job.tmp, dir_fd=staging_fd)
        raise
    os.close(fd)
    job.ino = st.st_ino
    try:
        job.published = fsops.rename_noreplace_at(staging_fd, job.tmp, job.parent_fd, job.entry.name)
    except BaseException:
        os.unlink(job.tmp, dir_fd=staging_fd)
        raise


class StagedWrites:
    """A worker thread writing batches of `SmallJob` in order; the main thread collects them in order."""

    def __init__(self, staging_fd: int, privileged: bool) -> None:
        self._staging_fd = staging_fd
        self._privileged = privileged
        self._lock = threading.Condition()
        self._todo: collections.deque[list[SmallJob] | None] = collections.deque()
        self._done: collections.deque[list[SmallJob]] = collections.deque()
        #: batches handed over and not collected yet
        self._open = 0
        #: batches handed over, and collected, since the start (collected in that order)
        self.submitted = 0
        self.collected = 0
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Batches are handed over and not collected yet."""

        return self._open > 0

    def submit(self, batch: list[SmallJob]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="staged-writes", daemon=True)
            self._thread.start()
        with self._lock:
            self._todo.append(batch)
            self._open += 1
            self.submitted += 1
            self._lock.notify_all()

    @property
    def full(self) -> bool:
        return self._open >= MAX_BATCHES

    def collect(self, wait: bool) -> list[list[SmallJob]]:
        """The batches finished, oldest first; ``wait``: all of them, waiting for the worker."""

        return self._take_done(lambda: not wait or len(self._done) == self._open)

    def collect_some(self) -> list[list[SmallJob]]:
        """The batches finished, oldest first, waiting for the oldest if none is (at least one).

        Why: a reader with nothing to read answers what the worker finished and goes back
        to reading while the worker writes on.  Waiting for every batch instead held all
        their answers back until the last was written, and the worker then sat idle while
        they travelled and the sender's next files came in (py-spy, *small* over SSH: the
        reader spent a quarter of the copy in that wait, the worker a sixth idle).
        """

        return self._take_done(lambda: bool(self._done) or not self._open)

    def _take_done(self, ready: Callable[[], bool]) -> list[list[SmallJob]]:
        """Once ``ready()`` holds (under the lock), every finished batch, oldest first."""

        with self._lock:
            self._lock.wait_for(ready)
            out = list(self._done)
            self._done.clear()
            self._open -= len(out)
            self.collected += len(out)
        return out

    def collect_oldest(self) -> list[SmallJob]:
        """Wait for the oldest batch handed over (the one that makes room for the next)."""

        with self._lock:
            self._lock.wait_for(lambda: bool(self._done))
            self._open -= 1
            self.collected += 1
            return self._done.popleft()

    def close(self) -> None:
        """Let the worker finish what it has and end (their temporary files stay for the cleanup)."""

        if self._thread is None:
            return
        with self._lock:
            self._todo.append(None)
            self._lock.notify_all()
        self._thread.join()
        self._thread = None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._todo))
                batch = self._todo.popleft()
            if batch is None:
                return
            write_batch(self._staging_fd, self._privileged, batch)
            with self._lock:
                self._done.append(batch)
                self._lock.notify_all()


def write_batch(staging_fd: int, privileged: bool, batch: list[SmallJob]) -> None:
    """`write_small` for each job in order: natively where it can be, by the twin for files with xattrs.

    The batch is cut into runs of consecutive jobs of one kind, so a tree where some files
    carry user xattrs keeps the native path for the others, and the order of writes is the
    order of the batch.
    """

    for by_twin, run in itertools.groupby(batch, key=lambda job: native is None or bool(job.meta.xattrs)):
        (_write_by_twin if by_twin else _write_natively)(staging_fd, privileged, list(run))


def _write_natively(staging_fd: int, privileged: bool, run: list[SmallJob]) -> None:
    assert native is not None
    try:
        done = native.write_small(staging_fd, [job.as_native(privileged) for job in run])
    except Exception as exc:  # a malformed job: a bug, raised again on the main thread
        for job in run:
            job.error = exc
        return
    for job, (err, ino, published) in zip(run, done, strict=True):
        if err == -1:
            job.error = DigestMismatch()
        elif err:
            job.error = OSError(err, os.strerror(err))
        job.ino, job.published = ino, published


def _write_by_twin(staging_fd: int, privileged: bool, run: list[SmallJob]) -> None:
    for job in run:
        try:
            write_small(staging_fd, privileged, job)
        except Exception as exc:  # the main thread decides what each means
            job.error = exc

/*
 * georep._native: the agent's small-file writes, and the sender's small-file reads, without the GIL.
 *
 * The sender's half, read_small_frame, is described where it starts (below); this part is
 * about the agent's.
 *
 * Why this exists: on a first copy the agent is the slowest stage, and about half of its
 * time is the kernel's (create in staging, write, set times, rename).  georep.apply.writer
 * moves that half to a worker thread, but in Python the worker needs the GIL back after
 * every system call and waits for the main thread's switch interval each time, so the two
 * halves barely overlap.  Here a whole batch of files runs with the GIL released.
 *
 * The reference is the pure-Python twin, georep.apply.writer.write_small: this file does
 * exactly what it does for a file without xattrs (fsops.create_staged_at, the writes,
 * fsops.seal_staged, a rename that replaces nothing), in the same order, and
 * tests/apply/test_writer.py runs both on the same jobs and compares the results.
 *
 * write_small(staging_fd, jobs) -> [(errno, ino, published), ...]
 *   job: (tmp, parent_fd, name, mode, uid, gid, privileged, mtime_ns, size, extents, digest)
 *   extents: a list of [offset, bytes]; digest: what georep.protocol.digest.ExtentDigest
 *   gives for those extents and size (xxh3-128), checked before anything is created
 *   errno 0: written; published says whether it now stands at parent_fd/name (the name
 *   was free) or is still tmp in staging (the name is taken: the caller makes room).
 *   errno -1: the data does not match the digest: nothing was created.
 *   errno > 0: nothing was published and tmp is removed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* xxHash's own header (Debian: libxxhash-dev), inlined: the file digest is xxh3-128.  Without it
 * this extension is not built and the pure-Python twins do everything (pyproject: optional). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

typedef struct {
    const char *tmp;
    int parent_fd;
    const char *name;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    int privileged;
    long long mtime_ns;
    long long size;
    const char *digest; /* 16 bytes: xxh3-128 as georep.protocol.digest.ExtentDigest computes it */
    Py_ssize_t first_extent; /* into the extents arrays */
    Py_ssize_t n_extents;
    /* out */
    int err;
    unsigned long long ino;
    int published;
} job_t;

typedef struct {
    long long offset;
    const char *data;
    Py_ssize_t len;
} extent_t;

static int write_full(int fd, const char *data, Py_ssize_t len, long long offset) {
    while (len > 0) {
        ssize_t n = pwrite(fd, data, (size_t)len, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        data += n;
        len -= n;
        offset += n;
    }
    return 0;
}

static void le64(unsigned char *out, unsigned long long v) {
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (8 * i));
}

/* The digest of a file's data as georep.protocol.digest.ExtentDigest computes it: for each
 * extent its offset and length (little-endian, 8 bytes each) and its bytes, then the size. */
static void extent_digest(const extent_t *ext, Py_ssize_t n, long long size, unsigned char out[16]) {
    XXH3_state_t state;
    unsigned char head[16], tail[8];
    XXH3_128bits_reset(&state);
    for (Py_ssize_t i = 0; i < n; i++) {
        le64(head, (unsigned long long)ext[i].offset);
        le64(head + 8, (unsigned long long)ext[i].len);
        XXH3_128bits_update(&state, head, sizeof head);
        XXH3_128bits_update(&state, ext[i].data, (size_t)ext[i].len);
    }
    le64(tail, (unsigned long long)size);
    XXH3_128bits_update(&state, tail, sizeof tail);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(&state));
    memcpy(out, canon.digest, 16);
}

/* Whether the extents and the size give the digest the sender computed. */
static int digest_matches(const job_t *j, const extent_t *ext) {
    unsigned char found[16];
    extent_digest(ext, j->n_extents, j->size, found);
    return memcmp(found, j->digest, sizeof found) == 0;
}

/* One file, as georep.apply.writer.write_small does it (no xattrs). */
static void write_one(int staging_fd, job_t *j, const extent_t *ext) {
    if (!digest_matches(j, ext)) {
        j->err = -1; /* damaged in transit: nothing is created */
        return;
    }
    int fd = openat(staging_fd, j->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    (j->mode & 0777) | 0600);
    if (fd < 0) {
        j->err = errno;
        return;
    }
    int err = 0;
    struct stat st;
    for (Py_ssize_t i = 0; i < j->n_extents && !err; i++)
        err = write_full(fd, ext[i].data, ext[i].len, ext[i].offset);
    if (!err && fstat(fd, &st) != 0)
        err = errno;
    if (!err && st.st_size != j->size && ftruncate(fd, (off_t)j->size) != 0)
        err = errno;
    int chowned = 0;
    if (!err && j->privileged && (st.st_uid != j->uid || st.st_gid != j->gid)) {
        if (fchown(fd, j->uid, j->gid) != 0)
            err = errno;
        chowned = 1;
    }
    /* after chown: chown clears setuid/setgid */
    if (!err && (chowned || (st.st_mode & 07777) != j->mode) && fchmod(fd, j->mode) != 0)
        err = errno;
    if (!err) {
        struct timespec ts[2];
        ts[0].tv_sec = (time_t)(j->mtime_ns / 1000000000LL);
        ts[0].tv_nsec = (long)(j->mtime_ns % 1000000000LL);
        if (ts[0].tv_nsec < 0) { /* a time before 1970 */
            ts[0].tv_sec -= 1;
            ts[0].tv_nsec += 1000000000L;
        }
        ts[1] = ts[0];
        if (futimens(fd, ts) != 0)
            err = errno;
    }
    if (close(fd) != 0 && !err && errno != EINTR)
        err = errno;
    if (err) {
        unlinkat(staging_fd, j->tmp, 0);
        j->err = err;
        return;
    }
    j->ino = (unsigned long long)st.st_ino;
    if (syscall(SYS_renameat2, staging_fd, j->tmp, j->parent_fd, j->name, RENAME_NOREPLACE) == 0) {
        j->published = 1;
        return;
    }
    err = errno;
    /* taken, or no RENAME_NOREPLACE here: left in staging for the caller's general path */
    if (err == EEXIST || err == EINVAL || err == ENOSYS || err == EOPNOTSUPP)
        return;
    unlinkat(staging_fd, j->tmp, 0);
    j->err = err;
}

static int parse_job(PyObject *item, job_t *j) {
    PyObject *extents;
    unsigned int uid, gid;
    unsigned int mode;
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "a job is a tuple");
        return -1;
    }
    Py_ssize_t digest_len;
    if (!PyArg_ParseTuple(item, "yiyIIIpLLO!y#:job", &j->tmp, &j->parent_fd, &j->name, &mode, &uid, &gid,
                          &j->privileged, &j->mtime_ns, &j->size, &PyList_Type, &extents, &j->digest,
                          &digest_len))
        return -1;
    if (digest_len != 16) {
        PyErr_SetString(PyExc_ValueError, "a digest is 16 bytes");
        return -1;
    }
    j->mode = (mode_t)mode;
    j->uid = (uid_t)uid;
    j->gid = (gid_t)gid;
    j->n_extents = PyList_GET_SIZE(extents);
    j->err = 0;
    j->ino = 0;
    j->published = 0;
    return 0;
}

static PyObject *write_small(PyObject *self, PyObject *args) {
    int staging_fd;
    PyObject *jobs;
    (void)self;
    if (!PyArg_ParseTuple(args, "iO!:write_small", &staging_fd, &PyList_Type, &jobs))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(jobs);
    /* the list and its bytes stay referenced by the caller; hold our own reference anyway */
    Py_INCREF(jobs);
    job_t *js = PyMem_Calloc(n ? (size_t)n : 1, sizeof(job_t));
    Py_ssize_t total_ext = 0;
    PyObject *result = NULL;
    extent_t *ext = NULL;
    if (js == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_job(PyList_GET_ITEM(jobs, i), &js[i]) != 0)
            goto done;
        js[i].first_extent = total_ext;
        total_ext += js[i].n_extents;
    }
    ext = PyMem_Calloc(total_ext ? (size_t)total_ext : 1, sizeof(extent_t));
    if (ext == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *list = PyTuple_GET_ITEM(PyList_GET_ITEM(jobs, i), 9);
        long long next = 0;
        for (Py_ssize_t k = 0; k < js[i].n_extents; k++) {
            PyObject *pair = PyList_GET_ITEM(list, k);
            PyObject *off, *data;
            if ((!PyList_Check(pair) && !PyTuple_Check(pair)) || PySequence_Fast_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "an extent is [offset, bytes]");
                goto done;
            }
            off = PySequence_Fast_GET_ITEM(pair, 0);
            data = PySequence_Fast_GET_ITEM(pair, 1);
            if (!PyLong_Check(off) || !PyBytes_Check(data)) {
                PyErr_SetString(PyExc_TypeError, "an extent is [offset, bytes]");
                goto done;
            }
            extent_t *e = &ext[js[i].first_extent + k];
            e->offset = PyLong_AsLongLong(off);
            if (e->offset == -1 && PyErr_Occurred())
                goto done;
            if (e->offset < next) {
                PyErr_SetString(PyExc_ValueError, "extents must not overlap or go backwards");
                goto done;
            }
            e->data = PyBytes_AS_STRING(data);
            e->len = PyBytes_GET_SIZE(data);
            next = e->offset + e->len;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        write_one(staging_fd, &js[i], &ext[js[i].first_extent]);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(iKO)", js[i].err, js[i].ino, js[i].published ? Py_True : Py_False);
        if (t == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, t);
    }
done:
    PyMem_Free(ext);
    PyMem_Free(js);
    Py_DECREF(jobs);
    return result;
}

/* The statuses of georep.transport.filedata.read_small_files_py, in its order. */
enum { RS_READ = 0, RS_OPEN_FAILED = 1, RS_READ_FAILED = 2, RS_NOT_SMALL = 3, RS_NOT_REGULAR = 4 };

/* At most this many paths per call: every one may hold an open fd between the phases. */
#define RS_MAX_PATHS 1024

typedef struct {
    const char *path;
    int fd;
    int status;
    int err;
    long long size;
    long long mtime_ns;
    Py_ssize_t got;
    int stable;
    unsigned char digest[16];
} rs_t;

static long long mtime_of(const struct stat *st) {
    return (long long)st->st_mtim.tv_sec * 1000000000LL + (long long)st->st_mtim.tv_nsec;
}

/* Phase 1: open and look; only a dense regular file within the limit stays open. */
static void rs_open(rs_t *r, long long limit) {
    struct stat st;
    r->fd = open(r->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (r->fd < 0) {
        r->status = RS_OPEN_FAILED;
        r->err = errno;
        return;
    }
    if (fstat(r->fd, &st) != 0) {
        r->status = RS_READ_FAILED;
        r->err = errno;
    } else if (!S_ISREG(st.st_mode)) {
        r->status = RS_NOT_REGULAR;
    } else if ((long long)st.st_size > limit || (long long)st.st_blocks * 512 < (long long)st.st_size) {
        r->status = RS_NOT_SMALL; /* large, or with holes: the caller's general path */
    } else {
        r->status = RS_READ;
        r->size = (long long)st.st_size;
        r->mtime_ns = mtime_of(&st);
        return;
    }
    close(r->fd);
    r->fd = -1;
}

/* ---- read_small_frame: small files read straight into one Blobs frame ----------------
 *
 * read_small_frame(items, limit, budget, kind) -> (frame, found) | None
 *   item: (path, seq, listed_size, listed_mtime_ns, publish_mtime_ns)
 *   frame: one whole frame (4-byte big-endian length, then msgpack [kind, [SmallFile, ...]])
 *     holding every file found READ, in order; b"" if there is none
 *   found: per item (status, errno, stable, carried, size, mtime_ns): a status of
 *     georep.transport.filedata.read_small_files_py, or RF_LATER (it did not fit: `budget` data
 *     bytes were packed before it; not opened again); for a file in the frame, the bytes it
 *     carries, and the size and mtime its SmallFile gives
 *   None: a read failed after its file was opened; the caller takes its twin's path.
 *
 * The reference is georep.transport.filedata.read_small_frame_py (read_small_files_py, then
 * georep.protocol.framing.encode of the Blobs message): the same bytes, which
 * tests/transport/test_filedata.py checks.  Why: packing each file's bytes into a msgpack
 * buffer and then into a frame copied all data twice more, and building a SmallFile per
 * file cost more than its read (20,000 small files: ~80 ms of the sender's CPU).  Here each
 * file is read once, into its place in the frame.
 */

enum { RF_LATER = 5 };

/* msgpack as msgpack-python's packer writes it (the smallest form). */
static char *mp_uint(char *p, unsigned long long v) {
    if (v < 0x80) {
        *p++ = (char)v;
    } else if (v <= 0xff) {
        *p++ = (char)0xcc;
        *p++ = (char)v;
    } else if (v <= 0xffff) {
        *p++ = (char)0xcd;
        for (int i = 1; i >= 0; i--)
            *p++ = (char)(v >> (8 * i));
    } else if (v <= 0xffffffffULL) {
        *p++ = (char)0xce;
        for (int i = 3; i >= 0; i--)
            *p++ = (char)(v >> (8 * i));
    } else {
        *p++ = (char)0xcf;
        for (int i = 7; i >= 0; i--)
            *p++ = (char)(v >> (8 * i));
    }
    return p;
}

static char *mp_int(char *p, long long v) {
    if (v >= 0)
        return mp_uint(p, (unsigned long long)v);
    unsigned long long u = (unsigned long long)v;
    if (v >= -32) {
        *p++ = (char)(u & 0xff);
    } else if (v >= -128) {
        *p++ = (char)0xd0;
        *p++ = (char)(u & 0xff);
    } else if (v >= -32768) {
        *p++ = (char)0xd1;
        for (int i = 1; i >= 0; i--)
            *p++ = (char)(u >> (8 * i));
    } else if (v >= -2147483648LL) {
        *p++ = (char)0xd2;
        for (int i = 3; i >= 0; i--)
            *p++ = (char)(u >> (8 * i));
    } else {
        *p++ = (char)0xd3;
        for (int i = 7; i >= 0; i--)
            *p++ = (char)(u >> (8 * i));
    }
    return p;
}

static Py_ssize_t mp_bin_head_len(Py_ssize_t n) { return n < 0x100 ? 2 : n < 0x10000 ? 3 : 5; }

static char *mp_bin_head(char *p, Py_ssize_t n) {
    if (n < 0x100) {
        *p++ = (char)0xc4;
        *p++ = (char)n;
    } else if (n < 0x10000) {
        *p++ = (char)0xc5;
        *p++ = (char)(n >> 8);
        *p++ = (char)n;
    } else {
        *p++ = (char)0xc6;
        for (int i = 3; i >= 0; i--)
            *p++ = (char)((unsigned long long)n >> (8 * i));
    }
    return p;
}

static char *mp_array_head(char *p, Py_ssize_t n) {
    if (n < 16) {
        *p++ = (char)(0x90 | n);
    } else {
        *p++ = (char)0xdc; /* n <= RS_MAX_PATHS */
        *p++ = (char)(n >> 8);
        *p++ = (char)n;
    }
    return p;
}

/* The most one SmallFile's envelope takes around its data. */
#define RF_ENVELOPE (1 + 9 + 9 + 3 + 5 + 2 + 16 + 9)

typedef struct {
    rs_t r;
    long long seq, listed_size, listed_mtime, publish_mtime;
    int in_frame;
    long long published; /* the mtime the SmallFile carries */
} rf_t;

/* Phase 3 for one file: its SmallFile at `p`, data read in place; the end, or NULL if a read failed. */
static char *rf_write(rf_t *f, char *p) {
    rs_t *r = &f->r;
    *p++ = (char)0x95;
    p = mp_int(p, f->seq);
    p = mp_int(p, r->size);
    char *data = NULL;
    if (r->size > 0) {
        *p++ = (char)0x91;
        *p++ = (char)0x92;
        *p++ = 0; /* offset 0 */
        data = mp_bin_head(p, (Py_ssize_t)r->size);
    } else {
        *p++ = (char)0x90; /* no extent */
    }
    Py_ssize_t got = 0;
    while (got < r->size) {
        ssize_t n = pread(r->fd, data + got, (size_t)(r->size - got), (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (n == 0)
            break; /* it shrank: what was read is sent, and it is reported unstable */
        got += n;
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0)
        return NULL;
    close(r->fd);
    r->fd = -1;
    r->got = got;
    r->stable = (long long)st.st_size == r->size && mtime_of(&st) == r->mtime_ns;
    if (r->size > 0) {
        if (got < r->size && mp_bin_head_len(got) != mp_bin_head_len((Py_ssize_t)r->size)) {
            char *moved = p + mp_bin_head_len(got);
            memmove(moved, data, (size_t)got);
            data = moved;
        }
        mp_bin_head(p, got);
        p = data + got;
    }
    extent_t whole = {0, data, got}; /* one extent at 0; none for an empty file */
    extent_digest(&whole, r->size > 0 ? 1 : 0, r->size, r->digest);
    *p++ = (char)0xc4;
    *p++ = 16;
    memcpy(p, r->digest, 16);
    p += 16;
    f->published = r->size == f->listed_size && r->mtime_ns == f->listed_mtime ? f->publish_mtime : r->mtime_ns;
    return mp_int(p, f->published);
}

static PyObject *read_small_frame(PyObject *self, PyObject *args) {
    PyObject *items;
    long long limit, budget;
    int kind;
    (void)self;
    if (!PyArg_ParseTuple(args, "OLLi", &items, &limit, &budget, &kind))
        return NULL;
    if (kind < 0 || kind > 0x7f) {
        PyErr_SetString(PyExc_ValueError, "a message kind is a positive fixint");
        return NULL;
    }
    items = PySequence_Fast(items, "items must be a sequence");
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    PyObject *result = NULL, *frame = NULL, *found = NULL;
    rf_t *fs = NULL;
    int failed = 0;
    if (n > RS_MAX_PATHS) {
        PyErr_Format(PyExc_ValueError, "at most %d items per call", RS_MAX_PATHS);
        goto done;
    }
    fs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(rf_t));
    if (fs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        fs[i].r.fd = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *path;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "OLLLL:item", &path, &fs[i].seq,
                              &fs[i].listed_size, &fs[i].listed_mtime, &fs[i].publish_mtime))
            goto done;
        if (!PyBytes_Check(path) || (Py_ssize_t)strlen(PyBytes_AS_STRING(path)) != PyBytes_GET_SIZE(path)) {
            PyErr_SetString(PyExc_TypeError, "a path is bytes without NUL");
            goto done;
        }
        fs[i].r.path = PyBytes_AS_STRING(path);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        rs_open(&fs[i].r, limit);
    Py_END_ALLOW_THREADS
    /* which files go in: while less than `budget` bytes were packed before them */
    long long packed = 0;
    Py_ssize_t count = 0, room = 4 + 1 + 1 + 3;
    for (Py_ssize_t i = 0; i < n; i++) {
        rs_t *r = &fs[i].r;
        if (r->status != RS_READ)
            continue;
        if (packed >= budget) {
            r->status = RF_LATER;
            close(r->fd);
            r->fd = -1;
            continue;
        }
        fs[i].in_frame = 1;
        packed += r->size;
        room += RF_ENVELOPE + (Py_ssize_t)r->size;
        count++;
    }
    if (count) {
        frame = PyBytes_FromStringAndSize(NULL, room);
        if (frame == NULL)
            goto done;
    }
    char *start = count ? PyBytes_AS_STRING(frame) : NULL, *end = start;
    if (count) {
        Py_BEGIN_ALLOW_THREADS
        char *p = start + 4;
        *p++ = (char)0x92;
        *p++ = (char)kind;
        p = mp_array_head(p, count);
        for (Py_ssize_t i = 0; i < n && p != NULL; i++)
            if (fs[i].in_frame)
                p = rf_write(&fs[i], p);
        if (p == NULL) {
            failed = 1;
        } else {
            unsigned long long body = (unsigned long long)(p - start - 4);
            for (int k = 0; k < 4; k++)
                start[k] = (char)(body >> (8 * (3 - k)));
            end = p;
        }
        Py_END_ALLOW_THREADS
    }
    if (failed) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    if (!count) {
        frame = PyBytes_FromStringAndSize("", 0);
        if (frame == NULL)
            goto done;
    } else if (_PyBytes_Resize(&frame, end - start) != 0) {
        frame = NULL; /* _PyBytes_Resize freed it */
        goto done;
    }
    found = PyList_New(n);
    if (found == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        rs_t *r = &fs[i].r;
        int read = r->status == RS_READ;
        PyObject *t = Py_BuildValue("(iiOnLL)", r->status, read ? 0 : r->err, read && r->stable ? Py_True : Py_False,
                                    read ? r->got : (Py_ssize_t)0, read ? r->size : 0LL,
                                    read ? fs[i].published : 0LL);
        if (t == NULL)
            goto done;
        PyList_SET_ITEM(found, i, t);
    }
    result = PyTuple_Pack(2, frame, found);
done:
    if (fs != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (fs[i].r.fd >= 0)
                close(fs[i].r.fd);
        PyMem_Free(fs);
    }
    Py_XDECREF(frame);
    Py_XDECREF(found);
    Py_DECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"write_small", write_small, METH_VARARGS,
     "write_small(staging_fd, jobs) -> [(errno, ino, published)]: small files checked against their "
     "digest, written and published without the GIL (see georep.apply.writer.write_small, the reference)."},
    {"read_small_frame", read_small_frame, METH_VARARGS,
     "read_small_frame(items, limit, budget, kind) -> (frame, found) | None: small source files read into "
     "one Blobs frame without the GIL (see georep.transport.filedata.read_small_frame_py, the reference)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "georep._native", "Accelerators with pure-Python twins (native/).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

/*
 * georep._native: the agent's small-file writes without the GIL.
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

/* The statuses of georep.transport.filedata.read_small_files, in its order. */
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
    PyObject *data; /* a bytes object of `size` bytes, filled without the GIL */
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

/* Phase 3: read, digest (as georep.protocol.digest.ExtentDigest: one extent, then the size),
 * look again, close. */
static void rs_read(rs_t *r) {
    char *buf = PyBytes_AS_STRING(r->data);
    Py_ssize_t got = 0;
    while (got < r->size) {
        ssize_t n = pread(r->fd, buf + got, (size_t)(r->size - got), (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r->status = RS_READ_FAILED;
            r->err = errno;
            break;
        }
        if (n == 0)
            break; /* it shrank: what was read is sent, and it is reported unstable */
        got += n;
    }
    struct stat st;
    if (r->status == RS_READ && fstat(r->fd, &st) != 0) {
        r->status = RS_READ_FAILED;
        r->err = errno;
    }
    close(r->fd);
    r->fd = -1;
    if (r->status != RS_READ)
        return;
    r->got = got;
    r->stable = (long long)st.st_size == r->size && mtime_of(&st) == r->mtime_ns;
    extent_t whole = {0, buf, got}; /* one extent at 0; none for an empty file */
    extent_digest(&whole, r->size > 0 ? 1 : 0, r->size, r->digest);
}

static PyObject *read_small_files(PyObject *self, PyObject *args) {
    PyObject *paths;
    long long limit;
    (void)self;
    if (!PyArg_ParseTuple(args, "OL", &paths, &limit))
        return NULL;
    paths = PySequence_Fast(paths, "paths must be a sequence");
    if (paths == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(paths);
    PyObject *result = NULL;
    rs_t *rs = NULL;
    if (n > RS_MAX_PATHS) {
        PyErr_Format(PyExc_ValueError, "at most %d paths per call", RS_MAX_PATHS);
        goto done;
    }
    rs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(rs_t));
    if (rs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(paths, i);
        if (!PyBytes_Check(p) || (Py_ssize_t)strlen(PyBytes_AS_STRING(p)) != PyBytes_GET_SIZE(p)) {
            PyErr_SetString(PyExc_TypeError, "a path is bytes without NUL");
            goto done;
        }
        rs[i].path = PyBytes_AS_STRING(p);
        rs[i].fd = -1;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        rs_open(&rs[i], limit);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rs[i].status != RS_READ)
            continue;
        rs[i].data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rs[i].size);
        if (rs[i].data == NULL)
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        if (rs[i].status == RS_READ)
            rs_read(&rs[i]);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        rs_t *r = &rs[i];
        PyObject *t;
        if (r->status == RS_READ) {
            if (r->got < r->size && _PyBytes_Resize(&r->data, r->got) != 0) {
                r->data = NULL; /* _PyBytes_Resize freed it */
                Py_CLEAR(result);
                goto done;
            }
            t = Py_BuildValue("(iiLLOy#O)", r->status, 0, r->size, r->mtime_ns, r->data, (const char *)r->digest,
                              (Py_ssize_t)16, r->stable ? Py_True : Py_False);
        } else {
            t = Py_BuildValue("(iiLLy#y#O)", r->status, r->err, 0LL, 0LL, "", (Py_ssize_t)0, "", (Py_ssize_t)0,
                              Py_False);
        }
        if (t == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, t);
    }
done:
    if (rs != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (rs[i].fd >= 0)
                close(rs[i].fd);
            Py_XDECREF(rs[i].data);
        }
        PyMem_Free(rs);
    }
    Py_DECREF(paths);
    return result;
}

static PyMethodDef methods[] = {
    {"write_small", write_small, METH_VARARGS,
     "write_small(staging_fd, jobs) -> [(errno, ino, published)]: small files checked against their "
     "digest, written and published without the GIL (see georep.apply.writer.write_small, the reference)."},
    {"read_small_files", read_small_files, METH_VARARGS,
     "read_small_files(paths, limit) -> [(status, errno, size, mtime_ns, data, digest, stable)]: small "
     "source files read and digested without the GIL (see georep.transport.filedata.read_small_files, "
     "the reference)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "georep._native", "Accelerators with pure-Python twins (native/).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

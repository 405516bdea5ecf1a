/*
 * outfile.c - crash-safe output files.
 *
 * Bytes go to a temporary file created beside the target (same directory,
 * so same filesystem), which is fsync'ed, closed and renamed over the
 * target; then the directory is fsync'ed so the rename itself is durable.
 * Until the rename, the target is untouched: a crash, a full disk or any
 * error leaves the previous file as it was, and the temporary is removed.
 *
 * A target that is a symbolic link is written through it, as cp does: the
 * temporary goes beside the file the link names, which is replaced. An
 * existing target keeps its permission bits.
 *
 * Temporaries in progress are listed where ckpt_remove_temporaries (a
 * signal handler's call) finds them. A process killed outright (SIGKILL,
 * a crash) leaves its temporary behind; the next output opened in that
 * directory removes the temporaries of processes that no longer exist.
 */
#include "base.h"

#include <dirent.h>
#include <errno.h>
#include <libdeflate.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static ckpt_status io_fail(ckpt_error *err, const char *what, const char *path, int e)
{
    return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "%s %s: %s", what, path,
                      strerror(e));
}

/* The directory part of path ("." when none), malloc'd. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

/* ---- temporaries in progress ---------------------------------------------- */

/* Slots a signal handler reads without a lock: a path is complete before
 * its slot points at it, and a slot is emptied before its path is freed. */
#define LIVE_SLOTS 64
static char *volatile live_tmp[LIVE_SLOTS];
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

static void live_add(char *tmp_path)
{
    pthread_mutex_lock(&live_lock);
    for (int i = 0; i < LIVE_SLOTS; i++) {
        if (!live_tmp[i]) {
            live_tmp[i] = tmp_path;
            break;
        }
    } /* all taken: the next open in the directory cleans up after a kill */
    pthread_mutex_unlock(&live_lock);
}

static void live_remove(const char *tmp_path)
{
    if (!tmp_path)
        return;
    pthread_mutex_lock(&live_lock);
    for (int i = 0; i < LIVE_SLOTS; i++)
        if (live_tmp[i] == tmp_path)
            live_tmp[i] = NULL;
    pthread_mutex_unlock(&live_lock);
}

void ckpt_remove_temporaries(void)
{
    int e = errno;
    for (int i = 0; i < LIVE_SLOTS; i++) {
        char *p = live_tmp[i];
        if (p)
            unlink(p);
    }
    errno = e;
}

/* Whether name is ".NAME.tmp-PID-HEX" (the temporaries made below); *pid
 * gets PID. */
static bool tmp_name_pid(const char *name, long *pid)
{
    if (name[0] != '.')
        return false;
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp-"); p; p = strstr(p + 1, ".tmp-"))
        t = p;
    if (!t || t == name)
        return false;
    const char *p = t + 5;
    long v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++)
        v = v * 10 + (*p - '0');
    if (!digits || *p++ != '-')
        return false;
    int hex = 0;
    for (; (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'); p++)
        hex++;
    if (*p || hex < 1 || hex > 7 || v <= 0)
        return false;
    *pid = v;
    return true;
}

/* Removes the temporaries in dir whose process is gone (best effort). */
static void remove_stale_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    long self = (long)getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long pid;
        if (!tmp_name_pid(e->d_name, &pid) || pid == self || (long)(pid_t)pid != pid)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive, or not ours to ask about */
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

/* The file path names after following symbolic links (as many as the
 * system follows), malloc'd; a dangling link gives the path it points at. */
static char *resolve_links(const char *path)
{
    char *cur = strdup(path);
    for (int hops = 0; cur && hops < 40; hops++) {
        struct stat st;
        if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode))
            return cur;
        char target[4096];
        ssize_t n = readlink(cur, target, sizeof(target) - 1);
        if (n <= 0)
            return cur;
        target[n] = 0;
        char *next;
        if (target[0] == '/' || !strchr(cur, '/')) {
            next = strdup(target);
        } else {
            size_t dl = (size_t)(strrchr(cur, '/') - cur) + 1;
            next = malloc(dl + (size_t)n + 1);
            if (next) {
                memcpy(next, cur, dl);
                memcpy(next + dl, target, (size_t)n + 1);
            }
        }
        free(cur);
        cur = next;
    }
    return cur;
}

ckpt_status ckpt__out_open(ckpt__out *o, const char *path, unsigned flags, ckpt_error *err)
{
    memset(o, 0, sizeof(*o));
    o->fd = -1;
    if (!path || !*path)
        return CKPT_INVALID_ARG(err, "empty output path");
    size_t len = strlen(path);
    if (path[len - 1] == '/')
        return CKPT_INVALID_ARG(err, "output path %s names a directory", path);
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (exists && !S_ISREG(st.st_mode))
        return CKPT_INVALID_ARG(err, "output path %s exists and is not a regular file", path);
    o->path = resolve_links(path);
    if (!o->path)
        return ckpt__nomem(err);
    path = o->path;
    len = strlen(path);
    char *dir = dir_of(path);
    if (dir)
        remove_stale_temporaries(dir);
    free(dir);
    /* ".NAME.tmp-PID-N" beside the target: hidden, and recognisable by
     * whoever cleans up after a crash. */
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
    size_t cap = len + 64;
    o->tmp_path = malloc(cap);
    if (!o->path || !o->tmp_path) {
        ckpt__out_abort(o);
        return ckpt__nomem(err);
    }
    unsigned long salt = (unsigned long)time(NULL) ^ ((unsigned long)(uintptr_t)o << 7);
    for (int attempt = 0; attempt < 100; attempt++) {
        snprintf(o->tmp_path, cap, "%.*s.%s.tmp-%ld-%lx", (int)dir_len, path, path + dir_len,
                 (long)getpid(), (salt + (unsigned long)attempt * 0x9e3779b9ul) & 0xffffffful);
        o->fd = open(o->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (o->fd >= 0 || errno != EEXIST)
            break;
    }
    if (o->fd < 0) {
        int e = errno;
        free(o->tmp_path);
        o->tmp_path = NULL; /* nothing to remove */
        ckpt_status fail = io_fail(err, "cannot create a temporary file beside", path, e);
        ckpt__out_abort(o);
        return fail;
    }
    live_add(o->tmp_path);
    if (exists && fchmod(o->fd, st.st_mode & 07777) != 0) {
        ckpt_status fail = io_fail(err, "cannot set the mode of the temporary file beside", path,
                                   errno);
        ckpt__out_abort(o);
        return fail;
    }
    o->flags = flags;
    return CKPT_OK;
}

/* write(2) until all n bytes are in, retrying short writes and EINTR. */
static ckpt_status write_fully(ckpt__out *o, const uint8_t *b, size_t n, ckpt_error *err)
{
    while (n) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(o->fd, b, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return io_fail(err, "cannot write", o->path, errno);
        }
        if (w == 0)
            return io_fail(err, "cannot write", o->path, EIO);
        b += w;
        n -= (size_t)w;
    }
    return CKPT_OK;
}

ckpt_status ckpt__out_write(ckpt__out *o, const void *p, size_t n, ckpt_error *err)
{
    if (o->flags & CKPT__OUT_CRC)
        o->crc = libdeflate_crc32(o->crc, p, n);
    o->size += n;
    return write_fully(o, p, n, err);
}

ckpt_status ckpt__out_write_crc_later(ckpt__out *o, const void *p, size_t n, ckpt_error *err)
{
    o->size += n;
    return write_fully(o, p, n, err);
}

/* ---- bytes that pass through unchanged ------------------------------------ */

/* Bytes a writer takes unchanged from an input file are read with pread into
 * a buffer that stays in the CPU's caches and written from there, as cat
 * does, rather than written from the input's map: first touches of a map
 * cost a page fault per few pages, more than the extra copy (1 GiB: 0.33 s
 * against 0.50 s here). copy_file_range was slower still: ext4 splices it a
 * page at a time. CRCs are taken from the same cached buffer. */
#define COPY_BUF_SIZE ((size_t)256 << 10)

/*
 * Read-ahead of the input a writer copies from a cold file: the device is
 * asked for the window of CKPT__AHEAD_WINDOW bytes past each piece, in
 * chunks of AHEAD_CHUNK, each chunk once (a bit per chunk): a writer that
 * takes its records out of file order (safetensors writes in name order)
 * or from two places in turn asks for nothing twice, and advice on pages
 * already cached, which the kernel still walks, is not repeated.
 */
#define AHEAD_CHUNK ((uint64_t)8 << 20)

struct ckpt__out_ahead {
    int fd;
    uint64_t size;
    uint8_t *asked; /* a bit per chunk of the input */
};

static void read_ahead(ckpt__out *o, int src_fd, uint64_t off)
{
    struct ckpt__out_ahead *h = o->ahead;
    if (!h) {
        h = o->ahead = calloc(1, sizeof(*h));
        if (!h)
            return;
        h->fd = -1;
    }
    if (h->fd != src_fd) {
        struct stat sb;
        free(h->asked);
        h->asked = NULL;
        h->fd = -1;
        if (fstat(src_fd, &sb) != 0 || sb.st_size <= 0)
            return;
        uint64_t chunks = ((uint64_t)sb.st_size + AHEAD_CHUNK - 1) / AHEAD_CHUNK;
        if (chunks / 8 + 1 > SIZE_MAX || !(h->asked = calloc((size_t)(chunks / 8 + 1), 1)))
            return;
        h->fd = src_fd;
        h->size = (uint64_t)sb.st_size;
    }
    if (off >= h->size)
        return;
    uint64_t end = h->size - off > CKPT__AHEAD_WINDOW ? off + CKPT__AHEAD_WINDOW : h->size;
    for (uint64_t c = off / AHEAD_CHUNK; c * AHEAD_CHUNK < end; c++) {
        if (h->asked[c / 8] & (1u << (c % 8)))
            continue;
        h->asked[c / 8] |= (uint8_t)(1u << (c % 8));
        (void)posix_fadvise(src_fd, (off_t)(c * AHEAD_CHUNK), (off_t)AHEAD_CHUNK,
                            POSIX_FADV_WILLNEED);
    }
}

static void ahead_free(ckpt__out *o)
{
    if (o->ahead)
        free(o->ahead->asked);
    free(o->ahead);
    o->ahead = NULL;
}

ckpt_status ckpt__out_read_piece(ckpt__out *o, int src_fd, uint64_t off, uint8_t *buf,
                                 size_t want, size_t *got, ckpt_error *err)
{
    *got = 0;
    read_ahead(o, src_fd, off);
    for (;;) {
        ssize_t r = pread(src_fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) /* the map past the new end would fault (SIGBUS) */
            return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                              "the input file shrank while being copied to %s", o->path);
        if (r > 0)
            *got = (size_t)r;
        return CKPT_OK; /* r < 0, a read error: *got 0, the rest from the map */
    }
}

/* The reader's read-ahead: on its thread, the only user of o->ahead while
 * it reads. */
static void reader_hook(void *user, uint64_t off)
{
    ckpt__out *o = user;
    read_ahead(o, ckpt__reader_fd(o->reader), off);
}

static void reader_free(ckpt__out *o)
{
    ckpt__reader_free(o->reader);
    o->reader = NULL;
}

ckpt_status ckpt__out_read_through(ckpt__out *o, int src_fd, uint64_t src_off, size_t n,
                                   ckpt__out_sink sink, void *user, size_t *done,
                                   ckpt_error *err)
{
    *done = 0;
    if (src_fd < 0 || n < CKPT__READER_MIN || o->reader_failed)
        return CKPT_OK;
    if (o->reader && ckpt__reader_fd(o->reader) != src_fd)
        reader_free(o);
    if (!o->reader &&
        !(o->reader = ckpt__reader_new(src_fd, CKPT__READER_PIECE, reader_hook, o))) {
        o->reader_failed = true;
        return CKPT_OK;
    }
    ckpt__reader_start(o->reader, src_off, n);
    while (*done < n) {
        const uint8_t *p;
        size_t got;
        int code = ckpt__reader_next(o->reader, &p, &got);
        if (got) {
            CKPT_RETURN_IF_ERROR(sink(user, p, got, err));
            *done += got;
        }
        if (code == ENODATA) /* the map past the new end would fault (SIGBUS) */
            return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                              "the input file shrank while being copied to %s", o->path);
        if (code)
            return CKPT_OK; /* a read error: the rest from the map */
    }
    return CKPT_OK;
}

typedef struct copy_sink {
    ckpt__out *o;
    uint32_t *crc;
} copy_sink;

static ckpt_status copy_piece(void *user, const uint8_t *p, size_t n, ckpt_error *err)
{
    copy_sink *c = user;
    if (c->crc)
        *c->crc = (uint32_t)libdeflate_crc32(*c->crc, p, n);
    return ckpt__out_write(c->o, p, n, err);
}

ckpt_status ckpt__out_copy(ckpt__out *o, int src_fd, uint64_t src_off, const void *p, size_t n,
                           uint32_t *crc, ckpt_error *err)
{
    const uint8_t *src = p;
    size_t done = 0;
    copy_sink cs = {o, crc};
    CKPT_RETURN_IF_ERROR(ckpt__out_read_through(o, src_fd, src_off, n, copy_piece, &cs, &done,
                                                err));
    if (done == n)
        return CKPT_OK;
    if (done)
        src_fd = -1; /* a read failed: the rest from the map */
    if (src_fd >= 0 && !o->copy_buf)
        o->copy_buf = malloc(COPY_BUF_SIZE); /* NULL: write from p below */
    while (src_fd >= 0 && o->copy_buf && done < n) {
        size_t want = n - done < COPY_BUF_SIZE ? n - done : COPY_BUF_SIZE, r;
        CKPT_RETURN_IF_ERROR(
            ckpt__out_read_piece(o, src_fd, src_off + done, o->copy_buf, want, &r, err));
        if (r == 0)
            break;
        CKPT_RETURN_IF_ERROR(copy_piece(&cs, o->copy_buf, r, err));
        done += r;
    }
    return done < n ? copy_piece(&cs, src + done, n - done, err) : CKPT_OK;
}

ckpt_status ckpt__sync_dir_of(const char *path, ckpt_error *err)
{
    char *dir = dir_of(path);
    if (!dir)
        return ckpt__nomem(err);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ckpt_status st = CKPT_OK;
    if (fd < 0) {
        st = io_fail(err, "cannot open directory", dir, errno);
    } else {
        /* Some filesystems cannot sync directories (EINVAL): nothing to do. */
        if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
            st = io_fail(err, "cannot sync directory", dir, errno);
        close(fd);
    }
    free(dir);
    return st;
}

ckpt_status ckpt__out_commit(ckpt__out *o, ckpt_error *err)
{
    free(o->copy_buf);
    o->copy_buf = NULL;
    reader_free(o); /* before the read-ahead its thread uses */
    ahead_free(o);
    ckpt_status st = CKPT_OK;
    bool sync = !(o->flags & CKPT_SAVE_NO_FSYNC);
    if (sync && fsync(o->fd) != 0)
        st = io_fail(err, "cannot sync", o->path, errno);
    if (st == CKPT_OK) {
        int fd = o->fd;
        o->fd = -1;
        /* close reports delayed write errors on some filesystems (NFS) */
        if (close(fd) != 0)
            st = io_fail(err, "cannot write", o->path, errno);
    }
    if (st == CKPT_OK && (o->flags & CKPT__OUT_STAGE))
        return CKPT_OK; /* the caller publishes it: ckpt__out_stage */
    if (st == CKPT_OK && rename(o->tmp_path, o->path) != 0)
        st = io_fail(err, "cannot rename the temporary file over", o->path, errno);
    if (st != CKPT_OK) {
        ckpt__out_abort(o);
        return st;
    }
    live_remove(o->tmp_path);
    free(o->tmp_path);
    o->tmp_path = NULL;
    if (sync)
        st = ckpt__sync_dir_of(o->path, err);
    free(o->path);
    o->path = NULL;
    return st;
}

void ckpt__out_abort(ckpt__out *o)
{
    if (!o)
        return;
    if (o->fd >= 0)
        close(o->fd);
    o->fd = -1;
    free(o->copy_buf);
    o->copy_buf = NULL;
    reader_free(o); /* before the read-ahead its thread uses */
    ahead_free(o);
    if (o->tmp_path)
        unlink(o->tmp_path);
    live_remove(o->tmp_path);
    free(o->tmp_path);
    free(o->path);
    o->tmp_path = NULL;
    o->path = NULL;
}

void ckpt__out_stage(ckpt__out *o, ckpt__staged *stage)
{
    stage->path = o->path;
    stage->tmp_path = o->tmp_path;
    stage->size = o->size;
    stage->crc = o->crc;
    o->path = o->tmp_path = NULL;
}

ckpt_status ckpt__staged_publish(ckpt__staged *stage, ckpt_error *err)
{
    if (rename(stage->tmp_path, stage->path) != 0) {
        int e = errno;
        ckpt_status st = io_fail(err, "cannot rename the temporary file over", stage->path, e);
        ckpt__staged_discard(stage);
        return st;
    }
    live_remove(stage->tmp_path);
    free(stage->tmp_path);
    stage->tmp_path = NULL;
    return CKPT_OK;
}

void ckpt__staged_discard(ckpt__staged *stage)
{
    if (!stage)
        return;
    if (stage->tmp_path)
        unlink(stage->tmp_path);
    live_remove(stage->tmp_path);
    free(stage->tmp_path);
    free(stage->path);
    stage->tmp_path = stage->path = NULL;
}

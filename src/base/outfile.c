/*
 * outfile.c - crash-safe output files.
 *
 * Bytes go to a temporary file created beside the target (same directory,
 * so same filesystem), which is fsync'ed, closed and renamed over the
 * target; then the directory is fsync'ed so the rename itself is durable.
 * Until the rename, the target is untouched: a crash, a full disk or any
 * error leaves the previous file as it was, and the temporary is removed.
 */
#include "base.h"

#include <errno.h>
#include <libdeflate.h>
#include <fcntl.h>
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
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return CKPT_INVALID_ARG(err, "output path %s exists and is not a regular file", path);
    o->path = strdup(path);
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
        ckpt__out_abort(o);
        return io_fail(err, "cannot create a temporary file beside", path, e);
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

ckpt_status ckpt__out_read_piece(const ckpt__out *o, int src_fd, uint64_t off, uint8_t *buf,
                                 size_t want, size_t *got, ckpt_error *err)
{
    *got = 0;
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

ckpt_status ckpt__out_copy(ckpt__out *o, int src_fd, uint64_t src_off, const void *p, size_t n,
                           uint32_t *crc, ckpt_error *err)
{
    const uint8_t *src = p;
    if (src_fd >= 0 && !o->copy_buf)
        o->copy_buf = malloc(COPY_BUF_SIZE); /* NULL: write from p below */
    size_t done = 0;
    while (src_fd >= 0 && o->copy_buf && done < n) {
        size_t want = n - done < COPY_BUF_SIZE ? n - done : COPY_BUF_SIZE, r;
        CKPT_RETURN_IF_ERROR(
            ckpt__out_read_piece(o, src_fd, src_off + done, o->copy_buf, want, &r, err));
        if (r == 0)
            break;
        if (crc)
            *crc = (uint32_t)libdeflate_crc32(*crc, o->copy_buf, r);
        CKPT_RETURN_IF_ERROR(ckpt__out_write(o, o->copy_buf, r, err));
        done += r;
    }
    if (done < n) {
        if (crc)
            *crc = (uint32_t)libdeflate_crc32(*crc, src + done, n - done);
        return ckpt__out_write(o, src + done, n - done, err);
    }
    return CKPT_OK;
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
    if (o->tmp_path)
        unlink(o->tmp_path);
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
    free(stage->tmp_path);
    free(stage->path);
    stage->tmp_path = stage->path = NULL;
}

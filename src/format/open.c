/*
 * open.c - opening a checkpoint: mapping and format detection, then the
 * reader of the format fills the handle (core/file.c).
 */
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files from this size on keep their descriptor open (see ckpt_open). */
#define KEEP_FD_MIN ((uint64_t)16 << 20)

const char *ckpt_format_name(ckpt_format format)
{
    switch (format) {
    case CKPT_FORMAT_TORCH_ZIP: return "torch-zip";
    case CKPT_FORMAT_TORCH_LEGACY: return "torch-legacy";
    case CKPT_FORMAT_SAFETENSORS: return "safetensors";
    case CKPT_FORMAT_PICKLE: return "pickle";
    case CKPT_FORMAT_SHARDED: return "sharded";
    case CKPT_FORMAT_NUMPY_NPY: return "numpy-npy";
    case CKPT_FORMAT_NUMPY_NPZ: return "numpy-npz";
    case CKPT_FORMAT_TORCH_TAR: return "torch-tar";
    case CKPT_FORMAT_DCP: return "dcp";
    case CKPT_FORMAT_UNKNOWN: break;
    }
    return "unknown";
}

/* ---- format detection -------------------------------------------------- */

/* A file ckpt reads its own way (safetensors, an index) that torch.load
 * reads as a pickle from byte 0 (neither zip nor tar): refused when that
 * pickle names a global or is the legacy magic number, since ckpt would
 * show one thing and torch load another. */
static ckpt_status pickle_at_zero_too(const ckpt_file *f, const char *as, ckpt_error *err)
{
    if (f->opts.flags & CKPT__OPEN_NO_PICKLE_AT_ZERO)
        return CKPT_OK;
    ckpt__byte0 b;
    ckpt__pickle_at_zero(f->map, f->map_size, &f->opts.limits, &b);
    if (!b.matters)
        return CKPT_OK;
    if (b.magic)
        return ckpt__fail(err, CKPT_ERR_FORMAT, "", b.offset,
                          "ambiguous file: ckpt reads it as %s, torch.load as a legacy torch "
                          "file (its bytes from byte 0 are a pickle of the legacy magic number, "
                          "which ends here)",
                          as);
    return ckpt__fail(err, CKPT_ERR_FORMAT, "", b.offset,
                      "ambiguous file: ckpt reads it as %s, torch.load as a pickle from byte 0, "
                      "which names the global '%s' here",
                      as, b.global);
}

/* torch.load's order: a zip by its magic, a tar archive as Python's
 * tarfile takes it, then a pickle from byte 0. ckpt's other formats come
 * after tar, each checked for what torch's pickle reading makes of it. */
static ckpt_status detect_and_open(ckpt_file *f, ckpt_error *err)
{
    const uint8_t *p = f->map;
    uint64_t n = f->map_size;
    if (f->is_dcp) {
        f->format = CKPT_FORMAT_DCP;
        return ckpt__open_dcp(f, err);
    }
    if (n == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0, "empty file: not a checkpoint");
    if (ckpt__zip_detect(p, n)) {
        f->format = CKPT_FORMAT_TORCH_ZIP;
        return ckpt__open_torch_zip(f, err);
    }
    switch (ckpt__tar_detect(p, n)) {
    case CKPT__TAR_BLOCK_HEADER:
        f->format = CKPT_FORMAT_TORCH_TAR;
        return ckpt__open_torch_tar(f, err);
    case CKPT__TAR_BLOCK_ZERO:
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                          "torch.load reads this file as an empty pre-0.4 tar archive (its first "
                          "512 bytes are zero): not a checkpoint");
    case CKPT__TAR_BLOCK_INVALID:
        break;
    }
    if (ckpt__pytorch1_detect(p, n))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                          "PyTorch 1.0-preview format (PYTORCH1) is not supported; "
                          "re-save it with a current torch.save");
    if (ckpt__safetensors_detect(p, n)) {
        CKPT_RETURN_IF_ERROR(pickle_at_zero_too(f, "safetensors", err));
        f->format = CKPT_FORMAT_SAFETENSORS;
        return ckpt__open_safetensors(f, err);
    }
    if (ckpt__sharded_detect(p, n)) {
        CKPT_RETURN_IF_ERROR(pickle_at_zero_too(f, "a sharded index", err));
        f->format = CKPT_FORMAT_SHARDED;
        /* an index names checkpoint files: one that names an index would
         * recurse (an index naming itself, forever) */
        if (f->is_shard)
            return ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                              "a shard is itself a sharded index (a shard must be a "
                              "checkpoint file)");
        return ckpt__open_sharded(f, err);
    }
    /* their magics start with an opcode: told apart before the pickle.
     * \x93 is STACK_GLOBAL, which fails on the empty stack at byte 0: torch
     * reads nothing from an .npy (checked all the same). */
    if (ckpt__npy_detect(p, n)) {
        CKPT_RETURN_IF_ERROR(pickle_at_zero_too(f, "a numpy array file", err));
        f->format = CKPT_FORMAT_NUMPY_NPY;
        return ckpt__open_npy(f, err);
    }
    if (ckpt__png_detect(p, n))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0, "not a checkpoint: a PNG image");
    if (ckpt__pickle_detect(p, n)) {
        /* A pickle: legacy torch file when its first pickle is the magic number. */
        return ckpt__open_torch_legacy(f, err);
    }
    return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                      "not a checkpoint: unknown format (first byte 0x%02x)", p[0]);
}

/* ---- open -------------------------------------------------------------- */

static ckpt_status open_common(ckpt_file *f, const ckpt_open_options *opts, ckpt_error *err)
{
    ckpt_open_options_default(&f->opts);
    if (opts) {
        ckpt_open_options o;
        ckpt_open_options_default(&o);
        ckpt__struct_in(&o, sizeof(o), opts);
        f->opts.flags = o.flags;
        ckpt__limits_apply(&f->opts.limits, &o.limits);
    }
    f->pickle_protocol = -1;
    ckpt__arena_init(&f->arena, f->opts.limits.max_value_bytes);
    CKPT_RETURN_IF_ERROR(detect_and_open(f, err));
    f->content_bytes = ckpt__file_content(f);
    CKPT_RETURN_IF_ERROR(ckpt__file_collect_tensors(f, err));
    if (f->opts.flags & CKPT_OPEN_VERIFY_CRC)
        CKPT_RETURN_IF_ERROR(ckpt_file_verify(f, err));
    return CKPT_OK;
}

ckpt_status ckpt_open_memory(const void *data, size_t size, const ckpt_open_options *opts,
                             ckpt_file **out, ckpt_error *err)
{
    if (!out || (!data && size))
        return CKPT_INVALID_ARG(err, "NULL argument");
    *out = NULL;
    ckpt_file *f = calloc(1, sizeof(*f));
    if (!f)
        return ckpt__nomem(err);
    f->map = data;
    f->map_size = size;
    ckpt_status st = open_common(f, opts, err);
    if (st != CKPT_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return CKPT_OK;
}

/*
 * A file mapped for opening pages in without the kernel's read-around while
 * its metadata is read: from a cold file, read-around reads megabytes
 * around every page that detection or a zip's local headers touch, tensor
 * bytes nobody asked for. The first and last 64 KiB (what detection and a
 * zip's end records read) are asked for at once; the torch zip and
 * safetensors openers ask for the pickle, the header or a dense archive
 * whole. Formats read from front to back (legacy pickles) keep
 * read-around. Small files are left alone: read-around reads them whole in
 * a request or two. Returns whether read-around is to be restored.
 */
#define QUIET_OPEN_MIN ((uint64_t)16 << 20)
#define QUIET_ENDS ((uint64_t)64 << 10)

static bool open_advise(const ckpt_file *f)
{
    if (!f->mapped || f->map_size < QUIET_OPEN_MIN)
        return false;
    ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_RANDOM);
    ckpt__map_advise(f->map, QUIET_ENDS, CKPT__ADVISE_WILLNEED);
    ckpt__map_advise(f->map + f->map_size - QUIET_ENDS, QUIET_ENDS, CKPT__ADVISE_WILLNEED);
    if (!ckpt__zip_detect(f->map, f->map_size) &&
        !ckpt__safetensors_detect(f->map, f->map_size)) {
        ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_NORMAL);
        return false;
    }
    return true;
}

/* ckpt__open_fd; dcp_dir >= 0: fd is the .metadata of the DCP checkpoint in
 * that directory (used while opening, not kept). */
static ckpt_status open_fd_in(int fd, const struct stat *sb, const char *path,
                              const ckpt_open_options *opts, bool shard, int dcp_dir,
                              ckpt_file **out, ckpt_error *err)
{
    *out = NULL;
    ckpt_status st = CKPT_OK;
    ckpt_file *f = NULL;
    if (S_ISDIR(sb->st_mode)) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "is a directory");
        goto out;
    }
    if (!S_ISREG(sb->st_mode)) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                        "not a regular file (checkpoints are mapped from files)");
        goto out;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        st = ckpt__nomem(err);
        goto out;
    }
    f->path = path;
    f->is_dcp = dcp_dir >= 0;
    f->dcp_dir = dcp_dir;
    f->dev = (uint64_t)sb->st_dev;
    f->ino = (uint64_t)sb->st_ino;
    f->is_shard = shard;
    if (sb->st_size > 0) {
        void *m = mmap(NULL, (size_t)sb->st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot map: %s",
                            strerror(errno));
            goto out;
        }
        f->map = m;
        f->map_size = (uint64_t)sb->st_size;
        f->mapped = true;
    }
    /* Kept so that writers read bytes that pass through unchanged with
     * pread (ckpt__out_copy). Only for files big enough for that to pay: a
     * program holding many small checkpoints open holds no descriptors. */
    if ((uint64_t)sb->st_size >= KEEP_FD_MIN) {
        f->fd = fd;
        f->has_fd = true;
        fd = -1;
    }
    bool quiet = open_advise(f);
    st = open_common(f, opts, err);
    if (quiet) /* tensor bytes read later page in with read-around again */
        ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_NORMAL);
    f->path = NULL; /* the caller's string: not kept past open */
    f->dcp_dir = -1;
out:
    if (fd >= 0)
        close(fd);
    if (st != CKPT_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return CKPT_OK;
}

ckpt_status ckpt__open_fd(int fd, const struct stat *sb, const char *path,
                          const ckpt_open_options *opts, bool shard, ckpt_file **out,
                          ckpt_error *err)
{
    return open_fd_in(fd, sb, path, opts, shard, -1, out, err);
}

/* A DCP checkpoint: its directory (dir, taken over) and the .metadata in it. */
static ckpt_status open_dcp(int dir, const char *path, const ckpt_open_options *opts,
                            ckpt_file **out, ckpt_error *err)
{
    int fd = openat(dir, ".metadata", O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        ckpt_status st = errno == ENOENT
            ? ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                         "is a directory without a .metadata file (not a DCP checkpoint)")
            : ckpt__fail(err, CKPT_ERR_IO, ".metadata", CKPT_NO_OFFSET, "cannot open: %s",
                         strerror(errno));
        close(dir);
        return st;
    }
    struct stat sb;
    ckpt_status st;
    if (fstat(fd, &sb) != 0) {
        st = ckpt__fail(err, CKPT_ERR_IO, ".metadata", CKPT_NO_OFFSET, "cannot stat: %s",
                        strerror(errno));
        close(fd);
    } else {
        st = open_fd_in(fd, &sb, path, opts, false, dir, out, err);
    }
    close(dir);
    return st;
}

/* Whether the last component of path is ".metadata". */
static bool names_dcp_metadata(const char *path)
{
    const char *slash = strrchr(path, '/');
    return strcmp(slash ? slash + 1 : path, ".metadata") == 0;
}

ckpt_status ckpt_open(const char *path, const ckpt_open_options *opts, ckpt_file **out,
                      ckpt_error *err)
{
    if (!out || !path)
        return CKPT_INVALID_ARG(err, "NULL argument");
    *out = NULL;
    /* O_NONBLOCK: a FIFO named by a (sharded) index must not hang the open */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        ckpt_status st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot stat: %s",
                                    strerror(errno));
        close(fd);
        return st;
    }
    if (S_ISDIR(sb.st_mode))
        return open_dcp(fd, path, opts, out, err);
    if (S_ISREG(sb.st_mode) && names_dcp_metadata(path)) {
        /* the .metadata of a DCP checkpoint: the directory around it */
        size_t n = strlen(path);
        char *dir = malloc(n + 3);
        if (!dir) {
            close(fd);
            return ckpt__nomem(err);
        }
        const char *slash = strrchr(path, '/');
        if (!slash)
            strcpy(dir, ".");
        else if (slash == path)
            strcpy(dir, "/");
        else {
            memcpy(dir, path, (size_t)(slash - path));
            dir[slash - path] = 0;
        }
        int dfd = open(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
        free(dir);
        close(fd);
        if (dfd < 0)
            return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                              "cannot open the directory of .metadata: %s", strerror(errno));
        return open_dcp(dfd, path, opts, out, err);
    }
    return ckpt__open_fd(fd, &sb, path, opts, false, out, err);
}

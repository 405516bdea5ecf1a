/*
 * outdir.c - crash-safe output directories: a new directory is made whole
 * beside its target (DIR.tmp-ID), synced, and swapped into place in one
 * step (renameat2 RENAME_EXCHANGE; two renames where the filesystem lacks
 * it), so that a reader sees the old directory or the new one, never a mix.
 */
#include "base.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Removes a directory of files (one level, as a DCP directory is). */
void ckpt__dir_remove(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(d), e->d_name, 0);
        }
        closedir(d);
    }
    rmdir(path);
}

/* Removes DIR.tmp-* and DIR.old-* beside dir (saves that crashed). A crash
 * between the two renames of a filesystem without RENAME_EXCHANGE leaves
 * only DIR.old-*: it goes back to DIR. */
void ckpt__dir_remove_leftovers(const char *dir)
{
    const char *slash = strrchr(dir, '/');
    size_t plen = slash ? (size_t)(slash - dir) : 0;
    char *parent = plen ? strndup(dir, plen) : strdup(slash ? "/" : ".");
    const char *base = slash ? slash + 1 : dir;
    size_t blen = strlen(base);
    if (!parent)
        return;
    struct stat sb;
    bool missing = stat(dir, &sb) != 0;
    DIR *d = opendir(parent);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, base, blen) != 0)
                continue;
            const char *rest = e->d_name + blen;
            bool tmp = strncmp(rest, ".tmp-", 5) == 0, old = strncmp(rest, ".old-", 5) == 0;
            if (!tmp && !old)
                continue;
            size_t n = strlen(parent) + strlen(e->d_name) + 2;
            char *p = malloc(n);
            if (!p)
                break;
            snprintf(p, n, "%s/%s", parent, e->d_name);
            if (old && missing && rename(p, dir) == 0)
                missing = false;
            else
                ckpt__dir_remove(p);
            free(p);
        }
        closedir(d);
    }
    free(parent);
}

int ckpt__dir_sync(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Puts tmp in place of dir; *old gets where the previous dir went (to be
 * removed), or stays empty. */
ckpt_status ckpt__dir_swap_in(const char *tmp, const char *dir, char *old, size_t old_cap,
                           ckpt_error *err)
{
    old[0] = 0;
    struct stat sb;
    if (lstat(dir, &sb) != 0) {
        if (rename(tmp, dir) != 0)
            return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot rename %s to %s: %s",
                              tmp, dir, strerror(errno));
        return CKPT_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return CKPT_INVALID_ARG(err, "%s exists and is not a directory", dir);
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        snprintf(old, old_cap, "%s", tmp);
        return CKPT_OK;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot exchange %s and %s: %s",
                          tmp, dir, strerror(errno));
#endif
    /* no atomic exchange here: two renames, which remove_leftovers undoes
     * after a crash between them */
    const char *tag = strstr(tmp + strlen(dir), ".tmp-");
    snprintf(old, old_cap, "%s.old-%s", dir, tag ? tag + 5 : "x");
    if (rename(dir, old) != 0) {
        old[0] = 0;
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot rename %s: %s", dir,
                          strerror(errno));
    }
    if (rename(tmp, dir) != 0) {
        int e = errno;
        rename(old, dir);
        old[0] = 0;
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot rename %s to %s: %s",
                          tmp, dir, strerror(e));
    }
    return CKPT_OK;
}


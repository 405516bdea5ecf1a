/*
 * scan_dcp.c - scanning a PyTorch Distributed Checkpoint directory: the
 * .metadata pickle (torch reads it with a plain pickle.load, so any global
 * outside DCP's own classes is unsafe), then every item storage_data names
 * in the .distcp files, each the torch.save zip it is.
 */
#include "scan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define META ".metadata"

/* The .metadata of dir, mapped into map and size (unmapped when size > 0). */
static ckpt_status map_metadata(scan_ctx *s, const char *dir, const uint8_t **map, size_t *size)
{
    *map = (const uint8_t *)"";
    *size = 0;
    size_t n = strlen(dir) + sizeof("/" META);
    char *path = malloc(n);
    if (!path)
        return ckpt__nomem(s->err);
    snprintf(path, n, "%s/%s", dir, META);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    free(path);
    struct stat sb;
    if (fd < 0)
        return ckpt__fail(s->err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                          errno == ENOENT ? "is a directory without a .metadata file (not a DCP "
                                            "checkpoint)"
                                          : "cannot open its .metadata: %s",
                          strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ckpt__fail(s->err, CKPT_ERR_IO, META, CKPT_NO_OFFSET, "not a regular file");
    }
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ckpt__fail(s->err, CKPT_ERR_IO, META, CKPT_NO_OFFSET, "cannot map: %s",
                              strerror(e));
        }
        *map = m;
        *size = (size_t)sb.st_size;
    }
    close(fd);
    return CKPT_OK;
}

ckpt_status ckpt__scan_dcp(scan_ctx *s, const char *dir)
{
    const uint8_t *map;
    size_t size;
    CKPT_RETURN_IF_ERROR(map_metadata(s, dir, &map, &size));
    s->report->format = "dcp";
    ckpt_status st = CKPT_OK;
    ckpt_file *f = NULL;

    /* every global the pickle names, DCP's own classes aside */
    scan_pickle_result res;
    size_t before = s->report->count;
    s->dcp = true;
    st = ckpt__scan_pickle_alone(s, map, size, META, 0, &res);
    s->dcp = false;
    if (st != CKPT_OK)
        goto out;
    /* what DCP's classes may do (getattr only for the enum's members) is
     * the DCP reader's to judge */
    ckpt__arena arena;
    ckpt__arena_init(&arena, s->limits.max_value_bytes);
    ckpt_value *root;
    ckpt_error e;
    ckpt_status rs = ckpt__dcp_unpickle(map, size, &s->limits, &arena, &root, NULL, &e);
    ckpt__arena_free(&arena);
    if (rs == CKPT_ERR_NOMEM) {
        st = ckpt__nomem(s->err);
        goto out;
    }
    if (rs == CKPT_ERR_UNSAFE && s->report->count == before) {
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_GLOBAL, META, e.offset, e.offset, "%s", e.message);
        if (st != CKPT_OK)
            goto out;
    }

    /* the items, where the metadata says they are */
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= CKPT_OPEN_PERMISSIVE; /* items are judged by the scan, not refused */
    oo.limits = s->limits;
    rs = ckpt_open(dir, &oo, &f, &e);
    if (rs == CKPT_ERR_NOMEM) {
        st = ckpt__nomem(s->err);
        goto out;
    }
    if (rs != CKPT_OK) {
        char msg[768];
        st = ckpt__scan_add(s, rs == CKPT_ERR_LIMIT ? CKPT_SCAN_KIND_LIMIT : CKPT_SCAN_KIND_FORMAT,
                            META, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                            "the items of the .distcp files are not checked: the checkpoint "
                            "does not open (%s)", ckpt_error_format(&e, msg, sizeof(msg)));
        goto out;
    }
    for (size_t i = 0; i < f->dcp_item_count && st == CKPT_OK; i++) {
        const struct ckpt__dcp_item *it = &f->dcp_items[i];
        const struct ckpt__dcp_file *df = &f->dcp_files[it->file];
        char where[256], q[160];
        snprintf(where, sizeof(where), "%s@%llu ('%s'): ", df->name,
                 (unsigned long long)it->offset,
                 ckpt__quote(q, sizeof(q), it->key, strlen(it->key), false));
        s->depth++;
        st = ckpt__scan_bytes(s, df->map ? df->map + it->offset : (const uint8_t *)"",
                              it->length, where, it->offset, false);
        s->depth--;
    }
out:
    ckpt_close(f);
    if (size)
        munmap((void *)(uintptr_t)map, size);
    return st;
}

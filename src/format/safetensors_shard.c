/*
 * safetensors_shard.c - ckpt_save_safetensors_sharded: the tensors of a tree
 * as a sharded safetensors set, as transformers' save_pretrained writes it.
 *
 * Tensors are taken in the tree's order and filled into shards of at most
 * max_shard_size bytes as huggingface_hub's split_state_dict_into_shards
 * does: a tensor larger than the limit goes alone into a shard of its own,
 * one that would tip the current shard over the limit starts a new shard,
 * and tensors sharing a storage follow the first of them. n shards are
 * model-0000i-of-0000n.safetensors (five digits) with
 * model.safetensors.index.json ({"metadata": {"total_size": bytes},
 * "weight_map": {name: file}}, keys sorted, indent 2); one shard is
 * model.safetensors alone. Each shard is written by ckpt_save_safetensors.
 *
 * The set is one commit: the files go into DIR.tmp-ID beside DIR with the
 * files of DIR that the set does not replace (hard links: config.json and
 * the like stay, stale shards of an earlier save do not), the directory is
 * synced and swapped into place (outdir.c). A crash leaves DIR as it was
 * or as the new set, whole.
 *
 * Test hook: CKPT_SHARD_KILL_AT=STEP makes the process SIGKILL itself at a
 * step of the commit (kill_point below), for the crash tests.
 */
#include "format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    KILL_FIRST_SHARD = 1, /* the first shard written, the others not */
    KILL_WRITTEN = 2,     /* every file written and synced, not swapped in */
    KILL_SWAPPED = 3,     /* swapped in, the old set not removed */
};

static void kill_point(int step)
{
    const char *at = getenv("CKPT_SHARD_KILL_AT");
    if (at && atoi(at) == step)
        raise(SIGKILL);
}

typedef struct sh_entry {
    char *name;
    const ckpt_value *v;
    const ckpt_tensor *t;       /* NULL: a subtree without tensors */
    uint64_t nbytes;
    size_t shard;
    bool tied;                  /* the same view as a tensor kept under another name */
} sh_entry;

typedef struct sh_ctx {
    sh_entry *list;
    size_t count, cap;
} sh_ctx;

static ckpt_status collect(sh_ctx *c, const char *name, const ckpt_value *v, bool tensor,
                           ckpt_error *err)
{
    if (c->count == c->cap) {
        sh_entry *grown = ckpt__array_grow(c->list, &c->cap, sizeof(*grown));
        if (!grown)
            return ckpt__nomem(err);
        c->list = grown;
    }
    sh_entry *e = &c->list[c->count];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name[0] ? name : "tensor");
    if (!e->name)
        return ckpt__nomem(err);
    e->v = v;
    if (tensor) {
        e->t = ckpt_value_tensor(v);
        if (!e->t || !e->t->storage)
            return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                              "tensor '%s' has no data to save", e->name);
        uint64_t bits;
        if (!ckpt__mul_u64(e->t->numel, ckpt_dtype_bits(e->t->dtype), &bits))
            return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                              "tensor '%s' is too large", e->name);
        e->nbytes = (bits + 7) / 8;
    }
    c->count++;
    return CKPT_OK;
}

static ckpt_status on_tensor(void *user, const char *name, const ckpt_value *v, ckpt_error *err)
{
    return collect(user, name, v, true, err);
}

static ckpt_status on_leaf(void *user, const char *name, const ckpt_value *v, ckpt_error *err)
{
    return collect(user, name, v, false, err);
}

static bool same_view(const ckpt_tensor *a, const ckpt_tensor *b)
{
    if (a->storage != b->storage || a->dtype != b->dtype || a->ndim != b->ndim ||
        a->storage_offset != b->storage_offset)
        return false;
    for (uint32_t d = 0; d < a->ndim; d++) {
        if (a->shape[d] != b->shape[d] || a->stride[d] != b->stride[d])
            return false;
    }
    return true;
}

/* The names the set writes, which an earlier set in DIR may also hold. */
static bool is_set_file(const char *name)
{
    if (strcmp(name, "model.safetensors") == 0 || strcmp(name, "model.safetensors.index.json") == 0)
        return true;
    unsigned a, b;
    char tail[32];
    return sscanf(name, "model-%5u-of-%5u%31s", &a, &b, tail) == 3 &&
           strcmp(tail, ".safetensors") == 0;
}

/* Hard links into tmp every file of dir the set does not replace. */
static ckpt_status keep_others(const char *dir, const char *tmp, ckpt_error *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return CKPT_OK;
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot read the directory %s: %s",
                          dir, strerror(errno));
    }
    int tfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ckpt_status st = CKPT_OK;
    if (tfd < 0)
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot open %s: %s", tmp,
                        strerror(errno));
    struct dirent *e;
    while (st == CKPT_OK && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || is_set_file(e->d_name))
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                            "%s holds the directory %s: a sharded set replaces its directory "
                            "whole, keeping files only; write it into a directory of files",
                            dir, e->d_name);
            break;
        }
        if (linkat(dirfd(d), e->d_name, tfd, e->d_name, 0) != 0)
            st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot keep %s/%s: %s", dir,
                            e->d_name, strerror(errno));
    }
    if (tfd >= 0)
        close(tfd);
    closedir(d);
    return st;
}

static ckpt_status write_index(const char *path, const sh_ctx *c, size_t nshards,
                               uint64_t total, unsigned flags, ckpt_error *err)
{
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    char file[64];
    ckpt_status st = CKPT_OK;
    if (!root || !meta || !map ||
        json_object_set_new(meta, "total_size", json_integer((json_int_t)total)) != 0) {
        st = ckpt__nomem(err);
        goto done;
    }
    for (size_t i = 0; i < c->count; i++) {
        const sh_entry *e = &c->list[i];
        if (!e->t || e->tied)
            continue;
        snprintf(file, sizeof(file), "model-%05zu-of-%05zu.safetensors", e->shard + 1, nshards);
        if (json_object_set_new(map, e->name, json_string(file)) != 0) {
            st = ckpt__nomem(err);
            goto done;
        }
    }
    json_object_set(root, "metadata", meta);
    json_object_set(root, "weight_map", map);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    if (!text) {
        st = ckpt__nomem(err);
        goto done;
    }
    ckpt__out out;
    if ((st = ckpt__out_open(&out, path, flags & CKPT_SAVE_NO_FSYNC, err)) == CKPT_OK) {
        if ((st = ckpt__out_write(&out, text, strlen(text), err)) != CKPT_OK ||
            (st = ckpt__out_write(&out, "\n", 1, err)) != CKPT_OK ||
            (st = ckpt__out_commit(&out, err)) != CKPT_OK)
            ckpt__out_abort(&out);
    }
    free(text);
done:
    json_decref(meta);
    json_decref(map);
    json_decref(root);
    return st;
}

ckpt_status ckpt_save_safetensors_sharded(const char *dir_in, const ckpt_value *root,
                                          uint64_t max_shard_size, const ckpt_save_options *opts,
                                          ckpt_error *err)
{
    if (!dir_in || !*dir_in || !root)
        return CKPT_INVALID_ARG(err, "NULL argument");
    if (max_shard_size == 0)
        return CKPT_INVALID_ARG(err, "the largest shard size must be at least 1 byte");
    ckpt_save_options o;
    ckpt__save_options_apply(&o, opts);
    ckpt_limits lim;
    ckpt_limits_default(&lim);
    size_t dlen = strlen(dir_in);
    while (dlen > 1 && dir_in[dlen - 1] == '/')
        dlen--;
    char *dir = strndup(dir_in, dlen);
    size_t cap = dlen + 128;
    char *tmp = malloc(cap), *old = malloc(cap), *path = malloc(cap);
    sh_ctx c = {0};
    ckpt_tree *tree = NULL;
    bool made = false;
    ckpt_status st = CKPT_OK;
    if (!dir || !tmp || !old || !path) {
        st = ckpt__nomem(err);
        goto done;
    }
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        st = CKPT_INVALID_ARG(err, "%s exists and is not a directory", dir);
        goto done;
    }
    if ((st = ckpt__walk_named(root, lim.max_nesting, on_tensor, on_leaf, &c, err)) != CKPT_OK)
        goto done;

    /* shards, as split_state_dict_into_shards: entries first get a group,
     * and groups their shard number in the order the reference appends
     * them (a tensor over the limit at once, the group being filled when
     * it closes) */
    size_t *order = malloc((c.count + 1) * sizeof(*order));
    if (!order) {
        st = ckpt__nomem(err);
        goto done;
    }
    size_t nshards = 0, groups = 0, open_group = SIZE_MAX;
    uint64_t current = 0, total = 0;
    for (size_t i = 0; i < c.count; i++) {
        sh_entry *e = &c.list[i];
        if (!e->t)
            continue;
        size_t same = SIZE_MAX;
        for (size_t j = 0; j < i && same == SIZE_MAX; j++) {
            if (c.list[j].t && c.list[j].t->storage == e->t->storage)
                same = j;
        }
        if (same != SIZE_MAX) {
            /* with the first tensor of its storage; a second name of the
             * same view is written once, under the first name in byte order */
            e->shard = c.list[same].shard;
            bool view_kept = false;
            for (size_t j = 0; j < i && !view_kept; j++) {
                sh_entry *x = &c.list[j];
                if (x->t && !x->tied && same_view(x->t, e->t)) {
                    view_kept = true;
                    if (strcmp(e->name, x->name) < 0)
                        x->tied = true;
                    else
                        e->tied = true;
                }
            }
            if (!view_kept)
                total += e->nbytes;
            continue;
        }
        total += e->nbytes;
        if (e->nbytes > max_shard_size) {
            e->shard = groups;
            order[groups++] = nshards++;
            continue;
        }
        if (open_group != SIZE_MAX && current + e->nbytes > max_shard_size) {
            order[open_group] = nshards++;
            open_group = SIZE_MAX;
            current = 0;
        }
        if (open_group == SIZE_MAX)
            open_group = groups++;
        e->shard = open_group;
        current += e->nbytes;
    }
    if (open_group != SIZE_MAX)
        order[open_group] = nshards++;
    for (size_t i = 0; i < c.count; i++) {
        if (c.list[i].t)
            c.list[i].shard = order[c.list[i].shard];
    }
    free(order);
    if (nshards == 0)
        nshards = 1;
    if (nshards > 99999) {
        st = ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                        "%zu shards: more than the 99999 five-digit names hold", nshards);
        goto done;
    }

    ckpt__dir_remove_leftovers(dir);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(tmp, cap, "%s.tmp-%lx%lx-%lx", dir, (unsigned long)ts.tv_sec,
             (unsigned long)ts.tv_nsec, (unsigned long)getpid());
    if (mkdir(tmp, 0777) != 0) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot create the directory %s: %s",
                        tmp, strerror(errno));
        goto done;
    }
    made = true;
    if ((st = keep_others(dir, tmp, err)) != CKPT_OK)
        goto done;
    for (size_t s = 0; s < nshards; s++) {
        ckpt_tree_free(tree);
        tree = ckpt_tree_new();
        ckpt_value *d = tree ? ckpt_new_dict(tree) : NULL;
        if (!d) {
            st = ckpt__nomem(err);
            goto done;
        }
        for (size_t i = 0; i < c.count; i++) {
            const sh_entry *e = &c.list[i];
            /* subtrees without tensors ride in the first shard's metadata */
            if (e->t ? e->shard == s : s == 0)
                ckpt_dict_put_str(tree, d, e->name, e->v);
        }
        if ((st = ckpt_tree_status(tree, err)) != CKPT_OK)
            goto done;
        if (nshards == 1)
            snprintf(path, cap, "%s/model.safetensors", tmp);
        else
            snprintf(path, cap, "%s/model-%05zu-of-%05zu.safetensors", tmp, s + 1, nshards);
        ckpt_save_options so = o;
        so.progress = NULL; /* progress over the whole set is not known here */
        if ((st = ckpt_save_safetensors(path, d, &so, err)) != CKPT_OK)
            goto done;
        if (s == 0)
            kill_point(KILL_FIRST_SHARD);
    }
    if (nshards > 1) {
        snprintf(path, cap, "%s/model.safetensors.index.json", tmp);
        if ((st = write_index(path, &c, nshards, total, o.flags, err)) != CKPT_OK)
            goto done;
    }
    bool sync = !(o.flags & CKPT_SAVE_NO_FSYNC);
    if (sync && ckpt__dir_sync(tmp) != 0) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot sync %s: %s", tmp,
                        strerror(errno));
        goto done;
    }
    kill_point(KILL_WRITTEN);
    if ((st = ckpt__dir_swap_in(tmp, dir, old, cap, err)) != CKPT_OK)
        goto done;
    made = false;
    kill_point(KILL_SWAPPED);
    if (sync) {
        const char *slash = strrchr(dir, '/');
        char *parent = slash ? strndup(dir, slash == dir ? 1 : (size_t)(slash - dir)) : strdup(".");
        if (!parent || ckpt__dir_sync(parent) != 0)
            st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                            "cannot sync the directory holding %s", dir);
        free(parent);
    }
    if (old[0])
        ckpt__dir_remove(old);

done:
    if (made)
        ckpt__dir_remove(tmp);
    ckpt_tree_free(tree);
    for (size_t i = 0; i < c.count; i++)
        free(c.list[i].name);
    free(c.list);
    free(dir);
    free(tmp);
    free(old);
    free(path);
    return st;
}

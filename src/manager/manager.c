/*
 * manager.c - a directory of checkpoints for a training run: last.pth,
 * best.pth, numbered checkpoints with retention, and manifest.json.
 *
 * The commit protocol (ckpt_manager_save):
 *   1. every new file is written to a temporary beside its name and
 *      fsync'ed (numbered and full best copies are hard links of last's);
 *   2. the manifest is rewritten listing them as "pending", with their
 *      sizes and CRC32s;
 *   3. they are renamed into place and the directory is fsync'ed;
 *   4. the manifest is rewritten with them committed, and the numbered
 *      files retention drops listed as "removing";
 *   5. those are removed.
 * A crash leaves each name with its old or its new bytes, whole (rename is
 * atomic); opening the directory settles which: a pending entry whose file
 * has its size and CRC32 was renamed, any other was not. Removals are
 * finished, and temporaries of ours removed. Nothing old is touched before
 * step 3, so an error up to there leaves every file as it was.
 */
#include "manager.h"
#include "async.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libdeflate.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Tests set this to stop a save at a named point of the protocol. */
void (*ckpt__manager_hook)(const char *point);

static void hook(const char *point)
{
    if (ckpt__manager_hook)
        ckpt__manager_hook(point);
}

struct ckpt_manager {
    char *dir;
    unsigned flags;
    unsigned save_flags;
    char *weights_key;
    unsigned keep_last, keep_best;
    char *torch_version;
    char *user_json;
    void (*warn)(void *user, const char *message);
    void *warn_user;
    int lock_fd;
    uint64_t max_manifest_bytes;
    ckpt__manifest mf;          /* committed entries: last, best, numbered by step */
    ckpt_checkpoint_info info;  /* ckpt_manager_get's scratch */
    ckpt__async *async;         /* saves in the background (async.c) */
};

ckpt__async **ckpt__manager_async(const ckpt_manager *m)
{
    return (ckpt__async **)(uintptr_t)&m->async;
}

/* Every call waits for a save in the background first: one thing at a
 * time changes the directory and the manager. */
static void settle_async(const ckpt_manager *m)
{
    if (m)
        (void)ckpt__async_settle(m->async, false, NULL, NULL);
}

void ckpt_manager_options_default(ckpt_manager_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
    opts->mode = CKPT_MODE_MIN;
    opts->weights_key = "model";
    opts->max_manifest_bytes = CKPT__MANIFEST_MAX_BYTES;
}

static ckpt_status io_fail(ckpt_error *err, const char *what, const char *path, int e)
{
    return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "%s %s: %s", what, path,
                      strerror(e));
}

static void warnf(ckpt_manager *m, const char *fmt, ...) CKPT_PRINTF(2, 3);
static void warnf(ckpt_manager *m, const char *fmt, ...)
{
    if (!m->warn)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    m->warn(m->warn_user, msg);
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

/* ---- files ------------------------------------------------------------------ */

/* Size and CRC32 of a regular file, read in pieces up to the size it had
 * when opened (a FIFO or a device is refused, not read forever), continuing
 * *size and *crc. */
static ckpt_status file_crc_more(const char *path, uint64_t *size, uint32_t *crc,
                                 ckpt_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return io_fail(err, "cannot open", path, errno);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return CKPT_INVALID_ARG(err, "%s is not a regular file", path);
    }
    uint64_t left = (uint64_t)sb.st_size;
    size_t cap = (size_t)1 << 20;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return ckpt__nomem(err);
    }
    uint64_t n = *size;
    uint32_t c = *crc;
    ckpt_status st = CKPT_OK;
    while (left) {
        ssize_t r = read(fd, buf, left < cap ? (size_t)left : cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            st = io_fail(err, "cannot read", path, errno);
            break;
        }
        if (r == 0)
            break;
        c = libdeflate_crc32(c, buf, (size_t)r);
        n += (uint64_t)r;
        left -= (uint64_t)r;
    }
    free(buf);
    close(fd);
    *size = n;
    *crc = c;
    return st;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A directory checkpoint's size and CRC32: of its regular files' bytes, one
 * after the other in name order (a subdirectory is refused). */
static ckpt_status dir_crc(const char *path, uint64_t *size, uint32_t *crc, ckpt_error *err)
{
    DIR *d = opendir(path);
    if (!d)
        return io_fail(err, "cannot open", path, errno);
    char **names = NULL;
    size_t n = 0, cap = 0;
    ckpt_status st = CKPT_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n == cap) {
            char **grown = ckpt__array_grow(names, &cap, sizeof(*grown));
            if (!grown) {
                st = ckpt__nomem(err);
                break;
            }
            names = grown;
        }
        if (!(names[n] = strdup(de->d_name))) {
            st = ckpt__nomem(err);
            break;
        }
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof(*names), cmp_str);
    *size = 0;
    *crc = 0;
    for (size_t i = 0; i < n && st == CKPT_OK; i++) {
        char *file = join(path, names[i]);
        st = file ? file_crc_more(file, size, crc, err) : ckpt__nomem(err);
        free(file);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

/* A file's or a directory checkpoint's size and CRC32. */
static ckpt_status file_crc(const char *path, uint64_t *size, uint32_t *crc, ckpt_error *err)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return dir_crc(path, size, crc, err);
    *size = 0;
    *crc = 0;
    return file_crc_more(path, size, crc, err);
}

/* Whether path holds a checkpoint of the kind its name says (a regular
 * file, or a directory for a .dcp name), and its size (a directory's: of
 * its files). */
static bool entry_size(const char *path, const char *name, uint64_t *size)
{
    struct stat sb;
    bool dir;
    ckpt__name_role(name, &dir);
    if (stat(path, &sb) != 0)
        return false;
    if (!dir) {
        *size = (uint64_t)sb.st_size;
        return S_ISREG(sb.st_mode);
    }
    if (!S_ISDIR(sb.st_mode))
        return false;
    DIR *d = opendir(path);
    if (!d)
        return false;
    uint64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat fb;
        if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
            continue;
        if (fstatat(dirfd(d), de->d_name, &fb, 0) == 0 && S_ISREG(fb.st_mode))
            total += (uint64_t)fb.st_size;
    }
    closedir(d);
    *size = total;
    return true;
}

/* Removes a checkpoint file or directory; -1 with errno. */
static int remove_entry(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        ckpt__dir_remove(path);
        return 0;
    }
    return unlink(path);
}

/* mkdir -p. */
static ckpt_status make_dirs(const char *dir, ckpt_error *err)
{
    char *p = strdup(dir);
    if (!p)
        return ckpt__nomem(err);
    for (char *s = p + 1;; s++) {
        bool end = *s == 0;
        if (*s == '/' || end) {
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                ckpt_status st = io_fail(err, "cannot create directory", p, errno);
                free(p);
                return st;
            }
            if (end)
                break;
            *s = '/';
        }
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return CKPT_INVALID_ARG(err, "%s is not a directory", dir);
    return CKPT_OK;
}

static ckpt_status take_lock(ckpt_manager *m, ckpt_error *err)
{
    char *path = join(m->dir, CKPT__LOCK_NAME);
    if (!path)
        return ckpt__nomem(err);
    /* never through a link: the pid note would overwrite its target */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0666);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_nlink != 1) {
        ckpt_status st = fd < 0 ? io_fail(err, "cannot open the lock file", path, errno)
                                : CKPT_INVALID_ARG(err,
                                                   "lock file %s is not a plain file of its own "
                                                   "(a link, or not a regular file)",
                                                   path);
        if (fd >= 0)
            close(fd);
        free(path);
        return st;
    }
    free(path);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t r = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[r > 0 ? r : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            return ckpt__fail(err, CKPT_ERR_BUSY, "", CKPT_NO_OFFSET,
                              "checkpoint directory %s is locked by another process%s%s%s",
                              m->dir, *pid ? " (pid " : "", pid, *pid ? ")" : "");
        return io_fail(err, "cannot lock", m->dir, e);
    }
    /* who holds it, for the message another process gets */
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the lock holds without the note */
    }
    m->lock_fd = fd;
    return CKPT_OK;
}

/* ".NAME.tmp-..." for one of our names: a temporary of a crashed save. */
static bool is_our_temp(const char *name)
{
    if (name[0] != '.')
        return false;
    const char *t = strstr(name, ".tmp-");
    if (!t)
        return false;
    size_t n = (size_t)(t - name - 1);
    char base[300];
    if (n == 0 || n >= sizeof(base))
        return false;
    memcpy(base, name + 1, n);
    base[n] = 0;
    return strcmp(base, CKPT__MANIFEST_NAME) == 0 || ckpt__name_role(base, NULL) >= 0;
}

/* "NAME.tmp-..." or "NAME.old-..." for one of our directory names: what a
 * crashed directory commit left (outdir.c). */
static bool is_our_dir_temp(const char *name)
{
    const char *t = strstr(name, ".tmp-");
    if (!t)
        t = strstr(name, ".old-");
    char base[300];
    size_t n = t ? (size_t)(t - name) : 0;
    if (n == 0 || n >= sizeof(base))
        return false;
    memcpy(base, name, n);
    base[n] = 0;
    bool dir;
    return ckpt__name_role(base, &dir) >= 0 && dir;
}

/* ---- order and selection ------------------------------------------------------ */

static int entry_rank(const ckpt__mentry *e)
{
    int role = ckpt__name_role(e->file, NULL);
    return role < 0 ? 2 : role;
}

static int cmp_entries(const void *a, const void *b)
{
    const ckpt__mentry *x = a, *y = b;
    int rx = entry_rank(x), ry = entry_rank(y);
    if (rx != ry)
        return rx < ry ? -1 : 1;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return strcmp(x->file, y->file);
}

static void sort_entries(ckpt__mlist *l)
{
    if (l->count > 1)
        qsort(l->items, l->count, sizeof(*l->items), cmp_entries);
}

static bool is_numbered(const ckpt__mentry *e) { return entry_rank(e) == 2; }

/* The monitored metric of e; false when it has none, or NaN. */
static bool monitored(const ckpt_manager *m, const ckpt__mentry *e, double *v)
{
    const ckpt_metric *x = ckpt__mentry_metric(e, m->mf.monitor);
    if (!x || isnan(x->value))
        return false;
    *v = x->value;
    return true;
}

static bool better(ckpt_metric_mode mode, double a, double b)
{
    return mode == CKPT_MODE_MAX ? a > b : a < b;
}

/* A candidate for retention: an entry's step and monitored metric. */
typedef struct cand {
    int64_t step;
    bool has_metric;            /* false: none recorded, or NaN */
    double metric;
    double key;                 /* lower is better; no metric: +inf */
    bool adopted;               /* a file the manager did not write, metric unknown */
    bool keep;
} cand;

static int cmp_newest(const void *a, const void *b)
{
    const cand *x = *(cand *const *)a, *y = *(cand *const *)b;
    return x->step > y->step ? -1 : x->step < y->step;
}

static int cmp_best(const void *a, const void *b)
{
    const cand *x = *(cand *const *)a, *y = *(cand *const *)b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    if (x->has_metric != y->has_metric) /* the worst infinity still before none */
        return x->has_metric ? -1 : 1;
    return x->step < y->step ? -1 : x->step > y->step; /* ties: the older */
}

/* Marks c[i].keep for the newest keep_last and the keep_best best, as
 * Lightning's save_top_k ranks them: a NaN or missing metric ranks last
 * (it still fills a free place), and of equal metrics the older stays. */
/* Saves never remove a file whose metric the manager does not know (one it
 * adopted, or one of a rebuilt manifest): ranked last, it would be the
 * first to go, though it may be the best. Only an explicit prune does. */
static void keep_adopted(cand *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        c[i].keep |= c[i].adopted;
}

static bool retain(cand *c, size_t n, unsigned keep_last, unsigned keep_best,
                   ckpt_metric_mode mode)
{
    cand **p = malloc((n ? n : 1) * sizeof(*p));
    if (!p)
        return false;
    for (size_t i = 0; i < n; i++) {
        c[i].keep = false;
        c[i].key = !c[i].has_metric         ? INFINITY
                   : mode == CKPT_MODE_MAX ? -c[i].metric
                                           : c[i].metric;
        p[i] = &c[i];
    }
    qsort(p, n, sizeof(*p), cmp_newest);
    for (size_t i = 0; i < n && i < keep_last; i++)
        p[i]->keep = true;
    qsort(p, n, sizeof(*p), cmp_best);
    for (size_t i = 0; i < n && i < keep_best; i++)
        p[i]->keep = true;
    free(p);
    return true;
}

/* ---- the manifest on disk ------------------------------------------------------- */

/* last or best (role 0 or 1, .pth or .dcp): the list is kept sorted, so
 * they come first. */
static const ckpt__mentry *head_entry(const ckpt__mlist *l, int role)
{
    for (size_t i = 0; i < l->count && i < 4; i++)
        if (ckpt__name_role(l->items[i].file, NULL) == role)
            return &l->items[i];
    return NULL;
}

static void marks(const ckpt_manager *m, const ckpt__mentry *e, bool *last, bool *best)
{
    const ckpt__mentry *l = head_entry(&m->mf.committed, 0);
    const ckpt__mentry *b = head_entry(&m->mf.committed, 1);
    *last = e == l || (is_numbered(e) && l && l->step >= 0 && l->step == e->step);
    *best = e == b || (is_numbered(e) && b && b->step >= 0 && b->step == e->step);
}

static ckpt_status write_manifest(ckpt_manager *m, ckpt_error *err)
{
    size_t n = m->mf.committed.count;
    bool *flags = calloc(2 * (n ? n : 1), sizeof(bool));
    if (!flags)
        return ckpt__nomem(err);
    for (size_t i = 0; i < n; i++)
        marks(m, &m->mf.committed.items[i], &flags[i], &flags[n + i]);
    char *text = ckpt__manifest_text(&m->mf, flags, flags + n);
    free(flags);
    if (!text)
        return ckpt__nomem(err);
    size_t len = strlen(text);
    if (len > m->max_manifest_bytes) {
        free(text);
        return ckpt__fail(err, CKPT_ERR_LIMIT, CKPT__MANIFEST_NAME, CKPT_NO_OFFSET,
                          "the manifest would be %zu bytes, over the limit of %" PRIu64
                          " (max_manifest_bytes)",
                          len, m->max_manifest_bytes);
    }
    char *path = join(m->dir, CKPT__MANIFEST_NAME);
    if (!path) {
        free(text);
        return ckpt__nomem(err);
    }
    ckpt__out o;
    ckpt_status st = ckpt__out_open(&o, path, m->save_flags & CKPT_SAVE_NO_FSYNC, err);
    if (st == CKPT_OK) {
        if ((st = ckpt__out_write(&o, text, len, err)) == CKPT_OK)
            st = ckpt__out_commit(&o, err); /* which removes the temporary on failure */
        else
            ckpt__out_abort(&o);
    }
    free(text);
    free(path);
    return st;
}

static ckpt_status sync_dir(ckpt_manager *m, ckpt_error *err)
{
    if (m->save_flags & CKPT_SAVE_NO_FSYNC)
        return CKPT_OK;
    char *any = join(m->dir, CKPT__MANIFEST_NAME);
    if (!any)
        return ckpt__nomem(err);
    ckpt_status st = ckpt__sync_dir_of(any, err);
    free(any);
    return st;
}

/* An entry for a file the manifest does not know: size and CRC from the
 * file, the step from a numbered name. A file that cannot be read is
 * skipped with a warning (only running out of memory is an error). */
static ckpt_status adopt(ckpt_manager *m, const char *name, ckpt_error *err)
{
    char *path = join(m->dir, name);
    if (!path)
        return ckpt__nomem(err);
    ckpt__mentry e;
    memset(&e, 0, sizeof(e));
    e.step = ckpt__numbered_step(name);
    e.time = -1;
    e.weights_only = strcmp(name, CKPT__BEST_NAME) == 0 && !(m->flags & CKPT_MANAGER_BEST_FULL);
    /* best.dcp always holds the whole checkpoint */
    ckpt_error ferr;
    ckpt_status st = file_crc(path, &e.size, &e.crc, &ferr);
    struct stat sb;
    if (st == CKPT_OK && stat(path, &sb) == 0)
        e.time = (int64_t)sb.st_mtime;
    free(path);
    if (st == CKPT_ERR_NOMEM)
        return ckpt__nomem(err);
    if (st != CKPT_OK) {
        char text[512];
        warnf(m, "skipping %s/%s: %s", m->dir, name, ckpt_error_format(&ferr, text, sizeof(text)));
        return CKPT_OK;
    }
    int64_t step = e.step;
    if (!(e.file = strdup(name)) || !ckpt__mlist_push(&m->mf.committed, &e)) {
        ckpt__mentry_free(&e);
        return ckpt__nomem(err);
    }
    if (step >= 0)
        warnf(m, "%s/%s is not in the manifest: recorded with step %lld (from its name) and no "
              "metrics", m->dir, name, (long long)step);
    else
        warnf(m, "%s/%s is not in the manifest: recorded with unknown step and no metrics",
              m->dir, name);
    return CKPT_OK;
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The names of l's entries, sorted for find_name; NULL when out of memory. */
static const char **name_index(const ckpt__mlist *l)
{
    const char **idx = malloc((l->count ? l->count : 1) * sizeof(*idx));
    if (!idx)
        return NULL;
    for (size_t i = 0; i < l->count; i++)
        idx[i] = l->items[i].file;
    qsort(idx, l->count, sizeof(*idx), cmp_name_ptr);
    return idx;
}

static bool find_name(const char *const *idx, size_t n, const char *name)
{
    return n && bsearch(&name, idx, n, sizeof(*idx), cmp_name_ptr) != NULL;
}

/*
 * Pending entries of a save that did not finish: each file that has the
 * entry's size and CRC32 was renamed into place and its entry is
 * committed; the others are dropped. Clears the pending list.
 */
static ckpt_status settle_pending(ckpt_manager *m, ckpt_error *err)
{
    ckpt__manifest *mf = &m->mf;
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < mf->pending.count && st == CKPT_OK; i++) {
        ckpt__mentry *p = &mf->pending.items[i];
        char *path = join(m->dir, p->file);
        if (!path) {
            st = ckpt__nomem(err);
            break;
        }
        uint64_t size = 0, on_disk = 0;
        uint32_t crc = 0;
        bool renamed = entry_size(path, p->file, &on_disk) && on_disk == p->size &&
                       file_crc(path, &size, &crc, NULL) == CKPT_OK && size == p->size &&
                       crc == p->crc;
        free(path);
        if (!renamed)
            continue;
        ckpt__mentry *old = ckpt__mlist_find(&mf->committed, p->file);
        if (old)
            ckpt__mlist_remove(&mf->committed, (size_t)(old - mf->committed.items));
        ckpt__mentry e = *p;
        memset(p, 0, sizeof(*p));
        if (!ckpt__mlist_push(&mf->committed, &e))
            st = ckpt__nomem(err);
    }
    ckpt__mlist_free(&mf->pending);
    sort_entries(&mf->committed);
    return st;
}

static void free_removing(ckpt__manifest *mf)
{
    for (size_t i = 0; i < mf->removing_count; i++)
        free(mf->removing[i]);
    free(mf->removing);
    mf->removing = NULL;
    mf->removing_count = 0;
}

/*
 * Brings the manifest in memory in line with the files: settles a crashed
 * save's pending entries, finishes its removals, drops entries whose file
 * is gone, re-records files that changed, adopts ours it does not know and
 * removes our temporaries. *changed says whether the manifest on disk needs
 * rewriting. In read-only mode nothing on disk changes. Lookups go through
 * sorted indexes: a manifest of many entries costs n log n, not n^2.
 */
static ckpt_status settle(ckpt_manager *m, bool *changed, ckpt_error *err)
{
    bool ro = m->flags & CKPT_MANAGER_READ_ONLY;
    ckpt__manifest *mf = &m->mf;
    if (mf->pending.count)
        *changed = true;
    CKPT_RETURN_IF_ERROR(settle_pending(m, err));

    /* entries against their files, in one compacting pass; changed files
     * are adopted again afterwards */
    char **readopt = calloc(mf->committed.count + 1, sizeof(*readopt));
    if (!readopt)
        return ckpt__nomem(err);
    size_t nre = 0, w = 0;
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < mf->committed.count; i++) {
        ckpt__mentry *e = &mf->committed.items[i];
        char *path = join(m->dir, e->file);
        if (!path) {
            st = ckpt__nomem(err);
            mf->committed.items[w++] = *e; /* kept as it is */
            continue;
        }
        struct stat sb;
        int r = stat(path, &sb);
        uint64_t on_disk = 0;
        bool kind_ok = r == 0 && entry_size(path, e->file, &on_disk);
        free(path);
        if (st == CKPT_OK && kind_ok && on_disk == e->size) {
            mf->committed.items[w++] = *e;
            continue;
        }
        if (st != CKPT_OK) {
            mf->committed.items[w++] = *e;
            continue;
        }
        *changed = true;
        if (r != 0) {
            warnf(m, "%s/%s is in the manifest but gone: dropped", m->dir, e->file);
        } else if (!kind_ok) {
            warnf(m, "%s/%s is not a regular file (or a .dcp directory): dropped", m->dir,
                  e->file);
        } else {
            warnf(m, "%s/%s changed since the manifest was written", m->dir, e->file);
            readopt[nre++] = e->file;
            e->file = NULL;
        }
        ckpt__mentry_free(e);
    }
    mf->committed.count = w;
    for (size_t i = 0; i < nre; i++) {
        if (st == CKPT_OK)
            st = adopt(m, readopt[i], err);
        free(readopt[i]);
    }
    free(readopt);
    if (st != CKPT_OK)
        return st;

    const char **known = name_index(&mf->committed);
    size_t nknown = mf->committed.count;
    if (!known)
        return ckpt__nomem(err);
    /* removals a crash interrupted (a reader takes them as done) */
    if (mf->removing_count) {
        *changed = true;
        qsort(mf->removing, mf->removing_count, sizeof(*mf->removing), cmp_name_ptr);
    }
    for (size_t i = 0; i < mf->removing_count && !ro; i++) {
        if (find_name(known, nknown, mf->removing[i]))
            continue; /* saved again since */
        char *path = join(m->dir, mf->removing[i]);
        if (!path) {
            free(known);
            return ckpt__nomem(err);
        }
        if (remove_entry(path) != 0 && errno != ENOENT)
            warnf(m, "cannot remove %s: %s", path, strerror(errno));
        free(path);
    }

    /* our files the manifest does not know; temporaries of crashed saves */
    DIR *d = opendir(m->dir);
    if (!d) {
        free(known);
        return io_fail(err, "cannot read directory", m->dir, errno);
    }
    struct dirent *de;
    while (st == CKPT_OK && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (is_our_dir_temp(n)) {
            if (!ro) {
                char *path = join(m->dir, n);
                if (path) {
                    ckpt__dir_remove(path);
                    warnf(m, "removed %s, left by an interrupted save", path);
                }
                free(path);
            }
            continue;
        }
        if (is_our_temp(n)) {
            if (!ro) {
                char *path = join(m->dir, n);
                if (path && unlink(path) == 0)
                    warnf(m, "removed %s, left by an interrupted save", path);
                free(path);
            }
            continue;
        }
        bool ours = ckpt__name_role(n, NULL) >= 0;
        if (!ours || find_name(known, nknown, n) ||
            find_name((const char *const *)mf->removing, mf->removing_count, n))
            continue;
        char *path = join(m->dir, n);
        uint64_t ignored;
        bool regular = path && entry_size(path, n, &ignored);
        free(path);
        if (regular) {
            st = adopt(m, n, err);
            *changed = true;
        }
    }
    closedir(d);
    free(known);
    free_removing(mf);
    sort_entries(&mf->committed);
    return st;
}

/* ---- open / close ------------------------------------------------------------------ */

static bool copy_opt(char **dst, const char *src)
{
    *dst = NULL;
    return !src || (*dst = strdup(src)) != NULL;
}

/* CKPT_MANAGER_EXISTING: the directory and its manifest must be there and
 * readable before anything is created or locked. */
static ckpt_status check_existing(ckpt_manager *m, ckpt_error *err)
{
    struct stat sb;
    if (stat(m->dir, &sb) != 0)
        return io_fail(err, "cannot open checkpoint directory", m->dir, errno);
    if (!S_ISDIR(sb.st_mode))
        return CKPT_INVALID_ARG(err, "%s is not a directory", m->dir);
    char *mpath = join(m->dir, CKPT__MANIFEST_NAME);
    if (!mpath)
        return ckpt__nomem(err);
    ckpt__manifest mf;
    memset(&mf, 0, sizeof(mf));
    ckpt_error merr;
    memset(&merr, 0, sizeof(merr));
    ckpt_status st = ckpt__manifest_read(mpath, m->max_manifest_bytes, &mf, &merr);
    ckpt__manifest_free(&mf);
    if (st == CKPT_ERR_NOT_FOUND) {
        st = ckpt__fail(err, CKPT_ERR_NOT_FOUND, "", CKPT_NO_OFFSET,
                        "%s has no %s: not a directory kept by the checkpoint manager", m->dir,
                        CKPT__MANIFEST_NAME);
    } else if (st == CKPT_ERR_FORMAT) {
        char text[512];
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET, "%s is unreadable: %s", mpath,
                        ckpt_error_format(&merr, text, sizeof(text)));
    } else if (st != CKPT_OK && err) {
        *err = merr;
    }
    free(mpath);
    return st;
}

ckpt_status ckpt_manager_open(const char *dir, const ckpt_manager_options *opts,
                              ckpt_manager **out, ckpt_error *err)
{
    if (!out)
        return CKPT_INVALID_ARG(err, "NULL argument");
    *out = NULL;
    if (!dir || !*dir)
        return CKPT_INVALID_ARG(err, "empty directory name");
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    ckpt__struct_in(&o, sizeof(o), opts);
    if (o.mode != CKPT_MODE_MIN && o.mode != CKPT_MODE_MAX)
        return CKPT_INVALID_ARG(err, "mode must be CKPT_MODE_MIN or CKPT_MODE_MAX");
    if (o.monitor && (!*o.monitor || !ckpt__utf8_valid(o.monitor, strlen(o.monitor), false)))
        return CKPT_INVALID_ARG(err, "monitor must be a metric name (UTF-8 text)");
    if (!o.weights_key || !*o.weights_key)
        o.weights_key = "model";
    char *user = NULL;
    if (o.user_metadata) {
        json_error_t je;
        json_t *j = json_loads(o.user_metadata, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(j)) {
            json_decref(j);
            return CKPT_INVALID_ARG(err,
                                    "user_metadata must be a JSON object%s%s", j ? "" : ": ",
                                    j ? "" : je.text);
        }
        user = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(j);
        if (!user)
            return ckpt__nomem(err);
    }
    if (o.torch_version && !ckpt__utf8_valid(o.torch_version, strlen(o.torch_version), false)) {
        free(user);
        return CKPT_INVALID_ARG(err, "torch_version must be UTF-8 text");
    }

    ckpt_manager *m = calloc(1, sizeof(*m));
    if (!m) {
        free(user);
        return ckpt__nomem(err);
    }
    m->lock_fd = -1;
    m->user_json = user;
    m->flags = o.flags;
    m->save_flags = o.save_flags;
    m->keep_last = o.keep_last;
    m->keep_best = o.keep_best;
    m->warn = o.warn;
    m->warn_user = o.warn_user;
    m->max_manifest_bytes = o.max_manifest_bytes ? o.max_manifest_bytes : CKPT__MANIFEST_MAX_BYTES;
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    ckpt_status st = CKPT_OK;
    if (!(m->dir = strndup(dir, dl)) || !copy_opt(&m->weights_key, o.weights_key) ||
        !copy_opt(&m->torch_version, o.torch_version)) {
        st = ckpt__nomem(err);
        goto fail;
    }
    bool ro = o.flags & CKPT_MANAGER_READ_ONLY;
    bool existing = o.flags & CKPT_MANAGER_EXISTING;
    struct stat sb;
    if (existing && (st = check_existing(m, err)) != CKPT_OK)
        goto fail;
    if (ro) {
        if (stat(m->dir, &sb) != 0) {
            st = io_fail(err, "cannot open checkpoint directory", m->dir, errno);
            goto fail;
        }
        if (!S_ISDIR(sb.st_mode)) {
            st = CKPT_INVALID_ARG(err, "%s is not a directory", m->dir);
            goto fail;
        }
    } else if ((st = make_dirs(m->dir, err)) != CKPT_OK || (st = take_lock(m, err)) != CKPT_OK) {
        goto fail;
    }

    char *mpath = join(m->dir, CKPT__MANIFEST_NAME);
    if (!mpath) {
        st = ckpt__nomem(err);
        goto fail;
    }
    ckpt_error merr;
    ckpt_status ms = ckpt__manifest_read(mpath, m->max_manifest_bytes, &m->mf, &merr);
    free(mpath);
    bool changed = false;
    if (existing && ms != CKPT_OK) {
        /* changed since check_existing */
        if (err)
            *err = merr;
        st = ms;
        goto fail;
    }
    if (ms != CKPT_OK && ms != CKPT_ERR_NOT_FOUND && ms != CKPT_ERR_FORMAT) {
        /* unreadable now (I/O, a limit, memory) is no reason to replace it */
        if (err)
            *err = merr;
        st = ms;
        goto fail;
    }
    if (ms == CKPT_ERR_FORMAT) {
        char text[512], kept[96] = "";
        ckpt_error_format(&merr, text, sizeof(text));
        if (!ro) {
            /* kept beside it for whoever wants to see what went wrong */
            char name[64];
            snprintf(name, sizeof(name), "%s.bad-%lld", CKPT__MANIFEST_NAME,
                     (long long)time(NULL));
            char *from = join(m->dir, CKPT__MANIFEST_NAME), *to = join(m->dir, name);
            struct stat mb;
            if (from && to && lstat(from, &mb) == 0 && S_ISREG(mb.st_mode) &&
                rename(from, to) == 0)
                snprintf(kept, sizeof(kept), " (kept as %s)", name);
            free(from);
            free(to);
        }
        warnf(m, "%s/%s is unreadable (%s)%s: %s from the files", m->dir, CKPT__MANIFEST_NAME,
              text, kept, ro ? "listing" : "rebuilt");
        memset(&m->mf, 0, sizeof(m->mf));
        changed = true;
    }
    if (o.monitor && (!m->mf.monitor || strcmp(m->mf.monitor, o.monitor) != 0 ||
                      m->mf.mode != o.mode)) {
        free(m->mf.monitor);
        if (!(m->mf.monitor = strdup(o.monitor))) {
            st = ckpt__nomem(err);
            goto fail;
        }
        m->mf.mode = o.mode;
        changed = true;
    }
    if ((st = settle(m, &changed, err)) != CKPT_OK)
        goto fail;
    const ckpt__mentry *best = head_entry(&m->mf.committed, 1);
    double bv;
    if (best && m->mf.monitor && !monitored(m, best, &bv))
        warnf(m, "%s/%s has no recorded %s: the next save with a %s replaces it", m->dir,
              CKPT__BEST_NAME, m->mf.monitor, m->mf.monitor);
    if (changed && !ro) {
        if ((st = write_manifest(m, err)) != CKPT_OK)
            goto fail;
    }
    *out = m;
    return CKPT_OK;
fail:
    ckpt_manager_close(m);
    return st;
}

void ckpt_manager_close(ckpt_manager *m)
{
    if (!m)
        return;
    ckpt__async_free(m->async);
    if (m->lock_fd >= 0)
        close(m->lock_fd); /* releases the flock */
    ckpt__manifest_free(&m->mf);
    free(m->dir);
    free(m->weights_key);
    free(m->torch_version);
    free(m->user_json);
    free(m);
}

/* ---- queries ---------------------------------------------------------------------- */

size_t ckpt_manager_count(const ckpt_manager *m)
{
    settle_async(m);
    return m ? m->mf.committed.count : 0;
}

bool ckpt_manager_get(const ckpt_manager *m, size_t i, ckpt_checkpoint_info *out)
{
    settle_async(m);
    if (!m || !out || i >= m->mf.committed.count)
        return false;
    const ckpt__mentry *e = &m->mf.committed.items[i];
    ckpt_checkpoint_info full, *info = &full;
    memset(info, 0, sizeof(*info));
    info->file = e->file;
    info->step = e->step;
    info->metrics = e->metrics;
    info->metric_count = e->metric_count;
    info->size = e->size;
    info->crc32 = e->crc;
    info->time = e->time;
    info->ckpt_version = e->ckpt_version;
    info->format_version = e->format_version;
    info->torch_version = e->torch_version;
    info->user_metadata = e->user_json;
    info->weights_only = e->weights_only;
    marks(m, e, &info->last, &info->best);
    return ckpt__struct_out(out, &full, sizeof(full));
}

const char *ckpt_manager_monitor(const ckpt_manager *m, ckpt_metric_mode *mode)
{
    if (!m || !m->mf.monitor)
        return NULL;
    if (mode)
        *mode = m->mf.mode;
    return m->mf.monitor;
}

/* ---- resume ------------------------------------------------------------------------- */

ckpt_status ckpt_manager_resume(ckpt_manager *m, const ckpt_open_options *opts, ckpt_file **out,
                                ckpt_checkpoint_info *info, ckpt_error *err)
{
    if (!m || !out)
        return CKPT_INVALID_ARG(err, "NULL argument");
    settle_async(m);
    *out = NULL;
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    ckpt__struct_in(&o, sizeof(o), opts);
    o.flags |= CKPT_OPEN_VERIFY_CRC;
    /* last.pth first, numbered files from the newest, a full best.pth last */
    size_t count = m->mf.committed.count;
    size_t *order = malloc((count ? count : 1) * sizeof(*order));
    if (!order)
        return ckpt__nomem(err);
    size_t k = 0;
    for (size_t i = 0; i < count; i++)
        if (ckpt__name_role(m->mf.committed.items[i].file, NULL) == 0)
            order[k++] = i;
    for (size_t i = count; i-- > 0;)
        if (is_numbered(&m->mf.committed.items[i]))
            order[k++] = i;
    for (size_t i = 0; i < count; i++) {
        const ckpt__mentry *e = &m->mf.committed.items[i];
        if (ckpt__name_role(e->file, NULL) == 1 && !e->weights_only)
            order[k++] = i;
    }
    ckpt_status st = CKPT_ERR_NOT_FOUND;
    for (size_t j = 0; j < k; j++) {
        const ckpt__mentry *e = &m->mf.committed.items[order[j]];
        char *path = join(m->dir, e->file);
        if (!path) {
            st = ckpt__nomem(err);
            break;
        }
        ckpt_error oerr;
        ckpt_file *f = NULL;
        uint64_t on_disk = 0;
        ckpt_status s;
        if (!entry_size(path, e->file, &on_disk)) {
            s = io_fail(&oerr, "cannot open", path, errno ? errno : ENOENT);
        } else if (on_disk != e->size) {
            s = ckpt__fail(&oerr, CKPT_ERR_CORRUPT, "", CKPT_NO_OFFSET,
                           "its size is %" PRIu64 " bytes, the manifest says %" PRIu64,
                           on_disk, e->size);
        } else {
            s = ckpt_open(path, &o, &f, &oerr);
        }
        if (s == CKPT_OK) {
            free(path);
            *out = f;
            if (info)
                ckpt_manager_get(m, order[j], info);
            st = CKPT_OK;
            break;
        }
        char text[512];
        warnf(m, "skipping %s: %s", path, ckpt_error_format(&oerr, text, sizeof(text)));
        free(path);
        if (s == CKPT_ERR_NOMEM) {
            st = ckpt__nomem(err);
            break;
        }
    }
    free(order);
    if (st == CKPT_ERR_NOT_FOUND)
        ckpt__fail(err, CKPT_ERR_NOT_FOUND, "", CKPT_NO_OFFSET,
                   k ? "no checkpoint in %s verifies" : "no checkpoint in %s to resume from",
                   m->dir);
    return st;
}

/* ---- save ---------------------------------------------------------------------------- */

/* The weights of a checkpoint, for best.pth. */
static ckpt_status weights_of(const ckpt_manager *m, const ckpt_value *root,
                              const ckpt_value **out, ckpt_error *err)
{
    ckpt_kind k = ckpt_value_kind(root);
    if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
        const ckpt_value *w = ckpt_value_get(root, m->weights_key);
        if (w) {
            *out = w;
            return CKPT_OK;
        }
        bool all_tensors = ckpt_value_len(root) > 0;
        for (size_t i = 0; all_tensors && i < ckpt_value_len(root); i++)
            all_tensors = ckpt_value_kind(ckpt_value_dict_value(root, i)) == CKPT_KIND_TENSOR;
        if (all_tensors) {
            *out = root; /* a state dict */
            return CKPT_OK;
        }
    }
    return CKPT_INVALID_ARG(err,
                            "the checkpoint has no \"%s\" entry to save as best.pth's weights "
                            "(set weights_key, or CKPT_MANAGER_BEST_FULL)",
                            m->weights_key);
}

/* A temporary name beside target for a hard link, made with O_EXCL
 * semantics by link() itself. */
static ckpt_status link_stage(const ckpt__staged *src, const char *target, ckpt__staged *dst,
                              ckpt_error *err)
{
    memset(dst, 0, sizeof(*dst));
    const char *slash = strrchr(target, '/');
    size_t dir_len = slash ? (size_t)(slash - target + 1) : 0;
    size_t cap = strlen(target) + 64;
    char *tmp = malloc(cap);
    char *path = strdup(target);
    if (!tmp || !path) {
        free(tmp);
        free(path);
        return ckpt__nomem(err);
    }
    int e = 0;
    for (unsigned attempt = 0; attempt < 100; attempt++) {
        snprintf(tmp, cap, "%.*s.%s.tmp-%ld-l%x", (int)dir_len, target, target + dir_len,
                 (long)getpid(), attempt);
        if (link(src->tmp_path, tmp) == 0) {
            dst->path = path;
            dst->tmp_path = tmp;
            dst->size = src->size;
            dst->crc = src->crc;
            return CKPT_OK;
        }
        e = errno;
        if (e != EEXIST)
            break;
    }
    free(tmp);
    free(path);
    return io_fail(err, "cannot link a temporary file beside", target, e);
}

enum { STAGE_LAST, STAGE_BEST, STAGE_NUMBERED, STAGE_COUNT };

static ckpt_status fill_entry(const ckpt_manager *m, ckpt__mentry *e, const char *file,
                              int64_t step, const ckpt_metric *metrics, size_t count,
                              const ckpt__staged *s, bool weights_only, int64_t now)
{
    memset(e, 0, sizeof(*e));
    e->step = step;
    e->size = s->size;
    e->crc = s->crc;
    e->time = now;
    e->format_version = 3;
    e->weights_only = weights_only;
    bool ok = copy_opt(&e->file, file) && copy_opt(&e->ckpt_version, ckpt_version()) &&
              copy_opt(&e->torch_version, m->torch_version) &&
              copy_opt(&e->user_json, m->user_json);
    if (ok && count) {
        ok = (e->metrics = calloc(count, sizeof(*e->metrics))) != NULL;
        for (size_t i = 0; ok && i < count; i++) {
            e->metrics[i].value = metrics[i].value;
            ok = (e->metrics[i].name = strdup(metrics[i].name)) != NULL;
            e->metric_count = i + 1;
        }
    }
    if (!ok) {
        ckpt__mentry_free(e);
        return CKPT_ERR_NOMEM;
    }
    return CKPT_OK;
}

/* Removes the numbered entries not kept from the manifest in memory,
 * listing their files as "removing". */
static ckpt_status drop_unkept(ckpt_manager *m, const cand *c, size_t *removed, ckpt_error *err)
{
    ckpt__manifest *mf = &m->mf;
    size_t k = 0, drop = 0;
    for (size_t i = 0; i < mf->committed.count; i++)
        if (is_numbered(&mf->committed.items[i]) && !c[k++].keep)
            drop++;
    *removed = drop;
    if (!drop)
        return CKPT_OK;
    /* names still listed (a failed manifest write) stay listed */
    size_t j = mf->removing_count;
    char **names = realloc(mf->removing, (j + drop) * sizeof(*names));
    if (!names)
        return ckpt__nomem(err);
    mf->removing = names;
    k = 0;
    size_t w = 0; /* one compacting pass */
    for (size_t i = 0; i < mf->committed.count; i++) {
        ckpt__mentry *e = &mf->committed.items[i];
        if (is_numbered(e) && !c[k++].keep) {
            names[j++] = e->file;
            e->file = NULL;
            ckpt__mentry_free(e);
        } else {
            mf->committed.items[w++] = *e;
        }
    }
    mf->committed.count = w;
    mf->removing_count = j;
    return CKPT_OK;
}

/* Removes the files listed as "removing" (the manifest that lists them is
 * committed), then commits a manifest without the list. */
static ckpt_status finish_removals(ckpt_manager *m, ckpt_error *err)
{
    if (!m->mf.removing_count)
        return CKPT_OK;
    const char **known = name_index(&m->mf.committed);
    if (!known)
        return ckpt__nomem(err);
    for (size_t i = 0; i < m->mf.removing_count; i++) {
        if (find_name(known, m->mf.committed.count, m->mf.removing[i]))
            continue; /* listed by a manifest write that failed, saved again since */
        char *path = join(m->dir, m->mf.removing[i]);
        if (path && remove_entry(path) != 0 && errno != ENOENT)
            warnf(m, "cannot remove %s: %s", path, strerror(errno));
        free(path);
    }
    free(known);
    free_removing(&m->mf);
    /* the manifest's own rename syncs the directory, removals included */
    return write_manifest(m, err);
}

/* Retention candidates: the numbered entries in manifest order, plus one
 * for a new step when new_step >= 0 (last in the array, and replacing an
 * entry of the same step). */
static cand *candidates(const ckpt_manager *m, int64_t new_step, const ckpt_metric *metrics,
                        size_t metric_count, size_t *n)
{
    size_t count = 0;
    for (size_t i = 0; i < m->mf.committed.count; i++)
        count += is_numbered(&m->mf.committed.items[i]);
    cand *c = calloc(count + 1, sizeof(*c));
    if (!c)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < m->mf.committed.count; i++) {
        const ckpt__mentry *e = &m->mf.committed.items[i];
        if (!is_numbered(e) || (new_step >= 0 && e->step == new_step))
            continue; /* a numbered file of the new step is replaced, not a rival */
        c[k].step = e->step;
        c[k].has_metric = monitored(m, e, &c[k].metric);
        c[k].adopted = !c[k].has_metric && !e->ckpt_version;
        k++;
    }
    if (new_step >= 0) {
        c[k].step = new_step;
        for (size_t i = 0; m->mf.monitor && i < metric_count; i++)
            if (strcmp(metrics[i].name, m->mf.monitor) == 0 && !isnan(metrics[i].value)) {
                c[k].has_metric = true;
                c[k].metric = metrics[i].value;
            }
        k++;
    }
    *n = k;
    return c;
}

/* After the renames of a save: its pending entries replace the old ones,
 * retention drops numbered files, the manifest is committed, then the
 * dropped files are removed. */
static ckpt_status finish_save(ckpt_manager *m, bool improved, bool numbered, unsigned *saved,
                               ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    /* committed in memory: pending entries replace the old ones */
    ckpt__manifest *mf = &m->mf;
    while (mf->pending.count) {
        ckpt__mentry *p = &mf->pending.items[0];
        ckpt__mentry *old = ckpt__mlist_find(&mf->committed, p->file);
        if (old)
            ckpt__mlist_remove(&mf->committed, (size_t)(old - mf->committed.items));
        ckpt__mentry e = *p;
        memset(p, 0, sizeof(*p));
        ckpt__mlist_remove(&mf->pending, 0);
        if (!ckpt__mlist_push(&mf->committed, &e)) {
            ckpt__mlist_free(&mf->pending);
            return ckpt__nomem(err);
        }
    }
    ckpt__mlist_free(&mf->pending);
    sort_entries(&mf->committed);

    /* retention, then the manifest; files go only after it is committed */
    size_t removed = 0;
    if (m->keep_last || m->keep_best) {
        size_t n;
        cand *c = candidates(m, -1, NULL, 0, &n);
        if (!c)
            return ckpt__nomem(err);
        if (!retain(c, n, m->keep_last, m->keep_best, mf->mode)) {
            st = ckpt__nomem(err);
        } else {
            keep_adopted(c, n);
            st = drop_unkept(m, c, &removed, err);
        }
        free(c);
        if (st != CKPT_OK)
            return st;
    }
    st = write_manifest(m, err);
    hook("committed");
    if (st == CKPT_OK)
        st = finish_removals(m, err);
    if (st == CKPT_OK && saved)
        *saved = CKPT_SAVED_LAST | (improved ? CKPT_SAVED_BEST : 0) |
                 (numbered ? CKPT_SAVED_NUMBERED : 0);
    return st;
}

/* Every metric has a UTF-8 name, given once. */
static ckpt_status check_metric_names(const ckpt_metric *metrics, size_t metric_count,
                                      ckpt_error *err)
{
    for (size_t i = 0; i < metric_count; i++) {
        const char *n = metrics[i].name;
        if (!n || !*n || !ckpt__utf8_valid(n, strlen(n), false))
            return CKPT_INVALID_ARG(err,
                                    "metric %zu has no name (or one that is not UTF-8 text)", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(metrics[j].name, n) == 0)
                return CKPT_INVALID_ARG(err, "metric %s is given twice", n);
    }
    return CKPT_OK;
}

/* What a save of step writes besides last: best when the monitored metric
 * improves, the numbered file (with extension ext) when retention keeps
 * it; the metrics are checked. */
static ckpt_status plan_save(ckpt_manager *m, int64_t step, const ckpt_metric *metrics,
                             size_t metric_count, const char *ext, bool *improved,
                             bool *numbered, char *numbered_name, size_t name_cap,
                             ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(check_metric_names(metrics, metric_count, err));
    /* best.pth: does this save improve the monitored metric? */
    *improved = false;
    const char *monitor = m->mf.monitor;
    if (monitor) {
        const ckpt_metric *v = NULL;
        for (size_t i = 0; i < metric_count; i++)
            if (strcmp(metrics[i].name, monitor) == 0)
                v = &metrics[i];
        if (!v)
            return CKPT_INVALID_ARG(err,
                                    "the monitored metric %s is not among this save's metrics",
                                    monitor);
        const ckpt__mentry *b = head_entry(&m->mf.committed, 1);
        double bv;
        *improved = !isnan(v->value) &&
                   (!b || !monitored(m, b, &bv) || better(m->mf.mode, v->value, bv));
    }

    /* numbered: written only when retention keeps it */
    *numbered = false;
    if (m->keep_last || m->keep_best) {
        if (!ckpt__numbered_name_ext(step, ext, numbered_name, name_cap))
            return CKPT_INVALID_ARG(err, "step too large");
        size_t n;
        cand *c = candidates(m, step, metrics, metric_count, &n);
        if (!c)
            return ckpt__nomem(err);
        if (!retain(c, n, m->keep_last, m->keep_best, m->mf.mode)) {
            free(c);
            return ckpt__nomem(err);
        }
        *numbered = c[n - 1].keep;
        free(c);
    }

    return CKPT_OK;
}

ckpt_status ckpt_manager_save(ckpt_manager *m, int64_t step, const ckpt_value *checkpoint,
                              const ckpt_metric *metrics, size_t metric_count, unsigned *saved,
                              ckpt_error *err)
{
    if (saved)
        *saved = 0;
    if (!m || !checkpoint || (metric_count && !metrics))
        return CKPT_INVALID_ARG(err, "NULL argument");
    /* a save in the background first, and its failure reported here */
    CKPT_RETURN_IF_ERROR(ckpt__async_settle(m->async, true, NULL, err));
    return ckpt__manager_save_now(m, step, checkpoint, metrics, metric_count, saved, err);
}

ckpt_status ckpt__manager_save_check(const ckpt_manager *m, int64_t step,
                                     const ckpt_metric *metrics, size_t metric_count,
                                     ckpt_error *err)
{
    if (m->flags & CKPT_MANAGER_READ_ONLY)
        return CKPT_INVALID_ARG(err, "the manager of %s is read-only", m->dir);
    if (step < 0)
        return CKPT_INVALID_ARG(err, "step must be >= 0 (got %" PRId64 ")", step);
    CKPT_RETURN_IF_ERROR(check_metric_names(metrics, metric_count, err));
    const char *monitor = m->mf.monitor;
    if (monitor) {
        bool found = false;
        for (size_t i = 0; i < metric_count; i++)
            found = found || strcmp(metrics[i].name, monitor) == 0;
        if (!found)
            return CKPT_INVALID_ARG(err,
                                    "the monitored metric %s is not among this save's metrics",
                                    monitor);
    }
    return CKPT_OK;
}

ckpt_status ckpt__manager_save_now(ckpt_manager *m, int64_t step, const ckpt_value *checkpoint,
                                   const ckpt_metric *metrics, size_t metric_count,
                                   unsigned *saved, ckpt_error *err)
{
    if (saved)
        *saved = 0;
    if (m->flags & CKPT_MANAGER_READ_ONLY)
        return CKPT_INVALID_ARG(err, "the manager of %s is read-only", m->dir);
    if (step < 0)
        return CKPT_INVALID_ARG(err, "step must be >= 0 (got %" PRId64 ")", step);
    bool improved = false, numbered = false;
    char numbered_name[64];
    CKPT_RETURN_IF_ERROR(plan_save(m, step, metrics, metric_count, ".pth", &improved, &numbered,
                                   numbered_name, sizeof(numbered_name), err));
    const ckpt_value *weights = checkpoint;
    bool best_full = m->flags & CKPT_MANAGER_BEST_FULL;
    if (improved && !best_full)
        CKPT_RETURN_IF_ERROR(weights_of(m, checkpoint, &weights, err));

    const char *names[STAGE_COUNT] = {CKPT__LAST_NAME, CKPT__BEST_NAME, numbered_name};
    bool want[STAGE_COUNT] = {true, improved, numbered};
    ckpt__staged stage[STAGE_COUNT];
    memset(stage, 0, sizeof(stage));
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    so.flags = m->save_flags & CKPT_SAVE_NO_FSYNC;
    ckpt_status st = CKPT_OK;
    char *path = NULL;
    for (int i = 0; i < STAGE_COUNT && st == CKPT_OK; i++) {
        if (!want[i])
            continue;
        free(path);
        if (!(path = join(m->dir, names[i]))) {
            st = ckpt__nomem(err);
            break;
        }
        /* numbered and full best files have last's bytes: a second name for
         * the same finished file costs nothing */
        bool same = i == STAGE_NUMBERED || (i == STAGE_BEST && best_full);
        if (same && (st = link_stage(&stage[STAGE_LAST], path, &stage[i], err)) == CKPT_OK)
            continue;
        if (same && st != CKPT_ERR_IO)
            break;
        st = ckpt__save_torch_ex(path, i == STAGE_BEST ? weights : checkpoint, &so,
                                 CKPT__ZIP64_THRESHOLD, &stage[i], err);
        hook("staged");
    }
    free(path);

    int64_t now = (int64_t)time(NULL);
    /* the manifest names them pending before any is renamed */
    for (int i = 0; i < STAGE_COUNT && st == CKPT_OK; i++) {
        if (!want[i])
            continue;
        ckpt__mentry e;
        if (fill_entry(m, &e, names[i], step, metrics, metric_count, &stage[i],
                       i == STAGE_BEST && !best_full, now) != CKPT_OK ||
            !ckpt__mlist_push(&m->mf.pending, &e))
            st = ckpt__nomem(err);
    }
    if (st == CKPT_OK)
        st = write_manifest(m, err);
    if (st != CKPT_OK) {
        for (int i = 0; i < STAGE_COUNT; i++)
            ckpt__staged_discard(&stage[i]);
        ckpt__mlist_free(&m->mf.pending);
        return st;
    }
    hook("pending");

    /* into place: best and numbered before last, so last.pth never names a
     * save whose other files are still temporaries */
    static const int publish_order[STAGE_COUNT] = {STAGE_BEST, STAGE_NUMBERED, STAGE_LAST};
    for (int j = 0; j < STAGE_COUNT; j++) {
        int i = publish_order[j];
        if (!want[i])
            continue;
        if (st == CKPT_OK) {
            st = ckpt__staged_publish(&stage[i], err);
            hook("renamed");
        }
        ckpt__staged_discard(&stage[i]);
    }
    if (st == CKPT_OK)
        st = sync_dir(m, err);
    if (st != CKPT_OK) {
        /* some files may be in place: the ones with their pending size and
         * CRC32 are committed in memory, and on disk if the manifest can
         * still be written (else the next open settles the same way) */
        settle_pending(m, NULL);
        write_manifest(m, NULL);
        return st;
    }

    return finish_save(m, improved, numbered, saved, err);
}

ckpt_status ckpt_manager_plan_prune(const ckpt_manager *m, unsigned keep_last,
                                    unsigned keep_best, bool *keep, ckpt_error *err)
{
    settle_async(m);
    if (!m || (!keep && m->mf.committed.count))
        return CKPT_INVALID_ARG(err, "NULL argument");
    size_t n;
    cand *c = candidates(m, -1, NULL, 0, &n);
    if (!c || !retain(c, n, keep_last, keep_best, m->mf.mode)) {
        free(c);
        return ckpt__nomem(err);
    }
    size_t k = 0;
    for (size_t i = 0; i < m->mf.committed.count; i++)
        keep[i] = is_numbered(&m->mf.committed.items[i]) ? c[k++].keep : true;
    free(c);
    return CKPT_OK;
}

ckpt_status ckpt_manager_prune(ckpt_manager *m, unsigned keep_last, unsigned keep_best,
                               size_t *removed, ckpt_error *err)
{
    if (removed)
        *removed = 0;
    settle_async(m);
    if (!m)
        return CKPT_INVALID_ARG(err, "NULL argument");
    if (m->flags & CKPT_MANAGER_READ_ONLY)
        return CKPT_INVALID_ARG(err, "the manager of %s is read-only", m->dir);
    size_t n, count = 0;
    cand *c = candidates(m, -1, NULL, 0, &n);
    if (!c)
        return ckpt__nomem(err);
    ckpt_status st = retain(c, n, keep_last, keep_best, m->mf.mode)
                         ? drop_unkept(m, c, &count, err)
                         : ckpt__nomem(err);
    free(c);
    if (st != CKPT_OK)
        return st;
    if (!count)
        return CKPT_OK;
    if ((st = write_manifest(m, err)) != CKPT_OK || (st = finish_removals(m, err)) != CKPT_OK)
        return st;
    if (removed)
        *removed = count;
    return CKPT_OK;
}

/* ---- directory checkpoints (DCP) ------------------------------------------------ */

typedef struct dcp_commit {
    ckpt_manager *m;
    int64_t step;
    const ckpt_metric *metrics;
    size_t metric_count;
    bool improved, numbered;
    const char *numbered_name;
} dcp_commit;

/* A directory of hard links to the files of src, beside target, synced;
 * *out (malloc'd) gets its path. */
static ckpt_status link_dir(const char *src, const char *target, bool sync, char **out,
                            ckpt_error *err)
{
    size_t cap = strlen(target) + 64;
    char *tmp = malloc(cap);
    if (!tmp)
        return ckpt__nomem(err);
    snprintf(tmp, cap, "%s.tmp-%ld-l%lx", target, (long)getpid(), (unsigned long)time(NULL));
    if (mkdir(tmp, 0777) != 0) {
        ckpt_status st = io_fail(err, "cannot create", tmp, errno);
        free(tmp);
        return st;
    }
    DIR *d = opendir(src);
    int tfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ckpt_status st = CKPT_OK;
    if (!d || tfd < 0)
        st = io_fail(err, "cannot open", d ? tmp : src, errno);
    struct dirent *de;
    while (st == CKPT_OK && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (linkat(dirfd(d), de->d_name, tfd, de->d_name, 0) != 0)
            st = io_fail(err, "cannot link into", tmp, errno);
    }
    if (st == CKPT_OK && sync && fsync(tfd) != 0)
        st = io_fail(err, "cannot sync", tmp, errno);
    if (d)
        closedir(d);
    if (tfd >= 0)
        close(tfd);
    if (st != CKPT_OK) {
        ckpt__dir_remove(tmp);
        free(tmp);
        return st;
    }
    *out = tmp;
    return CKPT_OK;
}

/* Run by ckpt_dcp_save on the coordinator when the new last.dcp is complete
 * beside its place: best.dcp and the numbered directory become hard-link
 * copies of it, the manifest names all of them pending, and best and
 * numbered go into place before last does (as ckpt_manager_save orders its
 * renames). */
static ckpt_status dcp_before_swap(void *user, const char *tmp, ckpt_error *err)
{
    dcp_commit *c = user;
    ckpt_manager *m = c->m;
    bool sync = !(m->save_flags & CKPT_SAVE_NO_FSYNC);
    ckpt__staged stage;
    memset(&stage, 0, sizeof(stage));
    CKPT_RETURN_IF_ERROR(file_crc(tmp, &stage.size, &stage.crc, err));
    const char *names[STAGE_COUNT] = {CKPT__DCP_LAST_NAME, CKPT__DCP_BEST_NAME, c->numbered_name};
    bool want[STAGE_COUNT] = {true, c->improved, c->numbered};
    char *copies[STAGE_COUNT] = {NULL, NULL, NULL};
    ckpt_status st = CKPT_OK;
    for (int i = 1; i < STAGE_COUNT && st == CKPT_OK; i++) {
        if (!want[i])
            continue;
        char *target = join(m->dir, names[i]);
        st = target ? link_dir(tmp, target, sync, &copies[i], err) : ckpt__nomem(err);
        free(target);
    }
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < STAGE_COUNT && st == CKPT_OK; i++) {
        if (!want[i])
            continue;
        ckpt__mentry e;
        if (fill_entry(m, &e, names[i], c->step, c->metrics, c->metric_count, &stage, false,
                       now) != CKPT_OK ||
            !ckpt__mlist_push(&m->mf.pending, &e))
            st = ckpt__nomem(err);
        else
            m->mf.pending.items[m->mf.pending.count - 1].format_version = 0;
    }
    if (st == CKPT_OK)
        st = write_manifest(m, err);
    if (st == CKPT_OK)
        hook("pending");
    for (int i = 1; i < STAGE_COUNT; i++) {
        if (!copies[i])
            continue;
        if (st == CKPT_OK) {
            char *target = join(m->dir, names[i]);
            size_t cap = target ? strlen(target) + 64 : 0;
            char *old = target ? malloc(cap) : NULL;
            st = old ? ckpt__dir_swap_in(copies[i], target, old, cap, err) : ckpt__nomem(err);
            if (st == CKPT_OK && old[0])
                ckpt__dir_remove(old);
            free(old);
            free(target);
            if (st == CKPT_OK) {
                hook("renamed");
                continue;
            }
        }
        ckpt__dir_remove(copies[i]);
    }
    for (int i = 0; i < STAGE_COUNT; i++)
        free(copies[i]);
    if (st != CKPT_OK) {
        /* what is in place is recorded as the next open would */
        settle_pending(m, NULL);
        write_manifest(m, NULL);
    }
    return st;
}

ckpt_status ckpt_manager_save_dcp(ckpt_manager *m, const char *dir, int64_t step,
                                  const ckpt_value *state_dict, const ckpt_dcp_save_options *opts,
                                  const ckpt_metric *metrics, size_t metric_count,
                                  unsigned *saved, ckpt_error *err)
{
    if (saved)
        *saved = 0;
    if (!dir && m)
        dir = m->dir;
    if (!dir || !state_dict)
        return CKPT_INVALID_ARG(err, "ckpt_manager_save_dcp needs the managed directory");
    /* an error found here still takes part in the collective save, which
     * then fails on every rank */
    ckpt_error pre;
    memset(&pre, 0, sizeof(pre));
    char numbered_name[64] = "";
    dcp_commit c = {m, step, metrics, metric_count, false, false, numbered_name};
    if (m) {
        if (m->flags & CKPT_MANAGER_READ_ONLY)
            pre.status = CKPT_INVALID_ARG(&pre, "the manager of %s is read-only", m->dir);
        else if (step < 0)
            pre.status = CKPT_INVALID_ARG(&pre, "step must be >= 0 (got %" PRId64 ")", step);
        else if (metric_count && !metrics)
            pre.status = CKPT_INVALID_ARG(&pre, "NULL metrics");
        else
            pre.status = plan_save(m, step, metrics, metric_count, ".dcp", &c.improved,
                                   &c.numbered, numbered_name, sizeof(numbered_name), &pre);
    }
    char *last = join(dir, CKPT__DCP_LAST_NAME);
    if (!last)
        return ckpt__nomem(err);
    ckpt_status st = ckpt__dcp_save_ex(last, state_dict, opts, &pre, m ? dcp_before_swap : NULL,
                                       &c, err);
    free(last);
    if (!m)
        return st;
    if (st != CKPT_OK) {
        if (m->mf.pending.count) {
            settle_pending(m, NULL);
            write_manifest(m, NULL);
        }
        return st;
    }
    if ((st = sync_dir(m, err)) != CKPT_OK) {
        settle_pending(m, NULL);
        write_manifest(m, NULL);
        return st;
    }
    return finish_save(m, c.improved, c.numbered, saved, err);
}

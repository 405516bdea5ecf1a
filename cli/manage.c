/*
 * manage.c - ckpt ls and ckpt prune: a checkpoint directory kept by the
 * manager (ckpt_manager_*), listed or trimmed from the shell.
 *
 * ls opens the directory read-only: no lock is taken and nothing is
 * settled or removed, so it is safe while a training run saves into it.
 * prune takes the lock like a training run would, so the two never race;
 * its --dry-run opens read-only too and computes what would go with the
 * rule ckpt_manager_prune documents.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *PROG = "ckpt";

/* ---- shared --------------------------------------------------------------- */

enum { OPT_JSON = CLI_OPT_LONG, OPT_KEEP, OPT_KEEP_BEST, OPT_DRY_RUN };

static const struct option ls_options[] = {
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command ls_command = {"ls", "ckpt ls DIR [--json]", "h", ls_options};

static const struct option prune_options[] = {
    {"keep", required_argument, NULL, OPT_KEEP},
    {"keep-best", required_argument, NULL, OPT_KEEP_BEST},
    {"dry-run", no_argument, NULL, OPT_DRY_RUN},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command prune_command = {
    "prune", "ckpt prune DIR --keep N [--keep-best N] [--dry-run] [-q]", "hq", prune_options,
};

static void ls_usage(FILE *out)
{
    fprintf(out,
            "usage: %s\n"
            "  Lists a checkpoint directory kept by the checkpoint manager: each file with\n"
            "  its step, size, metrics, time and whether it is last.pth (the newest save),\n"
            "  best.pth (the best by the monitored metric) or holds only weights, then the\n"
            "  checkpoint files the manager did not write (step -, flag foreign). Read-only:\n"
            "  takes no lock and changes nothing, so it may run beside a training run.\n"
            "  --json   one JSON object: directory, monitor, mode, checkpoints (file, step,\n"
            "           metrics, best, last, size, crc32, time, versions, user, content)\n"
            "  exit 0 listed, 2 the directory cannot be read\n",
            ls_command.synopsis);
}

static void prune_usage(FILE *out)
{
    fprintf(out,
            "usage: %s\n"
            "  Removes the numbered checkpoints (step-NNNNNNNN.pth) of a directory kept by\n"
            "  the checkpoint manager, but the newest N by step and the N best by the\n"
            "  monitored metric. last.pth and best.pth always stay. The manifest is\n"
            "  committed before any file goes. Takes the directory's lock: fails while a\n"
            "  training run manages it.\n"
            "  --keep N       numbered checkpoints to keep, newest first (required)\n"
            "  --keep-best N  also keep the N best by the monitored metric (default 0)\n"
            "  --dry-run      print 'would remove FILE' lines and change nothing\n"
            "  -q, --quiet    do not print how many files went\n"
            "  A directory without a readable manifest.json is refused, left as it is.\n"
            "  exit 0 done, 2 error (the directory cannot be read, has no readable\n"
            "  manifest, another process manages it, a bad option)\n",
            prune_command.synopsis);
}

/* The manager's warnings, gathered during the open and printed sorted:
 * the order the directory is read in is no order. */
typedef struct warnings {
    cli_vec lines;              /* char * */
    bool nomem;
} warnings;

static void warn_collect(void *user, const char *message)
{
    warnings *w = user;
    char **slot = cli_vec_push(&w->lines);
    if (!slot || !(*slot = strdup(message))) {
        if (slot)
            w->lines.len--;
        /* said as it comes rather than not at all */
        fprintf(stderr, "%s: warning: %s\n", PROG, message);
        w->nomem = true;
    }
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void warnings_flush(warnings *w)
{
    char **v = w->lines.p;
    if (w->lines.len)
        qsort(v, w->lines.len, sizeof(*v), cmp_str_ptr);
    for (size_t i = 0; i < w->lines.len; i++) {
        fprintf(stderr, "%s: warning: %s\n", PROG, v[i]);
        free(v[i]);
    }
    free(v);
    memset(w, 0, sizeof(*w));
    w->lines.esize = sizeof(char *);
}

/* The manager creates a missing directory unless it is read-only: a typo
 * in DIR must be an error, not a new empty directory, whichever way the
 * command opens it. */
static bool check_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        fprintf(stderr, "%s: %s: %s\n", PROG, dir, strerror(errno));
        return false;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: %s: not a directory\n", PROG, dir);
        return false;
    }
    return true;
}

static ckpt_manager *open_manager(const char *cmd, const char *dir, unsigned flags)
{
    warnings w = {.lines = {.esize = sizeof(char *)}};
    ckpt_manager_options mo;
    ckpt_manager_options_default(&mo);
    mo.flags |= flags;
    mo.warn = warn_collect;
    mo.warn_user = &w;
    ckpt_manager *m = NULL;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_manager_open(dir, &mo, &m, &err);
    warnings_flush(&w);
    if (st == CKPT_OK)
        return m;
    if ((flags & CKPT_MANAGER_EXISTING) &&
        (st == CKPT_ERR_NOT_FOUND || st == CKPT_ERR_FORMAT || st == CKPT_ERR_UNSUPPORTED)) {
        /* nothing was created or changed: say so, and why */
        char msg[768];
        fprintf(stderr, "%s: %s: %s; refusing to %s it (nothing changed)\n", PROG, cmd,
                ckpt_error_format(&err, msg, sizeof(msg)), cmd);
    } else if (st == CKPT_ERR_BUSY) {
        char msg[768];
        fprintf(stderr, "%s: %s: busy: %s\n", PROG, dir,
                ckpt_error_format(&err, msg, sizeof(msg)));
    } else {
        cli_print_error(dir, &err);
    }
    return NULL;
}

/* The value of a metric of an entry; false when the entry lacks it. */
static bool find_metric(const ckpt_checkpoint_info *ci, const char *name, double *value)
{
    for (size_t k = 0; k < ci->metric_count; k++) {
        if (ci->metrics[k].name && strcmp(ci->metrics[k].name, name) == 0) {
            *value = ci->metrics[k].value;
            return true;
        }
    }
    return false;
}

/* "2026-11-28 15:20:51" (iso false) or "2026-11-28T15:20:51Z"; false when
 * the time is unknown or out of range. */
static bool time_text(int64_t t, bool iso, char *buf, size_t size)
{
    if (t < 0 || (int64_t)(time_t)t != t)
        return false;
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm))
        return false;
    return strftime(buf, size, iso ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%d %H:%M:%S", &tm) > 0;
}

/* The entries of an open manager, copied out so that they can be sorted
 * and looked at together. */
typedef struct listing {
    ckpt_checkpoint_info *items;
    size_t count;
    size_t managed;             /* items before it are the manager's */
    const char **formats;       /* of each foreign item (index - managed) */
    char **names;               /* their names, owned */
} listing;

static void free_listing(listing *l)
{
    for (size_t i = l->managed; i < l->count; i++)
        free(l->names[i - l->managed]);
    free(l->items);
    free(l->formats);
    free(l->names);
    memset(l, 0, sizeof(*l));
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool listed(const listing *l, const char *name)
{
    for (size_t i = 0; i < l->managed; i++)
        if (strcmp(l->items[i].file, name) == 0)
            return true;
    return false;
}

/* A file of DIR the manager does not list that holds a checkpoint (by its
 * content, opened as inspect --permissive opens it: nothing runs): its
 * format's name, or NULL. */
static const char *foreign_format(const char *path)
{
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= CKPT_OPEN_PERMISSIVE;
    ckpt_file *f;
    ckpt_error err;
    if (ckpt_open(path, &oo, &f, &err) != CKPT_OK)
        return NULL;
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    ckpt_close(f);
    return ckpt_format_name(fi.format);
}

/* Appends, sorted by name, the checkpoint files of DIR the manager did not
 * write (Lightning's epoch=3-step=100.ckpt, a Hugging Face model, an
 * extra.pth): listed read-only with unknown step. Hidden files and the
 * manifest are left out. */
static bool load_foreign(const char *dir, listing *l)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "%s: %s: %s\n", PROG, dir, strerror(errno));
        return false;
    }
    cli_vec names = {.esize = sizeof(char *)};
    bool ok = true;
    struct dirent *de;
    while (ok && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (n[0] == '.' || strncmp(n, "manifest.json", 13) == 0 || listed(l, n))
            continue;
        char **slot = cli_vec_push(&names);
        if (!slot || !(*slot = strdup(n))) {
            if (slot)
                names.len--;
            ok = false;
        }
    }
    closedir(d);
    char **v = names.p;
    if (ok && names.len) {
        qsort(v, names.len, sizeof(*v), cmp_name);
        ckpt_checkpoint_info *items = realloc(l->items, (l->count + names.len) * sizeof(*items));
        const char **formats = calloc(names.len, sizeof(*formats));
        char **owned = calloc(names.len, sizeof(*owned));
        if (items)
            l->items = items;
        if (!items || !formats || !owned) {
            free(formats);
            free(owned);
            ok = false;
        } else {
            l->formats = formats;
            l->names = owned;
        }
    }
    for (size_t i = 0; i < names.len; i++) {
        char *path = NULL;
        struct stat sb;
        const char *format = NULL;
        if (ok && (path = malloc(strlen(dir) + strlen(v[i]) + 2)) != NULL) {
            sprintf(path, "%s/%s", dir, v[i]);
            if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
                format = foreign_format(path);
        } else {
            ok = false;
        }
        free(path);
        if (!format) {
            free(v[i]);
            continue;
        }
        ckpt_checkpoint_info *ci = &l->items[l->count];
        memset(ci, 0, sizeof(*ci));
        ci->struct_size = sizeof(*ci);
        ci->file = v[i];
        ci->step = -1;
        ci->size = (uint64_t)sb.st_size;
        ci->time = (int64_t)sb.st_mtime;
        l->formats[l->count - l->managed] = format;
        l->names[l->count - l->managed] = v[i];
        l->count++;
    }
    free(v);
    if (!ok)
        fprintf(stderr, "%s: out of memory\n", PROG);
    return ok;
}

static bool load_listing(const ckpt_manager *m, listing *l)
{
    l->count = ckpt_manager_count(m);
    l->items = calloc(l->count ? l->count : 1, sizeof(*l->items));
    if (!l->items) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return false;
    }
    size_t n = 0;
    for (size_t i = 0; i < l->count; i++) {
        l->items[n].struct_size = sizeof(l->items[n]);
        if (ckpt_manager_get(m, i, &l->items[n]))
            n++;
    }
    l->count = l->managed = n;
    return true;
}

/* ---- ls ----------------------------------------------------------------- */

/* Metric names over all entries, in first-seen order, at most
 * MAX_METRIC_COLUMNS of them (more make no table; --json has them all).
 * The names point into the manager's entries. */
#define MAX_METRIC_COLUMNS 16

typedef struct name_set {
    const char **names;
    size_t count;
    size_t more;                /* names beyond MAX_METRIC_COLUMNS */
} name_set;

typedef struct seen_name {
    const char *name;
    size_t first;               /* position of its first appearance */
} seen_name;

static int cmp_seen_name(const void *a, const void *b)
{
    const seen_name *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->first < y->first ? -1 : x->first > y->first;
}

static int cmp_seen_first(const void *a, const void *b)
{
    const seen_name *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Sorting, not pairwise comparison: a manifest of many names stays fast. */
static bool collect_metric_names(const listing *l, name_set *ns)
{
    size_t total = 0;
    for (size_t i = 0; i < l->count; i++)
        total += l->items[i].metric_count;
    memset(ns, 0, sizeof(*ns));
    seen_name *all = malloc((total ? total : 1) * sizeof(*all));
    ns->names = malloc(MAX_METRIC_COLUMNS * sizeof(*ns->names));
    if (!all || !ns->names) {
        free(all);
        fprintf(stderr, "%s: out of memory\n", PROG);
        return false;
    }
    size_t n = 0;
    for (size_t i = 0; i < l->count; i++)
        for (size_t k = 0; k < l->items[i].metric_count; k++)
            if (l->items[i].metrics[k].name) {
                all[n].name = l->items[i].metrics[k].name;
                all[n].first = n;
                n++;
            }
    qsort(all, n, sizeof(*all), cmp_seen_name);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(all[i].name, all[u - 1].name) != 0)
            all[u++] = all[i];
    qsort(all, u, sizeof(*all), cmp_seen_first);
    for (size_t i = 0; i < u; i++) {
        if (ns->count < MAX_METRIC_COLUMNS)
            ns->names[ns->count++] = all[i].name;
        else
            ns->more++;
    }
    free(all);
    return true;
}

static void metric_text(double v, char *buf, size_t size)
{
    /* as Python prints them, whatever the sign bit of a NaN */
    if (isnan(v))
        snprintf(buf, size, "nan");
    else if (isinf(v))
        snprintf(buf, size, "%s", v > 0 ? "inf" : "-inf");
    else
        snprintf(buf, size, "%.6g", v);
}

static json_t *metric_json(double v)
{
    /* JSON has no non-finite numbers: the spellings Python's json module
     * reads back */
    if (isnan(v))
        return json_string("NaN");
    if (isinf(v))
        return json_string(v > 0 ? "Infinity" : "-Infinity");
    return json_real(v);
}

static json_t *str_or_null(const char *s)
{
    json_t *j = s ? json_string(s) : NULL;
    return j ? j : json_null();
}

static void flags_text(const ckpt_checkpoint_info *ci, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s%s%s%s", ci->last ? "last" : "",
             ci->last && ci->best ? "," : "", ci->best ? "best" : "",
             (ci->last || ci->best) && ci->weights_only ? "," : "",
             ci->weights_only ? "weights" : "");
    if (!buf[0])
        snprintf(buf, size, "-");
}

/* Table columns: FILE, STEP, SIZE, one per metric, TIME, FLAGS. */
enum { COL_FILE, COL_STEP, COL_SIZE, COL_METRICS };

static void cell_text(const ckpt_checkpoint_info *ci, bool foreign, const name_set *ns,
                      size_t col, char *buf, size_t size)
{
    double v;
    if (col == COL_FILE) {
        snprintf(buf, size, "%s", ci->file);
    } else if (col == COL_STEP) {
        if (ci->step < 0)
            snprintf(buf, size, "-");
        else
            snprintf(buf, size, "%lld", (long long)ci->step);
    } else if (col == COL_SIZE) {
        cli_human_bytes(ci->size, buf, size);
    } else if (col < COL_METRICS + ns->count) {
        if (find_metric(ci, ns->names[col - COL_METRICS], &v))
            metric_text(v, buf, size);
        else
            snprintf(buf, size, "-");
    } else if (col == COL_METRICS + ns->count) {
        if (!time_text(ci->time, false, buf, size))
            snprintf(buf, size, "-");
    } else if (foreign) {
        snprintf(buf, size, "foreign");
    } else {
        flags_text(ci, buf, size);
    }
}

static const char *header_text(const name_set *ns, size_t col)
{
    static const char *fixed[] = {"FILE", "STEP", "SIZE"};
    if (col < COL_METRICS)
        return fixed[col];
    if (col < COL_METRICS + ns->count)
        return ns->names[col - COL_METRICS];
    return col == COL_METRICS + ns->count ? "TIME" : "FLAGS";
}

static int ls_text(const char *dir, bool has_manifest, const ckpt_manager *m, const listing *l,
                   const name_set *ns)
{
    ckpt_metric_mode mode = CKPT_MODE_MIN;
    const char *monitor = ckpt_manager_monitor(m, &mode);
    if (!has_manifest)
        printf("checkpoints in %s (no manifest.json: not kept by the checkpoint manager)\n",
               dir);
    else if (monitor)
        printf("checkpoints in %s (best by %s, %s)\n", dir, monitor,
               mode == CKPT_MODE_MAX ? "max" : "min");
    else
        printf("checkpoints in %s (no monitored metric)\n", dir);
    if (l->count == 0) {
        printf("(none)\n");
        return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
    }
    size_t ncols = COL_METRICS + ns->count + 2;
    size_t *width = calloc(ncols, sizeof(*width));
    if (!width) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return CLI_EXIT_ERROR;
    }
    char cell[512];
    for (size_t c = 0; c < ncols; c++) {
        width[c] = strlen(header_text(ns, c));
        for (size_t i = 0; i < l->count; i++) {
            cell_text(&l->items[i], i >= l->managed, ns, c, cell, sizeof(cell));
            size_t w = strlen(cell);
            if (w > width[c])
                width[c] = w;
        }
    }
    /* numbers right-aligned; text left-aligned, the last column unpadded */
    for (size_t i = 0; i <= l->count; i++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *text = cell;
            if (i == 0)
                text = header_text(ns, c);
            else
                cell_text(&l->items[i - 1], i - 1 >= l->managed, ns, c, cell, sizeof(cell));
            bool right = c == COL_STEP || c == COL_SIZE || (c >= COL_METRICS && c < ncols - 2);
            if (c + 1 == ncols)
                printf("%s\n", text);
            else if (right)
                printf("%*s  ", (int)width[c], text);
            else
                printf("%-*s  ", (int)width[c], text);
        }
    }
    free(width);
    if (ns->more)
        printf("(%zu more metric%s: see --json)\n", ns->more, ns->more == 1 ? "" : "s");
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

static json_t *entry_json(const ckpt_checkpoint_info *ci, const char *foreign_format)
{
    json_t *o = json_object();
    char buf[64];
    json_object_set_new(o, "file", str_or_null(ci->file));
    json_object_set_new(o, "step", ci->step < 0 ? json_null() : json_integer(ci->step));
    json_t *metrics = json_object();
    for (size_t k = 0; k < ci->metric_count; k++) {
        if (ci->metrics[k].name)
            json_object_set_new(metrics, ci->metrics[k].name, metric_json(ci->metrics[k].value));
    }
    json_object_set_new(o, "metrics", metrics);
    json_object_set_new(o, "best", json_boolean(ci->best));
    json_object_set_new(o, "last", json_boolean(ci->last));
    json_object_set_new(o, "size", json_integer((json_int_t)ci->size));
    snprintf(buf, sizeof(buf), "%08x", (unsigned)ci->crc32);
    json_object_set_new(o, "crc32", foreign_format ? json_null() : json_string(buf));
    bool has_time = time_text(ci->time, true, buf, sizeof(buf));
    json_object_set_new(o, "time", has_time ? json_string(buf) : json_null());
    json_object_set_new(o, "ckpt_version", str_or_null(ci->ckpt_version));
    json_object_set_new(o, "format_version",
                        ci->format_version ? json_integer(ci->format_version) : json_null());
    json_object_set_new(o, "torch_version", str_or_null(ci->torch_version));
    json_t *user = NULL;
    if (ci->user_metadata) {
        user = json_loads(ci->user_metadata, 0, NULL);
        if (user && !json_is_object(user)) {
            json_decref(user);
            user = NULL;
        }
        if (!user)
            fprintf(stderr, "%s: warning: %s: user metadata is not a JSON object\n", PROG,
                    ci->file);
    }
    json_object_set_new(o, "user", user ? user : json_null());
    json_object_set_new(o, "content", json_string(foreign_format ? "foreign"
                                                  : ci->weights_only ? "weights"
                                                                     : "checkpoint"));
    if (foreign_format)
        json_object_set_new(o, "format", json_string(foreign_format));
    return o;
}

static int ls_json(const char *dir, const ckpt_manager *m, const listing *l)
{
    ckpt_metric_mode mode = CKPT_MODE_MIN;
    const char *monitor = ckpt_manager_monitor(m, &mode);
    json_t *o = json_object();
    json_object_set_new(o, "directory", str_or_null(dir));
    json_object_set_new(o, "monitor", str_or_null(monitor));
    json_object_set_new(o, "mode", monitor ? json_string(mode == CKPT_MODE_MAX ? "max" : "min")
                                           : json_null());
    json_t *a = json_array();
    for (size_t i = 0; i < l->count; i++)
        json_array_append_new(
            a, entry_json(&l->items[i], i >= l->managed ? l->formats[i - l->managed] : NULL));
    json_object_set_new(o, "checkpoints", a);
    return cli_print_json(o, 2, dir) ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

int ckpt_cli_ls(int argc, char **argv)
{
    bool json = false;
    const char *dir = NULL;
    cli_args args;
    cli_args_init(&args, &ls_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case 'h': ls_usage(stdout); return CLI_EXIT_OK;
        case OPT_JSON: json = true; break;
        case CLI_OPT_ARG:
            if (dir)
                return cli_usage_error(&ls_command, "one directory at a time");
            dir = arg;
            break;
        default: return CLI_EXIT_ERROR;
        }
    }
    if (!dir) {
        ls_usage(stderr);
        return CLI_EXIT_ERROR;
    }
    if (!check_dir(dir))
        return CLI_EXIT_ERROR;
    ckpt_manager *m = open_manager("ls", dir, CKPT_MANAGER_READ_ONLY);
    if (!m)
        return CLI_EXIT_ERROR;
    int rc = CLI_EXIT_ERROR;
    listing l = {0};
    name_set ns = {0};
    char *mpath = malloc(strlen(dir) + sizeof("/manifest.json"));
    struct stat sb;
    bool has_manifest = mpath && (sprintf(mpath, "%s/manifest.json", dir), stat(mpath, &sb) == 0);
    free(mpath);
    if (load_listing(m, &l) && load_foreign(dir, &l) && collect_metric_names(&l, &ns))
        rc = json ? ls_json(dir, m, &l) : ls_text(dir, has_manifest, m, &l, &ns);
    free(ns.names);
    free_listing(&l);
    ckpt_manager_close(m);
    return rc;
}

/* ---- prune --------------------------------------------------------------- */

/* Prints the numbered files ckpt_manager_prune would remove, in listing
 * order. */
static int prune_dry_run(const char *dir, unsigned keep_last, unsigned keep_best)
{
    ckpt_manager *m = open_manager("prune", dir, CKPT_MANAGER_READ_ONLY | CKPT_MANAGER_EXISTING);
    if (!m)
        return CLI_EXIT_ERROR;
    int rc = CLI_EXIT_ERROR;
    size_t n = ckpt_manager_count(m);
    bool *keep = calloc(n ? n : 1, sizeof(*keep));
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    if (!keep) {
        fprintf(stderr, "%s: out of memory\n", PROG);
    } else if (ckpt_manager_plan_prune(m, keep_last, keep_best, keep, &err) != CKPT_OK) {
        cli_print_error(dir, &err);
    } else {
        for (size_t i = 0; i < n; i++) {
            ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
            if (!keep[i] && ckpt_manager_get(m, i, &info))
                printf("would remove %s\n", info.file);
        }
        rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
    }
    free(keep);
    ckpt_manager_close(m);
    return rc;
}

/* A count option's value: decimal digits up to UINT_MAX. */
static bool parse_count(const char *opt, const char *s, unsigned *out)
{
    bool ok = s && *s >= '0' && *s <= '9';
    unsigned long long v = 0;
    if (ok) {
        char *end;
        errno = 0;
        v = strtoull(s, &end, 10);
        ok = errno == 0 && !*end && v <= UINT_MAX;
    }
    if (!ok) {
        cli_usage_error(&prune_command, "%s needs a count (0 or more), not '%s'", opt, s);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

int ckpt_cli_prune(int argc, char **argv)
{
    const char *dir = NULL;
    unsigned keep_last = 0, keep_best = 0;
    bool have_keep = false, dry_run = false, quiet = false;
    cli_args args;
    cli_args_init(&args, &prune_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case 'h': prune_usage(stdout); return CLI_EXIT_OK;
        case OPT_DRY_RUN: dry_run = true; break;
        case 'q': quiet = true; break;
        case OPT_KEEP:
            if (!parse_count("--keep", arg, &keep_last))
                return CLI_EXIT_ERROR;
            have_keep = true;
            break;
        case OPT_KEEP_BEST:
            if (!parse_count("--keep-best", arg, &keep_best))
                return CLI_EXIT_ERROR;
            break;
        case CLI_OPT_ARG:
            if (dir)
                return cli_usage_error(&prune_command, "one directory at a time");
            dir = arg;
            break;
        default: return CLI_EXIT_ERROR;
        }
    }
    if (dir && !have_keep)
        return cli_usage_error(&prune_command, "--keep N is required");
    if (!dir) {
        prune_usage(stderr);
        return CLI_EXIT_ERROR;
    }
    if (!check_dir(dir))
        return CLI_EXIT_ERROR;
    if (dry_run)
        return prune_dry_run(dir, keep_last, keep_best);
    ckpt_manager *m = open_manager("prune", dir, CKPT_MANAGER_EXISTING);
    if (!m)
        return CLI_EXIT_ERROR;
    size_t removed = 0;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_manager_prune(m, keep_last, keep_best, &removed, &err);
    ckpt_manager_close(m);
    if (st != CKPT_OK) {
        cli_print_error(dir, &err);
        return CLI_EXIT_ERROR;
    }
    if (!quiet)
        printf("removed %zu file(s)\n", removed);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/*
 * common.c - small helpers shared by the ckpt commands: errors, JSON,
 * paths, the option parser, and the plain values of a file leaf by leaf.
 */
#include "cli.h"

#include <stdarg.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_print_error(const char *path, const ckpt_error *err)
{
    char buf[768];
    ckpt_error_format(err, buf, sizeof(buf));
    fprintf(stderr, "ckpt: %s: %s\n", path, buf);
    /* a file refused on reading (not an object refused on writing) */
    if (err->status == CKPT_ERR_UNSAFE && strstr(err->message, "is not allowed"))
        fprintf(stderr, "ckpt: hint: 'ckpt scan %s' shows what the file holds; inspect and "
                        "convert read such objects as inert values with --permissive\n",
                path);
}

static bool is_dict(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    return k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
}

static bool holds_tensors(const ckpt_value *v)
{
    if (!is_dict(v))
        return false;
    for (size_t i = 0; i < ckpt_value_len(v); i++)
        if (ckpt_value_kind(ckpt_value_dict_value(v, i)) == CKPT_KIND_TENSOR)
            return true;
    return false;
}

const ckpt_value *cli_default_state_dict(const ckpt_value *root, const char **name)
{
    static const char *const entries[] = {"state_dict", "model"};
    if (name)
        *name = NULL;
    if (!is_dict(root))
        return root;
    bool stray = holds_tensors(root);
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        const ckpt_value *v = ckpt_value_get(root, entries[i]);
        if (is_dict(v) && (!stray || holds_tensors(v))) {
            if (name)
                *name = entries[i];
            return v;
        }
    }
    return root;
}

void cli_key_missing(const char *path, const ckpt_value *root, const char *opt, const char *key)
{
    /* the deepest dict the path reaches: its keys are the choices */
    const ckpt_value *at = root;
    char *prefix = strdup(key);
    size_t reached = 0;
    for (char *dot = prefix ? strchr(prefix, '.') : NULL; dot; dot = strchr(dot + 1, '.')) {
        *dot = '\0';
        const ckpt_value *v = cli_find_path(root, prefix);
        if (v && cli_is_container(ckpt_value_kind(v))) {
            at = v;
            reached = (size_t)(dot - prefix);
        }
        *dot = '.';
    }
    if (!is_dict(at)) {
        free(prefix);
        return;
    }
    size_t n = ckpt_value_len(at), shown = n > 20 ? 20 : n;
    if (reached)
        fprintf(stderr, "ckpt: %s: the keys at '%.*s':", path, (int)reached, prefix);
    else
        fprintf(stderr, "ckpt: %s: the keys at the top:", path);
    free(prefix);
    for (size_t i = 0; i < shown; i++) {
        char text[128];
        ckpt_value_key_text(ckpt_value_key(at, i), text, sizeof(text));
        fprintf(stderr, "%s '%s'", i ? "," : "", text);
    }
    if (n > shown)
        fprintf(stderr, ", ... (%zu more)", n - shown);
    if (!n)
        fprintf(stderr, " (none)");
    fputc('\n', stderr);
    if (reached)
        return;
    const char *best = NULL;
    if (is_dict(ckpt_value_get(at, "model")))
        best = "model";
    else if (is_dict(ckpt_value_get(at, "state_dict")))
        best = "state_dict";
    if (best)
        fprintf(stderr, "ckpt: hint: %s %s\n", opt, best);
}

char *cli_repr(const ckpt_value *v)
{
    size_t n = ckpt_value_repr(v, NULL, 0);
    char *s = malloc(n + 1);
    if (s)
        ckpt_value_repr(v, s, n + 1);
    return s;
}

void cli_human_bytes(uint64_t b, char *buf, size_t size)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
}

bool cli_print_json(json_t *o, size_t indent, const char *what)
{
    /* one buffer, one write: json_dumpf writes token by token */
    char *text = json_dumps(o, JSON_INDENT(indent) | JSON_PRESERVE_ORDER |
                                   JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text) {
        fprintf(stderr, "ckpt: %s: out of memory writing JSON\n", what);
        return false;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, stdout) == len && fputc('\n', stdout) != EOF &&
              fflush(stdout) == 0;
    free(text);
    if (!ok)
        fprintf(stderr, "ckpt: %s: cannot write the JSON\n", what);
    return ok;
}

/* Follows a dotted path: at a dict the longest key that is the whole rest
 * or a prefix of it followed by '.', at a list/tuple a decimal index. */
const ckpt_value *cli_find_path(const ckpt_value *v, const char *path)
{
    while (*path) {
        ckpt_kind k = ckpt_value_kind(v);
        size_t rest = strlen(path);
        if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
            const ckpt_value *best = NULL;
            size_t best_len = 0;
            for (size_t i = 0; i < ckpt_value_len(v); i++) {
                char text[512];
                size_t len = ckpt_value_key_text(ckpt_value_key(v, i), text, sizeof(text));
                if (len > rest || len < best_len || (len == best_len && best))
                    continue;
                if (memcmp(text, path, len) == 0 && (path[len] == 0 || path[len] == '.')) {
                    best = ckpt_value_dict_value(v, i);
                    best_len = len;
                }
            }
            if (!best)
                return NULL;
            v = best;
            path += best_len;
        } else if (k == CKPT_KIND_LIST || k == CKPT_KIND_TUPLE) {
            char *end;
            unsigned long long i = strtoull(path, &end, 10);
            if (end == path || (*end && *end != '.') || i >= ckpt_value_len(v))
                return NULL;
            v = ckpt_value_item(v, (size_t)i);
            path = end;
        } else {
            return NULL;
        }
        if (*path == '.')
            path++;
    }
    return v;
}

bool cli_parse_ratio(const cli_command *cmd, const char *opt, const char *s, uint64_t *out)
{
    size_t n = s ? strlen(s) : 0;
    bool digits = n > 0 && n <= 19 && strspn(s, "0123456789") == n;
    unsigned long long v = digits ? strtoull(s, NULL, 10) : 0;
    if (v == 0) {
        cli_usage_error(cmd, "%s needs a whole number from 1 to 10^19 - 1, not '%s'", opt,
                        s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

/* ---- small containers ------------------------------------------------------- */

bool cli_vec_reserve(cli_vec *v, size_t more)
{
    while (v->cap - v->len < more) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        void *p = cap <= SIZE_MAX / 2 / v->esize ? realloc(v->p, cap * v->esize) : NULL;
        if (!p)
            return false;
        v->p = p;
        v->cap = cap;
    }
    return true;
}

void *cli_vec_push(cli_vec *v)
{
    if (!cli_vec_reserve(v, 1))
        return NULL;
    void *e = (char *)v->p + v->len++ * v->esize;
    memset(e, 0, v->esize);
    return e;
}

/* ---- plain values: leaves by path -------------------------------------------- */

#define PLAIN_MAX_DEPTH 1000
#define PLAIN_MAX_VISITS 20000000   /* shared containers multiply paths */

/* A container shared through the pickle memo is reached once per path, so
 * its leaves repeat: a leaf's text is made once per value and kept once per
 * content (texts), and how many leaves repeat a value already seen, how
 * many steps the walk takes and how long the paths grow are bounded. */
#define PLAIN_MAX_REPEATS 1000000
#define PLAIN_MAX_PATH_BYTES ((size_t)64 << 20)

/* Texts of leaves, shared by the files compared: each content once, and the text
 * of each value already shown. */
typedef struct text_entry {
    uint64_t hash;
    char *text;
} text_entry;

typedef struct value_text {
    const ckpt_value *v;
    const char *text;
} value_text;

struct cli_texts {
    text_entry *by_text;
    size_t text_cap, text_len;
    value_text *by_value;
    size_t value_cap, value_len;
};

typedef struct plain_walk {
    cli_vec leaves;             /* of cli_leaf */
    cli_vec path;               /* of char: the current path, NUL-terminated */
    cli_texts *tx;
    const ckpt_value *stack[PLAIN_MAX_DEPTH];
    uint64_t visits_left;
    uint64_t repeats_left;      /* leaves whose value was shown before */
    size_t path_bytes;          /* of every leaf's path */
    bool failed;                /* out of memory */
    bool too_many;              /* past a bound */
} plain_walk;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

uint64_t cli_hash_ptr(const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 31);
}

bool cli_table_room(void **slots, size_t *cap, size_t len, size_t esize,
                    void (*rehash)(void *fresh, size_t cap, const void *old))
{
    if ((len + 1) * 2 <= *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 1024;
    char *fresh = ncap <= SIZE_MAX / esize ? calloc(ncap, esize) : NULL;
    if (!fresh)
        return false;
    for (size_t i = 0; i < *cap; i++)
        rehash(fresh, ncap, (const char *)*slots + i * esize);
    free(*slots);
    *slots = fresh;
    *cap = ncap;
    return true;
}

static void rehash_text(void *fresh, size_t cap, const void *old)
{
    const text_entry *e = old;
    if (!e->text)
        return;
    text_entry *t = fresh;
    size_t i = e->hash & (cap - 1);
    while (t[i].text)
        i = (i + 1) & (cap - 1);
    t[i] = *e;
}

static void rehash_value(void *fresh, size_t cap, const void *old)
{
    const value_text *e = old;
    if (!e->v)
        return;
    value_text *t = fresh;
    size_t i = cli_hash_ptr(e->v) & (cap - 1);
    while (t[i].v)
        i = (i + 1) & (cap - 1);
    t[i] = *e;
}

/* The one copy of text s (taken over: freed when a copy exists); NULL when
 * out of memory. */
static const char *intern(cli_texts *tx, char *s)
{
    size_t n = strlen(s);
    uint64_t h = hash_bytes(s, n);
    if (!cli_table_room((void **)&tx->by_text, &tx->text_cap, tx->text_len, sizeof(text_entry),
                    rehash_text)) {
        free(s);
        return NULL;
    }
    size_t i = h & (tx->text_cap - 1);
    for (; tx->by_text[i].text; i = (i + 1) & (tx->text_cap - 1)) {
        if (tx->by_text[i].hash == h && strcmp(tx->by_text[i].text, s) == 0) {
            free(s);
            return tx->by_text[i].text;
        }
    }
    tx->by_text[i] = (text_entry){h, s};
    tx->text_len++;
    return s;
}

/* The slot of v in the value table (its text NULL when not seen yet). */
static value_text *value_slot(cli_texts *tx, const ckpt_value *v)
{
    if (!cli_table_room((void **)&tx->by_value, &tx->value_cap, tx->value_len, sizeof(value_text),
                    rehash_value))
        return NULL;
    size_t i = cli_hash_ptr(v) & (tx->value_cap - 1);
    while (tx->by_value[i].v && tx->by_value[i].v != v)
        i = (i + 1) & (tx->value_cap - 1);
    return &tx->by_value[i];
}

cli_texts *cli_texts_new(void)
{
    return calloc(1, sizeof(cli_texts));
}

void cli_texts_free(cli_texts *tx)
{
    if (!tx)
        return;
    for (size_t i = 0; i < tx->text_cap; i++)
        free(tx->by_text[i].text);
    free(tx->by_text);
    free(tx->by_value);
    free(tx);
}

static void add_leaf(plain_walk *w, const char *text)
{
    size_t plen = w->path.len;
    if (plen + 1 > PLAIN_MAX_PATH_BYTES - w->path_bytes) {
        w->too_many = true;
        return;
    }
    cli_leaf *l = cli_vec_push(&w->leaves);
    if (!l) {
        w->failed = true;
        return;
    }
    l->order = w->leaves.len - 1;
    l->text = text;
    l->path = malloc(plen + 1);
    if (!l->path) {
        w->failed = true;
        return;
    }
    memcpy(l->path, plen ? w->path.p : "", plen);
    l->path[plen] = 0;
    w->path_bytes += plen + 1;
}

/* A leaf showing a fixed text (a cycle, a cut). */
static void add_marker(plain_walk *w, const char *s)
{
    char *t = malloc(strlen(s) + 1);
    const char *text = t ? intern(w->tx, strcpy(t, s)) : NULL;
    if (!text)
        w->failed = true;
    else
        add_leaf(w, text);
}

/* A leaf showing v's repr, made once per value. */
static void add_value_leaf(plain_walk *w, const ckpt_value *v)
{
    value_text *slot = value_slot(w->tx, v);
    if (!slot) {
        w->failed = true;
        return;
    }
    if (slot->v) {
        if (w->repeats_left == 0) {
            w->too_many = true;
            return;
        }
        w->repeats_left--;
        add_leaf(w, slot->text);
        return;
    }
    char *t = cli_repr(v);
    const char *text = t ? intern(w->tx, t) : NULL;
    if (!text) {
        w->failed = true;
        return;
    }
    *slot = (value_text){v, text};
    w->tx->value_len++;
    add_leaf(w, text);
}

/* Appends to the path; false when out of memory or too long. */
static bool path_put(plain_walk *w, const char *s, size_t n)
{
    if (n > PLAIN_MAX_PATH_BYTES - w->path.len) {
        w->too_many = true;
        return false;
    }
    if (!cli_vec_reserve(&w->path, n + 1)) {
        w->failed = true;
        return false;
    }
    char *p = w->path.p;
    memcpy(p + w->path.len, s, n);
    w->path.len += n;
    p[w->path.len] = 0;
    return true;
}

/* The path of item i of v: "KEY" or "I" after a '.'. Dict keys show as
 * tensor names show them. */
static bool path_push(plain_walk *w, const ckpt_value *v, size_t i, bool is_dict)
{
    if (w->path.len && !path_put(w, ".", 1))
        return false;
    char buf[256];
    size_t len;
    const ckpt_value *key = is_dict ? ckpt_value_key(v, i) : NULL;
    const char *s = ckpt_value_str(key, &len);
    if (!key || ckpt_value_kind(key) != CKPT_KIND_STR) {
        s = buf;
        len = key ? ckpt_value_key_text(key, buf, sizeof(buf))
                  : (size_t)snprintf(buf, sizeof(buf), "%zu", i);
    }
    return path_put(w, s, len);
}

bool cli_is_container(ckpt_kind k)
{
    return k == CKPT_KIND_LIST || k == CKPT_KIND_TUPLE || k == CKPT_KIND_SET || k == CKPT_KIND_DICT ||
           k == CKPT_KIND_ORDERED_DICT;
}

static void plain_walk_value(plain_walk *w, const ckpt_value *v, int depth)
{
    if (w->failed || w->too_many)
        return;
    if (w->visits_left-- == 0) {
        w->too_many = true;
        return;
    }
    ckpt_kind k = ckpt_value_kind(v);
    if (k == CKPT_KIND_TENSOR)
        return;
    if (!cli_is_container(k) || ckpt_value_len(v) == 0) {
        add_value_leaf(w, v);
        return;
    }
    /* the cycle check looks at every container above */
    if (w->visits_left < (uint64_t)depth) {
        w->too_many = true;
        return;
    }
    w->visits_left -= (uint64_t)depth;
    for (int i = 0; i < depth; i++) {
        if (w->stack[i] == v) {
            add_marker(w, "<cycle>");
            return;
        }
    }
    if (depth >= PLAIN_MAX_DEPTH) {
        add_marker(w, "<nested too deep>");
        return;
    }
    w->stack[depth] = v;
    bool is_dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    size_t saved = w->path.len;
    for (size_t i = 0; i < ckpt_value_len(v) && !w->failed && !w->too_many; i++) {
        if (!path_push(w, v, i, is_dict))
            break;
        plain_walk_value(w, is_dict ? ckpt_value_dict_value(v, i) : ckpt_value_item(v, i),
                         depth + 1);
        w->path.len = saved;
        ((char *)w->path.p)[saved] = 0;
    }
}

static void free_leaves(cli_leaf *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i].path);
    free(l);
}

void cli_plain_free(cli_plain *p)
{
    free_leaves(p->leaves, p->count);
    p->leaves = NULL;
    p->count = 0;
}

bool cli_plain_collect(ckpt_file *f, const char *path, cli_texts *tx, cli_plain *out)
{
    out->leaves = NULL;
    out->count = 0;
    plain_walk *w = calloc(1, sizeof(*w));
    if (!w) {
        fprintf(stderr, "ckpt: %s: out of memory reading plain values\n", path);
        return false;
    }
    w->leaves.esize = sizeof(cli_leaf);
    w->path.esize = 1;
    w->tx = tx;
    w->visits_left = PLAIN_MAX_VISITS;
    w->repeats_left = PLAIN_MAX_REPEATS;
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    if (fi.format == CKPT_FORMAT_SAFETENSORS) {
        if (fi.metadata && path_put(w, "__metadata__", 12))
            plain_walk_value(w, fi.metadata, 0);
    } else {
        plain_walk_value(w, ckpt_file_root(f), 0);
    }
    free(w->path.p);
    bool ok = !w->failed && !w->too_many;
    if (ok) {
        out->leaves = w->leaves.p;
        out->count = w->leaves.len;
    } else {
        fprintf(stderr, "ckpt: %s: %s\n", path,
                w->failed ? "out of memory reading plain values"
                          : "containers shared many times make too many paths to compare");
        free_leaves(w->leaves.p, w->leaves.len);
    }
    free(w);
    return ok;
}

/* ---- options ---------------------------------------------------------------- */

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ckpt: %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: %s\nrun 'ckpt %s --help' for the options\n", cmd->synopsis,
            cmd->name);
    return CLI_EXIT_ERROR;
}

void cli_args_init(cli_args *a, const cli_command *cmd, int argc, char **argv)
{
    memset(a, 0, sizeof(*a));
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
    /* '-': operands come back in order (1), wherever they stand, whatever
     * POSIXLY_CORRECT says; ':': a missing value is told apart (':') */
    snprintf(a->shortopts, sizeof(a->shortopts), "-:%s", cmd->shortopts);
    opterr = 0;
}

/* The table entry named by the n bytes at name, spelled out whole. */
static const struct option *long_option(const cli_command *cmd, const char *name, size_t n)
{
    for (const struct option *o = cmd->longopts; o->name; o++)
        if (strlen(o->name) == n && memcmp(o->name, name, n) == 0)
            return o;
    return NULL;
}

int cli_next_arg(cli_args *a, const char **value)
{
    *value = NULL;
    if (!a->operands_only) {
        const char *next = optind < a->argc ? a->argv[optind] : NULL;
        if (next && next[0] == '-' && next[1] == '-' && next[2]) {
            /* getopt_long takes any unambiguous prefix: only whole names here */
            size_t n = strcspn(next + 2, "=");
            const struct option *o = long_option(a->cmd, next + 2, n);
            if (!o) {
                cli_usage_error(a->cmd, "unknown option '%.*s'", (int)(n + 2), next);
                return CLI_OPT_BAD;
            }
            if (o->has_arg == no_argument && next[2 + n] == '=') {
                cli_usage_error(a->cmd, "option '--%s' takes no value", o->name);
                return CLI_OPT_BAD;
            }
        }
        int c = getopt_long(a->argc, a->argv, a->shortopts, a->cmd->longopts, NULL);
        const char *opt = optind > 0 && optind <= a->argc ? a->argv[optind - 1] : "";
        switch (c) {
        case -1:
            a->operands_only = true; /* the end, or "--" */
            break;
        case CLI_OPT_ARG:
            *value = optarg;
            return CLI_OPT_ARG;
        case '?':
            if (optopt)
                cli_usage_error(a->cmd, "unknown option '-%c'", optopt);
            else
                cli_usage_error(a->cmd, "unknown option '%s'", opt);
            return CLI_OPT_BAD;
        case ':':
            if (opt[0] == '-' && opt[1] == '-')
                cli_usage_error(a->cmd, "option '%s' needs a value", opt);
            else
                cli_usage_error(a->cmd, "option '-%c' needs a value", optopt);
            return CLI_OPT_BAD;
        default:
            *value = optarg;
            return c;
        }
    }
    if (optind < a->argc) {
        *value = a->argv[optind++];
        return CLI_OPT_ARG;
    }
    return CLI_OPT_END;
}

/* ---- totals ------------------------------------------------------------------- */

typedef struct total_item {
    ckpt_tensor_info ti;
    bool in_model;
} total_item;

/* Orders the views so that tensors over the same bytes (tied weights,
 * one storage saved under two names) are neighbours. */
static int total_cmp(const void *pa, const void *pb)
{
    const ckpt_tensor_info *a = &((const total_item *)pa)->ti, *b = &((const total_item *)pb)->ti;
    if (a->has_storage != b->has_storage)
        return a->has_storage ? 1 : -1;
    if (a->storage_index != b->storage_index)
        return a->storage_index < b->storage_index ? -1 : 1;
    if (a->storage_offset != b->storage_offset)
        return a->storage_offset < b->storage_offset ? -1 : 1;
    if (a->dtype != b->dtype)
        return a->dtype < b->dtype ? -1 : 1;
    if (a->layout != b->layout)
        return a->layout < b->layout ? -1 : 1;
    if (a->ndim != b->ndim)
        return a->ndim < b->ndim ? -1 : 1;
    for (uint32_t k = 0; k < a->ndim; k++) {
        if (a->shape[k] != b->shape[k])
            return a->shape[k] < b->shape[k] ? -1 : 1;
        if (a->stride[k] != b->stride[k])
            return a->stride[k] < b->stride[k] ? -1 : 1;
    }
    return 0;
}

/* One distinct tensor, named `names` times. */
static void total_add(cli_total *t, const ckpt_tensor_info *ti, size_t names)
{
    t->tensors += names;
    t->distinct++;
    t->elements += ti->numel;
    t->bytes += ti->nbytes;
}

bool cli_count_totals(ckpt_file *f, cli_totals *out)
{
    memset(out, 0, sizeof(*out));
    size_t n = ckpt_file_tensor_count(f);
    total_item *items = calloc(n ? n : 1, sizeof(*items));
    if (!items)
        return false;
    cli_default_state_dict(ckpt_file_root(f), &out->model_key);
    size_t klen = out->model_key ? strlen(out->model_key) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *name;
        items[i].ti.struct_size = sizeof(items[i].ti);
        ckpt_tensor_get_info(ckpt_file_tensor(f, i, &name), &items[i].ti);
        items[i].in_model = klen && strncmp(name, out->model_key, klen) == 0 &&
                            name[klen] == '.';
    }
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    /* the shards of a sharded file number their storages each on its own */
    bool dedup = fi.format != CKPT_FORMAT_SHARDED;
    if (dedup && n > 1)
        qsort(items, n, sizeof(*items), total_cmp);
    for (size_t i = 0, j; i < n; i = j) {
        size_t in_model = items[i].in_model;
        for (j = i + 1; dedup && items[i].ti.has_storage && j < n &&
                        total_cmp(&items[i], &items[j]) == 0;
             j++)
            in_model += items[j].in_model;
        total_add(&out->all, &items[i].ti, j - i);
        if (in_model)
            total_add(&out->model, &items[i].ti, in_model);
    }
    free(items);
    return true;
}

/* ---- progress ------------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cli_progress_init(cli_progress *p, bool on)
{
    memset(p, 0, sizeof(*p));
    p->on = on && isatty(STDERR_FILENO);
    p->min_total = CLI_PROGRESS_MIN;
    p->last_pct = -1;
    p->start = p->last = now_seconds();
}

void cli_progress_update(void *user, uint64_t done, uint64_t total)
{
    cli_progress *p = user;
    if (!p->on || total < p->min_total || !total)
        return;
    if (done > total)
        done = total;
    int pct = (int)(done * 100 / total);
    double t = now_seconds(), elapsed = t - p->start;
    /* at each percent, at most ten times a second, and at the end */
    if (done < total && (pct == p->last_pct || t - p->last < 0.1))
        return;
    p->last_pct = pct;
    p->last = t;
    char bar[31];
    int fill = pct * 30 / 100;
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    char eta[32] = "ETA -:--";
    if (done >= total) {
        long s = (long)(elapsed + 0.5);
        snprintf(eta, sizeof(eta), "in %ld:%02ld", s / 60, s % 60);
    } else if (rate > 0) {
        double left = (double)(total - done) / rate;
        long s = left < 359999 ? (long)(left + 0.5) : 359999;
        snprintf(eta, sizeof(eta), "ETA %ld:%02ld", s / 60, s % 60);
    }
    fprintf(stderr, "\r[%s] %3d%%  %.1f / %.1f MiB  %.1f MiB/s  %s   ", bar, pct,
            (double)done / 1048576.0, (double)total / 1048576.0, rate / 1048576.0, eta);
    p->drawn = done < total;
    if (done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

void cli_progress_end(cli_progress *p)
{
    if (p->drawn) {
        fputc('\n', stderr);
        fflush(stderr);
    }
    p->drawn = false;
}


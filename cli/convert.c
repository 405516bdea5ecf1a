/*
 * convert.c - `ckpt convert IN OUT`: between torch zip and safetensors,
 * with subtree selection, key edits, dtype conversion and map_location.
 */
#include "cli.h"

#include <errno.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_EDITS = 64 };

typedef struct rename_rule {
    const char *from, *to;
} rename_rule;

typedef struct convert_opts {
    const char *in, *out, *to, *key, *dtype_name, *location;
    const char *strip[MAX_EDITS];
    size_t n_strip;
    rename_rule rename[MAX_EDITS];
    size_t n_rename;
    const char *add_prefix;
    const char *include[MAX_EDITS], *exclude[MAX_EDITS];
    size_t n_include, n_exclude;
    bool no_fsync, permissive, torchscript_weights, quiet, force;
    uint64_t max_output_ratio;  /* 0: the default */
    uint64_t max_shard_size;    /* --max-shard-size; 0: none given */
} convert_opts;

/* How often each filter and edit took effect, for the warnings about those
 * that did nothing. */
typedef struct edit_stats {
    size_t include[MAX_EDITS], exclude[MAX_EDITS], strip[MAX_EDITS], rename[MAX_EDITS];
    char *strip_partial[MAX_EDITS]; /* a key whose prefix was cut mid-name */
} edit_stats;

static void convert_usage(FILE *out)
{
    fprintf(out,
            "usage: ckpt convert IN OUT [options]\n"
            "\n"
            "Writes IN (any format ckpt reads) as OUT. The output format comes from OUT's\n"
            "extension (.safetensors; .pth .pt .bin .ckpt = torch zip) or --to.\n"
            "pth -> pth keeps the whole tree (types, order, OrderedDict _metadata, views\n"
            "sharing storages, location tags). To safetensors: one entry per tensor, named\n"
            "as 'ckpt inspect' names them, made contiguous; plain values (epoch, metrics,\n"
            "versions) go into __metadata__ as JSON text under their path.\n"
            "\n"
            "options:\n"
            "  --to pth|safetensors   output format, whatever OUT's extension\n"
            "  --key PATH             convert only this subtree (e.g. --key model)\n"
            "  --strip-prefix P       remove P from the start of each key, once (repeatable)\n"
            "  --add-prefix P         put P in front of each key\n"
            "  --rename OLD=NEW       keys starting with OLD start with NEW instead (repeatable)\n"
            "  --include GLOB         keep only keys matching a GLOB (repeatable)\n"
            "  --exclude GLOB         drop keys matching a GLOB (repeatable)\n"
            "  --dtype float32|float16|bfloat16|float64\n"
            "                         convert floating tensors (round to nearest even);\n"
            "                         others are left alone\n"
            "  --map-location TAG     write every tensor with this location tag, one that\n"
            "                         torch.load restores: cpu, cuda, cuda:N, mps, meta,\n"
            "                         xpu, xpu:N, hpu, hpu:N\n"
            "  --max-output-ratio N   write at most N times the bytes IN holds, plus 64 MiB\n"
            "                         (default 64): views that repeat their storage (a stride\n"
            "                         of 0) are written whole, and so are --dtype's copies\n"
            "  --permissive           open files holding non-allow-listed objects as inert\n"
            "                         values (nothing runs); a pickled nn.Module gives its\n"
            "                         state_dict() tensors\n"
            "  --torchscript-weights  read a TorchScript archive (torch.jit.save) as data:\n"
            "                         its weights as torch.jit.load(f).state_dict() names\n"
            "                         them; nothing in it runs\n"
            "  --no-fsync             skip the fsyncs (faster, not crash-safe)\n"
            "  --force                write even when --to contradicts OUT's extension, or\n"
            "                         when the filters leave nothing\n"
            "  --max-shard-size SIZE  OUT is a directory: a sharded safetensors set as\n"
            "                         save_pretrained writes it (model-0000i-of-0000n\n"
            "                         .safetensors + model.safetensors.index.json), shards\n"
            "                         of at most SIZE (5GB, 500MB, 2GiB, bytes); an OUT\n"
            "                         ending in '/' gets 5GB. Committed as one: the other\n"
            "                         files in OUT stay, stale shards go\n"
            "  -q, --quiet            no progress bar, no notes\n"
            "\n"
            "Key edits and filters apply to the keys of the converted dict (the state dict:\n"
            "use --key to reach it inside a training checkpoint), in this order: --include\n"
            "and --exclude on the keys as stored, then --strip-prefix, --rename,\n"
            "--add-prefix. A state dict's _metadata (module versions) follows the edits,\n"
            "as torch's consume_prefix_in_state_dict_if_present does. A filter or edit\n"
            "that matches no key, and a --strip-prefix that cuts keys mid-name (module\n"
            "instead of module.), get a warning; a dict the filters leave empty is an\n"
            "error unless --force.\n"
            "To safetensors, tensors that are the same view of one storage (tied weights)\n"
            "are written once, under the first of their names in byte order, and each\n"
            "other name goes into __metadata__ with the name kept as its value, as\n"
            "safetensors' save_model does.\n"
            "On SIGINT or SIGTERM the temporary file is removed and OUT is untouched.\n"
            "exit status: 0 written, 2 error (OUT untouched)\n");
}

/* ---- output format -------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The format OUT's extension names: 1 torch, 2 safetensors, 0 unknown. */
static int format_of_name(const char *out)
{
    if (ends_with(out, ".safetensors"))
        return 2;
    static const char *torch_ext[] = {".pth", ".pt", ".bin", ".ckpt", ".tar"};
    for (size_t i = 0; i < sizeof(torch_ext) / sizeof(torch_ext[0]); i++)
        if (ends_with(out, torch_ext[i]))
            return 1;
    return 0;
}

/* ---- sharded safetensors output (--max-shard-size) ------------------------ */

#define DEFAULT_SHARD_SIZE 5000000000ull /* save_pretrained's "5GB" */

/* A size as transformers takes it: a number of bytes, or a number with a
 * unit, KB MB GB TB (powers of 1000), KiB MiB GiB TiB (of 1024), or Kb Mb
 * Gb Tb (bits, / 8). */
static bool parse_shard_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0) || s[0] == '-' || s[0] == '+')
        return false;
    static const struct {
        const char *unit;
        double scale;
    } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
        {"Kb", 1e3 / 8}, {"Mb", 1e6 / 8}, {"Gb", 1e9 / 8}, {"Tb", 1e12 / 8},
    };
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double bytes = v * units[i].scale;
            if (bytes < 1 || bytes >= 1.8e19)
                return false;
            *out = (uint64_t)bytes;
            return true;
        }
    }
    return false;
}

/* OUT is a directory for a sharded set: --max-shard-size, or a trailing '/'. */
static bool sharded_output(const convert_opts *o)
{
    return o->max_shard_size || ends_with(o->out, "/");
}

/* 1 torch, 2 safetensors, 0 unknown */
static int format_of(const convert_opts *o)
{
    if (o->to) {
        if (strcmp(o->to, "pth") == 0 || strcmp(o->to, "torch") == 0 || strcmp(o->to, "pt") == 0)
            return 1;
        if (strcmp(o->to, "safetensors") == 0)
            return 2;
        return 0;
    }
    return format_of_name(o->out);
}

/* Whether tag is a location torch.load restores: its default_restore_location
 * takes "cpu", "mps" and "meta" as they are, and "cuda", "xpu" and "hpu"
 * with an optional ":N" device index. */
static bool location_valid(const char *tag)
{
    if (strcmp(tag, "cpu") == 0 || strcmp(tag, "mps") == 0 || strcmp(tag, "meta") == 0)
        return true;
    static const char *indexed[] = {"cuda", "xpu", "hpu"};
    for (size_t i = 0; i < sizeof(indexed) / sizeof(indexed[0]); i++) {
        size_t n = strlen(indexed[i]);
        if (strncmp(tag, indexed[i], n) != 0)
            continue;
        const char *p = tag + n;
        if (!*p)
            return true;
        if (*p++ != ':' || !*p || strlen(p) > 9)
            return false;
        for (; *p; p++)
            if (*p < '0' || *p > '9')
                return false;
        return true;
    }
    return false;
}

/* ---- --key ------------------------------------------------------------------ */

/* ---- key edits ------------------------------------------------------------- */

static bool key_edits(const convert_opts *o)
{
    return o->n_strip || o->n_rename || o->add_prefix || o->n_include || o->n_exclude;
}

static bool keep_key(const convert_opts *o, const char *key, edit_stats *stats)
{
    bool keep = true;
    if (o->n_include) {
        bool any = false;
        for (size_t i = 0; i < o->n_include; i++) {
            if (fnmatch(o->include[i], key, 0) == 0) {
                any = true;
                stats->include[i]++;
            }
        }
        keep = any;
    }
    for (size_t i = 0; i < o->n_exclude; i++) {
        if (fnmatch(o->exclude[i], key, 0) == 0) {
            stats->exclude[i]++;
            keep = false;
        }
    }
    return keep;
}

/* The edited key, malloc'd. as_module: a _metadata key, a module prefix
 * without the trailing dot ("" is the root module). stats (may be NULL)
 * counts the edits made. */
static char *edit_key(const convert_opts *o, const char *key, bool as_module, edit_stats *stats)
{
    /* Module names compare with a dot added, so "module" matches "module.". */
    size_t klen = strlen(key);
    char *k = malloc(klen + 2);
    if (!k)
        return NULL;
    memcpy(k, key, klen + 1);
    if (as_module && klen) {
        k[klen] = '.';
        k[klen + 1] = 0;
    }
    for (size_t i = 0; i < o->n_strip; i++) {
        size_t pl = strlen(o->strip[i]);
        if (strncmp(k, o->strip[i], pl) == 0) {
            if (stats) {
                stats->strip[i]++;
                if (pl && o->strip[i][pl - 1] != '.' && k[pl] && !stats->strip_partial[i])
                    stats->strip_partial[i] = strdup(k + pl);
            }
            memmove(k, k + pl, strlen(k + pl) + 1);
        }
    }
    for (size_t i = 0; i < o->n_rename; i++) {
        size_t fl = strlen(o->rename[i].from);
        if (strncmp(k, o->rename[i].from, fl) == 0) {
            if (stats)
                stats->rename[i]++;
            size_t tl = strlen(o->rename[i].to), rest = strlen(k + fl);
            char *n = malloc(tl + rest + 1);
            if (!n) {
                free(k);
                return NULL;
            }
            memcpy(n, o->rename[i].to, tl);
            memcpy(n + tl, k + fl, rest + 1);
            free(k);
            k = n;
            break; /* one rename per key */
        }
    }
    if (o->add_prefix) {
        size_t pl = strlen(o->add_prefix), kl = strlen(k);
        char *n = malloc(pl + kl + 1);
        if (!n) {
            free(k);
            return NULL;
        }
        memcpy(n, o->add_prefix, pl);
        memcpy(n + pl, k, kl + 1);
        free(k);
        k = n;
    }
    if (as_module) { /* back to a module name: drop the dot added above */
        size_t n = strlen(k);
        if (n && k[n - 1] == '.')
            k[n - 1] = 0;
    }
    return k;
}

/* _metadata of a state dict, its keys edited like the state dict's. */
static const ckpt_value *edit_metadata(ckpt_tree *tree, const convert_opts *o,
                                       const ckpt_value *state)
{
    const ckpt_value *meta = ckpt_value_get(state, "_metadata");
    if (!meta || (ckpt_value_kind(meta) != CKPT_KIND_ORDERED_DICT && ckpt_value_kind(meta) != CKPT_KIND_DICT))
        return state;
    ckpt_value *new_meta = ckpt_value_kind(meta) == CKPT_KIND_ORDERED_DICT
                               ? ckpt_new_ordered_dict(tree) : ckpt_new_dict(tree);
    for (size_t i = 0; i < ckpt_value_len(meta); i++) {
        const ckpt_value *key = ckpt_value_key(meta, i);
        const ckpt_value *val = ckpt_value_dict_value(meta, i);
        if (ckpt_value_kind(key) != CKPT_KIND_STR) {
            ckpt_dict_put(tree, new_meta, key, val);
            continue;
        }
        char *k = edit_key(o, ckpt_value_str(key, NULL), true, NULL);
        if (!k)
            return NULL;
        ckpt_dict_put_str(tree, new_meta, k, val);
        free(k);
    }
    ckpt_value *new_state = ckpt_new_dict(tree);
    for (size_t i = 0; i < ckpt_value_len(state); i++) {
        const ckpt_value *key = ckpt_value_key(state, i);
        const char *ks = ckpt_value_kind(key) == CKPT_KIND_STR ? ckpt_value_str(key, NULL) : NULL;
        ckpt_dict_put(tree, new_state, key,
                      ks && strcmp(ks, "_metadata") == 0 ? new_meta
                                                          : ckpt_value_dict_value(state, i));
    }
    return new_state;
}

/* A new dict of the root's kind with the kept entries under their edited keys. */
static const ckpt_value *apply_key_edits(ckpt_tree *tree, const convert_opts *o,
                                         const ckpt_value *root, size_t *dropped,
                                         edit_stats *stats)
{
    ckpt_kind kind = ckpt_value_kind(root);
    ckpt_value *out = kind == CKPT_KIND_ORDERED_DICT ? ckpt_new_ordered_dict(tree) : ckpt_new_dict(tree);
    *dropped = 0;
    for (size_t i = 0; i < ckpt_value_len(root); i++) {
        const ckpt_value *key = ckpt_value_key(root, i);
        char text[1024];
        ckpt_value_key_text(key, text, sizeof(text));
        if (!keep_key(o, text, stats)) {
            (*dropped)++;
            continue;
        }
        if (ckpt_value_kind(key) != CKPT_KIND_STR) {
            ckpt_dict_put(tree, out, key, ckpt_value_dict_value(root, i));
            continue;
        }
        char *k = edit_key(o, ckpt_value_str(key, NULL), false, stats);
        if (!k)
            return NULL;
        ckpt_dict_put_str(tree, out, k, ckpt_value_dict_value(root, i));
        free(k);
    }
    const ckpt_value *state = ckpt_value_state(root);
    if (state && kind == CKPT_KIND_ORDERED_DICT)
        ckpt_set_state(tree, out, edit_metadata(tree, o, state));
    return out;
}

/* ---- --dtype ---------------------------------------------------------------- */

/* What cast_tree made of each value it has seen (a tensor or a container),
 * by address: open addressing over a power-of-two table. */
typedef struct cast_memo {
    const ckpt_value **from;
    const ckpt_value **to;      /* IN_PROGRESS while its container is walked */
    size_t count, cap;
} cast_memo;

static const char in_progress;
#define IN_PROGRESS ((const ckpt_value *)(const void *)&in_progress)

static size_t memo_slot(const cast_memo *m, const ckpt_value *v)
{
    uint64_t x = (uint64_t)(uintptr_t)v;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    size_t i = (size_t)x & (m->cap - 1);
    while (m->from[i] && m->from[i] != v)
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* What v became, or NULL when not seen yet. */
static const ckpt_value *memo_get(const cast_memo *m, const ckpt_value *v)
{
    return m->cap ? m->to[memo_slot(m, v)] : NULL;
}

/* Records v -> to; false when out of memory. */
static bool memo_set(cast_memo *m, const ckpt_value *v, const ckpt_value *to)
{
    size_t i = m->cap ? memo_slot(m, v) : 0;
    if (m->cap && m->from[i] == v) {
        m->to[i] = to;
        return true;
    }
    if ((m->count + 1) * 2 > m->cap) {
        cast_memo n = {.cap = m->cap ? m->cap * 2 : 256};
        n.from = calloc(n.cap, sizeof(*n.from));
        n.to = calloc(n.cap, sizeof(*n.to));
        if (!n.from || !n.to) {
            free(n.from);
            free(n.to);
            return false;
        }
        for (size_t j = 0; j < m->cap; j++) {
            if (m->from[j]) {
                size_t k = memo_slot(&n, m->from[j]);
                n.from[k] = m->from[j];
                n.to[k] = m->to[j];
            }
        }
        n.count = m->count;
        free(m->from);
        free(m->to);
        *m = n;
    }
    i = memo_slot(m, v);
    m->from[i] = v;
    m->to[i] = to;
    m->count++;
    return true;
}

static bool castable(ckpt_dtype d)
{
    return d == CKPT_DTYPE_FLOAT64 || d == CKPT_DTYPE_FLOAT32 || d == CKPT_DTYPE_FLOAT16 || d == CKPT_DTYPE_BFLOAT16;
}

/* The tree with every strided floating tensor cast to `to`; containers that
 * hold none are shared, not copied. Each value is visited once: a tensor or
 * container reached twice is cast once and stays shared, and a container
 * inside itself (a cycle, which no writer takes) is left as it is. */
static const ckpt_value *cast_tree(ckpt_tree *tree, const ckpt_value *v, ckpt_dtype to,
                                   cast_memo *memo, int depth, size_t *count)
{
    if (!v || depth > 1000)
        return v;
    ckpt_kind kind = ckpt_value_kind(v);
    bool is_dict = kind == CKPT_KIND_DICT || kind == CKPT_KIND_ORDERED_DICT;
    bool is_seq = kind == CKPT_KIND_LIST || kind == CKPT_KIND_TUPLE || kind == CKPT_KIND_SET;
    if (kind != CKPT_KIND_TENSOR && !is_dict && !is_seq)
        return v;
    const ckpt_value *seen = memo_get(memo, v);
    if (seen)
        return seen == IN_PROGRESS ? v : seen;
    if (kind == CKPT_KIND_TENSOR) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ckpt_value_tensor(v), &ti);
        if (ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage || !castable(ti.dtype) ||
            ti.dtype == to)
            return v;
        const ckpt_value *c = ckpt_new_cast(tree, v, to);
        if (!memo_set(memo, v, c))
            return NULL;
        (*count)++;
        return c;
    }
    if (!memo_set(memo, v, IN_PROGRESS))
        return NULL;
    size_t n = ckpt_value_len(v);
    const ckpt_value **kids = malloc((n ? n : 1) * sizeof(*kids));
    if (!kids)
        return NULL;
    bool changed = false;
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *child = is_dict ? ckpt_value_dict_value(v, i) : ckpt_value_item(v, i);
        kids[i] = cast_tree(tree, child, to, memo, depth + 1, count);
        changed |= kids[i] != child;
    }
    const ckpt_value *result = v;
    if (changed) {
        ckpt_value *c = kind == CKPT_KIND_DICT ? ckpt_new_dict(tree)
                        : kind == CKPT_KIND_ORDERED_DICT ? ckpt_new_ordered_dict(tree)
                        : kind == CKPT_KIND_LIST ? ckpt_new_list(tree)
                        : kind == CKPT_KIND_TUPLE ? ckpt_new_tuple(tree) : ckpt_new_set(tree);
        for (size_t i = 0; i < n; i++) {
            if (is_dict)
                ckpt_dict_put(tree, c, ckpt_value_key(v, i), kids[i]);
            else
                ckpt_append(tree, c, kids[i]);
        }
        if (kind == CKPT_KIND_ORDERED_DICT && ckpt_value_state(v))
            ckpt_set_state(tree, c, ckpt_value_state(v));
        result = c;
    }
    free(kids);
    memo_set(memo, v, result); /* v has its slot: nothing to allocate */
    return result;
}

/* ---- dtypes that older safetensors readers refuse ------------------------- */

/* Sets bit d of *seen for each tensor dtype under v; `budget` bounds the walk
 * (a shared or cyclic container is walked again, never forever). */
static void dtypes_under(const ckpt_value *v, uint64_t *seen, int depth, size_t *budget)
{
    if (!v || depth > 1000 || *budget == 0)
        return;
    (*budget)--;
    ckpt_kind kind = ckpt_value_kind(v);
    bool is_dict = kind == CKPT_KIND_DICT || kind == CKPT_KIND_ORDERED_DICT;
    if (kind == CKPT_KIND_TENSOR) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ckpt_value_tensor(v), &ti);
        if ((unsigned)ti.dtype < 64)
            *seen |= UINT64_C(1) << ti.dtype;
        return;
    }
    if (!is_dict && kind != CKPT_KIND_LIST && kind != CKPT_KIND_TUPLE)
        return;
    for (size_t i = 0, n = ckpt_value_len(v); i < n; i++)
        dtypes_under(is_dict ? ckpt_value_dict_value(v, i) : ckpt_value_item(v, i), seen,
                     depth + 1, budget);
}

/* The safetensors format took these dtypes in late: readers older than the
 * change (the safetensors package of Debian 13 among them, for C64) refuse the
 * whole file. One warning line names those written. */
static void warn_late_dtypes(const char *out, const ckpt_value *root)
{
    static const ckpt_dtype late[] = {CKPT_DTYPE_COMPLEX64, CKPT_DTYPE_FLOAT8_E8M0FNU,
                                      CKPT_DTYPE_FLOAT4_E2M1, CKPT_DTYPE_FLOAT6_E2M3,
                                      CKPT_DTYPE_FLOAT6_E3M2};
    uint64_t seen = 0;
    size_t budget = (size_t)1 << 20;
    dtypes_under(root, &seen, 0, &budget);
    char names[128] = "";
    size_t len = 0;
    for (size_t i = 0; i < sizeof(late) / sizeof(late[0]); i++) {
        if (!(seen & (UINT64_C(1) << late[i])))
            continue;
        int w = snprintf(names + len, sizeof(names) - len, "%s%s", len ? ", " : "",
                         ckpt_dtype_safetensors_name(late[i]));
        if (w > 0 && (size_t)w < sizeof(names) - len)
            len += (size_t)w;
    }
    if (len)
        fprintf(stderr, "ckpt convert: warning: %s holds %s: added to the safetensors format "
                        "late, older readers refuse the file\n", out, names);
}

/* ---- pickled modules --------------------------------------------------------- */

/* An OrderedDict of the tensors under `key` (all tensors when NULL), named
 * as the file names them (a module's state_dict() names) without the key. */
static const ckpt_value *object_state_dict(ckpt_tree *tree, const ckpt_file *f, const char *key)
{
    ckpt_value *sd = ckpt_new_ordered_dict(tree);
    size_t klen = key ? strlen(key) : 0;
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        const char *name;
        ckpt_file_tensor(f, i, &name);
        if (key) {
            if (strncmp(name, key, klen) != 0 || name[klen] != '.')
                continue;
            name += klen + 1;
        }
        if (!ckpt_value_get(sd, name)) /* a tensor listed twice keeps its first name */
            ckpt_dict_put_str(tree, sd, name, ckpt_file_tensor_value(f, i));
    }
    return sd;
}

/* One warning line for each filter or edit that did nothing, and for each
 * --strip-prefix that cut keys mid-name. */
static void warn_idle_edits(const convert_opts *o, const edit_stats *stats)
{
    for (size_t i = 0; i < o->n_include; i++)
        if (!stats->include[i])
            fprintf(stderr, "ckpt: warning: --include '%s' matches no key\n",
                    o->include[i]);
    for (size_t i = 0; i < o->n_exclude; i++)
        if (!stats->exclude[i])
            fprintf(stderr, "ckpt: warning: --exclude '%s' matches no key\n",
                    o->exclude[i]);
    for (size_t i = 0; i < o->n_strip; i++) {
        if (!stats->strip[i])
            fprintf(stderr, "ckpt: warning: --strip-prefix '%s' matches no key\n",
                    o->strip[i]);
        else if (stats->strip_partial[i])
            fprintf(stderr, "ckpt: warning: --strip-prefix '%s' does not end at a '.': "
                            "it leaves keys such as '%s' (did you mean '%s.'?)\n",
                    o->strip[i], stats->strip_partial[i], o->strip[i]);
    }
    for (size_t i = 0; i < o->n_rename; i++)
        if (!stats->rename[i])
            fprintf(stderr, "ckpt: warning: --rename '%s=' matches no key\n",
                    o->rename[i].from);
}

/* ---- signals --------------------------------------------------------------- */

static void on_signal(int sig)
{
    ckpt_remove_temporaries();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* SIGINT and SIGTERM remove the temporary being written, then end the
 * process as the signal would. */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        struct sigaction old;
        /* a signal ignored on entry (nohup, a shell's background job) stays so */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(sigs[i], &sa, NULL);
    }
}

/* ---- the command ----------------------------------------------------------- */

enum {
    OPT_TO = CLI_OPT_LONG, OPT_KEY, OPT_STRIP_PREFIX, OPT_ADD_PREFIX, OPT_RENAME, OPT_INCLUDE,
    OPT_EXCLUDE, OPT_DTYPE, OPT_MAP_LOCATION, OPT_MAX_OUTPUT_RATIO, OPT_NO_FSYNC, OPT_PERMISSIVE,
    OPT_FORCE, OPT_TORCHSCRIPT_WEIGHTS, OPT_MAX_SHARD_SIZE,
};

static const struct option convert_options[] = {
    {"to", required_argument, NULL, OPT_TO},
    {"key", required_argument, NULL, OPT_KEY},
    {"strip-prefix", required_argument, NULL, OPT_STRIP_PREFIX},
    {"add-prefix", required_argument, NULL, OPT_ADD_PREFIX},
    {"rename", required_argument, NULL, OPT_RENAME},
    {"include", required_argument, NULL, OPT_INCLUDE},
    {"exclude", required_argument, NULL, OPT_EXCLUDE},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"map-location", required_argument, NULL, OPT_MAP_LOCATION},
    {"max-output-ratio", required_argument, NULL, OPT_MAX_OUTPUT_RATIO},
    {"no-fsync", no_argument, NULL, OPT_NO_FSYNC},
    {"permissive", no_argument, NULL, OPT_PERMISSIVE},
    {"torchscript-weights", no_argument, NULL, OPT_TORCHSCRIPT_WEIGHTS},
    {"force", no_argument, NULL, OPT_FORCE},
    {"max-shard-size", required_argument, NULL, OPT_MAX_SHARD_SIZE},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command convert_command = {"convert", "ckpt convert IN OUT [options]", "hq",
                                            convert_options};

/* Adds a repeatable option's value to list (n of them); false after saying
 * that there are too many. */
static bool push_value(const char **list, size_t *n, const char *opt, const char *val)
{
    if (*n == MAX_EDITS) {
        cli_usage_error(&convert_command, "too many %s options (at most %d)", opt, MAX_EDITS);
        return false;
    }
    list[(*n)++] = val;
    return true;
}

/* 0 parsed, 1 help shown, -1 error (said). */
static int parse_args(int argc, char **argv, convert_opts *o)
{
    memset(o, 0, sizeof(*o));
    size_t npos = 0;
    cli_args args;
    cli_args_init(&args, &convert_command, argc, argv);
    const char *val;
    int c;
    while ((c = cli_next_arg(&args, &val)) != CLI_OPT_END) {
        switch (c) {
        case 'h': convert_usage(stdout); return 1;
        case OPT_TO: o->to = val; break;
        case OPT_KEY: o->key = val; break;
        case OPT_STRIP_PREFIX:
            if (!push_value(o->strip, &o->n_strip, "--strip-prefix", val))
                return -1;
            break;
        case OPT_ADD_PREFIX: o->add_prefix = val; break;
        case OPT_RENAME: {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                cli_usage_error(&convert_command, "--rename needs OLD=NEW, not '%s'", val);
                return -1;
            }
            if (o->n_rename == MAX_EDITS) {
                cli_usage_error(&convert_command, "too many --rename options (at most %d)",
                                MAX_EDITS);
                return -1;
            }
            char *from = strndup(val, (size_t)(eq - val));
            if (!from) {
                fprintf(stderr, "ckpt: convert: out of memory\n");
                return -1;
            }
            o->rename[o->n_rename].from = from;
            o->rename[o->n_rename++].to = eq + 1;
            break;
        }
        case OPT_INCLUDE:
            if (!push_value(o->include, &o->n_include, "--include", val))
                return -1;
            break;
        case OPT_EXCLUDE:
            if (!push_value(o->exclude, &o->n_exclude, "--exclude", val))
                return -1;
            break;
        case OPT_DTYPE: o->dtype_name = val; break;
        case OPT_MAP_LOCATION: o->location = val; break;
        case OPT_MAX_OUTPUT_RATIO:
            if (!cli_parse_ratio(&convert_command, "--max-output-ratio", val,
                                 &o->max_output_ratio))
                return -1;
            break;
        case OPT_NO_FSYNC: o->no_fsync = true; break;
        case OPT_PERMISSIVE: o->permissive = true; break;
        case OPT_TORCHSCRIPT_WEIGHTS: o->torchscript_weights = true; break;
        case OPT_FORCE: o->force = true; break;
        case OPT_MAX_SHARD_SIZE:
            if (!parse_shard_size(val, &o->max_shard_size)) {
                cli_usage_error(&convert_command, "--max-shard-size takes a size such as 5GB, "
                                                  "500MB, 2GiB or a number of bytes, not '%s'",
                                val);
                return -1;
            }
            break;
        case 'q': o->quiet = true; break;
        case CLI_OPT_ARG:
            if (npos == 2) {
                cli_usage_error(&convert_command, "too many files: '%s'", val);
                return -1;
            }
            if (npos++ == 0)
                o->in = val;
            else
                o->out = val;
            break;
        default: return -1;
        }
    }
    if (npos != 2) {
        convert_usage(stderr);
        return -1;
    }
    return 0;
}

int ckpt_cli_convert(int argc, char **argv)
{
    convert_opts o;
    int pr = parse_args(argc, argv, &o);
    int rc = CLI_EXIT_ERROR;
    if (pr != 0) {
        rc = pr > 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
        goto done_args;
    }
    int fmt = format_of(&o);
    bool sharded = sharded_output(&o);
    if (sharded) {
        if (fmt == 1 && o.to) {
            cli_usage_error(&convert_command, "a sharded output (--max-shard-size, or OUT "
                                              "ending in '/') is safetensors, not --to %s", o.to);
            goto done_args;
        }
        fmt = 2;
    }
    if (fmt == 0) {
        if (o.to)
            cli_usage_error(&convert_command, "--to takes pth or safetensors, not '%s'", o.to);
        else
            cli_usage_error(&convert_command, "cannot tell the output format of %s: use --to "
                                              "pth or --to safetensors", o.out);
        goto done_args;
    }
    int named = sharded ? 0 : format_of_name(o.out);
    if (o.to && named && named != fmt && !o.force) {
        cli_usage_error(&convert_command, "--to %s contradicts the extension of %s (a %s "
                                          "file): rename OUT, or --force",
                        o.to, o.out, named == 2 ? "safetensors" : "torch");
        goto done_args;
    }
    if (o.location && !location_valid(o.location)) {
        cli_usage_error(&convert_command, "--map-location '%s' is not a location torch.load "
                                          "restores: cpu, cuda, cuda:N, mps, meta, xpu, xpu:N, "
                                          "hpu, hpu:N", o.location);
        goto done_args;
    }
    ckpt_dtype to_dtype = CKPT_DTYPE_INVALID;
    if (o.dtype_name) {
        to_dtype = ckpt_dtype_from_name(o.dtype_name);
        if (!castable(to_dtype)) {
            cli_usage_error(&convert_command, "--dtype takes float32, float16, bfloat16 or "
                                              "float64, not '%s'", o.dtype_name);
            goto done_args;
        }
    }

    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    if (o.permissive)
        oo.flags |= CKPT_OPEN_PERMISSIVE;
    if (o.torchscript_weights)
        oo.flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS;
    if (o.max_output_ratio)
        oo.limits.max_output_ratio = o.max_output_ratio;
    ckpt_error err;
    ckpt_file *f = NULL;
    if (ckpt_open(o.in, &oo, &f, &err) != CKPT_OK) {
        cli_print_error(o.in, &err);
        goto done_args;
    }
    edit_stats stats;
    memset(&stats, 0, sizeof(stats));
    ckpt_tree *tree = ckpt_tree_new();
    if (!tree) {
        fprintf(stderr, "ckpt: convert: out of memory\n");
        goto done_file;
    }
    ckpt_file_info info = {.struct_size = sizeof(info)};
    ckpt_file_get_info(f, &info);

    const ckpt_value *root = ckpt_file_root(f);
    if (o.key) {
        root = cli_find_path(root, o.key);
        if (!root) {
            fprintf(stderr, "ckpt: convert: %s: no value at --key %s\n", o.in, o.key);
            cli_key_missing(o.in, ckpt_file_root(f), "--key", o.key);
            goto done_tree;
        }
    }
    if (ckpt_value_kind(root) == CKPT_KIND_OBJECT && fmt == 1) {
        /* A pickled object (torch.save(model), read with --permissive)
         * cannot be written back: write what state_dict() would give. */
        root = object_state_dict(tree, f, o.key);
        if (!root) {
            fprintf(stderr, "ckpt: convert: out of memory\n");
            goto done_tree;
        }
    }
    if (key_edits(&o)) {
        ckpt_kind k = ckpt_value_kind(root);
        if (k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT) {
            fprintf(stderr, "ckpt: convert: key edits and filters need a dict (the state dict); "
                            "%s holds a %s there: use --key\n", o.in, ckpt_kind_name(k));
            goto done_tree;
        }
        size_t dropped, before = ckpt_value_len(root);
        root = apply_key_edits(tree, &o, root, &dropped, &stats);
        if (!root) {
            fprintf(stderr, "ckpt: convert: out of memory\n");
            goto done_tree;
        }
        warn_idle_edits(&o, &stats);
        if (before && !ckpt_value_len(root) && !o.force) {
            fprintf(stderr, "ckpt: convert: the filters leave none of the %zu keys of %s: "
                            "nothing written (--force writes an empty dict)\n",
                    before, o.in);
            goto done_tree;
        }
    }
    size_t casts = 0;
    if (to_dtype != CKPT_DTYPE_INVALID) {
        cast_memo memo = {0};
        root = cast_tree(tree, root, to_dtype, &memo, 0, &casts);
        free(memo.from);
        free(memo.to);
        if (!root) {
            fprintf(stderr, "ckpt: convert: out of memory\n");
            goto done_tree;
        }
    }
    if (ckpt_tree_status(tree, &err) != CKPT_OK) {
        cli_print_error(o.in, &err);
        goto done_tree;
    }

    ckpt_save_options so;
    ckpt_save_options_default(&so);
    if (o.no_fsync)
        so.flags |= CKPT_SAVE_NO_FSYNC;
    so.location = o.location;
    cli_progress prog;
    cli_progress_init(&prog, !o.quiet);
    so.progress = cli_progress_update;
    so.progress_user = &prog;
    catch_signals();
    ckpt_status st;
    if (fmt == 2) {
        /* Keep a safetensors input's metadata; mark torch-made content as
         * "pt" like the reference writer's users do. */
        const ckpt_value *meta = info.format == CKPT_FORMAT_SAFETENSORS ? info.metadata : NULL;
        if (!meta) {
            ckpt_value *m = ckpt_new_dict(tree);
            ckpt_dict_put_str(tree, m, "format", ckpt_new_str(tree, "pt", SIZE_MAX));
            meta = m;
        }
        so.metadata = meta;
        if (sharded)
            st = ckpt_save_safetensors_sharded(
                o.out, root, o.max_shard_size ? o.max_shard_size : DEFAULT_SHARD_SIZE, &so, &err);
        else
            st = ckpt_save_safetensors(o.out, root, &so, &err);
    } else {
        /* "format": "pt" is the reference writer's marker, nothing to lose */
        size_t meta_len = ckpt_value_len(info.metadata);
        if (meta_len == 1 && ckpt_value_get(info.metadata, "format"))
            meta_len = 0;
        if (!o.quiet && info.format == CKPT_FORMAT_SAFETENSORS && meta_len)
            fprintf(stderr, "ckpt: convert: note: %s's __metadata__ is not kept in a torch file\n",
                    o.in);
        st = ckpt_save_torch(o.out, root, &so, &err);
    }
    cli_progress_end(&prog);
    if (st != CKPT_OK) {
        cli_print_error(o.out, &err);
        if (st == CKPT_ERR_LIMIT && strstr(err.message, "max_output_ratio"))
            fprintf(stderr, "ckpt: convert: --max-output-ratio N writes more (%s is untouched)\n",
                    o.out);
        if (st == CKPT_ERR_UNSAFE && o.permissive)
            fprintf(stderr, "ckpt: convert: hint: --key PATH to a pickled module writes its state "
                            "dict; a .safetensors output takes every tensor\n");
        goto done_tree;
    }
    if (fmt == 2)
        warn_late_dtypes(o.out, root);
    rc = CLI_EXIT_OK;
done_tree:
    for (size_t i = 0; i < MAX_EDITS; i++)
        free(stats.strip_partial[i]);
    ckpt_tree_free(tree);
done_file:
    ckpt_close(f);
done_args:
    for (size_t i = 0; i < o.n_rename; i++)
        free((char *)(uintptr_t)o.rename[i].from);
    return rc;
}

/*
 * ckpt - command-line tool over libckpt. Uses only the public header.
 */
#include "cli.h"

#include <jansson.h>
#include <libdeflate.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yajl/yajl_version.h>
#include <zlib.h>

static const char *PROG = "ckpt";

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ckpt <command> [options] FILE...\n"
            "\n"
            "Read, write and convert PyTorch checkpoints safely: no Python, no pickle code\n"
            "ever runs.\n"
            "Formats: torch.save zip (1.6+), legacy torch.save (< 1.6), safetensors, sharded\n"
            "indexes (*.index.json), plain pickle; the weights of TorchScript archives\n"
            "(torch.jit.save) with --torchscript-weights, read as data, never run.\n"
            "\n"
            "commands:\n"
            "  inspect FILE [--json] [--full] [--permissive]\n"
            "                                   format details, value tree, tensor table, totals\n"
            "  scan FILE|DIR... [--json] [--allow MODULE.NAME]...\n"
            "                                   is it safe to torch.load(weights_only=True)?\n"
            "  verify FILE...                   check structure, every CRC32 and every tensor's bounds\n"
            "  convert IN OUT [options]         torch zip <-> safetensors, --key, key edits, --dtype\n"
            "  diff A B [--atol X] [--rtol Y]   compare two checkpoints (any formats)\n"
            "  match FILE --model REF [options] will FILE load into the model whose state dict\n"
            "                                   REF holds? PyTorch's load_state_dict() report\n"
            "  ls DIR [--json]                  list a checkpoint directory kept by the manager\n"
            "  prune DIR --keep N [--keep-best N] [--dry-run] [-q]\n"
            "                                   remove numbered checkpoints beyond the newest N\n"
            "                                   and the N best (last.pth and best.pth stay)\n"
            "  version                          print the version and the versions of the\n"
            "                                   libraries it was built with\n"
            "\n"
            "options: '--opt VALUE' or '--opt=VALUE', before or after the files; '--' ends\n"
            "the options (for a file whose name starts with '-').\n"
            "results go to stdout; warnings and errors to stderr, starting 'ckpt: '.\n"
            "exit status: the same in every command: 0 done, the answer is yes; 1 done, the\n"
            "answer is no: corrupt (verify), different (diff), unsafe (scan), does not load\n"
            "(match); 2 it could not be done: a file cannot be read or written, unsupported,\n"
            "refused (unsafe, over a limit, prune without a manifest), a bad option\n"
            "run 'ckpt <command> --help' for a command's options.\n");
}

/* ---- shape/text helpers ------------------------------------------------- */

static void shape_text(const ckpt_tensor_info *ti, char *buf, size_t size)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, size - n, "[");
    for (uint32_t i = 0; i < ti->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)ti->shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

static char *hex_text(const unsigned char *p, size_t n)
{
    char *out = malloc(n * 2 + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
    out[2 * n] = 0;
    return out;
}

/* ---- value tree as JSON ------------------------------------------------ */

#define TREE_MAX_DEPTH 200
/* Containers shared through the pickle memo repeat in the tree; a budget of
 * nodes keeps output bounded when sharing nests (2^depth paths). */
#define TREE_MAX_NODES 2000000
/* ... and a budget of text: a long string shared through the memo would
 * repeat whole under every path to it. */
#define TREE_MAX_TEXT_BYTES ((uint64_t)256 << 20)

typedef struct tree_walk {
    cli_jw *jw;
    const ckpt_value *path[TREE_MAX_DEPTH];
    uint64_t nodes_left;
    uint64_t text_left;
} tree_walk;

/* Takes n bytes of text from the budget; false (and {"$truncated": true}
 * written) when fewer are left. */
static bool text_budget(tree_walk *w, uint64_t n);

/* {"tag": "text"} */
static void tagged_text(cli_jw *jw, const char *tag, const char *text)
{
    cli_jw_begin_object(jw);
    cli_jw_key(jw, tag);
    cli_jw_string(jw, text);
    cli_jw_end_object(jw);
}

static void tagged_true(cli_jw *jw, const char *tag)
{
    cli_jw_begin_object(jw);
    cli_jw_key(jw, tag);
    cli_jw_bool(jw, true);
    cli_jw_end_object(jw);
}

static void tensor_summary_json(cli_jw *jw, const ckpt_tensor *t)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    cli_jw_begin_object(jw);
    cli_jw_key(jw, "$tensor");
    cli_jw_begin_object(jw);
    cli_jw_key(jw, "dtype");
    cli_jw_string(jw, ckpt_dtype_name(ti.dtype));
    cli_jw_key(jw, "shape");
    cli_jw_begin_array(jw);
    for (uint32_t i = 0; i < ti.ndim; i++)
        cli_jw_int(jw, ti.shape[i]);
    cli_jw_end_array(jw);
    if (ti.is_parameter) {
        cli_jw_key(jw, "parameter");
        cli_jw_bool(jw, true);
    }
    if (ti.layout != CKPT_LAYOUT_STRIDED) {
        cli_jw_key(jw, "layout");
        cli_jw_string(jw, ckpt_layout_name(ti.layout));
    }
    cli_jw_end_object(jw);
    cli_jw_end_object(jw);
}

static bool text_budget(tree_walk *w, uint64_t n)
{
    if (n > w->text_left) {
        w->text_left = 0;
        tagged_true(w->jw, "$truncated");
        return false;
    }
    w->text_left -= n;
    return true;
}

static void value_json(const ckpt_value *v, tree_walk *w, int depth);

static void seq_json(const ckpt_value *v, tree_walk *w, int depth)
{
    cli_jw_begin_array(w->jw);
    for (size_t i = 0; i < ckpt_value_len(v); i++)
        value_json(ckpt_value_item(v, i), w, depth + 1);
    cli_jw_end_array(w->jw);
}

/* {"tag": [items]} */
static void tagged_seq(const char *tag, const ckpt_value *v, tree_walk *w, int depth)
{
    cli_jw_begin_object(w->jw);
    cli_jw_key(w->jw, tag);
    seq_json(v, w, depth);
    cli_jw_end_object(w->jw);
}

/* An object when every key is text JSON can hold, else {"$dict": [[k, v], ...]}. */
static void dict_json(const ckpt_value *v, tree_walk *w, int depth)
{
    cli_jw *jw = w->jw;
    bool all_str = true;
    size_t n = ckpt_value_len(v);
    for (size_t i = 0; i < n && all_str; i++) {
        const ckpt_value *k = ckpt_value_key(v, i);
        size_t len;
        const char *s = ckpt_value_str(k, &len);
        all_str = ckpt_value_kind(k) == CKPT_KIND_STR && strlen(s) == len && cli_utf8_valid(s, len);
    }
    if (all_str) {
        cli_jw_begin_object(jw);
        for (size_t i = 0; i < n; i++) {
            cli_jw_key(jw, ckpt_value_str(ckpt_value_key(v, i), NULL));
            value_json(ckpt_value_dict_value(v, i), w, depth + 1);
        }
        cli_jw_end_object(jw);
        return;
    }
    cli_jw_begin_object(jw);
    cli_jw_key(jw, "$dict");
    cli_jw_begin_array(jw);
    for (size_t i = 0; i < n; i++) {
        cli_jw_begin_array(jw);
        value_json(ckpt_value_key(v, i), w, depth + 1);
        value_json(ckpt_value_dict_value(v, i), w, depth + 1);
        cli_jw_end_array(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_end_object(jw);
}

/* A float JSON cannot hold as a number: "nan", "inf", "-inf". */
static void float_json(cli_jw *jw, double d)
{
    if (isfinite(d))
        cli_jw_real(jw, d);
    else
        cli_jw_string(jw, isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
}

static void value_json(const ckpt_value *v, tree_walk *w, int depth)
{
    cli_jw *jw = w->jw;
    if (depth >= TREE_MAX_DEPTH || w->nodes_left == 0) {
        tagged_true(jw, "$truncated");
        return;
    }
    w->nodes_left--;
    for (int i = 0; i < depth; i++) {
        if (w->path[i] == v) {
            tagged_true(jw, "$cycle");
            return;
        }
    }
    w->path[depth] = v;
    size_t len;
    const char *s;
    switch (ckpt_value_kind(v)) {
    case CKPT_KIND_NONE: cli_jw_null(jw); return;
    case CKPT_KIND_BOOL: cli_jw_bool(jw, ckpt_value_bool(v)); return;
    case CKPT_KIND_INT: cli_jw_int(jw, ckpt_value_int(v)); return;
    case CKPT_KIND_BIGINT: {
        ckpt_value_str(v, &len);
        if (!text_budget(w, 3 * (uint64_t)len))
            return;
        char *t = cli_repr(v);
        tagged_text(jw, "$int", t ? t : "?");
        free(t);
        return;
    }
    case CKPT_KIND_FLOAT: {
        double d = ckpt_value_float(v);
        if (isfinite(d))
            cli_jw_real(jw, d);
        else
            tagged_text(jw, "$float", isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
        return;
    }
    case CKPT_KIND_COMPLEX: {
        double re, im;
        ckpt_value_complex(v, &re, &im);
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "$complex");
        cli_jw_begin_array(jw);
        float_json(jw, re);
        float_json(jw, im);
        cli_jw_end_array(jw);
        cli_jw_end_object(jw);
        return;
    }
    case CKPT_KIND_STR: {
        s = ckpt_value_str(v, &len);
        if (!text_budget(w, len))
            return;
        if (cli_utf8_valid(s, len)) {
            cli_jw_stringn(jw, s, len);
            return;
        }
        char *h = hex_text((const unsigned char *)s, len);
        tagged_text(jw, "$str_utf8_hex", h ? h : "");
        free(h);
        return;
    }
    case CKPT_KIND_BYTES: {
        s = ckpt_value_str(v, &len);
        if (!text_budget(w, 2 * (uint64_t)len))
            return;
        char *h = hex_text((const unsigned char *)s, len);
        tagged_text(jw, "$bytes", h ? h : "");
        free(h);
        return;
    }
    case CKPT_KIND_LIST: seq_json(v, w, depth); return;
    case CKPT_KIND_TUPLE: tagged_seq("$tuple", v, w, depth); return;
    case CKPT_KIND_SET: tagged_seq("$set", v, w, depth); return;
    case CKPT_KIND_SIZE: tagged_seq("$size", v, w, depth); return;
    case CKPT_KIND_DICT: dict_json(v, w, depth); return;
    case CKPT_KIND_ORDERED_DICT: {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "$odict");
        dict_json(v, w, depth);
        const ckpt_value *st = ckpt_value_state(v);
        if (st) {
            cli_jw_key(jw, "$state");
            value_json(st, w, depth + 1);
        }
        cli_jw_end_object(jw);
        return;
    }
    case CKPT_KIND_DEVICE: tagged_text(jw, "$device", ckpt_value_str(v, NULL)); return;
    case CKPT_KIND_DTYPE: tagged_text(jw, "$dtype", ckpt_dtype_name(ckpt_value_dtype(v))); return;
    case CKPT_KIND_GLOBAL: tagged_text(jw, "$global", ckpt_value_str(v, NULL)); return;
    case CKPT_KIND_OBJECT: {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "$object");
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "class");
        cli_jw_string(jw, ckpt_value_str(v, NULL));
        cli_jw_key(jw, "args");
        value_json(ckpt_value_object_args(v), w, depth + 1);
        const ckpt_value *kw = ckpt_value_object_kwargs(v);
        if (kw) {
            cli_jw_key(jw, "kwargs");
            value_json(kw, w, depth + 1);
        }
        if (ckpt_value_state(v)) {
            cli_jw_key(jw, "state");
            value_json(ckpt_value_state(v), w, depth + 1);
        }
        if (ckpt_value_object_dict(v)) {
            cli_jw_key(jw, "dict");
            value_json(ckpt_value_object_dict(v), w, depth + 1);
        }
        if (ckpt_value_object_items(v)) {
            cli_jw_key(jw, "items");
            value_json(ckpt_value_object_items(v), w, depth + 1);
        }
        cli_jw_end_object(jw);
        cli_jw_end_object(jw);
        return;
    }
    case CKPT_KIND_TENSOR: tensor_summary_json(jw, ckpt_value_tensor(v)); return;
    }
    cli_jw_null(jw);
}

/* ---- inspect ---------------------------------------------------------- */

static void key_string(cli_jw *jw, const char *key, const char *s)
{
    cli_jw_key(jw, key);
    if (s)
        cli_jw_string(jw, s);
    else
        cli_jw_null(jw);
}

static void key_int(cli_jw *jw, const char *key, long long v)
{
    cli_jw_key(jw, key);
    cli_jw_int(jw, v);
}

static void key_ints(cli_jw *jw, const char *key, const int64_t *v, uint32_t n)
{
    cli_jw_key(jw, key);
    cli_jw_begin_array(jw);
    for (uint32_t i = 0; i < n; i++)
        cli_jw_int(jw, v[i]);
    cli_jw_end_array(jw);
}

static void key_bool(cli_jw *jw, const char *key, bool b)
{
    cli_jw_key(jw, key);
    cli_jw_bool(jw, b);
}

/* Totals as inspect --json writes them; the object is left open. */
static void json_totals(cli_jw *jw, const cli_total *t)
{
    cli_jw_begin_object(jw);
    key_int(jw, "tensors", (long long)t->tensors);
    key_int(jw, "distinct", (long long)t->distinct);
    key_int(jw, "elements", (long long)t->elements);
    key_int(jw, "bytes", (long long)t->bytes);
}

/* A TorchScript archive (opened with --torchscript-weights): a torch zip
 * holding PREFIX/constants.pkl or PREFIX/code/. */
static bool is_torchscript(const ckpt_file *f, const ckpt_file_info *fi)
{
    if (fi->format != CKPT_FORMAT_TORCH_ZIP || !fi->prefix)
        return false;
    size_t pn = strlen(fi->prefix);
    for (size_t i = 0; i < ckpt_file_record_count(f); i++) {
        ckpt_record_info ri = {.struct_size = sizeof(ri)};
        if (ckpt_file_record(f, i, &ri) != CKPT_OK || !ri.name ||
            strncmp(ri.name, fi->prefix, pn) != 0 || ri.name[pn] != '/')
            continue;
        const char *rest = ri.name + pn + 1;
        if (strcmp(rest, "constants.pkl") == 0 || strncmp(rest, "code/", 5) == 0)
            return true;
    }
    return false;
}

/* Written as it goes: a file's tensor list can be long (a tensor shared
 * through the memo is listed once per path). */
static int inspect_json(const char *path, ckpt_file *f)
{
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    cli_totals tot;
    tree_walk *w = calloc(1, sizeof(*w));
    cli_jw *jw = malloc(sizeof(*jw));
    if (!w || !jw || !cli_count_totals(f, &tot)) {
        free(w);
        free(jw);
        fprintf(stderr, "%s: %s: out of memory\n", PROG, path);
        return CLI_EXIT_ERROR;
    }
    cli_jw_init(jw, stdout, 1);
    w->jw = jw;
    cli_jw_begin_object(jw);
    key_string(jw, "file", path);
    key_string(jw, "format", ckpt_format_name(fi.format));
    cli_jw_key(jw, "details");
    cli_jw_begin_object(jw);
    key_int(jw, "file_size", (long long)fi.file_size);
    cli_jw_key(jw, "torchscript");
    cli_jw_bool(jw, is_torchscript(f, &fi));
    key_string(jw, "prefix", fi.prefix);
    key_string(jw, "version", fi.version);
    key_string(jw, "byteorder", fi.byteorder);
    key_string(jw, "serialization_id", fi.serialization_id);
    key_string(jw, "format_version", fi.format_version);
    key_string(jw, "storage_alignment", fi.storage_alignment);
    cli_jw_key(jw, "pickle_protocol");
    if (fi.pickle_protocol >= 0)
        cli_jw_int(jw, fi.pickle_protocol);
    else
        cli_jw_null(jw);
    if (fi.format == CKPT_FORMAT_TORCH_LEGACY)
        key_int(jw, "legacy_protocol_version", fi.legacy_protocol_version);
    key_int(jw, "data_alignment", (long long)fi.data_alignment);
    key_bool(jw, "big_endian", fi.big_endian);
    key_int(jw, "records", (long long)fi.record_count);
    key_int(jw, "storages", (long long)fi.storage_count);
    if (fi.format == CKPT_FORMAT_SHARDED)
        key_int(jw, "shards", (long long)fi.shard_count);
    cli_jw_end_object(jw);

    cli_jw_key(jw, "records");
    cli_jw_begin_array(jw);
    for (size_t i = 0; i < fi.record_count; i++) {
        ckpt_record_info ri = {.struct_size = sizeof(ri)};
        if (ckpt_file_record(f, i, &ri) != CKPT_OK)
            continue;
        cli_jw_begin_object(jw);
        key_string(jw, "name", ri.name);
        key_int(jw, "data_offset", (long long)ri.data_offset);
        key_int(jw, "size", (long long)ri.size);
        if (ri.compressed)
            key_int(jw, "stored_size", (long long)ri.stored_size);
        if (ri.has_crc) {
            char crc[16];
            snprintf(crc, sizeof(crc), "%08x", ri.crc32);
            key_string(jw, "crc32", crc);
        }
        key_bool(jw, "compressed", ri.compressed);
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);

    cli_jw_key(jw, "tensors");
    cli_jw_begin_array(jw);
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        const char *name;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        cli_jw_begin_object(jw);
        key_string(jw, "name", name);
        key_string(jw, "dtype", ckpt_dtype_name(ti.dtype));
        key_ints(jw, "shape", ti.shape, ti.ndim);
        key_ints(jw, "stride", ti.stride, ti.ndim);
        key_int(jw, "storage_offset", ti.storage_offset);
        key_int(jw, "numel", (long long)ti.numel);
        key_int(jw, "nbytes", (long long)ti.nbytes);
        key_bool(jw, "requires_grad", ti.requires_grad);
        key_bool(jw, "parameter", ti.is_parameter);
        key_bool(jw, "contiguous", ti.is_contiguous);
        key_string(jw, "storage", ti.storage_key);
        cli_jw_key(jw, "storage_index");
        if (ti.has_storage)
            cli_jw_int(jw, (long long)ti.storage_index);
        else
            cli_jw_null(jw);
        key_int(jw, "storage_nbytes", (long long)ti.storage_nbytes);
        key_string(jw, "location", ti.location);
        key_string(jw, "record", ti.record);
        cli_jw_key(jw, "data_offset");
        if (ti.storage_file_offset == CKPT_NO_OFFSET)
            cli_jw_null(jw);
        else
            cli_jw_int(jw, (long long)ti.storage_file_offset);
        key_string(jw, "layout", ckpt_layout_name(ti.layout));
        if (ti.layout != CKPT_LAYOUT_STRIDED)
            key_int(jw, "nnz", (long long)ti.nnz);
        size_t nc = ckpt_tensor_chunk_count(t);
        if (nc) {
            /* a DCP tensor: where each box of it is */
            cli_jw_key(jw, "chunks");
            cli_jw_begin_array(jw);
            for (size_t k = 0; k < nc; k++) {
                ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
                if (!ckpt_tensor_chunk(t, k, &ci))
                    continue;
                cli_jw_begin_object(jw);
                key_ints(jw, "offsets", ci.offsets, ci.ndim);
                key_ints(jw, "sizes", ci.sizes, ci.ndim);
                key_string(jw, "file", ci.file);
                key_int(jw, "file_offset", (long long)ci.file_offset);
                key_int(jw, "length", (long long)ci.length);
                cli_jw_end_object(jw);
            }
            cli_jw_end_array(jw);
        }
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_key(jw, "totals");
    json_totals(jw, &tot.all);
    cli_jw_end_object(jw);
    cli_jw_key(jw, "model");
    if (tot.model_key) {
        json_totals(jw, &tot.model);
        cli_jw_key(jw, "key");
        cli_jw_string(jw, tot.model_key);
        cli_jw_end_object(jw);
    } else {
        cli_jw_null(jw);
    }
    w->nodes_left = TREE_MAX_NODES;
    w->text_left = TREE_MAX_TEXT_BYTES;
    if (fi.metadata) {
        cli_jw_key(jw, "metadata");
        value_json(fi.metadata, w, 0);
    }
    cli_jw_key(jw, "tree");
    value_json(ckpt_file_root(f), w, 0);
    cli_jw_end_object(jw);
    bool ok = cli_jw_finish(jw, path);
    free(w);
    free(jw);
    return ok ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/* The display of a long text, made once per value: a text shared through
 * the memo shows on every line that reaches it. */
typedef struct shown_text {
    const ckpt_value *v;
    char *text;
} shown_text;

/* Human tree: containers show up to `width` items unless full. */
typedef struct tree_ctx {
    bool full;
    size_t width;
    uint64_t nodes_left;
    const ckpt_value *path[TREE_MAX_DEPTH];
    shown_text *shown;          /* open addressing by pointer */
    size_t shown_cap, shown_len;
} tree_ctx;

/* Text longer than this shows its start and its size. */
#define TREE_MAX_TEXT 200

static void print_repr(const ckpt_value *v)
{
    char *t = cli_repr(v);
    fputs(t ? t : "?", stdout);
    free(t);
}

/* A long text: the start of its repr, cut before a UTF-8 sequence, and its
 * size; malloc'd. Text (str) repeats its quote after the cut. */
static char *text_start(const ckpt_value *v, size_t len)
{
    char buf[TREE_MAX_TEXT + 64];
    ckpt_value_repr(v, buf, sizeof(buf));
    size_t k = TREE_MAX_TEXT + 1;
    while (k > 1 && ((unsigned char)buf[k] & 0xc0) == 0x80)
        k--;
    char *out = malloc(k + 48);
    if (!out)
        return NULL;
    if (ckpt_value_kind(v) == CKPT_KIND_STR)
        snprintf(out, k + 48, "%.*s...%c (%zu bytes)", (int)k, buf, buf[0], len);
    else
        snprintf(out, k + 48, "%.*s... (%zu bytes)", (int)k, buf, len);
    return out;
}

static size_t shown_hash(const ckpt_value *v, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)v * 0x9e3779b97f4a7c15ull;
    return (size_t)(h ^ (h >> 31)) & (cap - 1);
}

/* The display of a long text from c's cache (c may be NULL); NULL when out
 * of memory. */
static const char *long_text(tree_ctx *c, const ckpt_value *v, size_t len)
{
    if (!c)
        return NULL;
    if ((c->shown_len + 1) * 2 > c->shown_cap) {
        size_t cap = c->shown_cap ? c->shown_cap * 2 : 256;
        shown_text *t = calloc(cap, sizeof(*t));
        if (!t)
            return NULL;
        for (size_t i = 0; i < c->shown_cap; i++) {
            if (!c->shown[i].v)
                continue;
            size_t j = shown_hash(c->shown[i].v, cap);
            while (t[j].v)
                j = (j + 1) & (cap - 1);
            t[j] = c->shown[i];
        }
        free(c->shown);
        c->shown = t;
        c->shown_cap = cap;
    }
    size_t i = shown_hash(v, c->shown_cap);
    while (c->shown[i].v && c->shown[i].v != v)
        i = (i + 1) & (c->shown_cap - 1);
    if (!c->shown[i].v) {
        char *t = text_start(v, len);
        if (!t)
            return NULL;
        c->shown[i] = (shown_text){v, t};
        c->shown_len++;
    }
    return c->shown[i].text;
}

static void print_scalar(tree_ctx *c, const ckpt_value *v)
{
    size_t len;
    switch (ckpt_value_kind(v)) {
    case CKPT_KIND_STR:
    case CKPT_KIND_BIGINT:
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL:
        if (ckpt_value_str(v, &len) && len > TREE_MAX_TEXT) {
            const char *t = long_text(c, v, len);
            char *own = t ? NULL : text_start(v, len);
            fputs(t ? t : own ? own : "?", stdout);
            free(own);
        } else {
            print_repr(v);
        }
        break;
    case CKPT_KIND_BYTES: ckpt_value_str(v, &len); printf("bytes (%zu)", len); break;
    case CKPT_KIND_OBJECT:
        ckpt_value_str(v, &len);
        printf("%.*s%s object (inert)", TREE_MAX_TEXT, ckpt_value_str(v, NULL),
               len > TREE_MAX_TEXT ? "..." : "");
        break;
    case CKPT_KIND_TENSOR: {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ckpt_value_tensor(v), &ti);
        char shape[256];
        shape_text(&ti, shape, sizeof(shape));
        printf("%s %s %s", ti.is_parameter ? "Parameter" : "tensor", ckpt_dtype_name(ti.dtype), shape);
        if (ti.layout != CKPT_LAYOUT_STRIDED)
            printf(" %s, nnz %llu", ckpt_layout_name(ti.layout), (unsigned long long)ti.nnz);
        if (ti.location && strcmp(ti.location, "cpu") != 0)
            printf(" on %s", ti.location);
        break;
    }
    default: print_repr(v); break;
    }
}

static void print_tree(tree_ctx *c, const ckpt_value *v, int depth)
{
    ckpt_kind k = ckpt_value_kind(v);
    if (k == CKPT_KIND_OBJECT && ckpt_value_state(v) && depth + 1 < TREE_MAX_DEPTH) {
        /* an inert object shows its state (attributes) below it */
        print_scalar(c, v);
        printf("\n%*sstate: ", (depth + 1) * 2, "");
        print_tree(c, ckpt_value_state(v), depth + 1);
        return;
    }
    if (!cli_is_container(k)) {
        print_scalar(c, v);
        putchar('\n');
        return;
    }
    const char *names[] = {[CKPT_KIND_LIST] = "list", [CKPT_KIND_TUPLE] = "tuple", [CKPT_KIND_SET] = "set",
                           [CKPT_KIND_DICT] = "dict", [CKPT_KIND_ORDERED_DICT] = "OrderedDict"};
    size_t n = ckpt_value_len(v);
    const ckpt_value *meta = ckpt_value_get(ckpt_value_state(v), "_metadata");
    if (meta)
        printf("%s (%zu) with _metadata for %zu modules\n", names[k], n, ckpt_value_len(meta));
    else
        printf("%s (%zu)\n", names[k], n);
    for (int i = 0; i < depth; i++) {
        if (c->path[i] == v) {
            printf("%*s<cycle>\n", (depth + 1) * 2, "");
            return;
        }
    }
    if (depth + 1 >= TREE_MAX_DEPTH || c->nodes_left == 0) {
        printf("%*s...\n", (depth + 1) * 2, "");
        return;
    }
    c->nodes_left--;
    c->path[depth] = v;
    bool is_dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    size_t shown = c->full || n <= c->width ? n : c->width;
    for (size_t i = 0; i < shown; i++) {
        /* every line counts: a shared container repeats all of its items */
        if (c->nodes_left == 0) {
            printf("%*s...\n", (depth + 1) * 2, "");
            return;
        }
        c->nodes_left--;
        printf("%*s", (depth + 1) * 2, "");
        if (is_dict) {
            /* as tensor names show keys */
            const ckpt_value *key = ckpt_value_key(v, i);
            char text[256];
            if (ckpt_value_kind(key) != CKPT_KIND_STR)
                ckpt_value_key_text(key, text, sizeof(text));
            printf("%s: ", ckpt_value_kind(key) == CKPT_KIND_STR ? ckpt_value_str(key, NULL) : text);
            print_tree(c, ckpt_value_dict_value(v, i), depth + 1);
        } else {
            printf("[%zu] ", i);
            print_tree(c, ckpt_value_item(v, i), depth + 1);
        }
    }
    if (shown < n)
        printf("%*s... %zu more (use --full)\n", (depth + 1) * 2, "", n - shown);
}

/* "N tensors (M distinct: shared data counted once), E elements, B bytes (h)" */
static void print_totals(const char *lead, const cli_total *t)
{
    char h[32];
    cli_human_bytes(t->bytes, h, sizeof(h));
    printf("%s%zu tensor%s", lead, t->tensors, t->tensors == 1 ? "" : "s");
    if (t->distinct != t->tensors)
        printf(" (%zu distinct: shared data counted once)", t->distinct);
    printf(", %llu elements, %llu bytes (%s)\n", (unsigned long long)t->elements,
           (unsigned long long)t->bytes, h);
}

/* A DCP checkpoint's chunk layout: which file (rank) holds which box of
 * every tensor. */
static void print_chunks(ckpt_file *f, bool full)
{
    enum { SHOWN = 1000 };
    size_t nt = ckpt_file_tensor_count(f), shown = 0, total = 0;
    for (size_t i = 0; i < nt; i++)
        total += ckpt_tensor_chunk_count(ckpt_file_tensor(f, i, NULL));
    if (!total)
        return;
    printf("\nChunks (box in the tensor: file, item offset and bytes):\n");
    for (size_t i = 0; i < nt; i++) {
        const char *name;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        size_t nc = ckpt_tensor_chunk_count(t);
        if (nc && (full || shown < SHOWN))
            printf("  %s: %zu chunk%s\n", name, nc, nc == 1 ? "" : "s");
        for (size_t k = 0; k < nc; k++, shown++) {
            if (!full && shown >= SHOWN)
                continue;
            ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
            if (!ckpt_tensor_chunk(t, k, &ci))
                continue;
            char box[256];
            size_t n = 0;
            box[0] = 0;
            for (uint32_t d = 0; d < ci.ndim && n + 48 < sizeof(box); d++)
                n += (size_t)snprintf(box + n, sizeof(box) - n, "%s%lld:%lld", d ? ", " : "",
                                      (long long)ci.offsets[d],
                                      (long long)(ci.offsets[d] + ci.sizes[d]));
            printf("    [%s]  %s @ %llu (%llu bytes)\n", box, ci.file ? ci.file : "?",
                   (unsigned long long)ci.file_offset, (unsigned long long)ci.length);
        }
    }
    if (!full && total > SHOWN)
        printf("  ... %zu more chunks (--full shows every one)\n", total - SHOWN);
}

static int inspect_human(const char *path, ckpt_file *f, bool full)
{
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    char b1[64];
    cli_human_bytes(fi.file_size, b1, sizeof(b1));
    printf("File:     %s (%s)\n", path, b1);
    printf("Format:   %s\n", ckpt_format_name(fi.format));
    if (is_torchscript(f, &fi))
        printf("TorchScript: its weights, as torch.jit.load(f).state_dict() lists them; "
               "nothing run\n");
    if (fi.prefix)
        printf("Prefix:   %s\n", fi.prefix);
    if (fi.version)
        printf("Version:  %s\n", fi.version);
    if (fi.format == CKPT_FORMAT_TORCH_ZIP)
        printf("Byteorder: %s\n", fi.byteorder ? fi.byteorder : "(no record: little, torch < 2.1)");
    if (fi.serialization_id)
        printf("Serialization id: %s\n", fi.serialization_id);
    if (fi.format_version)
        printf("Format version: %s\n", fi.format_version);
    if (fi.storage_alignment)
        printf("Storage alignment: %s\n", fi.storage_alignment);
    if (fi.legacy_protocol_version)
        printf("Legacy protocol: %lld\n", (long long)fi.legacy_protocol_version);
    if (fi.pickle_protocol >= 0)
        printf("Pickle protocol: %d\n", fi.pickle_protocol);
    if (fi.data_alignment)
        printf("Data alignment: %llu bytes%s\n", (unsigned long long)fi.data_alignment,
               fi.data_alignment >= 64 ? " (zero-copy)" : "");
    if (fi.format == CKPT_FORMAT_SHARDED) {
        printf("Shards:   %zu\n", fi.shard_count);
    } else if (fi.format == CKPT_FORMAT_DCP) {
        uint64_t bytes = 0;
        for (size_t i = 0; i < fi.record_count; i++) {
            ckpt_record_info ri = {.struct_size = sizeof(ri)};
            if (ckpt_file_record(f, i, &ri) == CKPT_OK)
                bytes += ri.size;
        }
        cli_human_bytes(bytes, b1, sizeof(b1));
        printf("Files:    %zu (%s) beside .metadata   Tensors: %zu\n", fi.record_count, b1,
               fi.storage_count);
    } else {
        printf("Records:  %zu   Storages: %zu\n", fi.record_count, fi.storage_count);
    }
    if (fi.metadata) {
        printf("Metadata:\n");
        for (size_t i = 0; i < ckpt_value_len(fi.metadata); i++) {
            printf("  %s: ", ckpt_value_str(ckpt_value_key(fi.metadata, i), NULL));
            print_scalar(NULL, ckpt_value_dict_value(fi.metadata, i));
            putchar('\n');
        }
    }
    printf("\nTree:\n  ");
    tree_ctx *tc = calloc(1, sizeof(*tc));
    if (!tc)
        return CLI_EXIT_ERROR;
    tc->full = full;
    tc->width = 20;
    tc->nodes_left = TREE_MAX_NODES;
    print_tree(tc, ckpt_file_root(f), 1);
    for (size_t i = 0; i < tc->shown_cap; i++)
        free(tc->shown[i].text);
    free(tc->shown);
    free(tc);

    size_t nt = ckpt_file_tensor_count(f);
    size_t wname = 4, wkey = 7; /* "STORAGE" */
    for (size_t i = 0; i < nt; i++) {
        const char *name;
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ckpt_file_tensor(f, i, &name), &ti);
        size_t l = strlen(name), k = ti.storage_key ? strlen(ti.storage_key) : 1;
        if (l > wname)
            wname = l > 60 ? 60 : l;
        if (k > wkey) /* safetensors: tensor names */
            wkey = k > 60 ? 60 : k;
    }
    if (nt) {
        printf("\nTensors:\n  %-*s  %-9s  %-18s  %12s  %-*s  %s\n", (int)wname, "NAME", "DTYPE",
               "SHAPE", "BYTES", (int)wkey, "STORAGE", "LOCATION");
    }
    for (size_t i = 0; i < nt; i++) {
        const char *name;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        char shape[256];
        shape_text(&ti, shape, sizeof(shape));
        printf("  %-*s  %-9s  %-18s  %12llu  %-*s  %s%s\n", (int)wname, name,
               ckpt_dtype_name(ti.dtype), shape, (unsigned long long)ti.nbytes, (int)wkey,
               ti.storage_key ? ti.storage_key : "-", ti.location ? ti.location : "-",
               ti.layout != CKPT_LAYOUT_STRIDED ? " (sparse)" : ti.is_contiguous ? "" : " (view)");
    }
    print_chunks(f, full);
    cli_totals tot;
    if (!cli_count_totals(f, &tot)) {
        fprintf(stderr, "%s: %s: out of memory\n", PROG, path);
        return CLI_EXIT_ERROR;
    }
    printf("\n");
    print_totals("Totals:   ", &tot.all);
    if (tot.model_key) {
        printf("Model:    '%s', its parameters and buffers: ", tot.model_key);
        print_totals("", &tot.model);
    }
    return CLI_EXIT_OK;
}

enum { OPT_JSON = CLI_OPT_LONG, OPT_FULL, OPT_PERMISSIVE, OPT_TORCHSCRIPT_WEIGHTS };

static const struct option inspect_options[] = {
    {"json", no_argument, NULL, OPT_JSON},
    {"full", no_argument, NULL, OPT_FULL},
    {"permissive", no_argument, NULL, OPT_PERMISSIVE},
    {"torchscript-weights", no_argument, NULL, OPT_TORCHSCRIPT_WEIGHTS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command inspect_command = {
    "inspect", "ckpt inspect FILE [--json] [--full] [--permissive] [--torchscript-weights]", "h",
    inspect_options,
};

static int cmd_inspect(int argc, char **argv)
{
    bool json = false, full = false, permissive = false, torchscript = false;
    const char *path = NULL;
    cli_args args;
    cli_args_init(&args, &inspect_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case OPT_JSON: json = true; break;
        case OPT_FULL: full = true; break;
        case OPT_PERMISSIVE: permissive = true; break;
        case OPT_TORCHSCRIPT_WEIGHTS: torchscript = true; break;
        case 'h':
            printf("usage: %s\n"
                   "  Shows the format and its details, the value tree (tensors summarized),\n"
                   "  a table of tensors (name, dtype, shape, bytes, storage, location) and totals.\n"
                   "  --json   one JSON object: format, details, records, tensors, totals, tree\n"
                   "  --full   show every item of large containers in the tree\n"
                   "  --permissive  open files holding objects outside the allow-list: each\n"
                   "           becomes an inert value (class, arguments, state), never run; a\n"
                   "           pickled nn.Module lists its tensors as its state_dict() does\n"
                   CLI_TORCHSCRIPT_WEIGHTS_HELP,
                   inspect_command.synopsis);
            return CLI_EXIT_OK;
        case CLI_OPT_ARG:
            if (path)
                return cli_usage_error(&inspect_command, "one file at a time");
            path = arg;
            break;
        default:
            return CLI_EXIT_ERROR;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: %s\n", inspect_command.synopsis);
        return CLI_EXIT_ERROR;
    }
    ckpt_file *f;
    ckpt_error err;
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    if (permissive)
        oo.flags |= CKPT_OPEN_PERMISSIVE;
    if (torchscript)
        oo.flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS;
    if (ckpt_open(path, &oo, &f, &err) != CKPT_OK) {
        cli_print_error(path, &err);
        return CLI_EXIT_ERROR;
    }
    int rc = json ? inspect_json(path, f) : inspect_human(path, f, full);
    ckpt_close(f);
    return rc;
}

/* ---- verify ------------------------------------------------------------ */

/* The result on stdout: "FILE: ok: ..." or "FILE: corrupt: ..." (the answer
 * is no, exit 1); a file that could not be checked at all (unreadable,
 * unsupported, refused as unsafe, over a limit) is an error on stderr,
 * exit 2, as in every command. */
static int verify_one(const char *path, bool quiet, unsigned open_flags)
{
    ckpt_file *f;
    ckpt_error err;
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= open_flags;
    ckpt_status st = ckpt_open(path, &oo, &f, &err);
    if (st == CKPT_OK) {
        cli_progress prog;
        cli_progress_init(&prog, !quiet);
        ckpt_verify_options vo;
        ckpt_verify_options_default(&vo);
        vo.progress = cli_progress_update;
        vo.progress_user = &prog;
        st = ckpt_file_verify_with(f, &vo, &err);
        cli_progress_end(&prog);
        if (st == CKPT_OK && !quiet) {
            ckpt_file_info fi = {.struct_size = sizeof(fi)};
            ckpt_file_get_info(f, &fi);
            uint64_t bytes = 0;
            for (size_t i = 0; i < fi.record_count; i++) {
                ckpt_record_info ri = {.struct_size = sizeof(ri)};
                if (ckpt_file_record(f, i, &ri) == CKPT_OK)
                    bytes += ri.size;
            }
            const char *name = ckpt_format_name(fi.format);
            printf("%s: ok: %s, %zu records, %zu tensors, ", path, name, fi.record_count,
                   fi.tensor_count);
            if (fi.format == CKPT_FORMAT_TORCH_ZIP || fi.format == CKPT_FORMAT_NUMPY_NPZ)
                printf("%llu bytes checked (CRC32 of every record)\n",
                       (unsigned long long)bytes);
            else if (fi.format == CKPT_FORMAT_SHARDED)
                printf("%llu bytes checked\n", (unsigned long long)bytes);
            else if (fi.format == CKPT_FORMAT_DCP)
                printf("%llu bytes of .distcp files checked (CRC32 of every item's records; "
                       "chunks cover every tensor once)\n", (unsigned long long)bytes);
            else
                printf("structure checked; %s has no checksum of the data\n", name);
        }
        ckpt_close(f);
    }
    if (st == CKPT_OK)
        return CLI_EXIT_OK;
    if (st == CKPT_ERR_FORMAT || st == CKPT_ERR_CORRUPT) {
        char msg[768];
        printf("%s: corrupt: %s\n", path, ckpt_error_format(&err, msg, sizeof(msg)));
        return CLI_EXIT_FAIL;
    }
    cli_print_error(path, &err);
    return CLI_EXIT_ERROR;
}

static const struct option verify_options[] = {
    {"quiet", no_argument, NULL, 'q'},
    {"torchscript-weights", no_argument, NULL, OPT_TORCHSCRIPT_WEIGHTS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command verify_command = {"verify", "ckpt verify FILE... [-q] [--torchscript-weights]",
                                           "hq", verify_options};

static int cmd_verify(int argc, char **argv)
{
    bool quiet = false;
    unsigned open_flags = 0;
    int files = 0, worst = CLI_EXIT_OK;
    /* every option is read before the first file is checked */
    const char **paths = calloc((size_t)argc + 1, sizeof(*paths));
    if (!paths) {
        fprintf(stderr, "%s: verify: out of memory\n", PROG);
        return CLI_EXIT_ERROR;
    }
    cli_args args;
    cli_args_init(&args, &verify_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case 'q': quiet = true; break;
        case OPT_TORCHSCRIPT_WEIGHTS: open_flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS; break;
        case 'h':
            printf("usage: %s\n"
                   "  Checks the structure, every record's CRC32, every record inside the file,\n"
                   "  every storage's size and every tensor's bytes inside its storage.\n"
                   "  -q, --quiet  print nothing for the good files, no progress bar\n"
                   CLI_TORCHSCRIPT_WEIGHTS_HELP
                   "  Prints 'FILE: ok: ...' or 'FILE: corrupt: ...' (the first problem, with\n"
                   "  its record and byte offset) on stdout; errors go to stderr.\n"
                   "  exit 0 all good; 1 a file is corrupt; 2 a file cannot be checked at all\n"
                   "  (unreadable, unsupported, refused as unsafe, over a limit).\n",
                   verify_command.synopsis);
            free(paths);
            return CLI_EXIT_OK;
        case CLI_OPT_ARG: paths[files++] = arg; break;
        default: free(paths); return CLI_EXIT_ERROR;
        }
    }
    for (int i = 0; i < files; i++) {
        int rc = verify_one(paths[i], quiet, open_flags);
        if (rc > worst)
            worst = rc;
    }
    free(paths);
    if (!files) {
        fprintf(stderr, "usage: %s\n", verify_command.synopsis);
        return CLI_EXIT_ERROR;
    }
    return worst;
}

/* Edits (insert, delete, substitute, swap two neighbours) from a to b,
 * both short: a command's name. */
static size_t edit_distance(const char *a, const char *b)
{
    enum { MAX = 32 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= MAX || m >= MAX)
        return MAX;
    size_t d[MAX + 1][MAX + 1];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

/* An unknown command: the nearest one, as git does, not the whole usage. */
static int unknown_command(const char *cmd)
{
    static const char *const names[] = {"inspect", "scan", "verify", "convert", "diff",
                                        "match",   "ls",   "prune",  "version", "help"};
    const char *nearest = NULL;
    size_t best = 3; /* more edits than 2 is another word */
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t d = edit_distance(cmd, names[i]);
        if (d < best && d < strlen(names[i])) {
            best = d;
            nearest = names[i];
        }
    }
    if (nearest)
        fprintf(stderr, "%s: unknown command '%s'; did you mean '%s'?\n", PROG, cmd, nearest);
    else
        fprintf(stderr, "%s: unknown command '%s'\n", PROG, cmd);
    fprintf(stderr, "run 'ckpt --help' for the commands\n");
    return CLI_EXIT_ERROR;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_ERROR;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        /* the headers it was compiled against, as zstd -V and curl -V say */
        printf("ckpt %s\n", ckpt_version());
        printf("built with libdeflate %s, zlib %s, jansson %s, yajl %d.%d.%d\n",
               LIBDEFLATE_VERSION_STRING, ZLIB_VERSION, JANSSON_VERSION, YAJL_MAJOR, YAJL_MINOR,
               YAJL_MICRO);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc - 1, argv + 1);
    if (strcmp(cmd, "verify") == 0)
        return cmd_verify(argc - 1, argv + 1);
    if (strcmp(cmd, "convert") == 0)
        return ckpt_cli_convert(argc - 1, argv + 1);
    if (strcmp(cmd, "diff") == 0)
        return ckpt_cli_diff(argc - 1, argv + 1);
    if (strcmp(cmd, "scan") == 0)
        return ckpt_cli_scan(argc - 1, argv + 1);
    if (strcmp(cmd, "match") == 0)
        return ckpt_cli_match(argc - 1, argv + 1);
    if (strcmp(cmd, "ls") == 0)
        return ckpt_cli_ls(argc - 1, argv + 1);
    if (strcmp(cmd, "prune") == 0)
        return ckpt_cli_prune(argc - 1, argv + 1);
    return unknown_command(cmd);
}

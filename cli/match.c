/*
 * match.c - `ckpt match CHECKPOINT --model REFERENCE`: will this checkpoint
 * load into my model? The model is described by a reference file (a state
 * dict saved from it, a safetensors file, a training checkpoint): each
 * tensor of its state dict is a parameter of that name, dtype and shape.
 * The checkpoint is then loaded into it as load_state_dict() would, and
 * the result told in PyTorch's words.
 */
#include "cli.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *PROG = "ckpt";

typedef struct match_opts {
    const char *checkpoint, *reference, *model_key, *name, *key, *location;
    const char **strip;
    size_t n_strip;
    ckpt_key_map *rename;
    size_t n_rename;
    bool non_strict, json;
    unsigned open_flags;       /* CKPT_OPEN_*, both files */
} match_opts;

enum {
    OPT_MODEL = CLI_OPT_LONG, OPT_MODEL_KEY, OPT_NAME, OPT_KEY, OPT_STRIP_PREFIX,
    OPT_RENAME_PREFIX, OPT_NON_STRICT, OPT_MAP_LOCATION, OPT_JSON, OPT_TORCHSCRIPT_WEIGHTS,
};

static const struct option match_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"model-key", required_argument, NULL, OPT_MODEL_KEY},
    {"name", required_argument, NULL, OPT_NAME},
    {"key", required_argument, NULL, OPT_KEY},
    {"strip-prefix", required_argument, NULL, OPT_STRIP_PREFIX},
    {"rename-prefix", required_argument, NULL, OPT_RENAME_PREFIX},
    {"non-strict", no_argument, NULL, OPT_NON_STRICT},
    {"map-location", required_argument, NULL, OPT_MAP_LOCATION},
    {"json", no_argument, NULL, OPT_JSON},
    {"torchscript-weights", no_argument, NULL, OPT_TORCHSCRIPT_WEIGHTS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command match_command = {
    "match", "ckpt match CHECKPOINT --model REFERENCE [options]", "h", match_options,
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s\n"
            "  Says whether CHECKPOINT loads into a model, as PyTorch's load_state_dict()\n"
            "  decides, without Python. The model is REFERENCE's state dict (a .pth saved\n"
            "  from model.state_dict(), a safetensors file, a training checkpoint): each of\n"
            "  its tensors is a parameter with that name, dtype and shape.\n"
            "  --model REFERENCE    the file describing the model (required)\n"
            "  --model-key PATH     the state dict inside REFERENCE (default: its\n"
            "                       'state_dict' or 'model' dict when it has one, else the root)\n"
            "  --name NAME          the model's class name in messages (default Model)\n"
            "  --key PATH           the state dict inside CHECKPOINT (same default)\n"
            "  --strip-prefix P     remove P from the start of each key, once (repeatable;\n"
            "                       the first that matches): --strip-prefix module.\n"
            "  --rename-prefix FROM=TO\n"
            "                       keys starting with FROM start with TO instead, after\n"
            "                       --strip-prefix (repeatable; the first that matches)\n"
            "  --non-strict         strict=False: missing and unexpected keys are listed,\n"
            "                       not errors (shape mismatches still are)\n"
            "  --map-location TAG   take every tensor as if saved on TAG ('cpu')\n"
            "  --json               one JSON object: ok, strict, missing, unexpected, errors,\n"
            "                       message, loaded, converted\n"
            CLI_TORCHSCRIPT_WEIGHTS_HELP
            "           (either file: REFERENCE can be the TorchScript export of the model)\n"
            "  On a mismatch, prints PyTorch's message (\"Error(s) in loading state_dict for\n"
            "  NAME: ...\"). exit 0 it loads, 1 it does not, 2 error (a file cannot be read,\n"
            "  a bad option)\n",
            match_command.synopsis);
}

static bool is_dict(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    return k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
}

/* The reference's state dict, by the rule ckpt_load_options.key documents. */
static const ckpt_value *reference_state_dict(const ckpt_value *root, const char *key)
{
    return key ? cli_find_path(root, key) : cli_default_state_dict(root, NULL);
}

/* A model with a parameter for each tensor of the reference's state dict,
 * in its order; NULL after saying why. */
static ckpt_model *build_model(const match_opts *o, const ckpt_file *ref)
{
    const ckpt_value *sd = reference_state_dict(ckpt_file_root(ref), o->model_key);
    if (!sd) {
        fprintf(stderr, "%s: %s: no value at --model-key %s\n", PROG, o->reference, o->model_key);
        cli_key_missing(o->reference, ckpt_file_root(ref), "--model-key", o->model_key);
        return NULL;
    }
    if (!is_dict(sd)) {
        fprintf(stderr, "%s: %s: the model's state dict is a %s, not a dict%s\n", PROG,
                o->reference, ckpt_kind_name(ckpt_value_kind(sd)),
                o->model_key ? "" : ": use --model-key");
        return NULL;
    }
    ckpt_model *m = ckpt_model_new(o->name);
    if (!m) {
        fprintf(stderr, "%s: match: out of memory\n", PROG);
        return NULL;
    }
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    /* every module, parameters or not, in registration order: the state
     * dict's _metadata lists them depth first */
    const ckpt_value *meta = ckpt_value_get(ckpt_value_state(sd), "_metadata");
    for (size_t i = 0; i < ckpt_value_len(meta); i++) {
        size_t len;
        const char *name = ckpt_value_str(ckpt_value_key(meta, i), &len);
        if (name && !memchr(name, '\0', len) && ckpt_model_add_module(m, name, &err) != CKPT_OK) {
            cli_print_error(o->reference, &err);
            ckpt_model_free(m);
            return NULL;
        }
    }
    size_t skipped = 0;
    for (size_t i = 0; i < ckpt_value_len(sd); i++) {
        const ckpt_value *v = ckpt_value_dict_value(sd, i);
        size_t len;
        const char *name = ckpt_value_str(ckpt_value_key(sd, i), &len);
        if (!name || !len || memchr(name, '\0', len)) {
            skipped++; /* not a name a module gives */
            continue;
        }
        const char *last = strrchr(name, '.');
        bool extra = strcmp(last ? last + 1 : name, "_extra_state") == 0;
        const ckpt_tensor *t = ckpt_value_tensor(v);
        if (!t && !extra)
            continue;
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        if (t)
            ckpt_tensor_get_info(t, &ti);
        /* a description: the check reads no tensor byte of either file */
        if (ckpt_model_add(m, name, t ? ti.dtype : CKPT_DTYPE_UINT8, ti.ndim, ti.shape, NULL,
                           extra ? CKPT_PARAM_EXTRA_STATE : CKPT_PARAM_NO_DATA, NULL,
                           &err) != CKPT_OK) {
            cli_print_error(o->reference, &err);
            ckpt_model_free(m);
            return NULL;
        }
    }
    if (skipped)
        fprintf(stderr, "%s: match: %s: %zu key(s) of the model's state dict are not names "
                        "(not text, empty or with NUL): left out\n",
                PROG, o->reference, skipped);
    if (ckpt_model_count(m) == 0) {
        fprintf(stderr, "%s: %s: no tensors in the model's state dict%s\n", PROG, o->reference,
                o->model_key ? "" : ": use --model-key");
        ckpt_model_free(m);
        return NULL;
    }
    return m;
}

/* ---- output ----------------------------------------------------------------- */

/* Text that is not UTF-8 (a key from a hostile file) shows as null. */
static json_t *text_json(const char *s)
{
    json_t *j = s ? json_string(s) : NULL;
    return j ? j : json_null();
}

static json_t *names_json(const char *const *names, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, text_json(names[i]));
    return a;
}

static int print_json(const match_opts *o, const ckpt_load_report *r, bool ok)
{
    json_t *j = json_object();
    json_object_set_new(j, "ok", json_boolean(ok));
    json_object_set_new(j, "strict", json_boolean(!o->non_strict));
    json_object_set_new(j, "missing", names_json(r->missing, r->missing_count));
    json_object_set_new(j, "unexpected", names_json(r->unexpected, r->unexpected_count));
    json_object_set_new(j, "errors", names_json(r->errors, r->error_count));
    json_object_set_new(j, "message", text_json(r->message));
    json_object_set_new(j, "loaded", json_integer((json_int_t)r->loaded));
    json_object_set_new(j, "converted", json_integer((json_int_t)r->converted));
    if (!cli_print_json(j, 1, "match"))
        return CLI_EXIT_ERROR;
    return ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* Doubles a buffer until it holds need bytes; frees it on failure. */
static char *grow(char *p, size_t *cap, size_t need)
{
    while (*cap < need)
        *cap *= 2;
    char *q = realloc(p, *cap);
    if (!q)
        free(p);
    return q;
}

/* A list of names as Python's repr() shows a list of str: ['a', 'b']; a
 * name that is not UTF-8 (from a hostile file) shows as bytes, b'x\xff'. */
static char *names_repr(const char *const *names, size_t n)
{
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        ckpt_tree *tree = ckpt_tree_new();
        ckpt_value *v = tree ? ckpt_new_str(tree, names[i], SIZE_MAX) : NULL;
        if (tree && !v) {
            ckpt_tree_free(tree);
            tree = ckpt_tree_new();
            v = tree ? ckpt_new_bytes(tree, names[i], strlen(names[i])) : NULL;
        }
        char *r = v ? cli_repr(v) : NULL;
        ckpt_tree_free(tree);
        size_t rl = r ? strlen(r) : 0;
        if (!r || (len + rl + 4 > cap && !(out = grow(out, &cap, len + rl + 4)))) {
            free(r);
            free(out);
            return NULL;
        }
        if (i)
            out[len++] = ',', out[len++] = ' ';
        memcpy(out + len, r, rl);
        len += rl;
        free(r);
    }
    out[len++] = ']';
    out[len] = '\0';
    return out;
}

static int print_ok(const match_opts *o, const ckpt_load_report *r)
{
    printf("ok: %zu tensor%s load%s into %s (%s)\n", r->loaded, r->loaded == 1 ? "" : "s",
           r->loaded == 1 ? "s" : "", o->name, o->non_strict ? "non-strict" : "strict");
    if (o->non_strict && !r->missing_count && !r->unexpected_count) {
        printf("<All keys matched successfully>\n");
    } else if (o->non_strict) {
        char *missing = names_repr(r->missing, r->missing_count);
        char *unexpected = names_repr(r->unexpected, r->unexpected_count);
        if (!missing || !unexpected) {
            free(missing);
            free(unexpected);
            fprintf(stderr, "%s: match: out of memory\n", PROG);
            return CLI_EXIT_ERROR;
        }
        printf("_IncompatibleKeys(missing_keys=%s, unexpected_keys=%s)\n", missing, unexpected);
        free(missing);
        free(unexpected);
    }
    if (r->converted)
        printf("converted: %zu of %zu to the model's dtype\n", r->converted, r->loaded);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/* Keys that all start with "module." are DataParallel/DDP's. */
static void hint(const match_opts *o, const ckpt_load_report *r)
{
    if (!r->unexpected_count || o->n_strip)
        return;
    for (size_t i = 0; i < r->unexpected_count; i++)
        if (strncmp(r->unexpected[i], "module.", 7) != 0)
            return;
    fprintf(stderr, "%s: match: hint: the checkpoint's keys start with 'module.' "
                    "(DataParallel/DDP): try --strip-prefix module.\n", PROG);
}

/* ---- the command -------------------------------------------------------------- */

/* 0 parsed, 1 help shown, -1 error (said). */
static int parse_args(int argc, char **argv, match_opts *o)
{
    cli_args args;
    cli_args_init(&args, &match_command, argc, argv);
    const char *val;
    int c;
    while ((c = cli_next_arg(&args, &val)) != CLI_OPT_END) {
        switch (c) {
        case 'h': usage(stdout); return 1;
        case OPT_MODEL: o->reference = val; break;
        case OPT_MODEL_KEY: o->model_key = val; break;
        case OPT_NAME:
            if (!*val) {
                cli_usage_error(&match_command, "--name needs a class name");
                return -1;
            }
            o->name = val;
            break;
        case OPT_KEY: o->key = val; break;
        case OPT_STRIP_PREFIX: o->strip[o->n_strip++] = val; break;
        case OPT_RENAME_PREFIX: {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                cli_usage_error(&match_command, "--rename-prefix needs FROM=TO, not '%s'", val);
                return -1;
            }
            char *from = strndup(val, (size_t)(eq - val));
            if (!from) {
                fprintf(stderr, "%s: match: out of memory\n", PROG);
                return -1;
            }
            o->rename[o->n_rename].from = from;
            o->rename[o->n_rename++].to = eq + 1;
            break;
        }
        case OPT_NON_STRICT: o->non_strict = true; break;
        case OPT_MAP_LOCATION:
            if (!*val) {
                cli_usage_error(&match_command, "--map-location needs a location tag");
                return -1;
            }
            o->location = val;
            break;
        case OPT_JSON: o->json = true; break;
        case OPT_TORCHSCRIPT_WEIGHTS: o->open_flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS; break;
        case CLI_OPT_ARG:
            if (o->checkpoint) {
                cli_usage_error(&match_command, "one checkpoint at a time");
                return -1;
            }
            o->checkpoint = val;
            break;
        default: return -1;
        }
    }
    if (o->checkpoint && !o->reference) {
        cli_usage_error(&match_command, "--model REFERENCE is required");
        return -1;
    }
    if (!o->checkpoint) {
        usage(stderr);
        return -1;
    }
    return 0;
}

int ckpt_cli_match(int argc, char **argv)
{
    match_opts o;
    memset(&o, 0, sizeof(o));
    o.name = "Model";
    o.strip = calloc((size_t)argc + 1, sizeof(*o.strip));
    o.rename = calloc((size_t)argc + 1, sizeof(*o.rename));
    int rc = CLI_EXIT_ERROR;
    ckpt_file *ref = NULL, *f = NULL;
    ckpt_model *m = NULL;
    if (!o.strip || !o.rename) {
        fprintf(stderr, "%s: match: out of memory\n", PROG);
        goto out;
    }
    int pr = parse_args(argc, argv, &o);
    if (pr != 0) {
        rc = pr > 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
        goto out;
    }

    ckpt_error err;
    memset(&err, 0, sizeof(err));
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= o.open_flags;
    if (ckpt_open(o.reference, &oo, &ref, &err) != CKPT_OK) {
        cli_print_error(o.reference, &err);
        goto out;
    }
    m = build_model(&o, ref);
    if (!m)
        goto out;
    ckpt_close(ref);
    ref = NULL;

    if (ckpt_open(o.checkpoint, &oo, &f, &err) != CKPT_OK) {
        cli_print_error(o.checkpoint, &err);
        goto out;
    }
    ckpt_load_options lo;
    ckpt_load_options_default(&lo);
    lo.flags |= CKPT_LOAD_CHECK_ONLY;
    if (o.non_strict)
        lo.flags |= CKPT_LOAD_NON_STRICT;
    if (o.key) {
        /* the same path rule as --model-key */
        lo.state_dict = cli_find_path(ckpt_file_root(f), o.key);
        if (!lo.state_dict) {
            fprintf(stderr, "%s: %s: no value at --key %s\n", PROG, o.checkpoint, o.key);
            cli_key_missing(o.checkpoint, ckpt_file_root(f), "--key", o.key);
            goto out;
        }
    }
    lo.strip_prefixes = o.strip;
    lo.strip_prefix_count = o.n_strip;
    lo.prefix_map = o.rename;
    lo.prefix_map_count = o.n_rename;
    lo.map_location = o.location;
    ckpt_load_report r = {.struct_size = sizeof(r)};
    ckpt_status st = ckpt_model_load(m, f, &lo, &r, &err);
    if (st == CKPT_OK) {
        rc = o.json ? print_json(&o, &r, true) : print_ok(&o, &r);
    } else if (st == CKPT_ERR_MISMATCH) {
        if (o.json) {
            rc = print_json(&o, &r, false);
        } else {
            const char *msg = r.message ? r.message : err.message;
            printf("%s\n", msg);
            rc = fflush(stdout) == 0 ? CLI_EXIT_FAIL : CLI_EXIT_ERROR;
            hint(&o, &r);
        }
    } else {
        cli_print_error(o.checkpoint, &err);
    }
out:
    if (m)
        ckpt_model_free(m);
    ckpt_close(f);
    ckpt_close(ref);
    if (o.rename)
        for (size_t i = 0; i < o.n_rename; i++)
            free((char *)(uintptr_t)o.rename[i].from);
    free(o.rename);
    free(o.strip);
    return rc;
}

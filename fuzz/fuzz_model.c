/*
 * fuzz_model.c - state dicts from hostile files into C models.
 *
 * An input that opens (ckpt_open_memory, default limits) is loaded into
 * two models:
 *   - one described by the file's own state dict (its tensor entries, up to
 *     MAX_PARAMS of at most MAX_NUMEL elements each, as float32 when they
 *     are floating): a strict load must then succeed unless a tensor's data
 *     cannot be read, and every loaded value must equal what
 *     ckpt_tensor_copy and ckpt_convert_dtype give;
 *   - the seed's Net (net.0.weight [64, 32], ...) loaded non-strict with
 *     "module." stripped, checked only, then with a placement callback that
 *     reads every byte it is handed, then zero-copy, then copied; then AdamW takes the file's
 *     "optimizer" entry, steps once and gives its state dict back.
 * Any failure must be an error status with a message, never a crash.
 */
#include <ckpt.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PARAMS 64
#define MAX_NUMEL 65536

static uint64_t g_sum;

static ckpt_status place(void *user, ckpt_placement *p, ckpt_error *err)
{
    (void)user;
    (void)err;
    const uint8_t *b = p->data;
    for (uint64_t i = 0; b && i < p->nbytes; i++)
        g_sum += b[i];
    return CKPT_OK;
}

static bool is_dict(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    return k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
}

/* The state dict ckpt_load_options.key == NULL picks. */
static const ckpt_value *auto_state_dict(const ckpt_value *root)
{
    if (!is_dict(root))
        return root;
    for (size_t i = 0; i < ckpt_value_len(root); i++)
        if (ckpt_value_kind(ckpt_value_dict_value(root, i)) == CKPT_KIND_TENSOR)
            return root;
    const ckpt_value *v = ckpt_value_get(root, "state_dict");
    if (!is_dict(v))
        v = ckpt_value_get(root, "model");
    return is_dict(v) ? v : root;
}

static void own_model(ckpt_file *f)
{
    const ckpt_value *sd = auto_state_dict(ckpt_file_root(f));
    if (!is_dict(sd))
        return;
    ckpt_model *m = ckpt_model_new("Fuzz");
    if (!m)
        return;
    ckpt_error err;
    size_t n = ckpt_value_len(sd);
    const ckpt_tensor *src[MAX_PARAMS];
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *k = ckpt_value_key(sd, i);
        const ckpt_value *v = ckpt_value_dict_value(sd, i);
        size_t klen;
        const char *key = ckpt_value_str(k, &klen);
        if (ckpt_value_kind(k) != CKPT_KIND_STR || ckpt_value_kind(v) != CKPT_KIND_TENSOR || !klen ||
            memchr(key, '\0', klen))
            goto skip_model; /* keys the model cannot name: nothing to compare */
        const ckpt_tensor *t = ckpt_value_tensor(v);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        if (count == MAX_PARAMS || ti.numel > MAX_NUMEL || ti.ndim > CKPT_MODEL_MAX_NDIM ||
            ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage ||
            ckpt_dtype_bits(ti.dtype) != 8 * ckpt_dtype_size(ti.dtype) ||
            ckpt_dtype_size(ti.dtype) == 0)
            goto skip_model;
        ckpt_dtype want = ckpt_dtype_is_floating(ti.dtype) &&
                                  (ti.dtype == CKPT_DTYPE_FLOAT64 || ti.dtype == CKPT_DTYPE_FLOAT16 ||
                                   ti.dtype == CKPT_DTYPE_BFLOAT16 || ti.dtype == CKPT_DTYPE_FLOAT32)
                              ? CKPT_DTYPE_FLOAT32
                              : ti.dtype;
        if (ckpt_model_add(m, key, want, ti.ndim, ti.shape, NULL, 0, NULL, &err) != CKPT_OK)
            goto skip_model; /* a repeated key, ... */
        src[count++] = t;
    }
    ckpt_load_report r = {.struct_size = sizeof(r)};
    ckpt_status st = ckpt_model_load(m, f, NULL, &r, &err);
    /* PyTorch's one exception: a key ending in _extra_state is unexpected
     * even when a parameter has that name */
    bool extra_only = st == CKPT_ERR_MISMATCH && !r.missing_count && !r.error_count;
    for (size_t i = 0; extra_only && i < r.unexpected_count; i++) {
        size_t ul = strlen(r.unexpected[i]);
        extra_only = ul >= 12 && strcmp(r.unexpected[i] + ul - 12, "_extra_state") == 0 &&
                     (ul == 12 || r.unexpected[i][ul - 13] == '.');
    }
    if (extra_only)
        goto skip_model;
    if (st == CKPT_ERR_MISMATCH || (st == CKPT_OK && r.loaded != count)) {
        fprintf(stderr, "a model made from the file's own state dict did not load: %s\n",
                r.message ? r.message : err.message);
        abort();
    }
    for (size_t i = 0; st == CKPT_OK && i < count; i++) {
        ckpt_param_info pi = {.struct_size = sizeof(pi)};
        ckpt_model_param(m, i, &pi);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(src[i], &ti);
        size_t es = ckpt_dtype_size(ti.dtype);
        void *raw = malloc(ti.numel * es + 1);
        void *conv = malloc(pi.nbytes + 1);
        if (raw && conv && ckpt_tensor_copy(f, src[i], raw, ti.numel * es, &err) == CKPT_OK &&
            ckpt_convert_dtype(pi.dtype, conv, ti.dtype, raw, ti.numel) == CKPT_OK &&
            memcmp(conv, pi.data, pi.nbytes) != 0) {
            fprintf(stderr, "parameter %s differs from the file's tensor\n", pi.name);
            abort();
        }
        free(raw);
        free(conv);
    }
skip_model:
    ckpt_model_free(m);
}

static void seed_net(ckpt_file *f)
{
    static const int64_t w0[] = {64, 32}, b0[] = {64}, w2[] = {10, 64}, b2[] = {10};
    ckpt_model *m = ckpt_model_new("Net");
    ckpt_error err;
    if (!m || ckpt_model_add(m, "net.0.weight", CKPT_DTYPE_FLOAT32, 2, w0, NULL, 0, NULL, &err) ||
        ckpt_model_add(m, "net.0.bias", CKPT_DTYPE_FLOAT32, 1, b0, NULL, 0, NULL, &err) ||
        ckpt_model_add(m, "net.2.weight", CKPT_DTYPE_FLOAT32, 2, w2, NULL, 0, NULL, &err) ||
        ckpt_model_add(m, "net.2.bias", CKPT_DTYPE_FLOAT32, 1, b2, NULL, 0, NULL, &err)) {
        ckpt_model_free(m);
        return;
    }
    static const char *const strip[] = {"module."};
    static const ckpt_key_map locs[] = {{"cuda:1", "cuda:0"}};
    ckpt_load_options o;
    ckpt_load_options_default(&o);
    o.flags = CKPT_LOAD_NON_STRICT;
    o.strip_prefixes = strip;
    o.strip_prefix_count = 1;
    o.location_map = locs;
    o.location_map_count = 1;
    o.place = place;
    ckpt_load_report r = {.struct_size = sizeof(r)};
    o.flags |= CKPT_LOAD_CHECK_ONLY;
    ckpt_model_load(m, f, &o, &r, &err);
    o.flags &= ~CKPT_LOAD_CHECK_ONLY;
    ckpt_model_load(m, f, &o, &r, &err);
    o.place = NULL;
    o.flags |= CKPT_LOAD_ZERO_COPY;
    ckpt_model_load(m, f, &o, &r, &err);
    /* the optimizer needs host memory: load again by copy */
    o.flags = CKPT_LOAD_NON_STRICT;
    ckpt_model_load(m, f, &o, &r, &err);

    ckpt_adamw *opt;
    if (ckpt_adamw_new(m, NULL, &opt, &err) == CKPT_OK) {
        const ckpt_value *sd = ckpt_value_get(ckpt_file_root(f), "optimizer");
        if (sd && ckpt_adamw_load(opt, f, sd, &err) == CKPT_OK) {
            static float g0[64 * 32], g1[64], g2[10 * 64], g3[10];
            const float *grads[] = {g0, g1, g2, g3};
            ckpt_adamw_step(opt, grads, &err);
            ckpt_tree *tree = ckpt_tree_new();
            if (tree) {
                ckpt_adamw_state_dict(opt, tree);
                ckpt_model_state_dict(m, tree);
                ckpt_tree_free(tree);
            }
        }
        ckpt_adamw_free(opt);
    }
    ckpt_model_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_file *f;
    ckpt_error err;
    if (ckpt_open_memory(data, size, NULL, &f, &err) != CKPT_OK)
        return 0;
    own_model(f);
    seed_net(f);
    ckpt_close(f);
    return 0;
}

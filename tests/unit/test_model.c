/*
 * test_model.c - C models (ckpt_model_*) and AdamW (ckpt_adamw_*): strict and
 * non-strict loads with PyTorch's report and message, memory the caller owns
 * and memory the model allocates, zero-copy loads, key remapping and
 * selection, dtype conversion, location tags and the placement callback,
 * state dict round trips, AdamW against a reference computed here in double,
 * its state dict round trip and refusals, hostile state dicts (huge
 * shapes, stride-0 and transposed views, negative strides, bad optimizer
 * entries) that must fail cleanly and leave everything as it was, and
 * regressions: flags after a later load, keys with a NUL or a long non-text
 * key, check-only loads of descriptions (CKPT_PARAM_NO_DATA), dotted key
 * paths, 20,000 modules, AdamW after the model grows or a refused step.
 *
 * Every checkpoint is built here with the library's own tree API and
 * ckpt_save_torch (or by hand, for what that API refuses to build).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static const int64_t SCALAR_SHAPE[1] = {0}; /* a non-NULL pointer for ndim 0 */

/* A contiguous tensor over data (location NULL: "cpu"). */
static ckpt_value *tensor_at(ckpt_tree *t, ckpt_dtype dtype, uint32_t ndim, const int64_t *shape,
                             const void *data, const char *location)
{
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = dtype;
    d.ndim = ndim;
    d.shape = ndim ? shape : SCALAR_SHAPE;
    d.data = data;
    d.location = location;
    return ckpt_new_tensor(t, &d);
}

static ckpt_value *tensor_of(ckpt_tree *t, ckpt_dtype dtype, uint32_t ndim, const int64_t *shape,
                             const void *data)
{
    return tensor_at(t, dtype, ndim, shape, data, NULL);
}

static void put(ckpt_tree *t, ckpt_value *dict, const char *key, ckpt_value *v)
{
    assert_non_null(v);
    assert_int_equal(ckpt_dict_put_str(t, dict, key, v), CKPT_OK);
}

static void print_err(const char *what, const ckpt_error *err)
{
    char text[600];
    fprintf(stderr, "%s: %s (%s)\n", what, ckpt_error_format(err, text, sizeof(text)),
            ckpt_status_name(err->status));
}

/* Saves root under name in the test directory and opens it (mapped). */
static ckpt_file *save_open(ckpt_tree *t, const ckpt_value *root, const char *name)
{
    ckpt_error err;
    if (ckpt_tree_status(t, &err) != CKPT_OK)
        print_err("tree", &err);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_save_options o;
    ckpt_save_options_default(&o);
    o.flags = CKPT_SAVE_NO_FSYNC;
    ckpt_status st = ckpt_save_torch(tmp_path(name), root, &o, &err);
    if (st != CKPT_OK)
        print_err("save", &err);
    assert_int_equal(st, CKPT_OK);
    ckpt_file *f = NULL;
    st = ckpt_open(tmp_path(name), NULL, &f, &err);
    if (st != CKPT_OK)
        print_err("open", &err);
    assert_int_equal(st, CKPT_OK);
    return f;
}

static ckpt_model *new_model(const char *cls)
{
    ckpt_model *m = ckpt_model_new(cls);
    assert_non_null(m);
    return m;
}

static size_t add(ckpt_model *m, const char *name, ckpt_dtype dtype, uint32_t ndim,
                  const int64_t *shape, void *data, unsigned flags)
{
    size_t index = SIZE_MAX;
    ckpt_error err;
    ckpt_status st = ckpt_model_add(m, name, dtype, ndim, ndim ? shape : SCALAR_SHAPE, data, flags,
                                    &index, &err);
    if (st != CKPT_OK)
        print_err(name, &err);
    assert_int_equal(st, CKPT_OK);
    return index;
}

static ckpt_param_info info_of(const ckpt_model *m, const char *name)
{
    size_t i;
    assert_true(ckpt_model_find(m, name, &i));
    ckpt_param_info info = {.struct_size = sizeof(info)};
    assert_true(ckpt_model_param(m, i, &info));
    assert_string_equal(info.name, name);
    return info;
}

static ckpt_load_options load_options(unsigned flags)
{
    ckpt_load_options o;
    ckpt_load_options_default(&o);
    o.flags = flags;
    return o;
}

/* A load expected to succeed. */
static void load_ok(ckpt_model *m, ckpt_file *f, const ckpt_load_options *o, ckpt_load_report *rep)
{
    ckpt_error err;
    ckpt_status st = ckpt_model_load(m, f, o, rep, &err);
    if (st != CKPT_OK) {
        print_err("load", &err);
        if (rep && rep->message)
            fprintf(stderr, "report: %s\n", rep->message);
    }
    assert_int_equal(st, CKPT_OK);
}

static void fill_seq(float *p, size_t n, float base)
{
    for (size_t i = 0; i < n; i++)
        p[i] = base + (float)i * 0.25f;
}

static void fill_sentinel(float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = -777.0f;
}

static bool all_sentinel(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != -777.0f)
            return false;
    return true;
}

static uint16_t bf16_bits(float x) /* exact for values with 8 significant bits */
{
    uint32_t u;
    memcpy(&u, &x, 4);
    assert_int_equal(u & 0xffffu, 0);
    return (uint16_t)(u >> 16);
}

static float f32_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- strict loads ------------------------------------------------------------------ */

static void test_strict_caller_memory(void **state)
{
    (void)state;
    static const int64_t s34[2] = {3, 4}, s3[1] = {3};
    float w[12], b[3], rm[3];
    int64_t nbt = 0;
    float fw[12], fb[3], frm[3];
    int64_t fnbt = 42;
    fill_seq(fw, 12, 1.0f);
    fill_seq(fb, 3, -2.0f);
    fill_seq(frm, 3, 10.0f);
    fill_sentinel(w, 12);
    fill_sentinel(b, 3);
    fill_sentinel(rm, 3);

    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "net.0.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, s34, fw));
    put(t, sd, "net.0.bias", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s3, fb));
    put(t, sd, "bn.running_mean", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s3, frm));
    put(t, sd, "bn.num_batches_tracked", tensor_of(t, CKPT_DTYPE_INT64, 0, NULL, &fnbt));
    ckpt_file *f = save_open(t, sd, "strict.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    assert_int_equal(add(m, "net.0.weight", CKPT_DTYPE_FLOAT32, 2, s34, w, 0), 0);
    assert_int_equal(add(m, "net.0.bias", CKPT_DTYPE_FLOAT32, 1, s3, b, 0), 1);
    assert_int_equal(add(m, "bn.running_mean", CKPT_DTYPE_FLOAT32, 1, s3, rm, CKPT_PARAM_BUFFER), 2);
    assert_int_equal(add(m, "bn.num_batches_tracked", CKPT_DTYPE_INT64, 0, NULL, &nbt,
                         CKPT_PARAM_BUFFER), 3);
    assert_int_equal(ckpt_model_count(m), 4);

    /* before the load */
    ckpt_param_info info = info_of(m, "net.0.weight");
    assert_false(info.loaded);
    assert_string_equal(info.location, "cpu");
    assert_ptr_equal(info.data, w);
    assert_int_equal(info.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(info.ndim, 2);
    assert_int_equal(info.shape[0], 3);
    assert_int_equal(info.shape[1], 4);
    assert_int_equal(info.numel, 12);
    assert_int_equal(info.nbytes, 48);
    assert_false(info.is_buffer);
    assert_false(ckpt_model_param(m, 4, &info));
    assert_null(ckpt_model_data(m, 4));
    size_t idx;
    assert_false(ckpt_model_find(m, "net.0", &idx));
    assert_false(ckpt_model_find(m, "nope", &idx));

    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    memset(&rep, 0xab, sizeof(rep));
    rep.struct_size = sizeof(rep);
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 4);
    assert_int_equal(rep.converted, 0);
    assert_int_equal(rep.zero_copy, 0);
    assert_int_equal(rep.placed, 0);
    assert_int_equal(rep.missing_count, 0);
    assert_int_equal(rep.unexpected_count, 0);
    assert_int_equal(rep.error_count, 0);
    assert_null(rep.message);

    assert_memory_equal(w, fw, sizeof(w));
    assert_memory_equal(b, fb, sizeof(b));
    assert_memory_equal(rm, frm, sizeof(rm));
    assert_int_equal(nbt, 42);
    for (size_t i = 0; i < 4; i++) {
        assert_true(ckpt_model_param(m, i, &info));
        assert_true(info.loaded);
        assert_false(info.borrowed);
        assert_false(info.placed);
        assert_string_equal(info.location, "cpu");
        assert_ptr_equal(ckpt_model_data(m, i), info.data);
        assert_int_equal(info.is_buffer, i >= 2);
    }
    assert_ptr_equal(info_of(m, "net.0.bias").data, b);
    assert_ptr_equal(info_of(m, "bn.num_batches_tracked").data, &nbt);
    assert_int_equal(info_of(m, "bn.num_batches_tracked").ndim, 0);
    assert_int_equal(info_of(m, "bn.num_batches_tracked").numel, 1);
    assert_int_equal(info_of(m, "bn.num_batches_tracked").nbytes, 8);

    /* the file closed, the caller's memory keeps the values */
    ckpt_close(f);
    assert_memory_equal(w, fw, sizeof(w));
    ckpt_model_free(m);
}

static void test_model_allocated_memory(void **state)
{
    (void)state;
    static const int64_t s57[2] = {5, 7}, s3[1] = {3};
    float fa[35], fb[3];
    fill_seq(fa, 35, 0.5f);
    fill_seq(fb, 3, 100.0f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, s57, fa));
    put(t, sd, "b", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s3, fb));
    ckpt_file *f = save_open(t, sd, "alloc.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model(NULL);
    add(m, "a", CKPT_DTYPE_FLOAT32, 2, s57, NULL, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s3, NULL, 0);
    for (size_t i = 0; i < 2; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_model_param(m, i, &info));
        assert_non_null(info.data);
        assert_int_equal((uintptr_t)info.data % 64, 0);
        const uint8_t *p = info.data;
        for (uint64_t k = 0; k < info.nbytes; k++)
            assert_int_equal(p[k], 0);
    }
    void *a_mem = ckpt_model_data(m, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 2);
    ckpt_close(f); /* copied: the model's memory holds the values */
    assert_ptr_equal(ckpt_model_data(m, 0), a_mem);
    assert_memory_equal(ckpt_model_data(m, 0), fa, sizeof(fa));
    assert_memory_equal(ckpt_model_data(m, 1), fb, sizeof(fb));
    ckpt_model_free(m);
}

static void test_zero_copy(void **state)
{
    (void)state;
    static const int64_t s16[1] = {16};
    float fa[16], fb[16];
    uint16_t fc[16];
    fill_seq(fa, 16, 3.0f);
    fill_seq(fb, 16, -3.0f);
    for (int i = 0; i < 16; i++)
        fc[i] = bf16_bits((float)i - 4.5f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s16, fa));
    put(t, sd, "b", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s16, fb));
    put(t, sd, "c", tensor_of(t, CKPT_DTYPE_BFLOAT16, 1, s16, fc));
    ckpt_file *f = save_open(t, sd, "zc.pth");
    ckpt_tree_free(t);

    /* the file itself is read zero-copy: that is where "a" must point */
    const void *file_a = NULL;
    bool zc = false;
    ckpt_error err;
    assert_int_equal(ckpt_tensor_data(f, ckpt_file_find_tensor(f, "a"), &file_a, &zc, &err),
                     CKPT_OK);
    assert_true(zc);

    float b_mem[16];
    fill_sentinel(b_mem, 16);
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s16, NULL, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s16, b_mem, 0);
    add(m, "c", CKPT_DTYPE_FLOAT32, 1, s16, NULL, 0);
    void *a_own = ckpt_model_data(m, 0);
    void *c_own = ckpt_model_data(m, 2);

    ckpt_load_options o = load_options(CKPT_LOAD_ZERO_COPY);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 3);
    assert_int_equal(rep.zero_copy, 1);
    assert_int_equal(rep.converted, 1);

    ckpt_param_info ia = info_of(m, "a");
    assert_true(ia.loaded);
    assert_true(ia.borrowed);
    assert_ptr_equal(ia.data, file_a);
    assert_ptr_not_equal(ia.data, a_own);
    assert_ptr_equal(ckpt_model_data(m, 0), file_a);
    assert_memory_equal(ia.data, fa, sizeof(fa));

    ckpt_param_info ib = info_of(m, "b"); /* caller memory: copied */
    assert_false(ib.borrowed);
    assert_ptr_equal(ib.data, b_mem);
    assert_memory_equal(b_mem, fb, sizeof(fb));

    ckpt_param_info ic = info_of(m, "c"); /* another dtype: copied and converted */
    assert_false(ic.borrowed);
    assert_ptr_equal(ic.data, c_own);
    for (int i = 0; i < 16; i++)
        assert_true(((const float *)ic.data)[i] == (float)i - 4.5f);

    /* a later load without the flag copies again, into the model's memory */
    ckpt_load_options plain = load_options(0);
    load_ok(m, f, &plain, &rep);
    assert_int_equal(rep.zero_copy, 0);
    ia = info_of(m, "a");
    assert_false(ia.borrowed);
    assert_ptr_not_equal(ia.data, file_a);
    assert_int_equal((uintptr_t)ia.data % 64, 0);
    ckpt_close(f);
    assert_memory_equal(ckpt_model_data(m, 0), fa, sizeof(fa)); /* readable after the close */
    ckpt_model_free(m);
}

/* ---- failures and non-strict loads ------------------------------------------------- */

static const char NET_MESSAGE[] =
    "Error(s) in loading state_dict for Net:\n"
    "\tMissing key(s) in state_dict: \"a\", \"b\". \n"
    "\tUnexpected key(s) in state_dict: \"x\". \n"
    "\tsize mismatch for w: copying a param with shape torch.Size([5, 64]) from checkpoint, "
    "the shape in current model is torch.Size([10, 64]).";

static const char SIZE_LINE[] =
    "size mismatch for w: copying a param with shape torch.Size([5, 64]) from checkpoint, "
    "the shape in current model is torch.Size([10, 64]).";

/* PyTorch's message when the size mismatch is all (or strict=False) */
static const char SIZE_MESSAGE[] =
    "Error(s) in loading state_dict for Net:\n"
    "\tsize mismatch for w: copying a param with shape torch.Size([5, 64]) from checkpoint, "
    "the shape in current model is torch.Size([10, 64]).";

static void test_strict_failures(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2}, s3[1] = {3}, s1[1] = {1}, s5x64[2] = {5, 64},
                         s10x64[2] = {10, 64};
    static float fw[5 * 64], fok[2] = {1.0f, 2.0f}, fx[1] = {9.0f};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "ok", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fok));
    put(t, sd, "w", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, s5x64, fw));
    put(t, sd, "x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, fx));
    ckpt_file *f = save_open(t, sd, "fail.pth");
    ckpt_tree_free(t);

    float a[2], b[3], w[640], ok[2];
    fill_sentinel(a, 2);
    fill_sentinel(b, 3);
    fill_sentinel(w, 640);
    fill_sentinel(ok, 2);
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s3, b, 0);
    add(m, "w", CKPT_DTYPE_FLOAT32, 2, s10x64, w, 0);
    add(m, "ok", CKPT_DTYPE_FLOAT32, 1, s2, ok, 0);

    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(err.status, CKPT_ERR_MISMATCH);
    assert_int_equal(rep.missing_count, 2);
    assert_string_equal(rep.missing[0], "a");
    assert_string_equal(rep.missing[1], "b");
    assert_int_equal(rep.unexpected_count, 1);
    assert_string_equal(rep.unexpected[0], "x");
    assert_int_equal(rep.error_count, 1);
    assert_string_equal(rep.errors[0], SIZE_LINE);
    assert_non_null(rep.message);
    assert_string_equal(rep.message, NET_MESSAGE);
    assert_int_equal(rep.loaded, 0);
    /* err names the model and gives the first problem */
    assert_non_null(strstr(err.message, "Net"));
    assert_non_null(strstr(err.message, "Missing key(s) in state_dict: \"a\", \"b\"."));
    /* nothing was written */
    assert_true(all_sentinel(a, 2) && all_sentinel(b, 3) && all_sentinel(w, 640) &&
                all_sentinel(ok, 2));
    for (size_t i = 0; i < 4; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_model_param(m, i, &info));
        assert_false(info.loaded);
    }

    /* with report NULL: the same error */
    assert_int_equal(ckpt_model_load(m, f, &o, NULL, &err), CKPT_ERR_MISMATCH);
    assert_true(all_sentinel(ok, 2));
    ckpt_model_free(m);

    /* a model without a class name is "Model" */
    ckpt_model *anon = new_model(NULL);
    float z[3];
    add(anon, "z", CKPT_DTYPE_FLOAT32, 1, s3, z, 0);
    add(anon, "ok", CKPT_DTYPE_FLOAT32, 1, s2, ok, 0);
    assert_int_equal(ckpt_model_load(anon, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_string_equal(rep.message, "Error(s) in loading state_dict for Model:\n"
                                     "\tMissing key(s) in state_dict: \"z\". \n"
                                     "\tUnexpected key(s) in state_dict: \"w\", \"x\". ");
    ckpt_model_free(anon);

    /* only a size mismatch, strict: the model stays unchanged too */
    ckpt_model *m2 = new_model("Net");
    add(m2, "ok", CKPT_DTYPE_FLOAT32, 1, s2, ok, 0);
    add(m2, "w", CKPT_DTYPE_FLOAT32, 2, s10x64, w, 0);
    add(m2, "x", CKPT_DTYPE_FLOAT32, 1, s1, a, 0);
    fill_sentinel(a, 2);
    assert_int_equal(ckpt_model_load(m2, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.missing_count, 0);
    assert_int_equal(rep.unexpected_count, 0);
    assert_string_equal(rep.message, SIZE_MESSAGE);
    assert_true(all_sentinel(ok, 2) && all_sentinel(a, 1));
    ckpt_model_free(m2);
    ckpt_close(f);
}

static void test_non_strict(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2}, s3[1] = {3}, s1[1] = {1}, s5x64[2] = {5, 64},
                         s10x64[2] = {10, 64};
    static float fa[2] = {1.5f, -1.5f}, fx[1] = {9.0f}, fw[5 * 64];
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, fx));
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fa));
    ckpt_file *f = save_open(t, sd, "nonstrict.pth");
    ckpt_tree_free(t);

    float a[2], b[3], w[640];
    fill_sentinel(a, 2);
    fill_sentinel(b, 3);
    fill_sentinel(w, 640);
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s3, b, 0);
    add(m, "w", CKPT_DTYPE_FLOAT32, 2, s10x64, w, 0);

    /* strict first: refused, nothing written */
    ckpt_load_options strict = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &strict, &rep, &err), CKPT_ERR_MISMATCH);
    assert_true(all_sentinel(a, 2));

    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 1);
    assert_int_equal(rep.missing_count, 2);
    assert_string_equal(rep.missing[0], "b");
    assert_string_equal(rep.missing[1], "w");
    assert_int_equal(rep.unexpected_count, 1);
    assert_string_equal(rep.unexpected[0], "x");
    assert_int_equal(rep.error_count, 0);
    assert_null(rep.message);
    assert_memory_equal(a, fa, sizeof(fa));
    assert_true(all_sentinel(b, 3) && all_sentinel(w, 640));
    assert_true(info_of(m, "a").loaded);
    assert_false(info_of(m, "b").loaded);
    assert_false(info_of(m, "w").loaded);
    ckpt_close(f);

    /* a size mismatch fails a non-strict load too, with only that in the message */
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    static float fa2[2] = {7.0f, 8.0f};
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fa2));
    put(t, sd, "w", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, s5x64, fw));
    put(t, sd, "x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, fx));
    f = save_open(t, sd, "nonstrict2.pth");
    ckpt_tree_free(t);
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.error_count, 1);
    assert_string_equal(rep.errors[0], SIZE_LINE);
    assert_string_equal(rep.message, SIZE_MESSAGE);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "b");
    assert_int_equal(rep.unexpected_count, 1);
    assert_string_equal(rep.unexpected[0], "x");
    assert_memory_equal(a, fa, sizeof(fa)); /* unchanged: still the first load's */
    ckpt_close(f);
    ckpt_model_free(m);
}

/* PyTorch decides module by module: an unexpected key is one whose first
 * component after a module's prefix is neither a child nor a parameter of
 * it, so "net.0.weight.extra" passes unnoticed and the root's "zzz" comes
 * before net's "net.5.w". Expected text: torch 1.13's own message for
 * Net(scale, net=Sequential(Linear(2, 3))) and this state dict. */
static void test_module_walk_semantics(void **state)
{
    (void)state;
    static const int64_t s1[1] = {1}, s32[2] = {3, 2}, s3[1] = {3};
    static const float one[1] = {1.0f}, six[6] = {1, 2, 3, 4, 5, 6};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "net.5.w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    put(t, sd, "zzz", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    put(t, sd, "net.0.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, s32, six));
    put(t, sd, "net.0.weight.extra", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    put(t, sd, "scale", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    ckpt_file *f = save_open(t, sd, "walk.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    float scale[1], w[6], b[3];
    fill_sentinel(scale, 1);
    fill_sentinel(w, 6);
    fill_sentinel(b, 3);
    add(m, "scale", CKPT_DTYPE_FLOAT32, 1, s1, scale, 0);
    add(m, "net.0.weight", CKPT_DTYPE_FLOAT32, 2, s32, w, 0);
    add(m, "net.0.bias", CKPT_DTYPE_FLOAT32, 1, s3, b, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_string_equal(rep.message,
                        "Error(s) in loading state_dict for Net:\n"
                        "\tMissing key(s) in state_dict: \"net.0.bias\". \n"
                        "\tUnexpected key(s) in state_dict: \"zzz\", \"net.5.w\". ");
    assert_true(all_sentinel(w, 6) && all_sentinel(scale, 1));
    o.flags = CKPT_LOAD_NON_STRICT;
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 2);
    assert_int_equal(rep.unexpected_count, 2);
    assert_memory_equal(w, six, sizeof(six));
    assert_true(scale[0] == 1.0f && all_sentinel(b, 3));
    ckpt_model_free(m);
    ckpt_close(f);
}

/* ---- keys ---------------------------------------------------------------------------- */

static void test_key_remap(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2};
    static float v1[2] = {1, 2}, v2[2] = {3, 4}, v3[2] = {5, 6}, v4[2] = {7, 8}, v5[2] = {9, 10};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "module.net.w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v1));
    put(t, sd, "module.module.x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v2));
    put(t, sd, "module.backbone.y", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v3));
    put(t, sd, "backbone.backbone.z", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v4));
    put(t, sd, "model.module.q", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v5));
    ckpt_file *f = save_open(t, sd, "remap.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    float w[2], x[2], y[2], z[2], q[2];
    add(m, "net.w", CKPT_DTYPE_FLOAT32, 1, s2, w, 0);
    add(m, "module.x", CKPT_DTYPE_FLOAT32, 1, s2, x, 0);
    add(m, "encoder.y", CKPT_DTYPE_FLOAT32, 1, s2, y, 0);
    add(m, "encoder.backbone.z", CKPT_DTYPE_FLOAT32, 1, s2, z, 0);
    add(m, "module.q", CKPT_DTYPE_FLOAT32, 1, s2, q, 0);

    /* without remapping: nothing matches */
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.missing_count, 5);
    assert_int_equal(rep.unexpected_count, 5);

    static const char *const strip[2] = {"module.", "model."};
    static const ckpt_key_map pmap[2] = {{"backbone.", "encoder."}, {"encoder.", "never."}};
    o.strip_prefixes = strip;
    o.strip_prefix_count = 2;
    o.prefix_map = pmap;
    o.prefix_map_count = 2;
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 5);
    assert_memory_equal(w, v1, 8);
    assert_memory_equal(x, v2, 8);  /* "module." removed once */
    assert_memory_equal(y, v3, 8);  /* stripped, then mapped */
    assert_memory_equal(z, v4, 8);  /* the prefix only, once */
    assert_memory_equal(q, v5, 8);  /* the first matching strip prefix, once */
    ckpt_close(f);
    ckpt_model_free(m);

    /* two keys becoming one name: refused, nothing written */
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    put(t, sd, "module.a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v1));
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v2));
    f = save_open(t, sd, "collide.pth");
    ckpt_tree_free(t);
    m = new_model("Net");
    float a[2];
    fill_sentinel(a, 2);
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0);
    o = load_options(0);
    o.strip_prefixes = strip;
    o.strip_prefix_count = 1;
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_model_load(m, f, &o, &rep, &err);
    assert_int_not_equal(st, CKPT_OK);
    assert_int_equal(err.status, st);
    assert_true(strlen(err.message) > 0);
    assert_true(all_sentinel(a, 2));
    assert_false(info_of(m, "a").loaded);
    o.flags = CKPT_LOAD_NON_STRICT; /* not even when non-strict */
    assert_int_not_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_OK);
    assert_true(all_sentinel(a, 2));
    /* the prefix map colliding the same way */
    static const ckpt_key_map to_a[1] = {{"module.", ""}};
    o = load_options(0);
    o.prefix_map = to_a;
    o.prefix_map_count = 1;
    assert_int_not_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_OK);
    assert_true(all_sentinel(a, 2));
    ckpt_close(f);
    ckpt_model_free(m);
}

static ckpt_value *one_weight(ckpt_tree *t, const float *v)
{
    static const int64_t s2[1] = {2};
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, v));
    return sd;
}

/* Loads "w" (float32[2]) from f with key; returns the status, w in out. */
static ckpt_status load_w(ckpt_file *f, const char *key, float out[2])
{
    static const int64_t s2[1] = {2};
    ckpt_model *m = new_model("Net");
    fill_sentinel(out, 2);
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s2, out, 0);
    ckpt_load_options o = load_options(0);
    o.key = key;
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    ckpt_status st = ckpt_model_load(m, f, &o, &rep, &err);
    if (st != CKPT_OK)
        assert_true(all_sentinel(out, 2));
    ckpt_model_free(m);
    return st;
}

static void test_key_selection(void **state)
{
    (void)state;
    static const float r[2] = {1, 1}, sdv[2] = {2, 2}, mv[2] = {3, 3}, enc[2] = {4, 4};
    float got[2];

    /* root holds tensors: the root */
    ckpt_tree *t = ckpt_tree_new();
    ckpt_file *f = save_open(t, one_weight(t, r), "sel_root.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, NULL, got), CKPT_OK);
    assert_memory_equal(got, r, 8);
    assert_int_equal(load_w(f, "", got), CKPT_OK);
    assert_memory_equal(got, r, 8);
    assert_int_not_equal(load_w(f, "model", got), CKPT_OK);
    ckpt_close(f);

    /* Lightning's layout: "state_dict" */
    t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    put(t, root, "epoch", ckpt_new_int(t, 3));
    put(t, root, "state_dict", one_weight(t, sdv));
    f = save_open(t, root, "sel_sd.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, NULL, got), CKPT_OK);
    assert_memory_equal(got, sdv, 8);
    assert_int_equal(load_w(f, "state_dict", got), CKPT_OK);
    assert_memory_equal(got, sdv, 8);
    /* the root itself holds no "w" */
    assert_int_equal(load_w(f, "", got), CKPT_ERR_MISMATCH);
    /* a path to something that is not a state dict */
    assert_int_not_equal(load_w(f, "epoch", got), CKPT_OK);
    assert_int_not_equal(load_w(f, "nope", got), CKPT_OK);
    assert_int_not_equal(load_w(f, "state_dict.w", got), CKPT_OK);
    ckpt_close(f);

    /* the seed's layout: "model", with the optimizer beside it; and nested */
    t = ckpt_tree_new();
    root = ckpt_new_dict(t);
    put(t, root, "model", one_weight(t, mv));
    ckpt_value *opt = ckpt_new_dict(t);
    put(t, opt, "state", ckpt_new_dict(t));
    put(t, root, "optimizer", opt);
    ckpt_value *outer = ckpt_new_dict(t);
    put(t, outer, "encoder", one_weight(t, enc));
    put(t, root, "nested", outer);
    put(t, root, "epoch", ckpt_new_int(t, 5));
    f = save_open(t, root, "sel_model.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, NULL, got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    assert_int_equal(load_w(f, "model", got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    assert_int_equal(load_w(f, "nested.encoder", got), CKPT_OK);
    assert_memory_equal(got, enc, 8);
    assert_int_not_equal(load_w(f, "nested.decoder", got), CKPT_OK);
    assert_int_not_equal(load_w(f, "missing.path", got), CKPT_OK);
    ckpt_close(f);

    /* both: NULL takes "state_dict", "model" is there when asked for */
    t = ckpt_tree_new();
    root = ckpt_new_dict(t);
    put(t, root, "model", one_weight(t, mv));
    put(t, root, "state_dict", one_weight(t, sdv));
    f = save_open(t, root, "sel_both.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, NULL, got), CKPT_OK);
    assert_memory_equal(got, sdv, 8);
    assert_int_equal(load_w(f, "model", got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    ckpt_close(f);
}

/* ---- dtypes -------------------------------------------------------------------------- */

static void test_dtype_conversion(void **state)
{
    (void)state;
    static const int64_t s8[1] = {8}, s6[1] = {6}, s3[1] = {3};
    /* exactly representable in bfloat16 */
    static const float bvals[8] = {0.0f, 1.0f, -2.0f, 0.375f, 256.0f, -1.0f / 1024, 3.0e38f,
                                   -0.0f};
    uint16_t bf[8];
    for (int i = 0; i < 8; i++) {
        uint32_t u;
        memcpy(&u, &bvals[i], 4);
        bf[i] = (uint16_t)(u >> 16);
    }
    bf[6] = 0x7f80; /* +inf */
    /* float16 bits: 1, -2, 0.5, 65504, 2^-24 (subnormal), -inf */
    static const uint16_t hf[6] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0xfc00};
    static const float hwant[6] = {1.0f, -2.0f, 0.5f, 65504.0f, 5.9604644775390625e-8f,
                                   -INFINITY};
    /* float32 into bfloat16: halfway cases round to even */
    float fv[6];
    fv[0] = f32_of_bits(0x3f808000u); /* 1 + 2^-8: halfway, to even 0x3f80 */
    fv[1] = f32_of_bits(0x3f818000u); /* 1 + 3*2^-8: halfway, to even 0x3f82 */
    fv[2] = f32_of_bits(0x3f808001u); /* above halfway: 0x3f81 */
    fv[3] = f32_of_bits(0x3f807fffu); /* below halfway: 0x3f80 */
    fv[4] = -3.14159265f;
    fv[5] = 1.0e-40f; /* subnormal */
    static const uint16_t bwant_fixed[4] = {0x3f80, 0x3f82, 0x3f81, 0x3f80};
    static const int64_t iv[3] = {1, 2, 3};
    static const double dv[3] = {0.1, -2.5, 1e300};

    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "from_bf16", tensor_of(t, CKPT_DTYPE_BFLOAT16, 1, s8, bf));
    put(t, sd, "from_f16", tensor_of(t, CKPT_DTYPE_FLOAT16, 1, s6, hf));
    put(t, sd, "to_bf16", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s6, fv));
    put(t, sd, "from_f64", tensor_of(t, CKPT_DTYPE_FLOAT64, 1, s3, dv));
    ckpt_file *f = save_open(t, sd, "dtypes.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    float a[8], b[6], d[3];
    uint16_t c[6];
    add(m, "from_bf16", CKPT_DTYPE_FLOAT32, 1, s8, a, 0);
    add(m, "from_f16", CKPT_DTYPE_FLOAT32, 1, s6, b, 0);
    add(m, "to_bf16", CKPT_DTYPE_BFLOAT16, 1, s6, c, 0);
    add(m, "from_f64", CKPT_DTYPE_FLOAT32, 1, s3, d, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 4);
    assert_int_equal(rep.converted, 4);
    for (int i = 0; i < 8; i++) {
        if (i == 6)
            assert_true(isinf(a[i]) && a[i] > 0);
        else
            assert_memory_equal(&a[i], &bvals[i], 4); /* bit for bit: -0.0 stays -0.0 */
    }
    for (int i = 0; i < 6; i++)
        assert_true(b[i] == hwant[i]);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c[i], bwant_fixed[i]);
    uint16_t ref[6];
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_BFLOAT16, ref, CKPT_DTYPE_FLOAT32, fv, 6), CKPT_OK);
    assert_memory_equal(c, ref, sizeof(ref));
    assert_int_equal(ref[4], 0xc049); /* -3.14159 -> -3.140625 */
    assert_true(d[0] == 0.1f && d[1] == -2.5f && isinf(d[2]));
    ckpt_close(f);
    ckpt_model_free(m);

    /* int64 into float32 converts, as torch's copy_ casts; float32 into
     * int64 is refused, and then nothing at all is written */
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    put(t, sd, "ints", tensor_of(t, CKPT_DTYPE_INT64, 1, s3, iv));
    static const float f3[3] = {1, 2, 3};
    put(t, sd, "to_int", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s3, f3));
    static const uint8_t bytes3[3] = {0, 7, 255};
    put(t, sd, "mask", tensor_of(t, CKPT_DTYPE_UINT8, 1, s3, bytes3));
    put(t, sd, "wide", tensor_of(t, CKPT_DTYPE_INT64, 1, s3, iv));
    f = save_open(t, sd, "int.pth");
    ckpt_tree_free(t);
    m = new_model("Net");
    float fi[3];
    int64_t ig[3] = {-1, -1, -1};
    bool mask[3];
    int32_t narrow[3];
    fill_sentinel(fi, 3);
    add(m, "ints", CKPT_DTYPE_FLOAT32, 1, s3, fi, 0);
    add(m, "to_int", CKPT_DTYPE_INT64, 1, s3, ig, 0);
    add(m, "mask", CKPT_DTYPE_BOOL, 1, s3, mask, CKPT_PARAM_BUFFER);
    add(m, "wide", CKPT_DTYPE_INT32, 1, s3, narrow, CKPT_PARAM_BUFFER);
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.error_count, 1);
    assert_non_null(strstr(rep.errors[0], "to_int"));
    assert_non_null(strstr(rep.message, "dtype mismatch for to_int"));
    assert_true(all_sentinel(fi, 3));
    assert_true(ig[0] == -1 && ig[1] == -1 && ig[2] == -1);
    ckpt_close(f);
    ckpt_model_free(m);

    /* without the float32 -> int64 one, the integer conversions load */
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    put(t, sd, "ints", tensor_of(t, CKPT_DTYPE_INT64, 1, s3, iv));
    put(t, sd, "mask", tensor_of(t, CKPT_DTYPE_UINT8, 1, s3, bytes3));
    put(t, sd, "wide", tensor_of(t, CKPT_DTYPE_INT64, 1, s3, iv));
    f = save_open(t, sd, "int2.pth");
    ckpt_tree_free(t);
    m = new_model("Net");
    add(m, "ints", CKPT_DTYPE_FLOAT32, 1, s3, fi, 0);
    add(m, "mask", CKPT_DTYPE_BOOL, 1, s3, mask, CKPT_PARAM_BUFFER);
    add(m, "wide", CKPT_DTYPE_INT32, 1, s3, narrow, CKPT_PARAM_BUFFER);
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_OK);
    assert_int_equal(rep.converted, 3);
    for (int k = 0; k < 3; k++) {
        assert_true(fi[k] == (float)iv[k]);
        assert_true(narrow[k] == (int32_t)(uint32_t)(uint64_t)iv[k]);
    }
    assert_true(!mask[0] && mask[1] && mask[2]);
    ckpt_close(f);
    ckpt_model_free(m);
}

static void test_scalar_param(void **state)
{
    (void)state;
    static const int64_t s1[1] = {1};
    static const float one[1] = {3.5f}, zero_d = 4.5f;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "scale", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    put(t, sd, "vec", tensor_of(t, CKPT_DTYPE_FLOAT32, 0, NULL, &zero_d));
    ckpt_file *f = save_open(t, sd, "scalar.pth");
    ckpt_tree_free(t);

    /* 0-d param from a [1] tensor: accepted */
    ckpt_model *m = new_model("Net");
    float scale = 0.0f, vec[1] = {-777.0f};
    add(m, "scale", CKPT_DTYPE_FLOAT32, 0, NULL, &scale, 0);
    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_true(scale == 3.5f);
    ckpt_model_free(m);

    /* the other way round ([1] param from a 0-d tensor) is a size mismatch, as in PyTorch */
    m = new_model("Net");
    add(m, "vec", CKPT_DTYPE_FLOAT32, 1, s1, vec, 0);
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.error_count, 1);
    assert_string_equal(rep.errors[0],
                        "size mismatch for vec: copying a param with shape torch.Size([]) from "
                        "checkpoint, the shape in current model is torch.Size([1]).");
    assert_true(vec[0] == -777.0f);
    ckpt_model_free(m);
    ckpt_close(f);
}

/* ---- locations and placement ---------------------------------------------------------- */

typedef struct place_log {
    int calls;
    int fail_at;            /* 1-based call that fails; 0: none */
    const char *take;       /* the name the callback places itself */
    char names[8][32];
    char locations[8][32];
    ckpt_dtype dtypes[8];
    uint64_t nbytes[8];
    size_t index[8];
    float first[8];         /* first value as the callback saw it */
    float device[16];       /* "device memory" */
} place_log;

static ckpt_status place_cb(void *user, ckpt_placement *p, ckpt_error *err)
{
    place_log *l = user;
    int k = l->calls++;
    if (k < 8) {
        snprintf(l->names[k], 32, "%s", p->name);
        snprintf(l->locations[k], 32, "%s", p->location);
        l->dtypes[k] = p->dtype;
        l->nbytes[k] = p->nbytes;
        l->index[k] = p->index;
        if (p->dtype == CKPT_DTYPE_FLOAT32 && p->nbytes >= 4)
            memcpy(&l->first[k], p->data, 4);
    }
    if (l->fail_at == k + 1) {
        if (err) {
            memset(err, 0, sizeof(*err));
            err->status = CKPT_ERR_IO;
            err->offset = err->file_offset = CKPT_NO_OFFSET;
            snprintf(err->message, sizeof(err->message), "device out of memory");
        }
        return CKPT_ERR_IO;
    }
    if (l->take && strcmp(p->name, l->take) == 0) {
        assert_true(p->nbytes <= sizeof(l->device));
        memcpy(l->device, p->data, p->nbytes);
        p->placed = true;
        p->dest = l->device;
    }
    return CKPT_OK;
}

static const char *seen_location(const place_log *l, const char *name)
{
    for (int k = 0; k < l->calls && k < 8; k++)
        if (strcmp(l->names[k], name) == 0)
            return l->locations[k];
    fail_msg("the callback never saw %s", name);
    return NULL;
}

static void test_locations_and_placement(void **state)
{
    (void)state;
    static const int64_t s4[1] = {4};
    float fa[4], fc[4];
    fill_seq(fa, 4, 1.0f);
    fill_seq(fc, 4, 20.0f);
    uint16_t fb[4];
    for (int i = 0; i < 4; i++)
        fb[i] = bf16_bits(-(float)i - 0.5f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_at(t, CKPT_DTYPE_FLOAT32, 1, s4, fa, "cpu"));
    put(t, sd, "b", tensor_at(t, CKPT_DTYPE_BFLOAT16, 1, s4, fb, "cuda:1"));
    put(t, sd, "c", tensor_at(t, CKPT_DTYPE_FLOAT32, 1, s4, fc, "cuda:0"));
    ckpt_file *f = save_open(t, sd, "loc.pth");
    ckpt_tree_free(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "b"), &ti);
    assert_string_equal(ti.location, "cuda:1"); /* the file really says so */

    float a[4], b[4], c[4];
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s4, a, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s4, b, 0);
    add(m, "c", CKPT_DTYPE_FLOAT32, 1, s4, c, 0);

    /* tags as saved: the load never fails on a host without CUDA */
    place_log log;
    memset(&log, 0, sizeof(log));
    ckpt_load_options o = load_options(0);
    o.place = place_cb;
    o.place_user = &log;
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(log.calls, 3);
    assert_string_equal(seen_location(&log, "a"), "cpu");
    assert_string_equal(seen_location(&log, "b"), "cuda:1");
    assert_string_equal(seen_location(&log, "c"), "cuda:0");
    assert_string_equal(info_of(m, "b").location, "cuda:1");
    assert_string_equal(info_of(m, "c").location, "cuda:0");
    assert_int_equal(rep.placed, 0);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(log.dtypes[k], CKPT_DTYPE_FLOAT32); /* the model's dtype, converted */
        assert_int_equal(log.nbytes[k], 16);
        size_t idx;
        assert_true(ckpt_model_find(m, log.names[k], &idx));
        assert_int_equal(log.index[k], idx);
        if (strcmp(log.names[k], "b") == 0)
            assert_true(log.first[k] == -0.5f);
    }
    assert_memory_equal(a, fa, 16);
    assert_memory_equal(c, fc, 16);
    assert_true(b[3] == -3.5f);

    /* location_map renames exact tags */
    static const ckpt_key_map lmap[2] = {{"cuda:1", "cuda:0"}, {"cuda", "xla:0"}};
    memset(&log, 0, sizeof(log));
    o.location_map = lmap;
    o.location_map_count = 2;
    load_ok(m, f, &o, &rep);
    assert_string_equal(seen_location(&log, "a"), "cpu");
    assert_string_equal(seen_location(&log, "b"), "cuda:0");
    assert_string_equal(seen_location(&log, "c"), "cuda:0");
    assert_string_equal(info_of(m, "b").location, "cuda:0");

    /* map_location replaces every tag (location_map set too: ignored) */
    memset(&log, 0, sizeof(log));
    o.map_location = "cpu";
    load_ok(m, f, &o, &rep);
    assert_string_equal(seen_location(&log, "a"), "cpu");
    assert_string_equal(seen_location(&log, "b"), "cpu");
    assert_string_equal(seen_location(&log, "c"), "cpu");
    assert_string_equal(info_of(m, "c").location, "cpu");

    /* without a callback, map_location still sets the tag */
    ckpt_load_options plain = load_options(0);
    plain.map_location = "cuda:3";
    load_ok(m, f, &plain, &rep);
    assert_string_equal(info_of(m, "a").location, "cuda:3");
    ckpt_model_free(m);

    /* the callback places "b" in its own memory: the model's memory stays as it was */
    fill_sentinel(a, 4);
    fill_sentinel(b, 4);
    fill_sentinel(c, 4);
    m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s4, a, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s4, b, 0);
    add(m, "c", CKPT_DTYPE_FLOAT32, 1, s4, c, 0);
    memset(&log, 0, sizeof(log));
    log.take = "b";
    o = load_options(0);
    o.place = place_cb;
    o.place_user = &log;
    static const ckpt_key_map one[1] = {{"cuda:1", "cuda:0"}};
    o.location_map = one;
    o.location_map_count = 1;
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.placed, 1);
    assert_int_equal(rep.loaded, 3);
    ckpt_param_info ib = info_of(m, "b");
    assert_true(ib.placed);
    assert_false(ib.borrowed);
    assert_ptr_equal(ib.data, log.device);
    assert_ptr_equal(ckpt_model_data(m, 1), log.device);
    assert_string_equal(ib.location, "cuda:0");
    assert_true(all_sentinel(b, 4));
    for (int i = 0; i < 4; i++)
        assert_true(log.device[i] == -(float)i - 0.5f);
    assert_false(info_of(m, "a").placed);
    assert_ptr_equal(info_of(m, "a").data, a);
    assert_memory_equal(a, fa, 16);
    assert_memory_equal(c, fc, 16);

    /* the callback's error stops the load */
    memset(&log, 0, sizeof(log));
    log.fail_at = 2;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_IO);
    assert_int_equal(log.calls, 2);
    assert_int_equal(err.status, CKPT_ERR_IO);
    assert_non_null(strstr(err.message, "device out of memory"));
    log.fail_at = 0;
    ckpt_model_free(m);
    ckpt_close(f);
}

static void test_non_tensor_value(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2};
    static const float fw[2] = {1, 2};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "net.w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fw));
    put(t, sd, "net.scale", ckpt_new_int(t, 3));
    ckpt_value *inner = ckpt_new_dict(t);
    put(t, inner, "x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fw));
    put(t, sd, "net.sub", inner);
    ckpt_file *f = save_open(t, sd, "nontensor.pth");
    ckpt_tree_free(t);

    float w[2], scale[2], sub[2];
    fill_sentinel(w, 2);
    fill_sentinel(scale, 2);
    fill_sentinel(sub, 2);
    ckpt_model *m = new_model("Net");
    add(m, "net.w", CKPT_DTYPE_FLOAT32, 1, s2, w, 0);
    add(m, "net.scale", CKPT_DTYPE_FLOAT32, 1, s2, scale, 0);
    add(m, "net.sub", CKPT_DTYPE_FLOAT32, 1, s2, sub, 0);
    for (unsigned flags = 0; flags <= CKPT_LOAD_NON_STRICT; flags++) {
        ckpt_load_options o = load_options(flags);
        ckpt_load_report rep = {.struct_size = sizeof(rep)};
        ckpt_error err;
        assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
        assert_int_equal(rep.error_count, 2);
        bool scale_named = false, sub_named = false;
        for (size_t k = 0; k < rep.error_count; k++) {
            scale_named |= strstr(rep.errors[k], "net.scale") != NULL;
            sub_named |= strstr(rep.errors[k], "net.sub") != NULL;
        }
        assert_true(scale_named && sub_named);
        assert_non_null(strstr(rep.message, "net.scale"));
        assert_true(all_sentinel(w, 2) && all_sentinel(scale, 2) && all_sentinel(sub, 2));
    }
    ckpt_model_free(m);
    ckpt_close(f);
}

/* ---- the model's state dict ------------------------------------------------------------ */

static void test_state_dict_round_trip(void **state)
{
    (void)state;
    static const int64_t s23[2] = {2, 3}, s3[1] = {3};
    float w[6], b[3], rm[3];
    int64_t nbt = 17;
    fill_seq(w, 6, 0.125f);
    fill_seq(b, 3, -9.0f);
    fill_seq(rm, 3, 0.0f);
    ckpt_model *m = new_model("Net");
    add(m, "net.2.weight", CKPT_DTYPE_FLOAT32, 2, s23, w, 0);
    add(m, "bn.running_mean", CKPT_DTYPE_FLOAT32, 1, s3, rm, CKPT_PARAM_BUFFER);
    add(m, "net.0.bias", CKPT_DTYPE_FLOAT32, 1, s3, NULL, 0);
    add(m, "bn.num_batches_tracked", CKPT_DTYPE_INT64, 0, NULL, &nbt, CKPT_PARAM_BUFFER);
    memcpy(ckpt_model_data(m, 2), b, sizeof(b));

    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_model_state_dict(m, t);
    assert_non_null(sd);
    assert_int_equal(ckpt_value_kind(sd), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(ckpt_value_len(sd), 4);
    ckpt_file *f = save_open(t, sd, "model_sd.pth");
    ckpt_tree_free(t);

    const ckpt_value *root = ckpt_file_root(f);
    assert_int_equal(ckpt_value_kind(root), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(ckpt_value_len(root), 4);
    static const char *const order[4] = {"net.2.weight", "bn.running_mean", "net.0.bias",
                                         "bn.num_batches_tracked"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(ckpt_value_str(ckpt_value_key(root, i), NULL), order[i]);
        const ckpt_tensor *ft = ckpt_value_tensor(ckpt_value_dict_value(root, i));
        assert_non_null(ft);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ft, &ti);
        ckpt_param_info pi = {.struct_size = sizeof(pi)};
        assert_true(ckpt_model_param(m, i, &pi));
        assert_int_equal(ti.dtype, pi.dtype);
        assert_int_equal(ti.ndim, pi.ndim);
        for (uint32_t d = 0; d < ti.ndim; d++)
            assert_int_equal(ti.shape[d], pi.shape[d]);
        assert_false(ti.is_parameter);
        assert_false(ti.requires_grad);
        assert_string_equal(ti.location, "cpu");
        uint8_t got[64];
        ckpt_error err;
        assert_int_equal(ckpt_tensor_copy(f, ft, got, sizeof(got), &err), CKPT_OK);
        assert_memory_equal(got, pi.data, pi.nbytes);
    }

    /* and back into a fresh model, strictly */
    ckpt_model *m2 = new_model("Net");
    add(m2, "net.2.weight", CKPT_DTYPE_FLOAT32, 2, s23, NULL, 0);
    add(m2, "bn.running_mean", CKPT_DTYPE_FLOAT32, 1, s3, NULL, CKPT_PARAM_BUFFER);
    add(m2, "net.0.bias", CKPT_DTYPE_FLOAT32, 1, s3, NULL, 0);
    add(m2, "bn.num_batches_tracked", CKPT_DTYPE_INT64, 0, NULL, NULL, CKPT_PARAM_BUFFER);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m2, f, &o, &rep);
    assert_int_equal(rep.loaded, 4);
    for (size_t i = 0; i < 4; i++) {
        ckpt_param_info p1 = {.struct_size = sizeof(p1)}, p2 = {.struct_size = sizeof(p2)};
        assert_true(ckpt_model_param(m, i, &p1));
        assert_true(ckpt_model_param(m2, i, &p2));
        assert_memory_equal(p1.data, p2.data, p1.nbytes);
    }
    assert_int_equal(*(const int64_t *)ckpt_model_data(m2, 3), 17);
    ckpt_close(f);
    ckpt_model_free(m2);
    ckpt_model_free(m);
}

/* ---- AdamW --------------------------------------------------------------------------- */

#define NP 3 /* optimizer parameters of the tiny model: w [2,3], b [3], v [2] */
static const int64_t W_SHAPE[2] = {2, 3}, B_SHAPE[1] = {3}, V_SHAPE[1] = {2};
static const size_t P_NUMEL[NP] = {6, 3, 2};

typedef struct tiny {
    ckpt_model *m;
    float w[6], b[3], rm[3], v[2];
} tiny;

/* Parameters w, buffer rm (no optimizer state), b, v. */
static void tiny_init(tiny *x)
{
    memset(x, 0, sizeof(*x));
    for (int i = 0; i < 6; i++)
        x->w[i] = 0.5f - 0.2f * (float)i;
    for (int i = 0; i < 3; i++) {
        x->b[i] = 1.0f + 0.1f * (float)i;
        x->rm[i] = 42.0f;
    }
    x->v[0] = -1.25f;
    x->v[1] = 2.0f;
    x->m = new_model("Tiny");
    add(x->m, "w", CKPT_DTYPE_FLOAT32, 2, W_SHAPE, x->w, 0);
    add(x->m, "rm", CKPT_DTYPE_FLOAT32, 1, B_SHAPE, x->rm, CKPT_PARAM_BUFFER);
    add(x->m, "b", CKPT_DTYPE_FLOAT32, 1, B_SHAPE, x->b, 0);
    add(x->m, "v", CKPT_DTYPE_FLOAT32, 1, V_SHAPE, x->v, 0);
}

static float *tiny_param(tiny *x, int k)
{
    return k == 0 ? x->w : k == 1 ? x->b : x->v;
}

static float grad_value(int t, int k, size_t i)
{
    return (float)(0.5 * sin(1.3 * t + 0.7 * (double)i + k) + 0.05 * k);
}

static void grads_for(int t, float g[NP][6])
{
    for (int k = 0; k < NP; k++)
        for (size_t i = 0; i < P_NUMEL[k]; i++)
            g[k][i] = grad_value(t, k, i);
}

static ckpt_adamw_options test_hp(void)
{
    ckpt_adamw_options o;
    ckpt_adamw_options_default(&o);
    o.lr = 0.01;
    o.weight_decay = 0.1;
    return o;
}

static ckpt_adamw *adamw(ckpt_model *m, const ckpt_adamw_options *o)
{
    ckpt_adamw *opt = NULL;
    ckpt_error err;
    ckpt_status st = ckpt_adamw_new(m, o, &opt, &err);
    if (st != CKPT_OK)
        print_err("adamw_new", &err);
    assert_int_equal(st, CKPT_OK);
    assert_non_null(opt);
    return opt;
}

/* skip: bit k set = parameter k has no gradient this step */
static void step(ckpt_adamw *o, int t, unsigned skip)
{
    float g[NP][6];
    grads_for(t, g);
    const float *gp[NP];
    for (int k = 0; k < NP; k++)
        gp[k] = (skip >> k) & 1u ? NULL : g[k];
    ckpt_error err;
    ckpt_status st = ckpt_adamw_step(o, gp, &err);
    if (st != CKPT_OK)
        print_err("step", &err);
    assert_int_equal(st, CKPT_OK);
}

typedef struct ref_param {
    double p[6], m[6], v[6];
    int t;
} ref_param;

/* PyTorch's AdamW (single tensor, no amsgrad), in double. */
static void ref_step(ref_param *r, const float *g, size_t n, const ckpt_adamw_options *o)
{
    r->t++;
    double bc1 = 1.0 - pow(o->beta1, r->t), bc2 = 1.0 - pow(o->beta2, r->t);
    for (size_t i = 0; i < n; i++) {
        r->p[i] *= 1.0 - o->lr * o->weight_decay;
        r->m[i] = o->beta1 * r->m[i] + (1.0 - o->beta1) * g[i];
        r->v[i] = o->beta2 * r->v[i] + (1.0 - o->beta2) * (double)g[i] * g[i];
        double denom = sqrt(r->v[i]) / sqrt(bc2) + o->eps;
        r->p[i] -= (o->lr / bc1) * r->m[i] / denom;
    }
}

static void test_adamw_reference(void **state)
{
    (void)state;
    tiny x;
    tiny_init(&x);
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(x.m, &hp);
    ckpt_adamw_options got = {.struct_size = sizeof(got)};
    ckpt_adamw_get_options(o, &got);
    assert_true(got.lr == 0.01 && got.weight_decay == 0.1 && got.beta1 == 0.9 &&
                got.beta2 == 0.999 && got.eps == 1e-8 && !got.amsgrad && !got.maximize);

    ref_param ref[NP];
    memset(ref, 0, sizeof(ref));
    for (int k = 0; k < NP; k++)
        for (size_t i = 0; i < P_NUMEL[k]; i++)
            ref[k].p[i] = tiny_param(&x, k)[i];
    for (int k = 0; k < NP; k++)
        assert_int_equal(ckpt_adamw_param_step(o, (size_t)k), 0);

    /* 6 steps; b has no gradient at steps 2 and 5 */
    for (int t = 1; t <= 6; t++) {
        unsigned skip = (t == 2 || t == 5) ? 0x2u : 0u;
        step(o, t, skip);
        float g[NP][6];
        grads_for(t, g);
        for (int k = 0; k < NP; k++)
            if (!((skip >> k) & 1u))
                ref_step(&ref[k], g[k], P_NUMEL[k], &hp);
    }
    assert_int_equal(ckpt_adamw_param_step(o, 0), 6);
    assert_int_equal(ckpt_adamw_param_step(o, 1), 4);
    assert_int_equal(ckpt_adamw_param_step(o, 2), 6);
    double moved = 0.0;
    tiny init;
    tiny_init(&init);
    for (int k = 0; k < NP; k++) {
        const float *p = tiny_param(&x, k), *p0 = tiny_param(&init, k);
        for (size_t i = 0; i < P_NUMEL[k]; i++) {
            if (fabs((double)p[i] - ref[k].p[i]) > 1e-6)
                fail_msg("param %d[%zu]: ckpt %.9g, reference %.9g", k, i, (double)p[i],
                         ref[k].p[i]);
            moved = fmax(moved, fabs((double)p[i] - p0[i]));
        }
    }
    ckpt_model_free(init.m);
    assert_true(moved > 0.005); /* the steps did something */
    for (int i = 0; i < 3; i++)
        assert_true(x.rm[i] == 42.0f); /* a buffer is never stepped */

    /* set_lr: the next step uses it */
    assert_int_equal(ckpt_adamw_set_lr(o, 0.5), CKPT_OK);
    ckpt_adamw_get_options(o, &got);
    assert_true(got.lr == 0.5);
    hp.lr = 0.5;
    step(o, 7, 0);
    float g[NP][6];
    grads_for(7, g);
    for (int k = 0; k < NP; k++) {
        ref_step(&ref[k], g[k], P_NUMEL[k], &hp);
        const float *p = tiny_param(&x, k);
        for (size_t i = 0; i < P_NUMEL[k]; i++)
            assert_true(fabs((double)p[i] - ref[k].p[i]) <= 1e-5);
    }
    ckpt_adamw_free(o);
    ckpt_model_free(x.m);
}

static double float_entry(const ckpt_value *d, const char *key)
{
    const ckpt_value *v = ckpt_value_get(d, key);
    assert_non_null(v);
    assert_int_equal(ckpt_value_kind(v), CKPT_KIND_FLOAT);
    return ckpt_value_float(v);
}

/* state[k] of an optimizer state dict (int keys), NULL when absent. */
static const ckpt_value *state_entry(const ckpt_value *sd, int64_t k)
{
    const ckpt_value *st = ckpt_value_get(sd, "state");
    assert_non_null(st);
    for (size_t i = 0; i < ckpt_value_len(st); i++) {
        const ckpt_value *key = ckpt_value_key(st, i);
        assert_int_equal(ckpt_value_kind(key), CKPT_KIND_INT);
        if (ckpt_value_int(key) == k)
            return ckpt_value_dict_value(st, i);
    }
    return NULL;
}

static void tensor_floats(ckpt_file *f, const ckpt_value *v, float *out, size_t n,
                          const int64_t *shape, uint32_t ndim)
{
    const ckpt_tensor *t = ckpt_value_tensor(v);
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(ti.ndim, ndim);
    for (uint32_t d = 0; d < ndim; d++)
        assert_int_equal(ti.shape[d], shape[d]);
    assert_int_equal(ti.numel, n);
    ckpt_error err;
    assert_int_equal(ckpt_tensor_copy(f, t, out, n * sizeof(float), &err), CKPT_OK);
}

static ckpt_file *save_training(tiny *x, ckpt_adamw *o, const char *name)
{
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    put(t, root, "model", ckpt_model_state_dict(x->m, t));
    put(t, root, "optimizer", ckpt_adamw_state_dict(o, t));
    put(t, root, "epoch", ckpt_new_int(t, 1));
    ckpt_file *f = save_open(t, root, name);
    ckpt_tree_free(t);
    return f;
}

static void params_equal_bits(tiny *a, tiny *b)
{
    assert_memory_equal(a->w, b->w, sizeof(a->w));
    assert_memory_equal(a->b, b->b, sizeof(a->b));
    assert_memory_equal(a->v, b->v, sizeof(a->v));
}

static void test_adamw_state_dict(void **state)
{
    (void)state;
    tiny x;
    tiny_init(&x);
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(x.m, &hp);

    /* one step without b's gradient: b has no state, as in PyTorch */
    step(o, 1, 0x2u);
    ckpt_file *f = save_training(&x, o, "opt1.pth");
    const ckpt_value *sd = ckpt_value_get(ckpt_file_root(f), "optimizer");
    assert_non_null(sd);
    const ckpt_value *st = ckpt_value_get(sd, "state");
    assert_int_equal(ckpt_value_len(st), 2);
    assert_non_null(state_entry(sd, 0));
    assert_null(state_entry(sd, 1));
    assert_non_null(state_entry(sd, 2));
    const ckpt_value *s0 = state_entry(sd, 0);
    float stepv;
    tensor_floats(f, ckpt_value_get(s0, "step"), &stepv, 1, NULL, 0);
    assert_true(stepv == 1.0f);
    float ea[6], eas[6], g[NP][6];
    grads_for(1, g);
    tensor_floats(f, ckpt_value_get(s0, "exp_avg"), ea, 6, W_SHAPE, 2);
    tensor_floats(f, ckpt_value_get(s0, "exp_avg_sq"), eas, 6, W_SHAPE, 2);
    for (int i = 0; i < 6; i++) {
        assert_true(fabs(ea[i] - 0.1 * g[0][i]) <= 1e-7);
        assert_true(fabs(eas[i] - 0.001 * g[0][i] * g[0][i]) <= 1e-9);
    }
    const ckpt_value *groups = ckpt_value_get(sd, "param_groups");
    assert_int_equal(ckpt_value_kind(groups), CKPT_KIND_LIST);
    assert_int_equal(ckpt_value_len(groups), 1);
    const ckpt_value *g0 = ckpt_value_item(groups, 0);
    assert_true(float_entry(g0, "lr") == 0.01);
    assert_true(float_entry(g0, "eps") == 1e-8);
    assert_true(float_entry(g0, "weight_decay") == 0.1);
    const ckpt_value *betas = ckpt_value_get(g0, "betas");
    assert_int_equal(ckpt_value_kind(betas), CKPT_KIND_TUPLE);
    assert_int_equal(ckpt_value_len(betas), 2);
    assert_true(ckpt_value_float(ckpt_value_item(betas, 0)) == 0.9);
    assert_true(ckpt_value_float(ckpt_value_item(betas, 1)) == 0.999);
    assert_int_equal(ckpt_value_kind(ckpt_value_get(g0, "amsgrad")), CKPT_KIND_BOOL);
    assert_false(ckpt_value_bool(ckpt_value_get(g0, "amsgrad")));
    const ckpt_value *params = ckpt_value_get(g0, "params");
    assert_int_equal(ckpt_value_kind(params), CKPT_KIND_LIST);
    assert_int_equal(ckpt_value_len(params), NP);
    for (size_t k = 0; k < NP; k++)
        assert_int_equal(ckpt_value_int(ckpt_value_item(params, k)), (int64_t)k);
    ckpt_close(f);

    /* more steps, all gradients; save; resume into a fresh model and optimizer */
    for (int t = 2; t <= 4; t++)
        step(o, t, 0);
    f = save_training(&x, o, "opt4.pth");
    tiny y;
    tiny_init(&y);
    ckpt_load_options lo = load_options(0);
    lo.key = "model";
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(y.m, f, &lo, &rep);
    ckpt_adamw_options defaults;
    ckpt_adamw_options_default(&defaults);
    ckpt_adamw *o2 = adamw(y.m, &defaults);
    ckpt_error err;
    ckpt_status lst = ckpt_adamw_load(o2, f, ckpt_value_get(ckpt_file_root(f), "optimizer"), &err);
    if (lst != CKPT_OK)
        print_err("adamw_load", &err);
    assert_int_equal(lst, CKPT_OK);
    ckpt_close(f); /* the optimizer's state is its own */
    ckpt_adamw_options got = {.struct_size = sizeof(got)};
    ckpt_adamw_get_options(o2, &got);
    assert_true(got.lr == 0.01 && got.weight_decay == 0.1); /* the file's */
    assert_int_equal(ckpt_adamw_param_step(o2, 0), 4);
    assert_int_equal(ckpt_adamw_param_step(o2, 1), 3);
    assert_int_equal(ckpt_adamw_param_step(o2, 2), 4);
    params_equal_bits(&x, &y);
    for (int t = 5; t <= 6; t++) {
        step(o, t, 0);
        step(o2, t, 0);
        params_equal_bits(&x, &y);
    }
    /* and the steps changed something */
    assert_true(x.w[0] != 0.5f);

    ckpt_adamw_free(o2);
    ckpt_model_free(y.m);
    ckpt_adamw_free(o);
    ckpt_model_free(x.m);
}

/* An optimizer state dict built by hand (as PyTorch writes it), with knobs to break it. */
typedef struct opt_spec {
    const int64_t *ea_shape;  /* exp_avg of parameter 0 */
    uint32_t ea_ndim;
    int64_t state_key;        /* key of the first entry */
    bool step_number;         /* step as a Python float, not a tensor */
    bool ea_not_tensor;
    bool ea_stride0;          /* exp_avg a stride-0 view of one float */
    size_t params;            /* entries in params */
    const int64_t *ids;       /* the params' ids; NULL: 0, 1, ... */
    bool no_groups;
    bool state_not_dict;
} opt_spec;

static ckpt_file *opt_file(const opt_spec *s, const char *name)
{
    static float ea[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    static float eas[6] = {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f};
    static float five = 5.0f;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_value *state = ckpt_new_dict(t);
    ckpt_value *e0 = ckpt_new_dict(t);
    put(t, e0, "step", s->step_number ? ckpt_new_float(t, 5.0)
                                      : tensor_of(t, CKPT_DTYPE_FLOAT32, 0, NULL, &five));
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    static const int64_t zero_strides[2] = {0, 0};
    d.ndim = s->ea_ndim;
    d.shape = s->ea_shape;
    d.stride = s->ea_stride0 ? zero_strides : NULL;
    d.data = ea;
    put(t, e0, "exp_avg", s->ea_not_tensor ? ckpt_new_str(t, "no", SIZE_MAX)
                                           : ckpt_new_tensor(t, &d));
    put(t, e0, "exp_avg_sq", tensor_of(t, CKPT_DTYPE_FLOAT32, 2, W_SHAPE, eas));
    if (s->state_not_dict)
        e0 = ckpt_new_int(t, 7);
    assert_int_equal(ckpt_dict_put(t, state, ckpt_new_int(t, s->state_key), e0), CKPT_OK);
    put(t, root, "state", state);
    ckpt_value *groups = ckpt_new_list(t);
    ckpt_value *g = ckpt_new_dict(t);
    put(t, g, "lr", ckpt_new_float(t, 0.25));
    ckpt_value *betas = ckpt_new_tuple(t);
    assert_int_equal(ckpt_append(t, betas, ckpt_new_float(t, 0.8)), CKPT_OK);
    assert_int_equal(ckpt_append(t, betas, ckpt_new_float(t, 0.99)), CKPT_OK);
    put(t, g, "betas", betas);
    put(t, g, "eps", ckpt_new_float(t, 1e-6));
    put(t, g, "weight_decay", ckpt_new_float(t, 0.05));
    put(t, g, "amsgrad", ckpt_new_bool(t, false));
    put(t, g, "foreach", ckpt_new_none(t));
    put(t, g, "maximize", ckpt_new_bool(t, false));
    put(t, g, "capturable", ckpt_new_bool(t, false));
    ckpt_value *params = ckpt_new_list(t);
    for (size_t k = 0; k < s->params; k++)
        assert_int_equal(ckpt_append(t, params, ckpt_new_int(t, s->ids ? s->ids[k] : (int64_t)k)),
                         CKPT_OK);
    put(t, g, "params", params);
    if (!s->no_groups)
        assert_int_equal(ckpt_append(t, groups, g), CKPT_OK);
    put(t, root, "param_groups", groups);
    ckpt_file *f = save_open(t, root, name);
    ckpt_tree_free(t);
    return f;
}

static opt_spec good_spec(void)
{
    opt_spec s;
    memset(&s, 0, sizeof(s));
    s.ea_shape = W_SHAPE;
    s.ea_ndim = 2;
    s.state_key = 0;
    s.params = NP;
    return s;
}

static void test_adamw_load_refusals(void **state)
{
    (void)state;
    /* x: the optimizer that loads (and must refuse); twin: the same history, never loaded */
    tiny x, twin;
    tiny_init(&x);
    tiny_init(&twin);
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(x.m, &hp), *ot = adamw(twin.m, &hp);
    step(o, 1, 0);
    step(ot, 1, 0);
    ckpt_error err;

    static const int64_t transposed[2] = {3, 2}, huge[1] = {(int64_t)1 << 40}, flat[1] = {6};
    struct {
        const char *what;
        opt_spec s;
    } bad[10];
    int n = 0;
    bad[n].what = "exp_avg [3, 2] for a [2, 3] parameter";
    bad[n].s = good_spec();
    bad[n].s.ea_shape = transposed;
    n++;
    bad[n].what = "exp_avg flat [6]";
    bad[n].s = good_spec();
    bad[n].s.ea_shape = flat;
    bad[n].s.ea_ndim = 1;
    n++;
    static const int64_t dup_ids[NP] = {0, 0, 1};
    bad[n].what = "a parameter id twice in the group";
    bad[n].s = good_spec();
    bad[n].s.ids = dup_ids;
    n++;
    bad[n].what = "exp_avg [3, 2] for id 2, which names parameter 0 ([2, 3])";
    static const int64_t rotated[NP] = {2, 0, 1};
    bad[n].s = good_spec();
    bad[n].s.ids = rotated;
    bad[n].s.state_key = 1; /* parameter 2, v [2]: exp_avg [2, 3] does not fit */
    n++;
    bad[n].what = "exp_avg not a tensor";
    bad[n].s = good_spec();
    bad[n].s.ea_not_tensor = true;
    n++;
    bad[n].what = "two parameters in the group for three";
    bad[n].s = good_spec();
    bad[n].s.params = 2;
    n++;
    bad[n].what = "four parameters in the group for three";
    bad[n].s = good_spec();
    bad[n].s.params = 4;
    n++;
    bad[n].what = "no groups";
    bad[n].s = good_spec();
    bad[n].s.no_groups = true;
    n++;
    bad[n].what = "a huge exp_avg (a stride-0 view of one float)";
    bad[n].s = good_spec();
    bad[n].s.ea_shape = huge;
    bad[n].s.ea_ndim = 1;
    bad[n].s.ea_stride0 = true;
    n++;
    bad[n].what = "a state entry that is not a dict";
    bad[n].s = good_spec();
    bad[n].s.state_not_dict = true;
    n++;
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "badopt%d.pth", i);
        ckpt_file *f = opt_file(&bad[i].s, name);
        memset(&err, 0, sizeof(err));
        ckpt_status st = ckpt_adamw_load(o, f, ckpt_file_root(f), &err);
        if (st == CKPT_OK)
            fail_msg("%s: loaded", bad[i].what);
        assert_int_equal(err.status, st);
        ckpt_close(f);
        /* nothing changed */
        ckpt_adamw_options got = {.struct_size = sizeof(got)};
        ckpt_adamw_get_options(o, &got);
        assert_true(got.lr == 0.01 && got.beta1 == 0.9 && got.eps == 1e-8);
        for (size_t k = 0; k < NP; k++)
            assert_int_equal(ckpt_adamw_param_step(o, k), 1);
    }
    /* after every refusal the optimizer steps exactly as its twin */
    step(o, 2, 0);
    step(ot, 2, 0);
    params_equal_bits(&x, &twin);

    /* the well-formed twin of the hand-built file loads (so the refusals are about
     * the breakage), steps as numbers too */
    for (int number = 0; number <= 1; number++) {
        opt_spec s = good_spec();
        s.step_number = number != 0;
        ckpt_file *f = opt_file(&s, "goodopt.pth");
        ckpt_status st = ckpt_adamw_load(o, f, ckpt_file_root(f), &err);
        if (st != CKPT_OK)
            print_err("good optimizer state dict", &err);
        assert_int_equal(st, CKPT_OK);
        ckpt_close(f);
        ckpt_adamw_options got = {.struct_size = sizeof(got)};
        ckpt_adamw_get_options(o, &got);
        assert_true(got.lr == 0.25 && got.beta1 == 0.8 && got.beta2 == 0.99 && got.eps == 1e-6 &&
                    got.weight_decay == 0.05);
        assert_int_equal(ckpt_adamw_param_step(o, 0), 5);
        assert_int_equal(ckpt_adamw_param_step(o, 1), 0); /* no state: no steps yet */
        assert_int_equal(ckpt_adamw_param_step(o, 2), 0);
    }
    /* state of an id the group does not list is dropped, as torch drops it */
    for (int64_t key = -1; key <= 7; key += 8) {
        opt_spec s = good_spec();
        s.state_key = key;
        ckpt_file *f = opt_file(&s, "strayopt.pth");
        assert_int_equal(ckpt_adamw_load(o, f, ckpt_file_root(f), &err), CKPT_OK);
        ckpt_close(f);
        for (size_t k = 0; k < NP; k++)
            assert_int_equal(ckpt_adamw_param_step(o, k), 0);
    }
    /* ids map to parameters by position in the group: id 2 is parameter 0 */
    {
        static const int64_t rot_ids[NP] = {2, 0, 1};
        opt_spec s = good_spec();
        s.ids = rot_ids;
        s.state_key = 2;
        ckpt_file *f = opt_file(&s, "rotopt.pth");
        ckpt_status st = ckpt_adamw_load(o, f, ckpt_file_root(f), &err);
        if (st != CKPT_OK)
            print_err("rotated ids", &err);
        assert_int_equal(st, CKPT_OK);
        ckpt_close(f);
        assert_int_equal(ckpt_adamw_param_step(o, 0), 5);
        assert_int_equal(ckpt_adamw_param_step(o, 1), 0);
        assert_int_equal(ckpt_adamw_param_step(o, 2), 0);
    }
    /* the loaded state takes part in the next step: w's moments are the file's */
    {
        ckpt_adamw_options fhp = {.struct_size = sizeof(fhp)};
        ckpt_adamw_get_options(o, &fhp);
        ref_param r;
        memset(&r, 0, sizeof(r));
        static const float ea[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
        static const float eas[6] = {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f};
        for (int i = 0; i < 6; i++) {
            r.p[i] = x.w[i];
            r.m[i] = ea[i];
            r.v[i] = eas[i];
        }
        r.t = 5;
        step(o, 3, 0);
        float g[NP][6];
        grads_for(3, g);
        ref_step(&r, g[0], 6, &fhp);
        for (int i = 0; i < 6; i++)
            if (fabs((double)x.w[i] - r.p[i]) > 1e-6)
                fail_msg("w[%d] after a loaded state: %.9g, reference %.9g", i, (double)x.w[i],
                         r.p[i]);
    }
    ckpt_adamw_free(o);
    ckpt_adamw_free(ot);
    ckpt_model_free(x.m);
    ckpt_model_free(twin.m);
}

static void test_adamw_refuses_non_float32(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2};
    uint16_t h[2] = {0, 0};
    float fl[2] = {0, 0};
    int64_t counter = 0;
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s2, fl, 0);
    add(m, "h", CKPT_DTYPE_BFLOAT16, 1, s2, h, 0);
    ckpt_adamw_options hp;
    ckpt_adamw_options_default(&hp);
    ckpt_adamw *o = (ckpt_adamw *)(uintptr_t)1;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_adamw_new(m, &hp, &o, &err);
    assert_int_not_equal(st, CKPT_OK);
    assert_int_equal(err.status, st);
    assert_true(o == NULL || o == (ckpt_adamw *)(uintptr_t)1);
    ckpt_model_free(m);

    /* a non-float buffer is no parameter: fine */
    m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s2, fl, 0);
    add(m, "count", CKPT_DTYPE_INT64, 0, NULL, &counter, CKPT_PARAM_BUFFER);
    o = adamw(m, &hp);
    float g[2] = {1.0f, -1.0f};
    const float *gp[1] = {g};
    assert_int_equal(ckpt_adamw_step(o, gp, &err), CKPT_OK);
    assert_true(fl[0] < 0.0f && fl[1] > 0.0f);
    assert_int_equal(counter, 0);
    ckpt_adamw_free(o);
    ckpt_model_free(m);
}

/* ---- hostile input ----------------------------------------------------------------------- */

static void test_model_add_refusals(void **state)
{
    (void)state;
    ckpt_model *m = new_model("Net");
    static const int64_t s2[1] = {2}, neg[2] = {3, -1}, over[2] = {(int64_t)1 << 62,
                                                                    (int64_t)1 << 62};
    float a[2];
    ckpt_error err;
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0);
    assert_int_not_equal(ckpt_model_add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "", CKPT_DTYPE_FLOAT32, 1, s2, a, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, NULL, CKPT_DTYPE_FLOAT32, 1, s2, a, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "n", CKPT_DTYPE_FLOAT32, 2, neg, NULL, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "o", CKPT_DTYPE_FLOAT32, 2, over, NULL, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "d", CKPT_DTYPE_INVALID, 1, s2, a, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "e", (ckpt_dtype)999, 1, s2, a, 0, NULL, &err),
                         CKPT_OK);
    assert_int_not_equal(ckpt_model_add(m, "s", CKPT_DTYPE_FLOAT32, 1, NULL, a, 0, NULL, &err), CKPT_OK);
    assert_int_equal(ckpt_model_count(m), 1);
    size_t idx;
    assert_false(ckpt_model_find(m, "n", &idx) || ckpt_model_find(m, "o", &idx));
    ckpt_model_free(m);
    ckpt_model_free(NULL);
}

/* Hand-made torch zip of one pickle and one storage record, for views that
 * ckpt's own writer refuses to build. */
static buf zip_records(const char *const *names, const uint8_t *const *data, const size_t *sizes,
                       const unsigned *methods, const size_t *usizes, int n)
{
    zrec recs[4];
    assert_true(n <= 4);
    for (int i = 0; i < n; i++) {
        recs[i] = zr_stored(names[i], data[i], sizes[i]);
        if (methods && methods[i]) {
            recs[i].method = methods[i];
            recs[i].size = usizes[i];
        }
    }
    return zip_build(recs, n, NULL).file;
}

static buf zip_of(const char *const *names, const uint8_t *const *data, const size_t *sizes, int n)
{
    return zip_records(names, data, sizes, NULL, NULL, n);
}

static buf torch_view_file(const float *storage, int64_t numel, int64_t offset,
                           const int64_t *shape, const int64_t *stride, int ndim)
{
    buf p = pk_one_tensor("w", "FloatStorage", numel, offset, shape, stride, ndim);
    static const char *const names[3] = {"archive/data.pkl", "archive/data/0", "archive/version"};
    const uint8_t *data[3] = {p.p, (const uint8_t *)storage, (const uint8_t *)"3\n"};
    size_t sizes[3] = {p.len, (size_t)numel * 4, 2};
    buf z = zip_of(names, data, sizes, 3);
    b_free(&p);
    return z;
}

static void test_hostile_views(void **state)
{
    (void)state;
    static float st[12];
    for (int i = 0; i < 12; i++)
        st[i] = (float)i + 0.5f;
    ckpt_error err;
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_load_options o = load_options(CKPT_LOAD_ZERO_COPY);
    static const int64_t s43[2] = {4, 3}, s34[2] = {3, 4};

    /* control: the hand-made file is right (contiguous [4, 3]) */
    {
        static const int64_t stride[2] = {3, 1};
        buf z = torch_view_file(st, 12, 0, s43, stride, 2);
        ckpt_file *f;
        assert_int_equal(ckpt_open_memory(z.p, z.len, NULL, &f, &err), CKPT_OK);
        ckpt_model *m = new_model("Net");
        add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, NULL, 0);
        ckpt_load_options plain = load_options(0);
        load_ok(m, f, &plain, &rep);
        assert_memory_equal(ckpt_model_data(m, 0), st, 48);
        ckpt_model_free(m);
        ckpt_close(f);
        b_free(&z);
    }
    /* a transposed view: loaded by its logical values, never borrowed */
    {
        static const int64_t stride[2] = {1, 4};
        buf z = torch_view_file(st, 12, 0, s43, stride, 2);
        ckpt_file *f;
        assert_int_equal(ckpt_open_memory(z.p, z.len, NULL, &f, &err), CKPT_OK);
        ckpt_model *m = new_model("Net");
        add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, NULL, 0);
        load_ok(m, f, &o, &rep);
        assert_int_equal(rep.zero_copy, 0);
        assert_false(info_of(m, "w").borrowed);
        const float *w = ckpt_model_data(m, 0);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++)
                assert_true(w[i * 3 + j] == st[i + 4 * j]);
        ckpt_model_free(m);
        ckpt_close(f);
        b_free(&z);
    }
    /* a stride-0 (expanded) view with an offset: every row is the same */
    {
        static const int64_t stride[2] = {0, 1};
        buf z = torch_view_file(st, 12, 5, s43, stride, 2);
        ckpt_file *f;
        assert_int_equal(ckpt_open_memory(z.p, z.len, NULL, &f, &err), CKPT_OK);
        ckpt_model *m = new_model("Net");
        add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, NULL, 0);
        load_ok(m, f, &o, &rep);
        assert_false(info_of(m, "w").borrowed);
        const float *w = ckpt_model_data(m, 0);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++)
                assert_true(w[i * 3 + j] == st[5 + j]);
        ckpt_model_free(m);
        ckpt_close(f);
        b_free(&z);
    }
    /* a huge stride-0 view: a size mismatch, reported with its shape, nothing allocated */
    {
        static const int64_t huge[2] = {(int64_t)1 << 40, 3}, stride[2] = {0, 1};
        buf z = torch_view_file(st, 12, 0, huge, stride, 2);
        ckpt_file *f;
        ckpt_status ost = ckpt_open_memory(z.p, z.len, NULL, &f, &err);
        if (ost == CKPT_OK) {
            ckpt_model *m = new_model("Net");
            float w[12];
            fill_sentinel(w, 12);
            add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, w, 0);
            assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
            assert_int_equal(rep.error_count, 1);
            assert_string_equal(rep.errors[0],
                                "size mismatch for w: copying a param with shape "
                                "torch.Size([1099511627776, 3]) from checkpoint, the shape in "
                                "current model is torch.Size([4, 3]).");
            assert_true(all_sentinel(w, 12));
            ckpt_model_free(m);
            ckpt_close(f);
        } else {
            print_err("huge stride-0 view", &err);
        }
        assert_int_equal(ost, CKPT_OK);
        b_free(&z);
    }
    /* the same numel in another shape is still a mismatch */
    {
        static const int64_t stride[2] = {4, 1};
        buf z = torch_view_file(st, 12, 0, s34, stride, 2);
        ckpt_file *f;
        assert_int_equal(ckpt_open_memory(z.p, z.len, NULL, &f, &err), CKPT_OK);
        ckpt_model *m = new_model("Net");
        float w[12];
        fill_sentinel(w, 12);
        add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, w, 0);
        assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
        assert_true(all_sentinel(w, 12));
        ckpt_model_free(m);
        ckpt_close(f);
        b_free(&z);
    }
    /* negative strides, views past their storage, negative offsets, overflowing
     * shapes: never loaded; whatever refuses them, nothing is written */
    {
        static const int64_t neg[2] = {-3, 1}, over[2] = {(int64_t)1 << 62, (int64_t)1 << 62},
                             s1[2] = {3, 1}, big_stride[2] = {100, 1};
        struct {
            const int64_t *shape, *stride;
            int64_t offset;
        } cases[5] = {
            {s43, neg, 9},          /* negative stride, rows backwards */
            {over, s1, 0},          /* overflowing shape */
            {s43, big_stride, 0},   /* runs past the storage */
            {s43, s1, 1},           /* one element past the storage */
            {s43, s1, -1},          /* negative offset */
        };
        for (int k = 0; k < 5; k++) {
            buf z = torch_view_file(st, 12, cases[k].offset, cases[k].shape, cases[k].stride, 2);
            ckpt_file *f = NULL;
            ckpt_status ost = ckpt_open_memory(z.p, z.len, NULL, &f, &err);
            if (ost == CKPT_OK) {
                ckpt_model *m = new_model("Net");
                float w[12];
                fill_sentinel(w, 12);
                add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, w, 0);
                ckpt_status st2 = ckpt_model_load(m, f, &o, &rep, &err);
                if (st2 == CKPT_OK)
                    fail_msg("hostile view %d loaded", k);
                assert_true(all_sentinel(w, 12));
                ckpt_model_free(m);
                ckpt_close(f);
            } else {
                assert_null(f);
                assert_int_equal(err.status, ost);
            }
            b_free(&z);
        }
    }
}

/* Long keys and many of them: the report holds them whole; err the start. */
static void test_hostile_keys(void **state)
{
    (void)state;
    static const int64_t s1[1] = {1};
    static const float one[1] = {1.0f};
    char *longkey = malloc(5001);
    assert_non_null(longkey);
    memset(longkey, 'k', 5000);
    longkey[5000] = '\0';
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, longkey, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    char name[32];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "extra.%d", i);
        put(t, sd, name, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    }
    put(t, sd, "a\"b", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    ckpt_file *f = save_open(t, sd, "keys.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    float w[1] = {-777.0f};
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s1, w, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.unexpected_count, 302);
    assert_string_equal(rep.unexpected[0], longkey);
    assert_string_equal(rep.unexpected[301], "a\"b");
    assert_int_equal(rep.missing_count, 1);
    assert_non_null(strstr(rep.message, longkey));
    assert_non_null(strstr(rep.message, "\"extra.299\""));
    assert_true(strlen(rep.message) > 5000 + 300 * 8);
    assert_true(strlen(err.message) < sizeof(err.message));
    assert_non_null(strstr(err.message, "Missing key(s) in state_dict: \"w\"."));
    assert_true(w[0] == -777.0f);

    /* non-strict: loads nothing, fails nothing */
    o.flags = CKPT_LOAD_NON_STRICT;
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 0);
    assert_int_equal(rep.unexpected_count, 302);
    assert_true(w[0] == -777.0f);

    /* bad arguments */
    assert_int_not_equal(ckpt_model_load(NULL, f, &o, &rep, &err), CKPT_OK);
    assert_int_not_equal(ckpt_model_load(m, NULL, &o, &rep, &err), CKPT_OK);
    ckpt_model_free(m);
    ckpt_close(f);
    free(longkey);
}

/* A safetensors file in memory: the root holds tensors; float64 converts. */
static void test_safetensors_source(void **state)
{
    (void)state;
    const char *header = "{\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,32]}}";
    buf b = {0};
    size_t hl = strlen(header);
    size_t padded = (hl + 7) / 8 * 8;
    b_le(&b, padded, 8);
    b_str(&b, header);
    b_fill(&b, ' ', padded - hl);
    static const double dv[2] = {0.5, -1.0e-3};
    static const float fv[4] = {1, 2, 3, 4};
    b_put(&b, dv, 16);
    b_put(&b, fv, 16);
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(b.p, b.len, NULL, &f, &err), CKPT_OK);
    static const int64_t s22[2] = {2, 2}, s2[1] = {2};
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 2, s22, NULL, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s2, NULL, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.converted, 1);
    assert_memory_equal(ckpt_model_data(m, 0), fv, 16);
    const float *bb = ckpt_model_data(m, 1);
    assert_true(bb[0] == 0.5f && bb[1] == (float)-1.0e-3);
    ckpt_model_free(m);
    ckpt_close(f);
    b_free(&b);
}

/* ---- regressions: later loads, odd keys, check-only loads, big models ------------------- */

/* After a zero-copy load of {a, b}, a copying non-strict load of a file
 * with only a: a is copied into its own memory, b was not filled by this
 * load (loaded false) and stays borrowed from the first file. */
static void test_later_load_flags(void **state)
{
    (void)state;
    static const int64_t s4[1] = {4};
    float fa[4], fb[4], fa2[4];
    fill_seq(fa, 4, 1.0f);
    fill_seq(fb, 4, 20.0f);
    fill_seq(fa2, 4, -5.0f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s4, fa));
    put(t, sd, "b", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s4, fb));
    ckpt_file *f1 = save_open(t, sd, "flags1.pth");
    ckpt_tree_free(t);
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s4, fa2));
    ckpt_file *f2 = save_open(t, sd, "flags2.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s4, NULL, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s4, NULL, 0);
    void *a_own = ckpt_model_data(m, 0), *b_own = ckpt_model_data(m, 1);
    ckpt_load_options zc = load_options(CKPT_LOAD_ZERO_COPY);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f1, &zc, &rep);
    assert_int_equal(rep.zero_copy, 2);
    ckpt_param_info ia = info_of(m, "a"), ib = info_of(m, "b");
    assert_true(ia.loaded && ia.borrowed && ib.loaded && ib.borrowed);
    const void *b_file = ib.data;
    assert_ptr_not_equal(b_file, b_own);

    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    load_ok(m, f2, &o, &rep);
    assert_int_equal(rep.loaded, 1);
    assert_int_equal(rep.zero_copy, 0);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "b");
    ia = info_of(m, "a");
    assert_true(ia.loaded);
    assert_false(ia.borrowed);
    assert_ptr_equal(ia.data, a_own);
    assert_memory_equal(ia.data, fa2, sizeof(fa2));
    ib = info_of(m, "b");
    assert_false(ib.loaded); /* not filled by the last load */
    assert_true(ib.borrowed); /* still the first file's bytes */
    assert_ptr_equal(ib.data, b_file);
    assert_memory_equal(ib.data, fb, sizeof(fb));
    ckpt_close(f2);
    ckpt_model_free(m);
    ckpt_close(f1);
}

/* A key with a NUL in it ("w\0junk") never names the parameter "w", as in
 * Python; the report shows the NUL as \x00. */
static void test_nul_in_key(void **state)
{
    (void)state;
    static const int64_t s1[1] = {1};
    static const float one[1] = {1.0f};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    ckpt_value *key = ckpt_new_str(t, "w\0junk", 6);
    assert_non_null(key);
    assert_int_equal(ckpt_dict_put(t, sd, key, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one)), CKPT_OK);
    ckpt_file *f = save_open(t, sd, "nulkey.pth");
    ckpt_tree_free(t);

    float w[1] = {-777.0f};
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s1, w, 0);
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "w");
    assert_int_equal(rep.unexpected_count, 1);
    assert_string_equal(rep.unexpected[0], "w\\x00junk");
    assert_string_equal(rep.message, "Error(s) in loading state_dict for Net:\n"
                                     "\tMissing key(s) in state_dict: \"w\". \n"
                                     "\tUnexpected key(s) in state_dict: \"w\\x00junk\". ");
    assert_int_equal(rep.loaded, 0);
    assert_true(w[0] == -777.0f);
    o.flags = CKPT_LOAD_NON_STRICT;
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 0);
    assert_true(w[0] == -777.0f && !info_of(m, "w").loaded);
    ckpt_model_free(m);
    ckpt_close(f);
}

/* Keys that are not text, with a str() longer than 511 characters: whole in
 * the report, so keys that differ only at the end stay two keys. */
static void test_long_non_string_keys(void **state)
{
    (void)state;
    static const int64_t s1[1] = {1};
    static const float one[1] = {1.0f};
    enum { LONG = 700 };
    char *text[2];
    char *expect[2];
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one));
    for (int k = 0; k < 2; k++) {
        /* the key (1, 'kkk...ka') and (1, 'kkk...kb') */
        text[k] = malloc(LONG + 1);
        expect[k] = malloc(LONG + 16);
        assert_true(text[k] && expect[k]);
        memset(text[k], 'k', LONG);
        text[k][LONG - 1] = (char)('a' + k);
        text[k][LONG] = '\0';
        snprintf(expect[k], LONG + 16, "(1, '%s')", text[k]);
        ckpt_value *key = ckpt_new_tuple(t);
        assert_non_null(key);
        assert_int_equal(ckpt_append(t, key, ckpt_new_int(t, 1)), CKPT_OK);
        assert_int_equal(ckpt_append(t, key, ckpt_new_str(t, text[k], SIZE_MAX)), CKPT_OK);
        assert_int_equal(ckpt_dict_put(t, sd, key, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, one)),
                         CKPT_OK);
    }
    ckpt_file *f = save_open(t, sd, "longkeys.pth");
    ckpt_tree_free(t);
    assert_true(strlen(expect[0]) > 511);

    float w[1] = {-777.0f};
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s1, w, 0);
    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 1);
    assert_int_equal(rep.error_count, 0);
    assert_int_equal(rep.missing_count, 0);
    assert_int_equal(rep.unexpected_count, 2);
    assert_string_equal(rep.unexpected[0], expect[0]);
    assert_string_equal(rep.unexpected[1], expect[1]);
    assert_true(w[0] == 1.0f);
    /* strict: the two unexpected keys, nothing "appears twice" */
    o.flags = 0;
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.unexpected_count, 2);
    assert_int_equal(rep.error_count, 0);
    assert_null(strstr(rep.message, "appears twice"));
    assert_non_null(strstr(rep.message, expect[1]));
    ckpt_model_free(m);
    ckpt_close(f);
    for (int k = 0; k < 2; k++) {
        free(text[k]);
        free(expect[k]);
    }
}

static ckpt_status never_place(void *user, ckpt_placement *p, ckpt_error *err)
{
    (void)err;
    ++*(int *)user;
    fail_msg("a check-only load called the placement callback for %s", p->name);
    return CKPT_ERR_IO;
}

/* CKPT_PARAM_NO_DATA describes a parameter without memory;
 * CKPT_LOAD_CHECK_ONLY decides and reports as a load would, and reads and
 * writes nothing. */
static void test_check_only(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2}, s3[1] = {3}, s4[1] = {4}, s5[1] = {5}, s1[1] = {1};
    static const float fa[2] = {1.5f, -2.5f}, fx[1] = {9.0f};
    uint16_t fb[3];
    for (int i = 0; i < 3; i++)
        fb[i] = bf16_bits((float)i + 0.5f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "a", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fa));
    put(t, sd, "b", tensor_of(t, CKPT_DTYPE_BFLOAT16, 1, s3, fb));
    put(t, sd, "x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, fx));
    ckpt_file *f = save_open(t, sd, "check.pth");
    ckpt_tree_free(t);
    ckpt_error err;
    ckpt_load_report rep = {.struct_size = sizeof(rep)};

    /* a description only: no memory */
    ckpt_model *d = new_model("Net");
    add(d, "a", CKPT_DTYPE_FLOAT32, 1, s2, NULL, CKPT_PARAM_NO_DATA);
    add(d, "b", CKPT_DTYPE_FLOAT32, 1, s3, NULL, CKPT_PARAM_NO_DATA);
    add(d, "c", CKPT_DTYPE_FLOAT32, 1, s4, NULL, CKPT_PARAM_NO_DATA);
    for (size_t i = 0; i < 3; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_model_param(d, i, &info));
        assert_null(info.data);
        assert_null(ckpt_model_data(d, i));
        assert_false(info.loaded);
    }
    assert_int_equal(info_of(d, "c").numel, 4);
    assert_int_equal(info_of(d, "c").nbytes, 16);

    /* checked, non-strict: what a load would do */
    ckpt_load_options o = load_options(CKPT_LOAD_CHECK_ONLY | CKPT_LOAD_NON_STRICT);
    memset(&rep, 0xab, sizeof(rep));
    rep.struct_size = sizeof(rep);
    load_ok(d, f, &o, &rep);
    assert_int_equal(rep.loaded, 2);
    assert_int_equal(rep.converted, 1);
    assert_int_equal(rep.zero_copy, 0);
    assert_int_equal(rep.placed, 0);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "c");
    assert_int_equal(rep.unexpected_count, 1);
    assert_string_equal(rep.unexpected[0], "x");
    assert_int_equal(rep.error_count, 0);
    assert_null(rep.message);
    for (size_t i = 0; i < 3; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_model_param(d, i, &info));
        assert_null(info.data);
        assert_false(info.loaded || info.borrowed || info.placed);
    }
    /* checked, strict: the message a load would give */
    o.flags = CKPT_LOAD_CHECK_ONLY;
    assert_int_equal(ckpt_model_load(d, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_string_equal(rep.message, "Error(s) in loading state_dict for Net:\n"
                                     "\tMissing key(s) in state_dict: \"c\". \n"
                                     "\tUnexpected key(s) in state_dict: \"x\". ");
    assert_int_equal(rep.loaded, 0);

    /* never loaded, never saved */
    unsigned refused[4] = {0, CKPT_LOAD_NON_STRICT, CKPT_LOAD_ZERO_COPY,
                           CKPT_LOAD_NON_STRICT | CKPT_LOAD_ZERO_COPY};
    for (int k = 0; k < 4; k++) {
        o = load_options(refused[k]);
        memset(&err, 0, sizeof(err));
        assert_int_equal(ckpt_model_load(d, f, &o, &rep, &err), CKPT_ERR_INVALID_ARG);
        assert_int_equal(err.status, CKPT_ERR_INVALID_ARG);
        assert_int_equal(rep.loaded, 0);
        assert_null(ckpt_model_data(d, 0));
    }
    t = ckpt_tree_new();
    assert_null(ckpt_model_state_dict(d, t));
    assert_int_not_equal(ckpt_tree_status(t, &err), CKPT_OK);
    assert_int_not_equal(err.status, CKPT_OK);
    ckpt_tree_free(t);
    ckpt_model_free(d);

    /* a size mismatch is found without the bytes */
    d = new_model("Net");
    add(d, "a", CKPT_DTYPE_FLOAT32, 1, s5, NULL, CKPT_PARAM_NO_DATA);
    add(d, "b", CKPT_DTYPE_FLOAT32, 1, s3, NULL, CKPT_PARAM_NO_DATA);
    o = load_options(CKPT_LOAD_CHECK_ONLY | CKPT_LOAD_NON_STRICT);
    assert_int_equal(ckpt_model_load(d, f, &o, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.error_count, 1);
    assert_string_equal(rep.errors[0], "size mismatch for a: copying a param with shape "
                                       "torch.Size([2]) from checkpoint, the shape in current "
                                       "model is torch.Size([5]).");
    ckpt_model_free(d);

    /* a model with memory: checked, nothing written, nothing placed or borrowed */
    float a[2], b[3], c[4];
    fill_sentinel(a, 2);
    fill_sentinel(b, 3);
    fill_sentinel(c, 4);
    ckpt_model *m = new_model("Net");
    add(m, "a", CKPT_DTYPE_FLOAT32, 1, s2, a, 0);
    add(m, "b", CKPT_DTYPE_FLOAT32, 1, s3, b, 0);
    add(m, "c", CKPT_DTYPE_FLOAT32, 1, s4, c, 0);
    add(m, "own", CKPT_DTYPE_FLOAT32, 1, s1, NULL, 0);
    int calls = 0;
    o = load_options(CKPT_LOAD_CHECK_ONLY | CKPT_LOAD_NON_STRICT | CKPT_LOAD_ZERO_COPY);
    o.place = never_place;
    o.place_user = &calls;
    load_ok(m, f, &o, &rep);
    assert_int_equal(calls, 0);
    assert_int_equal(rep.loaded, 2);
    assert_int_equal(rep.converted, 1);
    assert_int_equal(rep.zero_copy, 0);
    assert_int_equal(rep.placed, 0);
    assert_int_equal(rep.missing_count, 2);
    assert_true(all_sentinel(a, 2) && all_sentinel(b, 3) && all_sentinel(c, 4));
    assert_ptr_equal(ckpt_model_data(m, 0), a);
    for (size_t i = 0; i < 4; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_model_param(m, i, &info));
        assert_false(info.loaded || info.borrowed || info.placed);
        assert_ptr_equal(info.data, info.host);
    }
    /* then a real load does write */
    o = load_options(CKPT_LOAD_NON_STRICT);
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 2);
    assert_memory_equal(a, fa, sizeof(fa));
    assert_true(b[2] == 2.5f && all_sentinel(c, 4));
    ckpt_model_free(m);
    ckpt_close(f);
}

/* A check-only load reads no tensor byte: a file whose storage cannot be
 * read checks fine, and a real load fails. */
static void test_check_only_reads_nothing(void **state)
{
    (void)state;
    static float st[12];
    static const int64_t s43[2] = {4, 3}, stride[2] = {3, 1};
    for (int i = 0; i < 12; i++)
        st[i] = (float)i;
    /* storage "0" (12 floats) deflated, its deflate data invalid: found
     * only when the bytes are read */
    static const uint8_t bad_deflate[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    buf p = pk_one_tensor("w", "FloatStorage", 12, 0, s43, stride, 2);
    static const char *const names[3] = {"archive/data.pkl", "archive/data/0", "archive/version"};
    const uint8_t *data[3] = {p.p, bad_deflate, (const uint8_t *)"3\n"};
    size_t sizes[3] = {p.len, sizeof(bad_deflate), 2};
    static const unsigned methods[3] = {0, 8, 0};
    const size_t usizes[3] = {p.len, sizeof(st), 2};
    buf z = zip_records(names, data, sizes, methods, usizes, 3);
    b_free(&p);
    ckpt_file *f = NULL;
    ckpt_error err;
    ckpt_status ost = ckpt_open_memory(z.p, z.len, NULL, &f, &err);
    if (ost != CKPT_OK)
        print_err("short storage", &err);
    assert_int_equal(ost, CKPT_OK);

    float w[12];
    fill_sentinel(w, 12);
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 2, s43, w, 0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    ckpt_load_options o = load_options(CKPT_LOAD_CHECK_ONLY);
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 1);
    assert_true(all_sentinel(w, 12));
    o = load_options(0);
    assert_int_equal(ckpt_model_load(m, f, &o, &rep, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "deflate"));
    assert_true(all_sentinel(w, 12));
    ckpt_model_free(m);

    ckpt_model *d = new_model("Net");
    add(d, "w", CKPT_DTYPE_FLOAT32, 2, s43, NULL, CKPT_PARAM_NO_DATA);
    o = load_options(CKPT_LOAD_CHECK_ONLY);
    load_ok(d, f, &o, &rep);
    assert_int_equal(rep.loaded, 1);
    ckpt_model_free(d);
    ckpt_close(f);
    b_free(&z);
}

/* ckpt_load_options.key: at each level the longest key the path starts
 * with, so keys may hold dots. */
static void test_key_path_with_dots(void **state)
{
    (void)state;
    static const float mv[2] = {3, 3}, ema[2] = {5, 5}, ab[2] = {6, 6}, deep[2] = {7, 7};
    float got[2];
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    put(t, root, "model", one_weight(t, mv));
    put(t, root, "model.ema", one_weight(t, ema));
    ckpt_value *a = ckpt_new_dict(t);
    put(t, a, "b", one_weight(t, ab));
    ckpt_value *x = ckpt_new_dict(t);
    put(t, x, "layer.0", one_weight(t, deep));
    put(t, a, "x", x);
    put(t, root, "a", a);
    ckpt_file *f = save_open(t, root, "dotted.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, "model.ema", got), CKPT_OK);
    assert_memory_equal(got, ema, 8);
    assert_int_equal(load_w(f, "model", got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    assert_int_equal(load_w(f, NULL, got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    assert_int_equal(load_w(f, "a.b", got), CKPT_OK);
    assert_memory_equal(got, ab, 8);
    assert_int_equal(load_w(f, "a.x.layer.0", got), CKPT_OK);
    assert_memory_equal(got, deep, 8);
    assert_int_not_equal(load_w(f, "model.emb", got), CKPT_OK);
    assert_int_not_equal(load_w(f, "a.x.layer", got), CKPT_OK);
    assert_int_not_equal(load_w(f, "a.c", got), CKPT_OK);
    ckpt_close(f);

    /* the other order in the file: still the longest */
    t = ckpt_tree_new();
    root = ckpt_new_dict(t);
    put(t, root, "model.ema", one_weight(t, ema));
    put(t, root, "model", one_weight(t, mv));
    f = save_open(t, root, "dotted2.pth");
    ckpt_tree_free(t);
    assert_int_equal(load_w(f, "model.ema", got), CKPT_OK);
    assert_memory_equal(got, ema, 8);
    assert_int_equal(load_w(f, "model", got), CKPT_OK);
    assert_memory_equal(got, mv, 8);
    ckpt_close(f);
}

/* 20,000 parameters, each in its own module: the walk over the modules is
 * linear, so this takes milliseconds, not minutes. */
static void test_many_modules(void **state)
{
    (void)state;
    enum { N = 20000 };
    static const int64_t s1[1] = {1};
    float *vals = malloc(N * sizeof(float));
    assert_non_null(vals);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    char name[32];
    for (int i = 0; i < N; i++) {
        vals[i] = (float)i;
        snprintf(name, sizeof(name), "m%d.w", i);
        put(t, sd, name, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, &vals[i]));
    }
    ckpt_file *f = save_open(t, sd, "many.pth");
    ckpt_tree_free(t);
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    for (int i = 0; i < N; i++) {
        if (i == 7)
            continue;
        snprintf(name, sizeof(name), "m%d.w", i);
        put(t, sd, name, tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, &vals[i]));
    }
    put(t, sd, "m5.x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, &vals[0]));
    put(t, sd, "zz", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s1, &vals[0]));
    ckpt_file *f2 = save_open(t, sd, "many2.pth");
    ckpt_tree_free(t);

    ckpt_model *m = new_model("Big");
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "m%d.w", i);
        add(m, name, CKPT_DTYPE_FLOAT32, 1, s1, NULL, 0);
    }
    ckpt_load_options o = load_options(0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, N);
    assert_int_equal(rep.missing_count + rep.unexpected_count + rep.error_count, 0);
    for (int i = 0; i < N; i += 997)
        assert_true(*(const float *)ckpt_model_data(m, (size_t)i) == (float)i);
    assert_true(*(const float *)ckpt_model_data(m, N - 1) == (float)(N - 1));

    /* torch's order: the root's unexpected key before m5's */
    o = load_options(CKPT_LOAD_NON_STRICT);
    load_ok(m, f2, &o, &rep);
    assert_int_equal(rep.loaded, N - 1);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "m7.w");
    assert_int_equal(rep.unexpected_count, 2);
    assert_string_equal(rep.unexpected[0], "zz");
    assert_string_equal(rep.unexpected[1], "m5.x");
    assert_false(info_of(m, "m7.w").loaded);
    assert_true(info_of(m, "m8.w").loaded);
    ckpt_model_free(m);
    ckpt_close(f2);
    ckpt_close(f);
    free(vals);
}

/* A parameter literally named _extra_state loads from that key. (Whether
 * the key is also listed as unexpected, as torch 1.13 lists it for a module
 * without set_extra_state, is left to the interop test against torch.) */
static void test_extra_state_parameter(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2};
    static const float fe[2] = {4.0f, 5.0f}, fw[2] = {6.0f, 7.0f};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "_extra_state", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fe));
    put(t, sd, "net._extra_state", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fw));
    ckpt_file *f = save_open(t, sd, "extra_param.pth");
    ckpt_tree_free(t);
    float e[2], w[2];
    fill_sentinel(e, 2);
    fill_sentinel(w, 2);
    ckpt_model *m = new_model("Net");
    add(m, "_extra_state", CKPT_DTYPE_FLOAT32, 1, s2, e, 0);
    add(m, "net._extra_state", CKPT_DTYPE_FLOAT32, 1, s2, w, 0);
    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    assert_int_equal(rep.loaded, 2);
    assert_int_equal(rep.missing_count, 0);
    assert_int_equal(rep.error_count, 0);
    /* ... and listed as unexpected all the same, as PyTorch lists them (a
     * module without set_extra_state) */
    assert_int_equal(rep.unexpected_count, 2);
    assert_string_equal(rep.unexpected[0], "_extra_state");
    assert_string_equal(rep.unexpected[1], "net._extra_state");
    assert_memory_equal(e, fe, sizeof(fe));
    assert_memory_equal(w, fw, sizeof(fw));
    assert_true(info_of(m, "_extra_state").loaded && info_of(m, "net._extra_state").loaded);
    /* so a strict load fails */
    ckpt_error err;
    assert_int_equal(ckpt_model_load(m, f, NULL, &rep, &err), CKPT_ERR_MISMATCH);
    ckpt_model_free(m);
    ckpt_close(f);
}

/* Declared modules, extra state, a state dict handed over as a value, and
 * a key with a NUL that never names a parameter. */
static void test_modules_extra_state_and_values(void **state)
{
    (void)state;
    static const int64_t s2[1] = {2};
    static const float a[2] = {1, 2}, b[2] = {3, 4};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "0.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, a));
    put(t, sd, "1.x", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, b));       /* under the ReLU */
    put(t, sd, "0.y", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, b));
    put(t, sd, "1", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, b));         /* names the ReLU */
    put(t, sd, "2.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, b));
    put(t, sd, "2._extra_state", ckpt_new_str(t, "anything", 8)); /* any value */
    ckpt_value *list = ckpt_new_list(t);
    ckpt_append(t, list, sd);
    put(t, root, "models", list);
    ckpt_file *f = save_open(t, root, "modules.pth");
    ckpt_tree_free(t);

    float w0[2], w2[2];
    ckpt_model *m = new_model("Sequential");
    add(m, "0.weight", CKPT_DTYPE_FLOAT32, 1, s2, w0, 0);
    ckpt_error err;
    assert_int_equal(ckpt_model_add_module(m, "1", &err), CKPT_OK);
    add(m, "2.weight", CKPT_DTYPE_FLOAT32, 1, s2, w2, 0);
    size_t xi = add(m, "2._extra_state", CKPT_DTYPE_FLOAT32, 0, NULL, NULL, CKPT_PARAM_EXTRA_STATE);
    /* the state dict as a value the caller found (a list item: no key path) */
    ckpt_load_options o = load_options(CKPT_LOAD_NON_STRICT);
    o.state_dict = ckpt_value_item(ckpt_value_get(ckpt_file_root(f), "models"), 0);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &o, &rep);
    /* PyTorch's order: module 0 ("0.y"), then module 1 ("1.x"); "1" names
     * the ReLU, and the extra state is accepted */
    assert_int_equal(rep.unexpected_count, 2);
    assert_string_equal(rep.unexpected[0], "0.y");
    assert_string_equal(rep.unexpected[1], "1.x");
    assert_int_equal(rep.missing_count, 0);
    assert_int_equal(rep.loaded, 2);
    assert_memory_equal(w0, a, sizeof(a));
    assert_memory_equal(w2, b, sizeof(b));
    ckpt_param_info info = {.struct_size = sizeof(info)};
    assert_true(ckpt_model_param(m, xi, &info));
    assert_true(info.is_extra_state && !info.loaded);
    /* the state dict to save leaves the extra state to the caller */
    t = ckpt_tree_new();
    ckpt_value *out = ckpt_model_state_dict(m, t);
    assert_non_null(out);
    assert_int_equal(ckpt_value_len(out), 2);
    ckpt_tree_free(t);
    /* without the ReLU declared, "1" and "1.x" are unexpected at the root */
    ckpt_model *m2 = new_model("Sequential");
    add(m2, "0.weight", CKPT_DTYPE_FLOAT32, 1, s2, NULL, 0);
    add(m2, "2.weight", CKPT_DTYPE_FLOAT32, 1, s2, NULL, 0);
    load_ok(m2, f, &o, &rep);
    assert_int_equal(rep.unexpected_count, 4);
    assert_string_equal(rep.unexpected[0], "1.x");
    assert_string_equal(rep.unexpected[1], "1");
    ckpt_model_free(m2);
    /* extra state missing: reported, as PyTorch reports it */
    t = ckpt_tree_new();
    sd = ckpt_new_ordered_dict(t);
    put(t, sd, "0.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, a));
    put(t, sd, "2.weight", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, b));
    ckpt_file *g = save_open(t, sd, "no_extra.pth");
    ckpt_tree_free(t);
    assert_int_equal(ckpt_model_load(m, g, NULL, &rep, &err), CKPT_ERR_MISMATCH);
    assert_int_equal(rep.missing_count, 1);
    assert_string_equal(rep.missing[0], "2._extra_state");
    /* a bad extra-state name */
    assert_int_equal(ckpt_model_add(m, "2.state", CKPT_DTYPE_FLOAT32, 0, NULL, NULL,
                                    CKPT_PARAM_EXTRA_STATE, NULL, &err),
                     CKPT_ERR_INVALID_ARG);
    ckpt_close(g);
    ckpt_model_free(m);
    ckpt_close(f);
}

/* ---- AdamW regressions ------------------------------------------------------------------ */

/* The optimizer keeps its own copy of the shapes: parameters added to the
 * model later (its array reallocated) change nothing. */
static void test_adamw_after_model_grows(void **state)
{
    (void)state;
    static const int64_t s23[2] = {2, 3}, s4[1] = {4}, s1[1] = {1};
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 2, s23, NULL, 0);
    add(m, "v", CKPT_DTYPE_FLOAT32, 1, s4, NULL, 0);
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(m, &hp);
    char name[32];
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "late.%d.weight", i);
        add(m, name, CKPT_DTYPE_FLOAT32, 1, s1, NULL, 0);
    }
    float gw[6], gv[4];
    fill_seq(gw, 6, 0.5f);
    fill_seq(gv, 4, -0.5f);
    const float *gp[2] = {gw, gv};
    ckpt_error err;
    assert_int_equal(ckpt_adamw_step(o, gp, &err), CKPT_OK);

    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    put(t, root, "optimizer", ckpt_adamw_state_dict(o, t));
    ckpt_file *f = save_open(t, root, "grown.pth");
    ckpt_tree_free(t);
    const ckpt_value *sd = ckpt_value_get(ckpt_file_root(f), "optimizer");
    assert_non_null(sd);
    assert_int_equal(ckpt_value_len(ckpt_value_get(sd, "state")), 2);
    float ea[6];
    tensor_floats(f, ckpt_value_get(state_entry(sd, 0), "exp_avg"), ea, 6, s23, 2);
    assert_true(fabs(ea[5] - 0.1 * gw[5]) <= 1e-7);
    tensor_floats(f, ckpt_value_get(state_entry(sd, 0), "exp_avg_sq"), ea, 6, s23, 2);
    tensor_floats(f, ckpt_value_get(state_entry(sd, 1), "exp_avg"), ea, 4, s4, 1);
    tensor_floats(f, ckpt_value_get(state_entry(sd, 1), "exp_avg_sq"), ea, 4, s4, 1);
    assert_true(fabs(ea[0] - 0.001 * gv[0] * gv[0]) <= 1e-9);
    /* and the shapes check a load against */
    ckpt_status st = ckpt_adamw_load(o, f, sd, &err);
    if (st != CKPT_OK)
        print_err("adamw_load", &err);
    assert_int_equal(st, CKPT_OK);
    assert_int_equal(ckpt_adamw_param_step(o, 0), 1);
    ckpt_close(f);
    ckpt_adamw_free(o);
    ckpt_model_free(m);
}

/* A step refused (a parameter borrowed from a file) leaves no state behind:
 * not for the refused parameter, not for the others. */
static void test_adamw_refused_step_no_state(void **state)
{
    (void)state;
    static const int64_t s4[1] = {4}, s2[1] = {2};
    float fw[4], fv[2];
    fill_seq(fw, 4, 1.0f);
    fill_seq(fv, 2, 3.0f);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    put(t, sd, "w", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s4, fw));
    put(t, sd, "v", tensor_of(t, CKPT_DTYPE_FLOAT32, 1, s2, fv));
    ckpt_file *f = save_open(t, sd, "refused.pth");
    ckpt_tree_free(t);

    float w[4];
    ckpt_model *m = new_model("Net");
    add(m, "w", CKPT_DTYPE_FLOAT32, 1, s4, w, 0);  /* the caller's memory: copied */
    add(m, "v", CKPT_DTYPE_FLOAT32, 1, s2, NULL, 0); /* the model's: borrowed */
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(m, &hp);
    ckpt_load_options zc = load_options(CKPT_LOAD_ZERO_COPY);
    ckpt_load_report rep = {.struct_size = sizeof(rep)};
    load_ok(m, f, &zc, &rep);
    assert_false(info_of(m, "w").borrowed);
    assert_true(info_of(m, "v").borrowed);

    float gw[4] = {1, 1, 1, 1}, gv[2] = {1, 1};
    const float *gp[2] = {gw, gv};
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ckpt_adamw_step(o, gp, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "\"v\""));
    assert_memory_equal(w, fw, sizeof(fw));
    assert_int_equal(ckpt_adamw_param_step(o, 0), 0);
    assert_int_equal(ckpt_adamw_param_step(o, 1), 0);
    t = ckpt_tree_new();
    const ckpt_value *osd = ckpt_adamw_state_dict(o, t);
    assert_non_null(osd);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    const ckpt_value *st = ckpt_value_get(osd, "state");
    assert_non_null(st);
    assert_int_equal(ckpt_value_len(st), 0);
    const ckpt_value *groups = ckpt_value_get(osd, "param_groups");
    assert_int_equal(ckpt_value_len(ckpt_value_get(ckpt_value_item(groups, 0), "params")), 2);
    ckpt_tree_free(t);

    /* with v copied into its own memory, the same step runs: state for both */
    ckpt_load_options plain = load_options(0);
    load_ok(m, f, &plain, &rep);
    assert_int_equal(ckpt_adamw_step(o, gp, &err), CKPT_OK);
    assert_int_equal(ckpt_adamw_param_step(o, 0), 1);
    assert_int_equal(ckpt_adamw_param_step(o, 1), 1);
    t = ckpt_tree_new();
    osd = ckpt_adamw_state_dict(o, t);
    assert_int_equal(ckpt_value_len(ckpt_value_get(osd, "state")), 2);
    ckpt_tree_free(t);
    ckpt_adamw_free(o);
    ckpt_model_free(m);
    ckpt_close(f);
}

/* set_lr refuses a negative or non-finite rate and keeps the old one. */
static void test_adamw_set_lr_refusals(void **state)
{
    (void)state;
    tiny x;
    tiny_init(&x);
    ckpt_adamw_options hp = test_hp();
    ckpt_adamw *o = adamw(x.m, &hp);
    ckpt_adamw_options got = {.struct_size = sizeof(got)};
    const double bad[5] = {-1.0, NAN, INFINITY, -INFINITY, -1e-300};
    for (int k = 0; k < 5; k++) {
        assert_int_equal(ckpt_adamw_set_lr(o, bad[k]), CKPT_ERR_INVALID_ARG);
        ckpt_adamw_get_options(o, &got);
        assert_true(got.lr == 0.01);
    }
    assert_int_equal(ckpt_adamw_set_lr(NULL, 0.5), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_adamw_set_lr(o, 0.0), CKPT_OK);
    ckpt_adamw_get_options(o, &got);
    assert_true(got.lr == 0.0);
    assert_int_equal(ckpt_adamw_set_lr(o, 0.5), CKPT_OK);
    ckpt_adamw_get_options(o, &got);
    assert_true(got.lr == 0.5);
    /* a step after a refusal uses the last good rate */
    step(o, 1, 0);
    float g[NP][6];
    grads_for(1, g);
    ref_param r;
    memset(&r, 0, sizeof(r));
    tiny init;
    tiny_init(&init);
    for (int i = 0; i < 6; i++)
        r.p[i] = init.w[i];
    hp.lr = 0.5;
    ref_step(&r, g[0], 6, &hp);
    for (int i = 0; i < 6; i++)
        assert_true(fabs((double)x.w[i] - r.p[i]) <= 1e-5);
    ckpt_model_free(init.m);
    ckpt_adamw_free(o);
    ckpt_model_free(x.m);
}

int main(void)
{
    tmp_dir_make("ckpt_test_model.");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strict_caller_memory),
        cmocka_unit_test(test_model_allocated_memory),
        cmocka_unit_test(test_zero_copy),
        cmocka_unit_test(test_strict_failures),
        cmocka_unit_test(test_non_strict),
        cmocka_unit_test(test_module_walk_semantics),
        cmocka_unit_test(test_key_remap),
        cmocka_unit_test(test_key_selection),
        cmocka_unit_test(test_dtype_conversion),
        cmocka_unit_test(test_scalar_param),
        cmocka_unit_test(test_locations_and_placement),
        cmocka_unit_test(test_non_tensor_value),
        cmocka_unit_test(test_state_dict_round_trip),
        cmocka_unit_test(test_adamw_reference),
        cmocka_unit_test(test_adamw_state_dict),
        cmocka_unit_test(test_adamw_load_refusals),
        cmocka_unit_test(test_adamw_refuses_non_float32),
        cmocka_unit_test(test_model_add_refusals),
        cmocka_unit_test(test_hostile_views),
        cmocka_unit_test(test_hostile_keys),
        cmocka_unit_test(test_safetensors_source),
        cmocka_unit_test(test_later_load_flags),
        cmocka_unit_test(test_nul_in_key),
        cmocka_unit_test(test_long_non_string_keys),
        cmocka_unit_test(test_check_only),
        cmocka_unit_test(test_check_only_reads_nothing),
        cmocka_unit_test(test_key_path_with_dots),
        cmocka_unit_test(test_many_modules),
        cmocka_unit_test(test_extra_state_parameter),
        cmocka_unit_test(test_modules_extra_state_and_values),
        cmocka_unit_test(test_adamw_after_model_grows),
        cmocka_unit_test(test_adamw_refused_step_no_state),
        cmocka_unit_test(test_adamw_set_lr_refusals),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    remove_tree(tmp_dir());
    return rc;
}

/*
 * test_tree.c - value trees for writing (src/core/tree.c), streamed tensor bytes
 * (src/core/stream.c), dtype conversion (src/base/cast.c) and crash-safe output files
 * (src/base/outfile.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- dtype conversion ------------------------------------------------------ */

static float f32_of(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint16_t to_f16(float f)
{
    uint16_t h;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT16, &h, CKPT_DTYPE_FLOAT32, &f, 1), CKPT_OK);
    return h;
}

static uint16_t to_bf16(float f)
{
    uint16_t h;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_BFLOAT16, &h, CKPT_DTYPE_FLOAT32, &f, 1), CKPT_OK);
    return h;
}

/* Every float16 and bfloat16 value goes to float32 and back unchanged
 * (NaNs stay NaN). */
static void test_half_round_trip_exhaustive(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        ckpt_dtype d = kind ? CKPT_DTYPE_BFLOAT16 : CKPT_DTYPE_FLOAT16;
        for (uint32_t i = 0; i < 65536; i++) {
            uint16_t h = (uint16_t)i, back;
            float f;
            double g;
            assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT32, &f, d, &h, 1), CKPT_OK);
            ckpt_dtype dk = (ckpt_dtype)(CKPT_DTYPE_FLOAT16 + kind);
            assert_int_equal(ckpt_convert_dtype(dk, &back, CKPT_DTYPE_FLOAT32, &f, 1),
                             CKPT_OK);
            if (isnan(f)) {
                uint16_t exp_mask = kind ? 0x7f80 : 0x7c00;
                assert_true((back & exp_mask) == exp_mask && (back & ~exp_mask & 0x7fff));
                continue;
            }
            assert_int_equal(back, h);
            /* through float64 too */
            assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT64, &g, d, &h, 1), CKPT_OK);
            assert_true(g == (double)f);
            assert_int_equal(ckpt_convert_dtype(d, &back, CKPT_DTYPE_FLOAT64, &g, 1), CKPT_OK);
            assert_int_equal(back, h);
        }
    }
}

static void test_half_rounding(void **state)
{
    (void)state;
    assert_int_equal(to_f16(65504.0f), 0x7bff);
    assert_int_equal(to_f16(65519.0f), 0x7bff);
    assert_int_equal(to_f16(65520.0f), 0x7c00);      /* tie to even: up to inf */
    assert_int_equal(to_f16(-INFINITY), 0xfc00);
    assert_int_equal(to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie, even stays */
    assert_int_equal(to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie, odd rounds up */
    assert_int_equal(to_f16(0x1p-24f), 0x0001);      /* smallest subnormal */
    assert_int_equal(to_f16(0x1p-25f), 0x0000);      /* tie to even: zero */
    assert_int_equal(to_f16(0x1.8p-25f), 0x0001);
    assert_int_equal(to_f16(0x1.8p-24f), 0x0002);    /* 1.5 ulp: tie to even 2 */
    assert_int_equal(to_f16(0x1p-14f), 0x0400);      /* smallest normal */
    assert_int_equal(to_f16(0x1.ffcp-15f), 0x0400);  /* subnormal rounding up to normal */
    assert_int_equal(to_f16(-0.0f), 0x8000);
    assert_int_equal(to_f16(f32_of(0x7fc00001u)) & 0x7e00, 0x7e00);
    assert_int_equal(to_bf16(1.0f), 0x3f80);
    assert_int_equal(to_bf16(f32_of(0x3f808000u)), 0x3f80); /* tie, even stays */
    assert_int_equal(to_bf16(f32_of(0x3f818000u)), 0x3f82); /* tie, odd rounds up */
    assert_int_equal(to_bf16(f32_of(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    assert_int_equal(to_bf16(f32_of(0x00000001u)), 0x0000);
    assert_int_equal(to_bf16(f32_of(0x00008000u)), 0x0000); /* tie to even */
    assert_int_equal(to_bf16(f32_of(0x00018000u)), 0x0002);
    assert_true((to_bf16(NAN) & 0x7fc0) == 0x7fc0);

    /* float64 -> float16 rounds through float32, as torch does: a double
     * just above a float16 tie becomes the tie, which goes to even. */
    double d = 1.0 + 0x1p-11 + 0x1p-40;
    uint16_t h;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT16, &h, CKPT_DTYPE_FLOAT64, &d, 1), CKPT_OK);
    assert_int_equal(h, 0x3c00);
    d = 1.0 + 0x1p-8 + 0x1p-40; /* bfloat16 tie + a little */
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_BFLOAT16, &h, CKPT_DTYPE_FLOAT64, &d, 1), CKPT_OK);
    assert_int_equal(h, 0x3f80);
    d = 1e300;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT16, &h, CKPT_DTYPE_FLOAT64, &d, 1), CKPT_OK);
    assert_int_equal(h, 0x7c00);
    float f;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT32, &f, CKPT_DTYPE_FLOAT64, &d, 1), CKPT_OK);
    assert_true(isinf(f));

    int32_t i32 = 1;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT32, &f, CKPT_DTYPE_INT32, &i32, 1), CKPT_ERR_TYPE);
    int32_t o32;
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_INT32, &o32, CKPT_DTYPE_INT32, &i32, 1), CKPT_OK);
    assert_int_equal(o32, 1);
}

/* ---- trees ------------------------------------------------------------------- */

static void test_tree_values(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    assert_non_null(t);
    ckpt_value *d = ckpt_new_ordered_dict(t);
    assert_int_equal(ckpt_dict_put_str(t, d, "epoch", ckpt_new_int(t, 3)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, d, "loss", ckpt_new_float(t, 0.25)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, d, "epoch", ckpt_new_int(t, 4)), CKPT_OK);
    ckpt_value *l = ckpt_new_list(t);
    assert_int_equal(ckpt_append(t, l, ckpt_new_str(t, "a", SIZE_MAX)), CKPT_OK);
    assert_int_equal(ckpt_append(t, l, ckpt_new_bytes(t, "\0\1", 2)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, d, "l", l), CKPT_OK);
    int64_t dims[2] = {2, 3};
    assert_int_equal(ckpt_dict_put_str(t, d, "size", ckpt_new_size(t, 2, dims)), CKPT_OK);
    assert_int_equal(ckpt_value_len(d), 4);
    assert_int_equal(ckpt_value_int(ckpt_value_get(d, "epoch")), 4); /* replaced in place */
    assert_string_equal(ckpt_value_str(ckpt_value_key(d, 0), NULL), "epoch");
    assert_int_equal(ckpt_value_kind(ckpt_value_get(d, "size")), CKPT_KIND_SIZE);
    assert_int_equal(ckpt_value_int(ckpt_value_item(ckpt_value_get(d, "size"), 1)), 3);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);

    /* errors are kept: the first one wins, NULL items are refused */
    assert_null(ckpt_new_str(t, "\xff", 1));
    assert_int_equal(ckpt_append(t, l, NULL), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_append(t, d, ckpt_new_none(t)), CKPT_ERR_TYPE);
    ckpt_error err;
    assert_int_equal(ckpt_tree_status(t, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "UTF-8"));
    ckpt_tree_free(t);
}

static void test_tree_tensors(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    float data[12];
    for (int i = 0; i < 12; i++)
        data[i] = (float)i;
    int64_t shape[2] = {3, 4};
    ckpt_tensor_desc desc;
    ckpt_tensor_desc_init(&desc);
    desc.ndim = 2;
    desc.shape = shape;
    desc.data = data;
    ckpt_value *a = ckpt_new_tensor(t, &desc);
    assert_non_null(a);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(ckpt_value_tensor(a), &ti);
    assert_int_equal(ti.numel, 12);
    assert_int_equal(ti.stride[0], 4);
    assert_int_equal(ti.storage_nbytes, 48);
    assert_string_equal(ti.location, "cpu");

    /* the transpose as a view: strided bytes come out row-major */
    int64_t tshape[2] = {4, 3}, tstride[2] = {1, 4};
    desc.shape = tshape;
    desc.stride = tstride;
    ckpt_value *tr = ckpt_new_view(t, a, &desc);
    assert_non_null(tr);
    const ckpt_tensor *trt = ckpt_value_tensor(tr);
    assert_ptr_equal(trt->storage, ckpt_value_tensor(a)->storage);
    float buf[12];
    const uint8_t *out;
    assert_int_equal(ckpt__tensor_read(trt, 0, 48, (uint8_t *)buf, &out, NULL), CKPT_OK);
    float got[12];
    memcpy(got, out, 48);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++)
            assert_true(got[r * 3 + c] == data[c * 4 + r]);
    /* a middle piece starting inside a row */
    assert_int_equal(ckpt__tensor_read(trt, 4 * 4, 5 * 4, (uint8_t *)buf, &out, NULL), CKPT_OK);
    memcpy(got, out, 20);
    for (int k = 0; k < 5; k++)
        assert_true(got[k] == data[((4 + k) % 3) * 4 + (4 + k) / 3]);
    /* contiguous reads are zero-copy */
    assert_int_equal(ckpt__tensor_read(ckpt_value_tensor(a), 8, 8, (uint8_t *)buf, &out, NULL),
                     CKPT_OK);
    assert_ptr_equal(out, (const uint8_t *)data + 8);
    assert_int_not_equal(ckpt__tensor_read(ckpt_value_tensor(a), 40, 16, (uint8_t *)buf, &out,
                                           NULL), CKPT_OK);

    /* a cast of the view: contiguous bfloat16, produced on read */
    ckpt_value *c = ckpt_new_cast(t, tr, CKPT_DTYPE_BFLOAT16);
    assert_non_null(c);
    ckpt_tensor_get_info(ckpt_value_tensor(c), &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_BFLOAT16);
    assert_true(ti.is_contiguous);
    assert_int_equal(ti.shape[0], 4);
    uint16_t hb[12];
    assert_int_equal(ckpt__tensor_read(ckpt_value_tensor(c), 0, 24, (uint8_t *)hb, &out, NULL),
                     CKPT_OK);
    memcpy(hb, out, 24);
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 3; k++)
            assert_int_equal(hb[r * 3 + k], to_bf16(data[k * 4 + r]));
    int32_t ints[2] = {1, 2};
    desc.dtype = CKPT_DTYPE_INT32;
    desc.ndim = 1;
    desc.shape = shape;
    shape[0] = 2;
    desc.stride = NULL;
    desc.data = ints;
    ckpt_value *iv = ckpt_new_tensor(t, &desc);
    assert_non_null(iv);
    assert_null(ckpt_new_cast(t, iv, CKPT_DTYPE_FLOAT16));
    ckpt_tree_free(t);

    /* views outside their storage are refused */
    t = ckpt_tree_new();
    desc.dtype = CKPT_DTYPE_FLOAT32;
    desc.data = data;
    desc.ndim = 2;
    shape[0] = 3;
    desc.shape = shape;
    desc.storage_nbytes = 40; /* 10 floats: the 3x4 view needs 12 */
    assert_null(ckpt_new_tensor(t, &desc));
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_ERR_INVALID_ARG);
    ckpt_tree_free(t);
    t = ckpt_tree_new();
    desc.storage_nbytes = 0;
    ckpt_value *base = ckpt_new_tensor(t, &desc);
    desc.storage_offset = 1; /* 3x4 from element 1 needs 13 */
    assert_null(ckpt_new_view(t, base, &desc));
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_ERR_FORMAT);
    ckpt_tree_free(t);
}

/* Dict keys read as Python's str() shows them. */
static void test_key_text(void **state)
{
    (void)state;
    static const struct { double d; const char *text; } cases[] = {
        {100.0, "100.0"}, {1e16, "1e+16"}, {1e15, "1000000000000000.0"}, {1.5e-5, "1.5e-05"},
        {0.0001, "0.0001"}, {123456789012345678.0, "1.2345678901234568e+17"}, {-2.5, "-2.5"},
        {0.1, "0.1"}, {5e-324, "5e-324"}, {-0.0, "-0.0"}, {1e22, "1e+22"}, {12345.678, "12345.678"},
    };
    ckpt_tree *t = ckpt_tree_new();
    char buf[64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ckpt_value_key_text(ckpt_new_float(t, cases[i].d), buf, sizeof(buf));
        assert_string_equal(buf, cases[i].text);
    }
    ckpt_value *tup = ckpt_new_tuple(t);
    ckpt_append(t, tup, ckpt_new_int(t, 1));
    ckpt_append(t, tup, ckpt_new_str(t, "a", SIZE_MAX));
    ckpt_value_key_text(tup, buf, sizeof(buf));
    assert_string_equal(buf, "(1, 'a')");
    ckpt_value_key_text(ckpt_new_none(t), buf, sizeof(buf));
    assert_string_equal(buf, "None");
    ckpt_value_key_text(ckpt_new_bool(t, true), buf, sizeof(buf));
    assert_string_equal(buf, "True");
    assert_int_equal(ckpt_value_key_text(ckpt_new_str(t, "abcdef", SIZE_MAX), buf, 4), 3);
    assert_string_equal(buf, "abc");
    ckpt_tree_free(t);
}

/* ---- crash-safe output --------------------------------------------------------- */

static char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = malloc(1 << 16);
    *n = fread(buf, 1, 1 << 16, fp);
    fclose(fp);
    return buf;
}

static size_t count_entries(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ls -A %s | wc -l", dir);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (p) {
        if (fscanf(p, "%zu", &n) != 1)
            n = 0;
        pclose(p);
    }
    return n;
}

static void test_outfile(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckpt-test-out-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/a.pth", dir);
    ckpt__out o;
    ckpt_error err;
    assert_int_equal(ckpt__out_open(&o, path, 0, &err), CKPT_OK);
    assert_int_equal(ckpt__out_write(&o, "first", 5, &err), CKPT_OK);
    assert_int_equal(count_entries(dir), 1); /* the temporary only */
    assert_int_equal(ckpt__out_commit(&o, &err), CKPT_OK);
    size_t n;
    char *got = slurp(path, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(got, "first", 5);
    free(got);

    /* an aborted second write leaves the first file and no temporary */
    assert_int_equal(ckpt__out_open(&o, path, CKPT_SAVE_NO_FSYNC, &err), CKPT_OK);
    assert_int_equal(ckpt__out_write(&o, "second!", 7, &err), CKPT_OK);
    ckpt__out_abort(&o);
    ckpt__out_abort(&o);
    got = slurp(path, &n);
    assert_int_equal(n, 5);
    free(got);
    assert_int_equal(count_entries(dir), 1);

    /* a directory that does not exist: a clear I/O error */
    char bad[300];
    snprintf(bad, sizeof(bad), "%s/missing/b.pth", dir);
    assert_int_equal(ckpt__out_open(&o, bad, 0, &err), CKPT_ERR_IO);
    assert_non_null(strstr(err.message, "missing/b.pth"));
    /* a directory as the target */
    assert_int_equal(ckpt__out_open(&o, dir, 0, &err), CKPT_ERR_INVALID_ARG);

    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_round_trip_exhaustive),
        cmocka_unit_test(test_half_rounding),
        cmocka_unit_test(test_tree_values),
        cmocka_unit_test(test_tree_tensors),
        cmocka_unit_test(test_key_text),
        cmocka_unit_test(test_outfile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

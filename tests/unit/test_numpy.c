/*
 * test_numpy.c - numpy's .npy files (src/format/numpy.c) and numpy arrays in
 * pickles (src/pickle/pickle_numpy.c), from bytes built here by the format:
 * header versions, C and Fortran order, byte order, 0-d arrays, and the
 * headers and states that must be refused.
 */
#include "format.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* An .npy file: magic, version, header padded to 64 bytes, data. */
static size_t npy(uint8_t *out, int version, const char *header, const void *data, size_t n)
{
    size_t pre = version == 1 ? 10 : 12, hl = strlen(header);
    size_t total_h = ((pre + hl + 1 + 63) / 64) * 64 - pre;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (uint8_t)version;
    out[7] = 0;
    if (version == 1) {
        out[8] = (uint8_t)total_h;
        out[9] = (uint8_t)(total_h >> 8);
    } else {
        for (int i = 0; i < 4; i++)
            out[8 + i] = (uint8_t)(total_h >> (8 * i));
    }
    memcpy(out + pre, header, hl);
    memset(out + pre + hl, ' ', total_h - hl - 1);
    out[pre + total_h - 1] = '\n';
    if (n)
        memcpy(out + pre + total_h, data, n);
    return pre + total_h + n;
}

static ckpt_file *open_ok(const uint8_t *p, size_t n)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    ckpt_status st = ckpt_open_memory(p, n, NULL, &f, &err);
    if (st != CKPT_OK)
        fail_msg("open: %s", err.message);
    return f;
}

static ckpt_status open_err(const uint8_t *p, size_t n, ckpt_error *err)
{
    ckpt_file *f = NULL;
    ckpt_status st = ckpt_open_memory(p, n, NULL, &f, err);
    ckpt_close(f);
    return st;
}

static void test_npy_c_order_zero_copy(void **state)
{
    (void)state;
    _Alignas(64) uint8_t buf[256];
    int32_t v[6] = {1, -2, 3, -4, 5, -6};
    size_t n = npy(buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", v,
                   sizeof(v));
    ckpt_file *f = open_ok(buf, n);
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    assert_int_equal(fi.format, CKPT_FORMAT_NUMPY_NPY);
    assert_string_equal(ckpt_format_name(fi.format), "numpy-npy");
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "tensor");
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_INT32);
    assert_int_equal(ti.ndim, 2);
    assert_int_equal(ti.stride[0], 3);
    assert_int_equal(ti.stride[1], 1);
    const void *data;
    bool zc;
    ckpt_error err;
    assert_int_equal(ckpt_tensor_data(f, t, &data, &zc, &err), CKPT_OK);
    assert_true(zc);
    assert_ptr_equal(data, buf + n - sizeof(v)); /* in place */
    ckpt_close(f);
}

static void test_npy_fortran_big_endian(void **state)
{
    (void)state;
    uint8_t buf[256];
    /* [[1, 2], [3, 4]] in Fortran order: 1 3 2 4, big-endian doubles */
    double col[4] = {1, 3, 2, 4};
    uint8_t be[32];
    for (int i = 0; i < 4; i++) {
        uint64_t u;
        memcpy(&u, &col[i], 8);
        for (int k = 0; k < 8; k++)
            be[8 * i + k] = (uint8_t)(u >> (56 - 8 * k));
    }
    for (int version = 2; version <= 3; version++) {
        size_t n = npy(buf, version, "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2)}",
                       be, sizeof(be));
        ckpt_file *f = open_ok(buf, n);
        const ckpt_tensor *t = ckpt_file_find_tensor(f, "tensor");
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        assert_int_equal(ti.stride[0], 1);
        assert_int_equal(ti.stride[1], 2);
        double rows[4];
        ckpt_error err;
        assert_int_equal(ckpt_tensor_copy(f, t, rows, sizeof(rows), &err), CKPT_OK);
        for (int i = 0; i < 4; i++)
            assert_true(rows[i] == (double)(i + 1));
        ckpt_close(f);
    }
}

static void test_npy_scalar_and_empty(void **state)
{
    (void)state;
    uint8_t buf[256];
    float x = 2.5f;
    size_t n = npy(buf, 1, "{'shape': (), 'fortran_order': False, 'descr': '<f4'}", &x, 4);
    ckpt_file *f = open_ok(buf, n);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "tensor"), &ti);
    assert_int_equal(ti.ndim, 0);
    assert_int_equal(ti.numel, 1);
    ckpt_close(f);
    n = npy(buf, 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (0, 5), }", NULL, 0);
    f = open_ok(buf, n);
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "tensor"), &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_BOOL);
    assert_int_equal(ti.numel, 0);
    ckpt_close(f);
}

static void test_npy_refused(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        ckpt_status st;
        const char *msg;
    } cases[] = {
        {"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", CKPT_ERR_UNSUPPORTED,
         "numpy object array"},
        {"{'descr': eval('1'), 'fortran_order': False, 'shape': (1,), }", CKPT_ERR_FORMAT,
         "expected a quoted string"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 0}", CKPT_ERR_FORMAT,
         "unknown key"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }", CKPT_ERR_FORMAT,
         "runs past the end"},
        {"{'descr': '<U8', 'fortran_order': False, 'shape': (1,), }", CKPT_ERR_UNSUPPORTED,
         "has no torch dtype"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", CKPT_ERR_FORMAT,
         "bytes after the header dict"},
    };
    uint8_t buf[256];
    uint8_t data[16] = {0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = npy(buf, 1, cases[i].header, data, sizeof(data));
        ckpt_error err;
        assert_int_equal(open_err(buf, n, &err), cases[i].st);
        if (!strstr(err.message, cases[i].msg))
            fail_msg("case %zu: %s", i, err.message);
    }
    ckpt_error err;
    assert_int_equal(open_err((const uint8_t *)"\x93NUMPY\x04\x00\x00\x00", 10, &err),
                     CKPT_ERR_UNSUPPORTED);
}

/* A protocol 2 pickle of one numpy array: _reconstruct, then BUILD with
 * (1, (2, 3), dtype(descr) with byte order, fortran, data). */
static size_t array_pickle(uint8_t *out, const char *descr, char order, bool fortran,
                           const void *data, uint8_t n, bool build_twice)
{
    size_t k = 0;
#define PUT(s) (memcpy(out + k, s, sizeof(s) - 1), k += sizeof(s) - 1)
    PUT("\x80\x02" "cnumpy.core.multiarray\n_reconstruct\n" "cnumpy\nndarray\n"
        "K\x00\x85" "C\x01" "b" "\x87R");
    PUT("(K\x01K\x02K\x03\x86" "cnumpy\ndtype\n");
    out[k++] = 'X';
    uint32_t dl = (uint32_t)strlen(descr);
    memcpy(out + k, &dl, 4);
    k += 4;
    memcpy(out + k, descr, dl);
    k += dl;
    PUT("K\x00K\x01\x87R" "(K\x03X\x01\x00\x00\x00");
    out[k++] = (uint8_t)order;
    PUT("NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    out[k++] = fortran ? 0x88 : 0x89;
    out[k++] = 'C';
    out[k++] = n;
    memcpy(out + k, data, n);
    k += n;
    PUT("tb");
    if (build_twice)
        PUT("(K\x01K\x00\x85N\x89" "C\x00tb");
    PUT(".");
#undef PUT
    return k;
}

static void test_pickled_array_big_endian_fortran(void **state)
{
    (void)state;
    /* [[1, 2, 3], [4, 5, 6]] Fortran: 1 4 2 5 3 6, big-endian floats */
    float col[6] = {1, 4, 2, 5, 3, 6};
    uint8_t be[24];
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &col[i], 4);
        for (int b = 0; b < 4; b++)
            be[4 * i + b] = (uint8_t)(u >> (24 - 8 * b));
    }
    uint8_t buf[512];
    size_t n = array_pickle(buf, "f4", '>', true, be, sizeof(be), false);
    ckpt_file *f = open_ok(buf, n);
    assert_int_equal(ckpt_file_tensor_count(f), 1);
    const ckpt_tensor *t = ckpt_file_tensor(f, 0, NULL);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(ti.shape[0], 2);
    assert_int_equal(ti.shape[1], 3);
    assert_int_equal(ti.stride[0], 1);
    assert_int_equal(ti.stride[1], 2);
    float rows[6];
    ckpt_error err;
    assert_int_equal(ckpt_tensor_copy(f, t, rows, sizeof(rows), &err), CKPT_OK);
    for (int i = 0; i < 6; i++)
        assert_true(rows[i] == (float)(i + 1));
    ckpt_close(f);
}

static void test_pickled_array_refused(void **state)
{
    (void)state;
    uint8_t buf[512], data[48] = {0};
    ckpt_error err;
    size_t n = array_pickle(buf, "O8", '|', false, data, 48, false);
    assert_int_equal(open_err(buf, n, &err), CKPT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "numpy object arrays (dtype 'O8')"));
    n = array_pickle(buf, "f4", '<', false, data, 20, false);
    assert_int_equal(open_err(buf, n, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "20 bytes of data for 6 float32 elements"));
    n = array_pickle(buf, "f4", '<', false, data, 24, true);
    assert_int_equal(open_err(buf, n, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "built already"));
    n = array_pickle(buf, "f4", '|', false, data, 24, false);
    assert_int_equal(open_err(buf, n, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "is not a numpy dtype"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_npy_c_order_zero_copy),
        cmocka_unit_test(test_npy_fortran_big_endian),
        cmocka_unit_test(test_npy_scalar_and_empty),
        cmocka_unit_test(test_npy_refused),
        cmocka_unit_test(test_pickled_array_big_endian_fortran),
        cmocka_unit_test(test_pickled_array_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_api.c - the public API as a C caller sees it: dtypes, errors, limits,
 * values, tensors, strided copies, options. Uses only ckpt.h.
 */
#include <ckpt.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "support.h"

static char *g_path;

static const char *corpus(const char *rel)
{
    const char *root = getenv("CKPT_CORPUS");
    if (!root)
        return NULL;
    free(g_path);
    size_t n = strlen(root) + strlen(rel) + 2;
    g_path = malloc(n);
    snprintf(g_path, n, "%s/%s", root, rel);
    return g_path;
}

static uint8_t *slurp(const char *path, size_t *size)
{
    uint8_t *p = read_file(path, size);
    assert_non_null(p);
    return p;
}

static void test_dtypes(void **state)
{
    (void)state;
    for (int d = 1; d < CKPT_DTYPE_COUNT_; d++) {
        const char *name = ckpt_dtype_name((ckpt_dtype)d);
        assert_int_equal(ckpt_dtype_from_name(name), d);
        char torch_name[64];
        snprintf(torch_name, sizeof(torch_name), "torch.%s", name);
        assert_int_equal(ckpt_dtype_from_name(torch_name), d);
        assert_true(ckpt_dtype_bits((ckpt_dtype)d) > 0);
        const char *st = ckpt_dtype_safetensors_name((ckpt_dtype)d);
        if (st)
            assert_int_equal(ckpt_dtype_from_name(st), d);
    }
    assert_int_equal(ckpt_dtype_size(CKPT_DTYPE_FLOAT32), 4);
    assert_int_equal(ckpt_dtype_size(CKPT_DTYPE_COMPLEX128), 16);
    assert_int_equal(ckpt_dtype_size(CKPT_DTYPE_FLOAT4_E2M1), 0);
    assert_int_equal(ckpt_dtype_bits(CKPT_DTYPE_QUINT4X2), 4);
    assert_int_equal(ckpt_dtype_from_name("half"), CKPT_DTYPE_FLOAT16);
    assert_int_equal(ckpt_dtype_from_name("long"), CKPT_DTYPE_INT64);
    assert_int_equal(ckpt_dtype_from_name("BF16"), CKPT_DTYPE_BFLOAT16);
    assert_int_equal(ckpt_dtype_from_name("nope"), CKPT_DTYPE_INVALID);
    assert_int_equal(ckpt_dtype_from_name(NULL), CKPT_DTYPE_INVALID);
    assert_string_equal(ckpt_dtype_name((ckpt_dtype)999), "invalid");
    assert_true(ckpt_dtype_is_floating(CKPT_DTYPE_BFLOAT16));
    assert_false(ckpt_dtype_is_floating(CKPT_DTYPE_COMPLEX64));
    assert_false(ckpt_dtype_is_floating(CKPT_DTYPE_INT8));
}

static void test_errors_and_names(void **state)
{
    (void)state;
    assert_string_equal(ckpt_status_name(CKPT_OK), "CKPT_OK");
    assert_string_equal(ckpt_status_name(CKPT_ERR_UNSAFE), "CKPT_ERR_UNSAFE");
    assert_string_equal(ckpt_format_name(CKPT_FORMAT_TORCH_LEGACY), "torch-legacy");
    assert_string_equal(ckpt_kind_name(CKPT_KIND_ORDERED_DICT), "ordered_dict");
    assert_string_equal(ckpt_version(), CKPT_VERSION_STRING);
    ckpt_error err = {.status = CKPT_ERR_FORMAT, .offset = 12};
    snprintf(err.record, sizeof(err.record), "archive/data.pkl");
    snprintf(err.message, sizeof(err.message), "bad opcode");
    char msg[256];
    assert_string_equal(ckpt_error_format(&err, msg, sizeof(msg)),
                        "archive/data.pkl at byte 12: bad opcode");
    err.offset = CKPT_NO_OFFSET;
    assert_string_equal(ckpt_error_format(&err, msg, sizeof(msg)), "archive/data.pkl: bad opcode");
}

static void test_null_safety(void **state)
{
    (void)state;
    assert_int_equal(ckpt_value_kind(NULL), CKPT_KIND_NONE);
    assert_int_equal(ckpt_value_len(NULL), 0);
    assert_null(ckpt_value_item(NULL, 0));
    assert_null(ckpt_value_get(NULL, "x"));
    assert_null(ckpt_value_str(NULL, NULL));
    assert_null(ckpt_value_tensor(NULL));
    assert_null(ckpt_file_root(NULL));
    assert_int_equal(ckpt_file_tensor_count(NULL), 0);
    assert_null(ckpt_file_find_tensor(NULL, "x"));
    ckpt_close(NULL);
    ckpt_file *f = (ckpt_file *)1;
    ckpt_error err;
    assert_int_equal(ckpt_open("/nonexistent/file.pt", NULL, &f, &err), CKPT_ERR_IO);
    assert_null(f);
    assert_non_null(strstr(err.message, "No such file"));
}

/* The training-style checkpoint of the corpus: values, tensors, zero-copy. */
static void test_values_and_tensors(void **state)
{
    (void)state;
    const char *path = corpus("benign/burn/src/pytorch/tests/reader/test_data/checkpoint.pt");
    if (!path)
        skip();
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open(path, NULL, &f, &err), CKPT_OK);
    const ckpt_value *root = ckpt_file_root(f);
    assert_int_equal(ckpt_value_kind(root), CKPT_KIND_DICT);
    assert_int_equal(ckpt_value_int(ckpt_value_get(root, "epoch")), 42);
    assert_true(ckpt_value_float(ckpt_value_get(root, "loss")) == 0.123);
    const ckpt_value *sd = ckpt_value_get(root, "model_state_dict");
    assert_int_equal(ckpt_value_len(sd), 4);
    assert_string_equal(ckpt_value_str(ckpt_value_key(sd, 0), NULL), "fc1.weight");

    assert_int_equal(ckpt_file_tensor_count(f), 5);
    const char *name;
    const ckpt_tensor *t = ckpt_file_tensor(f, 0, &name);
    assert_string_equal(name, "model_state_dict.fc1.weight");
    assert_ptr_equal(ckpt_file_find_tensor(f, name), t);
    assert_ptr_equal(ckpt_value_tensor(ckpt_value_dict_value(sd, 0)), t);
    assert_null(ckpt_file_find_tensor(f, "model_state_dict.nope"));

    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(ti.ndim, 2);
    assert_int_equal(ti.shape[0], 10);
    assert_int_equal(ti.shape[1], 5);
    assert_int_equal(ti.numel, 50);
    assert_int_equal(ti.nbytes, 200);
    assert_true(ti.is_contiguous && ti.has_storage);
    assert_string_equal(ti.location, "cpu");
    assert_string_equal(ti.record, "checkpoint/data/0");
    assert_int_equal(ti.storage_file_offset % 64, 0);

    const void *data;
    bool zero_copy = false;
    assert_int_equal(ckpt_tensor_data(f, t, &data, &zero_copy, &err), CKPT_OK);
    assert_true(zero_copy);
    float copy[50];
    assert_int_equal(ckpt_tensor_copy(f, t, copy, sizeof(copy), &err), CKPT_OK);
    assert_memory_equal(copy, data, sizeof(copy));
    assert_int_equal(ckpt_tensor_copy(f, t, copy, sizeof(copy) - 1, &err), CKPT_ERR_INVALID_ARG);

    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    assert_int_equal(fi.format, CKPT_FORMAT_TORCH_ZIP);
    assert_string_equal(fi.prefix, "checkpoint");
    assert_string_equal(fi.byteorder, "little");
    assert_int_equal(fi.data_alignment, 64);
    assert_int_equal(ckpt_file_record_count(f), fi.record_count);
    ckpt_record_info ri = {.struct_size = sizeof(ri)};
    assert_int_equal(ckpt_file_record(f, 0, &ri), CKPT_OK);
    assert_string_equal(ri.name, "checkpoint/data.pkl");
    assert_int_equal(ckpt_file_record(f, fi.record_count, &ri), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_file_verify(f, &err), CKPT_OK);
    ckpt_close(f);
}

/* A strided view with an offset (legacy file): the copy gathers by strides. */
static void test_strided_copy(void **state)
{
    (void)state;
    const char *path = corpus("benign/Pickle.jl/offset-strides.bin");
    if (!path)
        skip();
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open(path, NULL, &f, &err), CKPT_OK);
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "weight1");
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.storage_offset, 137);
    assert_int_equal(ti.stride[0], 48);
    assert_int_equal(ti.stride[1], 3);
    assert_false(ti.is_contiguous);
    const void *data;
    assert_int_equal(ckpt_tensor_data(f, t, &data, NULL, &err), CKPT_OK);
    const float *base = data;
    float out[20];
    assert_int_equal(ckpt_tensor_copy(f, t, out, sizeof(out), &err), CKPT_OK);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 5; j++)
            assert_true(out[i * 5 + j] == base[i * 48 + j * 3]);
    }
    ckpt_close(f);
}

static void test_options_and_limits(void **state)
{
    (void)state;
    const char *path = corpus("benign/burn/src/pytorch/tests/reader/test_data/checkpoint.pt");
    if (!path)
        skip();
    size_t size;
    uint8_t *raw = slurp(path, &size);
    ckpt_file *f;
    ckpt_error err;
    ckpt_open_options opts;
    ckpt_open_options_default(&opts);
    assert_int_equal(opts.struct_size, sizeof(opts));

    /* limits are honoured */
    opts.limits.max_ndim = 1;
    assert_int_equal(ckpt_open_memory(raw, size, &opts, &f, &err), CKPT_ERR_LIMIT);
    ckpt_open_options_default(&opts);
    opts.limits.max_value_bytes = 512;
    assert_int_equal(ckpt_open_memory(raw, size, &opts, &f, &err), CKPT_ERR_LIMIT);

    /* CRC on open: a flipped byte inside a tensor record */
    ckpt_open_options_default(&opts);
    opts.flags = CKPT_OPEN_VERIFY_CRC;
    assert_int_equal(ckpt_open_memory(raw, size, &opts, &f, &err), CKPT_OK);
    const ckpt_tensor *t = ckpt_file_tensor(f, 0, NULL);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    uint64_t at = ti.storage_file_offset;
    ckpt_close(f);
    raw[at] ^= 0x40;
    assert_int_equal(ckpt_open_memory(raw, size, NULL, &f, &err), CKPT_OK); /* torch does not check */
    assert_int_equal(ckpt_file_verify(f, &err), CKPT_ERR_CORRUPT);
    assert_string_equal(err.record, "checkpoint/data/0");
    ckpt_close(f);
    assert_int_equal(ckpt_open_memory(raw, size, &opts, &f, &err), CKPT_ERR_CORRUPT);
    assert_null(f);
    free(raw);

    /* a sharded index needs its directory */
    static const char index[] = "{\"weight_map\": {\"a\": \"x.safetensors\"}}";
    assert_int_equal(ckpt_open_memory(index, sizeof(index) - 1, NULL, &f, &err),
                     CKPT_ERR_UNSUPPORTED);
}

/* safetensors in memory: header order vs offset order, metadata, misaligned copy. */
static void test_safetensors_memory(void **state)
{
    (void)state;
    /* even length: with the 1-byte tensor first, "a" starts at an odd offset */
    static const char header[] =
        "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]},"
        "\"__metadata__\":{\"k\":\"v\"}} ";
    _Static_assert((sizeof(header) - 1) % 2 == 0, "header length must be even");
    _Alignas(16) uint8_t file[8 + sizeof(header) - 1 + 9];
    uint64_t n = sizeof(header) - 1;
    for (int i = 0; i < 8; i++)
        file[i] = (uint8_t)(n >> (8 * i));
    memcpy(file + 8, header, n);
    float vals[2] = {1.5f, -2.0f};
    file[8 + n] = 7;
    memcpy(file + 8 + n + 1, vals, sizeof(vals));
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(file, sizeof(file), NULL, &f, &err), CKPT_OK);
    const char *name;
    ckpt_file_tensor(f, 0, &name);
    assert_string_equal(name, "b");
    const ckpt_tensor *a = ckpt_file_find_tensor(f, "a");
    const void *data;
    bool zc = true;
    assert_int_equal(ckpt_tensor_data(f, a, &data, &zc, &err), CKPT_OK);
    /* its bytes start at an odd offset: copied once into aligned memory */
    assert_false(zc);
    assert_int_equal((uintptr_t)data % 4, 0);
    assert_memory_equal(data, vals, sizeof(vals));
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    assert_string_equal(ckpt_value_str(ckpt_value_get(fi.metadata, "k"), NULL), "v");
    ckpt_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_errors_and_names),
        cmocka_unit_test(test_null_safety),
        cmocka_unit_test(test_values_and_tensors),
        cmocka_unit_test(test_strided_copy),
        cmocka_unit_test(test_options_and_limits),
        cmocka_unit_test(test_safetensors_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(g_path);
    return rc;
}

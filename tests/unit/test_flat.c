/*
 * test_flat.c - a value tree as flat arrays (src/core/flat.c,
 * ckpt_value_flatten): the ops of a saved checkpoint word by word, its
 * tensor rows against ckpt_tensor_get_info and ckpt_tensor_data, shared
 * containers as REF, and what is refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core.h"
#include "support.h"

#include <string.h>

static ckpt_save_options quick(void)
{
    ckpt_save_options o;
    ckpt_save_options_default(&o);
    o.flags = CKPT_SAVE_NO_FSYNC;
    return o;
}

static const float A[6] = {1, 2, 3, 4, 5, 6};
static const int64_t B[4] = {10, 20, 30, 40};

static ckpt_value *tensor(ckpt_tree *t, ckpt_dtype dtype, uint32_t ndim, const int64_t *shape,
                          const void *data, bool grad)
{
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = dtype;
    d.ndim = ndim;
    d.shape = shape;
    d.data = data;
    d.requires_grad = grad;
    return ckpt_new_tensor(t, &d);
}

/* {"sd": OrderedDict(a=[2, 3] float32, b=[4] int64), "step": 7, "lr": 0.5,
 *  "name": "x", "tied": [a, None, True], "again": sd, "size": (2, 3)},
 * saved and opened. */
static ckpt_file *open_fixture(const char *path, const ckpt_value *(*extra)(ckpt_tree *))
{
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    int64_t sa[2] = {2, 3}, sb[1] = {4};
    ckpt_value *a = tensor(t, CKPT_DTYPE_FLOAT32, 2, sa, A, true);
    assert_int_equal(ckpt_dict_put_str(t, sd, "a", a), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, sd, "b", tensor(t, CKPT_DTYPE_INT64, 1, sb, B, false)),
                     CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "sd", sd), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "step", ckpt_new_int(t, 7)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "lr", ckpt_new_float(t, 0.5)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "name", ckpt_new_str(t, "x", 1)), CKPT_OK);
    ckpt_value *tied = ckpt_new_list(t);
    assert_int_equal(ckpt_append(t, tied, a), CKPT_OK);
    assert_int_equal(ckpt_append(t, tied, ckpt_new_none(t)), CKPT_OK);
    assert_int_equal(ckpt_append(t, tied, ckpt_new_bool(t, true)), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "tied", tied), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "again", sd), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "size", ckpt_new_size(t, 2, sa)), CKPT_OK);
    if (extra)
        assert_int_equal(ckpt_dict_put_str(t, root, "extra", extra(t)), CKPT_OK);
    ckpt_error err;
    ckpt_save_options o = quick();
    assert_int_equal(ckpt_tree_status(t, &err), CKPT_OK);
    assert_int_equal(ckpt_save_torch(path, root, &o, &err), CKPT_OK);
    ckpt_tree_free(t);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_open(path, NULL, &f, &err), CKPT_OK);
    return f;
}

typedef struct cursor {
    const ckpt_flat_info *fi;
    size_t at;
} cursor;

static int64_t word(cursor *c)
{
    assert_true(c->at < c->fi->op_count);
    return c->fi->ops[c->at++];
}

static void expect_str(cursor *c, const char *s)
{
    assert_int_equal(word(c), CKPT_FLAT_STR);
    int64_t off = word(c), len = word(c);
    assert_int_equal(len, (int64_t)strlen(s));
    assert_true(off >= 0 && (size_t)(off + len) <= c->fi->text_bytes);
    assert_memory_equal(c->fi->text + off, s, strlen(s));
}

static void test_ops_and_rows(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture(tmp_path("flat.pt"), NULL);
    ckpt_error err;
    ckpt_flat *flat = NULL;
    assert_int_equal(ckpt_value_flatten(f, NULL, &flat, &err), CKPT_OK);
    ckpt_flat_info fi = {.struct_size = sizeof(fi)};
    ckpt_flat_get_info(flat, &fi);
    assert_int_equal(fi.struct_size, sizeof(fi));
    assert_int_equal(fi.tensor_fields, CKPT_FLAT_T_COUNT);
    assert_int_equal(fi.tensor_count, 2);

    cursor c = {&fi, 0};
    assert_int_equal(word(&c), CKPT_FLAT_DICT);
    assert_int_equal(word(&c), 7);
    assert_int_equal(word(&c), 0);            /* id */
    expect_str(&c, "sd");
    /* a state dict of text keys and new tensors: one op */
    assert_int_equal(word(&c), CKPT_FLAT_STR_TENSOR_DICT);
    assert_int_equal(word(&c), 1);            /* ordered */
    assert_int_equal(word(&c), 2);
    assert_int_equal(word(&c), 1);            /* id */
    int64_t off = word(&c), len = word(&c);
    assert_int_equal(len, 4);
    assert_memory_equal(fi.text + off, "a\0b\0", 4);
    assert_int_equal(word(&c), 0);            /* first row */
    int64_t has_state = word(&c);
    if (has_state) { /* the writer's _metadata: skip an empty dict */
        assert_int_equal(word(&c), CKPT_FLAT_DICT);
        assert_int_equal(word(&c), 0);
        word(&c);
    }
    expect_str(&c, "step");
    assert_int_equal(word(&c), CKPT_FLAT_INT);
    assert_int_equal(word(&c), 7);
    expect_str(&c, "lr");
    assert_int_equal(word(&c), CKPT_FLAT_FLOAT);
    int64_t bits = word(&c);
    double lr;
    memcpy(&lr, &bits, sizeof(lr));
    assert_true(lr == 0.5);
    expect_str(&c, "name");
    expect_str(&c, "x");
    expect_str(&c, "tied");
    assert_int_equal(word(&c), CKPT_FLAT_LIST);
    assert_int_equal(word(&c), 3);
    int64_t list_id = word(&c);
    assert_true(list_id >= 2);
    assert_int_equal(word(&c), CKPT_FLAT_TENSOR);
    assert_int_equal(word(&c), 0);            /* a again: its row */
    assert_int_equal(word(&c), CKPT_FLAT_NONE);
    assert_int_equal(word(&c), CKPT_FLAT_BOOL);
    assert_int_equal(word(&c), 1);
    expect_str(&c, "again");
    assert_int_equal(word(&c), CKPT_FLAT_REF);
    assert_int_equal(word(&c), 1);            /* sd's id */
    expect_str(&c, "size");
    assert_int_equal(word(&c), CKPT_FLAT_SIZE);
    assert_int_equal(word(&c), 2);
    assert_int_equal(word(&c), 2);
    assert_int_equal(word(&c), 3);
    assert_int_equal(c.at, fi.op_count);

    /* rows: what the per-tensor calls say */
    const ckpt_value *sd = ckpt_value_get(ckpt_file_root(f), "sd");
    for (size_t i = 0; i < 2; i++) {
        const int64_t *r = fi.tensors + i * fi.tensor_fields;
        const ckpt_tensor *t = ckpt_value_tensor(ckpt_value_dict_value(sd, i));
        assert_ptr_equal((const void *)(uintptr_t)r[CKPT_FLAT_T_TENSOR], t);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        const void *data;
        bool zc;
        assert_int_equal(ckpt_tensor_data(f, t, &data, &zc, &err), CKPT_OK);
        assert_ptr_equal((const void *)(uintptr_t)r[CKPT_FLAT_T_DATA], data);
        assert_memory_equal(data, i ? (const void *)B : (const void *)A, i ? sizeof(B) : sizeof(A));
        int64_t flags = r[CKPT_FLAT_T_FLAGS];
        assert_int_equal(!!(flags & CKPT_FLAT_TF_ZERO_COPY), zc);
        assert_int_equal(!!(flags & CKPT_FLAT_TF_REQUIRES_GRAD), i == 0);
        assert_false(flags & CKPT_FLAT_TF_PARAMETER);
        assert_true(flags & CKPT_FLAT_TF_STORAGE);
        assert_true(flags & CKPT_FLAT_TF_CONTIGUOUS);
        assert_false(flags & CKPT_FLAT_TF_STORAGE_VIEW);
        assert_false(flags & CKPT_FLAT_TF_SHARED);
        assert_int_equal(r[CKPT_FLAT_T_DTYPE], ti.dtype);
        assert_int_equal(r[CKPT_FLAT_T_NDIM], ti.ndim);
        const int64_t *dims = fi.dims + r[CKPT_FLAT_T_DIMS];
        assert_true((size_t)r[CKPT_FLAT_T_DIMS] + 2 * ti.ndim <= fi.dim_count);
        assert_memory_equal(dims, ti.shape, ti.ndim * sizeof(int64_t));
        assert_memory_equal(dims + ti.ndim, ti.stride, ti.ndim * sizeof(int64_t));
        assert_int_equal(r[CKPT_FLAT_T_STORAGE_OFFSET], ti.storage_offset);
        assert_int_equal(r[CKPT_FLAT_T_NBYTES], (int64_t)ti.nbytes);
        assert_int_equal(r[CKPT_FLAT_T_STORAGE_NBYTES], (int64_t)ti.storage_nbytes);
        assert_int_equal(r[CKPT_FLAT_T_LOCATION_LEN], 3);
        assert_memory_equal(fi.text + r[CKPT_FLAT_T_LOCATION], "cpu", 3);
    }
    assert_int_not_equal(fi.tensors[CKPT_FLAT_T_STORAGE],
                         fi.tensors[fi.tensor_fields + CKPT_FLAT_T_STORAGE]);
    ckpt_flat_free(flat);

    /* a subtree: the state dict alone */
    assert_int_equal(ckpt_value_flatten(f, sd, &flat, &err), CKPT_OK);
    ckpt_flat_get_info(flat, &fi);
    assert_int_equal(fi.ops[0], CKPT_FLAT_STR_TENSOR_DICT);
    assert_int_equal(fi.tensor_count, 2);
    ckpt_flat_free(flat);
    ckpt_close(f);
}

static const ckpt_value *a_set(ckpt_tree *t)
{
    ckpt_value *s = ckpt_new_set(t);
    assert_int_equal(ckpt_append(t, s, ckpt_new_int(t, 1)), CKPT_OK);
    return s;
}

/* What it does not flatten is refused as unsupported, nothing handed out;
 * bad arguments and short structs. */
static void test_refused(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture(tmp_path("flat-set.pt"), a_set);
    ckpt_error err;
    ckpt_flat *flat = (ckpt_flat *)(uintptr_t)1;
    assert_int_equal(ckpt_value_flatten(f, NULL, &flat, &err), CKPT_ERR_UNSUPPORTED);
    assert_null(flat);
    assert_non_null(strstr(err.message, "set"));
    /* the rest of the tree still flattens */
    const ckpt_value *sd = ckpt_value_get(ckpt_file_root(f), "sd");
    assert_int_equal(ckpt_value_flatten(f, sd, &flat, &err), CKPT_OK);
    ckpt_flat_free(flat);
    assert_int_equal(ckpt_value_flatten(NULL, sd, &flat, &err), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_value_flatten(f, sd, NULL, &err), CKPT_ERR_INVALID_ARG);
    ckpt_close(f);
    ckpt_flat_free(NULL);
    ckpt_flat_info fi = {.struct_size = 0};
    ckpt_flat_get_info(NULL, &fi);
    assert_int_equal(fi.struct_size, 0);
    /* an older caller's struct: only what it holds is written */
    struct { ckpt_flat_info fi; int64_t canary; } big;
    memset(&big, 0x5a, sizeof(big));
    big.fi.struct_size = offsetof(ckpt_flat_info, text);
    ckpt_flat_get_info(NULL, &big.fi);
    assert_int_equal(big.fi.struct_size, offsetof(ckpt_flat_info, text));
    assert_int_equal(big.fi.op_count, 0);
    assert_int_equal(big.fi.text_bytes, (size_t)0x5a5a5a5a5a5a5a5aull);
}

/* A dict holding one tensor twice is no STR_TENSOR_DICT: a DICT whose
 * values name one row, the row's location text intact; a view of its
 * storage is another row, both marked shared. */
static void test_repeated_tensor(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    int64_t sa[2] = {2, 3};
    ckpt_value *a = tensor(t, CKPT_DTYPE_FLOAT32, 2, sa, A, false);
    assert_int_equal(ckpt_dict_put_str(t, root, "a", a), CKPT_OK);
    assert_int_equal(ckpt_dict_put_str(t, root, "b", a), CKPT_OK);
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    int64_t sv[1] = {3}, st[1] = {1};
    d.ndim = 1;
    d.shape = sv;
    d.stride = st;
    d.storage_offset = 3;
    assert_int_equal(ckpt_dict_put_str(t, root, "v", ckpt_new_view(t, a, &d)), CKPT_OK);
    ckpt_error err;
    ckpt_save_options o = quick();
    const char *path = tmp_path("flat-tied.pt");
    assert_int_equal(ckpt_save_torch(path, root, &o, &err), CKPT_OK);
    ckpt_tree_free(t);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_open(path, NULL, &f, &err), CKPT_OK);
    ckpt_flat *flat = NULL;
    assert_int_equal(ckpt_value_flatten(f, NULL, &flat, &err), CKPT_OK);
    ckpt_flat_info fi = {.struct_size = sizeof(fi)};
    ckpt_flat_get_info(flat, &fi);
    assert_int_equal(fi.tensor_count, 2);
    cursor c = {&fi, 0};
    assert_int_equal(word(&c), CKPT_FLAT_DICT);
    assert_int_equal(word(&c), 3);
    assert_int_equal(word(&c), 0);
    for (int i = 0; i < 3; i++) {
        expect_str(&c, i == 2 ? "v" : i ? "b" : "a");
        assert_int_equal(word(&c), CKPT_FLAT_TENSOR);
        assert_int_equal(word(&c), i == 2);
    }
    assert_int_equal(c.at, fi.op_count);
    const int64_t *v = fi.tensors + fi.tensor_fields;
    assert_int_equal(v[CKPT_FLAT_T_STORAGE], fi.tensors[CKPT_FLAT_T_STORAGE]);
    assert_true(v[CKPT_FLAT_T_FLAGS] & CKPT_FLAT_TF_SHARED);
    assert_true(fi.tensors[CKPT_FLAT_T_FLAGS] & CKPT_FLAT_TF_SHARED);
    assert_int_equal(v[CKPT_FLAT_T_STORAGE_OFFSET], 3);
    assert_int_equal(v[CKPT_FLAT_T_NBYTES], 12);
    assert_true(v[CKPT_FLAT_T_DATA] == fi.tensors[CKPT_FLAT_T_DATA] + 12);
    assert_int_equal(fi.tensors[CKPT_FLAT_T_LOCATION_LEN], 3);
    assert_memory_equal(fi.text + fi.tensors[CKPT_FLAT_T_LOCATION], "cpu", 3);
    ckpt_flat_free(flat);
    ckpt_close(f);
}

int main(void)
{
    tmp_dir_make("ckpt_test_flat.");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_and_rows),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_repeated_tensor),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    remove_tree(tmp_dir());
    return rc;
}

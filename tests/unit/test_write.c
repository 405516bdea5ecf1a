/*
 * test_write.c - the torch.save writer: the pickler against CPython's bytes,
 * the zip layout (64-byte alignment, CRCs, data descriptors, ZIP64 with a
 * lowered threshold, read back by the project's own zip reader), round
 * trips through ckpt_open, determinism, progress, location and prefix
 * options, and failures that must leave the previous file untouched.
 *
 * CKPT_SLOW_TESTS=1 adds a real ZIP64 file (a storage over 4 GiB).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "format.h"
#include "support.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static uint8_t *slurp(const char *path, size_t *size)
{
    uint8_t *p = read_file(path, size);
    assert_non_null(p);
    return p;
}

static void spit(const char *path, const char *text)
{
    assert_true(write_file(path, text, strlen(text)));
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* Temporary files the output layer left beside name (there must be none). */
static int leftovers(const char *name)
{
    char prefix[128];
    snprintf(prefix, sizeof(prefix), ".%s.tmp-", name);
    DIR *d = opendir(tmp_dir());
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static ckpt_save_options quick(void)
{
    ckpt_save_options o;
    ckpt_save_options_default(&o);
    o.flags = CKPT_SAVE_NO_FSYNC;
    return o;
}

static uint32_t le32(const uint8_t *p) { return ckpt__le32(p); }

/* ---- the pickler against CPython ----------------------------------------------- */

static void expect_pickle(const ckpt_value *v, const char *hex)
{
    uint8_t want[4096];
    size_t n = unhex(hex, want, sizeof(want));
    uint8_t *got;
    size_t len;
    ckpt_error err;
    assert_int_equal(ckpt__pickle_dump(v, 1000, NULL, NULL, &got, &len, &err), CKPT_OK);
    if (len != n || memcmp(got, want, n) != 0) {
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, "%02x", got[i]);
        fprintf(stderr, "\n%s\n", hex);
    }
    assert_int_equal(len, n);
    assert_memory_equal(got, want, n);
    free(got);
}

/* Expected bytes: pickle.dumps(obj, 2) of CPython 3.11 with torch 1.13. */
static void test_pickle_matches_cpython(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();

    /* {'a': 1} */
    ckpt_value *a = ckpt_new_dict(t);
    ckpt_dict_put_str(t, a, "a", ckpt_new_int(t, 1));
    expect_pickle(a, "80027d710058010000006171014b01732e");

    /* an OrderedDict of every plain kind */
    ckpt_value *od = ckpt_new_ordered_dict(t);
    ckpt_value *x = ckpt_new_list(t);
    ckpt_append(t, x, ckpt_new_int(t, 1));
    ckpt_append(t, x, ckpt_new_float(t, 2.5));
    ckpt_append(t, x, ckpt_new_none(t));
    ckpt_append(t, x, ckpt_new_bool(t, true));
    ckpt_dict_put_str(t, od, "x", x);
    ckpt_value *y = ckpt_new_tuple(t);
    for (int i = 1; i <= 4; i++)
        ckpt_append(t, y, ckpt_new_int(t, i));
    ckpt_dict_put_str(t, od, "y", y);
    ckpt_dict_put_str(t, od, "z", ckpt_new_bytes(t, "\xff" "a", 2));
    ckpt_value *w = ckpt_new_set(t);
    ckpt_append(t, w, ckpt_new_int(t, 1));
    ckpt_dict_put_str(t, od, "w", w);
    ckpt_dict_put_str(t, od, "c", ckpt_new_complex(t, 1.0, 2.0));
    int64_t dims[2] = {2, 3};
    ckpt_dict_put_str(t, od, "s", ckpt_new_size(t, 2, dims));
    ckpt_dict_put_str(t, od, "d", ckpt_new_device(t, "cuda:1"));
    ckpt_dict_put_str(t, od, "t", ckpt_new_dtype(t, CKPT_DTYPE_FLOAT32));
    ckpt_dict_put_str(t, od, "e", ckpt_new_bytes(t, "", 0));
    ckpt_value *n = ckpt_new_list(t);
    const int64_t ints[] = {-1, 65536, INT64_C(1) << 31, -(INT64_C(1) << 31) - 1,
                            INT64_C(1) << 40, INT64_MIN, 255, 256};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        ckpt_append(t, n, ckpt_new_int(t, ints[i]));
    ckpt_dict_put_str(t, od, "n", n);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    /* b'' is written as _codecs.encode('', 'latin1') where CPython writes
     * __builtin__.bytes(): torch 2.x's weights-only unpickler refuses the
     * latter; the rest is byte for byte what CPython writes */
    expect_pickle(
        od,
        "800263636f6c6c656374696f6e730a4f726465726564446963740a710029527101285801000000787102"
        "5d7103284b014740040000000000004e88655801000000797104284b014b024b034b0474710558010000"
        "007a7106635f636f646563730a656e636f64650a71075803000000c3bf61710858060000006c6174696e"
        "31710986710a52710b580100000077710c635f5f6275696c74696e5f5f0a7365740a710d5d710e4b0161"
        "85710f5271105801000000637111635f5f6275696c74696e5f5f0a636f6d706c65780a7112473ff00000"
        "00000000474000000000000000867113527114580100000073711563746f7263680a53697a650a71164b"
        "024b03867117857118527119580100000064711a63746f7263680a6465766963650a711b580400000063"
        "756461711c4b0186711d52711e580100000074711f63746f7263680a666c6f617433320a712058010000"
        "00657121680758000000007122680986712352712458010000006e71255d7126284affffffff4a000001"
        "008a0500000080008a05ffffff7fff8a060000000000018a0800000000000000804bff4d000165752e");

    /* shared values come back from the memo: {'a': l, 'b': l, k: (k, k), 'f': False} */
    ckpt_value *c = ckpt_new_dict(t), *l = ckpt_new_list(t), *k = ckpt_new_str(t, "k", 1);
    ckpt_append(t, l, ckpt_new_int(t, 1));
    ckpt_dict_put_str(t, c, "a", l);
    ckpt_dict_put_str(t, c, "b", l);
    ckpt_value *kk = ckpt_new_tuple(t);
    ckpt_append(t, kk, k);
    ckpt_append(t, kk, k);
    ckpt_dict_put(t, c, k, kk);
    ckpt_dict_put_str(t, c, "f", ckpt_new_bool(t, false));
    expect_pickle(c, "80027d71002858010000006171015d71024b0161580100000062710368025801000000"
                     "6b710468046804867105580100000066710689752e");
    ckpt_tree_free(t);
}

/* Batches: a plain dict of 1000 items ends with an empty MARK SETITEMS (the
 * C pickler's batch_dict_exact); an OrderedDict of 1001 with a lone SETITEM. */
static void test_pickle_batches(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *d = ckpt_new_dict(t), *od = ckpt_new_ordered_dict(t);
    for (int i = 0; i < 1001; i++) {
        ckpt_value *v = ckpt_new_int(t, i);
        if (i < 1000)
            ckpt_dict_put(t, d, v, v);
        ckpt_dict_put(t, od, v, v);
    }
    uint8_t *p;
    size_t len;
    ckpt_error err;
    assert_int_equal(ckpt__pickle_dump(d, 1000, NULL, NULL, &p, &len, &err), CKPT_OK);
    static const uint8_t dict_tail[] = {0x4d, 0xe7, 0x03, 0x4d, 0xe7, 0x03, 'u', '(', 'u', '.'};
    assert_true(len > sizeof(dict_tail));
    assert_memory_equal(p + len - sizeof(dict_tail), dict_tail, sizeof(dict_tail));
    free(p);
    assert_int_equal(ckpt__pickle_dump(od, 1000, NULL, NULL, &p, &len, &err), CKPT_OK);
    static const uint8_t od_tail[] = {'u', 0x4d, 0xe8, 0x03, 0x4d, 0xe8, 0x03, 's', '.'};
    assert_memory_equal(p + len - sizeof(od_tail), od_tail, sizeof(od_tail));
    free(p);
    ckpt_tree_free(t);
}

static void test_pickle_refuses_cycles_and_depth(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *l = ckpt_new_list(t), *d = ckpt_new_dict(t);
    ckpt_dict_put_str(t, d, "loop", l);
    ckpt_append(t, l, d);
    uint8_t *p;
    size_t len;
    ckpt_error err;
    assert_int_equal(ckpt__pickle_dump(d, 1000, NULL, NULL, &p, &len, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "cycle"));
    assert_string_equal(err.record, "loop.0");
    assert_null(p);

    ckpt_value *root = ckpt_new_list(t), *cur = root;
    for (int i = 0; i < 1100; i++) {
        ckpt_value *next = ckpt_new_list(t);
        ckpt_append(t, cur, next);
        cur = next;
    }
    assert_int_equal(ckpt__pickle_dump(root, 1000, NULL, NULL, &p, &len, &err), CKPT_ERR_LIMIT);
    assert_non_null(strstr(err.message, "max_nesting"));
    /* a shared subtree is written once, however often it is reached */
    ckpt_value *wide = ckpt_new_list(t), *leaf = ckpt_new_list(t);
    for (int i = 0; i < 10; i++)
        ckpt_append(t, leaf, ckpt_new_int(t, i));
    for (int i = 0; i < 5000; i++)
        ckpt_append(t, wide, leaf);
    assert_int_equal(ckpt__pickle_dump(wide, 1000, NULL, NULL, &p, &len, &err), CKPT_OK);
    assert_true(len < 5000 * 3 + 100);
    free(p);
    ckpt_tree_free(t);
}

/* ---- a checkpoint tree ----------------------------------------------------------- */

static float g_w[12];
static int64_t g_idx[5] = {-3, 0, 7, INT64_MAX, INT64_MIN};
static float g_p[2] = {0.5f, -1.25f};

typedef struct ckpt_fixture {
    ckpt_tree *tree;
    ckpt_value *root, *w;
} ckpt_fixture;

static ckpt_value *tensor(ckpt_tree *t, ckpt_dtype dtype, uint32_t ndim, const int64_t *shape,
                          const void *data, const char *location, bool param)
{
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = dtype;
    d.ndim = ndim;
    d.shape = shape;
    d.data = data;
    d.location = location;
    d.is_parameter = param;
    d.requires_grad = param;
    return ckpt_new_tensor(t, &d);
}

static ckpt_value *view(ckpt_tree *t, const ckpt_value *base, uint32_t ndim, const int64_t *shape,
                        const int64_t *stride, int64_t offset)
{
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = ndim;
    d.shape = shape;
    d.stride = stride;
    d.storage_offset = offset;
    return ckpt_new_view(t, base, &d);
}

/* OrderedDict([('w', [3, 4] float32), ('w_t', its transpose), ('w_row', a
 * row view), ('tied', w again), ('idx', int64), ('half', w cast to
 * float16), ('p', a Parameter on cuda:1)]) with _metadata; inside
 * {'model': ..., 'epoch': 3, 'lr': 0.001, 'name': 'run'} */
static ckpt_fixture make_checkpoint(void)
{
    ckpt_fixture f;
    for (int i = 0; i < 12; i++)
        g_w[i] = (float)i * 0.5f - 2.0f;
    ckpt_tree *t = f.tree = ckpt_tree_new();
    ckpt_value *sd = ckpt_new_ordered_dict(t);
    static const int64_t s34[2] = {3, 4}, s43[2] = {4, 3}, st[2] = {1, 4}, s4[1] = {4},
                         s5[1] = {5}, s2[1] = {2};
    f.w = tensor(t, CKPT_DTYPE_FLOAT32, 2, s34, g_w, NULL, false);
    ckpt_dict_put_str(t, sd, "w", f.w);
    ckpt_dict_put_str(t, sd, "w_t", view(t, f.w, 2, s43, st, 0));
    ckpt_dict_put_str(t, sd, "w_row", view(t, f.w, 1, s4, NULL, 4));
    ckpt_dict_put_str(t, sd, "tied", f.w);
    ckpt_dict_put_str(t, sd, "idx", tensor(t, CKPT_DTYPE_INT64, 1, s5, g_idx, NULL, false));
    ckpt_dict_put_str(t, sd, "half", ckpt_new_cast(t, f.w, CKPT_DTYPE_FLOAT16));
    ckpt_dict_put_str(t, sd, "p", tensor(t, CKPT_DTYPE_FLOAT32, 1, s2, g_p, "cuda:1", true));
    ckpt_value *meta = ckpt_new_ordered_dict(t), *v1 = ckpt_new_dict(t), *st8 = ckpt_new_dict(t);
    ckpt_dict_put_str(t, v1, "version", ckpt_new_int(t, 1));
    ckpt_dict_put_str(t, meta, "", v1);
    ckpt_dict_put_str(t, st8, "_metadata", meta);
    ckpt_set_state(t, sd, st8);
    ckpt_value *root = f.root = ckpt_new_dict(t);
    ckpt_dict_put_str(t, root, "model", sd);
    ckpt_dict_put_str(t, root, "epoch", ckpt_new_int(t, 3));
    ckpt_dict_put_str(t, root, "lr", ckpt_new_float(t, 0.001));
    ckpt_dict_put_str(t, root, "name", ckpt_new_str(t, "run", SIZE_MAX));
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    return f;
}

typedef struct progress_log {
    uint64_t last, total;
    int calls;
    bool monotonic;
} progress_log;

static void on_progress(void *user, uint64_t done, uint64_t total)
{
    progress_log *p = user;
    if (done < p->last)
        p->monotonic = false;
    p->last = done;
    p->total = total;
    p->calls++;
}

static void check_tensor_bytes(ckpt_file *f, const char *name, const void *want, size_t n)
{
    const ckpt_tensor *t = ckpt_file_find_tensor(f, name);
    assert_non_null(t);
    uint8_t bytes[256];
    ckpt_error err;
    assert_true(n <= sizeof(bytes));
    assert_int_equal(ckpt_tensor_copy(f, t, bytes, sizeof(bytes), &err), CKPT_OK);
    assert_memory_equal(bytes, want, n);
}

/* Saved and opened again: same values, views on one storage, every record
 * aligned and its CRC right, the prefix from the file name. */
static void test_round_trip(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    const char *path = tmp_path("model.v2.pt");
    ckpt_save_options o = quick();
    progress_log pl = {.monotonic = true};
    o.progress = on_progress;
    o.progress_user = &pl;
    ckpt_error err;
    assert_int_equal(ckpt_save_torch(path, fx.root, &o, &err), CKPT_OK);
    /* storages: w (48 bytes), idx (40), the float16 cast (24), p (8) */
    assert_int_equal(pl.total, 48 + 40 + 24 + 8);
    assert_int_equal(pl.last, pl.total);
    assert_true(pl.monotonic && pl.calls >= 4);

    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags = CKPT_OPEN_VERIFY_CRC;
    ckpt_file *f;
    assert_int_equal(ckpt_open(path, &oo, &f, &err), CKPT_OK);
    ckpt_file_info info = {.struct_size = sizeof(info)};
    ckpt_file_get_info(f, &info);
    assert_int_equal(info.format, CKPT_FORMAT_TORCH_ZIP);
    assert_string_equal(info.prefix, "model.v2");
    assert_string_equal(info.version, "3");
    assert_string_equal(info.byteorder, "little");
    assert_int_equal(info.pickle_protocol, 2);
    assert_int_equal(info.storage_count, 4);
    assert_int_equal(ckpt_file_verify(f, &err), CKPT_OK);

    /* records in torch's order, data at multiples of 64 */
    static const char *const names[] = {"data.pkl", "byteorder", "data/0", "data/1",
                                        "data/2", "data/3", "version"};
    assert_int_equal(ckpt_file_record_count(f), 7);
    for (size_t i = 0; i < 7; i++) {
        ckpt_record_info ri = {.struct_size = sizeof(ri)};
        assert_int_equal(ckpt_file_record(f, i, &ri), CKPT_OK);
        char want[64];
        snprintf(want, sizeof(want), "model.v2/%s", names[i]);
        assert_string_equal(ri.name, want);
        assert_int_equal(ri.data_offset % 64, 0);
        assert_false(ri.compressed);
    }

    const ckpt_value *root = ckpt_file_root(f);
    assert_int_equal(ckpt_value_int(ckpt_value_get(root, "epoch")), 3);
    assert_true(ckpt_value_float(ckpt_value_get(root, "lr")) == 0.001);
    assert_string_equal(ckpt_value_str(ckpt_value_get(root, "name"), NULL), "run");
    const ckpt_value *sd = ckpt_value_get(root, "model");
    assert_int_equal(ckpt_value_kind(sd), CKPT_KIND_ORDERED_DICT);
    const ckpt_value *meta = ckpt_value_get(ckpt_value_state(sd), "_metadata");
    assert_int_equal(ckpt_value_kind(meta), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_value_get(meta, ""), "version")), 1);
    /* tied weights are one tensor object */
    assert_ptr_equal(ckpt_value_get(sd, "w"), ckpt_value_get(sd, "tied"));

    check_tensor_bytes(f, "model.w", g_w, sizeof(g_w));
    check_tensor_bytes(f, "model.idx", g_idx, sizeof(g_idx));
    check_tensor_bytes(f, "model.w_row", g_w + 4, 4 * sizeof(float));
    float wt[12];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            wt[i * 3 + j] = g_w[j * 4 + i];
    check_tensor_bytes(f, "model.w_t", wt, sizeof(wt));
    uint16_t half[12];
    assert_int_equal(ckpt_convert_dtype(CKPT_DTYPE_FLOAT16, half, CKPT_DTYPE_FLOAT32, g_w, 12), CKPT_OK);
    check_tensor_bytes(f, "model.half", half, sizeof(half));
    check_tensor_bytes(f, "model.p", g_p, sizeof(g_p));

    ckpt_tensor_info a = {.struct_size = sizeof(a)}, b = {.struct_size = sizeof(b)},
                     p = {.struct_size = sizeof(p)};
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "model.w"), &a);
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "model.w_t"), &b);
    assert_int_equal(a.storage_index, b.storage_index);
    assert_int_equal(b.stride[0], 1);
    assert_int_equal(b.stride[1], 4);
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "model.w_row"), &b);
    assert_int_equal(a.storage_index, b.storage_index);
    assert_int_equal(b.storage_offset, 4);
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "model.half"), &b);
    assert_int_equal(b.dtype, CKPT_DTYPE_FLOAT16);
    ckpt_tensor_get_info(ckpt_file_find_tensor(f, "model.p"), &p);
    assert_true(p.is_parameter && p.requires_grad);
    assert_string_equal(p.location, "cuda:1");
    assert_false(a.requires_grad || a.is_parameter);
    ckpt_close(f);
    ckpt_tree_free(fx.tree);
}

/* The same tree gives the same bytes; a file read and written again too. */
static void test_deterministic(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    ckpt_save_options o = quick();
    ckpt_error err;
    assert_int_equal(mkdir(tmp_path("again"), 0755), 0);
    const char *p1 = tmp_path("same.pt"), *p2 = tmp_path("again/same.pt");
    assert_int_equal(ckpt_save_torch(p1, fx.root, &o, &err), CKPT_OK);
    assert_int_equal(ckpt_save_torch(p2, fx.root, &o, &err), CKPT_OK);
    size_t n1, n2, n3;
    uint8_t *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);

    ckpt_file *f;
    assert_int_equal(ckpt_open(p1, NULL, &f, &err), CKPT_OK);
    const char *p3 = tmp_path("again/again.pt");
    o.prefix = "same";
    assert_int_equal(ckpt_save_torch(p3, ckpt_file_root(f), &o, &err), CKPT_OK);
    ckpt_close(f);
    uint8_t *b3 = slurp(p3, &n3);
    assert_int_equal(n1, n3);
    assert_memory_equal(b1, b3, n1);
    free(b1);
    free(b2);
    free(b3);
    ckpt_tree_free(fx.tree);
}

/* Walks the archive as written: local headers, descriptors, the central
 * directory and the end records, checking PyTorch's layout for threshold. */
static void check_layout(const uint8_t *d, size_t size, uint64_t threshold, int *zip64_entries)
{
    /* end records: EOCD 22 bytes at the end, the locator and ZIP64 end record before */
    assert_true(size > 22 + 20 + 56);
    const uint8_t *eocd = d + size - 22, *loc = eocd - 20, *z64 = loc - 56;
    assert_int_equal(le32(eocd), 0x06054b50u);
    assert_int_equal(le32(loc), 0x07064b50u);
    assert_int_equal(le32(z64), 0x06064b50u);
    assert_int_equal(ckpt__le64(loc + 8), (uint64_t)(z64 - d));
    assert_int_equal(ckpt__le16(z64 + 12), 0x031e);
    assert_int_equal(ckpt__le16(z64 + 14), 0x002d);
    uint64_t count = ckpt__le64(z64 + 32), cd_size = ckpt__le64(z64 + 40),
             cd_off = ckpt__le64(z64 + 48);
    assert_int_equal(cd_off + cd_size, (uint64_t)(z64 - d));
    assert_int_equal(le32(eocd + 16), cd_off >= threshold ? 0xffffffffu : (uint32_t)cd_off);
    assert_int_equal(le32(eocd + 12), cd_size >= threshold ? 0xffffffffu : (uint32_t)cd_size);
    assert_int_equal(ckpt__le16(eocd + 10), count);

    const uint8_t *c = d + cd_off;
    uint64_t expect_offset = 0;
    *zip64_entries = 0;
    for (uint64_t i = 0; i < count; i++) {
        assert_int_equal(le32(c), 0x02014b50u);
        uint16_t name_len = ckpt__le16(c + 28), extra_len = ckpt__le16(c + 30);
        assert_int_equal(ckpt__le16(c + 4), 0);  /* made by */
        assert_int_equal(ckpt__le16(c + 6), 0);  /* needed */
        assert_int_equal(ckpt__le16(c + 10), 0); /* stored */
        assert_int_equal(le32(c + 12), 0);       /* time and date */
        uint32_t crc = le32(c + 16);
        uint64_t size32 = le32(c + 24), off32 = le32(c + 42);
        const uint8_t *x = c + 46 + name_len;
        uint64_t esize = size32, eoff = off32;
        if (extra_len) {
            (*zip64_entries)++;
            assert_int_equal(ckpt__le16(x), 1);
            const uint8_t *q = x + 4;
            if (size32 == 0xffffffffu) {
                esize = ckpt__le64(q);
                assert_int_equal(ckpt__le64(q + 8), esize);
                q += 16;
            }
            if (off32 == 0xffffffffu) {
                eoff = ckpt__le64(q);
                q += 8;
            }
            assert_int_equal(q - x, extra_len);
        }
        assert_int_equal(esize >= threshold, size32 == 0xffffffffu);
        assert_int_equal(eoff >= threshold, off32 == 0xffffffffu);
        assert_int_equal(eoff, expect_offset);

        /* the local header */
        const uint8_t *h = d + eoff;
        assert_int_equal(le32(h), 0x04034b50u);
        uint16_t flags = ckpt__le16(h + 6);
        assert_int_equal(flags, esize ? 0x0808 : 0x0800);
        assert_int_equal(ckpt__le16(c + 8), flags);
        assert_int_equal(le32(h + 14), 0); /* CRC and sizes in the descriptor */
        assert_int_equal(le32(h + 18), 0);
        assert_int_equal(le32(h + 22), 0);
        assert_int_equal(ckpt__le16(h + 26), name_len);
        assert_memory_equal(h + 30, c + 46, name_len);
        uint16_t lextra = ckpt__le16(h + 28);
        const uint8_t *le = h + 30 + name_len;
        bool large = esize >= threshold || eoff >= threshold;
        if (large) {
            assert_int_equal(ckpt__le16(le), 1);
            uint16_t zl = ckpt__le16(le + 2);
            assert_int_equal(zl, (esize >= threshold ? 16 : 0) + (eoff >= threshold ? 8 : 0));
            if (esize >= threshold) {
                assert_int_equal(ckpt__le64(le + 4), esize);
                assert_int_equal(ckpt__le64(le + 12), 0);
            }
            le += 4 + zl;
        }
        assert_int_equal(le[0], 'F');
        assert_int_equal(le[1], 'B');
        uint16_t pad = ckpt__le16(le + 2);
        for (uint16_t k = 0; k < pad; k++)
            assert_int_equal(le[4 + k], 'Z');
        const uint8_t *data = le + 4 + pad;
        assert_int_equal(data - (h + 30 + name_len), lextra);
        assert_int_equal((data - d) % 64, 0);
        /* the descriptor */
        const uint8_t *dd = data + esize;
        size_t dlen = 0;
        if (esize) {
            assert_int_equal(le32(dd), 0x08074b50u);
            assert_int_equal(le32(dd + 4), crc);
            if (large) {
                assert_int_equal(ckpt__le64(dd + 8), esize);
                assert_int_equal(ckpt__le64(dd + 16), esize);
                dlen = 24;
            } else {
                assert_int_equal(le32(dd + 8), esize);
                assert_int_equal(le32(dd + 12), esize);
                dlen = 16;
            }
        }
        expect_offset = (uint64_t)(dd + dlen - d);
        c = x + extra_len;
    }
    assert_int_equal(expect_offset, cd_off);
    assert_ptr_equal(c, d + cd_off + cd_size);
}

static void check_with_zip_reader(const uint8_t *d, size_t size)
{
    ckpt_limits lim;
    ckpt_limits_default(&lim);
    ckpt__zip z;
    ckpt_error err;
    assert_int_equal(ckpt__zip_open(&z, d, size, &lim, &err), CKPT_OK);
    for (size_t i = 0; i < z.count; i++) {
        assert_int_equal(z.entries[i].data_offset % 64, 0);
        assert_int_equal(z.entries[i].method, 0);
        assert_int_equal(ckpt__zip_check_crc(&z, i, &lim, &err), CKPT_OK);
    }
    ckpt__zip_close(&z);
}

static void test_zip_layout(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    ckpt_save_options o = quick();
    ckpt_error err;
    const char *p = tmp_path("layout.pt");
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_OK);
    size_t n;
    uint8_t *d = slurp(p, &n);
    int z64;
    check_layout(d, n, CKPT__ZIP64_THRESHOLD, &z64);
    assert_int_equal(z64, 0);
    check_with_zip_reader(d, n);
    free(d);
    ckpt_tree_free(fx.tree);
}

/* ZIP64 with a threshold of 100 bytes: every offset past 100 and every
 * record of 100 bytes or more uses its fields, as in a file over 4 GiB. */
static void test_zip64_lowered(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    static float big[64]; /* 256 bytes: a large record */
    for (int i = 0; i < 64; i++)
        big[i] = (float)i;
    static const int64_t s64[1] = {64};
    ckpt_dict_put_str(fx.tree, fx.root, "big", tensor(fx.tree, CKPT_DTYPE_FLOAT32, 1, s64, big, NULL,
                                                      false));
    ckpt_save_options o = quick();
    ckpt_error err;
    const char *p = tmp_path("zip64.pt");
    assert_int_equal(ckpt__save_torch_ex(p, fx.root, &o, 100, NULL, &err), CKPT_OK);
    size_t n;
    uint8_t *d = slurp(p, &n);
    int z64;
    check_layout(d, n, 100, &z64);
    assert_int_equal(z64, 8); /* data.pkl (size), then every record (offset) */
    check_with_zip_reader(d, n);
    free(d);

    ckpt_file *f;
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags = CKPT_OPEN_VERIFY_CRC;
    assert_int_equal(ckpt_open(p, &oo, &f, &err), CKPT_OK);
    assert_int_equal(ckpt_file_verify(f, &err), CKPT_OK);
    check_tensor_bytes(f, "big", big, sizeof(big));
    check_tensor_bytes(f, "model.w", g_w, sizeof(g_w));
    ckpt_close(f);
    ckpt_tree_free(fx.tree);
}

static void test_options(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    ckpt_save_options o = quick();
    ckpt_error err;
    ckpt_file *f;
    ckpt_file_info info = {.struct_size = sizeof(info)};

    /* every storage takes the location asked for, as map_location does */
    o.location = "cpu";
    const char *p = tmp_path(".pt");
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_OK);
    assert_int_equal(ckpt_open(p, NULL, &f, &err), CKPT_OK);
    ckpt_file_get_info(f, &info);
    assert_string_equal(info.prefix, "archive"); /* no base name left */
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(ckpt_file_tensor(f, i, NULL), &ti);
        assert_string_equal(ti.location, "cpu");
    }
    ckpt_close(f);

    o.location = NULL;
    o.prefix = "custom";
    p = tmp_path("noext");
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_OK);
    assert_int_equal(ckpt_open(p, NULL, &f, &err), CKPT_OK);
    ckpt_file_get_info(f, &info);
    assert_string_equal(info.prefix, "custom");
    ckpt_close(f);

    o.prefix = "a/b";
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_INVALID_ARG);
    o.prefix = NULL;
    o.location = "";
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_save_torch(NULL, fx.root, NULL, &err), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_save_torch(p, NULL, NULL, &err), CKPT_ERR_INVALID_ARG);
    /* no options at all: defaults (with fsync) */
    assert_int_equal(ckpt_save_torch(tmp_path("defaults.pt"), fx.root, NULL, &err), CKPT_OK);
    ckpt_tree_free(fx.tree);
}

static bool contains(const uint8_t *p, size_t n, const char *s)
{
    size_t k = strlen(s);
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(p + i, s, k) == 0)
            return true;
    }
    return false;
}

/* Attributes of tensors (their BUILD state) go out as torch 2.x writes them:
 * _rebuild_parameter_with_state for Parameters, _rebuild_from_type_v2 for
 * plain tensors; ckpt reads them back as the tensors' state. */
static void test_tensor_attributes(void **state)
{
    (void)state;
    ckpt_fixture fx = make_checkpoint();
    ckpt_tree *t = fx.tree;
    ckpt_value *sd = (ckpt_value *)(uintptr_t)ckpt_value_get(fx.root, "model");
    ckpt_value *p = (ckpt_value *)(uintptr_t)ckpt_value_get(sd, "p");
    ckpt_value *idx = (ckpt_value *)(uintptr_t)ckpt_value_get(sd, "idx");
    ckpt_value *pa = ckpt_new_dict(t), *ia = ckpt_new_dict(t);
    ckpt_dict_put_str(t, pa, "note", ckpt_new_str(t, "frozen later", SIZE_MAX));
    ckpt_dict_put_str(t, ia, "origin", ckpt_new_int(t, 7));
    assert_int_equal(ckpt_set_state(t, p, pa), CKPT_OK);
    assert_int_equal(ckpt_set_state(t, idx, ia), CKPT_OK);
    ckpt_save_options o = quick();
    ckpt_error err;
    const char *path = tmp_path("attrs.pt");
    assert_int_equal(ckpt_save_torch(path, fx.root, &o, &err), CKPT_OK);
    size_t n;
    uint8_t *d = slurp(path, &n);
    assert_true(contains(d, n, "_rebuild_parameter_with_state"));
    assert_true(contains(d, n, "_rebuild_from_type_v2"));
    free(d);
    ckpt_file *f;
    assert_int_equal(ckpt_open(path, NULL, &f, &err), CKPT_OK);
    const ckpt_value *rsd = ckpt_value_get(ckpt_file_root(f), "model");
    const ckpt_value *rp = ckpt_value_get(rsd, "p"), *ri = ckpt_value_get(rsd, "idx");
    assert_string_equal(ckpt_value_str(ckpt_value_get(ckpt_value_state(rp), "note"), NULL),
                        "frozen later");
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_value_state(ri), "origin")), 7);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(ckpt_value_tensor(rp), &ti);
    assert_true(ti.is_parameter && ti.requires_grad);
    check_tensor_bytes(f, "model.idx", g_idx, sizeof(g_idx));
    ckpt_close(f);

    /* a state that is not a dict of attributes has no torch form */
    assert_int_equal(ckpt_set_state(t, idx, ckpt_new_int(t, 1)), CKPT_OK);
    assert_int_equal(ckpt_save_torch(path, fx.root, &o, &err), CKPT_ERR_UNSUPPORTED);
    assert_string_equal(err.record, "model.idx");
    ckpt_tree_free(t);
}

/* A failed save leaves the previous file as it was and no temporary. */
static void test_failures_leave_old_file(void **state)
{
    (void)state;
    const char *name = "keep.pt";
    const char *p = tmp_path(name);
    spit(p, "old contents");
    ckpt_save_options o = quick();
    ckpt_error err;
    size_t n;
    uint8_t *b;

    /* an invalid tensor: its view runs past its storage */
    ckpt_fixture fx = make_checkpoint();
    ckpt_tensor *t = (ckpt_tensor *)(uintptr_t)ckpt_value_tensor(fx.w);
    int64_t saved = t->shape[0];
    t->shape[0] = 100;
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_FORMAT);
    assert_string_equal(err.record, "model.w");
    t->shape[0] = saved;

    /* a storage whose bytes cannot be read fails while writing, after the
     * temporary file exists */
    const uint8_t *data = t->storage->data;
    t->storage->data = NULL;
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.record, "keep/data/"));
    t->storage->data = data;
    b = slurp(p, &n);
    assert_int_equal(n, strlen("old contents"));
    assert_memory_equal(b, "old contents", n);
    free(b);
    assert_int_equal(leftovers(name), 0);

    /* a storage used as two dtypes (torch.save refuses that too) */
    ckpt_tensor *idx = (ckpt_tensor *)(uintptr_t)ckpt_value_tensor(
        ckpt_value_get(ckpt_value_get(fx.root, "model"), "idx"));
    ckpt__storage *own = idx->storage;
    idx->storage = t->storage;
    idx->dtype = CKPT_DTYPE_INT32;
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "float32"));
    idx->storage = own;
    idx->dtype = CKPT_DTYPE_INT64;

    /* a dtype torch has no name for */
    t->dtype = CKPT_DTYPE_FLOAT6_E2M3;
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_ERR_UNSUPPORTED);
    t->dtype = CKPT_DTYPE_FLOAT32;

    /* into a directory that does not exist */
    assert_int_equal(ckpt_save_torch(tmp_path("no/such/dir.pt"), fx.root, &o, &err),
                     CKPT_ERR_IO);

    b = slurp(p, &n);
    assert_memory_equal(b, "old contents", n);
    free(b);
    assert_int_equal(leftovers(name), 0);

    /* and the same tree saves fine afterwards */
    assert_int_equal(ckpt_save_torch(p, fx.root, &o, &err), CKPT_OK);
    assert_int_equal(leftovers(name), 0);
    ckpt_tree_free(fx.tree);
}

/* A real ZIP64 archive: a storage of 4 GiB + 64 bytes (zero pages, never
 * touched), so the records after it sit past 4 GiB. */
static void test_zip64_real(void **state)
{
    (void)state;
    const char *slow = getenv("CKPT_SLOW_TESTS");
    if (!slow || strcmp(slow, "1") != 0)
        skip();
    uint64_t nbytes = (UINT64_C(1) << 32) + 64;
    void *zeros = mmap(NULL, nbytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(zeros != MAP_FAILED);
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    int64_t shape[1] = {(int64_t)nbytes};
    ckpt_dict_put_str(t, root, "big", tensor(t, CKPT_DTYPE_UINT8, 1, shape, zeros, NULL, false));
    int64_t s2[1] = {2};
    ckpt_dict_put_str(t, root, "after", tensor(t, CKPT_DTYPE_FLOAT32, 1, s2, g_p, NULL, false));
    ckpt_save_options o = quick();
    ckpt_error err;
    const char *p = tmp_path("huge.pt");
    assert_int_equal(ckpt_save_torch(p, root, &o, &err), CKPT_OK);
    ckpt_file *f;
    assert_int_equal(ckpt_open(p, NULL, &f, &err), CKPT_OK);
    check_tensor_bytes(f, "after", g_p, sizeof(g_p));
    ckpt_file_info info = {.struct_size = sizeof(info)};
    ckpt_file_get_info(f, &info);
    assert_true(info.file_size > nbytes);
    ckpt_close(f);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    struct stat sb;
    fstat(fd, &sb);
    uint8_t *d = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    assert_true(d != MAP_FAILED);
    int z64;
    check_layout(d, (size_t)sb.st_size, CKPT__ZIP64_THRESHOLD, &z64);
    assert_int_equal(z64, 3); /* the big record, then the two after it */
    check_with_zip_reader(d, (size_t)sb.st_size);
    munmap(d, (size_t)sb.st_size);
    close(fd);
    unlink(p);
    munmap(zeros, nbytes);
    ckpt_tree_free(t);
}

/* An input that shrinks while its bytes are copied to an output (pread
 * meets the new end) is an error, not a fault on the map past the end. */
static void test_input_shrinks_during_copy(void **state)
{
    (void)state;
    size_t n = (size_t)20 << 18; /* 20 MiB of float32: its descriptor is kept */
    float *data = malloc(n * sizeof(float));
    assert_non_null(data);
    for (size_t i = 0; i < n; i++)
        data[i] = (float)i;
    ckpt_tree *t = ckpt_tree_new();
    int64_t shape[1] = {(int64_t)n};
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = 1;
    d.shape = shape;
    d.data = data;
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_dict_put_str(t, root, "w", ckpt_new_tensor(t, &d));
    ckpt_save_options o;
    ckpt_save_options_default(&o);
    o.flags = CKPT_SAVE_NO_FSYNC;
    assert_int_equal(ckpt_save_torch(tmp_path("big.pth"), root, &o, NULL), CKPT_OK);
    ckpt_tree_free(t);
    free(data);

    ckpt_file *f = NULL;
    assert_int_equal(ckpt_open(tmp_path("big.pth"), NULL, &f, NULL), CKPT_OK);
    assert_int_equal(truncate(tmp_path("big.pth"), 4 << 20), 0);
    ckpt_error err;
    assert_int_equal(ckpt_save_torch(tmp_path("copy.pth"), ckpt_file_root(f), &o, &err),
                     CKPT_ERR_IO);
    assert_non_null(strstr(err.message, "shrank"));
    /* the safetensors writer copies through another path */
    assert_int_equal(ckpt_save_safetensors(tmp_path("copy.safetensors"), ckpt_file_root(f), &o,
                                           &err),
                     CKPT_ERR_IO);
    assert_non_null(strstr(err.message, "shrank"));
    ckpt_close(f);
    struct stat sb;
    assert_int_not_equal(stat(tmp_path("copy.pth"), &sb), 0);
    assert_int_not_equal(stat(tmp_path("copy.safetensors"), &sb), 0);
    unlink(tmp_path("big.pth"));
}

int main(void)
{
    tmp_dir_make("ckpt_test_write.");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pickle_matches_cpython),
        cmocka_unit_test(test_pickle_batches),
        cmocka_unit_test(test_pickle_refuses_cycles_and_depth),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_zip_layout),
        cmocka_unit_test(test_zip64_lowered),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_tensor_attributes),
        cmocka_unit_test(test_failures_leave_old_file),
        cmocka_unit_test(test_zip64_real),
        cmocka_unit_test(test_input_shrinks_during_copy),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    remove_tree(tmp_dir());
    return rc;
}

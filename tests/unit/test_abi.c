/*
 * test_abi.c - the ABI promise of ckpt.h as an older and a newer caller see
 * it. Each struct the library fills is declared here as an older header had
 * it (its last field removed) and passed with that struct_size: nothing
 * past its end may be written (a canary follows it). A newer caller's
 * longer struct keeps its unknown tail, and struct_size comes back as the
 * bytes the library wrote. Structs the library reads (options, tensor
 * descriptions) may be shorter: the missing fields take their defaults.
 * Uses only ckpt.h.
 */
#include <ckpt.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define CANARY 0xa5
#define CANARY_BYTES 64

/* ---- older headers: each struct without its last field ------------------ */

typedef struct old_tensor_info {
    size_t struct_size;
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;
    const int64_t *stride;
    int64_t storage_offset;
    uint64_t numel;
    uint64_t nbytes;
    bool requires_grad;
    bool is_parameter;
    bool is_contiguous;
    bool has_storage;
    bool big_endian;
    const char *storage_key;
    const char *location;
    const char *record;
    uint64_t storage_nbytes;
    uint64_t storage_file_offset;
    uint32_t storage_index;
    ckpt_layout layout;
} old_tensor_info;
_Static_assert(offsetof(old_tensor_info, layout) == offsetof(ckpt_tensor_info, layout), "layout");

typedef struct old_file_info {
    size_t struct_size;
    ckpt_format format;
    uint64_t file_size;
    const char *prefix;
    const char *version;
    const char *byteorder;
    const char *serialization_id;
    const char *format_version;
    const char *storage_alignment;
    int pickle_protocol;
    int64_t legacy_protocol_version;
    uint64_t data_alignment;
    size_t record_count;
    size_t storage_count;
    size_t tensor_count;
    bool big_endian;
    const ckpt_value *metadata;
} old_file_info;
_Static_assert(offsetof(old_file_info, metadata) == offsetof(ckpt_file_info, metadata), "layout");

typedef struct old_record_info {
    size_t struct_size;
    const char *name;
    uint64_t header_offset;
    uint64_t data_offset;
    uint64_t stored_size;
    uint64_t size;
    uint32_t crc32;
    bool compressed;
} old_record_info;
_Static_assert(offsetof(old_record_info, compressed) == offsetof(ckpt_record_info, compressed),
               "layout");

typedef struct old_checkpoint_info {
    size_t struct_size;
    const char *file;
    int64_t step;
    const ckpt_metric *metrics;
    size_t metric_count;
    uint64_t size;
    uint32_t crc32;
    int64_t time;
    const char *ckpt_version;
    int format_version;
    const char *torch_version;
    const char *user_metadata;
    bool last;
    bool best;
} old_checkpoint_info;
_Static_assert(offsetof(old_checkpoint_info, best) == offsetof(ckpt_checkpoint_info, best),
               "layout");

typedef struct old_param_info {
    size_t struct_size;
    const char *name;
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;
    uint64_t numel;
    uint64_t nbytes;
    void *data;
    void *host;
    const char *location;
    bool is_buffer;
    bool is_extra_state;
    bool loaded;
    bool borrowed;
} old_param_info;
_Static_assert(offsetof(old_param_info, borrowed) == offsetof(ckpt_param_info, borrowed), "layout");

typedef struct old_load_report {
    size_t struct_size;
    const char *const *missing;
    size_t missing_count;
    const char *const *unexpected;
    size_t unexpected_count;
    const char *const *errors;
    size_t error_count;
    const char *message;
    size_t loaded;
    size_t converted;
    size_t zero_copy;
} old_load_report;
_Static_assert(offsetof(old_load_report, zero_copy) == offsetof(ckpt_load_report, zero_copy),
               "layout");

typedef struct old_adamw_options {
    size_t struct_size;
    double lr;
    double beta1, beta2;
    double eps;
    double weight_decay;
    bool amsgrad;
} old_adamw_options;
_Static_assert(offsetof(old_adamw_options, amsgrad) == offsetof(ckpt_adamw_options, amsgrad),
               "layout");

typedef struct old_tensor_desc {
    size_t struct_size;
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;
    const int64_t *stride;
    int64_t storage_offset;
    const void *data;
    uint64_t storage_nbytes;
    const char *location;
    bool requires_grad;
} old_tensor_desc;
_Static_assert(offsetof(old_tensor_desc, requires_grad) ==
               offsetof(ckpt_tensor_desc, requires_grad), "layout");

/* A struct with the canary after it. */
#define WITH_CANARY(T) struct { T s; unsigned char canary[CANARY_BYTES]; }

static void canary_set(void *p, size_t size, size_t struct_size)
{
    memset(p, CANARY, size);
    memcpy(p, &struct_size, sizeof(struct_size));
}

static void canary_check(const void *canary)
{
    const unsigned char *c = canary;
    for (size_t i = 0; i < CANARY_BYTES; i++)
        assert_int_equal(c[i], CANARY);
}

/* ---- fixture: a saved checkpoint, open, with a model and a manager ------- */

static char g_dir[] = "/tmp/ckpt_abi_XXXXXX";
static char g_path[64];
static float g_values[6] = {1, 2, 3, 4, 5, 6};
static const int64_t g_shape[2] = {2, 3};

static void save_fixture(void)
{
    ckpt_tree *t = ckpt_tree_new();
    assert_non_null(t);
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = 2;
    d.shape = g_shape;
    d.data = g_values;
    ckpt_value *root = ckpt_new_ordered_dict(t);
    ckpt_dict_put_str(t, root, "w", ckpt_new_tensor(t, &d));
    ckpt_error err;
    assert_int_equal(ckpt_tree_status(t, &err), CKPT_OK);
    assert_int_equal(ckpt_save_torch(g_path, root, NULL, &err), CKPT_OK);
    ckpt_tree_free(t);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_path, sizeof(g_path), "%s/w.pth", g_dir);
    save_fixture();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char path[96];
    const char *names[] = {"w.pth", "m/last.pth", "m/manifest.json", "m/.ckpt.lock"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", g_dir, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/m", g_dir);
    rmdir(path);
    rmdir(g_dir);
    return 0;
}

static ckpt_file *open_fixture(void)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open(g_path, NULL, &f, &err), CKPT_OK);
    return f;
}

/* ---- filled structs: an older caller --------------------------------------- */

static void test_tensor_info(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture();
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "w");
    assert_non_null(t);

    WITH_CANARY(old_tensor_info) b;
    canary_set(&b, sizeof(b), sizeof(b.s));
    ckpt_tensor_get_info(t, (ckpt_tensor_info *)&b.s);
    canary_check(b.canary);
    assert_int_equal(b.s.struct_size, sizeof(b.s));
    assert_int_equal(b.s.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(b.s.ndim, 2);
    assert_int_equal(b.s.numel, 6);
    assert_int_equal(b.s.layout, CKPT_LAYOUT_STRIDED);

    /* struct_size 0: nothing written */
    canary_set(&b, sizeof(b), 0);
    ckpt_tensor_get_info(t, (ckpt_tensor_info *)&b.s);
    const unsigned char *p = (const unsigned char *)&b;
    for (size_t i = sizeof(size_t); i < sizeof(b); i++)
        assert_int_equal(p[i], CANARY);

    /* a newer caller: its unknown tail is left alone */
    struct newer_tensor_info {
        ckpt_tensor_info s;
        uint64_t newer;
        unsigned char canary[CANARY_BYTES];
    } n;
    canary_set(&n, sizeof(n), offsetof(struct newer_tensor_info, canary));
    n.newer = 0x1234;
    ckpt_tensor_get_info(t, &n.s);
    assert_int_equal(n.s.struct_size, sizeof(ckpt_tensor_info));
    assert_int_equal(n.newer, 0x1234);
    assert_int_equal(n.s.nnz, 0);
    canary_check(n.canary);
    ckpt_close(f);
}

static void test_file_and_record_info(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture();

    WITH_CANARY(old_file_info) b;
    canary_set(&b, sizeof(b), sizeof(b.s));
    ckpt_file_get_info(f, (ckpt_file_info *)&b.s);
    canary_check(b.canary);
    assert_int_equal(b.s.struct_size, sizeof(b.s));
    assert_int_equal(b.s.format, CKPT_FORMAT_TORCH_ZIP);
    assert_int_equal(b.s.tensor_count, 1);

    WITH_CANARY(old_record_info) r;
    assert_true(ckpt_file_record_count(f) > 0);
    for (size_t i = 0; i < ckpt_file_record_count(f); i++) {
        canary_set(&r, sizeof(r), sizeof(r.s));
        assert_int_equal(ckpt_file_record(f, i, (ckpt_record_info *)&r.s), CKPT_OK);
        canary_check(r.canary);
        assert_non_null(r.s.name);
    }
    canary_set(&r, sizeof(r), 0);
    assert_int_equal(ckpt_file_record(f, 0, (ckpt_record_info *)&r.s), CKPT_ERR_INVALID_ARG);
    ckpt_close(f);
}

static int64_t g_placed_size;

static ckpt_status place(void *user, ckpt_placement *p, ckpt_error *err)
{
    (void)user;
    (void)err;
    g_placed_size = (int64_t)p->struct_size;
    return CKPT_OK;
}

static void test_model_structs(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture();
    ckpt_model *m = ckpt_model_new("Net");
    assert_non_null(m);
    ckpt_error err;
    assert_int_equal(ckpt_model_add(m, "w", CKPT_DTYPE_FLOAT32, 2, g_shape, NULL, 0, NULL, &err),
                     CKPT_OK);

    ckpt_load_options lo;
    ckpt_load_options_default(&lo);
    lo.place = place;
    WITH_CANARY(old_load_report) r;
    canary_set(&r, sizeof(r), sizeof(r.s));
    assert_int_equal(ckpt_model_load(m, f, &lo, (ckpt_load_report *)&r.s, &err), CKPT_OK);
    canary_check(r.canary);
    assert_int_equal(r.s.struct_size, sizeof(r.s));
    assert_int_equal(r.s.loaded, 1);
    assert_int_equal(r.s.missing_count, 0);
    assert_int_equal(g_placed_size, sizeof(ckpt_placement));

    /* a report whose struct_size is not set is refused */
    canary_set(&r, sizeof(r), 0);
    assert_int_equal(ckpt_model_load(m, f, NULL, (ckpt_load_report *)&r.s, &err),
                     CKPT_ERR_INVALID_ARG);

    WITH_CANARY(old_param_info) p;
    canary_set(&p, sizeof(p), sizeof(p.s));
    assert_true(ckpt_model_param(m, 0, (ckpt_param_info *)&p.s));
    canary_check(p.canary);
    assert_string_equal(p.s.name, "w");
    assert_true(p.s.loaded);
    assert_true(memcmp(p.s.data, g_values, sizeof(g_values)) == 0);

    /* optimizer options: an older caller reads and sets fewer of them */
    old_adamw_options oo = {.struct_size = sizeof(oo), .lr = 0.5, .beta1 = 0.8, .beta2 = 0.9,
                            .eps = 1e-6, .weight_decay = 0, .amsgrad = true};
    ckpt_adamw *o = NULL;
    assert_int_equal(ckpt_adamw_new(m, (const ckpt_adamw_options *)&oo, &o, &err), CKPT_OK);
    WITH_CANARY(old_adamw_options) g;
    canary_set(&g, sizeof(g), sizeof(g.s));
    ckpt_adamw_get_options(o, (ckpt_adamw_options *)&g.s);
    canary_check(g.canary);
    assert_true(g.s.lr == 0.5 && g.s.amsgrad);
    ckpt_adamw_options full = {.struct_size = sizeof(full)};
    ckpt_adamw_get_options(o, &full);
    assert_false(full.maximize); /* the field the older caller lacks: its default */
    ckpt_adamw_free(o);

    /* a newer caller's longer options: the fields this library does not know
     * are not read */
    struct {
        ckpt_adamw_options s;
        double newer;
    } no;
    ckpt_adamw_options_default(&no.s);
    no.s.struct_size = sizeof(no);
    no.s.lr = 0.25;
    no.newer = 42;
    assert_int_equal(ckpt_adamw_new(m, &no.s, &o, &err), CKPT_OK);
    ckpt_adamw_get_options(o, &full);
    assert_true(full.lr == 0.25);
    ckpt_adamw_free(o);

    ckpt_model_free(m);
    ckpt_close(f);
}

static void test_checkpoint_info(void **state)
{
    (void)state;
    char dir[96];
    snprintf(dir, sizeof(dir), "%s/m", g_dir);
    ckpt_manager *m = NULL;
    ckpt_error err;
    ckpt_manager_options mo;
    ckpt_manager_options_default(&mo);
    mo.save_flags = CKPT_SAVE_NO_FSYNC;
    assert_int_equal(ckpt_manager_open(dir, &mo, &m, &err), CKPT_OK);
    ckpt_file *f = open_fixture();
    assert_int_equal(ckpt_manager_save(m, 7, ckpt_file_root(f), NULL, 0, NULL, &err), CKPT_OK);
    ckpt_close(f);

    WITH_CANARY(old_checkpoint_info) b;
    canary_set(&b, sizeof(b), sizeof(b.s));
    assert_true(ckpt_manager_get(m, 0, (ckpt_checkpoint_info *)&b.s));
    canary_check(b.canary);
    assert_int_equal(b.s.step, 7);
    assert_true(b.s.last);

    canary_set(&b, sizeof(b), sizeof(b.s));
    assert_int_equal(ckpt_manager_resume(m, NULL, &f, (ckpt_checkpoint_info *)&b.s, &err), CKPT_OK);
    canary_check(b.canary);
    assert_int_equal(b.s.step, 7);
    ckpt_close(f);
    ckpt_manager_close(m);
}

static void test_scan_finding(void **state)
{
    (void)state;
    static const char pickle[] = "\x80\x02" "cos\nsystem\n" "q\x00.";
    ckpt_scan *s = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_scan_memory(pickle, sizeof(pickle) - 1, NULL, &s, &err), CKPT_OK);
    assert_true(ckpt_scan_finding_count(s) > 0);
    for (size_t i = 0; i < ckpt_scan_finding_count(s); i++)
        assert_int_equal(ckpt_scan_finding_at(s, i)->struct_size, sizeof(ckpt_scan_finding));
    ckpt_scan_free(s);
}

/* ---- read structs: an older caller's tensor description ------------------ */

static void test_tensor_desc(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    assert_non_null(t);
    old_tensor_desc d = {.struct_size = sizeof(d), .dtype = CKPT_DTYPE_FLOAT32, .ndim = 2,
                         .shape = g_shape, .data = g_values, .requires_grad = true};
    ckpt_value *v = ckpt_new_tensor(t, (const ckpt_tensor_desc *)&d);
    assert_non_null(v);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(ckpt_value_tensor(v), &ti);
    assert_true(ti.requires_grad);
    assert_false(ti.is_parameter); /* the field the older caller lacks: its default */
    assert_int_equal(ti.numel, 6);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);

    /* dtype, ndim and shape are all a view needs */
    d.struct_size = offsetof(ckpt_tensor_desc, stride);
    assert_non_null(ckpt_new_view(t, v, (const ckpt_tensor_desc *)&d));
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_tree_free(t);

    /* a struct_size short of them, or 0, is refused */
    size_t short_sizes[] = {offsetof(ckpt_tensor_desc, shape), 0};
    for (size_t i = 0; i < 2; i++) {
        t = ckpt_tree_new();
        d.struct_size = short_sizes[i];
        assert_null(ckpt_new_tensor(t, (const ckpt_tensor_desc *)&d));
        assert_int_equal(ckpt_tree_status(t, NULL), CKPT_ERR_INVALID_ARG);
        ckpt_tree_free(t);
    }
}

/* ---- verify's options: progress, and an older caller without it ----------- */

typedef struct seen_progress {
    int calls;
    uint64_t done, total;
} seen_progress;

static void record_progress(void *user, uint64_t done, uint64_t total)
{
    seen_progress *p = user;
    assert_true(done >= p->done && done <= total);
    p->calls++;
    p->done = done;
    p->total = total;
}

static void test_verify_options(void **state)
{
    (void)state;
    ckpt_file *f = open_fixture();
    ckpt_error err;
    uint64_t records = 0;
    for (size_t i = 0; i < ckpt_file_record_count(f); i++) {
        ckpt_record_info ri = {.struct_size = sizeof(ri)};
        assert_int_equal(ckpt_file_record(f, i, &ri), CKPT_OK);
        records += ri.size;
    }
    seen_progress seen = {0};
    ckpt_verify_options o;
    ckpt_verify_options_default(&o);
    assert_int_equal(o.struct_size, sizeof(o));
    assert_null(o.progress);
    o.progress = record_progress;
    o.progress_user = &seen;
    assert_int_equal(ckpt_file_verify_with(f, &o, &err), CKPT_OK);
    assert_int_equal(seen.calls, (int)ckpt_file_record_count(f));
    assert_int_equal(seen.done, records);
    assert_int_equal(seen.total, records);
    /* a caller whose struct ends before progress: no call */
    seen.calls = 0;
    o.struct_size = offsetof(ckpt_verify_options, progress);
    assert_int_equal(ckpt_file_verify_with(f, &o, &err), CKPT_OK);
    assert_int_equal(seen.calls, 0);
    assert_int_equal(ckpt_file_verify_with(f, NULL, &err), CKPT_OK);
    assert_int_equal(ckpt_file_verify_with(NULL, NULL, &err), CKPT_ERR_INVALID_ARG);
    ckpt_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_info),
        cmocka_unit_test(test_file_and_record_info),
        cmocka_unit_test(test_model_structs),
        cmocka_unit_test(test_checkpoint_info),
        cmocka_unit_test(test_scan_finding),
        cmocka_unit_test(test_tensor_desc),
        cmocka_unit_test(test_verify_options),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

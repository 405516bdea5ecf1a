/*
 * test_pickle.c - the data-only pickle interpreter (pickle_read.c) and the
 * value tree (value.c).
 *
 * Reference pickles in tests/unit/pickles/ come from CPython's pickler
 * (tests/unit/make_pickles.py); everything else is written here byte by
 * byte. The expected trees are written out below in a compact notation
 * (see repr()).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core.h"
#include "pickle.h"

/* ======================================================================
 * Harness
 * ====================================================================== */

static ckpt__arena g_arena;
static ckpt_limits g_limits;
static ckpt_error g_err;
static int g_protocol;
static int g_pl_calls;
static const ckpt_value *g_last_pid;

static int setup(void **state)
{
    (void)state;
    ckpt_limits_default(&g_limits);
    ckpt__arena_init(&g_arena, g_limits.max_value_bytes);
    memset(&g_err, 0, sizeof(g_err));
    g_pl_calls = 0;
    g_last_pid = NULL;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ckpt__arena_free(&g_arena);
    return 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A persistent_load that fabricates the storage a torch file would give:
 * ('storage', <storage class>, key, location, numel) -> numel elements. */
static ckpt_status fake_load(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                             uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    (void)user;
    g_pl_calls++;
    g_last_pid = pid;
    ckpt_dtype dtype = CKPT_DTYPE_FLOAT32;
    uint64_t numel = 6;
    bool untyped = false;
    const char *key = "0";
    if (pid->kind == CKPT_KIND_TUPLE && pid->u.seq.len >= 5) {
        ckpt_dtype d = ckpt__storage_type_dtype(pid->u.seq.items[1], &untyped);
        if (d == CKPT_DTYPE_INVALID)
            return ckpt__fail(err, CKPT_ERR_FORMAT, ctx->record, offset, "not a storage class");
        dtype = d;
        if (pid->u.seq.items[2]->kind == CKPT_KIND_STR)
            key = pid->u.seq.items[2]->u.s.ptr;
        if (pid->u.seq.items[4]->kind == CKPT_KIND_INT && pid->u.seq.items[4]->u.i >= 0)
            numel = (uint64_t)pid->u.seq.items[4]->u.i;
    }
    ckpt__storage *s = ckpt__arena_alloc(ctx->arena, sizeof(*s));
    ckpt_value *v = ckpt__value_new(ctx->arena, CKPT__KIND_STORAGE);
    if (!s || !v)
        return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
    s->key = key;
    s->location = "cpu";
    s->dtype = dtype;
    s->untyped = untyped;
    s->nbytes = numel * ckpt_dtype_size(dtype);
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    v->u.storage = s;
    *out = v;
    return CKPT_OK;
}

static ckpt_status run_ex(const void *data, size_t size, ckpt__persistent_load_fn pl,
                          size_t *consumed, ckpt_value **out)
{
    ckpt__pickle_ctx ctx = {
        .limits = &g_limits, .arena = &g_arena, .record = "test.pkl",
        .persistent_load = pl, .user = NULL, .protocol = 42,
    };
    memset(&g_err, 0, sizeof(g_err));
    ckpt_status st = ckpt__unpickle(&ctx, data, size, consumed, out, &g_err);
    g_protocol = ctx.protocol;
    return st;
}

static ckpt_value *ok_ex(const void *data, size_t size, ckpt__persistent_load_fn pl)
{
    ckpt_value *v = NULL;
    ckpt_status st = run_ex(data, size, pl, NULL, &v);
    if (st != CKPT_OK)
        print_error("unexpected %s at %llu: %s\n", ckpt_status_name(st),
                    (unsigned long long)g_err.offset, g_err.message);
    assert_int_equal(st, CKPT_OK);
    assert_non_null(v);
    return v;
}

/* Expects a failure with this status, at this opcode offset (UINT64_MAX:
 * any), whose message holds text (NULL: any). */
static void fails_ex(const void *data, size_t size, ckpt__persistent_load_fn pl,
                     ckpt_status status, uint64_t offset, const char *text)
{
    ckpt_value *v = (ckpt_value *)1;
    ckpt_status st = run_ex(data, size, pl, NULL, &v);
    if (st != status || (offset != UINT64_MAX && g_err.offset != offset) ||
        (text && !strstr(g_err.message, text)))
        print_error("got %s at %llu: '%s'; wanted %s at %lld with '%s'\n", ckpt_status_name(st),
                    (unsigned long long)g_err.offset, g_err.message, ckpt_status_name(status),
                    offset == UINT64_MAX ? -1LL : (long long)offset, text ? text : "");
    assert_int_equal(st, status);
    assert_null(v);
    assert_int_equal(g_err.status, status);
    assert_string_equal(g_err.record, "test.pkl");
    if (offset != UINT64_MAX)
        assert_int_equal(g_err.offset, offset);
    if (text)
        assert_non_null(strstr(g_err.message, text));
}

/* Pickle bytes from a string literal (may hold NULs). */
#define P(s) (const uint8_t *)(s), sizeof(s) - 1
#define OK(s) ok_ex(P(s), NULL)
#define OKP(s) ok_ex(P(s), fake_load)
#define FAILS(s, status, offset, text) fails_ex(P(s), NULL, status, offset, text)
#define FAILSP(s, status, offset, text) fails_ex(P(s), fake_load, status, offset, text)
#define ANY UINT64_MAX

/* ---- a compact, exact notation for trees ------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) CKPT_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    sb_put(b, tmp, (size_t)n);
}

static void sb_escaped(sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\')
            sb_printf(b, "\\x%02x", c);
        else
            sb_put(b, (const char *)&c, 1);
    }
}

static void repr_at(sbuf *b, const ckpt_value *v, const ckpt_value **path, int depth);

static void repr_items(sbuf *b, const ckpt_value *v, const ckpt_value **path, int depth,
                       const char *open, const char *close)
{
    sb_put(b, open, strlen(open));
    for (size_t i = 0; i < v->u.seq.len; i++) {
        if (i)
            sb_put(b, ", ", 2);
        repr_at(b, v->u.seq.items[i], path, depth + 1);
    }
    sb_put(b, close, strlen(close));
}

/* Python-like, with: big(two's complement LE hex), floats as %.17g,
 * c(re,im), text bytes escaped as \xNN outside printable ASCII, set{...},
 * odict{...}, |state=..., ... for a cycle. */
static void repr_at(sbuf *b, const ckpt_value *v, const ckpt_value **path, int depth)
{
    if (!v) {
        sb_put(b, "NULL", 4);
        return;
    }
    for (int i = 0; i < depth; i++) {
        if (path[i] == v) {
            sb_put(b, "...", 3);
            return;
        }
    }
    assert_true(depth < 64);
    path[depth] = v;
    switch (v->kind) {
    case CKPT_KIND_NONE: sb_printf(b, "None"); break;
    case CKPT_KIND_BOOL: sb_printf(b, "%s", v->u.b ? "True" : "False"); break;
    case CKPT_KIND_INT: sb_printf(b, "%lld", (long long)v->u.i); break;
    case CKPT_KIND_BIGINT:
        sb_printf(b, "big(");
        for (size_t i = 0; i < v->u.s.len; i++)
            sb_printf(b, "%02x", (unsigned char)v->u.s.ptr[i]);
        sb_printf(b, ")");
        break;
    case CKPT_KIND_FLOAT: sb_printf(b, "%.17g", v->u.f); break;
    case CKPT_KIND_COMPLEX: sb_printf(b, "c(%.17g,%.17g)", v->u.c.re, v->u.c.im); break;
    case CKPT_KIND_STR:
        sb_put(b, "'", 1);
        sb_escaped(b, v->u.s.ptr, v->u.s.len);
        sb_put(b, "'", 1);
        break;
    case CKPT_KIND_BYTES:
        sb_put(b, "b'", 2);
        sb_escaped(b, v->u.s.ptr, v->u.s.len);
        sb_put(b, "'", 1);
        break;
    case CKPT_KIND_LIST: repr_items(b, v, path, depth, "[", "]"); break;
    case CKPT_KIND_TUPLE: repr_items(b, v, path, depth, "(", ")"); break;
    case CKPT_KIND_SET: repr_items(b, v, path, depth, "set{", "}"); break;
    case CKPT_KIND_SIZE: repr_items(b, v, path, depth, "Size(", ")"); break;
    case CKPT_KIND_DICT:
    case CKPT_KIND_ORDERED_DICT:
        sb_printf(b, "%s{", v->kind == CKPT_KIND_ORDERED_DICT ? "odict" : "");
        for (size_t i = 0; i < v->u.dict.len; i++) {
            if (i)
                sb_put(b, ", ", 2);
            repr_at(b, v->u.dict.keys[i], path, depth + 1);
            sb_put(b, ": ", 2);
            repr_at(b, v->u.dict.vals[i], path, depth + 1);
        }
        sb_put(b, "}", 1);
        if (v->u.dict.state) {
            sb_printf(b, "|state=");
            repr_at(b, v->u.dict.state, path, depth + 1);
        }
        break;
    case CKPT_KIND_DEVICE: sb_printf(b, "device(%s)", v->u.s.ptr); break;
    case CKPT_KIND_DTYPE: sb_printf(b, "dtype(%s)", ckpt_dtype_name(v->u.dtype)); break;
    case CKPT_KIND_GLOBAL: sb_printf(b, "global(%s)", v->u.s.ptr); break;
    case CKPT_KIND_TENSOR: {
        const ckpt_tensor *t = v->u.tensor.t;
        sb_printf(b, "tensor(%s, [", ckpt_dtype_name(t->dtype));
        for (uint32_t i = 0; i < t->ndim; i++)
            sb_printf(b, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        sb_printf(b, "], [");
        for (uint32_t i = 0; i < t->ndim; i++)
            sb_printf(b, "%s%lld", i ? ", " : "", (long long)t->stride[i]);
        sb_printf(b, "], off=%lld%s%s%s)", (long long)t->storage_offset,
                  t->requires_grad ? ", grad" : "", t->is_parameter ? ", param" : "",
                  t->storage ? "" : ", meta");
        if (v->u.tensor.state) {
            sb_printf(b, "|state=");
            repr_at(b, v->u.tensor.state, path, depth + 1);
        }
        break;
    }
    case CKPT__KIND_STORAGE: sb_printf(b, "storage"); break;
    default: sb_printf(b, "?%d", v->kind); break;
    }
}

static char *repr(const ckpt_value *v)
{
    sbuf b = {0};
    const ckpt_value *path[64];
    repr_at(&b, v, path, 0);
    return b.p;
}

static void assert_repr(const ckpt_value *v, const char *expected)
{
    char *got = repr(v);
    if (strcmp(got, expected) != 0) {
        size_t i = 0;
        while (got[i] && got[i] == expected[i])
            i++;
        print_error("repr differs at char %zu:\n  got: ...%.80s\n want: ...%.80s\n", i,
                    got + (i > 20 ? i - 20 : 0), expected + (i > 20 ? i - 20 : 0));
    }
    assert_string_equal(got, expected);
    free(got);
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *size = (size_t)(n > 0 ? n : 0);
    return p;
}

/* tests/unit/pickles/<name>, found through CKPT_SOURCE_DIR or this file. */
static uint8_t *read_pickle(const char *name, size_t *size)
{
    char path[4096];
    const char *src = getenv("CKPT_SOURCE_DIR");
    if (src) {
        snprintf(path, sizeof(path), "%s/tests/unit/pickles/%s", src, name);
    } else {
        const char *here = __FILE__;
        const char *slash = strrchr(here, '/');
        snprintf(path, sizeof(path), "%.*s/pickles/%s", slash ? (int)(slash - here) : 1,
                 slash ? here : ".", name);
    }
    uint8_t *p = read_file(path, size);
    if (!p)
        print_error("cannot read %s\n", path);
    assert_non_null(p);
    return p;
}

static const ckpt_value *get(const ckpt_value *d, const char *key)
{
    const ckpt_value *v = ckpt_value_get(d, key);
    if (!v)
        print_error("no key '%s'\n", key);
    assert_non_null(v);
    return v;
}

/* ======================================================================
 * Reference pickles from CPython, protocols 0-5
 * ====================================================================== */

/* plain_values() of make_pickles.py, in the notation of repr() above */
static const char VALUES_REPR[] =
    "{'none': None, 'true': True, 'false': False, 'ints': [0, 1, -1, 255, 256, 65535, 65536, "
    "-65536, 2147483647, -2147483648, 2147483648, 9223372036854775807, -9223372036854775808, "
    "big(000000000000008000), big(ffffffffffffff7fff), big(000000000000000001), "
    "big(00000000000000000000000010), big(000000000000000000000000f0), "
    "big(000000000061f5b9abbfa45cc3f129631d)], 'floats': [0, -0, 1.5, -2.25, "
    "0.10000000000000001, 1.0000000000000001e+300, 4.9406564584124654e-324, inf, -inf, nan], "
    "'strs': ['', 'ascii', 'caf\\xc3\\xa9', '\\xe2\\x82\\xac', '\\xf0\\x9f\\x98\\x80', '\\xed"
    "\\xa0\\x80', 'a\\x00b', '\\x5c', 'line\\x0abreak', 'quote\\x27\"'], 'bytes': [b'', b'\\x00"
    "\\xffab', b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\x09\\x0a\\x0b\\x0c\\x0d\\x0e\\x0f"
    "\\x10\\x11\\x12\\x13\\x14\\x15\\x16\\x17\\x18\\x19\\x1a\\x1b\\x1c\\x1d\\x1e\\x1f !\"#$%&"
    "\\x27()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ["
    "\\x5c]^_`abcdefghijklmnopqrstuvwxyz{|}~\\x7f\\x80\\x81\\x82\\x83\\x84\\x85\\x86\\x87\\x88"
    "\\x89\\x8a\\x8b\\x8c\\x8d\\x8e\\x8f\\x90\\x91\\x92\\x93\\x94\\x95\\x96\\x97\\x98\\x99\\x9a"
    "\\x9b\\x9c\\x9d\\x9e\\x9f\\xa0\\xa1\\xa2\\xa3\\xa4\\xa5\\xa6\\xa7\\xa8\\xa9\\xaa\\xab\\xac"
    "\\xad\\xae\\xaf\\xb0\\xb1\\xb2\\xb3\\xb4\\xb5\\xb6\\xb7\\xb8\\xb9\\xba\\xbb\\xbc\\xbd\\xbe"
    "\\xbf\\xc0\\xc1\\xc2\\xc3\\xc4\\xc5\\xc6\\xc7\\xc8\\xc9\\xca\\xcb\\xcc\\xcd\\xce\\xcf\\xd0"
    "\\xd1\\xd2\\xd3\\xd4\\xd5\\xd6\\xd7\\xd8\\xd9\\xda\\xdb\\xdc\\xdd\\xde\\xdf\\xe0\\xe1\\xe2"
    "\\xe3\\xe4\\xe5\\xe6\\xe7\\xe8\\xe9\\xea\\xeb\\xec\\xed\\xee\\xef\\xf0\\xf1\\xf2\\xf3\\xf4"
    "\\xf5\\xf6\\xf7\\xf8\\xf9\\xfa\\xfb\\xfc\\xfd\\xfe\\xff'], 'bytearray': b'xyz\\x80', "
    "'tuples': ((), (1), (1, 2), (1, 2, 3), (1, 2, 3, 4)), 'set': set{1, 2, 3}, "
    "'frozenset': set{7}, 'nested': {'a': [1, [2, [3, {'b': (4)}]]]}, "
    "'odict': odict{'weight': 1, 'bias': 2}|state={'_metadata': odict{'': {'version': 1}, "
    "'fc': {'version': 2}}}, 'shared': [[1, 2], [1, 2]], 'recursive': [1, ...], "
    "'complex': c(1.5,-2), 'keys': {1: 'int', 2.5: 'float', (1, 2): 'tuple', b'k': 'bytes', "
    "None: 'none'}, 'many': {'k0': 0, 'k1': 1, 'k2': 2, 'k3': 3, 'k4': 4, 'k5': 5, 'k6': 6, "
    "'k7': 7, 'k8': 8, 'k9': 9, 'k10': 10, 'k11': 11, 'k12': 12, 'k13': 13, 'k14': 14, "
    "'k15': 15, 'k16': 16, 'k17': 17, 'k18': 18, 'k19': 19, 'k20': 20, 'k21': 21, 'k22': 22, "
    "'k23': 23, 'k24': 24, 'k25': 25, 'k26': 26, 'k27': 27, 'k28': 28, 'k29': 29, 'k30': 30, "
    "'k31': 31, 'k32': 32, 'k33': 33, 'k34': 34, 'k35': 35, 'k36': 36, 'k37': 37, 'k38': 38, "
    "'k39': 39}}";

static void check_values_tree(const ckpt_value *root)
{
    assert_repr(root, VALUES_REPR);

    /* the memo shares objects, as Python does */
    const ckpt_value *shared = get(root, "shared");
    assert_ptr_equal(ckpt_value_item(shared, 0), ckpt_value_item(shared, 1));
    const ckpt_value *rec = get(root, "recursive");
    assert_int_equal(ckpt_value_kind(rec), CKPT_KIND_LIST);
    assert_ptr_equal(ckpt_value_item(rec, 1), rec);

    /* accessors */
    const ckpt_value *ints = get(root, "ints");
    assert_int_equal(ckpt_value_len(ints), 19);
    assert_int_equal(ckpt_value_int(ckpt_value_item(ints, 11)), INT64_MAX);
    assert_int_equal(ckpt_value_int(ckpt_value_item(ints, 12)), INT64_MIN);
    assert_int_equal(ckpt_value_kind(ckpt_value_item(ints, 13)), CKPT_KIND_BIGINT);
    size_t len;
    const char *big = ckpt_value_str(ckpt_value_item(ints, 13), &len);
    assert_int_equal(len, 9);
    assert_memory_equal(big, "\0\0\0\0\0\0\0\x80\0", 9);

    const ckpt_value *floats = get(root, "floats");
    assert_true(signbit(ckpt_value_float(ckpt_value_item(floats, 1))));
    assert_true(isnan(ckpt_value_float(ckpt_value_item(floats, 9))));
    assert_true(ckpt_value_float(ckpt_value_item(floats, 6)) == 5e-324);

    const ckpt_value *odict = get(root, "odict");
    assert_int_equal(ckpt_value_kind(odict), CKPT_KIND_ORDERED_DICT);
    const ckpt_value *meta = get(ckpt_value_state(odict), "_metadata");
    assert_int_equal(ckpt_value_int(get(get(meta, "fc"), "version")), 2);

    /* a dict past the scan size is looked up through its index */
    const ckpt_value *many = get(root, "many");
    assert_true(many->u.dict.index_cap > 0);
    char key[16];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(ckpt_value_int(get(many, key)), i);
    }
    assert_null(ckpt_value_get(many, "k40"));

    const ckpt_value *strs = get(root, "strs");
    const char *s = ckpt_value_str(ckpt_value_item(strs, 6), &len);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "a\0b", 4); /* NUL inside, NUL-terminated */
    double re, im;
    ckpt_value_complex(get(root, "complex"), &re, &im);
    assert_true(re == 1.5 && im == -2.0);
}

static void test_reference_values(void **state)
{
    (void)state;
    for (int proto = 0; proto <= 5; proto++) {
        char name[32];
        size_t size, used = 0;
        snprintf(name, sizeof(name), "values_p%d.pkl", proto);
        uint8_t *data = read_pickle(name, &size);
        ckpt_value *root = NULL;
        ckpt_status st = run_ex(data, size, NULL, &used, &root);
        if (st != CKPT_OK)
            print_error("%s: %s at %llu: %s\n", name, ckpt_status_name(st),
                        (unsigned long long)g_err.offset, g_err.message);
        assert_int_equal(st, CKPT_OK);
        assert_int_equal(used, size);
        assert_int_equal(g_protocol, proto >= 2 ? proto : -1);
        check_values_tree(root);
        free(data);
    }
}

static void test_reference_tensors(void **state)
{
    (void)state;
    size_t size;
    uint8_t *data = read_pickle("tensors_p2.pkl", &size);
    ckpt_value *root = ok_ex(data, size, fake_load);
    assert_repr(root, "{'w': tensor(float32, [2, 3], [3, 1], off=0), "
                      "'row': tensor(float32, [3], [1], off=3), "
                      "'param': tensor(float32, [3, 2], [2, 1], off=0, param), "
                      "'flat': tensor(float32, [6], [1], off=0)}");
    assert_int_equal(g_pl_calls, 4);
    const ckpt_tensor *t = ckpt_value_tensor(get(root, "row"));
    assert_non_null(t);
    assert_int_equal(t->numel, 3); /* filled by ckpt__tensor_validate */
    assert_non_null(t->storage);
    assert_string_equal(t->storage->key, "0");
    /* the persistent id reached the callback as the tuple torch wrote */
    assert_repr(g_last_pid, "('storage', global(torch.FloatStorage), '0', 'cpu', 6)");
    /* without a callback it is a plain pickle with a persistent id */
    fails_ex(data, size, NULL, CKPT_ERR_FORMAT, 110, "persistent id in a plain pickle");
    free(data);
}

/* ======================================================================
 * Opcode families, written by hand
 * ====================================================================== */

static void test_protocol0_text(void **state)
{
    (void)state;
    ckpt_value *v = OK("(lp0\nI1\naI01\naI00\naI-42\naL12345678901234567890L\naL-5\na"
                       "I99999999999999999999\naF1.5\naF-1e-05\naFinf\naFnan\naN"
                       "aS'a\\n\\x41\\101\\''\naS\"q\\\"\"\naS'\\xe9'\n"
                       "aV\\u20ac\\U0001f600\\\\x\\\\u0041\xe9\na"
                       "g0\na.");
    assert_repr(v,
                "[1, True, False, -42, big(d20a1feb8ca954ab00), -5, big(ffff0f632d5ec76b05), 1.5, "
                "-1.0000000000000001e-05, inf, nan, None, 'a\\x0aAA\\x27', 'q\"', '\\xc3\\xa9', "
                "'\\xe2\\x82\\xac\\xf0\\x9f\\x98\\x80\\x5c\\x5cx\\x5c\\x5cu0041\\xc3\\xa9', "
                "...]");
    assert_int_equal(g_protocol, -1);
    /* dicts, tuples, PUT/GET, POP_MARK, DUP */
    v = OK("(dp0\nVa\np1\n(I1\nI2\ntp2\nsVb\ng2\ns(I7\n1(I8\n2t0(0.");
    assert_repr(v, "{'a': (1, 2), 'b': (1, 2)}");
    v = OK("(I8\n2t.");
    assert_repr(v, "(8, 8)");
    FAILS("I12a\n.", CKPT_ERR_FORMAT, 0, "INT: invalid integer literal");
    FAILS("F1.5x\n.", CKPT_ERR_FORMAT, 0, "FLOAT: invalid float literal");
    FAILS("F1e999\n.", CKPT_ERR_FORMAT, 0, "out of range");
    FAILS("F0x10\n.", CKPT_ERR_FORMAT, 0, "FLOAT");
    FAILS("S'abc\n.", CKPT_ERR_FORMAT, 0, "STRING: the argument must be quoted");
    FAILS("S'\\x4'\n.", CKPT_ERR_FORMAT, 0, "invalid \\x escape");
    FAILS("V\\u12\n.", CKPT_ERR_FORMAT, 0, "truncated \\u escape");
    FAILS("V\\U00110000\n.", CKPT_ERR_FORMAT, 0, "not a code point");
    FAILS("I1", CKPT_ERR_FORMAT, 0, "INT: text argument has no newline");
    /* CPython's digit limit for int() */
    char big[5000 + 3];
    big[0] = 'L';
    memset(big + 1, '7', 5000);
    big[5001] = '\n';
    big[5002] = '.';
    fails_ex(big, sizeof(big), NULL, CKPT_ERR_LIMIT, 0, "digits");
    memset(big + 1, '9', 4300);
    big[4301] = '\n';
    big[4302] = '.';
    ckpt_value *b = ok_ex(big, 4303, NULL);
    assert_int_equal(b->kind, CKPT_KIND_BIGINT);
    assert_true(b->u.s.len > 1700 && b->u.s.len < 1800);
}

static void test_ints(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x02(J\xff\xff\xff\xff" "K\xff" "M\xff\xff"
                       "J\x00\x00\x00\x80" "\x8a\x00" "\x8a\x02\xff\xff" "\x8a\x01\x80"
                       "\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"
                       "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00"
                       "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff"
                       "\x8b\x03\x00\x00\x00\x01\x02\x03" "\x8b\x00\x00\x00\x00" "l.");
    assert_repr(v, "[-1, 255, 65535, -2147483648, 0, -1, -128, 9223372036854775807, "
                   "big(000000000000008000), -9223372036854775808, 197121, 0]");
    /* the legacy torch magic number: a 10-byte LONG1 */
    v = OK("\x80\x02\x8a\x0al\xfc\x9c" "F\xf9 j\xa8P\x19.");
    assert_int_equal(ckpt_value_kind(v), CKPT_KIND_BIGINT);
    assert_repr(v, "big(6cfc9c46f9206aa85019)");
    FAILS("\x80\x02\x8b\xff\xff\xff\xff.", CKPT_ERR_FORMAT, 2, "LONG4: negative byte count");
    FAILS("\x80\x02\x8a\x05\x01\x02.", CKPT_ERR_FORMAT, 2, "LONG1: length 5 runs past the end");
    FAILS("\x80\x02J\x01\x02", CKPT_ERR_FORMAT, 2, "BININT: argument needs 4 bytes");
}

static void test_floats(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x02(G?\xf8\x00\x00\x00\x00\x00\x00"
                       "G\x80\x00\x00\x00\x00\x00\x00\x00"
                       "G\x7f\xf0\x00\x00\x00\x00\x00\x00"
                       "G\x00\x00\x00\x00\x00\x00\x00\x01" "l.");
    assert_repr(v, "[1.5, -0, inf, 4.9406564584124654e-324]");
    assert_int_equal(ckpt_value_kind(ckpt_value_item(v, 0)), CKPT_KIND_FLOAT);
}

static void test_strings_and_bytes(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x04(" "\x8c\x03" "abc" "X\x03\x00\x00\x00\xed\xa0\x80"
                       "\x8d\x02\x00\x00\x00\x00\x00\x00\x00\xc3\xa9"
                       "U\x02\xc3\xa9" "U\x01\xe9" "T\x01\x00\x00\x00z"
                       "C\x02\x00\xff" "B\x01\x00\x00\x00" "b"
                       "\x8e\x00\x00\x00\x00\x00\x00\x00\x00"
                       "\x96\x01\x00\x00\x00\x00\x00\x00\x00" "q" "l.");
    assert_repr(v, "['abc', '\\xed\\xa0\\x80', '\\xc3\\xa9', '\\xc3\\xa9', '\\xc3\\xa9', 'z', "
                   "b'\\x00\\xff', b'b', b'', b'q']");
    assert_int_equal(ckpt_value_kind(ckpt_value_item(v, 9)), CKPT_KIND_BYTES);
    FAILS("\x80\x04\x8c\x02\xc3(.", CKPT_ERR_FORMAT, 2,
          "SHORT_BINUNICODE: invalid UTF-8 at byte 0");
    FAILS("\x80\x04\x8c\x02\xc0\x80.", CKPT_ERR_FORMAT, 2, "invalid UTF-8"); /* overlong */
    FAILS("\x80\x04\x8c\x04\xf4\x90\x80\x80.", CKPT_ERR_FORMAT, 2, "invalid UTF-8");
    FAILS("\x80\x02T\xff\xff\xff\xff.", CKPT_ERR_FORMAT, 2, "BINSTRING: negative byte count");
    /* huge declared lengths are errors, never allocations */
    FAILS("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff" "abc.", CKPT_ERR_FORMAT, 2,
          "BINUNICODE8: length 18446744073709551615 runs past the end of the pickle "
          "(4 bytes left)");
    FAILS("\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x80.", CKPT_ERR_FORMAT, 2, "BINBYTES8: length");
    FAILS("\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\x7f.", CKPT_ERR_FORMAT, 2,
          "BYTEARRAY8: length");
    FAILS("\x80\x03X\xff\xff\xff\xff.", CKPT_ERR_FORMAT, 2,
          "BINUNICODE: length 4294967295 runs past the end of the pickle (1 bytes left)");
    FAILS("\x80\x03\x42\xfe\xff\xff\xff.", CKPT_ERR_FORMAT, 2, "BINBYTES: length");
}

static void test_containers(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x04()K\x01\x85K\x01K\x02\x86K\x01K\x02K\x03\x87(K\x01K\x02K\x03K\x04t"
                       "]K\x05" "a](K\x06K\x07" "e(K\x08l}K\x01K\x02s}(K\x03K\x04K\x05K\x06u"
                       "(K\x07K\x08" "d\x8f(K\x09K\x0a\x90(K\x0b\x91(t" "l.");
    assert_repr(v, "[(), (1), (1, 2), (1, 2, 3), (1, 2, 3, 4), [5], [6, 7], [8], {1: 2}, "
                   "{3: 4, 5: 6}, {7: 8}, set{9, 10}, set{11}, ()]");
    /* POP, POP at a MARK drops the mark, DUP, POP_MARK */
    v = OK("\x80\x02K\x01K\x02" "0(0K\x03(K\x04K\x05" "1\x86.");
    assert_repr(v, "(1, 3)");
    v = OK("\x80\x02]2K\x01" "a.");
    assert_repr(v, "[1]");
    /* Python semantics: an equal key keeps its place and gets the new value */
    v = OK("\x80\x02}(K\x01X\x01\x00\x00\x00" "aX\x01\x00\x00\x00" "bK\x02"
           "G?\xf0\x00\x00\x00\x00\x00\x00" "X\x01\x00\x00\x00" "c\x88X\x01\x00\x00\x00" "d"
           "u.");
    assert_repr(v, "{1: 'd', 'b': 2}");
    FAILS("\x80\x02(K\x01K\x02K\x03" "d.", CKPT_ERR_FORMAT, 9, "DICT: odd number of items");
    FAILS("\x80\x02}K\x01" "a.", CKPT_ERR_FORMAT, 5, "APPEND on a dict is not allowed");
    FAILS("\x80\x02](K\x01K\x02u.", CKPT_ERR_FORMAT, 8, "SETITEMS on a list is not allowed");
    FAILS("\x80\x02]K\x01K\x02s.", CKPT_ERR_FORMAT, 7, "SETITEM on a list is not allowed");
    FAILS("\x80\x04](K\x01\x90.", CKPT_ERR_FORMAT, 6, "ADDITEMS on a list is not allowed");
    FAILS("\x80\x04)(K\x01" "e.", CKPT_ERR_FORMAT, 6, "APPENDS on a tuple is not allowed");
    FAILS("\x80\x02(K\x01" "e.", CKPT_ERR_FORMAT, 5, "APPENDS: no container below the MARK");
    FAILS("\x80\x02K\x01t.", CKPT_ERR_FORMAT, 4, "TUPLE: no MARK on the stack");
    FAILS("\x80\x02K\x01(\x86.", CKPT_ERR_FORMAT, 5,
          "TUPLE2: needs 2 stack items above the MARK, 0");
    FAILS("\x80\x02" "0.", CKPT_ERR_FORMAT, 2, "POP: needs 1 stack item");
    FAILS("\x80\x02" "2.", CKPT_ERR_FORMAT, 2, "DUP");
    FAILS("\x80\x02" "a.", CKPT_ERR_FORMAT, 2, "APPEND: needs 2 stack items");
}

static void test_memo(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x04K\x01\x94K\x02\x94K\x03r\xe8\x03\x00\x00" "0K\x04\x94"
                       "(h\x00h\x01j\xe8\x03\x00\x00h\x03l.");
    /* MEMOIZE uses len(memo): after 0, 1 and 1000 the next is 3 */
    assert_int_equal(ckpt_value_len(v), 4);
    assert_repr(v, "[1, 2, 3, 4]");
    v = OK("\x80\x02K\x07q\x05" "0h\x05K\x08q\x05" "0h\x05\x86.");
    assert_repr(v, "(7, 8)");
    FAILS("\x80\x02h\x03.", CKPT_ERR_FORMAT, 2, "BINGET: memo key 3 was never stored");
    FAILS("\x80\x02j\x00\x00\x01\x00.", CKPT_ERR_FORMAT, 2, "memo key 65536 was never stored");
    FAILS("g7\n.", CKPT_ERR_FORMAT, 0, "GET: memo key 7 was never stored");
    FAILS("N" "p-1\n.", CKPT_ERR_FORMAT, 1, "PUT: invalid memo key");
    FAILS("\x80\x02q\x00.", CKPT_ERR_FORMAT, 2, "BINPUT: needs 1 stack item");
    FAILS("\x80\x02Nr\xff\xff\xff\xff.", CKPT_ERR_LIMIT, 3,
          "memo index 4294967295 exceeds max_memo_entries");
}

static void test_framing_and_stop(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01.");
    assert_int_equal(ckpt_value_int(v), 1);
    assert_int_equal(g_protocol, 4);
    FAILS("\x80\x04\x95\x09\x00\x00\x00", CKPT_ERR_FORMAT, 2, "FRAME: argument needs 8 bytes");
    FAILS("\x80\x06K\x01.", CKPT_ERR_UNSUPPORTED, 0, "PROTO: pickle protocol 6");
    FAILS("\x80\x02.", CKPT_ERR_FORMAT, 2, "STOP: the stack is empty");
    FAILS("\x80\x02K\x01(.", CKPT_ERR_FORMAT, 5, "STOP: the stack is empty");
    FAILS("\x80\x02K\x01", CKPT_ERR_FORMAT, 4, "without a STOP");
    FAILS("", CKPT_ERR_FORMAT, 0, "without a STOP");
    /* extra items and marks are ignored, as CPython does */
    v = OK("\x80\x02K\x01(K\x02.");
    assert_int_equal(ckpt_value_int(v), 2);
    /* pickles back to back: one at a time, *consumed says where the next starts */
    static const uint8_t two[] = "\x80\x02K\x01.\x80\x02K\x02.";
    size_t used = 0;
    ckpt_value *out = NULL;
    assert_int_equal(run_ex(two, sizeof(two) - 1, NULL, &used, &out), CKPT_OK);
    assert_int_equal(used, 5);
    assert_int_equal(run_ex(two + used, sizeof(two) - 1 - used, NULL, &used, &out), CKPT_OK);
    assert_int_equal(ckpt_value_int(out), 2);
    FAILS("\x80\x02\xff.", CKPT_ERR_FORMAT, 2, "unknown opcode 0xff");
    FAILS("\x80\x02K\x01\x99.", CKPT_ERR_FORMAT, 4, "unknown opcode 0x99");
    FAILS("\x80\x02\x82\x01.", CKPT_ERR_UNSUPPORTED, 2, "EXT1");
    FAILS("\x80\x02\x84\x01\x00\x00\x00.", CKPT_ERR_UNSUPPORTED, 2, "EXT4");
    FAILS("\x80\x05\x97.", CKPT_ERR_UNSUPPORTED, 2, "NEXT_BUFFER");
    FAILS("\x80\x05K\x01\x98.", CKPT_ERR_UNSUPPORTED, 4, "READONLY_BUFFER");
}

/* FRAME: what every reader reads the same way is accepted, the rest is
 * refused with the offset of the opcode (rules (a)-(d) in pickle_read.c). */
#define FR(n) "\x95" n "\x00\x00\x00\x00\x00\x00\x00"
static void test_frames(void **state)
{
    (void)state;
    /* opcodes outside frames, and an argument that starts right at a
     * frame's end, read on from the bytes that follow */
    assert_repr(OK("\x80\x04" FR("\x01") "]K\x01" "a."), "[1]");
    assert_int_equal(ckpt_value_int(OK("\x80\x04" FR("\x01") "K\x01.")), 1);
    assert_repr(OK("\x80\x04" FR("\x01") "]" FR("\x03") "K\x01" "a" FR("\x01") "."), "[1]");
    assert_int_equal(ckpt_value_int(OK("\x80\x04" FR("\x00") "K\x07.")), 7);
    /* a large payload between frames, as CPython's pickler writes it */
    assert_repr(OK("\x80\x04" FR("\x01") "(\x8e\x03\x00\x00\x00\x00\x00\x00\x00" "abc"
                   FR("\x02") "l."), "[b'abc']");
    /* text lines inside a frame */
    assert_int_equal(ckpt_value_int(OK("\x80\x04" FR("\x05") "I12\n.")), 12);
    assert_int_equal(ckpt_value_int(OK(FR("\x0a") "K\x05p0\n0g0\n.")), 5);

    /* (a) a frame past the end of the data */
    FAILS("\x80\x04" FR("\x09") "K\x01.", CKPT_ERR_FORMAT, 2,
          "FRAME: the frame of 9 bytes runs past the end of the data (3 bytes left)");
    FAILS("\x80\x04" FR("\xff\xff\xff\xff\xff\xff\xff") "K\x01.", CKPT_ERR_FORMAT, 2,
          "runs past the end of the data");
    /* (b) a frame inside a frame */
    FAILS("\x80\x04" FR("\x04") "]" FR("\x02") "K\x01" "a.", CKPT_ERR_FORMAT, 12,
          "FRAME: a new frame begins while the current one has 2 unread bytes (it ends at "
          "byte 15)");
    FAILS("\x80\x04" FR("\x0a") "\x95\x01\x00\x00\x00\x00\x00\x00\x00N.", CKPT_ERR_FORMAT, 11,
          "a new frame begins");
    /* (c) arguments across a frame's end: fixed size, length, payload, text */
    FAILS("\x80\x04" FR("\x02") "M\x01\x00.", CKPT_ERR_FORMAT, 11,
          "BININT2: the argument of 2 bytes runs past the end of the frame (byte 13, 1 "
          "left in it)");
    FAILS("\x80\x04" FR("\x03") "X\x01\x00\x00\x00" "a.", CKPT_ERR_FORMAT, 11,
          "BINUNICODE: the argument of 4 bytes runs past the end of the frame");
    FAILS("\x80\x04" FR("\x06") "X\x03\x00\x00\x00" "abc.", CKPT_ERR_FORMAT, 11,
          "BINUNICODE: the argument of 3 bytes runs past the end of the frame (byte 17");
    FAILS("\x80\x04" FR("\x0a") "\x8e\x03\x00\x00\x00\x00\x00\x00\x00" "abc.",
          CKPT_ERR_FORMAT, 11, "BINBYTES8: the argument of 3 bytes");
    FAILS("\x80\x04" FR("\x03") "I12\n.", CKPT_ERR_FORMAT, 11,
          "INT: the text argument has no newline in the 2 bytes left in the frame (it ends at "
          "byte 14)");
    FAILS(FR("\x0a") "cposix\nsystem\n.", CKPT_ERR_FORMAT, 9, "GLOBAL: the text argument");
    FAILS(FR("\x03") "N" "p0\n.", CKPT_ERR_FORMAT, 10, "PUT: the text argument");
    /* (d) STOP inside a frame that runs on */
    FAILS("\x80\x04" FR("\x04") "K\x01.N", CKPT_ERR_FORMAT, 13,
          "STOP: the frame runs 1 byte past STOP (to byte 15): Python's unpickler reading from a "
          "file continues after the frame, not after STOP");
    FAILS("\x80\x04" FR("\x06") "K\x01." "K\x02.", CKPT_ERR_FORMAT, 13,
          "the frame runs 3 bytes past STOP (to byte 17)");

    /* scanning: the pickle returns, and says where its frame ends */
    static const uint8_t past[] = "\x80\x04" FR("\x06") "K\x01." "K\x02." "K\x03.";
    ckpt__pickle_ctx ctx = {
        .limits = &g_limits, .arena = &g_arena, .record = "test.pkl", .protocol = -1,
        .flags = CKPT__PICKLE_INERT | CKPT__PICKLE_NO_FAIL, .stop_frame_end = 99,
    };
    size_t used = 0;
    ckpt_value *out = NULL;
    assert_int_equal(ckpt__unpickle(&ctx, past, sizeof(past) - 1, &used, &out, &g_err), CKPT_OK);
    assert_int_equal(ckpt_value_int(out), 1);
    assert_int_equal(used, 14);
    assert_int_equal(ctx.stop_frame_end, 17);
    assert_int_equal(ckpt__unpickle(&ctx, past + 17, sizeof(past) - 18, &used, &out, &g_err),
                     CKPT_OK);
    assert_int_equal(ckpt_value_int(out), 3);
    assert_int_equal(ctx.stop_frame_end, 0);
    /* the other rules break the pickle, unless the scan asks to be told */
    static const uint8_t cross[] = "\x80\x04" FR("\x02") "M\x01\x00.";
    assert_int_equal(ckpt__unpickle(&ctx, cross, sizeof(cross) - 1, &used, &out, &g_err),
                     CKPT_ERR_FORMAT);
    assert_int_equal(g_err.offset, 11);
    ckpt_error framing;
    memset(&framing, 0, sizeof(framing));
    ctx.framing = &framing;
    assert_int_equal(ckpt__unpickle(&ctx, cross, sizeof(cross) - 1, &used, &out, &g_err),
                     CKPT_OK);
    assert_int_equal(ckpt_value_int(out), 1);
    assert_int_equal(framing.status, CKPT_ERR_FORMAT);
    assert_int_equal(framing.offset, 11);
    assert_non_null(strstr(framing.message, "BININT2: the argument of 2 bytes"));
    /* only the first break is told; text lines read on to their newline */
    static const uint8_t many[] =
        "\x80\x04" FR("\x04") "]" FR("\x02") "I12\n" "a" FR("\x0f") ".";
    memset(&framing, 0, sizeof(framing));
    assert_int_equal(ckpt__unpickle(&ctx, many, sizeof(many) - 1, &used, &out, &g_err), CKPT_OK);
    assert_repr(out, "[12]");
    assert_int_equal(framing.offset, 12);
    assert_non_null(strstr(framing.message, "FRAME: a new frame begins"));
    ctx.framing = NULL;

    /* a frame that ends past max_pickle_bytes is a limit */
    uint64_t saved = g_limits.max_pickle_bytes;
    g_limits.max_pickle_bytes = 16;
    FAILS("\x80\x04" FR("\x0b") "]K\x01" "aK\x02" "aK\x03" "a.", CKPT_ERR_LIMIT, 2,
          "max_pickle_bytes");
    g_limits.max_pickle_bytes = saved;
}
#undef FR

static void test_persistent_ids(void **state)
{
    (void)state;
    FAILS("Pabc\n.", CKPT_ERR_FORMAT, 0, "PERSID: persistent id in a plain pickle");
    FAILS("\x80\x02K\x01Q.", CKPT_ERR_FORMAT, 4, "BINPERSID: persistent id in a plain pickle");
    ckpt_value *v = OKP("Pabc\n.");
    assert_int_equal(v->kind, CKPT__KIND_STORAGE);
    assert_int_equal(ckpt_value_kind(v), CKPT_KIND_NONE); /* internal kinds never leak */
    assert_repr(g_last_pid, "'abc'");
    FAILSP("P\xe9\n.", CKPT_ERR_FORMAT, 0, "not ASCII");
    /* the callback's own error comes through */
    FAILSP("\x80\x02(X\x07\x00\x00\x00storageN\x8c\x01" "0\x8c\x03" "cpuK\x01tQ.",
           CKPT_ERR_FORMAT, 27, "not a storage class");
}

/* The argument tuples of _rebuild_tensor_v2 are given back to the arena
 * when no memo key of theirs is ever read; a tuple whose key is read later
 * stays whole, and memory given back serves later tuples intact. */
#define REBUILD_ARGS(size_put, stride_put, args_put)                               \
    "(c" "torch._utils\n_rebuild_tensor_v2\n"                                     \
    "((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0"      \
    "X\x03\x00\x00\x00" "cpuK\x06tQK\x00"                                            \
    "K\x02K\x03\x86q" size_put "K\x03K\x01\x86q" stride_put                      \
    "\x89" "ccollections\nOrderedDict\n)Rtq" args_put "R"

static void test_rebuild_args_recycled(void **state)
{
    (void)state;
    /* what a pickle of OrderedDict() alone makes */
#define ODICT "\x80\x02" "ccollections\nOrderedDict\n)R."
    uint64_t before = g_arena.used;
    assert_int_equal(ckpt_value_kind(OKP(ODICT)), CKPT_KIND_ORDERED_DICT);
    uint64_t odict = g_arena.used - before;
    /* the keys read (and popped) right after the call: nothing is given
     * back */
#define AFTER_CALL "K\x07K\x08\x86K\x09K\x0a\x86(K\x0bK\x0cK\x0dK\x0eK\x0fK\x10tt."
    before = g_arena.used;
    ckpt_value *v = OKP("\x80\x02" REBUILD_ARGS("\x01", "\x02", "\x03") "h\x01" "0h\x02" "0h\x03"
                        "0" AFTER_CALL);
    uint64_t whole = g_arena.used - before;
    assert_repr(v, "(tensor(float32, [2, 3], [3, 1], off=0), (7, 8), (9, 10), "
                   "(11, 12, 13, 14, 15, 16))");
    /* keys 1..3 never read: the three tuples and the hooks' OrderedDict are
     * given back, and the three tuples made after the call take the tuples'
     * memory (32 bytes each, items of 16, 16 and 48) */
    before = g_arena.used;
    v = OKP("\x80\x02" REBUILD_ARGS("\x01", "\x02", "\x03") AFTER_CALL);
    assert_int_equal(g_arena.used - before, whole - (3 * 32 + 16 + 16 + 48));
    assert_repr(v, "(tensor(float32, [2, 3], [3, 1], off=0), (7, 8), (9, 10), "
                   "(11, 12, 13, 14, 15, 16))");
    /* ... and the next OrderedDict takes the dict's 64 bytes */
    before = g_arena.used;
    v = OKP(ODICT);
    assert_int_equal(ckpt_value_kind(v), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(g_arena.used - before, odict - 64);
#undef ODICT
    /* with CKPT__PICKLE_PID_DONE the persistent id's tuple goes back once
     * a storage came of it, and the size tuple and the arguments' items
     * take its 32 and 48 bytes */
    static const char keep[] = "\x80\x02" REBUILD_ARGS("\x01", "\x02", "\x03") "h\x01" "0h\x02" "0h\x03"
                       "0t.";
    size_t keep_len = sizeof(keep) - 1; /* it holds NULs */
    uint64_t sizes[2];
    for (int done = 0; done < 2; done++) {
        ckpt__pickle_ctx ctx = {
            .limits = &g_limits, .arena = &g_arena, .record = "test.pkl",
            .persistent_load = fake_load, .protocol = 42,
            .flags = done ? CKPT__PICKLE_PID_DONE : 0u,
        };
        before = g_arena.used;
        assert_int_equal(ckpt__unpickle(&ctx, (const uint8_t *)keep, keep_len, NULL, &v, &g_err),
                         CKPT_OK);
        sizes[done] = g_arena.used - before;
        assert_repr(v, "(tensor(float32, [2, 3], [3, 1], off=0))");
    }
    assert_int_equal(sizes[0] - sizes[1], 32 + 48);
    /* keys nothing reads are not kept, but still count for MEMOIZE's
     * numbering: the third key is 2, and a key put twice counts once */
    assert_repr(OK("\x80\x04(K\x01\x94K\x02\x94K\x03\x94h\x02t."), "(1, 2, 3, 3)");
    assert_repr(OK("\x80\x04(K\x01q\x00K\x02q\x00K\x03\x94h\x01t."), "(1, 2, 3, 3)");
#undef AFTER_CALL
    /* the size tuple's key (1) and the arguments' key (3) are read again
     * after the call: both stay whole and are the same objects */
    v = OKP("\x80\x02" REBUILD_ARGS("\x01", "\x02", "\x03") "h\x01h\x03"
            "K\x07K\x08\x86K\x09K\x0a\x86(K\x0bK\x0cK\x0dK\x0eK\x0fK\x10tt.");
    assert_int_equal(ckpt_value_len(v), 6);
    const ckpt_value *size = ckpt_value_item(v, 1), *args = ckpt_value_item(v, 2);
    assert_repr(size, "(2, 3)");
    assert_int_equal(ckpt_value_kind(args), CKPT_KIND_TUPLE);
    assert_int_equal(ckpt_value_len(args), 6);
    assert_ptr_equal(ckpt_value_item(args, 2), size);
    assert_repr(ckpt_value_item(args, 3), "(3, 1)");
    assert_repr(ckpt_value_item(v, 3), "(7, 8)");
    assert_repr(ckpt_value_item(v, 5), "(11, 12, 13, 14, 15, 16)");
    /* a read by text (GET) counts as one too */
    v = OKP("\x80\x02" REBUILD_ARGS("\x01", "\x02", "\x03") "g2\nK\x07K\x08\x86t.");
    assert_repr(ckpt_value_item(v, 1), "(3, 1)");
    assert_repr(ckpt_value_item(v, 2), "(7, 8)");
}

/* ======================================================================
 * Globals: the allow-list
 * ====================================================================== */

static ckpt_value *global(const char *module, const char *name)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "c%s\n%s\n.", module, name);
    return ok_ex(buf, (size_t)n, NULL);
}

static void test_globals(void **state)
{
    (void)state;
    static const struct { const char *name; ckpt_dtype dtype; } dtypes[] = {
        {"float64", CKPT_DTYPE_FLOAT64}, {"double", CKPT_DTYPE_FLOAT64}, {"float32", CKPT_DTYPE_FLOAT32},
        {"float", CKPT_DTYPE_FLOAT32}, {"float16", CKPT_DTYPE_FLOAT16}, {"half", CKPT_DTYPE_FLOAT16},
        {"bfloat16", CKPT_DTYPE_BFLOAT16}, {"complex128", CKPT_DTYPE_COMPLEX128}, {"cdouble", CKPT_DTYPE_COMPLEX128},
        {"complex64", CKPT_DTYPE_COMPLEX64}, {"cfloat", CKPT_DTYPE_COMPLEX64}, {"complex32", CKPT_DTYPE_COMPLEX32},
        {"chalf", CKPT_DTYPE_COMPLEX32}, {"int64", CKPT_DTYPE_INT64}, {"long", CKPT_DTYPE_INT64},
        {"int32", CKPT_DTYPE_INT32}, {"int", CKPT_DTYPE_INT32}, {"int16", CKPT_DTYPE_INT16}, {"short", CKPT_DTYPE_INT16},
        {"int8", CKPT_DTYPE_INT8}, {"uint8", CKPT_DTYPE_UINT8}, {"uint16", CKPT_DTYPE_UINT16},
        {"uint32", CKPT_DTYPE_UINT32}, {"uint64", CKPT_DTYPE_UINT64}, {"bool", CKPT_DTYPE_BOOL},
        {"float8_e5m2", CKPT_DTYPE_FLOAT8_E5M2}, {"float8_e4m3fn", CKPT_DTYPE_FLOAT8_E4M3FN},
        {"float8_e5m2fnuz", CKPT_DTYPE_FLOAT8_E5M2FNUZ}, {"float8_e4m3fnuz", CKPT_DTYPE_FLOAT8_E4M3FNUZ},
        {"float8_e8m0fnu", CKPT_DTYPE_FLOAT8_E8M0FNU}, {"qint8", CKPT_DTYPE_QINT8}, {"quint8", CKPT_DTYPE_QUINT8},
        {"qint32", CKPT_DTYPE_QINT32}, {"quint4x2", CKPT_DTYPE_QUINT4X2}, {"quint2x4", CKPT_DTYPE_QUINT2X4},
        {"bits8", CKPT_DTYPE_BITS8}, {"bits16", CKPT_DTYPE_BITS16}, {"bits1x8", CKPT_DTYPE_BITS1X8},
        {"bits2x4", CKPT_DTYPE_BITS2X4}, {"bits4x2", CKPT_DTYPE_BITS4X2},
        {"float4_e2m1fn_x2", CKPT_DTYPE_FLOAT4_E2M1FN_X2},
    };
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
        ckpt_value *v = global("torch", dtypes[i].name);
        assert_int_equal(ckpt_value_kind(v), CKPT_KIND_DTYPE);
        assert_int_equal(ckpt_value_dtype(v), dtypes[i].dtype);
        assert_string_equal(ckpt_value_str(v, NULL), ckpt_dtype_name(dtypes[i].dtype));
    }
    static const struct { const char *name; ckpt_dtype dtype; } storages[] = {
        {"DoubleStorage", CKPT_DTYPE_FLOAT64}, {"FloatStorage", CKPT_DTYPE_FLOAT32},
        {"HalfStorage", CKPT_DTYPE_FLOAT16}, {"BFloat16Storage", CKPT_DTYPE_BFLOAT16},
        {"LongStorage", CKPT_DTYPE_INT64}, {"IntStorage", CKPT_DTYPE_INT32}, {"ShortStorage", CKPT_DTYPE_INT16},
        {"CharStorage", CKPT_DTYPE_INT8}, {"ByteStorage", CKPT_DTYPE_UINT8}, {"BoolStorage", CKPT_DTYPE_BOOL},
        {"ComplexDoubleStorage", CKPT_DTYPE_COMPLEX128}, {"ComplexFloatStorage", CKPT_DTYPE_COMPLEX64},
        {"QInt8Storage", CKPT_DTYPE_QINT8}, {"QInt32Storage", CKPT_DTYPE_QINT32},
        {"QUInt8Storage", CKPT_DTYPE_QUINT8}, {"QUInt4x2Storage", CKPT_DTYPE_QUINT4X2},
        {"QUInt2x4Storage", CKPT_DTYPE_QUINT2X4},
    };
    for (size_t i = 0; i < sizeof(storages) / sizeof(storages[0]); i++) {
        for (int cuda = 0; cuda < 2; cuda++) {
            ckpt_value *v = global(cuda ? "torch.cuda" : "torch", storages[i].name);
            bool untyped = true;
            assert_int_equal(ckpt_value_kind(v), CKPT_KIND_GLOBAL);
            assert_int_equal(ckpt__storage_type_dtype(v, &untyped), storages[i].dtype);
            assert_false(untyped);
            char full[64];
            snprintf(full, sizeof(full), "%s.%s", cuda ? "torch.cuda" : "torch", storages[i].name);
            assert_string_equal(ckpt_value_str(v, NULL), full);
        }
    }
    bool untyped = false;
    assert_int_equal(ckpt__storage_type_dtype(global("torch", "UntypedStorage"), &untyped),
                     CKPT_DTYPE_UINT8);
    assert_true(untyped);
    untyped = false;
    assert_int_equal(ckpt__storage_type_dtype(global("torch.storage", "UntypedStorage"), &untyped),
                     CKPT_DTYPE_UINT8);
    assert_true(untyped);
    assert_int_equal(ckpt__storage_type_dtype(global("torch", "Size"), &untyped),
                     CKPT_DTYPE_INVALID);
    assert_int_equal(ckpt__storage_type_dtype(NULL, NULL), CKPT_DTYPE_INVALID);

    static const char *const constants[] = {
        "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
        "per_channel_affine_float_qparams", "strided", "sparse_coo", "sparse_csr", "sparse_csc",
        "sparse_bsr", "sparse_bsc", "_mkldnn", "Tensor", "Size", "device",
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        char full[64];
        snprintf(full, sizeof(full), "torch.%s", constants[i]);
        assert_string_equal(ckpt_value_str(global("torch", constants[i]), NULL), full);
    }
    static const char *const utils[] = {
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_meta_tensor_no_storage", "_rebuild_qtensor",
        "_rebuild_sparse_tensor", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_nested_tensor",
    };
    for (size_t i = 0; i < sizeof(utils) / sizeof(utils[0]); i++)
        assert_int_equal(ckpt_value_kind(global("torch._utils", utils[i])), CKPT_KIND_GLOBAL);
    assert_repr(global("torch._tensor", "_rebuild_from_type_v2"),
                "global(torch._tensor._rebuild_from_type_v2)");
    assert_repr(global("collections", "OrderedDict"), "global(collections.OrderedDict)");
    assert_repr(global("collections", "Counter"), "global(collections.Counter)");
    assert_repr(global("torch.nn.parameter", "Parameter"), "global(torch.nn.parameter.Parameter)");
    assert_repr(global("torch.serialization", "_get_layout"),
                "global(torch.serialization._get_layout)");
    assert_repr(global("_codecs", "encode"), "global(_codecs.encode)");
    assert_repr(global("__builtin__", "set"), "global(builtins.set)");
    static const char *const builtins[] = {"bytearray", "bytes", "set", "frozenset", "complex"};
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
        assert_int_equal(ckpt_value_kind(global("builtins", builtins[i])), CKPT_KIND_GLOBAL);
    /* STACK_GLOBAL resolves the same table */
    assert_repr(OK("\x80\x04\x8c\x05torch\x8c\x07" "float16\x93."), "dtype(float16)");
}

static void test_unsafe_globals(void **state)
{
    (void)state;
    FAILS("cos\nsystem\n(S'ls'\ntR.", CKPT_ERR_UNSAFE, 0,
          "GLOBAL: global 'os.system' is not allowed (not in the weights-only allow-list)");
    FAILS("\x80\x02" "cposix\nsystem\nq\x00.", CKPT_ERR_UNSAFE, 2, "'posix.system' is not allowed");
    FAILS("\x80\x02K\x01" "cnt\nsystem\n.", CKPT_ERR_UNSAFE, 4, "'nt.system'");
    FAILS("csys\nexit\n.", CKPT_ERR_UNSAFE, 0, "'sys.exit'");
    FAILS("c__builtin__\neval\n.", CKPT_ERR_UNSAFE, 0, "'builtins.eval' is not allowed");
    FAILS("\x80\x03" "cbuiltins\neval\n.", CKPT_ERR_UNSAFE, 2, "'builtins.eval'");
    FAILS("\x80\x03" "cbuiltins\ngetattr\n.", CKPT_ERR_UNSAFE, 2, "'builtins.getattr'");
    FAILS("ctorch\nload\n.", CKPT_ERR_UNSAFE, 0, "'torch.load'");
    FAILS("ctorch._utils\n_rebuild_tensor_v2x\n.", CKPT_ERR_UNSAFE, 0, "_rebuild_tensor_v2x");
    FAILS("c__main__\nNet\n.", CKPT_ERR_UNSAFE, 0, "'__main__.Net'");
    FAILS("\x80\x04\x8c\x02os\x8c\x06system\x93.", CKPT_ERR_UNSAFE, 14,
          "STACK_GLOBAL: global 'os.system' is not allowed");
    /* operands through the memo, with decoys */
    FAILS("\x80\x04\x8c\x05torch\x94\x8c\x0bLongStorage\x94\x8c\x02os\x94\x8c\x06system\x94"
          "h\x02h\x03\x93.", CKPT_ERR_UNSAFE, 42, "'os.system'");
    FAILS("\x80\x04\x8c\x03" "bdb\x8c\x07" "Bdb.run\x93.", CKPT_ERR_UNSAFE, 16, "'bdb.Bdb.run'");
    FAILS("(S'ls'\nios\nsystem\n.", CKPT_ERR_UNSAFE, 7, "INST: global 'os.system'");
    FAILS("(S'ls'\ni__builtin__\nexec\n.", CKPT_ERR_UNSAFE, 7, "'builtins.exec'");
    /* names are quoted safely in messages */
    FAILS("cos\x1b[2J\nsystem\n.", CKPT_ERR_UNSAFE, 0, "'os\\x1b[2J.system'");
    FAILS("\x80\x04K\x01\x8c\x01" "a\x93.", CKPT_ERR_FORMAT, 7,
          "STACK_GLOBAL: module and name must be str, not int and str");
    FAILS("cmod\n\xf8\n.", CKPT_ERR_FORMAT, 0, "GLOBAL: module or name is not valid UTF-8");
    FAILS("ctorch\nfloat32", CKPT_ERR_FORMAT, 0, "GLOBAL: text argument has no newline");
}

/* ======================================================================
 * Calls with a data meaning
 * ====================================================================== */

#define ODICT "ccollections\nOrderedDict\n"

/* complex(re, im) keeps the sign of a zero part, as CPython does */
static void test_complex_signed_zero(void **state)
{
    (void)state;
    const ckpt_value *v = OK("\x80\x02" "c__builtin__\ncomplex\n"
                             "G\x3f\xf0\x00\x00\x00\x00\x00\x00"
                             "G\x80\x00\x00\x00\x00\x00\x00\x00" "\x86R.");
    double re, im;
    ckpt_value_complex(v, &re, &im);
    assert_true(re == 1.0 && im == 0.0 && signbit(im));
}

static void test_calls(void **state)
{
    (void)state;
    assert_repr(OK("\x80\x02" ODICT ")R."), "odict{}");
    assert_repr(OK("\x80\x02" ODICT "(K\x01K\x02\x86](K\x03K\x04" "el\x85R."), "odict{1: 2, 3: 4}");
    assert_repr(OK("\x80\x02" ODICT "}K\x01K\x02s\x85R."), "odict{1: 2}");
    FAILS("\x80\x02" ODICT "]K\x01" "a\x85R.", CKPT_ERR_FORMAT, 32,
          "collections.OrderedDict: item 0 is a int, not a (key, value) pair");
    FAILS("\x80\x02" ODICT "K\x01K\x02\x86R.", CKPT_ERR_FORMAT, 32,
          "collections.OrderedDict takes 0 to 1 arguments, 2 given");
    assert_repr(OK("\x80\x02" "ccollections\nCounter\n}X\x01\x00\x00\x00" "aK\x02s\x85R."),
                "{'a': 2}");
    assert_repr(OK("\x80\x02" "ccollections\nCounter\n(X\x01\x00\x00\x00" "aq\x00h\x00"
                   "X\x01\x00\x00\x00" "bl\x85R."),
                "{'a': 2, 'b': 1}");
    assert_repr(OK("\x80\x02" "c__builtin__\nset\n](K\x01K\x02" "e\x85R."), "set{1, 2}");
    assert_repr(OK("\x80\x02" "c__builtin__\nfrozenset\n)R."), "set{}");
    assert_repr(OK("\x80\x02" "c__builtin__\nbytes\n)R."), "b''");
    assert_repr(OK("\x80\x02" "c__builtin__\nbytearray\n](K\x01K\xff" "e\x85R."), "b'\\x01\\xff'");
    assert_repr(OK("\x80\x02" "c__builtin__\nbytearray\nX\x02\x00\x00\x00\xc3\xa9"
                   "X\x07\x00\x00\x00latin-1\x86R."),
                "b'\\xe9'");
    assert_repr(OK("\x80\x02" "c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xa9"
                   "X\x06\x00\x00\x00latin1\x86R."),
                "b'\\xe9'");
    FAILS("\x80\x02" "c_codecs\nencode\nX\x03\x00\x00\x00\xe2\x82\xacX\x06\x00\x00\x00latin1\x86R.",
          CKPT_ERR_FORMAT, 38, "_codecs.encode: U+20AC cannot be encoded in latin-1");
    FAILS("\x80\x02" "c_codecs\nencode\nX\x01\x00\x00\x00" "aX\x05\x00\x00\x00utf-8\x86R.",
          CKPT_ERR_FORMAT, 35, "encoding 'utf-8' is not supported");
    FAILS("\x80\x02" "c__builtin__\nbytes\nK\x01\x85R.", CKPT_ERR_FORMAT, 24,
          "builtins.bytes: argument 1 (source) must be bytes or a list of ints, not int");
    FAILS("\x80\x02" "c__builtin__\nbytes\n](M\x00\x01" "e\x85R.", CKPT_ERR_FORMAT, 28,
          "item 0 must be an int in range(256)");
    assert_repr(OK("\x80\x02" "c__builtin__\ncomplex\nK\x01G@\x04\x00\x00\x00\x00\x00\x00\x86R."),
                "c(1,2.5)");
    assert_repr(OK("\x80\x02" "c__builtin__\ncomplex\n)R."), "c(0,0)");
    assert_repr(OK("\x80\x02" "ctorch\nSize\nK\x02K\x03\x86\x85R."), "Size(2, 3)");
    assert_repr(OK("\x80\x02" "ctorch\nSize\n\x88\x85\x85R."), "Size(1)");
    assert_repr(OK("\x80\x02" "ctorch\ndevice\nX\x04\x00\x00\x00" "cudaK\x00\x86R."),
                "device(cuda:0)");
    assert_repr(OK("\x80\x02" "ctorch\ndevice\nX\x06\x00\x00\x00" "cuda:1\x85R."),
                "device(cuda:1)");
    assert_repr(OK("\x80\x02" "ctorch\ndevice\nX\x03\x00\x00\x00" "cpu\x85R."), "device(cpu)");
    assert_repr(OK("\x80\x02" "ctorch\ndevice\nX\x03\x00\x00\x00" "cpuN\x86R."), "device(cpu)");
    FAILS("\x80\x02" "ctorch\ndevice\nX\x06\x00\x00\x00" "cuda:x\x85R.", CKPT_ERR_FORMAT, 28,
          "torch.device: invalid device string");
    FAILS("\x80\x02" "ctorch\ndevice\nX\x06\x00\x00\x00" "cuda:0K\x01\x86R.", CKPT_ERR_FORMAT, 30,
          "torch.device");
    FAILS("\x80\x02" "ctorch\ndevice\nX\x04\x00\x00\x00" "cudaJ\xff\xff\xff\xff\x86R.",
          CKPT_ERR_FORMAT, 31,
          "argument 2 (index) must be a non-negative int");
    assert_repr(OK("\x80\x02" "ctorch.serialization\n_get_layout\n"
                   "X\x0d\x00\x00\x00torch.strided\x85R."),
                "global(torch.strided)");
    FAILS("\x80\x02" "ctorch.serialization\n_get_layout\nX\x0a\x00\x00\x00torch.nope\x85R.",
          CKPT_ERR_FORMAT, 51, "unknown layout 'torch.nope'");

    /* things that cannot be called */
    FAILS("\x80\x02" "ctorch\nstrided\n)R.", CKPT_ERR_FORMAT, 18,
          "REDUCE: torch.strided is not callable");
    FAILS("\x80\x02" "ctorch\nfloat32\n)R.", CKPT_ERR_FORMAT, 18, "torch.float32 is not callable");
    FAILS("\x80\x02])R.", CKPT_ERR_FORMAT, 4, "REDUCE: a list is not callable");
    FAILS("\x80\x02" ODICT "]R.", CKPT_ERR_FORMAT, 28,
          "REDUCE: the arguments must be a tuple, not a list");
    FAILS("\x80\x02" "ctorch\nFloatStorage\n)R.", CKPT_ERR_UNSUPPORTED, 23, "torch.FloatStorage");
    FAILS("\x80\x02" "ctorch\nTensor\n)R.", CKPT_ERR_UNSUPPORTED, 17, "torch.Tensor");

    /* NEWOBJ, NEWOBJ_EX, INST, OBJ */
    assert_repr(OK("\x80\x02" ODICT "]K\x01K\x02\x86" "a\x85\x81."), "odict{}");
    assert_repr(OK("\x80\x02" "c__builtin__\nfrozenset\n](K\x01" "e\x85\x81."), "set{1}");
    FAILS("\x80\x02" "c_codecs\nencode\n)\x81.", CKPT_ERR_FORMAT, 19,
          "NEWOBJ: _codecs.encode is a function");
    assert_repr(OK("\x80\x04" ODICT ")}\x92."), "odict{}");
    FAILS("\x80\x04" ODICT ")}K\x01K\x02s\x92.", CKPT_ERR_UNSUPPORTED, 34,
          "NEWOBJ_EX: keyword arguments");
    FAILS("\x80\x04" ODICT ")]\x92.", CKPT_ERR_FORMAT, 29, "keyword arguments must be a dict");
    assert_repr(OK("(icollections\nOrderedDict\n."), "odict{}");
    assert_repr(OK("(](K\x01K\x02" "ei__builtin__\nset\n."), "set{1, 2}");
    assert_repr(OK("(" ODICT "o."), "odict{}");
    assert_repr(OK("(c__builtin__\ncomplex\nK\x01K\x02o."), "c(1,2)");
    FAILS("(o.", CKPT_ERR_FORMAT, 1, "OBJ: no class above the MARK");
}

static void test_build(void **state)
{
    (void)state;
    ckpt_value *v = OK("\x80\x02" ODICT ")R}X\x01\x00\x00\x00" "aK\x01sb"
                       "}X\x01\x00\x00\x00" "bK\x02sb.");
    assert_repr(v, "odict{}|state={'a': 1, 'b': 2}");
    v = OK("\x80\x02" ODICT ")R}X\x01\x00\x00\x00" "aK\x01s}X\x01\x00\x00\x00" "bK\x02s\x86" "b.");
    assert_repr(v, "odict{}|state={'a': 1, 'b': 2}");
    v = OK("\x80\x02" ODICT ")RN}X\x01\x00\x00\x00" "bK\x02s\x86" "b.");
    assert_repr(v, "odict{}|state={'b': 2}");
    v = OK("\x80\x02" ODICT ")RNb.");
    assert_repr(v, "odict{}");
    /* torch builds only tensors, Parameters and OrderedDicts */
    FAILS("\x80\x02}}X\x01\x00\x00\x00" "aK\x01sb.", CKPT_ERR_FORMAT, 13,
          "BUILD on dict is not allowed");
    /* the state was copied in: changing the state dict later changes nothing */
    v = OK("\x80\x02(" ODICT ")R}X\x01\x00\x00\x00" "aK\x01sq\x00" "b"
           "h\x00X\x01\x00\x00\x00" "zK\x09s" "0l.");
    assert_repr(v, "[odict{}|state={'a': 1}]");
    v = OK("\x80\x02" ODICT ")R}b.");
    assert_repr(v, "odict{}");
    FAILS("\x80\x02]}b.", CKPT_ERR_FORMAT, 4, "BUILD: BUILD on list is not allowed");
    FAILS("\x80\x02" ODICT "]b.", CKPT_ERR_FORMAT, 28, "BUILD on global is not allowed");
    FAILS("\x80\x02" ODICT ")R]b.", CKPT_ERR_FORMAT, 30,
          "the state of a ordered_dict must be a dict, not a list");
    FAILS("\x80\x02" ODICT ")RK\x01N\x86" "b.", CKPT_ERR_FORMAT, 33, "must be a dict");
    FAILS("\x80\x02" "b.", CKPT_ERR_FORMAT, 2, "BUILD: needs 2 stack items");
}

/* ======================================================================
 * Tensors (with the fake persistent_load)
 * ====================================================================== */

#define STORAGE(cls, n)                                                                \
    "(X\x07\x00\x00\x00storagectorch\n" cls "\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" \
    "cpuK" n "tQ"
#define FLOAT6 STORAGE("FloatStorage", "\x06")
#define V2 "ctorch._utils\n_rebuild_tensor_v2\n"
#define HOOKS ODICT ")R"
/* _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) */
#define TENSOR(off, size, stride) V2 "(" FLOAT6 off size stride "\x89" HOOKS "tR"

static void test_tensors(void **state)
{
    (void)state;
    ckpt_value *v = OKP("\x80\x02" TENSOR("K\x00", "K\x02K\x03\x86", "K\x03K\x01\x86") ".");
    assert_repr(v, "tensor(float32, [2, 3], [3, 1], off=0)");
    assert_int_equal(g_pl_calls, 1);
    assert_int_equal(v->u.tensor.t->numel, 6);
    assert_int_equal(v->u.tensor.t->storage->nbytes, 24);
    const ckpt_tensor *t = ckpt_value_tensor(v);
    assert_ptr_equal(t, v->u.tensor.t);

    /* requires_grad, metadata (7th argument), scalar */
    v = OKP("\x80\x02" V2 "(" FLOAT6 "K\x05))\x88" HOOKS "}tR.");
    assert_repr(v, "tensor(float32, [], [], off=5, grad)");
    /* _rebuild_tensor (4 arguments) and a 0-d size written as torch.Size */
    v = OKP("\x80\x02" "ctorch._utils\n_rebuild_tensor\n(" STORAGE("LongStorage", "\x03")
            "K\x01" "ctorch\nSize\nK\x02\x85\x85RK\x01\x85tR.");
    assert_repr(v, "tensor(int64, [2], [1], off=1)");
    /* _rebuild_tensor_v3: the dtype argument, an untyped storage of 24 bytes */
    v = OKP("\x80\x02" "ctorch._utils\n_rebuild_tensor_v3\n(" STORAGE("UntypedStorage", "\x18")
            "K\x00K\x06\x85K\x01\x85\x89" HOOKS "ctorch\nfloat32\ntR.");
    assert_repr(v, "tensor(float32, [6], [1], off=0)");
    /* meta tensors have no storage */
    v = OKP("\x80\x02" "ctorch._utils\n_rebuild_meta_tensor_no_storage\n(ctorch\nbfloat16\n"
            "K\x02K\x02\x86K\x02K\x01\x86\x89tR.");
    assert_repr(v, "tensor(bfloat16, [2, 2], [2, 1], off=0, meta)");
    assert_null(v->u.tensor.t->storage);

    /* Parameters are new values */
    v = OKP("\x80\x02(" TENSOR("K\x00", "K\x06\x85", "K\x01\x85") "q\x00"
            "ctorch.nn.parameter\nParameter\nh\x00\x85R"
            "ctorch.nn.parameter\nParameter\nh\x00\x89\x86R"
            "ctorch._utils\n_rebuild_parameter\nh\x00\x88" HOOKS "\x87R"
            "ctorch._utils\n_rebuild_parameter_with_state\n(h\x00\x89" HOOKS
            "}X\x01\x00\x00\x00" "aK\x01stR"
            "l.");
    assert_repr(v,
                "[tensor(float32, [6], [1], off=0), "
                "tensor(float32, [6], [1], off=0, grad, param), "
                "tensor(float32, [6], [1], off=0, param), "
                "tensor(float32, [6], [1], off=0, grad, param), "
                "tensor(float32, [6], [1], off=0, param)|state={'a': 1}]");
    assert_false(ckpt_value_tensor(ckpt_value_item(v, 0))->is_parameter);

    /* _rebuild_from_type_v2(func, new_type, args, state) */
    v = OKP("\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\n(" V2
            "ctorch.nn.parameter\nParameter\n("
            FLOAT6 "K\x00K\x06\x85K\x01\x85\x88" HOOKS "t}X\x01\x00\x00\x00xK\x01stR.");
    assert_repr(v, "tensor(float32, [6], [1], off=0, grad, param)|state={'x': 1}");
    v = OKP("\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\n(" V2 "ctorch\nTensor\n("
            FLOAT6 "K\x00K\x06\x85K\x01\x85\x89" HOOKS "tNtR.");
    assert_repr(v, "tensor(float32, [6], [1], off=0)");
    FAILSP("\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\n(" V2 ODICT "("
           FLOAT6 "K\x00K\x06\x85K\x01\x85\x89" HOOKS "tNtR.", CKPT_ERR_FORMAT, ANY,
           "argument 2 (new_type) must be torch.Tensor or torch.nn.parameter.Parameter");
    FAILSP("\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\n(" ODICT "ctorch\nTensor\n)NtR.",
           CKPT_ERR_FORMAT, ANY, "returned a ordered_dict, not a tensor");

    /* BUILD on a tensor keeps the state */
    v = OKP("\x80\x02" TENSOR("K\x00", "K\x06\x85", "K\x01\x85") "}X\x01\x00\x00\x00" "bK\x02sb.");
    assert_repr(v, "tensor(float32, [6], [1], off=0)|state={'b': 2}");

    /* refused and malformed */
    FAILSP("\x80\x02" V2 "(NK\x00K\x06\x85K\x01\x85\x89NtR.", CKPT_ERR_FORMAT, ANY,
           "torch._utils._rebuild_tensor_v2: argument 1 (storage) must be a storage, not none");
    FAILSP("\x80\x02" V2 "(" FLOAT6 "K\x00X\x01\x00\x00\x00" "aK\x01\x85\x89NtR.",
           CKPT_ERR_FORMAT, ANY, "argument 3 (size) must be a tuple of ints, not str");
    FAILSP("\x80\x02" V2 "(" FLOAT6 "K\x00K\x06\x85K\x01K\x01\x86\x89NtR.", CKPT_ERR_FORMAT, ANY,
           "size has 1 dimensions but stride has 2");
    FAILSP("\x80\x02" V2 "(" FLOAT6 "K\x00K\x06\x85K\x01\x85\x89tR.", CKPT_ERR_FORMAT, ANY,
           "takes 6 to 7 arguments, 5 given");
    FAILSP("\x80\x02" TENSOR("K\x00", "K\x02K\x04\x86", "K\x04K\x01\x86") ".", CKPT_ERR_FORMAT, ANY,
           NULL);
    FAILSP("\x80\x02" TENSOR("J\xff\xff\xff\xff", "K\x01\x85", "K\x01\x85") ".",
           CKPT_ERR_FORMAT, ANY, NULL);
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_qtensor\n)R.", CKPT_ERR_FORMAT, 34,
           "takes 7 arguments, 0 given");
    {
        /* torch.__version__ is a str subclass: its text */
        ckpt_value *ver = OK("\x80\x02" "ctorch.torch_version\nTorchVersion\n"
                             "X\x04\x00\x00\x00" "1.13" "\x85\x81.");
        assert_int_equal(ver->kind, CKPT_KIND_STR);
        assert_string_equal(ver->u.s.ptr, "1.13");
    }
    {
        /* legacy tensor types are allowed names, but never called */
        ckpt_value *tt = OK("\x80\x02" "ctorch.cuda\nFloatTensor\n.");
        assert_int_equal(tt->kind, CKPT_KIND_GLOBAL);
        assert_string_equal(tt->u.s.ptr, "torch.cuda.FloatTensor");
    }
    FAILSP("\x80\x02" "ctorch\nLongTensor\n)R.", CKPT_ERR_UNSUPPORTED, ANY,
           "constructing torch.LongTensor directly is not supported");
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_sparse_tensor\n)R.", CKPT_ERR_FORMAT, ANY,
           "takes 2 arguments, 0 given");
    /* a sparse layout is required, and tensors for the parts */
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_sparse_tensor\nctorch\nstrided\n)\x86R.",
           CKPT_ERR_FORMAT, ANY, "must be a sparse layout");
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_sparse_tensor\nctorch\nsparse_coo\n"
           "(K\x01K\x02K\x03\x85t\x86R.", CKPT_ERR_FORMAT, ANY, "part 0 of the data is a int");
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_nested_tensor\n)R.", CKPT_ERR_UNSUPPORTED, ANY,
           "nested");
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_wrapper_subclass\n)R.", CKPT_ERR_UNSUPPORTED, ANY,
           NULL);
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_device_tensor_from_numpy\n)R.",
           CKPT_ERR_UNSUPPORTED, ANY, NULL);
    FAILSP("\x80\x02" "ctorch._utils\n_rebuild_device_tensor_from_cpu_tensor\n)R.",
           CKPT_ERR_UNSUPPORTED, ANY, NULL);
    FAILSP("\x80\x02" "ctorch.nn.parameter\nParameter\nK\x01\x85R.", CKPT_ERR_FORMAT, ANY,
           "argument 1 (data) must be a tensor, not int");

    /* more dimensions than max_ndim */
    uint8_t buf[1024];
    size_t n = 0;
    static const char head[] = "\x80\x02" V2 "(" FLOAT6 "K\x00(";
    memcpy(buf, head, sizeof(head) - 1);
    n = sizeof(head) - 1;
    for (int i = 0; i < 65; i++) {
        buf[n++] = 'K';
        buf[n++] = 1;
    }
    buf[n++] = 't';
    buf[n++] = ')';
    memcpy(buf + n, "\x89Nt" "R.", 5);
    n += 5;
    fails_ex(buf, n, fake_load, CKPT_ERR_LIMIT, ANY, "65 dimensions (max_ndim is 64)");
}

/* _rebuild_from_type_v2 whose func is itself, levels deep. */
static size_t nested_from_type(uint8_t *buf, int levels)
{
    size_t n = 0;
#define PUT(s) (memcpy(buf + n, s, sizeof(s) - 1), n += sizeof(s) - 1)
    PUT("\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\nq\x00" "ctorch\nTensor\nq\x01"
        "(" V2 "h\x01(" FLOAT6 "K\x00K\x06\x85K\x01\x85\x89NtNt");
    for (int i = 0; i < levels; i++)
        PUT("q\x02" "0(h\x00h\x01h\x02Nt");
    PUT("q\x02" "0h\x00h\x02R.");
#undef PUT
    return n;
}

static void test_rebuild_nesting(void **state)
{
    (void)state;
    uint8_t buf[4096];
    size_t n = nested_from_type(buf, 3);
    ckpt_value *v = ok_ex(buf, n, fake_load);
    assert_repr(v, "tensor(float32, [6], [1], off=0)");
    n = nested_from_type(buf, 4);
    fails_ex(buf, n, fake_load, CKPT_ERR_FORMAT, ANY, "nested more than 4 deep");
    n = nested_from_type(buf, 100);
    fails_ex(buf, n, fake_load, CKPT_ERR_FORMAT, ANY, "nested more than 4 deep");
}

/* ======================================================================
 * Limits and hostile input
 * ====================================================================== */

/* proto 4 + count copies of unit + tail */
static uint8_t *repeat(const char *unit, size_t unit_len, size_t count, const char *tail,
                       size_t *size)
{
    size_t tail_len = strlen(tail);
    size_t n = 2 + unit_len * count + tail_len;
    uint8_t *p = malloc(n);
    assert_non_null(p);
    p[0] = 0x80;
    p[1] = 4;
    for (size_t i = 0; i < count; i++)
        memcpy(p + 2 + i * unit_len, unit, unit_len);
    memcpy(p + 2 + unit_len * count, tail, tail_len);
    *size = n;
    return p;
}

static void timed_failure(const char *unit, size_t unit_len, size_t count, const char *tail,
                          ckpt_status status, const char *text)
{
    size_t n;
    uint8_t *p = repeat(unit, unit_len, count, tail, &n);
    fails_ex(p, n, NULL, status, ANY, text);
    free(p);
}

static void test_bombs(void **state)
{
    (void)state;
    /* stack and mark bombs stop at max_stack_depth */
    timed_failure("]", 1, 2000000, ".", CKPT_ERR_LIMIT,
                  "EMPTY_LIST: stack depth exceeds max_stack_depth");
    timed_failure("(", 1, 2000000, ".", CKPT_ERR_LIMIT,
                  "MARK: stack depth exceeds max_stack_depth");
    timed_failure("N(", 2, 1000000, ".", CKPT_ERR_LIMIT, "stack depth exceeds");
    /* memo bombs stop at max_memo_entries */
    timed_failure("N\x94" "0", 3, 1500000, ".", CKPT_ERR_LIMIT,
                  "exceeds max_memo_entries (1000000)");
    assert_repr(OK("N\x94\x94\x94."), "None");
}

static void test_configured_limits(void **state)
{
    (void)state;
    g_limits.max_container_len = 3;
    FAILS("\x80\x02](K\x01K\x02K\x03K\x04" "e.", CKPT_ERR_LIMIT, 12,
          "APPENDS: container of 4 items exceeds max_container_len (3)");
    FAILS("\x80\x02]K\x01" "aK\x01" "aK\x01" "aK\x01" "a.", CKPT_ERR_LIMIT, 14,
          "APPEND: container of 4 items");
    FAILS("\x80\x02(K\x01K\x02K\x03K\x04t.", CKPT_ERR_LIMIT, 11, "TUPLE: container of 4 items");
    FAILS("\x80\x02(K\x01K\x02K\x03K\x04K\x05K\x06K\x07K\x08" "d.", CKPT_ERR_LIMIT, ANY,
          "max_container_len");
    assert_repr(OK("\x80\x02(K\x01K\x02K\x03l."), "[1, 2, 3]");
    ckpt_limits_default(&g_limits);

    g_limits.max_ndim = 2;
    FAILSP("\x80\x02" TENSOR("K\x00", "K\x01K\x01K\x06\x87", "K\x06K\x06K\x01\x87") ".",
           CKPT_ERR_LIMIT, ANY,
           "max_ndim is 2");
    ckpt_limits_default(&g_limits);

    g_limits.max_memo_entries = 2;
    FAILS("\x80\x02Nq\x02.", CKPT_ERR_LIMIT, 3, "memo index 2 exceeds max_memo_entries (2)");
    assert_repr(OK("\x80\x02Nq\x01h\x01\x86."), "(None, None)");
    ckpt_limits_default(&g_limits);

    g_limits.max_stack_depth = 4;
    FAILS("\x80\x02(K\x01K\x02K\x03K\x04t.", CKPT_ERR_LIMIT, 9, "max_stack_depth (4)");
    assert_repr(OK("\x80\x02(K\x01K\x02K\x03t."), "(1, 2, 3)");
    ckpt_limits_default(&g_limits);

    /* max_pickle_bytes: the pickle, not the buffer (legacy files carry data after it) */
    g_limits.max_pickle_bytes = 8;
    assert_repr(OK("\x80\x02K\x01K\x02\x86.junk after the pickle"), "(1, 2)");
    FAILS("\x80\x02K\x01K\x02K\x03\x87.", CKPT_ERR_LIMIT, 8, "larger than max_pickle_bytes (8)");
    FAILS("\x80\x02X\x10\x00\x00\x00" "0123456789abcdef.", CKPT_ERR_LIMIT, 2, "max_pickle_bytes");
    FAILS("\x80\x02X\x10\x00\x00\x00" "012.", CKPT_ERR_FORMAT, 2,
          "BINUNICODE: length 16 runs past");
    ckpt_limits_default(&g_limits);

    /* max_value_bytes through the arena */
    ckpt__arena_free(&g_arena);
    ckpt__arena_init(&g_arena, 64 * 1024);
    size_t n;
    uint8_t *p = repeat("\x8e\x00\x80\x00\x00\x00\x00\x00\x00", 9, 1, "", &n);
    uint8_t *big = realloc(p, n + 0x8000 + 1);
    memset(big + n, 'x', 0x8000);
    big[n + 0x8000] = '.';
    assert_int_equal(ckpt_value_kind(ok_ex(big, n + 0x8001, NULL)), CKPT_KIND_BYTES);
    /* 32 KiB more does not fit: a limit, not out of memory */
    ckpt_value *out = NULL;
    assert_int_equal(run_ex(big, n + 0x8001, NULL, NULL, &out), CKPT_ERR_LIMIT);
    assert_non_null(strstr(g_err.message,
                           "BINBYTES8: the values exceed max_value_bytes (65536 bytes)"));
    free(big);
}

static void test_work_budget(void **state)
{
    (void)state;
    /* one 1 MiB key hashed and compared again and again: cheap to write,
     * costly to run; the work budget stops it */
    size_t key = 1 << 20, reps = 300000;
    size_t n = 2 + 9 + key + 3 + 1 + reps * 4 + 1;
    uint8_t *p = malloc(n), *q = p;
    assert_non_null(p);
    memcpy(q, "\x80\x04\x8d", 3);
    q += 3;
    for (int i = 0; i < 8; i++)
        *q++ = (uint8_t)((uint64_t)key >> (8 * i));
    memset(q, 'k', key);
    q += key;
    memcpy(q, "q\x00" "0}", 4);
    q += 4;
    for (size_t i = 0; i < reps; i++) {
        memcpy(q, "h\x00Ns", 4);
        q += 4;
    }
    *q++ = '.';
    assert_int_equal((size_t)(q - p), n);
    fails_ex(p, n, NULL, CKPT_ERR_LIMIT, ANY, "too much work");
    free(p);

    /* a tuple key that expands to 2^64 leaves through the memo (DUP):
     * hashing and comparing it are bounded walks */
    uint8_t buf[512];
    size_t k = 0;
    memcpy(buf, "\x80\x04}K\x01", 5);
    k = 5;
    for (int i = 0; i < 64; i++) {
        buf[k++] = '2';
        buf[k++] = 0x86;
    }
    buf[k++] = 'N';
    buf[k++] = 's';
    buf[k++] = '.';
    ckpt_value *d = ok_ex(buf, k, NULL);
    assert_int_equal(ckpt_value_len(d), 1);
    assert_true(ckpt__value_equal(ckpt_value_key(d, 0), ckpt_value_key(d, 0)));
}

/* Every proper prefix of a valid pickle fails cleanly (run under ASan, a
 * read past the end would be caught: each prefix is its own allocation). */
static void all_prefixes_fail(const uint8_t *data, size_t size, ckpt__persistent_load_fn pl)
{
    for (size_t n = 0; n < size; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, data, n);
        ckpt_value *v = NULL;
        ckpt_status st = run_ex(copy, n, pl, NULL, &v);
        if (st == CKPT_OK)
            print_error("prefix of %zu bytes (of %zu) succeeded\n", n, size);
        assert_int_not_equal(st, CKPT_OK);
        assert_null(v);
        assert_int_equal(g_err.status, st);
        assert_true(g_err.offset <= n);
        free(copy);
    }
}

static void test_truncation(void **state)
{
    (void)state;
    for (int proto = 0; proto <= 5; proto++) {
        char name[32];
        size_t size;
        snprintf(name, sizeof(name), "values_p%d.pkl", proto);
        uint8_t *data = read_pickle(name, &size);
        all_prefixes_fail(data, size, NULL);
        free(data);
    }
    size_t size;
    uint8_t *data = read_pickle("tensors_p2.pkl", &size);
    all_prefixes_fail(data, size, fake_load);
    free(data);
    uint8_t buf[4096];
    size = nested_from_type(buf, 2);
    all_prefixes_fail(buf, size, fake_load);
    static const char text[] = "(lp0\nI1\naL123L\naF1.5\naS'a\\x41'\naV\\u20ac\nag0\na"
                               "(dp1\nVk\np2\nI3\nsa(i__builtin__\nset\n"
                               "c__builtin__\ncomplex\n(I1\nI2\ntRa.";
    all_prefixes_fail((const uint8_t *)text, sizeof(text) - 1, NULL);
}

/* ======================================================================
 * The shared corpus: every raw pickle in malicious/ must be refused
 * ====================================================================== */

typedef struct corpus_stats {
    int files, unsafe, other;
} corpus_stats;

static bool is_raw_pickle_candidate(const char *path, const uint8_t *p, size_t n)
{
    size_t len = strlen(path);
    if (len > 12 && strcmp(path + len - 12, ".safetensors") == 0)
        return false;
    if (n >= 4 && (memcmp(p, "PK\x03\x04", 4) == 0 || memcmp(p, "PK\x05\x06", 4) == 0))
        return false; /* zip: the torch format layer's business */
    if (n >= 6 && memcmp(p, "7z\xbc\xaf\x27\x1c", 6) == 0)
        return false;
    if (n >= 6 && memcmp(p, "\x93NUMPY", 6) == 0)
        return false;
    return true;
}

/* Runs every pickle of a stream in turn, as a scanner would. */
static ckpt_status unpickle_stream(const uint8_t *p, size_t n)
{
    size_t pos = 0;
    while (pos < n) {
        size_t used = 0;
        ckpt_value *v = NULL;
        ckpt_status st = run_ex(p + pos, n - pos, fake_load, &used, &v);
        if (st != CKPT_OK)
            return st;
        pos += used;
    }
    return CKPT_OK;
}

static void walk_malicious(const char *dir, corpus_stats *stats)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            walk_malicious(path, stats);
            continue;
        }
        size_t n;
        uint8_t *p = read_file(path, &n);
        assert_non_null(p);
        if (is_raw_pickle_candidate(path, p, n)) {
            ckpt__arena_free(&g_arena);
            ckpt_status st = unpickle_stream(p, n);
            stats->files++;
            if (st == CKPT_ERR_UNSAFE) {
                stats->unsafe++;
            } else {
                /* Only three are not refused as unsafe, and all are format
                 * errors: two are not pickles at all (PNG bytes; a GLOBAL
                 * whose name is not UTF-8, which CPython cannot read
                 * either), one has a FRAME longer than the file before its
                 * global (CPython's C unpickler fails there too; a scan
                 * reads on and reports the global). */
                stats->other++;
                print_message("  %s: %s (%s)\n", strstr(path, "malicious/"), ckpt_status_name(st),
                              g_err.message);
                assert_true(strcmp(e->d_name, "bad_pytorch.pt") == 0 ||
                            strcmp(e->d_name, "not_a_pickle.bin") == 0 ||
                            strcmp(e->d_name, "nt_alias_attack.pkl") == 0);
                assert_int_equal(st, CKPT_ERR_FORMAT);
            }
            if (st == CKPT_OK)
                print_error("%s was accepted\n", path);
            assert_int_not_equal(st, CKPT_OK);
        }
        free(p);
    }
    closedir(d);
}

static void test_malicious_corpus(void **state)
{
    (void)state;
    const char *corpus = getenv("CKPT_CORPUS");
    if (!corpus) {
        print_message("CKPT_CORPUS not set: skipped\n");
        skip();
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/malicious", corpus);
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        print_message("%s missing: skipped\n", dir);
        skip();
    }
    corpus_stats stats = {0};
    walk_malicious(dir, &stats);
    print_message("malicious raw pickles: %d, unsafe %d, other errors %d\n", stats.files,
                  stats.unsafe, stats.other);
    assert_true(stats.files >= 100);
    assert_true(stats.other <= 3);
}

/* Benign raw pickles from other projects: each one is either read or
 * refused cleanly, and the plain ones are read. */
static void test_benign_corpus(void **state)
{
    (void)state;
    const char *corpus = getenv("CKPT_CORPUS");
    if (!corpus)
        skip();
    static const char *const plain[] = {
        "benign/Pickle.jl/builtin_type_p0.pkl", "benign/Pickle.jl/builtin_type_p1.pkl",
        "benign/Pickle.jl/builtin_type_p2.pkl", "benign/Pickle.jl/builtin_type_p3.pkl",
        "benign/Pickle.jl/builtin_type_p4.pkl", "benign/picklescan/data/benign0_v0.pkl",
        "benign/picklescan/data/benign0_v3.pkl", "benign/picklescan/data/benign0_v4.pkl",
        "benign/modelaudit/samples/pickles/safe_nested_structure.pkl",
        "benign/zml/simple_test.pickle", "benign/zml/simple_test_4.pickle",
    };
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", corpus, plain[i]);
        size_t n;
        uint8_t *p = read_file(path, &n);
        if (!p) {
            print_message("  missing %s\n", plain[i]);
            continue;
        }
        ckpt__arena_free(&g_arena);
        ckpt_value *v = NULL;
        ckpt_status st = run_ex(p, n, NULL, NULL, &v);
        if (st != CKPT_OK)
            print_error("%s: %s %s\n", plain[i], ckpt_status_name(st), g_err.message);
        assert_int_equal(st, CKPT_OK);
        free(p);
    }
    /* Pickle.jl's builtin types (protocols 0-4), as CPython reads them */
    for (int proto = 0; proto <= 4; proto++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/benign/Pickle.jl/builtin_type_p%d.pkl", corpus, proto);
        size_t n;
        uint8_t *p = read_file(path, &n);
        if (!p)
            continue;
        ckpt_value *v = ok_ex(p, n, NULL);
        assert_repr(v, "{'str': 'Julia!', 'int': 42, 'bool': {True: False, False: True}, "
                       "'float': 3.1415926000000001, 'bytes': b'1234\\xc2\\xb2', "
                       "'tuple': (1, 2, '3', b'4'), 'set': set{1, 2, 3, 12, 21}, "
                       "'bigint': big(ea1ed95a37ffad395b653ba98020c9a003), "
                       "'list': ['February', 14, 2012], 'unicode': 'R\\xc3\\xa9sum\\xc3\\xa9'}");
        free(p);
    }
}

/* ======================================================================
 * Speed
 * ====================================================================== */

typedef struct pbuf {
    uint8_t *p;
    size_t n, cap;
} pbuf;

static void pb_put(pbuf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->cap + n) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void pb_str(pbuf *b, const char *s)
{
    uint8_t h[5] = {'X', 0, 0, 0, 0};
    size_t n = strlen(s);
    h[1] = (uint8_t)n;
    h[2] = (uint8_t)(n >> 8);
    pb_put(b, h, 5);
    pb_put(b, s, n);
}

#define PB(b, s) pb_put(b, s, sizeof(s) - 1)

/* A state dict as torch.save writes it (protocol 2), count tensors. */
static pbuf make_state_dict(int count)
{
    pbuf b = {0};
    PB(&b, "\x80\x02" ODICT "q\x00)Rq\x01(");
    for (int i = 0; i < count; i++) {
        char name[64], key[16];
        snprintf(name, sizeof(name), "encoder.layers.%d.attention.weight", i);
        snprintf(key, sizeof(key), "%d", i);
        pb_str(&b, name);
        if (i == 0)
            PB(&b, V2 "q\x02((X\x07\x00\x00\x00storageq\x03" "ctorch\nFloatStorage\nq\x04");
        else
            PB(&b, "h\x02((h\x03h\x04");
        pb_str(&b, key);
        PB(&b, "X\x03\x00\x00\x00" "cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)RtR");
        if (i % 1000 == 999) {
            PB(&b, "u(");
        }
    }
    PB(&b, "u.");
    return b;
}

static void test_speed(void **state)
{
    (void)state;
    pbuf b = make_state_dict(10000);
    double best = 1e9;
    ckpt_value *root = NULL;
    for (int rep = 0; rep < 5; rep++) {
        ckpt__arena_free(&g_arena);
        double t0 = now_ms();
        root = ok_ex(b.p, b.n, fake_load);
        double ms = now_ms() - t0;
        if (ms < best)
            best = ms;
    }
    print_message("10,000-tensor state dict (%zu bytes): %.2f ms\n", b.n, best);
    assert_int_equal(ckpt_value_kind(root), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(ckpt_value_len(root), 10000);
    const ckpt_value *t = get(root, "encoder.layers.9999.attention.weight");
    assert_repr(t, "tensor(float32, [2, 3], [3, 1], off=0)");
    assert_string_equal(t->u.tensor.t->storage->key, "9999");
    free(b.p);

    /* 100,000 entries straight into a dict */
    ckpt__arena_free(&g_arena);
    double t0 = now_ms();
    ckpt_value *d = ckpt__value_new(&g_arena, CKPT_KIND_DICT);
    char key[32];
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(key, sizeof(key), "model.layer.%d.weight", i);
        ckpt_value *k = ckpt__value_str(&g_arena, CKPT_KIND_STR, key, (size_t)n);
        ckpt_value *v = ckpt__value_new(&g_arena, CKPT_KIND_INT);
        assert_non_null(k);
        assert_non_null(v);
        v->u.i = i;
        assert_true(ckpt__dict_set(&g_arena, d, k, v));
    }
    double ms = now_ms() - t0;
    print_message("100,000-entry dict: %.2f ms\n", ms);
    assert_int_equal(ckpt_value_len(d), 100000);
    assert_int_equal(ckpt_value_int(get(d, "model.layer.77777.weight")), 77777);
}

/* ======================================================================
 * value.c
 * ====================================================================== */

static void test_arena(void **state)
{
    (void)state;
    ckpt__arena a;
    ckpt__arena_init(&a, 1 << 20);
    for (size_t size = 1; size < 300000; size = size * 3 + 1) {
        uint8_t *p = ckpt__arena_alloc(&a, size);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        for (size_t i = 0; i < size; i++)
            assert_int_equal(p[i], 0);
        memset(p, 0xab, size);
    }
    assert_true(a.used <= 1 << 20);
    assert_null(ckpt__arena_alloc(&a, 1 << 20));
    assert_true(ckpt__arena_over_limit(&a, 1 << 20));
    assert_false(ckpt__arena_over_limit(&a, 16));
    assert_null(ckpt__arena_alloc(&a, SIZE_MAX));
    char *s = ckpt__arena_strdup(&a, "abc", 3);
    assert_string_equal(s, "abc");
    s = ckpt__arena_strdup(&a, NULL, 0);
    assert_string_equal(s, "");
    ckpt__arena_free(&a);
    assert_int_equal(a.used, 0);
    ckpt__arena_free(&a); /* twice is fine */

    /* lists grow inside the arena */
    ckpt__arena_init(&a, 0);
    ckpt_value *list = ckpt__value_new(&a, CKPT_KIND_LIST);
    for (int i = 0; i < 100000; i++)
        assert_true(ckpt__seq_append(&a, list, list));
    assert_int_equal(ckpt_value_len(list), 100000);
    assert_ptr_equal(ckpt_value_item(list, 99999), list);
    assert_null(ckpt_value_item(list, 100000));
    ckpt__arena_free(&a);
}

static ckpt_value *num(int kind, double x)
{
    ckpt_value *v = ckpt__value_new(&g_arena, kind);
    if (kind == CKPT_KIND_INT)
        v->u.i = (int64_t)x;
    else if (kind == CKPT_KIND_BOOL)
        v->u.b = x != 0;
    else if (kind == CKPT_KIND_FLOAT)
        v->u.f = x;
    else
        v->u.c.re = x;
    return v;
}

static ckpt_value *str(int kind, const char *s)
{
    return ckpt__value_str(&g_arena, kind, s, strlen(s));
}

static ckpt_value *tuple2(ckpt_value *a, ckpt_value *b)
{
    ckpt_value *t = ckpt__value_new(&g_arena, CKPT_KIND_TUPLE);
    ckpt__seq_append(&g_arena, t, a);
    ckpt__seq_append(&g_arena, t, b);
    return t;
}

static void test_value_equality(void **state)
{
    (void)state;
    assert_true(ckpt__value_equal(num(CKPT_KIND_INT, 1), num(CKPT_KIND_FLOAT, 1.0)));
    assert_true(ckpt__value_equal(num(CKPT_KIND_BOOL, 1), num(CKPT_KIND_INT, 1)));
    assert_true(ckpt__value_equal(num(CKPT_KIND_COMPLEX, 2), num(CKPT_KIND_INT, 2)));
    assert_true(ckpt__value_equal(num(CKPT_KIND_FLOAT, -0.0), num(CKPT_KIND_INT, 0)));
    assert_false(ckpt__value_equal(num(CKPT_KIND_FLOAT, 1.5), num(CKPT_KIND_INT, 1)));
    ckpt_value *nan = num(CKPT_KIND_FLOAT, NAN);
    assert_true(ckpt__value_equal(nan, nan)); /* identity, as Python's containers */
    assert_false(ckpt__value_equal(nan, num(CKPT_KIND_FLOAT, NAN)));
    ckpt_value *big = num(CKPT_KIND_INT, 0);
    big->kind = CKPT_KIND_INT;
    big->u.i = INT64_MAX;
    assert_false(ckpt__value_equal(big, num(CKPT_KIND_FLOAT, 9223372036854775807.0))); /* 2^63 */
    assert_true(ckpt__value_equal(str(CKPT_KIND_STR, "a"), str(CKPT_KIND_STR, "a")));
    assert_false(ckpt__value_equal(str(CKPT_KIND_STR, "a"), str(CKPT_KIND_BYTES, "a")));
    assert_true(ckpt__value_equal(tuple2(num(CKPT_KIND_INT, 1), str(CKPT_KIND_STR, "x")),
                                  tuple2(num(CKPT_KIND_FLOAT, 1.0), str(CKPT_KIND_STR, "x"))));
    ckpt_value *l1 = ckpt__value_new(&g_arena, CKPT_KIND_LIST);
    ckpt_value *l2 = ckpt__value_new(&g_arena, CKPT_KIND_LIST);
    assert_false(ckpt__value_equal(l1, l2));
    assert_true(ckpt__value_equal(l1, l1));
    assert_false(ckpt__value_equal(NULL, l1));

    /* dict keys: Python semantics, with and without the index */
    for (int size = 4; size <= 64; size *= 4) {
        ckpt_value *d = ckpt__value_new(&g_arena, CKPT_KIND_DICT);
        for (int i = 0; i < size; i++)
            assert_true(ckpt__dict_set(&g_arena, d, num(CKPT_KIND_INT, i), num(CKPT_KIND_INT, i)));
        assert_true(ckpt__dict_set(&g_arena, d, num(CKPT_KIND_FLOAT, 2.0), str(CKPT_KIND_STR, "two")));
        assert_true(ckpt__dict_set(&g_arena, d, num(CKPT_KIND_BOOL, 1), str(CKPT_KIND_STR, "one")));
        assert_true(ckpt__dict_set(&g_arena, d, tuple2(num(CKPT_KIND_INT, 1), num(CKPT_KIND_INT, 2)),
                                   str(CKPT_KIND_STR, "t")));
        assert_true(ckpt__dict_set(&g_arena, d, tuple2(num(CKPT_KIND_FLOAT, 1), num(CKPT_KIND_BOOL, 0)),
                                   str(CKPT_KIND_STR, "u")));
        assert_true(ckpt__dict_set(&g_arena, d, str(CKPT_KIND_STR, "k"), str(CKPT_KIND_STR, "s")));
        assert_true(ckpt__dict_set(&g_arena, d, str(CKPT_KIND_BYTES, "k"), str(CKPT_KIND_STR, "b")));
        assert_int_equal(ckpt_value_len(d), (size_t)size + 4);
        assert_repr(ckpt_value_key(d, 2), "2"); /* the first key stays */
        assert_repr(ckpt_value_dict_value(d, 2), "'two'");
        assert_repr(ckpt_value_dict_value(d, 1), "'one'");
        assert_repr(ckpt__dict_lookup(d, tuple2(num(CKPT_KIND_FLOAT, 1), num(CKPT_KIND_FLOAT, 2))), "'t'");
        assert_repr(ckpt__dict_lookup(d, tuple2(num(CKPT_KIND_INT, 1), num(CKPT_KIND_INT, 0))), "'u'");
        assert_repr(ckpt_value_get(d, "k"), "'s'");
        assert_repr(ckpt__dict_lookup(d, str(CKPT_KIND_BYTES, "k")), "'b'");
        assert_null(ckpt__dict_lookup(d, num(CKPT_KIND_INT, size + 1)));
        assert_int_equal(d->u.dict.index_cap > 0, size + 4 > 8);
    }
}

static void test_value_accessors(void **state)
{
    (void)state;
    /* NULL everywhere */
    assert_int_equal(ckpt_value_kind(NULL), CKPT_KIND_NONE);
    assert_false(ckpt_value_bool(NULL));
    assert_int_equal(ckpt_value_int(NULL), 0);
    assert_true(ckpt_value_float(NULL) == 0.0);
    double re = 1, im = 1;
    ckpt_value_complex(NULL, &re, &im);
    assert_true(re == 0 && im == 0);
    ckpt_value_complex(NULL, NULL, NULL);
    size_t len = 7;
    assert_null(ckpt_value_str(NULL, &len));
    assert_int_equal(len, 0);
    assert_int_equal(ckpt_value_dtype(NULL), CKPT_DTYPE_INVALID);
    assert_int_equal(ckpt_value_len(NULL), 0);
    assert_null(ckpt_value_item(NULL, 0));
    assert_null(ckpt_value_key(NULL, 0));
    assert_null(ckpt_value_dict_value(NULL, 0));
    assert_null(ckpt_value_get(NULL, "a"));
    assert_null(ckpt_value_state(NULL));
    assert_null(ckpt_value_tensor(NULL));

    static const char *const names[] = {"none", "bool", "int", "bigint", "float", "complex",
                                        "str", "bytes", "list", "tuple", "set", "dict",
                                        "ordered_dict", "size", "device", "dtype", "tensor",
                                        "global"};
    for (int k = 0; k <= CKPT_KIND_GLOBAL; k++)
        assert_string_equal(ckpt_kind_name((ckpt_kind)k), names[k]);
    assert_string_equal(ckpt_kind_name((ckpt_kind)100), "unknown");

    ckpt_value *storage = ckpt__value_new(&g_arena, CKPT__KIND_STORAGE);
    assert_int_equal(ckpt_value_kind(storage), CKPT_KIND_NONE);
    assert_null(ckpt_value_str(storage, NULL));
    ckpt_value *dt = ckpt__value_new(&g_arena, CKPT_KIND_DTYPE);
    dt->u.dtype = CKPT_DTYPE_BFLOAT16;
    assert_string_equal(ckpt_value_str(dt, &len), "bfloat16");
    assert_int_equal(len, 8);
    assert_int_equal(ckpt_value_dtype(dt), CKPT_DTYPE_BFLOAT16);
    ckpt_value *i = num(CKPT_KIND_INT, -3);
    assert_true(ckpt_value_bool(i));
    assert_true(ckpt_value_float(i) == -3.0);
    ckpt_value_complex(i, &re, &im);
    assert_true(re == -3.0 && im == 0.0);
    assert_int_equal(ckpt_value_int(num(CKPT_KIND_BOOL, 1)), 1);
    assert_int_equal(ckpt_value_int(num(CKPT_KIND_FLOAT, 2.5)), 0); /* not an int */
    assert_null(ckpt_value_str(i, NULL));
    ckpt_value *d = ckpt__value_new(&g_arena, CKPT_KIND_ORDERED_DICT);
    ckpt__dict_set(&g_arena, d, str(CKPT_KIND_STR, "a"), i);
    assert_ptr_equal(ckpt_value_item(d, 0), ckpt_value_key(d, 0));
    assert_null(ckpt_value_key(d, 1));
    assert_null(ckpt_value_get(d, "b"));
    assert_null(ckpt_value_get(i, "a"));
    assert_int_equal(ckpt_value_len(str(CKPT_KIND_STR, "abc")), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(test_reference_values),
        T(test_reference_tensors),
        T(test_protocol0_text),
        T(test_ints),
        T(test_floats),
        T(test_strings_and_bytes),
        T(test_containers),
        T(test_memo),
        T(test_framing_and_stop),
        T(test_frames),
        T(test_persistent_ids),
        T(test_rebuild_args_recycled),
        T(test_globals),
        T(test_unsafe_globals),
        T(test_calls),
        T(test_complex_signed_zero),
        T(test_build),
        T(test_tensors),
        T(test_rebuild_nesting),
        T(test_bombs),
        T(test_configured_limits),
        T(test_work_budget),
        T(test_truncation),
        T(test_malicious_corpus),
        T(test_benign_corpus),
        T(test_speed),
        T(test_arena),
        T(test_value_equality),
        T(test_value_accessors),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_hostile.c - crafted hostile input through the public API only:
 * ckpt_open_memory, ckpt_file_verify, ckpt_tensor_data/ckpt_tensor_copy of
 * every tensor, ckpt_close. Inputs built here: safetensors headers (huge
 * lengths, overflowing shapes, overlapping/gapped offsets, duplicate keys,
 * NUL in names) and pickles, alone and as data.pkl of a torch zip built here
 * (memo and stack bombs, deep nesting, exponential sharing, huge shapes, views
 * larger than their storage, storages larger than their records:
 * CVE-2026-24747), and views that repeat their storage (stride 0, a tensor
 * listed many times, a sparse tensor's dense copy) written out, cast or
 * copied past max_output_ratio. Truncations and mutants of real files,
 * deflate bombs, streaming verification and ZIP64 extremes are in
 * test_sweeps.c.
 *
 * Each case runs in a child process with a time limit and a memory cap, so
 * that a hang, a crash or unbounded memory is reported as that case's
 * failure: without AddressSanitizer under RLIMIT_AS, with it by counting the
 * live heap through the sanitizer allocator. Every crafted family also has a
 * well-formed twin that must open, so a builder bug cannot make a test pass.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define HOSTILE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOSTILE_ASAN 1
#endif
#endif
#ifndef HOSTILE_ASAN
#define HOSTILE_ASAN 0
#endif

/* Largest tensor copy the exercise makes (stride-0 views can be huge). */
#define MAX_COPY_BYTES ((uint64_t)64 << 20)
/* Memory one crafted case may use: library heap with ASan, else address
 * space above what the test holds when the case starts. */
#define CASE_MEMORY ((uint64_t)256 << 20)

/* ---- running the library -------------------------------------------------- */

typedef struct outcome {
    int finished;            /* 1 ran to the end; 0 timed out; <0 killed by signal -n */
    double seconds;
    ckpt_status open_status;
    ckpt_status verify_status;  /* CKPT_OK when not reached */
    ckpt_status copy_status;    /* first failing tensor read, CKPT_OK otherwise */
    size_t tensors;
    ckpt_error err;          /* the open error, or the first later one */
    uint64_t heap_peak;      /* with ASan: the most heap the case held */
} outcome;

static bool valid_status(ckpt_status st) { return st >= CKPT_OK && st <= CKPT_ERR_TYPE; }

/* Opens, verifies and reads every tensor of data[0..size). */
static void exercise(const void *data, size_t size, const ckpt_open_options *opts, outcome *o)
{
    memset(o, 0, sizeof(*o));
    double t0 = now_s();
    ckpt_file *f = (ckpt_file *)(uintptr_t)1;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    o->open_status = ckpt_open_memory(data, size, opts, &f, &err);
    if (o->open_status != CKPT_OK) {
        assert_null(f);
        o->err = err;
    } else {
        assert_non_null(f);
        ckpt_error verr;
        o->verify_status = ckpt_file_verify(f, &verr);
        if (o->verify_status != CKPT_OK)
            o->err = verr;
        o->tensors = ckpt_file_tensor_count(f);
        for (size_t i = 0; i < o->tensors; i++) {
            const char *name = NULL;
            const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
            assert_non_null(t);
            assert_non_null(name);
            ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
            ckpt_tensor_get_info(t, &ti);
            const void *p;
            bool zc;
            ckpt_error terr;
            ckpt_status st = ckpt_tensor_data(f, t, &p, &zc, &terr);
            if (st == CKPT_OK && ti.nbytes <= MAX_COPY_BYTES) {
                void *dst = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
                assert_non_null(dst);
                st = ckpt_tensor_copy(f, t, dst, (size_t)ti.nbytes, &terr);
                free(dst);
            }
            if (st != CKPT_OK && o->copy_status == CKPT_OK) {
                o->copy_status = st;
                if (o->verify_status == CKPT_OK)
                    o->err = terr;
            }
        }
        ckpt_close(f);
    }
    o->seconds = now_s() - t0;
    o->finished = 1;
}

/* Checks the contract of a failed call: a known status, and a message. */
static void check_error_shape(const outcome *o, const char *what)
{
    ckpt_status st = o->open_status != CKPT_OK ? o->open_status
                     : o->verify_status != CKPT_OK ? o->verify_status : o->copy_status;
    if (!valid_status(st))
        fail_msg("%s: unknown status %d", what, (int)st);
    if (st == CKPT_OK)
        return;
    if (o->err.status != st)
        fail_msg("%s: err.status %d != returned %d", what, (int)o->err.status, (int)st);
    if (o->err.message[0] == 0)
        fail_msg("%s: %s without a message", what, ckpt_status_name(st));
    if (memchr(o->err.message, 0, sizeof(o->err.message)) == NULL ||
        memchr(o->err.record, 0, sizeof(o->err.record)) == NULL)
        fail_msg("%s: error strings not terminated", what);
}

typedef struct job {
    const void *data;
    size_t size;
    const ckpt_open_options *opts;
} job;

/* In the child: exercise() under the memory cap (see the top comment). */
static void exercise_capped(const void *arg, void *result)
{
    const job *j = arg;
    outcome *o = result;
    mem_cap(CASE_MEMORY);
    exercise(j->data, j->size, j->opts, o);
    o->heap_peak = mem_peak();
}

/* Runs exercise() in a child with a time limit and a memory cap; the outcome
 * comes back by pipe. */
static outcome run_isolated(const void *data, size_t size, const ckpt_open_options *opts,
                            double limit_s)
{
    outcome o;
    memset(&o, 0, sizeof(o));
    const job j = {data, size, opts};
    child_end e;
    if (child_run(exercise_capped, &j, &o, sizeof(o), limit_s, &e))
        return o;
    memset(&o, 0, sizeof(o));
    if (e.timed_out) {
        o.finished = 0;
        o.seconds = e.seconds;
    } else if (e.signal) {
        o.finished = -e.signal;
    } else {
        /* a sanitizer report exits with a status, or the child failed an assert */
        o.finished = -1000 - (e.status > 0 ? e.status : 0);
    }
    return o;
}

static void require_finished(const outcome *o, const char *what, double limit_s)
{
    if (o->finished == 0)
        fail_msg("%s: no result within %.0f s (hang)", what, limit_s);
    if (o->finished < 0)
        fail_msg("%s: the process died (signal or sanitizer exit, code %d)", what, o->finished);
    if (o->heap_peak > CASE_MEMORY)
        fail_msg("%s: held %llu bytes of heap, more than the %llu allowed", what,
                 (unsigned long long)o->heap_peak, (unsigned long long)CASE_MEMORY);
    if (o->open_status == CKPT_ERR_NOMEM || o->verify_status == CKPT_ERR_NOMEM ||
        o->copy_status == CKPT_ERR_NOMEM)
        fail_msg("%s: out of memory under a cap of %llu bytes", what,
                 (unsigned long long)CASE_MEMORY);
}

/* Crafted hostile input: must finish in time and fail at open with one of the
 * allowed statuses and a message. */
static const outcome *expect_open_error(outcome *store, const void *data, size_t size,
                                        const char *what, ckpt_status a, ckpt_status b)
{
    const double limit = 60.0;
    *store = run_isolated(data, size, NULL, limit);
    require_finished(store, what, limit);
    check_error_shape(store, what);
    if (store->open_status == CKPT_OK)
        fail_msg("%s: opened (CKPT_OK, %zu tensors, verify %s, copy %s); expected %s", what,
                 store->tensors, ckpt_status_name(store->verify_status),
                 ckpt_status_name(store->copy_status), ckpt_status_name(a));
    char line[768];
    print_message("  %-58s %s: %s", what, ckpt_status_name(store->open_status),
                  ckpt_error_format(&store->err, line, sizeof(line)));
    if (HOSTILE_ASAN)
        print_message(" [%.1f s, heap %.1f KiB]", store->seconds,
                      (double)store->heap_peak / 1024.0);
    print_message("\n");
    if (store->open_status != a && store->open_status != b)
        fail_msg("%s: %s (%s: %s); expected %s%s%s", what, ckpt_status_name(store->open_status),
                 store->err.record, store->err.message, ckpt_status_name(a),
                 b != a ? " or " : "", b != a ? ckpt_status_name(b) : "");
    return store;
}

static void expect_opens(const void *data, size_t size, const char *what, size_t tensors)
{
    outcome o = run_isolated(data, size, NULL, 60.0);
    require_finished(&o, what, 60.0);
    if (o.open_status != CKPT_OK || o.verify_status != CKPT_OK || o.copy_status != CKPT_OK)
        fail_msg("%s (well-formed control): open %s verify %s copy %s: %s: %s", what,
                 ckpt_status_name(o.open_status), ckpt_status_name(o.verify_status),
                 ckpt_status_name(o.copy_status), o.err.record, o.err.message);
    if (o.tensors != tensors)
        fail_msg("%s (well-formed control): %zu tensors, expected %zu", what, o.tensors, tensors);
}

/* ---- crafted safetensors ---------------------------------------------------- */

/* header length field, header text, then `data_len` bytes of data */
static buf st_file(uint64_t declared_len, const char *header, size_t data_len)
{
    buf b = {0};
    b_le(&b, declared_len, 8);
    b_str(&b, header);
    for (size_t i = 0; i < data_len; i++)
        b_u8(&b, (unsigned)(i * 7 + 1));
    return b;
}

static buf st_make(const char *header, size_t data_len)
{
    return st_file(strlen(header), header, data_len);
}

static void st_expect(const char *header, size_t data_len, const char *what, ckpt_status a,
                      ckpt_status b)
{
    buf f = st_make(header, data_len);
    outcome o;
    expect_open_error(&o, f.p, f.len, what, a, b);
    if (o.err.record[0] == 0)
        fail_msg("%s: the error names no record (%s)", what, o.err.message);
    b_free(&f);
}

static void test_safetensors_crafted(void **state)
{
    (void)state;
    /* well-formed twins */
    buf ok = st_make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"I16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}", 16);
    expect_opens(ok.p, ok.len, "safetensors control", 2);
    b_free(&ok);
    ok = st_make("{\"__metadata__\":{\"k\":\"v\"},"
                 "\"a\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1);
    expect_opens(ok.p, ok.len, "safetensors control 2", 1);
    b_free(&ok);

    /* header lengths */
    const uint64_t lens[] = {UINT64_MAX, 1ULL << 63, (1ULL << 63) - 1, 100000001ULL, 1000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        buf f = st_file(lens[i], "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        4);
        char what[96];
        snprintf(what, sizeof(what), "safetensors header length %llu",
                 (unsigned long long)lens[i]);
        outcome o;
        expect_open_error(&o, f.p, f.len, what, CKPT_ERR_FORMAT, CKPT_ERR_LIMIT);
        b_free(&f);
    }

    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
              "\"data_offsets\":[0,4]}}", 4, "shape product overflows", CKPT_ERR_FORMAT,
              CKPT_ERR_LIMIT);
    st_expect("{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],"
              "\"data_offsets\":[0,8]}}", 8, "byte size overflows", CKPT_ERR_FORMAT,
              CKPT_ERR_LIMIT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
              "overlapping offsets", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 20,
              "bytes after the last tensor", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
              "gap between tensors", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
              "two tensors on the same bytes", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
              "data past the end of the file", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
              "duplicate JSON keys", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
              "NUL in a tensor name", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
              "byte length != shape x dtype", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
              "reversed offsets", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
              "negative dimension", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]", 4,
              "JSON cut short", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"X99\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
              "unknown dtype", CKPT_ERR_UNSUPPORTED, CKPT_ERR_FORMAT);
    st_expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "no data_offsets",
              CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"__metadata__\":{\"k\":1},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
              "non-string metadata", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    st_expect("{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
              "invalid UTF-8 in the header", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    {
        /* 65 dimensions of 1: more than max_ndim */
        buf h = {0};
        b_str(&h, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1");
        for (int i = 1; i < 65; i++)
            b_str(&h, ",1");
        b_str(&h, "],\"data_offsets\":[0,1]}}");
        b_u8(&h, 0);
        st_expect((const char *)h.p, 1, "65 dimensions", CKPT_ERR_LIMIT, CKPT_ERR_FORMAT);
        b_free(&h);
    }
}

/* ---- pickles and torch zips (support.h) --------------------------------------------- */

static uint8_t FLOATS[4096];

static void fill_floats(void)
{
    for (size_t i = 0; i < sizeof(FLOATS); i++)
        FLOATS[i] = (uint8_t)(i * 13 + 5);
}

static void test_torch_zip_control(void **state)
{
    (void)state;
    fill_floats();
    const int64_t shape[] = {2, 3}, stride[] = {3, 1};
    buf p = pk_one_tensor("t", "FloatStorage", 6, 0, shape, stride, 2);
    zbuilt z = torch_zip(&p, FLOATS, 24);
    expect_opens(z.file.p, z.file.len, "torch zip control", 1);

    /* read back in-process: the values come from the record we wrote */
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(z.file.p, z.file.len, NULL, &f, &err), CKPT_OK);
    const char *name;
    const ckpt_tensor *t = ckpt_file_tensor(f, 0, &name);
    assert_string_equal(name, "t");
    float out[6];
    assert_int_equal(ckpt_tensor_copy(f, t, out, sizeof(out), &err), CKPT_OK);
    assert_memory_equal(out, FLOATS, sizeof(out));
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.storage_file_offset, z.data_offset[1]);
    ckpt_close(f);

    /* the same pickle as a plain pickle file: a tensor needs storages -> refused or no data */
    outcome o = run_isolated(p.p, p.len, NULL, 60.0);
    require_finished(&o, "tensor pickle without a zip", 60.0);
    check_error_shape(&o, "tensor pickle without a zip");
    b_free(&p);
    b_free(&z.file);
}

/* A hostile pickle, alone and as archive/data.pkl; in the zip the error must
 * name the pickle record and an offset inside it. */
static void pickle_expect(const buf *pkl, const char *what, ckpt_status a, ckpt_status b)
{
    outcome o;
    char w[160];
    snprintf(w, sizeof(w), "%s (plain pickle)", what);
    expect_open_error(&o, pkl->p, pkl->len, w, a, b);
    zbuilt z = torch_zip(pkl, FLOATS, sizeof(FLOATS));
    snprintf(w, sizeof(w), "%s (torch zip)", what);
    expect_open_error(&o, z.file.p, z.file.len, w, a, b);
    /* Parser errors name the record and an offset in it; errors found after
     * parsing (e.g. nesting, in the tensor walk) may have neither. */
    if (o.err.record[0] ? strcmp(o.err.record, "archive/data.pkl") != 0
                        : o.err.offset != CKPT_NO_OFFSET)
        fail_msg("%s: error record '%s' offset %llu, expected archive/data.pkl (%s)", w,
                 o.err.record, (unsigned long long)o.err.offset, o.err.message);
    if (o.err.offset != CKPT_NO_OFFSET) {
        if (o.err.offset > pkl->len)
            fail_msg("%s: offset %llu is past the pickle (%zu bytes)", w,
                     (unsigned long long)o.err.offset, pkl->len);
        if (o.err.file_offset != CKPT_NO_OFFSET &&
            o.err.file_offset != z.data_offset[0] + o.err.offset)
            fail_msg("%s: file_offset %llu != record start %llu + offset %llu", w,
                     (unsigned long long)o.err.file_offset,
                     (unsigned long long)z.data_offset[0], (unsigned long long)o.err.offset);
    }
    b_free(&z.file);
}

static void test_pickle_memo_bombs(void **state)
{
    (void)state;
    fill_floats();
    /* a memo index far past max_memo_entries */
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, ']');
    b_u8(&p, 'r');
    b_le(&p, 0xFFFFFFF0u, 4);
    pk_stop(&p);
    pickle_expect(&p, "LONG_BINPUT 4294967280", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);

    /* 1.2 million memo slots */
    pk_proto(&p, 2);
    b_u8(&p, 'N');
    for (uint32_t i = 0; i < 1200000; i++) {
        b_u8(&p, 'r');
        b_le(&p, i, 4);
    }
    pk_stop(&p);
    pickle_expect(&p, "1.2M memo entries", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);

    /* control: a few memo entries are fine */
    pk_proto(&p, 2);
    b_u8(&p, 'N');
    for (uint32_t i = 0; i < 1000; i++) {
        b_u8(&p, 'r');
        b_le(&p, i, 4);
    }
    pk_stop(&p);
    expect_opens(p.p, p.len, "1000 memo entries", 0);
    b_free(&p);
}

static void test_pickle_exponential_sharing(void **state)
{
    /* "billion laughs": level k is a list holding level k-1 twice (by memo), 64
     * levels, so the tree has 2^64 paths but only 64 lists. Opening must not
     * walk every path: any status, within the time limit. */
    (void)state;
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, ']');
    b_u8(&p, 'q');
    b_u8(&p, 0);
    for (unsigned k = 1; k < 64; k++) {
        b_u8(&p, ']');
        b_u8(&p, '(');
        b_u8(&p, 'h');
        b_u8(&p, k - 1);
        b_u8(&p, 'h');
        b_u8(&p, k - 1);
        b_u8(&p, 'e');
        b_u8(&p, 'q');
        b_u8(&p, k);
    }
    pk_stop(&p);
    for (int form = 0; form < 2; form++) {
        zbuilt z = {0};
        const void *data = p.p;
        size_t size = p.len;
        if (form == 1) {
            fill_floats();
            z = torch_zip(&p, FLOATS, 16);
            data = z.file.p;
            size = z.file.len;
        }
        const char *what = form ? "2^64 paths by memo sharing (torch zip)"
                                : "2^64 paths by memo sharing (plain pickle)";
        outcome o = run_isolated(data, size, NULL, 10.0);
        b_free(&z.file);
        if (o.finished != 1)
            b_free(&p);
        require_finished(&o, what, 10.0);
        check_error_shape(&o, what);
        if (o.open_status == CKPT_OK)
            assert_int_equal(o.tensors, 0);
    }
    b_free(&p);
}

/* ---- one tensor under many paths (memo fan-out) ---------------------------------------- */

static const int64_t FAN_SHAPE[] = {4}, FAN_STRIDE[] = {1};

/* [[t] * inner] * outer with every repeat a memo reference: outer x inner
 * paths to one tensor from about 10 bytes per path of pickle. Under key
 * (when not NULL) the list is the value of {key: list}. */
static buf pk_fan_out(unsigned outer, unsigned inner, const char *key)
{
    buf b = {0};
    pk_proto(&b, 2);
    if (key) {
        b_u8(&b, '}');
        pk_unicode(&b, key);
    }
    b_u8(&b, ']');
    b_u8(&b, '(');
    b_u8(&b, ']');
    b_u8(&b, '(');
    pk_tensor(&b, "FloatStorage", "0", 4, 0, FAN_SHAPE, FAN_STRIDE, 1);
    b_u8(&b, 'r'); /* LONG_BINPUT 0: the tensor */
    b_le(&b, 0, 4);
    for (unsigned i = 1; i < inner; i++) {
        b_u8(&b, 'j'); /* LONG_BINGET 0 */
        b_le(&b, 0, 4);
    }
    b_u8(&b, 'e');
    b_u8(&b, 'r'); /* LONG_BINPUT 1: the inner list */
    b_le(&b, 1, 4);
    for (unsigned i = 1; i < outer; i++) {
        b_u8(&b, 'j');
        b_le(&b, 1, 4);
    }
    b_u8(&b, 'e');
    if (key)
        b_u8(&b, 's');
    pk_stop(&b);
    return b;
}

static ckpt_open_options fan_options(uint64_t max_paths, uint64_t max_name_bytes)
{
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    if (max_paths)
        o.limits.max_tensor_paths = max_paths;
    if (max_name_bytes)
        o.limits.max_tensor_name_bytes = max_name_bytes;
    return o;
}

/* A torch zip of pkl fails to open with CKPT_ERR_LIMIT and a message that
 * holds what. */
static void fan_expect_limit(const buf *pkl, const ckpt_open_options *opts, const char *label,
                             const char *what)
{
    zbuilt z = torch_zip(pkl, FLOATS, 16);
    outcome o = run_isolated(z.file.p, z.file.len, opts, 60.0);
    require_finished(&o, label, 60.0);
    check_error_shape(&o, label);
    print_message("  %-58s %s: %s\n", label, ckpt_status_name(o.open_status), o.err.message);
    if (o.open_status != CKPT_ERR_LIMIT)
        fail_msg("%s: open %s (%s), expected CKPT_ERR_LIMIT", label,
                 ckpt_status_name(o.open_status), o.err.message);
    if (!strstr(o.err.message, what))
        fail_msg("%s: the message does not say '%s': %s", label, what, o.err.message);
    b_free(&z.file);
}

/* A torch zip of pkl opens, verifies and copies every tensor in a child
 * (under the memory cap) and lists `tensors` names. */
static void fan_expect_opens(const buf *pkl, const ckpt_open_options *opts, const char *label,
                             size_t tensors)
{
    zbuilt z = torch_zip(pkl, FLOATS, 16);
    outcome o = run_isolated(z.file.p, z.file.len, opts, 120.0);
    require_finished(&o, label, 120.0);
    if (o.open_status != CKPT_OK || o.verify_status != CKPT_OK || o.copy_status != CKPT_OK)
        fail_msg("%s: open %s verify %s copy %s: %s", label, ckpt_status_name(o.open_status),
                 ckpt_status_name(o.verify_status), ckpt_status_name(o.copy_status),
                 o.err.message);
    if (o.tensors != tensors)
        fail_msg("%s: %zu tensors, expected %zu", label, o.tensors, tensors);
    b_free(&z.file);
}

static void test_memo_fan_out(void **state)
{
    (void)state;
    fill_floats();
    /* 10^6 paths from 10 KB: past the default max_tensor_paths (250,000) */
    buf p = pk_fan_out(1000, 1000, NULL);
    assert_true(p.len < 12000);
    fan_expect_limit(&p, NULL, "10^6 paths to one tensor, default limits", "max_tensor_paths");

    /* the same with the limit raised: every path is named, each costs its
     * name and a table entry, far below the cap (256 MiB over what the
     * test holds; 4 KiB per path would need 4 GB) */
    ckpt_open_options raised = fan_options(1000000, 0);
    fan_expect_opens(&p, &raised, "10^6 paths, max_tensor_paths 10^6", 1000000);

    /* one tensor, many names: every name finds the same tensor */
    zbuilt z = torch_zip(&p, FLOATS, 16);
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(z.file.p, z.file.len, &raised, &f, &err), CKPT_OK);
    assert_int_equal(ckpt_file_tensor_count(f), 1000000);
    const char *first, *last;
    const ckpt_tensor *t0 = ckpt_file_tensor(f, 0, &first);
    const ckpt_tensor *t1 = ckpt_file_tensor(f, 999999, &last);
    assert_string_equal(first, "0.0");
    assert_string_equal(last, "999.999");
    assert_ptr_equal(t0, t1);
    assert_ptr_equal(ckpt_file_find_tensor(f, "512.7"), t0);
    assert_ptr_equal(ckpt_file_tensor_value(f, 0), ckpt_file_tensor_value(f, 999999));
    ckpt_close(f);
    b_free(&z.file);
    b_free(&p);

    /* at the limit and one past it */
    p = pk_fan_out(30, 30, NULL);
    ckpt_open_options at = fan_options(900, 0), below = fan_options(899, 0);
    fan_expect_opens(&p, &at, "900 paths, max_tensor_paths 900", 900);
    fan_expect_limit(&p, &below, "900 paths, max_tensor_paths 899", "max_tensor_paths");
    b_free(&p);

    /* the names together: 900 names of 207 bytes under a 200-byte key */
    char key[201];
    memset(key, 'k', 200);
    key[200] = 0;
    p = pk_fan_out(30, 30, key);
    ckpt_open_options names = fan_options(0, 100000);
    fan_expect_limit(&p, &names, "900 names of 207 bytes, max_tensor_name_bytes 100000",
                     "max_tensor_name_bytes");
    fan_expect_opens(&p, NULL, "900 names of 207 bytes, default limits", 900);
    b_free(&p);
}

/* One name made long by a key shared down a path: {K: {K: ... {K: t}}}, the
 * 1000-byte key K pickled once and fetched from the memo 99 times. */
static void test_memo_long_name(void **state)
{
    (void)state;
    fill_floats();
    char key[1001];
    memset(key, 'n', 1000);
    key[1000] = 0;
    buf p = {0};
    pk_proto(&p, 2);
    for (int i = 0; i < 100; i++) {
        b_u8(&p, '}');
        if (i == 0) {
            pk_unicode(&p, key);
            b_u8(&p, 'q');
            b_u8(&p, 0);
        } else {
            b_u8(&p, 'h');
            b_u8(&p, 0);
        }
    }
    pk_tensor(&p, "FloatStorage", "0", 4, 0, FAN_SHAPE, FAN_STRIDE, 1);
    for (int i = 0; i < 100; i++)
        b_u8(&p, 's');
    pk_stop(&p);
    ckpt_open_options shorter = fan_options(0, 50000);
    fan_expect_limit(&p, &shorter, "a 100 KB name from a 1 KB key, max_tensor_name_bytes 50000",
                     "take more than 50000 bytes");
    fan_expect_opens(&p, NULL, "a 100 KB name from a 1 KB key, default limits", 1);
    b_free(&p);
}

/* Containers shared through the memo that hold a tensor and many other
 * items: every path to them would look at every item. */
static void test_memo_wide_sharing(void **state)
{
    (void)state;
    fill_floats();
    /* [[t, 0 x 100000] x 1000]: 1000 paths, 10^8 items to pass */
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, ']');
    b_u8(&p, '(');
    b_u8(&p, ']');
    b_u8(&p, '(');
    pk_tensor(&p, "FloatStorage", "0", 4, 0, FAN_SHAPE, FAN_STRIDE, 1);
    for (int i = 0; i < 100000; i++)
        pk_int(&p, 0);
    b_u8(&p, 'e');
    b_u8(&p, 'q');
    b_u8(&p, 0);
    for (int i = 1; i < 1000; i++) {
        b_u8(&p, 'h');
        b_u8(&p, 0);
    }
    b_u8(&p, 'e');
    pk_stop(&p);
    fan_expect_limit(&p, NULL, "1000 paths through a list of 100,001 items", "too many paths");
    b_free(&p);

    /* the same list reached twice: walked twice, fine */
    pk_proto(&p, 2);
    b_u8(&p, ']');
    b_u8(&p, '(');
    b_u8(&p, ']');
    b_u8(&p, '(');
    pk_tensor(&p, "FloatStorage", "0", 4, 0, FAN_SHAPE, FAN_STRIDE, 1);
    for (int i = 0; i < 100000; i++)
        pk_int(&p, 0);
    b_u8(&p, 'e');
    b_u8(&p, 'q');
    b_u8(&p, 0);
    b_u8(&p, 'h');
    b_u8(&p, 0);
    b_u8(&p, 'e');
    pk_stop(&p);
    fan_expect_opens(&p, NULL, "2 paths through a list of 100,001 items", 2);
    b_free(&p);

    /* 2^64 paths to a tensor: level k holds level k-1 twice, level 0 is [t] */
    pk_proto(&p, 2);
    b_u8(&p, ']');
    b_u8(&p, '(');
    pk_tensor(&p, "FloatStorage", "0", 4, 0, FAN_SHAPE, FAN_STRIDE, 1);
    b_u8(&p, 'e');
    b_u8(&p, 'q');
    b_u8(&p, 0);
    for (unsigned k = 1; k < 64; k++) {
        b_u8(&p, ']');
        b_u8(&p, '(');
        b_u8(&p, 'h');
        b_u8(&p, (unsigned)(k - 1));
        b_u8(&p, 'h');
        b_u8(&p, (unsigned)(k - 1));
        b_u8(&p, 'e');
        b_u8(&p, 'q');
        b_u8(&p, k);
    }
    pk_stop(&p);
    fan_expect_limit(&p, NULL, "2^64 paths to one tensor", "max_tensor_paths");
    b_free(&p);
}

static void test_pickle_stack_bombs(void **state)
{
    (void)state;
    fill_floats();
    buf p = {0};
    pk_proto(&p, 2);
    for (int i = 0; i < 10000000; i++)
        b_u8(&p, '(');
    pk_stop(&p);
    pickle_expect(&p, "10M MARKs", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);

    pk_proto(&p, 2);
    for (int i = 0; i < 10000000; i++)
        b_u8(&p, ']');
    pk_stop(&p);
    pickle_expect(&p, "10M EMPTY_LISTs on the stack", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);
}

static void test_pickle_deep_nesting(void **state)
{
    (void)state;
    fill_floats();
    /* 100,000 lists pushed, then appended into each other: [[[[...]]]] */
    buf p = {0};
    pk_proto(&p, 2);
    for (int i = 0; i < 100000; i++)
        b_u8(&p, ']');
    for (int i = 0; i < 99999; i++)
        b_u8(&p, 'a');
    pk_stop(&p);
    pickle_expect(&p, "100,000 nested lists", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);

    /* the same depth built with MARK/LIST: 100,000 nested through marks */
    pk_proto(&p, 2);
    for (int i = 0; i < 100000; i++)
        b_u8(&p, '(');
    for (int i = 0; i < 100000; i++)
        b_u8(&p, 'l'); /* LIST: items since the last mark become one list */
    pk_stop(&p);
    pickle_expect(&p, "100,000 nested MARK/LIST", CKPT_ERR_LIMIT, CKPT_ERR_LIMIT);
    b_free(&p);

    /* control: 100 levels are fine */
    pk_proto(&p, 2);
    for (int i = 0; i < 100; i++)
        b_u8(&p, ']');
    for (int i = 0; i < 99; i++)
        b_u8(&p, 'a');
    pk_stop(&p);
    expect_opens(p.p, p.len, "100 nested lists", 0);
    b_free(&p);
}

/* Small well-formed pickles: each must open (plain and in a torch zip). */
static void test_pickle_tiny_values(void **state)
{
    (void)state;
    fill_floats();
    struct {
        const char *what;
        const char *bytes;
        size_t len;
    } cases[] = {
#define PK(s) s, sizeof(s) - 1
        {"empty tuple", PK("\x80\x02).")},
        {"empty tuple by MARK/TUPLE", PK("\x80\x02(t.")},
        {"empty list", PK("\x80\x02].")},
        {"empty dict", PK("\x80\x02}.")},
        {"None", PK("\x80\x02N.")},
        {"empty list by MARK/LIST", PK("\x80\x02(l.")},
        {"empty dict by MARK/DICT", PK("\x80\x02(d.")},
        {"protocol 0 int", PK("I42\n.")},
        {"empty tuple in a protocol 4 frame",
         PK("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00).")},
#undef PK
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char what[96];
        snprintf(what, sizeof(what), "%s (plain pickle)", cases[i].what);
        expect_opens(cases[i].bytes, cases[i].len, what, 0);
        buf p = {0};
        b_put(&p, cases[i].bytes, cases[i].len);
        zbuilt z = torch_zip(&p, FLOATS, 16);
        snprintf(what, sizeof(what), "%s (torch zip)", cases[i].what);
        expect_opens(z.file.p, z.file.len, what, 0);
        b_free(&z.file);
        b_free(&p);
    }
}

static void test_pickle_malformed(void **state)
{
    (void)state;
    fill_floats();
    struct {
        const char *what;
        const char *bytes;
        size_t len;
        ckpt_status a, b;
    } cases[] = {
        {"STOP on an empty stack", "\x80\x02.", 3, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"APPEND without a list", "\x80\x02K\x01" "a.", 6, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"BINGET of an unset slot", "\x80\x02h\x05.", 5, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"BINUNICODE past the end", "\x80\x02X\xff\xff\xff\x7f" "abc.", 11, CKPT_ERR_FORMAT,
         CKPT_ERR_LIMIT},
        {"no STOP", "\x80\x02]", 3, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"unknown opcode", "\x80\x02\xff.", 4, CKPT_ERR_FORMAT, CKPT_ERR_UNSUPPORTED},
        {"SETITEM on a list", "\x80\x02]K\x01K\x02s.", 9, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"TUPLE without MARK", "\x80\x02K\x01t.", 6, CKPT_ERR_FORMAT, CKPT_ERR_FORMAT},
        {"LONG1 longer than the input", "\x80\x02\x8a\xff\x01.", 6, CKPT_ERR_FORMAT,
         CKPT_ERR_FORMAT},
        {"REDUCE of a non-callable", "\x80\x02K\x01)R.", 7, CKPT_ERR_FORMAT, CKPT_ERR_UNSAFE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf p = {0};
        b_put(&p, cases[i].bytes, cases[i].len);
        pickle_expect(&p, cases[i].what, cases[i].a, cases[i].b);
        b_free(&p);
    }
}

static void test_pickle_unsafe_global(void **state)
{
    (void)state;
    fill_floats();
    buf p = {0};
    pk_proto(&p, 2);
    pk_global(&p, "os", "system");
    pk_unicode(&p, "echo pwned");
    b_u8(&p, 0x85);
    b_u8(&p, 'R');
    pk_stop(&p);
    outcome o;
    expect_open_error(&o, p.p, p.len, "os.system (plain pickle)", CKPT_ERR_UNSAFE,
                      CKPT_ERR_UNSAFE);
    if (!strstr(o.err.message, "os.system") && !strstr(o.err.message, "os system"))
        fail_msg("message does not name os.system: %s", o.err.message);
    assert_int_equal(o.err.offset, 2); /* the GLOBAL opcode */
    zbuilt z = torch_zip(&p, FLOATS, 16);
    expect_open_error(&o, z.file.p, z.file.len, "os.system (torch zip)", CKPT_ERR_UNSAFE,
                      CKPT_ERR_UNSAFE);
    assert_string_equal(o.err.record, "archive/data.pkl");
    assert_int_equal(o.err.offset, 2);
    assert_int_equal(o.err.file_offset, z.data_offset[0] + 2);
    b_free(&z.file);
    b_free(&p);

    /* STACK_GLOBAL built from memo entries (scanner evasion) */
    pk_proto(&p, 2);
    p.p[1] = 4;
    pk_unicode(&p, "posix");
    b_u8(&p, 0x94); /* MEMOIZE */
    pk_unicode(&p, "system");
    b_u8(&p, 0x94);
    b_u8(&p, '0');  /* POP */
    b_u8(&p, '0');
    b_u8(&p, 'h');
    b_u8(&p, 0);
    b_u8(&p, 'h');
    b_u8(&p, 1);
    b_u8(&p, 0x93); /* STACK_GLOBAL */
    pk_unicode(&p, "id");
    b_u8(&p, 0x85);
    b_u8(&p, 'R');
    pk_stop(&p);
    pickle_expect(&p, "STACK_GLOBAL posix.system from the memo", CKPT_ERR_UNSAFE,
                  CKPT_ERR_UNSAFE);
    b_free(&p);

    /* a benign pickle then a second one with the payload */
    b_put(&p, "\x80\x02]q\x00.", 6);
    pk_proto(&p, 2);
    pk_global(&p, "builtins", "eval");
    pk_unicode(&p, "1");
    b_u8(&p, 0x85);
    b_u8(&p, 'R');
    pk_stop(&p);
    outcome o2;
    expect_open_error(&o2, p.p, p.len, "second pickle after STOP (plain pickle)",
                      CKPT_ERR_UNSAFE, CKPT_ERR_FORMAT);
    b_free(&p);
}

/* {"t": tensor} in a torch zip whose archive/data/0 has storage_bytes bytes */
static void tensor_zip_expect(const char *storage_class, int64_t storage_numel,
                              size_t storage_bytes, int64_t offset, const int64_t *shape,
                              const int64_t *stride, int ndim, const char *what,
                              ckpt_status a, ckpt_status b)
{
    fill_floats();
    buf p = pk_one_tensor("t", storage_class, storage_numel, offset, shape, stride, ndim);
    zbuilt z = torch_zip(&p, FLOATS, storage_bytes);
    outcome o;
    expect_open_error(&o, z.file.p, z.file.len, what, a, b);
    /* found while reading the pickle: it names the pickle and where in it */
    if (strcmp(o.err.record, "archive/data.pkl") != 0 || o.err.offset == CKPT_NO_OFFSET ||
        o.err.offset >= p.len)
        fail_msg("%s: error at '%s' byte %llu, expected a place inside archive/data.pkl (%s)",
                 what, o.err.record, (unsigned long long)o.err.offset, o.err.message);
    if (o.err.file_offset != CKPT_NO_OFFSET && o.err.file_offset != z.data_offset[0] + o.err.offset)
        fail_msg("%s: file_offset %llu != %llu", what, (unsigned long long)o.err.file_offset,
                 (unsigned long long)(z.data_offset[0] + o.err.offset));
    b_free(&z.file);
    b_free(&p);
}

static void test_tensor_bounds(void **state)
{
    (void)state;
    {
        const int64_t shape[] = {4}, stride[] = {1};
        fill_floats();
        buf p = pk_one_tensor("t", "FloatStorage", 4, 0, shape, stride, 1);
        zbuilt z = torch_zip(&p, FLOATS, 16);
        expect_opens(z.file.p, z.file.len, "float[4] in 16 bytes (control)", 1);
        b_free(&z.file);
        b_free(&p);
    }
    {
        const int64_t shape[] = {INT64_C(1) << 62, INT64_C(1) << 62};
        const int64_t stride[] = {INT64_C(1) << 62, 1};
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 2,
                          "shape [2^62, 2^62]", CKPT_ERR_FORMAT, CKPT_ERR_LIMIT);
    }
    {
        const int64_t shape[] = {INT64_C(1) << 62, INT64_C(1) << 62};
        const int64_t stride[] = {0, 0};
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 2,
                          "shape [2^62, 2^62] with stride 0 (numel overflows)",
                          CKPT_ERR_FORMAT, CKPT_ERR_LIMIT);
    }
    {
        const int64_t shape[] = {10}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 1,
                          "view of 10 elements on a storage of 4", CKPT_ERR_FORMAT,
                          CKPT_ERR_FORMAT);
    }
    {
        const int64_t shape[] = {2}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 4, 16, 3, shape, stride, 1,
                          "view at offset 3 of 2 elements on a storage of 4",
                          CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    }
    {
        const int64_t shape[] = {2, 2}, stride[] = {INT64_C(1) << 61, 1};
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 2,
                          "stride 2^61 (element offset x size overflows)", CKPT_ERR_FORMAT,
                          CKPT_ERR_LIMIT);
    }
    {
        const int64_t shape[] = {2}, stride[] = {-1};
        tensor_zip_expect("FloatStorage", 4, 16, 1, shape, stride, 1, "negative stride",
                          CKPT_ERR_FORMAT, CKPT_ERR_UNSUPPORTED);
    }
    {
        const int64_t shape[] = {-2}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 1, "negative size",
                          CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    }
    {
        const int64_t shape[] = {1}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 4, 16, -1, shape, stride, 1,
                          "negative storage offset", CKPT_ERR_FORMAT, CKPT_ERR_FORMAT);
    }
    {
        /* CVE-2026-24747: the storage says 1024 floats, the record holds 16 bytes */
        const int64_t shape[] = {4}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 1024, 16, 0, shape, stride, 1,
                          "storage of 1024 floats in a 16-byte record", CKPT_ERR_FORMAT,
                          CKPT_ERR_FORMAT);
    }
    {
        /* ... and the reverse: a record longer than the storage */
        const int64_t shape[] = {4}, stride[] = {1};
        tensor_zip_expect("FloatStorage", 4, 64, 0, shape, stride, 1,
                          "storage of 4 floats in a 64-byte record", CKPT_ERR_FORMAT,
                          CKPT_ERR_FORMAT);
    }
    {
        const int64_t shape[] = {4}, stride[] = {1};
        tensor_zip_expect("FloatStorage", INT64_C(1) << 62, 16, 0, shape, stride, 1,
                          "storage numel 2^62", CKPT_ERR_FORMAT, CKPT_ERR_LIMIT);
    }
    {
        /* a storage record that does not exist */
        fill_floats();
        const int64_t shape[] = {4}, stride[] = {1};
        buf p = pk_one_tensor("t", "FloatStorage", 4, 0, shape, stride, 1);
        zbuilt z = torch_zip(&p, NULL, 0);
        outcome o;
        expect_open_error(&o, z.file.p, z.file.len, "missing storage record", CKPT_ERR_FORMAT,
                          CKPT_ERR_NOT_FOUND);
        b_free(&z.file);
        b_free(&p);
    }
    {
        /* 65 dimensions */
        int64_t shape[65], stride[65];
        for (int i = 0; i < 65; i++) {
            shape[i] = 1;
            stride[i] = 1;
        }
        tensor_zip_expect("FloatStorage", 4, 16, 0, shape, stride, 65, "65 dimensions",
                          CKPT_ERR_LIMIT, CKPT_ERR_FORMAT);
    }
}

/* A configured limit: a deflated record inflating far beyond its size. */
static void test_zip_inflate_ratio(void **state)
{
    (void)state;
    /* Stored zip where the central directory claims a 5 GiB inflated size for
     * a deflated data.pkl: refused before inflating. */
    buf pk = {0};
    pk_proto(&pk, 2);
    b_u8(&pk, 'N');
    pk_stop(&pk);
    zbuilt z = torch_zip(&pk, NULL, 0);
    /* patch the first entry: method 8 and uncompressed size 0xFFFFFFFE in both headers */
    uint8_t *f = z.file.p;
    size_t len = z.file.len;
    f[8] = 8;
    memset(f + 22, 0xFE, 4);
    f[25] = 0xFF;
    size_t cd = 0;
    for (size_t i = len - 22; i > 0; i--) {
        if (f[i] == 'P' && f[i + 1] == 'K' && f[i + 2] == 1 && f[i + 3] == 2) {
            cd = i;
            /* keep looking for the first central entry */
        }
    }
    assert_true(cd > 0);
    f[cd + 10] = 8;
    memset(f + cd + 24, 0xFE, 4);
    f[cd + 27] = 0xFF;
    outcome o = run_isolated(f, len, NULL, 60.0);
    require_finished(&o, "deflated data.pkl claiming 4 GiB", 60.0);
    check_error_shape(&o, "deflated data.pkl claiming 4 GiB");
    if (o.open_status == CKPT_OK)
        fail_msg("a 6-byte deflated record claiming 4 GiB opened");
    b_free(&z.file);
    b_free(&pk);
}

/* ---- expanding views: what a file's tensors make is bounded ---------------------------------- */

static char *read_text(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *b = malloc(4096);
    assert_non_null(b);
    *len = fread(b, 1, 4095, fp);
    b[*len] = 0;
    fclose(fp);
    return b;
}

static size_t dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void expect_output_limit(ckpt_status st, const ckpt_error *err, const char *record,
                                const char *what)
{
    if (st != CKPT_ERR_LIMIT)
        fail_msg("%s: %s (%s), expected CKPT_ERR_LIMIT", what, ckpt_status_name(st),
                 err->message);
    if (strcmp(err->record, record) != 0 || !strstr(err->message, "max_output_ratio"))
        fail_msg("%s: the error should name '%s' and max_output_ratio: %s: %s", what, record,
                 err->record, err->message);
}

/* Opens data with max_output_ratio set (0: the default). */
static ckpt_file *open_ratio(const buf *data, uint64_t ratio)
{
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    if (ratio)
        o.limits.max_output_ratio = ratio;
    ckpt_file *f = NULL;
    ckpt_error err;
    if (ckpt_open_memory(data->p, data->len, &o, &f, &err) != CKPT_OK)
        fail_msg("open: %s: %s", err.record, err.message);
    return f;
}

/*
 * A view with stride (0, 0) of 72 MiB over one float, in a file of some
 * 700 bytes (torch saves torch.zeros(1).expand(18, 1 << 20) so): writing it
 * contiguous, casting it, copying it or going through its values is refused
 * before anything is made, naming the tensor; the torch writer keeps the
 * view (4 bytes of storage); raising max_output_ratio lets it through.
 */
static void test_expanding_views(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckpt_expand_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char st_path[128], pth_path[128], cast_path[128];
    snprintf(st_path, sizeof(st_path), "%s/out.safetensors", dir);
    snprintf(pth_path, sizeof(pth_path), "%s/out.pth", dir);
    snprintf(cast_path, sizeof(cast_path), "%s/cast.pth", dir);

    const int64_t shape[] = {18, INT64_C(1) << 20}, stride[] = {0, 0};
    const uint64_t nbytes = (uint64_t)18 << 22;
    static const uint8_t one[4] = {0, 0, 0x80, 0x3f}; /* 1.0f */
    buf p = pk_one_tensor("t", "FloatStorage", 1, 0, shape, stride, 2);
    zbuilt z = torch_zip(&p, one, 4);
    assert_true(z.file.len < 1024);

    ckpt_file *f = open_ratio(&z.file, 0);
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "t");
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.nbytes, nbytes);
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    expect_output_limit(ckpt_file_check_output(f, nbytes, "t", &err), &err, "t",
                        "ckpt_file_check_output");
    assert_int_equal(ckpt_file_check_output(f, 1 << 20, "t", &err), CKPT_OK);

    /* safetensors: refused before anything is written; the old file stays */
    FILE *fp = fopen(st_path, "wb");
    assert_non_null(fp);
    fputs("previous", fp);
    fclose(fp);
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    so.flags = CKPT_SAVE_NO_FSYNC;
    memset(&err, 0, sizeof(err));
    expect_output_limit(ckpt_save_safetensors(st_path, ckpt_file_root(f), &so, &err), &err, "t",
                        "safetensors of a stride-0 view");
    size_t len;
    char *text = read_text(st_path, &len);
    assert_non_null(text);
    assert_string_equal(text, "previous");
    free(text);
    assert_int_equal(dir_entries(dir), 1); /* no temporary left */

    /* torch zip: the view is kept, its one float written */
    assert_int_equal(ckpt_save_torch(pth_path, ckpt_file_root(f), &so, &err), CKPT_OK);
    struct stat sb;
    assert_int_equal(stat(pth_path, &sb), 0);
    assert_true(sb.st_size < 4096);

    /* a cast is a contiguous copy: 144 MiB of float64 */
    ckpt_tree *tree = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(tree);
    ckpt_dict_put_str(tree, root, "t",
                      ckpt_new_cast(tree, ckpt_file_tensor_value(f, 0), CKPT_DTYPE_FLOAT64));
    assert_int_equal(ckpt_tree_status(tree, &err), CKPT_OK);
    memset(&err, 0, sizeof(err));
    expect_output_limit(ckpt_save_torch(cast_path, root, &so, &err), &err, "t",
                        "torch zip of a float64 cast of a stride-0 view");
    assert_int_equal(stat(cast_path, &sb), -1);
    assert_int_equal(dir_entries(dir), 2);
    ckpt_tree_free(tree);

    /* a contiguous copy: refused before the destination is touched */
    uint8_t *dst = malloc(nbytes);
    assert_non_null(dst);
    memset(&err, 0, sizeof(err));
    expect_output_limit(ckpt_tensor_copy(f, t, dst, nbytes, &err), &err, "t",
                        "ckpt_tensor_copy of a stride-0 view");
    ckpt_close(f);

    /* raised: the same file converts and copies */
    f = open_ratio(&z.file, UINT64_C(1) << 20);
    t = ckpt_file_find_tensor(f, "t");
    assert_int_equal(ckpt_save_safetensors(st_path, ckpt_file_root(f), &so, &err), CKPT_OK);
    assert_int_equal(stat(st_path, &sb), 0);
    assert_true((uint64_t)sb.st_size > nbytes && (uint64_t)sb.st_size < nbytes + 4096);
    assert_int_equal(ckpt_tensor_copy(f, t, dst, nbytes, &err), CKPT_OK);
    float last;
    memcpy(&last, dst + nbytes - 4, 4);
    assert_true(last == 1.0f);
    ckpt_close(f);
    free(dst);
    unlink(st_path);
    unlink(pth_path);
    rmdir(dir);
    b_free(&z.file);
    b_free(&p);
}

/*
 * One storage of 256 KiB under 400 names. The same tensor listed 400 times
 * (memo references) is written once to safetensors, the other names in the
 * metadata; 400 views at different offsets are written under every name,
 * 100 MiB from a file of 256 KiB, past 64 times the file plus 64 MiB. The
 * torch writer writes the storage once either way.
 */
static void test_repeated_tensor(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckpt_repeat_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char st_path[128], pth_path[128];
    snprintf(st_path, sizeof(st_path), "%s/out.safetensors", dir);
    snprintf(pth_path, sizeof(pth_path), "%s/out.pth", dir);
    const int64_t n = 65536, shape[] = {65536}, stride[] = {1}, vshape[] = {65536 - 400};
    uint8_t *data = calloc((size_t)n, 4);
    assert_non_null(data);
    for (int views = 0; views < 2; views++) {
        buf p = {0};
        pk_proto(&p, 2);
        b_u8(&p, '}');
        pk_unicode(&p, "t");
        b_u8(&p, ']');
        b_u8(&p, '(');
        if (views) {
            for (int i = 0; i < 400; i++)
                pk_tensor(&p, "FloatStorage", "0", n, i, vshape, stride, 1);
        } else {
            pk_tensor(&p, "FloatStorage", "0", n, 0, shape, stride, 1);
            b_u8(&p, 'q'); /* BINPUT 0 */
            b_u8(&p, 0);
            for (int i = 1; i < 400; i++) {
                b_u8(&p, 'h'); /* BINGET 0 */
                b_u8(&p, 0);
            }
        }
        b_u8(&p, 'e');
        b_u8(&p, 's');
        pk_stop(&p);
        zbuilt z = torch_zip(&p, data, (size_t)n * 4);
        ckpt_file *f = open_ratio(&z.file, 0);
        assert_int_equal(ckpt_file_tensor_count(f), 400);
        ckpt_save_options so;
        ckpt_save_options_default(&so);
        so.flags = CKPT_SAVE_NO_FSYNC;
        ckpt_error err;
        memset(&err, 0, sizeof(err));
        ckpt_status st = ckpt_save_safetensors(st_path, ckpt_file_root(f), &so, &err);
        if (views && (st != CKPT_ERR_LIMIT || !strstr(err.record, "t.") ||
                      !strstr(err.message, "max_output_ratio")))
            fail_msg("400 views written whole: %s: %s: %s", ckpt_status_name(st), err.record,
                     err.message);
        if (views) {
            assert_int_equal(dir_entries(dir), 0);
        } else {
            if (st != CKPT_OK)
                fail_msg("a tensor listed 400 times: %s: %s", ckpt_status_name(st), err.message);
            ckpt_file *g = NULL;
            assert_int_equal(ckpt_open(st_path, NULL, &g, &err), CKPT_OK);
            assert_int_equal(ckpt_file_tensor_count(g), 1);
            ckpt_file_info info = {.struct_size = sizeof(info)};
            ckpt_file_get_info(g, &info);
            assert_int_equal(ckpt_value_len(info.metadata), 399);
            const ckpt_value *kept = ckpt_value_get(info.metadata, "t.1");
            assert_string_equal(ckpt_value_str(kept, NULL), "t.0");
            ckpt_close(g);
            unlink(st_path);
        }
        assert_int_equal(ckpt_save_torch(pth_path, ckpt_file_root(f), &so, &err), CKPT_OK);
        ckpt_close(f);
        unlink(pth_path);
        b_free(&z.file);
        b_free(&p);
    }
    rmdir(dir);
    free(data);
}

/* A sparse_coo tensor of 2^25 floats with one value: its dense copy is
 * 128 MiB from a file of a few hundred bytes, refused; raised, it is made. */
static void test_sparse_dense_copy(void **state)
{
    (void)state;
    static const uint8_t index[8] = {0}, value[4] = {0, 0, 0x80, 0x3f};
    const int64_t ishape[] = {1, 1}, istride[] = {1, 1}, vshape[] = {1}, vstride[] = {1};
    const int64_t size[] = {INT64_C(1) << 25};
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, '}');
    pk_unicode(&p, "t");
    pk_global(&p, "torch._utils", "_rebuild_sparse_tensor");
    b_u8(&p, '(');
    pk_global(&p, "torch", "sparse_coo");
    b_u8(&p, '(');
    pk_tensor(&p, "LongStorage", "0", 1, 0, ishape, istride, 2);
    pk_tensor(&p, "FloatStorage", "1", 1, 0, vshape, vstride, 1);
    pk_int_tuple(&p, size, 1);
    b_u8(&p, 't');
    b_u8(&p, 't');
    b_u8(&p, 'R');
    b_u8(&p, 's');
    pk_stop(&p);
    static const uint8_t version[] = "3\n";
    zrec recs[] = {zr_stored("archive/data.pkl", p.p, p.len),
                   zr_stored("archive/data/0", index, 8),
                   zr_stored("archive/data/1", value, 4),
                   zr_stored("archive/version", version, 2)};
    zbuilt z = zip_build(recs, 4, NULL);
    ckpt_file *f = open_ratio(&z.file, 0);
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "t");
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.layout, CKPT_LAYOUT_SPARSE_COO);
    uint8_t *dst = malloc(ti.nbytes);
    assert_non_null(dst);
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    expect_output_limit(ckpt_tensor_copy(f, t, dst, ti.nbytes, &err), &err, "t",
                        "dense copy of a sparse tensor");
    ckpt_close(f);
    f = open_ratio(&z.file, UINT64_C(1) << 20);
    t = ckpt_file_find_tensor(f, "t");
    assert_int_equal(ckpt_tensor_copy(f, t, dst, ti.nbytes, &err), CKPT_OK);
    float first;
    memcpy(&first, dst, 4);
    assert_true(first == 1.0f);
    ckpt_close(f);
    free(dst);
    b_free(&z.file);
    b_free(&p);

    /* indices and values that repeat one element 2^30 times (stride 0): 8 GiB
     * of indices to check, refused by verify and by the dense copy alike */
    const int64_t rshape[] = {1, INT64_C(1) << 30}, rstride[] = {0, 0};
    const int64_t rvshape[] = {INT64_C(1) << 30}, rvstride[] = {0};
    const int64_t rsize[] = {4};
    memset(&p, 0, sizeof(p));
    pk_proto(&p, 2);
    b_u8(&p, '}');
    pk_unicode(&p, "t");
    pk_global(&p, "torch._utils", "_rebuild_sparse_tensor");
    b_u8(&p, '(');
    pk_global(&p, "torch", "sparse_coo");
    b_u8(&p, '(');
    pk_tensor(&p, "LongStorage", "0", 1, 0, rshape, rstride, 2);
    pk_tensor(&p, "FloatStorage", "1", 1, 0, rvshape, rvstride, 1);
    pk_int_tuple(&p, rsize, 1);
    b_u8(&p, 't');
    b_u8(&p, 't');
    b_u8(&p, 'R');
    b_u8(&p, 's');
    pk_stop(&p);
    recs[0] = zr_stored("archive/data.pkl", p.p, p.len);
    z = zip_build(recs, 4, NULL);
    outcome o = run_isolated(z.file.p, z.file.len, NULL, 60.0);
    require_finished(&o, "sparse_coo of 2^30 repeated indices", 60.0);
    /* (ckpt_tensor_data of a sparse tensor is CKPT_ERR_UNSUPPORTED) */
    if (o.open_status != CKPT_OK || o.verify_status != CKPT_ERR_LIMIT ||
        o.copy_status != CKPT_ERR_UNSUPPORTED || strcmp(o.err.record, "t") != 0)
        fail_msg("sparse_coo of 2^30 repeated indices: open %s, verify %s, copy %s: %s: %s",
                 ckpt_status_name(o.open_status), ckpt_status_name(o.verify_status),
                 ckpt_status_name(o.copy_status), o.err.record, o.err.message);
    b_free(&z.file);
    b_free(&p);

    /* its dense copy (16 bytes) would copy 2^24 repeated indices first */
    const int64_t cshape[] = {1, INT64_C(1) << 24}, cvshape[] = {INT64_C(1) << 24};
    memset(&p, 0, sizeof(p));
    pk_proto(&p, 2);
    b_u8(&p, '}');
    pk_unicode(&p, "t");
    pk_global(&p, "torch._utils", "_rebuild_sparse_tensor");
    b_u8(&p, '(');
    pk_global(&p, "torch", "sparse_coo");
    b_u8(&p, '(');
    pk_tensor(&p, "LongStorage", "0", 1, 0, cshape, rstride, 2);
    pk_tensor(&p, "FloatStorage", "1", 1, 0, cvshape, rvstride, 1);
    pk_int_tuple(&p, rsize, 1);
    b_u8(&p, 't');
    b_u8(&p, 't');
    b_u8(&p, 'R');
    b_u8(&p, 's');
    pk_stop(&p);
    recs[0] = zr_stored("archive/data.pkl", p.p, p.len);
    z = zip_build(recs, 4, NULL);
    f = open_ratio(&z.file, 0);
    uint8_t small[16];
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_tensor_copy(f, ckpt_file_find_tensor(f, "t"), small, 16, &err);
    if (st != CKPT_ERR_LIMIT || !strstr(err.message, "max_output_ratio"))
        fail_msg("dense copy over 2^24 repeated indices: %s: %s", ckpt_status_name(st),
                 err.message);
    ckpt_close(f);
    b_free(&z.file);
    b_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_crafted),
        cmocka_unit_test(test_torch_zip_control),
        cmocka_unit_test(test_pickle_memo_bombs),
        cmocka_unit_test(test_pickle_exponential_sharing),
        cmocka_unit_test(test_memo_fan_out),
        cmocka_unit_test(test_memo_long_name),
        cmocka_unit_test(test_memo_wide_sharing),
        cmocka_unit_test(test_pickle_stack_bombs),
        cmocka_unit_test(test_pickle_deep_nesting),
        cmocka_unit_test(test_pickle_tiny_values),
        cmocka_unit_test(test_pickle_malformed),
        cmocka_unit_test(test_pickle_unsafe_global),
        cmocka_unit_test(test_tensor_bounds),
        cmocka_unit_test(test_zip_inflate_ratio),
        cmocka_unit_test(test_expanding_views),
        cmocka_unit_test(test_repeated_tensor),
        cmocka_unit_test(test_sparse_dense_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

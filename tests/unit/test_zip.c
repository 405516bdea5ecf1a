/*
 * test_zip.c - the strict zip reader (src/zip/zip_read.c).
 *
 * Archives are built in memory by a small writer below that can produce what
 * PyTorch writes (FB alignment padding, data descriptors with zeros in the
 * local header, ZIP64 extras and end records) and what Python's zipfile
 * writes (real values in the local header, no descriptor). Tests then patch
 * single fields to build each malformed case.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "zip.h"
#include "support.h"

#include <ctype.h>
#include <dirent.h>
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- byte buffer (support.h) --------------------------------------------- */

static void set16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void set32(uint8_t *p, uint32_t v) { set16(p, v); set16(p + 2, v >> 16); }
static void set64(uint8_t *p, uint64_t v) { set32(p, (uint32_t)v); set32(p + 4, (uint32_t)(v >> 32)); }

/* ---- archive writer ------------------------------------------------------- */

typedef struct zentry {
    const char *name;
    const void *data;
    size_t size;
    uint16_t method;      /* 0 stored, 8 deflate */
} zentry;

typedef struct zopts {
    bool torch;            /* PyTorch: flags 0x0808, zeros locally, descriptor, FB padding to 64 */
    bool zip64_extra;      /* central records put sizes and offset in a ZIP64 extra */
    bool wide_descriptor;  /* local ZIP64 extra and 8-byte sizes in the descriptor */
    bool zip64_end;        /* ZIP64 end record and locator (PyTorch always writes them) */
    bool no_descriptor_sig;/* descriptor without its PK\7\8 */
    bool local_zip64;      /* no descriptor: local sizes all ones + local ZIP64 extra */
    size_t lead;           /* junk bytes before the first entry, offsets kept right */
    const char *comment;
} zopts;

typedef struct zarchive {
    uint8_t *p;
    size_t size;
    size_t count;
    size_t *local_at, *central_at, *data_at, *desc_at;
    uint32_t *crc;
    size_t *comp_size;
    size_t cd_offset, cd_size, zip64_end_at, locator_at, eocd_at;
} zarchive;

static void zfree(zarchive *a)
{
    free(a->p);
    free(a->local_at);
    free(a->central_at);
    free(a->data_at);
    free(a->desc_at);
    free(a->crc);
    free(a->comp_size);
    memset(a, 0, sizeof *a);
}

static zarchive zbuild(const zentry *entries, size_t n, const zopts *o)
{
    zarchive a;
    memset(&a, 0, sizeof a);
    a.count = n;
    a.local_at = calloc(n + 1, sizeof(size_t));
    a.central_at = calloc(n + 1, sizeof(size_t));
    a.data_at = calloc(n + 1, sizeof(size_t));
    a.desc_at = calloc(n + 1, sizeof(size_t));
    a.comp_size = calloc(n + 1, sizeof(size_t));
    a.crc = calloc(n + 1, sizeof(uint32_t));
    assert_true(a.local_at && a.central_at && a.data_at && a.desc_at && a.comp_size && a.crc);

    buf b = {0};
    for (size_t i = 0; i < o->lead; i++)
        b_put(&b, "J", 1);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    assert_non_null(c);
    uint8_t **comp = calloc(n + 1, sizeof(uint8_t *));
    assert_non_null(comp);

    for (size_t i = 0; i < n; i++) {
        const zentry *e = &entries[i];
        size_t name_len = strlen(e->name);
        a.crc[i] = (uint32_t)libdeflate_crc32(0, e->data, e->size);
        if (e->method == 8) {
            size_t bound = libdeflate_deflate_compress_bound(c, e->size);
            comp[i] = malloc(bound + 1);
            assert_non_null(comp[i]);
            a.comp_size[i] = libdeflate_deflate_compress(c, e->data, e->size, comp[i], bound);
            assert_true(a.comp_size[i] > 0);
        } else {
            comp[i] = malloc(e->size + 1);
            assert_non_null(comp[i]);
            if (e->size)
                memcpy(comp[i], e->data, e->size);
            a.comp_size[i] = e->size;
        }

        a.local_at[i] = b.len;
        bool local_wide = o->wide_descriptor || o->local_zip64;
        uint32_t extra_len = local_wide ? 20 : 0;
        size_t pad = 0;
        if (o->torch) {
            size_t start = b.len + 30 + name_len + extra_len + 4;
            pad = (64 - start % 64) % 64;
            extra_len += 4 + (uint32_t)pad;
        }
        b_le(&b, 0x04034b50, 4);
        b_le(&b, o->torch ? 0 : 20, 2);
        b_le(&b, o->torch ? 0x0808 : 0, 2);
        b_le(&b, e->method, 2);
        b_le(&b, 0, 4);                                  /* time, date */
        if (o->torch) {
            b_le(&b, 0, 4);
            b_le(&b, local_wide ? 0xFFFFFFFFu : 0, 4);
            b_le(&b, local_wide ? 0xFFFFFFFFu : 0, 4);
        } else {
            b_le(&b, a.crc[i], 4);
            b_le(&b, local_wide ? 0xFFFFFFFFu : (uint32_t)a.comp_size[i], 4);
            b_le(&b, local_wide ? 0xFFFFFFFFu : (uint32_t)e->size, 4);
        }
        b_le(&b, (uint32_t)name_len, 2);
        b_le(&b, extra_len, 2);
        b_put(&b, e->name, name_len);
        if (local_wide) {
            b_le(&b, 1, 2);
            b_le(&b, 16, 2);
            b_le(&b, e->size, 8);
            b_le(&b, a.comp_size[i], 8);
        }
        if (o->torch) {
            b_put(&b, "FB", 2);
            b_le(&b, (uint32_t)pad, 2);
            for (size_t k = 0; k < pad; k++)
                b_put(&b, "Z", 1);
        }
        a.data_at[i] = b.len;
        b_put(&b, comp[i], a.comp_size[i]);
        a.desc_at[i] = b.len;
        if (o->torch) {
            if (!o->no_descriptor_sig)
                b_le(&b, 0x08074b50, 4);
            b_le(&b, a.crc[i], 4);
            if (o->wide_descriptor) {
                b_le(&b, a.comp_size[i], 8);
                b_le(&b, e->size, 8);
            } else {
                b_le(&b, (uint32_t)a.comp_size[i], 4);
                b_le(&b, (uint32_t)e->size, 4);
            }
        }
    }

    a.cd_offset = b.len;
    for (size_t i = 0; i < n; i++) {
        const zentry *e = &entries[i];
        size_t name_len = strlen(e->name);
        a.central_at[i] = b.len;
        b_le(&b, 0x02014b50, 4);
        b_le(&b, o->torch ? 0 : 0x031e, 2);
        b_le(&b, o->torch ? 0 : 20, 2);
        b_le(&b, o->torch ? 0x0808 : 0, 2);
        b_le(&b, e->method, 2);
        b_le(&b, 0, 4);
        b_le(&b, a.crc[i], 4);
        b_le(&b, o->zip64_extra ? 0xFFFFFFFFu : (uint32_t)a.comp_size[i], 4);
        b_le(&b, o->zip64_extra ? 0xFFFFFFFFu : (uint32_t)e->size, 4);
        b_le(&b, (uint32_t)name_len, 2);
        b_le(&b, o->zip64_extra ? 28 : 0, 2);
        b_le(&b, 0, 2);                                  /* comment */
        b_le(&b, 0, 2);                                  /* disk */
        b_le(&b, 0, 2);
        b_le(&b, 0, 4);
        b_le(&b, o->zip64_extra ? 0xFFFFFFFFu : (uint32_t)a.local_at[i], 4);
        b_put(&b, e->name, name_len);
        if (o->zip64_extra) {
            b_le(&b, 1, 2);
            b_le(&b, 24, 2);
            b_le(&b, e->size, 8);
            b_le(&b, a.comp_size[i], 8);
            b_le(&b, a.local_at[i], 8);
        }
    }
    a.cd_size = b.len - a.cd_offset;

    if (o->zip64_end) {
        a.zip64_end_at = b.len;
        b_le(&b, 0x06064b50, 4);
        b_le(&b, 44, 8);
        b_le(&b, 0x2d, 2);
        b_le(&b, 0x2d, 2);
        b_le(&b, 0, 4);
        b_le(&b, 0, 4);
        b_le(&b, n, 8);
        b_le(&b, n, 8);
        b_le(&b, a.cd_size, 8);
        b_le(&b, a.cd_offset, 8);
        a.locator_at = b.len;
        b_le(&b, 0x07064b50, 4);
        b_le(&b, 0, 4);
        b_le(&b, a.zip64_end_at, 8);
        b_le(&b, 1, 4);
    }
    a.eocd_at = b.len;
    size_t comment_len = o->comment ? strlen(o->comment) : 0;
    b_le(&b, 0x06054b50, 4);
    b_le(&b, 0, 2);
    b_le(&b, 0, 2);
    b_le(&b, n >= 0xFFFF ? 0xFFFF : (uint32_t)n, 2);
    b_le(&b, n >= 0xFFFF ? 0xFFFF : (uint32_t)n, 2);
    b_le(&b, (uint32_t)a.cd_size, 4);
    b_le(&b, (uint32_t)a.cd_offset, 4);
    b_le(&b, (uint32_t)comment_len, 2);
    b_put(&b, o->comment, comment_len);

    for (size_t i = 0; i < n; i++)
        free(comp[i]);
    free(comp);
    libdeflate_free_compressor(c);
    /* An exact-size copy, so that AddressSanitizer sees any read past the end. */
    a.p = malloc(b.len ? b.len : 1);
    assert_non_null(a.p);
    memcpy(a.p, b.p, b.len);
    a.size = b.len;
    free(b.p);
    return a;
}

/* ---- sample content ------------------------------------------------------- */

static uint8_t pickle_bytes[300];
static uint8_t tensor_bytes[4096];
static uint8_t zero_bytes[1 << 16];

static void fill_samples(void)
{
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof pickle_bytes; i++)
        pickle_bytes[i] =
            (uint8_t)((unsigned char)"\x80\x02}q\x00(X\x06\x00\x00\x00weightq"[i % 19] + i / 19);
    for (size_t i = 0; i < sizeof tensor_bytes; i++) {
        x = x * 1103515245u + 12345u;
        tensor_bytes[i] = (uint8_t)(x >> 16);
    }
}

/* A small torch-like set: pickle, two storages, version, byteorder, an empty record. */
static const zentry *sample_entries(size_t *n, bool deflate)
{
    static zentry e[6];
    fill_samples();
    e[0] = (zentry){"archive/data.pkl", pickle_bytes, sizeof pickle_bytes, deflate ? 8 : 0};
    e[1] = (zentry){"archive/data/0", tensor_bytes, 1000, 0};
    e[2] = (zentry){"archive/data/1", zero_bytes, 5000, deflate ? 8 : 0};
    e[3] = (zentry){"archive/version", "3\n", 2, 0};
    e[4] = (zentry){"archive/byteorder", "little", 6, deflate ? 8 : 0};
    e[5] = (zentry){"archive/.data/empty", "", 0, deflate ? 8 : 0};
    *n = 6;
    return e;
}

static const zopts opts_plain = {0};
static const zopts opts_torch = {.torch = true, .zip64_end = true};
static const zopts opts_torch64 = {.torch = true, .zip64_end = true, .zip64_extra = true,
                                   .wide_descriptor = true};

static zarchive sample(const zopts *o, bool deflate)
{
    size_t n;
    const zentry *e = sample_entries(&n, deflate);
    return zbuild(e, n, o);
}

/* ---- helpers --------------------------------------------------------------- */

static ckpt_limits test_limits(void)
{
    ckpt_limits l;
    ckpt_limits_default(&l);
    return l;
}

/* Opens, reads and CRC-checks every entry of a valid archive against its sources. */
static void check_valid(const zarchive *a, const zentry *entries, const zopts *o)
{
    ckpt_limits l = test_limits();
    ckpt__zip z;
    ckpt_error err;
    memset(&err, 0, sizeof err);
    ckpt_status st = ckpt__zip_open(&z, a->p, a->size, &l, &err);
    if (st != CKPT_OK)
        print_error("open failed: %s\n", err.message);
    assert_int_equal(st, CKPT_OK);
    assert_int_equal(z.count, a->count);
    for (size_t i = 0; i < a->count; i++) {
        long k = ckpt__zip_find(&z, entries[i].name);
        assert_int_equal(k, (long)i);
        const ckpt__zip_entry *e = &z.entries[k];
        assert_string_equal(e->name, entries[i].name);
        assert_int_equal(e->size, entries[i].size);
        assert_int_equal(e->header_offset, a->local_at[i]);
        assert_int_equal(e->data_offset, a->data_at[i]);
        assert_int_equal(e->crc32, a->crc[i]);
        if (o->torch)
            assert_int_equal(e->data_offset % 64, 0);
        const uint8_t *data = NULL;
        uint8_t *owned = NULL;
        assert_int_equal(ckpt__zip_read(&z, (size_t)k, &l, &data, &owned, &err), CKPT_OK);
        if (entries[i].size)
            assert_memory_equal(data, entries[i].data, entries[i].size);
        if (entries[i].method == 0) {
            /* zero copy: a pointer into the caller's buf */
            assert_null(owned);
            assert_true(data >= a->p && data + entries[i].size <= a->p + a->size);
            assert_ptr_equal(data, a->p + a->data_at[i]);
        } else if (entries[i].size) {
            assert_non_null(owned);
            assert_ptr_equal(data, owned);
        }
        free(owned);
        assert_int_equal(ckpt__zip_check_crc(&z, (size_t)k, &l, &err), CKPT_OK);
    }
    ckpt__zip_close(&z);
    assert_null(z.entries);
    assert_int_equal(z.count, 0);
}

/* Opens bytes that must fail with want; the message must contain each needle. */
static ckpt_error expect_fail(const uint8_t *p, size_t size, const ckpt_limits *l,
                              ckpt_status want, const char *needle, const char *needle2)
{
    ckpt__zip z;
    ckpt_error err;
    memset(&err, 0, sizeof err);
    memset(&z, 0x5a, sizeof z);
    ckpt_status st = ckpt__zip_open(&z, p, size, l, &err);
    if (st != want || (needle && !strstr(err.message, needle)) ||
        (needle2 && !strstr(err.message, needle2)))
        print_error("got %s: '%s' (record '%s'); want %s with '%s'\n", ckpt_status_name(st),
                    err.message, err.record, ckpt_status_name(want), needle ? needle : "");
    assert_int_equal(st, want);
    if (needle)
        assert_non_null(strstr(err.message, needle));
    if (needle2)
        assert_non_null(strstr(err.message, needle2));
    assert_int_equal(err.status, want);
    assert_true(err.offset != CKPT_NO_OFFSET);
    assert_int_equal(err.file_offset, err.offset);
    assert_true(err.offset <= size);
    /* a failed open leaves nothing behind */
    assert_null(z.entries);
    assert_null(z.index);
    assert_null(z.names);
    assert_int_equal(z.count, 0);
    ckpt__zip_close(&z);
    return err;
}

static ckpt_error expect_fail_a(const zarchive *a, ckpt_status want, const char *needle)
{
    ckpt_limits l = test_limits();
    return expect_fail(a->p, a->size, &l, want, needle, NULL);
}

/* Offsets of fields in a central record and a local header. */
enum {
    C_FLAGS = 8, C_METHOD = 10, C_CRC = 16, C_COMP = 20, C_SIZE = 24, C_DISK = 34, C_OFFSET = 42,
    L_FLAGS = 6, L_METHOD = 8, L_CRC = 14, L_COMP = 18, L_SIZE = 22, L_NAME = 30,
};

/* ---- valid archives -------------------------------------------------------- */

static void test_valid_layouts(void **state)
{
    (void)state;
    const zopts layouts[] = {
        opts_plain,
        opts_torch,
        opts_torch64,
        {.torch = true, .no_descriptor_sig = true},
        {.torch = true, .zip64_end = true, .no_descriptor_sig = true, .wide_descriptor = true},
        {.local_zip64 = true, .zip64_extra = true},
        {.zip64_end = true, .comment = "a comment PK"},
    };
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        for (int deflate = 0; deflate < 2; deflate++) {
            size_t n;
            const zentry *e = sample_entries(&n, deflate);
            zarchive a = zbuild(e, n, &layouts[li]);
            assert_true(ckpt__zip_detect(a.p, a.size));
            check_valid(&a, e, &layouts[li]);
            zfree(&a);
        }
    }
}

static void test_empty_archives(void **state)
{
    (void)state;
    const zopts layouts[] = {opts_plain, {.zip64_end = true}, {.comment = "c"}};
    for (size_t li = 0; li < 3; li++) {
        zarchive a = zbuild(NULL, 0, &layouts[li]);
        if (li != 1)
            assert_true(ckpt__zip_detect(a.p, a.size));
        ckpt__zip z;
        ckpt_error err;
        ckpt_limits l = test_limits();
        assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
        assert_int_equal(z.count, 0);
        assert_int_equal(ckpt__zip_find(&z, "x"), -1);
        ckpt__zip_close(&z);
        /* junk in front of an empty archive, offsets adjusted or not */
        zopts o = layouts[li];
        o.lead = 10;
        zarchive b = zbuild(NULL, 0, &o);
        expect_fail_a(&b, CKPT_ERR_FORMAT, "10 bytes before the archive");
        uint8_t *pre = malloc(a.size + 3);
        memcpy(pre, "abc", 3);
        memcpy(pre + 3, a.p, a.size);
        expect_fail(pre, a.size + 3, &l, CKPT_ERR_FORMAT, "3 bytes before the archive", NULL);
        free(pre);
        zfree(&b);
        zfree(&a);
    }
}

static void test_detect(void **state)
{
    (void)state;
    assert_false(ckpt__zip_detect(NULL, 0));
    assert_false(ckpt__zip_detect((const uint8_t *)"PK\3", 3));
    assert_true(ckpt__zip_detect((const uint8_t *)"PK\3\4", 4));
    assert_false(ckpt__zip_detect((const uint8_t *)"PK\5\6", 4));
    assert_false(ckpt__zip_detect((const uint8_t *)"\x80\x02}q", 4));
    assert_false(ckpt__zip_detect((const uint8_t *)"PYTORCH1", 8));
}

static void test_find(void **state)
{
    (void)state;
    zarchive a = sample(&opts_torch, false);
    ckpt__zip z;
    ckpt_error err;
    ckpt_limits l = test_limits();
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_find(&z, "archive/data.pkl"), 0);
    assert_int_equal(ckpt__zip_find(&z, "archive/version"), 3);
    assert_int_equal(ckpt__zip_find(&z, "archive/data"), -1);
    assert_int_equal(ckpt__zip_find(&z, "archive/data.pkl2"), -1);
    assert_int_equal(ckpt__zip_find(&z, "archive/data.pk"), -1);
    assert_int_equal(ckpt__zip_find(&z, ""), -1);
    assert_int_equal(ckpt__zip_find(&z, "zzz"), -1);
    assert_int_equal(ckpt__zip_find(&z, "/"), -1);
    assert_int_equal(ckpt__zip_find(&z, NULL), -1);
    /* every entry is found by its name, in either case, and the index holds
     * each once */
    size_t held = 0;
    for (size_t i = 0; i < z.index_cap; i++)
        held += z.index[i] != 0;
    assert_int_equal(held, z.count);
    for (size_t i = 0; i < z.count; i++) {
        char upper[256];
        size_t n = strlen(z.entries[i].name);
        assert_true(n < sizeof upper);
        for (size_t k = 0; k <= n; k++)
            upper[k] = (char)toupper((unsigned char)z.entries[i].name[k]);
        assert_int_equal(ckpt__zip_find(&z, z.entries[i].name), (long)i);
        assert_int_equal(ckpt__zip_find(&z, upper), (long)i);
        /* near: the hint right, wrong, past the end */
        assert_int_equal(ckpt__zip_find_near(&z, upper, n, i), (long)i);
        assert_int_equal(ckpt__zip_find_near(&z, upper, n, (i + 1) % z.count), (long)i);
        assert_int_equal(ckpt__zip_find_near(&z, upper, n, z.count + 5), (long)i);
        /* a prefix is not this entry, even with the hint on it */
        if (n > 1)
            assert_true(ckpt__zip_find_near(&z, upper, n - 1, i) != (long)i);
    }
    assert_int_equal(ckpt__zip_find_near(&z, "zzz", 3, 0), -1);
    const uint8_t *data;
    uint8_t *owned;
    assert_int_equal(ckpt__zip_read(&z, z.count, &l, &data, &owned, &err), CKPT_ERR_INVALID_ARG);
    ckpt__zip_close(&z);
    ckpt__zip_close(&z);   /* twice is fine */
    zfree(&a);
}

static void test_close_zeroed(void **state)
{
    (void)state;
    ckpt__zip z;
    memset(&z, 0, sizeof z);
    ckpt__zip_close(&z);
    ckpt__zip_close(NULL);
    assert_int_equal(ckpt__zip_find(&z, "a"), -1);
}

/* 100,000 entries: open and look every one up; anything quadratic would take minutes. */
static void test_many_entries(void **state)
{
    (void)state;
    enum { N = 100000 };
    zentry *e = calloc(N, sizeof *e);
    char (*names)[32] = calloc(N, sizeof *names);
    assert_true(e && names);
    for (size_t i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "archive/data/%zu", (i * 7919) % N);
        e[i] = (zentry){names[i], tensor_bytes + i % 64, i % 17, 0};
    }
    zopts o = {.torch = true, .zip64_end = true};
    zarchive a = zbuild(e, N, &o);
    clock_t t0 = clock();
    ckpt__zip z;
    ckpt_error err;
    ckpt_limits l = test_limits();
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(z.count, N);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(ckpt__zip_find(&z, names[i]), (long)i);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    print_message("100000 entries: open + 100000 finds in %.3f s\n", secs);
    assert_true(secs < 20.0);
    ckpt__zip_close(&z);

    /* the entry limit applies */
    l.max_zip_entries = N - 1;
    expect_fail(a.p, a.size, &l, CKPT_ERR_LIMIT, "max_zip_entries", NULL);
    zfree(&a);
    free(e);
    free(names);
}

/* ---- ambiguous archives ---------------------------------------------------- */

static void test_duplicate_names(void **state)
{
    (void)state;
    const zentry e[] = {
        {"archive/data.pkl", "good", 4, 0},
        {"archive/version", "3\n", 2, 0},
        {"archive/data.pkl", "evil", 4, 0},
    };
    zarchive a = zbuild(e, 3, &opts_torch);
    ckpt_error err = expect_fail_a(&a, CKPT_ERR_FORMAT,
                                   "duplicate entry name 'archive/data.pkl' (ambiguous archive)");
    assert_string_equal(err.record, "archive/data.pkl");
    assert_int_equal(err.offset, a.central_at[2]);
    zfree(&a);
}

static void test_name_mismatch(void **state)
{
    (void)state;
    zarchive a = sample(&opts_torch, false);
    a.p[a.local_at[0] + L_NAME + 8] = 'X';   /* archive/Xata.pkl */
    ckpt_error err = expect_fail_a(&a, CKPT_ERR_FORMAT, "'archive/Xata.pkl'");
    assert_non_null(strstr(err.message, "'archive/data.pkl'"));
    assert_int_equal(err.offset, a.local_at[0] + L_NAME);
    zfree(&a);

    /* a different length */
    const zentry e[] = {{"a/bc", "x", 1, 0}};
    a = zbuild(e, 1, &opts_plain);
    set16(a.p + 26, 3);
    set16(a.p + 28, 1);   /* same total: data still where it was */
    expect_fail_a(&a, CKPT_ERR_FORMAT, "'a/b'");
    zfree(&a);
}

static void test_refused_flags(void **state)
{
    (void)state;
    const uint16_t bits[] = {0x1, 0x20, 0x40};
    const char *names[] = {"bit 0x1 ", "bit 0x20 ", "bit 0x40 "};
    for (int where = 0; where < 2; where++) {
        for (int i = 0; i < 3; i++) {
            zarchive a = sample(where ? &opts_torch : &opts_plain, false);
            uint8_t *f = where ? a.p + a.local_at[2] + L_FLAGS : a.p + a.central_at[2] + C_FLAGS;
            set16(f, ckpt__le16(f) | bits[i]);
            ckpt_error err = expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, names[i]);
            assert_string_equal(err.record, "archive/data/1");
            assert_non_null(strstr(err.message, where ? "local" : "central"));
            zfree(&a);
        }
    }
}

static void test_methods(void **state)
{
    (void)state;
    zarchive a = sample(&opts_plain, false);
    set16(a.p + a.central_at[1] + C_METHOD, 12);   /* bzip2 */
    set16(a.p + a.local_at[1] + L_METHOD, 12);
    expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, "compression method 12");
    zfree(&a);

    a = sample(&opts_plain, true);
    set16(a.p + a.local_at[0] + L_METHOD, 0);      /* local says stored */
    expect_fail_a(&a, CKPT_ERR_FORMAT, "compression method 0");
    zfree(&a);

    /* stored with differing sizes */
    a = sample(&opts_plain, false);
    set32(a.p + a.central_at[1] + C_COMP, 999);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "stored entry");
    zfree(&a);
}

static void test_overlap(void **state)
{
    (void)state;
    /* Entry 0 grows (central and local) to swallow entry 1's header and data. */
    const zentry e[] = {{"a/x", tensor_bytes, 100, 0}, {"a/y", tensor_bytes, 50, 0},
                        {"a/z", tensor_bytes, 10, 0}};
    zarchive a = zbuild(e, 3, &opts_plain);
    uint32_t grown = (uint32_t)(a.local_at[2] - a.data_at[0]);
    set32(a.p + a.central_at[0] + C_COMP, grown);
    set32(a.p + a.central_at[0] + C_SIZE, grown);
    set32(a.p + a.local_at[0] + L_COMP, grown);
    set32(a.p + a.local_at[0] + L_SIZE, grown);
    ckpt_error err = expect_fail_a(&a, CKPT_ERR_FORMAT, "overlaps 'a/x'");
    assert_string_equal(err.record, "a/y");
    zfree(&a);

    /* Two central records sharing one local header (and name check passing
     * because the names are equal) are duplicates; with distinct names they
     * are a name mismatch. Both refused. */
    a = zbuild(e, 3, &opts_plain);
    set32(a.p + a.central_at[1] + C_OFFSET, 0);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "local header names the entry 'a/x'");
    zfree(&a);

}

static void test_data_past_end(void **state)
{
    (void)state;
    /* data runs into the central directory */
    zarchive a = sample(&opts_plain, false);
    size_t last = a.count - 2;   /* "archive/byteorder" */
    set32(a.p + a.central_at[last] + C_COMP, 100000);
    set32(a.p + a.central_at[last] + C_SIZE, 100000);
    set32(a.p + a.local_at[last] + L_COMP, 100000);
    set32(a.p + a.local_at[last] + L_SIZE, 100000);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "runs past the central directory");
    zfree(&a);

    /* huge 64-bit sizes and offsets in ZIP64 extras: no overflow */
    a = sample(&opts_torch64, false);
    uint8_t *x = a.p + a.central_at[1] + 46 + strlen("archive/data/0") + 4;
    set64(x, UINT64_MAX);
    set64(x + 8, UINT64_MAX);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "runs past");
    set64(x, 1000);
    set64(x + 8, 1000);
    set64(x + 16, UINT64_MAX - 10);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "local header");
    zfree(&a);

    /* local header offset past the directory */
    a = sample(&opts_plain, false);
    set32(a.p + a.central_at[0] + C_OFFSET, (uint32_t)a.size + 5);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "does not fit");
    zfree(&a);

    /* ZIP64 extra too short for the all-ones fields */
    a = sample(&opts_torch64, false);
    set16(a.p + a.central_at[0] + 30, 20);
    set16(a.p + a.central_at[0] + 46 + 16 + 2, 16);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "ZIP64 extra field has 16 bytes, the header needs 24");
    zfree(&a);
}

static void test_directory_place(void **state)
{
    (void)state;
    const zopts *layouts[] = {&opts_plain, &opts_torch};
    for (int li = 0; li < 2; li++) {
        zarchive a = sample(layouts[li], false);
        uint8_t *off = li ? a.p + a.zip64_end_at + 48 : a.p + a.eocd_at + 16;
        uint8_t *off32 = a.p + a.eocd_at + 16;
        uint64_t good = a.cd_offset;
        /* wrong offsets, both directions */
        if (li) {
            set64(off, good - 1);
            set32(off32, (uint32_t)good - 1);
        } else {
            set32(off, (uint32_t)good - 1);
        }
        expect_fail_a(&a, CKPT_ERR_FORMAT, NULL);
        if (li) {
            set64(off, good + 1);
            set32(off32, (uint32_t)good + 1);
        } else {
            set32(off, (uint32_t)good + 1);
        }
        expect_fail_a(&a, CKPT_ERR_FORMAT, "runs past the end record");
        /* the classic and ZIP64 records disagree */
        if (li) {
            set64(off, good);
            set32(off32, (uint32_t)good + 64);
            expect_fail_a(&a, CKPT_ERR_FORMAT, "ZIP64 end record");
            set32(off32, 0xFFFFFFFFu);   /* the marker is fine */
            ckpt__zip z;
            ckpt_error err;
            ckpt_limits l = test_limits();
            assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
            ckpt__zip_close(&z);
        }
        zfree(&a);
    }
}

static void test_bytes_around(void **state)
{
    (void)state;
    const zopts *layouts[] = {&opts_plain, &opts_torch, &opts_torch64};
    for (int li = 0; li < 3; li++) {
        zarchive a = sample(layouts[li], false);
        /* prepended: every offset is now 16 short */
        uint8_t *pre = malloc(a.size + 16);
        memset(pre, 'J', 16);
        memcpy(pre + 16, a.p, a.size);
        ckpt_limits l = test_limits();
        expect_fail(pre, a.size + 16, &l, CKPT_ERR_FORMAT, "16 bytes before the archive", NULL);
        free(pre);
        /* appended */
        uint8_t *post = malloc(a.size + 5);
        memcpy(post, a.p, a.size);
        memcpy(post + a.size, "junk!", 5);
        expect_fail(post, a.size + 5, &l, CKPT_ERR_FORMAT, "5 bytes after the archive", NULL);
        /* a comment length that runs past the end */
        set16(post + a.eocd_at + 20, 9);
        expect_fail(post, a.size + 5, &l, CKPT_ERR_FORMAT, "past the end", NULL);
        free(post);
        zfree(&a);
    }
    /* junk before the first entry, with offsets that account for it */
    zopts o = opts_torch;
    o.lead = 64;
    zarchive a = sample(&o, false);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "64 bytes before the first local header");
    zfree(&a);
}

static void test_entry_count(void **state)
{
    (void)state;
    zarchive a = sample(&opts_plain, false);
    set16(a.p + a.eocd_at + 8, (uint32_t)a.count - 1);
    set16(a.p + a.eocd_at + 10, (uint32_t)a.count - 1);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "more than the 5 entries");
    set16(a.p + a.eocd_at + 8, (uint32_t)a.count + 1);
    set16(a.p + a.eocd_at + 10, (uint32_t)a.count + 1);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "declares 7 entries");
    set16(a.p + a.eocd_at + 8, 2000);
    set16(a.p + a.eocd_at + 10, 2000);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "holds at most");
    /* multi-disk */
    set16(a.p + a.eocd_at + 8, (uint32_t)a.count - 1);
    set16(a.p + a.eocd_at + 10, (uint32_t)a.count);
    expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, "multi-disk");
    set16(a.p + a.eocd_at + 8, (uint32_t)a.count);
    set16(a.p + a.eocd_at + 4, 1);
    expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, "multi-disk");
    zfree(&a);

    a = sample(&opts_torch, false);
    set64(a.p + a.zip64_end_at + 24, a.count + 1);
    set64(a.p + a.zip64_end_at + 32, a.count + 1);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "end record counts");
    set16(a.p + a.eocd_at + 8, 0xFFFF);
    set16(a.p + a.eocd_at + 10, 0xFFFF);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "declares 7 entries");
    set32(a.p + a.locator_at + 16, 2);
    expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, "multi-disk");
    set32(a.p + a.locator_at + 16, 1);
    set64(a.p + a.locator_at + 8, 3);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "the locator says 3");
    set64(a.p + a.locator_at + 8, 0xFFFFFFFFFFFFull);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "ZIP64 locator points to offset");
    set64(a.p + a.locator_at + 8, a.zip64_end_at);
    set64(a.p + a.zip64_end_at + 4, 40);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "ZIP64 end record size 40");
    zfree(&a);

    /* a central record's disk */
    a = sample(&opts_plain, false);
    set16(a.p + a.central_at[3] + C_DISK, 1);
    expect_fail_a(&a, CKPT_ERR_UNSUPPORTED, "disk 1");
    zfree(&a);
}

static void test_local_values(void **state)
{
    (void)state;
    /* without a descriptor, local CRC and sizes must repeat the central ones */
    zarchive a = sample(&opts_plain, false);
    set32(a.p + a.local_at[1] + L_CRC, a.crc[1] ^ 1);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "local header CRC");
    zfree(&a);
    a = sample(&opts_plain, false);
    set32(a.p + a.local_at[1] + L_SIZE, 7);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "local header sizes");
    zfree(&a);
    zopts o = {.local_zip64 = true, .zip64_extra = true};
    a = sample(&o, false);
    set64(a.p + a.local_at[1] + L_NAME + strlen("archive/data/0") + 4, 7);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "local header sizes");
    zfree(&a);

    /* a descriptor that disagrees, in both widths */
    const zopts *layouts[] = {&opts_torch, &opts_torch64};
    for (int li = 0; li < 2; li++) {
        a = sample(layouts[li], false);
        set32(a.p + a.desc_at[1] + 4, a.crc[1] ^ 0x100);
        expect_fail_a(&a, CKPT_ERR_FORMAT, "data descriptor");
        zfree(&a);
        a = sample(layouts[li], false);
        a.p[a.desc_at[1] + 8] ^= 1;
        expect_fail_a(&a, CKPT_ERR_FORMAT, "data descriptor");
        zfree(&a);
    }

    /* names: empty, with a NUL */
    const zentry e[] = {{"a/x", "1", 1, 0}, {"a/y", "2", 1, 0}};
    a = zbuild(e, 2, &opts_plain);
    a.p[a.central_at[1] + 46 + 1] = 0;
    a.p[a.local_at[1] + L_NAME + 1] = 0;
    expect_fail_a(&a, CKPT_ERR_FORMAT, "NUL byte");
    zfree(&a);
    a = zbuild(e, 2, &opts_plain);
    set16(a.p + a.central_at[1] + 28, 0);
    set16(a.p + a.central_at[1] + 30, 3);   /* the name bytes become an extra... */
    expect_fail_a(&a, CKPT_ERR_FORMAT, NULL);
    set16(a.p + a.central_at[1] + 32, 3);   /* ...or a comment */
    set16(a.p + a.central_at[1] + 30, 0);
    expect_fail_a(&a, CKPT_ERR_FORMAT, "empty name");
    zfree(&a);
}

/* ---- inflating --------------------------------------------------------------- */

static void test_inflate_limits(void **state)
{
    (void)state;
    /* 64 KiB of zeros deflates to a few hundred bytes at most */
    const zentry e[] = {{"archive/data.pkl", zero_bytes, sizeof zero_bytes, 8}};
    zopts o = opts_torch64;
    zarchive a = zbuild(e, 1, &o);
    assert_true(a.comp_size[0] < 1000);
    uint8_t *x = a.p + a.central_at[0] + 46 + strlen(e[0].name) + 4;   /* ZIP64: size, comp, offset */

    ckpt_limits l = test_limits();
    ckpt__zip z;
    ckpt_error err;
    const uint8_t *data;
    uint8_t *owned;

    /* declared 1 GiB from a few hundred bytes: refused by the ratio */
    set64(x, 1ull << 30);
    set64(a.p + a.desc_at[0] + 16, 1ull << 30);
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_LIMIT);
    assert_non_null(strstr(err.message, "max_inflate_ratio"));
    assert_int_equal(err.file_offset, a.data_at[0]);
    assert_null(owned);
    assert_int_equal(ckpt__zip_check_crc(&z, 0, &l, &err), CKPT_ERR_LIMIT);
    ckpt__zip_close(&z);

    /* declared 1 TiB with no ratio limit: refused by max_inflated_bytes, before
     * any allocation (a 1 TiB malloc would fail or take the host down) */
    set64(x, 1ull << 40);
    set64(a.p + a.desc_at[0] + 16, 1ull << 40);
    l.max_inflate_ratio = UINT64_MAX;
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_LIMIT);
    assert_non_null(strstr(err.message, "max_inflated_bytes"));
    ckpt__zip_close(&z);

    /* the real size works, and limits below it refuse */
    set64(x, sizeof zero_bytes);
    set64(a.p + a.desc_at[0] + 16, sizeof zero_bytes);
    l = test_limits();
    l.max_inflate_ratio = 100000;
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_OK);
    assert_memory_equal(data, zero_bytes, sizeof zero_bytes);
    free(owned);
    l.max_inflated_bytes = sizeof zero_bytes - 1;
    assert_int_equal(ckpt__zip_check_crc(&z, 0, &l, &err), CKPT_ERR_LIMIT);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_LIMIT);
    l = test_limits();
    l.max_inflate_ratio = 2;
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_LIMIT);
    ckpt__zip_close(&z);

    /* declared sizes that lie (within the limits) */
    set64(x, sizeof zero_bytes - 1);
    set64(a.p + a.desc_at[0] + 16, sizeof zero_bytes - 1);
    l = test_limits();
    l.max_inflate_ratio = 100000;
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "more bytes"));
    ckpt__zip_close(&z);
    set64(x, sizeof zero_bytes + 1);
    set64(a.p + a.desc_at[0] + 16, sizeof zero_bytes + 1);
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "fewer bytes"));
    ckpt__zip_close(&z);
    zfree(&a);

    /* garbage deflate data */
    const zentry g[] = {{"archive/data.pkl", pickle_bytes, sizeof pickle_bytes, 8}};
    a = zbuild(g, 1, &opts_plain);
    memset(a.p + a.data_at[0], 0xFF, a.comp_size[0]);
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_read(&z, 0, &l, &data, &owned, &err), CKPT_ERR_FORMAT);
    ckpt__zip_close(&z);
    zfree(&a);
}

static void test_crc(void **state)
{
    (void)state;
    for (int deflate = 0; deflate < 2; deflate++) {
        /* declared CRC changed (local and central agree with each other) */
        zarchive a = sample(&opts_plain, deflate);
        set32(a.p + a.central_at[0] + C_CRC, 0xDEADBEEF);
        set32(a.p + a.local_at[0] + L_CRC, 0xDEADBEEF);
        ckpt__zip z;
        ckpt_error err;
        ckpt_limits l = test_limits();
        assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
        assert_int_equal(ckpt__zip_check_crc(&z, 0, &l, &err), CKPT_ERR_CORRUPT);
        assert_string_equal(err.record, "archive/data.pkl");
        assert_non_null(strstr(err.message, "0xdeadbeef"));
        char actual[16];
        snprintf(actual, sizeof actual, "0x%08x", (unsigned)a.crc[0]);
        assert_non_null(strstr(err.message, actual));
        assert_int_equal(err.file_offset, a.data_at[0]);
        assert_int_equal(ckpt__zip_check_crc(&z, 1, &l, &err), CKPT_OK);
        ckpt__zip_close(&z);
        zfree(&a);
    }
    /* a data byte flipped in a stored record */
    zarchive a = sample(&opts_torch, false);
    a.p[a.data_at[1] + 10] ^= 0x40;
    ckpt__zip z;
    ckpt_error err;
    ckpt_limits l = test_limits();
    assert_int_equal(ckpt__zip_open(&z, a.p, a.size, &l, &err), CKPT_OK);
    assert_int_equal(ckpt__zip_check_crc(&z, 1, &l, &err), CKPT_ERR_CORRUPT);
    assert_string_equal(err.record, "archive/data/0");
    ckpt__zip_close(&z);
    zfree(&a);
}

/* ---- robustness ------------------------------------------------------------- */

/* Opens a copy of exactly size bytes; on success reads and checks everything. */
static ckpt_status open_all(const uint8_t *src, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    assert_non_null(copy);
    if (size)
        memcpy(copy, src, size);
    ckpt__zip z;
    ckpt_error err;
    ckpt_limits l = test_limits();
    ckpt_status st = ckpt__zip_open(&z, copy, size, &l, &err);
    if (st == CKPT_OK) {
        for (size_t i = 0; i < z.count; i++) {
            const uint8_t *data;
            uint8_t *owned;
            if (ckpt__zip_read(&z, i, &l, &data, &owned, &err) == CKPT_OK) {
                volatile uint8_t sink = 0;
                if (z.entries[i].size)
                    sink ^= data[z.entries[i].size - 1];
                (void)sink;
                free(owned);
            }
            (void)ckpt__zip_check_crc(&z, i, &l, &err);
            assert_int_equal(ckpt__zip_find(&z, z.entries[i].name) >= 0, 1);
        }
    } else {
        assert_int_equal(err.status, st);
    }
    ckpt__zip_close(&z);
    free(copy);
    return st;
}

static void test_truncation(void **state)
{
    (void)state;
    const zopts *layouts[] = {&opts_plain, &opts_torch, &opts_torch64};
    for (int li = 0; li < 3; li++) {
        zarchive a = sample(layouts[li], li != 1);
        assert_int_equal(open_all(a.p, a.size), CKPT_OK);
        for (size_t len = 0; len < a.size; len++) {
            ckpt_status st = open_all(a.p, len);
            if (st == CKPT_OK)
                print_error("truncated to %zu of %zu bytes, it still opened\n", len, a.size);
            assert_int_not_equal(st, CKPT_OK);
        }
        zfree(&a);
    }
}

static void test_bit_flips(void **state)
{
    (void)state;
    const zopts *layouts[] = {&opts_plain, &opts_torch, &opts_torch64};
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    size_t opened = 0;
    for (int li = 0; li < 3; li++) {
        for (int deflate = 0; deflate < 2; deflate++) {
            zarchive a = sample(layouts[li], deflate);
            for (int i = 0; i < 1000; i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                size_t bit = (size_t)(rng % (a.size * 8));
                a.p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                if (open_all(a.p, a.size) == CKPT_OK)
                    opened++;
                a.p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            }
            zfree(&a);
        }
    }
    print_message("bit flips: %zu of 6000 still opened\n", opened);

    /* Every byte of every header and end record set to 0x00, 0xFF and 0x80. */
    static const uint8_t values[] = {0x00, 0xFF, 0x80};
    for (int li = 0; li < 3; li++) {
        zarchive a = sample(layouts[li], true);
        for (size_t pos = 0; pos < a.size; pos++) {
            bool header = pos >= a.cd_offset;
            for (size_t k = 0; k < a.count && !header; k++)
                header = pos >= a.local_at[k] && pos < a.data_at[k];
            for (size_t k = 0; k < a.count && !header; k++)
                header = pos >= a.desc_at[k] && pos < a.desc_at[k] + 24;
            if (!header)
                continue;
            uint8_t keep = a.p[pos];
            for (size_t v = 0; v < sizeof values; v++) {
                a.p[pos] = values[v];
                (void)open_all(a.p, a.size);
            }
            a.p[pos] = keep;
        }
        zfree(&a);
    }
}

/* ---- real files ---------------------------------------------------------------- */

static size_t corpus_count;

static void check_corpus_file(const char *path)
{
    size_t size;
    uint8_t *p = read_file(path, &size);
    assert_non_null(p);
    if (size >= 4 && memcmp(p, "PK\3\4", 4) == 0) {
        ckpt__zip z;
        ckpt_error err;
        ckpt_limits l = test_limits();
        ckpt_status st = ckpt__zip_open(&z, p, size, &l, &err);
        if (st != CKPT_OK)
            print_error("%s: %s\n", path, err.message);
        assert_int_equal(st, CKPT_OK);
        assert_true(z.count > 0);
        for (size_t i = 0; i < z.count; i++) {
            st = ckpt__zip_check_crc(&z, i, &l, &err);
            if (st != CKPT_OK)
                print_error("%s: %s: %s\n", path, err.record, err.message);
            assert_int_equal(st, CKPT_OK);
            assert_int_equal(ckpt__zip_find(&z, z.entries[i].name), (long)i);
        }
        ckpt__zip_close(&z);
        corpus_count++;
    }
    free(p);
}

static void walk(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        size_t n = strlen(de->d_name);
        if (S_ISDIR(sb.st_mode))
            walk(path);
        else if (S_ISREG(sb.st_mode) && n > 3 && strcmp(de->d_name + n - 3, ".pt") == 0)
            check_corpus_file(path);
    }
    closedir(d);
}

static void test_corpus_benign(void **state)
{
    (void)state;
    const char *corpus = getenv("CKPT_CORPUS");
    if (!corpus || !*corpus)
        skip();
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/benign", corpus);
    corpus_count = 0;
    walk(dir);
    print_message("%zu torch zip files opened\n", corpus_count);
    assert_true(corpus_count > 50);
}

static void test_corpus_malicious(void **state)
{
    (void)state;
    const char *corpus = getenv("CKPT_CORPUS");
    if (!corpus || !*corpus)
        skip();
    static const struct {
        const char *file;
        ckpt_status status;
        const char *needle, *needle2;
    } cases[] = {
        {"malicious1_central_directory.zip", CKPT_ERR_FORMAT, "'datap.kl'", "'data.pkl'"},
        {"malicious1_0x1.zip", CKPT_ERR_UNSUPPORTED, "bit 0x1 ", NULL},
        {"malicious1_0x20.zip", CKPT_ERR_UNSUPPORTED, "bit 0x20 ", NULL},
        {"malicious1_0x40.zip", CKPT_ERR_UNSUPPORTED, "bit 0x40 ", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/malicious/picklescan/data/%s", corpus, cases[i].file);
        size_t size;
        uint8_t *p = read_file(path, &size);
        if (!p)
            print_error("cannot read %s\n", path);
        assert_non_null(p);
        assert_true(ckpt__zip_detect(p, size));
        ckpt_limits l = test_limits();
        expect_fail(p, size, &l, cases[i].status, cases[i].needle, cases[i].needle2);
        free(p);
    }
}

int main(void)
{
    fill_samples();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_layouts),
        cmocka_unit_test(test_empty_archives),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_close_zeroed),
        cmocka_unit_test(test_many_entries),
        cmocka_unit_test(test_duplicate_names),
        cmocka_unit_test(test_name_mismatch),
        cmocka_unit_test(test_refused_flags),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_data_past_end),
        cmocka_unit_test(test_directory_place),
        cmocka_unit_test(test_bytes_around),
        cmocka_unit_test(test_entry_count),
        cmocka_unit_test(test_local_values),
        cmocka_unit_test(test_inflate_limits),
        cmocka_unit_test(test_crc),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_corpus_benign),
        cmocka_unit_test(test_corpus_malicious),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

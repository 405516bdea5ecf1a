/*
 * test_zip_records.c - a torch zip's records that torch reads as something
 * other than a pickle (its short texts: version, byteorder,
 * .data/serialization_id, ...; its storages: data/<key>) may still be
 * pickles that other tools load. The scan finds them wherever they are:
 * every such record that reads as a pickle, and a storage record whose
 * first bytes are a pickle's (stored, or deflated and small). Each hostile
 * archive has a twin with the benign record that scans safe, and a storage
 * whose bytes start like a pickle but are not one stays safe.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "testbuf.h"

#include <libdeflate.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* posix.system('true'): only ever scanned */
static const char PAYLOAD[] = "\x80\x02" "cposix\nsystem\nX\x04\x00\x00\x00true\x85R.";
#define PAYLOAD_LEN (sizeof(PAYLOAD) - 1)
/* the same in protocol 0, as text */
static const char PAYLOAD0[] = "cposix\nsystem\n(S'true'\ntR.";
#define PAYLOAD0_LEN (sizeof(PAYLOAD0) - 1)

/* {'t': float32 tensor of n elements over storage "0"} */
static buf data_pkl(unsigned n)
{
    buf b = {0};
    b_put(&b, "\x80\x02}X\x01\x00\x00\x00t", 9);
    b_str(&b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    b_put(&b, "X\x07\x00\x00\x00storage", 12);
    b_str(&b, "ctorch\nFloatStorage\n");
    b_put(&b, "X\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK", 15);
    b_u8(&b, n);
    b_put(&b, "tQK\x00(K", 6);
    b_u8(&b, n);
    b_str(&b, "t(K\x01t\x89" "ccollections\nOrderedDict\n)RtRs.");
    return b;
}

typedef struct zrec {
    const char *name;
    const uint8_t *data;
    size_t size;
    bool deflate;
} zrec;

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    return (uint32_t)libdeflate_crc32(0, p, n);
}

/* A zip of the records, stored or deflated; where[i] gets record i's data offset. */
static buf zip_build(const zrec *recs, int n, uint64_t *where)
{
    buf b = {0};
    uint64_t at[16];
    uint8_t *comp[16];
    size_t clen[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        comp[i] = (uint8_t *)(uintptr_t)recs[i].data;
        clen[i] = recs[i].size;
        if (recs[i].deflate) {
            struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
            size_t cap = libdeflate_deflate_compress_bound(c, recs[i].size);
            comp[i] = malloc(cap);
            clen[i] = libdeflate_deflate_compress(c, recs[i].data, recs[i].size, comp[i], cap);
            libdeflate_free_compressor(c);
            assert_true(clen[i] > 0);
        }
        at[i] = b.len;
        b_le(&b, 0x04034b50u, 4);
        b_le(&b, 20, 2);
        b_le(&b, 0, 2);
        b_le(&b, recs[i].deflate ? 8 : 0, 2);
        b_le(&b, 0, 4);
        b_le(&b, crc32_of(recs[i].data, recs[i].size), 4);
        b_le(&b, clen[i], 4);
        b_le(&b, recs[i].size, 4);
        b_le(&b, strlen(recs[i].name), 2);
        b_le(&b, 0, 2);
        b_str(&b, recs[i].name);
        if (where)
            where[i] = b.len;
        b_put(&b, comp[i], clen[i]);
    }
    uint64_t cd = b.len;
    for (int i = 0; i < n; i++) {
        b_le(&b, 0x02014b50u, 4);
        b_le(&b, 20, 2);
        b_le(&b, 20, 2);
        b_le(&b, 0, 2);
        b_le(&b, recs[i].deflate ? 8 : 0, 2);
        b_le(&b, 0, 4);
        b_le(&b, crc32_of(recs[i].data, recs[i].size), 4);
        b_le(&b, clen[i], 4);
        b_le(&b, recs[i].size, 4);
        b_le(&b, strlen(recs[i].name), 2);
        b_le(&b, 0, 2);
        b_le(&b, 0, 2);
        b_le(&b, 0, 2);
        b_le(&b, 0, 2);
        b_le(&b, 0, 4);
        b_le(&b, at[i], 4);
        b_str(&b, recs[i].name);
        if (recs[i].deflate)
            free(comp[i]);
    }
    uint64_t cd_size = b.len - cd;
    b_le(&b, 0x06054b50u, 4);
    b_le(&b, 0, 4);
    b_le(&b, (uint64_t)n, 2);
    b_le(&b, (uint64_t)n, 2);
    b_le(&b, cd_size, 4);
    b_le(&b, cd, 4);
    b_le(&b, 0, 2);
    return b;
}

/* 1.0f, 2.0f, 3.0f, 4.0f little-endian */
static const uint8_t FLOATS[16] = {0, 0, 0x80, 0x3f, 0, 0, 0,    0x40,
                                   0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40};

/* A torch zip as torch 1.13 writes it (data.pkl, data/0, version) plus the
 * extra records; record `name` (when given) gets `data` instead of its own. */
static buf torch_zip(const char *name, const uint8_t *data, size_t size, bool deflate,
                     uint64_t *data_at)
{
    buf pkl = data_pkl(4);
    zrec recs[8] = {
        {"archive/data.pkl", pkl.p, pkl.len, false},
        {"archive/byteorder", (const uint8_t *)"little", 6, false},
        {"archive/data/0", FLOATS, sizeof(FLOATS), false},
        {"archive/version", (const uint8_t *)"3\n", 2, false},
        {"archive/.data/serialization_id", (const uint8_t *)"1234567890123456789012", 22, false},
        {"archive/.format_version", (const uint8_t *)"1", 1, false},
        {"archive/.storage_alignment", (const uint8_t *)"64", 2, false},
    };
    int n = 7, at = -1;
    for (int i = 0; i < n; i++) {
        if (name && strcmp(recs[i].name, name) == 0)
            at = i;
    }
    if (name && at < 0) {
        at = n++;
        recs[at].name = name;
    }
    if (at >= 0) {
        recs[at].data = data;
        recs[at].size = size;
        recs[at].deflate = deflate;
    }
    uint64_t where[8];
    buf b = zip_build(recs, n, where);
    if (data_at)
        *data_at = at >= 0 ? where[at] : 0;
    b_free(&pkl);
    return b;
}

static ckpt_scan *scan(const buf *b)
{
    ckpt_scan *sc = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_scan_memory(b->p, b->len, NULL, &sc, &err), CKPT_OK);
    assert_non_null(sc);
    return sc;
}

static const ckpt_scan_finding *find(const ckpt_scan *sc, ckpt_scan_kind kind, const char *global)
{
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        if (f->kind == kind && (!global || (f->global && strcmp(f->global, global) == 0)))
            return f;
    }
    return NULL;
}

static void dump(const ckpt_scan *sc)
{
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        print_message("    %s in %s at %llu: %s\n", ckpt_scan_kind_name(f->kind), f->record,
                      (unsigned long long)f->offset, f->message);
    }
}

static void expect_safe(const buf *b, const char *what)
{
    ckpt_scan *sc = scan(b);
    if (ckpt_scan_get_verdict(sc) != CKPT_SCAN_VERDICT_SAFE) {
        print_error("%s: not safe\n", what);
        dump(sc);
    }
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    assert_string_equal(ckpt_scan_format(sc), "torch-zip");
    ckpt_scan_free(sc);
    /* the reader opens it too */
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(b->p, b->len, NULL, &f, &err), CKPT_OK);
    ckpt_close(f);
}

/* The payload in record `name`: an extra pickle there, and its global at
 * the payload's GLOBAL (file offset when stored). */
static void expect_payload(const char *name, const char *payload, size_t len, bool deflate,
                           uint64_t global_at)
{
    uint64_t at = 0;
    buf b = torch_zip(name, (const uint8_t *)payload, len, deflate, &at);
    print_message("  %s%s\n", name, deflate ? " (deflated)" : "");
    ckpt_scan *sc = scan(&b);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    const ckpt_scan_finding *x = find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL);
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system");
    if (!x || !g)
        dump(sc);
    assert_non_null(x);
    assert_string_equal(x->record, name);
    assert_non_null(g);
    assert_string_equal(g->record, name);
    assert_int_equal(g->offset, global_at);
    assert_true(g->use & CKPT_SCAN_USE_REDUCE);
    assert_int_equal(g->file_offset, deflate ? CKPT_NO_OFFSET : at + global_at);
    ckpt_scan_free(sc);
    b_free(&b);
}

static void test_twin_is_safe(void **state)
{
    (void)state;
    buf b = torch_zip(NULL, NULL, 0, false, NULL);
    expect_safe(&b, "torch zip");
    b_free(&b);
    /* deflated storage, as a re-zipped file has it */
    b = torch_zip("archive/data/0", FLOATS, sizeof(FLOATS), true, NULL);
    expect_safe(&b, "deflated storage");
    b_free(&b);
}

static void test_pickles_in_text_records(void **state)
{
    (void)state;
    static const char *const names[] = {
        "archive/version", "archive/byteorder", "archive/.data/serialization_id",
        "archive/.format_version", "archive/.storage_alignment", "archive/.data/version",
        "archive/notes", "archive/extra.txt",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        expect_payload(names[i], PAYLOAD, PAYLOAD_LEN, false, 2);
        expect_payload(names[i], PAYLOAD0, PAYLOAD0_LEN, false, 0);
        expect_payload(names[i], PAYLOAD, PAYLOAD_LEN, true, 2);
    }
    /* a text record longer than torch expects is still scanned */
    buf big = {0};
    b_put(&big, PAYLOAD, PAYLOAD_LEN);
    b_fill(&big, ' ', 5000);
    uint64_t at = 0;
    buf b = torch_zip("archive/.data/serialization_id", big.p, big.len, false, &at);
    ckpt_scan *sc = scan(&b);
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system");
    if (!g)
        dump(sc);
    assert_non_null(g);
    assert_int_equal(g->file_offset, at + 2);
    ckpt_scan_free(sc);
    b_free(&b);
    b_free(&big);
}

static void test_pickles_in_storage_records(void **state)
{
    (void)state;
    /* the storage torch reads as 16 bytes of floats holds a pickle: its
     * size must match for torch to read it, so pad the payload */
    uint8_t rec[64];
    memset(rec, 'N', sizeof(rec));
    memcpy(rec, PAYLOAD, PAYLOAD_LEN);
    assert_true(PAYLOAD_LEN <= sizeof(rec));
    buf pkl = data_pkl(16);
    for (int deflate = 0; deflate < 2; deflate++) {
        for (int proto0 = 0; proto0 < 2; proto0++) {
            memset(rec, 'N', sizeof(rec));
            memcpy(rec, proto0 ? PAYLOAD0 : PAYLOAD, proto0 ? PAYLOAD0_LEN : PAYLOAD_LEN);
            zrec recs[3] = {
                {"archive/data.pkl", pkl.p, pkl.len, false},
                {"archive/data/0", rec, sizeof(rec), deflate != 0},
                {"archive/version", (const uint8_t *)"3\n", 2, false},
            };
            uint64_t where[3];
            buf b = zip_build(recs, 3, where);
            ckpt_scan *sc = scan(&b);
            const ckpt_scan_finding *x = find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL);
            const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system");
            if (!x || !g)
                dump(sc);
            assert_non_null(x);
            assert_string_equal(x->record, "archive/data/0");
            assert_non_null(strstr(x->message, "the storage record reads as a pickle"));
            assert_non_null(g);
            assert_string_equal(g->record, "archive/data/0");
            uint64_t off = proto0 ? 0 : 2;
            assert_int_equal(g->offset, off);
            assert_int_equal(g->file_offset, deflate ? CKPT_NO_OFFSET : where[1] + off);
            /* the bytes after STOP are the tensor's: reported as such */
            assert_non_null(find(sc, CKPT_SCAN_KIND_TRAILING_DATA, NULL));
            ckpt_scan_free(sc);
            /* the reader reads it as the tensor it is */
            ckpt_file *f = NULL;
            ckpt_error err;
            assert_int_equal(ckpt_open_memory(b.p, b.len, NULL, &f, &err), CKPT_OK);
            ckpt_close(f);
            b_free(&b);
        }
    }

    /* tensors whose bytes start like a pickle but do not read as one */
    static const uint8_t looks[][16] = {
        {0x80, 0x02, 0xff, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40},
        {0x80, 0x04, 0x95, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40},
        {'c', 'o', 's', '\n', 's', 'y', 's', 't', 'e', 'm', '!', 0, 0, 0, 0, 0},
        {0x80, 0x02, ']', 'q', 0, 'e', 'e', 'e', 'e', 'e', 'e', 'e', 'e', 'e', 'e', 'e'},
    };
    for (size_t i = 0; i < sizeof(looks) / sizeof(looks[0]); i++) {
        for (int deflate = 0; deflate < 2; deflate++) {
            buf b = torch_zip("archive/data/0", looks[i], 16, deflate != 0, NULL);
            char what[64];
            snprintf(what, sizeof(what), "pickle-like tensor %zu%s", i, deflate ? " deflated" : "");
            expect_safe(&b, what);
            b_free(&b);
        }
    }
    b_free(&pkl);
}

/* A second pickle after data.pkl's STOP: torch stops before it, a second
 * pickle.load on the record runs it. */
static void test_pickle_after_data_pkl(void **state)
{
    (void)state;
    buf pkl = data_pkl(4);
    uint64_t stop = pkl.len;
    b_put(&pkl, PAYLOAD, PAYLOAD_LEN);
    buf b = torch_zip("archive/data.pkl", pkl.p, pkl.len, false, NULL);
    ckpt_scan *sc = scan(&b);
    const ckpt_scan_finding *x = find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL);
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system");
    if (!x || !g)
        dump(sc);
    assert_non_null(x);
    assert_string_equal(x->record, "archive/data.pkl: pickle 2");
    char at[64];
    snprintf(at, sizeof(at), "starts at byte %llu", (unsigned long long)stop);
    assert_non_null(strstr(x->message, at));
    assert_non_null(g);
    assert_string_equal(g->record, "archive/data.pkl: pickle 2");
    assert_int_equal(g->offset, 2);
    ckpt_scan_free(sc);
    b_free(&b);
    b_free(&pkl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twin_is_safe),
        cmocka_unit_test(test_pickles_in_text_records),
        cmocka_unit_test(test_pickles_in_storage_records),
        cmocka_unit_test(test_pickle_after_data_pkl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_detect.c - what a file is (src/format/format.h): one test per format,
 * the reader (ckpt_open_memory) and the scanner deciding alike.
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

#define P(s) (const uint8_t *)(s), sizeof(s) - 1

/* Every opcode of CPython's pickle (pickletools.opcodes), protocols 0 to 5. */
static bool cpython_opcode(unsigned c)
{
    static const char ascii[] = "().012BCFGIJKLMNPQRSTUVX]abcdeghijlopqrstu}";
    if (c >= 0x80)
        return c <= 0x98;
    return c != 0 && strchr(ascii, (int)c) != NULL;
}

static void test_pickle_bid_is_cpythons(void **state)
{
    (void)state;
    int n = 0;
    for (unsigned c = 0; c < 256; c++) {
        uint8_t b[2] = {(uint8_t)c, '.'};
        assert_int_equal(ckpt__pickle_detect(b, 2), cpython_opcode(c));
        n += cpython_opcode(c);
    }
    assert_int_equal(n, 68);
    assert_false(ckpt__pickle_detect(P("")));
    assert_false(ckpt__pickle_detect(NULL, 1));
}

static void test_signatures(void **state)
{
    (void)state;
    assert_true(ckpt__zip_detect(P("PK\x03\x04")));
    assert_true(ckpt__npy_detect(P("\x93NUMPY\x01\x00v\x00")));
    assert_false(ckpt__npy_detect(P("\x93NUMPY")));
    assert_true(ckpt__pytorch1_detect(P("PYTORCH1")));
    assert_true(ckpt__7z_detect(P("7z\xbc\xaf\x27\x1c")));
    assert_true(ckpt__png_detect(P("\x89PNG\r\n\x1a\n")));
    assert_true(ckpt__safetensors_detect(P("\x02\x00\x00\x00\x00\x00\x00\x00{}")));
    assert_false(ckpt__safetensors_detect(P("\x01\x00\x00\x00\x00\x00\x00\x00{}")));
    assert_true(ckpt__sharded_detect(P(" {\"weight_map\": {}}")));
}

static ckpt_status open_bytes(const uint8_t *p, size_t n, ckpt_error *err)
{
    ckpt_file *f = NULL;
    ckpt_status st = ckpt_open_memory(p, n, NULL, &f, err);
    ckpt_close(f);
    return st;
}

static const char *scan_format(const uint8_t *p, size_t n, char *buf, size_t cap)
{
    ckpt_scan *sc = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_scan_memory(p, n, NULL, &sc, &err), CKPT_OK);
    snprintf(buf, cap, "%s", ckpt_scan_format(sc));
    ckpt_scan_free(sc);
    return buf;
}

/* A first byte the unpickler knows is a pickle to both; any other byte is
 * an unknown format to both (no NUL, no missing FRAME). */
static void test_reader_and_scanner_agree(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        uint8_t b[16];
        memset(b, 'x', sizeof(b));
        b[0] = (uint8_t)c;
        if (ckpt__zip_detect(b, sizeof(b)) || ckpt__tar_detect(b, sizeof(b)) ||
            ckpt__png_detect(b, sizeof(b)))
            continue;
        ckpt_error err;
        ckpt_status st = open_bytes(b, sizeof(b), &err);
        assert_int_not_equal(st, CKPT_OK);
        bool unknown = strstr(err.message, "unknown format") != NULL;
        char fmt[32];
        scan_format(b, sizeof(b), fmt, sizeof(fmt));
        if (cpython_opcode(c)) {
            assert_false(unknown);
            assert_string_equal(fmt, "pickle");
        } else {
            assert_true(unknown);
            assert_string_equal(fmt, "unknown");
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pickle_bid_is_cpythons),
        cmocka_unit_test(test_signatures),
        cmocka_unit_test(test_reader_and_scanner_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_repr.c - Python's text of values (src/repr.c): ckpt_value_repr
 * against what Python 3.11 prints for the same values, dict keys as tensor
 * names show them, and the float and int text the writers share.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* v's repr is want, whatever the buffer: exact, measured, or none. */
static void assert_repr(const ckpt_value *v, const char *want)
{
    char buf[512];
    size_t n = ckpt_value_repr(v, buf, sizeof(buf));
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
    assert_int_equal(ckpt_value_repr(v, NULL, 0), n);
}

static ckpt_value *str_of(ckpt_tree *t, const char *s, size_t n)
{
    return ckpt_new_str(t, s, n);
}

static void test_scalars(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    assert_repr(NULL, "None");
    assert_repr(ckpt_new_none(t), "None");
    assert_repr(ckpt_new_bool(t, true), "True");
    assert_repr(ckpt_new_bool(t, false), "False");
    assert_repr(ckpt_new_int(t, 0), "0");
    assert_repr(ckpt_new_int(t, -5), "-5");
    assert_repr(ckpt_new_int(t, INT64_MIN), "-9223372036854775808");
    static const struct { double d; const char *text; } floats[] = {
        {100.0, "100.0"}, {1e16, "1e+16"}, {1e-05, "1e-05"}, {-0.0, "-0.0"},
        {0.1, "0.1"}, {1e15, "1000000000000000.0"}, {5e-324, "5e-324"},
        {1.7976931348623157e308, "1.7976931348623157e+308"},
        {123456789012345678.0, "1.2345678901234568e+17"}, {0.0001, "0.0001"},
        {1.5e-5, "1.5e-05"}, {12345.678, "12345.678"}, {0.0, "0.0"}, {-2.5, "-2.5"},
    };
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++)
        assert_repr(ckpt_new_float(t, floats[i].d), floats[i].text);
    assert_repr(ckpt_new_float(t, NAN), "nan");
    assert_repr(ckpt_new_float(t, -NAN), "nan");
    assert_repr(ckpt_new_float(t, INFINITY), "inf");
    assert_repr(ckpt_new_float(t, -INFINITY), "-inf");
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_tree_free(t);
}

static void test_complex(void **state)
{
    (void)state;
    static const struct { double re, im; const char *text; } cases[] = {
        {1, 2, "(1+2j)"}, {0, 2, "2j"}, {-0.0, 2, "(-0+2j)"}, {1, -0.0, "(1-0j)"},
        {NAN, INFINITY, "(nan+infj)"}, {1.5, -2.5, "(1.5-2.5j)"},
        {1e16, 1e-5, "(1e+16+1e-05j)"}, {0, 0, "0j"}, {0, NAN, "nanj"},
        {-INFINITY, -NAN, "(-inf+nanj)"},
    };
    ckpt_tree *t = ckpt_tree_new();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_repr(ckpt_new_complex(t, cases[i].re, cases[i].im), cases[i].text);
    ckpt_tree_free(t);
}

static void test_text_and_bytes(void **state)
{
    (void)state;
    static const struct { const char *s; size_t n; const char *text; } strs[] = {
        {"it's", 4, "\"it's\""},
        {"say \"hi\"\n", 9, "'say \"hi\"\\n'"},
        {"both ' and \"", 12, "'both \\' and \"'"},
        {"tab\t\r\0\x7f", 7, "'tab\\t\\r\\x00\\x7f'"},
        {"\xce\xbb-train \xe2\x9c\x93 \xf0\x9f\x9a\x80", 17,
         "'\xce\xbb-train \xe2\x9c\x93 \xf0\x9f\x9a\x80'"},
        /* U+00A0 U+00AD U+200B U+2028 U+0085: not printable */
        {"\xc2\xa0nbsp\xc2\xad\xe2\x80\x8b\xe2\x80\xa8\xc2\x85", 16,
         "'\\xa0nbsp\\xad\\u200b\\u2028\\x85'"},
        /* U+E0001 (a tag, Cf) and U+1F600 (printable) */
        {"\xf3\xa0\x80\x81\xf0\x9f\x98\x80", 8, "'\\U000e0001\xf0\x9f\x98\x80'"},
        {"a\\b", 3, "'a\\\\b'"},
        {"", 0, "''"},
        {"\xee\x80\x80", 3, "'\\ue000'"}, /* private use */
        /* U+0378 and U+E0080: unassigned (Cn), escaped as Python 3.11 does */
        {"\xcd\xb8\xf3\xa0\x82\x80", 6, "'\\u0378\\U000e0080'"},
    };
    ckpt_tree *t = ckpt_tree_new();
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        assert_repr(str_of(t, strs[i].s, strs[i].n), strs[i].text);
    assert_repr(ckpt_new_bytes(t, "\0\xfe'\"\\ab\n\t\x7f", 10), "b'\\x00\\xfe\\'\"\\\\ab\\n\\t\\x7f'");
    assert_repr(ckpt_new_bytes(t, "it's", 4), "b\"it's\"");
    assert_repr(ckpt_new_bytes(t, "", 0), "b''");
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_tree_free(t);
}

/* seq with the ints 1..n appended. */
static ckpt_value *counting(ckpt_tree *t, ckpt_value *seq, int n)
{
    for (int i = 1; i <= n; i++)
        ckpt_append(t, seq, ckpt_new_int(t, i));
    return seq;
}

static void test_containers(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    assert_repr(counting(t, ckpt_new_list(t), 0), "[]");
    ckpt_value *l = counting(t, ckpt_new_list(t), 1);
    ckpt_append(t, l, str_of(t, "a", 1));
    assert_repr(l, "[1, 'a']");
    assert_repr(counting(t, ckpt_new_tuple(t), 0), "()");
    assert_repr(counting(t, ckpt_new_tuple(t), 1), "(1,)");
    assert_repr(counting(t, ckpt_new_tuple(t), 2), "(1, 2)");
    assert_repr(counting(t, ckpt_new_set(t), 0), "set()");
    assert_repr(counting(t, ckpt_new_set(t), 1), "{1}");
    ckpt_value *d = ckpt_new_dict(t);
    assert_repr(d, "{}");
    ckpt_dict_put_str(t, d, "a", ckpt_new_int(t, 1));
    ckpt_value *inner = ckpt_new_list(t);
    ckpt_append(t, inner, ckpt_new_float(t, 3.5));
    ckpt_append(t, inner, ckpt_new_none(t));
    ckpt_dict_put(t, d, ckpt_new_int(t, 2), inner);
    assert_repr(d, "{'a': 1, 2: [3.5, None]}");
    ckpt_value *od = ckpt_new_ordered_dict(t);
    assert_repr(od, "OrderedDict()");
    ckpt_dict_put_str(t, od, "a", ckpt_new_int(t, 1));
    ckpt_dict_put_str(t, od, "b", counting(t, ckpt_new_tuple(t), 1));
    assert_repr(od, "OrderedDict([('a', 1), ('b', (1,))])");
    ckpt_value *nest = ckpt_new_list(t), *mid = ckpt_new_list(t);
    ckpt_append(t, mid, ckpt_new_list(t));
    ckpt_append(t, nest, mid);
    assert_repr(nest, "[[[]]]");

    /* a container inside itself shows as Python shows it */
    ckpt_value *self = ckpt_new_list(t);
    ckpt_append(t, self, ckpt_new_int(t, 1));
    ckpt_append(t, self, self);
    assert_repr(self, "[1, [...]]");
    ckpt_value *selfd = ckpt_new_dict(t);
    ckpt_dict_put_str(t, selfd, "a", selfd);
    assert_repr(selfd, "{'a': {...}}");

    /* nesting is bounded: the 101st list shows as [...] */
    ckpt_value *deep = ckpt_new_list(t);
    for (int i = 0; i < 150; i++) {
        ckpt_value *outer = ckpt_new_list(t);
        ckpt_append(t, outer, deep);
        deep = outer;
    }
    char want[256];
    memset(want, '[', 100);
    memcpy(want + 100, "[...]", 5);
    memset(want + 105, ']', 100);
    want[205] = 0;
    assert_repr(deep, want);
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_tree_free(t);
}

static void test_torch_values(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    int64_t dims[2] = {2, 3};
    assert_repr(ckpt_new_size(t, 2, dims), "torch.Size([2, 3])");
    assert_repr(ckpt_new_size(t, 0, NULL), "torch.Size([])");
    assert_repr(ckpt_new_device(t, "cuda:0"), "device(type='cuda', index=0)");
    assert_repr(ckpt_new_device(t, "cpu"), "device(type='cpu')");
    assert_repr(ckpt_new_dtype(t, CKPT_DTYPE_FLOAT32), "torch.float32");
    assert_repr(ckpt_new_dtype(t, CKPT_DTYPE_BFLOAT16), "torch.bfloat16");
    float data[6] = {0};
    ckpt_tensor_desc desc;
    ckpt_tensor_desc_init(&desc);
    desc.ndim = 2;
    desc.shape = dims;
    desc.data = data;
    assert_repr(ckpt_new_tensor(t, &desc), "tensor(dtype=float32, shape=[2, 3])");
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    ckpt_tree_free(t);
}

/* ---- values read from pickles ------------------------------------------- */

/* The root of a protocol 2 pickle: PROTO 2, body, STOP. */
static char *repr_of_pickle(const uint8_t *body, size_t n, unsigned flags)
{
    uint8_t *p = malloc(n + 3);
    assert_non_null(p);
    p[0] = 0x80;
    p[1] = 2;
    memcpy(p + 2, body, n);
    p[n + 2] = '.';
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= flags;
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(p, n + 3, &oo, &f, &err), CKPT_OK);
    size_t len = ckpt_value_repr(ckpt_file_root(f), NULL, 0);
    char *text = malloc(len + 1);
    assert_non_null(text);
    assert_int_equal(ckpt_value_repr(ckpt_file_root(f), text, len + 1), len);
    ckpt_close(f);
    free(p);
    return text;
}

/* LONG1 (n < 256) or LONG4 of n little-endian two's complement bytes. */
static char *repr_of_long(const uint8_t *bytes, size_t n)
{
    uint8_t *body = malloc(n + 5);
    assert_non_null(body);
    size_t h;
    if (n < 256) {
        body[0] = 0x8a;
        body[1] = (uint8_t)n;
        h = 2;
    } else {
        body[0] = 0x8b;
        for (int i = 0; i < 4; i++)
            body[1 + i] = (uint8_t)(n >> (8 * i));
        h = 5;
    }
    memcpy(body + h, bytes, n);
    char *text = repr_of_pickle(body, h + n, 0);
    free(body);
    return text;
}

static void assert_long(const uint8_t *bytes, size_t n, const char *want)
{
    char *text = repr_of_long(bytes, n);
    assert_string_equal(text, want);
    free(text);
}

/* 10^k as little-endian two's complement bytes (a 0 byte on top); *n gets
 * their count. */
static uint8_t *power_of_ten(unsigned k, size_t *n)
{
    size_t cap = k / 2 + 8, len = 1;
    uint8_t *p = calloc(cap, 1);
    assert_non_null(p);
    p[0] = 1;
    for (unsigned i = 0; i < k; i++) {
        unsigned carry = 0;
        for (size_t j = 0; j < len; j++) {
            unsigned v = p[j] * 10u + carry;
            p[j] = (uint8_t)v;
            carry = v >> 8;
        }
        if (carry)
            p[len++] = (uint8_t)carry;
    }
    *n = len + 1;
    return p;
}

static void test_big_ints(void **state)
{
    (void)state;
    /* what pickle.dumps(x, 2) writes for 2**100, -2**100, -2**63-1, 2**64 */
    static const uint8_t p100[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10};
    static const uint8_t m100[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0};
    static const uint8_t m63[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff};
    static const uint8_t p64[] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const uint8_t p63[] = {0, 0, 0, 0, 0, 0, 0, 0x80, 0};
    assert_long(p100, sizeof(p100), "1267650600228229401496703205376");
    assert_long(m100, sizeof(m100), "-1267650600228229401496703205376");
    assert_long(m63, sizeof(m63), "-9223372036854775809");
    assert_long(p64, sizeof(p64), "18446744073709551616");
    assert_long(p63, sizeof(p63), "9223372036854775808");
    /* padded with a thousand sign bytes: the same value */
    uint8_t padded[1013] = {0};
    memcpy(padded, m100, sizeof(m100));
    memset(padded + sizeof(m100), 0xff, sizeof(padded) - sizeof(m100));
    assert_long(padded, sizeof(padded), "-1267650600228229401496703205376");

    /* 10**4300 - 1 has the most digits Python's str() shows ... */
    size_t n;
    uint8_t *ten = power_of_ten(4300, &n);
    for (size_t i = 0; i < n && ten[i]-- == 0; i++)
        ;
    char *text = repr_of_long(ten, n);
    assert_int_equal(strlen(text), 4300);
    assert_int_equal(strspn(text, "9"), 4300);
    free(text);
    free(ten);
    /* ... 10**4300 is shown in hex, as hex() shows it */
    ten = power_of_ten(4300, &n);
    text = repr_of_long(ten, n);
    assert_int_equal(strlen(text), 3574);
    assert_memory_equal(text, "0x1392bd7c2a", 12);
    assert_int_equal(strspn(text + 3574 - 1075, "0"), 1075);
    free(text);
    /* and -10**4300 as -0x... */
    for (size_t i = 0; i < n; i++)
        ten[i] = (uint8_t)~ten[i];
    for (size_t i = 0; i < n && ++ten[i] == 0; i++)
        ;
    text = repr_of_long(ten, n);
    assert_int_equal(strlen(text), 3575);
    assert_memory_equal(text, "-0x1392bd7c2a", 13);
    free(text);
    free(ten);

    /* the writers' decimal text has no digit limit */
    ten = power_of_ten(10000, &n);
    for (size_t i = 0; i < n && ten[i]-- == 0; i++)
        ;
    size_t len;
    char *dec = ckpt__bigint_decimal(ten, n, &len);
    assert_non_null(dec);
    assert_int_equal(len, 10000);
    assert_int_equal(strspn(dec, "9"), 10000);
    free(dec);
    free(ten);
    dec = ckpt__bigint_decimal(NULL, 0, &len);
    assert_string_equal(dec, "0");
    free(dec);
}

static void test_globals_and_objects(void **state)
{
    (void)state;
    /* [foo.Bar, foo.Bar()] read permissively: a global and an inert object */
    static const char body[] = "](cfoo\nBar\nq\x00h\x00)\x81" "e";
    char *text = repr_of_pickle((const uint8_t *)body, sizeof(body) - 1, CKPT_OPEN_PERMISSIVE);
    assert_string_equal(text, "[foo.Bar, <foo.Bar object>]");
    free(text);
}

/* Like snprintf: what fits, NUL-terminated, and the whole length. */
static void test_truncation(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *l = ckpt_new_list(t);
    ckpt_append(t, l, str_of(t, "abc", 3));
    ckpt_append(t, l, ckpt_new_float(t, 1e16));
    const char *full = "['abc', 1e+16]";
    char buf[8];
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(ckpt_value_repr(l, buf, 5), strlen(full));
    assert_string_equal(buf, "['ab");
    assert_int_equal(buf[5], 'x');
    assert_int_equal(ckpt_value_repr(l, buf, 1), strlen(full));
    assert_string_equal(buf, "");
    assert_int_equal(ckpt_value_repr(l, NULL, 0), strlen(full));
    assert_int_equal(ckpt_value_repr(l, buf, 0), strlen(full));
    char small[3];
    assert_int_equal(ckpt__float_repr(1e-5, 0, small, sizeof(small)), 5);
    assert_string_equal(small, "1e");
    ckpt_tree_free(t);
}

/* Sets and frozensets, as REDUCE of builtins.set/frozenset and as the
 * opcodes EMPTY_SET and FROZENSET make them: {3}, set(), frozenset({3}),
 * frozenset(); a frozenset dict key in a tensor name as str() shows it. */
static void test_frozensets(void **state)
{
    (void)state;
#define FS(body, text) {body, sizeof(body) - 1, text}
    static const struct { const char *body; size_t n; const char *text; } cases[] = {
        FS("c__builtin__\nfrozenset\n]K\x03" "a\x85R", "frozenset({3})"),
        FS("c__builtin__\nfrozenset\n)R", "frozenset()"),
        FS("c__builtin__\nfrozenset\n]K\x04" "a\x85R\x85", "(frozenset({4}),)"),
        FS("(K\x01K\x02\x91", "frozenset({1, 2})"),
        FS("((K\x01\x91\x91", "frozenset({frozenset({1})})"),
        FS("(\x91\x85", "(frozenset(),)"),
        FS("c__builtin__\nset\n]K\x03" "a\x85R", "{3}"),
        FS("\x8f", "set()"),
        FS("\x8f(K\x05\x90", "{5}"),
        FS("}(K\x03\x91K\x01s", "{frozenset({3}): 1}"),
        /* equal frozensets are one key, in any order: the later value */
        FS("}((K\x01K\x02\x91K\x0a(K\x02K\x01\x91K\x14u", "{frozenset({1, 2}): 20}"),
    };
#undef FS
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = repr_of_pickle((const uint8_t *)cases[i].body, cases[i].n, 0);
        assert_string_equal(text, cases[i].text);
        free(text);
    }

    /* str() of keys: the tensor names */
    static const uint8_t key_dict[] = "\x80\x02}((K\x03\x91K\x01(\x91\x85K\x02u.";
    ckpt_file *f;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(key_dict, sizeof(key_dict) - 1, NULL, &f, &err), CKPT_OK);
    char buf[64];
    ckpt_value_key_text(ckpt_value_key(ckpt_file_root(f), 0), buf, sizeof(buf));
    assert_string_equal(buf, "frozenset({3})");
    ckpt_value_key_text(ckpt_value_key(ckpt_file_root(f), 1), buf, sizeof(buf));
    assert_string_equal(buf, "(frozenset(),)");
    ckpt_close(f);

    /* ADDITEMS on a frozenset: Python fails (no add()), so does ckpt */
    static const uint8_t add[] = "\x80\x04(K\x01\x91(K\x02\x90.";
    f = NULL;
    assert_int_equal(ckpt_open_memory(add, sizeof(add) - 1, NULL, &f, &err), CKPT_ERR_FORMAT);
    assert_null(f);
    assert_non_null(strstr(err.message, "ADDITEMS on a frozenset"));
}

/* Keys as tensor names show them: Python's str(). */
static void test_key_text(void **state)
{
    (void)state;
    ckpt_tree *t = ckpt_tree_new();
    char buf[128];
    ckpt_value_key_text(str_of(t, "it's", 4), buf, sizeof(buf));
    assert_string_equal(buf, "it's");
    ckpt_value_key_text(ckpt_new_bytes(t, "ab", 2), buf, sizeof(buf));
    assert_string_equal(buf, "b'ab'");
    ckpt_value_key_text(ckpt_new_device(t, "cuda:0"), buf, sizeof(buf));
    assert_string_equal(buf, "cuda:0");
    ckpt_value_key_text(ckpt_new_complex(t, 1, 2), buf, sizeof(buf));
    assert_string_equal(buf, "(1+2j)");
    ckpt_value *tup = ckpt_new_tuple(t);
    ckpt_append(t, tup, ckpt_new_device(t, "cuda:0"));
    ckpt_append(t, tup, str_of(t, "a", 1));
    ckpt_append(t, tup, ckpt_new_bytes(t, "x", 1));
    ckpt_value_key_text(tup, buf, sizeof(buf));
    assert_string_equal(buf, "(device(type='cuda', index=0), 'a', b'x')");
    /* the length written, not the whole length */
    assert_int_equal(ckpt_value_key_text(tup, buf, 8), 7);
    assert_string_equal(buf, "(device");
    assert_int_equal(ckpt__key_text(tup, NULL, 0), strlen("(device(type='cuda', index=0), 'a', b'x')"));
    ckpt_tree_free(t);
}

/* Every double reads back from its text, in at most 17 digits. */
static void test_float_round_trip(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        memcpy(&d, &x, 8);
        if (isnan(d) || isinf(d))
            continue;
        char text[40];
        size_t n = ckpt__float_repr(d, 0, text, sizeof(text));
        assert_true(n < sizeof(text));
        char *end;
        double back = strtod(text, &end);
        assert_true(*end == 0);
        assert_memory_equal(&back, &d, 8);
        size_t digits = 0;
        bool leading = true;
        for (const char *p = text; *p && *p != 'e'; p++) {
            if (*p >= '1' && *p <= '9')
                leading = false;
            digits += !leading && *p >= '0' && *p <= '9';
        }
        assert_true(digits <= 17);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_complex),
        cmocka_unit_test(test_text_and_bytes),
        cmocka_unit_test(test_containers),
        cmocka_unit_test(test_torch_values),
        cmocka_unit_test(test_big_ints),
        cmocka_unit_test(test_globals_and_objects),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_frozensets),
        cmocka_unit_test(test_key_text),
        cmocka_unit_test(test_float_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_st_header.c - the safetensors header as the streaming parser reads
 * it: every rule a whole-document JSON reader enforced holds (duplicate keys
 * at any depth and under any spelling, NUL and lone surrogates, strict
 * UTF-8, JSON's own white space, 64-bit integers, finite reals, nesting),
 * the format's rules come after the JSON's, errors name the byte, and
 * objects that share a depth (entries, objects in arrays) keep their keys
 * apart.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A tensor entry of one byte at [0, 1). */
#define E1 "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]"

/* header, then data_len bytes */
static buf st_make(const char *header, size_t hlen, size_t data_len)
{
    buf b = {0};
    b_le(&b, hlen, 8);
    b_put(&b, header, hlen);
    b_fill(&b, 3, data_len);
    return b;
}

/* Opens header + data_len bytes; *keep holds the file's bytes (free it
 * after ckpt_close: ckpt_open_memory reads the caller's bytes). */
static ckpt_status open_st(const char *header, size_t hlen, size_t data_len, buf *keep,
                           ckpt_file **f, ckpt_error *err)
{
    *keep = st_make(header, hlen, data_len);
    memset(err, 0, sizeof(*err));
    return ckpt_open_memory(keep->p, keep->len, NULL, f, err);
}

static void opens(const char *what, const char *header, size_t data_len, size_t tensors)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    buf keep;
    ckpt_status st = open_st(header, strlen(header), data_len, &keep, &f, &err);
    if (st != CKPT_OK)
        fail_msg("%s: %s: %s: %s", what, ckpt_status_name(st), err.record, err.message);
    assert_int_equal(ckpt_file_tensor_count(f), tensors);
    ckpt_close(f);
    b_free(&keep);
}

/* Fails with status, the message holding text; at (when not
 * CKPT_NO_OFFSET) the byte offset in the header. */
static void refused_n(const char *what, const char *header, size_t hlen, size_t data_len,
                      ckpt_status status, const char *text, uint64_t at)
{
    ckpt_file *f = (ckpt_file *)(uintptr_t)1;
    ckpt_error err;
    buf keep;
    ckpt_status st = open_st(header, hlen, data_len, &keep, &f, &err);
    b_free(&keep);
    if (st == CKPT_OK) {
        ckpt_close(f);
        fail_msg("%s: opened; expected %s", what, ckpt_status_name(status));
    }
    assert_null(f);
    if (st != status || !strstr(err.message, text))
        fail_msg("%s: %s (%s: %s); expected %s with '%s'", what, ckpt_status_name(st),
                 err.record, err.message, ckpt_status_name(status), text);
    if (strcmp(err.record, "safetensors header") != 0)
        fail_msg("%s: the error names record '%s'", what, err.record);
    if (at != CKPT_NO_OFFSET && (err.offset != at || err.file_offset != 8 + at))
        fail_msg("%s: error at byte %llu (file %llu), expected %llu (%s)", what,
                 (unsigned long long)err.offset, (unsigned long long)err.file_offset,
                 (unsigned long long)at, err.message);
}

static void refused(const char *what, const char *header, size_t data_len, ckpt_status status,
                    const char *text, uint64_t at)
{
    refused_n(what, header, strlen(header), data_len, status, text, at);
}

static uint64_t pos(const char *header, const char *needle, int nth)
{
    const char *p = header;
    for (int i = 0; i <= nth; i++) {
        p = strstr(i ? p + 1 : p, needle);
        assert_non_null(p);
    }
    return (uint64_t)(p - header);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    const char *h;
    h = "{\"a\":{" E1 "},\"a\":{" E1 "}}";
    refused("two tensors of one name", h, 1, CKPT_ERR_FORMAT, "duplicate key 'a'",
            pos(h, "\"a\"", 1));
    h = "{\"a\":{" E1 "},\"\\u0061\":{" E1 "}}";
    refused("one name, escaped the second time", h, 1, CKPT_ERR_FORMAT, "duplicate key 'a'",
            pos(h, "\"\\u0061\"", 0));
    h = "{\"a\":{\"dtype\":\"F32\"," E1 "}}";
    refused("dtype twice in an entry", h, 1, CKPT_ERR_FORMAT, "duplicate key 'dtype'",
            pos(h, "\"dtype\"", 1));
    h = "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"},\"a\":{" E1 "}}";
    refused("a metadata key twice", h, 1, CKPT_ERR_FORMAT, "duplicate key 'k'",
            pos(h, "\"k\"", 1));
    h = "{\"__metadata__\":{},\"__metad\\u0061ta__\":{},\"a\":{" E1 "}}";
    refused("__metadata__ twice", h, 1, CKPT_ERR_FORMAT, "duplicate key '__metadata__'",
            CKPT_NO_OFFSET);
    h = "{\"a\":{" E1 ",\"x\":[1,{\"y\":{\"k\":1,\"k\":2}}]}}";
    refused("a key twice in an unknown field, deep down", h, 1, CKPT_ERR_FORMAT,
            "duplicate key 'k'", pos(h, "\"k\"", 1));

    /* objects of more keys than are compared one by one: a hash index */
    buf b = {0};
    b_str(&b, "{\"a\":{" E1 ",\"x\":{");
    for (int i = 0; i < 300; i++) {
        char k[32];
        snprintf(k, sizeof(k), "%s\"k%d\":%d", i ? "," : "", i, i);
        b_str(&b, k);
    }
    b_str(&b, "}}}");
    b_u8(&b, 0);
    opens("300 keys, all different", (const char *)b.p, 1, 1);
    b.len -= 4;
    b_str(&b, ",\"k299\":0}}}");
    b_u8(&b, 0);
    refused("300 keys, the last one twice", (const char *)b.p, 1, CKPT_ERR_FORMAT,
            "duplicate key 'k299'", pos((const char *)b.p, "\"k299\"", 1));
    b_free(&b);

    /* 300 tensors, then the first name again */
    b_str(&b, "{");
    for (int i = 0; i < 300; i++) {
        char e[160];
        snprintf(e, sizeof(e),
                 "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
                 i ? "," : "", i, i, i + 1);
        b_str(&b, e);
    }
    b_str(&b, ",\"t0\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[300,300]}}");
    b_u8(&b, 0);
    refused("300 tensors, then the first name again", (const char *)b.p, 300, CKPT_ERR_FORMAT,
            "duplicate key 't0'", CKPT_NO_OFFSET);
    b_free(&b);
}

/* Objects at one depth are different objects: their keys never meet. */
static void test_sibling_objects(void **state)
{
    (void)state;
    opens("entries with the same fields",
          "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
          "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, 2);
    opens("objects in an array with the same keys",
          "{\"a\":{" E1 ",\"x\":[{\"k\":1},{\"k\":1},[{\"k\":{\"k\":2}}]]}}", 1, 1);
    /* a big object (with a hash index), then small ones with its keys */
    buf b = {0};
    b_str(&b, "{\"a\":{" E1 ",\"x\":[{");
    for (int i = 0; i < 40; i++) {
        char k[32];
        snprintf(k, sizeof(k), "%s\"k%d\":0", i ? "," : "", i);
        b_str(&b, k);
    }
    b_str(&b, "},{\"k1\":0,\"k2\":0},{\"k39\":0}]}}");
    b_u8(&b, 0);
    opens("a big object, then small ones with its keys", (const char *)b.p, 1, 1);
    b_free(&b);
}

static void test_strings(void **state)
{
    (void)state;
    const char *h;
    h = "{\"a\\u0000b\":{" E1 "}}";
    refused("NUL in a tensor name", h, 1, CKPT_ERR_FORMAT, "NUL", pos(h, "\\u0000", 0));
    refused("NUL in a metadata key", "{\"__metadata__\":{\"k\\u0000\":\"v\"},\"a\":{" E1 "}}", 1,
            CKPT_ERR_FORMAT, "NUL", CKPT_NO_OFFSET);
    refused("NUL in a metadata value", "{\"__metadata__\":{\"k\":\"\\u0000\"},\"a\":{" E1 "}}", 1,
            CKPT_ERR_FORMAT, "NUL", CKPT_NO_OFFSET);
    refused("NUL in a dtype", "{\"a\":{\"dtype\":\"U8\\u0000\",\"shape\":[1],"
                              "\"data_offsets\":[0,1]}}", 1, CKPT_ERR_FORMAT, "NUL",
            CKPT_NO_OFFSET);
    refused("NUL in an unknown field", "{\"a\":{" E1 ",\"x\":[\"\\u0000\"]}}", 1,
            CKPT_ERR_FORMAT, "NUL", CKPT_NO_OFFSET);
    h = "{\"a\\ud800\":{" E1 "}}";
    refused("a lone high surrogate", h, 1, CKPT_ERR_FORMAT, "high surrogate",
            pos(h, "\\ud800", 0));
    refused("a high surrogate and no low one", "{\"a\\ud800\\u0041\":{" E1 "}}", 1,
            CKPT_ERR_FORMAT, "high surrogate", CKPT_NO_OFFSET);
    refused("a high surrogate at the end", "{\"a\":{" E1 ",\"x\":\"\\uDBFF\"}}", 1,
            CKPT_ERR_FORMAT, "high surrogate", CKPT_NO_OFFSET);
    refused("a lone low surrogate", "{\"a\\udc00\":{" E1 "}}", 1, CKPT_ERR_FORMAT,
            "low surrogate", CKPT_NO_OFFSET);
    /* U+1F600 as an escaped pair and as UTF-8: one name */
    refused("one name as a surrogate pair and as UTF-8",
            "{\"\\ud83d\\ude00\":{" E1 "},\"\xf0\x9f\x98\x80\":{" E1 "}}", 1, CKPT_ERR_FORMAT,
            "duplicate key", CKPT_NO_OFFSET);
    ckpt_file *f;
    ckpt_error err;
    buf keep;
    const char *ok = "{\"\\u00e9\\ud83d\\ude00\\\\\\\"\":{" E1 "},\"__metadata__\":{"
                     "\"\xc3\xa9\":\"\\n\\t\\/\"}}";
    assert_int_equal(open_st(ok, strlen(ok), 1, &keep, &f, &err), CKPT_OK);
    assert_non_null(ckpt_file_find_tensor(f, "\xc3\xa9\xf0\x9f\x98\x80\\\""));
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    assert_string_equal(ckpt_value_str(ckpt_value_get(fi.metadata, "\xc3\xa9"), NULL), "\n\t/");
    ckpt_close(f);
    b_free(&keep);

    /* strict UTF-8 over the whole header */
    static const char *const bad_utf8[] = {
        "\xc0\x80",         /* overlong NUL */
        "\xe0\x80\xaf",     /* overlong '/' */
        "\xed\xa0\x80",     /* an encoded surrogate */
        "\xf4\x90\x80\x80", /* past U+10FFFF */
        "\xc3",             /* cut short */
        "\xff",
    };
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
        char hb[160];
        snprintf(hb, sizeof(hb), "{\"a%s\":{" E1 "}}", bad_utf8[i]);
        char what[48];
        snprintf(what, sizeof(what), "invalid UTF-8 #%zu", i);
        refused(what, hb, 1, CKPT_ERR_FORMAT, "UTF-8", 3);
    }
    /* white space is JSON's: \t \n \r and the space, never \v or \f */
    opens("JSON white space", "{\r\n\t\"a\" :\t{" E1 "}\n} \t", 1, 1);
    refused("a form feed between tokens", "{\f\"a\":{" E1 "}}", 1, CKPT_ERR_FORMAT,
            "control character", 1);
    refused("a vertical tab after the header", "{\"a\":{" E1 "}}\v", 1, CKPT_ERR_FORMAT,
            "control character", CKPT_NO_OFFSET);
    refused("a raw control character in a name", "{\"a\x01\":{" E1 "}}", 1, CKPT_ERR_FORMAT,
            "invalid JSON", CKPT_NO_OFFSET);
}

static void test_numbers_and_nesting(void **state)
{
    (void)state;
    const char *h;
    h = "{\"a\":{" E1 ",\"x\":9223372036854775808}}";
    refused("2^63 in an unknown field", h, 1, CKPT_ERR_FORMAT, "too big integer",
            pos(h, "9223", 0));
    refused("-2^63 - 1", "{\"a\":{" E1 ",\"x\":-9223372036854775809}}", 1, CKPT_ERR_FORMAT,
            "too big negative integer", CKPT_NO_OFFSET);
    refused("a shape of 2^64 - 1", "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],"
                                   "\"data_offsets\":[0,1]}}", 1, CKPT_ERR_FORMAT,
            "too big integer", CKPT_NO_OFFSET);
    refused("1e400", "{\"a\":{" E1 ",\"x\":[1e400]}}", 1, CKPT_ERR_FORMAT,
            "real number overflow", CKPT_NO_OFFSET);
    opens("-2^63, 1e-400, -0.0 and 1E2 in unknown fields",
          "{\"a\":{" E1 ",\"x\":[-9223372036854775808,1e-400,-0.0,1E2]}}", 1, 1);
    opens("a shape of -0", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-0],\"data_offsets\":[0,0]},"
                           "\"b\":{" E1 "}}", 1, 2);
    refused("a shape of 1.0", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}",
            1, CKPT_ERR_FORMAT, "shape[0] is not a non-negative integer", 1);
    refused("offsets of true", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                               "\"data_offsets\":[0,true]}}", 1, CKPT_ERR_FORMAT,
            "data_offsets must be", 1);
    /* strides that overflow while the size is 0 */
    refused("strides past int64",
            "{\"a\":{\"dtype\":\"U8\",\"shape\":[0,4294967296,4294967296,4294967296],"
            "\"data_offsets\":[0,0]}}", 0, CKPT_ERR_FORMAT, "strides overflow", 1);

    /* nesting: 2048 containers, then one more */
    for (int extra = 0; extra < 2; extra++) {
        buf b = {0};
        b_str(&b, "{\"a\":{" E1 ",\"x\":");
        b_fill(&b, '[', (size_t)(2046 + extra));
        b_fill(&b, ']', (size_t)(2046 + extra));
        b_str(&b, "}}");
        b_u8(&b, 0);
        if (extra)
            refused("2049 containers deep", (const char *)b.p, 1, CKPT_ERR_FORMAT,
                    "nested deeper than 2048", CKPT_NO_OFFSET);
        else
            opens("2048 containers deep", (const char *)b.p, 1, 1);
        b_free(&b);
    }
}

/* A header is valid JSON first: a broken rule of the format before a JSON
 * error is not what is reported. Then the first broken rule in header
 * order, naming its tensor's offset. */
static void test_order_of_errors(void **state)
{
    (void)state;
    refused("an unknown dtype, then the JSON ends",
            "{\"a\":{\"dtype\":\"X9\",\"shape\":[1],\"data_offsets\":[0,1]},", 1, CKPT_ERR_FORMAT,
            "invalid JSON", CKPT_NO_OFFSET);
    refused("an unknown dtype, then a duplicate key",
            "{\"a\":{\"dtype\":\"X9\",\"shape\":[1],\"data_offsets\":[0,1]},\"b\":{},\"b\":{}}", 1,
            CKPT_ERR_FORMAT, "duplicate key 'b'", CKPT_NO_OFFSET);
    const char *h = "{\"a\":{" E1 "},\"b\":{\"dtype\":\"X9\",\"shape\":[1],"
                    "\"data_offsets\":[1,2]},\"c\":[]}";
    refused("an unknown dtype, then an entry that is no object", h, 2, CKPT_ERR_UNSUPPORTED,
            "tensor 'b' has unknown dtype 'X9'", pos(h, "\"b\"", 0));
    refused("a field missing, then an unknown dtype",
            "{\"a\":{\"dtype\":\"X9\",\"shape\":[1]}}", 1, CKPT_ERR_FORMAT,
            "needs \"dtype\", \"shape\" and \"data_offsets\"", 1);
    refused("__metadata__ not an object", "{\"__metadata__\":[\"k\"],\"a\":{" E1 "}}", 1,
            CKPT_ERR_FORMAT, "__metadata__ is not an object of strings", 1);
    refused("a metadata value that is no string",
            "{\"__metadata__\":{\"k\":{\"n\":1}},\"a\":{" E1 "}}", 1, CKPT_ERR_FORMAT,
            "__metadata__ value of 'k' is not a string", CKPT_NO_OFFSET);
    h = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},\"a\":{" E1 "}}";
    refused("a gap between tensors", h, 3, CKPT_ERR_FORMAT, "tensor 'b' starts at 2",
            pos(h, "\"b\"", 0));
    refused_n("a NUL byte in the text", "{\"a\":{" E1 "}}\0", strlen("{\"a\":{" E1 "}}") + 1, 1,
              CKPT_ERR_FORMAT, "invalid JSON", CKPT_NO_OFFSET);
    /* fields the format does not know are ignored, whatever they hold */
    opens("unknown fields", "{\"a\":{\"x\":{\"dtype\":5,\"shape\":\"s\"}," E1
                            ",\"y\":[[],{},null,true,\"t\",1.5]}}", 1, 1);
    opens("an escaped dtype and __metadata__",
          "{\"__metad\\u0061ta__\":{\"k\":\"v\"},"
          "\"a\":{\"dtype\":\"\\u0055\\u0038\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 1);
}

/* Every entry is a tensor path: the entry past max_tensor_paths is refused
 * while the header is read, naming the limit and the entry's offset. */
static void test_tensor_paths_limit(void **state)
{
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                    "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}";
    buf keep = st_make(h, strlen(h), 3);
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    ckpt_file *f = NULL;
    ckpt_error err;
    o.limits.max_tensor_paths = 3;
    assert_int_equal(ckpt_open_memory(keep.p, keep.len, &o, &f, &err), CKPT_OK);
    assert_int_equal(ckpt_file_tensor_count(f), 3);
    ckpt_close(f);
    f = NULL;
    o.limits.max_tensor_paths = 2;
    assert_int_equal(ckpt_open_memory(keep.p, keep.len, &o, &f, &err), CKPT_ERR_LIMIT);
    assert_null(f);
    assert_non_null(strstr(err.message, "more than 2 tensors (limit max_tensor_paths)"));
    assert_string_equal(err.record, "safetensors header");
    assert_true(err.offset >= pos(h, "\"c\"", 0) && err.offset < strlen(h));
    b_free(&keep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_sibling_objects),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_numbers_and_nesting),
        cmocka_unit_test(test_order_of_errors),
        cmocka_unit_test(test_tensor_paths_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

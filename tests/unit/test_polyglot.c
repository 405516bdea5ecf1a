/*
 * test_polyglot.c - files two readers read differently: tar headers as
 * Python's tarfile takes them (number fields, checksums, V7 headers without
 * "ustar"), tarfile's member walk, tar archives in front of pickles and
 * safetensors files, and safetensors files that are also pickles from byte
 * 0. The reader refuses them, the scanner reports what torch.load runs.
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

#include "support.h"

#define P(s) (const uint8_t *)(s), sizeof(s) - 1

/* posix.system('true') by REDUCE, without PROTO */
#define PAYLOAD "cposix\nsystem\nX\x04\x00\x00\x00true\x85R."

enum { CK_UNSIGNED, CK_SIGNED, CK_BASE256, CK_NONE };

/* A V7 header (no magic): name is the raw name field (n bytes, NULs
 * allowed), the checksum written as asked (CK_NONE: left as 8 spaces for
 * the caller to fill). */
static void header(uint8_t h[512], const void *name, size_t n, uint64_t size, char type, int ck)
{
    memset(h, 0, 512);
    memcpy(h, name, n);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    memcpy(h + 136, "00000000000", 12);
    h[156] = (uint8_t)type;
    memset(h + 148, ' ', 8);
    long us = 256, ss = 256;
    for (int i = 0; i < 512; i++) {
        if (i >= 148 && i < 156)
            continue;
        us += h[i];
        ss += (int8_t)h[i];
    }
    char t[32];
    switch (ck) {
    case CK_UNSIGNED:
        snprintf(t, sizeof(t), "%06lo", us);
        memcpy(h + 148, t, 7);
        break;
    case CK_SIGNED:
        assert_true(ss != us);
        snprintf(t, sizeof(t), "%07lo", ss);
        memcpy(h + 148, t, 8);
        break;
    case CK_BASE256:
        h[148] = 0x80;
        for (int i = 0; i < 7; i++)
            h[149 + i] = (uint8_t)((unsigned long)us >> (8 * (6 - i)));
        break;
    default:
        break;
    }
}

/* The unsigned sum tarfile checks (the checksum field as spaces). */
static long sum_unsigned(const uint8_t h[512])
{
    long us = 256;
    for (int i = 0; i < 512; i++) {
        if (i < 148 || i >= 156)
            us += h[i];
    }
    return us;
}

/* A header with the checksum field text written as given (8 bytes, padded
 * with NULs): what tarfile makes of it. */
static ckpt__tar_block with_checksum_text(uint8_t h[512], const char *fmt, ...) CKPT_PRINTF(2, 3);

static ckpt__tar_block with_checksum_text(uint8_t h[512], const char *fmt, ...)
{
    char t[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t, sizeof(t), fmt, ap);
    va_end(ap);
    memset(h + 148, 0, 8);
    memcpy(h + 148, t, strlen(t) < 8 ? strlen(t) : 8);
    return ckpt__tar_header(h);
}

static void test_checksum_forms(void **state)
{
    (void)state;
    uint8_t h[512];
    header(h, "storages", 8, 0, '0', CK_NONE);
    long us = sum_unsigned(h);
    /* forms int(text, 8) takes after strip() */
    assert_int_equal(with_checksum_text(h, "%06lo", us), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(with_checksum_text(h, " %lo ", us), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(with_checksum_text(h, "\t%lo\x1c", us), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(with_checksum_text(h, "+%lo", us), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(with_checksum_text(h, "0o%lo", us), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(with_checksum_text(h, "0O_%lo", us), CKPT__TAR_BLOCK_HEADER);
    char u[32];
    snprintf(u, sizeof(u), "%lo", us);
    char w[48];
    snprintf(w, sizeof(w), "%c_%s", u[0], u + 1);
    memset(h + 148, 0, 8);
    memcpy(h + 148, w, strlen(w));
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
    /* forms it refuses */
    snprintf(w, sizeof(w), "%c__%s", u[0], u + 1);
    memset(h + 148, 0, 8);
    memcpy(h + 148, w, 8);
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "%lo_", us), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "_%lo", us), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "%lo 7", us), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "0o"), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "%lo8", us), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "%lo", us + 1), CKPT__TAR_BLOCK_INVALID);
    assert_int_equal(with_checksum_text(h, "%ld", us), CKPT__TAR_BLOCK_INVALID); /* decimal */
    /* bytes before the NUL must be ASCII */
    with_checksum_text(h, "%06lo", us);
    h[155] = 0xc3;
    h[154] = 0;
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER); /* after the NUL: ignored */
    h[154] = 0xc3;
    h[155] = 0;
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_INVALID);
    /* empty or all spaces is 0, which no sum is */
    memset(h + 148, ' ', 8);
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_INVALID);
    /* base-256 */
    header(h, "storages", 8, 0, '0', CK_BASE256);
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
    h[155] ^= 1;
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_INVALID);
}

static void test_signed_and_negative_sums(void **state)
{
    (void)state;
    uint8_t h[512];
    /* high bytes make the signed sum differ: tarfile takes either */
    header(h, "\x80\x02X\xff\xff", 5, 0, '0', CK_SIGNED);
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
    header(h, "\x80\x02X\xff\xff", 5, 0, '0', CK_UNSIGNED);
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
    /* a block of 0x80 bytes: its signed sum is below zero, which a
     * negative base-256 field (0xff first) or "-octal" can state */
    memset(h, 0x80, 512);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    memcpy(h + 124, "00000000000", 12);
    memcpy(h + 136, "00000000000", 12);
    memcpy(h + 329, "0000000", 8);
    memcpy(h + 337, "0000000", 8);
    h[156] = '0';
    long ss = 256;
    for (int i = 0; i < 512; i++) {
        if (i < 148 || i >= 156)
            ss += (int8_t)h[i];
    }
    assert_true(ss < 0);
    char t[32];
    snprintf(t, sizeof(t), "-%lo", -ss);
    memset(h + 148, 0, 8);
    memcpy(h + 148, t, strlen(t));
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
    uint64_t v = ((uint64_t)1 << 56) - (uint64_t)(-ss);
    h[148] = 0xff;
    for (int i = 0; i < 7; i++)
        h[149 + i] = (uint8_t)(v >> (8 * (6 - i)));
    assert_int_equal(ckpt__tar_header(h), CKPT__TAR_BLOCK_HEADER);
}

static void test_other_fields_must_parse(void **state)
{
    (void)state;
    uint8_t h[512];
    static const struct {
        int at, len;
    } f[] = {{100, 8}, {108, 8}, {116, 8}, {124, 12}, {136, 12}, {329, 8}, {337, 8}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        header(h, "x", 1, 0, '0', CK_NONE);
        memcpy(h + f[i].at, "9", 1); /* not an octal digit */
        long us = sum_unsigned(h);
        assert_int_equal(with_checksum_text(h, "%06lo", us), CKPT__TAR_BLOCK_INVALID);
        /* base-256 anything is fine */
        header(h, "x", 1, 0, '0', CK_NONE);
        h[f[i].at] = 0x80;
        h[f[i].at + 1] = 0x9c;
        us = sum_unsigned(h);
        assert_int_equal(with_checksum_text(h, "%06lo", us), CKPT__TAR_BLOCK_HEADER);
    }
    /* an old GNU sparse header's map fields must parse too */
    header(h, "s", 1, 0, 'S', CK_NONE);
    memcpy(h + 398, "zz", 2);
    assert_int_equal(with_checksum_text(h, "%06lo", sum_unsigned(h)), CKPT__TAR_BLOCK_INVALID);
    /* "ustar" is not needed, and a zero block is the end */
    header(h, "x", 1, 0, '0', CK_UNSIGNED);
    assert_int_equal(ckpt__tar_detect(h, 512), CKPT__TAR_BLOCK_HEADER);
    assert_int_equal(ckpt__tar_detect(h, 511), CKPT__TAR_BLOCK_INVALID);
    memset(h, 0, 512);
    assert_int_equal(ckpt__tar_detect(h, 512), CKPT__TAR_BLOCK_ZERO);
}

/* ---- the member walk -------------------------------------------------- */

typedef struct listed {
    char names[16][300];
    uint64_t data[16], size[16];
    uint8_t type[16];
    int n;
} listed;

static ckpt_status list_member(void *user, const ckpt__tar_member *m)
{
    listed *l = user;
    assert_true(l->n < 16);
    assert_true(m->name_len < 300);
    memcpy(l->names[l->n], m->name, m->name_len);
    l->names[l->n][m->name_len] = '\0';
    l->data[l->n] = m->data_offset;
    l->size[l->n] = m->size;
    l->type[l->n] = m->type;
    l->n++;
    return CKPT_OK;
}

static void member(buf *b, const char *name, const void *data, size_t n, char type)
{
    uint8_t h[512];
    header(h, name, strlen(name), n, type, CK_UNSIGNED);
    b_put(b, h, 512);
    b_put(b, data, n);
    b_fill(b, 0, (512 - n % 512) % 512);
}

static ckpt__tar_end walk(const buf *b, listed *l)
{
    memset(l, 0, sizeof(*l));
    ckpt__tar_end end;
    assert_int_equal(ckpt__tar_walk(b->p, b->len, 100, list_member, l, &end), CKPT_OK);
    return end;
}

static void test_walk_names_and_layout(void **state)
{
    (void)state;
    buf b = {0};
    listed l;
    /* the prefix field makes "prefix/name"; a NUL type with '/' is a directory */
    uint8_t h[512];
    header(h, "storages", 8, 3, '0', CK_NONE);
    memcpy(h + 345, "pre", 3);
    with_checksum_text(h, "%06lo", sum_unsigned(h));
    b_put(&b, h, 512);
    b_put(&b, "abc", 3);
    b_fill(&b, 0, 509);
    member(&b, "d//", "", 0, '\0');
    /* a symbolic link has no data, whatever its size says */
    header(h, "storages", 8, 700, '2', CK_UNSIGNED);
    b_put(&b, h, 512);
    /* a GNU long name, then a pax path and size */
    member(&b, "././@LongLink", "pickle\0junk", 11, 'L');
    member(&b, "short", "xy", 2, '0');
    member(&b, "pax", "16 path=tensors\n10 size=1\n", 26, 'x');
    member(&b, "ignored", "zz", 2, '0');
    /* an unknown type is a file */
    member(&b, "odd", "q", 1, 'Z');
    b_fill(&b, 0, 1024);
    ckpt__tar_end end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_END);
    assert_int_equal(l.n, 6);
    assert_string_equal(l.names[0], "pre/storages");
    assert_int_equal(l.data[0], 512);
    assert_int_equal(l.size[0], 3);
    assert_string_equal(l.names[1], "d");
    assert_int_equal(l.type[1], '5');
    assert_string_equal(l.names[2], "storages");
    assert_int_equal(l.type[2], '2');
    assert_string_equal(l.names[3], "pickle");
    assert_int_equal(l.size[3], 2);
    assert_string_equal(l.names[4], "tensors");
    assert_int_equal(l.size[4], 1); /* the pax size */
    assert_string_equal(l.names[5], "odd");
    b_free(&b);
}

static void test_walk_ends_as_tarfile_does(void **state)
{
    (void)state;
    buf b = {0};
    listed l;
    /* a later invalid header ends the archive quietly */
    member(&b, "a", "1", 1, '0');
    b_fill(&b, 'x', 512);
    member(&b, "b", "2", 1, '0');
    ckpt__tar_end end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_END);
    assert_int_equal(l.n, 1);
    b_free(&b);
    /* data running past the end: ReadError, torch falls back */
    member(&b, "a", "1", 1, '0');
    b.len -= 1;
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_FALLBACK);
    b_free(&b);
    /* a long name followed by no valid header: ReadError */
    member(&b, "././@LongLink", "pickle", 6, 'L');
    b_fill(&b, 0, 512);
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_FALLBACK);
    b_free(&b);
    /* a broken pax record in the first header: ReadError; in a later one:
     * the end */
    member(&b, "pax", "3 x\n", 4, 'x');
    member(&b, "a", "1", 1, '0');
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_FALLBACK);
    b_free(&b);
    member(&b, "a", "1", 1, '0');
    member(&b, "pax", "3 x\n", 4, 'x');
    member(&b, "b", "1", 1, '0');
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_END);
    assert_int_equal(l.n, 1);
    b_free(&b);
    /* a global pax size: the data is that long, the next header where the
     * header's own size puts it */
    member(&b, "g", "9 size=3\n", 9, 'g');
    member(&b, "a", "1", 1, '0');
    member(&b, "b", "2", 1, '0');
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_END);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.size[0], 3);
    assert_int_equal(l.size[1], 3);
    assert_int_equal(l.data[1], l.data[0] + 1024);
    b_free(&b);
    /* what ckpt does not follow stops the walk, said as such */
    member(&b, "s", "", 0, 'S');
    end = walk(&b, &l);
    assert_int_equal(end.kind, CKPT__TAR_UNFOLLOWED);
    assert_non_null(strstr(end.why, "sparse"));
    b_free(&b);
    /* the member limit */
    for (int i = 0; i < 5; i++)
        member(&b, "a", "1", 1, '0');
    ckpt__tar_end e2;
    memset(&l, 0, sizeof(l));
    assert_int_equal(ckpt__tar_walk(b.p, b.len, 3, list_member, &l, &e2), CKPT_OK);
    assert_int_equal(e2.kind, CKPT__TAR_LIMIT);
    assert_int_equal(l.n, 3);
    b_free(&b);
}

/* ---- the reader --------------------------------------------------------- */

static ckpt_status open_mem(const buf *b, ckpt_error *err)
{
    ckpt_file *f = NULL;
    ckpt_status st = ckpt_open_memory(b->p, b->len, NULL, &f, err);
    ckpt_close(f);
    return st;
}

/* A V7 header whose name field starts a pickle (PROTO 3, BINBYTES over the
 * rest of the header and the members), the members, then `after`. */
static void tar_before_pickle(buf *b, int ck, const uint8_t *pickle_member, size_t pickle_len,
                              const void *after, size_t after_len)
{
    buf m = {0};
    member(&m, "pickle", pickle_member, pickle_len, '0');
    uint8_t name[12] = "\x80\x03" "B";
    uint32_t n = (uint32_t)(512 + m.len - 7);
    for (int i = 0; i < 4; i++)
        name[3 + i] = (uint8_t)(n >> (8 * i));
    memcpy(name + 7, "hdr", 3);
    uint8_t h[512];
    header(h, name, 10, 0, '0', ck);
    b_put(b, h, 512);
    b_put(b, m.p, m.len);
    b_put(b, after, after_len);
    b_free(&m);
}

static void test_reader_refuses_tar(void **state)
{
    (void)state;
    static const int cks[] = {CK_UNSIGNED, CK_SIGNED, CK_BASE256};
    for (size_t i = 0; i < 3; i++) {
        buf b = {0};
        tar_before_pickle(&b, cks[i], P("\x80\x02" PAYLOAD), P("0}."));
        ckpt_error err;
        /* read as the tar torch reads (the pickle in its header's name is
         * never run): an archive of one empty member, no torch.save file */
        assert_int_equal(open_mem(&b, &err), CKPT_ERR_FORMAT);
        assert_non_null(strstr(err.message, "a pre-0.4 tar archive without a 'storages' member"));
        b_free(&b);
    }
    buf z = {0};
    b_fill(&z, 0, 1024);
    ckpt_error err;
    assert_int_equal(open_mem(&z, &err), CKPT_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "empty pre-0.4 tar archive"));
    b_free(&z);
}

/*
 * A valid safetensors file that is also a pickle from byte 0: the header
 * length's low byte is 'X' (BINUNICODE) and its next four bytes (n >> 8)
 * the string's length, which ends inside the JSON header, in a tensor name
 * made of SHORT_BINSTRING skips ('U' and a printable length); the last
 * skip crosses the end of the header, and the pickle goes on with `tail`
 * in the one U8 tensor's data. Returns the file offset of tail.
 */
static uint64_t safetensors_pickle(buf *b, const uint8_t *tail, size_t tail_len)
{
    const uint64_t L = 16, n = (L << 8) | 'X';
    const size_t resume = (size_t)(5 + L - 8); /* header index the pickle resumes at */
    for (size_t into = 3; into < 40; into++) {
        size_t data_len = into + tail_len + 16;
        char rest[160];
        int rl = snprintf(rest, sizeof(rest),
                          "\":{\"dtype\":\"U8\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}",
                          data_len, data_len);
        const size_t spaces = 16, key_len = (size_t)n - 2 - (size_t)rl - spaces;
        char *key = malloc(key_len);
        assert_non_null(key);
        memset(key, 'a', key_len);
        size_t pos = resume - 2, end = (size_t)n + into;
        size_t left = end - (2 + pos + 2);
        while (left > 126) {
            size_t step = left - 2 - 60 < 100 ? left - 2 - 60 : 100;
            key[pos] = 'U';
            key[pos + 1] = (char)step;
            pos += 2 + step;
            left = end - (2 + pos + 2);
        }
        if (left == 34 || left == 92 || pos + 2 > key_len) {
            free(key);
            continue;
        }
        key[pos] = 'U';
        key[pos + 1] = (char)left;
        b_le(b, n, 8);
        b_str(b, "{\"");
        b_put(b, key, key_len);
        b_put(b, rest, (size_t)rl);
        b_fill(b, ' ', spaces);
        assert_int_equal(b->len, 8 + n);
        b_fill(b, 'a', into);
        b_put(b, tail, tail_len);
        b_fill(b, 0, 16);
        free(key);
        return 8 + n + into;
    }
    fail_msg("no layout");
    return 0;
}

static void test_reader_refuses_ambiguous_safetensors(void **state)
{
    (void)state;
    ckpt_error err;
    /* the pickle names posix.system: refused, naming it and its offset */
    buf b = {0};
    uint64_t at = safetensors_pickle(&b, P(PAYLOAD));
    ckpt_file *f = NULL;
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    assert_int_equal(ckpt_open_memory(b.p, b.len, &o, &f, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "ambiguous file: ckpt reads it as safetensors"));
    assert_non_null(strstr(err.message, "'posix.system'"));
    assert_int_equal(err.offset, at);
    b_free(&b);
    /* it completes to the legacy magic number: torch reads a legacy file */
    safetensors_pickle(&b, P("\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."));
    assert_int_equal(open_mem(&b, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "legacy magic number"));
    b_free(&b);
    /* it completes to None: torch.load fails on it ("Invalid magic number")
     * without running anything; ckpt reads the safetensors file */
    safetensors_pickle(&b, P("N."));
    assert_int_equal(open_mem(&b, &err), CKPT_OK);
    b_free(&b);
    /* benign files whose first bytes complete a pickle with no global
     * ("]." gives [], "N." None) */
    static const uint64_t lens[] = {0x2e5d, 0x2e4e};
    for (size_t i = 0; i < 2; i++) {
        buf d = {0};
        const char *j = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
        b_le(&d, lens[i], 8);
        b_str(&d, j);
        b_fill(&d, ' ', (size_t)(lens[i] - strlen(j)));
        b_u8(&d, 7);
        assert_int_equal(open_mem(&d, &err), CKPT_OK);
        b_free(&d);
    }
}

static void test_pickle_at_zero(void **state)
{
    (void)state;
    ckpt_limits lim;
    ckpt_limits_default(&lim);
    ckpt__byte0 z;
    ckpt__pickle_at_zero(P("\x80\x02" PAYLOAD), &lim, &z);
    assert_true(z.matters);
    assert_false(z.magic);
    assert_string_equal(z.global, "posix.system");
    assert_int_equal(z.offset, 2);
    /* the legacy magic number, however written */
    ckpt__pickle_at_zero(P("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."), &lim, &z);
    assert_true(z.matters && z.magic);
    assert_int_equal(z.offset, 14);
    ckpt__pickle_at_zero(P("\x8b\x0b\x00\x00\x00\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x00."),
                         &lim, &z);
    assert_true(z.matters && z.magic);
    /* text that reads as GLOBAL by chance names no Python name */
    ckpt__pickle_at_zero(P("c\x03\x00 {\nx y\n."), &lim, &z);
    assert_false(z.matters);
    ckpt__pickle_at_zero(P("]."), &lim, &z);
    assert_false(z.matters);
    ckpt__pickle_at_zero(P("\x93NUMPY\x01\x00"), &lim, &z);
    assert_false(z.matters);
}

/* ---- the scanner ---------------------------------------------------------- */

static const ckpt_scan_finding *find(const ckpt_scan *sc, ckpt_scan_kind kind, const char *global,
                                     const char *text)
{
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        if (f->kind == kind && (!global || (f->global && strcmp(f->global, global) == 0)) &&
            (!text || strstr(f->message, text) || strstr(f->record, text)))
            return f;
    }
    return NULL;
}

static void test_scan_tar_before_pickle(void **state)
{
    (void)state;
    buf b = {0};
    tar_before_pickle(&b, CK_SIGNED, P("\x80\x02" PAYLOAD), P("0}."));
    ckpt_scan *sc = scan_buf(&b);
    assert_string_equal(ckpt_scan_format(sc), "tar");
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "pre-0.4 tar archive"));
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(g);
    assert_string_equal(g->record, "pickle");
    assert_int_equal(g->file_offset, 1024 + 2);
    ckpt_scan_free(sc);
    b_free(&b);
}

static void storage_member(buf *m, const uint8_t *views, size_t views_len)
{
    b_str(m, "\x80\x02K\x01.");
    b_put(m, P("\x80\x02(X\x02\x00\x00\x00s0X\x03\x00\x00\x00" "cpuctorch\nDoubleStorage\nt."));
    b_le(m, 2, 8);
    /* 16 raw bytes holding what would be a payload if read as a pickle */
    b_put(m, P("cposix\nsystem\n.."));
    b_put(m, views, views_len);
}

static void test_scan_storages_as_torch_reads_them(void **state)
{
    (void)state;
    buf m = {0}, b = {0};
    storage_member(&m, P("\x80\x02" PAYLOAD));
    member(&b, "storages", m.p, m.len, '0');
    member(&b, "tensors", "\x80\x02K\x00.", 5, '0');
    member(&b, "pickle", "\x80\x02}.", 4, '0');
    b_fill(&b, 0, 1024);
    ckpt_scan *sc = scan_buf(&b);
    /* the raw bytes are skipped (element size 8 from DoubleStorage), the
     * views pickle is read */
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(g);
    assert_string_equal(g->record, "storages views");
    assert_int_equal(g->file_offset, 512 + m.len - (sizeof(PAYLOAD) - 1));
    assert_null(find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, NULL));
    size_t globals = 0;
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++)
        globals += ckpt_scan_finding_at(sc, i)->kind == CKPT_SCAN_KIND_GLOBAL;
    assert_int_equal(globals, 1);
    ckpt_scan_free(sc);
    b_free(&b);
    b_free(&m);
    /* a count too large for the member: torch fails where it ends */
    member(&b, "storages", "\x80\x02K\x05.", 5, '0');
    sc = scan_buf(&b);
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "member ends before this pickle"));
    ckpt_scan_free(sc);
    b_free(&b);
}

static void test_scan_tar_findings(void **state)
{
    (void)state;
    buf b = {0};
    /* duplicates: each copy scanned, the later one reported */
    member(&b, "pickle", "\x80\x02}.", 4, '0');
    member(&b, "pickle", "\x80\x02" PAYLOAD, sizeof(PAYLOAD) + 1, '0');
    /* a symbolic link named storages: torch reads a file outside */
    uint8_t h[512];
    header(h, "storages", 8, 0, '2', CK_NONE);
    memcpy(h + 157, "/etc/passwd", 11);
    with_checksum_text(h, "%06lo", sum_unsigned(h));
    b_put(&b, h, 512);
    ckpt_scan *sc = scan_buf(&b);
    assert_non_null(find(sc, CKPT_SCAN_KIND_DUPLICATE_NAME, NULL, "pickle"));
    assert_non_null(find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL));
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "a symbolic link"));
    ckpt_scan_free(sc);
    b_free(&b);
    /* tarfile gives up (data past the end): torch reads the pickle from
     * byte 0, which swallows the header with BINBYTES and goes on */
    uint8_t name[8] = "\x80\x03" "B";
    uint32_t n = 512 - 7;
    for (int i = 0; i < 4; i++)
        name[3 + i] = (uint8_t)(n >> (8 * i));
    header(h, name, 7, 10000, '0', CK_UNSIGNED);
    b_put(&b, h, 512);
    b_put(&b, P("0" PAYLOAD));
    sc = scan_buf(&b);
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "tarfile fails here"));
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "pickle from byte 0"));
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(g);
    assert_int_equal(g->file_offset, 513);
    ckpt_scan_free(sc);
    b_free(&b);
}

static void test_scan_safetensors_pickle(void **state)
{
    (void)state;
    buf b = {0};
    uint64_t at = safetensors_pickle(&b, P(PAYLOAD));
    ckpt_scan *sc = scan_buf(&b);
    assert_string_equal(ckpt_scan_format(sc), "safetensors");
    const ckpt_scan_finding *f = find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "pickle from byte 0");
    assert_non_null(f);
    assert_int_equal(f->file_offset, at);
    const ckpt_scan_finding *g = find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(g);
    assert_int_equal(g->file_offset, at);
    assert_true(g->use & CKPT_SCAN_USE_REDUCE);
    ckpt_scan_free(sc);
    b_free(&b);
    /* the legacy magic number: reported, and read on as a legacy file */
    safetensors_pickle(&b, P("\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."));
    sc = scan_buf(&b);
    assert_non_null(find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "legacy torch file from byte 0"));
    ckpt_scan_free(sc);
    b_free(&b);
    /* None: nothing runs, the file is a clean safetensors file */
    safetensors_pickle(&b, P("N."));
    sc = scan_buf(&b);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    ckpt_scan_free(sc);
    b_free(&b);
    /* the same reading for other formats: a numpy file's magic is no
     * pickle; bytes that start with any opcode (BINBYTES here) are one, as
     * pickle.load reads them */
    buf c = {0};
    b_put(&c, P("B\x03\x00\x00\x00xyz0" PAYLOAD));
    sc = scan_buf(&c);
    assert_string_equal(ckpt_scan_format(sc), "pickle");
    assert_non_null(find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL));
    ckpt_scan_free(sc);
    b_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checksum_forms),
        cmocka_unit_test(test_signed_and_negative_sums),
        cmocka_unit_test(test_other_fields_must_parse),
        cmocka_unit_test(test_walk_names_and_layout),
        cmocka_unit_test(test_walk_ends_as_tarfile_does),
        cmocka_unit_test(test_reader_refuses_tar),
        cmocka_unit_test(test_reader_refuses_ambiguous_safetensors),
        cmocka_unit_test(test_pickle_at_zero),
        cmocka_unit_test(test_scan_tar_before_pickle),
        cmocka_unit_test(test_scan_storages_as_torch_reads_them),
        cmocka_unit_test(test_scan_tar_findings),
        cmocka_unit_test(test_scan_safetensors_pickle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

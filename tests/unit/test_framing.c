/*
 * test_framing.c - pickles whose FRAMEs readers disagree on, in every place
 * a file holds pickles: each of the legacy format's five (read one after
 * another from one file: torch's next pickle starts where its unpickler
 * left the file, at the end of a frame that runs past STOP), a plain pickle
 * file, a torch zip's data.pkl. The reader refuses them with the record and
 * the offset; the scan reports them, and reads on where torch does, so that
 * a payload behind a long frame is reported by name.
 *
 * Every hostile file has a well-formed twin built by the same code (frames
 * that end where they should) that opens and scans safe.
 *
 * Also the legacy sys_info's byte order, which torch never reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pickles --------------------------------------------------------------- */

/* posix.system('true') called by REDUCE: the payload, only ever scanned */
static const char PAYLOAD[] = "\x80\x02" "cposix\nsystem\nX\x04\x00\x00\x00true\x85R.";
#define PAYLOAD_LEN (sizeof(PAYLOAD) - 1)
#define PAYLOAD_GLOBAL_AT 2 /* the GLOBAL opcode inside it */

/* The legacy format's pickles without their PROTO (each starts with
 * "\x80\x02", then an optional FRAME, then this body). */
static buf body_magic(void)
{
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    buf b = {0};
    b_u8(&b, 0x8a);
    b_u8(&b, 10);
    b_put(&b, magic, 10);
    b_u8(&b, '.');
    return b;
}

static buf body_protocol(void)
{
    buf b = {0};
    b_u8(&b, 'M');
    b_le(&b, 1001, 2);
    b_u8(&b, '.');
    return b;
}

static buf body_sys_info_says(bool little)
{
    buf b = {0};
    b_u8(&b, '}');
    pk_unicode(&b, "little_endian");
    b_u8(&b, little ? 0x88 : 0x89);
    b_u8(&b, 's');
    b_u8(&b, '.');
    return b;
}

static buf body_sys_info(void) { return body_sys_info_says(true); }

/* {'t': a tensor of n elements over storage "0" of that class} */
static buf body_object_of(const char *storage_class, int64_t n)
{
    buf b = {0};
    b_u8(&b, '}');
    pk_unicode(&b, "t");
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    b_str(&b, "((");
    pk_unicode(&b, "storage");
    pk_global(&b, "torch", storage_class);
    pk_unicode(&b, "0");
    pk_unicode(&b, "cpu");
    pk_int(&b, n);
    b_u8(&b, 'N');
    b_u8(&b, 't');
    b_u8(&b, 'Q');
    pk_int(&b, 0);
    b_u8(&b, '(');
    pk_int(&b, n);
    b_u8(&b, 't');
    b_u8(&b, '(');
    pk_int(&b, 1);
    b_u8(&b, 't');
    b_u8(&b, 0x89);
    pk_global(&b, "collections", "OrderedDict");
    b_str(&b, ")Rt");
    b_u8(&b, 'R');
    b_u8(&b, 's');
    b_u8(&b, '.');
    return b;
}

static buf body_object(int64_t n) { return body_object_of("ByteStorage", n); }

static buf body_keys(void)
{
    buf b = {0};
    b_u8(&b, ']');
    pk_unicode(&b, "0");
    b_u8(&b, 'a');
    b_u8(&b, '.');
    return b;
}

static const char *const LEGACY_RECORD[5] = {"pickle", "legacy protocol version",
                                             "legacy sys_info", "legacy object pickle",
                                             "legacy storage keys"};

/* Bytes hidden inside the frame after the decoy's last pickle. */
#define HIDE 200

typedef struct legacy_built {
    buf file;
    uint64_t stop;        /* offset of the framed pickle's STOP in the file */
    uint64_t stop_in;     /* ... inside that pickle */
    uint64_t frame_end;   /* where the frame ends: torch's next pickle */
} legacy_built;

/*
 * A legacy file whose pickle `framed` (0 magic .. 4 keys) sits in a FRAME.
 * What ckpt reads after STOP is a complete benign legacy file (the decoy):
 * one uint8 tensor whose storage bytes run to the end of the file. With
 * past_stop the frame runs on from STOP over the rest of the decoy and HIDE
 * bytes of the storage, and PAYLOAD follows it: torch reads that as its
 * next pickle. Without it the frame ends at STOP (the twin: the payload is
 * only storage bytes).
 */
static legacy_built legacy_framed(int framed, bool past_stop)
{
    int64_t n = HIDE + (int64_t)PAYLOAD_LEN;
    buf bodies[5] = {body_magic(), body_protocol(), body_sys_info(), body_object(n), body_keys()};
    /* the bytes after the framed pickle's STOP up to the frame's end */
    buf rest = {0};
    for (int i = framed + 1; i < 5; i++) {
        b_str(&rest, "\x80\x02");
        b_put(&rest, bodies[i].p, bodies[i].len);
    }
    b_le(&rest, (uint64_t)n, 8);
    b_fill(&rest, 0, HIDE);

    legacy_built L;
    memset(&L, 0, sizeof(L));
    buf *f = &L.file;
    for (int i = 0; i < 5; i++) {
        b_str(f, "\x80\x02");
        if (i == framed) {
            uint64_t pickle_start = f->len - 2;
            pk_frame(f, bodies[i].len + (past_stop ? rest.len : 0));
            b_put(f, bodies[i].p, bodies[i].len);
            L.stop = f->len - 1;
            L.stop_in = L.stop - pickle_start;
            b_put(f, rest.p, rest.len);
            L.frame_end = past_stop ? f->len : L.stop + 1;
            break;
        }
        b_put(f, bodies[i].p, bodies[i].len);
    }
    b_put(f, PAYLOAD, PAYLOAD_LEN);
    for (int i = 0; i < 5; i++)
        b_free(&bodies[i]);
    b_free(&rest);
    return L;
}

/* ---- running ---------------------------------------------------------------- */

static ckpt_status open_status(const buf *b, ckpt_error *err)
{
    ckpt_file *f = NULL;
    ckpt_status st = ckpt_open_memory(b->p, b->len, NULL, &f, err);
    if (st == CKPT_OK) {
        assert_non_null(f);
        ckpt_close(f);
    } else {
        assert_null(f);
    }
    return st;
}

static void dump(const ckpt_scan *sc)
{
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        print_message("    %s in %s at %llu (file %llu): %s\n", ckpt_scan_kind_name(f->kind),
                      f->record, (unsigned long long)f->offset,
                      (unsigned long long)f->file_offset, f->message);
    }
}

/* ---- legacy files ------------------------------------------------------------- */

/* A well-framed twin: nothing is wrong with it but the FRAME opcode itself,
 * which torch's weights-only reader lacks (a warning, never unsafe). */
static void assert_only_frame_warning(ckpt_scan *sc)
{
    if (ckpt_scan_get_verdict(sc) != CKPT_SCAN_VERDICT_WARNING)
        dump(sc);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_WARNING);
    assert_true(ckpt_scan_finding_count(sc) >= 1);
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        assert_int_equal(f->kind, CKPT_SCAN_KIND_OPCODE);
        assert_non_null(strstr(f->message, "opcode FRAME (0x95)"));
    }
}

static void test_legacy_twins_are_clean(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        legacy_built L = legacy_framed(i, false);
        ckpt_error err;
        ckpt_status st = open_status(&L.file, &err);
        if (st != CKPT_OK)
            print_error("pickle %d framed: %s\n", i, err.message);
        assert_int_equal(st, CKPT_OK);
        ckpt_scan *sc = scan_buf(&L.file);
        assert_only_frame_warning(sc);
        assert_string_equal(ckpt_scan_format(sc), "torch-legacy");
        ckpt_scan_free(sc);
        b_free(&L.file);
    }
}

static void test_legacy_frame_past_stop(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        legacy_built L = legacy_framed(i, true);
        print_message("  frame past STOP in the %s\n", LEGACY_RECORD[i]);
        /* the reader: a format error at STOP, in that pickle */
        ckpt_error err;
        assert_int_equal(open_status(&L.file, &err), CKPT_ERR_FORMAT);
        assert_string_equal(err.record, LEGACY_RECORD[i]);
        assert_int_equal(err.offset, L.stop_in);
        assert_int_equal(err.file_offset, L.stop);
        assert_non_null(strstr(err.message, "STOP: the frame runs"));
        assert_non_null(strstr(err.message, "past STOP"));

        /* the scan: the frame, and what torch reads after it */
        ckpt_scan *sc = scan_buf(&L.file);
        assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
        const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "past STOP");
        if (!f)
            dump(sc);
        assert_non_null(f);
        assert_string_equal(f->record, LEGACY_RECORD[i]);
        assert_int_equal(f->offset, L.stop_in);
        assert_int_equal(f->file_offset, L.stop);
        char to[64];
        snprintf(to, sizeof(to), "(to byte %llu)",
                 (unsigned long long)(L.frame_end - (L.stop - L.stop_in)));
        assert_non_null(strstr(f->message, to));
        if (i < 4) {
            /* torch unpickles the payload as its next pickle */
            const ckpt_scan_finding *g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
            if (!g)
                dump(sc);
            assert_non_null(g);
            assert_string_equal(g->record, LEGACY_RECORD[i + 1]);
            assert_int_equal(g->offset, PAYLOAD_GLOBAL_AT);
            assert_int_equal(g->file_offset, L.frame_end + PAYLOAD_GLOBAL_AT);
            assert_true(g->runs_code);
            assert_true(g->use & CKPT_SCAN_USE_REDUCE);
        }
        if (i < 4) {
            /* the decoy's pickles between STOP and the frame's end */
            const ckpt_scan_finding *x =
                scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, "between STOP");
            assert_non_null(x);
            assert_int_equal(x->file_offset, L.stop + 1);
        }
        ckpt_scan_free(sc);
        b_free(&L.file);
    }
}

/* A payload between STOP and the frame's end: what a reader that goes on
 * after STOP runs. The scan reports it too. */
static void test_legacy_payload_before_frame_end(void **state)
{
    (void)state;
    buf f = {0};
    buf magic = body_magic();
    b_str(&f, "\x80\x02");
    pk_frame(&f, magic.len + PAYLOAD_LEN);
    b_put(&f, magic.p, magic.len);
    uint64_t hidden = f.len;
    b_put(&f, PAYLOAD, PAYLOAD_LEN);
    /* torch goes on here: a benign rest of the legacy file */
    legacy_built L = legacy_framed(0, false);
    b_put(&f, L.file.p + magic.len + 2 + 9, L.file.len - magic.len - 2 - 9);
    ckpt_error err;
    assert_int_equal(open_status(&f, &err), CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "past STOP"));
    ckpt_scan *sc = scan_buf(&f);
    const ckpt_scan_finding *g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    if (!g)
        dump(sc);
    assert_non_null(g);
    assert_int_equal(g->file_offset, hidden + PAYLOAD_GLOBAL_AT);
    assert_non_null(strstr(g->record, "after STOP, inside the frame"));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "past STOP"));
    ckpt_scan_free(sc);
    b_free(&f);
    b_free(&magic);
    b_free(&L.file);
}

/* The other rules in the legacy object pickle: a fixed-size argument, a
 * text line, a nested FRAME, a frame past the end of the file. */
static void test_legacy_frame_breaks(void **state)
{
    (void)state;
    legacy_built twin = legacy_framed(3, false);
    /* offsets of the object pickle in the twin (framed: PROTO, FRAME, body) */
    buf obj = body_object(HIDE + (int64_t)PAYLOAD_LEN);
    uint64_t obj_at = twin.stop + 1 - obj.len - 11;
    static const struct {
        const char *what;
        int kind;               /* 0 cut the frame in a BININT1 arg, 1 in a text line,
                                   2 nested FRAME, 3 frame past the end */
        const char *message;
    } cases[] = {
        {"argument across the frame's end", 0,
         "BINUNICODE: the argument of 4 bytes runs past the end of the frame"},
        {"text line across the frame's end", 1, "no newline in the"},
        {"FRAME inside a frame", 2, "a new frame begins"},
        {"frame past the end of the file", 3, "runs past the end of the data"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        print_message("  %s\n", cases[c].what);
        buf f = {0};
        b_put(&f, twin.file.p, twin.file.len);
        uint64_t at = obj_at + 2; /* the FRAME opcode */
        uint64_t op = 0;          /* the opcode that breaks */
        const uint8_t *body = f.p + at + 9;
        if (cases[c].kind == 0) {
            /* end the frame inside the length of the first BINUNICODE ('t') */
            assert_int_equal(body[1], 'X');
            op = at + 9 + 1;
            uint64_t len = 1 + 1 + 2;
            for (unsigned i = 0; i < 8; i++)
                f.p[at + 1 + i] = (uint8_t)(len >> (8 * i));
        } else if (cases[c].kind == 1) {
            /* end it in the middle of "torch._utils\n" */
            const uint8_t *g = memchr(body, 'c', obj.len);
            assert_non_null(g);
            op = (uint64_t)(g - f.p);
            uint64_t len = op + 4 - (at + 9);
            for (unsigned i = 0; i < 8; i++)
                f.p[at + 1 + i] = (uint8_t)(len >> (8 * i));
        } else if (cases[c].kind == 2) {
            /* an empty FRAME right after the body's first opcode, inside the
             * frame that holds the body */
            buf g = {0};
            b_put(&g, f.p, at);
            pk_frame(&g, obj.len + 9);
            b_u8(&g, '}');
            op = g.len;
            pk_frame(&g, 0);
            b_put(&g, obj.p + 1, obj.len - 1);
            b_put(&g, f.p + at + 9 + obj.len, f.len - (at + 9 + obj.len));
            b_free(&f);
            f = g;
        } else {
            op = at;
            for (unsigned i = 0; i < 8; i++)
                f.p[at + 1 + i] = (uint8_t)(((uint64_t)f.len) >> (8 * i));
        }
        ckpt_error err;
        assert_int_equal(open_status(&f, &err), CKPT_ERR_FORMAT);
        if (!strstr(err.message, cases[c].message))
            print_error("%s: %s\n", cases[c].what, err.message);
        assert_string_equal(err.record, "legacy object pickle");
        assert_non_null(strstr(err.message, cases[c].message));
        assert_int_equal(err.file_offset, op);
        assert_int_equal(err.offset, op - obj_at);
        ckpt_scan *sc = scan_buf(&f);
        const ckpt_scan_finding *b = scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, cases[c].message);
        if (!b)
            dump(sc);
        assert_non_null(b);
        assert_string_equal(b->record, "legacy object pickle");
        assert_int_equal(b->file_offset, op);
        assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
        ckpt_scan_free(sc);
        b_free(&f);
    }
    b_free(&obj);
    b_free(&twin.file);
}

/* ---- plain pickles and torch zips ---------------------------------------------- */

/* A protocol-4 pickle [1] whose frame runs `extra` bytes past STOP, then
 * `after`. */
static buf plain_framed(uint64_t extra, const char *after, size_t after_len)
{
    buf b = {0};
    b_str(&b, "\x80\x04");
    pk_frame(&b, 5 + extra);
    b_str(&b, "]K\x01" "a.");
    b_put(&b, after, after_len);
    return b;
}

static void test_plain_pickle(void **state)
{
    (void)state;
    /* twin: the frame ends at STOP */
    buf ok = plain_framed(0, "", 0);
    ckpt_error err;
    assert_int_equal(open_status(&ok, &err), CKPT_OK);
    ckpt_scan *sc = scan_buf(&ok);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    ckpt_scan_free(sc);
    b_free(&ok);

    /* a decoy inside the frame after STOP, the payload after the frame:
     * pickle.load twice on the file runs the payload second */
    buf p = plain_framed(4, "N.N.", 4);
    b_put(&p, PAYLOAD, PAYLOAD_LEN);
    uint64_t frame_end = 11 + 5 + 4;
    assert_int_equal(open_status(&p, &err), CKPT_ERR_FORMAT);
    assert_string_equal(err.record, "pickle");
    assert_int_equal(err.offset, 15);
    assert_non_null(strstr(err.message, "the frame runs 4 bytes past STOP (to byte 20)"));
    sc = scan_buf(&p);
    assert_string_equal(ckpt_scan_format(sc), "pickle");
    const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "past STOP");
    assert_non_null(f);
    assert_int_equal(f->offset, 15);
    const ckpt_scan_finding *g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    if (!g)
        dump(sc);
    assert_non_null(g);
    assert_int_equal(g->file_offset, frame_end + PAYLOAD_GLOBAL_AT);
    assert_string_equal(g->record, "pickle 2");
    const ckpt_scan_finding *x =
        scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, "after the pickle's frame");
    assert_non_null(x);
    assert_int_equal(x->file_offset, frame_end);
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, "between STOP and the end"));
    ckpt_scan_free(sc);
    b_free(&p);

    /* the payload in the frame after STOP, nothing after it */
    p = plain_framed(PAYLOAD_LEN, PAYLOAD, PAYLOAD_LEN);
    assert_int_equal(open_status(&p, &err), CKPT_ERR_FORMAT);
    sc = scan_buf(&p);
    g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(g);
    assert_int_equal(g->file_offset, 16 + PAYLOAD_GLOBAL_AT);
    ckpt_scan_free(sc);
    b_free(&p);

    /* a frame past the end of the file, the payload inside what is there:
     * CPython's C unpickler fails at the FRAME, its Python one reads on and
     * runs it */
    buf q = {0};
    b_str(&q, "\x80\x04");
    pk_frame(&q, 1000);
    b_put(&q, PAYLOAD + 2, PAYLOAD_LEN - 2);
    assert_int_equal(open_status(&q, &err), CKPT_ERR_FORMAT);
    assert_int_equal(err.offset, 2);
    assert_non_null(strstr(err.message, "the frame of 1000 bytes runs past the end of the data"));
    sc = scan_buf(&q);
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL));
    f = scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, "runs past the end of the data");
    assert_non_null(f);
    assert_int_equal(f->offset, 2);
    ckpt_scan_free(sc);
    b_free(&q);

    /* the GLOBAL's text line across the frame's end: the scan names it */
    b_str(&q, "\x80\x04");
    pk_frame(&q, 5);
    b_put(&q, PAYLOAD + 2, PAYLOAD_LEN - 2);
    assert_int_equal(open_status(&q, &err), CKPT_ERR_FORMAT);
    assert_int_equal(err.offset, 11);
    assert_non_null(strstr(err.message, "GLOBAL: the text argument has no newline in the 4 bytes"));
    sc = scan_buf(&q);
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, "GLOBAL: the text argument"));
    ckpt_scan_free(sc);
    b_free(&q);
}

/* archive/data.pkl, archive/version; stored, no alignment. */
static buf unaligned_zip(const buf *pkl)
{
    const zrec recs[2] = {zr_stored("archive/data.pkl", pkl->p, pkl->len),
                          zr_stored("archive/version", "3\n", 2)};
    const zend plain = {.unaligned = true};
    return zip_build(recs, 2, &plain).file;
}

static void test_zip_data_pkl(void **state)
{
    (void)state;
    buf ok = plain_framed(0, "", 0);
    buf z = unaligned_zip(&ok);
    ckpt_error err;
    assert_int_equal(open_status(&z, &err), CKPT_OK);
    ckpt_scan *sc = scan_buf(&z);
    assert_only_frame_warning(sc);
    ckpt_scan_free(sc);
    b_free(&z);
    b_free(&ok);

    buf p = plain_framed(PAYLOAD_LEN, PAYLOAD, PAYLOAD_LEN);
    z = unaligned_zip(&p);
    assert_int_equal(open_status(&z, &err), CKPT_ERR_FORMAT);
    assert_string_equal(err.record, "archive/data.pkl");
    assert_int_equal(err.offset, 15);
    assert_non_null(strstr(err.message, "past STOP"));
    sc = scan_buf(&z);
    const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "past STOP");
    assert_non_null(f);
    assert_string_equal(f->record, "archive/data.pkl");
    assert_int_equal(f->offset, 15);
    /* the payload between STOP and the frame's end */
    const ckpt_scan_finding *g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    if (!g)
        dump(sc);
    assert_non_null(g);
    assert_string_equal(g->record, "archive/data.pkl: pickle 1 after STOP, inside the frame");
    assert_int_equal(g->offset, PAYLOAD_GLOBAL_AT);
    ckpt_scan_free(sc);
    b_free(&z);
    b_free(&p);

    /* the payload after the frame: pickle.load twice on the record runs it */
    p = plain_framed(2, "N.", 2);
    b_put(&p, PAYLOAD, PAYLOAD_LEN);
    z = unaligned_zip(&p);
    sc = scan_buf(&z);
    g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    if (!g)
        dump(sc);
    assert_non_null(g);
    assert_string_equal(g->record, "archive/data.pkl: pickle 2");
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, "after the pickle's frame"));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, "between STOP and the end"));
    ckpt_scan_free(sc);
    b_free(&z);
    b_free(&p);

    /* an argument across the frame's end in data.pkl */
    buf q = {0};
    b_str(&q, "\x80\x04");
    pk_frame(&q, 2);
    b_str(&q, "M\x01\x00.");
    z = unaligned_zip(&q);
    assert_int_equal(open_status(&z, &err), CKPT_ERR_FORMAT);
    assert_string_equal(err.record, "archive/data.pkl");
    assert_int_equal(err.offset, 11);
    sc = scan_buf(&z);
    f = scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, "BININT2: the argument of 2 bytes");
    assert_non_null(f);
    assert_int_equal(f->offset, 11);
    ckpt_scan_free(sc);
    b_free(&z);
    b_free(&q);
}

/* ---- byte order ------------------------------------------------------------------- */

/* sys_info's little_endian=False: torch never reads sys_info and loads the
 * bytes as saved (tests/interop/test_framing.py checks torch 1.13 on such a
 * file); ckpt reads the same values, the scan reports the contradiction. */
static void test_legacy_sys_info_byte_order(void **state)
{
    (void)state;
    for (int little = 0; little < 2; little++) {
        buf bodies[5] = {body_magic(), body_protocol(), body_sys_info_says(little),
                         body_object_of("FloatStorage", 2), body_keys()};
        buf f = {0};
        for (int i = 0; i < 5; i++) {
            b_str(&f, "\x80\x02");
            b_put(&f, bodies[i].p, bodies[i].len);
            b_free(&bodies[i]);
        }
        uint64_t sys_info_at = 2 + 13 + 2 + 4;
        b_le(&f, 2, 8);
        b_put(&f, "\x00\x00\x80\x3f\x00\x00\x00\x40", 8); /* 1.0f, 2.0f little-endian */
        ckpt_file *cf = NULL;
        ckpt_error err;
        assert_int_equal(ckpt_open_memory(f.p, f.len, NULL, &cf, &err), CKPT_OK);
        ckpt_file_info fi = {.struct_size = sizeof(fi)};
        ckpt_file_get_info(cf, &fi);
        assert_false(fi.big_endian);
        const char *name = NULL;
        const ckpt_tensor *t = ckpt_file_tensor(cf, 0, &name);
        assert_non_null(t);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        assert_false(ti.big_endian);
        float v[2] = {0, 0};
        assert_int_equal(ckpt_tensor_copy(cf, t, v, sizeof(v), &err), CKPT_OK);
        assert_true(v[0] == 1.0f && v[1] == 2.0f);
        ckpt_close(cf);

        ckpt_scan *sc = scan_buf(&f);
        if (little) {
            assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
        } else {
            assert_int_equal(ckpt_scan_finding_count(sc), 1);
            const ckpt_scan_finding *x =
                scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, "little_endian=False");
            assert_non_null(x);
            assert_string_equal(x->record, "legacy sys_info");
            assert_int_equal(x->file_offset, sys_info_at);
            assert_non_null(strstr(x->message, "loads their bytes as little-endian"));
        }
        ckpt_scan_free(sc);
        b_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_legacy_twins_are_clean),
        cmocka_unit_test(test_legacy_frame_past_stop),
        cmocka_unit_test(test_legacy_payload_before_frame_end),
        cmocka_unit_test(test_legacy_frame_breaks),
        cmocka_unit_test(test_plain_pickle),
        cmocka_unit_test(test_zip_data_pkl),
        cmocka_unit_test(test_legacy_sys_info_byte_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

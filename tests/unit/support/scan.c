/* scan.c - the scanner on a built file, and its findings looked up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <string.h>

ckpt_scan *scan_buf(const buf *b)
{
    ckpt_scan *sc = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_scan_memory(b->p, b->len, NULL, &sc, &err), CKPT_OK);
    assert_non_null(sc);
    return sc;
}

const ckpt_scan_finding *scan_find(const ckpt_scan *sc, ckpt_scan_kind kind, const char *global,
                                   const char *text)
{
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        if (f->kind == kind && (!global || (f->global && strcmp(f->global, global) == 0)) &&
            (!text || strstr(f->message, text)))
            return f;
    }
    return NULL;
}

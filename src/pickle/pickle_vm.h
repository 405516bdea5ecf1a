/*
 * pickle_vm.h - the pickle machine's state, shared by its two halves:
 * pickle_read.c (reading opcodes: cursor, stack, memo, text, numbers) and
 * pickle_call.c (the allow-list and what its names mean when called).
 * Private to those two files.
 */
#ifndef CKPT_PICKLE_VM_H
#define CKPT_PICKLE_VM_H

#include "pickle.h"

#include <stdio.h>

#define SMALL_INT_MIN (-1)
#define SMALL_INT_MAX 256

typedef struct vm {
    ckpt__pickle_ctx *ctx;
    ckpt__arena *arena;
    const ckpt_limits *limits;
    ckpt_error *err;

    const uint8_t *data;
    size_t size;          /* bytes given */
    size_t end;           /* bytes we may read: min(size, max_pickle_bytes) */
    size_t pos;
    size_t op_pos;        /* offset of the opcode being run, for errors */
    uint8_t op;
    size_t frame_end;     /* end of the last FRAME; the frame is current while pos < frame_end */

    ckpt_value **stack;
    size_t sp, stack_cap;
    size_t *marks;        /* stack heights at each MARK */
    size_t nmarks, marks_cap;

    ckpt_value **memo;    /* dense: memo[i] or NULL, i < max_memo_entries */
    size_t memo_cap, memo_count;
    /* The memo keys the pickle ever reads (GET, BINGET, LONG_BINGET), found
     * by a scan of its opcodes before it runs: a value put under no such key
     * and never DUP'd is referred to by one place only, so the argument
     * tuples that _rebuild_tensor_v2 consumed can be given back to the
     * arena. recycle is false when the scan could not tell. */
    uint8_t *memo_read;   /* bitmap of keys */
    size_t memo_read_bits;
    bool recycle;
    /* with recycle, keys that are put but never read are not kept in memo:
     * this bitmap only tells which exist (for memo_count) */
    uint8_t *memo_unread;
    size_t memo_unread_bits;

    uint64_t work, work_limit;

    ckpt_value *none, *yes, *no, *empty_tuple;
    ckpt_value *small_ints[SMALL_INT_MAX - SMALL_INT_MIN + 1];
} vm;

/* ---- pickle_read.c ------------------------------------------------------
 * Errors name the opcode being run and its offset. Values are made in the
 * arena; a failed allocation reports max_value_bytes or out of memory. */

ckpt_status ckpt__vm_fail(vm *m, ckpt_status st, const char *fmt, ...) CKPT_PRINTF(3, 4);
/* An allocation of about wanted bytes failed: a limit or out of memory. */
ckpt_status ckpt__vm_oom(vm *m, uint64_t wanted);
/* Work that a few bytes of pickle can multiply is charged here. */
ckpt_status ckpt__vm_charge(vm *m, uint64_t units);
ckpt_status ckpt__vm_value(vm *m, int kind, ckpt_value **out);
ckpt_status ckpt__vm_str(vm *m, int kind, const void *s, size_t n, ckpt_value **out);
ckpt_status ckpt__vm_alloc(vm *m, size_t n, void **out);
/* A STR/BYTES value over a NUL-terminated buffer already in the arena. */
ckpt_status ckpt__vm_wrap(vm *m, int kind, char *buf, size_t n, ckpt_value **out);
ckpt_status ckpt__vm_int(vm *m, int64_t i, ckpt_value **out);
/* A LIST/TUPLE/SET/SIZE holding a copy of items[0..n). */
ckpt_status ckpt__vm_seq(vm *m, int kind, ckpt_value *const *items, size_t n,
                         ckpt_value **out);
ckpt_status ckpt__vm_dict_put(vm *m, ckpt_value *d, ckpt_value *k, ckpt_value *v);

/* ---- pickle_call.c ---------------------------------------------------- */

/* GLOBAL/STACK_GLOBAL/INST: the allow-list entry for module.name as a value
 * (CKPT_KIND_GLOBAL or CKPT_KIND_DTYPE), or CKPT_ERR_UNSAFE naming it. */
ckpt_status ckpt__vm_resolve_global(vm *m, const char *module, size_t mlen, const char *name,
                                    size_t nlen, ckpt_value **out);
/* REDUCE/NEWOBJ(_EX)/INST/OBJ: fn(*args) by its data meaning. use is the
 * opcode's CKPT_SCAN_USE_* (NEWOBJ and NEWOBJ_EX mean cls.__new__(cls,
 * *args)); args_value the pickle's args tuple when it gave one (REDUCE,
 * NEWOBJ), else NULL; kwargs NEWOBJ_EX's dict or NULL. */
ckpt_status ckpt__vm_apply(vm *m, const ckpt_value *fn, ckpt_value *args_value,
                           ckpt_value *const *args, size_t nargs, ckpt_value *kwargs,
                           unsigned use, ckpt_value **out);
/* Scanning: reports a use of v (a GLOBAL, or an OBJECT standing for the
 * GLOBAL it came from); a no-op without ctx->on_use. */
ckpt_status ckpt__vm_report_use(vm *m, const ckpt_value *v, unsigned use);
/* BUILD: gives inst its state (dicts, tensors and inert objects take one). */
ckpt_status ckpt__vm_build(vm *m, ckpt_value *inst, ckpt_value *state);

/* ---- pickle_numpy.c (CKPT__PICKLE_NUMPY) -------------------------------- */

ckpt_status ckpt__numpy_call_dtype(vm *m, const ckpt_value *fn, ckpt_value *const *args,
                                   size_t nargs, ckpt_value **out);
/* An empty int8 array that a BUILD (ckpt__numpy_build) fills. */
ckpt_status ckpt__numpy_call_reconstruct(vm *m, ckpt_value *const *args, size_t nargs,
                                         ckpt_value **out);
ckpt_status ckpt__numpy_call_frombuffer(vm *m, ckpt_value *const *args, size_t nargs,
                                        ckpt_value **out);
ckpt_status ckpt__numpy_call_scalar(vm *m, ckpt_value *const *args, size_t nargs,
                                    ckpt_value **out);
/* Whether v is an array made by _reconstruct and not yet built / built. */
bool ckpt__numpy_unbuilt(const ckpt_value *v);
bool ckpt__numpy_built(const ckpt_value *v);
ckpt_status ckpt__numpy_build(vm *m, ckpt_value *inst, const ckpt_value *state);

/* ---- small helpers ---------------------------------------------------- */

/* A kind for messages; internal kinds included. */
static inline const char *kind_desc(const ckpt_value *v)
{
    if (!v)
        return "nothing";
    if (v->kind == CKPT__KIND_STORAGE)
        return "storage";
    return ckpt_kind_name((ckpt_kind)v->kind);
}

static inline bool is_dict(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT);
}

static inline bool is_intlike(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_INT || v->kind == CKPT_KIND_BOOL);
}

static inline int64_t int_of(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_BOOL ? (v->u.b ? 1 : 0) : v->u.i;
}

static inline bool str_is(const ckpt_value *v, const char *s)
{
    size_t n = strlen(s);
    return v && v->kind == CKPT_KIND_STR && v->u.s.len == n && memcmp(v->u.s.ptr, s, n) == 0;
}

/* Offset of the first invalid byte, or n. allow_surrogates mirrors
 * CPython's "surrogatepass", which the pickler uses for str. */
static inline size_t utf8_check(const uint8_t *s, size_t n, bool allow_surrogates)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed && !allow_surrogates)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return i;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        }
        i += len;
    }
    return n;
}

/* Decodes one code point of (surrogatepass) UTF-8; false when invalid. */
static inline bool get_utf8(const uint8_t *s, size_t n, size_t *i, uint32_t *cp)
{
    size_t len = utf8_check(s + *i, n - *i < 4 ? n - *i : 4, true);
    uint8_t c = s[*i];
    if (len == 0)
        return false;
    if (c < 0x80) {
        *cp = c;
        *i += 1;
    } else if (c < 0xe0) {
        *cp = ((uint32_t)(c & 0x1f) << 6) | (s[*i + 1] & 0x3f);
        *i += 2;
    } else if (c < 0xf0) {
        *cp = ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[*i + 1] & 0x3f) << 6) |
              (s[*i + 2] & 0x3f);
        *i += 3;
    } else {
        *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3f) << 12) |
              ((uint32_t)(s[*i + 2] & 0x3f) << 6) | (s[*i + 3] & 0x3f);
        *i += 4;
    }
    return true;
}

static inline bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Unsigned decimal for memo keys; false when not one. Saturates. */
static inline bool parse_index(const char *s, size_t n, uint64_t *out)
{
    while (n && is_space(s[n - 1]))
        n--;
    while (n && is_space(*s)) {
        s++;
        n--;
    }
    if (n && *s == '+') {
        s++;
        n--;
    }
    if (n == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *out = v;
    return true;
}

static inline bool ascii_ieq(const char *a, size_t n, const char *b)
{
    size_t bn = strlen(b);
    if (n != bn)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != b[i])
            return false;
    }
    return true;
}

#endif /* CKPT_PICKLE_VM_H */

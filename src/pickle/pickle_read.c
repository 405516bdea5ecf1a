/*
 * pickle_read.c - a data-only pickle interpreter.
 *
 * Every opcode of protocols 0-5 is understood, but nothing is ever imported
 * or called: GLOBAL resolves against a closed table of names (the
 * weights-only allow-list of torch.load), and REDUCE/NEWOBJ/INST/OBJ/BUILD
 * apply those few names by their data meaning (an OrderedDict is filled, a
 * tensor view is described). Anything else is refused with the name and the
 * byte offset of the opcode that asked for it.
 *
 * Hostile input is the normal case here. All reads go through one cursor
 * that checks lengths first; stack, marks, memo and the value tree are
 * bounded by ckpt_limits; work that a small pickle could multiply (copying
 * a memoized container again and again, hashing huge keys) is charged
 * against a budget proportional to the pickle's size. Nothing recurses on
 * values without a bound: memo references can make the tree cyclic.
 *
 * This file is the machine (cursor, stack, marks, memo, text and numbers,
 * the opcode loop); pickle_call.c holds the allow-list and what its names
 * mean; pickle_vm.h is what the two share.
 */
#include "pickle_vm.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>

/* ======================================================================
 * Opcodes
 * ====================================================================== */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_FLOAT = 'F', OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R',
    OP_STRING = 'S', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h', OP_INST = 'i',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    /* protocol 2 */
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    /* protocol 3 */
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    /* protocol 4 */
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e,
    OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92,
    OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    /* protocol 5 */
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98
};

static const char *op_name(uint8_t op)
{
    switch (op) {
    case OP_MARK: return "MARK";
    case OP_STOP: return "STOP";
    case OP_POP: return "POP";
    case OP_POP_MARK: return "POP_MARK";
    case OP_DUP: return "DUP";
    case OP_FLOAT: return "FLOAT";
    case OP_INT: return "INT";
    case OP_BININT: return "BININT";
    case OP_BININT1: return "BININT1";
    case OP_LONG: return "LONG";
    case OP_BININT2: return "BININT2";
    case OP_NONE: return "NONE";
    case OP_PERSID: return "PERSID";
    case OP_BINPERSID: return "BINPERSID";
    case OP_REDUCE: return "REDUCE";
    case OP_STRING: return "STRING";
    case OP_BINSTRING: return "BINSTRING";
    case OP_SHORT_BINSTRING: return "SHORT_BINSTRING";
    case OP_UNICODE: return "UNICODE";
    case OP_BINUNICODE: return "BINUNICODE";
    case OP_APPEND: return "APPEND";
    case OP_BUILD: return "BUILD";
    case OP_GLOBAL: return "GLOBAL";
    case OP_DICT: return "DICT";
    case OP_EMPTY_DICT: return "EMPTY_DICT";
    case OP_APPENDS: return "APPENDS";
    case OP_GET: return "GET";
    case OP_BINGET: return "BINGET";
    case OP_INST: return "INST";
    case OP_LONG_BINGET: return "LONG_BINGET";
    case OP_LIST: return "LIST";
    case OP_EMPTY_LIST: return "EMPTY_LIST";
    case OP_OBJ: return "OBJ";
    case OP_PUT: return "PUT";
    case OP_BINPUT: return "BINPUT";
    case OP_LONG_BINPUT: return "LONG_BINPUT";
    case OP_SETITEM: return "SETITEM";
    case OP_TUPLE: return "TUPLE";
    case OP_EMPTY_TUPLE: return "EMPTY_TUPLE";
    case OP_SETITEMS: return "SETITEMS";
    case OP_BINFLOAT: return "BINFLOAT";
    case OP_PROTO: return "PROTO";
    case OP_NEWOBJ: return "NEWOBJ";
    case OP_EXT1: return "EXT1";
    case OP_EXT2: return "EXT2";
    case OP_EXT4: return "EXT4";
    case OP_TUPLE1: return "TUPLE1";
    case OP_TUPLE2: return "TUPLE2";
    case OP_TUPLE3: return "TUPLE3";
    case OP_NEWTRUE: return "NEWTRUE";
    case OP_NEWFALSE: return "NEWFALSE";
    case OP_LONG1: return "LONG1";
    case OP_LONG4: return "LONG4";
    case OP_BINBYTES: return "BINBYTES";
    case OP_SHORT_BINBYTES: return "SHORT_BINBYTES";
    case OP_SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case OP_BINUNICODE8: return "BINUNICODE8";
    case OP_BINBYTES8: return "BINBYTES8";
    case OP_EMPTY_SET: return "EMPTY_SET";
    case OP_ADDITEMS: return "ADDITEMS";
    case OP_FROZENSET: return "FROZENSET";
    case OP_NEWOBJ_EX: return "NEWOBJ_EX";
    case OP_STACK_GLOBAL: return "STACK_GLOBAL";
    case OP_MEMOIZE: return "MEMOIZE";
    case OP_FRAME: return "FRAME";
    case OP_BYTEARRAY8: return "BYTEARRAY8";
    case OP_NEXT_BUFFER: return "NEXT_BUFFER";
    case OP_READONLY_BUFFER: return "READONLY_BUFFER";
    }
    return "unknown opcode";
}

const char *ckpt__pickle_opcode_name(uint8_t op)
{
    return op_name(op);
}

/* ======================================================================
 * The machine
 * ====================================================================== */

#define MAX_FLOAT_TEXT 1024
#define MAX_DECIMAL_DIGITS 4300 /* CPython's int_max_str_digits default */

/* ---- errors ------------------------------------------------------------ */

ckpt_status ckpt__vm_fail(vm *m, ckpt_status st, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return ckpt__fail(m->err, st, m->ctx->record, m->op_pos, "%s: %s", op_name(m->op), msg);
}

/* An allocation failed: a hit of max_value_bytes, or real out-of-memory. */
ckpt_status ckpt__vm_oom(vm *m, uint64_t wanted)
{
    size_t w = wanted > SIZE_MAX ? SIZE_MAX : (size_t)wanted;
    if (ckpt__arena_over_limit(m->arena, w))
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "the values exceed max_value_bytes (%llu bytes)",
                             (unsigned long long)m->arena->limit);
    return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
}

/* Work that a few bytes of pickle can multiply is charged here. */
ckpt_status ckpt__vm_charge(vm *m, uint64_t units)
{
    if (units > m->work_limit - m->work) {
        m->work = m->work_limit;
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT,
                             "the pickle asks for too much work (copying or hashing more than %llu "
                             "units for %zu bytes of pickle)",
                             (unsigned long long)m->work_limit, m->end);
    }
    m->work += units;
    return CKPT_OK;
}

/* ---- cursor ------------------------------------------------------------ */

/* The reader wanted n more bytes than there are. Past max_pickle_bytes that
 * is a limit, else a truncated or lying pickle. */
static ckpt_status truncated(vm *m, uint64_t n, bool is_length)
{
    size_t left = m->end - m->pos;
    if (m->size > m->end && n <= (uint64_t)(m->size - m->pos))
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "the pickle is larger than max_pickle_bytes (%llu)",
                             (unsigned long long)m->limits->max_pickle_bytes);
    if (is_length)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "length %llu runs past the end of the pickle (%zu bytes left)",
                             (unsigned long long)n, left);
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                         "argument needs %llu bytes but only %zu are left (truncated pickle)",
                         (unsigned long long)n, left);
}

/* A break of the framing rules (see "Frames" above run()): an error, or
 * for a scan (ctx->framing) the first one is kept, the frame is dropped and
 * the pickle reads on as contiguous bytes, so that what follows is seen. */
static ckpt_status frame_broken(vm *m, const char *fmt, ...) CKPT_PRINTF(2, 3);
static ckpt_status frame_broken(vm *m, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ckpt_error *keep = m->ctx->framing;
    if (!keep || !(m->ctx->flags & CKPT__PICKLE_NO_FAIL))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s", msg);
    if (keep->status == CKPT_OK)
        ckpt__fail(keep, CKPT_ERR_FORMAT, m->ctx->record, m->op_pos, "%s: %s", op_name(m->op),
                   msg);
    m->frame_end = 0;
    return CKPT_OK;
}

/* An argument of n bytes (or a text line, n == 0) starts inside the current
 * frame and runs past its end. */
static ckpt_status crosses_frame(vm *m, uint64_t n)
{
    size_t left = m->frame_end - m->pos;
    if (n == 0)
        return frame_broken(m,
                            "the text argument has no newline in the %zu bytes left in the frame "
                            "(it ends at byte %zu): unpicklers disagree on where the rest of it "
                            "comes from", left, m->frame_end);
    return frame_broken(m,
                        "the argument of %llu bytes runs past the end of the frame (byte %zu, "
                        "%zu left in it): unpicklers disagree on where the rest of it comes from",
                        (unsigned long long)n, m->frame_end, left);
}

/* Fixed-size argument of the opcode. */
static ckpt_status read_arg(vm *m, size_t n, const uint8_t **p)
{
    if (CKPT_UNLIKELY(m->pos < m->frame_end && n > m->frame_end - m->pos))
        CKPT_RETURN_IF_ERROR(crosses_frame(m, n));
    if (CKPT_UNLIKELY(n > m->end - m->pos))
        return truncated(m, n, false);
    *p = m->data + m->pos;
    m->pos += n;
    return CKPT_OK;
}

/* Payload whose length the pickle declared. */
static ckpt_status read_payload(vm *m, uint64_t n, const uint8_t **p)
{
    if (CKPT_UNLIKELY(m->pos < m->frame_end && n > (uint64_t)(m->frame_end - m->pos)))
        CKPT_RETURN_IF_ERROR(crosses_frame(m, n));
    if (CKPT_UNLIKELY(n > (uint64_t)(m->end - m->pos)))
        return truncated(m, n, true);
    *p = m->data + m->pos;
    m->pos += (size_t)n;
    return CKPT_OK;
}

/* Text argument up to '\n' (excluded). */
static ckpt_status read_line(vm *m, const char **p, size_t *len)
{
    const uint8_t *s = m->data + m->pos;
    bool framed = m->pos < m->frame_end;
    const uint8_t *nl = memchr(s, '\n', (framed ? m->frame_end : m->end) - m->pos);
    if (!nl && framed) {
        CKPT_RETURN_IF_ERROR(crosses_frame(m, 0));
        nl = memchr(s, '\n', m->end - m->pos);
    }
    if (!nl) {
        if (m->size > m->end)
            return ckpt__vm_fail(m, CKPT_ERR_LIMIT,
                                 "the pickle is larger than max_pickle_bytes (%llu)",
                                 (unsigned long long)m->limits->max_pickle_bytes);
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "text argument has no newline (truncated pickle)");
    }
    *p = (const char *)s;
    *len = (size_t)(nl - s);
    m->pos += *len + 1;
    return CKPT_OK;
}

static ckpt_status read_u8(vm *m, uint32_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 1, &p));
    *out = p[0];
    return CKPT_OK;
}

static ckpt_status read_u32(vm *m, uint32_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 4, &p));
    *out = ckpt__le32(p);
    return CKPT_OK;
}

static ckpt_status read_u64(vm *m, uint64_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 8, &p));
    *out = ckpt__le64(p);
    return CKPT_OK;
}

/* ---- stack, marks, memo ------------------------------------------------ */

static size_t fence(const vm *m)
{
    return m->nmarks ? m->marks[m->nmarks - 1] : 0;
}

static ckpt_status check_depth(vm *m)
{
    if (m->sp + m->nmarks >= m->limits->max_stack_depth)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "stack depth exceeds max_stack_depth (%llu)",
                             (unsigned long long)m->limits->max_stack_depth);
    return CKPT_OK;
}

static ckpt_status push(vm *m, ckpt_value *v)
{
    CKPT_RETURN_IF_ERROR(check_depth(m));
    if (m->sp == m->stack_cap) {
        size_t cap = m->stack_cap ? m->stack_cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(*m->stack))
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        ckpt_value **s = realloc(m->stack, cap * sizeof(*s));
        if (!s)
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        m->stack = s;
        m->stack_cap = cap;
    }
    m->stack[m->sp++] = v;
    return CKPT_OK;
}

/* The stack must hold n items above the innermost mark. */
static ckpt_status need_items(vm *m, size_t n)
{
    size_t avail = m->sp - fence(m);
    if (CKPT_UNLIKELY(avail < n)) {
        if (m->nmarks)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "needs %zu stack item%s above the MARK, %zu there",
                                 n, n == 1 ? "" : "s", avail);
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "needs %zu stack item%s, %zu there (stack underflow)",
                             n, n == 1 ? "" : "s", avail);
    }
    return CKPT_OK;
}

static ckpt_value *pop(vm *m)
{
    return m->stack[--m->sp]; /* callers checked need_items */
}

static ckpt_status push_mark(vm *m)
{
    CKPT_RETURN_IF_ERROR(check_depth(m));
    if (m->nmarks == m->marks_cap) {
        size_t cap = m->marks_cap ? m->marks_cap * 2 : 16;
        if (cap > SIZE_MAX / sizeof(*m->marks))
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        size_t *p = realloc(m->marks, cap * sizeof(*p));
        if (!p)
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        m->marks = p;
        m->marks_cap = cap;
    }
    m->marks[m->nmarks++] = m->sp;
    return CKPT_OK;
}

static ckpt_status pop_mark(vm *m, size_t *mark)
{
    if (m->nmarks == 0)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "no MARK on the stack");
    *mark = m->marks[--m->nmarks];
    return CKPT_OK;
}

/* For APPENDS/SETITEMS/ADDITEMS: pops the mark; the container sits just
 * below it and must itself be above the enclosing mark. */
static ckpt_status pop_mark_with_target(vm *m, size_t *mark, ckpt_value **target)
{
    CKPT_RETURN_IF_ERROR(pop_mark(m, mark));
    if (*mark <= fence(m))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "no container below the MARK");
    *target = m->stack[*mark - 1];
    return CKPT_OK;
}

static bool memo_bit(const uint8_t *bits, size_t nbits, uint64_t idx)
{
    return idx < nbits && ((bits[idx / 8] >> (idx % 8)) & 1);
}

/* Sets bit idx (< max_memo_entries) of a bitmap grown by doubling. */
static bool memo_bit_set(uint8_t **bits, size_t *nbits, uint64_t idx)
{
    if (idx >= *nbits) {
        size_t n = *nbits ? *nbits : 1024;
        while (n <= idx)
            n *= 2;
        uint8_t *p = realloc(*bits, n / 8);
        if (!p)
            return false;
        memset(p + *nbits / 8, 0, (n - *nbits) / 8);
        *bits = p;
        *nbits = n;
    }
    (*bits)[idx / 8] |= (uint8_t)(1u << (idx % 8));
    return true;
}

static ckpt_status memo_put(vm *m, uint64_t idx, ckpt_value *v)
{
    if (idx >= m->limits->max_memo_entries)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "memo index %llu exceeds max_memo_entries (%llu)",
                             (unsigned long long)idx,
                             (unsigned long long)m->limits->max_memo_entries);
    if (m->recycle && !memo_bit(m->memo_read, m->memo_read_bits, idx)) {
        /* a key nothing reads: only that it exists counts (MEMOIZE numbers
         * keys by their count), one bit instead of a slot */
        if (!memo_bit(m->memo_unread, m->memo_unread_bits, idx)) {
            if (!memo_bit_set(&m->memo_unread, &m->memo_unread_bits, idx))
                return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
            m->memo_count++;
        }
        return CKPT_OK;
    }
    if (idx >= m->memo_cap) {
        uint64_t cap = m->memo_cap ? (uint64_t)m->memo_cap * 2 : 64;
        if (cap < idx + 1)
            cap = idx + 1;
        if (cap > m->limits->max_memo_entries)
            cap = m->limits->max_memo_entries;
        if (cap > SIZE_MAX / sizeof(*m->memo))
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        ckpt_value **p = realloc(m->memo, (size_t)cap * sizeof(*p));
        if (!p)
            return ckpt__vm_fail(m, CKPT_ERR_NOMEM, "out of memory");
        memset(p + m->memo_cap, 0, ((size_t)cap - m->memo_cap) * sizeof(*p));
        m->memo = p;
        m->memo_cap = (size_t)cap;
    }
    if (!m->memo[idx])
        m->memo_count++;
    m->memo[idx] = v;
    if (m->recycle)
        v->flags |= CKPT__VF_SHARED; /* a key that is read */
    return CKPT_OK;
}

static ckpt_status memo_get(vm *m, uint64_t idx, ckpt_value **out)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "memo key %llu was never stored",
                             (unsigned long long)idx);
    /* never hand out what may have been recycled: the scan saw every read */
    if (m->recycle && !memo_bit(m->memo_read, m->memo_read_bits, idx))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "memo key %llu is read where the opcode scan "
                             "saw no read", (unsigned long long)idx);
    *out = m->memo[idx];
    return CKPT_OK;
}

/* ---- the scan of memo reads ------------------------------------------ */

#define MEMO_READ_MAX_BITS ((uint64_t)1 << 24)

static bool memo_read_mark(vm *m, uint64_t idx)
{
    if (idx >= m->limits->max_memo_entries)
        return true; /* memo_put refuses such a key: nothing is stored there */
    if (idx >= MEMO_READ_MAX_BITS)
        return false;
    return memo_bit_set(&m->memo_read, &m->memo_read_bits, idx);
}

/* Reads the opcodes from the start to the first STOP as run() reads them
 * (arguments only: nothing is made) and marks every memo key read. True
 * when it got to STOP; false on anything it does not know (run() then
 * recycles nothing and reports what is wrong itself). */
static bool memo_scan(vm *m)
{
    const uint8_t *d = m->data;
    size_t pos = 0, end = m->end;
    while (pos < end) {
        uint8_t op = d[pos++];
        uint64_t n = 0;
        size_t w = 0;   /* width of a length prefix */
        switch (op) {
        case OP_STOP:
            return true;
        case OP_MARK: case OP_POP: case OP_POP_MARK: case OP_DUP: case OP_NONE:
        case OP_BINPERSID: case OP_REDUCE: case OP_APPEND: case OP_BUILD: case OP_DICT:
        case OP_EMPTY_DICT: case OP_APPENDS: case OP_LIST: case OP_EMPTY_LIST: case OP_OBJ:
        case OP_SETITEM: case OP_TUPLE: case OP_EMPTY_TUPLE: case OP_SETITEMS: case OP_NEWOBJ:
        case OP_TUPLE1: case OP_TUPLE2: case OP_TUPLE3: case OP_NEWTRUE: case OP_NEWFALSE:
        case OP_EMPTY_SET: case OP_ADDITEMS: case OP_FROZENSET: case OP_NEWOBJ_EX:
        case OP_STACK_GLOBAL: case OP_MEMOIZE: case OP_NEXT_BUFFER: case OP_READONLY_BUFFER:
            continue;
        case OP_BININT1: case OP_BINPUT: case OP_PROTO: case OP_EXT1: n = 1; break;
        case OP_BININT2: case OP_EXT2: n = 2; break;
        case OP_BININT: case OP_LONG_BINPUT: case OP_EXT4: n = 4; break;
        case OP_BINFLOAT: case OP_FRAME: n = 8; break;
        case OP_BINGET:
        case OP_LONG_BINGET: {
            size_t k = op == OP_BINGET ? 1 : 4;
            if (end - pos < k)
                return false;
            uint64_t idx = op == OP_BINGET ? d[pos] : ckpt__le32(d + pos);
            if (!memo_read_mark(m, idx))
                return false;
            pos += k;
            continue;
        }
        case OP_SHORT_BINSTRING: case OP_SHORT_BINUNICODE: case OP_SHORT_BINBYTES:
        case OP_LONG1: w = 1; break;
        case OP_BINSTRING: case OP_BINUNICODE: case OP_BINBYTES: case OP_LONG4: w = 4; break;
        case OP_BINUNICODE8: case OP_BINBYTES8: case OP_BYTEARRAY8: w = 8; break;
        case OP_INT: case OP_LONG: case OP_FLOAT: case OP_STRING: case OP_UNICODE: case OP_GET:
        case OP_PUT: case OP_PERSID: case OP_GLOBAL: case OP_INST: {
            int lines = op == OP_GLOBAL || op == OP_INST ? 2 : 1;
            size_t start = pos;
            for (int l = 0; l < lines; l++) {
                const uint8_t *nl = memchr(d + pos, '\n', end - pos);
                if (!nl)
                    return false;
                if (op == OP_GET) {
                    uint64_t idx;
                    if (!parse_index((const char *)d + start, (size_t)(nl - (d + start)), &idx))
                        return false;
                    if (!memo_read_mark(m, idx))
                        return false;
                }
                pos = (size_t)(nl - d) + 1;
            }
            continue;
        }
        default:
            return false;
        }
        if (w) {
            if (end - pos < w)
                return false;
            n = w == 1 ? d[pos] : w == 4 ? ckpt__le32(d + pos) : ckpt__le64(d + pos);
            pos += w;
        }
        if (n > end - pos)
            return false;
        pos += (size_t)n;
    }
    return false;
}

static bool recyclable(const vm *m, const ckpt_value *v)
{
    return m->recycle && v && v->kind == CKPT_KIND_TUPLE &&
           (v->flags & (CKPT__VF_FRESH | CKPT__VF_SHARED)) == CKPT__VF_FRESH;
}

/* Gives a tuple that nothing refers to any more back to the arena. */
static void release_tuple(vm *m, ckpt_value *v)
{
    ckpt__arena_release(m->arena, v->u.seq.items, v->u.seq.cap * sizeof(ckpt_value *));
    ckpt__arena_release(m->arena, v, ckpt__value_size(CKPT_KIND_TUPLE));
}

/* ---- values ------------------------------------------------------------ */

ckpt_status ckpt__vm_value(vm *m, int kind, ckpt_value **out)
{
    *out = ckpt__value_new(m->arena, kind);
    return *out ? CKPT_OK : ckpt__vm_oom(m, sizeof(ckpt_value));
}

ckpt_status ckpt__vm_str(vm *m, int kind, const void *s, size_t n, ckpt_value **out)
{
    *out = ckpt__value_str(m->arena, kind, s, n);
    return *out ? CKPT_OK : ckpt__vm_oom(m, (uint64_t)n + 1 + 2 * sizeof(ckpt_value));
}

ckpt_status ckpt__vm_alloc(vm *m, size_t n, void **out)
{
    *out = ckpt__arena_alloc(m->arena, n);
    return *out ? CKPT_OK : ckpt__vm_oom(m, n);
}

/* A STR/BYTES value over a buffer already in the arena (NUL-terminated). */
ckpt_status ckpt__vm_wrap(vm *m, int kind, char *buf, size_t n, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, kind, out));
    (*out)->u.s.ptr = buf;
    (*out)->u.s.len = n;
    return CKPT_OK;
}

/* None, booleans and small ints are immutable: one value each per pickle. */
static ckpt_status cached(vm *m, ckpt_value **slot, int kind, ckpt_value **out)
{
    if (!*slot)
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, kind, slot));
    *out = *slot;
    return CKPT_OK;
}

static ckpt_status new_none(vm *m, ckpt_value **out)
{
    return cached(m, &m->none, CKPT_KIND_NONE, out);
}

static ckpt_status new_bool(vm *m, bool b, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(cached(m, b ? &m->yes : &m->no, CKPT_KIND_BOOL, out));
    (*out)->u.b = b;
    return CKPT_OK;
}

ckpt_status ckpt__vm_int(vm *m, int64_t i, ckpt_value **out)
{
    if (i >= SMALL_INT_MIN && i <= SMALL_INT_MAX) {
        CKPT_RETURN_IF_ERROR(cached(m, &m->small_ints[i - SMALL_INT_MIN], CKPT_KIND_INT, out));
        (*out)->u.i = i;
        return CKPT_OK;
    }
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_INT, out));
    (*out)->u.i = i;
    return CKPT_OK;
}

static ckpt_status new_float(vm *m, double f, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_FLOAT, out));
    (*out)->u.f = f;
    return CKPT_OK;
}

static ckpt_status check_len(vm *m, uint64_t n)
{
    if (n > m->limits->max_container_len)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT,
                             "container of %llu items exceeds max_container_len (%llu)",
                             (unsigned long long)n,
                             (unsigned long long)m->limits->max_container_len);
    return CKPT_OK;
}

/* A LIST/TUPLE/SET/SIZE holding a copy of items[0..n). */
ckpt_status ckpt__vm_seq(vm *m, int kind, ckpt_value *const *items, size_t n, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_len(m, n));
    if (kind == CKPT_KIND_TUPLE && n == 0 && m->empty_tuple) {
        *out = m->empty_tuple;
        return CKPT_OK;
    }
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, kind, &v));
    if (n) {
        if (n > SIZE_MAX / sizeof(ckpt_value *))
            return ckpt__vm_oom(m, UINT64_MAX);
        void *arr;
        CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, n * sizeof(ckpt_value *), &arr));
        memcpy(arr, items, n * sizeof(ckpt_value *));
        v->u.seq.items = arr;
        v->u.seq.len = v->u.seq.cap = n;
    }
    if (kind == CKPT_KIND_TUPLE && n == 0)
        m->empty_tuple = v;
    *out = v;
    return CKPT_OK;
}

static ckpt_status seq_add(vm *m, ckpt_value *seq, ckpt_value *item)
{
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)seq->u.seq.len + 1));
    if (!ckpt__seq_append(m->arena, seq, item)) {
        uint64_t cap = seq->u.seq.cap ? seq->u.seq.cap : 2;
        return ckpt__vm_oom(m, cap * 2 * sizeof(ckpt_value *));
    }
    return CKPT_OK;
}

ckpt_status ckpt__vm_dict_put(vm *m, ckpt_value *d, ckpt_value *k, ckpt_value *v)
{
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)d->u.dict.len + 1));
    /* Hashing k and comparing it: with an index about twice, else once
     * per entry scanned. Bounded, so no overflow. */
    uint64_t cost = ckpt__key_cost(k);
    CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, cost * (d->u.dict.index_cap ? 2 : 1 + d->u.dict.len)));
    if (!ckpt__dict_set(m->arena, d, k, v)) {
        uint64_t cap = d->u.dict.cap ? d->u.dict.cap : 2;
        return ckpt__vm_oom(m, cap * 4 * sizeof(ckpt_value *) + ((uint64_t)d->u.dict.len + 1) * 16);
    }
    return CKPT_OK;
}

/* ======================================================================
 * Text: UTF-8, escapes, numbers
 * ====================================================================== */

static size_t put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) { /* surrogates too: as CPython's surrogatepass */
        o[0] = (uint8_t)(0xe0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* A py2 str: kept when it is UTF-8, else read as latin-1 (every byte is a
 * code point) and re-encoded. */
static ckpt_status py2_str(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (utf8_check(s, n, false) == n)
        return ckpt__vm_str(m, CKPT_KIND_STR, s, n, out);
    if (n > (SIZE_MAX - 1) / 2)
        return ckpt__vm_oom(m, UINT64_MAX);
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, 2 * n + 1, (void **)&buf));
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += put_utf8(buf + o, s[i]);
    buf[o] = 0;
    return ckpt__vm_wrap(m, CKPT_KIND_STR, (char *)buf, o, out);
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* UNICODE: raw-unicode-escape. \u with 4 hex digits and \U with 8 are code points, a
 * backslash before anything else is literal (and keeps its follower
 * literal), every other byte is a latin-1 code point. */
static ckpt_status decode_raw_unicode_escape(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (n > (SIZE_MAX - 1) / 2)
        return ckpt__vm_oom(m, UINT64_MAX);
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, 2 * n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i++];
        if (c != '\\' || i == n) {
            o += put_utf8(buf + o, c);
            continue;
        }
        uint8_t e = s[i++];
        int digits = e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (!digits) {
            buf[o++] = '\\';
            o += put_utf8(buf + o, e);
            continue;
        }
        uint32_t cp = 0;
        for (int k = 0; k < digits; k++) {
            int h = i < n ? hex_value(s[i]) : -1;
            if (h < 0)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                     "truncated \\%c escape at byte %zu of the text",
                                     (char)e, i);
            cp = (cp << 4) | (uint32_t)h;
            i++;
        }
        if (cp > 0x10ffff)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "\\U%08x is not a code point", (unsigned)cp);
        o += put_utf8(buf + o, cp);
    }
    buf[o] = 0;
    return ckpt__vm_wrap(m, CKPT_KIND_STR, (char *)buf, o, out);
}

/* STRING: a Python-quoted literal with backslash escapes (as
 * PyBytes_DecodeEscape reads it), then a py2 str. */
static ckpt_status decode_string_literal(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the argument must be quoted");
    s++;
    n -= 2;
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i++];
        if (c != '\\') {
            buf[o++] = c;
            continue;
        }
        if (i == n)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "trailing \\ in the string");
        c = s[i++];
        switch (c) {
        case '\n': break;
        case '\\': buf[o++] = '\\'; break;
        case '\'': buf[o++] = '\''; break;
        case '"': buf[o++] = '"'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 't': buf[o++] = '\t'; break;
        case 'n': buf[o++] = '\n'; break;
        case 'r': buf[o++] = '\r'; break;
        case 'v': buf[o++] = '\v'; break;
        case 'a': buf[o++] = '\a'; break;
        case 'x': {
            int h1 = i < n ? hex_value(s[i]) : -1;
            int h2 = i + 1 < n ? hex_value(s[i + 1]) : -1;
            if (h1 < 0 || h2 < 0)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                     "invalid \\x escape at byte %zu of the string", i - 2);
            buf[o++] = (uint8_t)(h1 * 16 + h2);
            i += 2;
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                unsigned v = c - '0';
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
                    v = v * 8 + (s[i++] - '0');
                buf[o++] = (uint8_t)v; /* \777 wraps, as in CPython */
            } else {
                buf[o++] = '\\'; /* unknown escapes stay as written */
                buf[o++] = c;
            }
            break;
        }
    }
    return py2_str(m, buf, o, out);
}

/* Two's complement little-endian bytes: an INT when they fit int64, else a
 * BIGINT holding the shortest such bytes (so equal numbers compare equal). */
static ckpt_status make_long(vm *m, const uint8_t *b, size_t n, ckpt_value **out)
{
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) ||
                     (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
        n--;
    if (n == 0)
        return ckpt__vm_int(m, 0, out);
    if (n <= 8) {
        uint64_t u = (b[n - 1] & 0x80) ? UINT64_MAX : 0;
        for (size_t i = n; i-- > 0;)
            u = (u << 8) | b[i];
        return ckpt__vm_int(m, (int64_t)u, out);
    }
    return ckpt__vm_str(m, CKPT_KIND_BIGINT, b, n, out);
}

/* INT/LONG text: [spaces] [sign] digits [L] [spaces], decimal. Python reads
 * them with int(), so any size is allowed up to CPython's digit limit. */
static ckpt_status parse_decimal(vm *m, const char *s, size_t n, bool allow_l, ckpt_value **out)
{
    while (n && is_space(s[n - 1]))
        n--;
    if (allow_l && n && s[n - 1] == 'L')
        n--;
    while (n && is_space(*s)) {
        s++;
        n--;
    }
    bool neg = false;
    if (n && (*s == '+' || *s == '-')) {
        neg = *s == '-';
        s++;
        n--;
    }
    if (n == 0)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid integer literal");
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid integer literal");
    }
    while (n > 1 && *s == '0') {
        s++;
        n--;
    }
    if (n > MAX_DECIMAL_DIGITS)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT,
                             "integer literal of %zu digits exceeds the limit of %d",
                             n, MAX_DECIMAL_DIGITS);
    uint64_t mag = 0;
    bool big = false;
    for (size_t i = 0; i < n && !big; i++) {
        if (mag > (UINT64_MAX - 9) / 10)
            big = true;
        else
            mag = mag * 10 + (uint64_t)(s[i] - '0');
    }
    if (!big && mag <= (uint64_t)INT64_MAX)
        return ckpt__vm_int(m, neg ? -(int64_t)mag : (int64_t)mag, out);
    if (!big && neg && mag == (uint64_t)INT64_MAX + 1)
        return ckpt__vm_int(m, INT64_MIN, out);

    /* Schoolbook base 10^9 -> 2^32; cheap up to the digit limit. */
    enum { LIMBS = MAX_DECIMAL_DIGITS / 9 + 2 };
    uint32_t limbs[LIMBS];
    size_t nl = 0;
    size_t first = n % 9 ? n % 9 : 9;
    for (size_t i = 0; i < n;) {
        size_t k = i == 0 ? first : 9;
        uint32_t chunk = 0, mul = 1;
        for (size_t j = 0; j < k; j++) {
            chunk = chunk * 10 + (uint32_t)(s[i + j] - '0');
            mul *= 10;
        }
        i += k;
        uint64_t carry = chunk;
        for (size_t j = 0; j < nl; j++) {
            uint64_t t = (uint64_t)limbs[j] * mul + carry;
            limbs[j] = (uint32_t)t;
            carry = t >> 32;
        }
        if (carry)
            limbs[nl++] = (uint32_t)carry;
    }
    uint8_t bytes[LIMBS * 4 + 1];
    size_t nb = nl * 4 + 1;
    for (size_t j = 0; j < nl; j++) {
        for (int k = 0; k < 4; k++)
            bytes[j * 4 + (size_t)k] = (uint8_t)(limbs[j] >> (8 * k));
    }
    bytes[nb - 1] = 0;
    if (neg) {
        unsigned carry = 1;
        for (size_t j = 0; j < nb; j++) {
            unsigned t = (uint8_t)~bytes[j] + carry;
            bytes[j] = (uint8_t)t;
            carry = t >> 8;
        }
    }
    return make_long(m, bytes, nb, out);
}

/* FLOAT text, as repr() writes it: [sign] digits [. digits] [e [sign]
 * digits], inf, nan. Checked here, converted by strtod in the C locale's
 * spelling whatever the host's locale is. */
static ckpt_status parse_float(vm *m, const char *s, size_t n, ckpt_value **out)
{
    if (n == 0 || n >= MAX_FLOAT_TEXT)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    size_t i = 0;
    bool neg = false;
    if (s[i] == '+' || s[i] == '-')
        neg = s[i++] == '-';
    if (ascii_ieq(s + i, n - i, "inf") || ascii_ieq(s + i, n - i, "infinity"))
        return new_float(m, neg ? -INFINITY : INFINITY, out);
    if (ascii_ieq(s + i, n - i, "nan"))
        return new_float(m, neg ? -NAN : NAN, out);
    size_t digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        digits++;
    }
    size_t dot = SIZE_MAX;
    if (i < n && s[i] == '.') {
        dot = i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            digits++;
        }
    }
    if (digits == 0)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t exp_digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            exp_digits++;
        }
        if (exp_digits == 0)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    }
    if (i != n)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid float literal");

    char buf[MAX_FLOAT_TEXT + 16];
    const char *point = localeconv()->decimal_point;
    size_t plen = point ? strlen(point) : 0;
    if (plen == 0 || plen > 8) {
        point = ".";
        plen = 1;
    }
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (k == dot) {
            memcpy(buf + o, point, plen);
            o += plen;
        } else {
            buf[o++] = s[k];
        }
    }
    buf[o] = '\0';
    char *endp;
    double d = strtod(buf, &endp);
    if (endp != buf + o)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    if (isinf(d))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "float literal out of range");
    return new_float(m, d, out);
}

/* GLOBAL and INST: "module\nname\n". */
static ckpt_status read_global(vm *m, ckpt_value **out)
{
    const char *module, *name;
    size_t mlen, nlen;
    CKPT_RETURN_IF_ERROR(read_line(m, &module, &mlen));
    CKPT_RETURN_IF_ERROR(read_line(m, &name, &nlen));
    if (utf8_check((const uint8_t *)module, mlen, false) != mlen ||
        utf8_check((const uint8_t *)name, nlen, false) != nlen)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "module or name is not valid UTF-8");
    return ckpt__vm_resolve_global(m, module, mlen, name, nlen, out);
}

/* ======================================================================
 * The loop
 * ====================================================================== */

static ckpt_status persistent(vm *m, ckpt_value *pid)
{
    ckpt__pickle_ctx *ctx = m->ctx;
    if (!ctx->persistent_load)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "persistent id in a plain pickle");
    ckpt_value *v = NULL;
    ckpt_status st = ctx->persistent_load(ctx->user, ctx, pid, m->op_pos, &v, m->err);
    if (st != CKPT_OK)
        return st;
    if (!v)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "persistent id resolved to nothing");
    if ((ctx->flags & CKPT__PICKLE_PID_DONE) && v->kind == CKPT__KIND_STORAGE && v != pid &&
        recyclable(m, pid))
        release_tuple(m, pid);
    return push(m, v);
}

/* Pushes a fresh container made of the items above the last mark. */
static ckpt_status collect_marked(vm *m, int kind)
{
    size_t mark = 0;
    ckpt_value *v = NULL;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    CKPT_RETURN_IF_ERROR(ckpt__vm_seq(m, kind, m->stack + mark, m->sp - mark, &v));
    if (kind == CKPT_KIND_TUPLE && m->sp > mark)
        v->flags |= CKPT__VF_FRESH;
    m->sp = mark;
    return push(m, v);
}

static ckpt_status collect_tuple(vm *m, size_t n)
{
    ckpt_value *v = NULL;
    CKPT_RETURN_IF_ERROR(need_items(m, n));
    CKPT_RETURN_IF_ERROR(ckpt__vm_seq(m, CKPT_KIND_TUPLE, m->stack + m->sp - n, n, &v));
    if (n)
        v->flags |= CKPT__VF_FRESH;
    m->sp -= n;
    return push(m, v);
}

static ckpt_status op_dict(vm *m)
{
    size_t mark = 0;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    if ((m->sp - mark) % 2)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "odd number of items (%zu)", m->sp - mark);
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_DICT, &d));
    for (size_t i = mark; i < m->sp; i += 2)
        CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, m->stack[i], m->stack[i + 1]));
    m->sp = mark;
    return push(m, d);
}

/* Where APPEND(S)/ADDITEMS (kind LIST or SET) or SETITEM(S) (kind DICT)
 * put their items: c itself when it is such a container; for an inert
 * object (INERT), its own list or dict of items, made on first use. When
 * scanning (NO_FAIL) any other target drops the items: *target is NULL. */
static ckpt_status item_target(vm *m, ckpt_value *c, int kind, const char *op, const char *what,
                               ckpt_value **target)
{
    *target = NULL;
    /* a frozenset has no add(): Python's ADDITEMS fails on it */
    bool frozen = c->kind == CKPT_KIND_SET && (c->flags & CKPT__VF_FROZEN);
    if (kind == CKPT_KIND_DICT ? is_dict(c) : c->kind == kind && !frozen) {
        *target = c;
        return CKPT_OK;
    }
    if (c->kind == CKPT_KIND_OBJECT && (m->ctx->flags & CKPT__PICKLE_INERT)) {
        CKPT_RETURN_IF_ERROR(ckpt__vm_report_use(m, c, CKPT_SCAN_USE_ITEMS));
        ckpt_value **slot = kind == CKPT_KIND_DICT ? &c->u.obj.dict : &c->u.obj.items;
        if (!*slot)
            CKPT_RETURN_IF_ERROR(
                ckpt__vm_value(m, kind == CKPT_KIND_DICT ? CKPT_KIND_DICT : CKPT_KIND_LIST, slot));
        *target = *slot;
        return CKPT_OK;
    }
    if (m->ctx->flags & CKPT__PICKLE_NO_FAIL)
        return ckpt__vm_report_use(m, c, CKPT_SCAN_USE_ITEMS);
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s on a %s is not allowed (only on %s)", op,
                         frozen ? "frozenset" : kind_desc(c), what);
}

/* APPENDS (lists) and ADDITEMS (sets): the items since the mark join the
 * container below it. */
static ckpt_status op_extend(vm *m, int kind, const char *op, const char *what)
{
    size_t mark = 0;
    ckpt_value *seq;
    CKPT_RETURN_IF_ERROR(pop_mark_with_target(m, &mark, &seq));
    CKPT_RETURN_IF_ERROR(item_target(m, seq, kind, op, what, &seq));
    if (seq) {
        CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)seq->u.seq.len + (m->sp - mark)));
        for (size_t i = mark; i < m->sp; i++)
            CKPT_RETURN_IF_ERROR(seq_add(m, seq, m->stack[i]));
    }
    m->sp = mark;
    return CKPT_OK;
}

static ckpt_status op_setitems(vm *m)
{
    size_t mark = 0;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(pop_mark_with_target(m, &mark, &d));
    CKPT_RETURN_IF_ERROR(item_target(m, d, CKPT_KIND_DICT, "SETITEMS", "dicts", &d));
    if ((m->sp - mark) % 2)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "odd number of items (%zu)", m->sp - mark);
    for (size_t i = mark; d && i < m->sp; i += 2)
        CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, m->stack[i], m->stack[i + 1]));
    m->sp = mark;
    return CKPT_OK;
}

static ckpt_status op_stack_global(vm *m)
{
    CKPT_RETURN_IF_ERROR(need_items(m, 2));
    ckpt_value *name = pop(m);
    ckpt_value *module = pop(m);
    if (module->kind != CKPT_KIND_STR || name->kind != CKPT_KIND_STR)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "module and name must be str, not %s and %s",
                             kind_desc(module), kind_desc(name));
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(ckpt__vm_resolve_global(m, module->u.s.ptr, module->u.s.len, name->u.s.ptr,
                                                 name->u.s.len, &v));
    return push(m, v);
}

static ckpt_status op_inst(vm *m)
{
    ckpt_value *cls, *v;
    size_t mark = 0;
    /* the global first: an unsafe name is the finding that matters */
    CKPT_RETURN_IF_ERROR(read_global(m, &cls));
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    CKPT_RETURN_IF_ERROR(ckpt__vm_apply(m, cls, NULL, m->stack + mark, m->sp - mark, NULL,
                                        CKPT_SCAN_USE_INST, &v));
    m->sp = mark;
    return push(m, v);
}

static ckpt_status op_obj(vm *m)
{
    ckpt_value *v;
    size_t mark = 0;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    if (m->sp == mark)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "no class above the MARK");
    CKPT_RETURN_IF_ERROR(ckpt__vm_apply(m, m->stack[mark], NULL, m->stack + mark + 1,
                                        m->sp - mark - 1, NULL, CKPT_SCAN_USE_OBJ, &v));
    m->sp = mark;
    return push(m, v);
}

static ckpt_status op_reduce(vm *m)
{
    CKPT_RETURN_IF_ERROR(need_items(m, 2));
    ckpt_value *args = m->stack[m->sp - 1], *fn = m->stack[m->sp - 2], *v;
    if (args->kind != CKPT_KIND_TUPLE)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the arguments must be a tuple, not a %s",
                             kind_desc(args));
    CKPT_RETURN_IF_ERROR(ckpt__vm_apply(m, fn, args, args->u.seq.items, args->u.seq.len, NULL,
                                        CKPT_SCAN_USE_REDUCE, &v));
    m->sp -= 2;
    if (fn->kind != CKPT_KIND_GLOBAL)
        return push(m, v);
    /* OrderedDict(): a new dict, referred to by the stack alone */
    if (fn->global_id == CKPT__G_ORDERED_DICT && v->kind == CKPT_KIND_ORDERED_DICT)
        v->flags |= CKPT__VF_FRESH;
    /* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
     * backward_hooks) copies what it needs of its arguments into the
     * tensor and drops the hooks */
    if (v->kind == CKPT_KIND_TENSOR && fn->global_id == CKPT__G_REBUILD_TENSOR_V2 &&
        recyclable(m, args)) {
        for (size_t i = 2; i < 4 && i < args->u.seq.len; i++) {
            if (recyclable(m, args->u.seq.items[i]))
                release_tuple(m, args->u.seq.items[i]);
        }
        ckpt_value *hooks = args->u.seq.len > 5 ? args->u.seq.items[5] : NULL;
        if (m->recycle && hooks && hooks->kind == CKPT_KIND_ORDERED_DICT &&
            (hooks->flags & (CKPT__VF_FRESH | CKPT__VF_SHARED)) == CKPT__VF_FRESH &&
            hooks->u.dict.cap == 0 && !hooks->u.dict.state)
            ckpt__arena_release(m->arena, hooks, ckpt__value_size(CKPT_KIND_ORDERED_DICT));
        release_tuple(m, args);
    }
    return push(m, v);
}

static ckpt_status op_newobj(vm *m, bool ex)
{
    CKPT_RETURN_IF_ERROR(need_items(m, ex ? 3 : 2));
    ckpt_value *kwargs = ex ? pop(m) : NULL;
    ckpt_value *args = pop(m), *cls = pop(m), *v;
    if (args->kind != CKPT_KIND_TUPLE)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the arguments must be a tuple, not a %s",
                             kind_desc(args));
    if (kwargs && !is_dict(kwargs))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the keyword arguments must be a dict, not a %s",
                             kind_desc(kwargs));
    CKPT_RETURN_IF_ERROR(ckpt__vm_apply(m, cls, args, args->u.seq.items, args->u.seq.len, kwargs,
                                        ex ? CKPT_SCAN_USE_NEWOBJ_EX : CKPT_SCAN_USE_NEWOBJ, &v));
    return push(m, v);
}

/* ---- Frames --------------------------------------------------------------
 *
 * FRAME n (protocol 4) announces that the next n bytes hold whole opcodes.
 * CPython's pickler writes a frame around every ~64 KiB of opcodes, ends
 * the last one exactly after STOP, and writes a large BINBYTES8,
 * BINUNICODE8 or BYTEARRAY8 outside any frame (it ends the frame first).
 * Readers treat other framings differently, and a stream that reads one
 * way here and another way in torch is how a payload hides, so every
 * framing CPython does not write is refused:
 *
 * (a) A frame must fit in the data. CPython's C unpickler fails on one
 *     that does not ("pickle data was truncated"), the Python one reads
 *     what there is and goes on. FORMAT, or LIMIT when it ends past
 *     max_pickle_bytes.
 * (b) FRAME only when no frame has unread bytes. Python's unpickler
 *     refuses a frame begun inside another; the C one does not care.
 * (c) No argument may run past the end of the frame it starts in: the
 *     fixed-size arguments (BININT, BINGET, the length of BINUNICODE,
 *     FRAME's own, ...), the payloads of counted opcodes (BINUNICODE(8),
 *     BINBYTES(8), BYTEARRAY8, BINSTRING, LONG1/4, ...), and the text lines
 *     of the protocol-0 opcodes (INT, LONG, FLOAT, STRING, UNICODE, GLOBAL,
 *     INST, PERSID, GET, PUT), whose newline must be in the frame. Three
 *     readers give three answers: the C unpickler drops the frame's unread
 *     bytes and reads the argument from the bytes after the frame, the
 *     Python one raises "pickle exhausted before end of frame", a reader of
 *     contiguous bytes reads on. An argument that starts exactly at the
 *     frame's end is outside it: every reader takes it from there.
 * (d) STOP inside a frame: the frame must end right after STOP. Reading
 *     from a file (the legacy format's five pickles, one after another),
 *     CPython's unpickler has read a large frame whole, so the next pickle
 *     starts at the frame's end, not after STOP: bytes in between are what
 *     a reader that stops at STOP takes for the next pickle, and the bytes
 *     after the frame are what torch reads. With CKPT__PICKLE_NO_FAIL the
 *     pickle still returns and ctx->stop_frame_end tells where the frame
 *     ends, so that a scan can read on from both places.
 *
 * A break of (a)-(c) is a FORMAT error. A scan (ctx->framing) is told of
 * the first one and reads on as if there were no frame, as a reader of
 * contiguous bytes does, so that the globals past it are reported too.
 *
 * Opcodes outside any frame (before the first, between frames, after the
 * last) read on from the bytes that follow, as every reader does. The
 * opcode byte itself never crosses a frame's end. NEXT_BUFFER and
 * READONLY_BUFFER take out-of-band buffers, which torch never supplies
 * (pickle.load raises without buffers=): they are refused wherever they
 * are, so their framing never matters. */

static ckpt_status run(vm *m, ckpt_value **result)
{
    const uint8_t *p = NULL;
    const char *line;
    size_t len;
    uint32_t u32;
    uint64_t u64;
    ckpt_value *v;

    for (;;) {
        if (CKPT_UNLIKELY(m->pos >= m->end)) {
            m->op_pos = m->pos;
            if (m->size > m->end)
                return ckpt__fail(m->err, CKPT_ERR_LIMIT, m->ctx->record, m->pos,
                                  "the pickle is larger than max_pickle_bytes (%llu)",
                                  (unsigned long long)m->limits->max_pickle_bytes);
            return ckpt__fail(m->err, CKPT_ERR_FORMAT, m->ctx->record, m->pos,
                              "the pickle ends without a STOP opcode (truncated)");
        }
        m->op_pos = m->pos;
        m->op = m->data[m->pos++];
        if (m->ctx->ops_seen)
            m->ctx->ops_seen[m->op >> 6] |= (uint64_t)1 << (m->op & 63);
        switch (m->op) {
        /* ---- framing and control ---- */
        case OP_PROTO:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            if (u32 > 5)
                return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "pickle protocol %u is not supported",
                                     (unsigned)u32);
            m->ctx->protocol = (int)u32;
            break;
        case OP_FRAME:
            /* rules (a) and (b) of "Frames" above */
            if (m->pos < m->frame_end)
                CKPT_RETURN_IF_ERROR(frame_broken(
                    m, "a new frame begins while the current one has %zu unread bytes (it ends "
                       "at byte %zu): Python's unpickler refuses it, the C one does not",
                    m->frame_end - m->pos, m->frame_end));
            CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            if (u64 > (uint64_t)(m->end - m->pos)) {
                if (m->size > m->end && u64 <= (uint64_t)(m->size - m->pos))
                    return ckpt__vm_fail(m, CKPT_ERR_LIMIT,
                                         "the pickle is larger than max_pickle_bytes (%llu)",
                                         (unsigned long long)m->limits->max_pickle_bytes);
                CKPT_RETURN_IF_ERROR(frame_broken(
                    m, "the frame of %llu bytes runs past the end of the data (%zu bytes left): "
                       "CPython's C unpickler fails on it, the Python one reads on",
                    (unsigned long long)u64, m->end - m->pos));
                break;
            }
            m->frame_end = m->pos + (size_t)u64;
            break;
        case OP_STOP:
            if (m->sp <= fence(m))
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the stack is empty");
            if (CKPT_UNLIKELY(m->pos < m->frame_end)) {
                /* rule (d) */
                if (!(m->ctx->flags & CKPT__PICKLE_NO_FAIL))
                    return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                         "the frame runs %zu byte%s past STOP (to byte %zu): "
                                         "Python's unpickler reading from a file continues "
                                         "after the frame, not after STOP",
                                         m->frame_end - m->pos,
                                         m->frame_end - m->pos == 1 ? "" : "s", m->frame_end);
                m->ctx->stop_frame_end = m->frame_end;
            }
            *result = m->stack[m->sp - 1];
            return CKPT_OK;
        case OP_MARK:
            CKPT_RETURN_IF_ERROR(push_mark(m));
            break;
        case OP_POP:
            if (m->nmarks && m->marks[m->nmarks - 1] == m->sp) {
                m->nmarks--; /* POP right after MARK drops the mark, as CPython */
            } else {
                CKPT_RETURN_IF_ERROR(need_items(m, 1));
                m->sp--;
            }
            break;
        case OP_POP_MARK: {
            size_t mark = 0;
            CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
            m->sp = mark;
            break;
        }
        case OP_DUP:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            m->stack[m->sp - 1]->flags |= CKPT__VF_SHARED;
            CKPT_RETURN_IF_ERROR(push(m, m->stack[m->sp - 1]));
            break;

        /* ---- constants and numbers ---- */
        case OP_NONE:
            CKPT_RETURN_IF_ERROR(new_none(m, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_NEWTRUE:
        case OP_NEWFALSE:
            CKPT_RETURN_IF_ERROR(new_bool(m, m->op == OP_NEWTRUE, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_INT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (len == 2 && line[0] == '0' && (line[1] == '0' || line[1] == '1'))
                CKPT_RETURN_IF_ERROR(new_bool(m, line[1] == '1', &v));
            else
                CKPT_RETURN_IF_ERROR(parse_decimal(m, line, len, false, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(parse_decimal(m, line, len, true, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT:
            CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(ckpt__vm_int(m, (int32_t)u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT1:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            CKPT_RETURN_IF_ERROR(ckpt__vm_int(m, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT2:
            CKPT_RETURN_IF_ERROR(read_arg(m, 2, &p));
            CKPT_RETURN_IF_ERROR(ckpt__vm_int(m, ckpt__le16(p), &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG1:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(make_long(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG4:
            CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            if ((int32_t)u32 < 0)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "negative byte count %d",
                                     (int)(int32_t)u32);
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(make_long(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_FLOAT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(parse_float(m, line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINFLOAT: {
            CKPT_RETURN_IF_ERROR(read_arg(m, 8, &p));
            uint64_t bits = 0;
            double d;
            for (int i = 0; i < 8; i++)
                bits = (bits << 8) | p[i];
            memcpy(&d, &bits, sizeof(d));
            CKPT_RETURN_IF_ERROR(new_float(m, d, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        }

        /* ---- text and bytes ---- */
        case OP_STRING:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(decode_string_literal(m, (const uint8_t *)line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINSTRING:
        case OP_SHORT_BINSTRING:
            if (m->op == OP_BINSTRING) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                if ((int32_t)u32 < 0)
                    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "negative byte count %d",
                                         (int)(int32_t)u32);
            } else {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(py2_str(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_UNICODE:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(decode_raw_unicode_escape(m, (const uint8_t *)line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINUNICODE:
        case OP_SHORT_BINUNICODE:
        case OP_BINUNICODE8: {
            if (m->op == OP_BINUNICODE) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                u64 = u32;
            } else if (m->op == OP_SHORT_BINUNICODE) {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
                u64 = u32;
            } else {
                CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u64, &p));
            size_t bad = utf8_check(p, (size_t)u64, true);
            if (bad != (size_t)u64)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid UTF-8 at byte %zu of the text",
                                     bad);
            CKPT_RETURN_IF_ERROR(ckpt__vm_str(m, CKPT_KIND_STR, p, (size_t)u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        }
        case OP_BINBYTES:
        case OP_SHORT_BINBYTES:
        case OP_BINBYTES8:
        case OP_BYTEARRAY8:
            if (m->op == OP_BINBYTES) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                u64 = u32;
            } else if (m->op == OP_SHORT_BINBYTES) {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
                u64 = u32;
            } else {
                CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u64, &p));
            CKPT_RETURN_IF_ERROR(ckpt__vm_str(m, CKPT_KIND_BYTES, p, (size_t)u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;

        /* ---- containers ---- */
        case OP_EMPTY_LIST:
            CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_LIST, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_EMPTY_DICT:
            CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_DICT, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_EMPTY_SET:
            CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_SET, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_EMPTY_TUPLE:
            CKPT_RETURN_IF_ERROR(collect_tuple(m, 0));
            break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3:
            CKPT_RETURN_IF_ERROR(collect_tuple(m, (size_t)(m->op - OP_TUPLE1 + 1)));
            break;
        case OP_TUPLE:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_KIND_TUPLE));
            break;
        case OP_LIST:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_KIND_LIST));
            break;
        case OP_FROZENSET:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_KIND_SET));
            m->stack[m->sp - 1]->flags |= CKPT__VF_FROZEN;
            break;
        case OP_DICT:
            CKPT_RETURN_IF_ERROR(op_dict(m));
            break;
        case OP_APPEND: {
            CKPT_RETURN_IF_ERROR(need_items(m, 2));
            ckpt_value *item = pop(m), *list = m->stack[m->sp - 1];
            CKPT_RETURN_IF_ERROR(item_target(m, list, CKPT_KIND_LIST, "APPEND", "lists", &list));
            if (list)
                CKPT_RETURN_IF_ERROR(seq_add(m, list, item));
            break;
        }
        case OP_APPENDS:
            CKPT_RETURN_IF_ERROR(op_extend(m, CKPT_KIND_LIST, "APPENDS", "lists"));
            break;
        case OP_SETITEM: {
            CKPT_RETURN_IF_ERROR(need_items(m, 3));
            ckpt_value *val = pop(m), *key = pop(m), *d = m->stack[m->sp - 1];
            CKPT_RETURN_IF_ERROR(item_target(m, d, CKPT_KIND_DICT, "SETITEM", "dicts", &d));
            if (d)
                CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, key, val));
            break;
        }
        case OP_SETITEMS:
            CKPT_RETURN_IF_ERROR(op_setitems(m));
            break;
        case OP_ADDITEMS:
            CKPT_RETURN_IF_ERROR(op_extend(m, CKPT_KIND_SET, "ADDITEMS", "sets"));
            break;

        /* ---- memo ---- */
        case OP_PUT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (!parse_index(line, len, &u64))
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid memo key");
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, u64, m->stack[m->sp - 1]));
            break;
        case OP_BINPUT:
        case OP_LONG_BINPUT:
            if (m->op == OP_BINPUT)
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            else
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, u32, m->stack[m->sp - 1]));
            break;
        case OP_MEMOIZE:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, m->memo_count, m->stack[m->sp - 1]));
            break;
        case OP_GET:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (!parse_index(line, len, &u64))
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "invalid memo key");
            CKPT_RETURN_IF_ERROR(memo_get(m, u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINGET:
        case OP_LONG_BINGET:
            if (m->op == OP_BINGET)
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            else
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(memo_get(m, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;

        /* ---- globals and calls ---- */
        case OP_GLOBAL:
            CKPT_RETURN_IF_ERROR(read_global(m, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_STACK_GLOBAL:
            CKPT_RETURN_IF_ERROR(op_stack_global(m));
            break;
        case OP_REDUCE:
            CKPT_RETURN_IF_ERROR(op_reduce(m));
            break;
        case OP_NEWOBJ:
        case OP_NEWOBJ_EX:
            CKPT_RETURN_IF_ERROR(op_newobj(m, m->op == OP_NEWOBJ_EX));
            break;
        case OP_INST:
            CKPT_RETURN_IF_ERROR(op_inst(m));
            break;
        case OP_OBJ:
            CKPT_RETURN_IF_ERROR(op_obj(m));
            break;
        case OP_BUILD:
            CKPT_RETURN_IF_ERROR(need_items(m, 2));
            v = pop(m);
            CKPT_RETURN_IF_ERROR(ckpt__vm_build(m, m->stack[m->sp - 1], v));
            break;

        /* ---- persistent ids ---- */
        case OP_PERSID:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            for (size_t i = 0; i < len; i++) {
                if ((unsigned char)line[i] >= 0x80)
                    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "persistent id is not ASCII");
            }
            CKPT_RETURN_IF_ERROR(ckpt__vm_str(m, CKPT_KIND_STR, line, len, &v));
            CKPT_RETURN_IF_ERROR(persistent(m, v));
            break;
        case OP_BINPERSID:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(persistent(m, pop(m)));
            break;

        /* ---- refused ---- */
        case OP_EXT1:
        case OP_EXT2:
        case OP_EXT4:
            return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                                 "the extension registry (copyreg) is not supported");
        case OP_NEXT_BUFFER:
        case OP_READONLY_BUFFER:
            return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "out-of-band buffers are not supported");
        default:
            return ckpt__fail(m->err, CKPT_ERR_FORMAT, m->ctx->record, m->op_pos,
                              "unknown opcode 0x%02x", m->op);
        }
    }
}

ckpt_status ckpt__unpickle(ckpt__pickle_ctx *ctx, const uint8_t *data, size_t size,
                           size_t *consumed, ckpt_value **out, ckpt_error *err)
{
    if (consumed)
        *consumed = 0;
    if (out)
        *out = NULL;
    if (!ctx || !ctx->arena || !out || (!data && size))
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, ctx ? ctx->record : "", CKPT_NO_OFFSET,
                          "ckpt__unpickle: NULL argument");
    ctx->protocol = -1;
    ctx->stop_frame_end = 0;

    ckpt_limits defaults;
    const ckpt_limits *limits = ctx->limits;
    if (!limits || limits->struct_size == 0) {
        ckpt_limits_default(&defaults);
        limits = &defaults;
    }
    vm m;
    memset(&m, 0, sizeof(m));
    m.ctx = ctx;
    m.arena = ctx->arena;
    m.limits = limits;
    m.err = err;
    m.data = data ? data : (const uint8_t *)"";
    m.size = size;
    m.end = (uint64_t)size > limits->max_pickle_bytes ? (size_t)limits->max_pickle_bytes : size;
    /* Generous: a real pickle does a few units per byte. */
    m.work_limit = (uint64_t)m.end * 64 + ((uint64_t)1 << 30);

    ckpt_value *result = NULL;
    ckpt_status st;
    /* never NULL: stack + mark is computed even when the stack is empty */
    m.stack_cap = 64;
    m.stack = malloc(m.stack_cap * sizeof(*m.stack));
    if (!m.stack)
        st = ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, 0, "out of memory");
    else {
        m.recycle = memo_scan(&m);
        st = run(&m, &result);
    }
    if (st == CKPT_OK) {
        *out = result;
        if (consumed)
            *consumed = m.pos;
    }
    free(m.stack);
    free(m.marks);
    free(m.memo);
    free(m.memo_read);
    free(m.memo_unread);
    return st;
}

bool ckpt__pickle_detect(const uint8_t *data, uint64_t size)
{
    /* CPython's unpickler reads any opcode it knows first (op_name names
     * every one, protocols 0 to 5); anything else fails at byte 0 */
    return data && size >= 1 && strcmp(op_name(data[0]), "unknown opcode") != 0;
}

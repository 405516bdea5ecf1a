/*
 * error.c - result codes, detailed errors, version.
 */
#include "base.h"

#include <stdio.h>

const char *ckpt_version(void) { return CKPT_VERSION_STRING; }

const char *ckpt_status_name(ckpt_status status)
{
    switch (status) {
    case CKPT_OK: return "CKPT_OK";
    case CKPT_ERR_IO: return "CKPT_ERR_IO";
    case CKPT_ERR_NOMEM: return "CKPT_ERR_NOMEM";
    case CKPT_ERR_FORMAT: return "CKPT_ERR_FORMAT";
    case CKPT_ERR_UNSUPPORTED: return "CKPT_ERR_UNSUPPORTED";
    case CKPT_ERR_UNSAFE: return "CKPT_ERR_UNSAFE";
    case CKPT_ERR_LIMIT: return "CKPT_ERR_LIMIT";
    case CKPT_ERR_CORRUPT: return "CKPT_ERR_CORRUPT";
    case CKPT_ERR_NOT_FOUND: return "CKPT_ERR_NOT_FOUND";
    case CKPT_ERR_INVALID_ARG: return "CKPT_ERR_INVALID_ARG";
    case CKPT_ERR_TYPE: return "CKPT_ERR_TYPE";
    case CKPT_ERR_BUSY: return "CKPT_ERR_BUSY";
    case CKPT_ERR_MISMATCH: return "CKPT_ERR_MISMATCH";
    }
    return "CKPT_ERR_UNKNOWN";
}

ckpt_status ckpt__vfail(ckpt_error *err, ckpt_status status, const char *record,
                        uint64_t offset, const char *fmt, va_list ap)
{
    if (!err)
        return status;
    err->status = status;
    err->offset = offset;
    err->file_offset = CKPT_NO_OFFSET;
    snprintf(err->record, sizeof(err->record), "%s", record ? record : "");
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    return status;
}

ckpt_status ckpt__fail(ckpt_error *err, ckpt_status status, const char *record,
                       uint64_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt__vfail(err, status, record, offset, fmt, ap);
    va_end(ap);
    return status;
}

const char *ckpt__quote(char *buf, size_t cap, const void *p, size_t n, bool apos)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = p;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        bool plain = c >= 0x20 && c < 0x7f && c != '\\' && !(apos && c == '\'');
        size_t need = plain ? 1 : 4;
        if (o + need + 4 > cap) { /* keep room for "..." and the NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (plain) {
            buf[o++] = (char)c;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
    return buf;
}

ckpt_status ckpt__nomem(ckpt_error *err)
{
    return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
}

void ckpt__error_set_file_base(ckpt_error *err, uint64_t base)
{
    if (!err || err->offset == CKPT_NO_OFFSET || base == CKPT_NO_OFFSET)
        return;
    uint64_t abs;
    if (ckpt__add_u64(base, err->offset, &abs))
        err->file_offset = abs;
}

void ckpt__error_prefix_record(ckpt_error *err, const char *prefix)
{
    if (!err || !prefix)
        return;
    char rec[sizeof(err->record)];
    size_t cap = sizeof(rec) - 1, n = 0;
    const char *parts[3] = {prefix, err->record[0] ? ": " : "", err->record};
    for (const char **p = parts; p < parts + 3; p++) {
        size_t len = strlen(*p);
        if (len > cap - n)
            len = cap - n;
        memcpy(rec + n, *p, len);
        n += len;
    }
    rec[n] = 0;
    memcpy(err->record, rec, n + 1);
}

const char *ckpt_error_format(const ckpt_error *err, char *buf, size_t size)
{
    if (!buf || size == 0)
        return buf;
    if (!err) {
        snprintf(buf, size, "no error");
        return buf;
    }
    const char *msg = err->message[0] ? err->message : ckpt_status_name(err->status);
    if (err->record[0] && err->offset != CKPT_NO_OFFSET)
        snprintf(buf, size, "%s at byte %llu: %s", err->record,
                 (unsigned long long)err->offset, msg);
    else if (err->record[0])
        snprintf(buf, size, "%s: %s", err->record, msg);
    else if (err->offset != CKPT_NO_OFFSET)
        snprintf(buf, size, "at byte %llu: %s", (unsigned long long)err->offset, msg);
    else
        snprintf(buf, size, "%s", msg);
    return buf;
}

void ckpt_limits_default(ckpt_limits *limits)
{
    if (!limits)
        return;
    memset(limits, 0, sizeof(*limits));
    limits->struct_size = sizeof(*limits);
    limits->max_pickle_bytes = 1ull << 30;
    limits->max_stack_depth = 1000000;
    limits->max_memo_entries = 1000000;
    limits->max_container_len = 100000000;
    limits->max_value_bytes = 1ull << 30;
    limits->max_nesting = 1000;
    limits->max_ndim = 64;
    limits->max_zip_entries = 1000000;
    limits->max_inflated_bytes = 4ull << 30;
    limits->max_inflate_ratio = 1000;
    limits->max_header_bytes = 100000000;
    limits->max_total_inflated_bytes = 4ull << 30;
    limits->max_output_ratio = 64;
    limits->max_tensor_paths = 250000;
    limits->max_tensor_name_bytes = 64ull << 20;
}

void ckpt_open_options_default(ckpt_open_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
    ckpt_limits_default(&opts->limits);
}

void ckpt_save_options_default(ckpt_save_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
}

/* ---- extensible structs --------------------------------------------- */

size_t ckpt__struct_in(void *dst, size_t size, const void *src)
{
    /* dst holds the defaults. An older caller's struct is shorter: the
     * fields it does not know keep them. A newer caller's is longer: the
     * fields this library does not know are not read. */
    size_t n = 0;
    if (src)
        memcpy(&n, src, sizeof(n));
    size_t take = n < size ? n : size;
    if (take > sizeof(size_t))
        memcpy(dst, src, take);
    memcpy(dst, &size, sizeof(size));
    return n;
}

bool ckpt__struct_out(void *dst, const void *src, size_t size)
{
    size_t n;
    if (!dst)
        return false;
    memcpy(&n, dst, sizeof(n));
    if (n < sizeof(size_t))
        return false;
    if (n > size)
        n = size;
    memcpy(dst, src, n);
    memcpy(dst, &n, sizeof(n));
    return true;
}

void ckpt__save_options_apply(ckpt_save_options *dst, const ckpt_save_options *src)
{
    ckpt_save_options_default(dst);
    ckpt__struct_in(dst, sizeof(*dst), src);
}

void ckpt__limits_apply(ckpt_limits *dst, const ckpt_limits *src)
{
    /* struct_size 0: all defaults */
    ckpt__struct_in(dst, sizeof(*dst), src);
}

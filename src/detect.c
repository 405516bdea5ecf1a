/*
 * detect.c - the pickle torch.load reads from byte 0 of a file ckpt reads
 * as something else.
 *
 * torch.load reads every file that is neither a zip (PK\3\4 at byte 0) nor
 * a tar archive (tar.c) as the legacy format: pickle.load from byte 0,
 * expecting the magic number. A safetensors file, an index, a .npy array
 * can be built so that those bytes are also a pickle that runs code (byte 0
 * of a safetensors file is the low byte of its header length: 'X' makes a
 * string of the next bytes, after which the pickle goes on). ckpt reads
 * such files its own way; this says whether torch's reading matters: the
 * pickle names a global (a real Python name: bytes that read as a pickle by
 * chance name none), or it completes to the legacy magic number, after
 * which torch reads a whole legacy file. A pickle that breaks first, or
 * completes to anything else (torch then stops: "Invalid magic number"),
 * runs nothing. Ordinary files break at once: their first bytes are a
 * small length or a magic that is no pickle.
 */
#include "pickle.h"

#include <stdio.h>

/* 0x1950a86a20f9469cfc6c as the interpreter keeps a BIGINT: the shortest
 * little-endian two's complement bytes, however the pickle wrote it. */
static const uint8_t LEGACY_MAGIC[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                         0x20, 0x6a, 0xa8, 0x50, 0x19};

bool ckpt__is_legacy_magic(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_BIGINT && v->u.s.len == sizeof(LEGACY_MAGIC) &&
           memcmp(v->u.s.ptr, LEGACY_MAGIC, sizeof(LEGACY_MAGIC)) == 0;
}

bool ckpt__python_dotted_name(const char *s, size_t n)
{
    if (n == 0 || n > 200)
        return false;
    bool start = true;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        bool digit = c >= '0' && c <= '9';
        if (c == '.' && !start) {
            start = true;
            continue;
        }
        if (!(alpha || (digit && !start)))
            return false;
        start = false;
    }
    return !start;
}

static ckpt_status seen_global(void *user, const char *module, size_t mlen, const char *name,
                               size_t nlen, const ckpt_value *v, uint64_t offset)
{
    ckpt__byte0 *b = user;
    (void)v;
    if (!ckpt__python_dotted_name(module, mlen) || !ckpt__python_dotted_name(name, nlen))
        return CKPT_OK;
    b->matters = true;
    b->offset = offset;
    snprintf(b->global, sizeof(b->global), "%.*s.%.*s", (int)(mlen > 78 ? 78 : mlen), module,
             (int)(nlen > 78 ? 78 : nlen), name);
    return CKPT_ERR_UNSAFE; /* found: no need to read on */
}

void ckpt__pickle_at_zero(const uint8_t *data, uint64_t size, const ckpt_limits *limits,
                          ckpt__byte0 *out)
{
    memset(out, 0, sizeof(*out));
    if (size == 0)
        return;
    ckpt__arena arena;
    ckpt__arena_init(&arena, limits->max_value_bytes);
    ckpt__pickle_ctx ctx = {
        .limits = limits,
        .arena = &arena,
        .record = "pickle",
        .user = out,
        .protocol = -1,
        /* nothing is called; no persistent_load: plain pickle.load has none */
        .flags = CKPT__PICKLE_INERT | CKPT__PICKLE_NO_FAIL,
        .on_global = seen_global,
    };
    size_t consumed = 0;
    ckpt_value *v = NULL;
    ckpt_error err;
    size_t n = size > SIZE_MAX ? SIZE_MAX : (size_t)size;
    ckpt_status st = ckpt__unpickle(&ctx, data, n, &consumed, &v, &err);
    if (st == CKPT_OK && !out->matters && ckpt__is_legacy_magic(v)) {
        out->matters = true;
        out->magic = true;
        out->offset = consumed ? consumed - 1 : 0;
    }
    ckpt__arena_free(&arena);
}

/*
 * tar.c - tar archives as Python's tarfile reads them.
 *
 * torch.load tries tarfile.open(f, mode="r:") on every file that is not a
 * zip (the pre-0.4 torch.save format) before it reads the legacy pickle
 * from byte 0, so whatever tarfile takes for an archive is one for torch,
 * "ustar" magic or not. These are tarfile's rules (Python 3.8 to 3.13),
 * followed exactly:
 *
 * - A header is 512 bytes: name[0,100) mode[100,108) uid[108,116)
 *   gid[116,124) size[124,136) mtime[136,148) chksum[148,156) type[156]
 *   linkname[157,257) magic[257,263) ... devmajor[329,337)
 *   devminor[337,345) prefix[345,500). No magic is needed (V7 headers have
 *   none). A block of 512 NULs ends the archive.
 * - Every number field reads as nti(): a first byte 0x80 (0xff) makes the
 *   rest a big-endian base-256 number (0xff: negative); otherwise the bytes
 *   up to the first NUL must be ASCII and int(text.strip() or "0", 8) must
 *   take them (sign, "0o" prefix and single underscores included). The
 *   checksum must equal 256 plus the sum of the other 504 bytes, taken
 *   unsigned or signed. chksum, mode, uid, gid, size, mtime, devmajor,
 *   devminor (and a sparse header's sparse fields) must all parse: any
 *   failure is "invalid header".
 * - The member's name is the name field up to its NUL, "prefix/name" when
 *   the prefix field is not empty (except for GNU types L, K, S); a type
 *   NUL with a name ending in '/' is a directory, whose name loses its
 *   trailing slashes. A GNU long name ('L') or a pax header ('x', 'X', and
 *   the global 'g': keywords path and size) changes the next member.
 * - Regular members ('0', NUL, '7') and unknown types have size bytes of
 *   data, padded to 512; the other types have none, whatever their size.
 * - tarfile reads the first header when it opens the archive and all the
 *   others at the first lookup, before torch extracts anything. An invalid
 *   first header (or one that ends the file early) makes tarfile.open fail
 *   and torch.load read the file as a pickle from byte 0; a later invalid,
 *   short or zero header ends the archive quietly. A member whose padded
 *   data runs past the end of the file, or a long name or pax header not
 *   followed by a valid header, raises ReadError at that lookup: torch.load
 *   then falls back to the pickle from byte 0 too.
 *
 * What ckpt does not follow (GNU sparse members, pax sparse keywords,
 * negative sizes, sizes in non-ASCII digits, chains of extended headers
 * more than 16 deep) stops the walk, said as such.
 */
#include "format.h"

#include <stdio.h>

#define TAR_BLOCK 512u
#define TAR_MAX_CHAIN 16 /* extended headers before one member */

/* ---- number fields --------------------------------------------------- */

typedef struct tar_num {
    bool ok;    /* it parses (else tarfile: "invalid header") */
    bool neg;   /* below zero */
    bool big;   /* at least 2^63 (v is then meaningless) */
    int64_t v;  /* the value (for 8-byte fields always exact) */
} tar_num;

/* str.isspace() of an ASCII character. */
static bool py_space(uint8_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* What int() skips around the digits (Py_ISSPACE). */
static bool c_space(uint8_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/*
 * int(text, base) for ASCII text already stripped, base 8 or 10: a sign,
 * for base 8 an optional "0o" prefix (one underscore may follow it),
 * digits with single underscores between them, then nothing but spaces.
 */
static bool py_int(const uint8_t *s, size_t n, unsigned base, tar_num *r)
{
    size_t p = 0;
    uint64_t v = 0;
    if (p < n && (s[p] == '+' || s[p] == '-'))
        r->neg = s[p++] == '-';
    if (base == 8 && p + 1 < n && s[p] == '0' && (s[p + 1] == 'o' || s[p + 1] == 'O')) {
        p += 2;
        if (p < n && s[p] == '_')
            p++;
    }
    if (p < n && s[p] == '_')
        return false;
    size_t digits = 0;
    uint8_t prev = 0;
    for (; p < n && ((s[p] >= '0' && s[p] < '0' + base) || s[p] == '_'); p++) {
        if (s[p] == '_') {
            if (prev == '_')
                return false;
        } else {
            digits++;
            if (v > (uint64_t)INT64_MAX / base)
                r->big = true;
            else
                v = v * base + (uint64_t)(s[p] - '0');
        }
        prev = s[p];
    }
    if (prev == '_' || digits == 0)
        return false;
    while (p < n && c_space(s[p]))
        p++;
    if (p != n)
        return false;
    if (v > (uint64_t)INT64_MAX)
        r->big = true;
    r->v = r->big ? 0 : (r->neg ? -(int64_t)v : (int64_t)v);
    if (r->v == 0)
        r->neg = false; /* -0 */
    return true;
}

/* tarfile's nti() of an n-byte field (n is 8 or 12). */
static tar_num nti(const uint8_t *s, size_t n)
{
    tar_num r = {0};
    if (s[0] == 0x80 || s[0] == 0xff) {
        uint64_t v = 0;
        for (size_t i = 1; i < n; i++) {
            if (v > (uint64_t)INT64_MAX >> 8)
                r.big = true;
            v = (v << 8) | s[i];
        }
        r.ok = true;
        if (s[0] == 0xff) {
            /* -(256^(n-1) - v): below zero whatever v is */
            r.neg = true;
            r.big = false;
            r.v = n - 1 <= 7 ? -(int64_t)(((uint64_t)1 << (8 * (n - 1))) - v) : INT64_MIN;
        } else {
            r.v = r.big ? 0 : (int64_t)v;
        }
        return r;
    }
    size_t len = 0;
    while (len < n && s[len])
        len++;
    for (size_t i = 0; i < len; i++) {
        if (s[i] >= 0x80)
            return r; /* not ASCII */
    }
    size_t a = 0, b = len;
    while (a < b && py_space(s[a]))
        a++;
    while (b > a && py_space(s[b - 1]))
        b--;
    if (a == b) {
        r.ok = true; /* "0" */
        return r;
    }
    r.ok = py_int(s + a, b - a, 8, &r);
    return r;
}

/* ---- headers --------------------------------------------------------- */

static bool all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i])
            return false;
    }
    return true;
}

/* TarInfo.frombuf: is this block a header, the end, or invalid? *size gets
 * the size field. */
static ckpt__tar_block header_check(const uint8_t *b, tar_num *size)
{
    if (all_zero(b, TAR_BLOCK))
        return CKPT__TAR_BLOCK_ZERO;
    tar_num ck = nti(b + 148, 8);
    if (!ck.ok)
        return CKPT__TAR_BLOCK_INVALID;
    int64_t sum_u = 256, sum_s = 256;
    for (size_t i = 0; i < TAR_BLOCK; i++) {
        if (i >= 148 && i < 156)
            continue;
        sum_u += b[i];
        sum_s += (int8_t)b[i];
    }
    if (ck.big || (ck.v != sum_u && ck.v != sum_s))
        return CKPT__TAR_BLOCK_INVALID;
    static const struct {
        uint16_t at, len;
    } fields[] = {{100, 8}, {108, 8}, {116, 8}, {124, 12}, {136, 12}, {329, 8}, {337, 8}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        tar_num t = nti(b + fields[i].at, fields[i].len);
        if (!t.ok)
            return CKPT__TAR_BLOCK_INVALID;
        if (fields[i].at == 124)
            *size = t;
    }
    if (b[156] == 'S') {
        /* the old GNU sparse map: four (offset, size) pairs and the real size */
        for (size_t at = 386; at < 482; at += 12) {
            if (!nti(b + at, 12).ok)
                return CKPT__TAR_BLOCK_INVALID;
        }
        if (!nti(b + 483, 12).ok)
            return CKPT__TAR_BLOCK_INVALID;
    }
    return CKPT__TAR_BLOCK_HEADER;
}

ckpt__tar_block ckpt__tar_header(const uint8_t *block)
{
    tar_num size;
    return header_check(block, &size);
}

ckpt__tar_block ckpt__tar_detect(const uint8_t *data, uint64_t size)
{
    if (size < TAR_BLOCK)
        return CKPT__TAR_BLOCK_INVALID; /* tarfile: "truncated header" */
    return ckpt__tar_header(data);
}

/* ---- the walk -------------------------------------------------------- */

enum {
    R_OK,
    R_EOF,        /* a zero block */
    R_INVALID,    /* InvalidHeaderError */
    R_SHORT,      /* EmptyHeaderError, TruncatedHeaderError */
    R_READERROR,  /* ReadError: tarfile fails */
    R_UNFOLLOWED, /* ckpt does not follow this */
};

typedef struct tar_walk {
    const uint8_t *d;
    uint64_t size;
    uint64_t offset;            /* tarfile.offset: where the next header starts */
    uint64_t pos;               /* the file's position */
    /* tarfile.pax_headers: what global headers set */
    const uint8_t *g_path;
    size_t g_path_len;
    bool has_g_path, has_g_size, g_size_big;
    uint64_t g_size;
    ckpt__tar_end *end;
    char name[400];             /* "prefix/name" */
} tar_walk;

static int stop(tar_walk *w, int r, uint64_t at, const char *why)
{
    w->end->offset = at;
    snprintf(w->end->why, sizeof(w->end->why), "%s", why);
    return r;
}

/* TarInfo._block: size rounded up to whole blocks (saturated). */
static uint64_t blocks_of(uint64_t n)
{
    if (n > UINT64_MAX - (TAR_BLOCK - 1))
        return UINT64_MAX;
    return (n + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return ckpt__add_u64(a, b, &r) ? r : UINT64_MAX;
}

/* isreg() or a type tarfile does not know: data follows the header. */
static bool has_data(uint8_t type)
{
    if (type == '0' || type == 0 || type == '7')
        return true;
    return memchr("123456LKS", type, 9) == NULL;
}

static size_t nts_len(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i])
        i++;
    return i;
}

static void rstrip_slashes(ckpt__tar_member *m)
{
    while (m->name_len && m->name[m->name_len - 1] == '/')
        m->name_len--;
}

/* int(value) of a pax size, or 0 when int() refuses it (as tarfile does).
 * false when ckpt does not follow it (non-ASCII text, below zero). */
static bool pax_size(const uint8_t *s, size_t n, uint64_t *out, bool *big)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0x80)
            return false; /* int() takes any Unicode digit */
    }
    size_t a = 0, b = n;
    while (a < b && py_space(s[a]))
        a++;
    while (b > a && py_space(s[b - 1]))
        b--;
    tar_num r = {0};
    *big = false;
    if (a == b || !py_int(s + a, b - a, 10, &r)) {
        *out = 0;
        return true;
    }
    if (r.neg)
        return false;
    *big = r.big;
    *out = r.big ? UINT64_MAX : (uint64_t)r.v;
    return true;
}

/* The records of a pax header (TarInfo._proc_pax): "%d %s=%s\n" each. */
typedef struct pax_values {
    const uint8_t *path;
    size_t path_len;
    bool has_path, has_size, size_big;
    uint64_t size;
} pax_values;

static int pax_parse(tar_walk *w, const uint8_t *buf, size_t n, uint64_t at, pax_values *pv)
{
    size_t pos = 0;
    memset(pv, 0, sizeof(*pv));
    while (pos < n && buf[pos] != 0) {
        size_t d = 0;
        uint64_t length = 0;
        while (d < 20 && pos + d < n && buf[pos + d] >= '0' && buf[pos + d] <= '9') {
            length = length * 10 + (uint64_t)(buf[pos + d] - '0');
            d++;
        }
        if (d == 0 || pos + d >= n || buf[pos + d] != ' ')
            return R_INVALID;
        if (length < 5 || length > n - pos)
            return R_INVALID;
        size_t kv = pos + d + 1, last = pos + (size_t)length - 1;
        if (kv > last || buf[last] != '\n')
            return R_INVALID;
        const uint8_t *eq = memchr(buf + kv, '=', last - kv);
        if (!eq || eq == buf + kv)
            return R_INVALID;
        const uint8_t *key = buf + kv, *val = eq + 1;
        size_t klen = (size_t)(eq - key), vlen = (size_t)(buf + last - val);
        if (klen == 4 && memcmp(key, "path", 4) == 0) {
            pv->path = val;
            pv->path_len = vlen;
            pv->has_path = true;
        } else if (klen == 4 && memcmp(key, "size", 4) == 0) {
            if (!pax_size(val, vlen, &pv->size, &pv->size_big))
                return stop(w, R_UNFOLLOWED, at, "a pax size ckpt does not follow");
            pv->has_size = true;
        } else if (klen >= 11 && memcmp(key, "GNU.sparse.", 11) == 0) {
            return stop(w, R_UNFOLLOWED, at, "a GNU sparse member");
        }
        pos += (size_t)length;
    }
    return R_OK;
}

static int from_tarfile(tar_walk *w, ckpt__tar_member *m, unsigned depth);

/* The header after a long name or pax header: any header error there is
 * tarfile's SubsequentHeaderError, a ReadError. */
static int subsequent(tar_walk *w, ckpt__tar_member *m, unsigned depth, uint64_t at)
{
    if (depth >= TAR_MAX_CHAIN)
        return stop(w, R_UNFOLLOWED, at, "more than 16 extended headers in a row");
    uint64_t next = w->pos;
    int r = from_tarfile(w, m, depth + 1);
    if (r == R_EOF || r == R_INVALID || r == R_SHORT)
        return stop(w, R_READERROR, next,
                    "no valid header after a GNU long name or pax header");
    return r;
}

static int from_tarfile(tar_walk *w, ckpt__tar_member *m, unsigned depth)
{
    uint64_t at = w->pos;
    if (w->pos >= w->size)
        return R_SHORT;
    if (w->size - w->pos < TAR_BLOCK) {
        w->pos = w->size;
        return R_SHORT;
    }
    const uint8_t *b = w->d + w->pos;
    w->pos += TAR_BLOCK;
    tar_num size = {0};
    ckpt__tar_block k = header_check(b, &size);
    if (k == CKPT__TAR_BLOCK_ZERO)
        return R_EOF;
    if (k == CKPT__TAR_BLOCK_INVALID)
        return R_INVALID;
    if (size.neg)
        return stop(w, R_UNFOLLOWED, at, "a member of negative size");
    uint8_t type = b[156];
    memset(m, 0, sizeof(*m));
    m->header_offset = at;
    m->size = size.big ? UINT64_MAX : (uint64_t)size.v;
    m->size_big = size.big;
    /* frombuf: the name, a directory by its slash, the prefix */
    size_t nlen = nts_len(b, 100);
    if (type == 0 && nlen && b[nlen - 1] == '/')
        type = '5';
    m->type = type;
    m->name = b;
    m->name_len = nlen;
    if (type == '5')
        rstrip_slashes(m);
    size_t plen = nts_len(b + 345, 155);
    if (plen && type != 'L' && type != 'K' && type != 'S') {
        memcpy(w->name, b + 345, plen);
        w->name[plen] = '/';
        memcpy(w->name + plen + 1, m->name, m->name_len);
        m->name = (const uint8_t *)w->name;
        m->name_len += plen + 1;
        m->name_joined = true;
    }
    if (type == 'S')
        return stop(w, R_UNFOLLOWED, at, "a GNU sparse member");

    if (type == 'L' || type == 'K') {
        /* _proc_gnulong: the data is the next member's name (or link) */
        uint64_t want = blocks_of(m->size), left = w->size - w->pos;
        size_t got = (size_t)(want < left ? want : left);
        const uint8_t *buf = w->d + w->pos;
        w->pos += got;
        int r = subsequent(w, m, depth, at);
        if (r != R_OK)
            return r;
        if (type == 'L') {
            m->name = buf;
            m->name_joined = false;
            m->name_len = nts_len(buf, got);
            if (m->type == '5' && m->name_len && m->name[m->name_len - 1] == '/')
                m->name_len--;
        }
        m->header_offset = at;
        return R_OK;
    }

    if (type == 'x' || type == 'X' || type == 'g') {
        /* _proc_pax */
        uint64_t want = blocks_of(m->size), left = w->size - w->pos;
        size_t got = (size_t)(want < left ? want : left);
        const uint8_t *buf = w->d + w->pos;
        w->pos += got;
        pax_values pv;
        int r = pax_parse(w, buf, got, at, &pv);
        if (r != R_OK)
            return r;
        if (type == 'g') {
            if (pv.has_path) {
                w->g_path = pv.path;
                w->g_path_len = pv.path_len;
                w->has_g_path = true;
            }
            if (pv.has_size) {
                w->g_size = pv.size;
                w->g_size_big = pv.size_big;
                w->has_g_size = true;
            }
        }
        r = subsequent(w, m, depth, at);
        if (r != R_OK || type == 'g')
            return r;
        /* the copy of the global values with this header's over them */
        if (!pv.has_path && w->has_g_path) {
            pv.path = w->g_path;
            pv.path_len = w->g_path_len;
            pv.has_path = true;
        }
        if (!pv.has_size && w->has_g_size) {
            pv.size = w->g_size;
            pv.size_big = w->g_size_big;
            pv.has_size = true;
        }
        if (pv.has_path) {
            m->name = pv.path;
            m->name_joined = false;
            m->name_len = pv.path_len;
            rstrip_slashes(m);
        }
        if (pv.has_size) {
            m->size = pv.size;
            m->size_big = pv.size_big;
            w->offset = m->data_offset;
            if (has_data(m->type))
                w->offset = sat_add(w->offset, blocks_of(m->size));
        }
        m->header_offset = at;
        return R_OK;
    }

    /* _proc_builtin: the next header follows the data (by the header's
     * size, before any pax value applies) */
    m->data_offset = w->pos;
    w->offset = w->pos;
    if (has_data(type))
        w->offset = sat_add(w->offset, blocks_of(m->size));
    if (w->has_g_path) {
        m->name = w->g_path;
        m->name_joined = false;
        m->name_len = w->g_path_len;
        rstrip_slashes(m);
    }
    if (w->has_g_size) {
        m->size = w->g_size;
        m->size_big = w->g_size_big;
    }
    if (type == '5')
        rstrip_slashes(m);
    return R_OK;
}

ckpt_status ckpt__tar_walk(const uint8_t *data, uint64_t size, uint64_t max_members,
                           ckpt__tar_member_fn fn, void *user, ckpt__tar_end *end)
{
    tar_walk w = {.d = data, .size = size, .end = end};
    memset(end, 0, sizeof(*end));
    end->kind = CKPT__TAR_END;
    for (uint64_t count = 0;; count++) {
        /* TarFile.next: the previous member's data must be in the file */
        if (w.offset != w.pos) {
            if (w.offset - 1 >= size) {
                end->kind = CKPT__TAR_FALLBACK;
                end->offset = w.pos;
                snprintf(end->why, sizeof(end->why),
                         "the member's data runs past the end of the file");
                return CKPT_OK;
            }
            w.pos = w.offset;
        }
        bool first = w.offset == 0;
        if (count >= max_members) {
            end->kind = CKPT__TAR_LIMIT;
            end->offset = w.pos;
            snprintf(end->why, sizeof(end->why), "more than %llu members",
                     (unsigned long long)max_members);
            return CKPT_OK;
        }
        ckpt__tar_member m;
        uint64_t at = w.pos;
        int r = from_tarfile(&w, &m, 0);
        switch (r) {
        case R_OK:
            CKPT_RETURN_IF_ERROR(fn(user, &m));
            continue;
        case R_EOF:
            end->offset = at;
            return CKPT_OK;
        case R_INVALID:
        case R_SHORT:
            end->offset = at;
            if (first) {
                end->kind = CKPT__TAR_FALLBACK;
                snprintf(end->why, sizeof(end->why), "the first header does not read");
            }
            return CKPT_OK;
        case R_READERROR:
            end->kind = CKPT__TAR_FALLBACK;
            return CKPT_OK;
        default:
            end->kind = CKPT__TAR_UNFOLLOWED;
            return CKPT_OK;
        }
    }
}

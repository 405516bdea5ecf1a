/*
 * scan_zip.c - the scanner's own walk of zip archives and the torch zip
 * format on top of it.
 *
 * The reader (zip_read.c) refuses every archive two zip readers could see
 * differently; a scan must instead read such an archive the ways those
 * readers do and say where they disagree. So this walk is lenient and
 * bounded: it finds the end record as miniz (torch) does, takes the
 * central directory where it is (also behind prepended bytes, as Python's
 * zipfile does), checks each local header against its central record, and
 * accounts for every byte of the file. Each finding names the trick it
 * serves: duplicate names, local/central name mismatch, encryption and
 * patch flags, CRC mismatches, bytes outside the entries, entries hidden
 * from the central directory, archives inside the archive, extra pickles.
 *
 * Then the torch format: the prefix from the first central entry, every
 * copy of data.pkl scanned with its storages looked up (never read), the
 * TorchScript records, and every other record that is a pickle.
 */
#include "scan.h"

#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>

#define SIG_LOCAL 0x04034b50u       /* PK\3\4 */
#define SIG_CENTRAL 0x02014b50u     /* PK\1\2 */
#define SIG_EOCD 0x06054b50u        /* PK\5\6 */
#define SIG_ZIP64_EOCD 0x06064b50u  /* PK\6\6 */
#define SIG_ZIP64_LOC 0x07064b50u   /* PK\6\7 */
#define SIG_DESCRIPTOR 0x08074b50u  /* PK\7\8 */

#define LOCAL_SIZE 30u
#define CENTRAL_SIZE 46u
#define EOCD_SIZE 22u
#define MAX_COMMENT 65535u

#define FLAG_ENCRYPTED 0x1u
#define FLAG_DESCRIPTOR 0x8u
#define FLAG_PATCHED 0x20u
#define FLAG_STRONG 0x40u

#define MAX_GAPS 64                  /* stray byte ranges reported per archive */
#define PROBE_MAX ((uint64_t)16 << 20) /* larger stored records are read only when pickles */
#define STORAGE_INFLATE_MAX ((uint64_t)64 << 10) /* deflated storage records probed */

typedef struct zentry {
    const char *name;          /* arena copy, NUL added; may hold NUL bytes */
    size_t name_len;
    uint64_t central_at;       /* its central record, CKPT_NO_OFFSET from a local walk */
    uint64_t header_offset;    /* local header (after any shift) */
    uint64_t data_offset;
    uint64_t comp_size, size;
    uint64_t len;              /* bytes entry_bytes gave: stored comp_size, or size */
    uint64_t end;              /* header + data + descriptor */
    uint32_t crc;
    uint16_t method, flags;
    bool local_ok;             /* the local header is there and its data in the file */
    bool referenced;           /* a storage of a data.pkl: never read */
    bool handled;              /* read (or deliberately skipped) by the torch pass */
} zentry;

typedef struct zscan {
    scan_ctx *s;
    const uint8_t *data;
    uint64_t size;
    const char *where;
    uint64_t base;
    bool top;
    zentry *e;
    size_t n;
    uint32_t *by_name;
    ckpt__arena names;
    const char *prefix;        /* archive prefix without '/', NULL: records at the root */
    size_t plen;
    uint64_t cd_start, cd_size, cd_end;   /* central directory where it really is */
    uint64_t eocd_pos, eocd_end;
    bool have_eocd, have_cd, torchscript;
    unsigned gaps;
} zscan;

static unsigned long long ull(uint64_t v) { return (unsigned long long)v; }

static bool range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
    uint64_t end;
    return ckpt__add_u64(off, len, &end) && end <= limit;
}

/* "where" + quoted name, for findings. */
static const char *rec_of(const zscan *z, const char *name, size_t len, char *buf, size_t cap)
{
    char q[200];
    snprintf(buf, cap, "%s%s", z->where ? z->where : "",
             ckpt__quote(q, sizeof(q), name, len, false));
    return buf;
}

static const char *erec(const zscan *z, const zentry *e, char *buf, size_t cap)
{
    return rec_of(z, e->name, e->name_len, buf, cap);
}

static const char *zrec(const zscan *z, char *buf, size_t cap)
{
    snprintf(buf, cap, "%szip", z->where ? z->where : "");
    return buf;
}

static ckpt_status zadd(zscan *z, ckpt_scan_kind kind, const char *record, uint64_t off,
                        const char *fmt, ...) CKPT_PRINTF(5, 6);

/* A finding at a position of the archive (off is inside the archive). */
static ckpt_status zadd(zscan *z, ckpt_scan_kind kind, const char *record, uint64_t off,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt_status st = ckpt__scan_vadd(z->s, kind, record, off, ckpt__scan_at(z->base, off), fmt, ap);
    va_end(ap);
    return st;
}

/* ---- the end record and the central directory ------------------------- */

/* The last end record in the final 64 KiB, as miniz finds it. */
static bool find_eocd(const uint8_t *data, uint64_t size, uint64_t *pos)
{
    if (size < EOCD_SIZE)
        return false;
    uint64_t last = size - EOCD_SIZE;
    uint64_t first = last > MAX_COMMENT ? last - MAX_COMMENT : 0;
    for (uint64_t p = last + 1; p-- > first;) {
        if (ckpt__le32(data + p) == SIG_EOCD) {
            *pos = p;
            return true;
        }
    }
    return false;
}

typedef struct zdir {
    uint64_t count, cd_size, cd_offset, cd_end;
} zdir;

/* Reads the end records (ZIP64 ones when a locator is there). */
static ckpt_status read_end(zscan *z, zdir *d, bool *ok)
{
    char rec[256];
    zrec(z, rec, sizeof(rec));
    const uint8_t *e = z->data + z->eocd_pos;
    *ok = false;
    uint64_t comment_end = z->eocd_pos + EOCD_SIZE + ckpt__le16(e + 20);
    if (comment_end > z->size) {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, z->eocd_pos + 20,
                                  "the end record's comment runs %llu bytes past the end of the "
                                  "file", ull(comment_end - z->size)));
        comment_end = z->size;
    }
    z->eocd_end = comment_end;
    d->count = ckpt__le16(e + 10);
    d->cd_size = ckpt__le32(e + 12);
    d->cd_offset = ckpt__le32(e + 16);
    d->cd_end = z->eocd_pos;
    if (ckpt__le16(e + 4) != 0 && ckpt__le16(e + 4) != 0xFFFF)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, z->eocd_pos + 4,
                                  "a multi-disk archive: torch.load refuses it"));
    if (z->eocd_pos >= 20 && ckpt__le32(z->data + z->eocd_pos - 20) == SIG_ZIP64_LOC) {
        uint64_t loc = z->eocd_pos - 20;
        uint64_t rp = ckpt__le64(z->data + loc + 8);
        if (!range_ok(rp, 56, loc) || ckpt__le32(z->data + rp) != SIG_ZIP64_EOCD) {
            /* prepended bytes shift it: look right before the locator */
            if (loc >= 56 && ckpt__le32(z->data + loc - 56) == SIG_ZIP64_EOCD) {
                rp = loc - 56;
            } else {
                CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, loc,
                                          "the ZIP64 locator points to no ZIP64 end record"));
                *ok = d->count != 0xFFFF && d->cd_size != 0xFFFFFFFFu &&
                      d->cd_offset != 0xFFFFFFFFu;
                return CKPT_OK;
            }
        }
        d->count = ckpt__le64(z->data + rp + 32);
        d->cd_size = ckpt__le64(z->data + rp + 40);
        d->cd_offset = ckpt__le64(z->data + rp + 48);
        d->cd_end = rp;
    }
    *ok = true;
    return CKPT_OK;
}

/* Parses the extra field for ZIP64 values the header defers. */
static void zip64_extra(const uint8_t *p, uint32_t len, bool want_size, bool want_comp,
                        bool want_off, uint64_t *size, uint64_t *comp, uint64_t *off)
{
    uint32_t pos = 0;
    while (len - pos >= 4) {
        uint16_t id = ckpt__le16(p + pos), n = ckpt__le16(p + pos + 2);
        if (n > len - pos - 4)
            return;
        if (id == 1) {
            const uint8_t *f = p + pos + 4;
            uint32_t left = n;
            if (want_size && left >= 8) {
                *size = ckpt__le64(f);
                f += 8;
                left -= 8;
            }
            if (want_comp && left >= 8) {
                *comp = ckpt__le64(f);
                f += 8;
                left -= 8;
            }
            if (want_off && left >= 8)
                *off = ckpt__le64(f);
            return;
        }
        pos += 4u + n;
    }
}

static ckpt_status add_entry(zscan *z, size_t *cap, zentry **out)
{
    if (z->n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        zentry *p = realloc(z->e, c * sizeof(*p));
        if (!p)
            return ckpt__nomem(z->s->err);
        z->e = p;
        *cap = c;
    }
    *out = &z->e[z->n++];
    memset(*out, 0, sizeof(**out));
    return CKPT_OK;
}

static ckpt_status copy_name(zscan *z, zentry *e, const uint8_t *name, size_t len)
{
    char *p = ckpt__arena_strdup(&z->names, (const char *)name, len);
    if (!p)
        return ckpt__nomem(z->s->err);
    e->name = p;
    e->name_len = len;
    return CKPT_OK;
}

/* The central records, as many as fit and parse (bounded by the limits). */
static ckpt_status read_central(zscan *z, const zdir *d, int64_t shift)
{
    char rec[256];
    zrec(z, rec, sizeof(rec));
    size_t cap = 0;
    uint64_t pos = z->cd_start, stop = z->cd_start + z->cd_size;
    while (pos < stop) {
        if (z->n >= z->s->limits.max_zip_entries)
            return zadd(z, CKPT_SCAN_KIND_LIMIT, rec, pos,
                        "more entries than max_zip_entries (%llu): the rest are not checked",
                        ull(z->s->limits.max_zip_entries));
        if (stop - pos < CENTRAL_SIZE || ckpt__le32(z->data + pos) != SIG_CENTRAL)
            return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, pos,
                        "central directory record %zu is not where the directory says: "
                        "readers that trust the count read something else", z->n);
        const uint8_t *p = z->data + pos;
        uint16_t nlen = ckpt__le16(p + 28), xlen = ckpt__le16(p + 30), clen = ckpt__le16(p + 32);
        uint64_t rlen = (uint64_t)CENTRAL_SIZE + nlen + xlen + clen;
        if (rlen > stop - pos)
            return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, pos,
                        "central directory record %zu runs past the directory", z->n);
        zentry *e = NULL;
        CKPT_RETURN_IF_ERROR(add_entry(z, &cap, &e));
        CKPT_RETURN_IF_ERROR(copy_name(z, e, p + CENTRAL_SIZE, nlen));
        e->central_at = pos;
        e->flags = ckpt__le16(p + 8);
        e->method = ckpt__le16(p + 10);
        e->crc = ckpt__le32(p + 16);
        uint32_t comp32 = ckpt__le32(p + 20), size32 = ckpt__le32(p + 24);
        uint32_t off32 = ckpt__le32(p + 42);
        e->comp_size = comp32;
        e->size = size32;
        uint64_t off = off32;
        zip64_extra(p + CENTRAL_SIZE + nlen, xlen, size32 == 0xFFFFFFFFu, comp32 == 0xFFFFFFFFu,
                    off32 == 0xFFFFFFFFu, &e->size, &e->comp_size, &off);
        e->header_offset = (uint64_t)((int64_t)off + shift);
        pos += rlen;
    }
    if (z->n != d->count)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, z->eocd_pos,
                                  "the end record counts %llu entries, the central directory "
                                  "holds %zu", ull(d->count), z->n));
    return CKPT_OK;
}

/* Where an entry's bytes end: data, then a data descriptor when one is
 * there (with or without its signature, 32- or 64-bit sizes). */
static uint64_t descriptor_end(const zscan *z, const zentry *e, uint64_t data_end)
{
    uint64_t left = z->size - data_end;
    const uint8_t *p = z->data + data_end;
    uint64_t sig = left >= 4 && ckpt__le32(p) == SIG_DESCRIPTOR ? 4 : 0;
    if (!sig && left >= 4 && ckpt__le32(p) == SIG_LOCAL)
        return data_end;
    for (int wide = 0; wide < 2; wide++) {
        uint64_t need = wide ? 20 : 12;
        if (left - sig < need)
            continue;
        const uint8_t *q = p + sig;
        uint64_t comp = wide ? ckpt__le64(q + 4) : ckpt__le32(q + 4);
        uint64_t size = wide ? ckpt__le64(q + 12) : ckpt__le32(q + 8);
        if (ckpt__le32(q) == e->crc && comp == e->comp_size && size == e->size)
            return data_end + sig + need;
    }
    return sig && left >= 16 ? data_end + 16 : data_end;
}

/* Checks the local header of a central entry; finds its data. */
static ckpt_status check_local(zscan *z, zentry *e)
{
    char rec[256];
    erec(z, e, rec, sizeof(rec));
    uint64_t at = e->header_offset;
    if (!range_ok(at, LOCAL_SIZE, z->size) || ckpt__le32(z->data + at) != SIG_LOCAL)
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->central_at,
                    "no local header at %llu where the central directory points: readers "
                    "disagree on where this entry is", ull(at));
    const uint8_t *p = z->data + at;
    uint16_t flags = ckpt__le16(p + 6), method = ckpt__le16(p + 8);
    uint32_t crc = ckpt__le32(p + 14), comp32 = ckpt__le32(p + 18), size32 = ckpt__le32(p + 22);
    uint16_t nlen = ckpt__le16(p + 26), xlen = ckpt__le16(p + 28);
    if (!range_ok(at + LOCAL_SIZE, (uint64_t)nlen + xlen, z->size))
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, at,
                    "the local header's name and extra field run past the end of the file");
    const uint8_t *lname = p + LOCAL_SIZE;
    if (nlen != e->name_len || memcmp(lname, e->name, nlen) != 0) {
        char lq[200], cq[200];
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_NAME_MISMATCH, rec, at + LOCAL_SIZE,
                                  "the local header names the entry '%s', the central directory "
                                  "'%s': readers that walk local headers see another file than "
                                  "torch",
                                  ckpt__quote(lq, sizeof(lq), lname, nlen, false),
                                  ckpt__quote(cq, sizeof(cq), e->name, e->name_len, false)));
    }
    unsigned bad = (flags | e->flags) & (FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG);
    if (bad)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_FLAGS, rec, at + 6,
                                  "flag bits 0x%x (%s%s%s) set: Python's zipfile refuses the "
                                  "entry, torch reads its bytes as they are", bad,
                                  bad & FLAG_ENCRYPTED ? "encrypted " : "",
                                  bad & FLAG_PATCHED ? "patched " : "",
                                  bad & FLAG_STRONG ? "strong encryption" : ""));
    if (method != e->method)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, at + 8,
                                  "the local header says compression method %u, the central "
                                  "directory %u", (unsigned)method, (unsigned)e->method));
    if (!(flags & FLAG_DESCRIPTOR)) {
        uint64_t lsize = size32, lcomp = comp32, unused = 0;
        zip64_extra(lname + nlen, xlen, size32 == 0xFFFFFFFFu, comp32 == 0xFFFFFFFFu, false,
                    &lsize, &lcomp, &unused);
        if (crc != e->crc || lsize != e->size || lcomp != e->comp_size)
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, at + 14,
                                      "the local header (CRC 0x%08x, %llu/%llu bytes) disagrees "
                                      "with the central directory (CRC 0x%08x, %llu/%llu bytes): "
                                      "readers that trust either read different bytes",
                                      (unsigned)crc, ull(lcomp), ull(lsize), (unsigned)e->crc,
                                      ull(e->comp_size), ull(e->size)));
    }
    e->data_offset = at + LOCAL_SIZE + nlen + xlen;
    if (!range_ok(e->data_offset, e->comp_size, z->size))
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->data_offset,
                    "the entry's %llu bytes run past the end of the file", ull(e->comp_size));
    if (e->method == 0 && e->size != e->comp_size && !(e->flags & FLAG_ENCRYPTED))
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->central_at,
                                  "a stored entry of %llu bytes declares a size of %llu",
                                  ull(e->comp_size), ull(e->size)));
    e->local_ok = true;
    e->end = (flags | e->flags) & FLAG_DESCRIPTOR
                 ? descriptor_end(z, e, e->data_offset + e->comp_size)
                 : e->data_offset + e->comp_size;
    return CKPT_OK;
}

/* Without a central directory: the entries the local headers chain. */
static ckpt_status walk_locals(zscan *z, uint64_t pos)
{
    char rec[256];
    zrec(z, rec, sizeof(rec));
    size_t cap = 0;
    while (range_ok(pos, LOCAL_SIZE, z->size) && ckpt__le32(z->data + pos) == SIG_LOCAL) {
        if (z->n >= z->s->limits.max_zip_entries)
            return zadd(z, CKPT_SCAN_KIND_LIMIT, rec, pos,
                        "more entries than max_zip_entries: the rest are not checked");
        const uint8_t *p = z->data + pos;
        uint16_t flags = ckpt__le16(p + 6), nlen = ckpt__le16(p + 26), xlen = ckpt__le16(p + 28);
        if (!range_ok(pos + LOCAL_SIZE, (uint64_t)nlen + xlen, z->size))
            return CKPT_OK;
        zentry *e = NULL;
        CKPT_RETURN_IF_ERROR(add_entry(z, &cap, &e));
        CKPT_RETURN_IF_ERROR(copy_name(z, e, p + LOCAL_SIZE, nlen));
        e->central_at = CKPT_NO_OFFSET;
        e->header_offset = pos;
        e->flags = flags;
        e->method = ckpt__le16(p + 8);
        e->crc = ckpt__le32(p + 14);
        e->comp_size = ckpt__le32(p + 18);
        e->size = ckpt__le32(p + 22);
        uint64_t unused = 0;
        zip64_extra(p + LOCAL_SIZE + nlen, xlen, e->size == 0xFFFFFFFFu,
                    e->comp_size == 0xFFFFFFFFu, false, &e->size, &e->comp_size, &unused);
        e->data_offset = pos + LOCAL_SIZE + nlen + xlen;
        if (flags & FLAG_DESCRIPTOR) {
            /* sizes come after the data: run to the next signature */
            uint64_t q = e->data_offset;
            while (q + 4 <= z->size && ckpt__le32(z->data + q) != SIG_LOCAL &&
                   ckpt__le32(z->data + q) != SIG_CENTRAL && ckpt__le32(z->data + q) != SIG_EOCD &&
                   ckpt__le32(z->data + q) != SIG_DESCRIPTOR)
                q++;
            if (q + 4 > z->size)
                q = z->size;
            e->comp_size = q - e->data_offset;
            if (e->method == 0)
                e->size = e->comp_size;
            e->end = q + (q + 16 <= z->size && ckpt__le32(z->data + q) == SIG_DESCRIPTOR ? 16 : 0);
        } else {
            if (!range_ok(e->data_offset, e->comp_size, z->size)) {
                e->comp_size = z->size - e->data_offset;
                CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, pos,
                                          "a local header's data runs past the end of the file"));
            }
            e->end = e->data_offset + e->comp_size;
        }
        e->local_ok = true;
        if ((flags & (FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG)) != 0) {
            char r2[256];
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_FLAGS, erec(z, e, r2, sizeof(r2)), pos + 6,
                                      "flag bits 0x%x set: Python's zipfile refuses the entry",
                                      (unsigned)(flags & (FLAG_ENCRYPTED | FLAG_PATCHED |
                                                          FLAG_STRONG))));
        }
        if (e->end <= pos)
            return CKPT_OK;
        pos = e->end;
    }
    return CKPT_OK;
}

/* ---- names -------------------------------------------------------------- */

/* torch looks records up with miniz, which folds ASCII case: it finds
 * "archive/data.pkl" under "ARCHIVE/Data.PKL" too, and of two names that
 * differ only in case it reads either. Names here compare the same way. */
static unsigned char fold(char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : (unsigned char)c;
}

static int folded_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++) {
        if (fold(a[i]) != fold(b[i]))
            return fold(a[i]) < fold(b[i]) ? -1 : 1;
    }
    return (an > bn) - (an < bn);
}

static int name_cmp(const zentry *a, const zentry *b)
{
    return folded_cmp(a->name, a->name_len, b->name, b->name_len);
}

static int offset_cmp(const zentry *a, const zentry *b)
{
    return (a->header_offset > b->header_offset) - (a->header_offset < b->header_offset);
}

/* Sorts n entry indices with cmp (stable: merge sort, ties keep file
 * order). */
static ckpt_status sort_entries(zscan *z, uint32_t *idx, size_t n,
                                int (*cmp)(const zentry *, const zentry *))
{
    uint32_t *tmp = malloc((n ? n : 1) * sizeof(*tmp));
    if (!tmp)
        return ckpt__nomem(z->s->err);
    uint32_t *src = idx, *dst = tmp;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = cmp(&z->e[src[j]], &z->e[src[i]]) < 0 ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != idx)
        memcpy(idx, src, n * sizeof(*idx));
    free(tmp);
    return CKPT_OK;
}

/* Entry indices by name (z->by_name). */
static ckpt_status sort_names(zscan *z)
{
    if (!z->n)
        return CKPT_OK;
    z->by_name = malloc(z->n * sizeof(*z->by_name));
    if (!z->by_name)
        return ckpt__nomem(z->s->err);
    for (size_t i = 0; i < z->n; i++)
        z->by_name[i] = (uint32_t)i;
    return sort_entries(z, z->by_name, z->n, name_cmp);
}

/* First entry (in name order, then file order) torch finds for name, or -1. */
static long find_name(const zscan *z, const char *name, size_t len)
{
    zentry key = {.name = name, .name_len = len};
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (name_cmp(&z->e[z->by_name[mid]], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < z->n && name_cmp(&z->e[z->by_name[lo]], &key) == 0 ? (long)lo : -1;
}

static bool unsafe_name(const char *s, size_t n)
{
    if (n == 0 || s[0] == '/' || s[0] == '\\' || (n >= 2 && s[1] == ':'))
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '\\' || c == 0x7f)
            return true;
        bool start = i == 0 || s[i - 1] == '/';
        if (start && i + 1 < n && s[i] == '.' && s[i + 1] == '.' && (i + 2 == n || s[i + 2] == '/'))
            return true;
    }
    return false;
}

static ckpt_status check_names(zscan *z)
{
    char rec[256];
    for (size_t i = 0; i < z->n; i++) {
        const zentry *e = &z->e[i];
        if (unsafe_name(e->name, e->name_len))
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_UNSAFE_NAME, erec(z, e, rec, sizeof(rec)),
                                      e->central_at,
                                      "the entry name is an absolute path, climbs with '..', or "
                                      "holds a backslash or control character: extracting the "
                                      "archive writes outside its directory"));
    }
    CKPT_RETURN_IF_ERROR(sort_names(z));
    for (size_t i = 1; i < z->n; i++) {
        const zentry *a = &z->e[z->by_name[i - 1]], *b = &z->e[z->by_name[i]];
        if (name_cmp(a, b) != 0)
            continue;
        if (a->name_len == b->name_len && memcmp(a->name, b->name, a->name_len) == 0) {
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_DUPLICATE_NAME, erec(z, b, rec, sizeof(rec)),
                                      b->central_at,
                                      "a second entry with this name (at %llu, the first at "
                                      "%llu): torch reads one copy, Python's zipfile the last; "
                                      "every copy is scanned", ull(b->header_offset),
                                      ull(a->header_offset)));
        } else {
            char q[200];
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_DUPLICATE_NAME, erec(z, b, rec, sizeof(rec)),
                                      b->central_at,
                                      "the name differs from '%s' only in case: torch's zip "
                                      "reader ignores case and reads either, Python's zipfile "
                                      "tells them apart; every copy is scanned",
                                      ckpt__quote(q, sizeof(q), a->name, a->name_len, false)));
        }
    }
    return CKPT_OK;
}

/* ---- every byte accounted for ------------------------------------------- */

static ckpt_status scan_hidden(zscan *z, uint64_t at, uint64_t end);

static ckpt_status gap(zscan *z, uint64_t from, uint64_t to, const char *where_text)
{
    if (to <= from)
        return CKPT_OK;
    char rec[256];
    zrec(z, rec, sizeof(rec));
    if (++z->gaps > MAX_GAPS)
        return z->gaps == MAX_GAPS + 1
                   ? zadd(z, CKPT_SCAN_KIND_LIMIT, rec, from,
                          "more than %d stray byte ranges: the rest are not listed", MAX_GAPS)
                   : CKPT_OK;
    CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_EXTRA_BYTES, rec, from,
                              "%llu bytes %s (at %llu): readers disagree on what they are",
                              ull(to - from), where_text, ull(from)));
    return scan_hidden(z, from, to);
}

static ckpt_status coverage(zscan *z)
{
    char rec[256];
    size_t m = 0;
    uint32_t *idx = malloc((z->n ? z->n : 1) * sizeof(*idx));
    if (!idx)
        return ckpt__nomem(z->s->err);
    for (size_t i = 0; i < z->n; i++) {
        if (z->e[i].local_ok)
            idx[m++] = (uint32_t)i;
    }
    ckpt_status st = sort_entries(z, idx, m, offset_cmp);
    uint64_t pos = 0;
    const zentry *prev = NULL;
    for (size_t i = 0; i < m && st == CKPT_OK; i++) {
        const zentry *e = &z->e[idx[i]];
        if (e->header_offset < pos && prev) {
            char q[200];
            st = zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, erec(z, e, rec, sizeof(rec)), e->header_offset,
                      "the entry overlaps '%s': two names for the same bytes",
                      ckpt__quote(q, sizeof(q), prev->name, prev->name_len, false));
        } else {
            st = gap(z, pos, e->header_offset,
                     prev ? "between entries" : "before the first entry");
        }
        if (e->end > pos) {
            pos = e->end;
            prev = e;
        }
    }
    free(idx);
    if (st != CKPT_OK || !z->have_cd)
        return st;
    if (pos <= z->cd_start)
        CKPT_RETURN_IF_ERROR(
            gap(z, pos, z->cd_start, "between the entries and the central directory"));
    else
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, zrec(z, rec, sizeof(rec)),
                                  z->cd_start, "entries run into the central directory"));
    return gap(z, z->cd_start + z->cd_size, z->cd_end,
               "between the central directory and the end records");
}

/* ---- reading entries ---------------------------------------------------- */

/* The first bytes of a deflated entry, inflated (no more than asked). */
typedef struct head_sink {
    uint8_t *p;
    size_t want, got;
} head_sink;

static bool head_piece(void *user, const uint8_t *p, size_t n)
{
    head_sink *h = user;
    size_t take = h->want - h->got < n ? h->want - h->got : n;
    memcpy(h->p + h->got, p, take);
    h->got += take;
    return h->got < h->want;
}

/* Inflates the first bytes of a deflated entry into head (at most cap):
 * how many there are (fewer when the stream is shorter or broken). */
static size_t entry_head(const zscan *z, const zentry *e, uint8_t *head, size_t cap)
{
    head_sink h = {head, cap < e->size ? cap : (size_t)e->size, 0};
    if (h.want)
        (void)ckpt__inflate(z->data + e->data_offset, e->comp_size, e->size, head_piece, &h,
                            NULL);
    return h.got;
}

/*
 * The entry's bytes (inflated when deflated): *owned is malloc'd when not
 * NULL. *ok false: not readable (said once). A deflated entry is inflated
 * whole only up to hold_max bytes (max_pickle_bytes for what may be a
 * pickle, less for small records); a larger one is a limit finding, never
 * held.
 */
static ckpt_status entry_bytes(zscan *z, zentry *e, uint64_t hold_max, const uint8_t **out,
                               uint8_t **owned, uint64_t *file_base, bool *ok)
{
    char rec[256];
    *out = NULL;
    *owned = NULL;
    *ok = false;
    *file_base = CKPT_NO_OFFSET;
    if (!e->local_ok)
        return CKPT_OK;
    const uint8_t *in = z->data + e->data_offset;
    /* a file map pages in without read-around while a scan runs (scan.c):
     * the record is asked for whole */
    ckpt__map_advise(in, e->comp_size, CKPT__ADVISE_WILLNEED);
    if (e->method == 0) {
        e->len = e->comp_size; /* what is in the file, whatever size says */
        *out = in;
        *file_base = ckpt__scan_at(z->base, e->data_offset);
        *ok = true;
        return CKPT_OK;
    }
    erec(z, e, rec, sizeof(rec));
    if (e->method != 8)
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->central_at,
                    "compression method %u: ckpt does not read it, its content is not checked",
                    (unsigned)e->method);
    const ckpt_limits *lim = &z->s->limits;
    uint64_t allowed;
    if (e->size > lim->max_inflated_bytes || e->size > SIZE_MAX - 1 ||
        (ckpt__mul_u64(e->comp_size, lim->max_inflate_ratio, &allowed) &&
         ckpt__add_u64(allowed, 4096, &allowed) && e->size > allowed))
        return zadd(z, CKPT_SCAN_KIND_LIMIT, rec, e->data_offset,
                    "the entry inflates to %llu bytes from %llu, past max_inflated_bytes or "
                    "max_inflate_ratio: not checked", ull(e->size), ull(e->comp_size));
    /* what is held at once, archives inside archives included */
    uint64_t held;
    if (e->size > hold_max || !ckpt__add_u64(z->s->inflated_held, e->size, &held) ||
        held > lim->max_pickle_bytes)
        return zadd(z, CKPT_SCAN_KIND_LIMIT, rec, e->data_offset,
                    "the entry inflates to %llu bytes, more than a scan holds to read it "
                    "(%llu, and max_pickle_bytes for every record held at once): not checked",
                    ull(e->size), ull(hold_max));
    uint8_t *buf = malloc(e->size ? (size_t)e->size : 1);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!buf || !d) {
        free(buf);
        libdeflate_free_decompressor(d);
        return ckpt__nomem(z->s->err);
    }
    size_t used = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        d, in, (size_t)e->comp_size, buf, (size_t)e->size, &used, NULL);
    libdeflate_free_decompressor(d);
    if (r != LIBDEFLATE_SUCCESS) {
        free(buf);
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->data_offset,
                    "the deflate data does not inflate to the %llu bytes the central directory "
                    "declares: readers disagree on its content", ull(e->size));
    }
    e->len = e->size;
    z->s->inflated_held = held;
    *out = buf;
    *owned = buf;
    *ok = true;
    return CKPT_OK;
}

/* Frees what entry_bytes inflated. */
static void entry_release(zscan *z, const zentry *e, uint8_t *owned)
{
    if (owned) {
        z->s->inflated_held -= e->size;
        free(owned);
    }
}

static ckpt_status check_crc(zscan *z, const zentry *e, const uint8_t *p)
{
    if (e->flags & FLAG_ENCRYPTED)
        return CKPT_OK; /* the CRC is of the plain text, the bytes may be encrypted */
    uint32_t crc = e->len ? libdeflate_crc32(0, p, (size_t)e->len) : 0;
    if (crc == e->crc)
        return CKPT_OK;
    char rec[256];
    return zadd(z, CKPT_SCAN_KIND_CRC_MISMATCH, erec(z, e, rec, sizeof(rec)), e->data_offset,
                "CRC32 0x%08x, the archive says 0x%08x: Python's zipfile refuses to read the "
                "entry (scanners built on it skip it), torch reads it", (unsigned)crc,
                (unsigned)e->crc);
}

/* ---- pickles of the torch format --------------------------------------- */

typedef struct zip_pl {
    zscan *z;
    const char *record;
    uint64_t file_base;
    ckpt__storage_table table;
} zip_pl;

/* torch's persistent_load: ('storage', storage_type, key, location,
 * numel) names the record <prefix>/data/<key>. Its size is checked, its
 * bytes never read. Anything else is an inert value: torch fails on it. */
static ckpt_status zip_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                  uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    zip_pl *P = user;
    zscan *z = P->z;
    *out = (ckpt_value *)(uintptr_t)pid;
    ckpt__storage_pid p;
    ckpt_error why;
    if (ckpt__storage_pid_parse(pid, 5, ctx->record, offset, &p, &why) != CKPT_OK)
        return ckpt__scan_add(z->s, CKPT_SCAN_KIND_STORAGE, P->record, offset,
                              ckpt__scan_at(P->file_base, offset),
                              "a persistent id torch's loader does not read as a storage "
                              "(%s): torch.load fails on it", why.message);
    ckpt__storage *s = ckpt__storage_table_find(&P->table, p.key, p.key_len);
    if (!s) {
        char name[400];
        int len = snprintf(name, sizeof(name), "%.*s%sdata/%s", (int)z->plen,
                           z->prefix ? z->prefix : "", z->prefix ? "/" : "", p.key);
        long at = len > 0 && (size_t)len < sizeof(name) ? find_name(z, name, (size_t)len) : -1;
        if (at < 0) {
            CKPT_RETURN_IF_ERROR(ckpt__scan_add(z->s, CKPT_SCAN_KIND_STORAGE, P->record, offset,
                                                ckpt__scan_at(P->file_base, offset),
                                                "storage '%s' has no record '%s': torch.load fails "
                                                "on it",
                                                p.key, name));
        } else {
            const zentry *first = &z->e[z->by_name[at]];
            bool said = false;
            for (size_t i = (size_t)at; i < z->n && name_cmp(&z->e[z->by_name[i]], first) == 0;
                 i++) {
                zentry *copy = &z->e[z->by_name[i]];
                copy->referenced = true;
                if (copy->size == p.nbytes || said)
                    continue;
                said = true;
                CKPT_RETURN_IF_ERROR(ckpt__scan_add(
                    z->s, CKPT_SCAN_KIND_STORAGE, P->record, offset, ckpt__scan_at(P->file_base, offset),
                    "record '%s' holds %llu bytes but its storage declares %llu: torch before "
                    "2.10 reads or writes past the record (CVE-2026-24747)",
                    name, ull(copy->size), ull(p.nbytes)));
            }
        }
        s = ckpt__arena_alloc(ctx->arena, sizeof(*s));
        if (!s)
            return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
        s->key = p.key;
        s->location = p.location;
        s->dtype = p.dtype;
        s->untyped = p.untyped;
        s->nbytes = p.nbytes;
        s->record = "";
        s->record_index = -1;
        s->file_offset = CKPT_NO_OFFSET;
        if (!ckpt__storage_table_add(&P->table, s))
            return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
    }
    return ckpt__storage_value(ctx->arena, s, ctx->record, offset, out, err);
}

/* Scans an entry's bytes as a pickle (the archive's main pickle when
 * storages is set). */
static ckpt_status scan_entry_pickle(zscan *z, zentry *e, const uint8_t *p, uint64_t file_base,
                                     bool storages)
{
    char rec[256];
    erec(z, e, rec, sizeof(rec));
    ckpt__arena arena;
    ckpt__arena_init(&arena, z->s->limits.max_value_bytes);
    zip_pl P = {.z = z, .record = rec, .file_base = file_base};
    scan_pickle_result res;
    uint64_t ops[4] = {0};
    z->s->torch_ops = storages ? ops : NULL; /* the pickle torch's reader runs */
    ckpt_status st =
        ckpt__scan_pickle(z->s, &arena, p, (size_t)e->len, rec, file_base,
                          storages ? zip_persistent : NULL, storages ? &P : NULL, &res);
    z->s->torch_ops = NULL;
    ckpt__storage_table_free(&P.table);
    ckpt__arena_free(&arena);
    CKPT_RETURN_IF_ERROR(st);
    if (storages)
        CKPT_RETURN_IF_ERROR(ckpt__scan_torch_opcodes(z->s, ops, rec, file_base));
    if (res.broke || res.consumed >= e->len)
        return CKPT_OK;
    /* torch stops at STOP; pickle.load again on the record reads on */
    char where[300];
    snprintf(where, sizeof(where), "%s: ", rec);
    return ckpt__scan_after_pickle(z->s, p, e->len, &res, rec, where, file_base);
}

/* A record torch reads as something else (a text, a storage) that reads as
 * a pickle, whatever its name: torch never unpickles it, other tools that
 * open the archive may (pickle.loads on each record). */
static ckpt_status scan_if_pickle(zscan *z, zentry *e, const uint8_t *p, uint64_t file_base,
                                  const char *what)
{
    if (!e->len || !ckpt__scan_is_pickle(z->s, p, (size_t)e->len))
        return CKPT_OK;
    char rec[256];
    CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_EXTRA_PICKLE, erec(z, e, rec, sizeof(rec)),
                              e->data_offset,
                              "%s reads as a pickle: torch.load does not unpickle it, other "
                              "loaders of this archive may", what));
    return scan_entry_pickle(z, e, p, file_base, false);
}

/* How a pickle starts: PROTO 0-5; GLOBAL 'c' with a dotted module name on
 * its line (protocols 0 and 1); FRAME with one of those after it. */
static bool pickle_start(const uint8_t *p, uint64_t n)
{
    if (n >= 11 && p[0] == 0x95 && ckpt__le64(p + 1) <= n - 9) {
        p += 9;
        n -= 9;
    }
    if (n >= 2 && p[0] == 0x80 && p[1] <= 5)
        return true;
    if (n < 4 || p[0] != 'c')
        return false;
    uint64_t i = 1;
    for (; i < n && i < 256 && p[i] != '\n'; i++) {
        uint8_t c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.'))
            return false;
    }
    return i > 1 && i < n && p[i] == '\n';
}

/*
 * A storage record: the raw bytes of a tensor, which torch reads as they
 * are and never unpickles. Reading every tensor's bytes would make a scan
 * as slow as a copy, so only its start is looked at: it is scanned as a
 * pickle only when its first bytes are a pickle's (pickle_start) and it
 * then reads as one (reaches its STOP or names a global), so a tensor
 * whose first bytes happen to do that is reported too. A deflated storage
 * record is inflated for this only up to STORAGE_INFLATE_MAX bytes; larger
 * ones are not probed (torch.save never compresses).
 */
static ckpt_status probe_storage(zscan *z, zentry *e)
{
    if (!e->local_ok)
        return CKPT_OK;
    if (e->method == 0) {
        const uint8_t *p = z->data + e->data_offset;
        if (!pickle_start(p, e->comp_size))
            return CKPT_OK;
        e->len = e->comp_size;
        return scan_if_pickle(z, e, p, ckpt__scan_at(z->base, e->data_offset),
                              "the storage record");
    }
    const ckpt_limits *lim = &z->s->limits;
    uint64_t allowed;
    if (e->method != 8 || e->size < 2 || e->size > STORAGE_INFLATE_MAX ||
        e->size > lim->max_inflated_bytes ||
        (ckpt__mul_u64(e->comp_size, lim->max_inflate_ratio, &allowed) &&
         ckpt__add_u64(allowed, 4096, &allowed) && e->size > allowed))
        return CKPT_OK;
    uint8_t *buf = malloc((size_t)e->size);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!buf || !d) {
        free(buf);
        libdeflate_free_decompressor(d);
        return ckpt__nomem(z->s->err);
    }
    size_t used = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        d, z->data + e->data_offset, (size_t)e->comp_size, buf, (size_t)e->size, &used, NULL);
    libdeflate_free_decompressor(d);
    ckpt_status st = CKPT_OK;
    if (r == LIBDEFLATE_SUCCESS && pickle_start(buf, e->size)) {
        e->len = e->size;
        st = scan_if_pickle(z, e, buf, CKPT_NO_OFFSET, "the storage record");
    }
    free(buf);
    return st;
}

static bool name_ends(const zentry *e, const char *suffix)
{
    size_t n = strlen(suffix);
    return e->name_len >= n && folded_cmp(e->name + e->name_len - n, n, suffix, n) == 0;
}

/* The record's name after the prefix as torch's lookups see it (case
 * folded), or NULL when it is outside it. */
static const char *rest_of(const zscan *z, const zentry *e, size_t *len)
{
    if (!z->prefix) {
        *len = e->name_len;
        return e->name;
    }
    if (e->name_len <= z->plen || folded_cmp(e->name, z->plen, z->prefix, z->plen) != 0 ||
        e->name[z->plen] != '/')
        return NULL;
    *len = e->name_len - z->plen - 1;
    return e->name + z->plen + 1;
}

/* rest names the record s for torch's lookups (case folded). */
static bool rest_is(const char *rest, size_t len, const char *s)
{
    return rest && folded_cmp(rest, len, s, strlen(s)) == 0;
}

static bool is_small_text_record(const char *rest, size_t len)
{
    static const char *const names[] = {"version", ".data/version", "byteorder",
                                        ".data/serialization_id", ".format_version",
                                        ".storage_alignment"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (rest_is(rest, len, names[i]))
            return true;
    }
    return false;
}

/* Any other record: an archive, a numpy object array or a pickle inside
 * is scanned; a pickle is an extra one unless the archive is TorchScript
 * (whose parts are pickles). */
static ckpt_status scan_other(zscan *z, zentry *e)
{
    char rec[256];
    erec(z, e, rec, sizeof(rec));
    if (!e->local_ok)
        return CKPT_OK;
    size_t rlen;
    const char *rest = rest_of(z, e, &rlen);
    if (z->torchscript && rest && rlen >= 5 && rest_is(rest, 5, "code/") &&
        !name_ends(e, ".pkl") && !name_ends(e, ".debug_pkl"))
        return CKPT_OK; /* TorchScript's Python source: the archive is reported as code */
    if (e->method != 0 && e->method != 8)
        return zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, e->central_at,
                    "compression method %u: ckpt does not read it, its content is not checked",
                    (unsigned)e->method);
    const uint8_t *head = z->data + e->data_offset;
    bool named_pickle =
        name_ends(e, ".pkl") || name_ends(e, ".pickle") || name_ends(e, ".debug_pkl");
    uint64_t stored = e->comp_size; /* what a stored entry has in the file */
    /* a large stored record that is neither a pickle (of any protocol) nor
     * an archive is data (an unreferenced storage, an array): its CRC is
     * not read */
    if (e->method == 0 && stored > PROBE_MAX && !named_pickle &&
        !ckpt__zip_detect(head, stored) && !ckpt__7z_detect(head, stored) &&
        !ckpt__npy_detect(head, stored) && !ckpt__scan_is_pickle(z->s, head, (size_t)stored))
        return CKPT_OK;
    /* The same for a large deflated record, judged by its first bytes: an
     * archive, a numpy array, or a first byte that starts a pickle (any
     * other fails at once in every unpickler) is inflated and read, up to
     * max_pickle_bytes; anything else is data, never inflated past its
     * head. */
    if (e->method == 8 && e->local_ok && e->size > PROBE_MAX && !named_pickle) {
        uint8_t first[8];
        size_t got = entry_head(z, e, first, sizeof(first));
        /* the tests read only the head, of data e->size bytes long */
        if (got == sizeof(first) && !ckpt__zip_detect(first, e->size) &&
            !ckpt__7z_detect(first, e->size) && !ckpt__npy_detect(first, e->size) &&
            !ckpt__pickle_detect(first, e->size))
            return CKPT_OK;
    }
    const uint8_t *p;
    uint8_t *owned;
    uint64_t base;
    bool ok;
    CKPT_RETURN_IF_ERROR(
        entry_bytes(z, e, z->s->limits.max_pickle_bytes, &p, &owned, &base, &ok));
    if (!ok)
        return CKPT_OK;
    ckpt_status st = check_crc(z, e, p);
    if (st != CKPT_OK)
        goto out;
    char where[300];
    snprintf(where, sizeof(where), "%s!", rec);
    uint64_t n = e->len;
    if (ckpt__zip_detect(p, n)) {
        st = zadd(z, CKPT_SCAN_KIND_NESTED_ARCHIVE, rec, e->data_offset,
                  "a zip archive inside the archive: loaders that unpack it read what scanners "
                  "of the outer archive miss; scanned as '%s...'", where);
        if (st == CKPT_OK)
            st = ckpt__scan_bytes(z->s, p, n, where, base, false);
    } else if (ckpt__7z_detect(p, n)) {
        st = ckpt__scan_bytes(z->s, p, n, where, base, false);
    } else if (ckpt__npy_detect(p, n)) {
        snprintf(where, sizeof(where), "%s: ", rec);
        st = ckpt__scan_npy(z->s, p, n, where, base, false, true);
    } else if (n && ckpt__scan_is_pickle(z->s, p, (size_t)n)) {
        if (!z->torchscript)
            st = zadd(z, CKPT_SCAN_KIND_EXTRA_PICKLE, rec, e->data_offset,
                      "a pickle torch.load does not read: other loaders of this archive run it");
        if (st == CKPT_OK)
            st = scan_entry_pickle(z, e, p, base, z->torchscript);
    }
out:
    entry_release(z, e, owned);
    return st;
}

/* Bytes outside every entry: a local header the central directory does
 * not list (readers that walk local headers see it), or a pickle. */
static ckpt_status scan_hidden(zscan *z, uint64_t at, uint64_t end)
{
    char rec[300];
    const uint8_t *p = z->data + at;
    uint64_t n = end - at;
    if (n >= LOCAL_SIZE && ckpt__le32(p) == SIG_LOCAL) {
        uint16_t flags = ckpt__le16(p + 6), method = ckpt__le16(p + 8);
        uint16_t nlen = ckpt__le16(p + 26), xlen = ckpt__le16(p + 28);
        if (LOCAL_SIZE + (uint64_t)nlen + xlen > n)
            return CKPT_OK;
        char q[200];
        snprintf(rec, sizeof(rec), "%s%s (local header only)", z->where ? z->where : "",
                 ckpt__quote(q, sizeof(q), p + LOCAL_SIZE, nlen, false));
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(z->s, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, 0,
                                            ckpt__scan_at(z->base, at),
                                            "a local header the central directory does not list: "
                                            "readers that walk local headers see this entry, torch "
                                            "does not"));
        uint64_t data = LOCAL_SIZE + (uint64_t)nlen + xlen;
        uint64_t len = n - data;
        uint32_t comp = ckpt__le32(p + 18);
        if (!(flags & FLAG_DESCRIPTOR) && comp < len)
            len = comp;
        if (method != 0 || len == 0 || !ckpt__scan_is_pickle(z->s, p + data, (size_t)len))
            return CKPT_OK;
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(z->s, CKPT_SCAN_KIND_EXTRA_PICKLE, rec, data,
                                            ckpt__scan_at(z->base, at + data),
                                            "the hidden entry is a pickle"));
        scan_pickle_result res;
        return ckpt__scan_pickle_alone(z->s, p + data, (size_t)len, rec,
                                       ckpt__scan_at(z->base, at + data), &res);
    }
    if (n >= 2 && p[0] == 0x80 && p[1] <= 5 && ckpt__scan_is_pickle(z->s, p, (size_t)n)) {
        snprintf(rec, sizeof(rec), "%sbytes at %llu", z->where ? z->where : "", ull(at));
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(z->s, CKPT_SCAN_KIND_EXTRA_PICKLE, rec, 0,
                                            ckpt__scan_at(z->base, at),
                                            "the stray bytes are a pickle"));
        scan_pickle_result res;
        return ckpt__scan_pickle_alone(z->s, p, (size_t)n, rec, ckpt__scan_at(z->base, at), &res);
    }
    return CKPT_OK;
}

/* The torch zip format over the entries. */
static ckpt_status torch_pass(zscan *z)
{
    char rec[256];
    if (z->n == 0) {
        if (z->top)
            z->s->report->format = "zip";
        return zadd(z, CKPT_SCAN_KIND_FORMAT, zrec(z, rec, sizeof(rec)), 0,
                    "an empty archive: not a checkpoint");
    }
    /* numpy's .npz: arrays at the root, each NAME.npy. Nothing in it runs
     * unless an array holds objects (scanned with the records below, each
     * an unsafe finding then); torch.load refuses it, numpy.load reads it:
     * a warning, as a .npy of numbers is. */
    bool npz = true;
    for (size_t i = 0; i < z->n && npz; i++) {
        const zentry *e = &z->e[i];
        npz = e->name_len > 4 && !memchr(e->name, '/', e->name_len) &&
              memcmp(e->name + e->name_len - 4, ".npy", 4) == 0;
    }
    if (npz)
        CKPT_RETURN_IF_ERROR(ckpt__scan_warn(
            z->s, CKPT_SCAN_KIND_FORMAT, zrec(z, rec, sizeof(rec)), 0, ckpt__scan_at(z->base, 0),
            "a numpy .npz archive of %zu array%s, not a checkpoint torch.load reads: "
            "numpy.load(allow_pickle=False) reads it", z->n, z->n == 1 ? "" : "s"));
    const zentry *first = &z->e[0];
    const char *slash = memchr(first->name, '/', first->name_len);
    if (npz) {
        /* the records below are scanned as a zip's records are */
    } else if (slash) {
        z->prefix = first->name;
        z->plen = (size_t)(slash - first->name);
    } else {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_FORMAT, erec(z, first, rec, sizeof(rec)),
                                  first->central_at,
                                  "records at the archive's root: torch.load refuses an archive "
                                  "whose first record is not in a '<prefix>/' directory"));
    }
    size_t outside = 0, mains = 0;
    const zentry *first_out = NULL;
    bool has_version = false;
    for (size_t i = 0; i < z->n; i++) {
        size_t len;
        const char *rest = rest_of(z, &z->e[i], &len);
        /* torch's listing of records (every torch.load makes one) wants the
         * prefix exactly */
        if (!rest || (z->prefix && memcmp(z->e[i].name, z->prefix, z->plen) != 0)) {
            if (!outside++)
                first_out = &z->e[i];
            continue;
        }
        if (rest_is(rest, len, "constants.pkl") || rest_is(rest, len, "model.json") ||
            (len >= 5 && rest_is(rest, 5, "code/")))
            z->torchscript = true;
        if (rest_is(rest, len, "data.pkl"))
            mains++;
        if (rest_is(rest, len, "version") || rest_is(rest, len, ".data/version"))
            has_version = true;
    }
    if (outside && !npz) {
        char q[200];
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_FORMAT, erec(z, first_out, rec, sizeof(rec)),
                                  first_out->central_at,
                                  "%zu record%s outside the archive prefix '%s/' (the first: "
                                  "'%s'): torch.load refuses such an archive", outside,
                                  outside == 1 ? "" : "s",
                                  ckpt__quote(q, sizeof(q), z->prefix, z->plen, false), rec));
    }
    if (z->torchscript)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_TORCHSCRIPT, zrec(z, rec, sizeof(rec)), 0,
                                  "a TorchScript archive (code/, constants.pkl): it holds code "
                                  "that torch.jit.load runs (and torch.load did, before 2.6, "
                                  "even with weights_only=True: CVE-2025-32434); its weights "
                                  "can be extracted as data, nothing run, with 'ckpt convert "
                                  "--torchscript-weights'"));
    if (z->top)
        z->s->report->format = npz              ? "numpy"
                               : z->torchscript ? "torchscript"
                               : mains          ? "torch-zip"
                                                : "zip";
    if (npz) {
        /* no torch records to look for */
    } else if (!mains && !z->torchscript) {
        char q[200];
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_FORMAT, zrec(z, rec, sizeof(rec)), 0,
                                  "no '%s%sdata.pkl' record: not a torch.save checkpoint, "
                                  "torch.load refuses it",
                                  z->prefix ? ckpt__quote(q, sizeof(q), z->prefix, z->plen, false)
                                            : "",
                                  z->prefix ? "/" : ""));
    } else if (mains && z->prefix && !has_version && !z->torchscript) {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_FORMAT, zrec(z, rec, sizeof(rec)), 0,
                                  "no 'version' record: torch.load refuses the archive"));
    }

    /* every copy of the main pickle, with its storages */
    for (size_t i = 0; i < z->n; i++) {
        zentry *e = &z->e[i];
        size_t len;
        const char *rest = rest_of(z, e, &len);
        if (!rest_is(rest, len, "data.pkl"))
            continue;
        e->handled = true;
        const uint8_t *p;
        uint8_t *owned;
        uint64_t base;
        bool ok;
        CKPT_RETURN_IF_ERROR(
            entry_bytes(z, e, z->s->limits.max_pickle_bytes, &p, &owned, &base, &ok));
        if (!ok)
            continue;
        ckpt_status st = check_crc(z, e, p);
        if (st == CKPT_OK) {
            if (e->len == 0)
                st = zadd(z, CKPT_SCAN_KIND_BROKEN_PICKLE, erec(z, e, rec, sizeof(rec)),
                          e->data_offset, "an empty pickle: torch.load fails on it");
            else
                st = scan_entry_pickle(z, e, p, base, true);
        }
        entry_release(z, e, owned);
        CKPT_RETURN_IF_ERROR(st);
    }

    /* the small text records torch reads */
    for (size_t i = 0; i < z->n; i++) {
        zentry *e = &z->e[i];
        size_t len;
        const char *rest = rest_of(z, e, &len);
        if (e->handled || !is_small_text_record(rest, len))
            continue;
        const uint8_t *p;
        uint8_t *owned;
        uint64_t base;
        bool ok;
        if (e->size > 4096) {
            /* scanned below like any other record */
            CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_FORMAT, erec(z, e, rec, sizeof(rec)),
                                      e->central_at, "a record of %llu bytes where torch expects "
                                      "a short text", ull(e->size)));
            continue;
        }
        e->handled = true;
        CKPT_RETURN_IF_ERROR(entry_bytes(z, e, 4096, &p, &owned, &base, &ok));
        if (!ok)
            continue;
        ckpt_status st = check_crc(z, e, p);
        if (st == CKPT_OK && rest_is(rest, len, "byteorder")) {
            size_t n = (size_t)e->len;
            while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' '))
                n--;
            if (!((n == 6 && memcmp(p, "little", 6) == 0) || (n == 3 && memcmp(p, "big", 3) == 0)))
                st = zadd(z, CKPT_SCAN_KIND_FORMAT, erec(z, e, rec, sizeof(rec)), e->data_offset,
                          "byteorder is neither 'little' nor 'big': torch.load refuses it");
        }
        if (st == CKPT_OK)
            st = scan_if_pickle(z, e, p, base, "the text record");
        entry_release(z, e, owned);
        CKPT_RETURN_IF_ERROR(st);
    }

    /* the storages data.pkl names: raw tensor bytes, probed at their start */
    for (size_t i = 0; i < z->n; i++) {
        zentry *e = &z->e[i];
        if (e->handled || !e->referenced)
            continue;
        e->handled = true;
        CKPT_RETURN_IF_ERROR(probe_storage(z, e));
    }

    /* everything else that is not a storage data.pkl reads */
    for (size_t i = 0; i < z->n; i++) {
        zentry *e = &z->e[i];
        if (e->handled || e->referenced)
            continue;
        e->handled = true;
        CKPT_RETURN_IF_ERROR(scan_other(z, e));
    }
    return CKPT_OK;
}

/* ---- the archive -------------------------------------------------------- */

bool ckpt__scan_zip_at_end(const uint8_t *data, uint64_t size)
{
    uint64_t pos;
    if (!find_eocd(data, size, &pos))
        return false;
    const uint8_t *e = data + pos;
    uint64_t cd_size = ckpt__le32(e + 12), cd_off = ckpt__le32(e + 16);
    if (range_ok(cd_off, 4, size) && ckpt__le32(data + cd_off) == SIG_CENTRAL)
        return true;
    return cd_size <= pos && pos - cd_size + 4 <= size &&
           ckpt__le32(data + pos - cd_size) == SIG_CENTRAL;
}

static ckpt_status locate(zscan *z)
{
    char rec[256];
    zrec(z, rec, sizeof(rec));
    if (!find_eocd(z->data, z->size, &z->eocd_pos)) {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, 0,
                                  "no end of central directory record: a truncated or "
                                  "hand-made archive; torch.load refuses it (its entries are "
                                  "found by walking local headers)"));
        return walk_locals(z, 0);
    }
    z->have_eocd = true;
    zdir d;
    bool ok;
    CKPT_RETURN_IF_ERROR(read_end(z, &d, &ok));
    uint64_t comment = z->eocd_pos + EOCD_SIZE;
    if (z->eocd_end > comment + 1 && z->data[comment] == 0x80 &&
        ckpt__scan_is_pickle(z->s, z->data + comment, (size_t)(z->eocd_end - comment))) {
        char crec[300];
        snprintf(crec, sizeof(crec), "%szip comment", z->where ? z->where : "");
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_EXTRA_PICKLE, crec, comment,
                                  "the archive's comment is a pickle"));
        scan_pickle_result res;
        ckpt_status st = ckpt__scan_pickle_alone(z->s, z->data + comment,
                                                 (size_t)(z->eocd_end - comment), crec,
                                                 ckpt__scan_at(z->base, comment), &res);
        CKPT_RETURN_IF_ERROR(st);
    }
    if (z->eocd_end < z->size)
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_EXTRA_BYTES, rec, z->eocd_end,
                                  "%llu bytes after the end of the archive: readers that look "
                                  "for the archive from the start and from the end see "
                                  "different files", ull(z->size - z->eocd_end)));
    if (!ok) {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, z->eocd_pos,
                                  "unusable ZIP64 end records: entries found by walking local "
                                  "headers"));
        return walk_locals(z, 0);
    }
    int64_t shift = 0;
    uint64_t declared_end;
    bool fits = ckpt__add_u64(d.cd_offset, d.cd_size, &declared_end) && declared_end <= d.cd_end;
    if (fits && (d.count == 0 || (range_ok(d.cd_offset, 4, z->size) &&
                                  ckpt__le32(z->data + d.cd_offset) == SIG_CENTRAL))) {
        z->cd_start = d.cd_offset;
    } else if (d.cd_size <= d.cd_end &&
               ckpt__le32(z->data + d.cd_end - d.cd_size) == SIG_CENTRAL) {
        /* prepended bytes: offsets are off by the same amount */
        z->cd_start = d.cd_end - d.cd_size;
        shift = (int64_t)(z->cd_start - d.cd_offset);
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_EXTRA_BYTES, rec, 0,
                                  "the central directory is at %llu, the end record says %llu: "
                                  "%lld bytes were put before the archive; torch.load does not "
                                  "find its entries, Python's zipfile does",
                                  ull(z->cd_start), ull(d.cd_offset), (long long)shift));
    } else {
        CKPT_RETURN_IF_ERROR(zadd(z, CKPT_SCAN_KIND_ZIP_STRUCTURE, rec, z->eocd_pos,
                                  "no central directory where the end record says (%llu): "
                                  "entries found by walking local headers", ull(d.cd_offset)));
        return walk_locals(z, 0);
    }
    z->cd_size = d.cd_size;
    z->cd_end = d.cd_end;
    if (z->cd_start + z->cd_size > z->cd_end)
        z->cd_size = z->cd_end - z->cd_start;
    z->have_cd = true;
    CKPT_RETURN_IF_ERROR(read_central(z, &d, shift));
    for (size_t i = 0; i < z->n; i++)
        CKPT_RETURN_IF_ERROR(check_local(z, &z->e[i]));
    return CKPT_OK;
}

ckpt_status ckpt__scan_zip(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                           uint64_t file_base, bool top)
{
    zscan z = {.s = s, .data = data, .size = size, .where = where, .base = file_base, .top = top};
    char rec[256];
    if (s->depth >= SCAN_MAX_DEPTH)
        return zadd(&z, CKPT_SCAN_KIND_LIMIT, zrec(&z, rec, sizeof(rec)), 0,
                    "archives nested more than %d deep: not checked", SCAN_MAX_DEPTH);
    if (top)
        s->report->format = "zip";
    s->depth++;
    ckpt__arena_init(&z.names, 0);
    ckpt_status st = locate(&z);
    if (st == CKPT_OK)
        st = check_names(&z);
    if (st == CKPT_OK)
        st = coverage(&z);
    if (st == CKPT_OK)
        st = torch_pass(&z);
    s->depth--;
    free(z.e);
    free(z.by_name);
    ckpt__arena_free(&z.names);
    return st;
}

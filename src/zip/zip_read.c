/*
 * zip_read.c - a strict, read-only zip reader over a memory map.
 *
 * torch.save writes a zip (PyTorch's miniz) and torch.load finds records
 * through the central directory. This reader does the same, and refuses every
 * archive that two zip readers could understand differently, because such
 * differences are how malicious checkpoints slip past scanners:
 *
 *   - the central directory must sit exactly where the end record says and
 *     run up to the end records; nothing may precede the first local header
 *     or follow the end record and its comment;
 *   - every entry's local header must repeat the central name and method
 *     (a differing local name is a known scanner bypass), and, unless a data
 *     descriptor is announced, its CRC and sizes;
 *   - entries may not overlap, names may not repeat, encrypted / patched
 *     entries are refused;
 *   - the end record's entry count must match the central directory.
 *
 * Nothing from the file is trusted: every offset and length is checked with
 * overflow-safe arithmetic before any byte is read, and no byte outside
 * [0, size) is ever touched. Work is O(n log n) in the number of entries.
 */
#include "zip.h"

#include <errno.h>
#include <libdeflate.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- zip constants (APPNOTE.TXT) --------------------------------------- */

#define ZIP_SIG_LOCAL        0x04034b50u /* PK\3\4 */
#define ZIP_SIG_CENTRAL      0x02014b50u /* PK\1\2 */
#define ZIP_SIG_EOCD         0x06054b50u /* PK\5\6 */
#define ZIP_SIG_ZIP64_EOCD   0x06064b50u /* PK\6\6 */
#define ZIP_SIG_ZIP64_LOC    0x07064b50u /* PK\6\7 */
#define ZIP_SIG_DESCRIPTOR   0x08074b50u /* PK\7\8 */

#define ZIP_LOCAL_SIZE       30u
#define ZIP_CENTRAL_SIZE     46u
#define ZIP_EOCD_SIZE        22u
#define ZIP64_LOC_SIZE       20u
#define ZIP64_EOCD_MIN_SIZE  56u   /* fixed part, signature included */
#define ZIP_MAX_COMMENT      65535u

#define ZIP_EXTRA_ZIP64      0x0001u

#define ZIP_FLAG_ENCRYPTED   0x0001u
#define ZIP_FLAG_DESCRIPTOR  0x0008u
#define ZIP_FLAG_PATCHED     0x0020u
#define ZIP_FLAG_STRONG_ENC  0x0040u

#define ZIP_METHOD_STORED    0u
#define ZIP_METHOD_DEFLATED  8u

#define ZIP_U16_MAX          0xFFFFu
#define ZIP_U32_MAX          0xFFFFFFFFu

/* Deflate streams shorter than this may inflate to anything up to it, whatever
 * the ratio: tiny records (a version string) must not trip the bomb check. */
#define ZIP_INFLATE_SLACK    4096u

/* Streaming reads hand out pieces of at most this many bytes: the most an
 * inflating reader ever holds of an entry. */
#define ZIP_PIECE            ((size_t)256 << 10)

/*
 * Every zip error carries an absolute file position: the record is "zip" or
 * the entry name, the offset is in the file, so file_offset equals offset.
 * A macro because ckpt__fail is variadic and cannot be forwarded.
 */
#define ZIP_FAIL(err, status, record, offset, ...) \
    zip_locate_error((err), ckpt__fail((err), (status), (record), (offset), __VA_ARGS__))

static ckpt_status zip_locate_error(ckpt_error *err, ckpt_status status)
{
    ckpt__error_set_file_base(err, 0);
    return status;
}

static unsigned long long ull(uint64_t v) { return (unsigned long long)v; }

/* Is [offset, offset + len) inside [0, limit)? Overflow-safe. */
static bool zip_range_ok(uint64_t offset, uint64_t len, uint64_t limit)
{
    uint64_t end;
    return ckpt__add_u64(offset, len, &end) && end <= limit;
}

/* ---- extra fields ------------------------------------------------------ */

/*
 * The 64-bit values a header defers to its ZIP64 extra field: a field is
 * there only when its 32-bit (disk: 16-bit) slot holds all ones, in the
 * order size, compressed size, header offset, disk.
 */
typedef struct zip_wide_fields {
    bool want_size, want_comp_size, want_offset, want_disk;
    uint64_t size;
    uint64_t comp_size;
    uint64_t header_offset;
    uint32_t disk;
    bool has_zip64;            /* out: a ZIP64 extra field was present */
} zip_wide_fields;

/*
 * Walks the extra field at data[offset .. offset + len): every record must be
 * whole, at most one ZIP64 record, and that one long enough for the values
 * the header asks for. Other records (PyTorch's "FB" alignment padding,
 * timestamps, ...) are skipped.
 */
static ckpt_status zip_parse_extra(const uint8_t *data, uint64_t offset, uint32_t len,
                                   const char *record, const char *where,
                                   zip_wide_fields *wide, ckpt_error *err)
{
    const uint8_t *p = data + offset;
    uint32_t pos = 0;
    wide->has_zip64 = false;
    while (pos < len) {
        if (len - pos < 4)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, record, offset + pos,
                            "%s extra field ends with %u stray bytes (expected a 4-byte record header)",
                            where, (unsigned)(len - pos));
        uint16_t id = ckpt__le16(p + pos);
        uint16_t rec_len = ckpt__le16(p + pos + 2);
        if (rec_len > len - pos - 4)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, record, offset + pos,
                            "%s extra record 0x%04x declares %u bytes, only %u remain in the extra field",
                            where, (unsigned)id, (unsigned)rec_len, (unsigned)(len - pos - 4));
        if (id == ZIP_EXTRA_ZIP64) {
            if (wide->has_zip64)
                return ZIP_FAIL(err, CKPT_ERR_FORMAT, record, offset + pos,
                                "%s header has two ZIP64 extra fields (ambiguous sizes)", where);
            wide->has_zip64 = true;
            const uint8_t *f = p + pos + 4;
            uint32_t need = (wide->want_size ? 8u : 0u) + (wide->want_comp_size ? 8u : 0u) +
                            (wide->want_offset ? 8u : 0u) + (wide->want_disk ? 4u : 0u);
            if (rec_len < need)
                return ZIP_FAIL(err, CKPT_ERR_FORMAT, record, offset + pos,
                                "%s ZIP64 extra field has %u bytes, the header needs %u "
                                "(one 64-bit value per field set to 0xFFFFFFFF)",
                                where, (unsigned)rec_len, (unsigned)need);
            if (wide->want_size) { wide->size = ckpt__le64(f); f += 8; }
            if (wide->want_comp_size) { wide->comp_size = ckpt__le64(f); f += 8; }
            if (wide->want_offset) { wide->header_offset = ckpt__le64(f); f += 8; }
            if (wide->want_disk) wide->disk = ckpt__le32(f);
        }
        pos += 4u + rec_len;
    }
    if (!wide->has_zip64 &&
        (wide->want_size || wide->want_comp_size || wide->want_offset || wide->want_disk))
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, record, offset,
                        "%s header marks a size or offset as 0xFFFFFFFF but has no ZIP64 extra field",
                        where);
    return CKPT_OK;
}

/* Refuses the general-purpose flag bits that change how the data must be read. */
static ckpt_status zip_check_flags(uint16_t flags, const char *record, uint64_t offset,
                                   const char *where, ckpt_error *err)
{
    if (flags & ZIP_FLAG_ENCRYPTED)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, record, offset,
                        "%s header sets flag bit 0x1 (encrypted entry); encrypted entries are not read",
                        where);
    if (flags & ZIP_FLAG_PATCHED)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, record, offset,
                        "%s header sets flag bit 0x20 (patched data); patched entries are not read",
                        where);
    if (flags & ZIP_FLAG_STRONG_ENC)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, record, offset,
                        "%s header sets flag bit 0x40 (strong encryption); encrypted entries are not read",
                        where);
    return CKPT_OK;
}

/* ---- end of central directory ------------------------------------------ */

typedef struct zip_directory {
    uint64_t count;        /* entries */
    uint64_t cd_offset;    /* where the central directory starts */
    uint64_t cd_size;
    uint64_t cd_end;       /* where it must end: the ZIP64 end record or the end record */
} zip_directory;

/*
 * Reads the ZIP64 end record the locator at loc_pos points to and reconciles
 * it with the classic end record at eocd.
 */
static ckpt_status zip_read_zip64_end(const uint8_t *data, uint64_t loc_pos, const uint8_t *eocd,
                                      uint64_t eocd_pos, zip_directory *dir, ckpt_error *err)
{
    const uint8_t *loc = data + loc_pos;
    uint32_t zip64_disk = ckpt__le32(loc + 4);
    uint64_t rec_pos = ckpt__le64(loc + 8);
    uint32_t disks = ckpt__le32(loc + 16);
    if (zip64_disk != 0 || disks > 1)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, "zip", loc_pos,
                        "multi-disk archive (ZIP64 locator names disk %u of %u); only single-file archives are read",
                        (unsigned)zip64_disk, (unsigned)disks);

    if (!zip_range_ok(rec_pos, ZIP64_EOCD_MIN_SIZE, loc_pos) ||
        ckpt__le32(data + rec_pos) != ZIP_SIG_ZIP64_EOCD) {
        /* Data prepended to the archive shifts every offset; say so when the
         * record sits right before the locator, as writers put it. */
        if (loc_pos >= ZIP64_EOCD_MIN_SIZE &&
            ckpt__le32(data + loc_pos - ZIP64_EOCD_MIN_SIZE) == ZIP_SIG_ZIP64_EOCD &&
            rec_pos < loc_pos - ZIP64_EOCD_MIN_SIZE)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", 0,
                            "%llu bytes before the archive: the ZIP64 end record is at %llu, the locator says %llu",
                            ull(loc_pos - ZIP64_EOCD_MIN_SIZE - rec_pos),
                            ull(loc_pos - ZIP64_EOCD_MIN_SIZE), ull(rec_pos));
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", loc_pos,
                        "ZIP64 locator points to offset %llu, where no ZIP64 end of central directory "
                        "record (PK\\6\\6) lies before the locator", ull(rec_pos));
    }
    const uint8_t *rec = data + rec_pos;
    uint64_t rec_size = ckpt__le64(rec + 4);   /* bytes after the first 12 */
    uint64_t rec_end;
    if (rec_size < ZIP64_EOCD_MIN_SIZE - 12 || !ckpt__add_u64(rec_pos, 12 + rec_size, &rec_end) ||
        rec_end != loc_pos)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", rec_pos + 4,
                        "ZIP64 end record size %llu does not reach the locator at %llu "
                        "(expected %llu)", ull(rec_size), ull(loc_pos),
                        ull(loc_pos - rec_pos - 12));

    uint32_t disk = ckpt__le32(rec + 16), cd_disk = ckpt__le32(rec + 20);
    uint64_t disk_entries = ckpt__le64(rec + 24), total = ckpt__le64(rec + 32);
    if (disk != 0 || cd_disk != 0 || disk_entries != total)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, "zip", rec_pos + 16,
                        "multi-disk archive (ZIP64 end record: disk %u, central directory on disk %u, "
                        "%llu of %llu entries here); only single-file archives are read",
                        (unsigned)disk, (unsigned)cd_disk, ull(disk_entries), ull(total));
    dir->count = total;
    dir->cd_size = ckpt__le64(rec + 40);
    dir->cd_offset = ckpt__le64(rec + 48);
    dir->cd_end = rec_pos;

    /* The classic record may carry the real values or the all-ones marker; a
     * third value would make the two records describe different archives. */
    uint16_t c_total = ckpt__le16(eocd + 10);
    uint32_t c_size = ckpt__le32(eocd + 12), c_offset = ckpt__le32(eocd + 16);
    if (c_total != ZIP_U16_MAX && c_total != dir->count)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", eocd_pos + 10,
                        "end record counts %u entries, the ZIP64 end record %llu",
                        (unsigned)c_total, ull(dir->count));
    if (c_size != ZIP_U32_MAX && c_size != dir->cd_size)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", eocd_pos + 12,
                        "end record gives a central directory size of %u, the ZIP64 end record %llu",
                        (unsigned)c_size, ull(dir->cd_size));
    if (c_offset != ZIP_U32_MAX && c_offset != dir->cd_offset)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", eocd_pos + 16,
                        "end record puts the central directory at %u, the ZIP64 end record at %llu",
                        (unsigned)c_offset, ull(dir->cd_offset));
    return CKPT_OK;
}

/*
 * Finds the end of central directory record the way miniz does (the last
 * signature in the file, scanning backwards over at most a maximal comment),
 * then insists that its comment ends exactly at the end of the file.
 */
static ckpt_status zip_read_end(const uint8_t *data, uint64_t size, zip_directory *dir,
                                ckpt_error *err)
{
    if (size < ZIP_EOCD_SIZE)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", 0,
                        "file of %llu bytes is too small for a zip end of central directory record "
                        "(22 bytes)", ull(size));
    uint64_t last = size - ZIP_EOCD_SIZE;
    uint64_t first = last > ZIP_MAX_COMMENT ? last - ZIP_MAX_COMMENT : 0;
    uint64_t eocd_pos = last;
    for (;;) {
        if (ckpt__le32(data + eocd_pos) == ZIP_SIG_EOCD)
            break;
        if (eocd_pos == first)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", first,
                            "no end of central directory record (PK\\5\\6) in the last %llu bytes: "
                            "not a zip archive, or a truncated one", ull(size - first));
        eocd_pos--;
    }

    const uint8_t *eocd = data + eocd_pos;
    uint64_t comment_end = eocd_pos + ZIP_EOCD_SIZE + ckpt__le16(eocd + 20);
    if (comment_end > size)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", eocd_pos + 20,
                        "end record comment of %u bytes runs %llu bytes past the end of the file "
                        "(truncated archive)", (unsigned)ckpt__le16(eocd + 20),
                        ull(comment_end - size));
    if (comment_end < size)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", comment_end,
                        "%llu bytes after the archive (expected the file to end with the end record "
                        "and its comment)", ull(size - comment_end));

    uint16_t disk = ckpt__le16(eocd + 4), cd_disk = ckpt__le16(eocd + 6);
    uint16_t disk_entries = ckpt__le16(eocd + 8), total = ckpt__le16(eocd + 10);

    if (eocd_pos >= ZIP64_LOC_SIZE &&
        ckpt__le32(data + eocd_pos - ZIP64_LOC_SIZE) == ZIP_SIG_ZIP64_LOC) {
        /* ZIP64 archive: the classic record's disk fields may be markers. */
        if ((disk != 0 && disk != ZIP_U16_MAX) || (cd_disk != 0 && cd_disk != ZIP_U16_MAX) ||
            (disk_entries != total && disk_entries != ZIP_U16_MAX && total != ZIP_U16_MAX))
            return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, "zip", eocd_pos + 4,
                            "multi-disk archive (end record: disk %u, central directory on disk %u); "
                            "only single-file archives are read", (unsigned)disk, (unsigned)cd_disk);
        return zip_read_zip64_end(data, eocd_pos - ZIP64_LOC_SIZE, eocd, eocd_pos, dir, err);
    }

    if (disk != 0 || cd_disk != 0 || disk_entries != total)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, "zip", eocd_pos + 4,
                        "multi-disk archive (end record: disk %u, central directory on disk %u, "
                        "%u of %u entries here); only single-file archives are read",
                        (unsigned)disk, (unsigned)cd_disk, (unsigned)disk_entries, (unsigned)total);
    dir->count = total;
    dir->cd_size = ckpt__le32(eocd + 12);
    dir->cd_offset = ckpt__le32(eocd + 16);
    dir->cd_end = eocd_pos;
    return CKPT_OK;
}

/* The central directory must fill exactly the bytes before the end records. */
static ckpt_status zip_check_directory_place(const uint8_t *data, const zip_directory *dir,
                                             ckpt_error *err)
{
    uint64_t declared_end;
    if (!ckpt__add_u64(dir->cd_offset, dir->cd_size, &declared_end) || declared_end > dir->cd_end)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", dir->cd_end,
                        "central directory (offset %llu, %llu bytes) runs past the end record at %llu",
                        ull(dir->cd_offset), ull(dir->cd_size), ull(dir->cd_end));
    if (declared_end == dir->cd_end)
        return CKPT_OK;
    uint64_t actual = dir->cd_end - dir->cd_size;
    uint64_t shift = actual - dir->cd_offset;
    if (dir->count == 0 || ckpt__le32(data + actual) == ZIP_SIG_CENTRAL)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", 0,
                        "%llu bytes before the archive: the central directory starts at %llu, "
                        "the end record says %llu (prepended data or a wrong offset)",
                        ull(shift), ull(actual), ull(dir->cd_offset));
    return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", dir->cd_offset,
                    "central directory (offset %llu, %llu bytes) does not end where the end "
                    "records begin (%llu)", ull(dir->cd_offset), ull(dir->cd_size),
                    ull(dir->cd_end));
}

/* ---- entries ----------------------------------------------------------- */

/* What the open needs to know about an entry beyond ckpt__zip_entry. */
typedef struct zip_span {
    uint64_t central_offset;   /* its central directory record */
    uint64_t end;              /* end of local header + data + descriptor */
} zip_span;

/*
 * Parses the central record at *pos (inside the directory, which ends at
 * cd_end) into e, copying the name to *names. Advances *pos past the record.
 */
static ckpt_status zip_parse_central(const uint8_t *data, uint64_t *pos, uint64_t cd_end,
                                     size_t index, ckpt__zip_entry *e, char **names,
                                     ckpt_error *err)
{
    uint64_t at = *pos;
    if (cd_end - at < ZIP_CENTRAL_SIZE)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", at,
                        "central directory entry %zu is truncated: %llu bytes left, a record needs 46",
                        index, ull(cd_end - at));
    const uint8_t *p = data + at;
    if (ckpt__le32(p) != ZIP_SIG_CENTRAL)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", at,
                        "expected central directory record %zu (PK\\1\\2), found 0x%08x",
                        index, (unsigned)ckpt__le32(p));
    uint16_t name_len = ckpt__le16(p + 28), extra_len = ckpt__le16(p + 30);
    uint16_t comment_len = ckpt__le16(p + 32);
    uint64_t rec_len = (uint64_t)ZIP_CENTRAL_SIZE + name_len + extra_len + comment_len;
    if (rec_len > cd_end - at)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", at,
                        "central directory record %zu (%llu bytes with name, extra and comment) "
                        "runs past the end of the central directory", index, ull(rec_len));
    const uint8_t *name = p + ZIP_CENTRAL_SIZE;
    if (name_len == 0)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", at + 28,
                        "central directory record %zu has an empty name", index);
    if (memchr(name, 0, name_len)) {
        char q[128];
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", at + ZIP_CENTRAL_SIZE,
                        "entry name '%s' contains a NUL byte (names must be plain text)",
                        ckpt__quote(q, sizeof q, name, name_len, false));
    }
    memcpy(*names, name, name_len);
    (*names)[name_len] = '\0';
    e->name = *names;
    e->name_len = name_len;
    *names += name_len + 1;

    e->flags = ckpt__le16(p + 8);
    e->method = ckpt__le16(p + 10);
    e->crc32 = ckpt__le32(p + 16);
    uint32_t comp32 = ckpt__le32(p + 20), size32 = ckpt__le32(p + 24);
    uint16_t disk16 = ckpt__le16(p + 34);
    uint32_t offset32 = ckpt__le32(p + 42);

    zip_wide_fields wide = {
        .want_size = size32 == ZIP_U32_MAX,
        .want_comp_size = comp32 == ZIP_U32_MAX,
        .want_offset = offset32 == ZIP_U32_MAX,
        .want_disk = disk16 == ZIP_U16_MAX,
    };
    CKPT_RETURN_IF_ERROR(zip_parse_extra(data, at + ZIP_CENTRAL_SIZE + name_len, extra_len,
                                         e->name, "central", &wide, err));
    e->size = wide.want_size ? wide.size : size32;
    e->comp_size = wide.want_comp_size ? wide.comp_size : comp32;
    e->header_offset = wide.want_offset ? wide.header_offset : offset32;
    uint32_t disk = wide.want_disk ? wide.disk : disk16;
    if (disk != 0)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, e->name, at + 34,
                        "entry starts on disk %u: multi-disk archives are not read", (unsigned)disk);

    CKPT_RETURN_IF_ERROR(zip_check_flags(e->flags, e->name, at + 8, "central", err));
    if (e->method != ZIP_METHOD_STORED && e->method != ZIP_METHOD_DEFLATED)
        return ZIP_FAIL(err, CKPT_ERR_UNSUPPORTED, e->name, at + 10,
                        "compression method %u is not supported (expected 0 stored or 8 deflate)",
                        (unsigned)e->method);
    if (e->method == ZIP_METHOD_STORED && e->comp_size != e->size)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at + 20,
                        "stored entry has compressed size %llu but size %llu (they must be equal)",
                        ull(e->comp_size), ull(e->size));
    *pos = at + rec_len;
    return CKPT_OK;
}

/*
 * Looks for a data descriptor at data[at ..], before limit: an optional
 * PK\7\8, the CRC, then compressed and uncompressed sizes of 4 or 8 bytes
 * each (8 when the entry is ZIP64). Returns its length in *len, 0 when no
 * descriptor follows. One that is announced by its signature must agree with
 * the central directory.
 */
static ckpt_status zip_match_descriptor(const uint8_t *data, uint64_t at, uint64_t limit,
                                        const ckpt__zip_entry *e, bool zip64, uint64_t *len,
                                        ckpt_error *err)
{
    uint64_t avail = limit - at;
    uint64_t sig_len = 0;
    *len = 0;
    if (avail >= 4 && ckpt__le32(data + at) == ZIP_SIG_DESCRIPTOR)
        sig_len = 4;
    else if (avail >= 4 && ckpt__le32(data + at) == ZIP_SIG_LOCAL)
        return CKPT_OK; /* the next entry follows: no descriptor */

    const uint8_t *p = data + at + sig_len;
    uint64_t body = avail - sig_len;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool wide = (attempt == 0) == zip64;   /* try the expected width first */
        uint64_t need = wide ? 20 : 12;
        if (body < need)
            continue;
        uint64_t comp = wide ? ckpt__le64(p + 4) : ckpt__le32(p + 4);
        uint64_t size = wide ? ckpt__le64(p + 12) : ckpt__le32(p + 8);
        if (ckpt__le32(p) == e->crc32 && comp == e->comp_size && size == e->size) {
            *len = sig_len + need;
            return CKPT_OK;
        }
    }
    if (sig_len == 0)
        return CKPT_OK;  /* unsigned bytes that do not match: not a descriptor */
    if (body < 12)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at,
                        "data descriptor is truncated: %llu bytes before the central directory, "
                        "at least 12 expected after its signature", ull(body));
    return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at,
                    "data descriptor (CRC 0x%08x, sizes %llu/%llu or %llu/%llu) disagrees with the "
                    "central directory (CRC 0x%08x, compressed %llu, size %llu)",
                    (unsigned)ckpt__le32(p), ull(ckpt__le32(p + 4)), ull(ckpt__le32(p + 8)),
                    ull(body >= 20 ? ckpt__le64(p + 4) : 0), ull(body >= 20 ? ckpt__le64(p + 12) : 0),
                    (unsigned)e->crc32, ull(e->comp_size), ull(e->size));
}

/*
 * Checks the local header of e against its central record (at central_at),
 * sets e->data_offset and returns in *end where the entry's bytes stop
 * (header, data and descriptor). Everything must lie before the central
 * directory.
 */
static ckpt_status zip_check_local(const uint8_t *data, uint64_t cd_offset, uint64_t central_at,
                                   ckpt__zip_entry *e, uint64_t *end, ckpt_error *err)
{
    uint64_t at = e->header_offset;
    if (!zip_range_ok(at, ZIP_LOCAL_SIZE, cd_offset))
        /* the offset may lie outside the file: point at the record holding it */
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, central_at,
                        "local header at %llu does not fit before the central directory at %llu",
                        ull(at), ull(cd_offset));
    const uint8_t *p = data + at;
    if (ckpt__le32(p) != ZIP_SIG_LOCAL)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at,
                        "expected a local file header (PK\\3\\4) at %llu, found 0x%08x",
                        ull(at), (unsigned)ckpt__le32(p));
    uint16_t flags = ckpt__le16(p + 6), method = ckpt__le16(p + 8);
    uint32_t crc = ckpt__le32(p + 14);
    uint32_t comp32 = ckpt__le32(p + 18), size32 = ckpt__le32(p + 22);
    uint16_t name_len = ckpt__le16(p + 26), extra_len = ckpt__le16(p + 28);

    uint64_t name_at = at + ZIP_LOCAL_SIZE;
    uint64_t extra_at = name_at + name_len;   /* cannot overflow: at < cd_offset */
    if (!zip_range_ok(name_at, (uint64_t)name_len + extra_len, cd_offset))
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at + 26,
                        "local header name and extra field (%u + %u bytes) run past the central "
                        "directory at %llu", (unsigned)name_len, (unsigned)extra_len, ull(cd_offset));
    /* Scanners that walk local headers see this name, torch sees the central
     * one: both must be the same bytes. */
    if (name_len != e->name_len || memcmp(data + name_at, e->name, name_len) != 0) {
        char lq[128], cq[128];
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, name_at,
                        "local header names the entry '%s' but the central directory names it '%s' "
                        "(the names must be identical)",
                        ckpt__quote(lq, sizeof lq, data + name_at, name_len, false),
                        ckpt__quote(cq, sizeof cq, e->name, e->name_len, false));
    }
    CKPT_RETURN_IF_ERROR(zip_check_flags(flags, e->name, at + 6, "local", err));
    if (method != e->method)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at + 8,
                        "local header says compression method %u, the central directory %u",
                        (unsigned)method, (unsigned)e->method);

    bool descriptor = ((flags | e->flags) & ZIP_FLAG_DESCRIPTOR) != 0;
    bool local_sizes = (flags & ZIP_FLAG_DESCRIPTOR) == 0;
    zip_wide_fields wide = {
        .want_size = local_sizes && size32 == ZIP_U32_MAX,
        .want_comp_size = local_sizes && comp32 == ZIP_U32_MAX,
    };
    CKPT_RETURN_IF_ERROR(zip_parse_extra(data, extra_at, extra_len, e->name, "local", &wide, err));
    if (local_sizes) {
        /* Without a descriptor, the local header is a second copy of the
         * central values: readers that trust either must see the same. */
        uint64_t size = wide.want_size ? wide.size : size32;
        uint64_t comp = wide.want_comp_size ? wide.comp_size : comp32;
        if (crc != e->crc32)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at + 14,
                            "local header CRC 0x%08x differs from the central directory's 0x%08x",
                            (unsigned)crc, (unsigned)e->crc32);
        if (comp != e->comp_size || size != e->size)
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, at + 18,
                            "local header sizes (compressed %llu, size %llu) differ from the central "
                            "directory's (compressed %llu, size %llu)",
                            ull(comp), ull(size), ull(e->comp_size), ull(e->size));
    }

    e->data_offset = extra_at + extra_len;
    uint64_t data_end;
    if (!ckpt__add_u64(e->data_offset, e->comp_size, &data_end) || data_end > cd_offset)
        return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                        "entry data (%llu bytes at %llu) runs past the central directory at %llu",
                        ull(e->comp_size), ull(e->data_offset), ull(cd_offset));
    uint64_t desc_len = 0;
    if (descriptor) {
        bool zip64 = wide.has_zip64 || e->size >= ZIP_U32_MAX || e->comp_size >= ZIP_U32_MAX;
        CKPT_RETURN_IF_ERROR(zip_match_descriptor(data, data_end, cd_offset, e, zip64, &desc_len, err));
    }
    *end = data_end + desc_len;
    return CKPT_OK;
}

/* ---- sorting (merge sort of entry indices; no qsort: it has no context) - */

typedef int (*zip_compare_fn)(const ckpt__zip_entry *entries, uint32_t a, uint32_t b);

static int zip_compare_offsets(const ckpt__zip_entry *entries, uint32_t a, uint32_t b)
{
    uint64_t x = entries[a].header_offset, y = entries[b].header_offset;
    return (x > y) - (x < y);
}

/* Names compare as miniz (PyTorch's zip reader) compares them: ASCII case
 * ignored. "data.pkl" and "DATA.PKL" are one name to torch, so two entries
 * that differ only in case are an ambiguous archive, and a lookup finds
 * either spelling. */
static int name_cmp(const char *x, size_t xn, const char *y, size_t yn)
{
    size_t n = xn < yn ? xn : yn, i = 0;
    /* Bytes that are equal are equal in any case: skip a shared prefix
     * ("archive/data/") eight at a time. */
    while (i + 8 <= n) {
        uint64_t a, b;
        memcpy(&a, x + i, 8);
        memcpy(&b, y + i, 8);
        if (a != b)
            break;
        i += 8;
    }
    for (; i < n; i++) {
        unsigned char a = (unsigned char)x[i], b = (unsigned char)y[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return (int)a - (int)b;
    }
    return (xn > yn) - (xn < yn);
}

/* ---- the name index ---------------------------------------------------
 * Names come from the file: a fixed hash would let an archive send every
 * name to one slot and make its open quadratic. SipHash-1-3 keyed from
 * addresses (which ASLR varies), of the name with ASCII case folded as
 * name_cmp folds it. */

static uint64_t name_hash(const void *owner, const char *name, size_t n)
{
    uint64_t k0, k1;
    ckpt__hash_key(owner, &k0, &k1);
    return ckpt__siphash13(k0, k1, name, n, true);
}

/* The slot of name in the index: its entry's, or the empty one where it
 * would go. */
static size_t index_slot(const ckpt__zip *z, const char *name, size_t len)
{
    size_t mask = z->index_cap - 1;
    for (size_t s = (size_t)name_hash(z->entries, name, len) & mask;; s = (s + 1) & mask) {
        uint32_t e = z->index[s];
        if (e == 0)
            return s;
        const ckpt__zip_entry *x = &z->entries[e - 1];
        if (name_cmp(x->name, x->name_len, name, len) == 0)
            return s;
    }
}

/* Stable bottom-up merge sort; n is bounded by an allocation, so 2 * width
 * cannot overflow. */
static void zip_sort(uint32_t *idx, uint32_t *scratch, size_t n, zip_compare_fn cmp,
                     const ckpt__zip_entry *entries)
{
    uint32_t *src = idx, *dst = scratch;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = cmp(entries, src[j], src[i]) < 0 ? src[j++] : src[i++];
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
        memcpy(idx, src, n * sizeof *idx);
}

/* ---- public (internal) API ------------------------------------------- */

bool ckpt__zip_detect(const uint8_t *data, uint64_t size)
{
    if (!data || size < 4)
        return false;
    uint32_t sig = ckpt__le32(data);
    return sig == ZIP_SIG_LOCAL || (sig == ZIP_SIG_EOCD && size >= ZIP_EOCD_SIZE);
}

void ckpt__zip_close(ckpt__zip *z)
{
    if (!z)
        return;
    free(z->entries);
    free(z->index);
    free(z->names);
    memset(z, 0, sizeof *z);
}

bool ckpt__zip_declared(const uint8_t *data, uint64_t size, uint64_t *count,
                        uint64_t *cd_offset)
{
    zip_directory dir = {0, 0, 0, 0};
    if (!data || zip_read_end(data, size, &dir, NULL) != CKPT_OK)
        return false;
    *count = dir.count;
    *cd_offset = dir.cd_offset;
    return true;
}

ckpt_status ckpt__zip_open(ckpt__zip *z, const uint8_t *data, uint64_t size,
                           const ckpt_limits *limits, ckpt_error *err)
{
    ckpt_limits defaults;
    if (!z)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "zip", CKPT_NO_OFFSET, "no zip handle given");
    memset(z, 0, sizeof *z);
    if (!data && size > 0)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "zip", CKPT_NO_OFFSET,
                          "no data given for %llu bytes", ull(size));
    if (!limits) {
        ckpt_limits_default(&defaults);
        limits = &defaults;
    }

    ckpt_status st = CKPT_OK;
    zip_span *spans = NULL;
    uint32_t *order = NULL, *scratch = NULL;
    zip_directory dir = {0, 0, 0, 0};
    size_t count = 0, parsed = 0;
    uint64_t pos = 0, cd_stop = 0;
    char *names = NULL;

    st = zip_read_end(data, size, &dir, err);
    if (st != CKPT_OK)
        goto cleanup;
    st = zip_check_directory_place(data, &dir, err);
    if (st != CKPT_OK)
        goto cleanup;
    if (dir.count > limits->max_zip_entries || dir.count > UINT32_MAX) {
        st = ZIP_FAIL(err, CKPT_ERR_LIMIT, "zip", dir.cd_offset,
                      "archive declares %llu entries, more than the limit of %llu (max_zip_entries)",
                      ull(dir.count), ull(limits->max_zip_entries));
        goto cleanup;
    }
    /* Each record takes at least 46 bytes: a count the directory cannot hold
     * is refused before it sizes any allocation. */
    if (dir.count > dir.cd_size / ZIP_CENTRAL_SIZE) {
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", dir.cd_offset,
                      "end record declares %llu entries, a central directory of %llu bytes holds at most %llu",
                      ull(dir.count), ull(dir.cd_size), ull(dir.cd_size / ZIP_CENTRAL_SIZE));
        goto cleanup;
    }
    z->base = data;
    z->size = size;
    if (dir.count == 0 && dir.cd_size != 0) {
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", dir.cd_offset,
                      "end record declares no entries but a central directory of %llu bytes",
                      ull(dir.cd_size));
        goto cleanup;
    }
    if (dir.count == 0 && dir.cd_end != 0) {
        /* An empty archive is its end records alone: nothing may precede them. */
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", 0,
                      "%llu bytes before the archive: an archive without entries must start "
                      "with its end record", ull(dir.cd_end));
        goto cleanup;
    }
    if (dir.count == 0) /* an empty archive */
        return CKPT_OK;

    count = (size_t)dir.count;
    if (dir.cd_size > SIZE_MAX || count > SIZE_MAX / sizeof(zip_span)) {
        st = ZIP_FAIL(err, CKPT_ERR_LIMIT, "zip", dir.cd_offset,
                      "central directory of %llu bytes does not fit in memory", ull(dir.cd_size));
        goto cleanup;
    }
    /* Names plus their NULs never exceed the directory: each record spends
     * 46 bytes besides its name. */
    z->names = malloc((size_t)dir.cd_size);
    z->entries = calloc(count, sizeof *z->entries);
    z->index_cap = 16;
    while (z->index_cap < count * 2) /* count fits 32 bits (checked above) */
        z->index_cap *= 2;
    z->index = calloc(z->index_cap, sizeof *z->index);
    spans = malloc(count * sizeof *spans);
    order = malloc(count * sizeof *order);
    scratch = malloc(count * sizeof *scratch);
    if (!z->names || !z->entries || !z->index || !spans || !order || !scratch) {
        st = ZIP_FAIL(err, CKPT_ERR_NOMEM, "zip", dir.cd_offset,
                      "out of memory for a central directory of %zu entries", count);
        goto cleanup;
    }

    names = z->names;
    pos = dir.cd_offset;
    cd_stop = dir.cd_offset + dir.cd_size;   /* checked against cd_end above */
    while (pos < cd_stop) {
        if (parsed == count) {
            st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", pos,
                          "central directory holds more than the %zu entries the end record declares",
                          count);
            goto cleanup;
        }
        ckpt__zip_entry *e = &z->entries[parsed];
        spans[parsed].central_offset = pos;
        st = zip_parse_central(data, &pos, cd_stop, parsed, e, &names, err);
        if (st != CKPT_OK)
            goto cleanup;
        st = zip_check_local(data, dir.cd_offset, spans[parsed].central_offset, e,
                             &spans[parsed].end, err);
        if (st != CKPT_OK)
            goto cleanup;
        parsed++;
    }
    if (parsed != count) {
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", cd_stop,
                      "end record declares %zu entries, the central directory holds %zu",
                      count, parsed);
        goto cleanup;
    }
    z->count = count;

    /* Overlap: in file order, each entry must end before the next begins.
     * Two central records sharing one local header are caught here too. */
    size_t in_order = 1; /* writers list entries in file order: no sort then */
    for (size_t i = 0; i < count; i++)
        order[i] = (uint32_t)i;
    while (in_order < count &&
           z->entries[in_order - 1].header_offset < z->entries[in_order].header_offset)
        in_order++;
    if (in_order < count)
        zip_sort(order, scratch, count, zip_compare_offsets, z->entries);
    if (z->entries[order[0]].header_offset != 0) {
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, "zip", 0,
                      "%llu bytes before the first local header (expected the archive to start "
                      "with an entry)", ull(z->entries[order[0]].header_offset));
        goto cleanup;
    }
    for (size_t i = 1; i < count; i++) {
        const ckpt__zip_entry *prev = &z->entries[order[i - 1]];
        const ckpt__zip_entry *next = &z->entries[order[i]];
        uint64_t prev_end = spans[order[i - 1]].end;
        if (prev_end > next->header_offset) {
            char q[128];
            st = ZIP_FAIL(err, CKPT_ERR_FORMAT, next->name, next->header_offset,
                          "entry starting at %llu overlaps '%s' (bytes %llu..%llu); entries must not "
                          "share bytes", ull(next->header_offset),
                          ckpt__quote(q, sizeof q, prev->name, prev->name_len, false),
                          ull(prev->header_offset), ull(prev_end));
            goto cleanup;
        }
    }

    for (size_t i = 0; i < count; i++) {
        const ckpt__zip_entry *e = &z->entries[i];
        size_t slot = index_slot(z, e->name, e->name_len);
        if (z->index[slot] != 0) {
            /* Name the later record: readers disagree on which copy wins. */
            const ckpt__zip_entry *first = &z->entries[z->index[slot] - 1];
            char q[128];
            bool same = first->name_len == e->name_len &&
                        memcmp(first->name, e->name, e->name_len) == 0;
            st = ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, spans[i].central_offset,
                          same ? "duplicate entry name '%s' (ambiguous archive)"
                               : "entry name '%s' differs from another only in case, which "
                                 "torch's zip reader ignores (ambiguous archive)",
                          ckpt__quote(q, sizeof q, e->name, e->name_len, false));
            goto cleanup;
        }
        z->index[slot] = (uint32_t)(i + 1);
    }

cleanup:
    free(spans);
    free(order);
    free(scratch);
    if (st != CKPT_OK)
        ckpt__zip_close(z);
    return st;
}

long ckpt__zip_find(const ckpt__zip *z, const char *name)
{
    if (!z || !name || z->count == 0)
        return -1;
    uint32_t e = z->index[index_slot(z, name, strlen(name))];
    return e ? (long)e - 1 : -1;
}

long ckpt__zip_find_near(const ckpt__zip *z, const char *name, size_t len, size_t hint)
{
    if (!z || !name || z->count == 0)
        return -1;
    if (hint < z->count &&
        name_cmp(z->entries[hint].name, z->entries[hint].name_len, name, len) == 0)
        return (long)hint;
    uint32_t e = z->index[index_slot(z, name, len)];
    return e ? (long)e - 1 : -1;
}

/* Refuses an entry whose inflated size passes the limits, before inflating. */
static ckpt_status zip_inflate_limits(const ckpt__zip_entry *e, const ckpt_limits *limits,
                                      ckpt_error *err)
{
    if (e->size > limits->max_inflated_bytes)
        return ZIP_FAIL(err, CKPT_ERR_LIMIT, e->name, e->data_offset,
                        "entry inflates to %llu bytes, more than the limit of %llu "
                        "(max_inflated_bytes; a zip bomb?)",
                        ull(e->size), ull(limits->max_inflated_bytes));
    uint64_t allowed;
    if (ckpt__mul_u64(e->comp_size, limits->max_inflate_ratio, &allowed) &&
        ckpt__add_u64(allowed, ZIP_INFLATE_SLACK, &allowed) && e->size > allowed)
        return ZIP_FAIL(err, CKPT_ERR_LIMIT, e->name, e->data_offset,
                        "entry inflates %llu bytes to %llu, a ratio above the limit of %llu "
                        "(max_inflate_ratio; a zip bomb?)",
                        ull(e->comp_size), ull(e->size), ull(limits->max_inflate_ratio));
    return CKPT_OK;
}

ckpt_status ckpt__zip_read(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                           const uint8_t **data, uint8_t **owned, ckpt_error *err)
{
    ckpt_limits defaults;
    if (data)
        *data = NULL;
    if (owned)
        *owned = NULL;
    if (!z || !data || !owned)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "zip", CKPT_NO_OFFSET,
                          "ckpt__zip_read needs a zip, data and owned");
    if (index >= z->count)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "zip", CKPT_NO_OFFSET,
                          "entry index %zu is out of range (%zu entries)", index, z->count);
    if (!limits) {
        ckpt_limits_default(&defaults);
        limits = &defaults;
    }
    const ckpt__zip_entry *e = &z->entries[index];
    const uint8_t *in = z->base + e->data_offset;   /* checked at open */

    if (e->method == ZIP_METHOD_STORED) {
        *data = in;
        return CKPT_OK;
    }

    /* A zip bomb is refused before anything is allocated. */
    CKPT_RETURN_IF_ERROR(zip_inflate_limits(e, limits, err));
    if (e->size > SIZE_MAX - 1 || e->comp_size > SIZE_MAX)
        return ZIP_FAIL(err, CKPT_ERR_LIMIT, e->name, e->data_offset,
                        "entry of %llu bytes does not fit in memory", ull(e->size));

    uint8_t *out = malloc(e->size ? (size_t)e->size : 1);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!out || !d) {
        free(out);
        libdeflate_free_decompressor(d);
        return ZIP_FAIL(err, CKPT_ERR_NOMEM, e->name, e->data_offset,
                        "out of memory inflating %llu bytes", ull(e->size));
    }
    size_t used = 0;
    /* No actual_out pointer: libdeflate then insists on exactly e->size bytes. */
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        d, in, (size_t)e->comp_size, out, (size_t)e->size, &used, NULL);
    libdeflate_free_decompressor(d);
    ckpt_status st = CKPT_OK;
    if (r == LIBDEFLATE_SHORT_OUTPUT)
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                      "deflate data inflates to fewer bytes than the declared size %llu", ull(e->size));
    else if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                      "deflate data inflates to more bytes than the declared size %llu", ull(e->size));
    else if (r != LIBDEFLATE_SUCCESS)
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                      "invalid deflate data (%llu compressed bytes)", ull(e->comp_size));
    else if (used != e->comp_size)
        /* Bytes after the end of the stream would be invisible to every reader. */
        st = ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset + used,
                      "deflate stream ends after %zu of its %llu compressed bytes",
                      used, ull(e->comp_size));
    if (st != CKPT_OK) {
        free(out);
        return st;
    }
    *data = out;
    *owned = out;
    return CKPT_OK;
}

/* ---- streaming --------------------------------------------------------- */

ckpt__inflate_result ckpt__inflate(const uint8_t *in, uint64_t in_size, uint64_t out_size,
                                   ckpt__inflate_sink sink, void *user, uint64_t *in_used)
{
    if (in_used)
        *in_used = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) /* raw deflate, as zip holds it */
        return CKPT__INFLATE_NOMEM;
    uint8_t *piece = malloc(ZIP_PIECE);
    if (!piece) {
        inflateEnd(&zs);
        return CKPT__INFLATE_NOMEM;
    }
    ckpt__inflate_result r = CKPT__INFLATE_OK;
    uint64_t fed = 0, produced = 0;
    for (;;) {
        if (zs.avail_in == 0 && fed < in_size) {
            /* zlib counts input in uInt: feed long streams in parts */
            uint64_t n = in_size - fed < (uint64_t)(UINT_MAX / 2) ? in_size - fed : UINT_MAX / 2;
            zs.next_in = (Bytef *)(uintptr_t)(in + fed);
            zs.avail_in = (uInt)n;
            fed += n;
        }
        /* Past the declared size, ask for one more byte: getting it means the
         * stream holds more than declared, and no more than that is made. */
        uint64_t want = out_size - produced;
        size_t room = want == 0 ? 1 : want < ZIP_PIECE ? (size_t)want : ZIP_PIECE;
        zs.next_out = piece;
        zs.avail_out = (uInt)room;
        int zr = inflate(&zs, Z_NO_FLUSH);
        size_t got = room - zs.avail_out;
        if (got) {
            if (want == 0) {
                r = CKPT__INFLATE_LONG;
                break;
            }
            produced += got;
            if (sink && !sink(user, piece, got)) {
                r = CKPT__INFLATE_STOPPED;
                break;
            }
        }
        if (zr == Z_STREAM_END) {
            if (produced < out_size)
                r = CKPT__INFLATE_SHORT;
            else if (fed - zs.avail_in != in_size)
                r = CKPT__INFLATE_TRAILING;
            break;
        }
        if (zr == Z_BUF_ERROR && zs.avail_in == 0 && fed == in_size) {
            r = CKPT__INFLATE_BAD; /* the input ends inside the stream */
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            r = zr == Z_MEM_ERROR ? CKPT__INFLATE_NOMEM : CKPT__INFLATE_BAD;
            break;
        }
    }
    if (in_used)
        *in_used = fed - zs.avail_in;
    inflateEnd(&zs);
    free(piece);
    return r;
}

typedef struct zip_stream_state {
    ckpt__zip_sink sink;
    void *user;
    ckpt_error *err;
    ckpt_status st;       /* the sink's error */
    uint64_t offset;      /* bytes passed so far */
    uint32_t crc;
} zip_stream_state;

static bool zip_stream_piece(void *user, const uint8_t *p, size_t n)
{
    zip_stream_state *s = user;
    s->crc = (uint32_t)libdeflate_crc32(s->crc, p, n);
    if (s->sink) {
        s->st = s->sink(s->user, s->offset, p, n, s->err);
        if (s->st != CKPT_OK)
            return false;
    }
    s->offset += n;
    return true;
}

#define ZIP_PREAD_MIN ((uint64_t)256 << 10)

/* A stored entry read with pread from the archive's file (ahead->fd) into
 * a buffer that stays in the CPU's caches, rather than faulted in through
 * the map: first touches of a map cost a fault per few pages. */
/* A record's read that failed at byte off of its data (code: an errno,
 * ENODATA when the file ended first). */
static ckpt_status read_fail(zip_stream_state *s, const ckpt__zip_entry *e, uint64_t off,
                             int code)
{
    return ZIP_FAIL(s->err, CKPT_ERR_IO, e->name, e->data_offset + off,
                    "cannot read the record: %s",
                    code == ENODATA ? "the file shrank while being read" : strerror(code));
}

static ckpt_status zip_stream_pread(const ckpt__zip *z, const ckpt__zip_entry *e,
                                    zip_stream_state *s, ckpt__ahead *ahead)
{
    /* a large file: read on a second thread while the sink works */
    ckpt__reader *reader = ckpt__ahead_reader(ahead, CKPT__READER_PIECE);
    if (reader) {
        ckpt__reader_start(reader, e->data_offset, e->size);
        for (uint64_t off = 0; off < e->size;) {
            const uint8_t *p;
            size_t n;
            int code = ckpt__reader_next(reader, &p, &n);
            if (n && !zip_stream_piece(s, p, n))
                return s->st;
            off += n;
            if (code)
                return read_fail(s, e, off, code);
        }
        return CKPT_OK;
    }
    uint8_t *buf = malloc(e->size < ZIP_PIECE ? (size_t)e->size : ZIP_PIECE);
    if (!buf)
        return ZIP_FAIL(s->err, CKPT_ERR_NOMEM, e->name, e->data_offset,
                        "out of memory for a read buffer");
    (void)z;
    for (uint64_t off = 0; off < e->size;) {
        ckpt__ahead_at(ahead, e->data_offset + off);
        size_t n = e->size - off < ZIP_PIECE ? (size_t)(e->size - off) : ZIP_PIECE;
        size_t got;
        int code = ckpt__pread_full(ahead->fd, buf, n, e->data_offset + off, &got);
        if (code) {
            free(buf);
            return read_fail(s, e, off + got, code);
        }
        if (!zip_stream_piece(s, buf, n)) {
            free(buf);
            return s->st;
        }
        off += n;
    }
    free(buf);
    return CKPT_OK;
}

ckpt_status ckpt__zip_stream(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                             ckpt__zip_sink sink, void *user, ckpt_error *err)
{
    return ckpt__zip_stream_ahead(z, index, limits, sink, user, NULL, err);
}

ckpt_status ckpt__zip_stream_ahead(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                                   ckpt__zip_sink sink, void *user, ckpt__ahead *ahead,
                                   ckpt_error *err)
{
    ckpt_limits defaults;
    if (!z || index >= z->count)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "zip", CKPT_NO_OFFSET,
                          "entry index %zu is out of range", index);
    if (!limits) {
        ckpt_limits_default(&defaults);
        limits = &defaults;
    }
    const ckpt__zip_entry *e = &z->entries[index];
    const uint8_t *in = z->base + e->data_offset;   /* checked at open */
    zip_stream_state s = {.sink = sink, .user = user, .err = err, .st = CKPT_OK};
    /* small records (a dense archive, which the open mapped whole) read from
     * the map: a pread each would cost more in system calls than it saves */
    if (e->method == ZIP_METHOD_STORED && ahead && ahead->fd >= 0 && e->size >= ZIP_PREAD_MIN) {
        CKPT_RETURN_IF_ERROR(zip_stream_pread(z, e, &s, ahead));
    } else if (e->method == ZIP_METHOD_STORED) {
        /* a cold file: the device reads a window ahead of the pieces */
        ckpt__ahead own;
        if (!ahead) {
            ckpt__ahead_init(&own, -1, z->base, e->data_offset, e->data_offset + e->size);
            ahead = &own;
        }
        for (uint64_t off = 0; off < e->size;) {
            ckpt__ahead_at(ahead, e->data_offset + off);
            size_t n = e->size - off < ZIP_PIECE ? (size_t)(e->size - off) : ZIP_PIECE;
            if (!zip_stream_piece(&s, in + off, n))
                return s.st;
            off += n;
        }
    } else {
        CKPT_RETURN_IF_ERROR(zip_inflate_limits(e, limits, err));
        uint64_t used = 0;
        ckpt__inflate_result r =
            ckpt__inflate(in, e->comp_size, e->size, zip_stream_piece, &s, &used);
        switch (r) {
        case CKPT__INFLATE_OK:
            break;
        case CKPT__INFLATE_STOPPED:
            return s.st;
        case CKPT__INFLATE_NOMEM:
            return ZIP_FAIL(err, CKPT_ERR_NOMEM, e->name, e->data_offset,
                            "out of memory for an inflate stream");
        case CKPT__INFLATE_SHORT:
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                            "deflate data inflates to fewer bytes than the declared size %llu",
                            ull(e->size));
        case CKPT__INFLATE_LONG:
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                            "deflate data inflates to more bytes than the declared size %llu",
                            ull(e->size));
        case CKPT__INFLATE_TRAILING:
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset + used,
                            "deflate stream ends after %llu of its %llu compressed bytes",
                            ull(used), ull(e->comp_size));
        case CKPT__INFLATE_BAD:
        default:
            return ZIP_FAIL(err, CKPT_ERR_FORMAT, e->name, e->data_offset,
                            "invalid deflate data (%llu compressed bytes)", ull(e->comp_size));
        }
    }
    if (s.crc != e->crc32)
        return ZIP_FAIL(err, CKPT_ERR_CORRUPT, e->name, e->data_offset,
                        "CRC32 mismatch: the central directory says 0x%08x, the data has 0x%08x",
                        (unsigned)e->crc32, (unsigned)s.crc);
    return CKPT_OK;
}

ckpt_status ckpt__zip_check_crc(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                                ckpt_error *err)
{
    return ckpt__zip_stream(z, index, limits, NULL, NULL, err);
}

/* zip.c - zip archives built record by record, ZIP64 and wrong end records
 * included. */
#include "support.h"

#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>

uint32_t crc32_of(const void *p, size_t n) { return (uint32_t)libdeflate_crc32(0, p, n); }

zrec zr_stored(const char *name, const void *data, size_t len)
{
    zrec z = {name, data, len, len, crc32_of(data, len), 0, false, 0};
    return z;
}

zrec zr_deflated(const char *name, const void *data, size_t len, int level, buf *out)
{
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
    if (!c)
        abort();
    size_t bound = libdeflate_deflate_compress_bound(c, len);
    uint8_t *tmp = malloc(bound);
    if (!tmp)
        abort();
    size_t n = libdeflate_deflate_compress(c, data, len, tmp, bound);
    libdeflate_free_compressor(c);
    if (n == 0)
        abort();
    memset(out, 0, sizeof(*out));
    b_put(out, tmp, n);
    free(tmp);
    zrec z = {name, out->p, n, len, crc32_of(data, len), 8, false, 0};
    return z;
}

zbuilt zip_build(const zrec *recs, int n, const zend *end)
{
    zbuilt z;
    memset(&z, 0, sizeof(z));
    if (n > ZIP_MAX_RECORDS)
        abort();
    bool aligned = !(end && end->unaligned);
    unsigned flags = aligned ? 0x0800 : 0;
    uint64_t header_off[ZIP_MAX_RECORDS];
    buf *b = &z.file;
    for (int i = 0; i < n; i++) {
        const zrec *r = &recs[i];
        size_t name_len = strlen(r->name);
        size_t z64 = r->zip64 ? 20 : 0;
        header_off[i] = b->len;
        size_t start = b->len + 30 + name_len + z64 + 4;
        size_t pad = aligned ? (64 - start % 64) % 64 : 0;
        b_le(b, 0x04034b50u, 4);
        b_le(b, r->zip64 ? 45 : 20, 2);
        b_le(b, flags, 2);
        b_le(b, r->method, 2);
        b_le(b, 0, 4);
        b_le(b, r->crc, 4);
        b_le(b, r->zip64 ? 0xFFFFFFFFu : r->stored, 4);
        b_le(b, r->zip64 ? 0xFFFFFFFFu : r->size, 4);
        b_le(b, name_len, 2);
        b_le(b, z64 + (aligned ? 4 + pad : 0), 2);
        b_str(b, r->name);
        if (r->zip64) {
            b_le(b, 1, 2);
            b_le(b, 16, 2);
            b_le(b, r->size, 8);
            b_le(b, r->stored, 8);
        }
        if (aligned) {
            b_str(b, "FB");
            b_le(b, pad, 2);
            b_fill(b, 'Z', pad);
        }
        z.data_offset[i] = b->len;
        b_put(b, r->data, r->stored);
    }
    uint64_t cd_start = b->len;
    for (int i = 0; i < n; i++) {
        const zrec *r = &recs[i];
        size_t name_len = strlen(r->name);
        bool wide_off = r->zip64 && r->zip64_offset;
        b_le(b, 0x02014b50u, 4);
        b_le(b, r->zip64 ? 45 : 20, 2);
        b_le(b, r->zip64 ? 45 : 20, 2);
        b_le(b, flags, 2);
        b_le(b, r->method, 2);
        b_le(b, 0, 4);
        b_le(b, r->crc, 4);
        b_le(b, r->zip64 ? 0xFFFFFFFFu : r->stored, 4);
        b_le(b, r->zip64 ? 0xFFFFFFFFu : r->size, 4);
        b_le(b, name_len, 2);
        b_le(b, r->zip64 ? (wide_off ? 28 : 20) : 0, 2);
        b_le(b, 0, 2);
        b_le(b, 0, 2);
        b_le(b, 0, 2);
        b_le(b, 0, 4);
        b_le(b, wide_off ? 0xFFFFFFFFu : header_off[i], 4);
        b_str(b, r->name);
        if (r->zip64) {
            b_le(b, 1, 2);
            b_le(b, wide_off ? 24 : 16, 2);
            b_le(b, r->size, 8);
            b_le(b, r->stored, 8);
            if (wide_off)
                b_le(b, r->zip64_offset, 8);
        }
    }
    uint64_t cd_size = b->len - cd_start;
    uint64_t count = end && end->set_count ? end->count : (uint64_t)n;
    uint64_t dsize = end && end->set_cd_size ? end->cd_size : cd_size;
    uint64_t doff = end && end->set_cd_offset ? end->cd_offset : cd_start;
    bool zip64 = end && end->zip64;
    if (zip64) {
        uint64_t rec = b->len;
        b_le(b, 0x06064b50u, 4);
        b_le(b, 44, 8);
        b_le(b, 45, 2);
        b_le(b, 45, 2);
        b_le(b, 0, 4);
        b_le(b, 0, 4);
        b_le(b, count, 8);
        b_le(b, count, 8);
        b_le(b, dsize, 8);
        b_le(b, doff, 8);
        b_le(b, 0x07064b50u, 4);
        b_le(b, 0, 4);
        b_le(b, rec, 8);
        b_le(b, 1, 4);
    }
    b_le(b, 0x06054b50u, 4);
    b_le(b, 0, 2);
    b_le(b, 0, 2);
    b_le(b, zip64 ? 0xFFFF : count, 2);
    b_le(b, zip64 ? 0xFFFF : count, 2);
    b_le(b, zip64 ? 0xFFFFFFFFu : dsize, 4);
    b_le(b, zip64 ? 0xFFFFFFFFu : doff, 4);
    b_le(b, 0, 2);
    return z;
}

zbuilt torch_zip(const buf *pkl, const uint8_t *storage, size_t storage_len)
{
    static const uint8_t version[] = "3\n";
    zrec recs[3];
    int n = 0;
    recs[n++] = zr_stored("archive/data.pkl", pkl->p, pkl->len);
    if (storage)
        recs[n++] = zr_stored("archive/data/0", storage, storage_len);
    recs[n++] = zr_stored("archive/version", version, 2);
    return zip_build(recs, n, NULL);
}

/*
 * zip_write.c - a streaming zip writer that lays records out as PyTorch's
 * PyTorchStreamWriter (miniz built with ZIP64 on, no timestamps) does:
 *
 *   local header   version 0, flags 0x0808 (data descriptor, UTF-8; 0x0800
 *                  for an empty record, which gets no descriptor), method 0,
 *                  time, date, CRC and sizes 0
 *   extra field    a ZIP64 record (id 1) when the size or the header offset
 *                  reaches 0xFFFFFFFF: (size, 0) for a large size, then the
 *                  offset for a large offset; then PyTorch's "FB" record,
 *                  'Z' bytes that make the data start at a multiple of 64
 *   data
 *   descriptor     PK\7\8, CRC, sizes: 32-bit, or 64-bit when the local
 *                  header has a ZIP64 record
 *
 * then the central directory (real CRC and sizes, 0xFFFFFFFF plus a ZIP64
 * record (size, size, offset as needed) for large values), the ZIP64 end of
 * central directory record and its locator (always, as PyTorch asks miniz
 * for ZIP64 from the start) and the classic end record.
 */
#include "zip.h"

#include <libdeflate.h>
#include <pthread.h>
#include <stdlib.h>

#define SIG_LOCAL       0x04034b50u
#define SIG_CENTRAL     0x02014b50u
#define SIG_DESCRIPTOR  0x08074b50u
#define SIG_ZIP64_END   0x06064b50u
#define SIG_ZIP64_LOC   0x07064b50u
#define SIG_END         0x06054b50u

#define LOCAL_SIZE      30u
#define CENTRAL_SIZE    46u
#define ZIP64_END_SIZE  56u
#define ZIP64_LOC_SIZE  20u
#define END_SIZE        22u

#define FLAG_DESCRIPTOR 0x0008u
#define FLAG_UTF8       0x0800u

#define ALIGNMENT       64u
#define WRITE_BUF_SIZE  ((size_t)64 * 1024)

struct ckpt__zip_wentry {
    size_t name_at;              /* in the names buffer */
    uint16_t name_len;
    uint16_t flags;
    uint32_t crc;
    uint64_t header_offset;
    uint64_t size;
};

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static const char *zip_record(void) { return "zip"; }

/* ---- CRC on a second core ------------------------------------------------ */

/* Writing a large piece is a copy into the page cache on this core; its
 * CRC32 is computed meanwhile on another, so a save costs the write alone
 * (1 GiB: the CRC is about 70 ms of a 270 ms save). One job at a time: the
 * writer hands the bytes over, writes them, and waits for the CRC before
 * it returns (the bytes are the caller's only until then). */
#define CRC_WORKER_MIN ((size_t)1 << 20)
/* Pieces of an input copied into a record, each handed to the second
 * thread: big enough that the hand-over is rare, small enough to stay in
 * cache. */
#define COPY_PIECE ((size_t)1 << 20)

typedef struct ckpt__crc_worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const uint8_t *p;            /* the job: CRC of p[0..n) after seed */
    size_t n;
    uint32_t seed, result;
    bool second;                 /* and after seed2 too (the whole file's) */
    uint32_t seed2, result2;
    enum { CRC_IDLE, CRC_JOB, CRC_DONE, CRC_QUIT } state;
} ckpt__crc_worker;

static void *crc_worker_main(void *arg)
{
    ckpt__crc_worker *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->state != CRC_JOB && c->state != CRC_QUIT)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->state == CRC_QUIT)
            break;
        const uint8_t *p = c->p;
        size_t n = c->n;
        uint32_t seed = c->seed, seed2 = c->seed2;
        bool second = c->second;
        pthread_mutex_unlock(&c->mu);
        uint32_t crc = (uint32_t)libdeflate_crc32(seed, p, n);
        uint32_t crc2 = second ? (uint32_t)libdeflate_crc32(seed2, p, n) : 0;
        pthread_mutex_lock(&c->mu);
        c->result = crc;
        c->result2 = crc2;
        c->state = CRC_DONE;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static ckpt__crc_worker *crc_worker_start(void)
{
    ckpt__crc_worker *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    pthread_attr_t attr;
    bool ok = pthread_mutex_init(&c->mu, NULL) == 0;
    if (ok && pthread_cond_init(&c->cv, NULL) != 0) {
        pthread_mutex_destroy(&c->mu);
        ok = false;
    }
    if (ok && pthread_attr_init(&attr) == 0) {
        /* it calls one CRC routine: a small stack, little address space */
        pthread_attr_setstacksize(&attr, (size_t)256 << 10);
        ok = pthread_create(&c->thread, &attr, crc_worker_main, c) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) {
            pthread_cond_destroy(&c->cv);
            pthread_mutex_destroy(&c->mu);
        }
    } else if (ok) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        ok = false;
    }
    if (!ok) {
        free(c);
        return NULL;
    }
    return c;
}

static void crc_worker_stop(ckpt__crc_worker *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->state = CRC_QUIT;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void crc_worker_post(ckpt__crc_worker *c, const uint8_t *p, size_t n, uint32_t seed,
                            bool second, uint32_t seed2)
{
    pthread_mutex_lock(&c->mu);
    c->p = p;
    c->n = n;
    c->seed = seed;
    c->second = second;
    c->seed2 = seed2;
    c->state = CRC_JOB;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static uint32_t crc_worker_wait(ckpt__crc_worker *c, uint32_t *crc2)
{
    pthread_mutex_lock(&c->mu);
    while (c->state != CRC_DONE)
        pthread_cond_wait(&c->cv, &c->mu);
    c->state = CRC_IDLE;
    uint32_t crc = c->result;
    *crc2 = c->result2;
    pthread_mutex_unlock(&c->mu);
    return crc;
}

void ckpt__zip_writer_init(ckpt__zip_writer *w, ckpt__out *out, uint64_t zip64_threshold)
{
    memset(w, 0, sizeof(*w));
    w->out = out;
    w->zip64_threshold = zip64_threshold ? zip64_threshold : CKPT__ZIP64_THRESHOLD;
}

void ckpt__zip_writer_free(ckpt__zip_writer *w)
{
    if (!w)
        return;
    free(w->entries);
    ckpt__buf_free(&w->names);
    free(w->buf);
    free(w->copy_buf);
    w->copy_buf = NULL;
    crc_worker_stop(w->crc_worker);
    w->crc_worker = NULL;
    w->entries = NULL;
    w->buf = NULL;
    w->count = w->cap = w->buf_len = 0;
}

static ckpt_status flush(ckpt__zip_writer *w, ckpt_error *err)
{
    if (w->buf_len == 0)
        return CKPT_OK;
    size_t n = w->buf_len;
    w->buf_len = 0;
    return ckpt__out_write(w->out, w->buf, n, err);
}

/* Every byte of the archive goes through here: small pieces are gathered,
 * large ones go straight to the file. */
static ckpt_status emit(ckpt__zip_writer *w, const void *p, size_t n, ckpt_error *err)
{
    if (!ckpt__add_u64(w->offset, n, &w->offset))
        return ckpt__fail(err, CKPT_ERR_LIMIT, zip_record(), CKPT_NO_OFFSET,
                          "archive size overflows");
    if (n >= WRITE_BUF_SIZE / 2) {
        CKPT_RETURN_IF_ERROR(flush(w, err));
        return ckpt__out_write(w->out, p, n, err);
    }
    if (!w->buf) {
        w->buf = malloc(WRITE_BUF_SIZE);
        if (!w->buf)
            return ckpt__fail(err, CKPT_ERR_NOMEM, zip_record(), CKPT_NO_OFFSET,
                              "out of memory");
    }
    if (w->buf_len + n > WRITE_BUF_SIZE)
        CKPT_RETURN_IF_ERROR(flush(w, err));
    memcpy(w->buf + w->buf_len, p, n);
    w->buf_len += n;
    return CKPT_OK;
}

static bool is_large(const ckpt__zip_writer *w, uint64_t v) { return v >= w->zip64_threshold; }

/* A 32-bit header slot: the value, or all ones when ZIP64 holds it. */
static uint32_t slot32(const ckpt__zip_writer *w, uint64_t v)
{
    return is_large(w, v) || v > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)v;
}

static ckpt_status add_entry(ckpt__zip_writer *w, const char *name, size_t name_len,
                             ckpt__zip_wentry **out, ckpt_error *err)
{
    if (w->count == w->cap) {
        ckpt__zip_wentry *e = ckpt__array_grow(w->entries, &w->cap, sizeof(*e));
        if (!e)
            return ckpt__fail(err, CKPT_ERR_NOMEM, zip_record(), CKPT_NO_OFFSET, "out of memory");
        w->entries = e;
    }
    size_t name_at = w->names.len;
    ckpt__buf_put(&w->names, name, name_len);
    if (w->names.failed)
        return ckpt__fail(err, CKPT_ERR_NOMEM, zip_record(), CKPT_NO_OFFSET, "out of memory");
    ckpt__zip_wentry *e = &w->entries[w->count++];
    memset(e, 0, sizeof(*e));
    e->name_at = name_at;
    e->name_len = (uint16_t)name_len;
    *out = e;
    return CKPT_OK;
}

/* The ZIP64 extra record for an entry: (size, compressed size) when the size
 * is large, then the header offset when it is large. comp is what the
 * compressed-size field holds (0 in local headers, where miniz has not
 * counted it yet). Returns its length, 0 when none is needed. */
static size_t zip64_extra(const ckpt__zip_writer *w, uint8_t *p, uint64_t size, uint64_t comp,
                          uint64_t offset)
{
    bool big_size = is_large(w, size), big_offset = is_large(w, offset);
    if (!big_size && !big_offset)
        return 0;
    size_t n = 4;
    if (big_size) {
        put64(p + n, size);
        put64(p + n + 8, comp);
        n += 16;
    }
    if (big_offset) {
        put64(p + n, offset);
        n += 8;
    }
    put16(p, 0x0001);
    put16(p + 2, (uint16_t)(n - 4));
    return n;
}

ckpt_status ckpt__zip_record_begin(ckpt__zip_writer *w, const char *name, uint64_t size,
                                   ckpt_error *err)
{
    if (w->in_record)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "a record is already being written");
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len > 0xFFFF)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "record name of %zu bytes (a zip holds 1 to 65535)", name_len);
    if (w->count >= UINT32_MAX - 1)
        return ckpt__fail(err, CKPT_ERR_LIMIT, zip_record(), CKPT_NO_OFFSET,
                          "too many records for one zip");
    uint64_t header_offset = w->offset;
    ckpt__zip_wentry *e = NULL;
    CKPT_RETURN_IF_ERROR(add_entry(w, name, name_len, &e, err));
    e->header_offset = header_offset;
    e->size = size;
    e->flags = size ? FLAG_DESCRIPTOR | FLAG_UTF8 : FLAG_UTF8;

    uint8_t z64[4 + 24];
    size_t z64_len = zip64_extra(w, z64, size, 0, header_offset);
    /* where the data would start with a padding record of no bytes */
    uint64_t start = header_offset + LOCAL_SIZE + name_len + z64_len + 4;
    size_t pad = (size_t)((ALIGNMENT - start % ALIGNMENT) % ALIGNMENT);

    uint8_t h[LOCAL_SIZE];
    memset(h, 0, sizeof(h));
    put32(h, SIG_LOCAL);
    put16(h + 6, e->flags);
    put16(h + 26, (uint16_t)name_len);
    put16(h + 28, (uint16_t)(z64_len + 4 + pad));
    uint8_t fb[4 + ALIGNMENT];
    fb[0] = 'F';
    fb[1] = 'B';
    put16(fb + 2, (uint16_t)pad);
    memset(fb + 4, 'Z', pad);

    CKPT_RETURN_IF_ERROR(emit(w, h, sizeof(h), err));
    CKPT_RETURN_IF_ERROR(emit(w, name, name_len, err));
    CKPT_RETURN_IF_ERROR(emit(w, z64, z64_len, err));
    CKPT_RETURN_IF_ERROR(emit(w, fb, 4 + pad, err));
    w->in_record = true;
    w->size = size;
    w->written = 0;
    w->crc = 0;
    return CKPT_OK;
}

/* n more bytes fit the record being written. */
static ckpt_status record_room(const ckpt__zip_writer *w, size_t n, ckpt_error *err)
{
    if (!w->in_record)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "no record is being written");
    if (n > w->size - w->written)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "record gets more than its declared %llu bytes",
                          (unsigned long long)w->size);
    return CKPT_OK;
}

/* Whether n bytes get their CRCs on the second thread (started at the
 * first such piece; if it cannot start, CRCs stay inline). */
static bool use_worker(ckpt__zip_writer *w, size_t n)
{
    if (n < CRC_WORKER_MIN)
        return false;
    if (!w->crc_worker && !w->crc_worker_failed) {
        w->crc_worker = crc_worker_start();
        w->crc_worker_failed = !w->crc_worker;
    }
    return w->crc_worker != NULL;
}

/* Writes p[0..n) (already counted in w->offset, after a flush) while the
 * second thread takes the record's CRC and, for a staged output, the whole
 * file's. */
static ckpt_status write_with_worker(ckpt__zip_writer *w, const uint8_t *p, size_t n,
                                     ckpt_error *err)
{
    ckpt__out *o = w->out;
    bool file_crc = (o->flags & CKPT__OUT_CRC) != 0;
    crc_worker_post(w->crc_worker, p, n, w->crc, file_crc, o->crc);
    ckpt_status st = ckpt__out_write_crc_later(o, p, n, err);
    uint32_t whole;
    w->crc = crc_worker_wait(w->crc_worker, &whole); /* p is ours only until then */
    if (file_crc)
        o->crc = whole;
    return st;
}

ckpt_status ckpt__zip_record_write(ckpt__zip_writer *w, const void *p, size_t n, ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(record_room(w, n, err));
    if (n == 0)
        return CKPT_OK;
    w->written += n;
    if (!use_worker(w, n)) {
        w->crc = (uint32_t)libdeflate_crc32(w->crc, p, n);
        return emit(w, p, n, err);
    }
    /* A piece this large goes straight to the file after what is gathered:
     * with that written, the worker can take the whole file's CRC over the
     * piece too (a staged output keeps one), so this core only writes. */
    if (!ckpt__add_u64(w->offset, n, &w->offset))
        return ckpt__fail(err, CKPT_ERR_LIMIT, zip_record(), CKPT_NO_OFFSET,
                          "archive size overflows");
    CKPT_RETURN_IF_ERROR(flush(w, err));
    return write_with_worker(w, p, n, err);
}

static ckpt_status copy_piece(void *user, const uint8_t *p, size_t n, ckpt_error *err)
{
    return write_with_worker(user, p, n, err);
}

ckpt_status ckpt__zip_record_copy(ckpt__zip_writer *w, int src_fd, uint64_t src_off,
                                  const void *p, size_t n, ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(record_room(w, n, err));
    if (n == 0)
        return CKPT_OK;
    if (!ckpt__add_u64(w->offset, n, &w->offset))
        return ckpt__fail(err, CKPT_ERR_LIMIT, zip_record(), CKPT_NO_OFFSET,
                          "archive size overflows");
    w->written += n;
    CKPT_RETURN_IF_ERROR(flush(w, err));
    if (src_fd < 0 || !use_worker(w, n) ||
        (!w->copy_buf && !(w->copy_buf = malloc(COPY_PIECE))))
        return ckpt__out_copy(w->out, src_fd, src_off, p, n, &w->crc, err);
    /* Read in pieces (as ckpt__out_copy does, for the same reason: cheaper
     * than faulting the map in), each written while the second thread takes
     * its CRCs; a large record is read on a third thread meanwhile. */
    size_t done = 0;
    CKPT_RETURN_IF_ERROR(
        ckpt__out_read_through(w->out, src_fd, src_off, n, copy_piece, w, &done, err));
    if (done)
        return done < n ? ckpt__out_copy(w->out, -1, 0, (const uint8_t *)p + done, n - done,
                                         &w->crc, err)
                        : CKPT_OK;
    while (done < n) {
        size_t want = n - done < COPY_PIECE ? n - done : COPY_PIECE, r;
        CKPT_RETURN_IF_ERROR(
            ckpt__out_read_piece(w->out, src_fd, src_off + done, w->copy_buf, want, &r, err));
        if (r == 0)
            break;
        CKPT_RETURN_IF_ERROR(write_with_worker(w, w->copy_buf, r, err));
        done += r;
    }
    if (done < n)
        return ckpt__out_copy(w->out, -1, 0, (const uint8_t *)p + done, n - done, &w->crc, err);
    return CKPT_OK;
}

ckpt_status ckpt__zip_record_end(ckpt__zip_writer *w, ckpt_error *err)
{
    if (!w->in_record)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "no record is being written");
    ckpt__zip_wentry *e = &w->entries[w->count - 1];
    if (w->written != w->size)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "record got %llu of its declared %llu bytes",
                          (unsigned long long)w->written, (unsigned long long)w->size);
    w->in_record = false;
    e->crc = w->crc;
    if (w->size == 0)
        return CKPT_OK; /* no descriptor, as miniz */
    uint8_t d[24];
    size_t n;
    put32(d, SIG_DESCRIPTOR);
    put32(d + 4, e->crc);
    if (is_large(w, e->size) || is_large(w, e->header_offset)) {
        put64(d + 8, e->size);
        put64(d + 16, e->size);
        n = 24;
    } else {
        put32(d + 8, (uint32_t)e->size);
        put32(d + 12, (uint32_t)e->size);
        n = 16;
    }
    return emit(w, d, n, err);
}

ckpt_status ckpt__zip_add(ckpt__zip_writer *w, const char *name, const void *p, size_t n,
                          ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(ckpt__zip_record_begin(w, name, n, err));
    CKPT_RETURN_IF_ERROR(ckpt__zip_record_write(w, p, n, err));
    return ckpt__zip_record_end(w, err);
}

ckpt_status ckpt__zip_finish(ckpt__zip_writer *w, ckpt_error *err)
{
    if (w->in_record)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, zip_record(), CKPT_NO_OFFSET,
                          "a record is still being written");
    uint64_t cd_offset = w->offset;
    for (size_t i = 0; i < w->count; i++) {
        const ckpt__zip_wentry *e = &w->entries[i];
        uint8_t z64[4 + 24];
        size_t z64_len = zip64_extra(w, z64, e->size, e->size, e->header_offset);
        uint8_t h[CENTRAL_SIZE];
        memset(h, 0, sizeof(h));
        put32(h, SIG_CENTRAL);
        put16(h + 8, e->flags);
        put32(h + 16, e->crc);
        put32(h + 20, slot32(w, e->size));
        put32(h + 24, slot32(w, e->size));
        put16(h + 28, e->name_len);
        put16(h + 30, (uint16_t)z64_len);
        put32(h + 42, slot32(w, e->header_offset));
        CKPT_RETURN_IF_ERROR(emit(w, h, sizeof(h), err));
        CKPT_RETURN_IF_ERROR(emit(w, w->names.p + e->name_at, e->name_len, err));
        CKPT_RETURN_IF_ERROR(emit(w, z64, z64_len, err));
    }
    uint64_t cd_size = w->offset - cd_offset;
    uint64_t z64_end_offset = w->offset;

    uint8_t z[ZIP64_END_SIZE];
    memset(z, 0, sizeof(z));
    put32(z, SIG_ZIP64_END);
    put64(z + 4, ZIP64_END_SIZE - 12);
    put16(z + 12, 0x031E); /* made by: miniz always says Unix, 3.0 */
    put16(z + 14, 0x002D); /* needed: 4.5, ZIP64 */
    put64(z + 24, w->count);
    put64(z + 32, w->count);
    put64(z + 40, cd_size);
    put64(z + 48, cd_offset);
    CKPT_RETURN_IF_ERROR(emit(w, z, sizeof(z), err));

    uint8_t l[ZIP64_LOC_SIZE];
    memset(l, 0, sizeof(l));
    put32(l, SIG_ZIP64_LOC);
    put64(l + 8, z64_end_offset);
    put32(l + 16, 1);
    CKPT_RETURN_IF_ERROR(emit(w, l, sizeof(l), err));

    uint8_t e[END_SIZE];
    memset(e, 0, sizeof(e));
    put32(e, SIG_END);
    uint16_t count16 = w->count >= 0xFFFF ? 0xFFFF : (uint16_t)w->count;
    put16(e + 8, count16);
    put16(e + 10, count16);
    put32(e + 12, slot32(w, cd_size));
    put32(e + 16, slot32(w, cd_offset));
    CKPT_RETURN_IF_ERROR(emit(w, e, sizeof(e), err));
    return flush(w, err);
}

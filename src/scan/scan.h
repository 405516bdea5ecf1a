/*
 * scan.h - what the scanner's two halves share: scan.c (the report, the
 * allow-list, pickles, the formats without a zip) and scan_zip.c (the
 * lenient archive walk and the torch zip format). Private to those files.
 */
#ifndef CKPT_SCAN_H
#define CKPT_SCAN_H

#include "format/format.h"

#define SCAN_MAX_FINDINGS 1000   /* listed per file; more are counted */
#define SCAN_MAX_DEPTH 3         /* archives inside archives */
#define SCAN_MAX_PICKLES 256     /* pickles read back to back in one stream */

struct ckpt_scan {
    ckpt_scan_finding *findings;
    size_t count, cap;
    size_t dropped;              /* findings past SCAN_MAX_FINDINGS */
    const char *format;
    ckpt__arena text;            /* the findings' strings (no limit) */
};

/* Where a value a global became stands in the findings (scan.c). */
typedef struct scan_use_slot {
    const void *value;
    size_t finding;
} scan_use_slot;

typedef struct scan_ctx {
    ckpt_scan *report;
    ckpt_limits limits;
    const char *const *allow;
    size_t allow_count;
    ckpt_error *err;             /* fatal errors only (out of memory) */
    const char *dir;             /* directory of the file scanned, or NULL (memory) */
    unsigned depth;              /* nesting of archives being scanned */
    scan_use_slot *uses;         /* open addressing, cleared per pickle */
    size_t uses_cap, uses_count;
    uint64_t file_dev, file_ino; /* the file ckpt_scan_file scans */
    struct scan_seen *shards_seen; /* a sharded index: shard files scanned (scan.c) */
    uint64_t *torch_ops;         /* while scanning a pickle torch.load unpickles (data.pkl,
                                    the legacy pickles): the opcodes run (scan.c) */
    bool dcp;                    /* a DCP .metadata: DCP's classes are known (scan_dcp.c) */
    uint64_t inflated_held;      /* deflated records held inflated now, nested archives
                                    included: at most max_pickle_bytes (scan_zip.c) */
} scan_ctx;

/* Adds a finding (strings are copied). Only out of memory fails. record
 * may be NULL (""), offset/file_offset CKPT_NO_OFFSET. */
ckpt_status ckpt__scan_add(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                           uint64_t file_offset, const char *fmt, ...) CKPT_PRINTF(6, 7);
/* The same, for a finding of severity warning (runs nothing, but torch's
 * default reader refuses it). */
ckpt_status ckpt__scan_warn(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                            uint64_t file_offset, const char *fmt, ...) CKPT_PRINTF(6, 7);
ckpt_status ckpt__scan_vadd(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                            uint64_t file_offset, const char *fmt, va_list ap) CKPT_PRINTF(6, 0);

/* base + off, or CKPT_NO_OFFSET when either is unknown. */
static inline uint64_t ckpt__scan_at(uint64_t base, uint64_t off)
{
    return base == CKPT_NO_OFFSET || off == CKPT_NO_OFFSET ? CKPT_NO_OFFSET : base + off;
}

/* How one pickle ended. */
typedef struct scan_pickle_result {
    size_t consumed;             /* bytes up to and including STOP */
    size_t next;                 /* where a reader of a file reads on: consumed, or the end
                                    of a frame that runs on past STOP (reported) */
    ckpt_value *value;           /* what it returned, when it did */
    bool broke;                  /* it broke: reported as a finding */
    size_t globals;              /* globals it named (allowed or not) */
} scan_pickle_result;

/*
 * Scans one pickle at data[0..size) (record names it, file_base is where
 * data starts in the file or CKPT_NO_OFFSET): a finding for each global
 * outside the allow-list with its uses, and for the break when it breaks
 * (or a limit stops it). Values live in arena. pl/pl_user: persistent
 * loads (NULL: a persistent id breaks the pickle). Only out of memory is
 * an error.
 */
ckpt_status ckpt__scan_pickle(scan_ctx *s, ckpt__arena *arena, const uint8_t *data, size_t size,
                              const char *record, uint64_t file_base, ckpt__persistent_load_fn pl,
                              void *pl_user, scan_pickle_result *res);

/* ckpt__scan_pickle with an arena of its own, freed before it returns
 * (res->value is then gone: only the counts and offsets remain). */
ckpt_status ckpt__scan_pickle_alone(scan_ctx *s, const uint8_t *data, size_t size,
                                    const char *record, uint64_t file_base,
                                    scan_pickle_result *res);

/* What follows a pickle scanned at data[0..] (res) in a stream of size
 * bytes, as readers that go on read it: the pickles between STOP and the
 * end of a frame that runs past it, then, from where Python's unpickler
 * reading a file goes on, more pickles (each an extra one, scanned) or
 * trailing bytes. where prefixes the records of those pickles. */
/* Reports each opcode in ops (256 bits) that torch's weights-only reader
 * lacks: a warning, torch.load(weights_only=True) refuses the file. */
ckpt_status ckpt__scan_torch_opcodes(scan_ctx *s, const uint64_t ops[4], const char *record,
                                     uint64_t file_offset);
ckpt_status ckpt__scan_after_pickle(scan_ctx *s, const uint8_t *data, uint64_t size,
                                    const scan_pickle_result *res, const char *record,
                                    const char *where, uint64_t file_base);

/* true when data[0..size) reads as a pickle: it reaches its STOP, or names
 * a global (a dotted Python name) before it breaks. Nothing is reported. */
bool ckpt__scan_is_pickle(scan_ctx *s, const uint8_t *data, size_t size);

/* Scans bytes of any format (a file, or a record inside an archive: where
 * then prefixes record names, e.g. "outer.zip!"). Only out of memory is an
 * error; top sets the report's format. */
ckpt_status ckpt__scan_bytes(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                             uint64_t file_base, bool top);

/* A numpy .npy array: an object array's pickle is scanned. quiet: no
 * finding for an array without objects (a member of an archive). */
ckpt_status ckpt__scan_npy(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                           uint64_t file_base, bool top, bool quiet);

/* A DCP checkpoint directory (scan_dcp.c): its .metadata, then every item
 * of its .distcp files. */
ckpt_status ckpt__scan_dcp(scan_ctx *s, const char *dir);
/* A zip archive (or bytes with one at their end): scan_zip.c. */
ckpt_status ckpt__scan_zip(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                           uint64_t file_base, bool top);
/* true when an end of central directory record sits in the last 64 KiB and
 * names a central directory that exists: a zip behind other bytes. */
bool ckpt__scan_zip_at_end(const uint8_t *data, uint64_t size);


#endif /* CKPT_SCAN_H */

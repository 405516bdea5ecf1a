/*
 * manager.h - the checkpoint manager's records (manager.c) and their JSON
 * form, the manifest (manifest.c). Private to those files and their test.
 */
#ifndef CKPT_MANAGER_H
#define CKPT_MANAGER_H

#include "format/format.h"

#define CKPT__MANIFEST_NAME "manifest.json"
#define CKPT__LOCK_NAME ".ckpt.lock"
#define CKPT__LAST_NAME "last.pth"
#define CKPT__BEST_NAME "best.pth"
/* Directory checkpoints (ckpt_manager_save_dcp): last.dcp, best.dcp,
 * step-NNNNNNNN.dcp, each a PyTorch DCP directory. */
#define CKPT__DCP_LAST_NAME "last.dcp"
#define CKPT__DCP_BEST_NAME "best.dcp"
/* A manifest is under 400 bytes per kept file: anything this big is not
 * ours (ckpt_manager_options.max_manifest_bytes). */
#define CKPT__MANIFEST_MAX_BYTES ((uint64_t)16 << 20)

/* What the manifest records of one file. Every string is malloc'd. */
typedef struct ckpt__mentry {
    char *file;
    int64_t step;               /* -1 unknown */
    ckpt_metric *metrics;       /* names malloc'd */
    size_t metric_count;
    uint64_t size;
    uint32_t crc;
    int64_t time;               /* -1 unknown */
    char *ckpt_version;
    int format_version;         /* 0 unknown */
    char *torch_version;
    char *user_json;            /* compact JSON object text */
    bool weights_only;
} ckpt__mentry;

typedef struct ckpt__mlist {
    ckpt__mentry *items;
    size_t count, cap;
} ckpt__mlist;

/* Everything a manifest holds. */
typedef struct ckpt__manifest {
    char *monitor;              /* NULL: none */
    ckpt_metric_mode mode;
    ckpt__mlist committed;      /* the kept files */
    ckpt__mlist pending;        /* files of a save not yet committed */
    char **removing;            /* names being removed */
    size_t removing_count;
} ckpt__manifest;

void ckpt__mentry_free(ckpt__mentry *e);
/* A deep copy; false when out of memory (dst is then empty). */
bool ckpt__mentry_copy(ckpt__mentry *dst, const ckpt__mentry *src);
/* Appends (moving *e into the list); false when out of memory (e freed). */
bool ckpt__mlist_push(ckpt__mlist *l, ckpt__mentry *e);
void ckpt__mlist_remove(ckpt__mlist *l, size_t i);
void ckpt__mlist_free(ckpt__mlist *l);
ckpt__mentry *ckpt__mlist_find(const ckpt__mlist *l, const char *file);
void ckpt__manifest_free(ckpt__manifest *mf);

/* The metric named name in e, or NULL. */
const ckpt_metric *ckpt__mentry_metric(const ckpt__mentry *e, const char *name);

/* Numbered file name of a step: "step-00000012.pth"; false if it does not
 * fit. ckpt__numbered_step parses one back (-1 when name is not one). */
bool ckpt__numbered_name(int64_t step, char *buf, size_t cap);
int64_t ckpt__numbered_step(const char *name);
/* The same with the extension ".pth" or ".dcp". */
bool ckpt__numbered_name_ext(int64_t step, const char *ext, char *buf, size_t cap);
/* What one of our names is: 0 last, 1 best, 2 numbered, -1 none of ours;
 * *dir (may be NULL) whether it names a directory checkpoint (.dcp). */
int ckpt__name_role(const char *name, bool *dir);

/*
 * Reads a manifest file of at most max_bytes. CKPT_ERR_NOT_FOUND when
 * there is none; a file that is not a well-formed manifest gives
 * CKPT_ERR_FORMAT naming what is wrong (the caller rebuilds it from the
 * files), a bigger one CKPT_ERR_LIMIT, a newer version's
 * CKPT_ERR_UNSUPPORTED.
 */
ckpt_status ckpt__manifest_read(const char *path, uint64_t max_bytes, ckpt__manifest *mf,
                                ckpt_error *err);
/* The same from the file's bytes. */
ckpt_status ckpt__manifest_parse(const void *text, size_t len, uint64_t max_bytes,
                                 ckpt__manifest *mf, ckpt_error *err);

/*
 * The manifest's JSON text (malloc'd, NUL-terminated) for mf, with each
 * committed entry's "last" and "best" marks from is_last/is_best.
 */
char *ckpt__manifest_text(const ckpt__manifest *mf, const bool *is_last, const bool *is_best);

#endif /* CKPT_MANAGER_H */

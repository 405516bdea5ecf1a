/*
 * format.h - the format layer (src/format/): what a file is (open.c, tar.c,
 * detect.c), the readers of each format (torch zip, legacy, safetensors,
 * sharded index) and the writers (torch_write.c, safetensors_write.c).
 * Above pickle.
 */
#ifndef CKPT_FORMAT_H
#define CKPT_FORMAT_H

#include "pickle/pickle.h"

/* ---- readers ------------------------------------------------------------ */

ckpt_status ckpt__open_torch_zip(ckpt_file *f, ckpt_error *err);
/* Legacy files, and plain pickles (format PICKLE) when the magic is absent. */
ckpt_status ckpt__open_torch_legacy(ckpt_file *f, ckpt_error *err);
ckpt_status ckpt__open_safetensors(ckpt_file *f, ckpt_error *err);
/* The state dict of a TorchScript archive (torchscript.c): root is its
 * data.pkl read with CKPT__PICKLE_TORCHSCRIPT; *out gets the tensors that
 * torch.jit.load(f).state_dict() lists, by the same names, in its order. */
ckpt_status ckpt__torchscript_state_dict(ckpt_file *f, const ckpt_value *root, ckpt_value **out,
                                         ckpt_error *err);
/*
 * What a file is: one test per format, the same for the reader
 * (format/open.c) and the scanner. torch.load's order is zip
 * (ckpt__zip_detect), tar (ckpt__tar_detect), then a pickle from byte 0
 * (ckpt__pickle_detect); ckpt's own formats are told apart after tar.
 */
/* A safetensors file: a header length of at least 2, then '{'. */
bool ckpt__safetensors_detect(const uint8_t *data, uint64_t size);
/* true when the bytes look like a sharded checkpoint index (JSON with weight_map). */
bool ckpt__sharded_detect(const uint8_t *data, uint64_t size);
/* A numpy array file (.npy): \x93NUMPY. */
bool ckpt__npy_detect(const uint8_t *data, uint64_t size);
/* The PyTorch 1.0-preview format: PYTORCH1. */
bool ckpt__pytorch1_detect(const uint8_t *data, uint64_t size);
/* A 7z archive: its six-byte signature. */
bool ckpt__7z_detect(const uint8_t *data, uint64_t size);
/* A PNG image (its first byte is an opcode, LONG1: told apart first). */
bool ckpt__png_detect(const uint8_t *data, uint64_t size);
ckpt_status ckpt__open_sharded(ckpt_file *f, ckpt_error *err);
/* A DCP checkpoint (dcp.c): f->map is its .metadata, f->dcp_dir its
 * directory (open while this runs). */
ckpt_status ckpt__open_dcp(ckpt_file *f, ckpt_error *err);
/* Runs a .metadata pickle in DCP mode: DCP's classes as inert objects,
 * anything else outside the allow-list CKPT_ERR_UNSAFE by name. */
ckpt_status ckpt__dcp_unpickle(const uint8_t *data, size_t size, const ckpt_limits *limits,
                               ckpt__arena *arena, ckpt_value **root, int *protocol,
                               ckpt_error *err);
/* Whether module.name is one of the classes a .metadata may name. */
bool ckpt__dcp_global_allowed(const char *module, size_t mlen, const char *name, size_t nlen);
/* ckpt_open of an opened descriptor (taken over: closed here or kept by the
 * file) whose fstat is *sb. shard: the file is a shard of a sharded index,
 * which may not be an index itself. */
struct stat;
ckpt_status ckpt__open_fd(int fd, const struct stat *sb, const char *path,
                          const ckpt_open_options *opts, bool shard, ckpt_file **out,
                          ckpt_error *err);

/* The pre-0.4 tar format (torch_tar.c), as torch's _legacy_load reads it. */
ckpt_status ckpt__open_torch_tar(ckpt_file *f, ckpt_error *err);

/* ---- numpy files (numpy.c) -------------------------------------------- */

typedef struct ckpt__npy_info {
    ckpt_dtype dtype;
    bool big_endian;
    bool fortran;
    uint32_t ndim;
    int64_t *shape;            /* in the arena given */
    uint64_t data_offset;      /* of the elements, from the magic */
    uint64_t nbytes;           /* of the elements; data_offset + nbytes <= size */
} ckpt__npy_info;

/* Parses an .npy header at data[0..size) (strictly: the dict literal numpy
 * writes, never evaluated). Object arrays, structured and string dtypes are
 * CKPT_ERR_UNSUPPORTED naming the dtype. record names the place in errors. */
ckpt_status ckpt__npy_header(const uint8_t *data, uint64_t size, const ckpt_limits *limits,
                             ckpt__arena *arena, const char *record, ckpt__npy_info *out,
                             ckpt_error *err);
/* An .npy file: one tensor named "tensor". */
ckpt_status ckpt__open_npy(ckpt_file *f, ckpt_error *err);
/* A zip whose every member is NAME.npy: numpy's .npz. */
bool ckpt__npz_detect(const ckpt__zip *z);
/* An .npz (f->zip open): one tensor per member named by its key. */
ckpt_status ckpt__open_npz(ckpt_file *f, ckpt_error *err);

/* ---- what torch.load takes a file for (tar.c, detect.c) ---------------
 * torch.load's order: a zip by its first four bytes (PK\3\4), else a tar
 * archive as Python's tarfile takes it, else a pickle from byte 0 (the
 * legacy magic number). */

typedef enum ckpt__tar_block {
    CKPT__TAR_BLOCK_INVALID,   /* not a header: tarfile refuses it */
    CKPT__TAR_BLOCK_HEADER,    /* a valid header */
    CKPT__TAR_BLOCK_ZERO,      /* 512 NULs: the end of an archive */
} ckpt__tar_block;

/* What tarfile makes of a 512-byte block (TarInfo.frombuf, see tar.c). */
ckpt__tar_block ckpt__tar_header(const uint8_t *block);
/* What tarfile.open makes of a file's first block: HEADER and ZERO are
 * archives torch.load reads as the pre-0.4 format (ZERO an empty one). */
ckpt__tar_block ckpt__tar_detect(const uint8_t *data, uint64_t size);

/* A member as tarfile lists it. */
typedef struct ckpt__tar_member {
    const uint8_t *name;       /* not NUL-terminated; valid during the callback */
    size_t name_len;
    bool name_joined;          /* "prefix/name" in the walk's own buffer (else the
                                  name lies in the file's bytes) */
    uint8_t type;              /* the type byte ('0', '5', 0, ...) */
    uint64_t header_offset;    /* its first header (a long name's, a pax header's) */
    uint64_t data_offset;      /* where tarfile reads its data */
    uint64_t size;             /* bytes of data extracted (UINT64_MAX when size_big) */
    bool size_big;             /* a size of 2^63 or more */
} ckpt__tar_member;

typedef enum ckpt__tar_end_kind {
    CKPT__TAR_END,             /* the archive ended where tarfile ends it */
    CKPT__TAR_FALLBACK,        /* tarfile raises ReadError: torch.load reads the
                                  file as a pickle from byte 0 instead */
    CKPT__TAR_UNFOLLOWED,      /* something ckpt does not follow (why) */
    CKPT__TAR_LIMIT,           /* more members than allowed */
} ckpt__tar_end_kind;

typedef struct ckpt__tar_end {
    ckpt__tar_end_kind kind;
    uint64_t offset;           /* where it ended */
    char why[96];
} ckpt__tar_end;

typedef ckpt_status (*ckpt__tar_member_fn)(void *user, const ckpt__tar_member *m);
/* Lists the members of a tar archive in tarfile's order, fn called for
 * each (its error stops the walk and is returned); *end says how the walk
 * ended. Only fn fails. */
ckpt_status ckpt__tar_walk(const uint8_t *data, uint64_t size, uint64_t max_members,
                           ckpt__tar_member_fn fn, void *user, ckpt__tar_end *end);

/* ckpt_open_options.flags beside CKPT_OPEN_*: no refusal of a safetensors
 * file or index for its pickle from byte 0 (the scanner reports it). */
#define CKPT__OPEN_NO_PICKLE_AT_ZERO 0x80000000u

/* Whether v is the legacy format's magic number, 0x1950a86a20f9469cfc6c,
 * however the pickle wrote it (detect.c). */
bool ckpt__is_legacy_magic(const ckpt_value *v);

/* How torch.load would read a file from byte 0 as a pickle (detect.c). */
typedef struct ckpt__byte0 {
    bool matters;              /* it names a global, or completes to the legacy
                                  magic number (torch then reads a legacy file) */
    bool magic;                /* the second case */
    uint64_t offset;           /* the global's opcode, or the STOP */
    char global[160];          /* "module.name" of the first global named */
} ckpt__byte0;

/* Runs the pickle at data[0..) without calling anything, up to the first
 * global with a Python name (text that only reads as a pickle by chance
 * names none) or the first error; what it found goes to *out. */
void ckpt__pickle_at_zero(const uint8_t *data, uint64_t size, const ckpt_limits *limits,
                          ckpt__byte0 *out);
/* A dotted Python name (a module or a qualified name), ASCII only. */
bool ckpt__python_dotted_name(const char *s, size_t n);

/* ---- saver (torch_write.c) --------------------------------------------- */

/* ckpt_save_torch with a chosen ZIP64 threshold (tests lower it). With a
 * stage, the finished file is left beside its target for the caller to
 * publish (ckpt__staged_publish), with its size and CRC32. */
ckpt_status ckpt__save_torch_ex(const char *path, const ckpt_value *root,
                                const ckpt_save_options *opts, uint64_t zip64_threshold,
                                ckpt__staged *stage, ckpt_error *err);

/* One whole torch.save archive appended to an output already open (a DCP
 * .distcp file holds one per item): its zip offsets count from its first
 * byte, as torch.load of those bytes alone needs; *len gets its size.
 * opts->prefix NULL gives "archive", as torch.save to a buffer. */
ckpt_status ckpt__save_torch_append(ckpt__out *out, const ckpt_value *root,
                                    const ckpt_save_options *opts, uint64_t *len, ckpt_error *err);

/* ckpt_dcp_save with two additions for the manager. preflight (may be
 * NULL): an error this rank found before the save, which fails it on every
 * rank. before_swap (may be NULL): called on the coordinator when the new
 * directory tmp_dir is complete and synced, before it replaces dir; its
 * error fails the save on every rank and leaves dir as it was. */
typedef ckpt_status (*ckpt__dcp_before_swap_fn)(void *user, const char *tmp_dir, ckpt_error *err);
ckpt_status ckpt__dcp_save_ex(const char *dir, const ckpt_value *root,
                              const ckpt_dcp_save_options *opts, const ckpt_error *preflight,
                              ckpt__dcp_before_swap_fn before_swap, void *user, ckpt_error *err);

#endif /* CKPT_FORMAT_H */

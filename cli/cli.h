/*
 * cli.h - the commands of the ckpt tool that live in their own files.
 */
#ifndef CKPT_CLI_H
#define CKPT_CLI_H

#include <ckpt.h>

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit statuses, the same for every command. */
#define CLI_EXIT_OK 0     /* done: written, listed, same, safe, loads */
#define CLI_EXIT_FAIL 1   /* a problem found: corrupt (verify), different (diff),
                           * unsafe (scan), does not load (match) */
#define CLI_EXIT_ERROR 2  /* error: a file cannot be read or written, a bad option */

/* The help line of --torchscript-weights, the same in every command. */
#define CLI_TORCHSCRIPT_WEIGHTS_HELP                                                      \
    "  --torchscript-weights  read a TorchScript archive (torch.jit.save) as data: its\n" \
    "           weights as torch.jit.load(f).state_dict() names them; nothing in it\n"     \
    "           is run (only each class's __parameters__/__buffers__ lists are read)\n"

/* The commands that live in their own files. Each takes the arguments from
 * its name on: argv[0] is the command's name ("diff"), as main's argv[0] is
 * the program's, and returns its exit status. */

/* ckpt diff A B [--atol X] [--rtol Y] [--json]: OK same (within the
 * tolerance), FAIL different, ERROR (a file cannot be read, a bad option). */
int ckpt_cli_diff(int argc, char **argv);

/* ckpt convert IN OUT [options]: OK written, ERROR otherwise. */
int ckpt_cli_convert(int argc, char **argv);

/* ckpt scan FILE|DIR... [--json] [--allow MODULE.NAME]...: OK all safe,
 * FAIL any unsafe, ERROR a file cannot be read (or a bad option). */
int ckpt_cli_scan(int argc, char **argv);

/* ckpt ls DIR [--json]: lists a checkpoint directory without changing it.
 * OK, or ERROR when the directory cannot be read (or a bad option). */
int ckpt_cli_ls(int argc, char **argv);

/* ckpt prune DIR --keep N [--keep-best N] [--dry-run] [-q]: OK done, ERROR
 * (the directory cannot be read, another process manages it, a bad option). */
int ckpt_cli_prune(int argc, char **argv);

/* ckpt match CHECKPOINT --model REFERENCE [options]: loads CHECKPOINT into
 * a model made from REFERENCE's state dict as load_state_dict() would. OK
 * it loads, FAIL it does not (PyTorch's message on stdout), ERROR. */
int ckpt_cli_match(int argc, char **argv);

/* ---- options (common.c) ---- */

/* A command's options, read with getopt_long: the table (long options
 * with a value take it as "--opt VALUE" or "--opt=VALUE"; each val is the
 * short option's letter or a number from CLI_OPT_LONG up), the short
 * options ("hq"), and the synopsis shown when the arguments are wrong. */
typedef struct cli_command {
    const char *name;               /* "convert" */
    const char *synopsis;           /* "ckpt convert IN OUT [options]" */
    const char *shortopts;          /* getopt's letters, ':' after those with a value */
    const struct option *longopts;  /* ends with a zero entry */
} cli_command;

#define CLI_OPT_LONG 256   /* first val of a long option without a letter */
#define CLI_OPT_ARG 1      /* cli_next_arg: an operand (a file, a directory) */
#define CLI_OPT_END (-1)   /* cli_next_arg: no more arguments */
#define CLI_OPT_BAD '?'    /* cli_next_arg: wrong, said on stderr */

typedef struct cli_args {
    const cli_command *cmd;
    int argc;
    char **argv;
    bool operands_only;     /* after "--", or once getopt is done */
    char shortopts[64];
} cli_args;

/* Reads argv (argv[0] the command's name) once per process. */
void cli_args_init(cli_args *a, const cli_command *cmd, int argc, char **argv);
/* The next argument in order: an option's val (its value in *value, or
 * NULL), CLI_OPT_ARG (the operand in *value), CLI_OPT_END, or CLI_OPT_BAD
 * after saying on stderr what is wrong (an unknown option, a missing
 * value, a value given to an option that takes none) and how the command
 * is used. Options and operands mix in any order; after "--" everything is
 * an operand. Long options are spelled out whole. */
int cli_next_arg(cli_args *a, const char **value);
/* "ckpt: CMD: MESSAGE" and the command's synopsis on stderr; returns
 * CLI_EXIT_ERROR. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "ckpt: PATH: RECORD at byte N: MESSAGE" on stderr; an unsafe global adds
 * a hint line (ckpt scan, --permissive). */
void cli_print_error(const char *path, const ckpt_error *err);
/* The state dict a command takes when none is named, by the rule of
 * ckpt_load_options.key; *name (may be NULL) is "state_dict" or "model"
 * when it is that entry of the root, else NULL. */
const ckpt_value *cli_default_state_dict(const ckpt_value *root, const char **name);
/* After "no value at OPT KEY" (said by the caller): the keys of the
 * deepest dict KEY reaches in root, and a hint (OPT model) when the root
 * has a model's entry. On stderr. */
void cli_key_missing(const char *path, const ckpt_value *root, const char *opt,
                     const char *key);
/* A value's Python repr (ckpt_value_repr), malloc'd; NULL when out of memory. */
char *cli_repr(const ckpt_value *v);
/* Follows a dotted path (--key): at a dict the longest key that is the
 * whole rest or a prefix of it followed by '.', at a list/tuple a decimal
 * index; NULL when nothing is there. */
const ckpt_value *cli_find_path(const ckpt_value *v, const char *path);
/* --max-output-ratio's value (a whole number >= 1) into *out; says what is
 * wrong on stderr (cli_usage_error, naming the option) and returns false
 * otherwise. */
bool cli_parse_ratio(const cli_command *cmd, const char *opt, const char *s, uint64_t *out);
/* list, tuple, set, dict, OrderedDict */
bool cli_is_container(ckpt_kind k);
/* A byte count for people: "512 B", "1.5 KiB", "3.2 GiB". */
void cli_human_bytes(uint64_t b, char *buf, size_t size);

/* What inspect's totals count: tensors by name, of them the distinct ones
 * (a view saved under several names, tied weights, counts once), and the
 * elements and bytes of the distinct ones. */
typedef struct cli_total {
    size_t tensors, distinct;
    uint64_t elements, bytes;
} cli_total;

typedef struct cli_totals {
    cli_total all;
    const char *model_key;  /* "model", "state_dict": the state dict's entry, or NULL */
    cli_total model;        /* the tensors under model_key */
} cli_totals;

/* f's totals; false when out of memory. */
bool cli_count_totals(ckpt_file *f, cli_totals *out);

/* ---- progress (common.c) ---- */

/* A progress bar on stderr with rate and ETA: "[####....]  42%  120.0 / 300.0
 * MiB  85.3 MiB/s  ETA 0:02". Shown only when on (not --json, not -q) and
 * stderr is a terminal, and only for work of min_total bytes or more. */
typedef struct cli_progress {
    bool on;
    bool drawn;           /* a line is on the terminal, not ended */
    uint64_t min_total;
    double start, last;   /* seconds (monotonic) */
    int last_pct;
} cli_progress;

/* Small files are done before a bar helps. */
#define CLI_PROGRESS_MIN ((uint64_t)64 << 20)

void cli_progress_init(cli_progress *p, bool on);
/* The callback the library takes (ckpt_save_options.progress,
 * ckpt_verify_options.progress); user is the cli_progress. */
void cli_progress_update(void *user, uint64_t done, uint64_t total);
/* Ends a bar left open (the work stopped early) with a newline. */
void cli_progress_end(cli_progress *p);

/* Prints o (which it frees) on stdout as one JSON document and a newline,
 * keys in insertion order, floats exact, indented by indent; on failure
 * says so on stderr, naming what (a command or a path), and returns false. */
bool cli_print_json(json_t *o, size_t indent, const char *what);

/* ---- small containers (common.c) ---- */

/* A growable array of esize-byte elements (set esize, the rest zero). */
typedef struct cli_vec {
    void *p;
    size_t len, cap, esize;
} cli_vec;

/* Room for more elements; false when out of memory. */
bool cli_vec_reserve(cli_vec *v, size_t more);
/* A zeroed new element at the end; NULL when out of memory. */
void *cli_vec_push(cli_vec *v);
/* Doubles an open-addressed table of *cap slots of esize bytes when it is
 * half full; rehash is called for each old slot. */
bool cli_table_room(void **slots, size_t *cap, size_t len, size_t esize,
                    void (*rehash)(void *fresh, size_t cap, const void *old));
uint64_t cli_hash_ptr(const void *p);

/* ---- plain values, leaf by leaf (common.c) ---- */

/* A plain value (anything but a tensor, or an empty container) at its path,
 * named as tensors are named ("optimizer.param_groups.0.lr"), shown as its
 * Python repr (ckpt_value_repr). */
typedef struct cli_leaf {
    char *path;
    const char *text;    /* interned: equal texts are one pointer */
    size_t order;        /* place in the walk */
    bool matched;        /* the caller's */
} cli_leaf;

typedef struct cli_plain {
    cli_leaf *leaves;
    size_t count;
} cli_plain;

/* Interned texts of leaves, shared by the files whose leaves are compared. */
typedef struct cli_texts cli_texts;

cli_texts *cli_texts_new(void);
void cli_texts_free(cli_texts *tx);
/* The plain values of f, in walk order: its value tree without the tensors,
 * a safetensors file's __metadata__ ("__metadata__.KEY"). A container
 * shared through the pickle memo repeats under each path to it, within
 * bounds; a cycle shows as "<cycle>". On failure (out of memory, past a
 * bound) says why on stderr, naming path, and returns false. */
bool cli_plain_collect(ckpt_file *f, const char *path, cli_texts *tx, cli_plain *out);
void cli_plain_free(cli_plain *p);

/* ---- JSON written as it goes (json_out.c) ---- */

/* Deepest nesting of containers a cli_jw writes. */
#define CLI_JW_MAX_DEPTH 1024

/* A JSON document written to fp item by item, in cli_print_json's layout:
 * begin/end a container, a key before each value of an object, then
 * cli_jw_finish. Memory does not grow with the document. */
typedef struct cli_jw {
    FILE *fp;
    unsigned indent;
    size_t depth;
    bool after_key;
    bool failed;
    uint64_t count[CLI_JW_MAX_DEPTH];  /* items written in each open container */
} cli_jw;

void cli_jw_init(cli_jw *w, FILE *fp, unsigned indent);
void cli_jw_begin_object(cli_jw *w);
void cli_jw_end_object(cli_jw *w);
void cli_jw_begin_array(cli_jw *w);
void cli_jw_end_array(cli_jw *w);
/* key: NUL-terminated, valid UTF-8 (cli_utf8_valid) */
void cli_jw_key(cli_jw *w, const char *key);
/* Text that is not valid UTF-8 (or NULL) is written as null; false then. */
bool cli_jw_string(cli_jw *w, const char *s);
bool cli_jw_stringn(cli_jw *w, const char *s, size_t n);
void cli_jw_int(cli_jw *w, long long v);
/* A finite double as jansson writes it (17 digits); null otherwise. */
void cli_jw_real(cli_jw *w, double d);
void cli_jw_bool(cli_jw *w, bool b);
void cli_jw_null(cli_jw *w);
/* A small jansson value, written in place (the caller keeps it). */
void cli_jw_json(cli_jw *w, const json_t *j);
/* Ends the document with a newline and flushes; on failure says so on
 * stderr, naming what, and returns false. */
bool cli_jw_finish(cli_jw *w, const char *what);
/* true when the n bytes are UTF-8 as JSON text needs it (jansson's rules:
 * no overlong forms, no surrogates); NUL is allowed. */
bool cli_utf8_valid(const char *s, size_t n);

#endif /* CKPT_CLI_H */

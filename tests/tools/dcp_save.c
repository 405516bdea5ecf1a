/*
 * dcp_save DIR SPLIT SEED [--no-fsync] [--elements E] [--manager KEEP LOSS]
 * dcp_save --resume DIR
 * dcp_save --has-mpi
 * dcp_save --load DIR NAME
 *
 * Test tool: saves a DCP directory with ckpt_dcp_save from every rank of an
 * MPI job (mpirun -np N), or from this process alone when started without
 * mpirun. The global state dict, for SEED s:
 *
 *   {"model": {"w": float32[8, 6], "emb": int64[10, 4], "h": bfloat16[5, 7],
 *              "b": float32[6], "big": float32[E]},
 *    "epoch": s, "lr": 0.001 * s, "tag": "seed-<s>",
 *    "lst": [s, float64[3]],
 *    "opt": {"state": {0: {"step": s, "exp_avg": float32[6]}},
 *            "param_groups": [{"lr": 0.1 * s, "params": [0]}]}}
 *
 * element i (row-major) of every tensor is s * 1000 + i (bfloat16 of it;
 * "big" wraps at 4096). SPLIT says how the ranks hold them: "rows" splits w,
 * emb and big by rows evenly; "cols" splits w and h by columns; "uneven"
 * gives rank r a share of rows proportional to r + 1 (w, emb, h, big). b
 * and lst.1 are replicated (every rank passes them whole; the coordinator's
 * copy is written). A rank whose share is empty leaves the tensor out.
 * Prints "saved RANK/N SECONDS" on success (the time ckpt_dcp_save took on
 * this rank); exit 1 on an error (its text on stderr).
 * --manager: DIR is a directory kept by the checkpoint manager (opened on
 * the coordinator, keep_last KEEP, monitoring "loss" (min)), the save is
 * ckpt_manager_save_dcp at step SEED with the metric loss = LOSS; the
 * coordinator prints "bits B" (CKPT_SAVED_*). --resume opens DIR's manager
 * and prints "resumed FILE STEP epoch E" from ckpt_manager_resume.
 * --has-mpi prints "mpi" or "no-mpi" (the library's build).
 * --load is the resharding load of the benchmark: every rank opens DIR and
 * reads its even share of NAME's rows (NAME at least 1-d) with
 * ckpt_dcp_load_shard, whatever split wrote it, and prints "loaded RANK/N
 * SECONDS" (ckpt_open and the load, timed after a barrier).
 */
#include <ckpt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef CKPT_HAVE_MPI
#include <mpi.h>
#endif

static int rank, world = 1;

static void fail(const char *what, const ckpt_error *err)
{
    char buf[600];
    fprintf(stderr, "dcp_save: rank %d: %s: %s\n", rank, what,
            err ? ckpt_error_format(err, buf, sizeof(buf)) : "failed");
#ifdef CKPT_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited)
        MPI_Finalize();
#endif
    exit(1);
}

/* [start, start + count) of size rows for this rank */
static void share(int64_t size, const char *split, int64_t *start, int64_t *count)
{
    if (strcmp(split, "uneven") == 0) {
        int64_t total = (int64_t)world * (world + 1) / 2, before = (int64_t)rank * (rank + 1) / 2;
        *start = size * before / total;
        *count = size * (before + rank + 1) / total - *start;
    } else {
        *start = size * rank / world;
        *count = size * (rank + 1) / world - *start;
    }
}

static uint16_t bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* The global tensor's values at [r0, r0+nr) x [c0, c0+nc) of a rows x cols
 * matrix, into a new buffer. */
static void *fill(ckpt_dtype dtype, int64_t seed, int64_t cols, int64_t r0, int64_t nr,
                  int64_t c0, int64_t nc, int64_t wrap)
{
    size_t n = (size_t)(nr * nc), es = ckpt_dtype_size(dtype);
    uint8_t *p = malloc(n * es + 1);
    if (!p)
        fail("out of memory", NULL);
    for (int64_t i = 0; i < nr; i++) {
        for (int64_t j = 0; j < nc; j++) {
            int64_t g = (r0 + i) * cols + c0 + j;
            int64_t v = seed * 1000 + (wrap ? g % wrap : g);
            size_t k = (size_t)(i * nc + j);
            if (dtype == CKPT_DTYPE_FLOAT32) {
                float f = (float)v;
                memcpy(p + k * 4, &f, 4);
            } else if (dtype == CKPT_DTYPE_FLOAT64) {
                double d = (double)v;
                memcpy(p + k * 8, &d, 8);
            } else if (dtype == CKPT_DTYPE_INT64) {
                memcpy(p + k * 8, &v, 8);
            } else {
                uint16_t h = bf16((float)v);
                memcpy(p + k * 2, &h, 2);
            }
        }
    }
    return p;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void finalize(void)
{
#ifdef CKPT_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited)
        MPI_Finalize();
#endif
}

/* --load: this rank's share of NAME's rows from DIR */
static int load_rows(const char *dir, const char *name)
{
    struct timespec t0;
#ifdef CKPT_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited)
        MPI_Barrier(MPI_COMM_WORLD);
#endif
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ckpt_file *f = NULL;
    ckpt_error err;
    if (ckpt_open(dir, NULL, &f, &err) != CKPT_OK)
        fail("ckpt_open", &err);
    const ckpt_tensor *t = ckpt_file_find_tensor(f, name);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    if (t)
        ckpt_tensor_get_info(t, &ti);
    if (!t || ti.ndim < 1 || ti.ndim > 8) {
        fprintf(stderr, "dcp_save: no tensor '%s' of 1 to 8 dimensions\n", name);
        ckpt_close(f);
        finalize();
        return 1;
    }
    int64_t offsets[8] = {0}, sizes[8];
    size_t row = ckpt_dtype_size(ti.dtype);
    for (uint32_t d = 0; d < ti.ndim; d++)
        sizes[d] = ti.shape[d];
    for (uint32_t d = 1; d < ti.ndim; d++)
        row *= (size_t)ti.shape[d];
    share(ti.shape[0], "rows", &offsets[0], &sizes[0]);
    ckpt_region r = {.name = name, .offsets = offsets, .sizes = sizes,
                     .dst_size = (size_t)sizes[0] * row};
    r.dst = malloc(r.dst_size ? r.dst_size : 1);
    if (!r.dst)
        fail("out of memory", NULL);
    if (ckpt_dcp_load_shard(f, &r, 1, &err) != CKPT_OK)
        fail("ckpt_dcp_load_shard", &err);
    double s = seconds_since(&t0);
    printf("loaded %d/%d %.6f\n", rank, world, s);
    free(r.dst);
    ckpt_close(f);
    finalize();
    return 0;
}

typedef struct spec {
    const char *name;
    ckpt_dtype dtype;
    int64_t rows, cols; /* cols 0: one dimension */
    int split_dim;      /* -1 replicated */
} spec;

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--has-mpi") == 0) {
        puts(ckpt_dcp_has_mpi() ? "mpi" : "no-mpi");
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--resume") == 0) {
        ckpt_manager *m = NULL;
        ckpt_error err;
        ckpt_file *f = NULL;
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        if (ckpt_manager_open(argv[2], NULL, &m, &err) != CKPT_OK)
            fail("ckpt_manager_open", &err);
        if (ckpt_manager_resume(m, NULL, &f, &info, &err) != CKPT_OK)
            fail("ckpt_manager_resume", &err);
        printf("resumed %s %lld epoch %lld\n", info.file, (long long)info.step,
               (long long)ckpt_value_int(ckpt_value_get(ckpt_file_root(f), "epoch")));
        ckpt_close(f);
        ckpt_manager_close(m);
        return 0;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: dcp_save DIR rows|cols|uneven SEED [--no-fsync] [--elements E]\n"
                        "       dcp_save --load DIR NAME\n");
        return 2;
    }
#ifdef CKPT_HAVE_MPI
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE")) {
        MPI_Init(&argc, &argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &world);
    }
#endif
    if (strcmp(argv[1], "--load") == 0)
        return load_rows(argv[2], argv[3]);
    const char *dir = argv[1], *split = argv[2];
    int64_t seed = atoll(argv[3]), big = 4096;
    unsigned flags = 0;
    int keep = -1;
    double loss = 0;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--no-fsync") == 0)
            flags |= CKPT_SAVE_NO_FSYNC;
        else if (strcmp(argv[i], "--manager") == 0 && i + 2 < argc) {
            keep = atoi(argv[++i]);
            loss = atof(argv[++i]);
        }
        else if (strcmp(argv[i], "--elements") == 0 && i + 1 < argc)
            big = atoll(argv[++i]);
    }
    bool rows = strcmp(split, "rows") == 0, cols = strcmp(split, "cols") == 0,
         uneven = strcmp(split, "uneven") == 0;
    if (!rows && !cols && !uneven) {
        fprintf(stderr, "dcp_save: SPLIT is rows, cols or uneven\n");
        return 2;
    }
    spec specs[] = {
        {"w", CKPT_DTYPE_FLOAT32, 8, 6, cols ? 1 : 0},
        {"emb", CKPT_DTYPE_INT64, 10, 4, cols ? -1 : 0},
        {"h", CKPT_DTYPE_BFLOAT16, 5, 7, rows ? -1 : (cols ? 1 : 0)},
        {"b", CKPT_DTYPE_FLOAT32, 6, 0, -1},
        {"big", CKPT_DTYPE_FLOAT32, big, 0, cols ? -1 : 0},
    };
    ckpt_tree *tree = ckpt_tree_new();
    ckpt_dcp_shards *shards = ckpt_dcp_shards_new();
    void *bufs[8] = {0};
    size_t nbufs = 0;
    if (!tree || !shards)
        fail("out of memory", NULL);
    ckpt_value *root = ckpt_new_dict(tree), *model = ckpt_new_dict(tree);
    ckpt_dict_put_str(tree, root, "model", model);
    for (size_t s = 0; s < sizeof(specs) / sizeof(specs[0]); s++) {
        const spec *sp = &specs[s];
        int64_t gc = sp->cols ? sp->cols : 1;
        int64_t r0 = 0, nr = sp->rows, c0 = 0, nc = gc;
        if (sp->split_dim == 0)
            share(sp->rows, split, &r0, &nr);
        else if (sp->split_dim == 1)
            share(gc, split, &c0, &nc);
        if (nr == 0 || nc == 0)
            continue;
        bufs[nbufs] = fill(sp->dtype, seed, gc, r0, nr, c0, nc, strcmp(sp->name, "big") ? 0 : 4096);
        int64_t shape[2] = {nr, nc}, global[2] = {sp->rows, gc}, offsets[2] = {r0, c0};
        uint32_t ndim = sp->cols ? 2 : 1;
        ckpt_tensor_desc d;
        ckpt_tensor_desc_init(&d);
        d.dtype = sp->dtype;
        d.ndim = ndim;
        d.shape = shape;
        d.data = bufs[nbufs++];
        d.is_parameter = s == 0; /* saved as a plain tensor all the same */
        ckpt_value *t = ckpt_new_tensor(tree, &d);
        ckpt_dict_put_str(tree, model, sp->name, t);
        ckpt_error err;
        if (t && sp->split_dim >= 0 &&
            ckpt_dcp_shards_add(shards, t, ndim, global, offsets, &err) != CKPT_OK)
            fail("shard", &err);
    }
    char tag[32];
    snprintf(tag, sizeof(tag), "seed-%lld", (long long)seed);
    ckpt_dict_put_str(tree, root, "epoch", ckpt_new_int(tree, seed));
    ckpt_dict_put_str(tree, root, "lr", ckpt_new_float(tree, 0.001 * (double)seed));
    ckpt_dict_put_str(tree, root, "tag", ckpt_new_str(tree, tag, strlen(tag)));
    ckpt_value *lst = ckpt_new_list(tree);
    ckpt_append(tree, lst, ckpt_new_int(tree, seed));
    bufs[nbufs] = fill(CKPT_DTYPE_FLOAT64, seed, 1, 0, 3, 0, 1, 0);
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = CKPT_DTYPE_FLOAT64;
    d.ndim = 1;
    int64_t three = 3;
    d.shape = &three;
    d.data = bufs[nbufs++];
    ckpt_append(tree, lst, ckpt_new_tensor(tree, &d));
    ckpt_dict_put_str(tree, root, "lst", lst);
    /* an optimizer's state dict: int keys, a list of dicts without tensors */
    ckpt_value *opt = ckpt_new_dict(tree), *state = ckpt_new_dict(tree), *s0 = ckpt_new_dict(tree);
    ckpt_value *groups = ckpt_new_list(tree), *g0 = ckpt_new_dict(tree), *params = ckpt_new_list(tree);
    bufs[nbufs] = fill(CKPT_DTYPE_FLOAT32, seed, 1, 0, 6, 0, 1, 0);
    ckpt_tensor_desc_init(&d);
    int64_t six = 6;
    d.ndim = 1;
    d.shape = &six;
    d.data = bufs[nbufs++];
    ckpt_dict_put_str(tree, s0, "step", ckpt_new_int(tree, seed));
    ckpt_dict_put_str(tree, s0, "exp_avg", ckpt_new_tensor(tree, &d));
    ckpt_dict_put(tree, state, ckpt_new_int(tree, 0), s0);
    ckpt_append(tree, params, ckpt_new_int(tree, 0));
    ckpt_dict_put_str(tree, g0, "lr", ckpt_new_float(tree, 0.1 * (double)seed));
    ckpt_dict_put_str(tree, g0, "params", params);
    ckpt_append(tree, groups, g0);
    ckpt_dict_put_str(tree, opt, "state", state);
    ckpt_dict_put_str(tree, opt, "param_groups", groups);
    ckpt_dict_put_str(tree, root, "opt", opt);
    ckpt_error err;
    if (ckpt_tree_status(tree, &err) != CKPT_OK)
        fail("building the state dict", &err);

    ckpt_dcp_save_options o;
    ckpt_dcp_save_options_default(&o);
    o.flags = flags;
    o.shards = shards;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (keep >= 0) {
        ckpt_manager *m = NULL;
        if (rank == 0) {
            ckpt_manager_options mo;
            ckpt_manager_options_default(&mo);
            mo.keep_last = (unsigned)keep;
            mo.monitor = "loss";
            mo.save_flags = flags;
            if (ckpt_manager_open(dir, &mo, &m, &err) != CKPT_OK)
                fail("ckpt_manager_open", &err);
        }
        ckpt_metric metric = {"loss", loss};
        unsigned bits = 0;
        if (ckpt_manager_save_dcp(m, dir, seed, root, &o, &metric, 1, &bits, &err) != CKPT_OK)
            fail("ckpt_manager_save_dcp", &err);
        if (m)
            printf("bits %u\n", bits);
        ckpt_manager_close(m);
    } else if (ckpt_dcp_save(dir, root, &o, &err) != CKPT_OK) {
        fail("ckpt_dcp_save", &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("saved %d/%d %.6f\n", rank, world,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    ckpt_dcp_shards_free(shards);
    ckpt_tree_free(tree);
    for (size_t i = 0; i < nbufs; i++)
        free(bufs[i]);
#ifdef CKPT_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited)
        MPI_Finalize();
#endif
    return 0;
}

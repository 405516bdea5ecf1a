/*
 * fuzz_dcp.c - libFuzzer target for DCP checkpoint directories
 * (src/format/dcp.c, src/core/region.c, src/scan/scan_dcp.c).
 *
 * The input is a directory packed as records { u8 name length, name,
 * u32 LE data length, data }: the first is the .metadata (its name is not
 * used), each later one a file beside it (names outside [A-Za-z0-9_.-] or
 * starting with '.' are skipped). The directory is written to a temporary
 * folder, opened, verified, scanned, and every tensor read whole, in two
 * halves along its first dimension and as row-major byte ranges that start
 * and end inside rows (what writers ask for); the pieces must equal the
 * whole (a broken invariant aborts). Seeds: real directories torch 1.13 and 2.6
 * wrote, and hostile variants of them (fuzz/make_dcp_seeds.py).
 */
#include "core/core.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILES 16
#define MAX_COPY ((uint64_t)16 << 20)

static char g_dir[256];

static void remove_dir_files(void)
{
    DIR *d = opendir(g_dir);
    if (!d)
        return;
    struct dirent *de;
    char path[512];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", g_dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

static void cleanup(void)
{
    remove_dir_files();
    rmdir(g_dir);
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static bool write_file(const char *name, const uint8_t *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static bool unpack(const uint8_t *data, size_t size)
{
    size_t pos = 0;
    for (int i = 0; i < MAX_FILES && pos < size; i++) {
        size_t nl = data[pos++];
        if (size - pos < nl + 4)
            return i > 0;
        char name[256];
        memcpy(name, data + pos, nl);
        name[nl] = 0;
        pos += nl;
        uint32_t len = (uint32_t)data[pos] | (uint32_t)data[pos + 1] << 8 |
                       (uint32_t)data[pos + 2] << 16 | (uint32_t)data[pos + 3] << 24;
        pos += 4;
        if (len > size - pos)
            len = (uint32_t)(size - pos);
        if (i == 0) {
            if (!write_file(".metadata", data + pos, len))
                return false;
        } else if (name_ok(name, nl)) {
            write_file(name, data + pos, len);
        }
        pos += len;
    }
    return true;
}

static void exercise(void)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    char msg[768];
    ckpt_scan *scan = NULL;
    if (ckpt_scan_file(g_dir, NULL, &scan, &err) == CKPT_OK)
        ckpt_scan_free(scan);
    if (ckpt_open(g_dir, NULL, &f, &err) != CKPT_OK) {
        ckpt_error_format(&err, msg, sizeof(msg));
        return;
    }
    if (ckpt_file_verify(f, &err) != CKPT_OK)
        ckpt_error_format(&err, msg, sizeof(msg));
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        const char *name = NULL;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        for (size_t k = 0; k < ckpt_tensor_chunk_count(t); k++) {
            ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
            if (!ckpt_tensor_chunk(t, k, &ci) || ci.ndim != ti.ndim)
                abort();
        }
        size_t esz = ckpt_dtype_size(ti.dtype);
        if (ti.nbytes > MAX_COPY || esz == 0 || ti.layout != CKPT_LAYOUT_STRIDED)
            continue;
        uint8_t *whole = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
        uint8_t *parts = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
        if (!whole || !parts) {
            free(whole);
            free(parts);
            continue;
        }
        int64_t zeros[64] = {0};
        if (ti.ndim > 0 && ti.ndim <= 64 &&
            ckpt_tensor_read_region(f, t, zeros, ti.shape, whole, (size_t)ti.nbytes, &err) ==
                CKPT_OK) {
            int64_t off[64] = {0}, sizes[64];
            for (uint32_t d = 0; d < ti.ndim; d++)
                sizes[d] = ti.shape[d];
            int64_t half = ti.shape[0] / 2;
            size_t row = ti.shape[0] ? (size_t)(ti.nbytes / (uint64_t)ti.shape[0]) : 0;
            sizes[0] = half;
            ckpt_region r[2] = {{name, off, sizes, parts, (size_t)half * row}, {0}};
            int64_t off2[64] = {0}, sizes2[64];
            memcpy(sizes2, sizes, sizeof(sizes2));
            off2[0] = half;
            sizes2[0] = ti.shape[0] - half;
            r[1] = (ckpt_region){name, off2, sizes2, parts + (size_t)half * row,
                                 (size_t)ti.nbytes - (size_t)half * row};
            if (ckpt_dcp_load_shard(f, r, 2, &err) == CKPT_OK &&
                memcmp(whole, parts, (size_t)ti.nbytes) != 0)
                abort(); /* two halves must be the whole */
            /* byte ranges in row-major order, as writers read them */
            uint64_t n = ti.numel, steps[] = {1, 3, 7, row / esz + 1};
            for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
                for (uint64_t e0 = 0; e0 < n && e0 < 4096; e0 += steps[k] + 1) {
                    uint64_t len = n - e0 < steps[k] ? n - e0 : steps[k];
                    const uint8_t *p = NULL;
                    if (ckpt__tensor_read(t, e0 * esz, (size_t)(len * esz), parts, &p, &err) ==
                            CKPT_OK &&
                        memcmp(p, whole + e0 * esz, (size_t)(len * esz)) != 0)
                        abort(); /* a range must be those bytes of the whole */
                }
            }
            /* a whole copy (resolving nothing), then the data pointer (the
             * tensor assembled once) */
            const void *data = NULL;
            if (ckpt_tensor_copy(f, t, parts, (size_t)ti.nbytes, &err) == CKPT_OK &&
                memcmp(parts, whole, (size_t)ti.nbytes) != 0)
                abort();
            if (ckpt_tensor_data(f, t, &data, NULL, &err) == CKPT_OK && data &&
                memcmp(data, whole, (size_t)ti.nbytes) != 0)
                abort();
        }
        free(whole);
        free(parts);
    }
    ckpt_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_dir, sizeof(g_dir), "%s/ckpt-fuzz-dcp-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(g_dir)) {
            g_dir[0] = 0;
            return 0;
        }
        atexit(cleanup);
    }
    remove_dir_files();
    if (unpack(data, size))
        exercise();
    return 0;
}

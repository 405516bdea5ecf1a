/* tmp.c - a scratch directory and whole files. */
#include "support.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

const char *tmp_dir_make(const char *prefix)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/%sXXXXXX", prefix);
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    return g_dir;
}

const char *tmp_dir(void) { return g_dir; }

const char *tmp_path(const char *name)
{
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", g_dir, name);
    return p;
}

void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

uint8_t *read_file(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    uint8_t *p = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        p = malloc(n ? (size_t)n : 1);
        if (p && fread(p, 1, (size_t)n, fp) != (size_t)n) {
            free(p);
            p = NULL;
        }
    }
    fclose(fp);
    if (p)
        *size = (size_t)n;
    return p;
}

bool write_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return false;
    bool ok = fwrite(data, 1, n, fp) == n;
    return fclose(fp) == 0 && ok;
}

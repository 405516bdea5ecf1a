/*
 * buf.c - growable memory for the writers: a byte buffer (pickles, JSON
 * headers, zip names) and arrays that double.
 */
#include "internal.h"

#include <stdlib.h>

bool ckpt__buf_reserve(ckpt__buf *b, size_t more)
{
    if (b->failed)
        return false;
    if (more > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return false;
    }
    size_t need = b->len + more + 1; /* and a NUL */
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void ckpt__buf_free(ckpt__buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void *ckpt__array_grow(void *items, size_t *cap, size_t elem)
{
    size_t n = *cap ? *cap * 2 : 16;
    if (n > SIZE_MAX / 2 / elem)
        return NULL;
    void *p = realloc(items, n * elem);
    if (p)
        *cap = n;
    return p;
}

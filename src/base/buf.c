/*
 * buf.c - growable memory for the writers: a byte buffer (pickles, JSON
 * headers, zip names), arrays that double, and a set of pointers.
 */
#include "base.h"

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

static size_t ptr_slot(const ckpt__ptr_set *p, const void *v)
{
    uint64_t x = (uint64_t)(uintptr_t)v;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    size_t i = (size_t)x & (p->cap - 1);
    while (p->slots[i] && p->slots[i] != v)
        i = (i + 1) & (p->cap - 1);
    return i;
}

int ckpt__ptr_set_add(ckpt__ptr_set *p, const void *v)
{
    if ((p->count + 1) * 2 > p->cap) {
        ckpt__ptr_set n = {.cap = p->cap ? p->cap * 2 : 64};
        if (n.cap > SIZE_MAX / 2 / sizeof(*n.slots))
            return -1;
        n.slots = calloc(n.cap, sizeof(*n.slots));
        if (!n.slots)
            return -1;
        for (size_t i = 0; i < p->cap; i++) {
            if (p->slots[i])
                n.slots[ptr_slot(&n, p->slots[i])] = p->slots[i];
        }
        n.count = p->count;
        free(p->slots);
        *p = n;
    }
    size_t i = ptr_slot(p, v);
    if (p->slots[i])
        return 0;
    p->slots[i] = v;
    p->count++;
    return 1;
}

void ckpt__ptr_set_free(ckpt__ptr_set *p)
{
    free(p->slots);
    memset(p, 0, sizeof(*p));
}

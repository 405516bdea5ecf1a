/*
 * arena.c - the arena every value of a file lives in: chunks of growing
 * size, freed at once.
 */
#include "base.h"

#include <stdint.h>
#include <stdlib.h>

#define ARENA_ALIGN 16u
#define ARENA_CHUNK_MIN ((size_t)64 * 1024)
#define ARENA_CHUNK_MAX ((size_t)8 * 1024 * 1024)

struct ckpt__arena_block {
    ckpt__arena_block *next;
    uint8_t *base;      /* ARENA_ALIGN-aligned start of the usable bytes */
    size_t size;        /* usable bytes */
    size_t used;
};

/* Rounds up to the alignment; false on overflow. */
static bool round_align(size_t size, size_t *out)
{
    if (size > SIZE_MAX - (ARENA_ALIGN - 1))
        return false;
    *out = (size + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
    return true;
}

static ckpt__arena_block *block_new(size_t size)
{
    /* calloc only promises alignof(max_align_t), which is 8 on some 32-bit
     * ABIs: over-allocate and align by hand. */
    if (size > SIZE_MAX - sizeof(ckpt__arena_block) - ARENA_ALIGN)
        return NULL;
    ckpt__arena_block *b = calloc(1, sizeof(*b) + ARENA_ALIGN + size);
    if (!b)
        return NULL;
    uintptr_t p = (uintptr_t)(b + 1);
    p = (p + (ARENA_ALIGN - 1)) & ~(uintptr_t)(ARENA_ALIGN - 1);
    b->base = (uint8_t *)p;
    b->size = size;
    return b;
}

/* Chunks grow with the arena so that big trees need few mallocs, and small
 * ones (a fuzz input, a tiny pickle) stay small. */
static size_t chunk_size(const ckpt__arena *a)
{
    uint64_t want = a->used / 4;
    if (want < ARENA_CHUNK_MIN)
        return ARENA_CHUNK_MIN;
    if (want > ARENA_CHUNK_MAX)
        return ARENA_CHUNK_MAX;
    return ((size_t)want + ARENA_CHUNK_MIN - 1) & ~(ARENA_CHUNK_MIN - 1);
}

void ckpt__arena_init(ckpt__arena *a, uint64_t limit)
{
    if (!a)
        return;
    a->head = NULL;
    a->used = 0;
    a->limit = limit;
}

void ckpt__arena_free(ckpt__arena *a)
{
    if (!a)
        return;
    ckpt__arena_block *b = a->head;
    while (b) {
        ckpt__arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->used = 0;
}

/* A limit of 0 means none (an arena that was zero-initialised). */
bool ckpt__arena_over_limit(const ckpt__arena *a, size_t more)
{
    if (!a || a->limit == 0)
        return false;
    return (uint64_t)more > a->limit || a->used > a->limit - (uint64_t)more;
}

void *ckpt__arena_alloc(ckpt__arena *a, size_t size)
{
    size_t n;
    if (!a || !round_align(size ? size : 1, &n))
        return NULL;
    if (ckpt__arena_over_limit(a, n))
        return NULL;
    ckpt__arena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t chunk = chunk_size(a);
        if (n > chunk / 4) {
            /* A big request gets a block of its own, linked behind the
             * current chunk so that the chunk's free tail is not lost. */
            b = block_new(n);
            if (!b)
                return NULL;
            if (a->head) {
                b->next = a->head->next;
                a->head->next = b;
            } else {
                a->head = b;
            }
        } else {
            b = block_new(chunk);
            if (!b)
                return NULL;
            b->next = a->head;
            a->head = b;
        }
    }
    void *p = b->base + b->used;
    b->used += n;
    a->used += n;
    return p;
}

char *ckpt__arena_strdup(ckpt__arena *a, const char *s, size_t size)
{
    if (size == SIZE_MAX)
        return NULL;
    char *p = ckpt__arena_alloc(a, size + 1);
    if (!p)
        return NULL;
    if (size)
        memcpy(p, s, size);
    p[size] = '\0';
    return p;
}

/* Grows an allocation of old_size bytes to new_size bytes: in place when it
 * is the last one of the current chunk (the common case while one container
 * is filled), else by copying. The old bytes are simply abandoned: with
 * geometric growth that wastes at most what the container holds. */
void *ckpt__arena_grow(ckpt__arena *a, void *old, size_t old_size, size_t new_size)
{
    size_t on, nn;
    if (!round_align(old_size ? old_size : 1, &on) || !round_align(new_size, &nn))
        return NULL;
    ckpt__arena_block *b = a->head;
    if (old && b && nn >= on && (uint8_t *)old + on == b->base + b->used &&
        b->size - b->used >= nn - on) {
        if (ckpt__arena_over_limit(a, nn - on))
            return NULL;
        b->used += nn - on;
        a->used += nn - on;
        return old;
    }
    void *p = ckpt__arena_alloc(a, new_size);
    if (!p)
        return NULL;
    if (old && old_size)
        memcpy(p, old, old_size);
    return p;
}

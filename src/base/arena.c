/*
 * arena.c - the arena every value of a file lives in: chunks of growing
 * size, freed at once.
 *
 * A file of many tensors makes about a kilobyte of values per tensor, so
 * an arena of 100,000 tensors holds 100 MB. Faulting that in 4 KiB pages
 * (each one zeroed, charged and later unmapped) cost more than building
 * the values did. Chunks of ARENA_HUGE bytes and more are therefore
 * mapped on their own, aligned to the huge page size and marked for
 * transparent huge pages, where the system has them: one fault per 2 MiB.
 * The pages of a mapping are only taken as they are used, so such a chunk
 * holds at most one huge page more than the arena uses.
 */
#include "base.h"

#include <stdint.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define ARENA_ALIGN 16u
#define ARENA_CHUNK_MIN ((size_t)64 * 1024)
#define ARENA_CHUNK_MAX ((size_t)8 * 1024 * 1024)
#define ARENA_HUGE ((size_t)2 * 1024 * 1024)   /* x86-64 and arm64 (4 KiB base pages) */

/* Under AddressSanitizer every allocation is followed by a poisoned gap and
 * the unused part of a chunk is poisoned, so that reading past a value (a
 * field of a bigger kind than it was made as) is caught as it would be in
 * memory of its own. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif
#ifdef ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define ARENA_REDZONE ((size_t)ARENA_ALIGN)
#define ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ARENA_REDZONE ((size_t)0)
#define ARENA_POISON(p, n) ((void)(p), (void)(n))
#define ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#if defined(__linux__) && defined(MADV_HUGEPAGE) && defined(MAP_ANONYMOUS)
#define ARENA_MAP_HUGE 1
#else
#define ARENA_MAP_HUGE 0
#endif

struct ckpt__arena_block {
    ckpt__arena_block *next;
    uint8_t *base;      /* ARENA_ALIGN-aligned start of the usable bytes */
    size_t size;        /* usable bytes */
    size_t used;
    size_t map_len;     /* mapped on its own (munmap at free): its length; 0 = calloc */
};

/* Rounds up to the alignment; false on overflow. */
static bool round_align(size_t size, size_t *out)
{
    if (size > SIZE_MAX - (ARENA_ALIGN - 1))
        return false;
    *out = (size + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
    return true;
}

#if ARENA_MAP_HUGE
/* A block of at least size usable bytes in a mapping of whole huge pages,
 * aligned to them; NULL when the system refuses (calloc then serves). */
static ckpt__arena_block *block_map(size_t size)
{
    size_t head = (sizeof(ckpt__arena_block) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (size > SIZE_MAX - head - 2 * ARENA_HUGE)
        return NULL;
    size_t len = (head + size + ARENA_HUGE - 1) & ~(ARENA_HUGE - 1);
    uint8_t *p = mmap(NULL, len + ARENA_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* trim to an aligned run of len bytes */
    uintptr_t start = ((uintptr_t)p + ARENA_HUGE - 1) & ~(uintptr_t)(ARENA_HUGE - 1);
    size_t lead = (size_t)(start - (uintptr_t)p);
    if (lead)
        munmap(p, lead);
    if (ARENA_HUGE - lead)
        munmap((uint8_t *)start + len, ARENA_HUGE - lead);
    (void)madvise((void *)start, len, MADV_HUGEPAGE); /* a hint: without THP, plain pages */
    ckpt__arena_block *b = (ckpt__arena_block *)start;
    b->next = NULL;
    b->base = (uint8_t *)start + head;
    b->size = len - head;
    b->used = 0;
    b->map_len = len;
    ARENA_POISON(b->base, b->size);
    return b;
}
#endif

static void block_free(ckpt__arena_block *b)
{
    ARENA_UNPOISON(b->base, b->size);
#if ARENA_MAP_HUGE
    if (b->map_len) {
        munmap(b, b->map_len);
        return;
    }
#endif
    free(b);
}

static ckpt__arena_block *block_new(size_t size)
{
#if ARENA_MAP_HUGE
    if (size >= ARENA_HUGE / 2) {
        ckpt__arena_block *m = block_map(size);
        if (m)
            return m;
    }
#endif
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
    ARENA_POISON(b->base, b->size);
    return b;
}

/* Chunks grow with the arena (each as big as the arena so far) so that big
 * trees need few chunks and reach huge pages soon, and small ones (a fuzz
 * input, a tiny pickle) stay small. */
static size_t chunk_size(const ckpt__arena *a)
{
    uint64_t want = a->used;
    if (want < ARENA_CHUNK_MIN)
        return ARENA_CHUNK_MIN;
    /* past a few hundred KiB a tree is a big one: straight to huge pages */
    if (ARENA_MAP_HUGE && want >= ARENA_HUGE / 8 && want < ARENA_HUGE)
        return ARENA_HUGE - 4096; /* with the block header: one huge page */
    if (want > ARENA_CHUNK_MAX)
        return ARENA_CHUNK_MAX;
    return ((size_t)want + ARENA_CHUNK_MIN - 1) & ~(ARENA_CHUNK_MIN - 1);
}

void ckpt__arena_init(ckpt__arena *a, uint64_t limit)
{
    if (!a)
        return;
    memset(a, 0, sizeof(*a));
    a->limit = limit;
}

void ckpt__arena_free(ckpt__arena *a)
{
    if (!a)
        return;
    ckpt__arena_block *b = a->head;
    while (b) {
        ckpt__arena_block *next = b->next;
        block_free(b);
        b = next;
    }
    a->head = NULL;
    a->used = 0;
    memset(a->released, 0, sizeof(a->released));
}

/* A limit of 0 means none (an arena that was zero-initialised). */
bool ckpt__arena_over_limit(const ckpt__arena *a, size_t more)
{
    if (!a || a->limit == 0)
        return false;
    return (uint64_t)more > a->limit || a->used > a->limit - (uint64_t)more;
}

/* Released pieces are kept in lists by size, linked through their first
 * bytes; under ASan they are poisoned until handed out again. */
#define ARENA_RELEASED_MAX (4 * (size_t)ARENA_ALIGN)

void ckpt__arena_release(ckpt__arena *a, void *p, size_t size)
{
    size_t n;
    if (!a || !p || !round_align(size ? size : 1, &n) || n > ARENA_RELEASED_MAX)
        return;
    void **list = &a->released[n / ARENA_ALIGN - 1];
    memcpy(p, list, sizeof(void *));
    *list = p;
    ARENA_POISON(p, n);
}

void *ckpt__arena_alloc(ckpt__arena *a, size_t size)
{
    size_t n;
    if (!a || !round_align(size ? size : 1, &n))
        return NULL;
    if (n <= ARENA_RELEASED_MAX && a->released[n / ARENA_ALIGN - 1]) {
        void **list = &a->released[n / ARENA_ALIGN - 1];
        void *p = *list;
        ARENA_UNPOISON(p, n);
        memcpy(list, p, sizeof(void *));
        memset(p, 0, n);
        ARENA_POISON(p, n);
        ARENA_UNPOISON(p, size ? size : 1);
        return p;
    }
    if (ckpt__arena_over_limit(a, n))
        return NULL;
    ckpt__arena_block *b = a->head;
    if (!b || b->size - b->used < n + ARENA_REDZONE) {
        size_t chunk = chunk_size(a);
        if (n > chunk / 4) {
            /* A big request gets a block of its own, linked behind the
             * current chunk so that the chunk's free tail is not lost. */
            b = block_new(n + ARENA_REDZONE);
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
    b->used += n + ARENA_REDZONE;
    a->used += n;
    ARENA_UNPOISON(p, size ? size : 1);
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
    if (old && b && nn >= on && (uint8_t *)old + on + ARENA_REDZONE == b->base + b->used &&
        b->size - b->used >= nn - on) {
        if (ckpt__arena_over_limit(a, nn - on))
            return NULL;
        b->used += nn - on;
        a->used += nn - on;
        ARENA_UNPOISON(old, new_size);
        return old;
    }
    void *p = ckpt__arena_alloc(a, new_size);
    if (!p)
        return NULL;
    if (old && old_size)
        memcpy(p, old, old_size);
    return p;
}

/*
 * hash.c - SipHash-1-3, keyed per table.
 *
 * Keys of every hash table here (dict keys, storage keys, zip entry names,
 * tensor names) come from files: a fixed hash would let a hostile file send
 * every key to one slot and make loading quadratic. SipHash-1-3 keyed from
 * the table's address (which ASLR varies) keeps that out of reach.
 */
#include "base/base.h"

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                              \
    do {                                                                      \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);         \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                              \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                              \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);         \
    } while (0)

/* Eight bytes with 'A'..'Z' made lower case. */
static uint64_t fold8(uint64_t w)
{
    uint64_t hi = 0x8080808080808080ull;
    uint64_t low7 = w & ~hi;
    uint64_t ge_a = low7 + 0x3f3f3f3f3f3f3f3full;     /* bit 7: byte >= 'A' */
    uint64_t gt_z = low7 + 0x2525252525252525ull;     /* bit 7: byte > 'Z' */
    uint64_t upper = ge_a & ~gt_z & ~w & hi;          /* 'A'..'Z', high bit clear */
    return w | (upper >> 2);                          /* + 0x20 */
}

uint64_t ckpt__siphash13(uint64_t k0, uint64_t k1, const void *data, size_t n, bool fold_case)
{
    const uint8_t *p = data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t m = ckpt__le64(p + i);
        if (fold_case)
            m = fold8(m);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t tail = 0;
    for (size_t j = 0; i + j < n; j++)
        tail |= (uint64_t)p[i + j] << (8 * j);
    if (fold_case)
        tail = fold8(tail); /* its top byte is 0 and stays 0 */
    uint64_t last = ((uint64_t)n << 56) | tail;
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void ckpt__hash_key(const void *owner, uint64_t *k0, uint64_t *k1)
{
    *k0 = (uint64_t)(uintptr_t)owner * 0x9e3779b97f4a7c15ull;
    *k1 = (uint64_t)(uintptr_t)&ckpt__hash_key ^ 0x2545f4914f6cdd1dull;
}

uint64_t ckpt__hash_keyed(const void *owner, const void *p, size_t n)
{
    uint64_t k0, k1;
    ckpt__hash_key(owner, &k0, &k1);
    return ckpt__siphash13(k0, k1, p, n, false);
}

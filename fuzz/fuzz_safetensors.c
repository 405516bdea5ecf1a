/*
 * fuzz_safetensors.c - the safetensors reader. An input that already starts
 * like a safetensors file (a header length that fits, then '{') is used as
 * is; any other input is taken as the JSON header and given the 8-byte
 * length prefix, so every mutation reaches the header parser.
 */
#include "fuzz_exercise.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool looks_like_safetensors(const uint8_t *data, size_t size)
{
    if (size < 9)
        return false;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | data[i];
    return n <= size - 8 && data[8] == '{';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (looks_like_safetensors(data, size)) {
        fuzz_exercise(data, size);
        return 0;
    }
    uint8_t *buf = malloc(size + 8);
    if (!buf)
        return 0;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)size >> (8 * i));
    if (size)
        memcpy(buf + 8, data, size);
    fuzz_exercise(buf, size + 8);
    free(buf);
    return 0;
}

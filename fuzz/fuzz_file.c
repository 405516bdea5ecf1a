/*
 * fuzz_file.c - any input through ckpt_open_memory with default options, then
 * ckpt_file_verify and a copy of every tensor (see fuzz_exercise.h).
 */
#include "fuzz_exercise.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_exercise(data, size);
    return 0;
}

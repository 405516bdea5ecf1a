/*
 * fuzz_npy.c - libFuzzer target for the .npy header parser
 * (src/format/numpy.c), then the whole input through ckpt_open_memory (an
 * .npy, an .npz, or whatever else it is) as fuzz_file does.
 */
#include "format.h"
#include "fuzz_exercise.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_limits limits;
    ckpt_limits_default(&limits);
    ckpt__arena arena;
    ckpt__arena_init(&arena, limits.max_value_bytes);
    ckpt__npy_info info;
    ckpt_error err;
    if (ckpt__npy_header(data, size, &limits, &arena, "npy", &info, &err) == CKPT_OK) {
        /* what the parser promises */
        if (info.dtype == CKPT_DTYPE_INVALID || info.ndim > limits.max_ndim ||
            info.data_offset > size || info.nbytes > size - info.data_offset)
            abort();
        uint64_t numel = 1;
        for (uint32_t i = 0; i < info.ndim; i++) {
            if (info.shape[i] < 0)
                abort();
            numel *= (uint64_t)info.shape[i];
        }
        if (numel * ckpt_dtype_size(info.dtype) != info.nbytes)
            abort();
    } else {
        char msg[768];
        ckpt_error_format(&err, msg, sizeof(msg));
    }
    ckpt__arena_free(&arena);
    fuzz_exercise(data, size);
    return 0;
}

/*
 * fuzz_torchscript.c - any input through ckpt_open_memory with
 * CKPT_OPEN_TORCHSCRIPT_WEIGHTS (and, for inputs whose last byte is odd,
 * CKPT_OPEN_PERMISSIVE too): TorchScript's data.pkl and constants.pkl read
 * as data, the code/ lists of each class, the walk into a state dict; then
 * what every target does (see fuzz_exercise.h).
 */
#include "fuzz_exercise.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS;
    /* a zip ends in its directory record: both modes are reached by mutation */
    if (size > 0 && (data[size - 1] & 1))
        oo.flags |= CKPT_OPEN_PERMISSIVE;
    fuzz_exercise_opts(data, size, &oo);
    return 0;
}

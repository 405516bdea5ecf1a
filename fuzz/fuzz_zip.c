/*
 * fuzz_zip.c - libFuzzer target for the zip layer (src/zip/zip_read.c).
 *
 * Opens the input as a zip with the default limits, looks every entry up by
 * name, reads it (inflating deflated ones), checks every CRC and closes.
 * Any status is fine; crashes, leaks, sanitizer reports and hangs are not.
 */
#include "zip.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_limits limits;
    ckpt_limits_default(&limits);
    /* Keep each run fast and small: a fuzzer finds bombs, not big files. */
    limits.max_inflated_bytes = 64u << 20;

    (void)ckpt__zip_detect(data, size);

    ckpt__zip zip;
    ckpt_error err;
    if (ckpt__zip_open(&zip, data, size, &limits, &err) != CKPT_OK) {
        ckpt__zip_close(&zip);   /* must be harmless after a failed open */
        return 0;
    }
    for (size_t i = 0; i < zip.count; i++) {
        const ckpt__zip_entry *e = &zip.entries[i];
        if (ckpt__zip_find(&zip, e->name) != (long)i)
            abort();   /* names are unique, so lookup must find this very entry */

        const uint8_t *bytes = NULL;
        uint8_t *owned = NULL;
        if (ckpt__zip_read(&zip, i, &limits, &bytes, &owned, &err) == CKPT_OK) {
            /* Touch both ends so that sanitizers check the whole range. */
            if (e->size > 0) {
                volatile uint8_t sink = (uint8_t)(bytes[0] ^ bytes[e->size - 1]);
                (void)sink;
            }
            if (owned == NULL && e->size > 0 &&
                (bytes < data || bytes + e->size > data + size))
                abort();   /* a zero-copy entry must lie inside the input */
            free(owned);
        }
        (void)ckpt__zip_check_crc(&zip, i, &limits, &err);
    }
    ckpt__zip_close(&zip);
    return 0;
}

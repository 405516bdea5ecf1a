/*
 * fuzz_manifest.c - the checkpoint manager's manifest reader. A manifest
 * that parses is written out again and must read back the same: same
 * monitor, entries, metrics (NaN as NaN) and removals.
 */
#include "manager.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void same_entry(const ckpt__mentry *a, const ckpt__mentry *b)
{
    if (strcmp(a->file, b->file) != 0 || a->step != b->step || a->size != b->size ||
        a->crc != b->crc || a->time != b->time || a->format_version != b->format_version ||
        !same_str(a->ckpt_version, b->ckpt_version) ||
        !same_str(a->torch_version, b->torch_version) || !same_str(a->user_json, b->user_json) ||
        a->weights_only != b->weights_only || a->metric_count != b->metric_count)
        abort();
    for (size_t i = 0; i < a->metric_count; i++) {
        double x = a->metrics[i].value, y = b->metrics[i].value;
        if (strcmp(a->metrics[i].name, b->metrics[i].name) != 0 ||
            (isnan(x) ? !isnan(y) : memcmp(&x, &y, sizeof(x)) != 0))
            abort();
    }
}

static void same_list(const ckpt__mlist *a, const ckpt__mlist *b)
{
    if (a->count != b->count)
        abort();
    for (size_t i = 0; i < a->count; i++)
        same_entry(&a->items[i], &b->items[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt__manifest mf;
    if (ckpt__manifest_parse(data, size, 1 << 20, &mf, NULL) != CKPT_OK)
        return 0;
    char *text = ckpt__manifest_text(&mf, NULL, NULL);
    if (!text)
        abort();
    ckpt__manifest back;
    if (ckpt__manifest_parse(text, strlen(text), UINT64_MAX, &back, NULL) != CKPT_OK)
        abort();
    if (!same_str(mf.monitor, back.monitor) || mf.mode != back.mode ||
        mf.removing_count != back.removing_count)
        abort();
    same_list(&mf.committed, &back.committed);
    same_list(&mf.pending, &back.pending);
    for (size_t i = 0; i < mf.removing_count; i++)
        if (strcmp(mf.removing[i], back.removing[i]) != 0)
            abort();
    ckpt__manifest_free(&back);
    ckpt__manifest_free(&mf);
    free(text);
    return 0;
}

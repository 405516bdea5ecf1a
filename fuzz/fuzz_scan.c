/*
 * fuzz_scan.c - any input through ckpt_scan_memory with default options,
 * then every finding's fields read and formatted, and the same input with
 * a caller's allow-list.
 */
#include <ckpt.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const uint8_t *data, size_t size, const ckpt_scan_options *opts)
{
    ckpt_scan *sc = NULL;
    ckpt_error err;
    if (ckpt_scan_memory(data, size, opts, &sc, &err) != CKPT_OK) {
        char msg[768];
        ckpt_error_format(&err, msg, sizeof(msg));
        return;
    }
    volatile size_t sink = strlen(ckpt_scan_format(sc));
    sink += (size_t)ckpt_scan_get_verdict(sc);
    size_t n = ckpt_scan_finding_count(sc);
    if (n && ckpt_scan_get_verdict(sc) == CKPT_SCAN_VERDICT_SAFE)
        abort(); /* a finding always makes a file unsafe */
    for (size_t i = 0; i < n; i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        char use[160], line[1400];
        snprintf(line, sizeof(line), "%s %s %s %llu %llu %s %s %d",
                 ckpt_scan_kind_name(f->kind), f->global ? f->global : "-", f->record,
                 (unsigned long long)f->offset, (unsigned long long)f->file_offset,
                 ckpt_scan_use_text(f->use, use, sizeof(use)), f->message, (int)f->runs_code);
        sink += strlen(line);
        if (f->file_offset != CKPT_NO_OFFSET && f->file_offset > size)
            abort(); /* positions in the file are inside it */
    }
    (void)sink;
    ckpt_scan_free(sc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    exercise(data, size, NULL);
    static const char *const allow[] = {"foo.Bar", "torch.torch_version.TorchVersion", "os.system"};
    ckpt_scan_options o;
    ckpt_scan_options_default(&o);
    o.allow = allow;
    o.allow_count = sizeof(allow) / sizeof(allow[0]);
    o.limits.max_stack_depth = 4096;
    o.limits.max_memo_entries = 4096;
    exercise(data, size, &o);
    return 0;
}

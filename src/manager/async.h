/*
 * async.h - saves of the checkpoint manager that return before the file is
 * written (async.c), and what manager.c gives them.
 */
#ifndef CKPT_MANAGER_ASYNC_H
#define CKPT_MANAGER_ASYNC_H

#include "manager.h"

typedef struct ckpt__async ckpt__async;

/* manager.c: the manager's slot for its asynchronous state (NULL until the
 * first asynchronous save), and the save itself, run by the caller
 * (ckpt_manager_save) or by the background thread. */
ckpt__async **ckpt__manager_async(const ckpt_manager *m);
ckpt_status ckpt__manager_save_now(ckpt_manager *m, int64_t step, const ckpt_value *checkpoint,
                                   const ckpt_metric *metrics, size_t metric_count,
                                   unsigned *saved, ckpt_error *err);

/* What ckpt_manager_save refuses before writing anything (read-only,
 * step, metric names, the monitored metric missing). */
ckpt_status ckpt__manager_save_check(const ckpt_manager *m, int64_t step,
                                     const ckpt_metric *metrics, size_t metric_count,
                                     ckpt_error *err);

/* Waits for the save in flight, if any. With report, a failure not yet
 * reported is returned (and forgotten); without, it stays for the next
 * save or ckpt_manager_wait. saved (may be NULL) gets the finished save's
 * CKPT_SAVED_* bits. */
ckpt_status ckpt__async_settle(ckpt__async *a, bool report, unsigned *saved, ckpt_error *err);
/* What ckpt_manager_save refuses before writing anything (read-only,
 * step, metric names, the monitored metric missing). */
ckpt_status ckpt__manager_save_check(const ckpt_manager *m, int64_t step,
                                     const ckpt_metric *metrics, size_t metric_count,
                                     ckpt_error *err);

/* Waits for the save in flight and frees everything (ckpt_manager_close). */
void ckpt__async_free(ckpt__async *a);

#endif /* CKPT_MANAGER_ASYNC_H */

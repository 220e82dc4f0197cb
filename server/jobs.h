/*
 * jobs.h - background training jobs.
 *
 * A job owns an uploaded archive until its thread has extracted it: the HTTP connection waits
 * (suspended) until the archive has been checked, so a bad archive is answered 400/422 at once
 * and only a good one becomes a job (202). Jobs then wait in a queue and run one at a time on a
 * thread at the lowest CPU priority (nice 19, inherited by the trainer's threads), so inference
 * keeps the cores when it needs them. A finished job's patch is stored as the task's next version.
 *
 * Threads: thread-safe; callbacks (accepted) run on the job thread.
 */
#ifndef PD_JOBS_H
#define PD_JOBS_H

#include "../core/train.h"
#include "../patches/cache.h"

#include <jansson.h>

enum pd_job_state {
    PD_JOB_CHECKING, /* archive being extracted (not yet a job for the user) */
    PD_JOB_REJECTED, /* the archive was refused; never listed */
    PD_JOB_QUEUED,
    PD_JOB_RUNNING,
    PD_JOB_SUCCEEDED,
    PD_JOB_FAILED,
    PD_JOB_CANCELLED,
};

const char *pd_job_state_name(enum pd_job_state s);

struct pd_job_spec {
    char tenant[PD_NAME_MAX + 1], task[PD_NAME_MAX + 1], base[PD_NAME_MAX + 1];
    enum pd_train_kind kind;
    int epochs;       /* 0: default */
    uint8_t *archive; /* stolen */
    size_t archive_len;
    /* called once on the job thread when the archive is accepted or rejected */
    void (*checked)(void *ctx, int err, const char *msg, const char *id);
    void *ctx;
};

typedef struct pd_jobs pd_jobs;

int pd_jobs_new(const pd_model *m, pd_store *store, pd_cache *cache, uint64_t max_bytes,
                pd_jobs **out);
/* Cancels every job and waits for their threads. */
void pd_jobs_free(pd_jobs *j);

/* Starts a job (its archive check first). PD_TOOBIG when the tenant has max_jobs running or
 * queued. */
int pd_jobs_submit(pd_jobs *j, struct pd_job_spec *spec, int max_jobs, char *msg);

/* A tenant's jobs (new JSON array), or one job (new object; NULL when none of the tenant's). */
json_t *pd_jobs_list(pd_jobs *j, const char *tenant);
json_t *pd_jobs_get(pd_jobs *j, const char *tenant, const char *id);

/* Cancels a tenant's job: PD_OK, PD_NOTFOUND, or PD_EXISTS when it has already finished. */
int pd_jobs_cancel(pd_jobs *j, const char *tenant, const char *id);

/* Counts of jobs by state, for metrics. */
void pd_jobs_counts(pd_jobs *j, int counts[PD_JOB_CANCELLED + 1]);

#endif

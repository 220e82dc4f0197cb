/*
 * engine.h - the inference worker pool.
 *
 * Requests are queued (bounded); each worker takes up to `batch` queued requests at once,
 * decodes their images, resolves their tasks through the cache and runs classification requests
 * of the same input size in one forward pass, whatever their tasks: the pointwise GEMMs are
 * shared and scales, biases and depthwise kernels stay per sample. Face detection runs one image
 * at a time. Each worker owns its scratch (pd_net) and OpenBLAS runs single-threaded inside the
 * workers, so workers x BLAS threads never exceeds the cores.
 *
 * Threads: pd_engine_submit may be called from any thread; a job's done callback runs on a
 * worker thread.
 */
#ifndef PD_ENGINE_H
#define PD_ENGINE_H

#include "../patches/cache.h"

#include <jansson.h>

struct pd_infer_job {
    /* in (owned by the job's submitter until done) */
    char tenant[PD_NAME_MAX + 1], task[PD_NAME_MAX + 1];
    int version; /* 0: active */
    int top_k;
    double min_score;
    const uint8_t *image;
    size_t image_len;
    /* out */
    int err; /* PD_OK or the failure */
    char msg[PD_MSG_MAX];
    json_t *result;   /* new reference on success */
    int used_version; /* the version that answered (0 for faces) */
    int batch;        /* size of the forward pass it ran in */
    /* completion */
    void (*done)(struct pd_infer_job *job);
    void *ctx;
    struct pd_infer_job *next; /* queue link, engine's */
};

typedef struct pd_engine pd_engine;

struct pd_engine_stats {
    unsigned queued;        /* waiting now */
    uint64_t batches;       /* forward passes */
    uint64_t batch_hist[8]; /* forward passes of size 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, more */
};

int pd_engine_new(const pd_model *m, pd_cache *cache, int workers, int batch, size_t max_pixels,
                  unsigned max_queue, pd_engine **out, char *msg);
/* Finishes every queued job, then stops the workers. */
void pd_engine_free(pd_engine *e);

/* Queues a job; PD_TOOBIG when the queue is full (the caller answers 503). */
int pd_engine_submit(pd_engine *e, struct pd_infer_job *job);

void pd_engine_stats(pd_engine *e, struct pd_engine_stats *out);

/* The built-in detection task's name. */
#define PD_FACES_TASK "faces"

#endif

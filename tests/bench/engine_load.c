/*
 * Closed-loop load on the in-process inference engine, the same engine patchd serves HTTP with:
 * C client threads each submit one /infer job (a JPEG, a task drawn at random from the first N
 * tasks t0000, t0001, ... of one tenant in a store), wait for its answer and submit the next, for
 * S seconds. Every task is loaded into the cache first, so the N tasks are resident.
 *   bench_engine_load STORE TENANT N C SECONDS JPEG [WORKERS] [BATCH]
 * Prints one JSON line: requests per second, mean forward-pass batch, errors.
 * tests/bench/many_tasks.py drives it next to the same load over HTTP.
 */
#include "../../server/engine.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct client {
    pd_engine *e;
    const char *tenant;
    int ntasks;
    const uint8_t *jpeg;
    size_t len;
    double until;
    uint64_t rng;
    long done, errors;
    uv_mutex_t mu;
    uv_cond_t cv;
    int finished;
    char first_error[PD_MSG_MAX];
};

static void on_done(struct pd_infer_job *job)
{
    struct client *c = job->ctx;
    uv_mutex_lock(&c->mu);
    c->finished = 1;
    uv_cond_signal(&c->cv);
    uv_mutex_unlock(&c->mu);
}

static void client_main(void *arg)
{
    struct client *c = arg;
    while (pd_now() < c->until) {
        struct pd_infer_job job;
        memset(&job, 0, sizeof(job));
        snprintf(job.tenant, sizeof(job.tenant), "%s", c->tenant);
        c->rng = c->rng * 6364136223846793005ull + 1442695040888963407ull;
        snprintf(job.task, sizeof(job.task), "t%04d", (int)((c->rng >> 33) % (uint64_t)c->ntasks));
        job.top_k = 5;
        job.min_score = 0.5;
        job.image = c->jpeg;
        job.image_len = c->len;
        job.done = on_done;
        job.ctx = c;
        c->finished = 0;
        if (pd_engine_submit(c->e, &job)) {
            c->errors++;
            continue;
        }
        uv_mutex_lock(&c->mu);
        while (!c->finished)
            uv_cond_wait(&c->cv, &c->mu);
        uv_mutex_unlock(&c->mu);
        if (job.err) {
            if (!c->errors)
                snprintf(c->first_error, sizeof(c->first_error), "%s", job.msg);
            c->errors++;
        } else {
            c->done++;
        }
        json_decref(job.result);
    }
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr,
                "usage: bench_engine_load STORE TENANT N C SECONDS JPEG [WORKERS] [BATCH]\n");
        return 2;
    }
    const char *root = argv[1], *tenant = argv[2];
    int ntasks = atoi(argv[3]), nc = atoi(argv[4]);
    double secs = atof(argv[5]);
    int workers = argc > 7 ? atoi(argv[7]) : 2, batch = argc > 8 ? atoi(argv[8]) : 8;
    if (ntasks < 1 || nc < 1 || nc > 256 || secs <= 0 || workers < 1 || batch < 1) {
        fprintf(stderr, "bench_engine_load: bad arguments\n");
        return 2;
    }
    const char *mp =
        getenv("PD_MODEL") ? getenv("PD_MODEL") : "models/ssd_mobilenet_v1.safetensors";
    char msg[PD_MSG_MAX];
    uint8_t *jpeg;
    size_t len;
    pd_model *m;
    pd_store *st;
    pd_cache *cache;
    pd_engine *e;
    openblas_set_num_threads(1);
    if (pd_read_file(argv[6], 64u << 20, &jpeg, &len, msg) || pd_model_load(mp, &m, msg) ||
        pd_store_open(root, 0, &st, msg) || pd_cache_new(m, st, (size_t)4 << 30, &cache, msg) ||
        pd_engine_new(m, cache, workers, batch, 50000000, 4096, &e, msg)) {
        fprintf(stderr, "bench_engine_load: %s\n", msg);
        return 1;
    }
    /* make every task resident */
    for (int i = 0; i < ntasks; i++) {
        char task[16];
        snprintf(task, sizeof(task), "t%04d", i);
        pd_patch *p;
        int v;
        if (pd_cache_get(cache, tenant, task, 0, &p, &v, msg)) {
            fprintf(stderr, "bench_engine_load: %s: %s\n", task, msg);
            return 1;
        }
        pd_patch_unref(p);
    }
    struct client *cs = calloc((size_t)nc, sizeof(*cs));
    uv_thread_t *th = calloc((size_t)nc, sizeof(*th));
    double t0 = pd_now();
    for (int i = 0; i < nc; i++) {
        struct client *c = &cs[i];
        c->e = e, c->tenant = tenant, c->ntasks = ntasks, c->jpeg = jpeg, c->len = len;
        c->until = t0 + secs;
        c->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        uv_mutex_init(&c->mu);
        uv_cond_init(&c->cv);
        uv_thread_create(&th[i], client_main, c);
    }
    long done = 0, errors = 0;
    const char *first = "";
    for (int i = 0; i < nc; i++) {
        uv_thread_join(&th[i]);
        done += cs[i].done;
        errors += cs[i].errors;
        if (cs[i].errors && !*first)
            first = cs[i].first_error;
    }
    double dt = pd_now() - t0;
    struct pd_engine_stats es;
    pd_engine_stats(e, &es);
    printf("{\"tasks\":%d,\"concurrency\":%d,\"workers\":%d,\"seconds\":%.2f,\"requests\":%ld,"
           "\"errors\":%ld,\"requests_per_s\":%.2f,\"mean_batch\":%.2f,\"first_error\":\"%s\"}\n",
           ntasks, nc, workers, dt, done, errors, done / dt,
           es.batches ? (double)(done + errors) / (double)es.batches : 0.0, first);
    pd_engine_free(e);
    pd_cache_free(cache);
    pd_store_close(st);
    pd_model_free(m);
    free(jpeg);
    free(cs);
    free(th);
    return errors ? 1 : 0;
}

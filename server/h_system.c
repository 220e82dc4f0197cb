/* GET /healthz, /readyz, /metrics */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum MHD_Result h_healthz(struct req *r)
{
    return reply_json(r, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

enum MHD_Result h_readyz(struct req *r)
{
    struct pd_server *s = r->srv;
    if (!s->ready || atomic_load(&s->draining))
        return reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "not_ready",
                           atomic_load(&s->draining) ? "shutting down" : "starting");
    return reply_json(
        r, MHD_HTTP_OK,
        json_pack("{s:s, s:s}", "status", "ready", "backbone", pd_model_sha256(s->model)));
}

enum MHD_Result h_metrics(struct req *r)
{
    struct pd_server *s = r->srv;
    char *req = pd_metrics_render(s->metrics);
    struct pd_cache_stats cs;
    struct pd_engine_stats es;
    pd_cache_stats(s->cache, &cs);
    pd_engine_stats(s->engine, &es);
    static const char *const bins[8] = {"1", "2", "4", "8", "16", "32", "64", "+Inf"};
    char tail[4096];
    size_t n = (size_t)snprintf(
        tail, sizeof(tail),
        "# HELP patchd_queue_depth Inference requests waiting for a worker.\n"
        "# TYPE patchd_queue_depth gauge\npatchd_queue_depth %u\n"
        "# HELP patchd_inflight_requests Requests being handled.\n"
        "# TYPE patchd_inflight_requests gauge\npatchd_inflight_requests %d\n"
        "# HELP patchd_cache_hits_total Patch cache hits.\n"
        "# TYPE patchd_cache_hits_total counter\npatchd_cache_hits_total %llu\n"
        "# HELP patchd_cache_misses_total Patch cache misses.\n"
        "# TYPE patchd_cache_misses_total counter\npatchd_cache_misses_total %llu\n"
        "# HELP patchd_cache_evictions_total Patches evicted from the cache.\n"
        "# TYPE patchd_cache_evictions_total counter\npatchd_cache_evictions_total %llu\n"
        "# HELP patchd_cache_bytes Memory held by resident patches.\n"
        "# TYPE patchd_cache_bytes gauge\npatchd_cache_bytes %zu\n"
        "# HELP patchd_cache_entries Resident patch versions.\n"
        "# TYPE patchd_cache_entries gauge\npatchd_cache_entries %d\n"
        "# HELP patchd_patch_loads_total Patches loaded from the store.\n"
        "# TYPE patchd_patch_loads_total counter\npatchd_patch_loads_total %llu\n"
        "# HELP patchd_patch_load_errors_total Patch loads that failed validation or I/O.\n"
        "# TYPE patchd_patch_load_errors_total counter\npatchd_patch_load_errors_total %llu\n"
        "# HELP patchd_build_info Build information.\n"
        "# TYPE patchd_build_info gauge\npatchd_build_info{version=\"%s\",backbone=\"%.16s\"} 1\n"
        "# HELP patchd_batch_size Images per forward pass.\n"
        "# TYPE patchd_batch_size histogram\n",
        es.queued, atomic_load(&s->inflight), (unsigned long long)cs.hits,
        (unsigned long long)cs.misses, (unsigned long long)cs.evictions, cs.bytes, cs.entries,
        (unsigned long long)cs.loads, (unsigned long long)cs.load_errors, PD_VERSION,
        pd_model_sha256(s->model));
    uint64_t cum = 0;
    for (int b = 0; b < 8 && n < sizeof(tail); b++) {
        cum += es.batch_hist[b];
        n += (size_t)snprintf(tail + n, sizeof(tail) - n,
                              "patchd_batch_size_bucket{le=\"%s\"} %llu\n", bins[b],
                              (unsigned long long)cum);
    }
    if (n < sizeof(tail))
        n += (size_t)snprintf(tail + n, sizeof(tail) - n, "patchd_batch_size_count %llu\n",
                              (unsigned long long)es.batches);
    int jc[PD_JOB_CANCELLED + 1];
    pd_jobs_counts(s->jobs, jc);
    if (n < sizeof(tail))
        n += (size_t)snprintf(tail + n, sizeof(tail) - n,
                              "# HELP patchd_jobs Training jobs by state.\n"
                              "# TYPE patchd_jobs gauge\n");
    for (int st = PD_JOB_QUEUED; st <= PD_JOB_CANCELLED && n < sizeof(tail); st++)
        n += (size_t)snprintf(tail + n, sizeof(tail) - n, "patchd_jobs{state=\"%s\"} %d\n",
                              pd_job_state_name((enum pd_job_state)st), jc[st]);
    size_t rl = req ? strlen(req) : 0;
    char *all = malloc(rl + n + 1);
    if (!all) {
        free(req);
        return reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory", "out of memory");
    }
    if (req)
        memcpy(all, req, rl);
    memcpy(all + rl, tail, n);
    free(req);
    enum MHD_Result ret = reply_bytes(r, MHD_HTTP_OK, "text/plain; version=0.0.4", all, rl + n);
    free(all);
    return ret;
}

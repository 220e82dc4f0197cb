/*
 * server.h - patchd's one server object and what its handlers share.
 *
 * The HTTP layer (http.c) runs libmicrohttpd's polling thread: it parses requests, checks keys
 * and limits, collects bodies and answers. Inference is handed to the engine's workers and the
 * connection is suspended until a worker resumes it; nothing slow runs on the polling thread
 * except patch validation and the store's fsyncs on upload. The main thread runs a libuv loop:
 * signals (SIGTERM drains, SIGHUP reloads tenants), the store watcher.
 *
 * Handlers are grouped by endpoint family: h_infer.c (/infer), h_tasks.c (/tasks...),
 * h_system.c (/healthz, /readyz, /metrics). Each answers through reply_json / reply_error, and
 * HTTP statuses come from pd_err in exactly one place (http_status_of).
 */
#ifndef PD_SERVER_H
#define PD_SERVER_H

#include "config.h"
#include "engine.h"
#include "jobs.h"
#include "metrics.h"

#include "../patches/cache.h"

#include <microhttpd.h>
#include <stdatomic.h>
#include <uv.h>

struct pd_server {
    struct pd_config cfg;
    const char *config_path; /* for SIGHUP; NULL when none */
    pd_model *model;
    pd_store *store;
    pd_cache *cache;
    pd_engine *engine;
    pd_jobs *jobs;
    pd_metrics *metrics;
    struct MHD_Daemon *httpd;
    uv_rwlock_t tenants_lock; /* guards cfg.tenants on SIGHUP */
    struct bucket *buckets;   /* rate limits, one per tenant, under buckets_mu */
    uv_mutex_t buckets_mu;
    atomic_int inflight;
    atomic_int draining;
    int ready;
};

enum route {
    R_NONE,
    R_HEALTHZ,
    R_READYZ,
    R_METRICS,
    R_INFER,
    R_TASKS,
    R_TASK,
    R_TASK_PATCH,
    R_TASK_ACTIVATE,
    R_TRAIN,
    R_JOBS,
    R_JOB,
};

enum req_state {
    S_NEW,
    S_BODY,
    S_WAITING, /* suspended while a worker runs it */
    S_DONE,
};

struct req {
    struct pd_server *srv;
    struct MHD_Connection *conn;
    double t0;
    enum route route;
    enum req_state state;
    int is_get, is_put, is_post, is_delete;
    char task[PD_NAME_MAX + 1];
    char tenant[PD_NAME_MAX + 1];
    enum pd_role role;
    /* body */
    uint8_t *body;
    size_t len, cap, limit;
    int too_big;
    struct MHD_PostProcessor *pp;
    int file_parts;
    char part_key[64];
    /* work handed to another thread; resume() answers when it is done */
    enum MHD_Result (*resume)(struct req *r);
    struct pd_infer_job job;
    char job_id[40]; /* /jobs/ID, or the new training job */
    int train_err;
    char train_msg[PD_MSG_MAX];
    /* access log */
    unsigned status;
    size_t resp_bytes;
    int version;
};

/* Answers helpers; they return MHD_YES/MHD_NO for the access handler to return. */
enum MHD_Result reply_json(struct req *r, unsigned status, json_t *body); /* steals body */
enum MHD_Result reply_error(struct req *r, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result reply_err(struct req *r, int err, const char *msg); /* from a pd_err */
enum MHD_Result reply_bytes(struct req *r, unsigned status, const char *type, const void *data,
                            size_t len);
unsigned http_status_of(int err);

/* A query parameter, or NULL. */
const char *query(struct req *r, const char *key);
/* Parses an integer query parameter: 0 absent, 1 present and valid, -1 invalid. */
int query_int(struct req *r, const char *key, long lo, long hi, long *out);

/* Handlers: called once the body (if any) is complete. */
enum MHD_Result h_infer(struct req *r);
enum MHD_Result h_infer_done(struct req *r);
enum MHD_Result h_tasks_list(struct req *r);
enum MHD_Result h_task_get(struct req *r);
enum MHD_Result h_task_put(struct req *r);
enum MHD_Result h_task_delete(struct req *r);
enum MHD_Result h_task_patch(struct req *r);
enum MHD_Result h_task_activate(struct req *r);
enum MHD_Result h_train(struct req *r);
enum MHD_Result h_jobs_list(struct req *r);
enum MHD_Result h_job_get(struct req *r);
enum MHD_Result h_job_delete(struct req *r);
enum MHD_Result h_healthz(struct req *r);
enum MHD_Result h_readyz(struct req *r);
enum MHD_Result h_metrics(struct req *r);

/* Starts and stops the HTTP daemon. */
int http_start(struct pd_server *s, char *msg);
void http_quiesce(struct pd_server *s);
void http_stop(struct pd_server *s);
/* The port actually bound (for --listen ...:0). */
unsigned http_port(struct pd_server *s);

/* Authentication and rate limiting (auth.c). */
int auth_init(struct pd_server *s);
void auth_fini(struct pd_server *s);
/* Fills r->tenant and r->role from the Authorization header; 0 or an HTTP status (401). */
unsigned auth_check(struct req *r);
/* 0 when the tenant may make one more request now, else seconds to wait (429). */
unsigned auth_rate(struct req *r);
/* The tenant's configured limits (copied), or defaults in development mode. */
void auth_limits(struct pd_server *s, const char *tenant, int *max_tasks, int *max_jobs);
/* Swaps in the tenants of a freshly loaded configuration (SIGHUP). */
void auth_reload(struct pd_server *s, struct pd_config *fresh);

#endif

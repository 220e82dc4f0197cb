/* POST /train, GET /jobs, GET /jobs/ID, DELETE /jobs/ID */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum MHD_Result train_checked(struct req *r)
{
    if (r->train_err == PD_EXISTS && !r->job_id[0]) /* the tenant's job limit */
        return reply_error(r, MHD_HTTP_TOO_MANY_REQUESTS, "job_limit", "%s", r->train_msg);
    if (r->train_err)
        return reply_err(r, r->train_err, r->train_msg);
    return reply_json(r, MHD_HTTP_ACCEPTED,
                      json_pack("{s:s, s:s}", "job", r->job_id, "task", r->task));
}

/* On the job thread, once the archive has been extracted or refused. */
static void on_checked(void *ctx, int err, const char *msg, const char *id)
{
    struct req *r = ctx;
    r->train_err = err;
    snprintf(r->train_msg, sizeof(r->train_msg), "%s", msg ? msg : "");
    snprintf(r->job_id, sizeof(r->job_id), "%s", id);
    r->state = S_DONE;
    MHD_resume_connection(r->conn);
}

enum MHD_Result h_train(struct req *r)
{
    struct pd_server *s = r->srv;
    const char *task = query(r, "task"), *kind = query(r, "kind"), *base = query(r, "base");
    if (!task)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "missing_task",
                           "query parameter task= is required");
    if (!pd_store_valid_name(task))
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_task_name",
                           "task name must match [a-z0-9][a-z0-9_-]{0,63}");
    snprintf(r->task, sizeof(r->task), "%s", task);
    if (!strcmp(task, PD_FACES_TASK))
        return reply_error(r, MHD_HTTP_CONFLICT, "builtin_task", "'faces' cannot be trained");
    int k = kind ? pd_train_kind_parse(kind) : PD_TRAIN_SBDW;
    if (k == PD_TRAIN_FULL) /* hours of CPU and a 13 MB patch per task: a CLI reference only */
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "kind full is available from patchctl train only; use logits, sb or "
                           "sbdw");
    if (k < 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "kind must be logits, sb or sbdw");
    long epochs = 0;
    if (query_int(r, "epochs", 1, 1000, &epochs) < 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "epochs must be an integer in 1..1000");
    if (base && (!pd_store_valid_name(base) ||
                 pd_store_lookup(s->store, r->tenant, base, NULL, NULL, 0) < 0))
        return reply_error(r, MHD_HTTP_NOT_FOUND, "unknown_task", "no base task '%.64s'", base);
    if (r->len == 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "empty_body",
                           "the body must be a tar, tar.gz or zip of class folders of JPEGs");
    int max_tasks, max_jobs;
    auth_limits(s, r->tenant, &max_tasks, &max_jobs);
    struct pd_job_spec spec;
    memset(&spec, 0, sizeof(spec));
    snprintf(spec.tenant, sizeof(spec.tenant), "%s", r->tenant);
    snprintf(spec.task, sizeof(spec.task), "%s", task);
    if (base)
        snprintf(spec.base, sizeof(spec.base), "%s", base);
    spec.kind = (enum pd_train_kind)k;
    spec.epochs = (int)epochs;
    spec.archive = r->body;
    spec.archive_len = r->len;
    spec.checked = on_checked;
    spec.ctx = r;
    r->resume = train_checked;
    /* suspend first: the job thread may finish checking before this returns */
    r->state = S_WAITING;
    MHD_suspend_connection(r->conn);
    r->body = NULL; /* the job owns the archive from here, unless it is refused */
    r->len = 0;
    int err = pd_jobs_submit(s->jobs, &spec, max_jobs, r->train_msg);
    if (err) {
        r->body = spec.archive;
        /* answered when the connection resumes, like any other outcome */
        r->train_err = err == PD_TOOBIG ? PD_EXISTS : err;
        r->state = S_DONE;
        MHD_resume_connection(r->conn);
        return MHD_YES;
    }
    return MHD_YES;
}

enum MHD_Result h_jobs_list(struct req *r)
{
    return reply_json(r, MHD_HTTP_OK,
                      json_pack("{s:o}", "jobs", pd_jobs_list(r->srv->jobs, r->tenant)));
}

enum MHD_Result h_job_get(struct req *r)
{
    json_t *o = pd_jobs_get(r->srv->jobs, r->tenant, r->job_id);
    if (!o)
        return reply_error(r, MHD_HTTP_NOT_FOUND, "unknown_job", "no job '%.40s'", r->job_id);
    return reply_json(r, MHD_HTTP_OK, o);
}

enum MHD_Result h_job_delete(struct req *r)
{
    int err = pd_jobs_cancel(r->srv->jobs, r->tenant, r->job_id);
    if (err == PD_NOTFOUND)
        return reply_error(r, MHD_HTTP_NOT_FOUND, "unknown_job", "no job '%.40s'", r->job_id);
    if (err == PD_EXISTS)
        return reply_error(r, MHD_HTTP_CONFLICT, "job_finished", "job '%.40s' has already finished",
                           r->job_id);
    return reply_json(r, MHD_HTTP_OK,
                      json_pack("{s:s, s:s}", "job", r->job_id, "state", "cancelling"));
}

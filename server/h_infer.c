/* POST /infer?task=NAME[&top_k=K][&min_score=S][&version=N] */
#include "server.h"

#include <stdlib.h>
#include <string.h>

static void on_done(struct pd_infer_job *job)
{
    struct req *r = job->ctx;
    r->state = S_DONE;
    MHD_resume_connection(r->conn); /* the access handler runs again: h_infer_done */
}

enum MHD_Result h_infer(struct req *r)
{
    const char *task = query(r, "task");
    if (!task)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "missing_task",
                           "query parameter task= is "
                           "required");
    if (!pd_store_valid_name(task))
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_task_name",
                           "task name must match [a-z0-9][a-z0-9_-]{0,63}");
    snprintf(r->task, sizeof(r->task), "%s", task);
    long top_k = 5, version = 0;
    double min_score = 0.5;
    if (query_int(r, "top_k", 1, 10000, &top_k) < 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "top_k must be an integer in 1..10000");
    if (query_int(r, "version", 1, PD_MAX_VERSIONS, &version) < 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "version must be a positive integer");
    const char *ms = query(r, "min_score");
    if (ms) {
        char *end;
        min_score = strtod(ms, &end);
        if (!*ms || *end || !(min_score >= 0 && min_score <= 1))
            return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                               "min_score must be a number in [0, 1]");
    }
    if (r->len == 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "empty_body", "the body must be a JPEG image");
    struct pd_infer_job *j = &r->job;
    memcpy(j->tenant, r->tenant, sizeof(j->tenant));
    memcpy(j->task, r->task, sizeof(j->task));
    j->version = (int)version;
    j->top_k = (int)top_k;
    j->min_score = min_score;
    j->image = r->body;
    j->image_len = r->len;
    j->done = on_done;
    j->ctx = r;
    r->resume = h_infer_done;
    /* suspend first: the worker may finish before this function returns */
    r->state = S_WAITING;
    MHD_suspend_connection(r->conn);
    if (pd_engine_submit(r->srv->engine, j)) {
        j->err = PD_TOOBIG;
        snprintf(j->msg, sizeof(j->msg), "queue full");
        r->state = S_DONE;
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

enum MHD_Result h_infer_done(struct req *r)
{
    struct pd_infer_job *j = &r->job;
    r->version = j->used_version;
    if (j->err == PD_TOOBIG && !strcmp(j->msg, "queue full")) {
        return reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "overloaded",
                           "the inference queue is full; retry shortly");
    }
    if (j->err == PD_NOTFOUND)
        return reply_error(r, MHD_HTTP_NOT_FOUND, "unknown_task", "%s", j->msg);
    if (j->err)
        return reply_err(r, j->err, j->msg);
    json_t *res = j->result;
    j->result = NULL;
    return reply_json(r, MHD_HTTP_OK, res);
}

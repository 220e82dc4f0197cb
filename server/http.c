/* The HTTP layer: libmicrohttpd callbacks, routing, bodies, errors, the access log. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SMALL_BODY (64u << 10)
#define POST_BUF   (64u << 10)

unsigned http_status_of(int err)
{
    switch (err) {
    case PD_OK:
        return MHD_HTTP_OK;
    case PD_INVAL:
    case PD_RANGE:
        return MHD_HTTP_BAD_REQUEST;
    case PD_NOTFOUND:
        return MHD_HTTP_NOT_FOUND;
    case PD_EXISTS:
    case PD_CANCELLED:
        return MHD_HTTP_CONFLICT;
    case PD_TOOBIG:
        return MHD_HTTP_CONTENT_TOO_LARGE;
    case PD_FORMAT:
    case PD_UNSUPPORTED:
    case PD_CHECKSUM:
    case PD_MISMATCH:
        return MHD_HTTP_UNPROCESSABLE_CONTENT;
    case PD_NOSPC:
        return MHD_HTTP_INSUFFICIENT_STORAGE;
    case PD_NOMEM:
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    default:
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static enum MHD_Result send_response(struct req *r, unsigned status, const char *type, void *data,
                                     size_t len, enum MHD_ResponseMemoryMode mode,
                                     const char *retry_after)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, mode);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    if (retry_after)
        MHD_add_response_header(resp, "Retry-After", retry_after);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    r->status = status;
    r->resp_bytes = len;
    r->state = S_DONE;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* JSON text with a final newline (new string; NULL on out of memory). Steals o. */
static char *dumps_nl(json_t *o, size_t *n)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(o);
    if (!s)
        return NULL;
    *n = strlen(s);
    char *t = realloc(s, *n + 2);
    if (!t)
        return s;
    t[(*n)++] = '\n';
    t[*n] = '\0';
    return t;
}

enum MHD_Result reply_json(struct req *r, unsigned status, json_t *body)
{
    size_t n;
    char *s = dumps_nl(body, &n);
    if (!s)
        return send_response(
            r, MHD_HTTP_SERVICE_UNAVAILABLE, "application/json",
            (void *)"{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}\n", 61,
            MHD_RESPMEM_PERSISTENT, NULL);
    return send_response(r, status, "application/json", s, n, MHD_RESPMEM_MUST_FREE, NULL);
}

static enum MHD_Result verror(struct req *r, unsigned status, const char *code,
                              const char *retry_after, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n;
    char *s = dumps_nl(json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg), &n);
    if (!s)
        return MHD_NO;
    return send_response(r, status, "application/json", s, n, MHD_RESPMEM_MUST_FREE, retry_after);
}

enum MHD_Result reply_error(struct req *r, unsigned status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret = verror(r, status, code, NULL, fmt, ap);
    va_end(ap);
    return ret;
}

static enum MHD_Result reply_retry(struct req *r, unsigned status, const char *code,
                                   unsigned seconds, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result reply_retry(struct req *r, unsigned status, const char *code,
                                   unsigned seconds, const char *fmt, ...)
{
    char ra[16];
    snprintf(ra, sizeof(ra), "%u", seconds ? seconds : 1);
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret = verror(r, status, code, ra, fmt, ap);
    va_end(ap);
    return ret;
}

enum MHD_Result reply_err(struct req *r, int err, const char *msg)
{
    unsigned status = http_status_of(err);
    if (err == PD_TOOBIG && strstr(msg, "pixels"))
        status = MHD_HTTP_UNPROCESSABLE_CONTENT; /* an image too large in pixels, not in bytes */
    return reply_error(r, status, pd_err_name(err), "%s", msg);
}

enum MHD_Result reply_bytes(struct req *r, unsigned status, const char *type, const void *data,
                            size_t len)
{
    return send_response(r, status, type, (void *)data, len, MHD_RESPMEM_MUST_COPY, NULL);
}

const char *query(struct req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

int query_int(struct req *r, const char *key, long lo, long hi, long *out)
{
    const char *v = query(r, key);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi)
        return -1;
    *out = x;
    return 1;
}

/* "/tasks/NAME[/patch|/activate]" and friends; fills r->route and r->task. */
static void route(struct req *r, const char *url)
{
    r->route = R_NONE;
    if (!strcmp(url, "/healthz"))
        r->route = R_HEALTHZ;
    else if (!strcmp(url, "/readyz"))
        r->route = R_READYZ;
    else if (!strcmp(url, "/metrics"))
        r->route = R_METRICS;
    else if (!strcmp(url, "/infer"))
        r->route = R_INFER;
    else if (!strcmp(url, "/train"))
        r->route = R_TRAIN;
    else if (!strcmp(url, "/jobs") || !strcmp(url, "/jobs/"))
        r->route = R_JOBS;
    else if (!strncmp(url, "/jobs/", 6)) {
        /* one path segment: the job's id */
        size_t n = 0;
        while (n < sizeof(r->job_id) && url[6 + n] && url[6 + n] != '/')
            n++;
        if (n > 0 && n < sizeof(r->job_id) && url[6 + n] == '\0') {
            memcpy(r->job_id, url + 6, n);
            r->job_id[n] = '\0';
            r->route = R_JOB;
        }
    } else if (!strcmp(url, "/tasks") || !strcmp(url, "/tasks/"))
        r->route = R_TASKS;
    else if (!strncmp(url, "/tasks/", 7)) {
        const char *name = url + 7, *slash = strchr(name, '/');
        size_t n = slash ? (size_t)(slash - name) : strlen(name);
        if (n == 0 || n > PD_NAME_MAX)
            return;
        memcpy(r->task, name, n);
        r->task[n] = '\0';
        if (!slash)
            r->route = R_TASK;
        else if (!strcmp(slash, "/patch"))
            r->route = R_TASK_PATCH;
        else if (!strcmp(slash, "/activate"))
            r->route = R_TASK_ACTIVATE;
    }
}

static const char *route_name(enum route rt)
{
    static const char *const names[] = {"none", "healthz", "readyz",   "metrics", "infer", "tasks",
                                        "task", "patch",   "activate", "train",   "jobs",  "job"};
    return names[rt];
}

/* The methods a route takes, for 405 and Allow. */
static const char *allowed(enum route rt)
{
    switch (rt) {
    case R_HEALTHZ:
    case R_READYZ:
    case R_METRICS:
    case R_TASKS:
    case R_TASK_PATCH:
    case R_JOBS:
        return "GET";
    case R_JOB:
        return "GET, DELETE";
    case R_INFER:
    case R_TASK_ACTIVATE:
    case R_TRAIN:
        return "POST";
    case R_TASK:
        return "GET, PUT, DELETE";
    default:
        return "";
    }
}

static int method_ok(const struct req *r, const char *method)
{
    const char *a = allowed(r->route);
    if (!strcmp(method, "HEAD"))
        return strstr(a, "GET") != NULL;
    size_t n = strlen(method);
    for (const char *p = a; (p = strstr(p, method)); p += n)
        if ((p == a || p[-2] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    return 0;
}

static int needs_admin(const struct req *r)
{
    return (r->route == R_TASK && (r->is_put || r->is_delete)) || r->route == R_TASK_ACTIVATE ||
           r->route == R_TRAIN || (r->route == R_JOB && r->is_delete);
}

/* Appends to the request body, up to its limit (beyond it the body is marked too big). */
static void append(struct req *r, const char *data, size_t size)
{
    if (r->too_big || r->len + size > r->limit) {
        r->too_big = 1;
        return;
    }
    if (r->len + size > r->cap) {
        size_t cap = r->cap ? r->cap : 65536;
        while (cap < r->len + size)
            cap *= 2;
        if (cap > r->limit)
            cap = r->limit;
        uint8_t *nb = realloc(r->body, cap);
        if (!nb) {
            r->too_big = 1;
            return;
        }
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, size);
    r->len += size;
}

/* Multipart: the bytes of the (single) file part go to the body. */
static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    (void)kind, (void)content_type, (void)transfer_encoding;
    struct req *r = cls;
    if (!filename)
        return MHD_YES; /* a plain form field: ignored */
    if (off == 0 && (r->file_parts == 0 || strcmp(r->part_key, key ? key : ""))) {
        r->file_parts++;
        snprintf(r->part_key, sizeof(r->part_key), "%s", key ? key : "");
    }
    if (r->file_parts > 1)
        return MHD_YES;
    append(r, data, size);
    return MHD_YES;
}

static int type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return ct && !strncasecmp(ct, want, n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* First call: route, method, auth, rate, role, content type, declared length. */
static enum MHD_Result begin(struct req *r, const char *url, const char *method)
{
    route(r, url);
    if (r->route == R_NONE)
        return reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no endpoint %s %.200s", method,
                           url);
    if (!method_ok(r, method)) {
        enum MHD_Result ret = reply_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
                                          "%s takes %s", route_name(r->route), allowed(r->route));
        return ret;
    }
    if (r->route == R_HEALTHZ || r->route == R_READYZ) {
        r->state = S_BODY; /* open: probes carry no key */
        r->limit = SMALL_BODY;
        return MHD_YES;
    }
    unsigned st = auth_check(r);
    if (st)
        return reply_error(r, st, "unauthorized",
                           "missing or unknown API key (Authorization: "
                           "Bearer KEY)");
    unsigned wait = auth_rate(r);
    if (wait)
        return reply_retry(r, MHD_HTTP_TOO_MANY_REQUESTS, "rate_limited", wait,
                           "tenant '%s' is over its request rate", r->tenant);
    if (needs_admin(r) && r->role != PD_ROLE_ADMIN)
        return reply_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "this key may not change tasks");
    if (r->task[0] && !pd_store_valid_name(r->task))
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_task_name",
                           "task name must match [a-z0-9][a-z0-9_-]{0,63}");
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
    r->limit = SMALL_BODY;
    if (r->route == R_INFER) {
        r->limit = r->srv->cfg.limits.image_bytes;
        if (type_is(ct, "multipart/form-data")) {
            r->pp = MHD_create_post_processor(r->conn, POST_BUF, on_part, r);
            if (!r->pp)
                return reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_multipart",
                                   "cannot parse the multipart body");
        } else if (!type_is(ct, "image/jpeg")) {
            return reply_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "Content-Type must be image/jpeg or multipart/form-data, not "
                               "'%.64s'",
                               ct ? ct : "");
        }
    } else if (r->route == R_TRAIN) {
        r->limit = r->srv->cfg.limits.archive_bytes;
        if (type_is(ct, "multipart/form-data")) {
            r->pp = MHD_create_post_processor(r->conn, POST_BUF, on_part, r);
            if (!r->pp)
                return reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_multipart",
                                   "cannot parse the multipart body");
        } else if (!type_is(ct, "application/x-tar") && !type_is(ct, "application/gzip") &&
                   !type_is(ct, "application/x-gzip") && !type_is(ct, "application/zip") &&
                   !type_is(ct, "application/x-compressed-tar")) {
            return reply_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "an archive is application/x-tar, application/gzip or "
                               "application/zip, not '%.64s'",
                               ct ? ct : "");
        }
    } else if (r->route == R_TASK && r->is_put) {
        r->limit = r->srv->cfg.limits.patch_bytes;
        if (ct && !type_is(ct, "application/octet-stream") &&
            !type_is(ct, "application/x-safetensors"))
            return reply_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "a patch is application/octet-stream, not '%.64s'", ct);
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        unsigned long long n = strtoull(cl, NULL, 10);
        size_t slack = r->pp ? POST_BUF : 0; /* multipart framing */
        if (n > r->limit + slack)
            return reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
                               "body of %llu bytes is over the limit of %zu", n, r->limit);
    }
    r->state = S_BODY;
    return MHD_YES;
}

static enum MHD_Result dispatch(struct req *r)
{
    if (r->too_big)
        return reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
                           "body is over the limit of %zu bytes", r->limit);
    switch (r->route) {
    case R_HEALTHZ:
        return h_healthz(r);
    case R_READYZ:
        return h_readyz(r);
    case R_METRICS:
        return h_metrics(r);
    case R_INFER:
        return h_infer(r);
    case R_TASKS:
        return h_tasks_list(r);
    case R_TASK:
        return r->is_put ? h_task_put(r) : r->is_delete ? h_task_delete(r) : h_task_get(r);
    case R_TASK_PATCH:
        return h_task_patch(r);
    case R_TASK_ACTIVATE:
        return h_task_activate(r);
    case R_TRAIN:
        return h_train(r);
    case R_JOBS:
        return h_jobs_list(r);
    case R_JOB:
        return r->is_delete ? h_job_delete(r) : h_job_get(r);
    default:
        return reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no such endpoint");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **ctx)
{
    (void)version;
    struct pd_server *s = cls;
    struct req *r = *ctx;
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->srv = s;
        r->conn = conn;
        r->t0 = pd_now();
        r->is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        r->is_put = !strcmp(method, "PUT");
        r->is_post = !strcmp(method, "POST");
        r->is_delete = !strcmp(method, "DELETE");
        *ctx = r;
        atomic_fetch_add(&s->inflight, 1);
        return begin(r, url, method);
    }
    if (r->state == S_DONE && r->resume && !r->status)
        return r->resume(r); /* resumed by the thread that did the work */
    if (r->state != S_BODY) {
        *upload_size = 0; /* already answered: discard the rest */
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->pp) {
            if (MHD_post_process(r->pp, upload, *upload_size) != MHD_YES)
                r->too_big = r->too_big ? 1 : 0;
        } else {
            append(r, upload, *upload_size);
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->pp && r->file_parts != 1 && !r->too_big)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_multipart",
                           "multipart body must hold exactly one file part (found %d)",
                           r->file_parts);
    return dispatch(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode why)
{
    (void)conn;
    struct pd_server *s = cls;
    struct req *r = *ctx;
    if (!r)
        return;
    double dt = pd_now() - r->t0;
    if (r->status) {
        pd_metrics_request(s->metrics, route_name(r->route), r->tenant, r->task, r->status, dt);
        fprintf(stderr,
                "patchd: access tenant=%s task=%s version=%d status=%u bytes=%zu ms=%.2f %s%s\n",
                r->tenant[0] ? r->tenant : "-", r->task[0] ? r->task : "-", r->version, r->status,
                r->resp_bytes, dt * 1e3, route_name(r->route),
                why == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    }
    if (r->pp)
        MHD_destroy_post_processor(r->pp);
    json_decref(r->job.result);
    free(r->body);
    free(r);
    *ctx = NULL;
    atomic_fetch_sub(&s->inflight, 1);
}

static int parse_listen(const char *s, struct sockaddr_in *sa, int *loopback)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || end == colon + 1)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa->sin_addr) != 1)
        return -1;
    *loopback = (ntohl(sa->sin_addr.s_addr) >> 24) == 127;
    return 0;
}

/*
 * Percent-decoding of paths and query values, as MHD's own but leaving "%00" as it is: a decoded
 * NUL would cut a C string short, so "/tasks/a%00b" would name task "a". Kept escaped, the '%'
 * makes the name invalid and the request is refused.
 */
static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls, (void)c;
    char *out = s;
    for (const char *in = s; *in;) {
        int hi, lo;
        if (in[0] == '%' && (hi = hexval(in[1])) >= 0 && (lo = hexval(in[2])) >= 0 &&
            (hi | lo) != 0) {
            *out++ = (char)(hi * 16 + lo);
            in += 3;
        } else {
            *out++ = *in++;
        }
    }
    *out = 0;
    return (size_t)(out - s);
}

int http_start(struct pd_server *s, char *msg)
{
    struct sockaddr_in sa;
    int loopback;
    if (parse_listen(s->cfg.listen, &sa, &loopback) < 0)
        return pd_fail(msg, PD_INVAL, "listen address '%s' is not IPV4:PORT", s->cfg.listen);
    if (s->cfg.ntenants == 0 && !loopback && !s->cfg.insecure)
        return pd_fail(msg, PD_INVAL,
                       "no tenants are configured (development mode, no authentication): refusing "
                       "to listen on non-loopback %s without --insecure",
                       s->cfg.listen);
    const struct pd_limits *l = &s->cfg.limits;
    s->httpd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT, l->connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, l->per_ip, MHD_OPTION_CONNECTION_TIMEOUT, l->timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 << 10, MHD_OPTION_UNESCAPE_CALLBACK,
        unescape, NULL, MHD_OPTION_END);
    if (!s->httpd)
        return pd_fail(msg, PD_IO, "cannot listen on %s: %s", s->cfg.listen, strerror(errno));
    return PD_OK;
}

unsigned http_port(struct pd_server *s)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->httpd, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

void http_quiesce(struct pd_server *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->httpd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void http_stop(struct pd_server *s)
{
    MHD_stop_daemon(s->httpd);
    s->httpd = NULL;
}

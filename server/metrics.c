#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NB (sizeof(bounds) / sizeof(bounds[0]))

struct series {
    char endpoint[16], tenant[65], task[65];
    unsigned status;
    uint64_t count;
};

struct hist {
    char endpoint[16], tenant[65], task[65];
    uint64_t bucket[NB], count;
    double sum;
};

struct pd_metrics {
    uv_mutex_t mu;
    struct series *s;
    int ns;
    struct hist *h;
    int nh;
};

pd_metrics *pd_metrics_new(void)
{
    pd_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->s = calloc(PD_METRICS_MAX_SERIES, sizeof(*m->s));
    m->h = calloc(PD_METRICS_MAX_SERIES, sizeof(*m->h));
    if (!m->s || !m->h) {
        free(m->s);
        free(m->h);
        free(m);
        return NULL;
    }
    uv_mutex_init(&m->mu);
    return m;
}

void pd_metrics_free(pd_metrics *m)
{
    if (!m)
        return;
    uv_mutex_destroy(&m->mu);
    free(m->s);
    free(m->h);
    free(m);
}

void pd_metrics_request(pd_metrics *m, const char *endpoint, const char *tenant, const char *task,
                        unsigned status, double seconds)
{
    uv_mutex_lock(&m->mu);
    struct series *s = NULL;
    for (int pass = 0; pass < 2 && !s; pass++) {
        for (int i = 0; i < m->ns; i++)
            if (m->s[i].status == status && !strcmp(m->s[i].task, task) &&
                !strcmp(m->s[i].tenant, tenant) && !strcmp(m->s[i].endpoint, endpoint)) {
                s = &m->s[i];
                break;
            }
        if (!s && m->ns < PD_METRICS_MAX_SERIES) {
            s = &m->s[m->ns++];
            snprintf(s->endpoint, sizeof(s->endpoint), "%s", endpoint);
            snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
            snprintf(s->task, sizeof(s->task), "%s", task);
            s->status = status;
        }
        if (!s)
            task = "_other", tenant = "_other";
    }
    if (s)
        s->count++;
    struct hist *h = NULL;
    for (int i = 0; i < m->nh && !h; i++)
        if (!strcmp(m->h[i].task, task) && !strcmp(m->h[i].tenant, tenant) &&
            !strcmp(m->h[i].endpoint, endpoint))
            h = &m->h[i];
    if (!h && m->nh < PD_METRICS_MAX_SERIES) {
        h = &m->h[m->nh++];
        snprintf(h->endpoint, sizeof(h->endpoint), "%s", endpoint);
        snprintf(h->tenant, sizeof(h->tenant), "%s", tenant);
        snprintf(h->task, sizeof(h->task), "%s", task);
    }
    if (h) {
        for (size_t b = 0; b < NB; b++)
            if (seconds <= bounds[b])
                h->bucket[b]++;
        h->count++;
        h->sum += seconds;
    }
    uv_mutex_unlock(&m->mu);
}

struct buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

char *pd_metrics_render(pd_metrics *m)
{
    struct buf b = {malloc(4096), 0, 4096, 0};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';
    uv_mutex_lock(&m->mu);
    put(&b,
        "# HELP patchd_requests_total Requests answered, by endpoint, tenant, task and status.\n"
        "# TYPE patchd_requests_total counter\n");
    for (int i = 0; i < m->ns; i++)
        put(&b,
            "patchd_requests_total{endpoint=\"%s\",tenant=\"%s\",task=\"%s\",status=\"%u\"} %llu\n",
            m->s[i].endpoint, m->s[i].tenant, m->s[i].task, m->s[i].status,
            (unsigned long long)m->s[i].count);
    put(&b,
        "# HELP patchd_request_duration_seconds Request latency, by endpoint, tenant and task.\n"
        "# TYPE patchd_request_duration_seconds histogram\n");
    for (int i = 0; i < m->nh; i++) {
        const struct hist *h = &m->h[i];
        for (size_t k = 0; k < NB; k++)
            put(&b,
                "patchd_request_duration_seconds_bucket{endpoint=\"%s\",tenant=\"%s\",task=\"%s\","
                "le=\"%g\"} %llu\n",
                h->endpoint, h->tenant, h->task, bounds[k], (unsigned long long)h->bucket[k]);
        put(&b,
            "patchd_request_duration_seconds_bucket{endpoint=\"%s\",tenant=\"%s\",task=\"%s\","
            "le=\"+Inf\"} %llu\n",
            h->endpoint, h->tenant, h->task, (unsigned long long)h->count);
        put(&b,
            "patchd_request_duration_seconds_sum{endpoint=\"%s\",tenant=\"%s\",task=\"%s\"} %.6f\n",
            h->endpoint, h->tenant, h->task, h->sum);
        put(&b,
            "patchd_request_duration_seconds_count{endpoint=\"%s\",tenant=\"%s\",task=\"%s\"} "
            "%llu\n",
            h->endpoint, h->tenant, h->task, (unsigned long long)h->count);
    }
    uv_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* Tenants, API keys and per-tenant request rates. */
#include "server.h"

#include <math.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

struct bucket {
    char tenant[PD_NAME_MAX + 1];
    double tokens, last;
};

static int rebuild_buckets(struct pd_server *s)
{
    struct bucket *b = calloc((size_t)s->cfg.ntenants + 1, sizeof(*b));
    if (!b)
        return -1;
    double now = pd_now();
    for (int i = 0; i < s->cfg.ntenants; i++) {
        memcpy(b[i].tenant, s->cfg.tenants[i].name, sizeof(b[i].tenant));
        b[i].tokens = s->cfg.tenants[i].rps > 1 ? s->cfg.tenants[i].rps : 1;
        b[i].last = now;
    }
    free(s->buckets);
    s->buckets = b;
    return 0;
}

int auth_init(struct pd_server *s)
{
    uv_rwlock_init(&s->tenants_lock);
    uv_mutex_init(&s->buckets_mu);
    return rebuild_buckets(s);
}

void auth_fini(struct pd_server *s)
{
    free(s->buckets);
    s->buckets = NULL;
    uv_mutex_destroy(&s->buckets_mu);
    uv_rwlock_destroy(&s->tenants_lock);
}

unsigned auth_check(struct req *r)
{
    struct pd_server *s = r->srv;
    uv_rwlock_rdlock(&s->tenants_lock);
    if (s->cfg.ntenants == 0) {
        uv_rwlock_rdunlock(&s->tenants_lock);
        snprintf(r->tenant, sizeof(r->tenant), "default");
        r->role = PD_ROLE_ADMIN;
        return 0;
    }
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    unsigned status = MHD_HTTP_UNAUTHORIZED;
    if (h && !strncmp(h, "Bearer ", 7) && h[7]) {
        char sha[65];
        pd_sha256_hex(h + 7, strlen(h + 7), sha);
        for (int i = 0; i < s->cfg.ntenants && status; i++) {
            const struct pd_tenant *t = &s->cfg.tenants[i];
            for (int k = 0; k < t->nkeys; k++) {
                if (CRYPTO_memcmp(sha, t->keys[k].sha256, 64) == 0) {
                    memcpy(r->tenant, t->name, sizeof(r->tenant));
                    r->role = t->keys[k].role;
                    status = 0;
                    break;
                }
            }
        }
    }
    uv_rwlock_rdunlock(&s->tenants_lock);
    return status;
}

unsigned auth_rate(struct req *r)
{
    struct pd_server *s = r->srv;
    double rps = 0;
    uv_rwlock_rdlock(&s->tenants_lock);
    for (int i = 0; i < s->cfg.ntenants; i++)
        if (!strcmp(s->cfg.tenants[i].name, r->tenant))
            rps = s->cfg.tenants[i].rps;
    uv_rwlock_rdunlock(&s->tenants_lock);
    if (rps <= 0)
        return 0;
    unsigned wait = 0;
    uv_mutex_lock(&s->buckets_mu);
    for (struct bucket *b = s->buckets; b && b->tenant[0]; b++) {
        if (strcmp(b->tenant, r->tenant))
            continue;
        double now = pd_now(), burst = rps > 1 ? rps : 1;
        b->tokens = fmin(burst, b->tokens + (now - b->last) * rps);
        b->last = now;
        if (b->tokens >= 1)
            b->tokens -= 1;
        else
            wait = (unsigned)ceil((1 - b->tokens) / rps);
        break;
    }
    uv_mutex_unlock(&s->buckets_mu);
    return wait ? wait : 0;
}

void auth_limits(struct pd_server *s, const char *tenant, int *max_tasks, int *max_jobs)
{
    *max_tasks = 0;
    *max_jobs = 1;
    uv_rwlock_rdlock(&s->tenants_lock);
    for (int i = 0; i < s->cfg.ntenants; i++)
        if (!strcmp(s->cfg.tenants[i].name, tenant)) {
            *max_tasks = s->cfg.tenants[i].max_tasks;
            *max_jobs = s->cfg.tenants[i].max_jobs;
        }
    uv_rwlock_rdunlock(&s->tenants_lock);
}

void auth_reload(struct pd_server *s, struct pd_config *fresh)
{
    uv_rwlock_wrlock(&s->tenants_lock);
    struct pd_tenant *old = s->cfg.tenants;
    s->cfg.tenants = fresh->tenants;
    s->cfg.ntenants = fresh->ntenants;
    fresh->tenants = NULL;
    fresh->ntenants = 0;
    uv_mutex_lock(&s->buckets_mu);
    rebuild_buckets(s);
    uv_mutex_unlock(&s->buckets_mu);
    uv_rwlock_wrunlock(&s->tenants_lock);
    free(old);
}

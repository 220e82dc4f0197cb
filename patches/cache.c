#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct centry {
    char tenant[PD_NAME_MAX + 1], task[PD_NAME_MAX + 1];
    int version;
    pd_patch *p; /* the cache's reference */
    size_t bytes;
    uint64_t used; /* LRU clock */
};

struct pin {
    char tenant[PD_NAME_MAX + 1], task[PD_NAME_MAX + 1];
};

struct pd_cache {
    const pd_model *m;
    pd_store *store;
    size_t budget;
    pthread_mutex_t mu;
    struct centry *e;
    int n, cap;
    struct pin *pins;
    int npins;
    uint64_t clock;
    struct pd_cache_stats st;
};

int pd_cache_new(const pd_model *model, pd_store *store, size_t budget, pd_cache **out, char *msg)
{
    *out = NULL;
    pd_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    c->m = model;
    c->store = store;
    c->budget = budget;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return PD_OK;
}

void pd_cache_free(pd_cache *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n; i++)
        pd_patch_unref(c->e[i].p);
    free(c->e);
    free(c->pins);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int is_pinned(const pd_cache *c, const char *tenant, const char *task)
{
    for (int i = 0; i < c->npins; i++)
        if (!strcmp(c->pins[i].task, task) && !strcmp(c->pins[i].tenant, tenant))
            return 1;
    return 0;
}

static struct centry *lookup(pd_cache *c, const char *tenant, const char *task, int version)
{
    for (int i = 0; i < c->n; i++) {
        struct centry *e = &c->e[i];
        if (e->version == version && !strcmp(e->task, task) && !strcmp(e->tenant, tenant))
            return e;
    }
    return NULL;
}

/* Removes entry i (the cache's reference goes; users keep theirs). Lock held. */
static void drop(pd_cache *c, int i)
{
    c->st.bytes -= c->e[i].bytes;
    pd_patch_unref(c->e[i].p);
    c->e[i] = c->e[--c->n];
}

/* Evicts LRU unpinned entries until within budget, never `keep`. Lock held. */
static void evict(pd_cache *c, const pd_patch *keep)
{
    while (c->budget && c->st.bytes > c->budget) {
        int victim = -1;
        for (int i = 0; i < c->n; i++) {
            struct centry *e = &c->e[i];
            if (e->p == keep || is_pinned(c, e->tenant, e->task))
                continue;
            if (victim < 0 || e->used < c->e[victim].used)
                victim = i;
        }
        if (victim < 0)
            return; /* everything left is pinned or in use as `keep` */
        drop(c, victim);
        c->st.evictions++;
    }
}

int pd_cache_get(pd_cache *c, const char *tenant, const char *task, int version, pd_patch **out,
                 int *version_out, char *msg)
{
    *out = NULL;
    if (!pd_store_valid_name(tenant) || !pd_store_valid_name(task))
        return pd_fail(msg, PD_INVAL, "invalid tenant or task name");
    int active;
    if (version == 0) {
        if (pd_store_lookup(c->store, tenant, task, &active, NULL, 0) < 0)
            return pd_fail(msg, PD_NOTFOUND, "no task '%s'", task);
        version = active;
    } else {
        int has = pd_store_has(c->store, tenant, task, version);
        if (has < 0)
            return pd_fail(msg, PD_NOTFOUND, "no task '%s'", task);
        if (!has)
            return pd_fail(msg, PD_NOTFOUND, "task '%s' has no version %d", task, version);
    }
    *version_out = version;

    pthread_mutex_lock(&c->mu);
    struct centry *e = lookup(c, tenant, task, version);
    if (e) {
        e->used = ++c->clock;
        c->st.hits++;
        *out = pd_patch_ref(e->p);
        pthread_mutex_unlock(&c->mu);
        return PD_OK;
    }
    c->st.misses++;
    pthread_mutex_unlock(&c->mu);

    /* load outside the lock */
    uint8_t *buf;
    size_t len;
    pd_patch *p = NULL;
    int err = pd_store_read(c->store, tenant, task, version, &buf, &len, msg);
    if (!err) {
        char inner[PD_MSG_MAX];
        err = pd_patch_parse(c->m, buf, len, &p, inner);
        free(buf);
        if (err)
            pd_fail(msg, err, "task '%s' version %d: %s", task, version, inner);
    }
    pthread_mutex_lock(&c->mu);
    if (err) {
        c->st.load_errors++;
        pthread_mutex_unlock(&c->mu);
        return err;
    }
    c->st.loads++;
    e = lookup(c, tenant, task, version);
    if (e) { /* another thread loaded it meanwhile */
        pd_patch_unref(p);
        p = e->p;
        e->used = ++c->clock;
    } else {
        if (c->n == c->cap) {
            int cap = c->cap ? 2 * c->cap : 64;
            struct centry *ne = realloc(c->e, sizeof(*ne) * (size_t)cap);
            if (!ne) {
                pthread_mutex_unlock(&c->mu);
                pd_patch_unref(p);
                return pd_fail(msg, PD_NOMEM, "out of memory");
            }
            c->e = ne;
            c->cap = cap;
        }
        e = &c->e[c->n++];
        memset(e, 0, sizeof(*e));
        memcpy(e->tenant, tenant, strlen(tenant) + 1);
        memcpy(e->task, task, strlen(task) + 1);
        e->version = version;
        e->p = p;
        e->bytes = pd_patch_bytes(p);
        e->used = ++c->clock;
        c->st.bytes += e->bytes;
        evict(c, p);
    }
    *out = pd_patch_ref(p);
    pthread_mutex_unlock(&c->mu);
    return PD_OK;
}

void pd_cache_pin(pd_cache *c, const char *tenant, const char *task, int pinned)
{
    pthread_mutex_lock(&c->mu);
    int at = -1;
    for (int i = 0; i < c->npins; i++)
        if (!strcmp(c->pins[i].task, task) && !strcmp(c->pins[i].tenant, tenant))
            at = i;
    if (pinned && at < 0 && pd_store_valid_name(tenant) && pd_store_valid_name(task)) {
        struct pin *np = realloc(c->pins, sizeof(*np) * (size_t)(c->npins + 1));
        if (np) {
            c->pins = np;
            memcpy(np[c->npins].tenant, tenant, strlen(tenant) + 1);
            memcpy(np[c->npins].task, task, strlen(task) + 1);
            c->npins++;
        }
    } else if (!pinned && at >= 0) {
        c->pins[at] = c->pins[--c->npins];
        evict(c, NULL);
    }
    pthread_mutex_unlock(&c->mu);
}

void pd_cache_forget(pd_cache *c, const char *tenant, const char *task)
{
    pthread_mutex_lock(&c->mu);
    for (int i = c->n - 1; i >= 0; i--)
        if (!strcmp(c->e[i].task, task) && !strcmp(c->e[i].tenant, tenant))
            drop(c, i);
    pthread_mutex_unlock(&c->mu);
}

int pd_cache_resident(pd_cache *c, const char *tenant, const char *task)
{
    int r = 0;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n && !r; i++)
        r = !strcmp(c->e[i].task, task) && !strcmp(c->e[i].tenant, tenant);
    pthread_mutex_unlock(&c->mu);
    return r;
}

void pd_cache_stats(pd_cache *c, struct pd_cache_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    out->entries = c->n;
    pthread_mutex_unlock(&c->mu);
}

#include "config.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../patches/store.h"

void pd_config_defaults(struct pd_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:8080");
    snprintf(c->store, sizeof(c->store), "store");
    snprintf(c->model, sizeof(c->model), "models/ssd_mobilenet_v1.safetensors");
    c->cache_bytes = (size_t)256 << 20;
    c->versions_kept = 10;
    c->workers = 0;
    c->batch = 8;
    c->rescan_ms = 2000;
    c->drain_s = 30;
    c->limits.image_bytes = (size_t)20 << 20;
    c->limits.patch_bytes = (size_t)64 << 20;
    c->limits.archive_bytes = (size_t)512 << 20;
    c->limits.max_pixels = 50u * 1000u * 1000u;
    c->limits.connections = 512;
    c->limits.per_ip = 64;
    c->limits.timeout_s = 30;
    c->limits.queue = 256;
}

void pd_config_fini(struct pd_config *c)
{
    free(c->tenants);
    c->tenants = NULL;
    c->ntenants = 0;
}

/* One JSON object's keys against a list; the first unknown one is named. */
static int only_keys(json_t *o, const char *where, const char *const *keys, char *msg)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        int ok = 0;
        for (int i = 0; keys[i] && !ok; i++)
            ok = !strcmp(k, keys[i]);
        if (!ok)
            return pd_fail(msg, PD_FORMAT, "unknown configuration key '%s%s%.64s'", where,
                           *where ? "." : "", k);
    }
    return PD_OK;
}

static int get_str(json_t *o, const char *key, char *dst, size_t len, char *msg)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return PD_OK;
    if (!json_is_string(v) || json_string_length(v) >= len || !json_string_length(v))
        return pd_fail(msg, PD_FORMAT, "configuration key '%s' must be a non-empty string", key);
    snprintf(dst, len, "%s", json_string_value(v));
    return PD_OK;
}

static int get_num(json_t *o, const char *where, const char *key, double lo, double hi, double *dst,
                   char *msg)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 1; /* absent: keep the default */
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi)
        return pd_fail(msg, PD_FORMAT, "configuration key '%s%s%s' must be a number in [%g, %g]",
                       where, *where ? "." : "", key, lo, hi);
    *dst = json_number_value(v);
    return PD_OK;
}

#define NUM(obj, where, key, lo, hi, field, type)                                                  \
    do {                                                                                           \
        double d_ = 0;                                                                             \
        int r_ = get_num(obj, where, key, lo, hi, &d_, msg);                                       \
        if (r_ < 0)                                                                                \
            return r_;                                                                             \
        if (r_ == 0)                                                                               \
            field = (type)d_;                                                                      \
    } while (0)

static int parse_key(json_t *k, struct pd_key *out, const char *tenant, char *msg)
{
    static const char *const keys[] = {"sha256", "role", NULL};
    if (!json_is_object(k))
        return pd_fail(msg, PD_FORMAT, "tenant '%s': a key must be an object", tenant);
    int err = only_keys(k, "tenants[].keys[]", keys, msg);
    if (err)
        return err;
    const char *sha = json_string_value(json_object_get(k, "sha256"));
    const char *role = json_string_value(json_object_get(k, "role"));
    if (sha && !strncmp(sha, "env:", 4)) {
        const char *name = sha + 4;
        sha = getenv(name);
        if (!sha)
            return pd_fail(msg, PD_FORMAT, "tenant '%s': environment variable %s is not set",
                           tenant, name);
    }
    if (!sha || strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
        return pd_fail(msg, PD_FORMAT,
                       "tenant '%s': key sha256 must be 64 lower-case hex digits (patchctl key "
                       "new prints one)",
                       tenant);
    memcpy(out->sha256, sha, 65);
    if (!role || (strcmp(role, "infer") && strcmp(role, "admin")))
        return pd_fail(msg, PD_FORMAT, "tenant '%s': key role must be \"infer\" or \"admin\"",
                       tenant);
    out->role = strcmp(role, "admin") ? PD_ROLE_INFER : PD_ROLE_ADMIN;
    return PD_OK;
}

static int parse_tenants(struct pd_config *c, json_t *arr, char *msg)
{
    static const char *const keys[] = {"name", "keys", "max_tasks", "max_jobs", "rps", NULL};
    if (!json_is_array(arr) || json_array_size(arr) > PD_MAX_TENANTS)
        return pd_fail(msg, PD_FORMAT, "configuration key 'tenants' must be an array of at most %d",
                       PD_MAX_TENANTS);
    struct pd_tenant *ts = calloc(json_array_size(arr) + 1, sizeof(*ts));
    if (!ts)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    free(c->tenants);
    c->tenants = ts;
    c->ntenants = 0;
    size_t i;
    json_t *t;
    json_array_foreach(arr, i, t)
    {
        if (!json_is_object(t))
            return pd_fail(msg, PD_FORMAT, "tenants[%zu] is not an object", i);
        int err = only_keys(t, "tenants[]", keys, msg);
        if (err)
            return err;
        struct pd_tenant *x = &ts[c->ntenants];
        const char *name = json_string_value(json_object_get(t, "name"));
        if (!name || !pd_store_valid_name(name))
            return pd_fail(msg, PD_FORMAT, "tenants[%zu]: name must match [a-z0-9][a-z0-9_-]{0,63}",
                           i);
        for (int j = 0; j < c->ntenants; j++)
            if (!strcmp(ts[j].name, name))
                return pd_fail(msg, PD_FORMAT, "tenant '%s' is configured twice", name);
        snprintf(x->name, sizeof(x->name), "%s", name);
        x->max_jobs = 1;
        NUM(t, "tenants[]", "max_tasks", 0, 1e6, x->max_tasks, int);
        NUM(t, "tenants[]", "max_jobs", 0, 64, x->max_jobs, int);
        NUM(t, "tenants[]", "rps", 0, 1e6, x->rps, double);
        json_t *keys_arr = json_object_get(t, "keys");
        if (!json_is_array(keys_arr) || json_array_size(keys_arr) == 0 ||
            json_array_size(keys_arr) > PD_MAX_KEYS)
            return pd_fail(msg, PD_FORMAT, "tenant '%s': keys must be an array of 1..%d keys", name,
                           PD_MAX_KEYS);
        size_t k;
        json_t *kv;
        json_array_foreach(keys_arr, k, kv)
        {
            if ((err = parse_key(kv, &x->keys[x->nkeys], name, msg)))
                return err;
            x->nkeys++;
        }
        c->ntenants++;
    }
    return PD_OK;
}

static int parse_obj(struct pd_config *c, json_t *o, char *msg)
{
    static const char *const top[] = {
        "listen",    "store",   "model",    "cache_bytes", "versions_kept", "workers", "batch",
        "rescan_ms", "drain_s", "insecure", "limits",      "tenants",       NULL};
    static const char *const lim[] = {"image_bytes", "patch_bytes", "archive_bytes",
                                      "max_pixels",  "connections", "per_ip",
                                      "timeout_s",   "queue",       NULL};
    if (!json_is_object(o))
        return pd_fail(msg, PD_FORMAT, "configuration is not a JSON object");
    int err = only_keys(o, "", top, msg);
    if (!err)
        err = get_str(o, "listen", c->listen, sizeof(c->listen), msg);
    if (!err)
        err = get_str(o, "store", c->store, sizeof(c->store), msg);
    if (!err)
        err = get_str(o, "model", c->model, sizeof(c->model), msg);
    if (err)
        return err;
    NUM(o, "", "cache_bytes", 0, 1e12, c->cache_bytes, size_t);
    NUM(o, "", "versions_kept", 0, 100000, c->versions_kept, int);
    NUM(o, "", "workers", 0, 256, c->workers, int);
    NUM(o, "", "batch", 1, 64, c->batch, int);
    NUM(o, "", "rescan_ms", 100, 3600000, c->rescan_ms, unsigned);
    NUM(o, "", "drain_s", 0, 3600, c->drain_s, unsigned);
    json_t *ins = json_object_get(o, "insecure");
    if (ins && !json_is_boolean(ins))
        return pd_fail(msg, PD_FORMAT, "configuration key 'insecure' must be true or false");
    if (ins)
        c->insecure = json_is_true(ins);
    json_t *l = json_object_get(o, "limits");
    if (l) {
        if (!json_is_object(l))
            return pd_fail(msg, PD_FORMAT, "configuration key 'limits' must be an object");
        if ((err = only_keys(l, "limits", lim, msg)))
            return err;
        struct pd_limits *x = &c->limits;
        NUM(l, "limits", "image_bytes", 1024, 1e10, x->image_bytes, size_t);
        NUM(l, "limits", "patch_bytes", 1024, 1e10, x->patch_bytes, size_t);
        NUM(l, "limits", "archive_bytes", 1024, 1e12, x->archive_bytes, size_t);
        NUM(l, "limits", "max_pixels", 1, 1e9, x->max_pixels, size_t);
        NUM(l, "limits", "connections", 1, 100000, x->connections, unsigned);
        NUM(l, "limits", "per_ip", 1, 100000, x->per_ip, unsigned);
        NUM(l, "limits", "timeout_s", 1, 3600, x->timeout_s, unsigned);
        NUM(l, "limits", "queue", 1, 1000000, x->queue, unsigned);
    }
    json_t *t = json_object_get(o, "tenants");
    if (t && (err = parse_tenants(c, t, msg)))
        return err;
    return PD_OK;
}

int pd_config_parse(struct pd_config *c, const char *json, size_t len, char *msg)
{
    json_error_t jerr;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o)
        return pd_fail(msg, PD_FORMAT, "configuration is not valid JSON: %s (line %d)", jerr.text,
                       jerr.line);
    int err = parse_obj(c, o, msg);
    json_decref(o);
    return err;
}

int pd_config_load(struct pd_config *c, const char *path, char *msg)
{
    uint8_t *buf;
    size_t len;
    int err = pd_read_file(path, (size_t)16 << 20, &buf, &len, msg);
    if (err)
        return err;
    char inner[PD_MSG_MAX];
    err = pd_config_parse(c, (const char *)buf, len, inner);
    free(buf);
    if (err)
        return pd_fail(msg, err, "%s: %s", path, inner);
    return PD_OK;
}

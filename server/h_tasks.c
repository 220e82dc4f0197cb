/* /tasks, /tasks/NAME, /tasks/NAME/patch, /tasks/NAME/activate */
#include "server.h"

#include "../core/st.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_faces(const struct req *r)
{
    return !strcmp(r->task, PD_FACES_TASK);
}

static json_t *faces_json(int brief)
{
    json_t *o = json_pack("{s:s, s:s, s:b, s:[s], s:b}", "task", PD_FACES_TASK, "kind", "detection",
                          "builtin", 1, "labels", "face", "loaded", 1);
    if (!brief)
        json_object_set_new(o, "versions", json_array());
    return o;
}

/* A stored version's metadata: read from its file, without loading the patch. */
static json_t *version_json(struct pd_server *s, const char *tenant, const char *task, int v)
{
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX];
    if (pd_store_read(s->store, tenant, task, v, &buf, &len, msg))
        return json_pack("{s:i, s:s}", "version", v, "error", msg);
    char sha[65];
    pd_sha256_hex(buf, len, sha);
    json_t *o = json_pack("{s:i, s:I, s:s}", "version", v, "bytes", (json_int_t)len, "sha256", sha);
    pd_st *st;
    if (pd_st_parse(buf, len, 0, &st, msg) == PD_OK) {
        const char *kind = pd_st_meta(st, "kind"), *parts = pd_st_meta(st, "parts");
        const char *labels = pd_st_meta(st, "labels"), *size = pd_st_meta(st, "input_size");
        const char *training = pd_st_meta(st, "training");
        if (kind)
            json_object_set_new(o, "kind", json_string(kind));
        if (parts)
            json_object_set_new(o, "parts", json_string(parts));
        if (size)
            json_object_set_new(o, "input_size", json_integer(atoi(size)));
        json_t *j = labels ? json_loads(labels, 0, NULL) : NULL;
        if (j)
            json_object_set_new(o, "labels", j);
        j = training ? json_loads(training, 0, NULL) : NULL;
        if (j)
            json_object_set_new(o, "training", j);
        pd_st_free(st);
    } else {
        json_object_set_new(o, "error", json_string(msg));
    }
    free(buf);
    return o;
}

enum MHD_Result h_tasks_list(struct req *r)
{
    struct pd_server *s = r->srv;
    char(*names)[PD_NAME_MAX + 1] = malloc(sizeof(*names) * 4096);
    if (!names)
        return reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory", "out of memory");
    int n = pd_store_tasks(s->store, r->tenant, names, 4096);
    json_t *arr = json_array();
    json_array_append_new(arr, faces_json(1));
    for (int i = 0; i < n; i++) {
        int active;
        if (pd_store_lookup(s->store, r->tenant, names[i], &active, NULL, 0) < 0)
            continue;
        json_t *v = version_json(s, r->tenant, names[i], active);
        json_t *o = json_pack("{s:s, s:i, s:b}", "task", names[i], "version", active, "loaded",
                              pd_cache_resident(s->cache, r->tenant, names[i]));
        json_object_set(o, "kind", json_object_get(v, "kind"));
        json_object_set(o, "labels", json_object_get(v, "labels"));
        json_decref(v);
        json_array_append_new(arr, o);
    }
    free(names);
    return reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "tasks", arr));
}

static enum MHD_Result no_task(struct req *r)
{
    return reply_error(r, MHD_HTTP_NOT_FOUND, "unknown_task", "no task '%s'", r->task);
}

enum MHD_Result h_task_get(struct req *r)
{
    struct pd_server *s = r->srv;
    if (is_faces(r))
        return reply_json(r, MHD_HTTP_OK, faces_json(0));
    int active, vs[1024];
    int n = pd_store_lookup(s->store, r->tenant, r->task, &active, vs, 1024);
    if (n < 0)
        return no_task(r);
    json_t *arr = json_array();
    for (int i = 0; i < n && i < 1024; i++)
        json_array_append_new(arr, version_json(s, r->tenant, r->task, vs[i]));
    r->version = active;
    return reply_json(r, MHD_HTTP_OK,
                      json_pack("{s:s, s:i, s:b, s:o}", "task", r->task, "active", active, "loaded",
                                pd_cache_resident(s->cache, r->tenant, r->task), "versions", arr));
}

enum MHD_Result h_task_put(struct req *r)
{
    struct pd_server *s = r->srv;
    if (is_faces(r))
        return reply_error(r, MHD_HTTP_CONFLICT, "builtin_task",
                           "'faces' is built in and cannot be replaced");
    if (r->len == 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "empty_body", "the body must be a patch file");
    char msg[PD_MSG_MAX];
    pd_patch *p;
    int err = pd_patch_parse(s->model, r->body, r->len, &p, msg);
    if (err)
        return reply_error(r, http_status_of(err), "invalid_patch", "%s", msg);
    pd_patch_unref(p);
    int max_tasks, max_jobs;
    auth_limits(s, r->tenant, &max_tasks, &max_jobs);
    if (max_tasks > 0 && pd_store_lookup(s->store, r->tenant, r->task, NULL, NULL, 0) < 0) {
        char(*names)[PD_NAME_MAX + 1] = malloc(sizeof(*names) * ((size_t)max_tasks + 1));
        int n = names ? pd_store_tasks(s->store, r->tenant, names, max_tasks + 1) : max_tasks;
        free(names);
        if (n >= max_tasks)
            return reply_error(r, MHD_HTTP_CONFLICT, "task_limit",
                               "tenant '%s' has reached its limit of %d tasks", r->tenant,
                               max_tasks);
    }
    int v;
    err = pd_store_put(s->store, r->tenant, r->task, r->body, r->len, &v, msg);
    if (err)
        return reply_err(r, err, msg);
    char sha[65];
    pd_sha256_hex(r->body, r->len, sha);
    r->version = v;
    return reply_json(r, MHD_HTTP_CREATED,
                      json_pack("{s:s, s:i, s:s, s:I}", "task", r->task, "version", v, "sha256",
                                sha, "bytes", (json_int_t)r->len));
}

enum MHD_Result h_task_delete(struct req *r)
{
    struct pd_server *s = r->srv;
    if (is_faces(r))
        return reply_error(r, MHD_HTTP_CONFLICT, "builtin_task", "'faces' cannot be deleted");
    char msg[PD_MSG_MAX];
    int err = pd_store_remove(s->store, r->tenant, r->task, msg);
    if (err == PD_NOTFOUND)
        return no_task(r);
    if (err)
        return reply_err(r, err, msg);
    pd_cache_forget(s->cache, r->tenant, r->task);
    return reply_json(r, MHD_HTTP_OK, json_pack("{s:s, s:b}", "task", r->task, "deleted", 1));
}

enum MHD_Result h_task_patch(struct req *r)
{
    struct pd_server *s = r->srv;
    if (is_faces(r))
        return reply_error(r, MHD_HTTP_NOT_FOUND, "builtin_task",
                           "'faces' is the backbone's own head and has no patch file");
    long v = 0;
    int active;
    if (query_int(r, "version", 1, PD_MAX_VERSIONS, &v) < 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "version must be a positive integer");
    if (pd_store_lookup(s->store, r->tenant, r->task, &active, NULL, 0) < 0)
        return no_task(r);
    if (!v)
        v = active;
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX];
    int err = pd_store_read(s->store, r->tenant, r->task, (int)v, &buf, &len, msg);
    if (err)
        return reply_err(r, err, msg);
    r->version = (int)v;
    enum MHD_Result ret = reply_bytes(r, MHD_HTTP_OK, "application/octet-stream", buf, len);
    free(buf);
    return ret;
}

enum MHD_Result h_task_activate(struct req *r)
{
    struct pd_server *s = r->srv;
    if (is_faces(r))
        return reply_error(r, MHD_HTTP_CONFLICT, "builtin_task", "'faces' has no versions");
    long v;
    int q = query_int(r, "version", 1, PD_MAX_VERSIONS, &v);
    if (q <= 0)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_parameter",
                           "version=N (a positive integer) is required");
    if (pd_store_lookup(s->store, r->tenant, r->task, NULL, NULL, 0) < 0)
        return no_task(r);
    char msg[PD_MSG_MAX];
    int err = pd_store_activate(s->store, r->tenant, r->task, (int)v, msg);
    if (err)
        return reply_err(r, err, msg);
    r->version = (int)v;
    return reply_json(r, MHD_HTTP_OK, json_pack("{s:s, s:i}", "task", r->task, "version", (int)v));
}

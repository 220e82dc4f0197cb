#include "jobs.h"

#include "../patches/patch.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

struct job {
    char id[33];
    struct pd_job_spec spec;
    enum pd_job_state state;
    atomic_int cancel;
    struct pd_dataset data;
    struct pd_train_progress progress;
    char error[PD_MSG_MAX];
    int version;                       /* stored version on success */
    double created, started, finished; /* wall-clock seconds */
    struct pd_jobs *owner;
    uv_thread_t th;
    int has_thread;
    struct job *next;
};

struct pd_jobs {
    const pd_model *m;
    pd_store *store;
    pd_cache *cache;
    uint64_t max_bytes;
    uv_mutex_t mu;
    uv_mutex_t run;   /* one training at a time */
    struct job *jobs; /* newest first */
    int stopping;
};

const char *pd_job_state_name(enum pd_job_state s)
{
    static const char *const n[] = {"checking",  "rejected", "queued",   "running",
                                    "succeeded", "failed",   "cancelled"};
    return n[s];
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int pd_jobs_new(const pd_model *m, pd_store *store, pd_cache *cache, uint64_t max_bytes,
                pd_jobs **out)
{
    pd_jobs *j = calloc(1, sizeof(*j));
    if (!j)
        return PD_NOMEM;
    j->m = m;
    j->store = store;
    j->cache = cache;
    j->max_bytes = max_bytes;
    uv_mutex_init(&j->mu);
    uv_mutex_init(&j->run);
    *out = j;
    return PD_OK;
}

static void on_progress(void *ctx, const struct pd_train_progress *p)
{
    struct job *jb = ctx;
    uv_mutex_lock(&jb->owner->mu);
    jb->progress = *p;
    uv_mutex_unlock(&jb->owner->mu);
}

static int is_cancelled(void *ctx)
{
    struct job *jb = ctx;
    return atomic_load(&jb->cancel) || jb->owner->stopping;
}

static void set_state(struct job *jb, enum pd_job_state s, const char *err)
{
    uv_mutex_lock(&jb->owner->mu);
    jb->state = s;
    if (err)
        snprintf(jb->error, sizeof(jb->error), "%s", err);
    if (s == PD_JOB_RUNNING)
        jb->started = wall();
    if (s >= PD_JOB_SUCCEEDED)
        jb->finished = wall();
    uv_mutex_unlock(&jb->owner->mu);
}

/* Trains and stores the patch; returns the error message's pd_err. */
static int run_training(struct job *jb, char *msg)
{
    pd_jobs *J = jb->owner;
    struct pd_train_opts o = {.kind = jb->spec.kind,
                              .epochs = jb->spec.epochs,
                              .seed = 1,
                              .progress = on_progress,
                              .cancelled = is_cancelled,
                              .ctx = jb};
    pd_patch *base = NULL;
    struct pd_params bp;
    int v;
    if (jb->spec.base[0]) {
        int err = pd_cache_get(J->cache, jb->spec.tenant, jb->spec.base, 0, &base, &v, msg);
        if (err)
            return err;
        const struct pd_patch_spec *s = pd_patch_spec(base);
        memset(&bp, 0, sizeof(bp));
        for (int l = 0; l < PD_NLAYERS; l++) {
            bp.scale[l] = (float *)s->scale[l];
            bp.bias[l] = (float *)s->bias[l];
            bp.kernel[l] = (float *)s->kernel[l];
            bp.weight[l] = (float *)s->weight[l];
        }
        o.base = &bp;
    }
    struct pd_train_result r;
    int err = pd_train(J->m, &jb->data, NULL, &o, &r, msg);
    pd_patch_unref(base);
    if (err)
        return err;
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_t *sum = json_pack("{s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:s}", "kind",
                            pd_train_kind_name(o.kind), "epochs", r.epochs, "steps", r.steps,
                            "images", r.images, "skipped", r.skipped, "train_accuracy", r.train_acc,
                            "seconds", r.seconds, "date", date, "job", jb->id);
    if (jb->spec.base[0])
        json_object_set_new(sum, "base", json_string(jb->spec.base));
    char *training = json_dumps(sum, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(sum);
    uint8_t *buf = NULL;
    size_t len = 0;
    err = pd_patch_from_params(J->m, &r.p, (const char *const *)jb->data.labels, jb->data.nclass,
                               224, training, &buf, &len, NULL, msg);
    if (!err && is_cancelled(jb))
        err = pd_fail(msg, PD_CANCELLED, "cancelled");
    if (!err)
        err = pd_store_put(J->store, jb->spec.tenant, jb->spec.task, buf, len, &jb->version, msg);
    free(buf);
    free(training);
    pd_params_free(&r.p);
    return err;
}

static void job_main(void *arg)
{
    struct job *jb = arg;
    pd_jobs *J = jb->owner;
    /* lowest CPU priority for this thread and the trainer threads it starts */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    char msg[PD_MSG_MAX];
    int err = pd_dataset_open_archive(jb->spec.archive, jb->spec.archive_len, J->max_bytes,
                                      &jb->data, msg);
    free(jb->spec.archive);
    jb->spec.archive = NULL;
    set_state(jb, err ? PD_JOB_REJECTED : PD_JOB_QUEUED, err ? msg : NULL);
    jb->spec.checked(jb->spec.ctx, err, msg, jb->id);
    if (err)
        return;
    uv_mutex_lock(&J->run);
    if (is_cancelled(jb)) {
        err = PD_CANCELLED;
        snprintf(msg, sizeof(msg), "cancelled");
    } else {
        set_state(jb, PD_JOB_RUNNING, NULL);
        err = run_training(jb, msg);
    }
    uv_mutex_unlock(&J->run);
    pd_dataset_fini(&jb->data);
    set_state(jb,
              !err                  ? PD_JOB_SUCCEEDED
              : err == PD_CANCELLED ? PD_JOB_CANCELLED
                                    : PD_JOB_FAILED,
              err ? msg : NULL);
}

int pd_jobs_submit(pd_jobs *J, struct pd_job_spec *spec, int max_jobs, char *msg)
{
    uv_mutex_lock(&J->mu);
    int active = 0;
    for (struct job *x = J->jobs; x; x = x->next)
        active += !strcmp(x->spec.tenant, spec->tenant) &&
                  (x->state == PD_JOB_CHECKING || x->state == PD_JOB_QUEUED ||
                   x->state == PD_JOB_RUNNING);
    if (max_jobs > 0 && active >= max_jobs) {
        uv_mutex_unlock(&J->mu);
        return pd_fail(msg, PD_TOOBIG, "tenant '%s' already has %d training jobs", spec->tenant,
                       active);
    }
    struct job *jb = calloc(1, sizeof(*jb));
    if (!jb || J->stopping) {
        uv_mutex_unlock(&J->mu);
        free(jb);
        return pd_fail(msg, PD_NOMEM, "cannot start a job now");
    }
    unsigned char raw[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof(raw), f) != sizeof(raw))
        for (int i = 0; i < 16; i++)
            raw[i] = (unsigned char)(rand() & 0xff);
    if (f)
        fclose(f);
    for (int i = 0; i < 16; i++)
        snprintf(jb->id + 2 * i, 3, "%02x", raw[i]);
    jb->spec = *spec;
    spec->archive = NULL; /* stolen */
    jb->owner = J;
    jb->created = wall();
    jb->state = PD_JOB_CHECKING;
    jb->progress.val_acc = jb->progress.probe_val_acc = -1;
    jb->next = J->jobs;
    J->jobs = jb;
    jb->has_thread = uv_thread_create(&jb->th, job_main, jb) == 0;
    if (!jb->has_thread) {
        J->jobs = jb->next;
        uv_mutex_unlock(&J->mu);
        free(jb->spec.archive);
        free(jb);
        return pd_fail(msg, PD_NOMEM, "cannot start a job thread");
    }
    uv_mutex_unlock(&J->mu);
    return PD_OK;
}

static json_t *job_json(struct job *jb)
{
    const struct pd_train_progress *p = &jb->progress;
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "id", jb->id, "task", jb->spec.task, "kind",
                          pd_train_kind_name(jb->spec.kind), "state", pd_job_state_name(jb->state));
    json_object_set_new(o, "phase",
                        json_string(jb->state == PD_JOB_RUNNING && p->phase
                                        ? p->phase
                                        : pd_job_state_name(jb->state)));
    json_object_set_new(o, "epoch", json_integer(p->epoch));
    json_object_set_new(o, "epochs", json_integer(p->epochs));
    json_object_set_new(o, "step", json_integer(p->step));
    json_object_set_new(o, "steps", json_integer(p->steps));
    json_object_set_new(o, "loss", json_real(p->loss));
    json_object_set_new(o, "train_accuracy", json_real(p->train_acc));
    json_object_set_new(o, "val_accuracy", p->val_acc >= 0 ? json_real(p->val_acc) : json_null());
    json_object_set_new(o, "images_per_s", json_real(p->images_per_s));
    json_object_set_new(o, "eta_s",
                        jb->state == PD_JOB_RUNNING ? json_real(p->eta_s) : json_null());
    json_object_set_new(o, "error", jb->error[0] ? json_string(jb->error) : json_null());
    json_object_set_new(o, "version", jb->version ? json_integer(jb->version) : json_null());
    if (jb->spec.base[0])
        json_object_set_new(o, "base", json_string(jb->spec.base));
    return o;
}

json_t *pd_jobs_list(pd_jobs *J, const char *tenant)
{
    json_t *a = json_array();
    uv_mutex_lock(&J->mu);
    for (struct job *x = J->jobs; x; x = x->next)
        if (!strcmp(x->spec.tenant, tenant) && x->state != PD_JOB_CHECKING &&
            x->state != PD_JOB_REJECTED)
            json_array_append_new(a, job_json(x));
    uv_mutex_unlock(&J->mu);
    return a;
}

json_t *pd_jobs_get(pd_jobs *J, const char *tenant, const char *id)
{
    json_t *o = NULL;
    uv_mutex_lock(&J->mu);
    for (struct job *x = J->jobs; x && !o; x = x->next)
        if (!strcmp(x->id, id) && !strcmp(x->spec.tenant, tenant) && x->state != PD_JOB_CHECKING &&
            x->state != PD_JOB_REJECTED)
            o = job_json(x);
    uv_mutex_unlock(&J->mu);
    return o;
}

int pd_jobs_cancel(pd_jobs *J, const char *tenant, const char *id)
{
    int r = PD_NOTFOUND;
    uv_mutex_lock(&J->mu);
    for (struct job *x = J->jobs; x; x = x->next)
        if (!strcmp(x->id, id) && !strcmp(x->spec.tenant, tenant) && x->state != PD_JOB_CHECKING &&
            x->state != PD_JOB_REJECTED) {
            if (x->state >= PD_JOB_SUCCEEDED) {
                r = PD_EXISTS;
            } else {
                atomic_store(&x->cancel, 1);
                r = PD_OK;
            }
            break;
        }
    uv_mutex_unlock(&J->mu);
    return r;
}

void pd_jobs_counts(pd_jobs *J, int counts[PD_JOB_CANCELLED + 1])
{
    memset(counts, 0, sizeof(int) * (PD_JOB_CANCELLED + 1));
    uv_mutex_lock(&J->mu);
    for (struct job *x = J->jobs; x; x = x->next)
        counts[x->state]++;
    uv_mutex_unlock(&J->mu);
}

void pd_jobs_free(pd_jobs *J)
{
    if (!J)
        return;
    uv_mutex_lock(&J->mu);
    J->stopping = 1;
    for (struct job *x = J->jobs; x; x = x->next)
        atomic_store(&x->cancel, 1);
    uv_mutex_unlock(&J->mu);
    struct job *x = J->jobs;
    while (x) {
        struct job *next = x->next;
        if (x->has_thread)
            uv_thread_join(&x->th);
        free(x->spec.archive);
        free(x);
        x = next;
    }
    uv_mutex_destroy(&J->run);
    uv_mutex_destroy(&J->mu);
    free(J);
}

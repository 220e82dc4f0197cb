#include "engine.h"

#include "../core/image.h"
#include "../core/ssd.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define SMALL_SIZE 224 /* classification inputs up to this side are batched */

struct worker {
    pd_engine *e;
    uv_thread_t th;
    pd_net *batch_net; /* (batch, 224) */
    pd_net *one_net;   /* (1, 512): faces and larger inputs */
    float *in;         /* (batch, 224, 224, 3) or (512, 512, 3), whichever is larger */
    float *probs;      /* batch * PD_PATCH_MAX_LABELS */
    float *scores, *boxes;
};

struct pd_engine {
    const pd_model *m;
    pd_cache *cache;
    int batch;
    size_t max_pixels;
    unsigned max_queue;
    uv_mutex_t mu;
    uv_cond_t cv;
    struct pd_infer_job *head, *tail;
    unsigned queued;
    int stopping;
    int nworkers; /* running threads */
    int nalloc;   /* worker structs */
    struct worker *w;
    struct pd_engine_stats st;
};

/* One job in flight inside a worker. */
struct slot {
    struct pd_infer_job *job;
    pd_patch *patch; /* NULL for faces */
    struct pd_image img;
    int size; /* input side; 0 = detection */
};

static void fail(struct pd_infer_job *j, int err, const char *msg)
{
    j->err = err;
    if (msg != j->msg)
        snprintf(j->msg, sizeof(j->msg), "%s", msg);
}

static int cmp_prob(const void *a, const void *b)
{
    const float *x = *(const float *const *)a, *y = *(const float *const *)b;
    return *x < *y ? 1 : *x > *y ? -1 : (x > y) - (x < y);
}

static void classify_result(struct slot *s, const float *p)
{
    const struct pd_patch_spec *sp = pd_patch_spec(s->patch);
    const int k = sp->nclass;
    const float **order = malloc(sizeof(*order) * (size_t)k);
    if (!order) {
        fail(s->job, PD_NOMEM, "out of memory");
        return;
    }
    for (int c = 0; c < k; c++)
        order[c] = p + c;
    qsort(order, (size_t)k, sizeof(*order), cmp_prob);
    json_t *preds = json_array();
    for (int c = 0; c < k && c < s->job->top_k; c++)
        json_array_append_new(preds, json_pack("{s:s, s:f}", "label", sp->labels[order[c] - p],
                                               "score", (double)*order[c]));
    free(order);
    s->job->result = json_pack("{s:s, s:i, s:o}", "task", s->job->task, "version",
                               s->job->used_version, "predictions", preds);
}

static void detect_one(struct worker *w, struct slot *s)
{
    struct pd_crop crop = pd_crop_pad(&s->img);
    pd_image_to_input(&s->img, &crop, PD_FACES_SIZE, w->in);
    const struct pd_task *t = s->patch ? pd_patch_task(s->patch) : NULL;
    pd_net_detect(w->one_net, w->in, t, w->scores, w->boxes);
    struct pd_detection dets[PD_SSD_MAX_OUT];
    int n = pd_ssd_select(w->scores, w->boxes, PD_ANCHORS, s->job->min_score, PD_SSD_IOU,
                          PD_SSD_MAX_OUT, s->img.w, s->img.h, PD_FACES_SIZE, dets);
    if (n < 0) {
        fail(s->job, n, "out of memory");
        return;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:[f,f,f,f], s:f, s:s}", "box", dets[i].box[0],
                                             dets[i].box[1], dets[i].box[2], dets[i].box[3],
                                             "score", dets[i].score, "label", "face"));
    s->job->batch = 1;
    /* the built-in task has no versions; a stored detection patch reports its own */
    if (s->patch)
        s->job->result = json_pack("{s:s, s:i, s:o}", "task", s->job->task, "version",
                                   s->job->used_version, "detections", arr);
    else
        s->job->result = json_pack("{s:s, s:o}", "task", s->job->task, "detections", arr);
    uv_mutex_lock(&w->e->mu);
    w->e->st.batches++;
    w->e->st.batch_hist[0]++;
    uv_mutex_unlock(&w->e->mu);
}

static int hist_bin(int n)
{
    int b = 0;
    while (b < 7 && (1 << b) < n)
        b++;
    return b;
}

/* Runs slots[0..n) (all classification, same size) in passes of at most the net's batch. */
static void classify_group(struct worker *w, struct slot **g, int n, int size)
{
    pd_net *net = size <= SMALL_SIZE ? w->batch_net : w->one_net;
    int step = size <= SMALL_SIZE ? w->e->batch : 1;
    for (int at = 0; at < n; at += step) {
        int b = n - at < step ? n - at : step;
        const struct pd_task *tasks[64];
        float *probs[64];
        for (int i = 0; i < b; i++) {
            struct slot *s = g[at + i];
            struct pd_crop crop = pd_crop_full(&s->img);
            pd_image_to_input(&s->img, &crop, size, w->in + (size_t)i * size * size * 3);
            tasks[i] = pd_patch_task(s->patch);
            probs[i] = w->probs + (size_t)i * PD_PATCH_MAX_LABELS;
        }
        int err = pd_net_classify(net, b, size, w->in, tasks, probs, NULL);
        for (int i = 0; i < b; i++) {
            g[at + i]->job->batch = b;
            if (err)
                fail(g[at + i]->job, err, "forward pass failed");
            else
                classify_result(g[at + i], probs[i]);
        }
        uv_mutex_lock(&w->e->mu);
        w->e->st.batches++;
        w->e->st.batch_hist[hist_bin(b)]++;
        uv_mutex_unlock(&w->e->mu);
    }
}

static void run_batch(struct worker *w, struct pd_infer_job **jobs, int n)
{
    pd_engine *e = w->e;
    struct slot slots[64];
    memset(slots, 0, sizeof(slots));
    /* resolve tasks and decode images */
    for (int i = 0; i < n; i++) {
        struct slot *s = &slots[i];
        struct pd_infer_job *j = jobs[i];
        s->job = j;
        j->err = PD_OK;
        if (strcmp(j->task, PD_FACES_TASK)) {
            int err = pd_cache_get(e->cache, j->tenant, j->task, j->version, &s->patch,
                                   &j->used_version, j->msg);
            if (err) {
                fail(j, err, j->msg);
                continue;
            }
            s->size =
                pd_patch_kind(s->patch) == PD_PATCH_DETECT ? 0 : pd_patch_task(s->patch)->size;
        } else if (j->version > 0) {
            fail(j, PD_NOTFOUND, "the built-in task 'faces' has no versions");
            continue;
        }
        int err = pd_image_decode_jpeg_scaled(j->image, j->image_len, e->max_pixels,
                                              s->size > 0 ? s->size : 0, &s->img, j->msg);
        if (err)
            fail(j, err, j->msg);
    }
    /* detection one by one; classification grouped by input size */
    struct slot *group[64];
    for (int i = 0; i < n; i++) {
        struct slot *s = &slots[i];
        if (s->job->err || s->size < 0)
            continue;
        if (s->size == 0) {
            detect_one(w, s);
            continue;
        }
        int size = s->size, ng = 0;
        for (int k = i; k < n; k++)
            if (!slots[k].job->err && slots[k].size == size) {
                group[ng++] = &slots[k];
                slots[k].size = -1; /* taken */
            }
        classify_group(w, group, ng, size);
    }
    for (int i = 0; i < n; i++) {
        pd_image_fini(&slots[i].img);
        pd_patch_unref(slots[i].patch);
        if (!slots[i].job->err && !slots[i].job->result)
            fail(slots[i].job, PD_NOMEM, "out of memory building the response");
        slots[i].job->done(slots[i].job);
    }
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    pd_engine *e = w->e;
    struct pd_infer_job *jobs[64];
    for (;;) {
        uv_mutex_lock(&e->mu);
        while (!e->head && !e->stopping)
            uv_cond_wait(&e->cv, &e->mu);
        if (!e->head && e->stopping) {
            uv_mutex_unlock(&e->mu);
            return;
        }
        int n = 0;
        while (e->head && n < e->batch) {
            jobs[n++] = e->head;
            e->head = e->head->next;
            e->queued--;
        }
        if (!e->head)
            e->tail = NULL;
        uv_mutex_unlock(&e->mu);
        run_batch(w, jobs, n);
    }
}

int pd_engine_new(const pd_model *m, pd_cache *cache, int workers, int batch, size_t max_pixels,
                  unsigned max_queue, pd_engine **out, char *msg)
{
    *out = NULL;
    if (workers < 1 || workers > 256 || batch < 1 || batch > 64)
        return pd_fail(msg, PD_RANGE, "workers %d or batch %d out of range", workers, batch);
    /* the workers are the parallelism: BLAS runs one thread inside each */
    openblas_set_num_threads(1);
    pd_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    e->m = m;
    e->cache = cache;
    e->batch = batch;
    e->max_pixels = max_pixels;
    e->max_queue = max_queue;
    uv_mutex_init(&e->mu);
    uv_cond_init(&e->cv);
    e->w = calloc((size_t)workers, sizeof(*e->w));
    if (!e->w) {
        free(e);
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    e->nalloc = workers;
    size_t in_floats = (size_t)batch * SMALL_SIZE * SMALL_SIZE * 3;
    if (in_floats < (size_t)PD_PATCH_MAX_SIZE * PD_PATCH_MAX_SIZE * 3)
        in_floats = (size_t)PD_PATCH_MAX_SIZE * PD_PATCH_MAX_SIZE * 3;
    int err = PD_OK;
    for (int i = 0; i < workers && !err; i++) {
        struct worker *w = &e->w[i];
        w->e = e;
        err = pd_net_new(m, batch, SMALL_SIZE, &w->batch_net, msg);
        if (!err)
            err = pd_net_new(m, 1, PD_PATCH_MAX_SIZE, &w->one_net, msg);
        w->in = pd_alloc_floats(in_floats);
        w->probs = pd_alloc_floats((size_t)batch * PD_PATCH_MAX_LABELS);
        w->scores = pd_alloc_floats(PD_ANCHORS);
        w->boxes = pd_alloc_floats(4 * PD_ANCHORS);
        if (!err && (!w->in || !w->probs || !w->scores || !w->boxes))
            err = pd_fail(msg, PD_NOMEM, "out of memory for worker scratch");
        if (!err && uv_thread_create(&w->th, worker_main, w))
            err = pd_fail(msg, PD_NOMEM, "cannot start a worker thread");
        if (!err)
            e->nworkers++;
    }
    if (err) {
        pd_engine_free(e);
        return err;
    }
    *out = e;
    return PD_OK;
}

void pd_engine_free(pd_engine *e)
{
    if (!e)
        return;
    uv_mutex_lock(&e->mu);
    e->stopping = 1;
    uv_cond_broadcast(&e->cv);
    uv_mutex_unlock(&e->mu);
    for (int i = 0; i < e->nworkers; i++)
        uv_thread_join(&e->w[i].th);
    for (int i = 0; i < e->nalloc; i++) {
        struct worker *w = &e->w[i];
        pd_net_free(w->batch_net);
        pd_net_free(w->one_net);
        free(w->in);
        free(w->probs);
        free(w->scores);
        free(w->boxes);
    }
    free(e->w);
    uv_cond_destroy(&e->cv);
    uv_mutex_destroy(&e->mu);
    free(e);
}

int pd_engine_submit(pd_engine *e, struct pd_infer_job *job)
{
    job->next = NULL;
    job->result = NULL;
    job->err = PD_OK;
    job->msg[0] = '\0';
    uv_mutex_lock(&e->mu);
    if (e->stopping || e->queued >= e->max_queue) {
        uv_mutex_unlock(&e->mu);
        return PD_TOOBIG;
    }
    if (e->tail)
        e->tail->next = job;
    else
        e->head = job;
    e->tail = job;
    e->queued++;
    uv_cond_signal(&e->cv);
    uv_mutex_unlock(&e->mu);
    return PD_OK;
}

void pd_engine_stats(pd_engine *e, struct pd_engine_stats *out)
{
    uv_mutex_lock(&e->mu);
    *out = e->st;
    out->queued = e->queued;
    uv_mutex_unlock(&e->mu);
}

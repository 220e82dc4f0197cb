#include "net.h"

#include "ops.h"
#include "st.h"

#include <cblas.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MODEL_MAX_BYTES ((size_t)1 << 30)
#define NSSD            8
#define NBOX            6

/* name, cin, cout, k, stride: MobileNetV1 as face-api builds it (stride 2 at dw 2, 4, 6, 12) */
static const struct pd_layer_info layer_info[PD_NLAYERS] = {
    {"conv0", 3, 32, 3, 2},    {"dw1", 32, 32, 3, 1},      {"pw1", 32, 64, 1, 1},
    {"dw2", 64, 64, 3, 2},     {"pw2", 64, 128, 1, 1},     {"dw3", 128, 128, 3, 1},
    {"pw3", 128, 128, 1, 1},   {"dw4", 128, 128, 3, 2},    {"pw4", 128, 256, 1, 1},
    {"dw5", 256, 256, 3, 1},   {"pw5", 256, 256, 1, 1},    {"dw6", 256, 256, 3, 2},
    {"pw6", 256, 512, 1, 1},   {"dw7", 512, 512, 3, 1},    {"pw7", 512, 512, 1, 1},
    {"dw8", 512, 512, 3, 1},   {"pw8", 512, 512, 1, 1},    {"dw9", 512, 512, 3, 1},
    {"pw9", 512, 512, 1, 1},   {"dw10", 512, 512, 3, 1},   {"pw10", 512, 512, 1, 1},
    {"dw11", 512, 512, 3, 1},  {"pw11", 512, 512, 1, 1},   {"dw12", 512, 512, 3, 2},
    {"pw12", 512, 1024, 1, 1}, {"dw13", 1024, 1024, 3, 1}, {"pw13", 1024, 1024, 1, 1},
};

/* SSD extra layers: 1x1 then 3x3 stride 2, alternating */
static const int ssd_cin[NSSD] = {1024, 256, 512, 128, 256, 128, 256, 64};
static const int ssd_cout[NSSD] = {256, 512, 128, 256, 128, 256, 64, 128};
/* box predictors: input channels and anchors per location */
static const int box_cin[NBOX] = {512, 1024, 512, 256, 256, 128};
static const int box_anchors[NBOX] = {3, 6, 6, 6, 6, 6};

const struct pd_layer_info *pd_layer_info(int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return &layer_info[l];
}

struct conv {
    float *w;  /* (k, k, cin, cout) */
    float *wp; /* 1x1 only, where pd_pw_packed_ok: w as pd_pw_pack lays it out; else NULL */
    float *b;  /* (cout) */
    int cin, cout, k, stride;
};

struct pd_model {
    float *w[PD_NLAYERS];     /* conv0 (3,3,3,32); dw (3,3,C); pw (cin,cout) */
    float *wp[PD_NLAYERS];    /* pw: w packed by pd_pw_pack where pd_pw_packed_ok, else NULL */
    float *scale[PD_NLAYERS]; /* effective per-channel scale */
    float *bias[PD_NLAYERS];  /* effective per-channel bias */
    float *gamma[PD_NLAYERS], *beta[PD_NLAYERS], *mean[PD_NLAYERS], *var[PD_NLAYERS];
    struct conv ssd[NSSD];
    struct conv box[NBOX], cls[NBOX];
    float *anchors; /* (PD_ANCHORS, 4) ymin, xmin, ymax, xmax */
    float *ones;    /* (PD_FEATURES) scale 1 */
    int64_t params;
    char sha256[65];
};

static int load_f32(const pd_st *st, const char *name, int ndim, const int64_t *shape, float **out,
                    char *msg)
{
    const struct pd_st_tensor *t = pd_st_find(st, name);
    if (!t)
        return pd_fail(msg, PD_FORMAT, "backbone lacks tensor '%s'", name);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    *out = pd_alloc_floats((size_t)n);
    if (!*out)
        return pd_fail(msg, PD_NOMEM, "out of memory for '%s'", name);
    return pd_st_read_f32(t, ndim, shape, *out, msg);
}

#define LOAD(name, out, ...)                                                                       \
    do {                                                                                           \
        const int64_t shp_[] = {__VA_ARGS__};                                                      \
        int e_ = load_f32(st, name, (int)(sizeof(shp_) / sizeof(shp_[0])), shp_, out, msg);        \
        if (e_)                                                                                    \
            return e_;                                                                             \
    } while (0)

/* A 1x1 layer's weights packed for pd_op_pw_packed_part, when this CPU runs it. */
static int pack(const float *w, int cin, int cout, float **wp, char *msg)
{
    if (!pd_pw_packed_ok(cin, cout))
        return PD_OK;
    *wp = pd_alloc_floats((size_t)cin * cout);
    if (!*wp)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    pd_pw_pack(w, cin, cout, *wp);
    return PD_OK;
}

static int load_conv(const pd_st *st, const char *wname, const char *bname, int k, int cin,
                     int cout, int stride, struct conv *c, char *msg)
{
    c->k = k, c->cin = cin, c->cout = cout, c->stride = stride;
    LOAD(wname, &c->w, k, k, cin, cout);
    LOAD(bname, &c->b, cout);
    return k == 1 ? pack(c->w, cin, cout, &c->wp, msg) : PD_OK;
}

static int load_all(pd_model *m, const pd_st *st, char *msg)
{
    char n1[96], n2[96];
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        int i = (l + 1) / 2;
        if (l == 0 || !pd_layer_is_dw(l)) {
            snprintf(n1, sizeof(n1), "MobilenetV1/Conv2d_%d_pointwise/weights", l / 2);
            snprintf(n2, sizeof(n2), "MobilenetV1/Conv2d_%d_pointwise/convolution_bn_offset",
                     l / 2);
            LOAD(n1, &m->w[l], li->k, li->k, li->cin, li->cout);
            LOAD(n2, &m->bias[l], li->cout);
            int err = l ? pack(m->w[l], li->cin, li->cout, &m->wp[l], msg) : PD_OK;
            if (err)
                return err;
            m->scale[l] = pd_alloc_floats((size_t)li->cout);
            if (!m->scale[l])
                return pd_fail(msg, PD_NOMEM, "out of memory");
            for (int c = 0; c < li->cout; c++)
                m->scale[l][c] = 1.0f;
            continue;
        }
        const int C = li->cin;
        snprintf(n1, sizeof(n1), "MobilenetV1/Conv2d_%d_depthwise/depthwise_weights", i);
        LOAD(n1, &m->w[l], 3, 3, C, 1);
        const char *bn[4] = {"gamma", "beta", "moving_mean", "moving_variance"};
        float **dst[4] = {&m->gamma[l], &m->beta[l], &m->mean[l], &m->var[l]};
        for (int j = 0; j < 4; j++) {
            snprintf(n1, sizeof(n1), "MobilenetV1/Conv2d_%d_depthwise/BatchNorm/%s", i, bn[j]);
            LOAD(n1, dst[j], C);
        }
        m->scale[l] = pd_alloc_floats((size_t)C);
        m->bias[l] = pd_alloc_floats((size_t)C);
        if (!m->scale[l] || !m->bias[l])
            return pd_fail(msg, PD_NOMEM, "out of memory");
        pd_model_fold_bn(m, l, m->gamma[l], m->beta[l], m->scale[l], m->bias[l]);
    }
    for (int j = 0; j < NSSD; j++) {
        snprintf(n1, sizeof(n1), "Prediction/Conv2d_%d_pointwise/weights", j);
        snprintf(n2, sizeof(n2), "Prediction/Conv2d_%d_pointwise/convolution_bn_offset", j);
        int err = load_conv(st, n1, n2, j % 2 ? 3 : 1, ssd_cin[j], ssd_cout[j], j % 2 ? 2 : 1,
                            &m->ssd[j], msg);
        if (err)
            return err;
    }
    for (int j = 0; j < NBOX; j++) {
        snprintf(n1, sizeof(n1), "Prediction/BoxPredictor_%d/BoxEncodingPredictor/weights", j);
        snprintf(n2, sizeof(n2), "Prediction/BoxPredictor_%d/BoxEncodingPredictor/biases", j);
        int err = load_conv(st, n1, n2, 1, box_cin[j], box_anchors[j] * 4, 1, &m->box[j], msg);
        if (err)
            return err;
        snprintf(n1, sizeof(n1), "Prediction/BoxPredictor_%d/ClassPredictor/weights", j);
        snprintf(n2, sizeof(n2), "Prediction/BoxPredictor_%d/ClassPredictor/biases", j);
        err = load_conv(st, n1, n2, 1, box_cin[j], box_anchors[j] * 3, 1, &m->cls[j], msg);
        if (err)
            return err;
    }
    LOAD("Output/extra_dim", &m->anchors, 1, PD_ANCHORS, 4);
    m->ones = pd_alloc_floats(PD_FEATURES);
    if (!m->ones)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    for (int c = 0; c < PD_FEATURES; c++)
        m->ones[c] = 1.0f;
    return PD_OK;
}

int pd_model_load(const char *path, pd_model **out, char *msg)
{
    *out = NULL;
    pd_st *st;
    int err = pd_st_open(path, MODEL_MAX_BYTES, &st, msg);
    if (err)
        return err;
    pd_model *m = calloc(1, sizeof(*m));
    if (!m) {
        pd_st_free(st);
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    const char *fmt = pd_st_meta(st, "format");
    if (!fmt || strcmp(fmt, "patchd-backbone"))
        err = pd_fail(msg, PD_FORMAT, "%s: not a patchd backbone (metadata format '%s')", path,
                      fmt ? fmt : "");
    if (!err)
        err = load_all(m, st, msg);
    if (!err) {
        size_t len;
        const uint8_t *bytes = pd_st_bytes(st, &len);
        pd_sha256_hex(bytes, len, m->sha256);
        for (int i = 0; i < pd_st_count(st); i++)
            m->params += pd_st_numel(pd_st_at(st, i));
    }
    pd_st_free(st);
    if (err) {
        pd_model_free(m);
        return err;
    }
    *out = m;
    return PD_OK;
}

static void free_conv(struct conv *c)
{
    free(c->w);
    free(c->wp);
    free(c->b);
}

void pd_model_free(pd_model *m)
{
    if (!m)
        return;
    for (int l = 0; l < PD_NLAYERS; l++) {
        free(m->w[l]);
        free(m->wp[l]);
        free(m->scale[l]);
        free(m->bias[l]);
        free(m->gamma[l]);
        free(m->beta[l]);
        free(m->mean[l]);
        free(m->var[l]);
    }
    for (int j = 0; j < NSSD; j++)
        free_conv(&m->ssd[j]);
    for (int j = 0; j < NBOX; j++) {
        free_conv(&m->box[j]);
        free_conv(&m->cls[j]);
    }
    free(m->anchors);
    free(m->ones);
    free(m);
}

const char *pd_model_sha256(const pd_model *m)
{
    return m->sha256;
}

const float *pd_model_scale(const pd_model *m, int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return m->scale[l];
}

const float *pd_model_bias(const pd_model *m, int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return m->bias[l];
}

const float *pd_model_dw(const pd_model *m, int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return pd_layer_is_dw(l) ? m->w[l] : NULL;
}

const float *pd_model_weights(const pd_model *m, int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return m->w[l];
}

const float *pd_model_packed(const pd_model *m, int l)
{
    PD_ASSERT(l >= 0 && l < PD_NLAYERS);
    return m->wp[l];
}

void pd_model_bn_stats(const pd_model *m, int l, const float **mean, const float **var)
{
    PD_ASSERT(l > 0 && l < PD_NLAYERS && pd_layer_is_dw(l));
    *mean = m->mean[l];
    *var = m->var[l];
}

const float *pd_model_gamma(const pd_model *m, int l)
{
    PD_ASSERT(l > 0 && l < PD_NLAYERS && pd_layer_is_dw(l));
    return m->gamma[l];
}

const float *pd_model_beta(const pd_model *m, int l)
{
    PD_ASSERT(l > 0 && l < PD_NLAYERS && pd_layer_is_dw(l));
    return m->beta[l];
}

void pd_model_fold_bn(const pd_model *m, int l, const float *gamma, const float *beta, float *scale,
                      float *bias)
{
    PD_ASSERT(l > 0 && l < PD_NLAYERS && pd_layer_is_dw(l));
    const int C = pd_layer_info(l)->cout;
    for (int c = 0; c < C; c++) {
        /* float32 throughout, as tfjs' batchNorm: scale * rsqrt(var + eps) */
        float inv = 1.0f / sqrtf(m->var[l][c] + (float)PD_BN_EPS);
        float s = gamma[c] * inv;
        scale[c] = s;
        bias[c] = beta[c] - m->mean[l][c] * s;
    }
}

int64_t pd_model_params(const pd_model *m)
{
    return m->params;
}

/* ---- forward ---- */

/* One layer's op with its arguments, to be split into parts (see pd_op_*_part). */
enum job_op { JOB_CONV, JOB_DW, JOB_PW };
struct job {
    enum job_op op;
    const float *x;
    int n, h, cin, k, s, cout;
    const float *wt;         /* conv, pw */
    const float *wp;         /* pw: wt packed (pd_pw_pack), or NULL */
    const float *const *wts; /* dw: per sample */
    const float *const *sc, *const *bi;
    enum pd_act act;
    float *y, *col;
    float *const *scratch; /* pw with wp: one PD_PW_SCRATCH_FLOATS buffer per part */
};

/*
 * The net's own helper threads (pd_net_set_threads): each layer is one job; the caller's thread
 * runs part 0 and helper i part i + 1, then waits for all. Helpers spin briefly on the job
 * counter between layers (a forward pass hands out a job every few hundred microseconds) and
 * sleep on the condition variable when nothing comes.
 */
struct pool {
    int parts; /* helpers + 1 */
    uv_thread_t th[PD_NET_MAX_THREADS];
    const struct job *job;
    atomic_uint gen;    /* bumped for each job */
    atomic_int pending; /* helpers still on the current job */
    atomic_int quit;
    uv_mutex_t mu;
    uv_cond_t cv;
};

struct pd_net {
    const pd_model *m;
    int max_batch, max_size;
    float *buf[2];                      /* ping-pong activations */
    float *col;                         /* im2col scratch */
    float *enc;                         /* (PD_ANCHORS, 4) box encodings */
    float *cls;                         /* (PD_ANCHORS, 3) class logits */
    const float **sc, **bi, **dw;       /* per-sample pointers, max_batch each */
    struct pool *pool;                  /* NULL: everything on the caller's thread */
    float *scratch[PD_NET_MAX_THREADS]; /* per part, PD_PW_SCRATCH_FLOATS each */
};

static void job_part(const struct job *j, int p, int parts)
{
    if (j->op == JOB_CONV) {
        const int ohw = pd_same_out(j->h, j->s) * pd_same_out(j->h, j->s);
        const int rows = j->n * ohw, r0 = (int)((int64_t)rows * p / parts);
        const int r1 = (int)((int64_t)rows * (p + 1) / parts);
        pd_op_conv_part(j->x, j->n, j->h, j->h, j->cin, j->wt, j->k, j->s, j->cout, j->sc, j->bi,
                        j->act, j->y, j->col + (size_t)r0 * j->k * j->k * j->cin, r0, r1);
    } else if (j->op == JOB_DW) {
        const int q = j->n * pd_same_out(j->h, j->s);
        pd_op_dw_part(j->x, j->n, j->h, j->h, j->cin, j->wts, j->s, j->sc, j->bi, j->act, j->y,
                      (int)((int64_t)q * p / parts), (int)((int64_t)q * (p + 1) / parts));
    } else {
        const int hw = j->h * j->h, rows = j->n * hw;
        int r0 = 0, r1 = rows, c0 = 0, c1 = j->cout;
        if (rows >= 64 * parts) { /* tall: split the rows */
            r0 = (int)((int64_t)rows * p / parts), r1 = (int)((int64_t)rows * (p + 1) / parts);
        } else { /* short and wide (the last layers): split the columns, in blocks of 16 */
            const int blocks = (j->cout + 15) / 16;
            c0 = blocks * p / parts * 16, c1 = blocks * (p + 1) / parts * 16;
            c1 = c1 > j->cout ? j->cout : c1;
        }
        if (r0 >= r1 || c0 >= c1)
            return;
        if (j->wp)
            pd_op_pw_packed_part(j->x, rows, hw, j->h, j->cin, j->wp, j->cout, j->sc, j->bi, j->act,
                                 j->y, r0, r1, c0, c1, j->scratch[p]);
        else
            pd_op_pw_part(j->x, rows, hw, j->cin, j->wt, j->cout, j->sc, j->bi, j->act, j->y, r0,
                          r1, c0, c1);
    }
}

/* One step of a spin wait: a pause, and every 1024th time the CPU to whoever else wants it (a
 * loaded machine must not see us spin on a thread that is not running). */
static void cpu_relax(int spin)
{
    if (spin % 1024 == 1023) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void helper_main(void *arg)
{
    struct pool *pl = ((void **)arg)[0];
    const int p = (int)(intptr_t)((void **)arg)[1];
    free(arg);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&pl->gen)) == seen && !atomic_load(&pl->quit) && spins < 200000)
            cpu_relax(spins++);
        if (g == seen && !atomic_load(&pl->quit)) {
            uv_mutex_lock(&pl->mu);
            while ((g = atomic_load(&pl->gen)) == seen && !atomic_load(&pl->quit))
                uv_cond_wait(&pl->cv, &pl->mu);
            uv_mutex_unlock(&pl->mu);
        }
        if (atomic_load(&pl->quit))
            return;
        seen = g;
        job_part(pl->job, p, pl->parts);
        atomic_fetch_sub(&pl->pending, 1);
    }
}

/* Runs one layer's op: split across the pool when there is one. */
static void run(pd_net *net, const struct job *j)
{
    struct pool *pl = net->pool;
    if (!pl) {
        job_part(j, 0, 1);
        return;
    }
    pl->job = j;
    atomic_store(&pl->pending, pl->parts - 1);
    atomic_fetch_add(&pl->gen, 1);
    uv_mutex_lock(&pl->mu);
    uv_cond_broadcast(&pl->cv);
    uv_mutex_unlock(&pl->mu);
    job_part(j, 0, pl->parts);
    for (int spins = 0; atomic_load(&pl->pending) > 0; spins++)
        cpu_relax(spins);
}

static void pool_free(struct pool *pl)
{
    if (!pl)
        return;
    atomic_store(&pl->quit, 1);
    uv_mutex_lock(&pl->mu);
    uv_cond_broadcast(&pl->cv);
    uv_mutex_unlock(&pl->mu);
    for (int i = 0; i < pl->parts - 1; i++)
        uv_thread_join(&pl->th[i]);
    uv_cond_destroy(&pl->cv);
    uv_mutex_destroy(&pl->mu);
    free(pl);
}

int pd_net_set_threads(pd_net *net, int threads, char *msg)
{
    if (threads < 1 || threads > PD_NET_MAX_THREADS)
        return pd_fail(msg, PD_RANGE, "threads %d out of range 1..%d", threads, PD_NET_MAX_THREADS);
    pool_free(net->pool);
    net->pool = NULL;
    for (int i = 1; i < threads; i++)
        if (!net->scratch[i] && !(net->scratch[i] = pd_alloc_floats(PD_PW_SCRATCH_FLOATS)))
            return pd_fail(msg, PD_NOMEM, "out of memory");
    if (threads == 1)
        return PD_OK;
    struct pool *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    if (uv_mutex_init(&pl->mu) || uv_cond_init(&pl->cv)) {
        free(pl);
        return pd_fail(msg, PD_IO, "cannot create a mutex");
    }
    for (int i = 0; i < threads - 1; i++) {
        void **arg = malloc(2 * sizeof(void *));
        if (arg) {
            arg[0] = pl;
            arg[1] = (void *)(intptr_t)(i + 1);
        }
        if (!arg || uv_thread_create(&pl->th[i], helper_main, arg)) {
            free(arg);
            pl->parts = i + 1;
            pool_free(pl);
            return pd_fail(msg, PD_IO, "cannot start a thread");
        }
        pl->parts = i + 2;
    }
    net->pool = pl;
    return PD_OK;
}

/* Largest activation (floats) and im2col scratch for n images of side `size`. */
static void plan(int n, int size, int faces, size_t *act, size_t *col)
{
    size_t a = 0, c = 0;
    int h = size;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        if (l == 0) {
            size_t cc = pd_conv_col_floats(n, h, h, 3, 3, 2);
            c = cc > c ? cc : c;
        }
        h = pd_same_out(h, li->stride);
        size_t v = (size_t)n * h * h * li->cout;
        a = v > a ? v : a;
    }
    for (int j = 0; faces && j < NSSD; j++) {
        int s = j % 2 ? 2 : 1;
        size_t cc = pd_conv_col_floats(n, h, h, ssd_cin[j], s == 2 ? 3 : 1, s);
        c = cc > c ? cc : c;
        h = pd_same_out(h, s);
        size_t v = (size_t)n * h * h * ssd_cout[j];
        a = v > a ? v : a;
    }
    *act = a > *act ? a : *act;
    *col = c > *col ? c : *col;
}

int pd_net_new(const pd_model *m, int max_batch, int max_size, pd_net **out, char *msg)
{
    *out = NULL;
    if (max_batch < 1 || max_batch > 4096 || max_size < 32 || max_size > 4096)
        return pd_fail(msg, PD_RANGE, "batch %d or size %d out of range", max_batch, max_size);
    pd_net *net = calloc(1, sizeof(*net));
    if (!net)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    net->m = m;
    net->max_batch = max_batch;
    net->max_size = max_size;
    size_t act = 0, col = 0;
    plan(max_batch, max_size, 0, &act, &col);
    if (max_size >= PD_FACES_SIZE)
        plan(1, PD_FACES_SIZE, 1, &act, &col);
    net->buf[0] = pd_alloc_floats(act);
    net->buf[1] = pd_alloc_floats(act);
    net->col = pd_alloc_floats(col);
    net->enc = pd_alloc_floats(PD_ANCHORS * 4);
    net->cls = pd_alloc_floats(PD_ANCHORS * 3);
    net->sc = calloc((size_t)max_batch, sizeof(float *));
    net->bi = calloc((size_t)max_batch, sizeof(float *));
    net->dw = calloc((size_t)max_batch, sizeof(float *));
    net->scratch[0] = pd_alloc_floats(PD_PW_SCRATCH_FLOATS);
    if (!net->buf[0] || !net->buf[1] || !net->col || !net->enc || !net->cls || !net->sc ||
        !net->bi || !net->dw || !net->scratch[0]) {
        pd_net_free(net);
        return pd_fail(msg, PD_NOMEM, "out of memory for activations (%zu floats)", act);
    }
    *out = net;
    return PD_OK;
}

void pd_net_free(pd_net *net)
{
    if (!net)
        return;
    pool_free(net->pool);
    free(net->buf[0]);
    free(net->buf[1]);
    free(net->col);
    free(net->enc);
    free(net->cls);
    free(net->sc);
    free(net->bi);
    free(net->dw);
    for (int i = 0; i < PD_NET_MAX_THREADS; i++)
        free(net->scratch[i]);
    free(net);
}

/*
 * Runs the 27 backbone layers on n images; returns the buffer holding pw13's output and its side.
 * After pw11, calls at11(net, x, side) when not NULL (the faces path reads conv 11 there).
 */
static float *backbone(pd_net *net, int n, int size, const float *in,
                       const struct pd_task *const *tasks, int *side,
                       void (*at11)(pd_net *, const float *, int))
{
    const pd_model *m = net->m;
    const float *x = in;
    int h = size, cur = 0;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        for (int i = 0; i < n; i++) {
            const struct pd_task *t = tasks ? tasks[i] : NULL;
            net->sc[i] = t && t->scale[l] ? t->scale[l] : m->scale[l];
            net->bi[i] = t && t->bias[l] ? t->bias[l] : m->bias[l];
            net->dw[i] = t && t->dw[l] ? t->dw[l] : m->w[l];
        }
        float *y = net->buf[cur];
        const int ho = pd_same_out(h, li->stride);
        if (pd_layer_is_dw(l)) {
            struct job j = {.op = JOB_DW,
                            .x = x,
                            .n = n,
                            .h = h,
                            .cin = li->cin,
                            .k = 3,
                            .s = li->stride,
                            .cout = li->cout,
                            .wts = net->dw,
                            .sc = net->sc,
                            .bi = net->bi,
                            .act = PD_ACT_RELU6,
                            .y = y};
            run(net, &j);
        } else {
            /* one GEMM per run of samples sharing the weights: the whole batch unless a `full`
             * patch brings its own */
            for (int i = 0, j; i < n; i = j) {
                const struct pd_task *t = tasks ? tasks[i] : NULL;
                const float *wt = t && t->w[l] ? t->w[l] : m->w[l];
                const float *wp = wt == m->w[l] ? m->wp[l] : NULL; /* a patch's own: unpacked */
                for (j = i + 1; j < n; j++) {
                    const struct pd_task *u = tasks ? tasks[j] : NULL;
                    if ((u && u->w[l] ? u->w[l] : m->w[l]) != wt)
                        break;
                }
                struct job jb = {.op = l == 0 ? JOB_CONV : JOB_PW,
                                 .x = x + (size_t)i * h * h * li->cin,
                                 .n = j - i,
                                 .h = h,
                                 .cin = li->cin,
                                 .k = li->k,
                                 .s = li->stride,
                                 .cout = li->cout,
                                 .wt = wt,
                                 .wp = wp,
                                 .sc = net->sc + i,
                                 .bi = net->bi + i,
                                 .act = PD_ACT_RELU6,
                                 .y = y + (size_t)i * ho * ho * li->cout,
                                 .col = net->col,
                                 .scratch = net->scratch};
                run(net, &jb);
            }
        }
        h = ho;
        x = y;
        cur ^= 1;
        if (l == pd_layer_pw(11) && at11)
            at11(net, x, h);
    }
    *side = h;
    return (float *)x;
}

int pd_net_classify(pd_net *net, int n, int size, const float *in,
                    const struct pd_task *const *tasks, float *const *probs, float *feats)
{
    if (n < 1 || n > net->max_batch || size < 32 || size > net->max_size)
        return PD_RANGE;
    for (int i = 0; i < n; i++)
        if (!tasks[i] || tasks[i]->nclass < 1 || !tasks[i]->head_w || !tasks[i]->head_b)
            return PD_INVAL;
    int h;
    const float *x = backbone(net, n, size, in, tasks, &h, NULL);
    float feat[PD_FEATURES];
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * h * h * PD_FEATURES;
        /* global average pool */
        for (int c = 0; c < PD_FEATURES; c++)
            feat[c] = 0.0f;
        for (int p = 0; p < h * h; p++)
            for (int c = 0; c < PD_FEATURES; c++)
                feat[c] += xi[(size_t)p * PD_FEATURES + c];
        for (int c = 0; c < PD_FEATURES; c++)
            feat[c] /= (float)(h * h);
        if (feats)
            memcpy(feats + (size_t)i * PD_FEATURES, feat, sizeof(feat));
        /* linear head and softmax */
        const struct pd_task *t = tasks[i];
        float *p = probs[i];
        cblas_sgemv(CblasRowMajor, CblasTrans, PD_FEATURES, t->nclass, 1.0f, t->head_w, t->nclass,
                    feat, 1, 0.0f, p, 1);
        float mx = -INFINITY;
        for (int k = 0; k < t->nclass; k++) {
            p[k] += t->head_b[k];
            mx = p[k] > mx ? p[k] : mx;
        }
        double sum = 0;
        for (int k = 0; k < t->nclass; k++) {
            p[k] = expf(p[k] - mx);
            sum += p[k];
        }
        for (int k = 0; k < t->nclass; k++)
            p[k] = (float)(p[k] / sum);
    }
    return PD_OK;
}

/* Box predictor j on a feature map x (side h): writes its anchors' encodings and logits. */
static void predict(pd_net *net, int j, const float *x, int h)
{
    static const int first[NBOX] = {0, 3072, 4608, 4992, 5088, 5112}; /* anchor offsets */
    const pd_model *m = net->m;
    const struct conv *b = &m->box[j], *c = &m->cls[j];
    PD_ASSERT(first[j] + h * h * box_anchors[j] <= PD_ANCHORS);
    const float *ones = m->ones, *bb = b->b, *cb = c->b;
    struct job jb = {.op = JOB_PW,
                     .x = x,
                     .n = 1,
                     .h = h,
                     .cin = b->cin,
                     .k = 1,
                     .s = 1,
                     .cout = b->cout,
                     .wt = b->w,
                     .sc = &ones,
                     .bi = &bb,
                     .act = PD_ACT_NONE,
                     .y = net->enc + (size_t)first[j] * 4};
    run(net, &jb);
    struct job jc = jb;
    jc.cin = c->cin, jc.cout = c->cout, jc.wt = c->w, jc.bi = &cb;
    jc.y = net->cls + (size_t)first[j] * 3;
    run(net, &jc);
}

static void predict_at11(pd_net *net, const float *x, int h)
{
    predict(net, 0, x, h);
}

int pd_net_detect(pd_net *net, const float *in, const struct pd_task *task, float *scores,
                  float *boxes)
{
    if (net->max_size < PD_FACES_SIZE)
        return PD_RANGE;
    const pd_model *m = net->m;
    const struct pd_task *tasks[1] = {task};
    int h;
    float *x = backbone(net, 1, PD_FACES_SIZE, in, task ? tasks : NULL, &h, predict_at11);
    PD_ASSERT(h == 16);
    predict(net, 1, x, h);
    /* SSD extra layers; predictors on layers 1, 3, 5, 7 */
    int cur = x == net->buf[0] ? 1 : 0;
    for (int j = 0; j < NSSD; j++) {
        const struct conv *c = &m->ssd[j];
        const float *sc = m->ones, *bi = c->b;
        float *y = net->buf[cur];
        struct job jb = {.op = c->wp ? JOB_PW : JOB_CONV,
                         .x = x,
                         .n = 1,
                         .h = h,
                         .cin = c->cin,
                         .k = c->k,
                         .s = c->stride,
                         .cout = c->cout,
                         .wt = c->w,
                         .wp = c->wp,
                         .sc = &sc,
                         .bi = &bi,
                         .act = PD_ACT_RELU6,
                         .y = y,
                         .col = net->col,
                         .scratch = net->scratch};
        run(net, &jb);
        h = pd_same_out(h, c->stride);
        x = y;
        cur ^= 1;
        if (j % 2)
            predict(net, 2 + j / 2, x, h);
    }
    /* decode: face-api's outputLayer, in float32 like tfjs */
    for (int a = 0; a < PD_ANCHORS; a++) {
        const float *an = m->anchors + 4 * a, *e = net->enc + 4 * a;
        float s0 = an[2] - an[0], s1 = an[3] - an[1];
        float c0 = an[0] + s0 / 2.0f, c1 = an[1] + s1 / 2.0f;
        float half0 = expf(e[2] / 5.0f) * s0 / 2.0f;
        float mid0 = e[0] / 10.0f * s0 + c0;
        float half1 = expf(e[3] / 5.0f) * s1 / 2.0f;
        float mid1 = e[1] / 10.0f * s1 + c1;
        boxes[4 * a + 0] = mid0 - half0;
        boxes[4 * a + 1] = mid1 - half1;
        boxes[4 * a + 2] = mid0 + half0;
        boxes[4 * a + 3] = mid1 + half1;
        scores[a] = 1.0f / (1.0f + expf(-net->cls[3 * a + 1]));
    }
    return PD_OK;
}

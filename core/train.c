#include "train.h"

#include "image.h"
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MICRO       8 /* images per forward/backward pass inside a worker */
#define MAX_THREAD  16
#define PROBE_ITER  600
#define PROBE_FOLDS 5

const char *pd_train_kind_name(enum pd_train_kind k)
{
    static const char *const n[] = {"logits", "sb", "sbdw", "full"};
    return n[k];
}

int pd_train_kind_parse(const char *s)
{
    for (int k = 0; k <= PD_TRAIN_FULL; k++)
        if (!strcmp(s, pd_train_kind_name((enum pd_train_kind)k)))
            return k;
    return -1;
}

void pd_params_free(struct pd_params *p)
{
    for (int l = 0; l < PD_NLAYERS; l++) {
        free(p->scale[l]);
        free(p->bias[l]);
        free(p->kernel[l]);
        free(p->weight[l]);
    }
    free(p->head_w);
    free(p->head_b);
    memset(p, 0, sizeof(*p));
}

/* splitmix64: the only randomness, seeded per use so that results do not depend on timing */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double unif(uint64_t *s)
{
    *s = mix(*s);
    return (double)(*s >> 11) / 9007199254740992.0;
}

/* Decodes one image into (size, size, 3); augmented (crop, flip) when rng is not NULL. */
static int load_image(const char *path, int size, uint64_t *rng, float *out)
{
    uint8_t *buf;
    size_t len;
    struct pd_image img;
    if (pd_read_file(path, (size_t)64 << 20, &buf, &len, NULL))
        return -1;
    /* augmented crops may zoom in: full size; otherwise as the server decodes */
    int err =
        pd_image_decode_jpeg_scaled(buf, len, PD_IMAGE_MAX_PIXELS, rng ? 0 : size, &img, NULL);
    free(buf);
    if (err)
        return -1;
    struct pd_crop c = pd_crop_full(&img);
    if (rng) {
        int cw = (int)(img.w * (0.6 + 0.4 * unif(rng)) + 0.5);
        int ch = (int)(img.h * (0.6 + 0.4 * unif(rng)) + 0.5);
        cw = cw < 1 ? 1 : cw > img.w ? img.w : cw;
        ch = ch < 1 ? 1 : ch > img.h ? img.h : ch;
        c.x = (int)((img.w - cw + 1) * unif(rng));
        c.y = (int)((img.h - ch + 1) * unif(rng));
        c.x = c.x > img.w - cw ? img.w - cw : c.x;
        c.y = c.y > img.h - ch ? img.h - ch : c.y;
        c.w = cw;
        c.h = ch;
        c.flip = unif(rng) < 0.5;
    }
    pd_image_to_input(&img, &c, size, out);
    pd_image_fini(&img);
    return 0;
}

/* ---- features and evaluation: forward passes with pd_net, split over threads ---- */

struct fwd_job {
    const pd_model *m;
    const struct pd_task *task;
    const struct pd_dataset *ds;
    int size, first, step;         /* images first, first + step, ... */
    float *feats;                  /* (n, 1024) or NULL */
    int *pred;                     /* (n) predicted class or -1 when unreadable */
    const struct pd_train_opts *o; /* for cancellation, or NULL */
    int err;
};

static void fwd_worker(void *arg)
{
    struct fwd_job *j = arg;
    pd_net *net;
    const int B = 8, S = j->size, K = j->task->nclass;
    if (pd_net_new(j->m, B, S, &net, NULL)) {
        j->err = PD_NOMEM;
        return;
    }
    float *in = pd_alloc_floats((size_t)B * S * S * 3), *probs = pd_alloc_floats((size_t)B * K);
    float *feats = pd_alloc_floats((size_t)B * PD_FEATURES);
    int idx[8];
    const struct pd_task *tasks[8];
    float *pp[8];
    for (int i = 0; i < B; i++)
        tasks[i] = j->task, pp[i] = probs + (size_t)i * K;
    int at = j->first;
    while (at < j->ds->n) {
        if (j->o && j->o->cancelled && j->o->cancelled(j->o->ctx)) {
            j->err = PD_CANCELLED;
            break;
        }
        int n = 0;
        for (; n < B && at < j->ds->n; at += j->step) {
            if (load_image(j->ds->paths[at], S, NULL, in + (size_t)n * S * S * 3)) {
                j->pred[at] = -1;
                continue;
            }
            idx[n++] = at;
        }
        if (!n)
            continue;
        pd_net_classify(net, n, S, in, tasks, pp, feats);
        for (int i = 0; i < n; i++) {
            int best = 0;
            for (int k = 1; k < K; k++)
                if (pp[i][k] > pp[i][best])
                    best = k;
            j->pred[idx[i]] = best;
            if (j->feats)
                memcpy(j->feats + (size_t)idx[i] * PD_FEATURES, feats + (size_t)i * PD_FEATURES,
                       PD_FEATURES * sizeof(float));
        }
    }
    free(in), free(probs), free(feats);
    pd_net_free(net);
}

/* Runs the task over the dataset: predictions (and features when feats is not NULL). */
static int forward_all(const pd_model *m, const struct pd_task *task, const struct pd_dataset *ds,
                       int size, int threads, float *feats, int *pred,
                       const struct pd_train_opts *o)
{
    struct fwd_job jobs[MAX_THREAD];
    uv_thread_t th[MAX_THREAD];
    threads = threads < 1 ? 1 : threads > MAX_THREAD ? MAX_THREAD : threads;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (struct fwd_job){m, task, ds, size, t, threads, feats, pred, o, 0};
        uv_thread_create(&th[t], fwd_worker, &jobs[t]);
    }
    int err = 0;
    for (int t = 0; t < threads; t++) {
        uv_thread_join(&th[t]);
        err = err ? err : jobs[t].err;
    }
    return err;
}

int pd_eval(const pd_model *m, const struct pd_task *task, const struct pd_dataset *ds,
            const int *map, int threads, struct pd_eval_result *out, char *msg)
{
    memset(out, 0, sizeof(*out));
    double t0 = pd_now();
    int K = task->nclass;
    int *pred = malloc(sizeof(int) * (size_t)(ds->n ? ds->n : 1));
    out->confusion = calloc((size_t)K * K, sizeof(int));
    if (!pred || !out->confusion) {
        free(pred);
        free(out->confusion);
        out->confusion = NULL;
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    openblas_set_num_threads(1);
    int err = forward_all(m, task, ds, task->size, threads, NULL, pred, NULL);
    out->nclass = K;
    for (int i = 0; i < ds->n && !err; i++) {
        if (pred[i] < 0) {
            out->skipped++;
            continue;
        }
        int truth = map ? map[ds->label[i]] : ds->label[i];
        out->n++;
        if (truth >= 0) {
            out->confusion[truth * K + pred[i]]++;
            out->correct += truth == pred[i];
        }
    }
    free(pred);
    out->seconds = pd_now() - t0;
    return err ? pd_fail(msg, err, "evaluation failed") : PD_OK;
}

/* ---- the linear probe ---- */

/* Softmax regression with L2 on standardised features (rows where ok[i]); writes the head
 * folded for raw features. */
static void probe_fit(const float *f, const int *y, const int *ok, int n, int K, double l2,
                      float *W, float *b)
{
    double *mu = calloc(PD_FEATURES, sizeof(double)), *sd = calloc(PD_FEATURES, sizeof(double));
    int cnt = 0;
    for (int i = 0; i < n; i++)
        if (ok[i]) {
            cnt++;
            for (int c = 0; c < PD_FEATURES; c++)
                mu[c] += f[(size_t)i * PD_FEATURES + c];
        }
    for (int c = 0; c < PD_FEATURES; c++)
        mu[c] /= cnt ? cnt : 1;
    for (int i = 0; i < n; i++)
        if (ok[i])
            for (int c = 0; c < PD_FEATURES; c++) {
                double d = f[(size_t)i * PD_FEATURES + c] - mu[c];
                sd[c] += d * d;
            }
    for (int c = 0; c < PD_FEATURES; c++)
        sd[c] = sqrt(sd[c] / (cnt ? cnt : 1)) + 1e-6;
    float *x = pd_alloc_floats((size_t)cnt * PD_FEATURES);
    int *yy = malloc(sizeof(int) * (size_t)(cnt + 1));
    for (int i = 0, r = 0; i < n; i++)
        if (ok[i]) {
            for (int c = 0; c < PD_FEATURES; c++)
                x[(size_t)r * PD_FEATURES + c] =
                    (float)((f[(size_t)i * PD_FEATURES + c] - mu[c]) / sd[c]);
            yy[r++] = y[i];
        }
    size_t nw = (size_t)PD_FEATURES * K;
    float *w = pd_alloc_floats(nw + K), *g = pd_alloc_floats(nw + K);
    float *m1 = pd_alloc_floats(nw + K), *m2 = pd_alloc_floats(nw + K);
    float *logit = pd_alloc_floats((size_t)cnt * K);
    for (int it = 1; it <= PROBE_ITER; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cnt, K, PD_FEATURES, 1.0f, x,
                    PD_FEATURES, w, K, 0.0f, logit, K);
        for (int i = 0; i < cnt; i++) {
            float *l = logit + (size_t)i * K, mx = -INFINITY;
            for (int k = 0; k < K; k++) {
                l[k] += w[nw + k];
                mx = l[k] > mx ? l[k] : mx;
            }
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (l[k] = expf(l[k] - mx));
            for (int k = 0; k < K; k++)
                l[k] = (float)((l[k] / s - (k == yy[i])) / cnt);
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, PD_FEATURES, K, cnt, 1.0f, x,
                    PD_FEATURES, logit, K, 0.0f, g, K);
        for (size_t k = 0; k < nw; k++)
            g[k] += (float)l2 * w[k];
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int i = 0; i < cnt; i++)
                s += logit[(size_t)i * K + k];
            g[nw + k] = (float)s;
        }
        double lr = 0.01 * 0.5 * (1 + cos(M_PI * (it - 1) / PROBE_ITER));
        double c1 = 1 - pow(0.9, it), c2 = 1 - pow(0.999, it);
        for (size_t k = 0; k < nw + K; k++) {
            m1[k] = 0.9f * m1[k] + 0.1f * g[k];
            m2[k] = 0.999f * m2[k] + 0.001f * g[k] * g[k];
            w[k] -= (float)(lr * (m1[k] / c1) / (sqrt(m2[k] / c2) + 1e-8));
        }
    }
    /* fold the standardisation: logits = f . (w / sd) + (b - sum mu / sd * w) */
    for (int k = 0; k < K; k++) {
        double bb = w[nw + k];
        for (int c = 0; c < PD_FEATURES; c++) {
            double wc = w[(size_t)c * K + k] / sd[c];
            W[(size_t)c * K + k] = (float)wc;
            bb -= mu[c] * wc;
        }
        b[k] = (float)bb;
    }
    free(mu), free(sd), free(x), free(yy), free(w), free(g), free(m1), free(m2), free(logit);
}

/*
 * The probe's L2 strength, chosen by PROBE_FOLDS-fold cross-validation on the training features
 * (a few thousand images make this a matter of seconds), then the probe refitted on all of them.
 * Small sets need far more regularisation than large ones; this picks it from the data alone.
 */
static double probe_cv(const float *f, const int *y, const int *ok, int n, int K, float *W,
                       float *b)
{
    static const double grid[] = {1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    int *mask = malloc(sizeof(int) * (size_t)n);
    double best = grid[0];
    int best_correct = -1;
    for (size_t g = 0; mask && g < sizeof(grid) / sizeof(grid[0]); g++) {
        int correct = 0;
        for (int fold = 0; fold < PROBE_FOLDS; fold++) {
            for (int i = 0; i < n; i++)
                mask[i] = ok[i] && i % PROBE_FOLDS != fold;
            probe_fit(f, y, mask, n, K, grid[g], W, b);
            for (int i = fold; i < n; i += PROBE_FOLDS) {
                if (!ok[i])
                    continue;
                const float *x = f + (size_t)i * PD_FEATURES;
                int arg = 0;
                double bestv = -INFINITY;
                for (int k = 0; k < K; k++) {
                    double v = b[k];
                    for (int c = 0; c < PD_FEATURES; c++)
                        v += (double)x[c] * W[(size_t)c * K + k];
                    if (v > bestv)
                        bestv = v, arg = k;
                }
                correct += arg == y[i];
            }
        }
        if (correct > best_correct)
            best_correct = correct, best = grid[g];
    }
    free(mask);
    probe_fit(f, y, ok, n, K, best, W, b);
    return best;
}

/* ---- fine-tuning ---- */

struct trainer;

struct worker {
    struct trainer *t;
    float *z[PD_NLAYERS];                   /* pre-activations of one micro-batch */
    float *a, *b, *c, *col;                 /* activation-sized scratch, im2col */
    float *feat, *dlog;                     /* (MICRO, 1024), (MICRO, K) */
    float *gs[PD_NLAYERS], *gb[PD_NLAYERS]; /* effective scale/bias gradients */
    float *gk[PD_NLAYERS], *gw[PD_NLAYERS], *ghw, *ghb;
    /* this step */
    const float *in;
    const int *y;
    int n;
    double loss;
    int correct;
};

struct trainer {
    const pd_model *m;
    int kind, K, S, B, T;
    /* trainable parameters, raw (as stored), with Adam moments */
    float *s[PD_NLAYERS], *b[PD_NLAYERS], *k[PD_NLAYERS], *hw, *hb;
    float *ms[PD_NLAYERS], *vs[PD_NLAYERS], *mb[PD_NLAYERS], *vb[PD_NLAYERS];
    float *mk[PD_NLAYERS], *vk[PD_NLAYERS], *mhw, *vhw, *mhb, *vhb;
    float *wt[PD_NLAYERS], *mw[PD_NLAYERS], *vw[PD_NLAYERS]; /* conv0/pointwise weights (full) */
    float *es[PD_NLAYERS], *eb[PD_NLAYERS]; /* effective scale/bias for the forward pass */
    const float *kern[PD_NLAYERS];          /* kernels for the forward pass */
    const float *wts[PD_NLAYERS];           /* conv0/pointwise weights for the forward pass */
    float *ones, *zeros;
    size_t act_max; /* floats of the largest activation of one image */
    int side[PD_NLAYERS + 1];
    struct worker w[MAX_THREAD];
};

static void refresh_effective(struct trainer *t)
{
    for (int l = 0; l < PD_NLAYERS; l++) {
        if (pd_layer_is_dw(l))
            pd_model_fold_bn(t->m, l, t->s[l], t->b[l], t->es[l], t->eb[l]);
        else
            memcpy(t->es[l], t->s[l], sizeof(float) * (size_t)pd_layer_info(l)->cout),
                memcpy(t->eb[l], t->b[l], sizeof(float) * (size_t)pd_layer_info(l)->cout);
        t->kern[l] = t->k[l] ? t->k[l] : pd_model_dw(t->m, l);
        t->wts[l] = t->wt[l] ? t->wt[l] : pd_model_weights(t->m, l);
    }
}

static void worker_step(void *arg)
{
    struct worker *w = arg;
    struct trainer *t = w->t;
    const int S = t->S, K = t->K;
    const float *ones[MICRO], *zeros[MICRO];
    for (int i = 0; i < MICRO; i++)
        ones[i] = t->ones, zeros[i] = t->zeros;
    for (int at = 0; at < w->n; at += MICRO) {
        const int n = w->n - at < MICRO ? w->n - at : MICRO;
        const float *x = w->in + (size_t)at * S * S * 3;
        /* forward, keeping each layer's pre-activation */
        float *ybuf[2] = {w->a, w->b};
        int h = S;
        for (int l = 0; l < PD_NLAYERS; l++) {
            const struct pd_layer_info *li = pd_layer_info(l);
            float *z = w->z[l];
            if (l == 0)
                pd_op_conv(x, n, h, h, 3, t->wts[0], 3, 2, li->cout, ones, zeros, PD_ACT_NONE, z,
                           w->col);
            else if (pd_layer_is_dw(l)) {
                const float *kk[MICRO];
                for (int i = 0; i < n; i++)
                    kk[i] = t->kern[l];
                pd_op_dw(x, n, h, h, li->cin, kk, li->stride, ones, zeros, PD_ACT_NONE, z);
            } else
                pd_op_pw(x, n, h, h, li->cin, t->wts[l], li->cout, ones, zeros, PD_ACT_NONE, z);
            h = t->side[l + 1];
            float *y = ybuf[l % 2];
            size_t rows = (size_t)n * h * h;
            memcpy(y, z, sizeof(float) * rows * li->cout);
            pd_scale_bias_act(y, rows, li->cout, t->es[l], t->eb[l], PD_ACT_RELU6);
            x = y;
        }
        /* pool, head, softmax cross-entropy */
        const int hw = h * h;
        for (int i = 0; i < n; i++) {
            float *f = w->feat + (size_t)i * PD_FEATURES;
            memset(f, 0, PD_FEATURES * sizeof(float));
            for (int p = 0; p < hw; p++)
                for (int c = 0; c < PD_FEATURES; c++)
                    f[c] += x[((size_t)i * hw + p) * PD_FEATURES + c];
            for (int c = 0; c < PD_FEATURES; c++)
                f[c] /= (float)hw;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, K, PD_FEATURES, 1.0f, w->feat,
                    PD_FEATURES, t->hw, K, 0.0f, w->dlog, K);
        for (int i = 0; i < n; i++) {
            float *l = w->dlog + (size_t)i * K, mx = -INFINITY;
            int yi = w->y[at + i], arg = 0;
            for (int k = 0; k < K; k++) {
                l[k] += t->hb[k];
                if (l[k] > mx)
                    mx = l[k], arg = k;
            }
            double sum = 0;
            for (int k = 0; k < K; k++)
                sum += exp(l[k] - mx);
            w->loss += log(sum) - (l[yi] - mx);
            w->correct += arg == yi;
            for (int k = 0; k < K; k++)
                l[k] = (float)((exp(l[k] - mx) / sum - (k == yi)) / t->B);
        }
        /* head gradients; then into the features */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, PD_FEATURES, K, n, 1.0f, w->feat,
                    PD_FEATURES, w->dlog, K, 1.0f, w->ghw, K);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < K; k++)
                w->ghb[k] += w->dlog[(size_t)i * K + k];
        if (t->kind == PD_TRAIN_LOGITS)
            continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, PD_FEATURES, K, 1.0f, w->dlog, K,
                    t->hw, K, 0.0f, w->feat, PD_FEATURES);
        float *dy = w->c, *dx = w->a, *xprev = w->b;
        for (int i = 0; i < n; i++)
            for (int p = 0; p < hw; p++)
                for (int c = 0; c < PD_FEATURES; c++)
                    dy[((size_t)i * hw + p) * PD_FEATURES + c] =
                        w->feat[(size_t)i * PD_FEATURES + c] / (float)hw;
        /* backward through the layers, down to conv0's scale and bias */
        for (int l = PD_NLAYERS - 1; l >= 0; l--) {
            const struct pd_layer_info *li = pd_layer_info(l);
            const int ho = t->side[l + 1], hi = t->side[l];
            size_t rows = (size_t)n * ho * ho;
            pd_scale_bias_act_backward(w->z[l], dy, rows, li->cout, t->es[l], t->eb[l],
                                       PD_ACT_RELU6, dy, w->gs[l], w->gb[l]);
            if (l == 0) {
                if (w->gw[0])
                    pd_op_conv_backward_w(w->in + (size_t)at * S * S * 3, n, S, S, 3, 3, 2,
                                          li->cout, dy, w->gw[0], w->col);
                break;
            }
            float *gk = pd_layer_is_dw(l) ? w->gk[l] : w->gw[l];
            if (gk) { /* the kernel or weight gradient needs the layer's input */
                const struct pd_layer_info *lp = pd_layer_info(l - 1);
                size_t prow = (size_t)n * hi * hi;
                memcpy(xprev, w->z[l - 1], sizeof(float) * prow * lp->cout);
                pd_scale_bias_act(xprev, prow, lp->cout, t->es[l - 1], t->eb[l - 1], PD_ACT_RELU6);
            }
            if (pd_layer_is_dw(l))
                for (int i = 0; i < n; i++)
                    pd_op_dw_backward(xprev + (size_t)i * hi * hi * li->cin, hi, hi, li->cin,
                                      t->kern[l], li->stride, dy + (size_t)i * ho * ho * li->cout,
                                      dx + (size_t)i * hi * hi * li->cin, gk);
            else
                pd_op_pw_backward(gk ? xprev : NULL, n * hi * hi, li->cin, t->wts[l], li->cout, dy,
                                  dx, gk);
            float *tmp = dy;
            dy = dx;
            dx = tmp;
        }
    }
}

static float *zalloc(size_t n, int *fail)
{
    float *p = pd_alloc_floats(n);
    *fail |= !p;
    return p;
}

static void trainer_free(struct trainer *t)
{
    for (int l = 0; l < PD_NLAYERS; l++) {
        free(t->s[l]), free(t->b[l]), free(t->k[l]), free(t->ms[l]), free(t->vs[l]);
        free(t->mb[l]), free(t->vb[l]), free(t->mk[l]), free(t->vk[l]), free(t->es[l]);
        free(t->eb[l]), free(t->wt[l]), free(t->mw[l]), free(t->vw[l]);
    }
    free(t->hw), free(t->hb), free(t->mhw), free(t->vhw), free(t->mhb), free(t->vhb);
    free(t->ones), free(t->zeros);
    for (int i = 0; i < t->T; i++) {
        struct worker *w = &t->w[i];
        for (int l = 0; l < PD_NLAYERS; l++)
            free(w->z[l]), free(w->gs[l]), free(w->gb[l]), free(w->gk[l]), free(w->gw[l]);
        free(w->a), free(w->b), free(w->c), free(w->col), free(w->feat), free(w->dlog);
        free(w->ghw), free(w->ghb);
    }
}

/* Copies n floats of src (or the fallback) into a new array. */
static float *dup_or(const float *src, const float *fallback, size_t n, int *fail)
{
    float *p = zalloc(n, fail);
    if (p)
        memcpy(p, src ? src : fallback, n * sizeof(float));
    return p;
}

static int trainer_init(struct trainer *t, const pd_model *m, const struct pd_train_opts *o, int K,
                        const float *head_w, const float *head_b)
{
    memset(t, 0, sizeof(*t));
    t->m = m;
    t->kind = o->kind;
    t->K = K;
    t->S = o->size;
    t->B = o->batch;
    t->T = o->threads;
    int fail = 0;
    const struct pd_params *base = o->base;
    t->side[0] = t->S;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        size_t c = (size_t)li->cout;
        int dw = pd_layer_is_dw(l);
        t->side[l + 1] = pd_same_out(t->side[l], li->stride);
        size_t a = (size_t)t->side[l + 1] * t->side[l + 1] * c;
        t->act_max = a > t->act_max ? a : t->act_max;
        const float *s0 = dw ? pd_model_gamma(m, l) : pd_model_scale(m, l);
        const float *b0 = dw ? pd_model_beta(m, l) : pd_model_bias(m, l);
        t->s[l] = dup_or(base ? base->scale[l] : NULL, s0, c, &fail);
        t->b[l] = dup_or(base ? base->bias[l] : NULL, b0, c, &fail);
        t->es[l] = zalloc(c, &fail);
        t->eb[l] = zalloc(c, &fail);
        t->ms[l] = zalloc(c, &fail), t->vs[l] = zalloc(c, &fail);
        t->mb[l] = zalloc(c, &fail), t->vb[l] = zalloc(c, &fail);
        if (dw && (o->kind >= PD_TRAIN_SBDW || (base && base->kernel[l]))) {
            t->k[l] = dup_or(base ? base->kernel[l] : NULL, pd_model_dw(m, l), 9 * c, &fail);
            t->mk[l] = zalloc(9 * c, &fail), t->vk[l] = zalloc(9 * c, &fail);
        }
        if (!dw && (o->kind == PD_TRAIN_FULL || (base && base->weight[l]))) {
            size_t nw = (size_t)li->k * li->k * li->cin * c;
            t->wt[l] = dup_or(base ? base->weight[l] : NULL, pd_model_weights(m, l), nw, &fail);
            t->mw[l] = zalloc(nw, &fail), t->vw[l] = zalloc(nw, &fail);
        }
    }
    size_t nw = (size_t)PD_FEATURES * K;
    t->hw = dup_or(head_w, head_w, nw, &fail);
    t->hb = dup_or(head_b, head_b, (size_t)K, &fail);
    t->mhw = zalloc(nw, &fail), t->vhw = zalloc(nw, &fail);
    t->mhb = zalloc((size_t)K, &fail), t->vhb = zalloc((size_t)K, &fail);
    t->ones = zalloc(PD_FEATURES, &fail);
    t->zeros = zalloc(PD_FEATURES, &fail);
    for (int c = 0; !fail && c < PD_FEATURES; c++)
        t->ones[c] = 1.0f;
    for (int i = 0; i < t->T; i++) {
        struct worker *w = &t->w[i];
        w->t = t;
        for (int l = 0; l < PD_NLAYERS; l++) {
            size_t c = (size_t)pd_layer_info(l)->cout;
            w->z[l] = zalloc((size_t)MICRO * t->side[l + 1] * t->side[l + 1] * c, &fail);
            w->gs[l] = zalloc(c, &fail), w->gb[l] = zalloc(c, &fail);
            if (t->k[l] && t->kind >= PD_TRAIN_SBDW)
                w->gk[l] = zalloc(9 * c, &fail);
            if (t->wt[l] && t->kind == PD_TRAIN_FULL)
                w->gw[l] = zalloc((size_t)pd_layer_info(l)->k * pd_layer_info(l)->k *
                                      pd_layer_info(l)->cin * c,
                                  &fail);
        }
        w->a = zalloc(MICRO * t->act_max, &fail);
        w->b = zalloc(MICRO * t->act_max, &fail);
        w->c = zalloc(MICRO * t->act_max, &fail);
        w->col = zalloc(pd_conv_col_floats(MICRO, t->S, t->S, 3, 3, 2), &fail);
        w->feat = zalloc((size_t)MICRO * PD_FEATURES, &fail);
        w->dlog = zalloc((size_t)MICRO * K, &fail);
        w->ghw = zalloc(nw, &fail), w->ghb = zalloc((size_t)K, &fail);
    }
    if (fail)
        trainer_free(t);
    return fail ? PD_NOMEM : PD_OK;
}

static void adam(float *p, float *m1, float *m2, const float *g, size_t n, double lr, int step)
{
    double c1 = 1 - pow(0.9, step), c2 = 1 - pow(0.999, step);
    for (size_t i = 0; i < n; i++) {
        m1[i] = 0.9f * m1[i] + 0.1f * g[i];
        m2[i] = 0.999f * m2[i] + 0.001f * g[i] * g[i];
        p[i] -= (float)(lr * (m1[i] / c1) / (sqrt(m2[i] / c2) + 1e-8));
    }
}

/* Reduces the workers' gradients (in worker order: deterministic) and takes an Adam step. */
static void optimise(struct trainer *t, double lr, int step)
{
    const int K = t->K;
    size_t nw = (size_t)PD_FEATURES * K;
    size_t most = (size_t)PD_FEATURES * PD_FEATURES; /* pw13's weights, the largest tensor */
    float *g = pd_alloc_floats(nw > most ? nw : most);
    float *gb = pd_alloc_floats(PD_FEATURES);
#define REDUCE(field, len)                                                                         \
    do {                                                                                           \
        memset(g, 0, sizeof(float) * (len));                                                       \
        for (int i = 0; i < t->T; i++)                                                             \
            for (size_t j = 0; j < (len); j++)                                                     \
                g[j] += t->w[i].field[j], t->w[i].field[j] = 0;                                    \
    } while (0)
    REDUCE(ghw, nw);
    adam(t->hw, t->mhw, t->vhw, g, nw, lr, step);
    REDUCE(ghb, (size_t)K);
    adam(t->hb, t->mhb, t->vhb, g, (size_t)K, lr, step);
    for (int l = 0; l < PD_NLAYERS && t->kind != PD_TRAIN_LOGITS; l++) {
        size_t c = (size_t)pd_layer_info(l)->cout;
        REDUCE(gb[l], c);
        memcpy(gb, g, sizeof(float) * c);
        REDUCE(gs[l], c);
        if (pd_layer_is_dw(l)) {
            /* s = gamma * inv and b = beta - mean * s, inv = 1 / sqrt(var + eps): so
             * dL/dgamma = inv * (dL/ds - mean * dL/db) and dL/dbeta = dL/db */
            const float *mean, *var;
            pd_model_bn_stats(t->m, l, &mean, &var);
            for (size_t j = 0; j < c; j++) {
                float inv = 1.0f / sqrtf(var[j] + (float)PD_BN_EPS);
                g[j] = inv * (g[j] - mean[j] * gb[j]);
            }
        }
        adam(t->s[l], t->ms[l], t->vs[l], g, c, lr, step);
        adam(t->b[l], t->mb[l], t->vb[l], gb, c, lr, step);
        if (t->w[0].gk[l]) {
            REDUCE(gk[l], 9 * c);
            adam(t->k[l], t->mk[l], t->vk[l], g, 9 * c, lr, step);
        }
        if (t->w[0].gw[l]) {
            const struct pd_layer_info *li = pd_layer_info(l);
            size_t nwl = (size_t)li->k * li->k * li->cin * c;
            REDUCE(gw[l], nwl);
            adam(t->wt[l], t->mw[l], t->vw[l], g, nwl, lr * PD_TRAIN_FULL_LR_SCALE, step);
        }
    }
#undef REDUCE
    free(g);
    free(gb);
    refresh_effective(t);
}

/* The task the current parameters make (pointers into t). */
static void trainer_task(struct trainer *t, struct pd_task *task)
{
    memset(task, 0, sizeof(*task));
    task->size = t->S;
    for (int l = 0; l < PD_NLAYERS; l++) {
        task->scale[l] = t->es[l];
        task->bias[l] = t->eb[l];
        task->dw[l] = t->k[l];
        task->w[l] = t->wt[l];
    }
    task->nclass = t->K;
    task->head_w = t->hw;
    task->head_b = t->hb;
}

/* The loader: decodes and augments the next minibatch while the workers run this one. */
struct loader {
    const struct pd_dataset *ds;
    const int *order; /* this epoch's permutation */
    int *bad;         /* images that failed to decode */
    int n, S, B;
    uint64_t seed;
    int epoch;
    int next;  /* position in order */
    float *in; /* (B, S, S, 3) */
    int y[256];
    int count; /* images in `in` */
    int skipped;
};

static void load_batch(void *arg)
{
    struct loader *L = arg;
    L->count = 0;
    while (L->count < L->B && L->next < L->n) {
        int i = L->order[L->next++];
        if (L->bad[i])
            continue;
        uint64_t rng = mix(L->seed ^ mix((uint64_t)L->epoch * 0x100000001ull + (uint64_t)i));
        if (load_image(L->ds->paths[i], L->S, &rng, L->in + (size_t)L->count * L->S * L->S * 3)) {
            L->bad[i] = 1;
            L->skipped++;
            continue;
        }
        L->y[L->count++] = L->ds->label[i];
    }
}

static void report(const struct pd_train_opts *o, struct pd_train_progress *p)
{
    if (o->progress)
        o->progress(o->ctx, p);
}

static double accuracy_of(const pd_model *m, const struct pd_task *task,
                          const struct pd_dataset *val, int threads)
{
    struct pd_eval_result r;
    if (pd_eval(m, task, val, NULL, threads, &r, NULL))
        return -1;
    free(r.confusion);
    return r.n ? (double)r.correct / r.n : 0;
}

int pd_train(const pd_model *m, const struct pd_dataset *train, const struct pd_dataset *val,
             const struct pd_train_opts *o_in, struct pd_train_result *res, char *msg)
{
    memset(res, 0, sizeof(*res));
    res->val_acc = res->probe_val_acc = -1;
    struct pd_train_opts o = *o_in;
    o.size = o.size ? o.size : 224;
    o.batch = o.batch ? o.batch : 32;
    o.threads = o.threads ? o.threads : 2;
    o.lr = o.lr > 0 ? o.lr : 3e-3;
    if (o.size < 32 || o.size > 512 || o.batch < 1 || o.batch > 256 || o.threads < 1 ||
        o.threads > MAX_THREAD || o.epochs < 0 || o.epochs > 10000)
        return pd_fail(msg, PD_RANGE, "size, batch, threads or epochs out of range");
    if (train->nclass < 2)
        return pd_fail(msg, PD_FORMAT, "need at least 2 classes");
    if (val && val->nclass != train->nclass)
        return pd_fail(msg, PD_FORMAT, "validation set has %d classes, training set %d",
                       val->nclass, train->nclass);
    for (int c = 0; val && c < val->nclass; c++)
        if (strcmp(val->labels[c], train->labels[c]))
            return pd_fail(msg, PD_FORMAT, "validation class '%s' is not training class '%s'",
                           val->labels[c], train->labels[c]);
    const int K = train->nclass, N = train->n;
    double t0 = pd_now();
    openblas_set_num_threads(1);
    struct pd_train_progress pr = {.phase = "features", .val_acc = -1, .probe_val_acc = -1};
    report(&o, &pr);

    /* 1. features of every training image under the starting layers, for the probe */
    struct trainer t;
    float *z0 = pd_alloc_floats((size_t)PD_FEATURES * K), *zb = pd_alloc_floats((size_t)K);
    int err = trainer_init(&t, m, &o, K, z0, zb);
    free(z0);
    free(zb);
    if (err)
        return pd_fail(msg, PD_NOMEM, "out of memory for training at batch %d, size %d", o.batch,
                       o.size);
    refresh_effective(&t);
    struct pd_task task;
    trainer_task(&t, &task);
    float *feats = pd_alloc_floats((size_t)N * PD_FEATURES);
    int *pred = malloc(sizeof(int) * (size_t)N), *ok = malloc(sizeof(int) * (size_t)N);
    if (!feats || !pred || !ok) {
        free(feats), free(pred), free(ok);
        trainer_free(&t);
        return pd_fail(msg, PD_NOMEM, "out of memory for %d cached features", N);
    }
    err = forward_all(m, &task, train, o.size, o.threads, feats, pred, &o);
    if (err == PD_CANCELLED)
        pd_fail(msg, PD_CANCELLED, "cancelled");
    int good = 0;
    for (int i = 0; i < N; i++) {
        ok[i] = pred[i] >= 0;
        good += ok[i];
        res->skipped += !ok[i];
    }
    if (!err && good < 2)
        err = pd_fail(msg, PD_FORMAT, "fewer than 2 readable training images");
    /* 2. the probe */
    if (!err && o.cancelled && o.cancelled(o.ctx))
        err = pd_fail(msg, PD_CANCELLED, "cancelled");
    if (!err) {
        pr.phase = "probe";
        report(&o, &pr);
        res->probe_l2 = probe_cv(feats, train->label, ok, N, K, t.hw, t.hb);
        if (val) {
            trainer_task(&t, &task);
            res->probe_val_acc = pr.probe_val_acc = accuracy_of(m, &task, val, o.threads);
            pr.phase = "probe done";
            report(&o, &pr);
        }
    }
    float *probe_w = NULL, *probe_b = NULL;
    if (!err) {
        probe_w = pd_alloc_floats((size_t)PD_FEATURES * K);
        probe_b = pd_alloc_floats((size_t)K);
        if (probe_w && probe_b) {
            memcpy(probe_w, t.hw, sizeof(float) * PD_FEATURES * K);
            memcpy(probe_b, t.hb, sizeof(float) * K);
            if (o.no_probe_init) { /* plain fine-tuning: the head learns from zero */
                memset(t.hw, 0, sizeof(float) * PD_FEATURES * K);
                memset(t.hb, 0, sizeof(float) * K);
            }
        } else {
            err = pd_fail(msg, PD_NOMEM, "out of memory");
        }
    }
    free(feats);
    free(pred);

    /* 3. fine-tuning (sb, sbdw) */
    int steps_per_epoch = (good + o.batch - 1) / o.batch;
    int epochs = o.epochs;
    if (!epochs) {
        epochs = 5;
        while (epochs * steps_per_epoch < PD_TRAIN_MIN_STEPS && epochs < 1000)
            epochs++;
    }
    if (o.kind == PD_TRAIN_LOGITS)
        epochs = 0;
    res->epochs = epochs;
    int total = epochs * steps_per_epoch, step = 0;
    struct loader L[2];
    int *order = malloc(sizeof(int) * (size_t)N), *bad = calloc((size_t)N, sizeof(int));
    for (int i = 0; i < 2; i++) {
        memset(&L[i], 0, sizeof(L[i]));
        L[i].in = pd_alloc_floats((size_t)o.batch * o.size * o.size * 3);
        if (!L[i].in)
            err = err ? err : pd_fail(msg, PD_NOMEM, "out of memory");
    }
    if (!order || !bad)
        err = err ? err : pd_fail(msg, PD_NOMEM, "out of memory");
    for (int i = 0; bad && i < N; i++)
        bad[i] = !ok[i];
    double images = 0, ts = pd_now();
    for (int e = 1; e <= epochs && !err; e++) {
        /* this epoch's order: Fisher-Yates from the seed */
        for (int i = 0; i < N; i++)
            order[i] = i;
        uint64_t rs = mix(o.seed ^ (0xE90C0000ull + (uint64_t)e));
        for (int i = N - 1; i > 0; i--) {
            int j = (int)(unif(&rs) * (i + 1));
            j = j > i ? i : j;
            int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        for (int i = 0; i < 2; i++) {
            L[i].ds = train, L[i].order = order, L[i].bad = bad, L[i].n = N, L[i].S = o.size;
            L[i].B = o.batch, L[i].seed = o.seed, L[i].epoch = e, L[i].next = 0;
        }
        int cur = 0;
        load_batch(&L[0]);
        double eloss = 0;
        int ecorrect = 0, eseen = 0;
        while (L[cur].count > 0 && !err) {
            /* start loading the next batch, then compute this one */
            L[1 - cur].next = L[cur].next;
            uv_thread_t lt;
            uv_thread_create(&lt, load_batch, &L[1 - cur]);
            struct loader *b = &L[cur];
            int per = (b->count + o.threads - 1) / o.threads;
            uv_thread_t th[MAX_THREAD];
            int nt = 0;
            for (int i = 0; i < o.threads; i++) {
                struct worker *w = &t.w[i];
                int first = i * per;
                w->n = first < b->count ? (b->count - first < per ? b->count - first : per) : 0;
                w->in = b->in + (size_t)first * o.size * o.size * 3;
                w->y = b->y + first;
                w->loss = 0;
                w->correct = 0;
                if (w->n)
                    uv_thread_create(&th[nt++], worker_step, w);
            }
            for (int i = 0; i < nt; i++)
                uv_thread_join(&th[i]);
            for (int i = 0; i < o.threads; i++) {
                eloss += t.w[i].loss;
                ecorrect += t.w[i].correct;
            }
            eseen += b->count;
            images += b->count;
            step++;
            /* warm-up for 5% of the steps, then cosine decay to zero */
            int warm = total / 20 > 0 ? total / 20 : 1;
            double lr = step <= warm
                            ? o.lr * step / warm
                            : o.lr * 0.5 * (1 + cos(M_PI * (step - warm) / (total - warm + 1e-9)));
            optimise(&t, lr, step);
            uv_thread_join(&lt);
            /* the loader ran ahead from where this batch ended */
            L[cur].next = L[1 - cur].next;
            cur = 1 - cur;
            double dt = pd_now() - ts;
            pr = (struct pd_train_progress){"train",
                                            e,
                                            epochs,
                                            step,
                                            total,
                                            eloss / (eseen ? eseen : 1),
                                            (double)ecorrect / (eseen ? eseen : 1),
                                            pr.val_acc,
                                            res->probe_val_acc,
                                            images / (dt > 0 ? dt : 1),
                                            (total - step) * (dt / step),
                                            0};
            report(&o, &pr);
            if (o.cancelled && o.cancelled(o.ctx))
                err = pd_fail(msg, PD_CANCELLED, "cancelled");
        }
        res->train_acc = (double)ecorrect / (eseen ? eseen : 1);
        if (!err && val) {
            trainer_task(&t, &task);
            pr.val_acc = accuracy_of(m, &task, val, o.threads);
            res->val_acc = pr.val_acc;
        }
        if (!err) {
            pr.epoch_done = 1;
            report(&o, &pr);
            pr.epoch_done = 0;
        }
    }
    res->train_seconds = epochs ? pd_now() - ts : 0;
    res->skipped = 0;
    for (int i = 0; bad && i < N; i++)
        res->skipped += bad[i];
    res->steps = step;
    res->images = good;
    free(order), free(bad), free(ok);
    for (int i = 0; i < 2; i++)
        free(L[i].in);
    if (!err) {
        /* hand the parameters over: what this kind trained (or, when the probe wins, the
         * starting layers the probe's features came from) and the head */
        struct pd_params *p = &res->p;
        p->nclass = K;
        int probe_only = o.kind == PD_TRAIN_LOGITS ||
                         (val && res->val_acc >= 0 && res->probe_val_acc > res->val_acc);
        res->probe_only = probe_only && o.kind != PD_TRAIN_LOGITS;
        if (probe_only && val)
            res->val_acc = res->probe_val_acc;
        int fail = 0;
        for (int l = 0; l < PD_NLAYERS; l++) {
            size_t c = (size_t)pd_layer_info(l)->cout;
            if (probe_only) {
                if (o.base && o.base->scale[l])
                    p->scale[l] = dup_or(o.base->scale[l], NULL, c, &fail);
                if (o.base && o.base->bias[l])
                    p->bias[l] = dup_or(o.base->bias[l], NULL, c, &fail);
                if (o.base && o.base->kernel[l])
                    p->kernel[l] = dup_or(o.base->kernel[l], NULL, 9 * c, &fail);
                if (o.base && o.base->weight[l]) {
                    const struct pd_layer_info *li = pd_layer_info(l);
                    p->weight[l] =
                        dup_or(o.base->weight[l], NULL, (size_t)li->k * li->k * li->cin * c, &fail);
                }
                continue;
            }
            p->scale[l] = t.s[l], t.s[l] = NULL;
            p->bias[l] = t.b[l], t.b[l] = NULL;
            p->kernel[l] = t.k[l], t.k[l] = NULL;
            p->weight[l] = t.wt[l], t.wt[l] = NULL;
        }
        if (probe_only) {
            p->head_w = probe_w, p->head_b = probe_b;
            probe_w = probe_b = NULL;
        } else {
            p->head_w = t.hw, p->head_b = t.hb;
            t.hw = t.hb = NULL;
        }
        if (fail) {
            pd_params_free(p);
            err = pd_fail(msg, PD_NOMEM, "out of memory");
        }
    }
    free(probe_w);
    free(probe_b);
    trainer_free(&t);
    res->seconds = pd_now() - t0;
    pr.phase = "done";
    report(&o, &pr);
    return err;
}

int pd__train_loss_grad(const pd_model *m, const struct pd_params *p, int size, int n,
                        const float *in, const int *y, double *loss, struct pd_params *grad)
{
    struct pd_train_opts o = {
        .kind = PD_TRAIN_FULL, .size = size, .batch = n, .threads = 1, .base = p};
    struct trainer t;
    if (n < 1 || n > 256 || trainer_init(&t, m, &o, p->nclass, p->head_w, p->head_b))
        return PD_NOMEM;
    refresh_effective(&t);
    struct worker *w = &t.w[0];
    w->in = in;
    w->y = y;
    w->n = n;
    worker_step(w);
    *loss = w->loss / n;
    int fail = 0;
    if (grad) {
        memset(grad, 0, sizeof(*grad));
        grad->nclass = p->nclass;
        size_t nw = (size_t)PD_FEATURES * p->nclass;
        grad->head_w = dup_or(w->ghw, NULL, nw, &fail);
        grad->head_b = dup_or(w->ghb, NULL, (size_t)p->nclass, &fail);
        for (int l = 0; l < PD_NLAYERS; l++) {
            size_t c = (size_t)pd_layer_info(l)->cout;
            grad->scale[l] = dup_or(w->gs[l], NULL, c, &fail);
            grad->bias[l] = dup_or(w->gb[l], NULL, c, &fail);
            if (!fail && pd_layer_is_dw(l)) {
                const float *mean, *var;
                pd_model_bn_stats(m, l, &mean, &var);
                for (size_t j = 0; j < c; j++) {
                    float inv = 1.0f / sqrtf(var[j] + (float)PD_BN_EPS);
                    grad->scale[l][j] = inv * (grad->scale[l][j] - mean[j] * grad->bias[l][j]);
                }
                grad->kernel[l] = dup_or(w->gk[l], NULL, 9 * c, &fail);
            } else {
                const struct pd_layer_info *li = pd_layer_info(l);
                grad->weight[l] =
                    dup_or(w->gw[l], NULL, (size_t)li->k * li->k * li->cin * c, &fail);
            }
        }
    }
    trainer_free(&t);
    if (fail && grad)
        pd_params_free(grad);
    return fail ? PD_NOMEM : PD_OK;
}

/*
 * Finite-difference checks of every backward op and of the whole training gradient: the
 * analytic gradient of a loss equals (L(p + e) - L(p - e)) / 2e. Ops are checked on random
 * shapes (odd sizes, stride 2) with loss sum(r * y) for a random r, evaluated in double; sample
 * points are kept away from the ReLU6 kinks. The network check perturbs raw patch parameters
 * (scales, biases, batch-norm gamma/beta, depthwise kernels, conv0/pointwise weights, head) of
 * the real backbone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/ops.h"
#include "../../core/train.h"
#include "../testenv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 12345;
static double urand(void) /* [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}
static float *randv(size_t n, double scale)
{
    float *v = pd_alloc_floats(n);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(urand() * scale);
    return v;
}

static double dot(const float *a, const float *r, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * r[i];
    return s;
}

static double worst; /* largest relative error seen, for the report */

static void close_enough(double analytic, double numeric, const char *what)
{
    double err = fabs(analytic - numeric) / (fabs(numeric) + fabs(analytic) + 1e-3);
    if (err > worst)
        worst = err;
    if (err > 2e-2)
        print_error("%s: analytic %.6g, numeric %.6g\n", what, analytic, numeric);
    assert_true(err <= 2e-2);
}

/* scale/bias/ReLU6 */
static void test_scale_bias_act(void **state)
{
    (void)state;
    const int rows = 7, c = 5;
    size_t n = (size_t)rows * c;
    float *z = randv(n, 2), *s = randv((size_t)c, 1.5), *b = randv((size_t)c, 3), *r = randv(n, 1);
    /* keep pre-activations away from 0 and 6 */
    for (size_t i = 0; i < n; i++) {
        float v = s[i % c] * z[i] + b[i % c];
        if (fabsf(v) < 0.2f || fabsf(v - 6) < 0.2f)
            z[i] += 0.5f / (s[i % c] != 0 ? s[i % c] : 1);
    }
    float *y = pd_alloc_floats(n), *dz = pd_alloc_floats(n);
    float *ds = pd_alloc_floats((size_t)c), *db = pd_alloc_floats((size_t)c);
    pd_scale_bias_act_backward(z, r, (size_t)rows, c, s, b, PD_ACT_RELU6, dz, ds, db);
    const float eps = 1e-3f;
#define LOSS()                                                                                     \
    (memcpy(y, z, n * sizeof(float)), pd_scale_bias_act(y, (size_t)rows, c, s, b, PD_ACT_RELU6),   \
     dot(y, r, n))
    for (size_t i = 0; i < n; i += 3) {
        float keep = z[i];
        z[i] = keep + eps;
        double lp = LOSS();
        z[i] = keep - eps;
        double lm = LOSS();
        z[i] = keep;
        close_enough(dz[i], (lp - lm) / (2 * eps), "dz");
    }
    for (int j = 0; j < c; j++) {
        float keep = s[j];
        s[j] = keep + eps;
        double lp = LOSS();
        s[j] = keep - eps;
        double lm = LOSS();
        s[j] = keep;
        close_enough(ds[j], (lp - lm) / (2 * eps), "dscale");
        keep = b[j];
        b[j] = keep + eps;
        lp = LOSS();
        b[j] = keep - eps;
        lm = LOSS();
        b[j] = keep;
        close_enough(db[j], (lp - lm) / (2 * eps), "dbias");
    }
#undef LOSS
    free(z), free(s), free(b), free(r), free(y), free(dz), free(ds), free(db);
}

static void check_dw(int h, int w, int c, int s)
{
    int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    size_t nx = (size_t)h * w * c, ny = (size_t)oh * ow * c;
    float *x = randv(nx, 1), *k = randv(9 * (size_t)c, 1), *r = randv(ny, 1);
    float *y = pd_alloc_floats(ny), *dx = pd_alloc_floats(nx), *dk = pd_alloc_floats(9 * (size_t)c);
    float *ones = pd_alloc_floats((size_t)c), *zeros = pd_alloc_floats((size_t)c);
    for (int j = 0; j < c; j++)
        ones[j] = 1;
    const float *kk[1] = {k}, *sc[1] = {ones}, *bi[1] = {zeros};
    pd_op_dw_backward(x, h, w, c, k, s, r, dx, dk);
    const float eps = 1e-2f;
#define LOSS() (pd_op_dw(x, 1, h, w, c, kk, s, sc, bi, PD_ACT_NONE, y), dot(y, r, ny))
    for (size_t i = 0; i < nx; i += 1 + nx / 40) {
        float keep = x[i];
        x[i] = keep + eps;
        double lp = LOSS();
        x[i] = keep - eps;
        double lm = LOSS();
        x[i] = keep;
        close_enough(dx[i], (lp - lm) / (2 * eps), "dw dx");
    }
    for (size_t i = 0; i < 9 * (size_t)c; i++) {
        float keep = k[i];
        k[i] = keep + eps;
        double lp = LOSS();
        k[i] = keep - eps;
        double lm = LOSS();
        k[i] = keep;
        close_enough(dk[i], (lp - lm) / (2 * eps), "dw dk");
    }
#undef LOSS
    free(x), free(k), free(r), free(y), free(dx), free(dk), free(ones), free(zeros);
}

static void test_depthwise(void **state)
{
    (void)state;
    check_dw(5, 5, 3, 1);
    check_dw(7, 6, 4, 2);
    check_dw(8, 8, 2, 2);
    check_dw(1, 1, 3, 1);
}

static void check_pw_conv(int h, int w, int cin, int cout, int k, int s)
{
    int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    size_t nx = (size_t)h * w * cin, ny = (size_t)oh * ow * cout, nw = (size_t)k * k * cin * cout;
    float *x = randv(nx, 1), *wt = randv(nw, 1), *r = randv(ny, 1);
    float *y = pd_alloc_floats(ny), *dx = pd_alloc_floats(nx), *dw = pd_alloc_floats(nw);
    float *col = pd_alloc_floats(pd_conv_col_floats(1, h, w, cin, k, s) + 1);
    float *ones = pd_alloc_floats((size_t)cout), *zeros = pd_alloc_floats((size_t)cout);
    for (int j = 0; j < cout; j++)
        ones[j] = 1;
    const float *sc[1] = {ones}, *bi[1] = {zeros};
    if (k == 1)
        pd_op_pw_backward(x, h * w, cin, wt, cout, r, dx, dw);
    else
        pd_op_conv_backward_w(x, 1, h, w, cin, k, s, cout, r, dw, col);
    const float eps = 1e-2f;
#define LOSS()                                                                                     \
    (k == 1 ? pd_op_pw(x, 1, h, w, cin, wt, cout, sc, bi, PD_ACT_NONE, y)                          \
            : pd_op_conv(x, 1, h, w, cin, wt, k, s, cout, sc, bi, PD_ACT_NONE, y, col),            \
     dot(y, r, ny))
    for (size_t i = 0; k == 1 && i < nx; i += 1 + nx / 30) {
        float keep = x[i];
        x[i] = keep + eps;
        double lp = LOSS();
        x[i] = keep - eps;
        double lm = LOSS();
        x[i] = keep;
        close_enough(dx[i], (lp - lm) / (2 * eps), "pw dx");
    }
    for (size_t i = 0; i < nw; i += 1 + nw / 30) {
        float keep = wt[i];
        wt[i] = keep + eps;
        double lp = LOSS();
        wt[i] = keep - eps;
        double lm = LOSS();
        wt[i] = keep;
        close_enough(dw[i], (lp - lm) / (2 * eps), k == 1 ? "pw dW" : "conv dW");
    }
#undef LOSS
    free(x), free(wt), free(r), free(y), free(dx), free(dw), free(col), free(ones), free(zeros);
}

static void test_pointwise_and_conv(void **state)
{
    (void)state;
    check_pw_conv(3, 5, 4, 6, 1, 1);
    check_pw_conv(7, 7, 3, 4, 3, 2);
    check_pw_conv(6, 5, 2, 3, 3, 2);
}

/* The whole network: raw patch parameters through GAP, head and softmax cross-entropy. */
static void test_network(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    pd_model *m;
    assert_int_equal(pd_model_load(test_env("PD_MODEL"), &m, msg), PD_OK);
    /* under valgrind (tests/valgrind.sh) a smaller input and one entry per probe: every kind of
     * parameter is still checked, in minutes rather than hours */
    const int slow = getenv("PD_UNDER_VALGRIND") != NULL;
    const int n = 2, S = slow ? 32 : 64, K = 3, entries = slow ? 1 : 3;
    float *in = randv((size_t)n * S * S * 3, 1);
    int y[2] = {0, 2};
    struct pd_params p;
    memset(&p, 0, sizeof(p));
    p.nclass = K;
    p.head_w = randv(PD_FEATURES * K, 0.2);
    p.head_b = randv(K, 0.1);
    /* the backbone's own layers, as owned copies the test can perturb */
    for (int l = 0; l < PD_NLAYERS; l++) {
        size_t c = (size_t)pd_layer_info(l)->cout;
        int dw = pd_layer_is_dw(l);
        p.scale[l] = pd_alloc_floats(c);
        p.bias[l] = pd_alloc_floats(c);
        memcpy(p.scale[l], dw ? pd_model_gamma(m, l) : pd_model_scale(m, l), c * 4);
        memcpy(p.bias[l], dw ? pd_model_beta(m, l) : pd_model_bias(m, l), c * 4);
        if (dw) {
            p.kernel[l] = pd_alloc_floats(9 * c);
            memcpy(p.kernel[l], pd_model_dw(m, l), 9 * c * 4);
        } else {
            const struct pd_layer_info *li = pd_layer_info(l);
            size_t nw = (size_t)li->k * li->k * li->cin * c;
            p.weight[l] = pd_alloc_floats(nw);
            memcpy(p.weight[l], pd_model_weights(m, l), nw * 4);
        }
    }
    double loss;
    struct pd_params g;
    assert_int_equal(pd__train_loss_grad(m, &p, S, n, in, y, &loss, &g), PD_OK);
    assert_true(loss > 0 && isfinite(loss));
    /* probe a few entries of every kind of parameter, preferring ones with a clear gradient */
    struct {
        float **arr, **garr;
        int l;
        size_t len;
        const char *what;
        float eps;
    } probes[] = {
        {&p.head_w, &g.head_w, -1, PD_FEATURES * K, "head.weight", 1e-2f},
        {&p.head_b, &g.head_b, -1, K, "head.bias", 1e-2f},
        {p.scale + 26, g.scale + 26, 26, 1024, "pw13.scale", 5e-4f},
        {p.bias + 26, g.bias + 26, 26, 1024, "pw13.bias", 5e-4f},
        {p.scale + 25, g.scale + 25, 25, 1024, "dw13.gamma", 5e-4f},
        {p.bias + 25, g.bias + 25, 25, 1024, "dw13.beta", 5e-4f},
        {p.kernel + 25, g.kernel + 25, 25, 9 * 1024, "dw13.kernel", 5e-4f},
        {p.scale + 12, g.scale + 12, 12, 512, "pw6.scale", 3e-4f},
        {p.scale + 9, g.scale + 9, 9, 256, "dw5.gamma", 3e-4f},
        {p.kernel + 9, g.kernel + 9, 9, 9 * 256, "dw5.kernel", 3e-4f},
        {p.bias + 1, g.bias + 1, 1, 32, "dw1.beta", 3e-4f},
        {p.weight + 26, g.weight + 26, 26, 1024 * 1024, "pw13.weight", 5e-4f},
        {p.weight + 12, g.weight + 12, 12, 256 * 512, "pw6.weight", 3e-4f},
        {p.weight + 2, g.weight + 2, 2, 32 * 64, "pw1.weight", 3e-4f},
        {p.weight + 0, g.weight + 0, 0, 27 * 32, "conv0.weight", 3e-4f},
        {p.scale + 0, g.scale + 0, 0, 32, "conv0.scale", 3e-4f},
        {p.bias + 0, g.bias + 0, 0, 32, "conv0.bias", 3e-4f},
    };
    for (size_t q = 0; q < sizeof(probes) / sizeof(probes[0]); q++) {
        float *a = *probes[q].arr, *ga = *probes[q].garr;
        /* the three entries with the largest gradient: numerically meaningful */
        size_t best[3] = {0, 0, 0};
        for (size_t i = 0; i < probes[q].len; i++) {
            double v = fabs(ga[i]);
            if (v > fabs(ga[best[0]]))
                best[2] = best[1], best[1] = best[0], best[0] = i;
            else if (v > fabs(ga[best[1]]))
                best[2] = best[1], best[1] = i;
            else if (v > fabs(ga[best[2]]))
                best[2] = i;
        }
        for (int j = 0; j < entries; j++) {
            size_t i = best[j];
            /* a step can carry some pre-activations across a ReLU6 kink (too large) or drown in
             * float32 rounding (too small): the central difference at the step, a quarter of it
             * and four times it; the one closest to the analytic gradient must agree with it (the
             * search stops at the first step that agrees to a quarter of the tolerance) */
            double numeric = 0, best_err = INFINITY;
            for (int e = 0; e < 3 && best_err > 5e-3; e++) {
                float keep = a[i];
                float eps = probes[q].eps *
                            (e == 0   ? 1.0f
                             : e == 1 ? 0.25f
                                      : 4.0f) *
                            (fabsf(keep) > 1 ? fabsf(keep) : 1);
                double lp, lm;
                a[i] = keep + eps;
                pd__train_loss_grad(m, &p, S, n, in, y, &lp, NULL);
                a[i] = keep - eps;
                pd__train_loss_grad(m, &p, S, n, in, y, &lm, NULL);
                a[i] = keep;
                double num = (lp - lm) / (2 * (double)eps);
                double err = fabs(ga[i] - num) / (fabs(num) + fabs(ga[i]) + 1e-3);
                if (err < best_err)
                    best_err = err, numeric = num;
            }
            char what[64];
            snprintf(what, sizeof(what), "%s[%zu]", probes[q].what, i);
            close_enough(ga[i], numeric, what);
        }
    }
    printf("worst relative error over all checks: %.3g\n", worst);
    pd_params_free(&g);
    pd_params_free(&p);
    free(in);
    pd_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_bias_act),
        cmocka_unit_test(test_depthwise),
        cmocka_unit_test(test_pointwise_and_conv),
        cmocka_unit_test(test_network),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

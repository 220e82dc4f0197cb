/*
 * Each layer's forward pass against a naive double-precision reference on random shapes,
 * including odd sizes and stride 2, with per-sample scales, biases and kernels; TF 'SAME'
 * padding; the tfjs resize on a known case; and the classification path's batching.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/image.h"
#include "../../core/net.h"
#include "../../core/ops.h"
#include "../../core/st.h"
#include "../testenv.h"

#include <unistd.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24) * 2.0 - 1.0);
}
static float *randv(size_t n)
{
    float *v = pd_alloc_floats(n);
    for (size_t i = 0; i < n; i++)
        v[i] = frand();
    return v;
}

/* naive reference: any k, stride, depthwise or not, in double */
static void ref_conv(const float *x, int n, int h, int w, int cin, const float *const *wt, int k,
                     int s, int cout, int depthwise, const float *const *sc, const float *const *bi,
                     int relu6, double *y)
{
    int oh = (h + s - 1) / s, ow = (w + s - 1) / s;
    int pth = ((oh - 1) * s + k - h), ptw = ((ow - 1) * s + k - w);
    int pt = pth > 0 ? pth / 2 : 0, pl = ptw > 0 ? ptw / 2 : 0;
    for (int i = 0; i < n; i++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                for (int co = 0; co < cout; co++) {
                    double acc = 0;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * s + ky - pt, ix = ox * s + kx - pl;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                                continue;
                            const float *in = x + (((size_t)i * h + iy) * w + ix) * cin;
                            if (depthwise)
                                acc += (double)in[co] * wt[i][(ky * k + kx) * cout + co];
                            else
                                for (int ci = 0; ci < cin; ci++)
                                    acc += (double)in[ci] *
                                           wt[i][((ky * k + kx) * cin + ci) * cout + co];
                        }
                    double v = acc * sc[i][co] + bi[i][co];
                    if (relu6)
                        v = v < 0 ? 0 : v > 6 ? 6 : v;
                    y[(((size_t)i * oh + oy) * ow + ox) * cout + co] = v;
                }
}

static void compare(const float *got, const double *want, size_t n, const char *what)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]) / (1.0 + fabs(want[i]));
        worst = d > worst ? d : worst;
    }
    if (worst > 1e-5)
        print_error("%s: worst relative difference %g\n", what, worst);
    assert_true(worst <= 1e-5);
}

static void test_same_padding(void **state)
{
    (void)state;
    /* TensorFlow: out = ceil(in / s); the extra padding goes bottom/right */
    assert_int_equal(pd_same_out(512, 2), 256);
    assert_int_equal(pd_same_pad(512, 3, 2), 0); /* total 1: all at the bottom */
    assert_int_equal(pd_same_pad(75, 3, 2), 1);  /* total 2 */
    assert_int_equal(pd_same_pad(7, 3, 1), 1);
    assert_int_equal(pd_same_out(7, 2), 4);
    assert_int_equal(pd_same_pad(2, 3, 2), 0);
    assert_int_equal(pd_same_pad(1, 3, 2), 1);
}

static void run_case(int n, int h, int w, int cin, int cout, int k, int s, int kind)
{
    /* kind 0 full conv, 1 depthwise, 2 pointwise */
    if (kind)
        k = kind == 1 ? 3 : 1;
    if (kind == 1)
        cout = cin;
    if (kind == 2)
        s = 1;
    int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    size_t nin = (size_t)n * h * w * cin, nout = (size_t)n * oh * ow * cout;
    float *x = randv(nin);
    const float *wt[4], *sc[4], *bi[4];
    size_t wn = kind == 1 ? (size_t)9 * cin : (size_t)k * k * cin * cout;
    for (int i = 0; i < n; i++) {
        /* conv and pointwise weights are shared by the batch; depthwise ones are per sample */
        wt[i] = kind != 1 && i > 0 ? wt[0] : randv(wn);
        sc[i] = randv((size_t)cout);
        bi[i] = randv((size_t)cout);
    }
    float *y = pd_alloc_floats(nout);
    double *ref = calloc(nout, sizeof(double));
    float *col = pd_alloc_floats(pd_conv_col_floats(n, h, w, cin, k, s) + 1);
    if (kind == 0)
        pd_op_conv(x, n, h, w, cin, wt[0], k, s, cout, sc, bi, PD_ACT_RELU6, y, col);
    else if (kind == 1)
        pd_op_dw(x, n, h, w, cin, wt, s, sc, bi, PD_ACT_RELU6, y);
    else
        pd_op_pw(x, n, h, w, cin, wt[0], cout, sc, bi, PD_ACT_NONE, y);
    ref_conv(x, n, h, w, cin, wt, k, s, cout, kind == 1, sc, bi, kind != 2, ref);
    char what[128];
    snprintf(what, sizeof(what), "kind %d n %d %dx%dx%d -> %d k %d s %d", kind, n, h, w, cin, cout,
             k, s);
    compare(y, ref, nout, what);
    for (int i = 0; i < n; i++) {
        if (kind == 1 || i == 0)
            free((void *)wt[i]);
        free((void *)sc[i]);
        free((void *)bi[i]);
    }
    free(x);
    free(y);
    free(ref);
    free(col);
}

static void test_layers_random(void **state)
{
    (void)state;
    for (int t = 0; t < 60; t++) {
        int kind = t % 3;
        int n = 1 + (int)((frand() + 1) * 1.5);
        int h = 1 + (int)((frand() + 1) * 9.5), w = 1 + (int)((frand() + 1) * 9.5);
        int cin = 1 + (int)((frand() + 1) * 8), cout = 1 + (int)((frand() + 1) * 8);
        int s = t % 2 ? 2 : 1;
        run_case(n, h, w, cin, cout, 3, s, kind);
    }
    /* the shapes of the real network's awkward corners */
    run_case(1, 2, 2, 8, 16, 3, 2, 0);  /* SSD layer 7: 2x2 -> 1x1 */
    run_case(1, 17, 17, 3, 4, 3, 2, 0); /* odd input, stride 2 */
    run_case(2, 7, 7, 16, 16, 3, 2, 1); /* odd depthwise stride 2 */
    run_case(1, 1, 1, 4, 4, 3, 1, 1);
    /* wide enough for 8-channel vectors with a tail, and pointwise outputs long enough to be
     * computed in chunks of rows, with a sample boundary inside a chunk */
    run_case(2, 12, 11, 21, 21, 3, 1, 1);
    run_case(1, 13, 13, 40, 40, 3, 2, 1);
    run_case(3, 37, 29, 8, 100, 1, 1, 2);
    /* the direct conv0 kernel (few inputs, outputs in multiples of 8), whose interior pixels go
     * in pairs: odd and even sides, stride 1 and 2, pairs at row ends and sample boundaries */
    run_case(2, 17, 16, 3, 32, 3, 2, 0);
    run_case(1, 12, 13, 3, 16, 3, 1, 0);
    run_case(2, 9, 9, 2, 24, 3, 2, 0);
    run_case(1, 10, 11, 4, 64, 3, 2, 0);
}

/* The AVX2 depthwise kernel against the portable one on the network's own shapes. */
static void test_dw_variants(void **state)
{
    (void)state;
    static const int shapes[][4] = {{112, 112, 32, 1}, {112, 112, 64, 2}, {28, 28, 256, 1},
                                    {14, 14, 512, 2},  {7, 7, 1024, 1},   {9, 5, 20, 2},
                                    {1, 1, 16, 1},     {2, 3, 12, 2},     {6, 9, 20, 1}};
    for (size_t t = 0; t < sizeof(shapes) / sizeof(shapes[0]); t++) {
        int h = shapes[t][0], w = shapes[t][1], c = shapes[t][2], s = shapes[t][3];
        size_t nout = (size_t)pd_same_out(h, s) * pd_same_out(w, s) * c;
        float *x = randv((size_t)h * w * c), *k = randv(9 * (size_t)c);
        float *sc = randv((size_t)c), *bi = randv((size_t)c);
        float *a = pd_alloc_floats(nout), *b = pd_alloc_floats(nout);
        for (int act = 0; act < 2; act++) {
            assert_int_equal(pd__op_dw_variant(0, x, h, w, c, k, s, sc, bi, act, a), 0);
            if (pd__op_dw_variant(1, x, h, w, c, k, s, sc, bi, act, b) < 0) {
                printf("no AVX2+FMA on this CPU: portable depthwise only\n");
                break;
            }
            double worst = 0;
            for (size_t i = 0; i < nout; i++) {
                double d = fabs(a[i] - b[i]) / (1.0 + fabs(a[i]));
                worst = d > worst ? d : worst;
            }
            assert_true(worst <= 1e-5);
        }
        free(x), free(k), free(sc), free(bi), free(a), free(b);
    }
}

/* Equal up to the last bits: GEMM kernels may round a column block's edge differently. */
static void assert_close(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(fabsf(a[i] - b[i]) <= 1e-6f * (1.0f + fabsf(a[i])));
}

/* Parts of an op, split by rows or by columns, assemble to the whole op. */
static void test_parts(void **state)
{
    (void)state;
    const int n = 2, h = 9, w = 9, cin = 24, cout = 40, rows = n * h * w;
    float *x = randv((size_t)rows * cin), *wt = randv((size_t)cin * cout);
    const float *sc[2] = {randv(cout), randv(cout)}, *bi[2] = {randv(cout), randv(cout)};
    float *whole = pd_alloc_floats((size_t)rows * cout),
          *part = pd_alloc_floats((size_t)rows * cout);
    pd_op_pw(x, n, h, w, cin, wt, cout, sc, bi, PD_ACT_RELU6, whole);
    pd_op_pw_part(x, rows, h * w, cin, wt, cout, sc, bi, PD_ACT_RELU6, part, 0, 100, 0, cout);
    pd_op_pw_part(x, rows, h * w, cin, wt, cout, sc, bi, PD_ACT_RELU6, part, 100, rows, 0, 16);
    pd_op_pw_part(x, rows, h * w, cin, wt, cout, sc, bi, PD_ACT_RELU6, part, 100, rows, 16, cout);
    assert_close(whole, part, (size_t)rows * cout);
    /* depthwise by output rows; conv by output pixels with each part's own im2col rows */
    const float *k[2] = {randv(9 * cin), randv(9 * cin)};
    int oh = pd_same_out(h, 2), dwn = n * oh * oh * cin;
    pd_op_dw(x, n, h, w, cin, k, 2, sc, bi, PD_ACT_RELU6, whole);
    pd_op_dw_part(x, n, h, w, cin, k, 2, sc, bi, PD_ACT_RELU6, part, 0, 3);
    pd_op_dw_part(x, n, h, w, cin, k, 2, sc, bi, PD_ACT_RELU6, part, 3, n * oh);
    assert_memory_equal(whole, part, sizeof(float) * dwn);
    float *cw = randv(9 * 3 * cout), *col = pd_alloc_floats(pd_conv_col_floats(n, h, w, 3, 3, 2));
    int npix = n * oh * oh;
    pd_op_conv(x, n, h, w, 3, cw, 3, 2, cout, sc, bi, PD_ACT_RELU6, whole, col);
    pd_op_conv_part(x, n, h, w, 3, cw, 3, 2, cout, sc, bi, PD_ACT_RELU6, part, col, 0, 7);
    pd_op_conv_part(x, n, h, w, 3, cw, 3, 2, cout, sc, bi, PD_ACT_RELU6, part, col + 7 * 27, 7,
                    npix);
    assert_close(whole, part, (size_t)npix * cout);
    free(x), free(wt), free(whole), free(part), free(cw), free(col);
    for (int i = 0; i < 2; i++)
        free((void *)sc[i]), free((void *)bi[i]), free((void *)k[i]);
}

/*
 * The pointwise op against packed weights, with the zero channels it skips: inputs as ReLU6 leaves
 * them (dead channels and scattered zeros), a row count that ends in a partial panel and a partial
 * block with samples straddling panels, channel counts with a partial channel block, maps of odd
 * and even side (pixels in order, and in 3x2 patches), and parts by rows and by columns; against
 * the double reference.
 */
static void test_pw_packed(void **state)
{
    (void)state;
    if (!pd_pw_packed_ok(64, 48)) {
        printf("packed pointwise: this CPU lacks AVX2+FMA, skipped\n");
        return;
    }
    const int cins[3] = {24, 300, 600};
    for (int t = 0; t < 6; t++) {
        /* side 7: pixels in order; side 10: in 3x2 patches, two blocks of rows */
        const int n = 3, h = t < 3 ? 7 : 10, cin = cins[t % 3], cout = 48, rows = n * h * h;
        float *x = randv((size_t)rows * cin), *wt = randv((size_t)cin * cout);
        for (size_t i = 0; i < (size_t)rows * cin; i++)
            if (i % cin % 5 == 1 || frand() < -0.3f)
                x[i] = 0.0f;
        float *wp = pd_alloc_floats((size_t)cin * cout), *y = pd_alloc_floats((size_t)rows * cout);
        float *scratch = pd_alloc_floats(PD_PW_SCRATCH_FLOATS);
        pd_pw_pack(wt, cin, cout, wp);
        const float *sc[3] = {randv(cout), randv(cout), randv(cout)};
        const float *bi[3] = {randv(cout), randv(cout), randv(cout)};
        const float *wts[3] = {wt, wt, wt};
        double *want = malloc(sizeof(double) * rows * cout);
        ref_conv(x, n, h, h, cin, wts, 1, 1, cout, 0, sc, bi, 1, want);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 0, rows, 0,
                             cout, scratch);
        compare(y, want, (size_t)rows * cout, "packed pointwise");
        memset(y, 0, sizeof(float) * rows * cout);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 0, 61, 0,
                             32, scratch);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 0, 61, 32,
                             48, scratch);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 61, rows, 0,
                             48, scratch);
        compare(y, want, (size_t)rows * cout, "packed pointwise parts");
        /* parts ending in panels of 4 and 5 rows (the whole op ends in 3, the parts above in 1
         * and 2) */
        memset(y, 0, sizeof(float) * rows * cout);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 0, 52, 0,
                             48, scratch);
        pd_op_pw_packed_part(x, rows, h * h, h, cin, wp, cout, sc, bi, PD_ACT_RELU6, y, 52, rows, 0,
                             48, scratch);
        compare(y, want, (size_t)rows * cout, "packed pointwise parts of 4 and 5 rows");
        free(x), free(wt), free(wp), free(y), free(scratch), free(want);
        for (int i = 0; i < 3; i++)
            free((void *)sc[i]), free((void *)bi[i]);
    }
}

static void test_resize_tfjs(void **state)
{
    (void)state;
    /* tfjs' own test: [[2, 2], [4, 4]] resized to 3x3, alignCorners=false, gives
     * 2 2 2 / 10/3 10/3 10/3 / 4 4 4 */
    uint8_t px[2 * 2 * 3];
    const uint8_t v[4] = {2, 2, 4, 4};
    for (int i = 0; i < 4; i++)
        memset(px + 3 * i, v[i], 3);
    struct pd_image img = {2, 2, px};
    struct pd_crop crop = pd_crop_full(&img);
    float out[27];
    pd_image_to_input(&img, &crop, 3, out);
    const float want[9] = {2, 2, 2, 10.0f / 3, 10.0f / 3, 10.0f / 3, 4, 4, 4};
    for (int i = 0; i < 9; i++)
        for (int c = 0; c < 3; c++)
            assert_float_equal(out[3 * i + c], want[i] / 127.5f - 1.0f, 1e-6);
    /* padding to a square fills the bottom with zeros (-1 after normalisation) */
    struct pd_image wide = {2, 1, px};
    crop = pd_crop_pad(&wide);
    float sq[12];
    pd_image_to_input(&wide, &crop, 2, sq);
    assert_float_equal(sq[0], 2 / 127.5f - 1, 1e-6);
    assert_float_equal(sq[6], -1.0f, 1e-6);
    assert_float_equal(sq[9], -1.0f, 1e-6);
    /* flip mirrors horizontally */
    uint8_t lr[2 * 3] = {0, 0, 0, 255, 255, 255};
    struct pd_image two = {2, 1, lr};
    struct pd_crop fl = {0, 0, 2, 1, 0, 1};
    float f[2 * 2 * 3];
    pd_image_to_input(&two, &fl, 2, f);
    assert_float_equal(f[0], 1.0f, 1e-6);
    assert_float_equal(f[3], -1.0f, 1e-6);
}

static void test_classify_batch(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    pd_model *m;
    assert_int_equal(pd_model_load(test_env("PD_MODEL"), &m, msg), PD_OK);
    pd_net *net;
    assert_int_equal(pd_net_new(m, 2, 96, &net, msg), PD_OK);
    const int size = 96, nc = 3;
    float *in = randv((size_t)2 * size * size * 3);
    float *hw1 = randv(PD_FEATURES * nc), *hb1 = randv(nc);
    float *hw2 = randv(PD_FEATURES * nc), *hb2 = randv(nc);
    /* task 2 changes dw3's kernel and pw5's scale: results must differ per sample only */
    int ldw = pd_layer_dw(3), lpw = pd_layer_pw(5);
    size_t cdw = (size_t)pd_layer_info(ldw)->cin, cpw = (size_t)pd_layer_info(lpw)->cout;
    float *k2 = pd_alloc_floats(9 * cdw), *s2 = pd_alloc_floats(cpw);
    for (size_t i = 0; i < 9 * cdw; i++)
        k2[i] = pd_model_dw(m, ldw)[i] * 0.5f;
    for (size_t i = 0; i < cpw; i++)
        s2[i] = 1.5f;
    struct pd_task t1 = {.size = size, .nclass = nc, .head_w = hw1, .head_b = hb1};
    struct pd_task t2 = {.size = size, .nclass = nc, .head_w = hw2, .head_b = hb2};
    t2.dw[ldw] = k2;
    t2.scale[lpw] = s2;
    /* the backbone's own values passed explicitly equal the defaults */
    struct pd_task t1x = t1;
    for (int l = 0; l < PD_NLAYERS; l++) {
        t1x.scale[l] = pd_model_scale(m, l);
        t1x.bias[l] = pd_model_bias(m, l);
        t1x.dw[l] = pd_model_dw(m, l);
    }
    float pa[2][3], pb[2][3], pc[3], pd[3];
    float *pab[2] = {pa[0], pa[1]}, *pbb[2] = {pb[0], pb[1]}, *pcb[1] = {pc}, *pdb[1] = {pd};
    const struct pd_task *mix[2] = {&t1, &t2}, *mixx[2] = {&t1x, &t2};
    const struct pd_task *one1[1] = {&t1}, *one2[1] = {&t2};
    assert_int_equal(pd_net_classify(net, 2, size, in, mix, pab, NULL), PD_OK);
    assert_int_equal(pd_net_classify(net, 2, size, in, mixx, pbb, NULL), PD_OK);
    assert_int_equal(pd_net_classify(net, 1, size, in, one1, pcb, NULL), PD_OK);
    assert_int_equal(pd_net_classify(net, 1, size, in + (size_t)size * size * 3, one2, pdb, NULL),
                     PD_OK);
    double sum = 0;
    for (int k = 0; k < nc; k++) {
        sum += pa[0][k];
        assert_float_equal(pa[0][k], pb[0][k], 1e-6);
        assert_float_equal(pa[0][k], pc[k], 1e-5); /* batched == alone */
        assert_float_equal(pa[1][k], pd[k], 1e-5);
    }
    assert_float_equal(sum, 1.0, 1e-5);
    /* bad arguments are errors, not crashes */
    assert_int_equal(pd_net_classify(net, 3, size, in, mix, pab, NULL), PD_RANGE);
    assert_int_equal(pd_net_classify(net, 1, 128, in, mix, pab, NULL), PD_RANGE);
    float scores[PD_ANCHORS], boxes[4 * PD_ANCHORS];
    assert_int_equal(pd_net_detect(net, in, NULL, scores, boxes), PD_RANGE);
    free(in), free(hw1), free(hb1), free(hw2), free(hb2), free(k2), free(s2);
    pd_net_free(net);
    pd_model_free(m);
}

/* The net's own threads split each layer: the same results as one thread, for a mixed batch
 * (3 parts: uneven splits) and for the detector (2 parts: column splits of the short layers). */
static void test_net_threads(void **state)
{
    (void)state;
    if (getenv("PD_UNDER_VALGRIND")) { /* valgrind runs one thread at a time: spinning crawls */
        printf("test_net_threads: skipped under valgrind (ThreadSanitizer covers the pool)\n");
        return;
    }
    char msg[PD_MSG_MAX];
    pd_model *m;
    assert_int_equal(pd_model_load(test_env("PD_MODEL"), &m, msg), PD_OK);
    pd_net *net;
    assert_int_equal(pd_net_new(m, 3, PD_FACES_SIZE, &net, msg), PD_OK);
    const int size = 160, nc = 4;
    float *in = randv((size_t)PD_FACES_SIZE * PD_FACES_SIZE * 3);
    float *hw = randv(PD_FEATURES * nc), *hb = randv(nc), *s2 = pd_alloc_floats(1024);
    for (int i = 0; i < 1024; i++)
        s2[i] = 0.9f;
    struct pd_task t1 = {.size = size, .nclass = nc, .head_w = hw, .head_b = hb}, t2 = t1;
    t2.scale[pd_layer_pw(13)] = s2;
    const struct pd_task *tasks[3] = {&t1, &t2, &t1};
    float p1[3][4], p3[3][4], *o1[3] = {p1[0], p1[1], p1[2]}, *o3[3] = {p3[0], p3[1], p3[2]};
    float *s1 = pd_alloc_floats(PD_ANCHORS), *b1 = pd_alloc_floats(4 * PD_ANCHORS);
    float *sN = pd_alloc_floats(PD_ANCHORS), *bN = pd_alloc_floats(4 * PD_ANCHORS);
    assert_int_equal(pd_net_classify(net, 3, size, in, tasks, o1, NULL), PD_OK);
    assert_int_equal(pd_net_detect(net, in, NULL, s1, b1), PD_OK);
    assert_int_equal(pd_net_set_threads(net, 3, msg), PD_OK);
    assert_int_equal(pd_net_classify(net, 3, size, in, tasks, o3, NULL), PD_OK);
    assert_int_equal(pd_net_set_threads(net, 2, msg), PD_OK);
    assert_int_equal(pd_net_detect(net, in, NULL, sN, bN), PD_OK);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < nc; k++)
            assert_float_equal(p1[i][k], p3[i][k], 1e-5);
    for (int a = 0; a < PD_ANCHORS; a++) {
        assert_float_equal(s1[a], sN[a], 1e-5);
        for (int c = 0; c < 4; c++)
            assert_float_equal(b1[4 * a + c], bN[4 * a + c], 1e-4);
    }
    assert_int_equal(pd_net_set_threads(net, 0, msg), PD_RANGE);
    assert_int_equal(pd_net_set_threads(net, PD_NET_MAX_THREADS + 1, msg), PD_RANGE);
    free(in), free(hw), free(hb), free(s2), free(s1), free(b1), free(sN), free(bN);
    pd_net_free(net); /* stops the threads */
    pd_model_free(m);
}

static void test_model_load_errors(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    pd_model *m = (pd_model *)1;
    assert_int_equal(pd_model_load("/nonexistent", &m, msg), PD_NOTFOUND);
    assert_null(m);
    /* a valid safetensors file that is not a backbone */
    float v = 1;
    struct pd_st_tensor t = {
        .name = "x", .dtype = PD_DT_F32, .ndim = 1, .shape = {1}, .data = &v, .nbytes = 4};
    char path[] = "/tmp/pd_notmodel_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *meta[] = {"format", "patchd-backbone"};
    assert_int_equal(pd_st_write(path, &t, 1, meta, 1, msg), PD_OK);
    assert_int_equal(pd_model_load(path, &m, msg), PD_FORMAT);
    assert_non_null(strstr(msg, "lacks tensor"));
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_padding),
        cmocka_unit_test(test_layers_random),
        cmocka_unit_test(test_resize_tfjs),
        cmocka_unit_test(test_classify_batch),
        cmocka_unit_test(test_model_load_errors),
        cmocka_unit_test(test_dw_variants),
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_pw_packed),
        cmocka_unit_test(test_net_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The patch format: bit-identical round trip, forward equivalence, each invalid patch refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/st.h"
#include "../../patches/patch.h"
#include "../testenv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pd_model *model;
static const char *labels3[] = {"daisy", "rose", "tulip"};

static int setup(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    return pd_model_load(test_env("PD_MODEL"), &model, msg);
}

static int teardown(void **state)
{
    (void)state;
    pd_model_free(model);
    return 0;
}

static float *filled(size_t n, float base)
{
    float *v = pd_alloc_floats(n);
    for (size_t i = 0; i < n; i++)
        v[i] = base + 0.001f * (float)(i % 97);
    return v;
}

/* A spec touching every part: pw5 scale/bias, dw3 gamma/beta/kernel, a head. */
struct owned {
    float *s, *b, *g, *be, *k, *hw, *hb;
};
static struct pd_patch_spec full_spec(struct owned *o)
{
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    int pw = pd_layer_pw(5), dw = pd_layer_dw(3);
    size_t cp = (size_t)pd_layer_info(pw)->cout, cd = (size_t)pd_layer_info(dw)->cout;
    o->s = filled(cp, 0.9f), o->b = filled(cp, -0.1f);
    o->g = filled(cd, 0.5f), o->be = filled(cd, 0.2f), o->k = filled(9 * cd, -0.05f);
    o->hw = filled(PD_FEATURES * 3, -0.02f), o->hb = filled(3, 0.1f);
    s.kind = PD_PATCH_CLASSIFY;
    s.size = 96;
    s.nclass = 3;
    s.labels = labels3;
    s.scale[pw] = o->s, s.bias[pw] = o->b;
    s.scale[dw] = o->g, s.bias[dw] = o->be, s.kernel[dw] = o->k;
    s.head_w = o->hw, s.head_b = o->hb;
    s.training = "{\"kind\":\"sbdw\",\"epochs\":5}";
    return s;
}
static void free_owned(struct owned *o)
{
    free(o->s), free(o->b), free(o->g), free(o->be), free(o->k), free(o->hw), free(o->hb);
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct owned o;
    struct pd_patch_spec s = full_spec(&o);
    char msg[PD_MSG_MAX];
    pd_patch *p, *q;
    assert_int_equal(pd_patch_build(model, &s, &p, msg), PD_OK);
    assert_int_equal(pd_patch_parts(p), PD_PART_SCALE_BIAS | PD_PART_DEPTHWISE | PD_PART_HEAD);
    assert_int_equal(pd_patch_params(p), 2 * 256 + 2 * 128 + 9 * 128 + 1025 * 3);
    uint8_t *b1, *b2;
    size_t l1, l2;
    assert_int_equal(pd_patch_serialize(p, &b1, &l1, msg), PD_OK);
    int err = pd_patch_parse(model, b1, l1, &q, msg);
    if (err)
        print_error("%s\n", msg);
    assert_int_equal(err, PD_OK);
    assert_int_equal(pd_patch_serialize(q, &b2, &l2, msg), PD_OK);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1); /* bit-identical */
    const struct pd_patch_spec *qs = pd_patch_spec(q);
    assert_int_equal(qs->size, 96);
    assert_string_equal(qs->labels[2], "tulip");
    assert_string_equal(qs->training, s.training);
    assert_memory_equal(qs->kernel[pd_layer_dw(3)], o.k, 9 * 128 * sizeof(float));

    /* the forward pass sees the same task through either object */
    pd_net *net;
    assert_int_equal(pd_net_new(model, 1, 96, &net, msg), PD_OK);
    float *in = filled(96 * 96 * 3, -0.5f), pp[3], pq[3];
    float *ppp[1] = {pp}, *pqq[1] = {pq};
    const struct pd_task *tp[1] = {pd_patch_task(p)}, *tq[1] = {pd_patch_task(q)};
    assert_int_equal(pd_net_classify(net, 1, 96, in, tp, ppp, NULL), PD_OK);
    assert_int_equal(pd_net_classify(net, 1, 96, in, tq, pqq, NULL), PD_OK);
    assert_memory_equal(pp, pq, sizeof(pp));
    /* gamma/beta equal to the backbone's fold to the backbone's own scale/bias */
    struct pd_patch_spec id = s;
    int dw = pd_layer_dw(3);
    id.scale[dw] = pd_model_gamma(model, dw);
    id.bias[dw] = pd_model_beta(model, dw);
    pd_patch *r;
    assert_int_equal(pd_patch_build(model, &id, &r, msg), PD_OK);
    assert_memory_equal(pd_patch_task(r)->scale[dw], pd_model_scale(model, dw), 128 * 4);
    assert_memory_equal(pd_patch_task(r)->bias[dw], pd_model_bias(model, dw), 128 * 4);
    pd_patch_unref(r);
    free(in);
    pd_net_free(net);
    free(b1), free(b2);
    pd_patch_unref(p);
    pd_patch_unref(q);
    free_owned(&o);
}

/* Serialises a modified copy of the full patch's tensors/metadata and expects a refusal. */
static void expect_refused(const struct pd_st_tensor *ts, int n, const char *const *meta, int nm,
                           int want, const char *needle)
{
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX] = "";
    assert_int_equal(pd_st_serialize(ts, n, meta, nm, &buf, &len, msg), PD_OK);
    pd_patch *p = (pd_patch *)1;
    int err = pd_patch_parse(model, buf, len, &p, msg);
    if (err != want || !strstr(msg, needle))
        print_error("err %d '%s', want %d with '%s'\n", err, msg, want, needle);
    assert_int_equal(err, want);
    assert_null(p);
    assert_non_null(strstr(msg, needle));
    free(buf);
}

static void test_invalid(void **state)
{
    (void)state;
    float head_w[PD_FEATURES * 2] = {0}, head_b[2] = {0}, s64[64], s63[63], k[9 * 32];
    for (int i = 0; i < 64; i++)
        s64[i] = 1;
    for (int i = 0; i < 63; i++)
        s63[i] = 1;
    memset(k, 0, sizeof(k));
    struct pd_st_tensor hw = {.name = "head.weight",
                              .dtype = PD_DT_F32,
                              .ndim = 2,
                              .shape = {PD_FEATURES, 2},
                              .data = head_w,
                              .nbytes = sizeof(head_w)};
    struct pd_st_tensor hb = {.name = "head.bias",
                              .dtype = PD_DT_F32,
                              .ndim = 1,
                              .shape = {2},
                              .data = head_b,
                              .nbytes = 8};
    const char *sha = pd_model_sha256(model);
    const char *meta[] = {"format", "patchd-patch", "format_version", "1",      "backbone_sha256",
                          sha,      "kind",         "classification", "labels", "[\"a\",\"b\"]",
                          "parts",  "head"};
    struct pd_st_tensor base[2] = {hw, hb};
    /* the valid one first, so that each failure below is the one change */
    {
        uint8_t *buf;
        size_t len;
        char msg[PD_MSG_MAX];
        pd_patch *p;
        assert_int_equal(pd_st_serialize(base, 2, meta, 6, &buf, &len, msg), PD_OK);
        assert_int_equal(pd_patch_parse(model, buf, len, &p, msg), PD_OK);
        pd_patch_unref(p);
        free(buf);
    }
    const char *m2[12];
    memcpy(m2, meta, sizeof(meta));
    m2[5] = "0000000000000000000000000000000000000000000000000000000000000000";
    expect_refused(base, 2, m2, 6, PD_MISMATCH, "backbone");
    memcpy(m2, meta, sizeof(meta));
    m2[1] = "something-else";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "format");
    memcpy(m2, meta, sizeof(meta));
    m2[3] = "2";
    expect_refused(base, 2, m2, 6, PD_UNSUPPORTED, "format_version");
    memcpy(m2, meta, sizeof(meta));
    m2[7] = "segmentation";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "kind");
    memcpy(m2, meta, sizeof(meta));
    m2[9] = "[\"a\",\"b\",\"c\"]";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "head.weight");
    memcpy(m2, meta, sizeof(meta));
    m2[9] = "[\"a\",\"a\"]";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "twice");
    memcpy(m2, meta, sizeof(meta));
    m2[9] = "not json";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "labels");
    memcpy(m2, meta, sizeof(meta));
    m2[11] = "scale_bias,head";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "parts");
    memcpy(m2, meta, sizeof(meta));
    m2[10] = "colour";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "unknown metadata key 'colour'");
    expect_refused(base, 1, meta, 6, PD_FORMAT, "head.weight and head.bias");
    memcpy(m2, meta, sizeof(meta));
    m2[7] = "detection";
    expect_refused(base, 2, m2, 6, PD_FORMAT, "detection patch cannot");
    /* unknown tensor, named */
    struct pd_st_tensor extra[3] = {hw,
                                    hb,
                                    {.name = "layers.pw99.scale",
                                     .dtype = PD_DT_F32,
                                     .ndim = 1,
                                     .shape = {64},
                                     .data = s64,
                                     .nbytes = 256}};
    expect_refused(extra, 3, meta, 6, PD_FORMAT, "unknown tensor 'layers.pw99.scale'");
    extra[2].name = "layers.pw1.gamma";
    expect_refused(extra, 3, meta, 6, PD_FORMAT, "unknown tensor 'layers.pw1.gamma'");
    extra[2].name = "layers.pw1.weird";
    expect_refused(extra, 3, meta, 6, PD_FORMAT, "unknown tensor 'layers.pw1.weird'");
    /* wrong shape */
    extra[2] = (struct pd_st_tensor){.name = "layers.pw1.scale",
                                     .dtype = PD_DT_F32,
                                     .ndim = 1,
                                     .shape = {63},
                                     .data = s63,
                                     .nbytes = 252};
    memcpy(m2, meta, sizeof(meta));
    m2[11] = "scale_bias,head";
    expect_refused(extra, 3, m2, 6, PD_FORMAT, "expected F32 [64], found F32 [63]");
    extra[2] = (struct pd_st_tensor){.name = "layers.dw1.kernel",
                                     .dtype = PD_DT_F32,
                                     .ndim = 2,
                                     .shape = {9, 32},
                                     .data = k,
                                     .nbytes = sizeof(k)};
    m2[11] = "depthwise,head";
    expect_refused(extra, 3, m2, 6, PD_FORMAT, "expected F32 [3,3,32]");
    /* NaN and Inf */
    s64[5] = NAN;
    extra[2] = (struct pd_st_tensor){.name = "layers.pw1.scale",
                                     .dtype = PD_DT_F32,
                                     .ndim = 1,
                                     .shape = {64},
                                     .data = s64,
                                     .nbytes = 256};
    m2[11] = "scale_bias,head";
    expect_refused(extra, 3, m2, 6, PD_FORMAT, "NaN");
    s64[5] = INFINITY;
    expect_refused(extra, 3, m2, 6, PD_FORMAT, "infinite");
    /* not F32 */
    int32_t i64[64] = {0};
    extra[2] = (struct pd_st_tensor){.name = "layers.pw1.scale",
                                     .dtype = PD_DT_I32,
                                     .ndim = 1,
                                     .shape = {64},
                                     .data = i64,
                                     .nbytes = 256};
    expect_refused(extra, 3, m2, 6, PD_FORMAT, "found I32");
    /* too large, refused before parsing */
    pd_patch *p;
    char msg[PD_MSG_MAX];
    uint8_t tiny[16] = {0};
    assert_int_equal(pd_patch_parse(model, tiny, (size_t)PD_PATCH_MAX_BYTES + 1, &p, msg),
                     PD_TOOBIG);
    /* garbage */
    assert_int_equal(pd_patch_parse(model, tiny, sizeof(tiny), &p, msg), PD_FORMAT);
}

static void test_identity(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    pd_patch *p;
    assert_int_equal(pd_patch_new_identity(model, labels3, 3, 0, 7, &p, msg), PD_OK);
    assert_int_equal(pd_patch_parts(p), PD_PART_HEAD);
    assert_int_equal(pd_patch_task(p)->size, 224);
    assert_null(pd_patch_task(p)->scale[0]); /* the backbone's own, not a copy */
    pd_patch_unref(p);
    const char *bad[] = {"ok", ""};
    assert_int_equal(pd_patch_new_identity(model, bad, 2, 0, 7, &p, msg), PD_FORMAT);
    assert_non_null(strstr(msg, "label 1"));
}

/*
 * A `full` patch (its own conv0 and pw7 weights): serialised with the weights part and
 * bit-identical after a round trip; a batch mixing it with a head-only task gives each sample what
 * it gets alone (the pointwise GEMM splits into runs of equal weights); a weight on a depthwise
 * layer or of the wrong shape is refused.
 */
static void test_weights(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    int pw = pd_layer_pw(7);
    float *w0 = filled(27 * 32, -0.03f), *w7 = filled(512 * 512, -0.04f);
    float *hw = filled(PD_FEATURES * 3, -0.02f), *hb = filled(3, 0.1f);
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    s.kind = PD_PATCH_CLASSIFY;
    s.size = 64;
    s.nclass = 3;
    s.labels = labels3;
    s.weight[0] = w0, s.weight[pw] = w7;
    s.head_w = hw, s.head_b = hb;
    pd_patch *p, *q, *id;
    assert_int_equal(pd_patch_build(model, &s, &p, msg), PD_OK);
    assert_int_equal(pd_patch_parts(p), PD_PART_WEIGHTS | PD_PART_HEAD);
    assert_int_equal(pd_patch_params(p), 27 * 32 + 512 * 512 + 1025 * 3);
    uint8_t *b1, *b2;
    size_t l1, l2;
    assert_int_equal(pd_patch_serialize(p, &b1, &l1, msg), PD_OK);
    assert_int_equal(pd_patch_parse(model, b1, l1, &q, msg), PD_OK);
    assert_int_equal(pd_patch_serialize(q, &b2, &l2, msg), PD_OK);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    assert_memory_equal(pd_patch_spec(q)->weight[pw], w7, 512 * 512 * sizeof(float));
    assert_int_equal(pd_patch_new_identity(model, labels3, 3, 64, 7, &id, msg), PD_OK);

    pd_net *net;
    assert_int_equal(pd_net_new(model, 3, 64, &net, msg), PD_OK);
    float *in = filled(3 * 64 * 64 * 3, -0.5f), alone[3][3], mixed[3][3];
    const struct pd_task *tasks[3] = {pd_patch_task(q), pd_patch_task(id), pd_patch_task(q)};
    for (int i = 0; i < 3; i++) {
        float *o[1] = {alone[i]};
        assert_int_equal(
            pd_net_classify(net, 1, 64, in + (size_t)i * 64 * 64 * 3, &tasks[i], o, NULL), PD_OK);
    }
    float *o3[3] = {mixed[0], mixed[1], mixed[2]};
    assert_int_equal(pd_net_classify(net, 3, 64, in, tasks, o3, NULL), PD_OK);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++)
            assert_float_equal(alone[i][k], mixed[i][k], 1e-6);
    /* and the weights matter */
    assert_true(fabsf(alone[0][0] - alone[1][0]) > 1e-4f ||
                fabsf(alone[0][1] - alone[1][1]) > 1e-4f);

    /* refusals */
    struct pd_patch_spec bad = s;
    pd_patch *r;
    bad.weight[pd_layer_dw(7)] = w7;
    assert_int_equal(pd_patch_build(model, &bad, &r, msg), PD_FORMAT);
    assert_non_null(strstr(msg, "layers.dw7.weight"));
    struct pd_st_tensor t = {.name = "layers.pw7.weight",
                             .dtype = PD_DT_F32,
                             .ndim = 2,
                             .shape = {512, 511},
                             .data = w7,
                             .nbytes = 512 * 511 * 4};
    struct pd_st_tensor th[3] = {t,
                                 {.name = "head.weight",
                                  .dtype = PD_DT_F32,
                                  .ndim = 2,
                                  .shape = {PD_FEATURES, 3},
                                  .data = hw,
                                  .nbytes = PD_FEATURES * 3 * 4},
                                 {.name = "head.bias",
                                  .dtype = PD_DT_F32,
                                  .ndim = 1,
                                  .shape = {3},
                                  .data = hb,
                                  .nbytes = 12}};
    const char *meta[] = {"format",
                          "patchd-patch",
                          "format_version",
                          "1",
                          "backbone_sha256",
                          pd_model_sha256(model),
                          "kind",
                          "classification",
                          "labels",
                          "[\"daisy\",\"rose\",\"tulip\"]"};
    uint8_t *b3;
    size_t l3;
    assert_int_equal(pd_st_serialize(th, 3, meta, 5, &b3, &l3, msg), PD_OK);
    assert_int_equal(pd_patch_parse(model, b3, l3, &r, msg), PD_FORMAT);
    assert_non_null(strstr(msg, "layers.pw7.weight"));
    free(b3);
    free(in);
    pd_net_free(net);
    free(b1), free(b2);
    pd_patch_unref(p), pd_patch_unref(q), pd_patch_unref(id);
    free(w0), free(w7), free(hw), free(hb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_identity),
        cmocka_unit_test(test_weights),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * ops.h - the layers of the network as plain functions on NHWC float32 buffers.
 *
 * Layout: every activation is (N, H, W, C), C fastest. Convolution weights keep TensorFlow's
 * order: a full convolution is (K, K, Cin, Cout), a depthwise one (3, 3, C), a pointwise one
 * (Cin, Cout) - so the first two are GEMM-ready after im2col and the last is GEMM-ready as is.
 *
 * Padding is TensorFlow's 'SAME': the output is ceil(in / stride) and, when the total padding
 * is odd, the extra row and column go at the bottom and right (pd_same_pad gives the top/left).
 *
 * Every op computes y = act(scale[c] * conv(x)[c] + bias[c]) with a per-sample scale and bias
 * (arrays of n pointers): this is the patch hook. A batch may mix tasks, so one GEMM serves
 * every sample of a pointwise layer while scales, biases and depthwise kernels stay per sample.
 *
 * Threads: the functions are reentrant; they write only y and the caller's scratch.
 */
#ifndef PD_OPS_H
#define PD_OPS_H

#include "pd.h"

enum pd_act {
    PD_ACT_NONE,
    PD_ACT_RELU6,
};

/* Output size of a 'SAME' convolution. */
static inline int pd_same_out(int in, int stride)
{
    return (in + stride - 1) / stride;
}

/* Top (or left) padding of a 'SAME' convolution; the bottom gets the rest. */
static inline int pd_same_pad(int in, int k, int stride)
{
    int total = (pd_same_out(in, stride) - 1) * stride + k - in;
    return total > 0 ? total / 2 : 0;
}

/*
 * The single GEMM entry point: C (M, N) = A (M, K) * B (K, N), row-major, C overwritten.
 * Wraps cblas_sgemm so that every matrix product of the network goes through one place.
 */
void pd_gemm(int m, int n, int k, const float *a, const float *b, float *c);

/* y[i] = act(scale[c] * y[i] + bias[c]) over rows of c channels, for one sample. */
void pd_scale_bias_act(float *y, size_t rows, int c, const float *scale, const float *bias,
                       enum pd_act act);

/*
 * Full KxK convolution, stride s: x (n, h, w, cin) -> y (n, oh, ow, cout).
 * col is scratch of pd_conv_col_floats() floats (unused when k == 1 and s == 1).
 */
size_t pd_conv_col_floats(int n, int h, int w, int cin, int k, int s);
void pd_op_conv(const float *x, int n, int h, int w, int cin, const float *wt, int k, int s,
                int cout, const float *const *scale, const float *const *bias, enum pd_act act,
                float *y, float *col);

/* Depthwise 3x3, stride s, per-sample kernels wt[i] (3, 3, c): x (n, h, w, c) -> y. */
void pd_op_dw(const float *x, int n, int h, int w, int c, const float *const *wt, int s,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y);

/* Pointwise 1x1: x (n, h, w, cin) -> y (n, h, w, cout), one GEMM for the whole batch. */
void pd_op_pw(const float *x, int n, int h, int w, int cin, const float *wt, int cout,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y);

/*
 * Parts of the three forward ops, so that one op can be split across threads (each part writes a
 * disjoint region of y). conv: output pixels [r0, r1) of the flattened (n, oh, ow), col holds the
 * part's own im2col rows (at least (r1 - r0) * k * k * cin floats). dw: output rows [q0, q1) of
 * the flattened (n, oh). pw: rows [r0, r1) of the (rows, cout) output, hw rows per sample, and
 * columns [c0, c1).
 */
void pd_op_conv_part(const float *x, int n, int h, int w, int cin, const float *wt, int k, int s,
                     int cout, const float *const *scale, const float *const *bias, enum pd_act act,
                     float *y, float *col, int r0, int r1);
void pd_op_dw_part(const float *x, int n, int h, int w, int c, const float *const *wt, int s,
                   const float *const *scale, const float *const *bias, enum pd_act act, float *y,
                   int q0, int q1);
void pd_op_pw_part(const float *x, int rows, int hw, int cin, const float *wt, int cout,
                   const float *const *scale, const float *const *bias, enum pd_act act, float *y,
                   int r0, int r1, int c0, int c1);

/*
 * The pointwise part against weights packed at load: pd_pw_pack writes the (cin, cout) weights
 * as cout/16 strips of (cin, 16), into cin * cout floats. Only where pd_pw_packed_ok() (AVX2+FMA
 * and cout a multiple of 16); columns [c0, c1) in multiples of 16. w is the maps' width (hw / w
 * rows each): when it is even the pixels are taken in patches of 3 rows x 2 columns, and [r0, r1)
 * are positions in that order, not rows (parts that cover [0, rows) together still compute every
 * row once); w = 0 takes them in order. scratch holds PD_PW_SCRATCH_FLOATS floats, one per
 * concurrent part. The result is the same as pd_op_pw_part's up to the order of the additions.
 */
#define PD_PW_SCRATCH_FLOATS (198 * 512 + 8 + 33 * 512)
int pd_pw_packed_ok(int cin, int cout);
void pd_pw_pack(const float *w, int cin, int cout, float *wp);
void pd_op_pw_packed_part(const float *x, int rows, int hw, int w, int cin, const float *wp,
                          int cout, const float *const *scale, const float *const *bias,
                          enum pd_act act, float *y, int r0, int r1, int c0, int c1,
                          float *scratch);

/* For the tests: one sample's depthwise forward through a chosen implementation (0 the portable
 * C, 1 AVX2+FMA); -1 when this CPU lacks it. */
int pd__op_dw_variant(int variant, const float *x, int h, int w, int c, const float *k, int s,
                      const float *scale, const float *bias, enum pd_act act, float *y);

/* ---- backward (training) ----
 * Shapes as in the forward functions. "Accumulates" means += into the caller's buffer, which
 * the caller zeroes once per optimisation step; "writes" overwrites. */

/*
 * Backward of y = act(scale * z + bias) for one sample: given z and dy, writes dz and
 * accumulates dscale (sum of dy' * z) and dbias (sum of dy'), where dy' is dy masked by the
 * ReLU6's open interval (0, 6). dz may alias dy.
 */
void pd_scale_bias_act_backward(const float *z, const float *dy, size_t rows, int c,
                                const float *scale, const float *bias, enum pd_act act, float *dz,
                                float *dscale, float *dbias);

/* Depthwise 3x3 backward for one sample's kernel k: writes dx (h, w, c) from dz (oh, ow, c) and,
 * when dk is not NULL, accumulates the kernel gradient (3, 3, c) from x. */
void pd_op_dw_backward(const float *x, int h, int w, int c, const float *k, int s, const float *dz,
                       float *dx, float *dk);

/* Pointwise backward over the batch: writes dx = dz . W^T (n*h*w, cin); when dw is not NULL
 * accumulates dW += x^T . dz (cin, cout). */
void pd_op_pw_backward(const float *x, int rows, int cin, const float *wt, int cout,
                       const float *dz, float *dx, float *dw);

/* Full convolution weight gradient: accumulates dW (k, k, cin, cout) += im2col(x)^T . dz. col is
 * scratch of pd_conv_col_floats() floats. */
void pd_op_conv_backward_w(const float *x, int n, int h, int w, int cin, int k, int s, int cout,
                           const float *dz, float *dw, float *col);

#endif

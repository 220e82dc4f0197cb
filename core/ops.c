#include "ops.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

void pd_gemm(int m, int n, int k, const float *a, const float *b, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
}

/*
 * x86-64: the depthwise convolution and the scale/bias/activation pass have AVX2+FMA versions,
 * chosen at run time (__builtin_cpu_supports), with the portable C below as the fallback and the
 * reference; the two agree within 1e-5 (tests/core/test_ops.c).
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PD_X86 1
#define AVX2   __attribute__((target("avx2,fma")))
static int have_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int have_avx2(void)
{
    return 0;
}
#endif

static void sba_row_c(float *row, const float *scale, const float *bias, int c0, int c1,
                      enum pd_act act)
{
    if (act == PD_ACT_RELU6) {
        for (int j = c0; j < c1; j++) {
            float v = scale[j] * row[j] + bias[j];
            v = v < 0.0f ? 0.0f : v;
            row[j] = v > 6.0f ? 6.0f : v;
        }
    } else {
        for (int j = c0; j < c1; j++)
            row[j] = scale[j] * row[j] + bias[j];
    }
}

#ifdef PD_X86
/* act(v * scale + bias) for 8 channels: the epilogue every direct kernel applies in registers. */
AVX2 static inline __m256 sba8(__m256 v, const float *scale, const float *bias, enum pd_act act)
{
    v = _mm256_fmadd_ps(v, _mm256_loadu_ps(scale), _mm256_loadu_ps(bias));
    if (act == PD_ACT_RELU6)
        v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
    return v;
}

AVX2 static void sba_row_avx2(float *row, const float *scale, const float *bias, int c0, int c1,
                              enum pd_act act)
{
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f);
    int j = c0;
    for (; j + 8 <= c1; j += 8) {
        __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(scale + j), _mm256_loadu_ps(row + j),
                                   _mm256_loadu_ps(bias + j));
        if (act == PD_ACT_RELU6)
            v = _mm256_min_ps(_mm256_max_ps(v, zero), six);
        _mm256_storeu_ps(row + j, v);
    }
    sba_row_c(row, scale, bias, j, c1, act);
}
#endif

/* act(scale * y + bias) on rows [r0, r1) (hw rows per sample) and columns [c0, c1) of y. */
static void epilogue(float *y, int r0, int r1, int hw, int cout, int c0, int c1,
                     const float *const *scale, const float *const *bias, enum pd_act act)
{
    void (*row_fn)(float *, const float *, const float *, int, int, enum pd_act) = sba_row_c;
#ifdef PD_X86
    if (have_avx2())
        row_fn = sba_row_avx2;
#endif
    for (int r = r0; r < r1; r++)
        row_fn(y + (size_t)r * cout, scale[r / hw], bias[r / hw], c0, c1, act);
}

void pd_scale_bias_act(float *y, size_t rows, int c, const float *scale, const float *bias,
                       enum pd_act act)
{
    const float *s[1] = {scale}, *b[1] = {bias};
    epilogue(y, 0, (int)rows, (int)rows, c, 0, c, s, b, act);
}

size_t pd_conv_col_floats(int n, int h, int w, int cin, int k, int s)
{
    if (k == 1 && s == 1)
        return 0;
    return (size_t)n * (size_t)pd_same_out(h, s) * (size_t)pd_same_out(w, s) * (size_t)(k * k) *
           (size_t)cin;
}

/* im2col of output pixels [r0, r1) (flattened over n, oh, ow): one row of (ky, kx, cin) each,
 * zeros where the padding is */
static void im2col(const float *x, int h, int w, int cin, int k, int s, int r0, int r1, float *col)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int pt = pd_same_pad(h, k, s), pl = pd_same_pad(w, k, s);
    const int kk = k * k * cin;
    for (int r = r0; r < r1; r++) {
        const int i = r / (oh * ow), oy = r / ow % oh, ox = r % ow;
        const float *xi = x + (size_t)i * h * w * cin;
        float *row = col + (size_t)(r - r0) * kk;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * s + ky - pt;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * s + kx - pl;
                float *dst = row + (ky * k + kx) * cin;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                    memset(dst, 0, sizeof(float) * (size_t)cin);
                else
                    memcpy(dst, xi + ((size_t)iy * w + ix) * cin, sizeof(float) * (size_t)cin);
            }
        }
    }
}

#ifdef PD_X86
/*
 * A direct convolution for few input channels and at most 64 outputs (conv0: 3x3x3 -> 32): each
 * output pixel's channels stay in up to 8 vector accumulators while the taps are broadcast, fused
 * with scale/bias/act. im2col and a GEMM with K = 27 spend most of their time moving memory.
 */
AVX2 static inline __attribute__((always_inline)) void
conv_direct_nv(const float *x, int h, int w, int cin, const float *wt, int k, int s, const int nv,
               const float *const *scale, const float *const *bias, enum pd_act act, float *y,
               int r0, int r1)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s), cout = 8 * nv;
    const int pt = pd_same_pad(h, k, s), pl = pd_same_pad(w, k, s);
    /* r's pixel (sample i, oy, ox), counted up from r0's rather than divided out per pixel */
    int i = r0 / (oh * ow), oy = r0 / ow % oh, ox = r0 % ow - 1;
    for (int r = r0; r < r1; r++) {
        if (++ox == ow) {
            ox = 0;
            if (++oy == oh)
                oy = 0, i++;
        }
        const float *xi = x + (size_t)i * h * w * cin;
        const int iy0 = oy * s - pt, ix0 = ox * s - pl;
        if (nv <= 4 && r + 1 < r1 && ox + 1 < ow && iy0 >= 0 && iy0 + k <= h && ix0 >= 0 &&
            ix0 + s + k <= w) {
            /* two neighbouring pixels with all their taps inside: each weight vector loaded once
             * for both (the same additions in the same order as one at a time) */
            __m256 a0[4], a1[4];
            for (int v = 0; v < nv; v++)
                a0[v] = a1[v] = _mm256_setzero_ps();
            const float *p0 = xi + ((size_t)iy0 * w + ix0) * cin, *p1 = p0 + (size_t)s * cin;
            /* unrolled by conv0's 3 (taps and channels): a classification pass at 224 took
             * 0.991-0.995 of the time (two nets alternating, 300 passes) */
#pragma GCC unroll 3
            for (int ky = 0; ky < k; ky++)
#pragma GCC unroll 3
                for (int kx = 0; kx < k; kx++)
#pragma GCC unroll 3
                    for (int ci = 0; ci < cin; ci++) {
                        const size_t o = ((size_t)ky * w + kx) * cin + ci;
                        const __m256 b0 = _mm256_broadcast_ss(p0 + o),
                                     b1 = _mm256_broadcast_ss(p1 + o);
                        const float *wk = wt + ((size_t)(ky * k + kx) * cin + ci) * cout;
                        for (int v = 0; v < nv; v++) {
                            const __m256 wv = _mm256_loadu_ps(wk + 8 * v);
                            a0[v] = _mm256_fmadd_ps(b0, wv, a0[v]);
                            a1[v] = _mm256_fmadd_ps(b1, wv, a1[v]);
                        }
                    }
            const float *sc = scale[i], *bi = bias[i];
            float *out = y + (size_t)r * cout;
            for (int v = 0; v < nv; v++) {
                _mm256_storeu_ps(out + 8 * v, sba8(a0[v], sc + 8 * v, bi + 8 * v, act));
                _mm256_storeu_ps(out + cout + 8 * v, sba8(a1[v], sc + 8 * v, bi + 8 * v, act));
            }
            r++, ox++;
            continue;
        }
        __m256 acc[8];
        for (int v = 0; v < nv; v++)
            acc[v] = _mm256_setzero_ps();
        for (int ky = 0; ky < k; ky++) {
            const int iy = oy * s + ky - pt;
            if (iy < 0 || iy >= h)
                continue;
            for (int kx = 0; kx < k; kx++) {
                const int ix = ox * s + kx - pl;
                if (ix < 0 || ix >= w)
                    continue;
                const float *px = xi + ((size_t)iy * w + ix) * cin;
                const float *wk = wt + (size_t)(ky * k + kx) * cin * cout;
                for (int ci = 0; ci < cin; ci++) {
                    const __m256 b = _mm256_broadcast_ss(px + ci);
                    for (int v = 0; v < nv; v++)
                        acc[v] =
                            _mm256_fmadd_ps(b, _mm256_loadu_ps(wk + ci * cout + 8 * v), acc[v]);
                }
            }
        }
        const float *sc = scale[i], *bi = bias[i];
        float *out = y + (size_t)r * cout;
        for (int v = 0; v < nv; v++)
            _mm256_storeu_ps(out + 8 * v, sba8(acc[v], sc + 8 * v, bi + 8 * v, act));
    }
}

/* nv, the accumulators, a constant in each instance: they stay in registers */
AVX2 static void conv_direct_avx2(const float *x, int h, int w, int cin, const float *wt, int k,
                                  int s, int cout, const float *const *scale,
                                  const float *const *bias, enum pd_act act, float *y, int r0,
                                  int r1)
{
    switch (cout / 8) {
#define NV(n)                                                                                      \
    case n:                                                                                        \
        conv_direct_nv(x, h, w, cin, wt, k, s, n, scale, bias, act, y, r0, r1);                    \
        break;
        NV(1) NV(2) NV(3) NV(4) NV(5) NV(6) NV(7) NV(8)
#undef NV
    }
}
#endif

void pd_op_conv_part(const float *x, int n, int h, int w, int cin, const float *wt, int k, int s,
                     int cout, const float *const *scale, const float *const *bias, enum pd_act act,
                     float *y, float *col, int r0, int r1)
{
    (void)n;
#ifdef PD_X86
    if (cin <= 4 && cout % 8 == 0 && cout <= 64 && have_avx2()) {
        conv_direct_avx2(x, h, w, cin, wt, k, s, cout, scale, bias, act, y, r0, r1);
        return;
    }
#endif
    const int hw = pd_same_out(h, s) * pd_same_out(w, s), kk = k * k * cin;
    const float *a = x + (size_t)r0 * cin;
    if (k != 1 || s != 1) {
        im2col(x, h, w, cin, k, s, r0, r1, col);
        a = col;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, cout, kk, 1.0f, a, kk, wt, cout,
                0.0f, y + (size_t)r0 * cout, cout);
    epilogue(y, r0, r1, hw, cout, 0, cout, scale, bias, act);
}

void pd_op_conv(const float *x, int n, int h, int w, int cin, const float *wt, int k, int s,
                int cout, const float *const *scale, const float *const *bias, enum pd_act act,
                float *y, float *col)
{
    pd_op_conv_part(x, n, h, w, cin, wt, k, s, cout, scale, bias, act, y, col, 0,
                    n * pd_same_out(h, s) * pd_same_out(w, s));
}

/* One depthwise output row oy of one sample, channels [c0, c1), fused with scale/bias/act. */
static void dw_row_c(const float *x, int h, int w, int c, const float *k, int s, const float *scale,
                     const float *bias, enum pd_act act, float *y, int oy, int c0)
{
    const int ow = pd_same_out(w, s), pt = pd_same_pad(h, 3, s), pl = pd_same_pad(w, 3, s);
    for (int ox = 0; ox < ow; ox++) {
        float *out = y + ((size_t)oy * ow + ox) * c;
        for (int j = c0; j < c; j++)
            out[j] = 0.0f;
        for (int ky = 0; ky < 3; ky++) {
            int iy = oy * s + ky - pt;
            if (iy < 0 || iy >= h)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int ix = ox * s + kx - pl;
                if (ix < 0 || ix >= w)
                    continue;
                const float *in = x + ((size_t)iy * w + ix) * c;
                const float *kv = k + (ky * 3 + kx) * c;
                for (int j = c0; j < c; j++)
                    out[j] += in[j] * kv[j];
            }
        }
        sba_row_c(out, scale, bias, c0, c, act);
    }
}

#ifdef PD_X86
/* Outputs ox .. ox + n - 1 of a row (n <= 4; their columns from ix0 on; rows[ky] NULL for a row
 * above or below the image), channels [0, c8): the columns the outputs share are loaded once,
 * and each output sums its taps in the order (ky, kx). edge: columns outside [0, w) are skipped
 * (the pixels at the ends of a row); otherwise they are all inside. */
AVX2 static inline __attribute__((always_inline)) void
dw_group_avx2(const int n, const int s, const int edge, const float *const *rows, int w, int c,
              int c8, const float *k, const float *scale, const float *bias, enum pd_act act,
              float *yo, int ox, int ix0)
{
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f);
    for (int cb = 0; cb < c8; cb += 8) {
        __m256 a[4];
        for (int o = 0; o < n; o++)
            a[o] = _mm256_setzero_ps();
        for (int ky = 0; ky < 3; ky++) {
            if (!rows[ky])
                continue;
            const __m256 k0 = _mm256_loadu_ps(k + (3 * ky) * c + cb);
            const __m256 k1 = _mm256_loadu_ps(k + (3 * ky + 1) * c + cb);
            const __m256 k2 = _mm256_loadu_ps(k + (3 * ky + 2) * c + cb);
            const float *p = rows[ky] + (size_t)ix0 * c + cb;
#pragma GCC unroll 16
            for (int j = 0; j < (n - 1) * s + 3; j++) { /* column j feeds output o at tap j - o*s */
                if (edge && (ix0 + j < 0 || ix0 + j >= w))
                    continue;
                const __m256 v = _mm256_loadu_ps(p + (size_t)j * c);
#pragma GCC unroll 4
                for (int o = 0; o < n; o++) {
                    const int kx = j - o * s;
                    if (kx >= 0 && kx <= 2)
                        a[o] = _mm256_fmadd_ps(v, kx == 0 ? k0 : kx == 1 ? k1 : k2, a[o]);
                }
            }
        }
        const __m256 vs = _mm256_loadu_ps(scale + cb), vb = _mm256_loadu_ps(bias + cb);
        for (int o = 0; o < n; o++) {
            __m256 r = _mm256_fmadd_ps(a[o], vs, vb);
            if (act == PD_ACT_RELU6)
                r = _mm256_min_ps(_mm256_max_ps(r, zero), six);
            _mm256_storeu_ps(yo + (size_t)(ox + o) * c + cb, r);
        }
    }
}

/* Interior outputs [ox, hi) of a row, four at a time, then two, then one. */
AVX2 static inline __attribute__((always_inline)) void
dw_interior_avx2(const int s, const float *const *rows, int w, int c, int c8, const float *k,
                 const float *scale, const float *bias, enum pd_act act, float *yo, int ox, int hi,
                 int pl)
{
    for (; ox + 4 <= hi; ox += 4)
        dw_group_avx2(4, s, 0, rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
    for (; ox + 2 <= hi; ox += 2)
        dw_group_avx2(2, s, 0, rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
    for (; ox < hi; ox++)
        dw_group_avx2(1, s, 0, rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
}

/* One output with its columns checked (a single output's columns do not depend on s). */
AVX2 static void dw_edge_avx2(const float *const *rows, int w, int c, int c8, const float *k,
                              const float *scale, const float *bias, enum pd_act act, float *yo,
                              int ox, int ix0)
{
    dw_group_avx2(1, 1, 1, rows, w, c, c8, k, scale, bias, act, yo, ox, ix0);
}

/*
 * The same with 8 channels per vector, fused with scale/bias/act. The row goes pixel by pixel,
 * each pixel (or group of four interior pixels) through every channel block before the next.
 * The previous order swept the row once per channel block, that block's 9 taps in registers,
 * reading three rows 32 bytes per pixel (pixels 2 KB apart at 512 channels); this one gives the
 * same sums to the bit and a whole classification pass at 224 took 0.963 of the time (two nets
 * alternating pass by pass, 300 passes, twice), faces 0.983-0.985. Channels past the last
 * multiple of 8 go to dw_row_c.
 */
AVX2 static void dw_row_avx2(const float *x, int h, int w, int c, const float *k, int s,
                             const float *scale, const float *bias, enum pd_act act, float *y,
                             int oy)
{
    const int ow = pd_same_out(w, s), pt = pd_same_pad(h, 3, s), pl = pd_same_pad(w, 3, s);
    const float *rows[3];
    for (int ky = 0; ky < 3; ky++) {
        int iy = oy * s + ky - pt;
        rows[ky] = iy >= 0 && iy < h ? x + (size_t)iy * w * c : NULL;
    }
    const int c8 = c & ~7;
    float *yo = y + (size_t)oy * ow * c;
    int lo = (pl + s - 1) / s, hi = ow; /* interior: ox * s - pl >= 0 and ox * s - pl + 2 < w */
    while (hi > lo && (hi - 1) * s - pl + 2 >= w)
        hi--;
    lo = lo < hi ? lo : hi;
    for (int ox = 0; ox < lo; ox++)
        dw_edge_avx2(rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
    if (s == 1)
        dw_interior_avx2(1, rows, w, c, c8, k, scale, bias, act, yo, lo, hi, pl);
    else if (s == 2)
        dw_interior_avx2(2, rows, w, c, c8, k, scale, bias, act, yo, lo, hi, pl);
    else
        for (int ox = lo; ox < hi; ox++)
            dw_edge_avx2(rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
    for (int ox = hi; ox < ow; ox++)
        dw_edge_avx2(rows, w, c, c8, k, scale, bias, act, yo, ox, ox * s - pl);
    if (c8 < c)
        dw_row_c(x, h, w, c, k, s, scale, bias, act, y, oy, c8);
}
#endif

int pd__op_dw_variant(int variant, const float *x, int h, int w, int c, const float *k, int s,
                      const float *scale, const float *bias, enum pd_act act, float *y)
{
    if (variant == 1 && !have_avx2())
        return -1;
    for (int oy = 0; oy < pd_same_out(h, s); oy++) {
#ifdef PD_X86
        if (variant == 1) {
            dw_row_avx2(x, h, w, c, k, s, scale, bias, act, y, oy);
            continue;
        }
#endif
        dw_row_c(x, h, w, c, k, s, scale, bias, act, y, oy, 0);
    }
    return 0;
}

void pd_op_dw_part(const float *x, int n, int h, int w, int c, const float *const *wt, int s,
                   const float *const *scale, const float *const *bias, enum pd_act act, float *y,
                   int q0, int q1)
{
    (void)n;
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int fast = have_avx2();
    for (int q = q0; q < q1; q++) {
        const int i = q / oh, oy = q % oh;
        const float *xi = x + (size_t)i * h * w * c;
        float *yi = y + (size_t)i * oh * ow * c;
#ifdef PD_X86
        if (fast) {
            dw_row_avx2(xi, h, w, c, wt[i], s, scale[i], bias[i], act, yi, oy);
            continue;
        }
#endif
        (void)fast;
        dw_row_c(xi, h, w, c, wt[i], s, scale[i], bias[i], act, yi, oy, 0);
    }
}

void pd_op_dw(const float *x, int n, int h, int w, int c, const float *const *wt, int s,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y)
{
    pd_op_dw_part(x, n, h, w, c, wt, s, scale, bias, act, y, 0, n * pd_same_out(h, s));
}

#ifdef PD_X86
/*
 * The pointwise layer as a direct 1x1 convolution: tiles of 6 pixels x 16 output channels in 12
 * vector accumulators, each step broadcasting one input value per pixel and loading 16 weights.
 * The activations are already rows of Cin floats and each weight row segment is one cache line,
 * so nothing is packed; the scale/bias/act is applied to the tile in registers before the only
 * store, so there is no zeroing pass and no second pass over the output.
 */
AVX2 static inline __attribute__((always_inline)) void
pw_tile(const float *x, int cin, const float *w, int cout, int r, const int nr, int hw, int n0,
        const float *const *scale, const float *const *bias, enum pd_act act, float *y)
{
    __m256 acc[6][2];
    for (int i = 0; i < nr; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float *xr = x + (size_t)r * cin;
    const float *wk = w + n0;
    for (int k = 0; k < cin; k++, wk += cout) {
        const __m256 b0 = _mm256_loadu_ps(wk), b1 = _mm256_loadu_ps(wk + 8);
        for (int i = 0; i < nr; i++) {
            const __m256 a = _mm256_broadcast_ss(xr + (size_t)i * cin + k);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < nr; i++) {
        const int smp = (r + i) / hw;
        const float *sc = scale[smp] + n0, *bi = bias[smp] + n0;
        float *out = y + (size_t)(r + i) * cout + n0;
        for (int h = 0; h < 2; h++)
            _mm256_storeu_ps(out + 8 * h, sba8(acc[i][h], sc + 8 * h, bi + 8 * h, act));
    }
}

/* Above this many input channels OpenBLAS's packed kernels win (measured per layer). */
#define PW_DIRECT_MAX_CIN 128

AVX2 static void pw_direct_avx2(const float *x, int hw, int cin, const float *w, int cout,
                                const float *const *scale, const float *const *bias,
                                enum pd_act act, float *y, int r0, int r1, int c0, int c1)
{
    /* rows in chunks whose inputs stay in L2 while every 16-channel strip of the weights (at
     * most 128 x 16 floats, in L1) passes over them */
    int chunk = 32768 / cin;
    chunk = chunk < 6 ? 6 : chunk - chunk % 6;
    for (int a = r0; a < r1; a += chunk) {
        const int b = a + chunk < r1 ? a + chunk : r1;
        for (int n0 = c0; n0 < c1; n0 += 16) {
            int r = a;
            for (; r + 6 <= b; r += 6)
                pw_tile(x, cin, w, cout, r, 6, hw, n0, scale, bias, act, y);
            for (; r < b; r++) /* the last rows, one at a time */
                pw_tile(x, cin, w, cout, r, 1, hw, n0, scale, bias, act, y);
        }
    }
}
#endif

/*
 * The pointwise layer against weights packed once at load (pd_pw_pack): cout/16 strips, each
 * (cin, 16) contiguous, so a strip's rows are whole cache lines read in order. Blocks of PW_MC
 * pixels (in the order of struct pw_order) are packed as panels of 6 pixels x PW_KC input
 * channels, interleaved (6 values per channel), and a channel that is zero in all six pixels is
 * left out of the panel: after ReLU6 a fifth to a third of them are (measured on photos, pw5 to
 * pw13), and 0 * w adds nothing, so the result is bit for bit the dense product's (for finite
 * weights) with that much less work. The 6x16 kernel then runs over the panel's list of
 * channels, gathering the weight rows by index.
 */
#define PW_MR 6 /* rows per panel: 12 accumulators, 2 weight vectors, 1 broadcast */
#define PW_MC (PW_MR * (200 / PW_MR)) /* rows per block: about 200 KB of packed inputs at PW_KC */
#define PW_KC 256 /* input channels per block: a weight strip of 16 KB stays in L1 */
/* When the part's rows fit in one block (classification's 14x14 and 7x7 layers), blocks of 512
 * input channels: half as many passes of the output through memory, and a pass at 224 took
 * 0.983-0.993 of the time at one thread, 0.973-0.989 at two (two nets alternating, 300 passes);
 * with several blocks of rows (faces at 512) 512 was 0.5-0.9% slower. */
#define PW_KC1 512
_Static_assert(PD_PW_SCRATCH_FLOATS == PW_MC * PW_KC1 + 8 + PW_MC / PW_MR * PW_KC1, "scratch size");

int pd_pw_packed_ok(int cin, int cout)
{
    return have_avx2() && cout % 16 == 0 && cin >= 1;
}

void pd_pw_pack(const float *w, int cin, int cout, float *wp)
{
    for (int s = 0; s < cout / 16; s++)
        for (int k = 0; k < cin; k++)
            memcpy(wp + ((size_t)s * cin + k) * 16, w + (size_t)k * cout + s * 16,
                   16 * sizeof(float));
}

#ifdef PD_X86
/* Packs rows [r, r + nr) (nr <= 6, missing rows as zeros), channels [k0, k0 + kc), of x into
 * ap as (count, 6) keeping only channels not zero in every row; their offsets into a weight
 * strip (16 * k) go to idx. Returns count. Eight channels at a time: the 6 rows' vectors are
 * transposed to one vector per channel, each stored at the next free slot (8 floats: ap needs 2
 * floats of room past the end) and the slot kept when the channel is not all zero, without a
 * branch. */
AVX2 static int pw_pack_panel(const float *x, int cin, const int *ri, int nr, int k0, int kc,
                              float *ap, int *idx)
{
    const float *row[PW_MR];
    for (int i = 0; i < PW_MR; i++)
        row[i] = x + (size_t)ri[i < nr ? i : 0] * cin + k0;
    const __m256 z = _mm256_setzero_ps();
    int n = 0, k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; i++)
            v[i] = i < nr && i < PW_MR ? _mm256_loadu_ps(row[i] + k) : z;
        __m256 nz = _mm256_cmp_ps(v[0], z, _CMP_NEQ_UQ);
        for (int i = 1; i < PW_MR; i++)
            nz = _mm256_or_ps(nz, _mm256_cmp_ps(v[i], z, _CMP_NEQ_UQ));
        const unsigned keep = (unsigned)_mm256_movemask_ps(nz);
        /* 8x8 transpose of rows v0..v7 (zeros past the panel) */
        const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
        const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
        const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
        const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
        const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
        const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
        const __m256 c[8] = {
            _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
            _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
            _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
            _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
        for (int j = 0; j < 8; j++) {
            _mm256_storeu_ps(ap + PW_MR * n, c[j]);
            idx[n] = 16 * (k0 + k + j);
            n += (int)(keep >> j & 1);
        }
    }
    for (; k < kc; k++) { /* the last channels (kc not a multiple of 8) */
        float *a = ap + PW_MR * n;
        int any = 0;
        for (int i = 0; i < PW_MR; i++) {
            a[i] = i < nr ? row[i][k] : 0.0f;
            any |= a[i] != 0.0f;
        }
        idx[n] = 16 * (k0 + k);
        n += any;
    }
    return n;
}

/* A panel's rows: where each goes in y (row ri[i], cout floats a row) and its sample's scale and
 * bias (rs[i], rb[i], from channel 0). */
struct pw_rows {
    float *y;
    int cout;
    const int *ri;
    const float *const *rs, *const *rb;
};

/* One tile of mr <= PW_MR rows (a constant in each instance, so the accumulators stay in
 * registers), the 16 columns from n0: each row's output in y = [itself +] panel . strip, and on
 * the last channel block the scale/bias/act of the row's sample. */
AVX2 static inline __attribute__((always_inline)) void
pw_tile_rows(const int mr, int n, const float *a, const int *idx, const float *b,
             const struct pw_rows *pr, int n0, int first, int last, enum pd_act act)
{
    __m256 acc[PW_MR][2];
    float *cp[PW_MR];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        cp[i] = pr->y + (size_t)pr->ri[i] * pr->cout + n0;
        acc[i][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(cp[i]);
        acc[i][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(cp[i] + 8);
    }
    for (int t = 0; t < n; t++, a += PW_MR) {
        const float *w = b + idx[t];
        const __m256 b0 = _mm256_load_ps(w), b1 = _mm256_load_ps(w + 8);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m256 v = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(v, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(v, b1, acc[i][1]);
        }
    }
    if (last) {
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++)
            for (int h = 0; h < 2; h++)
                acc[i][h] = sba8(acc[i][h], pr->rs[i] + n0 + 8 * h, pr->rb[i] + n0 + 8 * h, act);
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        _mm256_storeu_ps(cp[i], acc[i][0]);
        _mm256_storeu_ps(cp[i] + 8, acc[i][1]);
    }
}

/* A block's last panel may have fewer rows: a kernel of that height, not a padded tile. */
AVX2 static void pw_packed_tile(int nr, int n, const float *a, const int *idx, const float *b,
                                const struct pw_rows *pr, int n0, int first, int last,
                                enum pd_act act)
{
    switch (nr) {
#define TILE(r)                                                                                    \
    case r:                                                                                        \
        pw_tile_rows(r, n, a, idx, b, pr, n0, first, last, act);                                   \
        break;
        TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
#undef TILE
    }
}

/*
 * The order in which the rows (pixels) go into panels. A panel of 6 pixels in a patch of 3 image
 * rows x 2 columns has more channels zero in all six than 6 pixels of one image row: on photos
 * the multiply-adds done fall from 0.795 to 0.766 of the dense product's (bench_layers' photo),
 * and a classification pass at 224 took 0.981-0.984 of the time, faces 0.982-0.984 (two nets
 * alternating, 300 and 60 passes). Position pos of a sample's map (h x w, w even, h >= 3) is its
 * bands of 3 image rows, column pair by column pair, then the rows below the last band in order.
 */
struct pw_order {
    int w, bands, hw;  /* bands: complete bands of 3 rows per sample; 0 = positions are rows */
    int base, p;       /* the sample's first row, the position within the sample */
    int band, pair, e; /* where p is, while p < 3 * w * bands */
};

static void pw_order_at(struct pw_order *o, int pos)
{
    o->base = pos / o->hw * o->hw, o->p = pos - o->base;
    const int q = o->p < 3 * o->w * o->bands ? o->p : 0;
    o->band = q / (3 * o->w), o->pair = q % (3 * o->w) / 6, o->e = q % 6;
}

static int pw_order_row(const struct pw_order *o)
{
    if (o->p >= 3 * o->w * o->bands)
        return o->base + o->p;
    return o->base + (3 * o->band + (o->e >> 1)) * o->w + 2 * o->pair + (o->e & 1);
}

static void pw_order_next(struct pw_order *o)
{
    if (++o->p == o->hw) {
        o->base += o->hw, o->p = 0, o->band = o->pair = o->e = 0;
        return;
    }
    if (++o->e == 6) {
        o->e = 0;
        if (++o->pair == o->w / 2)
            o->pair = 0, o->band++;
    }
}

AVX2 static void pw_packed_avx2(const float *x, int hw, int w, int cin, const float *wp, int cout,
                                const float *const *scale, const float *const *bias,
                                enum pd_act act, float *y, int r0, int r1, int c0, int c1,
                                float *scratch)
{
    int ri[PW_MC]; /* the rows of the block's positions */
    struct pw_order ord = {.w = w, .hw = hw};
    if (w > 0 && w % 2 == 0 && hw % w == 0)
        ord.bands = hw / w / 3;
    float *ap = scratch; /* panels of up to (kb, PW_MR), then 8 floats of room */
    int *idx = (int *)(scratch + PW_MC * PW_KC1 + 8), cnt[PW_MC / PW_MR];
    const int kb = r1 - r0 <= PW_MC ? PW_KC1 : PW_KC;
    const float *rs[PW_MC], *rb[PW_MC]; /* each row's sample's scale and bias */
    for (int m0 = r0; m0 < r1; m0 += PW_MC) {
        const int m1 = m0 + PW_MC < r1 ? m0 + PW_MC : r1, panels = (m1 - m0 + PW_MR - 1) / PW_MR;
        /* each row's sample, counted up from the block's first row (a division per row cost
         * 1-2% of a faces pass) */
        int smp = m0 / hw, end = (smp + 1) * hw;
        for (int i = 0; i < m1 - m0; i++) {
            if (m0 + i == end)
                smp++, end += hw;
            rs[i] = scale[smp], rb[i] = bias[smp];
        }
        if (ord.bands) {
            pw_order_at(&ord, m0);
            for (int i = 0; i < m1 - m0; i++, pw_order_next(&ord))
                ri[i] = pw_order_row(&ord);
        } else {
            for (int i = 0; i < m1 - m0; i++)
                ri[i] = m0 + i;
        }
        for (int k0 = 0; k0 < cin; k0 += kb) {
            const int kc = cin - k0 < kb ? cin - k0 : kb;
            for (int p = 0; p < panels; p++) {
                const int r = m0 + PW_MR * p, nr = m1 - r < PW_MR ? m1 - r : PW_MR;
                cnt[p] = pw_pack_panel(x, cin, ri + PW_MR * p, nr, k0, kc,
                                       ap + (size_t)p * PW_MR * kb, idx + (size_t)p * kb);
            }
            const int first = k0 == 0, last = k0 + kc >= cin;
            for (int n0 = c0; n0 < c1; n0 += 16) {
                const float *b = wp + (size_t)n0 * cin; /* strip n0 / 16 */
                for (int p = 0; p < panels; p++) {
                    const int r = m0 + PW_MR * p, nr = m1 - r < PW_MR ? m1 - r : PW_MR;
                    const struct pw_rows pr = {y, cout, ri + PW_MR * p, rs + PW_MR * p,
                                               rb + PW_MR * p};
                    const float *a = ap + (size_t)p * PW_MR * kb;
                    pw_packed_tile(nr, cnt[p], a, idx + (size_t)p * kb, b, &pr, n0, first, last,
                                   act);
                }
            }
        }
    }
}
#endif

void pd_op_pw_packed_part(const float *x, int rows, int hw, int w, int cin, const float *wp,
                          int cout, const float *const *scale, const float *const *bias,
                          enum pd_act act, float *y, int r0, int r1, int c0, int c1, float *scratch)
{
    (void)rows;
    PD_ASSERT(c0 % 16 == 0 && c1 % 16 == 0 && cout % 16 == 0);
#ifdef PD_X86
    pw_packed_avx2(x, hw, w, cin, wp, cout, scale, bias, act, y, r0, r1, c0, c1, scratch);
#else
    (void)x, (void)hw, (void)w, (void)cin, (void)wp, (void)scale, (void)bias, (void)act, (void)y;
    (void)r0, (void)r1, (void)scratch;
    PD_ASSERT(0 && "pd_pw_packed_ok() said no");
#endif
}

void pd_op_pw_part(const float *x, int rows, int hw, int cin, const float *wt, int cout,
                   const float *const *scale, const float *const *bias, enum pd_act act, float *y,
                   int r0, int r1, int c0, int c1)
{
    (void)rows;
#ifdef PD_X86
    if (c0 % 16 == 0 && (c1 - c0) % 16 == 0 && cout % 16 == 0 && cin <= PW_DIRECT_MAX_CIN &&
        have_avx2()) {
        pw_direct_avx2(x, hw, cin, wt, cout, scale, bias, act, y, r0, r1, c0, c1);
        return;
    }
#endif
    /* one GEMM (OpenBLAS packs the weights once), then the epilogue: measured faster on pw5 than
     * cache-sized chunks of rows, which pack the weights again for every chunk */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, c1 - c0, cin, 1.0f,
                x + (size_t)r0 * cin, cin, wt + c0, cout, 0.0f, y + (size_t)r0 * cout + c0, cout);
    epilogue(y, r0, r1, hw, cout, c0, c1, scale, bias, act);
}

void pd_op_pw(const float *x, int n, int h, int w, int cin, const float *wt, int cout,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y)
{
    pd_op_pw_part(x, n * h * w, h * w, cin, wt, cout, scale, bias, act, y, 0, n * h * w, 0, cout);
}

void pd_scale_bias_act_backward(const float *z, const float *dy, size_t rows, int c,
                                const float *scale, const float *bias, enum pd_act act, float *dz,
                                float *dscale, float *dbias)
{
    for (size_t r = 0; r < rows; r++) {
        const float *zr = z + r * (size_t)c, *dyr = dy + r * (size_t)c;
        float *dzr = dz + r * (size_t)c;
        for (int j = 0; j < c; j++) {
            float g = dyr[j];
            if (act == PD_ACT_RELU6) {
                float v = scale[j] * zr[j] + bias[j];
                g = (v > 0.0f && v < 6.0f) ? g : 0.0f;
            }
            dscale[j] += g * zr[j];
            dbias[j] += g;
            dzr[j] = g * scale[j];
        }
    }
}

void pd_op_dw_backward(const float *x, int h, int w, int c, const float *k, int s, const float *dz,
                       float *dx, float *dk)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int pt = pd_same_pad(h, 3, s), pl = pd_same_pad(w, 3, s);
    memset(dx, 0, sizeof(float) * (size_t)h * w * c);
    for (int oy = 0; oy < oh; oy++) {
        for (int ox = 0; ox < ow; ox++) {
            const float *g = dz + ((size_t)oy * ow + ox) * c;
            for (int ky = 0; ky < 3; ky++) {
                int iy = oy * s + ky - pt;
                if (iy < 0 || iy >= h)
                    continue;
                for (int kx = 0; kx < 3; kx++) {
                    int ix = ox * s + kx - pl;
                    if (ix < 0 || ix >= w)
                        continue;
                    const float *kv = k + (ky * 3 + kx) * c;
                    float *d = dx + ((size_t)iy * w + ix) * c;
                    for (int j = 0; j < c; j++)
                        d[j] += g[j] * kv[j];
                    if (dk) {
                        const float *in = x + ((size_t)iy * w + ix) * c;
                        float *dkv = dk + (ky * 3 + kx) * c;
                        for (int j = 0; j < c; j++)
                            dkv[j] += g[j] * in[j];
                    }
                }
            }
        }
    }
}

void pd_op_pw_backward(const float *x, int rows, int cin, const float *wt, int cout,
                       const float *dz, float *dx, float *dw)
{
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cin, cout, 1.0f, dz, cout, wt,
                    cout, 0.0f, dx, cin);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cin, cout, rows, 1.0f, x, cin, dz,
                    cout, 1.0f, dw, cout);
}

void pd_op_conv_backward_w(const float *x, int n, int h, int w, int cin, int k, int s, int cout,
                           const float *dz, float *dw, float *col)
{
    const int rows = n * pd_same_out(h, s) * pd_same_out(w, s), kk = k * k * cin;
    const float *a = x;
    if (k != 1 || s != 1) {
        im2col(x, h, w, cin, k, s, 0, rows, col);
        a = col;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kk, cout, rows, 1.0f, a, kk, dz, cout,
                1.0f, dw, cout);
}

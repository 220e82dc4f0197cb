#include "ops.h"

#include <cblas.h>
#include <string.h>

void pd_gemm(int m, int n, int k, const float *a, const float *b, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
}

void pd_scale_bias_act(float *y, size_t rows, int c, const float *scale, const float *bias,
                       enum pd_act act)
{
    for (size_t r = 0; r < rows; r++) {
        float *row = y + r * (size_t)c;
        if (act == PD_ACT_RELU6) {
            for (int j = 0; j < c; j++) {
                float v = scale[j] * row[j] + bias[j];
                v = v < 0.0f ? 0.0f : v;
                row[j] = v > 6.0f ? 6.0f : v;
            }
        } else {
            for (int j = 0; j < c; j++)
                row[j] = scale[j] * row[j] + bias[j];
        }
    }
}

size_t pd_conv_col_floats(int n, int h, int w, int cin, int k, int s)
{
    if (k == 1 && s == 1)
        return 0;
    return (size_t)n * (size_t)pd_same_out(h, s) * (size_t)pd_same_out(w, s) * (size_t)(k * k) *
           (size_t)cin;
}

/* im2col: one row of (ky, kx, cin) per output pixel, zeros where the padding is */
static void im2col(const float *x, int n, int h, int w, int cin, int k, int s, float *col)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int pt = pd_same_pad(h, k, s), pl = pd_same_pad(w, k, s);
    const int kk = k * k * cin;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * h * w * cin;
        for (int oy = 0; oy < oh; oy++) {
            for (int ox = 0; ox < ow; ox++) {
                float *row = col + (((size_t)i * oh + oy) * ow + ox) * kk;
                for (int ky = 0; ky < k; ky++) {
                    int iy = oy * s + ky - pt;
                    for (int kx = 0; kx < k; kx++) {
                        int ix = ox * s + kx - pl;
                        float *dst = row + (ky * k + kx) * cin;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                            memset(dst, 0, sizeof(float) * (size_t)cin);
                        else
                            memcpy(dst, xi + ((size_t)iy * w + ix) * cin,
                                   sizeof(float) * (size_t)cin);
                    }
                }
            }
        }
    }
}

void pd_op_conv(const float *x, int n, int h, int w, int cin, const float *wt, int k, int s,
                int cout, const float *const *scale, const float *const *bias, enum pd_act act,
                float *y, float *col)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int kk = k * k * cin;
    const float *a = x;
    if (k != 1 || s != 1) {
        im2col(x, n, h, w, cin, k, s, col);
        a = col;
    }
    pd_gemm(n * oh * ow, cout, kk, a, wt, y);
    for (int i = 0; i < n; i++)
        pd_scale_bias_act(y + (size_t)i * oh * ow * cout, (size_t)oh * ow, cout, scale[i], bias[i],
                          act);
}

void pd_op_dw(const float *x, int n, int h, int w, int c, const float *const *wt, int s,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y)
{
    const int oh = pd_same_out(h, s), ow = pd_same_out(w, s);
    const int pt = pd_same_pad(h, 3, s), pl = pd_same_pad(w, 3, s);
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * h * w * c;
        float *yi = y + (size_t)i * oh * ow * c;
        const float *k = wt[i];
        for (int oy = 0; oy < oh; oy++) {
            for (int ox = 0; ox < ow; ox++) {
                float *out = yi + ((size_t)oy * ow + ox) * c;
                memset(out, 0, sizeof(float) * (size_t)c);
                for (int ky = 0; ky < 3; ky++) {
                    int iy = oy * s + ky - pt;
                    if (iy < 0 || iy >= h)
                        continue;
                    for (int kx = 0; kx < 3; kx++) {
                        int ix = ox * s + kx - pl;
                        if (ix < 0 || ix >= w)
                            continue;
                        const float *in = xi + ((size_t)iy * w + ix) * c;
                        const float *kv = k + (ky * 3 + kx) * c;
                        for (int j = 0; j < c; j++)
                            out[j] += in[j] * kv[j];
                    }
                }
            }
        }
        pd_scale_bias_act(yi, (size_t)oh * ow, c, scale[i], bias[i], act);
    }
}

void pd_op_pw(const float *x, int n, int h, int w, int cin, const float *wt, int cout,
              const float *const *scale, const float *const *bias, enum pd_act act, float *y)
{
    pd_gemm(n * h * w, cout, cin, x, wt, y);
    for (int i = 0; i < n; i++)
        pd_scale_bias_act(y + (size_t)i * h * w * cout, (size_t)h * w, cout, scale[i], bias[i],
                          act);
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
        im2col(x, n, h, w, cin, k, s, col);
        a = col;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kk, cout, rows, 1.0f, a, kk, dz, cout,
                1.0f, dw, cout);
}

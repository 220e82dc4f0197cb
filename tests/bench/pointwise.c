/*
 * The pointwise layers one by one on a photo's real activations (the network run layer by layer
 * up to each pointwise input, at 224, one thread): OpenBLAS's GEMM plus the epilogue (or the
 * direct kernel for at most 128 inputs, pd_op_pw_part) against the packed kernel that skips
 * zero channels (pd_op_pw_packed_part). Each figure is the best of N rounds of 20 calls, with
 * the layer's data hot in cache; the two alternate round by round. Also the share of input
 * channels zero in a whole 6-pixel panel.
 *   build/tests/bench_pointwise PHOTO.jpg [N]       (PD_MODEL or models/ the backbone)
 */
#include "../../core/image.h"
#include "../../core/net.h"
#include "../../core/ops.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_pointwise PHOTO.jpg [ROUNDS]\n");
        return 2;
    }
    const int rounds = argc > 2 ? atoi(argv[2]) : 9, size = 224, calls = 20;
    const char *model =
        getenv("PD_MODEL") ? getenv("PD_MODEL") : "models/ssd_mobilenet_v1.safetensors";
    char msg[PD_MSG_MAX];
    pd_model *m;
    uint8_t *buf;
    size_t len;
    struct pd_image img;
    if (pd_model_load(model, &m, msg) || pd_read_file(argv[1], 256 << 20, &buf, &len, msg) ||
        pd_image_decode_jpeg(buf, len, PD_IMAGE_MAX_PIXELS, &img, msg)) {
        fprintf(stderr, "bench_pointwise: %s\n", msg);
        return 1;
    }
    if (!pd_pw_packed_ok(32, 64)) {
        fprintf(stderr, "bench_pointwise: this CPU lacks AVX2+FMA\n");
        return 1;
    }
    openblas_set_num_threads(1);
    const size_t most = (size_t)112 * 112 * 64;
    float *x = pd_alloc_floats(most), *y = pd_alloc_floats(most), *z = pd_alloc_floats(most);
    float *col = pd_alloc_floats(pd_conv_col_floats(1, size, size, 3, 3, 2));
    float *wp = pd_alloc_floats((size_t)1024 * 1024),
          *scratch = pd_alloc_floats(PD_PW_SCRATCH_FLOATS);
    struct pd_crop crop = pd_crop_full(&img);
    pd_image_to_input(&img, &crop, size, x);
    double sum_blas = 0, sum_packed = 0;
    int h = size;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        const float *sc[1] = {pd_model_scale(m, l)}, *bi[1] = {pd_model_bias(m, l)};
        const int ho = pd_same_out(h, li->stride), rows = ho * ho;
        if (l == 0) {
            pd_op_conv(x, 1, h, h, 3, pd_model_weights(m, l), 3, 2, li->cout, sc, bi, PD_ACT_RELU6,
                       y, col);
        } else if (pd_layer_is_dw(l)) {
            const float *k[1] = {pd_model_dw(m, l)};
            pd_op_dw(x, 1, h, h, li->cin, k, li->stride, sc, bi, PD_ACT_RELU6, y);
        } else {
            const float *w = pd_model_weights(m, l);
            pd_pw_pack(w, li->cin, li->cout, wp);
            long zero = 0, all = 0;
            for (int r = 0; r + 6 <= rows; r += 6)
                for (int k = 0; k < li->cin; k++, all++) {
                    int nz = 0;
                    for (int i = 0; i < 6; i++)
                        nz |= x[(size_t)(r + i) * li->cin + k] != 0.0f;
                    zero += !nz;
                }
            double best_b = 1e9, best_p = 1e9;
            for (int r = 0; r < rounds; r++) {
                double t0 = pd_now();
                for (int i = 0; i < calls; i++)
                    pd_op_pw_part(x, rows, rows, li->cin, w, li->cout, sc, bi, PD_ACT_RELU6, z, 0,
                                  rows, 0, li->cout);
                double t1 = pd_now();
                for (int i = 0; i < calls; i++)
                    pd_op_pw_packed_part(x, rows, rows, li->cin, wp, li->cout, sc, bi, PD_ACT_RELU6,
                                         y, 0, rows, 0, li->cout, scratch);
                double t2 = pd_now();
                best_b = (t1 - t0) / calls < best_b ? (t1 - t0) / calls : best_b;
                best_p = (t2 - t1) / calls < best_p ? (t2 - t1) / calls : best_p;
            }
            double worst = 0;
            for (size_t i = 0; i < (size_t)rows * li->cout; i++) {
                double d = (y[i] - z[i]) / (1.0 + (z[i] < 0 ? -z[i] : z[i]));
                worst = d > worst ? d : d < -worst ? -d : worst;
            }
            printf("pw%-2d %4dx%-4d -> %-4d panel-zero channels %.2f: unpacked %.3f ms, packed "
                   "%.3f ms, ratio %.2f (worst relative difference %.1e)\n",
                   (l + 1) / 2, rows, li->cin, li->cout, (double)zero / (all ? all : 1),
                   best_b * 1e3, best_p * 1e3, best_p / best_b, worst);
            sum_blas += best_b, sum_packed += best_p;
        }
        float *t = x;
        x = y, y = t;
        h = ho;
    }
    printf("all 13 pointwise layers: unpacked %.3f ms, packed %.3f ms, ratio %.2f\n",
           sum_blas * 1e3, sum_packed * 1e3, sum_packed / sum_blas);
    free(x), free(y), free(z), free(col), free(wp), free(scratch), free(buf);
    pd_image_fini(&img);
    pd_model_free(m);
    return 0;
}

/*
 * Where a classification pass spends its time, layer by layer, on a photo at 224, one thread.
 * The backbone runs layer after layer through the ops the net uses (conv0 direct, depthwise, the
 * packed pointwise kernel). Each layer is timed in sequence (its input just written by the layer
 * before, between two buffers as in a forward pass; the median over N passes) and hot (the same
 * call repeated at once, data in cache; the median over N rounds of 20 calls). For each pointwise
 * layer also: the share of input channels zero in a whole 6-pixel panel (what the packed kernel
 * skips; its panels are 3x2 patches where the side is even), and the unpacked path hot
 * (OpenBLAS's GEMM plus the epilogue, or the direct kernel for at most 128 inputs), alternating
 * with the packed one round by round.
 *
 *   build/tests/bench_layers PHOTO.jpg [N]       (PD_MODEL or models/ the backbone)
 */
#include "../../core/image.h"
#include "../../core/net.h"
#include "../../core/ops.h"

#include <cblas.h>
#ifdef __x86_64__
#include <immintrin.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bufs {
    float *col, *scratch;
};

/* Runs layer l of m on x (side h) into y; packed: the pointwise kernel the net uses. */
static void layer(const pd_model *m, const struct bufs *b, int l, const float *x, int h, float *y,
                  int packed)
{
    const struct pd_layer_info *li = pd_layer_info(l);
    const float *sc[1] = {pd_model_scale(m, l)}, *bi[1] = {pd_model_bias(m, l)};
    const int rows = pd_same_out(h, li->stride) * pd_same_out(h, li->stride);
    if (l == 0) {
        pd_op_conv(x, 1, h, h, 3, pd_model_weights(m, l), 3, 2, li->cout, sc, bi, PD_ACT_RELU6, y,
                   b->col);
    } else if (pd_layer_is_dw(l)) {
        const float *k[1] = {pd_model_dw(m, l)};
        pd_op_dw(x, 1, h, h, li->cin, k, li->stride, sc, bi, PD_ACT_RELU6, y);
    } else if (packed) {
        pd_op_pw_packed_part(x, rows, rows, h, li->cin, pd_model_packed(m, l), li->cout, sc, bi,
                             PD_ACT_RELU6, y, 0, rows, 0, li->cout, b->scratch);
    } else {
        pd_op_pw_part(x, rows, rows, li->cin, pd_model_weights(m, l), li->cout, sc, bi,
                      PD_ACT_RELU6, y, 0, rows, 0, li->cout);
    }
}

#ifdef __x86_64__
/* This core's peak: 12 independent chains of 8-wide FMAs (two FMA pipes, 4 cycles each), the
 * best of 5 runs of 5e7 steps, in GFLOP/s. */
__attribute__((target("avx2,fma"))) static double fma_peak(void)
{
    double best = 1e9;
    float sink = 0;
    for (int r = 0; r < 5; r++) {
        /* distinct starting values, or the compiler merges the twelve chains into one */
        __m256 a0 = _mm256_set1_ps(0.50f), a1 = _mm256_set1_ps(0.51f), a2 = _mm256_set1_ps(0.52f),
               a3 = _mm256_set1_ps(0.53f), a4 = _mm256_set1_ps(0.54f), a5 = _mm256_set1_ps(0.55f),
               a6 = _mm256_set1_ps(0.56f), a7 = _mm256_set1_ps(0.57f), a8 = _mm256_set1_ps(0.58f),
               a9 = _mm256_set1_ps(0.59f), a10 = _mm256_set1_ps(0.60f), a11 = _mm256_set1_ps(0.61f);
        const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.0005f);
        const long n = 50000000;
        double t0 = pd_now();
        for (long i = 0; i < n; i++) {
            a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c);
            a2 = _mm256_fmadd_ps(a2, m, c), a3 = _mm256_fmadd_ps(a3, m, c);
            a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
            a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c);
            a8 = _mm256_fmadd_ps(a8, m, c), a9 = _mm256_fmadd_ps(a9, m, c);
            a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
        }
        const double t = (pd_now() - t0) / n;
        best = t < best ? t : best;
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
        s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
        sink += _mm256_cvtss_f32(s);
    }
    return sink == 12345.0f ? 0 : 12 * 8 * 2 / best / 1e9; /* sink: the loop is not dead code */
}
#endif

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_layers PHOTO.jpg [N]\n");
        return 2;
    }
    const int rounds = argc > 2 && atoi(argv[2]) > 0 ? atoi(argv[2]) : 9, size = 224, calls = 20;
    const char *model =
        getenv("PD_MODEL") ? getenv("PD_MODEL") : "models/ssd_mobilenet_v1.safetensors";
    char msg[PD_MSG_MAX];
    pd_model *m;
    uint8_t *buf;
    size_t len;
    struct pd_image img;
    if (pd_model_load(model, &m, msg) || pd_read_file(argv[1], 256 << 20, &buf, &len, msg) ||
        pd_image_decode_jpeg(buf, len, PD_IMAGE_MAX_PIXELS, &img, msg)) {
        fprintf(stderr, "bench_layers: %s\n", msg);
        return 1;
    }
    if (!pd_model_packed(m, 2)) {
        fprintf(stderr, "bench_layers: this CPU lacks AVX2+FMA\n");
        return 1;
    }
    openblas_set_num_threads(1);
    /* for the hot runs every layer's output is kept (each layer's own input), 13 MB at 224 */
    float *act[PD_NLAYERS + 1];
    int side[PD_NLAYERS + 1];
    size_t most = 0; /* the largest output */
    struct bufs b = {.col = pd_alloc_floats(pd_conv_col_floats(1, size, size, 3, 3, 2)),
                     .scratch = pd_alloc_floats(PD_PW_SCRATCH_FLOATS)};
    side[0] = size;
    act[0] = pd_alloc_floats((size_t)size * size * 3);
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        side[l + 1] = pd_same_out(side[l], li->stride);
        const size_t n = (size_t)side[l + 1] * side[l + 1] * li->cout;
        act[l + 1] = pd_alloc_floats(n);
        most = n > most ? n : most;
    }
    float *z = pd_alloc_floats(most);
    struct pd_crop crop = pd_crop_full(&img);
    pd_image_to_input(&img, &crop, size, act[0]);

    /* in sequence: whole passes, layer after layer, between two buffers as the net does */
    float *pp[2] = {pd_alloc_floats(most), pd_alloc_floats(most)};
    double *seq = calloc((size_t)rounds * PD_NLAYERS, sizeof(double));
    for (int r = -1; r < rounds; r++) /* one pass to warm up */
        for (int l = 0; l < PD_NLAYERS; l++) {
            double t0 = pd_now();
            layer(m, &b, l, l ? pp[(l - 1) & 1] : act[0], side[l], pp[l & 1], 1);
            if (r >= 0)
                seq[(size_t)l * rounds + r] = pd_now() - t0;
        }
    /* every layer's input kept for the hot runs: one more pass, untimed */
    for (int l = 0; l < PD_NLAYERS; l++)
        layer(m, &b, l, act[l], side[l], act[l + 1], 1);
    double tot_seq = 0, tot_hot = 0, kind_seq[3] = {0}, kind_hot[3] = {0};
    double sum_unpacked = 0, sum_packed = 0;
    static const char *kind_name[3] = {"conv0", "depthwise", "pointwise"};
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        const int kind = l == 0 ? 0 : pd_layer_is_dw(l) ? 1 : 2;
        qsort(seq + (size_t)l * rounds, (size_t)rounds, sizeof(double), cmp_double);
        const double s = seq[(size_t)l * rounds + rounds / 2];
        double *hr = calloc((size_t)rounds * 2, sizeof(double)), *ur = hr + rounds;
        for (int r = 0; r < rounds; r++) { /* the two paths alternate round by round */
            double t0 = pd_now();
            for (int i = 0; i < calls; i++)
                layer(m, &b, l, act[l], side[l], act[l + 1], 1);
            double t1 = pd_now();
            hr[r] = (t1 - t0) / calls;
            if (kind != 2)
                continue;
            for (int i = 0; i < calls; i++)
                layer(m, &b, l, act[l], side[l], z, 0);
            double t2 = pd_now();
            ur[r] = (t2 - t1) / calls;
        }
        qsort(hr, (size_t)rounds, sizeof(double), cmp_double);
        qsort(ur, (size_t)rounds, sizeof(double), cmp_double);
        const double hot = hr[rounds / 2], unpacked = ur[rounds / 2];
        const char *name = kind == 0 ? "conv0" : kind == 1 ? "dw" : "pw";
        char id[16];
        snprintf(id, sizeof(id), kind ? "%s%d" : "%s", name, (l + 1) / 2);
        printf("%-5s %3dx%-3dx%-4d -> %-4d in sequence %.3f ms, hot %.3f ms", id, side[l], side[l],
               li->cin, li->cout, s * 1e3, hot * 1e3);
        if (kind == 2) {
            /* the multiply-adds the packed kernel does: panels of 6 positions from position 0
             * (its blocks of 198 are whole panels), each with the channels not zero in all its
             * pixels; positions in the kernel's order (core/ops.c, struct pw_order): patches of
             * 3 rows x 2 columns over the bands of 3 rows when the side is even, then the rest */
            const int side_o = side[l + 1], rows = side_o * side_o;
            const int bands = side_o % 2 ? 0 : side_o / 3;
            int *order = malloc(sizeof(int) * rows), no = 0;
            for (int band = 0; band < bands; band++)
                for (int pair = 0; pair < side_o / 2; pair++)
                    for (int e = 0; e < 6; e++)
                        order[no++] = (3 * band + e / 2) * side_o + 2 * pair + e % 2;
            while (no < rows)
                order[no] = no, no++;
            long zero = 0, all = 0;
            double macs = 0;
            for (int r = 0; r < rows; r += 6) {
                const int nr = rows - r < 6 ? rows - r : 6;
                for (int k = 0; k < li->cin; k++, all++) {
                    int nz = 0;
                    for (int i = 0; i < nr; i++)
                        nz |= act[l][(size_t)order[r + i] * li->cin + k] != 0.0f;
                    zero += !nz;
                    macs += nz ? (double)nr * li->cout : 0;
                }
            }
            free(order);
            double worst = 0; /* packed against unpacked: the same sums in another order */
            for (size_t i = 0; i < (size_t)rows * li->cout; i++) {
                const float p = act[l + 1][i], u = z[i];
                double d = (p - u) / (1.0 + (u < 0 ? -u : u));
                worst = d > worst ? d : d < -worst ? -d : worst;
            }
            printf("; best %.3f ms, %.0f GFLOP/s done; panel-zero channels %.2f; unpacked hot "
                   "%.3f ms, packed/unpacked %.2f (worst relative difference %.1e)",
                   hr[0] * 1e3, 2 * macs / hr[0] / 1e9, (double)zero / (all ? all : 1),
                   unpacked * 1e3, hot / unpacked, worst);
            sum_unpacked += unpacked, sum_packed += hot;
        }
        printf("\n");
        free(hr);
        tot_seq += s, tot_hot += hot, kind_seq[kind] += s, kind_hot[kind] += hot;
    }
    for (int k = 0; k < 3; k++)
        printf("%s: in sequence %.3f ms, hot %.3f ms\n", kind_name[k], kind_seq[k] * 1e3,
               kind_hot[k] * 1e3);
    printf("all 27 layers: in sequence %.3f ms, hot %.3f ms\n", tot_seq * 1e3, tot_hot * 1e3);
#ifdef __x86_64__
    printf("peak of this core: %.0f GFLOP/s (12 chains of 8-wide FMAs)\n", fma_peak());
#endif
    printf("pointwise, hot: packed %.3f ms, unpacked %.3f ms, ratio %.2f\n", sum_packed * 1e3,
           sum_unpacked * 1e3, sum_packed / sum_unpacked);
    for (int l = 0; l <= PD_NLAYERS; l++)
        free(act[l]);
    free(seq), free(pp[0]), free(pp[1]), free(z), free(b.col), free(b.scratch), free(buf);
    pd_image_fini(&img);
    pd_model_free(m);
    return 0;
}

/*
 * JPEG decoding for a 224 classifier: at full size against libjpeg-turbo's DCT-domain scaling
 * (pd_image_decode_jpeg_scaled), then the resize to the network's input, medians of N runs.
 *   build/tests/bench_decode JPEG [N]
 */
#include "../../core/image.h"

#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double run(const uint8_t *buf, size_t len, int min_side, int n, float *in, int *w, int *h)
{
    double *ms = calloc((size_t)n, sizeof(double));
    char msg[PD_MSG_MAX];
    for (int i = 0; i < n; i++) {
        double t0 = pd_now();
        struct pd_image img;
        if (pd_image_decode_jpeg_scaled(buf, len, PD_IMAGE_MAX_PIXELS, min_side, &img, msg)) {
            fprintf(stderr, "bench_decode: %s\n", msg);
            exit(1);
        }
        struct pd_crop c = pd_crop_pad(&img);
        pd_image_to_input(&img, &c, 224, in);
        *w = img.w, *h = img.h;
        pd_image_fini(&img);
        ms[i] = (pd_now() - t0) * 1e3;
    }
    qsort(ms, (size_t)n, sizeof(double), cmp);
    double med = ms[n / 2];
    free(ms);
    return med;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_decode JPEG [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 20;
    n = n < 1 ? 1 : n;
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX];
    if (pd_read_file(argv[1], (size_t)256 << 20, &buf, &len, msg)) {
        fprintf(stderr, "bench_decode: %s\n", msg);
        return 1;
    }
    float *in = pd_alloc_floats(224 * 224 * 3);
    int w, h, sw, sh;
    double full = run(buf, len, 0, n, in, &w, &h);
    double scaled = run(buf, len, 224, n, in, &sw, &sh);
    printf("decode + resize to 224 of a %dx%d JPEG: full size %.2f ms, DCT-scaled to %dx%d "
           "%.2f ms, ratio %.2f\n",
           w, h, full, sw, sh, scaled, scaled / full);
    free(in);
    free(buf);
    return 0;
}

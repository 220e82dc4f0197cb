#include "ssd.h"

#include <math.h>
#include <stdlib.h>

struct cand {
    double score;
    int index;
};

static int by_score(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->index - y->index; /* stable, like Array.prototype.sort */
}

static double iou_of(const float *a, const float *b)
{
    double ay0 = fmin(a[0], a[2]), ax0 = fmin(a[1], a[3]);
    double ay1 = fmax(a[0], a[2]), ax1 = fmax(a[1], a[3]);
    double by0 = fmin(b[0], b[2]), bx0 = fmin(b[1], b[3]);
    double by1 = fmax(b[0], b[2]), bx1 = fmax(b[1], b[3]);
    double area_a = (ay1 - ay0) * (ax1 - ax0), area_b = (by1 - by0) * (bx1 - bx0);
    if (area_a <= 0 || area_b <= 0)
        return 0.0;
    double iy0 = fmax(ay0, by0), ix0 = fmax(ax0, bx0);
    double iy1 = fmin(ay1, by1), ix1 = fmin(ax1, bx1);
    double inter = fmax(iy1 - iy0, 0.0) * fmax(ix1 - ix0, 0.0);
    return inter / (area_a + area_b - inter);
}

/* JavaScript's Math.round: halves round up. */
static double js_round(double x)
{
    return floor(x + 0.5);
}

int pd_ssd_select(const float *scores, const float *boxes, int n, double min_score, double iou,
                  int max_out, int img_w, int img_h, int input_size, struct pd_detection *out)
{
    struct cand *c = malloc(sizeof(*c) * (size_t)(n > 0 ? n : 1));
    int *sel = malloc(sizeof(int) * (size_t)(max_out > 0 ? max_out : 1));
    if (!c || !sel) {
        free(c);
        free(sel);
        return PD_NOMEM;
    }
    int nc = 0;
    for (int i = 0; i < n; i++)
        if ((double)scores[i] > min_score)
            c[nc++] = (struct cand){scores[i], i};
    qsort(c, (size_t)nc, sizeof(*c), by_score);
    int limit = max_out < n ? max_out : n, ns = 0;
    for (int i = 0; i < nc && ns < limit; i++) {
        int keep = 1;
        for (int j = ns - 1; j >= 0; j--) {
            double v = iou_of(boxes + 4 * c[i].index, boxes + 4 * sel[j]);
            if (v == 0.0)
                continue;
            if (v > iou) {
                keep = 0;
                break;
            }
        }
        if (keep)
            sel[ns++] = c[i].index;
    }
    /* back to image pixels through face-api's reshaped dimensions */
    double scale = (double)input_size / (img_w > img_h ? img_w : img_h);
    double pad_x = input_size / js_round(img_w * scale);
    double pad_y = input_size / js_round(img_h * scale);
    for (int i = 0; i < ns; i++) {
        const float *b = boxes + 4 * sel[i];
        double top = fmax(0.0, b[0]) * pad_y, bottom = fmin(1.0, b[2]) * pad_y;
        double left = fmax(0.0, b[1]) * pad_x, right = fmin(1.0, b[3]) * pad_x;
        out[i].score = scores[sel[i]];
        out[i].box[0] = left * img_w;
        out[i].box[1] = top * img_h;
        out[i].box[2] = (right - left) * img_w;
        out[i].box[3] = (bottom - top) * img_h;
    }
    free(c);
    free(sel);
    return ns;
}

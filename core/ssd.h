/*
 * ssd.h - from per-anchor scores and boxes to face detections, as face-api's locateFaces does:
 * candidates above min_score sorted best first (ties keep anchor order), greedy non-maximum
 * suppression at IoU > iou, at most max_out results, boxes clipped to [0, 1] and mapped back to
 * input-image pixels through face-api's rounded "reshaped" dimensions. Double precision, like
 * the JavaScript it mirrors.
 *
 * Threads: reentrant.
 */
#ifndef PD_SSD_H
#define PD_SSD_H

#include "pd.h"

struct pd_detection {
    double score;
    double box[4]; /* x, y, width, height in input-image pixels */
};

#define PD_SSD_IOU       0.5
#define PD_SSD_MAX_OUT   100
#define PD_SSD_MIN_SCORE 0.5

/*
 * scores (n), boxes (n, 4) [ymin, xmin, ymax, xmax] relative to the padded square; the image is
 * img_w x img_h and was padded and resized to input_size. Writes at most max_out detections to
 * out, best first; returns their number, or PD_NOMEM.
 */
int pd_ssd_select(const float *scores, const float *boxes, int n, double min_score, double iou,
                  int max_out, int img_w, int img_h, int input_size, struct pd_detection *out);

#endif

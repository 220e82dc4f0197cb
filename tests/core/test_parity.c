/*
 * Parity with the original model: for each reference photo, the decoded RGB equals djpeg's
 * (sha256), every anchor's score and decoded box is within 1e-3 of TensorFlow.js's, and the final
 * detections match one to one (IoU >= 0.99, score within 1e-3). Runs on tests/data/faces and, when
 * present, on ../shared/reference/faces (all six photos). Prints the worst differences.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/image.h"
#include "../../core/net.h"
#include "../../core/ssd.h"
#include "../testenv.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-3

static pd_model *model;
static pd_net *net;
static double worst_score, worst_box, worst_det_score, worst_det_iou = 1.0;

static int setup(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    if (pd_model_load(test_env("PD_MODEL"), &model, msg)) {
        fprintf(stderr, "cannot load backbone: %s\n", msg);
        return -1;
    }
    return pd_net_new(model, 1, PD_FACES_SIZE, &net, msg);
}

static int teardown(void **state)
{
    (void)state;
    pd_net_free(net);
    pd_model_free(model);
    return 0;
}

static double box_iou(const double *a, const double *b)
{
    double x0 = fmax(a[0], b[0]), y0 = fmax(a[1], b[1]);
    double x1 = fmin(a[0] + a[2], b[0] + b[2]), y1 = fmin(a[1] + a[3], b[1] + b[3]);
    double inter = fmax(0, x1 - x0) * fmax(0, y1 - y0);
    return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

static void check_photo(const char *jpg, const char *json)
{
    json_error_t jerr;
    json_t *ref = json_load_file(json, 0, &jerr);
    assert_non_null(ref);
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_read_file(jpg, 64 << 20, &buf, &len, msg), PD_OK);
    struct pd_image img;
    assert_int_equal(pd_image_decode_jpeg(buf, len, PD_IMAGE_MAX_PIXELS, &img, msg), PD_OK);
    free(buf);
    json_t *ji = json_object_get(ref, "image");
    assert_int_equal(img.w, json_integer_value(json_object_get(ji, "width")));
    assert_int_equal(img.h, json_integer_value(json_object_get(ji, "height")));
    char sha[65];
    pd_sha256_hex(img.rgb, (size_t)img.w * img.h * 3, sha);
    assert_string_equal(sha, json_string_value(json_object_get(ji, "rgb_sha256")));

    float *in = pd_alloc_floats((size_t)PD_FACES_SIZE * PD_FACES_SIZE * 3);
    float *scores = pd_alloc_floats(PD_ANCHORS), *boxes = pd_alloc_floats(PD_ANCHORS * 4);
    struct pd_crop crop = pd_crop_pad(&img);
    pd_image_to_input(&img, &crop, PD_FACES_SIZE, in);
    assert_int_equal(pd_net_detect(net, in, NULL, scores, boxes), PD_OK);

    json_t *rs = json_object_get(json_object_get(ref, "anchors"), "scores");
    json_t *rb = json_object_get(json_object_get(ref, "anchors"), "boxes");
    assert_int_equal(json_array_size(rs), PD_ANCHORS);
    assert_int_equal(json_array_size(rb), PD_ANCHORS * 4);
    double ws = 0, wb = 0;
    int bad = 0;
    for (int a = 0; a < PD_ANCHORS; a++) {
        double d = fabs(scores[a] - json_number_value(json_array_get(rs, (size_t)a)));
        ws = fmax(ws, d);
        bad += d > TOL;
        for (int k = 0; k < 4; k++) {
            double e = fabs(boxes[4 * a + k] - json_number_value(json_array_get(rb, 4 * a + k)));
            wb = fmax(wb, e);
            bad += e > TOL;
        }
    }
    struct pd_detection dets[PD_SSD_MAX_OUT];
    int nd = pd_ssd_select(scores, boxes, PD_ANCHORS, PD_SSD_MIN_SCORE, PD_SSD_IOU, PD_SSD_MAX_OUT,
                           img.w, img.h, PD_FACES_SIZE, dets);
    json_t *rd = json_object_get(ref, "detections");
    double wds = 0, wiou = 1;
    int matched = 0;
    for (size_t i = 0; i < json_array_size(rd); i++) {
        json_t *d = json_array_get(rd, i);
        double rbox[4];
        for (int k = 0; k < 4; k++)
            rbox[k] = json_number_value(json_array_get(json_object_get(d, "box"), (size_t)k));
        double rscore = json_number_value(json_object_get(d, "score"));
        int best = -1;
        double biou = 0;
        for (int j = 0; j < nd; j++) {
            double v = box_iou(rbox, dets[j].box);
            if (v > biou)
                biou = v, best = j;
        }
        if (best >= 0 && biou >= 0.99 && fabs(dets[best].score - rscore) <= TOL)
            matched++;
        wiou = fmin(wiou, biou);
        if (best >= 0)
            wds = fmax(wds, fabs(dets[best].score - rscore));
    }
    printf("%s: %d detections (reference %zu), worst anchor score diff %.3g, box diff %.3g, "
           "detection score diff %.3g, min IoU %.5f\n",
           jpg, nd, json_array_size(rd), ws, wb, wds, wiou);
    worst_score = fmax(worst_score, ws);
    worst_box = fmax(worst_box, wb);
    worst_det_score = fmax(worst_det_score, wds);
    worst_det_iou = fmin(worst_det_iou, wiou);
    assert_int_equal(bad, 0);
    assert_int_equal(nd, (int)json_array_size(rd));
    assert_int_equal(matched, (int)json_array_size(rd));
    free(in);
    free(scores);
    free(boxes);
    pd_image_fini(&img);
    json_decref(ref);
}

/* Every sampleN.jpg with a sampleN.json beside it in dir; returns how many were checked. */
static int check_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    char names[64][256];
    int count = 0;
    while ((e = readdir(d)) && count < 64) {
        size_t l = strlen(e->d_name);
        if (l > 4 && l < 200 && !strcmp(e->d_name + l - 4, ".jpg"))
            snprintf(names[count++], 256, "%.*s", (int)(l - 4), e->d_name);
    }
    closedir(d);
    for (int i = 0; i < count; i++) {
        char jpg[1024], json[1024];
        snprintf(jpg, sizeof(jpg), "%.512s/%.200s.jpg", dir, names[i]);
        snprintf(json, sizeof(json), "%.512s/%.200s.json", dir, names[i]);
        FILE *f = fopen(json, "r");
        if (!f)
            continue;
        fclose(f);
        check_photo(jpg, json);
        n++;
    }
    return n;
}

static void test_parity_committed(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/faces", test_env("PD_TESTDATA"));
    assert_int_equal(check_dir(dir), 1);
}

static void test_parity_shared(void **state)
{
    (void)state;
    char dir[512];
    const char *shared = getenv("PD_SHARED");
    snprintf(dir, sizeof(dir), "%s/reference/faces", shared ? shared : "../shared");
    int n = check_dir(dir);
    if (n == 0) {
        printf("no shared reference set at %s: only the committed photo was checked\n", dir);
        skip();
    }
    assert_int_equal(n, 6);
    printf("worst over all photos: anchor score %.3g, anchor box %.3g, detection score %.3g, "
           "detection IoU %.5f\n",
           worst_score, worst_box, worst_det_score, worst_det_iou);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_committed),
        cmocka_unit_test(test_parity_shared),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

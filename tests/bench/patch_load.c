/*
 * Cold load of a typical patch from the store through the cache (read, validate, fold), and the
 * memory a resident patch holds against its file size. A "typical" patch is the sbdw kind: every
 * scale/bias, every depthwise kernel and a 5-class head (71,653 parameters).
 *   build/tests/bench_patch_load [N]
 */
#include "../../patches/cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (n < 10)
        n = 10;
    const char *mp =
        getenv("PD_MODEL") ? getenv("PD_MODEL") : "models/ssd_mobilenet_v1.safetensors";
    char msg[PD_MSG_MAX];
    pd_model *m;
    if (pd_model_load(mp, &m, msg)) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    /* the sbdw patch: the backbone's own values, so it is realistic in size and content */
    static const char *labels[] = {"daisy", "dandelion", "roses", "sunflowers", "tulips"};
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    s.kind = PD_PATCH_CLASSIFY;
    s.nclass = 5;
    s.labels = labels;
    for (int l = 0; l < PD_NLAYERS; l++) {
        int dw = pd_layer_is_dw(l);
        s.scale[l] = dw ? pd_model_gamma(m, l) : pd_model_scale(m, l);
        s.bias[l] = dw ? pd_model_beta(m, l) : pd_model_bias(m, l);
        s.kernel[l] = pd_model_dw(m, l);
    }
    float *hw = pd_alloc_floats(PD_FEATURES * 5), hb[5] = {0};
    s.head_w = hw;
    s.head_b = hb;
    pd_patch *p;
    uint8_t *buf;
    size_t len;
    if (pd_patch_build(m, &s, &p, msg) || pd_patch_serialize(p, &buf, &len, msg)) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    printf(
        "patch: %lld trainable parameters, file %zu bytes, resident %zu bytes (%.2fx the file)\n",
        (long long)pd_patch_params(p), len, pd_patch_bytes(p), (double)pd_patch_bytes(p) / len);
    pd_patch_unref(p);
    char root[] = "/tmp/pd_bench_XXXXXX";
    if (!mkdtemp(root))
        return 1;
    pd_store *st;
    pd_cache *c;
    pd_store_open(root, 0, &st, msg);
    pd_cache_new(m, st, 0, &c, msg);
    int v;
    for (int i = 0; i < n; i++) {
        char task[16];
        snprintf(task, sizeof(task), "t%d", i);
        pd_store_put(st, "default", task, buf, len, &v, msg);
    }
    double *ms = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++) {
        char task[16];
        snprintf(task, sizeof(task), "t%d", i);
        double t0 = pd_now();
        if (pd_cache_get(c, "default", task, 0, &p, &v, msg)) {
            fprintf(stderr, "%s\n", msg);
            return 1;
        }
        ms[i] = (pd_now() - t0) * 1e3;
        pd_patch_unref(p);
    }
    qsort(ms, (size_t)n, sizeof(double), cmp);
    printf("cold load (store -> validated patch), %d patches: median %.3f ms, p99 %.3f ms\n", n,
           ms[n / 2], ms[(int)(0.99 * (n - 1))]);
    pd_cache_free(c);
    pd_store_close(st);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    if (system(cmd))
        return 1;
    free(ms), free(buf), free(hw);
    pd_model_free(m);
    return 0;
}

/*
 * net.h - the SSD MobileNetV1 backbone and its forward pass, with per-task patch hooks.
 *
 * A pd_model holds the backbone's weights, loaded once from the converted safetensors file and
 * read-only afterwards; any number of threads may share it. A pd_net is one worker's scratch
 * (activation buffers sized once for a maximum batch and input size): one pd_net per thread.
 * Nothing is allocated per image.
 *
 * The graph (face-api's ssdMobilenetv1, TensorFlow 'SAME' padding):
 *   conv0    full 3x3 stride 2, 3 -> 32
 *   dw1..13  depthwise 3x3 + batch norm (eps 0.001); stride 2 at 2, 4, 6 and 12
 *   pw1..13  pointwise 1x1 with the batch norm folded into an offset
 *   ReLU6 after each of these 27 layers.
 *   faces:   8 SSD layers (1x1, then 3x3 stride 2, alternating, ReLU6) after pw13, and 6 box
 *            predictors (1x1 with bias, no activation) on pw11, pw13 and SSD layers 1, 3, 5, 7;
 *            5118 anchors.
 *   classification: pw13, global average pool, linear head, softmax.
 *
 * Patch hooks. The 27 backbone layers are numbered 0 (conv0), 2i-1 (dw i) and 2i (pw i). Each
 * computes y = relu6(scale * conv(x) + bias) per channel. For the backbone, pointwise layers have
 * scale 1 and bias = the folded offset; depthwise layers have scale = gamma / sqrt(var + eps) and
 * bias = beta - mean * scale. A task (struct pd_task) may replace any layer's scale and bias, any
 * depthwise kernel and (the `full` kind) the weights of conv0 and the pointwise layers; a batch
 * whose samples carry different pointwise weights runs one GEMM per run of equal weights, so such
 * tasks lose the cross-task batching the others get. pd_model_fold_bn turns a task's depthwise
 * gamma/beta into scale/bias with the backbone's frozen moving statistics. The task never copies
 * the backbone.
 */
#ifndef PD_NET_H
#define PD_NET_H

#include "pd.h"

#define PD_NLAYERS    27   /* conv0, dw1, pw1, ..., dw13, pw13 */
#define PD_FEATURES   1024 /* channels of pw13 = input of a classification head */
#define PD_ANCHORS    5118
#define PD_FACES_SIZE 512
#define PD_BN_EPS     0.0010000000474974513 /* face-api's epsilon, a float32 0.001 */

static inline int pd_layer_dw(int i)
{
    return 2 * i - 1;
}
static inline int pd_layer_pw(int i)
{
    return 2 * i;
}
static inline int pd_layer_is_dw(int l)
{
    return l % 2 == 1;
}

/* Static description of a backbone layer. */
struct pd_layer_info {
    const char *name; /* "conv0", "dw1", "pw1", ... "pw13" */
    int cin, cout;    /* channels (equal for depthwise) */
    int k, stride;    /* kernel side and stride */
};
const struct pd_layer_info *pd_layer_info(int l);

typedef struct pd_model pd_model;

/*
 * Loads the backbone from a converted safetensors file (see models/fetch-backbone.sh). Checks
 * every tensor's presence, dtype and shape. On failure *out is NULL, msg names the problem.
 */
int pd_model_load(const char *path, pd_model **out, char *msg);
void pd_model_free(pd_model *m);

/* sha256 of the backbone file (64 hex digits); borrowed. Patches name it. */
const char *pd_model_sha256(const pd_model *m);

/* The backbone's own per-channel scale, bias and depthwise kernel of layer l (borrowed). */
const float *pd_model_scale(const pd_model *m, int l);
const float *pd_model_bias(const pd_model *m, int l);
const float *pd_model_dw(const pd_model *m, int l); /* (3, 3, C); NULL unless depthwise */
/* The backbone's batch-norm gamma and beta of depthwise layer l (borrowed). */
const float *pd_model_gamma(const pd_model *m, int l);
const float *pd_model_beta(const pd_model *m, int l);

/* The backbone's convolution weights of layer l: conv0 (3, 3, 3, 32), dwN (3, 3, C), pwN
 * (Cin, Cout). Borrowed. */
const float *pd_model_weights(const pd_model *m, int l);
/* Pointwise layer l's weights as pd_pw_pack laid them out at load, or NULL where this CPU does
 * not run the packed kernel (or l is not pointwise). Borrowed. */
const float *pd_model_packed(const pd_model *m, int l);
/* The frozen batch-norm moving mean and variance of depthwise layer l. Borrowed. */
void pd_model_bn_stats(const pd_model *m, int l, const float **mean, const float **var);

/* Folds a depthwise layer's gamma/beta with the backbone's moving statistics into scale/bias. */
void pd_model_fold_bn(const pd_model *m, int l, const float *gamma, const float *beta, float *scale,
                      float *bias);

/* Number of parameters of the backbone file (every tensor, anchors included). */
int64_t pd_model_params(const pd_model *m);

/*
 * What a task changes. A value type: every pointer is borrowed and may be NULL, meaning "the
 * backbone's". A task with nclass == 0 is a detection task (faces); otherwise a classifier.
 */
struct pd_task {
    int size;                       /* classification input side (default 224) */
    const float *scale[PD_NLAYERS]; /* (cout) of layer l */
    const float *bias[PD_NLAYERS];  /* (cout) of layer l */
    const float *dw[PD_NLAYERS];    /* (3, 3, C), depthwise layers only */
    const float *w[PD_NLAYERS];     /* conv0 (3, 3, 3, 32) and pwN (Cin, Cout) weights */
    int nclass;                     /* classes of the head; 0 = detection */
    const float *head_w;            /* (PD_FEATURES, nclass) */
    const float *head_b;            /* (nclass) */
};

typedef struct pd_net pd_net;

/*
 * Scratch for batches of at most max_batch images of side at most max_size (at least
 * PD_FACES_SIZE when it will run faces). On failure *out is NULL.
 */
int pd_net_new(const pd_model *m, int max_batch, int max_size, pd_net **out, char *msg);
void pd_net_free(pd_net *net);

#define PD_NET_MAX_THREADS 16
/*
 * Splits every layer of this net's forward passes across `threads` threads (the caller's plus
 * threads - 1 of the net's own), to cut the latency of one request; 1 (the default) runs on the
 * caller's thread alone. BLAS should be single-threaded then (openblas_set_num_threads(1)), or
 * the two kinds of threads oversubscribe the cores. Not while a forward pass runs on this net.
 */
int pd_net_set_threads(pd_net *net, int threads, char *msg);

/*
 * Classifies n images of one size: in (n, size, size, 3) normalised to [-1, 1]; tasks[i] is
 * sample i's task (all of the same size, each with a head). probs[i] receives tasks[i]->nclass
 * softmax probabilities. feats, when not NULL, receives (n, PD_FEATURES) pooled features.
 */
int pd_net_classify(pd_net *net, int n, int size, const float *in,
                    const struct pd_task *const *tasks, float *const *probs, float *feats);

/*
 * Runs the face detector on one image in (512, 512, 3) normalised: scores (PD_ANCHORS) receives
 * every anchor's face probability and boxes (PD_ANCHORS, 4) its decoded box [ymin, xmin, ymax,
 * xmax] relative to the padded square input, before clipping - face-api's outputLayer exactly.
 * task may be NULL (the backbone) or a detection task's scales/biases.
 */
int pd_net_detect(pd_net *net, const float *in, const struct pd_task *task, float *scores,
                  float *boxes);

#endif

/*
 * train.h - learning a task's patch from labelled photos while the backbone stays frozen.
 *
 * Kinds (what is trained):
 *   logits  the head only, on features computed once per image: a linear probe (softmax
 *           regression on standardised features, full-batch Adam with L2 chosen by 5-fold
 *           cross-validation), folded back so the head reads raw features.
 *   sb      the head plus every layer's scale and bias (pointwise scale/bias, depthwise
 *           batch-norm gamma/beta; moving statistics stay frozen).
 *   sbdw    sb plus the depthwise kernels.
 *   full    every weight: sbdw plus conv0's and the pointwise layers' weights (CLI only, the upper
 *           reference; the patch carries 3.2M pointwise weights, ~13 MB). The pretrained weights
 *           take a hundredth of the peak learning rate (PD_TRAIN_FULL_LR_SCALE).
 * sb and sbdw are LP-FT: the head starts from the converged probe, then everything trains
 * together with Adam (warm-up, cosine decay), minibatches with random crops (60-100% of each
 * side) and horizontal flips, cross-entropy loss, peak learning rate 3e-3. When a validation set is
 * given and the probe scores higher on it than the fine-tuned patch, the probe is returned
 * (probe_only): a trained patch is never worse than the best logits-only head.
 *
 * Default schedule: 5 epochs, or more on small sets so that at least PD_TRAIN_MIN_STEPS
 * optimisation steps run. Deterministic for a given seed: shuffling and augmentation draw from
 * the seed, and gradients are reduced in a fixed order.
 *
 * Compute: `threads` workers split each minibatch (data parallel, BLAS single-threaded inside),
 * while a loader thread decodes and augments the next minibatch. Memory is bounded by the
 * minibatch: activations of one micro-batch per worker, two decoded minibatches; only the
 * probe's cached features (4 KiB per image) grow with the dataset.
 *
 * Threads: pd_train runs on the caller's thread plus its own; progress and cancelled callbacks
 * run on the caller's thread, between steps.
 */
#ifndef PD_TRAIN_H
#define PD_TRAIN_H

#include "data.h"
#include "net.h"

#define PD_TRAIN_MIN_STEPS     200
#define PD_TRAIN_FULL_LR_SCALE 0.01

enum pd_train_kind {
    PD_TRAIN_LOGITS,
    PD_TRAIN_SB,
    PD_TRAIN_SBDW,
    PD_TRAIN_FULL,
};

const char *pd_train_kind_name(enum pd_train_kind k);
/* Parses "logits", "sb", "sbdw", "full"; -1 when unknown. */
int pd_train_kind_parse(const char *s);

/* Raw parameters, as a patch stores them (depthwise scale/bias are gamma/beta). NULL: the
 * backbone's. Owned by whoever filled them. */
struct pd_params {
    float *scale[PD_NLAYERS], *bias[PD_NLAYERS], *kernel[PD_NLAYERS];
    float *weight[PD_NLAYERS]; /* conv0 and pointwise weights (full) */
    float *head_w, *head_b;    /* (1024, nclass), (nclass) */
    int nclass;
};

struct pd_train_progress {
    const char *phase; /* "features", "probe", "train", "done" */
    int epoch, epochs; /* 1-based */
    int step, steps;
    double loss;      /* mean over the last epoch's steps so far */
    double train_acc; /* on the augmented minibatches of this epoch */
    double val_acc;   /* after the last finished epoch; < 0 without a validation set */
    double probe_val_acc;
    double images_per_s;
    double eta_s;
    int epoch_done; /* 1 on the report that ends an epoch (after validation) */
};

struct pd_train_opts {
    enum pd_train_kind kind;
    int epochs;  /* 0: the default schedule */
    int size;    /* input side (default 224) */
    int batch;   /* default 32 */
    int threads; /* default 2 */
    uint64_t seed;
    double lr;         /* peak learning rate; default 3e-3 */
    int no_probe_init; /* sb/sbdw: start the head at zero instead of the probe (plain FT) */
    const struct pd_params *base; /* sequential transfer: start from these layers (not head) */
    void (*progress)(void *ctx, const struct pd_train_progress *p);
    int (*cancelled)(void *ctx); /* non-zero stops at the next step with PD_CANCELLED */
    void *ctx;
};

struct pd_train_result {
    struct pd_params p; /* owned: the layers the kind trains, and the head */
    int epochs, steps, images, skipped;
    double seconds;       /* everything */
    double train_seconds; /* the fine-tuning epochs alone */
    double train_acc;     /* last epoch, augmented */
    double val_acc;       /* < 0 without a validation set */
    double probe_val_acc; /* < 0 without a validation set */
    int probe_only;       /* the probe beat the fine-tuned patch on validation */
    double probe_l2;      /* the probe's L2 strength, chosen by cross-validation */
};

int pd_train(const pd_model *m, const struct pd_dataset *train, const struct pd_dataset *val,
             const struct pd_train_opts *o, struct pd_train_result *res, char *msg);
void pd_params_free(struct pd_params *p);

struct pd_eval_result {
    int n, correct, skipped, nclass;
    int *confusion; /* (nclass, nclass): rows true class, columns predicted; owned */
    double seconds;
};

/*
 * Evaluates a classification task on a dataset whose class i is the task's class map[i]
 * (-1: not in the task, counted as wrong). Uses `threads` workers.
 */
int pd_eval(const pd_model *m, const struct pd_task *task, const struct pd_dataset *ds,
            const int *map, int threads, struct pd_eval_result *out, char *msg);

/*
 * For the gradient checks: the mean cross-entropy of n images (n, size, size, 3) with labels y
 * under raw parameters p (every layer trainable, kernels and weights included), and, when grad is
 * not NULL, its gradient in the same raw space (newly allocated into grad; free with
 * pd_params_free).
 */
int pd__train_loss_grad(const pd_model *m, const struct pd_params *p, int size, int n,
                        const float *in, const int *y, double *loss, struct pd_params *grad);

#endif

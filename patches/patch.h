/*
 * patch.h - a task's patch: what it changes in the backbone, as a file and in memory.
 *
 * File format: safetensors (see core/st.h), all tensors F32, little-endian. Tensor names, with
 * L one of the backbone layers conv0, dw1, pw1, ..., dw13, pw13 (pd_layer_info):
 *
 *   layers.L.scale    (Cout)         conv0 and pwN: per-channel scale (backbone: all 1)
 *   layers.L.bias     (Cout)         conv0 and pwN: per-channel bias (backbone: the folded offset)
 *   layers.L.gamma    (C)            dwN: batch-norm gamma (moving mean/variance stay frozen)
 *   layers.L.beta     (C)            dwN: batch-norm beta
 *   layers.L.kernel   (3, 3, C)      dwN: the depthwise kernel
 *   layers.L.weight   (3, 3, 3, 32)  conv0: the convolution weights (`full` patches)
 *                     (Cin, Cout)    pwN: the pointwise weights (`full` patches)
 *   head.weight       (1024, K)      classification head: logits = features . weight + bias
 *   head.bias         (K)
 *
 * Every tensor is optional; a layer without a tensor uses the backbone's own. Metadata (all
 * values are strings, as safetensors requires):
 *
 *   format            "patchd-patch"                (required)
 *   format_version    "1"                           (required)
 *   backbone_sha256   sha256 of the backbone file   (required; another backbone's patch is refused)
 *   kind              "classification" or "detection" (required)
 *   labels            JSON array of K distinct non-empty strings, in logit order (classification)
 *   input_size        classification input side, "32".."512" (default "224")
 *   parts             comma-separated subset of "scale_bias,depthwise,weights,head": must name
 *                     exactly the parts present (scale_bias = any scale/bias/gamma/beta tensor,
 *                     weights = any conv0/pointwise weight)
 *   training          optional JSON object: kind, epochs, images, accuracy, date, ...
 *
 * A classification patch must carry a head; a detection patch must not (it uses the SSD head).
 * Loading validates everything: unknown tensor names (named in the message), wrong shapes or
 * dtypes, NaN or Inf, labels not matching the head, size limits (PD_PATCH_MAX_BYTES).
 *
 * In memory a pd_patch is immutable after load and reference-counted (pd_patch_ref/unref), so any
 * number of threads may run forward passes with it while the cache swaps versions. It owns its
 * tensors only, never a copy of the backbone; its struct pd_task points at folded scales/biases.
 */
#ifndef PD_PATCH_H
#define PD_PATCH_H

#include "../core/net.h"

#define PD_PATCH_FORMAT     "patchd-patch"
#define PD_PATCH_VERSION    "1"
#define PD_PATCH_MAX_BYTES  (64u << 20)
#define PD_PATCH_MAX_LABELS 10000
#define PD_PATCH_LABEL_MAX  128
#define PD_PATCH_MAX_SIZE   512 /* largest classification input side */

enum pd_patch_kind {
    PD_PATCH_CLASSIFY,
    PD_PATCH_DETECT,
};

/* Parts a patch carries (bit set). */
enum {
    PD_PART_SCALE_BIAS = 1,
    PD_PART_DEPTHWISE = 2,
    PD_PART_HEAD = 4,
    PD_PART_WEIGHTS = 8,
};

/*
 * The raw content of a patch, as in the file: every pointer borrowed, NULL where absent.
 * scale/bias hold gamma/beta for depthwise layers.
 */
struct pd_patch_spec {
    enum pd_patch_kind kind;
    int size;                  /* classification input side; 0 means 224 */
    int nclass;                /* K */
    const char *const *labels; /* K strings */
    const float *scale[PD_NLAYERS], *bias[PD_NLAYERS];
    const float *kernel[PD_NLAYERS]; /* depthwise layers only */
    const float *weight[PD_NLAYERS]; /* conv0 and pointwise layers only */
    const float *head_w, *head_b;
    const char *training; /* JSON object text or NULL */
};

typedef struct pd_patch pd_patch;

/* Builds a patch from a spec (copies everything) after validating it against the backbone. */
int pd_patch_build(const pd_model *m, const struct pd_patch_spec *spec, pd_patch **out, char *msg);

/* Parses and validates a patch file image. The bytes are not kept (hash them first if needed). */
int pd_patch_parse(const pd_model *m, const uint8_t *buf, size_t len, pd_patch **out, char *msg);

/* Reads and parses a patch file. */
int pd_patch_load(const pd_model *m, const char *path, pd_patch **out, char *msg);

/*
 * A new classification patch with the backbone's own layers and a freshly initialised head
 * (small random weights from seed, zero bias): a valid starting point for training or tests.
 */
int pd_patch_new_identity(const pd_model *m, const char *const *labels, int nclass, int size,
                          uint64_t seed, pd_patch **out, char *msg);

/*
 * A classification patch file from trained raw parameters (params as struct pd_params in
 * core/train.h: scale/bias/kernel/weight per layer, head), the labels, the input side and a
 * training summary (JSON object text, may be NULL): built, validated and serialised into a new
 * buffer (caller frees). *nparams receives the trainable parameter count when not NULL.
 */
struct pd_params;
int pd_patch_from_params(const pd_model *m, const struct pd_params *params,
                         const char *const *labels, int nclass, int size, const char *training,
                         uint8_t **out, size_t *len, int64_t *nparams, char *msg);

/* Serialises to a safetensors image (new buffer, caller frees). Deterministic. */
int pd_patch_serialize(const pd_patch *p, uint8_t **out, size_t *len, char *msg);

/* Reference counting: new patches start at 1; unref frees at 0. Thread-safe. NULL is a no-op. */
pd_patch *pd_patch_ref(pd_patch *p);
void pd_patch_unref(pd_patch *p);

/* The task to run (borrowed; valid while a reference is held). */
const struct pd_task *pd_patch_task(const pd_patch *p);
/* The raw content (borrowed; valid while a reference is held). */
const struct pd_patch_spec *pd_patch_spec(const pd_patch *p);

enum pd_patch_kind pd_patch_kind(const pd_patch *p);
int pd_patch_parts(const pd_patch *p);      /* PD_PART_* bits */
int64_t pd_patch_params(const pd_patch *p); /* trainable parameters it carries */
size_t pd_patch_bytes(const pd_patch *p);   /* memory it holds */
const char *pd_patch_kind_name(enum pd_patch_kind k);
/* "scale_bias,depthwise,weights,head" style list of parts into buf (at least 48 bytes). */
void pd_patch_parts_str(int parts, char *buf, size_t len);

#endif

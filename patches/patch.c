#include "patch.h"

#include "../core/st.h"
#include "../core/train.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pd_patch {
    atomic_int refs;
    struct pd_patch_spec spec; /* points into the arrays below */
    char **labels;
    char *training;
    float *raw_scale[PD_NLAYERS], *raw_bias[PD_NLAYERS], *raw_kernel[PD_NLAYERS];
    float *raw_weight[PD_NLAYERS];
    float *head_w, *head_b;
    float *eff_scale[PD_NLAYERS], *eff_bias[PD_NLAYERS]; /* folded depthwise batch norm */
    struct pd_task task;
    char backbone[65];
    int parts;
    int64_t params;
    size_t bytes;
};

const char *pd_patch_kind_name(enum pd_patch_kind k)
{
    return k == PD_PATCH_DETECT ? "detection" : "classification";
}

/* The parts in the order they are listed, with their names. */
static const struct {
    int bit;
    const char *name;
} part_names[] = {{PD_PART_SCALE_BIAS, "scale_bias"},
                  {PD_PART_DEPTHWISE, "depthwise"},
                  {PD_PART_WEIGHTS, "weights"},
                  {PD_PART_HEAD, "head"}};

void pd_patch_parts_str(int parts, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof(part_names) / sizeof(part_names[0]); i++)
        if ((parts & part_names[i].bit) && at < len)
            at += (size_t)snprintf(buf + at, len - at, "%s%s", at ? "," : "", part_names[i].name);
}

static void patch_free(pd_patch *p)
{
    if (!p)
        return;
    for (int i = 0; p->labels && i < p->spec.nclass; i++)
        free(p->labels[i]);
    free(p->labels);
    free(p->training);
    for (int l = 0; l < PD_NLAYERS; l++) {
        free(p->raw_scale[l]);
        free(p->raw_bias[l]);
        free(p->raw_kernel[l]);
        free(p->raw_weight[l]);
        free(p->eff_scale[l]);
        free(p->eff_bias[l]);
    }
    free(p->head_w);
    free(p->head_b);
    free(p);
}

pd_patch *pd_patch_ref(pd_patch *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void pd_patch_unref(pd_patch *p)
{
    if (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        patch_free(p);
}

/* Copies n floats into a new aligned array after checking they are finite. */
static int copy_finite(const float *src, size_t n, const char *what, float **dst, size_t *bytes,
                       char *msg)
{
    *dst = pd_alloc_floats(n);
    if (!*dst)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    memcpy(*dst, src, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!isfinite((*dst)[i]))
            return pd_fail(msg, PD_FORMAT, "%s: element %zu is %s", what, i,
                           isnan((*dst)[i]) ? "NaN" : "infinite");
    *bytes += n * sizeof(float);
    return PD_OK;
}

static int check_label(const char *s, int i, char *msg)
{
    size_t n = strlen(s);
    if (n == 0 || n > PD_PATCH_LABEL_MAX)
        return pd_fail(msg, PD_FORMAT, "label %d is empty or longer than %d bytes", i,
                       PD_PATCH_LABEL_MAX);
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f)
            return pd_fail(msg, PD_FORMAT, "label %d contains a control character", i);
    return PD_OK;
}

static int build(pd_patch *p, const pd_model *m, const struct pd_patch_spec *s, char *msg)
{
    int err;
    char what[64];
    if (s->kind != PD_PATCH_CLASSIFY && s->kind != PD_PATCH_DETECT)
        return pd_fail(msg, PD_FORMAT, "unknown patch kind");
    p->spec.kind = s->kind;
    p->spec.size = s->size ? s->size : 224;
    if (p->spec.size < 32 || p->spec.size > PD_PATCH_MAX_SIZE)
        return pd_fail(msg, PD_FORMAT, "input_size %d is outside 32..%d", p->spec.size,
                       PD_PATCH_MAX_SIZE);
    if (s->kind == PD_PATCH_CLASSIFY) {
        if (!s->head_w || !s->head_b)
            return pd_fail(msg, PD_FORMAT,
                           "a classification patch needs head.weight and head.bias");
        if (s->nclass < 1 || s->nclass > PD_PATCH_MAX_LABELS)
            return pd_fail(msg, PD_FORMAT, "%d classes: must be 1..%d", s->nclass,
                           PD_PATCH_MAX_LABELS);
        if (!s->labels)
            return pd_fail(msg, PD_FORMAT, "a classification patch needs labels");
    } else if (s->head_w || s->head_b || s->nclass) {
        return pd_fail(msg, PD_FORMAT, "a detection patch cannot carry a head or labels");
    }
    p->spec.nclass = s->nclass;
    if (s->nclass) {
        p->labels = calloc((size_t)s->nclass, sizeof(char *));
        if (!p->labels)
            return pd_fail(msg, PD_NOMEM, "out of memory");
        for (int i = 0; i < s->nclass; i++) {
            if ((err = check_label(s->labels[i], i, msg)))
                return err;
            for (int j = 0; j < i; j++)
                if (!strcmp(s->labels[i], s->labels[j]))
                    return pd_fail(msg, PD_FORMAT, "label '%s' appears twice", s->labels[i]);
            p->labels[i] = strdup(s->labels[i]);
            if (!p->labels[i])
                return pd_fail(msg, PD_NOMEM, "out of memory");
            p->bytes += strlen(s->labels[i]) + 1;
        }
        p->spec.labels = (const char *const *)p->labels;
    }
    if (s->training) {
        json_error_t jerr;
        json_t *t = json_loads(s->training, 0, &jerr);
        int ok = json_is_object(t);
        json_decref(t);
        if (!ok)
            return pd_fail(msg, PD_FORMAT, "training metadata is not a JSON object");
        p->training = strdup(s->training);
        if (!p->training)
            return pd_fail(msg, PD_NOMEM, "out of memory");
        p->spec.training = p->training;
    }
    p->task.size = p->spec.size;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        const int dw = pd_layer_is_dw(l);
        size_t c = (size_t)li->cout;
        if (s->scale[l]) {
            snprintf(what, sizeof(what), "layers.%s.%s", li->name, dw ? "gamma" : "scale");
            if ((err = copy_finite(s->scale[l], c, what, &p->raw_scale[l], &p->bytes, msg)))
                return err;
            p->params += (int64_t)c;
            p->parts |= PD_PART_SCALE_BIAS;
        }
        if (s->bias[l]) {
            snprintf(what, sizeof(what), "layers.%s.%s", li->name, dw ? "beta" : "bias");
            if ((err = copy_finite(s->bias[l], c, what, &p->raw_bias[l], &p->bytes, msg)))
                return err;
            p->params += (int64_t)c;
            p->parts |= PD_PART_SCALE_BIAS;
        }
        if (s->kernel[l]) {
            if (!dw)
                return pd_fail(msg, PD_FORMAT, "layers.%s.kernel: only depthwise layers have one",
                               li->name);
            snprintf(what, sizeof(what), "layers.%s.kernel", li->name);
            if ((err = copy_finite(s->kernel[l], 9 * c, what, &p->raw_kernel[l], &p->bytes, msg)))
                return err;
            p->params += (int64_t)(9 * c);
            p->parts |= PD_PART_DEPTHWISE;
        }
        if (s->weight[l]) {
            if (dw)
                return pd_fail(msg, PD_FORMAT,
                               "layers.%s.weight: depthwise layers have a kernel, not a weight",
                               li->name);
            size_t nw = (size_t)li->k * li->k * li->cin * c;
            snprintf(what, sizeof(what), "layers.%s.weight", li->name);
            if ((err = copy_finite(s->weight[l], nw, what, &p->raw_weight[l], &p->bytes, msg)))
                return err;
            p->params += (int64_t)nw;
            p->parts |= PD_PART_WEIGHTS;
        }
        p->spec.scale[l] = p->raw_scale[l];
        p->spec.bias[l] = p->raw_bias[l];
        p->spec.kernel[l] = p->raw_kernel[l];
        p->spec.weight[l] = p->raw_weight[l];
        p->task.dw[l] = p->raw_kernel[l];
        p->task.w[l] = p->raw_weight[l];
        if (dw && (s->scale[l] || s->bias[l])) {
            /* fold gamma/beta with the frozen moving statistics */
            p->eff_scale[l] = pd_alloc_floats(c);
            p->eff_bias[l] = pd_alloc_floats(c);
            if (!p->eff_scale[l] || !p->eff_bias[l])
                return pd_fail(msg, PD_NOMEM, "out of memory");
            p->bytes += 2 * c * sizeof(float);
            pd_model_fold_bn(m, l, p->raw_scale[l] ? p->raw_scale[l] : pd_model_gamma(m, l),
                             p->raw_bias[l] ? p->raw_bias[l] : pd_model_beta(m, l), p->eff_scale[l],
                             p->eff_bias[l]);
            p->task.scale[l] = p->eff_scale[l];
            p->task.bias[l] = p->eff_bias[l];
        } else if (!dw) {
            p->task.scale[l] = p->raw_scale[l];
            p->task.bias[l] = p->raw_bias[l];
        }
    }
    if (s->head_w) {
        size_t k = (size_t)s->nclass;
        if ((err = copy_finite(s->head_w, PD_FEATURES * k, "head.weight", &p->head_w, &p->bytes,
                               msg)) ||
            (err = copy_finite(s->head_b, k, "head.bias", &p->head_b, &p->bytes, msg)))
            return err;
        p->params += (int64_t)((PD_FEATURES + 1) * k);
        p->parts |= PD_PART_HEAD;
        p->spec.head_w = p->head_w;
        p->spec.head_b = p->head_b;
        p->task.nclass = s->nclass;
        p->task.head_w = p->head_w;
        p->task.head_b = p->head_b;
    }
    memcpy(p->backbone, pd_model_sha256(m), 65);
    p->bytes += sizeof(*p);
    return PD_OK;
}

int pd_patch_build(const pd_model *m, const struct pd_patch_spec *spec, pd_patch **out, char *msg)
{
    *out = NULL;
    pd_patch *p = calloc(1, sizeof(*p));
    if (!p)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    atomic_init(&p->refs, 1);
    int err = build(p, m, spec, msg);
    if (err) {
        patch_free(p);
        return err;
    }
    *out = p;
    return PD_OK;
}

/* Finds the layer called name (len bytes); -1 if none. */
static int layer_by_name(const char *name, size_t len)
{
    for (int l = 0; l < PD_NLAYERS; l++) {
        const char *n = pd_layer_info(l)->name;
        if (strlen(n) == len && !memcmp(n, name, len))
            return l;
    }
    return -1;
}

static int check_shape(const struct pd_st_tensor *t, int ndim, const int64_t *shape, char *msg)
{
    int ok = t->dtype == PD_DT_F32 && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (ok)
        return PD_OK;
    char want[64] = "", got[64] = "";
    for (int i = 0; i < ndim; i++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld", i ? "," : "",
                 (long long)shape[i]);
    for (int i = 0; i < t->ndim && i < 8; i++)
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", i ? "," : "",
                 (long long)t->shape[i]);
    return pd_fail(msg, PD_FORMAT, "tensor '%s': expected F32 [%s], found %s [%s]", t->name, want,
                   pd_dtype_name(t->dtype), got);
}

static int parse_parts(const char *s, int *parts)
{
    *parts = 0;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s), i;
        for (i = 0; i < sizeof(part_names) / sizeof(part_names[0]); i++)
            if (strlen(part_names[i].name) == n && !memcmp(s, part_names[i].name, n))
                break;
        if (i == sizeof(part_names) / sizeof(part_names[0]))
            return -1;
        *parts |= part_names[i].bit;
        s += n + (e ? 1 : 0);
    }
    return 0;
}

static int parse_spec(const pd_model *m, const pd_st *st, struct pd_patch_spec *s, json_t **jl,
                      int *declared_parts, char *msg)
{
    const char *fmt = pd_st_meta(st, "format"), *ver = pd_st_meta(st, "format_version");
    if (!fmt || strcmp(fmt, PD_PATCH_FORMAT))
        return pd_fail(msg, PD_FORMAT, "metadata format is '%s', not '%s'", fmt ? fmt : "",
                       PD_PATCH_FORMAT);
    if (!ver || strcmp(ver, PD_PATCH_VERSION))
        return pd_fail(msg, PD_UNSUPPORTED, "format_version '%s' is not supported (want '%s')",
                       ver ? ver : "", PD_PATCH_VERSION);
    const char *bb = pd_st_meta(st, "backbone_sha256");
    if (!bb || strcmp(bb, pd_model_sha256(m)))
        return pd_fail(msg, PD_MISMATCH,
                       "patch is for backbone %.16s..., this backbone is %.16s...",
                       bb ? bb : "(none)", pd_model_sha256(m));
    const char *kind = pd_st_meta(st, "kind");
    if (kind && !strcmp(kind, "classification"))
        s->kind = PD_PATCH_CLASSIFY;
    else if (kind && !strcmp(kind, "detection"))
        s->kind = PD_PATCH_DETECT;
    else
        return pd_fail(msg, PD_FORMAT, "kind '%s' is not classification or detection",
                       kind ? kind : "");
    const char *size = pd_st_meta(st, "input_size");
    if (size) {
        char *end;
        long v = strtol(size, &end, 10);
        if (!*size || *end || v < 32 || v > PD_PATCH_MAX_SIZE)
            return pd_fail(msg, PD_FORMAT, "input_size '%.16s' is not an integer in 32..%d", size,
                           PD_PATCH_MAX_SIZE);
        s->size = (int)v;
    }
    const char *parts = pd_st_meta(st, "parts");
    if (parts && parse_parts(parts, declared_parts))
        return pd_fail(msg, PD_FORMAT, "parts '%.64s' has an unknown part", parts);
    if (!parts)
        *declared_parts = -1;
    const char *labels = pd_st_meta(st, "labels");
    if (labels) {
        json_error_t jerr;
        *jl = json_loads(labels, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_array(*jl))
            return pd_fail(msg, PD_FORMAT, "labels is not a JSON array");
        size_t n = json_array_size(*jl);
        if (n > PD_PATCH_MAX_LABELS)
            return pd_fail(msg, PD_FORMAT, "%zu labels, more than %d", n, PD_PATCH_MAX_LABELS);
        const char **ls = calloc(n + 1, sizeof(char *));
        if (!ls)
            return pd_fail(msg, PD_NOMEM, "out of memory");
        s->labels = ls;
        for (size_t i = 0; i < n; i++) {
            ls[i] = json_string_value(json_array_get(*jl, i));
            if (!ls[i])
                return pd_fail(msg, PD_FORMAT, "label %zu is not a string", i);
        }
        s->nclass = (int)n;
    }
    s->training = pd_st_meta(st, "training");
    for (int i = 0; i < pd_st_meta_count(st); i++) {
        const char *k, *v;
        pd_st_meta_at(st, i, &k, &v);
        static const char *const known[] = {"format", "format_version", "backbone_sha256",
                                            "kind",   "labels",         "input_size",
                                            "parts",  "training"};
        int ok = 0;
        for (size_t j = 0; j < sizeof(known) / sizeof(known[0]); j++)
            ok |= !strcmp(k, known[j]);
        if (!ok)
            return pd_fail(msg, PD_FORMAT, "unknown metadata key '%.64s'", k);
    }
    for (int i = 0; i < pd_st_count(st); i++) {
        const struct pd_st_tensor *t = pd_st_at(st, i);
        const char *n = t->name;
        int err;
        if (!strcmp(n, "head.weight") || !strcmp(n, "head.bias")) {
            int w = n[5] == 'w';
            int64_t shape[2] = {w ? PD_FEATURES : s->nclass, s->nclass};
            if (!s->nclass)
                return pd_fail(msg, PD_FORMAT, "tensor '%s' needs labels in the metadata", n);
            if ((err = check_shape(t, w ? 2 : 1, w ? shape : shape + 1, msg)))
                return err;
            if (w)
                s->head_w = t->data;
            else
                s->head_b = t->data;
            continue;
        }
        const char *dot = strncmp(n, "layers.", 7) ? NULL : strchr(n + 7, '.');
        int l = dot ? layer_by_name(n + 7, (size_t)(dot - n - 7)) : -1;
        if (l < 0)
            return pd_fail(msg, PD_FORMAT, "unknown tensor '%.100s'", n);
        const struct pd_layer_info *li = pd_layer_info(l);
        const char *field = dot + 1;
        int dw = pd_layer_is_dw(l);
        int64_t c = li->cout, kshape[3] = {3, 3, c};
        if (!strcmp(field, dw ? "gamma" : "scale")) {
            err = check_shape(t, 1, &c, msg);
            s->scale[l] = t->data;
        } else if (!strcmp(field, dw ? "beta" : "bias")) {
            err = check_shape(t, 1, &c, msg);
            s->bias[l] = t->data;
        } else if (dw && !strcmp(field, "kernel")) {
            err = check_shape(t, 3, kshape, msg);
            s->kernel[l] = t->data;
        } else if (!dw && !strcmp(field, "weight")) {
            int64_t conv[4] = {li->k, li->k, li->cin, c}, pw[2] = {li->cin, c};
            err = l == 0 ? check_shape(t, 4, conv, msg) : check_shape(t, 2, pw, msg);
            s->weight[l] = t->data;
        } else {
            return pd_fail(msg, PD_FORMAT, "unknown tensor '%.100s'", n);
        }
        if (err)
            return err;
    }
    return PD_OK;
}

int pd_patch_parse(const pd_model *m, const uint8_t *buf, size_t len, pd_patch **out, char *msg)
{
    *out = NULL;
    if (len > PD_PATCH_MAX_BYTES)
        return pd_fail(msg, PD_TOOBIG, "patch is %zu bytes, more than the limit of %u", len,
                       PD_PATCH_MAX_BYTES);
    pd_st *st;
    int err = pd_st_parse(buf, len, 0, &st, msg);
    if (err)
        return err;
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    json_t *jl = NULL;
    int declared = -1;
    err = parse_spec(m, st, &s, &jl, &declared, msg);
    if (!err)
        err = pd_patch_build(m, &s, out, msg);
    if (!err && declared >= 0 && declared != pd_patch_parts(*out)) {
        char a[48], b[48];
        pd_patch_parts_str(declared, a, sizeof(a));
        pd_patch_parts_str(pd_patch_parts(*out), b, sizeof(b));
        err = pd_fail(msg, PD_FORMAT, "metadata parts '%s' but the tensors carry '%s'", a, b);
        pd_patch_unref(*out);
        *out = NULL;
    }
    free((void *)s.labels);
    json_decref(jl);
    pd_st_free(st);
    return err;
}

int pd_patch_load(const pd_model *m, const char *path, pd_patch **out, char *msg)
{
    *out = NULL;
    uint8_t *buf;
    size_t len;
    int err = pd_read_file(path, PD_PATCH_MAX_BYTES, &buf, &len, msg);
    if (err)
        return err;
    err = pd_patch_parse(m, buf, len, out, msg);
    free(buf);
    return err;
}

int pd_patch_new_identity(const pd_model *m, const char *const *labels, int nclass, int size,
                          uint64_t seed, pd_patch **out, char *msg)
{
    *out = NULL;
    if (nclass < 1 || nclass > PD_PATCH_MAX_LABELS)
        return pd_fail(msg, PD_INVAL, "%d labels: need 1..%d", nclass, PD_PATCH_MAX_LABELS);
    float *w = pd_alloc_floats((size_t)PD_FEATURES * nclass), *b = pd_alloc_floats((size_t)nclass);
    if (!w || !b) {
        free(w);
        free(b);
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    /* xorshift64*: uniform in [-0.01, 0.01), reproducible from the seed */
    uint64_t x = seed ? seed : 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < (size_t)PD_FEATURES * nclass; i++) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        w[i] = (float)(((x * 0x2545F4914F6CDD1Dull) >> 40) / (double)(1 << 24) - 0.5) * 0.02f;
    }
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    s.kind = PD_PATCH_CLASSIFY;
    s.size = size;
    s.nclass = nclass;
    s.labels = labels;
    s.head_w = w;
    s.head_b = b;
    int err = pd_patch_build(m, &s, out, msg);
    free(w);
    free(b);
    return err;
}

int pd_patch_from_params(const pd_model *m, const struct pd_params *params,
                         const char *const *labels, int nclass, int size, const char *training,
                         uint8_t **out, size_t *len, int64_t *nparams, char *msg)
{
    struct pd_patch_spec sp;
    memset(&sp, 0, sizeof(sp));
    sp.kind = PD_PATCH_CLASSIFY;
    sp.size = size;
    sp.nclass = nclass;
    sp.labels = labels;
    for (int l = 0; l < PD_NLAYERS; l++) {
        sp.scale[l] = params->scale[l];
        sp.bias[l] = params->bias[l];
        sp.kernel[l] = params->kernel[l];
        sp.weight[l] = params->weight[l];
    }
    sp.head_w = params->head_w;
    sp.head_b = params->head_b;
    sp.training = training;
    pd_patch *p;
    int err = pd_patch_build(m, &sp, &p, msg);
    if (err)
        return err;
    if (nparams)
        *nparams = pd_patch_params(p);
    err = pd_patch_serialize(p, out, len, msg);
    pd_patch_unref(p);
    return err;
}

int pd_patch_serialize(const pd_patch *p, uint8_t **out, size_t *len, char *msg)
{
    struct pd_st_tensor ts[3 * PD_NLAYERS + 2];
    char names[3 * PD_NLAYERS + 2][48];
    int n = 0;
    for (int l = 0; l < PD_NLAYERS; l++) {
        const struct pd_layer_info *li = pd_layer_info(l);
        int dw = pd_layer_is_dw(l);
        /* a layer has a depthwise kernel or a weight, never both: at most 3 tensors */
        const float *arr[3] = {p->raw_scale[l], p->raw_bias[l],
                               dw ? p->raw_kernel[l] : p->raw_weight[l]};
        const char *field[3] = {dw ? "gamma" : "scale", dw ? "beta" : "bias",
                                dw ? "kernel" : "weight"};
        for (int f = 0; f < 3; f++) {
            if (!arr[f])
                continue;
            snprintf(names[n], sizeof(names[n]), "layers.%s.%s", li->name, field[f]);
            struct pd_st_tensor *t = &ts[n];
            memset(t, 0, sizeof(*t));
            t->name = names[n];
            t->dtype = PD_DT_F32;
            t->data = arr[f];
            if (f == 2 && dw) {
                t->ndim = 3, t->shape[0] = 3, t->shape[1] = 3, t->shape[2] = li->cout;
            } else if (f == 2 && l == 0) {
                t->ndim = 4, t->shape[0] = li->k, t->shape[1] = li->k, t->shape[2] = li->cin;
                t->shape[3] = li->cout;
            } else if (f == 2) {
                t->ndim = 2, t->shape[0] = li->cin, t->shape[1] = li->cout;
            } else {
                t->ndim = 1, t->shape[0] = li->cout;
            }
            t->nbytes = 4;
            for (int d = 0; d < t->ndim; d++)
                t->nbytes *= (size_t)t->shape[d];
            n++;
        }
    }
    if (p->head_w) {
        int k = p->spec.nclass;
        ts[n] = (struct pd_st_tensor){.name = "head.weight",
                                      .dtype = PD_DT_F32,
                                      .ndim = 2,
                                      .shape = {PD_FEATURES, k},
                                      .data = p->head_w,
                                      .nbytes = (size_t)PD_FEATURES * k * 4};
        n++;
        ts[n] = (struct pd_st_tensor){.name = "head.bias",
                                      .dtype = PD_DT_F32,
                                      .ndim = 1,
                                      .shape = {k},
                                      .data = p->head_b,
                                      .nbytes = (size_t)k * 4};
        n++;
    }
    char size[16], parts[48];
    snprintf(size, sizeof(size), "%d", p->spec.size);
    pd_patch_parts_str(p->parts, parts, sizeof(parts));
    json_t *jl = json_array();
    for (int i = 0; i < p->spec.nclass; i++)
        json_array_append_new(jl, json_string(p->labels[i]));
    char *labels = json_dumps(jl, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(jl);
    if (!labels)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    const char *meta[16] = {"format",
                            PD_PATCH_FORMAT,
                            "format_version",
                            PD_PATCH_VERSION,
                            "backbone_sha256",
                            p->backbone,
                            "kind",
                            pd_patch_kind_name(p->spec.kind),
                            "input_size",
                            size,
                            "parts",
                            parts};
    int nm = 6;
    if (p->spec.nclass) {
        meta[2 * nm] = "labels", meta[2 * nm + 1] = labels;
        nm++;
    }
    if (p->training) {
        meta[2 * nm] = "training", meta[2 * nm + 1] = p->training;
        nm++;
    }
    int err = pd_st_serialize(ts, n, meta, nm, out, len, msg);
    free(labels);
    return err;
}

const struct pd_task *pd_patch_task(const pd_patch *p)
{
    return &p->task;
}

const struct pd_patch_spec *pd_patch_spec(const pd_patch *p)
{
    return &p->spec;
}

enum pd_patch_kind pd_patch_kind(const pd_patch *p)
{
    return p->spec.kind;
}

int pd_patch_parts(const pd_patch *p)
{
    return p->parts;
}

int64_t pd_patch_params(const pd_patch *p)
{
    return p->params;
}

size_t pd_patch_bytes(const pd_patch *p)
{
    return p->bytes;
}

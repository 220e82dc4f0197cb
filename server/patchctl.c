/*
 * patchctl - the offline command-line tool: converts the backbone, inspects safetensors files.
 * Each subcommand prints its result on stdout (JSON where it is data) and any error as one line
 * on stderr, exiting 1 on failure and 2 on a usage error.
 */
#include "../core/pd.h"
#include "../core/st.h"
#include "../core/tfjs.h"
#include "../core/image.h"
#include "../core/net.h"
#include "../core/ssd.h"
#include "../core/train.h"
#include "../patches/cache.h"
#include "../patches/patch.h"
#include "../patches/store.h"

#include <cblas.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILE_BYTES ((size_t)1 << 31)

static const char usage[] =
    "usage: patchctl COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  convert --tfjs MANIFEST.json --out FILE [--source NAME]\n"
    "      convert a TensorFlow.js weights manifest (and its .bin files) to safetensors\n"
    "  inspect [--model FILE] FILE\n"
    "      print a safetensors file's tensors, parameter count, bytes and metadata as JSON;\n"
    "      for a patch also its kind, labels, parts and whether it fits the backbone\n"
    "  patch new --labels A,B,... [--size S] [--seed N] --out FILE\n"
    "      write an identity patch (the backbone's layers) with a freshly initialised head\n"
    "  classify --patch FILE [--model FILE] [--top-k K] IMAGE...\n"
    "      classify images with a patch; one JSON line per image\n"
    "  detect [--model FILE] [--min-score S] IMAGE...\n"
    "      detect faces; one JSON line per image, boxes [x, y, w, h] in image pixels\n"
    "  train --data DIR|ARCHIVE --kind logits|sb|sbdw|full --out FILE [--val DIR] [--epochs N]\n"
    "        [--size S] [--batch B] [--seed N] [--base PATCH] [--threads T] [--lr LR]\n"
    "        [--head-init probe|zero]\n"
    "      train a patch from class folders of JPEGs; progress on stderr, summary JSON on stdout\n"
    "  eval --patch FILE --data DIR|ARCHIVE [--threads T]\n"
    "      accuracy, per-class accuracy, confusion matrix and images/s as JSON\n"
    "  store ls --store DIR [--tenant T] [TASK]\n"
    "  store put --store DIR [--tenant T] TASK FILE\n"
    "  store activate --store DIR [--tenant T] TASK VERSION\n"
    "  store rm --store DIR [--tenant T] TASK\n"
    "      manage a patch store offline (the tenant defaults to 'default', which patchd's\n"
    "      no-auth mode serves); put validates the patch against the backbone first\n"
    "  key new [--role infer|admin] [--tenant NAME]\n"
    "      print a fresh API key, its SHA-256 (what the configuration stores) and a config "
    "snippet\n"
    "  bench --task classify|faces [--size S] [--threads T] [--batch B] [--iters N]\n"
    "        [--image JPEG] [--serve]\n"
    "      time the in-process forward pass after warm-up; one JSON line\n"
    "      (--serve: read a count N per line of stdin, answer {\"ms\": [N times]})\n"
    "  --version, --help\n"
    "\n"
    "--model defaults to $PATCHD_MODEL, then models/ssd_mobilenet_v1.safetensors.\n";

static int die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "patchctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage);
    return 2;
}

static int cmd_convert(int argc, char **argv)
{
    const char *manifest = NULL, *out = NULL, *source = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--tfjs") && i + 1 < argc)
            manifest = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--source") && i + 1 < argc)
            source = argv[++i];
        else
            return die_usage("convert: unexpected argument '%s'", argv[i]);
    }
    if (!manifest || !out)
        return die_usage("convert: %s", "--tfjs and --out are required");
    char msg[PD_MSG_MAX];
    int err = pd_tfjs_convert(manifest, source, out, msg);
    if (err) {
        fprintf(stderr, "patchctl: convert: %s\n", msg);
        return 1;
    }
    return 0;
}

static const char *default_model(void);

/* The "patch" section of inspect: validity against the backbone, kind, labels, parts. */
static json_t *inspect_patch(const char *path, const char *model_path)
{
    json_t *o = json_object();
    char msg[PD_MSG_MAX];
    pd_model *m = NULL;
    if (pd_model_load(model_path, &m, msg)) {
        json_object_set_new(o, "backbone_match", json_null());
        json_object_set_new(o, "error", json_string(msg));
        return o;
    }
    pd_patch *p;
    int err = pd_patch_load(m, path, &p, msg);
    json_object_set_new(o, "valid", json_boolean(!err));
    json_object_set_new(o, "backbone_match", json_boolean(err != PD_MISMATCH));
    if (err) {
        json_object_set_new(o, "error", json_string(msg));
    } else {
        const struct pd_patch_spec *sp = pd_patch_spec(p);
        char parts[48];
        pd_patch_parts_str(pd_patch_parts(p), parts, sizeof(parts));
        json_t *labels = json_array();
        for (int i = 0; i < sp->nclass; i++)
            json_array_append_new(labels, json_string(sp->labels[i]));
        json_object_set_new(o, "kind", json_string(pd_patch_kind_name(sp->kind)));
        json_object_set_new(o, "labels", labels);
        json_object_set_new(o, "input_size", json_integer(sp->size));
        json_object_set_new(o, "parts", json_string(parts));
        json_object_set_new(o, "trainable_parameters", json_integer(pd_patch_params(p)));
        json_object_set_new(o, "memory_bytes", json_integer((json_int_t)pd_patch_bytes(p)));
        pd_patch_unref(p);
    }
    pd_model_free(m);
    return o;
}

static int cmd_inspect(int argc, char **argv)
{
    const char *model = default_model();
    if (argc == 3 && !strcmp(argv[0], "--model")) {
        model = argv[1];
        argv += 2;
        argc -= 2;
    }
    if (argc != 1)
        return die_usage("inspect: %s", "expects exactly one FILE");
    char msg[PD_MSG_MAX];
    pd_st *st;
    int err = pd_st_open(argv[0], MAX_FILE_BYTES, &st, msg);
    if (err) {
        fprintf(stderr, "patchctl: inspect: %s: %s\n", argv[0], msg);
        return 1;
    }
    json_t *root = json_object(), *tensors = json_array(), *meta = json_object();
    int64_t params = 0;
    for (int i = 0; i < pd_st_count(st); i++) {
        const struct pd_st_tensor *t = pd_st_at(st, i);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(tensors, json_pack("{s:s, s:s, s:o}", "name", t->name, "dtype",
                                                 pd_dtype_name(t->dtype), "shape", shape));
        params += pd_st_numel(t);
    }
    for (int i = 0; i < pd_st_meta_count(st); i++) {
        const char *k, *v;
        pd_st_meta_at(st, i, &k, &v);
        json_object_set_new(meta, k, json_string(v));
    }
    size_t len;
    pd_st_bytes(st, &len);
    json_object_set_new(root, "tensors", tensors);
    json_object_set_new(root, "parameters", json_integer(params));
    json_object_set_new(root, "bytes", json_integer((json_int_t)len));
    json_object_set_new(root, "metadata", meta);
    const char *fmt = pd_st_meta(st, "format");
    if (fmt && !strcmp(fmt, PD_PATCH_FORMAT))
        json_object_set_new(root, "patch", inspect_patch(argv[0], model));
    char *s = json_dumps(root, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(root);
    pd_st_free(st);
    return 0;
}

static const char *default_model(void)
{
    const char *m = getenv("PATCHD_MODEL");
    return m && *m ? m : "models/ssd_mobilenet_v1.safetensors";
}

static int load_model(const char *path, pd_model **m)
{
    char msg[PD_MSG_MAX];
    if (pd_model_load(path, m, msg)) {
        fprintf(stderr, "patchctl: cannot load the backbone: %s\n", msg);
        return 1;
    }
    return 0;
}

/* Reads and decodes one image file (scaled in the DCT domain down to no less than min_side, 0: at
 * full size); prints the error and returns non-zero on failure. */
static int read_image(const char *path, int min_side, struct pd_image *img)
{
    char msg[PD_MSG_MAX];
    uint8_t *buf;
    size_t len;
    int err = pd_read_file(path, (size_t)256 << 20, &buf, &len, msg);
    if (!err) {
        err = pd_image_decode_jpeg_scaled(buf, len, PD_IMAGE_MAX_PIXELS, min_side, img, msg);
        free(buf);
    }
    if (err)
        fprintf(stderr, "patchctl: %s: %s\n", path, msg);
    return err;
}

static int parse_float(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int cmd_detect(int argc, char **argv)
{
    const char *model = default_model();
    double min_score = PD_SSD_MIN_SCORE;
    int first = argc;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--min-score") && i + 1 < argc) {
            if (parse_float(argv[++i], 0.0, 1.0, &min_score))
                return die_usage("detect: --min-score '%s' is not a number in [0, 1]", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return die_usage("detect: unknown option '%s'", argv[i]);
        } else {
            first = i;
            break;
        }
    }
    if (first == argc)
        return die_usage("detect: %s", "expects at least one IMAGE");
    pd_model *m;
    if (load_model(model, &m))
        return 1;
    pd_net *net;
    char msg[PD_MSG_MAX];
    if (pd_net_new(m, 1, PD_FACES_SIZE, &net, msg)) {
        fprintf(stderr, "patchctl: %s\n", msg);
        pd_model_free(m);
        return 1;
    }
    float *in = pd_alloc_floats((size_t)PD_FACES_SIZE * PD_FACES_SIZE * 3);
    float *scores = pd_alloc_floats(PD_ANCHORS), *boxes = pd_alloc_floats(PD_ANCHORS * 4);
    struct pd_detection dets[PD_SSD_MAX_OUT];
    int rc = 0;
    for (int i = first; i < argc; i++) {
        struct pd_image img;
        if (read_image(argv[i], 0, &img)) {
            rc = 1;
            continue;
        }
        struct pd_crop crop = pd_crop_pad(&img);
        pd_image_to_input(&img, &crop, PD_FACES_SIZE, in);
        pd_net_detect(net, in, NULL, scores, boxes);
        int nd = pd_ssd_select(scores, boxes, PD_ANCHORS, min_score, PD_SSD_IOU, PD_SSD_MAX_OUT,
                               img.w, img.h, PD_FACES_SIZE, dets);
        json_t *arr = json_array();
        for (int k = 0; k < nd; k++)
            json_array_append_new(arr, json_pack("{s:[f,f,f,f], s:f}", "box", dets[k].box[0],
                                                 dets[k].box[1], dets[k].box[2], dets[k].box[3],
                                                 "score", dets[k].score));
        json_t *o = json_pack("{s:s, s:i, s:i, s:o}", "image", argv[i], "width", img.w, "height",
                              img.h, "detections", arr);
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
        puts(s);
        free(s);
        json_decref(o);
        pd_image_fini(&img);
    }
    free(in);
    free(scores);
    free(boxes);
    pd_net_free(net);
    pd_model_free(m);
    return rc;
}

/* Splits "a,b,c" into a new array of n strings (one allocation; free the array). */
static char **split_labels(const char *s, int *n)
{
    size_t len = strlen(s);
    int count = 1;
    for (size_t i = 0; i < len; i++)
        count += s[i] == ',';
    char **v = malloc(sizeof(char *) * (size_t)count + len + 1);
    if (!v)
        return NULL;
    char *copy = (char *)(v + count);
    memcpy(copy, s, len + 1);
    int k = 0;
    char *t;
    while ((t = strsep(&copy, ",")) != NULL)
        v[k++] = t;
    *n = k;
    return v;
}

static int cmd_patch(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "new"))
        return die_usage("patch: %s", "expects 'new'");
    const char *labels = NULL, *out = NULL, *model = default_model();
    int size = 224, seed = 1;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return die_usage("patch new: option '%s' needs a value", a);
        if (!strcmp(a, "--labels"))
            labels = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--size")) {
            if (parse_int(v, 32, PD_PATCH_MAX_SIZE, &size))
                return die_usage("patch new: --size '%s' is not 32..512", v);
        } else if (!strcmp(a, "--seed")) {
            if (parse_int(v, 0, 2147483647, &seed))
                return die_usage("patch new: --seed '%s' is not a non-negative integer", v);
        } else
            return die_usage("patch new: unknown option '%s'", a);
    }
    if (!labels || !out)
        return die_usage("patch new: %s", "--labels and --out are required");
    int n;
    char **lv = split_labels(labels, &n);
    pd_model *m;
    if (!lv || load_model(model, &m)) {
        free(lv);
        return 1;
    }
    char msg[PD_MSG_MAX];
    pd_patch *p;
    uint8_t *buf = NULL;
    size_t len;
    int err = pd_patch_new_identity(m, (const char *const *)lv, n, size, (uint64_t)seed, &p, msg);
    if (!err) {
        err = pd_patch_serialize(p, &buf, &len, msg);
        pd_patch_unref(p);
    }
    if (!err) {
        struct pd_iovec part = {buf, len};
        err = pd_write_atomic(out, &part, 1, msg);
    }
    free(buf);
    free(lv);
    pd_model_free(m);
    if (err) {
        fprintf(stderr, "patchctl: patch new: %s\n", msg);
        return 1;
    }
    return 0;
}

static int by_prob(const void *a, const void *b)
{
    const float *x = *(const float *const *)a, *y = *(const float *const *)b;
    return *x < *y ? 1 : *x > *y ? -1 : (x > y) - (x < y);
}

static int cmd_classify(int argc, char **argv)
{
    const char *model = default_model(), *patch = NULL;
    int top_k = 5, first = argc;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--patch") && i + 1 < argc) {
            patch = argv[++i];
        } else if (!strcmp(argv[i], "--top-k") && i + 1 < argc) {
            if (parse_int(argv[++i], 1, PD_PATCH_MAX_LABELS, &top_k))
                return die_usage("classify: --top-k '%s' is not a positive integer", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return die_usage("classify: unknown option '%s'", argv[i]);
        } else {
            first = i;
            break;
        }
    }
    if (!patch || first == argc)
        return die_usage("classify: %s", "needs --patch FILE and at least one IMAGE");
    pd_model *m;
    if (load_model(model, &m))
        return 1;
    char msg[PD_MSG_MAX];
    pd_patch *p;
    if (pd_patch_load(m, patch, &p, msg)) {
        fprintf(stderr, "patchctl: %s: %s\n", patch, msg);
        pd_model_free(m);
        return 1;
    }
    const struct pd_task *task = pd_patch_task(p);
    if (pd_patch_kind(p) != PD_PATCH_CLASSIFY) {
        fprintf(stderr, "patchctl: %s: not a classification patch\n", patch);
        pd_patch_unref(p);
        pd_model_free(m);
        return 1;
    }
    pd_net *net;
    if (pd_net_new(m, 1, task->size, &net, msg)) {
        fprintf(stderr, "patchctl: %s\n", msg);
        pd_patch_unref(p);
        pd_model_free(m);
        return 1;
    }
    const int k = task->nclass, size = task->size;
    float *in = pd_alloc_floats((size_t)size * size * 3), *probs = pd_alloc_floats((size_t)k);
    const float **order = malloc(sizeof(float *) * (size_t)k);
    int rc = 0;
    for (int i = first; i < argc; i++) {
        struct pd_image img;
        if (read_image(argv[i], size, &img)) {
            rc = 1;
            continue;
        }
        struct pd_crop crop = pd_crop_full(&img);
        pd_image_to_input(&img, &crop, size, in);
        const struct pd_task *tasks[1] = {task};
        float *pp[1] = {probs};
        pd_net_classify(net, 1, size, in, tasks, pp, NULL);
        for (int c = 0; c < k; c++)
            order[c] = probs + c;
        qsort(order, (size_t)k, sizeof(*order), by_prob);
        json_t *preds = json_array();
        for (int c = 0; c < k && c < top_k; c++)
            json_array_append_new(preds, json_pack("{s:s, s:f}", "label",
                                                   pd_patch_spec(p)->labels[order[c] - probs],
                                                   "score", (double)*order[c]));
        json_t *o = json_pack("{s:s, s:i, s:i, s:o}", "image", argv[i], "width", img.w, "height",
                              img.h, "predictions", preds);
        char *js = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
        puts(js);
        free(js);
        json_decref(o);
        pd_image_fini(&img);
    }
    free(order);
    free(in);
    free(probs);
    pd_net_free(net);
    pd_patch_unref(p);
    pd_model_free(m);
    return rc;
}

/* JSON for one task of a store: active version and versions. */
static json_t *store_task_json(pd_store *st, const char *tenant, const char *task)
{
    int active, vs[256];
    int n = pd_store_lookup(st, tenant, task, &active, vs, 256);
    json_t *arr = json_array();
    for (int i = 0; i < n && i < 256; i++)
        json_array_append_new(arr, json_integer(vs[i]));
    return json_pack("{s:s, s:i, s:o}", "task", task, "active", active, "versions", arr);
}

static int cmd_store(int argc, char **argv)
{
    if (argc < 1)
        return die_usage("store: %s", "expects ls, put, activate or rm");
    const char *verb = argv[0], *dir = NULL, *tenant = "default", *model = default_model();
    const char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--store") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1])
            return die_usage("store: unknown option '%s'", argv[i]);
        else if (npos < 3)
            pos[npos++] = argv[i];
        else
            return die_usage("store: unexpected argument '%s'", argv[i]);
    }
    if (!dir)
        return die_usage("store: %s", "--store DIR is required");
    if (!pd_store_valid_name(tenant))
        return die_usage("store: tenant '%s' is not [a-z0-9][a-z0-9_-]{0,63}", tenant);
    int want = !strcmp(verb, "ls")         ? -1
               : !strcmp(verb, "put")      ? 2
               : !strcmp(verb, "activate") ? 2
               : !strcmp(verb, "rm")       ? 1
                                           : -2;
    if (want == -2)
        return die_usage("store: unknown verb '%s'", verb);
    if ((want >= 0 && npos != want) || (want == -1 && npos > 1))
        return die_usage("store %s: wrong number of arguments", verb);
    if (npos >= 1 && !pd_store_valid_name(pos[0]))
        return die_usage("store: task '%s' is not [a-z0-9][a-z0-9_-]{0,63}", pos[0]);
    char msg[PD_MSG_MAX];
    pd_store *st;
    if (pd_store_open(dir, 0, &st, msg)) {
        fprintf(stderr, "patchctl: store: %s\n", msg);
        return 1;
    }
    int err = PD_OK;
    if (!strcmp(verb, "ls")) {
        json_t *out;
        if (npos == 1) {
            out = pd_store_lookup(st, tenant, pos[0], NULL, NULL, 0) < 0
                      ? NULL
                      : store_task_json(st, tenant, pos[0]);
            if (!out)
                err = pd_fail(msg, PD_NOTFOUND, "no task '%s'", pos[0]);
        } else {
            static char names[4096][PD_NAME_MAX + 1];
            int n = pd_store_tasks(st, tenant, names, 4096);
            out = json_array();
            for (int i = 0; i < n; i++)
                json_array_append_new(out, store_task_json(st, tenant, names[i]));
        }
        if (out) {
            char *js = json_dumps(out, JSON_COMPACT);
            puts(js);
            free(js);
            json_decref(out);
        }
    } else if (!strcmp(verb, "put")) {
        uint8_t *buf = NULL;
        size_t len;
        pd_model *m = NULL;
        pd_patch *p = NULL;
        err = pd_read_file(pos[1], PD_PATCH_MAX_BYTES, &buf, &len, msg);
        if (!err && (err = pd_model_load(model, &m, msg)) == PD_OK)
            err = pd_patch_parse(m, buf, len, &p, msg);
        int v = 0;
        if (!err)
            err = pd_store_put(st, tenant, pos[0], buf, len, &v, msg);
        if (!err) {
            char sha[65];
            pd_sha256_hex(buf, len, sha);
            printf("{\"task\":\"%s\",\"version\":%d,\"sha256\":\"%s\",\"bytes\":%zu}\n", pos[0], v,
                   sha, len);
        }
        pd_patch_unref(p);
        pd_model_free(m);
        free(buf);
    } else if (!strcmp(verb, "activate")) {
        int v;
        if (parse_int(pos[1], 1, PD_MAX_VERSIONS, &v))
            err = pd_fail(msg, PD_INVAL, "version '%s' is not a positive integer", pos[1]);
        else
            err = pd_store_activate(st, tenant, pos[0], v, msg);
    } else {
        err = pd_store_remove(st, tenant, pos[0], msg);
    }
    pd_store_close(st);
    if (err) {
        fprintf(stderr, "patchctl: store %s: %s\n", verb, msg);
        return 1;
    }
    return 0;
}

static int cmd_key(int argc, char **argv)
{
    const char *role = "admin", *tenant = "acme";
    if (argc < 1 || strcmp(argv[0], "new"))
        return die_usage("key: %s", "expects 'new'");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--role") && i + 1 < argc)
            role = argv[++i];
        else if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
        else
            return die_usage("key new: unexpected argument '%s'", argv[i]);
    }
    if (strcmp(role, "infer") && strcmp(role, "admin"))
        return die_usage("key new: --role '%s' is not infer or admin", role);
    if (!pd_store_valid_name(tenant))
        return die_usage("key new: tenant '%s' is not [a-z0-9][a-z0-9_-]{0,63}", tenant);
    unsigned char raw[32];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof(raw), f) != sizeof(raw)) {
        fprintf(stderr, "patchctl: key new: cannot read /dev/urandom\n");
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    char key[8 + 64 + 1] = "pd_";
    for (int i = 0; i < 32; i++)
        snprintf(key + 3 + 2 * i, 3, "%02x", raw[i]);
    char sha[65];
    pd_sha256_hex(key, strlen(key), sha);
    printf("{\"key\":\"%s\",\"sha256\":\"%s\",\"role\":\"%s\",\"config\":{\"name\":\"%s\","
           "\"keys\":[{\"sha256\":\"%s\",\"role\":\"%s\"}]}}\n",
           key, sha, role, tenant, sha, role);
    return 0;
}

struct train_ui {
    int tty;
    double last_print;
};

static void on_progress(void *ctx, const struct pd_train_progress *p)
{
    struct train_ui *ui = ctx;
    if (!strcmp(p->phase, "probe done")) {
        fprintf(stderr, "%spatchctl: train: linear probe: val accuracy %.4f\n",
                ui->tty ? "\r\033[K" : "", p->probe_val_acc);
        return;
    }
    if (strcmp(p->phase, "train")) {
        if (strcmp(p->phase, "done"))
            fprintf(stderr, "%spatchctl: train: %s%s", ui->tty ? "\r\033[K" : "", p->phase,
                    ui->tty ? "..." : "\n");
        return;
    }
    char val[16] = "-";
    if (p->val_acc >= 0)
        snprintf(val, sizeof(val), "%.4f", p->val_acc);
    if (p->epoch_done) {
        fprintf(stderr,
                "%spatchctl: train: epoch %d/%d done: loss %.4f, train accuracy %.4f, val "
                "accuracy %s, %.1f img/s\n",
                ui->tty ? "\r\033[K" : "", p->epoch, p->epochs, p->loss, p->train_acc, val,
                p->images_per_s);
        return;
    }
    double now = pd_now();
    if (!ui->tty || now - ui->last_print < 0.2)
        return;
    ui->last_print = now;
    int width = 30, done = p->steps ? p->step * width / p->steps : width;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < done ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr,
            "\r\033[Kepoch %d/%d [%s] step %d/%d  %.1f img/s  loss %.4f  acc %.3f  val %s  ETA "
            "%.0fs",
            p->epoch, p->epochs, bar, p->step, p->steps, p->images_per_s, p->loss, p->train_acc,
            val, p->eta_s);
}

/* A patch's raw layers as training parameters (borrowed from the patch). */
static void params_of(const pd_patch *p, struct pd_params *out)
{
    const struct pd_patch_spec *s = pd_patch_spec(p);
    memset(out, 0, sizeof(*out));
    for (int l = 0; l < PD_NLAYERS; l++) {
        out->scale[l] = (float *)s->scale[l];
        out->bias[l] = (float *)s->bias[l];
        out->kernel[l] = (float *)s->kernel[l];
        out->weight[l] = (float *)s->weight[l];
    }
}

static int cmd_train(int argc, char **argv)
{
    const char *data = NULL, *val = NULL, *out = NULL, *base = NULL, *kind = NULL;
    const char *model = default_model();
    struct pd_train_opts o = {0};
    o.seed = 1;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, tmp;
        if (!v)
            return die_usage("train: option '%s' needs a value", a);
        if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--val"))
            val = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--base"))
            base = v;
        else if (!strcmp(a, "--kind"))
            kind = v;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--epochs"))
            bad = parse_int(v, 1, 10000, &o.epochs);
        else if (!strcmp(a, "--size"))
            bad = parse_int(v, 32, PD_PATCH_MAX_SIZE, &o.size);
        else if (!strcmp(a, "--batch"))
            bad = parse_int(v, 1, 256, &o.batch);
        else if (!strcmp(a, "--threads"))
            bad = parse_int(v, 1, 16, &o.threads);
        else if (!strcmp(a, "--seed")) {
            bad = parse_int(v, 0, 2147483647, &tmp);
            o.seed = (uint64_t)tmp;
        } else if (!strcmp(a, "--lr")) {
            bad = parse_float(v, 1e-7, 1.0, &o.lr);
        } else if (!strcmp(a, "--head-init")) {
            if (strcmp(v, "probe") && strcmp(v, "zero"))
                return die_usage("train: --head-init '%s' is not probe or zero", v);
            o.no_probe_init = !strcmp(v, "zero");
        } else
            return die_usage("train: unknown option '%s'", a);
        if (bad)
            return die_usage("train: bad value for %s", a);
    }
    if (!data || !out || !kind)
        return die_usage("train: %s", "--data, --kind and --out are required");
    int k = pd_train_kind_parse(kind);
    if (k < 0)
        return die_usage("train: --kind '%s' is not logits, sb, sbdw or full", kind);
    o.kind = (enum pd_train_kind)k;
    char msg[PD_MSG_MAX];
    pd_model *m;
    if (load_model(model, &m))
        return 1;
    struct pd_dataset ds, vs;
    int have_val = 0, rc = 1;
    pd_patch *bp = NULL;
    struct pd_params basep;
    if (pd_dataset_open(data, (uint64_t)8 << 30, &ds, msg)) {
        fprintf(stderr, "patchctl: train: %s\n", msg);
        pd_model_free(m);
        return 1;
    }
    if (val) {
        if (pd_dataset_open(val, (uint64_t)8 << 30, &vs, msg)) {
            fprintf(stderr, "patchctl: train: --val: %s\n", msg);
            goto done;
        }
        have_val = 1;
    }
    if (base) {
        if (pd_patch_load(m, base, &bp, msg)) {
            fprintf(stderr, "patchctl: train: --base %s: %s\n", base, msg);
            goto done;
        }
        params_of(bp, &basep);
        o.base = &basep;
    }
    struct train_ui ui = {isatty(2), 0};
    o.progress = on_progress;
    o.ctx = &ui;
    struct pd_train_result r;
    if (pd_train(m, &ds, have_val ? &vs : NULL, &o, &r, msg)) {
        fprintf(stderr, "%spatchctl: train: %s\n", ui.tty ? "\n" : "", msg);
        goto done;
    }
    /* the patch: labels, layers, head, and a training summary */
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_t *summary = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:f, s:s}", "kind",
                                pd_train_kind_name(o.kind), "epochs", r.epochs, "steps", r.steps,
                                "images", r.images, "skipped", r.skipped, "size",
                                o.size ? o.size : 224, "batch", o.batch ? o.batch : 32, "seed",
                                (json_int_t)o.seed, "seconds", r.seconds, "date", date);
    json_object_set_new(summary, "train_accuracy", json_real(r.train_acc));
    json_object_set_new(summary, "probe_l2", json_real(r.probe_l2));
    json_object_set_new(summary, "train_seconds", json_real(r.train_seconds));
    if (have_val) {
        json_object_set_new(summary, "val_accuracy", json_real(r.val_acc));
        json_object_set_new(summary, "probe_val_accuracy", json_real(r.probe_val_acc));
        json_object_set_new(summary, "probe_only", json_boolean(r.probe_only));
    }
    if (base)
        json_object_set_new(summary, "base", json_string(base));
    char *training = json_dumps(summary, JSON_COMPACT | JSON_REAL_PRECISION(6));
    uint8_t *buf = NULL;
    size_t len = 0;
    int64_t nparams = 0;
    int err = pd_patch_from_params(m, &r.p, (const char *const *)ds.labels, ds.nclass,
                                   o.size ? o.size : 224, training, &buf, &len, &nparams, msg);
    json_object_set_new(summary, "trainable_parameters", json_integer(nparams));
    if (!err) {
        struct pd_iovec part = {buf, len};
        err = pd_write_atomic(out, &part, 1, msg);
    }
    if (err) {
        fprintf(stderr, "patchctl: train: %s\n", msg);
    } else {
        json_object_set_new(summary, "out", json_string(out));
        json_object_set_new(summary, "bytes", json_integer((json_int_t)len));
        char *js = json_dumps(summary, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(js);
        free(js);
        rc = 0;
    }
    free(buf);
    free(training);
    json_decref(summary);
    pd_params_free(&r.p);
done:
    pd_patch_unref(bp);
    if (have_val)
        pd_dataset_fini(&vs);
    pd_dataset_fini(&ds);
    pd_model_free(m);
    return rc;
}

static int cmd_eval(int argc, char **argv)
{
    const char *patch = NULL, *data = NULL, *model = default_model();
    int threads = 2;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return die_usage("eval: option '%s' needs a value", a);
        if (!strcmp(a, "--patch"))
            patch = v;
        else if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--threads")) {
            if (parse_int(v, 1, 16, &threads))
                return die_usage("eval: bad value for %s", a);
        } else
            return die_usage("eval: unknown option '%s'", a);
    }
    if (!patch || !data)
        return die_usage("eval: %s", "--patch and --data are required");
    char msg[PD_MSG_MAX];
    pd_model *m;
    if (load_model(model, &m))
        return 1;
    pd_patch *p = NULL;
    struct pd_dataset ds;
    int rc = 1, *map = NULL;
    if (pd_patch_load(m, patch, &p, msg) || pd_patch_kind(p) != PD_PATCH_CLASSIFY) {
        fprintf(stderr, "patchctl: eval: %s: %s\n", patch, p ? "not a classification patch" : msg);
        pd_patch_unref(p);
        pd_model_free(m);
        return 1;
    }
    if (pd_dataset_open(data, (uint64_t)8 << 30, &ds, msg)) {
        fprintf(stderr, "patchctl: eval: %s\n", msg);
        pd_patch_unref(p);
        pd_model_free(m);
        return 1;
    }
    const struct pd_patch_spec *sp = pd_patch_spec(p);
    map = malloc(sizeof(int) * (size_t)ds.nclass);
    for (int c = 0; map && c < ds.nclass; c++) {
        map[c] = -1;
        for (int k = 0; k < sp->nclass; k++)
            if (!strcmp(ds.labels[c], sp->labels[k]))
                map[c] = k;
        if (map[c] < 0)
            fprintf(stderr,
                    "patchctl: eval: class '%s' is not one of the patch's labels; its "
                    "images count as wrong\n",
                    ds.labels[c]);
    }
    struct pd_eval_result r;
    if (!map || pd_eval(m, pd_patch_task(p), &ds, map, threads, &r, msg)) {
        fprintf(stderr, "patchctl: eval: %s\n", map ? msg : "out of memory");
    } else {
        const int K = r.nclass;
        json_t *per = json_object(), *conf = json_array();
        for (int k = 0; k < K; k++) {
            int row = 0;
            json_t *cr = json_array();
            for (int j = 0; j < K; j++) {
                row += r.confusion[k * K + j];
                json_array_append_new(cr, json_integer(r.confusion[k * K + j]));
            }
            json_array_append_new(conf, cr);
            json_object_set_new(per, sp->labels[k],
                                row ? json_real((double)r.confusion[k * K + k] / row)
                                    : json_null());
        }
        json_t *labels = json_array();
        for (int k = 0; k < K; k++)
            json_array_append_new(labels, json_string(sp->labels[k]));
        json_t *o =
            json_pack("{s:f, s:i, s:i, s:i, s:o, s:o, s:o, s:f}", "accuracy",
                      r.n ? (double)r.correct / r.n : 0.0, "images", r.n, "correct", r.correct,
                      "skipped", r.skipped, "labels", labels, "per_class", per, "confusion", conf,
                      "images_per_s", r.seconds > 0 ? (r.n + r.skipped) / r.seconds : 0.0);
        char *js = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(js);
        free(js);
        json_decref(o);
        free(r.confusion);
        rc = 0;
    }
    free(map);
    pd_dataset_fini(&ds);
    pd_patch_unref(p);
    pd_model_free(m);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* What one timed forward pass of cmd_bench runs. */
struct bench_pass {
    pd_net *net;
    int faces, batch, size;
    const float *in;
    const struct pd_task **tasks;
    float **probs, *scores, *boxes;
};

/* n forward passes; their times in ms[0..n), milliseconds. */
static void bench_passes(const struct bench_pass *b, int n, double *ms)
{
    for (int it = 0; it < n; it++) {
        double t0 = pd_now();
        if (b->faces)
            pd_net_detect(b->net, b->in, NULL, b->scores, b->boxes);
        else
            pd_net_classify(b->net, b->batch, b->size, b->in, b->tasks, b->probs, NULL);
        ms[it] = (pd_now() - t0) * 1e3;
    }
}

static int cmd_bench(int argc, char **argv)
{
    const char *model = default_model(), *task = "classify", *image = NULL;
    int size = 0, threads = 1, batch = 1, iters = 20, serve = 0;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--serve")) {
            serve = 1, i--;
            continue;
        }
        if (!v)
            return die_usage("bench: option '%s' needs a value", a);
        if (!strcmp(a, "--task"))
            task = v;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--image"))
            image = v;
        else if (!strcmp(a, "--size"))
            bad = parse_int(v, 32, 1024, &size);
        else if (!strcmp(a, "--threads"))
            bad = parse_int(v, 1, PD_NET_MAX_THREADS, &threads);
        else if (!strcmp(a, "--batch"))
            bad = parse_int(v, 1, 256, &batch);
        else if (!strcmp(a, "--iters"))
            bad = parse_int(v, 1, 100000, &iters);
        else
            return die_usage("bench: unknown option '%s'", a);
        if (bad)
            return die_usage("bench: bad value for %s", a);
    }
    int faces = !strcmp(task, "faces");
    if (!faces && strcmp(task, "classify"))
        return die_usage("bench: --task '%s' is not classify or faces", task);
    if (faces && (batch != 1 || (size && size != PD_FACES_SIZE)))
        return die_usage("bench: %s", "faces runs at batch 1, size 512");
    if (!size)
        size = faces ? PD_FACES_SIZE : 224;
    /* the threads split each layer (the net's own pool); OpenBLAS single-threaded inside */
    openblas_set_num_threads(1);
    pd_model *m;
    if (load_model(model, &m))
        return 1;
    pd_net *net;
    char msg[PD_MSG_MAX];
    if (pd_net_new(m, batch, size, &net, msg) || pd_net_set_threads(net, threads, msg)) {
        fprintf(stderr, "patchctl: %s\n", msg);
        pd_model_free(m);
        return 1;
    }
    /* the photo given, prepared as patchd prepares it, or a deterministic pattern; a 5-class
     * head. The time depends a little on the input: the pointwise layers skip channels that
     * ReLU6 zeroed (see core/ops.c), so a photo is the honest input. */
    const size_t plane = (size_t)size * size * 3;
    float *in = pd_alloc_floats((size_t)batch * plane);
    if (image) {
        struct pd_image img;
        if (read_image(image, faces ? 0 : size, &img)) {
            free(in);
            pd_net_free(net);
            pd_model_free(m);
            return 1;
        }
        struct pd_crop crop = faces ? pd_crop_pad(&img) : pd_crop_full(&img);
        pd_image_to_input(&img, &crop, size, in);
        pd_image_fini(&img);
        for (int b = 1; b < batch; b++)
            memcpy(in + b * plane, in, plane * sizeof(float));
    } else {
        for (size_t i = 0; i < (size_t)batch * plane; i++)
            in[i] = (float)((i * 2654435761u) % 255) / 127.5f - 1.0f;
    }
    float *hw = pd_alloc_floats(PD_FEATURES * 5), *hb = pd_alloc_floats(5);
    for (int i = 0; i < PD_FEATURES * 5; i++)
        hw[i] = (float)((i % 7) - 3) * 0.01f;
    struct pd_task t = {.size = size, .nclass = 5, .head_w = hw, .head_b = hb};
    const struct pd_task **tasks = calloc((size_t)batch, sizeof(*tasks));
    float **probs = calloc((size_t)batch, sizeof(*probs));
    float *pbuf = pd_alloc_floats((size_t)batch * 5);
    for (int i = 0; i < batch; i++)
        tasks[i] = &t, probs[i] = pbuf + 5 * i;
    float *scores = pd_alloc_floats(PD_ANCHORS), *boxes = pd_alloc_floats(4 * PD_ANCHORS);
    struct bench_pass bp = {net, faces, batch, size, in, tasks, probs, scores, boxes};
    int rc = 0;
    const size_t cap = serve ? 100000 : iters > 3 ? (size_t)iters : 3; /* 3: the warm-up */
    double *ms = calloc(cap, sizeof(double));
    bench_passes(&bp, 3, ms); /* warm-up */
    if (serve) {
        char line[64], *end;
        while (fgets(line, sizeof(line), stdin)) { /* a block's size a line; end of input ends */
            long n = strtol(line, &end, 10);
            if (end == line || (*end && *end != '\n') || n < 1 || n > 100000) {
                fprintf(stderr,
                        "patchctl: bench --serve: a line of stdin is not a count 1..100000\n");
                rc = 1;
                break;
            }
            bench_passes(&bp, (int)n, ms);
            fputs("{\"ms\":[", stdout);
            for (int it = 0; it < n; it++)
                printf("%s%.3f", it ? "," : "", ms[it]);
            fputs("]}\n", stdout);
            fflush(stdout);
        }
    } else {
        bench_passes(&bp, iters, ms);
        qsort(ms, (size_t)iters, sizeof(double), cmp_double);
        double med = iters % 2 ? ms[iters / 2] : (ms[iters / 2 - 1] + ms[iters / 2]) / 2;
        double p90 = ms[(int)(0.9 * (iters - 1) + 0.5)];
        printf("{\"task\":\"%s\",\"size\":%d,\"threads\":%d,\"batch\":%d,\"input\":\"%s\","
               "\"iters\":%d,\"ms_median\":%.3f,\"ms_p90\":%.3f,\"images_per_s\":%.2f}\n",
               task, size, threads, batch, image ? "photo" : "pattern", iters, med, p90,
               batch * 1e3 / med);
    }
    free(ms), free(scores), free(boxes), free(pbuf), free(probs), free(tasks), free(hw), free(hb);
    free(in);
    pd_net_free(net);
    pd_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return die_usage("%s", "missing COMMAND");
    const char *cmd = argv[1];
    /* single-threaded BLAS as in the server's workers: the same GEMM paths, so detect and classify
     * print to the last digit what patchd answers */
    openblas_set_num_threads(1);
    if (!strcmp(cmd, "--version")) {
        printf("patchctl %s\n", PD_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "convert"))
        return cmd_convert(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect"))
        return cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "patch"))
        return cmd_patch(argc - 2, argv + 2);
    if (!strcmp(cmd, "classify"))
        return cmd_classify(argc - 2, argv + 2);
    if (!strcmp(cmd, "store"))
        return cmd_store(argc - 2, argv + 2);
    if (!strcmp(cmd, "train"))
        return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "key"))
        return cmd_key(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "detect"))
        return cmd_detect(argc - 2, argv + 2);
    return die_usage("unknown command '%s'", cmd);
}

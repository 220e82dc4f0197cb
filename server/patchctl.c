/*
 * patchctl - the offline command-line tool: converts the backbone, inspects safetensors files.
 * Each subcommand prints its result on stdout (JSON where it is data) and any error as one line
 * on stderr, exiting 1 on failure and 2 on a usage error.
 */
#include "../core/pd.h"
#include "../core/st.h"
#include "../core/tfjs.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE_BYTES ((size_t)1 << 31)

static const char usage[] =
    "usage: patchctl COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  convert --tfjs MANIFEST.json --out FILE [--source NAME]\n"
    "      convert a TensorFlow.js weights manifest (and its .bin files) to safetensors\n"
    "  inspect FILE\n"
    "      print a safetensors file's tensors, parameter count, bytes and metadata as JSON\n"
    "  --version, --help\n";

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

static int cmd_inspect(int argc, char **argv)
{
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
    char *s = json_dumps(root, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(root);
    pd_st_free(st);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return die_usage("%s", "missing COMMAND");
    const char *cmd = argv[1];
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
    return die_usage("unknown command '%s'", cmd);
}

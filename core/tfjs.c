#include "tfjs.h"

#include "st.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Concatenates a group's weight files; appends to *buf. */
static int read_group(const char *dir, json_t *paths, uint8_t **buf, size_t *len, char *msg)
{
    if (!json_is_array(paths) || json_array_size(paths) == 0)
        return pd_fail(msg, PD_FORMAT, "manifest group has no \"paths\"");
    size_t i;
    json_t *p;
    json_array_foreach(paths, i, p)
    {
        const char *name = json_string_value(p);
        if (!name || !*name || strchr(name, '/') || !strcmp(name, ".."))
            return pd_fail(msg, PD_FORMAT, "manifest path %zu is not a plain file name", i);
        size_t plen = strlen(dir) + strlen(name) + 2;
        char *path = malloc(plen);
        if (!path)
            return pd_fail(msg, PD_NOMEM, "out of memory");
        snprintf(path, plen, "%s/%s", dir, name);
        uint8_t *part;
        size_t plen2;
        int err = pd_read_file(path, PD_TFJS_MAX_BYTES, &part, &plen2, msg);
        free(path);
        if (err)
            return err;
        if (*len + plen2 > PD_TFJS_MAX_BYTES) {
            free(part);
            return pd_fail(msg, PD_TOOBIG, "weight files exceed %u bytes", PD_TFJS_MAX_BYTES);
        }
        uint8_t *nb = realloc(*buf, *len + plen2 + 1);
        if (!nb) {
            free(part);
            return pd_fail(msg, PD_NOMEM, "out of memory");
        }
        memcpy(nb + *len, part, plen2);
        free(part);
        *buf = nb;
        *len += plen2;
    }
    return PD_OK;
}

/* Decodes one weight entry at bin[*at]; fills t (data newly allocated into *data). */
static int decode_weight(json_t *w, const uint8_t *bin, size_t binlen, size_t *at,
                         struct pd_st_tensor *t, void **data, char *msg)
{
    const char *name = json_string_value(json_object_get(w, "name"));
    const char *dtype = json_string_value(json_object_get(w, "dtype"));
    json_t *shape = json_object_get(w, "shape");
    json_t *q = json_object_get(w, "quantization");
    if (!name || !*name)
        return pd_fail(msg, PD_FORMAT, "a weight has no name");
    if (!dtype || (strcmp(dtype, "float32") && strcmp(dtype, "int32")))
        return pd_fail(msg, PD_UNSUPPORTED, "weight '%s': dtype '%s' is not float32 or int32", name,
                       dtype ? dtype : "(none)");
    if (!json_is_array(shape) || json_array_size(shape) > PD_ST_MAX_DIMS)
        return pd_fail(msg, PD_FORMAT, "weight '%s': bad shape", name);
    t->name = name;
    t->dtype = strcmp(dtype, "float32") ? PD_DT_I32 : PD_DT_F32;
    t->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *jd = json_array_get(shape, (size_t)d);
        if (!json_is_integer(jd) || json_integer_value(jd) < 0 ||
            json_integer_value(jd) > (json_int_t)PD_TFJS_MAX_BYTES)
            return pd_fail(msg, PD_FORMAT, "weight '%s': bad shape[%d]", name, d);
        t->shape[d] = json_integer_value(jd);
        numel *= (uint64_t)t->shape[d];
        if (numel > PD_TFJS_MAX_BYTES)
            return pd_fail(msg, PD_TOOBIG, "weight '%s': too many elements", name);
    }
    size_t qsize = 4;
    double scale = 1, min = 0;
    if (q) {
        const char *qd = json_string_value(json_object_get(q, "dtype"));
        json_t *js = json_object_get(q, "scale"), *jm = json_object_get(q, "min");
        if (!qd || (strcmp(qd, "uint8") && strcmp(qd, "uint16")))
            return pd_fail(msg, PD_UNSUPPORTED, "weight '%s': quantization dtype '%s' unsupported",
                           name, qd ? qd : "(none)");
        if (!json_is_number(js) || !json_is_number(jm))
            return pd_fail(msg, PD_FORMAT, "weight '%s': quantization lacks scale or min", name);
        qsize = strcmp(qd, "uint8") ? 2 : 1;
        scale = json_number_value(js);
        min = json_number_value(jm);
    }
    size_t nbytes = (size_t)numel * qsize;
    if (nbytes > binlen - *at)
        return pd_fail(msg, PD_FORMAT, "weight '%s': needs %zu bytes at offset %zu, files hold %zu",
                       name, nbytes, *at, binlen);
    const uint8_t *src = bin + *at;
    *at += nbytes;
    void *dst = malloc(numel ? numel * 4 : 4);
    if (!dst)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    for (uint64_t i = 0; i < numel; i++) {
        if (!q) {
            memcpy((uint8_t *)dst + 4 * i, src + 4 * i, 4);
            continue;
        }
        double v = qsize == 1 ? src[i] : (double)(src[2 * i] | (src[2 * i + 1] << 8));
        v = v * scale + min;
        if (t->dtype == PD_DT_F32)
            ((float *)dst)[i] = (float)v;
        else
            ((int32_t *)dst)[i] = (int32_t)lround(v);
    }
    t->data = dst;
    t->nbytes = (size_t)numel * 4;
    *data = dst;
    return PD_OK;
}

int pd_tfjs_convert(const char *manifest_path, const char *source, const char *out_path, char *msg)
{
    json_error_t jerr;
    json_t *man = json_load_file(manifest_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!man)
        return pd_fail(msg, PD_FORMAT, "%s: %s (line %d)", manifest_path, jerr.text, jerr.line);
    char *dir = strdup(manifest_path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash)
        *slash = '\0';
    const char *d = slash ? dir : ".";

    int err = PD_OK;
    int n = 0, cap = 0;
    struct pd_st_tensor *ts = NULL;
    void **datas = NULL;
    uint8_t *all = NULL; /* every group's files, concatenated, only to hash them */
    size_t all_len = 0;
    if (!dir)
        err = pd_fail(msg, PD_NOMEM, "out of memory");
    else if (!json_is_array(man) || json_array_size(man) == 0)
        err = pd_fail(msg, PD_FORMAT, "%s: not a non-empty array of weight groups", manifest_path);
    size_t gi;
    json_t *g;
    json_array_foreach(man, gi, g)
    {
        if (err)
            break;
        uint8_t *bin = NULL;
        size_t binlen = 0;
        json_t *weights = json_object_get(g, "weights");
        if (!json_is_array(weights)) {
            err = pd_fail(msg, PD_FORMAT, "manifest group %zu has no \"weights\" array", gi);
            break;
        }
        err = read_group(d, json_object_get(g, "paths"), &bin, &binlen, msg);
        size_t at = 0, wi;
        json_t *w;
        json_array_foreach(weights, wi, w)
        {
            if (err)
                break;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                struct pd_st_tensor *nt = realloc(ts, sizeof(*ts) * (size_t)cap);
                void **nd = realloc(datas, sizeof(*datas) * (size_t)cap);
                if (nt)
                    ts = nt;
                if (nd)
                    datas = nd;
                if (!nt || !nd) {
                    err = pd_fail(msg, PD_NOMEM, "out of memory");
                    break;
                }
            }
            memset(&ts[n], 0, sizeof(ts[n]));
            datas[n] = NULL;
            err = decode_weight(w, bin, binlen, &at, &ts[n], &datas[n], msg);
            if (!err)
                n++;
        }
        if (!err && at != binlen)
            err = pd_fail(msg, PD_FORMAT, "group %zu: weight files hold %zu bytes, weights use %zu",
                          gi, binlen, at);
        if (!err) {
            uint8_t *na = realloc(all, all_len + binlen + 1);
            if (!na) {
                err = pd_fail(msg, PD_NOMEM, "out of memory");
            } else {
                all = na;
                memcpy(all + all_len, bin, binlen);
                all_len += binlen;
            }
        }
        free(bin);
    }
    if (!err) {
        char sha[65];
        pd_sha256_hex(all, all_len, sha);
        const char *meta[] = {"format", "patchd-backbone",    "converter",     PD_TFJS_CONVERTER,
                              "source", source ? source : "", "source_sha256", sha};
        err = pd_st_write(out_path, ts, n, meta, 4, msg);
    }
    for (int i = 0; i < n; i++)
        free(datas[i]);
    free(datas);
    free(ts);
    free(all);
    free(dir);
    json_decref(man);
    return err;
}

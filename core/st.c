#include "st.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct pd_st {
    uint8_t *own;         /* the copied or read image, or NULL when borrowed */
    const uint8_t *bytes; /* the whole file */
    size_t len;
    json_t *header; /* keeps the names and metadata strings alive */
    int ntensors;
    struct pd_st_tensor *tensors;
    int nmeta;
    const char **meta; /* 2 * nmeta: key, value */
};

static const struct {
    const char *name;
    size_t size;
} dtypes[PD_DT_COUNT] = {
#define PD__DT_ROW(name, str, size) {str, size},
    PD_DTYPE_MAP(PD__DT_ROW)
#undef PD__DT_ROW
};

const char *pd_dtype_name(enum pd_dtype dt)
{
    PD_ASSERT(dt < PD_DT_COUNT);
    return dtypes[dt].name;
}

size_t pd_dtype_size(enum pd_dtype dt)
{
    PD_ASSERT(dt < PD_DT_COUNT);
    return dtypes[dt].size;
}

int64_t pd_st_numel(const struct pd_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

void pd_st_free(pd_st *st)
{
    if (!st)
        return;
    json_decref(st->header);
    free(st->tensors);
    free(st->meta);
    free(st->own);
    free(st);
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct pd_st_tensor *x = *(const struct pd_st_tensor *const *)a;
    const struct pd_st_tensor *y = *(const struct pd_st_tensor *const *)b;
    const uint8_t *px = x->data, *py = y->data;
    if (px != py)
        return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Reads one tensor entry; data_start/data_len describe the data section. */
static int parse_tensor(const char *name, json_t *v, const uint8_t *data, uint64_t data_len,
                        struct pd_st_tensor *t, char *msg)
{
    if (!json_is_object(v))
        return pd_fail(msg, PD_FORMAT, "tensor '%s': entry is not an object", name);
    const char *key;
    json_t *field;
    json_object_foreach(v, key, field)
    {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return pd_fail(msg, PD_FORMAT, "tensor '%s': unknown field '%s'", name, key);
    }
    json_t *jdt = json_object_get(v, "dtype");
    json_t *jshape = json_object_get(v, "shape");
    json_t *joff = json_object_get(v, "data_offsets");
    if (!json_is_string(jdt))
        return pd_fail(msg, PD_FORMAT, "tensor '%s': missing or non-string dtype", name);
    int dt = -1;
    for (int i = 0; i < PD_DT_COUNT; i++)
        if (!strcmp(json_string_value(jdt), dtypes[i].name))
            dt = i;
    if (dt < 0)
        return pd_fail(msg, PD_FORMAT, "tensor '%s': unknown dtype '%.32s'", name,
                       json_string_value(jdt));
    if (!json_is_array(jshape))
        return pd_fail(msg, PD_FORMAT, "tensor '%s': missing or non-array shape", name);
    if (json_array_size(jshape) > PD_ST_MAX_DIMS)
        return pd_fail(msg, PD_FORMAT, "tensor '%s': %zu dimensions, more than %d", name,
                       json_array_size(jshape), PD_ST_MAX_DIMS);
    t->name = name;
    t->dtype = (enum pd_dtype)dt;
    t->ndim = (int)json_array_size(jshape);
    /* the element count is bounded by the data section, so checking as we multiply is enough */
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(jshape, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return pd_fail(msg, PD_FORMAT, "tensor '%s': shape[%d] is not a non-negative integer",
                           name, i);
        uint64_t dim = (uint64_t)json_integer_value(d);
        if (dim > PD_ST_MAX_DIM)
            return pd_fail(msg, PD_FORMAT, "tensor '%s': shape is absurdly large (dimension %d)",
                           name, i);
        t->shape[i] = (int64_t)dim;
        if (dim && numel > data_len / dim)
            numel = data_len + 1; /* absurd: larger than the file; reported below */
        else
            numel *= dim;
    }
    if (!json_is_array(joff) || json_array_size(joff) != 2 ||
        !json_is_integer(json_array_get(joff, 0)) || !json_is_integer(json_array_get(joff, 1)))
        return pd_fail(msg, PD_FORMAT, "tensor '%s': data_offsets is not [begin, end]", name);
    json_int_t b = json_integer_value(json_array_get(joff, 0));
    json_int_t e = json_integer_value(json_array_get(joff, 1));
    if (b < 0 || e < b)
        return pd_fail(msg, PD_FORMAT, "tensor '%s': data_offsets [%lld, %lld] are not ordered",
                       name, (long long)b, (long long)e);
    if ((uint64_t)e > data_len)
        return pd_fail(msg, PD_FORMAT,
                       "tensor '%s': data_offsets end %lld is past the data section (%llu bytes)",
                       name, (long long)e, (unsigned long long)data_len);
    uint64_t want = numel > data_len ? UINT64_MAX : numel * dtypes[dt].size;
    if (want != (uint64_t)(e - b)) {
        if (want == UINT64_MAX)
            return pd_fail(msg, PD_FORMAT, "tensor '%s': shape is absurdly large for the file",
                           name);
        return pd_fail(
            msg, PD_FORMAT,
            "tensor '%s': data size %lld bytes does not match shape x dtype (%llu bytes)", name,
            (long long)(e - b), (unsigned long long)want);
    }
    t->data = data + b;
    t->nbytes = (size_t)(e - b);
    return PD_OK;
}

static int parse(pd_st *st, char *msg)
{
    const uint8_t *buf = st->bytes;
    size_t len = st->len;
    if (len < 8)
        return pd_fail(msg, PD_FORMAT, "file is %zu bytes, too short for the 8-byte header length",
                       len);
    uint64_t hlen;
    memcpy(&hlen, buf, 8);
    if (hlen > len - 8)
        return pd_fail(msg, PD_FORMAT, "header length %llu is past the end of the file (%zu bytes)",
                       (unsigned long long)hlen, len);
    if (hlen > PD_ST_MAX_HEADER)
        return pd_fail(msg, PD_FORMAT, "header length %llu is more than the limit of %u bytes",
                       (unsigned long long)hlen, PD_ST_MAX_HEADER);
    if (hlen < 2 || buf[8] != '{')
        return pd_fail(msg, PD_FORMAT, "header is not a JSON object");
    json_error_t jerr;
    st->header = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header)
        return pd_fail(msg, PD_FORMAT, "header is not valid JSON: %s (at byte %d)", jerr.text,
                       jerr.position);
    if (!json_is_object(st->header))
        return pd_fail(msg, PD_FORMAT, "header is not a JSON object");
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    size_t nkeys = json_object_size(st->header);
    st->tensors = calloc(nkeys ? nkeys : 1, sizeof(*st->tensors));
    if (!st->tensors)
        return pd_fail(msg, PD_NOMEM, "out of memory for %zu tensors", nkeys);
    const char *key;
    json_t *v;
    json_object_foreach(st->header, key, v)
    {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v))
                return pd_fail(msg, PD_FORMAT, "__metadata__ is not an object");
            size_t nm = json_object_size(v);
            st->meta = calloc(2 * nm + 1, sizeof(char *));
            if (!st->meta)
                return pd_fail(msg, PD_NOMEM, "out of memory");
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv)
            {
                if (!json_is_string(mv))
                    return pd_fail(msg, PD_FORMAT, "__metadata__ '%s' is not a string", mk);
                st->meta[2 * st->nmeta] = mk;
                st->meta[2 * st->nmeta + 1] = json_string_value(mv);
                st->nmeta++;
            }
            continue;
        }
        if (!*key)
            return pd_fail(msg, PD_FORMAT, "a tensor has an empty name");
        int err = parse_tensor(key, v, data, data_len, &st->tensors[st->ntensors], msg);
        if (err)
            return err;
        st->ntensors++;
    }
    /* the tensors must tile the data section exactly: no overlap, no hole */
    const struct pd_st_tensor **order = malloc(sizeof(*order) * (size_t)(st->ntensors + 1));
    if (!order)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    for (int i = 0; i < st->ntensors; i++)
        order[i] = &st->tensors[i];
    qsort(order, (size_t)st->ntensors, sizeof(*order), cmp_by_offset);
    const uint8_t *at = data;
    int err = PD_OK;
    for (int i = 0; i < st->ntensors && !err; i++) {
        const uint8_t *p = order[i]->data;
        if (p < at)
            err = pd_fail(msg, PD_FORMAT, "tensors '%s' and '%s' overlap", order[i - 1]->name,
                          order[i]->name);
        else if (p > at)
            err = pd_fail(msg, PD_FORMAT, "data section has a hole of %td bytes before tensor '%s'",
                          p - at, order[i]->name);
        at = p + order[i]->nbytes;
    }
    free(order);
    if (!err && at != data + data_len)
        err = pd_fail(msg, PD_FORMAT, "data section has %td trailing bytes no tensor uses",
                      (data + data_len) - at);
    return err;
}

int pd_st_parse(const uint8_t *buf, size_t len, int copy, pd_st **out, char *msg)
{
    *out = NULL;
    pd_st *st = calloc(1, sizeof(*st));
    if (!st)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    if (copy) {
        st->own = malloc(len ? len : 1);
        if (!st->own) {
            free(st);
            return pd_fail(msg, PD_NOMEM, "cannot allocate %zu bytes", len);
        }
        memcpy(st->own, buf, len);
        buf = st->own;
    }
    st->bytes = buf;
    st->len = len;
    int err = parse(st, msg);
    if (err) {
        pd_st_free(st);
        return err;
    }
    *out = st;
    return PD_OK;
}

int pd_st_open(const char *path, size_t max_bytes, pd_st **out, char *msg)
{
    *out = NULL;
    uint8_t *buf;
    size_t len;
    int err = pd_read_file(path, max_bytes, &buf, &len, msg);
    if (err)
        return err;
    err = pd_st_parse(buf, len, 0, out, msg);
    if (err) {
        free(buf);
        return err;
    }
    (*out)->own = buf;
    return PD_OK;
}

int pd_st_count(const pd_st *st)
{
    return st->ntensors;
}

const struct pd_st_tensor *pd_st_at(const pd_st *st, int i)
{
    PD_ASSERT(i >= 0 && i < st->ntensors);
    return &st->tensors[i];
}

const struct pd_st_tensor *pd_st_find(const pd_st *st, const char *name)
{
    for (int i = 0; i < st->ntensors; i++)
        if (!strcmp(st->tensors[i].name, name))
            return &st->tensors[i];
    return NULL;
}

int pd_st_meta_count(const pd_st *st)
{
    return st->nmeta;
}

void pd_st_meta_at(const pd_st *st, int i, const char **key, const char **value)
{
    PD_ASSERT(i >= 0 && i < st->nmeta);
    *key = st->meta[2 * i];
    *value = st->meta[2 * i + 1];
}

const char *pd_st_meta(const pd_st *st, const char *key)
{
    for (int i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta[2 * i], key))
            return st->meta[2 * i + 1];
    return NULL;
}

const uint8_t *pd_st_bytes(const pd_st *st, size_t *len)
{
    *len = st->len;
    return st->bytes;
}

int pd_st_read_f32(const struct pd_st_tensor *t, int ndim, const int64_t *shape, float *dst,
                   char *msg)
{
    int same = t->dtype == PD_DT_F32 && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[96] = "", got[96] = "";
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld", i ? "," : "",
                     (long long)shape[i]);
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", i ? "," : "",
                     (long long)t->shape[i]);
        return pd_fail(msg, PD_MISMATCH, "tensor '%s': expected F32 [%s], found %s [%s]", t->name,
                       want, pd_dtype_name(t->dtype), got);
    }
    memcpy(dst, t->data, t->nbytes);
    return PD_OK;
}

int pd_st_serialize(const struct pd_st_tensor *tensors, int n, const char *const *meta, int nmeta,
                    uint8_t **out, size_t *len, char *msg)
{
    *out = NULL;
    *len = 0;
    json_t *h = json_object();
    if (!h)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    int err = PD_OK;
    if (nmeta > 0) {
        json_t *m = json_object();
        for (int i = 0; m && i < nmeta; i++)
            json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
        json_object_set_new(h, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; i < n && !err; i++) {
        const struct pd_st_tensor *t = &tensors[i];
        int64_t numel = pd_st_numel(t);
        PD_ASSERT((size_t)numel * pd_dtype_size(t->dtype) == t->nbytes);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *e =
            json_pack("{s:s, s:o, s:[I,I]}", "dtype", pd_dtype_name(t->dtype), "shape", shape,
                      "data_offsets", (json_int_t)off, (json_int_t)(off + t->nbytes));
        if (!e || json_object_get(h, t->name))
            err = pd_fail(msg, e ? PD_INVAL : PD_NOMEM, "tensor '%s': %s", t->name,
                          e ? "duplicate name" : "out of memory");
        else
            json_object_set_new(h, t->name, e);
        off += t->nbytes;
    }
    char *js = err ? NULL : json_dumps(h, JSON_COMPACT);
    json_decref(h);
    if (err)
        return err;
    if (!js)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    size_t jl = strlen(js);
    size_t hl = (jl + 7) & ~(size_t)7;
    size_t total = 8 + hl + (size_t)off;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(js);
        return pd_fail(msg, PD_NOMEM, "cannot allocate %zu bytes", total);
    }
    uint64_t hl64 = hl;
    memcpy(buf, &hl64, 8);
    memcpy(buf + 8, js, jl);
    memset(buf + 8 + jl, ' ', hl - jl);
    free(js);
    uint8_t *p = buf + 8 + hl;
    for (int i = 0; i < n; i++) {
        if (tensors[i].nbytes)
            memcpy(p, tensors[i].data, tensors[i].nbytes);
        p += tensors[i].nbytes;
    }
    *out = buf;
    *len = total;
    return PD_OK;
}

int pd_st_write(const char *path, const struct pd_st_tensor *tensors, int n,
                const char *const *meta, int nmeta, char *msg)
{
    uint8_t *buf;
    size_t len;
    int err = pd_st_serialize(tensors, n, meta, nmeta, &buf, &len, msg);
    if (err)
        return err;
    struct pd_iovec part = {buf, len};
    err = pd_write_atomic(path, &part, 1, msg);
    free(buf);
    return err;
}

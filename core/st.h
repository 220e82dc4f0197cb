/*
 * st.h - safetensors files: the container of the backbone and of every patch.
 *
 * Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, then N bytes
 * of UTF-8 JSON, then the data section. The JSON is an object mapping each tensor name to
 * {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object whose values are strings.
 *
 * The reader trusts nothing: every offset is checked against the file size, the tensors must
 * cover the data section exactly (no overlap, no hole, as safetensors itself requires), each
 * tensor's byte size must equal its shape times its dtype size, names are unique, dtypes known,
 * and sizes bounded (header at most PD_ST_MAX_HEADER bytes, at most PD_ST_MAX_DIMS dimensions).
 * A malformed file gives PD_FORMAT and one line naming the problem; nothing is over-read.
 *
 * Tensor data is returned as it lies in the file: little-endian and possibly unaligned, so
 * readers memcpy it (pd_st_read_f32 does) rather than cast the pointer.
 *
 * Threads: a pd_st is read-only after pd_st_parse/pd_st_open and may be shared by threads.
 */
#ifndef PD_ST_H
#define PD_ST_H

#include "pd.h"

#define PD_ST_MAX_DIMS 8
/* No dimension may exceed this, even in an empty tensor: it keeps shape products in int64. */
#define PD_ST_MAX_DIM    ((uint64_t)1 << 40)
#define PD_ST_MAX_HEADER (100u << 20) /* the limit safetensors itself uses */

/* X(enum suffix, file name, bytes per element) */
#define PD_DTYPE_MAP(X)                                                                            \
    X(BOOL, "BOOL", 1)                                                                             \
    X(U8, "U8", 1)                                                                                 \
    X(I8, "I8", 1)                                                                                 \
    X(I16, "I16", 2)                                                                               \
    X(U16, "U16", 2)                                                                               \
    X(F16, "F16", 2)                                                                               \
    X(BF16, "BF16", 2)                                                                             \
    X(I32, "I32", 4)                                                                               \
    X(U32, "U32", 4)                                                                               \
    X(F32, "F32", 4)                                                                               \
    X(F64, "F64", 8)                                                                               \
    X(I64, "I64", 8)                                                                               \
    X(U64, "U64", 8)

enum pd_dtype {
#define PD__DT_ENUM(name, str, size) PD_DT_##name,
    PD_DTYPE_MAP(PD__DT_ENUM)
#undef PD__DT_ENUM
        PD_DT_COUNT
};

const char *pd_dtype_name(enum pd_dtype dt);
size_t pd_dtype_size(enum pd_dtype dt);

/* One tensor. In a parsed file every pointer is borrowed from the pd_st. */
struct pd_st_tensor {
    const char *name;
    enum pd_dtype dtype;
    int ndim;
    int64_t shape[PD_ST_MAX_DIMS];
    const void *data; /* nbytes bytes, little-endian, maybe unaligned */
    size_t nbytes;
};

/* Number of elements of a tensor (product of its shape; 1 for a scalar). */
int64_t pd_st_numel(const struct pd_st_tensor *t);

typedef struct pd_st pd_st;

/*
 * Parses a safetensors image held in memory. With `copy` the buffer is copied and the caller
 * keeps its own; without it the pd_st borrows buf, which must outlive it. On failure *out is
 * NULL and there is nothing to free.
 */
int pd_st_parse(const uint8_t *buf, size_t len, int copy, pd_st **out, char *msg);

/* Reads and parses a file of at most max_bytes. */
int pd_st_open(const char *path, size_t max_bytes, pd_st **out, char *msg);

void pd_st_free(pd_st *st);

/* Tensors in header order; i < pd_st_count(). Borrowed, valid until pd_st_free. */
int pd_st_count(const pd_st *st);
const struct pd_st_tensor *pd_st_at(const pd_st *st, int i);
/* The tensor called name, or NULL. */
const struct pd_st_tensor *pd_st_find(const pd_st *st, const char *name);

/* Metadata in header order; i < pd_st_meta_count(). Borrowed strings. */
int pd_st_meta_count(const pd_st *st);
void pd_st_meta_at(const pd_st *st, int i, const char **key, const char **value);
/* The value of a metadata key, or NULL. */
const char *pd_st_meta(const pd_st *st, const char *key);

/* The whole file image (borrowed) and its length, e.g. to hash it. */
const uint8_t *pd_st_bytes(const pd_st *st, size_t *len);

/*
 * Copies an F32 tensor into dst after checking its dtype and shape (ndim dims in `shape`).
 * PD_MISMATCH with a message naming the tensor when they differ.
 */
int pd_st_read_f32(const struct pd_st_tensor *t, int ndim, const int64_t *shape, float *dst,
                   char *msg);

/*
 * Serialises tensors and metadata (nmeta key/value pairs, keys sorted by the caller or not) to a
 * new buffer (caller frees *out). The header is padded with spaces to a multiple of 8 bytes so
 * that the data section is 8-byte aligned, as safetensors' own writer does.
 */
int pd_st_serialize(const struct pd_st_tensor *tensors, int n, const char *const *meta, int nmeta,
                    uint8_t **out, size_t *len, char *msg);

/* pd_st_serialize, then pd_write_atomic to path. */
int pd_st_write(const char *path, const struct pd_st_tensor *tensors, int n,
                const char *const *meta, int nmeta, char *msg);

#endif

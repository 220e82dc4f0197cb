/*
 * pd.h - the base every patchd module includes: error codes, assertions and small helpers.
 *
 * Errors. Every fallible function returns an `int`: PD_OK (0) on success or a negative
 * `enum pd_err`. The table below is the only list of error codes; `pd_strerror()` gives the
 * generic sentence and `pd_err_name()` the stable lower-case name (used as the JSON error code
 * by the server). Functions that can say more take a `char *msg` of PD_MSG_MAX bytes (NULL is
 * allowed) and write one line naming the problem, for example "tensor 'x': data_offsets end 40
 * past the data section (32 bytes)".
 *
 * Bugs abort; the world returns errors. PD_ASSERT is always on (also in release builds): it
 * guards invariants and shapes that only a programming error can break. Anything that comes
 * from a file, a socket or a user returns an error instead.
 *
 * Threads: everything here is thread-safe; nothing here has state.
 */
#ifndef PD_H
#define PD_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "patchd reads and writes little-endian files in place and needs a little-endian CPU"
#endif

#define PD_VERSION "0.1.0"

/* X(NAME, value, name string, sentence) */
#define PD_ERR_MAP(X)                                                                              \
    X(OK, 0, "ok", "success")                                                                      \
    X(NOMEM, -1, "out_of_memory", "out of memory")                                                 \
    X(IO, -2, "io_error", "input/output error")                                                    \
    X(FORMAT, -3, "bad_format", "malformed data")                                                  \
    X(INVAL, -4, "invalid_argument", "invalid argument")                                           \
    X(RANGE, -5, "out_of_range", "value out of range")                                             \
    X(NOTFOUND, -6, "not_found", "not found")                                                      \
    X(TOOBIG, -7, "too_large", "too large")                                                        \
    X(UNSUPPORTED, -8, "unsupported", "unsupported")                                               \
    X(CHECKSUM, -9, "checksum_mismatch", "checksum mismatch")                                      \
    X(NOSPC, -10, "no_space", "no space left on device")                                           \
    X(EXISTS, -11, "exists", "already exists")                                                     \
    X(CANCELLED, -12, "cancelled", "cancelled")                                                    \
    X(MISMATCH, -13, "mismatch", "does not match the backbone")

enum pd_err {
#define PD__ERR_ENUM(name, val, str, sentence) PD_##name = val,
    PD_ERR_MAP(PD__ERR_ENUM)
#undef PD__ERR_ENUM
};

/* Generic sentence for an error code ("malformed data"); never NULL. */
const char *pd_strerror(int err);
/* Stable lower-case name for an error code ("bad_format"); never NULL. */
const char *pd_err_name(int err);

/* Size of every `msg` buffer in the API. */
#define PD_MSG_MAX 256

/* Writes a formatted message into msg (PD_MSG_MAX bytes) when msg is not NULL; returns err. */
int pd_fail(char *msg, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Always-on assertion: prints the condition and location, then aborts. */
#define PD_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x))                                                                                  \
            pd__assert_fail(#x, __FILE__, __LINE__);                                               \
    } while (0)
_Noreturn void pd__assert_fail(const char *expr, const char *file, int line);

/* Checked allocation for sizes that come from outside: returns NULL on overflow or failure. */
void *pd_malloc_array(size_t n, size_t size);
/* Aligned (64 bytes) zeroed allocation for tensors; NULL on overflow or failure; free with free().
 */
float *pd_alloc_floats(size_t n);

/* Reads a whole file into a new buffer (caller frees). Fails with PD_TOOBIG above max bytes. */
int pd_read_file(const char *path, size_t max, uint8_t **out, size_t *len, char *msg);

/*
 * Writes a file atomically: a temporary file in the same directory, fsync, rename over path,
 * fsync the directory. Either the old file or the complete new one exists afterwards, whatever
 * happens. `parts` are written back to back. Returns PD_NOSPC when the disk is full.
 */
struct pd_iovec {
    const void *base; /* borrowed */
    size_t len;
};
int pd_write_atomic(const char *path, const struct pd_iovec *parts, int nparts, char *msg);

/* SHA-256 of a buffer, as 64 lower-case hex digits and a NUL (hex must hold 65 bytes). */
void pd_sha256_hex(const void *data, size_t len, char hex[65]);

/* Monotonic clock in seconds. */
double pd_now(void);

#endif

#include "pd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

const char *pd_strerror(int err)
{
    switch (err) {
#define PD__ERR_STR(name, val, str, sentence)                                                      \
    case PD_##name:                                                                                \
        return sentence;
        PD_ERR_MAP(PD__ERR_STR)
#undef PD__ERR_STR
    }
    return "unknown error";
}

const char *pd_err_name(int err)
{
    switch (err) {
#define PD__ERR_NAME(name, val, str, sentence)                                                     \
    case PD_##name:                                                                                \
        return str;
        PD_ERR_MAP(PD__ERR_NAME)
#undef PD__ERR_NAME
    }
    return "unknown";
}

int pd_fail(char *msg, int err, const char *fmt, ...)
{
    if (msg) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, PD_MSG_MAX, fmt, ap);
        va_end(ap);
    }
    return err;
}

void pd__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "patchd: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

void *pd_malloc_array(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return malloc(n * size > 0 ? n * size : 1);
}

float *pd_alloc_floats(size_t n)
{
    if (n > (SIZE_MAX - 64) / sizeof(float))
        return NULL;
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64))
        return NULL;
    memset(p, 0, bytes);
    return p;
}

int pd_read_file(const char *path, size_t max, uint8_t **out, size_t *len, char *msg)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pd_fail(msg, errno == ENOENT ? PD_NOTFOUND : PD_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pd_fail(msg, PD_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return pd_fail(msg, PD_TOOBIG, "%s: %lld bytes, more than the limit of %zu", path,
                       (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return pd_fail(msg, PD_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return pd_fail(msg, PD_IO, "%s: read: %s", path, r < 0 ? strerror(e) : "short read");
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = n;
    return PD_OK;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int pd_write_atomic(const char *path, const struct pd_iovec *parts, int nparts, char *msg)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    char *dir = malloc(plen + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    snprintf(tmp, plen + 32, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        free(dir);
        return pd_fail(msg, e == ENOSPC || e == EDQUOT ? PD_NOSPC : PD_IO, "%s: create: %s", path,
                       strerror(e));
    }
    int err = 0;
    for (int i = 0; i < nparts && !err; i++)
        if (write_all(fd, parts[i].base, parts[i].len) < 0)
            err = errno;
    /* mkstemp makes 0600; published files are world-readable like any other */
    if (!err && fchmod(fd, 0644) < 0)
        err = errno;
    if (!err && fsync(fd) < 0)
        err = errno;
    if (close(fd) < 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) < 0)
        err = errno;
    if (err) {
        unlink(tmp);
        free(tmp);
        free(dir);
        return pd_fail(msg, err == ENOSPC || err == EDQUOT ? PD_NOSPC : PD_IO, "%s: write: %s",
                       path, strerror(err));
    }
    /* fsync the directory so that the rename itself is durable */
    memcpy(dir, path, plen + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(tmp);
    free(dir);
    return PD_OK;
}

void pd_sha256_hex(const void *data, size_t len, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    PD_ASSERT(EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen == 32);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

double pd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

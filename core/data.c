#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ENTRIES 1000000

static int is_jpeg_name(const char *n)
{
    size_t l = strlen(n);
    return (l > 4 && !strcasecmp(n + l - 4, ".jpg")) || (l > 5 && !strcasecmp(n + l - 5, ".jpeg"));
}

static int label_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128 || !strcmp(s, ".") || !strcmp(s, ".."))
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f || s[i] == '/')
            return 0;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void pd_dataset_fini(struct pd_dataset *ds)
{
    for (int i = 0; i < ds->nclass; i++)
        free(ds->labels[i]);
    for (int i = 0; i < ds->n; i++)
        free(ds->paths[i]);
    free(ds->labels);
    free(ds->paths);
    free(ds->label);
    if (ds->tmpdir) {
        /* two levels: tmpdir/CLASS/FILE */
        DIR *d = opendir(ds->tmpdir);
        struct dirent *e;
        char p[4096], q[4096];
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(p, sizeof(p), "%s/%s", ds->tmpdir, e->d_name);
            DIR *c = opendir(p);
            struct dirent *f;
            while (c && (f = readdir(c))) {
                if (f->d_name[0] == '.')
                    continue;
                snprintf(q, sizeof(q), "%s/%s", p, f->d_name);
                unlink(q);
            }
            if (c)
                closedir(c);
            rmdir(p);
        }
        if (d)
            closedir(d);
        rmdir(ds->tmpdir);
        free(ds->tmpdir);
    }
    memset(ds, 0, sizeof(*ds));
}

static int add_image(struct pd_dataset *ds, int *cap, const char *path, int label)
{
    if (ds->n >= PD_DATA_MAX_IMAGES)
        return PD_TOOBIG;
    if (ds->n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        char **np = realloc(ds->paths, sizeof(char *) * (size_t)nc);
        if (np)
            ds->paths = np;
        int *nl = realloc(ds->label, sizeof(int) * (size_t)nc);
        if (nl)
            ds->label = nl;
        if (!np || !nl)
            return PD_NOMEM;
        *cap = nc;
    }
    ds->paths[ds->n] = strdup(path);
    if (!ds->paths[ds->n])
        return PD_NOMEM;
    ds->label[ds->n++] = label;
    return PD_OK;
}

/* The JPEG files of dir, sorted (new array of new strings; free both). -1 when dir cannot be
 * opened. The order is the name order, so data sets read the same way every time. */
static int list_jpegs(const char *dir, char ***out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char **files = NULL;
    int nf = 0, fc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_jpeg_name(e->d_name))
            continue;
        if (nf == fc) {
            fc = fc ? 2 * fc : 64;
            char **nfp = realloc(files, sizeof(char *) * (size_t)fc);
            if (!nfp)
                break;
            files = nfp;
        }
        if ((files[nf] = strdup(e->d_name)))
            nf++;
    }
    closedir(d);
    if (nf)
        qsort(files, (size_t)nf, sizeof(char *), cmp_str);
    *out = files;
    return nf;
}

/* Reads the JPEGs of root/CLASS for each class already in ds->labels. */
static int scan_classes(struct pd_dataset *ds, const char *root, char *msg)
{
    int cap = 0;
    char path[4096];
    for (int c = 0; c < ds->nclass; c++) {
        snprintf(path, sizeof(path), "%s/%s", root, ds->labels[c]);
        char **files;
        int nf = list_jpegs(path, &files);
        if (nf < 0)
            return pd_fail(msg, PD_IO, "%s: %s", path, strerror(errno));
        if (nf == 0) {
            free(files);
            return pd_fail(msg, PD_FORMAT, "class '%s' has no images", ds->labels[c]);
        }
        int err = PD_OK;
        for (int i = 0; i < nf; i++) {
            snprintf(path, sizeof(path), "%s/%s/%s", root, ds->labels[c], files[i]);
            struct stat st;
            if (!err && stat(path, &st) == 0 && S_ISREG(st.st_mode))
                err = add_image(ds, &cap, path, c);
            free(files[i]);
        }
        free(files);
        if (err)
            return pd_fail(msg, err, "too many images (limit %d)", PD_DATA_MAX_IMAGES);
    }
    return PD_OK;
}

static int open_dir(const char *root, struct pd_dataset *ds, char *msg)
{
    DIR *d = opendir(root);
    if (!d)
        return pd_fail(msg, errno == ENOENT ? PD_NOTFOUND : PD_IO, "%s: %s", root, strerror(errno));
    int cap = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", root, e->d_name);
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if (!label_ok(e->d_name)) {
            closedir(d);
            return pd_fail(msg, PD_FORMAT, "class folder name is not a valid label");
        }
        if (ds->nclass == PD_DATA_MAX_CLASSES) {
            closedir(d);
            return pd_fail(msg, PD_TOOBIG, "more than %d classes", PD_DATA_MAX_CLASSES);
        }
        if (ds->nclass == cap) {
            cap = cap ? 2 * cap : 16;
            char **nl = realloc(ds->labels, sizeof(char *) * (size_t)cap);
            if (!nl) {
                closedir(d);
                return pd_fail(msg, PD_NOMEM, "out of memory");
            }
            ds->labels = nl;
        }
        ds->labels[ds->nclass++] = strdup(e->d_name);
    }
    closedir(d);
    if (ds->nclass < 2)
        return pd_fail(msg, PD_FORMAT, "need at least 2 class folders, found %d", ds->nclass);
    qsort(ds->labels, (size_t)ds->nclass, sizeof(char *), cmp_str);
    return scan_classes(ds, root, msg);
}

/* Splits an entry path into its class (the parent folder) and checks it is safe. */
static int entry_class(const char *path, char *cls, size_t len, char *msg)
{
    if (path[0] == '/')
        return pd_fail(msg, PD_FORMAT, "archive entry '%.100s' has an absolute path", path);
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && !memcmp(p, "..", 2))
            return pd_fail(msg, PD_FORMAT, "archive entry '%.100s' climbs out with '..'", path);
        p += n + (e ? 1 : 0);
    }
    const char *slash = strrchr(path, '/');
    if (!slash)
        return 1; /* a file at the top: no class */
    const char *start = slash;
    while (start > path && start[-1] != '/')
        start--;
    size_t n = (size_t)(slash - start);
    if (n == 0 || n >= len)
        return 1;
    memcpy(cls, start, n);
    cls[n] = '\0';
    if (!label_ok(cls))
        return pd_fail(msg, PD_FORMAT, "archive class folder '%.64s' is not a valid label", cls);
    return 0;
}

static int extract(struct archive *a, uint64_t max_bytes, struct pd_dataset *ds, char *msg)
{
    const char *tmp = getenv("TMPDIR");
    char tpl[4096];
    snprintf(tpl, sizeof(tpl), "%s/patchd-data-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tpl))
        return pd_fail(msg, PD_IO, "cannot create a temporary directory: %s", strerror(errno));
    ds->tmpdir = strdup(tpl);
    if (!ds->tmpdir)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    uint64_t total = 0;
    int entries = 0, cap_l = 0;
    struct archive_entry *ent;
    char cls[256], path[4096];
    char *buf = malloc(1 << 16);
    if (!buf)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    int err = PD_OK, r;
    while (!err && (r = archive_read_next_header(a, &ent)) == ARCHIVE_OK) {
        if (++entries > MAX_ENTRIES) {
            err = pd_fail(msg, PD_TOOBIG, "archive has more than %d entries", MAX_ENTRIES);
            break;
        }
        const char *name = archive_entry_pathname(ent);
        if (!name) {
            err = pd_fail(msg, PD_FORMAT, "archive entry without a name");
            break;
        }
        int c = entry_class(name, cls, sizeof(cls), msg);
        if (c < 0) {
            err = c;
            break;
        }
        if (c > 0 || archive_entry_filetype(ent) != AE_IFREG || !is_jpeg_name(name))
            continue; /* folders, links, devices, other files */
        int idx = -1;
        for (int i = 0; i < ds->nclass; i++)
            if (!strcmp(ds->labels[i], cls))
                idx = i;
        if (idx < 0) {
            if (ds->nclass == PD_DATA_MAX_CLASSES) {
                err = pd_fail(msg, PD_TOOBIG, "more than %d classes", PD_DATA_MAX_CLASSES);
                break;
            }
            if (ds->nclass == cap_l) {
                cap_l = cap_l ? 2 * cap_l : 16;
                char **nl = realloc(ds->labels, sizeof(char *) * (size_t)cap_l);
                if (!nl) {
                    err = pd_fail(msg, PD_NOMEM, "out of memory");
                    break;
                }
                ds->labels = nl;
            }
            idx = ds->nclass;
            ds->labels[ds->nclass++] = strdup(cls);
            snprintf(path, sizeof(path), "%s/%d", ds->tmpdir, idx);
            if (mkdir(path, 0700) < 0) {
                err = pd_fail(msg, PD_IO, "cannot create %s: %s", path, strerror(errno));
                break;
            }
        }
        snprintf(path, sizeof(path), "%s/%d/%d.jpg", ds->tmpdir, idx, entries);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            err = pd_fail(msg, errno == ENOSPC ? PD_NOSPC : PD_IO, "cannot write %s: %s", path,
                          strerror(errno));
            break;
        }
        la_ssize_t got;
        while ((got = archive_read_data(a, buf, 1 << 16)) > 0) {
            total += (uint64_t)got;
            if (total > max_bytes) {
                err = pd_fail(msg, PD_TOOBIG, "archive expands to more than %llu bytes",
                              (unsigned long long)max_bytes);
                break;
            }
            if (write(fd, buf, (size_t)got) != got) {
                err = pd_fail(msg, errno == ENOSPC ? PD_NOSPC : PD_IO, "cannot write: %s",
                              strerror(errno));
                break;
            }
        }
        if (!err && got < 0)
            err = pd_fail(msg, PD_FORMAT, "archive is corrupt: %s", archive_error_string(a));
        close(fd);
    }
    free(buf);
    if (!err && r != ARCHIVE_EOF && r != ARCHIVE_OK)
        err = pd_fail(msg, PD_FORMAT, "not a readable tar, tar.gz or zip archive: %s",
                      archive_error_string(a));
    if (err)
        return err;
    if (ds->nclass < 2)
        return pd_fail(msg, PD_FORMAT, "need at least 2 class folders of JPEGs, found %d",
                       ds->nclass);
    /* sort the labels; the folders on disk are named by first-seen index */
    char **seen = malloc(sizeof(char *) * (size_t)ds->nclass);
    if (!seen)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    memcpy(seen, ds->labels, sizeof(char *) * (size_t)ds->nclass);
    qsort(ds->labels, (size_t)ds->nclass, sizeof(char *), cmp_str);
    int cap = 0;
    for (int c = 0; c < ds->nclass && !err; c++) {
        int first = 0;
        while (seen[first] != ds->labels[c])
            first++;
        snprintf(path, sizeof(path), "%s/%d", ds->tmpdir, first);
        char **files;
        int nf = list_jpegs(path, &files);
        for (int i = 0; i < nf; i++) {
            char fp[4200];
            snprintf(fp, sizeof(fp), "%s/%s", path, files[i]);
            if (!err && add_image(ds, &cap, fp, c))
                err = pd_fail(msg, PD_TOOBIG, "too many images");
            free(files[i]);
        }
        free(files);
    }
    free(seen);
    return err;
}

static int open_archive(struct archive *a, uint64_t max_bytes, struct pd_dataset *ds, char *msg)
{
    int err = extract(a, max_bytes, ds, msg);
    archive_read_free(a);
    if (err)
        pd_dataset_fini(ds);
    return err;
}

static struct archive *new_reader(void)
{
    struct archive *a = archive_read_new();
    if (!a)
        return NULL;
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    return a;
}

int pd_dataset_open_archive(const void *buf, size_t len, uint64_t max_bytes, struct pd_dataset *ds,
                            char *msg)
{
    memset(ds, 0, sizeof(*ds));
    struct archive *a = new_reader();
    if (!a)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    if (archive_read_open_memory(a, buf, len) != ARCHIVE_OK) {
        int err = pd_fail(msg, PD_FORMAT, "not a tar, tar.gz or zip archive: %s",
                          archive_error_string(a));
        archive_read_free(a);
        return err;
    }
    return open_archive(a, max_bytes, ds, msg);
}

int pd_dataset_open(const char *path, uint64_t max_bytes, struct pd_dataset *ds, char *msg)
{
    memset(ds, 0, sizeof(*ds));
    struct stat st;
    if (stat(path, &st) < 0)
        return pd_fail(msg, errno == ENOENT ? PD_NOTFOUND : PD_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        int err = open_dir(path, ds, msg);
        if (err)
            pd_dataset_fini(ds);
        return err;
    }
    struct archive *a = new_reader();
    if (!a)
        return pd_fail(msg, PD_NOMEM, "out of memory");
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        int err = pd_fail(msg, PD_FORMAT, "%s: not a tar, tar.gz or zip archive: %s", path,
                          archive_error_string(a));
        archive_read_free(a);
        return err;
    }
    return open_archive(a, max_bytes, ds, msg);
}

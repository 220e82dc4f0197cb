#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_MAX_LEN 4096

struct entry {
    char tenant[PD_NAME_MAX + 1], task[PD_NAME_MAX + 1];
    int active;
    int n;         /* versions */
    int *versions; /* ascending */
};

struct pd_store {
    char *root;
    int keep;
    pthread_mutex_t mu; /* guards the index */
    struct entry *e;
    int n, cap;
    uint64_t generation;
};

int pd_store_valid_name(const char *s)
{
    if (!s || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    size_t i = 1;
    for (; s[i]; i++) {
        char c = s[i];
        if (i >= PD_NAME_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int names_ok(const char *tenant, const char *task, char *msg)
{
    if (!pd_store_valid_name(tenant))
        return pd_fail(msg, PD_INVAL, "tenant name is not [a-z0-9][a-z0-9_-]{0,63}");
    if (!pd_store_valid_name(task))
        return pd_fail(msg, PD_INVAL, "task name is not [a-z0-9][a-z0-9_-]{0,63}");
    return PD_OK;
}

static void task_dir(const pd_store *s, const char *tenant, const char *task, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s/%s", s->root, tenant, task);
}

void pd_store_path(const pd_store *s, const char *tenant, const char *task, int version, char *buf,
                   size_t len)
{
    snprintf(buf, len, "%s/%s/%s/v%d.safetensors", s->root, tenant, task, version);
}

/* "v17.safetensors" -> 17; 0 when the name is anything else */
static int parse_version(const char *name)
{
    if (name[0] != 'v' || name[1] < '1' || name[1] > '9')
        return 0;
    long v = 0;
    const char *p = name + 1;
    while (*p >= '0' && *p <= '9' && v <= PD_MAX_VERSIONS)
        v = v * 10 + (*p++ - '0');
    if (v < 1 || v > PD_MAX_VERSIONS || strcmp(p, ".safetensors"))
        return 0;
    return (int)v;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static int lock_task(const char *dir)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof(path), "%s/.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void unlock_task(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

/*
 * Reads one task directory into e (versions newly allocated). Removes stale temporary files when
 * no writer holds the task's lock. Returns 0 when the directory holds at least one version.
 */
static int scan_task(const char *dir, struct entry *e)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int cap = 8, n = 0, stale = 0;
    int *v = malloc(sizeof(int) * (size_t)cap);
    struct dirent *de;
    while (v && (de = readdir(d))) {
        if (strstr(de->d_name, ".tmp.")) {
            stale = 1;
            continue;
        }
        int ver = parse_version(de->d_name);
        if (!ver)
            continue;
        if (n == cap) {
            int *nv = realloc(v, sizeof(int) * (size_t)(cap *= 2));
            if (!nv) {
                free(v);
                v = NULL;
                break;
            }
            v = nv;
        }
        v[n++] = ver;
    }
    closedir(d);
    if (stale) {
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof(path), "%s/.lock", dir);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && (d = opendir(dir))) {
            while ((de = readdir(d)))
                if (strstr(de->d_name, ".tmp.")) {
                    snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                    unlink(path);
                }
            closedir(d);
        }
        if (fd >= 0)
            close(fd);
    }
    if (!v || n == 0) {
        free(v);
        return -1;
    }
    qsort(v, (size_t)n, sizeof(int), cmp_int);
    e->versions = v;
    e->n = n;
    e->active = v[n - 1];
    char path[PATH_MAX_LEN], buf[32];
    snprintf(path, sizeof(path), "%s/ACTIVE", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        int a;
        if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%d", &a) == 1 &&
            bsearch(&a, v, (size_t)n, sizeof(int), cmp_int))
            e->active = a;
        fclose(f);
    }
    return 0;
}

static struct entry *find(pd_store *s, const char *tenant, const char *task)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].task, task) && !strcmp(s->e[i].tenant, tenant))
            return &s->e[i];
    return NULL;
}

static void free_entries(struct entry *e, int n)
{
    for (int i = 0; i < n; i++)
        free(e[i].versions);
    free(e);
}

static int same_index(const struct entry *a, int na, const struct entry *b, int nb)
{
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++)
        if (strcmp(a[i].tenant, b[i].tenant) || strcmp(a[i].task, b[i].task) ||
            a[i].active != b[i].active || a[i].n != b[i].n ||
            memcmp(a[i].versions, b[i].versions, sizeof(int) * (size_t)a[i].n))
            return 0;
    return 1;
}

static int by_name(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->task, y->task);
}

int pd_store_rescan(pd_store *s)
{
    struct entry *e = NULL;
    int n = 0, cap = 0;
    DIR *root = opendir(s->root);
    struct dirent *t;
    while (root && (t = readdir(root))) {
        if (!pd_store_valid_name(t->d_name))
            continue;
        char tdir[PATH_MAX_LEN];
        snprintf(tdir, sizeof(tdir), "%s/%s", s->root, t->d_name);
        DIR *td = opendir(tdir);
        struct dirent *k;
        while (td && (k = readdir(td))) {
            if (!pd_store_valid_name(k->d_name))
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                struct entry *ne = realloc(e, sizeof(*e) * (size_t)cap);
                if (!ne)
                    break;
                e = ne;
            }
            struct entry *x = &e[n];
            memset(x, 0, sizeof(*x));
            snprintf(x->tenant, sizeof(x->tenant), "%s", t->d_name);
            snprintf(x->task, sizeof(x->task), "%s", k->d_name);
            char dir[PATH_MAX_LEN];
            snprintf(dir, sizeof(dir), "%s/%s", tdir, k->d_name);
            if (scan_task(dir, x) == 0)
                n++;
        }
        if (td)
            closedir(td);
    }
    if (root)
        closedir(root);
    if (n)
        qsort(e, (size_t)n, sizeof(*e), by_name);
    pthread_mutex_lock(&s->mu);
    if (!same_index(s->e, s->n, e, n))
        s->generation++;
    struct entry *old = s->e;
    int on = s->n;
    s->e = e;
    s->n = n;
    s->cap = cap;
    pthread_mutex_unlock(&s->mu);
    free_entries(old, on);
    return n;
}

/* Re-reads one task into the index after a local change. */
static void refresh(pd_store *s, const char *tenant, const char *task)
{
    char dir[PATH_MAX_LEN];
    task_dir(s, tenant, task, dir, sizeof(dir));
    struct entry x;
    memset(&x, 0, sizeof(x));
    snprintf(x.tenant, sizeof(x.tenant), "%s", tenant);
    snprintf(x.task, sizeof(x.task), "%s", task);
    int present = scan_task(dir, &x) == 0;
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, tenant, task);
    if (e) {
        free(e->versions);
        if (present) {
            *e = x;
        } else {
            *e = s->e[--s->n];
            qsort(s->e, (size_t)s->n, sizeof(*s->e), by_name);
        }
    } else if (present) {
        if (s->n == s->cap) {
            int cap = s->cap ? 2 * s->cap : 64;
            struct entry *ne = realloc(s->e, sizeof(*ne) * (size_t)cap);
            if (ne)
                s->e = ne, s->cap = cap;
        }
        if (s->n < s->cap) {
            s->e[s->n++] = x;
            qsort(s->e, (size_t)s->n, sizeof(*s->e), by_name);
        } else {
            free(x.versions);
        }
    }
    s->generation++;
    pthread_mutex_unlock(&s->mu);
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX_LEN];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

int pd_store_open(const char *root, int keep, pd_store **out, char *msg)
{
    *out = NULL;
    if (strlen(root) > PATH_MAX_LEN - 3 * PD_NAME_MAX - 64)
        return pd_fail(msg, PD_INVAL, "store path is too long");
    if (mkdir_p(root) < 0)
        return pd_fail(msg, PD_IO, "%s: cannot create: %s", root, strerror(errno));
    struct stat st;
    if (stat(root, &st) < 0 || !S_ISDIR(st.st_mode))
        return pd_fail(msg, PD_IO, "%s: not a directory", root);
    pd_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->root = strdup(root))) {
        free(s);
        return pd_fail(msg, PD_NOMEM, "out of memory");
    }
    s->keep = keep < 0 ? 0 : keep;
    pthread_mutex_init(&s->mu, NULL);
    pd_store_rescan(s);
    *out = s;
    return PD_OK;
}

void pd_store_close(pd_store *s)
{
    if (!s)
        return;
    free_entries(s->e, s->n);
    pthread_mutex_destroy(&s->mu);
    free(s->root);
    free(s);
}

static int write_active(const char *dir, int version, char *msg)
{
    char path[PATH_MAX_LEN], buf[32];
    snprintf(path, sizeof(path), "%s/ACTIVE", dir);
    int n = snprintf(buf, sizeof(buf), "%d\n", version);
    struct pd_iovec part = {buf, (size_t)n};
    return pd_write_atomic(path, &part, 1, msg);
}

int pd_store_put(pd_store *s, const char *tenant, const char *task, const uint8_t *buf, size_t len,
                 int *version, char *msg)
{
    int err = names_ok(tenant, task, msg);
    if (err)
        return err;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN];
    task_dir(s, tenant, task, dir, sizeof(dir));
    if (mkdir_p(dir) < 0)
        return pd_fail(msg, errno == ENOSPC ? PD_NOSPC : PD_IO, "cannot create the task: %s",
                       strerror(errno));
    int fd = lock_task(dir);
    if (fd < 0)
        return pd_fail(msg, errno == ENOSPC ? PD_NOSPC : PD_IO, "cannot lock the task: %s",
                       strerror(errno));
    struct entry x;
    memset(&x, 0, sizeof(x));
    int next = scan_task(dir, &x) == 0 ? x.versions[x.n - 1] + 1 : 1;
    if (next > PD_MAX_VERSIONS) {
        free(x.versions);
        unlock_task(fd);
        return pd_fail(msg, PD_RANGE, "task has reached %d versions", PD_MAX_VERSIONS);
    }
    pd_store_path(s, tenant, task, next, path, sizeof(path));
    struct pd_iovec part = {buf, len};
    err = pd_write_atomic(path, &part, 1, msg);
    if (!err)
        err = write_active(dir, next, msg);
    if (err) {
        /* the new version must not become active by being the highest */
        unlink(path);
    } else if (s->keep > 0) {
        /* prune: keep the new active version and the `keep` newest before it */
        for (int i = 0; i < x.n - s->keep; i++) {
            pd_store_path(s, tenant, task, x.versions[i], path, sizeof(path));
            unlink(path);
        }
    }
    free(x.versions);
    unlock_task(fd);
    refresh(s, tenant, task);
    if (!err)
        *version = next;
    return err;
}

int pd_store_activate(pd_store *s, const char *tenant, const char *task, int version, char *msg)
{
    int err = names_ok(tenant, task, msg);
    if (err)
        return err;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN];
    task_dir(s, tenant, task, dir, sizeof(dir));
    struct stat st;
    if (stat(dir, &st) < 0)
        return pd_fail(msg, PD_NOTFOUND, "no task '%s'", task);
    int fd = lock_task(dir);
    if (fd < 0)
        return pd_fail(msg, PD_IO, "cannot lock the task: %s", strerror(errno));
    pd_store_path(s, tenant, task, version, path, sizeof(path));
    if (version < 1 || access(path, F_OK) < 0)
        err = pd_fail(msg, PD_NOTFOUND, "task '%s' has no version %d", task, version);
    else
        err = write_active(dir, version, msg);
    unlock_task(fd);
    refresh(s, tenant, task);
    return err;
}

int pd_store_remove(pd_store *s, const char *tenant, const char *task, char *msg)
{
    int err = names_ok(tenant, task, msg);
    if (err)
        return err;
    char dir[PATH_MAX_LEN], grave[PATH_MAX_LEN], path[PATH_MAX_LEN];
    task_dir(s, tenant, task, dir, sizeof(dir));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return pd_fail(msg, PD_NOTFOUND, "no task '%s'", task);
    close(fd);
    fd = lock_task(dir);
    /* the task disappears at once by a rename; then its files go */
    snprintf(grave, sizeof(grave), "%s/%s/.deleted.%s.%ld", s->root, tenant, task, (long)getpid());
    if (rename(dir, grave) < 0) {
        unlock_task(fd);
        return pd_fail(msg, PD_IO, "cannot remove task '%s': %s", task, strerror(errno));
    }
    DIR *d = opendir(grave);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", grave, de->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(grave);
    unlock_task(fd);
    refresh(s, tenant, task);
    return PD_OK;
}

int pd_store_lookup(pd_store *s, const char *tenant, const char *task, int *active, int *versions,
                    int max)
{
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, tenant, task);
    int n = PD_NOTFOUND;
    if (e) {
        n = e->n;
        if (active)
            *active = e->active;
        for (int i = 0; versions && i < n && i < max; i++)
            versions[i] = e->versions[i];
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

int pd_store_has(pd_store *s, const char *tenant, const char *task, int version)
{
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, tenant, task);
    int r = e ? bsearch(&version, e->versions, (size_t)e->n, sizeof(int), cmp_int) != NULL
              : PD_NOTFOUND;
    pthread_mutex_unlock(&s->mu);
    return r;
}

int pd_store_tasks(pd_store *s, const char *tenant, char (*names)[PD_NAME_MAX + 1], int max)
{
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n && n < max; i++)
        if (!strcmp(s->e[i].tenant, tenant))
            memcpy(names[n++], s->e[i].task, sizeof(names[0]));
    pthread_mutex_unlock(&s->mu);
    return n;
}

int pd_store_read(pd_store *s, const char *tenant, const char *task, int version, uint8_t **buf,
                  size_t *len, char *msg)
{
    int err = names_ok(tenant, task, msg);
    if (err)
        return err;
    char path[PATH_MAX_LEN];
    pd_store_path(s, tenant, task, version, path, sizeof(path));
    err = pd_read_file(path, (size_t)1 << 30, buf, len, msg);
    if (err == PD_NOTFOUND)
        return pd_fail(msg, PD_NOTFOUND, "task '%s' has no version %d", task, version);
    return err;
}

const char *pd__store_root(const pd_store *s)
{
    return s->root;
}

uint64_t pd_store_generation(pd_store *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t g = s->generation;
    pthread_mutex_unlock(&s->mu);
    return g;
}

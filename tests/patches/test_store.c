/*
 * The store and the cache: bit-identical round trip, versions and activation, names that could
 * escape the root, crash consistency under kill -9 at random moments, readers running forward
 * passes while a writer swaps versions (no failure, no torn read), the LRU budget and pins, and a
 * file dropped into the directory by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../patches/cache.h"
#include "../testenv.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

static pd_model *model;
static char root[64];

static int setup(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    return pd_model_load(test_env("PD_MODEL"), &model, msg);
}

static int teardown(void **state)
{
    (void)state;
    pd_model_free(model);
    return 0;
}

static void fresh_root(void)
{
    char cmd[128];
    if (root[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
        assert_int_equal(system(cmd), 0);
    }
    strcpy(root, "/tmp/pd_store_XXXXXX");
    assert_non_null(mkdtemp(root));
}

/* A 2-class patch whose head makes the output a known function of v: zero weights, bias (v, 0). */
static uint8_t *patch_bytes(int v, size_t *len)
{
    static const char *labels[] = {"a", "b"};
    float *w = pd_alloc_floats(PD_FEATURES * 2), b[2] = {(float)v * 0.01f, 0};
    struct pd_patch_spec s;
    memset(&s, 0, sizeof(s));
    s.kind = PD_PATCH_CLASSIFY;
    s.size = 64;
    s.nclass = 2;
    s.labels = labels;
    s.head_w = w;
    s.head_b = b;
    pd_patch *p;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_patch_build(model, &s, &p, msg), PD_OK);
    uint8_t *buf;
    assert_int_equal(pd_patch_serialize(p, &buf, len, msg), PD_OK);
    pd_patch_unref(p);
    free(w);
    return buf;
}

static double expected_p0(int v)
{
    return 1.0 / (1.0 + exp(-(double)v * 0.01));
}

static int count_tmp(const char *dir)
{
    char path[256];
    int n = 0;
    DIR *t = opendir(dir);
    struct dirent *e;
    while (t && (e = readdir(t))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        DIR *k = opendir(path);
        struct dirent *f;
        while (k && (f = readdir(k)))
            n += strstr(f->d_name, ".tmp.") != NULL;
        if (k)
            closedir(k);
    }
    if (t)
        closedir(t);
    return n;
}

static void test_names(void **state)
{
    (void)state;
    assert_true(pd_store_valid_name("flowers"));
    assert_true(pd_store_valid_name("a"));
    assert_true(pd_store_valid_name("0-a_b"));
    const char *bad[] = {
        "",     "..",  ".",   "../x",
        "/etc", "a/b", "A",   "-a",
        "_a",   "a b", "a.b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(pd_store_valid_name(bad[i]));
    assert_true(
        pd_store_valid_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    fresh_root();
    pd_store *s;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_store_open(root, 0, &s, msg), PD_OK);
    int v;
    assert_int_equal(pd_store_put(s, "default", "../evil", (const uint8_t *)"x", 1, &v, msg),
                     PD_INVAL);
    assert_int_equal(pd_store_put(s, "../..", "t", (const uint8_t *)"x", 1, &v, msg), PD_INVAL);
    assert_int_equal(pd_store_activate(s, "default", "/abs", 1, msg), PD_INVAL);
    assert_int_equal(pd_store_remove(s, "default", "..", msg), PD_INVAL);
    pd_store_close(s);
}

static void test_versions(void **state)
{
    (void)state;
    fresh_root();
    pd_store *s;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_store_open(root, 2, &s, msg), PD_OK);
    size_t len;
    uint8_t *b1 = patch_bytes(1, &len);
    int v, active, vs[16];
    for (int i = 1; i <= 5; i++) {
        assert_int_equal(pd_store_put(s, "default", "t1", b1, len, &v, msg), PD_OK);
        assert_int_equal(v, i);
    }
    /* keep 2 besides the active one: versions 3, 4, 5 remain */
    assert_int_equal(pd_store_lookup(s, "default", "t1", &active, vs, 16), 3);
    assert_int_equal(active, 5);
    assert_int_equal(vs[0], 3);
    /* round trip is bit-identical */
    uint8_t *back;
    size_t blen;
    assert_int_equal(pd_store_read(s, "default", "t1", 4, &back, &blen, msg), PD_OK);
    assert_int_equal(blen, len);
    assert_memory_equal(back, b1, len);
    free(back);
    /* roll back, and an absent version */
    assert_int_equal(pd_store_activate(s, "default", "t1", 3, msg), PD_OK);
    pd_store_lookup(s, "default", "t1", &active, NULL, 0);
    assert_int_equal(active, 3);
    assert_int_equal(pd_store_activate(s, "default", "t1", 9, msg), PD_NOTFOUND);
    assert_int_equal(pd_store_activate(s, "default", "nope", 1, msg), PD_NOTFOUND);
    /* the index survives a reopen */
    pd_store_close(s);
    assert_int_equal(pd_store_open(root, 2, &s, msg), PD_OK);
    pd_store_lookup(s, "default", "t1", &active, NULL, 0);
    assert_int_equal(active, 3);
    /* tenants are separate */
    assert_int_equal(pd_store_put(s, "other", "t1", b1, len, &v, msg), PD_OK);
    assert_int_equal(v, 1);
    char names[8][PD_NAME_MAX + 1];
    assert_int_equal(pd_store_tasks(s, "default", names, 8), 1);
    assert_int_equal(pd_store_remove(s, "default", "t1", msg), PD_OK);
    assert_int_equal(pd_store_lookup(s, "default", "t1", &active, NULL, 0), PD_NOTFOUND);
    assert_int_equal(pd_store_lookup(s, "other", "t1", &active, NULL, 0), 1);
    assert_int_equal(pd_store_remove(s, "default", "t1", msg), PD_NOTFOUND);
    pd_store_close(s);
    free(b1);
}

static void test_crash_consistency(void **state)
{
    (void)state;
    fresh_root();
    char msg[PD_MSG_MAX];
    size_t len;
    uint8_t *b = patch_bytes(3, &len);
    srand(12345);
    for (int round = 0; round < 60; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            pd_store *s;
            if (pd_store_open(root, 3, &s, NULL))
                _exit(1);
            for (int i = 0;; i++) {
                int v;
                char task[8];
                snprintf(task, sizeof(task), "t%d", i % 3);
                pd_store_put(s, "default", task, b, len, &v, NULL);
                if (i % 5 == 4)
                    pd_store_activate(s, "default", task, v > 1 ? v - 1 : 1, NULL);
            }
        }
        usleep((useconds_t)(rand() % 20000));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        /* every task has a valid active version; no temporary file survives a rescan */
        pd_store *s;
        assert_int_equal(pd_store_open(root, 3, &s, msg), PD_OK);
        for (int t = 0; t < 3; t++) {
            char task[8];
            snprintf(task, sizeof(task), "t%d", t);
            int active;
            if (pd_store_lookup(s, "default", task, &active, NULL, 0) < 0)
                continue; /* killed before its first version landed */
            char path[256];
            pd_store_path(s, "default", task, active, path, sizeof(path));
            pd_patch *p;
            int err = pd_patch_load(model, path, &p, msg);
            if (err)
                print_error("round %d task %s v%d: %s\n", round, task, active, msg);
            assert_int_equal(err, PD_OK);
            pd_patch_unref(p);
        }
        assert_int_equal(count_tmp(root), 0);
        pd_store_close(s);
    }
    free(b);
}

struct stress {
    pd_cache *cache;
    pd_store *store;
    atomic_int stop;
    atomic_int failures, reads, torn;
};

static void *reader(void *arg)
{
    struct stress *st = arg;
    char msg[PD_MSG_MAX];
    pd_net *net;
    if (pd_net_new(model, 1, 64, &net, msg))
        return NULL;
    float *in = pd_alloc_floats(64 * 64 * 3), probs[2];
    float *pp[1] = {probs};
    while (!atomic_load(&st->stop)) {
        pd_patch *p;
        int v;
        if (pd_cache_get(st->cache, "default", "hot", 0, &p, &v, msg)) {
            atomic_fetch_add(&st->failures, 1);
            continue;
        }
        const struct pd_task *t[1] = {pd_patch_task(p)};
        if (pd_net_classify(net, 1, 64, in, t, pp, NULL) || fabs(probs[0] - expected_p0(v)) > 1e-5)
            atomic_fetch_add(&st->torn, 1);
        atomic_fetch_add(&st->reads, 1);
        pd_patch_unref(p);
    }
    free(in);
    pd_net_free(net);
    return NULL;
}

static void test_hot_swap_stress(void **state)
{
    (void)state;
    fresh_root();
    char msg[PD_MSG_MAX];
    struct stress st = {0};
    assert_int_equal(pd_store_open(root, 4, &st.store, msg), PD_OK);
    /* a budget of about two patches: swaps also evict */
    assert_int_equal(pd_cache_new(model, st.store, 2 * 9000, &st.cache, msg), PD_OK);
    size_t len;
    uint8_t *b = patch_bytes(1, &len);
    int v;
    assert_int_equal(pd_store_put(st.store, "default", "hot", b, len, &v, msg), PD_OK);
    free(b);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, reader, &st);
    for (int i = 2; i <= 40; i++) {
        b = patch_bytes(i, &len);
        assert_int_equal(pd_store_put(st.store, "default", "hot", b, len, &v, msg), PD_OK);
        assert_int_equal(v, i);
        free(b);
        if (i % 7 == 0)
            assert_int_equal(pd_store_activate(st.store, "default", "hot", i - 1, msg), PD_OK);
        /* let the readers run a few passes on this version before the next swap */
        int seen = atomic_load(&st.reads);
        for (int w = 0; w < 10000 && atomic_load(&st.reads) < seen + 4; w++)
            usleep(1000);
    }
    atomic_store(&st.stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    struct pd_cache_stats cs;
    pd_cache_stats(st.cache, &cs);
    printf("stress: %d reads, %d failures, %d torn; cache loads %llu, evictions %llu\n",
           atomic_load(&st.reads), atomic_load(&st.failures), atomic_load(&st.torn),
           (unsigned long long)cs.loads, (unsigned long long)cs.evictions);
    assert_true(atomic_load(&st.reads) >= 4 * 39);
    assert_int_equal(atomic_load(&st.failures), 0);
    assert_int_equal(atomic_load(&st.torn), 0);
    pd_cache_free(st.cache);
    pd_store_close(st.store);
}

static void test_lru_and_pins(void **state)
{
    (void)state;
    fresh_root();
    char msg[PD_MSG_MAX];
    pd_store *s;
    pd_cache *c;
    assert_int_equal(pd_store_open(root, 0, &s, msg), PD_OK);
    size_t len;
    uint8_t *b = patch_bytes(1, &len);
    for (int i = 0; i < 6; i++) {
        char task[8];
        int v;
        snprintf(task, sizeof(task), "k%d", i);
        assert_int_equal(pd_store_put(s, "default", task, b, len, &v, msg), PD_OK);
    }
    pd_patch *p;
    int v;
    assert_int_equal(pd_cache_new(model, s, 0, &c, msg), PD_OK);
    assert_int_equal(pd_cache_get(c, "default", "k0", 0, &p, &v, msg), PD_OK);
    size_t one = pd_patch_bytes(p);
    pd_patch_unref(p);
    pd_cache_free(c);
    /* room for three patches; k0 pinned */
    assert_int_equal(pd_cache_new(model, s, 3 * one + one / 2, &c, msg), PD_OK);
    pd_cache_pin(c, "default", "k0", 1);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 6; i++) {
            char task[8];
            snprintf(task, sizeof(task), "k%d", i);
            assert_int_equal(pd_cache_get(c, "default", task, 0, &p, &v, msg), PD_OK);
            pd_patch_unref(p);
            struct pd_cache_stats cs;
            pd_cache_stats(c, &cs);
            assert_true(cs.bytes <= 3 * one + one / 2);
            assert_true(pd_cache_resident(c, "default", "k0"));
        }
    assert_true(pd_cache_resident(c, "default", "k5"));
    assert_false(pd_cache_resident(c, "default", "k1")); /* least recently used went first */
    /* a reference outlives eviction */
    assert_int_equal(pd_cache_get(c, "default", "k1", 0, &p, &v, msg), PD_OK);
    for (int i = 2; i < 6; i++) {
        char task[8];
        pd_patch *q;
        snprintf(task, sizeof(task), "k%d", i);
        pd_cache_get(c, "default", task, 0, &q, &v, msg);
        pd_patch_unref(q);
    }
    assert_false(pd_cache_resident(c, "default", "k1"));
    assert_int_equal(pd_patch_task(p)->nclass, 2); /* still valid */
    pd_patch_unref(p);
    assert_int_equal(pd_cache_get(c, "default", "absent", 0, &p, &v, msg), PD_NOTFOUND);
    assert_int_equal(pd_cache_get(c, "default", "k1", 99, &p, &v, msg), PD_NOTFOUND);
    pd_cache_free(c);
    pd_store_close(s);
    free(b);
}

static void test_hand_dropped(void **state)
{
    (void)state;
    fresh_root();
    char msg[PD_MSG_MAX], path[256];
    pd_store *s;
    pd_cache *c;
    assert_int_equal(pd_store_open(root, 0, &s, msg), PD_OK);
    assert_int_equal(pd_cache_new(model, s, 0, &c, msg), PD_OK);
    pd_patch *p;
    int v;
    assert_int_equal(pd_cache_get(c, "default", "dropped", 0, &p, &v, msg), PD_NOTFOUND);
    /* a deployment tool writes a file; the next rescan serves it */
    snprintf(path, sizeof(path), "%s/default/dropped", root);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", path);
    assert_int_equal(system(cmd), 0);
    size_t len;
    uint8_t *b = patch_bytes(7, &len);
    snprintf(path, sizeof(path), "%s/default/dropped/v1.safetensors", root);
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, len, f);
    fclose(f);
    assert_int_equal(pd_store_rescan(s), 1);
    assert_int_equal(pd_cache_get(c, "default", "dropped", 0, &p, &v, msg), PD_OK);
    assert_int_equal(v, 1);
    pd_patch_unref(p);
    /* a corrupt file: that task answers an error naming the problem */
    snprintf(path, sizeof(path), "%s/default/dropped/v2.safetensors", root);
    f = fopen(path, "wb");
    fwrite(b, 1, len / 2, f);
    fclose(f);
    pd_store_rescan(s);
    int err = pd_cache_get(c, "default", "dropped", 0, &p, &v, msg);
    assert_int_equal(err, PD_FORMAT);
    assert_non_null(strstr(msg, "version 2"));
    pd_cache_free(c);
    pd_store_close(s);
    free(b);
}

/* The libuv watcher picks a hand-dropped file up without an explicit rescan. */
static void test_watch(void **state)
{
    (void)state;
    fresh_root();
    char msg[PD_MSG_MAX], path[256], cmd[300];
    pd_store *s;
    assert_int_equal(pd_store_open(root, 0, &s, msg), PD_OK);
    uv_loop_t loop;
    uv_loop_init(&loop);
    pd_store_watch *w;
    for (int round = 0; round < 2; round++) {
        /* round 0: inotify (a long interval); round 1: the periodic rescan alone would do */
        assert_int_equal(pd_store_watch_start(s, &loop, round ? 100 : 600000, &w), 0);
        snprintf(path, sizeof(path), "%s/tenant%d/task", root, round);
        snprintf(cmd, sizeof(cmd), "mkdir -p %s", path);
        assert_int_equal(system(cmd), 0);
        size_t len;
        uint8_t *b = patch_bytes(1, &len);
        snprintf(path, sizeof(path), "%s/tenant%d/task/v1.safetensors", root, round);
        FILE *f = fopen(path, "wb");
        fwrite(b, 1, len, f);
        fclose(f);
        free(b);
        char tenant[16];
        snprintf(tenant, sizeof(tenant), "tenant%d", round);
        int active = 0;
        for (int i = 0; i < 500 && pd_store_lookup(s, tenant, "task", &active, NULL, 0) < 0; i++)
            uv_run(&loop, UV_RUN_NOWAIT), usleep(10000);
        assert_int_equal(active, 1);
        pd_store_watch_stop(w);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
    pd_store_close(s);
}

static int cleanup(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    teardown(NULL);
    return system(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_crash_consistency),
        cmocka_unit_test(test_hot_swap_stress),
        cmocka_unit_test(test_lru_and_pins),
        cmocka_unit_test(test_hand_dropped),
        cmocka_unit_test(test_watch),
    };
    return cmocka_run_group_tests(tests, setup, cleanup);
}

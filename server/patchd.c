/*
 * patchd - the multi-tenant inference server. main() builds the one server object, starts the
 * HTTP daemon and the workers, then runs a libuv loop for signals and the store watcher until
 * SIGTERM has drained the requests in flight.
 */
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: patchd [--config FILE] [--listen ADDR:PORT] [--store DIR] [--model FILE] [--insecure]\n"
    "\n"
    "  --config FILE       JSON configuration (see conf/patchd.json); flags override it\n"
    "  --listen ADDR:PORT  IPv4 address and port (default 127.0.0.1:8080; port 0 picks one)\n"
    "  --store DIR         patch store directory (default ./store)\n"
    "  --model FILE        backbone (default models/ssd_mobilenet_v1.safetensors)\n"
    "  --insecure          allow a non-loopback address with no tenants (no authentication)\n"
    "  --version, --help\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop accepting, finish the requests in flight and exit 0;\n"
    "SIGHUP reloads tenants and keys from --config.\n";

struct loop_ctx {
    struct pd_server *s;
    uv_signal_t term, intr, hup;
    uv_timer_t drain;
    pd_store_watch *watch;
    double drain_deadline;
};

static void close_all(struct loop_ctx *x)
{
    pd_store_watch_stop(x->watch);
    x->watch = NULL;
    uv_close((uv_handle_t *)&x->term, NULL);
    uv_close((uv_handle_t *)&x->intr, NULL);
    uv_close((uv_handle_t *)&x->hup, NULL);
    uv_close((uv_handle_t *)&x->drain, NULL);
}

static void on_drain_tick(uv_timer_t *t)
{
    struct loop_ctx *x = t->data;
    int left = atomic_load(&x->s->inflight);
    if (left > 0 && pd_now() < x->drain_deadline)
        return;
    if (left > 0)
        fprintf(stderr, "patchd: drain timeout with %d requests in flight\n", left);
    uv_timer_stop(t);
    close_all(x);
}

static void on_term(uv_signal_t *h, int sig)
{
    struct loop_ctx *x = h->data;
    if (atomic_exchange(&x->s->draining, 1))
        return;
    fprintf(stderr, "patchd: signal %d: no new connections, draining %d requests\n", sig,
            atomic_load(&x->s->inflight));
    http_quiesce(x->s);
    x->drain_deadline = pd_now() + x->s->cfg.drain_s;
    uv_timer_start(&x->drain, on_drain_tick, 0, 20);
}

static void on_hup(uv_signal_t *h, int sig)
{
    (void)sig;
    struct loop_ctx *x = h->data;
    struct pd_server *s = x->s;
    if (!s->config_path) {
        fprintf(stderr, "patchd: SIGHUP: no --config to reload\n");
        return;
    }
    struct pd_config fresh;
    pd_config_defaults(&fresh);
    char msg[PD_MSG_MAX];
    if (pd_config_load(&fresh, s->config_path, msg)) {
        fprintf(stderr, "patchd: SIGHUP: keeping the old tenants: %s\n", msg);
    } else if (fresh.ntenants == 0 && s->cfg.ntenants > 0) {
        fprintf(stderr, "patchd: SIGHUP: refusing to drop every tenant (it would disable "
                        "authentication); restart to change modes\n");
    } else {
        auth_reload(s, &fresh);
        fprintf(stderr, "patchd: SIGHUP: reloaded %d tenants\n", s->cfg.ntenants);
    }
    pd_config_fini(&fresh);
}

int main(int argc, char **argv)
{
    struct pd_server srv;
    memset(&srv, 0, sizeof(srv));
    struct pd_server *s = &srv;
    pd_config_defaults(&s->cfg);
    const char *listen = NULL, *store = NULL, *model = NULL;
    int insecure = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--version")) {
            printf("patchd %s\n", PD_VERSION);
            return 0;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--insecure")) {
            insecure = 1;
        } else if (i + 1 < argc && !strcmp(a, "--config")) {
            s->config_path = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--listen")) {
            listen = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--store")) {
            store = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--model")) {
            model = argv[++i];
        } else {
            fprintf(stderr, "patchd: unexpected argument '%s'\n%s", a, usage);
            return 2;
        }
    }
    char msg[PD_MSG_MAX];
    if (s->config_path && pd_config_load(&s->cfg, s->config_path, msg)) {
        fprintf(stderr, "patchd: %s\n", msg);
        pd_config_fini(&s->cfg);
        return 2;
    }
    if (listen)
        snprintf(s->cfg.listen, sizeof(s->cfg.listen), "%s", listen);
    if (store)
        snprintf(s->cfg.store, sizeof(s->cfg.store), "%s", store);
    if (model)
        snprintf(s->cfg.model, sizeof(s->cfg.model), "%s", model);
    if (insecure)
        s->cfg.insecure = 1;
    int workers = s->cfg.workers;
    if (workers <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        workers = n > 0 ? (int)n : 1;
    }

    signal(SIGPIPE, SIG_IGN);
    /* signal handlers first, so that a SIGTERM right after start-up still drains cleanly */
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct loop_ctx x;
    memset(&x, 0, sizeof(x));
    x.s = s;
    uv_signal_init(&loop, &x.term);
    uv_signal_init(&loop, &x.intr);
    uv_signal_init(&loop, &x.hup);
    uv_timer_init(&loop, &x.drain);
    x.term.data = x.intr.data = x.hup.data = x.drain.data = &x;
    uv_signal_start(&x.term, on_term, SIGTERM);
    uv_signal_start(&x.intr, on_term, SIGINT);
    uv_signal_start(&x.hup, on_hup, SIGHUP);
    int rc = 1;
    double t0 = pd_now();
    if (pd_model_load(s->cfg.model, &s->model, msg)) {
        fprintf(stderr, "patchd: cannot load the backbone: %s\n", msg);
        goto out;
    }
    if (pd_store_open(s->cfg.store, s->cfg.versions_kept, &s->store, msg) ||
        pd_cache_new(s->model, s->store, s->cfg.cache_bytes, &s->cache, msg) ||
        pd_engine_new(s->model, s->cache, workers, s->cfg.batch, s->cfg.limits.max_pixels,
                      s->cfg.limits.queue, &s->engine, msg)) {
        fprintf(stderr, "patchd: %s\n", msg);
        goto out;
    }
    s->metrics = pd_metrics_new();
    if (!s->metrics || auth_init(s) ||
        pd_jobs_new(s->model, s->store, s->cache, s->cfg.limits.archive_bytes * 4, &s->jobs)) {
        fprintf(stderr, "patchd: out of memory\n");
        goto out;
    }
    if (http_start(s, msg)) {
        fprintf(stderr, "patchd: %s\n", msg);
        rc = 2;
        goto out_auth;
    }
    s->ready = 1;
    fprintf(stderr,
            "patchd: listening on %s (port %u); store %s; %d workers; %s; ready in %.0f ms\n",
            s->cfg.listen, http_port(s), s->cfg.store, workers,
            s->cfg.ntenants ? "authentication on" : "development mode (no authentication)",
            (pd_now() - t0) * 1e3);

    if (pd_store_watch_start(s->store, &loop, s->cfg.rescan_ms, &x.watch))
        fprintf(stderr, "patchd: cannot watch the store; relying on restarts\n");
    uv_run(&loop, UV_RUN_DEFAULT);
    http_stop(s);
    fprintf(stderr, "patchd: stopped\n");
    rc = 0;
out_auth:
    auth_fini(s);
out:
    if (x.watch || !uv_is_closing((uv_handle_t *)&x.term)) {
        /* start-up failed before the loop ran: close the handles */
        close_all(&x);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&loop);
    if (s->httpd)
        http_stop(s);
    pd_jobs_free(s->jobs); /* cancels running jobs between steps */
    pd_engine_free(s->engine);
    pd_cache_free(s->cache);
    pd_store_close(s->store);
    pd_metrics_free(s->metrics);
    pd_model_free(s->model);
    pd_config_fini(&s->cfg);
    return rc;
}

/* pd_store_watch: libuv timers and fs events that keep the store's index fresh. */
#include "store.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MAX_WATCHED 1024
#define DEBOUNCE_MS 50

struct pd_store_watch {
    pd_store *s;
    uv_loop_t *loop;
    const char *root;
    uv_timer_t periodic, soon;
    uv_fs_event_t *ev[MAX_WATCHED]; /* root and each tenant directory */
    int nev;
    int closing;
};

/* Declared in store.c: the root path. */
const char *pd__store_root(const pd_store *s);

static void on_close_free(uv_handle_t *h)
{
    free(h);
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status);

static void watch_dir(pd_store_watch *w, const char *path)
{
    if (w->nev == MAX_WATCHED)
        return;
    uv_fs_event_t *h = malloc(sizeof(*h));
    if (!h)
        return;
    uv_fs_event_init(w->loop, h);
    h->data = w;
    if (uv_fs_event_start(h, on_event, path, 0)) {
        uv_close((uv_handle_t *)h, on_close_free);
        return;
    }
    w->ev[w->nev++] = h;
}

/* (Re)arms inotify on the root and every tenant directory: new tenants appear over time. */
static void rearm(pd_store_watch *w)
{
    for (int i = 0; i < w->nev; i++) {
        uv_fs_event_stop(w->ev[i]);
        uv_close((uv_handle_t *)w->ev[i], on_close_free);
    }
    w->nev = 0;
    watch_dir(w, w->root);
    DIR *d = opendir(w->root);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!pd_store_valid_name(e->d_name))
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", w->root, e->d_name);
        watch_dir(w, path);
    }
    if (d)
        closedir(d);
}

static void rescan(pd_store_watch *w)
{
    pd_store_rescan(w->s);
    rearm(w);
}

static void on_periodic(uv_timer_t *t)
{
    rescan(t->data);
}

static void on_soon(uv_timer_t *t)
{
    rescan(t->data);
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)name;
    (void)events;
    (void)status;
    pd_store_watch *w = h->data;
    /* a put touches several files: one rescan shortly after the burst */
    uv_timer_start(&w->soon, on_soon, DEBOUNCE_MS, 0);
}

int pd_store_watch_start(pd_store *s, struct uv_loop_s *loop, unsigned interval_ms,
                         pd_store_watch **out)
{
    *out = NULL;
    pd_store_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return UV_ENOMEM;
    w->s = s;
    w->loop = loop;
    w->root = pd__store_root(s);
    uv_timer_init(loop, &w->periodic);
    uv_timer_init(loop, &w->soon);
    w->periodic.data = w->soon.data = w;
    int err = uv_timer_start(&w->periodic, on_periodic, interval_ms, interval_ms ? interval_ms : 1);
    if (err) {
        pd_store_watch_stop(w);
        return err;
    }
    rearm(w);
    *out = w;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    pd_store_watch *w = h->data;
    if (++w->closing == 2)
        free(w);
}

void pd_store_watch_stop(pd_store_watch *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->nev; i++) {
        uv_fs_event_stop(w->ev[i]);
        uv_close((uv_handle_t *)w->ev[i], on_close_free);
    }
    w->nev = 0;
    uv_timer_stop(&w->periodic);
    uv_timer_stop(&w->soon);
    uv_close((uv_handle_t *)&w->periodic, on_timer_closed);
    uv_close((uv_handle_t *)&w->soon, on_timer_closed);
}

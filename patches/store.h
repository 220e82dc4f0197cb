/*
 * store.h - the on-disk patch store: per tenant, per task, versioned, durable and atomic.
 *
 * Layout under the root directory:
 *
 *   ROOT/TENANT/TASK/v1.safetensors, v2.safetensors, ...   the versions, never modified
 *   ROOT/TENANT/TASK/ACTIVE                                the active version number ("3\n")
 *   ROOT/TENANT/TASK/.lock                                 flock()ed by writers
 *
 * Tenant and task names match [a-z0-9][a-z0-9_-]{0,63} (pd_store_valid_name), so no name can
 * point outside the root. Putting a patch writes v(N+1) through a temporary file, fsync, rename
 * and a directory fsync, then rewrites ACTIVE the same way; a process killed at any instant
 * leaves the task at its old or its new version. When ACTIVE is missing, unreadable or names a
 * version that is not there, the highest version is active. Writers of one task are serialised
 * by flock() on .lock, also across processes sharing the directory (replicas on one volume).
 * Temporary files left by a killed writer are removed by the next scan that can take the lock.
 *
 * Files placed by other means (a deployment tool, another replica) become visible at the next
 * pd_store_rescan(); the server calls it on filesystem events and on a timer. Lookups use an
 * in-memory index and never touch the disk.
 *
 * The store does not look inside patch files; the cache validates them when it loads them.
 * Threads: every function is thread-safe.
 */
#ifndef PD_STORE_H
#define PD_STORE_H

#include "../core/pd.h"

#define PD_NAME_MAX     64
#define PD_MAX_VERSIONS 100000

typedef struct pd_store pd_store;

/* 1 when s is a valid tenant or task name. */
int pd_store_valid_name(const char *s);

/*
 * Opens (creating it if needed) the store at root. keep is the number of versions kept per task
 * besides the active one (0 keeps all). Scans the directory once.
 */
int pd_store_open(const char *root, int keep, pd_store **out, char *msg);
void pd_store_close(pd_store *s);

/* Re-reads the directory into the index; returns the number of tasks found. */
int pd_store_rescan(pd_store *s);

/* Stores buf as the next version of tenant/task and activates it; *version receives it. */
int pd_store_put(pd_store *s, const char *tenant, const char *task, const uint8_t *buf, size_t len,
                 int *version, char *msg);

/* Makes an existing version active (PD_NOTFOUND when it does not exist). */
int pd_store_activate(pd_store *s, const char *tenant, const char *task, int version, char *msg);

/* Deletes a task and all its versions. */
int pd_store_remove(pd_store *s, const char *tenant, const char *task, char *msg);

/*
 * The task's active version and its versions, ascending (up to max in versions, may be NULL);
 * returns the number of versions or PD_NOTFOUND.
 */
int pd_store_lookup(pd_store *s, const char *tenant, const char *task, int *active, int *versions,
                    int max);

/* 1 when the task has that version, 0 when it does not, PD_NOTFOUND when there is no such task. */
int pd_store_has(pd_store *s, const char *tenant, const char *task, int version);

/* Names of a tenant's tasks, sorted, up to max (each PD_NAME_MAX + 1 bytes); returns the count. */
int pd_store_tasks(pd_store *s, const char *tenant, char (*names)[PD_NAME_MAX + 1], int max);

/* The path of a version's file. */
void pd_store_path(const pd_store *s, const char *tenant, const char *task, int version, char *buf,
                   size_t len);

/* Reads a version's file (new buffer, caller frees). */
int pd_store_read(pd_store *s, const char *tenant, const char *task, int version, uint8_t **buf,
                  size_t *len, char *msg);

/*
 * Watches the store from a libuv loop: a rescan every interval_ms (the fallback that also works
 * on network filesystems, which deliver no events), and an earlier one shortly after inotify
 * reports a change in the root or a tenant directory. Runs on the loop's thread; stop with
 * pd_store_watch_stop on that thread before closing the loop. Returns a UV error or 0.
 */
struct uv_loop_s;
typedef struct pd_store_watch pd_store_watch;
int pd_store_watch_start(pd_store *s, struct uv_loop_s *loop, unsigned interval_ms,
                         pd_store_watch **out);
void pd_store_watch_stop(pd_store_watch *w);

/* Incremented by every change the index sees (put, activate, remove, rescan that differs). */
uint64_t pd_store_generation(pd_store *s);

#endif

/*
 * cache.h - the in-memory patch cache: load on first use, LRU under a byte budget, pins, hot swap.
 *
 * pd_cache_get resolves tenant/task to a version through the store's index (the active one, or
 * the one asked for), then returns that version's pd_patch with a reference the caller owns and
 * releases with pd_patch_unref. Entries are keyed by version, so activating a new version is
 * atomic for readers: a request that already holds version N finishes on N, the next lookup gets
 * N+1, nobody sees a half-loaded patch and nothing fails during the swap. When the cache holds
 * more than its budget it drops least-recently-used entries that are not pinned; a dropped
 * patch's memory is freed when its last user releases it. Loading (file read, validation) runs
 * outside the cache's lock, so a slow load never blocks hits on other tasks.
 *
 * Threads: every function is thread-safe.
 */
#ifndef PD_CACHE_H
#define PD_CACHE_H

#include "patch.h"
#include "store.h"

typedef struct pd_cache pd_cache;

struct pd_cache_stats {
    uint64_t hits, misses, evictions, loads, load_errors;
    size_t bytes; /* memory held by resident patches (pd_patch_bytes) */
    int entries;
};

/* model and store are borrowed and must outlive the cache. budget in bytes (0: unbounded). */
int pd_cache_new(const pd_model *model, pd_store *store, size_t budget, pd_cache **out, char *msg);
void pd_cache_free(pd_cache *c);

/*
 * A reference to tenant/task at version (0: the active one); *version_out receives the version.
 * PD_NOTFOUND when the task or version does not exist; a patch that fails validation gives its
 * error (PD_FORMAT, PD_MISMATCH, ...) and msg names the problem.
 */
int pd_cache_get(pd_cache *c, const char *tenant, const char *task, int version, pd_patch **out,
                 int *version_out, char *msg);

/* Pins (pinned = 1) or unpins a task: its versions are never evicted. */
void pd_cache_pin(pd_cache *c, const char *tenant, const char *task, int pinned);

/* Drops every cached version of a task (after it was deleted). */
void pd_cache_forget(pd_cache *c, const char *tenant, const char *task);

/* 1 when some version of the task is resident. */
int pd_cache_resident(pd_cache *c, const char *tenant, const char *task);

void pd_cache_stats(pd_cache *c, struct pd_cache_stats *out);

#endif

/*
 * config.h - patchd's configuration: defaults, merged with a JSON file, then with flags.
 *
 * The file is one JSON object; every key is optional and an unknown key (at any level) is an
 * error naming it. See conf/patchd.json and README's Configuration section for each key. A key's
 * hash may be given as "env:NAME" to read it from the environment (secrets stay out of files).
 *
 * Threads: a pd_config is built once and read-only afterwards; SIGHUP builds a new one and the
 * server swaps in its tenants.
 */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include "../core/pd.h"

#include <stddef.h>

#define PD_MAX_TENANTS 1024
#define PD_MAX_KEYS    16

enum pd_role {
    PD_ROLE_INFER, /* read-only: infer and GETs */
    PD_ROLE_ADMIN, /* also upload, train, activate, delete */
};

struct pd_key {
    char sha256[65]; /* lower-case hex of SHA-256(key) */
    enum pd_role role;
};

struct pd_tenant {
    char name[65];
    struct pd_key keys[PD_MAX_KEYS];
    int nkeys;
    int max_tasks; /* 0: unlimited */
    int max_jobs;  /* concurrent training jobs */
    double rps;    /* requests per second (token bucket, burst = max(rps, 1)); 0: unlimited */
};

struct pd_limits {
    size_t image_bytes;   /* POST /infer body */
    size_t patch_bytes;   /* PUT /tasks/NAME body */
    size_t archive_bytes; /* POST /train body */
    size_t max_pixels;    /* decoded image pixels */
    unsigned connections; /* concurrent connections */
    unsigned per_ip;      /* concurrent connections per client address */
    unsigned timeout_s;   /* idle connection timeout */
    unsigned queue;       /* inference requests waiting at most; beyond: 503 */
};

struct pd_config {
    char listen[128];
    char store[1024];
    char model[1024];
    size_t cache_bytes;
    int versions_kept;
    int workers; /* 0: one per core */
    int batch;   /* largest cross-task batch */
    unsigned rescan_ms;
    unsigned drain_s; /* SIGTERM: how long in-flight requests may take */
    int insecure;
    struct pd_limits limits;
    struct pd_tenant *tenants; /* owned */
    int ntenants;              /* 0: development mode, one tenant "default", no auth */
};

/* Fills c with the defaults. */
void pd_config_defaults(struct pd_config *c);

/* Merges the JSON file at path into c. PD_FORMAT with a message naming the key on error. */
int pd_config_load(struct pd_config *c, const char *path, char *msg);

/* Same from a string (for tests and the fuzzer). */
int pd_config_parse(struct pd_config *c, const char *json, size_t len, char *msg);

void pd_config_fini(struct pd_config *c);

#endif

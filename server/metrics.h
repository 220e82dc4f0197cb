/*
 * metrics.h - counters and histograms rendered in the Prometheus text format.
 *
 * Series are keyed by (tenant, task, status); latency histograms by (tenant, task). The table is
 * bounded (PD_METRICS_MAX_SERIES); beyond it traffic is counted under task "_other".
 *
 * Threads: thread-safe.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define PD_METRICS_MAX_SERIES 8192

typedef struct pd_metrics pd_metrics;

pd_metrics *pd_metrics_new(void);
void pd_metrics_free(pd_metrics *m);

/* One finished request: its endpoint family, tenant, task ("" when none), status and latency. */
void pd_metrics_request(pd_metrics *m, const char *endpoint, const char *tenant, const char *task,
                        unsigned status, double seconds);

/* Renders the request metrics (new string, caller frees; NULL on out of memory). */
char *pd_metrics_render(pd_metrics *m);

#endif

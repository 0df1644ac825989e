
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_metrics: counters, gauges and histograms in shared memory, served
 * in Prometheus text format by any location with "aai_metrics;".
 *
 * Each module of the suite registers its metrics at configuration time in a
 * registry of its own; ngx_aai_metrics_zone() then puts them in a shared
 * memory zone named "aai_metrics_<module>" whose content describes itself
 * (names, help, labels, values).  The "aai_metrics" handler, whichever
 * module's copy of it handles the directive, renders every such zone of the
 * running cycle, so the three .so files share one endpoint without sharing a
 * symbol.  Values survive "nginx -s reload" when the set of metrics of a
 * module did not change.
 */


#ifndef _NGX_AAI_METRICS_H_INCLUDED_
#define _NGX_AAI_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_AAI_METRIC_COUNTER    1
#define NGX_AAI_METRIC_GAUGE      2
#define NGX_AAI_METRIC_HISTOGRAM  3


typedef struct ngx_aai_metrics_s  ngx_aai_metrics_t;


/*
 * Configuration time.  "module" names the zone ("ratelimit", "cache",
 * "kafka").  labels is the inside of {...} or NULL, e.g. zone="api".
 * ngx_aai_metrics_add() and ngx_aai_metrics_add_histogram() return the index
 * to pass at run time, or NGX_ERROR.  Histogram bounds are ascending, in the
 * unit of the values observed (the family name says which, e.g. _seconds
 * observed in microseconds with scale 1000000).
 */
ngx_aai_metrics_t *ngx_aai_metrics_create(ngx_conf_t *cf, const char *module,
    void *tag);
ngx_pool_t *ngx_aai_metrics_pool(ngx_aai_metrics_t *m);
ngx_int_t ngx_aai_metrics_add(ngx_aai_metrics_t *m, ngx_uint_t type,
    const char *family, const char *help, ngx_str_t *labels);
ngx_int_t ngx_aai_metrics_add_histogram(ngx_aai_metrics_t *m,
    const char *family, const char *help, ngx_str_t *labels,
    const ngx_uint_t *bounds, ngx_uint_t nbounds, ngx_uint_t scale);

/*
 * The round trip of a client's Redis commands, observed in microseconds
 * (ngx_aai_redis_result_t's latency_us), in one bucket layout for every
 * module of the suite: 100us to 1s in steps of 1, 2.5, 5.
 */
ngx_int_t ngx_aai_metrics_add_redis_latency(ngx_aai_metrics_t *m,
    const char *family, const char *help);

/* after the last add: registers the shared memory zone */
ngx_int_t ngx_aai_metrics_zone(ngx_conf_t *cf, ngx_aai_metrics_t *m);


/* Run time, any worker; no-ops before the zone exists. */
void ngx_aai_metrics_inc(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_atomic_int_t delta);
void ngx_aai_metrics_set(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_atomic_uint_t value);
void ngx_aai_metrics_observe(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_uint_t value);


/* The "aai_metrics" directive: put it in every module's commands. */
char *ngx_aai_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

#define NGX_AAI_METRICS_COMMAND                                              \
    { ngx_string("aai_metrics"),                                             \
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,                                     \
      ngx_aai_metrics_directive,                                             \
      0,                                                                     \
      0,                                                                     \
      NULL }


#endif /* _NGX_AAI_METRICS_H_INCLUDED_ */


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module, limits for an AI product: per-request
 * counts (count= on a zone), costs (cost=) and usage charged after the
 * response (charge=) on "aai_ratelimit NAME".
 */


#ifndef _NGX_HTTP_AAI_RATELIMIT_AI_H_INCLUDED_
#define _NGX_HTTP_AAI_RATELIMIT_AI_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_metrics.h"
#include "ngx_aai_redis.h"


/* a charge waits at most this long for a batch to go with (ms) */
#define NGX_HTTP_AAI_RL_CHARGE_FLUSH     100

/* a charge is sent at most this many times */
#define NGX_HTTP_AAI_RL_CHARGE_TRIES     3

/* charges waiting per worker, at most */
#define NGX_HTTP_AAI_RL_CHARGE_MAX       65536

/* charge metrics: units charged, charges lost (releases: done, lost) */
#define NGX_HTTP_AAI_RL_C_UNITS          0
#define NGX_HTTP_AAI_RL_C_DROPPED        1
#define NGX_HTTP_AAI_RL_C_NUMBER         2

/* a lease's member is at most this long (it is sent in the layout) */
#define NGX_HTTP_AAI_RL_MEMBER_MAX       128


/* the parameters of "aai_ratelimit NAME ..." beyond the name */
typedef struct {
    ngx_http_complex_value_t          *cost;      /* NULL: 1, or 0 */
    ngx_http_complex_value_t          *charge;    /* NULL: none */
    ngx_int_t                         *metrics;   /* charge metrics */
    ngx_uint_t                         shadow;    /* dry_run: 1, nospend 2 */
} ngx_http_aai_ratelimit_opts_t;


/* a zone of a request, as the request's parameters make it */
typedef struct {
    ngx_uint_t                         limit;     /* the count that applies */
    ngx_uint_t                         cost;      /* units it spends */
    ngx_http_aai_ratelimit_opts_t     *opts;      /* NULL: none */
    ngx_uint_t                         shadow;    /* never rejects */
} ngx_http_aai_ratelimit_zreq_t;


/*
 * usage charged after a response, or a concurrency= lease released (zone
 * NULL, amount 1), until Redis has it
 */
typedef struct {
    ngx_queue_t                        queue;
    void                              *zone;      /* NULL: a release */
    ngx_int_t                         *metrics;
    ngx_uint_t                         limit;
    ngx_uint_t                         amount;
    ngx_uint_t                         tries;
    ngx_str_t                          key;       /* data follows */
    ngx_str_t                          member;    /* a release's lease */
} ngx_http_aai_ratelimit_charge_t;


char *ngx_http_aai_ratelimit_opts(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_array_t **opts, ngx_uint_t index, ngx_str_t *value, ngx_uint_t n,
    ngx_str_t *zone, ngx_aai_metrics_t *metrics, ngx_int_t **zone_metrics);
char *ngx_http_aai_ratelimit_count_param(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *value, ngx_http_complex_value_t **count);
void ngx_http_aai_ratelimit_zreq(ngx_http_request_t *r,
    ngx_http_complex_value_t *count, ngx_uint_t limit,
    ngx_http_aai_ratelimit_opts_t *opts, ngx_http_aai_ratelimit_zreq_t *zr);

ngx_int_t ngx_http_aai_ratelimit_charge_add(ngx_http_request_t *r,
    void *zone, ngx_str_t *key, ngx_http_aai_ratelimit_zreq_t *zr);
ngx_uint_t ngx_http_aai_ratelimit_charge_take(ngx_queue_t *to,
    ngx_uint_t max, ngx_int_t cslot);
ngx_uint_t ngx_http_aai_ratelimit_charge_slots(ngx_uint_t *slots,
    ngx_uint_t max);
void ngx_http_aai_ratelimit_charge_done(ngx_queue_t *q, ngx_int_t rc);
void ngx_http_aai_ratelimit_charge_init(ngx_aai_metrics_t *metrics,
    ngx_log_t *log);
void ngx_http_aai_ratelimit_charge_exit(void);

/* a concurrency= lease lives this long unless renewed (ms), by default */
#define NGX_HTTP_AAI_RL_LEASE            30000

void ngx_http_aai_ratelimit_lease_init(void);
void ngx_http_aai_ratelimit_lease_prefix(ngx_uint_t seq, ngx_str_t *out);
ngx_int_t ngx_http_aai_ratelimit_lease_member(ngx_pool_t *pool,
    ngx_str_t *prefix, ngx_uint_t index, ngx_str_t *out);
void ngx_http_aai_ratelimit_lease_release(ngx_queue_t *q, ngx_str_t *key,
    ngx_str_t *member, ngx_int_t *metrics);
void ngx_http_aai_ratelimit_lease_renew(ngx_aai_redis_t *rs, ngx_str_t *key,
    ngx_str_t *member, uint64_t lease);
void ngx_http_aai_ratelimit_lease_orphans(ngx_queue_t *q, ngx_uint_t drop);
ngx_uint_t ngx_http_aai_ratelimit_charge_costs(ngx_queue_t *q);

/* in the module: sends the waiting charges with a batch of their own */
void ngx_http_aai_ratelimit_flush(void);


#endif /* _NGX_HTTP_AAI_RATELIMIT_AI_H_INCLUDED_ */

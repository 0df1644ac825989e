
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module's private header: its structs and the
 * functions its files share.  The rooms:
 *
 *   ngx_http_aai_ratelimit_module.c   module, directives, request entry
 *                                     points (access phase handler, delay,
 *                                     header filter, variable), conf
 *   ngx_http_aai_ratelimit_zone.c     a zone's definition: parameters,
 *                                     script arguments, metrics, prefix
 *   ngx_http_aai_ratelimit_batch.c    requests batched into one EVALSHA
 *                                     per event loop iteration, the reply
 *                                     dispatched to them
 *   ngx_http_aai_ratelimit_script.c   the Lua script and its SHA-1; the
 *                                     script is lua/ratelimit.lua, embedded
 *                                     by ngx_http_aai_ratelimit_lua.h
 *                                     ("make lua" after editing it)
 *   ngx_http_aai_ratelimit_decide.c   the decision from the zones' results,
 *                                     its log line and metrics
 *   ngx_http_aai_ratelimit_headers.c  RateLimit, RateLimit-Policy and
 *                                     Retry-After
 *   ngx_http_aai_ratelimit_local.c    the shared memory: the blocklist, the
 *                                     fallback when Redis fails, the
 *                                     "local" fallback's GCRA
 *   ngx_http_aai_ratelimit_concurrency.c
 *                                     concurrency= zones: their leases
 *   ngx_http_aai_ratelimit_admin.c    aai_ratelimit_admin: a key shown or
 *                                     reset, in JSON
 *   ngx_http_aai_ratelimit_ai.c       count=, cost=, charge= (the charges
 *                                     waiting for a batch), leases in Redis
 *
 * A request's path (each step has an ngx_log_debug line): the handler
 * computes its keys, asks the blocklist, queues it in the worker's open
 * batch and waits; the batch is sent when the event loop iteration's posted
 * events run; its reply (or failure: the fallback) decides each request,
 * which resumes its phases, possibly delayed; the header filter adds the
 * headers of the most restrictive zone.
 */


#ifndef _NGX_HTTP_AAI_RATELIMIT_H_INCLUDED_
#define _NGX_HTTP_AAI_RATELIMIT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_redis.h"
#include "ngx_aai_redis_cluster.h"
#include "ngx_aai_metrics.h"
#include "ngx_aai_jwt.h"
#include "ngx_http_aai_ratelimit_ai.h"


#define NGX_HTTP_AAI_RL_SLIDING            0
#define NGX_HTTP_AAI_RL_GCRA               1
#define NGX_HTTP_AAI_RL_COUNTER            2
#define NGX_HTTP_AAI_RL_CONCURRENCY        3

#define NGX_HTTP_AAI_RL_FALLBACK_ALLOW     0
#define NGX_HTTP_AAI_RL_FALLBACK_DENY      1
#define NGX_HTTP_AAI_RL_FALLBACK_LOCAL     2

/* $aai_ratelimit_status */
#define NGX_HTTP_AAI_RL_PASSED             1
#define NGX_HTTP_AAI_RL_REJECTED           2
#define NGX_HTTP_AAI_RL_PASSED_DRY_RUN     3
#define NGX_HTTP_AAI_RL_REJECTED_DRY_RUN   4
#define NGX_HTTP_AAI_RL_DELAYED            5
#define NGX_HTTP_AAI_RL_ERROR              6

/* per zone metrics */
#define NGX_HTTP_AAI_RL_M_PASSED           0
#define NGX_HTTP_AAI_RL_M_REJECTED         1
#define NGX_HTTP_AAI_RL_M_DRY_RUN          2
#define NGX_HTTP_AAI_RL_M_DELAYED          3
#define NGX_HTTP_AAI_RL_M_ERROR            4
#define NGX_HTTP_AAI_RL_M_LOCAL            5
#define NGX_HTTP_AAI_RL_M_NEAR             6
#define NGX_HTTP_AAI_RL_M_NUMBER           7

/* Redis errors */
#define NGX_HTTP_AAI_RL_E_TIMEOUT          0
#define NGX_HTTP_AAI_RL_E_UNAVAILABLE      1
#define NGX_HTTP_AAI_RL_E_REPLY            2

/* request states */
#define NGX_HTTP_AAI_RL_NONE               0
#define NGX_HTTP_AAI_RL_WAITING            1
#define NGX_HTTP_AAI_RL_DONE               2

/* who decided */
#define NGX_HTTP_AAI_RL_REDIS              0
#define NGX_HTTP_AAI_RL_BLOCKLIST          1
#define NGX_HTTP_AAI_RL_LOCAL              2

#define NGX_HTTP_AAI_RL_MAX_LIMIT          1000000000
#define NGX_HTTP_AAI_RL_MAX_WINDOW         (366 * 86400)

/*
 * How far ahead of now a key's state may run (us): burst times the time
 * per request.  100 years keeps every time of the local fallback within
 * uint64_t and every time of the script exact in a Lua number (2^53 us).
 */
#define NGX_HTTP_AAI_RL_MAX_AHEAD          (100ULL * 365 * 86400 * 1000000)

#define NGX_HTTP_AAI_RL_ZONE_ARGS          5

/* a zone's definition in a batch: its arguments and the cost */
#define NGX_HTTP_AAI_RL_DEF_ARGS           6

/*
 * A batch (one EVALSHA) checks at most this many zones, of all its
 * requests together; so does a location.  Its layout describes each in
 * single bytes.
 */
#define NGX_HTTP_AAI_RL_BATCH              255
#define NGX_HTTP_AAI_RL_KEYS_HASH          512

/*
 * a key reset by aai_ratelimit_admin ignores, this long (ms), rejections
 * of requests asked before the reset
 */
#define NGX_HTTP_AAI_RL_RESET_KEEP         60000

/* sliding window keys drop every expired entry seen in every 8th batch */
#define NGX_HTTP_AAI_RL_TRIM               8


typedef struct {
    u_char                             color;
    u_char                             dummy;
    u_short                            len;
    ngx_queue_t                        queue;
    ngx_msec_t                         blocked;   /* over the limit until */
    ngx_msec_t                         expire;    /* no state left after */
    ngx_msec_t                         reset;     /* by aai_ratelimit_admin */
    uint64_t                           tat;       /* local fallback, us */
    u_char                             data[1];
} ngx_http_aai_ratelimit_node_t;


typedef struct {
    ngx_rbtree_t                       rbtree;
    ngx_rbtree_node_t                  sentinel;
    ngx_queue_t                        queue;
} ngx_http_aai_ratelimit_shctx_t;


typedef struct {
    ngx_str_t                          name;
    ngx_http_complex_value_t          *key;       /* NULL: not defined */
    ngx_str_t                          prefix;    /* key prefix, name, ":" */
    ngx_uint_t                         algorithm;
    ngx_uint_t                         limit;     /* requests per window */
    uint64_t                           window;    /* us */
    ngx_str_t                          rate;      /* as written */
    ngx_http_complex_value_t          *count;     /* NULL: the limit */
    ngx_int_t                         *charge_metrics;
    ngx_uint_t                         concurrency;
    /* concurrency=: releases done, lost */
    ngx_int_t                          released[NGX_HTTP_AAI_RL_C_NUMBER];
    ngx_msec_t                         lease;
    uint64_t                           period;    /* window / limit, us */
    ngx_uint_t                         burst;
    ngx_uint_t                         delay;     /* excess not delayed */
    ngx_uint_t                         local_burst;
    ngx_uint_t                         local_delay;
    ngx_msec_t                         window_ms; /* window, rounded up */
    ngx_uint_t                         fast;      /* sliding, no burst */
    ngx_str_t                          args[NGX_HTTP_AAI_RL_DEF_ARGS];
    ngx_uint_t                         stamp;     /* per worker: batch */
    ngx_uint_t                         def;       /* its index there */
    ngx_int_t                          metrics[NGX_HTTP_AAI_RL_M_NUMBER];
    ngx_str_t                          file;      /* where it was named */
    ngx_uint_t                         line;
} ngx_http_aai_ratelimit_zone_t;


typedef struct {
    ngx_aai_redis_conf_t               redis_conf;
    ngx_aai_redis_t                   *redis;
    ngx_array_t                        zones;     /* zone pointers */
    ngx_str_t                          prefix;
    size_t                             local_size;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_aai_ratelimit_shctx_t    *sh;
    ngx_slab_pool_t                   *shpool;
    ngx_str_t                          sha;
    ngx_str_t                          xsha;      /* cluster: per node */
    ngx_str_t                          fname;     /* FCALL: the function */
    ngx_str_t                          xfname;    /* cluster: per node */
    ngx_str_t                          library;   /* FUNCTION LOAD */
    ngx_aai_metrics_t                 *metrics;
    ngx_int_t                          latency;
    ngx_int_t                          errors[3];
} ngx_http_aai_ratelimit_main_conf_t;


typedef struct {
    ngx_array_t                       *zones;     /* zone pointers */
    ngx_array_t                       *opts;      /* per zone, or NULL */
    ngx_uint_t                         status_code;
    ngx_flag_t                         dry_run;
    ngx_uint_t                         limit_log_level;
    ngx_uint_t                         delay_log_level;
    ngx_flag_t                         headers;
    ngx_uint_t                         fallback;
    ngx_aai_jwt_loc_conf_t             jwt;
} ngx_http_aai_ratelimit_loc_conf_t;


typedef struct {
    ngx_uint_t                         rejected;
    ngx_msec_t                         delay;
    ngx_uint_t                         remaining;
    ngx_msec_t                         reset;
    ngx_msec_t                         retry_after;
} ngx_http_aai_ratelimit_result_t;


typedef struct ngx_http_aai_ratelimit_batch_s
    ngx_http_aai_ratelimit_batch_t;
typedef struct ngx_http_aai_ratelimit_cluster_s
    ngx_http_aai_ratelimit_cluster_t;


typedef struct {
    ngx_http_request_t                *request;
    ngx_http_aai_ratelimit_loc_conf_t *lcf;
    ngx_http_aai_ratelimit_batch_t    *batch;     /* waiting in it */
    ngx_uint_t                         slot;
    ngx_uint_t                         nzones;
    ngx_http_aai_ratelimit_zone_t    **zones;
    ngx_str_t                         *keys;      /* Redis keys */
    ngx_http_aai_ratelimit_zreq_t     *zreq;      /* limits, costs */
    ngx_http_aai_ratelimit_result_t   *results;
    ngx_int_t                          top;       /* zone of the headers */
    ngx_int_t                          rc;
    ngx_msec_t                         delay;
    ngx_msec_t                         asked;     /* sent to Redis then */
    ngx_uint_t                         status;
    unsigned                           state:2;
    unsigned                           resume:1;
    unsigned                           rejected:1;
    unsigned                           headers:1;
    unsigned                           headers_sent:1;
    unsigned                           charge:1;
    unsigned                           costs:1;   /* count= or cost= used */
    unsigned                           conc:1;    /* concurrency= zones */
    unsigned                           leased:1;
    ngx_str_t                          lease;     /* its member */
    ngx_event_t                       *renew;
    ngx_aai_redis_t                   *redis;
    ngx_aai_jwt_ctx_t                  jwt;

    /* on a cluster, the zones of a request whose keys are in other slots */
    ngx_http_aai_ratelimit_cluster_t  *cluster;
} ngx_http_aai_ratelimit_ctx_t;


/*
 * On a cluster, a request whose zones' keys are in several slots is
 * checked in parts, one per slot, each a request of that slot's batch;
 * the parent is decided when every part is.
 */
struct ngx_http_aai_ratelimit_cluster_s {
    ngx_http_aai_ratelimit_ctx_t      *parent;    /* of a part */
    u_char                            *zones;     /* a part's: parent's */
    ngx_http_aai_ratelimit_ctx_t     **parts;     /* of a parent */
    ngx_uint_t                         nparts;
    ngx_uint_t                         pending;
    ngx_uint_t                         failed;    /* reason + 1, or 0 */
    const char                        *error;
    unsigned                           rejected:1;
    unsigned                           admitted:1;
};


/* a request of a batch, as the script sees it */
typedef struct {
    ngx_http_aai_ratelimit_ctx_t      *ctx;       /* NULL: request gone */
    u_char                             nzones;
    u_char                             fast;      /* the short reply */
    u_char                             sent;
} ngx_http_aai_ratelimit_slot_t;


/* the requests of one event loop iteration, checked by one EVALSHA */
struct ngx_http_aai_ratelimit_batch_s {
    ngx_http_aai_ratelimit_main_conf_t *mcf;
    ngx_event_t                        event;     /* posted: send it */
    ngx_queue_t                        queue;     /* in flight, or free */
    ngx_aai_redis_cmd_t               *cmd;
    ngx_uint_t                         nslots;
    ngx_uint_t                         nzones;    /* of all its requests */
    ngx_int_t                          cslot;     /* cluster slot, or -1 */
    ngx_int_t                          cnode;     /* or node, or -1 */
    ngx_queue_t                        charges;   /* charge= usage sent */
    unsigned                           eval:1;
    unsigned                           fcall:1;   /* sent as FCALL */
    unsigned                           loaded:1;  /* FUNCTION LOAD sent */
    ngx_int_t                          fslot;     /* the node's: a slot */
    unsigned                           costs:1;   /* definitions with cost */
    unsigned                           conc:1;    /* leases to take */
    ngx_queue_t                        orphans;   /* leases of requests gone */
    ngx_http_aai_ratelimit_slot_t      slots[NGX_HTTP_AAI_RL_BATCH];
};


/* a distinct key of a batch */
typedef struct {
    ngx_str_t                         *key;
    uint32_t                           hash;
    uint32_t                           uses;
    ngx_uint_t                         index;
    ngx_uint_t                         stamp;     /* valid in this batch */
} ngx_http_aai_ratelimit_bkey_t;


extern ngx_module_t     ngx_http_aai_ratelimit_module;
extern ngx_conf_enum_t  ngx_http_aai_ratelimit_fallbacks[];

/* the script, as sent with EVAL */
extern ngx_str_t        ngx_http_aai_ratelimit_script_text;
extern ngx_str_t        ngx_http_aai_ratelimit_xscript_text;


/* ngx_http_aai_ratelimit_zone.c */
ngx_http_aai_ratelimit_zone_t *ngx_http_aai_ratelimit_find_zone(
    ngx_conf_t *cf, ngx_command_t *cmd, ngx_str_t *name);
char *ngx_http_aai_ratelimit_zone_param(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *value,
    ngx_uint_t *nodelay);
char *ngx_http_aai_ratelimit_zone_args(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_zone_t *zone);
char *ngx_http_aai_ratelimit_zone_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone);
ngx_int_t ngx_http_aai_ratelimit_check_zones(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf);

/* ngx_http_aai_ratelimit_batch.c */
ngx_int_t ngx_http_aai_ratelimit_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
ngx_int_t ngx_http_aai_ratelimit_enqueue_in(
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_int_t cslot);
ngx_int_t ngx_http_aai_ratelimit_cluster_slots(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx);
ngx_int_t ngx_http_aai_ratelimit_enqueue_node(
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_int_t cslot);
void ngx_http_aai_ratelimit_resume(ngx_http_aai_ratelimit_ctx_t *ctx);
void ngx_http_aai_ratelimit_batch_init(void);
void ngx_http_aai_ratelimit_batch_exit(void);

/* ngx_http_aai_ratelimit_cluster.c */
ngx_int_t ngx_http_aai_ratelimit_cluster_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx);
void ngx_http_aai_ratelimit_part_done(ngx_http_aai_ratelimit_ctx_t *part,
    ngx_uint_t failed, const char *error);
void ngx_http_aai_ratelimit_cluster_cleanup(
    ngx_http_aai_ratelimit_ctx_t *ctx);

/* ngx_http_aai_ratelimit_concurrency.c */
ngx_int_t ngx_http_aai_ratelimit_zone_concurrency(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_aai_ratelimit_zone_t *zone);
void ngx_http_aai_ratelimit_leased(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_main_conf_t *mcf);
void ngx_http_aai_ratelimit_release(ngx_http_aai_ratelimit_ctx_t *ctx);
void ngx_http_aai_ratelimit_orphan(ngx_http_aai_ratelimit_ctx_t *ctx);

/* ngx_http_aai_ratelimit_script.c */
ngx_int_t ngx_http_aai_ratelimit_script_sha(ngx_conf_t *cf, ngx_str_t *sha);
ngx_int_t ngx_http_aai_ratelimit_xscript_sha(ngx_conf_t *cf, ngx_str_t *sha);
ngx_int_t ngx_http_aai_ratelimit_library(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *xname, ngx_str_t *text);

/* ngx_http_aai_ratelimit_decide.c */
void ngx_http_aai_ratelimit_decide(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source);

/* ngx_http_aai_ratelimit_headers.c */
ngx_int_t ngx_http_aai_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);

/* ngx_http_aai_ratelimit_local.c */
void ngx_http_aai_ratelimit_fallback(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t reason, const char *error,
    redisReply *reply);
ngx_int_t ngx_http_aai_ratelimit_blocked(ngx_http_aai_ratelimit_ctx_t *ctx);
void ngx_http_aai_ratelimit_block(ngx_http_aai_ratelimit_ctx_t *ctx);
ngx_int_t ngx_http_aai_ratelimit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
void ngx_http_aai_ratelimit_unblock(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key);

/* ngx_http_aai_ratelimit_admin.c */
char *ngx_http_aai_ratelimit_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_HTTP_AAI_RATELIMIT_H_INCLUDED_ */

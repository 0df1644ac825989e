
/*
 * Copyright (C) aai-nginx authors
 *
 * The private header of ngx_http_aai_cache_module: its constants, its
 * configuration and request context, and what its files share.  The rooms:
 *
 *   ngx_http_aai_cache_module.c     the module: directives, configuration,
 *                                   the precontent handler (the request's
 *                                   entry), log handler, variables, worker
 *                                   start and exit
 *   ngx_http_aai_cache_key.c        cache key, variant key, the vary map
 *   ngx_http_aai_cache_lookup.c     lookup in Redis and serving a hit
 *   ngx_http_aai_cache_lock.c       the stampede lock and its wake-up
 *   ngx_http_aai_cache_stale.c      serving stale, background update
 *   ngx_http_aai_cache_store.c      the header and body filters: decide,
 *                                   capture, store (in pieces if large)
 *   ngx_http_aai_cache_purge.c      aai_cache_purge and invalidation
 *   ngx_http_aai_cache_metrics.c    the metrics' definitions
 *   ngx_http_aai_cache_freshness.c  RFC 9111 freshness (pure)
 *   ngx_aai_cache_entry.c           the entry format (pure)
 */


#ifndef _NGX_HTTP_AAI_CACHE_H_INCLUDED_
#define _NGX_HTTP_AAI_CACHE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>
#include <openssl/evp.h>

#include "ngx_aai_redis.h"
#include "ngx_aai_metrics.h"
#include "ngx_aai_cache_entry.h"
#include "ngx_http_aai_cache_freshness.h"


#define NGX_HTTP_AAI_CACHE_CHANNEL        "aai:cache:unlock"
#define NGX_HTTP_AAI_CACHE_DEFAULT_KEY                                        \
    "$scheme$request_method$host$request_uri"

#define NGX_HTTP_AAI_CACHE_VARY_SLOTS     1024
#define NGX_HTTP_AAI_CACHE_VARY_LEN       119
#define NGX_HTTP_AAI_CACHE_BUCKETS        64
#define NGX_HTTP_AAI_CACHE_NOTES          64
#define NGX_HTTP_AAI_CACHE_POLL           500
/* Redis' proto-max-bulk-len, less room for the entry's status and headers */
#define NGX_HTTP_AAI_CACHE_REDIS_MAX      (512 * 1024 * 1024)
#define NGX_HTTP_AAI_CACHE_MAX_SIZE       (511 * 1024 * 1024)
#define NGX_HTTP_AAI_CACHE_CHUNK          16384

/*
 * The stampede lock is a lease: taken for NGX_HTTP_AAI_CACHE_LEASE ms (or
 * aai_cache_lock_timeout if shorter), renewed by its holder every third of
 * it, so that a lock nobody holds any more (its holder killed, or its SET
 * run by Redis after the module gave up on it) is gone within a lease.
 */
#define NGX_HTTP_AAI_CACHE_LEASE          1000

/*
 * An entry larger than this is written in pieces of this size, one command
 * at a time, to a temporary key renamed at the end: SET of the first piece,
 * SETRANGE of the last byte (Redis allocates the whole value once, where
 * APPEND would copy it again and again), SETRANGE of each other piece.  No
 * command carries more than a piece, so none runs past the per-command
 * timeout because of the entry's size, and the other requests' commands
 * pass between the pieces.  A piece lost on the way would fail the entry's
 * checksum: the entry would be a miss.
 */
#define NGX_HTTP_AAI_CACHE_PIECE          (512 * 1024)
#define NGX_HTTP_AAI_CACHE_PIECE_TTL      "60000"
#define NGX_HTTP_AAI_CACHE_ORPHANS        32
#define NGX_HTTP_AAI_CACHE_ORPHAN_KEY     320
#define NGX_HTTP_AAI_CACHE_ORPHAN_RETRY   50

/* $aai_cache_status */
#define NGX_HTTP_AAI_CACHE_NONE           0
#define NGX_HTTP_AAI_CACHE_MISS           1
#define NGX_HTTP_AAI_CACHE_BYPASS         2
#define NGX_HTTP_AAI_CACHE_EXPIRED        3
#define NGX_HTTP_AAI_CACHE_STALE          4
#define NGX_HTTP_AAI_CACHE_UPDATING       5
#define NGX_HTTP_AAI_CACHE_HIT            6
#define NGX_HTTP_AAI_CACHE_REVALIDATED    7
#define NGX_HTTP_AAI_CACHE_NSTATUS        8

/* aai_cache_use_stale */
#define NGX_HTTP_AAI_CACHE_STALE_ERROR    0x0002
#define NGX_HTTP_AAI_CACHE_STALE_TIMEOUT  0x0004
#define NGX_HTTP_AAI_CACHE_STALE_UPDATING 0x0008
#define NGX_HTTP_AAI_CACHE_STALE_500      0x0010
#define NGX_HTTP_AAI_CACHE_STALE_502      0x0020
#define NGX_HTTP_AAI_CACHE_STALE_503      0x0040
#define NGX_HTTP_AAI_CACHE_STALE_504      0x0080

/* Cache-Control values of a response looked at, at most */
#define NGX_HTTP_AAI_CACHE_MAX_CC         16

/* the methods that never invalidate (RFC 9110, 9.2.1) */
#define NGX_HTTP_AAI_CACHE_SAFE                                               \
    (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_OPTIONS|NGX_HTTP_TRACE)

/* keys an unsafe request deletes: 3 URIs of 3 cached methods at most */
#define NGX_HTTP_AAI_CACHE_MAX_INVALIDATE 9


typedef enum {
    NGX_HTTP_AAI_CACHE_ST_LOOKUP = 1,   /* GET or MGET sent */
    NGX_HTTP_AAI_CACHE_ST_VARIANT,      /* GET of the variant sent */
    NGX_HTTP_AAI_CACHE_ST_LOCK,         /* SET lock NX sent */
    NGX_HTTP_AAI_CACHE_ST_WAIT,         /* waiting for the lock holder */
    NGX_HTTP_AAI_CACHE_ST_DONE          /* on to the content handler */
} ngx_http_aai_cache_state_e;


typedef enum {
    NGX_HTTP_AAI_CACHE_WAKE_STORED = 0,
    NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED,
    NGX_HTTP_AAI_CACHE_WAKE_POLL,
    NGX_HTTP_AAI_CACHE_WAKE_TIMEOUT
} ngx_http_aai_cache_wake_e;


typedef struct {
    ngx_aai_redis_conf_t          redis_conf;
    ngx_aai_redis_t              *redis;

    /* the stores: a connection of their own, aai_cache_store_timeout */
    ngx_aai_redis_conf_t          store_conf;
    ngx_aai_redis_t              *store;
    ngx_msec_t                    store_timeout;

    ngx_http_complex_value_t      default_key;

    ngx_aai_metrics_t            *metrics;
    ngx_int_t                     m_requests[NGX_HTTP_AAI_CACHE_NSTATUS];
    ngx_int_t                     m_stored;
    ngx_int_t                     m_store_failures;
    ngx_int_t                     m_bytes;
    ngx_int_t                     m_latency;

    ngx_array_t                  *credentials; /* the default one */

    ngx_uint_t                    used;        /* aai_cache or purge */
    ngx_uint_t                    lock_used;
} ngx_http_aai_cache_main_conf_t;


typedef struct {
    ngx_flag_t                    enable;
    ngx_http_complex_value_t     *key;
    ngx_str_t                     prefix;
    ngx_array_t                  *valid;       /* ngx_http_aai_cache_valid_t */
    ngx_uint_t                    methods;
    size_t                        max_size;
    ngx_array_t                  *bypass;
    ngx_array_t                  *no_store;
    ngx_flag_t                    lock;
    ngx_msec_t                    lock_timeout;
    ngx_uint_t                    use_stale;
    ngx_flag_t                    background_update;
    time_t                        stale_ttl;
    ngx_flag_t                    revalidate;
    time_t                        revalidate_ttl;
    ngx_array_t                  *credentials; /* variable indexes */
    ngx_array_t                  *control_fields; /* ngx_str_t, or NULL */

    ngx_flag_t                    purge;
    ngx_http_complex_value_t     *purge_key;
} ngx_http_aai_cache_loc_conf_t;


typedef struct {
    ngx_http_request_t           *request;
    ngx_aai_redis_cmd_t          *cmd;

    u_char                        digest[SHA256_DIGEST_LENGTH];
    ngx_str_t                     key;         /* P H */
    ngx_str_t                     vkey;        /* P H ":" V, or empty */
    ngx_str_t                     vary;        /* names vkey was made of */
    ngx_str_t                     lock_key;
    u_char                        token[16];

    ngx_aai_cache_entry_t        *stale;       /* expired entry at hand */
    ngx_aai_cache_entry_t        *cond;        /* the entry revalidated */

    ngx_event_t                   wait_ev;
    ngx_event_t                   lease_ev;    /* renews the lock held */
    ngx_msec_t                    lock_until;  /* no renewal after */
    ngx_queue_t                   queue;       /* in a waiters bucket */
    ngx_msec_t                    deadline;
    ngx_uint_t                    lock_seq;    /* notes before the SET */

    /* capture of the response */
    u_char                       *buf;         /* the entry being built */
    size_t                        len;
    size_t                        size;
    size_t                        body_start;
    off_t                         clen;        /* Content-Length, or -1 */
    uint64_t                      fresh_until;
    uint64_t                      age;         /* s, on arrival */
    uint32_t                      swr;
    uint32_t                      sie;
    time_t                        keep;        /* s past freshness, to
                                                  revalidate */
    ngx_str_t                     store_key;   /* where the entry goes */
    ngx_str_t                     store_vary;  /* its vary names */

    ngx_uint_t                    status;      /* $aai_cache_status */
    ngx_uint_t                    state;       /* ngx_http_aai_cache_state_e */
    ngx_uint_t                    fwd;         /* Cache-Status fwd=, 0: hit */
    ngx_uint_t                    fwd_status;
    const char                   *detail;

    unsigned                      suspended:1;
    unsigned                      capture:1;   /* may be stored */
    unsigned                      capturing:1;
    unsigned                      served:1;    /* sent from the cache */
    unsigned                      swap:1;      /* stale replaces an error */
    unsigned                      swap_sent:1;
    unsigned                      bg:1;        /* background update */
    unsigned                      lock_held:1;
    unsigned                      waiting:1;
    unsigned                      collapsed:1;
    unsigned                      stored:1;    /* Cache-Status "stored" */
    unsigned                      header_only:1;
    unsigned                      vary_miss:1;
    unsigned                      last:1;      /* the last buffer seen */
    unsigned                      credentialed:1;
} ngx_http_aai_cache_ctx_t;


typedef struct {
    ngx_http_request_t           *request;
    ngx_aai_redis_cmd_t          *cmd;
} ngx_http_aai_cache_purge_ctx_t;


typedef struct {
    u_char                        digest[8];
    u_char                        len;
    u_char                        names[NGX_HTTP_AAI_CACHE_VARY_LEN];
} ngx_http_aai_cache_vary_slot_t;


typedef struct {
    uint32_t                      hash;
    ngx_uint_t                    seq;
    ngx_uint_t                    stored;      /* 0: empty, 1: yes, 2: no */
} ngx_http_aai_cache_note_t;


/* the store of an entry in pieces: lives past its request */
typedef struct {
    u_char                       *buf;         /* the entry */
    size_t                        len;
    size_t                        off;         /* sent so far */
    unsigned                      grown:1;     /* the whole length set */
    unsigned                      final:1;     /* the last command sent */
    ngx_str_t                     argv[14];    /* the last command */
} ngx_http_aai_cache_job_t;


/* a lock whose SET had no reply: maybe taken, by nobody */
typedef struct {
    ngx_msec_t                    until;       /* its lease is over */
    size_t                        len;         /* of "0 " K ":l"; 0: free */
    u_char                        token[16];
    u_char                        msg[NGX_HTTP_AAI_CACHE_ORPHAN_KEY];
} ngx_http_aai_cache_orphan_t;


extern ngx_module_t                      ngx_http_aai_cache_module;
extern ngx_conf_bitmask_t                ngx_http_aai_cache_method_masks[];
extern ngx_str_t                         ngx_http_aai_cache_status_names[];
extern ngx_str_t                         ngx_http_aai_cache_release_script;

extern ngx_http_output_header_filter_pt  ngx_http_aai_cache_next_header_filter;
extern ngx_http_output_body_filter_pt    ngx_http_aai_cache_next_body_filter;

/* per worker */
extern ngx_http_aai_cache_main_conf_t   *ngx_http_aai_cache_worker;
extern ngx_queue_t                       ngx_http_aai_cache_waiters[
                                             NGX_HTTP_AAI_CACHE_BUCKETS];
extern ngx_uint_t                        ngx_http_aai_cache_lock_seq;
extern EVP_MD_CTX                       *ngx_http_aai_cache_md_ctx;
extern EVP_MD                           *ngx_http_aai_cache_md;
extern ngx_event_t                       ngx_http_aai_cache_orphans_ev;


/* ngx_http_aai_cache_module.c */
ngx_http_aai_cache_ctx_t *ngx_http_aai_cache_create_ctx(
    ngx_http_request_t *r);


/* ngx_http_aai_cache_key.c */
ngx_int_t ngx_http_aai_cache_make_key(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *key, u_char *digest);
ngx_int_t ngx_http_aai_cache_variant_key(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *names, ngx_str_t *vkey);
void ngx_http_aai_cache_vary_get(u_char *digest, ngx_str_t *names);
void ngx_http_aai_cache_vary_set(u_char *digest, ngx_str_t *names);
void ngx_http_aai_cache_vary_forget(u_char *digest);


/* ngx_http_aai_cache_lookup.c */
ngx_int_t ngx_http_aai_cache_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
void ngx_http_aai_cache_reply(ngx_aai_redis_result_t *res,
    void *data);
ngx_uint_t ngx_http_aai_cache_credentialed(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf);
void ngx_http_aai_cache_forward(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t status);
void ngx_http_aai_cache_unconditional(ngx_http_request_t *r);
ngx_int_t ngx_http_aai_cache_reset_headers(ngx_http_request_t *r);
ngx_int_t ngx_http_aai_cache_strip_conditions(ngx_http_request_t *r,
    ngx_list_t *headers);
void ngx_http_aai_cache_serve(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e,
    ngx_uint_t status);
ngx_int_t ngx_http_aai_cache_restore(ngx_http_request_t *r,
    ngx_aai_cache_entry_t *e);
ngx_int_t ngx_http_aai_cache_status_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e);
uint64_t ngx_http_aai_cache_now(void);
ngx_int_t ngx_http_aai_cache_headers_ok(ngx_aai_cache_entry_t *e);
const char *ngx_http_aai_cache_own_request(ngx_http_request_t *r);


/* ngx_http_aai_cache_lock.c */
void ngx_http_aai_cache_on_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
ngx_int_t ngx_http_aai_cache_try_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
void ngx_http_aai_cache_unwait(ngx_http_aai_cache_ctx_t *ctx);
void ngx_http_aai_cache_message(ngx_str_t *channel,
    ngx_str_t *message, void *data);
void ngx_http_aai_cache_release(ngx_http_aai_cache_ctx_t *ctx,
    ngx_uint_t stored, ngx_log_t *log);
void ngx_http_aai_cache_lease(ngx_http_aai_cache_ctx_t *ctx);
void ngx_http_aai_cache_orphan(ngx_http_aai_cache_ctx_t *ctx);
void ngx_http_aai_cache_orphans_handler(ngx_event_t *ev);
void ngx_http_aai_cache_release_handler(ngx_aai_redis_result_t *res,
    void *data);


/* ngx_http_aai_cache_stale.c */
ngx_uint_t ngx_http_aai_cache_updating_ok(
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_aai_cache_entry_t *e);
ngx_int_t ngx_http_aai_cache_background(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
ngx_int_t ngx_http_aai_cache_stale_on_error(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
ngx_int_t ngx_http_aai_cache_swap_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
ngx_int_t ngx_http_aai_cache_swap_body(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in);
void ngx_http_aai_cache_consume(ngx_chain_t *in);


/* ngx_http_aai_cache_store.c */
ngx_int_t ngx_http_aai_cache_header_filter(ngx_http_request_t *r);
ngx_int_t ngx_http_aai_cache_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
ngx_int_t ngx_http_aai_cache_collect(ngx_http_request_t *r,
    ngx_array_t *headers);
void ngx_http_aai_cache_store(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);


/* ngx_http_aai_cache_revalidate.c */
void ngx_http_aai_cache_conditional(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e);
ngx_int_t ngx_http_aai_cache_revalidated(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
const char *ngx_http_aai_cache_keep(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_http_aai_cache_freshness_t *f, const char *reason);
ngx_uint_t ngx_http_aai_cache_no_stale(ngx_aai_cache_entry_t *e);
ngx_uint_t ngx_http_aai_cache_swr(ngx_aai_cache_entry_t *e);


/* ngx_http_aai_cache_purge.c */
void ngx_http_aai_cache_invalidate(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf);
ngx_int_t ngx_http_aai_cache_purge_handler(ngx_http_request_t *r);


/* ngx_http_aai_cache_metrics.c */
ngx_int_t ngx_http_aai_cache_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_cache_main_conf_t *amcf);


#endif /* _NGX_HTTP_AAI_CACHE_H_INCLUDED_ */

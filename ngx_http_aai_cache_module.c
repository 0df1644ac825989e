
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_module: an HTTP response cache shared by every nginx
 * instance through Redis.
 *
 * A request of a cached location is looked up in the precontent phase,
 * after access control and the rate limiter, with one GET (an MGET when the
 * resource is known to vary) that never blocks the worker.  A hit is sent
 * from the entry and the upstream never sees the request.  A miss goes on
 * to the content handler; the header and body filters copy the response as
 * it passes, and once its last buffer has been passed on, the entry is
 * stored with one command nobody waits for.
 *
 * Redis keys, for P = aai_cache_key_prefix and H = hex(SHA-256(cache key)):
 *
 *     P H            the entry, or a vary record: the names of the request
 *                    headers the response varies on
 *     P H ":" V      the entry of one variant, V = hex of the first 16
 *                    bytes of SHA-256(H, names, request header values)
 *     P H ":v"       the set of the variant keys of H, for purge
 *     K ":l"         the update lock of entry key K (aai_cache_lock)
 *
 * The holder of a lock publishes "1 K:l" (stored) or "0 K:l" (not stored)
 * on the channel NGX_HTTP_AAI_CACHE_CHANNEL when it is done; the requests
 * waiting for it, on any instance, wake up at once.
 *
 * The entry format is described in ngx_aai_cache_entry.h.
 */


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
    ngx_uint_t                    status;      /* 0: any */
    time_t                        valid;
} ngx_http_aai_cache_valid_t;


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


static ngx_int_t ngx_http_aai_cache_handler(ngx_http_request_t *r);
static ngx_http_aai_cache_ctx_t *ngx_http_aai_cache_create_ctx(
    ngx_http_request_t *r);
static void ngx_http_aai_cache_cleanup(void *data);
static ngx_int_t ngx_http_aai_cache_make_key(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *key, u_char *digest);
static ngx_int_t ngx_http_aai_cache_variant_key(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *names, ngx_str_t *vkey);
static ngx_int_t ngx_http_aai_cache_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_reply(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_on_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
static void ngx_http_aai_cache_on_vary(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *vr,
    redisReply *variant);
static void ngx_http_aai_cache_on_entry(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
static void ngx_http_aai_cache_on_absent(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_on_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_aai_cache_try_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static ngx_int_t ngx_http_aai_cache_entry_from(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply,
    ngx_aai_cache_entry_t **ep);
static ngx_int_t ngx_http_aai_cache_headers_ok(ngx_aai_cache_entry_t *e);
static ngx_uint_t ngx_http_aai_cache_credentialed(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_uint_t ngx_http_aai_cache_shareable(ngx_aai_cache_entry_t *e);
static const char *ngx_http_aai_cache_own_request(ngx_http_request_t *r);
static ngx_uint_t ngx_http_aai_cache_updating_ok(
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_aai_cache_entry_t *e);
static void ngx_http_aai_cache_forward(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t status);
static void ngx_http_aai_cache_resume(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_unconditional(ngx_http_request_t *r);
static void ngx_http_aai_cache_serve(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e,
    ngx_uint_t status);
static ngx_int_t ngx_http_aai_cache_send(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e);
static ngx_int_t ngx_http_aai_cache_restore(ngx_http_request_t *r,
    ngx_aai_cache_entry_t *e);
static ngx_int_t ngx_http_aai_cache_background(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);

static void ngx_http_aai_cache_wait(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_wait_handler(ngx_event_t *ev);
static void ngx_http_aai_cache_wake(ngx_http_aai_cache_ctx_t *ctx,
    ngx_uint_t how);
static void ngx_http_aai_cache_unwait(ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_message(ngx_str_t *channel,
    ngx_str_t *message, void *data);
static void ngx_http_aai_cache_release(ngx_http_aai_cache_ctx_t *ctx,
    ngx_uint_t stored, ngx_log_t *log);
static ngx_msec_t ngx_http_aai_cache_lease_time(ngx_http_request_t *r);
static void ngx_http_aai_cache_lease(ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_renew(ngx_event_t *ev);
static void ngx_http_aai_cache_orphan(ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_orphans_handler(ngx_event_t *ev);

static ngx_int_t ngx_http_aai_cache_header_filter(ngx_http_request_t *r);
static void ngx_http_aai_cache_invalidate(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_invalidate_uri(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *uri, ngx_str_t *argv,
    ngx_uint_t *n);
static const char *ngx_http_aai_cache_decide(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_valid_time(
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_uint_t status);
static ngx_int_t ngx_http_aai_cache_begin(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_stale_on_error(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_swap_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static ngx_int_t ngx_http_aai_cache_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_aai_cache_swap_body(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in);
static void ngx_http_aai_cache_consume(ngx_chain_t *in);
static ngx_int_t ngx_http_aai_cache_capture(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_aai_cache_append(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_buf_t *b);
static void ngx_http_aai_cache_abandon(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, const char *why);
static void ngx_http_aai_cache_store(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_store_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_store_large(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *argv);
static ngx_int_t ngx_http_aai_cache_job_next(ngx_http_aai_cache_job_t *job);
static void ngx_http_aai_cache_job_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_job_fail(ngx_http_aai_cache_job_t *job,
    const char *why);
static void ngx_http_aai_cache_release_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_int_t ngx_http_aai_cache_status_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e);

static ngx_int_t ngx_http_aai_cache_purge_handler(ngx_http_request_t *r);
static void ngx_http_aai_cache_purge_reply(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_purge_cleanup(void *data);
static ngx_int_t ngx_http_aai_cache_purge_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_int_t n);

static ngx_int_t ngx_http_aai_cache_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_cache_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_aai_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static ngx_int_t ngx_http_aai_cache_collect(ngx_http_request_t *r,
    ngx_array_t *headers);
static ngx_table_elt_t *ngx_http_aai_cache_origin_date(
    ngx_http_request_t *r);
static ngx_uint_t ngx_http_aai_cache_connection_listed(ngx_list_t *raw,
    ngx_str_t *name);
static void ngx_http_aai_cache_vary_get(u_char *digest, ngx_str_t *names);
static void ngx_http_aai_cache_vary_set(u_char *digest, ngx_str_t *names);
static void ngx_http_aai_cache_vary_forget(u_char *digest);
static void ngx_http_aai_cache_log_bad(ngx_log_t *log, const char *what,
    ngx_str_t *key);
static uint64_t ngx_http_aai_cache_now(void);
static void ngx_http_aai_cache_sha256(u_char *data, size_t len,
    u_char *md);

static void *ngx_http_aai_cache_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_cache_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_aai_cache_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_aai_cache_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_aai_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_valid(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_methods(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_use_stale(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_cache_prefix(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_size(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_msec(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_sec(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_purge(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_credentials(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_cache_control_field(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_aai_cache_credential(ngx_conf_t *cf,
    ngx_array_t *a, ngx_str_t *value);
static ngx_int_t ngx_http_aai_cache_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_cache_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_cache_main_conf_t *amcf);
static ngx_int_t ngx_http_aai_cache_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_cache_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_cache_exit_process(ngx_cycle_t *cycle);


static ngx_str_t  ngx_http_aai_cache_status_names[] = {
    ngx_null_string,
    ngx_string("MISS"),
    ngx_string("BYPASS"),
    ngx_string("EXPIRED"),
    ngx_string("STALE"),
    ngx_string("UPDATING"),
    ngx_string("HIT"),
    ngx_string("REVALIDATED")
};


static const char  *ngx_http_aai_cache_fwd_names[] = {
    "hit", "miss", "bypass", "stale", "stale", "stale", "hit", "stale"
};


static ngx_command_t  ngx_http_aai_cache_commands[] = {

    { ngx_string("aai_cache_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_cache_store_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_main_conf_t, store_timeout),
      NULL },

    { ngx_string("aai_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, enable),
      NULL },

    { ngx_string("aai_cache_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, key),
      NULL },

    { ngx_string("aai_cache_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_prefix,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, prefix),
      NULL },

    { ngx_string("aai_cache_valid"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_valid,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, valid),
      NULL },

    { ngx_string("aai_cache_methods"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_methods,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, methods),
      NULL },

    { ngx_string("aai_cache_max_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_size,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, max_size),
      NULL },

    { ngx_string("aai_cache_bypass"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_set_predicate_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, bypass),
      NULL },

    { ngx_string("aai_cache_no_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_set_predicate_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, no_store),
      NULL },

    { ngx_string("aai_cache_lock"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, lock),
      NULL },

    { ngx_string("aai_cache_lock_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_msec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, lock_timeout),
      NULL },

    { ngx_string("aai_cache_use_stale"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_use_stale,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, use_stale),
      NULL },

    { ngx_string("aai_cache_background_update"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, background_update),
      NULL },

    { ngx_string("aai_cache_stale_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_sec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, stale_ttl),
      NULL },

    { ngx_string("aai_cache_revalidate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, revalidate),
      NULL },

    { ngx_string("aai_cache_revalidate_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_sec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, revalidate_ttl),
      NULL },

    { ngx_string("aai_cache_credentials"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_credentials,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, credentials),
      NULL },

    { ngx_string("aai_cache_control_field"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_control_field,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, control_fields),
      NULL },

    { ngx_string("aai_cache_purge"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_aai_cache_purge,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    NGX_AAI_METRICS_COMMAND,

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_cache_module_ctx = {
    ngx_http_aai_cache_add_variables,      /* preconfiguration */
    ngx_http_aai_cache_init,               /* postconfiguration */

    ngx_http_aai_cache_create_main_conf,   /* create main configuration */
    ngx_http_aai_cache_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_aai_cache_create_loc_conf,    /* create location configuration */
    ngx_http_aai_cache_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_aai_cache_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_cache_module_ctx,        /* module context */
    ngx_http_aai_cache_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_aai_cache_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_aai_cache_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_aai_cache_vars[] = {

    { ngx_string("aai_cache_status"), NULL,
      ngx_http_aai_cache_status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("aai_cache_key"), NULL,
      ngx_http_aai_cache_key_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_conf_bitmask_t  ngx_http_aai_cache_stale_masks[] = {
    { ngx_string("error"), NGX_HTTP_AAI_CACHE_STALE_ERROR },
    { ngx_string("timeout"), NGX_HTTP_AAI_CACHE_STALE_TIMEOUT },
    { ngx_string("updating"), NGX_HTTP_AAI_CACHE_STALE_UPDATING },
    { ngx_string("http_500"), NGX_HTTP_AAI_CACHE_STALE_500 },
    { ngx_string("http_502"), NGX_HTTP_AAI_CACHE_STALE_502 },
    { ngx_string("http_503"), NGX_HTTP_AAI_CACHE_STALE_503 },
    { ngx_string("http_504"), NGX_HTTP_AAI_CACHE_STALE_504 },
    { ngx_null_string, 0 }
};


static ngx_conf_bitmask_t  ngx_http_aai_cache_method_masks[] = {
    { ngx_string("GET"), NGX_HTTP_GET },
    { ngx_string("HEAD"), NGX_HTTP_HEAD },
    { ngx_string("POST"), NGX_HTTP_POST },
    { ngx_null_string, 0 }
};


/* statuses cacheable without aai_cache_valid (RFC 9110, 15.1), but 206 */
static ngx_uint_t  ngx_http_aai_cache_heuristic[] = {
    200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501, 0
};


/* response headers that are never stored */
static ngx_str_t  ngx_http_aai_cache_skip[] = {
    ngx_string("Content-Type"),
    ngx_string("Content-Length"),
    ngx_string("Transfer-Encoding"),
    ngx_string("Connection"),
    ngx_string("Keep-Alive"),
    ngx_string("Proxy-Connection"),
    ngx_string("Upgrade"),
    ngx_string("TE"),
    ngx_string("Trailer"),
    ngx_string("Date"),
    ngx_string("Server"),
    ngx_string("Age"),
    ngx_string("Set-Cookie"),
    ngx_string("Cache-Status"),
    ngx_null_string
};


/*
 * KEYS: entry key, base key, variants set, lock key
 * ARGV: entry, px, vary record or "", lock token or "", channel, message
 */
static ngx_str_t  ngx_http_aai_cache_store_script = ngx_string(
    "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) "
    "if ARGV[3] ~= '' then "
    "local px = tonumber(ARGV[2]) "
    "local t = redis.call('pttl', KEYS[2]) "
    "if t < px then t = px end "
    "redis.call('set', KEYS[2], ARGV[3], 'px', t) "
    "redis.call('sadd', KEYS[3], KEYS[1]) "
    "if redis.call('pttl', KEYS[3]) < px then "
    "redis.call('pexpire', KEYS[3], px) end "
    "end "
    "if ARGV[4] ~= '' then "
    "if redis.call('get', KEYS[4]) == ARGV[4] then "
    "redis.call('del', KEYS[4]) end "
    "redis.call('publish', ARGV[5], ARGV[6]) "
    "end "
    "return 1");


/*
 * The end of a store in pieces.
 * KEYS: entry key, base key, variants set, lock key, temporary key
 * ARGV: entry length, px, vary record or "", lock token or "", channel,
 *       message
 */
static ngx_str_t  ngx_http_aai_cache_pieces_script = ngx_string(
    "local ok = redis.call('strlen', KEYS[5]) == tonumber(ARGV[1]) "
    "if ok then "
    "redis.call('rename', KEYS[5], KEYS[1]) "
    "redis.call('pexpire', KEYS[1], ARGV[2]) "
    "if ARGV[3] ~= '' then "
    "local px = tonumber(ARGV[2]) "
    "local t = redis.call('pttl', KEYS[2]) "
    "if t < px then t = px end "
    "redis.call('set', KEYS[2], ARGV[3], 'px', t) "
    "redis.call('sadd', KEYS[3], KEYS[1]) "
    "if redis.call('pttl', KEYS[3]) < px then "
    "redis.call('pexpire', KEYS[3], px) end "
    "end "
    "else redis.call('del', KEYS[5]) end "
    "if ARGV[4] ~= '' then "
    "if redis.call('get', KEYS[4]) == ARGV[4] then "
    "redis.call('del', KEYS[4]) end "
    "local m = ARGV[6] "
    "if not ok then m = '0' .. string.sub(m, 2) end "
    "redis.call('publish', ARGV[5], m) "
    "end "
    "if ok then return 1 end "
    "return 0");


/* KEYS: lock key; ARGV: token, px */
static ngx_str_t  ngx_http_aai_cache_renew_script = ngx_string(
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return 0");


/* KEYS: lock key; ARGV: token, channel, message */
static ngx_str_t  ngx_http_aai_cache_release_script = ngx_string(
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('del', KEYS[1]) end "
    "redis.call('publish', ARGV[2], ARGV[3]) "
    "return 1");


/* KEYS: base keys; returns the number of entries deleted */
static ngx_str_t  ngx_http_aai_cache_purge_script = ngx_string(
    "local n = 0 "
    "for i = 1, #KEYS do "
    "local s = KEYS[i] .. ':v' "
    "local vs = redis.call('smembers', s) "
    "for j = 1, #vs do n = n + redis.call('del', vs[j]) end "
    "n = n + redis.call('del', KEYS[i]) "
    "redis.call('del', s) "
    "end "
    "return n");


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/* per worker */
static ngx_http_aai_cache_main_conf_t  *ngx_http_aai_cache_worker;
static ngx_queue_t                      ngx_http_aai_cache_waiters[
                                            NGX_HTTP_AAI_CACHE_BUCKETS];
static ngx_http_aai_cache_note_t        ngx_http_aai_cache_notes[
                                            NGX_HTTP_AAI_CACHE_NOTES];
static ngx_uint_t                       ngx_http_aai_cache_note_seq;
static ngx_http_aai_cache_vary_slot_t   ngx_http_aai_cache_vary_map[
                                            NGX_HTTP_AAI_CACHE_VARY_SLOTS];
static ngx_uint_t                       ngx_http_aai_cache_lock_seq;
static EVP_MD_CTX                      *ngx_http_aai_cache_md_ctx;
static EVP_MD                          *ngx_http_aai_cache_md;
static ngx_http_aai_cache_orphan_t      ngx_http_aai_cache_orphans[
                                            NGX_HTTP_AAI_CACHE_ORPHANS];
static ngx_event_t                      ngx_http_aai_cache_orphans_ev;
static ngx_connection_t                 ngx_http_aai_cache_dummy;



/* aai_cache_revalidate (until the module's private header exists) */
#include "ngx_http_aai_cache_revalidate.c"


static ngx_int_t
ngx_http_aai_cache_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_loc_conf_t   *alcf;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx) {
        if (ctx->state == NGX_HTTP_AAI_CACHE_ST_DONE) {
            return NGX_DECLINED;
        }

        /* a Redis reply is pending */
        return NGX_AGAIN;
    }

    if (r != r->main) {
        return NGX_DECLINED;
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (!alcf->enable || !(r->method & alcf->methods)) {
        return NGX_DECLINED;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_aai_cache_create_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ctx->credentialed = ngx_http_aai_cache_credentialed(r, alcf);

    if (ngx_http_aai_cache_make_key(r, alcf, &ctx->key, ctx->digest)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (alcf->bypass) {
        rc = ngx_http_test_predicates(r, alcf->bypass);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_DECLINED) {
            ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_BYPASS);
            return NGX_DECLINED;
        }
    }

    rc = ngx_http_aai_cache_lookup(r, ctx);

    if (rc == NGX_AGAIN) {
        ctx->suspended = 1;
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ctx->detail = "redis-unavailable";
    ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_MISS);

    return NGX_DECLINED;
}


static ngx_http_aai_cache_ctx_t *
ngx_http_aai_cache_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_cache_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_aai_cache_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ctx->clen = -1;

    ngx_http_set_ctx(r, ctx, ngx_http_aai_cache_module);

    return ctx;
}


static void
ngx_http_aai_cache_cleanup(void *data)
{
    ngx_http_aai_cache_ctx_t *ctx = data;

    if (ctx->cmd) {
        ngx_aai_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }

    ngx_http_aai_cache_unwait(ctx);

    if (ctx->lease_ev.timer_set) {
        ngx_del_timer(&ctx->lease_ev);
    }

    /* the request is going away: its pool is no place to log to */

    ngx_http_aai_cache_release(ctx, 0, ngx_cycle->log);

    if (ctx->buf) {
        ngx_free(ctx->buf);
        ctx->buf = NULL;
    }
}


static ngx_int_t
ngx_http_aai_cache_make_key(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *key, u_char *digest)
{
    u_char                          *p;
    ngx_str_t                        value;
    ngx_http_complex_value_t        *cv;
    ngx_http_aai_cache_main_conf_t  *amcf;

    cv = alcf->key;

    if (alcf->purge && alcf->purge_key) {
        cv = alcf->purge_key;
    }

    if (cv == NULL) {
        amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
        cv = &amcf->default_key;
    }

    if (ngx_http_complex_value(r, cv, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_aai_cache_sha256(value.data, value.len, digest);

    key->len = alcf->prefix.len + 2 * SHA256_DIGEST_LENGTH;
    key->data = ngx_pnalloc(r->pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, alcf->prefix.data, alcf->prefix.len);
    ngx_hex_dump(p, digest, SHA256_DIGEST_LENGTH);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache key \"%V\": %V", &value, key);

    return NGX_OK;
}


/*
 * The variant key: P H ":" hex of the first 16 bytes of SHA-256 of
 * "H\n" and, for each name, "name=value\n" ("name!\n" when the request
 * has no such header); values of repeated headers are joined with ",",
 * spaces around commas and at the ends are dropped.
 */

static ngx_int_t
ngx_http_aai_cache_variant_key(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *names, ngx_str_t *vkey)
{
    u_char           *buf, *p, *s, *e, *name, *end;
    size_t            len, nlen;
    ngx_uint_t        found, space;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;
    ngx_uint_t        i;
    u_char            md[SHA256_DIGEST_LENGTH];

    /* the upper bound: every request header under every name */

    len = 2 * SHA256_DIGEST_LENGTH + 1;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        len += h[i].value.len + 1;
    }

    len = len * (1 + names->len / 2) + 2 * names->len + 16;

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, ctx->key.data + ctx->key.len
                        - 2 * SHA256_DIGEST_LENGTH,
                   2 * SHA256_DIGEST_LENGTH);
    *p++ = '\n';

    name = names->data;
    end = names->data + names->len;

    while (name < end) {

        for (s = name; s < end && *s != ','; s++) { /* void */ }

        nlen = s - name;
        p = ngx_cpymem(p, name, nlen);

        found = 0;
        h = NULL;

        while ((h = ngx_aai_cache_find_header(&r->headers_in.headers,
                                            (char *) name, nlen, h))
               != NULL)
        {
            *p++ = found ? ',' : '=';
            found = 1;

            s = h->value.data;
            e = s + h->value.len;

            while (s < e && (*s == ' ' || *s == '\t')) {
                s++;
            }

            while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
                e--;
            }

            space = 0;

            for ( /* void */ ; s < e; s++) {

                if (*s == ' ' || *s == '\t') {
                    space = 1;
                    continue;
                }

                if (space && *s != ',' && p[-1] != ',') {
                    *p++ = ' ';
                }

                space = 0;
                *p++ = *s;
            }
        }

        if (!found) {
            *p++ = '!';
        }

        *p++ = '\n';

        name += nlen + 1;
    }

    ngx_http_aai_cache_sha256(buf, p - buf, md);

    vkey->len = ctx->key.len + 1 + 32;
    vkey->data = ngx_pnalloc(r->pool, vkey->len);
    if (vkey->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(vkey->data, ctx->key.data, ctx->key.len);
    *p++ = ':';
    ngx_hex_dump(p, md, 16);

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_str_t                        names, argv[3];
    ngx_uint_t                       argc;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    ngx_str_null(&ctx->vkey);
    ngx_str_null(&ctx->vary);

    /* this worker knows the resource varies: fetch the variant at once */

    ngx_http_aai_cache_vary_get(ctx->digest, &names);

    if (names.len) {
        ctx->vary.data = ngx_pnalloc(r->pool, names.len);
        if (ctx->vary.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ctx->vary.data, names.data, names.len);
        ctx->vary.len = names.len;

        if (ngx_http_aai_cache_variant_key(r, ctx, &ctx->vary, &ctx->vkey)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_str_set(&argv[0], "MGET");
        argv[1] = ctx->key;
        argv[2] = ctx->vkey;
        argc = 3;

    } else {
        ngx_str_set(&argv[0], "GET");
        argv[1] = ctx->key;
        argc = 2;
    }

    ctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, argc,
                                  argv, ngx_http_aai_cache_reply, ctx);
    if (ctx->cmd == NULL) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_AAI_CACHE_ST_LOOKUP;

    return NGX_AGAIN;
}


static void
ngx_http_aai_cache_reply(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_ctx_t *ctx = data;

    ngx_connection_t                *c;
    ngx_http_request_t              *r;
    ngx_http_aai_cache_main_conf_t  *amcf;

    r = ctx->request;
    c = r->connection;

    ctx->cmd = NULL;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
    ngx_aai_metrics_observe(amcf->metrics, amcf->m_latency, res->latency_us);

    if (res->reply == NULL || res->reply->type == REDIS_REPLY_ERROR) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "aai cache redis failed: %s",
                       res->reply ? res->reply->str : res->error);

        if (ctx->state == NGX_HTTP_AAI_CACHE_ST_LOCK) {
            /* Redis may run the SET yet: the lock would be nobody's */
            ngx_http_aai_cache_orphan(ctx);
        }

        ctx->detail = "redis-error";
        ngx_http_aai_cache_forward(r, ctx,
                                   ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                              : NGX_HTTP_AAI_CACHE_MISS);
        goto done;
    }

    switch (ctx->state) {

    case NGX_HTTP_AAI_CACHE_ST_LOOKUP:
        ngx_http_aai_cache_on_lookup(r, ctx, res->reply);
        break;

    case NGX_HTTP_AAI_CACHE_ST_VARIANT:
        ngx_http_aai_cache_on_entry(r, ctx, res->reply);
        break;

    case NGX_HTTP_AAI_CACHE_ST_LOCK:
        ngx_http_aai_cache_on_lock(r, ctx, res->reply);
        break;

    default:
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "aai_cache: reply in state %ui", ctx->state);
        ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_MISS);
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_cache_on_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply)
{
    ngx_int_t                    rc;
    redisReply                  *base, *variant;
    ngx_aai_cache_entry_t       *e;

    if (reply->type == REDIS_REPLY_ARRAY) {
        if (reply->elements != 2) {
            ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_MISS);
            return;
        }

        base = reply->element[0];
        variant = reply->element[1];

    } else {
        base = reply;
        variant = NULL;
    }

    rc = ngx_http_aai_cache_entry_from(r, ctx, base, &e);

    if (rc == NGX_ERROR) {
        ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        if (ctx->vkey.len) {
            /* no vary record: the guess was wrong */
            ngx_http_aai_cache_vary_forget(ctx->digest);
            ngx_str_null(&ctx->vkey);
            ngx_str_null(&ctx->vary);
        }

        ngx_http_aai_cache_on_absent(r, ctx);
        return;
    }

    if (e->type == NGX_AAI_CACHE_TYPE_VARY) {
        ngx_http_aai_cache_on_vary(r, ctx, e, variant);
        return;
    }

    if (ctx->vkey.len) {
        /* the resource no longer varies */
        ngx_http_aai_cache_vary_forget(ctx->digest);
        ngx_str_null(&ctx->vkey);
        ngx_str_null(&ctx->vary);
    }

    ngx_http_aai_cache_on_entry(r, ctx, base);
}


static void
ngx_http_aai_cache_on_vary(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *vr,
    redisReply *variant)
{
    ngx_str_t                        names, argv[2];
    ngx_http_aai_cache_main_conf_t  *amcf;

    names.data = vr->headers;
    names.len = vr->headers_len;

    ngx_http_aai_cache_vary_set(ctx->digest, &names);

    if (variant
        && ctx->vkey.len
        && ctx->vary.len == names.len
        && ngx_memcmp(ctx->vary.data, names.data, names.len) == 0)
    {
        ngx_http_aai_cache_on_entry(r, ctx, variant);
        return;
    }

    /* a second round trip: the variant of this request */

    ctx->vary = names;

    if (ngx_http_aai_cache_variant_key(r, ctx, &ctx->vary, &ctx->vkey)
        != NGX_OK)
    {
        ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    ngx_str_set(&argv[0], "GET");
    argv[1] = ctx->vkey;

    ctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, 2, argv,
                                  ngx_http_aai_cache_reply, ctx);
    if (ctx->cmd == NULL) {
        ctx->detail = "redis-unavailable";
        ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_MISS);
        return;
    }

    ctx->state = NGX_HTTP_AAI_CACHE_ST_VARIANT;
}


static void
ngx_http_aai_cache_on_entry(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply)
{
    ngx_int_t                       rc;
    ngx_aai_cache_entry_t          *e;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    rc = ngx_http_aai_cache_entry_from(r, ctx, reply, &e);

    if (rc == NGX_ERROR) {
        ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED
        || e->type != NGX_AAI_CACHE_TYPE_ENTRY
        || ((e->flags & NGX_AAI_CACHE_HEADER_ONLY)
            && r->method != NGX_HTTP_HEAD))
    {
        if (ctx->vkey.len) {
            ctx->vary_miss = 1;
        }

        ngx_http_aai_cache_on_absent(r, ctx);
        return;
    }

    /* RFC 9111, 3.5: neither served nor served stale, nor waited for */

    if (ctx->credentialed && !ngx_http_aai_cache_shareable(e)) {
        ctx->detail = "credentials";
        ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_BYPASS);
        return;
    }

    if (ngx_http_aai_cache_now() < e->fresh_until) {
        ngx_http_aai_cache_serve(r, ctx, e, NGX_HTTP_AAI_CACHE_HIT);
        return;
    }

    /* expired: kept at hand for aai_cache_use_stale */

    ctx->stale = e;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if ((alcf->lock || ngx_http_aai_cache_updating_ok(alcf, e))
        && ngx_http_aai_cache_own_request(r) == NULL)
    {
        if (ngx_http_aai_cache_try_lock(r, ctx) == NGX_AGAIN) {
            return;
        }
    }

    ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_EXPIRED);
}


static void
ngx_http_aai_cache_on_absent(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (alcf->lock
        && ngx_http_aai_cache_own_request(r) == NULL
        && ngx_http_aai_cache_try_lock(r, ctx) == NGX_AGAIN)
    {
        return;
    }

    ngx_http_aai_cache_forward(r, ctx,
                               ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                          : NGX_HTTP_AAI_CACHE_MISS);
}


static ngx_int_t
ngx_http_aai_cache_try_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    u_char                          *p;
    ngx_str_t                       *k, argv[6];
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           px[NGX_INT_T_LEN];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    k = ctx->vkey.len ? &ctx->vkey : &ctx->key;

    /* the lock key, and room for the "0 " or "1 " of its message */

    p = ngx_pnalloc(r->pool, 2 + k->len + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->lock_key.data = p + 2;
    ctx->lock_key.len = k->len + 2;

    p = ngx_cpymem(p + 2, k->data, k->len);
    *p++ = ':';
    *p = 'l';

    if (ctx->token[0] == '\0') {
        ngx_sprintf(ctx->token, "%08xi%08xi",
                    ((ngx_uint_t) ngx_pid ^ (ngx_uint_t) ngx_random())
                    & 0xffffffff,
                    ++ngx_http_aai_cache_lock_seq & 0xffffffff);
    }

    ngx_str_set(&argv[0], "SET");
    argv[1] = ctx->lock_key;
    argv[2].data = ctx->token;
    argv[2].len = sizeof(ctx->token);
    ngx_str_set(&argv[3], "NX");
    ngx_str_set(&argv[4], "PX");
    argv[5].data = px;
    argv[5].len = ngx_sprintf(px, "%M", ngx_http_aai_cache_lease_time(r))
                  - px;

    ctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, 6, argv,
                                  ngx_http_aai_cache_reply, ctx);
    if (ctx->cmd == NULL) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_AAI_CACHE_ST_LOCK;
    ctx->lock_seq = ngx_http_aai_cache_note_seq;

    return NGX_AGAIN;
}


static void
ngx_http_aai_cache_on_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply)
{
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (reply->type == REDIS_REPLY_STATUS) {

        /* this request updates the entry */

        ctx->lock_held = 1;
        ctx->lock_until = ngx_current_msec + alcf->lock_timeout;
        ngx_http_aai_cache_lease(ctx);

        if (ctx->stale
            && (alcf->background_update
                || ngx_http_aai_cache_swr(ctx->stale))
            && ngx_http_aai_cache_updating_ok(alcf, ctx->stale)
            && ngx_http_aai_cache_background(r, ctx) == NGX_OK)
        {
            ctx->detail = "background-update";
            ngx_http_aai_cache_serve(r, ctx, ctx->stale,
                                     NGX_HTTP_AAI_CACHE_STALE);
            return;
        }

        ngx_http_aai_cache_forward(r, ctx,
                                   ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                              : NGX_HTTP_AAI_CACHE_MISS);
        return;
    }

    /* another request, maybe on another instance, is updating it */

    if (ctx->stale && ngx_http_aai_cache_updating_ok(alcf, ctx->stale)) {
        ctx->detail = "updating";
        ngx_http_aai_cache_serve(r, ctx, ctx->stale,
                                 NGX_HTTP_AAI_CACHE_UPDATING);
        return;
    }

    if (!alcf->lock
        || (ctx->deadline
            && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) <= 0))
    {
        if (alcf->lock) {
            ctx->detail = "lock-timeout";
        }

        ngx_http_aai_cache_forward(r, ctx,
                                   ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                              : NGX_HTTP_AAI_CACHE_MISS);
        return;
    }

    ngx_http_aai_cache_wait(r, ctx);
}


static ngx_int_t
ngx_http_aai_cache_entry_from(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply,
    ngx_aai_cache_entry_t **ep)
{
    u_char                      *p;
    const char                  *err;
    ngx_str_t                   *key;
    ngx_aai_cache_entry_t       *e;

    key = (ctx->state == NGX_HTTP_AAI_CACHE_ST_VARIANT) ? &ctx->vkey
                                                         : &ctx->key;

    if (reply == NULL || reply->type == REDIS_REPLY_NIL) {
        return NGX_DECLINED;
    }

    if (reply->type != REDIS_REPLY_STRING) {
        ngx_http_aai_cache_log_bad(r->connection->log, "not a string", key);
        return NGX_DECLINED;
    }

    /* the entry is served from the request's memory */

    p = ngx_pnalloc(r->pool, reply->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, reply->str, reply->len);

    e = ngx_palloc(r->pool, sizeof(ngx_aai_cache_entry_t));
    if (e == NULL) {
        return NGX_ERROR;
    }

    if (ngx_aai_cache_entry_decode(p, reply->len, e, &err) != NGX_OK) {
        ngx_http_aai_cache_log_bad(r->connection->log, err, key);
        return NGX_DECLINED;
    }

    if (ngx_memcmp(e->check, ctx->digest, 8) != 0) {
        ngx_http_aai_cache_log_bad(r->connection->log, "foreign", key);
        return NGX_DECLINED;
    }

    if (e->type == NGX_AAI_CACHE_TYPE_ENTRY
        && ngx_http_aai_cache_headers_ok(e) != NGX_OK)
    {
        ngx_http_aai_cache_log_bad(r->connection->log, "bad header", key);
        return NGX_DECLINED;
    }

    *ep = e;

    return NGX_OK;
}


/*
 * The headers of an entry are sent as they are: a name must be a token
 * (RFC 9110, 5.1), a value must hold no CR, LF, NUL or other control but
 * HTAB (5.5), whatever wrote the entry.
 */

static ngx_int_t
ngx_http_aai_cache_headers_ok(ngx_aai_cache_entry_t *e)
{
    u_char      *p, *name, *value;
    size_t       nlen, vlen, j;
    ngx_uint_t   i;

    static uint32_t  tchar[] = {
        0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

                    /* ?>=< ;:98 7654 3210  /.-, +*)( '&%$ #"!  */
        0x03ff6cfa, /* 0000 0011 1111 1111  0110 1100 1111 1010 */

                    /* _^]\ [ZYX WVUT SRQP  ONML KJIH GFED CBA@ */
        0xc7fffffe, /* 1100 0111 1111 1111  1111 1111 1111 1110 */

                    /*  ~}| {zyx wvut srqp  onml kjih gfed cba` */
        0x57ffffff, /* 0101 0111 1111 1111  1111 1111 1111 1111 */

        0x00000000, 0x00000000, 0x00000000, 0x00000000
    };

    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ngx_aai_cache_get16(p);
        name = p + 2;
        p = name + nlen + 1;

        vlen = ngx_aai_cache_get32(p);
        value = p + 4;
        p = value + vlen + 1;

        if (nlen == 0) {
            return NGX_ERROR;
        }

        for (j = 0; j < nlen; j++) {
            if (!(tchar[name[j] >> 5] & (1U << (name[j] & 0x1f)))) {
                return NGX_ERROR;
            }
        }

        for (j = 0; j < vlen; j++) {
            if ((value[j] < 0x20 && value[j] != '\t') || value[j] == 0x7f) {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/*
 * Whether the request carries a credential: a variable of
 * aai_cache_credentials is not empty.
 */

static ngx_uint_t
ngx_http_aai_cache_credentialed(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf)
{
    ngx_int_t                  *index;
    ngx_uint_t                  i;
    ngx_http_variable_value_t  *vv;

    if (alcf->credentials == NULL) {
        return 0;
    }

    index = alcf->credentials->elts;

    for (i = 0; i < alcf->credentials->nelts; i++) {
        vv = ngx_http_get_indexed_variable(r, index[i]);

        if (vv && !vv->not_found && vv->len) {
            return 1;
        }
    }

    return 0;
}


/* whether the entry may be served to a request with a credential */

static ngx_uint_t
ngx_http_aai_cache_shareable(ngx_aai_cache_entry_t *e)
{
    u_char                   *p, *name;
    size_t                    nlen;
    ngx_str_t                 value;
    ngx_uint_t                i;
    ngx_http_aai_cache_cc_t   cc;

    ngx_http_aai_cache_cc_init(&cc);

    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ngx_aai_cache_get16(p);
        name = p + 2;
        p = name + nlen + 1;

        value.len = ngx_aai_cache_get32(p);
        value.data = p + 4;
        p = value.data + value.len + 1;

        if (nlen == 13
            && ngx_strncasecmp(name, (u_char *) "Cache-Control", 13) == 0)
        {
            ngx_http_aai_cache_cc_parse(&value, &cc);
        }
    }

    return ngx_http_aai_cache_cc_shareable(&cc);
}


/*
 * A request whose response may be the client's own (a part, or an answer
 * to its preconditions) takes no lock: others would wait for a response
 * that is not stored.  If-Modified-Since and If-None-Match are removed
 * instead (see ngx_http_aai_cache_unconditional()).
 */

static const char *
ngx_http_aai_cache_own_request(ngx_http_request_t *r)
{
    if (r->headers_in.range || r->headers_in.if_range) {
        return "range";
    }

    if (r->headers_in.if_match || r->headers_in.if_unmodified_since) {
        return "precondition";
    }

    return NULL;
}


static ngx_uint_t
ngx_http_aai_cache_updating_ok(ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *e)
{
    if (ngx_http_aai_cache_no_stale(e)) {
        return 0;
    }

    if (alcf->use_stale & NGX_HTTP_AAI_CACHE_STALE_UPDATING) {
        return 1;
    }

    return e->swr
           && ngx_http_aai_cache_now() < e->fresh_until + e->swr * 1000ULL;
}


static void
ngx_http_aai_cache_forward(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t status)
{
    ctx->status = status;
    ctx->fwd = status;
    ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
    ctx->capture = 1;

    ngx_http_aai_cache_unconditional(r);

    if (ctx->stale && status == NGX_HTTP_AAI_CACHE_EXPIRED) {
        ngx_http_aai_cache_conditional(r, ctx, ctx->stale);
    }

    if (ctx->suspended) {
        ngx_http_aai_cache_resume(r, ctx);
    }
}


static void
ngx_http_aai_cache_resume(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ctx->suspended = 0;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
}


/*
 * A 304 to a conditional request cannot be stored: the upstream gets the
 * request without its conditions, and the client the whole response.
 * Range requests are passed as they are (a 206 is not stored): they are
 * mostly for bodies too large to be cached anyway.
 */

static void
ngx_http_aai_cache_unconditional(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_t        headers;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *nh;

    if (r->headers_in.if_modified_since == NULL
        && r->headers_in.if_none_match == NULL)
    {
        return;
    }

    if (ngx_list_init(&headers, r->pool, 20, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if ((h[i].key.len == 17
             && ngx_strncasecmp(h[i].key.data,
                                (u_char *) "If-Modified-Since", 17) == 0)
            || (h[i].key.len == 13
                && ngx_strncasecmp(h[i].key.data,
                                   (u_char *) "If-None-Match", 13) == 0))
        {
            continue;
        }

        nh = ngx_list_push(&headers);
        if (nh == NULL) {
            return;
        }

        *nh = h[i];
    }

    r->headers_in.headers = headers;
    r->disable_not_modified = 1;
}


static void
ngx_http_aai_cache_serve(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e,
    ngx_uint_t status)
{
    ngx_int_t  rc;

    ctx->status = status;
    ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
    ctx->served = 1;
    ctx->suspended = 0;

    r->read_event_handler = ngx_http_block_reading;

    rc = ngx_http_aai_cache_send(r, ctx, e);

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_aai_cache_send(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_aai_cache_entry_t *e)
{
    ngx_int_t                        rc;
    ngx_buf_t                       *b;
    ngx_chain_t                      out;
    ngx_http_aai_cache_main_conf_t  *amcf;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    r->headers_out.status = e->status;

    if (ngx_http_aai_cache_restore(r, e) != NGX_OK
        || ngx_http_aai_cache_status_header(r, ctx, e) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (e->status == NGX_HTTP_OK
        && !(e->flags & NGX_AAI_CACHE_HEADER_ONLY))
    {
        r->allow_ranges = 1;
    }

    /*
     * RFC 9110, 13.2.2: If-Modified-Since is evaluated only without
     * If-None-Match (nginx's not modified filter would test it first)
     */

    if (r->headers_in.if_none_match) {
        r->headers_in.if_modified_since = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (e->body_len) {
        b->pos = e->body;
        b->last = e->body + e->body_len;
        b->memory = 1;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
    ngx_aai_metrics_inc(amcf->metrics, amcf->m_bytes, e->body_len);

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_aai_cache_restore(ngx_http_request_t *r,
    ngx_aai_cache_entry_t *e)
{
    u_char           *p;
    size_t            nlen, vlen;
    ngx_uint_t        i;
    ngx_table_elt_t  *h;
    uint64_t          now, age;
    u_char           *name, *value;

    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ((size_t) p[0] << 8) | p[1];
        name = p + 2;
        p = name + nlen + 1;

        vlen = ((size_t) p[0] << 24) | ((size_t) p[1] << 16)
               | ((size_t) p[2] << 8) | p[3];
        value = p + 4;
        p = value + vlen + 1;

        if (nlen == 12
            && ngx_strncasecmp(name, (u_char *) "Content-Type", 12) == 0)
        {
            r->headers_out.content_type.data = value;
            r->headers_out.content_type.len = vlen;
            r->headers_out.content_type_len = vlen;
            r->headers_out.content_type_lowcase = NULL;
            continue;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        h->key.data = name;
        h->key.len = nlen;
        h->value.data = value;
        h->value.len = vlen;
#if (nginx_version >= 1023000)
        h->next = NULL;
#endif

        h->lowcase_key = ngx_pnalloc(r->pool, nlen);
        if (h->lowcase_key == NULL) {
            return NGX_ERROR;
        }

        ngx_strlow(h->lowcase_key, name, nlen);

        if (nlen == 13
            && ngx_strncmp(h->lowcase_key, "last-modified", 13) == 0)
        {
            r->headers_out.last_modified = h;
            r->headers_out.last_modified_time =
                                           ngx_parse_http_time(value, vlen);

        } else if (nlen == 4
                   && ngx_strncmp(h->lowcase_key, "etag", 4) == 0)
        {
            r->headers_out.etag = h;

        } else if (nlen == 4
                   && ngx_strncmp(h->lowcase_key, "date", 4) == 0)
        {
            /* the origin's Date, not the time of the hit (RFC 9110, 6.6.1) */
            r->headers_out.date = h;

        } else if (nlen == 16
                   && ngx_strncmp(h->lowcase_key, "content-encoding", 16)
                      == 0)
        {
            r->headers_out.content_encoding = h;
        }
    }

    r->headers_out.content_length_n =
                   (e->flags & NGX_AAI_CACHE_HEADER_ONLY)
                   ? e->content_length : (off_t) e->body_len;

    /* Age (RFC 9111, 5.1): its age on arrival and the time since */

    now = ngx_http_aai_cache_now();
    age = now > e->stored ? (now - e->stored) / 1000 : 0;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (h->value.data == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Age");
    h->lowcase_key = (u_char *) "age";
    h->value.len = ngx_sprintf(h->value.data, "%uL", age) - h->value.data;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/*
 * proxy_cache_background_update's way: a background subrequest that clones
 * this request from this phase on; its response is stored, never sent.
 */

static ngx_int_t
ngx_http_aai_cache_background(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_http_request_t        *sr;
    ngx_http_aai_cache_ctx_t  *sctx;

    if (r == r->main) {
        r->preserve_body = 1;
    }

    if (ngx_http_subrequest(r, &r->uri, &r->args, &sr, NULL,
                            NGX_HTTP_SUBREQUEST_CLONE
                            |NGX_HTTP_SUBREQUEST_BACKGROUND)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* as proxy_cache_convert_head: the whole response is stored */

    if (sr->method == NGX_HTTP_HEAD) {
        sr->method = NGX_HTTP_GET;
        sr->method_name = ngx_http_core_get_method;
    }

    sctx = ngx_http_aai_cache_create_ctx(sr);
    if (sctx == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(sctx->digest, ctx->digest, SHA256_DIGEST_LENGTH);
    ngx_memcpy(sctx->token, ctx->token, sizeof(ctx->token));
    sctx->key = ctx->key;
    sctx->vkey = ctx->vkey;
    sctx->vary = ctx->vary;
    sctx->lock_key = ctx->lock_key;
    sctx->credentialed = ctx->credentialed;

    /* the subrequest holds the lock now */

    sctx->lock_held = 1;
    sctx->lock_until = ctx->lock_until;
    ctx->lock_held = 0;

    ngx_http_aai_cache_lease(sctx);

    sctx->bg = 1;
    sctx->status = NGX_HTTP_AAI_CACHE_EXPIRED;
    sctx->fwd = NGX_HTTP_AAI_CACHE_EXPIRED;
    sctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
    sctx->capture = 1;

    ngx_http_aai_cache_unconditional(sr);
    ngx_http_aai_cache_conditional(sr, sctx, ctx->stale);

    return NGX_OK;
}


/*
 * Waiting for the holder of the lock: woken by its message, polling every
 * NGX_HTTP_AAI_CACHE_POLL ms in case the message was lost (pub/sub
 * connection down), up to aai_cache_lock_timeout.
 */

static void
ngx_http_aai_cache_wait(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx)
{
    uint32_t                        hash;
    ngx_uint_t                      i;
    ngx_msec_t                      timer;
    ngx_queue_t                    *bucket;
    ngx_http_aai_cache_note_t      *n;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (ctx->deadline == 0) {
        ctx->deadline = ngx_current_msec + alcf->lock_timeout;

        if (ctx->deadline == 0) {
            ctx->deadline = 1;
        }
    }

    hash = ngx_crc32_short(ctx->lock_key.data, ctx->lock_key.len);

    /*
     * The holder may have published after our SET went out but before its
     * reply came: the message was seen then, and noted.
     */

    for (i = 0; i < NGX_HTTP_AAI_CACHE_NOTES; i++) {
        n = &ngx_http_aai_cache_notes[i];

        if (n->stored
            && n->hash == hash
            && n->seq > ctx->lock_seq)
        {
            ngx_http_aai_cache_wake(ctx, n->stored == 1
                                         ? NGX_HTTP_AAI_CACHE_WAKE_STORED
                                         : NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED);
            return;
        }
    }

    ctx->state = NGX_HTTP_AAI_CACHE_ST_WAIT;
    ctx->waiting = 1;

    bucket = &ngx_http_aai_cache_waiters[hash % NGX_HTTP_AAI_CACHE_BUCKETS];
    ngx_queue_insert_tail(bucket, &ctx->queue);

    ctx->wait_ev.handler = ngx_http_aai_cache_wait_handler;
    ctx->wait_ev.data = ctx;
    ctx->wait_ev.log = r->connection->log;

    timer = ctx->deadline - ngx_current_msec;

    if ((ngx_msec_int_t) timer <= 0) {
        timer = 1;
    }

    if (timer > NGX_HTTP_AAI_CACHE_POLL) {
        timer = NGX_HTTP_AAI_CACHE_POLL;
    }

    ngx_add_timer(&ctx->wait_ev, timer);
}


static void
ngx_http_aai_cache_wait_handler(ngx_event_t *ev)
{
    ngx_connection_t          *c;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ev->data;
    c = ctx->request->connection;

    if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) <= 0) {
        ngx_http_aai_cache_wake(ctx, NGX_HTTP_AAI_CACHE_WAKE_TIMEOUT);

    } else {
        ngx_http_aai_cache_wake(ctx, NGX_HTTP_AAI_CACHE_WAKE_POLL);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_cache_wake(ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t how)
{
    ngx_int_t            rc;
    ngx_uint_t           status;
    ngx_http_request_t  *r;

    r = ctx->request;

    ngx_http_aai_cache_unwait(ctx);

    status = ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                        : NGX_HTTP_AAI_CACHE_MISS;

    switch (how) {

    case NGX_HTTP_AAI_CACHE_WAKE_TIMEOUT:
        ctx->detail = "lock-timeout";
        ngx_http_aai_cache_forward(r, ctx, status);
        return;

    case NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED:
        ctx->collapsed = 1;
        ctx->detail = "lock-not-stored";
        ngx_http_aai_cache_forward(r, ctx, status);
        return;

    case NGX_HTTP_AAI_CACHE_WAKE_STORED:
        ctx->collapsed = 1;
        break;

    default: /* NGX_HTTP_AAI_CACHE_WAKE_POLL */
        break;
    }

    rc = ngx_http_aai_cache_lookup(r, ctx);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc == NGX_ERROR) {
        ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->detail = "redis-unavailable";
    ngx_http_aai_cache_forward(r, ctx, status);
}


static void
ngx_http_aai_cache_unwait(ngx_http_aai_cache_ctx_t *ctx)
{
    if (ctx->waiting) {
        ngx_queue_remove(&ctx->queue);
        ctx->waiting = 0;
    }

    if (ctx->wait_ev.timer_set) {
        ngx_del_timer(&ctx->wait_ev);
    }
}


/* "1 K:l" (stored) or "0 K:l" (not stored), from the holder of K:l */

static void
ngx_http_aai_cache_message(ngx_str_t *channel, ngx_str_t *message,
    void *data)
{
    uint32_t                    hash;
    ngx_str_t                   key;
    ngx_uint_t                  stored;
    ngx_queue_t                 woken, *q, *next, *bucket;
    ngx_connection_t           *c;
    ngx_http_aai_cache_ctx_t   *ctx;
    ngx_http_aai_cache_note_t  *n;

    if (message->len < 3 || message->data[1] != ' ') {
        return;
    }

    stored = (message->data[0] == '1');

    key.data = message->data + 2;
    key.len = message->len - 2;

    hash = ngx_crc32_short(key.data, key.len);

    n = &ngx_http_aai_cache_notes[ngx_http_aai_cache_note_seq
                                  % NGX_HTTP_AAI_CACHE_NOTES];
    n->hash = hash;
    n->seq = ++ngx_http_aai_cache_note_seq;
    n->stored = stored ? 1 : 2;

    bucket = &ngx_http_aai_cache_waiters[hash % NGX_HTTP_AAI_CACHE_BUCKETS];

    ngx_queue_init(&woken);

    for (q = ngx_queue_head(bucket);
         q != ngx_queue_sentinel(bucket);
         q = next)
    {
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_aai_cache_ctx_t, queue);

        if (ctx->lock_key.len == key.len
            && ngx_memcmp(ctx->lock_key.data, key.data, key.len) == 0)
        {
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&woken, q);
        }
    }

    /*
     * Each stays in "woken" until its turn: if one of them goes away
     * meanwhile, its cleanup takes it out.
     */

    while (!ngx_queue_empty(&woken)) {
        q = ngx_queue_head(&woken);
        ngx_queue_remove(q);

        ctx = ngx_queue_data(q, ngx_http_aai_cache_ctx_t, queue);
        ctx->waiting = 0;

        c = ctx->request->connection;

        ngx_http_aai_cache_wake(ctx, stored
                                     ? NGX_HTTP_AAI_CACHE_WAKE_STORED
                                     : NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED);

        ngx_http_run_posted_requests(c);
    }
}


static void
ngx_http_aai_cache_release(ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t stored,
    ngx_log_t *log)
{
    ngx_str_t                        argv[7];
    ngx_http_aai_cache_main_conf_t  *amcf;

    if (!ctx->lock_held) {
        return;
    }

    ctx->lock_held = 0;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL || amcf->redis == NULL) {
        return;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_release_script;
    ngx_str_set(&argv[2], "1");
    argv[3] = ctx->lock_key;
    argv[4].data = ctx->token;
    argv[4].len = sizeof(ctx->token);
    ngx_str_set(&argv[5], NGX_HTTP_AAI_CACHE_CHANNEL);
    argv[6].data = ctx->lock_key.data - 2;
    argv[6].len = ctx->lock_key.len + 2;
    argv[6].data[0] = stored ? '1' : '0';
    argv[6].data[1] = ' ';

    (void) ngx_aai_redis_send(amcf->redis, log, 7, argv,
                              ngx_http_aai_cache_release_handler, NULL);
}


static ngx_msec_t
ngx_http_aai_cache_lease_time(ngx_http_request_t *r)
{
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    return ngx_min(alcf->lock_timeout, NGX_HTTP_AAI_CACHE_LEASE);
}


static void
ngx_http_aai_cache_lease(ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_msec_t  lease;

    lease = ngx_http_aai_cache_lease_time(ctx->request);

    ctx->lease_ev.handler = ngx_http_aai_cache_renew;
    ctx->lease_ev.data = ctx;
    ctx->lease_ev.log = ctx->request->connection->log;
    ctx->lease_ev.cancelable = 1;

    ngx_add_timer(&ctx->lease_ev, ngx_max(lease / 3, 1));
}


/* the holder renews its lease until it lets go or lock_timeout is over */

static void
ngx_http_aai_cache_renew(ngx_event_t *ev)
{
    ngx_str_t                        argv[6];
    ngx_msec_t                       lease;
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           px[NGX_INT_T_LEN];

    ctx = ev->data;
    amcf = ngx_http_aai_cache_worker;

    if (!ctx->lock_held
        || amcf == NULL
        || (ngx_msec_int_t) (ctx->lock_until - ngx_current_msec) <= 0)
    {
        return;
    }

    lease = ngx_http_aai_cache_lease_time(ctx->request);

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_renew_script;
    ngx_str_set(&argv[2], "1");
    argv[3] = ctx->lock_key;
    argv[4].data = ctx->token;
    argv[4].len = sizeof(ctx->token);
    argv[5].data = px;
    argv[5].len = ngx_sprintf(px, "%M", lease) - px;

    (void) ngx_aai_redis_send(amcf->redis, ev->log, 6, argv,
                              ngx_http_aai_cache_release_handler, NULL);

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


/*
 * The SET of ctx's lock had no reply (a timeout, the connection lost): it
 * may still run.  The lock is deleted if it is still ctx's (compare and
 * delete with its token), as soon as Redis takes a command again, and its
 * waiters are woken; the lease bounds it in any case.
 */

static void
ngx_http_aai_cache_orphan(ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_uint_t                    i;
    ngx_http_aai_cache_orphan_t  *o;

    if (ctx->lock_key.len + 2 > NGX_HTTP_AAI_CACHE_ORPHAN_KEY) {
        return;
    }

    for (i = 0; i < NGX_HTTP_AAI_CACHE_ORPHANS; i++) {
        o = &ngx_http_aai_cache_orphans[i];

        if (o->len == 0) {
            goto found;
        }
    }

    /* all taken: the lease alone bounds this one */

    return;

found:

    o->until = ngx_current_msec + ngx_http_aai_cache_lease_time(ctx->request);
    o->len = ctx->lock_key.len + 2;
    o->msg[0] = '0';
    o->msg[1] = ' ';
    ngx_memcpy(o->msg + 2, ctx->lock_key.data, ctx->lock_key.len);
    ngx_memcpy(o->token, ctx->token, sizeof(ctx->token));

    if (!ngx_http_aai_cache_orphans_ev.timer_set) {
        ngx_add_timer(&ngx_http_aai_cache_orphans_ev,
                      NGX_HTTP_AAI_CACHE_ORPHAN_RETRY);
    }
}


static void
ngx_http_aai_cache_orphans_handler(ngx_event_t *ev)
{
    ngx_str_t                        argv[7];
    ngx_uint_t                       i, left;
    ngx_http_aai_cache_orphan_t     *o;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL) {
        return;
    }

    left = 0;

    for (i = 0; i < NGX_HTTP_AAI_CACHE_ORPHANS; i++) {
        o = &ngx_http_aai_cache_orphans[i];

        if (o->len == 0) {
            continue;
        }

        if ((ngx_msec_int_t) (o->until - ngx_current_msec) <= 0) {
            o->len = 0;
            continue;
        }

        ngx_str_set(&argv[0], "EVAL");
        argv[1] = ngx_http_aai_cache_release_script;
        ngx_str_set(&argv[2], "1");
        argv[3].data = o->msg + 2;
        argv[3].len = o->len - 2;
        argv[4].data = o->token;
        argv[4].len = sizeof(o->token);
        ngx_str_set(&argv[5], NGX_HTTP_AAI_CACHE_CHANNEL);
        argv[6].data = o->msg;
        argv[6].len = o->len;

        if (ngx_aai_redis_send(amcf->redis, ev->log, 7, argv,
                               ngx_http_aai_cache_release_handler, NULL)
            == NULL)
        {
            left++;
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "aai cache orphaned lock released: %*s",
                       o->len - 2, o->msg + 2);

        o->len = 0;
    }

    if (left) {
        ngx_add_timer(ev, NGX_HTTP_AAI_CACHE_ORPHAN_RETRY);
    }
}


static ngx_int_t
ngx_http_aai_cache_header_filter(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    const char                     *reason;
    ngx_http_aai_cache_ctx_t       *ctx;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL) {

        /* a successful unsafe request invalidates (RFC 9111, 4.4) */

        if (r == r->main
            && !(r->method & NGX_HTTP_AAI_CACHE_SAFE)
            && r->headers_out.status >= 200
            && r->headers_out.status < 400
            && !r->err_status)
        {
            alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

            if (alcf->enable && !(r->method & alcf->methods)) {
                ngx_http_aai_cache_invalidate(r, alcf);
            }
        }

        return ngx_http_next_header_filter(r);
    }

    if (ctx->request != r
        || ctx->served
        || ctx->state != NGX_HTTP_AAI_CACHE_ST_DONE)
    {
        return ngx_http_next_header_filter(r);
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    ctx->fwd_status = r->headers_out.status;

    if (ctx->cond) {
        rc = ngx_http_aai_cache_revalidated(r, ctx, alcf);

        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    if (ctx->stale && ngx_http_aai_cache_stale_on_error(r, ctx, alcf)) {
        return ngx_http_aai_cache_swap_header(r, ctx);
    }

    if (ctx->capture) {
        ctx->capture = 0;

        reason = ngx_http_aai_cache_decide(r, ctx, alcf);

        if (reason == NULL) {
            if (ngx_http_aai_cache_begin(r, ctx, alcf) != NGX_OK) {
                return NGX_ERROR;
            }

        } else {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai cache not stored: %s", reason);

            ctx->detail = reason;
            ngx_http_aai_cache_release(ctx, 0, r->connection->log);
        }
    }

    if (r == r->main
        && ngx_http_aai_cache_status_header(r, ctx, NULL) != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = ngx_http_next_header_filter(r);

    /* no body follows (HEAD, 204): the response is complete */

    if (ctx->capturing && r->header_only && rc != NGX_ERROR) {
        ctx->header_only = 1;
        ngx_http_aai_cache_store(r, ctx);
    }

    return rc;
}


/*
 * After a successful unsafe request, the entries of its URI and of the
 * Location and Content-Location on the same host (RFC 9111, 4.4), with all
 * their Vary variants, are deleted from Redis: from every instance.  The
 * keys are made as for the request with its method and URI replaced
 * (GET, HEAD, ... as aai_cache_methods; $request_uri, $uri, $args).
 */

static void
ngx_http_aai_cache_invalidate(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf)
{
    u_char                          *num;
    size_t                           hlen;
    ngx_str_t                        uri, *argv, *host;
    ngx_uint_t                       n, i;
    ngx_table_elt_t                 *h;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return;
    }

    argv = ngx_palloc(r->pool,
                      (3 + NGX_HTTP_AAI_CACHE_MAX_INVALIDATE)
                      * sizeof(ngx_str_t));
    num = ngx_pnalloc(r->pool, 1);
    if (argv == NULL || num == NULL) {
        return;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_purge_script;
    n = 0;

    if (ngx_http_aai_cache_invalidate_uri(r, alcf, &r->unparsed_uri, argv,
                                          &n)
        != NGX_OK)
    {
        return;
    }

    host = r->headers_in.server.len ? &r->headers_in.server : NULL;

    for (i = 0; i < 2; i++) {

        /* a relative Location is not r->headers_out.location */

        h = (i == 0) ? ngx_aai_cache_find_header(&r->headers_out.headers,
                                                 "Location", 8, NULL)
                     : ngx_aai_cache_find_header(&r->headers_out.headers,
                                                 "Content-Location", 16,
                                                 NULL);
        if (h == NULL || h->value.len == 0) {
            continue;
        }

        uri = h->value;

        if (uri.data[0] != '/') {

            /* absolute: the same host only */

            if (host == NULL) {
                continue;
            }

            if (uri.len > 7 && ngx_strncasecmp(uri.data, (u_char *) "http://",
                                               7) == 0)
            {
                uri.data += 7;
                uri.len -= 7;

            } else if (uri.len > 8
                       && ngx_strncasecmp(uri.data, (u_char *) "https://", 8)
                          == 0)
            {
                uri.data += 8;
                uri.len -= 8;

            } else {
                continue;
            }

            hlen = 0;

            while (hlen < uri.len && uri.data[hlen] != '/'
                   && uri.data[hlen] != ':')
            {
                hlen++;
            }

            if (hlen != host->len
                || ngx_strncasecmp(uri.data, host->data, hlen) != 0)
            {
                continue;
            }

            while (hlen < uri.len && uri.data[hlen] != '/') {
                hlen++;
            }

            uri.data += hlen;
            uri.len -= hlen;

            if (uri.len == 0) {
                continue;
            }

        } else if (uri.len > 1 && uri.data[1] == '/') {
            continue;
        }

        if (ngx_http_aai_cache_invalidate_uri(r, alcf, &uri, argv, &n)
            != NGX_OK)
        {
            return;
        }
    }

    *num = (u_char) ('0' + n);
    argv[2].data = num;
    argv[2].len = 1;

    for (i = 0; i < n; i++) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache invalidate \"%V\"", &argv[3 + i]);
    }

    /* nobody waits for it: the reply may come after the request is gone */

    (void) ngx_aai_redis_send(amcf->redis, ngx_cycle->log, 3 + n, argv,
                              ngx_http_aai_cache_release_handler, NULL);
}


/* the keys of one URI (path and query) for each cached method, to argv */

static ngx_int_t
ngx_http_aai_cache_invalidate_uri(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *uri, ngx_str_t *argv,
    ngx_uint_t *n)
{
    u_char                     *q;
    size_t                      vsize;
    ngx_int_t                   rc;
    ngx_str_t                   key, method, unparsed, path, args;
    ngx_uint_t                  i, j;
    ngx_conf_bitmask_t         *m;
    ngx_http_variable_value_t  *saved;
    ngx_http_core_main_conf_t  *cmcf;
    u_char                      digest[SHA256_DIGEST_LENGTH];

    /*
     * $request_uri and the like keep their first value: the request's
     * are put aside, and restored when the keys are made
     */

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);
    vsize = cmcf->variables.nelts * sizeof(ngx_http_variable_value_t);

    saved = ngx_palloc(r->pool, vsize ? vsize : 1);
    if (saved == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(saved, r->variables, vsize);

    for (i = 0; i < cmcf->variables.nelts; i++) {
        r->variables[i].valid = 0;
        r->variables[i].not_found = 0;
    }

    method = r->main->method_name;
    unparsed = r->unparsed_uri;
    path = r->uri;
    args = r->args;

    r->unparsed_uri = *uri;
    r->uri = *uri;
    ngx_str_null(&r->args);

    q = ngx_strlchr(uri->data, uri->data + uri->len, '?');

    if (q) {
        r->uri.len = q - uri->data;
        r->args.data = q + 1;
        r->args.len = uri->data + uri->len - (q + 1);
    }

    rc = NGX_OK;

    for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {

        if (!(alcf->methods & m->mask)) {
            continue;
        }

        r->main->method_name = m->name;

        rc = ngx_http_aai_cache_make_key(r, alcf, &key, digest);

        if (rc != NGX_OK) {
            break;
        }

        for (j = 0; j < *n; j++) {
            if (argv[3 + j].len == key.len
                && ngx_memcmp(argv[3 + j].data, key.data, key.len) == 0)
            {
                break;
            }
        }

        if (j == *n && *n < NGX_HTTP_AAI_CACHE_MAX_INVALIDATE) {
            argv[3 + (*n)++] = key;
        }
    }

    r->main->method_name = method;
    r->unparsed_uri = unparsed;
    r->uri = path;
    r->args = args;

    ngx_memcpy(r->variables, saved, vsize);

    return rc;
}


/*
 * Whether and how long the response may be stored.  NULL if it may (with
 * ctx->fresh_until, swr, sie, store_key, store_vary set), else why not.
 */

static const char *
ngx_http_aai_cache_decide(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf)
{
    ngx_str_t                        names;
    ngx_uint_t                       n;
    ngx_list_t                      *raw;
    const char                      *reason;
    ngx_table_elt_t                 *h;
    ngx_http_aai_cache_main_conf_t  *amcf;
    ngx_uint_t                       i;
    ngx_str_t                       *fname;
    ngx_http_aai_cache_freshness_t   f;
    ngx_str_t                        cc[NGX_HTTP_AAI_CACHE_MAX_CC];
    ngx_str_t                        targeted[NGX_HTTP_AAI_CACHE_MAX_CC];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    /* nginx's own error pages: the upstream failed */

    if (r->err_status) {
        return "error";
    }

    /*
     * The answer to a precondition is the client's own; a response to a
     * range request is stored if it is the whole representation (200: 206
     * and 416 never are).
     */

    if (r->headers_in.if_match || r->headers_in.if_unmodified_since) {
        return "precondition";
    }

    if (ngx_aai_cache_find_header(&r->headers_out.headers, "Set-Cookie", 10,
                                NULL))
    {
        return "set-cookie";
    }

    switch (ngx_aai_cache_vary_names(r->pool, &r->headers_out.headers,
                                     &names))
    {
    case NGX_OK:
        break;
    case NGX_DECLINED:
        return "vary";
    default:
        return "no-memory";
    }

    ngx_memzero(&f, sizeof(ngx_http_aai_cache_freshness_t));

    f.now = ngx_http_aai_cache_now();
    f.status = r->headers_out.status;
    f.valid = ngx_http_aai_cache_valid_time(alcf, r->headers_out.status);
    f.credentialed = ctx->credentialed;

    n = 0;
    h = NULL;

    while ((h = ngx_aai_cache_find_header(&r->headers_out.headers,
                                        "Cache-Control", 13, h))
           != NULL)
    {
        if (n == NGX_HTTP_AAI_CACHE_MAX_CC) {
            return "cache-control";
        }

        cc[n++] = h->value;
    }

    f.cache_control = cc;
    f.ncache_control = n;

    /* the first targeted field present (RFC 9213) */

    fname = alcf->control_fields ? alcf->control_fields->elts : NULL;
    n = 0;

    for (i = 0; alcf->control_fields && i < alcf->control_fields->nelts;
         i++)
    {
        h = NULL;

        while ((h = ngx_aai_cache_find_header(&r->headers_out.headers,
                                             (char *) fname[i].data,
                                             fname[i].len, h))
               != NULL)
        {
            if (n == NGX_HTTP_AAI_CACHE_MAX_CC) {
                return "cache-control";
            }

            targeted[n++] = h->value;
        }

        if (n) {
            break;
        }
    }

    f.targeted = targeted;
    f.ntargeted = n;

    h = ngx_aai_cache_find_header(&r->headers_out.headers, "Expires", 7,
                                  NULL);
    f.expires = h ? &h->value : NULL;

    h = ngx_aai_cache_find_header(&r->headers_out.headers, "Age", 3, NULL);
    f.age = h ? &h->value : NULL;

    h = ngx_http_aai_cache_origin_date(r);
    f.date = h ? &h->value : NULL;

    /* X-Accel-Expires, which the proxy module hides from the client */

    raw = r->upstream ? &r->upstream->headers_in.headers
                      : &r->headers_out.headers;

    h = ngx_aai_cache_find_header(raw, "X-Accel-Expires", 15, NULL);
    f.x_accel_expires = h ? &h->value : NULL;

    reason = ngx_http_aai_cache_freshness(&f);

    reason = ngx_http_aai_cache_keep(r, ctx, alcf, &f, reason);

    if (reason) {
        return reason;
    }

    if (alcf->no_store) {
        switch (ngx_http_test_predicates(r, alcf->no_store)) {
        case NGX_OK:
            break;
        case NGX_DECLINED:
            return "no-store-rule";
        default:
            return "no-memory";
        }
    }

    if (r->headers_out.content_length_n > (off_t) alcf->max_size) {
        return "too-large";
    }

    if (!ngx_aai_redis_available(amcf->redis)) {
        return "redis-unavailable";
    }

    ctx->fresh_until = f.fresh_until;
    ctx->age = f.initial_age;
    ctx->swr = f.swr;
    ctx->sie = f.sie;

    /* where it goes */

    if (names.len) {
        if (ctx->vkey.len
            && ctx->vary.len == names.len
            && ngx_memcmp(ctx->vary.data, names.data, names.len) == 0)
        {
            ctx->store_key = ctx->vkey;

        } else if (ngx_http_aai_cache_variant_key(r, ctx, &names,
                                                  &ctx->store_key)
                   != NGX_OK)
        {
            return "no-memory";
        }

        ctx->store_vary = names;
        ngx_http_aai_cache_vary_set(ctx->digest, &names);

    } else {
        ctx->store_key = ctx->key;

        if (ctx->vkey.len) {
            ngx_http_aai_cache_vary_forget(ctx->digest);
        }
    }

    return NULL;
}


/* the aai_cache_valid time of the status, or NGX_HTTP_AAI_CACHE_* */

static ngx_int_t
ngx_http_aai_cache_valid_time(ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_uint_t status)
{
    ngx_uint_t                   i;
    ngx_http_aai_cache_valid_t  *v;

    if (status == NGX_HTTP_PARTIAL_CONTENT
        || status == NGX_HTTP_NOT_MODIFIED
        || status < NGX_HTTP_OK)
    {
        return NGX_HTTP_AAI_CACHE_NOT_VALID;
    }

    if (alcf->valid == NULL) {
        for (i = 0; ngx_http_aai_cache_heuristic[i]; i++) {
            if (ngx_http_aai_cache_heuristic[i] == status) {
                return NGX_HTTP_AAI_CACHE_NO_TIME;
            }
        }

        return NGX_HTTP_AAI_CACHE_NOT_VALID;
    }

    v = alcf->valid->elts;

    for (i = 0; i < alcf->valid->nelts; i++) {
        if (v[i].status == status) {
            return v[i].valid;
        }
    }

    for (i = 0; i < alcf->valid->nelts; i++) {
        if (v[i].status == 0) {
            return v[i].valid;
        }
    }

    return NGX_HTTP_AAI_CACHE_NOT_VALID;
}


/* serializes the status and headers: the body is appended as it passes */

static ngx_int_t
ngx_http_aai_cache_begin(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_http_aai_cache_loc_conf_t *alcf)
{
    u_char        *p;
    size_t         hlen, cap;
    ngx_uint_t     i;
    ngx_array_t    headers;
    ngx_keyval_t  *kv;

    if (ngx_array_init(&headers, r->pool, 16, sizeof(ngx_keyval_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_aai_cache_collect(r, &headers) != NGX_OK) {
        return NGX_ERROR;
    }

    kv = headers.elts;
    hlen = 0;

    for (i = 0; i < headers.nelts; i++) {
        if (kv[i].key.len > 0xffff || kv[i].value.len > 0xffffffff) {
            ctx->detail = "header-too-large";
            return NGX_OK;
        }

        hlen += 2 + kv[i].key.len + 1 + 4 + kv[i].value.len + 1;
    }

    if (headers.nelts > 0xffff || hlen > 0xffffffff) {
        ctx->detail = "header-too-large";
        return NGX_OK;
    }

    ctx->header_only = (r->method == NGX_HTTP_HEAD);
    ctx->clen = r->headers_out.content_length_n;

    if (ctx->header_only) {
        cap = 0;

    } else if (ctx->clen >= 0) {
        cap = (size_t) ctx->clen;

    } else {
        cap = ngx_min(alcf->max_size, NGX_HTTP_AAI_CACHE_CHUNK);
    }

    ctx->size = NGX_AAI_CACHE_HDR + hlen + cap + NGX_AAI_CACHE_CRC;

    ctx->buf = ngx_alloc(ctx->size, r->connection->log);
    if (ctx->buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_aai_cache_entry_write(ctx->buf,
                                       NGX_AAI_CACHE_TYPE_ENTRY,
                                       ctx->header_only
                                       ? NGX_AAI_CACHE_HEADER_ONLY : 0,
                                       ngx_http_aai_cache_now()
                                       - ctx->age * 1000,
                                       ctx->fresh_until, ctx->swr, ctx->sie,
                                       r->headers_out.status, headers.nelts,
                                       hlen,
                                       ctx->header_only ? ctx->clen : -1,
                                       ctx->digest);

    for (i = 0; i < headers.nelts; i++) {
        *p++ = (u_char) (kv[i].key.len >> 8);
        *p++ = (u_char) kv[i].key.len;
        p = ngx_cpymem(p, kv[i].key.data, kv[i].key.len);
        *p++ = '\0';
        *p++ = (u_char) (kv[i].value.len >> 24);
        *p++ = (u_char) (kv[i].value.len >> 16);
        *p++ = (u_char) (kv[i].value.len >> 8);
        *p++ = (u_char) kv[i].value.len;

        if (kv[i].value.len) {                 /* an empty one may be NULL */
            p = ngx_cpymem(p, kv[i].value.data, kv[i].value.len);
        }

        *p++ = '\0';
    }

    ctx->len = p - ctx->buf;
    ctx->body_start = ctx->len;
    ctx->capturing = 1;
    ctx->stored = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_stale_on_error(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf)
{
    ngx_uint_t                   mask;
    ngx_aai_cache_entry_t       *e;

    switch (r->headers_out.status) {

    case NGX_HTTP_INTERNAL_SERVER_ERROR:
        mask = NGX_HTTP_AAI_CACHE_STALE_500;
        break;

    case NGX_HTTP_BAD_GATEWAY:
        mask = NGX_HTTP_AAI_CACHE_STALE_ERROR|NGX_HTTP_AAI_CACHE_STALE_502;
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        mask = NGX_HTTP_AAI_CACHE_STALE_503;
        break;

    case NGX_HTTP_GATEWAY_TIME_OUT:
        mask = NGX_HTTP_AAI_CACHE_STALE_TIMEOUT|NGX_HTTP_AAI_CACHE_STALE_504;
        break;

    default:
        return 0;
    }

    if (ngx_http_aai_cache_no_stale(ctx->stale)) {
        return 0;
    }

    if (alcf->use_stale & mask) {
        return 1;
    }

    e = ctx->stale;

    return e->sie
           && ngx_http_aai_cache_now() < e->fresh_until + e->sie * 1000ULL;
}


/* the upstream failed: the stale entry replaces its response */

static ngx_int_t
ngx_http_aai_cache_swap_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_http_headers_out_t  *ho;

    ho = &r->headers_out;

    if (ngx_list_init(&ho->headers, r->pool, 20, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ho->status = ctx->stale->status;
    ho->status_line.len = 0;

    ho->server = NULL;
    ho->date = NULL;
    ho->content_length = NULL;
    ho->content_encoding = NULL;
    ho->location = NULL;
    ho->refresh = NULL;
    ho->last_modified = NULL;
    ho->content_range = NULL;
    ho->accept_ranges = NULL;
    ho->www_authenticate = NULL;
    ho->expires = NULL;
    ho->etag = NULL;

#if (nginx_version >= 1023000)
    ho->cache_control = NULL;
    ho->link = NULL;
#else
    ho->cache_control.nelts = 0;
    ho->link.nelts = 0;
#endif

    ngx_str_null(&ho->content_type);
    ngx_str_null(&ho->charset);
    ho->content_type_len = 0;
    ho->content_type_hash = 0;
    ho->content_type_lowcase = NULL;
    ho->content_length_n = -1;
    ho->content_offset = 0;
    ho->last_modified_time = -1;

    ctx->status = NGX_HTTP_AAI_CACHE_STALE;
    ctx->fwd = NGX_HTTP_AAI_CACHE_STALE;
    ctx->capture = 0;
    ctx->swap = 1;
    ctx->served = 1;
    ctx->detail = "stale-if-error";

    ngx_http_aai_cache_release(ctx, 0, r->connection->log);

    if (ngx_http_aai_cache_restore(r, ctx->stale) != NGX_OK) {
        return NGX_ERROR;
    }

    if (r == r->main
        && ngx_http_aai_cache_status_header(r, ctx, ctx->stale) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_aai_cache_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_int_t                  rc;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->request != r) {
        return ngx_http_next_body_filter(r, in);
    }

    if (ctx->swap) {
        return ngx_http_aai_cache_swap_body(r, ctx, in);
    }

    if (ctx->capturing && in) {
        (void) ngx_http_aai_cache_capture(r, ctx, in);
    }

    if (ctx->bg) {
        /* the response of a background update goes nowhere */
        ngx_http_aai_cache_consume(in);
        rc = NGX_OK;

    } else {
        rc = ngx_http_next_body_filter(r, in);
    }

    /* stored once the last buffer has been passed on */

    if (ctx->capturing && ctx->last) {
        ngx_http_aai_cache_store(r, ctx);
    }

    return rc;
}


static ngx_int_t
ngx_http_aai_cache_swap_body(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in)
{
    ngx_buf_t                       *b;
    ngx_chain_t                      out;
    ngx_aai_cache_entry_t           *e;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ngx_http_aai_cache_consume(in);

    if (ctx->swap_sent) {
        return ngx_http_next_body_filter(r, NULL);
    }

    ctx->swap_sent = 1;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    e = ctx->stale;

    if (!r->header_only && e->body_len) {
        b->pos = e->body;
        b->last = e->body + e->body_len;
        b->memory = 1;

        amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_bytes, e->body_len);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static void
ngx_http_aai_cache_consume(ngx_chain_t *in)
{
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }
}


static ngx_int_t
ngx_http_aai_cache_capture(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in)
{
    ngx_chain_t  *cl;

    for (cl = in; cl && ctx->capturing; cl = cl->next) {

        if (!ctx->header_only
            && ngx_http_aai_cache_append(r, ctx, cl->buf) != NGX_OK)
        {
            return NGX_DECLINED;
        }

        if (cl->buf->last_buf
            || (r != r->main && cl->buf->last_in_chain))
        {
            ctx->last = 1;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_append(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_buf_t *b)
{
    off_t                           size;
    size_t                          need, nsize, max;
    ssize_t                         n;
    u_char                         *nbuf;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    if (ngx_buf_special(b)) {
        return NGX_OK;
    }

    size = ngx_buf_size(b);

    if (size <= 0) {
        return NGX_OK;
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if ((off_t) (ctx->len - ctx->body_start) + size > (off_t) alcf->max_size)
    {
        ngx_http_aai_cache_abandon(r, ctx, "too large");
        return NGX_DECLINED;
    }

    need = ctx->len + (size_t) size + NGX_AAI_CACHE_CRC;

    if (need > ctx->size) {
        max = ctx->body_start + alcf->max_size + NGX_AAI_CACHE_CRC;

        nsize = ctx->size * 2;

        if (nsize < need) {
            nsize = need;
        }

        if (nsize > max) {
            nsize = max;
        }

        nbuf = ngx_alloc(nsize, r->connection->log);
        if (nbuf == NULL) {
            ngx_http_aai_cache_abandon(r, ctx, "no memory");
            return NGX_DECLINED;
        }

        ngx_memcpy(nbuf, ctx->buf, ctx->len);
        ngx_free(ctx->buf);

        ctx->buf = nbuf;
        ctx->size = nsize;
    }

    if (ngx_buf_in_memory(b)) {
        ngx_memcpy(ctx->buf + ctx->len, b->pos, (size_t) size);

    } else {
        n = ngx_read_file(b->file, ctx->buf + ctx->len, (size_t) size,
                          b->file_pos);

        if (n != (ssize_t) size) {
            ngx_http_aai_cache_abandon(r, ctx, "temporary file read");
            return NGX_DECLINED;
        }
    }

    ctx->len += (size_t) size;

    return NGX_OK;
}


static void
ngx_http_aai_cache_abandon(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, const char *why)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache not stored: %s", why);

    ctx->capturing = 0;

    if (ctx->buf) {
        ngx_free(ctx->buf);
        ctx->buf = NULL;
    }

    ngx_http_aai_cache_release(ctx, 0, r->connection->log);
}


static void
ngx_http_aai_cache_store(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx)
{
    u_char                          *p;
    size_t                           body;
    uint64_t                         now, px, extra;
    ngx_str_t                        argv[13];
    ngx_uint_t                       argc;
    ngx_aai_redis_cmd_t             *cmd;
    ngx_http_aai_cache_loc_conf_t   *alcf;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           pxs[NGX_INT64_LEN];

    ctx->capturing = 0;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);
    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    body = ctx->len - ctx->body_start;

    if (!ctx->header_only && ctx->clen >= 0 && (off_t) body != ctx->clen) {
        ngx_http_aai_cache_abandon(r, ctx, "incomplete body");
        return;
    }

    now = ngx_http_aai_cache_now();

    if (ctx->fresh_until <= now && ctx->keep == 0) {
        ngx_http_aai_cache_abandon(r, ctx, "expired");
        return;
    }

    /*
     * kept past its freshness for as long as it may be served stale, or
     * revalidated (aai_cache_revalidate_ttl)
     */

    extra = ngx_max(ctx->swr, ctx->sie);

    if (alcf->use_stale && (uint64_t) alcf->stale_ttl > extra) {
        extra = alcf->stale_ttl;
    }

    if ((uint64_t) ctx->keep > extra) {
        extra = ctx->keep;
    }

    px = (ctx->fresh_until > now ? ctx->fresh_until - now : 0)
         + extra * 1000;

    if (ctx->len + NGX_AAI_CACHE_CRC > NGX_HTTP_AAI_CACHE_REDIS_MAX) {
        ngx_http_aai_cache_abandon(r, ctx, "too large for redis");
        return;
    }

    ngx_aai_cache_entry_seal(ctx->buf, ctx->len, body);
    ctx->len += NGX_AAI_CACHE_CRC;

    argv[2].data = ctx->buf;
    argv[2].len = ctx->len;

    if (ctx->store_vary.len == 0
        && !ctx->lock_held
        && ctx->len <= NGX_HTTP_AAI_CACHE_PIECE)
    {
        ngx_str_set(&argv[0], "SET");
        argv[1] = ctx->store_key;
        ngx_str_set(&argv[3], "PX");
        argv[4].data = pxs;
        argv[4].len = ngx_sprintf(pxs, "%uL", px) - pxs;
        argc = 5;

    } else {
        ngx_str_set(&argv[0], "EVAL");
        argv[1] = ngx_http_aai_cache_store_script;
        ngx_str_set(&argv[2], "4");
        argv[3] = ctx->store_key;
        argv[4] = ctx->key;

        argv[5].len = ctx->key.len + 2;
        argv[5].data = ngx_pnalloc(r->pool, argv[5].len);
        if (argv[5].data == NULL) {
            ngx_http_aai_cache_abandon(r, ctx, "no memory");
            return;
        }

        p = ngx_cpymem(argv[5].data, ctx->key.data, ctx->key.len);
        *p++ = ':';
        *p = 'v';

        argv[6] = ctx->lock_held ? ctx->lock_key : ctx->key;
        argv[7].data = ctx->buf;
        argv[7].len = ctx->len;
        argv[8].data = pxs;
        argv[8].len = ngx_sprintf(pxs, "%uL", px) - pxs;

        ngx_str_null(&argv[9]);

        if (ctx->store_vary.len) {
            argv[9].len = NGX_AAI_CACHE_HDR + ctx->store_vary.len
                          + NGX_AAI_CACHE_CRC;
            argv[9].data = ngx_pnalloc(r->pool, argv[9].len);
            if (argv[9].data == NULL) {
                ngx_http_aai_cache_abandon(r, ctx, "no memory");
                return;
            }

            p = ngx_aai_cache_entry_write(argv[9].data,
                                               NGX_AAI_CACHE_TYPE_VARY,
                                               0, now, ctx->fresh_until,
                                               0, 0, 0, 0,
                                               ctx->store_vary.len, -1,
                                               ctx->digest);
            p = ngx_cpymem(p, ctx->store_vary.data, ctx->store_vary.len);
            ngx_aai_cache_entry_seal(argv[9].data, p - argv[9].data, 0);
        }

        if (ctx->lock_held) {
            argv[10].data = ctx->token;
            argv[10].len = sizeof(ctx->token);
            argv[12].data = ctx->lock_key.data - 2;
            argv[12].len = ctx->lock_key.len + 2;
            argv[12].data[0] = '1';
            argv[12].data[1] = ' ';

        } else {
            ngx_str_null(&argv[10]);
            ngx_str_null(&argv[12]);
        }

        ngx_str_set(&argv[11], NGX_HTTP_AAI_CACHE_CHANNEL);
        argc = 13;

        /* the script releases the lock and wakes up the waiters */

        ctx->lock_held = 0;

        if (ctx->len > NGX_HTTP_AAI_CACHE_PIECE) {
            ngx_http_aai_cache_store_large(r, ctx, argv);
            return;
        }
    }

    cmd = ngx_aai_redis_send(amcf->store, r->connection->log, argc, argv,
                             ngx_http_aai_cache_store_handler, NULL);

    if (cmd == NULL) {
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache store \"%V\" %uz bytes px:%uL",
                   &ctx->store_key, ctx->len, px);

    ngx_free(ctx->buf);
    ctx->buf = NULL;
}


/*
 * argv: the store script's command as ngx_http_aai_cache_store() made it;
 * the job takes the entry and the lock.
 */

static void
ngx_http_aai_cache_store_large(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *argv)
{
    u_char                          *p;
    size_t                           size;
    ngx_str_t                       *a;
    ngx_uint_t                       i;
    ngx_http_aai_cache_job_t        *job;
    ngx_http_aai_cache_main_conf_t  *amcf;
    ngx_str_t                        tmp, len;
    u_char                           lens[NGX_SIZE_T_LEN];
    u_char                           tmps[sizeof(":w") + 16];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    len.data = lens;
    len.len = ngx_sprintf(lens, "%uz", ctx->len) - lens;

    tmp.data = tmps;
    tmp.len = ngx_sprintf(tmps, ":w%08xi%08xi",
                          (ngx_uint_t) ngx_random() & 0xffffffff,
                          ++ngx_http_aai_cache_lock_seq & 0xffffffff)
              - tmps;

    /* the strings of the last command, copied after the job */

    size = sizeof(ngx_http_aai_cache_job_t)
           + argv[3].len + argv[4].len + argv[5].len + argv[6].len
           + argv[3].len + tmp.len + len.len + argv[8].len + argv[9].len
           + argv[10].len + argv[12].len;

    job = ngx_alloc(size, r->connection->log);
    if (job == NULL) {
        ctx->lock_held = (argv[10].len != 0);
        ngx_http_aai_cache_abandon(r, ctx, "no memory");
        return;
    }

    ngx_str_set(&job->argv[0], "EVAL");
    job->argv[1] = ngx_http_aai_cache_pieces_script;
    ngx_str_set(&job->argv[2], "5");
    job->argv[12] = argv[11];                  /* the channel, static */

    p = (u_char *) (job + 1);

    for (i = 3; i < 14; i++) {
        if (i == 12) {
            continue;
        }

        job->argv[i].data = p;

        switch (i) {
        case 7:                                /* the temporary key */
            if (argv[3].len) {
                p = ngx_cpymem(p, argv[3].data, argv[3].len);
            }

            p = ngx_cpymem(p, tmp.data, tmp.len);
            break;
        case 8:                                /* the entry's length */
            p = ngx_cpymem(p, len.data, len.len);
            break;
        default:                 /* 3-6 as they are, then 9, 10, 11, 13 */
            a = (i < 7) ? &argv[i] : &argv[i - 1];

            if (a->len) {                      /* an empty one may be NULL */
                p = ngx_cpymem(p, a->data, a->len);
            }
        }

        job->argv[i].len = p - job->argv[i].data;
    }

    job->buf = ctx->buf;
    job->len = ctx->len;
    job->off = 0;
    job->grown = 0;
    job->final = 0;

    ctx->buf = NULL;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache store \"%V\" in pieces, %uz bytes via %V",
                   &ctx->store_key, job->len, &job->argv[7]);

    if (ngx_http_aai_cache_job_next(job) != NGX_OK) {
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);
        ngx_http_aai_cache_job_fail(job, NULL);
    }
}


static ngx_int_t
ngx_http_aai_cache_job_next(ngx_http_aai_cache_job_t *job)
{
    size_t                           n, off;
    ngx_str_t                        argv[5];
    ngx_uint_t                       argc;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           offs[NGX_SIZE_T_LEN];

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL) {
        return NGX_ERROR;
    }

    if (job->off == job->len) {
        job->final = 1;

        return ngx_aai_redis_send(amcf->store, ngx_cycle->log, 14, job->argv,
                                  ngx_http_aai_cache_job_handler, job)
               ? NGX_OK : NGX_ERROR;
    }

    argv[1] = job->argv[7];

    if (job->off == 0) {
        n = NGX_HTTP_AAI_CACHE_PIECE;

        ngx_str_set(&argv[0], "SET");
        argv[2].data = job->buf;
        argv[2].len = n;
        ngx_str_set(&argv[3], "PX");
        ngx_str_set(&argv[4], NGX_HTTP_AAI_CACHE_PIECE_TTL);
        argc = 5;

    } else {
        if (job->grown) {
            off = job->off;
            n = ngx_min(job->len - job->off, NGX_HTTP_AAI_CACHE_PIECE);

        } else {
            off = job->len - 1;
            n = 0;
        }

        ngx_str_set(&argv[0], "SETRANGE");
        argv[2].data = offs;
        argv[2].len = ngx_sprintf(offs, "%uz", off) - offs;
        argv[3].data = job->buf + off;
        argv[3].len = n ? n : 1;
        argc = 4;
    }

    if (ngx_aai_redis_send(amcf->store, ngx_cycle->log, argc, argv,
                           ngx_http_aai_cache_job_handler, job)
        == NULL)
    {
        return NGX_ERROR;
    }

    if (job->off && !job->grown) {
        job->grown = 1;
    }

    job->off += n;

    return NGX_OK;
}


static void
ngx_http_aai_cache_job_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_job_t *job = data;

    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL) {
        ngx_free(job->buf);
        ngx_free(job);
        return;
    }

    ngx_aai_metrics_observe(amcf->metrics, amcf->m_latency, res->latency_us);

    if (res->reply == NULL || res->reply->type == REDIS_REPLY_ERROR) {
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);
        ngx_http_aai_cache_job_fail(job, res->reply ? res->reply->str
                                                    : res->error);
        return;
    }

    if (job->final) {
        if (res->reply->type == REDIS_REPLY_INTEGER
            && res->reply->integer == 1)
        {
            ngx_aai_metrics_inc(amcf->metrics, amcf->m_stored, 1);

        } else {
            ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "aai_cache: storing in redis failed: "
                          "a piece of %V was lost", &job->argv[3]);
        }

        ngx_free(job->buf);
        ngx_free(job);
        return;
    }

    if (ngx_http_aai_cache_job_next(job) != NGX_OK) {
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);
        ngx_http_aai_cache_job_fail(job, NULL);
    }
}


/* the temporary key goes, the lock is let go, the waiters are woken */

static void
ngx_http_aai_cache_job_fail(ngx_http_aai_cache_job_t *job, const char *why)
{
    ngx_str_t                        argv[7];
    ngx_http_aai_cache_main_conf_t  *amcf;

    static time_t  logged;

    if (why && logged != ngx_time()) {
        logged = ngx_time();
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "aai_cache: storing in redis failed: %s", why);
    }

    amcf = ngx_http_aai_cache_worker;

    if (amcf && amcf->redis) {
        ngx_str_set(&argv[0], "DEL");
        argv[1] = job->argv[7];

        (void) ngx_aai_redis_send(amcf->store, ngx_cycle->log, 2, argv,
                                  ngx_http_aai_cache_release_handler, NULL);

        if (job->argv[11].len) {
            ngx_str_set(&argv[0], "EVAL");
            argv[1] = ngx_http_aai_cache_release_script;
            ngx_str_set(&argv[2], "1");
            argv[3] = job->argv[6];
            argv[4] = job->argv[11];
            argv[5] = job->argv[12];
            argv[6] = job->argv[13];
            argv[6].data[0] = '0';

            (void) ngx_aai_redis_send(amcf->redis, ngx_cycle->log, 7, argv,
                                      ngx_http_aai_cache_release_handler,
                                      NULL);
        }
    }

    ngx_free(job->buf);
    ngx_free(job);
}


static void
ngx_http_aai_cache_store_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    static time_t  logged;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL) {
        return;
    }

    ngx_aai_metrics_observe(amcf->metrics, amcf->m_latency, res->latency_us);

    if (res->reply && res->reply->type != REDIS_REPLY_ERROR) {
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_stored, 1);
        return;
    }

    ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);

    if (logged != ngx_time()) {
        logged = ngx_time();
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "aai_cache: storing in redis failed: %s",
                      res->reply ? res->reply->str : res->error);
    }
}


static void
ngx_http_aai_cache_release_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    if (amcf) {
        ngx_aai_metrics_observe(amcf->metrics, amcf->m_latency,
                                res->latency_us);
    }
}


/* RFC 9211 */

static ngx_int_t
ngx_http_aai_cache_status_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e)
{
    u_char           *p;
    size_t            len;
    int64_t           ttl;
    const char       *fwd;
    ngx_table_elt_t  *h;

    len = sizeof("aai; fwd=vary-miss; fwd-status=; ttl=; stored; collapsed"
                 "; detail=") + NGX_INT_T_LEN + NGX_INT64_LEN;

    if (ctx->detail) {
        len += ngx_strlen(ctx->detail);
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Status");
    h->lowcase_key = (u_char *) "cache-status";
    h->value.data = p;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    p = ngx_cpymem(p, "aai; ", 5);

    if (ctx->served && !ctx->swap) {
        p = ngx_cpymem(p, "hit", 3);

    } else {
        fwd = (ctx->fwd == NGX_HTTP_AAI_CACHE_MISS && ctx->vary_miss)
              ? "vary-miss" : ngx_http_aai_cache_fwd_names[ctx->fwd];

        p = ngx_sprintf(p, "fwd=%s", fwd);

        if (ctx->fwd_status) {
            p = ngx_sprintf(p, "; fwd-status=%ui", ctx->fwd_status);
        }
    }

    if (e) {
        ttl = (int64_t) e->fresh_until - (int64_t) ngx_http_aai_cache_now();
        ttl = (ttl >= 0) ? ttl / 1000 : (ttl - 999) / 1000;
        p = ngx_sprintf(p, "; ttl=%L", ttl);
    }

    if (ctx->stored) {
        p = ngx_cpymem(p, "; stored", 8);
    }

    if (ctx->collapsed) {
        p = ngx_cpymem(p, "; collapsed", 11);
    }

    if (ctx->detail) {
        p = ngx_sprintf(p, "; detail=%s", ctx->detail);
    }

    h->value.len = p - h->value.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_purge_handler(ngx_http_request_t *r)
{
    u_char                          *num;
    ngx_int_t                        rc;
    ngx_str_t                        key, saved, *argv;
    ngx_uint_t                       i, j, n;
    ngx_conf_bitmask_t              *m;
    ngx_pool_cleanup_t              *cln;
    ngx_http_aai_cache_purge_ctx_t  *pctx;
    ngx_http_aai_cache_loc_conf_t   *alcf;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           digest[SHA256_DIGEST_LENGTH];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    argv = ngx_palloc(r->pool, 6 * sizeof(ngx_str_t));
    num = ngx_pnalloc(r->pool, 1);
    if (argv == NULL || num == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_purge_script;

    /* the key of each cached method: $request_method takes its name */

    saved = r->main->method_name;
    n = 0;

    for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {

        if (!(alcf->methods & m->mask)) {
            continue;
        }

        r->main->method_name = m->name;

        rc = ngx_http_aai_cache_make_key(r, alcf, &key, digest);

        r->main->method_name = saved;

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (j = 0; j < n; j++) {
            if (argv[3 + j].len == key.len
                && ngx_memcmp(argv[3 + j].data, key.data, key.len) == 0)
            {
                break;
            }
        }

        if (j == n) {
            argv[3 + n++] = key;
        }
    }

    *num = (u_char) ('0' + n);
    argv[2].data = num;
    argv[2].len = 1;

    pctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_cache_purge_ctx_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (pctx == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pctx->request = r;
    cln->handler = ngx_http_aai_cache_purge_cleanup;
    cln->data = pctx;

    for (i = 0; i < n; i++) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache purge \"%V\"", &argv[3 + i]);
    }

    pctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, 3 + n,
                                   argv, ngx_http_aai_cache_purge_reply,
                                   pctx);
    if (pctx->cmd == NULL) {
        return ngx_http_aai_cache_purge_send(r,
                                             NGX_HTTP_SERVICE_UNAVAILABLE,
                                             -1);
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_aai_cache_purge_reply(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_purge_ctx_t *pctx = data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = pctx->request;
    c = r->connection;

    pctx->cmd = NULL;

    if (res->reply == NULL || res->reply->type != REDIS_REPLY_INTEGER) {
        if (res->reply && res->reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "aai_cache: purge failed: %s", res->reply->str);
        }

        rc = ngx_http_aai_cache_purge_send(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           -1);

    } else {
        rc = ngx_http_aai_cache_purge_send(r, res->reply->integer > 0
                                              ? NGX_HTTP_OK
                                              : NGX_HTTP_NOT_FOUND,
                                           (ngx_int_t) res->reply->integer);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_cache_purge_cleanup(void *data)
{
    ngx_http_aai_cache_purge_ctx_t *pctx = data;

    if (pctx->cmd) {
        ngx_aai_redis_cancel(pctx->cmd);
        pctx->cmd = NULL;
    }
}


static ngx_int_t
ngx_http_aai_cache_purge_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_int_t n)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_create_temp_buf(r->pool, 64);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (n < 0) {
        b->last = ngx_cpymem(b->last, "{\"error\":\"redis unavailable\"}\n",
                             sizeof("{\"error\":\"redis unavailable\"}\n") - 1);

    } else {
        b->last = ngx_sprintf(b->last, "{\"purged\":%i}\n", n);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_aai_cache_log_handler(ngx_http_request_t *r)
{
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_main_conf_t  *amcf;

    if (r != r->main) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->status == NGX_HTTP_AAI_CACHE_NONE) {
        return NGX_OK;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    ngx_aai_metrics_inc(amcf->metrics, amcf->m_requests[ctx->status], 1);

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->status == NGX_HTTP_AAI_CACHE_NONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ngx_http_aai_cache_status_names[ctx->status].len;
    v->data = ngx_http_aai_cache_status_names[ctx->status].data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *key;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->key.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    key = ctx->store_key.len ? &ctx->store_key
          : ctx->vkey.len ? &ctx->vkey : &ctx->key;

    v->len = key->len;
    v->data = key->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/* the response headers as the client would get them, but hop-by-hop ones */

static ngx_int_t
ngx_http_aai_cache_collect(ngx_http_request_t *r, ngx_array_t *headers)
{
    size_t                   len;
    ngx_uint_t               i, j;
    ngx_keyval_t            *kv;
    ngx_list_part_t         *part;
    ngx_table_elt_t         *h;
    ngx_http_headers_out_t  *ho;

    ho = &r->headers_out;

    if (ho->content_type.len) {
        kv = ngx_array_push(headers);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&kv->key, "Content-Type");
        kv->value = ho->content_type;

        if (ho->content_type_len == ho->content_type.len
            && ho->charset.len)
        {
            len = ho->content_type.len + sizeof("; charset=") - 1
                  + ho->charset.len;

            kv->value.data = ngx_pnalloc(r->pool, len);
            if (kv->value.data == NULL) {
                return NGX_ERROR;
            }

            kv->value.len = ngx_sprintf(kv->value.data, "%V; charset=%V",
                                        &ho->content_type, &ho->charset)
                            - kv->value.data;
        }
    }

    if (ho->last_modified == NULL && ho->last_modified_time != -1) {
        kv = ngx_array_push(headers);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&kv->key, "Last-Modified");

        kv->value.data = ngx_pnalloc(r->pool,
                                     sizeof("Mon, 28 Sep 1970 06:00:00 GMT"));
        if (kv->value.data == NULL) {
            return NGX_ERROR;
        }

        kv->value.len = ngx_http_time(kv->value.data, ho->last_modified_time)
                        - kv->value.data;
    }

    part = &ho->headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        for (j = 0; ngx_http_aai_cache_skip[j].len; j++) {
            if (h[i].key.len == ngx_http_aai_cache_skip[j].len
                && ngx_strncasecmp(h[i].key.data,
                                   ngx_http_aai_cache_skip[j].data,
                                   h[i].key.len) == 0)
            {
                break;
            }
        }

        if (ngx_http_aai_cache_skip[j].len) {
            continue;
        }

        /* hop-by-hop: named in the upstream's Connection (RFC 9111, 3.1) */

        if (r->upstream
            && ngx_http_aai_cache_connection_listed(
                   &r->upstream->headers_in.headers, &h[i].key))
        {
            continue;
        }

        kv = ngx_array_push(headers);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        kv->key = h[i].key;
        kv->value = h[i].value;
    }

    /* a hit carries the origin's Date (RFC 9110, 6.6.1) */

    h = ngx_http_aai_cache_origin_date(r);

    if (h) {
        kv = ngx_array_push(headers);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&kv->key, "Date");
        kv->value = h->value;
    }

    return NGX_OK;
}


/* whether a Connection header of the list names the header */

static ngx_uint_t
ngx_http_aai_cache_connection_listed(ngx_list_t *raw, ngx_str_t *name)
{
    u_char           *p, *last, *start;
    ngx_table_elt_t  *h;

    h = NULL;

    while ((h = ngx_aai_cache_find_header(raw, "Connection", 10, h))
           != NULL)
    {
        p = h->value.data;
        last = p + h->value.len;

        while (p < last) {

            while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
                p++;
            }

            start = p;

            while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
                p++;
            }

            if ((size_t) (p - start) == name->len
                && ngx_strncasecmp(start, name->data, name->len) == 0)
            {
                return 1;
            }

            while (p < last && *p != ',') {
                p++;
            }
        }
    }

    return 0;
}


/* the Date of the response: the proxy module hides the upstream's own */

static ngx_table_elt_t *
ngx_http_aai_cache_origin_date(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = r->headers_out.date;

    if (h && h->hash) {
        return h;
    }

    if (r->upstream) {
        return ngx_aai_cache_find_header(&r->upstream->headers_in.headers,
                                         "Date", 4, NULL);
    }

    return NULL;
}


/*
 * What this worker knows of the resources that vary, so that a lookup is
 * one round trip: a direct-mapped table, the cache key digest to names.
 */

static ngx_http_aai_cache_vary_slot_t *
ngx_http_aai_cache_vary_slot(u_char *digest)
{
    return &ngx_http_aai_cache_vary_map[((digest[8] << 8) | digest[9])
                                        % NGX_HTTP_AAI_CACHE_VARY_SLOTS];
}


static void
ngx_http_aai_cache_vary_get(u_char *digest, ngx_str_t *names)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (s->len && ngx_memcmp(s->digest, digest, 8) == 0) {
        names->data = s->names;
        names->len = s->len;
        return;
    }

    ngx_str_null(names);
}


static void
ngx_http_aai_cache_vary_set(u_char *digest, ngx_str_t *names)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (names->len > NGX_HTTP_AAI_CACHE_VARY_LEN) {
        ngx_http_aai_cache_vary_forget(digest);
        return;
    }

    ngx_memcpy(s->digest, digest, 8);
    ngx_memcpy(s->names, names->data, names->len);
    s->len = (u_char) names->len;
}


static void
ngx_http_aai_cache_vary_forget(u_char *digest)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (ngx_memcmp(s->digest, digest, 8) == 0) {
        s->len = 0;
    }
}


/* at most one message a second per worker */

static void
ngx_http_aai_cache_log_bad(ngx_log_t *log, const char *what, ngx_str_t *key)
{
    static time_t  logged;

    if (logged == ngx_time()) {
        return;
    }

    logged = ngx_time();

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "aai_cache: %s entry \"%V\" in redis, not served",
                  what, key);
}


/*
 * SHA-256 with the algorithm fetched once per worker: SHA256() fetches it
 * at each call in OpenSSL 3, under a lock, at a cost as large as the hash.
 */

static void
ngx_http_aai_cache_sha256(u_char *data, size_t len, u_char *md)
{
    EVP_MD_CTX  *ctx;

    ctx = ngx_http_aai_cache_md_ctx;

    if (ctx == NULL
        || EVP_DigestInit_ex(ctx, ngx_http_aai_cache_md, NULL) != 1
        || EVP_DigestUpdate(ctx, data, len) != 1
        || EVP_DigestFinal_ex(ctx, md, NULL) != 1)
    {
        (void) SHA256(data, len, md);
    }
}


static uint64_t
ngx_http_aai_cache_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}



static void *
ngx_http_aai_cache_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_cache_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->redis_conf = { 0 };
     *     amcf->redis = NULL;
     *     amcf->metrics = NULL;
     *     amcf->store = NULL;
     */

    amcf->store_timeout = NGX_CONF_UNSET_MSEC;

    return amcf;
}


static char *
ngx_http_aai_cache_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_aai_cache_main_conf_t *amcf = conf;

    ngx_str_t                          value;
    ngx_http_compile_complex_value_t   ccv;

    ngx_str_set(&value, NGX_HTTP_AAI_CACHE_DEFAULT_KEY);

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value;
    ccv.complex_value = &amcf->default_key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(amcf->store_timeout, 10000);

    if (amcf->redis == NULL) {
        return NGX_CONF_OK;
    }

    /*
     * Stores go on a connection of their own: a large entry never holds up
     * a lookup on the same connection, and its store failing never fails
     * the lookups in flight with it.
     */

    amcf->store_conf = amcf->redis_conf;
    amcf->store_conf.timeout = ngx_max(amcf->store_timeout,
                                       amcf->redis_conf.timeout);
    amcf->store_conf.connections = 1;

    amcf->store = ngx_aai_redis_create(cf, &amcf->store_conf);
    if (amcf->store == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_aai_cache_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_aai_cache_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_cache_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->key = NULL;
     *     conf->prefix = { 0, NULL };
     *     conf->methods = 0;
     *     conf->purge_key = NULL;
     */

    conf->enable = NGX_CONF_UNSET;
    conf->valid = NGX_CONF_UNSET_PTR;
    conf->max_size = NGX_CONF_UNSET_SIZE;
    conf->bypass = NGX_CONF_UNSET_PTR;
    conf->no_store = NGX_CONF_UNSET_PTR;
    conf->lock = NGX_CONF_UNSET;
    conf->lock_timeout = NGX_CONF_UNSET_MSEC;
    conf->use_stale = NGX_CONF_UNSET_UINT;
    conf->background_update = NGX_CONF_UNSET;
    conf->stale_ttl = NGX_CONF_UNSET;
    conf->revalidate = NGX_CONF_UNSET;
    conf->revalidate_ttl = NGX_CONF_UNSET;
    conf->credentials = NGX_CONF_UNSET_PTR;
    conf->control_fields = NGX_CONF_UNSET_PTR;
    conf->purge = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_aai_cache_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_aai_cache_loc_conf_t *prev = parent;
    ngx_http_aai_cache_loc_conf_t *conf = child;

    ngx_str_t                        name, *fname;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);

    if (conf->key == NULL) {
        conf->key = prev->key;
    }

    ngx_conf_merge_str_value(conf->prefix, prev->prefix, "aai:c:");
    ngx_conf_merge_ptr_value(conf->valid, prev->valid, NULL);

    if (conf->methods == 0) {
        conf->methods = prev->methods ? prev->methods
                                      : (NGX_HTTP_GET|NGX_HTTP_HEAD);
    }

    ngx_conf_merge_size_value(conf->max_size, prev->max_size, 1024 * 1024);
    ngx_conf_merge_ptr_value(conf->bypass, prev->bypass, NULL);
    ngx_conf_merge_ptr_value(conf->no_store, prev->no_store, NULL);
    ngx_conf_merge_value(conf->lock, prev->lock, 0);
    ngx_conf_merge_msec_value(conf->lock_timeout, prev->lock_timeout, 5000);
    ngx_conf_merge_uint_value(conf->use_stale, prev->use_stale, 0);
    ngx_conf_merge_value(conf->background_update, prev->background_update,
                         0);
    ngx_conf_merge_sec_value(conf->stale_ttl, prev->stale_ttl, 600);
    ngx_conf_merge_value(conf->revalidate, prev->revalidate, 0);
    ngx_conf_merge_sec_value(conf->revalidate_ttl, prev->revalidate_ttl,
                             600);

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_cache_module);

    if (conf->credentials == NGX_CONF_UNSET_PTR) {
        conf->credentials = prev->credentials;
    }

    if (conf->credentials == NGX_CONF_UNSET_PTR) {

        /* the default: aai_cache_credentials Authorization Cookie; */

        if (amcf->credentials == NULL) {
            amcf->credentials = ngx_array_create(cf->pool, 2,
                                                 sizeof(ngx_int_t));
            if (amcf->credentials == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_str_set(&name, "Authorization");

            if (ngx_http_aai_cache_credential(cf, amcf->credentials, &name)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            ngx_str_set(&name, "Cookie");

            if (ngx_http_aai_cache_credential(cf, amcf->credentials, &name)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        }

        conf->credentials = amcf->credentials;
    }

    if (conf->control_fields == NGX_CONF_UNSET_PTR) {
        conf->control_fields = prev->control_fields;
    }

    if (conf->control_fields == NGX_CONF_UNSET_PTR) {

        /* the default: aai_cache_control_field CDN-Cache-Control; */

        conf->control_fields = ngx_array_create(cf->pool, 1,
                                                sizeof(ngx_str_t));
        if (conf->control_fields == NULL) {
            return NGX_CONF_ERROR;
        }

        fname = ngx_array_push(conf->control_fields);
        if (fname == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_str_set(fname, "CDN-Cache-Control");
    }

    /* aai_cache_purge is not inherited */

    if (conf->purge == NGX_CONF_UNSET) {
        conf->purge = 0;
    }

    if (conf->enable || conf->purge) {
        amcf->used = 1;
    }

    if (conf->enable && conf->lock) {
        amcf->lock_used = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_main_conf_t *amcf = conf;

    char  *rv;

    rv = ngx_aai_redis_conf_parse(cf, &amcf->redis_conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    amcf->redis = ngx_aai_redis_create(cf, &amcf->redis_conf);
    if (amcf->redis == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_valid(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    time_t                       valid;
    ngx_int_t                    status;
    ngx_str_t                   *value;
    ngx_uint_t                   i, n;
    ngx_http_aai_cache_valid_t  *v;

    static ngx_uint_t  defaults[] = { 200, 301, 302 };

    value = cf->args->elts;
    n = cf->args->nelts - 1;

    valid = ngx_parse_time(&value[n], 1);
    if (valid == (time_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"%V\"",
                           &value[n], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (alcf->valid == NGX_CONF_UNSET_PTR) {
        alcf->valid = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_http_aai_cache_valid_t));
        if (alcf->valid == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (n == 1) {
        for (i = 0; i < 3; i++) {
            v = ngx_array_push(alcf->valid);
            if (v == NULL) {
                return NGX_CONF_ERROR;
            }

            v->status = defaults[i];
            v->valid = valid;
        }

        return NGX_CONF_OK;
    }

    for (i = 1; i < n; i++) {

        if (ngx_strcmp(value[i].data, "any") == 0) {
            status = 0;

        } else {
            status = ngx_atoi(value[i].data, value[i].len);

            if (status < NGX_HTTP_OK || status > 599
                || status == NGX_HTTP_PARTIAL_CONTENT
                || status == NGX_HTTP_NOT_MODIFIED)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid status \"%V\" in \"%V\"",
                                   &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }
        }

        v = ngx_array_push(alcf->valid);
        if (v == NULL) {
            return NGX_CONF_ERROR;
        }

        v->status = status;
        v->valid = valid;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_methods(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t           *value;
    ngx_uint_t           i;
    ngx_conf_bitmask_t  *m;

    if (alcf->methods) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {
            if (m->name.len == value[i].len
                && ngx_strncasecmp(m->name.data, value[i].data,
                                   value[i].len) == 0)
            {
                break;
            }
        }

        if (m->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid method \"%V\" in \"%V\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        alcf->methods |= m->mask;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_use_stale(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t           *value;
    ngx_uint_t           i;
    ngx_conf_bitmask_t  *m;

    if (alcf->use_stale != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    alcf->use_stale = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "off") == 0) {
            if (cf->args->nelts != 2) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"off\" cannot be combined with other "
                                   "values in \"%V\"", &cmd->name);
                return NGX_CONF_ERROR;
            }

            return NGX_CONF_OK;
        }

        for (m = ngx_http_aai_cache_stale_masks; m->name.len; m++) {
            if (m->name.len == value[i].len
                && ngx_strncmp(m->name.data, value[i].data,
                               value[i].len) == 0)
            {
                break;
            }
        }

        if (m->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        alcf->use_stale |= m->mask;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (alcf->prefix.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len > 128) {
        goto invalid;
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] <= ' ' || value[1].data[i] >= 0x7f) {
            goto invalid;
        }
    }

    alcf->prefix = value[1];

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid prefix \"%V\" in \"%V\": at most 128 "
                       "printable characters without spaces",
                       &value[1], &cmd->name);
    return NGX_CONF_ERROR;
}


static char *
ngx_http_aai_cache_size(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    size_t     *sp;
    ssize_t     size;
    ngx_str_t  *value;

    sp = (size_t *) (p + cmd->offset);

    if (*sp != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[1]);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid size \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (size > NGX_HTTP_AAI_CACHE_MAX_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "size \"%V\" in \"%V\" is over 512m less 1m "
                           "for the entry's headers: Redis stores values of "
                           "512m at most (proto-max-bulk-len)",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    *sp = (size_t) size;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_msec(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_int_t    ms;
    ngx_str_t   *value;
    ngx_msec_t  *msp;

    msp = (ngx_msec_t *) (p + cmd->offset);

    if (*msp != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ms = ngx_parse_time(&value[1], 0);

    if (ms == NGX_ERROR || ms == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    *msp = (ngx_msec_t) ms;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_sec(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    time_t      *sp, s;
    ngx_str_t   *value;

    sp = (time_t *) (p + cmd->offset);

    if (*sp != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    s = ngx_parse_time(&value[1], 1);

    if (s == (time_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    *sp = s;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_purge(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t                         *value;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_compile_complex_value_t   ccv;

    if (alcf->purge != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    alcf->purge = 1;

    if (cf->args->nelts == 2) {
        value = cf->args->elts;

        alcf->purge_key = ngx_palloc(cf->pool,
                                     sizeof(ngx_http_complex_value_t));
        if (alcf->purge_key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &value[1];
        ccv.complex_value = alcf->purge_key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_aai_cache_purge_handler;

    return NGX_CONF_OK;
}


/*
 * aai_cache_credentials off | credential ...;  a credential is a request
 * header name or a $variable; the request carries a credential when one
 * of them is not empty.
 */

static char *
ngx_http_aai_cache_credentials(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (alcf->credentials != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && value[1].len == 3
        && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        alcf->credentials = NULL;
        return NGX_CONF_OK;
    }

    alcf->credentials = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                         sizeof(ngx_int_t));
    if (alcf->credentials == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        if (ngx_http_aai_cache_credential(cf, alcf->credentials, &value[i])
            != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid credential \"%V\" in \"%V\": a "
                               "request header name or a $variable",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* aai_cache_control_field Name... | off: targeted fields, RFC 9213 */

static char *
ngx_http_aai_cache_control_field(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    u_char      *p;
    ngx_str_t   *value, *name;
    ngx_uint_t   i;

    if (alcf->control_fields != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && value[1].len == 3
        && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        alcf->control_fields = NULL;
        return NGX_CONF_OK;
    }

    alcf->control_fields = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                            sizeof(ngx_str_t));
    if (alcf->control_fields == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        /* a field name: a token (RFC 9110, 5.1) */

        for (p = value[i].data; p < value[i].data + value[i].len; p++) {
            if (!((*p >= '0' && *p <= '9')
                  || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')
                  || *p == '-' || *p == '_' || *p == '.'))
            {
                break;
            }
        }

        if (value[i].len == 0 || value[i].len > 256
            || p != value[i].data + value[i].len)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid field \"%V\" in \"%V\": a "
                               "response header name", &value[i],
                               &cmd->name);
            return NGX_CONF_ERROR;
        }

        name = ngx_array_push(alcf->control_fields);
        if (name == NULL) {
            return NGX_CONF_ERROR;
        }

        *name = value[i];
    }

    return NGX_CONF_OK;
}


/* "Name" is the variable $http_name, "$name" the variable $name */

static ngx_int_t
ngx_http_aai_cache_credential(ngx_conf_t *cf, ngx_array_t *a,
    ngx_str_t *value)
{
    u_char     *p;
    ngx_int_t  *index;
    ngx_str_t   name;
    ngx_uint_t  i;

    if (value->len > 1 && value->data[0] == '$') {
        name.data = value->data + 1;
        name.len = value->len - 1;

    } else {
        if (value->len == 0 || value->len > 256) {
            return NGX_ERROR;
        }

        name.len = sizeof("http_") - 1 + value->len;
        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(name.data, "http_", sizeof("http_") - 1);

        for (i = 0; i < value->len; i++) {
            if (value->data[i] == '-') {
                *p++ = '_';

            } else if ((value->data[i] >= 'a' && value->data[i] <= 'z')
                       || (value->data[i] >= 'A' && value->data[i] <= 'Z')
                       || (value->data[i] >= '0' && value->data[i] <= '9')
                       || value->data[i] == '_')
            {
                *p++ = ngx_tolower(value->data[i]);

            } else {
                return NGX_ERROR;
            }
        }
    }

    index = ngx_array_push(a);
    if (index == NULL) {
        return NGX_ERROR;
    }

    *index = ngx_http_get_variable_index(cf, &name);

    if (*index == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_aai_cache_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_cache_main_conf_t *amcf)
{
    ngx_int_t           idx;
    ngx_str_t           label;
    ngx_uint_t          i;
    ngx_aai_metrics_t  *m;

    static const char  *labels[] = {
        NULL,
        "status=\"miss\"",
        "status=\"bypass\"",
        "status=\"expired\"",
        "status=\"stale\"",
        "status=\"updating\"",
        "status=\"hit\"",
        "status=\"revalidated\""
    };

    /* Redis latency, in microseconds: 100us to 1s */

    static const ngx_uint_t  bounds[] = {
        100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
        250000, 500000, 1000000
    };

    m = ngx_aai_metrics_create(cf, "cache", &ngx_http_aai_cache_module);
    if (m == NULL) {
        return NGX_ERROR;
    }

    amcf->metrics = m;

    for (i = 1; i < NGX_HTTP_AAI_CACHE_NSTATUS; i++) {
        label.data = (u_char *) labels[i];
        label.len = ngx_strlen(labels[i]);

        idx = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                  "aai_cache_requests_total",
                                  "Requests of cached locations, "
                                  "by cache status.", &label);
        if (idx == NGX_ERROR) {
            return NGX_ERROR;
        }

        amcf->m_requests[i] = idx;
    }

    amcf->m_stored = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                         "aai_cache_stored_total",
                                         "Responses stored in Redis.", NULL);

    amcf->m_store_failures = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                         "aai_cache_store_failures_total",
                                         "Responses Redis did not store.",
                                         NULL);

    amcf->m_bytes = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                        "aai_cache_bytes_served_total",
                                        "Body bytes sent from the cache.",
                                        NULL);

    amcf->m_latency = ngx_aai_metrics_add_histogram(m,
                                        "aai_cache_redis_latency_seconds",
                                        "Latency of the cache's Redis "
                                        "commands.", NULL, bounds,
                                        sizeof(bounds) / sizeof(bounds[0]),
                                        1000000);

    if (amcf->m_stored == NGX_ERROR
        || amcf->m_store_failures == NGX_ERROR
        || amcf->m_bytes == NGX_ERROR
        || amcf->m_latency == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    return ngx_aai_metrics_zone(cf, m);
}


static ngx_int_t
ngx_http_aai_cache_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt             *h;
    ngx_http_core_main_conf_t       *cmcf;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_cache_module);

    if (amcf->used && amcf->redis == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"aai_cache\" and \"aai_cache_purge\" need "
                           "\"aai_cache_redis\" in the http block");
        return NGX_ERROR;
    }

    if (ngx_http_aai_cache_add_metrics(cf, amcf) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_aai_cache_crc32_init();

    if (!amcf->used) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_cache_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_cache_log_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_aai_cache_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_aai_cache_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_init_process(ngx_cycle_t *cycle)
{
    ngx_str_t                        channel;
    ngx_uint_t                       i;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_aai_cache_module);

    if (amcf == NULL || amcf->redis == NULL) {
        return NGX_OK;
    }

    ngx_http_aai_cache_worker = amcf;

    ngx_http_aai_cache_dummy.fd = (ngx_socket_t) -1;
    ngx_http_aai_cache_orphans_ev.data = &ngx_http_aai_cache_dummy;
    ngx_http_aai_cache_orphans_ev.handler = ngx_http_aai_cache_orphans_handler;
    ngx_http_aai_cache_orphans_ev.log = cycle->log;
    ngx_http_aai_cache_orphans_ev.cancelable = 1;

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    ngx_http_aai_cache_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    ngx_http_aai_cache_md = (EVP_MD *) EVP_sha256();
#endif

    if (ngx_http_aai_cache_md) {
        ngx_http_aai_cache_md_ctx = EVP_MD_CTX_new();
    }

    for (i = 0; i < NGX_HTTP_AAI_CACHE_BUCKETS; i++) {
        ngx_queue_init(&ngx_http_aai_cache_waiters[i]);
    }

    if (amcf->lock_used) {
        ngx_str_set(&channel, NGX_HTTP_AAI_CACHE_CHANNEL);

        if (ngx_aai_redis_subscribe(amcf->redis, &channel, 0,
                                    ngx_http_aai_cache_message, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_aai_redis_init_worker(amcf->store, cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_aai_redis_init_worker(amcf->redis, cycle);
}


static void
ngx_http_aai_cache_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    /* the handlers called now (with an error) send nothing more */

    ngx_http_aai_cache_worker = NULL;

    if (amcf && amcf->redis) {
        ngx_aai_redis_exit_worker(amcf->store);
        ngx_aai_redis_exit_worker(amcf->redis);
    }

    if (ngx_http_aai_cache_md_ctx) {
        EVP_MD_CTX_free(ngx_http_aai_cache_md_ctx);
        ngx_http_aai_cache_md_ctx = NULL;
    }

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    if (ngx_http_aai_cache_md) {
        EVP_MD_free(ngx_http_aai_cache_md);
    }
#endif

    ngx_http_aai_cache_md = NULL;
}

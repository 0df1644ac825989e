
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: request rate limiting with the counters in
 * Redis, so that every nginx instance enforces one limit.
 *
 * All the zones of a request are checked by one atomic Lua script call
 * (EVALSHA): a request rejected by one zone spends no quota in the others.
 * The requests of one event loop iteration share that call: a worker
 * sends one EVALSHA per iteration, however many requests it checks.
 * Keys known to be over their limit are rejected from a shared memory
 * blocklist without asking Redis; when Redis fails, a per-location fallback
 * decides (allow, deny, or a per-instance limit in the same shared memory).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>

#include "ngx_aai_redis.h"
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
#define NGX_HTTP_AAI_RL_M_NUMBER           6

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

/* sliding window keys drop every expired entry seen in every 8th batch */
#define NGX_HTTP_AAI_RL_TRIM               8


typedef struct {
    u_char                             color;
    u_char                             dummy;
    u_short                            len;
    ngx_queue_t                        queue;
    ngx_msec_t                         blocked;   /* over the limit until */
    ngx_msec_t                         expire;    /* no state left after */
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
} ngx_http_aai_ratelimit_ctx_t;


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
    ngx_queue_t                        charges;   /* charge= usage sent */
    unsigned                           eval:1;
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


static ngx_int_t ngx_http_aai_ratelimit_handler(ngx_http_request_t *r);
static ngx_http_aai_ratelimit_ctx_t *ngx_http_aai_ratelimit_get_ctx(
    ngx_http_request_t *r);
static ngx_http_aai_ratelimit_ctx_t *ngx_http_aai_ratelimit_create_ctx(
    ngx_http_request_t *r);
static void ngx_http_aai_ratelimit_cleanup(void *data);
static void ngx_http_aai_ratelimit_leased(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static void ngx_http_aai_ratelimit_renew(ngx_event_t *ev);
static void ngx_http_aai_ratelimit_release(ngx_http_aai_ratelimit_ctx_t *ctx);
static void ngx_http_aai_ratelimit_orphan(ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_aai_ratelimit_keys(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_aai_ratelimit_long_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out);
static ngx_int_t ngx_http_aai_ratelimit_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_aai_ratelimit_wait(ngx_http_request_t *r);
static void ngx_http_aai_ratelimit_batch_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_aai_ratelimit_batch_send(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_uint_t ngx_http_aai_ratelimit_batch_keys(
    ngx_http_aai_ratelimit_batch_t *b, ngx_str_t *argv, u_short *occ);
static ngx_http_aai_ratelimit_bkey_t *ngx_http_aai_ratelimit_batch_key(
    ngx_str_t *key, ngx_uint_t stamp);
static ngx_uint_t ngx_http_aai_ratelimit_def(void *z,
    ngx_http_aai_ratelimit_zreq_t *zr, ngx_str_t **a, ngx_uint_t *ndefs,
    ngx_uint_t costs);
static ngx_int_t ngx_http_aai_ratelimit_log_handler(ngx_http_request_t *r);
static void ngx_http_aai_ratelimit_reply_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_int_t ngx_http_aai_ratelimit_check_reply(
    ngx_http_aai_ratelimit_batch_t *b, redisReply *reply);
static size_t ngx_http_aai_ratelimit_reply_len(
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e);
static void ngx_http_aai_ratelimit_parse(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e);
static void ngx_http_aai_ratelimit_batch_fail(
    ngx_http_aai_ratelimit_batch_t *b, ngx_uint_t reason, const char *error,
    redisReply *reply);
static void ngx_http_aai_ratelimit_resume(ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_http_aai_ratelimit_batch_t *ngx_http_aai_ratelimit_batch_get(
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static void ngx_http_aai_ratelimit_batch_free(
    ngx_http_aai_ratelimit_batch_t *b);
static void ngx_http_aai_ratelimit_batch_exit(void);
static void ngx_http_aai_ratelimit_fallback(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t reason, const char *error,
    redisReply *reply);
static void ngx_http_aai_ratelimit_log_failure(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, const char *error, redisReply *reply);
static void ngx_http_aai_ratelimit_decide(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source);
static ngx_int_t ngx_http_aai_ratelimit_top(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t rejected);
static void ngx_http_aai_ratelimit_log(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source);
static void ngx_http_aai_ratelimit_count(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t source);
static ngx_int_t ngx_http_aai_ratelimit_finish(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static void ngx_http_aai_ratelimit_delay(ngx_http_request_t *r);

static ngx_int_t ngx_http_aai_ratelimit_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_aai_ratelimit_add_header(ngx_http_request_t *r,
    ngx_str_t *name, u_char *value, u_char *last);

static void ngx_http_aai_ratelimit_local_key(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t i, ngx_str_t *key);
static ngx_int_t ngx_http_aai_ratelimit_blocked(
    ngx_http_aai_ratelimit_ctx_t *ctx);
static void ngx_http_aai_ratelimit_block(ngx_http_aai_ratelimit_ctx_t *ctx);
static void ngx_http_aai_ratelimit_local(ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_uint_t ngx_http_aai_ratelimit_local_check(
    ngx_http_aai_ratelimit_ctx_t *ctx, uint64_t now);
static void ngx_http_aai_ratelimit_local_account(
    ngx_http_aai_ratelimit_ctx_t *ctx, uint64_t now);
static ngx_http_aai_ratelimit_node_t *ngx_http_aai_ratelimit_lookup(
    ngx_http_aai_ratelimit_main_conf_t *mcf, ngx_str_t *key,
    ngx_uint_t create);
static void ngx_http_aai_ratelimit_expire(
    ngx_http_aai_ratelimit_main_conf_t *mcf, ngx_uint_t force);
static void ngx_http_aai_ratelimit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_aai_ratelimit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);

static ngx_int_t ngx_http_aai_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void *ngx_http_aai_ratelimit_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_aai_ratelimit_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_aai_ratelimit_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_aai_ratelimit_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_aai_ratelimit_zone_concurrency(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_aai_ratelimit_zone_t *zone);
static char *ngx_http_aai_ratelimit_zone_param(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *value,
    ngx_uint_t *nodelay);
static ngx_int_t ngx_http_aai_ratelimit_parse_rate(ngx_str_t *value,
    ngx_http_aai_ratelimit_zone_t *zone);
static char *ngx_http_aai_ratelimit_zone_args(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_zone_t *zone);
static char *ngx_http_aai_ratelimit_zone_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone);
static ngx_http_aai_ratelimit_zone_t *ngx_http_aai_ratelimit_find_zone(
    ngx_conf_t *cf, ngx_command_t *cmd, ngx_str_t *name);
static char *ngx_http_aai_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_ratelimit_set_status(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_ratelimit_set_enum(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_ratelimit_local_zone(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_aai_ratelimit_check_zones(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static ngx_int_t ngx_http_aai_ratelimit_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf);

static ngx_int_t ngx_http_aai_ratelimit_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_ratelimit_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_ratelimit_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_ratelimit_exit_process(ngx_cycle_t *cycle);


/*
 * The check of all the requests of a batch, zone after zone, atomic in
 * Redis, as if each were checked alone at the same instant, the batch's
 * TIME: two requests of one key in one batch are simultaneous (so a GCRA
 * zone without burst admits one of them, as limit_req does within a
 * millisecond).
 *
 * KEYS: the distinct keys of the batch.  ARGV[1]: the layout, a byte
 * string: per request its number of zones, then per zone its definition
 * (1-based, below) and its key (two bytes, 1-based, high bit set when
 * other zones of the batch share the key); ARGV[2]: "1" to drop every
 * expired entry seen; then per definition: algorithm (0 sliding, 1 gcra,
 * 2 counter), limit, window (us), burst, the excess served without delay.
 *
 * A sliding window key is a list of admission times (us), oldest first:
 * an admission is never earlier than the last one (it is the batch's TIME,
 * or for a delayed request the time the l-th newest leaves the window,
 * later than any admission so far), so the list stays in order without
 * sorting.  The expired entries are at its head: the oldest four are read
 * (LRANGE; when all four are expired, a binary search by LINDEX finds the
 * first live one, so a long expired head costs O(log n) commands), counted
 * out, and dropped once two or more are (LTRIM).  The newest is LINDEX -1,
 * and the one whose leaving admits the next request LINDEX -limit.  In a
 * list Redis keeps a few bytes per entry, packed, where a sorted set costs
 * a hash entry and a skip list node.
 *
 * A key of a zone without burst lives 1.5 windows from its last PEXPIRE,
 * which an admission skips when nothing was dropped and the oldest entry
 * is less than half a window old: the admission that last set the TTL is
 * then in the list (an entry leaves it only by being dropped, and a key
 * drops entries without a PEXPIRE only when it rejects by itself, which
 * needs "limit" entries newer than that one), not older than the oldest,
 * so the key outlives its newest entry by a window.
 *
 * A counter key is a string "c<start>:<count>:<previous>": the start (us)
 * of the fixed window it counts, its count, and the count of the window
 * before.  A request is admitted when its count, plus one, plus the
 * previous count weighted by the part of the previous window still inside
 * the sliding window, is at most the limit: one GET, and one SET when it
 * is admitted.  A key of another format (a list, a GCRA number) counts as
 * empty and is overwritten.
 *
 * A request is decided in every zone first (a rejection records nothing),
 * then recorded.  A key used once in the batch, of a sliding zone without
 * burst, gets the request's admission at once (RPUSH, whose reply counts
 * the list), taken back (RPOP) when the request is rejected.  The work of
 * a key shared in the batch is done once: its state is read once, and its
 * admissions are written once at the end.
 *
 * Returns per request: -1 and per zone rejected, delay ms, remaining,
 * reset ms, retry after ms, when a zone rejects or delays; else
 * remaining for one sliding zone without burst with an unshared key
 * (reset: the window); else remaining and reset for one zone; else the
 * most restrictive zone (1-based), its remaining and its reset.  Delays
 * are rounded down to milliseconds, as limit_req does: the requests of a
 * batch share one instant, and waits shorter than a millisecond between
 * them are none.
 *
 * The Lua of Redis is slow per operation: the common requests take short
 * paths, and every string the Redis commands need is made once.
 */

static const char  ngx_http_aai_ratelimit_script[] =
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local call, pcall, byte, fmt = redis.call, redis.pcall, string.byte,\n"
"                               string.format\n"
"local ceil, floor, type, tonumber = math.ceil, math.floor, type, tonumber\n"
"local match = string.match\n"
"local t = call('TIME')\n"
"local now = t[1] * 1000000 + t[2]\n"
"local snow, lay = fmt('%d', now), ARGV[1]\n"
"local flag, lp = string.sub(ARGV[2], 1, 1), string.sub(ARGV[2], 2)\n"
"local trim = flag == '1' or flag == '3'\n"
"local na = flag >= '2' and 6 or 5\n"
"local alg, lim, win, bur, dly, cst = {}, {}, {}, {}, {}, {}\n"
"local cut, sttl, wttl, wms, half = {}, {}, {}, {}, {}\n"
"local cws, cwt, cpre, cttl = {}, {}, {}, {}\n"
"local nd = 0\n"
"for j = 3, #ARGV, na do\n"
"  nd = nd + 1\n"
"  alg[nd], lim[nd] = tonumber(ARGV[j]), tonumber(ARGV[j + 1])\n"
"  win[nd], bur[nd] = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])\n"
"  dly[nd], cst[nd] = tonumber(ARGV[j + 4]), 1\n"
"  if na == 6 then cst[nd] = tonumber(ARGV[j + 5]) end\n"
"  cut[nd] = now - win[nd]\n"
"  wms[nd] = ceil(win[nd] / 1000)\n"
"  wttl[nd] = fmt('%d', wms[nd] + 1)\n"
"  sttl[nd] = fmt('%d', ceil(win[nd] * 1.5 / 1000) + 1)\n"
"  half[nd] = now - win[nd] / 2\n"
"  if alg[nd] == 2 then\n"
"    cws[nd] = floor(now / win[nd]) * win[nd]\n"
"    cwt[nd] = (cws[nd] + win[nd] - now) / win[nd]\n"
"    cpre[nd] = fmt('c%d:', cws[nd])\n"
"    cttl[nd] = fmt('%d', ceil((cws[nd] + 2 * win[nd] - now) / 1000) + 1)\n"
"  end\n"
"end\n"
"local function old(k, d, n)\n"
"  local x = cut[d]\n"
"  local h = call('LRANGE', k, 0, 3)\n"
"  local a, b = 1, #h + 1\n"
"  while a < b do\n"
"    local i = floor((a + b) / 2)\n"
"    if tonumber(h[i]) > x then b = i else a = i + 1 end\n"
"  end\n"
"  local e = a - 1\n"
"  if e == #h and e < n then\n"
"    a, b = e, n\n"
"    while a < b do\n"
"      local i = floor((a + b) / 2)\n"
"      if tonumber(call('LINDEX', k, i)) > x then b = i else a = i + 1 end\n"
"    end\n"
"    e = a\n"
"  end\n"
"  if e >= n then\n"
"    call('DEL', k)\n"
"  elseif e >= 2 or (trim and e > 0) then\n"
"    call('LTRIM', k, e, -1)\n"
"  end\n"
"  return e, h[1]\n"
"end\n"
"local function count(k, d)\n"
"  if alg[d] == 0 then\n"
"    local n = pcall('LLEN', k)\n"
"    if type(n) == 'number' then\n"
"      if n == 0 then return 0 end\n"
"      return n - old(k, d, n)\n"
"    end\n"
"  elseif alg[d] == 3 then\n"
"    local n = pcall('ZREMRANGEBYSCORE', k, '-inf', snow)\n"
"    if type(n) == 'number' then return call('ZCARD', k) end\n"
"  else\n"
"    local v = pcall('GET', k)\n"
"    if type(v) ~= 'table' then return tonumber(v) or 0 end\n"
"  end\n"
"  call('DEL', k)\n"
"  return 0\n"
"end\n"
"local function add(k, d)\n"
"  local m = pcall('RPUSH', k, snow)\n"
"  if type(m) ~= 'number' then\n"
"    call('DEL', k)\n"
"    m = call('RPUSH', k, snow)\n"
"  end\n"
"  local c, f = m - 1, false\n"
"  if c > 0 then\n"
"    local e, h = old(k, d, m)\n"
"    c, f = c - e, e == 0 and tonumber(h) > half[d]\n"
"  end\n"
"  if c < lim[d] then return c, true, f end\n"
"  call('RPOP', k)\n"
"  return c, false, f\n"
"end\n"
"local function last(k, c)\n"
"  if c == 0 then return now end\n"
"  return tonumber(call('LINDEX', k, -1))\n"
"end\n"
"local function cget(k, d)\n"
"  local v = pcall('GET', k)\n"
"  if type(v) == 'string' then\n"
"    local s, c, p = match(v, '^c(%d+):(%d+):(%d+)$')\n"
"    if s then\n"
"      s = tonumber(s)\n"
"      if s == cws[d] then return tonumber(c), tonumber(p) end\n"
"      if s == cws[d] - win[d] then return 0, tonumber(c) end\n"
"    end\n"
"  end\n"
"  return 0, 0\n"
"end\n"
"local function cset(k, d, c, p)\n"
"  call('SET', k, cpre[d] .. fmt('%d:%d', c, p), 'PX', cttl[d])\n"
"end\n"
"local function expire(k, d, ttl)\n"
"  if bur[d] == 0 then ttl = sttl[d]\n"
"  elseif ttl == wms[d] + 1 then ttl = wttl[d] end\n"
"  call('PEXPIRE', k, ttl)\n"
"end\n"
"local kc, kq, kf, kt, kd, kp = {}, {}, {}, {}, {}, {}\n"
"local function push(k)\n"
"  local q, f = kq[k], kf[k]\n"
"  local n = q + (f and #f or 0)\n"
"  if n == 0 then return end\n"
"  local a = {}\n"
"  for i = 1, n do\n"
"    a[i] = i <= q and snow or fmt('%d', f[i - q])\n"
"  end\n"
"  for i = 1, n, 1000 do\n"
"    call('RPUSH', KEYS[k], unpack(a, i, math.min(i + 999, n)))\n"
"  end\n"
"  kc[k], kq[k], kf[k] = kc[k] + n, 0, nil\n"
"end\n"
"local function rpush(key, v, q)\n"
"  local a = {}\n"
"  for i = 1, math.min(q, 1000) do a[i] = v end\n"
"  while q > 0 do\n"
"    local m = math.min(q, 1000)\n"
"    call('RPUSH', key, unpack(a, 1, m))\n"
"    q = q - m\n"
"  end\n"
"end\n"
"local function charge(d, hi, lo)\n"
"  local q, k, sh = cst[d], hi * 256 + lo, hi >= 128\n"
"  if sh then k = k - 32768 end\n"
"  local key = KEYS[k]\n"
"  if q <= 0 then return end\n"
"  if sh and kc[k] == nil then\n"
"    if alg[d] == 2 then kc[k], kp[k] = cget(key, d)\n"
"    else kc[k] = count(key, d) end\n"
"    kq[k], kt[k], kd[k] = 0, 0, d\n"
"  end\n"
"  if alg[d] == 0 then\n"
"    if sh then push(k) end\n"
"    local t, v = now, pcall('LINDEX', key, -1)\n"
"    if type(v) == 'table' then call('DEL', key)\n"
"    elseif v then\n"
"      v = tonumber(v)\n"
"      if v and v > now then t = v end\n"
"    end\n"
"    rpush(key, fmt('%d', t), q)\n"
"    if sh then kc[k] = kc[k] + q end\n"
"    expire(key, d, ceil((t - now) / 1000) + wms[d] + 1)\n"
"  elseif alg[d] == 2 then\n"
"    if sh then\n"
"      kc[k] = kc[k] + q\n"
"      if kt[k] == 0 then kt[k] = 1 end\n"
"    else\n"
"      local c, p = cget(key, d)\n"
"      cset(key, d, c + q, p)\n"
"    end\n"
"  else\n"
"    local tat\n"
"    if sh then tat = kc[k]\n"
"    else\n"
"      local v = pcall('GET', key)\n"
"      tat = type(v) == 'string' and tonumber(v) or 0\n"
"    end\n"
"    if tat < now then tat = now end\n"
"    tat = tat + q * win[d] / lim[d]\n"
"    local ttl = ceil((tat - now) / 1000) + 1\n"
"    if sh then\n"
"      kc[k] = tat\n"
"      if ttl > kt[k] then kt[k] = ttl end\n"
"    else\n"
"      call('SET', key, fmt('%d', tat), 'PX', ttl)\n"
"    end\n"
"  end\n"
"end\n"
"local pos, o, nl, out = 1, 0, #lay, {}\n"
"local zk, zd, za, zr, zv, zp, zc, zo = {}, {}, {}, {}, {}, {}, {}, {}\n"
"local zf, ri = {}, 0\n"
"while pos <= nl do\n"
"  local n, d, hi, lo = byte(lay, pos, pos + 3)\n"
"  local c\n"
"  if n > 0 then ri = ri + 1 end\n"
"  if n == 0 then\n"
"    charge(d, hi, lo)\n"
"    pos = pos + 4\n"
"  end\n"
"  if n == 1 and hi < 128 and alg[d] == 0 and bur[d] == 0\n"
"     and cst[d] == 1\n"
"  then\n"
"    local key, added, fresh = KEYS[hi * 256 + lo], nil, nil\n"
"    c, added, fresh = add(key, d)\n"
"    if added then\n"
"      o = o + 1\n"
"      out[o] = lim[d] - c - 1\n"
"      if not fresh then expire(key, d, 0) end\n"
"      pos = pos + 4\n"
"      n = 0\n"
"    end\n"
"  end\n"
"  if n > 0 then\n"
"    pos = pos + 1\n"
"    local rej, special, top, tl, tr = false, false, 0, 0, 0\n"
"    for i = 1, n do\n"
"      local d, hi, lo = byte(lay, pos, pos + 2)\n"
"      pos = pos + 3\n"
"      local k, key = hi * 256 + lo, nil\n"
"      zp[i], zf[i] = false, false\n"
"      if hi >= 128 then\n"
"        k = k - 32768\n"
"        key = KEYS[k]\n"
"        if kc[k] == nil then\n"
"          if alg[d] == 2 then\n"
"            kc[k], kp[k] = cget(key, d)\n"
"          else\n"
"            kc[k] = count(key, d)\n"
"          end\n"
"          kq[k], kt[k], kd[k] = 0, 0, d\n"
"        end\n"
"        c = kc[k]\n"
"      else\n"
"        key = KEYS[k]\n"
"        k = -k\n"
"        if n > 1 or c == nil then\n"
"          if alg[d] == 0 and bur[d] == 0 and cst[d] == 1 then\n"
"            c, zp[i], zf[i] = add(key, d)\n"
"          elseif alg[d] == 2 then\n"
"            c, zo[i] = cget(key, d)\n"
"          else\n"
"            c = count(key, d)\n"
"          end\n"
"        end\n"
"      end\n"
"      local l, w, b, q = lim[d], win[d], bur[d], cst[d]\n"
"      local u = q > 0 and q or 1\n"
"      local no, wait, left, reset, retry, at = 0, 0, 0, 0, 0, now\n"
"      if alg[d] == 0 then\n"
"        if k > 0 then c = c + kq[k] + (kf[k] and #kf[k] or 0) end\n"
"        local cu = c + u - 1\n"
"        if cu < l and b == 0 then\n"
"          left, reset = l - cu - 1, w\n"
"        else\n"
"          if k > 0 then push(k) end\n"
"          local lst = last(key, c)\n"
"          if cu < l then\n"
"            left = l - cu - 1\n"
"            reset = (lst > now and lst or now) + w - now\n"
"          elseif u > l then\n"
"            no, retry, reset = 1, w, lst + w - now\n"
"          else\n"
"            local e = cu - l + 1\n"
"            at = tonumber(call('LINDEX', key, u - l - 1)) + w\n"
"            if e > b then\n"
"              no, retry = 1, at - now\n"
"              reset = lst + w - now\n"
"            else\n"
"              if e > dly[d] then wait = at - now end\n"
"              reset = (lst > at and lst or at) + w - now\n"
"            end\n"
"          end\n"
"        end\n"
"      elseif alg[d] == 2 then\n"
"        local p, s = k > 0 and kp[k] or zo[i], cws[d]\n"
"        local e = c + p * cwt[d]\n"
"        zc[i] = c\n"
"        if e + u <= l then\n"
"          left, reset = floor(l - e - u), s + 2 * w - now\n"
"        else\n"
"          no = 1\n"
"          if u > l then\n"
"            retry, reset = w, s + 2 * w - now\n"
"          elseif c + u - 1 < l then\n"
"            retry = s + w - (l - c - u) * w / p - now\n"
"            reset = s + w - now\n"
"            if c > 0 then reset = reset + w end\n"
"          else\n"
"            retry = s + 2 * w - (l - u) * w / c - now\n"
"            reset = s + 2 * w - now\n"
"          end\n"
"        end\n"
"      elseif alg[d] == 3 then\n"
"        if c < l then\n"
"          left, reset = l - c - 1, w\n"
"        else\n"
"          local h = call('ZRANGE', key, 0, 0, 'WITHSCORES')\n"
"          retry = h[2] and tonumber(h[2]) - now or w\n"
"          if retry < 1000 then retry = 1000 end\n"
"          no, reset = 1, retry\n"
"        end\n"
"      else\n"
"        local p = w / l\n"
"        local tat = c > now and c or now\n"
"        local tq = tat + (u - 1) * p\n"
"        if tq - now > b * p then\n"
"          no, retry, reset = 1, tq - now - b * p, tat - now\n"
"        else\n"
"          wait = tq - now - dly[d] * p\n"
"          if wait < 0 then wait = 0 end\n"
"          at = tat + q * p\n"
"          reset = at - now\n"
"          left = floor((b * p - (tq - now)) / p)\n"
"          if left < 0 then left = 0 end\n"
"        end\n"
"      end\n"
"      reset = ceil(reset / 1000)\n"
"      wait = floor(wait / 1000)\n"
"      if no == 1 then\n"
"        rej, special, retry = true, true, ceil(retry / 1000)\n"
"      elseif wait > 0 then\n"
"        special = true\n"
"      end\n"
"      zk[i], zd[i], za[i], zr[i] = k, d, at, reset\n"
"      if n > 1 or special then\n"
"        local v = 5 * i\n"
"        zv[v - 4], zv[v - 3], zv[v - 2], zv[v - 1], zv[v] =\n"
"          no, wait, left, reset, retry\n"
"      end\n"
"      if top == 0 or left < tl or (left == tl and reset > tr) then\n"
"        top, tl, tr = i, left, reset\n"
"      end\n"
"    end\n"
"    if special then\n"
"      out[o + 1] = -1\n"
"      for i = 1, 5 * n do out[o + 1 + i] = zv[i] end\n"
"      o = o + 1 + 5 * n\n"
"    elseif n == 1 then\n"
"      out[o + 1], out[o + 2] = tl, tr\n"
"      o = o + 2\n"
"    else\n"
"      out[o + 1], out[o + 2], out[o + 3] = top, tl, tr\n"
"      o = o + 3\n"
"    end\n"
"    if rej then\n"
"      for i = 1, n do\n"
"        if zp[i] then\n"
"          call('RPOP', KEYS[-zk[i]])\n"
"          if not zf[i] then expire(KEYS[-zk[i]], zd[i], 0) end\n"
"        end\n"
"      end\n"
"    else\n"
"      for i = 1, n do\n"
"        local k, d, at, ttl = zk[i], zd[i], za[i], zr[i] + 1\n"
"        if alg[d] == 3 then\n"
"          local key = KEYS[k > 0 and k or -k]\n"
"          call('ZADD', key, fmt('%d', now + win[d]), lp .. ri)\n"
"          call('PEXPIRE', key, wttl[d])\n"
"          if k > 0 then kc[k] = kc[k] + 1 end\n"
"        elseif k > 0 then\n"
"          local q = cst[d]\n"
"          if alg[d] == 1 then\n"
"            kc[k] = at\n"
"          elseif alg[d] == 2 then\n"
"            kc[k] = kc[k] + q\n"
"          elseif at == now then\n"
"            kq[k] = kq[k] + q\n"
"          elseif q > 0 then\n"
"            local f = kf[k]\n"
"            if f == nil then f = {}; kf[k] = f end\n"
"            for j = 1, q do f[#f + 1] = at end\n"
"          end\n"
"          if ttl > kt[k] then kt[k] = ttl end\n"
"        else\n"
"          local key = KEYS[-k]\n"
"          if alg[d] == 0 then\n"
"            if not zp[i] and cst[d] > 0 then\n"
"              rpush(key, at == now and snow or fmt('%d', at), cst[d])\n"
"            end\n"
"            if not zf[i] then expire(key, d, ttl) end\n"
"          elseif alg[d] == 2 then\n"
"            cset(key, d, zc[i] + cst[d], zo[i])\n"
"          else\n"
"            call('SET', key, fmt('%d', at), 'PX', ttl)\n"
"          end\n"
"        end\n"
"      end\n"
"    end\n"
"  end\n"
"end\n"
"for k, d in pairs(kd) do\n"
"  if kt[k] > 0 then\n"
"    if alg[d] == 0 then\n"
"      push(k)\n"
"      expire(KEYS[k], d, kt[k])\n"
"    elseif alg[d] == 2 then\n"
"      cset(KEYS[k], d, kc[k], kp[k])\n"
"    else\n"
"      call('SET', KEYS[k], fmt('%d', kc[k]), 'PX', kt[k])\n"
"    end\n"
"  elseif alg[d] == 0 and bur[d] == 0 then\n"
"    expire(KEYS[k], d, 0)\n"
"  end\n"
"end\n"
"return out\n";


static ngx_conf_enum_t  ngx_http_aai_ratelimit_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_aai_ratelimit_fallbacks[] = {
    { ngx_string("allow"), NGX_HTTP_AAI_RL_FALLBACK_ALLOW },
    { ngx_string("deny"), NGX_HTTP_AAI_RL_FALLBACK_DENY },
    { ngx_string("local"), NGX_HTTP_AAI_RL_FALLBACK_LOCAL },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_aai_ratelimit_commands[] = {

    { ngx_string("aai_ratelimit_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_aai_ratelimit_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_ratelimit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_aai_ratelimit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_ratelimit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_ratelimit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_ratelimit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_ratelimit_set_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, status_code),
      NULL },

    { ngx_string("aai_ratelimit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, dry_run),
      NULL },

    { ngx_string("aai_ratelimit_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, limit_log_level),
      &ngx_http_aai_ratelimit_log_levels },

    { ngx_string("aai_ratelimit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, headers),
      NULL },

    { ngx_string("aai_ratelimit_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, fallback),
      &ngx_http_aai_ratelimit_fallbacks },

    { ngx_string("aai_ratelimit_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_main_conf_t, prefix),
      NULL },

    { ngx_string("aai_ratelimit_local_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_ratelimit_local_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    NGX_AAI_METRICS_COMMAND,

    NGX_AAI_JWT_COMMANDS(ngx_http_aai_ratelimit_loc_conf_t, jwt)

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_ratelimit_module_ctx = {
    ngx_http_aai_ratelimit_add_variables,   /* preconfiguration */
    ngx_http_aai_ratelimit_init,            /* postconfiguration */

    ngx_http_aai_ratelimit_create_main_conf, /* create main configuration */
    ngx_http_aai_ratelimit_init_main_conf,  /* init main configuration */

    NULL,                                   /* create server configuration */
    NULL,                                   /* merge server configuration */

    ngx_http_aai_ratelimit_create_loc_conf, /* create location configuration */
    ngx_http_aai_ratelimit_merge_loc_conf   /* merge location configuration */
};


ngx_module_t  ngx_http_aai_ratelimit_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_ratelimit_module_ctx,     /* module context */
    ngx_http_aai_ratelimit_commands,        /* module directives */
    NGX_HTTP_MODULE,                        /* module type */
    NULL,                                   /* init master */
    NULL,                                   /* init module */
    ngx_http_aai_ratelimit_init_process,    /* init process */
    NULL,                                   /* init thread */
    NULL,                                   /* exit thread */
    ngx_http_aai_ratelimit_exit_process,    /* exit process */
    NULL,                                   /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_aai_ratelimit_vars[] = {

    { ngx_string("aai_ratelimit_status"), NULL,
      ngx_http_aai_ratelimit_status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_aai_ratelimit_status[] = {
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("PASSED_DRY_RUN"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("DELAYED"),
    ngx_string("ERROR")
};


static const char  *ngx_http_aai_ratelimit_outcomes[] = {
    "passed", "rejected", "dry_run_rejected", "delayed", "error"
};


static const char  *ngx_http_aai_ratelimit_reasons[] = {
    "timeout", "unavailable", "reply"
};


static const ngx_uint_t  ngx_http_aai_ratelimit_latency_bounds[] = {
    500, 1000, 2000, 5000, 10000, 25000, 50000, 100000, 250000
};


static ngx_str_t  ngx_http_aai_ratelimit_evalsha = ngx_string("EVALSHA");
static ngx_str_t  ngx_http_aai_ratelimit_eval = ngx_string("EVAL");
static ngx_str_t  ngx_http_aai_ratelimit_shm_name =
    ngx_string("aai_ratelimit");


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

/* per worker: the batch sequence number, failure log limits */
static ngx_uint_t  ngx_http_aai_ratelimit_seq;
static time_t      ngx_http_aai_ratelimit_log_time;
static ngx_uint_t  ngx_http_aai_ratelimit_log_skipped;

/* per worker: the batch being filled, those in flight, spare ones */
static ngx_http_aai_ratelimit_batch_t  *ngx_http_aai_ratelimit_open;
static ngx_queue_t                      ngx_http_aai_ratelimit_flight;
static ngx_queue_t                      ngx_http_aai_ratelimit_spare;
static ngx_uint_t                       ngx_http_aai_ratelimit_nspare;

/* per worker: where a batch's command is built, reused by the next one */
static ngx_str_t   ngx_http_aai_ratelimit_argv[3 + NGX_HTTP_AAI_RL_BATCH
                                               + 2 + NGX_HTTP_AAI_RL_BATCH
                                                 * NGX_HTTP_AAI_RL_DEF_ARGS];
static u_char      ngx_http_aai_ratelimit_layout[NGX_HTTP_AAI_RL_BATCH * 4];
static ngx_http_aai_ratelimit_bkey_t
                   ngx_http_aai_ratelimit_bkeys[NGX_HTTP_AAI_RL_KEYS_HASH];


static ngx_int_t
ngx_http_aai_ratelimit_handler(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t       *ctx;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx && ctx->state == NGX_HTTP_AAI_RL_WAITING) {
        return NGX_AGAIN;
    }

    if (ctx && ctx->state == NGX_HTTP_AAI_RL_DONE) {

        /* limited once per request, as limit_req */

        if (!ctx->resume) {
            return NGX_DECLINED;
        }

        ctx->resume = 0;

        return ngx_http_aai_ratelimit_finish(r, ctx);
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_ratelimit_module);

    if (lcf->zones == NULL) {
        return NGX_DECLINED;
    }

    if (ctx == NULL) {
        ctx = ngx_http_aai_ratelimit_create_ctx(r);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ctx->lcf = lcf;

    if (ngx_http_aai_ratelimit_keys(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->nzones == 0) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_AAI_RL_DONE;

    if (ngx_http_aai_ratelimit_blocked(ctx) == NGX_OK) {
        ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_BLOCKLIST);
        return ngx_http_aai_ratelimit_finish(r, ctx);
    }

    if (ngx_http_aai_ratelimit_enqueue(r, ctx) == NGX_OK) {
        ctx->state = NGX_HTTP_AAI_RL_WAITING;
        return ngx_http_aai_ratelimit_wait(r);
    }

    ngx_http_aai_ratelimit_fallback(r, ctx, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                    "unavailable", NULL);

    return ngx_http_aai_ratelimit_finish(r, ctx);
}


/*
 * The context belongs to the main request and survives internal redirects
 * (which clear module contexts) through its pool cleanup, as in the realip
 * module: a request is limited once, and $aai_ratelimit_status and the
 * headers stay available.
 */

static ngx_http_aai_ratelimit_ctx_t *
ngx_http_aai_ratelimit_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    r = r->main;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_ratelimit_module);

    if (ctx != NULL) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_aai_ratelimit_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_aai_ratelimit_module);
            return ctx;
        }
    }

    return NULL;
}


static ngx_http_aai_ratelimit_ctx_t *
ngx_http_aai_ratelimit_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    r = r->main;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_aai_ratelimit_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = cln->data;

    ngx_memzero(ctx, sizeof(ngx_http_aai_ratelimit_ctx_t));

    ctx->request = r;
    ctx->top = -1;
    ctx->rc = NGX_DECLINED;

    cln->handler = ngx_http_aai_ratelimit_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_aai_ratelimit_module);

    return ctx;
}


ngx_aai_jwt_ctx_t *
ngx_http_aai_ratelimit_jwt_ctx(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL) {
        ctx = ngx_http_aai_ratelimit_create_ctx(r);
        if (ctx == NULL) {
            return NULL;
        }
    }

    return &ctx->jwt;
}


static void
ngx_http_aai_ratelimit_cleanup(void *data)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx = data;

    if (ctx->batch) {

        /* its batch is in Redis: the lease is released with the reply */

        if (ctx->conc && ctx->batch->slots[ctx->slot].sent) {
            ngx_http_aai_ratelimit_orphan(ctx);
        }

        ctx->batch->slots[ctx->slot].ctx = NULL;
        ctx->batch = NULL;
    }

    if (ctx->leased) {
        ngx_http_aai_ratelimit_release(ctx);
    }
}


/* an admitted request holds a lease in its concurrency= zones */

static void
ngx_http_aai_ratelimit_leased(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_uint_t   i;
    ngx_msec_t   lease;
    ngx_event_t  *ev;

    ctx->leased = 1;
    ctx->redis = mcf->redis;

    lease = 0;

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency
            && (lease == 0 || ctx->zones[i]->lease < lease))
        {
            lease = ctx->zones[i]->lease;
        }
    }

    ev = ngx_pcalloc(ctx->request->pool, sizeof(ngx_event_t));
    if (ev == NULL) {
        return;
    }

    ev->handler = ngx_http_aai_ratelimit_renew;
    ev->data = ctx;
    ev->log = ctx->request->connection->log;
    ev->cancelable = 1;

    ctx->renew = ev;

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


static void
ngx_http_aai_ratelimit_renew(ngx_event_t *ev)
{
    ngx_uint_t                      i;
    ngx_msec_t                      lease;
    ngx_http_aai_ratelimit_ctx_t   *ctx;
    ngx_http_aai_ratelimit_zone_t  *zone;

    ctx = ev->data;
    lease = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];

        if (!zone->concurrency) {
            continue;
        }

        ngx_http_aai_ratelimit_lease_renew(ctx->redis, &ctx->keys[i],
                                           &ctx->lease, zone->window);

        if (lease == 0 || zone->lease < lease) {
            lease = zone->lease;
        }
    }

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


static void
ngx_http_aai_ratelimit_release(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    ctx->leased = 0;

    if (ctx->renew && ctx->renew->timer_set) {
        ngx_del_timer(ctx->renew);
    }

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency) {
            ngx_http_aai_ratelimit_lease_release(ctx->redis, &ctx->keys[i],
                                                 &ctx->lease);
        }
    }
}


static void
ngx_http_aai_ratelimit_orphan(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency) {
            (void) ngx_http_aai_ratelimit_lease_orphan(&ctx->batch->orphans,
                                                       &ctx->keys[i],
                                                       &ctx->lease);
        }
    }
}


static ngx_int_t
ngx_http_aai_ratelimit_keys(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    u_char                         *p;
    ngx_str_t                       key;
    ngx_uint_t                      i, n;
    ngx_http_aai_ratelimit_opts_t **opts;
    ngx_http_aai_ratelimit_zone_t  *zone, **zones;

    zones = ctx->lcf->zones->elts;
    n = ctx->lcf->zones->nelts;

    ctx->nzones = 0;
    ctx->zones = ngx_palloc(r->pool,
                            n * sizeof(ngx_http_aai_ratelimit_zone_t *));
    ctx->keys = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    ctx->results = ngx_pcalloc(r->pool,
                               n * sizeof(ngx_http_aai_ratelimit_result_t));
    ctx->zreq = ngx_palloc(r->pool, n * sizeof(ngx_http_aai_ratelimit_zreq_t));

    if (ctx->zones == NULL || ctx->keys == NULL || ctx->results == NULL
        || ctx->zreq == NULL)
    {
        return NGX_ERROR;
    }

    opts = ctx->lcf->opts ? ctx->lcf->opts->elts : NULL;

    for (i = 0; i < n; i++) {
        zone = zones[i];

        if (ngx_http_complex_value(r, zone->key, &key) != NGX_OK) {
            return NGX_ERROR;
        }

        if (key.len == 0) {
            continue;
        }

        ngx_http_aai_ratelimit_zreq(r, zone->count, zone->limit,
                                    opts ? opts[i] : NULL,
                                    &ctx->zreq[ctx->nzones]);

        if (opts && opts[i] && opts[i]->charge) {
            ctx->charge = 1;
        }

        if (ctx->zreq[ctx->nzones].limit != zone->limit
            || ctx->zreq[ctx->nzones].cost != 1)
        {
            ctx->costs = 1;
        }

        if (zone->concurrency) {
            ctx->conc = 1;
        }

        if (key.len > 65535 - zone->name.len - 1) {
            if (ngx_http_aai_ratelimit_long_key(r, zone, &key,
                                                &ctx->keys[ctx->nzones])
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            ctx->zones[ctx->nzones++] = zone;
            continue;
        }

        p = ngx_pnalloc(r->pool, zone->prefix.len + key.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ctx->keys[ctx->nzones].data = p;
        p = ngx_cpymem(p, zone->prefix.data, zone->prefix.len);
        p = ngx_cpymem(p, key.data, key.len);
        ctx->keys[ctx->nzones].len = p - ctx->keys[ctx->nzones].data;

        ctx->zones[ctx->nzones++] = zone;
    }

    return NGX_OK;
}


/*
 * A key too long for the local state (its node keeps the length in 16
 * bits) is limited under its SHA-256: prefix, zone name, "#", 64 hex
 * digits.  A zone name has no "#" and every other key has ":" there, so
 * no key of any zone can name the same counter.  Shorter keys are used as
 * they are.
 */

static ngx_int_t
ngx_http_aai_ratelimit_long_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out)
{
    u_char  *p;
    u_char   md[SHA256_DIGEST_LENGTH];

    p = ngx_pnalloc(r->pool, zone->prefix.len + 2 * SHA256_DIGEST_LENGTH);
    if (p == NULL) {
        return NGX_ERROR;
    }

    SHA256(key->data, key->len, md);

    out->data = p;
    p = ngx_cpymem(p, zone->prefix.data, zone->prefix.len - 1);
    *p++ = '#';
    p = ngx_hex_dump(p, md, SHA256_DIGEST_LENGTH);
    out->len = p - out->data;

    return NGX_OK;
}


/*
 * The request waits in the batch of this event loop iteration, which is
 * sent when the iteration's posted events run.  While Redis is known to
 * be down the caller decides at once.
 */

static ngx_int_t
ngx_http_aai_ratelimit_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_http_aai_ratelimit_slot_t       *slot;
    ngx_http_aai_ratelimit_batch_t      *b;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);

    if (!ngx_aai_redis_available(mcf->redis)) {
        return NGX_ERROR;
    }

    b = ngx_http_aai_ratelimit_open;

    if (b && b->nzones + ctx->nzones > NGX_HTTP_AAI_RL_BATCH) {

        /* full: it is sent as posted, the next requests fill another */

        ngx_http_aai_ratelimit_open = NULL;
        b = NULL;
    }

    if (b == NULL) {
        b = ngx_http_aai_ratelimit_batch_get(mcf);
        if (b == NULL) {
            return NGX_ERROR;
        }

        ngx_http_aai_ratelimit_open = b;
        ngx_post_event(&b->event, &ngx_posted_events);
    }

    slot = &b->slots[b->nslots];

    slot->ctx = ctx;
    slot->nzones = (u_char) ctx->nzones;
    slot->fast = 0;
    slot->sent = 0;

    ctx->batch = b;
    ctx->slot = b->nslots++;

    b->nzones += ctx->nzones;
    b->costs |= ctx->costs;
    b->conc |= ctx->conc;

    return NGX_OK;
}


/* while Redis answers, a client closing the connection ends the request */

static ngx_int_t
ngx_http_aai_ratelimit_wait(ngx_http_request_t *r)
{
    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);

    } else {
        if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->read_event_handler = ngx_http_test_reading;

    return NGX_AGAIN;
}


static void
ngx_http_aai_ratelimit_batch_handler(ngx_event_t *ev)
{
    ngx_int_t                        rc;
    ngx_http_aai_ratelimit_batch_t  *b;

    b = ev->data;

    if (ngx_http_aai_ratelimit_open == b) {
        ngx_http_aai_ratelimit_open = NULL;
    }

    b->nzones += ngx_http_aai_ratelimit_charge_take(&b->charges,
                                             NGX_HTTP_AAI_RL_BATCH - b->nzones);

    if (!ngx_queue_empty(&b->charges)) {
        b->costs = 1;
    }

    rc = ngx_http_aai_ratelimit_batch_send(b);

    if (rc == NGX_DECLINED) {

        /* every request of the batch went away */

        ngx_http_aai_ratelimit_batch_free(b);
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                          "unavailable", NULL);
    }
}


/*
 * EVALSHA sha numkeys key... layout trim
 *         (algorithm limit window burst delay)...
 *
 * for the requests of the batch that are still there; NGX_DECLINED when
 * there are none.
 */

static ngx_int_t
ngx_http_aai_ratelimit_batch_send(ngx_http_aai_ratelimit_batch_t *b)
{
    u_char                              *p;
    ngx_str_t                           *argv, *a;
    ngx_uint_t                           i, j, k, o, nkeys, ndefs, shared;
    ngx_http_aai_ratelimit_ctx_t        *ctx;
    ngx_http_aai_ratelimit_slot_t       *slot;
    ngx_http_aai_ratelimit_bkey_t       *bk;
    ngx_str_t                            lease;
    ngx_uint_t                           ri;
    ngx_queue_t                         *q;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_zreq_t        zr;
    ngx_http_aai_ratelimit_charge_t     *ch;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;
    u_short                              occ[NGX_HTTP_AAI_RL_BATCH];

    static u_char  num[NGX_INT_T_LEN];
    static u_char  flag[1 + NGX_INT_T_LEN * 4 + 4];

    mcf = b->mcf;
    argv = ngx_http_aai_ratelimit_argv;

    ngx_http_aai_ratelimit_seq++;

    nkeys = ngx_http_aai_ratelimit_batch_keys(b, argv, occ);

    if (nkeys == 0) {
        return NGX_DECLINED;
    }

    /* the layout: per request its zones, per zone its definition and key */

    p = ngx_http_aai_ratelimit_layout;
    a = &argv[3 + nkeys + 2];
    ndefs = 0;
    o = 0;

    if (b->conc) {
        ngx_http_aai_ratelimit_lease_prefix(ngx_http_aai_ratelimit_seq,
                                            &lease);
    }

    ri = 0;

    /* charges first: a usage spent before these requests */

    for (q = ngx_queue_head(&b->charges);
         q != ngx_queue_sentinel(&b->charges);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);
        bk = &ngx_http_aai_ratelimit_bkeys[occ[o++]];

        zr.limit = ch->limit;
        zr.cost = ch->amount;

        *p++ = 0;
        *p++ = (u_char) ngx_http_aai_ratelimit_def(ch->zone, &zr, &a,
                                                   &ndefs, 1);
        *p++ = (u_char) ((bk->index >> 8) | (bk->uses > 1 ? 0x80 : 0));
        *p++ = (u_char) (bk->index & 0xff);
    }

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        ctx = slot->ctx;
        *p++ = slot->nzones;

        ri++;

        if (ctx->conc
            && ngx_http_aai_ratelimit_lease_member(ctx->request->pool, &lease,
                                                   ri, &ctx->lease)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (j = 0; j < ctx->nzones; j++) {
            zone = ctx->zones[j];
            bk = &ngx_http_aai_ratelimit_bkeys[occ[o++]];

            shared = (bk->uses > 1);

            *p++ = (u_char) ngx_http_aai_ratelimit_def(zone,
                                                       &ctx->zreq[j], &a,
                                                       &ndefs, b->costs);
            *p++ = (u_char) ((bk->index >> 8) | (shared ? 0x80 : 0));
            *p++ = (u_char) (bk->index & 0xff);

            slot->fast = (ctx->nzones == 1 && zone->fast && !shared
                          && ctx->zreq[j].cost == 1);
        }
    }

    if (b->eval) {
        argv[0] = ngx_http_aai_ratelimit_eval;
        argv[1].data = (u_char *) ngx_http_aai_ratelimit_script;
        argv[1].len = sizeof(ngx_http_aai_ratelimit_script) - 1;

    } else {
        argv[0] = ngx_http_aai_ratelimit_evalsha;
        argv[1] = mcf->sha;
    }

    argv[2].data = num;
    argv[2].len = ngx_sprintf(num, "%ui", nkeys) - num;

    k = 3 + nkeys;

    argv[k].data = ngx_http_aai_ratelimit_layout;
    argv[k].len = p - ngx_http_aai_ratelimit_layout;

    /*
     * "2" and "3": the definitions have a sixth argument, the cost; then
     * the prefix of the batch's leases
     */

    flag[0] = "0123"[b->costs * 2
                     + !(ngx_http_aai_ratelimit_seq % NGX_HTTP_AAI_RL_TRIM)];

    argv[k + 1].data = flag;
    argv[k + 1].len = 1;

    if (b->conc) {
        argv[k + 1].len = ngx_cpymem(flag + 1, lease.data, lease.len) - flag;
    }

    b->cmd = ngx_aai_redis_send(mcf->redis, ngx_cycle->log, a - argv, argv,
                                ngx_http_aai_ratelimit_reply_handler, b);
    if (b->cmd == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight, &b->queue);

    return NGX_OK;
}


/*
 * The definition (1-based) of a zone in the batch being built, its
 * arguments added at *a when new: the zone's own for its limit and a cost
 * of 1, one per other limit and cost (count= and cost=, charge=).  Only a
 * batch with costs sends the sixth argument: without count=, cost= and
 * charge= the command is what it was before them.
 */

static ngx_uint_t
ngx_http_aai_ratelimit_def(void *z, ngx_http_aai_ratelimit_zreq_t *zr,
    ngx_str_t **a, ngx_uint_t *ndefs, ngx_uint_t costs)
{
    u_char                         *p;
    ngx_str_t                      *v;
    ngx_uint_t                      i, nargs;
    ngx_http_aai_ratelimit_zone_t  *zone;

    static ngx_uint_t  stamp, n;
    static struct {
        void                       *zone;
        ngx_uint_t                  limit;
        ngx_uint_t                  cost;
        ngx_uint_t                  def;
        u_char                      num[2 * NGX_INT_T_LEN];
    }  defs[NGX_HTTP_AAI_RL_BATCH];

    zone = z;
    v = *a;

    if (zr->limit == zone->limit && zr->cost == 1) {

        if (zone->stamp != ngx_http_aai_ratelimit_seq) {
            zone->stamp = ngx_http_aai_ratelimit_seq;
            zone->def = ++*ndefs;

            nargs = costs ? NGX_HTTP_AAI_RL_DEF_ARGS
                          : NGX_HTTP_AAI_RL_ZONE_ARGS;

            for (i = 0; i < nargs; i++) {
                v[i] = zone->args[i];
            }

            *a = v + nargs;
        }

        return zone->def;
    }

    if (stamp != ngx_http_aai_ratelimit_seq) {
        stamp = ngx_http_aai_ratelimit_seq;
        n = 0;
    }

    for (i = 0; i < n; i++) {
        if (defs[i].zone == z && defs[i].limit == zr->limit
            && defs[i].cost == zr->cost)
        {
            return defs[i].def;
        }
    }

    /* never full: a batch has at most as many definitions as zones */

    defs[n].zone = z;
    defs[n].limit = zr->limit;
    defs[n].cost = zr->cost;
    defs[n].def = ++*ndefs;

    for (i = 0; i < NGX_HTTP_AAI_RL_DEF_ARGS; i++) {
        v[i] = zone->args[i];
    }

    p = defs[n].num;

    v[1].data = p;
    p = ngx_sprintf(p, "%ui", zr->limit);
    v[1].len = p - v[1].data;

    v[5].data = p;
    p = ngx_sprintf(p, "%ui", zr->cost);
    v[5].len = p - v[5].data;

    *a = v + NGX_HTTP_AAI_RL_DEF_ARGS;

    return defs[n++].def;
}


/*
 * The charges waiting in this worker go with a batch of their own (the
 * timer of ngx_http_aai_ratelimit_ai.c calls it when no request sent one).
 */

void
ngx_http_aai_ratelimit_flush(void)
{
    ngx_queue_t                          q;
    ngx_http_aai_ratelimit_batch_t      *b;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL || ngx_http_aai_ratelimit_open) {
        return;
    }

    if (!ngx_aai_redis_available(mcf->redis)) {

        /* a try each: Redis down for long loses them, counted */

        ngx_queue_init(&q);
        (void) ngx_http_aai_ratelimit_charge_take(&q, NGX_MAX_UINT32_VALUE);
        ngx_http_aai_ratelimit_charge_done(&q, NGX_ERROR);
        return;
    }

    b = ngx_http_aai_ratelimit_batch_get(mcf);
    if (b == NULL) {
        return;
    }

    ngx_http_aai_ratelimit_open = b;
    ngx_post_event(&b->event, &ngx_posted_events);
}


/* the log phase: the usage of zones with charge= waits for a batch */

static ngx_int_t
ngx_http_aai_ratelimit_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_ctx_t   *ctx;
    ngx_http_aai_ratelimit_zreq_t  *zr;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL || !ctx->charge || ctx->state != NGX_HTTP_AAI_RL_DONE) {
        return NGX_OK;
    }

    ctx->charge = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zr = &ctx->zreq[i];

        if (zr->opts == NULL || zr->opts->charge == NULL) {
            continue;
        }

        (void) ngx_http_aai_ratelimit_charge_add(r, ctx->zones[i],
                                                 &ctx->keys[i], zr);
    }

    return NGX_OK;
}


/*
 * The distinct keys of the requests still there, in argv from argv[3],
 * and where each zone of each request finds its key; returns their number.
 */

static ngx_uint_t
ngx_http_aai_ratelimit_batch_keys(ngx_http_aai_ratelimit_batch_t *b,
    ngx_str_t *argv, u_short *occ)
{
    ngx_uint_t                        i, j, o, nkeys;
    ngx_queue_t                      *q;
    ngx_http_aai_ratelimit_ctx_t     *ctx;
    ngx_http_aai_ratelimit_slot_t    *slot;
    ngx_http_aai_ratelimit_bkey_t    *bk;
    ngx_http_aai_ratelimit_charge_t  *ch;

    nkeys = 0;
    o = 0;

    for (q = ngx_queue_head(&b->charges);
         q != ngx_queue_sentinel(&b->charges);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);

        bk = ngx_http_aai_ratelimit_batch_key(&ch->key,
                                              ngx_http_aai_ratelimit_seq);

        if (bk->uses++ == 0) {
            bk->index = ++nkeys;
            argv[2 + nkeys] = ch->key;
        }

        occ[o++] = (u_short) (bk - ngx_http_aai_ratelimit_bkeys);
    }

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];
        ctx = slot->ctx;

        slot->sent = (ctx != NULL);

        if (ctx == NULL) {
            continue;
        }

        for (j = 0; j < ctx->nzones; j++) {
            bk = ngx_http_aai_ratelimit_batch_key(&ctx->keys[j],
                                                  ngx_http_aai_ratelimit_seq);

            if (bk->uses++ == 0) {
                bk->index = ++nkeys;
                argv[2 + nkeys] = ctx->keys[j];
            }

            occ[o++] = (u_short) (bk - ngx_http_aai_ratelimit_bkeys);
        }
    }

    return nkeys;
}


/* a key in the table of this batch's keys (never full: twice the zones) */

static ngx_http_aai_ratelimit_bkey_t *
ngx_http_aai_ratelimit_batch_key(ngx_str_t *key, ngx_uint_t stamp)
{
    uint32_t                        hash;
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_bkey_t  *bk;

    hash = (uint32_t) ngx_hash_key(key->data, key->len);

    for (i = hash; /* void */; i++) {
        bk = &ngx_http_aai_ratelimit_bkeys[i & (NGX_HTTP_AAI_RL_KEYS_HASH - 1)];

        if (bk->stamp != stamp) {
            bk->stamp = stamp;
            bk->key = key;
            bk->hash = hash;
            bk->uses = 0;
            bk->index = 0;
            return bk;
        }

        if (bk->hash == hash
            && bk->key->len == key->len
            && ngx_memcmp(bk->key->data, key->data, key->len) == 0)
        {
            return bk;
        }
    }
}


static void
ngx_http_aai_ratelimit_reply_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_ratelimit_batch_t *b = data;

    size_t                               len;
    ngx_int_t                            rc;
    ngx_uint_t                           i, reason;
    redisReply                          *reply, **e;
    ngx_http_request_t                  *r;
    ngx_http_aai_ratelimit_ctx_t        *ctx;
    ngx_http_aai_ratelimit_slot_t       *slot;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = b->mcf;

    b->cmd = NULL;
    ngx_queue_remove(&b->queue);

    reply = res->reply;

    if (reply == NULL) {
        reason = (res->error && ngx_strncmp(res->error, "timeout", 7) == 0)
                 ? NGX_HTTP_AAI_RL_E_TIMEOUT : NGX_HTTP_AAI_RL_E_UNAVAILABLE;

        ngx_http_aai_ratelimit_batch_fail(b, reason,
                                          res->error ? res->error : "error",
                                          NULL);
        return;
    }

    ngx_aai_metrics_observe(mcf->metrics, mcf->latency, res->latency_us);

    if (reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
        && !b->eval)
    {
        /* Redis restarted or flushed its scripts: EVAL loads it again */

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit: NOSCRIPT, sending the script");

        b->eval = 1;

        rc = ngx_http_aai_ratelimit_batch_send(b);

        if (rc == NGX_OK) {
            return;
        }

        if (rc == NGX_DECLINED) {
            ngx_http_aai_ratelimit_batch_free(b);
            return;
        }

        ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                          "unavailable", NULL);
        return;
    }

    if (ngx_http_aai_ratelimit_check_reply(b, reply) != NGX_OK) {
        ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_REPLY,
                                          "unexpected reply", reply);
        return;
    }

    e = reply->element;

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        len = ngx_http_aai_ratelimit_reply_len(slot, e);
        ctx = slot->ctx;

        if (ctx) {
            slot->ctx = NULL;
            ctx->batch = NULL;

            r = ctx->request;
            ngx_http_set_log_request(r->connection->log, r);

            ngx_http_aai_ratelimit_parse(ctx, slot, e);
            ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_REDIS);

            if (ctx->conc && !ctx->rejected) {
                ngx_http_aai_ratelimit_leased(ctx, mcf);
            }

            ngx_http_aai_ratelimit_resume(ctx);
        }

        e += len;
    }

    ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_OK);

    ngx_http_aai_ratelimit_lease_orphans(mcf->redis, &b->orphans);

    ngx_http_aai_ratelimit_batch_free(b);
}


/* the reply has one record of integers per request sent, as they need */

static ngx_int_t
ngx_http_aai_ratelimit_check_reply(ngx_http_aai_ratelimit_batch_t *b,
    redisReply *reply)
{
    size_t                          k, len;
    ngx_uint_t                      i;
    redisReply                    **e;
    ngx_http_aai_ratelimit_slot_t  *slot;

    if (reply->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    e = reply->element;

    for (k = 0; k < reply->elements; k++) {
        if (e[k]->type != REDIS_REPLY_INTEGER) {
            return NGX_ERROR;
        }
    }

    k = 0;

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        if (k >= reply->elements) {
            return NGX_ERROR;
        }

        len = ngx_http_aai_ratelimit_reply_len(slot, &e[k]);

        if (len > reply->elements - k) {
            return NGX_ERROR;
        }

        if (len == 3
            && (e[k]->integer < 1 || e[k]->integer > slot->nzones))
        {
            return NGX_ERROR;
        }

        k += len;
    }

    return (k == reply->elements) ? NGX_OK : NGX_ERROR;
}


static size_t
ngx_http_aai_ratelimit_reply_len(ngx_http_aai_ratelimit_slot_t *slot,
    redisReply **e)
{
    if ((*e)->integer == -1) {
        return 1 + NGX_HTTP_AAI_RL_ZONE_ARGS * slot->nzones;
    }

    if (slot->fast) {
        return 1;
    }

    return (slot->nzones == 1) ? 2 : 3;
}


static void
ngx_http_aai_ratelimit_parse(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e)
{
    long long                         v[NGX_HTTP_AAI_RL_ZONE_ARGS];
    ngx_uint_t                        i, k, top;
    ngx_http_aai_ratelimit_result_t  *res;

    res = ctx->results;

    if (e[0]->integer == -1) {
        e++;

        for (i = 0; i < ctx->nzones; i++) {

            for (k = 0; k < NGX_HTTP_AAI_RL_ZONE_ARGS; k++, e++) {
                v[k] = ngx_max((*e)->integer, 0);
            }

            res[i].rejected = v[0] ? 1 : 0;
            res[i].delay = (ngx_msec_t) v[1];
            res[i].remaining = (ngx_uint_t) v[2];
            res[i].reset = (ngx_msec_t) v[3];
            res[i].retry_after = (ngx_msec_t) v[4];
        }

        return;
    }

    if (slot->fast) {
        res[0].remaining = (ngx_uint_t) ngx_max(e[0]->integer, 0);
        res[0].reset = ctx->zones[0]->window_ms;
        return;
    }

    if (ctx->nzones == 1) {
        res[0].remaining = (ngx_uint_t) ngx_max(e[0]->integer, 0);
        res[0].reset = (ngx_msec_t) ngx_max(e[1]->integer, 0);
        return;
    }

    /*
     * All passed, none delayed: Redis named the most restrictive zone; the
     * others are made less restrictive than it for the choice of the zone
     * of the headers, which is all their values are used for.
     */

    top = (ngx_uint_t) e[0]->integer - 1;

    for (i = 0; i < ctx->nzones; i++) {
        res[i].remaining = NGX_MAX_UINT32_VALUE;
    }

    res[top].remaining = (ngx_uint_t) ngx_max(e[1]->integer, 0);
    res[top].reset = (ngx_msec_t) ngx_max(e[2]->integer, 0);
}


/* Redis failed the batch: each request of it falls back */

static void
ngx_http_aai_ratelimit_batch_fail(ngx_http_aai_ratelimit_batch_t *b,
    ngx_uint_t reason, const char *error, redisReply *reply)
{
    ngx_uint_t                     i;
    ngx_http_request_t            *r;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    /* a reply in error: the script may have run, its charges are not sent */

    ngx_http_aai_ratelimit_charge_done(&b->charges,
                                       reason == NGX_HTTP_AAI_RL_E_REPLY
                                       ? NGX_DECLINED : NGX_ERROR);

    for (i = 0; i < b->nslots; i++) {
        ctx = b->slots[i].ctx;

        if (ctx == NULL) {
            continue;
        }

        b->slots[i].ctx = NULL;
        ctx->batch = NULL;

        r = ctx->request;
        ngx_http_set_log_request(r->connection->log, r);

        ngx_http_aai_ratelimit_fallback(r, ctx, reason, error, reply);
        ngx_http_aai_ratelimit_resume(ctx);
    }

    ngx_http_aai_ratelimit_batch_free(b);
}


static void
ngx_http_aai_ratelimit_resume(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ctx->state = NGX_HTTP_AAI_RL_DONE;
    ctx->resume = 1;

    r->read_event_handler = ngx_http_block_reading;

    /* the request may be gone after this: touch only c */

    ngx_http_core_run_phases(r);

    ngx_http_run_posted_requests(c);
}


static ngx_http_aai_ratelimit_batch_t *
ngx_http_aai_ratelimit_batch_get(ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_queue_t                     *q;
    ngx_http_aai_ratelimit_batch_t  *b;

    if (!ngx_queue_empty(&ngx_http_aai_ratelimit_spare)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_spare);
        ngx_queue_remove(q);
        ngx_http_aai_ratelimit_nspare--;

        b = ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue);

    } else {
        b = ngx_alloc(sizeof(ngx_http_aai_ratelimit_batch_t), ngx_cycle->log);
        if (b == NULL) {
            return NULL;
        }
    }

    ngx_memzero(b, offsetof(ngx_http_aai_ratelimit_batch_t, slots));

    b->mcf = mcf;
    ngx_queue_init(&b->charges);
    ngx_queue_init(&b->orphans);
    b->event.handler = ngx_http_aai_ratelimit_batch_handler;
    b->event.data = b;
    b->event.log = ngx_cycle->log;

    return b;
}


static void
ngx_http_aai_ratelimit_batch_free(ngx_http_aai_ratelimit_batch_t *b)
{
    ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_ERROR);

    /* a failed batch may have taken its leases too */

    ngx_http_aai_ratelimit_lease_orphans(b->mcf->redis, &b->orphans);

    if (b->event.posted) {
        ngx_delete_posted_event(&b->event);
    }

    if (ngx_http_aai_ratelimit_open == b) {
        ngx_http_aai_ratelimit_open = NULL;
    }

    if (ngx_http_aai_ratelimit_nspare >= 16) {
        ngx_free(b);
        return;
    }

    ngx_queue_insert_head(&ngx_http_aai_ratelimit_spare, &b->queue);
    ngx_http_aai_ratelimit_nspare++;
}


/* at worker exit: every batch, with its requests let go */

static void
ngx_http_aai_ratelimit_batch_exit(void)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q;
    ngx_http_aai_ratelimit_batch_t  *b;

    if (ngx_http_aai_ratelimit_open) {
        ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight,
                              &ngx_http_aai_ratelimit_open->queue);
        ngx_http_aai_ratelimit_open = NULL;
    }

    while (!ngx_queue_empty(&ngx_http_aai_ratelimit_flight)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_flight);
        ngx_queue_remove(q);

        b = ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue);

        if (b->event.posted) {
            ngx_delete_posted_event(&b->event);
        }

        for (i = 0; i < b->nslots; i++) {
            if (b->slots[i].ctx) {
                b->slots[i].ctx->batch = NULL;
            }
        }

        ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_ERROR);
        ngx_http_aai_ratelimit_lease_orphans(NULL, &b->orphans);

        ngx_free(b);
    }

    while (!ngx_queue_empty(&ngx_http_aai_ratelimit_spare)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_spare);
        ngx_queue_remove(q);

        ngx_free(ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue));
    }

    ngx_http_aai_ratelimit_nspare = 0;
}


static void
ngx_http_aai_ratelimit_fallback(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t reason, const char *error,
    redisReply *reply)
{
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_loc_conf_t   *lcf;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);
    lcf = ctx->lcf;

    ngx_aai_metrics_inc(mcf->metrics, mcf->errors[reason], 1);

    ngx_http_aai_ratelimit_log_failure(r, ctx, error, reply);

    if (lcf->fallback == NGX_HTTP_AAI_RL_FALLBACK_LOCAL) {
        ngx_memzero(ctx->results,
                    ctx->nzones * sizeof(ngx_http_aai_ratelimit_result_t));

        ngx_http_aai_ratelimit_local(ctx);
        ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_LOCAL);
        return;
    }

    for (i = 0; i < ctx->nzones; i++) {
        ngx_aai_metrics_inc(mcf->metrics,
                            ctx->zones[i]->metrics[NGX_HTTP_AAI_RL_M_ERROR], 1);
    }

    ctx->status = NGX_HTTP_AAI_RL_ERROR;
    ctx->top = -1;

    if (lcf->fallback == NGX_HTTP_AAI_RL_FALLBACK_DENY && !lcf->dry_run) {
        ctx->rejected = 1;
        ctx->rc = lcf->status_code;

    } else {
        ctx->rc = NGX_DECLINED;
    }
}


/* at most one message a second per worker: Redis down fails every request */

static void
ngx_http_aai_ratelimit_log_failure(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, const char *error, redisReply *reply)
{
    ngx_str_t   detail;
    ngx_uint_t  skipped;

    if (ngx_http_aai_ratelimit_log_time == ngx_time()) {
        ngx_http_aai_ratelimit_log_skipped++;
        return;
    }

    ngx_http_aai_ratelimit_log_time = ngx_time();
    skipped = ngx_http_aai_ratelimit_log_skipped;
    ngx_http_aai_ratelimit_log_skipped = 0;

    ngx_str_null(&detail);

    if (reply && reply->type == REDIS_REPLY_ERROR && reply->str) {
        detail.data = (u_char *) reply->str;
        detail.len = ngx_min(reply->len, 256);
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "aai_ratelimit: Redis %s%s%V, fallback \"%V\" "
                  "(%ui similar errors not logged)",
                  error, detail.len ? ": " : "", &detail,
                  &ngx_http_aai_ratelimit_fallbacks[ctx->lcf->fallback].name,
                  skipped);
}


static void
ngx_http_aai_ratelimit_decide(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source)
{
    ngx_uint_t                          i;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    lcf = ctx->lcf;

    ctx->top = ngx_http_aai_ratelimit_top(ctx, 1);
    ctx->rejected = (ctx->top != -1);
    ctx->delay = 0;

    if (ctx->rejected) {
        ctx->status = lcf->dry_run ? NGX_HTTP_AAI_RL_REJECTED_DRY_RUN
                                   : NGX_HTTP_AAI_RL_REJECTED;
        ctx->rc = lcf->dry_run ? NGX_DECLINED : (ngx_int_t) lcf->status_code;

        if (source == NGX_HTTP_AAI_RL_REDIS) {
            ngx_http_aai_ratelimit_block(ctx);
        }

    } else {
        ctx->top = ngx_http_aai_ratelimit_top(ctx, 0);
        ctx->rc = NGX_DECLINED;

        for (i = 0; i < ctx->nzones; i++) {
            ctx->delay = ngx_max(ctx->delay, ctx->results[i].delay);
        }

        if (lcf->dry_run) {
            ctx->status = NGX_HTTP_AAI_RL_PASSED_DRY_RUN;

        } else {
            ctx->status = ctx->delay ? NGX_HTTP_AAI_RL_DELAYED
                                     : NGX_HTTP_AAI_RL_PASSED;
        }
    }

    ngx_http_aai_ratelimit_log(r, ctx, source);
    ngx_http_aai_ratelimit_count(ctx, source);

    if (lcf->dry_run) {
        ctx->delay = 0;
    }

    if (source == NGX_HTTP_AAI_RL_LOCAL) {
        ctx->status = NGX_HTTP_AAI_RL_ERROR;
    }

    ctx->headers = (lcf->headers && !lcf->dry_run);
}


/*
 * The most restrictive zone: among the rejecting zones the one with the
 * longest wait; otherwise the one with the fewest requests left.
 */

static ngx_int_t
ngx_http_aai_ratelimit_top(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t rejected)
{
    ngx_int_t                         top;
    ngx_uint_t                        i;
    ngx_http_aai_ratelimit_result_t  *res, *t;

    top = -1;
    res = ctx->results;

    for (i = 0; i < ctx->nzones; i++) {

        if (res[i].rejected != rejected) {
            continue;
        }

        if (top == -1) {
            top = i;
            continue;
        }

        t = &res[top];

        if (rejected) {
            if (res[i].retry_after > t->retry_after) {
                top = i;
            }

            continue;
        }

        if (res[i].remaining < t->remaining
            || (res[i].remaining == t->remaining && res[i].reset > t->reset))
        {
            top = i;
        }
    }

    return top;
}


static void
ngx_http_aai_ratelimit_log(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source)
{
    char                               *from;
    ngx_uint_t                          i;
    ngx_http_aai_ratelimit_result_t    *res;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    lcf = ctx->lcf;

    from = (source == NGX_HTTP_AAI_RL_BLOCKLIST) ? " (blocklist)"
           : (source == NGX_HTTP_AAI_RL_LOCAL) ? " (local fallback)" : "";

    if (ctx->rejected) {
        res = &ctx->results[ctx->top];

        ngx_log_error(lcf->limit_log_level, r->connection->log, 0,
                      "limiting requests%s by aai_ratelimit zone \"%V\"%s, "
                      "retry after %M ms",
                      lcf->dry_run ? ", dry run," : "",
                      &ctx->zones[ctx->top]->name, from, res->retry_after);
        return;
    }

    if (ctx->delay == 0) {
        return;
    }

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->results[i].delay == ctx->delay) {
            break;
        }
    }

    ngx_log_error(lcf->delay_log_level, r->connection->log, 0,
                  "delaying request%s by %M ms by aai_ratelimit zone \"%V\"%s",
                  lcf->dry_run ? ", dry run," : "", ctx->delay,
                  &ctx->zones[i]->name, from);
}


static void
ngx_http_aai_ratelimit_count(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t source)
{
    ngx_uint_t                           i, outcome;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];
        res = &ctx->results[i];

        if (source == NGX_HTTP_AAI_RL_LOCAL) {
            outcome = NGX_HTTP_AAI_RL_M_ERROR;

        } else if (ctx->rejected) {

            /* zones that would have passed spent nothing: not counted */

            if (!res->rejected) {
                continue;
            }

            outcome = ctx->lcf->dry_run ? NGX_HTTP_AAI_RL_M_DRY_RUN
                                        : NGX_HTTP_AAI_RL_M_REJECTED;

            if (source == NGX_HTTP_AAI_RL_BLOCKLIST) {
                ngx_aai_metrics_inc(mcf->metrics,
                                    zone->metrics[NGX_HTTP_AAI_RL_M_LOCAL], 1);
            }

        } else {
            outcome = (res->delay && !ctx->lcf->dry_run)
                      ? NGX_HTTP_AAI_RL_M_DELAYED : NGX_HTTP_AAI_RL_M_PASSED;
        }

        ngx_aai_metrics_inc(mcf->metrics, zone->metrics[outcome], 1);
    }
}


static ngx_int_t
ngx_http_aai_ratelimit_finish(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    if (ctx->rc != NGX_DECLINED || ctx->delay == 0) {
        return ctx->rc;
    }

    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);

    } else {
        if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_aai_ratelimit_delay;

    r->connection->write->delayed = 1;
    ngx_add_timer(r->connection->write, ctx->delay);

    return NGX_AGAIN;
}


static void
ngx_http_aai_ratelimit_delay(ngx_http_request_t *r)
{
    ngx_event_t  *wev;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit delay");

    wev = r->connection->write;

    if (wev->delayed) {

        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_aai_ratelimit_header_filter(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL
        || ctx->state != NGX_HTTP_AAI_RL_DONE
        || ctx->headers_sent)
    {
        return ngx_http_next_header_filter(r);
    }

    ctx->headers_sent = 1;

    if (ngx_http_aai_ratelimit_add_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * draft-ietf-httpapi-ratelimit-headers-10 for the most restrictive zone:
 *
 *     RateLimit-Policy: "api";q=100;w=60
 *     RateLimit: "api";r=42;t=30
 *     Retry-After: 30                      (rejected requests)
 *
 * On rejection t is the time until the next request is admitted, as is
 * Retry-After; otherwise the time until the quota is fully replenished.
 */

static ngx_int_t
ngx_http_aai_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    u_char                           *p, *last;
    size_t                            len;
    ngx_msec_t                        reset;
    ngx_uint_t                        remaining;
    ngx_http_aai_ratelimit_zone_t    *zone;
    ngx_http_aai_ratelimit_result_t  *res;

    static ngx_str_t  policy = ngx_string("RateLimit-Policy");
    static ngx_str_t  ratelimit = ngx_string("RateLimit");
    static ngx_str_t  retry_after = ngx_string("Retry-After");

    if (ctx->top == -1) {
        return NGX_OK;
    }

    zone = ctx->zones[ctx->top];
    res = &ctx->results[ctx->top];

    if (ctx->rejected) {
        remaining = 0;
        reset = ngx_max((res->retry_after + 999) / 1000, 1);

    } else {
        remaining = res->remaining;
        reset = (res->reset + 999) / 1000;
    }

    len = sizeof("\"\";q=;w=") - 1 + zone->name.len + NGX_INT_T_LEN
          + NGX_INT64_LEN
          + sizeof("\"\";r=;t=") - 1 + zone->name.len + NGX_INT_T_LEN
          + NGX_INT_T_LEN
          + NGX_INT_T_LEN;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ctx->rejected && ctx->rc != NGX_DECLINED) {
        last = ngx_sprintf(p, "%M", reset);

        if (ngx_http_aai_ratelimit_add_header(r, &retry_after, p, last)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = last;
    }

    if (!ctx->headers) {
        return NGX_OK;
    }

    last = ngx_sprintf(p, "\"%V\";q=%ui;w=%uL", &zone->name,
                       ctx->zreq[ctx->top].limit, zone->window / 1000000);

    if (ngx_http_aai_ratelimit_add_header(r, &policy, p, last) != NGX_OK) {
        return NGX_ERROR;
    }

    p = last;

    last = ngx_sprintf(p, "\"%V\";r=%ui;t=%M", &zone->name, remaining, reset);

    return ngx_http_aai_ratelimit_add_header(r, &ratelimit, p, last);
}


static ngx_int_t
ngx_http_aai_ratelimit_add_header(ngx_http_request_t *r, ngx_str_t *name,
    u_char *value, u_char *last)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value.data = value;
    h->value.len = last - value;
    h->lowcase_key = NULL;

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/* the blocklist and local fallback key: the Redis key without the prefix */

static void
ngx_http_aai_ratelimit_local_key(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t i, ngx_str_t *key)
{
    ngx_http_aai_ratelimit_zone_t  *zone;

    zone = ctx->zones[i];

    key->data = ctx->keys[i].data + zone->prefix.len - zone->name.len - 1;
    key->len = ctx->keys[i].len - (zone->prefix.len - zone->name.len - 1);
}


static ngx_int_t
ngx_http_aai_ratelimit_blocked(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_str_t                            key;
    ngx_uint_t                           i, blocked;
    ngx_msec_t                           now;
    ngx_msec_int_t                       left;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = ngx_current_msec;
    blocked = 0;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    for (i = 0; i < ctx->nzones; i++) {
        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 0);

        if (node == NULL || node->blocked == 0) {
            continue;
        }

        left = (ngx_msec_int_t) (node->blocked - now);

        if (left <= 0) {
            node->blocked = 0;
            continue;
        }

        res = &ctx->results[i];

        res->rejected = 1;
        res->retry_after = left;
        res->reset = left;

        blocked = 1;
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);

    return blocked ? NGX_OK : NGX_DECLINED;
}


/* Redis said "over the limit until now + retry_after": remember it */

static void
ngx_http_aai_ratelimit_block(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_str_t                            key;
    ngx_uint_t                           i;
    ngx_msec_t                           now, until;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = ngx_current_msec;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    for (i = 0; i < ctx->nzones; i++) {
        res = &ctx->results[i];

        /* a request costing more may be rejected where one unit is not */

        if (!res->rejected || res->retry_after == 0
            || ctx->zreq[i].cost > 1 || ctx->zones[i]->concurrency)
        {
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 1);
        if (node == NULL) {
            break;
        }

        until = now + res->retry_after;

        if (node->blocked == 0
            || (ngx_msec_int_t) (until - node->blocked) > 0)
        {
            node->blocked = until;
        }

        if ((ngx_msec_int_t) (until - node->expire) > 0) {
            node->expire = until;
        }
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);
}


/*
 * The "local" fallback: GCRA with the zone's rate in this instance's shared
 * memory.  Its burst is the zone's, plus limit - 1 for a sliding window or
 * counter zone (which admits "limit" requests at once).  As in Redis, a
 * request rejected by one zone spends nothing in the others.
 */

static void
ngx_http_aai_ratelimit_local(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    uint64_t                             now;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = (uint64_t) ngx_current_msec * 1000;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    if (ngx_http_aai_ratelimit_local_check(ctx, now) == 0) {
        ngx_http_aai_ratelimit_local_account(ctx, now);
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);
}


static ngx_uint_t
ngx_http_aai_ratelimit_local_check(ngx_http_aai_ratelimit_ctx_t *ctx,
    uint64_t now)
{
    uint64_t                             tat, tau, wait, next;
    ngx_str_t                            key;
    ngx_uint_t                           i, rejected;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    rejected = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];
        res = &ctx->results[i];

        /* in-flight limits are not kept per instance: not limited */

        if (zone->concurrency) {
            res->remaining = zone->limit;
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 0);

        tat = (node && node->tat > now) ? node->tat : now;
        tau = zone->local_burst * zone->period;

        if (tat - now > tau) {
            res->rejected = 1;
            res->retry_after = (tat - now - tau + 999) / 1000;
            res->reset = (tat - now + 999) / 1000;
            rejected = 1;
            continue;
        }

        wait = zone->local_delay * zone->period;
        wait = (tat - now > wait) ? tat - now - wait : 0;
        next = tat + zone->period - now;

        res->delay = (wait + 999) / 1000;
        res->reset = (next + 999) / 1000;
        res->remaining = (tau + zone->period - next) / zone->period;
    }

    return rejected;
}


static void
ngx_http_aai_ratelimit_local_account(ngx_http_aai_ratelimit_ctx_t *ctx,
    uint64_t now)
{
    ngx_str_t                            key;
    ngx_uint_t                           i;
    ngx_msec_t                           expire;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency) {
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 1);
        if (node == NULL) {
            return;
        }

        node->tat = ngx_max(node->tat, now) + ctx->zones[i]->period;

        expire = (ngx_msec_t) ((node->tat + 999) / 1000);

        if ((ngx_msec_int_t) (expire - node->expire) > 0) {
            node->expire = expire;
        }
    }
}


/* with the shared memory mutex held */

static ngx_http_aai_ratelimit_node_t *
ngx_http_aai_ratelimit_lookup(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_str_t *key, ngx_uint_t create)
{
    size_t                          size;
    uint32_t                        hash;
    ngx_int_t                       rc;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_http_aai_ratelimit_node_t  *lr;

    hash = ngx_crc32_short(key->data, key->len);

    node = mcf->sh->rbtree.root;
    sentinel = mcf->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        lr = (ngx_http_aai_ratelimit_node_t *) &node->color;

        rc = ngx_memn2cmp(key->data, lr->data, key->len, (size_t) lr->len);

        if (rc == 0) {
            ngx_queue_remove(&lr->queue);
            ngx_queue_insert_head(&mcf->sh->queue, &lr->queue);
            return lr;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    if (!create) {
        return NULL;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_aai_ratelimit_node_t, data)
           + key->len;

    ngx_http_aai_ratelimit_expire(mcf, 0);

    node = ngx_slab_alloc_locked(mcf->shpool, size);

    if (node == NULL) {
        ngx_http_aai_ratelimit_expire(mcf, 1);

        node = ngx_slab_alloc_locked(mcf->shpool, size);
        if (node == NULL) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "could not allocate node%s",
                          mcf->shpool->log_ctx);
            return NULL;
        }
    }

    node->key = hash;

    lr = (ngx_http_aai_ratelimit_node_t *) &node->color;

    lr->len = (u_short) key->len;
    lr->blocked = 0;
    lr->expire = ngx_current_msec;
    lr->tat = 0;

    ngx_memcpy(lr->data, key->data, key->len);

    ngx_rbtree_insert(&mcf->sh->rbtree, node);

    ngx_queue_insert_head(&mcf->sh->queue, &lr->queue);

    return lr;
}


/*
 * Frees up to two least recently used nodes that carry no state any more;
 * with "force", the least recently used node whatever its state, first.
 */

static void
ngx_http_aai_ratelimit_expire(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_uint_t force)
{
    ngx_uint_t                      n;
    ngx_queue_t                    *q;
    ngx_msec_t                      now;
    ngx_rbtree_node_t              *node;
    ngx_http_aai_ratelimit_node_t  *lr;

    now = ngx_current_msec;

    for (n = 0; n < 3; n++) {

        if (ngx_queue_empty(&mcf->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&mcf->sh->queue);

        lr = ngx_queue_data(q, ngx_http_aai_ratelimit_node_t, queue);

        if (!(force && n == 0)
            && (ngx_msec_int_t) (now - lr->expire) < 0)
        {
            return;
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) lr - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&mcf->sh->rbtree, node);

        ngx_slab_free_locked(mcf->shpool, node);
    }
}


static void
ngx_http_aai_ratelimit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t              **p;
    ngx_http_aai_ratelimit_node_t   *lrn, *lrnt;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            lrn = (ngx_http_aai_ratelimit_node_t *) &node->color;
            lrnt = (ngx_http_aai_ratelimit_node_t *) &temp->color;

            p = (ngx_memn2cmp(lrn->data, lrnt->data, lrn->len, lrnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_int_t
ngx_http_aai_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_aai_ratelimit_main_conf_t  *omcf = data;

    size_t                               len;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = shm_zone->data;

    if (omcf) {
        mcf->sh = omcf->sh;
        mcf->shpool = omcf->shpool;
        return NGX_OK;
    }

    mcf->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        mcf->sh = mcf->shpool->data;
        return NGX_OK;
    }

    mcf->sh = ngx_slab_alloc(mcf->shpool,
                             sizeof(ngx_http_aai_ratelimit_shctx_t));
    if (mcf->sh == NULL) {
        return NGX_ERROR;
    }

    mcf->shpool->data = mcf->sh;

    ngx_rbtree_init(&mcf->sh->rbtree, &mcf->sh->sentinel,
                    ngx_http_aai_ratelimit_rbtree_insert_value);

    ngx_queue_init(&mcf->sh->queue);

    len = sizeof(" in aai_ratelimit zone \"\"") + shm_zone->shm.name.len;

    mcf->shpool->log_ctx = ngx_slab_alloc(mcf->shpool, len);
    if (mcf->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(mcf->shpool->log_ctx, " in aai_ratelimit zone \"%V\"%Z",
                &shm_zone->shm.name);

    mcf->shpool->log_nomem = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL || ctx->status == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->len = ngx_http_aai_ratelimit_status[ctx->status - 1].len;
    v->data = ngx_http_aai_ratelimit_status[ctx->status - 1].data;

    return NGX_OK;
}


static void *
ngx_http_aai_ratelimit_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis = NULL;
     *     mcf->prefix = { 0, NULL };
     *     mcf->shm_zone = NULL;
     */

    if (ngx_array_init(&mcf->zones, cf->pool, 4,
                       sizeof(ngx_http_aai_ratelimit_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    mcf->local_size = NGX_CONF_UNSET_SIZE;

    mcf->metrics = ngx_aai_metrics_create(cf, "ratelimit",
                                          &ngx_http_aai_ratelimit_module);
    if (mcf->metrics == NULL) {
        return NULL;
    }

    if (ngx_http_aai_ratelimit_add_metrics(cf, mcf) != NGX_OK) {
        return NULL;
    }

    return mcf;
}


static char *
ngx_http_aai_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    u_char          digest[SHA_DIGEST_LENGTH];
    ngx_shm_zone_t  *shm_zone;

    if (mcf->prefix.data == NULL) {
        ngx_str_set(&mcf->prefix, "aai:rl:");
    }

    ngx_conf_init_size_value(mcf->local_size, 10 * 1024 * 1024);

    if (mcf->zones.nelts == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_http_aai_ratelimit_check_zones(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    mcf->sha.data = ngx_pnalloc(cf->pool, 2 * SHA_DIGEST_LENGTH);
    if (mcf->sha.data == NULL) {
        return NGX_CONF_ERROR;
    }

    SHA1((const u_char *) ngx_http_aai_ratelimit_script,
         sizeof(ngx_http_aai_ratelimit_script) - 1, digest);

    mcf->sha.len = ngx_hex_dump(mcf->sha.data, digest, SHA_DIGEST_LENGTH)
                   - mcf->sha.data;

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_aai_ratelimit_shm_name,
                                     mcf->local_size,
                                     &ngx_http_aai_ratelimit_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &ngx_http_aai_ratelimit_shm_name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_aai_ratelimit_init_zone;
    shm_zone->data = mcf;

    mcf->shm_zone = shm_zone;

    return NGX_CONF_OK;
}


/*
 * Every zone named by "aai_ratelimit" is defined, Redis is configured, and
 * each zone gets its key prefix: prefix, zone name, ":".
 */

static ngx_int_t
ngx_http_aai_ratelimit_check_zones(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    u_char                         *p;
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_zone_t  *zone, **zones;

    zones = mcf->zones.elts;

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i];

        if (zone->key == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown zone \"%V\" in \"aai_ratelimit\" in %V:%ui",
                          &zone->name, &zone->file, zone->line);
            return NGX_ERROR;
        }

        if (mcf->redis == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"aai_ratelimit_zone\" \"%V\" requires "
                          "\"aai_ratelimit_redis\" in %V:%ui",
                          &zone->name, &zone->file, zone->line);
            return NGX_ERROR;
        }

        zone->prefix.len = mcf->prefix.len + zone->name.len + 1;
        zone->prefix.data = ngx_pnalloc(cf->pool, zone->prefix.len);
        if (zone->prefix.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(zone->prefix.data, mcf->prefix.data, mcf->prefix.len);
        p = ngx_cpymem(p, zone->name.data, zone->name.len);
        *p = ':';
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_str_t   labels;
    ngx_uint_t  i;

    mcf->latency = ngx_aai_metrics_add_histogram(mcf->metrics,
                       "aai_ratelimit_redis_latency_seconds",
                       "Latency of the rate limiter's Redis commands.",
                       NULL, ngx_http_aai_ratelimit_latency_bounds,
                       sizeof(ngx_http_aai_ratelimit_latency_bounds)
                       / sizeof(ngx_uint_t),
                       1000000);
    if (mcf->latency == NGX_ERROR) {
        return NGX_ERROR;
    }

    for (i = 0; i < 3; i++) {
        labels.data = ngx_pnalloc(cf->pool, sizeof("reason=\"unavailable\""));
        if (labels.data == NULL) {
            return NGX_ERROR;
        }

        labels.len = ngx_sprintf(labels.data, "reason=\"%s\"",
                                 ngx_http_aai_ratelimit_reasons[i])
                     - labels.data;

        mcf->errors[i] = ngx_aai_metrics_add(mcf->metrics,
                             NGX_AAI_METRIC_COUNTER,
                             "aai_ratelimit_redis_errors_total",
                             "Failed rate limiter Redis commands.", &labels);
        if (mcf->errors[i] == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void *
ngx_http_aai_ratelimit_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_aai_ratelimit_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->zones = NGX_CONF_UNSET_PTR;
    conf->status_code = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->limit_log_level = NGX_CONF_UNSET_UINT;
    conf->headers = NGX_CONF_UNSET;
    conf->fallback = NGX_CONF_UNSET_UINT;

    ngx_aai_jwt_create_loc_conf(&conf->jwt);

    return conf;
}


static char *
ngx_http_aai_ratelimit_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_aai_ratelimit_loc_conf_t *prev = parent;
    ngx_http_aai_ratelimit_loc_conf_t *conf = child;

    if (conf->zones == NGX_CONF_UNSET_PTR) {
        conf->opts = prev->opts;
    }

    ngx_conf_merge_ptr_value(conf->zones, prev->zones, NULL);

    ngx_conf_merge_uint_value(conf->status_code, prev->status_code,
                              NGX_HTTP_TOO_MANY_REQUESTS);

    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);

    ngx_conf_merge_uint_value(conf->limit_log_level, prev->limit_log_level,
                              NGX_LOG_ERR);

    conf->delay_log_level = (conf->limit_log_level == NGX_LOG_INFO) ?
                                NGX_LOG_INFO : conf->limit_log_level + 1;

    ngx_conf_merge_value(conf->headers, prev->headers, 1);

    ngx_conf_merge_uint_value(conf->fallback, prev->fallback,
                              NGX_HTTP_AAI_RL_FALLBACK_ALLOW);

    return ngx_aai_jwt_merge_loc_conf(cf, &prev->jwt, &conf->jwt);
}


static char *
ngx_http_aai_ratelimit_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    char  *rv;

    if (mcf->redis) {
        return "is duplicate";
    }

    ngx_aai_redis_conf_init(&mcf->redis_conf);

    mcf->redis_conf.directive = cmd->name;

    rv = ngx_aai_redis_conf_parse(cf, &mcf->redis_conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    mcf->redis = ngx_aai_redis_create(cf, &mcf->redis_conf);
    if (mcf->redis == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * aai_ratelimit_zone NAME key=EXPR rate=Nr/[K]s|m|h [burst=N]
 *                    [algorithm=sliding|gcra|counter] [nodelay|delay=N];
 */

static char *
ngx_http_aai_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    char                           *rv;
    ngx_str_t                      *value;
    ngx_uint_t                      i, nodelay;
    ngx_http_aai_ratelimit_zone_t  *zone;

    value = cf->args->elts;

    zone = ngx_http_aai_ratelimit_find_zone(cf, cmd, &value[1]);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (zone->key) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone->file = cf->conf_file->file.name;
    zone->line = cf->conf_file->line;

    nodelay = 0;

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_aai_ratelimit_zone_param(cf, cmd, zone, &value[i],
                                               &nodelay);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (zone->concurrency || zone->lease) {
        if (ngx_http_aai_ratelimit_zone_concurrency(cf, cmd, zone) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (zone->key == NULL || zone->limit == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" \"%V\" must have \"key=\" and \"rate=\" "
                           "parameters", &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    if (nodelay || zone->delay > zone->burst) {
        zone->delay = zone->burst;
    }

    /*
     * GCRA keeps its state in whole microseconds: above 10^6 requests per
     * second the next allowed time would not move, and nothing would be
     * limited.
     */

    if (zone->algorithm == NGX_HTTP_AAI_RL_GCRA
        && zone->window < zone->limit)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "rate \"%V\" of zone \"%V\" in \"%V\" is more "
                           "than 1000000 requests per second, the most "
                           "\"algorithm=gcra\" can count (one microsecond "
                           "per request)", &zone->rate, &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /*
     * A window counter keeps no queue of future admissions: a request
     * over the limit can only be rejected.
     */

    if (zone->algorithm == NGX_HTTP_AAI_RL_COUNTER && zone->burst) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "burst=%ui of zone \"%V\" in \"%V\": "
                           "\"algorithm=counter\" has no burst, a request "
                           "over its limit is rejected (use a higher rate, "
                           "or \"algorithm=sliding\" or \"algorithm=gcra\" "
                           "for a burst)", zone->burst, &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone->period = ngx_max(zone->window / zone->limit, 1);
    zone->window_ms = (ngx_msec_t) ((zone->window + 999) / 1000);
    zone->fast = (zone->algorithm == NGX_HTTP_AAI_RL_SLIDING
                  && zone->burst == 0);

    /* the local fallback: a window admits "limit" at once */

    zone->local_burst = zone->burst;
    zone->local_delay = zone->delay;

    if (zone->algorithm != NGX_HTTP_AAI_RL_GCRA) {
        zone->local_burst += zone->limit - 1;
        zone->local_delay += zone->limit - 1;
    }

    if (zone->local_burst > NGX_HTTP_AAI_RL_MAX_AHEAD / zone->period) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "burst=%ui with rate \"%V\" of zone \"%V\" in "
                           "\"%V\" lets a key run more than 100 years "
                           "ahead: lower the burst or raise the rate",
                           zone->burst, &zone->rate, &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    rv = ngx_http_aai_ratelimit_zone_args(cf, zone);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    return ngx_http_aai_ratelimit_zone_metrics(cf, mcf, zone);
}


/*
 * concurrency=N [lease=time]: at most N requests of a key in flight, each
 * holding a lease that expires after "lease" (30s) unless renewed.
 */

static ngx_int_t
ngx_http_aai_ratelimit_zone_concurrency(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    if (zone->concurrency == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"lease=\" of zone \"%V\" in \"%V\" requires "
                           "\"concurrency=\"", &zone->name, &cmd->name);
        return NGX_ERROR;
    }

    if (zone->limit || zone->burst || zone->delay || zone->count
        || zone->algorithm != NGX_HTTP_AAI_RL_SLIDING)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" in \"%V\": \"concurrency=\" takes "
                           "no \"rate=\", \"burst=\", \"delay=\", "
                           "\"count=\" or \"algorithm=\"",
                           &zone->name, &cmd->name);
        return NGX_ERROR;
    }

    if (zone->lease == 0) {
        zone->lease = NGX_HTTP_AAI_RL_LEASE;
    }

    zone->algorithm = NGX_HTTP_AAI_RL_CONCURRENCY;
    zone->limit = zone->concurrency;
    zone->window = (uint64_t) zone->lease * 1000;
    ngx_str_set(&zone->rate, "concurrency");

    return NGX_OK;
}


static char *
ngx_http_aai_ratelimit_zone_param(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *value,
    ngx_uint_t *nodelay)
{
    ngx_int_t                          n;
    ngx_str_t                          s;
    ngx_http_compile_complex_value_t   ccv;

    if (ngx_strncmp(value->data, "key=", 4) == 0) {

        s.data = value->data + 4;
        s.len = value->len - 4;

        if (s.len == 0) {
            goto invalid;
        }

        zone->key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (zone->key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &s;
        ccv.complex_value = zone->key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "rate=", 5) == 0) {

        if (ngx_http_aai_ratelimit_parse_rate(value, zone) != NGX_OK) {
            goto invalid;
        }

        zone->rate.data = value->data + 5;
        zone->rate.len = value->len - 5;

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "concurrency=", 12) == 0) {

        n = ngx_atoi(value->data + 12, value->len - 12);
        if (n <= 0 || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->concurrency = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "lease=", 6) == 0) {

        s.data = value->data + 6;
        s.len = value->len - 6;

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n < 100 || n > 86400000) {
            goto invalid;
        }

        zone->lease = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "count=", 6) == 0) {
        return ngx_http_aai_ratelimit_count_param(cf, cmd, value,
                                                  &zone->count);
    }

    if (ngx_strncmp(value->data, "burst=", 6) == 0) {

        n = ngx_atoi(value->data + 6, value->len - 6);
        if (n == NGX_ERROR || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->burst = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "delay=", 6) == 0) {

        n = ngx_atoi(value->data + 6, value->len - 6);
        if (n == NGX_ERROR || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->delay = n;
        *nodelay = 0;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "nodelay") == 0) {
        *nodelay = 1;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=sliding") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_SLIDING;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=gcra") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_GCRA;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=counter") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_COUNTER;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "algorithm=", 10) == 0) {
        goto invalid;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\"",
                       value, &cmd->name);
    return NGX_CONF_ERROR;

invalid:

    s.data = value->data;
    s.len = (u_char *) ngx_strchr(value->data, '=') - value->data;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid %V \"%s\" in \"%V\"",
                       &s, value->data + s.len + 1, &cmd->name);
    return NGX_CONF_ERROR;
}


/* rate=Nr/s, Nr/m, Nr/h, or with a window count: Nr/5m, Nr/10s */

static ngx_int_t
ngx_http_aai_ratelimit_parse_rate(ngx_str_t *value,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    u_char      *p, *last, *start;
    ngx_int_t    limit, count, unit;

    p = value->data + 5;
    last = value->data + value->len;

    for (start = p; p < last && *p >= '0' && *p <= '9'; p++) { /* void */ }

    limit = ngx_atoi(start, p - start);

    if (limit <= 0 || limit > NGX_HTTP_AAI_RL_MAX_LIMIT
        || last - p < 3 || p[0] != 'r' || p[1] != '/')
    {
        return NGX_ERROR;
    }

    for (p += 2, start = p; p < last && *p >= '0' && *p <= '9'; p++) {
        /* void */
    }

    count = (p == start) ? 1 : ngx_atoi(start, p - start);

    if (count <= 0 || last - p != 1) {
        return NGX_ERROR;
    }

    switch (*p) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    default:
        return NGX_ERROR;
    }

    if (count > NGX_HTTP_AAI_RL_MAX_WINDOW / unit) {
        return NGX_ERROR;
    }

    zone->limit = limit;
    zone->window = (uint64_t) count * unit * 1000000;

    return NGX_OK;
}


static char *
ngx_http_aai_ratelimit_zone_args(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    u_char      *p;
    ngx_str_t   *a;

    p = ngx_pnalloc(cf->pool, 2 + 3 * NGX_INT_T_LEN + NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    a = zone->args;

    a[0].data = p;
    p = ngx_sprintf(p, "%ui", zone->algorithm);
    a[0].len = p - a[0].data;

    a[1].data = p;
    p = ngx_sprintf(p, "%ui", zone->limit);
    a[1].len = p - a[1].data;

    a[2].data = p;
    p = ngx_sprintf(p, "%uL", zone->window);
    a[2].len = p - a[2].data;

    a[3].data = p;
    p = ngx_sprintf(p, "%ui", zone->burst);
    a[3].len = p - a[3].data;

    a[4].data = p;
    p = ngx_sprintf(p, "%ui", zone->delay);
    a[4].len = p - a[4].data;

    a[5].data = p;
    *p++ = '1';
    a[5].len = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_ratelimit_zone_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    ngx_str_t   labels;
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_AAI_RL_M_NUMBER; i++) {

        labels.data = ngx_pnalloc(cf->pool, zone->name.len
                                  + sizeof("zone=\"\",outcome=\"\"")
                                  + sizeof("dry_run_rejected"));
        if (labels.data == NULL) {
            return NGX_CONF_ERROR;
        }

        if (i == NGX_HTTP_AAI_RL_M_LOCAL) {
            labels.len = ngx_sprintf(labels.data, "zone=\"%V\"", &zone->name)
                         - labels.data;

            zone->metrics[i] = ngx_aai_metrics_add(mcf->metrics,
                                   NGX_AAI_METRIC_COUNTER,
                                   "aai_ratelimit_local_rejects_total",
                                   "Requests rejected by the local blocklist "
                                   "without a Redis round trip.", &labels);

        } else {
            labels.len = ngx_sprintf(labels.data,
                                     "zone=\"%V\",outcome=\"%s\"",
                                     &zone->name,
                                     ngx_http_aai_ratelimit_outcomes[i])
                         - labels.data;

            zone->metrics[i] = ngx_aai_metrics_add(mcf->metrics,
                                   NGX_AAI_METRIC_COUNTER,
                                   "aai_ratelimit_requests_total",
                                   "Rate limiter decisions per zone.",
                                   &labels);
        }

        if (zone->metrics[i] == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * Finds a zone by name, or adds it undefined: "aai_ratelimit" may name a
 * zone defined later in the http block.
 */

static ngx_http_aai_ratelimit_zone_t *
ngx_http_aai_ratelimit_find_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name)
{
    u_char                              *p;
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_zone_t       *zone, **zones, **zp;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    for (p = name->data; p < name->data + name->len; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z')
            && !(*p >= '0' && *p <= '9') && *p != '_' && *p != '-'
            && *p != '.')
        {
            break;
        }
    }

    if (name->len == 0 || name->len > 64 || p != name->data + name->len
        || ngx_strcmp(name->data, "off") == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone name \"%V\" in \"%V\"",
                           name, &cmd->name);
        return NULL;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    zones = mcf->zones.elts;

    for (i = 0; i < mcf->zones.nelts; i++) {
        if (zones[i]->name.len == name->len
            && ngx_strncmp(zones[i]->name.data, name->data, name->len) == 0)
        {
            return zones[i];
        }
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_zone_t));
    if (zone == NULL) {
        return NULL;
    }

    zone->name = *name;
    zone->file = cf->conf_file->file.name;
    zone->line = cf->conf_file->line;

    zp = ngx_array_push(&mcf->zones);
    if (zp == NULL) {
        return NULL;
    }

    *zp = zone;

    return zone;
}


/* aai_ratelimit NAME [cost=expression] [charge=expression] | off */

static char *
ngx_http_aai_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_ratelimit_loc_conf_t *lcf = conf;

    ngx_str_t                           *value;
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_zone_t       *zone, **zones, **zp;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (lcf->zones != NGX_CONF_UNSET_PTR || cf->args->nelts > 2) {
            return "is duplicate";
        }

        lcf->zones = NULL;
        return NGX_CONF_OK;
    }

    if (lcf->zones == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V %V\" after \"%V off\"",
                           &cmd->name, &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone = ngx_http_aai_ratelimit_find_zone(cf, cmd, &value[1]);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lcf->zones == NGX_CONF_UNSET_PTR) {
        lcf->zones = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_aai_ratelimit_zone_t *));
        if (lcf->zones == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (lcf->zones->nelts == NGX_HTTP_AAI_RL_BATCH) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many zones in \"%V\", at most %d",
                           &cmd->name, NGX_HTTP_AAI_RL_BATCH);
        return NGX_CONF_ERROR;
    }

    zones = lcf->zones->elts;

    for (i = 0; i < lcf->zones->nelts; i++) {
        if (zones[i] == zone) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate zone \"%V\" in \"%V\"",
                               &value[1], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    zp = ngx_array_push(lcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    if (cf->args->nelts == 2 && lcf->opts == NULL) {
        return NGX_CONF_OK;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    return ngx_http_aai_ratelimit_opts(cf, cmd, &lcf->opts,
                                       lcf->zones->nelts - 1, &value[2],
                                       cf->args->nelts - 2, &value[1],
                                       mcf->metrics, &zone->charge_metrics);
}


static char *
ngx_http_aai_ratelimit_set_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_uint_t  *np;

    np = (ngx_uint_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 400 || n > 599) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be between 400 and 599",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    *np = n;

    return NGX_CONF_OK;
}


/* ngx_conf_set_enum_slot, with a message naming the directive */

static char *
ngx_http_aai_ratelimit_set_enum(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_str_t        *value;
    ngx_uint_t       *np;
    ngx_conf_enum_t  *e;

    np = (ngx_uint_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (e = cmd->post; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcasecmp(e->name.data, value[1].data) == 0)
        {
            *np = e->value;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_aai_ratelimit_local_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (mcf->local_size != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[1]);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "value \"%V\" in \"%V\" directive is too small, "
                           "it must be at least %uzk",
                           &value[1], &cmd->name, 8 * ngx_pagesize / 1024);
        return NGX_CONF_ERROR;
    }

    mcf->local_size = size;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_aai_ratelimit_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return ngx_aai_jwt_add_variables(cf);
}


static ngx_int_t
ngx_http_aai_ratelimit_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt                 *h;
    ngx_http_core_main_conf_t           *cmcf;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    if (ngx_aai_metrics_zone(cf, mcf->metrics) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_aai_jwt_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mcf->zones.nelts == 0) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_ratelimit_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_ratelimit_log_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_aai_ratelimit_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_init_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL) {
        return NGX_OK;
    }

    ngx_queue_init(&ngx_http_aai_ratelimit_flight);
    ngx_queue_init(&ngx_http_aai_ratelimit_spare);

    ngx_http_aai_ratelimit_charge_init(mcf->metrics, cycle->log);
    ngx_http_aai_ratelimit_lease_init();

    return ngx_aai_redis_init_worker(mcf->redis, cycle);
}


static void
ngx_http_aai_ratelimit_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL) {
        return;
    }

    /* the handlers of commands in flight are not called: free their batches */

    ngx_aai_redis_exit_worker(mcf->redis);

    ngx_http_aai_ratelimit_batch_exit();

    ngx_http_aai_ratelimit_charge_exit();
}

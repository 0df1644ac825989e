
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_kafka_module: one JSON event per (matching) request, produced
 * to Kafka in the log phase by a librdkafka producer that each worker owns
 * and serves from nginx's event loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <librdkafka/rdkafka.h>
#include <cjson/cJSON.h>

#include "ngx_aai_conf.h"
#include "ngx_aai_metrics.h"
#include "ngx_http_aai_kafka_spool.h"


#define NGX_HTTP_AAI_KAFKA_STRING     0
#define NGX_HTTP_AAI_KAFKA_NUMBER     1
#define NGX_HTTP_AAI_KAFKA_BOOL       2

/* how often the timer serves the producer besides its wake-up socket */
#define NGX_HTTP_AAI_KAFKA_POLL       100

/* librdkafka log lines forwarded per second and worker */
#define NGX_HTTP_AAI_KAFKA_LOG_BURST  10

#define ngx_http_aai_kafka_isalnum(c)                                         \
    (((c) >= '0' && (c) <= '9') || (((c) | 0x20) >= 'a' && ((c) | 0x20) <= 'z'))

#define ngx_http_aai_kafka_name_char(c)                                       \
    (ngx_http_aai_kafka_isalnum(c) || (c) == '_' || (c) == '-' || (c) == '.')

/* the shortest time between two rebuilds of the producer */
#define NGX_HTTP_AAI_KAFKA_RESTART    1000

/* a bound on the time a fast shutdown (SIGTERM) flushes: the master kills */
#define NGX_HTTP_AAI_KAFKA_TERMINATE  1000

/* rd_kafka_flush() takes an int: at most 24.8 days */
#define NGX_HTTP_AAI_KAFKA_FLUSH_MAX  0x7fffffff

/* why an event was dropped (never queued): the reason label */
#define NGX_HTTP_AAI_KAFKA_QUEUE_FULL   0
#define NGX_HTTP_AAI_KAFKA_TOO_LARGE    1
#define NGX_HTTP_AAI_KAFKA_NO_PRODUCER  2
#define NGX_HTTP_AAI_KAFKA_FORMAT       3
#define NGX_HTTP_AAI_KAFKA_FATAL        4
#define NGX_HTTP_AAI_KAFKA_OTHER        5
#define NGX_HTTP_AAI_KAFKA_SPOOL_FULL   6
#define NGX_HTTP_AAI_KAFKA_SPOOL_ERROR  7
#define NGX_HTTP_AAI_KAFKA_SPOOL_BAD    8
#define NGX_HTTP_AAI_KAFKA_TOPIC        9
#define NGX_HTTP_AAI_KAFKA_REASONS      10

/* a delivery failure newer than this stops the replay of the spool */
#define NGX_HTTP_AAI_KAFKA_CALM       1000

/* producers a worker may have being destroyed at a time */
#define NGX_HTTP_AAI_KAFKA_DESTROYING  4

/* the shares of the queue depth: one per worker alive at a time */
#define NGX_HTTP_AAI_KAFKA_SLOTS      NGX_MAX_PROCESSES


typedef struct {
    char                             *name;       /* null-terminated */
    size_t                            name_len;
    ngx_uint_t                        type;
    ngx_int_t                         index;      /* NGX_ERROR: see value */
    ngx_http_complex_value_t         *value;      /* NULL: always null */
} ngx_http_aai_kafka_field_t;


typedef struct {
    ngx_str_t                         name;
    ngx_array_t                      *fields;     /* field_t */
    size_t                            size;       /* of the keys in JSON */
    cJSON                            *tree;       /* per worker, see json() */
} ngx_http_aai_kafka_format_t;


typedef struct {
    ngx_str_t                         name;       /* null-terminated */
    ngx_http_complex_value_t         *value;
} ngx_http_aai_kafka_header_t;


typedef struct {
    ngx_uint_t                        topic;      /* index in main topics */
    ngx_http_aai_kafka_format_t      *format;     /* NULL: the default */
    ngx_http_complex_value_t         *key;
    ngx_http_complex_value_t         *filter;
    ngx_array_t                      *headers;    /* header_t */
    ngx_http_complex_value_t         *topic_value;
    ngx_array_t                      *topics;     /* ngx_uint_t: topic */
} ngx_http_aai_kafka_event_t;


typedef struct {
    ngx_str_t                         brokers;
    ngx_array_t                      *properties; /* ngx_keyval_t */
    ngx_array_t                      *formats;    /* format_t */
    ngx_array_t                       topics;     /* ngx_str_t */
    ngx_msec_t                        flush_timeout;

    ngx_http_aai_kafka_format_t      *default_format;
    rd_kafka_conf_t                  *scratch;

    ngx_aai_metrics_t                *metrics;
    ngx_int_t                         produced;
    ngx_int_t                         delivered;
    ngx_int_t                         failed;
    ngx_int_t                         dropped;
    ngx_int_t                         lost;
    ngx_int_t                         reasons[NGX_HTTP_AAI_KAFKA_REASONS];
    ngx_int_t                         depth;
    ngx_int_t                         rtt;
    ngx_int_t                         restarts;

    ngx_http_aai_kafka_spool_t       *spool;      /* NULL: none */

    ngx_shm_zone_t                   *workers;    /* shared_t */

    unsigned                          enabled:1;
    unsigned                          used:1;
    unsigned                          no_idempotence:1;
} ngx_http_aai_kafka_main_conf_t;


typedef struct {
    ngx_array_t                      *events;     /* event_t; NULL: off */
} ngx_http_aai_kafka_loc_conf_t;


typedef struct {
    time_t                            time;
    ngx_uint_t                        count;
    const char                       *reason;
} ngx_http_aai_kafka_limit_t;


/*
 * A worker's share of the queue depth, in shared memory: what a worker
 * that dies without exiting (SIGKILL, a crash) had queued is counted as
 * lost by the next worker that finds its process gone.
 */

typedef struct {
    ngx_atomic_t                      pid;        /* 0: free */
    ngx_atomic_t                      outstanding;
} ngx_http_aai_kafka_slot_t;


typedef struct {
    ngx_http_aai_kafka_slot_t         slots[NGX_HTTP_AAI_KAFKA_SLOTS];
    ngx_http_aai_kafka_spool_shm_t    spool;
} ngx_http_aai_kafka_shared_t;


/* per worker state: the producer and what serves it */

typedef struct {
    rd_kafka_t                       *rk;
    rd_kafka_queue_t                 *queue;
    rd_kafka_topic_t                **topics;
    ngx_uint_t                        ntopics;
    ngx_http_aai_kafka_main_conf_t   *kmcf;

    ngx_connection_t                 *notify;     /* read end */
    ngx_socket_t                      notify_fd;  /* write end: librdkafka */
    ngx_event_t                       timer;
    ngx_connection_t                  dummy;

    ngx_uint_t                        outstanding;
    ngx_http_aai_kafka_slot_t        *slot;
    time_t                            checked;    /* the slots, last */
    ngx_msec_t                        restarted;
    ngx_msec_t                        failed;     /* the last failure */
    pthread_t                         thread;     /* the worker's */

    u_char                           *buf;        /* the event's text */
    size_t                            buf_size;
    u_char                           *hbuf;       /* headers, packed */
    size_t                            hbuf_size;

    ngx_http_aai_kafka_limit_t        drops;
    ngx_http_aai_kafka_limit_t        failures;
    ngx_http_aai_kafka_limit_t        logs;

    unsigned                          fatal:1;
} ngx_http_aai_kafka_worker_t;


typedef struct {
    char                             *name;
    char                             *value;
} ngx_http_aai_kafka_property_t;


typedef struct {
    char                             *name;
    char                             *value;
    ngx_uint_t                        type;
    ngx_uint_t                        optional;
} ngx_http_aai_kafka_default_field_t;


static ngx_int_t ngx_http_aai_kafka_log_handler(ngx_http_request_t *r);
static void ngx_http_aai_kafka_drop(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_uint_t reason);
static ngx_uint_t ngx_http_aai_kafka_reason(rd_kafka_resp_err_t err);
static void ngx_http_aai_kafka_produce(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *payload);
static rd_kafka_resp_err_t ngx_http_aai_kafka_producev(
    ngx_http_aai_kafka_worker_t *w, ngx_uint_t topic, ngx_str_t *payload,
    ngx_str_t *key, rd_kafka_headers_t *hdrs);
static rd_kafka_headers_t *ngx_http_aai_kafka_headers(ngx_http_request_t *r,
    ngx_array_t *headers);
static ngx_int_t ngx_http_aai_kafka_pick(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_uint_t *t);
static void ngx_http_aai_kafka_spool(ngx_http_aai_kafka_worker_t *w,
    ngx_http_aai_kafka_main_conf_t *kmcf, rd_kafka_resp_err_t err,
    const char *topic, ngx_str_t *key, ngx_str_t *payload,
    rd_kafka_headers_t *hdrs);
static ngx_int_t ngx_http_aai_kafka_pack(rd_kafka_headers_t *hdrs,
    ngx_str_t *out);
static rd_kafka_headers_t *ngx_http_aai_kafka_unpack(ngx_str_t *in);
static ngx_int_t ngx_http_aai_kafka_replay(ngx_str_t *topic,
    ngx_str_t *key, ngx_str_t *value, ngx_str_t *headers, void *opaque);
static ngx_int_t ngx_http_aai_kafka_json(ngx_http_request_t *r,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *out);
static u_char *ngx_http_aai_kafka_buffer(size_t size);
static cJSON *ngx_http_aai_kafka_tree(ngx_http_aai_kafka_format_t *fmt);
static void ngx_http_aai_kafka_tree_reset(cJSON *tree);
static void ngx_http_aai_kafka_trees_free(
    ngx_http_aai_kafka_main_conf_t *kmcf);
static ngx_int_t ngx_http_aai_kafka_field(ngx_http_request_t *r,
    ngx_http_aai_kafka_field_t *f, cJSON *item, size_t *size);
static ngx_int_t ngx_http_aai_kafka_string(ngx_pool_t *pool, ngx_str_t *v,
    cJSON *item, size_t *size);
static ngx_int_t ngx_http_aai_kafka_number(ngx_pool_t *pool, ngx_str_t *v,
    cJSON *item, size_t *size);
static void ngx_http_aai_kafka_bool(ngx_str_t *v, cJSON *item, size_t *size);
static size_t ngx_http_aai_kafka_utf8_seq(u_char *p, u_char *end,
    size_t *skip);
static size_t ngx_http_aai_kafka_utf8_len(u_char *p, size_t n,
    ngx_uint_t *valid);
static u_char *ngx_http_aai_kafka_utf8_copy(u_char *dst, u_char *p,
    size_t n);
static ngx_uint_t ngx_http_aai_kafka_is_number(u_char *p, size_t n);

static void ngx_http_aai_kafka_notify_handler(ngx_event_t *rev);
static void ngx_http_aai_kafka_timer_handler(ngx_event_t *ev);
static void ngx_http_aai_kafka_poll(void);
static void ngx_http_aai_kafka_report(ngx_http_aai_kafka_limit_t *limit,
    const char *what, ngx_uint_t force);
static void ngx_http_aai_kafka_dr_cb(rd_kafka_t *rk,
    const rd_kafka_message_t *msg, void *opaque);
static void ngx_http_aai_kafka_error_cb(rd_kafka_t *rk, int err,
    const char *reason, void *opaque);
static void ngx_http_aai_kafka_log_cb(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf);
static void ngx_http_aai_kafka_quiet_log_cb(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf);
static int ngx_http_aai_kafka_stats_cb(rd_kafka_t *rk, char *json,
    size_t len, void *opaque);

static rd_kafka_conf_t *ngx_http_aai_kafka_conf_build(
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_uint_t brokers, char *err,
    size_t size);
static ngx_int_t ngx_http_aai_kafka_producer_start(ngx_cycle_t *cycle,
    ngx_http_aai_kafka_main_conf_t *kmcf);
static void ngx_http_aai_kafka_producer_stop(ngx_msec_t timeout,
    ngx_uint_t detach);
static void ngx_http_aai_kafka_destroy(rd_kafka_t *rk, ngx_uint_t detach);
static ngx_int_t ngx_http_aai_kafka_destroy_detached(rd_kafka_t *rk);
static void *ngx_http_aai_kafka_destroy_thread(void *data);
static ngx_int_t ngx_http_aai_kafka_recover(void);
static void ngx_http_aai_kafka_producer_restart(void);
static ngx_int_t ngx_http_aai_kafka_notify_init(ngx_cycle_t *cycle);
static void ngx_http_aai_kafka_notify_close(void);
static void ngx_http_aai_kafka_account(ngx_http_aai_kafka_worker_t *w);
static void ngx_http_aai_kafka_slots_check(
    ngx_http_aai_kafka_main_conf_t *kmcf);
static ngx_http_aai_kafka_slot_t *ngx_http_aai_kafka_slot_claim(
    ngx_http_aai_kafka_main_conf_t *kmcf);
static ngx_int_t ngx_http_aai_kafka_init_workers(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_aai_kafka_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_kafka_exit_process(ngx_cycle_t *cycle);

static void *ngx_http_aai_kafka_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_kafka_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_aai_kafka_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_aai_kafka_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_aai_kafka_brokers(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_kafka_flush_timeout(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_aai_kafka_spool_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_kafka_property(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_aai_kafka_scratch_set(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, char *name, char *value,
    char *err, size_t size);
static void ngx_http_aai_kafka_scratch_cleanup(void *data);
static char *ngx_http_aai_kafka_format(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_kafka_format_field(ngx_conf_t *cf,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *arg);
static ngx_int_t ngx_http_aai_kafka_compile_value(ngx_conf_t *cf,
    ngx_http_aai_kafka_field_t *field, ngx_str_t *value);
static char *ngx_http_aai_kafka_event(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_aai_kafka_topic(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_str_t *name);
static ngx_int_t ngx_http_aai_kafka_header_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_event_t *ev, ngx_str_t *arg);
static ngx_int_t ngx_http_aai_kafka_topics_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *arg);
static ngx_http_complex_value_t *ngx_http_aai_kafka_complex(ngx_conf_t *cf,
    ngx_str_t *value);

static ngx_int_t ngx_http_aai_kafka_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_kafka_default_format(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);
static ngx_uint_t ngx_http_aai_kafka_variable_exists(ngx_conf_t *cf,
    char *name);
static ngx_int_t ngx_http_aai_kafka_init_metrics(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);
static ngx_int_t ngx_http_aai_kafka_spool_metrics(
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_aai_metrics_t *m);
static ngx_int_t ngx_http_aai_kafka_check_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);


static ngx_http_aai_kafka_worker_t  ngx_http_aai_kafka_worker;

/* producers being destroyed by threads of their own */
static ngx_atomic_t  ngx_http_aai_kafka_destroying;


static ngx_conf_post_handler_pt  ngx_http_aai_kafka_flush_timeout_p =
    ngx_http_aai_kafka_flush_timeout;


/*
 * The seed deployment's producer settings; aai_kafka_property overrides any.
 * queue.buffering.max.* and message.timeout.ms bound what a worker keeps
 * while the brokers are away: by count and by bytes (librdkafka's own byte
 * bound is 1 GiB per worker).  gzip at level 1: events compress nearly as
 * well as at zlib's default (6) for half the CPU of the producer's thread,
 * which shares the machine with the worker.  reconnect.backoff.*: a broker
 * that comes back is used again within a second (librdkafka's 10 s maximum
 * backoff dropped events for up to 9 s after the brokers returned).
 */

static ngx_http_aai_kafka_property_t  ngx_http_aai_kafka_defaults[] = {
    { "client.id", "aai-nginx" },
    { "compression.type", "gzip" },
    { "compression.level", "1" },
    { "batch.size", "16384" },
    { "linger.ms", "10" },
    { "enable.idempotence", "true" },
    { "queue.buffering.max.messages", "100000" },
    { "queue.buffering.max.kbytes", "32768" },
    { "reconnect.backoff.ms", "100" },
    { "reconnect.backoff.max.ms", "1000" },
    { "message.timeout.ms", "30000" },
    { "statistics.interval.ms", "10000" },
    { "log.connection.close", "false" },
    { NULL, NULL }
};


static ngx_http_aai_kafka_default_field_t  ngx_http_aai_kafka_fields[] = {
    { "ts", "$msec", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "ip", "$remote_addr", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "method", "$request_method", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "uri", "$uri", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "status", "$status", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "latency", "$request_time", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "user", "$aai_user", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "ratelimit", "$aai_ratelimit_status", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "cache", "$aai_cache_status", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "upstream_time", "$upstream_response_time",
      NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "bytes", "$bytes_sent", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { NULL, NULL, 0, 0 }
};


static ngx_command_t  ngx_http_aai_kafka_commands[] = {

    { ngx_string("aai_kafka_brokers"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_aai_kafka_brokers,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_kafka_property"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_aai_kafka_property,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_kafka_format"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_aai_kafka_format,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_kafka_event"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_kafka_event,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_kafka_flush_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_kafka_main_conf_t, flush_timeout),
      &ngx_http_aai_kafka_flush_timeout_p },

    { ngx_string("aai_kafka_spool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_aai_kafka_spool_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    NGX_AAI_METRICS_COMMAND,

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_kafka_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_aai_kafka_init,               /* postconfiguration */

    ngx_http_aai_kafka_create_main_conf,   /* create main configuration */
    ngx_http_aai_kafka_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_aai_kafka_create_loc_conf,    /* create location configuration */
    ngx_http_aai_kafka_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_aai_kafka_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_kafka_module_ctx,        /* module context */
    ngx_http_aai_kafka_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_aai_kafka_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_aai_kafka_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_aai_kafka_log_handler(ngx_http_request_t *r)
{
    ngx_str_t                        val, payload;
    ngx_uint_t                       i;
    ngx_http_aai_kafka_event_t      *ev;
    ngx_http_aai_kafka_format_t     *fmt, *last;
    ngx_http_aai_kafka_loc_conf_t   *klcf;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_kafka_module);

    if (klcf->events == NULL) {
        return NGX_OK;
    }

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_aai_kafka_module);

    last = NULL;
    ngx_str_null(&payload);

    ev = klcf->events->elts;

    for (i = 0; i < klcf->events->nelts; i++) {

        if (ev[i].filter) {
            if (ngx_http_complex_value(r, ev[i].filter, &val) != NGX_OK) {
                continue;
            }

            if (val.len == 0 || (val.len == 1 && val.data[0] == '0')) {
                continue;
            }
        }

        fmt = ev[i].format ? ev[i].format : kmcf->default_format;

        if (fmt != last) {
            if (ngx_http_aai_kafka_json(r, fmt, &payload) != NGX_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "aai_kafka: could not build the event");
                ngx_http_aai_kafka_drop(kmcf, NGX_HTTP_AAI_KAFKA_FORMAT);
                last = NULL;
                continue;
            }

            last = fmt;
        }

        ngx_http_aai_kafka_produce(r, kmcf, &ev[i], &payload);
    }

    return NGX_OK;
}


static void
ngx_http_aai_kafka_produce(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *payload)
{
    ngx_str_t                    *topic, key;
    ngx_uint_t                    t;
    rd_kafka_headers_t           *hdrs;
    rd_kafka_resp_err_t           err;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    t = ev->topic;

    if (ev->topic_value && ngx_http_aai_kafka_pick(r, kmcf, ev, &t) != NGX_OK)
    {
        ngx_http_aai_kafka_drop(kmcf, NGX_HTTP_AAI_KAFKA_TOPIC);

        w->drops.count++;
        w->drops.reason = "the topic is not among topics=";

        ngx_http_aai_kafka_report(&w->drops, "dropped", 0);
        return;
    }

    ngx_str_null(&key);

    if (ev->key && ngx_http_complex_value(r, ev->key, &key) != NGX_OK) {
        ngx_str_null(&key);
    }

    /* the event goes without headers rather than not at all */
    hdrs = ev->headers ? ngx_http_aai_kafka_headers(r, ev->headers) : NULL;

    /*
     * No producer: it could not be created, or this is a configuration
     * reloaded without a master process (no init_process for it).
     */

    if (w->rk == NULL || w->kmcf != kmcf) {
        err = RD_KAFKA_RESP_ERR__STATE;
        goto dropped;
    }

    err = ngx_http_aai_kafka_producev(w, t, payload, &key, hdrs);

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        /* before the error callback is served: rebuild now, try again */

        w->fatal = 1;

        if (ngx_http_aai_kafka_recover() == NGX_OK) {
            err = ngx_http_aai_kafka_producev(w, t, payload, &key, hdrs);
        }
    }

    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        w->outstanding++;
        ngx_http_aai_kafka_account(w);
        ngx_aai_metrics_inc(kmcf->metrics, kmcf->produced, 1);
        ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth, 1);
        return;
    }

dropped:

    if (kmcf->spool && w->kmcf == kmcf) {
        topic = kmcf->topics.elts;

        ngx_http_aai_kafka_spool(w, kmcf, err, (char *) topic[t].data, &key,
                                 payload, hdrs);

    } else {
        ngx_http_aai_kafka_drop(kmcf, ngx_http_aai_kafka_reason(err));

        w->drops.count++;
        w->drops.reason = rd_kafka_err2str(err);

        ngx_http_aai_kafka_report(&w->drops, "dropped", 0);
    }

    /* not taken: still ours */

    if (hdrs) {
        rd_kafka_headers_destroy(hdrs);
    }
}


/* the topic a variable names, one of those declared by topics= */

static ngx_int_t
ngx_http_aai_kafka_pick(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_uint_t *t)
{
    ngx_str_t    v, *names;
    ngx_uint_t   i, *idx;

    if (ngx_http_complex_value(r, ev->topic_value, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    names = kmcf->topics.elts;
    idx = ev->topics->elts;

    for (i = 0; i < ev->topics->nelts; i++) {
        if (names[idx[i]].len == v.len
            && ngx_strncmp(names[idx[i]].data, v.data, v.len) == 0)
        {
            *t = idx[i];
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* the headers of an event; NULL when there are none or memory ran out */

static rd_kafka_headers_t *
ngx_http_aai_kafka_headers(ngx_http_request_t *r, ngx_array_t *headers)
{
    ngx_str_t                     v;
    ngx_uint_t                    i;
    rd_kafka_headers_t           *hdrs;
    ngx_http_aai_kafka_header_t  *h;

    hdrs = rd_kafka_headers_new(headers->nelts);
    if (hdrs == NULL) {
        return NULL;
    }

    h = headers->elts;

    for (i = 0; i < headers->nelts; i++) {
        if (ngx_http_complex_value(r, h[i].value, &v) != NGX_OK) {
            ngx_str_null(&v);
        }

        /* copied: nothing of the request is referenced */

        if (rd_kafka_header_add(hdrs, (char *) h[i].name.data,
                                (ssize_t) h[i].name.len, v.data,
                                (ssize_t) v.len)
            != RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            rd_kafka_headers_destroy(hdrs);
            return NULL;
        }
    }

    return hdrs;
}


/*
 * An event Kafka did not take or finally refused goes to the spool, unless
 * it can never be taken (too large); the spool counts what it drops.
 */

static void
ngx_http_aai_kafka_spool(ngx_http_aai_kafka_worker_t *w,
    ngx_http_aai_kafka_main_conf_t *kmcf, rd_kafka_resp_err_t err,
    const char *topic, ngx_str_t *key, ngx_str_t *payload,
    rd_kafka_headers_t *hdrs)
{
    ngx_str_t  name, packed;

    if (topic == NULL || err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE
        || err == RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE)
    {
        ngx_http_aai_kafka_drop(kmcf, ngx_http_aai_kafka_reason(err));

        w->drops.count++;
        w->drops.reason = rd_kafka_err2str(err);

        ngx_http_aai_kafka_report(&w->drops, "dropped", 0);
        return;
    }

    name.data = (u_char *) topic;
    name.len = ngx_strlen(topic);

    if (ngx_http_aai_kafka_pack(hdrs, &packed) != NGX_OK) {
        ngx_str_null(&packed);
    }

    if (ngx_http_aai_kafka_spool_append(&name, key, payload, &packed)
        != NGX_OK)
    {
        w->drops.count++;
        w->drops.reason = "the spool is full";

        ngx_http_aai_kafka_report(&w->drops, "dropped", 0);
    }
}


/*
 * Headers in a record of the spool: for each, the name's length (2), the
 * value's length (4, 0xffffffff: null), the name, the value.
 */

static ngx_int_t
ngx_http_aai_kafka_pack(rd_kafka_headers_t *hdrs, ngx_str_t *out)
{
    u_char                       *p;
    size_t                        size, nlen, vlen;
    uint16_t                      u16;
    uint32_t                      u32;
    ngx_uint_t                    i;
    const char                   *name;
    const void                   *value;
    ngx_http_aai_kafka_worker_t  *w;

    ngx_str_null(out);

    if (hdrs == NULL || rd_kafka_header_cnt(hdrs) == 0) {
        return NGX_OK;
    }

    w = &ngx_http_aai_kafka_worker;

    size = 0;

    for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &vlen)
                == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
    {
        nlen = ngx_strlen(name);

        if (nlen > 0xffff || vlen >= 0xffffffff) {
            return NGX_ERROR;
        }

        size += 6 + nlen + vlen;
    }

    if (w->hbuf_size < size) {
        p = ngx_alloc(ngx_max(size, 256), ngx_cycle->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (w->hbuf) {
            ngx_free(w->hbuf);
        }

        w->hbuf = p;
        w->hbuf_size = ngx_max(size, 256);
    }

    p = w->hbuf;

    for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &vlen)
                == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
    {
        nlen = ngx_strlen(name);

        u16 = (uint16_t) nlen;
        u32 = value ? (uint32_t) vlen : 0xffffffff;

        p = ngx_cpymem(p, &u16, 2);
        p = ngx_cpymem(p, &u32, 4);
        p = ngx_cpymem(p, name, nlen);
        p = ngx_cpymem(p, value, value ? vlen : 0);
    }

    out->data = w->hbuf;
    out->len = p - w->hbuf;

    return NGX_OK;
}


/* NULL when there are none, or they do not parse: the event goes without */

static rd_kafka_headers_t *
ngx_http_aai_kafka_unpack(ngx_str_t *in)
{
    u_char              *p, *last;
    uint16_t             nlen;
    uint32_t             vlen;
    rd_kafka_headers_t  *hdrs;

    if (in->len == 0) {
        return NULL;
    }

    hdrs = rd_kafka_headers_new(4);
    if (hdrs == NULL) {
        return NULL;
    }

    p = in->data;
    last = in->data + in->len;

    while (p < last) {
        if (last - p < 6) {
            goto invalid;
        }

        ngx_memcpy(&nlen, p, 2);
        ngx_memcpy(&vlen, p + 2, 4);
        p += 6;

        if ((size_t) (last - p) < nlen
            || (vlen != 0xffffffff && (size_t) (last - p) - nlen < vlen))
        {
            goto invalid;
        }

        if (rd_kafka_header_add(hdrs, (char *) p, nlen,
                                vlen == 0xffffffff ? NULL : p + nlen,
                                vlen == 0xffffffff ? 0 : (ssize_t) vlen)
            != RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            goto invalid;
        }

        p += nlen + ((vlen == 0xffffffff) ? 0 : vlen);
    }

    return hdrs;

invalid:

    rd_kafka_headers_destroy(hdrs);

    return NULL;
}


/* an event of the spool, with its replay as opaque */

static ngx_int_t
ngx_http_aai_kafka_replay(ngx_str_t *topic, ngx_str_t *key, ngx_str_t *value,
    ngx_str_t *headers, void *opaque)
{
    u_char                           name[256];
    rd_kafka_headers_t              *hdrs;
    rd_kafka_resp_err_t              err;
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    w = &ngx_http_aai_kafka_worker;
    kmcf = w->kmcf;

    if (w->rk == NULL || w->fatal || topic->len >= sizeof(name)) {
        return NGX_ERROR;
    }

    /* any topic, also one of an older configuration: librdkafka keeps one
     * handle per name */

    ngx_memcpy(name, topic->data, topic->len);
    name[topic->len] = '\0';

    hdrs = ngx_http_aai_kafka_unpack(headers);

    if (hdrs) {
        err = rd_kafka_producev(w->rk,
                                RD_KAFKA_V_TOPIC((char *) name),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_VALUE(value->data, value->len),
                                RD_KAFKA_V_KEY(key->data, key->len),
                                RD_KAFKA_V_HEADERS(hdrs),
                                RD_KAFKA_V_OPAQUE(opaque),
                                RD_KAFKA_V_END);

        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_destroy(hdrs);
        }

    } else {
        err = rd_kafka_producev(w->rk,
                                RD_KAFKA_V_TOPIC((char *) name),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_VALUE(value->data, value->len),
                                RD_KAFKA_V_KEY(key->data, key->len),
                                RD_KAFKA_V_OPAQUE(opaque),
                                RD_KAFKA_V_END);
    }

    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        return NGX_AGAIN;
    }

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        return NGX_ERROR;
    }

    w->outstanding++;
    ngx_http_aai_kafka_account(w);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->produced, 1);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth, 1);

    return NGX_OK;
}


static void
ngx_http_aai_kafka_drop(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_uint_t reason)
{
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->dropped, 1);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->reasons[reason], 1);
}


static ngx_uint_t
ngx_http_aai_kafka_reason(rd_kafka_resp_err_t err)
{
    switch (err) {

    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return NGX_HTTP_AAI_KAFKA_QUEUE_FULL;

    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return NGX_HTTP_AAI_KAFKA_TOO_LARGE;

    case RD_KAFKA_RESP_ERR__STATE:
        return NGX_HTTP_AAI_KAFKA_NO_PRODUCER;

    case RD_KAFKA_RESP_ERR__FATAL:
        return NGX_HTTP_AAI_KAFKA_FATAL;

    default:
        return NGX_HTTP_AAI_KAFKA_OTHER;
    }
}


/* copies the event: nothing of the request is referenced after the call */

static rd_kafka_resp_err_t
ngx_http_aai_kafka_producev(ngx_http_aai_kafka_worker_t *w, ngx_uint_t topic,
    ngx_str_t *payload, ngx_str_t *key, rd_kafka_headers_t *hdrs)
{
    if (hdrs) {
        /* taken: librdkafka owns the headers */
        return rd_kafka_producev(w->rk,
                                 RD_KAFKA_V_RKT(w->topics[topic]),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_VALUE(payload->data, payload->len),
                                 RD_KAFKA_V_KEY(key->len ? key->data : NULL,
                                                key->len),
                                 RD_KAFKA_V_HEADERS(hdrs),
                                 RD_KAFKA_V_END);
    }

    return rd_kafka_producev(w->rk,
                             RD_KAFKA_V_RKT(w->topics[topic]),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_VALUE(payload->data, payload->len),
                             RD_KAFKA_V_KEY(key->len ? key->data : NULL,
                                            key->len),
                             RD_KAFKA_V_END);
}


/*
 * The event of a format, printed by cJSON from a tree of the format's
 * fields that each worker builds once: per event the items only point to
 * the values, in the request pool, and are reset to null once printed.
 * The text goes to a buffer of the worker, which librdkafka copies.
 */

static ngx_int_t
ngx_http_aai_kafka_json(ngx_http_request_t *r,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *out)
{
    int                          len;
    cJSON                       *tree, *item;
    size_t                       size;
    u_char                      *buf;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    tree = fmt->tree ? fmt->tree : ngx_http_aai_kafka_tree(fmt);
    if (tree == NULL) {
        return NGX_ERROR;
    }

    size = fmt->size + sizeof("{}");

    f = fmt->fields->elts;
    item = tree->child;

    for (i = 0; i < fmt->fields->nelts; i++, item = item->next) {
        if (ngx_http_aai_kafka_field(r, &f[i], item, &size) != NGX_OK) {
            goto failed;
        }
    }

    /* cJSON asks for a few bytes more than it writes */

    size += 8;

    if (size > 0x7fffffff) {
        goto failed;
    }

    len = (int) size;

    buf = ngx_http_aai_kafka_buffer(size);
    if (buf == NULL) {
        goto failed;
    }

    if (!cJSON_PrintPreallocated(tree, (char *) buf, len, 0)) {
        goto failed;
    }

    ngx_http_aai_kafka_tree_reset(tree);

    out->data = buf;
    out->len = ngx_strlen(buf);

    return NGX_OK;

failed:

    ngx_http_aai_kafka_tree_reset(tree);

    return NGX_ERROR;
}


static u_char *
ngx_http_aai_kafka_buffer(size_t size)
{
    u_char                       *buf;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (w->buf_size >= size) {
        return w->buf;
    }

    size = ngx_max(size, 1024);

    buf = ngx_alloc(size, ngx_cycle->log);
    if (buf == NULL) {
        return NULL;
    }

    if (w->buf) {
        ngx_free(w->buf);
    }

    w->buf = buf;
    w->buf_size = size;

    return buf;
}


static cJSON *
ngx_http_aai_kafka_tree(ngx_http_aai_kafka_format_t *fmt)
{
    cJSON                       *tree, *item;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    tree = cJSON_CreateObject();
    if (tree == NULL) {
        return NULL;
    }

    f = fmt->fields->elts;

    for (i = 0; i < fmt->fields->nelts; i++) {
        item = cJSON_CreateNull();
        if (item == NULL) {
            cJSON_Delete(tree);
            return NULL;
        }

        /* the name is the format's, in the cycle's pool */

        if (!cJSON_AddItemToObjectCS(tree, f[i].name, item)) {
            cJSON_Delete(item);
            cJSON_Delete(tree);
            return NULL;
        }
    }

    fmt->tree = tree;

    return tree;
}


/* every item null again: nothing points into a request pool */

static void
ngx_http_aai_kafka_tree_reset(cJSON *tree)
{
    cJSON  *item;

    for (item = tree->child; item; item = item->next) {
        item->type = cJSON_NULL | (item->type & cJSON_StringIsConst);
        item->valuestring = NULL;
    }
}


static void
ngx_http_aai_kafka_trees_free(ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_uint_t                    i;
    ngx_http_aai_kafka_format_t  *fmt;

    if (kmcf->default_format && kmcf->default_format->tree) {
        cJSON_Delete(kmcf->default_format->tree);
        kmcf->default_format->tree = NULL;
    }

    fmt = kmcf->formats ? kmcf->formats->elts : NULL;

    for (i = 0; fmt && i < kmcf->formats->nelts; i++) {
        if (fmt[i].tree) {
            cJSON_Delete(fmt[i].tree);
            fmt[i].tree = NULL;
        }
    }
}


static ngx_int_t
ngx_http_aai_kafka_field(ngx_http_request_t *r, ngx_http_aai_kafka_field_t *f,
    cJSON *item, size_t *size)
{
    ngx_str_t                   v;
    ngx_http_variable_value_t  *vv;

    ngx_str_null(&v);

    if (f->index != NGX_ERROR) {
        vv = ngx_http_get_indexed_variable(r, f->index);

        if (vv != NULL && !vv->not_found) {
            v.data = vv->data;
            v.len = vv->len;
        }

    } else if (f->value) {
        if (ngx_http_complex_value(r, f->value, &v) != NGX_OK) {
            ngx_str_null(&v);
        }
    }

    if (v.len) {
        switch (f->type) {

        case NGX_HTTP_AAI_KAFKA_NUMBER:
            return ngx_http_aai_kafka_number(r->pool, &v, item, size);

        case NGX_HTTP_AAI_KAFKA_BOOL:
            ngx_http_aai_kafka_bool(&v, item, size);
            return NGX_OK;

        default: /* NGX_HTTP_AAI_KAFKA_STRING */
            return ngx_http_aai_kafka_string(r->pool, &v, item, size);
        }
    }

    *size += sizeof("null") - 1;

    return NGX_OK;
}


/* a value the item prints, not its own: cJSON_Delete() leaves it alone */

#define ngx_http_aai_kafka_set(item, t, s)                                    \
    (item)->type = (t) | cJSON_IsReference                                    \
                   | ((item)->type & cJSON_StringIsConst);                    \
    (item)->valuestring = (char *) (s)


static ngx_int_t
ngx_http_aai_kafka_string(ngx_pool_t *pool, ngx_str_t *v, cJSON *item,
    size_t *size)
{
    u_char      *s, *last;
    size_t       n;
    ngx_uint_t   valid;

    /*
     * cJSON copies bytes of 0x80 and above as they are: anything that is
     * not UTF-8 becomes U+FFFD here, and so does a NUL byte, which a
     * C string cannot carry.
     */

    n = ngx_http_aai_kafka_utf8_len(v->data, v->len, &valid);

    s = ngx_pnalloc(pool, n + 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    if (valid) {
        last = ngx_cpymem(s, v->data, n);

    } else {
        last = ngx_http_aai_kafka_utf8_copy(s, v->data, v->len);
    }

    *last = '\0';

    /* every byte may become "\u00XX" */
    *size += 6 * n + sizeof("\"\"") - 1;

    ngx_http_aai_kafka_set(item, cJSON_String, s);

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_kafka_number(ngx_pool_t *pool, ngx_str_t *v, cJSON *item,
    size_t *size)
{
    u_char  *s;

    if (v->len >= NGX_INT64_LEN + 32
        || !ngx_http_aai_kafka_is_number(v->data, v->len))
    {
        *size += sizeof("null") - 1;
        return NGX_OK;
    }

    s = ngx_pnalloc(pool, v->len + 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s, v->data, v->len);
    s[v->len] = '\0';

    *size += v->len;

    ngx_http_aai_kafka_set(item, cJSON_Raw, s);

    return NGX_OK;
}


static void
ngx_http_aai_kafka_bool(ngx_str_t *v, cJSON *item, size_t *size)
{
    int  type;

    *size += sizeof("false") - 1;

    type = cJSON_NULL;

    switch (v->len) {

    case 1:
        if (v->data[0] == '1') {
            type = cJSON_True;

        } else if (v->data[0] == '0') {
            type = cJSON_False;
        }

        break;

    case 2:
        if (ngx_strncasecmp(v->data, (u_char *) "on", 2) == 0) {
            type = cJSON_True;

        } else if (ngx_strncasecmp(v->data, (u_char *) "no", 2) == 0) {
            type = cJSON_False;
        }

        break;

    case 3:
        if (ngx_strncasecmp(v->data, (u_char *) "yes", 3) == 0) {
            type = cJSON_True;

        } else if (ngx_strncasecmp(v->data, (u_char *) "off", 3) == 0) {
            type = cJSON_False;
        }

        break;

    case 4:
        if (ngx_strncasecmp(v->data, (u_char *) "true", 4) == 0) {
            type = cJSON_True;
        }

        break;

    case 5:
        if (ngx_strncasecmp(v->data, (u_char *) "false", 5) == 0) {
            type = cJSON_False;
        }

        break;
    }

    item->type = type | (item->type & cJSON_StringIsConst);
}


/*
 * The length of a valid UTF-8 sequence at p (1 to 4), or 0 when the bytes
 * at p are not one; *skip is then the length of the maximal ill-formed
 * subpart to replace with one U+FFFD (Unicode 15, 3.9, U+FFFD substitution).
 */

static size_t
ngx_http_aai_kafka_utf8_seq(u_char *p, u_char *end, size_t *skip)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = *p;

    *skip = 1;

    if (c < 0x80) {
        return c ? 1 : 0;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = (c == 0xe0) ? 0xa0 : 0x80;
        hi = (c == 0xed) ? 0x9f : 0xbf;

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = (c == 0xf0) ? 0x90 : 0x80;
        hi = (c == 0xf4) ? 0x8f : 0xbf;

    } else {
        return 0;
    }

    for (i = 1; i < n; i++) {

        if (p + i == end) {
            *skip = i;
            return 0;
        }

        if (p[i] < lo || p[i] > hi) {
            *skip = i;
            return 0;
        }

        lo = 0x80;
        hi = 0xbf;
    }

    return n;
}


static size_t
ngx_http_aai_kafka_utf8_len(u_char *p, size_t n, ngx_uint_t *valid)
{
    u_char  *end;
    size_t   len, seq, skip;

    end = p + n;
    len = 0;

    *valid = 1;

    while (p < end) {

        if (*p >= 0x20 && *p < 0x80) {
            p++;
            len++;
            continue;
        }

        seq = ngx_http_aai_kafka_utf8_seq(p, end, &skip);

        if (seq) {
            p += seq;
            len += seq;

        } else {
            p += skip;
            len += 3;
            *valid = 0;
        }
    }

    return len;
}


static u_char *
ngx_http_aai_kafka_utf8_copy(u_char *dst, u_char *p, size_t n)
{
    u_char  *end;
    size_t   seq, skip;

    end = p + n;

    while (p < end) {

        seq = ngx_http_aai_kafka_utf8_seq(p, end, &skip);

        if (seq) {
            dst = ngx_cpymem(dst, p, seq);
            p += seq;
            continue;
        }

        /* U+FFFD REPLACEMENT CHARACTER */

        *dst++ = 0xef;
        *dst++ = 0xbf;
        *dst++ = 0xbd;

        p += skip;
    }

    return dst;
}


/* the JSON number grammar (RFC 8259, 6) */

static ngx_uint_t
ngx_http_aai_kafka_is_number(u_char *p, size_t n)
{
    u_char  *end, *start;

    end = p + n;

    if (p < end && *p == '-') {
        p++;
    }

    if (p == end) {
        return 0;
    }

    if (*p == '0') {
        p++;

    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

    } else {
        return 0;
    }

    if (p < end && *p == '.') {
        start = ++p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return 0;
        }
    }

    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        start = p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return 0;
        }
    }

    return p == end;
}


static void
ngx_http_aai_kafka_notify_handler(ngx_event_t *rev)
{
    u_char             buf[64];
    ssize_t            n;
    ngx_connection_t  *c;

    c = rev->data;

    /* librdkafka wrote to the socket: drain it, then serve the queue */

    for ( ;; ) {
        n = recv(c->fd, buf, sizeof(buf), 0);

        if (n > 0) {
            continue;
        }

        if (n == -1 && ngx_socket_errno == NGX_EINTR) {
            continue;
        }

        if (n == -1 && ngx_socket_errno != NGX_EAGAIN) {
            ngx_log_error(NGX_LOG_ALERT, rev->log, ngx_socket_errno,
                          "aai_kafka: recv() on the wake-up socket failed");
        }

        break;
    }

    ngx_http_aai_kafka_poll();

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, rev->log, 0,
                      "aai_kafka: could not re-arm the wake-up socket");
    }
}


static void
ngx_http_aai_kafka_timer_handler(ngx_event_t *ev)
{
    ngx_http_aai_kafka_poll();

    if (ngx_http_aai_kafka_worker.checked != ngx_time()
        && ngx_http_aai_kafka_worker.kmcf)
    {
        ngx_http_aai_kafka_worker.checked = ngx_time();
        ngx_http_aai_kafka_slots_check(ngx_http_aai_kafka_worker.kmcf);
    }

    ngx_http_aai_kafka_report(&ngx_http_aai_kafka_worker.drops, "dropped", 0);
    ngx_http_aai_kafka_report(&ngx_http_aai_kafka_worker.failures,
                              "not delivered", 0);

    if (ngx_http_aai_kafka_worker.kmcf
        && ngx_http_aai_kafka_worker.kmcf->spool)
    {
        ngx_http_aai_kafka_spool_tick(ngx_http_aai_kafka_worker.rk != NULL
                                      && !ngx_http_aai_kafka_worker.fatal
                                      && ngx_current_msec
                                         - ngx_http_aai_kafka_worker.failed
                                         >= NGX_HTTP_AAI_KAFKA_CALM);
    }

    if (ngx_http_aai_kafka_worker.kmcf) {
        ngx_add_timer(ev, NGX_HTTP_AAI_KAFKA_POLL);
    }
}


static void
ngx_http_aai_kafka_poll(void)
{
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (w->rk == NULL) {
        return;
    }

    rd_kafka_poll(w->rk, 0);

    if (w->fatal) {
        (void) ngx_http_aai_kafka_recover();
    }
}


/* logs how many events were lost and why, at most once a second */

static void
ngx_http_aai_kafka_report(ngx_http_aai_kafka_limit_t *limit,
    const char *what, ngx_uint_t force)
{
    if (limit->count == 0) {
        return;
    }

    if (!force && limit->time == ngx_time()) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "aai_kafka: %ui events %s, last error: %s",
                  limit->count, what,
                  limit->reason ? limit->reason : "unknown");

    limit->count = 0;
    limit->time = ngx_time();
}


static void
ngx_http_aai_kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg,
    void *opaque)
{
    ngx_str_t                        key, value;
    rd_kafka_headers_t              *hdrs;
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    w = opaque;
    kmcf = w->kmcf;

    if (w->outstanding) {
        w->outstanding--;
        ngx_http_aai_kafka_account(w);
    }

    ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth, -1);

    if (msg->_private) {
        /* replayed from the spool, which still has it */
        ngx_http_aai_kafka_spool_report(msg->_private,
                                     msg->err == RD_KAFKA_RESP_ERR_NO_ERROR);
    }

    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        ngx_aai_metrics_inc(kmcf->metrics, kmcf->delivered, 1);
        return;
    }

    ngx_aai_metrics_inc(kmcf->metrics, kmcf->failed, 1);

    w->failed = ngx_current_msec;

    if (kmcf->spool && msg->_private == NULL) {
        key.data = msg->key;
        key.len = msg->key_len;

        value.data = msg->payload;
        value.len = msg->len;

        if (rd_kafka_message_headers(msg, &hdrs)
            != RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            hdrs = NULL;
        }

        ngx_http_aai_kafka_spool(w, kmcf, msg->err,
                                 rd_kafka_topic_name(msg->rkt), &key,
                                 &value, hdrs);
    }

    w->failures.count++;
    w->failures.reason = rd_kafka_err2str(msg->err);

    /* at exit, one line sums up what was given up */

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_http_aai_kafka_report(&w->failures, "not delivered", 0);
    }
}


static void
ngx_http_aai_kafka_error_cb(rd_kafka_t *rk, int err, const char *reason,
    void *opaque)
{
    char                          buf[512];
    rd_kafka_resp_err_t           fatal;
    ngx_http_aai_kafka_worker_t  *w;

    w = opaque;

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        fatal = rd_kafka_fatal_error(rk, buf, sizeof(buf));

        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "aai_kafka: fatal producer error: %s: %s, "
                      "rebuilding the producer",
                      rd_kafka_err2name(fatal), buf);

        w->fatal = 1;
        return;
    }

    /* transport errors are logged by librdkafka as well */

    if (err == RD_KAFKA_RESP_ERR__TRANSPORT) {
        return;
    }

    ngx_http_aai_kafka_log_cb(rk, 4, rd_kafka_err2name(err), reason);
}


/* served by rd_kafka_poll() on the worker's thread (log.queue) */

static void
ngx_http_aai_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
    const char *buf)
{
    ngx_uint_t                   lvl;
    ngx_http_aai_kafka_limit_t  *limit;

    /* a producer destroyed by a thread of its own says nothing more */

    if (!pthread_equal(pthread_self(), ngx_http_aai_kafka_worker.thread)) {
        return;
    }

    limit = &ngx_http_aai_kafka_worker.logs;

    lvl = (level < 0) ? NGX_LOG_EMERG
                      : (level > 7) ? NGX_LOG_DEBUG : (ngx_uint_t) level + 1;

    if (ngx_cycle->log->log_level < lvl) {
        return;
    }

    if (limit->time != ngx_time()) {

        if (limit->count > NGX_HTTP_AAI_KAFKA_LOG_BURST) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "aai_kafka: %ui librdkafka messages suppressed",
                          limit->count - NGX_HTTP_AAI_KAFKA_LOG_BURST);
        }

        limit->time = ngx_time();
        limit->count = 0;
    }

    if (limit->count++ >= NGX_HTTP_AAI_KAFKA_LOG_BURST) {
        return;
    }

    ngx_log_error(lvl, ngx_cycle->log, 0, "aai_kafka: librdkafka: %s: %s",
                  fac, buf);
}


static void
ngx_http_aai_kafka_quiet_log_cb(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf)
{
}


/* the average round-trip time of each broker over the statistics window */

static int
ngx_http_aai_kafka_stats_cb(rd_kafka_t *rk, char *json, size_t len,
    void *opaque)
{
    cJSON                           *root, *brokers, *b, *id, *rtt, *avg,
                                    *cnt;
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    w = opaque;
    kmcf = w->kmcf;

    root = cJSON_ParseWithLength(json, len);
    if (root == NULL) {
        return 0;
    }

    brokers = cJSON_GetObjectItemCaseSensitive(root, "brokers");

    cJSON_ArrayForEach(b, brokers) {
        id = cJSON_GetObjectItemCaseSensitive(b, "nodeid");
        rtt = cJSON_GetObjectItemCaseSensitive(b, "rtt");
        avg = cJSON_GetObjectItemCaseSensitive(rtt, "avg");
        cnt = cJSON_GetObjectItemCaseSensitive(rtt, "cnt");

        /*
         * bootstrap entries (nodeid -1) and idle brokers say nothing; an
         * average past 10^12 us is no RTT (and one past 2^64 would make the
         * conversion below undefined)
         */

        if (!cJSON_IsNumber(id) || id->valuedouble < 0
            || !cJSON_IsNumber(avg) || avg->valuedouble < 0
            || avg->valuedouble > 1e12
            || !cJSON_IsNumber(cnt) || cnt->valuedouble <= 0)
        {
            continue;
        }

        /* microseconds */
        ngx_aai_metrics_observe(kmcf->metrics, kmcf->rtt,
                                (ngx_uint_t) avg->valuedouble);
    }

    cJSON_Delete(root);

    return 0;
}


static rd_kafka_conf_t *
ngx_http_aai_kafka_conf_build(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_uint_t brokers, char *err, size_t size)
{
    ngx_uint_t                      i;
    rd_kafka_conf_t                *conf;
    ngx_http_aai_kafka_property_t  *d, *p;

    conf = rd_kafka_conf_new();
    if (conf == NULL) {
        ngx_cpystrn((u_char *) err, (u_char *) "rd_kafka_conf_new() failed",
                    size);
        return NULL;
    }

    for (d = ngx_http_aai_kafka_defaults; d->name; d++) {
        if (rd_kafka_conf_set(conf, d->name, d->value, err, size)
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    if (kmcf->no_idempotence
        && rd_kafka_conf_set(conf, "enable.idempotence", "false", err, size)
           != RD_KAFKA_CONF_OK)
    {
        goto failed;
    }

    if (brokers
        && rd_kafka_conf_set(conf, "bootstrap.servers",
                             (char *) kmcf->brokers.data, err, size)
           != RD_KAFKA_CONF_OK)
    {
        goto failed;
    }

    p = kmcf->properties ? kmcf->properties->elts : NULL;

    for (i = 0; p && i < kmcf->properties->nelts; i++) {

        if (!brokers && ngx_strcmp(p[i].name, "bootstrap.servers") == 0) {
            continue;
        }

        if (rd_kafka_conf_set(conf, p[i].name, p[i].value, err, size)
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    if (rd_kafka_conf_set(conf, "log.queue", "true", err, size)
        != RD_KAFKA_CONF_OK)
    {
        goto failed;
    }

    return conf;

failed:

    rd_kafka_conf_destroy(conf);

    return NULL;
}


static ngx_int_t
ngx_http_aai_kafka_producer_start(ngx_cycle_t *cycle,
    ngx_http_aai_kafka_main_conf_t *kmcf)
{
    char                          err[512];
    ngx_str_t                    *topic;
    ngx_uint_t                    i;
    rd_kafka_t                   *rk;
    rd_kafka_conf_t              *conf;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    w->kmcf = kmcf;
    w->fatal = 0;

    conf = ngx_http_aai_kafka_conf_build(kmcf, 1, err, sizeof(err));
    if (conf == NULL) {
        goto failed;
    }

    rd_kafka_conf_set_opaque(conf, w);
    rd_kafka_conf_set_dr_msg_cb(conf, ngx_http_aai_kafka_dr_cb);
    rd_kafka_conf_set_error_cb(conf, ngx_http_aai_kafka_error_cb);
    rd_kafka_conf_set_log_cb(conf, ngx_http_aai_kafka_log_cb);
    rd_kafka_conf_set_stats_cb(conf, ngx_http_aai_kafka_stats_cb);

    /* connects in the background: a broker that is down delays nothing */

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        goto failed;
    }

    w->rk = rk;

    (void) rd_kafka_set_log_queue(rk, NULL);

    w->queue = rd_kafka_queue_get_main(rk);

    if (w->notify) {
        rd_kafka_queue_io_event_enable(w->queue, w->notify_fd, "1", 1);
    }

    if (kmcf->topics.nelts) {
        w->topics = ngx_alloc(kmcf->topics.nelts * sizeof(rd_kafka_topic_t *),
                              cycle->log);
        if (w->topics == NULL) {
            ngx_http_aai_kafka_producer_stop(0, 0);
            return NGX_ERROR;
        }
    }

    topic = kmcf->topics.elts;

    for (i = 0; i < kmcf->topics.nelts; i++) {
        w->topics[i] = rd_kafka_topic_new(rk, (char *) topic[i].data, NULL);

        if (w->topics[i] == NULL) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "aai_kafka: topic \"%V\": %s", &topic[i],
                          rd_kafka_err2str(rd_kafka_last_error()));
            ngx_http_aai_kafka_producer_stop(0, 0);
            return NGX_ERROR;
        }

        w->ntopics++;
    }

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                  "aai_kafka: could not create the producer: %s, "
                  "events will be dropped", err);

    return NGX_ERROR;
}


/*
 * Bounded: flush for at most "timeout", then give up what is left and count
 * it as failed.  rd_kafka_destroy() serves no delivery report (it purges the
 * main queue), so what was not reported by the last poll is counted here.
 * With "detach" (a rebuild while the worker serves requests) nothing waits
 * for librdkafka's threads: the purge does not wait for the brokers' threads
 * and the handle is destroyed by a thread of its own, as joining the
 * brokers' threads may take long (a name being resolved, a plugin).
 */

static void
ngx_http_aai_kafka_producer_stop(ngx_msec_t timeout, ngx_uint_t detach)
{
    int                              purge;
    ngx_uint_t                       i, left;
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    w = &ngx_http_aai_kafka_worker;
    kmcf = w->kmcf;

    if (w->rk == NULL) {
        return;
    }

    if (w->queue && w->notify) {
        rd_kafka_queue_io_event_enable(w->queue, -1, NULL, 0);
    }

    if (timeout && w->outstanding) {
        (void) rd_kafka_flush(w->rk, (int) timeout);
    }

    purge = RD_KAFKA_PURGE_F_QUEUE|RD_KAFKA_PURGE_F_INFLIGHT;

    if (detach) {
        purge |= RD_KAFKA_PURGE_F_NON_BLOCKING;
    }

    (void) rd_kafka_purge(w->rk, purge);

    rd_kafka_poll(w->rk, 0);

    for (i = 0; i < w->ntopics; i++) {
        rd_kafka_topic_destroy(w->topics[i]);
    }

    if (w->topics) {
        ngx_free(w->topics);
    }

    w->ntopics = 0;
    w->topics = NULL;

    if (w->queue) {
        rd_kafka_queue_destroy(w->queue);
        w->queue = NULL;
    }

    ngx_http_aai_kafka_destroy(w->rk, detach);
    w->rk = NULL;

    left = w->outstanding;
    w->outstanding = 0;
    ngx_http_aai_kafka_account(w);

    if (left) {
        ngx_aai_metrics_inc(kmcf->metrics, kmcf->failed, left);
        ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth,
                            - (ngx_atomic_int_t) left);

        w->failures.count += left;
        w->failures.reason = "given up when the producer stopped";
    }

    ngx_http_aai_kafka_report(&w->drops, "dropped", 1);
    ngx_http_aai_kafka_report(&w->failures, "not delivered", 1);
}


static void
ngx_http_aai_kafka_destroy(rd_kafka_t *rk, ngx_uint_t detach)
{
    if (detach && ngx_http_aai_kafka_destroy_detached(rk) == NGX_OK) {
        return;
    }

    rd_kafka_destroy(rk);
}


static ngx_int_t
ngx_http_aai_kafka_destroy_detached(rd_kafka_t *rk)
{
    int             err;
    sigset_t        set, old;
    pthread_t       tid;
    pthread_attr_t  attr;

    err = pthread_attr_init(&attr);

    if (err == 0) {
        (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);

        /* the thread inherits a mask that blocks every signal */

        (void) sigfillset(&set);
        (void) pthread_sigmask(SIG_SETMASK, &set, &old);

        (void) ngx_atomic_fetch_add(&ngx_http_aai_kafka_destroying, 1);

        err = pthread_create(&tid, &attr, ngx_http_aai_kafka_destroy_thread,
                             rk);

        if (err != 0) {
            (void) ngx_atomic_fetch_add(&ngx_http_aai_kafka_destroying, -1);
        }

        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
        (void) pthread_attr_destroy(&attr);
    }

    if (err != 0) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, err,
                      "aai_kafka: could not start a thread to destroy "
                      "the producer, destroying it in the worker");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_aai_kafka_destroy_thread(void *data)
{
    rd_kafka_destroy(data);

    (void) ngx_atomic_fetch_add(&ngx_http_aai_kafka_destroying, -1);

    return NULL;
}


/*
 * At most one rebuild a second: a fatal error may come back at once.  And
 * at most a few producers being destroyed at a time: should their threads
 * hang, the producer in error stays (its events dropped as "fatal") rather
 * than threads piling up.
 */

static ngx_int_t
ngx_http_aai_kafka_recover(void)
{
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if ((w->restarted
         && ngx_current_msec - w->restarted < NGX_HTTP_AAI_KAFKA_RESTART)
        || ngx_http_aai_kafka_destroying >= NGX_HTTP_AAI_KAFKA_DESTROYING)
    {
        /* the timer tries again */
        return NGX_DECLINED;
    }

    w->restarted = ngx_current_msec;

    ngx_http_aai_kafka_producer_restart();

    return w->rk ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_aai_kafka_producer_restart(void)
{
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    w = &ngx_http_aai_kafka_worker;
    kmcf = w->kmcf;

    ngx_http_aai_kafka_producer_stop(0, 1);
    ngx_http_aai_kafka_spool_abort();

    ngx_aai_metrics_inc(kmcf->metrics, kmcf->restarts, 1);

    if (ngx_http_aai_kafka_producer_start((ngx_cycle_t *) ngx_cycle, kmcf)
        == NGX_OK)
    {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "aai_kafka: producer rebuilt");
    }
}


/*
 * librdkafka writes a byte to a socket whenever its main queue (delivery
 * reports, errors, statistics, logs) becomes non-empty; the other end is an
 * nginx read event, so the queue is served even when no request arrives.
 */

static ngx_int_t
ngx_http_aai_kafka_notify_init(ngx_cycle_t *cycle)
{
    int                           fd[2];
    ngx_connection_t             *c;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                      "aai_kafka: socketpair() failed");
        return NGX_ERROR;
    }

    if (ngx_nonblocking(fd[0]) == -1 || ngx_nonblocking(fd[1]) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                      "aai_kafka: " ngx_nonblocking_n " failed");
        goto failed;
    }

    c = ngx_get_connection(fd[0], cycle->log);
    if (c == NULL) {
        goto failed;
    }

    c->log = cycle->log;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->read->handler = ngx_http_aai_kafka_notify_handler;

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_free_connection(c);
        goto failed;
    }

    w->notify = c;
    w->notify_fd = fd[1];

    if (w->queue) {
        rd_kafka_queue_io_event_enable(w->queue, fd[1], "1", 1);
    }

    return NGX_OK;

failed:

    (void) ngx_close_socket(fd[0]);
    (void) ngx_close_socket(fd[1]);

    return NGX_ERROR;
}


static void
ngx_http_aai_kafka_notify_close(void)
{
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (w->notify == NULL) {
        return;
    }

    ngx_close_connection(w->notify);
    (void) ngx_close_socket(w->notify_fd);

    w->notify = NULL;
    w->notify_fd = (ngx_socket_t) -1;
}


static void
ngx_http_aai_kafka_account(ngx_http_aai_kafka_worker_t *w)
{
    if (w->slot) {
        w->slot->outstanding = w->outstanding;
    }
}


/*
 * The share of every worker whose process is gone (killed, crashed) is
 * taken off the queue depth and counted as lost: its events were in its
 * memory.  A worker that exits normally has given its share back.
 */

static void
ngx_http_aai_kafka_slots_check(ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_pid_t                   pid;
    ngx_uint_t                  i;
    ngx_atomic_int_t            n;
    ngx_http_aai_kafka_slot_t  *slots;

    slots = kmcf->workers ? kmcf->workers->data : NULL;

    if (slots == NULL) {
        return;
    }

    for (i = 0; i < NGX_HTTP_AAI_KAFKA_SLOTS; i++) {
        pid = (ngx_pid_t) slots[i].pid;

        if (pid == 0 || pid == ngx_pid
            || kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH)
        {
            continue;
        }

        /* one worker takes the slot over, the others leave it */

        if (!ngx_atomic_cmp_set(&slots[i].pid, (ngx_atomic_uint_t) pid,
                                (ngx_atomic_uint_t) ngx_pid))
        {
            continue;
        }

        n = (ngx_atomic_int_t) slots[i].outstanding;
        slots[i].outstanding = 0;

        if (n) {
            ngx_aai_metrics_inc(kmcf->metrics, kmcf->lost, n);
            ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth, -n);

            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "aai_kafka: %A events lost: worker %P exited "
                          "without delivering them", n, pid);
        }

        ngx_memory_barrier();

        slots[i].pid = 0;
    }
}


static ngx_http_aai_kafka_slot_t *
ngx_http_aai_kafka_slot_claim(ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_uint_t                  i;
    ngx_http_aai_kafka_slot_t  *slots;

    slots = kmcf->workers ? kmcf->workers->data : NULL;

    if (slots == NULL) {
        return NULL;
    }

    for (i = 0; i < NGX_HTTP_AAI_KAFKA_SLOTS; i++) {
        if (slots[i].pid == 0
            && ngx_atomic_cmp_set(&slots[i].pid, 0,
                                  (ngx_atomic_uint_t) ngx_pid))
        {
            slots[i].outstanding = 0;
            return &slots[i];
        }
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "aai_kafka: no free slot for the worker's queue depth");

    return NULL;
}


static ngx_int_t
ngx_http_aai_kafka_init_workers(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t            *shpool;
    ngx_http_aai_kafka_slot_t  *slots;

    /* kept across reloads: the old workers still write to it */

    if (data) {
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    slots = ngx_slab_calloc(shpool, sizeof(ngx_http_aai_kafka_shared_t));
    if (slots == NULL) {
        return NGX_ERROR;
    }

    shpool->data = slots;
    shm_zone->data = slots;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_kafka_init_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_kafka_worker_t     *w;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    /* not in cache managers and loaders */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    kmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_aai_kafka_module);

    if (kmcf == NULL || !kmcf->enabled) {
        return NGX_OK;
    }

    w = &ngx_http_aai_kafka_worker;

    w->notify_fd = (ngx_socket_t) -1;
    w->thread = pthread_self();

    /* a worker that died in this slot (or any other) is accounted for */

    ngx_http_aai_kafka_slots_check(kmcf);
    w->slot = ngx_http_aai_kafka_slot_claim(kmcf);
    w->checked = ngx_time();

    /* a worker without a producer still serves requests */

    (void) ngx_http_aai_kafka_notify_init(cycle);
    (void) ngx_http_aai_kafka_producer_start(cycle, kmcf);

    if (kmcf->spool) {
        kmcf->spool->shm = kmcf->workers->data
                           ? &((ngx_http_aai_kafka_shared_t *)
                               kmcf->workers->data)->spool
                           : NULL;

        if (ngx_http_aai_kafka_spool_init_process(kmcf->spool, cycle)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "aai_kafka: the spool could not be set up, "
                          "events Kafka does not take will be dropped");
        }
    }

    w->dummy.fd = (ngx_socket_t) -1;

    w->timer.handler = ngx_http_aai_kafka_timer_handler;
    w->timer.data = &w->dummy;
    w->timer.log = cycle->log;
    w->timer.cancelable = 1;

    ngx_add_timer(&w->timer, NGX_HTTP_AAI_KAFKA_POLL);

    return NGX_OK;
}


static void
ngx_http_aai_kafka_exit_process(ngx_cycle_t *cycle)
{
    ngx_msec_t                    timeout;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (w->kmcf == NULL) {
        return;
    }

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }

    timeout = w->kmcf->flush_timeout;

    if (ngx_terminate && timeout > NGX_HTTP_AAI_KAFKA_TERMINATE) {
        timeout = NGX_HTTP_AAI_KAFKA_TERMINATE;
    }

    ngx_http_aai_kafka_producer_stop(timeout, 0);
    ngx_http_aai_kafka_notify_close();

    /* what the producer gave up is in the spool's memory: to the disk */
    ngx_http_aai_kafka_spool_exit_process();

    if (w->slot) {
        w->slot->outstanding = 0;
        ngx_memory_barrier();
        w->slot->pid = 0;
        w->slot = NULL;
    }

    ngx_http_aai_kafka_trees_free(w->kmcf);

    if (w->buf) {
        ngx_free(w->buf);
        w->buf = NULL;
        w->buf_size = 0;
    }

    if (w->hbuf) {
        ngx_free(w->hbuf);
        w->hbuf = NULL;
        w->hbuf_size = 0;
    }

    w->kmcf = NULL;
}


static void *
ngx_http_aai_kafka_create_main_conf(ngx_conf_t *cf)
{
    ngx_uint_t                       i;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    kmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_kafka_main_conf_t));
    if (kmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     kmcf->brokers = { 0, NULL };
     *     kmcf->properties = NULL;
     *     kmcf->formats = NULL;
     *     kmcf->default_format = NULL;
     *     kmcf->scratch = NULL;
     *     kmcf->metrics = NULL;
     *     kmcf->workers = NULL;
     *     kmcf->enabled = 0;
     *     kmcf->used = 0;
     *     kmcf->no_idempotence = 0;
     */

    if (ngx_array_init(&kmcf->topics, cf->pool, 4, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NULL;
    }

    kmcf->flush_timeout = NGX_CONF_UNSET_MSEC;

    kmcf->produced = NGX_ERROR;
    kmcf->delivered = NGX_ERROR;
    kmcf->failed = NGX_ERROR;
    kmcf->dropped = NGX_ERROR;
    kmcf->lost = NGX_ERROR;
    kmcf->depth = NGX_ERROR;
    kmcf->rtt = NGX_ERROR;
    kmcf->restarts = NGX_ERROR;

    for (i = 0; i < NGX_HTTP_AAI_KAFKA_REASONS; i++) {
        kmcf->reasons[i] = NGX_ERROR;
    }

    return kmcf;
}


static char *
ngx_http_aai_kafka_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_aai_kafka_main_conf_t *kmcf = conf;

    ngx_uint_t                      i, acks, idempotence;
    ngx_http_aai_kafka_property_t  *p;

    ngx_conf_init_msec_value(kmcf->flush_timeout, 3000);

    if (kmcf->used && !kmcf->enabled) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"aai_kafka_event\" requires "
                           "\"aai_kafka_brokers\"");
        return NGX_CONF_ERROR;
    }

    /*
     * The default producer is idempotent, which requires acks=all: a user
     * who asks for fewer acks gets a plain producer, unless enable.idempotence
     * is set explicitly (and then librdkafka decides).
     */

    acks = 0;
    idempotence = 0;

    p = kmcf->properties ? kmcf->properties->elts : NULL;

    for (i = 0; p && i < kmcf->properties->nelts; i++) {

        if (ngx_strcmp(p[i].name, "enable.idempotence") == 0) {
            idempotence = 1;
        }

        if (ngx_strcmp(p[i].name, "acks") == 0
            || ngx_strcmp(p[i].name, "request.required.acks") == 0)
        {
            acks = ngx_strcmp(p[i].value, "all") != 0
                   && ngx_strcmp(p[i].value, "-1") != 0;
        }
    }

    kmcf->no_idempotence = acks && !idempotence;

    return NGX_CONF_OK;
}


static void *
ngx_http_aai_kafka_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_aai_kafka_loc_conf_t  *klcf;

    klcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_kafka_loc_conf_t));
    if (klcf == NULL) {
        return NULL;
    }

    klcf->events = NGX_CONF_UNSET_PTR;

    return klcf;
}


static char *
ngx_http_aai_kafka_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_aai_kafka_loc_conf_t *prev = parent;
    ngx_http_aai_kafka_loc_conf_t *conf = child;

    /* like access_log: a level that has events replaces its parent's */

    ngx_conf_merge_ptr_value(conf->events, prev->events, NULL);

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_kafka_brokers(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_kafka_main_conf_t *kmcf = conf;

    u_char     *p;
    size_t      len;
    ngx_str_t  *value;
    ngx_uint_t  i;
    char        err[512];

    if (kmcf->brokers.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    len = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (value[i].len == 0 || value[i].data[0] == ','
            || value[i].data[value[i].len - 1] == ','
            || ngx_strstr(value[i].data, ",,") != NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid broker list \"%V\" in \"%V\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        len += value[i].len + 1;
    }

    /* several arguments make one comma separated list */

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    kmcf->brokers.data = p;

    for (i = 1; i < cf->args->nelts; i++) {
        if (i > 1) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, value[i].data, value[i].len);
    }

    *p = '\0';
    kmcf->brokers.len = p - kmcf->brokers.data;

    if (ngx_http_aai_kafka_scratch_set(cf, kmcf, "bootstrap.servers",
                                       (char *) kmcf->brokers.data,
                                       err, sizeof(err))
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid broker list \"%V\" in \"%V\": %s",
                           &kmcf->brokers, &cmd->name, err);
        return NGX_CONF_ERROR;
    }

    kmcf->enabled = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_kafka_flush_timeout(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *timeout = data;

    ngx_str_t  *value;

    if (*timeout <= NGX_HTTP_AAI_KAFKA_FLUSH_MAX) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must not be more than %M ms (24.8 days)",
                       &value[1], &value[0],
                       (ngx_msec_t) NGX_HTTP_AAI_KAFKA_FLUSH_MAX);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_aai_kafka_spool_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_aai_kafka_main_conf_t *kmcf = conf;

    char  *rv;

    rv = ngx_http_aai_kafka_spool_conf(cf, &kmcf->spool);

    if (rv == NGX_CONF_OK) {
        kmcf->spool->produce = ngx_http_aai_kafka_replay;
    }

    return rv;
}


static char *
ngx_http_aai_kafka_property(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_kafka_main_conf_t *kmcf = conf;

    char                           *env, err[512];
    size_t                          len;
    ngx_str_t                      *value, name;
    ngx_http_aai_kafka_property_t  *p;

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty property name in \"%V\"", &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_strcmp(value[1].data, "log.queue") == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "property \"%V\" in \"%V\" is managed by the "
                           "module", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (kmcf->properties == NULL) {
        kmcf->properties = ngx_array_create(cf->pool, 8,
                                     sizeof(ngx_http_aai_kafka_property_t));
        if (kmcf->properties == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    p = ngx_array_push(kmcf->properties);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    /* cf->args are null-terminated */

    p->name = (char *) value[1].data;
    p->value = (char *) value[2].data;

    if (ngx_strncmp(value[2].data, "env:", 4) == 0) {
        name.data = value[2].data + 4;
        name.len = value[2].len - 4;

        env = (name.len == 0) ? NULL : getenv((char *) name.data);

        if (env == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable \"%V\" for property "
                               "\"%V\" in \"%V\" is not set",
                               &name, &value[1], &cmd->name);
            return NGX_CONF_ERROR;
        }

        len = ngx_strlen(env);

        p->value = ngx_pnalloc(cf->pool, len + 1);
        if (p->value == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(p->value, env, len + 1);

        if (ngx_http_aai_kafka_scratch_set(cf, kmcf, p->name, p->value,
                                           err, sizeof(err))
            != NGX_OK)
        {
            /* the value may be a secret: never print it */

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value of environment variable "
                               "\"%V\" for property \"%V\" in \"%V\": %s",
                               &name, &value[1], &cmd->name, err);
            return NGX_CONF_ERROR;
        }

    } else if (ngx_http_aai_kafka_scratch_set(cf, kmcf, p->name, p->value,
                                              err, sizeof(err))
               != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid property \"%V\" \"%V\" in \"%V\": %s",
                           &value[1], &value[2], &cmd->name, err);
        return NGX_CONF_ERROR;
    }

    if (ngx_strcmp(p->name, "bootstrap.servers") == 0) {
        kmcf->enabled = 1;
    }

    return NGX_CONF_OK;
}


/* checks a property on a configuration object that is never used */

static ngx_int_t
ngx_http_aai_kafka_scratch_set(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, char *name, char *value,
    char *err, size_t size)
{
    ngx_pool_cleanup_t  *cln;

    if (kmcf->scratch == NULL) {
        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            ngx_cpystrn((u_char *) err, (u_char *) "out of memory", size);
            return NGX_ERROR;
        }

        kmcf->scratch = rd_kafka_conf_new();
        if (kmcf->scratch == NULL) {
            ngx_cpystrn((u_char *) err,
                        (u_char *) "rd_kafka_conf_new() failed", size);
            return NGX_ERROR;
        }

        cln->handler = ngx_http_aai_kafka_scratch_cleanup;
        cln->data = kmcf->scratch;
    }

    if (rd_kafka_conf_set(kmcf->scratch, name, value, err, size)
        != RD_KAFKA_CONF_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_aai_kafka_scratch_cleanup(void *data)
{
    rd_kafka_conf_destroy(data);
}


static char *
ngx_http_aai_kafka_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_kafka_main_conf_t *kmcf = conf;

    char                         *rv;
    ngx_str_t                    *value;
    ngx_uint_t                    i;
    ngx_http_aai_kafka_format_t  *fmt;

    value = cf->args->elts;

    if (kmcf->formats == NULL) {
        kmcf->formats = ngx_array_create(cf->pool, 4,
                                         sizeof(ngx_http_aai_kafka_format_t));
        if (kmcf->formats == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    fmt = kmcf->formats->elts;

    for (i = 0; i < kmcf->formats->nelts; i++) {
        if (fmt[i].name.len == value[1].len
            && ngx_strcmp(fmt[i].name.data, value[1].data) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate format \"%V\" in \"%V\"",
                               &value[1], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    fmt = ngx_array_push(kmcf->formats);
    if (fmt == NULL) {
        return NGX_CONF_ERROR;
    }

    fmt->name = value[1];
    fmt->size = 0;
    fmt->tree = NULL;

    fmt->fields = ngx_array_create(cf->pool, cf->args->nelts - 2,
                                   sizeof(ngx_http_aai_kafka_field_t));
    if (fmt->fields == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_aai_kafka_format_field(cf, fmt, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    return NGX_CONF_OK;
}


/* name=value[:number|:string|:bool] */

static char *
ngx_http_aai_kafka_format_field(ngx_conf_t *cf,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *arg)
{
    u_char                      *eq, *p;
    ngx_str_t                    name, value;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    eq = (u_char *) ngx_strchr(arg->data, '=');

    if (eq == NULL || eq == arg->data || eq == arg->data + arg->len - 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid field \"%V\" in \"aai_kafka_format\", "
                           "expected name=value", arg);
        return NGX_CONF_ERROR;
    }

    name.data = arg->data;
    name.len = eq - arg->data;

    for (p = name.data; p < eq; p++) {
        if (!ngx_http_aai_kafka_name_char(*p)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid field name \"%V\" in "
                               "\"aai_kafka_format\"", &name);
            return NGX_CONF_ERROR;
        }
    }

    f = fmt->fields->elts;

    for (i = 0; i < fmt->fields->nelts; i++) {
        if (f[i].name_len == name.len
            && ngx_strncmp(f[i].name, name.data, name.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate field \"%V\" in "
                               "\"aai_kafka_format\"", &name);
            return NGX_CONF_ERROR;
        }
    }

    f = ngx_array_push(fmt->fields);
    if (f == NULL) {
        return NGX_CONF_ERROR;
    }

    f->name = ngx_pnalloc(cf->pool, name.len + 1);
    if (f->name == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_cpystrn((u_char *) f->name, name.data, name.len + 1);
    f->name_len = name.len;

    /* "name":, */
    fmt->size += name.len + 4;

    value.data = eq + 1;
    value.len = arg->data + arg->len - value.data;

    f->type = NGX_HTTP_AAI_KAFKA_STRING;

#define ngx_http_aai_kafka_suffix(v, s)                                       \
    ((v)->len > sizeof(s) - 1                                                 \
     && ngx_strncmp((v)->data + (v)->len - (sizeof(s) - 1), s,               \
                    sizeof(s) - 1) == 0)

    if (ngx_http_aai_kafka_suffix(&value, ":number")) {
        f->type = NGX_HTTP_AAI_KAFKA_NUMBER;
        value.len -= sizeof(":number") - 1;

    } else if (ngx_http_aai_kafka_suffix(&value, ":bool")) {
        f->type = NGX_HTTP_AAI_KAFKA_BOOL;
        value.len -= sizeof(":bool") - 1;

    } else if (ngx_http_aai_kafka_suffix(&value, ":string")) {
        value.len -= sizeof(":string") - 1;
    }

#undef ngx_http_aai_kafka_suffix

    if (ngx_http_aai_kafka_compile_value(cf, f, &value) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value in field \"%V\" of "
                           "\"aai_kafka_format\"", arg);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a lone variable is read by index (and may be "not found") */

static ngx_int_t
ngx_http_aai_kafka_compile_value(ngx_conf_t *cf,
    ngx_http_aai_kafka_field_t *field, ngx_str_t *value)
{
    u_char     *p, *end;
    ngx_str_t   var;

    field->index = NGX_ERROR;
    field->value = NULL;

    if (value->len == 0) {
        return NGX_ERROR;
    }

    var.len = 0;

    if (value->len > 1 && value->data[0] == '$') {
        p = value->data + 1;
        end = value->data + value->len;

        if (*p == '{' && end[-1] == '}') {
            p++;
            end--;
        }

        var.data = p;

        while (p < end && (ngx_http_aai_kafka_isalnum(*p) || *p == '_')) {
            p++;
        }

        if (p == end && p > var.data) {
            var.len = end - var.data;
        }
    }

    if (var.len) {
        field->index = ngx_http_get_variable_index(cf, &var);
        return (field->index == NGX_ERROR) ? NGX_ERROR : NGX_OK;
    }

    field->value = ngx_http_aai_kafka_complex(cf, value);

    return (field->value == NULL) ? NGX_ERROR : NGX_OK;
}


static char *
ngx_http_aai_kafka_event(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_kafka_loc_conf_t *klcf = conf;

    ngx_int_t                        topic;
    ngx_str_t                       *value, s;
    ngx_uint_t                       i, j;
    ngx_http_aai_kafka_event_t      *ev;
    ngx_http_aai_kafka_format_t     *fmt;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {

        if (cf->args->nelts != 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" in \"%V\"",
                               &value[2], &cmd->name);
            return NGX_CONF_ERROR;
        }

        if (klcf->events != NGX_CONF_UNSET_PTR) {
            return "is duplicate";
        }

        klcf->events = NULL;

        return NGX_CONF_OK;
    }

    if (klcf->events == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V off\" and events at the same level",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_kafka_module);

    if (klcf->events == NGX_CONF_UNSET_PTR) {
        klcf->events = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_aai_kafka_event_t));
        if (klcf->events == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    ev = ngx_array_push(klcf->events);
    if (ev == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(ev, sizeof(ngx_http_aai_kafka_event_t));

    if (ngx_strlchr(value[1].data, value[1].data + value[1].len, '$')) {
        /* one of the topics= at run time */

        ev->topic_value = ngx_http_aai_kafka_complex(cf, &value[1]);
        if (ev->topic_value == NULL) {
            return NGX_CONF_ERROR;
        }

    } else {
        topic = ngx_http_aai_kafka_topic(cf, kmcf, &value[1]);
        if (topic == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        ev->topic = topic;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "format=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            fmt = kmcf->formats ? kmcf->formats->elts : NULL;

            for (j = 0; fmt && j < kmcf->formats->nelts; j++) {
                if (fmt[j].name.len == s.len
                    && ngx_strncmp(fmt[j].name.data, s.data, s.len) == 0)
                {
                    ev->format = &fmt[j];
                    break;
                }
            }

            if (ev->format == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "unknown format \"%V\" in \"%V\"",
                                   &s, &cmd->name);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ev->key = ngx_http_aai_kafka_complex(cf, &s);
            if (ev->key == NULL) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "topics=", 7) == 0) {
            if (ev->topics
                || ngx_http_aai_kafka_topics_conf(cf, kmcf, ev, &value[i])
                   != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "header=", 7) == 0) {
            if (ngx_http_aai_kafka_header_conf(cf, ev, &value[i]) != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "if=", 3) == 0) {
            s.data = value[i].data + 3;
            s.len = value[i].len - 3;

            ev->filter = ngx_http_aai_kafka_complex(cf, &s);
            if (ev->filter == NULL) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if ((ev->topic_value == NULL) != (ev->topics == NULL)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "a topic from variables requires topics=, "
                           "and topics= a topic from variables, in \"%V\"",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    kmcf->used = 1;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\"",
                       &value[i], &cmd->name);

    return NGX_CONF_ERROR;
}


/* topics=name[,name...]: the topics a topic from variables may name */

static ngx_int_t
ngx_http_aai_kafka_topics_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *arg)
{
    u_char      *p, *last, *comma;
    ngx_int_t    t;
    ngx_str_t    name;
    ngx_uint_t  *idx;

    p = arg->data + sizeof("topics=") - 1;
    last = arg->data + arg->len;

    ev->topics = ngx_array_create(cf->pool, 4, sizeof(ngx_uint_t));
    if (ev->topics == NULL) {
        return NGX_ERROR;
    }

    while (p < last) {
        comma = ngx_strlchr(p, last, ',');

        name.data = p;
        name.len = (comma ? comma : last) - p;

        /* a name of its own, null-terminated: the topic handle's */

        name.data = ngx_pnalloc(cf->pool, name.len + 1);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(name.data, p, name.len);
        name.data[name.len] = '\0';

        t = ngx_http_aai_kafka_topic(cf, kmcf, &name);
        if (t == NGX_ERROR) {
            return NGX_ERROR;
        }

        idx = ngx_array_push(ev->topics);
        if (idx == NULL) {
            return NGX_ERROR;
        }

        *idx = t;

        p = comma ? comma + 1 : last;
    }

    return ev->topics->nelts ? NGX_OK : NGX_ERROR;
}


/* header=name:expression */

static ngx_int_t
ngx_http_aai_kafka_header_conf(ngx_conf_t *cf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *arg)
{
    u_char                       *p, *colon, *last;
    ngx_str_t                     v;
    ngx_http_aai_kafka_header_t  *h;

    p = arg->data + sizeof("header=") - 1;
    last = arg->data + arg->len;

    colon = ngx_strlchr(p, last, ':');

    if (colon == NULL || colon == p || colon + 1 == last) {
        return NGX_ERROR;
    }

    if (ev->headers == NULL) {
        ev->headers = ngx_array_create(cf->pool, 2,
                                       sizeof(ngx_http_aai_kafka_header_t));
        if (ev->headers == NULL) {
            return NGX_ERROR;
        }
    }

    h = ngx_array_push(ev->headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    for (h->name.data = p; p < colon; p++) {
        if (!ngx_http_aai_kafka_name_char(*p)) {
            return NGX_ERROR;
        }
    }

    h->name.len = colon - h->name.data;

    /* null-terminated for librdkafka: the colon's place in a copy */

    p = ngx_pnalloc(cf->pool, h->name.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, h->name.data, h->name.len);
    p[h->name.len] = '\0';
    h->name.data = p;

    v.data = colon + 1;
    v.len = last - v.data;

    h->value = ngx_http_aai_kafka_complex(cf, &v);

    return (h->value == NULL) ? NGX_ERROR : NGX_OK;
}


/* topics are fixed names: each worker keeps one handle per name */

static ngx_int_t
ngx_http_aai_kafka_topic(ngx_conf_t *cf, ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_str_t *name)
{
    u_char      *p;
    ngx_str_t   *t;
    ngx_uint_t   i;

    if (name->len == 0 || name->len > 249
        || (name->len == 1 && name->data[0] == '.')
        || (name->len == 2 && ngx_strcmp(name->data, "..") == 0))
    {
        goto invalid;
    }

    for (p = name->data; p < name->data + name->len; p++) {
        if (!ngx_http_aai_kafka_name_char(*p)) {
            goto invalid;
        }
    }

    t = kmcf->topics.elts;

    for (i = 0; i < kmcf->topics.nelts; i++) {
        if (t[i].len == name->len
            && ngx_strncmp(t[i].data, name->data, name->len) == 0)
        {
            return i;
        }
    }

    t = ngx_array_push(&kmcf->topics);
    if (t == NULL) {
        return NGX_ERROR;
    }

    /* cf->args are null-terminated and live as long as the cycle */
    *t = *name;

    return kmcf->topics.nelts - 1;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid topic name \"%V\" in \"aai_kafka_event\"",
                       name);

    return NGX_ERROR;
}


static ngx_http_complex_value_t *
ngx_http_aai_kafka_complex(ngx_conf_t *cf, ngx_str_t *value)
{
    ngx_http_complex_value_t          *cv;
    ngx_http_compile_complex_value_t   ccv;

    if (value->len == 0) {
        return NULL;
    }

    cv = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (cv == NULL) {
        return NULL;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NULL;
    }

    return cv;
}


static ngx_int_t
ngx_http_aai_kafka_init(ngx_conf_t *cf)
{
    size_t                           size;
    ngx_http_handler_pt             *h;
    ngx_http_core_main_conf_t       *cmcf;
    ngx_http_aai_kafka_main_conf_t  *kmcf;

    static ngx_str_t  workers = ngx_string("aai_kafka_workers");

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_kafka_module);

    if (!kmcf->enabled) {
        return NGX_OK;
    }

    if (ngx_http_aai_kafka_default_format(cf, kmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_aai_kafka_init_metrics(cf, kmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the slab pool's own pages, plus the slots */

    size = sizeof(ngx_http_aai_kafka_shared_t);
    size = ngx_align(size, ngx_pagesize) + 8 * ngx_pagesize;

    kmcf->workers = ngx_shared_memory_add(cf, &workers, size,
                                          &ngx_http_aai_kafka_module);
    if (kmcf->workers == NULL) {
        return NGX_ERROR;
    }

    kmcf->workers->init = ngx_http_aai_kafka_init_workers;

    if (ngx_test_config && ngx_http_aai_kafka_check_conf(cf, kmcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_kafka_log_handler;

    return NGX_OK;
}


/*
 * The fields of an event without format=.  The suite's own variables are
 * used when their modules are loaded, and are null otherwise.
 */

static ngx_int_t
ngx_http_aai_kafka_default_format(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_str_t                            value;
    ngx_http_aai_kafka_field_t          *f;
    ngx_http_aai_kafka_format_t         *fmt;
    ngx_http_aai_kafka_default_field_t  *d;

    fmt = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_kafka_format_t));
    if (fmt == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&fmt->name, "default");

    fmt->fields = ngx_array_create(cf->pool, 12,
                                   sizeof(ngx_http_aai_kafka_field_t));
    if (fmt->fields == NULL) {
        return NGX_ERROR;
    }

    for (d = ngx_http_aai_kafka_fields; d->name; d++) {
        f = ngx_array_push(fmt->fields);
        if (f == NULL) {
            return NGX_ERROR;
        }

        f->name = d->name;
        f->name_len = ngx_strlen(d->name);
        f->type = d->type;
        f->index = NGX_ERROR;
        f->value = NULL;

        fmt->size += f->name_len + 4;

        if (d->optional
            && !ngx_http_aai_kafka_variable_exists(cf, d->value + 1))
        {
            continue;
        }

        value.data = (u_char *) d->value;
        value.len = ngx_strlen(d->value);

        if (ngx_http_aai_kafka_compile_value(cf, f, &value) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    kmcf->default_format = fmt;

    return NGX_OK;
}


/* before ngx_http_variables_init_vars(): looks without adding */

static ngx_uint_t
ngx_http_aai_kafka_variable_exists(ngx_conf_t *cf, char *name)
{
    size_t                      len;
    ngx_uint_t                  i;
    ngx_hash_key_t             *key;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (cmcf->variables_keys == NULL) {
        return 0;
    }

    len = ngx_strlen(name);
    key = cmcf->variables_keys->keys.elts;

    for (i = 0; i < cmcf->variables_keys->keys.nelts; i++) {
        if (key[i].key.len == len
            && ngx_strncmp(key[i].key.data, name, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_aai_kafka_init_metrics(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_uint_t          i;
    ngx_aai_metrics_t  *m;

    static ngx_str_t  produced = ngx_string("outcome=\"produced\"");
    static ngx_str_t  delivered = ngx_string("outcome=\"delivered\"");
    static ngx_str_t  failed = ngx_string("outcome=\"failed\"");
    static ngx_str_t  dropped = ngx_string("outcome=\"dropped\"");
    static ngx_str_t  lost = ngx_string("outcome=\"lost\"");
    static ngx_str_t  spooled = ngx_string("outcome=\"spooled\"");
    static ngx_str_t  replayed = ngx_string("outcome=\"replayed\"");

    /* in the order of NGX_HTTP_AAI_KAFKA_QUEUE_FULL ... _OTHER */
    static ngx_str_t  reasons[] = {
        ngx_string("reason=\"queue_full\""),
        ngx_string("reason=\"too_large\""),
        ngx_string("reason=\"no_producer\""),
        ngx_string("reason=\"format\""),
        ngx_string("reason=\"fatal\""),
        ngx_string("reason=\"other\""),
        ngx_string("reason=\"spool_full\""),
        ngx_string("reason=\"spool_error\""),
        ngx_string("reason=\"spool_corrupt\""),
        ngx_string("reason=\"unknown_topic\"")
    };

    /* microseconds */
    static const ngx_uint_t  rtt[] = {
        250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
        500000, 1000000, 2500000
    };

    m = ngx_aai_metrics_create(cf, "kafka", &ngx_http_aai_kafka_module);
    if (m == NULL) {
        return NGX_ERROR;
    }

#define ngx_http_aai_kafka_events(label)                                      \
    ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER, "aai_kafka_events_total", \
                        "Kafka events by outcome: produced (accepted into "  \
                        "the local queue) = delivered + failed + lost + "    \
                        "queued; dropped (never queued); lost (queued by a " \
                        "worker that died)", label)

    kmcf->produced = ngx_http_aai_kafka_events(&produced);
    kmcf->delivered = ngx_http_aai_kafka_events(&delivered);
    kmcf->failed = ngx_http_aai_kafka_events(&failed);
    kmcf->dropped = ngx_http_aai_kafka_events(&dropped);
    kmcf->lost = ngx_http_aai_kafka_events(&lost);

    if (kmcf->spool) {
        kmcf->spool->spooled = ngx_http_aai_kafka_events(&spooled);
        kmcf->spool->replayed = ngx_http_aai_kafka_events(&replayed);
    }

#undef ngx_http_aai_kafka_events

    for (i = 0; i < NGX_HTTP_AAI_KAFKA_REASONS; i++) {
        kmcf->reasons[i] = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                      "aai_kafka_dropped_total",
                                      "Kafka events dropped (never queued) "
                                      "by reason", &reasons[i]);

        if (kmcf->reasons[i] == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    kmcf->depth = ngx_aai_metrics_add(m, NGX_AAI_METRIC_GAUGE,
                                      "aai_kafka_queue_depth",
                                      "Kafka events produced and not yet "
                                      "delivered or failed, all workers",
                                      NULL);

    kmcf->rtt = ngx_aai_metrics_add_histogram(m,
                                      "aai_kafka_broker_rtt_seconds",
                                      "Average broker round-trip time per "
                                      "statistics interval, worker and "
                                      "broker", NULL,
                                      rtt, sizeof(rtt) / sizeof(rtt[0]),
                                      1000000);

    kmcf->restarts = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                      "aai_kafka_producer_restarts_total",
                                      "Producers rebuilt after a fatal "
                                      "error", NULL);

    if (kmcf->produced == NGX_ERROR || kmcf->delivered == NGX_ERROR
        || kmcf->failed == NGX_ERROR || kmcf->dropped == NGX_ERROR
        || kmcf->lost == NGX_ERROR || kmcf->depth == NGX_ERROR
        || kmcf->rtt == NGX_ERROR || kmcf->restarts == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    if (kmcf->spool
        && ngx_http_aai_kafka_spool_metrics(kmcf, m) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_aai_metrics_zone(cf, m) != NGX_OK) {
        return NGX_ERROR;
    }

    kmcf->metrics = m;

    if (kmcf->spool) {
        kmcf->spool->metrics = m;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_kafka_spool_metrics(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_aai_metrics_t *m)
{
    ngx_http_aai_kafka_spool_t  *spool;

    spool = kmcf->spool;

    spool->dropped = kmcf->dropped;
    spool->full = kmcf->reasons[NGX_HTTP_AAI_KAFKA_SPOOL_FULL];
    spool->error = kmcf->reasons[NGX_HTTP_AAI_KAFKA_SPOOL_ERROR];
    spool->corrupt = kmcf->reasons[NGX_HTTP_AAI_KAFKA_SPOOL_BAD];

    spool->bytes = ngx_aai_metrics_add(m, NGX_AAI_METRIC_GAUGE,
                                       "aai_kafka_spool_bytes",
                                       "Bytes of events in the spool, on "
                                       "disk or being written, all workers",
                                       NULL);

    spool->age = ngx_aai_metrics_add(m, NGX_AAI_METRIC_GAUGE,
                                     "aai_kafka_spool_oldest_seconds",
                                     "Age of the oldest spool file not yet "
                                     "replayed, 0 when the spool is empty",
                                     NULL);

    if (spool->spooled == NGX_ERROR || spool->replayed == NGX_ERROR
        || spool->bytes == NGX_ERROR || spool->age == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * "nginx -t" checks the properties as a whole (e.g. acks against
 * enable.idempotence, TLS files) by creating a producer without brokers,
 * which connects nowhere, and destroying it at once.  A running master never
 * creates one: librdkafka's threads do not survive fork().
 */

static ngx_int_t
ngx_http_aai_kafka_check_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf)
{
    char              err[512];
    rd_kafka_t       *rk;
    rd_kafka_conf_t  *conf;

    conf = ngx_http_aai_kafka_conf_build(kmcf, 0, err, sizeof(err));

    if (conf) {
        rd_kafka_conf_set_log_cb(conf, ngx_http_aai_kafka_quiet_log_cb);

        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));

        if (rk) {
            rd_kafka_destroy(rk);
            return NGX_OK;
        }

        rd_kafka_conf_destroy(conf);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid Kafka producer configuration in "
                       "\"aai_kafka_property\": %s", err);

    return NGX_ERROR;
}

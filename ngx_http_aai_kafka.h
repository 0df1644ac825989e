
/*
 * Copyright (C) aai-nginx authors
 *
 * The Kafka module's private header: its structures and what its files
 * share.
 *
 *   ngx_http_aai_kafka_module.c    the directives, the configuration and
 *                                  the log phase handler
 *   ngx_http_aai_kafka_event.c     an event: the JSON of a format, its
 *                                  topic and headers
 *   ngx_http_aai_kafka_producer.c  each worker's librdkafka producer:
 *                                  creation, poll timer, delivery reports,
 *                                  rebuilds, the bounded shutdown, and the
 *                                  way to and from the spool
 *   ngx_http_aai_kafka_metrics.c   what is counted: metrics, the reasons of
 *                                  drops, the workers' shares of the queue
 *                                  depth in shared memory
 *   ngx_http_aai_kafka_spool.c     the disk spool
 */


#ifndef _NGX_HTTP_AAI_KAFKA_H_INCLUDED_
#define _NGX_HTTP_AAI_KAFKA_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <librdkafka/rdkafka.h>
#include <cjson/cJSON.h>

#include "ngx_aai_metrics.h"
#include "ngx_http_aai_kafka_spool.h"


#define NGX_HTTP_AAI_KAFKA_STRING     0
#define NGX_HTTP_AAI_KAFKA_NUMBER     1
#define NGX_HTTP_AAI_KAFKA_BOOL       2

#define ngx_http_aai_kafka_isalnum(c)                                         \
    (((c) >= '0' && (c) <= '9') || (((c) | 0x20) >= 'a' && ((c) | 0x20) <= 'z'))

#define ngx_http_aai_kafka_name_char(c)                                       \
    (ngx_http_aai_kafka_isalnum(c) || (c) == '_' || (c) == '-' || (c) == '.')

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


extern ngx_module_t                  ngx_http_aai_kafka_module;

/* the worker's own, in ngx_http_aai_kafka_producer.c */
extern ngx_http_aai_kafka_worker_t   ngx_http_aai_kafka_worker;


/* ngx_http_aai_kafka_module.c */
ngx_http_complex_value_t *ngx_http_aai_kafka_complex(ngx_conf_t *cf,
    ngx_str_t *value);

/* ngx_http_aai_kafka_event.c */
ngx_int_t ngx_http_aai_kafka_pick(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_uint_t *t);
rd_kafka_headers_t *ngx_http_aai_kafka_headers(ngx_http_request_t *r,
    ngx_array_t *headers);
ngx_int_t ngx_http_aai_kafka_pack(rd_kafka_headers_t *hdrs,
    ngx_str_t *out);
rd_kafka_headers_t *ngx_http_aai_kafka_unpack(ngx_str_t *in);
ngx_int_t ngx_http_aai_kafka_json(ngx_http_request_t *r,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *out);
void ngx_http_aai_kafka_trees_free(
    ngx_http_aai_kafka_main_conf_t *kmcf);
char *ngx_http_aai_kafka_format_field(ngx_conf_t *cf,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *arg);
ngx_int_t ngx_http_aai_kafka_default_format(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);

/* ngx_http_aai_kafka_producer.c */
void ngx_http_aai_kafka_spool(ngx_http_aai_kafka_worker_t *w,
    ngx_http_aai_kafka_main_conf_t *kmcf, rd_kafka_resp_err_t err,
    const char *topic, ngx_str_t *key, ngx_str_t *payload,
    rd_kafka_headers_t *hdrs);
ngx_int_t ngx_http_aai_kafka_replay(ngx_str_t *topic,
    ngx_str_t *key, ngx_str_t *value, ngx_str_t *headers, void *opaque);
rd_kafka_resp_err_t ngx_http_aai_kafka_producev(
    ngx_http_aai_kafka_worker_t *w, ngx_uint_t topic, ngx_str_t *payload,
    ngx_str_t *key, rd_kafka_headers_t *hdrs);
void ngx_http_aai_kafka_report(ngx_http_aai_kafka_limit_t *limit,
    const char *what, ngx_uint_t force);
ngx_int_t ngx_http_aai_kafka_recover(void);
ngx_int_t ngx_http_aai_kafka_init_process(ngx_cycle_t *cycle);
void ngx_http_aai_kafka_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_aai_kafka_check_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);;

/* ngx_http_aai_kafka_metrics.c */
void ngx_http_aai_kafka_drop(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_uint_t reason);
ngx_uint_t ngx_http_aai_kafka_reason(rd_kafka_resp_err_t err);
void ngx_http_aai_kafka_account(ngx_http_aai_kafka_worker_t *w);
void ngx_http_aai_kafka_slots_check(
    ngx_http_aai_kafka_main_conf_t *kmcf);
ngx_http_aai_kafka_slot_t *ngx_http_aai_kafka_slot_claim(
    ngx_http_aai_kafka_main_conf_t *kmcf);
ngx_int_t ngx_http_aai_kafka_init_workers(ngx_shm_zone_t *shm_zone,
    void *data);
ngx_int_t ngx_http_aai_kafka_init_metrics(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf);


#endif /* _NGX_HTTP_AAI_KAFKA_H_INCLUDED_ */


/*
 * Copyright (C) aai-nginx authors
 *
 * The Kafka module's disk spool (private to ngx_http_aai_kafka_module):
 * events Kafka could not take or finally refused are appended to a file of
 * the worker by a thread of an nginx thread pool, and replayed in order,
 * at a bounded rate, once the brokers take events again.
 */


#ifndef _NGX_HTTP_AAI_KAFKA_SPOOL_H_INCLUDED_
#define _NGX_HTTP_AAI_KAFKA_SPOOL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_metrics.h"


/* what the workers share: in the zone aai_kafka_workers */

typedef struct {
    ngx_atomic_t                      bytes;      /* on disk and reserved */
    ngx_atomic_t                      oldest;     /* ms since the epoch */
    ngx_atomic_t                      counted;    /* the files found */
} ngx_http_aai_kafka_spool_shm_t;


/*
 * Hands a spooled event to Kafka: NGX_OK when taken, NGX_AGAIN when the
 * queue is full (tried again after delivery reports), NGX_ERROR otherwise.
 */

typedef ngx_int_t (*ngx_http_aai_kafka_spool_produce_pt)(ngx_str_t *topic,
    ngx_str_t *key, ngx_str_t *value, ngx_str_t *headers, void *opaque);


typedef struct {
    ngx_str_t                         path;       /* null-terminated */
    off_t                             max_size;
    ngx_uint_t                        rate;       /* events/s per worker */
    ngx_thread_pool_t                *pool;

    ngx_http_aai_kafka_spool_shm_t   *shm;
    ngx_http_aai_kafka_spool_produce_pt  produce;

    ngx_aai_metrics_t                *metrics;
    ngx_int_t                         spooled;
    ngx_int_t                         replayed;
    ngx_int_t                         dropped;    /* events_total */
    ngx_int_t                         full;       /* dropped_total ... */
    ngx_int_t                         error;
    ngx_int_t                         corrupt;
    ngx_int_t                         bytes;      /* gauges */
    ngx_int_t                         age;
} ngx_http_aai_kafka_spool_t;


char *ngx_http_aai_kafka_spool_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_spool_t **spool);

ngx_int_t ngx_http_aai_kafka_spool_init_process(
    ngx_http_aai_kafka_spool_t *spool, ngx_cycle_t *cycle);
void ngx_http_aai_kafka_spool_exit_process(void);

/* NGX_OK: spooled; NGX_DECLINED: dropped and counted */
ngx_int_t ngx_http_aai_kafka_spool_append(ngx_str_t *topic, ngx_str_t *key,
    ngx_str_t *value, ngx_str_t *headers);

/* every 100 ms; "ready": the producer takes events and none failed lately */
void ngx_http_aai_kafka_spool_tick(ngx_uint_t ready);

/* the delivery report of an event replayed with this opaque */
void ngx_http_aai_kafka_spool_report(void *opaque, ngx_uint_t delivered);

/* the producer is rebuilt: the replayed events in flight are given up */
void ngx_http_aai_kafka_spool_abort(void);


#endif /* _NGX_HTTP_AAI_KAFKA_SPOOL_H_INCLUDED_ */


/*
 * Copyright (C) aai-nginx authors
 *
 * What the Kafka module counts: its metrics, the reasons of the events
 * dropped, and each worker's share of the queue depth in shared memory.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_kafka.h"


static ngx_int_t ngx_http_aai_kafka_spool_metrics(
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_aai_metrics_t *m);


void
ngx_http_aai_kafka_drop(ngx_http_aai_kafka_main_conf_t *kmcf,
    ngx_uint_t reason)
{
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->dropped, 1);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->reasons[reason], 1);
}


ngx_uint_t
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


void
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

void
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


ngx_http_aai_kafka_slot_t *
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


ngx_int_t
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


ngx_int_t
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

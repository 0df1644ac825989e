
/*
 * Copyright (C) aai-nginx authors
 *
 * The Kafka module's producer, one per worker: created in init_process,
 * served from nginx's event loop (a wake-up socket and a timer), its
 * delivery reports and errors, its rebuild after a fatal error, its bounded
 * shutdown, and the way of the events it cannot take to the spool and back.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_kafka.h"


/* how often the timer serves the producer besides its wake-up socket */
#define NGX_HTTP_AAI_KAFKA_POLL       100

/* librdkafka log lines forwarded per second and worker */
#define NGX_HTTP_AAI_KAFKA_LOG_BURST  10

/* the shortest time between two rebuilds of the producer */
#define NGX_HTTP_AAI_KAFKA_RESTART    1000

/* a bound on the time a fast shutdown (SIGTERM) flushes: the master kills */
#define NGX_HTTP_AAI_KAFKA_TERMINATE  1000

/* a delivery failure newer than this stops the replay of the spool */
#define NGX_HTTP_AAI_KAFKA_CALM       1000

/* producers a worker may have being destroyed at a time */
#define NGX_HTTP_AAI_KAFKA_DESTROYING  4


static void ngx_http_aai_kafka_notify_handler(ngx_event_t *rev);
static void ngx_http_aai_kafka_timer_handler(ngx_event_t *ev);
static void ngx_http_aai_kafka_poll(void);
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
static void ngx_http_aai_kafka_producer_restart(void);
static ngx_int_t ngx_http_aai_kafka_notify_init(ngx_cycle_t *cycle);
static void ngx_http_aai_kafka_notify_close(void);


ngx_http_aai_kafka_worker_t  ngx_http_aai_kafka_worker;

/* producers being destroyed by threads of their own */
static ngx_atomic_t  ngx_http_aai_kafka_destroying;


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


/*
 * An event Kafka did not take or finally refused goes to the spool, unless
 * it can never be taken (too large); the spool counts what it drops.
 */

void
ngx_http_aai_kafka_spool(ngx_http_aai_kafka_worker_t *w,
    ngx_http_aai_kafka_main_conf_t *kmcf, rd_kafka_resp_err_t err,
    const char *topic, ngx_str_t *key, ngx_str_t *payload,
    rd_kafka_headers_t *hdrs)
{
    ngx_str_t  name, packed;

    if (topic == NULL || err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE
        || err == RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE)
    {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: event dropped, not spooled: %s",
                       rd_kafka_err2str(err));

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
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: event for \"%V\" dropped: the spool is "
                       "full", &name);

        w->drops.count++;
        w->drops.reason = "the spool is full";

        ngx_http_aai_kafka_report(&w->drops, "dropped", 0);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_kafka: event for \"%V\" spooled: %s", &name,
                   rd_kafka_err2str(err));
}


/* an event of the spool, with its replay as opaque */

ngx_int_t
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
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: spooled event waits: the queue is full");
        return NGX_AGAIN;
    }

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: spooled event not replayed: %s",
                       rd_kafka_err2str(err));
        return NGX_ERROR;
    }

    w->outstanding++;
    ngx_http_aai_kafka_account(w);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->produced, 1);
    ngx_aai_metrics_inc(kmcf->metrics, kmcf->depth, 1);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_kafka: spooled event replayed, queued for \"%s\", "
                   "%ui in flight", name, w->outstanding);

    return NGX_OK;
}


/* copies the event: nothing of the request is referenced after the call */

rd_kafka_resp_err_t
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

void
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

        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: event%s delivered to \"%s\" [%D] "
                       "at offset %L", msg->_private ? " (replayed)" : "",
                       rd_kafka_topic_name(msg->rkt), msg->partition,
                       msg->offset);
        return;
    }

    ngx_aai_metrics_inc(kmcf->metrics, kmcf->failed, 1);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_kafka: event%s for \"%s\" not delivered: %s",
                   msg->_private ? " (replayed)" : "",
                   rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));

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

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, cycle->log, 0,
                   "aai_kafka: producer created, %ui topics", w->ntopics);

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
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_kafka: flushing %ui events for at most %M ms",
                       w->outstanding, timeout);

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

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_kafka: producer stopped, %ui events given up", left);

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

ngx_int_t
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


ngx_int_t
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


void
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


/*
 * "nginx -t" checks the properties as a whole (e.g. acks against
 * enable.idempotence, TLS files) by creating a producer without brokers,
 * which connects nowhere, and destroying it at once.  A running master never
 * creates one: librdkafka's threads do not survive fork().
 */

ngx_int_t
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

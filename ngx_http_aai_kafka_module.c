
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

#include "ngx_aai_conf.h"
#include "ngx_http_aai_kafka.h"


/* rd_kafka_flush() takes an int: at most 24.8 days */
#define NGX_HTTP_AAI_KAFKA_FLUSH_MAX  0x7fffffff


static ngx_int_t ngx_http_aai_kafka_log_handler(ngx_http_request_t *r);
static void ngx_http_aai_kafka_produce(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *payload);
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
static char *ngx_http_aai_kafka_event(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_aai_kafka_topics_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_str_t *arg);
static ngx_int_t ngx_http_aai_kafka_header_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_event_t *ev, ngx_str_t *arg);
static ngx_int_t ngx_http_aai_kafka_topic(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_str_t *name);
static ngx_int_t ngx_http_aai_kafka_init(ngx_conf_t *cf);


static ngx_aai_conf_post_t  ngx_http_aai_kafka_flush_timeout_p = {
    ngx_http_aai_kafka_flush_timeout, NULL, 0, 0
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
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                               "aai_kafka: event %ui skipped by if=", i);
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

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai_kafka: event formatted, format \"%V\", "
                           "%uz bytes", &fmt->name, payload.len);

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

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai_kafka: event dropped: its topic is not among "
                       "topics=");

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

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai_kafka: event queued for \"%V\", %ui in flight",
                       &((ngx_str_t *) kmcf->topics.elts)[t],
                       w->outstanding);
        return;
    }

dropped:

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_kafka: event not queued: %s", rd_kafka_err2str(err));

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


ngx_http_complex_value_t *
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

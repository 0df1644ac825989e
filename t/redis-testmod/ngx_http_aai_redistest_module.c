
/*
 * Copyright (C) aai-nginx authors
 *
 * TEST ONLY (ngx_http_aai_redistest_module).  Drives the shared Redis
 * client (ngx_aai_redis*.c) from HTTP requests:
 *
 *     aai_redis_test_server ADDRESS [params];     http{}, as aai_*_redis
 *     aai_redis_test_subscribe NAME [pattern];    http{}
 *     location /redis { aai_redis_test; }
 *     location /messages { aai_redis_test_messages; }
 *
 * GET /redis?cmd=SET&a=k&a=v[&n=N] sends the command (N times, pipelined)
 * and answers with one line per reply: a string as is, +status, -error,
 * :integer, (nil), or *N followed by the elements on their own lines.  A
 * request body is appended as the last argument.  A command the client
 * refused answers 503 "unavailable"; a failed one 502 "error: <why>".
 * X-Redis-Latency-Us has the last latency, X-Redis-Available the state
 * when the request arrived.  /messages lists "channel message" lines
 * received by this worker's subscriptions.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_redis.h"


#define NGX_HTTP_AAI_REDIS_TEST_MAX_N      10000
#define NGX_HTTP_AAI_REDIS_TEST_MAX_MSGS   65536


typedef struct {
    ngx_aai_redis_conf_t        redis;
    ngx_aai_redis_t            *rs;
    ngx_array_t                *subs;      /* ngx_http_aai_redis_test_sub_t */
} ngx_http_aai_redis_test_main_conf_t;


typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  pattern;
} ngx_http_aai_redis_test_sub_t;


typedef struct ngx_http_aai_redis_test_ctx_s  ngx_http_aai_redis_test_ctx_t;

typedef struct {
    ngx_http_aai_redis_test_ctx_t  *ctx;
    ngx_aai_redis_cmd_t            *cmd;
    ngx_str_t                       out;
    ngx_uint_t                      status;
} ngx_http_aai_redis_test_slot_t;


struct ngx_http_aai_redis_test_ctx_s {
    ngx_http_request_t             *request;
    ngx_http_aai_redis_test_slot_t *slots;
    ngx_uint_t                      n;
    ngx_uint_t                      pending;
    ngx_uint_t                      latency_us;
    ngx_uint_t                      available;
};


static ngx_int_t ngx_http_aai_redis_test_handler(ngx_http_request_t *r);
static void ngx_http_aai_redis_test_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_redis_test_run(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_redis_test_args(ngx_http_request_t *r,
    ngx_array_t *argv, ngx_uint_t *n);
static ngx_int_t ngx_http_aai_redis_test_body(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_aai_redis_test_reply(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_redis_test_cleanup(void *data);
static ngx_int_t ngx_http_aai_redis_test_respond(
    ngx_http_aai_redis_test_ctx_t *ctx);
static size_t ngx_http_aai_redis_test_size(redisReply *reply);
static u_char *ngx_http_aai_redis_test_render(u_char *p, redisReply *reply);
static ngx_int_t ngx_http_aai_redis_test_messages_handler(
    ngx_http_request_t *r);
static void ngx_http_aai_redis_test_message(ngx_str_t *channel,
    ngx_str_t *message, void *data);

static void *ngx_http_aai_redis_test_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_redis_test_subscribe(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_redis_test(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_redis_test_messages(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_aai_redis_test_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_redis_test_exit_process(ngx_cycle_t *cycle);


/* messages received by this worker's subscriptions */
static u_char  *ngx_http_aai_redis_test_msgs;
static size_t   ngx_http_aai_redis_test_msgs_len;


static ngx_aai_redis_post_t  ngx_http_aai_redis_test_server_post = {
    NULL, offsetof(ngx_http_aai_redis_test_main_conf_t, rs)
};


static ngx_command_t  ngx_http_aai_redis_test_commands[] = {

    { ngx_string("aai_redis_test_server"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_aai_redis_conf_set_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_redis_test_main_conf_t, redis),
      &ngx_http_aai_redis_test_server_post },

    { ngx_string("aai_redis_test_subscribe"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_aai_redis_test_subscribe,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_redis_test"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_aai_redis_test,
      0,
      0,
      NULL },

    { ngx_string("aai_redis_test_messages"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_aai_redis_test_messages,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_redistest_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_aai_redis_test_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_aai_redistest_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_redistest_module_ctx,    /* module context */
    ngx_http_aai_redis_test_commands,      /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_aai_redis_test_init_process,  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_aai_redis_test_exit_process,  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_aai_redis_test_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method & NGX_HTTP_POST) {
        rc = ngx_http_read_client_request_body(r,
                                         ngx_http_aai_redis_test_body_handler);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_aai_redis_test_run(r);
}


static void
ngx_http_aai_redis_test_body_handler(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_aai_redis_test_run(r));
}


static ngx_int_t
ngx_http_aai_redis_test_run(ngx_http_request_t *r)
{
    ngx_str_t                            *arg;
    ngx_uint_t                            i, n;
    ngx_array_t                           argv;
    ngx_pool_cleanup_t                   *cln;
    ngx_http_aai_redis_test_ctx_t        *ctx;
    ngx_http_aai_redis_test_slot_t       *slot;
    ngx_http_aai_redis_test_main_conf_t  *tmcf;

    tmcf = ngx_http_get_module_main_conf(r, ngx_http_aai_redistest_module);

    if (tmcf->rs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_array_init(&argv, r->pool, 8, sizeof(ngx_str_t)) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_aai_redis_test_args(r, &argv, &n) != NGX_OK) {
        return NGX_HTTP_BAD_REQUEST;
    }

    if (r->request_body && r->request_body->bufs) {
        arg = ngx_array_push(&argv);
        if (arg == NULL
            || ngx_http_aai_redis_test_body(r, arg) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_redis_test_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->slots = ngx_pcalloc(r->pool,
                             n * sizeof(ngx_http_aai_redis_test_slot_t));
    if (ctx->slots == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_aai_redis_test_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ctx->n = n;
    ctx->available = ngx_aai_redis_available(tmcf->rs);

    for (i = 0; i < n; i++) {
        slot = &ctx->slots[i];
        slot->ctx = ctx;

        slot->cmd = ngx_aai_redis_send(tmcf->rs, r->connection->log,
                                       argv.nelts, argv.elts,
                                       ngx_http_aai_redis_test_reply, slot);
        if (slot->cmd == NULL) {
            ngx_str_set(&slot->out, "unavailable\n");
            slot->status = NGX_HTTP_SERVICE_UNAVAILABLE;
            continue;
        }

        ctx->pending++;
    }

    if (ctx->pending == 0) {
        return ngx_http_aai_redis_test_respond(ctx);
    }

    r->main->count++;

    return NGX_DONE;
}


/* cmd=NAME, a=ARG (repeated, in order), n=COUNT; url-encoded */

static ngx_int_t
ngx_http_aai_redis_test_args(ngx_http_request_t *r, ngx_array_t *argv,
    ngx_uint_t *n)
{
    u_char     *p, *last, *amp, *eq, *dst, *src;
    ngx_int_t   count;
    ngx_str_t  *arg, name, cmd, value;

    ngx_str_null(&cmd);
    count = 1;

    p = r->args.data;
    last = p + r->args.len;

    /* reserve argv[0] for the command name */

    if (ngx_array_push(argv) == NULL) {
        return NGX_ERROR;
    }

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(p, amp, '=');
        if (eq == NULL) {
            eq = amp;
        }

        name.data = p;
        name.len = eq - p;

        value.len = (eq < amp) ? (size_t) (amp - eq - 1) : 0;
        value.data = ngx_pnalloc(r->pool, value.len + 1);
        if (value.data == NULL) {
            return NGX_ERROR;
        }

        dst = value.data;
        src = eq + 1;

        if (value.len) {
            ngx_unescape_uri(&dst, &src, value.len, 0);
        }

        value.len = dst - value.data;

        if (name.len == 3 && ngx_strncmp(name.data, "cmd", 3) == 0) {
            cmd = value;

        } else if (name.len == 1 && name.data[0] == 'a') {
            arg = ngx_array_push(argv);
            if (arg == NULL) {
                return NGX_ERROR;
            }

            *arg = value;

        } else if (name.len == 1 && name.data[0] == 'n') {
            count = ngx_atoi(value.data, value.len);
            if (count < 1 || count > NGX_HTTP_AAI_REDIS_TEST_MAX_N) {
                return NGX_ERROR;
            }
        }

        p = amp + 1;
    }

    if (cmd.len == 0) {
        return NGX_ERROR;
    }

    arg = argv->elts;
    arg[0] = cmd;
    *n = count;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_redis_test_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ngx_chain_t  *cl;

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "aai redis test: body in a file, raise "
                          "client_body_buffer_size");
            return NGX_ERROR;
        }

        len += cl->buf->last - cl->buf->pos;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL && len) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = len;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    return NGX_OK;
}


static void
ngx_http_aai_redis_test_reply(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_redis_test_slot_t *slot = data;

    u_char                         *p;
    size_t                          size;
    ngx_int_t                       rc;
    ngx_connection_t               *c;
    ngx_http_request_t             *r;
    ngx_http_aai_redis_test_ctx_t  *ctx;

    ctx = slot->ctx;
    r = ctx->request;
    c = r->connection;

    slot->cmd = NULL;
    ctx->latency_us = res->latency_us;

    if (res->reply == NULL) {
        size = sizeof("error: \n") - 1 + ngx_strlen(res->error);
        slot->status = NGX_HTTP_BAD_GATEWAY;

    } else {
        size = ngx_http_aai_redis_test_size(res->reply) + 1;
        slot->status = NGX_HTTP_OK;
    }

    p = ngx_pnalloc(r->pool, size);

    if (p != NULL) {
        slot->out.data = p;

        if (res->reply == NULL) {
            p = ngx_sprintf(p, "error: %s\n", res->error);

        } else {
            p = ngx_http_aai_redis_test_render(p, res->reply);
            *p++ = LF;
        }

        slot->out.len = p - slot->out.data;

    } else {
        slot->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (--ctx->pending) {
        return;
    }

    rc = ngx_http_aai_redis_test_respond(ctx);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_redis_test_cleanup(void *data)
{
    ngx_http_aai_redis_test_ctx_t *ctx = data;

    ngx_uint_t  i;

    for (i = 0; i < ctx->n; i++) {
        if (ctx->slots[i].cmd) {
            ngx_aai_redis_cancel(ctx->slots[i].cmd);
            ctx->slots[i].cmd = NULL;
        }
    }
}


static ngx_int_t
ngx_http_aai_redis_test_respond(ngx_http_aai_redis_test_ctx_t *ctx)
{
    u_char              *p;
    size_t               len;
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_uint_t           i;
    ngx_chain_t          out;
    ngx_table_elt_t     *h;
    ngx_http_request_t  *r;

    r = ctx->request;

    len = 0;
    r->headers_out.status = NGX_HTTP_OK;

    for (i = 0; i < ctx->n; i++) {
        len += ctx->slots[i].out.len;

        if (ctx->slots[i].status != NGX_HTTP_OK) {
            r->headers_out.status = ctx->slots[i].status;
        }
    }

    b = ngx_create_temp_buf(r->pool, len ? len : 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ctx->n; i++) {
        b->last = ngx_cpymem(b->last, ctx->slots[i].out.data,
                             ctx->slots[i].out.len);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN * 2 + 2);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Redis-Latency-Us");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%ui", ctx->latency_us) - p;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Redis-Available");
    h->value.data = p + NGX_INT_T_LEN + 1;
    h->value.len = ngx_sprintf(h->value.data, "%ui", ctx->available)
                   - h->value.data;

    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (len == 0) {
        b->pos = b->last;
        b->temporary = 0;
        b->sync = 1;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static size_t
ngx_http_aai_redis_test_size(redisReply *reply)
{
    size_t      size;
    ngx_uint_t  i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
        return reply->len;

    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return 1 + reply->len;

    case REDIS_REPLY_INTEGER:
        return 1 + NGX_INT64_LEN;

    case REDIS_REPLY_ARRAY:
        size = 1 + NGX_SIZE_T_LEN;

        for (i = 0; i < reply->elements; i++) {
            size += 1 + ngx_http_aai_redis_test_size(reply->element[i]);
        }

        return size;

    default: /* REDIS_REPLY_NIL */
        return sizeof("(nil)") - 1;
    }
}


static u_char *
ngx_http_aai_redis_test_render(u_char *p, redisReply *reply)
{
    ngx_uint_t  i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
        return ngx_cpymem(p, reply->str, reply->len);

    case REDIS_REPLY_STATUS:
        *p++ = '+';
        return ngx_cpymem(p, reply->str, reply->len);

    case REDIS_REPLY_ERROR:
        *p++ = '-';
        return ngx_cpymem(p, reply->str, reply->len);

    case REDIS_REPLY_INTEGER:
        return ngx_sprintf(p, ":%L", (int64_t) reply->integer);

    case REDIS_REPLY_ARRAY:
        p = ngx_sprintf(p, "*%uz", reply->elements);

        for (i = 0; i < reply->elements; i++) {
            *p++ = LF;
            p = ngx_http_aai_redis_test_render(p, reply->element[i]);
        }

        return p;

    default:
        return ngx_cpymem(p, "(nil)", sizeof("(nil)") - 1);
    }
}


static ngx_int_t
ngx_http_aai_redis_test_messages_handler(ngx_http_request_t *r)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = ngx_http_aai_redis_test_msgs_len;
    ngx_str_set(&r->headers_out.content_type, "text/plain");

    if (ngx_http_aai_redis_test_msgs_len == 0) {
        r->header_only = 1;
        return ngx_http_send_header(r);
    }

    b = ngx_create_temp_buf(r->pool, ngx_http_aai_redis_test_msgs_len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, ngx_http_aai_redis_test_msgs,
                         ngx_http_aai_redis_test_msgs_len);
    b->last_buf = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_aai_redis_test_message(ngx_str_t *channel, ngx_str_t *message,
    void *data)
{
    size_t   len;
    u_char  *p;

    len = channel->len + 1 + message->len + 1;

    if (ngx_http_aai_redis_test_msgs == NULL) {
        ngx_http_aai_redis_test_msgs = ngx_alloc(
                                          NGX_HTTP_AAI_REDIS_TEST_MAX_MSGS,
                                          ngx_cycle->log);
        if (ngx_http_aai_redis_test_msgs == NULL) {
            return;
        }
    }

    if (ngx_http_aai_redis_test_msgs_len + len
        > NGX_HTTP_AAI_REDIS_TEST_MAX_MSGS)
    {
        return;
    }

    p = ngx_http_aai_redis_test_msgs + ngx_http_aai_redis_test_msgs_len;
    p = ngx_cpymem(p, channel->data, channel->len);
    *p++ = ' ';
    p = ngx_cpymem(p, message->data, message->len);
    *p++ = LF;

    ngx_http_aai_redis_test_msgs_len += len;
}


static void *
ngx_http_aai_redis_test_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_aai_redis_test_main_conf_t  *tmcf;

    tmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_redis_test_main_conf_t));
    if (tmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     tmcf->redis.addrs = NULL;
     *     tmcf->rs = NULL;
     *     tmcf->subs = NULL;
     */

    return tmcf;
}


static char *
ngx_http_aai_redis_test_subscribe(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_aai_redis_test_main_conf_t *tmcf = conf;

    ngx_str_t                      *value;
    ngx_http_aai_redis_test_sub_t  *sub;

    value = cf->args->elts;

    if (tmcf->subs == NULL) {
        tmcf->subs = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_aai_redis_test_sub_t));
        if (tmcf->subs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    sub = ngx_array_push(tmcf->subs);
    if (sub == NULL) {
        return NGX_CONF_ERROR;
    }

    sub->name = value[1];
    sub->pattern = 0;

    if (cf->args->nelts == 3) {
        if (ngx_strcmp(value[2].data, "pattern") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        sub->pattern = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_redis_test(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_aai_redis_test_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_redis_test_messages(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_aai_redis_test_messages_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_aai_redis_test_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                            i;
    ngx_http_aai_redis_test_sub_t        *sub;
    ngx_http_aai_redis_test_main_conf_t  *tmcf;

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                            ngx_http_aai_redistest_module);

    if (tmcf == NULL || tmcf->rs == NULL) {
        return NGX_OK;
    }

    if (ngx_aai_redis_init_worker(tmcf->rs, cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (tmcf->subs == NULL) {
        return NGX_OK;
    }

    sub = tmcf->subs->elts;

    for (i = 0; i < tmcf->subs->nelts; i++) {
        if (ngx_aai_redis_subscribe(tmcf->rs, &sub[i].name, sub[i].pattern,
                                    ngx_http_aai_redis_test_message, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_aai_redis_test_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_redis_test_main_conf_t  *tmcf;

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                            ngx_http_aai_redistest_module);

    if (tmcf != NULL && tmcf->rs != NULL) {
        ngx_aai_redis_exit_worker(tmcf->rs);
    }

    if (ngx_http_aai_redis_test_msgs) {
        ngx_free(ngx_http_aai_redis_test_msgs);
        ngx_http_aai_redis_test_msgs = NULL;
        ngx_http_aai_redis_test_msgs_len = 0;
    }
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_lookup: a request of a cached location, from the
 * lookup in Redis to a hit sent or the request passed on to the upstream.
 *
 * The precontent handler (ngx_http_aai_cache_module.c) sends the GET (an
 * MGET when the resource is known to vary); ngx_http_aai_cache_reply()
 * takes every reply of the request's commands: the entry, the variant, the
 * lock (ngx_http_aai_cache_lock.c).  A fresh entry is served from the
 * request's memory with its Age and Cache-Status; anything else forwards
 * the request to the content handler, whose response the store filters
 * (ngx_http_aai_cache_store.c) may keep.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


static void ngx_http_aai_cache_on_lookup(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
static void ngx_http_aai_cache_on_vary(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *vr,
    redisReply *variant);
static void ngx_http_aai_cache_on_entry(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply);
static void ngx_http_aai_cache_on_absent(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static ngx_int_t ngx_http_aai_cache_entry_from(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply,
    ngx_aai_cache_entry_t **ep);
static ngx_uint_t ngx_http_aai_cache_shareable(ngx_aai_cache_entry_t *e);
static void ngx_http_aai_cache_resume(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static ngx_int_t ngx_http_aai_cache_send(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e);
static void ngx_http_aai_cache_log_bad(ngx_log_t *log, const char *what,
    ngx_str_t *key);


static const char  *ngx_http_aai_cache_fwd_names[] = {
    "hit", "miss", "bypass", "stale", "stale", "stale", "hit", "stale"
};


ngx_int_t
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
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache lookup \"%V\" not sent", &ctx->key);
        return NGX_DECLINED;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache lookup \"%V\" sent, variant \"%V\"",
                   &ctx->key, &ctx->vkey);

    ctx->state = NGX_HTTP_AAI_CACHE_ST_LOOKUP;

    return NGX_AGAIN;
}


void
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

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache varies on \"%V\": lookup \"%V\" sent",
                   &ctx->vary, &ctx->vkey);

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

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache entry expired %uL ms ago",
                   ngx_http_aai_cache_now() - e->fresh_until);

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

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache no entry%s",
                   ctx->vary_miss ? " for this variant" : "");

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

ngx_int_t
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

ngx_uint_t
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

const char *
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


void
ngx_http_aai_cache_forward(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t status)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache %V: forwarded%s%s",
                   &ngx_http_aai_cache_status_names[status],
                   ctx->detail ? ", " : "", ctx->detail ? ctx->detail : "");

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

void
ngx_http_aai_cache_unconditional(ngx_http_request_t *r)
{
    ngx_list_t  headers;

    if (r->headers_in.if_modified_since == NULL
        && r->headers_in.if_none_match == NULL)
    {
        return;
    }

    if (ngx_http_aai_cache_strip_conditions(r, &headers) != NGX_OK) {
        return;
    }

    r->headers_in.headers = headers;
    r->disable_not_modified = 1;
}


/*
 * The request's headers without If-Modified-Since and If-None-Match, in a
 * new list that the caller puts in place of the request's (for the
 * upstream, and its own conditions added by a revalidation).
 */

ngx_int_t
ngx_http_aai_cache_strip_conditions(ngx_http_request_t *r,
    ngx_list_t *headers)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *nh;

    if (ngx_list_init(headers, r->pool, 20, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
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

        nh = ngx_list_push(headers);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        *nh = h[i];
    }

    return NGX_OK;
}


void
ngx_http_aai_cache_serve(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e,
    ngx_uint_t status)
{
    ngx_int_t  rc;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache %V: served from the cache, status %ui%s%s",
                   &ngx_http_aai_cache_status_names[status], e->status,
                   ctx->detail ? ", " : "", ctx->detail ? ctx->detail : "");

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


ngx_int_t
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


/* RFC 9211 */

ngx_int_t
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


uint64_t
ngx_http_aai_cache_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_store: the header and body filters, and what they do
 * with a response that was not served from the cache (a successful unsafe
 * request invalidates, ngx_http_aai_cache_purge.c; an upstream error may be
 * replaced by a stale entry, ngx_http_aai_cache_stale.c).  The header
 * filter decides whether and how long it may
 * be stored and where (ngx_http_aai_cache_decide), and serializes its
 * status and headers; the body is copied as it passes; once the last
 * buffer has been passed on, the entry is stored with one command nobody
 * waits for, or, when larger than a piece, in pieces one command at a time.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


static const char *ngx_http_aai_cache_decide(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_begin(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf);
static ngx_int_t ngx_http_aai_cache_capture(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_aai_cache_append(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_buf_t *b);
static void ngx_http_aai_cache_abandon(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, const char *why);
static void ngx_http_aai_cache_store_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_store_large(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *argv);
static ngx_int_t ngx_http_aai_cache_job_next(ngx_http_aai_cache_job_t *job);
static void ngx_http_aai_cache_job_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_job_fail(ngx_http_aai_cache_job_t *job,
    const char *why);
static ngx_table_elt_t *ngx_http_aai_cache_origin_date(
    ngx_http_request_t *r);
static ngx_uint_t ngx_http_aai_cache_connection_listed(ngx_list_t *raw,
    ngx_str_t *name);


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
 * The store's scripts, from lua/cache_store.lua and lua/cache_pieces.lua
 * (which say what they do, their arguments and their reply); "make lua"
 * remakes the header after an edit.
 */

#include "ngx_http_aai_cache_store_lua.h"


static ngx_str_t  ngx_http_aai_cache_store_script =
    ngx_string(ngx_http_aai_cache_store_lua);

/* the end of a store in pieces */
static ngx_str_t  ngx_http_aai_cache_pieces_script =
    ngx_string(ngx_http_aai_cache_pieces_lua);


ngx_http_output_header_filter_pt  ngx_http_aai_cache_next_header_filter;
ngx_http_output_body_filter_pt    ngx_http_aai_cache_next_body_filter;


ngx_int_t
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

        return ngx_http_aai_cache_next_header_filter(r);
    }

    if (ctx->request != r
        || ctx->served
        || ctx->state != NGX_HTTP_AAI_CACHE_ST_DONE)
    {
        return ngx_http_aai_cache_next_header_filter(r);
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

    rc = ngx_http_aai_cache_next_header_filter(r);

    /* no body follows (HEAD, 204): the response is complete */

    if (ctx->capturing && r->header_only && rc != NGX_ERROR) {
        ctx->header_only = 1;
        ngx_http_aai_cache_store(r, ctx);
    }

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
    f.valid = alcf->valid
              ? ngx_http_aai_cache_valid_time(alcf->valid->elts,
                                              alcf->valid->nelts,
                                              r->headers_out.status)
              : ngx_http_aai_cache_valid_time(NULL, 0,
                                              r->headers_out.status);
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

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache capture for \"%V\" started, fresh for "
                   "%uL ms, content length %O", &ctx->store_key,
                   ctx->fresh_until - ngx_http_aai_cache_now(), ctx->clen);

    return NGX_OK;
}


ngx_int_t
ngx_http_aai_cache_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_int_t                  rc;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->request != r) {
        return ngx_http_aai_cache_next_body_filter(r, in);
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
        rc = ngx_http_aai_cache_next_body_filter(r, in);
    }

    /* stored once the last buffer has been passed on */

    if (ctx->capturing && ctx->last) {
        ngx_http_aai_cache_store(r, ctx);
    }

    return rc;
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


void
ngx_http_aai_cache_store(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx)
{
    u_char                          *p;
    size_t                           body;
    uint64_t                         now, px, extra;
    ngx_str_t                        argv[14];
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

    /* a header-only entry goes with the store script, never in pieces */

    if (ctx->header_only && ctx->len > NGX_HTTP_AAI_CACHE_PIECE) {
        ngx_http_aai_cache_abandon(r, ctx, "too large");
        return;
    }

    if (ctx->store_vary.len == 0
        && !ctx->lock_held
        && !ctx->header_only
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

        /* not over the entry of a whole response */

        if (ctx->header_only) {
            ngx_str_set(&argv[13], "1");

        } else {
            ngx_str_null(&argv[13]);
        }

        argc = 14;

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

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai cache store piece of \"%V\" sent: %V at %uz of %uz",
                   &job->argv[7], &argv[0], job->off, job->len);

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
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "aai cache stored \"%V\" in pieces",
                           &job->argv[3]);

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

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai cache store of \"%V\" in pieces failed: %s",
                   &job->argv[3], why ? why : "not sent");

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

    if (res->reply
        && res->reply->type == REDIS_REPLY_INTEGER
        && res->reply->integer == 0)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai cache kept the whole response's entry");
        return;
    }

    if (res->reply && res->reply->type != REDIS_REPLY_ERROR) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai cache stored");

        ngx_aai_metrics_inc(amcf->metrics, amcf->m_stored, 1);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai cache store failed: %s",
                   res->reply ? res->reply->str : res->error);

    ngx_aai_metrics_inc(amcf->metrics, amcf->m_store_failures, 1);

    if (logged != ngx_time()) {
        logged = ngx_time();
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "aai_cache: storing in redis failed: %s",
                      res->reply ? res->reply->str : res->error);
    }
}


/* the response headers as the client would get them, but hop-by-hop ones */

ngx_int_t
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

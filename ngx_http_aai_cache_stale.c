
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_stale: an expired entry served (aai_cache_use_stale,
 * stale-while-revalidate, stale-if-error): while another request updates
 * it, in place of an upstream error, and during a background update
 * (aai_cache_background_update), a subrequest whose response is stored,
 * never sent.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


ngx_uint_t
ngx_http_aai_cache_updating_ok(ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *e)
{
    if (ngx_http_aai_cache_no_stale(e)) {
        return 0;
    }

    if (alcf->use_stale & NGX_HTTP_AAI_CACHE_STALE_UPDATING) {
        return 1;
    }

    return e->swr
           && ngx_http_aai_cache_now() < e->fresh_until + e->swr * 1000ULL;
}


/*
 * proxy_cache_background_update's way: a background subrequest that clones
 * this request from this phase on; its response is stored, never sent.
 */

ngx_int_t
ngx_http_aai_cache_background(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_http_request_t        *sr;
    ngx_http_aai_cache_ctx_t  *sctx;

    if (r == r->main) {
        r->preserve_body = 1;
    }

    if (ngx_http_subrequest(r, &r->uri, &r->args, &sr, NULL,
                            NGX_HTTP_SUBREQUEST_CLONE
                            |NGX_HTTP_SUBREQUEST_BACKGROUND)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* as proxy_cache_convert_head: the whole response is stored */

    if (sr->method == NGX_HTTP_HEAD) {
        sr->method = NGX_HTTP_GET;
        sr->method_name = ngx_http_core_get_method;
    }

    sctx = ngx_http_aai_cache_create_ctx(sr);
    if (sctx == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(sctx->digest, ctx->digest, SHA256_DIGEST_LENGTH);
    ngx_memcpy(sctx->token, ctx->token, sizeof(ctx->token));
    sctx->key = ctx->key;
    sctx->vkey = ctx->vkey;
    sctx->vary = ctx->vary;
    sctx->lock_key = ctx->lock_key;
    sctx->credentialed = ctx->credentialed;

    /* the subrequest holds the lock now */

    sctx->lock_held = 1;
    sctx->lock_until = ctx->lock_until;
    ctx->lock_held = 0;

    ngx_http_aai_cache_lease(sctx);

    sctx->bg = 1;
    sctx->status = NGX_HTTP_AAI_CACHE_EXPIRED;
    sctx->fwd = NGX_HTTP_AAI_CACHE_EXPIRED;
    sctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
    sctx->capture = 1;

    ngx_http_aai_cache_unconditional(sr);
    ngx_http_aai_cache_conditional(sr, sctx, ctx->stale);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache background update of \"%V\" started",
                   &ctx->key);

    return NGX_OK;
}


ngx_int_t
ngx_http_aai_cache_stale_on_error(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf)
{
    ngx_uint_t                   mask;
    ngx_aai_cache_entry_t       *e;

    switch (r->headers_out.status) {

    case NGX_HTTP_INTERNAL_SERVER_ERROR:
        mask = NGX_HTTP_AAI_CACHE_STALE_500;
        break;

    case NGX_HTTP_BAD_GATEWAY:
        mask = NGX_HTTP_AAI_CACHE_STALE_ERROR|NGX_HTTP_AAI_CACHE_STALE_502;
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        mask = NGX_HTTP_AAI_CACHE_STALE_503;
        break;

    case NGX_HTTP_GATEWAY_TIME_OUT:
        mask = NGX_HTTP_AAI_CACHE_STALE_TIMEOUT|NGX_HTTP_AAI_CACHE_STALE_504;
        break;

    default:
        return 0;
    }

    if (ngx_http_aai_cache_no_stale(ctx->stale)) {
        return 0;
    }

    if (alcf->use_stale & mask) {
        return 1;
    }

    e = ctx->stale;

    return e->sie
           && ngx_http_aai_cache_now() < e->fresh_until + e->sie * 1000ULL;
}


/* an empty headers_out, for a stored entry's headers to be restored into */

ngx_int_t
ngx_http_aai_cache_reset_headers(ngx_http_request_t *r)
{
    ngx_http_headers_out_t  *ho;

    ho = &r->headers_out;

    if (ngx_list_init(&ho->headers, r->pool, 20, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ho->status_line.len = 0;

    ho->server = NULL;
    ho->date = NULL;
    ho->content_length = NULL;
    ho->content_encoding = NULL;
    ho->location = NULL;
    ho->refresh = NULL;
    ho->last_modified = NULL;
    ho->content_range = NULL;
    ho->accept_ranges = NULL;
    ho->www_authenticate = NULL;
    ho->expires = NULL;
    ho->etag = NULL;

#if (nginx_version >= 1023000)
    ho->cache_control = NULL;
    ho->link = NULL;
#else
    ho->cache_control.nelts = 0;
    ho->link.nelts = 0;
#endif

    ngx_str_null(&ho->content_type);
    ngx_str_null(&ho->charset);
    ho->content_type_len = 0;
    ho->content_type_hash = 0;
    ho->content_type_lowcase = NULL;
    ho->content_length_n = -1;
    ho->content_offset = 0;
    ho->last_modified_time = -1;

    return NGX_OK;
}


/* the upstream failed: the stale entry replaces its response */

ngx_int_t
ngx_http_aai_cache_swap_header(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_http_headers_out_t  *ho;

    ho = &r->headers_out;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache STALE: the entry's %ui replaces the "
                   "upstream's %ui", ctx->stale->status, ho->status);

    if (ngx_http_aai_cache_reset_headers(r) != NGX_OK) {
        return NGX_ERROR;
    }

    ho->status = ctx->stale->status;

    ctx->status = NGX_HTTP_AAI_CACHE_STALE;
    ctx->fwd = NGX_HTTP_AAI_CACHE_STALE;
    ctx->capture = 0;
    ctx->swap = 1;
    ctx->served = 1;
    ctx->detail = "stale-if-error";

    ngx_http_aai_cache_release(ctx, 0, r->connection->log);

    if (ngx_http_aai_cache_restore(r, ctx->stale) != NGX_OK) {
        return NGX_ERROR;
    }

    if (r == r->main
        && ngx_http_aai_cache_status_header(r, ctx, ctx->stale) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_aai_cache_next_header_filter(r);
}


ngx_int_t
ngx_http_aai_cache_swap_body(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_chain_t *in)
{
    ngx_buf_t                       *b;
    ngx_chain_t                      out;
    ngx_aai_cache_entry_t           *e;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ngx_http_aai_cache_consume(in);

    if (ctx->swap_sent) {
        return ngx_http_aai_cache_next_body_filter(r, NULL);
    }

    ctx->swap_sent = 1;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    e = ctx->stale;

    if (!r->header_only && e->body_len) {
        b->pos = e->body;
        b->last = e->body + e->body_len;
        b->memory = 1;

        amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
        ngx_aai_metrics_inc(amcf->metrics, amcf->m_bytes, e->body_len);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_aai_cache_next_body_filter(r, &out);
}


void
ngx_http_aai_cache_consume(ngx_chain_t *in)
{
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_purge: entries deleted from Redis, with all their
 * variants: by a request to an aai_cache_purge location, and by a
 * successful unsafe request (invalidation, RFC 9111, 4.4).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


static ngx_int_t ngx_http_aai_cache_invalidate_uri(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *uri, ngx_str_t *argv,
    ngx_uint_t *n);
static void ngx_http_aai_cache_purge_reply(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_cache_purge_cleanup(void *data);
static ngx_int_t ngx_http_aai_cache_purge_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_int_t n);


/*
 * The purge's script, from lua/cache_purge.lua (which says what it does,
 * its arguments and its reply); "make lua" remakes the header after an
 * edit.
 */

#include "ngx_http_aai_cache_purge_lua.h"


static ngx_str_t  ngx_http_aai_cache_purge_script =
    ngx_string(ngx_http_aai_cache_purge_lua);


/*
 * After a successful unsafe request, the entries of its URI and of the
 * Location and Content-Location on the same host (RFC 9111, 4.4), with all
 * their Vary variants, are deleted from Redis: from every instance.  The
 * keys are made as for the request with its method and URI replaced
 * (GET, HEAD, ... as aai_cache_methods; $request_uri, $uri, $args).
 */

void
ngx_http_aai_cache_invalidate(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf)
{
    u_char                          *num;
    size_t                           hlen;
    ngx_str_t                        uri, *argv, *host;
    ngx_uint_t                       n, i;
    ngx_table_elt_t                 *h;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return;
    }

    argv = ngx_palloc(r->pool,
                      (3 + NGX_HTTP_AAI_CACHE_MAX_INVALIDATE)
                      * sizeof(ngx_str_t));
    num = ngx_pnalloc(r->pool, 1);
    if (argv == NULL || num == NULL) {
        return;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_purge_script;
    n = 0;

    if (ngx_http_aai_cache_invalidate_uri(r, alcf, &r->unparsed_uri, argv,
                                          &n)
        != NGX_OK)
    {
        return;
    }

    host = r->headers_in.server.len ? &r->headers_in.server : NULL;

    for (i = 0; i < 2; i++) {

        /* a relative Location is not r->headers_out.location */

        h = (i == 0) ? ngx_aai_cache_find_header(&r->headers_out.headers,
                                                 "Location", 8, NULL)
                     : ngx_aai_cache_find_header(&r->headers_out.headers,
                                                 "Content-Location", 16,
                                                 NULL);
        if (h == NULL || h->value.len == 0) {
            continue;
        }

        uri = h->value;

        if (uri.data[0] != '/') {

            /* absolute: the same host only */

            if (host == NULL) {
                continue;
            }

            if (uri.len > 7 && ngx_strncasecmp(uri.data, (u_char *) "http://",
                                               7) == 0)
            {
                uri.data += 7;
                uri.len -= 7;

            } else if (uri.len > 8
                       && ngx_strncasecmp(uri.data, (u_char *) "https://", 8)
                          == 0)
            {
                uri.data += 8;
                uri.len -= 8;

            } else {
                continue;
            }

            hlen = 0;

            while (hlen < uri.len && uri.data[hlen] != '/'
                   && uri.data[hlen] != ':')
            {
                hlen++;
            }

            if (hlen != host->len
                || ngx_strncasecmp(uri.data, host->data, hlen) != 0)
            {
                continue;
            }

            while (hlen < uri.len && uri.data[hlen] != '/') {
                hlen++;
            }

            uri.data += hlen;
            uri.len -= hlen;

            if (uri.len == 0) {
                continue;
            }

        } else if (uri.len > 1 && uri.data[1] == '/') {
            continue;
        }

        if (ngx_http_aai_cache_invalidate_uri(r, alcf, &uri, argv, &n)
            != NGX_OK)
        {
            return;
        }
    }

    *num = (u_char) ('0' + n);
    argv[2].data = num;
    argv[2].len = 1;

    for (i = 0; i < n; i++) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache invalidate \"%V\"", &argv[3 + i]);
    }

    /* nobody waits for it: the reply may come after the request is gone */

    (void) ngx_aai_redis_send(amcf->redis, ngx_cycle->log, 3 + n, argv,
                              ngx_http_aai_cache_release_handler, NULL);
}


/* the keys of one URI (path and query) for each cached method, to argv */

static ngx_int_t
ngx_http_aai_cache_invalidate_uri(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *uri, ngx_str_t *argv,
    ngx_uint_t *n)
{
    u_char                     *q;
    size_t                      vsize;
    ngx_int_t                   rc;
    ngx_str_t                   key, method, unparsed, path, args;
    ngx_uint_t                  i, j;
    ngx_conf_bitmask_t         *m;
    ngx_http_variable_value_t  *saved;
    ngx_http_core_main_conf_t  *cmcf;
    u_char                      digest[SHA256_DIGEST_LENGTH];

    /*
     * $request_uri and the like keep their first value: the request's
     * are put aside, and restored when the keys are made
     */

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);
    vsize = cmcf->variables.nelts * sizeof(ngx_http_variable_value_t);

    saved = ngx_palloc(r->pool, vsize ? vsize : 1);
    if (saved == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(saved, r->variables, vsize);

    for (i = 0; i < cmcf->variables.nelts; i++) {
        r->variables[i].valid = 0;
        r->variables[i].not_found = 0;
    }

    method = r->main->method_name;
    unparsed = r->unparsed_uri;
    path = r->uri;
    args = r->args;

    r->unparsed_uri = *uri;
    r->uri = *uri;
    ngx_str_null(&r->args);

    q = ngx_strlchr(uri->data, uri->data + uri->len, '?');

    if (q) {
        r->uri.len = q - uri->data;
        r->args.data = q + 1;
        r->args.len = uri->data + uri->len - (q + 1);
    }

    rc = NGX_OK;

    for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {

        if (!(alcf->methods & m->mask)) {
            continue;
        }

        r->main->method_name = m->name;

        rc = ngx_http_aai_cache_make_key(r, alcf, &key, digest);

        if (rc != NGX_OK) {
            break;
        }

        for (j = 0; j < *n; j++) {
            if (argv[3 + j].len == key.len
                && ngx_memcmp(argv[3 + j].data, key.data, key.len) == 0)
            {
                break;
            }
        }

        if (j == *n && *n < NGX_HTTP_AAI_CACHE_MAX_INVALIDATE) {
            argv[3 + (*n)++] = key;
        }
    }

    r->main->method_name = method;
    r->unparsed_uri = unparsed;
    r->uri = path;
    r->args = args;

    ngx_memcpy(r->variables, saved, vsize);

    return rc;
}


ngx_int_t
ngx_http_aai_cache_purge_handler(ngx_http_request_t *r)
{
    u_char                          *num;
    ngx_int_t                        rc;
    ngx_str_t                        key, saved, *argv;
    ngx_uint_t                       i, j, n;
    ngx_conf_bitmask_t              *m;
    ngx_pool_cleanup_t              *cln;
    ngx_http_aai_cache_purge_ctx_t  *pctx;
    ngx_http_aai_cache_loc_conf_t   *alcf;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           digest[SHA256_DIGEST_LENGTH];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    argv = ngx_palloc(r->pool, 6 * sizeof(ngx_str_t));
    num = ngx_pnalloc(r->pool, 1);
    if (argv == NULL || num == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_purge_script;

    /* the key of each cached method: $request_method takes its name */

    saved = r->main->method_name;
    n = 0;

    for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {

        if (!(alcf->methods & m->mask)) {
            continue;
        }

        r->main->method_name = m->name;

        rc = ngx_http_aai_cache_make_key(r, alcf, &key, digest);

        r->main->method_name = saved;

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (j = 0; j < n; j++) {
            if (argv[3 + j].len == key.len
                && ngx_memcmp(argv[3 + j].data, key.data, key.len) == 0)
            {
                break;
            }
        }

        if (j == n) {
            argv[3 + n++] = key;
        }
    }

    *num = (u_char) ('0' + n);
    argv[2].data = num;
    argv[2].len = 1;

    pctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_cache_purge_ctx_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (pctx == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pctx->request = r;
    cln->handler = ngx_http_aai_cache_purge_cleanup;
    cln->data = pctx;

    for (i = 0; i < n; i++) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache purge \"%V\"", &argv[3 + i]);
    }

    pctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, 3 + n,
                                   argv, ngx_http_aai_cache_purge_reply,
                                   pctx);
    if (pctx->cmd == NULL) {
        return ngx_http_aai_cache_purge_send(r,
                                             NGX_HTTP_SERVICE_UNAVAILABLE,
                                             -1);
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_aai_cache_purge_reply(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_purge_ctx_t *pctx = data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = pctx->request;
    c = r->connection;

    pctx->cmd = NULL;

    if (res->reply == NULL || res->reply->type != REDIS_REPLY_INTEGER) {
        if (res->reply && res->reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "aai_cache: purge failed: %s", res->reply->str);
        }

        rc = ngx_http_aai_cache_purge_send(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           -1);

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "aai cache purged %L entries",
                       (int64_t) res->reply->integer);

        rc = ngx_http_aai_cache_purge_send(r, res->reply->integer > 0
                                              ? NGX_HTTP_OK
                                              : NGX_HTTP_NOT_FOUND,
                                           (ngx_int_t) res->reply->integer);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_cache_purge_cleanup(void *data)
{
    ngx_http_aai_cache_purge_ctx_t *pctx = data;

    if (pctx->cmd) {
        ngx_aai_redis_cancel(pctx->cmd);
        pctx->cmd = NULL;
    }
}


static ngx_int_t
ngx_http_aai_cache_purge_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_int_t n)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_create_temp_buf(r->pool, 64);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (n < 0) {
        b->last = ngx_cpymem(b->last, "{\"error\":\"redis unavailable\"}\n",
                             sizeof("{\"error\":\"redis unavailable\"}\n") - 1);

    } else {
        b->last = ngx_sprintf(b->last, "{\"purged\":%i}\n", n);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}

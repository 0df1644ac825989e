
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the response headers of the most
 * restrictive zone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static ngx_int_t ngx_http_aai_ratelimit_add_header(ngx_http_request_t *r,
    ngx_str_t *name, u_char *value, u_char *last);


/*
 * draft-ietf-httpapi-ratelimit-headers-10 for the most restrictive zone:
 *
 *     RateLimit-Policy: "api";q=100;w=60
 *     RateLimit: "api";r=42;t=30
 *     Retry-After: 30                      (rejected requests)
 *
 * On rejection t is the time until the next request is admitted, as is
 * Retry-After; otherwise the time until the quota is fully replenished.
 */

ngx_int_t
ngx_http_aai_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    u_char                           *p, *last;
    size_t                            len;
    ngx_msec_t                        reset;
    ngx_uint_t                        remaining;
    ngx_http_aai_ratelimit_zone_t    *zone;
    ngx_http_aai_ratelimit_result_t  *res;

    static ngx_str_t  policy = ngx_string("RateLimit-Policy");
    static ngx_str_t  ratelimit = ngx_string("RateLimit");
    static ngx_str_t  retry_after = ngx_string("Retry-After");

    if (ctx->top == -1) {
        return NGX_OK;
    }

    zone = ctx->zones[ctx->top];
    res = &ctx->results[ctx->top];

    if (ctx->rejected) {
        remaining = 0;
        reset = ngx_max((res->retry_after + 999) / 1000, 1);

    } else {
        remaining = res->remaining;
        reset = (res->reset + 999) / 1000;
    }

    len = sizeof("\"\";q=;w=") - 1 + zone->name.len + NGX_INT_T_LEN
          + NGX_INT64_LEN
          + sizeof("\"\";r=;t=") - 1 + zone->name.len + NGX_INT_T_LEN
          + NGX_INT_T_LEN
          + NGX_INT_T_LEN;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ctx->rejected && ctx->rc != NGX_DECLINED) {
        last = ngx_sprintf(p, "%M", reset);

        if (ngx_http_aai_ratelimit_add_header(r, &retry_after, p, last)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = last;
    }

    if (!ctx->headers) {
        return NGX_OK;
    }

    last = ngx_sprintf(p, "\"%V\";q=%ui;w=%uL", &zone->name, zone->limit,
                       zone->window / 1000000);

    if (ngx_http_aai_ratelimit_add_header(r, &policy, p, last) != NGX_OK) {
        return NGX_ERROR;
    }

    p = last;

    last = ngx_sprintf(p, "\"%V\";r=%ui;t=%M", &zone->name, remaining, reset);

    return ngx_http_aai_ratelimit_add_header(r, &ratelimit, p, last);
}


static ngx_int_t
ngx_http_aai_ratelimit_add_header(ngx_http_request_t *r, ngx_str_t *name,
    u_char *value, u_char *last)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value.data = value;
    h->value.len = last - value;
    h->lowcase_key = NULL;

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}

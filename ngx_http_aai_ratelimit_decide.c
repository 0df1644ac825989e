
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: a request's outcome from its zones'
 * results (Redis, the blocklist or the local fallback), its log line and
 * its metrics.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static ngx_int_t ngx_http_aai_ratelimit_top(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t rejected);
static void ngx_http_aai_ratelimit_log(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source);
static void ngx_http_aai_ratelimit_count(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t source);


void
ngx_http_aai_ratelimit_decide(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source)
{
    ngx_uint_t                          i;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    lcf = ctx->lcf;

    ctx->top = ngx_http_aai_ratelimit_top(ctx, 1);
    ctx->rejected = (ctx->top != -1);
    ctx->delay = 0;

    if (ctx->rejected) {
        ctx->status = lcf->dry_run ? NGX_HTTP_AAI_RL_REJECTED_DRY_RUN
                                   : NGX_HTTP_AAI_RL_REJECTED;
        ctx->rc = lcf->dry_run ? NGX_DECLINED : (ngx_int_t) lcf->status_code;

        if (source == NGX_HTTP_AAI_RL_REDIS) {
            ngx_http_aai_ratelimit_block(ctx);
        }

    } else {
        ctx->top = ngx_http_aai_ratelimit_top(ctx, 0);
        ctx->rc = NGX_DECLINED;

        for (i = 0; i < ctx->nzones; i++) {
            ctx->delay = ngx_max(ctx->delay, ctx->results[i].delay);
        }

        if (lcf->dry_run) {
            ctx->status = NGX_HTTP_AAI_RL_PASSED_DRY_RUN;

        } else {
            ctx->status = ctx->delay ? NGX_HTTP_AAI_RL_DELAYED
                                     : NGX_HTTP_AAI_RL_PASSED;
        }
    }

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit decided by %s: %s, zone %i, delay %M ms%s",
                   (source == NGX_HTTP_AAI_RL_BLOCKLIST) ? "the blocklist"
                   : (source == NGX_HTTP_AAI_RL_LOCAL) ? "the local fallback"
                   : "Redis",
                   ctx->rejected ? "rejected" : "passed", ctx->top,
                   ctx->delay, lcf->dry_run ? ", dry run" : "");

    ngx_http_aai_ratelimit_log(r, ctx, source);
    ngx_http_aai_ratelimit_count(ctx, source);

    if (lcf->dry_run) {
        ctx->delay = 0;
    }

    if (source == NGX_HTTP_AAI_RL_LOCAL) {
        ctx->status = NGX_HTTP_AAI_RL_ERROR;
    }

    ctx->headers = (lcf->headers && !lcf->dry_run);
}


/*
 * The most restrictive zone: among the rejecting zones the one with the
 * longest wait; otherwise the one with the fewest requests left.
 */

static ngx_int_t
ngx_http_aai_ratelimit_top(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t rejected)
{
    ngx_int_t                         top;
    ngx_uint_t                        i;
    ngx_http_aai_ratelimit_result_t  *res, *t;

    top = -1;
    res = ctx->results;

    for (i = 0; i < ctx->nzones; i++) {

        if (res[i].rejected != rejected) {
            continue;
        }

        if (top == -1) {
            top = i;
            continue;
        }

        t = &res[top];

        if (rejected) {
            if (res[i].retry_after > t->retry_after) {
                top = i;
            }

            continue;
        }

        if (res[i].remaining < t->remaining
            || (res[i].remaining == t->remaining && res[i].reset > t->reset))
        {
            top = i;
        }
    }

    return top;
}


static void
ngx_http_aai_ratelimit_log(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t source)
{
    char                               *from;
    ngx_uint_t                          i;
    ngx_http_aai_ratelimit_result_t    *res;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    lcf = ctx->lcf;

    from = (source == NGX_HTTP_AAI_RL_BLOCKLIST) ? " (blocklist)"
           : (source == NGX_HTTP_AAI_RL_LOCAL) ? " (local fallback)" : "";

    if (ctx->rejected) {
        res = &ctx->results[ctx->top];

        ngx_log_error(lcf->limit_log_level, r->connection->log, 0,
                      "limiting requests%s by aai_ratelimit zone \"%V\"%s, "
                      "retry after %M ms",
                      lcf->dry_run ? ", dry run," : "",
                      &ctx->zones[ctx->top]->name, from, res->retry_after);
        return;
    }

    if (ctx->delay == 0) {
        return;
    }

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->results[i].delay == ctx->delay) {
            break;
        }
    }

    ngx_log_error(lcf->delay_log_level, r->connection->log, 0,
                  "delaying request%s by %M ms by aai_ratelimit zone \"%V\"%s",
                  lcf->dry_run ? ", dry run," : "", ctx->delay,
                  &ctx->zones[i]->name, from);
}


static void
ngx_http_aai_ratelimit_count(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t source)
{
    ngx_uint_t                           i, outcome;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];
        res = &ctx->results[i];

        if (source == NGX_HTTP_AAI_RL_LOCAL) {
            outcome = NGX_HTTP_AAI_RL_M_ERROR;

        } else if (ctx->rejected) {

            /* zones that would have passed spent nothing: not counted */

            if (!res->rejected) {
                continue;
            }

            outcome = ctx->lcf->dry_run ? NGX_HTTP_AAI_RL_M_DRY_RUN
                                        : NGX_HTTP_AAI_RL_M_REJECTED;

            if (source == NGX_HTTP_AAI_RL_BLOCKLIST) {
                ngx_aai_metrics_inc(mcf->metrics,
                                    zone->metrics[NGX_HTTP_AAI_RL_M_LOCAL], 1);
            }

        } else {
            outcome = (res->delay && !ctx->lcf->dry_run)
                      ? NGX_HTTP_AAI_RL_M_DELAYED : NGX_HTTP_AAI_RL_M_PASSED;
        }

        ngx_aai_metrics_inc(mcf->metrics, zone->metrics[outcome], 1);
    }
}

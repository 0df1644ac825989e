
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: concurrency= zones.  An admitted request
 * holds a lease in each (added by the script); its end releases it (with
 * the worker's next batch, ngx_http_aai_ratelimit_ai.c), a timer renews it
 * while it runs.
 */


#include "ngx_http_aai_ratelimit.h"


static void ngx_http_aai_ratelimit_renew(ngx_event_t *ev);


/*
 * concurrency=N [lease=time]: at most N requests of a key in flight, each
 * holding a lease that expires after "lease" (30s) unless renewed.
 */

ngx_int_t
ngx_http_aai_ratelimit_zone_concurrency(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    if (zone->concurrency == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"lease=\" of zone \"%V\" in \"%V\" requires "
                           "\"concurrency=\"", &zone->name, &cmd->name);
        return NGX_ERROR;
    }

    if (zone->limit || zone->burst || zone->delay || zone->count
        || zone->algorithm != NGX_HTTP_AAI_RL_SLIDING)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" in \"%V\": \"concurrency=\" takes "
                           "no \"rate=\", \"burst=\", \"delay=\", "
                           "\"count=\" or \"algorithm=\"",
                           &zone->name, &cmd->name);
        return NGX_ERROR;
    }

    if (zone->lease == 0) {
        zone->lease = NGX_HTTP_AAI_RL_LEASE;
    }

    zone->algorithm = NGX_HTTP_AAI_RL_CONCURRENCY;
    zone->limit = zone->concurrency;
    zone->window = (uint64_t) zone->lease * 1000;
    ngx_str_set(&zone->rate, "concurrency");

    return NGX_OK;
}


/* an admitted request holds a lease in its concurrency= zones */

void
ngx_http_aai_ratelimit_leased(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_uint_t   i;
    ngx_msec_t   lease;
    ngx_event_t  *ev;

    ctx->leased = 1;
    ctx->redis = mcf->redis;

    lease = 0;

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency
            && (lease == 0 || ctx->zones[i]->lease < lease))
        {
            lease = ctx->zones[i]->lease;
        }
    }

    ev = ngx_pcalloc(ctx->request->pool, sizeof(ngx_event_t));
    if (ev == NULL) {
        return;
    }

    ev->handler = ngx_http_aai_ratelimit_renew;
    ev->data = ctx;
    ev->log = ctx->request->connection->log;
    ev->cancelable = 1;

    ctx->renew = ev;

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


static void
ngx_http_aai_ratelimit_renew(ngx_event_t *ev)
{
    ngx_uint_t                      i;
    ngx_msec_t                      lease;
    ngx_http_aai_ratelimit_ctx_t   *ctx;
    ngx_http_aai_ratelimit_zone_t  *zone;

    ctx = ev->data;
    lease = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];

        if (!zone->concurrency) {
            continue;
        }

        ngx_http_aai_ratelimit_lease_renew(ctx->redis, &ctx->keys[i],
                                           &ctx->lease, zone->window);

        if (lease == 0 || zone->lease < lease) {
            lease = zone->lease;
        }
    }

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


void
ngx_http_aai_ratelimit_release(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    ctx->leased = 0;

    if (ctx->renew && ctx->renew->timer_set) {
        ngx_del_timer(ctx->renew);
    }

    /* with the worker's next batch, in this event loop iteration */

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency) {
            ngx_http_aai_ratelimit_lease_release(NULL, &ctx->keys[i],
                                       &ctx->lease,
                                       ctx->zones[i]->released);
        }
    }
}


void
ngx_http_aai_ratelimit_orphan(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    /* released when the batch is answered (or fails) */

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency) {
            ngx_http_aai_ratelimit_lease_release(&ctx->batch->orphans,
                                       &ctx->keys[i], &ctx->lease,
                                       ctx->zones[i]->released);
        }
    }
}

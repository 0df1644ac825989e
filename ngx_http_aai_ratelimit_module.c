/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: request rate limiting with the counters in
 * Redis, so that every nginx instance enforces one limit.
 *
 * All the zones of a request are checked by one atomic Lua script call
 * (EVALSHA): a request rejected by one zone spends no quota in the others.
 * The requests of one event loop iteration share that call: a worker
 * sends one EVALSHA per iteration, however many requests it checks.
 * Keys known to be over their limit are rejected from a shared memory
 * blocklist without asking Redis; when Redis fails, a per-location fallback
 * decides (allow, deny, or a per-instance limit in the same shared memory).
 *
 * This file holds the module, its directives and the request's entry
 * points; ngx_http_aai_ratelimit.h lists the files they delegate to.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>

#include "ngx_http_aai_ratelimit.h"
#include "ngx_aai_conf.h"


static ngx_int_t ngx_http_aai_ratelimit_handler(ngx_http_request_t *r);
static ngx_http_aai_ratelimit_ctx_t *ngx_http_aai_ratelimit_get_ctx(
    ngx_http_request_t *r);
static ngx_http_aai_ratelimit_ctx_t *ngx_http_aai_ratelimit_create_ctx(
    ngx_http_request_t *r);
static ngx_aai_jwt_ctx_t *ngx_http_aai_ratelimit_jwt_ctx(
    ngx_http_request_t *r);
static void ngx_http_aai_ratelimit_cleanup(void *data);
static ngx_int_t ngx_http_aai_ratelimit_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_keys(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_aai_ratelimit_long_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out);
static ngx_int_t ngx_http_aai_ratelimit_wait(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_finish(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx);
static void ngx_http_aai_ratelimit_delay(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static void *ngx_http_aai_ratelimit_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_aai_ratelimit_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static void *ngx_http_aai_ratelimit_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_aai_ratelimit_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_aai_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_ratelimit_local_zone(ngx_conf_t *cf, void *post,
    void *data);
static ngx_int_t ngx_http_aai_ratelimit_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_ratelimit_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_ratelimit_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_ratelimit_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_aai_ratelimit_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


ngx_conf_enum_t  ngx_http_aai_ratelimit_fallbacks[] = {
    { ngx_string("allow"), NGX_HTTP_AAI_RL_FALLBACK_ALLOW },
    { ngx_string("deny"), NGX_HTTP_AAI_RL_FALLBACK_DENY },
    { ngx_string("local"), NGX_HTTP_AAI_RL_FALLBACK_LOCAL },
    { ngx_null_string, 0 }
};


static ngx_aai_redis_post_t  ngx_http_aai_ratelimit_redis_post = {
    NULL, offsetof(ngx_http_aai_ratelimit_main_conf_t, redis)
};


static ngx_aai_conf_post_t  ngx_http_aai_ratelimit_status_post = {
    ngx_aai_conf_check_bounds, NULL, 400, 599
};


static ngx_aai_conf_post_t  ngx_http_aai_ratelimit_local_zone_post = {
    ngx_http_aai_ratelimit_local_zone, NULL, 0, 0
};


static ngx_command_t  ngx_http_aai_ratelimit_commands[] = {

    { ngx_string("aai_ratelimit_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_aai_redis_conf_set_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_main_conf_t, redis_conf),
      &ngx_http_aai_ratelimit_redis_post },

    { ngx_string("aai_ratelimit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_aai_ratelimit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_ratelimit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_ratelimit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("aai_ratelimit_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_aai_ratelimit_admin,
      0,
      0,
      NULL },

    { ngx_string("aai_ratelimit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, status_code),
      &ngx_http_aai_ratelimit_status_post },

    { ngx_string("aai_ratelimit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, dry_run),
      NULL },

    { ngx_string("aai_ratelimit_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, limit_log_level),
      &ngx_http_aai_ratelimit_log_levels },

    { ngx_string("aai_ratelimit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, headers),
      NULL },

    { ngx_string("aai_ratelimit_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_loc_conf_t, fallback),
      &ngx_http_aai_ratelimit_fallbacks },

    { ngx_string("aai_ratelimit_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_main_conf_t, prefix),
      NULL },

    { ngx_string("aai_ratelimit_local_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_ratelimit_main_conf_t, local_size),
      &ngx_http_aai_ratelimit_local_zone_post },

    NGX_AAI_METRICS_COMMAND,

    NGX_AAI_JWT_COMMANDS(ngx_http_aai_ratelimit_loc_conf_t, jwt)

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_ratelimit_module_ctx = {
    ngx_http_aai_ratelimit_add_variables,   /* preconfiguration */
    ngx_http_aai_ratelimit_init,            /* postconfiguration */

    ngx_http_aai_ratelimit_create_main_conf, /* create main configuration */
    ngx_http_aai_ratelimit_init_main_conf,  /* init main configuration */

    NULL,                                   /* create server configuration */
    NULL,                                   /* merge server configuration */

    ngx_http_aai_ratelimit_create_loc_conf, /* create location configuration */
    ngx_http_aai_ratelimit_merge_loc_conf   /* merge location configuration */
};


ngx_module_t  ngx_http_aai_ratelimit_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_ratelimit_module_ctx,     /* module context */
    ngx_http_aai_ratelimit_commands,        /* module directives */
    NGX_HTTP_MODULE,                        /* module type */
    NULL,                                   /* init master */
    NULL,                                   /* init module */
    ngx_http_aai_ratelimit_init_process,    /* init process */
    NULL,                                   /* init thread */
    NULL,                                   /* exit thread */
    ngx_http_aai_ratelimit_exit_process,    /* exit process */
    NULL,                                   /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_aai_ratelimit_vars[] = {

    { ngx_string("aai_ratelimit_status"), NULL,
      ngx_http_aai_ratelimit_status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_aai_ratelimit_status[] = {
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("PASSED_DRY_RUN"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("DELAYED"),
    ngx_string("ERROR")
};


static const char  *ngx_http_aai_ratelimit_reasons[] = {
    "timeout", "unavailable", "reply"
};


static ngx_str_t  ngx_http_aai_ratelimit_shm_name =
    ngx_string("aai_ratelimit");


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


static ngx_int_t
ngx_http_aai_ratelimit_handler(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t       *ctx;
    ngx_http_aai_ratelimit_loc_conf_t  *lcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx && ctx->state == NGX_HTTP_AAI_RL_WAITING) {
        return NGX_AGAIN;
    }

    if (ctx && ctx->state == NGX_HTTP_AAI_RL_DONE) {

        /* limited once per request, as limit_req */

        if (!ctx->resume) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai_ratelimit already decided");
            return NGX_DECLINED;
        }

        ctx->resume = 0;

        return ngx_http_aai_ratelimit_finish(r, ctx);
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_ratelimit_module);

    if (lcf->zones == NULL) {
        return NGX_DECLINED;
    }

    if (ctx == NULL) {
        ctx = ngx_http_aai_ratelimit_create_ctx(r);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ctx->lcf = lcf;

    if (ngx_http_aai_ratelimit_keys(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->nzones == 0) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_AAI_RL_DONE;
    ctx->asked = ngx_current_msec;

    if (ngx_http_aai_ratelimit_blocked(ctx) == NGX_OK) {
        ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_BLOCKLIST);
        return ngx_http_aai_ratelimit_finish(r, ctx);
    }

    if (ngx_http_aai_ratelimit_enqueue(r, ctx) == NGX_OK) {
        ctx->state = NGX_HTTP_AAI_RL_WAITING;
        return ngx_http_aai_ratelimit_wait(r);
    }

    ngx_http_aai_ratelimit_fallback(r, ctx, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                    "unavailable", NULL);

    return ngx_http_aai_ratelimit_finish(r, ctx);
}


/*
 * The context belongs to the main request and survives internal redirects
 * (which clear module contexts) through its pool cleanup, as in the realip
 * module: a request is limited once, and $aai_ratelimit_status and the
 * headers stay available.
 */

static ngx_http_aai_ratelimit_ctx_t *
ngx_http_aai_ratelimit_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    r = r->main;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_ratelimit_module);

    if (ctx != NULL) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_aai_ratelimit_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_aai_ratelimit_module);
            return ctx;
        }
    }

    return NULL;
}


static ngx_http_aai_ratelimit_ctx_t *
ngx_http_aai_ratelimit_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    r = r->main;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_aai_ratelimit_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = cln->data;

    ngx_memzero(ctx, sizeof(ngx_http_aai_ratelimit_ctx_t));

    ctx->request = r;
    ctx->top = -1;
    ctx->rc = NGX_DECLINED;

    cln->handler = ngx_http_aai_ratelimit_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_aai_ratelimit_module);

    return ctx;
}


/* for ngx_aai_jwt.c, its request state in ours */

static ngx_aai_jwt_ctx_t *
ngx_http_aai_ratelimit_jwt_ctx(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL) {
        ctx = ngx_http_aai_ratelimit_create_ctx(r);
        if (ctx == NULL) {
            return NULL;
        }
    }

    return &ctx->jwt;
}


static void
ngx_http_aai_ratelimit_cleanup(void *data)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx = data;

    if (ctx->batch) {

        /* its batch is in Redis: the lease is released with the reply */

        if (ctx->conc && ctx->batch->slots[ctx->slot].sent) {
            ngx_http_aai_ratelimit_orphan(ctx);
        }

        ctx->batch->slots[ctx->slot].ctx = NULL;
        ctx->batch = NULL;
    }

    if (ctx->cluster) {
        ngx_http_aai_ratelimit_cluster_cleanup(ctx);
    }

    if (ctx->leased) {
        ngx_http_aai_ratelimit_release(ctx);
    }
}


/* the log phase: the usage of zones with charge= waits for a batch */

static ngx_int_t
ngx_http_aai_ratelimit_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_ctx_t   *ctx;
    ngx_http_aai_ratelimit_zreq_t  *zr;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL || !ctx->charge || ctx->state != NGX_HTTP_AAI_RL_DONE) {
        return NGX_OK;
    }

    ctx->charge = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zr = &ctx->zreq[i];

        if (zr->opts == NULL || zr->opts->charge == NULL) {
            continue;
        }

        (void) ngx_http_aai_ratelimit_charge_add(r, ctx->zones[i],
                                                 &ctx->keys[i], zr);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_keys(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    u_char                         *p;
    ngx_str_t                       key;
    ngx_uint_t                      i, n;
    ngx_http_aai_ratelimit_opts_t **opts;
    ngx_http_aai_ratelimit_zone_t  *zone, **zones;

    zones = ctx->lcf->zones->elts;
    n = ctx->lcf->zones->nelts;

    ctx->nzones = 0;
    ctx->zones = ngx_palloc(r->pool,
                            n * sizeof(ngx_http_aai_ratelimit_zone_t *));
    ctx->keys = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    ctx->results = ngx_pcalloc(r->pool,
                               n * sizeof(ngx_http_aai_ratelimit_result_t));
    ctx->zreq = ngx_palloc(r->pool, n * sizeof(ngx_http_aai_ratelimit_zreq_t));

    if (ctx->zones == NULL || ctx->keys == NULL || ctx->results == NULL
        || ctx->zreq == NULL)
    {
        return NGX_ERROR;
    }

    opts = ctx->lcf->opts ? ctx->lcf->opts->elts : NULL;

    for (i = 0; i < n; i++) {
        zone = zones[i];

        if (ngx_http_complex_value(r, zone->key, &key) != NGX_OK) {
            return NGX_ERROR;
        }

        if (key.len == 0) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai_ratelimit zone \"%V\": empty key, not limited",
                           &zone->name);
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai_ratelimit zone \"%V\" key \"%V\"",
                       &zone->name, &key);

        ngx_http_aai_ratelimit_zreq(r, zone->count, zone->limit,
                                    opts ? opts[i] : NULL,
                                    &ctx->zreq[ctx->nzones]);

        if (opts && opts[i] && opts[i]->charge) {
            ctx->charge = 1;
        }

        if (ctx->zreq[ctx->nzones].limit != zone->limit
            || ctx->zreq[ctx->nzones].cost != 1
            || ctx->zreq[ctx->nzones].shadow)
        {
            ctx->costs = 1;
        }

        if (zone->concurrency) {
            ctx->conc = 1;
        }

        if (key.len > 65535 - zone->name.len - 1) {
            if (ngx_http_aai_ratelimit_long_key(r, zone, &key,
                                                &ctx->keys[ctx->nzones])
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            ctx->zones[ctx->nzones++] = zone;
            continue;
        }

        p = ngx_pnalloc(r->pool, zone->prefix.len + key.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ctx->keys[ctx->nzones].data = p;
        p = ngx_cpymem(p, zone->prefix.data, zone->prefix.len);
        p = ngx_cpymem(p, key.data, key.len);
        ctx->keys[ctx->nzones].len = p - ctx->keys[ctx->nzones].data;

        ctx->zones[ctx->nzones++] = zone;
    }

    return NGX_OK;
}


/*
 * A key too long for the local state (its node keeps the length in 16
 * bits) is limited under its SHA-256: prefix, zone name, "#", 64 hex
 * digits.  A zone name has no "#" and every other key has ":" there, so
 * no key of any zone can name the same counter.  Shorter keys are used as
 * they are.
 */

static ngx_int_t
ngx_http_aai_ratelimit_long_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out)
{
    u_char  *p;
    u_char   md[SHA256_DIGEST_LENGTH];

    p = ngx_pnalloc(r->pool, zone->prefix.len + 2 * SHA256_DIGEST_LENGTH);
    if (p == NULL) {
        return NGX_ERROR;
    }

    SHA256(key->data, key->len, md);

    out->data = p;
    p = ngx_cpymem(p, zone->prefix.data, zone->prefix.len - 1);
    *p++ = '#';
    p = ngx_hex_dump(p, md, SHA256_DIGEST_LENGTH);
    out->len = p - out->data;

    return NGX_OK;
}


/* while Redis answers, a client closing the connection ends the request */

static ngx_int_t
ngx_http_aai_ratelimit_wait(ngx_http_request_t *r)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit waiting for Redis");

    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);

    } else {
        if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->read_event_handler = ngx_http_test_reading;

    return NGX_AGAIN;
}


static ngx_int_t
ngx_http_aai_ratelimit_finish(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    if (ctx->rc != NGX_DECLINED || ctx->delay == 0) {
        return ctx->rc;
    }

    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);

    } else {
        if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_aai_ratelimit_delay;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit delaying the request %M ms", ctx->delay);

    r->connection->write->delayed = 1;
    ngx_add_timer(r->connection->write, ctx->delay);

    return NGX_AGAIN;
}


static void
ngx_http_aai_ratelimit_delay(ngx_http_request_t *r)
{
    ngx_event_t  *wev;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit delay");

    wev = r->connection->write;

    if (wev->delayed) {

        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_aai_ratelimit_header_filter(ngx_http_request_t *r)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL
        || ctx->state != NGX_HTTP_AAI_RL_DONE
        || ctx->headers_sent)
    {
        return ngx_http_next_header_filter(r);
    }

    ctx->headers_sent = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit header filter: zone %i, headers %ui",
                   ctx->top, (ngx_uint_t) ctx->headers);

    if (ngx_http_aai_ratelimit_add_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_aai_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    ctx = ngx_http_aai_ratelimit_get_ctx(r);

    if (ctx == NULL || ctx->status == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->len = ngx_http_aai_ratelimit_status[ctx->status - 1].len;
    v->data = ngx_http_aai_ratelimit_status[ctx->status - 1].data;

    return NGX_OK;
}


static void *
ngx_http_aai_ratelimit_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis = NULL;
     *     mcf->prefix = { 0, NULL };
     *     mcf->shm_zone = NULL;
     */

    if (ngx_array_init(&mcf->zones, cf->pool, 4,
                       sizeof(ngx_http_aai_ratelimit_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    mcf->local_size = NGX_CONF_UNSET_SIZE;

    mcf->metrics = ngx_aai_metrics_create(cf, "ratelimit",
                                          &ngx_http_aai_ratelimit_module);
    if (mcf->metrics == NULL) {
        return NULL;
    }

    if (ngx_http_aai_ratelimit_add_metrics(cf, mcf) != NGX_OK) {
        return NULL;
    }

    return mcf;
}


static char *
ngx_http_aai_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    ngx_shm_zone_t  *shm_zone;

    if (mcf->prefix.data == NULL) {
        ngx_str_set(&mcf->prefix, "aai:rl:");
    }

    ngx_conf_init_size_value(mcf->local_size, 10 * 1024 * 1024);

    if (mcf->zones.nelts == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_http_aai_ratelimit_check_zones(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_aai_ratelimit_xscript_sha(cf, &mcf->xsha) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_aai_ratelimit_script_sha(cf, &mcf->sha) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_aai_ratelimit_library(cf, &mcf->fname, &mcf->xfname,
                                       &mcf->library)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_aai_ratelimit_shm_name,
                                     mcf->local_size,
                                     &ngx_http_aai_ratelimit_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &ngx_http_aai_ratelimit_shm_name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_aai_ratelimit_init_zone;
    shm_zone->data = mcf;

    mcf->shm_zone = shm_zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_str_t   labels;
    ngx_uint_t  i;

    mcf->latency = ngx_aai_metrics_add_redis_latency(mcf->metrics,
                       "aai_ratelimit_redis_latency_seconds",
                       "Latency of the rate limiter's Redis commands.");
    if (mcf->latency == NGX_ERROR) {
        return NGX_ERROR;
    }

    for (i = 0; i < 3; i++) {
        labels.data = ngx_pnalloc(cf->pool, sizeof("reason=\"unavailable\""));
        if (labels.data == NULL) {
            return NGX_ERROR;
        }

        labels.len = ngx_sprintf(labels.data, "reason=\"%s\"",
                                 ngx_http_aai_ratelimit_reasons[i])
                     - labels.data;

        mcf->errors[i] = ngx_aai_metrics_add(mcf->metrics,
                             NGX_AAI_METRIC_COUNTER,
                             "aai_ratelimit_redis_errors_total",
                             "Failed rate limiter Redis commands.", &labels);
        if (mcf->errors[i] == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void *
ngx_http_aai_ratelimit_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_aai_ratelimit_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->zones = NGX_CONF_UNSET_PTR;
    conf->status_code = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->limit_log_level = NGX_CONF_UNSET_UINT;
    conf->headers = NGX_CONF_UNSET;
    conf->fallback = NGX_CONF_UNSET_UINT;

    ngx_aai_jwt_create_loc_conf(&conf->jwt);

    return conf;
}


static char *
ngx_http_aai_ratelimit_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_aai_ratelimit_loc_conf_t *prev = parent;
    ngx_http_aai_ratelimit_loc_conf_t *conf = child;

    if (conf->zones == NGX_CONF_UNSET_PTR) {
        conf->opts = prev->opts;
    }

    ngx_conf_merge_ptr_value(conf->zones, prev->zones, NULL);

    ngx_conf_merge_uint_value(conf->status_code, prev->status_code,
                              NGX_HTTP_TOO_MANY_REQUESTS);

    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);

    ngx_conf_merge_uint_value(conf->limit_log_level, prev->limit_log_level,
                              NGX_LOG_ERR);

    conf->delay_log_level = (conf->limit_log_level == NGX_LOG_INFO) ?
                                NGX_LOG_INFO : conf->limit_log_level + 1;

    ngx_conf_merge_value(conf->headers, prev->headers, 1);

    ngx_conf_merge_uint_value(conf->fallback, prev->fallback,
                              NGX_HTTP_AAI_RL_FALLBACK_ALLOW);

    return ngx_aai_jwt_merge_loc_conf(cf, &prev->jwt, &conf->jwt);
}


/*
 * aai_ratelimit_zone NAME key=EXPR rate=Nr/[K]s|m|h [burst=N]
 *                    [algorithm=sliding|gcra|counter] [nodelay|delay=N];
 */

static char *
ngx_http_aai_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_ratelimit_main_conf_t *mcf = conf;

    char                           *rv;
    ngx_str_t                      *value;
    ngx_uint_t                      i, nodelay;
    ngx_http_aai_ratelimit_zone_t  *zone;

    value = cf->args->elts;

    zone = ngx_http_aai_ratelimit_find_zone(cf, cmd, &value[1]);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (zone->key) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone->file = cf->conf_file->file.name;
    zone->line = cf->conf_file->line;

    nodelay = 0;

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_aai_ratelimit_zone_param(cf, cmd, zone, &value[i],
                                               &nodelay);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (zone->concurrency || zone->lease) {
        if (ngx_http_aai_ratelimit_zone_concurrency(cf, cmd, zone) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (zone->key == NULL || zone->limit == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" \"%V\" must have \"key=\" and \"rate=\" "
                           "parameters", &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    if (nodelay || zone->delay > zone->burst) {
        zone->delay = zone->burst;
    }

    /*
     * GCRA keeps its state in whole microseconds: above 10^6 requests per
     * second the next allowed time would not move, and nothing would be
     * limited.
     */

    if (zone->algorithm == NGX_HTTP_AAI_RL_GCRA
        && zone->window < zone->limit)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "rate \"%V\" of zone \"%V\" in \"%V\" is more "
                           "than 1000000 requests per second, the most "
                           "\"algorithm=gcra\" can count (one microsecond "
                           "per request)", &zone->rate, &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /*
     * A window counter keeps no queue of future admissions: a request
     * over the limit can only be rejected.
     */

    if (zone->algorithm == NGX_HTTP_AAI_RL_COUNTER && zone->burst) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "burst=%ui of zone \"%V\" in \"%V\": "
                           "\"algorithm=counter\" has no burst, a request "
                           "over its limit is rejected (use a higher rate, "
                           "or \"algorithm=sliding\" or \"algorithm=gcra\" "
                           "for a burst)", zone->burst, &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone->period = ngx_max(zone->window / zone->limit, 1);
    zone->window_ms = (ngx_msec_t) ((zone->window + 999) / 1000);
    zone->fast = (zone->algorithm == NGX_HTTP_AAI_RL_SLIDING
                  && zone->burst == 0);

    /* the local fallback: a window admits "limit" at once */

    zone->local_burst = zone->burst;
    zone->local_delay = zone->delay;

    if (zone->algorithm != NGX_HTTP_AAI_RL_GCRA) {
        zone->local_burst += zone->limit - 1;
        zone->local_delay += zone->limit - 1;
    }

    if (zone->local_burst > NGX_HTTP_AAI_RL_MAX_AHEAD / zone->period) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "burst=%ui with rate \"%V\" of zone \"%V\" in "
                           "\"%V\" lets a key run more than 100 years "
                           "ahead: lower the burst or raise the rate",
                           zone->burst, &zone->rate, &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    rv = ngx_http_aai_ratelimit_zone_args(cf, zone);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    return ngx_http_aai_ratelimit_zone_metrics(cf, mcf, zone);
}


/* aai_ratelimit NAME [cost=expression] [charge=expression] | off */

static char *
ngx_http_aai_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_ratelimit_loc_conf_t *lcf = conf;

    ngx_str_t                           *value;
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_zone_t       *zone, **zones, **zp;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (lcf->zones != NGX_CONF_UNSET_PTR || cf->args->nelts > 2) {
            return "is duplicate";
        }

        lcf->zones = NULL;
        return NGX_CONF_OK;
    }

    if (lcf->zones == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V %V\" after \"%V off\"",
                           &cmd->name, &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone = ngx_http_aai_ratelimit_find_zone(cf, cmd, &value[1]);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lcf->zones == NGX_CONF_UNSET_PTR) {
        lcf->zones = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_aai_ratelimit_zone_t *));
        if (lcf->zones == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (lcf->zones->nelts == NGX_HTTP_AAI_RL_BATCH) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many zones in \"%V\", at most %d",
                           &cmd->name, NGX_HTTP_AAI_RL_BATCH);
        return NGX_CONF_ERROR;
    }

    zones = lcf->zones->elts;

    for (i = 0; i < lcf->zones->nelts; i++) {
        if (zones[i] == zone) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate zone \"%V\" in \"%V\"",
                               &value[1], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    zp = ngx_array_push(lcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    if (cf->args->nelts == 2 && lcf->opts == NULL) {
        return NGX_CONF_OK;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    return ngx_http_aai_ratelimit_opts(cf, cmd, &lcf->opts,
                                       lcf->zones->nelts - 1, &value[2],
                                       cf->args->nelts - 2, &value[1],
                                       mcf->metrics, &zone->charge_metrics);
}


/* aai_ratelimit_local_zone's post handler: the size's lower bound */

static char *
ngx_http_aai_ratelimit_local_zone(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    ngx_str_t  *value;

    if (*sp >= 8 * ngx_pagesize) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "value \"%V\" in \"%V\" directive is too small, "
                       "it must be at least %uzk",
                       &value[1], &value[0], 8 * ngx_pagesize / 1024);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_aai_ratelimit_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_aai_ratelimit_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    /* ngx_aai_jwt.c: its conf is our "jwt", its request state in our ctx */

    return ngx_aai_jwt_add_variables(cf, &ngx_http_aai_ratelimit_module,
               offsetof(ngx_http_aai_ratelimit_loc_conf_t, jwt),
               ngx_http_aai_ratelimit_jwt_ctx);
}


static ngx_int_t
ngx_http_aai_ratelimit_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt                 *h;
    ngx_http_core_main_conf_t           *cmcf;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    if (mcf->redis
        && ngx_aai_redis_metrics(mcf->redis, mcf->metrics, "ratelimit")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_aai_metrics_zone(cf, mcf->metrics) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_aai_jwt_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mcf->zones.nelts == 0) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_ratelimit_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_ratelimit_log_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_aai_ratelimit_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_init_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL) {
        return NGX_OK;
    }

    ngx_http_aai_ratelimit_batch_init();

    ngx_http_aai_ratelimit_charge_init(mcf->metrics, cycle->log);
    ngx_http_aai_ratelimit_lease_init();

    return ngx_aai_redis_init_worker(mcf->redis, cycle);
}


static void
ngx_http_aai_ratelimit_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL) {
        return;
    }

    /* the handlers of commands in flight are not called: free their batches */

    ngx_aai_redis_exit_worker(mcf->redis);

    ngx_http_aai_ratelimit_batch_exit();

    ngx_http_aai_ratelimit_charge_exit();
}

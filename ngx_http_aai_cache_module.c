
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_module: an HTTP response cache shared by every nginx
 * instance through Redis.
 *
 * A request of a cached location is looked up in the precontent phase,
 * after access control and the rate limiter, with one GET (an MGET when the
 * resource is known to vary) that never blocks the worker.  A hit is sent
 * from the entry and the upstream never sees the request.  A miss goes on
 * to the content handler; the header and body filters copy the response as
 * it passes, and once its last buffer has been passed on, the entry is
 * stored with one command nobody waits for.
 *
 * Redis keys, for P = aai_cache_key_prefix and H = hex(SHA-256(cache key)):
 *
 *     P H            the entry, or a vary record: the names of the request
 *                    headers the response varies on
 *     P H ":" V      the entry of one variant, V = hex of the first 16
 *                    bytes of SHA-256(H, names, request header values)
 *     P H ":v"       the set of the variant keys of H, for purge
 *     K ":l"         the update lock of entry key K (aai_cache_lock)
 *
 * The holder of a lock publishes "1 K:l" (stored) or "0 K:l" (not stored)
 * on the channel NGX_HTTP_AAI_CACHE_CHANNEL when it is done; the requests
 * waiting for it, on any instance, wake up at once.
 *
 * The entry format is described in ngx_aai_cache_entry.h.
 * The files of the module and what each holds: ngx_http_aai_cache.h.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"
#include "ngx_aai_conf.h"


static ngx_int_t ngx_http_aai_cache_handler(ngx_http_request_t *r);
static void ngx_http_aai_cache_cleanup(void *data);
static ngx_int_t ngx_http_aai_cache_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_cache_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_aai_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static void *ngx_http_aai_cache_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_aai_cache_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_aai_cache_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_aai_cache_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_aai_cache_valid(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_methods(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_use_stale(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_aai_cache_prefix(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_max_size(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_aai_cache_purge(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_aai_cache_list(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_aai_cache_credential(ngx_conf_t *cf,
    ngx_array_t *a, ngx_str_t *value);
static ngx_int_t ngx_http_aai_cache_control_name(ngx_conf_t *cf,
    ngx_array_t *a, ngx_str_t *value);
static ngx_int_t ngx_http_aai_cache_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_cache_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_aai_cache_init_process(ngx_cycle_t *cycle);
static void ngx_http_aai_cache_exit_process(ngx_cycle_t *cycle);


ngx_str_t  ngx_http_aai_cache_status_names[] = {
    ngx_null_string,
    ngx_string("MISS"),
    ngx_string("BYPASS"),
    ngx_string("EXPIRED"),
    ngx_string("STALE"),
    ngx_string("UPDATING"),
    ngx_string("HIT"),
    ngx_string("REVALIDATED")
};


/* a directive of "off | item ...", cmd->post of ngx_http_aai_cache_list() */
typedef struct {
    size_t                        size;        /* of an element */
    ngx_int_t                   (*add)(ngx_conf_t *cf, ngx_array_t *a,
                                       ngx_str_t *value);
    const char                   *what;        /* for the error message */
    const char                   *hint;
} ngx_http_aai_cache_list_t;


static ngx_http_aai_cache_list_t  ngx_http_aai_cache_credentials_list = {
    sizeof(ngx_int_t), ngx_http_aai_cache_credential, "credential",
    "a request header name or a $variable"
};


static ngx_http_aai_cache_list_t  ngx_http_aai_cache_control_field_list = {
    sizeof(ngx_str_t), ngx_http_aai_cache_control_name, "field",
    "a response header name"
};


static ngx_aai_redis_post_t  ngx_http_aai_cache_redis_post = {
    NULL, offsetof(ngx_http_aai_cache_main_conf_t, redis)
};


static ngx_aai_conf_post_t  ngx_http_aai_cache_max_size_post = {
    ngx_http_aai_cache_max_size, "size", 0, NGX_HTTP_AAI_CACHE_MAX_SIZE
};


static ngx_aai_conf_post_t  ngx_http_aai_cache_lock_timeout_post = {
    ngx_aai_conf_check_bounds, "time", 1, -1
};


static ngx_aai_conf_post_t  ngx_http_aai_cache_stale_ttl_post = {
    ngx_aai_conf_check_bounds, "time", 0, -1
};


static ngx_aai_conf_post_t  ngx_http_aai_cache_revalidate_ttl_post = {
    ngx_aai_conf_check_bounds, "time", 0, -1
};


static ngx_command_t  ngx_http_aai_cache_commands[] = {

    { ngx_string("aai_cache_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_aai_redis_conf_set_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_main_conf_t, redis_conf),
      &ngx_http_aai_cache_redis_post },

    { ngx_string("aai_cache_store_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_main_conf_t, store_timeout),
      NULL },

    { ngx_string("aai_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, enable),
      NULL },

    { ngx_string("aai_cache_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, key),
      NULL },

    { ngx_string("aai_cache_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_aai_cache_prefix,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, prefix),
      NULL },

    { ngx_string("aai_cache_valid"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_valid,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, valid),
      NULL },

    { ngx_string("aai_cache_methods"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_methods,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, methods),
      NULL },

    { ngx_string("aai_cache_max_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, max_size),
      &ngx_http_aai_cache_max_size_post },

    { ngx_string("aai_cache_bypass"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_set_predicate_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, bypass),
      NULL },

    { ngx_string("aai_cache_no_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_set_predicate_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, no_store),
      NULL },

    { ngx_string("aai_cache_lock"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, lock),
      NULL },

    { ngx_string("aai_cache_lock_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, lock_timeout),
      &ngx_http_aai_cache_lock_timeout_post },

    { ngx_string("aai_cache_use_stale"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_use_stale,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, use_stale),
      NULL },

    { ngx_string("aai_cache_background_update"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, background_update),
      NULL },

    { ngx_string("aai_cache_stale_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, stale_ttl),
      &ngx_http_aai_cache_stale_ttl_post },

    { ngx_string("aai_cache_revalidate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, revalidate),
      NULL },

    { ngx_string("aai_cache_revalidate_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_aai_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, revalidate_ttl),
      &ngx_http_aai_cache_revalidate_ttl_post },

    { ngx_string("aai_cache_credentials"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_list,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, credentials),
      &ngx_http_aai_cache_credentials_list },

    { ngx_string("aai_cache_control_field"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_aai_cache_list,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_aai_cache_loc_conf_t, control_fields),
      &ngx_http_aai_cache_control_field_list },

    { ngx_string("aai_cache_purge"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_aai_cache_purge,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    NGX_AAI_METRICS_COMMAND,

      ngx_null_command
};


static ngx_http_module_t  ngx_http_aai_cache_module_ctx = {
    ngx_http_aai_cache_add_variables,      /* preconfiguration */
    ngx_http_aai_cache_init,               /* postconfiguration */

    ngx_http_aai_cache_create_main_conf,   /* create main configuration */
    ngx_http_aai_cache_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_aai_cache_create_loc_conf,    /* create location configuration */
    ngx_http_aai_cache_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_aai_cache_module = {
    NGX_MODULE_V1,
    &ngx_http_aai_cache_module_ctx,        /* module context */
    ngx_http_aai_cache_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_aai_cache_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_aai_cache_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_aai_cache_vars[] = {

    { ngx_string("aai_cache_status"), NULL,
      ngx_http_aai_cache_status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("aai_cache_key"), NULL,
      ngx_http_aai_cache_key_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_conf_bitmask_t  ngx_http_aai_cache_stale_masks[] = {
    { ngx_string("error"), NGX_HTTP_AAI_CACHE_STALE_ERROR },
    { ngx_string("timeout"), NGX_HTTP_AAI_CACHE_STALE_TIMEOUT },
    { ngx_string("updating"), NGX_HTTP_AAI_CACHE_STALE_UPDATING },
    { ngx_string("http_500"), NGX_HTTP_AAI_CACHE_STALE_500 },
    { ngx_string("http_502"), NGX_HTTP_AAI_CACHE_STALE_502 },
    { ngx_string("http_503"), NGX_HTTP_AAI_CACHE_STALE_503 },
    { ngx_string("http_504"), NGX_HTTP_AAI_CACHE_STALE_504 },
    { ngx_null_string, 0 }
};


ngx_conf_bitmask_t  ngx_http_aai_cache_method_masks[] = {
    { ngx_string("GET"), NGX_HTTP_GET },
    { ngx_string("HEAD"), NGX_HTTP_HEAD },
    { ngx_string("POST"), NGX_HTTP_POST },
    { ngx_null_string, 0 }
};


/* per worker */
ngx_http_aai_cache_main_conf_t  *ngx_http_aai_cache_worker;
static ngx_connection_t          ngx_http_aai_cache_dummy;


static ngx_int_t
ngx_http_aai_cache_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_loc_conf_t   *alcf;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx) {
        if (ctx->state == NGX_HTTP_AAI_CACHE_ST_DONE) {
            return NGX_DECLINED;
        }

        /* a Redis reply is pending */
        return NGX_AGAIN;
    }

    if (r != r->main) {
        return NGX_DECLINED;
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (!alcf->enable || !(r->method & alcf->methods)) {
        return NGX_DECLINED;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    if (amcf->redis == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_aai_cache_create_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ctx->credentialed = ngx_http_aai_cache_credentialed(r, alcf);

    if (ngx_http_aai_cache_make_key(r, alcf, &ctx->key, ctx->digest)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (alcf->bypass) {
        rc = ngx_http_test_predicates(r, alcf->bypass);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_DECLINED) {
            ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_BYPASS);
            return NGX_DECLINED;
        }
    }

    rc = ngx_http_aai_cache_lookup(r, ctx);

    if (rc == NGX_AGAIN) {
        ctx->suspended = 1;
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ctx->detail = "redis-unavailable";
    ngx_http_aai_cache_forward(r, ctx, NGX_HTTP_AAI_CACHE_MISS);

    return NGX_DECLINED;
}


ngx_http_aai_cache_ctx_t *
ngx_http_aai_cache_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_cache_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_aai_cache_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ctx->clen = -1;

    ngx_http_set_ctx(r, ctx, ngx_http_aai_cache_module);

    return ctx;
}


static void
ngx_http_aai_cache_cleanup(void *data)
{
    ngx_http_aai_cache_ctx_t *ctx = data;

    if (ctx->cmd) {
        ngx_aai_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }

    ngx_http_aai_cache_unwait(ctx);

    if (ctx->lease_ev.timer_set) {
        ngx_del_timer(&ctx->lease_ev);
    }

    /* the request is going away: its pool is no place to log to */

    ngx_http_aai_cache_release(ctx, 0, ngx_cycle->log);

    if (ctx->buf) {
        ngx_free(ctx->buf);
        ctx->buf = NULL;
    }
}


static ngx_int_t
ngx_http_aai_cache_log_handler(ngx_http_request_t *r)
{
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_main_conf_t  *amcf;

    if (r != r->main) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->status == NGX_HTTP_AAI_CACHE_NONE) {
        return NGX_OK;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    ngx_aai_metrics_inc(amcf->metrics, amcf->m_requests[ctx->status], 1);

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->status == NGX_HTTP_AAI_CACHE_NONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ngx_http_aai_cache_status_names[ctx->status].len;
    v->data = ngx_http_aai_cache_status_names[ctx->status].data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *key;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_aai_cache_module);

    if (ctx == NULL || ctx->key.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    key = ctx->store_key.len ? &ctx->store_key
          : ctx->vkey.len ? &ctx->vkey : &ctx->key;

    v->len = key->len;
    v->data = key->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static void *
ngx_http_aai_cache_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_cache_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->redis_conf = { 0 };
     *     amcf->redis = NULL;
     *     amcf->metrics = NULL;
     *     amcf->store = NULL;
     */

    amcf->store_timeout = NGX_CONF_UNSET_MSEC;

    return amcf;
}


static char *
ngx_http_aai_cache_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_aai_cache_main_conf_t *amcf = conf;

    ngx_str_t                          value;
    ngx_http_compile_complex_value_t   ccv;

    ngx_str_set(&value, NGX_HTTP_AAI_CACHE_DEFAULT_KEY);

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value;
    ccv.complex_value = &amcf->default_key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(amcf->store_timeout, 10000);

    if (amcf->redis == NULL) {
        return NGX_CONF_OK;
    }

    /*
     * Stores go on a connection of their own: a large entry never holds up
     * a lookup on the same connection, and its store failing never fails
     * the lookups in flight with it.
     */

    amcf->store_conf = amcf->redis_conf;
    amcf->store_conf.timeout = ngx_max(amcf->store_timeout,
                                       amcf->redis_conf.timeout);
    amcf->store_conf.connections = 1;

    amcf->store = ngx_aai_redis_create(cf, &amcf->store_conf);
    if (amcf->store == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_aai_cache_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_aai_cache_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_cache_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->key = NULL;
     *     conf->prefix = { 0, NULL };
     *     conf->methods = 0;
     *     conf->purge_key = NULL;
     */

    conf->enable = NGX_CONF_UNSET;
    conf->valid = NGX_CONF_UNSET_PTR;
    conf->max_size = NGX_CONF_UNSET_SIZE;
    conf->bypass = NGX_CONF_UNSET_PTR;
    conf->no_store = NGX_CONF_UNSET_PTR;
    conf->lock = NGX_CONF_UNSET;
    conf->lock_timeout = NGX_CONF_UNSET_MSEC;
    conf->use_stale = NGX_CONF_UNSET_UINT;
    conf->background_update = NGX_CONF_UNSET;
    conf->stale_ttl = NGX_CONF_UNSET;
    conf->revalidate = NGX_CONF_UNSET;
    conf->revalidate_ttl = NGX_CONF_UNSET;
    conf->credentials = NGX_CONF_UNSET_PTR;
    conf->control_fields = NGX_CONF_UNSET_PTR;
    conf->purge = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_aai_cache_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_aai_cache_loc_conf_t *prev = parent;
    ngx_http_aai_cache_loc_conf_t *conf = child;

    ngx_str_t                        name, *fname;
    ngx_http_aai_cache_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);

    if (conf->key == NULL) {
        conf->key = prev->key;
    }

    ngx_conf_merge_str_value(conf->prefix, prev->prefix, "aai:c:");
    ngx_conf_merge_ptr_value(conf->valid, prev->valid, NULL);

    if (conf->methods == 0) {
        conf->methods = prev->methods ? prev->methods
                                      : (NGX_HTTP_GET|NGX_HTTP_HEAD);
    }

    ngx_conf_merge_size_value(conf->max_size, prev->max_size, 1024 * 1024);
    ngx_conf_merge_ptr_value(conf->bypass, prev->bypass, NULL);
    ngx_conf_merge_ptr_value(conf->no_store, prev->no_store, NULL);
    ngx_conf_merge_value(conf->lock, prev->lock, 0);
    ngx_conf_merge_msec_value(conf->lock_timeout, prev->lock_timeout, 5000);
    ngx_conf_merge_uint_value(conf->use_stale, prev->use_stale, 0);
    ngx_conf_merge_value(conf->background_update, prev->background_update,
                         0);
    ngx_conf_merge_sec_value(conf->stale_ttl, prev->stale_ttl, 600);
    ngx_conf_merge_value(conf->revalidate, prev->revalidate, 0);
    ngx_conf_merge_sec_value(conf->revalidate_ttl, prev->revalidate_ttl,
                             600);

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_cache_module);

    if (conf->credentials == NGX_CONF_UNSET_PTR) {
        conf->credentials = prev->credentials;
    }

    if (conf->credentials == NGX_CONF_UNSET_PTR) {

        /* the default: aai_cache_credentials Authorization Cookie; */

        if (amcf->credentials == NULL) {
            amcf->credentials = ngx_array_create(cf->pool, 2,
                                                 sizeof(ngx_int_t));
            if (amcf->credentials == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_str_set(&name, "Authorization");

            if (ngx_http_aai_cache_credential(cf, amcf->credentials, &name)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            ngx_str_set(&name, "Cookie");

            if (ngx_http_aai_cache_credential(cf, amcf->credentials, &name)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        }

        conf->credentials = amcf->credentials;
    }

    if (conf->control_fields == NGX_CONF_UNSET_PTR) {
        conf->control_fields = prev->control_fields;
    }

    if (conf->control_fields == NGX_CONF_UNSET_PTR) {

        /* the default: aai_cache_control_field CDN-Cache-Control; */

        conf->control_fields = ngx_array_create(cf->pool, 1,
                                                sizeof(ngx_str_t));
        if (conf->control_fields == NULL) {
            return NGX_CONF_ERROR;
        }

        fname = ngx_array_push(conf->control_fields);
        if (fname == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_str_set(fname, "CDN-Cache-Control");
    }

    /* aai_cache_purge is not inherited */

    if (conf->purge == NGX_CONF_UNSET) {
        conf->purge = 0;
    }

    if (conf->enable || conf->purge) {
        amcf->used = 1;
    }

    if (conf->enable && conf->lock) {
        amcf->lock_used = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_valid(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    time_t                       valid;
    ngx_int_t                    status;
    ngx_str_t                   *value;
    ngx_uint_t                   i, n;
    ngx_http_aai_cache_valid_t  *v;

    static ngx_uint_t  defaults[] = { 200, 301, 302 };

    value = cf->args->elts;
    n = cf->args->nelts - 1;

    valid = ngx_parse_time(&value[n], 1);
    if (valid == (time_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"%V\"",
                           &value[n], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (alcf->valid == NGX_CONF_UNSET_PTR) {
        alcf->valid = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_http_aai_cache_valid_t));
        if (alcf->valid == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (n == 1) {
        for (i = 0; i < 3; i++) {
            v = ngx_array_push(alcf->valid);
            if (v == NULL) {
                return NGX_CONF_ERROR;
            }

            v->status = defaults[i];
            v->valid = valid;
        }

        return NGX_CONF_OK;
    }

    for (i = 1; i < n; i++) {

        if (ngx_strcmp(value[i].data, "any") == 0) {
            status = 0;

        } else {
            status = ngx_atoi(value[i].data, value[i].len);

            if (status < NGX_HTTP_OK || status > 599
                || status == NGX_HTTP_PARTIAL_CONTENT
                || status == NGX_HTTP_NOT_MODIFIED)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid status \"%V\" in \"%V\"",
                                   &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }
        }

        v = ngx_array_push(alcf->valid);
        if (v == NULL) {
            return NGX_CONF_ERROR;
        }

        v->status = status;
        v->valid = valid;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_methods(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t           *value;
    ngx_uint_t           i;
    ngx_conf_bitmask_t  *m;

    if (alcf->methods) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        for (m = ngx_http_aai_cache_method_masks; m->name.len; m++) {
            if (m->name.len == value[i].len
                && ngx_strncasecmp(m->name.data, value[i].data,
                                   value[i].len) == 0)
            {
                break;
            }
        }

        if (m->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid method \"%V\" in \"%V\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        alcf->methods |= m->mask;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_use_stale(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t           *value;
    ngx_uint_t           i;
    ngx_conf_bitmask_t  *m;

    if (alcf->use_stale != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    alcf->use_stale = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "off") == 0) {
            if (cf->args->nelts != 2) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"off\" cannot be combined with other "
                                   "values in \"%V\"", &cmd->name);
                return NGX_CONF_ERROR;
            }

            return NGX_CONF_OK;
        }

        for (m = ngx_http_aai_cache_stale_masks; m->name.len; m++) {
            if (m->name.len == value[i].len
                && ngx_strncmp(m->name.data, value[i].data,
                               value[i].len) == 0)
            {
                break;
            }
        }

        if (m->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\"",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        alcf->use_stale |= m->mask;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_cache_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (alcf->prefix.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len > 128) {
        goto invalid;
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] <= ' ' || value[1].data[i] >= 0x7f) {
            goto invalid;
        }
    }

    alcf->prefix = value[1];

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid prefix \"%V\" in \"%V\": at most 128 "
                       "printable characters without spaces",
                       &value[1], &cmd->name);
    return NGX_CONF_ERROR;
}


/* aai_cache_max_size's post handler: what one Redis value can hold */

static char *
ngx_http_aai_cache_max_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    ngx_str_t  *value;

    if (*sp <= NGX_HTTP_AAI_CACHE_MAX_SIZE) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "size \"%V\" in \"%V\" is over 512m less 1m "
                       "for the entry's headers: Redis stores values of "
                       "512m at most (proto-max-bulk-len)",
                       &value[1], &value[0]);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_aai_cache_purge(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_aai_cache_loc_conf_t *alcf = conf;

    ngx_str_t                         *value;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_compile_complex_value_t   ccv;

    if (alcf->purge != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    alcf->purge = 1;

    if (cf->args->nelts == 2) {
        value = cf->args->elts;

        alcf->purge_key = ngx_palloc(cf->pool,
                                     sizeof(ngx_http_complex_value_t));
        if (alcf->purge_key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &value[1];
        ccv.complex_value = alcf->purge_key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_aai_cache_purge_handler;

    return NGX_CONF_OK;
}


/*
 * aai_cache_credentials off | credential ...;  a credential is a request
 * header name or a $variable; the request carries a credential when one
 * of them is not empty.
 *
 * aai_cache_control_field off | Name ...;  targeted fields, RFC 9213.
 *
 * "off" leaves the array NULL; each item is added to it by cmd->post's
 * add(), which fails on an invalid one.
 */

static char *
ngx_http_aai_cache_list(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_str_t                   *value;
    ngx_uint_t                   i;
    ngx_array_t                **a;
    ngx_http_aai_cache_list_t   *list;

    list = cmd->post;
    a = (ngx_array_t **) (p + cmd->offset);

    if (*a != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && value[1].len == 3
        && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        *a = NULL;
        return NGX_CONF_OK;
    }

    *a = ngx_array_create(cf->pool, cf->args->nelts - 1, list->size);
    if (*a == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        if (list->add(cf, *a, &value[i]) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid %s \"%V\" in \"%V\": %s",
                               list->what, &value[i], &cmd->name,
                               list->hint);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* "Name" is the variable $http_name, "$name" the variable $name */

static ngx_int_t
ngx_http_aai_cache_credential(ngx_conf_t *cf, ngx_array_t *a,
    ngx_str_t *value)
{
    u_char     *p;
    ngx_int_t  *index;
    ngx_str_t   name;
    ngx_uint_t  i;

    if (value->len > 1 && value->data[0] == '$') {
        name.data = value->data + 1;
        name.len = value->len - 1;

    } else {
        if (value->len == 0 || value->len > 256) {
            return NGX_ERROR;
        }

        name.len = sizeof("http_") - 1 + value->len;
        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(name.data, "http_", sizeof("http_") - 1);

        for (i = 0; i < value->len; i++) {
            if (value->data[i] == '-') {
                *p++ = '_';

            } else if ((value->data[i] >= 'a' && value->data[i] <= 'z')
                       || (value->data[i] >= 'A' && value->data[i] <= 'Z')
                       || (value->data[i] >= '0' && value->data[i] <= '9')
                       || value->data[i] == '_')
            {
                *p++ = ngx_tolower(value->data[i]);

            } else {
                return NGX_ERROR;
            }
        }
    }

    index = ngx_array_push(a);
    if (index == NULL) {
        return NGX_ERROR;
    }

    *index = ngx_http_get_variable_index(cf, &name);

    if (*index == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a field name of aai_cache_control_field: a token (RFC 9110, 5.1) */

static ngx_int_t
ngx_http_aai_cache_control_name(ngx_conf_t *cf, ngx_array_t *a,
    ngx_str_t *value)
{
    u_char     *p;
    ngx_str_t  *name;

    for (p = value->data; p < value->data + value->len; p++) {
        if (!((*p >= '0' && *p <= '9')
              || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')
              || *p == '-' || *p == '_' || *p == '.'))
        {
            return NGX_ERROR;
        }
    }

    if (value->len == 0 || value->len > 256) {
        return NGX_ERROR;
    }

    name = ngx_array_push(a);
    if (name == NULL) {
        return NGX_ERROR;
    }

    *name = *value;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_aai_cache_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt             *h;
    ngx_http_core_main_conf_t       *cmcf;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_aai_cache_module);

    if (amcf->used && amcf->redis == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"aai_cache\" and \"aai_cache_purge\" need "
                           "\"aai_cache_redis\" in the http block");
        return NGX_ERROR;
    }

    if (ngx_http_aai_cache_add_metrics(cf, amcf) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_aai_cache_crc32_init();

    if (!amcf->used) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_cache_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_aai_cache_log_handler;

    ngx_http_aai_cache_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_aai_cache_header_filter;

    ngx_http_aai_cache_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_aai_cache_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_cache_init_process(ngx_cycle_t *cycle)
{
    ngx_str_t                        channel;
    ngx_uint_t                       i;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_aai_cache_module);

    if (amcf == NULL || amcf->redis == NULL) {
        return NGX_OK;
    }

    ngx_http_aai_cache_worker = amcf;

    ngx_http_aai_cache_dummy.fd = (ngx_socket_t) -1;
    ngx_http_aai_cache_orphans_ev.data = &ngx_http_aai_cache_dummy;
    ngx_http_aai_cache_orphans_ev.handler = ngx_http_aai_cache_orphans_handler;
    ngx_http_aai_cache_orphans_ev.log = cycle->log;
    ngx_http_aai_cache_orphans_ev.cancelable = 1;

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    ngx_http_aai_cache_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    ngx_http_aai_cache_md = (EVP_MD *) EVP_sha256();
#endif

    if (ngx_http_aai_cache_md) {
        ngx_http_aai_cache_md_ctx = EVP_MD_CTX_new();
    }

    for (i = 0; i < NGX_HTTP_AAI_CACHE_BUCKETS; i++) {
        ngx_queue_init(&ngx_http_aai_cache_waiters[i]);
    }

    if (amcf->lock_used) {
        ngx_str_set(&channel, NGX_HTTP_AAI_CACHE_CHANNEL);

        if (ngx_aai_redis_subscribe(amcf->redis, &channel, 0,
                                    ngx_http_aai_cache_message, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_aai_redis_init_worker(amcf->store, cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_aai_redis_init_worker(amcf->redis, cycle);
}


static void
ngx_http_aai_cache_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    /* the handlers called now (with an error) send nothing more */

    ngx_http_aai_cache_worker = NULL;

    if (amcf && amcf->redis) {
        ngx_aai_redis_exit_worker(amcf->store);
        ngx_aai_redis_exit_worker(amcf->redis);
    }

    if (ngx_http_aai_cache_md_ctx) {
        EVP_MD_CTX_free(ngx_http_aai_cache_md_ctx);
        ngx_http_aai_cache_md_ctx = NULL;
    }

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    if (ngx_http_aai_cache_md) {
        EVP_MD_free(ngx_http_aai_cache_md);
    }
#endif

    ngx_http_aai_cache_md = NULL;
}


/*
 * Copyright (C) aai-nginx authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/crypto.h>

#include "ngx_aai_jwt.h"


#define NGX_AAI_JWT_DEFAULT_CACHE   1024
#define NGX_AAI_JWT_MAX_KEY_FILE    1048576

/* rejected tokens logged per second and worker, the rest counted */
#define NGX_AAI_JWT_LOG_RATE        10


typedef struct ngx_aai_jwt_entry_s  ngx_aai_jwt_entry_t;

/* a verified token in the per-worker cache */
struct ngx_aai_jwt_entry_s {
    ngx_queue_t                 queue;       /* LRU, most recent first */
    ngx_aai_jwt_entry_t        *next;        /* hash chain */
    uint32_t                    hash;
    uint64_t                    profile;
    int64_t                     exp;
    int64_t                     nbf;
    unsigned                    has_exp:1;
    unsigned                    has_nbf:1;
    ngx_str_t                   token;
    ngx_aai_jwt_str_t           sub;
    ngx_aai_jwt_str_t          *claims;
    ngx_uint_t                  nclaims;
};


typedef struct {
    ngx_aai_jwt_entry_t       **buckets;
    ngx_uint_t                  mask;
    ngx_uint_t                  count;
    ngx_uint_t                  max;
    ngx_queue_t                 lru;
} ngx_aai_jwt_cache_t;


static ngx_aai_jwt_loc_conf_t *ngx_aai_jwt_conf(void *conf,
    ngx_command_t *cmd);
static char *ngx_aai_jwt_conf_secret(ngx_conf_t *cf, ngx_str_t *source,
    ngx_aai_jwt_key_t *key);
static char *ngx_aai_jwt_conf_pkey(ngx_conf_t *cf, ngx_str_t *source,
    ngx_aai_jwt_key_t *key);
static ngx_int_t ngx_aai_jwt_read_file(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *out);
static void ngx_aai_jwt_cleanup_secret(void *data);
static void ngx_aai_jwt_cleanup_pkey(void *data);
static ngx_uint_t ngx_aai_jwt_str_same(ngx_str_t *one, ngx_str_t *two);

static ngx_aai_jwt_loc_conf_t *ngx_aai_jwt_get_conf(ngx_http_request_t *r);
static ngx_uint_t ngx_aai_jwt_same_checks(ngx_aai_jwt_loc_conf_t *one,
    ngx_aai_jwt_loc_conf_t *two);
static ngx_int_t ngx_aai_jwt_find_token(ngx_http_request_t *r,
    ngx_aai_jwt_loc_conf_t *jcf, ngx_str_t *token);
static ngx_uint_t ngx_aai_jwt_bearer(ngx_str_t *value, ngx_str_t *token);
static ngx_int_t ngx_aai_jwt_verify_token(ngx_http_request_t *r,
    ngx_aai_jwt_loc_conf_t *jcf, ngx_aai_jwt_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_aai_jwt_set_result(ngx_http_request_t *r,
    ngx_aai_jwt_ctx_t *ctx, ngx_aai_jwt_str_t *sub,
    ngx_aai_jwt_str_t *claims, ngx_uint_t nclaims);
static void ngx_aai_jwt_log_rejected(ngx_http_request_t *r,
    ngx_uint_t status, const char *reason);

static uint32_t ngx_aai_jwt_hash(ngx_str_t *token, uint64_t profile);
static ngx_int_t ngx_aai_jwt_cache_get(ngx_http_request_t *r,
    ngx_aai_jwt_loc_conf_t *jcf, ngx_aai_jwt_ctx_t *ctx, ngx_str_t *token);
static void ngx_aai_jwt_cache_put(ngx_http_request_t *r,
    ngx_aai_jwt_loc_conf_t *jcf, ngx_str_t *token, ngx_aai_jwt_verify_t *v);
static ngx_int_t ngx_aai_jwt_cache_init(ngx_log_t *log, ngx_uint_t max);
static void ngx_aai_jwt_cache_remove(ngx_aai_jwt_entry_t *e);

static ngx_int_t ngx_aai_jwt_user_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_aai_jwt_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_aai_jwt_anon_ip_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_aai_jwt_claim_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static ngx_int_t ngx_aai_jwt_access_handler(ngx_http_request_t *r);


static ngx_http_variable_t  ngx_aai_jwt_vars[] = {

    { ngx_string("aai_user"), NULL, ngx_aai_jwt_user_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("aai_jwt_status"), NULL, ngx_aai_jwt_status_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("aai_anon_ip"), NULL, ngx_aai_jwt_anon_ip_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* the bounds of aai_jwt_leeway and aai_jwt_cache (NGX_AAI_JWT_COMMANDS) */
ngx_aai_conf_post_t  ngx_aai_jwt_leeway_post = {
    ngx_aai_conf_check_bounds, "leeway", 0, -1
};

ngx_aai_conf_post_t  ngx_aai_jwt_cache_post = {
    ngx_aai_conf_check_bounds, "cache size", 0, NGX_AAI_JWT_MAX_CACHE
};


/*
 * The module that embeds us (the rate limiter), where NGX_AAI_JWT_COMMANDS()
 * put our conf in its location conf, and how to get our request state from
 * its request ctx: what it passed to ngx_aai_jwt_add_variables().
 */
static ngx_module_t            *ngx_aai_jwt_owner;
static ngx_uint_t               ngx_aai_jwt_offset = NGX_CONF_UNSET_UINT;
static ngx_aai_jwt_get_ctx_pt   ngx_aai_jwt_get_ctx;

/* identifies confs with the same keys, issuer and audience (cache keys) */
static uint64_t             ngx_aai_jwt_profiles;

/* per worker: the verifier's work buffer and the verified-token cache */
static u_char               ngx_aai_jwt_buf[NGX_AAI_JWT_BUF_SIZE];
static ngx_aai_jwt_cache_t  ngx_aai_jwt_cache;


static ngx_aai_jwt_loc_conf_t *
ngx_aai_jwt_conf(void *conf, ngx_command_t *cmd)
{
    return (ngx_aai_jwt_loc_conf_t *) ((u_char *) conf + cmd->offset);
}


char *
ngx_aai_jwt_conf_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_aai_jwt_loc_conf_t *jcf = ngx_aai_jwt_conf(conf, cmd);

    int                 alg;
    ngx_str_t          *value;
    ngx_aai_jwt_key_t  *key;

    value = cf->args->elts;

    alg = ngx_aai_jwt_alg_by_name(value[1].data, value[1].len);
    if (alg == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid algorithm \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3
        && ngx_strncmp(value[2].data, "kid=", 4) == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no key after \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (jcf->keys == NGX_CONF_UNSET_PTR) {
        jcf->keys = ngx_array_create(cf->pool, 2, sizeof(ngx_aai_jwt_key_t));
        if (jcf->keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    key = ngx_array_push(jcf->keys);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(key, sizeof(ngx_aai_jwt_key_t));

    key->alg = alg;

    if (cf->args->nelts == 4) {
        if (value[3].len < 5 || ngx_strncmp(value[3].data, "kid=", 4) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" in \"%V\"",
                               &value[3], &cmd->name);
            return NGX_CONF_ERROR;
        }

        key->kid.len = value[3].len - 4;
        key->kid.data = value[3].data + 4;
    }

    if (ngx_aai_jwt_alg_is_hmac(alg)) {
        return ngx_aai_jwt_conf_secret(cf, &value[2], key);
    }

    return ngx_aai_jwt_conf_pkey(cf, &value[2], key);
}


/* an HMAC secret: env:NAME, file=PATH (one final newline dropped) or as is */

static char *
ngx_aai_jwt_conf_secret(ngx_conf_t *cf, ngx_str_t *source,
    ngx_aai_jwt_key_t *key)
{
    size_t               min;
    u_char              *env;
    ngx_str_t            secret, name, *saved;
    ngx_pool_cleanup_t  *cln;

    if (ngx_strncmp(source->data, "env:", 4) == 0) {

        if (source->len == 4) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no variable name in \"%V\" "
                               "in \"aai_jwt_key\"", source);
            return NGX_CONF_ERROR;
        }

        env = (u_char *) getenv((char *) source->data + 4);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable \"%s\" is not set "
                               "or empty in \"aai_jwt_key\"",
                               source->data + 4);
            return NGX_CONF_ERROR;
        }

        secret.len = ngx_strlen(env);
        secret.data = env;

    } else if (ngx_strncmp(source->data, "file=", 5) == 0) {
        name.len = source->len - 5;
        name.data = source->data + 5;

        if (ngx_aai_jwt_read_file(cf, &name, &secret) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (secret.len && secret.data[secret.len - 1] == '\n') {
            secret.len--;

            if (secret.len && secret.data[secret.len - 1] == '\r') {
                secret.len--;
            }
        }

        if (secret.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty secret in \"%V\" in \"aai_jwt_key\"",
                               &name);
            return NGX_CONF_ERROR;
        }

    } else {
        secret = *source;
    }

    min = (key->alg == NGX_AAI_JWT_HS256) ? 32
          : (key->alg == NGX_AAI_JWT_HS384) ? 48 : 64;

    if (secret.len < min) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"aai_jwt_key\" secret is shorter than %uz bytes",
                           min);
    }

    cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_str_t));
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    saved = cln->data;
    saved->len = secret.len;
    saved->data = ngx_pstrdup(cf->pool, &secret);
    if (saved->data == NULL) {
        saved->len = 0;
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_aai_jwt_cleanup_secret;

    key->secret.len = saved->len;
    key->secret.data = saved->data;

    return NGX_CONF_OK;
}


static char *
ngx_aai_jwt_conf_pkey(ngx_conf_t *cf, ngx_str_t *source,
    ngx_aai_jwt_key_t *key)
{
    ngx_str_t            name, pem;
    const char          *err;
    ngx_pool_cleanup_t  *cln;

    if (ngx_strncmp(source->data, "file=", 5) != 0 || source->len == 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"aai_jwt_key\" needs file=PATH for a public "
                           "key, not \"%V\"", source);
        return NGX_CONF_ERROR;
    }

    name.len = source->len - 5;
    name.data = source->data + 5;

    if (ngx_aai_jwt_read_file(cf, &name, &pem) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    key->pkey = ngx_aai_jwt_load_pkey(key->alg, pem.data, pem.len, &err);

    if (key->pkey == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid key file \"%V\" in \"aai_jwt_key\": %s",
                           &name, err);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_aai_jwt_cleanup_pkey;
    cln->data = key->pkey;

    return NGX_CONF_OK;
}


/* a whole file, at configuration time; a relative name is in conf prefix */

static ngx_int_t
ngx_aai_jwt_read_file(ngx_conf_t *cf, ngx_str_t *name, ngx_str_t *out)
{
    off_t            size;
    ssize_t          n;
    ngx_str_t        full;
    ngx_file_t       file;
    ngx_file_info_t  fi;

    full = *name;

    if (full.len == 0 || ngx_conf_full_name(cf->cycle, &full, 1) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid key file name \"%V\" in \"aai_jwt_key\"",
                           name);
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));

    file.name = full;
    file.log = cf->log;

    file.fd = ngx_open_file(full.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot open key file \"%s\" in \"aai_jwt_key\"",
                           full.data);
        return NGX_ERROR;
    }

    n = NGX_ERROR;

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot stat key file \"%s\" in \"aai_jwt_key\"",
                           full.data);
        goto done;
    }

    size = ngx_file_size(&fi);

    if (size <= 0 || size > NGX_AAI_JWT_MAX_KEY_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "key file \"%s\" in \"aai_jwt_key\" is empty "
                           "or too large", full.data);
        goto done;
    }

    out->data = ngx_pnalloc(cf->pool, (size_t) size + 1);
    if (out->data == NULL) {
        goto done;
    }

    n = ngx_read_file(&file, out->data, (size_t) size, 0);

    if (n != (ssize_t) size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read key file \"%s\" in \"aai_jwt_key\"",
                           full.data);
        n = NGX_ERROR;
        goto done;
    }

    out->len = (size_t) size;
    out->data[size] = '\0';

done:

    if (ngx_close_file(file.fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%s\" failed", full.data);
    }

    return (n == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


static void
ngx_aai_jwt_cleanup_secret(void *data)
{
    ngx_str_t  *secret = data;

    if (secret->len) {
        OPENSSL_cleanse(secret->data, secret->len);
    }
}


static void
ngx_aai_jwt_cleanup_pkey(void *data)
{
    EVP_PKEY_free(data);
}


char *
ngx_aai_jwt_conf_token(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_aai_jwt_loc_conf_t *jcf = ngx_aai_jwt_conf(conf, cmd);

    ngx_str_t                         *value;
    ngx_http_complex_value_t          *cv;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (jcf->tokens == NGX_CONF_UNSET_PTR) {
        jcf->tokens = ngx_array_create(cf->pool, 2,
                                       sizeof(ngx_http_complex_value_t));
        if (jcf->tokens == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    cv = ngx_array_push(jcf->tokens);
    if (cv == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* aai_jwt_claim $variable name; at http level: variables are global */

char *
ngx_aai_jwt_conf_claim(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_aai_jwt_loc_conf_t *jcf = ngx_aai_jwt_conf(conf, cmd);

    ngx_str_t            *value, name;
    ngx_aai_jwt_str_t    *claim;
    ngx_http_variable_t  *var;

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\" in \"%V\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (value[2].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty claim name in \"%V\"", &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (jcf->claims == NGX_CONF_UNSET_PTR) {
        jcf->claims = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_aai_jwt_str_t));
        if (jcf->claims == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    name.len = value[1].len - 1;
    name.data = value[1].data + 1;

    var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_CONF_ERROR;
    }

    var->get_handler = ngx_aai_jwt_claim_variable;
    var->data = jcf->claims->nelts;

    claim = ngx_array_push(jcf->claims);
    if (claim == NULL) {
        return NGX_CONF_ERROR;
    }

    /* configuration words are NUL-terminated */

    claim->len = value[2].len;
    claim->data = value[2].data;

    return NGX_CONF_OK;
}


/* aai_jwt_issuer and aai_jwt_audience: cmd->post is "iss" or "aud" */

char *
ngx_aai_jwt_conf_check(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_aai_jwt_loc_conf_t *jcf = ngx_aai_jwt_conf(conf, cmd);

    ngx_str_t  *field, *value;

    field = (ngx_strcmp(cmd->post, "iss") == 0) ? &jcf->issuer
                                                 : &jcf->audience;

    if (field->data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* an empty value would switch the check off: refused */

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty value \"\" in \"%V\": it would accept "
                           "a token with any \"%s\" claim; "
                           "omit the directive instead",
                           &cmd->name, (char *) cmd->post);
        return NGX_CONF_ERROR;
    }

    *field = value[1];

    return NGX_CONF_OK;
}


void
ngx_aai_jwt_create_loc_conf(ngx_aai_jwt_loc_conf_t *jcf)
{
    /*
     * set by the caller's ngx_pcalloc():
     *
     *     jcf->issuer = { 0, NULL };
     *     jcf->audience = { 0, NULL };
     */

    jcf->keys = NGX_CONF_UNSET_PTR;
    jcf->tokens = NGX_CONF_UNSET_PTR;
    jcf->claims = NGX_CONF_UNSET_PTR;
    jcf->leeway = NGX_CONF_UNSET;
    jcf->require = NGX_CONF_UNSET;
    jcf->cache_size = NGX_CONF_UNSET_UINT;

    /* never reused in this process, even across reloads */
    jcf->profile = ++ngx_aai_jwt_profiles;
}


char *
ngx_aai_jwt_merge_loc_conf(ngx_conf_t *cf, ngx_aai_jwt_loc_conf_t *prev,
    ngx_aai_jwt_loc_conf_t *conf)
{
    ngx_conf_merge_ptr_value(conf->keys, prev->keys, NULL);
    ngx_conf_merge_ptr_value(conf->tokens, prev->tokens, NULL);
    ngx_conf_merge_ptr_value(conf->claims, prev->claims, NULL);
    ngx_conf_merge_str_value(conf->issuer, prev->issuer, "");
    ngx_conf_merge_str_value(conf->audience, prev->audience, "");
    ngx_conf_merge_sec_value(conf->leeway, prev->leeway, 0);
    ngx_conf_merge_value(conf->require, prev->require, 0);
    ngx_conf_merge_uint_value(conf->cache_size, prev->cache_size,
                              NGX_AAI_JWT_DEFAULT_CACHE);

    if (conf->keys == prev->keys
        && ngx_aai_jwt_str_same(&conf->issuer, &prev->issuer)
        && ngx_aai_jwt_str_same(&conf->audience, &prev->audience))
    {
        conf->profile = prev->profile;
    }

    return NGX_CONF_OK;
}


static ngx_uint_t
ngx_aai_jwt_str_same(ngx_str_t *one, ngx_str_t *two)
{
    return one->len == two->len
           && (one->len == 0 || ngx_memcmp(one->data, two->data, one->len)
                                == 0);
}


ngx_int_t
ngx_aai_jwt_add_variables(ngx_conf_t *cf, ngx_module_t *owner,
    ngx_uint_t offset, ngx_aai_jwt_get_ctx_pt get_ctx)
{
    ngx_http_variable_t  *var, *v;

    ngx_aai_jwt_owner = owner;
    ngx_aai_jwt_offset = offset;
    ngx_aai_jwt_get_ctx = get_ctx;

    for (v = ngx_aai_jwt_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


ngx_int_t
ngx_aai_jwt_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_aai_jwt_access_handler;

    return NGX_OK;
}


static ngx_aai_jwt_loc_conf_t *
ngx_aai_jwt_get_conf(ngx_http_request_t *r)
{
    u_char  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, (*ngx_aai_jwt_owner));

    return (ngx_aai_jwt_loc_conf_t *) (lcf + ngx_aai_jwt_offset);
}


ngx_aai_jwt_ctx_t *
ngx_aai_jwt_evaluate(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t                token;
    ngx_aai_jwt_ctx_t       *ctx;
    ngx_aai_jwt_loc_conf_t  *jcf;

    ctx = ngx_aai_jwt_get_ctx(r);
    if (ctx == NULL) {
        return NULL;
    }

    jcf = ngx_aai_jwt_get_conf(r);

    if (ctx->status != NGX_AAI_JWT_UNSET) {
        if (ctx->conf == jcf || ngx_aai_jwt_same_checks(ctx->conf, jcf)) {
            return ctx;
        }

        ngx_memzero(ctx, sizeof(ngx_aai_jwt_ctx_t));
    }

    ctx->conf = jcf;

    if (ngx_aai_jwt_find_token(r, jcf, &token) != NGX_OK) {
        return NULL;
    }

    if (token.len == 0) {
        ctx->status = NGX_AAI_JWT_NONE;
        return ctx;
    }

    rc = NGX_DECLINED;

    if (jcf->cache_size) {
        rc = ngx_aai_jwt_cache_get(r, jcf, ctx, &token);
    }

    if (rc == NGX_DECLINED) {
        rc = ngx_aai_jwt_verify_token(r, jcf, ctx, &token);
    }

    if (rc == NGX_ERROR) {
        ctx->status = NGX_AAI_JWT_UNSET;
        return NULL;
    }

    if (ctx->status == NGX_AAI_JWT_EXPIRED) {
        ngx_aai_jwt_log_rejected(r, ctx->status, "\"exp\" has passed");

    } else if (ctx->status == NGX_AAI_JWT_NOT_YET_VALID) {
        ngx_aai_jwt_log_rejected(r, ctx->status, "\"nbf\" is ahead");
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_jwt: %s \"%V\"%s",
                   ngx_aai_jwt_status_name(ctx->status), &ctx->sub,
                   rc == NGX_OK ? " (cached)" : "");

    return ctx;
}


static ngx_uint_t
ngx_aai_jwt_same_checks(ngx_aai_jwt_loc_conf_t *one,
    ngx_aai_jwt_loc_conf_t *two)
{
    return one->profile == two->profile && one->leeway == two->leeway
           && one->tokens == two->tokens;
}


/* the first source with a value that can be a bearer token */

static ngx_int_t
ngx_aai_jwt_find_token(ngx_http_request_t *r, ngx_aai_jwt_loc_conf_t *jcf,
    ngx_str_t *token)
{
    ngx_str_t                  value;
    ngx_uint_t                 i;
    ngx_http_complex_value_t  *cv;

    token->len = 0;
    token->data = NULL;

    if (jcf->tokens == NULL) {
        if (r->headers_in.authorization) {
            value = r->headers_in.authorization->value;
            (void) ngx_aai_jwt_bearer(&value, token);
        }

        return NGX_OK;
    }

    cv = jcf->tokens->elts;

    for (i = 0; i < jcf->tokens->nelts; i++) {
        if (ngx_http_complex_value(r, &cv[i], &value) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ngx_aai_jwt_bearer(&value, token)) {
            return NGX_OK;
        }
    }

    return NGX_OK;
}


/*
 * "Bearer TOKEN" (any case) gives TOKEN; a value with another scheme
 * ("Basic ...": a space in it) gives nothing; any other value is the token.
 */

static ngx_uint_t
ngx_aai_jwt_bearer(ngx_str_t *value, ngx_str_t *token)
{
    u_char  *p, *last;

    p = value->data;
    last = p + value->len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (last - p > 7 && ngx_strncasecmp(p, (u_char *) "Bearer ", 7) == 0) {
        p += 7;

        while (p < last && *p == ' ') {
            p++;
        }
    }

    if (p == last || memchr(p, ' ', last - p) != NULL) {
        return 0;
    }

    token->len = last - p;
    token->data = p;

    return 1;
}


static ngx_int_t
ngx_aai_jwt_verify_token(ngx_http_request_t *r, ngx_aai_jwt_loc_conf_t *jcf,
    ngx_aai_jwt_ctx_t *ctx, ngx_str_t *token)
{
    ngx_int_t              status;
    ngx_aai_jwt_verify_t   v;

    ngx_memzero(&v, sizeof(ngx_aai_jwt_verify_t));

    if (jcf->keys) {
        v.keys = jcf->keys->elts;
        v.nkeys = jcf->keys->nelts;
    }

    v.issuer.len = jcf->issuer.len;
    v.issuer.data = jcf->issuer.data;
    v.audience.len = jcf->audience.len;
    v.audience.data = jcf->audience.data;

    if (jcf->claims) {
        v.claim_names = jcf->claims->elts;
        v.nclaims = jcf->claims->nelts;

        v.claims = ngx_palloc(r->pool, v.nclaims * sizeof(ngx_aai_jwt_str_t));
        if (v.claims == NULL) {
            return NGX_ERROR;
        }
    }

    v.buf = ngx_aai_jwt_buf;

    status = ngx_aai_jwt_verify(&v, token->data, token->len);

    if (status != NGX_AAI_JWT_VALID) {
        ctx->status = status;

        if (status != NGX_AAI_JWT_UNKNOWN_KEY || v.nkeys) {
            ngx_aai_jwt_log_rejected(r, v.status, v.reason);
        }

        return NGX_DONE;
    }

    if (v.truncated) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "aai_jwt: claim values too long, omitted");
    }

    status = ngx_aai_jwt_check_time(v.has_exp, v.exp, v.has_nbf, v.nbf,
                                    ngx_time(), jcf->leeway);

    if (status != NGX_AAI_JWT_EXPIRED && jcf->cache_size) {
        ngx_aai_jwt_cache_put(r, jcf, token, &v);
    }

    ctx->status = status;

    if (status != NGX_AAI_JWT_VALID) {
        return NGX_DONE;
    }

    if (ngx_aai_jwt_set_result(r, ctx, &v.sub, v.claims, v.nclaims)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_DONE;
}


/* sub and claim values copied to the request's pool */

static ngx_int_t
ngx_aai_jwt_set_result(ngx_http_request_t *r, ngx_aai_jwt_ctx_t *ctx,
    ngx_aai_jwt_str_t *sub, ngx_aai_jwt_str_t *claims, ngx_uint_t nclaims)
{
    u_char      *p;
    size_t       size;
    ngx_uint_t   i;

    size = nclaims * sizeof(ngx_str_t) + sub->len + 1;

    for (i = 0; i < nclaims; i++) {
        size += claims[i].len;
    }

    p = ngx_palloc(r->pool, size);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->claims = (ngx_str_t *) p;
    ctx->nclaims = nclaims;
    p += nclaims * sizeof(ngx_str_t);

    ctx->sub.len = sub->len;
    ctx->sub.data = p;
    p = ngx_cpymem(p, sub->data, sub->len);

    for (i = 0; i < nclaims; i++) {
        if (claims[i].data == NULL) {
            ctx->claims[i].len = 0;
            ctx->claims[i].data = NULL;
            continue;
        }

        ctx->claims[i].len = claims[i].len;
        ctx->claims[i].data = p;
        p = ngx_cpymem(p, claims[i].data, claims[i].len);
    }

    return NGX_OK;
}


/*
 * Garbage from clients and expired tokens (a client that has not refreshed
 * yet) at info; forgery, key trouble and tokens not valid yet (the clocks
 * of the issuer and of nginx disagree) at warn; at most
 * NGX_AAI_JWT_LOG_RATE lines a second per worker.  Never the token.
 */

static void
ngx_aai_jwt_log_rejected(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_uint_t         level, skipped;
    static time_t      second;
    static ngx_uint_t  logged, suppressed;

    level = (status == NGX_AAI_JWT_MALFORMED || status == NGX_AAI_JWT_EXPIRED)
            ? NGX_LOG_INFO : NGX_LOG_WARN;

    if (r->connection->log->log_level < level) {
        return;
    }

    if (second != ngx_time()) {
        second = ngx_time();
        logged = 0;
    }

    if (logged == NGX_AAI_JWT_LOG_RATE) {
        suppressed++;
        return;
    }

    logged++;
    skipped = suppressed;
    suppressed = 0;

    if (skipped) {
        ngx_log_error(level, r->connection->log, 0,
                      "aai_jwt: token rejected: %s, %s "
                      "(%ui similar messages suppressed)",
                      ngx_aai_jwt_status_name(status), reason, skipped);
        return;
    }

    ngx_log_error(level, r->connection->log, 0,
                  "aai_jwt: token rejected: %s, %s",
                  ngx_aai_jwt_status_name(status), reason);
}


/*
 * The tail of the token: the signature, random for the verified tokens the
 * cache holds.  A hit is always confirmed by comparing the whole token.
 */

static uint32_t
ngx_aai_jwt_hash(ngx_str_t *token, uint64_t profile)
{
    size_t  n;

    n = ngx_min(token->len, 64);

    return ngx_murmur_hash2(token->data + token->len - n, n)
           ^ (uint32_t) token->len
           ^ (uint32_t) (profile * 0x9e3779b97f4a7c15ULL >> 32);
}


/*
 * NGX_OK: a verified token, ctx set (VALID, NOT_YET_VALID or EXPIRED, an
 * expired entry is dropped); NGX_DECLINED: not cached.
 */

static ngx_int_t
ngx_aai_jwt_cache_get(ngx_http_request_t *r, ngx_aai_jwt_loc_conf_t *jcf,
    ngx_aai_jwt_ctx_t *ctx, ngx_str_t *token)
{
    uint32_t              hash;
    ngx_uint_t            status;
    ngx_aai_jwt_entry_t  *e;
    ngx_aai_jwt_cache_t  *cache;

    cache = &ngx_aai_jwt_cache;

    if (cache->buckets == NULL) {
        return NGX_DECLINED;
    }

    hash = ngx_aai_jwt_hash(token, jcf->profile);

    for (e = cache->buckets[hash & cache->mask]; e; e = e->next) {
        if (e->hash == hash && e->profile == jcf->profile
            && e->token.len == token->len
            && ngx_memcmp(e->token.data, token->data, token->len) == 0)
        {
            break;
        }
    }

    if (e == NULL) {
        return NGX_DECLINED;
    }

    status = ngx_aai_jwt_check_time(e->has_exp, e->exp, e->has_nbf, e->nbf,
                                    ngx_time(), jcf->leeway);

    ctx->status = status;

    if (status == NGX_AAI_JWT_EXPIRED) {
        ngx_aai_jwt_cache_remove(e);
        return NGX_OK;
    }

    ngx_queue_remove(&e->queue);
    ngx_queue_insert_head(&cache->lru, &e->queue);

    if (status != NGX_AAI_JWT_VALID) {
        return NGX_OK;
    }

    if (ngx_aai_jwt_set_result(r, ctx, &e->sub, e->claims, e->nclaims)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_aai_jwt_cache_put(ngx_http_request_t *r, ngx_aai_jwt_loc_conf_t *jcf,
    ngx_str_t *token, ngx_aai_jwt_verify_t *v)
{
    u_char               *p;
    size_t                size;
    ngx_uint_t            i;
    ngx_queue_t          *q;
    ngx_aai_jwt_entry_t  *e, **bucket;
    ngx_aai_jwt_cache_t  *cache;

    cache = &ngx_aai_jwt_cache;

    if (cache->buckets == NULL
        && ngx_aai_jwt_cache_init(r->connection->log, jcf->cache_size)
           != NGX_OK)
    {
        return;
    }

    size = sizeof(ngx_aai_jwt_entry_t)
           + v->nclaims * sizeof(ngx_aai_jwt_str_t)
           + token->len + v->sub.len;

    for (i = 0; i < v->nclaims; i++) {
        size += v->claims[i].len;
    }

    if (cache->count >= cache->max) {
        q = ngx_queue_last(&cache->lru);
        ngx_aai_jwt_cache_remove(ngx_queue_data(q, ngx_aai_jwt_entry_t,
                                                queue));
    }

    e = ngx_alloc(size, r->connection->log);
    if (e == NULL) {
        return;
    }

    e->hash = ngx_aai_jwt_hash(token, jcf->profile);
    e->profile = jcf->profile;
    e->exp = v->exp;
    e->nbf = v->nbf;
    e->has_exp = v->has_exp;
    e->has_nbf = v->has_nbf;
    e->nclaims = v->nclaims;
    e->claims = (ngx_aai_jwt_str_t *) &e[1];

    p = (u_char *) &e->claims[v->nclaims];

    e->token.len = token->len;
    e->token.data = p;
    p = ngx_cpymem(p, token->data, token->len);

    e->sub.len = v->sub.len;
    e->sub.data = p;
    p = ngx_cpymem(p, v->sub.data, v->sub.len);

    for (i = 0; i < v->nclaims; i++) {
        e->claims[i] = v->claims[i];

        if (v->claims[i].data) {
            e->claims[i].data = p;
            p = ngx_cpymem(p, v->claims[i].data, v->claims[i].len);
        }
    }

    bucket = &cache->buckets[e->hash & cache->mask];
    e->next = *bucket;
    *bucket = e;

    ngx_queue_insert_head(&cache->lru, &e->queue);
    cache->count++;
}


static ngx_int_t
ngx_aai_jwt_cache_init(ngx_log_t *log, ngx_uint_t max)
{
    ngx_uint_t            n;
    ngx_aai_jwt_cache_t  *cache;

    cache = &ngx_aai_jwt_cache;

    for (n = 16; n < max; n <<= 1) { /* void */ }

    cache->buckets = ngx_calloc(n * sizeof(ngx_aai_jwt_entry_t *), log);
    if (cache->buckets == NULL) {
        return NGX_ERROR;
    }

    cache->mask = n - 1;
    cache->max = max;
    cache->count = 0;
    ngx_queue_init(&cache->lru);

    return NGX_OK;
}


static void
ngx_aai_jwt_cache_remove(ngx_aai_jwt_entry_t *e)
{
    ngx_aai_jwt_entry_t  **pe;
    ngx_aai_jwt_cache_t   *cache;

    cache = &ngx_aai_jwt_cache;

    for (pe = &cache->buckets[e->hash & cache->mask]; *pe; pe = &(*pe)->next)
    {
        if (*pe == e) {
            *pe = e->next;
            break;
        }
    }

    ngx_queue_remove(&e->queue);
    cache->count--;

    ngx_free(e);
}


static ngx_int_t
ngx_aai_jwt_user_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_aai_jwt_ctx_t  *ctx;

    ctx = ngx_aai_jwt_evaluate(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    if (ctx->status == NGX_AAI_JWT_VALID) {
        v->len = ctx->sub.len;
        v->data = ctx->sub.data;

    } else {
        v->len = 0;
        v->data = (u_char *) "";
    }

    return NGX_OK;
}


static ngx_int_t
ngx_aai_jwt_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_aai_jwt_ctx_t  *ctx;

    ctx = ngx_aai_jwt_evaluate(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    v->data = (u_char *) ngx_aai_jwt_status_name(ctx->status);
    v->len = ngx_strlen(v->data);
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_aai_jwt_anon_ip_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_aai_jwt_ctx_t  *ctx;

    ctx = ngx_aai_jwt_evaluate(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    if (ctx->status == NGX_AAI_JWT_VALID) {
        v->len = 0;
        v->data = (u_char *) "";

    } else {
        v->len = r->connection->addr_text.len;
        v->data = r->connection->addr_text.data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_aai_jwt_claim_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_aai_jwt_ctx_t  *ctx;

    ctx = ngx_aai_jwt_evaluate(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->status != NGX_AAI_JWT_VALID || data >= ctx->nclaims
        || ctx->claims[data].data == NULL)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->claims[data].len;
    v->data = ctx->claims[data].data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_aai_jwt_access_handler(ngx_http_request_t *r)
{
    ngx_table_elt_t         *h;
    ngx_aai_jwt_ctx_t       *ctx;
    ngx_aai_jwt_loc_conf_t  *jcf;

    jcf = ngx_aai_jwt_get_conf(r);

    if (!jcf->require) {
        return NGX_DECLINED;
    }

    ctx = ngx_aai_jwt_evaluate(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->status == NGX_AAI_JWT_VALID) {
        return NGX_OK;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    ngx_str_set(&h->key, "WWW-Authenticate");

    if (ctx->status == NGX_AAI_JWT_NONE) {
        ngx_str_set(&h->value, "Bearer");

    } else {
        ngx_str_set(&h->value, "Bearer error=\"invalid_token\"");
    }

    r->headers_out.www_authenticate = h;

    return NGX_HTTP_UNAUTHORIZED;
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_jwt: verified JWT subject as $aai_user, part of
 * ngx_http_aai_ratelimit_module.  The rate limiter embeds the two structs
 * below, lists NGX_AAI_JWT_COMMANDS() in its commands, and calls
 * ngx_aai_jwt_create_loc_conf(), ngx_aai_jwt_merge_loc_conf(),
 * ngx_aai_jwt_add_variables() (preconfiguration, naming itself, where the
 * loc conf struct is in its own and how to get the request struct) and
 * ngx_aai_jwt_init() (postconfiguration).  This code names no module.
 * Token parsing and signatures: ngx_aai_jwt_token.c.
 */


#ifndef _NGX_AAI_JWT_H_INCLUDED_
#define _NGX_AAI_JWT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_conf.h"
#include "ngx_aai_jwt_token.h"


#define NGX_AAI_JWT_MAX_CACHE       1048576


/* per-location configuration, embedded in the rate limiter's loc conf */
typedef struct {
    ngx_array_t                *keys;        /* ngx_aai_jwt_key_t */
    ngx_array_t                *tokens;      /* ngx_http_complex_value_t */
    ngx_array_t                *claims;      /* ngx_aai_jwt_str_t names */
    ngx_str_t                   issuer;
    ngx_str_t                   audience;
    time_t                      leeway;
    ngx_flag_t                  require;
    ngx_uint_t                  cache_size;

    /* equal in two confs: same keys, issuer and audience */
    uint64_t                    profile;
} ngx_aai_jwt_loc_conf_t;


/*
 * Per-request state, embedded (zeroed) in the rate limiter's request ctx;
 * kept across internal redirects, recomputed only where other keys, token
 * sources or checks apply.
 */
typedef struct {
    ngx_uint_t                  status;      /* NGX_AAI_JWT_*, 0: not yet */
    ngx_str_t                   sub;
    ngx_str_t                  *claims;      /* data NULL: claim absent */
    ngx_uint_t                  nclaims;
    ngx_aai_jwt_loc_conf_t     *conf;        /* the status is for these */
} ngx_aai_jwt_ctx_t;


char *ngx_aai_jwt_conf_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_aai_jwt_conf_token(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_jwt_conf_claim(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_jwt_conf_check(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* cmd->post of aai_jwt_leeway and aai_jwt_cache */
extern ngx_aai_conf_post_t  ngx_aai_jwt_leeway_post;
extern ngx_aai_conf_post_t  ngx_aai_jwt_cache_post;


#define NGX_AAI_JWT_CONF_ANY                                                  \
    (NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF)

#define NGX_AAI_JWT_COMMAND(name, flags, handler, type, member, post)        \
    { ngx_string(name), flags, handler, NGX_HTTP_LOC_CONF_OFFSET,             \
      offsetof(type, member), post },

/* a directive of one value: a standard slot on its field of the struct */
#define NGX_AAI_JWT_SLOT(name, flags, slot, type, member, field, post)       \
    { ngx_string(name), flags, slot, NGX_HTTP_LOC_CONF_OFFSET,                \
      offsetof(type, member.field), post },

/*
 * The aai_jwt_* directives, for the rate limiter's commands array, just
 * before ngx_null_command (each entry ends with a comma):
 *     NGX_AAI_JWT_COMMANDS(ngx_http_aai_ratelimit_loc_conf_t, jwt)
 * where "jwt" is the ngx_aai_jwt_loc_conf_t member of that struct.
 */
#define NGX_AAI_JWT_COMMANDS(type, member)                                    \
    NGX_AAI_JWT_COMMAND("aai_jwt_key",                                        \
                        NGX_AAI_JWT_CONF_ANY|NGX_CONF_TAKE23,                 \
                        ngx_aai_jwt_conf_key, type, member, NULL)             \
    NGX_AAI_JWT_COMMAND("aai_jwt_token",                                      \
                        NGX_AAI_JWT_CONF_ANY|NGX_CONF_TAKE1,                  \
                        ngx_aai_jwt_conf_token, type, member, NULL)           \
    NGX_AAI_JWT_SLOT("aai_jwt_leeway",                                        \
                     NGX_AAI_JWT_CONF_ANY|NGX_CONF_TAKE1,                     \
                     ngx_aai_conf_set_sec_slot, type, member, leeway,         \
                     &ngx_aai_jwt_leeway_post)                                \
    NGX_AAI_JWT_COMMAND("aai_jwt_claim",                                      \
                        NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,                    \
                        ngx_aai_jwt_conf_claim, type, member, NULL)           \
    NGX_AAI_JWT_COMMAND("aai_jwt_issuer",                                     \
                        NGX_AAI_JWT_CONF_ANY|NGX_CONF_TAKE1,                  \
                        ngx_aai_jwt_conf_check, type, member, "iss")          \
    NGX_AAI_JWT_COMMAND("aai_jwt_audience",                                   \
                        NGX_AAI_JWT_CONF_ANY|NGX_CONF_TAKE1,                  \
                        ngx_aai_jwt_conf_check, type, member, "aud")          \
    NGX_AAI_JWT_SLOT("aai_jwt_require",                                       \
                     NGX_AAI_JWT_CONF_ANY|NGX_CONF_FLAG,                      \
                     ngx_conf_set_flag_slot, type, member, require, NULL)     \
    NGX_AAI_JWT_SLOT("aai_jwt_cache",                                         \
                     NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,                       \
                     ngx_aai_conf_set_num_slot, type, member, cache_size,     \
                     &ngx_aai_jwt_cache_post)


/*
 * The embedding module's: the request's ngx_aai_jwt_ctx_t, creating its
 * request ctx if needed (kept across internal redirects); NULL on memory
 * error.
 */
typedef ngx_aai_jwt_ctx_t *(*ngx_aai_jwt_get_ctx_pt)(ngx_http_request_t *r);


/* from the rate limiter's create/merge loc conf */
void ngx_aai_jwt_create_loc_conf(ngx_aai_jwt_loc_conf_t *jcf);
char *ngx_aai_jwt_merge_loc_conf(ngx_conf_t *cf, ngx_aai_jwt_loc_conf_t *prev,
    ngx_aai_jwt_loc_conf_t *conf);

/*
 * From the rate limiter's preconfiguration: the variables, and who embeds
 * us: owner's location conf has our ngx_aai_jwt_loc_conf_t at offset (the
 * member NGX_AAI_JWT_COMMANDS() names), get_ctx gives our request state.
 */
ngx_int_t ngx_aai_jwt_add_variables(ngx_conf_t *cf, ngx_module_t *owner,
    ngx_uint_t offset, ngx_aai_jwt_get_ctx_pt get_ctx);

/* from the rate limiter's postconfiguration: the aai_jwt_require handler */
ngx_int_t ngx_aai_jwt_init(ngx_conf_t *cf);

/*
 * The request's verification result (verifying the token on the first
 * call); NULL on memory error.  For the rate limiter, if it needs it
 * beyond the variables.
 */
ngx_aai_jwt_ctx_t *ngx_aai_jwt_evaluate(ngx_http_request_t *r);


#endif /* _NGX_AAI_JWT_H_INCLUDED_ */

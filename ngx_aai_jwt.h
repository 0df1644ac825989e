
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_jwt: verified JWT subject as $aai_user, part of
 * ngx_http_aai_ratelimit_module.  (Contract stub: filled in by the JWT
 * work; the rate limiter only relies on what is declared here.)
 */


#ifndef _NGX_AAI_JWT_H_INCLUDED_
#define _NGX_AAI_JWT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* per-location configuration, embedded in the rate limiter's loc conf */
typedef struct {
    ngx_array_t                *keys;
    ngx_array_t                *tokens;
} ngx_aai_jwt_loc_conf_t;


/* per-request state, embedded (zeroed) in the rate limiter's request ctx */
typedef struct {
    ngx_uint_t                  status;
    ngx_str_t                   sub;
} ngx_aai_jwt_ctx_t;


/*
 * The aai_jwt_* directives, for the rate limiter's commands array:
 *     NGX_AAI_JWT_COMMANDS(ngx_http_aai_ratelimit_loc_conf_t, jwt)
 * where "jwt" is the ngx_aai_jwt_loc_conf_t member of that struct.
 */
#define NGX_AAI_JWT_COMMANDS(type, member)


/* from the rate limiter's create/merge loc conf and preconfiguration */
void ngx_aai_jwt_create_loc_conf(ngx_aai_jwt_loc_conf_t *jcf);
char *ngx_aai_jwt_merge_loc_conf(ngx_conf_t *cf, ngx_aai_jwt_loc_conf_t *prev,
    ngx_aai_jwt_loc_conf_t *conf);
ngx_int_t ngx_aai_jwt_add_variables(ngx_conf_t *cf);


/*
 * Implemented by ngx_http_aai_ratelimit_module.c: the request's
 * ngx_aai_jwt_ctx_t, creating the module's request ctx if needed; NULL on
 * memory error.
 */
ngx_aai_jwt_ctx_t *ngx_http_aai_ratelimit_jwt_ctx(ngx_http_request_t *r);


#endif /* _NGX_AAI_JWT_H_INCLUDED_ */


/*
 * Copyright (C) aai-nginx authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_jwt.h"


void
ngx_aai_jwt_create_loc_conf(ngx_aai_jwt_loc_conf_t *jcf)
{
    jcf->keys = NGX_CONF_UNSET_PTR;
    jcf->tokens = NGX_CONF_UNSET_PTR;
}


char *
ngx_aai_jwt_merge_loc_conf(ngx_conf_t *cf, ngx_aai_jwt_loc_conf_t *prev,
    ngx_aai_jwt_loc_conf_t *conf)
{
    ngx_conf_merge_ptr_value(conf->keys, prev->keys, NULL);
    ngx_conf_merge_ptr_value(conf->tokens, prev->tokens, NULL);

    return NGX_CONF_OK;
}


ngx_int_t
ngx_aai_jwt_add_variables(ngx_conf_t *cf)
{
    return NGX_OK;
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_conf: see ngx_aai_conf.h.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_aai_conf.h"


static char *ngx_aai_conf_named(ngx_conf_t *cf, ngx_command_t *cmd,
    char *rv);
static const char *ngx_aai_conf_what(ngx_aai_conf_post_t *post);


char *
ngx_aai_conf_set_msec_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_aai_conf_named(cf, cmd, ngx_conf_set_msec_slot(cf, cmd, conf));
}


char *
ngx_aai_conf_set_sec_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_aai_conf_named(cf, cmd, ngx_conf_set_sec_slot(cf, cmd, conf));
}


char *
ngx_aai_conf_set_size_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_aai_conf_named(cf, cmd, ngx_conf_set_size_slot(cf, cmd, conf));
}


char *
ngx_aai_conf_set_num_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_aai_conf_named(cf, cmd, ngx_conf_set_num_slot(cf, cmd, conf));
}


char *
ngx_aai_conf_set_enum_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_str_t        *value;
    ngx_uint_t       *np;
    ngx_conf_enum_t  *e;

    np = (ngx_uint_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (e = cmd->post; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcasecmp(e->name.data, value[1].data) == 0)
        {
            *np = e->value;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


char *
ngx_aai_conf_check_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_aai_conf_post_t  *bounds = post;

    ngx_int_t   n;
    ngx_str_t  *value;

    n = *(ngx_int_t *) data;

    if (n >= bounds->low && (bounds->high == -1 || n <= bounds->high)) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    if (bounds->high == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid %s \"%V\" in \"%V\" directive, "
                           "it must be %i or more",
                           ngx_aai_conf_what(bounds), &value[1], &value[0],
                           bounds->low);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid %s \"%V\" in \"%V\" directive, "
                           "it must be between %i and %i",
                           ngx_aai_conf_what(bounds), &value[1], &value[0],
                           bounds->low, bounds->high);
    }

    return NGX_CONF_ERROR;
}


static char *
ngx_aai_conf_named(ngx_conf_t *cf, ngx_command_t *cmd, char *rv)
{
    ngx_str_t  *value;

    if (rv == NGX_CONF_OK || rv == NGX_CONF_ERROR
        || ngx_strcmp(rv, "is duplicate") == 0)
    {
        return rv;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid %s \"%V\" in \"%V\" directive",
                       ngx_aai_conf_what(cmd->post), &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


static const char *
ngx_aai_conf_what(ngx_aai_conf_post_t *post)
{
    return (post && post->what) ? post->what : "value";
}

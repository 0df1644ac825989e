
/*
 * Copyright (C) aai-nginx authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_aai_conf.h"


static char *ngx_aai_conf_named(ngx_conf_t *cf, ngx_command_t *cmd,
    char *rv);


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
                       "invalid value \"%V\" in \"%V\" directive",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_conf: nginx's standard directive slots, with errors that name the
 * value as well as the directive:
 *
 *     invalid value "5x" in "aai_kafka_flush_timeout" directive
 */


#ifndef _NGX_AAI_CONF_H_INCLUDED_
#define _NGX_AAI_CONF_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


char *ngx_aai_conf_set_msec_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_sec_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_size_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_num_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_AAI_CONF_H_INCLUDED_ */

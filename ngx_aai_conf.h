
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

/*
 * ngx_conf_set_enum_slot(): cmd->post is the ngx_conf_enum_t table, the
 * names compared without case, the field an ngx_uint_t.
 */
char *ngx_aai_conf_set_enum_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * The post handler of an ngx_conf_num_bounds_t in cmd->post of
 * ngx_aai_conf_set_num_slot (high -1: no upper bound), as nginx's
 * ngx_conf_check_num_bounds() with the value and the directive named:
 *
 *     static ngx_conf_num_bounds_t  ngx_http_x_status_bounds = {
 *         ngx_aai_conf_check_num_bounds, 400, 599
 *     };
 *
 *     invalid value "200" in "x_status" directive, it must be between
 *     400 and 599
 */
char *ngx_aai_conf_check_num_bounds(ngx_conf_t *cf, void *post, void *data);


#endif /* _NGX_AAI_CONF_H_INCLUDED_ */

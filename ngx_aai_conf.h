
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_conf: nginx's standard directive slots, with errors that name the
 * value as well as the directive:
 *
 *     invalid value "5x" in "aai_kafka_flush_timeout" directive
 *
 * The one way the suite's modules parse a directive's single value: a slot
 * here in the command table, bounds and checks in cmd->post as nginx's
 * limit_req and core do (ngx_conf_num_bounds_t), never after the setter.
 */


#ifndef _NGX_AAI_CONF_H_INCLUDED_
#define _NGX_AAI_CONF_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * cmd->post of the ngx_aai_conf_set_*_slot() directives (enum aside):
 * NULL, or this, which begins as nginx's ngx_conf_post_t.  post_handler,
 * never NULL (nginx's slots call it), is called with the value set:
 * ngx_aai_conf_check_bounds() (low 0 and high -1 let any value pass), or a
 * module's own check; "what" names an invalid value in the message
 * ("invalid time \"5x\" in ..."), "value" if NULL; low and high are the
 * bounds ngx_aai_conf_check_bounds() checks (high -1: none), in the
 * field's unit (ms for a msec slot, s for a sec slot, bytes for a size
 * slot):
 *
 *     static ngx_aai_conf_post_t  ngx_http_x_status_post = {
 *         ngx_aai_conf_check_bounds, NULL, 400, 599
 *     };
 *
 *     { ngx_string("x_status"),
 *       NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
 *       ngx_aai_conf_set_num_slot,
 *       NGX_HTTP_LOC_CONF_OFFSET,
 *       offsetof(ngx_http_x_loc_conf_t, status),
 *       &ngx_http_x_status_post },
 *
 *     invalid value "200" in "x_status" directive, it must be between 400
 *     and 599
 */
typedef struct {
    ngx_conf_post_handler_pt   post_handler;
    const char                *what;
    ngx_int_t                  low;
    ngx_int_t                  high;
} ngx_aai_conf_post_t;


char *ngx_aai_conf_set_msec_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_sec_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_size_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_aai_conf_set_num_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * ngx_conf_set_enum_slot(), names compared without case, the field an
 * ngx_uint_t; cmd->post is the ngx_conf_enum_t table.
 */
char *ngx_aai_conf_set_enum_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * The bounds of an ngx_aai_conf_post_t, for a field of the size of an
 * ngx_int_t (ngx_int_t, ngx_uint_t, ngx_msec_t, size_t, time_t on LP64).
 */
char *ngx_aai_conf_check_bounds(ngx_conf_t *cf, void *post, void *data);


#endif /* _NGX_AAI_CONF_H_INCLUDED_ */

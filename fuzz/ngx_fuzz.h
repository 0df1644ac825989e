
/*
 * Copyright (C) aai-nginx authors
 *
 * What the fuzz targets share: stand-ins for the few nginx core functions
 * the code under test calls (ngx_stubs.c; Debian's nginx-dev has nginx's
 * headers but not its sources), and helpers.
 *
 * Every other nginx function a target's object refers to is a trap that
 * aborts (fuzz/Makefile generates them from "nm -u"): reaching one means the
 * target went somewhere it does not model, which is reported as a crash.
 */


#ifndef _NGX_FUZZ_H_INCLUDED_
#define _NGX_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>


/* the log every target uses: all levels and debug masks on, so that every
 * message's arguments are formatted (printed only with FUZZ_VERBOSE=1) */
extern ngx_log_t    ngx_fuzz_log;
extern ngx_cycle_t  ngx_fuzz_cycle;

/* once per process: the globals above, ngx_cycle, the time, queues */
void ngx_fuzz_init(void);

/* a pool whose every allocation is its own malloc(), so that AddressSanitizer
 * sees an overrun of any of them; ngx_destroy_pool() frees it all */
ngx_pool_t *ngx_fuzz_pool(void);

/* runs the events posted to ngx_posted_events, in order */
void ngx_fuzz_run_posted(void);

/* the input, consumed from the front */
typedef struct {
    const u_char  *p;
    const u_char  *last;
} ngx_fuzz_in_t;

ngx_uint_t ngx_fuzz_byte(ngx_fuzz_in_t *in);
/* up to the next separator byte sep (consumed, not returned), or the rest */
ngx_str_t ngx_fuzz_field(ngx_fuzz_in_t *in, u_char sep);

/* the configuration of a directive whose arguments are args, for the
 * directive parsers; cf->args->elts has nelts ngx_str_t */
ngx_conf_t *ngx_fuzz_conf(ngx_pool_t *pool, ngx_str_t *args,
    ngx_uint_t nelts);


#endif /* _NGX_FUZZ_H_INCLUDED_ */

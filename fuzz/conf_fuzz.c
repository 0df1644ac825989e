
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the directive parameter parsers: every directive of
 * the rate limiting, cache and Kafka modules (their .c files are included
 * here for their static command tables), called as nginx's ngx_conf_handler()
 * calls them, after its argument count check, on the configurations the
 * modules' own create functions made.  The shared parsers are reached
 * through them: the Redis address and parameters
 * (ngx_aai_redis_conf.c), the ngx_aai_conf.c slots, the zone, rate and
 * size parsers.  Each value is NUL-terminated as nginx's parser leaves it.
 *
 * Input: directives, one a line, "name arg arg ..." (arguments separated by
 * spaces); all of them go to the same configuration, so that a second one
 * meets the first.
 *
 * Invariants checked: a handler returns NGX_CONF_OK, NGX_CONF_ERROR or a
 * message; nothing is read or written out of bounds; nothing leaks.
 */


#include <arpa/inet.h>

#include "ngx_fuzz.h"

#include "../ngx_aai_conf.c"
#include "../ngx_aai_metrics.c"
#include "../ngx_aai_jwt_token.c"
#include "../ngx_aai_jwt.c"
#include "ngx_aai_redis_srcs.h"
#include "ngx_http_aai_ratelimit_srcs.h"
#include "../ngx_http_aai_cache_module.c"
#include "../ngx_http_aai_cache_key.c"
#include "../ngx_http_aai_cache_lookup.c"
#include "../ngx_http_aai_cache_lock.c"
#include "../ngx_http_aai_cache_stale.c"
#include "../ngx_http_aai_cache_store.c"
#include "../ngx_http_aai_cache_purge.c"
#include "../ngx_http_aai_cache_metrics.c"
#include "../ngx_http_aai_kafka_module.c"
#include "../ngx_http_aai_kafka_event.c"
#include "../ngx_http_aai_kafka_producer.c"
#include "../ngx_http_aai_kafka_metrics.c"
#include "../ngx_http_aai_kafka_spool.c"


#define FUZZ_MODULES  3
#define FUZZ_CORE     FUZZ_MODULES     /* ngx_http_core_module's index */


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_module_t  *fuzz_modules[FUZZ_MODULES] = {
    &ngx_http_aai_ratelimit_module,
    &ngx_http_aai_cache_module,
    &ngx_http_aai_kafka_module,
};


static ngx_uint_t  argument_number[] = {
    NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE2, NGX_CONF_TAKE3,
    NGX_CONF_TAKE4, NGX_CONF_TAKE5, NGX_CONF_TAKE6, NGX_CONF_TAKE7
};


/* what the directives use of nginx's http module, as far as they need */

ngx_module_t  ngx_http_core_module;


/* files named in directives are not read: the jwt target reads keys */

ngx_int_t
ngx_conf_full_name(ngx_cycle_t *cycle, ngx_str_t *name, ngx_uint_t conf_prefix)
{
    return NGX_ERROR;
}


ngx_int_t
ngx_http_compile_complex_value(ngx_http_compile_complex_value_t *ccv)
{
    ngx_memzero(ccv->complex_value, sizeof(ngx_http_complex_value_t));

    ccv->complex_value->value = *ccv->value;

    return NGX_OK;
}


char *
ngx_http_set_complex_value_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    return NGX_CONF_OK;
}


char *
ngx_http_set_predicate_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_get_variable_index(ngx_conf_t *cf, ngx_str_t *name)
{
    return 0;
}


ngx_http_variable_t *
ngx_http_add_variable(ngx_conf_t *cf, ngx_str_t *name, ngx_uint_t flags)
{
    ngx_http_variable_t  *v;

    v = ngx_pcalloc(cf->pool, sizeof(ngx_http_variable_t));
    if (v == NULL) {
        return NULL;
    }

    v->name = *name;
    v->flags = flags;

    return v;
}


char *
ngx_conf_set_flag_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return NGX_CONF_OK;
}


char *
ngx_conf_set_str_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return NGX_CONF_OK;
}


/* numeric addresses only: no name is ever resolved here */

ngx_int_t
ngx_parse_url(ngx_pool_t *pool, ngx_url_t *u)
{
    u_char              *p, *colon, *last;
    ngx_int_t            port;
    ngx_addr_t          *addr;
    struct sockaddr_in  *sin;
    char                 host[16];

    p = u->url.data;
    last = p + u->url.len;

    if (u->url.len >= 5 && ngx_strncmp(p, "unix:", 5) == 0) {
        if (u->url.len == 5) {
            u->err = "no path in the unix domain socket";
            return NGX_ERROR;
        }

        port = 0;
        colon = last;

    } else {
        colon = ngx_strlchr(p, last, ':');

        if (colon == NULL) {
            colon = last;
            port = u->default_port;

        } else {
            port = ngx_atoi(colon + 1, last - colon - 1);

            if (port < 1 || port > 65535) {
                u->err = "invalid port";
                return NGX_ERROR;
            }
        }

        if (colon - p == 0 || colon - p > 15) {
            u->err = "host not found";
            return NGX_ERROR;
        }

        ngx_memcpy(host, p, colon - p);
        host[colon - p] = '\0';
    }

    addr = ngx_pcalloc(pool, sizeof(ngx_addr_t));
    sin = ngx_pcalloc(pool, sizeof(struct sockaddr_in));

    if (addr == NULL || sin == NULL) {
        return NGX_ERROR;
    }

    sin->sin_family = AF_INET;
    sin->sin_port = htons((in_port_t) port);

    if (port && inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
        u->err = "host not found";
        return NGX_ERROR;
    }

    addr->sockaddr = (struct sockaddr *) sin;
    addr->socklen = sizeof(struct sockaddr_in);
    addr->name = u->url;

    u->addrs = addr;
    u->naddrs = 1;

    if (port) {
        u->host.data = p;
        u->host.len = colon - p;
    }

    return NGX_OK;
}


/* the port of an AF_INET address, as parsed above */

in_port_t
ngx_inet_get_port(struct sockaddr *sa)
{
    if (sa->sa_family != AF_INET) {
        return 0;
    }

    return ntohs(((struct sockaddr_in *) sa)->sin_port);
}


/* a dotted IPv4 address in network order, or INADDR_NONE */

in_addr_t
ngx_inet_addr(u_char *text, size_t len)
{
    char            buf[16];
    struct in_addr  a;

    if (len == 0 || len > 15) {
        return INADDR_NONE;
    }

    ngx_memcpy(buf, text, len);
    buf[len] = '\0';

    if (inet_pton(AF_INET, buf, &a) != 1) {
        return INADDR_NONE;
    }

    return a.s_addr;
}


static ngx_command_t *
fuzz_find(ngx_str_t *name, ngx_module_t **module)
{
    ngx_uint_t      i;
    ngx_command_t  *cmd;

    for (i = 0; i < FUZZ_MODULES; i++) {
        for (cmd = fuzz_modules[i]->commands; cmd->name.len; cmd++) {
            if (cmd->name.len == name->len
                && ngx_strncmp(cmd->name.data, name->data, name->len) == 0)
            {
                *module = fuzz_modules[i];
                return cmd;
            }
        }
    }

    return NULL;
}


/* ngx_conf_handler()'s check of the number of arguments */

static ngx_uint_t
fuzz_args_ok(ngx_command_t *cmd, ngx_uint_t nelts)
{
    if (cmd->type & NGX_CONF_FLAG) {
        return nelts == 2;
    }

    if (cmd->type & NGX_CONF_1MORE) {
        return nelts >= 2;
    }

    if (cmd->type & NGX_CONF_2MORE) {
        return nelts >= 3;
    }

    if (nelts > NGX_CONF_MAX_ARGS) {
        return 0;
    }

    return (cmd->type & argument_number[nelts - 1]) != 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                  *rv;
    void                  *conf, **confp;
    ngx_str_t              args[NGX_CONF_MAX_ARGS + 2], line;
    ngx_uint_t             nargs, i;
    ngx_pool_t            *pool;
    ngx_conf_t            *cf;
    ngx_module_t          *module;
    ngx_command_t         *cmd;
    ngx_fuzz_in_t          in, words;
    ngx_http_module_t     *mctx;
    ngx_http_conf_ctx_t    hctx;
    void                  *main_conf[FUZZ_MODULES + 1],
                          *srv_conf[FUZZ_MODULES + 1],
                          *loc_conf[FUZZ_MODULES + 1];

    ngx_fuzz_init();

    pool = ngx_fuzz_pool();
    cf = ngx_fuzz_conf(pool, NULL, 0);

    hctx.main_conf = main_conf;
    hctx.srv_conf = srv_conf;
    hctx.loc_conf = loc_conf;
    cf->ctx = &hctx;
    cf->module_type = NGX_HTTP_MODULE;
    cf->cmd_type = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

    for (i = 0; i < FUZZ_MODULES; i++) {
        fuzz_modules[i]->ctx_index = i;
        mctx = fuzz_modules[i]->ctx;

        main_conf[i] = mctx->create_main_conf
                       ? mctx->create_main_conf(cf) : NULL;
        srv_conf[i] = mctx->create_srv_conf ? mctx->create_srv_conf(cf) : NULL;
        loc_conf[i] = mctx->create_loc_conf ? mctx->create_loc_conf(cf) : NULL;
    }

    ngx_http_core_module.ctx_index = FUZZ_CORE;
    main_conf[FUZZ_CORE] = ngx_pcalloc(pool,
                                       sizeof(ngx_http_core_main_conf_t));
    srv_conf[FUZZ_CORE] = ngx_pcalloc(pool, sizeof(ngx_http_core_srv_conf_t));
    loc_conf[FUZZ_CORE] = ngx_pcalloc(pool, sizeof(ngx_http_core_loc_conf_t));

    in.p = data;
    in.last = data + size;

    while (in.p < in.last) {
        line = ngx_fuzz_field(&in, '\n');

        words.p = line.data;
        words.last = line.data + line.len;
        nargs = 0;

        while (words.p < words.last && nargs < NGX_CONF_MAX_ARGS + 2) {
            args[nargs++] = ngx_fuzz_field(&words, ' ');
        }

        if (nargs == 0) {
            continue;
        }

        cmd = fuzz_find(&args[0], &module);

        if (cmd == NULL || !fuzz_args_ok(cmd, nargs)) {
            continue;
        }

        cf->args = ngx_fuzz_conf(pool, args, nargs)->args;

        confp = *(void **) ((char *) cf->ctx + cmd->conf);
        conf = confp[module->ctx_index];

        rv = cmd->set(cf, cmd, conf);

        if (rv != NGX_CONF_OK && rv != NGX_CONF_ERROR) {
            /* a message nginx prints: it must be a C string */
            (void) ngx_strlen(rv);
        }
    }

    ngx_destroy_pool(pool);

    return 0;
}

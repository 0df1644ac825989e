
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_conf: configuration time, the arguments of a directive
 * such as aai_ratelimit_redis (the address or sentinel=, then password=,
 * user=, db=, connect_timeout=, timeout=, backoff=, connections=, tls=
 * and the tls_* files, master=, sentinel_password=), checked and parsed
 * into ngx_aai_redis_conf_t, and the defaults.  Nothing here runs in a
 * worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"


static char *ngx_aai_redis_conf_param(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf, ngx_str_t *param);
static char *ngx_aai_redis_conf_msec(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf, ngx_str_t *name, ngx_str_t *v,
    ngx_msec_t *ms);
static char *ngx_aai_redis_conf_flag(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf, ngx_str_t *name, ngx_str_t *v,
    ngx_flag_t *flag);
static char *ngx_aai_redis_conf_file(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf, ngx_str_t *name, ngx_str_t *v,
    ngx_str_t *file);
static char *ngx_aai_redis_conf_tls(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf);
static char *ngx_aai_redis_conf_sentinels(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf, ngx_str_t *arg);


char *
ngx_aai_redis_conf_set_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    char                  *rv;
    ngx_aai_redis_t      **rsp;
    ngx_aai_redis_post_t  *post;
    ngx_aai_redis_conf_t  *rcf;

    post = cmd->post;

    rcf = (ngx_aai_redis_conf_t *) (p + cmd->offset);
    rsp = (ngx_aai_redis_t **) (p + post->redis);

    if (*rsp != NULL) {
        return "is duplicate";
    }

    rv = ngx_aai_redis_conf_parse(cf, rcf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    *rsp = ngx_aai_redis_create(cf, rcf);
    if (*rsp == NULL) {
        return NGX_CONF_ERROR;
    }

    if (post->post_handler) {
        return post->post_handler(cf, post, *rsp);
    }

    return NGX_CONF_OK;
}


char *
ngx_aai_redis_conf_parse(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf)
{
    char        *rv;
    ngx_str_t   *value;
    ngx_url_t    u;
    ngx_uint_t   i;

    value = cf->args->elts;

    if (rcf->addrs != NULL) {
        return "is duplicate";
    }

    if (cf->args->nelts < 2) {
        return "needs an address";
    }

    rcf->directive = value[0];
    ngx_str_null(&rcf->user);
    ngx_str_null(&rcf->password);
    rcf->db = NGX_CONF_UNSET;
    rcf->connect_timeout = NGX_CONF_UNSET_MSEC;
    rcf->timeout = NGX_CONF_UNSET_MSEC;
    rcf->backoff = NGX_CONF_UNSET_MSEC;
    rcf->connections = NGX_CONF_UNSET_UINT;
    rcf->tls = 0;
    rcf->tls_verify = NGX_CONF_UNSET;
    ngx_str_null(&rcf->tls_ca);
    ngx_str_null(&rcf->tls_cert);
    ngx_str_null(&rcf->tls_key);
    ngx_str_null(&rcf->tls_name);

    rcf->sentinels = NULL;
    rcf->nsentinels = 0;
    rcf->sentinel_names = NULL;
    ngx_str_null(&rcf->master);
    ngx_str_null(&rcf->sentinel_password);
    rcf->seed_names = NULL;
    rcf->cluster = 0;
    rcf->cluster_node = 0;
    rcf->hostname = 0;
    rcf->port = 0;

    ngx_memzero(&u, sizeof(ngx_url_t));

    if (value[1].len > 8 && ngx_strncmp(value[1].data, "cluster=", 8) == 0) {
        if (ngx_aai_redis_cluster_conf(cf, rcf, &value[1]) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (value[1].len > 9
               && ngx_strncmp(value[1].data, "sentinel=", 9) == 0)
    {
        if (ngx_aai_redis_conf_sentinels(cf, rcf, &value[1]) != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

    } else {
        u.url = value[1];
        u.default_port = NGX_AAI_REDIS_DEFAULT_PORT;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid address \"%V\" in \"%V\": %s",
                               &value[1], &rcf->directive,
                               u.err ? u.err : "host not found");
            return NGX_CONF_ERROR;
        }

        rcf->addrs = u.addrs;
        rcf->naddrs = u.naddrs;
        rcf->host = u.host;
        rcf->hostname = ngx_aai_redis_conf_is_name(&u.host);
        rcf->port = ngx_inet_get_port(u.addrs[0].sockaddr);
    }

    rcf->url = value[1];

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_aai_redis_conf_param(cf, rcf, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (rcf->nsentinels && rcf->master.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sentinel\" needs \"master\" in \"%V\"",
                           &rcf->directive);
        return NGX_CONF_ERROR;
    }

    if (rcf->nsentinels == 0
        && (rcf->master.len || rcf->sentinel_password.len))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"master\" and \"sentinel_password\" need "
                           "\"sentinel=\" in \"%V\"", &rcf->directive);
        return NGX_CONF_ERROR;
    }

    if (rcf->user.len && rcf->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"user\" needs \"password\" in \"%V\"",
                           &rcf->directive);
        return NGX_CONF_ERROR;
    }

    if (ngx_aai_redis_conf_tls(cf, rcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_aai_redis_conf_init(rcf);

    return NGX_CONF_OK;
}


/*
 * sentinel=host:port,...: the sentinels, resolved here.  The client's one
 * address is a placeholder named "sentinel:..." (the key of its shared
 * circuit state); the primary's address is learnt in each worker.
 */

static char *
ngx_aai_redis_conf_sentinels(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *arg)
{
    u_char      *p, *last, *comma;
    ngx_url_t    u;
    ngx_uint_t   n;
    ngx_addr_t  *addrs;

    p = arg->data + 9;
    last = arg->data + arg->len;

    n = 1;
    for (comma = p; comma < last; comma++) {
        n += (*comma == ',');
    }

    addrs = ngx_pcalloc(cf->pool, n * sizeof(ngx_addr_t));
    if (addrs == NULL) {
        return NGX_CONF_ERROR;
    }

    rcf->sentinels = addrs;
    rcf->nsentinels = 0;

    while (p < last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));
        u.url.data = p;
        u.url.len = comma - p;
        u.default_port = 26379;
        u.no_resolve = 0;

        if (u.url.len == 0
            || ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0
            || u.family == AF_UNIX)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid sentinel address \"%V\" in \"%V\"%s%s",
                               &u.url, &rcf->directive,
                               u.err ? ": " : "", u.err ? u.err : "");
            return NGX_CONF_ERROR;
        }

        if (ngx_aai_redis_conf_is_name(&u.host)) {

            /* looked up again at run time if there is a resolver */

            if (rcf->sentinel_names == NULL) {
                rcf->sentinel_names = ngx_pcalloc(cf->pool,
                                                  n * sizeof(ngx_str_t));
                if (rcf->sentinel_names == NULL) {
                    return NGX_CONF_ERROR;
                }
            }

            rcf->sentinel_names[rcf->nsentinels] = u.host;
        }

        addrs[rcf->nsentinels++] = u.addrs[0];
        p = comma + 1;
    }

    if (rcf->nsentinels == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no sentinel address in \"%V\"", &rcf->directive);
        return NGX_CONF_ERROR;
    }

    /* the placeholder: the first sentinel's address, another name */

    rcf->addrs = ngx_pcalloc(cf->pool, sizeof(ngx_addr_t));
    if (rcf->addrs == NULL) {
        return NGX_CONF_ERROR;
    }

    *rcf->addrs = addrs[0];
    rcf->addrs->name = *arg;
    rcf->naddrs = 1;

    return NGX_CONF_OK;
}


/* a host name, which a resolver can look up again; not an IP address */

ngx_flag_t
ngx_aai_redis_conf_is_name(ngx_str_t *host)
{
    if (host->len == 0 || host->data[0] == '[') {
        return 0;
    }

    return ngx_inet_addr(host->data, host->len) == INADDR_NONE;
}


/* the TLS parameters together; the files are loaded by create() */

static char *
ngx_aai_redis_conf_tls(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf)
{
    u_char  *p;

    if (!rcf->tls) {
        if (rcf->tls_ca.len || rcf->tls_cert.len || rcf->tls_key.len
            || rcf->tls_name.len || rcf->tls_verify != NGX_CONF_UNSET)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "TLS parameters need \"tls=on\" in \"%V\"",
                               &rcf->directive);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

#if !(NGX_SSL)

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"tls=on\" in \"%V\" needs nginx built with "
                       "OpenSSL", &rcf->directive);
    return NGX_CONF_ERROR;

#else

    if (rcf->tls_cert.len && rcf->tls_key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"tls_cert\" needs \"tls_key\" in \"%V\"",
                           &rcf->directive);
        return NGX_CONF_ERROR;
    }

    if (rcf->tls_key.len && rcf->tls_cert.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"tls_key\" needs \"tls_cert\" in \"%V\"",
                           &rcf->directive);
        return NGX_CONF_ERROR;
    }

    if (rcf->tls_verify == NGX_CONF_UNSET) {
        rcf->tls_verify = 1;
    }

    if (rcf->tls_name.len == 0) {
        if (rcf->host.len == 0) {
            if (rcf->tls_verify) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"tls_verify=on\" needs \"tls_name\" "
                                   "for \"%V\" in \"%V\"",
                                   &rcf->url, &rcf->directive);
                return NGX_CONF_ERROR;
            }

            return NGX_CONF_OK;
        }

        /* null-terminated for SSL_set_tlsext_host_name() */

        p = ngx_pnalloc(cf->pool, rcf->host.len + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(p, rcf->host.data, rcf->host.len);
        p[rcf->host.len] = '\0';

        rcf->tls_name.data = p;
        rcf->tls_name.len = rcf->host.len;
    }

    return NGX_CONF_OK;

#endif
}


static char *
ngx_aai_redis_conf_param(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *param)
{
    u_char     *p, *env;
    ngx_int_t   n;
    ngx_str_t   name, v;

    p = ngx_strlchr(param->data, param->data + param->len, '=');

    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           param, &rcf->directive);
        return NGX_CONF_ERROR;
    }

    name.data = param->data;
    name.len = p - param->data;
    v.data = p + 1;
    v.len = param->data + param->len - v.data;

    if (name.len == 6 && ngx_strncmp(name.data, "master", 6) == 0) {
        if (v.len == 0) {
            goto invalid;
        }

        rcf->master = v;
        return NGX_CONF_OK;
    }

    if ((name.len == 8 && ngx_strncmp(name.data, "password", 8) == 0)
        || (name.len == 17
            && ngx_strncmp(name.data, "sentinel_password", 17) == 0))
    {
        if (v.len >= 4 && ngx_strncmp(v.data, "env:", 4) == 0) {

            if (v.len == 4) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "no variable name in \"%V\" in \"%V\"",
                                   param, &rcf->directive);
                return NGX_CONF_ERROR;
            }

            /* the argument is null-terminated: so is the variable name */

            env = (u_char *) getenv((char *) v.data + 4);

            if (env == NULL || *env == '\0') {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "environment variable \"%s\" is not set "
                                   "in \"%V\"", v.data + 4, &rcf->directive);
                return NGX_CONF_ERROR;
            }

            v.len = ngx_strlen(env);
            v.data = ngx_pstrdup(cf->pool, &v);
            if (v.data == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memcpy(v.data, env, v.len);
        }

        if (v.len == 0) {
            goto invalid;
        }

        if (name.len == 8) {
            rcf->password = v;

        } else {
            rcf->sentinel_password = v;
        }

        return NGX_CONF_OK;
    }

    if (name.len == 4 && ngx_strncmp(name.data, "user", 4) == 0) {
        if (v.len == 0) {
            goto invalid;
        }

        rcf->user = v;
        return NGX_CONF_OK;
    }

    if (name.len == 2 && ngx_strncmp(name.data, "db", 2) == 0) {
        n = ngx_atoi(v.data, v.len);
        if (n == NGX_ERROR) {
            goto invalid;
        }

        rcf->db = n;
        return NGX_CONF_OK;
    }

    if (name.len == 15 && ngx_strncmp(name.data, "connect_timeout", 15) == 0)
    {
        return ngx_aai_redis_conf_msec(cf, rcf, &name, &v,
                                       &rcf->connect_timeout);
    }

    if (name.len == 7 && ngx_strncmp(name.data, "timeout", 7) == 0) {
        return ngx_aai_redis_conf_msec(cf, rcf, &name, &v, &rcf->timeout);
    }

    if (name.len == 7 && ngx_strncmp(name.data, "backoff", 7) == 0) {
        return ngx_aai_redis_conf_msec(cf, rcf, &name, &v, &rcf->backoff);
    }

    if (name.len == 11 && ngx_strncmp(name.data, "connections", 11) == 0) {
        n = ngx_atoi(v.data, v.len);
        if (n < 1 || n > NGX_AAI_REDIS_MAX_CONNECTIONS) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" of \"connections\" in "
                               "\"%V\", must be 1..%d", &v, &rcf->directive,
                               NGX_AAI_REDIS_MAX_CONNECTIONS);
            return NGX_CONF_ERROR;
        }

        rcf->connections = n;
        return NGX_CONF_OK;
    }

    if (name.len == 3 && ngx_strncmp(name.data, "tls", 3) == 0) {
        return ngx_aai_redis_conf_flag(cf, rcf, &name, &v, &rcf->tls);
    }

    if (name.len == 10 && ngx_strncmp(name.data, "tls_verify", 10) == 0) {
        return ngx_aai_redis_conf_flag(cf, rcf, &name, &v, &rcf->tls_verify);
    }

    if (name.len == 6 && ngx_strncmp(name.data, "tls_ca", 6) == 0) {
        return ngx_aai_redis_conf_file(cf, rcf, &name, &v, &rcf->tls_ca);
    }

    if (name.len == 8 && ngx_strncmp(name.data, "tls_cert", 8) == 0) {
        return ngx_aai_redis_conf_file(cf, rcf, &name, &v, &rcf->tls_cert);
    }

    if (name.len == 7 && ngx_strncmp(name.data, "tls_key", 7) == 0) {
        return ngx_aai_redis_conf_file(cf, rcf, &name, &v, &rcf->tls_key);
    }

    if (name.len == 8 && ngx_strncmp(name.data, "tls_name", 8) == 0) {
        if (v.len == 0 || v.len > 253) {
            goto invalid;
        }

        /* the argument is null-terminated: so is the value */

        rcf->tls_name = v;
        return NGX_CONF_OK;
    }

    /* the value is not shown: it may be a misspelt password */

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown parameter \"%V\" in \"%V\"",
                       &name, &rcf->directive);
    return NGX_CONF_ERROR;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" of \"%V\" in \"%V\"",
                       &v, &name, &rcf->directive);
    return NGX_CONF_ERROR;
}


static char *
ngx_aai_redis_conf_msec(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *name, ngx_str_t *v, ngx_msec_t *ms)
{
    ngx_int_t  n;

    n = ngx_parse_time(v, 0);

    if (n == NGX_ERROR || n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" of \"%V\" in \"%V\"",
                           v, name, &rcf->directive);
        return NGX_CONF_ERROR;
    }

    *ms = (ngx_msec_t) n;

    return NGX_CONF_OK;
}


static char *
ngx_aai_redis_conf_flag(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *name, ngx_str_t *v, ngx_flag_t *flag)
{
    if (v->len == 2 && ngx_strncasecmp(v->data, (u_char *) "on", 2) == 0) {
        *flag = 1;
        return NGX_CONF_OK;
    }

    if (v->len == 3 && ngx_strncasecmp(v->data, (u_char *) "off", 3) == 0) {
        *flag = 0;
        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" of \"%V\" in \"%V\", "
                       "must be \"on\" or \"off\"",
                       v, name, &rcf->directive);
    return NGX_CONF_ERROR;
}


/* a file that must exist and be readable: checked here, for nginx -t */

static char *
ngx_aai_redis_conf_file(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *name, ngx_str_t *v, ngx_str_t *file)
{
    ngx_str_t  full;

    if (v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty \"%V\" in \"%V\"", name, &rcf->directive);
        return NGX_CONF_ERROR;
    }

    full = *v;

    if (ngx_conf_full_name(cf->cycle, &full, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (access((char *) full.data, R_OK) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read %V file \"%V\" in \"%V\"",
                           name, &full, &rcf->directive);
        return NGX_CONF_ERROR;
    }

    *file = full;

    return NGX_CONF_OK;
}


void
ngx_aai_redis_conf_init(ngx_aai_redis_conf_t *rcf)
{
    if (rcf->connect_timeout == NGX_CONF_UNSET_MSEC
        || rcf->connect_timeout == 0)
    {
        rcf->connect_timeout = 200;
    }

    if (rcf->timeout == NGX_CONF_UNSET_MSEC || rcf->timeout == 0) {
        rcf->timeout = 100;
    }

    if (rcf->backoff == NGX_CONF_UNSET_MSEC || rcf->backoff == 0) {
        rcf->backoff = 1000;
    }

    if (rcf->connections == NGX_CONF_UNSET_UINT || rcf->connections == 0) {
        rcf->connections = 1;
    }

    if (rcf->db < 0) {
        rcf->db = -1;
    }

    if (rcf->tls_verify == NGX_CONF_UNSET) {
        rcf->tls_verify = rcf->tls ? 1 : 0;
    }
}

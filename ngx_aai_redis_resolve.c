
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_resolve: a Redis address given as a host name, looked up
 * again at run time.  When the http block has a "resolver" (with name
 * servers), a connection that reconnects (after a failure, or after the
 * server closed it) first asks that resolver for the name, without
 * blocking, and connects to the address it answers (the n-th of several,
 * turning on each failure as the configured addresses do).  The resolver
 * caches answers for their TTL or its valid= time.  A lookup that fails
 * or times out (resolver_timeout) fails the connection: its pending
 * commands fail and it tries again after its backoff, as after a refused
 * connect.  Without a resolver the addresses found when the configuration
 * was read are used, as before.
 *
 * The first connection of a worker uses the configured addresses: a worker
 * starts serving without waiting for DNS.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_redis_int.h"


static void ngx_aai_redis_resolve_handler(ngx_resolver_ctx_t *ctx);


/* the resolver of the http block, if it has name servers */

void
ngx_aai_redis_resolver_init(ngx_aai_redis_t *rs, ngx_cycle_t *cycle)
{
    ngx_http_conf_ctx_t       *ctx;
    ngx_http_core_loc_conf_t  *clcf;

    rs->resolver = NULL;

    if (!rs->conf->hostname && rs->conf->sentinel_names == NULL) {
        return;
    }

    ctx = (ngx_http_conf_ctx_t *) cycle->conf_ctx[ngx_http_module.index];
    if (ctx == NULL) {
        return;
    }

    clcf = ctx->loc_conf[ngx_http_core_module.ctx_index];

    /* without "resolver" nginx gives the http block one with no servers */

    if (clcf == NULL || clcf->resolver == NULL
        || clcf->resolver->connections.nelts == 0)
    {
        return;
    }

    rs->resolver = clcf->resolver;

    /* nginx's default where the http block does not set it */

    rs->resolver_timeout = (clcf->resolver_timeout == NGX_CONF_UNSET_MSEC)
                           ? 30000 : clcf->resolver_timeout;
}


/*
 * Starts a lookup of host.  The resolver may answer from its cache at
 * once, calling handler from inside ngx_resolve_name(): *ctxp is set
 * before, and the handler clears it.  NGX_ERROR: no lookup (*ctxp NULL),
 * the handler was not called.
 */

ngx_int_t
ngx_aai_redis_resolve_name(ngx_aai_redis_t *rs, ngx_str_t *host,
    ngx_resolver_handler_pt handler, void *data, ngx_resolver_ctx_t **ctxp)
{
    ngx_resolver_ctx_t  *ctx;

    *ctxp = NULL;

    ctx = ngx_resolve_start(rs->resolver, NULL);

    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        return NGX_ERROR;
    }

    ctx->name = *host;
    ctx->handler = handler;
    ctx->data = data;
    ctx->timeout = rs->resolver_timeout;

    *ctxp = ctx;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis: looking up \"%V\"", host);

    if (ngx_resolve_name(ctx) != NGX_OK) {

        /* the resolver freed ctx */

        *ctxp = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * In a lookup's handler: its n-th address (modulo their number) with port
 * into addr, whose sockaddr and name point to sa and text (of
 * NGX_SOCKADDR_STRLEN); NGX_DECLINED if the lookup failed (ctx->state
 * says why, 0: no address).  The caller ends the lookup.
 */

ngx_int_t
ngx_aai_redis_resolved(ngx_resolver_ctx_t *ctx, ngx_uint_t n, in_port_t port,
    ngx_addr_t *addr, ngx_sockaddr_t *sa, u_char *text)
{
    socklen_t  socklen;

    if (ctx->state != NGX_OK || ctx->naddrs == 0) {
        return NGX_DECLINED;
    }

    n %= ctx->naddrs;

    socklen = ngx_min(ctx->addrs[n].socklen, sizeof(ngx_sockaddr_t));

    ngx_memcpy(sa, ctx->addrs[n].sockaddr, socklen);
    ngx_inet_set_port(&sa->sockaddr, port);

    addr->sockaddr = &sa->sockaddr;
    addr->socklen = socklen;
    addr->name.data = text;
    addr->name.len = ngx_sock_ntop(&sa->sockaddr, socklen, text,
                                   NGX_SOCKADDR_STRLEN, 1);

    return NGX_OK;
}


/* why a lookup failed, for a log line */

const char *
ngx_aai_redis_resolve_strerror(ngx_resolver_ctx_t *ctx)
{
    return ctx->state == NGX_OK ? "no address"
                                : ngx_resolver_strerror(ctx->state);
}


/* a connection's reconnect: the handler connects */

ngx_int_t
ngx_aai_redis_resolve(ngx_aai_redis_conn_t *conn)
{
    ngx_aai_redis_conf_t  *rcf;

    rcf = conn->rs->conf;

    conn->state = NGX_AAI_REDIS_RESOLVING;

    if (ngx_aai_redis_resolve_name(conn->rs, &rcf->host,
                                   ngx_aai_redis_resolve_handler, conn,
                                   &conn->rctx)
        != NGX_OK)
    {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "cannot look up \"%V\"", &rcf->host);
        return NGX_ERROR;
    }

    if (conn->state == NGX_AAI_REDIS_BACKOFF) {
        return NGX_ERROR;
    }

    /* the connection is waiting for the resolver, or connecting */

    return NGX_OK;
}


void
ngx_aai_redis_resolve_cancel(ngx_aai_redis_conn_t *conn)
{
    ngx_resolver_ctx_t  *ctx;

    ctx = conn->rctx;

    if (ctx == NULL) {
        return;
    }

    conn->rctx = NULL;
    ngx_resolve_name_done(ctx);
}


static void
ngx_aai_redis_resolve_handler(ngx_resolver_ctx_t *ctx)
{
    ngx_int_t              state;
    ngx_addr_t             addr;
    ngx_aai_redis_t       *rs;
    ngx_aai_redis_conn_t  *conn;
    ngx_aai_redis_conf_t  *rcf;
    u_char                 text[NGX_SOCKADDR_STRLEN];

    conn = ctx->data;
    rs = conn->rs;
    rcf = rs->conf;

    conn->rctx = NULL;

    if (ngx_aai_redis_resolved(ctx, conn->addr, rcf->port, &addr,
                               &conn->rsa, text)
        != NGX_OK)
    {
        state = ctx->state;

        /* a failed connect: logged once per outage, with the name */

        ngx_aai_redis_fail(conn, 0,
                           state == NGX_RESOLVE_TIMEDOUT
                           ? ngx_aai_redis_timeout : "connection lost",
                           "\"%V\" could not be resolved (%i: %s)",
                           &rcf->host, state,
                           ngx_aai_redis_resolve_strerror(ctx));

        ngx_resolve_name_done(ctx);
        return;
    }

    ngx_resolve_name_done(ctx);

    /* a change from the address the connection had is worth a line */

    if (addr.name.len != conn->name->len
        || ngx_strncmp(text, conn->name->data, addr.name.len) != 0)
    {
        ngx_log_error(NGX_LOG_NOTICE, rs->log, 0,
                      "aai redis %V: \"%V\" now resolves to %V",
                      &rcf->url, &rcf->host, &addr.name);
    }

    ngx_memcpy(conn->rname, text, addr.name.len);

    conn->raddr = addr;
    conn->raddr.name.data = conn->rname;
    conn->resolved = 1;

    (void) ngx_aai_redis_connect_addr(conn, &conn->raddr);
}

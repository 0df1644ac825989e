
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_sentinel: sentinel=.  In each worker, one connection to
 * one sentinel at a time asks for the primary of master=NAME and then
 * listens to +switch-master; a new primary makes every connection to the
 * old one fail its pending commands and connect to the new one.  A
 * sentinel given by host name is looked up again before each reconnect
 * when the http block has a resolver (ngx_aai_redis_resolve.c).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"


static void ngx_aai_redis_sentinel_connect(ngx_aai_redis_sentinel_t *st);
static void ngx_aai_redis_sentinel_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_aai_redis_sentinel_connect_addr(
    ngx_aai_redis_sentinel_t *st, ngx_addr_t *addr);
static void ngx_aai_redis_sentinel_close(ngx_aai_redis_sentinel_t *st);
static void ngx_aai_redis_sentinel_fail(ngx_aai_redis_sentinel_t *st,
    const char *fmt, ...);
static void ngx_aai_redis_sentinel_write(ngx_event_t *wev);
static void ngx_aai_redis_sentinel_read(ngx_event_t *rev);
static ngx_int_t ngx_aai_redis_sentinel_reply(ngx_aai_redis_sentinel_t *st,
    redisReply *reply);
static void ngx_aai_redis_sentinel_timer(ngx_event_t *ev);
static ngx_int_t ngx_aai_redis_set_primary(ngx_aai_redis_t *rs,
    ngx_str_t *host, ngx_str_t *port);


ngx_int_t
ngx_aai_redis_sentinel_init(ngx_aai_redis_t *rs, ngx_cycle_t *cycle)
{
    u_char                    *p;
    size_t                     size;
    ngx_str_t                  auth[2], ask[3], sub[2];
    ngx_aai_redis_conf_t      *rcf;
    ngx_aai_redis_sentinel_t  *st;

    rcf = rs->conf;

    st = ngx_calloc(sizeof(ngx_aai_redis_sentinel_t), rs->log);
    if (st == NULL) {
        return NGX_ERROR;
    }

    st->rs = rs;
    st->next = ngx_pid % rcf->nsentinels;  /* spread the workers */

    ngx_str_set(&auth[0], "AUTH");
    auth[1] = rcf->sentinel_password;
    ngx_str_set(&ask[0], "SENTINEL");
    ngx_str_set(&ask[1], "get-master-addr-by-name");
    ask[2] = rcf->master;
    ngx_str_set(&sub[0], "SUBSCRIBE");
    ngx_str_set(&sub[1], "+switch-master");

    size = ngx_aai_redis_resp_size(2, auth) + ngx_aai_redis_resp_size(3, ask)
           + ngx_aai_redis_resp_size(2, sub);

    st->out = ngx_alloc(size, rs->log);
    if (st->out == NULL) {
        ngx_free(st);
        return NGX_ERROR;
    }

    p = st->out;

    if (rcf->sentinel_password.len) {
        p = ngx_aai_redis_resp(p, 2, auth);
    }

    p = ngx_aai_redis_resp(p, 3, ask);
    p = ngx_aai_redis_resp(p, 2, sub);
    st->out_len = p - st->out;

    /* as for the Redis connections: core's messages below "crit" kept out */

    st->log = *cycle->log;
    st->log.handler = NULL;
    st->log.action = NULL;

    if (st->log.log_level > NGX_LOG_CRIT) {
        st->log.log_level = NGX_LOG_CRIT;
    }

    st->timer.handler = ngx_aai_redis_sentinel_timer;
    st->timer.data = &rs->dummy;
    st->timer.log = rs->log;
    st->timer.cancelable = 1;

    rs->primary.sockaddr = &rs->primary_sa.sockaddr;
    rs->primary.name.data = rs->primary_name;
    rs->primary.name.len = 0;

    rs->sentinel = st;

    ngx_aai_redis_sentinel_connect(st);

    return NGX_OK;
}


void
ngx_aai_redis_sentinel_destroy(ngx_aai_redis_t *rs)
{
    ngx_aai_redis_sentinel_t  *st;

    st = rs->sentinel;

    if (st == NULL) {
        return;
    }

    ngx_aai_redis_sentinel_close(st);

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    ngx_free(st->out);
    ngx_free(st);

    rs->sentinel = NULL;
}


static void
ngx_aai_redis_sentinel_connect(ngx_aai_redis_sentinel_t *st)
{
    ngx_str_t             *host;
    ngx_aai_redis_t       *rs;
    ngx_aai_redis_conf_t  *rcf;

    rs = st->rs;
    rcf = rs->conf;

    host = rcf->sentinel_names
           ? &rcf->sentinel_names[st->next % rcf->nsentinels] : NULL;

    if (st->reconnect && host && host->len && rs->resolver) {

        /* a sentinel given by name: looked up again, then connected */

        st->state = NGX_AAI_REDIS_SENTINEL_RESOLVING;

        if (ngx_aai_redis_resolve_name(rs, host,
                                       ngx_aai_redis_sentinel_resolved, st,
                                       &st->rctx)
            != NGX_OK)
        {
            ngx_aai_redis_sentinel_fail(st, "cannot look up \"%V\"", host);
        }

        return;
    }

    ngx_aai_redis_sentinel_connect_addr(st,
                               &rcf->sentinels[st->next % rcf->nsentinels]);
}


static void
ngx_aai_redis_sentinel_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_int_t                  state;
    ngx_str_t                 *host;
    ngx_addr_t                *addr;
    const char                *why;
    ngx_aai_redis_conf_t      *rcf;
    ngx_aai_redis_sentinel_t  *st;

    st = ctx->data;
    rcf = st->rs->conf;

    st->rctx = NULL;

    host = &rcf->sentinel_names[st->next % rcf->nsentinels];
    addr = &rcf->sentinels[st->next % rcf->nsentinels];

    if (ngx_aai_redis_resolved(ctx, 0, ngx_inet_get_port(addr->sockaddr),
                               &st->raddr, &st->rsa, st->rname)
        != NGX_OK)
    {
        state = ctx->state;
        why = ngx_aai_redis_resolve_strerror(ctx);

        ngx_resolve_name_done(ctx);

        ngx_aai_redis_sentinel_fail(st, "\"%V\" could not be resolved "
                                    "(%i: %s)", host, state, why);
        return;
    }

    ngx_resolve_name_done(ctx);

    ngx_aai_redis_sentinel_connect_addr(st, &st->raddr);
}


static void
ngx_aai_redis_sentinel_connect_addr(ngx_aai_redis_sentinel_t *st,
    ngx_addr_t *addr)
{
    ngx_int_t              rc;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rs = st->rs;
    rcf = rs->conf;

    st->reconnect = 1;

    st->reader = ngx_aai_redis_reader_create();
    if (st->reader == NULL) {
        ngx_aai_redis_sentinel_fail(st, "redisReaderCreate() failed");
        return;
    }

    ngx_memzero(&st->pc, sizeof(ngx_peer_connection_t));

    st->pc.sockaddr = addr->sockaddr;
    st->pc.socklen = addr->socklen;
    st->pc.name = &addr->name;
    st->pc.get = ngx_event_get_peer;
    st->pc.log = &st->log;
    st->pc.log_error = NGX_ERROR_ERR;
    st->pc.so_keepalive = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis master \"%V\": asking sentinel %V",
                   &rcf->master, &addr->name);

    st->state = NGX_AAI_REDIS_SENTINEL_CONNECTING;
    st->out_sent = 0;
    st->expect = 1 + (rcf->sentinel_password.len != 0);
    st->asked = ngx_current_msec;

    rc = ngx_event_connect_peer(&st->pc);

    if (rc == NGX_ERROR || rc == NGX_DECLINED || rc == NGX_BUSY) {
        st->pc.connection = NULL;
        ngx_aai_redis_sentinel_fail(st, "connect() failed");
        return;
    }

    c = st->pc.connection;
    c->data = st;
    c->read->handler = ngx_aai_redis_sentinel_read;
    c->write->handler = ngx_aai_redis_sentinel_write;

    /* connect, and the replies up to SUBSCRIBE's */

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    ngx_add_timer(&st->timer, rcf->connect_timeout + rcf->timeout);

    if (rc == NGX_OK) {
        st->state = NGX_AAI_REDIS_SENTINEL_ASKED;
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


static void
ngx_aai_redis_sentinel_close(ngx_aai_redis_sentinel_t *st)
{
    ngx_resolver_ctx_t  *ctx;

    ctx = st->rctx;

    if (ctx) {
        st->rctx = NULL;
        ngx_resolve_name_done(ctx);
    }

    if (st->pc.connection) {
        ngx_close_connection(st->pc.connection);
        st->pc.connection = NULL;
    }

    if (st->reader) {
        redisReaderFree(st->reader);
        st->reader = NULL;
    }

    st->state = NGX_AAI_REDIS_SENTINEL_IDLE;
}


static void
ngx_aai_redis_sentinel_fail(ngx_aai_redis_sentinel_t *st, const char *fmt,
    ...)
{
    u_char                *p;
    va_list                args;
    ngx_str_t             *name;
    ngx_uint_t             level;
    ngx_aai_redis_conf_t  *rcf;
    u_char                 text[NGX_MAX_ERROR_STR];

    rcf = st->rs->conf;
    name = &rcf->sentinels[st->next % rcf->nsentinels].name;

    va_start(args, fmt);
    p = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    ngx_aai_redis_sentinel_close(st);

    st->next++;

    if (st->backoff == 0) {
        st->backoff = ngx_min(NGX_AAI_REDIS_BACKOFF_MIN, rcf->backoff);

    } else {
        st->backoff = ngx_min(st->backoff * 2, rcf->backoff);
    }

    level = (st->failures++ == 0) ? NGX_LOG_ERR : NGX_LOG_INFO;

    ngx_log_error(level, st->rs->log, 0,
                  "aai redis master \"%V\": sentinel %V: %*s, "
                  "asking the next in %Mms", &rcf->master, name,
                  (size_t) (p - text), text, st->backoff);

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(&st->timer, st->backoff);
    }
}


static void
ngx_aai_redis_sentinel_timer(ngx_event_t *ev)
{
    ngx_aai_redis_sentinel_t  *st;

    st = (ngx_aai_redis_sentinel_t *)
             ((u_char *) ev - offsetof(ngx_aai_redis_sentinel_t, timer));

    if (st->state == NGX_AAI_REDIS_SENTINEL_IDLE) {
        if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
            ngx_aai_redis_sentinel_connect(st);
        }

        return;
    }

    ngx_aai_redis_sentinel_fail(st, "timed out");
}


static void
ngx_aai_redis_sentinel_write(ngx_event_t *wev)
{
    int                        err;
    ssize_t                    n;
    socklen_t                  len;
    ngx_connection_t          *c;
    ngx_aai_redis_sentinel_t  *st;

    c = wev->data;
    st = c->data;

    if (st->state == NGX_AAI_REDIS_SENTINEL_CONNECTING) {
        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_aai_redis_sentinel_fail(st, "connect() failed (%d)", err);
            return;
        }

        st->state = NGX_AAI_REDIS_SENTINEL_ASKED;
    }

    while (st->out_sent < st->out_len) {
        n = c->send(c, st->out + st->out_sent, st->out_len - st->out_sent);

        if (n > 0) {
            st->out_sent += n;
            continue;
        }

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_aai_redis_sentinel_fail(st, "cannot arm an event");
            }

            return;
        }

        ngx_aai_redis_sentinel_fail(st, "send() failed");
        return;
    }
}


static void
ngx_aai_redis_sentinel_read(ngx_event_t *rev)
{
    void                      *obj;
    ssize_t                    n;
    ngx_aai_redis_t           *rs;
    ngx_connection_t          *c;
    ngx_aai_redis_sentinel_t  *st;

    c = rev->data;
    st = c->data;
    rs = st->rs;

    if (st->state == NGX_AAI_REDIS_SENTINEL_CONNECTING) {
        ngx_aai_redis_sentinel_write(c->write);

        if (st->pc.connection != c) {
            return;
        }
    }

    for ( ;; ) {
        n = c->recv(c, rs->rbuf, NGX_AAI_REDIS_RBUF_SIZE);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_aai_redis_sentinel_fail(st, "cannot arm an event");
            }

            return;
        }

        if (n == 0) {
            ngx_aai_redis_sentinel_fail(st, "connection closed");
            return;
        }

        if (n < 0) {
            ngx_aai_redis_sentinel_fail(st, "recv() failed");
            return;
        }

        if (redisReaderFeed(st->reader, (char *) rs->rbuf, n) != REDIS_OK) {
            ngx_aai_redis_sentinel_fail(st, "redisReaderFeed() failed");
            return;
        }

        for ( ;; ) {
            obj = NULL;

            if (redisReaderGetReply(st->reader, &obj) != REDIS_OK) {
                ngx_aai_redis_sentinel_fail(st, "protocol error");
                return;
            }

            if (obj == NULL) {
                break;
            }

            if (ngx_aai_redis_sentinel_reply(st, obj) != NGX_OK) {
                freeReplyObject(obj);
                return;
            }

            freeReplyObject(obj);

            if (st->pc.connection != c) {
                return;     /* closed to ask again */
            }
        }
    }
}


/*
 * In order: AUTH's +OK, the primary's address, SUBSCRIBE's confirmation;
 * then "+switch-master" messages: "<name> <old ip> <old port> <new ip>
 * <new port>".
 */

static ngx_int_t
ngx_aai_redis_sentinel_reply(ngx_aai_redis_sentinel_t *st, redisReply *r)
{
    u_char                *p, *last, *f[5];
    ngx_str_t              host, port;
    ngx_uint_t             i;
    ngx_aai_redis_t       *rs;
    ngx_aai_redis_conf_t  *rcf;

    rs = st->rs;
    rcf = rs->conf;

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_aai_redis_sentinel_fail(st, "error reply: %*s",
                                    ngx_min(r->len, 200), r->str);
        return NGX_ERROR;
    }

    if (st->state == NGX_AAI_REDIS_SENTINEL_ASKED) {

        if (st->expect == 2) {          /* AUTH */
            st->expect--;
            return NGX_OK;
        }

        if (st->expect == 1) {          /* get-master-addr-by-name */
            st->expect--;

            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2
                || r->element[0]->type != REDIS_REPLY_STRING
                || r->element[1]->type != REDIS_REPLY_STRING)
            {
                ngx_aai_redis_sentinel_fail(st, "no primary known for "
                                            "\"%V\"", &rcf->master);
                return NGX_ERROR;
            }

            host.data = (u_char *) r->element[0]->str;
            host.len = r->element[0]->len;
            port.data = (u_char *) r->element[1]->str;
            port.len = r->element[1]->len;

            if (ngx_aai_redis_set_primary(rs, &host, &port) != NGX_OK) {
                ngx_aai_redis_sentinel_fail(st, "bad address \"%V\" \"%V\"",
                                            &host, &port);
                return NGX_ERROR;
            }

            return NGX_OK;
        }

        /* SUBSCRIBE's confirmation: listening; no deadline any more */

        st->state = NGX_AAI_REDIS_SENTINEL_SUBSCRIBED;
        st->failures = 0;
        st->backoff = 0;

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis master \"%V\": listening for "
                       "+switch-master", &rcf->master);

        if (st->timer.timer_set) {
            ngx_del_timer(&st->timer);
        }

        return NGX_OK;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
        || r->element[0]->type != REDIS_REPLY_STRING
        || r->element[2]->type != REDIS_REPLY_STRING
        || r->element[0]->len != 7
        || ngx_strncmp(r->element[0]->str, "message", 7) != 0)
    {
        return NGX_OK;
    }

    p = (u_char *) r->element[2]->str;
    last = p + r->element[2]->len;

    for (i = 0; i < 5; i++) {
        f[i] = p;
        p = ngx_strlchr(p, last, ' ');

        if (p == NULL) {
            p = last;
        }

        if (i < 4) {
            if (p == last) {
                return NGX_OK;
            }

            p++;
        }
    }

    if ((size_t) (f[1] - f[0] - 1) != rcf->master.len
        || ngx_strncmp(f[0], rcf->master.data, rcf->master.len) != 0)
    {
        return NGX_OK;      /* another primary's */
    }

    host.data = f[3];
    host.len = f[4] - f[3] - 1;
    port.data = f[4];
    port.len = last - f[4];

    ngx_log_error(NGX_LOG_WARN, rs->log, 0,
                  "aai redis master \"%V\": +switch-master to %V:%V",
                  &rcf->master, &host, &port);

    if (ngx_aai_redis_set_primary(rs, &host, &port) != NGX_OK) {
        ngx_aai_redis_sentinel_fail(st, "bad address \"%V\" \"%V\"",
                                    &host, &port);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A connection to the primary was lost (or its ROLE was not "master"):
 * the sentinel connection is made again, which asks again.  At most one
 * ask per backoff step of 100 ms.
 */

void
ngx_aai_redis_sentinel_reask(ngx_aai_redis_t *rs)
{
    ngx_aai_redis_sentinel_t  *st;

    st = rs->sentinel;

    if (st == NULL || rs->switching
        || st->state != NGX_AAI_REDIS_SENTINEL_SUBSCRIBED
        || ngx_current_msec - st->asked < NGX_AAI_REDIS_BACKOFF_MIN)
    {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis master \"%V\": asking the sentinels again",
                   &rs->conf->master);

    ngx_aai_redis_sentinel_close(st);

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    ngx_add_timer(&st->timer, 1);
}


/*
 * The sentinels named the primary.  A new one: every connection to the old
 * one fails its pending commands and connects to the new one at once.
 */

static ngx_int_t
ngx_aai_redis_set_primary(ngx_aai_redis_t *rs, ngx_str_t *host,
    ngx_str_t *port)
{
    ngx_int_t              n;
    ngx_uint_t             i, known, level;
    ngx_addr_t             addr;
    ngx_pool_t            *pool;
    ngx_aai_redis_conn_t  *conn;

    n = ngx_atoi(port->data, port->len);

    if (n < 1 || n > 65535 || host->len == 0) {
        return NGX_ERROR;
    }

    pool = ngx_create_pool(512, rs->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    if (ngx_parse_addr(pool, &addr, host->data, host->len) != NGX_OK
        || addr.socklen > sizeof(ngx_sockaddr_t))
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ngx_inet_set_port(addr.sockaddr, (in_port_t) n);

    if (rs->primary_known
        && ngx_cmp_sockaddr(addr.sockaddr, addr.socklen,
                            rs->primary.sockaddr, rs->primary.socklen, 1)
           == NGX_OK)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis master \"%V\": primary unchanged, %V",
                       &rs->conf->master, &rs->primary.name);

        ngx_destroy_pool(pool);
        return NGX_OK;
    }

    ngx_memcpy(&rs->primary_sa, addr.sockaddr, addr.socklen);
    ngx_destroy_pool(pool);

    rs->primary.socklen = addr.socklen;
    rs->primary.name.len = ngx_sock_ntop(rs->primary.sockaddr,
                                         rs->primary.socklen,
                                         rs->primary_name,
                                         NGX_SOCKADDR_STRLEN, 1);

    known = rs->primary_known;
    rs->primary_known = 1;
    level = known ? NGX_LOG_WARN : NGX_LOG_INFO;

    if (rs->conf->cluster_node) {
        ngx_log_error(NGX_LOG_INFO, rs->log, 0,
                      "aai redis cluster node: %V", &rs->primary.name);

    } else {
        ngx_log_error(level, rs->log, 0,
                      "aai redis master \"%V\": primary is %V",
                      &rs->conf->master, &rs->primary.name);
    }

    if (known) {
        rs->failovers++;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis master \"%V\": %ui failovers followed, "
                   "moving the connections", &rs->conf->master,
                   rs->failovers);

    /* fail() and the handlers it calls must not ask the sentinel again */

    rs->switching = 1;

    for (i = 0; i <= rs->nconns; i++) {
        conn = (i < rs->nconns) ? &rs->conns[i] : rs->subconn;

        if (conn == NULL) {
            continue;
        }

        if (conn->state != NGX_AAI_REDIS_CLOSED
            && conn->state != NGX_AAI_REDIS_BACKOFF)
        {
            ngx_aai_redis_fail(conn, 0, "connection lost",
                               "the primary moved to %V",
                               &rs->primary.name);
        }
    }

    for (i = 0; i <= rs->nconns; i++) {
        conn = (i < rs->nconns) ? &rs->conns[i] : rs->subconn;

        if (conn == NULL) {
            continue;
        }

        if (conn->state == NGX_AAI_REDIS_BACKOFF) {
            if (conn->backoff_ev.timer_set) {
                ngx_del_timer(&conn->backoff_ev);
            }

            conn->state = NGX_AAI_REDIS_CLOSED;
            conn->backoff = 0;
        }

        if (conn->state == NGX_AAI_REDIS_CLOSED) {
            (void) ngx_aai_redis_connect(conn);
        }
    }

    rs->switching = 0;

    /* the new primary takes requests once a handshake is answered */

    rs->healthy = 1;

    return NGX_OK;
}


/* a cluster's node client is given its address from the slot map */

ngx_int_t
ngx_aai_redis_set_node(ngx_aai_redis_t *rs, ngx_str_t *host,
    ngx_uint_t port)
{
    ngx_str_t  p;
    u_char     buf[NGX_INT_T_LEN];

    p.data = buf;
    p.len = ngx_sprintf(buf, "%ui", port) - buf;

    rs->primary.sockaddr = &rs->primary_sa.sockaddr;
    rs->primary.name.data = rs->primary_name;

    if (rs->log == NULL) {
        rs->log = ngx_cycle->log;
    }

    return ngx_aai_redis_set_primary(rs, host, &p);
}

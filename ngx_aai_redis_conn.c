
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_conn: the life of a connection and of the client in a
 * worker: init_process and exit_process, connect, the handshake (AUTH,
 * SELECT, ROLE, PING) and its replies, ready, close, failure with its
 * backoff and reconnect, and the timers.
 *
 * Each connection goes CLOSED [-> RESOLVING] -> CONNECTING [-> TLS] ->
 * HANDSHAKE -> READY, and -> BACKOFF on any failure (RESOLVING: a host
 * name looked up again on a reconnect, ngx_aai_redis_resolve.c).  The
 * handshake is the same for every connection of a client and is built
 * once per worker.  One timer per connection guards the oldest pending
 * command's deadline.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"


static ngx_int_t ngx_aai_redis_handshake_init(ngx_aai_redis_t *rs);
static void ngx_aai_redis_conn_destroy(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_ready(ngx_aai_redis_conn_t *conn);
static ngx_uint_t ngx_aai_redis_any_ready(ngx_aai_redis_t *rs);
static ngx_uint_t ngx_aai_redis_reason(ngx_aai_redis_conn_t *conn,
    const char *error);
static void ngx_aai_redis_timer_handler(ngx_event_t *ev);
static void ngx_aai_redis_backoff_handler(ngx_event_t *ev);
static ngx_uint_t ngx_aai_redis_next_deadline(ngx_aai_redis_conn_t *conn,
    ngx_msec_t *deadline);
static void *ngx_aai_redis_create_array(const redisReadTask *task,
    int elements);
static u_char *ngx_aai_redis_log_handler(ngx_log_t *log, u_char *buf,
    size_t len);


static redisReplyObjectFunctions   ngx_aai_redis_reply_fn;
static void                      *(*ngx_aai_redis_array_fn)(
                                      const redisReadTask *task, int elements);


ngx_int_t
ngx_aai_redis_init_worker(ngx_aai_redis_t *rs, ngx_cycle_t *cycle)
{
    ngx_uint_t  i;

    if (rs->initialized) {
        return NGX_OK;
    }

    /* init_process also runs in the cache manager and loader */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    rs->log = cycle->log;

    ngx_aai_redis_resolver_init(rs, cycle);
    ngx_aai_redis_metrics_init_worker(rs);

    if (rs->cluster) {
        rs->initialized = 1;
        return ngx_aai_redis_cluster_init_worker(rs->cluster, cycle);
    }

    if (ngx_aai_redis_handshake_init(rs) != NGX_OK) {
        return NGX_ERROR;
    }

    rs->rbuf = ngx_alloc(NGX_AAI_REDIS_RBUF_SIZE, rs->log);
    if (rs->rbuf == NULL) {
        return NGX_ERROR;
    }

    rs->nconns = rs->conf->connections;
    rs->conns = ngx_calloc(rs->nconns * sizeof(ngx_aai_redis_conn_t),
                           rs->log);
    if (rs->conns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < rs->nconns; i++) {
        ngx_aai_redis_conn_init(rs, &rs->conns[i], cycle, i);
    }

    ngx_aai_redis_circuit_find(rs);

    rs->healthy = 1;
    rs->initialized = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: worker init, %ui connections",
                   &rs->conf->url, rs->nconns);

    /*
     * A new worker has the time the master cached when it began to read
     * the configuration: the connect timers would be behind by as long as
     * that took, and could expire before the first event loop iteration.
     */

    ngx_time_update();

    if (rs->conf->nsentinels
        && ngx_aai_redis_sentinel_init(rs, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* connect now, so that the first requests find the connections ready */

    for (i = 0; i < rs->nconns; i++) {
        (void) ngx_aai_redis_connect(&rs->conns[i]);
    }

    if (rs->nsubs) {
        rs->subconn = ngx_calloc(sizeof(ngx_aai_redis_conn_t), rs->log);
        if (rs->subconn == NULL) {
            return NGX_ERROR;
        }

        ngx_aai_redis_conn_init(rs, rs->subconn, cycle, 0);
        rs->subconn->sub = 1;

        (void) ngx_aai_redis_connect(rs->subconn);
    }

    return NGX_OK;
}


void
ngx_aai_redis_exit_worker(ngx_aai_redis_t *rs)
{
    ngx_uint_t            i;
    ngx_queue_t          *q;
    ngx_aai_redis_cmd_t  *cmd;

    /*
     * The handlers of pending commands are not called: their requests are
     * being torn down with the worker.
     */

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "aai redis %V: worker exit", &rs->conf->url);

    if (rs->cluster) {
        ngx_aai_redis_cluster_exit_worker(rs->cluster);
    }

    if (rs->conns) {
        for (i = 0; i < rs->nconns; i++) {
            ngx_aai_redis_conn_destroy(&rs->conns[i]);
        }

        ngx_free(rs->conns);
        rs->conns = NULL;
    }

    if (rs->subconn) {
        ngx_aai_redis_conn_destroy(rs->subconn);
        ngx_free(rs->subconn);
        rs->subconn = NULL;
    }

    ngx_aai_redis_sentinel_destroy(rs);

    for (i = 0; i < rs->nsubs; i++) {
        ngx_free(rs->subs[i].name.data);
    }

    if (rs->subs) {
        ngx_free(rs->subs);
        rs->subs = NULL;
    }

    rs->nsubs = 0;
    rs->nalloc_subs = 0;

    while (!ngx_queue_empty(&rs->free)) {
        q = ngx_queue_head(&rs->free);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);
        ngx_free(cmd);
    }

    rs->nfree = 0;

    if (rs->hs) {
        ngx_free(rs->hs);
        rs->hs = NULL;
    }

    if (rs->rbuf) {
        ngx_free(rs->rbuf);
        rs->rbuf = NULL;
    }

    rs->initialized = 0;
}


/*
 * For a cluster whose pub/sub node went down: the subscriptions and their
 * connection are dropped here, to be made on another node.
 */

void
ngx_aai_redis_unsubscribe_all(ngx_aai_redis_t *rs)
{
    ngx_uint_t  i;

    if (rs->subconn) {
        if (rs->subconn->failures) {
            rs->nfailing--;
        }

        ngx_aai_redis_conn_destroy(rs->subconn);
        ngx_free(rs->subconn);
        rs->subconn = NULL;
    }

    for (i = 0; i < rs->nsubs; i++) {
        ngx_free(rs->subs[i].name.data);
    }

    rs->nsubs = 0;
}


/* 1: the pub/sub connection failed and is not restored */

ngx_uint_t
ngx_aai_redis_sub_failing(ngx_aai_redis_t *rs)
{
    return rs->subconn != NULL && rs->subconn->failures > 0
           && rs->subconn->state != NGX_AAI_REDIS_READY;
}


static ngx_int_t
ngx_aai_redis_handshake_init(ngx_aai_redis_t *rs)
{
    u_char                *p;
    size_t                 size;
    ngx_str_t              auth[3], select[2], ping, role;
    ngx_uint_t             nauth;
    ngx_aai_redis_conf_t  *rcf;
    u_char                 db[NGX_INT_T_LEN];

    rcf = rs->conf;

    nauth = 0;
    size = 0;

    if (rcf->password.len) {
        ngx_str_set(&auth[nauth], "AUTH");
        nauth++;

        if (rcf->user.len) {
            auth[nauth++] = rcf->user;
        }

        auth[nauth++] = rcf->password;
        size += ngx_aai_redis_resp_size(nauth, auth);
    }

    if (rcf->db >= 0) {
        ngx_str_set(&select[0], "SELECT");
        select[1].data = db;
        select[1].len = ngx_sprintf(db, "%i", rcf->db) - db;
        size += ngx_aai_redis_resp_size(2, select);
    }

    ngx_str_set(&role, "ROLE");

    if (rcf->nsentinels) {
        size += ngx_aai_redis_resp_size(1, &role);
    }

    ngx_str_set(&ping, "PING");
    size += ngx_aai_redis_resp_size(1, &ping);

    rs->hs = ngx_alloc(size, rs->log);
    if (rs->hs == NULL) {
        return NGX_ERROR;
    }

    p = rs->hs;

    if (nauth) {
        p = ngx_aai_redis_resp(p, nauth, auth);
    }

    if (rcf->db >= 0) {
        p = ngx_aai_redis_resp(p, 2, select);
    }

    if (rcf->nsentinels) {
        p = ngx_aai_redis_resp(p, 1, &role);
    }

    p = ngx_aai_redis_resp(p, 1, &ping);

    rs->hs_len = p - rs->hs;

    return NGX_OK;
}


void
ngx_aai_redis_conn_init(ngx_aai_redis_t *rs, ngx_aai_redis_conn_t *conn,
    ngx_cycle_t *cycle, ngx_uint_t n)
{
    ngx_aai_redis_conf_t  *rcf;

    rcf = rs->conf;

    conn->rs = rs;
    conn->addr = n % rcf->naddrs;
    conn->name = &rcf->addrs[conn->addr].name;
    conn->state = NGX_AAI_REDIS_CLOSED;
    ngx_queue_init(&conn->queue);

    /*
     * nginx core logs through pc.log, e.g. "connect() failed" at error
     * level on every attempt; this file logs failures itself, rate-limited,
     * so core's messages below "crit" are kept out (and so are its debug
     * messages about these sockets: the level test is numeric).
     */

    conn->log = *cycle->log;
    conn->log.handler = ngx_aai_redis_log_handler;
    conn->log.data = conn;
    conn->log.action = NULL;

    if (conn->log.log_level > NGX_LOG_CRIT) {
        conn->log.log_level = NGX_LOG_CRIT;
    }

#if (NGX_SSL)

    /*
     * With TLS, OpenSSL's reasons (an alert from the server, a protocol
     * error) come as core's messages, some at "crit" on every attempt:
     * they are kept, not written, and the failure's own rate-limited
     * message carries the last one.
     */

    if (rs->ssl) {
        conn->log.log_level = NGX_LOG_INFO;
        conn->log.writer = ngx_aai_redis_tls_log_writer;
        conn->log.wdata = conn;
        conn->log.next = NULL;
    }

#endif

    conn->timer.handler = ngx_aai_redis_timer_handler;
    conn->timer.data = &rs->dummy;
    conn->timer.log = rs->log;

    conn->backoff_ev.handler = ngx_aai_redis_backoff_handler;
    conn->backoff_ev.data = &rs->dummy;
    conn->backoff_ev.log = rs->log;
    conn->backoff_ev.cancelable = 1;
}


static void
ngx_aai_redis_conn_destroy(ngx_aai_redis_conn_t *conn)
{
    ngx_queue_t          *q;
    ngx_aai_redis_cmd_t  *cmd;

    while (!ngx_queue_empty(&conn->queue)) {
        q = ngx_queue_head(&conn->queue);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);
        ngx_aai_redis_cmd_free(conn->rs, cmd);
    }

    conn->npending = 0;

    ngx_aai_redis_close(conn);

    if (conn->backoff_ev.timer_set) {
        ngx_del_timer(&conn->backoff_ev);
    }

    if (conn->out) {
        ngx_free(conn->out);
        conn->out = NULL;
    }

#if (NGX_SSL)
    if (conn->ssl_session) {
        ngx_ssl_free_session(conn->ssl_session);
        conn->ssl_session = NULL;
    }
#endif

    conn->state = NGX_AAI_REDIS_CLOSED;
}


ngx_int_t
ngx_aai_redis_connect(ngx_aai_redis_conn_t *conn)
{
    ngx_addr_t            *addr;
    ngx_aai_redis_t       *rs;
    ngx_aai_redis_conf_t  *rcf;

    rs = conn->rs;
    rcf = rs->conf;

    if (rs->sentinel) {

        /* connected once the sentinels have named the primary */

        if (!rs->primary_known) {
            conn->state = NGX_AAI_REDIS_CLOSED;
            return NGX_ERROR;
        }

        addr = &rs->primary;

    } else if (rs->primary_known) {
        addr = &rs->primary;            /* a cluster node's, from the map */

    } else if (conn->reconnect && rcf->hostname && rs->resolver) {

        /* the name is looked up again; it connects when answered */

        return ngx_aai_redis_resolve(conn);

    } else if (conn->resolved) {
        addr = &conn->raddr;

    } else {
        addr = &rcf->addrs[conn->addr % rcf->naddrs];
    }

    return ngx_aai_redis_connect_addr(conn, addr);
}


ngx_int_t
ngx_aai_redis_connect_addr(ngx_aai_redis_conn_t *conn, ngx_addr_t *addr)
{
    ngx_int_t              rc;
    ngx_err_t              err;
    ngx_uint_t             step;
    ngx_queue_t           *first;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_cmd_t   *cmd;
    ngx_aai_redis_conf_t  *rcf;

    rs = conn->rs;
    rcf = rs->conf;

    conn->name = &addr->name;
    conn->state = NGX_AAI_REDIS_CONNECTING;
    conn->reconnect = 1;

    conn->reader = ngx_aai_redis_reader_create();
    if (conn->reader == NULL) {
        ngx_aai_redis_fail(conn, 0, "no memory", "redisReaderCreate() failed");
        return NGX_ERROR;
    }

    /*
     * The handshake replies come first: its commands go before any user
     * command queued while the name was looked up.
     */

    first = ngx_queue_head(&conn->queue);

    for (step = NGX_AAI_REDIS_CMD_AUTH;
         step <= NGX_AAI_REDIS_CMD_PING;
         step++)
    {
        if ((step == NGX_AAI_REDIS_CMD_AUTH && rcf->password.len == 0)
            || (step == NGX_AAI_REDIS_CMD_SELECT && rcf->db < 0)
            || (step == NGX_AAI_REDIS_CMD_ROLE && rcf->nsentinels == 0))
        {
            continue;
        }

        cmd = ngx_aai_redis_cmd_get(rs);
        if (cmd == NULL) {
            ngx_aai_redis_fail(conn, 0, "no memory", "no memory");
            return NGX_ERROR;
        }

        cmd->step = step;
        cmd->deadline = ngx_current_msec + rcf->connect_timeout
                        + rcf->timeout;
        cmd->start_us = ngx_aai_redis_now_us();

        /* before "first", which is the queue's sentinel if it is empty */

        ngx_queue_insert_tail(first, &cmd->queue);
        conn->npending++;
    }

    ngx_memzero(&conn->pc, sizeof(ngx_peer_connection_t));

    conn->pc.sockaddr = addr->sockaddr;
    conn->pc.socklen = addr->socklen;
    conn->pc.name = &addr->name;
    conn->pc.get = ngx_event_get_peer;
    conn->pc.log = &conn->log;
    conn->pc.log_error = NGX_ERROR_ERR;
    conn->pc.so_keepalive = conn->sub;

    rc = ngx_event_connect_peer(&conn->pc);

    if (rc == NGX_ERROR || rc == NGX_DECLINED || rc == NGX_BUSY) {

        /* core kept errno: its own message was filtered out by log level */

        err = (rc == NGX_DECLINED) ? ngx_socket_errno : 0;

        conn->pc.connection = NULL;
        ngx_aai_redis_fail(conn, err, "connection lost", "connect() failed");
        return NGX_ERROR;
    }

    c = conn->pc.connection;

    c->data = conn;
    c->read->handler = ngx_aai_redis_read_handler;
    c->write->handler = ngx_aai_redis_write_handler;

    /* small pipelined writes must not wait for an ACK (no-op on unix) */

    (void) ngx_tcp_nodelay(c);

    ngx_aai_redis_arm_timer(conn);

    if (rc == NGX_AGAIN) {
        ngx_add_timer(c->write, rcf->connect_timeout);

#if (NGX_SSL)
    } else if (rs->ssl) {
        if (ngx_aai_redis_tls_start(conn) != NGX_OK) {
            return NGX_ERROR;
        }
#endif

    } else {
        conn->state = NGX_AAI_REDIS_HANDSHAKE;
        ngx_post_event(c->write, &ngx_posted_events);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: connecting, rc:%i", conn->name, rc);

    return NGX_OK;
}


ngx_int_t
ngx_aai_redis_test_connect(ngx_aai_redis_conn_t *conn)
{
    int                err;
    socklen_t          len;
    ngx_connection_t  *c;

    c = conn->pc.connection;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        ngx_aai_redis_fail(conn, err, "connection lost", "connect() failed");
        return NGX_ERROR;
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: connected", conn->name);

#if (NGX_SSL)
    if (conn->rs->ssl) {
        return ngx_aai_redis_tls_start(conn);
    }
#endif

    conn->state = NGX_AAI_REDIS_HANDSHAKE;

    return NGX_OK;
}


static void
ngx_aai_redis_ready(ngx_aai_redis_conn_t *conn)
{
    ngx_uint_t        level;
    ngx_aai_redis_t  *rs;

    rs = conn->rs;

    conn->state = NGX_AAI_REDIS_READY;
    conn->backoff = 0;

    if (!conn->counted) {
        conn->counted = 1;
        ngx_aai_redis_count(conn, 1, 0);
    }

    ngx_aai_redis_circuit_close(rs);

    if (conn->failures) {
        rs->nfailing--;
        level = (rs->nfailing == 0) ? NGX_LOG_WARN : NGX_LOG_INFO;

        ngx_log_error(level, rs->log, 0,
                      "aai redis %V: %sconnection restored after %ui "
                      "failed attempts", conn->name,
                      conn->sub ? "pub/sub " : "", conn->failures);

        conn->failures = 0;

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis %V: ready", conn->name);
    }

    if (conn->sub) {
        if (ngx_aai_redis_subscribe_all(conn) != NGX_OK) {
            ngx_aai_redis_fail(conn, 0, "no memory", "no memory");
            return;
        }

    } else {
        rs->healthy = 1;
    }

    if (conn->out_last != conn->out_pos) {
        ngx_aai_redis_post_write(conn);
    }
}


void
ngx_aai_redis_close(ngx_aai_redis_conn_t *conn)
{
#if (NGX_SSL)
    ngx_pool_t        *pool;
    ngx_connection_t  *c;
#endif

    ngx_aai_redis_resolve_cancel(conn);

    if (conn->counted) {
        conn->counted = 0;
        ngx_aai_redis_count(conn, -1, 0);
    }

#if (NGX_SSL)
    c = conn->pc.connection;
    pool = c ? c->pool : NULL;

    if (c && c->ssl) {

        /* no close_notify, and no wait for the peer's */

        c->ssl->no_wait_shutdown = 1;
        c->ssl->no_send_shutdown = 1;
        (void) ngx_ssl_shutdown(c);
    }
#endif

    if (conn->pc.connection) {
        ngx_close_connection(conn->pc.connection);
        conn->pc.connection = NULL;
    }

#if (NGX_SSL)
    if (pool) {
        ngx_destroy_pool(pool);
    }
#endif

    if (conn->reader) {
        redisReaderFree(conn->reader);
        conn->reader = NULL;
    }

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    conn->hs_sent = 0;
    conn->out_pos = conn->out;
    conn->out_last = conn->out;
    ngx_aai_redis_out_reset(conn);
}


/*
 * A failed connection: its pending commands fail, it is closed, and it
 * reconnects after a backoff.  The handlers run last, when the state is
 * consistent again: one may send a new command.
 */

void
ngx_aai_redis_fail(ngx_aai_redis_conn_t *conn, ngx_err_t err,
    const char *error, const char *fmt, ...)
{
    u_char                 *p, *last;
    va_list                 args;
    ngx_uint_t              level, n;
    ngx_queue_t             failed, *q;
    ngx_aai_redis_t        *rs;
    ngx_aai_redis_cmd_t    *cmd;
    ngx_aai_redis_result_t  res;
    u_char                  text[NGX_MAX_ERROR_STR];

    rs = conn->rs;
    last = text + sizeof(text);

    ngx_aai_redis_count(conn, 0, ngx_aai_redis_reason(conn, error));
    conn->auth_failed = 0;

    va_start(args, fmt);
    p = ngx_vslprintf(text, last, fmt, args);
    va_end(args);

    if (err) {
        p = ngx_slprintf(p, last, " (%d: ", err);
        p = ngx_strerror(err, p, last - p);
        p = ngx_slprintf(p, last, ")");
    }

#if (NGX_SSL)
    if (conn->tls_error_len) {
        p = ngx_slprintf(p, last, ": %*s", conn->tls_error_len,
                         conn->tls_error);
        conn->tls_error_len = 0;
    }
#endif

    ngx_queue_init(&failed);

    if (!ngx_queue_empty(&conn->queue)) {
        ngx_queue_add(&failed, &conn->queue);
        ngx_queue_init(&conn->queue);
    }

    n = 0;

    for (q = ngx_queue_head(&failed);
         q != ngx_queue_sentinel(&failed);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);
        n += (cmd->step == NGX_AAI_REDIS_CMD_USER);
    }

    conn->npending = 0;

    ngx_aai_redis_close(conn);

    if (conn->backoff == 0) {
        conn->backoff = ngx_min(NGX_AAI_REDIS_BACKOFF_MIN, rs->conf->backoff);

    } else {
        conn->backoff = ngx_min(conn->backoff * 2, rs->conf->backoff);
    }

    conn->state = NGX_AAI_REDIS_BACKOFF;
    conn->addr++;
    ngx_add_timer(&conn->backoff_ev, conn->backoff);

    if (conn->failures++ == 0) {
        rs->nfailing++;
        level = (rs->nfailing == 1) ? NGX_LOG_ERR : NGX_LOG_INFO;

    } else {
        level = NGX_LOG_INFO;
    }

    if (!conn->sub && !ngx_aai_redis_any_ready(rs)) {
        rs->healthy = 0;
    }

    /*
     * Shared only when requests waited: a handshake alone that timed out
     * (a worker slow to start) costs no request anything.
     */

    if (error == ngx_aai_redis_timeout && n) {
        ngx_aai_redis_circuit_open(conn);
    }

    /* the primary may have moved: ask again at once */

    ngx_aai_redis_sentinel_reask(rs);

    ngx_log_error(level, rs->log, 0,
                  "aai redis %V: %s%*s, %ui command%s failed, "
                  "reconnecting in %Mms", conn->name,
                  conn->sub ? "pub/sub connection: " : "",
                  (size_t) (p - text), text,
                  n, n == 1 ? "" : "s", conn->backoff);

    while (!ngx_queue_empty(&failed)) {
        q = ngx_queue_head(&failed);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);

        if (cmd->step == NGX_AAI_REDIS_CMD_USER && !cmd->cancelled) {
            ngx_aai_redis_result(cmd, &res);
            res.reply = NULL;
            res.error = error;
            cmd->handler(&res, cmd->data);
        }

        ngx_aai_redis_cmd_free(rs, cmd);
    }
}


/* aai_redis_errors_total's reason of a failure, from where it happened */

static ngx_uint_t
ngx_aai_redis_reason(ngx_aai_redis_conn_t *conn, const char *error)
{
    if (error == ngx_aai_redis_timeout) {
        return NGX_AAI_REDIS_E_TIMEOUT;
    }

    if (conn->auth_failed) {
        return NGX_AAI_REDIS_E_AUTH;
    }

    switch (conn->state) {

    case NGX_AAI_REDIS_RESOLVING:
        return NGX_AAI_REDIS_E_RESOLVE;

    case NGX_AAI_REDIS_CONNECTING:
        return NGX_AAI_REDIS_E_REFUSED;

    case NGX_AAI_REDIS_TLS:
        return NGX_AAI_REDIS_E_TLS;

    default:
        return NGX_AAI_REDIS_E_LOST;
    }
}


static ngx_uint_t
ngx_aai_redis_any_ready(ngx_aai_redis_t *rs)
{
    ngx_uint_t  i;

    for (i = 0; i < rs->nconns; i++) {
        if (rs->conns[i].state == NGX_AAI_REDIS_READY) {
            return 1;
        }
    }

    return 0;
}


ngx_int_t
ngx_aai_redis_handshake_reply(ngx_aai_redis_conn_t *conn,
    ngx_aai_redis_cmd_t *cmd, redisReply *reply)
{
    ngx_uint_t        step;
    ngx_aai_redis_t  *rs;
    u_char            text[256];
    size_t            len;

    static const char  *names[] = { "", "AUTH", "SELECT", "ROLE", "PING" };

    rs = conn->rs;
    step = cmd->step;

    ngx_aai_redis_cmd_free(rs, cmd);

    if (reply->type == REDIS_REPLY_ERROR) {
        len = ngx_min(reply->len, sizeof(text));
        ngx_memcpy(text, reply->str, len);
        freeReplyObject(reply);

        /* AUTH refused, or a command refused for want of it */

        if (step == NGX_AAI_REDIS_CMD_AUTH
            || (len >= 6 && ngx_strncmp(text, "NOAUTH", 6) == 0)
            || (len >= 9 && ngx_strncmp(text, "WRONGPASS", 9) == 0))
        {
            conn->auth_failed = 1;
        }

        ngx_aai_redis_fail(conn, 0, "connection lost", "%s failed: %*s",
                           names[step], len, text);
        return NGX_ERROR;
    }

    if (step == NGX_AAI_REDIS_CMD_ROLE
        && (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0
            || reply->element[0]->type != REDIS_REPLY_STRING
            || reply->element[0]->len != 6
            || ngx_strncmp(reply->element[0]->str, "master", 6) != 0))
    {
        freeReplyObject(reply);

        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "ROLE: not a primary");
        return NGX_ERROR;
    }

    freeReplyObject(reply);

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: handshake: %s answered",
                   conn->name, names[step]);

    if (step == NGX_AAI_REDIS_CMD_PING) {
        ngx_aai_redis_ready(conn);

        if (conn->state != NGX_AAI_REDIS_READY) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_aai_redis_timer_handler(ngx_event_t *ev)
{
    ngx_msec_t             deadline;
    ngx_aai_redis_conn_t  *conn;

    conn = ngx_aai_redis_conn_of(ev, timer);

    if (!ngx_aai_redis_next_deadline(conn, &deadline)) {
        return;
    }

    if ((ngx_msec_int_t) (deadline - ngx_current_msec) > 0) {

        /* the timer was armed for a command answered since */

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                       "aai redis %V: next deadline in %M ms",
                       conn->name, deadline - ngx_current_msec);

        ngx_add_timer(&conn->timer, deadline - ngx_current_msec);
        return;
    }

    ngx_aai_redis_fail(conn, 0, ngx_aai_redis_timeout, "%s timed out",
                       conn->state == NGX_AAI_REDIS_READY
                       ? "command"
                       : conn->state == NGX_AAI_REDIS_TLS
                         ? "TLS handshake"
                         : conn->state == NGX_AAI_REDIS_RESOLVING
                           ? "command (the name not yet resolved)"
                           : "handshake");
}


static void
ngx_aai_redis_backoff_handler(ngx_event_t *ev)
{
    ngx_aai_redis_conn_t  *conn;

    conn = ngx_aai_redis_conn_of(ev, backoff_ev);

    if (conn->state != NGX_AAI_REDIS_BACKOFF) {
        return;
    }

    conn->state = NGX_AAI_REDIS_CLOSED;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: backoff of %M ms over, reconnecting",
                   conn->name, conn->backoff);

    (void) ngx_aai_redis_connect(conn);
}


/*
 * The earliest deadline of the pending commands.  Deadlines grow along the
 * queue, except that the handshake commands, queued first, also allow for
 * the connect: look past them to the first user command.
 */

static ngx_uint_t
ngx_aai_redis_next_deadline(ngx_aai_redis_conn_t *conn, ngx_msec_t *deadline)
{
    ngx_uint_t            found;
    ngx_queue_t          *q;
    ngx_aai_redis_cmd_t  *cmd;

    found = 0;

    for (q = ngx_queue_head(&conn->queue);
         q != ngx_queue_sentinel(&conn->queue);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);

        if (!found
            || (ngx_msec_int_t) (cmd->deadline - *deadline) < 0)
        {
            *deadline = cmd->deadline;
            found = 1;
        }

        if (cmd->step == NGX_AAI_REDIS_CMD_USER) {
            break;
        }
    }

    return found;
}


void
ngx_aai_redis_arm_timer(ngx_aai_redis_conn_t *conn)
{
    ngx_msec_t      deadline;
    ngx_msec_int_t  delta;

    if (!ngx_aai_redis_next_deadline(conn, &deadline)) {
        if (conn->timer.timer_set) {
            ngx_del_timer(&conn->timer);
        }

        return;
    }

    if (conn->timer.timer_set) {

        /* an earlier timer just re-checks when it fires */

        if ((ngx_msec_int_t) (conn->timer.timer.key - deadline) <= 0) {
            return;
        }

        ngx_del_timer(&conn->timer);
    }

    delta = (ngx_msec_int_t) (deadline - ngx_current_msec);

    ngx_add_timer(&conn->timer, delta > 0 ? (ngx_msec_t) delta : 0);
}


void
ngx_aai_redis_post_write(ngx_aai_redis_conn_t *conn)
{
    ngx_connection_t  *c;

    c = conn->pc.connection;

    if (c != NULL && !c->write->posted) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


/*
 * hiredis's reader, but arrays bounded: hiredis 0.14 allocates what an
 * array's header announces ("*400000000" is 3.2 GB) before its elements
 * arrive.  Every reader of replies from Redis or a sentinel is made here.
 */

redisReader *
ngx_aai_redis_reader_create(void)
{
    redisReader  *reader;

    reader = redisReaderCreate();
    if (reader == NULL) {
        return NULL;
    }

    if (ngx_aai_redis_array_fn == NULL) {
        ngx_aai_redis_reply_fn = *reader->fn;
        ngx_aai_redis_array_fn = ngx_aai_redis_reply_fn.createArray;
        ngx_aai_redis_reply_fn.createArray = ngx_aai_redis_create_array;
    }

    reader->fn = &ngx_aai_redis_reply_fn;

    return reader;
}


/* NULL fails the reader ("Out of memory"): a protocol error */

static void *
ngx_aai_redis_create_array(const redisReadTask *task, int elements)
{
    if (elements > NGX_AAI_REDIS_MAX_ELEMENTS) {
        return NULL;
    }

    return ngx_aai_redis_array_fn(task, elements);
}


static u_char *
ngx_aai_redis_log_handler(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_aai_redis_conn_t  *conn;

    conn = log->data;

    return ngx_snprintf(buf, len, ", aai redis: %V", conn->name);
}

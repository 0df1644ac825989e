
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis: see ngx_aai_redis.h.  This file holds the client's
 * public request-time API and its data path:
 * ngx_aai_redis_create(), ngx_aai_redis_send() (the choice of a
 * connection, and the RESP formatting of commands into the connection's
 * output buffer), ngx_aai_redis_cancel(), ngx_aai_redis_available() and
 * ngx_aai_redis_subscribe(); the connection's read and write handlers,
 * which write the pipelined commands and hand each reply to the handler
 * of the command at the head of the FIFO (or a pub/sub message to its
 * subscribers); the command free list and the latency clock.
 *
 * User commands are formatted into the connection's output buffer at once
 * and written only in READY, by the connection's write handler, which
 * ngx_aai_redis_send() posts: all the commands of one event loop iteration
 * leave in one send().  Replies are matched in order with the FIFO of
 * pending commands.
 *
 * The other rooms of the client (ngx_aai_redis_int.h declares what they
 * share): ngx_aai_redis_conf.c (the directive's address and parameters),
 * ngx_aai_redis_conn.c (connection lifecycle, handshake, failure,
 * backoff, timers), ngx_aai_redis_circuit.c (the circuit state shared by
 * every client in shared memory), ngx_aai_redis_tls.c (tls=on),
 * ngx_aai_redis_sentinel.c (sentinel=), ngx_aai_redis_resolve.c (host
 * names looked up again with nginx's resolver).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"
#include "ngx_aai_metrics.h"


static ngx_aai_redis_conn_t *ngx_aai_redis_pick(ngx_aai_redis_t *rs);
static ngx_aai_redis_cmd_t *ngx_aai_redis_send_cmd(ngx_aai_redis_t *rs,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data, ngx_uint_t asking);
static void ngx_aai_redis_flush(ngx_aai_redis_conn_t *conn);
static ngx_int_t ngx_aai_redis_process(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_message(ngx_aai_redis_conn_t *conn,
    redisReply *reply);
static ngx_int_t ngx_aai_redis_append(ngx_aai_redis_conn_t *conn,
    ngx_uint_t argc, ngx_str_t *argv);
static void ngx_aai_redis_sub_argv(ngx_aai_redis_sub_t *sub,
    ngx_str_t *argv);


const char  ngx_aai_redis_timeout[] = "timeout";


ngx_aai_redis_t *
ngx_aai_redis_create(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf)
{
    ngx_aai_redis_t  *rs;

    if (rcf->addrs == NULL || rcf->naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no redis address configured");
        return NULL;
    }

    ngx_aai_redis_conf_init(rcf);

    rs = ngx_pcalloc(cf->pool, sizeof(ngx_aai_redis_t));
    if (rs == NULL) {
        return NULL;
    }

    rs->conf = rcf;
    rs->dummy.fd = (ngx_socket_t) -1;
    ngx_queue_init(&rs->free);

    if (rcf->cluster) {
        rs->cluster = ngx_aai_redis_cluster_create(cf, rs, rcf);
        return rs->cluster ? rs : NULL;
    }

    if (!rcf->cluster_node && ngx_aai_redis_circuit_add(cf, rs) != NGX_OK) {
        return NULL;
    }

#if (NGX_SSL)

    if (rcf->tls && ngx_aai_redis_ssl_create(cf, rs) != NGX_OK) {
        return NULL;
    }

#endif

    return rs;
}


/*
 * The ready connection with the fewest pending commands; else, while the
 * circuit is closed (nothing failed since the last success), one that is
 * connecting or may connect.
 */

static ngx_aai_redis_conn_t *
ngx_aai_redis_pick(ngx_aai_redis_t *rs)
{
    ngx_uint_t             i;
    ngx_aai_redis_conn_t  *conn, *ready, *waiting, *closed;

    ready = NULL;
    waiting = NULL;
    closed = NULL;

    for (i = 0; i < rs->nconns; i++) {
        conn = &rs->conns[i];

        switch (conn->state) {

        case NGX_AAI_REDIS_READY:
            if (ready == NULL || conn->npending < ready->npending) {
                ready = conn;
            }
            break;

        case NGX_AAI_REDIS_RESOLVING:
        case NGX_AAI_REDIS_CONNECTING:
        case NGX_AAI_REDIS_TLS:
        case NGX_AAI_REDIS_HANDSHAKE:
            if (waiting == NULL || conn->npending < waiting->npending) {
                waiting = conn;
            }
            break;

        case NGX_AAI_REDIS_CLOSED:
            if (closed == NULL) {
                closed = conn;
            }
            break;

        default: /* NGX_AAI_REDIS_BACKOFF */
            break;
        }
    }

    if (ready) {

        /*
         * Reopen, in passing, a connection the server closed while idle
         * or one not yet reopened after an outage: the command still goes
         * to the ready one.
         */

        if (closed && rs->healthy) {
            (void) ngx_aai_redis_connect(closed);
        }

        return ready;
    }

    if (!rs->healthy) {
        return NULL;
    }

    return waiting ? waiting : closed;
}


ngx_aai_redis_cmd_t *
ngx_aai_redis_send(ngx_aai_redis_t *rs, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data)
{
    return ngx_aai_redis_send_cmd(rs, log, argc, argv, handler, data, 0);
}


/*
 * A command for the primary of a slot on a cluster, whatever its keys (a
 * FUNCTION LOAD for the node that lacks the function); on one server, or
 * with a slot < 0, as ngx_aai_redis_send().
 */

ngx_aai_redis_cmd_t *
ngx_aai_redis_send_slot(ngx_aai_redis_t *rs, ngx_log_t *log, ngx_int_t slot,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    if (rs->cluster && slot >= 0) {
        if (!rs->initialized || argc == 0) {
            return NULL;
        }

        return ngx_aai_redis_cluster_send_slot(rs->cluster, log, slot, argc,
                                               argv, handler, data);
    }

    return ngx_aai_redis_send(rs, log, argc, argv, handler, data);
}


/*
 * The cluster's ASK: ASKING and the command on one connection, one after
 * the other; the reply to ASKING is dropped as a cancelled command's.
 */

ngx_aai_redis_cmd_t *
ngx_aai_redis_send_asking(ngx_aai_redis_t *rs, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    return ngx_aai_redis_send_cmd(rs, log, argc, argv, handler, data, 1);
}


static ngx_aai_redis_cmd_t *
ngx_aai_redis_send_cmd(ngx_aai_redis_t *rs, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data,
    ngx_uint_t asking)
{
    ngx_str_t              asking_argv;
    ngx_aai_redis_cmd_t   *cmd, *acmd;
    ngx_aai_redis_conn_t  *conn;

    if (!rs->initialized || argc == 0) {
        return NULL;
    }

    if (rs->cluster) {
        return ngx_aai_redis_cluster_send(rs->cluster, log, argc, argv,
                                          handler, data);
    }

    if (ngx_aai_redis_circuit_blocked(rs)) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, log, 0,
                       "aai redis %V: shared circuit open", &rs->conf->url);
        return NULL;
    }

    conn = ngx_aai_redis_pick(rs);
    if (conn == NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, log, 0,
                       "aai redis %V: circuit open", &rs->conf->url);
        return NULL;
    }

    if (conn->state == NGX_AAI_REDIS_CLOSED
        && ngx_aai_redis_connect(conn) != NGX_OK)
    {
        return NULL;
    }

    if (asking) {
        acmd = ngx_aai_redis_cmd_get(rs);
        if (acmd == NULL) {
            return NULL;
        }

        ngx_str_set(&asking_argv, "ASKING");

        if (ngx_aai_redis_append(conn, 1, &asking_argv) != NGX_OK) {
            ngx_aai_redis_cmd_free(rs, acmd);
            return NULL;
        }

        acmd->step = NGX_AAI_REDIS_CMD_USER;
        acmd->cancelled = 1;
        acmd->deadline = ngx_current_msec + rs->conf->timeout;
        acmd->start_us = ngx_aai_redis_now_us();

        ngx_queue_insert_tail(&conn->queue, &acmd->queue);
        conn->npending++;
    }

    cmd = ngx_aai_redis_cmd_get(rs);
    if (cmd == NULL) {
        return NULL;
    }

    if (ngx_aai_redis_append(conn, argc, argv) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "aai redis %V: no memory for a command",
                      conn->name);
        ngx_aai_redis_cmd_free(rs, cmd);
        return NULL;
    }

    cmd->step = NGX_AAI_REDIS_CMD_USER;
    cmd->handler = handler;
    cmd->data = data;
    cmd->deadline = ngx_current_msec + rs->conf->timeout;
    cmd->start_us = ngx_aai_redis_now_us();

    ngx_queue_insert_tail(&conn->queue, &cmd->queue);
    conn->npending++;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, log, 0,
                   "aai redis %V: %V queued, %ui pending",
                   conn->name, &argv[0], conn->npending);

    if (conn->state == NGX_AAI_REDIS_READY) {
        ngx_aai_redis_post_write(conn);
    }

    ngx_aai_redis_arm_timer(conn);

    return cmd;
}


void
ngx_aai_redis_cancel(ngx_aai_redis_cmd_t *cmd)
{
    if (cmd->step == NGX_AAI_REDIS_CMD_CLUSTER) {
        ngx_aai_redis_cluster_cancel(cmd->data);
        return;
    }

    cmd->cancelled = 1;
    cmd->handler = NULL;
    cmd->data = NULL;
}


ngx_int_t
ngx_aai_redis_slot_node(ngx_aai_redis_t *rs, ngx_uint_t slot)
{
    if (rs->cluster == NULL) {
        return NGX_DECLINED;
    }

    return ngx_aai_redis_cluster_slot_node(rs->cluster, slot);
}


void
ngx_aai_redis_refresh(ngx_aai_redis_t *rs)
{
    if (rs->cluster) {
        ngx_aai_redis_cluster_refresh(rs->cluster);
    }
}


ngx_uint_t
ngx_aai_redis_available(ngx_aai_redis_t *rs)
{
    ngx_uint_t  i;

    if (rs->cluster) {
        return ngx_aai_redis_cluster_available(rs->cluster);
    }

    if (!rs->initialized || ngx_aai_redis_circuit_blocked(rs)) {
        return 0;
    }

    for (i = 0; i < rs->nconns; i++) {
        if (rs->conns[i].state == NGX_AAI_REDIS_READY) {
            return 1;
        }

        if (rs->healthy && rs->conns[i].state != NGX_AAI_REDIS_BACKOFF) {
            return 1;
        }
    }

    return 0;
}


ngx_int_t
ngx_aai_redis_subscribe(ngx_aai_redis_t *rs, ngx_str_t *channel,
    ngx_uint_t pattern, ngx_aai_redis_message_pt handler, void *data)
{
    ngx_uint_t            n;
    ngx_str_t             argv[2];
    ngx_aai_redis_sub_t  *subs, *sub;

    if (rs->cluster) {
        return ngx_aai_redis_cluster_subscribe(rs->cluster, channel, pattern,
                                               handler, data);
    }

    if (rs->nsubs == rs->nalloc_subs) {
        n = rs->nalloc_subs ? rs->nalloc_subs * 2 : 4;

        subs = ngx_alloc(n * sizeof(ngx_aai_redis_sub_t), ngx_cycle->log);
        if (subs == NULL) {
            return NGX_ERROR;
        }

        if (rs->subs) {
            ngx_memcpy(subs, rs->subs,
                       rs->nsubs * sizeof(ngx_aai_redis_sub_t));
            ngx_free(rs->subs);
        }

        rs->subs = subs;
        rs->nalloc_subs = n;
    }

    sub = &rs->subs[rs->nsubs];

    sub->name.data = ngx_alloc(channel->len + 1, ngx_cycle->log);
    if (sub->name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(sub->name.data, channel->data, channel->len);
    sub->name.len = channel->len;
    sub->pattern = pattern;
    sub->handler = handler;
    sub->data = data;

    rs->nsubs++;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "aai redis %V: %s \"%V\"", &rs->conf->url,
                   pattern ? "psubscribe" : "subscribe", &sub->name);

    if (!rs->initialized) {
        return NGX_OK;      /* ngx_aai_redis_init_worker() connects */
    }

    if (rs->subconn == NULL) {
        rs->subconn = ngx_calloc(sizeof(ngx_aai_redis_conn_t), rs->log);
        if (rs->subconn == NULL) {
            return NGX_ERROR;
        }

        ngx_aai_redis_conn_init(rs, rs->subconn, (ngx_cycle_t *) ngx_cycle,
                                0);
        rs->subconn->sub = 1;

        ngx_time_update();      /* in init_process: as above */

        (void) ngx_aai_redis_connect(rs->subconn);

        return NGX_OK;
    }

    if (rs->subconn->state == NGX_AAI_REDIS_READY) {
        ngx_aai_redis_sub_argv(sub, argv);

        if (ngx_aai_redis_append(rs->subconn, 2, argv) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_aai_redis_post_write(rs->subconn);
    }

    /* else: subscribed when the connection becomes ready */

    return NGX_OK;
}


void
ngx_aai_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t      *c;
    ngx_aai_redis_conn_t  *conn;

    c = wev->data;
    conn = c->data;

    if (wev->timedout) {
        wev->timedout = 0;
        ngx_aai_redis_fail(conn, 0, ngx_aai_redis_timeout,
                           "connect() timed out");
        return;
    }

    if (conn->state == NGX_AAI_REDIS_CONNECTING
        && ngx_aai_redis_test_connect(conn) != NGX_OK)
    {
        return;
    }

    if (conn->state == NGX_AAI_REDIS_TLS) {
        return;     /* the TLS handshake has the events */
    }

    ngx_aai_redis_flush(conn);
}


static void
ngx_aai_redis_flush(ngx_aai_redis_conn_t *conn)
{
    u_char            *p;
    size_t             size;
    ssize_t            n;
    ngx_err_t          err;
    ngx_event_t       *wev;
    ngx_aai_redis_t   *rs;
    ngx_connection_t  *c;

    rs = conn->rs;
    c = conn->pc.connection;
    wev = c->write;

    for ( ;; ) {

        if (conn->state == NGX_AAI_REDIS_HANDSHAKE) {
            p = rs->hs + conn->hs_sent;
            size = rs->hs_len - conn->hs_sent;

        } else if (conn->state == NGX_AAI_REDIS_READY) {
            p = conn->out_pos;
            size = conn->out_last - conn->out_pos;

        } else {
            return;
        }

        if (size == 0) {
            break;
        }

#if (NGX_SSL)
        if (c->ssl) {
            if (ngx_aai_redis_tls_send(conn, p, size) != NGX_OK) {
                return;
            }

            continue;
        }
#endif

        n = send(c->fd, p, size, 0);

        ngx_log_debug3(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis %V: send: %z of %uz", conn->name, n, size);

        if (n > 0) {
            if (conn->state == NGX_AAI_REDIS_HANDSHAKE) {
                conn->hs_sent += n;

            } else {
                conn->out_pos += n;
            }

            continue;
        }

        err = ngx_socket_errno;

        if (n == -1 && err == NGX_EINTR) {
            continue;
        }

        if (n == -1 && err == NGX_EAGAIN) {
            wev->ready = 0;

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_aai_redis_fail(conn, 0, "connection lost",
                                   "cannot arm the write event");
            }

            return;
        }

        ngx_aai_redis_fail(conn, err, "connection lost", "send() failed");
        return;
    }

    if (conn->state == NGX_AAI_REDIS_READY) {
        conn->out_pos = conn->out;
        conn->out_last = conn->out;
        ngx_aai_redis_out_reset(conn);
    }
}


void
ngx_aai_redis_read_handler(ngx_event_t *rev)
{
    ssize_t                n;
    ngx_err_t              err;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_conn_t  *conn;

    c = rev->data;
    conn = c->data;
    rs = conn->rs;

    if (conn->state == NGX_AAI_REDIS_CONNECTING) {
        if (ngx_aai_redis_test_connect(conn) != NGX_OK) {
            return;
        }

        ngx_aai_redis_post_write(conn);
    }

    if (conn->state == NGX_AAI_REDIS_TLS) {
        return;     /* the TLS handshake has the events */
    }

    /*
     * c->recv(): with EPOLLRDHUP a short read tells that the socket is
     * drained, which saves the recv() that would return EAGAIN
     */

    for ( ;; ) {

        n = c->recv(c, rs->rbuf, NGX_AAI_REDIS_RBUF_SIZE);

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis %V: recv: %z", conn->name, n);

        if (n > 0) {
            if (redisReaderFeed(conn->reader, (char *) rs->rbuf, n)
                != REDIS_OK)
            {
                ngx_aai_redis_fail(conn, 0, "connection lost",
                                   "redisReaderFeed() failed");
                return;
            }

            if (ngx_aai_redis_process(conn) != NGX_OK) {
                return;
            }

            if (rev->ready) {
                continue;
            }

            n = NGX_AGAIN;
        }

        if (n == 0) {
            break;
        }

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_aai_redis_fail(conn, 0, "connection lost",
                                   "cannot arm the read event");
            }

            return;
        }

        err = ngx_socket_errno;

#if (NGX_SSL)
        if (c->ssl) {
            ngx_aai_redis_fail(conn, 0, "connection lost", "TLS read failed");
            return;
        }
#endif

        ngx_aai_redis_fail(conn, err, "connection lost", "recv() failed");
        return;
    }

    /* end of file */

    if (conn->npending == 0 && conn->state == NGX_AAI_REDIS_READY
        && !conn->sub)
    {
        /* Redis's "timeout" closes idle clients: not a failure */

        ngx_log_error(NGX_LOG_INFO, rs->log, 0,
                      "aai redis %V: server closed an idle connection",
                      conn->name);

        ngx_aai_redis_close(conn);
        conn->state = NGX_AAI_REDIS_CLOSED;
        return;
    }

    ngx_aai_redis_fail(conn, 0, "connection lost",
                       "server closed the connection");
}


static ngx_int_t
ngx_aai_redis_process(ngx_aai_redis_conn_t *conn)
{
    void                    *obj;
    ngx_queue_t             *q;
    redisReply              *reply;
    ngx_aai_redis_t         *rs;
    ngx_aai_redis_cmd_t     *cmd;
    ngx_aai_redis_result_t   res;

    rs = conn->rs;

    for ( ;; ) {

        obj = NULL;

        if (redisReaderGetReply(conn->reader, &obj) != REDIS_OK) {
            ngx_aai_redis_fail(conn, 0, "connection lost",
                               "protocol error: %s", conn->reader->errstr);
            return NGX_ERROR;
        }

        if (obj == NULL) {
            break;
        }

        reply = obj;

        if (ngx_queue_empty(&conn->queue)) {

            if (conn->sub && conn->state == NGX_AAI_REDIS_READY) {
                ngx_aai_redis_message(conn, reply);
                freeReplyObject(reply);
                continue;
            }

            freeReplyObject(reply);
            ngx_aai_redis_fail(conn, 0, "connection lost",
                               "reply with no command pending");
            return NGX_ERROR;
        }

        q = ngx_queue_head(&conn->queue);
        ngx_queue_remove(q);
        conn->npending--;

        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);

        if (cmd->step != NGX_AAI_REDIS_CMD_USER) {
            if (ngx_aai_redis_handshake_reply(conn, cmd, reply) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        ngx_log_debug4(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis %V: reply type:%d%s, %ui pending",
                       conn->name, reply->type,
                       cmd->cancelled ? ", cancelled" : "", conn->npending);

        if (!cmd->cancelled) {
            ngx_aai_redis_result(cmd, &res);
            res.reply = reply;
            res.error = NULL;
            cmd->handler(&res, cmd->data);
        }

        freeReplyObject(reply);
        ngx_aai_redis_cmd_free(rs, cmd);
    }

    ngx_aai_redis_arm_timer(conn);

    return NGX_OK;
}


static void
ngx_aai_redis_message(ngx_aai_redis_conn_t *conn, redisReply *reply)
{
    ngx_str_t             kind, name, channel, message;
    ngx_uint_t            i, pattern;
    redisReply          **e;
    ngx_aai_redis_sub_t  *sub;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
        return;
    }

    e = reply->element;

    for (i = 0; i < reply->elements; i++) {
        if (e[i]->type != REDIS_REPLY_STRING) {
            return;     /* "subscribe" confirmations: count is an integer */
        }
    }

    kind.data = (u_char *) e[0]->str;
    kind.len = e[0]->len;

    if (reply->elements == 3 && kind.len == 7
        && ngx_strncmp(kind.data, "message", 7) == 0)
    {
        pattern = 0;
        name.data = (u_char *) e[1]->str;
        name.len = e[1]->len;
        channel = name;
        message.data = (u_char *) e[2]->str;
        message.len = e[2]->len;

    } else if (reply->elements == 4 && kind.len == 8
               && ngx_strncmp(kind.data, "pmessage", 8) == 0)
    {
        pattern = 1;
        name.data = (u_char *) e[1]->str;
        name.len = e[1]->len;
        channel.data = (u_char *) e[2]->str;
        channel.len = e[2]->len;
        message.data = (u_char *) e[3]->str;
        message.len = e[3]->len;

    } else {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: message on \"%V\"", conn->name, &channel);

    for (i = 0; i < conn->rs->nsubs; i++) {
        sub = &conn->rs->subs[i];

        if (sub->pattern == pattern
            && sub->name.len == name.len
            && ngx_strncmp(sub->name.data, name.data, name.len) == 0)
        {
            sub->handler(&channel, &message, sub->data);
        }
    }
}


static ngx_int_t
ngx_aai_redis_append(ngx_aai_redis_conn_t *conn, ngx_uint_t argc,
    ngx_str_t *argv)
{
    u_char  *p;
    size_t   size, used, cap;

    size = ngx_aai_redis_resp_size(argc, argv);

    if ((size_t) (conn->out_end - conn->out_last) < size) {

        used = conn->out_last - conn->out_pos;
        cap = conn->out_end - conn->out;

        if (conn->out && used + size <= cap) {
            ngx_memmove(conn->out, conn->out_pos, used);

        } else {
            cap = ngx_max(cap * 2, NGX_AAI_REDIS_OBUF_SIZE);

            while (cap < used + size) {
                cap *= 2;
            }

            p = ngx_alloc(cap, conn->rs->log);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (conn->out) {
                ngx_memcpy(p, conn->out_pos, used);
                ngx_free(conn->out);
            }

            conn->out = p;
            conn->out_end = p + cap;
        }

        conn->out_pos = conn->out;
        conn->out_last = conn->out + used;
    }

    conn->out_last = ngx_aai_redis_resp(conn->out_last, argc, argv);

    return NGX_OK;
}


ngx_int_t
ngx_aai_redis_subscribe_all(ngx_aai_redis_conn_t *conn)
{
    ngx_uint_t            i;
    ngx_str_t             argv[2];
    ngx_aai_redis_sub_t  *sub;

    for (i = 0; i < conn->rs->nsubs; i++) {
        sub = &conn->rs->subs[i];

        ngx_aai_redis_sub_argv(sub, argv);

        if (ngx_aai_redis_append(conn, 2, argv) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_aai_redis_sub_argv(ngx_aai_redis_sub_t *sub, ngx_str_t *argv)
{
    if (sub->pattern) {
        ngx_str_set(&argv[0], "PSUBSCRIBE");

    } else {
        ngx_str_set(&argv[0], "SUBSCRIBE");
    }

    argv[1] = sub->name;
}


size_t
ngx_aai_redis_resp_size(ngx_uint_t argc, ngx_str_t *argv)
{
    size_t      size;
    ngx_uint_t  i;

    size = sizeof("*\r\n") - 1 + NGX_INT_T_LEN;

    for (i = 0; i < argc; i++) {
        size += sizeof("$\r\n\r\n") - 1 + NGX_SIZE_T_LEN + argv[i].len;
    }

    return size;
}


u_char *
ngx_aai_redis_resp(u_char *p, ngx_uint_t argc, ngx_str_t *argv)
{
    ngx_uint_t  i;

    p = ngx_sprintf(p, "*%ui\r\n", argc);

    for (i = 0; i < argc; i++) {
        p = ngx_sprintf(p, "$%uz\r\n", argv[i].len);

        /* an empty argument may have no data: memcpy() must not see it */

        if (argv[i].len) {
            p = ngx_cpymem(p, argv[i].data, argv[i].len);
        }

        *p++ = CR; *p++ = LF;
    }

    return p;
}


/* an empty output buffer that grew for a large command is given back */

void
ngx_aai_redis_out_reset(ngx_aai_redis_conn_t *conn)
{
    if (conn->out != NULL
        && conn->out_pos == conn->out_last
        && conn->out_end - conn->out > NGX_AAI_REDIS_OBUF_KEEP)
    {
        ngx_free(conn->out);
        conn->out = NULL;
        conn->out_pos = NULL;
        conn->out_last = NULL;
        conn->out_end = NULL;
    }
}


ngx_int_t
ngx_aai_redis_metrics(ngx_aai_redis_t *rs, struct ngx_aai_metrics_s *m,
    const char *client)
{
    ngx_str_t              address;
    ngx_aai_redis_conf_t  *rcf;

    if (rs->cluster) {
        return ngx_aai_redis_cluster_metrics(rs->cluster, m, client);
    }

    /* node 0: the address as written, or the primary of master= */

    rcf = rs->conf;

    if (rcf->nsentinels) {
        address.len = sizeof("master=") - 1 + rcf->master.len;
        address.data = ngx_pnalloc(ngx_aai_metrics_pool(m), address.len);
        if (address.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ngx_cpymem(address.data, "master=", 7),
                   rcf->master.data, rcf->master.len);

    } else {
        address = rcf->url;
    }

    return ngx_aai_redis_node_metrics(rs, m, client, 0, &address);
}


/*
 * A client's (or a cluster node client's) own metrics: its open
 * connections, its connection failures by reason and an info gauge that
 * names its address, all labelled client="...",node="N".
 */

ngx_int_t
ngx_aai_redis_node_metrics(ngx_aai_redis_t *rs, struct ngx_aai_metrics_s *m,
    const char *client, ngx_uint_t node, ngx_str_t *address)
{
    u_char      *p, *last;
    ngx_str_t    label;
    ngx_uint_t   i, k;

    static const char  *reasons[] = {
        "refused", "timeout", "lost", "tls", "auth", "resolve"
    };

    p = ngx_pnalloc(ngx_aai_metrics_pool(m),
                    64 + 2 * NGX_SOCKADDR_STRLEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    label.data = p;
    last = p + 64 + 2 * NGX_SOCKADDR_STRLEN;

    p = ngx_slprintf(p, last, "client=\"%s\",node=\"%ui\",address=\"",
                     client, node);

    /* the label's value escaped as the text format wants; cut if long */

    for (i = 0; i < address->len && p < last - 3; i++) {
        k = address->data[i];

        if (k == '"' || k == '\\') {
            *p++ = '\\';

        } else if (k < 0x20) {
            continue;
        }

        *p++ = (u_char) k;
    }

    *p++ = '"';
    label.len = p - label.data;

    rs->m_info = ngx_aai_metrics_add(m, NGX_AAI_METRIC_GAUGE,
                                     "aai_redis_node_info",
                                     "A Redis client's node and its address "
                                     "(1).", &label);
    if (rs->m_info == NGX_ERROR) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(ngx_aai_metrics_pool(m), 64);
    if (p == NULL) {
        return NGX_ERROR;
    }

    label.data = p;
    label.len = ngx_snprintf(p, 64, "client=\"%s\",node=\"%ui\"",
                             client, node) - p;

    rs->m_conns = ngx_aai_metrics_add(m, NGX_AAI_METRIC_GAUGE,
                                      "aai_redis_connections",
                                      "Open Redis connections, all workers.",
                                      &label);
    if (rs->m_conns == NGX_ERROR) {
        return NGX_ERROR;
    }

    for (k = 0; k < NGX_AAI_REDIS_E_NUMBER; k++) {
        p = ngx_pnalloc(ngx_aai_metrics_pool(m), 96);
        if (p == NULL) {
            return NGX_ERROR;
        }

        label.data = p;
        label.len = ngx_snprintf(p, 96, "client=\"%s\",node=\"%ui\","
                                 "reason=\"%s\"", client, node, reasons[k])
                    - p;

        rs->m_errors[k] = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                      "aai_redis_errors_total",
                                      "Redis connections failed, by reason.",
                                      &label);
        if (rs->m_errors[k] == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    rs->metrics = m;

    return NGX_OK;
}


/* in a worker: the info gauge says 1 */

void
ngx_aai_redis_metrics_init_worker(ngx_aai_redis_t *rs)
{
    if (rs->metrics) {
        ngx_aai_metrics_set(rs->metrics, rs->m_info, 1);
    }
}


/*
 * delta: a connection opened (1) or closed (-1); else error: a failure of
 * that reason
 */

void
ngx_aai_redis_count(ngx_aai_redis_conn_t *conn, ngx_int_t delta,
    ngx_uint_t error)
{
    ngx_aai_redis_t  *rs;

    rs = conn->rs;

    if (rs->metrics == NULL) {
        return;
    }

    if (delta) {
        ngx_aai_metrics_inc(rs->metrics, rs->m_conns, delta);
        return;
    }

    ngx_aai_metrics_inc(rs->metrics, rs->m_errors[error], 1);
}


/* for ngx_aai_redis_cluster*.c */


ngx_aai_redis_cmd_t *
ngx_aai_redis_cmd_wrap(ngx_aai_redis_t *rs, void *ccmd)
{
    ngx_aai_redis_cmd_t  *cmd;

    cmd = ngx_aai_redis_cmd_get(rs);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->step = NGX_AAI_REDIS_CMD_CLUSTER;
    cmd->data = ccmd;

    return cmd;
}


void
ngx_aai_redis_cmd_unwrap(ngx_aai_redis_t *rs, ngx_aai_redis_cmd_t *cmd)
{
    ngx_aai_redis_cmd_free(rs, cmd);
}


ngx_aai_redis_cmd_t *
ngx_aai_redis_cmd_get(ngx_aai_redis_t *rs)
{
    ngx_queue_t          *q;
    ngx_aai_redis_cmd_t  *cmd;

    if (!ngx_queue_empty(&rs->free)) {
        q = ngx_queue_head(&rs->free);
        ngx_queue_remove(q);
        rs->nfree--;
        cmd = ngx_queue_data(q, ngx_aai_redis_cmd_t, queue);

    } else {
        cmd = ngx_alloc(sizeof(ngx_aai_redis_cmd_t), rs->log);
        if (cmd == NULL) {
            return NULL;
        }
    }

    ngx_memzero(cmd, sizeof(ngx_aai_redis_cmd_t));

    return cmd;
}


void
ngx_aai_redis_cmd_free(ngx_aai_redis_t *rs, ngx_aai_redis_cmd_t *cmd)
{
    if (rs->nfree >= NGX_AAI_REDIS_MAX_FREE) {
        ngx_free(cmd);
        return;
    }

    ngx_queue_insert_head(&rs->free, &cmd->queue);
    rs->nfree++;
}


void
ngx_aai_redis_result(ngx_aai_redis_cmd_t *cmd, ngx_aai_redis_result_t *res)
{
    uint64_t  now;

    now = ngx_aai_redis_now_us();

    res->latency_us = (ngx_uint_t) (now - cmd->start_us);
    res->latency = (ngx_msec_t) (res->latency_us / 1000);
}


uint64_t
ngx_aai_redis_now_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

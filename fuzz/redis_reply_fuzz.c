
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the Redis reply path: hiredis's reader and the
 * suite's client (ngx_aai_redis*.c, included here), driven as nginx
 * drives it.  The connection is a socketpair whose reads come from the
 * input: the handshake (AUTH, SELECT, PING) is answered by it, and so are
 * the user commands and the pub/sub messages; chunks end anywhere,
 * connections are lost and made again, timers fire.
 *
 * Input: byte 0 the client (bit 0 password, bit 1 user, bit 2 db, bit 3
 * two connections, bit 4 a pub/sub subscription, bit 5 connect in
 * progress), byte 1 the number of user commands sent at once (0-15; GET
 * key, and every other one SET key with an empty value), then
 * records: a length byte L and L bytes the server sends in one read
 * (then a byte: bit 7 the pub/sub connection, else which connection);
 * L = 0 closes the connection, L = 255 lets 1 s pass and fires the
 * timers, L = 254 sends one more command, L = 253 fires the reconnect.
 *
 * Invariants checked: a command's handler runs at most once, never after
 * ngx_aai_redis_exit_worker(); every reply passed is a well-formed tree;
 * nothing leaks (LeakSanitizer) once the worker exits.
 */


#include <sys/socket.h>

#include "ngx_fuzz.h"

#include "ngx_aai_redis_srcs.h"


#define FUZZ_MAX_CMDS  64


typedef struct {
    ngx_uint_t   called;
} fuzz_cmd_t;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_fuzz_in_t       fuzz_in;
static const u_char       *fuzz_chunk;
static size_t              fuzz_chunk_len;
static ngx_uint_t          fuzz_eof;
static fuzz_cmd_t          fuzz_cmds[FUZZ_MAX_CMDS];
static ngx_uint_t          fuzz_ncmds;
static ngx_uint_t          fuzz_exited;
static volatile size_t     fuzz_sum;


/* the event machinery the client uses */

static ssize_t
fuzz_recv(ngx_connection_t *c, u_char *buf, size_t size)
{
    size_t  n;

    if (fuzz_eof) {
        fuzz_eof = 0;
        return 0;
    }

    if (fuzz_chunk_len == 0) {
        c->read->ready = 0;
        return NGX_AGAIN;
    }

    n = ngx_min(size, fuzz_chunk_len);
    ngx_memcpy(buf, fuzz_chunk, n);

    fuzz_chunk += n;
    fuzz_chunk_len -= n;

    c->read->ready = (fuzz_chunk_len != 0);

    return n;
}


ngx_int_t
ngx_event_get_peer(ngx_peer_connection_t *pc, void *data)
{
    return NGX_OK;
}


ngx_int_t
ngx_event_connect_peer(ngx_peer_connection_t *pc)
{
    int                sv[2];
    ngx_connection_t  *c;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == -1) {
        return NGX_ERROR;
    }

    c = calloc(1, sizeof(ngx_connection_t));
    c->read = calloc(1, sizeof(ngx_event_t));
    c->write = calloc(1, sizeof(ngx_event_t));

    /* the peer's end: what the client writes is drained and dropped */
    c->number = sv[1];

    c->fd = sv[0];
    c->log = pc->log;
    c->recv = fuzz_recv;
    c->read->data = c;
    c->write->data = c;
    c->read->log = pc->log;
    c->write->log = pc->log;
    c->write->ready = 1;

    pc->connection = c;

    return (fuzz_in.p < fuzz_in.last && (*fuzz_in.p & 1)) ? NGX_AGAIN
                                                           : NGX_OK;
}


void
ngx_close_connection(ngx_connection_t *c)
{
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    close(c->fd);
    close((int) c->number);
    free(c->read);
    free(c->write);
    free(c);
}


ngx_int_t
ngx_tcp_nodelay(ngx_connection_t *c)
{
    return NGX_OK;
}


static void
fuzz_drain(ngx_aai_redis_conn_t *conn)
{
    u_char  buf[4096];

    if (conn->pc.connection == NULL) {
        return;
    }

    while (recv((int) conn->pc.connection->number, buf, sizeof(buf), 0) > 0)
    {
        /* void */
    }
}


/* the handlers */

static void
fuzz_walk(redisReply *r, ngx_uint_t depth)
{
    size_t  i;

    switch (r->type) {

    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        for (i = 0; i < r->len; i++) {
            fuzz_sum += (u_char) r->str[i];
        }

        break;

    case REDIS_REPLY_ARRAY:
        if (depth > 10) {
            abort();    /* hiredis limits nesting */
        }

        for (i = 0; i < r->elements; i++) {
            fuzz_walk(r->element[i], depth + 1);
        }

        break;

    case REDIS_REPLY_INTEGER:
    case REDIS_REPLY_NIL:
        break;

    default:
        abort();
    }
}


static void
fuzz_handler(ngx_aai_redis_result_t *res, void *data)
{
    fuzz_cmd_t  *cmd = data;

    if (cmd->called++ || fuzz_exited) {
        abort();
    }

    if (res->reply == NULL) {
        if (res->error == NULL) {
            abort();
        }

        fuzz_sum += ngx_strlen(res->error);
        return;
    }

    fuzz_walk(res->reply, 0);
}


static void
fuzz_message(ngx_str_t *channel, ngx_str_t *message, void *data)
{
    size_t  i;

    for (i = 0; i < channel->len; i++) {
        fuzz_sum += channel->data[i];
    }

    for (i = 0; i < message->len; i++) {
        fuzz_sum += message->data[i];
    }
}


static void
fuzz_send(ngx_aai_redis_t *rs)
{
    ngx_str_t  argv[3];

    if (fuzz_ncmds == FUZZ_MAX_CMDS) {
        return;
    }

    /* every other command ends with an empty argument, as nginx has them */

    ngx_str_set(&argv[0], "SET");
    ngx_str_set(&argv[1], "key");
    ngx_str_null(&argv[2]);

    if (fuzz_ncmds % 2 == 0) {
        ngx_str_set(&argv[0], "GET");
    }

    fuzz_cmds[fuzz_ncmds].called = 0;

    if (ngx_aai_redis_send(rs, &ngx_fuzz_log, 2 + fuzz_ncmds % 2, argv,
                           fuzz_handler, &fuzz_cmds[fuzz_ncmds])
        != NULL)
    {
        fuzz_ncmds++;
    }
}


static void
fuzz_fire(ngx_event_t *ev)
{
    if (ev->timer_set) {
        ev->timer_set = 0;
        ev->timedout = 1;
        ev->handler(ev);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                 conf_byte;
    size_t                 len;
    ngx_str_t              channel;
    ngx_uint_t             i, n;
    ngx_addr_t             addr;
    ngx_pool_t            *pool;
    ngx_conf_t            *cf;
    ngx_aai_redis_t       *rs;
    ngx_aai_redis_conn_t  *conn;
    ngx_aai_redis_conf_t   rcf;
    struct sockaddr_in     sin;

    ngx_fuzz_init();

    fuzz_in.p = data;
    fuzz_in.last = data + size;
    fuzz_chunk_len = 0;
    fuzz_eof = 0;
    fuzz_ncmds = 0;
    fuzz_exited = 0;

    conf_byte = (u_char) ngx_fuzz_byte(&fuzz_in);
    n = ngx_fuzz_byte(&fuzz_in) % 16;

    pool = ngx_fuzz_pool();
    cf = ngx_fuzz_conf(pool, NULL, 0);

    ngx_memzero(&sin, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(6379);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    ngx_memzero(&addr, sizeof(addr));
    addr.sockaddr = (struct sockaddr *) &sin;
    addr.socklen = sizeof(sin);
    ngx_str_set(&addr.name, "127.0.0.1:6379");

    ngx_memzero(&rcf, sizeof(rcf));
    rcf.addrs = &addr;
    rcf.naddrs = 1;
    ngx_str_set(&rcf.url, "127.0.0.1:6379");
    ngx_str_set(&rcf.directive, "fuzz_redis");
    rcf.db = (conf_byte & 4) ? 3 : -1;
    rcf.connect_timeout = NGX_CONF_UNSET_MSEC;
    rcf.timeout = NGX_CONF_UNSET_MSEC;
    rcf.backoff = NGX_CONF_UNSET_MSEC;
    rcf.connections = (conf_byte & 8) ? 2 : 1;

    if (conf_byte & 1) {
        ngx_str_set(&rcf.password, "secret");

        if (conf_byte & 2) {
            ngx_str_set(&rcf.user, "alice");
        }
    }

    rs = ngx_aai_redis_create(cf, &rcf);
    if (rs == NULL) {
        abort();
    }

    if (conf_byte & 0x10) {
        ngx_str_set(&channel, "news");

        if (ngx_aai_redis_subscribe(rs, &channel, 0, fuzz_message, NULL)
            != NGX_OK)
        {
            abort();
        }

        ngx_str_set(&channel, "n*");

        if (ngx_aai_redis_subscribe(rs, &channel, 1, fuzz_message, NULL)
            != NGX_OK)
        {
            abort();
        }
    }

    if (ngx_aai_redis_init_worker(rs, &ngx_fuzz_cycle) != NGX_OK) {
        abort();
    }

    for (i = 0; i < n; i++) {
        fuzz_send(rs);
    }

    ngx_fuzz_run_posted();

    while (fuzz_in.p < fuzz_in.last) {

        len = ngx_fuzz_byte(&fuzz_in);

        if (len == 255) {
            ngx_current_msec += 1000;

            for (i = 0; i < rs->nconns; i++) {
                fuzz_fire(&rs->conns[i].timer);
            }

            if (rs->subconn) {
                fuzz_fire(&rs->subconn->timer);
            }

        } else if (len == 254) {
            fuzz_send(rs);

        } else if (len == 253) {
            for (i = 0; i < rs->nconns; i++) {
                fuzz_fire(&rs->conns[i].backoff_ev);
            }

            if (rs->subconn) {
                fuzz_fire(&rs->subconn->backoff_ev);
            }

        } else {
            fuzz_chunk = fuzz_in.p;
            fuzz_chunk_len = ngx_min(len, (size_t) (fuzz_in.last - fuzz_in.p));
            fuzz_in.p += fuzz_chunk_len;
            fuzz_eof = (len == 0);

            /* the data goes to the connection the next byte picks */

            i = ngx_fuzz_byte(&fuzz_in);

            conn = (rs->subconn && (i & 0x80)) ? rs->subconn
                                                : &rs->conns[i % rs->nconns];

            if (conn->pc.connection) {
                conn->pc.connection->read->ready = 1;
                conn->pc.connection->read->handler(
                                                 conn->pc.connection->read);
            }

            fuzz_chunk_len = 0;
            fuzz_eof = 0;
        }

        ngx_fuzz_run_posted();

        for (i = 0; i < rs->nconns; i++) {
            fuzz_drain(&rs->conns[i]);
        }

        if (rs->subconn) {
            fuzz_drain(rs->subconn);
        }
    }

    ngx_aai_redis_exit_worker(rs);
    fuzz_exited = 1;

    ngx_fuzz_run_posted();

    if (!ngx_queue_empty(&ngx_posted_events)) {
        abort();
    }

    ngx_destroy_pool(pool);

    return 0;
}

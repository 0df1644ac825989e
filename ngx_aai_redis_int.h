
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_int.h: private to the files of the Redis client
 * (ngx_aai_redis*.c): its constants, the structures of a client, a
 * connection, a command, the shared circuit and the sentinel connection,
 * and the functions one file calls in another.  The modules use
 * ngx_aai_redis.h only.
 */


#ifndef _NGX_AAI_REDIS_INT_H_INCLUDED_
#define _NGX_AAI_REDIS_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis.h"
#include "ngx_aai_redis_cluster.h"


#define NGX_AAI_REDIS_DEFAULT_PORT      6379
#define NGX_AAI_REDIS_MAX_CONNECTIONS   64
#define NGX_AAI_REDIS_BACKOFF_MIN       100
#define NGX_AAI_REDIS_RBUF_SIZE         32768
#define NGX_AAI_REDIS_OBUF_SIZE         4096
#define NGX_AAI_REDIS_OBUF_KEEP         65536
#define NGX_AAI_REDIS_MAX_FREE          4096
/*
 * hiredis allocates an array's element pointers on reading its header, so
 * a reply announcing 2^31 elements would cost 16 GB before any arrives;
 * the suite's largest reply (a batch of the limiter) has under 2000
 */
#define NGX_AAI_REDIS_MAX_ELEMENTS      (1024 * 1024)

/* the circuit state shared by every client of the suite, per endpoint */
#define NGX_AAI_REDIS_CIRCUIT_ZONE      "aai_redis_circuit"
#define NGX_AAI_REDIS_CIRCUIT_MAGIC     0x52494141    /* "AAIR" */
#define NGX_AAI_REDIS_CIRCUIT_SLOTS     64
#define NGX_AAI_REDIS_CIRCUIT_NAME      128


typedef enum {
    NGX_AAI_REDIS_CLOSED = 0,
    NGX_AAI_REDIS_CONNECTING,
    NGX_AAI_REDIS_HANDSHAKE,
    NGX_AAI_REDIS_READY,
    NGX_AAI_REDIS_BACKOFF,
    NGX_AAI_REDIS_TLS,              /* connected, TLS handshake */
    NGX_AAI_REDIS_RESOLVING         /* the host name looked up again */
} ngx_aai_redis_state_e;


typedef enum {
    NGX_AAI_REDIS_CMD_USER = 0,
    NGX_AAI_REDIS_CMD_AUTH,
    NGX_AAI_REDIS_CMD_SELECT,
    NGX_AAI_REDIS_CMD_ROLE,         /* with sentinel=: a primary? */
    NGX_AAI_REDIS_CMD_PING,
    NGX_AAI_REDIS_CMD_CLUSTER       /* what a cluster's caller holds */
} ngx_aai_redis_step_e;


/* the reasons of aai_redis_errors_total, by which a connection failed */
typedef enum {
    NGX_AAI_REDIS_E_REFUSED = 0,    /* connect() failed */
    NGX_AAI_REDIS_E_TIMEOUT,        /* connect, handshake, command, lookup */
    NGX_AAI_REDIS_E_LOST,           /* closed, reset, a protocol error */
    NGX_AAI_REDIS_E_TLS,            /* TLS handshake or verification */
    NGX_AAI_REDIS_E_AUTH,           /* AUTH refused, or NOAUTH */
    NGX_AAI_REDIS_E_RESOLVE,        /* the host name not resolved */
    NGX_AAI_REDIS_E_NUMBER
} ngx_aai_redis_error_e;


/* the connection to a sentinel */
typedef enum {
    NGX_AAI_REDIS_SENTINEL_IDLE = 0,    /* waiting to (re)connect */
    NGX_AAI_REDIS_SENTINEL_CONNECTING,
    NGX_AAI_REDIS_SENTINEL_ASKED,       /* replies expected */
    NGX_AAI_REDIS_SENTINEL_SUBSCRIBED,  /* +switch-master messages */
    NGX_AAI_REDIS_SENTINEL_RESOLVING    /* its host name looked up again */
} ngx_aai_redis_sentinel_state_e;


struct ngx_aai_redis_cmd_s {
    ngx_queue_t                 queue;
    ngx_aai_redis_handler_pt    handler;
    void                       *data;
    ngx_msec_t                  deadline;
    uint64_t                    start_us;
    ngx_uint_t                  step;       /* ngx_aai_redis_step_e */
    unsigned                    cancelled:1;
};


typedef struct {
    ngx_aai_redis_t            *rs;
    ngx_peer_connection_t       pc;
    ngx_str_t                  *name;       /* address, for logs */
    ngx_log_t                   log;        /* pc.log: core's messages */
    ngx_uint_t                  state;      /* ngx_aai_redis_state_e */

    ngx_queue_t                 queue;      /* pending commands, FIFO */
    ngx_uint_t                  npending;

    u_char                     *out;        /* commands not yet written */
    u_char                     *out_pos;
    u_char                     *out_last;
    u_char                     *out_end;
    size_t                      hs_sent;    /* of rs->hs */

    redisReader                *reader;

    ngx_event_t                 timer;      /* oldest pending deadline */
    ngx_event_t                 backoff_ev;
    ngx_msec_t                  backoff;
    ngx_uint_t                  failures;   /* since last READY */
    ngx_uint_t                  addr;       /* next address to try */

    /* the host name as the resolver last answered (resolver configured) */
    ngx_resolver_ctx_t         *rctx;       /* a lookup under way */
    ngx_addr_t                  raddr;
    ngx_sockaddr_t              rsa;
    u_char                      rname[NGX_SOCKADDR_STRLEN];

#if (NGX_SSL)
    ngx_ssl_session_t          *ssl_session;   /* reused on reconnect */
    size_t                      tls_error_len;
    u_char                      tls_error[160]; /* OpenSSL's last word */
#endif

    unsigned                    sub:1;      /* pub/sub connection */
    unsigned                    reconnect:1;  /* connected before */
    unsigned                    resolved:1; /* raddr is set */
    unsigned                    counted:1;  /* in aai_redis_connections */
    unsigned                    auth_failed:1;
} ngx_aai_redis_conn_t;


/*
 * One endpoint (the first address of a client's configuration, as text)
 * in the shared zone: while "until" (ngx_current_msec, a system-wide
 * monotonic clock) is ahead, a command to the endpoint timed out in the
 * client "owner" of process "pid", and every other client, of any module
 * and any worker, fails its commands at once instead of waiting for its
 * own timeout.
 */
typedef struct {
    ngx_atomic_t                until;      /* 0: closed */
    ngx_atomic_t                pid;
    ngx_atomic_t                owner;
    uint32_t                    len;
    u_char                      name[NGX_AAI_REDIS_CIRCUIT_NAME];
} ngx_aai_redis_circuit_t;


typedef struct {
    uint32_t                    magic;
    uint32_t                    nslots;
    ngx_aai_redis_circuit_t     slots[NGX_AAI_REDIS_CIRCUIT_SLOTS];
} ngx_aai_redis_circuit_shm_t;


typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  pattern;
    ngx_aai_redis_message_pt    handler;
    void                       *data;
} ngx_aai_redis_sub_t;


/*
 * One per client and worker with sentinel=: one connection to one sentinel
 * at a time, which sends [AUTH], SENTINEL get-master-addr-by-name and
 * SUBSCRIBE +switch-master in one write, then listens.  On any failure it
 * tries the next sentinel after a backoff.
 */
typedef struct {
    ngx_aai_redis_t            *rs;
    ngx_peer_connection_t       pc;
    ngx_log_t                   log;
    redisReader                *reader;
    ngx_event_t                 timer;      /* reply deadline, or retry */
    ngx_uint_t                  state;      /* sentinel_state_e */
    ngx_uint_t                  next;       /* the sentinel to ask */
    ngx_uint_t                  expect;     /* replies before SUBSCRIBE's */
    ngx_uint_t                  failures;
    ngx_msec_t                  backoff;
    ngx_msec_t                  asked;      /* when last connected */
    u_char                     *out;
    size_t                      out_len;
    size_t                      out_sent;

    /* sentinels given by name, with a resolver: the last answer */
    ngx_resolver_ctx_t         *rctx;
    ngx_addr_t                  raddr;
    ngx_sockaddr_t              rsa;
    u_char                      rname[NGX_SOCKADDR_STRLEN];
    unsigned                    reconnect:1;
} ngx_aai_redis_sentinel_t;


struct ngx_aai_redis_s {
    ngx_aai_redis_conf_t       *conf;
    ngx_log_t                  *log;

    /* the ev->data of timer-only events, as nginx core does */
    ngx_connection_t            dummy;

    ngx_aai_redis_conn_t       *conns;
    ngx_uint_t                  nconns;
    ngx_aai_redis_conn_t       *subconn;

    ngx_aai_redis_sub_t        *subs;
    ngx_uint_t                  nsubs;
    ngx_uint_t                  nalloc_subs;

    ngx_queue_t                 free;       /* command free list */
    ngx_uint_t                  nfree;

    u_char                     *hs;         /* handshake, in RESP */
    size_t                      hs_len;

    u_char                     *rbuf;
    ngx_uint_t                  nfailing;   /* connections failing */

    ngx_shm_zone_t             *circuit_zone;
    ngx_aai_redis_circuit_t    *circuit;    /* NULL: not shared */

#if (NGX_SSL)
    ngx_ssl_t                  *ssl;        /* NULL: plain TCP */
#endif

    /* sentinel=: the primary as the sentinels last said */
    ngx_aai_redis_sentinel_t   *sentinel;
    ngx_addr_t                  primary;
    ngx_sockaddr_t              primary_sa;
    u_char                      primary_name[NGX_SOCKADDR_STRLEN];
    ngx_uint_t                  failovers;  /* primary changes followed */
    unsigned                    primary_known:1;
    unsigned                    switching:1;

    ngx_aai_redis_cluster_t    *cluster;    /* cluster= */

    /* aai_redis_connections, _errors_total, _node_info (NULL: none) */
    struct ngx_aai_metrics_s   *metrics;
    ngx_int_t                   m_conns;
    ngx_int_t                   m_info;
    ngx_int_t                   m_errors[NGX_AAI_REDIS_E_NUMBER];

    /* the http block's "resolver", if it has one with name servers */
    ngx_resolver_t             *resolver;
    ngx_msec_t                  resolver_timeout;

    unsigned                    healthy:1;
    unsigned                    initialized:1;
};


/* the error of a command that timed out, compared by address */
extern const char  ngx_aai_redis_timeout[];


#define ngx_aai_redis_conn_of(ev, field)                                      \
    ((ngx_aai_redis_conn_t *) ((u_char *) (ev)                                \
                               - offsetof(ngx_aai_redis_conn_t, field)))


/* ngx_aai_redis.c */

void ngx_aai_redis_write_handler(ngx_event_t *wev);
void ngx_aai_redis_read_handler(ngx_event_t *rev);
ngx_int_t ngx_aai_redis_subscribe_all(ngx_aai_redis_conn_t *conn);
size_t ngx_aai_redis_resp_size(ngx_uint_t argc, ngx_str_t *argv);
u_char *ngx_aai_redis_resp(u_char *p, ngx_uint_t argc, ngx_str_t *argv);
void ngx_aai_redis_out_reset(ngx_aai_redis_conn_t *conn);
ngx_aai_redis_cmd_t *ngx_aai_redis_cmd_get(ngx_aai_redis_t *rs);
void ngx_aai_redis_cmd_free(ngx_aai_redis_t *rs, ngx_aai_redis_cmd_t *cmd);
void ngx_aai_redis_result(ngx_aai_redis_cmd_t *cmd,
    ngx_aai_redis_result_t *res);
uint64_t ngx_aai_redis_now_us(void);

void ngx_aai_redis_metrics_init_worker(ngx_aai_redis_t *rs);
void ngx_aai_redis_count(ngx_aai_redis_conn_t *conn, ngx_int_t delta,
    ngx_uint_t error);

/* ngx_aai_redis_circuit.c */

ngx_int_t ngx_aai_redis_circuit_add(ngx_conf_t *cf, ngx_aai_redis_t *rs);
void ngx_aai_redis_circuit_find(ngx_aai_redis_t *rs);
void ngx_aai_redis_circuit_open(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_circuit_close(ngx_aai_redis_t *rs);
ngx_uint_t ngx_aai_redis_circuit_blocked(ngx_aai_redis_t *rs);

/* ngx_aai_redis_conn.c */

redisReader *ngx_aai_redis_reader_create(void);
void ngx_aai_redis_conn_init(ngx_aai_redis_t *rs,
    ngx_aai_redis_conn_t *conn, ngx_cycle_t *cycle, ngx_uint_t n);
ngx_int_t ngx_aai_redis_connect(ngx_aai_redis_conn_t *conn);
ngx_int_t ngx_aai_redis_test_connect(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_close(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_fail(ngx_aai_redis_conn_t *conn, ngx_err_t err,
    const char *error, const char *fmt, ...);
ngx_int_t ngx_aai_redis_handshake_reply(ngx_aai_redis_conn_t *conn,
    ngx_aai_redis_cmd_t *cmd, redisReply *reply);
ngx_int_t ngx_aai_redis_connect_addr(ngx_aai_redis_conn_t *conn,
    ngx_addr_t *addr);
void ngx_aai_redis_arm_timer(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_post_write(ngx_aai_redis_conn_t *conn);

/* ngx_aai_redis_tls.c */

#if (NGX_SSL)
ngx_int_t ngx_aai_redis_ssl_create(ngx_conf_t *cf, ngx_aai_redis_t *rs);
ngx_int_t ngx_aai_redis_tls_start(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_tls_log_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
ngx_int_t ngx_aai_redis_tls_send(ngx_aai_redis_conn_t *conn,
    u_char *p, size_t size);
#endif

/* ngx_aai_redis_resolve.c */

void ngx_aai_redis_resolver_init(ngx_aai_redis_t *rs, ngx_cycle_t *cycle);
ngx_int_t ngx_aai_redis_resolve_name(ngx_aai_redis_t *rs, ngx_str_t *host,
    ngx_resolver_handler_pt handler, void *data, ngx_resolver_ctx_t **ctxp);
ngx_int_t ngx_aai_redis_resolved(ngx_resolver_ctx_t *ctx, ngx_uint_t n,
    in_port_t port, ngx_addr_t *addr, ngx_sockaddr_t *sa, u_char *text);
const char *ngx_aai_redis_resolve_strerror(ngx_resolver_ctx_t *ctx);
ngx_int_t ngx_aai_redis_resolve(ngx_aai_redis_conn_t *conn);
void ngx_aai_redis_resolve_cancel(ngx_aai_redis_conn_t *conn);

/* ngx_aai_redis_sentinel.c */

ngx_int_t ngx_aai_redis_sentinel_init(ngx_aai_redis_t *rs,
    ngx_cycle_t *cycle);
void ngx_aai_redis_sentinel_destroy(ngx_aai_redis_t *rs);
void ngx_aai_redis_sentinel_reask(ngx_aai_redis_t *rs);


#endif /* _NGX_AAI_REDIS_INT_H_INCLUDED_ */

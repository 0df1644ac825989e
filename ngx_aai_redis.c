
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis: see ngx_aai_redis.h.
 *
 * Each connection goes CLOSED -> CONNECTING -> HANDSHAKE -> READY, and
 * -> BACKOFF on any failure.  The handshake (AUTH, SELECT, PING) is the
 * same for every connection of a client and is built once per worker;
 * user commands are formatted into the connection's output buffer at once
 * and written only in READY, by the connection's write handler, which
 * ngx_aai_redis_send() posts: all the commands of one event loop iteration
 * leave in one send().  Replies are matched in order with the FIFO of
 * pending commands.  One timer per connection guards the oldest pending
 * command's deadline.
 */


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
    NGX_AAI_REDIS_TLS               /* connected, TLS handshake */
} ngx_aai_redis_state_e;


typedef enum {
    NGX_AAI_REDIS_CMD_USER = 0,
    NGX_AAI_REDIS_CMD_AUTH,
    NGX_AAI_REDIS_CMD_SELECT,
    NGX_AAI_REDIS_CMD_ROLE,         /* with sentinel=: a primary? */
    NGX_AAI_REDIS_CMD_PING,
    NGX_AAI_REDIS_CMD_CLUSTER       /* what a cluster's caller holds */
} ngx_aai_redis_step_e;


/* the connection to a sentinel */
typedef enum {
    NGX_AAI_REDIS_SENTINEL_IDLE = 0,    /* waiting to (re)connect */
    NGX_AAI_REDIS_SENTINEL_CONNECTING,
    NGX_AAI_REDIS_SENTINEL_ASKED,       /* replies expected */
    NGX_AAI_REDIS_SENTINEL_SUBSCRIBED   /* +switch-master messages */
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

#if (NGX_SSL)
    ngx_ssl_session_t          *ssl_session;   /* reused on reconnect */
    size_t                      tls_error_len;
    u_char                      tls_error[160]; /* OpenSSL's last word */
#endif

    unsigned                    sub:1;      /* pub/sub connection */
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

    unsigned                    healthy:1;
    unsigned                    initialized:1;
};


static const char  ngx_aai_redis_timeout[] = "timeout";


#define ngx_aai_redis_conn_of(ev, field)                                      \
    ((ngx_aai_redis_conn_t *) ((u_char *) (ev)                                \
                               - offsetof(ngx_aai_redis_conn_t, field)))


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
#if (NGX_SSL)
static ngx_int_t ngx_aai_redis_ssl_create(ngx_conf_t *cf,
    ngx_aai_redis_t *rs);
static ngx_int_t ngx_aai_redis_tls_start(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_tls_handshake_handler(ngx_connection_t *c);
static ngx_int_t ngx_aai_redis_tls_verify(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_tls_save_session(ngx_connection_t *c);
static ngx_uint_t ngx_aai_redis_is_ip(ngx_str_t *name);
static void ngx_aai_redis_tls_log_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static ngx_int_t ngx_aai_redis_tls_send(ngx_aai_redis_conn_t *conn,
    u_char *p, size_t size);
#endif

static ngx_int_t ngx_aai_redis_circuit_add(ngx_conf_t *cf,
    ngx_aai_redis_t *rs);
static ngx_int_t ngx_aai_redis_circuit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_aai_redis_circuit_find(ngx_aai_redis_t *rs);
static void ngx_aai_redis_circuit_open(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_circuit_close(ngx_aai_redis_t *rs);
static ngx_uint_t ngx_aai_redis_circuit_blocked(ngx_aai_redis_t *rs);
static ngx_int_t ngx_aai_redis_handshake_init(ngx_aai_redis_t *rs);
static void ngx_aai_redis_conn_init(ngx_aai_redis_t *rs,
    ngx_aai_redis_conn_t *conn, ngx_cycle_t *cycle, ngx_uint_t n);
static void ngx_aai_redis_conn_destroy(ngx_aai_redis_conn_t *conn);
static ngx_int_t ngx_aai_redis_connect(ngx_aai_redis_conn_t *conn);
static ngx_int_t ngx_aai_redis_test_connect(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_ready(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_close(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_fail(ngx_aai_redis_conn_t *conn, ngx_err_t err,
    const char *error, const char *fmt, ...);
static ngx_uint_t ngx_aai_redis_any_ready(ngx_aai_redis_t *rs);
static ngx_aai_redis_conn_t *ngx_aai_redis_pick(ngx_aai_redis_t *rs);

static void ngx_aai_redis_write_handler(ngx_event_t *wev);
static void ngx_aai_redis_flush(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_aai_redis_process(ngx_aai_redis_conn_t *conn);
static ngx_int_t ngx_aai_redis_handshake_reply(ngx_aai_redis_conn_t *conn,
    ngx_aai_redis_cmd_t *cmd, redisReply *reply);
static void ngx_aai_redis_message(ngx_aai_redis_conn_t *conn,
    redisReply *reply);
static void ngx_aai_redis_timer_handler(ngx_event_t *ev);

static ngx_int_t ngx_aai_redis_sentinel_init(ngx_aai_redis_t *rs,
    ngx_cycle_t *cycle);
static void ngx_aai_redis_sentinel_destroy(ngx_aai_redis_t *rs);
static void ngx_aai_redis_sentinel_connect(ngx_aai_redis_sentinel_t *st);
static void ngx_aai_redis_sentinel_close(ngx_aai_redis_sentinel_t *st);
static void ngx_aai_redis_sentinel_fail(ngx_aai_redis_sentinel_t *st,
    const char *fmt, ...);
static void ngx_aai_redis_sentinel_write(ngx_event_t *wev);
static void ngx_aai_redis_sentinel_read(ngx_event_t *rev);
static ngx_int_t ngx_aai_redis_sentinel_reply(ngx_aai_redis_sentinel_t *st,
    redisReply *reply);
static void ngx_aai_redis_sentinel_timer(ngx_event_t *ev);
static void ngx_aai_redis_sentinel_reask(ngx_aai_redis_t *rs);
static ngx_int_t ngx_aai_redis_set_primary(ngx_aai_redis_t *rs,
    ngx_str_t *host, ngx_str_t *port);
static void ngx_aai_redis_backoff_handler(ngx_event_t *ev);
static ngx_uint_t ngx_aai_redis_next_deadline(ngx_aai_redis_conn_t *conn,
    ngx_msec_t *deadline);
static void ngx_aai_redis_arm_timer(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_post_write(ngx_aai_redis_conn_t *conn);

static ngx_int_t ngx_aai_redis_append(ngx_aai_redis_conn_t *conn,
    ngx_uint_t argc, ngx_str_t *argv);
static ngx_int_t ngx_aai_redis_subscribe_all(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_sub_argv(ngx_aai_redis_sub_t *sub,
    ngx_str_t *argv);
static size_t ngx_aai_redis_resp_size(ngx_uint_t argc, ngx_str_t *argv);
static u_char *ngx_aai_redis_resp(u_char *p, ngx_uint_t argc,
    ngx_str_t *argv);
static void ngx_aai_redis_out_reset(ngx_aai_redis_conn_t *conn);

static ngx_aai_redis_cmd_t *ngx_aai_redis_send_cmd(ngx_aai_redis_t *rs,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data, ngx_uint_t asking);
static ngx_aai_redis_cmd_t *ngx_aai_redis_cmd_get(ngx_aai_redis_t *rs);
static void ngx_aai_redis_cmd_free(ngx_aai_redis_t *rs,
    ngx_aai_redis_cmd_t *cmd);
static void ngx_aai_redis_result(ngx_aai_redis_cmd_t *cmd,
    ngx_aai_redis_result_t *res);
static uint64_t ngx_aai_redis_now_us(void);
static void *ngx_aai_redis_create_array(const redisReadTask *task,
    int elements);
static u_char *ngx_aai_redis_log_handler(ngx_log_t *log, u_char *buf,
    size_t len);


static redisReplyObjectFunctions   ngx_aai_redis_reply_fn;
static void                      *(*ngx_aai_redis_array_fn)(
                                      const redisReadTask *task, int elements);


/* configuration */


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
    ngx_str_null(&rcf->master);
    ngx_str_null(&rcf->sentinel_password);
    rcf->cluster = 0;
    rcf->cluster_node = 0;

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


#if (NGX_SSL)

/*
 * One SSL_CTX per client, as the upstream module has per location: the
 * client certificate, the trusted CAs (verification is done after the
 * handshake, by ngx_aai_redis_tls_verify()), and a client session cache
 * whose new sessions each connection keeps for its next connect.
 */

static ngx_int_t
ngx_aai_redis_ssl_create(ngx_conf_t *cf, ngx_aai_redis_t *rs)
{
    ngx_ssl_t             *ssl;
    ngx_pool_cleanup_t    *cln;
    ngx_aai_redis_conf_t  *rcf;

    rcf = rs->conf;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (rcf->tls_cert.len
        && ngx_ssl_certificate(cf, ssl, &rcf->tls_cert, &rcf->tls_key, NULL)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot load \"tls_cert\" \"%V\" or \"tls_key\" "
                           "\"%V\" in \"%V\"", &rcf->tls_cert, &rcf->tls_key,
                           &rcf->directive);
        return NGX_ERROR;
    }

    if (rcf->tls_verify) {
        if (rcf->tls_ca.len) {
            if (ngx_ssl_trusted_certificate(cf, ssl, &rcf->tls_ca, 4)
                != NGX_OK)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "cannot load \"tls_ca\" \"%V\" in \"%V\"",
                                   &rcf->tls_ca, &rcf->directive);
                return NGX_ERROR;
            }

        } else if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          "SSL_CTX_set_default_verify_paths() failed "
                          "in \"%V\"", &rcf->directive);
            return NGX_ERROR;
        }
    }

    if (ngx_ssl_client_session_cache(cf, ssl, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    rs->ssl = ssl;

    return NGX_OK;
}

#endif


/*
 * The shared circuit state.  The modules are separate .so files that share
 * no symbols: each asks for the same zone by name.  nginx gives the same
 * zone to callers with the same name, size and tag; the tag is the address
 * of ngx_core_module, which is the same in every module (the .so files
 * each have their own copy of any static of this file).
 */

static ngx_int_t
ngx_aai_redis_circuit_add(ngx_conf_t *cf, ngx_aai_redis_t *rs)
{
    ngx_str_t        name = ngx_string(NGX_AAI_REDIS_CIRCUIT_ZONE);
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, &name, 16 * ngx_pagesize,
                                 &ngx_core_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    /* any module's init will do: they are the same code */

    zone->init = ngx_aai_redis_circuit_init_zone;
    zone->data = zone;

    rs->circuit_zone = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_aai_redis_circuit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t              *shpool;
    ngx_aai_redis_circuit_shm_t  *shm;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    /* a zone kept across a reload keeps its state */

    shm = shpool->data;

    if (data && shm && shm->magic == NGX_AAI_REDIS_CIRCUIT_MAGIC) {
        return NGX_OK;
    }

    shm = ngx_slab_calloc(shpool, sizeof(ngx_aai_redis_circuit_shm_t));
    if (shm == NULL) {
        return NGX_ERROR;
    }

    shm->magic = NGX_AAI_REDIS_CIRCUIT_MAGIC;
    shpool->data = shm;

    return NGX_OK;
}


/* init_process: the endpoint's slot, taken if new; none if all are taken */

static void
ngx_aai_redis_circuit_find(ngx_aai_redis_t *rs)
{
    ngx_str_t                    *name;
    ngx_uint_t                    i;
    ngx_slab_pool_t              *shpool;
    ngx_aai_redis_circuit_t      *c;
    ngx_aai_redis_circuit_shm_t  *shm;

    if (rs->circuit_zone == NULL || rs->circuit_zone->shm.addr == NULL) {
        return;
    }

    name = &rs->conf->addrs[0].name;

    if (name->len == 0 || name->len > NGX_AAI_REDIS_CIRCUIT_NAME) {
        return;
    }

    shpool = (ngx_slab_pool_t *) rs->circuit_zone->shm.addr;
    shm = shpool->data;

    if (shm == NULL || shm->magic != NGX_AAI_REDIS_CIRCUIT_MAGIC) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < shm->nslots; i++) {
        c = &shm->slots[i];

        if (c->len == name->len
            && ngx_memcmp(c->name, name->data, name->len) == 0)
        {
            rs->circuit = c;
            break;
        }
    }

    if (rs->circuit == NULL && shm->nslots < NGX_AAI_REDIS_CIRCUIT_SLOTS) {
        c = &shm->slots[shm->nslots];

        ngx_memcpy(c->name, name->data, name->len);
        c->len = (uint32_t) name->len;
        c->until = 0;

        ngx_memory_barrier();

        shm->nslots++;
        rs->circuit = c;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Commands to the endpoint timed out: the others fail at once until this
 * connection has reconnected (its backoff, then its connect and
 * handshake), or someone's handshake is answered.
 */

static void
ngx_aai_redis_circuit_open(ngx_aai_redis_conn_t *conn)
{
    ngx_msec_t                until;
    ngx_aai_redis_t          *rs;
    ngx_aai_redis_circuit_t  *c;

    rs = conn->rs;
    c = rs->circuit;

    if (c == NULL || conn->sub) {
        return;
    }

    until = ngx_current_msec + conn->backoff + rs->conf->connect_timeout;

    if (until == 0) {
        until = 1;
    }

    c->pid = (ngx_atomic_uint_t) ngx_pid;
    c->owner = (ngx_atomic_uint_t) (uintptr_t) rs;

    ngx_memory_barrier();

    c->until = (ngx_atomic_uint_t) until;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: shared circuit open for %M ms",
                   &rs->conf->url, until - ngx_current_msec);
}


/* the endpoint answered a handshake */

static void
ngx_aai_redis_circuit_close(ngx_aai_redis_t *rs)
{
    if (rs->circuit && rs->circuit->until) {
        rs->circuit->until = 0;
    }
}


/* 1 while another client saw the endpoint time out */

static ngx_uint_t
ngx_aai_redis_circuit_blocked(ngx_aai_redis_t *rs)
{
    ngx_msec_t                until;
    ngx_aai_redis_circuit_t  *c;

    c = rs->circuit;

    if (c == NULL) {
        return 0;
    }

    until = (ngx_msec_t) c->until;

    if (until == 0 || (ngx_msec_int_t) (until - ngx_current_msec) <= 0) {
        return 0;
    }

    ngx_memory_barrier();

    /* its own timeouts a client handles with its own connections */

    return !(c->pid == (ngx_atomic_uint_t) ngx_pid
             && c->owner == (ngx_atomic_uint_t) (uintptr_t) rs);
}


/* worker life */


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


static void
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


/* connections */


static ngx_int_t
ngx_aai_redis_connect(ngx_aai_redis_conn_t *conn)
{
    ngx_int_t              rc;
    ngx_err_t              err;
    ngx_uint_t             step;
    ngx_addr_t            *addr;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_cmd_t   *cmd;
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

    } else {
        addr = &rcf->addrs[conn->addr % rcf->naddrs];
    }

    conn->name = &addr->name;
    conn->state = NGX_AAI_REDIS_CONNECTING;

    conn->reader = redisReaderCreate();
    if (conn->reader == NULL) {
        ngx_aai_redis_fail(conn, 0, "no memory", "redisReaderCreate() failed");
        return NGX_ERROR;
    }

    /* hiredis's functions, but arrays bounded */

    if (ngx_aai_redis_array_fn == NULL) {
        ngx_aai_redis_reply_fn = *conn->reader->fn;
        ngx_aai_redis_array_fn = ngx_aai_redis_reply_fn.createArray;
        ngx_aai_redis_reply_fn.createArray = ngx_aai_redis_create_array;
    }

    conn->reader->fn = &ngx_aai_redis_reply_fn;

    /* the handshake replies come first: queue their commands first */

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

        ngx_queue_insert_tail(&conn->queue, &cmd->queue);
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


static ngx_int_t
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

#if (NGX_SSL)
    if (conn->rs->ssl) {
        return ngx_aai_redis_tls_start(conn);
    }
#endif

    conn->state = NGX_AAI_REDIS_HANDSHAKE;

    return NGX_OK;
}


#if (NGX_SSL)

/*
 * TCP is connected: the TLS handshake, with nginx's own non-blocking
 * OpenSSL layer.  Its events belong to ngx_ssl_handshake() until it calls
 * ngx_aai_redis_tls_handshake_handler(); the handshake commands' deadline
 * (connect_timeout + timeout) guards it.
 */

static ngx_int_t
ngx_aai_redis_tls_start(ngx_aai_redis_conn_t *conn)
{
    ngx_int_t              rc;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rs = conn->rs;
    rcf = rs->conf;
    c = conn->pc.connection;

    conn->state = NGX_AAI_REDIS_TLS;

    /* a peer connection has no pool: ngx_ssl_create_connection() needs one */

    c->pool = ngx_create_pool(512, c->log);
    if (c->pool == NULL) {
        ngx_aai_redis_fail(conn, 0, "no memory", "no memory");
        return NGX_ERROR;
    }

    if (ngx_ssl_create_connection(rs->ssl, c, NGX_SSL_CLIENT) != NGX_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: cannot create a connection");
        return NGX_ERROR;
    }

    /* SNI: a host name, not an address */

    if (rcf->tls_name.len
        && !ngx_aai_redis_is_ip(&rcf->tls_name)
        && SSL_set_tlsext_host_name(c->ssl->connection,
                                    (char *) rcf->tls_name.data) != 1)
    {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: SSL_set_tlsext_host_name(\"%V\") failed",
                           &rcf->tls_name);
        return NGX_ERROR;
    }

    if (conn->ssl_session
        && ngx_ssl_set_session(c, conn->ssl_session) != NGX_OK)
    {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: cannot set the session");
        return NGX_ERROR;
    }

    c->ssl->save_session = ngx_aai_redis_tls_save_session;

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_aai_redis_tls_handshake_handler;
        return NGX_OK;
    }

    ngx_aai_redis_tls_handshake_handler(c);

    return (conn->pc.connection == c
            && conn->state == NGX_AAI_REDIS_HANDSHAKE) ? NGX_OK : NGX_ERROR;
}


static void
ngx_aai_redis_tls_handshake_handler(ngx_connection_t *c)
{
    ngx_aai_redis_conn_t  *conn;

    conn = c->data;

    if (!c->ssl->handshaked) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS handshake failed");
        return;
    }

    if (ngx_aai_redis_tls_verify(conn) != NGX_OK) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: TLS handshake done, session reused: %d",
                   conn->name, SSL_session_reused(c->ssl->connection));

    /* c->recv and c->send are ngx_ssl_recv() and ngx_ssl_write() now */

    c->read->handler = ngx_aai_redis_read_handler;
    c->write->handler = ngx_aai_redis_write_handler;

    conn->state = NGX_AAI_REDIS_HANDSHAKE;

    ngx_post_event(c->write, &ngx_posted_events);
    ngx_post_event(c->read, &ngx_posted_events);
}


/* the certificate and the name, logged with the reason they are refused */

static ngx_int_t
ngx_aai_redis_tls_verify(ngx_aai_redis_conn_t *conn)
{
    long                   rc;
    X509                  *cert;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rcf = conn->rs->conf;
    c = conn->pc.connection;

    if (!rcf->tls_verify) {
        return NGX_OK;
    }

    rc = SSL_get_verify_result(c->ssl->connection);

    if (rc != X509_V_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate verify failed: "
                           "(%l: %s)", rc, X509_verify_cert_error_string(rc));
        return NGX_ERROR;
    }

    cert = SSL_get_peer_certificate(c->ssl->connection);

    if (cert == NULL) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: the server sent no certificate");
        return NGX_ERROR;
    }

    /* an address (the default name of "127.0.0.1:6380") is an IP SAN */

    if (ngx_aai_redis_is_ip(&rcf->tls_name)) {
        rc = X509_check_ip_asc(cert, (char *) rcf->tls_name.data, 0);
        X509_free(cert);

        if (rc == 1) {
            return NGX_OK;
        }

        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate does not match "
                           "tls_name \"%V\"", &rcf->tls_name);
        return NGX_ERROR;
    }

    X509_free(cert);

    if (ngx_ssl_check_host(c, &rcf->tls_name) != NGX_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate does not match "
                           "tls_name \"%V\"", &rcf->tls_name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_aai_redis_is_ip(ngx_str_t *name)
{
    return ngx_inet_addr(name->data, name->len) != INADDR_NONE
           || ngx_strlchr(name->data, name->data + name->len, ':') != NULL;
}


/*
 * conn->log's writer: keeps the text of core's last message (after the
 * "time [level] pid#tid: " prefix, before the ", aai redis: " context).
 */

static void
ngx_aai_redis_tls_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    u_char                *p, *last, *ctx;
    size_t                 n;
    ngx_aai_redis_conn_t  *conn;

    conn = log->wdata;
    last = buf + len;

    p = ngx_strlchr(buf, last, ']');
    if (p == NULL) {
        return;
    }

    while (p < last - 1 && !(p[0] == ':' && p[1] == ' ')) {
        p++;
    }

    p += 2;

    if (p >= last) {
        return;
    }

    ctx = ngx_strlcasestrn(p, last, (u_char *) ", aai redis:",
                           sizeof(", aai redis:") - 2);
    if (ctx) {
        last = ctx;
    }

    n = ngx_min((size_t) (last - p), sizeof(conn->tls_error));

    ngx_memcpy(conn->tls_error, p, n);
    conn->tls_error_len = n;
}


/* a new session (TLS 1.3: a ticket after the handshake) for reconnects */

static void
ngx_aai_redis_tls_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t     *session;
    ngx_aai_redis_conn_t  *conn;

    conn = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    if (conn->ssl_session) {
        ngx_ssl_free_session(conn->ssl_session);
    }

    conn->ssl_session = session;
}

#endif


static void
ngx_aai_redis_ready(ngx_aai_redis_conn_t *conn)
{
    ngx_uint_t        level;
    ngx_aai_redis_t  *rs;

    rs = conn->rs;

    conn->state = NGX_AAI_REDIS_READY;
    conn->backoff = 0;

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


static void
ngx_aai_redis_close(ngx_aai_redis_conn_t *conn)
{
#if (NGX_SSL)
    ngx_pool_t        *pool;
    ngx_connection_t  *c;

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

static void
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


/* request time */


ngx_aai_redis_cmd_t *
ngx_aai_redis_send(ngx_aai_redis_t *rs, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data)
{
    return ngx_aai_redis_send_cmd(rs, log, argc, argv, handler, data, 0);
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


/* event handlers */


static void
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


#if (NGX_SSL)

/*
 * One write through c->send (ngx_ssl_write): NGX_OK when bytes were
 * taken (the caller loops), NGX_AGAIN when the write waits for an event
 * (ngx_ssl_write() armed it, for a read or a write), NGX_ERROR when the
 * connection failed.
 */

static ngx_int_t
ngx_aai_redis_tls_send(ngx_aai_redis_conn_t *conn, u_char *p, size_t size)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = conn->pc.connection;

    n = c->send(c, p, size);

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: TLS send: %z of %uz", conn->name, n, size);

    if (n > 0) {
        if (conn->state == NGX_AAI_REDIS_HANDSHAKE) {
            conn->hs_sent += n;

        } else {
            conn->out_pos += n;
        }

        return NGX_OK;
    }

    if (n == NGX_AGAIN) {
        if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
            ngx_aai_redis_fail(conn, 0, "connection lost",
                               "cannot arm the write event");
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    ngx_aai_redis_fail(conn, 0, "connection lost", "TLS write failed");

    return NGX_ERROR;
}

#endif


static void
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


static ngx_int_t
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

    if (step == NGX_AAI_REDIS_CMD_PING) {
        ngx_aai_redis_ready(conn);

        if (conn->state != NGX_AAI_REDIS_READY) {
            return NGX_ERROR;
        }
    }

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

        ngx_add_timer(&conn->timer, deadline - ngx_current_msec);
        return;
    }

    ngx_aai_redis_fail(conn, 0, ngx_aai_redis_timeout, "%s timed out",
                       conn->state == NGX_AAI_REDIS_READY
                       ? "command"
                       : conn->state == NGX_AAI_REDIS_TLS
                         ? "TLS handshake" : "handshake");
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


static void
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


static void
ngx_aai_redis_post_write(ngx_aai_redis_conn_t *conn)
{
    ngx_connection_t  *c;

    c = conn->pc.connection;

    if (c != NULL && !c->write->posted) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


/* Sentinel */


static ngx_int_t
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


static void
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
    ngx_int_t              rc;
    ngx_addr_t            *addr;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rs = st->rs;
    rcf = rs->conf;

    addr = &rcf->sentinels[st->next % rcf->nsentinels];

    st->reader = redisReaderCreate();
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

static void
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


/* output */


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


static ngx_int_t
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


static size_t
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


static u_char *
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

static void
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


/* for ngx_aai_redis_cluster.c */



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


/* commands */


static ngx_aai_redis_cmd_t *
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


static void
ngx_aai_redis_cmd_free(ngx_aai_redis_t *rs, ngx_aai_redis_cmd_t *cmd)
{
    if (rs->nfree >= NGX_AAI_REDIS_MAX_FREE) {
        ngx_free(cmd);
        return;
    }

    ngx_queue_insert_head(&rs->free, &cmd->queue);
    rs->nfree++;
}


static void
ngx_aai_redis_result(ngx_aai_redis_cmd_t *cmd, ngx_aai_redis_result_t *res)
{
    uint64_t  now;

    now = ngx_aai_redis_now_us();

    res->latency_us = (ngx_uint_t) (now - cmd->start_us);
    res->latency = (ngx_msec_t) (res->latency_us / 1000);
}


static uint64_t
ngx_aai_redis_now_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
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

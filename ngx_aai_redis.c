
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
    NGX_AAI_REDIS_BACKOFF
} ngx_aai_redis_state_e;


typedef enum {
    NGX_AAI_REDIS_CMD_USER = 0,
    NGX_AAI_REDIS_CMD_AUTH,
    NGX_AAI_REDIS_CMD_SELECT,
    NGX_AAI_REDIS_CMD_PING
} ngx_aai_redis_step_e;


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

    ngx_memzero(&u, sizeof(ngx_url_t));

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
    rcf->url = value[1];

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_aai_redis_conf_param(cf, rcf, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (rcf->user.len && rcf->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"user\" needs \"password\" in \"%V\"",
                           &rcf->directive);
        return NGX_CONF_ERROR;
    }

    ngx_aai_redis_conf_init(rcf);

    return NGX_CONF_OK;
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

    if (name.len == 8 && ngx_strncmp(name.data, "password", 8) == 0) {

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

        rcf->password = v;
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

    if (ngx_aai_redis_circuit_add(cf, rs) != NGX_OK) {
        return NULL;
    }

    return rs;
}


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
    ngx_str_t              auth[3], select[2], ping;
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

    addr = &rcf->addrs[conn->addr % rcf->naddrs];
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
            || (step == NGX_AAI_REDIS_CMD_SELECT && rcf->db < 0))
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

    if (rc == NGX_AGAIN) {
        ngx_add_timer(c->write, rcf->connect_timeout);

    } else {
        conn->state = NGX_AAI_REDIS_HANDSHAKE;
        ngx_post_event(c->write, &ngx_posted_events);
    }

    ngx_aai_redis_arm_timer(conn);

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
    if (conn->pc.connection) {
        ngx_close_connection(conn->pc.connection);
        conn->pc.connection = NULL;
    }

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
    ngx_aai_redis_cmd_t   *cmd;
    ngx_aai_redis_conn_t  *conn;

    if (!rs->initialized || argc == 0) {
        return NULL;
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
    cmd->cancelled = 1;
    cmd->handler = NULL;
    cmd->data = NULL;
}


ngx_uint_t
ngx_aai_redis_available(ngx_aai_redis_t *rs)
{
    ngx_uint_t  i;

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

    static const char  *names[] = { "", "AUTH", "SELECT", "PING" };

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
                       ? "command" : "handshake");
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

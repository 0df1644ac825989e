
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_cluster: see ngx_aai_redis_cluster.h.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_aai_redis_cluster.h"
#include "ngx_aai_metrics.h"


#define NGX_AAI_REDIS_CLUSTER_REDIRECTS   5
#define NGX_AAI_REDIS_CLUSTER_RANGES      4096
#define NGX_AAI_REDIS_CLUSTER_REFRESH     100     /* ms between asks */
#define NGX_AAI_REDIS_CLUSTER_MAX_MGET    64
#define NGX_AAI_REDIS_CLUSTER_WATCH       200     /* ms */

/* errors per node, by reason (metrics) */
#define NGX_AAI_REDIS_CLUSTER_E_MOVED     0
#define NGX_AAI_REDIS_CLUSTER_E_ASK       1
#define NGX_AAI_REDIS_CLUSTER_E_TIMEOUT   2
#define NGX_AAI_REDIS_CLUSTER_E_DOWN      3
#define NGX_AAI_REDIS_CLUSTER_E_NUMBER    4


typedef struct {
    ngx_aai_redis_t            *rs;
    u_char                      name[NGX_SOCKADDR_STRLEN];
    size_t                      len;
    ngx_uint_t                  nslots;     /* in the last map */
    ngx_int_t                   m_errors[NGX_AAI_REDIS_CLUSTER_E_NUMBER];
    unsigned                    assigned:1;
    unsigned                    started:1;
} ngx_aai_redis_cluster_node_t;


typedef struct ngx_aai_redis_ccmd_s  ngx_aai_redis_ccmd_t;

struct ngx_aai_redis_ccmd_s {
    ngx_aai_redis_cluster_t    *cl;
    ngx_aai_redis_cmd_t        *top;        /* what the caller holds */
    ngx_aai_redis_cmd_t        *inner;      /* on a node */
    ngx_aai_redis_cluster_node_t  *node;    /* that node */
    ngx_aai_redis_handler_pt    handler;
    void                       *data;
    ngx_log_t                  *log;
    ngx_uint_t                  slot;
    ngx_uint_t                  redirects;
    ngx_uint_t                  argc;
    ngx_str_t                  *argv;

    /* an MGET split by slot: its GETs, and where they put their replies */
    ngx_aai_redis_ccmd_t       *parent;
    ngx_aai_redis_ccmd_t      **parts;
    ngx_uint_t                  index;
    ngx_uint_t                  pending;
    redisReply                 *merged;
    const char                 *error;
};


struct ngx_aai_redis_cluster_s {
    ngx_aai_redis_t            *rs;
    ngx_aai_redis_conf_t       *conf;
    ngx_aai_redis_cluster_node_t  nodes[NGX_AAI_REDIS_CLUSTER_NODES];
    ngx_uint_t                  nnodes;
    ngx_aai_metrics_t          *metrics;    /* NULL: none */
    ngx_int_t                   m_refreshes;

    /* per worker */
    ngx_log_t                  *log;
    u_char                     *map;        /* per slot: node + 1, or 0 */
    ngx_connection_t            dummy;
    ngx_event_t                 refresh;
    ngx_event_t                 watch;      /* a node of the map down? */
    ngx_aai_redis_cmd_t        *asking;     /* CLUSTER SLOTS in flight */
    ngx_uint_t                  next;       /* the node to ask next */
    ngx_msec_t                  asked;
    ngx_uint_t                  refreshes;
    ngx_uint_t                  moved;
    ngx_uint_t                  ask;
    unsigned                    known:1;
    unsigned                    initialized:1;
};


static void ngx_aai_redis_cluster_refresh_handler(ngx_event_t *ev);
static void ngx_aai_redis_cluster_refresh_soon(ngx_aai_redis_cluster_t *cl);
static void ngx_aai_redis_cluster_watch_handler(ngx_event_t *ev);
static void ngx_aai_redis_cluster_slots_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_int_t ngx_aai_redis_cluster_apply(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_range_t *ranges, ngx_uint_t n, ngx_str_t *asked);
static ngx_aai_redis_cluster_node_t *ngx_aai_redis_cluster_node(
    ngx_aai_redis_cluster_t *cl, ngx_str_t *host, ngx_uint_t port,
    ngx_uint_t create);
static ngx_int_t ngx_aai_redis_cluster_start(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node);
static ngx_aai_redis_cluster_node_t *ngx_aai_redis_cluster_route(
    ngx_aai_redis_cluster_t *cl, ngx_uint_t slot);
static ngx_aai_redis_ccmd_t *ngx_aai_redis_cluster_ccmd(
    ngx_aai_redis_cluster_t *cl, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data);
static ngx_int_t ngx_aai_redis_cluster_dispatch(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t asking);
static void ngx_aai_redis_cluster_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_aai_redis_cluster_deliver(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_result_t *res);
static void ngx_aai_redis_cluster_part_done(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_result_t *res);
static ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_mget(
    ngx_aai_redis_cluster_t *cl, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data);
static ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_eval(
    ngx_aai_redis_cluster_t *cl, ngx_log_t *log, ngx_uint_t argc,
    ngx_str_t *argv, ngx_aai_redis_handler_pt handler, void *data);
static void ngx_aai_redis_cluster_free(ngx_aai_redis_ccmd_t *cc);
static void ngx_aai_redis_cluster_count(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t reason);


/* CRC16-CCITT (XMODEM), polynomial 0x1021, as Redis Cluster's keyHashSlot */

static uint16_t
ngx_aai_redis_cluster_crc16(u_char *p, size_t len)
{
    ngx_uint_t  i;
    uint16_t    crc;

    crc = 0;

    while (len--) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc;
}


ngx_uint_t
ngx_aai_redis_cluster_slot(u_char *key, size_t len)
{
    u_char  *open, *close, *last;

    last = key + len;

    open = ngx_strlchr(key, last, '{');

    if (open) {
        close = ngx_strlchr(open + 1, last, '}');

        /* "{}" or no "}": the whole key */

        if (close && close > open + 1) {
            key = open + 1;
            len = close - key;
        }
    }

    return ngx_aai_redis_cluster_crc16(key, len) & 16383;
}


ngx_int_t
ngx_aai_redis_cluster_cmd_slot(ngx_uint_t argc, ngx_str_t *argv)
{
    ngx_int_t   nkeys;
    ngx_uint_t  i, first, slot, s;
    ngx_str_t  *name;

    if (argc < 2) {
        return NGX_AAI_REDIS_CLUSTER_ANY;
    }

    name = &argv[0];
    first = 1;
    nkeys = 1;

    if ((name->len == 4 && ngx_strncasecmp(name->data, (u_char *) "EVAL", 4)
                           == 0)
        || (name->len == 7
            && ngx_strncasecmp(name->data, (u_char *) "EVALSHA", 7) == 0))
    {
        if (argc < 3) {
            return NGX_AAI_REDIS_CLUSTER_ANY;
        }

        nkeys = ngx_atoi(argv[2].data, argv[2].len);

        if (nkeys == NGX_ERROR || (ngx_uint_t) nkeys > argc - 3) {
            return NGX_AAI_REDIS_CLUSTER_ANY;   /* Redis will say why */
        }

        first = 3;

    } else if ((name->len == 4
                && ngx_strncasecmp(name->data, (u_char *) "MGET", 4) == 0)
               || (name->len == 3
                   && ngx_strncasecmp(name->data, (u_char *) "DEL", 3) == 0)
               || (name->len == 6
                   && ngx_strncasecmp(name->data, (u_char *) "UNLINK", 6)
                      == 0))
    {
        nkeys = argc - 1;

    } else if ((name->len == 7
                && ngx_strncasecmp(name->data, (u_char *) "PUBLISH", 7) == 0)
               || (name->len == 4
                   && ngx_strncasecmp(name->data, (u_char *) "PING", 4) == 0)
               || (name->len == 7
                   && ngx_strncasecmp(name->data, (u_char *) "CLUSTER", 7)
                      == 0)
               || (name->len == 6
                   && ngx_strncasecmp(name->data, (u_char *) "SCRIPT", 6)
                      == 0))
    {
        return NGX_AAI_REDIS_CLUSTER_ANY;
    }

    if (nkeys == 0) {
        return NGX_AAI_REDIS_CLUSTER_ANY;
    }

    slot = ngx_aai_redis_cluster_slot(argv[first].data, argv[first].len);

    for (i = first + 1; i < first + (ngx_uint_t) nkeys; i++) {
        s = ngx_aai_redis_cluster_slot(argv[i].data, argv[i].len);

        if (s != slot) {
            return NGX_ERROR;
        }
    }

    return slot;
}


/*
 * CLUSTER SLOTS: an array of ranges, each [start, end, [host, port, id,
 * ...], replicas...].  Only the primary of each range is taken.
 */

ngx_int_t
ngx_aai_redis_cluster_parse_slots(redisReply *r,
    ngx_aai_redis_cluster_range_t *ranges, ngx_uint_t nranges)
{
    ngx_uint_t   i, n;
    redisReply  *e, *m;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < r->elements; i++) {
        e = r->element[i];

        if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3
            || e->element[0] == NULL || e->element[1] == NULL
            || e->element[2] == NULL
            || e->element[0]->type != REDIS_REPLY_INTEGER
            || e->element[1]->type != REDIS_REPLY_INTEGER
            || e->element[2]->type != REDIS_REPLY_ARRAY
            || e->element[2]->elements < 2)
        {
            return NGX_ERROR;
        }

        m = e->element[2];

        if (m->element[0] == NULL || m->element[1] == NULL
            || m->element[0]->type != REDIS_REPLY_STRING
            || m->element[1]->type != REDIS_REPLY_INTEGER)
        {
            return NGX_ERROR;
        }

        if (e->element[0]->integer < 0
            || e->element[1]->integer < e->element[0]->integer
            || e->element[1]->integer >= NGX_AAI_REDIS_CLUSTER_SLOTS
            || m->element[1]->integer < 1 || m->element[1]->integer > 65535
            || m->element[0]->len >= NGX_SOCKADDR_STRLEN - 8)
        {
            return NGX_ERROR;
        }

        if (n == nranges) {
            return NGX_ERROR;
        }

        ranges[n].start = (ngx_uint_t) e->element[0]->integer;
        ranges[n].end = (ngx_uint_t) e->element[1]->integer;
        ranges[n].host.data = (u_char *) m->element[0]->str;
        ranges[n].host.len = m->element[0]->len;
        ranges[n].port = (ngx_uint_t) m->element[1]->integer;
        n++;
    }

    return n;
}


ngx_int_t
ngx_aai_redis_cluster_parse_redirect(u_char *p, size_t len, ngx_uint_t *slot,
    ngx_str_t *host, ngx_uint_t *port)
{
    u_char     *last, *sp, *colon;
    ngx_int_t   n;

    last = p + len;

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return NGX_ERROR;
    }

    p = sp + 1;
    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return NGX_ERROR;
    }

    n = ngx_atoi(p, sp - p);
    if (n == NGX_ERROR || n >= NGX_AAI_REDIS_CLUSTER_SLOTS) {
        return NGX_ERROR;
    }

    *slot = n;
    p = sp + 1;

    /* the last colon: an IPv6 address has others */

    for (colon = last; colon > p; colon--) {
        if (colon[-1] == ':') {
            break;
        }
    }

    if (colon == p || colon == last) {
        return NGX_ERROR;
    }

    n = ngx_atoi(colon, last - colon);
    if (n < 1 || n > 65535) {
        return NGX_ERROR;
    }

    *port = n;
    host->data = p;
    host->len = colon - 1 - p;

    if (host->len == 0 || host->len >= NGX_SOCKADDR_STRLEN - 8) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* configuration */


char *
ngx_aai_redis_cluster_conf(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *arg)
{
    u_char      *p, *last, *comma;
    ngx_url_t    u;
    ngx_uint_t   n;
    ngx_addr_t  *addrs;

    p = arg->data + sizeof("cluster=") - 1;
    last = arg->data + arg->len;

    n = 1;
    for (comma = p; comma < last; comma++) {
        n += (*comma == ',');
    }

    if (n > NGX_AAI_REDIS_CLUSTER_NODES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "more than %d cluster nodes in \"%V\"",
                           NGX_AAI_REDIS_CLUSTER_NODES, &rcf->directive);
        return NGX_CONF_ERROR;
    }

    addrs = ngx_pcalloc(cf->pool, n * sizeof(ngx_addr_t));
    if (addrs == NULL) {
        return NGX_CONF_ERROR;
    }

    rcf->addrs = addrs;
    rcf->naddrs = 0;

    while (p <= last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));
        u.url.data = p;
        u.url.len = comma - p;
        u.default_port = 6379;

        if (u.url.len == 0
            || ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0
            || u.family == AF_UNIX)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid cluster address \"%V\" in \"%V\"%s%s",
                               &u.url, &rcf->directive,
                               u.err ? ": " : "", u.err ? u.err : "");
            return NGX_CONF_ERROR;
        }

        addrs[rcf->naddrs++] = u.addrs[0];

        if (rcf->host.len == 0) {
            rcf->host = u.host;
        }

        p = comma + 1;
    }

    rcf->cluster = 1;

    return NGX_CONF_OK;
}


/*
 * The node clients: as many as a cluster may need, each with a copy of the
 * configuration whose one address is a seed (the first ones are asked for
 * the slot map); the others get their address from the map.
 */

ngx_aai_redis_cluster_t *
ngx_aai_redis_cluster_create(ngx_conf_t *cf, ngx_aai_redis_t *rs,
    ngx_aai_redis_conf_t *rcf)
{
    ngx_uint_t                 i;
    ngx_aai_redis_conf_t      *ncf;
    ngx_aai_redis_cluster_t   *cl;

    cl = ngx_pcalloc(cf->pool, sizeof(ngx_aai_redis_cluster_t));
    if (cl == NULL) {
        return NULL;
    }

    cl->rs = rs;
    cl->conf = rcf;
    cl->dummy.fd = (ngx_socket_t) -1;

    for (i = 0; i < NGX_AAI_REDIS_CLUSTER_NODES; i++) {
        ncf = ngx_palloc(cf->pool, sizeof(ngx_aai_redis_conf_t));
        if (ncf == NULL) {
            return NULL;
        }

        *ncf = *rcf;
        ncf->cluster = 0;
        ncf->cluster_node = 1;
        ncf->addrs = &rcf->addrs[i % rcf->naddrs];
        ncf->naddrs = 1;
        ncf->url = ncf->addrs->name;

        cl->nodes[i].rs = ngx_aai_redis_create(cf, ncf);
        if (cl->nodes[i].rs == NULL) {
            return NULL;
        }
    }

    cl->nnodes = NGX_AAI_REDIS_CLUSTER_NODES;

    return cl;
}


/* worker life */


ngx_int_t
ngx_aai_redis_cluster_init_worker(ngx_aai_redis_cluster_t *cl,
    ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_aai_redis_cluster_node_t  *node;

    if (cl->initialized) {
        return NGX_OK;
    }

    cl->log = cycle->log;

    cl->map = ngx_calloc(NGX_AAI_REDIS_CLUSTER_SLOTS, cl->log);
    if (cl->map == NULL) {
        return NGX_ERROR;
    }

    cl->refresh.handler = ngx_aai_redis_cluster_refresh_handler;
    cl->refresh.data = &cl->dummy;
    cl->refresh.log = cl->log;
    cl->refresh.cancelable = 1;

    cl->watch.handler = ngx_aai_redis_cluster_watch_handler;
    cl->watch.data = &cl->dummy;
    cl->watch.log = cl->log;
    cl->watch.cancelable = 1;

    cl->initialized = 1;

    /* the seeds first, as they are written */

    for (i = 0; i < cl->conf->naddrs; i++) {
        node = &cl->nodes[i];

        node->len = ngx_min(cl->conf->addrs[i].name.len,
                            NGX_SOCKADDR_STRLEN);
        ngx_memcpy(node->name, cl->conf->addrs[i].name.data, node->len);
        node->assigned = 1;

        if (ngx_aai_redis_cluster_start(cl, node) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ngx_add_timer(&cl->refresh, 1);
    ngx_add_timer(&cl->watch, NGX_AAI_REDIS_CLUSTER_WATCH);

    return NGX_OK;
}


void
ngx_aai_redis_cluster_exit_worker(ngx_aai_redis_cluster_t *cl)
{
    ngx_uint_t  i;

    if (!cl->initialized) {
        return;
    }

    if (cl->refresh.timer_set) {
        ngx_del_timer(&cl->refresh);
    }

    if (cl->watch.timer_set) {
        ngx_del_timer(&cl->watch);
    }

    if (cl->asking) {
        ngx_aai_redis_cancel(cl->asking);
        cl->asking = NULL;
    }

    for (i = 0; i < cl->nnodes; i++) {
        if (cl->nodes[i].started) {
            ngx_aai_redis_exit_worker(cl->nodes[i].rs);
            cl->nodes[i].started = 0;
        }

        cl->nodes[i].assigned = 0;
    }

    ngx_free(cl->map);
    cl->map = NULL;
    cl->initialized = 0;
}


static ngx_int_t
ngx_aai_redis_cluster_start(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node)
{
    if (node->started) {
        return NGX_OK;
    }

    if (ngx_aai_redis_init_worker(node->rs, (ngx_cycle_t *) ngx_cycle)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    node->started = 1;

    return NGX_OK;
}


/* the slot map */


static void
ngx_aai_redis_cluster_refresh_soon(ngx_aai_redis_cluster_t *cl)
{
    ngx_msec_t  delay;

    if (!cl->initialized || cl->asking || cl->refresh.timer_set) {
        return;
    }

    delay = NGX_AAI_REDIS_CLUSTER_REFRESH;

    if (ngx_current_msec - cl->asked >= NGX_AAI_REDIS_CLUSTER_REFRESH) {
        delay = 1;
    }

    ngx_add_timer(&cl->refresh, delay);
}


/*
 * A node that serves slots is down (its connections fail and back off):
 * the map is asked again until a replica has taken its place, whether
 * requests come or not.
 */

static void
ngx_aai_redis_cluster_watch_handler(ngx_event_t *ev)
{
    ngx_uint_t                     i;
    ngx_aai_redis_cluster_t       *cl;
    ngx_aai_redis_cluster_node_t  *node;

    cl = (ngx_aai_redis_cluster_t *) ((u_char *) ev
                                      - offsetof(ngx_aai_redis_cluster_t,
                                                 watch));

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[i];

        if (node->started && node->nslots
            && !ngx_aai_redis_available(node->rs))
        {
            ngx_aai_redis_cluster_refresh_soon(cl);
            break;
        }
    }

    ngx_add_timer(&cl->watch, NGX_AAI_REDIS_CLUSTER_WATCH);
}


static void
ngx_aai_redis_cluster_refresh_handler(ngx_event_t *ev)
{
    ngx_str_t                      argv[2];
    ngx_uint_t                     i, n;
    ngx_aai_redis_cluster_t       *cl;
    ngx_aai_redis_cluster_node_t  *node;

    cl = (ngx_aai_redis_cluster_t *) ((u_char *) ev
                                      - offsetof(ngx_aai_redis_cluster_t,
                                                 refresh));

    if (cl->asking || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_str_set(&argv[0], "CLUSTER");
    ngx_str_set(&argv[1], "SLOTS");

    /* the nodes in turn, from the one after the last asked */

    for (i = 0; i < cl->nnodes; i++) {
        n = (cl->next + i) % cl->nnodes;
        node = &cl->nodes[n];

        if (!node->started || !ngx_aai_redis_available(node->rs)) {
            continue;
        }

        cl->asking = ngx_aai_redis_send(node->rs, cl->log, 2, argv,
                                        ngx_aai_redis_cluster_slots_handler,
                                        cl);
        if (cl->asking) {
            cl->next = n;
            cl->asked = ngx_current_msec;
            return;
        }
    }

    /* no node can be asked now: once one's backoff is over */

    cl->next++;
    ngx_add_timer(&cl->refresh, NGX_AAI_REDIS_CLUSTER_REFRESH);
}


static void
ngx_aai_redis_cluster_slots_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_aai_redis_cluster_t  *cl = data;

    ngx_int_t                       n;
    ngx_str_t                       asked;
    ngx_aai_redis_cluster_node_t   *node;
    ngx_aai_redis_cluster_range_t  *ranges;

    node = &cl->nodes[cl->next % cl->nnodes];

    cl->asking = NULL;

    if (res->reply == NULL) {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "aai redis cluster %V: CLUSTER SLOTS on %*s: %s",
                      &cl->conf->url, node->len, node->name, res->error);
        goto again;
    }

    ranges = ngx_alloc(NGX_AAI_REDIS_CLUSTER_RANGES
                       * sizeof(ngx_aai_redis_cluster_range_t), cl->log);
    if (ranges == NULL) {
        goto again;
    }

    n = ngx_aai_redis_cluster_parse_slots(res->reply, ranges,
                                          NGX_AAI_REDIS_CLUSTER_RANGES);

    if (n == NGX_ERROR || n == 0) {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "aai redis cluster %V: %*s: unexpected reply to "
                      "CLUSTER SLOTS%s%s",
                      &cl->conf->url, node->len, node->name,
                      res->reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      res->reply->type == REDIS_REPLY_ERROR
                      ? res->reply->str : "");
        ngx_free(ranges);
        goto again;
    }

    asked.data = node->name;
    asked.len = node->len;

    if (ngx_aai_redis_cluster_apply(cl, ranges, n, &asked) != NGX_OK) {
        ngx_free(ranges);
        goto again;
    }

    ngx_free(ranges);

    cl->refreshes++;
    cl->known = 1;

    if (cl->metrics) {
        ngx_aai_metrics_inc(cl->metrics, cl->m_refreshes, 1);
    }

    return;

again:

    cl->next++;

    if (!cl->refresh.timer_set) {
        ngx_add_timer(&cl->refresh, NGX_AAI_REDIS_CLUSTER_REFRESH);
    }
}


static ngx_int_t
ngx_aai_redis_cluster_apply(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_range_t *ranges, ngx_uint_t n, ngx_str_t *asked)
{
    u_char                        *colon;
    ngx_str_t                      host;
    ngx_uint_t                     i, s, covered;
    ngx_aai_redis_cluster_node_t  *node;

    for (i = 0; i < cl->nnodes; i++) {
        cl->nodes[i].nslots = 0;
    }

    /*
     * The nodes the map keeps first, so that a node client given a new
     * address is never one the map still names.
     */

    for (i = 0; i < n; i++) {
        node = ngx_aai_redis_cluster_node(cl, &ranges[i].host, ranges[i].port,
                                          0);
        if (node) {
            node->nslots += ranges[i].end - ranges[i].start + 1;
        }
    }

    covered = 0;

    for (i = 0; i < n; i++) {
        host = ranges[i].host;

        /* a node that does not know its own address: the one asked */

        if (host.len == 0 || (host.len == 1 && host.data[0] == '?')) {
            colon = ngx_strlchr(asked->data, asked->data + asked->len, ':');
            host.data = asked->data;
            host.len = colon ? (size_t) (colon - asked->data) : asked->len;
        }

        node = ngx_aai_redis_cluster_node(cl, &host, ranges[i].port, 1);

        if (node == NULL) {
            continue;
        }

        for (s = ranges[i].start; s <= ranges[i].end; s++) {
            cl->map[s] = (u_char) (node - cl->nodes + 1);
        }

        if (node->nslots == 0) {
            node->nslots = ranges[i].end - ranges[i].start + 1;
        }

        covered += ranges[i].end - ranges[i].start + 1;
    }

    ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                  "aai redis cluster %V: slot map from %V: %ui ranges, "
                  "%ui slots", &cl->conf->url, asked, n, covered);

    return NGX_OK;
}


/*
 * The node client of host:port; with create, one is given that address:
 * a free one, else one that serves no slot in the map (never the first:
 * it holds the subscriptions).
 */

static ngx_aai_redis_cluster_node_t *
ngx_aai_redis_cluster_node(ngx_aai_redis_cluster_t *cl, ngx_str_t *host,
    ngx_uint_t port, ngx_uint_t create)
{
    u_char                        *p;
    size_t                         len;
    ngx_uint_t                     i;
    ngx_aai_redis_cluster_node_t  *node, *spare;
    u_char                         name[NGX_SOCKADDR_STRLEN];

    if (host->len >= NGX_SOCKADDR_STRLEN - 8) {
        return NULL;
    }

    p = ngx_snprintf(name, NGX_SOCKADDR_STRLEN, "%V:%ui", host, port);
    len = p - name;

    spare = NULL;

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[i];

        if (node->assigned && node->len == len
            && ngx_memcmp(node->name, name, len) == 0)
        {
            return node;
        }

        if (spare == NULL && !node->assigned) {
            spare = node;
        }
    }

    if (!create) {
        return NULL;
    }

    if (spare == NULL) {
        for (i = 1; i < cl->nnodes; i++) {
            if (cl->nodes[i].nslots == 0) {
                spare = &cl->nodes[i];
                break;
            }
        }
    }

    if (spare == NULL) {
        ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                      "aai redis cluster %V: more than %d nodes, %*s "
                      "not used", &cl->conf->url,
                      NGX_AAI_REDIS_CLUSTER_NODES, len, name);
        return NULL;
    }

    if (ngx_aai_redis_set_node(spare->rs, host, port) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                      "aai redis cluster %V: invalid node address %*s",
                      &cl->conf->url, len, name);
        return NULL;
    }

    /* slots still pointing to the old address go there no more */

    for (i = 0; i < NGX_AAI_REDIS_CLUSTER_SLOTS; i++) {
        if (cl->map[i] == spare - cl->nodes + 1) {
            cl->map[i] = 0;
        }
    }

    ngx_memcpy(spare->name, name, len);
    spare->len = len;
    spare->assigned = 1;
    spare->nslots = 0;

    if (ngx_aai_redis_cluster_start(cl, spare) != NGX_OK) {
        return NULL;
    }

    return spare;
}


static ngx_aai_redis_cluster_node_t *
ngx_aai_redis_cluster_route(ngx_aai_redis_cluster_t *cl, ngx_uint_t slot)
{
    ngx_uint_t                     i, n;
    ngx_aai_redis_cluster_node_t  *node;

    if (slot < NGX_AAI_REDIS_CLUSTER_SLOTS && cl->map[slot]) {
        node = &cl->nodes[cl->map[slot] - 1];

        if (node->started) {
            return node;
        }
    }

    /* no key, or its slot not known yet: any node (a MOVED will say) */

    n = (slot < NGX_AAI_REDIS_CLUSTER_SLOTS) ? slot : (ngx_uint_t) ngx_random();

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[(n + i) % cl->nnodes];

        if (node->started && (node->nslots || !cl->known)
            && ngx_aai_redis_available(node->rs))
        {
            return node;
        }
    }

    return NULL;
}


/* commands */


ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_send(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    ngx_int_t              slot;
    ngx_aai_redis_ccmd_t  *cc;

    if (!cl->initialized) {
        return NULL;
    }

    slot = ngx_aai_redis_cluster_cmd_slot(argc, argv);

    if (slot == NGX_ERROR) {
        if (argv[0].len == 4
            && ngx_strncasecmp(argv[0].data, (u_char *) "MGET", 4) == 0)
        {
            return ngx_aai_redis_cluster_mget(cl, log, argc, argv, handler,
                                              data);
        }

        if (argv[0].len >= 4
            && ngx_strncasecmp(argv[0].data, (u_char *) "EVAL", 4) == 0)
        {
            return ngx_aai_redis_cluster_eval(cl, log, argc, argv, handler,
                                              data);
        }

        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "aai redis cluster %V: the keys of a %V are in "
                      "different slots", &cl->conf->url, &argv[0]);
        return NULL;
    }

    cc = ngx_aai_redis_cluster_ccmd(cl, log, argc, argv, handler, data);
    if (cc == NULL) {
        return NULL;
    }

    cc->slot = slot;

    cc->top = ngx_aai_redis_cmd_wrap(cl->rs, cc);
    if (cc->top == NULL) {
        ngx_aai_redis_cluster_free(cc);
        return NULL;
    }

    if (ngx_aai_redis_cluster_dispatch(cc, NULL, 0) != NGX_OK) {

        /* the slot's node is down: has a replica taken its place? */

        ngx_aai_redis_cluster_refresh_soon(cl);
        ngx_aai_redis_cluster_free(cc);
        return NULL;
    }

    return cc->top;
}


static ngx_aai_redis_ccmd_t *
ngx_aai_redis_cluster_ccmd(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    u_char                *p;
    size_t                 size;
    ngx_uint_t             i;
    ngx_aai_redis_ccmd_t  *cc;

    size = sizeof(ngx_aai_redis_ccmd_t) + argc * sizeof(ngx_str_t);

    for (i = 0; i < argc; i++) {
        size += argv[i].len;
    }

    cc = ngx_alloc(size, log);
    if (cc == NULL) {
        return NULL;
    }

    ngx_memzero(cc, sizeof(ngx_aai_redis_ccmd_t));

    cc->cl = cl;
    cc->handler = handler;
    cc->data = data;
    cc->log = cl->log;
    cc->argc = argc;
    cc->argv = (ngx_str_t *) (cc + 1);

    p = (u_char *) (cc->argv + argc);

    for (i = 0; i < argc; i++) {
        cc->argv[i].data = p;
        cc->argv[i].len = argv[i].len;

        if (argv[i].len) {                  /* an empty one may be NULL */
            p = ngx_cpymem(p, argv[i].data, argv[i].len);
        }
    }

    return cc;
}


static ngx_int_t
ngx_aai_redis_cluster_dispatch(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t asking)
{
    if (node == NULL) {
        node = ngx_aai_redis_cluster_route(cc->cl, cc->slot);
        if (node == NULL) {
            return NGX_ERROR;
        }
    }

    cc->node = node;

    if (asking) {
        cc->inner = ngx_aai_redis_send_asking(node->rs, cc->log, cc->argc,
                                              cc->argv,
                                              ngx_aai_redis_cluster_handler,
                                              cc);
    } else {
        cc->inner = ngx_aai_redis_send(node->rs, cc->log, cc->argc, cc->argv,
                                       ngx_aai_redis_cluster_handler, cc);
    }

    if (cc->inner == NULL) {
        ngx_aai_redis_cluster_count(cc->cl, node,
                                    NGX_AAI_REDIS_CLUSTER_E_DOWN);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_aai_redis_cluster_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_aai_redis_ccmd_t  *cc = data;

    ngx_str_t                      host;
    ngx_uint_t                     slot, port, ask;
    redisReply                    *r;
    ngx_aai_redis_cluster_t       *cl;
    ngx_aai_redis_result_t         err;
    ngx_aai_redis_cluster_node_t  *node;

    cl = cc->cl;
    cc->inner = NULL;
    r = res->reply;

    if (r == NULL) {

        /* the node timed out or is gone: its slots may have moved */

        ngx_aai_redis_cluster_count(cl, cc->node,
                                    (res->error
                                     && ngx_strncmp(res->error, "timeout", 7)
                                        == 0)
                                    ? NGX_AAI_REDIS_CLUSTER_E_TIMEOUT
                                    : NGX_AAI_REDIS_CLUSTER_E_DOWN);
        ngx_aai_redis_cluster_refresh_soon(cl);
        ngx_aai_redis_cluster_deliver(cc, res);
        return;
    }

    if (r->type != REDIS_REPLY_ERROR || r->len < 4) {
        ngx_aai_redis_cluster_deliver(cc, res);
        return;
    }

    if (ngx_strncmp(r->str, "MOVED ", 6) == 0) {
        ask = 0;

    } else if (ngx_strncmp(r->str, "ASK ", 4) == 0) {
        ask = 1;

    } else {
        if (ngx_strncmp(r->str, "CLUSTERDOWN", 11) == 0
            || ngx_strncmp(r->str, "TRYAGAIN", 8) == 0)
        {
            ngx_aai_redis_cluster_refresh_soon(cl);
        }

        ngx_aai_redis_cluster_deliver(cc, res);
        return;
    }

    if (ngx_aai_redis_cluster_parse_redirect((u_char *) r->str, r->len,
                                             &slot, &host, &port)
        != NGX_OK
        || cc->redirects >= NGX_AAI_REDIS_CLUSTER_REDIRECTS)
    {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "aai redis cluster %V: redirect not followed: %s",
                      &cl->conf->url, r->str);
        ngx_aai_redis_cluster_deliver(cc, res);
        return;
    }

    cc->redirects++;

    ngx_aai_redis_cluster_count(cl, cc->node,
                                ask ? NGX_AAI_REDIS_CLUSTER_E_ASK
                                    : NGX_AAI_REDIS_CLUSTER_E_MOVED);

    node = ngx_aai_redis_cluster_node(cl, &host, port, 1);

    if (ask) {
        cl->ask++;

    } else {
        cl->moved++;

        if (node) {
            cl->map[slot] = (u_char) (node - cl->nodes + 1);
        }

        ngx_aai_redis_cluster_refresh_soon(cl);
    }

    if (node && ngx_aai_redis_cluster_dispatch(cc, node, ask) == NGX_OK) {
        return;
    }

    ngx_memzero(&err, sizeof(ngx_aai_redis_result_t));
    err.error = "redirect failed";
    err.latency = res->latency;
    err.latency_us = res->latency_us;

    ngx_aai_redis_cluster_deliver(cc, &err);
}


static void
ngx_aai_redis_cluster_deliver(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_result_t *res)
{
    if (cc->parent) {
        ngx_aai_redis_cluster_part_done(cc, res);
        return;
    }

    cc->handler(res, cc->data);

    ngx_aai_redis_cluster_free(cc);
}


void
ngx_aai_redis_cluster_cancel(void *data)
{
    ngx_uint_t             i;
    ngx_aai_redis_ccmd_t  *cc = data;

    if (cc->parts) {
        for (i = 0; i < cc->index; i++) {
            if (cc->parts[i]) {
                if (cc->parts[i]->inner) {
                    ngx_aai_redis_cancel(cc->parts[i]->inner);
                }

                ngx_aai_redis_cluster_free(cc->parts[i]);
                cc->parts[i] = NULL;
            }
        }
    }

    if (cc->inner) {
        ngx_aai_redis_cancel(cc->inner);
        cc->inner = NULL;
    }

    ngx_aai_redis_cluster_free(cc);
}


static void
ngx_aai_redis_cluster_free(ngx_aai_redis_ccmd_t *cc)
{
    if (cc->top) {
        ngx_aai_redis_cmd_unwrap(cc->cl->rs, cc->top);
        cc->top = NULL;
    }

    if (cc->merged) {
        freeReplyObject(cc->merged);
        cc->merged = NULL;
    }

    if (cc->parts) {
        ngx_free(cc->parts);
        cc->parts = NULL;
    }

    ngx_free(cc);
}


/*
 * MGET of keys of several slots: one GET per key, each routed alone; the
 * reply is the array of theirs, or the first error.
 */

static ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_mget(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    ngx_str_t              get[2];
    ngx_uint_t             i, n;
    ngx_aai_redis_ccmd_t  *cc, *part;

    n = argc - 1;

    if (n > NGX_AAI_REDIS_CLUSTER_MAX_MGET) {
        return NULL;
    }

    cc = ngx_aai_redis_cluster_ccmd(cl, log, 0, NULL, handler, data);
    if (cc == NULL) {
        return NULL;
    }

    cc->parts = ngx_calloc(n * sizeof(ngx_aai_redis_ccmd_t *), log);
    cc->merged = calloc(1, sizeof(redisReply));

    if (cc->parts == NULL || cc->merged == NULL) {
        goto failed;
    }

    cc->merged->type = REDIS_REPLY_ARRAY;
    cc->merged->element = calloc(n, sizeof(redisReply *));

    if (cc->merged->element == NULL) {
        goto failed;
    }

    cc->merged->elements = n;

    cc->top = ngx_aai_redis_cmd_wrap(cl->rs, cc);
    if (cc->top == NULL) {
        goto failed;
    }

    ngx_str_set(&get[0], "GET");

    for (i = 0; i < n; i++) {
        get[1] = argv[i + 1];

        part = ngx_aai_redis_cluster_ccmd(cl, log, 2, get, NULL, NULL);
        if (part == NULL) {
            goto failed;
        }

        part->parent = cc;
        part->index = i;
        part->slot = ngx_aai_redis_cluster_slot(get[1].data, get[1].len);

        cc->parts[i] = part;
        cc->index = i + 1;

        if (ngx_aai_redis_cluster_dispatch(part, NULL, 0) != NGX_OK) {
            goto failed;
        }

        cc->pending++;
    }

    return cc->top;

failed:

    ngx_aai_redis_cluster_cancel(cc);

    return NULL;
}


/*
 * EVAL or EVALSHA whose keys are in several slots: once per slot, with that
 * slot's keys and every argument; the reply is the sum of theirs.  For the
 * scripts that treat each key alone and count what they did (the cache's
 * purge).
 */

static ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_eval(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    u_char                 num[NGX_INT_T_LEN];
    ngx_int_t              nkeys;
    ngx_str_t             *pargv;
    ngx_uint_t             i, j, k, n, slot, nparts;
    ngx_aai_redis_ccmd_t  *cc, *part;
    ngx_uint_t             slots[NGX_AAI_REDIS_CLUSTER_MAX_MGET];

    nkeys = ngx_atoi(argv[2].data, argv[2].len);

    if (nkeys < 2 || nkeys > NGX_AAI_REDIS_CLUSTER_MAX_MGET) {
        return NULL;
    }

    nparts = 0;

    for (i = 0; i < (ngx_uint_t) nkeys; i++) {
        slot = ngx_aai_redis_cluster_slot(argv[3 + i].data, argv[3 + i].len);

        for (j = 0; j < nparts; j++) {
            if (slots[j] == slot) {
                break;
            }
        }

        if (j == nparts) {
            slots[nparts++] = slot;
        }
    }

    pargv = ngx_alloc(argc * sizeof(ngx_str_t), log);
    if (pargv == NULL) {
        return NULL;
    }

    cc = ngx_aai_redis_cluster_ccmd(cl, log, 0, NULL, handler, data);
    if (cc == NULL) {
        ngx_free(pargv);
        return NULL;
    }

    cc->parts = ngx_calloc(nparts * sizeof(ngx_aai_redis_ccmd_t *), log);
    cc->merged = calloc(1, sizeof(redisReply));

    if (cc->parts == NULL || cc->merged == NULL) {
        goto failed;
    }

    cc->merged->type = REDIS_REPLY_INTEGER;

    cc->top = ngx_aai_redis_cmd_wrap(cl->rs, cc);
    if (cc->top == NULL) {
        goto failed;
    }

    for (j = 0; j < nparts; j++) {
        pargv[0] = argv[0];
        pargv[1] = argv[1];
        n = 0;

        for (i = 0; i < (ngx_uint_t) nkeys; i++) {
            if (ngx_aai_redis_cluster_slot(argv[3 + i].data, argv[3 + i].len)
                == slots[j])
            {
                pargv[3 + n++] = argv[3 + i];
            }
        }

        k = 3 + n;

        for (i = 3 + nkeys; i < argc; i++) {
            pargv[k++] = argv[i];
        }

        pargv[2].data = num;
        pargv[2].len = ngx_sprintf(num, "%ui", n) - num;

        part = ngx_aai_redis_cluster_ccmd(cl, log, k, pargv, NULL, NULL);
        if (part == NULL) {
            goto failed;
        }

        part->parent = cc;
        part->index = j;
        part->slot = slots[j];

        cc->parts[j] = part;
        cc->index = j + 1;

        if (ngx_aai_redis_cluster_dispatch(part, NULL, 0) != NGX_OK) {
            goto failed;
        }

        cc->pending++;
    }

    ngx_free(pargv);

    return cc->top;

failed:

    ngx_free(pargv);
    ngx_aai_redis_cluster_cancel(cc);

    return NULL;
}


static void
ngx_aai_redis_cluster_part_done(ngx_aai_redis_ccmd_t *part,
    ngx_aai_redis_result_t *res)
{
    redisReply              *r, *copy;
    ngx_aai_redis_ccmd_t    *cc;
    ngx_aai_redis_result_t   out;

    cc = part->parent;
    r = res->reply;

    cc->parts[part->index] = NULL;

    if (r == NULL) {
        if (cc->error == NULL) {
            cc->error = res->error;
        }

    } else if (cc->merged->type == REDIS_REPLY_INTEGER) {
        if (r->type == REDIS_REPLY_INTEGER) {
            cc->merged->integer += r->integer;

        } else if (cc->error == NULL) {
            cc->error = (r->type == REDIS_REPLY_ERROR) ? "error reply"
                                                       : "unexpected reply";
        }

    } else if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL) {
        copy = calloc(1, sizeof(redisReply));

        if (copy != NULL) {
            copy->type = r->type;

            if (r->type == REDIS_REPLY_STRING) {
                copy->str = malloc(r->len + 1);

                if (copy->str == NULL) {
                    free(copy);
                    copy = NULL;

                } else {
                    ngx_memcpy(copy->str, r->str, r->len);
                    copy->str[r->len] = '\0';
                    copy->len = r->len;
                }
            }
        }

        if (copy == NULL) {
            if (cc->error == NULL) {
                cc->error = "no memory";
            }

        } else {
            cc->merged->element[part->index] = copy;
        }

    } else if (cc->error == NULL) {
        cc->error = "unexpected reply";
    }

    ngx_aai_redis_cluster_free(part);

    if (--cc->pending) {
        return;
    }

    ngx_memzero(&out, sizeof(ngx_aai_redis_result_t));
    out.latency = res->latency;
    out.latency_us = res->latency_us;

    if (cc->error) {
        out.error = cc->error;

    } else {
        out.reply = cc->merged;
    }

    cc->handler(&out, cc->data);

    ngx_aai_redis_cluster_free(cc);
}


ngx_uint_t
ngx_aai_redis_cluster_available(ngx_aai_redis_cluster_t *cl)
{
    ngx_uint_t  i;

    if (!cl->initialized) {
        return 0;
    }

    for (i = 0; i < cl->nnodes; i++) {
        if (cl->nodes[i].started
            && ngx_aai_redis_available(cl->nodes[i].rs))
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Pub/Sub on a cluster reaches every node's subscribers: the first seed's
 * node client keeps the subscriptions.
 */

ngx_int_t
ngx_aai_redis_cluster_subscribe(ngx_aai_redis_cluster_t *cl,
    ngx_str_t *channel, ngx_uint_t pattern, ngx_aai_redis_message_pt handler,
    void *data)
{
    return ngx_aai_redis_subscribe(cl->nodes[0].rs, channel, pattern,
                                   handler, data);
}


/*
 * Metrics, in the owning module's registry (configuration time): the slot
 * map refreshes of the client, and per node client (node="0" to "15", in
 * the order the seeds and then the map gave them addresses; the error log
 * names each node's address when it is given one) the errors by reason:
 * MOVED and ASK replies, commands timed out, and commands the node could
 * not take (connection refused or lost, backing off).
 */

ngx_int_t
ngx_aai_redis_cluster_metrics(ngx_aai_redis_cluster_t *cl,
    ngx_aai_metrics_t *m, const char *client)
{
    u_char      *p;
    ngx_str_t    label;
    ngx_uint_t   i, k;

    static const char  *reasons[] = { "moved", "ask", "timeout", "down" };

    p = ngx_pnalloc(ngx_cycle->pool, 256);
    if (p == NULL) {
        return NGX_ERROR;
    }

    label.data = p;
    label.len = ngx_snprintf(p, 256, "client=\"%s\"", client) - p;

    cl->m_refreshes = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                            "aai_redis_cluster_slot_map_refreshes_total",
                            "Slot maps a Redis Cluster client learnt.",
                            &label);
    if (cl->m_refreshes == NGX_ERROR) {
        return NGX_ERROR;
    }

    for (i = 0; i < cl->nnodes; i++) {
        for (k = 0; k < NGX_AAI_REDIS_CLUSTER_E_NUMBER; k++) {
            p = ngx_pnalloc(ngx_cycle->pool, 256);
            if (p == NULL) {
                return NGX_ERROR;
            }

            label.data = p;
            label.len = ngx_snprintf(p, 256,
                                     "client=\"%s\",node=\"%ui\","
                                     "reason=\"%s\"",
                                     client, i, reasons[k]) - p;

            cl->nodes[i].m_errors[k] = ngx_aai_metrics_add(m,
                                    NGX_AAI_METRIC_COUNTER,
                                    "aai_redis_cluster_errors_total",
                                    "Redis Cluster node errors, by reason.",
                                    &label);
            if (cl->nodes[i].m_errors[k] == NGX_ERROR) {
                return NGX_ERROR;
            }
        }
    }

    cl->metrics = m;

    return NGX_OK;
}


static void
ngx_aai_redis_cluster_count(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t reason)
{
    if (cl->metrics && node) {
        ngx_aai_metrics_inc(cl->metrics, node->m_errors[reason], 1);
    }
}

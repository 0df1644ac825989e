
/*
 * Copyright (C) aai-nginx authors
 *
 * The slot map of a Redis Cluster client: the hash slot of a key and
 * of a command's keys; CLUSTER SLOTS asked of a node (at start, soon
 * after a MOVED or a lost node, while a node of the map is down), its
 * reply parsed and applied to the map and the node clients.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_aai_redis_cluster_int.h"


static void ngx_aai_redis_cluster_slots_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_int_t ngx_aai_redis_cluster_apply(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_range_t *ranges, ngx_uint_t n, ngx_str_t *asked);


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
            && ngx_strncasecmp(name->data, (u_char *) "EVALSHA", 7) == 0)
        || (name->len == 5
            && ngx_strncasecmp(name->data, (u_char *) "FCALL", 5) == 0))
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


void
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


/* the node of a slot in the map, for a caller that groups by node */

ngx_int_t
ngx_aai_redis_cluster_slot_node(ngx_aai_redis_cluster_t *cl, ngx_uint_t slot)
{
    ngx_aai_redis_cluster_node_t  *node;

    if (!cl->initialized || cl->map == NULL
        || slot >= NGX_AAI_REDIS_CLUSTER_SLOTS || cl->map[slot] == 0)
    {
        return NGX_DECLINED;
    }

    node = &cl->nodes[cl->map[slot] - 1];

    if (!node->started) {
        return NGX_DECLINED;
    }

    return cl->map[slot] - 1;
}


void
ngx_aai_redis_cluster_refresh(ngx_aai_redis_cluster_t *cl)
{
    ngx_aai_redis_cluster_refresh_soon(cl);
}

/*
 * A node that serves slots is down (its connections fail and back off):
 * the map is asked again until a replica has taken its place, whether
 * requests come or not.
 */

void
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

    ngx_aai_redis_cluster_sub_watch(cl);

    ngx_add_timer(&cl->watch, NGX_AAI_REDIS_CLUSTER_WATCH);
}


void
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

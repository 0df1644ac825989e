
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_cluster: see ngx_aai_redis_cluster.h.  The cluster
 * client and its node clients: the cluster= parameter, the node
 * clients made at configuration time, worker init and exit, a node
 * client given an address and started, available, subscribe, the
 * metrics.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_aai_redis_cluster_int.h"


static ngx_int_t ngx_aai_redis_cluster_start(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node);


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

        if (ngx_aai_redis_conf_is_name(&u.host)) {

            /* looked up again at run time if there is a resolver */

            if (rcf->seed_names == NULL) {
                rcf->seed_names = ngx_pcalloc(cf->pool,
                                              n * sizeof(ngx_str_t));
                if (rcf->seed_names == NULL) {
                    return NGX_CONF_ERROR;
                }
            }

            rcf->seed_names[rcf->naddrs] = u.host;
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

        /* a seed given by name: looked up again while it is the address */

        if (rcf->seed_names && rcf->seed_names[i % rcf->naddrs].len) {
            ncf->hostname = 1;
            ncf->host = rcf->seed_names[i % rcf->naddrs];
            ncf->port = ngx_inet_get_port(ncf->addrs->sockaddr);
        }

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

    for (i = 0; i < cl->nsubs; i++) {
        ngx_free(cl->subs[i].channel.data);
    }

    if (cl->subs) {
        ngx_free(cl->subs);
        cl->subs = NULL;
    }

    cl->nsubs = 0;
    cl->subnode = 0;

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


/*
 * The node client of host:port; with create, one is given that address:
 * a free one, else one that serves no slot in the map (never the one that
 * holds the subscriptions).
 */

ngx_aai_redis_cluster_node_t *
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
        for (i = 0; i < cl->nnodes; i++) {
            if (cl->nodes[i].nslots == 0 && i != cl->subnode) {
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
 * Pub/Sub on a cluster reaches every node's subscribers: one node client
 * keeps the subscriptions, the first seed's at first.  The cluster keeps
 * them too, to make them again on another node when that one is down.
 */

ngx_int_t
ngx_aai_redis_cluster_subscribe(ngx_aai_redis_cluster_t *cl,
    ngx_str_t *channel, ngx_uint_t pattern, ngx_aai_redis_message_pt handler,
    void *data)
{
    ngx_uint_t                    n;
    ngx_aai_redis_cluster_sub_t  *subs, *sub;

    n = cl->nsubs + 1;

    subs = ngx_alloc(n * sizeof(ngx_aai_redis_cluster_sub_t),
                     ngx_cycle->log);
    if (subs == NULL) {
        return NGX_ERROR;
    }

    if (cl->subs) {
        ngx_memcpy(subs, cl->subs,
                   cl->nsubs * sizeof(ngx_aai_redis_cluster_sub_t));
        ngx_free(cl->subs);
    }

    cl->subs = subs;
    sub = &subs[cl->nsubs];

    sub->channel.data = ngx_alloc(channel->len + 1, ngx_cycle->log);
    if (sub->channel.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(sub->channel.data, channel->data, channel->len);
    sub->channel.len = channel->len;
    sub->pattern = pattern;
    sub->handler = handler;
    sub->data = data;

    cl->nsubs++;

    return ngx_aai_redis_subscribe(cl->nodes[cl->subnode].rs, channel,
                                   pattern, handler, data);
}


/*
 * Every watch (200 ms): if the pub/sub connection failed and is not back,
 * the subscriptions move to another node that can take commands.  The
 * messages published meanwhile are lost (a waiter then wakes by its poll
 * or its timeout).
 */

void
ngx_aai_redis_cluster_sub_watch(ngx_aai_redis_cluster_t *cl)
{
    ngx_uint_t                     i, k;
    ngx_aai_redis_cluster_sub_t   *sub;
    ngx_aai_redis_cluster_node_t  *from, *to;

    if (cl->nsubs == 0) {
        return;
    }

    from = &cl->nodes[cl->subnode];

    if (from->started && !ngx_aai_redis_sub_failing(from->rs)) {
        return;
    }

    to = NULL;

    for (k = 1; k < cl->nnodes; k++) {
        i = (cl->subnode + k) % cl->nnodes;

        if (cl->nodes[i].started && cl->nodes[i].assigned
            && ngx_aai_redis_available(cl->nodes[i].rs))
        {
            to = &cl->nodes[i];
            break;
        }
    }

    if (to == NULL) {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                  "aai redis cluster %V: pub/sub on %*s is down, "
                  "subscribing on %*s", &cl->conf->url,
                  from->len, from->name, to->len, to->name);

    ngx_aai_redis_unsubscribe_all(from->rs);

    cl->subnode = to - cl->nodes;

    for (i = 0; i < cl->nsubs; i++) {
        sub = &cl->subs[i];

        if (ngx_aai_redis_subscribe(to->rs, &sub->channel, sub->pattern,
                                    sub->handler, sub->data)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                          "aai redis cluster %V: no memory to subscribe",
                          &cl->conf->url);
            return;
        }
    }
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
    ngx_str_t    label, address;
    ngx_uint_t   i, k;

    static const char  *reasons[] = { "moved", "ask", "timeout", "down" };

    p = ngx_pnalloc(ngx_aai_metrics_pool(m), 256);
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

        /* the node client's own: aai_redis_connections ... */

        if (i < cl->conf->naddrs) {
            address = cl->conf->addrs[i].name;

        } else {
            ngx_str_null(&address);     /* from the slot map */
        }

        if (ngx_aai_redis_node_metrics(cl->nodes[i].rs, m, client, i,
                                       &address)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (k = 0; k < NGX_AAI_REDIS_CLUSTER_E_NUMBER; k++) {
            p = ngx_pnalloc(ngx_aai_metrics_pool(m), 256);
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


void
ngx_aai_redis_cluster_count(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t reason)
{
    if (cl->metrics && node) {
        ngx_aai_metrics_inc(cl->metrics, node->m_errors[reason], 1);
    }
}

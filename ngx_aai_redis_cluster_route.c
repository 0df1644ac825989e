
/*
 * Copyright (C) aai-nginx authors
 *
 * A command on a Redis Cluster client: sent to the node client of its
 * slot's primary (any node when it has no key or the slot is not
 * known); MOVED and ASK parsed and followed; its result delivered to
 * the caller (or to the command it is a part of); cancel.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_aai_redis_cluster_int.h"


static ngx_aai_redis_cluster_node_t *ngx_aai_redis_cluster_route(
    ngx_aai_redis_cluster_t *cl, ngx_uint_t slot);
static void ngx_aai_redis_cluster_handler(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_aai_redis_cluster_deliver(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_result_t *res);


/* commands */


ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_send(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    ngx_int_t  slot;

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

        if ((argv[0].len >= 4
             && ngx_strncasecmp(argv[0].data, (u_char *) "EVAL", 4) == 0)
            || (argv[0].len == 5
                && ngx_strncasecmp(argv[0].data, (u_char *) "FCALL", 5) == 0))
        {
            return ngx_aai_redis_cluster_eval(cl, log, argc, argv, handler,
                                              data);
        }

        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "aai redis cluster %V: the keys of a %V are in "
                      "different slots", &cl->conf->url, &argv[0]);
        return NULL;
    }

    return ngx_aai_redis_cluster_send_slot(cl, log, slot, argc, argv,
                                           handler, data);
}


/*
 * A command sent to the primary of a slot, whatever its keys: a command
 * without a key (FUNCTION LOAD) for the node of a given key's slot.
 */

ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_send_slot(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_int_t slot, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data)
{
    ngx_aai_redis_ccmd_t  *cc;

    if (!cl->initialized) {
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


ngx_aai_redis_ccmd_t *
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


ngx_int_t
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


void
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


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_cluster_int.h: private to the files of the Redis Cluster
 * client (ngx_aai_redis_cluster*.c): its constants, the structures of a
 * cluster client, a node client and a command on the cluster, and the
 * functions one file calls in another.  ngx_aai_redis.c uses
 * ngx_aai_redis_cluster.h only.
 *
 *   ngx_aai_redis_cluster.c        the client and its node clients:
 *                                  cluster=, create, worker init and exit,
 *                                  a node client given an address, the
 *                                  metrics
 *   ngx_aai_redis_cluster_slots.c  the slot map: the slot of a key and of
 *                                  a command, CLUSTER SLOTS asked, parsed
 *                                  and applied
 *   ngx_aai_redis_cluster_route.c  a command sent to its slot's primary,
 *                                  MOVED and ASK followed, cancel
 *   ngx_aai_redis_cluster_split.c  an MGET or EVAL whose keys span slots
 *                                  sent in parts, their replies merged
 */


#ifndef _NGX_AAI_REDIS_CLUSTER_INT_H_INCLUDED_
#define _NGX_AAI_REDIS_CLUSTER_INT_H_INCLUDED_


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


/* a subscription of the client, made on its pub/sub node */
typedef struct {
    ngx_str_t                   channel;
    ngx_uint_t                  pattern;
    ngx_aai_redis_message_pt    handler;
    void                       *data;
} ngx_aai_redis_cluster_sub_t;


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

    /* pub/sub, on one node at a time: the first seed's, then any up */
    ngx_aai_redis_cluster_sub_t  *subs;
    ngx_uint_t                  nsubs;
    ngx_uint_t                  subnode;

    unsigned                    known:1;
    unsigned                    initialized:1;
};


/* ngx_aai_redis_cluster.c */
ngx_aai_redis_cluster_node_t *ngx_aai_redis_cluster_node(
    ngx_aai_redis_cluster_t *cl, ngx_str_t *host, ngx_uint_t port,
    ngx_uint_t create);
void ngx_aai_redis_cluster_count(ngx_aai_redis_cluster_t *cl,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t reason);
void ngx_aai_redis_cluster_sub_watch(ngx_aai_redis_cluster_t *cl);

/* ngx_aai_redis_cluster_slots.c */
void ngx_aai_redis_cluster_refresh_handler(ngx_event_t *ev);
void ngx_aai_redis_cluster_watch_handler(ngx_event_t *ev);
void ngx_aai_redis_cluster_refresh_soon(ngx_aai_redis_cluster_t *cl);

/* ngx_aai_redis_cluster_route.c */
ngx_aai_redis_ccmd_t *ngx_aai_redis_cluster_ccmd(ngx_aai_redis_cluster_t *cl,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);
ngx_int_t ngx_aai_redis_cluster_dispatch(ngx_aai_redis_ccmd_t *cc,
    ngx_aai_redis_cluster_node_t *node, ngx_uint_t asking);
void ngx_aai_redis_cluster_free(ngx_aai_redis_ccmd_t *cc);

/* ngx_aai_redis_cluster_split.c */
ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_mget(ngx_aai_redis_cluster_t *cl,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);
ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_eval(ngx_aai_redis_cluster_t *cl,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);
void ngx_aai_redis_cluster_part_done(ngx_aai_redis_ccmd_t *part,
    ngx_aai_redis_result_t *res);


#endif /* _NGX_AAI_REDIS_CLUSTER_INT_H_INCLUDED_ */

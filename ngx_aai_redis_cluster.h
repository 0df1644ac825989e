
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_cluster: the Redis Cluster side of ngx_aai_redis
 * (cluster=host:port,...).  Private to the client: the modules see one
 * ngx_aai_redis_t and send commands to it as to a single Redis.  The
 * cluster's own files (ngx_aai_redis_cluster*.c) share
 * ngx_aai_redis_cluster_int.h.
 *
 * A cluster client owns a fixed set of node clients (ordinary
 * ngx_aai_redis_t, each with its own connections, pipelining, backoff and
 * handshake), made at configuration time; their addresses are given at run
 * time, from the slot map.  In each worker the map is asked of a known node
 * (CLUSTER SLOTS) at start, after a MOVED and after a node's connection is
 * lost.  A command goes to the primary of its key's slot (for EVAL,
 * EVALSHA and FCALL the first key; commands without a key to any node, or
 * to a slot's with ngx_aai_redis_send_slot()); MOVED sends it again to the
 * node named (and refreshes the map), ASK sends it there after ASKING on
 * the same connection.  An MGET of keys of several slots is
 * split into GETs and its reply put together again.
 */


#ifndef _NGX_AAI_REDIS_CLUSTER_H_INCLUDED_
#define _NGX_AAI_REDIS_CLUSTER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_aai_redis.h"


#define NGX_AAI_REDIS_CLUSTER_SLOTS     16384
#define NGX_AAI_REDIS_CLUSTER_NODES     16      /* node clients per client */
#define NGX_AAI_REDIS_CLUSTER_ANY       NGX_AAI_REDIS_CLUSTER_SLOTS


typedef struct ngx_aai_redis_cluster_s  ngx_aai_redis_cluster_t;


/* one range of CLUSTER SLOTS: its slots and its primary */
typedef struct {
    ngx_uint_t                  start;
    ngx_uint_t                  end;
    ngx_str_t                   host;
    ngx_uint_t                  port;
} ngx_aai_redis_cluster_range_t;


/* CRC16 (XMODEM) of the key's hash tag, or of the key, modulo 16384 */
ngx_uint_t ngx_aai_redis_cluster_slot(u_char *key, size_t len);

/*
 * The slot the command's keys hash to (EVAL, EVALSHA, FCALL: their keys;
 * others: argv[1]); NGX_AAI_REDIS_CLUSTER_ANY when it has no key; NGX_ERROR
 * when its keys are in several slots.
 */
ngx_int_t ngx_aai_redis_cluster_cmd_slot(ngx_uint_t argc, ngx_str_t *argv);

/*
 * Parses a CLUSTER SLOTS reply into ranges (at most nranges); returns
 * their number, or NGX_ERROR for a reply of another shape.  The hosts point
 * into the reply.
 */
ngx_int_t ngx_aai_redis_cluster_parse_slots(redisReply *r,
    ngx_aai_redis_cluster_range_t *ranges, ngx_uint_t nranges);

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": the slot and the address */
ngx_int_t ngx_aai_redis_cluster_parse_redirect(u_char *p, size_t len,
    ngx_uint_t *slot, ngx_str_t *host, ngx_uint_t *port);


/* the hooks of ngx_aai_redis.c */
char *ngx_aai_redis_cluster_conf(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf,
    ngx_str_t *arg);
ngx_aai_redis_cluster_t *ngx_aai_redis_cluster_create(ngx_conf_t *cf,
    ngx_aai_redis_t *rs, ngx_aai_redis_conf_t *rcf);
ngx_int_t ngx_aai_redis_cluster_init_worker(ngx_aai_redis_cluster_t *cl,
    ngx_cycle_t *cycle);
void ngx_aai_redis_cluster_exit_worker(ngx_aai_redis_cluster_t *cl);
ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_send(ngx_aai_redis_cluster_t *cl,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);
ngx_aai_redis_cmd_t *ngx_aai_redis_cluster_send_slot(
    ngx_aai_redis_cluster_t *cl, ngx_log_t *log, ngx_int_t slot,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data);
void ngx_aai_redis_cluster_cancel(void *ccmd);
ngx_uint_t ngx_aai_redis_cluster_available(ngx_aai_redis_cluster_t *cl);
ngx_int_t ngx_aai_redis_cluster_slot_node(ngx_aai_redis_cluster_t *cl,
    ngx_uint_t slot);
void ngx_aai_redis_cluster_refresh(ngx_aai_redis_cluster_t *cl);
ngx_int_t ngx_aai_redis_cluster_subscribe(ngx_aai_redis_cluster_t *cl,
    ngx_str_t *channel, ngx_uint_t pattern, ngx_aai_redis_message_pt handler,
    void *data);

typedef struct ngx_aai_metrics_s  ngx_aai_metrics_t;
ngx_int_t ngx_aai_redis_cluster_metrics(ngx_aai_redis_cluster_t *cl,
    ngx_aai_metrics_t *m, const char *client);

/* in ngx_aai_redis.c, for the cluster */
ngx_aai_redis_cmd_t *ngx_aai_redis_cmd_wrap(ngx_aai_redis_t *rs,
    void *ccmd);
void ngx_aai_redis_cmd_unwrap(ngx_aai_redis_t *rs, ngx_aai_redis_cmd_t *cmd);
ngx_aai_redis_cmd_t *ngx_aai_redis_send_asking(ngx_aai_redis_t *rs,
    ngx_log_t *log, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);
ngx_int_t ngx_aai_redis_set_node(ngx_aai_redis_t *rs, ngx_str_t *host,
    ngx_uint_t port);
ngx_int_t ngx_aai_redis_node_metrics(ngx_aai_redis_t *rs,
    ngx_aai_metrics_t *m, const char *client, ngx_uint_t node,
    ngx_str_t *address);
void ngx_aai_redis_unsubscribe_all(ngx_aai_redis_t *rs);
ngx_uint_t ngx_aai_redis_sub_failing(ngx_aai_redis_t *rs);

/* in ngx_aai_redis_conf.c, for the cluster */
ngx_flag_t ngx_aai_redis_conf_is_name(ngx_str_t *host);


#endif /* _NGX_AAI_REDIS_CLUSTER_H_INCLUDED_ */

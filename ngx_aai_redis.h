
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis: a non-blocking Redis client living in nginx's event loop.
 *
 * Sockets, timers and connect use nginx's own machinery
 * (ngx_event_connect_peer, ngx_add_timer); hiredis is used only to parse
 * replies (redisReader).  Commands are written in RESP by this file.
 *
 * One ngx_aai_redis_t per configured server (a directive such as
 * aai_ratelimit_redis); in each worker it keeps up to "connections" TCP or
 * unix-socket connections alive and pipelines every command sent to it:
 * commands sent in one event loop iteration go out in one write.
 *
 * Circuit breaker: a connection that fails (refused, connect timeout,
 * command timeout, protocol error, EOF with commands pending) fails all its
 * pending commands and waits a backoff (100ms doubling to "backoff", 1s by
 * default) before it reconnects.  After a failure a connection takes user
 * commands again only once its handshake (AUTH, SELECT, PING) has been
 * answered.  While no connection can take a command, ngx_aai_redis_send()
 * returns NULL at once, so no request waits for a Redis known to be down.
 */


#ifndef _NGX_AAI_REDIS_H_INCLUDED_
#define _NGX_AAI_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include <hiredis/hiredis.h>          /* redisReply, freeReplyObject */


typedef struct ngx_aai_redis_s       ngx_aai_redis_t;
typedef struct ngx_aai_redis_cmd_s   ngx_aai_redis_cmd_t;


/* what a command's handler receives */
typedef struct {
    redisReply                *reply;      /* NULL on error */
    const char                *error;      /* NULL, or why there is no reply:
                                              "timeout", "connection lost",
                                              "shutdown" ... */
    ngx_msec_t                 latency;    /* send to reply, in ms */
    ngx_uint_t                 latency_us; /* the same, in microseconds */
} ngx_aai_redis_result_t;


/*
 * Called exactly once per command that ngx_aai_redis_send() accepted, unless
 * the command was cancelled first; never from inside ngx_aai_redis_send().
 * The reply is freed when the handler returns.
 */
typedef void (*ngx_aai_redis_handler_pt)(ngx_aai_redis_result_t *res,
    void *data);


typedef struct {
    ngx_addr_t                *addrs;      /* resolved at configuration time */
    ngx_uint_t                 naddrs;
    ngx_flag_t                 hostname;   /* host is a name, not an address:
                                              looked up again by a worker
                                              with nginx's resolver */
    in_port_t                  port;       /* of the address, with host */
    ngx_str_t                  url;        /* as written, for logs */
    ngx_str_t                  user;       /* ACL user name, or empty */
    ngx_str_t                  password;   /* empty: no AUTH */
    ngx_int_t                  db;         /* -1: no SELECT */
    ngx_msec_t                 connect_timeout;
    ngx_msec_t                 timeout;    /* per command */
    ngx_msec_t                 backoff;    /* maximum reconnect backoff */
    ngx_uint_t                 connections;/* per worker */
    ngx_str_t                  directive;  /* e.g. "aai_ratelimit_redis" */

    /* TLS (tls=on), checked and loaded by ngx_aai_redis_create() */
    ngx_str_t                  host;       /* of the address, for tls_name */
    ngx_str_t                  tls_ca;     /* empty: the system's CAs */
    ngx_str_t                  tls_cert;   /* client certificate */
    ngx_str_t                  tls_key;
    ngx_str_t                  tls_name;   /* SNI and the name verified */
    ngx_flag_t                 tls;
    ngx_flag_t                 tls_verify;

    /* Sentinel (sentinel=): the primary is asked of these at run time */
    ngx_addr_t                *sentinels;
    ngx_uint_t                 nsentinels;
    ngx_str_t                 *sentinel_names; /* NULL, or per sentinel its
                                                  host name (empty: an IP
                                                  address) */
    ngx_str_t                  master;
    ngx_str_t                  sentinel_password;

    /* cluster=: addrs are the seed nodes (ngx_aai_redis_cluster.h) */
    ngx_str_t                 *seed_names; /* NULL, or per seed its host
                                              name (empty: an IP address) */
    ngx_uint_t                 cluster;
    ngx_uint_t                 cluster_node;  /* a node of a cluster */
} ngx_aai_redis_conf_t;


/*
 * Configuration time.
 *
 * ngx_aai_redis_conf_parse() parses the arguments of the current directive:
 *
 *     DIRECTIVE address [password=P|env:VAR] [user=U] [db=N]
 *               [connect_timeout=T] [timeout=T] [backoff=T]
 *               [connections=N] [tls=on|off] [tls_ca=FILE]
 *               [tls_cert=FILE tls_key=FILE] [tls_name=NAME]
 *               [tls_verify=on|off];
 *
 * address is host:port (default port 6379) or unix:/path.  A host name is
 * resolved here; when the http block has a "resolver", a worker looks it
 * up again with that resolver, without blocking, each time a connection is
 * reestablished after a failure or a close (ngx_aai_redis_resolve.c): a
 * DNS-based failover is followed without a reload.  Or, instead of an
 * address,
 * sentinel=host:port,host:port,... master=NAME [sentinel_password=P|env:V]:
 * in each worker the client asks the sentinels for the primary of NAME
 * (SENTINEL get-master-addr-by-name), checks it with ROLE after
 * connecting, follows +switch-master (subscribed on a sentinel
 * connection) and asks again when a connection to the primary is lost.
 * Or cluster=host:port,host:port,...: the seed nodes of a Redis Cluster;
 * in each worker the client learns the slot map from them and sends each
 * command to the primary of its key's slot (ngx_aai_redis_cluster.h).
 * Errors name the directive and the value.  Defaults: connect_timeout=200ms
 * timeout=100ms backoff=1s connections=1, no SELECT (db -1), tls=off,
 * tls_verify=on, tls_name the address's host.  With tls=on the connection
 * does a non-blocking TLS handshake (nginx's ngx_ssl_*) before AUTH,
 * verifies the certificate and the name, and reuses the TLS session when
 * it reconnects.  conf_parse() applies the defaults itself; conf_init()
 * applies them to fields left unset (idempotent).
 * ngx_aai_redis_create() makes the per-worker client; call it once
 * per server from the module's configuration callbacks.
 */
char *ngx_aai_redis_conf_parse(ngx_conf_t *cf, ngx_aai_redis_conf_t *rcf);
void ngx_aai_redis_conf_init(ngx_aai_redis_conf_t *rcf);
ngx_aai_redis_t *ngx_aai_redis_create(ngx_conf_t *cf,
    ngx_aai_redis_conf_t *rcf);


/*
 * The one slot of every "*_redis" directive: it parses the arguments
 * (ngx_aai_redis_conf_parse()) into the ngx_aai_redis_conf_t at
 * cmd->offset and makes the client (ngx_aai_redis_create()) into the
 * ngx_aai_redis_t * at the offset that cmd->post names; a second
 * directive "is duplicate".  post_handler, if not NULL, is then called
 * with the client, as nginx's slots call theirs with the value:
 *
 *     static ngx_aai_redis_post_t  ngx_http_x_redis_post = {
 *         NULL, offsetof(ngx_http_x_main_conf_t, redis)
 *     };
 *
 *     { ngx_string("x_redis"),
 *       NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
 *       ngx_aai_redis_conf_set_slot,
 *       NGX_HTTP_MAIN_CONF_OFFSET,
 *       offsetof(ngx_http_x_main_conf_t, redis_conf),
 *       &ngx_http_x_redis_post },
 */
typedef struct {
    ngx_conf_post_handler_pt   post_handler;
    size_t                     redis;      /* offset of ngx_aai_redis_t * */
} ngx_aai_redis_post_t;

char *ngx_aai_redis_conf_set_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


/* init_process / exit_process of the owning module */
ngx_int_t ngx_aai_redis_init_worker(ngx_aai_redis_t *rs, ngx_cycle_t *cycle);
void ngx_aai_redis_exit_worker(ngx_aai_redis_t *rs);


/*
 * Request time.
 *
 * Queues one command (argv[0] is the command name).  The arguments are
 * copied: they may live in the request pool.  Returns NULL when Redis cannot
 * take a command now (circuit open, or no memory); the caller then decides
 * by its own policy, at once.  Never blocks and never calls the handler.
 * A handler may send new commands.  With connections > 1 each command goes
 * to the least busy connection: two commands sent without waiting for the
 * first one's reply may then run in either order (one connection keeps
 * them in order).
 */
ngx_aai_redis_cmd_t *ngx_aai_redis_send(ngx_aai_redis_t *rs, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data);

/*
 * The same, for the primary of a slot on a cluster whatever the command's
 * keys (a command without a key otherwise goes to any node): a FUNCTION
 * LOAD for the node of a key.  Elsewhere, or with slot < 0, the same as
 * ngx_aai_redis_send().
 */
ngx_aai_redis_cmd_t *ngx_aai_redis_send_slot(ngx_aai_redis_t *rs,
    ngx_log_t *log, ngx_int_t slot, ngx_uint_t argc, ngx_str_t *argv,
    ngx_aai_redis_handler_pt handler, void *data);

/*
 * The handler of cmd will not be called.  For a request that goes away
 * (pool cleanup) before its reply.  Must not be called after the handler
 * ran.
 */
void ngx_aai_redis_cancel(ngx_aai_redis_cmd_t *cmd);

/* 1 if a command sent now would be accepted */
ngx_uint_t ngx_aai_redis_available(ngx_aai_redis_t *rs);

/*
 * cluster=: the node (0-based, stable for the client's life) that serves
 * a slot in this worker's slot map; NGX_DECLINED when the slot is not
 * known or the client is not a cluster's.  refresh asks the map again soon.
 */
ngx_int_t ngx_aai_redis_slot_node(ngx_aai_redis_t *rs, ngx_uint_t slot);
void ngx_aai_redis_refresh(ngx_aai_redis_t *rs);


/*
 * Pub/Sub.  Called for each message published on a subscribed channel (or
 * on a channel matching a subscribed pattern); channel and message are
 * valid only during the call.
 */
typedef void (*ngx_aai_redis_message_pt)(ngx_str_t *channel,
    ngx_str_t *message, void *data);

/*
 * Subscribes (pattern 0: SUBSCRIBE, 1: PSUBSCRIBE), in each worker, on one
 * dedicated connection per client that has the same handshake, backoff and
 * reconnects as the others, and subscribes again after each reconnect
 * (messages published while it is down are lost).  Call it from
 * init_process, before or after ngx_aai_redis_init_worker(); the name is
 * copied.  Returns NGX_ERROR only when out of memory.
 */
ngx_int_t ngx_aai_redis_subscribe(ngx_aai_redis_t *rs, ngx_str_t *channel,
    ngx_uint_t pattern, ngx_aai_redis_message_pt handler, void *data);


/*
 * Configuration time, before the registry's ngx_aai_metrics_zone(): adds
 * the client's metrics to a module's registry (cluster=: slot map
 * refreshes and errors per node; nothing otherwise).  client is the
 * metrics' "client" label.
 */
struct ngx_aai_metrics_s;
ngx_int_t ngx_aai_redis_metrics(ngx_aai_redis_t *rs,
    struct ngx_aai_metrics_s *m, const char *client);


#endif /* _NGX_AAI_REDIS_H_INCLUDED_ */

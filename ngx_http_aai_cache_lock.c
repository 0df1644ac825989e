
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_lock: the stampede lock (aai_cache_lock) and its
 * wake-up.  A miss or an expired entry takes the update lock K ":l" with
 * SET NX PX; its holder renews it as a lease and, when done, publishes
 * "1 K:l" (stored) or "0 K:l" (not stored) on NGX_HTTP_AAI_CACHE_CHANNEL.
 * The others wait for that message, on any instance, polling in case it is
 * lost, up to aai_cache_lock_timeout.  A lock whose SET had no reply is an
 * orphan: released as soon as Redis answers again.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


static void ngx_http_aai_cache_wait(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx);
static void ngx_http_aai_cache_wait_handler(ngx_event_t *ev);
static void ngx_http_aai_cache_wake(ngx_http_aai_cache_ctx_t *ctx,
    ngx_uint_t how);
static ngx_msec_t ngx_http_aai_cache_lease_time(ngx_http_request_t *r);
static void ngx_http_aai_cache_renew(ngx_event_t *ev);


/*
 * The lock's scripts, from lua/cache_renew.lua and lua/cache_release.lua
 * (which say what they do, their arguments and their reply); "make lua"
 * remakes the header after an edit.
 */

#include "ngx_http_aai_cache_lock_lua.h"


/* the lease renewed */
static ngx_str_t  ngx_http_aai_cache_renew_script =
    ngx_string(ngx_http_aai_cache_renew_lua);

/* the lock let go and its waiters told */
ngx_str_t  ngx_http_aai_cache_release_script =
    ngx_string(ngx_http_aai_cache_release_lua);


/* per worker */
ngx_queue_t                             ngx_http_aai_cache_waiters[
                                            NGX_HTTP_AAI_CACHE_BUCKETS];
static ngx_http_aai_cache_note_t        ngx_http_aai_cache_notes[
                                            NGX_HTTP_AAI_CACHE_NOTES];
static ngx_uint_t                       ngx_http_aai_cache_note_seq;
ngx_uint_t                              ngx_http_aai_cache_lock_seq;
static ngx_http_aai_cache_orphan_t      ngx_http_aai_cache_orphans[
                                            NGX_HTTP_AAI_CACHE_ORPHANS];
ngx_event_t                             ngx_http_aai_cache_orphans_ev;


ngx_int_t
ngx_http_aai_cache_try_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx)
{
    u_char                          *p;
    ngx_str_t                       *k, argv[6];
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           px[NGX_INT_T_LEN];

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    k = ctx->vkey.len ? &ctx->vkey : &ctx->key;

    /* the lock key, and room for the "0 " or "1 " of its message */

    p = ngx_pnalloc(r->pool, 2 + k->len + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->lock_key.data = p + 2;
    ctx->lock_key.len = k->len + 2;

    p = ngx_cpymem(p + 2, k->data, k->len);
    *p++ = ':';
    *p = 'l';

    if (ctx->token[0] == '\0') {
        ngx_sprintf(ctx->token, "%08xi%08xi",
                    ((ngx_uint_t) ngx_pid ^ (ngx_uint_t) ngx_random())
                    & 0xffffffff,
                    ++ngx_http_aai_cache_lock_seq & 0xffffffff);
    }

    ngx_str_set(&argv[0], "SET");
    argv[1] = ctx->lock_key;
    argv[2].data = ctx->token;
    argv[2].len = sizeof(ctx->token);
    ngx_str_set(&argv[3], "NX");
    ngx_str_set(&argv[4], "PX");
    argv[5].data = px;
    argv[5].len = ngx_sprintf(px, "%M", ngx_http_aai_cache_lease_time(r))
                  - px;

    ctx->cmd = ngx_aai_redis_send(amcf->redis, r->connection->log, 6, argv,
                                  ngx_http_aai_cache_reply, ctx);
    if (ctx->cmd == NULL) {
        return NGX_DECLINED;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache lock \"%V\" requested", &ctx->lock_key);

    ctx->state = NGX_HTTP_AAI_CACHE_ST_LOCK;
    ctx->lock_seq = ngx_http_aai_cache_note_seq;

    return NGX_AGAIN;
}


void
ngx_http_aai_cache_on_lock(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, redisReply *reply)
{
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (reply->type == REDIS_REPLY_STATUS) {

        /* this request updates the entry */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache lock \"%V\" taken", &ctx->lock_key);

        ctx->lock_held = 1;
        ctx->lock_until = ngx_current_msec + alcf->lock_timeout;
        ngx_http_aai_cache_lease(ctx);

        if (ctx->stale
            && (alcf->background_update
                || ngx_http_aai_cache_swr(ctx->stale))
            && ngx_http_aai_cache_updating_ok(alcf, ctx->stale)
            && ngx_http_aai_cache_background(r, ctx) == NGX_OK)
        {
            ctx->detail = "background-update";
            ngx_http_aai_cache_serve(r, ctx, ctx->stale,
                                     NGX_HTTP_AAI_CACHE_STALE);
            return;
        }

        ngx_http_aai_cache_forward(r, ctx,
                                   ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                              : NGX_HTTP_AAI_CACHE_MISS);
        return;
    }

    /* another request, maybe on another instance, is updating it */

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache lock \"%V\" held by another request",
                   &ctx->lock_key);

    if (ctx->stale && ngx_http_aai_cache_updating_ok(alcf, ctx->stale)) {
        ctx->detail = "updating";
        ngx_http_aai_cache_serve(r, ctx, ctx->stale,
                                 NGX_HTTP_AAI_CACHE_UPDATING);
        return;
    }

    if (!alcf->lock
        || (ctx->deadline
            && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) <= 0))
    {
        if (alcf->lock) {
            ctx->detail = "lock-timeout";
        }

        ngx_http_aai_cache_forward(r, ctx,
                                   ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                                              : NGX_HTTP_AAI_CACHE_MISS);
        return;
    }

    ngx_http_aai_cache_wait(r, ctx);
}


/*
 * Waiting for the holder of the lock: woken by its message, polling every
 * NGX_HTTP_AAI_CACHE_POLL ms in case the message was lost (pub/sub
 * connection down), up to aai_cache_lock_timeout.
 */

static void
ngx_http_aai_cache_wait(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx)
{
    uint32_t                        hash;
    ngx_uint_t                      i;
    ngx_msec_t                      timer;
    ngx_queue_t                    *bucket;
    ngx_http_aai_cache_note_t      *n;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (ctx->deadline == 0) {
        ctx->deadline = ngx_current_msec + alcf->lock_timeout;

        if (ctx->deadline == 0) {
            ctx->deadline = 1;
        }
    }

    hash = ngx_crc32_short(ctx->lock_key.data, ctx->lock_key.len);

    /*
     * The holder may have published after our SET went out but before its
     * reply came: the message was seen then, and noted.
     */

    for (i = 0; i < NGX_HTTP_AAI_CACHE_NOTES; i++) {
        n = &ngx_http_aai_cache_notes[i];

        if (n->stored
            && n->hash == hash
            && n->seq > ctx->lock_seq)
        {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai cache lock \"%V\" let go before its reply",
                           &ctx->lock_key);

            ngx_http_aai_cache_wake(ctx, n->stored == 1
                                         ? NGX_HTTP_AAI_CACHE_WAKE_STORED
                                         : NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED);
            return;
        }
    }

    ctx->state = NGX_HTTP_AAI_CACHE_ST_WAIT;
    ctx->waiting = 1;

    bucket = &ngx_http_aai_cache_waiters[hash % NGX_HTTP_AAI_CACHE_BUCKETS];
    ngx_queue_insert_tail(bucket, &ctx->queue);

    ctx->wait_ev.handler = ngx_http_aai_cache_wait_handler;
    ctx->wait_ev.data = ctx;
    ctx->wait_ev.log = r->connection->log;

    timer = ctx->deadline - ngx_current_msec;

    if ((ngx_msec_int_t) timer <= 0) {
        timer = 1;
    }

    if (timer > NGX_HTTP_AAI_CACHE_POLL) {
        timer = NGX_HTTP_AAI_CACHE_POLL;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache wait for lock \"%V\", %M ms left, poll in %M",
                   &ctx->lock_key, ctx->deadline - ngx_current_msec, timer);

    ngx_add_timer(&ctx->wait_ev, timer);
}


static void
ngx_http_aai_cache_wait_handler(ngx_event_t *ev)
{
    ngx_connection_t          *c;
    ngx_http_aai_cache_ctx_t  *ctx;

    ctx = ev->data;
    c = ctx->request->connection;

    if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) <= 0) {
        ngx_http_aai_cache_wake(ctx, NGX_HTTP_AAI_CACHE_WAKE_TIMEOUT);

    } else {
        ngx_http_aai_cache_wake(ctx, NGX_HTTP_AAI_CACHE_WAKE_POLL);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_cache_wake(ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t how)
{
    ngx_int_t            rc;
    ngx_uint_t           status;
    ngx_http_request_t  *r;

    r = ctx->request;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache woken: %s, lock \"%V\"",
                   how == NGX_HTTP_AAI_CACHE_WAKE_STORED ? "stored"
                   : how == NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED ? "not stored"
                   : how == NGX_HTTP_AAI_CACHE_WAKE_POLL ? "poll" : "timeout",
                   &ctx->lock_key);

    ngx_http_aai_cache_unwait(ctx);

    status = ctx->stale ? NGX_HTTP_AAI_CACHE_EXPIRED
                        : NGX_HTTP_AAI_CACHE_MISS;

    switch (how) {

    case NGX_HTTP_AAI_CACHE_WAKE_TIMEOUT:
        ctx->detail = "lock-timeout";
        ngx_http_aai_cache_forward(r, ctx, status);
        return;

    case NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED:
        ctx->collapsed = 1;
        ctx->detail = "lock-not-stored";
        ngx_http_aai_cache_forward(r, ctx, status);
        return;

    case NGX_HTTP_AAI_CACHE_WAKE_STORED:
        ctx->collapsed = 1;
        break;

    default: /* NGX_HTTP_AAI_CACHE_WAKE_POLL */
        break;
    }

    rc = ngx_http_aai_cache_lookup(r, ctx);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc == NGX_ERROR) {
        ctx->state = NGX_HTTP_AAI_CACHE_ST_DONE;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->detail = "redis-unavailable";
    ngx_http_aai_cache_forward(r, ctx, status);
}


void
ngx_http_aai_cache_unwait(ngx_http_aai_cache_ctx_t *ctx)
{
    if (ctx->waiting) {
        ngx_queue_remove(&ctx->queue);
        ctx->waiting = 0;
    }

    if (ctx->wait_ev.timer_set) {
        ngx_del_timer(&ctx->wait_ev);
    }
}


/* "1 K:l" (stored) or "0 K:l" (not stored), from the holder of K:l */

void
ngx_http_aai_cache_message(ngx_str_t *channel, ngx_str_t *message,
    void *data)
{
    uint32_t                    hash;
    ngx_str_t                   key;
    ngx_uint_t                  stored;
    ngx_queue_t                 woken, *q, *next, *bucket;
    ngx_connection_t           *c;
    ngx_http_aai_cache_ctx_t   *ctx;
    ngx_http_aai_cache_note_t  *n;

    if (message->len < 3 || message->data[1] != ' ') {
        return;
    }

    stored = (message->data[0] == '1');

    key.data = message->data + 2;
    key.len = message->len - 2;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai cache lock \"%V\" let go, %s", &key,
                   stored ? "stored" : "not stored");

    hash = ngx_crc32_short(key.data, key.len);

    n = &ngx_http_aai_cache_notes[ngx_http_aai_cache_note_seq
                                  % NGX_HTTP_AAI_CACHE_NOTES];
    n->hash = hash;
    n->seq = ++ngx_http_aai_cache_note_seq;
    n->stored = stored ? 1 : 2;

    bucket = &ngx_http_aai_cache_waiters[hash % NGX_HTTP_AAI_CACHE_BUCKETS];

    ngx_queue_init(&woken);

    for (q = ngx_queue_head(bucket);
         q != ngx_queue_sentinel(bucket);
         q = next)
    {
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_aai_cache_ctx_t, queue);

        if (ctx->lock_key.len == key.len
            && ngx_memcmp(ctx->lock_key.data, key.data, key.len) == 0)
        {
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&woken, q);
        }
    }

    /*
     * Each stays in "woken" until its turn: if one of them goes away
     * meanwhile, its cleanup takes it out.
     */

    while (!ngx_queue_empty(&woken)) {
        q = ngx_queue_head(&woken);
        ngx_queue_remove(q);

        ctx = ngx_queue_data(q, ngx_http_aai_cache_ctx_t, queue);
        ctx->waiting = 0;

        c = ctx->request->connection;

        ngx_http_aai_cache_wake(ctx, stored
                                     ? NGX_HTTP_AAI_CACHE_WAKE_STORED
                                     : NGX_HTTP_AAI_CACHE_WAKE_NOT_STORED);

        ngx_http_run_posted_requests(c);
    }
}


void
ngx_http_aai_cache_release(ngx_http_aai_cache_ctx_t *ctx, ngx_uint_t stored,
    ngx_log_t *log)
{
    ngx_str_t                        argv[7];
    ngx_http_aai_cache_main_conf_t  *amcf;

    if (!ctx->lock_held) {
        return;
    }

    ctx->lock_held = 0;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL || amcf->redis == NULL) {
        return;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_release_script;
    ngx_str_set(&argv[2], "1");
    argv[3] = ctx->lock_key;
    argv[4].data = ctx->token;
    argv[4].len = sizeof(ctx->token);
    ngx_str_set(&argv[5], NGX_HTTP_AAI_CACHE_CHANNEL);
    argv[6].data = ctx->lock_key.data - 2;
    argv[6].len = ctx->lock_key.len + 2;
    argv[6].data[0] = stored ? '1' : '0';
    argv[6].data[1] = ' ';

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                   "aai cache lock \"%V\" released, %s", &ctx->lock_key,
                   stored ? "stored" : "not stored");

    (void) ngx_aai_redis_send(amcf->redis, log, 7, argv,
                              ngx_http_aai_cache_release_handler, NULL);
}


static ngx_msec_t
ngx_http_aai_cache_lease_time(ngx_http_request_t *r)
{
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    return ngx_min(alcf->lock_timeout, NGX_HTTP_AAI_CACHE_LEASE);
}


void
ngx_http_aai_cache_lease(ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_msec_t  lease;

    lease = ngx_http_aai_cache_lease_time(ctx->request);

    ctx->lease_ev.handler = ngx_http_aai_cache_renew;
    ctx->lease_ev.data = ctx;
    ctx->lease_ev.log = ctx->request->connection->log;
    ctx->lease_ev.cancelable = 1;

    ngx_add_timer(&ctx->lease_ev, ngx_max(lease / 3, 1));
}


/* the holder renews its lease until it lets go or lock_timeout is over */

static void
ngx_http_aai_cache_renew(ngx_event_t *ev)
{
    ngx_str_t                        argv[6];
    ngx_msec_t                       lease;
    ngx_http_aai_cache_ctx_t        *ctx;
    ngx_http_aai_cache_main_conf_t  *amcf;
    u_char                           px[NGX_INT_T_LEN];

    ctx = ev->data;
    amcf = ngx_http_aai_cache_worker;

    if (!ctx->lock_held
        || amcf == NULL
        || (ngx_msec_int_t) (ctx->lock_until - ngx_current_msec) <= 0)
    {
        return;
    }

    lease = ngx_http_aai_cache_lease_time(ctx->request);

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = ngx_http_aai_cache_renew_script;
    ngx_str_set(&argv[2], "1");
    argv[3] = ctx->lock_key;
    argv[4].data = ctx->token;
    argv[4].len = sizeof(ctx->token);
    argv[5].data = px;
    argv[5].len = ngx_sprintf(px, "%M", lease) - px;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "aai cache lock \"%V\" renewed for %M ms",
                   &ctx->lock_key, lease);

    (void) ngx_aai_redis_send(amcf->redis, ev->log, 6, argv,
                              ngx_http_aai_cache_release_handler, NULL);

    ngx_add_timer(ev, ngx_max(lease / 3, 1));
}


/*
 * The SET of ctx's lock had no reply (a timeout, the connection lost): it
 * may still run.  The lock is deleted if it is still ctx's (compare and
 * delete with its token), as soon as Redis takes a command again, and its
 * waiters are woken; the lease bounds it in any case.
 */

void
ngx_http_aai_cache_orphan(ngx_http_aai_cache_ctx_t *ctx)
{
    ngx_uint_t                    i;
    ngx_http_aai_cache_orphan_t  *o;

    if (ctx->lock_key.len + 2 > NGX_HTTP_AAI_CACHE_ORPHAN_KEY) {
        return;
    }

    for (i = 0; i < NGX_HTTP_AAI_CACHE_ORPHANS; i++) {
        o = &ngx_http_aai_cache_orphans[i];

        if (o->len == 0) {
            goto found;
        }
    }

    /* all taken: the lease alone bounds this one */

    return;

found:

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "aai cache lock \"%V\" orphaned", &ctx->lock_key);

    o->until = ngx_current_msec + ngx_http_aai_cache_lease_time(ctx->request);
    o->len = ctx->lock_key.len + 2;
    o->msg[0] = '0';
    o->msg[1] = ' ';
    ngx_memcpy(o->msg + 2, ctx->lock_key.data, ctx->lock_key.len);
    ngx_memcpy(o->token, ctx->token, sizeof(ctx->token));

    if (!ngx_http_aai_cache_orphans_ev.timer_set) {
        ngx_add_timer(&ngx_http_aai_cache_orphans_ev,
                      NGX_HTTP_AAI_CACHE_ORPHAN_RETRY);
    }
}


void
ngx_http_aai_cache_orphans_handler(ngx_event_t *ev)
{
    ngx_str_t                        argv[7];
    ngx_uint_t                       i, left;
    ngx_http_aai_cache_orphan_t     *o;
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    if (amcf == NULL) {
        return;
    }

    left = 0;

    for (i = 0; i < NGX_HTTP_AAI_CACHE_ORPHANS; i++) {
        o = &ngx_http_aai_cache_orphans[i];

        if (o->len == 0) {
            continue;
        }

        if ((ngx_msec_int_t) (o->until - ngx_current_msec) <= 0) {
            o->len = 0;
            continue;
        }

        ngx_str_set(&argv[0], "EVAL");
        argv[1] = ngx_http_aai_cache_release_script;
        ngx_str_set(&argv[2], "1");
        argv[3].data = o->msg + 2;
        argv[3].len = o->len - 2;
        argv[4].data = o->token;
        argv[4].len = sizeof(o->token);
        ngx_str_set(&argv[5], NGX_HTTP_AAI_CACHE_CHANNEL);
        argv[6].data = o->msg;
        argv[6].len = o->len;

        if (ngx_aai_redis_send(amcf->redis, ev->log, 7, argv,
                               ngx_http_aai_cache_release_handler, NULL)
            == NULL)
        {
            left++;
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "aai cache orphaned lock released: %*s",
                       o->len - 2, o->msg + 2);

        o->len = 0;
    }

    if (left) {
        ngx_add_timer(ev, NGX_HTTP_AAI_CACHE_ORPHAN_RETRY);
    }
}


void
ngx_http_aai_cache_release_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_cache_main_conf_t  *amcf;

    amcf = ngx_http_aai_cache_worker;

    if (amcf) {
        ngx_aai_metrics_observe(amcf->metrics, amcf->m_latency,
                                res->latency_us);
    }
}

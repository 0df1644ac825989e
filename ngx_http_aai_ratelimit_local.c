
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the shared memory zone.  Keys known to be
 * over their limit are rejected from a blocklist without asking Redis;
 * when Redis fails, the location's fallback decides (allow, deny, or
 * "local": GCRA with the zone's rate in this instance's shared memory).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static void ngx_http_aai_ratelimit_log_failure(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, const char *error, redisReply *reply);
static void ngx_http_aai_ratelimit_local_key(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t i, ngx_str_t *key);
static void ngx_http_aai_ratelimit_local(ngx_http_aai_ratelimit_ctx_t *ctx);
static ngx_uint_t ngx_http_aai_ratelimit_local_check(
    ngx_http_aai_ratelimit_ctx_t *ctx, uint64_t now);
static void ngx_http_aai_ratelimit_local_account(
    ngx_http_aai_ratelimit_ctx_t *ctx, uint64_t now);
static uint64_t ngx_http_aai_ratelimit_local_gcra(
    ngx_http_aai_ratelimit_zone_t *zone, ngx_uint_t limit, uint64_t *burst,
    uint64_t *delay);
static ngx_http_aai_ratelimit_node_t *ngx_http_aai_ratelimit_lookup(
    ngx_http_aai_ratelimit_main_conf_t *mcf, ngx_str_t *key,
    ngx_uint_t create);
static void ngx_http_aai_ratelimit_expire(
    ngx_http_aai_ratelimit_main_conf_t *mcf, ngx_uint_t force);
static void ngx_http_aai_ratelimit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);


/* per worker: failure log limits */
static time_t      ngx_http_aai_ratelimit_log_time;
static ngx_uint_t  ngx_http_aai_ratelimit_log_skipped;


void
ngx_http_aai_ratelimit_fallback(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t reason, const char *error,
    redisReply *reply)
{
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_loc_conf_t   *lcf;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);
    lcf = ctx->lcf;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai_ratelimit Redis %s: fallback \"%V\"", error,
                   &ngx_http_aai_ratelimit_fallbacks[lcf->fallback].name);

    ngx_aai_metrics_inc(mcf->metrics, mcf->errors[reason], 1);

    ngx_http_aai_ratelimit_log_failure(r, ctx, error, reply);

    if (lcf->fallback == NGX_HTTP_AAI_RL_FALLBACK_LOCAL) {
        ngx_memzero(ctx->results,
                    ctx->nzones * sizeof(ngx_http_aai_ratelimit_result_t));

        ngx_http_aai_ratelimit_local(ctx);
        ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_LOCAL);
        return;
    }

    for (i = 0; i < ctx->nzones; i++) {
        ngx_aai_metrics_inc(mcf->metrics,
                            ctx->zones[i]->metrics[NGX_HTTP_AAI_RL_M_ERROR], 1);
    }

    ctx->status = NGX_HTTP_AAI_RL_ERROR;
    ctx->top = -1;

    if (lcf->fallback == NGX_HTTP_AAI_RL_FALLBACK_DENY && !lcf->dry_run) {
        ctx->rejected = 1;
        ctx->rc = lcf->status_code;

    } else {
        ctx->rc = NGX_DECLINED;
    }
}


/* at most one message a second per worker: Redis down fails every request */

static void
ngx_http_aai_ratelimit_log_failure(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx, const char *error, redisReply *reply)
{
    ngx_str_t   detail;
    ngx_uint_t  skipped;

    if (ngx_http_aai_ratelimit_log_time == ngx_time()) {
        ngx_http_aai_ratelimit_log_skipped++;
        return;
    }

    ngx_http_aai_ratelimit_log_time = ngx_time();
    skipped = ngx_http_aai_ratelimit_log_skipped;
    ngx_http_aai_ratelimit_log_skipped = 0;

    ngx_str_null(&detail);

    if (reply && reply->type == REDIS_REPLY_ERROR && reply->str) {
        detail.data = (u_char *) reply->str;
        detail.len = ngx_min(reply->len, 256);
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "aai_ratelimit: Redis %s%s%V, fallback \"%V\" "
                  "(%ui similar errors not logged)",
                  error, detail.len ? ": " : "", &detail,
                  &ngx_http_aai_ratelimit_fallbacks[ctx->lcf->fallback].name,
                  skipped);
}


/* the blocklist and local fallback key: the Redis key without the prefix */

static void
ngx_http_aai_ratelimit_local_key(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_uint_t i, ngx_str_t *key)
{
    ngx_http_aai_ratelimit_zone_t  *zone;

    zone = ctx->zones[i];

    key->data = ctx->keys[i].data + zone->prefix.len - zone->name.len - 1;
    key->len = ctx->keys[i].len - (zone->prefix.len - zone->name.len - 1);
}


ngx_int_t
ngx_http_aai_ratelimit_blocked(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_str_t                            key;
    ngx_uint_t                           i, blocked;
    ngx_msec_t                           now;
    ngx_msec_int_t                       left;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = ngx_current_msec;
    blocked = 0;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    for (i = 0; i < ctx->nzones; i++) {

        /* a shadow zone asks Redis: it is counted, and never rejects */

        if (ctx->zreq[i].shadow) {
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 0);

        if (node == NULL || node->blocked == 0) {
            continue;
        }

        left = (ngx_msec_int_t) (node->blocked - now);

        if (left <= 0) {
            node->blocked = 0;
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                       "aai_ratelimit blocklist: \"%V\" for %M ms",
                       &key, (ngx_msec_t) left);

        res = &ctx->results[i];

        res->rejected = 1;
        res->retry_after = left;
        res->reset = left;

        blocked = 1;
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);

    return blocked ? NGX_OK : NGX_DECLINED;
}


/* Redis said "over the limit until now + retry_after": remember it */

void
ngx_http_aai_ratelimit_block(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_str_t                            key;
    ngx_uint_t                           i;
    ngx_msec_t                           now, until;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = ngx_current_msec;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    for (i = 0; i < ctx->nzones; i++) {
        res = &ctx->results[i];

        /* a request costing more may be rejected where one unit is not */

        if (!res->rejected || res->retry_after == 0
            || ctx->zreq[i].cost > 1 || ctx->zones[i]->concurrency
            || ctx->zreq[i].shadow)
        {
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 1);
        if (node == NULL) {
            break;
        }

        /* asked before the key was reset (aai_ratelimit_admin): stale */

        if (node->reset && (ngx_msec_int_t) (ctx->asked - node->reset) <= 0) {
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                       "aai_ratelimit blocklist: \"%V\" added for %M ms",
                       &key, res->retry_after);

        until = now + res->retry_after;

        if (node->blocked == 0
            || (ngx_msec_int_t) (until - node->blocked) > 0)
        {
            node->blocked = until;
        }

        if ((ngx_msec_int_t) (until - node->expire) > 0) {
            node->expire = until;
        }
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);
}


/*
 * The "local" fallback: GCRA with the zone's rate in this instance's shared
 * memory.  Its burst is the zone's, plus limit - 1 for a sliding window or
 * counter zone (which admits "limit" requests at once).  As in Redis, a
 * request rejected by one zone spends nothing in the others.  count= sets
 * the rate (limit per window) and the burst as it does in Redis; cost=
 * spends that many periods (0: checked for one, spends none); a cost the
 * burst cannot hold is rejected.  concurrency= zones are not limited here
 * (no lease is taken), charge= is not counted here (it goes to Redis, or
 * is counted lost).
 */

static void
ngx_http_aai_ratelimit_local(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    uint64_t                             now;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    now = (uint64_t) ngx_current_msec * 1000;

    ngx_shmtx_lock(&mcf->shpool->mutex);

    if (ngx_http_aai_ratelimit_local_check(ctx, now) == 0) {
        ngx_http_aai_ratelimit_local_account(ctx, now);
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);
}


static ngx_uint_t
ngx_http_aai_ratelimit_local_check(ngx_http_aai_ratelimit_ctx_t *ctx,
    uint64_t now)
{
    uint64_t                             tat, tau, wait, period, burst,
                                         delay, ahead, last, units;
    ngx_str_t                            key;
    ngx_uint_t                           i, rejected;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_result_t     *res;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    rejected = 0;

    for (i = 0; i < ctx->nzones; i++) {
        zone = ctx->zones[i];
        res = &ctx->results[i];

        /* in-flight limits are not kept per instance: not limited */

        if (zone->concurrency) {
            res->remaining = zone->limit;
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 0);

        tat = (node && node->tat > now) ? node->tat : now;

        period = ngx_http_aai_ratelimit_local_gcra(zone, ctx->zreq[i].limit,
                                                   &burst, &delay);
        tau = burst * period;
        ahead = tat - now;

        /* a cost of N: its last unit due within the burst (0 checks one) */

        units = ngx_max(ctx->zreq[i].cost, 1);

        if (units - 1 > burst || ahead > tau - (units - 1) * period) {
            res->rejected = 1;
            res->retry_after = (units - 1 > burst)
                               ? zone->window_ms
                               : (ahead + (units - 1) * period - tau + 999)
                                 / 1000;
            res->reset = (ahead + 999) / 1000;
            rejected |= !ctx->zreq[i].shadow;
            continue;
        }

        last = ahead + (units - 1) * period;
        wait = delay * period;
        wait = (last > wait) ? last - wait : 0;

        res->delay = (wait + 999) / 1000;
        res->reset = (last + period + 999) / 1000;
        res->remaining = (tau - last) / period;
    }

    return rejected;
}


static void
ngx_http_aai_ratelimit_local_account(ngx_http_aai_ratelimit_ctx_t *ctx,
    uint64_t now)
{
    uint64_t                             period, burst, delay;
    ngx_str_t                            key;
    ngx_uint_t                           i;
    ngx_msec_t                           expire;
    ngx_http_aai_ratelimit_node_t       *node;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(ctx->request,
                                        ngx_http_aai_ratelimit_module);

    for (i = 0; i < ctx->nzones; i++) {
        if (ctx->zones[i]->concurrency || ctx->zreq[i].shadow == 2
            || ctx->results[i].rejected || ctx->zreq[i].cost == 0)
        {
            continue;
        }

        ngx_http_aai_ratelimit_local_key(ctx, i, &key);

        node = ngx_http_aai_ratelimit_lookup(mcf, &key, 1);
        if (node == NULL) {
            return;
        }

        /* the check let no more than the burst through: cost <= burst + 1 */

        period = ngx_http_aai_ratelimit_local_gcra(ctx->zones[i],
                                                   ctx->zreq[i].limit,
                                                   &burst, &delay);

        node->tat = ngx_max(node->tat, now) + ctx->zreq[i].cost * period;

        expire = (ngx_msec_t) ((node->tat + 999) / 1000);

        if ((ngx_msec_int_t) (expire - node->expire) > 0) {
            node->expire = expire;
        }
    }
}


/*
 * The local GCRA of a zone at a request's count (count=): its period (us),
 * burst and delay (in periods), as configuration makes them for the
 * zone's own count; the burst kept within NGX_HTTP_AAI_RL_MAX_AHEAD.
 */

static uint64_t
ngx_http_aai_ratelimit_local_gcra(ngx_http_aai_ratelimit_zone_t *zone,
    ngx_uint_t limit, uint64_t *burst, uint64_t *delay)
{
    uint64_t  period;

    if (limit == zone->limit || limit == 0) {
        *burst = zone->local_burst;
        *delay = zone->local_delay;
        return zone->period;
    }

    period = ngx_max(zone->window / limit, 1);

    *burst = zone->burst;
    *delay = zone->delay;

    if (zone->algorithm != NGX_HTTP_AAI_RL_GCRA) {
        *burst += limit - 1;
        *delay += limit - 1;
    }

    *burst = ngx_min(*burst, NGX_HTTP_AAI_RL_MAX_AHEAD / period);
    *delay = ngx_min(*delay, *burst);

    return period;
}


/* with the shared memory mutex held */

static ngx_http_aai_ratelimit_node_t *
ngx_http_aai_ratelimit_lookup(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_str_t *key, ngx_uint_t create)
{
    size_t                          size;
    uint32_t                        hash;
    ngx_int_t                       rc;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_http_aai_ratelimit_node_t  *lr;

    hash = ngx_crc32_short(key->data, key->len);

    node = mcf->sh->rbtree.root;
    sentinel = mcf->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        lr = (ngx_http_aai_ratelimit_node_t *) &node->color;

        rc = ngx_memn2cmp(key->data, lr->data, key->len, (size_t) lr->len);

        if (rc == 0) {
            ngx_queue_remove(&lr->queue);
            ngx_queue_insert_head(&mcf->sh->queue, &lr->queue);
            return lr;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    if (!create) {
        return NULL;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_aai_ratelimit_node_t, data)
           + key->len;

    ngx_http_aai_ratelimit_expire(mcf, 0);

    node = ngx_slab_alloc_locked(mcf->shpool, size);

    if (node == NULL) {
        ngx_http_aai_ratelimit_expire(mcf, 1);

        node = ngx_slab_alloc_locked(mcf->shpool, size);
        if (node == NULL) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "could not allocate node%s",
                          mcf->shpool->log_ctx);
            return NULL;
        }
    }

    node->key = hash;

    lr = (ngx_http_aai_ratelimit_node_t *) &node->color;

    lr->len = (u_short) key->len;
    lr->blocked = 0;
    lr->expire = ngx_current_msec;
    lr->reset = 0;
    lr->tat = 0;

    ngx_memcpy(lr->data, key->data, key->len);

    ngx_rbtree_insert(&mcf->sh->rbtree, node);

    ngx_queue_insert_head(&mcf->sh->queue, &lr->queue);

    return lr;
}


/*
 * Frees up to two least recently used nodes that carry no state any more;
 * with "force", the least recently used node whatever its state, first.
 */

static void
ngx_http_aai_ratelimit_expire(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_uint_t force)
{
    ngx_uint_t                      n;
    ngx_queue_t                    *q;
    ngx_msec_t                      now;
    ngx_rbtree_node_t              *node;
    ngx_http_aai_ratelimit_node_t  *lr;

    now = ngx_current_msec;

    for (n = 0; n < 3; n++) {

        if (ngx_queue_empty(&mcf->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&mcf->sh->queue);

        lr = ngx_queue_data(q, ngx_http_aai_ratelimit_node_t, queue);

        if (!(force && n == 0)
            && (ngx_msec_int_t) (now - lr->expire) < 0)
        {
            return;
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) lr - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&mcf->sh->rbtree, node);

        ngx_slab_free_locked(mcf->shpool, node);
    }
}


static void
ngx_http_aai_ratelimit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t              **p;
    ngx_http_aai_ratelimit_node_t   *lrn, *lrnt;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            lrn = (ngx_http_aai_ratelimit_node_t *) &node->color;
            lrnt = (ngx_http_aai_ratelimit_node_t *) &temp->color;

            p = (ngx_memn2cmp(lrn->data, lrnt->data, lrn->len, lrnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_int_t
ngx_http_aai_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_aai_ratelimit_main_conf_t  *omcf = data;

    size_t                               len;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = shm_zone->data;

    if (omcf) {
        mcf->sh = omcf->sh;
        mcf->shpool = omcf->shpool;
        return NGX_OK;
    }

    mcf->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        mcf->sh = mcf->shpool->data;
        return NGX_OK;
    }

    mcf->sh = ngx_slab_alloc(mcf->shpool,
                             sizeof(ngx_http_aai_ratelimit_shctx_t));
    if (mcf->sh == NULL) {
        return NGX_ERROR;
    }

    mcf->shpool->data = mcf->sh;

    ngx_rbtree_init(&mcf->sh->rbtree, &mcf->sh->sentinel,
                    ngx_http_aai_ratelimit_rbtree_insert_value);

    ngx_queue_init(&mcf->sh->queue);

    len = sizeof(" in aai_ratelimit zone \"\"") + shm_zone->shm.name.len;

    mcf->shpool->log_ctx = ngx_slab_alloc(mcf->shpool, len);
    if (mcf->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(mcf->shpool->log_ctx, " in aai_ratelimit zone \"%V\"%Z",
                &shm_zone->shm.name);

    mcf->shpool->log_nomem = 0;

    return NGX_OK;
}


/*
 * aai_ratelimit_admin reset a key (Redis answered the DEL): this instance's
 * blocklist and local fallback forget it, in every worker (the shared
 * memory), and for a while a rejection of a request asked before the reset
 * (its reply late, on another connection or in another worker) does not
 * put it back.
 */

void
ngx_http_aai_ratelimit_unblock(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key)
{
    ngx_str_t                       local;
    ngx_http_aai_ratelimit_node_t  *node;

    if (mcf->shpool == NULL) {
        return;
    }

    /* the Redis key without the prefix, as ngx_http_aai_ratelimit_local_key */

    local.data = key->data + zone->prefix.len - zone->name.len - 1;
    local.len = key->len - (zone->prefix.len - zone->name.len - 1);

    ngx_shmtx_lock(&mcf->shpool->mutex);

    node = ngx_http_aai_ratelimit_lookup(mcf, &local, 1);

    if (node) {
        node->blocked = 0;
        node->tat = 0;
        node->reset = ngx_current_msec;

        if ((ngx_msec_int_t) (node->reset + NGX_HTTP_AAI_RL_RESET_KEEP
                              - node->expire) > 0)
        {
            node->expire = node->reset + NGX_HTTP_AAI_RL_RESET_KEEP;
        }
    }

    ngx_shmtx_unlock(&mcf->shpool->mutex);
}

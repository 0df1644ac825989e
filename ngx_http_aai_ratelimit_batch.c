
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the requests of one event loop iteration
 * wait in a batch, sent as one EVALSHA of the script when the iteration's
 * posted events run; the reply is dispatched to them, or a failure sends
 * each to its fallback.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static ngx_int_t ngx_http_aai_ratelimit_enqueue_open(
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_http_aai_ratelimit_batch_t **open,
    ngx_int_t cslot, ngx_int_t cnode);
static void ngx_http_aai_ratelimit_batch_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_aai_ratelimit_xslot_error(
    ngx_http_aai_ratelimit_batch_t *b, redisReply *reply);
static void ngx_http_aai_ratelimit_batch_slots(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_int_t ngx_http_aai_ratelimit_batch_send(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_uint_t ngx_http_aai_ratelimit_batch_keys(
    ngx_http_aai_ratelimit_batch_t *b, ngx_str_t *argv, u_short *occ);
static ngx_http_aai_ratelimit_bkey_t *ngx_http_aai_ratelimit_batch_key(
    ngx_str_t *key, ngx_uint_t stamp);
static ngx_uint_t ngx_http_aai_ratelimit_def(void *z,
    ngx_http_aai_ratelimit_zreq_t *zr, ngx_str_t **a, ngx_uint_t *ndefs,
    ngx_uint_t costs);
static void ngx_http_aai_ratelimit_reply_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_int_t ngx_http_aai_ratelimit_check_reply(
    ngx_http_aai_ratelimit_batch_t *b, redisReply *reply);
static size_t ngx_http_aai_ratelimit_reply_len(
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e);
static void ngx_http_aai_ratelimit_parse(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e);
static void ngx_http_aai_ratelimit_batch_fail(
    ngx_http_aai_ratelimit_batch_t *b, ngx_uint_t reason, const char *error,
    redisReply *reply);
static void ngx_http_aai_ratelimit_flush_slots(
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static void ngx_http_aai_ratelimit_batch_close(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_http_aai_ratelimit_batch_t *ngx_http_aai_ratelimit_batch_get(
    ngx_http_aai_ratelimit_main_conf_t *mcf);
static void ngx_http_aai_ratelimit_batch_free(
    ngx_http_aai_ratelimit_batch_t *b);
static void ngx_http_aai_ratelimit_batch_again(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_int_t ngx_http_aai_ratelimit_fcall_error(
    ngx_http_aai_ratelimit_batch_t *b, redisReply *reply);
static void ngx_http_aai_ratelimit_load_handler(ngx_aai_redis_result_t *res,
    void *data);
static ngx_uint_t ngx_http_aai_ratelimit_fn_node(
    ngx_http_aai_ratelimit_batch_t *b);
static ngx_uint_t ngx_http_aai_ratelimit_fn_refused(
    ngx_http_aai_ratelimit_batch_t *b, redisReply *reply);


static ngx_str_t  ngx_http_aai_ratelimit_evalsha = ngx_string("EVALSHA");
static ngx_str_t  ngx_http_aai_ratelimit_eval = ngx_string("EVAL");
static ngx_str_t  ngx_http_aai_ratelimit_fcall = ngx_string("FCALL");


/* per worker: the batch sequence number */
static ngx_uint_t  ngx_http_aai_ratelimit_seq;

/* per worker: the batch being filled, those in flight, spare ones */
static ngx_http_aai_ratelimit_batch_t  *ngx_http_aai_ratelimit_open;
/* on a cluster: the batch being filled per slot */
static ngx_http_aai_ratelimit_batch_t **ngx_http_aai_ratelimit_copen;
/* on a cluster: the batch being filled per node (several slots) */
static ngx_http_aai_ratelimit_batch_t  *ngx_http_aai_ratelimit_nopen[
                                                NGX_AAI_REDIS_CLUSTER_NODES];
/* per worker: the cluster refused the per node script (Redis < 7) */
static ngx_uint_t                       ngx_http_aai_ratelimit_xoff;
/*
 * per worker: the server (0) or the cluster node (1 + its index) refused
 * functions (Redis < 7, or FCALL or FUNCTION denied): EVALSHA there
 */
static u_char                           ngx_http_aai_ratelimit_nofn[
                                            NGX_AAI_REDIS_CLUSTER_NODES + 1];
/* per worker: a FUNCTION LOAD failed, logged; cleared by one that works */
static ngx_uint_t                       ngx_http_aai_ratelimit_load_failed;
static ngx_queue_t                      ngx_http_aai_ratelimit_flight;
static ngx_queue_t                      ngx_http_aai_ratelimit_spare;
static ngx_uint_t                       ngx_http_aai_ratelimit_nspare;

/* per worker: where a batch's command is built, reused by the next one */
static ngx_str_t   ngx_http_aai_ratelimit_argv[3 + NGX_HTTP_AAI_RL_BATCH
                                               + 2 + NGX_HTTP_AAI_RL_BATCH
                                                 * NGX_HTTP_AAI_RL_DEF_ARGS
                                               + 1];
static u_char      ngx_http_aai_ratelimit_layout[NGX_HTTP_AAI_RL_BATCH
                                         * (5 + NGX_HTTP_AAI_RL_MEMBER_MAX)];
static ngx_http_aai_ratelimit_bkey_t
                   ngx_http_aai_ratelimit_bkeys[NGX_HTTP_AAI_RL_KEYS_HASH];


/*
 * The request waits in the batch of this event loop iteration, which is
 * sent when the iteration's posted events run.  While Redis is known to
 * be down the caller decides at once.
 */

ngx_int_t
ngx_http_aai_ratelimit_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);

    if (!ngx_aai_redis_available(mcf->redis)) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai_ratelimit Redis unavailable, not queued");
        return NGX_ERROR;
    }

    if (mcf->redis_conf.cluster) {
        return ngx_http_aai_ratelimit_cluster_enqueue(r, mcf, ctx);
    }

    return ngx_http_aai_ratelimit_enqueue_in(mcf, ctx, -1);
}


/*
 * In the batch being filled, on a cluster the one of the request's slot
 * (cslot; -1: not a cluster).
 */

ngx_int_t
ngx_http_aai_ratelimit_enqueue_in(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_int_t cslot)
{
    ngx_http_aai_ratelimit_batch_t  **open;

    if (cslot < 0) {
        open = &ngx_http_aai_ratelimit_open;

    } else {
        if (ngx_http_aai_ratelimit_copen == NULL) {
            ngx_http_aai_ratelimit_copen = ngx_calloc(
                          NGX_AAI_REDIS_CLUSTER_SLOTS
                          * sizeof(ngx_http_aai_ratelimit_batch_t *),
                          ngx_cycle->log);
            if (ngx_http_aai_ratelimit_copen == NULL) {
                return NGX_ERROR;
            }
        }

        open = &ngx_http_aai_ratelimit_copen[cslot];
    }

    return ngx_http_aai_ratelimit_enqueue_open(mcf, ctx, open, cslot, -1);
}


/*
 * On a cluster: in the batch being filled for the node that serves the
 * slots of all the keys of ctx (a request, or a part of one in a slot),
 * checked with the per node script; else, when ctx is in one slot (cslot
 * >= 0), in the batch of its slot; NGX_DECLINED when its keys are in
 * several slots not known to be of one node.
 */

ngx_int_t
ngx_http_aai_ratelimit_enqueue_node(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_int_t cslot)
{
    ngx_int_t   node, n;
    ngx_uint_t  i;

    node = NGX_DECLINED;

    for (i = 0; !ngx_http_aai_ratelimit_xoff && i < ctx->nzones; i++) {
        n = ngx_aai_redis_slot_node(mcf->redis,
                                 ngx_aai_redis_cluster_slot(ctx->keys[i].data,
                                                            ctx->keys[i].len));

        if (n < 0 || n >= NGX_AAI_REDIS_CLUSTER_NODES
            || (i > 0 && n != node))
        {
            node = NGX_DECLINED;
            break;
        }

        node = n;
    }

    if (node >= 0) {
        return ngx_http_aai_ratelimit_enqueue_open(mcf, ctx,
                                          &ngx_http_aai_ratelimit_nopen[node],
                                          -1, node);
    }

    if (cslot < 0) {
        return NGX_DECLINED;
    }

    return ngx_http_aai_ratelimit_enqueue_in(mcf, ctx, cslot);
}


static ngx_int_t
ngx_http_aai_ratelimit_enqueue_open(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_http_aai_ratelimit_batch_t **open,
    ngx_int_t cslot, ngx_int_t cnode)
{
    ngx_http_aai_ratelimit_slot_t   *slot;
    ngx_http_aai_ratelimit_batch_t  *b;

    b = *open;

    if (b && b->nzones + ctx->nzones > NGX_HTTP_AAI_RL_BATCH) {

        /* full: it is sent as posted, the next requests fill another */

        *open = NULL;
        b = NULL;
    }

    if (b == NULL) {
        b = ngx_http_aai_ratelimit_batch_get(mcf);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->cslot = cslot;
        b->cnode = cnode;
        *open = b;
        ngx_post_event(&b->event, &ngx_posted_events);
    }

    slot = &b->slots[b->nslots];

    slot->ctx = ctx;
    slot->nzones = (u_char) ctx->nzones;
    slot->fast = 0;
    slot->sent = 0;

    ctx->batch = b;
    ctx->slot = b->nslots++;

    b->nzones += ctx->nzones;
    b->costs |= ctx->costs;
    b->conc |= ctx->conc;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "aai_ratelimit queued in batch %p as request %ui, "
                   "%ui zones of %ui",
                   b, ctx->slot + 1, ctx->nzones, b->nzones);

    return NGX_OK;
}


static void
ngx_http_aai_ratelimit_batch_handler(ngx_event_t *ev)
{
    ngx_int_t                        rc;
    ngx_http_aai_ratelimit_batch_t  *b;

    b = ev->data;

    ngx_http_aai_ratelimit_batch_close(b);

    /* a batch of a node takes the charges of its slots */

    b->nzones += ngx_http_aai_ratelimit_charge_take(&b->charges,
                                             NGX_HTTP_AAI_RL_BATCH - b->nzones,
                                             b->cnode >= 0
                                             ? NGX_AAI_REDIS_CLUSTER_SLOTS
                                               + b->cnode
                                             : b->cslot);

    if (ngx_http_aai_ratelimit_charge_costs(&b->charges)) {
        b->costs = 1;
    }

    rc = ngx_http_aai_ratelimit_batch_send(b);

    if (rc == NGX_DECLINED) {

        /* every request of the batch went away */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "aai_ratelimit batch %p not sent: its requests are gone",
                       b);

        ngx_http_aai_ratelimit_batch_free(b);
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                          "unavailable", NULL);
    }
}


/*
 * FCALL function numkeys key... layout trim
 *       (algorithm limit window burst delay)...
 *
 * for the requests of the batch that are still there; NGX_DECLINED when
 * there are none.  EVALSHA sha (or EVAL script) where Redis refuses
 * functions, EVAL after NOSCRIPT or a function not found again.
 */

static ngx_int_t
ngx_http_aai_ratelimit_batch_send(ngx_http_aai_ratelimit_batch_t *b)
{
    u_char                              *p;
    ngx_str_t                           *argv, *a;
    ngx_uint_t                           i, j, k, o, nkeys, ndefs, shared;
    ngx_http_aai_ratelimit_ctx_t        *ctx;
    ngx_http_aai_ratelimit_slot_t       *slot;
    ngx_http_aai_ratelimit_bkey_t       *bk;
    ngx_str_t                            lease;
    ngx_uint_t                           ri;
    ngx_queue_t                         *q;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_zreq_t        zr;
    ngx_http_aai_ratelimit_charge_t     *ch;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;
    u_short                              occ[NGX_HTTP_AAI_RL_BATCH];

    static u_char  num[2 * NGX_INT_T_LEN];
    static u_char  flag[1 + NGX_INT_T_LEN * 4 + 4];

    mcf = b->mcf;
    argv = ngx_http_aai_ratelimit_argv;

    ngx_http_aai_ratelimit_seq++;

    nkeys = ngx_http_aai_ratelimit_batch_keys(b, argv, occ);

    if (nkeys == 0) {
        return NGX_DECLINED;
    }

    /* the layout: per request its zones, per zone its definition and key */

    p = ngx_http_aai_ratelimit_layout;
    a = &argv[3 + nkeys + 2];
    ndefs = 0;
    o = 0;

    if (b->conc) {
        ngx_http_aai_ratelimit_lease_prefix(ngx_http_aai_ratelimit_seq,
                                            &lease);
    }

    ri = 0;

    /*
     * charges and releases first: a usage spent, a lease given back,
     * before these requests
     */

    for (q = ngx_queue_head(&b->charges);
         q != ngx_queue_sentinel(&b->charges);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);
        bk = &ngx_http_aai_ratelimit_bkeys[occ[o++]];

        *p++ = 0;

        if (ch->zone == NULL) {

            /* a release: definition 0, the key, the member's length, it */

            *p++ = 0;
            *p++ = (u_char) ((bk->index >> 8) | (bk->uses > 1 ? 0x80 : 0));
            *p++ = (u_char) (bk->index & 0xff);
            *p++ = (u_char) ch->member.len;
            p = ngx_cpymem(p, ch->member.data, ch->member.len);
            continue;
        }

        zr.limit = ch->limit;
        zr.cost = ch->amount;

        *p++ = (u_char) ngx_http_aai_ratelimit_def(ch->zone, &zr, &a,
                                                   &ndefs, 1);
        *p++ = (u_char) ((bk->index >> 8) | (bk->uses > 1 ? 0x80 : 0));
        *p++ = (u_char) (bk->index & 0xff);
    }

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        ctx = slot->ctx;
        *p++ = slot->nzones;

        ri++;

        if (ctx->conc
            && ngx_http_aai_ratelimit_lease_member(ctx->request->pool, &lease,
                                                   ri, &ctx->lease)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (j = 0; j < ctx->nzones; j++) {
            zone = ctx->zones[j];
            bk = &ngx_http_aai_ratelimit_bkeys[occ[o++]];

            shared = (bk->uses > 1);

            *p++ = (u_char) ngx_http_aai_ratelimit_def(zone,
                                                       &ctx->zreq[j], &a,
                                                       &ndefs, b->costs);
            *p++ = (u_char) ((bk->index >> 8) | (shared ? 0x80 : 0));
            *p++ = (u_char) (bk->index & 0xff);

            slot->fast = (ctx->nzones == 1 && zone->fast && !shared
                          && ctx->zreq[j].cost == 1
                          && ctx->zreq[j].shadow == 0);
        }
    }

    b->fcall = 0;

    if (b->eval) {
        argv[0] = ngx_http_aai_ratelimit_eval;
        argv[1] = (b->cnode >= 0) ? ngx_http_aai_ratelimit_xscript_text
                                  : ngx_http_aai_ratelimit_script_text;

    } else if (!ngx_http_aai_ratelimit_nofn[
                                      ngx_http_aai_ratelimit_fn_node(b)])
    {
        argv[0] = ngx_http_aai_ratelimit_fcall;
        argv[1] = (b->cnode >= 0) ? mcf->xfname : mcf->fname;
        b->fcall = 1;

        /* where a FUNCTION LOAD goes if the node lacks the function */

        b->fslot = (b->cnode >= 0)
                   ? (ngx_int_t) ngx_aai_redis_cluster_slot(argv[3].data,
                                                            argv[3].len)
                   : b->cslot;

    } else {
        argv[0] = ngx_http_aai_ratelimit_evalsha;
        argv[1] = (b->cnode >= 0) ? mcf->xsha : mcf->sha;
    }

    argv[2].data = num;
    argv[2].len = ngx_sprintf(num, "%ui", nkeys) - num;

    if (b->cnode >= 0) {

        /*
         * the per node script: the first key declared (it routes the
         * command), the others first in ARGV, their number last
         */

        ngx_str_set(&argv[2], "1");
        a->data = num + 1;
        a->len = ngx_sprintf(num + 1, "%ui", nkeys - 1) - (num + 1);
        a++;
    }

    k = 3 + nkeys;

    argv[k].data = ngx_http_aai_ratelimit_layout;
    argv[k].len = p - ngx_http_aai_ratelimit_layout;

    /*
     * "2" and "3": the definitions have a sixth argument, the cost; then
     * the prefix of the batch's leases
     */

    flag[0] = "0123"[b->costs * 2
                     + !(ngx_http_aai_ratelimit_seq % NGX_HTTP_AAI_RL_TRIM)];

    argv[k + 1].data = flag;
    argv[k + 1].len = 1;

    if (b->conc) {
        argv[k + 1].len = ngx_cpymem(flag + 1, lease.data, lease.len) - flag;
    }

    b->cmd = ngx_aai_redis_send(mcf->redis, ngx_cycle->log, a - argv, argv,
                                ngx_http_aai_ratelimit_reply_handler, b);
    if (b->cmd == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight, &b->queue);

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_ratelimit batch %p sent: %V, %ui requests, "
                   "%ui keys, %ui definitions",
                   b, &argv[0], b->nslots, nkeys, ndefs);

    return NGX_OK;
}


/*
 * The definition (1-based) of a zone in the batch being built, its
 * arguments added at *a when new: the zone's own for its limit and a cost
 * of 1, one per other limit and cost (count= and cost=, charge=).  Only a
 * batch with costs sends the sixth argument: without count=, cost= and
 * charge= the command is what it was before them.
 */

static ngx_uint_t
ngx_http_aai_ratelimit_def(void *z, ngx_http_aai_ratelimit_zreq_t *zr,
    ngx_str_t **a, ngx_uint_t *ndefs, ngx_uint_t costs)
{
    u_char                         *p;
    ngx_str_t                      *v;
    ngx_uint_t                      i, nargs;
    ngx_http_aai_ratelimit_zone_t  *zone;

    static ngx_uint_t  stamp, n;
    static struct {
        void                       *zone;
        ngx_uint_t                  limit;
        ngx_uint_t                  cost;
        ngx_uint_t                  shadow;
        ngx_uint_t                  def;
        u_char                      num[2 * NGX_INT_T_LEN + 1];
    }  defs[NGX_HTTP_AAI_RL_BATCH];

    zone = z;
    v = *a;

    if (zr->limit == zone->limit && zr->cost == 1 && zr->shadow == 0) {

        if (zone->stamp != ngx_http_aai_ratelimit_seq) {
            zone->stamp = ngx_http_aai_ratelimit_seq;
            zone->def = ++*ndefs;

            nargs = costs ? NGX_HTTP_AAI_RL_DEF_ARGS
                          : NGX_HTTP_AAI_RL_ZONE_ARGS;

            for (i = 0; i < nargs; i++) {
                v[i] = zone->args[i];
            }

            *a = v + nargs;
        }

        return zone->def;
    }

    if (stamp != ngx_http_aai_ratelimit_seq) {
        stamp = ngx_http_aai_ratelimit_seq;
        n = 0;
    }

    for (i = 0; i < n; i++) {
        if (defs[i].zone == z && defs[i].limit == zr->limit
            && defs[i].cost == zr->cost && defs[i].shadow == zr->shadow)
        {
            return defs[i].def;
        }
    }

    /* never full: a batch has at most as many definitions as zones */

    defs[n].zone = z;
    defs[n].limit = zr->limit;
    defs[n].cost = zr->cost;
    defs[n].shadow = zr->shadow;
    defs[n].def = ++*ndefs;

    for (i = 0; i < NGX_HTTP_AAI_RL_DEF_ARGS; i++) {
        v[i] = zone->args[i];
    }

    p = defs[n].num;

    v[1].data = p;
    p = ngx_sprintf(p, "%ui", zr->limit);
    v[1].len = p - v[1].data;

    /* the cost, "s" for a shadow zone, "n" for one that spends nothing */

    v[5].data = p;
    p = ngx_sprintf(p, "%ui%s", zr->cost,
                    zr->shadow == 2 ? "n" : zr->shadow ? "s" : "");
    v[5].len = p - v[5].data;

    *a = v + NGX_HTTP_AAI_RL_DEF_ARGS;

    return defs[n++].def;
}


/*
 * The charges waiting in this worker go with a batch of their own (the
 * timer of ngx_http_aai_ratelimit_ai.c calls it when no request sent one).
 */

void
ngx_http_aai_ratelimit_flush(void)
{
    ngx_queue_t                          q;
    ngx_http_aai_ratelimit_batch_t      *b;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_aai_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL || ngx_http_aai_ratelimit_open) {
        return;
    }

    if (!ngx_aai_redis_available(mcf->redis)) {

        /* a try each: Redis down for long loses them, counted */

        ngx_queue_init(&q);
        (void) ngx_http_aai_ratelimit_charge_take(&q, NGX_MAX_UINT32_VALUE,
                                                  -1);
        ngx_http_aai_ratelimit_charge_done(&q, NGX_ERROR);
        return;
    }

    if (mcf->redis_conf.cluster) {
        ngx_http_aai_ratelimit_flush_slots(mcf);
        return;
    }

    b = ngx_http_aai_ratelimit_batch_get(mcf);
    if (b == NULL) {
        return;
    }

    ngx_http_aai_ratelimit_open = b;
    ngx_post_event(&b->event, &ngx_posted_events);
}


/* on a cluster: a batch for each slot of the charges waiting, if none is */

static void
ngx_http_aai_ratelimit_flush_slots(ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_int_t                        node;
    ngx_uint_t                       i, n;
    ngx_http_aai_ratelimit_batch_t  *b;
    ngx_uint_t                       slots[16];

    n = ngx_http_aai_ratelimit_charge_slots(slots, 16);

    for (i = 0; i < n; i++) {

        if (ngx_http_aai_ratelimit_copen
            && ngx_http_aai_ratelimit_copen[slots[i]])
        {
            continue;
        }

        /*
         * the batch of its node takes it (the script the node's requests
         * use: a release is not delayed behind a NOSCRIPT of the other)
         */

        node = ngx_http_aai_ratelimit_xoff
               ? NGX_DECLINED
               : ngx_aai_redis_slot_node(mcf->redis, slots[i]);

        if (node >= NGX_AAI_REDIS_CLUSTER_NODES) {
            node = NGX_DECLINED;
        }

        if (node >= 0 && ngx_http_aai_ratelimit_nopen[node]) {
            continue;
        }

        b = ngx_http_aai_ratelimit_batch_get(mcf);
        if (b == NULL) {
            return;
        }

        if (node >= 0) {
            b->cnode = node;
            ngx_http_aai_ratelimit_nopen[node] = b;

        } else {
            b->cslot = slots[i];
        }

        ngx_post_event(&b->event, &ngx_posted_events);
    }
}


/*
 * The distinct keys of the requests still there, in argv from argv[3],
 * and where each zone of each request finds its key; returns their number.
 */

static ngx_uint_t
ngx_http_aai_ratelimit_batch_keys(ngx_http_aai_ratelimit_batch_t *b,
    ngx_str_t *argv, u_short *occ)
{
    ngx_uint_t                        i, j, o, nkeys;
    ngx_queue_t                      *q;
    ngx_http_aai_ratelimit_ctx_t     *ctx;
    ngx_http_aai_ratelimit_slot_t    *slot;
    ngx_http_aai_ratelimit_bkey_t    *bk;
    ngx_http_aai_ratelimit_charge_t  *ch;

    nkeys = 0;
    o = 0;

    for (q = ngx_queue_head(&b->charges);
         q != ngx_queue_sentinel(&b->charges);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);

        bk = ngx_http_aai_ratelimit_batch_key(&ch->key,
                                              ngx_http_aai_ratelimit_seq);

        if (bk->uses++ == 0) {
            bk->index = ++nkeys;
            argv[2 + nkeys] = ch->key;
        }

        occ[o++] = (u_short) (bk - ngx_http_aai_ratelimit_bkeys);
    }

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];
        ctx = slot->ctx;

        slot->sent = (ctx != NULL);

        if (ctx == NULL) {
            continue;
        }

        for (j = 0; j < ctx->nzones; j++) {
            bk = ngx_http_aai_ratelimit_batch_key(&ctx->keys[j],
                                                  ngx_http_aai_ratelimit_seq);

            if (bk->uses++ == 0) {
                bk->index = ++nkeys;
                argv[2 + nkeys] = ctx->keys[j];
            }

            occ[o++] = (u_short) (bk - ngx_http_aai_ratelimit_bkeys);
        }
    }

    return nkeys;
}


/* a key in the table of this batch's keys (never full: twice the zones) */

static ngx_http_aai_ratelimit_bkey_t *
ngx_http_aai_ratelimit_batch_key(ngx_str_t *key, ngx_uint_t stamp)
{
    uint32_t                        hash;
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_bkey_t  *bk;

    hash = (uint32_t) ngx_hash_key(key->data, key->len);

    for (i = hash; /* void */; i++) {
        bk = &ngx_http_aai_ratelimit_bkeys[i & (NGX_HTTP_AAI_RL_KEYS_HASH - 1)];

        if (bk->stamp != stamp) {
            bk->stamp = stamp;
            bk->key = key;
            bk->hash = hash;
            bk->uses = 0;
            bk->index = 0;
            return bk;
        }

        if (bk->hash == hash
            && bk->key->len == key->len
            && ngx_memcmp(bk->key->data, key->data, key->len) == 0)
        {
            return bk;
        }
    }
}


static void
ngx_http_aai_ratelimit_reply_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_ratelimit_batch_t *b = data;

    size_t                               len;
    ngx_uint_t                           i, reason;
    redisReply                          *reply, **e;
    ngx_http_request_t                  *r;
    ngx_http_aai_ratelimit_ctx_t        *ctx;
    ngx_http_aai_ratelimit_slot_t       *slot;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    mcf = b->mcf;

    b->cmd = NULL;
    ngx_queue_remove(&b->queue);

    reply = res->reply;

    if (reply == NULL) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit batch %p failed: %s",
                       b, res->error ? res->error : "error");

        reason = (res->error && ngx_strncmp(res->error, "timeout", 7) == 0)
                 ? NGX_HTTP_AAI_RL_E_TIMEOUT : NGX_HTTP_AAI_RL_E_UNAVAILABLE;

        ngx_http_aai_ratelimit_batch_fail(b, reason,
                                          res->error ? res->error : "error",
                                          NULL);
        return;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_ratelimit batch %p reply: type %d, %uz elements, "
                   "%ui us", b, reply->type, reply->elements, res->latency_us);

    ngx_aai_metrics_observe(mcf->metrics, mcf->latency, res->latency_us);

    if (b->fcall
        && reply->type == REDIS_REPLY_ERROR
        && reply->str != NULL
        && ngx_http_aai_ratelimit_fcall_error(b, reply) == NGX_OK)
    {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
        && !b->eval)
    {
        /* Redis restarted or flushed its scripts: EVAL loads it again */

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit: NOSCRIPT, sending the script");

        b->eval = 1;

        ngx_http_aai_ratelimit_batch_again(b);
        return;
    }

    if (b->cnode >= 0 && ngx_http_aai_ratelimit_xslot_error(b, reply)) {
        ngx_http_aai_ratelimit_batch_slots(b);
        return;
    }

    if (ngx_http_aai_ratelimit_check_reply(b, reply) != NGX_OK) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit batch %p: unexpected reply", b);

        ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_REPLY,
                                          "unexpected reply", reply);
        return;
    }

    e = reply->element;

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        len = ngx_http_aai_ratelimit_reply_len(slot, e);
        ctx = slot->ctx;

        if (ctx && ctx->cluster && ctx->cluster->parent) {
            slot->ctx = NULL;
            ctx->batch = NULL;

            ngx_http_aai_ratelimit_parse(ctx, slot, e);
            ngx_http_aai_ratelimit_part_done(ctx, 0, NULL);

        } else if (ctx) {
            slot->ctx = NULL;
            ctx->batch = NULL;

            r = ctx->request;
            ngx_http_set_log_request(r->connection->log, r);

            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "aai_ratelimit reply of batch %p for request %ui: "
                           "%uz values", b, i + 1, len);

            ngx_http_aai_ratelimit_parse(ctx, slot, e);
            ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_REDIS);

            if (ctx->conc && !ctx->rejected) {
                ngx_http_aai_ratelimit_leased(ctx, mcf);
            }

            ngx_http_aai_ratelimit_resume(ctx);
        }

        e += len;
    }

    ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_OK);

    ngx_http_aai_ratelimit_lease_orphans(&b->orphans, 0);

    ngx_http_aai_ratelimit_batch_free(b);
}


/* the batch sent again, its command chosen again */

static void
ngx_http_aai_ratelimit_batch_again(ngx_http_aai_ratelimit_batch_t *b)
{
    ngx_int_t  rc;

    rc = ngx_http_aai_ratelimit_batch_send(b);

    if (rc == NGX_OK) {
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_aai_ratelimit_batch_free(b);
        return;
    }

    ngx_http_aai_ratelimit_batch_fail(b, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                      "unavailable", NULL);
}


/*
 * An FCALL's error: the function not found (a new or flushed Redis, a
 * failover to a node without it) loads the library on the node
 * (FUNCTION LOAD REPLACE), then the batch is sent again; not found once
 * more, the batch is sent with EVAL.  FCALL refused (Redis < 7, renamed,
 * denied to the user): EVALSHA on that node from then on.  NGX_DECLINED:
 * another error, the batch's own.
 */

static ngx_int_t
ngx_http_aai_ratelimit_fcall_error(ngx_http_aai_ratelimit_batch_t *b,
    redisReply *reply)
{
    ngx_str_t  argv[4];

    if (ngx_http_aai_ratelimit_fn_refused(b, reply)) {
        ngx_http_aai_ratelimit_batch_again(b);
        return NGX_OK;
    }

    if (reply->len < sizeof("ERR Function not found") - 1
        || ngx_strncmp(reply->str, "ERR Function not found",
                       sizeof("ERR Function not found") - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    if (b->loaded) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit: function not found after its load, "
                       "sending the script");
        b->eval = 1;
        ngx_http_aai_ratelimit_batch_again(b);
        return NGX_OK;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "aai_ratelimit: function not found, loading library %V",
                   &b->mcf->fname);

    b->loaded = 1;

    ngx_str_set(&argv[0], "FUNCTION");
    ngx_str_set(&argv[1], "LOAD");
    ngx_str_set(&argv[2], "REPLACE");
    argv[3] = b->mcf->library;

    b->cmd = ngx_aai_redis_send_slot(b->mcf->redis, ngx_cycle->log, b->fslot,
                                     4, argv,
                                     ngx_http_aai_ratelimit_load_handler, b);
    if (b->cmd == NULL) {
        b->eval = 1;
        ngx_http_aai_ratelimit_batch_again(b);
        return NGX_OK;
    }

    ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight, &b->queue);

    return NGX_OK;
}


/* the reply to FUNCTION LOAD: the batch sent again */

static void
ngx_http_aai_ratelimit_load_handler(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_ratelimit_batch_t *b = data;

    redisReply  *reply;

    reply = res->reply;

    if (reply == NULL) {
        /* timeout, connection lost: the batch fails as its FCALL would */
        ngx_http_aai_ratelimit_reply_handler(res, b);
        return;
    }

    b->cmd = NULL;
    ngx_queue_remove(&b->queue);

    if (reply->type != REDIS_REPLY_ERROR) {
        ngx_http_aai_ratelimit_load_failed = 0;

    } else if (!ngx_http_aai_ratelimit_fn_refused(b, reply)) {

        /* OOM, a busy script...: logged once until a load works */

        if (!ngx_http_aai_ratelimit_load_failed) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "aai_ratelimit: FUNCTION LOAD of library \"%V\" "
                          "failed, sending the script: %*s", &b->mcf->fname,
                          (size_t) reply->len, reply->str ? reply->str : "");
        }

        ngx_http_aai_ratelimit_load_failed = 1;
        b->eval = 1;
    }

    ngx_http_aai_ratelimit_batch_again(b);
}


/* the index in ngx_http_aai_ratelimit_nofn of the batch's server or node */

static ngx_uint_t
ngx_http_aai_ratelimit_fn_node(ngx_http_aai_ratelimit_batch_t *b)
{
    ngx_int_t  node;

    if (b->cnode >= 0) {
        return b->cnode + 1;
    }

    if (b->cslot >= 0) {
        node = ngx_aai_redis_slot_node(b->mcf->redis, b->cslot);

        if (node >= 0 && node < NGX_AAI_REDIS_CLUSTER_NODES) {
            return node + 1;
        }
    }

    return 0;
}


/*
 * 1 when the error is Redis refusing FCALL or FUNCTION (an unknown
 * command: Redis < 7 or renamed; NOPERM: the user's ACL): the batch's
 * server or node is sent EVALSHA from then on (logged once).
 */

static ngx_uint_t
ngx_http_aai_ratelimit_fn_refused(ngx_http_aai_ratelimit_batch_t *b,
    redisReply *reply)
{
    ngx_uint_t  n;

    if (reply->str == NULL
        || !((reply->len >= sizeof("ERR unknown command") - 1
              && ngx_strncasecmp((u_char *) reply->str,
                                 (u_char *) "ERR unknown command",
                                 sizeof("ERR unknown command") - 1)
                 == 0)
             || (reply->len >= 6
                 && ngx_strncmp(reply->str, "NOPERM", 6) == 0)))
    {
        return 0;
    }

    n = ngx_http_aai_ratelimit_fn_node(b);

    if (!ngx_http_aai_ratelimit_nofn[n]) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "aai_ratelimit: Redis refused functions (FCALL, "
                      "FUNCTION LOAD)%s, the script is sent with EVALSHA "
                      "there: %*s", n ? " on a cluster node" : "",
                      (size_t) reply->len, reply->str);
    }

    ngx_http_aai_ratelimit_nofn[n] = 1;

    return 1;
}


/*
 * A batch of a node failed before its script wrote anything: a key's slot
 * is no longer that node's (AAIXSLOT: moved, or migrating and the key has
 * left), or the command was redirected too often (MOVED, ASK, TRYAGAIN),
 * or the server refused the script's first line (Redis < 7: for good in
 * this worker).  Its requests are checked again per slot, as without it.
 */

static ngx_uint_t
ngx_http_aai_ratelimit_xslot_error(ngx_http_aai_ratelimit_batch_t *b,
    redisReply *reply)
{
    u_char  *p, *last;

    if (reply->type != REDIS_REPLY_ERROR || reply->str == NULL) {
        return 0;
    }

    p = (u_char *) reply->str;
    last = p + reply->len;

    if (ngx_strncmp(p, "AAIXSLOT ", 9) == 0
        || ngx_strncmp(p, "CROSSSLOT", 9) == 0
        || ngx_strncmp(p, "TRYAGAIN", 8) == 0
        || ngx_strncmp(p, "MOVED ", 6) == 0
        || ngx_strncmp(p, "ASK ", 4) == 0)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "aai_ratelimit batch %p of a node, per slot: %s",
                       b, reply->str);

        ngx_aai_redis_refresh(b->mcf->redis);
        return 1;
    }

    if (b->eval
        && (ngx_strlcasestrn(p, last, (u_char *) "shebang", 7 - 1) != NULL
            || ngx_strlcasestrn(p, last, (u_char *) "compiling script",
                                16 - 1)
               != NULL))
    {
        if (!ngx_http_aai_ratelimit_xoff) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "aai_ratelimit: the cluster refused the script "
                          "of several slots (Redis 7.0 or later has it), "
                          "batches are per slot: %s", reply->str);
        }

        ngx_http_aai_ratelimit_xoff = 1;
        return 1;
    }

    return 0;
}


/* each request of a batch of a node in the batch of its slot (or slots) */

static void
ngx_http_aai_ratelimit_batch_slots(ngx_http_aai_ratelimit_batch_t *b)
{
    ngx_int_t                      rc;
    ngx_uint_t                     i, j, slot, multi;
    ngx_http_request_t            *r;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    for (i = 0; i < b->nslots; i++) {
        ctx = b->slots[i].ctx;

        if (ctx == NULL) {
            continue;
        }

        b->slots[i].ctx = NULL;
        ctx->batch = NULL;

        slot = ngx_aai_redis_cluster_slot(ctx->keys[0].data,
                                          ctx->keys[0].len);
        multi = 0;

        for (j = 1; j < ctx->nzones; j++) {
            multi |= (ngx_aai_redis_cluster_slot(ctx->keys[j].data,
                                                 ctx->keys[j].len)
                      != slot);
        }

        r = ctx->request;

        /* a part of a request is in one slot; a request: split */

        rc = multi ? ngx_http_aai_ratelimit_cluster_slots(r, b->mcf, ctx)
                   : ngx_http_aai_ratelimit_enqueue_in(b->mcf, ctx, slot);

        if (rc == NGX_OK) {
            continue;
        }

        if (ctx->cluster && ctx->cluster->parent) {
            ngx_http_aai_ratelimit_part_done(ctx,
                                          NGX_HTTP_AAI_RL_E_UNAVAILABLE + 1,
                                          "no memory");
            continue;
        }

        ngx_http_set_log_request(r->connection->log, r);

        ngx_http_aai_ratelimit_fallback(r, ctx, NGX_HTTP_AAI_RL_E_UNAVAILABLE,
                                        "no memory", NULL);
        ngx_http_aai_ratelimit_resume(ctx);
    }

    ngx_http_aai_ratelimit_batch_free(b);
}


/* the reply has one record of integers per request sent, as they need */

static ngx_int_t
ngx_http_aai_ratelimit_check_reply(ngx_http_aai_ratelimit_batch_t *b,
    redisReply *reply)
{
    size_t                          k, len;
    ngx_uint_t                      i;
    redisReply                    **e;
    ngx_http_aai_ratelimit_slot_t  *slot;

    if (reply->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    e = reply->element;

    for (k = 0; k < reply->elements; k++) {
        if (e[k]->type != REDIS_REPLY_INTEGER) {
            return NGX_ERROR;
        }
    }

    k = 0;

    for (i = 0; i < b->nslots; i++) {
        slot = &b->slots[i];

        if (!slot->sent) {
            continue;
        }

        if (k >= reply->elements) {
            return NGX_ERROR;
        }

        len = ngx_http_aai_ratelimit_reply_len(slot, &e[k]);

        if (len > reply->elements - k) {
            return NGX_ERROR;
        }

        if (len == 3
            && (e[k]->integer < 1 || e[k]->integer > slot->nzones))
        {
            return NGX_ERROR;
        }

        k += len;
    }

    return (k == reply->elements) ? NGX_OK : NGX_ERROR;
}


static size_t
ngx_http_aai_ratelimit_reply_len(ngx_http_aai_ratelimit_slot_t *slot,
    redisReply **e)
{
    if ((*e)->integer == -1) {
        return 1 + NGX_HTTP_AAI_RL_ZONE_ARGS * slot->nzones;
    }

    if (slot->fast) {
        return 1;
    }

    return (slot->nzones == 1) ? 2 : 3;
}


static void
ngx_http_aai_ratelimit_parse(ngx_http_aai_ratelimit_ctx_t *ctx,
    ngx_http_aai_ratelimit_slot_t *slot, redisReply **e)
{
    long long                         v[NGX_HTTP_AAI_RL_ZONE_ARGS];
    ngx_uint_t                        i, k, top;
    ngx_http_aai_ratelimit_result_t  *res;

    res = ctx->results;

    if (e[0]->integer == -1) {
        e++;

        for (i = 0; i < ctx->nzones; i++) {

            for (k = 0; k < NGX_HTTP_AAI_RL_ZONE_ARGS; k++, e++) {
                v[k] = ngx_max((*e)->integer, 0);
            }

            res[i].rejected = v[0] ? 1 : 0;
            res[i].delay = (ngx_msec_t) v[1];
            res[i].remaining = (ngx_uint_t) v[2];
            res[i].reset = (ngx_msec_t) v[3];
            res[i].retry_after = (ngx_msec_t) v[4];
        }

        return;
    }

    if (slot->fast) {
        res[0].remaining = (ngx_uint_t) ngx_max(e[0]->integer, 0);
        res[0].reset = ctx->zones[0]->window_ms;
        return;
    }

    if (ctx->nzones == 1) {
        res[0].remaining = (ngx_uint_t) ngx_max(e[0]->integer, 0);
        res[0].reset = (ngx_msec_t) ngx_max(e[1]->integer, 0);
        return;
    }

    /*
     * All passed, none delayed: Redis named the most restrictive zone; the
     * others are made less restrictive than it for the choice of the zone
     * of the headers, which is all their values are used for.
     */

    top = (ngx_uint_t) e[0]->integer - 1;

    for (i = 0; i < ctx->nzones; i++) {
        res[i].remaining = NGX_MAX_UINT32_VALUE;
    }

    res[top].remaining = (ngx_uint_t) ngx_max(e[1]->integer, 0);
    res[top].reset = (ngx_msec_t) ngx_max(e[2]->integer, 0);
}


/* Redis failed the batch: each request of it falls back */

static void
ngx_http_aai_ratelimit_batch_fail(ngx_http_aai_ratelimit_batch_t *b,
    ngx_uint_t reason, const char *error, redisReply *reply)
{
    ngx_uint_t                     i;
    ngx_http_request_t            *r;
    ngx_http_aai_ratelimit_ctx_t  *ctx;

    /* a reply in error: the script may have run, its charges are not sent */

    ngx_http_aai_ratelimit_charge_done(&b->charges,
                                       reason == NGX_HTTP_AAI_RL_E_REPLY
                                       ? NGX_DECLINED : NGX_ERROR);

    for (i = 0; i < b->nslots; i++) {
        ctx = b->slots[i].ctx;

        if (ctx == NULL) {
            continue;
        }

        b->slots[i].ctx = NULL;
        ctx->batch = NULL;

        if (ctx->cluster && ctx->cluster->parent) {
            ngx_http_aai_ratelimit_part_done(ctx, reason + 1, error);
            continue;
        }

        r = ctx->request;
        ngx_http_set_log_request(r->connection->log, r);

        ngx_http_aai_ratelimit_fallback(r, ctx, reason, error, reply);
        ngx_http_aai_ratelimit_resume(ctx);
    }

    ngx_http_aai_ratelimit_batch_free(b);
}


void
ngx_http_aai_ratelimit_resume(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "aai_ratelimit resuming the request");

    ctx->state = NGX_HTTP_AAI_RL_DONE;
    ctx->resume = 1;

    r->read_event_handler = ngx_http_block_reading;

    /* the request may be gone after this: touch only c */

    ngx_http_core_run_phases(r);

    ngx_http_run_posted_requests(c);
}


static ngx_http_aai_ratelimit_batch_t *
ngx_http_aai_ratelimit_batch_get(ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    ngx_queue_t                     *q;
    ngx_http_aai_ratelimit_batch_t  *b;

    if (!ngx_queue_empty(&ngx_http_aai_ratelimit_spare)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_spare);
        ngx_queue_remove(q);
        ngx_http_aai_ratelimit_nspare--;

        b = ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue);

    } else {
        b = ngx_alloc(sizeof(ngx_http_aai_ratelimit_batch_t), ngx_cycle->log);
        if (b == NULL) {
            return NULL;
        }
    }

    ngx_memzero(b, offsetof(ngx_http_aai_ratelimit_batch_t, slots));

    b->mcf = mcf;
    b->cslot = -1;
    b->cnode = -1;
    ngx_queue_init(&b->charges);
    ngx_queue_init(&b->orphans);
    b->event.handler = ngx_http_aai_ratelimit_batch_handler;
    b->event.data = b;
    b->event.log = ngx_cycle->log;

    return b;
}


static void
ngx_http_aai_ratelimit_batch_free(ngx_http_aai_ratelimit_batch_t *b)
{
    ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_ERROR);

    /* a failed batch may have taken its leases too */

    ngx_http_aai_ratelimit_lease_orphans(&b->orphans, 0);

    if (b->event.posted) {
        ngx_delete_posted_event(&b->event);
    }

    ngx_http_aai_ratelimit_batch_close(b);

    if (ngx_http_aai_ratelimit_nspare >= 16) {
        ngx_free(b);
        return;
    }

    ngx_queue_insert_head(&ngx_http_aai_ratelimit_spare, &b->queue);
    ngx_http_aai_ratelimit_nspare++;
}


static void
ngx_http_aai_ratelimit_batch_close(ngx_http_aai_ratelimit_batch_t *b)
{
    if (ngx_http_aai_ratelimit_open == b) {
        ngx_http_aai_ratelimit_open = NULL;
    }

    if (b->cslot >= 0 && ngx_http_aai_ratelimit_copen
        && ngx_http_aai_ratelimit_copen[b->cslot] == b)
    {
        ngx_http_aai_ratelimit_copen[b->cslot] = NULL;
    }

    if (b->cnode >= 0 && ngx_http_aai_ratelimit_nopen[b->cnode] == b) {
        ngx_http_aai_ratelimit_nopen[b->cnode] = NULL;
    }
}


/* at worker exit: every batch, with its requests let go */

void
ngx_http_aai_ratelimit_batch_exit(void)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q;
    ngx_http_aai_ratelimit_batch_t  *b;

    if (ngx_http_aai_ratelimit_open) {
        ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight,
                              &ngx_http_aai_ratelimit_open->queue);
        ngx_http_aai_ratelimit_open = NULL;
    }

    /* on a cluster, those being filled per slot */

    if (ngx_http_aai_ratelimit_copen) {
        for (i = 0; i < NGX_AAI_REDIS_CLUSTER_SLOTS; i++) {
            if (ngx_http_aai_ratelimit_copen[i]) {
                ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight,
                                      &ngx_http_aai_ratelimit_copen[i]->queue);
            }
        }

        ngx_free(ngx_http_aai_ratelimit_copen);
        ngx_http_aai_ratelimit_copen = NULL;
    }

    /* and per node */

    for (i = 0; i < NGX_AAI_REDIS_CLUSTER_NODES; i++) {
        if (ngx_http_aai_ratelimit_nopen[i]) {
            ngx_queue_insert_tail(&ngx_http_aai_ratelimit_flight,
                                  &ngx_http_aai_ratelimit_nopen[i]->queue);
            ngx_http_aai_ratelimit_nopen[i] = NULL;
        }
    }

    while (!ngx_queue_empty(&ngx_http_aai_ratelimit_flight)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_flight);
        ngx_queue_remove(q);

        b = ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue);

        if (b->event.posted) {
            ngx_delete_posted_event(&b->event);
        }

        for (i = 0; i < b->nslots; i++) {
            if (b->slots[i].ctx) {
                b->slots[i].ctx->batch = NULL;
            }
        }

        ngx_http_aai_ratelimit_charge_done(&b->charges, NGX_ERROR);
        ngx_http_aai_ratelimit_lease_orphans(&b->orphans, 1);

        ngx_free(b);
    }

    while (!ngx_queue_empty(&ngx_http_aai_ratelimit_spare)) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_spare);
        ngx_queue_remove(q);

        ngx_free(ngx_queue_data(q, ngx_http_aai_ratelimit_batch_t, queue));
    }

    ngx_http_aai_ratelimit_nspare = 0;
}


void
ngx_http_aai_ratelimit_batch_init(void)
{
    ngx_queue_init(&ngx_http_aai_ratelimit_flight);
    ngx_queue_init(&ngx_http_aai_ratelimit_spare);
}

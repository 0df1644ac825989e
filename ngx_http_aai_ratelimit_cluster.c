
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_cluster: the limiter on a Redis Cluster.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static ngx_int_t ngx_http_aai_ratelimit_cluster_split(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t pernode);
static void ngx_http_aai_ratelimit_refund(
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *part);
static ngx_uint_t ngx_http_aai_ratelimit_refunded(
    ngx_http_aai_ratelimit_ctx_t *part, ngx_uint_t i);
static void ngx_http_aai_ratelimit_refund_handler(ngx_aai_redis_result_t *res,
    void *data);


/*
 * Redis Cluster.  The limiter's script needs all its keys in one slot: a
 * batch holds the requests of one slot.  A request whose zones' keys are in
 * several slots (a user zone beside a per-IP zone) is checked in parts,
 * one per slot, at once; when one part rejects, the parts that admitted
 * are refunded (the admission each recorded is taken back), so that a
 * rejected request spends nothing in any zone.  Between the admission and
 * the refund (one round trip) the admitted zones count the request: a
 * request of another client checked in that window may be rejected by a
 * count one higher than it ends up.  A request that goes away before all
 * its parts are answered is not refunded.
 *
 * Per node (Redis 7.0 or later): the requests, or parts, whose keys are
 * all of slots that the slot map says one node serves wait in that node's
 * batch, checked by the script that allows keys of several slots
 * (ngx_http_aai_ratelimit_script.c): a request whose keys are in several
 * slots of one node is checked in one part.  A batch of a node that fails
 * because a slot has moved is checked again per slot, as below
 * (ngx_http_aai_ratelimit_batch.c).
 */

ngx_int_t
ngx_http_aai_ratelimit_cluster_enqueue(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    return ngx_http_aai_ratelimit_cluster_split(r, mcf, ctx, 1);
}


/* per slot: a batch of a node failed */

ngx_int_t
ngx_http_aai_ratelimit_cluster_slots(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx)
{
    return ngx_http_aai_ratelimit_cluster_split(r, mcf, ctx, 0);
}


static ngx_int_t
ngx_http_aai_ratelimit_cluster_split(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *ctx, ngx_uint_t pernode)
{
    ngx_int_t                          rc;
    ngx_uint_t                         i, j, n, nparts;
    ngx_http_aai_ratelimit_ctx_t      *part;
    ngx_http_aai_ratelimit_cluster_t  *cl, *pcl;
    ngx_uint_t                         slots[NGX_HTTP_AAI_RL_BATCH];
    ngx_uint_t                         kslot[NGX_HTTP_AAI_RL_BATCH];

    nparts = 0;

    for (i = 0; i < ctx->nzones; i++) {
        kslot[i] = ngx_aai_redis_cluster_slot(ctx->keys[i].data,
                                              ctx->keys[i].len);

        for (j = 0; j < nparts; j++) {
            if (slots[j] == kslot[i]) {
                break;
            }
        }

        if (j == nparts) {
            slots[nparts++] = kslot[i];
        }
    }

    if (nparts == 1) {
        return pernode ? ngx_http_aai_ratelimit_enqueue_node(mcf, ctx, slots[0])
                       : ngx_http_aai_ratelimit_enqueue_in(mcf, ctx, slots[0]);
    }

    if (pernode) {
        rc = ngx_http_aai_ratelimit_enqueue_node(mcf, ctx, -1);

        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    cl = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_ratelimit_cluster_t));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->parts = ngx_pcalloc(r->pool,
                            nparts * sizeof(ngx_http_aai_ratelimit_ctx_t *));
    if (cl->parts == NULL) {
        return NGX_ERROR;
    }

    for (j = 0; j < nparts; j++) {
        part = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_ratelimit_ctx_t));
        pcl = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_ratelimit_cluster_t));

        if (part == NULL || pcl == NULL) {
            return NGX_ERROR;
        }

        n = 0;

        for (i = 0; i < ctx->nzones; i++) {
            n += (kslot[i] == slots[j]);
        }

        part->zones = ngx_palloc(r->pool,
                                 n * sizeof(ngx_http_aai_ratelimit_zone_t *));
        part->keys = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
        part->results = ngx_pcalloc(r->pool,
                                n * sizeof(ngx_http_aai_ratelimit_result_t));
        part->zreq = ngx_palloc(r->pool,
                                n * sizeof(ngx_http_aai_ratelimit_zreq_t));
        pcl->zones = ngx_pnalloc(r->pool, n);

        if (part->zones == NULL || part->keys == NULL
            || part->results == NULL || part->zreq == NULL
            || pcl->zones == NULL)
        {
            return NGX_ERROR;
        }

        for (i = 0; i < ctx->nzones; i++) {
            if (kslot[i] == slots[j]) {
                part->zones[part->nzones] = ctx->zones[i];
                part->keys[part->nzones] = ctx->keys[i];
                part->zreq[part->nzones] = ctx->zreq[i];
                part->conc |= (ctx->zones[i]->concurrency != 0);
                pcl->zones[part->nzones++] = (u_char) i;
            }
        }

        part->costs = ctx->costs;
        part->request = r;
        part->lcf = ctx->lcf;
        pcl->parent = ctx;
        part->cluster = pcl;

        cl->parts[j] = part;
    }

    ctx->cluster = cl;

    for (j = 0; j < nparts; j++) {
        rc = pernode
             ? ngx_http_aai_ratelimit_enqueue_node(mcf, cl->parts[j], slots[j])
             : ngx_http_aai_ratelimit_enqueue_in(mcf, cl->parts[j], slots[j]);

        if (rc != NGX_OK) {
            break;
        }

        cl->nparts++;
        cl->pending++;
    }

    if (cl->nparts == 0) {
        ctx->cluster = NULL;
        return NGX_ERROR;
    }

    if (cl->nparts < nparts) {
        cl->failed = NGX_HTTP_AAI_RL_E_UNAVAILABLE + 1;
        cl->error = "no memory";
    }

    return NGX_OK;
}


/* a part is answered, or failed (failed: the reason + 1) */

void
ngx_http_aai_ratelimit_part_done(ngx_http_aai_ratelimit_ctx_t *part,
    ngx_uint_t failed, const char *error)
{
    ngx_uint_t                           i;
    ngx_http_request_t                  *r;
    ngx_http_aai_ratelimit_ctx_t        *ctx;
    ngx_http_aai_ratelimit_cluster_t    *cl, *pcl;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    pcl = part->cluster;
    ctx = pcl->parent;
    cl = ctx->cluster;
    r = ctx->request;

    if (failed) {
        if (!cl->failed) {
            cl->failed = failed;
            cl->error = error;
        }

    } else {
        pcl->admitted = 1;

        for (i = 0; i < part->nzones; i++) {
            ctx->results[pcl->zones[i]] = part->results[i];

            /* a shadow zone (dry_run) rejects nothing */

            if (part->results[i].rejected && !part->zreq[i].shadow) {
                pcl->admitted = 0;
                cl->rejected = 1;
            }
        }

        mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);

        if (pcl->admitted && part->conc) {
            ngx_http_aai_ratelimit_leased(part, mcf);
        }
    }

    if (--cl->pending) {
        return;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);

    if (cl->rejected || cl->failed) {
        for (i = 0; i < cl->nparts; i++) {
            if (cl->parts[i]->cluster->admitted) {
                ngx_http_aai_ratelimit_refund(mcf, cl->parts[i]);
            }

            if (cl->parts[i]->leased) {
                ngx_http_aai_ratelimit_release(cl->parts[i]);
            }
        }
    }

    ngx_http_set_log_request(r->connection->log, r);

    if (cl->failed) {
        ngx_http_aai_ratelimit_fallback(r, ctx, cl->failed - 1,
                                        cl->error ? cl->error : "error",
                                        NULL);
    } else {
        ngx_http_aai_ratelimit_decide(r, ctx, NGX_HTTP_AAI_RL_REDIS);
    }

    ngx_http_aai_ratelimit_resume(ctx);
}


/*
 * The refund of a part's admission, in each of its keys (one slot), of the
 * units it spent (its cost, 1 without cost=): sliding window: the newest
 * admissions; GCRA: that many periods off the theoretical arrival time;
 * counter: that many off the current window's count.  A zone that spent
 * nothing (a cost of 0, a shadow zone that rejected or never spends) is
 * not refunded, nor a concurrency= zone: its lease is released.
 */

static const char  ngx_http_aai_ratelimit_refund_script[] =
"for i = 1, #KEYS do\n"
"  local k, a = KEYS[i], tonumber(ARGV[3 * i - 2])\n"
"  local p, u = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])\n"
"  if a == 0 then\n"
"    redis.pcall('LTRIM', k, 0, -u - 1)\n"
"  elseif a == 1 then\n"
"    local v = tonumber(redis.pcall('GET', k))\n"
"    if v then\n"
"      redis.call('SET', k, string.format('%d', v - u * p), 'KEEPTTL')\n"
"    end\n"
"  else\n"
"    local f = redis.pcall('BITFIELD', k, 'GET', 'i64', 0, 'GET', 'i64', 64)\n"
"    if f[1] and f[1] >= 0 and f[1] < 2^53 and f[2] > 0 then\n"
"      redis.call('BITFIELD', k, 'INCRBY', 'i64', 64, -math.min(u, f[2]))\n"
"    end\n"
"  end\n"
"end\n"
"return #KEYS\n";


static void
ngx_http_aai_ratelimit_refund(ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_ctx_t *part)
{
    u_char                         *p;
    ngx_str_t                      *argv, *v;
    ngx_uint_t                      i, n, m;
    ngx_http_aai_ratelimit_zone_t  *zone;
    ngx_http_aai_ratelimit_zreq_t  *zr;

    n = 0;

    for (i = 0; i < part->nzones; i++) {
        n += ngx_http_aai_ratelimit_refunded(part, i);
    }

    if (n == 0) {
        return;
    }

    argv = ngx_palloc(part->request->pool, (3 + 4 * n) * sizeof(ngx_str_t));
    p = ngx_pnalloc(part->request->pool, NGX_INT_T_LEN * (1 + 3 * n));

    if (argv == NULL || p == NULL) {
        return;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1].data = (u_char *) ngx_http_aai_ratelimit_refund_script;
    argv[1].len = sizeof(ngx_http_aai_ratelimit_refund_script) - 1;
    argv[2].data = p;
    p = ngx_sprintf(p, "%ui", n);
    argv[2].len = p - argv[2].data;

    m = 0;

    for (i = 0; i < part->nzones; i++) {
        if (!ngx_http_aai_ratelimit_refunded(part, i)) {
            continue;
        }

        zone = part->zones[i];
        zr = &part->zreq[i];

        argv[3 + m] = part->keys[i];

        v = &argv[3 + n + 3 * m++];

        v[0].data = p;
        p = ngx_sprintf(p, "%ui", zone->algorithm);
        v[0].len = p - v[0].data;

        v[1].data = p;
        p = ngx_sprintf(p, "%uL", zone->period);
        v[1].len = p - v[1].data;

        v[2].data = p;
        p = ngx_sprintf(p, "%ui", zr->cost);
        v[2].len = p - v[2].data;
    }

    if (ngx_aai_redis_send(mcf->redis, ngx_cycle->log, 3 + 4 * n, argv,
                           ngx_http_aai_ratelimit_refund_handler, NULL)
        == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, part->request->connection->log, 0,
                      "aai_ratelimit: refund of \"%V\" not sent",
                      &part->keys[0]);
    }
}


/* whether zone i of an admitted part spent units that a refund takes back */

static ngx_uint_t
ngx_http_aai_ratelimit_refunded(ngx_http_aai_ratelimit_ctx_t *part,
    ngx_uint_t i)
{
    ngx_http_aai_ratelimit_zreq_t  *zr;

    zr = &part->zreq[i];

    if (part->zones[i]->algorithm == NGX_HTTP_AAI_RL_CONCURRENCY
        || zr->cost == 0 || zr->shadow == 2
        || (zr->shadow && part->results[i].rejected))
    {
        return 0;
    }

    return 1;
}


static void
ngx_http_aai_ratelimit_refund_handler(ngx_aai_redis_result_t *res,
    void *data)
{
    if (res->reply && res->reply->type == REDIS_REPLY_INTEGER) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "aai_ratelimit: refund failed: %s",
                  res->reply && res->reply->type == REDIS_REPLY_ERROR
                  ? res->reply->str : (res->error ? res->error : "reply"));
}



/* the request goes away: its parts waiting in batches are dropped */

void
ngx_http_aai_ratelimit_cluster_cleanup(ngx_http_aai_ratelimit_ctx_t *ctx)
{
    ngx_uint_t                     i;
    ngx_http_aai_ratelimit_ctx_t  *part;

    for (i = 0; i < ctx->cluster->nparts; i++) {
        part = ctx->cluster->parts[i];

        if (part->batch) {

            /* its batch is in Redis: the lease is released with the reply */

            if (part->conc && part->batch->slots[part->slot].sent) {
                ngx_http_aai_ratelimit_orphan(part);
            }

            part->batch->slots[part->slot].ctx = NULL;
            part->batch = NULL;
        }

        if (part->leased) {
            ngx_http_aai_ratelimit_release(part);
        }
    }
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module, limits for an AI product.
 *
 * "count=" on a zone and "cost=" on "aai_ratelimit NAME" make a request's
 * limit and the units it spends; the module sends them with the zone's
 * definition in the batch.  "charge=" is evaluated in the log phase: the
 * usage waits here, per worker, for the next batch the worker sends (no
 * round trip of its own on a request path), or for a timer that sends it
 * alone after NGX_HTTP_AAI_RL_CHARGE_FLUSH ms.  A batch that fails gives
 * its charges back, to be sent again, at most NGX_HTTP_AAI_RL_CHARGE_TRIES
 * times; then they are counted lost.  A reply in error (the script may
 * have run) loses them at once, counted: a charge never counts twice
 * because of a bad reply (a timeout may: the script may have run).
 *
 * The release of a concurrency= lease at a request's end waits in the
 * same queue, and goes the same way: with the next batch the worker sends
 * (to the node of its key's slot on a cluster).  It waits at most until
 * the end of the event loop iteration: an event posted when it is queued
 * sends what is waiting in a batch of its own if no request opened one.
 * A batch that fails gives it back like a charge (a release sent twice
 * does no harm, so a reply in error retries it too); after the tries it
 * is counted lost, and the lease expires by itself (lease=).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


#define NGX_HTTP_AAI_RL_AI_MAX           1000000000


static ngx_int_t ngx_http_aai_ratelimit_eval_units(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv);
static char *ngx_http_aai_ratelimit_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t **cv);
static void ngx_http_aai_ratelimit_charge_timer(ngx_event_t *ev);
static void ngx_http_aai_ratelimit_charge_arm(void);
static void ngx_http_aai_ratelimit_charge_drop(
    ngx_http_aai_ratelimit_charge_t *ch, const char *why);
static void ngx_http_aai_ratelimit_charge_queue(
    ngx_http_aai_ratelimit_charge_t *ch);
static void ngx_http_aai_ratelimit_release_post(void);
static void ngx_http_aai_ratelimit_release_handler(ngx_event_t *ev);


/*
 * per worker: the charges (and releases) waiting, their number, the
 * releases among them, the flush timer, the event posted for releases
 */
static ngx_queue_t         ngx_http_aai_ratelimit_charges;
static ngx_uint_t          ngx_http_aai_ratelimit_ncharges;
static ngx_uint_t          ngx_http_aai_ratelimit_nreleases;
static ngx_event_t         ngx_http_aai_ratelimit_charge_ev;
static ngx_event_t         ngx_http_aai_ratelimit_release_ev;
static ngx_aai_metrics_t  *ngx_http_aai_ratelimit_charge_metrics;
static time_t              ngx_http_aai_ratelimit_charge_logged;


static const char  *ngx_http_aai_ratelimit_charge_names[] = {
    "aai_ratelimit_charged_units_total",
    "aai_ratelimit_charges_dropped_total"
};


static const char  *ngx_http_aai_ratelimit_charge_help[] = {
    "Units charged after responses (charge=), as Redis took them.",
    "Charges (charge=) lost after every try, or at worker exit."
};


/*
 * aai_ratelimit NAME [cost=expression] [charge=expression]
 * [dry_run | dry_run=nospend]: value[0..n-1]
 * are the parameters after the name; opts gets an entry per zone of the
 * location, NULL for zones without parameters.
 */

char *
ngx_http_aai_ratelimit_opts(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_array_t **opts, ngx_uint_t index, ngx_str_t *value, ngx_uint_t n,
    ngx_str_t *zone, ngx_aai_metrics_t *metrics, ngx_int_t **zone_metrics)
{
    char                           *rv;
    ngx_str_t                       s, labels;
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_opts_t  *o, **op;

    if (*opts == NULL) {
        *opts = ngx_array_create(cf->pool, 2,
                                 sizeof(ngx_http_aai_ratelimit_opts_t *));
        if (*opts == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    while ((*opts)->nelts <= index) {
        op = ngx_array_push(*opts);
        if (op == NULL) {
            return NGX_CONF_ERROR;
        }

        *op = NULL;
    }

    if (n == 0) {
        return NGX_CONF_OK;
    }

    o = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_opts_t));
    if (o == NULL) {
        return NGX_CONF_ERROR;
    }

    op = (*opts)->elts;
    op[index] = o;

    for (i = 0; i < n; i++) {

        if (ngx_strncmp(value[i].data, "cost=", 5) == 0 && o->cost == NULL) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            rv = ngx_http_aai_ratelimit_compile(cf, &s, &o->cost);
            if (rv != NGX_CONF_OK) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "dry_run") == 0 && o->shadow == 0) {
            o->shadow = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "dry_run=nospend") == 0
            && o->shadow == 0)
        {
            o->shadow = 2;
            continue;
        }

        if (ngx_strncmp(value[i].data, "charge=", 7) == 0
            && o->charge == NULL)
        {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            rv = ngx_http_aai_ratelimit_compile(cf, &s, &o->charge);
            if (rv != NGX_CONF_OK) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (o->charge == NULL) {
        return NGX_CONF_OK;
    }

    /* a zone's charge metrics, whichever locations charge it */

    if (*zone_metrics) {
        o->metrics = *zone_metrics;
        return NGX_CONF_OK;
    }

    *zone_metrics = ngx_palloc(cf->pool, NGX_HTTP_AAI_RL_C_NUMBER
                                      * sizeof(ngx_int_t));
    if (*zone_metrics == NULL) {
        return NGX_CONF_ERROR;
    }

    o->metrics = *zone_metrics;

    labels.data = ngx_pnalloc(cf->pool, zone->len + sizeof("zone=\"\""));
    if (labels.data == NULL) {
        return NGX_CONF_ERROR;
    }

    labels.len = ngx_sprintf(labels.data, "zone=\"%V\"", zone) - labels.data;

    for (i = 0; i < NGX_HTTP_AAI_RL_C_NUMBER; i++) {
        o->metrics[i] = ngx_aai_metrics_add(metrics, NGX_AAI_METRIC_COUNTER,
                                    ngx_http_aai_ratelimit_charge_names[i],
                                    ngx_http_aai_ratelimit_charge_help[i],
                                    &labels);
        if (o->metrics[i] == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V %V\"",
                       &value[i], &cmd->name, zone);
    return NGX_CONF_ERROR;
}


/* count=expression on "aai_ratelimit_zone" */

char *
ngx_http_aai_ratelimit_count_param(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *value, ngx_http_complex_value_t **count)
{
    ngx_str_t  s;

    s.data = value->data + 6;
    s.len = value->len - 6;

    if (*count != NULL
        || ngx_http_aai_ratelimit_compile(cf, &s, count) != NGX_CONF_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid count \"%V\" in \"%V\"", &s, &cmd->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_aai_ratelimit_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t **cv)
{
    ngx_http_compile_complex_value_t  ccv;

    if (value->len == 0) {
        return NGX_CONF_ERROR;
    }

    *cv = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (*cv == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = *cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The limit and the cost of a zone for a request: count= when it is a
 * positive integer, else the zone's; cost= when it is an integer from 0,
 * else 1 (0 with charge= and no cost=: the request checks that quota is
 * left and spends nothing, its response is charged).
 */

void
ngx_http_aai_ratelimit_zreq(ngx_http_request_t *r,
    ngx_http_complex_value_t *count, ngx_uint_t limit,
    ngx_http_aai_ratelimit_opts_t *opts, ngx_http_aai_ratelimit_zreq_t *zr)
{
    ngx_int_t  n;

    zr->limit = limit;
    zr->cost = 1;
    zr->opts = opts;
    zr->shadow = opts ? opts->shadow : 0;

    if (count) {
        n = ngx_http_aai_ratelimit_eval_units(r, count);

        if (n > 0) {
            zr->limit = n;
        }
    }

    if (opts == NULL) {
        return;
    }

    if (opts->cost) {
        n = ngx_http_aai_ratelimit_eval_units(r, opts->cost);

        if (n >= 0) {
            zr->cost = n;
        }

    } else if (opts->charge) {
        zr->cost = 0;
    }
}


/* a non-negative integer, NGX_DECLINED when empty, NGX_ERROR when not one */

static ngx_int_t
ngx_http_aai_ratelimit_eval_units(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv)
{
    ngx_int_t  n;
    ngx_str_t  s;

    if (ngx_http_complex_value(r, cv, &s) != NGX_OK) {
        return NGX_ERROR;
    }

    if (s.len == 0) {
        return NGX_DECLINED;
    }

    n = ngx_atoi(s.data, s.len);

    if (n == NGX_ERROR || n > NGX_HTTP_AAI_RL_AI_MAX) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "aai_ratelimit: \"%V\" is not a number of units, "
                      "ignored", &s);
        return NGX_ERROR;
    }

    return n;
}


/* in the log phase: the charge of a zone waits for the next batch */

ngx_int_t
ngx_http_aai_ratelimit_charge_add(ngx_http_request_t *r, void *zone,
    ngx_str_t *key, ngx_http_aai_ratelimit_zreq_t *zr)
{
    ngx_int_t                         n;
    ngx_http_aai_ratelimit_charge_t  *ch;

    n = ngx_http_aai_ratelimit_eval_units(r, zr->opts->charge);

    if (n <= 0) {
        return NGX_OK;
    }

    /* more than the count spends no more than the whole count */

    if ((ngx_uint_t) n > zr->limit) {
        n = zr->limit;
    }

    ch = ngx_alloc(sizeof(ngx_http_aai_ratelimit_charge_t) + key->len,
                   r->connection->log);
    if (ch == NULL) {
        return NGX_ERROR;
    }

    ch->zone = zone;
    ch->metrics = zr->opts->metrics;
    ch->limit = zr->limit;
    ch->amount = n;
    ch->tries = 0;
    ch->key.len = key->len;
    ch->key.data = (u_char *) (ch + 1);
    ngx_memcpy(ch->key.data, key->data, key->len);
    ngx_str_null(&ch->member);

    if (ngx_http_aai_ratelimit_ncharges >= NGX_HTTP_AAI_RL_CHARGE_MAX) {
        ngx_http_aai_ratelimit_charge_drop(ch, "too many charges waiting");
        return NGX_OK;
    }

    ngx_queue_insert_tail(&ngx_http_aai_ratelimit_charges, &ch->queue);
    ngx_http_aai_ratelimit_ncharges++;

    ngx_http_aai_ratelimit_charge_arm();

    return NGX_OK;
}


/*
 * A batch about to be sent takes up to max charges, on a cluster those of
 * its slot (cslot; -1: any), or of the slots of its node (cslot: the
 * node + NGX_AAI_REDIS_CLUSTER_SLOTS); returns how many.
 */

ngx_uint_t
ngx_http_aai_ratelimit_charge_take(ngx_queue_t *to, ngx_uint_t max,
    ngx_int_t cslot)
{
    ngx_int_t                            node;
    ngx_uint_t                           n, slot;
    ngx_queue_t                         *q, *next;
    ngx_http_aai_ratelimit_charge_t     *ch;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    n = 0;
    node = cslot - NGX_AAI_REDIS_CLUSTER_SLOTS;
    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_aai_ratelimit_module);

    for (q = ngx_queue_head(&ngx_http_aai_ratelimit_charges);
         n < max && q != ngx_queue_sentinel(&ngx_http_aai_ratelimit_charges);
         q = next)
    {
        next = ngx_queue_next(q);

        if (cslot >= 0) {
            ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);
            slot = ngx_aai_redis_cluster_slot(ch->key.data, ch->key.len);

            if (node >= 0
                ? ngx_aai_redis_slot_node(mcf->redis, slot) != node
                : (ngx_int_t) slot != cslot)
            {
                continue;
            }
        }

        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);

        ngx_queue_remove(q);
        ngx_http_aai_ratelimit_ncharges--;

        if (ch->zone == NULL) {
            ngx_http_aai_ratelimit_nreleases--;
        }

        ngx_queue_insert_tail(to, q);
        n++;
    }

    if (ngx_http_aai_ratelimit_ncharges == 0
        && ngx_http_aai_ratelimit_charge_ev.timer_set)
    {
        ngx_del_timer(&ngx_http_aai_ratelimit_charge_ev);
    }

    /* releases left (a full batch, another slot): still this iteration */

    if (ngx_http_aai_ratelimit_nreleases) {
        ngx_http_aai_ratelimit_release_post();
    }

    return n;
}


/* whether a batch's charges need the definitions' costs (releases do not) */

ngx_uint_t
ngx_http_aai_ratelimit_charge_costs(ngx_queue_t *q)
{
    ngx_queue_t                      *x;
    ngx_http_aai_ratelimit_charge_t  *ch;

    for (x = ngx_queue_head(q);
         x != ngx_queue_sentinel(q);
         x = ngx_queue_next(x))
    {
        ch = ngx_queue_data(x, ngx_http_aai_ratelimit_charge_t, queue);

        if (ch->zone) {
            return 1;
        }
    }

    return 0;
}


/* on a cluster: the distinct slots of the charges waiting, max at most */

ngx_uint_t
ngx_http_aai_ratelimit_charge_slots(ngx_uint_t *slots, ngx_uint_t max)
{
    ngx_uint_t                        n, i, slot;
    ngx_queue_t                      *q;
    ngx_http_aai_ratelimit_charge_t  *ch;

    n = 0;

    for (q = ngx_queue_head(&ngx_http_aai_ratelimit_charges);
         n < max && q != ngx_queue_sentinel(&ngx_http_aai_ratelimit_charges);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);
        slot = ngx_aai_redis_cluster_slot(ch->key.data, ch->key.len);

        for (i = 0; i < n; i++) {
            if (slots[i] == slot) {
                break;
            }
        }

        if (i == n) {
            slots[n++] = slot;
        }
    }

    return n;
}


/*
 * The batch's charges are done: counted when Redis took them; sent again
 * (first, in their order) when it failed, unless tried enough.
 */

void
ngx_http_aai_ratelimit_charge_done(ngx_queue_t *q, ngx_int_t rc)
{
    ngx_queue_t                      *x, *head;
    ngx_http_aai_ratelimit_charge_t  *ch;

    head = ngx_queue_head(&ngx_http_aai_ratelimit_charges);

    while (!ngx_queue_empty(q)) {
        x = ngx_queue_head(q);
        ngx_queue_remove(x);

        ch = ngx_queue_data(x, ngx_http_aai_ratelimit_charge_t, queue);

        if (rc == NGX_DECLINED && ch->zone) {
            ngx_http_aai_ratelimit_charge_drop(ch, "Redis replied in error");
            continue;
        }

        if (rc == NGX_OK) {
            ngx_aai_metrics_inc(ngx_http_aai_ratelimit_charge_metrics,
                                ch->metrics[NGX_HTTP_AAI_RL_C_UNITS],
                                ch->amount);
            ngx_free(ch);
            continue;
        }

        if (++ch->tries >= NGX_HTTP_AAI_RL_CHARGE_TRIES
            || ngx_exiting || ngx_terminate)
        {
            ngx_http_aai_ratelimit_charge_drop(ch, "Redis failed every try");
            continue;
        }

        ngx_queue_insert_tail(head, x);
        ngx_http_aai_ratelimit_ncharges++;

        if (ch->zone == NULL) {
            ngx_http_aai_ratelimit_nreleases++;
        }
    }

    /* what failed is tried again by the timer, not at once */

    ngx_http_aai_ratelimit_charge_arm();
}


static void
ngx_http_aai_ratelimit_charge_arm(void)
{
    ngx_event_t  *ev;

    ev = &ngx_http_aai_ratelimit_charge_ev;

    if (ngx_http_aai_ratelimit_ncharges == 0 || ev->timer_set
        || ev->handler == NULL)
    {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_AAI_RL_CHARGE_FLUSH);
}


static void
ngx_http_aai_ratelimit_charge_timer(ngx_event_t *ev)
{
    if (ngx_http_aai_ratelimit_ncharges == 0) {
        return;
    }

    ngx_http_aai_ratelimit_flush();

    ngx_http_aai_ratelimit_charge_arm();
}


/* one message a second per worker at most */

static void
ngx_http_aai_ratelimit_charge_drop(ngx_http_aai_ratelimit_charge_t *ch,
    const char *why)
{
    ngx_aai_metrics_inc(ngx_http_aai_ratelimit_charge_metrics,
                        ch->metrics[NGX_HTTP_AAI_RL_C_DROPPED], 1);

    if (ngx_http_aai_ratelimit_charge_logged != ngx_time()) {
        ngx_http_aai_ratelimit_charge_logged = ngx_time();

        if (ch->zone == NULL) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "aai_ratelimit: release of a lease lost: %s, "
                          "the lease expires by itself", why);

        } else {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "aai_ratelimit: charge of %ui lost: %s",
                          ch->amount, why);
        }
    }

    ngx_free(ch);
}


void
ngx_http_aai_ratelimit_charge_init(ngx_aai_metrics_t *metrics,
    ngx_log_t *log)
{
    ngx_event_t  *ev;

    ngx_queue_init(&ngx_http_aai_ratelimit_charges);
    ngx_http_aai_ratelimit_ncharges = 0;
    ngx_http_aai_ratelimit_nreleases = 0;
    ngx_http_aai_ratelimit_charge_metrics = metrics;

    ev = &ngx_http_aai_ratelimit_charge_ev;

    ngx_memzero(ev, sizeof(ngx_event_t));

    ev->handler = ngx_http_aai_ratelimit_charge_timer;
    ev->log = log;
    ev->data = ev;
    ev->cancelable = 1;

    ev = &ngx_http_aai_ratelimit_release_ev;

    ngx_memzero(ev, sizeof(ngx_event_t));

    ev->handler = ngx_http_aai_ratelimit_release_handler;
    ev->log = log;
    ev->data = ev;
}


/* at worker exit: what is still waiting is lost, and counted */

void
ngx_http_aai_ratelimit_charge_exit(void)
{
    ngx_queue_t                      *q;
    ngx_http_aai_ratelimit_charge_t  *ch;

    if (ngx_http_aai_ratelimit_charge_ev.timer_set) {
        ngx_del_timer(&ngx_http_aai_ratelimit_charge_ev);
    }

    if (ngx_http_aai_ratelimit_release_ev.posted) {
        ngx_delete_posted_event(&ngx_http_aai_ratelimit_release_ev);
    }

    ngx_http_aai_ratelimit_charge_ev.handler = NULL;
    ngx_http_aai_ratelimit_release_ev.handler = NULL;
    ngx_http_aai_ratelimit_nreleases = 0;

    while (ngx_http_aai_ratelimit_ncharges) {
        q = ngx_queue_head(&ngx_http_aai_ratelimit_charges);
        ngx_queue_remove(q);
        ngx_http_aai_ratelimit_ncharges--;

        ch = ngx_queue_data(q, ngx_http_aai_ratelimit_charge_t, queue);

        ngx_http_aai_ratelimit_charge_drop(ch, "worker exiting");
    }
}


/*
 * concurrency= leases: a member of the key's sorted set, scored with its
 * expiry (Redis time, us).  The script adds it; the request's end removes
 * it (a ZREM in the script, with the next batch: above); a timer renews it
 * every third of the lease while the request runs.  A member is the
 * worker's token, the batch's number and the request's place in the batch:
 * unique across instances and restarts.
 */

static u_char      ngx_http_aai_ratelimit_token[NGX_INT_T_LEN * 2 + 2];
static size_t      ngx_http_aai_ratelimit_token_len;

static const char  ngx_http_aai_ratelimit_renew_script[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = redis.call('TIME')\n"
    "local s = t[1] * 1000000 + t[2] + tonumber(ARGV[2])\n"
    "if redis.call('ZADD', KEYS[1], 'XX', 'CH', string.format('%d', s),\n"
    "              ARGV[1]) == 1 then\n"
    "  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000)\n"
    "             + 1)\n"
    "end\n"
    "return 1\n";


static void ngx_http_aai_ratelimit_lease_handler(ngx_aai_redis_result_t *res,
    void *data);


void
ngx_http_aai_ratelimit_lease_init(void)
{
    ngx_http_aai_ratelimit_token_len =
        ngx_sprintf(ngx_http_aai_ratelimit_token, "%P-%ui", ngx_pid,
                    (ngx_uint_t) ngx_random())
        - ngx_http_aai_ratelimit_token;
}


/* token.seq. (static: valid until the next call) */

void
ngx_http_aai_ratelimit_lease_prefix(ngx_uint_t seq, ngx_str_t *out)
{
    static u_char  buf[sizeof(ngx_http_aai_ratelimit_token) + NGX_INT_T_LEN
                       + 2];

    out->data = buf;
    out->len = ngx_sprintf(buf, "%*s.%ui.", ngx_http_aai_ratelimit_token_len,
                           ngx_http_aai_ratelimit_token, seq)
               - buf;
}


ngx_int_t
ngx_http_aai_ratelimit_lease_member(ngx_pool_t *pool, ngx_str_t *prefix,
    ngx_uint_t index, ngx_str_t *out)
{
    u_char  *p;

    p = ngx_pnalloc(pool, prefix->len + NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    out->len = ngx_sprintf(p, "%V%ui", prefix, index) - p;

    return NGX_OK;
}


/*
 * A lease to release: into q (a batch's, while the batch is in Redis), or
 * NULL: with the worker's next batch, this event loop iteration.
 */

void
ngx_http_aai_ratelimit_lease_release(ngx_queue_t *q, ngx_str_t *key,
    ngx_str_t *member, ngx_int_t *metrics)
{
    ngx_http_aai_ratelimit_charge_t  *ch;

    if (member->len == 0 || member->len > NGX_HTTP_AAI_RL_MEMBER_MAX) {
        return;
    }

    ch = ngx_alloc(sizeof(ngx_http_aai_ratelimit_charge_t) + key->len
                   + member->len, ngx_cycle->log);
    if (ch == NULL) {
        return;    /* the lease expires by itself */
    }

    ch->zone = NULL;
    ch->metrics = metrics;
    ch->limit = 0;
    ch->amount = 1;
    ch->tries = 0;

    ch->key.len = key->len;
    ch->key.data = (u_char *) (ch + 1);
    ngx_memcpy(ch->key.data, key->data, key->len);

    ch->member.len = member->len;
    ch->member.data = ch->key.data + key->len;
    ngx_memcpy(ch->member.data, member->data, member->len);

    if (q) {
        ngx_queue_insert_tail(q, &ch->queue);
        return;
    }

    ngx_http_aai_ratelimit_charge_queue(ch);
}


static void
ngx_http_aai_ratelimit_charge_queue(ngx_http_aai_ratelimit_charge_t *ch)
{
    if (ngx_http_aai_ratelimit_ncharges >= NGX_HTTP_AAI_RL_CHARGE_MAX
        || ngx_http_aai_ratelimit_release_ev.handler == NULL)
    {
        ngx_http_aai_ratelimit_charge_drop(ch, "too many waiting");
        return;
    }

    ngx_queue_insert_tail(&ngx_http_aai_ratelimit_charges, &ch->queue);
    ngx_http_aai_ratelimit_ncharges++;
    ngx_http_aai_ratelimit_nreleases++;

    ngx_http_aai_ratelimit_release_post();
}


static void
ngx_http_aai_ratelimit_release_post(void)
{
    ngx_event_t  *ev;

    ev = &ngx_http_aai_ratelimit_release_ev;

    if (!ev->posted && ev->handler) {
        ngx_post_event(ev, &ngx_posted_events);
    }
}


/*
 * At the end of the event loop iteration: the releases waiting go now,
 * with the batch a request opened in this iteration, or in one of their
 * own (ngx_http_aai_ratelimit_flush() does nothing while a batch is open:
 * it takes them when it is sent).
 */

static void
ngx_http_aai_ratelimit_release_handler(ngx_event_t *ev)
{
    if (ngx_http_aai_ratelimit_nreleases) {
        ngx_http_aai_ratelimit_flush();
    }
}


void
ngx_http_aai_ratelimit_lease_renew(ngx_aai_redis_t *rs, ngx_str_t *key,
    ngx_str_t *member, uint64_t lease)
{
    u_char     num[NGX_INT64_LEN];
    ngx_str_t  argv[6];

    ngx_str_set(&argv[0], "EVAL");
    argv[1].data = (u_char *) ngx_http_aai_ratelimit_renew_script;
    argv[1].len = sizeof(ngx_http_aai_ratelimit_renew_script) - 1;
    ngx_str_set(&argv[2], "1");
    argv[3] = *key;
    argv[4] = *member;
    argv[5].data = num;
    argv[5].len = ngx_sprintf(num, "%uL", lease) - num;

    (void) ngx_aai_redis_send(rs, ngx_cycle->log, 6, argv,
                              ngx_http_aai_ratelimit_lease_handler, NULL);
}


static void
ngx_http_aai_ratelimit_lease_handler(ngx_aai_redis_result_t *res, void *data)
{
    if (res->reply == NULL || res->reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "aai_ratelimit: a lease was not renewed (%s), it "
                      "expires by itself",
                      res->error ? res->error : "error reply");
    }
}


/*
 * A batch is answered or failed (drop: the worker exits): the leases of
 * its requests gone go with the next batch, or are counted lost.
 */

void
ngx_http_aai_ratelimit_lease_orphans(ngx_queue_t *q, ngx_uint_t drop)
{
    ngx_queue_t                      *x;
    ngx_http_aai_ratelimit_charge_t  *ch;

    while (!ngx_queue_empty(q)) {
        x = ngx_queue_head(q);
        ngx_queue_remove(x);

        ch = ngx_queue_data(x, ngx_http_aai_ratelimit_charge_t, queue);

        if (drop) {
            ngx_http_aai_ratelimit_charge_drop(ch, "worker exiting");
            continue;
        }

        ngx_http_aai_ratelimit_charge_queue(ch);
    }
}


/*
 * Copyright (C) aai-nginx authors
 *
 * A command whose keys are in several slots of a Redis Cluster: an
 * MGET split into GETs, an EVAL or EVALSHA sent once per slot; the
 * parts routed alone and their replies merged into one.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_aai_redis_cluster_int.h"


/*
 * MGET of keys of several slots: one GET per key, each routed alone; the
 * reply is the array of theirs, or the first error.
 */

ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_mget(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    ngx_str_t              get[2];
    ngx_uint_t             i, n;
    ngx_aai_redis_ccmd_t  *cc, *part;

    n = argc - 1;

    if (n > NGX_AAI_REDIS_CLUSTER_MAX_MGET) {
        return NULL;
    }

    cc = ngx_aai_redis_cluster_ccmd(cl, log, 0, NULL, handler, data);
    if (cc == NULL) {
        return NULL;
    }

    cc->parts = ngx_calloc(n * sizeof(ngx_aai_redis_ccmd_t *), log);
    cc->merged = calloc(1, sizeof(redisReply));

    if (cc->parts == NULL || cc->merged == NULL) {
        goto failed;
    }

    cc->merged->type = REDIS_REPLY_ARRAY;
    cc->merged->element = calloc(n, sizeof(redisReply *));

    if (cc->merged->element == NULL) {
        goto failed;
    }

    cc->merged->elements = n;

    cc->top = ngx_aai_redis_cmd_wrap(cl->rs, cc);
    if (cc->top == NULL) {
        goto failed;
    }

    ngx_str_set(&get[0], "GET");

    for (i = 0; i < n; i++) {
        get[1] = argv[i + 1];

        part = ngx_aai_redis_cluster_ccmd(cl, log, 2, get, NULL, NULL);
        if (part == NULL) {
            goto failed;
        }

        part->parent = cc;
        part->index = i;
        part->slot = ngx_aai_redis_cluster_slot(get[1].data, get[1].len);

        cc->parts[i] = part;
        cc->index = i + 1;

        if (ngx_aai_redis_cluster_dispatch(part, NULL, 0) != NGX_OK) {
            goto failed;
        }

        cc->pending++;
    }

    return cc->top;

failed:

    ngx_aai_redis_cluster_cancel(cc);

    return NULL;
}


/*
 * EVAL or EVALSHA whose keys are in several slots: once per slot, with that
 * slot's keys and every argument; the reply is the sum of theirs.  For the
 * scripts that treat each key alone and count what they did (the cache's
 * purge).
 */

ngx_aai_redis_cmd_t *
ngx_aai_redis_cluster_eval(ngx_aai_redis_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t argc, ngx_str_t *argv, ngx_aai_redis_handler_pt handler,
    void *data)
{
    u_char                 num[NGX_INT_T_LEN];
    ngx_int_t              nkeys;
    ngx_str_t             *pargv;
    ngx_uint_t             i, j, k, n, slot, nparts;
    ngx_aai_redis_ccmd_t  *cc, *part;
    ngx_uint_t             slots[NGX_AAI_REDIS_CLUSTER_MAX_MGET];

    nkeys = ngx_atoi(argv[2].data, argv[2].len);

    if (nkeys < 2 || nkeys > NGX_AAI_REDIS_CLUSTER_MAX_MGET) {
        return NULL;
    }

    nparts = 0;

    for (i = 0; i < (ngx_uint_t) nkeys; i++) {
        slot = ngx_aai_redis_cluster_slot(argv[3 + i].data, argv[3 + i].len);

        for (j = 0; j < nparts; j++) {
            if (slots[j] == slot) {
                break;
            }
        }

        if (j == nparts) {
            slots[nparts++] = slot;
        }
    }

    pargv = ngx_alloc(argc * sizeof(ngx_str_t), log);
    if (pargv == NULL) {
        return NULL;
    }

    cc = ngx_aai_redis_cluster_ccmd(cl, log, 0, NULL, handler, data);
    if (cc == NULL) {
        ngx_free(pargv);
        return NULL;
    }

    cc->parts = ngx_calloc(nparts * sizeof(ngx_aai_redis_ccmd_t *), log);
    cc->merged = calloc(1, sizeof(redisReply));

    if (cc->parts == NULL || cc->merged == NULL) {
        goto failed;
    }

    cc->merged->type = REDIS_REPLY_INTEGER;

    cc->top = ngx_aai_redis_cmd_wrap(cl->rs, cc);
    if (cc->top == NULL) {
        goto failed;
    }

    for (j = 0; j < nparts; j++) {
        pargv[0] = argv[0];
        pargv[1] = argv[1];
        n = 0;

        for (i = 0; i < (ngx_uint_t) nkeys; i++) {
            if (ngx_aai_redis_cluster_slot(argv[3 + i].data, argv[3 + i].len)
                == slots[j])
            {
                pargv[3 + n++] = argv[3 + i];
            }
        }

        k = 3 + n;

        for (i = 3 + nkeys; i < argc; i++) {
            pargv[k++] = argv[i];
        }

        pargv[2].data = num;
        pargv[2].len = ngx_sprintf(num, "%ui", n) - num;

        part = ngx_aai_redis_cluster_ccmd(cl, log, k, pargv, NULL, NULL);
        if (part == NULL) {
            goto failed;
        }

        part->parent = cc;
        part->index = j;
        part->slot = slots[j];

        cc->parts[j] = part;
        cc->index = j + 1;

        if (ngx_aai_redis_cluster_dispatch(part, NULL, 0) != NGX_OK) {
            goto failed;
        }

        cc->pending++;
    }

    ngx_free(pargv);

    return cc->top;

failed:

    ngx_free(pargv);
    ngx_aai_redis_cluster_cancel(cc);

    return NULL;
}


void
ngx_aai_redis_cluster_part_done(ngx_aai_redis_ccmd_t *part,
    ngx_aai_redis_result_t *res)
{
    redisReply              *r, *copy;
    ngx_aai_redis_ccmd_t    *cc;
    ngx_aai_redis_result_t   out;

    cc = part->parent;
    r = res->reply;

    cc->parts[part->index] = NULL;

    if (r == NULL) {
        if (cc->error == NULL) {
            cc->error = res->error;
        }

    } else if (cc->merged->type == REDIS_REPLY_INTEGER) {
        if (r->type == REDIS_REPLY_INTEGER) {
            cc->merged->integer += r->integer;

        } else if (cc->error == NULL) {
            cc->error = (r->type == REDIS_REPLY_ERROR) ? "error reply"
                                                       : "unexpected reply";
        }

    } else if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL) {
        copy = calloc(1, sizeof(redisReply));

        if (copy != NULL) {
            copy->type = r->type;

            if (r->type == REDIS_REPLY_STRING) {
                copy->str = malloc(r->len + 1);

                if (copy->str == NULL) {
                    free(copy);
                    copy = NULL;

                } else {
                    ngx_memcpy(copy->str, r->str, r->len);
                    copy->str[r->len] = '\0';
                    copy->len = r->len;
                }
            }
        }

        if (copy == NULL) {
            if (cc->error == NULL) {
                cc->error = "no memory";
            }

        } else {
            cc->merged->element[part->index] = copy;
        }

    } else if (cc->error == NULL) {
        cc->error = "unexpected reply";
    }

    ngx_aai_redis_cluster_free(part);

    if (--cc->pending) {
        return;
    }

    ngx_memzero(&out, sizeof(ngx_aai_redis_result_t));
    out.latency = res->latency;
    out.latency_us = res->latency_us;

    if (cc->error) {
        out.error = cc->error;

    } else {
        out.reply = cc->merged;
    }

    cc->handler(&out, cc->data);

    ngx_aai_redis_cluster_free(cc);
}

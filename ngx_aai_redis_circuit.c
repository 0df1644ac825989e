
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_circuit: the circuit state shared by every client of the
 * suite, per endpoint, in the shared zone "aai_redis_circuit": when a
 * command to an endpoint times out in one client, the others (any module,
 * any worker) fail their commands at once until it has reconnected.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"


static ngx_int_t ngx_aai_redis_circuit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


/*
 * The shared circuit state.  The modules are separate .so files that share
 * no symbols: each asks for the same zone by name.  nginx gives the same
 * zone to callers with the same name, size and tag; the tag is the address
 * of ngx_core_module, which is the same in every module (the .so files
 * each have their own copy of any static of this file).
 */

ngx_int_t
ngx_aai_redis_circuit_add(ngx_conf_t *cf, ngx_aai_redis_t *rs)
{
    ngx_str_t        name = ngx_string(NGX_AAI_REDIS_CIRCUIT_ZONE);
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, &name, 16 * ngx_pagesize,
                                 &ngx_core_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    /* any module's init will do: they are the same code */

    zone->init = ngx_aai_redis_circuit_init_zone;
    zone->data = zone;

    rs->circuit_zone = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_aai_redis_circuit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t              *shpool;
    ngx_aai_redis_circuit_shm_t  *shm;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    /* a zone kept across a reload keeps its state */

    shm = shpool->data;

    if (data && shm && shm->magic == NGX_AAI_REDIS_CIRCUIT_MAGIC) {
        return NGX_OK;
    }

    shm = ngx_slab_calloc(shpool, sizeof(ngx_aai_redis_circuit_shm_t));
    if (shm == NULL) {
        return NGX_ERROR;
    }

    shm->magic = NGX_AAI_REDIS_CIRCUIT_MAGIC;
    shpool->data = shm;

    return NGX_OK;
}


/* init_process: the endpoint's slot, taken if new; none if all are taken */

void
ngx_aai_redis_circuit_find(ngx_aai_redis_t *rs)
{
    ngx_str_t                    *name;
    ngx_uint_t                    i;
    ngx_slab_pool_t              *shpool;
    ngx_aai_redis_circuit_t      *c;
    ngx_aai_redis_circuit_shm_t  *shm;

    if (rs->circuit_zone == NULL || rs->circuit_zone->shm.addr == NULL) {
        return;
    }

    name = &rs->conf->addrs[0].name;

    if (name->len == 0 || name->len > NGX_AAI_REDIS_CIRCUIT_NAME) {
        return;
    }

    shpool = (ngx_slab_pool_t *) rs->circuit_zone->shm.addr;
    shm = shpool->data;

    if (shm == NULL || shm->magic != NGX_AAI_REDIS_CIRCUIT_MAGIC) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < shm->nslots; i++) {
        c = &shm->slots[i];

        if (c->len == name->len
            && ngx_memcmp(c->name, name->data, name->len) == 0)
        {
            rs->circuit = c;
            break;
        }
    }

    if (rs->circuit == NULL && shm->nslots < NGX_AAI_REDIS_CIRCUIT_SLOTS) {
        c = &shm->slots[shm->nslots];

        ngx_memcpy(c->name, name->data, name->len);
        c->len = (uint32_t) name->len;
        c->until = 0;

        ngx_memory_barrier();

        shm->nslots++;
        rs->circuit = c;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Commands to the endpoint timed out: the others fail at once until this
 * connection has reconnected (its backoff, then its connect and
 * handshake), or someone's handshake is answered.
 */

void
ngx_aai_redis_circuit_open(ngx_aai_redis_conn_t *conn)
{
    ngx_msec_t                until;
    ngx_aai_redis_t          *rs;
    ngx_aai_redis_circuit_t  *c;

    rs = conn->rs;
    c = rs->circuit;

    if (c == NULL || conn->sub) {
        return;
    }

    until = ngx_current_msec + conn->backoff + rs->conf->connect_timeout;

    if (until == 0) {
        until = 1;
    }

    c->pid = (ngx_atomic_uint_t) ngx_pid;
    c->owner = (ngx_atomic_uint_t) (uintptr_t) rs;

    ngx_memory_barrier();

    c->until = (ngx_atomic_uint_t) until;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: shared circuit open for %M ms",
                   &rs->conf->url, until - ngx_current_msec);
}


/* the endpoint answered a handshake */

void
ngx_aai_redis_circuit_close(ngx_aai_redis_t *rs)
{
    if (rs->circuit && rs->circuit->until) {
        rs->circuit->until = 0;

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                       "aai redis %V: shared circuit closed",
                       &rs->conf->url);
    }
}


/* 1 while another client saw the endpoint time out */

ngx_uint_t
ngx_aai_redis_circuit_blocked(ngx_aai_redis_t *rs)
{
    ngx_msec_t                until;
    ngx_aai_redis_circuit_t  *c;

    c = rs->circuit;

    if (c == NULL) {
        return 0;
    }

    until = (ngx_msec_t) c->until;

    if (until == 0 || (ngx_msec_int_t) (until - ngx_current_msec) <= 0) {
        return 0;
    }

    ngx_memory_barrier();

    /* its own timeouts a client handles with its own connections */

    return !(c->pid == (ngx_atomic_uint_t) ngx_pid
             && c->owner == (ngx_atomic_uint_t) (uintptr_t) rs);
}

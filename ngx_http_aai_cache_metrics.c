
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_metrics: the cache's Prometheus metrics (README,
 * Metrics), defined at configuration time.  Requests are counted by the log
 * handler, stores by the store handlers, bytes as a hit is sent, Redis
 * latency as each reply comes.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


ngx_int_t
ngx_http_aai_cache_add_metrics(ngx_conf_t *cf,
    ngx_http_aai_cache_main_conf_t *amcf)
{
    ngx_int_t           idx;
    ngx_str_t           label;
    ngx_uint_t          i;
    ngx_aai_metrics_t  *m;

    static const char  *labels[] = {
        NULL,
        "status=\"miss\"",
        "status=\"bypass\"",
        "status=\"expired\"",
        "status=\"stale\"",
        "status=\"updating\"",
        "status=\"hit\"",
        "status=\"revalidated\""
    };

    m = ngx_aai_metrics_create(cf, "cache", &ngx_http_aai_cache_module);
    if (m == NULL) {
        return NGX_ERROR;
    }

    amcf->metrics = m;

    for (i = 1; i < NGX_HTTP_AAI_CACHE_NSTATUS; i++) {
        label.data = (u_char *) labels[i];
        label.len = ngx_strlen(labels[i]);

        idx = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                  "aai_cache_requests_total",
                                  "Requests of cached locations, "
                                  "by cache status.", &label);
        if (idx == NGX_ERROR) {
            return NGX_ERROR;
        }

        amcf->m_requests[i] = idx;
    }

    amcf->m_stored = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                         "aai_cache_stored_total",
                                         "Responses stored in Redis.", NULL);

    amcf->m_store_failures = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                         "aai_cache_store_failures_total",
                                         "Responses Redis did not store.",
                                         NULL);

    amcf->m_bytes = ngx_aai_metrics_add(m, NGX_AAI_METRIC_COUNTER,
                                        "aai_cache_bytes_served_total",
                                        "Body bytes sent from the cache.",
                                        NULL);

    amcf->m_latency = ngx_aai_metrics_add_redis_latency(m,
                                        "aai_cache_redis_latency_seconds",
                                        "Latency of the cache's Redis "
                                        "commands.");

    if (amcf->m_stored == NGX_ERROR
        || amcf->m_store_failures == NGX_ERROR
        || amcf->m_bytes == NGX_ERROR
        || amcf->m_latency == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    if ((amcf->redis
         && ngx_aai_redis_metrics(amcf->redis, m, "cache") != NGX_OK)
        || (amcf->store
            && ngx_aai_redis_metrics(amcf->store, m, "cache_store")
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    return ngx_aai_metrics_zone(cf, m);
}


/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: a zone's definition, the parameters of
 * "aai_ratelimit_zone", the arguments the script gets for it, its metrics
 * and its key prefix.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_ratelimit.h"


static ngx_int_t ngx_http_aai_ratelimit_parse_rate(ngx_str_t *value,
    ngx_http_aai_ratelimit_zone_t *zone);


static const char  *ngx_http_aai_ratelimit_outcomes[] = {
    "passed", "rejected", "dry_run_rejected", "delayed", "error", "local",
    "near_limit"
};


static const char  *ngx_http_aai_ratelimit_release_names[] = {
    "aai_ratelimit_leases_released_total",
    "aai_ratelimit_releases_dropped_total"
};


static const char  *ngx_http_aai_ratelimit_release_help[] = {
    "Leases (concurrency=) released at their requests' end, as Redis took "
    "the release.",
    "Releases of leases (concurrency=) lost after every try, or at worker "
    "exit; the lease expires by itself."
};


/*
 * Finds a zone by name, or adds it undefined: "aai_ratelimit" may name a
 * zone defined later in the http block.
 */

ngx_http_aai_ratelimit_zone_t *
ngx_http_aai_ratelimit_find_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name)
{
    u_char                              *p;
    ngx_uint_t                           i;
    ngx_http_aai_ratelimit_zone_t       *zone, **zones, **zp;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    for (p = name->data; p < name->data + name->len; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z')
            && !(*p >= '0' && *p <= '9') && *p != '_' && *p != '-'
            && *p != '.')
        {
            break;
        }
    }

    if (name->len == 0 || name->len > 64 || p != name->data + name->len
        || ngx_strcmp(name->data, "off") == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone name \"%V\" in \"%V\"",
                           name, &cmd->name);
        return NULL;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_aai_ratelimit_module);

    zones = mcf->zones.elts;

    for (i = 0; i < mcf->zones.nelts; i++) {
        if (zones[i]->name.len == name->len
            && ngx_strncmp(zones[i]->name.data, name->data, name->len) == 0)
        {
            return zones[i];
        }
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_ratelimit_zone_t));
    if (zone == NULL) {
        return NULL;
    }

    zone->name = *name;
    zone->file = cf->conf_file->file.name;
    zone->line = cf->conf_file->line;

    zp = ngx_array_push(&mcf->zones);
    if (zp == NULL) {
        return NULL;
    }

    *zp = zone;

    return zone;
}


char *
ngx_http_aai_ratelimit_zone_param(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *value,
    ngx_uint_t *nodelay)
{
    ngx_int_t                          n;
    ngx_str_t                          s;
    ngx_http_compile_complex_value_t   ccv;

    if (ngx_strncmp(value->data, "key=", 4) == 0) {

        s.data = value->data + 4;
        s.len = value->len - 4;

        if (s.len == 0) {
            goto invalid;
        }

        zone->key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (zone->key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &s;
        ccv.complex_value = zone->key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "rate=", 5) == 0) {

        if (ngx_http_aai_ratelimit_parse_rate(value, zone) != NGX_OK) {
            goto invalid;
        }

        zone->rate.data = value->data + 5;
        zone->rate.len = value->len - 5;

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "concurrency=", 12) == 0) {

        n = ngx_atoi(value->data + 12, value->len - 12);
        if (n <= 0 || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->concurrency = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "lease=", 6) == 0) {

        s.data = value->data + 6;
        s.len = value->len - 6;

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n < 100 || n > 86400000) {
            goto invalid;
        }

        zone->lease = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "count=", 6) == 0) {
        return ngx_http_aai_ratelimit_count_param(cf, cmd, value,
                                                  &zone->count);
    }

    if (ngx_strncmp(value->data, "burst=", 6) == 0) {

        n = ngx_atoi(value->data + 6, value->len - 6);
        if (n == NGX_ERROR || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->burst = n;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "delay=", 6) == 0) {

        n = ngx_atoi(value->data + 6, value->len - 6);
        if (n == NGX_ERROR || n > NGX_HTTP_AAI_RL_MAX_LIMIT) {
            goto invalid;
        }

        zone->delay = n;
        *nodelay = 0;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "nodelay") == 0) {
        *nodelay = 1;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=sliding") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_SLIDING;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=gcra") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_GCRA;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "algorithm=counter") == 0) {
        zone->algorithm = NGX_HTTP_AAI_RL_COUNTER;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "algorithm=", 10) == 0) {
        goto invalid;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\"",
                       value, &cmd->name);
    return NGX_CONF_ERROR;

invalid:

    s.data = value->data;
    s.len = (u_char *) ngx_strchr(value->data, '=') - value->data;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid %V \"%s\" in \"%V\"",
                       &s, value->data + s.len + 1, &cmd->name);
    return NGX_CONF_ERROR;
}


/* rate=Nr/s, Nr/m, Nr/h, or with a window count: Nr/5m, Nr/10s */

static ngx_int_t
ngx_http_aai_ratelimit_parse_rate(ngx_str_t *value,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    u_char      *p, *last, *start;
    ngx_int_t    limit, count, unit;

    p = value->data + 5;
    last = value->data + value->len;

    for (start = p; p < last && *p >= '0' && *p <= '9'; p++) { /* void */ }

    limit = ngx_atoi(start, p - start);

    if (limit <= 0 || limit > NGX_HTTP_AAI_RL_MAX_LIMIT
        || last - p < 3 || p[0] != 'r' || p[1] != '/')
    {
        return NGX_ERROR;
    }

    for (p += 2, start = p; p < last && *p >= '0' && *p <= '9'; p++) {
        /* void */
    }

    count = (p == start) ? 1 : ngx_atoi(start, p - start);

    if (count <= 0 || last - p != 1) {
        return NGX_ERROR;
    }

    switch (*p) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    default:
        return NGX_ERROR;
    }

    if (count > NGX_HTTP_AAI_RL_MAX_WINDOW / unit) {
        return NGX_ERROR;
    }

    zone->limit = limit;
    zone->window = (uint64_t) count * unit * 1000000;

    return NGX_OK;
}


char *
ngx_http_aai_ratelimit_zone_args(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    u_char      *p;
    ngx_str_t   *a;

    p = ngx_pnalloc(cf->pool, 2 + 3 * NGX_INT_T_LEN + NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    a = zone->args;

    a[0].data = p;
    p = ngx_sprintf(p, "%ui", zone->algorithm);
    a[0].len = p - a[0].data;

    a[1].data = p;
    p = ngx_sprintf(p, "%ui", zone->limit);
    a[1].len = p - a[1].data;

    a[2].data = p;
    p = ngx_sprintf(p, "%uL", zone->window);
    a[2].len = p - a[2].data;

    a[3].data = p;
    p = ngx_sprintf(p, "%ui", zone->burst);
    a[3].len = p - a[3].data;

    a[4].data = p;
    p = ngx_sprintf(p, "%ui", zone->delay);
    a[4].len = p - a[4].data;

    a[5].data = p;
    *p++ = '1';
    a[5].len = 1;

    return NGX_CONF_OK;
}


char *
ngx_http_aai_ratelimit_zone_metrics(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf,
    ngx_http_aai_ratelimit_zone_t *zone)
{
    ngx_str_t   labels;
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_AAI_RL_M_NUMBER; i++) {

        labels.data = ngx_pnalloc(cf->pool, zone->name.len
                                  + sizeof("zone=\"\",outcome=\"\"")
                                  + sizeof("dry_run_rejected"));
        if (labels.data == NULL) {
            return NGX_CONF_ERROR;
        }

        if (i == NGX_HTTP_AAI_RL_M_LOCAL) {
            labels.len = ngx_sprintf(labels.data, "zone=\"%V\"", &zone->name)
                         - labels.data;

            zone->metrics[i] = ngx_aai_metrics_add(mcf->metrics,
                                   NGX_AAI_METRIC_COUNTER,
                                   "aai_ratelimit_local_rejects_total",
                                   "Requests rejected by the local blocklist "
                                   "without a Redis round trip.", &labels);

        } else {
            labels.len = ngx_sprintf(labels.data,
                                     "zone=\"%V\",outcome=\"%s\"",
                                     &zone->name,
                                     ngx_http_aai_ratelimit_outcomes[i])
                         - labels.data;

            zone->metrics[i] = ngx_aai_metrics_add(mcf->metrics,
                                   NGX_AAI_METRIC_COUNTER,
                                   "aai_ratelimit_requests_total",
                                   "Rate limiter decisions per zone.",
                                   &labels);
        }

        if (zone->metrics[i] == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    if (!zone->concurrency) {
        return NGX_CONF_OK;
    }

    /* concurrency=: the releases of leases, as Redis took them, and lost */

    labels.data = ngx_pnalloc(cf->pool, zone->name.len + sizeof("zone=\"\""));
    if (labels.data == NULL) {
        return NGX_CONF_ERROR;
    }

    labels.len = ngx_sprintf(labels.data, "zone=\"%V\"", &zone->name)
                 - labels.data;

    for (i = 0; i < NGX_HTTP_AAI_RL_C_NUMBER; i++) {
        zone->released[i] = ngx_aai_metrics_add(mcf->metrics,
                                   NGX_AAI_METRIC_COUNTER,
                                   ngx_http_aai_ratelimit_release_names[i],
                                   ngx_http_aai_ratelimit_release_help[i],
                                   &labels);
        if (zone->released[i] == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * Every zone named by "aai_ratelimit" is defined, Redis is configured, and
 * each zone gets its key prefix: prefix, zone name, ":".
 */

ngx_int_t
ngx_http_aai_ratelimit_check_zones(ngx_conf_t *cf,
    ngx_http_aai_ratelimit_main_conf_t *mcf)
{
    u_char                         *p;
    ngx_uint_t                      i;
    ngx_http_aai_ratelimit_zone_t  *zone, **zones;

    zones = mcf->zones.elts;

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i];

        if (zone->key == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown zone \"%V\" in \"aai_ratelimit\" in %V:%ui",
                          &zone->name, &zone->file, zone->line);
            return NGX_ERROR;
        }

        if (mcf->redis == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"aai_ratelimit_zone\" \"%V\" requires "
                          "\"aai_ratelimit_redis\" in %V:%ui",
                          &zone->name, &zone->file, zone->line);
            return NGX_ERROR;
        }

        zone->prefix.len = mcf->prefix.len + zone->name.len + 1;
        zone->prefix.data = ngx_pnalloc(cf->pool, zone->prefix.len);
        if (zone->prefix.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(zone->prefix.data, mcf->prefix.data, mcf->prefix.len);
        p = ngx_cpymem(p, zone->name.data, zone->name.len);
        *p = ':';
    }

    return NGX_OK;
}

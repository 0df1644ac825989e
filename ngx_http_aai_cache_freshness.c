
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_freshness: the Cache-Control parser and the freshness
 * decision of ngx_http_aai_cache_module, on a response's status and header
 * values and the location's aai_cache_valid alone.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_aai_cache_freshness.h"


/* no lifetime is taken past 2^31 s (RFC 9111, 1.2.2) */
#define NGX_HTTP_AAI_CACHE_MAX_LIFETIME   0x80000000LL


static void ngx_http_aai_cache_cc_directive(ngx_http_aai_cache_cc_t *cc,
    u_char *name, size_t nlen, u_char *val, size_t vlen);
static ngx_int_t ngx_http_aai_cache_cc_number(u_char *val, size_t vlen);
static const char *ngx_http_aai_cache_lifetime(
    ngx_http_aai_cache_freshness_t *f, ngx_http_aai_cache_cc_t *cc,
    uint64_t *fresh);
static time_t ngx_http_aai_cache_date(ngx_str_t *v);
static uint64_t ngx_http_aai_cache_initial_age(
    ngx_http_aai_cache_freshness_t *f, time_t date);
static int64_t ngx_http_aai_cache_age_value(ngx_str_t *v);


const char *
ngx_http_aai_cache_freshness(ngx_http_aai_cache_freshness_t *f)
{
    uint64_t                  fresh;
    ngx_uint_t                i;
    const char               *reason;
    ngx_http_aai_cache_cc_t   cc;

    /* statuses the client's own request caused, whatever aai_cache_valid */

    switch (f->status) {
    case 400:
    case 406:
    case 412:
    case 416:
    case 417:
    case 431:
        return "status";
    }

    if (f->valid == NGX_HTTP_AAI_CACHE_NOT_VALID) {
        return "status";
    }

    /*
     * RFC 9213, 2.1: a targeted field, when valid, is used instead of
     * Cache-Control; an invalid one is ignored
     */

    ngx_http_aai_cache_cc_init(&cc);

    for (i = 0; i < f->ntargeted; i++) {
        ngx_http_aai_cache_cc_parse(&f->targeted[i], &cc);
    }

    if (f->ntargeted == 0 || cc.invalid || cc.sf_invalid) {
        ngx_http_aai_cache_cc_init(&cc);

        for (i = 0; i < f->ncache_control; i++) {
            ngx_http_aai_cache_cc_parse(&f->cache_control[i], &cc);
        }
    }

    if (cc.no_store) {
        return "no-store";
    }

    if (cc.private) {
        return "private";
    }

    if (f->credentialed && !ngx_http_aai_cache_cc_shareable(&cc)) {
        return "credentials";
    }

    reason = ngx_http_aai_cache_lifetime(f, &cc, &fresh);

    if (reason) {
        return reason;
    }

    f->fresh_until = fresh;
    f->swr = cc.swr > 0 ? (uint32_t) cc.swr : 0;
    f->sie = cc.sie > 0 ? (uint32_t) cc.sie : 0;

    return NULL;
}


/*
 * X-Accel-Expires first (as the proxy module), then s-maxage, max-age,
 * Expires less Date, and the aai_cache_valid time last; the age the
 * response already has (RFC 9111, 4.2.3) is taken off the lifetime of
 * s-maxage, max-age and Expires.
 */

static const char *
ngx_http_aai_cache_lifetime(ngx_http_aai_cache_freshness_t *f,
    ngx_http_aai_cache_cc_t *cc, uint64_t *fresh)
{
    time_t      t, date;
    int64_t     n;
    ngx_str_t  *v;

    date = ngx_http_aai_cache_date(f->date);

    if (date == NGX_ERROR) {
        date = (time_t) (f->now / 1000);
    }

    f->initial_age = ngx_http_aai_cache_initial_age(f, date);

    v = f->x_accel_expires;

    if (v && v->len) {
        if (v->data[0] == '@') {
            t = ngx_atotm(v->data + 1, v->len - 1);

            if (t != NGX_ERROR) {
                if ((uint64_t) t
                    > f->now / 1000 + NGX_HTTP_AAI_CACHE_MAX_LIFETIME)
                {
                    t = f->now / 1000 + NGX_HTTP_AAI_CACHE_MAX_LIFETIME;
                }

                if ((uint64_t) t * 1000 <= f->now) {
                    return "expired";
                }

                *fresh = (uint64_t) t * 1000;
                return NULL;
            }

        } else {
            n = ngx_atoi(v->data, v->len);

            if (n == 0) {
                return "zero-ttl";
            }

            if (n != NGX_ERROR) {
                n = ngx_min(n, NGX_HTTP_AAI_CACHE_MAX_LIFETIME);
                *fresh = f->now + (uint64_t) n * 1000;
                return NULL;
            }
        }
    }

    if (cc->no_cache) {
        return "no-cache";
    }

    if (cc->invalid) {
        return "cache-control";
    }

    n = cc->s_maxage >= 0 ? cc->s_maxage : cc->max_age;

    if (n >= 0) {
        n -= (int64_t) f->initial_age;

        if (n <= 0) {
            return "zero-ttl";
        }

        *fresh = f->now + (uint64_t) n * 1000;
        return NULL;
    }

    if (f->expires) {

        /* an invalid Expires is a time in the past (RFC 9111, 5.3) */

        t = ngx_http_aai_cache_date(f->expires);

        if (t == NGX_ERROR) {
            return "expired";
        }

        n = (int64_t) t - (int64_t) date - (int64_t) f->initial_age;

        if (n <= 0) {
            return "expired";
        }

        n = ngx_min(n, NGX_HTTP_AAI_CACHE_MAX_LIFETIME);
        *fresh = f->now + (uint64_t) n * 1000;
        return NULL;
    }

    if (f->valid > 0) {
        n = ngx_min(f->valid, NGX_HTTP_AAI_CACHE_MAX_LIFETIME);
        *fresh = f->now + (uint64_t) n * 1000;
        return NULL;
    }

    if (f->valid == 0) {
        return "zero-ttl";
    }

    return "no-ttl";
}


/*
 * An HTTP-date (RFC 9110, 5.6.7): the IMF-fixdate and rfc850 forms end in
 * "GMT", asctime has no zone and no comma; any other zone is invalid.
 */

static time_t
ngx_http_aai_cache_date(ngx_str_t *v)
{
    u_char  *p, *last;
    time_t   t;

    if (v == NULL) {
        return NGX_ERROR;
    }

    p = v->data;
    last = p + v->len;

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (ngx_strlchr(p, last, ',') != NULL
        && (last - p < 4
            || ngx_strncasecmp(last - 4, (u_char *) " GMT", 4) != 0))
    {
        return NGX_ERROR;
    }

    t = ngx_parse_http_time(p, last - p);

    if (t < 0) {
        return NGX_ERROR;
    }

    return t;
}


/*
 * The corrected initial age (RFC 9111, 4.2.3), s: the larger of the Age
 * value and the apparent age, now less Date; Date has a resolution of a
 * second, so one second of apparent age is rounding, not age.
 */

static uint64_t
ngx_http_aai_cache_initial_age(ngx_http_aai_cache_freshness_t *f,
    time_t date)
{
    int64_t  age, apparent;

    age = ngx_http_aai_cache_age_value(f->age);

    apparent = (int64_t) (f->now / 1000) - (int64_t) date;

    if (apparent > 1 && apparent > age) {
        age = apparent;
    }

    if (age < 0) {
        return 0;
    }

    return (uint64_t) ngx_min(age, NGX_HTTP_AAI_CACHE_MAX_LIFETIME);
}


/*
 * The Age value (RFC 9111, 5.1): the first member of the field (a list
 * may arrive), a non-negative integer; -1 if absent or invalid (ignored).
 */

static int64_t
ngx_http_aai_cache_age_value(ngx_str_t *v)
{
    u_char   *p, *last, *start;
    int64_t   n;

    if (v == NULL) {
        return -1;
    }

    p = v->data;
    last = p + v->len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    start = p;
    n = 0;

    while (p < last && *p >= '0' && *p <= '9') {
        if (n < NGX_HTTP_AAI_CACHE_MAX_LIFETIME) {
            n = n * 10 + (*p - '0');
        }

        p++;
    }

    if (p == start) {
        return -1;
    }

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p < last && *p != ',') {
        return -1;
    }

    return ngx_min(n, NGX_HTTP_AAI_CACHE_MAX_LIFETIME);
}


void
ngx_http_aai_cache_cc_init(ngx_http_aai_cache_cc_t *cc)
{
    ngx_memzero(cc, sizeof(ngx_http_aai_cache_cc_t));

    cc->s_maxage = -1;
    cc->max_age = -1;
    cc->swr = -1;
    cc->sie = -1;
}


void
ngx_http_aai_cache_cc_parse(ngx_str_t *v, ngx_http_aai_cache_cc_t *cc)
{
    u_char  *p, *q, *last, *name, *val;
    size_t   nlen, vlen;

    p = v->data;
    last = p + v->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p == last) {
            break;
        }

        name = p;

        while (p < last
               && *p != '=' && *p != ',' && *p != ' ' && *p != '\t')
        {
            p++;
        }

        nlen = p - name;

        for (q = name; q < p; q++) {
            if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')
                  || (*q >= '0' && *q <= '9')
                  || *q == '-' || *q == '_' || *q == '.' || *q == '*'))
            {
                cc->sf_invalid = 1;
                break;
            }
        }

        while (p < last && (*p == ' ' || *p == '\t')) {
            p++;
        }

        val = NULL;
        vlen = 0;

        if (p < last && *p == '=') {
            p++;

            while (p < last && (*p == ' ' || *p == '\t')) {
                p++;
            }

            if (p < last && *p == '"') {

                /* a string where a Structured Field has an integer */

                if ((nlen == 7
                     && ngx_strncasecmp(name, (u_char *) "max-age", 7) == 0)
                    || (nlen == 8
                        && ngx_strncasecmp(name, (u_char *) "s-maxage", 8)
                           == 0))
                {
                    cc->sf_invalid = 1;
                }

                val = ++p;

                while (p < last && *p != '"') {
                    if (*p == '\\' && p + 1 < last) {
                        p++;
                    }

                    p++;
                }

                vlen = p - val;

                if (p < last) {
                    p++;
                }

            } else {
                val = p;

                while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
                    p++;
                }

                vlen = p - val;
            }
        }

        while (p < last && *p != ',') {
            p++;
        }

        ngx_http_aai_cache_cc_directive(cc, name, nlen, val, vlen);
    }
}


static void
ngx_http_aai_cache_cc_directive(ngx_http_aai_cache_cc_t *cc, u_char *name,
    size_t nlen, u_char *val, size_t vlen)
{
    ngx_int_t  n;

#define ngx_http_aai_cache_is(s)                                              \
    (nlen == sizeof(s) - 1 && ngx_strncasecmp(name, (u_char *) s, nlen) == 0)

    if (ngx_http_aai_cache_is("no-store")) {
        cc->no_store = 1;

    } else if (ngx_http_aai_cache_is("no-cache")) {
        cc->no_cache = 1;

    } else if (ngx_http_aai_cache_is("private")) {
        cc->private = 1;

    } else if (ngx_http_aai_cache_is("public")) {
        cc->public = 1;

    } else if (ngx_http_aai_cache_is("must-revalidate")) {
        cc->must_revalidate = 1;

    } else if (ngx_http_aai_cache_is("proxy-revalidate")) {
        cc->proxy_revalidate = 1;

    } else if (ngx_http_aai_cache_is("s-maxage")) {
        n = ngx_http_aai_cache_cc_number(val, vlen);

        if (n == NGX_ERROR) {
            cc->invalid = 1;

        } else if (cc->s_maxage < 0) {
            cc->s_maxage = n;
        }

    } else if (ngx_http_aai_cache_is("max-age")) {
        n = ngx_http_aai_cache_cc_number(val, vlen);

        if (n == NGX_ERROR) {
            cc->invalid = 1;

        } else if (cc->max_age < 0) {
            cc->max_age = n;
        }

    } else if (ngx_http_aai_cache_is("stale-while-revalidate")) {
        n = ngx_http_aai_cache_cc_number(val, vlen);

        if (n != NGX_ERROR) {
            cc->swr = n;
        }

    } else if (ngx_http_aai_cache_is("stale-if-error")) {
        n = ngx_http_aai_cache_cc_number(val, vlen);

        if (n != NGX_ERROR) {
            cc->sie = n;
        }
    }

#undef ngx_http_aai_cache_is
}


/* delta-seconds (RFC 9111, 1.2.2): too large a value is 2^31 */

static ngx_int_t
ngx_http_aai_cache_cc_number(u_char *val, size_t vlen)
{
    ngx_int_t  n;

    if (val == NULL || vlen == 0) {
        return NGX_ERROR;
    }

    n = 0;

    while (vlen--) {
        if (*val < '0' || *val > '9') {
            return NGX_ERROR;
        }

        if (n < 0x80000000) {
            n = n * 10 + (*val - '0');
        }

        val++;
    }

    return ngx_min(n, 0x80000000);
}


/* statuses cacheable without aai_cache_valid (RFC 9110, 15.1), but 206 */
static ngx_uint_t  ngx_http_aai_cache_heuristic[] = {
    200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501, 0
};


ngx_int_t
ngx_http_aai_cache_valid_time(ngx_http_aai_cache_valid_t *valid,
    ngx_uint_t n, ngx_uint_t status)
{
    ngx_uint_t  i;

    if (status == 206 || status == 304 || status < 200) {
        return NGX_HTTP_AAI_CACHE_NOT_VALID;
    }

    if (valid == NULL) {
        for (i = 0; ngx_http_aai_cache_heuristic[i]; i++) {
            if (ngx_http_aai_cache_heuristic[i] == status) {
                return NGX_HTTP_AAI_CACHE_NO_TIME;
            }
        }

        return NGX_HTTP_AAI_CACHE_NOT_VALID;
    }

    for (i = 0; i < n; i++) {
        if (valid[i].status == status) {
            return valid[i].valid;
        }
    }

    for (i = 0; i < n; i++) {
        if (valid[i].status == 0) {
            return valid[i].valid;
        }
    }

    return NGX_HTTP_AAI_CACHE_NOT_VALID;
}

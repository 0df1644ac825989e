
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the freshness decision of the cache module
 * (ngx_http_aai_cache_freshness.c): the Cache-Control parser, Expires,
 * Age, X-Accel-Expires and aai_cache_valid.  Input:
 *
 *   byte 0      flags: 1 the request carries a credential, 2 Expires,
 *               4 Age, 8 X-Accel-Expires are present, 16 byte 3 is an
 *               aai_cache_valid list
 *   bytes 1-2   the status, modulo 600
 *   byte 3      aai_cache_valid's time for the status: 0 not cacheable,
 *               1 no time, 2 zero, else a time up to about 2^32 s; with
 *               flag 16, the list: bits 0-1 its length (0: no
 *               aai_cache_valid), then 2 bits per entry, its status: the
 *               response's, any, 200 or 404, looked up by
 *               ngx_http_aai_cache_valid_time()
 *   the rest    lines: Expires, Age, X-Accel-Expires, then one
 *               Cache-Control value per line (at most 16)
 *
 * Invariants: a stored response is fresh for a time in (0, 2^31] s from
 * now, a known reason otherwise, never stored for a status the client's
 * own request caused nor, with a credential, without public, s-maxage or
 * must-revalidate; aai_cache_valid gives a status the time of its own
 * entry, else of "any", never a time to 206, 304 or 1xx, and without the
 * directive none but to the statuses cacheable by default.
 *
 * nginx's own ngx_atoi(), ngx_atotm(), ngx_strncasecmp() and
 * ngx_parse_http_time() live in the nginx binary: small versions of them
 * are below (the last one knows only the IMF-fixdate form).
 */


#include <ngx_config.h>                 /* _GNU_SOURCE first: strptime() */
#include <ngx_core.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ngx_http_aai_cache_freshness.h"


#define FUZZ_NOW   1767225600000ULL               /* 2026-01-01, ms */
#define FUZZ_MAX_CC  16


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    ngx_int_t  value;

    if (n == 0) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (value >= NGX_MAX_INT_T_VALUE / 10) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


time_t
ngx_atotm(u_char *line, size_t n)
{
    time_t  value;

    if (n == 0) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (value >= NGX_MAX_TIME_T_VALUE / 10) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


ngx_int_t
ngx_strncasecmp(u_char *s1, u_char *s2, size_t n)
{
    return strncasecmp((char *) s1, (char *) s2, n);
}


time_t
ngx_parse_http_time(u_char *value, size_t len)
{
    char       buf[64], *end;
    struct tm  tm;

    if (len >= sizeof(buf)) {
        return NGX_ERROR;
    }

    memcpy(buf, value, len);
    buf[len] = '\0';
    memset(&tm, 0, sizeof(tm));

    end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);

    if (end == NULL || *end != '\0') {
        return NGX_ERROR;
    }

    return timegm(&tm);
}


static int
fuzz_known(const char *reason)
{
    static const char  *known[] = {
        "status", "no-store", "private", "credentials", "no-cache",
        "cache-control", "expired", "zero-ttl", "no-ttl", NULL
    };

    int  i;

    for (i = 0; known[i]; i++) {
        if (strcmp(reason, known[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


/* aai_cache_valid as byte b describes it, checked against its rules */

static ngx_int_t
fuzz_valid(ngx_uint_t status, u_char b)
{
    ngx_int_t                   t, want;
    ngx_uint_t                  i, n;
    ngx_http_aai_cache_valid_t  v[3];

    static const ngx_uint_t  heuristic[] = {
        200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501, 0
    };

    n = b & 3;

    for (i = 0; i < n; i++) {
        switch ((b >> (2 + 2 * i)) & 3) {
        case 0:
            v[i].status = status;
            break;
        case 1:
            v[i].status = 0;
            break;
        case 2:
            v[i].status = 200;
            break;
        default:
            v[i].status = 404;
        }

        v[i].valid = 60 * (i + 1);
    }

    t = ngx_http_aai_cache_valid_time(n ? v : NULL, n, status);

    want = NGX_HTTP_AAI_CACHE_NOT_VALID;

    if (status == 206 || status == 304 || status < 200) {
        /* never */

    } else if (n == 0) {
        for (i = 0; heuristic[i]; i++) {
            if (heuristic[i] == status) {
                want = NGX_HTTP_AAI_CACHE_NO_TIME;
            }
        }

    } else {
        for (i = n; i > 0; i--) {
            if (v[i - 1].status == 0) {
                want = v[i - 1].valid;
            }
        }

        for (i = n; i > 0; i--) {
            if (v[i - 1].status == status) {
                want = v[i - 1].valid;
            }
        }
    }

    if (t != want) {
        fprintf(stderr, "aai_cache_valid of %d: %d, not %d\n",
                (int) status, (int) t, (int) want);
        abort();
    }

    return t;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                          *copy, *p, *end, *nl;
    size_t                           i, n;
    const char                      *reason;
    ngx_str_t                        lines[3 + FUZZ_MAX_CC];
    ngx_http_aai_cache_cc_t          cc;
    ngx_http_aai_cache_freshness_t   f;

    if (size < 4) {
        return 0;
    }

    /* a copy of its own, so that reads past the end are caught */

    copy = malloc(size - 4 + 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data + 4, size - 4);

    memset(&f, 0, sizeof(f));
    f.now = FUZZ_NOW;
    f.status = ((data[1] << 8) | data[2]) % 600;
    f.credentialed = data[0] & 1;

    switch ((data[0] & 16) ? 256 : data[3]) {
    case 256:
        f.valid = fuzz_valid(f.status, data[3]);
        break;
    case 0:
        f.valid = NGX_HTTP_AAI_CACHE_NOT_VALID;
        break;
    case 1:
        f.valid = NGX_HTTP_AAI_CACHE_NO_TIME;
        break;
    case 2:
        f.valid = 0;
        break;
    default:
        f.valid = (ngx_int_t) data[3] * 16777259;
    }

    n = 0;
    p = copy;
    end = copy + size - 4;

    while (n < 3 + FUZZ_MAX_CC && p <= end) {
        nl = memchr(p, '\n', end - p);
        if (nl == NULL) {
            nl = end;
        }

        lines[n].data = p;
        lines[n].len = nl - p;
        n++;
        p = nl + 1;
    }

    for (i = n; i < 3; i++) {
        lines[i].data = copy;
        lines[i].len = 0;
    }

    f.expires = (data[0] & 2) ? &lines[0] : NULL;
    f.age = (data[0] & 4) ? &lines[1] : NULL;
    f.x_accel_expires = (data[0] & 8) ? &lines[2] : NULL;
    f.cache_control = &lines[3];
    f.ncache_control = n > 3 ? n - 3 : 0;

    reason = ngx_http_aai_cache_freshness(&f);

    ngx_http_aai_cache_cc_init(&cc);

    for (i = 0; i < f.ncache_control; i++) {
        ngx_http_aai_cache_cc_parse(&f.cache_control[i], &cc);
    }

    if (reason) {
        if (!fuzz_known(reason)) {
            fprintf(stderr, "unknown reason \"%s\"\n", reason);
            abort();
        }

    } else {
        if (f.fresh_until <= f.now
            || f.fresh_until - f.now > 0x80000000ULL * 1000)
        {
            fprintf(stderr, "fresh for %lld ms\n",
                    (long long) (f.fresh_until - f.now));
            abort();
        }

        switch (f.status) {
        case 400: case 406: case 412: case 416: case 417: case 431:
            fprintf(stderr, "status %d stored\n", (int) f.status);
            abort();
        }

        if (f.valid == NGX_HTTP_AAI_CACHE_NOT_VALID || cc.no_store
            || cc.private
            || (f.credentialed && !ngx_http_aai_cache_cc_shareable(&cc)))
        {
            fprintf(stderr, "stored against the rules\n");
            abort();
        }
    }

    free(copy);

    return 0;
}

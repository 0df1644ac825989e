
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_freshness: whether and how long a response may be
 * stored by a shared cache (RFC 9111), from its status and headers only.
 * Pure: no request, no allocation, no clock but the one passed in, so that
 * it is tested and fuzzed on its own (fuzz/freshness_fuzz.c).
 */


#ifndef _NGX_HTTP_AAI_CACHE_FRESHNESS_H_INCLUDED_
#define _NGX_HTTP_AAI_CACHE_FRESHNESS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* aai_cache_valid: the status is not cacheable / has no default time */
#define NGX_HTTP_AAI_CACHE_NOT_VALID      -2
#define NGX_HTTP_AAI_CACHE_NO_TIME        -1


/* Cache-Control of a response */
typedef struct {
    ngx_int_t                     s_maxage;    /* -1: absent */
    ngx_int_t                     max_age;
    ngx_int_t                     swr;
    ngx_int_t                     sie;
    unsigned                      no_store:1;
    unsigned                      no_cache:1;
    unsigned                      private:1;
    unsigned                      public:1;
    unsigned                      must_revalidate:1;
    unsigned                      proxy_revalidate:1;
    unsigned                      invalid:1;
    unsigned                      sf_invalid:1;  /* not a Structured Field
                                                    Dictionary, RFC 9213 */
} ngx_http_aai_cache_cc_t;


typedef struct {
    /* in */
    uint64_t                      now;         /* ms since the epoch */
    ngx_uint_t                    status;
    ngx_int_t                     valid;       /* aai_cache_valid time, s,
                                                  or NGX_HTTP_AAI_CACHE_* */
    ngx_str_t                    *cache_control;  /* each header's value */
    ngx_uint_t                    ncache_control;
    ngx_str_t                    *targeted;    /* a targeted field's values,
                                                  RFC 9213 (CDN-Cache-
                                                  Control): they replace
                                                  Cache-Control if valid */
    ngx_uint_t                    ntargeted;
    ngx_str_t                    *expires;     /* NULL: no such header */
    ngx_str_t                    *age;         /* the first Age line */
    ngx_str_t                    *date;
    ngx_str_t                    *x_accel_expires;
    unsigned                      credentialed:1;  /* the request carries
                                                      a credential */

    /* out, when stored */
    uint64_t                      fresh_until; /* ms since the epoch */
    uint64_t                      initial_age; /* s: its age on arrival,
                                                  RFC 9111, 4.2.3 */
    uint32_t                      swr;         /* s */
    uint32_t                      sie;
} ngx_http_aai_cache_freshness_t;


/* sets every field of cc to "absent" */
void ngx_http_aai_cache_cc_init(ngx_http_aai_cache_cc_t *cc);

/* adds one Cache-Control header value to cc */
void ngx_http_aai_cache_cc_parse(ngx_str_t *v, ngx_http_aai_cache_cc_t *cc);

/*
 * RFC 9111, 3.5: a response to a request with a credential is shared only
 * with public, s-maxage or must-revalidate.
 */
#define ngx_http_aai_cache_cc_shareable(cc)                                   \
    ((cc)->public || (cc)->s_maxage >= 0 || (cc)->must_revalidate)

/*
 * NULL if the response may be stored, with f->fresh_until (> f->now),
 * f->initial_age, f->swr and f->sie set; else why not, a short token for
 * Cache-Status ("status", "no-store", "private", "credentials", "no-cache",
 * "cache-control", "expired", "zero-ttl", "no-ttl").
 */
const char *ngx_http_aai_cache_freshness(ngx_http_aai_cache_freshness_t *f);


/* a status of aai_cache_valid and its time */
typedef struct {
    ngx_uint_t                    status;      /* 0: any */
    time_t                        valid;
} ngx_http_aai_cache_valid_t;

/*
 * The aai_cache_valid time of a response's status (f->valid above): that
 * of the status's own entry, else that of "any", else
 * NGX_HTTP_AAI_CACHE_NOT_VALID.  valid: the n entries of the location,
 * NULL without aai_cache_valid: then the statuses cacheable by default
 * (RFC 9110, 15.1, but 206) have NGX_HTTP_AAI_CACHE_NO_TIME, the others
 * are not valid.  206, 304 and 1xx never are.
 */
ngx_int_t ngx_http_aai_cache_valid_time(ngx_http_aai_cache_valid_t *valid,
    ngx_uint_t n, ngx_uint_t status);


#endif /* _NGX_HTTP_AAI_CACHE_FRESHNESS_H_INCLUDED_ */

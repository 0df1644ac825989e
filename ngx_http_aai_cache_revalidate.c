
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_revalidate: validation of stored responses with the
 * upstream (RFC 9111, 4.3), aai_cache_revalidate.
 *
 * A response with a validator (ETag, Last-Modified) stays in Redis for
 * aai_cache_revalidate_ttl past its freshness; one that may be stored but
 * not reused without validation (no-cache, a zero or past lifetime) is
 * stored already stale.  A request that finds it stale goes upstream with
 * If-None-Match and If-Modified-Since made of the stored validators.  A 304
 * updates the stored headers with its own (4.3.4), the freshness is worked
 * out again from the result, the entry is written back to Redis for every
 * instance, and the client gets the stored body with the updated headers.
 * Any other answer takes the usual way: a 200 replaces the entry.
 *
 * An entry with must-revalidate, proxy-revalidate or no-cache is never
 * served stale (aai_cache_use_stale, stale-while-revalidate,
 * stale-if-error), whatever aai_cache_revalidate says (5.2.2.2, 5.2.2.4,
 * 5.2.2.8).
 *
 * The entry format does not change: the validators and the directives are
 * read from the stored headers.
 */


#include "ngx_http_aai_cache.h"


static ngx_int_t ngx_http_aai_cache_entry_header(ngx_aai_cache_entry_t *e,
    const char *name, size_t len, ngx_str_t *value);
static ngx_int_t ngx_http_aai_cache_add_condition(ngx_list_t *headers,
    const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_aai_cache_merge(ngx_http_request_t *r,
    ngx_aai_cache_entry_t *e, ngx_array_t *fresh, ngx_array_t *merged);
static ngx_uint_t ngx_http_aai_cache_kv_values(ngx_array_t *headers,
    ngx_str_t *name, ngx_str_t *out, ngx_uint_t max);
static const char *ngx_http_aai_cache_refresh(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *e, ngx_array_t *merged,
    ngx_http_aai_cache_freshness_t *f);
static ngx_aai_cache_entry_t *ngx_http_aai_cache_rebuild(
    ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_aai_cache_entry_t *e, ngx_array_t *headers,
    ngx_http_aai_cache_freshness_t *f, size_t *lenp);
static void ngx_http_aai_cache_restore_entry(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *ne, size_t len,
    ngx_http_aai_cache_freshness_t *f);
static ngx_uint_t ngx_http_aai_cache_inm_match(ngx_str_t *v,
    ngx_str_t *etag);
static void ngx_http_aai_cache_client_304(ngx_http_request_t *r,
    ngx_aai_cache_entry_t *e);


/* why a response is not fresh, though it may be stored to be revalidated */
static const char  *ngx_http_aai_cache_revalidatable[] = {
    "no-cache", "zero-ttl", "expired", NULL
};


/* the first header of an entry of that name */

static ngx_int_t
ngx_http_aai_cache_entry_header(ngx_aai_cache_entry_t *e, const char *name,
    size_t len, ngx_str_t *value)
{
    u_char      *p, *n;
    size_t       nlen;
    ngx_uint_t   i;

    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ngx_aai_cache_get16(p);
        n = p + 2;
        p = n + nlen + 1;

        value->len = ngx_aai_cache_get32(p);
        value->data = p + 4;
        p = value->data + value->len + 1;

        if (nlen == len && ngx_strncasecmp(n, (u_char *) name, len) == 0) {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* must-revalidate, proxy-revalidate or no-cache in the entry */

ngx_uint_t
ngx_http_aai_cache_no_stale(ngx_aai_cache_entry_t *e)
{
    u_char                   *p, *name;
    size_t                    nlen;
    ngx_str_t                 value;
    ngx_uint_t                i;
    ngx_http_aai_cache_cc_t   cc;

    ngx_http_aai_cache_cc_init(&cc);

    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ngx_aai_cache_get16(p);
        name = p + 2;
        p = name + nlen + 1;

        value.len = ngx_aai_cache_get32(p);
        value.data = p + 4;
        p = value.data + value.len + 1;

        if (nlen == 13
            && ngx_strncasecmp(name, (u_char *) "Cache-Control", 13) == 0)
        {
            ngx_http_aai_cache_cc_parse(&value, &cc);
        }
    }

    return cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
}


static ngx_int_t
ngx_http_aai_cache_add_condition(ngx_list_t *headers, const char *name,
    ngx_str_t *value)
{
    size_t            len;
    ngx_table_elt_t  *h;

    h = ngx_list_push(headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(name);

    h->key.data = (u_char *) name;
    h->key.len = len;
    h->value = *value;
    h->lowcase_key = (u_char *) (name + len + 1);
    h->hash = ngx_hash_key(h->lowcase_key, len);
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/*
 * Makes the request that goes upstream for the stale entry e conditional:
 * If-None-Match with its ETag, If-Modified-Since with its Last-Modified
 * (the client's own were removed by ngx_http_aai_cache_unconditional()).
 * Neither goes into r->headers_in's shortcuts, so that nginx never answers
 * the client with a 304 it did not ask for.
 */

void
ngx_http_aai_cache_conditional(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e)
{
    ngx_int_t                       etag, lm;
    ngx_str_t                       etag_value, lm_value;
    ngx_list_t                      headers;
    ngx_http_aai_cache_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_aai_cache_module);

    if (!alcf->revalidate
        || e == NULL
        || ngx_http_aai_cache_own_request(r) != NULL)
    {
        return;
    }

    etag = ngx_http_aai_cache_entry_header(e, "ETag", 4, &etag_value);
    lm = ngx_http_aai_cache_entry_header(e, "Last-Modified", 13, &lm_value);

    if (etag != NGX_OK && lm != NGX_OK) {
        return;
    }

    if (ngx_http_aai_cache_strip_conditions(r, &headers) != NGX_OK) {
        return;
    }

    /* the name, NUL, its lowercase form */

    if (etag == NGX_OK
        && ngx_http_aai_cache_add_condition(&headers,
                                       "If-None-Match\0if-none-match",
                                       &etag_value)
           != NGX_OK)
    {
        return;
    }

    if (lm == NGX_OK
        && ngx_http_aai_cache_add_condition(&headers,
                                "If-Modified-Since\0if-modified-since",
                                &lm_value)
           != NGX_OK)
    {
        return;
    }

    r->headers_in.headers = headers;
    r->disable_not_modified = 1;

    ctx->cond = e;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache revalidate etag:%d lm:%d",
                   etag == NGX_OK, lm == NGX_OK);
}


/*
 * In ngx_http_aai_cache_decide(), after the freshness: how long a response
 * with a validator is kept past its freshness (ctx->keep), and whether one
 * that is not fresh may be stored stale, to be revalidated on each use.
 * Returns the reason not to store it, or NULL.
 */

const char *
ngx_http_aai_cache_keep(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_http_aai_cache_freshness_t *f,
    const char *reason)
{
    ngx_uint_t  i;

    ctx->keep = 0;

    if (!alcf->revalidate || alcf->revalidate_ttl <= 0) {
        return reason;
    }

    if (ngx_aai_cache_find_header(&r->headers_out.headers, "ETag", 4, NULL)
        == NULL
        && r->headers_out.last_modified_time == -1
        && ngx_aai_cache_find_header(&r->headers_out.headers,
                                     "Last-Modified", 13, NULL)
           == NULL)
    {
        return reason;
    }

    if (reason) {

        /* X-Accel-Expires: 0 and @past mean "do not cache", as for nginx */

        if (f->x_accel_expires) {
            return reason;
        }

        for (i = 0; ngx_http_aai_cache_revalidatable[i]; i++) {
            if (ngx_strcmp(reason, ngx_http_aai_cache_revalidatable[i])
                == 0)
            {
                break;
            }
        }

        if (ngx_http_aai_cache_revalidatable[i] == NULL) {
            return reason;
        }

        f->fresh_until = f->now;
        f->swr = 0;
        f->sie = 0;
    }

    ctx->keep = alcf->revalidate_ttl;

    return NULL;
}


/* the stored headers, less those the 304 has, then the 304's */

static ngx_int_t
ngx_http_aai_cache_merge(ngx_http_request_t *r, ngx_aai_cache_entry_t *e,
    ngx_array_t *fresh, ngx_array_t *merged)
{
    u_char        *p, *name;
    size_t         nlen;
    ngx_str_t      value;
    ngx_uint_t     i, j;
    ngx_keyval_t  *kv, *nkv;

    if (ngx_array_init(merged, r->pool, e->nheaders + fresh->nelts + 1,
                       sizeof(ngx_keyval_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    kv = fresh->elts;
    p = e->headers;

    for (i = 0; i < e->nheaders; i++) {

        nlen = ngx_aai_cache_get16(p);
        name = p + 2;
        p = name + nlen + 1;

        value.len = ngx_aai_cache_get32(p);
        value.data = p + 4;
        p = value.data + value.len + 1;

        for (j = 0; j < fresh->nelts; j++) {
            if (kv[j].key.len == nlen
                && ngx_strncasecmp(kv[j].key.data, name, nlen) == 0)
            {
                break;
            }
        }

        if (j < fresh->nelts) {
            continue;
        }

        nkv = ngx_array_push(merged);
        if (nkv == NULL) {
            return NGX_ERROR;
        }

        nkv->key.data = name;
        nkv->key.len = nlen;
        nkv->value = value;
    }

    for (j = 0; j < fresh->nelts; j++) {
        nkv = ngx_array_push(merged);
        if (nkv == NULL) {
            return NGX_ERROR;
        }

        *nkv = kv[j];
    }

    return NGX_OK;
}


/* the values of the headers of that name in kv, at most max */

static ngx_uint_t
ngx_http_aai_cache_kv_values(ngx_array_t *headers, ngx_str_t *name,
    ngx_str_t *out, ngx_uint_t max)
{
    ngx_uint_t     i, n;
    ngx_keyval_t  *kv;

    kv = headers->elts;
    n = 0;

    for (i = 0; i < headers->nelts && n < max; i++) {
        if (kv[i].key.len == name->len
            && ngx_strncasecmp(kv[i].key.data, name->data, name->len) == 0)
        {
            out[n++] = kv[i].value;
        }
    }

    return n;
}


/*
 * The freshness of the updated response.  NULL with f set if it may be
 * stored (maybe stale, to be revalidated again), else why not.
 */

static const char *
ngx_http_aai_cache_refresh(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *e, ngx_array_t *merged,
    ngx_http_aai_cache_freshness_t *f)
{
    ngx_str_t         name, *fname, *expires, *date, values[1];
    ngx_uint_t        i, n;
    ngx_list_t       *raw;
    const char       *reason;
    ngx_table_elt_t  *h;
    ngx_str_t         cc[NGX_HTTP_AAI_CACHE_MAX_CC + 1];
    ngx_str_t         targeted[NGX_HTTP_AAI_CACHE_MAX_CC + 1];

    ngx_memzero(f, sizeof(ngx_http_aai_cache_freshness_t));

    f->now = ngx_http_aai_cache_now();
    f->status = e->status;
    f->valid = alcf->valid
               ? ngx_http_aai_cache_valid_time(alcf->valid->elts,
                                               alcf->valid->nelts, f->status)
               : ngx_http_aai_cache_valid_time(NULL, 0, f->status);
    f->credentialed = ctx->credentialed;

    ngx_str_set(&name, "Cache-Control");
    n = ngx_http_aai_cache_kv_values(merged, &name, cc,
                                     NGX_HTTP_AAI_CACHE_MAX_CC + 1);
    if (n > NGX_HTTP_AAI_CACHE_MAX_CC) {
        return "cache-control";
    }

    f->cache_control = cc;
    f->ncache_control = n;

    fname = alcf->control_fields ? alcf->control_fields->elts : NULL;
    n = 0;

    for (i = 0; alcf->control_fields && i < alcf->control_fields->nelts;
         i++)
    {
        n = ngx_http_aai_cache_kv_values(merged, &fname[i], targeted,
                                         NGX_HTTP_AAI_CACHE_MAX_CC + 1);
        if (n > NGX_HTTP_AAI_CACHE_MAX_CC) {
            return "cache-control";
        }

        if (n) {
            break;
        }
    }

    f->targeted = targeted;
    f->ntargeted = n;

    expires = ngx_pcalloc(r->pool, 2 * sizeof(ngx_str_t));
    if (expires == NULL) {
        return "no-memory";
    }

    date = expires + 1;

    ngx_str_set(&name, "Expires");
    if (ngx_http_aai_cache_kv_values(merged, &name, values, 1)) {
        *expires = values[0];
        f->expires = expires;
    }

    ngx_str_set(&name, "Date");
    if (ngx_http_aai_cache_kv_values(merged, &name, values, 1)) {
        *date = values[0];
        f->date = date;
    }

    /* the age of the 304 (Age is never stored) */

    h = ngx_aai_cache_find_header(&r->headers_out.headers, "Age", 3, NULL);
    f->age = h ? &h->value : NULL;

    raw = r->upstream ? &r->upstream->headers_in.headers
                      : &r->headers_out.headers;

    h = ngx_aai_cache_find_header(raw, "X-Accel-Expires", 15, NULL);
    f->x_accel_expires = h ? &h->value : NULL;

    reason = ngx_http_aai_cache_freshness(f);

    if (reason == NULL || f->x_accel_expires) {
        return reason;
    }

    for (i = 0; ngx_http_aai_cache_revalidatable[i]; i++) {
        if (ngx_strcmp(reason, ngx_http_aai_cache_revalidatable[i]) == 0) {
            f->fresh_until = f->now;
            f->swr = 0;
            f->sie = 0;
            return NULL;
        }
    }

    return reason;
}


/* the entry of e's status and flags, with the headers and e's body */

static ngx_aai_cache_entry_t *
ngx_http_aai_cache_rebuild(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_aai_cache_entry_t *e,
    ngx_array_t *headers, ngx_http_aai_cache_freshness_t *f, size_t *lenp)
{
    u_char                 *buf, *p;
    size_t                  hlen;
    ngx_uint_t              i;
    const char             *err;
    ngx_keyval_t           *kv;
    ngx_aai_cache_entry_t  *ne;

    kv = headers->elts;
    hlen = 0;

    for (i = 0; i < headers->nelts; i++) {
        if (kv[i].key.len > 0xffff || kv[i].value.len > 0xffffffff) {
            return NULL;
        }

        hlen += 2 + kv[i].key.len + 1 + 4 + kv[i].value.len + 1;
    }

    if (headers->nelts > 0xffff || hlen > 0xffffffff) {
        return NULL;
    }

    buf = ngx_pnalloc(r->pool, NGX_AAI_CACHE_HDR + hlen + e->body_len
                               + NGX_AAI_CACHE_CRC);
    if (buf == NULL) {
        return NULL;
    }

    p = ngx_aai_cache_entry_write(buf, NGX_AAI_CACHE_TYPE_ENTRY, e->flags,
                                  f->now - f->initial_age * 1000,
                                  f->fresh_until, f->swr, f->sie, e->status,
                                  headers->nelts, hlen,
                                  (e->flags & NGX_AAI_CACHE_HEADER_ONLY)
                                  ? e->content_length : -1,
                                  ctx->digest);

    for (i = 0; i < headers->nelts; i++) {
        *p++ = (u_char) (kv[i].key.len >> 8);
        *p++ = (u_char) kv[i].key.len;
        p = ngx_cpymem(p, kv[i].key.data, kv[i].key.len);
        *p++ = '\0';
        *p++ = (u_char) (kv[i].value.len >> 24);
        *p++ = (u_char) (kv[i].value.len >> 16);
        *p++ = (u_char) (kv[i].value.len >> 8);
        *p++ = (u_char) kv[i].value.len;

        if (kv[i].value.len) {
            p = ngx_cpymem(p, kv[i].value.data, kv[i].value.len);
        }

        *p++ = '\0';
    }

    if (e->body_len) {
        p = ngx_cpymem(p, e->body, e->body_len);
    }

    *lenp = p - buf;

    ngx_aai_cache_entry_seal(buf, *lenp, e->body_len);

    ne = ngx_palloc(r->pool, sizeof(ngx_aai_cache_entry_t));
    if (ne == NULL) {
        return NULL;
    }

    if (ngx_aai_cache_entry_decode(buf, *lenp + NGX_AAI_CACHE_CRC, ne, &err)
        != NGX_OK
        || ngx_http_aai_cache_headers_ok(ne) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "aai_cache: revalidated entry %s", err);
        return NULL;
    }

    return ne;
}


/* writes the updated entry back where it was found */

static void
ngx_http_aai_cache_restore_entry(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf,
    ngx_aai_cache_entry_t *ne, size_t len, ngx_http_aai_cache_freshness_t *f)
{
    ctx->size = len + NGX_AAI_CACHE_CRC;

    ctx->buf = ngx_alloc(ctx->size, r->connection->log);
    if (ctx->buf == NULL) {
        return;
    }

    /* the header block follows the fixed part */

    ngx_memcpy(ctx->buf, ne->headers - NGX_AAI_CACHE_HDR, len);

    ctx->len = len;
    ctx->body_start = len - ne->body_len;
    ctx->clen = -1;
    ctx->header_only = (ne->flags & NGX_AAI_CACHE_HEADER_ONLY) ? 1 : 0;
    ctx->fresh_until = f->fresh_until;
    ctx->age = f->initial_age;
    ctx->swr = f->swr;
    ctx->sie = f->sie;
    ctx->keep = alcf->revalidate_ttl;

    if (ctx->vkey.len) {
        ctx->store_key = ctx->vkey;
        ctx->store_vary = ctx->vary;

    } else {
        ctx->store_key = ctx->key;
        ngx_str_null(&ctx->store_vary);
    }

    ctx->capturing = 1;
    ctx->stored = 1;

    ngx_http_aai_cache_store(r, ctx);
}


/* within the response's stale-while-revalidate (RFC 5861, 3) */

ngx_uint_t
ngx_http_aai_cache_swr(ngx_aai_cache_entry_t *e)
{
    return e->swr
           && ngx_http_aai_cache_now() < e->fresh_until + e->swr * 1000ULL
           && !ngx_http_aai_cache_no_stale(e);
}


/* whether an entity tag of the If-None-Match list v matches etag, weakly */

static ngx_uint_t
ngx_http_aai_cache_inm_match(ngx_str_t *v, ngx_str_t *etag)
{
    u_char  *p, *last, *s;
    size_t   elen;
    u_char  *e;

    e = etag->data;
    elen = etag->len;

    if (elen > 2 && e[0] == 'W' && e[1] == '/') {
        e += 2;
        elen -= 2;
    }

    p = v->data;
    last = v->data + v->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        s = p;

        while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
            p++;
        }

        if (p - s == 1 && *s == '*') {
            return 1;
        }

        if (p - s > 2 && s[0] == 'W' && s[1] == '/') {
            s += 2;
        }

        if ((size_t) (p - s) == elen && ngx_strncmp(s, e, elen) == 0) {
            return 1;
        }
    }

    return 0;
}


/*
 * The client's own If-None-Match / If-Modified-Since (RFC 9110, 13.1.2,
 * 13.1.3), against the entry just validated: a 304 if they hold.
 */

static void
ngx_http_aai_cache_client_304(ngx_http_request_t *r, ngx_aai_cache_entry_t *e)
{
    time_t            ims;
    ngx_str_t         etag;
    ngx_uint_t        not_modified;
    ngx_table_elt_t  *h;

    if (e->status != NGX_HTTP_OK) {
        return;
    }

    not_modified = 0;
    h = r->headers_in.if_none_match;

    if (h) {
        not_modified =
            ngx_http_aai_cache_entry_header(e, "ETag", 4, &etag) == NGX_OK
            && ngx_http_aai_cache_inm_match(&h->value, &etag);

    } else if (r->headers_in.if_modified_since) {
        h = r->headers_in.if_modified_since;
        ims = ngx_parse_http_time(h->value.data, h->value.len);

        not_modified = ims != NGX_ERROR
                       && r->headers_out.last_modified_time != -1
                       && r->headers_out.last_modified_time <= ims;
    }

    if (!not_modified) {
        return;
    }

    r->headers_out.status = NGX_HTTP_NOT_MODIFIED;
    r->headers_out.status_line.len = 0;
    r->headers_out.content_type.len = 0;
    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);

    if (r->headers_out.content_encoding) {
        r->headers_out.content_encoding->hash = 0;
        r->headers_out.content_encoding = NULL;
    }
}


/*
 * The header filter of a conditional request made for ctx->cond: a 304
 * is answered with the stored response updated (RFC 9111, 4.3.4), which is
 * stored again.  NGX_DECLINED for any other status: it goes the usual way.
 */

ngx_int_t
ngx_http_aai_cache_revalidated(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_http_aai_cache_loc_conf_t *alcf)
{
    size_t                           len;
    ngx_str_t                        names;
    ngx_uint_t                       i, ncookies;
    ngx_array_t                      fresh, merged;
    const char                      *reason;
    ngx_list_part_t                 *part;
    ngx_table_elt_t                 *h, *cookies, *nh;
    ngx_aai_cache_entry_t           *e, *ne;
    ngx_http_aai_cache_main_conf_t  *amcf;
    ngx_http_aai_cache_freshness_t   f;

    e = ctx->cond;
    ctx->cond = NULL;

    if (r->headers_out.status != NGX_HTTP_NOT_MODIFIED || r->err_status) {
        return NGX_DECLINED;
    }

    if (ngx_array_init(&fresh, r->pool, 16, sizeof(ngx_keyval_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_aai_cache_collect(r, &fresh) != NGX_OK
        || ngx_http_aai_cache_merge(r, e, &fresh, &merged) != NGX_OK)
    {
        return NGX_ERROR;
    }

    reason = ngx_http_aai_cache_refresh(r, ctx, alcf, e, &merged, &f);

    /* what decide() refuses to store */

    if (reason == NULL
        && ngx_aai_cache_find_header(&r->headers_out.headers, "Set-Cookie",
                                     10, NULL))
    {
        reason = "set-cookie";
    }

    if (reason == NULL) {
        switch (ngx_aai_cache_vary_names(r->pool, &r->headers_out.headers,
                                         &names))
        {
        case NGX_OK:
            if (names.len == 0
                || (names.len == ctx->vary.len && ctx->vkey.len
                    && ngx_memcmp(names.data, ctx->vary.data, names.len)
                       == 0))
            {
                break;
            }

            /* fall through */

        default:
            reason = "vary";
        }
    }

    if (reason == NULL && alcf->no_store) {
        if (ngx_http_test_predicates(r, alcf->no_store) != NGX_OK) {
            reason = "no-store-rule";
        }
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);

    if (reason == NULL && !ngx_aai_redis_available(amcf->redis)) {
        reason = "redis-unavailable";
    }

    if (reason) {
        /* served as updated, but not stored: it lives on as it was */
        ngx_memzero(&f, sizeof(ngx_http_aai_cache_freshness_t));
        f.now = ngx_http_aai_cache_now();
        f.fresh_until = f.now;
    }

    ne = ngx_http_aai_cache_rebuild(r, ctx, e, &merged, &f, &len);
    if (ne == NULL) {
        return NGX_ERROR;
    }

    /* the 304's cookies are the client's: passed on, never stored */

    ncookies = 0;
    cookies = NULL;
    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0
            || h[i].key.len != 10
            || ngx_strncasecmp(h[i].key.data, (u_char *) "Set-Cookie", 10)
               != 0)
        {
            continue;
        }

        if (cookies == NULL) {
            cookies = ngx_palloc(r->pool, 8 * sizeof(ngx_table_elt_t));
            if (cookies == NULL) {
                return NGX_ERROR;
            }
        }

        if (ncookies < 8) {
            cookies[ncookies++] = h[i];
        }
    }

    ctx->fwd = NGX_HTTP_AAI_CACHE_EXPIRED;
    ctx->capture = 0;

    if (reason == NULL) {
        ngx_http_aai_cache_restore_entry(r, ctx, alcf, ne, len, &f);

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "aai cache revalidated, not stored: %s", reason);

        ctx->detail = reason;
        ngx_http_aai_cache_release(ctx, 0, r->connection->log);
    }

    if (ctx->bg) {
        /* a background update: nothing is sent */
        return NGX_DECLINED;
    }

    if (ngx_http_aai_cache_reset_headers(r) != NGX_OK) {
        return NGX_ERROR;
    }

    r->headers_out.status = ne->status;

    ctx->status = NGX_HTTP_AAI_CACHE_REVALIDATED;
    ctx->swap = 1;
    ctx->served = 1;
    ctx->stale = ne;

    if (ngx_http_aai_cache_restore(r, ne) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_aai_cache_client_304(r, ne);

    for (i = 0; i < ncookies; i++) {
        nh = ngx_list_push(&r->headers_out.headers);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        *nh = cookies[i];
#if (nginx_version >= 1023000)
        nh->next = NULL;
#endif
    }

    if (r == r->main
        && ngx_http_aai_cache_status_header(r, ctx, ne) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_aai_cache_next_header_filter(r);
}

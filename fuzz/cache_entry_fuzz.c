
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for what the cache reads back from Redis: the entry
 * decoder and its CRC-32 (ngx_aai_cache_entry.c), and the cache module's
 * use of a decoded entry (ngx_http_aai_cache_*.c, included here for their
 * static functions): the GET reply made an entry
 * (ngx_http_aai_cache_entry_from), an entry's headers restored into a
 * response (ngx_http_aai_cache_restore), a vary record's names kept
 * (vary_set/vary_get) and made a variant key from the request's headers
 * (ngx_http_aai_cache_variant_key), the Vary header names of a
 * response (ngx_aai_cache_vary_names), and an entry's validators read and
 * the entry rebuilt as a revalidation does (fuzz_revalidate).
 *
 * The first input byte selects what the rest is:
 *
 *   mode & 3 == 0  an entry as stored, checked as it is;
 *   mode & 3 == 1  the same with its CRC made right, so that the structure
 *                  checks run;
 *   mode & 3 == 2  64 header bytes then the header block (bit 2: a vary
 *                  record), made an entry with the right magic, version,
 *                  lengths and CRC: the header walk and restore are reached;
 *   mode & 3 == 3  lines: Vary header values of a response up to an empty
 *                  line, then request headers "Name: value".
 *
 * Bit 3 sends the entry as a two-element MGET reply (base, variant) as a
 * lookup of a varying resource does; bit 4 makes it a reply of another type.
 *
 * Invariants checked: the vectorized CRC equals the table one; restore
 * reads only inside an entry that decoded (AddressSanitizer: the entry is
 * its own allocation of its exact length); the Vary names are lowercase,
 * sorted, unique, comma-separated, at most NGX_AAI_CACHE_MAX_VARY.
 */


#include "ngx_fuzz.h"

#include "../ngx_aai_cache_entry.c"
#include "../ngx_http_aai_cache_module.c"
#include "../ngx_http_aai_cache_key.c"
#include "../ngx_http_aai_cache_lookup.c"
#include "../ngx_http_aai_cache_lock.c"
#include "../ngx_http_aai_cache_stale.c"
#include "../ngx_http_aai_cache_store.c"
#include "../ngx_http_aai_cache_purge.c"
#include "../ngx_http_aai_cache_metrics.c"
#include "../ngx_http_aai_cache_revalidate.c"
#include "../ngx_http_aai_cache_freshness.c"


#define FUZZ_KEY  "aai:cache:"                                                \
                  "0123456789abcdef0123456789abcdef"                          \
                  "0123456789abcdef0123456789abcdef"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


time_t
ngx_parse_http_time(u_char *value, size_t len)
{
    return NGX_ERROR;
}


static ngx_http_request_t *
fuzz_request(ngx_pool_t *pool)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    c = ngx_pcalloc(pool, sizeof(ngx_connection_t));
    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));

    if (c == NULL || r == NULL) {
        return NULL;
    }

    c->log = &ngx_fuzz_log;
    c->pool = pool;
    r->connection = c;
    r->pool = pool;
    r->main = r;
    r->method = NGX_HTTP_GET;

    if (ngx_list_init(&r->headers_out.headers, pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&r->headers_in.headers, pool, 2,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        return NULL;
    }

    return r;
}


static void
fuzz_add_header(ngx_list_t *list, u_char *name, size_t nlen, u_char *value,
    size_t vlen)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(list);
    if (h == NULL) {
        abort();
    }

    ngx_memzero(h, sizeof(ngx_table_elt_t));
    h->hash = 1;
    h->key.data = name;
    h->key.len = nlen;
    h->value.data = value;
    h->value.len = vlen;
}


static void
fuzz_check_crc(u_char *p, size_t len)
{
    uint32_t  a, b;

    a = ngx_aai_cache_crc32(p, len);
    b = ngx_aai_cache_crc32_update(0xffffffff, p, len) ^ 0xffffffff;

    if (a != b) {
        fprintf(stderr, "CRC-32 of %zu bytes: %08x, tables say %08x\n",
                len, a, b);
        abort();
    }
}


static void
fuzz_check_vary(ngx_str_t *names)
{
    u_char      *p, *s, *prev, *end;
    size_t       plen;
    ngx_uint_t   n;

    if (names->len == 0) {
        return;
    }

    p = names->data;
    end = p + names->len;
    prev = NULL;
    plen = 0;
    n = 0;

    while (p < end) {
        for (s = p; s < end && *s != ','; s++) {
            if (*s == ' ' || *s == '\t' || (*s >= 'A' && *s <= 'Z')) {
                abort();
            }
        }

        if (s == p) {
            abort();    /* empty name */
        }

        if (prev && ngx_memn2cmp(prev, p, plen, s - p) >= 0) {
            abort();    /* not sorted, or a duplicate */
        }

        prev = p;
        plen = s - p;
        n++;
        p = (s < end) ? s + 1 : s;
    }

    if (n > NGX_AAI_CACHE_MAX_VARY) {
        abort();
    }
}


/*
 * What a revalidation reads of a stored entry (ngx_http_aai_cache_
 * revalidate.c): its validators and directives, and the entry rebuilt from
 * its headers merged with a 304's (none here), which must decode again to
 * the same status, headers and body.
 */

static void
fuzz_revalidate(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_aai_cache_entry_t *e)
{
    size_t                          len;
    ngx_str_t                       v;
    ngx_array_t                     fresh, merged;
    ngx_aai_cache_entry_t          *ne;
    ngx_http_aai_cache_freshness_t  f;

    (void) ngx_http_aai_cache_no_stale(e);
    (void) ngx_http_aai_cache_swr(e);
    (void) ngx_http_aai_cache_entry_header(e, "ETag", 4, &v);
    (void) ngx_http_aai_cache_entry_header(e, "Last-Modified", 13, &v);

    if (ngx_array_init(&fresh, r->pool, 1, sizeof(ngx_keyval_t)) != NGX_OK
        || ngx_http_aai_cache_merge(r, e, &fresh, &merged) != NGX_OK)
    {
        return;
    }

    ngx_memzero(&f, sizeof(ngx_http_aai_cache_freshness_t));
    f.now = 1700000000000ULL;
    f.fresh_until = f.now + 1000;

    ne = ngx_http_aai_cache_rebuild(r, ctx, e, &merged, &f, &len);

    if (ne == NULL
        || ne->status != e->status
        || ne->nheaders != e->nheaders
        || ne->headers_len != e->headers_len
        || ne->body_len != e->body_len
        || (e->body_len
            && ngx_memcmp(ne->body, e->body, e->body_len) != 0))
    {
        abort();
    }
}


/* what the lookup does with one GET reply */

static void
fuzz_use(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    redisReply *reply)
{
    ngx_str_t               names, got, vkey;
    ngx_aai_cache_entry_t  *e;

    if (ngx_http_aai_cache_entry_from(r, ctx, reply, &e) != NGX_OK) {
        return;
    }

    if (e->type == NGX_AAI_CACHE_TYPE_VARY) {
        names.data = e->headers;
        names.len = e->headers_len;

        ngx_http_aai_cache_vary_set(ctx->digest, &names);
        ngx_http_aai_cache_vary_get(ctx->digest, &got);

        if (got.len && (got.len != names.len
                        || ngx_memcmp(got.data, names.data, got.len) != 0))
        {
            abort();
        }

        if (ngx_http_aai_cache_variant_key(r, ctx, &names, &vkey) != NGX_OK
            || vkey.len != ctx->key.len + 1 + 32)
        {
            abort();
        }

        ngx_http_aai_cache_vary_forget(ctx->digest);
        return;
    }

    if (ngx_http_aai_cache_restore(r, e) != NGX_OK) {
        abort();
    }

    fuzz_revalidate(r, ctx, e);
}


static void
fuzz_entry(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    u_char *p, size_t len, ngx_uint_t mode)
{
    redisReply   reply, nil, *elements[2];
    redisReply   mget;

    /* the reply's string is the entry: its own allocation, exact length */

    ngx_memzero(&reply, sizeof(redisReply));
    reply.type = (mode & 0x10) ? REDIS_REPLY_STATUS : REDIS_REPLY_STRING;
    reply.str = (char *) p;
    reply.len = len;

    if (!(mode & 0x08)) {
        fuzz_use(r, ctx, &reply);
        return;
    }

    ngx_memzero(&nil, sizeof(redisReply));
    nil.type = REDIS_REPLY_NIL;

    ngx_memzero(&mget, sizeof(redisReply));
    mget.type = REDIS_REPLY_ARRAY;
    mget.elements = 2;
    mget.element = elements;

    elements[0] = &reply;
    elements[1] = (mode & 0x20) ? &reply : &nil;

    fuzz_use(r, ctx, mget.element[0]);
    fuzz_use(r, ctx, mget.element[1]);
}


static void
fuzz_vary(ngx_http_request_t *r, ngx_http_aai_cache_ctx_t *ctx,
    ngx_fuzz_in_t *in, ngx_pool_t *pool)
{
    u_char      *colon;
    ngx_str_t    line, names, vkey;
    ngx_list_t  *out;

    out = &r->headers_out.headers;

    for ( ;; ) {
        line = ngx_fuzz_field(in, '\n');

        if (line.len == 0) {
            break;
        }

        fuzz_add_header(out, (u_char *) "Vary", 4, line.data, line.len);
    }

    while (in->p < in->last) {
        line = ngx_fuzz_field(in, '\n');
        colon = ngx_strlchr(line.data, line.data + line.len, ':');

        if (colon == NULL) {
            fuzz_add_header(&r->headers_in.headers, line.data, line.len,
                            line.data, 0);
            continue;
        }

        fuzz_add_header(&r->headers_in.headers, line.data, colon - line.data,
                        colon + 1, line.data + line.len - colon - 1);
    }

    if (ngx_aai_cache_vary_names(pool, out, &names) != NGX_OK) {
        return;
    }

    fuzz_check_vary(&names);

    /* as the module: no names, no variant */

    if (names.len == 0) {
        return;
    }

    if (ngx_http_aai_cache_variant_key(r, ctx, &names, &vkey) != NGX_OK) {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *p;
    size_t                     len, hlen;
    uint32_t                   crc;
    ngx_uint_t                 mode;
    ngx_pool_t                *pool;
    ngx_fuzz_in_t              in;
    ngx_http_request_t        *r;
    ngx_http_aai_cache_ctx_t  *ctx;

    static ngx_uint_t          inited;

    if (!inited) {
        ngx_fuzz_init();
        ngx_aai_cache_crc32_init();
        inited = 1;
    }

    in.p = data;
    in.last = data + size;

    mode = ngx_fuzz_byte(&in);

    fuzz_check_crc((u_char *) in.p, in.last - in.p);

    pool = ngx_fuzz_pool();
    r = fuzz_request(pool);
    ctx = ngx_pcalloc(pool, sizeof(ngx_http_aai_cache_ctx_t));

    if (r == NULL || ctx == NULL) {
        abort();
    }

    ctx->request = r;
    ngx_str_set(&ctx->key, FUZZ_KEY);
    ngx_memcpy(ctx->digest, "\x12\x34\x56\x78\x9a\xbc\xde\xf0\x01\x02", 10);

    /* the request headers a vary record's names are looked up in */

    if ((mode & 3) != 3) {
        fuzz_add_header(&r->headers_in.headers, (u_char *) "Accept-Encoding",
                        15, (u_char *) " gzip,\t br ", 11);
        fuzz_add_header(&r->headers_in.headers, (u_char *) "accept", 6,
                        (u_char *) "*/*", 3);
        fuzz_add_header(&r->headers_in.headers, (u_char *) "Accept", 6,
                        (u_char *) "", 0);
    }

    switch (mode & 3) {

    case 0:
    case 1:
        len = in.last - in.p;
        p = malloc(len ? len : 1);
        ngx_memcpy(p, in.p, len);

        if ((mode & 3) == 1 && len >= NGX_AAI_CACHE_HDR + NGX_AAI_CACHE_CRC) {
            ngx_memcpy(p + 56, ctx->digest, 8);
            crc = ngx_aai_cache_crc32(p, len - NGX_AAI_CACHE_CRC);
            (void) ngx_aai_cache_put(p + len - NGX_AAI_CACHE_CRC, crc, 4);
        }

        fuzz_entry(r, ctx, p, len, mode);
        free(p);
        break;

    case 2:
        hlen = in.last - in.p > NGX_AAI_CACHE_HDR
               ? (size_t) (in.last - in.p) - NGX_AAI_CACHE_HDR : 0;
        len = NGX_AAI_CACHE_HDR + hlen + NGX_AAI_CACHE_CRC;

        p = calloc(1, len);
        ngx_memcpy(p, in.p, ngx_min((size_t) (in.last - in.p), len - 4));

        ngx_memcpy(p, NGX_AAI_CACHE_MAGIC, 4);
        p[4] = NGX_AAI_CACHE_VERSION;
        p[5] = (mode & 4) ? NGX_AAI_CACHE_TYPE_VARY : NGX_AAI_CACHE_TYPE_ENTRY;
        (void) ngx_aai_cache_put(p + 36, hlen, 4);
        ngx_memcpy(p + 56, ctx->digest, 8);
        ngx_aai_cache_entry_seal(p, len - NGX_AAI_CACHE_CRC, 0);

        fuzz_entry(r, ctx, p, len, mode);
        free(p);
        break;

    default:
        fuzz_vary(r, ctx, &in, pool);
    }

    ngx_destroy_pool(pool);

    return 0;
}

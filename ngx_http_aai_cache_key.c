
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_cache_key: the keys of an entry in Redis.  The cache key
 * (aai_cache_key, or the purge key) is hashed into P H; a resource that
 * varies has one entry per variant, P H ":" V, V made from the request
 * headers the response varies on.  Each worker remembers which resources
 * vary (the vary map), so that a lookup is one round trip.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_cache.h"


static void ngx_http_aai_cache_sha256(u_char *data, size_t len,
    u_char *md);


/* per worker */
static ngx_http_aai_cache_vary_slot_t   ngx_http_aai_cache_vary_map[
                                            NGX_HTTP_AAI_CACHE_VARY_SLOTS];
EVP_MD_CTX                             *ngx_http_aai_cache_md_ctx;
EVP_MD                                 *ngx_http_aai_cache_md;


ngx_int_t
ngx_http_aai_cache_make_key(ngx_http_request_t *r,
    ngx_http_aai_cache_loc_conf_t *alcf, ngx_str_t *key, u_char *digest)
{
    u_char                          *p;
    ngx_str_t                        value;
    ngx_uint_t                       tag;
    ngx_http_complex_value_t        *cv;
    ngx_http_aai_cache_main_conf_t  *amcf;

    cv = alcf->key;

    if (alcf->purge && alcf->purge_key) {
        cv = alcf->purge_key;
    }

    if (cv == NULL) {
        amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
        cv = &amcf->default_key;
    }

    if (ngx_http_complex_value(r, cv, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_aai_cache_sha256(value.data, value.len, digest);

    /*
     * On a Redis Cluster, H is the key's hash tag, P "{" H "}": the keys
     * of one resource (its entry, variants, variant set and lock) are in
     * one slot, for the scripts that use them together; resources are
     * spread over every node.
     */

    amcf = ngx_http_get_module_main_conf(r, ngx_http_aai_cache_module);
    tag = amcf->redis_conf.cluster ? 1 : 0;

    key->len = alcf->prefix.len + 2 * SHA256_DIGEST_LENGTH + 2 * tag;
    key->data = ngx_pnalloc(r->pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, alcf->prefix.data, alcf->prefix.len);

    if (tag) {
        *p++ = '{';
        key->data[key->len - 1] = '}';
    }

    ngx_hex_dump(p, digest, SHA256_DIGEST_LENGTH);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "aai cache key \"%V\": %V", &value, key);

    return NGX_OK;
}


/*
 * The variant key: P H ":" hex of the first 16 bytes of SHA-256 of
 * "H\n" and, for each name, "name=value\n" ("name!\n" when the request
 * has no such header); values of repeated headers are joined with ",",
 * spaces around commas and at the ends are dropped.
 */

ngx_int_t
ngx_http_aai_cache_variant_key(ngx_http_request_t *r,
    ngx_http_aai_cache_ctx_t *ctx, ngx_str_t *names, ngx_str_t *vkey)
{
    u_char           *buf, *p, *s, *e, *name, *end;
    size_t            len, nlen;
    ngx_uint_t        found, space;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;
    ngx_uint_t        i;
    u_char            md[SHA256_DIGEST_LENGTH];

    /* the upper bound: every request header under every name */

    len = 2 * SHA256_DIGEST_LENGTH + 1;

    part = &r->headers_in.headers.part;
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

        len += h[i].value.len + 1;
    }

    len = len * (1 + names->len / 2) + 2 * names->len + 16;

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    /* H: the key's last hex digits, before the "}" of a cluster's */

    e = ctx->key.data + ctx->key.len;

    if (e[-1] == '}') {
        e--;
    }

    p = ngx_cpymem(buf, e - 2 * SHA256_DIGEST_LENGTH,
                   2 * SHA256_DIGEST_LENGTH);
    *p++ = '\n';

    name = names->data;
    end = names->data + names->len;

    while (name < end) {

        for (s = name; s < end && *s != ','; s++) { /* void */ }

        nlen = s - name;
        p = ngx_cpymem(p, name, nlen);

        found = 0;
        h = NULL;

        while ((h = ngx_aai_cache_find_header(&r->headers_in.headers,
                                            (char *) name, nlen, h))
               != NULL)
        {
            *p++ = found ? ',' : '=';
            found = 1;

            s = h->value.data;
            e = s + h->value.len;

            while (s < e && (*s == ' ' || *s == '\t')) {
                s++;
            }

            while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
                e--;
            }

            space = 0;

            for ( /* void */ ; s < e; s++) {

                if (*s == ' ' || *s == '\t') {
                    space = 1;
                    continue;
                }

                if (space && *s != ',' && p[-1] != ',') {
                    *p++ = ' ';
                }

                space = 0;
                *p++ = *s;
            }
        }

        if (!found) {
            *p++ = '!';
        }

        *p++ = '\n';

        name += nlen + 1;
    }

    ngx_http_aai_cache_sha256(buf, p - buf, md);

    vkey->len = ctx->key.len + 1 + 32;
    vkey->data = ngx_pnalloc(r->pool, vkey->len);
    if (vkey->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(vkey->data, ctx->key.data, ctx->key.len);
    *p++ = ':';
    ngx_hex_dump(p, md, 16);

    return NGX_OK;
}


/*
 * What this worker knows of the resources that vary, so that a lookup is
 * one round trip: a direct-mapped table, the cache key digest to names.
 */

static ngx_http_aai_cache_vary_slot_t *
ngx_http_aai_cache_vary_slot(u_char *digest)
{
    return &ngx_http_aai_cache_vary_map[((digest[8] << 8) | digest[9])
                                        % NGX_HTTP_AAI_CACHE_VARY_SLOTS];
}


void
ngx_http_aai_cache_vary_get(u_char *digest, ngx_str_t *names)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (s->len && ngx_memcmp(s->digest, digest, 8) == 0) {
        names->data = s->names;
        names->len = s->len;
        return;
    }

    ngx_str_null(names);
}


void
ngx_http_aai_cache_vary_set(u_char *digest, ngx_str_t *names)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (names->len > NGX_HTTP_AAI_CACHE_VARY_LEN) {
        ngx_http_aai_cache_vary_forget(digest);
        return;
    }

    ngx_memcpy(s->digest, digest, 8);
    ngx_memcpy(s->names, names->data, names->len);
    s->len = (u_char) names->len;
}


void
ngx_http_aai_cache_vary_forget(u_char *digest)
{
    ngx_http_aai_cache_vary_slot_t  *s;

    s = ngx_http_aai_cache_vary_slot(digest);

    if (ngx_memcmp(s->digest, digest, 8) == 0) {
        s->len = 0;
    }
}


/*
 * SHA-256 with the algorithm fetched once per worker: SHA256() fetches it
 * at each call in OpenSSL 3, under a lock, at a cost as large as the hash.
 */

static void
ngx_http_aai_cache_sha256(u_char *data, size_t len, u_char *md)
{
    EVP_MD_CTX  *ctx;

    ctx = ngx_http_aai_cache_md_ctx;

    if (ctx == NULL
        || EVP_DigestInit_ex(ctx, ngx_http_aai_cache_md, NULL) != 1
        || EVP_DigestUpdate(ctx, data, len) != 1
        || EVP_DigestFinal_ex(ctx, md, NULL) != 1)
    {
        (void) SHA256(data, len, md);
    }
}

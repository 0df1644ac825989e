
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_cache_entry: see ngx_aai_cache_entry.h.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_aai_cache_entry.h"


#if (NGX_HAVE_LITTLE_ENDIAN && defined __x86_64__                             \
     && (defined __GNUC__ || defined __clang__))
#define NGX_AAI_CACHE_CLMUL  1
#include <immintrin.h>
#else
#define NGX_AAI_CACHE_CLMUL  0
#endif


static u_char *ngx_aai_cache_put(u_char *p, uint64_t v, ngx_uint_t n);


static uint32_t ngx_aai_cache_crc32_update(uint32_t crc, u_char *p,
    size_t len);
#if (NGX_AAI_CACHE_CLMUL)
static void ngx_aai_cache_clmul_init(void);
static uint64_t ngx_aai_cache_clmul_key(ngx_uint_t n);
static uint32_t ngx_aai_cache_crc32_clmul(u_char *p, size_t len);
#endif


/* CRC-32 (IEEE 802.3, as zlib's) */
static uint32_t    ngx_aai_cache_crc_table[8][256];

#if (NGX_AAI_CACHE_CLMUL)
static ngx_uint_t  ngx_aai_cache_clmul;
static uint64_t    ngx_aai_cache_clmul_k4[2];   /* 512 bits forward */
static uint64_t    ngx_aai_cache_clmul_k1[2];   /* 128 bits forward */
#endif


static u_char *
ngx_aai_cache_put(u_char *p, uint64_t v, ngx_uint_t n)
{
    while (n--) {
        *p++ = (u_char) (v >> (n * 8));
    }

    return p;
}


ngx_int_t
ngx_aai_cache_entry_decode(u_char *p, size_t len, ngx_aai_cache_entry_t *e,
    const char **err)
{
    u_char    *h, *end;
    size_t     nlen, vlen;
    uint64_t   hlen, blen;
    uint32_t   crc;
    ngx_uint_t i;

    if (len < NGX_AAI_CACHE_HDR + NGX_AAI_CACHE_CRC) {
        *err = "truncated";
        return NGX_ERROR;
    }

    if (ngx_memcmp(p, NGX_AAI_CACHE_MAGIC, 4) != 0) {
        *err = "foreign";
        return NGX_ERROR;
    }

    if (p[4] != NGX_AAI_CACHE_VERSION) {
        *err = "other version";
        return NGX_ERROR;
    }

    e->type = p[5];
    e->flags = ngx_aai_cache_get16(p + 6);
    e->stored = ngx_aai_cache_get64(p + 8);
    e->fresh_until = ngx_aai_cache_get64(p + 16);
    e->swr = ngx_aai_cache_get32(p + 24);
    e->sie = ngx_aai_cache_get32(p + 28);
    e->status = ngx_aai_cache_get16(p + 32);
    e->nheaders = ngx_aai_cache_get16(p + 34);
    hlen = ngx_aai_cache_get32(p + 36);
    blen = ngx_aai_cache_get64(p + 40);
    e->content_length = (off_t) (int64_t) ngx_aai_cache_get64(p + 48);
    e->check = p + 56;

    if (hlen > len
        || blen > len
        || NGX_AAI_CACHE_HDR + hlen + blen + NGX_AAI_CACHE_CRC
           != len)
    {
        *err = "truncated";
        return NGX_ERROR;
    }

    crc = ngx_aai_cache_get32(p + len - NGX_AAI_CACHE_CRC);

    if (crc != ngx_aai_cache_crc32(p, len - NGX_AAI_CACHE_CRC)) {
        *err = "corrupted";
        return NGX_ERROR;
    }

    e->headers = p + NGX_AAI_CACHE_HDR;
    e->headers_len = (size_t) hlen;
    e->body = e->headers + hlen;
    e->body_len = (size_t) blen;

    if (e->type == NGX_AAI_CACHE_TYPE_VARY) {
        if (e->nheaders || blen || hlen == 0) {
            *err = "bad vary record in";
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (e->type != NGX_AAI_CACHE_TYPE_ENTRY
        || e->status < 100 || e->status > 999)
    {
        *err = "malformed";
        return NGX_ERROR;
    }

    h = e->headers;
    end = e->headers + hlen;

    for (i = 0; i < e->nheaders; i++) {

        if (end - h < 2) {
            goto malformed;
        }

        nlen = ngx_aai_cache_get16(h);
        h += 2;

        if ((size_t) (end - h) < nlen + 1 + 4 || nlen == 0 || h[nlen] != 0) {
            goto malformed;
        }

        h += nlen + 1;

        vlen = ngx_aai_cache_get32(h);
        h += 4;

        if ((size_t) (end - h) < vlen + 1 || h[vlen] != 0) {
            goto malformed;
        }

        h += vlen + 1;
    }

    if (h != end) {
        goto malformed;
    }

    return NGX_OK;

malformed:

    *err = "malformed";
    return NGX_ERROR;
}


u_char *
ngx_aai_cache_entry_write(u_char *p, ngx_uint_t type, ngx_uint_t flags,
    uint64_t stored, uint64_t fresh_until, uint32_t swr, uint32_t sie,
    ngx_uint_t status, ngx_uint_t nheaders, size_t hlen, off_t clen,
    u_char *digest)
{
    p = ngx_cpymem(p, NGX_AAI_CACHE_MAGIC, 4);
    *p++ = NGX_AAI_CACHE_VERSION;
    *p++ = (u_char) type;
    p = ngx_aai_cache_put(p, flags, 2);
    p = ngx_aai_cache_put(p, stored, 8);
    p = ngx_aai_cache_put(p, fresh_until, 8);
    p = ngx_aai_cache_put(p, swr, 4);
    p = ngx_aai_cache_put(p, sie, 4);
    p = ngx_aai_cache_put(p, status, 2);
    p = ngx_aai_cache_put(p, nheaders, 2);
    p = ngx_aai_cache_put(p, hlen, 4);
    p = ngx_aai_cache_put(p, 0, 8);
    p = ngx_aai_cache_put(p, (uint64_t) (int64_t) clen, 8);
    p = ngx_cpymem(p, digest, 8);

    return p;
}


/* the body length, then the checksum after the len bytes of the entry */

void
ngx_aai_cache_entry_seal(u_char *buf, size_t len, size_t body)
{
    uint32_t  crc;

    (void) ngx_aai_cache_put(buf + 40, body, 8);

    crc = ngx_aai_cache_crc32(buf, len);

    (void) ngx_aai_cache_put(buf + len, crc, 4);
}


/*
 * The Vary header names of the response: lowercased, unique, sorted,
 * comma-separated.  NGX_DECLINED for "*" or too many names.
 */

ngx_int_t
ngx_aai_cache_vary_names(ngx_pool_t *pool, ngx_list_t *headers,
    ngx_str_t *out)
{
    u_char           *p, *s, *last;
    size_t            len;
    ngx_int_t         c;
    ngx_uint_t        n, i, j;
    ngx_str_t         names[NGX_AAI_CACHE_MAX_VARY], t;
    ngx_table_elt_t  *h;

    ngx_str_null(out);

    n = 0;
    h = NULL;

    while ((h = ngx_aai_cache_find_header(headers, "Vary", 4, h)) != NULL) {
        p = h->value.data;
        last = p + h->value.len;

        while (p < last) {

            while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
                p++;
            }

            s = p;

            while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
                p++;
            }

            if (p == s) {
                continue;
            }

            if (p - s == 1 && *s == '*') {
                return NGX_DECLINED;
            }

            t.len = p - s;
            t.data = ngx_pnalloc(pool, t.len);
            if (t.data == NULL) {
                return NGX_ERROR;
            }

            ngx_strlow(t.data, s, t.len);

            /* insertion sort, without duplicates */

            for (i = 0; i < n; i++) {
                c = ngx_memn2cmp(t.data, names[i].data, t.len, names[i].len);

                if (c <= 0) {
                    break;
                }
            }

            if (i < n && c == 0) {
                continue;
            }

            if (n == NGX_AAI_CACHE_MAX_VARY) {
                return NGX_DECLINED;
            }

            for (j = n; j > i; j--) {
                names[j] = names[j - 1];
            }

            names[i] = t;
            n++;
        }
    }

    if (n == 0) {
        return NGX_OK;
    }

    len = n - 1;

    for (i = 0; i < n; i++) {
        len += names[i].len;
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;

    for (i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, names[i].data, names[i].len);
    }

    out->len = len;

    return NGX_OK;
}


/* the next header named so after "from" (NULL: the first one) */

ngx_table_elt_t *
ngx_aai_cache_find_header(ngx_list_t *headers, const char *name, size_t len,
    ngx_table_elt_t *from)
{
    ngx_uint_t        i, passed;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    passed = (from == NULL);

    part = &headers->part;
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

        if (!passed) {
            passed = (&h[i] == from);
            continue;
        }

        if (h[i].hash != 0
            && h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }

    return NULL;
}


/*
 * Every hit checks its entry, every store seals one.  With PCLMULQDQ
 * (x86-64), 64 bytes a step: four 16-byte lanes are carried forward by
 * carry-less multiplication with x^n mod P, folded into one lane, and the
 * lane and the last bytes go through the tables (the method of Intel's
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ").
 * Elsewhere, or if its self-test fails, eight bytes a step through eight
 * tables rather than nginx's one (ngx_crc32_long).
 */

void
ngx_aai_cache_crc32_init(void)
{
    uint32_t    c;
    ngx_uint_t  i, j;

    for (i = 0; i < 256; i++) {
        c = (uint32_t) i;

        for (j = 0; j < 8; j++) {
            c = (c & 1) ? (c >> 1) ^ 0xedb88320 : c >> 1;
        }

        ngx_aai_cache_crc_table[0][i] = c;
    }

    for (i = 0; i < 256; i++) {
        c = ngx_aai_cache_crc_table[0][i];

        for (j = 1; j < 8; j++) {
            c = ngx_aai_cache_crc_table[0][c & 0xff] ^ (c >> 8);
            ngx_aai_cache_crc_table[j][i] = c;
        }
    }

#if (NGX_AAI_CACHE_CLMUL)
    ngx_aai_cache_clmul_init();
#endif
}


uint32_t
ngx_aai_cache_crc32(u_char *p, size_t len)
{
#if (NGX_AAI_CACHE_CLMUL)

    if (len >= 64 && ngx_aai_cache_clmul) {
        return ngx_aai_cache_crc32_clmul(p, len);
    }

#endif

    return ngx_aai_cache_crc32_update(0xffffffff, p, len) ^ 0xffffffff;
}


/* the CRC register crc carried over len bytes: no initial or final xor */

static uint32_t
ngx_aai_cache_crc32_update(uint32_t crc, u_char *p, size_t len)
{
    uint32_t  (*t)[256];
#if (NGX_HAVE_LITTLE_ENDIAN)
    uint32_t    one, two;
#endif

    t = ngx_aai_cache_crc_table;

#if (NGX_HAVE_LITTLE_ENDIAN)

    while (len >= 8) {
        ngx_memcpy(&one, p, 4);
        ngx_memcpy(&two, p + 4, 4);

        one ^= crc;

        crc = t[7][one & 0xff] ^ t[6][(one >> 8) & 0xff]
              ^ t[5][(one >> 16) & 0xff] ^ t[4][one >> 24]
              ^ t[3][two & 0xff] ^ t[2][(two >> 8) & 0xff]
              ^ t[1][(two >> 16) & 0xff] ^ t[0][two >> 24];

        p += 8;
        len -= 8;
    }

#endif

    while (len--) {
        crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }

    return crc;
}


#if (NGX_AAI_CACHE_CLMUL)

/*
 * In a lane loaded from 16 bytes, bit i stands for x^(127 - i): the low
 * quadword H holds the higher powers.  Carried n bits forward, H x^64 + L
 * becomes H (x^(n+32) mod P) + L (x^(n-32) mod P), times x^32: the two
 * carry-less products with the constants in the bit order of
 * ngx_aai_cache_clmul_key().  A lane is congruent modulo P to the bytes it
 * stands for, so the tables can finish from it.
 */

static void
ngx_aai_cache_clmul_init(void)
{
    u_char      buf[256];
    ngx_uint_t  i;

    __builtin_cpu_init();

    if (!__builtin_cpu_supports("pclmul")) {
        return;
    }

    ngx_aai_cache_clmul_k4[0] = ngx_aai_cache_clmul_key(4 * 128 + 32);
    ngx_aai_cache_clmul_k4[1] = ngx_aai_cache_clmul_key(4 * 128 - 32);
    ngx_aai_cache_clmul_k1[0] = ngx_aai_cache_clmul_key(128 + 32);
    ngx_aai_cache_clmul_k1[1] = ngx_aai_cache_clmul_key(128 - 32);

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = (u_char) ((i * 2654435761U) >> 13);
    }

    for (i = 64; i <= sizeof(buf); i++) {
        if (ngx_aai_cache_crc32_clmul(buf, i)
            != (ngx_aai_cache_crc32_update(0xffffffff, buf, i) ^ 0xffffffff))
        {
            return;
        }
    }

    ngx_aai_cache_clmul = 1;
}


/*
 * x^n mod P, P = x^32 + 0x04c11db7, with the coefficient of x^e at bit
 * 32 - e: a 33-bit constant for the reflected products
 */

static uint64_t
ngx_aai_cache_clmul_key(ngx_uint_t n)
{
    uint32_t    r;
    uint64_t    k;
    ngx_uint_t  e;

    r = 1;

    while (n--) {
        r = (r & 0x80000000) ? (r << 1) ^ 0x04c11db7 : r << 1;
    }

    k = 0;

    for (e = 0; e < 32; e++) {
        if (r & ((uint32_t) 1 << e)) {
            k |= (uint64_t) 1 << (32 - e);
        }
    }

    return k;
}


/* the lane x carried forward by the constants k, added to the lane y */

__attribute__((target("pclmul")))
static ngx_inline __m128i
ngx_aai_cache_clmul_fold(__m128i x, __m128i k, __m128i y)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00),
                                       _mm_clmulepi64_si128(x, k, 0x11)),
                         y);
}


/* len >= 64 */

__attribute__((target("pclmul")))
static uint32_t
ngx_aai_cache_crc32_clmul(u_char *p, size_t len)
{
    uint32_t   crc;
    __m128i    x0, x1, x2, x3, k4, k1;
    u_char     lane[16];

    k4 = _mm_set_epi64x((long long) ngx_aai_cache_clmul_k4[1],
                        (long long) ngx_aai_cache_clmul_k4[0]);
    k1 = _mm_set_epi64x((long long) ngx_aai_cache_clmul_k1[1],
                        (long long) ngx_aai_cache_clmul_k1[0]);

    /* the initial register 0xffffffff goes onto the first four bytes */

    x0 = _mm_xor_si128(_mm_loadu_si128((__m128i *) p),
                       _mm_cvtsi32_si128((int) 0xffffffff));
    x1 = _mm_loadu_si128((__m128i *) (p + 16));
    x2 = _mm_loadu_si128((__m128i *) (p + 32));
    x3 = _mm_loadu_si128((__m128i *) (p + 48));

    p += 64;
    len -= 64;

    while (len >= 64) {
        x0 = ngx_aai_cache_clmul_fold(x0, k4,
                                      _mm_loadu_si128((__m128i *) p));
        x1 = ngx_aai_cache_clmul_fold(x1, k4,
                                      _mm_loadu_si128((__m128i *) (p + 16)));
        x2 = ngx_aai_cache_clmul_fold(x2, k4,
                                      _mm_loadu_si128((__m128i *) (p + 32)));
        x3 = ngx_aai_cache_clmul_fold(x3, k4,
                                      _mm_loadu_si128((__m128i *) (p + 48)));
        p += 64;
        len -= 64;
    }

    x1 = ngx_aai_cache_clmul_fold(x0, k1, x1);
    x2 = ngx_aai_cache_clmul_fold(x1, k1, x2);
    x3 = ngx_aai_cache_clmul_fold(x2, k1, x3);

    while (len >= 16) {
        x3 = ngx_aai_cache_clmul_fold(x3, k1, _mm_loadu_si128((__m128i *) p));
        p += 16;
        len -= 16;
    }

    _mm_storeu_si128((__m128i *) lane, x3);

    crc = ngx_aai_cache_crc32_update(0, lane, 16);
    crc = ngx_aai_cache_crc32_update(crc, p, len);

    return crc ^ 0xffffffff;
}

#endif

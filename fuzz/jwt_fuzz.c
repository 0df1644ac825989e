
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the JWT parser and verifier (ngx_aai_jwt_token.c).
 * The first input byte selects what the rest is:
 *
 *   mode 0  a token, verified against HMAC, RSA and EC test keys;
 *   mode 1  the same with issuer and audience checks;
 *   mode 2  "HEADER\nPAYLOAD": both JSON texts are encoded and signed with
 *           the HS256 test secret, so the payload parser and the claim
 *           checks are reached (they run only after a good signature);
 *   mode 3  "HEADER\nPAYLOAD\nSIGNATURE": three raw segments, encoded;
 *           arbitrary RSA and R || S ECDSA signature bytes.
 *
 * Invariants checked: a known status, and for VALID a non-empty sub and
 * claim values inside the caller's buffer.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_aai_jwt_token.h"


#ifndef AAI_JWT_KEYS
#define AAI_JWT_KEYS  "../t/jwt"
#endif

#define FUZZ_SECRET   "aai-test-secret-0123456789abcdef"                      \
                      "0123456789abcdef0123456789abcdef"
#define FUZZ_TOKEN    (NGX_AAI_JWT_MAX_TOKEN + 64)


static ngx_aai_jwt_key_t   keys[8];
static size_t              nkeys;

static ngx_aai_jwt_str_t   claim_names[] = {
    { 6, (u_char *) "tenant" },
    { 5, (u_char *) "roles" },
    { 1, (u_char *) "n" },
    { 3, (u_char *) "sub" },
};

#define NCLAIMS  (sizeof(claim_names) / sizeof(claim_names[0]))

static u_char              buf[NGX_AAI_JWT_BUF_SIZE];
static u_char              token[FUZZ_TOKEN];
static int                 verbose;


static void
add_key(int alg, const char *kid, const char *file)
{
    FILE               *f;
    long                n;
    u_char              pem[8192];
    const char         *err;
    char                path[1024];
    ngx_aai_jwt_key_t  *key;

    key = &keys[nkeys++];
    key->alg = alg;

    if (kid) {
        key->kid.len = strlen(kid);
        key->kid.data = (const u_char *) kid;
    }

    if (file == NULL) {
        key->secret.len = sizeof(FUZZ_SECRET) - 1;
        key->secret.data = (const u_char *) FUZZ_SECRET;
        return;
    }

    snprintf(path, sizeof(path), "%s/%s", AAI_JWT_KEYS, file);

    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "jwt_fuzz: cannot open %s\n", path);
        exit(1);
    }

    n = (long) fread(pem, 1, sizeof(pem), f);
    fclose(f);

    key->pkey = ngx_aai_jwt_load_pkey(alg, pem, n, &err);
    if (key->pkey == NULL) {
        fprintf(stderr, "jwt_fuzz: %s: %s\n", path, err);
        exit(1);
    }
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* JWT_FUZZ_VERBOSE=1 out/jwt_fuzz FILE...: prints each result */
    verbose = (getenv("JWT_FUZZ_VERBOSE") != NULL);

    add_key(NGX_AAI_JWT_HS256, "h1", NULL);
    add_key(NGX_AAI_JWT_HS384, NULL, NULL);
    add_key(NGX_AAI_JWT_HS512, NULL, NULL);
    add_key(NGX_AAI_JWT_RS256, "r1", "rsa.pub");
    add_key(NGX_AAI_JWT_RS384, NULL, "rsa.pub");
    add_key(NGX_AAI_JWT_ES256, "e1", "ec256.pub");
    add_key(NGX_AAI_JWT_ES384, NULL, "ec384.pub");

    return 0;
}


static size_t
b64url(u_char *dst, const u_char *src, size_t len)
{
    static const char  tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    size_t   i;
    u_char  *d;

    d = dst;

    for (i = 0; i + 2 < len; i += 3) {
        *d++ = tbl[src[i] >> 2];
        *d++ = tbl[((src[i] & 3) << 4) | (src[i + 1] >> 4)];
        *d++ = tbl[((src[i + 1] & 0x0f) << 2) | (src[i + 2] >> 6)];
        *d++ = tbl[src[i + 2] & 0x3f];
    }

    if (len - i == 1) {
        *d++ = tbl[src[i] >> 2];
        *d++ = tbl[(src[i] & 3) << 4];

    } else if (len - i == 2) {
        *d++ = tbl[src[i] >> 2];
        *d++ = tbl[((src[i] & 3) << 4) | (src[i + 1] >> 4)];
        *d++ = tbl[(src[i + 1] & 0x0f) << 2];
    }

    return d - dst;
}


/* modes 2 and 3: the input's segments, encoded; 0 if they do not fit */

static size_t
build(const u_char *data, size_t size, int sign)
{
    size_t          n, part, i;
    u_char          mac[EVP_MAX_MD_SIZE];
    unsigned int    mac_len;
    const u_char   *p, *end, *nl;

    if (size * 4 / 3 + 4 + 2 * EVP_MAX_MD_SIZE > FUZZ_TOKEN) {
        return 0;
    }

    p = data;
    end = data + size;
    n = 0;

    for (i = 0; i < (sign ? 2u : 3u); i++) {
        nl = (i < (sign ? 1u : 2u)) ? memchr(p, '\n', end - p) : NULL;
        part = nl ? (size_t) (nl - p) : (size_t) (end - p);

        if (i) {
            token[n++] = '.';
        }

        n += b64url(token + n, p, part);
        p += part + (nl ? 1 : 0);
    }

    if (sign) {
        HMAC(EVP_sha256(), FUZZ_SECRET, sizeof(FUZZ_SECRET) - 1, token, n,
             mac, &mac_len);

        token[n++] = '.';
        n += b64url(token + n, mac, mac_len);
    }

    return n;
}


static int
inside(ngx_aai_jwt_str_t *s)
{
    return s->data >= buf && s->data + s->len <= buf + sizeof(buf);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                    mode, rc;
    size_t                 i, len;
    const u_char          *t;
    ngx_aai_jwt_str_t      claims[NCLAIMS];
    ngx_aai_jwt_verify_t   v;

    if (size == 0) {
        return 0;
    }

    mode = data[0] & 3;
    data++;
    size--;

    memset(&v, 0, sizeof(v));

    v.keys = keys;
    v.nkeys = nkeys;
    v.claim_names = claim_names;
    v.claims = claims;
    v.nclaims = NCLAIMS;
    v.buf = buf;

    if (mode == 1 || (data[-1] & 4)) {
        v.issuer.len = 11;
        v.issuer.data = (const u_char *) "https://idp";
        v.audience.len = 3;
        v.audience.data = (const u_char *) "api";
    }

    if (mode < 2) {
        t = data;
        len = size;

    } else {
        len = build(data, size, mode == 2);
        if (len == 0) {
            return 0;
        }

        t = token;
    }

    rc = ngx_aai_jwt_verify(&v, t, len);

    if (rc != v.status || rc < NGX_AAI_JWT_VALID || rc >= NGX_AAI_JWT_LAST
        || v.reason == NULL)
    {
        abort();
    }

    if (verbose) {
        fprintf(stderr, "mode %d: %s %s sub=\"%.*s\"\n", mode,
                ngx_aai_jwt_status_name(rc), v.reason, (int) v.sub.len,
                v.sub.data ? (const char *) v.sub.data : "");
    }

    if (rc == NGX_AAI_JWT_VALID) {
        if (v.sub.len == 0 || !inside(&v.sub)) {
            abort();
        }

        for (i = 0; i < NCLAIMS; i++) {
            if (claims[i].data && !inside(&claims[i])) {
                abort();
            }
        }

        (void) ngx_aai_jwt_check_time(v.has_exp, v.exp, v.has_nbf, v.nbf,
                                      1700000000, 30);
    }

    return 0;
}


/*
 * Copyright (C) aai-nginx authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <cjson/cJSON.h>

#include "ngx_aai_jwt_token.h"


/* more members than this in one JSON object is MALFORMED */
#define NGX_AAI_JWT_MAX_MEMBERS     2048

#define NGX_AAI_JWT_MIN_RSA_BITS    2048


typedef struct {
    const char                 *name;
    int                         alg;
} ngx_aai_jwt_alg_name_t;


static int ngx_aai_jwt_fail(ngx_aai_jwt_verify_t *v, int status,
    const char *reason);
static int ngx_aai_jwt_b64_value(u_char c);
static int ngx_aai_jwt_b64url_decode(u_char *dst, const u_char *src,
    size_t len, size_t *out);
static int ngx_aai_jwt_cmp_names(const void *one, const void *two);
static cJSON *ngx_aai_jwt_parse_json(u_char *data, size_t len,
    const char **reason);
static int ngx_aai_jwt_check_header(ngx_aai_jwt_verify_t *v, cJSON *header,
    ngx_aai_jwt_str_t *kid);
static const EVP_MD *ngx_aai_jwt_md(int alg);
static int ngx_aai_jwt_kid_eq(const ngx_aai_jwt_key_t *key,
    ngx_aai_jwt_str_t *kid);
static int ngx_aai_jwt_check_hmac(const ngx_aai_jwt_key_t *key, int alg,
    const u_char *in, size_t in_len, const u_char *sig, size_t sig_len);
static int ngx_aai_jwt_check_pkey(const ngx_aai_jwt_key_t *key, int alg,
    const u_char *in, size_t in_len, const u_char *sig, size_t sig_len);
static int ngx_aai_jwt_ecdsa_der(int alg, const u_char *sig, size_t sig_len,
    u_char *der, size_t *der_len);
static int ngx_aai_jwt_check_signature(ngx_aai_jwt_verify_t *v,
    ngx_aai_jwt_str_t *kid, const u_char *in, size_t in_len,
    const u_char *sig, size_t sig_len);
static int ngx_aai_jwt_check_claims(ngx_aai_jwt_verify_t *v,
    cJSON *payload);
static int ngx_aai_jwt_check_audience(ngx_aai_jwt_verify_t *v, cJSON *aud);
static int ngx_aai_jwt_str_eq(const char *s, ngx_aai_jwt_str_t *str);
static int64_t ngx_aai_jwt_date(double d, int round_up);
static int ngx_aai_jwt_put_value(cJSON *item, u_char **pos, u_char *end,
    ngx_aai_jwt_str_t *out);
static size_t ngx_aai_jwt_print_number(double d, char *buf, size_t size);


static const char  *ngx_aai_jwt_status_names[] = {
    "",
    "VALID",
    "NONE",
    "EXPIRED",
    "NOT_YET_VALID",
    "BAD_SIGNATURE",
    "MALFORMED",
    "UNKNOWN_KEY",
    "BAD_CLAIM"
};


static ngx_aai_jwt_alg_name_t  ngx_aai_jwt_algs[] = {
    { "HS256", NGX_AAI_JWT_HS256 },
    { "HS384", NGX_AAI_JWT_HS384 },
    { "HS512", NGX_AAI_JWT_HS512 },
    { "RS256", NGX_AAI_JWT_RS256 },
    { "RS384", NGX_AAI_JWT_RS384 },
    { "RS512", NGX_AAI_JWT_RS512 },
    { "ES256", NGX_AAI_JWT_ES256 },
    { "ES384", NGX_AAI_JWT_ES384 },
    { NULL, 0 }
};


const char *
ngx_aai_jwt_status_name(int status)
{
    if (status < 0 || status >= NGX_AAI_JWT_LAST) {
        return "";
    }

    return ngx_aai_jwt_status_names[status];
}


int
ngx_aai_jwt_alg_by_name(const u_char *name, size_t len)
{
    ngx_aai_jwt_alg_name_t  *a;

    for (a = ngx_aai_jwt_algs; a->name; a++) {
        if (len == 5 && strncasecmp(a->name, (const char *) name, 5) == 0) {
            return a->alg;
        }
    }

    return 0;
}


int
ngx_aai_jwt_verify(ngx_aai_jwt_verify_t *v, const u_char *token, size_t len)
{
    int                 rc;
    u_char             *header, *payload, *sig;
    size_t              i, hlen, plen, slen;
    cJSON              *json;
    const char         *reason;
    const u_char       *dot1, *dot2;
    ngx_aai_jwt_str_t   kid;

    v->status = 0;
    v->alg = 0;
    v->reason = "";
    v->sub.len = 0;
    v->sub.data = NULL;
    v->exp = 0;
    v->nbf = 0;
    v->has_exp = 0;
    v->has_nbf = 0;
    v->truncated = 0;

    for (i = 0; i < v->nclaims; i++) {
        v->claims[i].len = 0;
        v->claims[i].data = NULL;
    }

    if (len == 0) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_NONE, "no token");
    }

    if (len > NGX_AAI_JWT_MAX_TOKEN) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED, "token too long");
    }

    dot1 = memchr(token, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', token + len - (dot1 + 1)) : NULL;

    if (dot2 == NULL || memchr(dot2 + 1, '.', token + len - (dot2 + 1))) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "not three segments");
    }

    /*
     * The work area holds the decoded header, payload and signature, each
     * followed by a NUL: at most 3/4 of the token plus 3 bytes.  All three
     * are decoded first (bad base64url anywhere is MALFORMED), the payload
     * is parsed only once the signature is known good.
     */

    header = v->buf;

    if (dot1 == token
        || ngx_aai_jwt_b64url_decode(header, token, dot1 - token, &hlen) != 0)
    {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "bad base64url in header");
    }

    payload = header + hlen + 1;

    if (dot2 == dot1 + 1
        || ngx_aai_jwt_b64url_decode(payload, dot1 + 1, dot2 - (dot1 + 1),
                                     &plen)
           != 0)
    {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "bad base64url in payload");
    }

    sig = payload + plen + 1;

    if (ngx_aai_jwt_b64url_decode(sig, dot2 + 1, token + len - (dot2 + 1),
                                  &slen)
        != 0)
    {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "bad base64url in signature");
    }

    json = ngx_aai_jwt_parse_json(header, hlen, &reason);
    if (json == NULL) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED, reason);
    }

    /* kid points into the header's JSON: keep it until the signature */

    rc = ngx_aai_jwt_check_header(v, json, &kid);

    if (rc == 0) {
        if (slen == 0) {
            rc = ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_SIGNATURE,
                                  "no signature");

        } else {
            rc = ngx_aai_jwt_check_signature(v, &kid, token, dot2 - token,
                                             sig, slen);
        }
    }

    cJSON_Delete(json);

    if (rc != 0) {
        return rc;
    }

    json = ngx_aai_jwt_parse_json(payload, plen, &reason);
    if (json == NULL) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED, reason);
    }

    rc = ngx_aai_jwt_check_claims(v, json);

    cJSON_Delete(json);

    return rc;
}


int
ngx_aai_jwt_check_time(int has_exp, int64_t exp, int has_nbf, int64_t nbf,
    int64_t now, int64_t leeway)
{
    if (has_exp && now >= exp + leeway) {
        return NGX_AAI_JWT_EXPIRED;
    }

    if (has_nbf && now + leeway < nbf) {
        return NGX_AAI_JWT_NOT_YET_VALID;
    }

    return NGX_AAI_JWT_VALID;
}


static int
ngx_aai_jwt_fail(ngx_aai_jwt_verify_t *v, int status, const char *reason)
{
    v->status = status;
    v->reason = reason;

    return status;
}


static int
ngx_aai_jwt_b64_value(u_char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '-') {
        return 62;
    }

    if (c == '_') {
        return 63;
    }

    return -1;
}


/*
 * Strict base64url without padding (RFC 7515, section 2): the alphabet
 * only, no "=", and unused trailing bits zero, so that one byte string has
 * one encoding.  Writes *out bytes and a NUL to dst.
 */

static int
ngx_aai_jwt_b64url_decode(u_char *dst, const u_char *src, size_t len,
    size_t *out)
{
    int       c[4];
    size_t    i, j, n, rest;
    u_char   *d;

    rest = len % 4;

    if (rest == 1) {
        return -1;
    }

    d = dst;

    for (i = 0; i < len; i += 4) {

        n = (len - i < 4) ? len - i : 4;

        for (j = 0; j < n; j++) {
            c[j] = ngx_aai_jwt_b64_value(src[i + j]);
            if (c[j] < 0) {
                return -1;
            }
        }

        *d++ = (u_char) ((c[0] << 2) | (c[1] >> 4));

        if (n == 2) {
            if (c[1] & 0x0f) {
                return -1;
            }

            break;
        }

        *d++ = (u_char) (((c[1] & 0x0f) << 4) | (c[2] >> 2));

        if (n == 3) {
            if (c[2] & 0x03) {
                return -1;
            }

            break;
        }

        *d++ = (u_char) (((c[2] & 0x03) << 6) | c[3]);
    }

    *d = '\0';
    *out = d - dst;

    return 0;
}


static int
ngx_aai_jwt_cmp_names(const void *one, const void *two)
{
    return strcmp(*(const char **) one, *(const char **) two);
}


/*
 * A JSON object with unique member names, and no NUL anywhere in it:
 * cJSON strings are C strings, "a\u0000b" would silently become "a".
 * data[len] must be writable.
 */

static cJSON *
ngx_aai_jwt_parse_json(u_char *data, size_t len, const char **reason)
{
    int           n, i;
    cJSON        *json, *item;
    const char   *end;
    const char   *names[NGX_AAI_JWT_MAX_MEMBERS];

    *reason = "NUL in JSON";

    if (len == 0 || memchr(data, '\0', len) != NULL) {
        return NULL;
    }

    data[len] = '\0';

    if (strstr((char *) data, "\\u0000") != NULL) {
        return NULL;
    }

    *reason = "bad JSON";

    json = cJSON_ParseWithOpts((char *) data, &end, 1);
    if (json == NULL) {
        return NULL;
    }

    *reason = "JSON not an object";

    if (!cJSON_IsObject(json)) {
        goto failed;
    }

    *reason = "too many JSON members";

    n = 0;

    for (item = json->child; item; item = item->next) {
        if (n == NGX_AAI_JWT_MAX_MEMBERS || item->string == NULL) {
            goto failed;
        }

        names[n++] = item->string;
    }

    *reason = "duplicate JSON member";

    qsort(names, n, sizeof(const char *), ngx_aai_jwt_cmp_names);

    for (i = 1; i < n; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) {
            goto failed;
        }
    }

    return json;

failed:

    cJSON_Delete(json);

    return NULL;
}


static int
ngx_aai_jwt_check_header(ngx_aai_jwt_verify_t *v, cJSON *header,
    ngx_aai_jwt_str_t *kid)
{
    cJSON                   *alg, *id;
    ngx_aai_jwt_alg_name_t  *a;

    alg = cJSON_GetObjectItemCaseSensitive(header, "alg");

    if (!cJSON_IsString(alg)) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED, "no alg");
    }

    /* exact JWS names only: "none", "hs256" or "PS256" are not accepted */

    for (a = ngx_aai_jwt_algs; a->name; a++) {
        if (strcmp(a->name, alg->valuestring) == 0) {
            v->alg = a->alg;
            break;
        }
    }

    if (v->alg == 0) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_SIGNATURE,
                                "unsupported alg");
    }

    /* no extension is understood, so any critical one is fatal */

    if (cJSON_GetObjectItemCaseSensitive(header, "crit") != NULL) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "crit header");
    }

    kid->len = 0;
    kid->data = NULL;

    id = cJSON_GetObjectItemCaseSensitive(header, "kid");

    if (id == NULL) {
        return 0;
    }

    if (!cJSON_IsString(id)) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "kid not a string");
    }

    kid->len = strlen(id->valuestring);
    kid->data = (u_char *) id->valuestring;

    return 0;
}


static const EVP_MD *
ngx_aai_jwt_md(int alg)
{
    switch (alg) {

    case NGX_AAI_JWT_HS256:
    case NGX_AAI_JWT_RS256:
    case NGX_AAI_JWT_ES256:
        return EVP_sha256();

    case NGX_AAI_JWT_HS384:
    case NGX_AAI_JWT_RS384:
    case NGX_AAI_JWT_ES384:
        return EVP_sha384();

    default:
        return EVP_sha512();
    }
}


/*
 * Key choice: a token naming the kid of some keys is checked with those;
 * a token naming an unknown kid with the keys configured without kid; a
 * token without kid with every key.  Only keys of the token's exact alg
 * are used: an HS256 token never meets the bytes of an RSA key.
 */

static int
ngx_aai_jwt_check_signature(ngx_aai_jwt_verify_t *v, ngx_aai_jwt_str_t *kid,
    const u_char *in, size_t in_len, const u_char *sig, size_t sig_len)
{
    int                       named, tried;
    size_t                    i;
    const ngx_aai_jwt_key_t  *key;

    if (v->nkeys == 0) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_UNKNOWN_KEY, "no keys");
    }

    named = 0;

    for (i = 0; kid->data && i < v->nkeys; i++) {
        if (ngx_aai_jwt_kid_eq(&v->keys[i], kid)) {
            named = 1;
            break;
        }
    }

    tried = 0;

    for (i = 0; i < v->nkeys; i++) {
        key = &v->keys[i];

        if (key->alg != v->alg) {
            continue;
        }

        if (named ? !ngx_aai_jwt_kid_eq(key, kid)
                  : (kid->data && key->kid.data))
        {
            continue;
        }

        tried++;

        if (ngx_aai_jwt_alg_is_hmac(v->alg)
            ? ngx_aai_jwt_check_hmac(key, v->alg, in, in_len, sig, sig_len)
            : ngx_aai_jwt_check_pkey(key, v->alg, in, in_len, sig, sig_len))
        {
            return 0;
        }
    }

    if (tried) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_SIGNATURE,
                                "signature mismatch");
    }

    if (named) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_SIGNATURE,
                                "alg does not match the kid's key");
    }

    if (kid->data) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_UNKNOWN_KEY, "unknown kid");
    }

    return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_SIGNATURE,
                            "no key for the alg");
}


static int
ngx_aai_jwt_kid_eq(const ngx_aai_jwt_key_t *key, ngx_aai_jwt_str_t *kid)
{
    return key->kid.data && key->kid.len == kid->len
           && memcmp(key->kid.data, kid->data, kid->len) == 0;
}


static int
ngx_aai_jwt_check_hmac(const ngx_aai_jwt_key_t *key, int alg,
    const u_char *in, size_t in_len, const u_char *sig, size_t sig_len)
{
    u_char        mac[EVP_MAX_MD_SIZE];
    unsigned int  mac_len;

    if (HMAC(ngx_aai_jwt_md(alg), key->secret.data, (int) key->secret.len,
             in, in_len, mac, &mac_len)
        == NULL)
    {
        ERR_clear_error();
        return 0;
    }

    if (sig_len != mac_len) {
        return 0;
    }

    return CRYPTO_memcmp(mac, sig, mac_len) == 0;
}


static int
ngx_aai_jwt_check_pkey(const ngx_aai_jwt_key_t *key, int alg,
    const u_char *in, size_t in_len, const u_char *sig, size_t sig_len)
{
    int            ok;
    u_char         der[160];
    size_t         der_len;
    EVP_MD_CTX    *md;
    EVP_PKEY_CTX  *pctx;

    if (ngx_aai_jwt_alg_is_ec(alg)) {
        if (ngx_aai_jwt_ecdsa_der(alg, sig, sig_len, der, &der_len) != 0) {
            return 0;
        }

        sig = der;
        sig_len = der_len;
    }

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        ERR_clear_error();
        return 0;
    }

    ok = 0;
    pctx = NULL;

    if (EVP_DigestVerifyInit(md, &pctx, ngx_aai_jwt_md(alg), NULL, key->pkey)
        != 1)
    {
        goto done;
    }

    if (ngx_aai_jwt_alg_is_rsa(alg)
        && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
    {
        goto done;
    }

    ok = (EVP_DigestVerify(md, sig, sig_len, in, in_len) == 1);

done:

    EVP_MD_CTX_free(md);
    ERR_clear_error();

    return ok;
}


/* JWS ECDSA signatures are R || S (RFC 7518, 3.4); OpenSSL wants DER */

static int
ngx_aai_jwt_ecdsa_der(int alg, const u_char *sig, size_t sig_len,
    u_char *der, size_t *der_len)
{
    int         n, rc;
    size_t      half;
    BIGNUM     *r, *s;
    ECDSA_SIG  *es;

    half = (alg == NGX_AAI_JWT_ES256) ? 32 : 48;

    if (sig_len != 2 * half) {
        return -1;
    }

    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, (int) half, NULL);
    s = BN_bin2bn(sig + half, (int) half, NULL);

    rc = -1;

    if (es == NULL || r == NULL || s == NULL) {
        BN_free(r);
        BN_free(s);
        goto done;
    }

    if (ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        goto done;
    }

    n = i2d_ECDSA_SIG(es, NULL);

    if (n > 0 && (size_t) n <= 160) {
        n = i2d_ECDSA_SIG(es, &der);

        if (n > 0) {
            *der_len = n;
            rc = 0;
        }
    }

done:

    ECDSA_SIG_free(es);
    ERR_clear_error();

    return rc;
}


/*
 * Claims that are not what RFC 7519 says they are make the token
 * MALFORMED; a missing or empty sub, or an iss / aud other than the
 * configured one make it BAD_CLAIM.
 */

static int
ngx_aai_jwt_check_claims(ngx_aai_jwt_verify_t *v, cJSON *payload)
{
    cJSON   *sub, *iss, *aud, *exp, *nbf, *item;
    u_char  *pos, *end;
    size_t   i;

    sub = cJSON_GetObjectItemCaseSensitive(payload, "sub");
    iss = cJSON_GetObjectItemCaseSensitive(payload, "iss");
    aud = cJSON_GetObjectItemCaseSensitive(payload, "aud");
    exp = cJSON_GetObjectItemCaseSensitive(payload, "exp");
    nbf = cJSON_GetObjectItemCaseSensitive(payload, "nbf");

    if ((sub && !cJSON_IsString(sub)) || (iss && !cJSON_IsString(iss))) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "sub or iss not a string");
    }

    if ((exp && !cJSON_IsNumber(exp)) || (nbf && !cJSON_IsNumber(nbf))) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "exp or nbf not a number");
    }

    if (aud && ngx_aai_jwt_check_audience(v, aud) != 0) {
        return v->status;
    }

    if (v->issuer.len
        && (iss == NULL || !ngx_aai_jwt_str_eq(iss->valuestring, &v->issuer)))
    {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_CLAIM, "iss mismatch");
    }

    if (v->audience.len && aud == NULL) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_CLAIM, "no aud");
    }

    if (sub == NULL || sub->valuestring[0] == '\0') {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_CLAIM, "no sub");
    }

    if (exp) {
        v->exp = ngx_aai_jwt_date(exp->valuedouble, 0);
        v->has_exp = 1;
    }

    if (nbf) {
        v->nbf = ngx_aai_jwt_date(nbf->valuedouble, 1);
        v->has_nbf = 1;
    }

    pos = v->buf + NGX_AAI_JWT_WORK_SIZE;
    end = v->buf + NGX_AAI_JWT_BUF_SIZE;

    /* sub is at most the payload's size: it always fits */

    (void) ngx_aai_jwt_put_value(sub, &pos, end, &v->sub);

    for (i = 0; i < v->nclaims; i++) {
        item = cJSON_GetObjectItemCaseSensitive(payload,
                                  (const char *) v->claim_names[i].data);
        if (item == NULL) {
            continue;
        }

        if (ngx_aai_jwt_put_value(item, &pos, end, &v->claims[i]) != 0) {
            v->truncated = 1;
        }
    }

    v->status = NGX_AAI_JWT_VALID;

    return NGX_AAI_JWT_VALID;
}


/* aud is a string or an array of strings (RFC 7519, 4.1.3) */

static int
ngx_aai_jwt_check_audience(ngx_aai_jwt_verify_t *v, cJSON *aud)
{
    int     found;
    cJSON  *item;

    if (cJSON_IsString(aud)) {
        found = ngx_aai_jwt_str_eq(aud->valuestring, &v->audience);

    } else if (cJSON_IsArray(aud)) {
        found = 0;

        for (item = aud->child; item; item = item->next) {
            if (!cJSON_IsString(item)) {
                return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                        "aud not a string");
            }

            if (ngx_aai_jwt_str_eq(item->valuestring, &v->audience)) {
                found = 1;
            }
        }

    } else {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_MALFORMED,
                                "aud not a string");
    }

    if (v->audience.len && !found) {
        return ngx_aai_jwt_fail(v, NGX_AAI_JWT_BAD_CLAIM, "aud mismatch");
    }

    return 0;
}


static int
ngx_aai_jwt_str_eq(const char *s, ngx_aai_jwt_str_t *str)
{
    return strlen(s) == str->len
           && (str->len == 0 || memcmp(s, str->data, str->len) == 0);
}


/* NumericDate to seconds, clamped; rounded towards the stricter side */

static int64_t
ngx_aai_jwt_date(double d, int round_up)
{
    int64_t  t;

    if (d > 4e18) {
        return (int64_t) 4e18;
    }

    if (d < -4e18) {
        return (int64_t) -4e18;
    }

    t = (int64_t) d;

    if (round_up && (double) t < d) {
        t++;

    } else if (!round_up && (double) t > d) {
        t--;
    }

    return t;
}


/*
 * A claim's value as text: strings as they are, numbers and booleans as
 * text, null, arrays and objects as compact JSON.
 */

static int
ngx_aai_jwt_put_value(cJSON *item, u_char **pos, u_char *end,
    ngx_aai_jwt_str_t *out)
{
    char    num[64];
    size_t  len, room;
    u_char  *p;

    p = *pos;
    room = end - p;

    if (cJSON_IsString(item)) {
        len = strlen(item->valuestring);

        if (len > room) {
            return -1;
        }

        memcpy(p, item->valuestring, len);

    } else if (cJSON_IsNumber(item)) {
        len = ngx_aai_jwt_print_number(item->valuedouble, num, sizeof(num));

        if (len > room) {
            return -1;
        }

        memcpy(p, num, len);

    } else {
        if (room > 0x7fffffff) {
            room = 0x7fffffff;
        }

        if (!cJSON_PrintPreallocated(item, (char *) p, (int) room, 0)) {
            return -1;
        }

        len = strlen((char *) p);
    }

    out->data = p;
    out->len = len;
    *pos = p + len;

    return 0;
}


static size_t
ngx_aai_jwt_print_number(double d, char *buf, size_t size)
{
    int  n;

    if (d > -1e15 && d < 1e15 && (double) (long long) d == d) {
        n = snprintf(buf, size, "%lld", (long long) d);

    } else {
        n = snprintf(buf, size, "%.15g", d);

        if (n > 0 && strtod(buf, NULL) != d) {
            n = snprintf(buf, size, "%.17g", d);
        }
    }

    return (n > 0 && (size_t) n < size) ? (size_t) n : 0;
}


/* an encrypted PEM is refused, never a prompt on the terminal */

static int
ngx_aai_jwt_no_passphrase(char *buf, int size, int rwflag, void *data)
{
    return -1;
}


/* the public key of a key pair, without its private parts */

static EVP_PKEY *
ngx_aai_jwt_public_half(EVP_PKEY *pair)
{
    int             n;
    EVP_PKEY       *pub;
    unsigned char  *der;
    const u_char   *p;

    der = NULL;

    n = i2d_PUBKEY(pair, &der);
    if (n <= 0) {
        return NULL;
    }

    p = der;
    pub = d2i_PUBKEY(NULL, &p, n);

    OPENSSL_free(der);

    return pub;
}


EVP_PKEY *
ngx_aai_jwt_load_pkey(int alg, const u_char *pem, size_t len,
    const char **err)
{
    int                 bits;
    BIO                *bio;
    X509               *x509;
    size_t              glen;
    EVP_PKEY           *pkey, *priv;
    const char         *type;
    char                group[64];
    OSSL_DECODER_CTX   *dctx;

    type = ngx_aai_jwt_alg_is_rsa(alg) ? "RSA" : "EC";
    pkey = NULL;

    bio = BIO_new_mem_buf(pem, (int) len);
    if (bio == NULL) {
        *err = "out of memory";
        goto failed;
    }

    dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, NULL,
                                         OSSL_KEYMGMT_SELECT_PUBLIC_KEY,
                                         NULL, NULL);
    if (dctx == NULL) {
        *err = "no PEM decoder";
        goto failed;
    }

    if (OSSL_DECODER_from_bio(dctx, bio) != 1) {
        pkey = NULL;
    }

    OSSL_DECODER_CTX_free(dctx);

    if (pkey == NULL) {
        /* an X.509 certificate */

        (void) BIO_reset(bio);

        x509 = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x509 != NULL) {
            pkey = X509_get_pubkey(x509);
            X509_free(x509);
        }
    }

    if (pkey == NULL) {
        /* a private key: its public half */

        (void) BIO_reset(bio);

        priv = PEM_read_bio_PrivateKey(bio, NULL, ngx_aai_jwt_no_passphrase,
                                       NULL);
        if (priv != NULL) {
            pkey = ngx_aai_jwt_public_half(priv);
            EVP_PKEY_free(priv);
        }
    }

    if (pkey == NULL) {
        *err = "no public key, private key or certificate in PEM "
               "(encrypted keys are not read)";
        goto failed;
    }

    if (!EVP_PKEY_is_a(pkey, type)) {
        *err = ngx_aai_jwt_alg_is_rsa(alg) ? "not an RSA key"
                                           : "not an EC key";
        goto failed;
    }

    if (ngx_aai_jwt_alg_is_rsa(alg)) {
        bits = EVP_PKEY_get_bits(pkey);

        if (bits < NGX_AAI_JWT_MIN_RSA_BITS) {
            *err = "RSA key shorter than 2048 bits";
            goto failed;
        }

    } else {
        if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) != 1) {
            *err = "EC key without a named curve";
            goto failed;
        }

        if (alg == NGX_AAI_JWT_ES256
            ? strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0
            : strcmp(group, "secp384r1") != 0 && strcmp(group, "P-384") != 0)
        {
            *err = (alg == NGX_AAI_JWT_ES256) ? "es256 needs a P-256 key"
                                              : "es384 needs a P-384 key";
            goto failed;
        }
    }

    BIO_free(bio);
    ERR_clear_error();

    return pkey;

failed:

    EVP_PKEY_free(pkey);
    BIO_free(bio);
    ERR_clear_error();

    return NULL;
}

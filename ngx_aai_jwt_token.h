
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_jwt_token: JWS compact serialization parsing and verification
 * (split, base64url, JSON, claim checks, HMAC / RSA / ECDSA signatures).
 * Pure C on OpenSSL 3 and cJSON: no nginx header, no allocation from nginx
 * pools, so that a libFuzzer target compiles it standalone (fuzz/).
 */


#ifndef _NGX_AAI_JWT_TOKEN_H_INCLUDED_
#define _NGX_AAI_JWT_TOKEN_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>


/* tokens longer than this are MALFORMED without being decoded */
#define NGX_AAI_JWT_MAX_TOKEN        8192

/* the work buffer ngx_aai_jwt_verify() needs: decoding + claim values */
#define NGX_AAI_JWT_WORK_SIZE        NGX_AAI_JWT_MAX_TOKEN
#define NGX_AAI_JWT_BUF_SIZE         (3 * NGX_AAI_JWT_MAX_TOKEN)


/* results: the values of $aai_jwt_status (0: not evaluated yet) */
#define NGX_AAI_JWT_UNSET            0
#define NGX_AAI_JWT_VALID            1
#define NGX_AAI_JWT_NONE             2
#define NGX_AAI_JWT_EXPIRED          3
#define NGX_AAI_JWT_NOT_YET_VALID    4
#define NGX_AAI_JWT_BAD_SIGNATURE    5
#define NGX_AAI_JWT_MALFORMED        6
#define NGX_AAI_JWT_UNKNOWN_KEY      7
#define NGX_AAI_JWT_BAD_CLAIM        8
#define NGX_AAI_JWT_LAST             9


/* algorithms */
#define NGX_AAI_JWT_HS256            1
#define NGX_AAI_JWT_HS384            2
#define NGX_AAI_JWT_HS512            3
#define NGX_AAI_JWT_RS256            4
#define NGX_AAI_JWT_RS384            5
#define NGX_AAI_JWT_RS512            6
#define NGX_AAI_JWT_ES256            7
#define NGX_AAI_JWT_ES384            8

#define ngx_aai_jwt_alg_is_hmac(a)   ((a) >= NGX_AAI_JWT_HS256                \
                                      && (a) <= NGX_AAI_JWT_HS512)
#define ngx_aai_jwt_alg_is_rsa(a)    ((a) >= NGX_AAI_JWT_RS256                \
                                      && (a) <= NGX_AAI_JWT_RS512)
#define ngx_aai_jwt_alg_is_ec(a)     ((a) == NGX_AAI_JWT_ES256                \
                                      || (a) == NGX_AAI_JWT_ES384)


typedef struct {
    size_t                      len;
    const u_char               *data;
} ngx_aai_jwt_str_t;


typedef struct {
    int                         alg;
    ngx_aai_jwt_str_t           kid;         /* data NULL: no kid */
    ngx_aai_jwt_str_t           secret;      /* HMAC keys */
    EVP_PKEY                   *pkey;        /* RSA and EC keys */
} ngx_aai_jwt_key_t;


typedef struct {
    /* set by the caller */
    const ngx_aai_jwt_key_t    *keys;
    size_t                      nkeys;
    ngx_aai_jwt_str_t           issuer;      /* len 0: not checked */
    ngx_aai_jwt_str_t           audience;    /* len 0: not checked */

    /* claims to extract: NUL-terminated names, nclaims results */
    const ngx_aai_jwt_str_t    *claim_names;
    ngx_aai_jwt_str_t          *claims;      /* data NULL: absent */
    size_t                      nclaims;

    u_char                     *buf;         /* NGX_AAI_JWT_BUF_SIZE bytes */

    /* results; sub and claims point into buf */
    int                         status;
    int                         alg;
    const char                 *reason;      /* static text for logs */
    ngx_aai_jwt_str_t           sub;
    int64_t                     exp;
    int64_t                     nbf;
    unsigned                    has_exp:1;
    unsigned                    has_nbf:1;
    unsigned                    truncated:1; /* a claim did not fit */
} ngx_aai_jwt_verify_t;


/*
 * Checks the token's structure, signature and non-time claims.  Returns
 * and sets v->status: VALID (signature and claims good; check exp and nbf
 * with ngx_aai_jwt_check_time()), or MALFORMED, BAD_SIGNATURE,
 * UNKNOWN_KEY, BAD_CLAIM with v->reason.  The result depends on the token,
 * the keys, issuer, audience and claim names only, never on the time.
 */
int ngx_aai_jwt_verify(ngx_aai_jwt_verify_t *v, const u_char *token,
    size_t len);

/* VALID, EXPIRED or NOT_YET_VALID */
int ngx_aai_jwt_check_time(int has_exp, int64_t exp, int has_nbf,
    int64_t nbf, int64_t now, int64_t leeway);

const char *ngx_aai_jwt_status_name(int status);

/* "hs256", "RS256", ...: case-insensitive; 0 if unknown */
int ngx_aai_jwt_alg_by_name(const u_char *name, size_t len);

/*
 * A public key (SPKI or PKCS#1 PEM, an X.509 certificate, or a private key
 * whose public half is used) suitable for alg; NULL and *err if not.
 */
EVP_PKEY *ngx_aai_jwt_load_pkey(int alg, const u_char *pem, size_t len,
    const char **err);


#endif /* _NGX_AAI_JWT_TOKEN_H_INCLUDED_ */


/*
 * Copyright (C) aai-nginx authors
 *
 * jwt_bench ALG:TOKEN...: the cost of one uncached ngx_aai_jwt_verify()
 * per token (what a request pays on a cache miss), with the test keys of
 * t/jwt.  make -C fuzz bench signs the tokens and runs it.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ngx_aai_jwt_token.h"


#define BENCH_SECRET  "aai-test-secret-0123456789abcdef"                      \
                      "0123456789abcdef0123456789abcdef"


static u_char  buf[NGX_AAI_JWT_BUF_SIZE];


static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static int
load_key(ngx_aai_jwt_key_t *key, int alg, const char *file)
{
    FILE        *f;
    size_t       n;
    u_char       pem[8192];
    char         path[1024];
    const char  *err;

    memset(key, 0, sizeof(ngx_aai_jwt_key_t));
    key->alg = alg;

    if (file == NULL) {
        key->secret.len = sizeof(BENCH_SECRET) - 1;
        key->secret.data = (const u_char *) BENCH_SECRET;
        return 0;
    }

    snprintf(path, sizeof(path), "%s/%s", AAI_JWT_KEYS, file);

    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }

    n = fread(pem, 1, sizeof(pem), f);
    fclose(f);

    key->pkey = ngx_aai_jwt_load_pkey(alg, pem, n, &err);

    return key->pkey ? 0 : -1;
}


int
main(int argc, char **argv)
{
    int                    i, alg, n, rc;
    char                  *token;
    double                 t0, t;
    const char            *file;
    ngx_aai_jwt_key_t      key;
    ngx_aai_jwt_verify_t   v;

    for (i = 1; i < argc; i++) {
        token = strchr(argv[i], ':');
        if (token == NULL) {
            return 2;
        }

        *token++ = '\0';

        alg = ngx_aai_jwt_alg_by_name((u_char *) argv[i], strlen(argv[i]));

        file = ngx_aai_jwt_alg_is_hmac(alg) ? NULL
               : (alg == NGX_AAI_JWT_ES256) ? "ec256.pub"
               : (alg == NGX_AAI_JWT_ES384) ? "ec384.pub" : "rsa.pub";

        if (alg == 0 || load_key(&key, alg, file) != 0) {
            fprintf(stderr, "jwt_bench: bad key for %s\n", argv[i]);
            return 1;
        }

        memset(&v, 0, sizeof(v));
        v.keys = &key;
        v.nkeys = 1;
        v.buf = buf;

        n = 0;
        t0 = now();

        do {
            rc = ngx_aai_jwt_verify(&v, (u_char *) token, strlen(token));
            if (rc != NGX_AAI_JWT_VALID) {
                fprintf(stderr, "jwt_bench: %s: %s\n", argv[i], v.reason);
                return 1;
            }

            n++;
            t = now() - t0;

        } while (t < 1.0);

        printf("%-6s %5zu bytes  %8.2f us/verification  (%d in %.2f s)\n",
               argv[i], strlen(token), t * 1e6 / n, n, t);

        EVP_PKEY_free(key.pkey);
    }

    return 0;
}


/*
 * Copyright (C) aai-nginx authors
 *
 * jwt-tokens DIR [N]: writes DIR/key.pub (an RSA-2048 public key) and
 * DIR/tokens.map ("userI TOKEN;" for I in 1..N, default 10000), each token an
 * RS256 JWT with sub=userI valid for a year, for the S14 benchmark.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>


static size_t
b64url(char *dst, const unsigned char *src, size_t len)
{
    static const char  tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    size_t    i, n;
    uint32_t  v;

    n = 0;

    for (i = 0; i + 2 < len; i += 3) {
        v = (src[i] << 16) | (src[i + 1] << 8) | src[i + 2];
        dst[n++] = tab[(v >> 18) & 63];
        dst[n++] = tab[(v >> 12) & 63];
        dst[n++] = tab[(v >> 6) & 63];
        dst[n++] = tab[v & 63];
    }

    if (len - i == 1) {
        v = src[i] << 16;
        dst[n++] = tab[(v >> 18) & 63];
        dst[n++] = tab[(v >> 12) & 63];

    } else if (len - i == 2) {
        v = (src[i] << 16) | (src[i + 1] << 8);
        dst[n++] = tab[(v >> 18) & 63];
        dst[n++] = tab[(v >> 12) & 63];
        dst[n++] = tab[(v >> 6) & 63];
    }

    dst[n] = '\0';

    return n;
}


int
main(int argc, char **argv)
{
    int             i, count;
    char            path[4096], input[1024], payload[256], sig64[512];
    size_t          n, siglen;
    FILE           *f;
    time_t          exp;
    EVP_PKEY       *key;
    EVP_MD_CTX     *md;
    unsigned char   sig[512];

    static const char  header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [N]\n", argv[0]);
        return 2;
    }

    count = argc > 2 ? atoi(argv[2]) : 10000;
    exp = time(NULL) + 365 * 86400;

    key = EVP_RSA_gen(2048);
    if (key == NULL) {
        return 1;
    }

    snprintf(path, sizeof(path), "%s/key.pub", argv[1]);
    f = fopen(path, "w");
    if (f == NULL || !PEM_write_PUBKEY(f, key)) {
        perror(path);
        return 1;
    }
    fclose(f);

    snprintf(path, sizeof(path), "%s/tokens.map", argv[1]);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return 1;
    }

    md = EVP_MD_CTX_new();

    for (i = 1; i <= count; i++) {
        n = b64url(input, (const unsigned char *) header, sizeof(header) - 1);
        input[n++] = '.';

        snprintf(payload, sizeof(payload),
                 "{\"sub\":\"user%d\",\"exp\":%ld}", i, (long) exp);
        n += b64url(input + n, (unsigned char *) payload, strlen(payload));

        siglen = sizeof(sig);

        if (!EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key)
            || !EVP_DigestSign(md, sig, &siglen, (unsigned char *) input, n))
        {
            fprintf(stderr, "signing failed\n");
            return 1;
        }

        EVP_MD_CTX_reset(md);
        b64url(sig64, sig, siglen);

        fprintf(f, "user%d %s.%s;\n", i, input, sig64);
    }

    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    fclose(f);

    return 0;
}

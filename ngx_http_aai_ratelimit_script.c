
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the Lua script that checks a batch in
 * Redis, as sent with EVAL, and its SHA-1 for EVALSHA: the SHA-1 of
 * lua/ratelimit.lua, byte for byte.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>

#include "ngx_http_aai_ratelimit.h"


/*
 * The script, from lua/ratelimit.lua (which says what it does, its
 * arguments and its reply); "make lua" remakes the header after an edit.
 */

#include "ngx_http_aai_ratelimit_lua.h"


ngx_str_t  ngx_http_aai_ratelimit_script_text = {
    sizeof(ngx_http_aai_ratelimit_script) - 1,
    (u_char *) ngx_http_aai_ratelimit_script
};


ngx_int_t
ngx_http_aai_ratelimit_script_sha(ngx_conf_t *cf, ngx_str_t *sha)
{
    u_char  digest[SHA_DIGEST_LENGTH];

    sha->data = ngx_pnalloc(cf->pool, 2 * SHA_DIGEST_LENGTH);
    if (sha->data == NULL) {
        return NGX_ERROR;
    }

    SHA1((const u_char *) ngx_http_aai_ratelimit_script,
         sizeof(ngx_http_aai_ratelimit_script) - 1, digest);

    sha->len = ngx_hex_dump(sha->data, digest, SHA_DIGEST_LENGTH) - sha->data;

    return NGX_OK;
}

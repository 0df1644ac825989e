
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


/*
 * On a Redis Cluster (Redis 7.0 or later): the script that checks a batch
 * of several slots of one node.  Its first line allows keys of several
 * slots; Redis still refuses declared keys (KEYS) of several slots
 * (CROSSSLOT), so the batch declares its first key only, which routes it,
 * and passes the others first in ARGV, their number last.  The prelude
 * puts KEYS and ARGV back as the script has them, after reading each
 * undeclared key once: a key that this node does not serve (its slot
 * moved, or is migrating and the key has left) fails the batch with
 * "AAIXSLOT" before anything is written, and the batch is checked again
 * per slot.
 */

static const char  ngx_http_aai_ratelimit_xprelude[] =
"#!lua flags=allow-cross-slot-keys\n"
"local KEYS, ARGV = KEYS, ARGV\n"
"do\n"
"  local n = tonumber(ARGV[#ARGV])\n"
"  local k, a = {KEYS[1]}, {}\n"
"  for i = 1, n do k[i + 1] = ARGV[i] end\n"
"  for i = n + 1, #ARGV - 1 do a[#a + 1] = ARGV[i] end\n"
"  for i = 2, #k do\n"
"    local r = redis.pcall('EXISTS', k[i])\n"
"    if type(r) == 'table' and r.err then\n"
"      return redis.error_reply('AAIXSLOT ' .. r.err)\n"
"    end\n"
"  end\n"
"  KEYS, ARGV = k, a\n"
"end\n";


ngx_str_t  ngx_http_aai_ratelimit_xscript_text;


ngx_int_t
ngx_http_aai_ratelimit_xscript_sha(ngx_conf_t *cf, ngx_str_t *sha)
{
    u_char     *p;
    size_t      len;
    ngx_str_t  *x;
    u_char      digest[SHA_DIGEST_LENGTH];

    x = &ngx_http_aai_ratelimit_xscript_text;

    len = sizeof(ngx_http_aai_ratelimit_xprelude) - 1
          + sizeof(ngx_http_aai_ratelimit_script) - 1;

    p = ngx_pnalloc(cf->pool, len);
    sha->data = ngx_pnalloc(cf->pool, 2 * SHA_DIGEST_LENGTH);

    if (p == NULL || sha->data == NULL) {
        return NGX_ERROR;
    }

    x->data = p;
    p = ngx_cpymem(p, ngx_http_aai_ratelimit_xprelude,
                   sizeof(ngx_http_aai_ratelimit_xprelude) - 1);
    ngx_memcpy(p, ngx_http_aai_ratelimit_script,
               sizeof(ngx_http_aai_ratelimit_script) - 1);
    x->len = len;

    SHA1(x->data, x->len, digest);

    sha->len = ngx_hex_dump(sha->data, digest, SHA_DIGEST_LENGTH) - sha->data;

    return NGX_OK;
}

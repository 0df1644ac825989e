
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the Lua script that checks a batch in
 * Redis, as sent with EVAL, and its SHA-1 for EVALSHA: the SHA-1 of
 * lua/ratelimit.lua, byte for byte; and the Redis 7 function library made
 * of it and lua/ratelimit_library.lua, for FUNCTION LOAD and FCALL.
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


/*
 * The function library: "#!lua name=<name>", "local library = '<name>'",
 * lua/ratelimit.lua without its last line (the call of EVAL), then
 * lua/ratelimit_library.lua, which registers <name> and <name>_x (several
 * slots of a cluster node).  <name> is "aai_ratelimit_" and the first 12
 * hex digits of the SHA-1 of the two files, one after the other: nginx of
 * two versions sharing a Redis each call their own.
 */

#define NGX_HTTP_AAI_RL_EVAL_LINE  "\nreturn check(KEYS, ARGV)\n"
#define NGX_HTTP_AAI_RL_LIB_NAME   "aai_ratelimit_"
#define NGX_HTTP_AAI_RL_LIB_HASH   12


ngx_int_t
ngx_http_aai_ratelimit_library(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *xname, ngx_str_t *text)
{
    u_char  *p, *both;
    size_t   slen, llen, last, len;
    u_char   digest[SHA_DIGEST_LENGTH];
    u_char   hex[2 * SHA_DIGEST_LENGTH];

    slen = sizeof(ngx_http_aai_ratelimit_script) - 1;
    llen = sizeof(ngx_http_aai_ratelimit_library_end) - 1;
    last = sizeof(NGX_HTTP_AAI_RL_EVAL_LINE) - 1;

    if (slen < last
        || ngx_strncmp(ngx_http_aai_ratelimit_script + slen - last,
                       NGX_HTTP_AAI_RL_EVAL_LINE, last)
           != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "aai_ratelimit: lua/ratelimit.lua does not end "
                           "with \"return check(KEYS, ARGV)\"");
        return NGX_ERROR;
    }

    both = ngx_pnalloc(cf->temp_pool, slen + llen);
    if (both == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(both, ngx_http_aai_ratelimit_script, slen);
    ngx_memcpy(p, ngx_http_aai_ratelimit_library_end, llen);

    SHA1(both, slen + llen, digest);
    ngx_hex_dump(hex, digest, SHA_DIGEST_LENGTH);

    len = sizeof(NGX_HTTP_AAI_RL_LIB_NAME) - 1 + NGX_HTTP_AAI_RL_LIB_HASH;

    name->data = ngx_pnalloc(cf->pool, len);
    xname->data = ngx_pnalloc(cf->pool, len + 2);
    text->data = ngx_pnalloc(cf->pool, sizeof("#!lua name=\n") - 1
                             + sizeof("local library = ''\n") - 1
                             + 2 * len + slen - last + 1 + llen);

    if (name->data == NULL || xname->data == NULL || text->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(name->data, NGX_HTTP_AAI_RL_LIB_NAME,
                   sizeof(NGX_HTTP_AAI_RL_LIB_NAME) - 1);
    ngx_memcpy(p, hex, NGX_HTTP_AAI_RL_LIB_HASH);
    name->len = len;

    xname->len = ngx_sprintf(xname->data, "%V_x", name) - xname->data;

    /* the script up to its last line's newline, that line left out */

    text->len = ngx_sprintf(text->data, "#!lua name=%V\nlocal library = '%V'\n"
                            "%*s%*s", name, name,
                            slen - last + 1, ngx_http_aai_ratelimit_script,
                            llen, ngx_http_aai_ratelimit_library_end)
                - text->data;

    return NGX_OK;
}

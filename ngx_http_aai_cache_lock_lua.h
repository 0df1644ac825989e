
/*
 * Made from lua/cache_renew.lua by scripts/lua2c: do not edit.  Edit that
 * file and run "make lua" (t/059-cache-scripts.t checks that the two
 * agree).
 * Its comment lines, blank lines and indentation are left out.
 */


static const char  ngx_http_aai_cache_renew_lua[] =
"local lock_key = KEYS[1]\n"
"local token, lease = ARGV[1], ARGV[2]\n"
"if redis.call('get', lock_key) == token then\n"
"return redis.call('pexpire', lock_key, lease)\n"
"end\n"
"return 0\n"
;


/*
 * Made from lua/cache_release.lua by scripts/lua2c: do not edit.  Edit that
 * file and run "make lua" (t/059-cache-scripts.t checks that the two
 * agree).
 * Its comment lines, blank lines and indentation are left out.
 */


static const char  ngx_http_aai_cache_release_lua[] =
"local lock_key = KEYS[1]\n"
"local token, channel, message = ARGV[1], ARGV[2], ARGV[3]\n"
"if redis.call('get', lock_key) == token then\n"
"redis.call('del', lock_key)\n"
"end\n"
"redis.call('publish', channel, message)\n"
"return 1\n"
;

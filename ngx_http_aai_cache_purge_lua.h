
/*
 * Made from lua/cache_purge.lua by scripts/lua2c: do not edit.  Edit that
 * file and run "make lua" (t/059-cache-scripts.t checks that the two
 * agree).
 * Its comment lines, blank lines and indentation are left out.
 */


static const char  ngx_http_aai_cache_purge_lua[] =
"local deleted = 0\n"
"for i = 1, #KEYS do\n"
"local base_key = KEYS[i]\n"
"local variants_key = base_key .. ':v'\n"
"local variants = redis.call('smembers', variants_key)\n"
"for j = 1, #variants do\n"
"deleted = deleted + redis.call('del', variants[j])\n"
"end\n"
"deleted = deleted + redis.call('del', base_key)\n"
"redis.call('del', variants_key)\n"
"end\n"
"return deleted\n"
;

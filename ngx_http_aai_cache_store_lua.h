
/*
 * Made from lua/cache_shared.lua and lua/cache_store.lua, in that order,
 * by scripts/lua2c: do not edit.  Edit those files and run "make lua"
 * (t/059-cache-scripts.t checks that they agree).
 * Its comment lines, blank lines and indentation are left out.
 */


static const char  ngx_http_aai_cache_store_lua[] =
"local function store_vary(entry_key, base_key, variants_key, ttl, vary)\n"
"local px = tonumber(ttl)\n"
"local vary_px = redis.call('pttl', base_key)\n"
"if vary_px < px then\n"
"vary_px = px\n"
"end\n"
"redis.call('set', base_key, vary, 'px', vary_px)\n"
"redis.call('sadd', variants_key, entry_key)\n"
"if redis.call('pttl', variants_key) < px then\n"
"redis.call('pexpire', variants_key, px)\n"
"end\n"
"end\n"
"local function release_lock(lock_key, token, channel, message)\n"
"if redis.call('get', lock_key) == token then\n"
"redis.call('del', lock_key)\n"
"end\n"
"redis.call('publish', channel, message)\n"
"end\n"
"local function holds_body(entry_key)\n"
"local head = redis.call('getrange', entry_key, 0, 7)\n"
"return #head == 8 and string.sub(head, 1, 4) == 'AAIC'\n"
"and string.byte(head, 5) == 1 and string.sub(head, 6, 6) == 'E'\n"
"and string.byte(head, 8) % 2 == 0\n"
"end\n"
"local entry_key, base_key, variants_key, lock_key =\n"
"KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n"
"local entry, ttl, vary, token, channel, message, header_only =\n"
"ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]\n"
"local stored = header_only == '' or not holds_body(entry_key)\n"
"if stored then\n"
"redis.call('set', entry_key, entry, 'px', ttl)\n"
"if vary ~= '' then\n"
"store_vary(entry_key, base_key, variants_key, ttl, vary)\n"
"end\n"
"end\n"
"if token ~= '' then\n"
"release_lock(lock_key, token, channel, message)\n"
"end\n"
"if stored then\n"
"return 1\n"
"end\n"
"return 0\n"
;


/*
 * Made from lua/cache_shared.lua and lua/cache_pieces.lua, in that order,
 * by scripts/lua2c: do not edit.  Edit those files and run "make lua"
 * (t/059-cache-scripts.t checks that they agree).
 * Its comment lines, blank lines and indentation are left out.
 */


static const char  ngx_http_aai_cache_pieces_lua[] =
"local function store_vary(entry_key, base_key, variants_key, ttl, vary)\n"
"local px = tonumber(ttl)\n"
"local vary_px = redis.call('pttl', base_key)\n"
"if vary_px < px then\n"
"vary_px = px\n"
"end\n"
"redis.call('set', base_key, vary, 'px', vary_px)\n"
"redis.call('sadd', variants_key, entry_key)\n"
"if redis.call('pttl', variants_key) < px then\n"
"redis.call('pexpire', variants_key, px)\n"
"end\n"
"end\n"
"local function release_lock(lock_key, token, channel, message)\n"
"if redis.call('get', lock_key) == token then\n"
"redis.call('del', lock_key)\n"
"end\n"
"redis.call('publish', channel, message)\n"
"end\n"
"local entry_key, base_key, variants_key, lock_key, tmp_key =\n"
"KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]\n"
"local length, ttl, vary, token, channel, message =\n"
"ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]\n"
"local stored = redis.call('strlen', tmp_key) == tonumber(length)\n"
"if stored then\n"
"redis.call('rename', tmp_key, entry_key)\n"
"redis.call('pexpire', entry_key, ttl)\n"
"if vary ~= '' then\n"
"store_vary(entry_key, base_key, variants_key, ttl, vary)\n"
"end\n"
"else\n"
"redis.call('del', tmp_key)\n"
"end\n"
"if token ~= '' then\n"
"if not stored then\n"
"message = '0' .. string.sub(message, 2)\n"
"end\n"
"release_lock(lock_key, token, channel, message)\n"
"end\n"
"if stored then\n"
"return 1\n"
"end\n"
"return 0\n"
;

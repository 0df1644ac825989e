-- Copyright (C) aai-nginx authors
--
-- The stampede lock let go without a store by this request's script: the
-- response was not stored, its store in pieces failed, or the SET of the
-- lock had no reply (an orphan) (ngx_http_aai_cache_lock.c and
-- ngx_http_aai_cache_store.c send it with EVAL).  This file is the
-- source: ngx_http_aai_cache_lock_lua.h is made from it by scripts/lua2c
-- (run "make lua" after editing it), and t/059-cache-scripts.t checks
-- that the two agree and runs the script against a real Redis.  The
-- comments are left out of what is sent.
--
-- KEYS[1]  the lock key K ":l"
-- ARGV[1]  the holder's token
-- ARGV[2]  the channel of the lock's waiters
-- ARGV[3]  their message: "0 K:l" (not stored) or "1 K:l" (stored)
--
-- The lock is deleted if it is still the holder's, and the waiters are
-- told in any case (they may wait for a lock that expired).
--
-- Returns 1.

local lock_key = KEYS[1]
local token, channel, message = ARGV[1], ARGV[2], ARGV[3]

if redis.call('get', lock_key) == token then
    redis.call('del', lock_key)
end

redis.call('publish', channel, message)

return 1

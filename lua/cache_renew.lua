-- Copyright (C) aai-nginx authors
--
-- The stampede lock's lease renewed by its holder
-- (ngx_http_aai_cache_lock.c sends it with EVAL, a third of the lease
-- after the lock was taken or last renewed, until the holder lets go or
-- aai_cache_lock_timeout is over).  This file is the source:
-- ngx_http_aai_cache_lock_lua.h is made from it by scripts/lua2c (run
-- "make lua" after editing it), and t/059-cache-scripts.t checks that the
-- two agree and runs the script against a real Redis.  The comments are
-- left out of what is sent.
--
-- KEYS[1]  the lock key K ":l"
-- ARGV[1]  the holder's token
-- ARGV[2]  the lease, in ms
--
-- The lock lives ARGV[2] ms more if it is still the holder's.
--
-- Returns 1 when renewed, 0 when the lock is another's or gone.

local lock_key = KEYS[1]
local token, lease = ARGV[1], ARGV[2]

if redis.call('get', lock_key) == token then
    return redis.call('pexpire', lock_key, lease)
end

return 0

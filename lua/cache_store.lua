-- Copyright (C) aai-nginx authors
--
-- The cache's store of an entry that varies, or whose request holds the
-- update lock (ngx_http_aai_cache_store.c sends it with EVAL on the
-- store client; any other entry small enough for one command is a plain
-- SET PX).  This file is the source: ngx_http_aai_cache_store_lua.h is
-- made from it and cache_shared.lua (store_vary, release_lock), which
-- comes first, by scripts/lua2c (run "make lua" after editing either), and
-- t/059-cache-scripts.t checks that they agree and runs the script
-- against a real Redis.  The comments are left out of what is sent.
--
-- KEYS[1]  the entry key: P H, or P H ":" V for a variant
-- KEYS[2]  the base key P H, where the vary record goes
-- KEYS[3]  the set of the variant keys of H, P H ":v"
-- KEYS[4]  the lock key K ":l" (when no lock is held, the base key: not
--          used)
-- ARGV[1]  the entry
-- ARGV[2]  how long it lives, in ms
-- ARGV[3]  the vary record, or "" when the response does not vary
-- ARGV[4]  the lock's token, or "" when no lock is held
-- ARGV[5]  the channel of the lock's waiters
-- ARGV[6]  their message, "1 K:l"
--
-- The entry is set for ARGV[2] ms.  With a vary record, the record is set
-- on the base key for as long, or for as long as the record there still
-- had to live if that is longer (another variant may need it); the entry
-- key is added to the set of variants, which lives as long as its longest
-- member.  With a token, the lock is deleted if it is still this
-- request's, and the waiters are told in any case.
--
-- Returns 1.

local entry_key, base_key, variants_key, lock_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry, ttl, vary, token, channel, message =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

redis.call('set', entry_key, entry, 'px', ttl)

if vary ~= '' then
    store_vary(entry_key, base_key, variants_key, ttl, vary)
end

if token ~= '' then
    release_lock(lock_key, token, channel, message)
end

return 1

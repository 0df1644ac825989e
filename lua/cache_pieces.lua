-- Copyright (C) aai-nginx authors
--
-- The end of a store in pieces: an entry larger than a piece
-- (NGX_HTTP_AAI_CACHE_PIECE) is written to a temporary key by a SET and
-- SETRANGEs, one command at a time, then this script
-- (ngx_http_aai_cache_store.c sends it with EVAL on the store client)
-- puts it in place if every piece arrived.  This file is the source:
-- ngx_http_aai_cache_store_lua.h is made from it and cache_shared.lua
-- (store_vary, release_lock), which comes first, by scripts/lua2c (run
-- "make lua" after editing either), and t/059-cache-scripts.t checks that
-- they agree and runs the script against a real Redis.  The comments are
-- left out of what is sent.
--
-- KEYS[1]  the entry key: P H, or P H ":" V for a variant
-- KEYS[2]  the base key P H, where the vary record goes
-- KEYS[3]  the set of the variant keys of H, P H ":v"
-- KEYS[4]  the lock key K ":l" (when no lock is held, the base key: not
--          used)
-- KEYS[5]  the temporary key the pieces were written to
-- ARGV[1]  the entry's length, in bytes
-- ARGV[2]  how long it lives, in ms
-- ARGV[3]  the vary record, or "" when the response does not vary
-- ARGV[4]  the lock's token, or "" when no lock is held
-- ARGV[5]  the channel of the lock's waiters
-- ARGV[6]  their message, "1 K:l"
--
-- When the temporary key has the entry's length, it becomes the entry,
-- living ARGV[2] ms, and a vary record is stored as by cache_store.lua;
-- otherwise (a piece was lost, or the key expired) it is deleted.  With a
-- token, the lock is deleted if it is still this request's, and the
-- waiters are told: "1 K:l" when stored, "0 K:l" when not.
--
-- Returns 1 when stored, 0 when not.

local entry_key, base_key, variants_key, lock_key, tmp_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local length, ttl, vary, token, channel, message =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local stored = redis.call('strlen', tmp_key) == tonumber(length)

if stored then
    redis.call('rename', tmp_key, entry_key)
    redis.call('pexpire', entry_key, ttl)

    if vary ~= '' then
        store_vary(entry_key, base_key, variants_key, ttl, vary)
    end

else
    redis.call('del', tmp_key)
end

if token ~= '' then
    if not stored then
        message = '0' .. string.sub(message, 2)
    end

    release_lock(lock_key, token, channel, message)
end

if stored then
    return 1
end

return 0

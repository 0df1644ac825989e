-- Copyright (C) aai-nginx authors
--
-- The cache's store of an entry that varies, whose request holds the
-- update lock, or that is header-only (ngx_http_aai_cache_store.c sends
-- it with EVAL on the store client; any other entry small enough for one
-- command is a plain SET PX).  This file is the source:
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
-- ARGV[1]  the entry
-- ARGV[2]  how long it lives, in ms
-- ARGV[3]  the vary record, or "" when the response does not vary
-- ARGV[4]  the lock's token, or "" when no lock is held
-- ARGV[5]  the channel of the lock's waiters
-- ARGV[6]  their message, "1 K:l"
-- ARGV[7]  "1" when the entry is header-only (the response to a HEAD),
--          "" otherwise
--
-- A header-only entry is not stored over the entry of a whole response:
-- a GET forwarded at the same time as the HEAD may have stored it, and
-- the GETs that follow would miss.  Otherwise the entry is set for
-- ARGV[2] ms.  With a vary record, the record is set on the base key for
-- as long, or for as long as the record there still had to live if that
-- is longer (another variant may need it); the entry key is added to the
-- set of variants, which lives as long as its longest member.  With a
-- token, the lock is deleted if it is still this request's, and the
-- waiters are told in any case.
--
-- Returns 1 when stored, 0 when a whole response's entry was kept.

-- Whether entry_key holds the entry of a whole response, not a HEAD's
-- header-only one (ngx_aai_cache_entry.h: the magic "AAIC", version 1,
-- type 'E', and bit 0 of the flags clear).  Only its first 8 bytes are
-- read.

local function holds_body(entry_key)
    local head = redis.call('getrange', entry_key, 0, 7)

    return #head == 8 and string.sub(head, 1, 4) == 'AAIC'
           and string.byte(head, 5) == 1 and string.sub(head, 6, 6) == 'E'
           and string.byte(head, 8) % 2 == 0
end

local entry_key, base_key, variants_key, lock_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry, ttl, vary, token, channel, message, header_only =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]

local stored = header_only == '' or not holds_body(entry_key)

if stored then
    redis.call('set', entry_key, entry, 'px', ttl)

    if vary ~= '' then
        store_vary(entry_key, base_key, variants_key, ttl, vary)
    end
end

if token ~= '' then
    release_lock(lock_key, token, channel, message)
end

if stored then
    return 1
end

return 0

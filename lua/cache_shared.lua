-- Copyright (C) aai-nginx authors
--
-- What the two ends of a store share (cache_store.lua and
-- cache_pieces.lua): "make lua" puts this file before each of them, so
-- that the script the module sends is this file and then the other (see
-- the Makefile's lua target; t/059-cache-scripts.t checks the headers).
-- Local functions only: it runs nothing by itself.  The comments are left
-- out of what is sent.

-- The vary record of a variant's entry (entry_key, living ttl ms): the
-- record is set on base_key for as long, or for as long as the record
-- there still had to live if that is longer (another variant may need
-- it); the entry key is added to the set of variants (variants_key),
-- which lives as long as its longest member.

local function store_vary(entry_key, base_key, variants_key, ttl, vary)
    local px = tonumber(ttl)
    local vary_px = redis.call('pttl', base_key)

    if vary_px < px then
        vary_px = px
    end

    redis.call('set', base_key, vary, 'px', vary_px)
    redis.call('sadd', variants_key, entry_key)

    if redis.call('pttl', variants_key) < px then
        redis.call('pexpire', variants_key, px)
    end
end

-- The end of the update lock: lock_key is deleted if it is still this
-- request's (its value is token), and the waiters are told in any case
-- (message on channel).

local function release_lock(lock_key, token, channel, message)
    if redis.call('get', lock_key) == token then
        redis.call('del', lock_key)
    end

    redis.call('publish', channel, message)
end

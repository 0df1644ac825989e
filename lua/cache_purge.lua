-- Copyright (C) aai-nginx authors
--
-- Entries deleted with all their variants: by a request to an
-- aai_cache_purge location (one base key per cached method), and after a
-- successful unsafe request (the keys of its URI, Location and
-- Content-Location) (ngx_http_aai_cache_purge.c sends it with EVAL; on a
-- Redis Cluster, keys of several slots are sent once per slot and the
-- replies added up).  This file is the source:
-- ngx_http_aai_cache_purge_lua.h is made from it by scripts/lua2c (run
-- "make lua" after editing it), and t/059-cache-scripts.t checks that the
-- two agree and runs the script against a real Redis.  The comments are
-- left out of what is sent.
--
-- KEYS     the base keys P H
-- ARGV     none
--
-- For each base key: every variant named in its set P H ":v", the base
-- key itself (an entry, or a vary record), and the set are deleted.
--
-- Returns the number of keys deleted, the sets not counted: the entries
-- and vary records.

local deleted = 0

for i = 1, #KEYS do
    local base_key = KEYS[i]
    local variants_key = base_key .. ':v'
    local variants = redis.call('smembers', variants_key)

    for j = 1, #variants do
        deleted = deleted + redis.call('del', variants[j])
    end

    deleted = deleted + redis.call('del', base_key)
    redis.call('del', variants_key)
end

return deleted

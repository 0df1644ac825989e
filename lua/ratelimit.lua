-- Copyright (C) aai-nginx authors
--
-- The rate limiter's check of a batch (ngx_http_aai_ratelimit_batch.c calls
-- it with FCALL, a function of the library made of this file and
-- lua/ratelimit_library.lua; where Redis refuses functions, with EVALSHA,
-- or EVAL after NOSCRIPT).  This file is the source:
-- ngx_http_aai_ratelimit_lua.h is made from it by scripts/lua2c (run
-- "make lua" after editing it), and t/029-ratelimit-scripts.t checks that
-- the two agree and runs the script against a real Redis.
--
-- The check of all the requests of a batch, zone after zone, atomic in
-- Redis, as if each were checked alone at the same instant, the batch's
-- TIME: two requests of one key in one batch are simultaneous (so a GCRA
-- zone without burst admits one of them, as limit_req does within a
-- millisecond).
--
-- KEYS: the distinct keys of the batch.  ARGV[1]: the layout, a byte
-- string: per request its number of zones, then per zone its definition
-- (1-based, below) and its key (two bytes, 1-based, high bit set when
-- other zones of the batch share the key); ARGV[2]: "1" to drop every
-- expired entry seen; then per definition: algorithm (0 sliding, 1 gcra,
-- 2 counter), limit, window (us), burst, the excess served without delay.
--
-- count=, cost=, charge=, dry_run and concurrency= (ngx_http_aai_ratelimit
-- _ai.c): ARGV[2] "2" or "3" (trim) says each definition has a sixth
-- argument, its cost, the units a request spends, followed by "s" for a
-- shadow zone (its rejection rejects nothing and records nothing) or "n"
-- (a shadow zone that never records); the rest of ARGV[2] is the prefix of
-- the batch's lease names.  A request of 0 zones is a charge: its
-- definition (the cost is the amount) and its key follow, and it is added
-- to the key, checked by nothing and answered by nothing.  Algorithm 3 is
-- concurrency=: a sorted set of leases scored with their expiry (us); the
-- limit is N, the window the lease time.  A request of 0 zones and
-- definition 0 is the release of a lease (of a request of an earlier
-- batch, ended): its key, then a byte, the length of the lease's name, and
-- the name; it is removed, answered by nothing.  Charges and releases come
-- before the batch's requests.
--
-- A sliding window key is a list of admission times (us), oldest first:
-- an admission is never earlier than the last one (it is the batch's TIME,
-- or for a delayed request the time the l-th newest leaves the window,
-- later than any admission so far), so the list stays in order without
-- sorting.  The expired entries are at its head: the oldest four are read
-- (LRANGE; when all four are expired, a binary search by LINDEX finds the
-- first live one, so a long expired head costs O(log n) commands), counted
-- out, and dropped once two or more are (LTRIM).  The newest is LINDEX -1,
-- and the one whose leaving admits the next request LINDEX -limit.  In a
-- list Redis keeps a few bytes per entry, packed, where a sorted set costs
-- a hash entry and a skip list node.
--
-- A key of a zone without burst lives 1.5 windows from its last PEXPIRE,
-- which an admission skips when nothing was dropped and the oldest entry
-- is less than half a window old: the admission that last set the TTL is
-- then in the list (an entry leaves it only by being dropped, and a key
-- drops entries without a PEXPIRE only when it rejects by itself, which
-- needs "limit" entries newer than that one), not older than the oldest,
-- so the key outlives its newest entry by a window.
--
-- A GCRA key is a string: the theoretical arrival time (us) of the next
-- request.
--
-- A GCRA request of an unshared key, admitted whenever that time has
-- passed (its cost within the burst), writes its own at once, the old one
-- returned by the same command (SET ... GET): one command when the
-- traffic is under the rate.  When the old time has not passed, the key is
-- written again (admitted) or given back its old time (rejected).
--
-- A counter key is a string of three big-endian signed 64-bit integers
-- (24 bytes): the start (us) of the fixed window it counts, its count,
-- and the count of the window before.  A request is admitted when its
-- count, plus one, plus the previous count weighted by the part of the
-- previous window still inside the sliding window, is at most the limit.
-- One BITFIELD reads the start and the previous count and adds the
-- request's cost to the count, so an admission in the key's window is one
-- command; the key is written whole (SET ... PX) when it held another
-- window (the first request of a window, once per key) or another format,
-- and the cost is taken back (BITFIELD INCRBY -cost) when the request is
-- rejected.  A start is under 2^53, so the key's first byte is 0: any
-- other string (a GCRA number, the text "c<start>:<count>:<previous>" of
-- releases before 2026-12-07) begins with another byte, reads as a start
-- that is no window, and counts as empty, as a list or another type does.
--
-- A request is decided in every zone first (a rejection records nothing),
-- then recorded.  A key used once in the batch, of a sliding zone without
-- burst, gets the request's admission at once (RPUSH, whose reply counts
-- the list), taken back (RPOP) when the request is rejected.  The work of
-- a key shared in the batch is done once: its state is read once, and its
-- admissions are written once at the end.
--
-- Returns per request: -1 and per zone rejected, delay ms, remaining,
-- reset ms, retry after ms, when a zone rejects or delays; else
-- remaining for one sliding zone without burst with an unshared key
-- (reset: the window); else remaining and reset for one zone; else the
-- most restrictive zone (1-based), its remaining and its reset.  Delays
-- are rounded down to milliseconds, as limit_req does: the requests of a
-- batch share one instant, and waits shorter than a millisecond between
-- them are none.
--
-- The Lua of Redis is slow per operation: the common requests take short
-- paths, and every string the Redis commands need is made once.  Every
-- name below is a local (a register): long names cost nothing.

-- lua/ratelimit_library.lua registers check (below) in a Redis 7 function
-- library (FUNCTION LOAD, FCALL), whose top-level code runs once, at
-- load: the helpers, their closures and the tables below are made then,
-- and a call only reads its arguments and decides.  Sent with EVAL, the
-- file's last line calls check.  The top-level code of a library sees
-- nothing but redis.register_function and redis.log: the functions of
-- Redis and Lua the helpers use are fetched at each call (by globals(),
-- made before the locals that take their names), as is the batch's time.

local function globals()
  return redis.call, redis.pcall, string.byte, string.format, math.ceil,
         math.floor, type, tonumber, string.match, struct.pack
end

local call, pcall, byte, fmt, ceil, floor, type, tonumber, match, pack

local SLIDING, GCRA, COUNTER, CONCURRENCY = 0, 1, 2, 3   -- the algorithms

-- per call: the batch's time (us, and as text), its keys, whether to drop
-- every expired entry seen, and the prefix of its leases

local now, now_str, keys, trim, lease_prefix

-- per zone definition, from ARGV, and what is derived from it once

local def_alg, def_limit, def_window, def_burst, def_delay =
      {}, {}, {}, {}, {}
local def_cost, def_shadow = {}, {}
local def_cutoff, def_sliding_ttl, def_window_ttl, def_window_ms,
      def_half_ago = {}, {}, {}, {}, {}
local def_counter_start, def_counter_before, def_counter_weight,
      def_counter_ttl = {}, {}, {}, {}
local def_cost_str, def_gcra_at, def_gcra_at_str, def_gcra_ttl =
      {}, {}, {}, {}
local def_gcra_left, def_gcra_reset = {}, {}

-- a definition's number from its text, the texts seen last kept (256 at
-- most): a call reads the same few definitions as the one before, and
-- tonumber's strtod is dear

local numbers, nnumbers = {}, 0

local function number(s)
  local n = numbers[s]
  if n == nil then
    n = tonumber(s)
    if nnumbers >= 256 then numbers, nnumbers = {}, 0 end
    numbers[s], nnumbers = n, nnumbers + 1
  end
  return n
end

-- the batch's time and definitions, from ARGV

local function read_definitions(argv)
  if redis.replicate_commands then redis.replicate_commands() end
  if not call then
    -- once per library (a function library's closures outlive a call)
    call, pcall, byte, fmt, ceil, floor, type, tonumber, match, pack =
      globals()
  end

  local time = call('TIME')
  now = time[1] * 1000000 + time[2]
  now_str = fmt('%d', now)

  local flag = string.sub(argv[2], 1, 1)
  lease_prefix = string.sub(argv[2], 2)
  trim = flag == '1' or flag == '3'

  local nargs, ndefs = flag >= '2' and 6 or 5, 0

  for j = 3, #argv, nargs do
    ndefs = ndefs + 1
    def_gcra_at[ndefs], def_gcra_left[ndefs] = nil, nil
    def_alg[ndefs] = number(argv[j])
    def_limit[ndefs] = number(argv[j + 1])
    def_window[ndefs] = number(argv[j + 2])
    def_burst[ndefs] = number(argv[j + 3])
    def_delay[ndefs] = number(argv[j + 4])
    def_cost[ndefs], def_shadow[ndefs], def_cost_str[ndefs] = 1, '', '1'
    if nargs == 6 then
      local cost, shadow = match(argv[j + 5], '^(%d+)(%a?)$')
      def_cost[ndefs], def_shadow[ndefs] = tonumber(cost), shadow
      def_cost_str[ndefs] = cost
    end

    if def_alg[ndefs] == SLIDING or def_alg[ndefs] == CONCURRENCY then
      -- a sliding window entry at or before this time has expired
      def_cutoff[ndefs] = now - def_window[ndefs]
      def_window_ms[ndefs] = ceil(def_window[ndefs] / 1000)
      def_window_ttl[ndefs] = fmt('%d', def_window_ms[ndefs] + 1)
      def_sliding_ttl[ndefs] = fmt('%d',
                                   ceil(def_window[ndefs] * 1.5 / 1000) + 1)
      def_half_ago[ndefs] = now - def_window[ndefs] / 2

    elseif def_alg[ndefs] == COUNTER then
      -- the fixed window now is in, and the part of the previous one still
      -- inside the sliding window
      def_counter_start[ndefs] = floor(now / def_window[ndefs])
                                 * def_window[ndefs]
      def_counter_before[ndefs] = def_counter_start[ndefs]
                                  - def_window[ndefs]
      def_counter_weight[ndefs] = (def_counter_start[ndefs]
                                   + def_window[ndefs] - now)
                                  / def_window[ndefs]
      def_counter_ttl[ndefs] =
        fmt('%d', ceil((def_counter_start[ndefs] + 2 * def_window[ndefs]
                        - now) / 1000) + 1)

    elseif def_alg[ndefs] == GCRA and def_cost[ndefs] > 0
           and def_cost[ndefs] <= def_burst[ndefs] + 1
    then
      -- the time a request writes when the key's time has passed, and its
      -- TTL (a cost within the burst: such a request is admitted)
      local period = def_window[ndefs] / def_limit[ndefs]
      local at = now + def_cost[ndefs] * period
      def_gcra_at[ndefs], def_gcra_at_str[ndefs] = at, fmt('%d', at)
      def_gcra_ttl[ndefs] = fmt('%d', ceil((at - now) / 1000) + 1)
      -- and its reply (remaining, reset) when admitted and not delayed,
      -- computed as below
      local last_tat = now + (def_cost[ndefs] - 1) * period
      local wait = last_tat - now - def_delay[ndefs] * period
      if last_tat - now <= def_burst[ndefs] * period
         and floor(wait / 1000) <= 0
      then
        local left = floor((def_burst[ndefs] * period - (last_tat - now))
                           / period)
        def_gcra_left[ndefs] = left > 0 and left or 0
        def_gcra_reset[ndefs] = ceil((at - now) / 1000)
      end
    end
  end
end

-- Sliding window: the number of expired entries at the head of a list of
-- len entries, dropped (the whole key when all are), and its oldest entry.

local function drop_expired(key, def, len)
  local cutoff = def_cutoff[def]
  -- the bounds as text: Redis formats a Lua number at every call
  local head = call('LRANGE', key, '0', '3')
  local lo, hi = 1, #head + 1

  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if tonumber(head[mid]) > cutoff then hi = mid else lo = mid + 1 end
  end

  local expired = lo - 1

  if expired == #head and expired < len then
    -- the four oldest have all expired: search the rest of the list
    lo, hi = expired, len
    while lo < hi do
      local mid = floor((lo + hi) / 2)
      if tonumber(call('LINDEX', key, mid)) > cutoff then
        hi = mid
      else
        lo = mid + 1
      end
    end
    expired = lo
  end

  if expired >= len then
    call('DEL', key)
  elseif expired >= 2 or (trim and expired > 0) then
    call('LTRIM', key, expired, -1)
  end

  return expired, head[1]
end

-- A key's state: the live entries of a sliding window list, or the
-- number a GCRA key holds; a key of another type is dropped, as empty.

local function read_state(key, def)
  if def_alg[def] == SLIDING then
    local len = pcall('LLEN', key)
    if type(len) == 'number' then
      if len == 0 then return 0 end
      return len - drop_expired(key, def, len)
    end
  elseif def_alg[def] == CONCURRENCY then
    -- concurrency=: the expired leases (of instances gone) dropped, the
    -- live ones counted
    local n = pcall('ZREMRANGEBYSCORE', key, '-inf', now_str)
    if type(n) == 'number' then return call('ZCARD', key) end
  else
    local value = pcall('GET', key)
    if type(value) ~= 'table' then return tonumber(value) or 0 end
  end
  call('DEL', key)
  return 0
end

-- Sliding window without burst, unshared key: the admission at once.
-- Returns the live entries before it, whether it stays (it is taken back
-- when over the limit), and whether the key's TTL needs no PEXPIRE.

local function admit_now(key, def)
  local len = pcall('RPUSH', key, now_str)
  if type(len) ~= 'number' then
    call('DEL', key)
    len = call('RPUSH', key, now_str)
  end

  local count, ttl_fresh = len - 1, false

  if count > 0 then
    local expired, oldest = drop_expired(key, def, len)
    count = count - expired
    ttl_fresh = expired == 0 and tonumber(oldest) > def_half_ago[def]
  end

  if count < def_limit[def] then return count, true, ttl_fresh end

  call('RPOP', key)
  return count, false, ttl_fresh
end

-- Sliding window: the newest admission of a key with count live entries.

local function newest(key, count)
  if count == 0 then return now end
  return tonumber(call('LINDEX', key, -1))
end

-- Counter: the count of the current window and of the previous one, and
-- whether the key holds the current window.  With add, the definition's
-- cost is added to the key's count in the same command (it stands when
-- the key held the current window: the count returned is the one before).

local function counter_get(key, def, add)
  local f
  if add then
    f = pcall('BITFIELD', key, 'GET', 'i64', '0',
              'INCRBY', 'i64', '64', def_cost_str[def], 'GET', 'i64', '128')
  else
    f = pcall('BITFIELD', key, 'GET', 'i64', '0', 'GET', 'i64', '64',
              'GET', 'i64', '128')
  end

  local start = f[1]
  if start == def_counter_start[def] then
    return f[2] - (add and def_cost[def] or 0), f[3], true
  elseif start == def_counter_before[def] then
    return 0, f[2] - (add and def_cost[def] or 0), false
  end
  return 0, 0, false
end

-- Counter: the decision on a request of units (a cost of 0 checks for
-- one) given the two counts: rejected (1 or 0), remaining, reset and retry
-- after (us).

local function counter_decide(def, count, prev, units)
  local limit, window = def_limit[def], def_window[def]
  local start = def_counter_start[def]
  local weighted = count + prev * def_counter_weight[def]

  if weighted + units <= limit then
    return 0, floor(limit - weighted - units), start + 2 * window - now, 0
  elseif units > limit then
    return 1, 0, start + 2 * window - now, window
  elseif count + units - 1 < limit then
    local reset = start + window - now
    if count > 0 then reset = reset + window end
    return 1, 0, reset,
           start + window - (limit - count - units) * window / prev - now
  end
  return 1, 0, start + 2 * window - now,
         start + 2 * window - (limit - units) * window / count - now
end

-- Counter: the key written whole, in the current window.

local function counter_set(key, def, count, prev)
  call('SET', key, pack('>i8i8i8', def_counter_start[def], count, prev),
       'PX', def_counter_ttl[def])
end

-- Counter: what counter_get(key, def, true) added taken back, the key
-- left as the request found it (in the current window).

local function counter_undo(key, def, count, prev, current)
  if current then
    if def_cost[def] > 0 then
      call('BITFIELD', key, 'INCRBY', 'i64', '64', -def_cost[def])
    end
  elseif count + prev > 0 then
    counter_set(key, def, count, prev)
  else
    call('DEL', key)
  end
end

-- GCRA, an unshared key: the request's time written at once, as if the
-- key's time had passed; returns the key's old time (0 for none).

local function gcra_guess(key, def)
  local at, ttl = def_gcra_at_str[def], def_gcra_ttl[def]
  local old = pcall('SET', key, at, 'PX', ttl, 'GET')
  if type(old) == 'table' then
    -- another type
    call('SET', key, at, 'PX', ttl)
    return 0
  end
  return tonumber(old) or 0
end

-- GCRA: the key given back the old time gcra_guess returned.

local function gcra_undo(key, old)
  if old > now then
    call('SET', key, fmt('%d', old), 'PX', ceil((old - now) / 1000) + 1)
  else
    call('DEL', key)
  end
end

-- Sliding window: a key's TTL (ms), 1.5 windows without burst.

local function set_ttl(key, def, ttl)
  if def_burst[def] == 0 then
    ttl = def_sliding_ttl[def]
  elseif ttl == def_window_ms[def] + 1 then
    ttl = def_window_ttl[def]
  end
  call('PEXPIRE', key, ttl)
end

-- Per key shared by zones of the batch (by its index in KEYS): its state
-- (live entries, GCRA time, counter count), the admissions at now and
-- later not yet written, the TTL to set, its definition, and a counter's
-- previous count.

local shared_state, shared_now, shared_later, shared_ttl, shared_def,
      shared_prev = {}, {}, {}, {}, {}, {}

-- Sliding window: the admissions of a shared key written, in order.

local function flush_admissions(k)
  local at_now, later = shared_now[k], shared_later[k]
  local n = at_now + (later and #later or 0)
  if n == 0 then return end

  local entries = {}
  for i = 1, n do
    entries[i] = i <= at_now and now_str or fmt('%d', later[i - at_now])
  end

  for i = 1, n, 1000 do
    call('RPUSH', keys[k], unpack(entries, i, math.min(i + 999, n)))
  end

  shared_state[k] = shared_state[k] + n
  shared_now[k], shared_later[k] = 0, nil
end


-- pushes n copies of value, 1000 at a time
local function push_many(key, value, n)
  local entries = {}
  for i = 1, math.min(n, 1000) do entries[i] = value end
  while n > 0 do
    local m = math.min(n, 1000)
    call('RPUSH', key, unpack(entries, 1, m))
    n = n - m
  end
end


-- a charge (charge=): the definition's cost added to the key, after the
-- newest admission for a sliding window
local function charge(def, hi, lo)
  local amount, k, shared = def_cost[def], hi * 256 + lo, hi >= 128
  if shared then k = k - 32768 end
  local key = keys[k]
  if amount <= 0 or def_alg[def] == CONCURRENCY then return end

  if shared and shared_state[k] == nil then
    if def_alg[def] == COUNTER then
      shared_state[k], shared_prev[k] = counter_get(key, def)
    else
      shared_state[k] = read_state(key, def)
    end
    shared_now[k], shared_ttl[k], shared_def[k] = 0, 0, def
  end

  if def_alg[def] == SLIDING then
    if shared then flush_admissions(k) end
    local at, last = now, pcall('LINDEX', key, -1)
    if type(last) == 'table' then
      call('DEL', key)
    elseif last then
      last = tonumber(last)
      if last and last > now then at = last end
    end
    push_many(key, fmt('%d', at), amount)
    if shared then shared_state[k] = shared_state[k] + amount end
    set_ttl(key, def, ceil((at - now) / 1000) + def_window_ms[def] + 1)

  elseif def_alg[def] == COUNTER then
    if shared then
      shared_state[k] = shared_state[k] + amount
      if shared_ttl[k] == 0 then shared_ttl[k] = 1 end
    else
      local count, prev, current = counter_get(key, def, true)
      if not current then counter_set(key, def, count + amount, prev) end
    end

  else
    local tat
    if shared then
      tat = shared_state[k]
    else
      local value = pcall('GET', key)
      tat = type(value) == 'string' and tonumber(value) or 0
    end
    if tat < now then tat = now end
    tat = tat + amount * def_window[def] / def_limit[def]
    local ttl = ceil((tat - now) / 1000) + 1
    if shared then
      shared_state[k] = tat
      if ttl > shared_ttl[k] then shared_ttl[k] = ttl end
    else
      call('SET', key, fmt('%d', tat), 'PX', ttl)
    end
  end
end

-- a release (concurrency=): the lease taken out of the key's sorted set,
-- and out of the count of a key the batch shares

local function release(hi, lo, name)
  local k, shared = hi * 256 + lo, hi >= 128
  if shared then k = k - 32768 end
  local n = pcall('ZREM', keys[k], name)
  if shared and type(n) == 'number' and shared_state[k] then
    shared_state[k] = shared_state[k] - n
  end
end

-- per zone of the request being checked: its key (the index in KEYS,
-- negative when unshared), definition, admission time, reset, the five
-- values of the long reply, whether its admission is already pushed
-- (sliding), added (counter) or written (GCRA: the old time), a counter's
-- counts and whether its key held the current window, and whether its TTL
-- needs no PEXPIRE

local zone_key, zone_def, zone_at, zone_reset, zone_values =
      {}, {}, {}, {}, {}
local zone_pushed, zone_count, zone_prev, zone_ttl_fresh = {}, {}, {}, {}
local zone_current, zone_old = {}, {}
local zone_reject = {}

-- the check of a batch: its reply, a flat array (above)

local function check(KEYS, ARGV)
  read_definitions(ARGV)
  keys = KEYS

  if next(shared_def) then
    -- a call that failed left the last one's shared keys
    shared_state, shared_now, shared_later, shared_ttl, shared_def,
      shared_prev = {}, {}, {}, {}, {}, {}
  end

  local layout = ARGV[1]
  local pos, nout, layout_len, out = 1, 0, #layout, {}
  local request_index = 0


  while pos <= layout_len do
    local nzones, def, hi, lo = byte(layout, pos, pos + 3)
    local count

    if nzones > 0 then request_index = request_index + 1 end

    -- a request of no zones is a charge= usage, or with definition 0 the
    -- release of a lease, answered by nothing
    if nzones == 0 and def == 0 then
      local len = byte(layout, pos + 4)
      release(hi, lo, string.sub(layout, pos + 5, pos + 4 + len))
      pos = pos + 5 + len
    elseif nzones == 0 then
      charge(def, hi, lo)
      pos = pos + 4
    end

    -- the short path: one zone, sliding without burst, unshared key, a cost
    -- of 1 and not a shadow zone

    if nzones == 1 and hi < 128 and def_alg[def] == SLIDING
       and def_burst[def] == 0 and def_cost[def] == 1
       and def_shadow[def] == ''
    then
      local key, admitted, ttl_fresh = KEYS[hi * 256 + lo], nil, nil
      count, admitted, ttl_fresh = admit_now(key, def)
      if admitted then
        nout = nout + 1
        out[nout] = def_limit[def] - count - 1
        if not ttl_fresh then set_ttl(key, def, 0) end
        pos = pos + 4
        nzones = 0
      end

    -- one counter zone, unshared key, not a shadow zone: decided and
    -- answered here

    elseif nzones == 1 and hi < 128 and def_alg[def] == COUNTER
           and def_shadow[def] == ''
    then
      local key, cost = KEYS[hi * 256 + lo], def_cost[def]
      local prev, current, reject, left, reset, retry
      count, prev, current = counter_get(key, def, true)
      reject, left, reset, retry =
        counter_decide(def, count, prev, cost > 0 and cost or 1)
      if reject == 0 then
        if not current then counter_set(key, def, count + cost, prev) end
        out[nout + 1], out[nout + 2] = left, ceil(reset / 1000)
        nout = nout + 2
      else
        counter_undo(key, def, count, prev, current)
        out[nout + 1], out[nout + 2], out[nout + 3] = -1, 1, 0
        out[nout + 4], out[nout + 5] = 0, ceil(reset / 1000)
        out[nout + 6] = ceil(retry / 1000)
        nout = nout + 6
      end
      pos = pos + 4
      nzones = 0

    -- one GCRA zone, unshared key, whose time has passed: admitted (a time
    -- not passed goes on below, with the old time as the key's state)

    elseif nzones == 1 and hi < 128 and def_gcra_at[def]
           and def_shadow[def] == ''
    then
      count = gcra_guess(KEYS[hi * 256 + lo], def)
      if count <= now and def_gcra_left[def] then
        out[nout + 1] = def_gcra_left[def]
        out[nout + 2] = def_gcra_reset[def]
        nout = nout + 2
        pos = pos + 4
        nzones = 0
      end
    end

    if nzones > 0 then
      pos = pos + 1

      local rejected, detailed = false, false
      local top, top_left, top_reset = 0, 0, 0

      -- decide in every zone

      for i = 1, nzones do
        local def, hi, lo = byte(layout, pos, pos + 2)
        pos = pos + 3

        local k, key = hi * 256 + lo, nil
        zone_pushed[i], zone_ttl_fresh[i], zone_old[i] = false, false, nil

        if hi >= 128 then
          k = k - 32768
          key = KEYS[k]
          if shared_state[k] == nil then
            if def_alg[def] == COUNTER then
              shared_state[k], shared_prev[k] = counter_get(key, def)
            else
              shared_state[k] = read_state(key, def)
            end
            shared_now[k], shared_ttl[k], shared_def[k] = 0, 0, def
          end
          count = shared_state[k]

        else
          key = KEYS[k]
          k = -k
          -- (a request that took the short path and was over the limit
          -- keeps the count it got there)
          if nzones > 1 or count == nil then
            if def_alg[def] == SLIDING and def_burst[def] == 0
               and def_cost[def] == 1 and def_shadow[def] == ''
            then
              count, zone_pushed[i], zone_ttl_fresh[i] = admit_now(key, def)
            elseif def_alg[def] == COUNTER then
              -- the cost added at once, unless the zone never records
              zone_pushed[i] = def_shadow[def] ~= 'n'
              count, zone_prev[i], zone_current[i] =
                counter_get(key, def, zone_pushed[i])
            elseif def_gcra_at[def] and def_shadow[def] == '' then
              count = gcra_guess(key, def)
              zone_old[i] = count
            else
              count = read_state(key, def)
            end
          elseif def_alg[def] == GCRA then
            zone_old[i] = count            -- the short path wrote the key
          end
        end

        local limit, window, burst = def_limit[def], def_window[def],
                                     def_burst[def]
        local cost = def_cost[def]
        local units = cost > 0 and cost or 1     -- a cost of 0 checks for 1
        local reject, wait, left, reset, retry, at = 0, 0, 0, 0, 0, now

        if def_alg[def] == SLIDING then
          if k > 0 then
            count = count + shared_now[k]
                    + (shared_later[k] and #shared_later[k] or 0)
          end

          local last_unit = count + units - 1

          if last_unit < limit and burst == 0 then
            left, reset = limit - last_unit - 1, window

          else
            if k > 0 then flush_admissions(k) end
            local last = newest(key, count)

            if last_unit < limit then
              left = limit - last_unit - 1
              reset = (last > now and last or now) + window - now

            elseif units > limit then
              reject, retry, reset = 1, window, last + window - now

            else
              -- admitted when the (limit - units + 1)-th newest leaves the
              -- window
              local excess = last_unit - limit + 1
              at = tonumber(call('LINDEX', key, units - limit - 1)) + window

              if excess > burst then
                reject, retry = 1, at - now
                reset = last + window - now
              else
                if excess > def_delay[def] then wait = at - now end
                reset = (last > at and last or at) + window - now
              end
            end
          end

        elseif def_alg[def] == COUNTER then
          local prev = k > 0 and shared_prev[k] or zone_prev[i]
          zone_count[i] = count
          reject, left, reset, retry =
            counter_decide(def, count, prev, units)

        elseif def_alg[def] == CONCURRENCY then
          -- count is the live leases; at the limit the request is retried
          -- when the oldest expires (1 s at least)
          if count < limit then
            left, reset = limit - count - 1, window
          else
            local oldest = call('ZRANGE', key, 0, 0, 'WITHSCORES')
            retry = oldest[2] and tonumber(oldest[2]) - now or window
            if retry < 1000 then retry = 1000 end
            reject, reset = 1, retry
          end

        else
          -- GCRA: count is the theoretical arrival time
          local period = window / limit
          local tat = count > now and count or now
          local last_tat = tat + (units - 1) * period

          if last_tat - now > burst * period then
            reject, retry, reset = 1, last_tat - now - burst * period,
                                   tat - now
          else
            wait = last_tat - now - def_delay[def] * period
            if wait < 0 then wait = 0 end
            at = tat + cost * period
            reset = at - now
            left = floor((burst * period - (last_tat - now)) / period)
            if left < 0 then left = 0 end
          end
        end

        reset = ceil(reset / 1000)
        wait = floor(wait / 1000)

        zone_reject[i] = reject

        -- a shadow zone's rejection is in its values, and rejects nothing
        if reject == 1 then
          rejected = rejected or def_shadow[def] == ''
          detailed, retry = true, ceil(retry / 1000)
        elseif wait > 0 then
          detailed = true
        end

        zone_key[i], zone_def[i] = k, def
        zone_at[i], zone_reset[i] = at, reset

        if nzones > 1 or detailed then
          local v = 5 * i
          zone_values[v - 4], zone_values[v - 3] = reject, wait
          zone_values[v - 2], zone_values[v - 1] = left, reset
          zone_values[v] = retry
        end

        -- the most restrictive zone, shadow zones left out
        if def_shadow[def] == ''
           and (top == 0 or left < top_left
                or (left == top_left and reset > top_reset))
        then
          top, top_left, top_reset = i, left, reset
        end
      end

      if top == 0 then top = 1 end               -- every zone a shadow one

      -- the reply

      if detailed then
        out[nout + 1] = -1
        for i = 1, 5 * nzones do out[nout + 1 + i] = zone_values[i] end
        nout = nout + 1 + 5 * nzones
      elseif nzones == 1 then
        out[nout + 1], out[nout + 2] = top_left, top_reset
        nout = nout + 2
      else
        out[nout + 1], out[nout + 2] = top, top_left
        out[nout + 3] = top_reset
        nout = nout + 3
      end

      -- then record: a rejected request takes back what it pushed, added
      -- or wrote

      if rejected then
        for i = 1, nzones do
          local def = zone_def[i]
          if zone_pushed[i] and def_alg[def] == COUNTER then
            counter_undo(KEYS[-zone_key[i]], def, zone_count[i],
                         zone_prev[i], zone_current[i])
          elseif zone_pushed[i] then
            call('RPOP', KEYS[-zone_key[i]])
            if not zone_ttl_fresh[i] then
              set_ttl(KEYS[-zone_key[i]], def, 0)
            end
          elseif zone_old[i] then
            gcra_undo(KEYS[-zone_key[i]], zone_old[i])
          end
        end

      else
        for i = 1, nzones do
          local k, def, at = zone_key[i], zone_def[i], zone_at[i]
          local ttl = zone_reset[i] + 1
          local cost = def_cost[def]

          if def_shadow[def] == 'n'
             or (def_shadow[def] == 's' and zone_reject[i] == 1)
          then
            -- a shadow zone records nothing it would have rejected
            if zone_pushed[i] and def_alg[def] == COUNTER then
              counter_undo(KEYS[-k], def, zone_count[i], zone_prev[i],
                           zone_current[i])
            end

          elseif def_alg[def] == CONCURRENCY then
            -- the request's lease: "<prefix><n>", n its place among the
            -- batch's requests, expiring after the lease time unless
            -- renewed
            local key = KEYS[k > 0 and k or -k]
            call('ZADD', key, fmt('%d', now + def_window[def]),
                 lease_prefix .. request_index)
            call('PEXPIRE', key, def_window_ttl[def])
            if k > 0 then shared_state[k] = shared_state[k] + 1 end

          elseif k > 0 then
            -- a shared key: written once, at the end; a cost of N is N
            -- admissions (N entries, N periods, N counts)
            if def_alg[def] == GCRA then
              shared_state[k] = at
            elseif def_alg[def] == COUNTER then
              shared_state[k] = shared_state[k] + cost
            elseif at == now then
              shared_now[k] = shared_now[k] + cost
            elseif cost > 0 then
              local later = shared_later[k]
              if later == nil then later = {}; shared_later[k] = later end
              for _ = 1, cost do later[#later + 1] = at end
            end
            if ttl > shared_ttl[k] then shared_ttl[k] = ttl end

          else
            local key = KEYS[-k]
            if def_alg[def] == SLIDING then
              if not zone_pushed[i] and cost > 0 then
                push_many(key, at == now and now_str or fmt('%d', at), cost)
              end
              if not zone_ttl_fresh[i] then set_ttl(key, def, ttl) end
            elseif def_alg[def] == COUNTER then
              if not (zone_pushed[i] and zone_current[i]) then
                counter_set(key, def, zone_count[i] + cost, zone_prev[i])
              end
            elseif zone_old[i] == nil or zone_old[i] > now then
              -- (a GCRA key whose old time had passed holds this one)
              call('SET', key, fmt('%d', at), 'PX', ttl)
            end
          end
        end
      end
    end
  end

  -- the shared keys' admissions

  for k, def in pairs(shared_def) do
    if shared_ttl[k] > 0 then
      if def_alg[def] == SLIDING then
        flush_admissions(k)
        set_ttl(KEYS[k], def, shared_ttl[k])
      elseif def_alg[def] == COUNTER then
        counter_set(KEYS[k], def, shared_state[k], shared_prev[k])
      else
        call('SET', KEYS[k], fmt('%d', shared_state[k]), 'PX',
             shared_ttl[k])
      end
    elseif def_alg[def] == SLIDING and def_burst[def] == 0 then
      set_ttl(KEYS[k], def, 0)
    end
  end

  return out
end

return check(KEYS, ARGV)

-- Copyright (C) aai-nginx authors
--
-- The end of the rate limiter's Redis 7 function library.  The module
-- (ngx_http_aai_ratelimit_script.c) loads, with FUNCTION LOAD REPLACE:
-- "#!lua name=<name>", the line "local library = '<name>'",
-- lua/ratelimit.lua without its last line (the call EVAL makes), then
-- this file.  <name> is "aai_ratelimit_" and the first 12 hex digits of
-- the SHA-1 of lua/ratelimit.lua followed by this file: nginx of two
-- versions sharing a Redis each call their own.  "make lua" puts this
-- file in ngx_http_aai_ratelimit_lua.h beside the script.
--
-- <name>: the check of a batch, as EVAL runs it.  <name>_x: on a Redis
-- Cluster, the check of a batch of several slots of one node (flag
-- allow-cross-slot-keys).  Redis still refuses declared keys of several
-- slots (CROSSSLOT), so the batch declares its first key only, which
-- routes it, and passes the others first in ARGV, their number last.
-- Each undeclared key is read once first: a key that this node does not
-- serve (its slot moved, or is migrating and the key has left) fails
-- the batch with "AAIXSLOT" before anything is written, and the batch
-- is checked again per slot (as the EVAL prelude of
-- ngx_http_aai_ratelimit_script.c does).

-- (The locals of lua/ratelimit.lua hide the globals of their names, and
-- are set by check only: type, tonumber and the others are not used here.)

local function check_slots(first, argv)
  local n = argv[#argv] + 0
  local k, a = {first[1]}, {}
  for i = 1, n do k[i + 1] = argv[i] end
  for i = n + 1, #argv - 1 do a[#a + 1] = argv[i] end
  for i = 2, #k do
    local r = redis.pcall('EXISTS', k[i])
    if r ~= 0 and r ~= 1 then
      -- an error reply, {err = ...}
      return redis.error_reply('AAIXSLOT ' .. r.err)
    end
  end
  return check(k, a)
end

redis.register_function(library, check)
redis.register_function{function_name = library .. '_x',
                        callback = check_slots,
                        flags = {'allow-cross-slot-keys'}}

-- Copyright (C) aai-nginx authors
--
-- A floor of the exact sliding window for bench/ratelimit-cpu, a Redis 7
-- function with lua/ratelimit_library.lua as END.lua (RLCPU_SCRIPTS,
-- bench/README.md "Where the exact window's 43,000 instructions go"),
-- called with exact1's batches; it decides nothing.
--
-- as rpush-lrange-pexpire, LRANGE's bounds given as Lua numbers (0, 3),
-- as lua/ratelimit.lua gives them: Redis makes each a text (%.17g).

local function check(KEYS, ARGV)
  local call = redis.call
  local time = call('TIME')
  local now = time[1] * 1000000 + time[2]
  local now_str = string.format('%d', now)
  local byte = string.byte
  local layout = ARGV[1]
  local out, n = {}, 0
  for pos = 1, #layout, 4 do
    local nz, def, hi, lo = byte(layout, pos, pos + 3)
    local key = KEYS[hi < 128 and hi * 256 + lo
                     or hi * 256 + lo - 32768]
    local len = call('RPUSH', key, now_str)
    if len > 1 then
      local head = call('LRANGE', key, 0, 3)
    else
      call('PEXPIRE', key, '90001')
    end
    n = n + 1
    out[n] = len
  end
  return out
end
return check(KEYS, ARGV)

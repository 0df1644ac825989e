
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: the Lua script that checks a batch in
 * Redis, and its SHA-1 for EVALSHA.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>

#include "ngx_http_aai_ratelimit.h"


/*
 * The check of all the requests of a batch, zone after zone, atomic in
 * Redis, as if each were checked alone at the same instant, the batch's
 * TIME: two requests of one key in one batch are simultaneous (so a GCRA
 * zone without burst admits one of them, as limit_req does within a
 * millisecond).
 *
 * KEYS: the distinct keys of the batch.  ARGV[1]: the layout, a byte
 * string: per request its number of zones, then per zone its definition
 * (1-based, below) and its key (two bytes, 1-based, high bit set when
 * other zones of the batch share the key); ARGV[2]: "1" to drop every
 * expired entry seen; then per definition: algorithm (0 sliding, 1 gcra,
 * 2 counter), limit, window (us), burst, the excess served without delay.
 *
 * A sliding window key is a list of admission times (us), oldest first:
 * an admission is never earlier than the last one (it is the batch's TIME,
 * or for a delayed request the time the l-th newest leaves the window,
 * later than any admission so far), so the list stays in order without
 * sorting.  The expired entries are at its head: the oldest four are read
 * (LRANGE; when all four are expired, a binary search by LINDEX finds the
 * first live one, so a long expired head costs O(log n) commands), counted
 * out, and dropped once two or more are (LTRIM).  The newest is LINDEX -1,
 * and the one whose leaving admits the next request LINDEX -limit.  In a
 * list Redis keeps a few bytes per entry, packed, where a sorted set costs
 * a hash entry and a skip list node.
 *
 * A key of a zone without burst lives 1.5 windows from its last PEXPIRE,
 * which an admission skips when nothing was dropped and the oldest entry
 * is less than half a window old: the admission that last set the TTL is
 * then in the list (an entry leaves it only by being dropped, and a key
 * drops entries without a PEXPIRE only when it rejects by itself, which
 * needs "limit" entries newer than that one), not older than the oldest,
 * so the key outlives its newest entry by a window.
 *
 * A counter key is a string "c<start>:<count>:<previous>": the start (us)
 * of the fixed window it counts, its count, and the count of the window
 * before.  A request is admitted when its count, plus one, plus the
 * previous count weighted by the part of the previous window still inside
 * the sliding window, is at most the limit: one GET, and one SET when it
 * is admitted.  A key of another format (a list, a GCRA number) counts as
 * empty and is overwritten.
 *
 * A request is decided in every zone first (a rejection records nothing),
 * then recorded.  A key used once in the batch, of a sliding zone without
 * burst, gets the request's admission at once (RPUSH, whose reply counts
 * the list), taken back (RPOP) when the request is rejected.  The work of
 * a key shared in the batch is done once: its state is read once, and its
 * admissions are written once at the end.
 *
 * Returns per request: -1 and per zone rejected, delay ms, remaining,
 * reset ms, retry after ms, when a zone rejects or delays; else
 * remaining for one sliding zone without burst with an unshared key
 * (reset: the window); else remaining and reset for one zone; else the
 * most restrictive zone (1-based), its remaining and its reset.  Delays
 * are rounded down to milliseconds, as limit_req does: the requests of a
 * batch share one instant, and waits shorter than a millisecond between
 * them are none.
 *
 * The Lua of Redis is slow per operation: the common requests take short
 * paths, and every string the Redis commands need is made once.
 */

static const char  ngx_http_aai_ratelimit_script[] =
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local call, pcall, byte, fmt = redis.call, redis.pcall, string.byte,\n"
"                               string.format\n"
"local ceil, floor, type, tonumber = math.ceil, math.floor, type, tonumber\n"
"local match = string.match\n"
"local t = call('TIME')\n"
"local now = t[1] * 1000000 + t[2]\n"
"local snow, lay = fmt('%d', now), ARGV[1]\n"
"local trim = ARGV[2] == '1'\n"
"local alg, lim, win, bur, dly = {}, {}, {}, {}, {}\n"
"local cut, sttl, wttl, wms, half = {}, {}, {}, {}, {}\n"
"local cws, cwt, cpre, cttl = {}, {}, {}, {}\n"
"local nd = 0\n"
"for j = 3, #ARGV, 5 do\n"
"  nd = nd + 1\n"
"  alg[nd], lim[nd] = tonumber(ARGV[j]), tonumber(ARGV[j + 1])\n"
"  win[nd], bur[nd] = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])\n"
"  dly[nd] = tonumber(ARGV[j + 4])\n"
"  cut[nd] = now - win[nd]\n"
"  wms[nd] = ceil(win[nd] / 1000)\n"
"  wttl[nd] = fmt('%d', wms[nd] + 1)\n"
"  sttl[nd] = fmt('%d', ceil(win[nd] * 1.5 / 1000) + 1)\n"
"  half[nd] = now - win[nd] / 2\n"
"  if alg[nd] == 2 then\n"
"    cws[nd] = floor(now / win[nd]) * win[nd]\n"
"    cwt[nd] = (cws[nd] + win[nd] - now) / win[nd]\n"
"    cpre[nd] = fmt('c%d:', cws[nd])\n"
"    cttl[nd] = fmt('%d', ceil((cws[nd] + 2 * win[nd] - now) / 1000) + 1)\n"
"  end\n"
"end\n"
"local function old(k, d, n)\n"
"  local x = cut[d]\n"
"  local h = call('LRANGE', k, 0, 3)\n"
"  local a, b = 1, #h + 1\n"
"  while a < b do\n"
"    local i = floor((a + b) / 2)\n"
"    if tonumber(h[i]) > x then b = i else a = i + 1 end\n"
"  end\n"
"  local e = a - 1\n"
"  if e == #h and e < n then\n"
"    a, b = e, n\n"
"    while a < b do\n"
"      local i = floor((a + b) / 2)\n"
"      if tonumber(call('LINDEX', k, i)) > x then b = i else a = i + 1 end\n"
"    end\n"
"    e = a\n"
"  end\n"
"  if e >= n then\n"
"    call('DEL', k)\n"
"  elseif e >= 2 or (trim and e > 0) then\n"
"    call('LTRIM', k, e, -1)\n"
"  end\n"
"  return e, h[1]\n"
"end\n"
"local function count(k, d)\n"
"  if alg[d] == 0 then\n"
"    local n = pcall('LLEN', k)\n"
"    if type(n) == 'number' then\n"
"      if n == 0 then return 0 end\n"
"      return n - old(k, d, n)\n"
"    end\n"
"  else\n"
"    local v = pcall('GET', k)\n"
"    if type(v) ~= 'table' then return tonumber(v) or 0 end\n"
"  end\n"
"  call('DEL', k)\n"
"  return 0\n"
"end\n"
"local function add(k, d)\n"
"  local m = pcall('RPUSH', k, snow)\n"
"  if type(m) ~= 'number' then\n"
"    call('DEL', k)\n"
"    m = call('RPUSH', k, snow)\n"
"  end\n"
"  local c, f = m - 1, false\n"
"  if c > 0 then\n"
"    local e, h = old(k, d, m)\n"
"    c, f = c - e, e == 0 and tonumber(h) > half[d]\n"
"  end\n"
"  if c < lim[d] then return c, true, f end\n"
"  call('RPOP', k)\n"
"  return c, false, f\n"
"end\n"
"local function last(k, c)\n"
"  if c == 0 then return now end\n"
"  return tonumber(call('LINDEX', k, -1))\n"
"end\n"
"local function cget(k, d)\n"
"  local v = pcall('GET', k)\n"
"  if type(v) == 'string' then\n"
"    local s, c, p = match(v, '^c(%d+):(%d+):(%d+)$')\n"
"    if s then\n"
"      s = tonumber(s)\n"
"      if s == cws[d] then return tonumber(c), tonumber(p) end\n"
"      if s == cws[d] - win[d] then return 0, tonumber(c) end\n"
"    end\n"
"  end\n"
"  return 0, 0\n"
"end\n"
"local function cset(k, d, c, p)\n"
"  call('SET', k, cpre[d] .. fmt('%d:%d', c, p), 'PX', cttl[d])\n"
"end\n"
"local function expire(k, d, ttl)\n"
"  if bur[d] == 0 then ttl = sttl[d]\n"
"  elseif ttl == wms[d] + 1 then ttl = wttl[d] end\n"
"  call('PEXPIRE', k, ttl)\n"
"end\n"
"local kc, kq, kf, kt, kd, kp = {}, {}, {}, {}, {}, {}\n"
"local function push(k)\n"
"  local q, f = kq[k], kf[k]\n"
"  local n = q + (f and #f or 0)\n"
"  if n == 0 then return end\n"
"  local a = {}\n"
"  for i = 1, n do\n"
"    a[i] = i <= q and snow or fmt('%d', f[i - q])\n"
"  end\n"
"  for i = 1, n, 1000 do\n"
"    call('RPUSH', KEYS[k], unpack(a, i, math.min(i + 999, n)))\n"
"  end\n"
"  kc[k], kq[k], kf[k] = kc[k] + n, 0, nil\n"
"end\n"
"local pos, o, nl, out = 1, 0, #lay, {}\n"
"local zk, zd, za, zr, zv, zp, zc, zo = {}, {}, {}, {}, {}, {}, {}, {}\n"
"local zf = {}\n"
"while pos <= nl do\n"
"  local n, d, hi, lo = byte(lay, pos, pos + 3)\n"
"  local c\n"
"  if n == 1 and hi < 128 and alg[d] == 0 and bur[d] == 0 then\n"
"    local key, added, fresh = KEYS[hi * 256 + lo], nil, nil\n"
"    c, added, fresh = add(key, d)\n"
"    if added then\n"
"      o = o + 1\n"
"      out[o] = lim[d] - c - 1\n"
"      if not fresh then expire(key, d, 0) end\n"
"      pos = pos + 4\n"
"      n = 0\n"
"    end\n"
"  end\n"
"  if n > 0 then\n"
"    pos = pos + 1\n"
"    local rej, special, top, tl, tr = false, false, 0, 0, 0\n"
"    for i = 1, n do\n"
"      local d, hi, lo = byte(lay, pos, pos + 2)\n"
"      pos = pos + 3\n"
"      local k, key = hi * 256 + lo, nil\n"
"      zp[i], zf[i] = false, false\n"
"      if hi >= 128 then\n"
"        k = k - 32768\n"
"        key = KEYS[k]\n"
"        if kc[k] == nil then\n"
"          if alg[d] == 2 then\n"
"            kc[k], kp[k] = cget(key, d)\n"
"          else\n"
"            kc[k] = count(key, d)\n"
"          end\n"
"          kq[k], kt[k], kd[k] = 0, 0, d\n"
"        end\n"
"        c = kc[k]\n"
"      else\n"
"        key = KEYS[k]\n"
"        k = -k\n"
"        if n > 1 or c == nil then\n"
"          if alg[d] == 0 and bur[d] == 0 then\n"
"            c, zp[i], zf[i] = add(key, d)\n"
"          elseif alg[d] == 2 then\n"
"            c, zo[i] = cget(key, d)\n"
"          else\n"
"            c = count(key, d)\n"
"          end\n"
"        end\n"
"      end\n"
"      local l, w, b = lim[d], win[d], bur[d]\n"
"      local no, wait, left, reset, retry, at = 0, 0, 0, 0, 0, now\n"
"      if alg[d] == 0 then\n"
"        if k > 0 then c = c + kq[k] + (kf[k] and #kf[k] or 0) end\n"
"        if c < l and b == 0 then\n"
"          left, reset = l - c - 1, w\n"
"        else\n"
"          if k > 0 then push(k) end\n"
"          local lst = last(key, c)\n"
"          if c < l then\n"
"            left = l - c - 1\n"
"            reset = (lst > now and lst or now) + w - now\n"
"          else\n"
"            local e = c - l + 1\n"
"            at = tonumber(call('LINDEX', key, -l)) + w\n"
"            if e > b then\n"
"              no, retry = 1, at - now\n"
"              reset = lst + w - now\n"
"            else\n"
"              if e > dly[d] then wait = at - now end\n"
"              reset = (lst > at and lst or at) + w - now\n"
"            end\n"
"          end\n"
"        end\n"
"      elseif alg[d] == 2 then\n"
"        local p, s = k > 0 and kp[k] or zo[i], cws[d]\n"
"        local e = c + p * cwt[d]\n"
"        zc[i] = c\n"
"        if e + 1 <= l then\n"
"          left, reset = floor(l - e - 1), s + 2 * w - now\n"
"        else\n"
"          no = 1\n"
"          if c < l then\n"
"            retry, reset = s + w - (l - c - 1) * w / p - now, s + w - now\n"
"            if c > 0 then reset = reset + w end\n"
"          else\n"
"            retry = s + 2 * w - (l - 1) * w / c - now\n"
"            reset = s + 2 * w - now\n"
"          end\n"
"        end\n"
"      else\n"
"        local p = w / l\n"
"        local tat = c > now and c or now\n"
"        if tat - now > b * p then\n"
"          no, retry, reset = 1, tat - now - b * p, tat - now\n"
"        else\n"
"          wait = tat - now - dly[d] * p\n"
"          if wait < 0 then wait = 0 end\n"
"          at = tat + p\n"
"          reset = at - now\n"
"          left = floor((b * p + p - reset) / p)\n"
"          if left < 0 then left = 0 end\n"
"        end\n"
"      end\n"
"      reset = ceil(reset / 1000)\n"
"      wait = floor(wait / 1000)\n"
"      if no == 1 then\n"
"        rej, special, retry = true, true, ceil(retry / 1000)\n"
"      elseif wait > 0 then\n"
"        special = true\n"
"      end\n"
"      zk[i], zd[i], za[i], zr[i] = k, d, at, reset\n"
"      if n > 1 or special then\n"
"        local v = 5 * i\n"
"        zv[v - 4], zv[v - 3], zv[v - 2], zv[v - 1], zv[v] =\n"
"          no, wait, left, reset, retry\n"
"      end\n"
"      if top == 0 or left < tl or (left == tl and reset > tr) then\n"
"        top, tl, tr = i, left, reset\n"
"      end\n"
"    end\n"
"    if special then\n"
"      out[o + 1] = -1\n"
"      for i = 1, 5 * n do out[o + 1 + i] = zv[i] end\n"
"      o = o + 1 + 5 * n\n"
"    elseif n == 1 then\n"
"      out[o + 1], out[o + 2] = tl, tr\n"
"      o = o + 2\n"
"    else\n"
"      out[o + 1], out[o + 2], out[o + 3] = top, tl, tr\n"
"      o = o + 3\n"
"    end\n"
"    if rej then\n"
"      for i = 1, n do\n"
"        if zp[i] then\n"
"          call('RPOP', KEYS[-zk[i]])\n"
"          if not zf[i] then expire(KEYS[-zk[i]], zd[i], 0) end\n"
"        end\n"
"      end\n"
"    else\n"
"      for i = 1, n do\n"
"        local k, d, at, ttl = zk[i], zd[i], za[i], zr[i] + 1\n"
"        if k > 0 then\n"
"          if alg[d] == 1 then\n"
"            kc[k] = at\n"
"          elseif alg[d] == 2 then\n"
"            kc[k] = kc[k] + 1\n"
"          elseif at == now then\n"
"            kq[k] = kq[k] + 1\n"
"          else\n"
"            local f = kf[k]\n"
"            if f == nil then f = {}; kf[k] = f end\n"
"            f[#f + 1] = at\n"
"          end\n"
"          if ttl > kt[k] then kt[k] = ttl end\n"
"        else\n"
"          local key = KEYS[-k]\n"
"          if alg[d] == 0 then\n"
"            if not zp[i] then\n"
"              call('RPUSH', key, at == now and snow or fmt('%d', at))\n"
"            end\n"
"            if not zf[i] then expire(key, d, ttl) end\n"
"          elseif alg[d] == 2 then\n"
"            cset(key, d, zc[i] + 1, zo[i])\n"
"          else\n"
"            call('SET', key, fmt('%d', at), 'PX', ttl)\n"
"          end\n"
"        end\n"
"      end\n"
"    end\n"
"  end\n"
"end\n"
"for k, d in pairs(kd) do\n"
"  if kt[k] > 0 then\n"
"    if alg[d] == 0 then\n"
"      push(k)\n"
"      expire(KEYS[k], d, kt[k])\n"
"    elseif alg[d] == 2 then\n"
"      cset(KEYS[k], d, kc[k], kp[k])\n"
"    else\n"
"      call('SET', KEYS[k], fmt('%d', kc[k]), 'PX', kt[k])\n"
"    end\n"
"  elseif alg[d] == 0 and bur[d] == 0 then\n"
"    expire(KEYS[k], d, 0)\n"
"  end\n"
"end\n"
"return out\n";


ngx_str_t  ngx_http_aai_ratelimit_script_text = {
    sizeof(ngx_http_aai_ratelimit_script) - 1,
    (u_char *) ngx_http_aai_ratelimit_script
};


ngx_int_t
ngx_http_aai_ratelimit_script_sha(ngx_conf_t *cf, ngx_str_t *sha)
{
    u_char  digest[SHA_DIGEST_LENGTH];

    sha->data = ngx_pnalloc(cf->pool, 2 * SHA_DIGEST_LENGTH);
    if (sha->data == NULL) {
        return NGX_ERROR;
    }

    SHA1((const u_char *) ngx_http_aai_ratelimit_script,
         sizeof(ngx_http_aai_ratelimit_script) - 1, digest);

    sha->len = ngx_hex_dump(sha->data, digest, SHA_DIGEST_LENGTH) - sha->data;

    return NGX_OK;
}

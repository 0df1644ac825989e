-- wrk script of the chaos scripts: steady traffic (each connection waits
-- CHAOS_DELAY_MS between requests), CHAOS_URLS distinct URIs under /api/,
-- CHAOS_SLOW percent of them to the slow app, 500 users in X-User.
-- done() prints one "chaos-wrk" line with the counts and latencies.

local delay_ms = tonumber(os.getenv("CHAOS_DELAY_MS") or "5")
local urls = tonumber(os.getenv("CHAOS_URLS") or "1000")
local slow = tonumber(os.getenv("CHAOS_SLOW") or "0")
local n = 0

function init(args)
    math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

function request()
    n = n + 1
    local u = math.random(urls)
    local path
    if math.random(100) <= slow then
        path = "/api/slow/" .. u
    else
        path = "/api/item/" .. u
    end
    return wrk.format("GET", path,
                      { ["X-User"] = "u" .. math.random(500) })
end

function delay()
    return delay_ms
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "chaos-wrk requests=%d connect=%d read=%d write=%d status=%d " ..
        "timeout=%d max_us=%d p99_us=%d p50_us=%d duration_us=%d\n",
        summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
        latency.max, latency:percentile(99), latency:percentile(50),
        summary.duration))
end

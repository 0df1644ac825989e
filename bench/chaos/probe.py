#!/usr/bin/env python3
# The counting client of the chaos scripts: runs beside wrk, on its own
# keepalive connections, and accounts for every request it sends.
#
#   probe.py PORT SECONDS OUTFILE [CONNECTIONS] [DELAY_MS]
#
# A request fails when it gets no complete response, a non-2xx status, or
# no answer within 15 s (longer than aai_cache_lock_timeout).  As HTTP clients do (RFC 9112 9.3.1), a request
# sent on a reused connection that the server closed before sending any
# byte of the answer (an idle keepalive connection closed by a worker that
# is shutting down) is retried once on a new connection and counted as
# "retried", not failed; its retry counts like any request.  OUTFILE gets
# one line per request: end time (ms since the epoch), latency (ms, of the
# last attempt), status (0 when failed).  The summary line goes to stdout.

import asyncio
import random
import sys
import time

port, secs, outfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 4
delay = (int(sys.argv[5]) if len(sys.argv) > 5 else 5) / 1000.0

stats = {"requests": 0, "failed": 0, "retried": 0, "non2xx": 0}
lines = []
fail_reasons = {}


class Idle(Exception):
    pass


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def attempt(conn, req):
    """one try; conn is [reader, writer, reused]; raises Idle or others"""
    if conn[0] is None:
        conn[0], conn[1] = await asyncio.open_connection("127.0.0.1", port)
        conn[2] = False
    reused = conn[2]
    conn[1].write(req)
    try:
        await conn[1].drain()
        status, close = await asyncio.wait_for(read_response(conn[0]), 15)
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        conn[1].close()
        conn[0] = None
        partial = isinstance(e, asyncio.IncompleteReadError) and e.partial
        if reused and not partial:
            raise Idle()
        raise
    conn[2] = True
    if close:
        conn[1].close()
        conn[0] = None
    return status


async def client(end):
    conn = [None, None, False]
    while time.time() < end:
        req = (b"GET /api/item/%d HTTP/1.1\r\nHost: probe\r\nX-User: p%d\r\n"
               b"\r\n" % (random.randint(1, 1000), random.randint(1, 500)))
        stats["requests"] += 1
        t0 = time.time()
        status = 0
        try:
            try:
                status = await attempt(conn, req)
            except Idle:
                stats["retried"] += 1
                t0 = time.time()
                status = await attempt(conn, req)
        except Exception as e:
            r = type(e).__name__
            fail_reasons[r] = fail_reasons.get(r, 0) + 1
            if conn[0] is not None:
                conn[1].close()
                conn[0] = None
        t1 = time.time()
        if status == 0:
            stats["failed"] += 1
        elif not 200 <= status < 300:
            stats["non2xx"] += 1
        lines.append("%d %.3f %d\n" % (t1 * 1000, (t1 - t0) * 1000, status))
        await asyncio.sleep(delay)


async def main():
    open(outfile, "w").close()
    end = time.time() + secs
    await asyncio.gather(*(client(end) for _ in range(conns)))


asyncio.run(main())
with open(outfile, "w") as f:
    f.writelines(lines)
lat = sorted(float(l.split()[1]) for l in lines) or [0]
print("chaos-probe requests=%d failed=%d non2xx=%d retried=%d max_ms=%d "
      "p99_ms=%.1f over1s=%d reasons=%s" % (
          stats["requests"], stats["failed"], stats["non2xx"],
          stats["retried"], lat[-1], lat[int(len(lat) * 0.99)],
          sum(1 for x in lat if x > 1000),
          ",".join("%s:%d" % kv for kv in fail_reasons.items()) or "-"))

#!/usr/bin/env python3
# The slow app server of the chaos scripts: answers every request after
# CHAOS_SLOW_MS milliseconds (default 50), over HTTP/1.1 keepalive, so that
# cache misses hold their update lock for that long.  Port in argv[1].

import asyncio
import os
import sys

DELAY = int(os.environ.get("CHAOS_SLOW_MS", "50")) / 1000.0
BODY = b'{"slow":true,"pad":"' + b"x" * 900 + b'"}\n'


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())

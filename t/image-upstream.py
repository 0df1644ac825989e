#!/usr/bin/env python3
# An app stand-in for t/image-test: answers every GET with the number of
# requests it has seen for that path ("path=/api/x n=3"), so that a cached
# response is told from a fresh one.  Usage: image-upstream.py PORT
import http.server
import sys

counts = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        counts[self.path] = counts.get(self.path, 0) + 1
        body = ("path=%s n=%d\n" % (self.path, counts[self.path])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                Handler).serve_forever()

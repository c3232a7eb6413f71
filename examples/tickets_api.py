#!/usr/bin/env python3
"""A tiny tickets API for the airlock demo.

POST /tickets with `Authorization: Bearer <token>` and a JSON body creates a
ticket (201 with {"id", "url"}); anything else is refused. The expected
token comes from the TICKETS_API_TOKEN environment variable, never argv.
Listens on 127.0.0.1:PORT (first argument, default 8787).
"""
import hmac
import http.server
import itertools
import json
import os
import sys

TOKEN = os.environ.get("TICKETS_API_TOKEN", "")
IDS = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        if self.path != "/tickets":
            return self.reply(404, {"error": "no such route"})
        auth = self.headers.get("authorization", "")
        if not TOKEN or not hmac.compare_digest(auth.encode(), f"Bearer {TOKEN}".encode()):
            print("tickets-api: refused a request without the right bearer token", flush=True)
            return self.reply(401, {"error": "missing or wrong bearer token"})
        try:
            ticket = json.loads(body)
        except ValueError:
            return self.reply(400, {"error": "body is not JSON"})
        n = next(IDS)
        print(f"tickets-api: authorized request, created ticket {n}: {ticket.get('title')!r}", flush=True)
        self.reply(201, {"id": n, "url": f"http://127.0.0.1:{self.server.server_port}/tickets/{n}"})

    def do_GET(self):
        self.reply(404, {"error": "no such route"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8787
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"tickets-api: listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()

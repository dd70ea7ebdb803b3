#!/usr/bin/env python3
"""The README's example route upstream (http://127.0.0.1:PORT) for tests/readme/readme_test.py:
answers every request with 200 and the request line and headers it received, one per line, so a
README command's output shows what kfsec handed the upstream."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.command} {self.path}\n".encode() + bytes(self.headers)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *_args) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()

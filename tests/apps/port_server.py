"""A server that only knows $PORT (stdlib, threaded, HTTP/1.1 keep-alive): what `--proxy` is for.

Its version comes from the file named by $LIVESWAP_TEST_STATE, read once at start ("bad": GET /
answers 500; "exit": it exits 1 at once). GET /slow?s=N sleeps; POST answers len=<bytes read>.
"""

from __future__ import annotations

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(os.environ["LIVESWAP_TEST_STATE"]) as f:
    VERSION, _, BEHAVIOUR = f.read().strip().partition(" ")
if BEHAVIOUR == "exit":
    print(f"port_server {VERSION}: configuration error, exiting", file=sys.stderr, flush=True)
    sys.exit(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-app-version", VERSION)
        self.send_header("x-worker-pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.startswith("/slow"):
            print(f"slow request started in pid {os.getpid()}", flush=True)
            time.sleep(float(self.path.partition("s=")[2] or 1))
            self._answer(200, f"slow {VERSION}\n".encode())
        elif BEHAVIOUR == "bad":
            self._answer(500, b"broken build\n")
        else:
            self._answer(200, f"version={VERSION}\n".encode())

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer(200, f"len={len(body)} version={VERSION}\n".encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()

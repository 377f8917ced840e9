"""A tiny HTTP server for command mode's tests: it serves every socket passed in LISTEN_FDS (the
private health socket too) and answers ``GET /env`` with what it was given, as JSON: its pid, its
command line, the LISTEN_* / EINHORN_* / NOTIFY_SOCKET / LIVESWAP_* variables and what each
inherited fd is. Other requests get the version line, tagged like the other test apps.

It imports ``command._state``, so ``exit-1`` in the state file makes it exit 1 at once (a broken build).
On SIGTERM it stops accepting and exits once its requests are done.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._state import VERSION

FIRST_FD = 3


def _describe(fd: int) -> dict[str, Any]:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        return {"fd": fd, "family": sock.family.name, "address": sock.getsockname(), "listening": listening}
    finally:
        sock.close()


def _inherited() -> list[dict[str, Any]]:
    """Each fd from 3 on that is open (before this process opens any of its own)."""
    fds = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        if fd >= FIRST_FD:
            try:
                fds.append(_describe(fd))
            except OSError:
                pass  # the fd os.listdir itself had open
    return fds


INHERITED = _inherited()


def _report() -> dict[str, Any]:
    keys = ("LISTEN_", "EINHORN_", "NOTIFY_SOCKET", "LIVESWAP_GENERATION", "LIVESWAP_WORKER")
    return {
        "pid": os.getpid(),
        "argv": sys.argv[1:],
        "env": {k: v for k, v in os.environ.items() if k.startswith(keys)},
        "fds": INHERITED,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2.0  # an idle keep-alive connection is closed after this (the drain then ends)

    def _answer(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", VERSION)
        self.send_header("X-Worker-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/env":
            self._answer(json.dumps(_report()).encode(), "application/json")
        else:
            self._answer(f"version={VERSION} pid={os.getpid()}\n".encode())

    def do_POST(self) -> None:
        import hashlib

        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(f"len={len(data)} sha256={hashlib.sha256(data).hexdigest()} version={VERSION}\n".encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"LISTEN_PID={os.environ.get('LISTEN_PID')} is not our pid {os.getpid()}")
    servers = []
    for fd in range(FIRST_FD, FIRST_FD + int(os.environ["LISTEN_FDS"])):
        server = ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = socket.socket(fileno=fd)
        server.daemon_threads = False  # server_close() waits for the requests in flight
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"env-server[{os.getpid()}] serving version {VERSION}", file=sys.stderr, flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()

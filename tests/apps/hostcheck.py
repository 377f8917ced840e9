"""An ASGI app that checks the Host header as Django does (ALLOWED_HOSTS): 400 for any other host.

The state file's behaviour "broken" makes GET / answer 500 to allowed hosts: a broken release that a
health check with a made-up Host would wave through.
"""

from __future__ import annotations

import os
from typing import Any

with open(os.environ["LIVESWAP_TEST_STATE"]) as f:
    VERSION, _, BEHAVIOUR = f.read().strip().partition(" ")

ALLOWED_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _host(scope: dict[str, Any]) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1")
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return ""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if _host(scope) not in ALLOWED_HOSTS:
        status, body = 400, b"Bad Request (400): invalid Host\n"
    elif BEHAVIOUR == "broken":
        status, body = 500, b"Server Error (500)\n"
    else:
        status, body = 200, f"version={VERSION}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"x-app-version", VERSION.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

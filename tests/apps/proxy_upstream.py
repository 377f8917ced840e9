"""An upstream for the proxy tests: a uvicorn server on a private loopback port, as a server command
under ``liveswap --proxy`` would be. ``python proxy_upstream.py NAME`` binds 127.0.0.1:0 and prints
``listening PORT`` once it accepts.

Routes: ``GET /`` (tagged with ``x-app-version: NAME`` and ``x-worker-pid``), ``POST`` anything
(answers ``len=N sha256=HEX`` of the body), ``/headers`` (what arrived, as JSON), ``/cookies`` (two
Set-Cookie), ``/gzip`` (a gzip body as it is), ``/gate?key=K`` (a stream that sends one chunk, then
waits for ``/release?key=K`` before the rest), ``/__count`` (requests seen, not counting these two
control routes), ``/__lastclose`` (the close code of the last WebSocket a client closed), anything
else 404. WebSocket ``/ws`` echoes ``NAME: text`` (bytes as they are); ``close CODE`` makes it close
with that code.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import socket
import sys
from typing import Any

import uvicorn

NAME = sys.argv[1] if len(sys.argv) > 1 else "upstream"
GATES: dict[str, asyncio.Event] = {}
STATE = {"count": 0, "last_close": 0}


def _gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    base = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"x-app-version", NAME.encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


async def _websocket(scope: Any, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            STATE["last_close"] = int(message.get("code", 1000))
            return
        text = message.get("text")
        if text is not None and text.startswith("close "):
            await send({"type": "websocket.close", "code": int(text.split()[1]), "reason": "asked to"})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": f"{NAME}: {text}"})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path not in ("/__count", "/release", "/__lastclose"):
        STATE["count"] += 1
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if scope["method"] == "POST":
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        await _send(send, 200, f"len={size} sha256={digest.hexdigest()}\n".encode())
    elif path == "/":
        await _send(send, 200, f"hello from {NAME}\n".encode())
    elif path == "/headers":
        seen = {"headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]}
        await _send(send, 200, json.dumps(seen).encode(), [(b"content-type", b"application/json")])
    elif path == "/cookies":
        await _send(send, 200, b"two cookies\n", [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly")])
    elif path == "/gzip":
        body = gzip.compress(b"compressed " * 100)
        await _send(send, 200, body, [(b"content-encoding", b"gzip")])
    elif path == "/gate":
        key = query.get("key", "")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app-version", NAME.encode())]})
        await send({"type": "http.response.body", "body": f"first {key}\n".encode(), "more_body": True})
        await _gate(key).wait()
        for i in range(3):
            await send({"type": "http.response.body", "body": f"rest {i} {key}\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"end\n"})
    elif path == "/release":
        _gate(query.get("key", "")).set()
        await _send(send, 200, b"released\n")
    elif path == "/__count":
        await _send(send, 200, str(STATE["count"]).encode())
    elif path == "/__lastclose":
        await _send(send, 200, str(STATE["last_close"]).encode())
    else:
        await _send(send, 404, b"not found here\n")


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print(f"listening {sockets[0].getsockname()[1] if sockets else 0}", flush=True)


if __name__ == "__main__":
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    _Server(config).run(sockets=[sock])

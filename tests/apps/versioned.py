"""Test app whose code "version" and boot behaviour come from a file, re-read at every import.

The file named by $LIVESWAP_TEST_STATE holds one line: a version string, optionally followed by a
behaviour: "fail-import", "hang-import", "fail-startup", "raise-startup", "unhealthy", "hang-shutdown",
"crash-soon", "slow-import", "block-after" (GET /block blocks the event loop for good).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

_STATE = os.environ["LIVESWAP_TEST_STATE"]
with open(_STATE) as f:
    VERSION, _, BEHAVIOUR = f.read().strip().partition(" ")

if BEHAVIOUR == "fail-import":
    raise RuntimeError(f"broken code in version {VERSION}")
if BEHAVIOUR == "hang-import":
    time.sleep(3600)
if BEHAVIOUR == "slow-import":
    print(f"slow import of version {VERSION}", flush=True)
    time.sleep(2.5)


def _headers(extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/plain"),
        (b"x-app-version", VERSION.encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
        *(extra or []),
    ]


def _connect_db() -> None:
    raise RuntimeError(f"db unreachable (version {VERSION})")


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if BEHAVIOUR == "fail-startup":
                await send({"type": "lifespan.startup.failed", "message": f"startup failed in {VERSION}"})
                return
            if BEHAVIOUR == "raise-startup":
                _connect_db()
            await send({"type": "lifespan.startup.complete"})
            if BEHAVIOUR == "crash-soon":
                asyncio.get_running_loop().call_later(0.3, os._exit, 9)
        elif message["type"] == "lifespan.shutdown":
            if BEHAVIOUR == "hang-shutdown":
                time.sleep(3600)  # blocks the loop: ignores every request to stop
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"{VERSION}:{msg.get('text')}"})
    path = scope["path"]
    if path == "/" and BEHAVIOUR == "unhealthy":
        status, body = 503, b"unhealthy\n"
    elif path == "/block":
        print(f"blocking the event loop in pid {os.getpid()}", flush=True)
        time.sleep(3600)
        status, body = 200, b"unreachable\n"
    elif path == "/sleep-sync":  # blocks the event loop for a while: nothing else is accepted meanwhile
        print(f"blocking the event loop in pid {os.getpid()}", flush=True)
        time.sleep(float(scope["query_string"].decode().partition("=")[2] or 1))
        status, body = 200, f"slept {VERSION}\n".encode()
    elif path == "/slow":
        seconds = float(dict(p.split("=") for p in scope["query_string"].decode().split("&") if "=" in p).get("s", 1))
        print(f"slow request started in pid {os.getpid()}", flush=True)
        await asyncio.sleep(seconds)
        status, body = 200, f"slow {VERSION}\n".encode()
    elif scope["method"] == "POST":
        size = 0
        more = True
        while more:
            msg = await receive()
            size += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        status, body = 200, f"len={size} version={VERSION}\n".encode()
    else:
        status, body = 200, f"version={VERSION}\n".encode()
    await send({"type": "http.response.start", "status": status, "headers": _headers()})
    await send({"type": "http.response.body", "body": body})

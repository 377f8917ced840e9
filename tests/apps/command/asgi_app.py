"""An ASGI app for uvicorn, hypercorn and gunicorn's uvicorn worker: each answer says its version and
the pid that served it; a POST answers the length and sha256 of the body it read."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ._state import VERSION


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "POST":
        digest, size, more = hashlib.sha256(), 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = f"len={size} sha256={digest.hexdigest()} version={VERSION}\n".encode()
    else:
        body = f"version={VERSION} pid={os.getpid()}\n".encode()
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"x-app-version", VERSION.encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

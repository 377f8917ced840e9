"""The demo service: a tiny ASGI app that says which code version and worker answered.

    liveswap run liveswap.demo.app:app

Edit VERSION below (or set DEMO_VERSION) and run `liveswap reload`: the next answers come from
the new code, and no request in between is lost.
"""

from __future__ import annotations

import json
import os
from typing import Any

VERSION = os.environ.get("DEMO_VERSION", "1")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = (
        json.dumps({"hello": "from liveswap", "version": VERSION, "pid": os.getpid(), "path": scope["path"]}).encode()
        + b"\n"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-app-version", VERSION.encode()),
                (b"x-worker-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""Test app: GET /NAME answers the value of the environment variable NAME in this worker ("<unset>")."""

from __future__ import annotations

import os
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    value = os.environ.get(scope["path"].lstrip("/"), "<unset>")
    headers = [(b"content-type", b"text/plain"), (b"x-worker-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": value.encode()})

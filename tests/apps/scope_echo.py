"""Answers every request with what the server put in its ASGI scope (client, scheme, root_path,
path), as JSON. ``GET /log`` also logs a line with extra fields on the ``liveswap.app`` logger.

Run as a script, it serves with ``liveswap.serve(app, "127.0.0.1:0", **json($SERVE_OPTIONS))``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import liveswap

log = logging.getLogger("liveswap.app")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"].endswith("/log"):
        log.info("asked to log", extra={"reason": "a test", "answer": 42})
    client = scope.get("client")
    body = {
        "client": list(client) if client else None,
        "scheme": scope["scheme"],
        "root_path": scope.get("root_path", ""),
        "path": scope["path"],
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


if __name__ == "__main__":
    liveswap.serve(app, "127.0.0.1:0", debug=None, **json.loads(os.environ.get("SERVE_OPTIONS", "{}")))

"""The benchmark app: the same minimal app for every server under test.

``VERSION`` is read once, at import, from the file named by ``BENCH_VERSION_FILE`` (``0`` when
unset), and sent back in an ``x-app-version`` header, so a client can tell which code answered.

    app       ASGI 3, for liveswap, uvicorn and gunicorn's UvicornWorker
    wsgi_app  WSGI, for gunicorn's sync workers
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def _read_version() -> str:
    path = os.environ.get("BENCH_VERSION_FILE")
    if not path:
        return "0"
    with open(path, encoding="ascii") as f:
        return f.read().strip() or "0"


VERSION = _read_version()
BODY = f"hello from version {VERSION}\n".encode()
_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-app-version", VERSION.encode()),
]


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
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
    if scope["method"] != "GET":  # read the whole body, as a real handler would
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [(k.decode(), v.decode()) for k, v in _HEADERS])
    return [BODY]

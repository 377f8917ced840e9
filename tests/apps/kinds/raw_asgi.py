"""A plain ASGI 3 function, with lifespan: ``kinds.raw_asgi:app``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import _common as c

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if c.BEHAVIOUR == "fail-startup":
                await send({"type": "lifespan.startup.failed", "message": f"startup failed in {c.VERSION}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _raw_headers(content_type: str = "text/plain; charset=utf-8", length: int | None = None) -> list[list[bytes]]:
    out = [[k.encode(), v.encode()] for k, v in c.headers(content_type)]
    if length is not None:
        out.append([b"content-length", str(length).encode()])
    return out


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _raw_headers(length=len(body))})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away during the request body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _stream(send: Send, query: bytes, what: str, content_type: str, item: Callable[[int], bytes]) -> None:
    n, pause = c.stream_params(query)
    await send({"type": "http.response.start", "status": 200, "headers": _raw_headers(content_type)})
    for i in range(n):
        if i:
            await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": item(i), "more_body": True})
        if i == 0:
            c.started(what)
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if method == "POST" and path == "/":
        await _answer(send, 200, c.post_body(await _read_body(receive)))
    elif path == "/":
        await _answer(send, *c.index())
    elif path == "/slow":
        c.started("slow request")
        await asyncio.sleep(c.slow_seconds(scope["query_string"]))
        await _answer(send, 200, c.text(f"slow {c.VERSION}"))
    elif path == "/stream":
        await _stream(send, scope["query_string"], "stream", "text/plain; charset=utf-8", c.chunk)
    elif path == "/sse":
        await _stream(send, scope["query_string"], "sse", "text/event-stream", c.sse_event)
    else:
        await _answer(send, 404, b"not found\n")

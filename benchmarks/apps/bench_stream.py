"""A streaming benchmark app: every response is ``CHUNKS`` chunks, ``PAUSE`` seconds apart (about
100 ms in all), so that a reload lands while responses are mid-stream.

The same contract as ``bench_app``: ``VERSION`` is read once, at import, from the file named by
``BENCH_VERSION_FILE`` (``0`` when unset) and sent back in an ``x-app-version`` header; a POST
body is read fully before the stream starts. No content-length: HTTP/1.1 servers send the body
chunked. Each chunk is one line, ``chunk I/N version V``, and the last line is ``end V``, so a
client can tell a complete body from a cut one whatever the framing.

    app       ASGI 3 (``asyncio.sleep`` between chunks), for liveswap, uvicorn and gunicorn's UvicornWorker
    wsgi_app  WSGI (a generator that ``time.sleep``s between chunks), for liveswap, gunicorn sync and
              gthread, and uvicorn --interface wsgi
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CHUNKS = 6
PAUSE = 0.02  # seconds between chunks: 5 pauses, about 100 ms per response


def _read_version() -> str:
    path = os.environ.get("BENCH_VERSION_FILE")
    if not path:
        return "0"
    with open(path, encoding="ascii") as f:
        return f.read().strip() or "0"


VERSION = _read_version()
_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"x-app-version", VERSION.encode())]


def chunk(i: int) -> bytes:
    """The i-th piece of the body; the last one carries the end marker."""
    line = f"chunk {i + 1}/{CHUNKS} version {VERSION}\n"
    if i == CHUNKS - 1:
        line += f"end {VERSION}\n"
    return line.encode()


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
    if scope["method"] != "GET":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    for i in range(CHUNKS):
        if i:
            await asyncio.sleep(PAUSE)
        await send({"type": "http.response.body", "body": chunk(i), "more_body": i < CHUNKS - 1})


def _stream() -> Iterator[bytes]:
    for i in range(CHUNKS):
        if i:
            time.sleep(PAUSE)
        yield chunk(i)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [(k.decode(), v.decode()) for k, v in _HEADERS])
    return _stream()

"""A plain WSGI function (no framework), adapted by liveswap with a2wsgi: ``kinds.wsgi_func:application``.

Streams are generators that ``time.sleep()`` between chunks (they run in a2wsgi's thread pool).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment

from . import _common as c

_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}


def _answer(start_response: StartResponse, status: int, body: bytes) -> list[bytes]:
    start_response(f"{status} {_REASONS[status]}", [*c.headers(), ("Content-Length", str(len(body)))])
    return [body]


def _stream(n: int, pause: float, what: str, item: Callable[[int], bytes]) -> Iterator[bytes]:
    for i in range(n):
        if i:
            time.sleep(pause)
        yield item(i)
        if i == 0:
            c.started(what)  # runs when the server asks for the second chunk: the first is on its way


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path, method, query = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
    if method == "POST" and path == "/":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        return _answer(start_response, 200, c.post_body(environ["wsgi.input"].read(length)))
    if path == "/":
        return _answer(start_response, *c.index())
    if path == "/slow":
        c.started("slow request")
        time.sleep(c.slow_seconds(query))
        return _answer(start_response, 200, c.text(f"slow {c.VERSION}"))
    if path in ("/stream", "/sse"):
        sse = path == "/sse"
        n, pause = c.stream_params(query)
        start_response("200 OK", c.headers("text/event-stream" if sse else "text/plain; charset=utf-8"))
        return _stream(n, pause, "sse" if sse else "stream", c.sse_event if sse else c.chunk)
    return _answer(start_response, 404, b"not found\n")

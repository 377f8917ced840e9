"""Views of the test Django project. Plain (sync) views; under ASGI Django runs them in a thread.

Streams are StreamingHttpResponse over a generator that matches the handler: a sync generator under
WSGI, an async one under ASGI (Django would otherwise buffer the whole stream, with a warning).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.core.handlers.asgi import ASGIRequest  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from .. import _common as c


def _with_headers(response: Any, content_type: str = "text/plain; charset=utf-8") -> Any:
    for name, value in c.headers(content_type):
        response[name] = value
    return response


def _answer(status: int, body: bytes) -> HttpResponse:
    return _with_headers(HttpResponse(body, status=status))


def _index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _answer(200, c.post_body(request.body))
    return _answer(*c.index())


index = csrf_exempt(_index)  # the load client POSTs without a CSRF token (as an API client would)


def slow(request: HttpRequest) -> HttpResponse:
    c.started("slow request")
    time.sleep(float(request.GET.get("s", "1.5")))
    return _answer(200, c.text(f"slow {c.VERSION}"))


def _sync_items(n: int, pause: float, what: str, item: Callable[[int], bytes]) -> Iterator[bytes]:
    for i in range(n):
        if i:
            time.sleep(pause)
        yield item(i)
        if i == 0:
            c.started(what)


async def _async_items(n: int, pause: float, what: str, item: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    for i in range(n):
        if i:
            await asyncio.sleep(pause)
        yield item(i)
        if i == 0:
            c.started(what)


def _streaming(request: HttpRequest, what: str, content_type: str, item: Callable[[int], bytes]) -> HttpResponse:
    n, pause = c.stream_params(request.META.get("QUERY_STRING", ""))
    make = _async_items if isinstance(request, ASGIRequest) else _sync_items
    return _with_headers(StreamingHttpResponse(make(n, pause, what, item)), content_type)


def stream(request: HttpRequest) -> HttpResponse:
    return _streaming(request, "stream", "text/plain; charset=utf-8", c.chunk)


def sse(request: HttpRequest) -> HttpResponse:
    return _streaming(request, "sse", "text/event-stream", c.sse_event)

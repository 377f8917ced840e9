"""A Flask app (WSGI, adapted by liveswap with a2wsgi); streams are generator Responses: ``kinds.flask_app:app``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from flask import Flask, Response, request, stream_with_context

from . import _common as c

app = Flask(__name__)


def _answer(status: int, body: bytes) -> Response:
    return Response(body, status=status, headers=c.headers())


@app.get("/")
def index() -> Response:
    return _answer(*c.index())


@app.post("/")
def post() -> Response:
    return _answer(200, c.post_body(request.get_data()))


@app.get("/slow")
def slow() -> Response:
    c.started("slow request")
    time.sleep(request.args.get("s", 1.5, type=float))
    return _answer(200, c.text(f"slow {c.VERSION}"))


def _items(what: str, item: Callable[[int], bytes]) -> Iterator[bytes]:
    n = request.args.get("n", c.STREAM_DEFAULTS[0], type=int)
    pause = request.args.get("s", c.STREAM_DEFAULTS[1], type=float)
    for i in range(n):
        if i:
            time.sleep(pause)
        yield item(i)
        if i == 0:
            c.started(what)


@app.get("/stream")
def stream() -> Response:
    return Response(stream_with_context(_items("stream", c.chunk)), headers=c.headers())


@app.get("/sse")
def sse() -> Response:
    return Response(stream_with_context(_items("sse", c.sse_event)), headers=c.headers("text/event-stream"))

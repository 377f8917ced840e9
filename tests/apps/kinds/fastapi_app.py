"""A FastAPI app, streams with StreamingResponse over async generators: ``kinds.fastapi_app:app``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from . import _common as c


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    if c.BEHAVIOUR == "fail-startup":
        raise RuntimeError(f"startup failed in {c.VERSION}")
    yield


app = FastAPI(lifespan=_lifespan, openapi_url=None, docs_url=None, redoc_url=None)


def _answer(status: int, body: bytes) -> Response:
    return PlainTextResponse(body, status_code=status, headers=dict(c.headers()[1:]))


@app.get("/")
async def index() -> Response:
    return _answer(*c.index())


@app.post("/")
async def post(request: Request) -> Response:
    return _answer(200, c.post_body(await request.body()))


@app.get("/slow")
async def slow(s: float = 1.5) -> Response:
    c.started("slow request")
    await asyncio.sleep(s)
    return _answer(200, c.text(f"slow {c.VERSION}"))


async def _items(n: int, pause: float, what: str, item: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    for i in range(n):
        if i:
            await asyncio.sleep(pause)
        yield item(i)
        if i == 0:
            c.started(what)


@app.get("/stream")
async def stream(n: int = c.STREAM_DEFAULTS[0], s: float = c.STREAM_DEFAULTS[1]) -> Response:
    return StreamingResponse(_items(n, s, "stream", c.chunk), headers=dict(c.headers()[1:]), media_type="text/plain")


@app.get("/sse")
async def sse(n: int = c.STREAM_DEFAULTS[0], s: float = c.STREAM_DEFAULTS[1]) -> Response:
    return StreamingResponse(
        _items(n, s, "sse", c.sse_event), headers=dict(c.headers()[1:]), media_type="text/event-stream"
    )

"""A FastAPI app: the shop's router and ``GET /``, which answers the version imported from
``shop.version`` in the body and in an ``x-app-version`` header."""

from __future__ import annotations

from fastapi import FastAPI, Response
from shop.routes import router
from shop.version import VERSION

app = FastAPI(title="devbench shop")
app.include_router(router)


@app.get("/")
async def root(response: Response) -> dict[str, str]:
    response.headers["x-app-version"] = VERSION
    return {"version": VERSION}

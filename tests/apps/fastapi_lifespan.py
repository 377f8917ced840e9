"""A FastAPI app whose lifespan startup raises when the state file says "raise-startup"."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

with open(os.environ["LIVESWAP_TEST_STATE"]) as f:
    VERSION, _, BEHAVIOUR = f.read().strip().partition(" ")


async def connect_db() -> None:
    if BEHAVIOUR == "raise-startup":
        raise RuntimeError("db unreachable")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await connect_db()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def index() -> dict[str, str]:
    return {"version": VERSION}

"""A program that serves with liveswap.serve(); behaviour chosen by $SERVE_MODE (plain, group-fail, wsgi)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import liveswap

MODE = os.environ.get("SERVE_MODE", "plain")
member_should_fail = asyncio.Event()


def blocked_in_known_function_xyz(seconds: float) -> None:
    time.sleep(seconds)  # blocks the event loop on purpose: the debug server must still answer


def spin_known_function_abc(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if "=" in p)
    seconds = float(query.get("s", "1"))
    if path == "/block":
        print("block started", flush=True)
        blocked_in_known_function_xyz(seconds)
    elif path == "/spin":
        print("spin started", flush=True)
        spin_known_function_abc(seconds)
    elif path == "/slow":
        print("slow started", flush=True)
        await asyncio.sleep(seconds)
    elif path == "/fail-member":
        member_should_fail.set()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"{path} done\n".encode()})


def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi ok\n"]


async def failing_member() -> None:
    await member_should_fail.wait()
    raise RuntimeError("member failed on purpose")


if __name__ == "__main__":
    bind = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0"
    debug = os.environ.get("SERVE_DEBUG", "127.0.0.1:0") or None
    header_timeout = float(os.environ.get("SERVE_HEADER_TIMEOUT", "10"))
    if MODE == "group-fail":
        group = liveswap.Group(shutdown_timeout=5)
        group.add(failing_member)
        liveswap.serve(app, bind, debug=debug, group=group, header_timeout=header_timeout)
    elif MODE == "wsgi":
        liveswap.serve(wsgi, bind, debug=debug, header_timeout=header_timeout)
    else:
        liveswap.serve(app, bind, debug=debug, header_timeout=header_timeout)
    print("serve returned", flush=True)

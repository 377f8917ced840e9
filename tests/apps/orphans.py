"""Test app for PID 1 duties: ``GET /orphan`` starts a subprocess that double-forks and exits at
once, so its child is an orphan, re-parented to the nearest subreaper (the supervisor; PID 1 in a
container). The orphan writes its pid and its new parent's pid to a file, then exits: someone must
reap it. The answer is that file's content: ``orphan=PID ppid=PPID``. ``GET /slow?s=N`` answers
after N seconds (a request in flight during a drain); anything else answers ``ok``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

# The subprocess: fork; the parent exits at once; the child waits until it has been re-parented,
# says who it is and who adopted it, and exits.
DOUBLE_FORK = """
import os, sys, time
out = sys.argv[1]
parent = os.getpid()
if os.fork() == 0:
    deadline = time.monotonic() + 5
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.001)
    with open(out + ".tmp", "w") as f:
        f.write(f"orphan={os.getpid()} ppid={os.getppid()}")
    os.rename(out + ".tmp", out)
    os._exit(0)
os._exit(0)
"""


def _make_orphan() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "orphan.txt")
        subprocess.run([sys.executable, "-c", DOUBLE_FORK, out], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while not os.path.exists(out):
            if time.monotonic() > deadline:
                return "the orphan never wrote its file"
            time.sleep(0.002)
        with open(out) as f:
            return f.read()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    if scope["path"] == "/orphan":
        body = await asyncio.to_thread(_make_orphan)
    elif scope["path"] == "/slow":
        print(f"slow request started in pid {os.getpid()}", flush=True)
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 1))
        body = "slow done"
    else:
        body = "ok"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})

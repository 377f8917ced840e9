"""liveswap.serve() with a background task tied to the server's lifetime (run: python examples/serve_with_group.py)."""

import asyncio
import threading

import liveswap

stats = {"requests": 0, "ticks": 0}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    stats["requests"] += 1
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"{stats}\n".encode()})


group = liveswap.Group(shutdown_timeout=10)


@group.task
async def ticker():  # a coroutine member: cancelled when the server stops
    while True:
        await asyncio.sleep(1)
        stats["ticks"] += 1


def reporter(stop: threading.Event):  # a thread member: returns when `stop` is set
    while not stop.wait(5):
        print("served so far:", stats["requests"], flush=True)


group.add(reporter)

if __name__ == "__main__":
    # Ctrl-C drains the server, stops both members, then returns. If a member raises,
    # the server drains and stops too, and serve() raises that error.
    liveswap.serve(app, "127.0.0.1:8000", group=group)

"""The proxy in its own process, driven over stdin/stdout as the supervisor drives it in its loop.

``python proxy_runner.py [--hold-timeout S] [--idle-grace S] [--header-timeout S]`` binds 127.0.0.1:0,
serves a ProxyServer on it and prints ``{"event": "listening", "port": N}``. Then each stdin line is a
JSON command, run in its own task (so a long ``drained`` does not block the others), answered by one
stdout line with its id:

    {"id": 1, "op": "add", "upstream": ["A", "127.0.0.1", 40123]}    -> {"id": 1, "result": null}
    {"id": 2, "op": "switch", "upstreams": [["B", "127.0.0.1", 40124]]}
    {"id": 3, "op": "remove", "upstream": [...]}
    {"id": 4, "op": "drained", "upstream": [...], "timeout": 5}       -> {"id": 4, "result": true}
    {"id": 5, "op": "in_flight", "upstream": [...]}  /  {"op": "held"}
    {"id": 6, "op": "close", "timeout": 5}                             -> answered, then the process exits

A failed command answers ``{"id": N, "error": "..."}``. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from typing import Any

from liveswap.proxy import ProxyApp, ProxyServer, Upstream


def _up(spec: list[Any]) -> Upstream:
    return Upstream(str(spec[0]), str(spec[1]), int(spec[2]))


async def _run(op: str, command: dict[str, Any], app: ProxyApp, server: ProxyServer) -> Any:
    if op == "add":
        app.add(_up(command["upstream"]))
    elif op == "switch":
        app.switch([_up(u) for u in command["upstreams"]])
    elif op == "remove":
        app.remove(_up(command["upstream"]))
    elif op == "drained":
        return await app.drained(_up(command["upstream"]), float(command["timeout"]))
    elif op == "in_flight":
        return app.in_flight(_up(command["upstream"]))
    elif op == "held":
        return app.held
    elif op == "close":
        return await server.close(float(command.get("timeout", 5.0)))
    else:
        raise ValueError(f"unknown op {op!r}")
    return None


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold-timeout", type=float, default=30.0)
    parser.add_argument("--idle-grace", type=float, default=0.5)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    app = ProxyApp(hold_timeout=args.hold_timeout)
    server = ProxyServer([sock], app, idle_grace=args.idle_grace, header_timeout=args.header_timeout)
    await server.start()
    _say({"event": "listening", "port": sock.getsockname()[1]})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(command: dict[str, Any]) -> None:
        try:
            _say({"id": command["id"], "result": await _run(command["op"], command, app, server)})
        except Exception as exc:  # the test sees it as the answer
            _say({"id": command["id"], "error": f"{type(exc).__name__}: {exc}"})
        if command["op"] == "close":
            done.set()

    async def read() -> None:
        while line := await reader.readline():
            task = loop.create_task(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        done.set()  # stdin closed: the test is gone

    reading = loop.create_task(read())
    await done.wait()
    reading.cancel()
    await server.close(2.0)


if __name__ == "__main__":
    asyncio.run(main())

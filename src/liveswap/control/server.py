"""The control socket's server side, in the supervisor: one JSON request per connection.

A unix stream socket ``<runtime dir>/<name>.sock``, mode 0600. Peers with another uid are refused
(SO_PEERCRED). The request is a JSON object on one line, ``{"cmd": "reload"}``; the answer is one
JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "hint": "..."}``. A malformed
request is answered so and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .._os import peer_credentials
from ..errors import ControlError
from .paths import socket_path

__all__ = ["COMMANDS", "ControlServer"]

COMMANDS = ("reload", "stop", "status", "takeover", "upgrade")
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# A takeover speaks more than one line on its connection (``takeover.py``), an upgrade answers before
# it re-executes: they get the connection itself. None: nothing (more) to answer.
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[dict[str, Any] | None]]

log = logging.getLogger("liveswap.control")


class ControlServer:
    """Serves control requests; ``handler`` gets the parsed request and returns the reply."""

    def __init__(self, name: str, handler: Handler, streams: dict[str, StreamHandler] | None = None) -> None:
        self.path = socket_path(name)
        self.handler = handler
        self.streams = dict(streams or {})
        self.server: asyncio.AbstractServer | None = None
        self.bound = False  # the socket file is ours to remove
        self._serving: set[asyncio.Task[Any]] = set()  # requests being answered

    async def start(self) -> None:
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # left by an instance that is gone
            else:
                raise ControlError(
                    f"another liveswap instance named {self.path.stem!r} is running (control socket {self.path})",
                    hint="stop it (liveswap stop --name ...), or give this one another --name",
                )
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
            self.bound = True
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if peer_credentials(sock).uid != os.getuid():
                reply: dict[str, Any] | None = {"ok": False, "error": "permission denied: peer has another uid"}
            else:
                reply = await self._answer(reader, writer)
            if reply is not None:
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._serving.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5.0)
        except (ValueError, asyncio.LimitOverrunError):
            return _malformed(f"longer than {MAX_REQUEST} bytes")
        except TimeoutError:
            return _malformed("no complete line within 5 s")
        try:
            req = json.loads(line)
        except RecursionError:  # e.g. 60,000 nested brackets: the decoder gives up, and so do we
            return _malformed("nested too deeply")
        except (ValueError, UnicodeDecodeError):
            return _malformed("not JSON")
        if not isinstance(req, dict):
            return _malformed(f"expected a JSON object, got {_json_type(req)}")
        cmd = req.get("cmd")
        if not isinstance(cmd, str) or cmd not in COMMANDS:
            # Never echo the value itself: it can be long, or nested deep enough to break repr().
            shown = repr(cmd[:40]) if isinstance(cmd, str) else f"({_json_type(cmd)})"
            return {"ok": False, "error": f"unknown command {shown}", "hint": f"commands: {', '.join(COMMANDS)}"}
        try:
            if cmd in self.streams:
                return await self.streams[cmd](reader, writer)
            if cmd in ("takeover", "upgrade"):
                return {"ok": False, "error": f"this instance does not support {cmd!r}"}
            return await self.handler(req)
        except Exception:
            # A bug on our side: log it with its traceback, and still answer the caller.
            log.exception("internal error answering the control command %r", cmd)
            return {"ok": False, "error": f"internal error answering {cmd!r}; the instance's log has the traceback"}

    def stop_listening(self) -> None:
        """Give the socket file up (a takeover: the new instance binds it); requests being answered
        are still answered."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.bound:
            self.bound = False
            self.path.unlink(missing_ok=True)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop listening; requests being answered (a reload's outcome at a stop) get ``timeout`` to finish."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=timeout)
        if self.bound:  # never another instance's (a takeover's new one, or the one we failed to take over)
            self.bound = False
            self.path.unlink(missing_ok=True)


def _malformed(what: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": f"malformed request: {what}",
        "hint": 'send one JSON object on one line, e.g. {"cmd": "status"}',
    }


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")

"""What uvicorn's HTTP protocols lack and our users need, added by subclassing them.

- Draining without resets: uvicorn's ``shutdown()`` closes an idle keep-alive connection at once,
  which races with a request the client is sending on it (the client sees a reset or an empty
  answer). A draining connection here stays open for ``idle_grace``; a request that arrives is
  answered with ``Connection: close``; only a connection still idle after the grace is closed.
- A header-read timeout: a client that trickles its request line and headers is answered 408 and
  disconnected after ``header_timeout`` (uvicorn has none; Go's ReadHeaderTimeout).
- A header size limit: more than ``max_header_bytes`` before the end of the headers gets 431.

Tested against uvicorn's httptools and h11 protocols (the versions pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HttpToolsProtocol: Any
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None

__all__ = ["Limits", "protocol_class"]


class Limits:
    """Per-server settings and state shared by all connections of one worker."""

    def __init__(self, *, header_timeout: float, max_header_bytes: int, idle_grace: float) -> None:
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.idle_grace = idle_grace
        self.draining = False
        self.slow_clients_cut = 0
        self.oversized_headers = 0


_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\n"
        b"connection: close\r\n\r\nRequest headers not received within limit.")
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 33\r\nconnection: close\r\n\r\nRequest header fields too large.")


class _Guard:
    """The mixin. Relies on uvicorn's attributes: transport, cycle, loop, scope.

    It sits on every request's path, so it keeps per-request work to a few attribute stores: no
    timer per request (the server's once-a-tick ``expire`` sweep enforces the header timeout), and
    the exact header size is only summed when the bytes received could exceed the limit.
    """

    limits: Limits
    scope: Any
    _app: Any
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    _in_headers: bool
    _header_bytes: int
    _head_since: float  # when the head being read started arriving; 0.0 when not reading a head
    _idle_timer: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._in_headers = True
        self._header_bytes = 0
        # The first request's clock starts at accept: a client that connects and says nothing is cut too.
        self._head_since = time.monotonic()
        self._idle_timer = None
        if self.limits.draining:  # accepted just before the listener closed
            self.drain()

    def expire(self, now: float) -> None:
        """Called by the server every tick: answer 408 and close if the head is overdue."""
        since = self._head_since
        if since and now - since > self.limits.header_timeout > 0 and self._in_headers:
            self._head_since = 0.0
            if not self.transport.is_closing():
                self.limits.slow_clients_cut += 1
                self.transport.write(_408)
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._in_headers:  # body bytes of the request being served
            super().data_received(data)  # type: ignore[misc]
            return
        if self._idle_timer is not None:  # a request is arriving on a draining connection: answer it
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self._head_since:
            self._head_since = time.monotonic()
        self._header_bytes += len(data)
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before and self.cycle is not None:
            # The parser finished a request's head.
            self._in_headers = False
            self._header_bytes = 0
            self._head_since = 0.0
            if self.limits.draining:
                self.cycle.keep_alive = False
        elif self._header_bytes > self.limits.max_header_bytes:
            self.limits.oversized_headers += 1
            self._head_since = 0.0
            if not self.transport.is_closing():
                self.transport.write(_431)
                self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._in_headers = True
        self._header_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = 0.0
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def drain(self) -> None:
        """Graceful shutdown of this connection (instead of uvicorn's ``shutdown()``)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # the response in progress says Connection: close
        elif self._in_headers and self._header_bytes > 0:
            pass  # a request is arriving: its headers will set keep_alive = False
        elif self._idle_timer is None and not self.transport.is_closing():
            self._idle_timer = self.loop.call_later(self.limits.idle_grace, self._idle_close)

    def _idle_close(self) -> None:
        self._idle_timer = None
        if not self.transport.is_closing() and self._in_headers and self._header_bytes == 0:
            self.transport.close()

    def shutdown(self) -> None:
        self.drain()

    # uvicorn reads ``self.app`` once per request, right after parsing its head, to start it: the
    # place to refuse a head that arrived whole in one read but is over the limit.
    @property
    def app(self) -> Any:
        if self._header_bytes <= self.limits.max_header_bytes:
            return self._app  # the head is part of what was received: certainly within the limit
        size = len(self.scope.get("raw_path", b"")) + len(self.scope.get("query_string", b"")) + 16
        for name, value in self.scope["headers"]:
            size += len(name) + len(value) + 4
        if size > self.limits.max_header_bytes:
            self.limits.oversized_headers += 1
            return _reject_431
        return self._app

    @app.setter
    def app(self, value: Any) -> None:
        self._app = value


async def _reject_431(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 431,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"Request header fields too large.\n"})


class GuardedH11Protocol(_Guard, H11Protocol):  # type: ignore[misc]
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):  # type: ignore[misc]
        def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limits = limits


def protocol_class(name: str = "auto") -> type[asyncio.Protocol]:
    """Our protocol for ``auto`` (httptools when installed), ``httptools`` or ``h11``."""
    if name in ("auto", "httptools") and HttpToolsProtocol is not None:
        return GuardedHttpToolsProtocol
    if name == "httptools":
        raise RuntimeError("httptools is not installed; pip install httptools, or use h11")
    return GuardedH11Protocol


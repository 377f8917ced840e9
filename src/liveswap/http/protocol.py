"""What uvicorn's HTTP protocols lack and our users need, added by subclassing them.

- Draining that keeps every promise. uvicorn's ``shutdown()`` closes an idle keep-alive connection
  at once, which races with a request the client is sending on it, and closes a connection after
  the response in progress even when that response's head already promised keep-alive (a WSGI
  response or a stream, whose body follows its head by a while): the client's next request meets
  a reset or an EOF. Here, draining marks the *last request received* on each connection: its
  response says ``Connection: close`` if its head has not gone out yet (a pipelined request that
  arrives later takes the mark over, so every request received is answered). A response that
  already promised keep-alive is honoured: after it the connection is treated as idle. An idle
  connection stays open for ``idle_grace``; a request that arrives is answered with
  ``Connection: close``; only a connection still idle after the grace is closed.
- A header-read timeout: a client that trickles its request line and headers is answered 408 and
  disconnected after ``header_timeout`` (uvicorn has none; Go's ReadHeaderTimeout).
- A header size limit: more than ``max_header_bytes`` before the end of the headers gets 431.

Tested against uvicorn's httptools and h11 protocols (the versions pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.flow_control import CLOSE_HEADER
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
        # liveswap dev: a request that arrives while this server drains for a reload is sent to the
        # new code (307 to the same URL on a new connection), not answered by the old code.
        self.redirect_while_draining = False
        self.final = False  # the service is stopping: there is no new code to send anyone to
        self.slow_clients_cut = 0
        self.oversized_headers = 0
        # Responses completed on public connections (not the supervisor's health checks, whose
        # connection has its own Limits): --max-requests reads it. One increment per response, in
        # _Guard.on_response_complete for the ASGI path; the native WSGI path must count here too.
        self.requests = 0


_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\n"
    b"connection: close\r\n\r\nRequest headers not received within limit."
)
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\nRequest header fields too large."
)


class _Guard:
    """The mixin. Relies on uvicorn's attributes: transport, cycle, loop, scope, app and
    timeout_keep_alive_task.

    It sits on every request's path, so it overrides a single per-request method
    (``data_received``) and keeps the work there to a few attribute operations, without even a
    clock read:
    - the header timeout is enforced by the server's once-a-tick ``expire`` sweep, which tells a
      connection reading a request head from uvicorn's own state (no request in progress, and no
      keep-alive timer armed: uvicorn arms it when a response completes and cancels it when the
      next bytes arrive; at accept it is not armed either, so a silent client is cut too);
    - the exact header size is summed only when the bytes received exceed the limit.
    """

    limits: Limits
    scope: Any
    app: Any
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop
    timeout_keep_alive_task: Any
    _base_data_received: Any

    _header_bytes: int  # bytes of the request head being read (0 between requests)
    _head_mark: Any  # the sweep's bookkeeping: the cycle it saw a head being read after ...
    _head_since: float  # ... and since when
    _idle_timer: asyncio.TimerHandle | None
    _close_cycle: Any  # while draining: the request whose response closes the connection

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_bytes = 0
        self._head_mark = None
        self._head_since = time.monotonic()  # the first request's clock starts at accept
        self._idle_timer = None
        self._close_cycle = None
        if self.limits.draining:  # accepted just before the listener closed
            self.drain()

    def _reading_head(self) -> bool:
        cycle = self.cycle
        if cycle is not None and (not cycle.response_complete or cycle.more_body):
            return False  # a request is being served (or its body is still arriving)
        return self.timeout_keep_alive_task is None  # not idle between requests either

    def expire(self, now: float) -> None:
        """Called by the server every tick: answer 408 and close if a request head is overdue."""
        if not self._reading_head() or self.transport.is_closing():
            self._head_mark = False  # nothing to time; the next head starts a new clock
            return
        if self._head_mark is not self.cycle:  # a new head since the last tick: start its clock
            if self._head_mark is not None or self.cycle is not None:
                self._head_since = now
            self._head_mark = self.cycle
        if now - self._head_since > self.limits.header_timeout:
            self.limits.slow_clients_cut += 1
            self.transport.write(_408)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and (not cycle.response_complete or cycle.more_body):
            # Body bytes of the request being served, or pipelined requests behind it.
            self._base_data_received(data)
            if self.cycle is not cycle and self.limits.draining:
                self._close_after(self.cycle)
            return
        size = self._header_bytes + len(data)
        if size > self.limits.max_header_bytes:
            self._oversized(data, size, cycle)
            return
        self._header_bytes = size
        self._base_data_received(data)
        if self.cycle is not cycle:  # the parser finished a request's head
            self._header_bytes = 0
            if self.limits.draining:
                self._close_after(self.cycle)

    def _oversized(self, data: bytes, size: int, cycle: Any) -> None:
        # Rare: the head may be over the limit. uvicorn reads self.app to start the request once
        # the head is parsed; let it find the exact size check there for this one read.
        app = self.app
        self.app = _HeadCheck(app, self.limits)
        try:
            self._base_data_received(data)
        finally:
            self.app = app
        if self.cycle is not cycle:
            self._header_bytes = 0
            if self.limits.draining:
                self._close_after(self.cycle)
        elif not self.transport.is_closing():  # still no end of the head in sight
            self.limits.oversized_headers += 1
            self.transport.write(_431)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        self.limits.requests += 1
        cycle = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        if self.limits.draining:
            if self.cycle is not cycle and self.cycle is not None:
                self._close_after(self.cycle)  # h11 parses a pipelined request only now
            self._arm_idle()

    def drain(self) -> None:
        """Graceful shutdown of this connection (instead of uvicorn's ``shutdown()``)."""
        if self.limits.redirect_while_draining and not self.limits.final and not isinstance(self.app, _ToNewCode):
            self.app = _ToNewCode(self.app)  # for requests from now on; those received keep theirs
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._close_after(cycle)  # the last request received (self.cycle is the newest one)
        elif not self._header_bytes:  # else a request is arriving: its head takes the mark
            self._arm_idle()

    def _close_after(self, cycle: Any) -> None:
        """Make ``cycle`` the last request answered on this connection: its response says
        ``Connection: close``. A request that arrives behind it (pipelined) takes the mark over, so
        that no request received goes unanswered. A response whose head already went out promised
        keep-alive: it is honoured, and the connection is treated as idle after it."""
        marked = self._close_cycle
        if marked is cycle:
            return
        if marked is not None and not marked.response_started:
            self._set_keep_alive(marked, True)
        self._close_cycle = None
        if not cycle.response_started and cycle.keep_alive:
            self._set_keep_alive(cycle, False)
            self._close_cycle = cycle

    def _set_keep_alive(self, cycle: Any, keep_alive: bool) -> None:
        cycle.keep_alive = keep_alive

    def _arm_idle(self) -> None:
        if self._idle_timer is None and not self.transport.is_closing():
            self._idle_timer = self.loop.call_later(self.limits.idle_grace, self._idle_close)

    def _idle_close(self) -> None:
        # Close only if still idle: a request that arrived in the grace period is being answered
        # with Connection: close, which closes the connection after its response.
        self._idle_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or self._header_bytes:
            return
        if cycle is None or (cycle.response_complete and not cycle.more_body):
            self.transport.close()
        elif cycle.response_complete:  # an early response; the request body is still arriving
            self._arm_idle()

    def shutdown(self) -> None:
        self.drain()


class _ToNewCode:
    """The app as seen by requests that arrive while a dev server drains: 307 to the same URL. The
    answer closes the connection, so the client follows it on a new one, which reaches the new code."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(b"location", target), (b"content-length", b"0"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class _HeadCheck:
    """The app as seen by a request whose head might exceed the limit: 431, or the real app."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    def too_large(self, target: int, headers: Any) -> bool:
        """Whether a head with a request target of ``target`` bytes and these headers is over the
        limit (counted as they came: the request line's framing plus ``name: value\r\n`` each)."""
        return target + 16 + sum(len(name) + len(value) + 4 for name, value in headers) > self.limits.max_header_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        if not self.too_large(target, scope.get("headers", ())):
            await self.app(scope, receive, send)
            return
        self.limits.oversized_headers += 1
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": b"Request header fields too large.\n"})


class GuardedH11Protocol(_Guard, H11Protocol):  # type: ignore[misc]
    _base_data_received = H11Protocol.data_received

    def _set_keep_alive(self, cycle: Any, keep_alive: bool) -> None:
        # uvicorn's h11 cycle sends no Connection: close for keep_alive = False; it does send one
        # when the request asked for it, so that is where the decision goes.
        cycle.keep_alive = keep_alive
        headers = cycle.scope["headers"]
        if keep_alive and CLOSE_HEADER in headers:
            headers.remove(CLOSE_HEADER)
        elif not keep_alive and CLOSE_HEADER not in headers:
            headers.append(CLOSE_HEADER)

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):  # type: ignore[misc]
        _base_data_received = HttpToolsProtocol.data_received

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

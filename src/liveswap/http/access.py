"""The access log: one line per request answered, with its duration.

uvicorn's own access log has no duration and is written when the response *starts*. Ours is written
when the response is complete, on the ``liveswap.access`` logger at INFO, as text::

    127.0.0.1:51234 - "GET /items?page=2 HTTP/1.1" 200 1.42ms

and with ``--log-format json`` the same fields as keys (``client``, ``method``, ``path``, ``query``,
``http_version``, ``status``, ``duration_ms``). Any server layer can write it through
:class:`AccessLog` (the ASGI path through :meth:`AccessLog.wrap`); the supervisor's health checks
arrive on a private connection that is served without it, so they never appear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["AccessLog", "client_text"]

_log = logging.getLogger("liveswap.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class AccessLog:
    """Writes access log lines when ``enabled``; ``log`` is cheap to call, ``wrap`` costs nothing when off.

    Example::

        access = AccessLog(enabled=True)
        access.log("127.0.0.1:5000", "GET", "/", "", "1.1", 200, 0.0012)
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def log(
        self, client: str, method: str, path: str, query: str, http_version: str, status: int, duration: float
    ) -> None:
        """One request: ``client`` as ``host:port`` (``-`` when unknown), ``query`` without the ``?``,
        ``duration`` in seconds (from the request head received to the response complete)."""
        if not self.enabled:
            return
        ms = round(duration * 1000, 3)
        target = f"{path}?{query}" if query else path
        _log.info(
            '%s - "%s %s HTTP/%s" %d %.2fms',
            client,
            method,
            target,
            http_version,
            status,
            ms,
            extra={
                "client": client,
                "method": method,
                "path": path,
                "query": query,
                "http_version": http_version,
                "status": status,
                "duration_ms": ms,
            },
        )

    def wrap(self, app: Any) -> Any:
        """``app`` with an ASGI middleware that logs each HTTP request, or ``app`` itself when disabled
        (so the access log costs nothing when it is off)."""
        return _Logged(app, self) if self.enabled else app


def client_text(scope: Scope) -> str:
    """The ASGI scope's client as ``host:port`` (``[v6]:port``), or ``-`` (a unix socket)."""
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Logged:
    """Measures from the app's call (the moment uvicorn has the request head) to the last body
    message sent; the status is the one the app sent (500 if it raised before starting a response,
    as uvicorn then answers)."""

    def __init__(self, app: Any, access: AccessLog) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        done = False

        def write(code: int) -> None:
            nonlocal done
            done = True
            # The scope's client is read now, after uvicorn's proxy-headers middleware may have set it.
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            self.access.log(
                client_text(scope),
                scope.get("method", "-"),
                path,
                query,
                scope.get("http_version", "1.1"),
                code,
                time.perf_counter() - start,
            )

        async def logged_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False) and not done:
                write(status)

        try:
            await self.app(scope, receive, logged_send)
        except BaseException:
            if not done:
                write(status or 500)
            raise
        if not done:  # the app returned without completing its response
            write(status or 500)

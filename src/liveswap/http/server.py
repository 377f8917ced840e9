"""One worker's HTTP server: uvicorn's protocols on sockets we are given, with our lifecycle.

Unlike ``uvicorn.Server`` it separates the steps liveswap needs apart: start the app (lifespan),
answer a private health check, start accepting on the public sockets only when told (``go``),
and drain without dropping anything (``drain``). Both ``liveswap run`` workers and
``liveswap.serve()`` use it, so every protection holds in both.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from ..sockets import accept_queued
from .access import AccessLog
from .lifespan import Lifespan, StartupFailed
from .protocol import Limits, protocol_class

__all__ = ["StartupFailed", "WorkerServer"]

log = logging.getLogger("liveswap.worker")


class WorkerServer:
    """Serves an ASGI 3 app with uvicorn's protocols on given listening sockets."""

    def __init__(
        self,
        app: Callable[..., Any],
        sockets: Sequence[socket.socket],
        *,
        lifespan: Any = "auto",
        keepalive_timeout: float = 5.0,
        header_timeout: float = 10.0,
        max_header_bytes: int = 65536,
        idle_grace: float = 1.0,
        max_connections: int = 0,
        access_log: bool = False,
        http: str = "auto",
        proxy_headers: bool = True,
        forwarded_allow_ips: str | None = None,
        redirect_while_draining: bool = False,
        server_header: bool = True,
        date_header: bool = True,
        root_path: str = "",
        threads: int = 1,
        stall_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sockets = list(sockets)
        self.ssl_context = ssl_context  # TLS on the public sockets (liveswap run --certfile)
        # A client that never completes its TLS handshake is cut off like one that never sends its head.
        self._handshake_timeout = (header_timeout or 60.0) if ssl_context else None
        self.limits = Limits(header_timeout=header_timeout, max_header_bytes=max_header_bytes, idle_grace=idle_grace)
        self.limits.redirect_while_draining = redirect_while_draining
        self.config = uvicorn.Config(
            app,
            interface="asgi3",
            lifespan=lifespan,
            log_config=None,
            access_log=False,  # ours (http/access.py) has the duration and skips the health checks
            timeout_keep_alive=int(keepalive_timeout) if keepalive_timeout >= 1 else 1,
            limit_concurrency=max_connections or None,
            http=protocol_class(http),
            h11_max_incomplete_event_size=max_header_bytes + 1024,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips or None,  # None: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1
            root_path=root_path,
            # A proxy passes on the upstream's own Server and Date headers: ours would duplicate them.
            server_header=server_header,
            date_header=date_header,
        )
        self.config.timeout_keep_alive = keepalive_timeout  # type: ignore[assignment]  # a float works
        self.config.load()
        # The access log wraps the app (with proxy headers applied) only when it is on; the private
        # health connection and the lifespan get the app without it.
        self.access = AccessLog(access_log)
        self.health_app = self.config.loaded_app
        self.config.loaded_app = self.access.wrap(self.health_app)
        self.state = ServerState()
        # A WSGI app as load_app gives it (not wrapped in ASGI middleware): the native WSGI path.
        self.wsgi = _native_wsgi(app, self.config, threads, root_path, proxy_headers, self.access, stall_timeout)
        self.lifespan = Lifespan(self.health_app, "off" if self.wsgi is not None else lifespan)
        self.servers: list[asyncio.AbstractServer] = []
        self._adopting: set[asyncio.Task[Any]] = set()  # queued connections accepted at a final stop
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by startup()
        self.started_at = time.monotonic()

    def _protocol(self, _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        cls: Any = self.config.http_protocol_class
        extra = {"wsgi": self.wsgi} if self.wsgi is not None else {}
        proto: asyncio.Protocol = cls(
            config=self.config,
            server_state=self.state,
            app_state=self.lifespan.state,
            _loop=_loop or self._loop,  # (uvicorn would ask get_event_loop() per connection: a getpid())
            limits=self.limits,
            **extra,
        )
        return proto

    async def startup(self) -> None:
        """Run the app's lifespan startup; raises StartupFailed."""
        self._refresh_headers()
        self._loop = asyncio.get_running_loop()
        self._ticker = self._loop.create_task(self._tick())
        await self.lifespan.startup()

    def _refresh_headers(self) -> None:
        date = [(b"date", formatdate(time.time(), usegmt=True).encode())] if self.config.date_header else []
        self.state.default_headers = date + self.config.encoded_headers

    async def _tick(self) -> None:
        # Once a second (more often for short header timeouts): the Date header, and the sweep that
        # cuts off clients whose request head is overdue (cheaper than a timer per request).
        timeout = self.limits.header_timeout
        interval = min(1.0, max(0.05, timeout / 4)) if timeout > 0 else 1.0
        last_date = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - last_date >= 1.0:
                self._refresh_headers()
                last_date = now
            if timeout > 0:
                for conn in list(self.state.connections):
                    expire = getattr(conn, "expire", None)
                    if expire is not None:
                        expire(now)

    async def serve_connection(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve one already-connected socket (the supervisor's private health channel), over TLS with
        ``ssl_context`` (then this returns once the handshake is done)."""
        loop = asyncio.get_running_loop()

        def unlogged() -> asyncio.Protocol:  # health checks never appear in the access log ...
            proto = self._protocol()
            proto.app = _HealthCheck(self.health_app)  # type: ignore[attr-defined]  # ... nor in the metrics
            proto.limits = copy.copy(self.limits)  # type: ignore[attr-defined]  # ... nor count for --max-requests
            return proto

        await loop.connect_accepted_socket(unlogged, sock, ssl=ssl_context)

    async def go(self) -> None:
        """Start accepting on the public sockets."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            server = await loop.create_server(
                self._protocol,
                sock=sock,
                backlog=2048,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self._handshake_timeout,
            )
            self.servers.append(server)

    @property
    def busy(self) -> bool:
        return bool(self.state.connections or self.state.tasks or self._adopting)

    def stop_accepting(self, final: bool = False) -> None:
        """Close our listeners and start draining every connection (idempotent).

        ``final``: the service is stopping and this process may be the last holder of the listening
        sockets; connections still queued in the kernel would be reset when it closes them, so they
        are accepted first and answered like any other connection of a draining server.
        """
        if self.limits.draining:
            return
        self.limits.draining = True
        self.limits.final = final
        if final:
            accept_queued(self.sockets, self._protocol, self._adopting, self.ssl_context)
        # close() closes only this process's copy of each listening socket: the supervisor and the
        # other generation still hold theirs, so queued connections are not lost.
        for server in self.servers:
            server.close()
        for conn in list(self.state.connections):
            conn.shutdown()  # ours drain gently; uvicorn's WebSocket protocols close with 1012

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let in-flight requests finish; True if everything finished within ``timeout``."""
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.busy:
            log.error(
                "drain timeout: %d connection(s) and %d request(s) still open after %.1f s",
                len(self.state.connections),
                len(self.state.tasks),
                timeout,
            )
            for task in list(self.state.tasks):
                task.cancel()
            return False
        return True

    async def shutdown(self) -> None:
        """The app's lifespan shutdown, after draining."""
        if self._ticker is not None:
            self._ticker.cancel()
        await self.lifespan.shutdown()
        if self.wsgi is not None:
            self.wsgi.close()


def _native_wsgi(
    app: Any, config: uvicorn.Config, threads: int, root_path: str, proxy_headers: bool, access: Any, stall: float
) -> Any:
    """The WSGIRunner for a WSGI app served natively (httptools' parser), else None."""
    from .wsgi import NativeWSGI

    metrics = None
    # The debug server's request metrics, counted natively. (Its module is loaded whenever an app
    # can be wrapped in its middleware: a worker without the debug server need not import it.)
    debug_metrics = sys.modules.get("liveswap.debug.metrics")
    if debug_metrics is not None and isinstance(app, debug_metrics.MetricsMiddleware):
        if isinstance(app.app, NativeWSGI):
            metrics, app = app.metrics, app.app
    if not isinstance(app, NativeWSGI):
        return None
    from . import protocol

    if config.http_protocol_class is not getattr(protocol, "GuardedHttpToolsProtocol", None):
        return None  # h11 (--http h11, or httptools not installed): the app's ASGI face (a2wsgi) serves it
    from .wsgi_protocol import GuardedWSGIProtocol, WSGIRunner

    config.http_protocol_class = GuardedWSGIProtocol
    config.ws_protocol_class = None  # WSGI has no WebSockets: an upgrade request is a plain request
    return WSGIRunner(
        app,
        threads=threads,
        root_path=root_path,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=config.forwarded_allow_ips,
        access=access,
        metrics=metrics,
        stall_timeout=stall,
    )


class _HealthCheck:
    """The app as the supervisor's health check reaches it: its scope says so (``liveswap.health``),
    so that ``MetricsMiddleware`` does not count it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["liveswap.health"] = True
        await self.app(scope, receive, send)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (as uvicorn picks it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def warm_up() -> None:
    """Import everything a worker imports lazily (protocols, websockets, lifespan, a2wsgi, uvloop),
    so that the template process has it all before it forks."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    WorkerServer(app, [])
    import importlib

    for name in ("a2wsgi", "uvloop", "httptools"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass

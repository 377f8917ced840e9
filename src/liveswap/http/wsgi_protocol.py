"""The native WSGI path's protocol: uvicorn's httptools parser with our guards, no ASGI in between.

``GuardedWSGIProtocol`` is ``GuardedHttpToolsProtocol`` (the same parser, header timeout, 431,
connection limit, keep-alive and the drain that keeps every promise, from ``protocol.py``) with
the request cycle replaced: instead of an ASGI task per request, a :class:`~.wsgi_cycle.WSGICycle`
collects the body in the loop and calls the app once it is complete.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .protocol import _431, _Guard, _HeadCheck, _ToNewCode
from .wsgi import NativeWSGI, environ_base, header_key, path_info
from .wsgi_cycle import WSGICycle

__all__ = ["GuardedWSGIProtocol", "WSGIRunner"]


async def _capture(scope: Any, receive: Any, send: Any) -> None:
    return None


class WSGIRunner:
    """What the connections of one server share: the app, the thread pool, the trusted proxies."""

    def __init__(
        self,
        app: NativeWSGI,
        *,
        threads: int = 1,
        root_path: str = "",
        proxy_headers: bool = True,
        forwarded_allow_ips: str | list[str] | None = None,
        access: Any = None,
        metrics: Any = None,
        stall_timeout: float = 30.0,
    ) -> None:
        self.app = app.app
        self.asgi_paths = app.asgi_paths  # (raw path -> ASGI app: served by uvicorn's own cycle)
        self.access = access if access is not None and access.enabled else None
        self.metrics = metrics  # the debug server's Metrics (liveswap.debug), when it runs
        self.stall_timeout = stall_timeout  # a client that reads nothing of a response this long is cut off
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="liveswap-wsgi") if threads > 1 else None
        # --threads 1: the request whose response streams from the stream thread, and the requests
        # waiting for it to end (one request at a time, as gunicorn's sync worker).
        self.streaming: Any = None
        self.waiting: deque[Any] = deque()
        self._stream_pool: ThreadPoolExecutor | None = None
        self.root_path = root_path.rstrip("/")
        trusted = forwarded_allow_ips if forwarded_allow_ips is not None else "127.0.0.1"
        self.proxy = ProxyHeadersMiddleware(_capture, trusted_hosts=trusted) if proxy_headers else None

    def forwarded(self, client: Any, scheme: str, headers: list[tuple[bytes, bytes]]) -> tuple[Any, str]:
        """(client, scheme) as uvicorn's ProxyHeadersMiddleware sets them: it is run as it is (it
        awaits nothing before calling its app), so both paths trust the same hosts the same way."""
        scope: dict[str, Any] = {"type": "http", "client": client, "scheme": scheme, "headers": headers}
        coro = self.proxy(scope, None, None)  # type: ignore[misc,arg-type]
        try:
            coro.send(None)
        except StopIteration:
            return scope["client"], scope["scheme"]
        coro.close()  # pragma: no cover - a future uvicorn whose middleware awaits
        return client, scheme

    def stream_pool(self) -> ThreadPoolExecutor:
        if self._stream_pool is None:
            self._stream_pool = ThreadPoolExecutor(1, thread_name_prefix="liveswap-stream")
        return self._stream_pool

    def next_waiting(self) -> None:
        """The stream ended: the requests that waited run, in order, until one streams again."""
        while self.waiting and self.streaming is None:
            cycle = self.waiting.popleft()
            if not cycle.disconnected and not cycle.response_complete:
                cycle.run()

    def close(self) -> None:
        for pool in (self.pool, self._stream_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\n"
    b"connection: close\r\n\r\nService Unavailable"
)
_307 = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedWSGIProtocol(_Guard, HttpToolsProtocol):
    _base_data_received = HttpToolsProtocol.data_received
    cycle: Any

    def __init__(self, *args: Any, limits: Any, wsgi: WSGIRunner, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.runner = wsgi
        self.plain_app = self.app  # the guards swap self.app for a wrapper in the rare cases
        self.writer: Any = None  # a response waiting for the transport to take more

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        base = environ_base(self.server, self.runner.root_path, self.runner.pool is not None)
        base["wsgi.url_scheme"] = self.scheme
        if self.client:
            base["REMOTE_ADDR"] = self.client[0]
            base["REMOTE_PORT"] = str(self.client[1])
        else:  # a Unix socket
            base["REMOTE_ADDR"] = ""
        self.base = base
        # The access log and the metrics, never for the supervisor's health checks (another app).
        public = self.app is self.plain_app
        self.access = self.runner.access if public else None
        self.metrics = self.runner.metrics if public else None

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if type(cycle) is WSGICycle and not cycle.response_complete:
            cycle.lost()
        pipelined = list(self.pipeline)
        self.pipeline.clear()
        for entry, _ in pipelined:
            queued: Any = entry
            if type(queued) is WSGICycle:
                queued.lost()
            else:
                queued.disconnected = True

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return  # pipelined behind a response that closed the connection: never started
        if self.runner.asgi_paths:
            beside = self.runner.asgi_paths.get(self.url.partition(b"?")[0])
            if beside is not None:
                self._asgi_request(beside)
                return
        parser = self.parser
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        url = httptools.parse_url(self.url)
        environ = self.base.copy()
        environ["REQUEST_METHOD"] = method
        environ["SERVER_PROTOCOL"] = "HTTP/" + version
        environ["PATH_INFO"] = path_info(url.path, self.runner.root_path)
        environ["QUERY_STRING"] = url.query.decode("latin-1") if url.query else ""
        proxied = False
        for name, value in self.headers:
            key = header_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ:
                if key[0] == "H" or key[0] == "C":  # a repeated header; SERVER_* etc. cannot be named
                    environ[key] += ", " + text
            else:
                environ[key] = text
            if name.startswith(b"x-forwarded-"):
                proxied = True
        if proxied and self.runner.proxy is not None:
            client, scheme = self.runner.forwarded(self.client, self.scheme or "http", self.headers)
            if client:
                environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1] or 0)
            environ["wsgi.url_scheme"] = scheme
        keep_alive = version != "1.0" and parser.should_keep_alive()
        cycle = WSGICycle(self, environ, keep_alive, self.expect_100_continue)
        special = None
        app = self.app
        if app is not self.plain_app:
            if isinstance(app, _HeadCheck):
                if app.too_large(len(self.url), self.headers):
                    self.limits.oversized_headers += 1
                    special = _431
            elif isinstance(app, _ToNewCode):  # dev: what reaches old code while it drains goes to the new
                special = _307 % self.url  # the request target as it came
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            special = _503
        cycle.special = special
        if self.access is not None or self.metrics is not None:
            cycle.started = time.perf_counter()
            if self.metrics is not None:
                self.metrics._in_flight += 1
        existing = self.cycle
        self.cycle = cycle
        if self.limits.draining:
            self._close_after(cycle)  # before the app runs: its response says Connection: close
        if existing is None or existing.response_complete:
            cycle.activate()
        else:  # pipelined behind a response in progress
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]  # ours, not an ASGI cycle

    def _asgi_request(self, app: Any) -> None:
        """A request for a path served by an ASGI app beside the WSGI app: uvicorn's own cycle."""
        self.scope = {  # as uvicorn's on_message_begin makes it (ours skips that for WSGI requests)
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        wsgi_app, self.app = self.app, app
        try:
            HttpToolsProtocol.on_headers_complete(self)
        finally:
            self.app = wsgi_app
        if self.limits.draining:
            self._close_after(self.cycle)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is not None:  # an ASGI request pipelined behind another
            HttpToolsProtocol._start_asgi_task(self, cycle, app)
            return
        # The next pipelined request, once the one before it completed: started on the next turn of
        # the loop rather than inside that completion (no recursion through a long pipeline).
        self.loop.call_soon(cycle.activate)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not WSGICycle:
            HttpToolsProtocol.on_body(self, body)
        elif not cycle.response_complete:
            cycle.feed(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not WSGICycle:
            HttpToolsProtocol.on_message_complete(self)
            return
        if cycle.response_complete or not cycle.more_body:
            return
        cycle.more_body = False
        if not cycle.active:
            return
        if self.limits.draining:
            # Requests pipelined behind this one in the same read are parsed first, so the last of
            # them takes the Connection: close mark (protocol.py) and every one is answered.
            self.loop.call_soon(cycle.run)
        else:
            cycle.run()

    def record(self, cycle: Any) -> None:
        """A response completed: the access log line and the debug metrics, when they are on."""
        env = cycle.environ
        code = cycle.code or 500
        duration = time.perf_counter() - cycle.started
        if self.metrics is not None:
            self.metrics.request_done(env["REQUEST_METHOD"], code, duration)
        if self.access is not None:
            client = f"{env['REMOTE_ADDR']}:{env.get('REMOTE_PORT', '')}" if env["REMOTE_ADDR"] else "-"
            path = env["SCRIPT_NAME"] + env["PATH_INFO"]
            version = env["SERVER_PROTOCOL"][5:]
            self.access.log(client, env["REQUEST_METHOD"], path, env["QUERY_STRING"], version, code, duration)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer()

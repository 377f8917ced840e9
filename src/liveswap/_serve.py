"""``liveswap.serve(app)``: a drop-in for ``uvicorn.run`` with safe defaults and a clean shutdown.

It uses the same worker runtime as ``liveswap run`` workers (``worker/server.py``), so the header
timeout, header size limit, drain behaviour and metrics are the same in both.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

from . import notify
from ._log import setup_logging
from .config import option
from .errors import ConfigError
from .group import Group
from .http.app import detect_interface, load_app
from .http.server import StartupFailed, WorkerServer, new_event_loop
from .http.wsgi import NativeWSGI
from .sockets import Listener, bind_all, close_all, describe, inherit_listen_fds

__all__ = ["serve"]

log = logging.getLogger("liveswap.serve")  # the public name, not the module's

DEFAULT_DEBUG = "127.0.0.1:6060"


def serve(
    app: Any,
    bind: str | Sequence[str] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    factory: bool = False,
    interface: str = "auto",
    header_timeout: float | str | None = None,
    keepalive_timeout: float | str | None = None,
    max_header_bytes: int | None = None,
    max_connections: int | None = None,
    shutdown_timeout: float | str | None = None,
    idle_grace: float | str | None = None,
    debug: str | None = DEFAULT_DEBUG,
    debug_token: str | None = None,
    debug_allow_public: bool = False,
    group: Group | None = None,
    log_level: str | None = "info",
    access_log: bool = False,
    lifespan: str = "auto",
    log_format: str = "text",
    log_config: str | None = None,
    proxy_headers: bool = True,
    forwarded_allow_ips: str | None = None,
    root_path: str = "",
    server_header: bool = True,
    date_header: bool = True,
    threads: int = 1,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then drain and return.

    ``app`` is an ASGI or WSGI application (WSGI is detected and adapted), or an import string
    ``"module:attr"``. Standalone it binds ``bind`` (default ``127.0.0.1:8000``; ``host``/``port``
    are accepted like ``uvicorn.run``); started by systemd socket activation or by a liveswap
    supervisor in command mode, it takes the inherited sockets (``LISTEN_FDS``) and reports
    ``READY=1`` on ``NOTIFY_SOCKET``.

    Durations (``header_timeout``, ``keepalive_timeout``, ``shutdown_timeout``, ``idle_grace``) take
    seconds or the CLI's strings (``"500ms"``, ``"5s"``, ``"2m"``); every limit is checked as the CLI
    checks its option, and a bad value raises ConfigError before anything is bound.

    A WSGI app is served natively (see ``liveswap run --threads``): ``threads=1`` calls it in the
    event loop's thread, one request at a time; ``threads=N`` in a pool of N threads.

    Behind a proxy, ``proxy_headers``, ``forwarded_allow_ips``, ``root_path``, ``server_header`` and
    ``date_header`` mean what they mean to ``uvicorn.run`` (and ``liveswap run``'s flags of the same
    names); ``log_format`` (``"text"`` or ``"json"``) and ``log_config`` (a file) too.

    The debug server (stacks, profile, heap, stats, metrics) listens on ``debug``, loopback-only
    unless ``debug_allow_public``; ``debug=None`` turns it off. ``group`` runs background tasks
    whose lifetime is tied to the server's: the first error among them is raised here.

    Example::

        import liveswap
        from myapp import app

        if __name__ == "__main__":
            liveswap.serve(app, "127.0.0.1:8000")
    """
    # Checked as the CLI checks its options, before logging is set up or anything is bound.
    limits = dict(
        keepalive_timeout=_checked("keepalive_timeout", keepalive_timeout),
        header_timeout=_checked("header_timeout", header_timeout),
        max_header_bytes=_checked("max_header_bytes", max_header_bytes),
        max_connections=_checked("max_connections", max_connections),
        idle_grace=_checked("idle_grace", idle_grace),
    )
    drain_timeout = _checked("drain_timeout", shutdown_timeout, arg="shutdown_timeout")
    interface = _checked("interface", interface)
    threads = _checked("threads", threads)
    if log_level is not None:
        log_level = _checked("log_level", log_level)
    log_format = _checked("log_format", log_format)
    http = dict(
        proxy_headers=proxy_headers,
        forwarded_allow_ips=_checked("forwarded_allow_ips", forwarded_allow_ips),
        root_path=_checked("root_path", root_path),
        server_header=server_header,
        date_header=date_header,
    )
    binds = [bind] if isinstance(bind, str) else list(bind or [])
    if host is not None or port is not None:
        h = host or "127.0.0.1"
        binds.append(f"[{h}]:{port or 8000}" if ":" in h else f"{h}:{port or 8000}")
    if log_level is not None:
        setup_logging(log_level, "serve", log_format=log_format, log_config=_checked("log_config", log_config))
    if isinstance(app, str):
        asgi, kind = load_app(app, factory=factory, interface=interface)
    else:
        if factory:
            app = app()
        kind = detect_interface(app) if interface == "auto" else interface
        asgi = NativeWSGI(app) if kind == "wsgi" else app
    metrics = None
    if debug:  # requests are counted for the debug server's /metrics; without it, nothing to pay for
        from .debug import Metrics, MetricsMiddleware

        metrics = Metrics()
        asgi = MetricsMiddleware(asgi, metrics)
    listeners = inherit_listen_fds(os.environ)
    if listeners is None:
        listeners = bind_all(binds or option("bind").default)
    runtime = _Runtime(
        asgi,
        kind,
        listeners,
        metrics,
        group,
        dict(limits, **http, access_log=access_log, lifespan=lifespan, threads=threads),
        shutdown_timeout=drain_timeout,
        debug=(debug, debug_token, debug_allow_public),
    )
    try:
        runtime.run()
    finally:
        close_all(listeners)


def _checked(name: str, value: Any, arg: str = "") -> Any:
    """``value`` parsed as the CLI parses the option ``name`` (same strings, same bounds); None: its default."""
    opt = option(name)
    if value is None:
        return copy.deepcopy(opt.default)
    try:
        return opt.parse(value)
    except (ValueError, TypeError) as exc:
        hint = getattr(exc, "hint", None) or f"{arg or name}: {opt.help}"
        raise ConfigError(f"serve({arg or name}={value!r}): {exc}", hint=hint) from None


class _Runtime:
    def __init__(
        self,
        app: Any,
        kind: str,
        listeners: list[Listener],
        metrics: Any,
        group: Group | None,
        options: dict[str, Any],
        shutdown_timeout: float,
        debug: tuple[str | None, str | None, bool],
    ) -> None:
        self.app = app
        self.kind = kind
        self.listeners = listeners
        self.metrics = metrics
        self.group = group
        self.options = options
        self.shutdown_timeout = shutdown_timeout
        self.debug = debug
        self.stop: asyncio.Event | None = None
        self.signals = 0

    def run(self) -> None:
        loop = new_event_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        debug_server = None
        try:
            debug_server = self._start_debug(loop)
            for sig in previous:
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.run_until_complete(self._main())
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)
            if debug_server is not None:
                debug_server.stop()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _start_debug(self, loop: asyncio.AbstractEventLoop) -> Any:
        address, token, allow_public = self.debug
        if not address:
            return None
        from .debug import DebugServer, bind_debug
        from .debug.errors import DebugAddressInUseError, DebugBindError

        try:
            sock: socket.socket = bind_debug(address, allow_public=allow_public)
        except DebugAddressInUseError as exc:
            if address == DEFAULT_DEBUG:
                log.warning("debug server not started: %s (pass debug=... to choose another address)", exc)
                return None
            raise ConfigError(str(exc), hint=exc.hint) from None
        except DebugBindError as exc:
            raise ConfigError(str(exc), hint=exc.hint) from None
        server = DebugServer(sock, metrics=self.metrics, main_loop=loop, token=token or None)
        server.start()
        log.info("debug server on http://%s/", server.address)
        return server

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: draining (send it again to stop at once)", signal.Signals(sig).name)
            notify.notify(STOPPING=1)
            if self.group is not None:
                self.group.request_stop(f"signal {signal.Signals(sig).name}")
            elif self.stop is not None:
                self.stop.set()
        else:
            log.warning("second signal: stopping now, cancelling in-flight requests")
            for task in asyncio.all_tasks():
                task.cancel()

    async def _main(self) -> None:
        server = WorkerServer(self.app, [x.sock for x in self.listeners], **self.options)
        try:
            await server.startup()
        except StartupFailed as exc:
            raise ConfigError(str(exc), hint=exc.detail or None) from None

        async def main(stop: asyncio.Event) -> None:
            self.stop = stop
            await server.go()
            where = ", ".join(describe(x.sock) for x in self.listeners)
            log.info("serving %s app on %s", self.kind, where)
            notify.notify(READY=1, STATUS=f"serving on {where}")
            if self.signals and self.group is None:
                stop.set()
            await stop.wait()
            server.stop_accepting(final=True)  # we hold the only copy: answer what is queued first
            clean = await server.drain(self.shutdown_timeout)
            await server.shutdown()
            log.info("stopped%s", "" if clean else " (requests cut at the shutdown timeout)")

        if self.group is not None:
            await self.group.run(main)
        else:
            await main(asyncio.Event())

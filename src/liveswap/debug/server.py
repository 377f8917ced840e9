"""The debug server: uvicorn on its own daemon thread and its own (plain asyncio) event loop.

The app's event loop may be blocked by synchronous code -- exactly when you need ``/stacks``. So
the debug server shares nothing with it but the GIL: another thread, another loop, another socket.

    sock = bind_debug("127.0.0.1:6060")
    server = DebugServer(sock, metrics=metrics, main_loop=asyncio.get_running_loop())
    server.start()                 # returns once it accepts connections
    ...
    server.stop()

uvicorn only installs signal handlers on the main thread (``Server.capture_signals``), so on this
thread it leaves the host's SIGINT/SIGTERM handling alone. Its logging configuration is not used
either: ``log_config=None`` and no ``log_level`` (either would reconfigure the process-wide
``uvicorn.*`` loggers the host worker logs through); instead a filter drops this thread's records
below WARNING, so the debug server's access lines and "Started server process" stay out of the
host's logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import uvicorn

from .app import DebugApp, make_debug_app
from .bind import describe_address
from .errors import DebugServerError
from .metrics import Metrics

__all__ = ["DebugServer"]

_UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class _QuietThread(logging.Filter):
    """Drops records below WARNING logged from one thread (the debug server's)."""

    def __init__(self, ident: int) -> None:
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident or record.levelno >= logging.WARNING


class _Server(uvicorn.Server):
    """uvicorn's server, telling us when it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


class DebugServer:
    """Serves the debug endpoints on ``sock`` from a daemon thread. Takes ownership of ``sock``.

    ``main_loop`` is the event loop whose tasks ``/stacks`` lists; ``token`` (if non-empty) is
    required on every request; ``extra()`` is merged into ``/stats`` (called on the debug thread).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        metrics: Metrics,
        main_loop: asyncio.AbstractEventLoop | None = None,
        token: str | None = None,
        extra: Callable[[], Mapping[str, Any]] | None = None,
        thread_name: str = "liveswap-debug",
    ) -> None:
        self._sock = sock
        self.address = describe_address(sock)
        """Where it listens, in ``bind_debug`` syntax (``127.0.0.1:6060``, ``unix:/path``)."""
        self.app: DebugApp = make_debug_app(metrics=metrics, main_loop=main_loop, token=token, extra=extra)
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._unix_inode: tuple[int, int] | None = None
        if sock.family == socket.AF_UNIX and self.address.startswith("unix:/"):
            try:  # remembered so that stop() removes our socket file, never a successor's
                st = os.stat(self.address[len("unix:") :])
                self._unix_inode = (st.st_dev, st.st_ino)
            except OSError:
                pass

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:6060/`` for TCP; ``None`` for a unix socket."""
        return None if self.address.startswith("unix:") else f"http://{self.address}/"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread; return once the server accepts connections, or raise ``DebugServerError``."""
        if self._thread is not None:
            raise DebugServerError(
                f"the debug server on {self.address} was already started",
                hint="create a new DebugServer (with a new socket) to serve again",
            )
        if self._sock.fileno() == -1:
            raise DebugServerError(
                f"the debug server's socket ({self.address}) is closed",
                hint="pass the open socket returned by bind_debug()",
            )
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            interface="asgi3",
            ws="none",
            log_config=None,
            proxy_headers=False,  # loopback: nobody in front of us to trust
            server_header=False,
            limit_concurrency=64,
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config, self._ready.set)
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._request_exit()
            raise DebugServerError(
                f"the debug server on {self.address} did not start within {timeout:g} s",
                hint="the process may be overloaded; GET /stacks cannot help here, "
                "try py-spy dump --pid " + str(os.getpid()),
            )
        if self._error is not None:
            raise DebugServerError(
                f"the debug server on {self.address} failed to start: {self._error!r}",
                hint="the socket must be a listening stream socket from bind_debug()",
            ) from self._error

    def _run(self) -> None:
        quiet = _QuietThread(threading.get_ident())
        for name in _UVICORN_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        server = self._server
        try:
            if server is None:
                raise DebugServerError("internal error: no server to run")
            # Plain asyncio whatever loop policy the host installed (e.g. uvloop's): this loop must
            # not share anything with the app's.
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(server.serve(sockets=[self._sock]))
        except BaseException as exc:  # report it to start() or leave it for stop(); the thread just ends
            self._error = exc
        finally:
            for name in _UVICORN_LOGGERS:
                logging.getLogger(name).removeFilter(quiet)
            self._sock.close()
            self._ready.set()  # wake start() if we failed before accepting

    def _request_exit(self) -> None:
        self.app.closing.set()  # ends a running profile early
        server = self._server
        if server is not None:
            # Plain attribute writes, read by uvicorn's main loop on its next 0.1 s tick. force_exit:
            # do not wait for open connections; a debug client can simply ask again.
            server.should_exit = True
            server.force_exit = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread; raise ``DebugServerError`` if it outlives ``timeout``."""
        thread = self._thread
        if thread is None:
            self._sock.close()
        else:
            self._request_exit()
            thread.join(timeout)
            if thread.is_alive():
                raise DebugServerError(
                    f"the debug server thread ({self.address}) did not stop within {timeout:g} s",
                    hint="it is a daemon thread and will not keep the process alive; a long heap snapshot "
                    "(/heap) can delay it",
                )
        self._unlink_unix_socket()

    def _unlink_unix_socket(self) -> None:
        if self._unix_inode is None:
            return
        path = self.address[len("unix:") :]
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == self._unix_inode:  # still ours, not a successor's
                os.unlink(path)
        except FileNotFoundError:
            pass
        self._unix_inode = None

    def __enter__(self) -> DebugServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""An external command behind liveswap's proxy (``liveswap run --proxy -- COMMAND``): the full
transaction for any server, including servers that cannot take a socket (granian).

Each worker is the command on a private loopback ``$PORT`` (also ``{port}``). The public sockets are
served by the proxy (``liveswap.proxy``) in the supervisor. A new worker gets no public traffic
until it is ready (``READY=1``, or its port answers) and healthy (``GET --health-path`` on its port
answered below 500); only then does the proxy route new requests to it. The old one is taken out
of the routing first, keeps the requests, streams and WebSockets it has until they end (within
--drain-timeout), and only then gets --stop-signal: clients keep their connections to the proxy
throughout, so a reload is invisible to them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ...config import Settings
from ...proxy import ProxyApp, ProxyServer, Upstream
from ...sockets import Listener
from ..generation import Worker, WorkerState
from .build import Builds
from .command import Child, CommandWorkers
from .execute import expand, free_port

__all__ = ["ProxiedCommand"]

log = logging.getLogger("liveswap.supervisor")

CONNECT_POLL = 0.02  # how often a starting command's port is tried


class ProxiedCommand(CommandWorkers):
    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[Listener],
        notify_socket: str,
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        super().__init__(settings, listeners, notify_socket, spawn_task)
        self.health_usable = True  # its own port answers the health check
        self.ready_after = settings.ready_after
        self.app = ProxyApp(hold_timeout=settings.boot_timeout)
        self.server = ProxyServer([x.sock for x in self.listeners], self.app, **settings.connection_limits())
        self.serving = False
        self.upstreams: dict[Worker, Upstream] = {}
        self.closing: asyncio.Task[bool] | None = None  # the proxy's own close, at a stop
        self.builds: Builds | None = None  # --build: set by the supervisor, which reaps the build
        self.hosts: dict[Child, str] = {}  # where each copy listens (--upstream's host, or loopback)
        host, _, port = settings.upstream.rpartition(":")
        self.fixed = (host.strip("[]"), int(port)) if settings.upstream else None  # --upstream HOST:PORT

    def start(self) -> None:
        pass

    def environment(self, worker: Worker) -> dict[str, str]:
        env = super().environment(worker)
        for key in [k for k in env if k.startswith(("LISTEN_", "EINHORN_FD"))]:
            del env[key]
        return env

    async def spawn(self, worker: Worker, timeout: float) -> None:
        if not self.serving:  # requests that arrive before the first generation is live are held
            self.serving = True
            await self.server.start()
        host, port = "127.0.0.1", free_port()
        env = self.environment(worker)
        if worker.generation.error_page:  # liveswap dev: the failure is shown until the next save
            argv = [sys.executable, "-m", "liveswap.dev.errorserver"]
            env["LIVESWAP_ERROR_PAGE"] = worker.generation.error_page
        else:
            if self.builds is not None:
                await self.builds.ready(worker.generation.number)
            if self.fixed is not None:  # --upstream: one port for every copy, so the old one goes first
                await self._stop_older(worker.generation.number)
                host, port = self.fixed
            argv = expand(self.settings.command, {}, port)
        env["PORT"] = str(port)
        child = Child(argv, port)
        worker.pid = self.fork_exec(argv, env, [], child)
        self.hosts[child] = host
        self.upstreams[worker] = Upstream(worker.describe(), host, port)
        self.begin(worker, child)

    async def _stop_older(self, generation: int) -> None:
        """--upstream: the copies of older generations leave the routing (new requests are held),
        finish what they were sent, and exit before the new copy starts on their port."""
        timeout = self.settings.drain_timeout
        for old in [w for w in self.children if w.generation.number < generation and not w.generation.error_page]:
            if old.exited.done():
                continue
            upstream = self.upstreams.get(old)
            if upstream is not None:
                self._unroute(upstream)
                await self.app.drained(upstream, timeout)
            old.expected_exit = True
            old.state = WorkerState.DRAINING
            self.signal(old, self.stop_signal)
            if not (await asyncio.wait([old.exited], timeout=timeout))[0]:
                self.kill(old)
                await asyncio.wait([old.exited], timeout=5.0)

    async def connect(self, child: Child) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Its port, once it listens (the boot deadline bounds the wait)."""
        while True:
            try:
                return await asyncio.open_connection(self.hosts.get(child, "127.0.0.1"), child.port)
            except ConnectionRefusedError:
                await asyncio.sleep(CONNECT_POLL)

    async def activate(self, workers: list[Worker], timeout: float) -> None:
        for w in workers:
            upstream = self.upstreams.get(w)
            if upstream is not None:
                self.app.add(upstream)
            if not w.live.done():
                w.live.set_result(None)

    def drain(self, worker: Worker, final: bool, next_generation: int) -> None:
        upstream = self.upstreams.get(worker)
        if upstream is not None and not final:
            self._unroute(upstream)
        if not worker.draining.done():  # no new request reaches it from now on
            worker.draining.set_result(None)
        child = self.children.get(worker)
        if child is not None:
            child.tasks.append(self.spawn_task(self._finish(worker, upstream, final)))

    async def _finish(self, worker: Worker, upstream: Upstream | None, final: bool) -> None:
        """Wait until what the proxy sent it has been answered, then stop it."""
        timeout = self.settings.drain_timeout
        if final:  # the service stops: the proxy stops accepting and finishes with its clients first
            if self.closing is None:
                self.closing = asyncio.ensure_future(self.server.close(timeout))
            await asyncio.wait([self.closing], timeout=timeout)
            if upstream is not None:  # (the last requests of kept-alive clients went to it meanwhile)
                self._unroute(upstream)
        if upstream is not None and not await self.app.drained(upstream, timeout):
            log.warning("%s still had requests in flight after %g s (--drain-timeout)", worker.describe(), timeout)
        self.signal(worker, self.stop_signal)

    def timeout_hint(self, worker: Worker) -> str:
        """lrt's hint: a server that never answers on its port mostly listens elsewhere."""
        child = self.children.get(worker)
        port = child.port if child is not None else "$PORT"
        if self.fixed is not None:
            return (
                f"hint: it never answered GET {self.settings.health_path} on {self.settings.upstream} (--upstream): "
                "check that it listens there; also check the output above for errors it logged"
            )
        return (
            f"hint: it never answered GET {self.settings.health_path} on 127.0.0.1:{port}: ensure it listens on "
            '$PORT (or put {port} in its command line), e.g. http.ListenAndServe("127.0.0.1:" + os.Getenv("PORT"), '
            "nil); also check the output above for errors it logged"
        )

    def _unroute(self, upstream: Upstream) -> None:
        if upstream in self.app.upstreams:
            self.app.remove(upstream)

    def export(self, worker: Worker) -> dict[str, Any]:
        raise NotImplementedError("--proxy instances do not upgrade in place")

    def worker_exited(self, worker: Worker) -> None:
        child = self.children.get(worker)
        if child is not None:
            self.hosts.pop(child, None)
        upstream = self.upstreams.pop(worker, None)
        if upstream is not None:
            self._unroute(upstream)  # a crash: new requests are held for its replacement
        super().worker_exited(worker)

    def close(self) -> None:
        if self.serving and self.closing is None:  # a stop: accept no more
            self.closing = asyncio.ensure_future(self.server.close(self.settings.drain_timeout))

    async def aclose(self) -> None:
        if self.closing is not None:
            await asyncio.wait([self.closing], timeout=self.settings.drain_timeout)
        await self.app.aclose()

"""A Python worker forked from the template: ours end to end.

It gets the listening sockets, a channel (``liveswap.worker.channel``) and a private health
connection with its spawn request, reports READY=1 once its app is imported and started, and
accepts only after ``Go``. So a new generation is proven healthy before it sees public traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from ...config import Settings
from ...config.envfile import EnvFile
from ...sockets import Listener
from ...template.learn import Learner
from ...template.spawner import Spawner, TemplateGone
from ...worker import channel
from ..certs import GenerationCerts, tls_probe
from ..generation import BootFailed, Worker
from ..health import health_host, probe, request
from ._env import file_variables

__all__ = ["PythonWorkers"]

log = logging.getLogger("liveswap.supervisor")

MAX_DUMP_LINES = 500  # of a dying worker's stacks


class PythonWorkers:
    """Spawns workers through the template process and speaks the channel with them."""

    beats = True

    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[Listener],
        notify_socket: str,
        spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        dev_env: Mapping[str, str] | None = None,
        on_imported: Callable[[Worker], None] | None = None,
        after_switch: Callable[[Callable[[], None]], None] | None = None,
        on_recycle: Callable[[Worker, channel.Recycle], None] | None = None,
    ) -> None:
        self.on_recycle = on_recycle  # --max-requests: a worker served its limit
        self.settings = settings
        self.dev_env = dict(dev_env or {})  # liveswap dev: LIVESWAP_DEV=1 and its settings
        self.on_imported = on_imported
        self.after_switch = after_switch or (lambda work: work())
        self.listeners = list(listeners)
        # Named once: at a stop the supervisor closes its copies of the listeners first, and a boot
        # still in flight must not ask a closed socket for its address (an internal error, then a hang).
        self.health_host = settings.health_host or health_host(self.listeners)
        self.notify_socket = notify_socket
        self.spawn_task = spawn_task
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        # The template's own logging and process title (it never reads the settings).
        env["LIVESWAP_TEMPLATE_LOG"] = json.dumps(
            {
                "app": settings.app,
                "level": settings.log_level,
                "format": settings.log_format,
                "config": settings.log_config,
            }
        )
        # One spare per worker: a whole generation starts without a fork on the critical path.
        # liveswap dev's worker side (refresh script, error page) is loaded once, in the template.
        preload = [*settings.preload, *(["liveswap.dev.worker"] if self.dev_env else [])]
        self.spawner = Spawner(preload, env, spares=settings.workers)
        self.learner = Learner(self.spawner, preload, spawn_task)
        self.env_file = EnvFile(settings.env_file)
        self.certs = GenerationCerts(settings) if settings.certfile else None  # --certfile: TLS

    def start(self) -> None:
        self.spawner.start()

    def close(self) -> None:
        pid = self.spawner.pid
        self.spawner.close()
        if pid:  # it holds no listening socket and no worker depends on it: no need to wait
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def aclose(self) -> None:
        pass

    def owns(self, pid: int) -> bool:
        return self.spawner.exited(pid)

    async def spawn(self, worker: Worker, timeout: float) -> None:
        # TLS: the generation's pair is validated before its first worker starts (BootFailed if bad).
        tls = self.certs.for_generation(worker.generation.number).to_env() if self.certs is not None else ""
        # --env-file first: liveswap's own variables win over the file's.
        env = file_variables(self.env_file, worker) if not worker.generation.error_page else {}
        control, control_child = socket.socketpair()
        health, health_child = socket.socketpair()
        env |= {
            "LIVESWAP_SETTINGS": json.dumps(self.settings.to_json()),
            "LIVESWAP_GENERATION": str(worker.generation.number),
            "NOTIFY_SOCKET": self.notify_socket,
            "LIVESWAP_LISTEN_NAMES": json.dumps([x.name for x in self.listeners]),
            **self.dev_env,
        }
        if worker.generation.error_page:
            env["LIVESWAP_ERROR_PAGE"] = worker.generation.error_page
        if tls:
            env["LIVESWAP_TLS"] = tls
        fds = [control_child.fileno(), health_child.fileno(), *(x.sock.fileno() for x in self.listeners)]
        try:
            try:
                worker.pid = await self.spawner.spawn(env, fds, timeout)
            finally:
                control_child.close()
                health_child.close()
        except TemplateGone as exc:
            control.close()
            health.close()
            raise BootFailed(
                f"could not start a worker: the template process failed ({exc}); its own error is in the log",
                "if liveswap itself was upgraded or moved while running, restart the service",
            ) from None
        except (OSError, TimeoutError) as exc:
            control.close()
            health.close()
            raise BootFailed(f"could not fork a worker: {exc or type(exc).__name__}") from None
        # The health request waits in the worker's socket from the start: it is answered as soon as
        # the app has started, without a round trip after READY (the answer is read only after it).
        # A worker that already exited (its import failed) has closed its end: its exit and its own
        # boot error tell the boot what happened, not this broken pipe.
        health_request = request(self.settings.health_path, self.health_host)
        with contextlib.suppress(OSError):
            if self.certs is None:  # (over TLS, the request follows the handshake: check_health)
                health.sendall(health_request)
        worker.health = health
        control.setblocking(False)
        reader, worker.writer = await asyncio.open_connection(sock=control)
        worker.reader = self.spawn_task(self._read(worker, reader))

    async def last_words(self, worker: Worker) -> None:
        if worker.reader is not None:
            await asyncio.wait([worker.reader], timeout=1.0)

    async def check_health(self, worker: Worker, path: str, host: str) -> int:
        sock, worker.health = worker.health, None
        if sock is None:
            raise BootFailed(f"{worker.describe()} has no health connection")
        if self.certs is not None:  # over TLS: the worker must serve its generation's certificate
            return await tls_probe(sock, self.certs.for_generation(worker.generation.number), path, host)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        return await probe(reader, writer, path, host, sent=True)

    def timeout_hint(self, worker: Worker) -> str:
        return ""

    async def activate(self, workers: list[Worker], timeout: float) -> None:
        for w in workers:
            self._send(w, channel.Go())
        await asyncio.wait([w.live for w in workers], timeout=timeout)
        for w in workers:
            if not w.live.done():
                log.warning("%s did not confirm it accepts within %.0f s", w.describe(), timeout)

    def drain(self, worker: Worker, final: bool, next_generation: int) -> None:
        self._send(worker, channel.Drain(final=final, next_generation=next_generation))

    def export(self, worker: Worker) -> dict[str, Any]:
        sock = worker.writer.get_extra_info("socket") if worker.writer is not None else None
        return {"channel_fd": sock.fileno()} if sock is not None else {}

    async def adopt(self, worker: Worker, info: dict[str, Any]) -> None:
        if "channel_fd" not in info:
            return
        control = socket.socket(fileno=info["channel_fd"])
        control.setblocking(False)
        reader, worker.writer = await asyncio.open_connection(sock=control)
        worker.reader = self.spawn_task(self._read(worker, reader))

    def kill(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    def worker_exited(self, worker: Worker) -> None:
        # Its channel is closed by the reader at EOF (closing it here could drop its last words,
        # the boot error it wrote just before exiting, still unread in the socket).
        if worker.health is not None:
            worker.health.close()
            worker.health = None

    def _imported(self, worker: Worker, event: channel.Imported) -> None:
        worker.imported = event.paths
        if event.modules and worker.boot_error is None and not worker.generation.error_page:
            self.learner.offer(event.modules)
        if self.on_imported is not None:
            self.on_imported(worker)

    def _send(self, worker: Worker, message: channel.Command) -> None:
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(channel.encode(message))

    async def _read(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._on_line(worker, line)
        except (ConnectionError, ValueError):
            pass  # the worker died (its exit is handled when it is reaped) or sent an overlong line
        finally:
            if worker.writer is not None:  # our end of its channel: closed now, not by the GC
                worker.writer.close()

    def _on_line(self, worker: Worker, line: bytes) -> None:
        event = channel.decode_event(line) if line.startswith(b"{") else None
        if event is None:  # faulthandler's report of a fatal signal: every thread's stack
            if len(worker.dump) < MAX_DUMP_LINES:
                worker.dump.append(line.decode("utf-8", "replace").rstrip())
        elif isinstance(event, channel.Beat):
            worker.last_beat = time.monotonic()
        elif isinstance(event, channel.BootError):
            worker.boot_error = (event.error, event.detail)
            worker.failure_page = event.failure
        elif isinstance(event, channel.Imported):
            self.after_switch(lambda: self._imported(worker, event))
        elif isinstance(event, channel.Live):
            if not worker.live.done():
                worker.live.set_result(None)
        elif isinstance(event, channel.Draining) and not worker.draining.done():
            worker.draining.set_result(None)
        elif isinstance(event, channel.Recycle) and self.on_recycle is not None:
            self.on_recycle(worker, event)

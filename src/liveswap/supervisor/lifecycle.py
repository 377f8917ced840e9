"""One worker's way through a generation: boot (spawn, ready, healthy: one deadline), activation,
drain, and the hammer at the drain timeout. Written once for every kind of worker."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .._os import exit_text
from ..worker.channel import beat_interval
from .generation import BootFailed, Generation, GenState, Worker, WorkerState

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["ACK_TIMEOUT", "Lifecycle"]

log = logging.getLogger("liveswap.supervisor")

ACK_TIMEOUT = 5.0  # for a worker to confirm "go" or "drain"
STALE_BEATS = 3  # this many heartbeat intervals without one: a reload does not wait for the worker


class Lifecycle:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def boot(self, gen: Generation, slot: int, restarts: int = 0) -> Worker:
        """Spawn a worker and wait until it is ready and healthy (not yet accepting), all within one
        --boot-timeout; raises BootFailed."""
        if self.sup.stopping:  # (a reload coalesced with a failed start: the sockets are closed)
            raise BootFailed("the instance is stopping")
        loop = asyncio.get_running_loop()
        worker = Worker(gen, slot, restarts=restarts)
        gen.workers.append(worker)
        deadline = loop.time() + self.sup.settings.boot_timeout
        try:
            await self.sup.kind.spawn(worker, self.sup.settings.boot_timeout)
        except BaseException:  # no process to wait for: never leave a worker a stop would wait on
            worker.state = WorkerState.DEAD
            raise
        self.sup.by_pid[worker.pid] = worker
        for fields in self.sup.early_notify.pop(worker.pid, []):
            self.sup.on_notify(worker.pid, fields)
        if worker.pid in self.sup.early_exits:
            self.sup.on_exit(worker, self.sup.early_exits.pop(worker.pid))
        try:
            await self._await_ready(worker, deadline)
            status = await asyncio.wait_for(
                self.sup.kind.check_health(worker, self.sup.settings.health_path, self.sup.health_host),
                max(0.0, deadline - loop.time()),
            )
            worker.health_status = status
            if status >= 500 and not gen.error_page:  # an error page answers 500 by design
                raise BootFailed(f"health check GET {self.sup.settings.health_path} answered {status}")
        except TimeoutError:
            self.sup.kill(worker)
            raise BootFailed(
                f"{worker.describe()} was not ready and healthy within {self.sup.settings.boot_timeout:g} s "
                "(--boot-timeout)",
                self.sup.kind.timeout_hint(worker),
            ) from None
        except BootFailed:
            self.sup.kill(worker)
            raise
        worker.state = WorkerState.READY
        return worker

    async def _await_ready(self, worker: Worker, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[Any]] = [worker.ready, worker.exited]
        done, _ = await asyncio.wait(
            waits, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
        if worker.ready in done:
            return
        if worker.exited in done:
            await self.sup.kind.last_words(worker)
            if worker.boot_error:
                raise BootFailed(*worker.boot_error)
            raise BootFailed(f"{worker.describe()} exited before it was ready ({exit_text(worker.exited.result())})")
        raise TimeoutError

    async def activate(self, workers: list[Worker]) -> None:
        """Let ready workers take public traffic."""
        await self.sup.kind.activate(workers, ACK_TIMEOUT)
        now = time.monotonic()
        for w in workers:
            if w.state is WorkerState.READY:
                w.state = WorkerState.LIVE
                w.live_at = w.last_beat = now

    def drain_generation(self, gen: Generation) -> None:
        gen.state = GenState.DRAINING
        for timer in gen.restart_pending.values():
            timer.cancel()
        gen.restart_pending.clear()
        for w in gen.alive():
            self.drain_worker(w)
        if not gen.alive():
            gen.state = GenState.GONE

    async def stopped_accepting(self, gen: Generation) -> None:
        """Wait until every worker of ``gen`` has closed its listeners (or exited): from then on no
        new connection can reach the old code, so the reload's caller is told only then. A worker
        whose loop has stopped turning cannot answer: the reload does not wait for it (the watchdog
        replaces it, and the drain timeout ends it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT
        for w in gen.alive():
            silent = self.sup.restarts.silent_for(w)
            if silent > STALE_BEATS * beat_interval(self.sup.settings.worker_timeout):
                log.warning(
                    "%s has sent no heartbeat for %.1f s: not waiting for it to stop accepting", w.describe(), silent
                )
                continue
            waits: list[asyncio.Future[Any]] = [w.draining, w.exited]
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not (w.draining.done() or w.exited.done()):
                log.warning("%s did not confirm within %.0f s that it stopped accepting", w.describe(), ACK_TIMEOUT)

    def drain_worker(self, worker: Worker, final: bool = False) -> None:
        """Tell ``worker`` to stop accepting and finish what it has; SIGKILL at --drain-timeout."""
        if worker.state in (WorkerState.DEAD, WorkerState.DRAINING):
            return
        worker.state = WorkerState.DRAINING
        worker.expected_exit = True
        worker.live_at = time.monotonic()
        live = self.sup.live
        self.sup.kind.drain(worker, final, live.number if live is not None and not final else 0)
        worker.hammer = asyncio.get_running_loop().call_later(self.sup.settings.drain_timeout, self._hammer, worker)

    def _hammer(self, worker: Worker) -> None:
        if worker.state is not WorkerState.DEAD:
            log.warning(
                "hammer time: %s still draining after %.1f s (--drain-timeout); sending SIGKILL",
                worker.describe(),
                self.sup.settings.drain_timeout,
            )
            self.sup.kill(worker)

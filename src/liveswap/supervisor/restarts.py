"""Crashed and hung workers: each is replaced through the same boot as a reload (ready and healthy
before it takes traffic), a slot that keeps crashing backs off, and a heartbeat watchdog finds the
workers whose event loop stopped turning."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .._os import process_state
from ..worker.channel import beat_interval
from .generation import BootFailed, Generation, Worker, WorkerState

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["Restarts"]

log = logging.getLogger("liveswap.supervisor")

STABLE_AFTER = 10.0  # a worker up this long resets its slot's crash count
HUNG_DUMP_TIMEOUT = 2.0  # how long a hung worker gets to write its stacks and die of SIGABRT


class Restarts:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.restarts = 0
        self.hung = 0
        self.recycled = 0  # workers replaced for --max-requests
        self.recycling: set[Worker] = set()

    # ---- crashes --------------------------------------------------------------------------------
    def schedule(self, gen: Generation, dead: Worker) -> None:
        """Replace ``dead`` after a backoff: 0, 0.1, 0.2, 0.4 ... s, capped at --backoff-max."""
        crashes = gen.slot_crashes.get(dead.slot, 0)
        if dead.live_at and time.monotonic() - dead.live_at >= STABLE_AFTER:
            crashes = 0
        crashes += 1
        gen.slot_crashes[dead.slot] = crashes
        delay = 0.0 if crashes == 1 else min(self.sup.settings.backoff_max, 0.1 * 2 ** (crashes - 2))
        if crashes > 1:
            log.warning(
                "slot %d of generation %d crashed %d times in a row; restarting in %.1f s",
                dead.slot,
                gen.number,
                crashes,
                delay,
            )
        gen.restart_pending[dead.slot] = asyncio.get_running_loop().call_later(
            delay, lambda: self.sup.spawn_task(self._restart(gen, dead.slot, dead.restarts + 1))
        )

    async def _restart(self, gen: Generation, slot: int, restarts: int) -> None:
        sup = self.sup
        gen.restart_pending.pop(slot, None)
        if gen is not sup.live or sup.stopping:
            return
        self.restarts += 1
        try:
            worker = await sup.workers.boot(gen, slot, restarts)
        except BootFailed as exc:
            log.error("restart of slot %d (generation %d) failed: %s", slot, gen.number, exc)
            if exc.detail:
                log.error("%s", exc.detail)
            dead = Worker(gen, slot, restarts=restarts)
            dead.state = WorkerState.DEAD
            self.schedule(gen, dead)
            return
        if gen is not sup.live or sup.stopping:
            sup.workers.drain_worker(worker)
            return
        await sup.workers.activate([worker])
        log.info("%s replaced the crashed worker (restart %d)", worker.describe(), restarts)

    # ---- --max-requests ------------------------------------------------------------------------------
    def recycle(self, worker: Worker, served: int, limit: int) -> None:
        """``worker`` served its limit: boot its replacement as a reload would (ready and healthy), make
        it live, then drain ``worker``. Until then it serves on: no request waits, none is lost."""
        sup = self.sup
        gen = worker.generation
        if worker in self.recycling or worker.state is not WorkerState.LIVE or gen is not sup.live or sup.stopping:
            return  # (asked again while being replaced, or a reload or stop is replacing it anyway)
        self.recycling.add(worker)
        log.info("%s served %d requests (--max-requests: %d for it); replacing it", worker.describe(), served, limit)
        sup.spawn_task(self._recycle(gen, worker))

    async def _recycle(self, gen: Generation, old: Worker) -> None:
        sup = self.sup
        try:
            try:
                worker = await sup.workers.boot(gen, old.slot, old.restarts)
            except BootFailed as exc:  # it asks again in a few seconds; it serves meanwhile
                log.error("replacement of %s (--max-requests) failed: %s; it keeps serving", old.describe(), exc)
                return
            if gen is not sup.live or sup.stopping or old.state is not WorkerState.LIVE:
                sup.workers.drain_worker(worker)  # a reload, a stop or a crash got there first
                return
            await sup.workers.activate([worker])
            sup.workers.drain_worker(old)
            self.recycled += 1
            log.info("%s replaced %s (--max-requests)", worker.describe(), old.describe())
        finally:
            self.recycling.discard(old)

    # ---- hung workers ------------------------------------------------------------------------------
    def silent_for(self, worker: Worker) -> float:
        """Seconds since ``worker``'s last heartbeat (0 when heartbeats are off or it is not live yet)."""
        if not self.sup.settings.worker_timeout or not worker.last_beat or not self.sup.kind.beats:
            return 0.0
        return time.monotonic() - worker.last_beat

    async def watchdog(self) -> None:
        """Every heartbeat interval: a live worker silent for --worker-timeout is hung."""
        timeout = self.sup.settings.worker_timeout
        while True:
            await asyncio.sleep(beat_interval(timeout))
            gen = self.sup.live
            if gen is None or self.sup.stopping:
                continue
            for w in gen.workers:
                if w.state is WorkerState.LIVE and self.silent_for(w) > timeout:
                    self._on_hung(gen, w)

    def _on_hung(self, gen: Generation, worker: Worker) -> None:
        worker.state = WorkerState.HUNG
        worker.expected_exit = True
        self.hung += 1
        log.error(
            "%s is hung: its event loop has not turned for %.1f s (--worker-timeout %g s); starting a "
            "replacement, then killing it",
            worker.describe(),
            self.silent_for(worker),
            self.sup.settings.worker_timeout,
        )
        self.sup.spawn_task(self._replace_hung(gen, worker))

    async def _replace_hung(self, gen: Generation, hung: Worker) -> None:
        """Boot and health-check a replacement first, then end the hung worker."""
        sup = self.sup
        replaced = False
        if gen is sup.live and not sup.stopping:
            self.restarts += 1
            try:
                worker = await sup.workers.boot(gen, hung.slot, hung.restarts + 1)
            except BootFailed as exc:
                log.error("replacement of hung %s failed: %s", hung.describe(), exc)
            else:
                if gen is sup.live and not sup.stopping:
                    await sup.workers.activate([worker])
                    log.info("%s replaced the hung %s", worker.describe(), hung.describe())
                    replaced = True
                else:
                    sup.workers.drain_worker(worker)
        if process_state(hung.pid) == "T":
            # SIGSTOP (a person, a freezer): nothing is stuck, so resume it and let it drain; its
            # in-flight requests complete instead of dying with it.
            log.warning("%s was stopped by a signal; resuming it (SIGCONT) to drain", hung.describe())
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung.pid, signal.SIGCONT)
            hung.state = WorkerState.LIVE
            sup.workers.drain_worker(hung)
        else:
            await self._kill_with_stacks(hung)
        if not replaced and gen is sup.live and not sup.stopping:
            self.schedule(gen, hung)

    async def _kill_with_stacks(self, worker: Worker) -> None:
        """SIGABRT makes faulthandler write every thread's stack to the worker's channel and the process
        die (SIGCONT first wakes a stopped one); SIGKILL if it is not gone by the deadline."""
        if worker.state is WorkerState.DEAD:
            return
        for sig in (signal.SIGABRT, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)
        waits: list[asyncio.Future[Any]] = [worker.exited]
        if worker.reader is not None:
            waits.append(worker.reader)
        await asyncio.wait(waits, timeout=HUNG_DUMP_TIMEOUT, return_when=asyncio.ALL_COMPLETED)
        if not worker.exited.done():
            log.warning(
                "%s did not die of SIGABRT within %.0f s; sending SIGKILL", worker.describe(), HUNG_DUMP_TIMEOUT
            )
            self.sup.kill(worker)
        if worker.dump:
            log.error("where %s was stuck:\n%s", worker.describe(), "\n".join(worker.dump))
        else:
            log.error("%s left no stacks", worker.describe())

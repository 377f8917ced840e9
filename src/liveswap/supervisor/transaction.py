"""The reload transaction, written once: coalesce the requests, boot a whole generation, prove it
healthy, switch, drain the old one, report the outcome; every wait under a deadline.

What a failed generation leaves behind is a policy: ``RollBack`` (``liveswap run``: the old
generation keeps serving, the caller is told why). Development mode will add one that keeps an
error responder serving until the next save.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypedDict

from . import health
from .generation import BootFailed, Generation, GenState

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["FailurePolicy", "Reloads", "ReloadOutcome", "RollBack", "STOPPING"]

log = logging.getLogger("liveswap.supervisor")

STOPPING = "the instance is stopping (SIGTERM, SIGINT or liveswap stop); the reload was abandoned"


class ReloadOutcome(TypedDict, total=False):
    ok: bool  # always present
    error: str  # why it failed
    detail: str  # the app's traceback, for the caller
    stopping: bool  # abandoned because the instance stops
    generation: int
    reason: str  # what asked for it ("liveswap reload; signal SIGHUP")
    time: float
    duration_ms: float
    warning: str  # went live, but its health check proved little
    warning_hint: str


def _stopping() -> ReloadOutcome:
    return {"ok": False, "stopping": True, "error": STOPPING}


class FailurePolicy(Protocol):
    async def failed(self, sup: Supervisor, gen: Generation, old: Generation | None, outcome: ReloadOutcome) -> None:
        """A new generation failed: its workers are still to be dealt with."""


class RollBack:
    """``liveswap run``: the failed generation's workers are killed (they never had a public
    connection); the old generation was never touched and keeps serving."""

    async def failed(self, sup: Supervisor, gen: Generation, old: Generation | None, outcome: ReloadOutcome) -> None:
        for w in gen.workers:
            sup.kill(w)
        if old is None or outcome.get("stopping"):
            return
        log.error(
            "reload failed after %.1f ms, rolled back: generation %d keeps serving: %s",
            outcome["duration_ms"],
            old.number,
            outcome["error"],
            extra={"event": "reload_failed", "duration_ms": outcome["duration_ms"], "error": outcome["error"]},
        )
        if outcome.get("detail"):
            log.error("%s", outcome["detail"])
        sup.systemd.send(READY=1, STATUS=f"reload failed; serving generation {old.number}")


class Reloads:
    """The queue of reload requests and the transaction that serves them, one at a time."""

    def __init__(self, sup: Supervisor, policy: FailurePolicy) -> None:
        self.sup = sup
        self.policy = policy
        self.task: asyncio.Task[None] | None = None
        self.waiting: list[tuple[asyncio.Future[ReloadOutcome], str]] = []
        self.last: ReloadOutcome | None = None
        self.ok = 0
        self.failed = 0
        self._deferred: list[Callable[[], None]] = []

    def after_switch(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or, while a reload is in flight, once its new generation serves and the
        old one has stopped accepting: bookkeeping (a worker's list of imports: file hashes, the
        learner) must not hold up the switch on a machine with few cores."""
        if self.task is None:
            work()
        else:
            self._deferred.append(work)

    def _run_deferred(self) -> None:
        while self._deferred:
            works, self._deferred = self._deferred, []
            for work in works:
                try:
                    work()
                except Exception:  # bookkeeping must never break a reload's outcome
                    log.exception("after the switch")

    def request(self, reason: str) -> asyncio.Future[ReloadOutcome]:
        """Ask for a reload; the future gets its outcome. Requests during a reload are coalesced."""
        fut: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        if self.sup.stopping:
            fut.set_result(_stopping())
            return fut
        self.waiting.append((fut, reason))
        if self.sup.live is not None or self.task is not None:
            log.info(
                "reload requested (%s)%s",
                reason,
                "; coalesced with the next transaction" if self.task is not None else "",
            )
        if self.task is None:
            self.task = self.sup.spawn_task(self._serve())
        return fut

    async def _serve(self) -> None:
        try:
            while self.waiting and not self.sup.stopping:
                batch, self.waiting = self.waiting, []
                outcome = await self._transaction("; ".join(sorted({r for _, r in batch})))
                for fut, _ in batch:
                    if not fut.done():
                        fut.set_result(outcome)
        finally:
            self.task = None
            self._run_deferred()
            for fut, _ in self.waiting:
                if not fut.done():
                    fut.set_result(_stopping())
            self.waiting = []

    async def _transaction(self, reason: str) -> ReloadOutcome:
        """Start a new generation; make it LIVE only if every worker is ready and healthy."""
        sup = self.sup
        t0 = time.monotonic()
        gen = sup.new_generation()
        old = sup.live
        if old is not None:
            sup.systemd.reloading()
            log.info(
                "reload: starting generation %d (%s)",
                gen.number,
                reason,
                extra={"event": "reload_started", "reason": reason, "new_generation": gen.number},
            )
            sup.outside.reload_started(gen.number, reason)
        boots = [sup.spawn_task(sup.workers.boot(gen, slot)) for slot in range(sup.settings.workers)]
        done, pending = await asyncio.wait(boots, return_when=asyncio.FIRST_EXCEPTION)
        failure = next((t.exception() for t in done if t.exception() is not None), None)
        if sup.stopping:  # a stop arrived during the reload (its workers were killed): not a rollback
            failure = BootFailed(STOPPING)
        outcome: ReloadOutcome = {
            "ok": failure is None,
            "generation": gen.number,
            "reason": reason,
            "time": time.time(),
        }
        if failure is not None:
            for task in pending:
                task.cancel()
            await asyncio.wait(boots)
            gen.state = GenState.FAILED
            outcome["error"] = str(failure)
            outcome["detail"] = getattr(failure, "detail", "")
            if sup.stopping:
                outcome["stopping"] = True
        else:
            await sup.workers.activate(gen.workers)
            gen.state = GenState.LIVE
            sup.live = gen
            if old is not None:
                sup.workers.drain_generation(old)
                await sup.workers.stopped_accepting(old)
            warning, hint = health.warning_for(
                gen.number, [w.health_status for w in gen.workers], sup.settings.health_path, sup.health_host
            )
            if warning:
                outcome["warning"], outcome["warning_hint"] = warning, hint
                log.warning("%s; hint: %s", warning, hint)
        outcome["duration_ms"] = round((time.monotonic() - t0) * 1000, 1)
        self._run_deferred()
        if old is not None or not outcome["ok"]:
            self.last = outcome
            if outcome["ok"]:
                self.ok += 1
            else:
                self.failed += 1
        if old is not None:
            sup.outside.reload_done(outcome)
        if not outcome["ok"]:
            await self.policy.failed(sup, gen, old, outcome)
        elif old is not None:
            log.info(
                "reload ok: generation %d live in %.1f ms; draining generation %d",
                gen.number,
                outcome["duration_ms"],
                old.number,
                extra={"event": "reload_ok", "duration_ms": outcome["duration_ms"], "new_generation": gen.number},
            )
            sup.systemd.send(READY=1, STATUS=f"serving generation {gen.number}")
        sup.forget_finished()
        return outcome

"""The supervisor's loop: it owns the sockets, and turns events into actions.

Signal handlers, child exits, readiness datagrams and control requests only put an event
(``events.py``) on a queue; ``_dispatch`` decides. Long operations (a reload transaction, a
restart, a stop) run as tasks whose every wait has a deadline, and they learn about child exits
through futures that the dispatcher resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._os import EXIT_BOOT_ERROR, EXIT_OK, become_subreaper, exit_text
from ..config import Settings
from ..control import ControlServer
from ..notify import Notifier, NotifyReceiver
from ..sockets import Listener, close_all, describe
from .certs import watch as watch_certs
from .events import ChildrenExited, Event, NotifyReadable, ReloadAsked, StopAsked
from .generation import BootFailed, Generation, GenState, Worker, WorkerState
from .handover import complete as handover_complete
from .handover import give as handover_give
from .health import health_host
from .kinds import WorkerKind
from .kinds.command import CommandWorkers
from .kinds.python import PythonWorkers
from .lifecycle import ACK_TIMEOUT, Lifecycle
from .outside import Outside
from .pid1 import EarlyExits, ignore_other_signals
from .probes import Termination
from .restarts import Restarts
from .status import Status, status_of
from .transaction import FailurePolicy, ReloadOutcome, Reloads, RollBack
from .upgrade import adopt, upgrade_in_place

if TYPE_CHECKING:
    from ..control.takeover import Handover
    from ..debug.hub import DebugHub
    from ..dev.session import DevSession

__all__ = ["Supervisor"]

log = logging.getLogger("liveswap.supervisor")

T = TypeVar("T")


def _dev_policy() -> FailurePolicy:
    from ..dev.session import ShowError

    return ShowError()


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        listeners: list[Listener],
        dev: DevSession | None = None,
        handover: Handover | None = None,
        upgraded: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.listeners = listeners
        self.name = settings.instance_name()
        self.generations: list[Generation] = []
        self.live: Generation | None = None
        self.next_gen = 1
        self.by_pid: dict[int, Worker] = {}
        self.early_exits = EarlyExits()  # reaped before we knew the pid was a worker of ours (or orphans)
        self.early_notify: dict[int, list[dict[str, str]]] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.stopping = False
        self.started_at = time.time()
        self.systemd = Notifier()
        self.notify_rx = NotifyReceiver(self.name)
        self.control = ControlServer(
            self.name,
            self._control,
            {"takeover": functools.partial(handover_give, self), "upgrade": functools.partial(upgrade_in_place, self)},
        )
        self.handover = handover  # --takeover: the running instance's sockets, released once we serve
        self.handing_over = False
        self.upgrades = 0  # liveswap upgrade: re-executions in place of this process
        self.upgrade_error = ""
        self.upgraded = upgraded  # the state the previous image of this process left (liveswap upgrade)
        self.helpers: dict[int, asyncio.Future[int]] = {}  # processes we started that are not workers
        self._stopped: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.debug: DebugHub | None = None  # --debug-bind: the one debug port for all workers
        self.health_host = settings.health_host or health_host(listeners)
        scheme = "https" if settings.certfile else "http"
        self.listening = [describe(x.sock, scheme) for x in listeners]  # the sockets are closed first at a stop
        self.dev = dev  # liveswap dev: file watching, the error page
        self.kind: WorkerKind
        if settings.command and settings.proxy:  # (the proxy, and what it imports, only when asked for)
            from .kinds.build import Builds
            from .kinds.proxied import ProxiedCommand

            self.kind = proxied = ProxiedCommand(settings, listeners, self.notify_rx.name, self.spawn_task)
            if settings.build:
                proxied.builds = Builds(settings.build, self.expect_exit, settings.boot_timeout)
        elif settings.command:
            self.kind = CommandWorkers(settings, listeners, self.notify_rx.name, self.spawn_task)
        else:
            self.kind = PythonWorkers(
                settings,
                listeners,
                self.notify_rx.name,
                self.spawn_task,
                dev_env=dev.worker_env() if dev is not None else None,
                on_imported=dev.on_imported if dev is not None else None,
                after_switch=lambda work: self.reloads.after_switch(work),
                on_recycle=lambda worker, asked: self.restarts.recycle(worker, asked.served, asked.limit),
            )
        self.outside = Outside(self)  # systemd's watchdog and fd store, the PID file, the hooks
        self.reloads = Reloads(self, _dev_policy() if dev is not None else RollBack())
        self.restarts = Restarts(self)
        self.workers = Lifecycle(self)
        self.termination = Termination(self)  # --probe-bind, --shutdown-delay, --grace-period

    # ---- plumbing ---------------------------------------------------------------------------
    def spawn_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        # A boot that failed is an expected outcome, reported by the transaction that awaited it.
        if exc is not None and not isinstance(exc, BootFailed):
            log.error("internal error in %s", task.get_coro(), exc_info=exc)

    async def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        # --debug-bind: bound before anything starts, so a bad address fails cleanly (a DebugBindError,
        # a LiveswapError with a hint). Imported only here: it needs h11, never uvicorn.
        if self.settings.debug_bind:
            from ..debug.hub import DebugHub

            self.debug = DebugHub.for_settings(self.settings, name=self.name, status=self.status)
        await self.termination.start()  # the probe port answers from the start (503 on /readyz until live)
        self._stopped = loop.create_future()
        become_subreaper()
        ignore_other_signals(loop)  # SIGUSR1, SIGUSR2: logged, never fatal (see pid1.py)
        signals: list[tuple[signal.Signals, Event]] = [
            (signal.SIGHUP, ReloadAsked("signal SIGHUP")),
            (signal.SIGTERM, StopAsked(signal.SIGTERM)),
            (signal.SIGINT, StopAsked(signal.SIGINT)),
            (signal.SIGQUIT, StopAsked(signal.SIGQUIT)),
            (signal.SIGCHLD, ChildrenExited()),
        ]
        for sig, event in signals:
            loop.add_signal_handler(sig, self.events.put_nowait, event)
        loop.add_reader(self.notify_rx.fileno(), self.events.put_nowait, NotifyReadable())
        if self.handover is None:  # (with --takeover, the old instance has the name until we serve)
            await self.control.start()
        dispatcher = self.spawn_task(self._dispatch())
        if self.settings.worker_timeout and self.kind.beats:
            self.spawn_task(self.restarts.watchdog())
        self.spawn_task(self.outside.tick())
        if self.settings.watch_certs:  # a change of the certificate files starts a reload, as SIGHUP does
            self.spawn_task(watch_certs(self.settings, lambda why: self.events.put_nowait(ReloadAsked(why))))
        started = time.monotonic()
        try:
            if self.debug is not None:  # --debug-bind
                await self.debug.start()
                log.info("debug server on %s (all workers: /metrics, /workers/<pid>/)", self.debug.url)
            self.kind.start()
            if self.dev is not None:
                await self.dev.start(self)
            if self.upgraded is not None:  # liveswap upgrade: the workers of our previous image serve on
                outcome: ReloadOutcome = {"ok": True, "generation": await adopt(self, self.upgraded)}
            else:  # through the reload queue, so that a reload asked for while we start waits its turn
                outcome = await self.reloads.request("initial start")
            if not outcome["ok"] and self.stopping:  # stopped (SIGTERM, liveswap stop) while starting
                return await self._stopped
            if not outcome["ok"] and self.live is None:  # (dev mode serves an error page instead)
                log.error("could not start %s: %s", self.settings.app, outcome.get("error"))
                if outcome.get("detail"):
                    log.error("%s", outcome["detail"])
                await self.stop(graceful=False)
                return EXIT_BOOT_ERROR
            if self.handover is not None:
                await handover_complete(self, self.handover)
            self.outside.started()  # the PID file, the fd store: before the world is told we serve
            log.info(
                "serving %s on %s: %d worker(s), generation %d, ready in %.1f ms (control: liveswap reload --name %s)",
                self.settings.app,
                ", ".join(self.listening),
                self.settings.workers,
                outcome.get("generation", 0),
                (time.monotonic() - started) * 1000,
                self.name,
            )
            self.systemd.send(READY=1, STATUS=f"serving {self.settings.app}", MAINPID=os.getpid())
            return await self._stopped
        finally:
            # A reload caught by the stop finishes now (its workers are gone), so that its caller is
            # told "stopping" before the control socket closes.
            if self.reloads.task is not None:
                await asyncio.wait([self.reloads.task], timeout=ACK_TIMEOUT)
            await self.outside.hooks_done()
            dispatcher.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self.control.close()
            await self.termination.aclose()
            if self.handover is not None:
                self.handover.abandon()
            if self.debug is not None:  # --debug-bind
                await self.debug.close()
            self.kind.close()
            await self.kind.aclose()
            if self.dev is not None:
                await self.dev.close()
            loop.remove_reader(self.notify_rx.fileno())
            self.notify_rx.close()
            close_all(self.listeners)
            self.outside.stopped()

    async def _dispatch(self) -> None:
        while True:
            event = await self.events.get()
            if isinstance(event, ChildrenExited):
                self.reap()
            elif isinstance(event, NotifyReadable):
                for pid, fields in self.notify_rx.receive():
                    self.on_notify(pid, fields)
            elif isinstance(event, ReloadAsked):
                self.reloads.request(event.reason)
            elif self.stopping and event.sig is signal.SIGINT:
                self._fast_stop()
            elif not self.stopping:  # (readiness goes first, then --shutdown-delay, then the drain)
                self.termination.asked(event.sig)

    # ---- children ---------------------------------------------------------------------------
    def expect_exit(self, pid: int) -> asyncio.Future[int]:
        """The exit code of ``pid``, a helper process we started (not a worker), once reaped."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.helpers[pid] = fut
        self.reap()  # it may be gone already
        return fut

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            helper = self.helpers.pop(pid, None)
            if helper is not None:
                if not helper.done():
                    helper.set_result(code)
                continue
            if self.kind.owns(pid):
                if not self.stopping:
                    log.warning("template pid %d exited (%s); a new one starts on the next spawn", pid, exit_text(code))
                continue
            worker = self.by_pid.get(pid)
            if worker is None:
                # A worker whose spawn reply is still on its way, or a spare the template let go.
                self.early_exits.add(pid, code)
            else:
                self.on_exit(worker, code)

    def on_notify(self, pid: int, fields: dict[str, str]) -> None:
        worker = self.by_pid.get(pid)
        if worker is None and not self.kind.beats:
            # A command's READY=1 may come from a process it started (npm start -> node): each
            # command leads its own process group.
            with contextlib.suppress(OSError):
                worker = self.by_pid.get(os.getpgid(pid))
        if worker is None:
            self.early_notify.setdefault(pid, []).append(fields)
            return
        if fields.get("READY") == "1" and not worker.ready.done():
            worker.ready.set_result(None)

    def on_exit(self, worker: Worker, code: int) -> None:
        prev = worker.state
        worker.state = WorkerState.DEAD
        self.by_pid.pop(worker.pid, None)
        self.kind.worker_exited(worker)
        if worker.hammer is not None:
            worker.hammer.cancel()
        gen = worker.generation
        if not worker.exited.done():
            worker.exited.set_result(code)
        if self.debug is not None:  # --debug-bind: a killed worker leaves its debug socket behind
            self.debug.worker_exited(worker.pid)
        if prev is WorkerState.HUNG:
            log.info("hung %s ended (%s)", worker.describe(), exit_text(code))
        elif prev is WorkerState.DRAINING or worker.expected_exit:
            drained = time.monotonic() - worker.live_at if worker.live_at else 0.0
            log.info("%s exited (%s) after %.2f s draining", worker.describe(), exit_text(code), drained)
        elif prev is WorkerState.LIVE and gen is self.live and not self.stopping:
            log.error("%s exited unexpectedly (%s)", worker.describe(), exit_text(code))
            self.restarts.schedule(gen, worker)
        # else it was booting: the boot reports it
        if gen.state is GenState.DRAINING and not gen.alive():
            gen.state = GenState.GONE
            log.info("generation %d gone", gen.number)
        self.forget_finished()
        self._check_stopped()

    def new_generation(self) -> Generation:
        gen = Generation(self.next_gen)
        self.next_gen += 1
        self.generations.append(gen)
        return gen

    def forget_finished(self) -> None:
        self.generations = [g for g in self.generations if g.state not in (GenState.GONE, GenState.FAILED) or g.alive()]

    def kill(self, worker: Worker) -> None:
        if worker.pid and worker.state is not WorkerState.DEAD:
            worker.expected_exit = True
            self.kind.kill(worker)

    # ---- stopping ---------------------------------------------------------------------------------
    async def stop(self, graceful: bool, final: bool = True) -> None:
        """Stop serving; ``graceful``: workers drain; ``final``: nobody else accepts on the sockets
        after us (not so after a takeover), so workers first accept what waits in their queues."""
        self.stopping = True
        self.systemd.send(STOPPING=1)
        self.outside.stop_started()
        self.kind.close()
        # Our copies of the listeners go first: the live workers are then their last holders, and
        # each accepts what is queued before it closes its own, so no queued connection is reset.
        for listener in self.listeners:
            listener.sock.close()
        for gen in list(self.generations):
            for timer in gen.restart_pending.values():
                timer.cancel()
            gen.restart_pending.clear()
            for w in gen.alive():
                if graceful and w.state in (WorkerState.LIVE, WorkerState.DRAINING):
                    self.workers.drain_worker(w, final=final)
                else:
                    self.kill(w)
        waits = [w.exited for g in self.generations for w in g.workers if not w.exited.done()]
        if waits:
            # Draining workers are hammered at the drain timeout; this deadline only guards against
            # an exit we never get to see.
            _, pending = await asyncio.wait(waits, timeout=self.settings.drain_timeout + 10.0)
            if pending:
                log.error("%d worker(s) did not exit; leaving them to PR_SET_PDEATHSIG", len(pending))
                for g in self.generations:
                    for w in g.alive():
                        w.state = WorkerState.DEAD
        self._check_stopped()

    def _fast_stop(self) -> None:
        alive = [w for g in self.generations for w in g.alive()]
        log.warning("second SIGINT: stopping now; killing %d worker(s)", len(alive))
        for w in alive:
            self.kill(w)

    def _check_stopped(self) -> None:
        if not self.stopping or self._stopped is None or self._stopped.done():
            return
        if any(g.alive() for g in self.generations):
            return
        log.info("stopped")
        self._stopped.set_result(EXIT_OK)

    # ---- control ------------------------------------------------------------------------------------
    async def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "reload":
            return dict(await self.reloads.request("liveswap reload"))
        self.events.put_nowait(StopAsked(signal.SIGTERM))
        return {"ok": True, "stopping": True, "pid": os.getpid()}

    def status(self) -> Status:
        return status_of(self)

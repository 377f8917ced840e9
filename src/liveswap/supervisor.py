"""The supervisor: one asyncio loop that owns the sockets and turns events into actions.

Signal handlers, child exits, readiness messages and control commands only put events on a queue;
``_dispatch`` decides. Long operations (a reload transaction, a stop) run as tasks whose every wait
has a deadline, and they learn about child exits through futures that the dispatcher resolves.
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
from typing import TYPE_CHECKING, Any

from ._os import EXIT_BOOT_ERROR, EXIT_OK, become_subreaper, exit_text, process_state
from .config import Settings
from .control import ControlServer
from .generation import BootFailed, Generation, GenState, Worker, WorkerState, beat_interval
from .notify import Notifier, NotifyReceiver
from .sockets import Listener, close_all, describe
from .template.spawner import Spawner

if TYPE_CHECKING:
    from .debug.supervisor_proxy import DebugHub

__all__ = ["Supervisor"]

log = logging.getLogger("liveswap.supervisor")

STABLE_AFTER = 10.0  # a worker up this long resets its slot's crash count
ACK_TIMEOUT = 5.0
STALE_BEATS = 3  # this many heartbeat intervals without one: the reload does not wait for the worker
HUNG_DUMP_TIMEOUT = 2.0  # how long a hung worker gets to write its stacks and die of SIGABRT
STOPPING = "the instance is stopping (SIGTERM, SIGINT or liveswap stop); the reload was abandoned"


def health_host(listeners: list[Listener]) -> str:
    """The Host header of health checks: the first public TCP address, as a client would name it
    (an app that checks Host, like Django's ALLOWED_HOSTS, must accept it, or the check proves nothing)."""
    for listener in listeners:
        if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = listener.sock.getsockname()[:2]
            if host in ("0.0.0.0", "::"):
                host = "localhost"
            elif ":" in host:
                host = f"[{host}]"
            return f"{host}:{port}"
    return "localhost"


class Supervisor:
    def __init__(self, settings: Settings, listeners: list[Listener]) -> None:
        self.settings = settings
        self.listeners = listeners
        self.name = settings.instance_name()
        self.generations: list[Generation] = []
        self.live: Generation | None = None
        self.next_gen = 1
        self.by_pid: dict[int, Worker] = {}
        self.early_exits: dict[int, int] = {}
        self.early_notify: dict[int, list[dict[str, str]]] = {}
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.stopping = False
        self.reload_task: asyncio.Task[None] | None = None
        self.waiting: list[tuple[asyncio.Future[dict[str, Any]], str]] = []
        self.last_reload: dict[str, Any] | None = None
        self.counts = {"reloads_ok": 0, "reloads_failed": 0, "restarts": 0, "hung": 0}
        self.started_at = time.time()
        self.systemd = Notifier()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        # One spare per worker: a whole generation starts without a fork on the critical path.
        self.spawner = Spawner(settings.preload, env, spares=settings.workers)
        self.notify_rx = NotifyReceiver(self.name)
        self.control = ControlServer(self.name, self._control)
        self._stopped: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.debug: DebugHub | None = None  # --debug-bind: the one debug port for all workers
        self.health_host = settings.health_host or health_host(listeners)
        self.listening = [describe(x.sock) for x in listeners]  # the sockets are closed first at a stop

    # ---- plumbing ---------------------------------------------------------------------------
    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
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
            from .debug.supervisor_proxy import DebugHub

            self.debug = DebugHub.bind(
                self.settings.debug_bind, name=self.name, status=self.status, token=self.settings.debug_token or None
            )
        self._stopped = loop.create_future()
        become_subreaper()
        for sig, event in (
            (signal.SIGHUP, "reload"),
            (signal.SIGTERM, "stop"),
            (signal.SIGINT, "stop"),
            (signal.SIGQUIT, "stop"),
            (signal.SIGCHLD, "reap"),
        ):
            loop.add_signal_handler(sig, self.events.put_nowait, (event, sig))
        loop.add_reader(self.notify_rx.fileno(), lambda: self.events.put_nowait(("notify",)))
        await self.control.start()
        dispatcher = self._spawn_task(self._dispatch())
        if self.settings.worker_timeout:
            self._spawn_task(self._watchdog())
        started = time.monotonic()
        try:
            if self.debug is not None:  # --debug-bind
                await self.debug.start()
                log.info("debug server on %s (all workers: /metrics, /workers/<pid>/)", self.debug.url)
            self.spawner.start()
            # Through the reload queue, so that a reload asked for while we start waits its turn.
            outcome = await self.request_reload("initial start")
            if not outcome["ok"] and self.stopping:  # stopped (SIGTERM, liveswap stop) while starting
                return await self._stopped
            if not outcome["ok"]:
                log.error("could not start %s: %s", self.settings.app, outcome["error"])
                if outcome.get("detail"):
                    log.error("%s", outcome["detail"])
                await self._stop(graceful=False)
                return EXIT_BOOT_ERROR
            where = ", ".join(self.listening)
            log.info(
                "serving %s on %s: %d worker(s), generation %d, ready in %.1f ms (control: liveswap reload --name %s)",
                self.settings.app,
                where,
                self.settings.workers,
                outcome["generation"],
                (time.monotonic() - started) * 1000,
                self.name,
            )
            self.systemd.send(READY=1, STATUS=f"serving {self.settings.app}", MAINPID=os.getpid())
            return await self._stopped
        finally:
            # A reload caught by the stop finishes now (its workers are gone), so that its caller is
            # told "stopping" before the control socket closes.
            if self.reload_task is not None:
                await asyncio.wait([self.reload_task], timeout=ACK_TIMEOUT)
            dispatcher.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self.control.close()
            if self.debug is not None:  # --debug-bind
                await self.debug.close()
            self.spawner.close()
            loop.remove_reader(self.notify_rx.fileno())
            self.notify_rx.close()
            close_all(self.listeners)

    async def _dispatch(self) -> None:
        while True:
            event = await self.events.get()
            kind = event[0]
            if kind == "reap":
                self._reap()
            elif kind == "notify":
                for pid, fields in self.notify_rx.receive():
                    self._on_notify(pid, fields)
            elif kind == "reload":
                self.request_reload(f"signal {signal.Signals(event[1]).name}")
            elif kind == "stop":
                sig = signal.Signals(event[1])
                if self.stopping and sig is signal.SIGINT:
                    self._fast_stop()
                elif not self.stopping:
                    log.info("%s: stopping gracefully (send SIGINT again to stop at once)", sig.name)
                    self._spawn_task(self._stop(graceful=True))

    # ---- children ---------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self.spawner.exited(pid):
                if not self.stopping:
                    log.warning("template pid %d exited (%s); a new one starts on the next spawn", pid, exit_text(code))
                continue
            worker = self.by_pid.get(pid)
            if worker is None:
                # A worker whose spawn reply is still on its way, or a spare the template let go.
                self.early_exits[pid] = code
                if len(self.early_exits) > 256:
                    del self.early_exits[next(iter(self.early_exits))]
            else:
                self._on_exit(worker, code)

    def _on_notify(self, pid: int, fields: dict[str, str]) -> None:
        worker = self.by_pid.get(pid)
        if worker is None:
            self.early_notify.setdefault(pid, []).append(fields)
            return
        if fields.get("READY") == "1" and not worker.ready.done():
            worker.ready.set_result(None)

    def _on_exit(self, worker: Worker, code: int) -> None:
        prev = worker.state
        worker.state = WorkerState.DEAD
        self.by_pid.pop(worker.pid, None)
        if worker.writer is not None:  # our end of its control channel: closed now, not by the GC
            worker.writer.close()
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
            log.info(
                "%s exited (%s) after %.2f s draining",
                worker.describe(),
                exit_text(code),
                time.monotonic() - worker.live_at if worker.live_at else 0.0,
            )
        elif prev in (WorkerState.BOOTING, WorkerState.READY, WorkerState.HUNG):
            pass  # the boot coroutine, or the hung worker's replacement, reports it
        elif prev is WorkerState.LIVE and gen is self.live and not self.stopping:
            log.error("%s exited unexpectedly (%s)", worker.describe(), exit_text(code))
            self._schedule_restart(gen, worker)
        if gen.state is GenState.DRAINING and not gen.alive():
            gen.state = GenState.GONE
            log.info("generation %d gone", gen.number)
        self._forget_finished()
        self._check_stopped()

    def _forget_finished(self) -> None:
        self.generations = [g for g in self.generations if g.state not in (GenState.GONE, GenState.FAILED) or g.alive()]

    def _kill(self, worker: Worker) -> None:
        if worker.pid and worker.state is not WorkerState.DEAD:
            worker.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    # ---- booting a worker ---------------------------------------------------------------------
    async def _boot(self, gen: Generation, slot: int, restarts: int = 0) -> Worker:
        """Fork a worker and wait until it is ready and healthy (not yet accepting); raises BootFailed."""
        loop = asyncio.get_running_loop()
        worker = Worker(gen, slot, restarts=restarts)
        gen.workers.append(worker)
        deadline = loop.time() + self.settings.boot_timeout
        control, control_child = socket.socketpair()
        health, health_child = socket.socketpair()
        worker.health = health
        env = {
            "LIVESWAP_SETTINGS": json.dumps(self.settings.to_json()),
            "LIVESWAP_GENERATION": str(gen.number),
            "NOTIFY_SOCKET": self.notify_rx.name,
            "LIVESWAP_LISTEN_NAMES": json.dumps([x.name for x in self.listeners]),
        }
        fds = [control_child.fileno(), health_child.fileno(), *(x.sock.fileno() for x in self.listeners)]
        try:
            try:
                worker.pid = await self.spawner.spawn(env, fds, self.settings.boot_timeout)
            finally:
                control_child.close()
                health_child.close()
        except (OSError, TimeoutError) as exc:
            worker.state = WorkerState.DEAD
            control.close()
            health.close()
            raise BootFailed(f"could not fork a worker: {exc or type(exc).__name__}") from None
        self.by_pid[worker.pid] = worker
        control.setblocking(False)
        reader, worker.writer = await asyncio.open_connection(sock=control)
        reading = worker.reader = self._spawn_task(self._read_worker(worker, reader))
        for fields in self.early_notify.pop(worker.pid, []):
            self._on_notify(worker.pid, fields)
        if worker.pid in self.early_exits:
            self._on_exit(worker, self.early_exits.pop(worker.pid))
        try:
            await self._await_ready(worker, reading, deadline)
            status = await asyncio.wait_for(self._health_check(worker), max(0.0, deadline - loop.time()))
            worker.health_status = status
            if status >= 500:
                raise BootFailed(f"health check GET {self.settings.health_path} answered {status}")
        except TimeoutError:
            self._kill(worker)
            raise BootFailed(
                f"{worker.describe()} was not ready and healthy within "
                f"{self.settings.boot_timeout:g} s (--boot-timeout)"
            ) from None
        except BootFailed:
            self._kill(worker)
            raise
        finally:
            health.close()
        worker.state = WorkerState.READY
        return worker

    async def _await_ready(self, worker: Worker, reading: asyncio.Task[None], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[Any]] = [worker.ready, worker.exited]
        done, _ = await asyncio.wait(
            waits, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
        if worker.ready in done:
            return
        if worker.exited in done:
            # Let the control channel deliver the boot error the worker sent before exiting.
            await asyncio.wait([reading], timeout=1.0)
            if worker.boot_error:
                raise BootFailed(*worker.boot_error)
            raise BootFailed(f"{worker.describe()} exited before it was ready ({exit_text(worker.exited.result())})")
        raise TimeoutError

    async def _health_check(self, worker: Worker) -> int:
        assert worker.health is not None
        worker.health.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=worker.health)
        try:
            writer.write(
                f"GET {self.settings.health_path} HTTP/1.1\r\nhost: {self.health_host}\r\n"
                "user-agent: liveswap-health\r\nconnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        finally:
            writer.close()
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise BootFailed(f"health check GET {self.settings.health_path} got no HTTP answer ({line[:80]!r})")
        return int(parts[1])

    async def _read_worker(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        try:
            await self._read_worker_lines(worker, reader)
        except (ConnectionError, ValueError):
            pass  # the worker died (its exit is handled when it is reaped) or sent an overlong line

    async def _read_worker_lines(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if line.startswith(b"{"):
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
            else:  # faulthandler's report of a fatal signal: every thread's stack
                if len(worker.dump) < 500:
                    worker.dump.append(line.decode("utf-8", "replace").rstrip())
                continue
            event = msg.get("event")
            if event == "beat":
                worker.last_beat = time.monotonic()
            elif event == "boot_error":
                worker.boot_error = (str(msg.get("error", "boot error")), str(msg.get("detail", "")))
            elif event == "live" and not worker.live.done():
                worker.live.set_result(None)
            elif event == "draining" and not worker.draining.done():
                worker.draining.set_result(None)

    async def _go(self, workers: list[Worker]) -> None:
        for w in workers:
            w.send(cmd="go")
        await asyncio.wait([w.live for w in workers], timeout=ACK_TIMEOUT)
        now = time.monotonic()
        for w in workers:
            if not w.live.done():
                log.warning("%s did not confirm it accepts within %.0f s", w.describe(), ACK_TIMEOUT)
            if w.state is WorkerState.READY:
                w.state = WorkerState.LIVE
                w.live_at = w.last_beat = now

    # ---- reloads --------------------------------------------------------------------------------
    def request_reload(self, reason: str) -> asyncio.Future[dict[str, Any]]:
        """Ask for a reload; the future gets its outcome. Requests during a reload are coalesced."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.stopping:
            fut.set_result({"ok": False, "stopping": True, "error": STOPPING})
            return fut
        self.waiting.append((fut, reason))
        if self.live is not None or self.reload_task is not None:
            log.info(
                "reload requested (%s)%s",
                reason,
                "; coalesced with the next transaction" if self.reload_task is not None else "",
            )
        if self.reload_task is None:
            self.reload_task = self._spawn_task(self._reloads())
        return fut

    async def _reloads(self) -> None:
        try:
            while self.waiting and not self.stopping:
                batch, self.waiting = self.waiting, []
                outcome = await self._transaction("; ".join(sorted({r for _, r in batch})))
                for fut, _ in batch:
                    if not fut.done():
                        fut.set_result(outcome)
        finally:
            self.reload_task = None
            for fut, _ in self.waiting:
                if not fut.done():
                    fut.set_result({"ok": False, "stopping": True, "error": STOPPING})
            self.waiting = []

    async def _transaction(self, reason: str) -> dict[str, Any]:
        """Start a new generation; make it LIVE only if every worker is ready and healthy."""
        t0 = time.monotonic()
        gen = Generation(self.next_gen)
        self.next_gen += 1
        self.generations.append(gen)
        old = self.live
        if old is not None:
            self.systemd.reloading()
            log.info("reload: starting generation %d (%s)", gen.number, reason)
        boots = [self._spawn_task(self._boot(gen, slot)) for slot in range(self.settings.workers)]
        done, pending = await asyncio.wait(boots, return_when=asyncio.FIRST_EXCEPTION)
        failure = next((t.exception() for t in done if t.exception() is not None), None)
        if self.stopping:  # a stop arrived during the reload (its workers were killed): not a rollback
            failure = BootFailed(STOPPING)
        outcome: dict[str, Any] = {"generation": gen.number, "reason": reason, "time": time.time()}
        if failure is not None:
            for task in pending:
                task.cancel()
            await asyncio.wait(boots)
            for w in gen.workers:
                self._kill(w)
            gen.state = GenState.FAILED
            outcome.update(ok=False, error=str(failure), detail=getattr(failure, "detail", ""))
            if self.stopping:
                outcome["stopping"] = True
        else:
            await self._go(gen.workers)
            gen.state = GenState.LIVE
            self.live = gen
            if old is not None:
                self._drain_generation(old)
                await self._stopped_accepting(old)
            outcome.update(ok=True)
            warning, hint = self._health_warning(gen)
            if warning:
                outcome.update(warning=warning, warning_hint=hint)
                log.warning("%s; hint: %s", warning, hint)
        outcome["duration_ms"] = round((time.monotonic() - t0) * 1000, 1)
        if old is not None or not outcome["ok"]:
            self.last_reload = outcome
            self.counts["reloads_ok" if outcome["ok"] else "reloads_failed"] += 1
        if old is None or outcome.get("stopping"):
            pass
        elif outcome["ok"]:
            log.info(
                "reload ok: generation %d live in %.1f ms; draining generation %d",
                gen.number,
                outcome["duration_ms"],
                old.number,
            )
            self.systemd.send(READY=1, STATUS=f"serving generation {gen.number}")
        else:
            log.error(
                "reload failed after %.1f ms, rolled back: generation %d keeps serving: %s",
                outcome["duration_ms"],
                old.number,
                outcome["error"],
            )
            if outcome["detail"]:
                log.error("%s", outcome["detail"])
            self.systemd.send(READY=1, STATUS=f"reload failed; serving generation {old.number}")
        self._forget_finished()
        return outcome

    def _health_warning(self, gen: Generation) -> tuple[str, str]:
        """A warning and its hint when the health check answered 4xx: it then proves little."""
        statuses = sorted({w.health_status for w in gen.workers if 400 <= w.health_status < 500})
        if not statuses:
            return "", ""
        return (
            f"generation {gen.number} went live, but its health check GET {self.settings.health_path} "
            f"(Host: {self.health_host}) answered {', '.join(map(str, statuses))}: a 4xx proves little (a broken "
            "release may pass it)",
            "point --health-path at a route that answers 200; Django answers 400 to a Host that is not in "
            "ALLOWED_HOSTS: add it there, or pass --health-host",
        )

    def _drain_generation(self, gen: Generation) -> None:
        gen.state = GenState.DRAINING
        for timer in gen.restart_pending.values():
            timer.cancel()
        gen.restart_pending.clear()
        for w in gen.alive():
            self._drain_worker(w)
        if not gen.alive():
            gen.state = GenState.GONE

    async def _stopped_accepting(self, gen: Generation) -> None:
        """Wait until every worker of ``gen`` has closed its listeners (or exited): from then on no
        new connection can reach the old code, so the reload's caller is told only then. A worker
        whose loop has stopped turning cannot answer: the reload does not wait for it (the watchdog
        replaces it, and the drain timeout ends it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT
        for w in gen.alive():
            if self._silent_for(w) > STALE_BEATS * beat_interval(self.settings.worker_timeout):
                log.warning(
                    "%s has sent no heartbeat for %.1f s: not waiting for it to stop accepting",
                    w.describe(),
                    self._silent_for(w),
                )
                continue
            waits: list[asyncio.Future[Any]] = [w.draining, w.exited]
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not (w.draining.done() or w.exited.done()):
                log.warning("%s did not confirm within %.0f s that it stopped accepting", w.describe(), ACK_TIMEOUT)

    def _silent_for(self, worker: Worker) -> float:
        """Seconds since ``worker``'s last heartbeat (0 when heartbeats are off or it is not live yet)."""
        if not self.settings.worker_timeout or not worker.last_beat:
            return 0.0
        return time.monotonic() - worker.last_beat

    def _drain_worker(self, worker: Worker, final: bool = False) -> None:
        """Tell ``worker`` to stop accepting and finish what it has. ``final``: the service stops, and
        it first accepts what waits in the listeners' queues (it is among their last holders)."""
        if worker.state in (WorkerState.DEAD, WorkerState.DRAINING):
            return
        worker.state = WorkerState.DRAINING
        worker.expected_exit = True
        worker.live_at = time.monotonic()
        worker.send(cmd="drain", final=final)
        worker.hammer = asyncio.get_running_loop().call_later(self.settings.drain_timeout, self._hammer, worker)

    def _hammer(self, worker: Worker) -> None:
        if worker.state is not WorkerState.DEAD:
            log.warning(
                "hammer time: %s still draining after %.1f s (--drain-timeout); sending SIGKILL",
                worker.describe(),
                self.settings.drain_timeout,
            )
            self._kill(worker)

    # ---- hung workers ------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        """Every heartbeat interval: a live worker silent for --worker-timeout is hung."""
        timeout = self.settings.worker_timeout
        while True:
            await asyncio.sleep(beat_interval(timeout))
            gen = self.live
            if gen is None or self.stopping:
                continue
            for w in gen.workers:
                if w.state is WorkerState.LIVE and self._silent_for(w) > timeout:
                    self._on_hung(gen, w)

    def _on_hung(self, gen: Generation, worker: Worker) -> None:
        worker.state = WorkerState.HUNG
        worker.expected_exit = True
        self.counts["hung"] += 1
        log.error(
            "%s is hung: its event loop has not turned for %.1f s (--worker-timeout %g s); starting a "
            "replacement, then killing it",
            worker.describe(),
            self._silent_for(worker),
            self.settings.worker_timeout,
        )
        self._spawn_task(self._replace_hung(gen, worker))

    async def _replace_hung(self, gen: Generation, hung: Worker) -> None:
        """Boot and health-check a replacement first, then kill the hung worker, logging where it was stuck."""
        replaced = False
        if gen is self.live and not self.stopping:
            self.counts["restarts"] += 1
            try:
                worker = await self._boot(gen, hung.slot, hung.restarts + 1)
            except BootFailed as exc:
                log.error("replacement of hung %s failed: %s", hung.describe(), exc)
            else:
                if gen is self.live and not self.stopping:
                    await self._go([worker])
                    log.info("%s replaced the hung %s", worker.describe(), hung.describe())
                    replaced = True
                else:
                    self._drain_worker(worker)
        if process_state(hung.pid) == "T":
            # SIGSTOP (a person, a freezer): nothing is stuck, so resume it and let it drain; its
            # in-flight requests complete instead of dying with it.
            log.warning("%s was stopped by a signal; resuming it (SIGCONT) to drain", hung.describe())
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung.pid, signal.SIGCONT)
            hung.state = WorkerState.LIVE
            self._drain_worker(hung)
        else:
            await self._kill_with_stacks(hung)
        if not replaced and gen is self.live and not self.stopping:
            self._schedule_restart(gen, hung)

    async def _kill_with_stacks(self, worker: Worker) -> None:
        """SIGABRT makes faulthandler write every thread's stack to the control channel and the process
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
            self._kill(worker)
        if worker.dump:
            log.error("where %s was stuck:\n%s", worker.describe(), "\n".join(worker.dump))
        else:
            log.error("%s left no stacks", worker.describe())

    # ---- crashes --------------------------------------------------------------------------------
    def _schedule_restart(self, gen: Generation, dead: Worker) -> None:
        crashes = gen.slot_crashes.get(dead.slot, 0)
        if dead.live_at and time.monotonic() - dead.live_at >= STABLE_AFTER:
            crashes = 0
        crashes += 1
        gen.slot_crashes[dead.slot] = crashes
        delay = 0.0 if crashes == 1 else min(self.settings.backoff_max, 0.1 * 2 ** (crashes - 2))
        if crashes > 1:
            log.warning(
                "slot %d of generation %d crashed %d times in a row; restarting in %.1f s",
                dead.slot,
                gen.number,
                crashes,
                delay,
            )
        loop = asyncio.get_running_loop()
        gen.restart_pending[dead.slot] = loop.call_later(
            delay, lambda: self._spawn_task(self._restart(gen, dead.slot, dead.restarts + 1))
        )

    async def _restart(self, gen: Generation, slot: int, restarts: int) -> None:
        gen.restart_pending.pop(slot, None)
        if gen is not self.live or self.stopping:
            return
        self.counts["restarts"] += 1
        try:
            worker = await self._boot(gen, slot, restarts)
        except BootFailed as exc:
            log.error("restart of slot %d (generation %d) failed: %s", slot, gen.number, exc)
            if getattr(exc, "detail", ""):
                log.error("%s", exc.detail)
            dead = Worker(gen, slot, restarts=restarts)
            dead.state = WorkerState.DEAD
            self._schedule_restart(gen, dead)
            return
        if gen is not self.live or self.stopping:
            self._drain_worker(worker)
            return
        await self._go([worker])
        log.info("%s replaced the crashed worker (restart %d)", worker.describe(), restarts)

    # ---- stopping ---------------------------------------------------------------------------------
    async def _stop(self, graceful: bool) -> None:
        self.stopping = True
        self.systemd.send(STOPPING=1)
        self.spawner.close()
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
                    self._drain_worker(w, final=True)
                else:
                    self._kill(w)
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
        if self.spawner.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.spawner.pid, signal.SIGKILL)
        self._check_stopped()

    def _fast_stop(self) -> None:
        alive = [w for g in self.generations for w in g.alive()]
        log.warning("second SIGINT: stopping now; killing %d worker(s)", len(alive))
        for w in alive:
            self._kill(w)

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
            outcome = await self.request_reload("liveswap reload")
            return dict(outcome)
        self.events.put_nowait(("stop", signal.SIGTERM))
        return {"ok": True, "stopping": True, "pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        live_workers = len([w for w in self.live.workers if w.state is WorkerState.LIVE]) if self.live else 0
        if self.stopping:
            state = "stopping"
        elif self.live is None:
            state = "starting"
        elif live_workers < self.settings.workers:
            state = f"degraded: {live_workers} of {self.settings.workers} workers up, restarting with backoff"
        else:
            state = "serving"
        return {
            "name": self.name,
            "pid": os.getpid(),
            "app": self.settings.app,
            "state": state,
            "uptime": round(time.time() - self.started_at, 3),
            "listening": self.listening,
            "workers": self.settings.workers,
            "generations": [g.status(now) for g in self.generations],
            "last_reload": self.last_reload,
            "reloading": self.reload_task is not None,
            **self.counts,
        }

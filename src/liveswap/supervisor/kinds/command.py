"""An external command as a worker (``liveswap run -- COMMAND``): gunicorn, hypercorn, a Go or Node
binary. It gets the listening sockets (``execute.py`` says how) and accepts on them as soon as it
starts: unlike our own workers it cannot wait for ``go``, so a broken build may see public traffic
before it fails its health check. ``--proxy`` closes that gap (``proxied.py``).

Readiness, first of: ``READY=1`` on ``NOTIFY_SOCKET`` (from the command or any process of its
group); an HTTP answer on the private health socket (passed last in ``LISTEN_FDS``, or as
``{fd:health}``: a connection made right after the start waits in its queue until the server
accepts); ``--ready-after``. The health check is that answer's status code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._os import exit_text
from ...config import Settings
from ...config.envfile import EnvFile
from ...sockets import Listener
from ..generation import BootFailed, Worker
from ..health import probe
from . import procfs
from ._env import file_variables
from .execute import FIRST_FD, HEALTH_NAME, exec_child, expand, fd_keys, fd_name, health_listener, placeholders

__all__ = ["CommandWorkers", "DEFAULT_READY_AFTER"]

log = logging.getLogger("liveswap.supervisor")

DEFAULT_READY_AFTER = 1.0  # when nothing else can tell that the command is ready
TAIL_LINES = 20  # of its stderr, kept for the message when it fails to start
DRAIN_POLL = 0.02  # how often /proc is read to see whether the old command closed its sockets
HEALTH_POLL = 0.05  # while waiting for the health answer: how often /proc is read
_CLEARED = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "EINHORN_FD_COUNT")


@dataclass(eq=False)
class Child:
    """What the kind holds for one command worker."""

    argv: list[str]
    port: int  # where its health check goes (the private health socket, or $PORT with --proxy)
    health_sock: socket.socket | None = None  # our end of the private health listener
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    probe: asyncio.Task[int] | None = None
    relay: asyncio.Task[None] | None = None
    relay_fd: int = -1  # the read end of its stderr pipe
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class CommandWorkers:
    """Starts the command once per worker slot, with the sockets, and stops it with --stop-signal."""

    beats = False  # no heartbeat channel: the watchdog leaves these workers alone

    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[Listener],
        notify_socket: str,
        spawn_task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.settings = settings
        self.listeners = list(listeners)
        self.notify_socket = notify_socket
        self.spawn_task = spawn_task
        self.names = [x.name for x in self.listeners]
        marks = placeholders(settings.command, self.names)
        # A server that takes its socket by {fd} alone never sees the health socket.
        self.health_usable = not marks.uses_fds or marks.uses_health
        self.ready_after = settings.ready_after or (0.0 if self.health_usable else DEFAULT_READY_AFTER)
        self.stop_signal = signal.Signals[settings.stop_signal]
        self.children: dict[Worker, Child] = {}
        self.gone: dict[Worker, Child] = {}  # exited lately: their last words may still be asked for
        self.inodes = {os.fstat(x.sock.fileno()).st_ino for x in self.listeners}
        self._said_unchecked = False
        self._said_no_health = False
        self.env_file = EnvFile(settings.env_file)

    def start(self) -> None:
        if not self.health_usable:
            log.info(
                "the command takes its socket by {fd} alone: it is taken as ready %g s after it starts "
                "(--ready-after), with no health check; pass {fd:health} as a second socket to have one",
                self.ready_after,
            )

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def owns(self, pid: int) -> bool:
        return False

    def environment(self, worker: Worker) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED and not k.startswith("EINHORN_FD_")}
        if not worker.generation.error_page:  # (dev: the page that shows a broken --env-file needs none)
            env.update(file_variables(self.env_file, worker))
        env["NOTIFY_SOCKET"] = self.notify_socket
        env["LIVESWAP_GENERATION"] = str(worker.generation.number)
        env["LIVESWAP_WORKER"] = str(worker.slot)
        n = len(self.listeners)
        env["LISTEN_FDS"] = str(n + 1)
        env["LISTEN_FDNAMES"] = ":".join([*map(fd_name, self.names), HEALTH_NAME])
        env["EINHORN_FD_COUNT"] = str(n)
        for i in range(n):
            env[f"EINHORN_FD_{i}"] = str(FIRST_FD + i)
        return env

    def _public_port(self) -> int:
        for x in self.listeners:
            if x.sock.family in (socket.AF_INET, socket.AF_INET6):
                port: int = x.sock.getsockname()[1]
                return port
        return 0

    async def spawn(self, worker: Worker, timeout: float) -> None:
        health = health_listener()
        n = len(self.listeners)
        fdmap = {"": FIRST_FD, "health": FIRST_FD + n, **{k: FIRST_FD + i for k, i in fd_keys(self.names).items()}}
        argv = expand(self.settings.command, fdmap, self._public_port())
        fds = [*(x.sock.fileno() for x in self.listeners), health.fileno()]
        child = Child(argv, health.getsockname()[1], health_sock=health)
        try:
            worker.pid = self.fork_exec(argv, self.environment(worker), fds, child)
        except BootFailed:
            health.close()
            raise
        self.begin(worker, child)

    def fork_exec(self, argv: list[str], env: dict[str, str], fds: list[int], child: Child) -> int:
        """Fork, exec ``argv``; the child's pid. Its stderr is relayed by us (its last lines explain a
        failed start); raises BootFailed when exec itself failed."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            exec_child(argv, env, fds, out_w, parent, err_w)
        os.close(out_w)
        os.close(err_w)
        try:
            chunks = []
            while chunk := os.read(err_r, 4096):  # EOF at exec: the pipe is close-on-exec
                chunks.append(chunk)
        finally:
            os.close(err_r)
        if chunks:
            os.close(out_r)
            reason = b"".join(chunks).decode("utf-8", "replace")
            raise BootFailed(f"could not start {argv[0]!r}: {reason}", _hint_for_exec(argv[0], reason))
        child.relay_fd = out_r
        child.relay = self.spawn_task(self._relay(out_r, child))
        return pid

    def begin(self, worker: Worker, child: Child) -> None:
        """Watch for readiness once the process runs."""
        self.children[worker] = child
        if self.health_usable:
            child.probe = self.spawn_task(self._probe(child))
        child.tasks.append(self.spawn_task(self._readiness(worker, child)))

    async def _relay(self, fd: int, child: Child) -> None:
        """Copy the command's stderr to ours as it comes, keeping its last lines."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
                child.tail.append(line.decode("utf-8", "replace").rstrip())
        except (ValueError, ConnectionError):
            pass
        finally:
            transport.close()

    async def connect(self, child: Child) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", child.port)

    async def _probe(self, child: Child) -> int:
        try:
            reader, writer = await self.connect(child)
            return await probe(reader, writer, self.settings.health_path, self._health_host())
        except OSError as exc:  # (reset: it died while answering; a boot failure, not ours)
            raise BootFailed(f"health check GET {self.settings.health_path} failed: {exc}") from None

    def _health_host(self) -> str:
        from ..health import health_host

        return self.settings.health_host or health_host(self.listeners)

    async def _readiness(self, worker: Worker, child: Child) -> None:
        waits: list[asyncio.Future[Any]] = []
        if child.probe is not None:
            waits.append(child.probe)
        if self.ready_after:
            waits.append(asyncio.ensure_future(asyncio.sleep(self.ready_after)))
        if not waits:
            return  # READY=1 only
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not worker.ready.done():
            worker.ready.set_result(None)

    async def last_words(self, worker: Worker) -> None:
        child = self.children.get(worker) or self.gone.pop(worker, None)
        if child is None:
            return
        if child.relay is not None:
            await asyncio.wait([child.relay], timeout=1.0)
        code = worker.exited.result() if worker.exited.done() else 0
        worker.boot_error = _boot_error(child.argv, code, list(child.tail))

    async def check_health(self, worker: Worker, path: str, host: str) -> int:
        child = self.children.get(worker)
        if child is None or child.probe is None:
            if not self._said_unchecked:
                self._said_unchecked = True
                log.warning("%s went through no health check: nothing proves it answers", worker.describe())
            return 0
        served = await self._health_served(worker, child, child.probe)
        if not served:
            # READY=1 came, and the command waits with epoll on its public socket but not on the
            # health socket (a Go program that takes fd 3 of LISTEN_FDS, node's listen({fd: 3})):
            # no answer can come. (A server that select()s, like gunicorn's sync workers, shows
            # nothing in /proc: its answer is waited for until --boot-timeout, so a broken build
            # whose workers never start is caught.)
            if not self._said_no_health:
                self._said_no_health = True
                log.warning(
                    "%s said it is ready but does not serve the health socket (%s, fd %d, the last of "
                    "LISTEN_FDS): it and later ones go live with no health check; serve that socket too "
                    "(docs/command-mode.md)",
                    worker.describe(),
                    HEALTH_NAME,
                    FIRST_FD + len(self.listeners),
                )
            return 0
        try:
            return child.probe.result()
        except OSError as exc:
            raise BootFailed(f"health check of {worker.describe()} failed: {exc}") from None

    async def _health_served(self, worker: Worker, child: Child, answer: asyncio.Task[int]) -> bool:
        """Wait for the health answer (the boot deadline bounds it); False as soon as /proc shows
        the command polling a public socket and not the health socket. Raises BootFailed if the
        command exits first."""
        health = os.fstat(child.health_sock.fileno()).st_ino if child.health_sock is not None else 0
        while True:
            done, _ = await asyncio.wait([answer, worker.exited], timeout=HEALTH_POLL, return_when="FIRST_COMPLETED")
            if answer in done and not answer.cancelled():
                return True
            if worker.exited.done() or answer.cancelled():
                await self.last_words(worker)
                raise BootFailed(*(worker.boot_error or (f"{worker.describe()} exited during its health check", "")))
            if health and worker.ready.done():
                polled = procfs.polls(worker.pid)
                if polled & self.inodes and health not in polled:
                    return False

    def timeout_hint(self, worker: Worker) -> str:
        """Why a command may not have become ready and healthy in time."""
        child = self.children.get(worker)
        cmd = shlex.join(child.argv) if child is not None else " ".join(self.settings.command)
        fd = FIRST_FD + len(self.listeners)
        if child is not None and child.probe is not None and not worker.ready.done():
            return (
                "hint: it sent no READY=1 to $NOTIFY_SOCKET and never answered on the health socket "
                f"({HEALTH_NAME}, fd {fd}, the last of LISTEN_FDS): does it take its sockets from LISTEN_FDS or "
                "{fd}? A server that serves only its first socket must send READY=1, or be given --ready-after "
                f"SECONDS (docs/command-mode.md); it is run as: {cmd}"
            )
        if child is not None and child.probe is not None and not child.probe.done():
            return (
                f"hint: it said it is ready but did not answer GET {self.settings.health_path} on the health socket "
                f"in time; check its output above; it is run as: {cmd}"
            )
        return f"hint: raise --boot-timeout if it needs longer to start; it is run as: {cmd}"

    async def activate(self, workers: list[Worker], timeout: float) -> None:
        for w in workers:  # it has accepted since it started
            if not w.live.done():
                w.live.set_result(None)

    def drain(self, worker: Worker, final: bool, next_generation: int) -> None:
        self.signal(worker, self.stop_signal)
        child = self.children.get(worker)
        if child is not None:
            child.tasks.append(self.spawn_task(self._released(worker)))

    def export(self, worker: Worker) -> dict[str, Any]:
        child = self.children.get(worker)
        return {"argv": child.argv, "stderr_fd": child.relay_fd} if child is not None else {}

    async def adopt(self, worker: Worker, info: dict[str, Any]) -> None:
        child = Child(list(info.get("argv", self.settings.command)), 0)
        self.children[worker] = child
        if info.get("stderr_fd", -1) >= 0:
            child.relay_fd = info["stderr_fd"]
            child.relay = self.spawn_task(self._relay(child.relay_fd, child))

    def signal(self, worker: Worker, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def kill(self, worker: Worker) -> None:
        """SIGKILL its whole process group (gunicorn's workers too, not just its master)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)

    async def _released(self, worker: Worker) -> None:
        """``worker.draining`` once no process of its group holds a public listening socket."""
        while not worker.exited.done() and procfs.holds(worker.pid, self.inodes):
            await asyncio.sleep(DRAIN_POLL)
        if not worker.draining.done():
            worker.draining.set_result(None)

    def worker_exited(self, worker: Worker) -> None:
        # What is left of its group (children of a master that died) goes with it.
        self.kill(worker)
        child = self.children.pop(worker, None)
        if child is None:
            return
        self.gone[worker] = child
        while len(self.gone) > 64:
            del self.gone[next(iter(self.gone))]
        if child.health_sock is not None:
            child.health_sock.close()
        for task in [*child.tasks, *([child.probe] if child.probe else [])]:
            task.cancel()
        # Its stderr is read to EOF by the relay (its last lines explain an exit during the boot).


def _hint_for_exec(program: str, reason: str) -> str:
    if "FileNotFoundError" in reason:
        return (
            f"hint: {program!r} is not on PATH ({os.environ.get('PATH', '')}); check the spelling, give its full "
            "path, or ./name for a program in this folder"
        )
    if "PermissionError" in reason:
        return f"hint: {program!r} is not executable: chmod +x it, or run it through its interpreter"
    return ""


def _boot_error(argv: list[str], code: int, tail: list[str]) -> tuple[str, str]:
    """Why the command exited before it was ready, with lrt's hints."""
    message = f"{argv[0]} exited before it was ready ({exit_text(code)})"
    lines = []
    if tail:
        lines.append("its last lines on stderr:")
        lines += [f"  {x}" for x in tail]
    if code == 127:
        lines.append("hint: exit status 127 is a shell's 'command not found': check the command line")
    elif any("address already in use" in x.lower() for x in tail):
        lines.append(
            "hint: it tried to bind a port itself: liveswap already holds the sockets; give them to it by "
            "LISTEN_FDS or {fd} (docs/command-mode.md), or run it on $PORT behind --proxy"
        )
    else:
        lines.append("hint: check the output above for errors it logged; it is run as: " + shlex.join(argv))
    return message, "\n".join(lines)

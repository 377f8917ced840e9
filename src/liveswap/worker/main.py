"""A worker under the liveswap supervisor: the child side of the reload transaction.

    fork (from the template) -> import the app -> lifespan startup -> serve the private health
    channel -> READY=1 on NOTIFY_SOCKET -> wait for "go" -> accept on the public sockets ->
    on "drain" (or SIGTERM) stop accepting, finish in-flight requests -> exit 0

The control channel (a socket pair with the supervisor) carries one JSON object per line. If it
closes, the supervisor is gone and so do we (PR_SET_PDEATHSIG covers a SIGKILLed supervisor too).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import notify
from .._log import setup_logging
from .._os import EXIT_BOOT_ERROR, EXIT_OK, EXIT_ORPHANED, adopted_by
from .._proctitle import set_title
from ..config import Settings
from ..errors import AppLoadError
from ..http.app import app_traceback, load_app
from ..http.server import StartupFailed, WorkerServer, new_event_loop
from ..sockets import adopt_fds
from ..tls import CertBundle, server_context
from . import channel
from .recycle import limit_for, recycle_when_due

if TYPE_CHECKING:
    from ..dev.worker import DevWorker

__all__ = ["main"]

log = logging.getLogger("liveswap.worker")
VERDICT_TIMEOUT = 10.0  # for the template's fresh-or-stale answer


def _send(control: socket.socket, message: channel.Event) -> None:
    try:
        control.sendall(channel.encode(message))
    except OSError:
        pass


def main() -> int:
    """Entry point in a freshly forked worker; the environment says everything."""
    t0 = time.perf_counter()
    forked_with = frozenset(sys.modules)  # the template's modules: the supervisor knows them already
    env = os.environ
    settings = Settings(**json.loads(env["LIVESWAP_SETTINGS"]))
    generation = env.get("LIVESWAP_GENERATION", "?")
    setup_logging(
        settings.log_level,
        "worker",
        generation=int(generation) if generation.isdigit() else None,
        log_format=settings.log_format,
        log_config=settings.log_config,
    )
    set_title(f"worker gen {generation} {settings.app}")
    # Ctrl-C, a terminal hang-up or `kill -HUP -PGID` signal the whole process group: the
    # supervisor decides what they mean (drain, reload), not each worker on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control = socket.socket(fileno=int(env.pop("LIVESWAP_CONTROL_FD")))
    health = socket.socket(fileno=int(env.pop("LIVESWAP_HEALTH_FD")))
    listeners = adopt_fds(
        [int(fd) for fd in env.pop("LIVESWAP_LISTEN_FDS", "").split(",") if fd],
        json.loads(env.pop("LIVESWAP_LISTEN_NAMES", "[]")),
    )
    dev = _dev_worker(env, generation)
    error_page = env.pop("LIVESWAP_ERROR_PAGE", "")
    tls = env.pop("LIVESWAP_TLS", "")  # the certificate pair and its key: gone before the app is imported
    app: Any = None
    kind, failed = "", None
    try:
        if dev is not None and error_page:
            app, kind = dev.error_app(error_page), "error page"
        else:
            app, kind = load_app(
                settings.app,
                factory=settings.factory,
                interface=settings.interface,
                app_dir=settings.app_dir,
                wsgi_adapter=settings.wsgi_adapter,
            )
    except BaseException as exc:  # noqa: BLE001 - anything the app's import raises is a boot error
        failed = exc
    if not _template_fresh(env):
        return EXIT_OK  # unseen: the supervisor never had our pid, and asks a fresh template
    if isinstance(failed, AppLoadError):
        log.error("cannot load %s: %s", settings.app, failed)
        if failed.hint:
            log.error("hint: %s", failed.hint)
        _boot_failed(control, dev, failed, channel.BootError(str(failed), failed.hint or ""))
        return EXIT_BOOT_ERROR
    if failed is not None:
        detail = app_traceback(failed)
        log.error("cannot load %s:\n%s", settings.app, detail)
        _boot_failed(control, dev, failed, channel.BootError(f"{type(failed).__name__}: {failed}", detail))
        return EXIT_BOOT_ERROR
    if dev is not None:
        app = dev.wrap(app)
    import_ms = (time.perf_counter() - t0) * 1000
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    debug = None
    if settings.debug_bind:
        app, debug = _start_debug(app, settings, generation, loop)
    try:
        return loop.run_until_complete(
            _serve(
                app,
                kind,
                settings,
                control,
                health,
                [lst.sock for lst in listeners],
                (t0, import_ms),
                dev,
                forked_with,
                tls,
            )
        )
    finally:
        if debug is not None:
            debug.stop()
        sys.stdout.flush()
        sys.stderr.flush()


def _template_fresh(env: MutableMapping[str, str]) -> bool:
    """A worker handed to a spare imports the app while the template checks that nothing it preloaded
    changed on disk; it hears the verdict here, before it writes to any channel or runs lifespan."""
    fd = env.pop("LIVESWAP_VERDICT_FD", "")
    if not fd:
        return True  # forked after the check
    with socket.socket(fileno=int(fd)) as sock:
        sock.settimeout(VERDICT_TIMEOUT)  # a template that hangs instead of answering: we are not wanted
        try:
            verdict = sock.recv(16)
        except OSError:  # (TimeoutError too)
            verdict = b""
    return verdict == b"fresh"


def _dev_worker(env: Mapping[str, str], generation: str) -> DevWorker | None:
    """``liveswap dev``'s side of this worker, or None under ``liveswap run``."""
    if env.get("LIVESWAP_DEV") != "1":
        return None
    from ..dev.worker import DevWorker

    dev = DevWorker.from_env(env, int(generation))
    dev.prepare()
    return dev


def _boot_failed(control: socket.socket, dev: DevWorker | None, exc: BaseException, error: channel.BootError) -> None:
    if dev is not None:  # the error page, and the files to watch for the save that fixes it
        _send(control, channel.BootError(error.error, error.detail, dev.failure(exc)))
        _send(control, channel.Imported(dev.paths(exc)))
    else:
        _send(control, error)


def _debug_socket_dir(name: str) -> str:
    from ..control import worker_debug_dir

    path = worker_debug_dir(name)
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


def _start_debug(app: Any, settings: Settings, generation: str, loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    """Count requests and serve this worker's debug endpoints on a private unix socket."""
    from ..debug import DebugServer, Metrics, MetricsMiddleware, bind_debug

    metrics = Metrics()
    metrics.set_gauge("worker_generation", float(generation), "Generation of this worker.")
    path = os.path.join(_debug_socket_dir(settings.instance_name()), f"{os.getpid()}.sock")
    server = DebugServer(
        bind_debug(f"unix:{path}"),
        metrics=metrics,
        main_loop=loop,
        token=settings.debug_token or None,
        extra=lambda: {"generation": int(generation)},
    )
    server.start()
    return MetricsMiddleware(app, metrics), server


async def _serve(
    app: Any,
    kind: str,
    settings: Settings,
    control: socket.socket,
    health: socket.socket,
    sockets: list[socket.socket],
    timing: tuple[float, float],
    dev: DevWorker | None,
    forked_with: frozenset[str] = frozenset(),
    tls: str = "",
) -> int:
    loop = asyncio.get_running_loop()
    public_tls = health_tls = None
    if tls:  # liveswap run --certfile: the pair the supervisor validated for this generation
        bundle = CertBundle.from_env(tls)
        public_tls = server_context(bundle)
        health_tls = server_context(bundle, verify_clients=False) if bundle.verifies_clients else public_tls
    server = WorkerServer(
        app,
        sockets,
        **settings.connection_limits(),
        **settings.http_options(),
        redirect_while_draining=dev is not None,  # dev: what arrives during a reload goes to the new code
        threads=settings.threads,
        stall_timeout=settings.worker_timeout,  # WSGI: a client that takes nothing holds a thread no longer
        ssl_context=public_tls,
    )
    try:
        await server.startup()
    except StartupFailed as exc:
        if dev is not None:
            from ..dev.errorpage import Failure

            page = Failure("startup", str(exc), traceback=exc.detail).to_json()
            _send(control, channel.BootError(str(exc), exc.detail, page))
            _send(control, channel.Imported(dev.paths(exc)))
        else:
            _send(control, channel.BootError(str(exc), exc.detail))
        return EXIT_BOOT_ERROR
    # A fatal signal (SIGABRT from the supervisor when this worker hangs, or a crash) writes every
    # thread's stack to the control channel: the supervisor logs them as where it was stuck.
    faulthandler.enable(file=control.fileno(), all_threads=True)
    control.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=control)
    stop = asyncio.Event()

    def terminate() -> None:  # SIGTERM (systemd's KillMode=control-group, say): the service stops
        if dev is not None:
            dev.draining(0)
        server.stop_accepting(final=True)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    supervisor = os.environ.pop("LIVESWAP_SUPERVISOR_PID", "")
    if supervisor:  # forked by the template: make sure we die with the supervisor before we serve
        adopted_by(int(supervisor))
    notify.notify(READY=1, STATUS=f"{kind} app {settings.app} started")
    t0, import_ms = timing
    log.info("ready in %.1f ms (%s app imported in %.1f ms)", (time.perf_counter() - t0) * 1000, kind, import_ms)
    # The health request is already waiting (the supervisor sent it with the spawn): READY goes out
    # first, so the supervisor's wake-up overlaps the app's answer.
    await server.serve_connection(health, health_tls)
    orphaned = False

    live = False  # imports are reported from "go" on: never during the health check

    async def commands() -> None:
        nonlocal orphaned, live
        while True:
            line = await reader.readline()
            if not line:
                orphaned = True
                stop.set()
                return
            command = channel.decode_command(line)
            if isinstance(command, channel.Go):
                await server.go()
                live = True
                # Before "live": the supervisor has the list (the files to watch) when the reload ends.
                report_imports()
                writer.write(channel.encode(channel.Live()))
                await writer.drain()
            elif isinstance(command, channel.Drain):
                # Acknowledge only once our listeners are closed: the supervisor reports a reload
                # done when no old worker can accept a new connection any more.
                if dev is not None:  # open pages reload onto the new generation; their streams end
                    dev.draining(command.next_generation)
                server.stop_accepting(final=command.final)
                writer.write(channel.encode(channel.Draining()))
                await writer.drain()
                stop.set()
                return

    async def heartbeat(interval: float) -> None:
        # Proof that this loop turns: the supervisor replaces a worker that stays silent for
        # --worker-timeout (a blocked loop, a deadlock, a SIGSTOP).
        beat = channel.encode(channel.Beat())
        while True:
            writer.write(beat)
            if live:
                report_imports()  # dev: a module imported by a request is watched from then on
            await asyncio.sleep(interval)

    reported = 0  # len(sys.modules) when the imports were last reported

    def report_imports() -> None:
        # What the app imported: the template learns to preload the modules from outside the
        # project; dev mode watches the project's files.
        nonlocal reported
        if len(sys.modules) == reported:
            return
        reported = len(sys.modules)
        paths = dev.paths() if dev is not None else []
        modules = channel.outside_modules(settings.app_dir, known=forked_with)
        writer.write(channel.encode(channel.Imported(paths, modules)))

    reading = loop.create_task(commands())
    beating = (
        loop.create_task(heartbeat(channel.beat_interval(settings.worker_timeout))) if settings.worker_timeout else None
    )
    recycling = None
    if settings.max_requests:  # ask to be replaced once this worker has served its share
        limit = limit_for(settings.max_requests, settings.max_requests_jitter)
        recycling = loop.create_task(recycle_when_due(server.limits, limit, writer))
    await stop.wait()
    if orphaned:
        log.error("the supervisor is gone; exiting")
        os._exit(EXIT_ORPHANED)
    reading.cancel()
    if recycling is not None:
        recycling.cancel()
    clean = await server.drain(settings.drain_timeout)
    if beating is not None:
        beating.cancel()
    await server.shutdown()
    log.info("drained%s; exiting", "" if clean else " (with requests cut at the drain timeout)")
    writer.close()
    return EXIT_OK

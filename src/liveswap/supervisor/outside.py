"""What the supervisor tells the world beyond its workers: systemd (the watchdog, timeout extensions
while a slow boot or drain progresses, the fd store), the PID file, and the hook commands
(``--on-reload-start``, ``--on-reload-done``, ``--on-stop``: endless's hooks) with the outcome in
their environment.

systemd, in a unit with ``Type=notify-reload``: ``READY=1`` when serving, ``RELOADING=1`` with
``MONOTONIC_USEC`` when a reload starts and ``READY=1`` with ``STATUS=`` when it ends (sent by the
transaction); here ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while the live generation has a live
worker (a supervisor whose workers all crash stops pinging, and systemd restarts it);
``EXTEND_TIMEOUT_USEC`` every second while the first generation boots or the last one drains and
a worker of it is still alive (our own deadlines bound both); ``FDSTORE=1`` with a ``FDNAME`` per
listening socket when ``$FDSTORE`` says the store is on, so that a supervisor that crashes and is
restarted gets its sockets back (``LISTEN_FDS``) and connections wait in their queues meanwhile.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..notify import _address
from .generation import WorkerState
from .kinds.execute import fd_name

if TYPE_CHECKING:
    from .core import Supervisor
    from .transaction import ReloadOutcome

__all__ = ["Outside"]

log = logging.getLogger("liveswap.supervisor")

TICK = 1.0  # how often timeout extensions are sent (they extend by 3 ticks)
HOOK_TIMEOUT = 30.0  # a hook still running after this is killed
STOP_HOOK_WAIT = 10.0  # the supervisor waits this long for --on-stop before it exits


class Outside:
    def __init__(self, sup: Supervisor, environ: Mapping[str, str] | None = None) -> None:
        self.sup = sup
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        ours = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 and ours else 0.0
        self.fdstore = env.get("FDSTORE", "0").isdigit() and int(env.get("FDSTORE", "0")) > 0
        self.pid_file = Path(sup.settings.pid_file) if sup.settings.pid_file else None
        self.hooks: list[asyncio.Task[None]] = []
        self.serving = False

    # ---- lifecycle ------------------------------------------------------------------------------
    def started(self) -> None:
        """The first generation serves (or a takeover / upgrade completed)."""
        self.serving = True
        if self.pid_file is not None:
            tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.pid_file)
        if self.fdstore and self.sup.systemd:
            self._store_fds()

    def stopped(self) -> None:
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                if self.pid_file.read_text().strip() == str(os.getpid()):  # not a takeover's successor's
                    self.pid_file.unlink()

    def _store_fds(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for i, listener in enumerate(self.sup.listeners):
                name = fd_name(listener.name)
                name = f"listen{i}" if name == "unknown" else name
                payload = f"FDSTORE=1\nFDNAME={name}".encode()
                try:
                    # (socket.send_fds ignores its address argument)
                    rights = array.array("i", [listener.sock.fileno()])
                    s.sendmsg(
                        [payload],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)],
                        0,
                        _address(self.sup.systemd.target),
                    )
                except OSError as exc:
                    log.warning("could not store socket %s with systemd (FDSTORE=1): %s", listener.name, exc)
                    return
        log.info("stored %d listening socket(s) with systemd (FDSTORE)", len(self.sup.listeners))

    async def tick(self) -> None:
        """The watchdog and the timeout extensions; runs for the supervisor's lifetime."""
        if not self.sup.systemd:
            return
        interval = min(TICK, self.watchdog) if self.watchdog else TICK
        since_ping = 0.0
        while True:
            await asyncio.sleep(interval)
            since_ping += interval
            if self.watchdog and since_ping >= self.watchdog - 1e-6 and self._healthy():
                self.sup.systemd.send(WATCHDOG=1)
                since_ping = 0.0
            if self._progressing():
                self.sup.systemd.send(EXTEND_TIMEOUT_USEC=int(3 * TICK * 1e6))

    def _healthy(self) -> bool:
        live = self.sup.live
        if self.sup.stopping:
            return True  # a drain in progress is not a hang: systemd's stop timeout bounds it
        return live is not None and any(w.state is WorkerState.LIVE for w in live.workers)

    def _progressing(self) -> bool:
        """A slow first boot, or the final drain, with a worker still alive."""
        if self.sup.stopping or not self.serving:
            return any(g.alive() for g in self.sup.generations)
        return False

    # ---- hooks --------------------------------------------------------------------------------
    def reload_started(self, generation: int, reason: str) -> None:
        self._hook("on_reload_start", "reload-start", {"GENERATION": str(generation), "REASON": reason})

    def reload_done(self, outcome: ReloadOutcome) -> None:
        self._hook(
            "on_reload_done",
            "reload-done",
            {
                "GENERATION": str(outcome.get("generation", "")),
                "OUTCOME": "ok" if outcome["ok"] else ("stopping" if outcome.get("stopping") else "failed"),
                "ERROR": outcome.get("error", ""),
                "DURATION_MS": str(outcome.get("duration_ms", "")),
                "REASON": outcome.get("reason", ""),
            },
        )

    def stop_started(self) -> None:
        self._hook("on_stop", "stop", {})

    async def hooks_done(self) -> None:
        """Before the supervisor exits: let a running --on-stop hook finish (bounded)."""
        if self.hooks:
            await asyncio.wait(self.hooks, timeout=STOP_HOOK_WAIT)

    def _hook(self, option: str, event: str, fields: dict[str, str]) -> None:
        command = getattr(self.sup.settings, option)
        if not command:
            return
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.update(
            {
                "LIVESWAP_EVENT": event,
                "LIVESWAP_NAME": self.sup.name,
                "LIVESWAP_PID": str(os.getpid()),
                **{f"LIVESWAP_{k}": v for k, v in fields.items()},
            }
        )
        task = self.sup.spawn_task(self._run(option, command, env))
        self.hooks.append(task)
        task.add_done_callback(self.hooks.remove)

    async def _run(self, option: str, command: str, env: dict[str, str]) -> None:
        flag = "--" + option.replace("_", "-")
        try:
            pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], env, setpgroup=0)
        except OSError as exc:
            log.error("%s: could not run %r: %s", flag, command, exc)
            return
        exited = self.sup.expect_exit(pid)
        try:
            code = await asyncio.wait_for(asyncio.shield(exited), HOOK_TIMEOUT)
        except TimeoutError:
            log.error("%s: %r still runs after %g s; killing it", flag, command, HOOK_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return
        if code != 0:
            log.warning("%s: %r exited with status %d", flag, command, code)

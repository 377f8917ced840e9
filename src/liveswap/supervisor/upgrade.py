"""``liveswap upgrade``: the supervisor re-executes itself with the liveswap now on disk (einhorn's
upgrade), keeping its pid (systemd's main pid, a PID file, a container's PID 1 stay right), its
listening sockets and its live workers. A normal reload then moves the workers to the new code.

Old image: refuse unless one generation serves and nothing is in progress; a dry run of the new
version with the same command line must succeed (it loads the options, checks the app or command
and imports what a supervisor runs, then exits before binding anything); the template is stopped;
the answer goes out; then ``execve`` with the state in ``LIVESWAP_UPGRADE``: the sockets' and
workers' fds (made inheritable), their pids and slots, the counters. If anything before ``execve``
fails, the old image goes on serving; the dry run is what keeps the new one from failing after it.

New image: the CLI takes the sockets from the state instead of binding, and ``adopt`` rebuilds the
live generation around the same worker processes (still our children) before serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..sockets import Listener
from .generation import Generation, GenState, Worker, WorkerState

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["ENV", "adopt", "listeners_from", "upgrade_in_place"]

log = logging.getLogger("liveswap.supervisor")

ENV = "LIVESWAP_UPGRADE"
DRY_RUN_ENV = "LIVESWAP_DRY_RUN"
DRY_RUN_TIMEOUT = 60.0
TAIL = 30  # lines of a failed dry run's output shown


def command_line() -> list[str]:
    """How this supervisor was started, as ``python -m liveswap ...`` (the console script and
    ``-m`` alike), so that the liveswap now on disk for this interpreter is what runs."""
    return [sys.executable, "-m", "liveswap", *sys.argv[1:]]


def _refusal(sup: Supervisor) -> dict[str, Any] | None:
    def no(error: str, hint: str) -> dict[str, Any]:
        return {"ok": False, "error": error, "hint": hint}

    if sup.dev is not None:
        return no("liveswap dev does not upgrade in place", "stop it and start it again")
    if sup.stopping or sup.termination.stop_asked:  # (asked to stop: in --shutdown-delay)
        return no("the instance is stopping", "start it again instead")
    if sup.settings.proxy:
        return no(
            "--proxy instances do not upgrade in place: the proxy's client connections live in the supervisor",
            "start a new instance with --takeover: it takes the sockets, and the old one finishes its requests",
        )
    if sup.reloads.task is not None or sup.handing_over:
        return no("a reload or takeover is in progress", "try again once it has ended")
    live = sup.live
    if live is None:
        return no("the instance is still starting", "try again once it serves")
    if any(g is not live and g.alive() for g in sup.generations):
        return no("an old generation is still draining", "try again once `liveswap status` shows it gone")
    if live.restart_pending or any(w.state is not WorkerState.LIVE for w in live.alive()):
        return no("not every worker is live (restarting or hung)", "try again once `liveswap status` says serving")
    return None


async def _dry_run(sup: Supervisor) -> tuple[int, str]:
    """Run the new liveswap with our command line as far as it goes without binding."""
    read, write = os.pipe()
    argv = command_line()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            {**os.environ, DRY_RUN_ENV: "1"},
            file_actions=[(os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, write, 2)],
        )
    finally:
        os.close(write)
    exited = sup.expect_exit(pid)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read, "rb", buffering=0)
    )
    try:
        output = await asyncio.wait_for(reader.read(), DRY_RUN_TIMEOUT)
        code = await asyncio.wait_for(exited, DRY_RUN_TIMEOUT)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        return -1, f"the dry run did not finish within {DRY_RUN_TIMEOUT:g} s"
    finally:
        transport.close()
    return code, output.decode("utf-8", "replace")


async def upgrade_in_place(
    sup: Supervisor, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> dict[str, Any] | None:
    refused = _refusal(sup)
    if refused is not None:
        return refused
    sup.handing_over = True  # no reload, takeover or second upgrade meanwhile
    try:
        log.info("upgrade: dry run of the liveswap on disk with this command line")
        code, output = await _dry_run(sup)
        if code != 0:
            tail = "\n".join(output.strip().splitlines()[-TAIL:])
            sup.upgrade_error = f"the dry run failed ({code})"
            log.error("upgrade refused: the dry run of the new liveswap failed (exit %d):\n%s", code, tail)
            return {
                "ok": False,
                "error": f"the dry run of the new liveswap failed (exit status {code}); nothing changed",
                "detail": tail,
                "hint": "fix what it says (a broken install, an option the new version refuses), then upgrade again",
            }
        state = _state(sup)
        writer.write((json.dumps({"ok": True, "pid": os.getpid(), "version": __version__}) + "\n").encode())
        await writer.drain()
        writer.close()
        _execute(sup, state)  # returns only if execve failed
        return None
    finally:
        sup.handing_over = False


def _state(sup: Supervisor) -> dict[str, Any]:
    live = sup.live
    assert live is not None
    now = time.monotonic()
    return {
        "from_version": __version__,
        "started_at": sup.started_at,
        "upgrades": sup.upgrades + 1,
        "listeners": [{"fd": x.sock.fileno(), "name": x.name, "unlink": x.unlink_path} for x in sup.listeners],
        "generation": live.number,
        "created": live.created_at,
        "next_gen": sup.next_gen,
        "counters": [sup.reloads.ok, sup.reloads.failed, sup.restarts.restarts, sup.restarts.hung],
        "workers": [
            {"pid": w.pid, "slot": w.slot, "restarts": w.restarts, "age": now - w.spawned_at, **sup.kind.export(w)}
            for w in live.alive()
        ],
    }


def _fds(state: dict[str, Any]) -> list[int]:
    return [x["fd"] for x in state["listeners"]] + [w[k] for w in state["workers"] for k in w if k.endswith("_fd")]


def _execute(sup: Supervisor, state: dict[str, Any]) -> None:
    fds = _fds(state)
    for fd in fds:
        os.set_inheritable(fd, True)
    sup.kind.close()  # the template: the new image starts its own
    sup.systemd.reloading()
    log.info("upgrade: dry run ok; re-executing pid %d with the liveswap on disk", os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    argv = command_line()
    try:
        os.execve(argv[0], argv, {**os.environ, ENV: json.dumps(state)})
    except OSError as exc:
        for fd in fds:
            os.set_inheritable(fd, False)
        sup.kind.start()
        sup.upgrade_error = f"execve failed: {exc}"
        log.error("upgrade failed: cannot execute %s (%s); still serving", argv[0], exc)


def listeners_from(state: dict[str, Any]) -> list[Listener]:
    """The new image's sockets: the ones the old image had."""
    out = []
    for x in state["listeners"]:
        os.set_inheritable(x["fd"], False)
        out.append(Listener(socket.socket(fileno=x["fd"]), x["name"], unlink_path=x["unlink"]))
    return out


async def adopt(sup: Supervisor, state: dict[str, Any]) -> int:
    """The new image: the old image's live generation, around the same processes; its number."""
    gen = Generation(state["generation"], state=GenState.LIVE, created_at=state["created"])
    sup.generations, sup.live, sup.next_gen = [gen], gen, state["next_gen"]
    sup.started_at, sup.upgrades = state["started_at"], state["upgrades"]
    sup.reloads.ok, sup.reloads.failed, sup.restarts.restarts, sup.restarts.hung = state["counters"]
    now = time.monotonic()
    for info in state["workers"]:
        worker = Worker(gen, info["slot"], pid=info["pid"], state=WorkerState.LIVE, restarts=info["restarts"])
        worker.spawned_at = now - info["age"]
        worker.live_at = worker.last_beat = now
        worker.ready.set_result(None)
        worker.live.set_result(None)
        for key, fd in info.items():
            if key.endswith("_fd"):
                os.set_inheritable(fd, False)
        gen.workers.append(worker)
        sup.by_pid[worker.pid] = worker
        await sup.kind.adopt(worker, info)
    log.info(
        "upgraded in place: liveswap %s -> %s, pid %d, %d worker(s) of generation %d adopted",
        state["from_version"],
        __version__,
        os.getpid(),
        len(gen.workers),
        gen.number,
    )
    sup.reap()  # a worker that exited while we were re-executing
    return gen.number

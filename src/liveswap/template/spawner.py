"""The supervisor's side of the template process (see ``process.py``): start it, ask it to fork."""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..sockets import SD_LISTEN_FDS_START

__all__ = ["Spawner", "TemplateGone"]

log = logging.getLogger("liveswap.supervisor")


class TemplateGone(Exception):
    """The template exited (stale after a deploy, or crashed): start another and ask again."""


class Spawner:
    """Owns the template process and turns spawn requests into worker pids."""

    def __init__(self, preload: Sequence[str], env: dict[str, str], spares: int = 0) -> None:
        self.spares = spares
        self.preload = list(preload)
        self.env = env
        self.pid = 0
        self.chan: socket.socket | None = None
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.next_id = 0
        self.started_at = 0.0
        self.info: dict[str, Any] = {}
        self.modules: set[str] = set()  # the top-level modules the template has imported
        self.deferred = False  # a refresh waits for the spawns in flight (see refresh)

    def refresh(self, preload: Sequence[str]) -> None:
        """Replace the template by one that preloads ``preload``, started now, in the background:
        the next spawn waits for it to be ready (the old one and its spares exit as its channel
        closes)."""
        self.preload = list(preload)
        if self.pending:
            # Not while a spawn is in flight: the old template may have forked its worker already,
            # and asking the new one again would start a second worker on the same channel.
            self.deferred = True
        elif self.chan is not None:
            self._gone("replaced by a template with a new preload list")
            self.start()

    def start(self) -> None:
        """Spawn a fresh template; its channel is fd 3. It holds no listening socket: they are sent
        with each spawn request."""
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Dup above the target first so that the dup2 cannot overwrite its own source.
        sources = [fcntl.fcntl(child.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)]
        actions = [(os.POSIX_SPAWN_DUP2, sources[0], SD_LISTEN_FDS_START)]
        env = dict(self.env)
        env.update(
            {
                "LIVESWAP_SUPERVISOR_PID": str(os.getpid()),
                "LIVESWAP_TEMPLATE_FD": str(SD_LISTEN_FDS_START),
                "LIVESWAP_PRELOAD": json.dumps(self.preload),
                "LIVESWAP_SPARES": str(self.spares),
            }
        )
        try:
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-m", "liveswap.template.process"], env, file_actions=actions
            )
        finally:
            for fd in sources:
                os.close(fd)
            child.close()
        self.started_at = time.monotonic()
        parent.setblocking(False)
        self.chan = parent
        self.ready = loop.create_future()
        loop.add_reader(parent.fileno(), self._readable)
        log.debug("template pid %d started", self.pid)

    def _readable(self) -> None:
        assert self.chan is not None
        try:
            data = self.chan.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone("the template process closed its channel")
            return
        msg = json.loads(data)
        op = msg.get("op")
        if op == "ready":
            self.info = {"pid": self.pid, "import_ms": round(msg["import_ms"], 1)}
            self.modules = set(msg.get("modules", []))
            for err in msg.get("preload_errors", []):
                log.warning("template: --preload %s", err)
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(msg)
            return
        fut = self.pending.pop(msg.get("id", -1), None)
        if fut is None or fut.done():
            return
        if op == "spawned":
            fut.set_result(int(msg["pid"]))
        elif op == "stale":
            log.info("template pid %d: a preloaded library changed on disk; starting a fresh template", self.pid)
            fut.set_exception(TemplateGone("stale"))
            self._gone("stale")
        else:
            fut.set_exception(OSError(msg.get("error", "spawn failed")))

    def _gone(self, why: str) -> None:
        if self.chan is not None:
            asyncio.get_running_loop().remove_reader(self.chan.fileno())
            self.chan.close()
            self.chan = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(TemplateGone(why))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(TemplateGone(why))
        self.pending.clear()

    def exited(self, pid: int) -> bool:
        """Called for every reaped child; True if it was the template."""
        if pid != self.pid:
            return False
        self.pid = 0
        # What it sent before it died ("spawned") is still in the channel: read it first, or the
        # spawn would be asked of another template while its worker runs.
        while self.chan is not None and self.pending:
            before = len(self.pending)
            self._readable()
            if len(self.pending) == before:
                break
        self._gone("the template process exited")
        return True

    async def _ensure(self, timeout: float) -> None:
        if self.chan is None:
            self.start()
        assert self.ready is not None
        await asyncio.wait_for(asyncio.shield(self.ready), timeout)

    async def spawn(self, env: dict[str, str], fds: Sequence[int], timeout: float) -> int:
        """Fork a worker with ``env`` and ``fds`` (control, health, listeners...); returns its pid.

        A template that is gone (stale after a deploy, crashed, or unable to start) is replaced, up
        to three times within ``timeout``; then TemplateGone says why."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        why = "the template process could not be started"
        for _ in range(3):
            rid = self.next_id
            self.next_id += 1
            try:
                await self._ensure(max(0.0, deadline - loop.time()))
                chan = self.chan
                if chan is None:  # it exited while we waited
                    raise TemplateGone("the template process exited")
                fut: asyncio.Future[int] = loop.create_future()
                self.pending[rid] = fut
                payload = json.dumps({"op": "spawn", "id": rid, "env": env}).encode()
                chan.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
                return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except (TemplateGone, BrokenPipeError, ConnectionError) as exc:
                why = str(exc) or type(exc).__name__
            finally:
                self.pending.pop(rid, None)
                if self.deferred and not self.pending:
                    self.deferred = False
                    self.refresh(self.preload)
        raise TemplateGone(why)

    def close(self) -> None:
        self._gone("closing")

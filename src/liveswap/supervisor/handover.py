"""Both sides of a takeover (``control/takeover.py`` has the protocol): the running instance gives
its sockets and, once the new one is serving, drains and exits; the new one boots on them first."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from .._os import peer_credentials
from ..control.takeover import Handover, give_sockets, unix_path
from ..errors import LiveswapError

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["complete", "give"]

log = logging.getLogger("liveswap.supervisor")


async def give(sup: Supervisor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any] | None:
    """The running instance's side: send the sockets, keep serving until the new instance says it
    serves too ("release"), then drain and exit; if it gives up, go on serving."""
    if sup.stopping or sup.termination.stop_asked:  # (asked to stop: in --shutdown-delay)
        return {"ok": False, "error": "the instance is stopping"}
    if sup.handing_over:
        return {"ok": False, "error": "another takeover is in progress", "hint": "wait for it to end"}
    if sup.live is None:
        return {"ok": False, "error": "the instance is still starting", "hint": "try again once it serves"}
    raw = writer.get_extra_info("socket")
    peer = peer_credentials(raw).pid
    sup.handing_over = True
    try:
        conn = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            give_sockets(conn, sup.listeners, os.getpid())
        finally:
            conn.close()
        log.info("takeover: pid %d took the listening sockets and is starting; serving until it is ready", peer)
        try:
            line = await reader.readline()
            cmd = json.loads(line).get("cmd") if line.strip() else None
        except (ConnectionError, ValueError, AttributeError):
            cmd = None
        if cmd != "release":
            log.warning("takeover: pid %d gave up (it failed to start, or died); still serving", peer)
            return None
        log.info("takeover: pid %d is serving; draining and exiting", peer)
        sup.control.stop_listening()
        for listener in sup.listeners:  # the new instance removes the files when it stops
            listener.unlink_path = ""
        sup.spawn_task(sup.stop(graceful=True, final=False))
        return {"ok": True, "pid": os.getpid()}
    finally:
        sup.handing_over = False


async def complete(sup: Supervisor, handover: Handover) -> None:
    """The new instance's side, once its generation is live: release the old instance, then take
    its control socket name."""
    try:
        reply = await handover.release()
    except (OSError, ValueError, LiveswapError) as exc:
        # It died meanwhile: the sockets are ours anyway (we hold them), and so is the name.
        log.warning("takeover: the old instance (pid %d) did not answer the release: %s", handover.pid, exc)
    else:
        if not reply.get("ok"):
            log.warning("takeover: the old instance (pid %d) answered: %s", handover.pid, reply.get("error"))
    finally:
        handover.abandon()
    for listener in sup.listeners:
        listener.unlink_path = unix_path(listener)
    await sup.control.start()
    log.info("took over from liveswap pid %d: it drains and exits", handover.pid)

"""What ``liveswap status`` shows of a supervisor."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, TypedDict

from .. import __version__
from .generation import GenerationStatus, WorkerState
from .transaction import ReloadOutcome

if TYPE_CHECKING:
    from .core import Supervisor

__all__ = ["Status", "status_of"]


class Status(TypedDict):
    name: str
    pid: int
    app: str
    state: str
    uptime: float
    listening: list[str]
    workers: int
    generations: list[GenerationStatus]
    last_reload: ReloadOutcome | None
    reloading: bool
    reloads_ok: int
    reloads_failed: int
    restarts: int
    hung: int
    recycled: int  # workers replaced after --max-requests
    version: str  # of the liveswap code this supervisor runs
    upgrades: int  # in-place upgrades (liveswap upgrade) this process went through
    upgrade_error: str  # why the last one failed, if it did


def status_of(sup: Supervisor) -> Status:
    """What `liveswap status` shows."""
    now = time.monotonic()
    live_workers = len([w for w in sup.live.workers if w.state is WorkerState.LIVE]) if sup.live else 0
    if sup.stopping:
        state = "stopping"
    elif sup.termination.delaying:  # --shutdown-delay: not ready, still serving
        state = "stopping: shutdown delay, still serving"
    elif sup.live is None:
        state = "starting"
    elif live_workers < sup.settings.workers:
        state = f"degraded: {live_workers} of {sup.settings.workers} workers up, restarting with backoff"
    else:
        state = "serving"
    return {
        "name": sup.name,
        "pid": os.getpid(),
        "app": sup.settings.app,
        "state": state,
        "uptime": round(time.time() - sup.started_at, 3),
        "listening": sup.listening,
        "workers": sup.settings.workers,
        "generations": [g.status(now) for g in sup.generations],
        "last_reload": sup.reloads.last,
        "reloading": sup.reloads.task is not None,
        "reloads_ok": sup.reloads.ok,
        "reloads_failed": sup.reloads.failed,
        "restarts": sup.restarts.restarts,
        "hung": sup.restarts.hung,
        "recycled": sup.restarts.recycled,
        "version": __version__,
        "upgrades": sup.upgrades,
        "upgrade_error": sup.upgrade_error,
    }

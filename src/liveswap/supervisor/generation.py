"""Generations and workers: the supervisor's picture of its children.

A generation is the set of W workers that run one version of the code:

    STARTING -> LIVE -> DRAINING -> GONE        (a reload that succeeds)
    STARTING -> FAILED                          (rolled back: the old generation keeps serving)

At most one generation is LIVE. A worker:

    BOOTING -> READY -> LIVE -> DRAINING -> DEAD
                         '-> HUNG (its loop stopped turning) -> DEAD, or back to DRAINING if it
                             was only stopped by a signal
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from dataclasses import dataclass, field
from typing import TypedDict

__all__ = ["BootFailed", "GenState", "GenerationStatus", "Generation", "Worker", "WorkerState", "WorkerStatus"]


class GenState(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    DRAINING = "draining"
    GONE = "gone"
    FAILED = "failed"


class WorkerState(enum.Enum):
    BOOTING = "booting"  # spawned, importing and starting the app
    READY = "ready"  # passed its health check, not yet accepting public connections
    LIVE = "live"  # accepting
    HUNG = "hung"  # its event loop stopped turning: being replaced, then ended
    DRAINING = "draining"
    DEAD = "dead"


class BootFailed(Exception):
    """A new worker did not become ready and healthy; ``detail`` is for the reload caller."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class WorkerStatus(TypedDict):
    pid: int
    slot: int
    state: str
    uptime: float
    restarts: int


class GenerationStatus(TypedDict):
    generation: int
    state: str
    created: float
    workers: list[WorkerStatus]


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def _exit_future() -> asyncio.Future[int]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class Worker:
    """One worker process. The futures are resolved by the supervisor's dispatcher (``exited``) and
    by the worker kind (``ready``, ``live``, ``draining``); boots and drains wait on them."""

    generation: Generation
    slot: int
    pid: int = 0
    state: WorkerState = WorkerState.BOOTING
    spawned_at: float = field(default_factory=time.monotonic)
    live_at: float = 0.0
    restarts: int = 0
    ready: asyncio.Future[None] = field(default_factory=_future)
    live: asyncio.Future[None] = field(default_factory=_future)
    draining: asyncio.Future[None] = field(default_factory=_future)
    exited: asyncio.Future[int] = field(default_factory=_exit_future)
    boot_error: tuple[str, str] | None = None
    hammer: asyncio.TimerHandle | None = None
    expected_exit: bool = False
    last_beat: float = 0.0  # monotonic time of its last heartbeat (or of going live)
    health_status: int = 0  # what its health check answered
    dump: list[str] = field(default_factory=list)  # what faulthandler wrote (stacks at a fatal signal)
    imported: list[str] = field(default_factory=list)  # dev: the files of the modules it imported
    failure_page: str = ""  # dev: the error page's JSON for why it failed to boot
    # The Python worker kind's end of the worker's channel and its private health connection.
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.Task[None] | None = None  # reads the channel until EOF
    health: socket.socket | None = None

    def describe(self) -> str:
        return f"worker pid {self.pid} (generation {self.generation.number}, slot {self.slot})"

    def status(self, now: float) -> WorkerStatus:
        return {
            "pid": self.pid,
            "slot": self.slot,
            "state": self.state.value,
            "uptime": round(now - self.spawned_at, 3),
            "restarts": self.restarts,
        }


@dataclass(eq=False)
class Generation:
    number: int
    state: GenState = GenState.STARTING
    workers: list[Worker] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    slot_crashes: dict[int, int] = field(default_factory=dict)
    restart_pending: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    error_page: str = ""  # dev: this generation serves the error page of this failure (JSON)

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.state is not WorkerState.DEAD]

    def status(self, now: float) -> GenerationStatus:
        return {
            "generation": self.number,
            "state": self.state.value,
            "created": self.created_at,
            "workers": [w.status(now) for w in self.alive()],
        }

"""Kinds of worker: what differs between a Python worker forked from the template (``python.py``),
an external command given the sockets (``command.py``) and one behind our proxy (``proxied.py``).
The reload transaction, restarts and stops are written once, against this interface.

A boot is ``spawn`` (the worker's pid is known), then ``wait_ready`` (READY=1 or its equivalent),
then ``check_health`` (the status code of a private health request), all under one deadline; only
then ``activate`` (take public traffic). ``drain`` asks a worker to stop accepting and finish.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..generation import Worker

__all__ = ["WorkerKind"]


class WorkerKind(Protocol):
    beats: bool  # its workers send heartbeats (the watchdog finds hung ones)

    def start(self) -> None:
        """Prepare to spawn (e.g. start the template process)."""

    def close(self) -> None:
        """Spawn no more; release what ``start`` made."""

    async def aclose(self) -> None:
        """After ``close``, at the very end: finish what ``close`` began (the proxy's clients)."""

    def owns(self, pid: int) -> bool:
        """True if ``pid`` is a helper process of this kind (not a worker) that has just exited."""

    async def spawn(self, worker: Worker, timeout: float) -> None:
        """Start the worker process and set ``worker.pid``; raises BootFailed."""

    async def last_words(self, worker: Worker) -> None:
        """After the worker exited during its boot: give what it said (``worker.boot_error``) time to
        arrive."""

    async def check_health(self, worker: Worker, path: str, host: str) -> int:
        """The status code of ``GET path`` asked privately of the worker (not on the public sockets)."""

    def timeout_hint(self, worker: Worker) -> str:
        """A hint for a worker that was not ready and healthy within --boot-timeout ("" for none)."""

    async def activate(self, workers: list[Worker], timeout: float) -> None:
        """Let ready workers take public traffic; returns when each confirmed or ``timeout`` passed."""

    def drain(self, worker: Worker, final: bool, next_generation: int) -> None:
        """Ask the worker to stop accepting and finish in-flight work; ``final``: the service stops,
        and the worker first accepts what waits in the listeners' queues; ``next_generation``: the
        one live now (0 if none)."""

    def export(self, worker: Worker) -> dict[str, Any]:
        """What a new image of the supervisor needs to adopt this live worker (liveswap upgrade):
        JSON values; keys ending in ``_fd`` are fds to keep open across execve."""

    async def adopt(self, worker: Worker, info: dict[str, Any]) -> None:
        """Take over a live worker that a previous image of the supervisor ran (``export``'s ``info``)."""

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker (and whatever it started)."""

    def worker_exited(self, worker: Worker) -> None:
        """Release what the kind holds for an exited worker."""

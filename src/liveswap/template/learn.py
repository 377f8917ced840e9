"""The template learns what to preload: the modules from outside the project that a healthy worker
had imported, once vetted (``vet.py``). Then the template is replaced, in the background, by one
that imports them, and the next workers find them already there: a reload imports only the
project's own modules. Under ``liveswap dev`` that is the difference between tens of milliseconds
and the whole import time of FastAPI or Django at every save; ``liveswap run`` gets it with no flag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .spawner import Spawner

__all__ = ["Learner"]

log = logging.getLogger("liveswap.supervisor")

VET_TIMEOUT = 60.0


class Learner:
    def __init__(
        self,
        spawner: Spawner,
        preload: Sequence[str],
        spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.spawner = spawner
        self.preload = list(preload)  # --preload, always first
        self.learned: list[str] = []
        self.rejected: dict[str, str] = {}
        self.spawn_task = spawn_task
        self._task: asyncio.Task[None] | None = None
        self._offered: set[str] = set()

    def offer(self, modules: Sequence[str]) -> None:
        """A healthy worker imported ``modules`` (top-level, from outside the project)."""
        known = self.spawner.modules | set(self.learned) | set(self.rejected) | set(self.preload)
        self._offered.update(m for m in modules if m not in known)
        if self._offered and (self._task is None or self._task.done()):
            self._task = self.spawn_task(self._learn())

    async def _learn(self) -> None:
        while self._offered:
            names, self._offered = sorted(self._offered), set()
            first = await _vet(names)
            if first is None:
                return
            for name, why in sorted(first["rejected"].items()):
                self.rejected[name] = why
                log.info("template: not preloading %s: %s", name, why)
            if not first["accepted"]:
                continue
            together = await _vet(["--verify", *self.learned, *first["accepted"]])
            if together is None or not together["accepted"]:
                for name in first["accepted"]:
                    self.rejected[name] = "not clean together with the others"
                log.info("template: not preloading %s: not clean together", ", ".join(first["accepted"]))
                continue
            self.learned = [m for m in together["accepted"] if m not in self.preload]
            log.info(
                "template: learned to preload %d module(s) the app uses (%s); a new template starts in the background",
                len(first["accepted"]),
                _short(first["accepted"]),
            )
            self.spawner.refresh([*self.preload, *self.learned])


def _short(names: Sequence[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


async def _vet(args: Sequence[str]) -> dict[str, Any] | None:
    # In a thread, with subprocess: the supervisor reaps every child itself (waitpid(-1) on SIGCHLD),
    # which asyncio's child watcher would report as an unknown child; subprocess copes with that.
    try:
        done = await asyncio.get_running_loop().run_in_executor(None, _run_vet, list(args))
    except subprocess.TimeoutExpired:
        log.warning("template: vetting modules to preload took over %.0f s; not learning them", VET_TIMEOUT)
        return None
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log.warning("template: vetting modules to preload gave no answer; not learning them")
        return None
    return result


def _run_vet(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liveswap.template.vet", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=VET_TIMEOUT,
        check=False,
    )

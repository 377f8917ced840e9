"""``liveswap dev`` in the supervisor: a save is one more reason to reload, and a failed generation
leaves an error page serving instead of the old code.

- What is watched is what the app really imported: each live worker sends the files of its modules
  (``Imported`` on its channel); :func:`watch.project_files` keeps the project's own, and the
  ``--watch`` globs add templates and the like. After a failed boot the failed worker's files are
  added (a module that failed to import is not among the live worker's), so the save that fixes it
  is seen.
- A change of content starts a reload at once; changes during a reload make one more after it
  (coalesced: the newest code wins).
- :class:`ShowError` is the failure policy: the new generation's workers are killed, and one worker
  that serves the error page (``errorpage.error_app``) goes live in its place; the generation it
  replaces drains, and its pages reload onto the error page. The next save tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..supervisor.generation import BootFailed, Generation, GenState, Worker
from ..supervisor.transaction import ReloadOutcome
from .errorpage import Failure, Stage, render_terminal
from .watch import Watcher, invalidate_bytecode, project_files

if TYPE_CHECKING:
    from ..supervisor.core import Supervisor

__all__ = ["DevSession", "ShowError"]

log = logging.getLogger("liveswap.dev")


# liveswap dev -- COMMAND: what a server's project holds that is not its source (its build output
# is ignored too: see DevSession).
COMMAND_IGNORE = ("*.swp", "*~", ".#*", "*.tmp", "*.pyc", "*.log", "target/", "dist/", "build/", "bin/", "tmp/")


class DevSession:
    def __init__(
        self, root: Path, watch: list[str], ignore: list[str], browser_reload: bool, command: list[str] | None = None
    ) -> None:
        self.root = root
        self.globs = list(watch)
        self.ignore = list(ignore)
        if command:
            # A server command says nothing of what it was built from: its whole project is watched,
            # less what is not source, and less the command's own executable (a --build writing it
            # must not start another reload).
            self.globs = self.globs or ["**"]
            self.ignore += COMMAND_IGNORE
            program = (root / command[0]).resolve()
            if "/" in command[0] and program.is_relative_to(root.resolve()):
                self.ignore.append("/" + program.relative_to(root.resolve()).as_posix())
        self.browser_reload = browser_reload
        self.watcher = Watcher(root)
        self.files: set[Path] = set()
        self._task: asyncio.Task[None] | None = None

    def worker_env(self) -> dict[str, str]:
        return {"LIVESWAP_DEV": "1", "LIVESWAP_BROWSER_RELOAD": "1" if self.browser_reload else "0"}

    async def start(self, sup: Supervisor) -> None:
        await self.watcher.__aenter__()
        self.watcher.set_files(self.files, self.globs, self.ignore)
        self._task = sup.spawn_task(self._follow(sup))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self.watcher.aclose()

    def on_imported(self, worker: Worker) -> None:
        """A worker said what it imported: a healthy one's list is what to watch from now on; a
        failed one's is added to it."""
        files = project_files(worker.imported, self.root)
        if worker.boot_error is not None:
            files |= self.files
        elif worker.generation.error_page:
            return  # the error page's worker imported nothing of the app
        if files != self.files:
            self.files = files
            self.watcher.set_files(files, self.globs, self.ignore)

    async def _follow(self, sup: Supervisor) -> None:
        async for batch in self.watcher.changes():
            invalidate_bytecode(batch)
            names = ", ".join(sorted(_relative(p, self.root) for p in batch))
            log.info("saved: %s", names)
            await sup.reloads.request(f"saved {names}")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _failure(gen: Generation, outcome: ReloadOutcome) -> Failure:
    """What the error page shows: the worker's own account when it gave one, else the supervisor's."""
    for w in gen.workers:
        if w.failure_page:
            with contextlib.suppress(ValueError):
                return Failure.from_json(w.failure_page)
    error = outcome.get("error", "the new code failed")
    stage: Stage = "health" if "health check" in error or "ready and healthy" in error else "import"
    if error.startswith("lifespan startup failed") or "exited before it was ready" in error:
        stage = "startup"
    elif error.startswith("--build "):
        stage = "build"
    return Failure(stage, error, traceback=outcome.get("detail", ""))


class ShowError:
    """``liveswap dev``'s failure policy: an error page serves until the next save."""

    async def failed(self, sup: Supervisor, gen: Generation, old: Generation | None, outcome: ReloadOutcome) -> None:
        for w in gen.workers:
            sup.kill(w)
        if outcome.get("stopping"):
            return
        failure = _failure(gen, outcome)
        log.error("%s", render_terminal(failure))
        page = sup.new_generation()
        page.error_page = failure.to_json()
        try:
            worker = await sup.workers.boot(page, 0)
        except BootFailed as exc:  # the error page itself could not start: keep what serves now
            page.state = GenState.FAILED
            log.error("could not start the error page: %s", exc)
            return
        await sup.workers.activate([worker])
        page.state = GenState.LIVE
        sup.live = page
        if old is not None:
            sup.workers.drain_generation(old)
            await sup.workers.stopped_accepting(old)
        log.info("generation %d serves the error page until the next save", page.number)

"""The ASGI lifespan protocol, run so that a failed startup is reported as what it is.

uvicorn's runner (``lifespan="auto"``) takes an app that raises during startup for an app without
lifespan support and serves it anyway ("ASGI 'lifespan' protocol appears unsupported"), and for a
Starlette or FastAPI app it logs only "Application startup failed. Exiting.". A reload must not go
live on either, and its caller must see the app's own exception. So the rule here is:

- the app raises (or returns) *before* it asked for the first message: it does not speak lifespan
  (Django's ASGI handler, most bare apps); serve it, as uvicorn does;
- the app received ``lifespan.startup`` and then raised, or sent ``lifespan.startup.failed``: the
  startup failed, and :class:`StartupFailed` carries the app's exception and traceback;
- ``lifespan="on"``: not speaking the protocol is a failure too; ``"off"``: never run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .app import app_traceback

__all__ = ["Lifespan", "StartupFailed", "app_traceback_text"]

log = logging.getLogger("liveswap.worker")


class StartupFailed(Exception):
    """The app's lifespan startup failed; ``detail`` has the end of its traceback when there is one."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def app_traceback_text(text: str, limit: int = 12) -> str:
    """The end of a formatted traceback without the import machinery's frames."""
    lines = text.rstrip().splitlines()
    kept: list[str] = []
    skip = False
    for line in lines:
        if line.startswith('  File "<frozen '):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        kept.append(line)
    return "\n".join(kept[-limit:])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class Lifespan:
    """Runs one app's lifespan: ``await startup()``, serve, ``await shutdown()``."""

    def __init__(self, app: Callable[..., Any], mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}  # the lifespan state, copied into every request's scope
        self.should_exit = False  # read by uvicorn's protocols; never set here
        self.supported = mode != "off"
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._asked = False  # the app called receive(): it speaks the protocol
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: StartupFailed | None = None
        self._reported = False
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; raises StartupFailed with the app's own error."""
        if self.mode == "off":
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failure is not None:
            raise self._failure

    async def shutdown(self) -> None:
        """Run the app's shutdown (nothing when startup was not run or not supported)."""
        if not self.supported or self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - the app's error is reported, never swallowed silently
            self._app_raised(exc)
        else:
            if not self._started.is_set():
                self._unsupported("it returned without answering lifespan.startup")
        finally:
            self._started.set()
            self._stopped.set()

    def _app_raised(self, exc: BaseException) -> None:
        if self._reported:  # it sent lifespan.*.failed before raising (Starlette does): said already
            return
        text = app_traceback(exc)
        if self._started.is_set():  # after startup: a failure of shutdown (or of the lifespan task)
            log.error("the app's lifespan raised %s: %s\n%s", type(exc).__name__, exc, text)
        elif not self._asked:
            self._unsupported(f"it raised {type(exc).__name__} before reading lifespan.startup")
        else:
            self._failure = StartupFailed(f"lifespan startup failed: {type(exc).__name__}: {exc}", text)

    def _unsupported(self, why: str) -> None:
        self.supported = False
        if self.mode == "on":
            self._failure = StartupFailed(f"the app does not speak the ASGI lifespan protocol ({why})")
        else:
            log.debug("the app does not speak the ASGI lifespan protocol (%s); serving without it", why)

    async def _receive(self) -> dict[str, Any]:
        self._asked = True
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            # Starlette puts the whole traceback in the message; a bare app, a sentence.
            text = str(message.get("message") or "")
            self._reported = True
            self._failure = StartupFailed(
                f"lifespan startup failed: {_last_line(text) or 'the app sent lifespan.startup.failed'}",
                app_traceback_text(text) if "\n" in text.strip() else "",
            )
            self._started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind.endswith("failed"):
                self._reported = True
                log.error("the app's lifespan shutdown failed: %s", message.get("message", ""))
            self._stopped.set()

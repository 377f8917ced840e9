"""A worker's side of ``liveswap dev``: fresh code on every import, the list of files it imported,
the browser-refresh script and event stream, and the error page.

The supervisor starts a dev worker with ``LIVESWAP_DEV=1`` (and ``LIVESWAP_BROWSER_RELOAD=0`` for
``--no-browser-reload``); an *error page* worker also gets ``LIVESWAP_ERROR_PAGE``, the JSON of the
failure it shows (``errorpage.Failure``) instead of the app.

Each worker serves ``/__liveswap/events`` itself from a hub that knows its generation. When the
supervisor drains the worker it says which generation is now live: the hub tells every open page
to reload onto it, then ends the streams, so an open tab never holds a drain up. A page that
reconnects meets the new generation's hub, whose first event says which generation (or which
error) is current.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from ..debug._asgi import ASGIApp, Receive, Scope, Send
from ..http.wsgi import NativeWSGI
from .errorpage import Failure, error_app
from .refresh import EVENTS_PATH, RefreshHub, RefreshMiddleware

__all__ = ["DevWorker"]


class DevWorker:
    def __init__(self, generation: int, browser_reload: bool) -> None:
        self.generation = generation
        self.browser_reload = browser_reload
        self.hub = RefreshHub(generation)

    @classmethod
    def from_env(cls, env: Mapping[str, str], generation: int) -> DevWorker:
        """The dev side of a worker the supervisor started with ``LIVESWAP_DEV=1``."""
        return cls(generation, env.get("LIVESWAP_BROWSER_RELOAD", "1") == "1")

    def prepare(self) -> None:
        """Before the app is imported: read every module from its source (a save within the same
        second and of the same size as the last one must not be served from a stale .pyc, CPython
        issue 75953), and see files created since the template started."""
        sys.dont_write_bytecode = True
        importlib.invalidate_caches()

    def paths(self, exc: BaseException | None = None) -> list[str]:
        """The files of every module imported so far (plus those in ``exc``'s traceback: a module that
        failed to import is not in sys.modules, and its fix must still be seen)."""
        paths = {str(f) for m in list(sys.modules.values()) if isinstance(f := getattr(m, "__file__", None), str)}
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:  # AppLoadError wraps the app's own exception
            seen.add(id(exc))
            paths.update(frame.filename for frame in traceback.extract_tb(exc.__traceback__))
            if isinstance(exc, SyntaxError) and exc.filename:
                paths.add(exc.filename)
            exc = exc.__cause__ or exc.__context__
        return sorted(paths)

    def failure(self, exc: BaseException) -> str:
        """The error page's JSON for the app's failure to load."""
        return Failure.from_exception(exc).to_json()

    def error_app(self, failure_json: str) -> ASGIApp:
        failure = Failure.from_json(failure_json)
        self.hub.failed(failure)
        return self._with_events(error_app(failure, refresh=self.browser_reload))

    def wrap(self, app: Any) -> ASGIApp:
        """The app with the refresh script in its HTML pages and the event stream beside it."""
        if not self.browser_reload:
            return app  # type: ignore[no-any-return]
        if isinstance(app, NativeWSGI):  # stays on the native WSGI path, the stream served beside it
            from .refresh_wsgi import WSGIRefresh

            return NativeWSGI(WSGIRefresh(app.app, self.generation), asgi_paths={EVENTS_PATH: self.hub})
        return self._with_events(RefreshMiddleware(app, self.generation))

    def _with_events(self, app: ASGIApp) -> ASGIApp:
        hub = self.hub

        async def dev_app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope.get("path") == EVENTS_PATH:
                await hub(scope, receive, send)
            else:
                await app(scope, receive, send)

        return dev_app

    def draining(self, next_generation: int) -> None:
        """Open pages reload onto ``next_generation`` (0: none, the service stops); streams end."""
        if next_generation:
            self.hub.reloaded(next_generation)
        self.hub.close()

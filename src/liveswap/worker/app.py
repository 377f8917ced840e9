"""Import the user's app from ``module:attribute`` and make it an ASGI 3 callable.

ASGI apps are used as they are; WSGI apps (Flask, Django's WSGIHandler, ...) are detected and
adapted with a2wsgi; ``factory=True`` calls the attribute first.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import AppLoadError

__all__ = ["detect_interface", "import_app", "load_app"]

ASGIApp = Callable[..., Any]


def import_app(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attribute`` (attribute may be dotted), with ``app_dir`` first on sys.path."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(
            f'Import string "{spec}" must be in format "<module>:<attribute>".',
            hint="for app = FastAPI() in main.py, use main:app",
        )
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f'Could not import module "{module_name}".',
                hint=f"run from the directory that contains it, or pass --app-dir "
                f"(sys.path starts with {sys.path[0]!r})",
            ) from exc
        raise AppLoadError(f'Error importing "{module_name}": {exc}', hint=_tail(exc)) from exc
    except Exception as exc:
        raise AppLoadError(f'Error importing "{module_name}": {type(exc).__name__}: {exc}', hint=_tail(exc)) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f'Attribute "{attr}" not found in module "{module_name}".',
                hint=f"names in {module_name}: {', '.join(_public_names(module))}",
            ) from None
    return obj


def _public_names(module: Any) -> list[str]:
    names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
    return names[:12]


def _tail(exc: BaseException) -> str:
    """The last lines of a traceback: where the error is, for the reload caller."""
    lines = traceback.format_exception(exc)
    return "".join(lines[-6:]).rstrip()


def detect_interface(app: Any) -> str:
    """``asgi`` or ``wsgi``: an ASGI 3 app is an ``async def app(scope, receive, send)``
    (or an object whose ``__call__`` is one); anything else callable with two positional
    parameters is WSGI."""
    call: Any
    if inspect.isfunction(app) or inspect.ismethod(app):
        call = app
    else:  # an instance: its bound __call__, so that ``self`` is not counted below
        call = app.__call__ if callable(app) else None
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return "asgi"
    if call is None:
        raise AppLoadError(f"the app {app!r} is not callable", hint="point APP at an ASGI or WSGI application")
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "asgi"
    if len(params) == 2:
        return "wsgi"
    if len(params) == 3:
        return "asgi"
    raise AppLoadError(
        f"cannot tell whether {app!r} is ASGI or WSGI (its call takes {len(params)} arguments)",
        hint="pass --interface asgi or --interface wsgi, or --factory if it builds the app",
    )


def load_app(spec: str, *, factory: bool = False, interface: str = "auto", app_dir: str = ".") -> tuple[ASGIApp, str]:
    """Import and adapt the app; returns (ASGI 3 app, "asgi" or "wsgi")."""
    app = import_app(spec, app_dir)
    if factory:
        try:
            app = app()
        except Exception as exc:
            raise AppLoadError(f"the app factory {spec} raised {type(exc).__name__}: {exc}", hint=_tail(exc)) from exc
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "wsgi":
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(app), "wsgi"
    return app, "asgi"

"""Import the user's app from ``module:attribute`` and make it an ASGI 3 callable.

ASGI apps are used as they are; WSGI apps (Flask, Django's WSGIHandler, ...) are detected and
adapted with a2wsgi; ``factory=True`` calls the attribute first.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import AppLoadError

__all__ = ["app_traceback", "check_app", "detect_interface", "import_app", "load_app", "split_app_spec"]

ASGIApp = Callable[..., Any]

_LIVESWAP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IMPORTLIB = os.path.abspath(importlib.__file__)  # import_module()


def split_app_spec(spec: str) -> tuple[str, str]:
    """``"module:attribute"`` -> ``(module, attribute)``; an AppLoadError with a hint when it is not that."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        guess = (module_name or "main").removesuffix(".py").replace("/", ".").strip(".") or "main"
        raise AppLoadError(
            f'Import string "{spec}" must be in format "<module>:<attribute>".',
            hint=f"for app = FastAPI() in {guess.replace('.', '/')}.py, use {guess}:{attr or 'app'}",
        )
    if "/" in module_name or module_name.endswith(".py"):
        folder, _, base = module_name.removesuffix(".py").rpartition("/")
        use = f"--app-dir {folder} {base}:{attr}" if folder else f"{base}:{attr}"
        raise AppLoadError(
            f'Import string "{spec}": "{module_name}" is a file name; APP takes a module name.', hint=f"use {use}"
        )
    if not all(module_name.split(".")):
        raise AppLoadError(
            f'Import string "{spec}": "{module_name}" is not a module name.',
            hint="give the module's full dotted name, e.g. myapp.main:app (relative names are not supported)",
        )
    if not all(part.isidentifier() for part in attr.split(".")):
        name = attr.split("(")[0]
        hint = f"give the name of the app object, e.g. {module_name}:app"
        if attr.endswith(")") and name.isidentifier():
            hint = f"to call a factory, use {module_name}:{name} --factory"
        raise AppLoadError(f'Import string "{spec}": "{attr}" is not an attribute name.', hint=hint)
    return module_name, attr


def _not_found_hint(top: str, app_dir: str) -> str:
    where = os.path.abspath(app_dir or ".")
    return (
        f"looked for {top}.py and {top}/ in {where} (--app-dir) and on the Python path; run liveswap from the "
        f"directory that contains it, or pass --app-dir DIR"
    )


def check_app(spec: str, app_dir: str = ".") -> None:
    """Check APP before anything is started, without running any of the user's code.

    The format, and that its top-level module can be found (``importlib.util.find_spec`` on the
    top-level name only, so that no parent package is imported) with ``app_dir`` first on the path.
    A missing submodule or attribute can only be found by importing, which only workers do.
    """
    module_name, _ = split_app_spec(spec)
    top = module_name.partition(".")[0]
    saved = list(sys.path)
    sys.path.insert(0, app_dir)
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    finally:
        sys.path[:] = saved
    if found is None:
        raise AppLoadError(f'Could not import module "{module_name}".', hint=_not_found_hint(top, app_dir))


def import_app(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attribute`` (attribute may be dotted), with ``app_dir`` first on sys.path."""
    module_name, attr = split_app_spec(spec)
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            parent, _, last = exc.name.rpartition(".")
            hint = _not_found_hint(exc.name, app_dir)
            if parent in sys.modules:
                where = getattr(sys.modules[parent], "__file__", None) or parent
                hint = f'the package "{parent}" ({where}) has no module "{last}"'
            raise AppLoadError(f'Could not import module "{module_name}".', hint=hint) from exc
        raise AppLoadError(f'Error importing "{module_name}": {exc}', hint=app_traceback(exc)) from exc
    except Exception as exc:
        raise AppLoadError(
            f'Error importing "{module_name}": {type(exc).__name__}: {exc}', hint=app_traceback(exc)
        ) from exc
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


def _is_machinery(filename: str) -> bool:
    """Frames that are never the app's: the import system's and liveswap's own (its demo app aside)."""
    if filename.startswith("<frozen importlib") or filename == _IMPORTLIB:
        return True
    return filename.startswith(_LIVESWAP_DIR + os.sep) and not filename.startswith(
        os.path.join(_LIVESWAP_DIR, "demo") + os.sep
    )


def _server_dirs() -> tuple[str, ...]:
    """Where the server that calls the app lives (uvicorn only if it is imported: else no frame is its)."""
    dirs = []
    for name in ("uvicorn", "asyncio", "a2wsgi", "concurrent"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(dirs)


def app_traceback(exc: BaseException, limit: int = 8) -> str:
    """The end of ``exc``'s traceback as the app's author wants to read it: the app's frames only.

    Frames of the import system (``<frozen importlib._bootstrap>``) and of liveswap are left out
    wherever they are, and so are the server's (uvicorn, asyncio) before the first app frame; the
    last ``limit`` frames are kept, then the exception line. A SyntaxError shows its file, line,
    source line and caret. For import errors, and for lifespan or startup failures::

        try:
            await app_startup()
        except Exception as exc:
            report(f"{type(exc).__name__}: {exc}", detail=app_traceback(exc))
    """
    limit = max(0, limit)
    te = traceback.TracebackException.from_exception(exc)
    frames = [f for f in te.stack if not _is_machinery(f.filename)]
    server = _server_dirs()
    while frames and frames[0].filename.startswith(server):
        frames.pop(0)
    lines: list[str] = []
    if len(frames) > limit:
        lines.append(f"  ... {len(frames) - limit} earlier frame(s)\n")
        frames = frames[len(frames) - limit :]
    lines += traceback.StackSummary.from_list(frames).format()
    lines += te.format_exception_only()
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        how = "caused by" if exc.__cause__ is not None else "raised while handling"
        lines.append(f"({how} {type(cause).__name__}: {cause})\n")
    return "".join(lines).rstrip()


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


def load_app(
    spec: str, *, factory: bool = False, interface: str = "auto", app_dir: str = ".", wsgi_adapter: str = "native"
) -> tuple[ASGIApp, str]:
    """Import and adapt the app; returns (ASGI 3 app, "asgi" or "wsgi"). A WSGI app comes back as a
    ``NativeWSGI`` (served natively by ``WorkerServer``; ASGI through a2wsgi when wrapped) unless
    ``wsgi_adapter`` is ``a2wsgi``."""
    app = import_app(spec, app_dir)
    if factory:
        try:
            app = app()
        except Exception as exc:
            raise AppLoadError(
                f"the app factory {spec} raised {type(exc).__name__}: {exc}", hint=app_traceback(exc)
            ) from exc
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "wsgi":
        if wsgi_adapter == "native":
            from .wsgi import NativeWSGI

            return NativeWSGI(app), "wsgi"
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(app), "wsgi"
    return app, "asgi"

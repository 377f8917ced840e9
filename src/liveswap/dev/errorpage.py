"""The error page of ``liveswap dev``: what failed, where, and what usually fixes it.

A :class:`Failure` is made where the failure happens (in the worker: ``Failure.from_exception(exc,
"import")``, with the failing frames and the source lines around them read from disk, and hints),
travels as JSON (``to_json`` / ``from_json``), and is shown in three places: every HTTP request
gets it at once from ``error_app(failure)`` (status 500: an HTML page for browsers, JSON for
``Accept: application/json``, text otherwise), and the terminal gets ``render_terminal(failure)``,
lrt-style::

    liveswap: error: import failed: Error importing "myapp": NameError: name 'FastAPi' is not defined
      File "/srv/myapp.py", line 3, in <module>
        app = FastAPi()
              ^^^^^^^
    NameError: name 'FastAPi' is not defined

The JSON shape (``frames`` is empty when only the text is known, e.g. an old worker's BootError)::

    {"stage": "import",                 # or "startup", "health", "build"
     "error": "Error importing \\"myapp\\": NameError: name 'FastAPi' is not defined",
     "exception": "NameError",          # "" when unknown
     "frames": [{"file": "/srv/myapp.py", "line": 3, "function": "<module>",
                 "context": [[1, "from fastapi import FastAPI"], [2, ""], [3, "app = FastAPi()"]]}],
     "traceback": "  File \\"/srv/myapp.py\\", line 3, in <module>\\n ...",
     "hints": ["..."]}
"""

from __future__ import annotations

import html
import importlib.util
import json
import linecache
import os
import re
import secrets
import sys
import textwrap
import traceback
from dataclasses import asdict, dataclass
from typing import Literal, cast

from ..debug._asgi import ASGIApp, Receive, Scope, Send
from ..errors import LiveswapError
from ..http.app import _is_machinery, _server_dirs, app_traceback
from .refresh import script_tag

__all__ = ["STAGES", "Failure", "Frame", "Stage", "error_app", "render_html", "render_terminal"]

Stage = Literal["import", "startup", "health", "build"]
STAGES: tuple[Stage, ...] = ("import", "startup", "health", "build")
_TITLES = {
    "import": "import failed",
    "startup": "startup failed",
    "health": "health check failed",
    "build": "build failed",
}
CONTEXT = 3  # source lines shown on each side of a failing line
FRAME_LIMIT = 8  # the last frames shown, as in app_traceback
_CIRCULAR = re.compile(r"partially initialized module '([^']+)'")
# Import names whose distribution is named otherwise: the usual surprises.
_DISTRIBUTIONS = {
    "PIL": "Pillow",
    "bs4": "beautifulsoup4",
    "cv2": "opencv-python",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "jwt": "PyJWT",
    "sklearn": "scikit-learn",
    "yaml": "PyYAML",
}


@dataclass(frozen=True)
class Frame:
    """One frame of a traceback, with the source lines around ``line``: ``(number, text)`` pairs."""

    file: str
    line: int
    function: str
    context: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Failure:
    """Why the new code does not serve. ``error`` is one line; ``traceback`` the text as Python prints
    it (the app's frames only); ``frames`` the same frames with their source, when they are known."""

    stage: Stage
    error: str
    exception: str = ""
    frames: tuple[Frame, ...] = ()
    traceback: str = ""
    hints: tuple[str, ...] = ()

    @classmethod
    def from_exception(cls, exc: BaseException, stage: Stage = "import") -> Failure:
        """The failure ``exc`` describes. For an AppLoadError, the exception it was raised from."""
        error, root, hints = f"{type(exc).__name__}: {exc}", exc, []
        if isinstance(exc, LiveswapError):
            error, root = str(exc), exc.__cause__ or exc
            # Its hint is either advice, kept as it is, or (when it wraps the app's own exception)
            # the app's traceback, which is shown as the traceback.
            if exc.hint and (root is exc or exc.hint != app_traceback(root)):
                hints.append(exc.hint)
        if not hints:
            hints = _hints(root)
        frames = _frames(root)
        if isinstance(root, SyntaxError) and root.filename and root.lineno:
            frames += (Frame(root.filename, root.lineno, "<module>", _context(root.filename, root.lineno)),)
        # A LiveswapError of its own (no exception of the app's under it) says everything in `error`.
        text = "" if isinstance(root, LiveswapError) else app_traceback(root, limit=FRAME_LIMIT)
        return cls(stage, error, type(root).__name__, frames, text, tuple(hints))

    def to_json(self) -> str:
        """One line of JSON (the shape is in the module's docstring)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> Failure:
        """The Failure ``to_json`` wrote; ValueError if ``data`` is not one."""
        try:
            obj = json.loads(data)
            stage, error = obj["stage"], obj["error"]
            if stage not in STAGES or not isinstance(error, str):
                raise ValueError(f"stage {stage!r} or error {error!r}")
            frames = tuple(
                Frame(
                    str(f["file"]), int(f["line"]), str(f["function"]), tuple((int(n), str(t)) for n, t in f["context"])
                )
                for f in obj.get("frames", [])
            )
            return cls(
                cast(Stage, stage),
                error,
                str(obj.get("exception", "")),
                frames,
                str(obj.get("traceback", "")),
                tuple(str(h) for h in obj.get("hints", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a liveswap failure: {exc}") from None


def _context(file: str, line: int) -> tuple[tuple[int, str], ...]:
    linecache.checkcache(file)  # the file as it is on disk now, not as an earlier read cached it
    lines = linecache.getlines(file)
    if not 1 <= line <= len(lines):
        return ()
    first, last = max(1, line - CONTEXT), min(len(lines), line + CONTEXT)
    return tuple((n, lines[n - 1].rstrip("\r\n")) for n in range(first, last + 1))


def _frames(exc: BaseException) -> tuple[Frame, ...]:
    """The app's frames, chosen as ``app_traceback`` chooses them."""
    stack = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_machinery(f.filename)]
    server = _server_dirs()
    while stack and stack[0].filename.startswith(server):
        stack.pop(0)
    return tuple(
        Frame(f.filename, f.lineno or 0, f.name, _context(f.filename, f.lineno or 0)) for f in stack[-FRAME_LIMIT:]
    )


def _hints(exc: BaseException) -> list[str]:
    hints = []
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        hints.append(_missing_module(exc.name))
    circular = _CIRCULAR.search(str(exc)) if isinstance(exc, ImportError | AttributeError) else None
    if circular:
        partial, importer = circular.group(1), _importer(exc) or "a module it imports"
        hints.append(
            f'circular import: "{importer}" imports from "{partial}" while "{partial}" is still being initialized '
            f'("{partial}" imports "{importer}", directly or through other modules)\n'
            f"move one of the two imports into the function that uses it, or import the module "
            f'("import {partial}") and use {partial}.NAME when it is called'
        )
    if isinstance(exc, SyntaxError):
        where = traceback.format_exception_only(type(exc), exc)[:-1]  # file and line, source, caret
        hints.append(
            f"{type(exc).__name__} in {exc.filename}, line {exc.lineno}:\n"
            + textwrap.dedent("".join(where[1:])).rstrip()
        )
    return hints


def _missing_module(name: str) -> str:
    parent, _, last = name.rpartition(".")
    if parent and _findable(parent.partition(".")[0]):
        return f'the package "{parent}" has no module "{last}": check the name, and the version of "{parent}"'
    top = name.partition(".")[0]
    hint = (
        f'no module named "{top}" in the active environment ({sys.executable})\n'
        f"if it is a dependency, install it there: {sys.executable} -m pip install {_DISTRIBUTIONS.get(top, top)}"
    )
    venv = os.environ.get("VIRTUAL_ENV")
    if venv and os.path.realpath(venv) != os.path.realpath(sys.prefix):
        hint += f"\nthe activated virtual environment is {venv}, but liveswap runs in {sys.prefix}"
    return hint


def _findable(top: str) -> bool:
    try:
        return top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _importer(exc: BaseException) -> str | None:
    """The module whose code raised ``exc`` (the last frame of the app's)."""
    name, tb = None, exc.__traceback__
    while tb is not None:
        if not _is_machinery(tb.tb_frame.f_code.co_filename):
            name = tb.tb_frame.f_globals.get("__name__")
        tb = tb.tb_next
    return name if isinstance(name, str) else None


def render_terminal(failure: Failure) -> str:
    """The failure for the log: the error, the traceback and ``hint:`` lines, as the CLI prints errors."""
    lines = [f"liveswap: error: {_TITLES[failure.stage]}: {failure.error}"]
    text = failure.traceback or "".join(
        f'  File "{f.file}", line {f.line}, in {f.function}\n'
        + "".join(f"    {t.strip()}\n" for n, t in f.context if n == f.line)
        for f in failure.frames
    )
    lines += text.rstrip().splitlines()
    for hint in failure.hints:
        first, *rest = hint.splitlines() or [""]
        lines.append(f"     hint: {first}")
        lines += [f"           {line}" for line in rest]
    return "\n".join(lines)


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
header { background: #b3261e; color: #fff; padding: 18px 28px; }
header p { margin: 0; opacity: .85; } h1 { font-size: 20px; margin: 6px 0 0; word-break: break-word; }
main { padding: 8px 28px 24px; } h2 { font-size: 15px; margin: 22px 0 8px; }
pre { font: 13px/1.5 ui-monospace, monospace; margin: 0; white-space: pre-wrap; word-break: break-word; }
.hint { background: #fff8e1; border-left: 4px solid #f9a825; padding: 8px 12px; margin: 6px 0; }
.frame { background: #fff; border: 1px solid #ddd; border-radius: 4px; margin: 8px 0; }
.where { padding: 6px 10px; border-bottom: 1px solid #eee; font-size: 13px; }
.src { padding: 6px 0; } .src span { display: block; padding: 0 10px; } .src .at { background: #fde0dc; }
.src i { color: #888; font-style: normal; display: inline-block; width: 4em; user-select: none; }
details, footer { margin-top: 18px; } footer { color: #555; }
"""


def render_html(failure: Failure, *, nonce: str | None = None, refresh: bool = True) -> str:
    """The error page; everything from the failure is escaped. With ``refresh``, it carries the
    refresh script, so it goes back to the app by itself after a fixing save."""
    e = html.escape
    hints = "".join(f'<div class="hint"><pre>{e(h)}</pre></div>' for h in failure.hints)
    frames = "".join(
        f'<div class="frame"><div class="where"><code>{e(f.file)}</code>, line {f.line}, '
        f'in <code>{e(f.function)}</code></div><pre class="src">'
        + "".join(f"<span{' class=at' if n == f.line else ''}><i>{n}</i>{e(t)}</span>" for n, t in f.context)
        + "</pre></div>"
        for f in failure.frames
    )
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(_TITLES[failure.stage])}: {e(failure.error)}</title><style>{_STYLE}</style></head>\n<body>",
        f"<header><p>liveswap dev: {e(_TITLES[failure.stage])}</p><h1>{e(failure.error)}</h1></header><main>",
        f"<h2>Hints</h2>{hints}" if hints else "",
        f"<h2>Traceback</h2>{frames}" if frames else "",
    ]
    if failure.traceback:
        text = f"<pre>{e(failure.traceback)}</pre>"
        parts.append(
            f"<details><summary>Traceback as text</summary>{text}</details>" if frames else f"<h2>Traceback</h2>{text}"
        )
    back = ", and this page goes back to the app by itself once the new code passes its health check" if refresh else ""
    parts.append(f"<footer>Fix the code and save: the next save tries again{back}.</footer></main>\n")
    if refresh:
        parts.append(script_tag(None, failed=True, nonce=nonce))
    parts.append("</body></html>\n")
    return "".join(parts)


def _negotiate(accept: str) -> str:
    """``html``, ``json`` or ``text``: the highest-ranked of the first two in Accept, else text."""
    best, best_q = "text", 0.0
    for item in accept.split(","):
        media, *params = (p.strip().lower() for p in item.split(";"))
        kind = "html" if media in ("text/html", "application/xhtml+xml") else None
        kind = "json" if media == "application/json" or media.endswith("+json") else kind
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if kind and q > best_q:
            best, best_q = kind, q
    return best


def error_app(failure: Failure, *, refresh: bool = True) -> ASGIApp:
    """An ASGI app that answers every HTTP request at once, with status 500 and ``failure``.

    It reads nothing of the request (a client still sending a body gets its answer too), accepts
    its lifespan, and closes WebSockets with 1011. ``refresh=False`` (``--no-browser-reload``)
    leaves the refresh script out of the page.
    """
    as_json = failure.to_json().encode()
    as_text = (render_terminal(failure) + "\n").encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011, "reason": "the new code is broken"})
            return
        accept = b",".join(v for k, v in scope.get("headers", []) if k.lower() == b"accept").decode("latin-1")
        kind = _negotiate(accept)
        headers = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
        if kind == "html":
            nonce = secrets.token_urlsafe(12)
            body = render_html(failure, nonce=nonce, refresh=refresh).encode()
            csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; connect-src 'self'"
            headers += [(b"content-type", b"text/html; charset=utf-8"), (b"content-security-policy", csp.encode())]
        elif kind == "json":
            body, headers = as_json, [*headers, (b"content-type", b"application/json")]
        else:
            body, headers = as_text, [*headers, (b"content-type", b"text/plain; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app

"""The debug server's ASGI app: a small hand-rolled router over stacks, profile, heap, stats, metrics.

It runs on the debug server's own thread and event loop (see ``__init__.py``), never on the app's.
Work that takes long (a profile, a heap snapshot) runs in a worker thread with ``asyncio.to_thread``
so the other endpoints keep answering meanwhile.

    app = make_debug_app(metrics=metrics, main_loop=asyncio.get_running_loop(), token="s3cret")
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from . import heap, stacks, stats
from ._asgi import Receive, Scope, Send
from ._common import (
    HTML,
    JSON,
    PROFILE_DEFAULT_SECONDS,
    PROFILE_MAX_SECONDS,
    PROFILE_MIN_SECONDS,
    PROMETHEUS,
    SECURITY_HEADERS,
    TEXT,
    Headers,
    HTTPError,
    check_token,
    internal_error,
    json_body,
    method_not_allowed,
    not_found,
    with_token,
)
from .errors import HeapNotTracingError, ProfileBusyError
from .metrics import Metrics, render_prometheus
from .profile import collapsed_text, take_profile, to_flamegraph_svg, to_speedscope

__all__ = ["DebugApp", "make_debug_app"]

_PREFIX = re.compile(r"(/[A-Za-z0-9_.-]+)*\Z")


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: Headers = field(default_factory=list)


def _text(text: str, status: int = 200, content_type: str = TEXT) -> _Response:
    return _Response(status, text.encode("utf-8"), content_type)


def _json(data: Any, status: int = 200) -> _Response:
    return _Response(status, json_body(data), JSON)


def _choice(req: _Request, name: str, choices: tuple[str, ...]) -> str:
    value = req.arg(name, choices[0]) or choices[0]
    if value not in choices:
        raise HTTPError(
            400, f"{name}={value!r} is not one of {', '.join(choices)}", f"e.g. {req.path}?{name}={choices[-1]}"
        )
    return value


def _number(req: _Request, name: str, default: float, low: float, high: float) -> float:
    raw = req.arg(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also rejects nan
        raise HTTPError(
            400,
            f"{name}={raw!r} is out of range: expected a number from {low:g} to {high:g}",
            f"e.g. {req.path}?{name}={default:g}",
        )
    return value


Handler = Callable[["DebugApp", _Request], Awaitable[_Response]]


@dataclass(frozen=True)
class _Route:
    path: str
    methods: tuple[str, ...]
    handler: Handler
    example: str
    summary: str


class DebugApp:
    """The ASGI app. ``closing`` is set by the server on stop, to end a running profile early."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        main_loop: asyncio.AbstractEventLoop | None,
        token: str | None,
        extra: Callable[[], Mapping[str, Any]] | None,
    ) -> None:
        self.metrics = metrics
        self.main_loop = main_loop
        self._token = token.encode("utf-8") if token else None
        self.extra = extra
        self.closing = threading.Event()
        self.routes = {route.path: route for route in _ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # only if run with lifespan="on": nothing to set up
            while True:
                kind = (await receive())["type"]
                if kind == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif kind == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets are not served here; returning makes the server refuse them
        req = _Request(
            method=scope["method"],
            path=scope["path"].rstrip("/") or "/",
            query=parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        )
        try:
            response = await self._dispatch(req)
        except HTTPError as exc:
            response = _Response(exc.status, exc.body(), headers=exc.headers)
        except Exception:  # a debug server shows its own failures instead of hiding them
            response = _Response(500, internal_error())
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("latin-1")),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if req.method == "HEAD" else response.body})

    async def _dispatch(self, req: _Request) -> _Response:
        check_token(self._token, req.arg("token"), req.headers.get("authorization"))
        route = self.routes.get(req.path)
        if route is None:
            raise not_found(req.path, "\n".join(f"  {r.example:<40} {r.summary}" for r in _ROUTES))
        if req.method not in route.methods:
            raise method_not_allowed(req.path, req.method, route.methods)
        return await route.handler(self, req)

    # -- endpoints ---------------------------------------------------------------------------------

    async def _index(self, req: _Request) -> _Response:
        token = req.arg("token")
        # Behind the supervisor's debug port (/workers/<pid>/...), links must keep that prefix.
        prefix = req.headers.get("x-forwarded-prefix", "")
        if not _PREFIX.match(prefix):
            prefix = ""
        rows = []
        for route in _ROUTES:
            href = with_token(prefix + route.example, token)
            rows.append(
                f'<tr><td><a href="{html.escape(href)}">{html.escape(route.example)}</a></td>'
                f"<td>{html.escape(route.summary)}</td></tr>"
            )
        page = _INDEX.format(pid=os.getpid(), rows="\n".join(rows))
        return _text(page, content_type=HTML)

    async def _stacks(self, req: _Request) -> _Response:
        fmt = _choice(req, "format", ("text", "json"))
        dump = stacks.collect(self.main_loop)
        return _json(dump) if fmt == "json" else _text(stacks.format_text(dump))

    async def _profile(self, req: _Request) -> _Response:
        seconds = _number(req, "seconds", PROFILE_DEFAULT_SECONDS, PROFILE_MIN_SECONDS, PROFILE_MAX_SECONDS)
        fmt = _choice(req, "format", ("svg", "speedscope", "collapsed"))
        started = time.time()
        try:
            # The sampler runs in a worker thread; this (debug) thread is left out of the profile.
            prof = await asyncio.to_thread(
                take_profile, seconds, exclude_threads=(threading.get_ident(),), cancel=self.closing
            )
        except ProfileBusyError as exc:
            raise HTTPError(409, str(exc), exc.hint) from exc
        name = f"pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}, {seconds:g} s"
        if fmt == "collapsed":
            return _text(collapsed_text(prof.collapsed))
        if fmt == "speedscope":
            doc = to_speedscope(prof.collapsed, f"liveswap {name}", locations=prof.locations, interval=prof.interval)
            response = _Response(200, json.dumps(doc).encode("utf-8"), JSON)
            response.headers.append((b"content-disposition", b"attachment; filename=profile.speedscope.json"))
            return response
        subtitle = (
            f"all threads sampled {prof.ticks} times, every {prof.interval * 1000:g} ms (wall clock: "
            "waiting threads count too); hover a frame for details"
        )
        svg = to_flamegraph_svg(prof.collapsed, f"CPU profile: {name}", locations=prof.locations, subtitle=subtitle)
        return _text(svg, content_type="image/svg+xml; charset=utf-8")

    async def _heap_top(self, req: _Request) -> _Response:
        limit = int(_number(req, "top", 25, 1, 1000))
        by_traceback = _choice(req, "group_by", ("lineno", "traceback")) == "traceback"
        group_by: heap.GroupBy = "traceback" if by_traceback else "lineno"
        fmt = _choice(req, "format", ("text", "json"))
        try:
            result = await asyncio.to_thread(heap.top, limit, group_by)
        except HeapNotTracingError as exc:
            raise HTTPError(409, str(exc), exc.hint) from exc
        return _json(result) if fmt == "json" else _text(heap.format_top_text(result))

    async def _heap_start(self, req: _Request) -> _Response:
        frames = int(_number(req, "frames", heap.DEFAULT_FRAMES, 1, heap.MAX_FRAMES))
        result = heap.start(frames)
        if _choice(req, "format", ("text", "json")) == "json":
            return _json(result)
        if result["already_tracing"]:
            return _text(f"tracemalloc was already tracing ({result['frames']} frames); left as is\n")
        return _text(
            f"tracemalloc started with {frames} frames per allocation; GET /heap for the top "
            "allocation sites, /heap/stop when done (tracing costs memory and CPU)\n"
        )

    async def _heap_stop(self, req: _Request) -> _Response:
        result = heap.stop()
        if _choice(req, "format", ("text", "json")) == "json":
            return _json(result)
        return _text("tracemalloc stopped\n" if result["was_tracing"] else "tracemalloc was not tracing\n")

    async def _stats(self, req: _Request) -> _Response:
        data = stats.process_stats()
        if self.extra is not None:
            try:
                data.update(self.extra())
            except Exception as exc:  # the host's callback must not take /stats down with it
                data["extra_error"] = f"{type(exc).__name__}: {exc}"
        return _json(data)

    async def _metrics(self, req: _Request) -> _Response:
        snapshot = self.metrics.snapshot()
        if _choice(req, "format", ("prometheus", "json")) == "json":
            return _json(snapshot)
        return _text(render_prometheus(snapshot), content_type=PROMETHEUS)


_GET = ("GET", "HEAD")
_BOTH = ("GET", "HEAD", "POST")
_ROUTES = (
    _Route("/", _GET, DebugApp._index, "/", "this page"),
    _Route(
        "/stacks",
        _GET,
        DebugApp._stacks,
        "/stacks",
        "every thread's stack and every asyncio task of the main loop (?format=json)",
    ),
    _Route(
        "/profile",
        _GET,
        DebugApp._profile,
        "/profile?seconds=10",
        "sample all threads for 1-60 s; flame graph SVG (&format=speedscope|collapsed)",
    ),
    _Route(
        "/heap",
        _GET,
        DebugApp._heap_top,
        "/heap?top=25",
        "top allocation sites while tracemalloc traces (&group_by=traceback, &format=json)",
    ),
    _Route(
        "/heap/start",
        _BOTH,
        DebugApp._heap_start,
        "/heap/start?frames=5",
        "start tracemalloc (costs memory and CPU until stopped)",
    ),
    _Route("/heap/stop", _BOTH, DebugApp._heap_stop, "/heap/stop", "stop tracemalloc and free its memory"),
    _Route("/stats", _GET, DebugApp._stats, "/stats", "pid, uptime, memory, CPU, threads, fds, gc (JSON)"),
    _Route(
        "/metrics",
        _GET,
        DebugApp._metrics,
        "/metrics",
        "request counters and latency, Prometheus text format (?format=json)",
    ),
)

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>liveswap debug: pid {pid}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:.25em 1em .25em 0}} code{{background:#eee}}</style>
</head><body>
<h1>liveswap debug server, pid {pid}</h1>
<table>
{rows}
</table>
<p>This server runs on its own thread, so it answers even while the app blocks its event loop.
Open a profile's SVG in the browser and hover a frame; for zoom and search, take
<code>format=speedscope</code> and open it at https://www.speedscope.app.</p>
</body></html>
"""


def make_debug_app(
    *,
    metrics: Metrics,
    main_loop: asyncio.AbstractEventLoop | None,
    token: str | None = None,
    extra: Callable[[], Mapping[str, Any]] | None = None,
) -> DebugApp:
    """The debug ASGI app. ``token`` (if non-empty) is required on every route; ``extra()`` is merged
    into ``/stats`` and is called on the debug server's thread, so it must only read thread-safe state.
    """
    return DebugApp(metrics=metrics, main_loop=main_loop, token=token, extra=extra)

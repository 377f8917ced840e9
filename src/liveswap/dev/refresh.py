"""Browser refresh for ``liveswap dev``: open pages reload once when new code is live, and show the
error page when it is broken.

In the worker, :class:`RefreshMiddleware` puts a script before the last ``</body>`` of the app's
HTML pages (:func:`inject`: one whole body). In liveswap itself, a :class:`RefreshHub` is told what
happened and serves the script's event stream, ``GET /__liveswap/events`` (Server-Sent Events)::

    hub = RefreshHub(generation=1)             # in the supervisor, which knows generations first-hand
    app = RefreshMiddleware(app, generation=1)  # in each worker of generation 1
    hub.reloaded(2)                             # generation 2 passed its health check: tabs reload once
    hub.failed(failure)                         # the save is broken: tabs reload onto the error page

The stream (every ``data`` is one line of JSON; ``state`` names the hub's state, new at each change)::

    retry: 1000                  on connect, then the state as it is now:
    event: hello   data: {"generation": 2, "failed": false, "state": "9f2c01-4"}
    event: reload  data: {"generation": 3, "failed": false, "state": "9f2c01-5"}
    event: error   data: {"generation": 3, "failed": true, "state": "9f2c01-6", "stage": "import", "error": "..."}
    : keep-alive                 a comment after 15 s without an event

The script knows the generation that rendered its page (``data-generation``), or that it is the
error page (``data-failed``). It reloads when the hub's state differs from its page's, at ``hello``
(a tab that missed events while disconnected catches up) and at ``reload``; at ``error`` it always
reloads, to show the new failure. No loops: at most one reload per event, and at most two in a row
for one ``state`` (counted in ``sessionStorage``): a page that keeps coming back stale (a server
that does not serve what the hub announces) stops there and says so in the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..debug._asgi import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .errorpage import Failure

__all__ = ["EVENTS_PATH", "RefreshHub", "RefreshMiddleware", "Subscription", "inject", "script_tag"]

EVENTS_PATH = "/__liveswap/events"
KEEPALIVE = 15.0  # seconds between keep-alive comments: under the idle timeouts of common proxies
BUFFER_LIMIT = 1 << 20  # a response whose </body> is not within this much of its end passes unchanged
MARKER = b"data-liveswap-refresh"  # the script's attribute: a body that has it already is left alone
_NO_BODY = {204, 206, 304}  # no body, or a part of one: never touched
_TAIL = len(b"</body") - 1  # the most a chunk can end with of a "</body" the next one completes

# The client. EventSource reconnects by itself (after `retry`), and its own connection errors are
# also dispatched as "error" events: those carry no data and are ignored.
_CLIENT = """(function () {
var me = document.currentScript;
if (!me || !window.EventSource || window.__liveswap) return;
var gen = me.getAttribute("data-generation"), broken = me.hasAttribute("data-failed");
var st = window.__liveswap = {hello: false, reloading: false}, es = new EventSource(me.getAttribute("data-events"));
function reload(state, why) {
  if (st.reloading) return;
  try {
    var key = "liveswap-reloads", last = (sessionStorage.getItem(key) || "").split(" ");
    var n = last[0] === state ? +last[1] : 0;
    if (n >= 2) { console.warn("liveswap: " + why + ", but this page came back stale twice: not reloading"); return; }
    sessionStorage.setItem(key, state + " " + (n + 1));
  } catch (e) {}
  st.reloading = true; es.close(); console.info("liveswap: " + why + ", reloading"); location.reload();
}
function on(name, handle) {
  es.addEventListener(name, function (e) { if (typeof e.data === "string") handle(JSON.parse(e.data)); });
}
function stale(s) { return s.failed ? !broken : broken || String(s.generation) !== gen; }
on("hello", function (s) {
  st.hello = true;
  if (stale(s)) reload(s.state, s.failed ? "the code is broken" : "new code is live");
});
on("reload", function (s) { if (stale(s)) reload(s.state, "new code is live"); });
on("error", function (s) { console.error("liveswap: " + s.error); reload(s.state, "the new code is broken"); });
})();"""


def script_tag(generation: int | None, *, failed: bool = False, nonce: str | None = None) -> str:
    """The ``<script>`` element for a page rendered by ``generation`` (or the error page: ``failed``)."""
    attrs = [MARKER.decode(), f'data-events="{EVENTS_PATH}"']
    if generation is not None:
        attrs.append(f'data-generation="{int(generation)}"')
    if failed:
        attrs.append("data-failed")
    if nonce:
        attrs.append(f'nonce="{nonce}"')
    return f"<script {' '.join(attrs)}>\n{_CLIENT}\n</script>\n"


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _injectable(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """An uncompressed HTML page in an ASCII-compatible charset that is not a download."""
    headers = list(headers)
    media, _, params = (_header(headers, b"content-type") or b"").lower().partition(b";")
    if media.strip() != b"text/html" or b"utf-16" in params or b"utf-32" in params:
        return False
    if (_header(headers, b"content-encoding") or b"identity").strip().lower() not in (b"", b"identity"):
        return False
    return not (_header(headers, b"content-disposition") or b"").strip().lower().startswith(b"attachment")


def _insert(body: bytes, snippet: bytes) -> bytes | None:
    """``body`` with ``snippet`` before its last ``</body>``; None if it has none or has the script."""
    at = body.lower().rfind(b"</body")
    if at < 0 or MARKER in body:
        return None
    return body[:at] + snippet + body[at:]


def _partial_tag(data: bytearray) -> int:
    """Where the start of a "</body" that the next chunk may complete begins at the end of ``data``."""
    tail = bytes(data[-_TAIL:]).lower()
    at = tail.rfind(b"<")
    return len(data) - len(tail) + at if at >= 0 and b"</body".startswith(tail[at:]) else len(data)


def _with_length(headers: Iterable[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    value = str(length).encode()
    return [(k, value) if k.lower() == b"content-length" else (k, v) for k, v in headers]


def inject(
    body: bytes, headers: Iterable[tuple[bytes, bytes]], *, generation: int | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Put the refresh script before the last ``</body>`` of a whole HTML body; fix Content-Length.

    Anything else is returned unchanged: not ``text/html``, a Content-Encoding (gzip...), a
    download, no ``</body>``, or a body that already has the script (the error page)::

        body, headers = inject(b"<html><body>hi</body></html>", [(b"content-type", b"text/html")], generation=2)
    """
    headers = list(headers)
    new = _insert(body, script_tag(generation).encode()) if _injectable(headers) else None
    if new is None:
        return body, headers
    return new, _with_length(headers, len(new))


class RefreshMiddleware:
    """ASGI middleware that injects the refresh script into the HTML pages of ``app``.

    ``generation`` is the worker's: the script compares it with the hub's. A response with a
    Content-Length up to ``limit`` is held until complete, then sent with the script and the new
    length. A streamed one (no Content-Length) passes through as it comes, except its tail from
    the last ``</body>`` seen, held until the end; past ``limit`` it passes unchanged. HEAD
    requests, 204/206/304 answers and other kinds of content are never touched.
    """

    def __init__(self, app: ASGIApp, generation: int, *, limit: int = BUFFER_LIMIT) -> None:
        self.app = app
        self.snippet = script_tag(generation).encode()
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, _Injector(send, self.snippet, self.limit))


class _Injector:
    """The ``send`` of one response. Modes: new -> buffer | stream | pass (then unchanged)."""

    def __init__(self, send: Send, snippet: bytes, limit: int) -> None:
        self.send = send
        self.snippet = snippet
        self.limit = limit
        self.mode = "new"
        self.start: Message = {}  # held in "buffer" mode, until the body is complete
        self.held = bytearray()
        self.marked = False  # the stream already has the script

    async def __call__(self, message: Message) -> None:
        if self.mode == "pass":
            await self.send(message)
        elif message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] != "http.response.body":  # trailers, extensions: nothing more to do here
            await self._give_up()
            await self.send(message)
        elif self.mode == "buffer":
            await self._buffer(message.get("body", b""), bool(message.get("more_body", False)))
        else:
            await self._stream(message.get("body", b""), bool(message.get("more_body", False)))

    async def _start(self, message: Message) -> None:
        headers = list(message.get("headers", []))
        length = _header(headers, b"content-length")
        if message.get("status") in _NO_BODY or not _injectable(headers):
            self.mode = "pass"
        elif length is None:
            self.mode = "stream"  # the head is sent as it is: no length to fix
        elif length.strip().isdigit() and int(length) <= self.limit:
            self.mode, self.start = "buffer", message
            return
        else:
            self.mode = "pass"
        await self.send(message)

    async def _buffer(self, body: bytes, more: bool) -> None:
        self.held += body
        if len(self.held) > self.limit:  # longer than its Content-Length said: not ours to fix
            await self._give_up()
        elif not more:
            start, body = self.start, bytes(self.held)
            new = _insert(body, self.snippet)
            if new is not None:
                start, body = {**start, "headers": _with_length(start.get("headers", []), len(new))}, new
            self.mode, self.held = "pass", bytearray()
            await self.send(start)
            await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _stream(self, body: bytes, more: bool) -> None:
        self.held += body
        self.marked = self.marked or MARKER in body
        at = self.held.lower().rfind(b"</body")
        if not more:
            out = bytes(self.held)
            if at >= 0 and not self.marked:
                out = out[:at] + self.snippet + out[at:]
            self.mode, self.held = "pass", bytearray()
            await self.send({"type": "http.response.body", "body": out, "more_body": False})
            return
        keep = at if at >= 0 else _partial_tag(self.held)
        out = bytes(self.held[:keep])
        del self.held[:keep]
        if len(self.held) > self.limit:
            await self._give_up()
        if out:
            await self.send({"type": "http.response.body", "body": out, "more_body": True})

    async def _give_up(self) -> None:
        """Send what is held, unchanged, and pass everything after it through."""
        mode, held = self.mode, bytes(self.held)
        self.mode, self.held = "pass", bytearray()
        if mode == "buffer":
            await self.send(self.start)
        if held:
            await self.send({"type": "http.response.body", "body": held, "more_body": True})


def _event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscription:
    """One open event stream: ``await next_chunk()`` is the next bytes to write, None at its end."""

    def __init__(self, hub: RefreshHub, loop: asyncio.AbstractEventLoop, keepalive: float, max_pending: int) -> None:
        self._hub = hub
        self._loop = loop
        self._keepalive = keepalive
        self._max_pending = max_pending
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def next_chunk(self) -> bytes | None:
        """An event, or a keep-alive comment after ``keepalive`` seconds without one; None: end the stream."""
        try:
            return await asyncio.wait_for(self._queue.get(), self._keepalive)
        except TimeoutError:
            return b": keep-alive\n\n"

    def close(self) -> None:
        """Stop receiving events (the stream was closed)."""
        self._hub._remove(self)

    def _put(self, chunk: bytes | None) -> None:
        """From any thread: queue ``chunk`` on the stream's own loop (if it is closed, so is the stream)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, chunk)

    def _deliver(self, chunk: bytes | None) -> None:
        if chunk is not None and self._queue.qsize() >= self._max_pending:
            # A client that reads nothing: end its stream rather than queue without bound. EventSource
            # reconnects, and its hello carries the state as it is then.
            while not self._queue.empty():
                self._queue.get_nowait()
            chunk = None
        self._queue.put_nowait(chunk)


class RefreshHub:
    """What open pages are told; the hub is also the ASGI app that tells them (GET ``EVENTS_PATH``).

    ``reloaded``, ``failed`` and ``close`` may be called from any thread; each stream runs on the
    loop that serves it.
    """

    def __init__(self, generation: int = 0, *, keepalive: float = KEEPALIVE, max_pending: int = 64) -> None:
        self._lock = threading.Lock()
        self._id = os.urandom(3).hex()  # a restarted liveswap starts a new series of states
        self._serial = 0
        self._generation = generation
        self._failure: Failure | None = None
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.keepalive = keepalive
        self.max_pending = max_pending

    @property
    def connections(self) -> int:
        """How many event streams are open."""
        with self._lock:
            return len(self._subscribers)

    def _state(self) -> dict[str, object]:
        failure, state = self._failure, f"{self._id}-{self._serial}"
        now: dict[str, object] = {"generation": self._generation, "failed": failure is not None, "state": state}
        return now if failure is None else {**now, "stage": failure.stage, "error": failure.error}

    def reloaded(self, generation: int) -> None:
        """``generation`` passed its health check and is live: every open page reloads once."""
        with self._lock:
            self._generation, self._failure, self._serial = generation, None, self._serial + 1
            self._broadcast(_event("reload", self._state()))

    def failed(self, failure: Failure) -> None:
        """The new code is broken: every open page reloads to show the error page."""
        with self._lock:
            self._failure, self._serial = failure, self._serial + 1
            self._broadcast(_event("error", self._state()))

    def close(self) -> None:
        """End every stream (liveswap is stopping); streams opened from now on end after their hello."""
        with self._lock:
            self._closed = True
            self._broadcast(None)
            self._subscribers.clear()

    def _broadcast(self, chunk: bytes | None) -> None:
        # Under the lock, so that every stream gets the events in the order of the state changes.
        for sub in self._subscribers:
            sub._put(chunk)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def subscribe(self) -> Subscription:
        """A new stream, on the running loop; its first chunk is ``retry`` and the hello."""
        sub = Subscription(self, asyncio.get_running_loop(), self.keepalive, self.max_pending)
        with self._lock:
            sub._queue.put_nowait(b"retry: 1000\n" + _event("hello", self._state()))
            if self._closed:
                sub._queue.put_nowait(None)
            else:
                self._subscribers.add(sub)
        return sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: ``GET /__liveswap/events`` streams events until the client goes or the hub closes."""
        if scope["type"] != "http":
            return
        if scope.get("path") != EVENTS_PATH or scope.get("method") != "GET":
            text = f"not found: use GET {EVENTS_PATH}\n".encode()
            head = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
            await send({"type": "http.response.start", "status": 404, "headers": head})
            await send({"type": "http.response.body", "body": text})
            return
        sub = self.subscribe()
        gone = asyncio.ensure_future(_disconnected(receive))
        chunk: asyncio.Future[bytes | None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            while True:
                chunk = asyncio.ensure_future(sub.next_chunk())
                await asyncio.wait({chunk, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done() or chunk.result() is None:
                    break
                await send({"type": "http.response.body", "body": chunk.result(), "more_body": True})
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            sub.close()
            gone.cancel()
            if chunk is not None:
                chunk.cancel()


# x-accel-buffering: a reverse proxy in front must not hold the events back.
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":  # the request's (empty) body first
        pass

"""Browser refresh (dev/refresh.py): the script put into HTML pages, the event stream, and, in a real
headless Chromium, what a developer sees: one reload per save, the error page while the code is
broken, back to the app after the fix, and no reload without a save."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import Browser, Page, serve
from conftest import wait_until

from liveswap.dev.errorpage import Failure, error_app
from liveswap.dev.refresh import EVENTS_PATH, RefreshHub, RefreshMiddleware, inject, script_tag

HTML = [(b"content-type", b"text/html; charset=utf-8")]
PAGE = b"<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"
TAG = script_tag(7).encode()


def with_length(body: bytes, headers: list[tuple[bytes, bytes]] = HTML) -> list[tuple[bytes, bytes]]:
    return [*headers, (b"content-length", str(len(body)).encode())]


# ---- inject(): one whole body ----------------------------------------------------------------------


def test_inject_puts_the_script_before_the_last_body_tag_and_fixes_content_length() -> None:
    body, headers = inject(PAGE, with_length(PAGE), generation=7)
    assert body == PAGE.replace(b"</body>", TAG + b"</body>")
    assert dict(headers)[b"content-length"] == str(len(body)).encode()
    assert b'<script data-liveswap-refresh data-events="/__liveswap/events" data-generation="7">\n' in body
    # The last one, in any case: an earlier "</body>" in a script's string is not the end of the page.
    page = b"<body><script>var s = '</body>';</script><p>x</p></BODY >\n</html>"
    body, _ = inject(page, HTML, generation=7)
    assert body == page.replace(b"</BODY >", TAG + b"</BODY >")
    # No Content-Length (a streamed answer): none is added.
    assert inject(PAGE, HTML, generation=7)[1] == HTML


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (PAGE, [*HTML, (b"content-encoding", b"gzip")]),
        (PAGE, [(b"content-type", b"application/json")]),
        (PAGE, [(b"content-type", b"text/plain")]),
        (PAGE, []),
        (b"<html><p>no end tag</p>", HTML),
        (PAGE, [*HTML, (b"content-disposition", b"attachment; filename=page.html")]),
        (PAGE, [(b"content-type", b"text/html; charset=utf-16")]),
        (PAGE.replace(b"</body>", TAG + b"</body>"), HTML),  # has it already (the error page)
    ],
    ids=["gzip", "json", "text", "no-type", "no-body-tag", "download", "utf-16", "already"],
)
def test_inject_leaves_everything_else_alone(body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    assert inject(body, with_length(body, headers), generation=7) == (body, with_length(body, headers))


# ---- the middleware, message by message ----------------------------------------------------------


class Recorder:
    """The server's side of one response: what the middleware sent, in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def respond(
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    status: int = 200,
    method: str = "GET",
    limit: int = 1 << 20,
) -> tuple[Recorder, list[bytes]]:
    """Run an app that sends ``chunks`` through the middleware; also returns, after each chunk the app
    sent, the body bytes the client had been sent by then."""
    recorder, seen = Recorder(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
            seen.append(recorder.body())

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    middleware = RefreshMiddleware(app, generation=7, limit=limit)
    asyncio.run(middleware({"type": "http", "method": method, "path": "/"}, receive, recorder.send))
    return recorder, seen


def test_middleware_holds_a_response_with_content_length_and_fixes_it() -> None:
    chunks = [PAGE[:10], PAGE[10:60], PAGE[60:]]
    recorder, _ = respond(chunks, with_length(PAGE))
    start, body = recorder.sent
    assert start["type"] == "http.response.start" and body == {
        "type": "http.response.body",
        "body": PAGE.replace(b"</body>", TAG + b"</body>"),
        "more_body": False,
    }
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()


def test_middleware_passes_a_stream_through_as_it_comes() -> None:
    chunks = [b"<html><body>", b"<p>1</p>", b"<p>2</p></bo", b"dy>", b"\n</html>"]
    recorder, seen = respond(chunks, HTML)
    assert recorder.sent[0]["headers"] == HTML  # sent at once, unchanged: no length to fix
    assert recorder.body() == b"".join(chunks).replace(b"</body>", TAG + b"</body>")
    # Each chunk went out when the app sent it, but for the end that could be (or is) "</body>".
    assert seen[:3] == [b"<html><body>", b"<html><body><p>1</p>", b"<html><body><p>1</p><p>2</p>"]
    # No </body> at all: unchanged, and each chunk goes out at once but for an end that may start one.
    chunks = [b"<html><p>1</p>", b"<p>2</p><", b"/b", b"r></html>"]
    recorder, seen = respond(chunks, HTML)
    assert recorder.body() == b"".join(chunks)
    assert seen == [b"<html><p>1</p>", b"<html><p>1</p><p>2</p>", b"<html><p>1</p><p>2</p>", b"".join(chunks)]


def test_middleware_does_not_buffer_without_bound() -> None:
    big = b"<html><body>" + b"x" * 5000 + b"</body></html>"
    # Content-Length over the limit: passed through at once, unchanged.
    recorder, seen = respond([big[:100], big[100:]], with_length(big), limit=1000)
    assert recorder.body() == big and seen[0] == big[:100]
    # A stream whose end after the last </body> grows past the limit: given up, unchanged.
    chunks = [b"<html><body></body>", b"<!--" + b"y" * 3000, b"-->"]
    recorder, _ = respond(chunks, HTML, limit=1000)
    assert recorder.body() == b"".join(chunks)
    # A body longer than its Content-Length said, past the limit: unchanged too.
    recorder, _ = respond([b"<body>" + b"z" * 2000, b"</body>"], with_length(b"<body></body>"), limit=1000)
    assert recorder.body() == b"<body>" + b"z" * 2000 + b"</body>"


@pytest.mark.parametrize(
    ("status", "method", "headers"),
    [(200, "HEAD", HTML), (304, "GET", HTML), (204, "GET", HTML), (200, "GET", [*HTML, (b"content-encoding", b"br")])],
    ids=["head", "304", "204", "compressed"],
)
def test_middleware_leaves_alone(status: int, method: str, headers: list[tuple[bytes, bytes]]) -> None:
    recorder, _ = respond([PAGE], with_length(PAGE, headers), status=status, method=method)
    assert recorder.sent[0]["headers"] == with_length(PAGE, headers) and recorder.body() == PAGE


# ---- the event stream ------------------------------------------------------------------------------


class Site:
    """The app the tests serve: pages of one generation through the middleware (or the error page),
    and the hub's event stream at /__liveswap/events (liveswap serves it itself)."""

    def __init__(self, hub: RefreshHub) -> None:
        self.hub = hub
        self.page_gets = 0
        self.show(1)

    def show(self, generation: int) -> None:
        async def page(scope: Any, receive: Any, send: Any) -> None:
            body = f"<!doctype html><html><head><title>v{generation}</title></head><body><h1>version {generation}</h1>"
            body += "</body></html>"
            head = with_length(body.encode())
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": body.encode()})

        self.app: Any = RefreshMiddleware(page, generation=generation)

    def broken(self, failure: Failure) -> None:
        self.app = error_app(failure)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/__liveswap/"):
            await self.hub(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/":
            self.page_gets += 1
        await self.app(scope, receive, send)


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    hub = RefreshHub(generation=1, keepalive=0.5)
    site = Site(hub)
    with serve(site) as url:
        try:
            yield site, url
        finally:
            hub.close()  # ends the open streams, so the server stops at once


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(field, value) of each non-empty line of an SSE stream; a comment's field is ''."""
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            yield name, value.strip()


@pytest.mark.timeout(30)
def test_event_stream(site: tuple[Site, str]) -> None:
    sse, url = site
    hub = sse.hub
    failure = Failure("import", "Error importing \"app\": NameError: name 'x' is not defined")
    with httpx.Client(timeout=5) as client:
        assert client.get(url + "/__liveswap/other").status_code == 404
        assert client.post(url + EVENTS_PATH).status_code == 404
        with client.stream("GET", url + EVENTS_PATH) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"] == "text/event-stream"
            assert reply.headers["cache-control"] == "no-store"
            events = _events(reply.iter_lines())
            assert next(events) == ("retry", "1000")
            assert next(events) == ("event", "hello")
            name, data = next(events)
            hello = json.loads(data)
            assert name == "data" and hello["generation"] == 1 and hello["failed"] is False
            wait_until(lambda: hub.connections == 1, 5, "the stream to be subscribed")
            hub.reloaded(2)  # from this thread: the hub hands it to the server's loop
            assert next(events) == ("event", "reload")
            reload = json.loads(next(events)[1])
            assert reload["generation"] == 2 and reload["failed"] is False and reload["state"] != hello["state"]
            hub.failed(failure)
            assert next(events) == ("event", "error")
            error = json.loads(next(events)[1])
            assert error["failed"] is True and error["stage"] == "import" and error["error"] == failure.error
            assert next(events) == ("", "keep-alive")  # nothing happened for keepalive (0.5 s)
            hub.close()
            assert list(events) == []  # the stream ends
    wait_until(lambda: hub.connections == 0, 5, "the closed stream to be forgotten")


@pytest.mark.timeout(30)
def test_a_stream_is_forgotten_when_its_client_goes(site: tuple[Site, str]) -> None:
    sse, url = site
    with httpx.Client(timeout=5) as client, client.stream("GET", url + EVENTS_PATH) as reply:
        lines = reply.iter_lines()  # kept: a collected iterator closes the response
        assert next(lines) == "retry: 1000"
        wait_until(lambda: sse.hub.connections == 1, 5, "the stream to be subscribed")
    wait_until(lambda: sse.hub.connections == 0, 5, "the stream to be forgotten after the client left")


# ---- in a real browser -----------------------------------------------------------------------------

# The script has processed the hub's hello and decided not to reload: until an event, nothing will.
SETTLED = "window.__liveswap && window.__liveswap.hello && !window.__liveswap.reloading"


def _open(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    page.navigate(url + "/")
    page.wait_for(SETTLED)
    return page


def _real_failure(tmp_path: Path) -> Failure:
    """The failure of a module that raises with markup in its message, imported for real."""
    path = tmp_path / "broken_page_app.py"
    path.write_text("import os\n\nraise RuntimeError('<script>window.pwned = 1</script> database down')\n")
    spec = importlib.util.spec_from_file_location("broken_page_app", path)
    assert spec is not None and spec.loader is not None
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except RuntimeError as exc:
        return Failure.from_exception(exc, "import")
    raise AssertionError("the broken module imported")


@pytest.mark.timeout(60)
def test_browser_reloads_exactly_once_after_a_save(site: tuple[Site, str]) -> None:
    sse, url = site
    with Browser() as browser:
        page = _open(browser, url)
        assert page.evaluate("document.title") == "v1" and len(page.navigations()) == 1
        sse.show(2)
        sse.hub.reloaded(2)
        page.wait_for(f"document.title === 'v2' && {SETTLED}")
        assert page.navigations() == [url + "/", url + "/"], page.console()
        assert sse.page_gets == 2


@pytest.mark.timeout(60)
def test_browser_shows_the_error_page_then_returns_to_the_app(site: tuple[Site, str], tmp_path: Path) -> None:
    sse, url = site
    failure = _real_failure(tmp_path)
    with Browser() as browser:
        page = _open(browser, url)
        sse.broken(failure)
        sse.hub.failed(failure)
        page.wait_for(f"document.title.startsWith('import failed: RuntimeError') && {SETTLED}")
        assert len(page.navigations()) == 2, page.console()
        h1 = page.evaluate("document.querySelector('h1').textContent")
        assert h1 == "RuntimeError: <script>window.pwned = 1</script> database down"
        assert page.evaluate("typeof window.pwned") == "undefined" and page.evaluate("document.scripts.length") == 1
        last = "Array.from(document.querySelectorAll('.frame')).pop()"
        where = page.evaluate(f"{last}.querySelector('.where').textContent")
        assert where == f"{tmp_path / 'broken_page_app.py'}, line 3, in <module>"
        assert page.evaluate(f"{last}.querySelector('.at').textContent").startswith("3raise RuntimeError(")
        sse.show(3)
        sse.hub.reloaded(3)
        page.wait_for(f"document.title === 'v3' && {SETTLED}")
        assert len(page.navigations()) == 3, page.console()


@pytest.mark.timeout(60)
def test_a_page_that_comes_back_stale_stops_reloading(site: tuple[Site, str]) -> None:
    """A server that does not serve what the hub announces (generation 1 pages after reloaded(2)):
    two reloads, then the page stops and says why; never a loop."""
    sse, url = site
    with Browser() as browser:
        page = _open(browser, url)
        sse.hub.reloaded(2)
        page.wait_event("Runtime.consoleAPICalled", match=lambda e: "came back stale twice" in str(e["params"]["args"]))
        assert len(page.navigations()) == 3 and sse.page_gets == 3, page.console()


@pytest.mark.timeout(60)
def test_browser_does_not_reload_without_saves(site: tuple[Site, str]) -> None:
    sse, url = site
    with Browser() as browser:
        page = _open(browser, url)
        page.pump(10.0)  # the property under test: 10 s of keep-alives (every 0.5 s) and no save
        assert page.navigations() == [url + "/"] and sse.page_gets == 1, page.console()
        assert page.evaluate(SETTLED) is True and sse.hub.connections == 1

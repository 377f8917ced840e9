"""``liveswap dev`` with a WSGI app: served on the native WSGI path, the refresh script in its HTML
pages (dev/refresh_wsgi.py), the event stream beside it (an ASGI request on the same protocol),
saves that reload under load with nothing lost, and a real browser that follows."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from conftest import MakeDevInstance
from devproject import SETTLED
from devproject import reloaded as _reloaded
from devproject import save as _save
from devproject import views as _views
from loadclient import LoadClient

pytestmark = pytest.mark.timeout(120)

MAIN = """
import threading

from pkg.views import message


def app(environ, start_response):
    if environ["PATH_INFO"] == "/json":
        body, kind = b'{"ok": true}', "application/json"
    elif environ["PATH_INFO"] == "/where":  # the native path calls the app in the loop's thread
        body, kind = threading.current_thread().name.encode(), "text/plain"
    else:
        body, kind = f"<html><body><p>{message()}</p></body></html>".encode(), "text/html"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))), ("X-App-Version", message())])
    return [body]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "wsgiproject"
    (root / "pkg").mkdir(parents=True)
    _save(root / "main.py", MAIN)
    (root / "pkg" / "__init__.py").write_text("")
    _views(root, "v1")
    return root


def test_native_path_script_and_event_stream(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = liveswap_dev(project)
    assert httpx.get(inst.url + "/where", timeout=10).text == "MainThread"  # native, not a2wsgi's pool
    page = httpx.get(inst.url + "/", timeout=10)
    assert page.status_code == 200 and "/__liveswap/events" in page.text and "<p>v1</p>" in page.text
    assert int(page.headers["content-length"]) == len(page.content)
    assert "liveswap" not in httpx.get(inst.url + "/json", timeout=10).text
    # The event stream, on a keep-alive connection after a WSGI request: its hello names the generation.
    with socket.create_connection((inst.host, inst.port), timeout=10) as sock:
        head = f"host: {inst.host}\r\n\r\n"
        sock.sendall(f"GET /json HTTP/1.1\r\n{head}GET /__liveswap/events HTTP/1.1\r\n{head}".encode())
        seen = b""
        while b"event: hello" not in seen:
            chunk = sock.recv(65536)
            assert chunk, f"closed before the hello: {seen!r}"
            seen += chunk
    assert b'{"ok": true}' in seen and b"text/event-stream" in seen


def test_saves_under_load_lose_nothing(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = liveswap_dev(project)
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=3, timeout=15.0)
    lc.start()
    try:
        for i in range(8):
            mark = inst.mark()
            _views(project, f"v{i + 2}")
            assert "reload ok" in _reloaded(inst, mark)
        lc.wait_for(lambda r: "v9" in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert result.ok > 8, result.summary()


@pytest.mark.timeout(90)
def test_browser_follows_saves(liveswap_dev: MakeDevInstance, project: Path) -> None:
    from browser import Browser

    inst = liveswap_dev(project)
    with Browser() as browser:
        page = browser.new_page()
        page.navigate(inst.url + "/")
        page.wait_for(SETTLED)
        assert page.evaluate("document.querySelector('p').textContent") == "v1"
        _views(project, "v2")
        page.wait_for(f"document.querySelector('p') && document.querySelector('p').textContent === 'v2' && {SETTLED}")
        assert len(page.navigations()) == 2, page.console()  # exactly one reload
        _save(project / "pkg" / "views.py", "def message(:\n    return 'x'\n")
        page.wait_for(f"document.title.includes('SyntaxError') && {SETTLED}")
        _views(project, "v3")
        page.wait_for(f"document.querySelector('p') && document.querySelector('p').textContent === 'v3' && {SETTLED}")
        assert len(page.navigations()) == 4, page.console()

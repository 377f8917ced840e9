"""The error page of ``liveswap dev`` (dev/errorpage.py): hints from real broken modules, the JSON a
worker sends, the page escaped, the answer chosen by Accept, and never a wait for the request."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import serve

from liveswap.dev.errorpage import Failure, Frame, error_app, render_html, render_terminal

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"

# Run in a fresh interpreter, as a worker would: import the app, send the failure as JSON.
_WORKER = """
import sys
from liveswap.dev.errorpage import Failure
from liveswap.http.app import import_app
try:
    import_app(sys.argv[1], sys.argv[2])
except Exception as exc:
    print(Failure.from_exception(exc, "import").to_json())
else:
    print("imported")
"""


def broken(tmp_path: Path, files: dict[str, str], app: str) -> Failure:
    """Write ``files`` to ``tmp_path``, import ``app`` from there in a subprocess, return its Failure."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, app, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0 and out.stdout.strip() != "imported", out.stdout + out.stderr
    return Failure.from_json(out.stdout)


@pytest.mark.timeout(60)
def test_frames_carry_the_source_around_each_failing_line(tmp_path: Path) -> None:
    code = "x = 1\n\n\ndef g():\n    return undefined_name_q\n\n\napp = g()\n# after\n"
    failure = broken(tmp_path, {"nm.py": code}, "nm:app")
    assert failure.stage == "import" and failure.exception == "NameError"
    assert failure.error == "Error importing \"nm\": NameError: name 'undefined_name_q' is not defined"
    path = str(tmp_path / "nm.py")
    # Only the app's frames: no import machinery, no liveswap.
    assert [(f.file, f.line, f.function) for f in failure.frames] == [(path, 8, "<module>"), (path, 5, "g")]
    inner = failure.frames[1]
    assert inner.context == (
        (2, ""),
        (3, ""),
        (4, "def g():"),
        (5, "    return undefined_name_q"),
        (6, ""),
        (7, ""),
        (8, "app = g()"),
    )
    assert failure.frames[0].context[-1] == (9, "# after")
    assert f'File "{path}", line 5, in g' in failure.traceback
    assert failure.traceback.rstrip().endswith("NameError: name 'undefined_name_q' is not defined")
    assert failure.hints == ()


@pytest.mark.timeout(60)
def test_a_module_not_installed_names_the_interpreter_and_pip_install(tmp_path: Path) -> None:
    failure = broken(tmp_path, {"miss.py": "import os\nimport not_installed_pkg_xyz\napp = 1\n"}, "miss:app")
    assert failure.exception == "ModuleNotFoundError"
    [hint] = failure.hints
    assert f"active environment ({sys.executable})" in hint
    assert f"{sys.executable} -m pip install not_installed_pkg_xyz" in hint
    assert failure.frames[-1].line == 2 and failure.frames[-1].context[1] == (2, "import not_installed_pkg_xyz")
    # Where the import name is not the distribution's name, the hint says the distribution's.
    assert importlib.util.find_spec("bs4") is None, "this test needs bs4 (beautifulsoup4) not to be installed"
    [hint] = broken(tmp_path, {"soup.py": "from bs4 import BeautifulSoup\n"}, "soup:app").hints
    assert hint.endswith("-m pip install beautifulsoup4")


@pytest.mark.timeout(60)
def test_a_missing_submodule_of_an_installed_package_is_not_a_pip_install(tmp_path: Path) -> None:
    [hint] = broken(tmp_path, {"sub.py": "import json.nothere\n"}, "sub:app").hints
    assert hint.startswith('the package "json" has no module "nothere"')
    assert "pip" not in hint


@pytest.mark.timeout(60)
def test_the_hint_of_app_load_error_is_kept(tmp_path: Path) -> None:
    """The app's own module missing: AppLoadError's hint says where liveswap looked (not pip)."""
    failure = broken(tmp_path, {}, "nothere_app:app")
    assert failure.error == 'Could not import module "nothere_app".'
    [hint] = failure.hints
    assert hint.startswith("looked for nothere_app.py and nothere_app/ in ") and "pip" not in hint
    failure = broken(tmp_path, {"plain.py": "def create():\n    pass\n"}, "plain:app")
    assert failure.error == 'Attribute "app" not found in module "plain".'
    assert failure.hints == ("names in plain: create",) and failure.traceback == ""


@pytest.mark.timeout(60)
def test_a_circular_import_is_named_with_both_modules(tmp_path: Path) -> None:
    files = {"cyc_a.py": "import cyc_b\n\nthing = 1\napp = 2\n", "cyc_b.py": "from cyc_a import thing\n"}
    failure = broken(tmp_path, files, "cyc_a:app")
    assert "partially initialized module 'cyc_a'" in failure.error
    [hint] = failure.hints
    assert hint.startswith('circular import: "cyc_b" imports from "cyc_a" while "cyc_a" is still being initialized')
    assert "import cyc_a" in hint
    assert [(Path(f.file).name, f.line) for f in failure.frames] == [("cyc_a.py", 1), ("cyc_b.py", 1)]


@pytest.mark.timeout(60)
def test_a_syntax_error_shows_file_line_source_and_caret(tmp_path: Path) -> None:
    failure = broken(tmp_path, {"bad.py": "import os\n\n\ndef f(:\n    pass\n"}, "bad:app")
    path = str(tmp_path / "bad.py")
    assert failure.exception == "SyntaxError"
    [hint] = failure.hints
    head, source, caret = hint.splitlines()
    assert head == f"SyntaxError in {path}, line 4:"
    assert source.strip() == "def f(:" and caret.strip() == "^"
    assert caret.index("^") == source.index(":")  # under the colon, as Python points
    # The page shows the lines around it, read from the file.
    [frame] = failure.frames
    assert (
        (frame.file, frame.line) == (path, 4) and (4, "def f(:") in frame.context and (1, "import os") in frame.context
    )
    [hint] = broken(tmp_path, {"ind.py": "def f():\nreturn 1\n"}, "ind:app").hints
    assert hint.splitlines()[0] == f"IndentationError in {tmp_path / 'ind.py'}, line 2:"
    assert hint.splitlines()[1].strip() == "return 1"


@pytest.mark.timeout(30)
def test_json_round_trip_and_malformed_input() -> None:
    failure = Failure(
        "startup",
        "lifespan startup failed: RuntimeError: db down",
        "RuntimeError",
        (Frame("/srv/app.py", 3, "startup", ((2, "async def startup():"), (3, "    raise RuntimeError('db down')"))),),
        "Traceback ...\nRuntimeError: db down",
        ("is the database running?",),
    )
    text = failure.to_json()
    assert "\n" not in text
    assert json.loads(text)["frames"][0] == {
        "file": "/srv/app.py",
        "line": 3,
        "function": "startup",
        "context": [[2, "async def startup():"], [3, "    raise RuntimeError('db down')"]],
    }
    assert Failure.from_json(text) == failure
    assert Failure.from_json(text.encode()) == failure
    assert Failure.from_json('{"stage": "health", "error": "GET / answered 500"}') == Failure(
        "health", "GET / answered 500"
    )
    for bad in ("not json", "[]", "{}", '{"stage": "lunch", "error": "x"}', '{"stage": "build", "error": 3}'):
        with pytest.raises(ValueError, match="not a liveswap failure"):
            Failure.from_json(bad)


EVIL = "<script>window.pwned = 1</script>"


def _evil_failure() -> Failure:
    return Failure(
        "import",
        f"RuntimeError: {EVIL}",
        "RuntimeError",
        (Frame(f"/srv/{EVIL}.py", 2, f"<{EVIL}>", ((1, "x = 1"), (2, f"raise RuntimeError('{EVIL}')"))),),
        f"RuntimeError: {EVIL}",
        (f"hint {EVIL}",),
    )


def test_html_is_escaped() -> None:
    page = render_html(_evil_failure(), nonce="n0nce")
    assert EVIL not in page and "window.pwned" in page
    assert page.count("<script") == 1  # the refresh script only
    assert '<script data-liveswap-refresh data-events="/__liveswap/events" data-failed nonce="n0nce">' in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page
    assert "<script" not in render_html(_evil_failure(), refresh=False)


def test_terminal_is_lrt_style() -> None:
    failure = Failure(
        "import",
        "Error importing \"myapp\": NameError: name 'FastAPi' is not defined",
        traceback='  File "/srv/myapp.py", line 3, in <module>\n'
        "    app = FastAPi()\n"
        "NameError: name 'FastAPi' is not defined\n",
        hints=("first line\nsecond line", "another"),
    )
    assert render_terminal(failure).splitlines() == [
        "liveswap: error: import failed: Error importing \"myapp\": NameError: name 'FastAPi' is not defined",
        '  File "/srv/myapp.py", line 3, in <module>',
        "    app = FastAPi()",
        "NameError: name 'FastAPi' is not defined",
        "     hint: first line",
        "           second line",
        "     hint: another",
    ]
    # Frames without text (a Failure made by hand): the frames, as Python prints them.
    frames_only = Failure("health", "GET / answered 500", frames=_evil_failure().frames)
    assert render_terminal(frames_only).splitlines()[1:] == [
        f'  File "/srv/{EVIL}.py", line 2, in <{EVIL}>',
        f"    raise RuntimeError('{EVIL}')",
    ]


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()  # the request body never comes: the answer must not wait for it
    return {}


async def _ask(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await asyncio.wait_for(app(scope, _never, send), 2)
    return sent


def _get(app: Any, accept: str | None) -> tuple[int, dict[bytes, bytes], bytes]:
    headers = [] if accept is None else [(b"accept", accept.encode())]
    scope = {"type": "http", "method": "POST", "path": "/any/path", "headers": headers}
    start, body = asyncio.run(_ask(app, scope))
    head = dict(start["headers"])
    assert int(head[b"content-length"]) == len(body["body"])
    return start["status"], head, body["body"]


@pytest.mark.timeout(30)
def test_error_app_answers_by_accept_at_once_with_500() -> None:
    failure = _evil_failure()
    app = error_app(failure)
    status, head, body = _get(app, BROWSER_ACCEPT)
    assert status == 500 and head[b"content-type"] == b"text/html; charset=utf-8"
    assert head[b"cache-control"] == b"no-store"
    nonce = head[b"content-security-policy"].decode().split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"'.encode() in body and EVIL.encode() not in body
    assert _get(app, BROWSER_ACCEPT)[1][b"content-security-policy"] != head[b"content-security-policy"]

    status, head, body = _get(app, "application/json")
    assert status == 500 and head[b"content-type"] == b"application/json"
    assert Failure.from_json(body) == failure

    for accept in (None, "*/*", "text/plain", "text/*", "application/json;q=0"):
        status, head, body = _get(app, accept)
        assert (status, head[b"content-type"]) == (500, b"text/plain; charset=utf-8"), accept
        assert body.decode() == render_terminal(failure) + "\n"
    assert _get(app, "application/json;q=0.5, text/html")[1][b"content-type"].startswith(b"text/html")
    assert _get(app, "text/html;q=0.2, application/problem+json")[1][b"content-type"] == b"application/json"
    assert b"<script" not in _get(error_app(failure, refresh=False), BROWSER_ACCEPT)[2]


@pytest.mark.timeout(30)
def test_error_app_lifespan_and_websocket() -> None:
    app = error_app(Failure("build", "make: *** [all] Error 2"))

    async def lifespan() -> list[dict[str, Any]]:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 2)
        return sent

    assert [m["type"] for m in asyncio.run(lifespan())] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    [close] = asyncio.run(_ask(app, {"type": "websocket", "path": "/ws", "headers": []}))
    assert close["type"] == "websocket.close" and close["code"] == 1011


@pytest.mark.timeout(30)
def test_error_app_over_http_never_waits_for_the_request() -> None:
    failure = Failure("import", "Error importing \"myapp\": NameError: name 'x' is not defined")
    with serve(error_app(failure)) as url:
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            # A body announced and never sent: the answer comes anyway, at once.
            conn.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
            t0 = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = conn.recv(65536)
                assert chunk, f"connection closed before an answer: {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 500 ") and time.monotonic() - t0 < 2
        reply = httpx.get(url + "/x", headers={"accept": "application/json"}, timeout=5)
        assert reply.status_code == 500 and Failure.from_json(reply.content) == failure
        reply = httpx.get(url, timeout=5)
        assert reply.status_code == 500 and reply.text.startswith("liveswap: error: import failed: Error importing")

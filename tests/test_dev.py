"""``liveswap dev``: a save reloads, a broken save shows an error page, nothing is lost.

Real project files in tmp_path, real inotify, a real ``liveswap dev`` process. Every reload is
waited for by its log line ("reload ok: generation N" / "serves the error page"), with a deadline.
"""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import Instance, MakeDevInstance
from devproject import SETTLED
from devproject import reloaded as _reloaded
from devproject import save as _save
from devproject import views as _views
from loadclient import LoadClient

pytestmark = pytest.mark.timeout(120)

MAIN = """
from pkg.views import message


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/json":
        body, kind = b'{"ok": true}', b"application/json"
    else:
        body, kind = f"<html><body><p>{message()}</p></body></html>".encode(), b"text/html"
    length = str(len(body)).encode()
    headers = [(b"content-type", kind), (b"content-length", length), (b"x-app-version", message().encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    _save(root / "main.py", MAIN)
    (root / "pkg" / "__init__.py").write_text("")
    _views(root, "v1")
    (root / "notes.txt").write_text("notes\n")
    (root / "unused.py").write_text("X = 1\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "thing.py").write_text("Y = 1\n")
    return root


def _version(inst: Instance) -> str:
    r = httpx.get(inst.url + "/", timeout=10, headers={"connection": "close"})
    return str(r.headers.get("x-app-version", f"status {r.status_code}"))


def test_a_save_of_an_imported_module_in_a_subpackage_reloads(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = liveswap_dev(project)
    assert _version(inst) == "v1"
    mark = inst.mark()
    _views(project, "v2")
    assert "reload ok" in _reloaded(inst, mark)
    assert _version(inst) == "v2"
    assert "saved: pkg/views.py" in inst.output_since(mark)


def test_unimported_files_text_files_and_venv_do_not_reload(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = liveswap_dev(project)
    mark = inst.mark()
    (project / "unused.py").write_text("X = 2\n")
    (project / "notes.txt").write_text("more notes\n")
    (project / ".venv" / "lib" / "thing.py").write_text("Y = 2\n")
    _views(project, "v2")  # the sentinel: the only save that counts
    assert "reload ok" in _reloaded(inst, mark)
    saved = [line for line in inst.output_since(mark).splitlines() if "saved:" in line]
    assert len(saved) == 1 and saved[0].endswith("saved: pkg/views.py"), saved


def test_same_content_does_nothing_and_two_saves_in_one_second_both_count(
    liveswap_dev: MakeDevInstance, project: Path
) -> None:
    inst = liveswap_dev(project)
    mark = inst.mark()
    _views(project, "v1")  # unchanged content: no reload
    (project / "pkg" / "__init__.py").write_text("# the sentinel\n")
    assert "reload ok" in _reloaded(inst, mark)
    saved = [line.rpartition("saved: ")[2] for line in inst.output_since(mark).splitlines() if "saved:" in line]
    assert saved == ["pkg/__init__.py"], saved
    for version in ("v2", "v3"):  # the same size, one right after the other: within a second
        mark = inst.mark()
        _views(project, version)
        assert "reload ok" in _reloaded(inst, mark)
        assert _version(inst) == version, "a same-size save within the same second served stale bytecode"


def test_broken_save_shows_the_error_page_and_the_fix_brings_the_app_back(
    liveswap_dev: MakeDevInstance, project: Path
) -> None:
    inst = liveswap_dev(project)
    mark = inst.mark()
    _save(project / "pkg" / "views.py", "def message(:\n    return 'x'\n")
    assert "error page" in _reloaded(inst, mark)
    html = httpx.get(inst.url + "/", timeout=10, headers={"accept": "text/html"})
    assert html.status_code == 500 and "text/html" in html.headers["content-type"]
    assert "SyntaxError" in html.text and "views.py" in html.text and "def message(:" in html.text
    assert "/__liveswap/events" in html.text  # the page follows the next save by itself
    js = httpx.get(inst.url + "/", timeout=10, headers={"accept": "application/json"})
    assert js.status_code == 500 and js.json()["exception"] == "SyntaxError"
    text = httpx.get(inst.url + "/", timeout=10, headers={"accept": "*/*"})
    assert text.status_code == 500 and text.headers["content-type"].startswith("text/plain")
    log = inst.output_since(mark)
    assert "hint:" in log and "internal error" not in log
    mark = inst.mark()
    _views(project, "fixed")
    assert "reload ok" in _reloaded(inst, mark)
    assert _version(inst) == "fixed"


def test_a_project_broken_at_start_serves_the_error_page_until_fixed(
    liveswap_dev: MakeDevInstance, project: Path
) -> None:
    _save(project / "pkg" / "views.py", "import not_installed_anywhere\n\ndef message():\n    return 'x'\n")
    inst = liveswap_dev(project)
    r = httpx.get(inst.url + "/", timeout=10, headers={"accept": "application/json"})
    assert r.status_code == 500 and "not_installed_anywhere" in r.json()["error"]
    mark = inst.mark()
    _views(project, "works")
    assert "reload ok" in _reloaded(inst, mark)
    assert _version(inst) == "works"


def test_html_pages_get_the_refresh_script_and_other_responses_do_not(
    liveswap_dev: MakeDevInstance, project: Path
) -> None:
    inst = liveswap_dev(project)
    page = httpx.get(inst.url + "/", timeout=10)
    assert page.status_code == 200 and "/__liveswap/events" in page.text
    assert int(page.headers["content-length"]) == len(page.content)
    assert "liveswap" not in httpx.get(inst.url + "/json", timeout=10).text
    off = liveswap_dev(project, args=["--no-browser-reload"])
    assert "/__liveswap/events" not in httpx.get(off.url + "/", timeout=10).text


@pytest.mark.timeout(240)
def test_saves_at_random_intervals_under_load_lose_no_request(liveswap_dev: MakeDevInstance, project: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    inst = liveswap_dev(project)
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=3, timeout=15.0)
    lc.start()
    try:
        for i in range(50):
            mark = inst.mark()
            kind = rng.choice(["good", "good", "broken"])
            if kind == "broken":
                _save(project / "pkg" / "views.py", f"def message(:  # {i}\n")
            else:
                _views(project, f"v{i}")
            outcome = _reloaded(inst, mark)
            assert ("error page" in outcome) == (kind == "broken"), (kind, outcome)
        _views(project, "last")
    finally:
        result = lc.stop()
    # While the code is broken every answer is the error page's 500, by design; anything else
    # (a reset, a connection closed before its answer, a timeout) is a lost request.
    lost = {k: v for k, v in result.failures.items() if v and k != "http_5xx"}
    assert not lost, result.summary()
    assert result.ok > 50, result.summary()


# ---- the browser follows: headless Chromium over the DevTools protocol -------------------------------


@pytest.mark.timeout(90)
def test_browser_reloads_once_per_save_shows_the_error_page_and_returns(
    liveswap_dev: MakeDevInstance, project: Path
) -> None:
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
        assert len(page.navigations()) == 3, page.console()
        _views(project, "v3")
        page.wait_for(f"document.querySelector('p') && document.querySelector('p').textContent === 'v3' && {SETTLED}")
        assert len(page.navigations()) == 4, page.console()
        page.pump(10.0)  # the property under test: 10 s without a save, and no reload
        assert len(page.navigations()) == 4, page.console()


# ---- the template learns what to preload ------------------------------------------------------------


def test_the_template_learns_the_apps_libraries_and_keeps_out_one_that_starts_a_thread(
    liveswap_dev: MakeDevInstance, project: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    (lib / "heavylib").mkdir(parents=True)
    (lib / "heavylib" / "__init__.py").write_text("import time\n\ntime.sleep(0.6)  # a big library's import\n")
    (lib / "threadlib").mkdir()
    (lib / "threadlib" / "__init__.py").write_text(
        "import threading, time\n\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True, name='bg').start()\n"
    )
    _save(project / "main.py", "import heavylib\nimport threadlib\n" + textwrap.dedent(MAIN))
    inst = liveswap_dev(project, env={"PYTHONPATH": str(lib)})
    first = inst.wait_for(r"gen=1 INFO ready in [\d.]+ ms \(asgi app imported in ([\d.]+) ms\)")
    assert float(first.group(1)) >= 600, "the library's import time is paid once"
    inst.wait_for(r"template: not preloading threadlib: starts a thread at import \(bg\)")
    inst.wait_for(r"template: learned to preload \d+ module\(s\) the app uses \(.*heavylib")
    mark = inst.mark()
    _views(project, "v2")
    assert "reload ok" in _reloaded(inst, mark)
    boot = inst.wait_for(r"gen=\d+ INFO ready in [\d.]+ ms \(asgi app imported in ([\d.]+) ms\)", start=mark)
    assert float(boot.group(1)) < 400, f"heavylib was imported again: {boot.group(0)}"
    assert _version(inst) == "v2"
    assert "Unknown child process" not in inst.output()

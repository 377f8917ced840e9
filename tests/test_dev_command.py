"""``liveswap dev -- COMMAND``: any server, restarted on every save in its project, behind the proxy
(lrt's way): a build that fails or a server that exits shows its output on the error page until the
next save; nothing is dropped meanwhile.

Real processes: ``liveswap dev`` with a stdlib $PORT server and a shell ``--build``; synchronised on
what liveswap logs and answers, never on sleeps.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from conftest import APPS, Instance, MakeDevInstance, wait_until
from loadclient import LoadClient

pytestmark = pytest.mark.timeout(90)

BUILD = "if grep -q broken {v}; then echo 'main.go:3: syntax error: unexpected )' >&2; exit 2; fi; cp {v} {out}"


def _save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dev(liveswap_dev: MakeDevInstance, project: Path, build: bool) -> Instance:
    served = project / "build" / "served.txt" if build else project / "version.txt"
    args = ["--bind", "127.0.0.1:0"]
    if build:
        args += ["--build", BUILD.format(v=project / "version.txt", out=served)]
    args += ["--", sys.executable, str(APPS / "dev_port_server.py"), str(served)]
    return liveswap_dev(project, app="", args=args)


def _serves(inst: Instance, text: str) -> bool:
    return _text(inst) == text


def _text(inst: Instance) -> str:
    return httpx.get(inst.url, headers={"accept": "text/plain"}, timeout=10).text


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "build").mkdir(parents=True)
    (root / "version.txt").write_text("1\n")
    return root


@pytest.mark.parametrize("build", [False, True])
def test_save_restarts_the_server_with_no_request_lost(
    liveswap_dev: MakeDevInstance, project: Path, build: bool
) -> None:
    inst = _dev(liveswap_dev, project, build)
    assert _text(inst) == "version=1\n"
    load = LoadClient(inst.host, inst.port, mode="keepalive", concurrency=3)
    load.start()
    try:
        for i in range(2, 6):
            _save(project / "version.txt", f"{i}\n")
            wait_until(functools.partial(_serves, inst, f"version={i}\n"), 30, f"version {i} to serve")
        result = load.stop()
    finally:
        load.stop()
    assert result.failed == 0, result.summary()


def test_a_failed_build_shows_its_output_until_the_next_save(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = _dev(liveswap_dev, project, build=True)
    mark = inst.mark()
    _save(project / "version.txt", "2 broken\n")
    inst.wait_for("serves the error page until the next save", timeout=30, start=mark)
    page = httpx.get(inst.url, headers={"accept": "text/plain"}, timeout=10)
    assert page.status_code == 500
    assert "exited with status 2" in page.text and "main.go:3: syntax error: unexpected )" in page.text, page.text
    html = httpx.get(inst.url, headers={"accept": "text/html"}, timeout=10)
    assert html.status_code == 500 and "syntax error" in html.text and "<html" in html.text.lower()
    mark = inst.mark()
    _save(project / "version.txt", "3\n")
    inst.wait_for(r"reload ok: generation \d+ live", timeout=30, start=mark)
    assert _text(inst) == "version=3\n"


def test_a_server_that_exits_shows_its_last_words(liveswap_dev: MakeDevInstance, project: Path) -> None:
    script = project / "server.py"
    script.write_text(
        f"import runpy, sys\nsys.argv[1:] = [{str(project / 'version.txt')!r}]\n"
        f"runpy.run_path({str(APPS / 'dev_port_server.py')!r}, run_name='__main__')\n"
    )
    inst = liveswap_dev(project, app="", args=["--bind", "127.0.0.1:0", "--", sys.executable, str(script)])
    assert _text(inst) == "version=1\n"
    mark = inst.mark()
    _save(script, "raise SystemExit('cannot read the config: DATABASE_URL is not set')\n")
    inst.wait_for("serves the error page until the next save", timeout=30, start=mark)
    page = _text(inst)
    assert "exited before it was ready" in page and "DATABASE_URL is not set" in page, page


def test_build_output_and_executable_are_not_watched(liveswap_dev: MakeDevInstance, project: Path) -> None:
    inst = _dev(liveswap_dev, project, build=True)
    mark = inst.mark()
    (project / "build" / "other.txt").write_text("written by a build\n")  # build/ is not source
    _save(project / "version.txt", "2\n")
    inst.wait_for(r"reload ok: generation \d+ live", timeout=30, start=mark)
    # Exactly one reload: the build's own output (build/served.txt) started none.
    wait_until(lambda: _text(inst) == "version=2\n", 10, "the new version")
    assert len([x for x in inst.output_since(mark).splitlines() if "reload requested" in x]) == 1, inst.output()


def test_a_server_on_a_fixed_port_with_upstream(liveswap_dev: MakeDevInstance, project: Path) -> None:
    """A server that ignores $PORT and listens on a fixed one (--upstream): on each save the old copy
    finishes and exits before the new one starts on that port; requests wait meanwhile, none fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        fixed = probe.getsockname()[1]
    server = f"PORT={fixed} exec {sys.executable} {APPS / 'dev_port_server.py'} {project / 'version.txt'}"
    args = ["--bind", "127.0.0.1:0", "--upstream", f"127.0.0.1:{fixed}", "--", "/bin/sh", "-c", server]
    inst = liveswap_dev(project, app="", args=args)
    assert _text(inst) == "version=1\n"
    load = LoadClient(inst.host, inst.port, mode="keepalive", concurrency=2)
    load.start()
    try:
        for i in (2, 3):
            _save(project / "version.txt", f"{i}\n")
            wait_until(functools.partial(_serves, inst, f"version={i}\n"), 30, f"version {i} to serve")
        result = load.stop()
    finally:
        load.stop()
    assert result.failed == 0, result.summary()


def test_a_server_that_ignores_port_gets_lrts_hint(liveswap_dev: MakeDevInstance, project: Path) -> None:
    ignores = "import time; print('listening on 127.0.0.1:9', flush=True); time.sleep(60)"
    args = ["--bind", "127.0.0.1:0", "--boot-timeout", "1s", "--", sys.executable, "-c", ignores]
    inst = liveswap_dev(project, app="", args=args)
    inst.wait_for("serves the error page until the next save", timeout=30)
    page = _text(inst)
    assert "was not ready and healthy within 1 s" in page, page
    assert "ensure it listens on $PORT" in page, page

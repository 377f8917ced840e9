"""Behind a proxy: --proxy-headers/--no-proxy-headers, --forwarded-allow-ips, --root-path,
--server-header/--no-server-header, --date-header/--no-date-header, with uvicorn's meanings. Each is
checked on a real `liveswap run` (and `serve()`) answering real requests over loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import APPS, MakeDevInstance, MakeInstance

from liveswap.config import load_settings
from liveswap.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def scope_of(url: str, path: str = "/x") -> tuple[dict[str, Any], httpx.Response]:
    r = httpx.get(url + path, headers=FORWARDED, timeout=10)
    assert r.status_code == 200, r.text
    return json.loads(r.text), r


def test_defaults_trust_forwarded_headers_from_loopback_and_send_server_and_date(liveswap: MakeInstance) -> None:
    inst = liveswap(app="scope_echo:app")
    scope, r = scope_of(inst.url)
    assert scope["client"] == ["203.0.113.7", 0] and scope["scheme"] == "https"
    assert scope["root_path"] == "" and scope["path"] == "/x"
    assert r.headers["server"] == "uvicorn"
    assert re.match(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$", r.headers["date"])


def test_forwarded_headers_ignored_from_peers_not_allowed(liveswap: MakeInstance) -> None:
    flag = liveswap(app="scope_echo:app", args=["--forwarded-allow-ips", "10.0.0.0/8,192.0.2.1"])
    env = liveswap(app="scope_echo:app", env={"FORWARDED_ALLOW_IPS": "10.1.2.3"})  # uvicorn's variable
    star = liveswap(app="scope_echo:app", env={"LIVESWAP_FORWARDED_ALLOW_IPS": "*", "FORWARDED_ALLOW_IPS": "10.1.2.3"})
    for inst in (flag, env):
        scope, _ = scope_of(inst.url)
        assert scope["client"][0] == "127.0.0.1" and scope["scheme"] == "http", scope
    scope, _ = scope_of(star.url)  # ours wins over uvicorn's variable
    assert scope["client"] == ["203.0.113.7", 0] and scope["scheme"] == "https"


def test_no_proxy_headers_root_path_no_server_no_date(liveswap: MakeInstance) -> None:
    inst = liveswap(
        app="scope_echo:app",
        args=["--no-proxy-headers", "--root-path", "/api", "--no-server-header", "--no-date-header"],
    )
    scope, r = scope_of(inst.url)
    assert scope["client"][0] == "127.0.0.1" and scope["scheme"] == "http"
    assert scope["root_path"] == "/api" and scope["path"] == "/api/x"  # uvicorn's: path includes root_path
    assert "server" not in r.headers and "date" not in r.headers


def test_dev_takes_the_same_options(liveswap_dev: MakeDevInstance, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text((APPS / "scope_echo.py").read_text())
    inst = liveswap_dev(project, args=["--no-proxy-headers", "--root-path", "/api", "--no-server-header"])
    scope, r = scope_of(inst.url)
    assert scope["client"][0] == "127.0.0.1" and scope["root_path"] == "/api" and scope["path"] == "/api/x"
    assert "server" not in r.headers and "date" in r.headers


def test_serve_takes_the_same_options(tmp_path: Any) -> None:
    options = {"proxy_headers": False, "root_path": "/api", "server_header": False, "date_header": False}
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "scope_echo.py")],
        env=dict(os.environ, SERVE_OPTIONS=json.dumps(options), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the readiness line; a dead process ends the loop
            m = re.search(r"serving \w+ app on (http://\S+)", line)
            if m:
                break
        else:
            raise AssertionError("serve() never said it was serving")
        scope, r = scope_of(m.group(1))
        assert scope["client"][0] == "127.0.0.1" and scope["root_path"] == "/api"
        assert "server" not in r.headers and "date" not in r.headers
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--forwarded-allow-ips", "10.0.0.300"], "'10.0.0.300' is not an IP address or network"),
        (["--forwarded-allow-ips", "10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or network"),
        (["--root-path", "api"], "'api' is not a path prefix"),
        (["--root-path", "/api/"], "'/api/' is not a path prefix"),
    ],
)
def test_bad_values_are_refused_with_a_hint(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "scope_echo:app", "--app-dir", str(APPS), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "hint:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        (None, {}, True),
        (None, {"LIVESWAP_PROXY_HEADERS": "false"}, False),
        (True, {"LIVESWAP_PROXY_HEADERS": "false"}, True),  # --proxy-headers wins over the environment
        (False, {"LIVESWAP_PROXY_HEADERS": "true"}, False),  # and so does --no-proxy-headers
    ],
)
def test_a_switch_that_is_on_by_default_can_be_turned_off_and_on(
    tmp_path: Path, cli: bool | None, env: dict[str, str], expected: bool
) -> None:
    settings = load_settings("scope_echo:app", {"proxy_headers": cli}, environ=env, cwd=tmp_path)
    assert settings.proxy_headers is expected


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"root_path": "/api"}, "--root-path"),
        ({"forwarded_allow_ips": "*"}, "--forwarded-allow-ips"),
        ({"proxy_headers": False}, "--no-proxy-headers"),
        ({"server_header": False}, "--no-server-header"),
        ({"date_header": False}, "--no-date-header"),
    ],
)
def test_command_mode_refuses_what_only_python_workers_do(tmp_path: Path, options: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag} is for Python apps") as info:
        load_settings("", options, environ={}, cwd=tmp_path, command=["gunicorn", "app:app"])
    assert info.value.hint and "after the --" in info.value.hint
    load_settings("", {}, environ={}, cwd=tmp_path, command=["gunicorn", "app:app"])  # the defaults are fine

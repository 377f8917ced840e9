"""`liveswap.serve()`: safe defaults, the debug server, Group, socket activation. Real processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest
from conftest import APPS

pytestmark = pytest.mark.timeout(60)

SCRIPT = APPS / "serve_script.py"


class Served:
    def __init__(self, env: dict[str, str], args: list[str], wrap: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, str(SCRIPT), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if m := rx.search(line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.pump.is_alive()):
                    raise AssertionError(f"no {pattern!r} in output:\n" + "\n".join(self.lines))
                self.cond.wait(min(left, 0.5))

    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.pump.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class MakeServed(Protocol):
    """The ``served`` fixture: runs tests/apps/serve_script.py; returns it, its URL and its debug URL ("" if off)."""

    def __call__(
        self, env: dict[str, str] | None = None, args: list[str] | None = None, wrap: list[str] | None = None
    ) -> tuple[Served, str, str]: ...


@pytest.fixture
def served() -> Iterator[MakeServed]:
    started: list[Served] = []

    def make(
        env: dict[str, str] | None = None, args: list[str] | None = None, wrap: list[str] | None = None
    ) -> tuple[Served, str, str]:
        s = Served(env or {}, args or [], wrap)
        started.append(s)
        url = "http://" + s.wait_for(r"serving \w+ app on http://(\S+)").group(1)
        debug = (
            "http://" + s.wait_for(r"debug server on http://(\S+?)/").group(1)
            if "SERVE_DEBUG" not in (env or {})
            else ""
        )
        return s, url, debug

    yield make
    for s in started:
        s.close()


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_drains_in_flight_request_on_sigterm_and_returns(served: MakeServed) -> None:
    s, url, _ = served()
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.get(url + "/slow?s=1", timeout=10)))
    t.start()
    s.wait_for("slow started")
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(20) == 0
    t.join(10)
    assert result and result[0].status_code == 200 and result[0].text == "/slow done\n"
    assert "serve returned" in s.output()


def test_slow_header_client_is_cut_off_while_others_are_served(served: MakeServed) -> None:
    s, url, _ = served(env={"SERVE_HEADER_TIMEOUT": "1"})
    slow = socket.create_connection(_addr(url), timeout=10)
    try:
        slow.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        answered = 0
        # Keep trickling a header every 0.2 s; meanwhile other clients are served normally.
        data = b""
        while time.monotonic() - started < 8:
            try:
                slow.sendall(b"x-trickle: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            assert httpx.get(url + "/ok", timeout=5).status_code == 200
            answered += 1
            slow.settimeout(0.2)
            try:
                chunk = slow.recv(4096)
            except TimeoutError:
                continue
            data += chunk
            if not chunk or b"408" in data:
                break
        elapsed = time.monotonic() - started
    finally:
        slow.close()
    assert b"408 Request Timeout" in data, data
    assert 0.8 < elapsed < 4, elapsed
    assert answered >= 3


def test_oversized_headers_get_431(served: MakeServed) -> None:
    _, url, _ = served()
    r = httpx.get(url + "/", headers={"x-big": "a" * 70_000}, timeout=10)
    assert r.status_code == 431
    assert httpx.get(url + "/", headers={"x-fine": "a" * 10_000}, timeout=10).status_code == 200


def test_wsgi_app(served: MakeServed) -> None:
    _, url, _ = served(env={"SERVE_MODE": "wsgi"})
    assert httpx.get(url + "/", timeout=10).text == "wsgi ok\n"


def test_debug_stacks_show_where_a_request_is_blocked(served: MakeServed) -> None:
    s, url, debug = served()
    t = threading.Thread(target=lambda: httpx.get(url + "/block?s=3", timeout=20))
    t.start()
    s.wait_for("block started")
    stacks = httpx.get(debug + "/stacks", timeout=10)  # answers although the app's loop is blocked
    assert stacks.status_code == 200
    assert "blocked_in_known_function_xyz" in stacks.text
    t.join(20)


def test_debug_profile_shows_spinning_function(served: MakeServed) -> None:
    s, url, debug = served()
    t = threading.Thread(target=lambda: httpx.get(url + "/spin?s=3", timeout=20))
    t.start()
    s.wait_for("spin started")
    collapsed = httpx.get(debug + "/profile?seconds=1&format=collapsed", timeout=20)
    assert collapsed.status_code == 200 and "spin_known_function_abc" in collapsed.text
    t.join(20)
    # The SVG flame graph and the speedscope download work too.
    t2 = threading.Thread(target=lambda: httpx.get(url + "/spin?s=2", timeout=20))
    t2.start()
    svg = httpx.get(debug + "/profile?seconds=1", timeout=20)
    assert svg.headers["content-type"].startswith("image/svg+xml") and "<svg" in svg.text
    t2.join(20)


def test_debug_metrics_count_requests(served: MakeServed) -> None:
    _, url, debug = served()
    for _ in range(7):
        assert httpx.get(url + "/ok", timeout=10).status_code == 200
    text = httpx.get(debug + "/metrics", timeout=10).text
    m = re.search(r'^liveswap_http_requests_total\{[^}]*status="2xx"[^}]*\} (\d+)', text, re.M)
    assert m and int(m.group(1)) == 7, text
    assert "liveswap_http_request_duration_seconds_bucket" in text


def test_group_member_failure_stops_server_and_surfaces(served: MakeServed) -> None:
    s, url, _ = served(env={"SERVE_MODE": "group-fail"})
    assert httpx.get(url + "/fail-member", timeout=10).status_code == 200
    code = s.proc.wait(20)
    assert code == 1
    out = s.output()
    assert "RuntimeError: member failed on purpose" in out and "Traceback" in out
    assert "stopped" in out


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate")
def test_socket_activation_and_ready_notification(served: MakeServed, tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify_path)
    rx.settimeout(20)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        wrap = [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "-E",
            "NOTIFY_SOCKET",
            "-E",
            "PYTHONPATH",
            "-E",
            "SERVE_DEBUG",
        ]
        env = {"NOTIFY_SOCKET": notify_path, "SERVE_DEBUG": ""}
        s = Served(env, ["127.0.0.1:1"], wrap)  # the bind argument is ignored: LISTEN_FDS wins
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=30)  # queued until serve() takes the socket
            assert r.text == "/x done\n"
            messages: list[str] = []
            while not any("READY=1" in m for m in messages):
                messages.append(rx.recv(4096).decode())
            assert f"serving asgi app on http://127.0.0.1:{port}" in s.output()
        finally:
            s.close()
    finally:
        rx.close()


def test_body_after_an_early_response_is_not_taken_for_headers(served: MakeServed) -> None:
    # /ok answers without reading the body; the rest of a large upload must not count as the
    # next request's head (no 431, no 408): the connection stays usable.
    _, url, _ = served()
    with socket.create_connection(_addr(url), timeout=10) as s:
        body = b"x" * 200_000
        s.sendall(b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body[:1000])
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(body[1000:])
        s.sendall(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while b"/again done" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert b"431" not in data and b"408" not in data

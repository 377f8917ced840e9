"""DebugServer's lifecycle over real sockets: start/stop handshakes, failures, token, unix socket, side effects."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from liveswap.debug import DebugServer, DebugServerError, Metrics, bind_debug

pytestmark = pytest.mark.timeout(30)

DEADLINE = 10.0


def start_server(**options: Any) -> tuple[DebugServer, httpx.Client]:
    server = DebugServer(bind_debug("127.0.0.1:0"), metrics=Metrics(), **options)
    server.start()
    assert server.url is not None
    return server, httpx.Client(base_url=server.url, timeout=DEADLINE)


def test_stacks_without_a_main_loop() -> None:
    server, client = start_server()
    try:
        text = client.get("/stacks").text
        assert "no event loop was given to the debug server" in text
    finally:
        client.close()
        server.stop()


def test_stop_ends_a_running_profile() -> None:
    server, client = start_server()
    with client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.get, "/profile", params={"seconds": 60})
        deadline = time.monotonic() + DEADLINE
        while "liveswap/debug/profile.py" not in client.get("/stacks").text:
            assert time.monotonic() < deadline, "the profile never started"
        server.stop(timeout=DEADLINE)  # raises if the 60 s profile kept the thread alive
        assert not server.running
        try:
            pending.result(timeout=DEADLINE)  # an answer or a closed connection, either way no hang
        except httpx.TransportError:
            pass


def test_stats_survive_a_failing_extra() -> None:
    def broken() -> dict[str, Any]:
        raise KeyError("generation")

    server, client = start_server(extra=broken)
    with client:
        data = client.get("/stats").json()
    server.stop()
    assert data["extra_error"] == "KeyError: 'generation'" and data["pid"] == os.getpid()


def test_token_is_required_on_every_route() -> None:
    server, client = start_server(token="s3cret-token")
    try:
        for path in ("/", "/stats", "/stacks", "/heap/start", "/nowhere"):
            refused = client.get(path)
            assert refused.status_code == 401, path
        assert "hint: add ?token=<token>" in refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/stats", params={"token": "wrong"}).status_code == 401
        assert client.get("/stats", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/stats", params={"token": "s3cret-token"}).status_code == 200
        assert client.get("/stats", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        index = client.get("/", params={"token": "s3cret-token"}).text
        assert 'href="/stats?token=s3cret-token"' in index  # links keep working from the browser
    finally:
        client.close()
        server.stop()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_lifecycle_leaves_signals_and_logging_alone() -> None:
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    before = [(lg.level, list(lg.handlers), lg.propagate, list(lg.filters)) for lg in loggers]
    collect = Collect()
    for lg in loggers:
        lg.addHandler(collect)
        lg.setLevel(logging.DEBUG)
    try:
        with DebugServer(bind_debug("127.0.0.1:0"), metrics=Metrics()) as server:
            assert server.url is not None and server.running
            port = int(server.address.rsplit(":", 1)[1])
            # start() returned, so it accepts now: no retry loop needed
            assert httpx.get(server.url + "stats", timeout=DEADLINE).status_code == 200
            assert signal.getsignal(signal.SIGINT) is sigint and signal.getsignal(signal.SIGTERM) is sigterm
            logging.getLogger("uvicorn.error").info("the host's own line")
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
    finally:
        for lg, (level, _, _, _) in zip(loggers, before, strict=True):
            lg.removeHandler(collect)
            lg.setLevel(level)
    assert [(lg.level, list(lg.handlers), lg.propagate, list(lg.filters)) for lg in loggers] == before
    # the host's records pass; the debug thread's info lines (startup, access log) do not
    assert [r.getMessage() for r in collect.records] == ["the host's own line"]


def test_unix_socket_server(tmp_path: Path) -> None:
    path = tmp_path / "debug.sock"
    server = DebugServer(bind_debug(f"unix:{path}"), metrics=Metrics())
    server.start()
    try:
        assert server.url is None and server.address == f"unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=DEADLINE) as client:
            assert client.get("http://debug/stats").json()["pid"] == os.getpid()
    finally:
        server.stop()
    assert not path.exists()


def test_start_twice_and_stop_twice() -> None:
    server = DebugServer(bind_debug("127.0.0.1:0"), metrics=Metrics())
    server.start()
    try:
        with pytest.raises(DebugServerError, match="already started"):
            server.start()
    finally:
        server.stop()
    server.stop()


def test_a_closed_socket_is_refused_clearly() -> None:
    sock = bind_debug("127.0.0.1:0")
    server = DebugServer(sock, metrics=Metrics())
    sock.close()
    with pytest.raises(DebugServerError, match="socket .* is closed") as info:
        server.start()
    assert info.value.hint is not None and "bind_debug" in info.value.hint


def test_a_failure_in_the_thread_reaches_start() -> None:
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.bind(("127.0.0.1", 0))
    server = DebugServer(datagram, metrics=Metrics())
    with pytest.raises(DebugServerError, match="failed to start") as info:
        server.start()
    assert info.value.__cause__ is not None
    assert not server.running and datagram.fileno() == -1
    server.stop()

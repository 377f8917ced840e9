"""``liveswap run --proxy -- COMMAND``: a server that only knows $PORT (or takes ``{port}``) behind
liveswap's proxy gets the whole transaction: public traffic only once ready and healthy, the old
one stopped only once what it was sent is answered, rollbacks under load with zero failures.

Real processes (a stdlib $PORT server, granian, uvicorn binding {port}) and a load client that
retries nothing; synchronised on liveswap's exit statuses and log lines, never on sleeps.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, Instance, MakeInstance
from loadclient import Connection, LoadClient
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.timeout(150)

RELOADS = 10
PORT_SERVER = [sys.executable, str(APPS / "port_server.py")]
GRANIAN = [
    sys.executable,
    "-m",
    "granian",
    "--interface",
    "asgi",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--working-dir",
    str(APPS),
    "versioned:app",
]
UVICORN = [sys.executable, "-m", "uvicorn", "--port", "{port}", "--app-dir", str(APPS), "versioned:app"]


def _proxied(
    liveswap: MakeInstance, command: list[str], version: str = "1", extra: list[str] | None = None
) -> Instance:
    args = ["--proxy", "--bind", "127.0.0.1:0", "--drain-timeout", "10s", *(extra or []), "--", *command]
    return liveswap(app="", args=args, version=version)


def _get(inst: Instance, path: str = "/") -> str:
    with Connection(inst.host, inst.port) as conn:
        conn.send(conn.request(path, headers={"Connection": "close"}))
        return conn.read_response().text.strip()


SLEEPER = "import time; time.sleep(60)"
SERVERS = {"port_server": PORT_SERVER, "granian": GRANIAN, "uvicorn_port": UVICORN}


# Every mode against the plain $PORT server; keep-alive (the mode a server's own shutdown breaks)
# against the others: the proxy holds the client connections whatever the server.
CASES = [("port_server", m) for m in ("keepalive", "close", "post")] + [
    ("granian", "keepalive"),
    ("uvicorn_port", "keepalive"),
]


@pytest.mark.parametrize(("server", "mode"), CASES)
def test_reloads_under_load_lose_nothing(liveswap: MakeInstance, server: str, mode: str) -> None:
    if server == "granian" and shutil.which("granian", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("granian is not installed (pip install granian)")
    inst = _proxied(liveswap, SERVERS[server])
    load = LoadClient(inst.host, inst.port, mode=mode, concurrency=4)
    load.start()
    rng = random.Random(7)
    try:
        for i in range(2, RELOADS + 2):
            inst.write_state(str(i))
            out = inst.reload()
            assert out.returncode == 0, out.stderr + inst.output()
            assert _get(inst) == f"version={i}", "after `liveswap reload` exits 0, new requests reach the new code"
            time.sleep(rng.choice([0.0, 0.02, 0.1]))  # spacing between reloads (not synchronisation)
        result = load.stop()
    finally:
        load.stop()
    assert result.failed == 0, result.summary()
    assert result.ok > RELOADS * 5, result.summary()


@pytest.mark.parametrize("broken", ["exit", "bad"])
def test_a_bad_build_rolls_back_with_zero_failures(liveswap: MakeInstance, broken: str) -> None:
    inst = _proxied(liveswap, PORT_SERVER)
    load = LoadClient(inst.host, inst.port, mode="keepalive", concurrency=4)
    load.start()
    try:
        inst.write_state(f"2 {broken}")
        out = inst.reload()
        assert out.returncode == 1, out
        if broken == "exit":
            assert "exited before it was ready (exit code 1)" in out.stderr
            assert "configuration error" in out.stderr  # its own last words
        else:
            assert "health check GET / answered 500" in out.stderr
        assert _get(inst) == "version=1"
        inst.write_state("3")
        assert inst.reload().returncode == 0 and _get(inst) == "version=3"
        result = load.stop()
    finally:
        load.stop()
    assert result.failed == 0, result.summary()


def test_stream_slow_request_and_websocket_in_flight(liveswap: MakeInstance) -> None:
    inst = _proxied(liveswap, UVICORN)
    slow = Connection(inst.host, inst.port, timeout=20)
    mark = inst.mark()
    slow.send(slow.request("/slow?s=1.5"))
    inst.wait_for("slow request started", timeout=20, start=mark)
    with ws_connect(f"ws://{inst.host}:{inst.port}/ws", open_timeout=10) as ws:
        ws.send("a")
        assert ws.recv(10) == "1:a"
        inst.write_state("2")
        assert inst.reload().returncode == 0
        assert _get(inst) == "version=2"
        # The old upstream keeps what it has: the WebSocket still talks to version 1.
        ws.send("b")
        assert ws.recv(10) == "1:b"
        response = slow.read_response()
        assert (response.status, response.text) == (200, "slow 1\n")
    slow.close()
    # Once the WebSocket is closed, the old upstream has nothing in flight and is stopped.
    inst.wait_for(r"generation 1 gone", timeout=20)


def test_a_crashed_command_is_replaced_and_requests_are_held_meanwhile(liveswap: MakeInstance) -> None:
    inst = _proxied(liveswap, PORT_SERVER)
    [pid] = inst.worker_pids()
    mark = inst.mark()
    os.kill(pid, signal.SIGKILL)
    inst.wait_for(f"worker pid {pid} .* exited unexpectedly", timeout=10, start=mark)
    # Taken out of the routing when it was reaped: a request now is held until the replacement is
    # healthy, then answered. (One sent in the instant between the crash and the reap can reach the
    # dead port: see docs/command-mode.md.)
    assert _get(inst) == "version=1"
    assert inst.worker_pids() != [pid]


def test_stop_under_load_answers_what_was_sent(liveswap: MakeInstance) -> None:
    inst = _proxied(liveswap, PORT_SERVER)
    load = LoadClient(inst.host, inst.port, mode="keepalive", concurrency=4)
    load.start()
    slow = Connection(inst.host, inst.port, timeout=20)
    mark = inst.mark()
    slow.send(slow.request("/slow?s=1"))
    inst.wait_for("slow request started", timeout=20, start=mark)
    assert inst.stop() == 0
    response = slow.read_response()
    slow.close()
    assert (response.status, response.text) == (200, "slow 1\n")
    result = load.stop()
    # Once the proxy stops accepting, new connections are refused: that is the stop. What was
    # accepted was answered.
    assert result.failures["reset"] == 0 and result.failures["closed_before_response"] == 0, result.summary()


def test_command_that_ignores_port_is_a_clear_error(liveswap: MakeInstance, tmp_path: Path) -> None:
    inst = liveswap(
        app="",
        args=[
            "--proxy",
            "--boot-timeout",
            "2s",
            "--bind",
            "127.0.0.1:0",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
        ],
        wait=False,
    )
    assert inst.wait_exit(30) == 3
    out = inst.output()
    assert "was not ready and healthy within 2 s" in out, out
    assert "$PORT" in out and "hint:" in out, out

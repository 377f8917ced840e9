"""``liveswap run --takeover``: a new instance takes a running one's sockets, proves its own workers
healthy on them, then the old one drains and exits; a failed new instance leaves the old serving.

Real processes: two ``liveswap run`` supervisors with the same --name and runtime directory, a
load client that retries nothing, a slow request and a WebSocket in flight across the handover.
Synchronised on log lines and exit statuses, never on sleeps.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Instance, MakeInstance, pid_gone, wait_until
from loadclient import Connection, LoadClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.timeout(120)


def _twin(old: Instance, args: list[str]) -> Instance:
    """A second instance of the same name, runtime directory and code as ``old``."""
    new = Instance(old.tmp, old.app, args, "unused", None)
    new.name, new.runtime, new.env, new.state_file = old.name, old.runtime, old.env, old.state_file
    return new


def _version(inst: Instance) -> str:
    with Connection(inst.host, inst.port) as conn:
        conn.send(conn.request("/", headers={"Connection": "close"}))
        return conn.read_response().text.strip()


@pytest.mark.parametrize("mode", ["keepalive", "close", "post"])
def test_takeover_under_load_keeps_every_request(liveswap: MakeInstance, mode: str) -> None:
    old = liveswap(args=["--workers", "2"])
    bind = f"{old.host}:{old.port}"
    assert _version(old) == "version=1"
    load = LoadClient(old.host, old.port, mode=mode, concurrency=6)
    load.start()
    new = _twin(old, ["--workers", "2", "--bind", bind, "--takeover"])
    try:
        # In flight across the handover: a slow request and a WebSocket, both on the old workers.
        slow = Connection(old.host, old.port, timeout=20)
        mark = old.mark()
        slow.send(slow.request("/slow?s=2"))
        old.wait_for("slow request started", timeout=20, start=mark)
        ws = ws_connect(f"ws://{bind}/ws", open_timeout=10, legacy=True)
        ws.send("before")
        assert ws.recv(10) == "1:before"

        old.write_state("2")
        new.start(wait=False)
        new.wait_for(r"took over from liveswap pid \d+", timeout=60)
        assert old.wait_exit(30) == 0, old.output()
        assert "takeover: pid" in old.output() and "draining and exiting" in old.output()
        assert "Traceback" not in old.output() and "Exception ignored" not in old.output(), old.output()

        # The slow request finishes on the old worker; the WebSocket was closed cleanly (1012:
        # service restart, reconnect), never reset, after every message sent before it was answered.
        response = slow.read_response()
        assert (response.status, response.text) == (200, "slow 1\n")
        slow.close()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
        ws.close()

        # The control socket is the new instance's: status answers from it, with the new code live.
        new.host, new.port = old.host, old.port
        wait_until(lambda: _version(new) == "version=2", 10, "the new code to answer")
        result = load.stop()
        assert result.failed == 0, result.summary()
        assert result.ok > 50, result.summary()
        assert new.proc is not None and new.status()["pid"] == new.proc.pid
        assert new.reload().returncode == 0
    finally:
        load.stop()
        new.kill_group()


def test_failed_takeover_leaves_the_old_instance_serving(liveswap: MakeInstance) -> None:
    old = liveswap()
    load = LoadClient(old.host, old.port, mode="keepalive", concurrency=4)
    load.start()
    new = _twin(old, ["--bind", f"{old.host}:{old.port}", "--takeover"])
    try:
        old.write_state("2 fail-import")
        mark = old.mark()
        new.start(wait=False)
        assert new.wait_exit(60) == 3, new.output()
        assert "broken code in version 2" in new.output()
        old.wait_for(r"takeover: pid \d+ gave up", timeout=10, start=mark)
        result = load.stop()
        assert result.failed == 0, result.summary()
        assert old.proc is not None and old.proc.poll() is None
        assert _version(old) == "version=1"
        status = old.status()  # its control socket is still its own
        assert status["pid"] == old.proc.pid and status["state"] == "serving"
        old.write_state("3")
        assert old.reload().returncode == 0 and _version(old) == "version=3"
    finally:
        load.stop()
        new.kill_group()


def test_takeover_of_a_unix_socket_hands_over_its_file(liveswap: MakeInstance, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    old = liveswap(args=["--bind", f"unix:{path}", "--bind", "127.0.0.1:0"])
    new = _twin(old, ["--bind", f"unix:{path}", "--bind", f"127.0.0.1:{old.port}", "--takeover"])
    try:
        old.write_state("2")
        new.start(wait=False)
        new.wait_for("took over from liveswap pid", timeout=60)
        assert old.wait_exit(30) == 0
        assert path.exists(), "the old instance removed the socket file it handed over"
        load = LoadClient(unix_path=str(path), mode="close", concurrency=1, max_requests=3)
        load.start()
        result = load.stop()
        assert result.failed == 0 and result.ok >= 1, result.summary()
        assert new.stop() == 0
        wait_until(lambda: not path.exists(), 5, "the new instance to remove the socket file when it stops")
    finally:
        new.kill_group()


def test_takeover_with_nothing_running_is_a_clear_error(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    apps = Path(__file__).parent / "apps"
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "versioned:app", "--app-dir", str(apps), "--name", "nobody"]
        + ["--bind", "127.0.0.1:0", "--takeover"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "LIVESWAP_TEST_STATE": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1, out
    assert "--takeover: no liveswap instance named 'nobody' is running" in out.stderr
    assert "hint: start it without --takeover" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_old_supervisor_is_gone_and_the_new_one_owns_the_workers(liveswap: MakeInstance) -> None:
    old = liveswap()
    old_workers = old.worker_pids()
    new = _twin(old, ["--bind", f"{old.host}:{old.port}", "--takeover"])
    try:
        new.start(wait=False)
        new.wait_for("took over from liveswap pid", timeout=60)
        assert old.wait_exit(30) == 0
        for pid in old_workers:
            wait_until(functools.partial(pid_gone, pid), 10, f"old worker {pid} to exit")
        assert new.proc is not None
        assert new.status()["pid"] == new.proc.pid
    finally:
        new.kill_group()

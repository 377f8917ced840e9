"""``liveswap upgrade``: the supervisor re-executes itself in place (same pid, sockets and workers)
after a dry run of the liveswap on disk, then reloads the workers onto it.

Real processes and a load client that retries nothing; synchronised on exit statuses and log lines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APPS, Instance, MakeDevInstance, MakeInstance
from loadclient import Connection, LoadClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.timeout(120)


def _get(inst: Instance, path: str = "/") -> str:
    with Connection(inst.host, inst.port) as conn:
        conn.send(conn.request(path, headers={"Connection": "close"}))
        return conn.read_response().text.strip()


@pytest.mark.parametrize("mode", ["keepalive", "post"])
def test_upgrade_under_load_keeps_pid_sockets_and_every_request(liveswap: MakeInstance, mode: str) -> None:
    inst = liveswap(args=["--workers", "2"])
    assert inst.proc is not None
    supervisor = inst.proc.pid
    workers = sorted(inst.worker_pids())
    load = LoadClient(inst.host, inst.port, mode=mode, concurrency=6)
    load.start()
    slow = Connection(inst.host, inst.port, timeout=20)
    mark = inst.mark()
    slow.send(slow.request("/slow?s=1.5"))
    inst.wait_for("slow request started", timeout=20, start=mark)
    ws = ws_connect(f"ws://{inst.host}:{inst.port}/ws", open_timeout=10, legacy=True)
    try:
        ws.send("a")
        assert ws.recv(10) == "1:a"
        inst.write_state("2")
        out = inst.cli("upgrade", "--name", inst.name, "--no-reload", timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr + inst.output()
        assert f"upgrading liveswap pid {supervisor} in place: dry run ok" in out.stdout
        status = inst.status()
        assert status["pid"] == supervisor and status["upgrades"] == 1
        # The same workers serve on: the WebSocket is still open, on the old code.
        assert sorted(inst.worker_pids()) == workers
        ws.send("b")
        assert ws.recv(10) == "1:b"
        assert _get(inst) == "version=1"
        # Then a normal reload moves them to the new code; the WebSocket is closed cleanly (1012).
        reload = inst.reload()
        assert reload.returncode == 0, reload.stderr
        assert _get(inst) == "version=2"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        response = slow.read_response()
        assert (response.status, response.text) == (200, "slow 1\n")
        result = load.stop()
        assert result.failed == 0, result.summary()
        assert result.ok > 50, result.summary()
        assert inst.proc.poll() is None and inst.status()["pid"] == supervisor
    finally:
        ws.close()
        slow.close()
        load.stop()


def test_upgrade_then_reload_in_one_command(liveswap: MakeInstance) -> None:
    inst = liveswap()
    inst.write_state("2")
    out = inst.cli("upgrade", "--name", inst.name, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reload ok: generation 2 live" in out.stdout
    assert _get(inst) == "version=2"


def test_a_failed_dry_run_leaves_the_old_supervisor_untouched(
    liveswap: MakeInstance, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copy(APPS / "versioned.py", app_dir / "versioned.py")
    inst = Instance(tmp_path, "versioned:app", [], "1", None, app_dir=app_dir).start()
    try:
        assert inst.proc is not None
        load = LoadClient(inst.host, inst.port, mode="keepalive", concurrency=4)
        load.start()
        (app_dir / "versioned.py").unlink()  # a deploy that broke the app: the new image would not start
        out = inst.cli("upgrade", "--name", inst.name, timeout=90)
        assert out.returncode == 1, out
        assert "the dry run of the new liveswap failed" in out.stderr, out.stderr
        assert "versioned" in out.stderr and "hint:" in out.stderr
        result = load.stop()
        assert result.failed == 0, result.summary()
        status = inst.status()
        assert status["pid"] == inst.proc.pid and status["upgrades"] == 0 and status["state"] == "serving"
        assert _get(inst) == "version=1"
    finally:
        inst.kill_group()


def test_upgrade_with_nothing_running_is_a_clear_error(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "upgrade", "--name", "nobody"],
        env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "no liveswap instance named 'nobody'" in out.stderr, out
    assert "Traceback" not in out.stderr


def test_command_mode_workers_are_adopted_with_their_output(liveswap: MakeInstance) -> None:
    uvicorn = [sys.executable, "-m", "uvicorn", "--fd", "{fd}", "--app-dir", str(APPS), "versioned:app"]
    inst = liveswap(app="", args=["--ready-after", "0.5s", "--bind", "127.0.0.1:0", "--", *uvicorn])
    command_pid = inst.worker_pids()[0]
    out = inst.cli("upgrade", "--name", inst.name, "--no-reload", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert inst.worker_pids() == [command_pid]
    # Its stderr is still relayed by the new image: uvicorn's access log line for this request.
    mark = inst.mark()
    assert _get(inst, "/?after-upgrade") == "version=1"
    inst.wait_for(r'"GET /\?after-upgrade HTTP/1.1" 200', timeout=10, start=mark)
    inst.write_state("2")
    assert inst.reload().returncode == 0
    assert _get(inst) == "version=2"


def test_upgrade_is_refused_in_dev_mode(liveswap_dev: MakeDevInstance, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "main.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    inst = liveswap_dev(project)
    out = inst.cli("upgrade", "--name", inst.name, timeout=60)
    assert out.returncode == 1, out
    assert "liveswap dev does not upgrade in place" in out.stderr and "hint: stop it and start it again" in out.stderr
    assert inst.proc is not None and inst.status()["pid"] == inst.proc.pid

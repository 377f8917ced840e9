"""What liveswap reports must be true: lifespan failures, health checks, hung workers, stops, resources.

Each test runs a real ``liveswap run`` (conftest's ``liveswap`` fixture) and checks one promise that
an earlier version broke: an app whose lifespan raised went live; Django's 400 to an unknown Host
counted as healthy; a worker whose loop was blocked went unnoticed; fds grew with every reload;
connections queued at a stop were reset.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Instance, MakeInstance, wait_until
from loadclient import LoadClient

import liveswap as liveswap_pkg

pytestmark = pytest.mark.timeout(120)


def _get(inst: Instance, path: str = "/") -> httpx.Response:
    return httpx.get(inst.url + path, timeout=10, headers={"connection": "close"})


# ---- lifespan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["versioned:app", "fastapi_lifespan:app"])
def test_lifespan_that_raises_rolls_back_with_the_apps_own_error(liveswap: MakeInstance, app: str) -> None:
    inst = liveswap(app=app)
    inst.write_state("2 raise-startup")
    mark = inst.mark()
    out = inst.reload()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "rolled back" in out.stderr
    assert "lifespan startup failed: RuntimeError: db unreachable" in out.stderr, out.stderr
    assert "connect_db" in out.stderr, "the app's own frame is shown"
    log = inst.output_since(mark)
    assert "RuntimeError: db unreachable" in log
    assert "internal error" not in log and "liveswap/supervisor.py" not in log, log
    assert "Application startup failed" not in log
    assert _get(inst).status_code == 200


def test_initial_start_with_failing_lifespan_exits_3_with_the_reason(liveswap: MakeInstance) -> None:
    inst = liveswap(version="1 raise-startup", wait=False)
    assert inst.wait_exit(30) == 3
    out = inst.output()
    assert "lifespan startup failed: RuntimeError: db unreachable" in out, out
    assert "internal error" not in out and "<frozen importlib" not in out, out


def test_expected_boot_failures_log_no_liveswap_traceback(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    mark = inst.mark()
    for behaviour in ("fail-import", "fail-startup", "unhealthy", "raise-startup"):
        inst.write_state(f"2 {behaviour}")
        assert inst.reload().returncode == 1
    log = inst.output_since(mark)
    assert "internal error" not in log, log
    frames = [line for line in log.splitlines() if line.strip().startswith('File "')]
    assert frames, "the import error's traceback is shown"
    apps = str(Path(__file__).parent / "apps")
    assert all(apps in line for line in frames), "only the app's frames:\n" + "\n".join(frames)


# ---- health checks -------------------------------------------------------------------------------


def test_health_check_sends_the_public_host(liveswap: MakeInstance) -> None:
    inst = liveswap(app="hostcheck:app", args=["--health-path", "/"])
    inst.write_state("2 broken")  # the app answers 500 at / when the Host is one it allows
    out = inst.reload()
    assert out.returncode == 1, "a broken release must not pass a health check that sends a real Host"
    assert "answered 500" in out.stderr
    assert _get(inst).headers["x-app-version"] == "1"


def test_a_4xx_health_answer_goes_live_with_a_warning(liveswap: MakeInstance) -> None:
    inst = liveswap(app="hostcheck:app", args=["--health-host", "evil.example"])
    inst.write_state("2")
    mark = inst.mark()
    out = inst.reload()
    assert out.returncode == 0, out.stderr
    assert "answered 400" in out.stdout + out.stderr and "hint:" in out.stdout + out.stderr
    inst.wait_for(r"answered 400: a 4xx proves little.*hint: ", start=mark)


# ---- hung workers --------------------------------------------------------------------------------


def test_stopped_worker_is_replaced_while_requests_keep_succeeding(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2", "--worker-timeout", "1s"])
    victim = inst.worker_pids()[0]
    lc = LoadClient(host=inst.host, port=inst.port, mode="close", concurrency=4, timeout=15.0)
    lc.start()
    mark = inst.mark()
    try:
        os.kill(victim, signal.SIGSTOP)
        inst.wait_for(rf"worker pid {victim} .* is hung", timeout=10, start=mark)
        inst.wait_for(rf"replaced the hung worker pid {victim}", timeout=10, start=mark)
        inst.wait_for(rf"worker pid {victim} .* was stopped by a signal; resuming it", timeout=10, start=mark)
        inst.wait_for(rf"worker pid {victim} .* exited \(exit code 0\)", timeout=10, start=mark)
        ok_before = lc.snapshot().ok
        lc.wait_for(lambda r: r.ok > ok_before + 50, timeout=10)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    status = inst.status()
    assert victim not in inst.worker_pids() and len(inst.worker_pids()) == 2
    assert status["hung"] == 1 and status["state"] == "serving"


def test_blocked_loop_is_replaced_and_its_stack_logged(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--worker-timeout", "1s"])
    victim = inst.worker_pids()[0]
    mark = inst.mark()
    sock = socket.create_connection((inst.host, inst.port), timeout=10)
    try:
        sock.sendall(b"GET /block HTTP/1.1\r\nhost: t\r\n\r\n")
        inst.wait_for("blocking the event loop", start=mark)
        inst.wait_for(rf"replaced the hung worker pid {victim}", timeout=10, start=mark)
        inst.wait_for(rf"where worker pid {victim} .* was stuck", timeout=10, start=mark)
        inst.wait_for(r'versioned\.py", line \d+ in app', timeout=5, start=mark)
    finally:
        sock.close()
    assert _get(inst).status_code == 200


def test_reload_does_not_wait_for_a_hung_worker(liveswap: MakeInstance) -> None:
    # Heartbeats every 0.5 s: a worker silent for 1.5 s is not waited for; the watchdog (20 s) has
    # not replaced it yet when the reload happens.
    inst = liveswap(args=["--worker-timeout", "20s"])
    victim = inst.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # the condition under test is "silent for a while": a duration, not a sync point
        inst.write_state("2")
        t0 = time.monotonic()
        out = inst.reload()
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert took < 3.0, f"the reload waited {took:.1f} s for a stopped worker"
        assert _get(inst).headers["x-app-version"] == "2"
    finally:
        os.kill(victim, signal.SIGCONT)


# ---- resources and stopping ----------------------------------------------------------------------


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _one_generation(inst: Instance) -> bool:
    return len(inst.status()["generations"]) == 1


@pytest.mark.timeout(240)
def test_fds_and_memory_stay_flat_over_many_reloads(liveswap: MakeInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    from liveswap.control import request

    inst = liveswap(args=["--workers", "2", "--idle-grace", "0"])
    assert inst.proc is not None
    pid = inst.proc.pid
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(inst.runtime))
    for _ in range(20):  # warm up: first allocations, caches
        assert request("reload", inst.name)["ok"]
    wait_until(lambda: _one_generation(inst), 10, "old generations gone")
    fds0, rss0 = _fds(pid), _rss_kb(pid)
    for _ in range(300):
        assert request("reload", inst.name)["ok"]
    wait_until(lambda: _one_generation(inst), 10, "old generations gone")
    wait_until(lambda: _fds(pid) <= fds0, 10, f"fds back to {fds0} (now {_fds(pid)})")
    assert _rss_kb(pid) - rss0 < 2048, f"RSS grew by {_rss_kb(pid) - rss0} KB over 300 reloads"


def test_stop_answers_every_connection_it_accepted(liveswap: MakeInstance) -> None:
    # While a stop drains a slow request, new connections are either refused (nothing listens any
    # more) or answered; none is accepted into a queue and then reset.
    inst = liveswap(args=["--workers", "2"])
    slow: list[httpx.Response | BaseException] = []

    def slow_request() -> None:
        try:
            slow.append(httpx.get(inst.url + "/slow?s=1.5", timeout=30))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            slow.append(exc)

    mark = inst.mark()
    t = threading.Thread(target=slow_request)
    t.start()
    inst.wait_for("slow request started", start=mark)
    lc = LoadClient(host=inst.host, port=inst.port, mode="close", concurrency=4, timeout=15.0)
    lc.start()
    try:
        assert inst.proc is not None
        inst.proc.send_signal(signal.SIGTERM)
        assert inst.wait_exit(30) == 0
    finally:
        result = lc.stop()
        t.join(30)
    failures = {k: v for k, v in result.failures.items() if v and k != "refused"}
    assert not failures, result.summary()
    assert result.ok > 0
    assert len(slow) == 1 and isinstance(slow[0], httpx.Response) and slow[0].status_code == 200, slow


def test_connections_queued_while_the_loop_is_blocked_are_answered_at_stop(liveswap: MakeInstance) -> None:
    inst = liveswap()
    mark = inst.mark()
    blocker = socket.create_connection((inst.host, inst.port), timeout=10)
    blocker.sendall(b"GET /sleep-sync?s=1 HTTP/1.1\r\nhost: t\r\n\r\n")
    inst.wait_for("blocking the event loop", start=mark)
    queued = []
    for _ in range(5):  # accepted by the kernel into the queue: the only worker's loop is blocked
        s = socket.create_connection((inst.host, inst.port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        queued.append(s)
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGTERM)
    for s in [blocker, *queued]:
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith((b"1", b"0")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data
        s.close()
    assert inst.wait_exit(30) == 0


def test_sigterm_during_a_reload_tells_the_caller_the_instance_is_stopping(liveswap: MakeInstance) -> None:
    inst = liveswap()
    inst.write_state("2 slow-import")
    mark = inst.mark()
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(inst.reload()))
    t.start()
    inst.wait_for("slow import of version 2", start=mark)
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGTERM)
    t.join(30)
    out = result[0]
    assert out.returncode == 1
    assert "stopping" in out.stderr and "rolled back" not in out.stderr, out.stderr
    assert inst.wait_exit(30) == 0
    assert "reload failed" not in inst.output_since(mark)


def test_a_template_that_cannot_start_fails_the_reload_and_the_stop_still_works(
    liveswap: MakeInstance, tmp_path: Path
) -> None:
    # liveswap upgraded or moved in place under a running supervisor: the warm template sees its
    # files change and exits, and a new one cannot import. The reload must fail with that reason,
    # the old generation keep serving, and a stop still end the supervisor.
    lib = tmp_path / "lib"
    shutil.copytree(Path(liveswap_pkg.__file__).parent, lib / "liveswap", ignore=shutil.ignore_patterns("__pycache__"))
    inst = liveswap(args=["--workers", "2"], env={"PYTHONPATH": str(lib)})
    (lib / "liveswap" / "template").rename(lib / "liveswap" / "template_moved")
    inst.write_state("2")
    mark = inst.mark()
    out = inst.reload()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the template process failed" in out.stderr, out.stderr
    assert _get(inst).headers["x-app-version"] == "1"
    assert "internal error" not in inst.output_since(mark)
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.wait_exit(30) == 0

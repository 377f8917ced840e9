"""`liveswap run`: serving, reload transactions, rollbacks, crashes, stopping. Real processes and sockets."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import APPS, Instance, MakeInstance, pid_gone, wait_until

pytestmark = pytest.mark.timeout(90)


def get(inst: Instance, path: str = "/") -> httpx.Response:
    return httpx.get(inst.url + path, timeout=10)


def test_serves_and_reload_changes_version(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    r = get(inst)
    assert r.status_code == 200 and r.headers["x-app-version"] == "1"
    inst.write_state("2")
    out = inst.reload()
    assert out.returncode == 0, out.stderr
    assert "reload ok: generation 2 live" in out.stdout
    assert get(inst).headers["x-app-version"] == "2"
    status = inst.status()
    assert status["state"] == "serving"
    assert [g["generation"] for g in status["generations"] if g["state"] == "live"] == [2]
    assert status["last_reload"]["ok"] is True


def test_sighup_reloads(liveswap: MakeInstance) -> None:
    inst = liveswap()
    assert inst.proc is not None
    inst.write_state("2")
    mark = inst.mark()
    inst.proc.send_signal(signal.SIGHUP)
    inst.wait_for(r"reload ok: generation 2 live", start=mark)
    assert get(inst).headers["x-app-version"] == "2"


@pytest.mark.parametrize(
    "behaviour,expect",
    [
        ("fail-import", "RuntimeError: broken code in version 2"),
        ("fail-startup", "lifespan startup failed"),
        ("unhealthy", "health check GET / answered 503"),
    ],
)
def test_failed_reload_rolls_back(liveswap: MakeInstance, behaviour: str, expect: str) -> None:
    inst = liveswap(args=["--workers", "2"])
    pids = inst.worker_pids()
    inst.write_state(f"2 {behaviour}")
    out = inst.reload()
    assert out.returncode == 1, out.stdout
    assert "rolled back" in out.stderr and expect in out.stderr, out.stderr
    r = get(inst)
    assert r.status_code == 200 and r.headers["x-app-version"] == "1"
    assert inst.worker_pids() == pids  # the old generation was never touched
    status = inst.status()
    assert status["last_reload"]["ok"] is False and status["reloads_failed"] == 1
    # and once the code is fixed, the next reload goes through
    inst.write_state("3")
    assert inst.reload().returncode == 0
    assert get(inst).headers["x-app-version"] == "3"


def test_reloads_during_a_reload_are_coalesced(liveswap: MakeInstance) -> None:
    inst = liveswap()
    inst.write_state("2 slow-import")
    mark = inst.mark()
    first = subprocess.Popen(
        [sys.executable, "-m", "liveswap", "reload", "--name", inst.name],
        env=inst.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    inst.wait_for(r"slow import of version 2", start=mark)
    inst.write_state("3")
    later = [
        subprocess.Popen(
            [sys.executable, "-m", "liveswap", "reload", "--name", inst.name],
            env=inst.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    out, _ = first.communicate(timeout=60)
    assert "generation 2 live" in out
    for p in later:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "generation 3 live" in out, out + err  # one transaction for all three
    assert get(inst).headers["x-app-version"] == "3"
    assert inst.status()["reloads_ok"] == 2


def test_import_error_shows_end_of_traceback(liveswap: MakeInstance) -> None:
    inst = liveswap()
    inst.write_state("2 fail-import")
    out = inst.reload()
    assert out.returncode == 1
    assert "versioned.py" in out.stderr and "raise RuntimeError" in out.stderr, out.stderr


def test_worker_hanging_at_boot_is_rolled_back_at_boot_timeout(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--boot-timeout", "1.5"])
    inst.write_state("2 hang-import")
    out = inst.reload()
    assert out.returncode == 1
    assert "not ready and healthy within 1.5 s" in out.stderr, out.stderr
    assert get(inst).headers["x-app-version"] == "1"
    assert inst.status()["state"] == "serving"


def test_worker_ignoring_stop_is_killed_at_drain_timeout(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--drain-timeout", "1"], version="1 hang-shutdown")
    (old,) = inst.worker_pids()
    inst.write_state("2")
    mark = inst.mark()
    assert inst.reload().returncode == 0
    m = inst.wait_for(r"hammer time: worker pid (\d+) \(generation 1, slot 0\) still draining after 1.0 s", start=mark)
    assert int(m.group(1)) == old
    wait_until(lambda: pid_gone(old), 10, "the hammered worker to die")
    assert get(inst).headers["x-app-version"] == "2"


def test_killed_worker_is_replaced(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    victim, other = inst.worker_pids()
    mark = inst.mark()
    os.kill(victim, signal.SIGKILL)
    inst.wait_for(r"exited unexpectedly \(killed by SIGKILL\)", start=mark)
    inst.wait_for(r"replaced the crashed worker \(restart 1\)", start=mark)
    pids = inst.worker_pids()
    assert other in pids and victim not in pids and len(pids) == 2
    assert get(inst).status_code == 200
    assert inst.status()["restarts"] == 1


def test_crash_loop_backs_off_and_reports_degraded(liveswap: MakeInstance) -> None:
    inst = liveswap(version="1 crash-soon", args=["--backoff-max", "0.4"])
    mark = inst.mark()
    inst.wait_for(r"crashed 3 times in a row; restarting in 0.2 s", start=mark, timeout=30)
    inst.wait_for(r"crashed 5 times in a row; restarting in 0.4 s", start=mark, timeout=30)
    states: list[str] = []

    def degraded() -> bool:
        states.append(inst.status()["state"])
        return states[-1].startswith("degraded")

    wait_until(degraded, 20, "status to say degraded")
    assert "0 of 1 workers up" in states[-1]
    # a fixed version reloads over the crash loop
    inst.write_state("2")
    out = inst.reload()
    assert out.returncode == 0, out.stderr
    assert get(inst).headers["x-app-version"] == "2"


def test_sigkill_of_supervisor_leaves_no_worker(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "3"])
    assert inst.proc is not None
    pids = inst.worker_pids()
    assert len(pids) == 3
    os.kill(inst.proc.pid, signal.SIGKILL)
    inst.proc.wait(10)
    for pid in pids:
        wait_until(functools.partial(pid_gone, pid), 10, f"worker {pid} to die with its supervisor")


def test_sigterm_drains_and_exits_zero(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    assert inst.proc is not None
    result: dict[str, object] = {}

    def slow() -> None:
        result["r"] = httpx.get(inst.url + "/slow?s=1.0", timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    mark = inst.mark()
    inst.wait_for(r"slow request started", start=0)
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.wait_exit(30) == 0
    t.join(10)
    r = result["r"]
    assert isinstance(r, httpx.Response) and r.status_code == 200 and r.text.startswith("slow")
    assert "stopped" in inst.output().split("\n", mark)[-1]


def test_second_sigint_stops_at_once(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--drain-timeout", "60"])
    assert inst.proc is not None
    t = threading.Thread(target=lambda: _swallow(lambda: httpx.get(inst.url + "/slow?s=30", timeout=60)))
    t.start()
    inst.wait_for(r"slow request started")
    mark = inst.mark()
    inst.proc.send_signal(signal.SIGINT)
    inst.wait_for(r"SIGINT: stopping gracefully", start=mark)
    inst.proc.send_signal(signal.SIGINT)
    assert inst.wait_exit(15) == 0
    assert "second SIGINT: stopping now; killing 1 worker(s)" in inst.output()
    t.join(30)


def _swallow(fn: Callable[[], object]) -> None:
    try:
        fn()
    except httpx.HTTPError:
        pass


def test_bind_inherited_fd(liveswap: MakeInstance) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        inst = liveswap(args=["--bind", f"fd://{fd}"], wait=False, pass_fds=(fd,))
        inst.wait_for(rf"serving versioned:app on http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).headers["x-app-version"] == "1"


def test_liveswap_stop_command(liveswap: MakeInstance) -> None:
    inst = liveswap()
    out = inst.cli("stop", "--name", inst.name)
    assert out.returncode == 0 and "stopping" in out.stdout
    assert inst.wait_exit(30) == 0


def test_control_socket_refuses_garbage(liveswap: MakeInstance) -> None:
    inst = liveswap()
    path = inst.runtime / "liveswap" / f"{inst.name}.sock"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    for garbage in (b"\x00\xff garbage\n", b'{"cmd": "explode"}\n', b"[1,2]\n", b'"reload"\n'):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(garbage)
            reply = json.loads(s.makefile().readline())
        assert reply["ok"] is False and ("malformed" in reply["error"] or "unknown command" in reply["error"])
    status = inst.status()
    assert status["state"] == "serving" and status["reloads_ok"] == 0 and status["reloads_failed"] == 0
    assert get(inst).status_code == 200


def test_status_table_and_name_discovery(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    out = inst.cli("status")  # no --name: the only running instance
    assert out.returncode == 0, out.stderr
    assert "state: serving" in out.stdout and "GEN" in out.stdout
    assert out.stdout.count(" live ") >= 2


def test_cli_errors_have_hints(liveswap: MakeInstance, tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "liveswap", "reload"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "no liveswap instance is running" in out.stderr and "hint:" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "nocolon"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert out.returncode == 2 and "must be in format" in out.stdout + out.stderr  # a usage error
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "x:app", "--bind", "localhost"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "no port" in out.stderr and "hint:" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "x:app", "--workers", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--workers" in out.stderr
    assert "Traceback" not in out.stderr


def test_wsgi_app_and_factory(liveswap: MakeInstance) -> None:
    inst = liveswap(app="wsgi_app:application")
    r = get(inst, "/hello")
    assert r.status_code == 200 and r.text == "wsgi GET /hello\n"
    inst2 = liveswap(app="wsgi_app:create_app", args=["--factory"])
    assert get(inst2, "/x").text == "wsgi GET /x\n"


def test_unix_and_ipv6_binds(liveswap: MakeInstance, tmp_path: Path) -> None:
    sock_path = tmp_path / "app.sock"
    inst = liveswap(args=["--bind", f"unix:{sock_path}", "--bind", "127.0.0.1:0"])
    transport = httpx.HTTPTransport(uds=str(sock_path))
    with httpx.Client(transport=transport) as client:
        assert client.get("http://x/").headers["x-app-version"] == "1"
    if socket.has_ipv6:
        inst6 = liveswap(args=["--bind", "[::1]:0"])
        assert httpx.get(f"http://[::1]:{inst6.port}/", timeout=10).status_code == 200
    inst.stop()
    assert not sock_path.exists()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate")
def test_systemd_socket_activation(tmp_path: Path) -> None:
    with socket.socket() as probe:  # find a port the activator can bind; it binds by number only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # (the activator needs a port number; a race with another process taking it is harmless here)
    state = tmp_path / "state.txt"
    state.write_text("7\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, LIVESWAP_TEST_STATE=str(state), XDG_RUNTIME_DIR=str(runtime))
    cmd = [
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        "-E",
        "LIVESWAP_TEST_STATE",
        "-E",
        "XDG_RUNTIME_DIR",
        "-E",
        "PYTHONPATH",
        "-E",
        "PATH",
        sys.executable,
        "-m",
        "liveswap",
        "run",
        "versioned:app",
        "--app-dir",
        str(APPS),
        "--name",
        "sockact",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        # Socket activation: the connection waits in the activator's queue until liveswap serves it.
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert r.headers["x-app-version"] == "7"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert f"serving versioned:app on http://127.0.0.1:{port}" in out, out

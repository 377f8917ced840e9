"""`liveswap run --debug-bind`: the supervisor serves one debug port for all workers. Real processes.

Metrics summed across workers (and kept across reloads), each worker's endpoints through
/workers/<pid>/, the token, a public address refused at start, and a supervisor that loads no uvicorn.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from conftest import Instance, MakeInstance, pid_gone, wait_until

import liveswap.debug

pytestmark = pytest.mark.timeout(90)

_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$", re.M)


def start(liveswap: MakeInstance, *args: str) -> tuple[Instance, str]:
    """Start an instance with a supervisor debug port; return it and the debug port's URL."""
    inst = liveswap(args=["--workers", "2", "--debug-bind", "127.0.0.1:0", *args])
    debug = "http://" + inst.wait_for(r"debug server on http://(\S+?)/").group(1)
    return inst, debug


def samples(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    return {name + (labels or ""): float(value) for name, labels, value in _SAMPLE.findall(text)}


def metrics(debug: str) -> dict[str, float]:
    r = httpx.get(debug + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(r.text)


def worker_socket(inst: Instance, pid: int) -> Path:
    return inst.runtime / "liveswap" / f"{inst.name}.debug" / f"{pid}.sock"


REQUESTS = 'liveswap_http_requests_total{method="GET",status="2xx"}'


def test_supervisor_loads_no_uvicorn() -> None:
    code = (
        "import sys, liveswap.supervisor, liveswap.debug.hub, liveswap.debug.bind, "
        "liveswap.debug.metrics, liveswap.debug.errors; print(sorted(m for m in sys.modules if 'uvicorn' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_debug_package_exports_resolve_lazily() -> None:
    for name in liveswap.debug.__all__:
        assert getattr(liveswap.debug, name) is not None
        assert name in dir(liveswap.debug)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        liveswap.debug.nope  # noqa: B018


def test_metrics_are_summed_across_workers_and_kept_across_reloads(liveswap: MakeInstance) -> None:
    inst, debug = start(liveswap)
    n = 20
    for _ in range(n):  # a new connection each: the kernel hands them to either worker
        assert httpx.get(inst.url + "/", timeout=10).status_code == 200
    m = metrics(debug)
    # Each worker also answered the supervisor's health check before it went live: not counted.
    assert m[REQUESTS] == n
    assert m["liveswap_generation"] == 1
    assert m['liveswap_reloads_total{outcome="ok"}'] == 0 and m['liveswap_reloads_total{outcome="failed"}'] == 0
    assert m['liveswap_workers{state="live"}'] == 2 and m["liveswap_debug_scrape_errors"] == 0
    assert m["liveswap_worker_restarts_total"] == 0
    pids = inst.worker_pids()
    assert sorted(int(k.split('"')[1]) for k in m if k.startswith("liveswap_worker_generation")) == sorted(pids)
    per_worker = [
        samples(httpx.get(f"{debug}/workers/{pid}/metrics", timeout=10).text).get(REQUESTS, 0) for pid in pids
    ]
    assert sum(per_worker) == n

    inst.write_state("2")
    out = inst.reload()
    assert out.returncode == 0, out.stderr
    m = metrics(debug)
    assert m["liveswap_generation"] == 2
    assert m['liveswap_reloads_total{outcome="ok"}'] == 1
    # The old workers' counts stay in the sum (a counter must not go down); the new ones' health checks
    # are not counted.
    assert m[REQUESTS] == n
    wait_until(lambda: all(pid_gone(p) for p in pids), 30, "the old generation to exit")
    assert metrics(debug)[REQUESTS] == n

    head = httpx.head(debug + "/metrics", timeout=10)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    status = httpx.get(debug + "/status", timeout=10).json()
    assert inst.proc is not None
    assert status["pid"] == inst.proc.pid and [g["generation"] for g in status["generations"]][-1] == 2


def test_each_workers_stacks_through_the_proxy(liveswap: MakeInstance) -> None:
    inst, debug = start(liveswap)
    pids = inst.worker_pids()
    index = httpx.get(debug + "/", timeout=10).text
    for pid in pids:
        assert f'href="/workers/{pid}/"' in index
        r = httpx.get(f"{debug}/workers/{pid}/stacks", timeout=10)
        assert r.status_code == 200, r.text
        assert r.text.startswith(f"pid {pid}:")

    mark = inst.mark()
    slow = threading.Thread(target=lambda: httpx.get(inst.url + "/slow?s=3", timeout=20), daemon=True)
    slow.start()
    pid = int(inst.wait_for(r"slow request started in pid (\d+)", 10, start=mark).group(1))
    stacks = httpx.get(f"{debug}/workers/{pid}/stacks", timeout=10).text
    # The request's task, suspended in the test app's coroutine on its sleep.
    assert re.search(r'File ".*versioned\.py", line \d+, in app\n\s+await asyncio\.sleep\(seconds\)', stacks), stacks
    slow.join(20)

    missing = httpx.get(f"{debug}/workers/1/stacks", timeout=10)
    assert missing.status_code == 404 and all(str(p) in missing.text for p in pids) and "hint:" in missing.text
    bare = httpx.get(f"{debug}/workers/{pids[0]}", timeout=10)
    assert bare.status_code == 308 and bare.headers["location"] == f"/workers/{pids[0]}/"
    worker_index = httpx.get(f"{debug}/workers/{pids[0]}/", timeout=10).text
    assert f'href="/workers/{pids[0]}/stacks"' in worker_index  # its links keep working behind the proxy


def test_profile_through_the_proxy(liveswap: MakeInstance) -> None:
    inst, debug = start(liveswap)
    pid = inst.worker_pids()[0]
    r = httpx.get(f"{debug}/workers/{pid}/profile?seconds=1&format=collapsed", timeout=30)
    assert r.status_code == 200, r.text
    lines = r.text.strip().splitlines()
    assert lines and all(re.fullmatch(r"\S.* \d+", line) for line in lines), r.text
    assert any("liveswap.worker.main:main" in line for line in lines)
    bad = httpx.get(f"{debug}/workers/{pid}/profile?seconds=999", timeout=30)
    assert bad.status_code == 400 and "hint:" in bad.text  # the worker's own answer, passed on


def test_token_guards_every_route(liveswap: MakeInstance) -> None:
    inst, debug = start(liveswap, "--debug-token", "s3cret")
    pid = inst.worker_pids()[0]
    for path in ("/", "/status", "/metrics", f"/workers/{pid}/stacks"):
        refused = httpx.get(debug + path, timeout=10)
        assert refused.status_code == 401 and "hint:" in refused.text, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(debug + path, params={"token": "guess"}, timeout=10)
        assert wrong.status_code == 401, path
        assert httpx.get(debug + path, params={"token": "s3cret"}, timeout=10).status_code == 200, path
        # With the header, the worker only gets the token the supervisor adds itself.
        bearer = httpx.get(debug + path, headers={"authorization": "Bearer s3cret"}, timeout=10)
        assert bearer.status_code == 200, (path, bearer.text)
    # The worker's own socket wants the token too.
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(worker_socket(inst, pid)))) as direct:
        assert direct.get("http://worker/stacks", timeout=10).status_code == 401
        assert direct.get("http://worker/stacks", params={"token": "s3cret"}, timeout=10).status_code == 200


def test_public_address_is_refused_at_start(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--debug-bind", "0.0.0.0:0"], wait=False)
    assert inst.wait_exit(30) == 1
    out = inst.output()
    assert "error:" in out and "not a loopback address" in out, out
    assert "hint:" in out and "--debug-bind 127.0.0.1:0" in out, out
    assert "Traceback" not in out and "serving" not in out, out


def test_killed_worker_leaves_no_socket_and_bad_requests_get_400(liveswap: MakeInstance) -> None:
    inst, debug = start(liveswap)
    victim = inst.worker_pids()[0]
    assert worker_socket(inst, victim).exists()
    # Requests on new connections until the victim has served some (the kernel picks the worker).
    served = 0
    while True:
        r = httpx.get(inst.url + "/", timeout=10)
        served += 1
        if r.headers["x-worker-pid"] == str(victim):
            break
        assert served < 500, "the kernel never handed the victim a connection"
    # The hub keeps an exited worker's counters from its last scrape: wait until a scrape has seen
    # both workers' requests (under load one scrape may time out on a worker).
    wait_until(lambda: metrics(debug).get(REQUESTS) == served, 10, "a scrape that saw both workers")
    mark = inst.mark()
    os.kill(victim, signal.SIGKILL)
    inst.wait_for(r"replaced the crashed worker", 30, start=mark)
    assert not worker_socket(inst, victim).exists()
    m = metrics(debug)
    assert m["liveswap_worker_restarts_total"] == 1 and m['liveswap_workers{state="live"}'] == 2
    assert m[REQUESTS] == served  # the dead worker's kept; the new one's health check not counted

    host, port = debug.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"NOT HTTP\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    assert httpx.get(debug + "/", timeout=10).status_code == 200  # and the port keeps serving

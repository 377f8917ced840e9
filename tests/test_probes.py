"""Kubernetes termination: the probe port (--probe-bind), the shutdown delay (--shutdown-delay) and the
grace-period warning (--grace-period). Real processes, real sockets, real signals."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import _LISTENING, APPS, Instance, MakeInstance

from liveswap.config import Settings, parse_duration
from liveswap.supervisor.probes import KUBERNETES_GRACE, Termination

pytestmark = pytest.mark.timeout(60)

PROBES = r"probes on http://127\.0\.0\.1:(\d+)"


def probe_port(inst: Instance) -> int:
    return int(inst.wait_for(PROBES, 30).group(1))


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the whole answer (the probe port closes after each)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_with_shutdown_delay(liveswap: MakeInstance) -> None:
    """The issue's test: /readyz is 503 within 100 ms of SIGTERM, the app answers 200 for the 2 s
    delay, then the instance drains (a request in flight finishes) and exits 0."""
    inst = liveswap(args=["--probe-bind", "127.0.0.1:0", "--shutdown-delay", "2s"])
    assert inst.proc is not None
    port = probe_port(inst)
    readyz = b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n"  # raw: no client overhead in the timing
    assert raw(port, readyz).startswith(b"HTTP/1.1 200 OK\r\n")
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        slow["r"] = httpx.get(inst.url + "/slow?s=1.5", timeout=20)
        slow["done"] = time.monotonic()

    t0 = time.monotonic()
    inst.proc.send_signal(signal.SIGTERM)
    while (answer := raw(port, readyz)).startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() - t0 < 1.0, "/readyz still 200 a second after SIGTERM"
    not_ready_after = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"\r\n\r\nnot ready: stopping\n"), answer
    assert not_ready_after < 0.1, f"/readyz went 503 only {not_ready_after * 1000:.0f} ms after SIGTERM"

    answers: list[tuple[float, int | str]] = []  # (when the request started, status or error)
    thread = threading.Thread(target=slow_request)
    while inst.proc.poll() is None and time.monotonic() - t0 < 10:
        started = time.monotonic() - t0
        if started >= 1.0 and not thread.is_alive() and "r" not in slow:
            thread.start()  # in flight when the delay ends: the drain must let it finish
        try:
            # A new connection each time: a new request must still reach a worker during the delay.
            status: int | str = int(raw(inst.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[9:12])
        except (OSError, ValueError) as exc:
            status = type(exc).__name__
        answers.append((started, status))
        if status != 200:
            break
    assert inst.wait_exit(10) == 0
    exited = time.monotonic() - t0
    thread.join(10)
    served = [t for t, s in answers if s == 200]
    refused = [(t, s) for t, s in answers if s != 200]
    assert served and max(served) >= 1.9, f"the app stopped answering early: last 200 at {max(served, default=0):.2f} s"
    assert not refused or refused[0][0] >= 1.98, f"a request during the delay failed: {refused[0]}"
    assert exited >= 2.0
    assert slow["r"].status_code == 200 and slow["r"].text.startswith("slow")
    assert slow["done"] - t0 >= 2.0  # it really was in flight when the drain began
    out = inst.output()
    assert "SIGTERM: not ready (/readyz answers 503); serving 2 s more" in out
    assert out.index("shutdown delay over: stopping gracefully") < out.index("stopped")


def test_probes_while_booting_and_serving(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--probe-bind", "127.0.0.1:0"], version="1 slow-import", wait=False)
    port = probe_port(inst)
    inst.wait_for(r"slow import of version 1")  # the first worker is importing the app
    base = f"http://127.0.0.1:{port}"
    assert (httpx.get(base + "/livez", timeout=5).status_code, httpx.get(base + "/livez").text) == (200, "ok\n")
    r = httpx.get(base + "/readyz", timeout=5)
    assert (r.status_code, r.text) == (503, "not ready: starting\n")
    assert r.headers["connection"] == "close" and r.headers["cache-control"] == "no-store"
    # Nothing else is served: not the app, not the debug endpoints, not other methods.
    for path in ("/", "/metrics", "/status", "/readyz/x"):
        assert httpx.get(base + path, timeout=5).status_code == 404, path
    assert httpx.post(base + "/livez", timeout=5).status_code == 405
    head = raw(port, b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")  # no body
    assert raw(port, b"GET /livez?x=1 HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"GET /livez HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # A client that sends nothing holds no one up.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        assert httpx.get(base + "/livez", timeout=5).status_code == 200
    serving = inst.wait_for(_LISTENING)
    r = httpx.get(base + "/readyz", timeout=5)
    assert (r.status_code, r.text) == (200, "ready\n")
    assert httpx.get(f"http://{serving.group(1)}:{serving.group(2)}/", timeout=5).status_code == 200


def test_second_stop_request_skips_the_delay(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--probe-bind", "127.0.0.1:0", "--shutdown-delay", "60s", "--grace-period", "90s"])
    assert inst.proc is not None
    port = probe_port(inst)
    out = inst.cli("stop", "--name", inst.name, "--no-wait")  # liveswap stop honours the delay too
    assert out.returncode == 0, out.stderr
    inst.wait_for(r"SIGTERM: not ready \(/readyz answers 503\); serving 60 s more")
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
    assert httpx.get(inst.url + "/", timeout=5).status_code == 200  # still serving
    assert inst.status()["state"] == "stopping: shutdown delay, still serving"
    out = inst.cli("upgrade", "--name", inst.name)  # a re-executed supervisor would forget the stop
    assert out.returncode == 1 and "the instance is stopping" in out.stderr, out.stderr
    t0 = time.monotonic()
    inst.proc.send_signal(signal.SIGINT)
    assert inst.wait_exit(15) == 0
    assert time.monotonic() - t0 < 10
    assert "SIGINT during the shutdown delay: skipping the rest of it" in inst.output()


def test_grace_period_warning_under_kubernetes(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--shutdown-delay", "1s"], env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    line = inst.wait_for(
        r"WARNING --shutdown-delay 1 s \+ --drain-timeout 30 s = 31 s is longer than the grace "
        r"period, 30 s \(Kubernetes' default, assumed: KUBERNETES_SERVICE_HOST is set\)"
    )
    assert line
    assert "hint: set terminationGracePeriodSeconds to at least 36" in inst.output()


@pytest.mark.parametrize(
    ("options", "environ", "grace", "warns"),
    [
        ({}, {}, 0.0, False),  # nothing known: no warning
        ({}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, KUBERNETES_GRACE, False),  # 0 + 30 fits in 30
        ({"shutdown_delay": 1.0}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, KUBERNETES_GRACE, True),
        ({"shutdown_delay": 5.0, "grace_period": 40.0}, {"KUBERNETES_SERVICE_HOST": "x"}, 40.0, False),
        ({"drain_timeout": 10.0, "grace_period": 9.0}, {}, 9.0, True),
    ],
)
def test_grace_period_check(
    options: dict[str, float], environ: dict[str, str], grace: float, warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sup: Any = SimpleNamespace(settings=Settings.defaults("x:app", **options))
    with caplog.at_level("WARNING", logger="liveswap.supervisor"):
        assert Termination(sup).check_grace_period(environ) == grace
    assert bool(caplog.records) is warns, caplog.text


def test_probe_bind_errors() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "liveswap", "run", "versioned:app", "--app-dir", str(APPS), "--bind", "127.0.0.1:0",
             "--probe-bind", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"liveswap: error: --probe-bind cannot bind 127.0.0.1:{port}: Address already in use" in out.stderr
    assert f"hint: another process listens on 127.0.0.1:{port}: stop it, or choose another port with --probe-bind" in (
        out.stderr
    )
    assert "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "versioned:app", "--probe-bind", "unix:/tmp/probe.sock"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "the probes are served over TCP" in out.stderr and "hint:" in out.stderr


DOCS = Path(__file__).resolve().parent.parent / "docs"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_the_kubernetes_manifest_in_the_docs(liveswap: MakeInstance) -> None:
    """docs/kubernetes.md's Deployment is consistent (probes on --probe-bind's port, a grace period
    that covers the delay and the drain), and its command line runs: both probes answer."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the manifest cannot be parsed")
    [manifest] = _blocks((DOCS / "kubernetes.md").read_text(), "yaml")
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest)}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["liveswap", "run", "myapp:app"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command[3:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert flags["probe-bind"] == f"0.0.0.0:{ports['probes']}" and flags["bind"] == f"0.0.0.0:{ports['http']}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "probes"}
    grace = pod["terminationGracePeriodSeconds"]
    assert parse_duration(flags["grace-period"]) == grace
    assert parse_duration(flags["shutdown-delay"]) + parse_duration(flags["drain-timeout"]) < grace
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    rolling = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1

    # The command line itself, on free loopback ports and with a test app.
    args = [a for a in command[3:] if not a.startswith(("--bind=", "--probe-bind=", "--health-path="))]
    inst = liveswap(args=[*args, "--probe-bind", "127.0.0.1:0"])
    assert inst.proc is not None
    assert "grace period" not in inst.output()  # no warning: the numbers fit
    base = f"http://127.0.0.1:{probe_port(inst)}"
    assert httpx.get(base + "/livez", timeout=5).status_code == 200
    assert httpx.get(base + "/readyz", timeout=5).status_code == 200
    inst.proc.send_signal(signal.SIGTERM)
    inst.wait_for(r"SIGTERM: not ready")
    assert httpx.get(base + "/readyz", timeout=5).status_code == 503
    inst.proc.send_signal(signal.SIGTERM)  # skips the rest of the delay
    assert inst.wait_exit(20) == 0


def test_systemd_units_set_the_working_directory() -> None:
    """Without WorkingDirectory= a unit runs in /, and liveswap cannot import the app."""
    readme = (DOCS.parent / "README.md").read_text()
    for where, text in (("README.md", readme), ("docs/kubernetes.md", (DOCS / "kubernetes.md").read_text())):
        units = [b for b in _blocks(text, "ini") if "ExecStart=" in b]
        assert units, where
        for unit in units:
            assert re.search(r"^WorkingDirectory=/\S+", unit, flags=re.M), f"{where}: no WorkingDirectory=\n{unit}"
    assert "docs/kubernetes.md" in readme

"""Under continuous load, reload again and again: not one request may fail.

Each test runs a load client (tests/loadclient.py: raw sockets, no retries, every failure
classified) against a real `liveswap run` and reloads it at random intervals. Every reload writes a
new version; after each one the app must report it. Zero failures is the only passing result.
"""

from __future__ import annotations

import os
import random
import signal
import threading

import httpx
import pytest
from conftest import Instance, MakeInstance, wait_until
from loadclient import LoadClient

pytestmark = pytest.mark.timeout(180)

RELOADS = 20


def _reload_many(inst: Instance, lc: LoadClient, count: int, rng: random.Random) -> list[str]:
    versions: list[str] = []
    for i in range(count):
        version = f"v{i + 2}"
        inst.write_state(version)
        out = inst.reload()
        assert out.returncode == 0, f"reload {i} failed: {out.stdout}{out.stderr}"
        r = httpx.get(inst.url + "/", timeout=10, headers={"connection": "close"})
        assert r.headers["x-app-version"] == version, f"after reload {i} the app says {r.headers['x-app-version']}"
        versions.append(version)
        # Random spacing, including back-to-back reloads while the previous generation still drains.
        pause = rng.choice([0.0, 0.01, 0.05, 0.1, 0.2])
        done = threading.Event()
        done.wait(pause)
    return versions


@pytest.mark.parametrize("mode", ["keepalive", "close", "post"])
def test_reloads_under_load_lose_nothing(liveswap: MakeInstance, mode: str) -> None:
    rng = random.Random(1234)
    inst = liveswap(args=["--workers", "2"])
    lc = LoadClient(host=inst.host, port=inst.port, mode=mode, concurrency=6, timeout=15.0)
    lc.start()
    try:
        versions = _reload_many(inst, lc, RELOADS, rng)
        # Let the load reach the last version before stopping.
        lc.wait_for(lambda r: versions[-1] in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert result.ok > RELOADS * 10, result.summary()
    seen = set(result.versions)
    assert len(seen & set(versions)) >= RELOADS // 2, f"load saw few versions: {result.versions}"
    status = inst.status()
    assert status["reloads_ok"] == RELOADS and status["reloads_failed"] == 0


def test_failed_reloads_under_load_lose_nothing(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=6, timeout=15.0)
    lc.start()
    try:
        for i, behaviour in enumerate(["fail-import", "fail-startup", "unhealthy", "fail-import"]):
            inst.write_state(f"bad{i} {behaviour}")
            assert inst.reload().returncode == 1
        inst.write_state("good")
        assert inst.reload().returncode == 0
        lc.wait_for(lambda r: "good" in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert not any(v.startswith("bad") for v in result.versions), result.versions


def test_slow_requests_in_flight_complete_across_reloads(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    results: list[httpx.Response | BaseException] = []

    def slow() -> None:
        try:
            results.append(httpx.get(inst.url + "/slow?s=1.5", timeout=30))
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
            results.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    mark = inst.mark()
    for t in threads:
        t.start()
    wait_until(lambda: inst.output_since(mark).count("slow request started") == 4, 20, "4 slow requests in flight")
    for i in range(3):
        inst.write_state(f"v{i + 2}")
        assert inst.reload().returncode == 0
    for t in threads:
        t.join(30)
    assert len(results) == 4
    for r in results:
        assert isinstance(r, httpx.Response) and r.status_code == 200 and r.text == "slow 1\n", r


def test_keepalive_connection_gets_connection_close_when_draining(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--idle-grace", "5"])
    with httpx.Client(timeout=10) as client:
        first = client.get(inst.url + "/")
        assert first.headers["x-app-version"] == "1" and first.headers.get("connection") != "close"
        inst.write_state("2")
        assert inst.reload().returncode == 0
        # The idle connection to generation 1 was kept open through the grace period: the next
        # request on it is answered by the old code, with Connection: close.
        second = client.get(inst.url + "/")
        assert second.headers["x-app-version"] == "1"
        assert second.headers["connection"] == "close"
        third = client.get(inst.url + "/")
        assert third.headers["x-app-version"] == "2"


def test_websocket_closed_with_1012_on_reload(liveswap: MakeInstance) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    inst = liveswap()
    with connect(f"ws://{inst.host}:{inst.port}/ws", open_timeout=10, close_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "1:hi"
        inst.write_state("2")
        assert inst.reload().returncode == 0
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


def test_sighup_to_the_whole_process_group_reloads_without_losing_anything(liveswap: MakeInstance) -> None:
    # A terminal hang-up or `kill -HUP -PGID` reaches the workers and the template too: only the
    # supervisor may act on it.
    inst = liveswap(args=["--workers", "2"])
    assert inst.proc is not None
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=6, timeout=15.0)
    lc.start()
    try:
        for i in range(3):
            inst.write_state(f"g{i}")
            mark = inst.mark()
            os.killpg(inst.proc.pid, signal.SIGHUP)
            inst.wait_for(rf"reload ok: generation {i + 2} live", start=mark)
        lc.wait_for(lambda r: "g2" in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert "exited unexpectedly" not in inst.output()
    assert inst.status()["restarts"] == 0

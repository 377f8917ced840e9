"""Metrics, MetricsMiddleware, Prometheus rendering and merging (one snapshot from a real second process)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from liveswap.debug.metrics import (
    DEFAULT_BUCKETS,
    Metrics,
    MetricsMiddleware,
    merge_snapshots,
    render_prometheus,
)

pytestmark = pytest.mark.timeout(30)

Message = MutableMapping[str, Any]
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})? (?P<value>\S+)$")


def parse_exposition(text: str) -> dict[str, float]:
    """Sample lines as {'name{labels}': value}; checks every family has HELP and TYPE before its samples."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            if line.startswith("# TYPE "):
                typed.add(line.split()[2])
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"{name} has no TYPE line before it"
        samples[name + (match["labels"] or "")] = float(match["value"])
    return samples


async def demo_app(scope: Message, receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/silent":  # returns without answering (the server would send a 500)
        return
    status = 500 if path == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    if path == "/stream":
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"done"})


def call(app: Any, method: str, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


def requests_total(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith("liveswap_http_requests_total")}


def test_middleware_counts_exactly_what_was_served() -> None:
    metrics = Metrics()
    app = MetricsMiddleware(demo_app, metrics)
    for _ in range(3):
        assert call(app, "GET", "/ok")[0]["status"] == 200
    call(app, "GET", "/stream")
    for _ in range(2):
        assert call(app, "POST", "/fail")[0]["status"] == 500
    with pytest.raises(RuntimeError, match="the app failed"):
        call(app, "GET", "/boom")
    call(app, "DELETE", "/silent")
    call(app, "BREW", "/ok")  # client-chosen method: counted, under one label

    samples = parse_exposition(render_prometheus(metrics.snapshot()))
    assert requests_total(samples) == {
        'liveswap_http_requests_total{method="GET",status="2xx"}': 4,
        'liveswap_http_requests_total{method="POST",status="5xx"}': 2,
        'liveswap_http_requests_total{method="GET",status="5xx"}': 1,
        'liveswap_http_requests_total{method="DELETE",status="5xx"}': 1,
        'liveswap_http_requests_total{method="OTHER",status="2xx"}': 1,
    }
    assert samples["liveswap_http_requests_in_flight"] == 0
    assert samples["liveswap_http_request_duration_seconds_count"] == 9
    assert samples['liveswap_http_request_duration_seconds_bucket{le="+Inf"}'] == 9
    assert samples["liveswap_http_request_duration_seconds_sum"] >= 0


def test_in_flight_counts_the_running_request() -> None:
    metrics = Metrics()
    seen: list[int] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        seen.append(metrics.snapshot()["in_flight"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    call(MetricsMiddleware(app, metrics), "GET", "/")
    assert seen == [1]
    assert metrics.snapshot()["in_flight"] == 0


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_non_http_scopes_pass_through_untouched(scope_type: str) -> None:
    metrics = Metrics()
    received: list[tuple[Any, Any, Any]] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        received.append((scope, receive, send))

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        return None

    scope = {"type": scope_type, "path": "/"}
    asyncio.run(MetricsMiddleware(app, metrics)(scope, receive, send))
    assert received == [(scope, receive, send)]
    assert received[0][0] is scope and received[0][1] is receive and received[0][2] is send
    assert metrics.snapshot()["requests_total"] == [] and metrics.snapshot()["in_flight"] == 0


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    metrics = Metrics(buckets=(0.1, 1.0))
    for duration in (0.1, 0.05, 0.5, 1.0, 7.0):
        metrics.request_started()
        metrics.request_finished("GET", 200, duration)
    samples = parse_exposition(render_prometheus(metrics.snapshot()))
    assert samples['liveswap_http_request_duration_seconds_bucket{le="0.1"}'] == 2
    assert samples['liveswap_http_request_duration_seconds_bucket{le="1.0"}'] == 4
    assert samples['liveswap_http_request_duration_seconds_bucket{le="+Inf"}'] == 5
    assert samples["liveswap_http_request_duration_seconds_sum"] == pytest.approx(8.65)


def test_gauges_render_per_process() -> None:
    metrics = Metrics()
    metrics.set_gauge("generation", 3, "Generation of the code this worker runs.")
    text = render_prometheus(metrics.snapshot())
    assert "# HELP liveswap_generation Generation of the code this worker runs.\n" in text
    assert "# TYPE liveswap_generation gauge\n" in text
    assert parse_exposition(text)[f'liveswap_generation{{pid="{os.getpid()}"}}'] == 3


@pytest.mark.parametrize("name", ["", "9lives", "has-dash", "liveswap_generation", "http_requests_total"])
def test_unusable_gauge_names_are_refused_with_an_example(name: str) -> None:
    with pytest.raises(ValueError, match=r"set_gauge\('generation', 3\)"):
        Metrics().set_gauge(name, 1)


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Metrics(buckets=(1.0, 0.5))


_CHILD = """
import json, sys
from liveswap.debug.metrics import Metrics
m = Metrics()
for status in (200, 200, 404, 503):
    m.request_started()
    m.request_finished("GET", status, 0.02)
m.set_gauge("generation", 5, "Generation.")
print(json.dumps(m.snapshot()))
"""


def test_merge_sums_counters_across_real_processes() -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=20)
    assert child.returncode == 0, child.stderr
    theirs = json.loads(child.stdout)

    mine = Metrics()
    for status in (200, 500):
        mine.request_started()
        mine.request_finished("GET", status, 0.2)
    mine.set_gauge("generation", 4)
    merged = merge_snapshots([mine.snapshot(), theirs])

    assert sorted(merged["pids"]) == sorted([os.getpid(), theirs["pids"][0]])
    samples = parse_exposition(render_prometheus(merged))
    assert requests_total(samples) == {
        'liveswap_http_requests_total{method="GET",status="2xx"}': 3,
        'liveswap_http_requests_total{method="GET",status="4xx"}': 1,
        'liveswap_http_requests_total{method="GET",status="5xx"}': 2,
    }
    assert samples["liveswap_http_request_duration_seconds_count"] == 6
    assert samples['liveswap_http_request_duration_seconds_bucket{le="0.025"}'] == 4
    assert samples["liveswap_http_request_duration_seconds_sum"] == pytest.approx(0.48)
    # gauges are not summed: one series per process
    assert samples[f'liveswap_generation{{pid="{os.getpid()}"}}'] == 4
    assert samples[f'liveswap_generation{{pid="{theirs["pids"][0]}"}}'] == 5


def test_merge_refuses_incompatible_snapshots() -> None:
    with pytest.raises(ValueError, match="different buckets"):
        merge_snapshots([Metrics().snapshot(), Metrics(buckets=(1.0,)).snapshot()])
    with pytest.raises(ValueError, match="Metrics.snapshot"):
        merge_snapshots([{"format": "something else"}])


def test_merge_of_nothing_is_an_empty_snapshot() -> None:
    merged = merge_snapshots([])
    assert merged["pids"] == [] and merged["buckets"] == list(DEFAULT_BUCKETS)
    assert parse_exposition(render_prometheus(merged))["liveswap_http_request_duration_seconds_count"] == 0

"""HTTP server metrics: counters, an in-flight gauge, a latency histogram and host-set gauges.

One ``Metrics`` per process. ``MetricsMiddleware`` feeds it from the app's hot path; the debug
server reads it from its own thread with ``snapshot()``. Snapshots are plain JSON-able dicts so a
supervisor can collect one per worker (``/metrics?format=json``) and ``merge_snapshots`` them.

    metrics = Metrics()
    app = MetricsMiddleware(app, metrics)
    metrics.set_gauge("generation", 3, "Generation number of this worker's code.")
    print(render_prometheus(metrics.snapshot()))

Merging: request counters, the histogram and ``in_flight`` are summed across processes. Host gauges
are *not* summed (a sum of generation numbers means nothing): each process keeps its own value,
rendered with a ``pid`` label; aggregate them in PromQL (``max(liveswap_generation)``).
"""

from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_left
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from ._asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_BUCKETS",
    "Metrics",
    "MetricsMiddleware",
    "merge_snapshots",
    "render_prometheus",
]

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_FORMAT = "liveswap.metrics/1"
PREFIX = "liveswap_"

# Anything else is counted as "OTHER": the method is client-chosen, and every distinct label
# value is a new time series in Prometheus.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
_GAUGE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RESERVED = ("http_requests_total", "http_requests_in_flight", "http_request_duration_seconds")


_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "other", "other", "other", "other")


def _status_class(status: int) -> str:
    return _CLASSES[status // 100] if 0 <= status < 1000 else "other"


class Metrics:
    """Request metrics of one process, updated on every request, so kept cheap: no lock.

    ``request_started``/``request_finished`` are called from one thread, the server's event loop
    (the middleware runs there, also for WSGI apps); ``snapshot`` may run on any thread: each copy
    it takes is atomic under the GIL, so at worst its fields are a request or two apart.
    """

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(
                f"histogram buckets must be positive, finite and strictly increasing, got {list(buckets)!r} "
                f"(the +Inf bucket is implicit); e.g. {list(DEFAULT_BUCKETS)!r}"
            )
        self.buckets = bounds
        self._requests: dict[tuple[str, str], int] = {}
        self._in_flight = 0
        self._bucket_counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is (max, +Inf)
        self._duration_sum = 0.0
        self._gauges: dict[str, tuple[float, str]] = {}
        self._keys: dict[tuple[str, int], tuple[str, str]] = {}

    def request_started(self) -> None:
        self._in_flight += 1

    def request_done(self, method: str, status: int, duration: float) -> None:
        """Count one finished request (label keys cached per (method, status): this is the hot path)."""
        self._in_flight -= 1
        key = self._keys.get((method, status))
        if key is None:
            key = (method if method in _METHODS else "OTHER", _status_class(status))
            if len(self._keys) < 1024:  # methods are client-chosen: bound the cache
                self._keys[(method, status)] = key
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self._bucket_counts[bisect_left(self.buckets, duration)] += 1
        self._duration_sum += duration

    def request_finished(self, method: str, status: int, duration: float) -> None:
        """Count one finished request; ``status`` 500 for a request that ended in an exception."""
        self.request_done(method, status, duration)

    def set_gauge(self, name: str, value: float, help: str = "") -> None:
        """Set a host gauge, exported as ``liveswap_<name>`` (e.g. ``generation``, ``reloads``)."""
        if not _GAUGE_NAME.match(name) or name.startswith(PREFIX) or name in _RESERVED:
            raise ValueError(
                f"gauge name {name!r} is not usable: expected letters, digits and underscores, not starting "
                f"with a digit, without the {PREFIX!r} prefix (it is added) and not one of {list(_RESERVED)}; "
                "e.g. set_gauge('generation', 3)"
            )
        self._gauges[name] = (float(value), help)

    def snapshot(self) -> dict[str, Any]:
        """A consistent, JSON-able copy of every metric of this process."""
        requests = dict(self._requests)
        in_flight = self._in_flight
        counts = list(self._bucket_counts)
        total = self._duration_sum
        gauges = dict(self._gauges)
        pid = str(os.getpid())
        cumulative: list[int] = []
        running = 0
        for count in counts:
            running += count
            cumulative.append(running)
        return {
            "format": SNAPSHOT_FORMAT,
            "pids": [int(pid)],
            "time": time.time(),
            "buckets": list(self.buckets),
            "requests_total": [
                {"method": method, "status": status, "value": value}
                for (method, status), value in sorted(requests.items())
            ],
            "in_flight": in_flight,
            "request_duration_seconds": {"buckets": cumulative, "sum": total, "count": running},
            "gauges": {name: {"help": h, "values": {pid: v}} for name, (v, h) in sorted(gauges.items())},
        }


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters, histograms and in-flight across processes; keep each process's gauges (by pid)."""
    if not snapshots:
        return Metrics().snapshot() | {"pids": [], "gauges": {}}
    for snap in snapshots:
        if snap.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"not a liveswap metrics snapshot (format {snap.get('format')!r}, "
                f"expected {SNAPSHOT_FORMAT!r}); pass the dicts returned by Metrics.snapshot()"
            )
    buckets = snapshots[0]["buckets"]
    requests: dict[tuple[str, str], int] = {}
    cumulative = [0] * (len(buckets) + 1)
    total = 0.0
    in_flight = 0
    pids: list[int] = []
    gauges: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        if snap["buckets"] != buckets:
            raise ValueError(
                f"cannot merge histograms with different buckets: {snap['buckets']} vs {buckets}; "
                "create every process's Metrics with the same buckets"
            )
        pids.extend(snap["pids"])
        in_flight += snap["in_flight"]
        for row in snap["requests_total"]:
            key = (row["method"], row["status"])
            requests[key] = requests.get(key, 0) + row["value"]
        hist = snap["request_duration_seconds"]
        cumulative = [a + b for a, b in zip(cumulative, hist["buckets"], strict=True)]
        total += hist["sum"]
        for name, gauge in snap["gauges"].items():
            merged = gauges.setdefault(name, {"help": gauge["help"], "values": {}})
            merged["help"] = merged["help"] or gauge["help"]
            merged["values"].update(gauge["values"])
    return {
        "format": SNAPSHOT_FORMAT,
        "pids": pids,
        "time": max(s["time"] for s in snapshots),
        "buckets": list(buckets),
        "requests_total": [{"method": m, "status": s, "value": v} for (m, s), v in sorted(requests.items())],
        "in_flight": in_flight,
        "request_duration_seconds": {"buckets": cumulative, "sum": total, "count": cumulative[-1]},
        "gauges": dict(sorted(gauges.items())),
    }


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_prometheus(snapshot: dict[str, Any]) -> str:
    """The snapshot in Prometheus text exposition format 0.0.4 (``text/plain; version=0.0.4``)."""
    lines: list[str] = []

    def family(name: str, kind: str, description: str) -> None:
        lines.append(f"# HELP {PREFIX}{name} {_help(description)}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")

    family("http_requests_total", "counter", "HTTP requests finished, by method and status class.")
    for row in snapshot["requests_total"]:
        lines.append(
            f'{PREFIX}http_requests_total{{method="{_label(row["method"])}",'
            f'status="{_label(row["status"])}"}} {_num(row["value"])}'
        )
    family("http_requests_in_flight", "gauge", "HTTP requests being handled now.")
    lines.append(f"{PREFIX}http_requests_in_flight {_num(snapshot['in_flight'])}")
    family(
        "http_request_duration_seconds",
        "histogram",
        "Time from the start of a request to its last response byte (or its exception).",
    )
    hist = snapshot["request_duration_seconds"]
    bounds = [_num(float(b)) for b in snapshot["buckets"]] + ["+Inf"]
    for bound, count in zip(bounds, hist["buckets"], strict=True):
        lines.append(f'{PREFIX}http_request_duration_seconds_bucket{{le="{bound}"}} {_num(count)}')
    lines.append(f"{PREFIX}http_request_duration_seconds_sum {_num(float(hist['sum']))}")
    lines.append(f"{PREFIX}http_request_duration_seconds_count {_num(hist['count'])}")
    for name, gauge in snapshot["gauges"].items():
        family(name, "gauge", gauge["help"] or f"{name} (set by the liveswap host).")
        for pid, value in sorted(gauge["values"].items()):
            lines.append(f'{PREFIX}{name}{{pid="{_label(pid)}"}} {_num(float(value))}')
    return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware counting HTTP requests into ``metrics``; other scope types pass through untouched.

    A request is counted when the app returns (its response is complete by then), with the status
    it sent; one that raises, or returns without starting a response (the server answers 500), is
    counted as 500. It runs on every request, so it does the least it can: one closure that reads
    the status, two clock reads, one call into ``Metrics``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "liveswap.health" in scope:  # (the supervisor's health checks)
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        metrics = self.metrics
        metrics._in_flight += 1
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            status = 500
            raise
        finally:
            metrics.request_done(scope["method"], status, perf_counter() - start)

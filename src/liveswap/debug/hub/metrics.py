"""The hub's ``/metrics``: every worker's request metrics summed, plus the supervisor's own, plus
the ``process_*`` metrics of the supervisor and of each worker (``procstat.py``: one series per
process, labelled ``role`` and ``pid``).

The supervisor's health checks are not counted: they reach the app through a connection of their
own, whose scope says ``liveswap.health`` (``http/server.py``), and ``MetricsMiddleware`` skips it.

Each answer scrapes every worker's JSON snapshot (``/metrics?format=json``) at once, each within
``SCRAPE_TIMEOUT``, and merges them. Counters stay monotonic across reloads: a worker's last
scraped snapshot is folded into a "retired" total when it exits, so the summed
``liveswap_http_requests_total`` does not drop when a generation drains away (only the requests a
worker finished after its last scrape are missed). A worker that does not answer counts with its
last values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import h11

from ..metrics import DEFAULT_BUCKETS, PREFIX, SNAPSHOT_FORMAT, _num, merge_snapshots, render_prometheus
from ..procstat import render_process_metrics
from .proxy import StatusFn, WorkerProxy, worker_pids

__all__ = ["MetricsAggregator"]

log = logging.getLogger("liveswap.debug")

SCRAPE_TIMEOUT = 2.0  # per worker, all at once: a slow worker delays /metrics by this much at most
WORKER_STATES = ("booting", "ready", "live", "draining")


class MetricsAggregator:
    """Scrapes the workers ``proxy`` reaches and keeps what exited workers counted."""

    def __init__(self, proxy: WorkerProxy) -> None:
        self._proxy = proxy
        self._lock = asyncio.Lock()
        self._last: dict[int, dict[str, Any]] = {}  # pid -> its last good metrics snapshot
        self._retired: dict[str, Any] | None = None  # counters of workers that have exited, summed

    async def render(self, status: StatusFn) -> str:
        """The Prometheus text: the workers' metrics summed, then the supervisor's (from ``status()``)."""
        async with self._lock:  # one scrape at a time, so that no worker is retired twice
            pids = sorted(pid for pid in self._proxy.pids() if self._proxy.socket(pid).exists())
            results = await asyncio.gather(*(self._scrape(pid) for pid in pids))
            now = status()  # after the scrape: workers may have exited meanwhile
            alive = worker_pids(now)
            for pid, snapshot in zip(pids, results, strict=True):
                if snapshot is not None:
                    self._last[pid] = snapshot
            for pid in [p for p in self._last if p not in alive]:
                self._retire(self._last.pop(pid))
            # A worker that did not answer counts with its last values: sums must not go down.
            parts = ([self._retired] if self._retired else []) + [self._last[p] for p in sorted(self._last)]
            merged = merge_snapshots(parts)
        errors = sum(result is None for result in results)
        processes = [("supervisor", os.getpid()), *(("worker", pid) for pid in sorted(alive))]
        return render_prometheus(merged) + _supervisor_metrics(now, errors) + render_process_metrics(processes)

    async def _scrape(self, pid: int) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                status, body = await self._proxy.fetch(pid, b"/metrics?format=json")
            snapshot = json.loads(body)
        except (OSError, TimeoutError, h11.ProtocolError, ValueError) as exc:
            log.debug("metrics of worker pid %d not read: %r", pid, exc)
            return None
        if (
            status != 200
            or not isinstance(snapshot, dict)
            or snapshot.get("format") != SNAPSHOT_FORMAT
            or snapshot.get("buckets") != list(DEFAULT_BUCKETS)
        ):
            log.debug("metrics of worker pid %d not usable: HTTP %d %.200r", pid, status, body)
            return None
        return snapshot

    def _retire(self, snapshot: dict[str, Any]) -> None:
        gone = dict(snapshot, in_flight=0, gauges={}, pids=[])
        self._retired = merge_snapshots([self._retired, gone] if self._retired else [gone]) | {"pids": []}


def _family(name: str, kind: str, description: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {PREFIX}{name} {description}", f"# TYPE {PREFIX}{name} {kind}"]
    lines += [f"{PREFIX}{name}{labels} {_num(value)}" for labels, value in samples]
    return lines


def _supervisor_metrics(status: Mapping[str, Any], scrape_errors: int) -> str:
    generations = status.get("generations", [])
    live = max((g["generation"] for g in generations if g["state"] == "live"), default=0)
    states = dict.fromkeys(WORKER_STATES, 0)
    for g in generations:
        for w in g["workers"]:
            states[w["state"]] = states.get(w["state"], 0) + 1
    lines = [
        *_family("generation", "gauge", "Number of the live generation (0 until the first one is live).", [("", live)]),
        *_family(
            "reloads_total",
            "counter",
            "Reload transactions since the supervisor started, by outcome "
            "(failed: rolled back, the previous generation kept serving).",
            [('{outcome="ok"}', status.get("reloads_ok", 0)), ('{outcome="failed"}', status.get("reloads_failed", 0))],
        ),
        *_family(
            "worker_restarts_total",
            "counter",
            "Workers started to replace one that crashed or hung.",
            [("", status.get("restarts", 0))],
        ),
        *_family(
            "worker_recycles_total",
            "counter",
            "Workers replaced after serving their --max-requests.",
            [("", status.get("recycled", 0))],
        ),
        *_family(
            "workers",
            "gauge",
            "Worker processes, by state.",
            [(f'{{state="{state}"}}', count) for state, count in states.items()],
        ),
        *_family(
            "debug_scrape_errors",
            "gauge",
            "Workers whose metrics could not be read for this answer (their last values are counted).",
            [("", scrape_errors)],
        ),
    ]
    return "\n".join(lines) + "\n"

"""Heap allocation sites with tracemalloc, like Go's /debug/pprof/heap.

tracemalloc costs memory and CPU while it traces, so it is off until an operator starts it
(``start()``, or ``PYTHONTRACEMALLOC=N`` at process start). It only sees allocations made after it
started: start it, let the suspected leak grow for a while, then look at ``top()``.

    start(frames=10)
    ...
    print(format_top_text(top(limit=20, group_by="traceback")))
"""

from __future__ import annotations

import linecache
import os
import time
import tracemalloc
from typing import Any, Literal

from .errors import HeapNotTracingError

__all__ = ["GroupBy", "format_top_text", "start", "status", "stop", "top"]

GroupBy = Literal["lineno", "traceback"]
DEFAULT_FRAMES = 5
MAX_FRAMES = 100

_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def status() -> dict[str, Any]:
    """Whether tracemalloc traces, how deep, and the traced memory now and at peak (bytes)."""
    tracing = tracemalloc.is_tracing()
    current, peak = tracemalloc.get_traced_memory() if tracing else (0, 0)
    return {
        "tracing": tracing,
        "frames": tracemalloc.get_traceback_limit() if tracing else None,
        "traced_bytes": current,
        "traced_peak_bytes": peak,
        "overhead_bytes": tracemalloc.get_tracemalloc_memory() if tracing else 0,
    }


def start(frames: int = DEFAULT_FRAMES) -> dict[str, Any]:
    """Start tracing with ``frames`` frames per allocation (1..100); a no-op if already tracing."""
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(
            f"frames must be between 1 and {MAX_FRAMES}, got {frames}; "
            f"1 is cheapest, {DEFAULT_FRAMES} is enough for group_by=traceback"
        )
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start(frames)
    return status() | {"already_tracing": already}


def stop() -> dict[str, Any]:
    """Stop tracing and free its memory; a no-op if not tracing."""
    was = tracemalloc.is_tracing()
    tracemalloc.stop()
    return status() | {"was_tracing": was}


def top(limit: int = 25, group_by: GroupBy = "lineno") -> dict[str, Any]:
    """The ``limit`` allocation sites holding the most memory now, as a JSON-able dict.

    Raises ``HeapNotTracingError`` if tracemalloc is off. Takes a snapshot: costs time in proportion
    to the number of live traced allocations, so call it off any latency-sensitive loop.
    """
    if not tracemalloc.is_tracing():
        raise HeapNotTracingError(
            "tracemalloc is not tracing, so there are no allocation sites to show",
            hint="start it with /heap/start (or heap.start(), or PYTHONTRACEMALLOC=5 at process start), "
            "let the program run, then ask again",
        )
    if group_by not in ("lineno", "traceback"):
        raise ValueError(f"group_by must be 'lineno' or 'traceback', got {group_by!r}")
    snapshot = tracemalloc.take_snapshot().filter_traces(_FILTERS)
    stats = snapshot.statistics(group_by)
    total_size = sum(s.size for s in stats)
    total_count = sum(s.count for s in stats)
    sites = []
    for stat in stats[:limit]:
        frames = [{"file": f.filename, "line": f.lineno} for f in stat.traceback]  # oldest (outermost) first
        sites.append({"size": stat.size, "count": stat.count, "frames": frames})
    return {
        "pid": os.getpid(),
        "time": time.time(),
        "group_by": group_by,
        "status": status(),
        "total_size": total_size,
        "total_count": total_count,
        "sites_total": len(stats),
        "top": sites,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_top_text(result: dict[str, Any]) -> str:
    """``top()``'s result as text, biggest site first."""
    st = result["status"]
    out = [
        f"pid {result['pid']}: {_size(result['total_size'])} in {result['total_count']} live allocations "
        f"traced at {result['sites_total']} sites (grouped by {result['group_by']}); "
        f"tracemalloc keeps {st['frames']} frames and uses {_size(st['overhead_bytes'])} itself; "
        f"traced peak {_size(st['traced_peak_bytes'])}",
        "",
    ]
    for rank, site in enumerate(result["top"], 1):
        frames = site["frames"]
        leaf: dict[str, Any] = frames[-1] if frames else {"file": "?", "line": 0}
        out.append(f"#{rank}: {leaf['file']}:{leaf['line']}: {_size(site['size'])} in {site['count']} blocks")
        source = linecache.getline(leaf["file"], leaf["line"]).strip()
        if source:
            out.append(f"    {source}")
        if len(frames) > 1:
            out.append("  allocated from (outermost first):")
            for f in frames:
                out.append(f'    File "{f["file"]}", line {f["line"]}')
        out.append("")
    return "\n".join(out) + "\n"

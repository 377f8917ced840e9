"""Process and garbage-collector statistics as a JSON-able dict (``/stats``).

Linux values come from ``/proc/self``; elsewhere the ``resource`` module fills in what it can and
the rest is ``None`` rather than a guess.

    print(json.dumps(process_stats(), indent=2))
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import threading
import time
from typing import Any

__all__ = ["process_stats"]

# Fallback origin for uptime where /proc is missing: when this module was first imported.
_IMPORTED_AT = time.time()


def _proc_status() -> dict[str, str]:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def _kib(value: str | None) -> int | None:
    # "/proc/self/status" reports e.g. "VmRSS:	  123456 kB"
    if not value or not value.endswith("kB"):
        return None
    try:
        return int(value[:-2].strip()) * 1024
    except ValueError:
        return None


def _memory(status: dict[str, str]) -> dict[str, int | None]:
    rss = _kib(status.get("VmRSS"))
    peak = _kib(status.get("VmHWM"))
    if peak is None:
        try:
            import resource
        except ImportError:  # Windows
            pass
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere
    return {"rss_bytes": rss, "peak_rss_bytes": peak}


def _started_at() -> tuple[float, str]:
    """The process's start time (epoch seconds) and where it came from."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        # Field 22 (starttime, in clock ticks since boot); the command name (field 2) may contain spaces.
        ticks = int(stat.rpartition(")")[2].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK"), "/proc"
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return _IMPORTED_AT, "liveswap.debug import (no /proc)"


def _open_fds() -> int | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            # listdir itself holds one descriptor open on the directory while it reads it.
            return len(os.listdir(path)) - 1
        except OSError:
            continue
    return None


def process_stats() -> dict[str, Any]:
    """pid, uptime, memory, CPU times, threads, fds, gc and Python version of this process."""
    status = _proc_status()
    started, started_source = _started_at()
    now = time.time()
    times = os.times()
    os_threads = status.get("Threads")
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "time": now,
        "started_at": started,
        "started_at_source": started_source,
        "uptime_seconds": max(0.0, now - started),
        "memory": _memory(status),
        "cpu_seconds": {
            "user": times.user,
            "system": times.system,
            "children_user": times.children_user,
            "children_system": times.children_system,
        },
        "threads": {
            "python": threading.active_count(),
            "os": int(os_threads) if os_threads and os_threads.isdigit() else None,
            "names": sorted(t.name for t in threading.enumerate()),
        },
        "open_fds": _open_fds(),
        "gc": {
            "enabled": gc.isenabled(),
            "counts": list(gc.get_count()),
            "thresholds": list(gc.get_threshold()),
            "stats": gc.get_stats(),
            "garbage": len(gc.garbage),
            "frozen": gc.get_freeze_count(),
        },
        "python": {
            "version": sys.version,
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
    }

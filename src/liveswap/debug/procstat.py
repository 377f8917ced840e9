"""The standard ``process_*`` metrics, read from ``/proc`` (Linux), as Prometheus client libraries
export them: ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_virtual_memory_bytes``, ``process_open_fds``, ``process_max_fds`` and
``process_start_time_seconds``.

A client library exports them for the process that answers ``/metrics``. liveswap's debug port is
the supervisor's, and the work is done by the workers, so every series is labelled with the process
it describes: ``{role="supervisor",pid="..."}`` and ``{role="worker",pid="..."}`` for each worker
alive at the scrape. ``sum(process_resident_memory_bytes)`` is then the service's memory (shared
pages counted once per process, as ``ps`` does), ``sum(rate(process_cpu_seconds_total[1m]))`` its CPU;
a reload or a recycled worker starts new series (a new pid), as a restarted process does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FAMILIES", "ProcessStats", "read_stats", "render_process_metrics"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# name, type, help, field of ProcessStats
FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", "cpu_seconds"),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", "resident_bytes"),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", "virtual_bytes"),
    ("process_open_fds", "gauge", "Number of open file descriptors.", "open_fds"),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors.", "max_fds"),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        "start_time_seconds",
    ),
)


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    open_fds: int
    max_fds: int
    start_time_seconds: float


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


def _max_fds(pid: int) -> int:
    with open(f"/proc/{pid}/limits", "rb") as f:
        for line in f:
            if line.startswith(b"Max open files"):
                soft = line.split()[3]
                return -1 if soft == b"unlimited" else int(soft)
    return -1


def read_stats(pid: int) -> ProcessStats | None:
    """``pid``'s figures, or None if it is gone (or ``/proc`` cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) is in parentheses and may hold spaces: split after its end.
        fields = stat[stat.rindex(b")") + 2 :].split()
        utime, stime, start, vsize, rss = (int(fields[i]) for i in (11, 12, 19, 20, 21))
        return ProcessStats(
            pid=pid,
            cpu_seconds=(utime + stime) / _TICKS,
            resident_bytes=rss * _PAGE,
            virtual_bytes=vsize,
            open_fds=len(os.listdir(f"/proc/{pid}/fd")),
            max_fds=_max_fds(pid),
            start_time_seconds=_boot_time() + start / _TICKS,
        )
    except (OSError, ValueError, IndexError):
        return None


def render_process_metrics(processes: Iterable[tuple[str, int]]) -> str:
    """The ``process_*`` families for each (role, pid) still alive, in text exposition format."""
    stats = [(role, s) for role, pid in processes if (s := read_stats(pid)) is not None]
    lines: list[str] = []
    for name, kind, description, attr in FAMILIES:
        lines += [f"# HELP {name} {description}", f"# TYPE {name} {kind}"]
        for role, s in stats:
            value = getattr(s, attr)
            text = repr(float(value)) if isinstance(value, float) else str(value)
            lines.append(f'{name}{{role="{role}",pid="{s.pid}"}} {text}')
    return "\n".join(lines) + "\n"

"""A pure-Python sampling CPU profiler, like Go's /debug/pprof/profile.

Every ``interval`` it reads every thread's current frame (``sys._current_frames()``) and counts
the stack. It samples wall-clock time of all threads, so a thread waiting in ``Event.wait`` or in
the event loop's ``select`` shows up there too: that is what you want when the question is "where
is the main thread stuck?". The result is collapsed stacks, Brendan Gregg's format, root first:

    "MainThread;myapp.views:checkout;myapp.db:query" -> 42

    prof = take_profile(2.0)                       # blocks the calling thread for 2 s
    svg = to_flamegraph_svg(prof.collapsed, "checkout", locations=prof.locations)

Only one profile runs at a time per process (``ProfileBusyError`` otherwise): two samplers would
see each other and halve each other's resolution for no gain.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType

from .errors import ProfileBusyError
from .flamegraph import collapsed_text, to_flamegraph_svg, to_speedscope

__all__ = [
    "DEFAULT_INTERVAL",
    "Profile",
    "collapsed_text",
    "exclusive",
    "is_running",
    "take_profile",
    "to_flamegraph_svg",
    "to_speedscope",
]

DEFAULT_INTERVAL = 0.005

# Process-wide on purpose: sys._current_frames() sees every thread of the process, whoever asks.
_RUNNING = threading.Lock()


@dataclass(frozen=True)
class Profile:
    """The result of ``take_profile``."""

    collapsed: dict[str, int]
    """``"thread;module:function;..." -> samples``, root first."""
    locations: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Frame label -> (file, first line of the function), for tooltips and speedscope."""
    ticks: int = 0
    """How many times all threads were sampled."""
    interval: float = DEFAULT_INTERVAL
    duration: float = 0.0
    """Wall-clock seconds actually spent sampling (shorter if cancelled)."""
    cancelled: bool = False


def is_running() -> bool:
    """Whether a profile is being taken in this process right now."""
    return _RUNNING.locked()


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the process's profiling slot, or raise ``ProfileBusyError`` if someone else holds it."""
    if not _RUNNING.acquire(blocking=False):
        raise ProfileBusyError(
            "a CPU profile is already running in this process",
            hint="wait for it to finish (profiles last at most 60 s) and ask again",
        )
    try:
        yield
    finally:
        _RUNNING.release()


def _label(name: str) -> str:
    # ';' separates frames and a newline separates stacks in the collapsed format.
    return name.replace(";", ",").replace("\n", " ")


SWITCH_INTERVAL = 0.0002  # seconds; the GIL switch interval while a profile runs


def take_profile(
    seconds: float,
    *,
    interval: float = DEFAULT_INTERVAL,
    exclude_threads: Iterable[int] = (),
    cancel: threading.Event | None = None,
) -> Profile:
    """Sample every thread but this one (and ``exclude_threads``) for ``seconds``, in the calling thread.

    ``cancel`` ends the profile early (e.g. the debug server is stopping); the samples so far are kept.
    Raises ``ProfileBusyError`` if another profile is running.
    """
    if not seconds > 0 or not interval > 0:
        raise ValueError(f"seconds and interval must be positive, got seconds={seconds!r} interval={interval!r}")
    stop = cancel if cancel is not None else threading.Event()
    with exclusive():
        # The sampler needs the GIL to look at the other threads. A busy event loop (uvloop above
        # all) gives it up mostly while it waits in epoll, so with the default 5 ms switch interval
        # nearly every sample would show the idle loop. A short interval makes the interpreter hand
        # the GIL over in the middle of running Python code, where the time is actually spent.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
        try:
            return _sample(seconds, interval, {threading.get_ident(), *exclude_threads}, stop)
        finally:
            sys.setswitchinterval(previous)


def _tick(
    counts: dict[tuple[str, tuple[CodeType, ...]], int], module_of: dict[CodeType, str], excluded: set[int]
) -> None:
    # A function of its own so that no frame outlives the tick: frames keep their locals alive.
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident in excluded:
            continue
        codes: list[CodeType] = []
        current: FrameType | None = frame
        while current is not None:
            code = current.f_code
            if code not in module_of:
                module_of[code] = str(current.f_globals.get("__name__", "?"))
            codes.append(code)
            current = current.f_back
        codes.reverse()
        key = (names.get(ident) or f"thread-{ident}", tuple(codes))
        counts[key] = counts.get(key, 0) + 1


def _sample(seconds: float, interval: float, excluded: set[int], stop: threading.Event) -> Profile:
    counts: dict[tuple[str, tuple[CodeType, ...]], int] = {}
    module_of: dict[CodeType, str] = {}
    ticks = 0
    start = time.monotonic()
    deadline = start + seconds
    next_tick = start
    while True:
        _tick(counts, module_of, excluded)
        ticks += 1
        next_tick += interval
        now = time.monotonic()
        if next_tick < now:  # fell behind (a slow tick or a GIL-hungry thread): skip, do not burst
            next_tick = now + interval
        if next_tick >= deadline or stop.wait(next_tick - now):
            break
    duration = time.monotonic() - start

    labels: dict[CodeType, str] = {}
    locations: dict[str, tuple[str, int]] = {}
    for code, module in module_of.items():
        label = _label(f"{module}:{code.co_qualname}")
        labels[code] = label
        locations.setdefault(label, (code.co_filename, code.co_firstlineno))
    collapsed: dict[str, int] = {}
    for (thread, codes_key), count in counts.items():
        stack = ";".join([_label(thread), *(labels[c] for c in codes_key)])
        collapsed[stack] = collapsed.get(stack, 0) + count
    return Profile(
        collapsed=collapsed,
        locations=locations,
        ticks=ticks,
        interval=interval,
        duration=duration,
        cancelled=stop.is_set(),
    )

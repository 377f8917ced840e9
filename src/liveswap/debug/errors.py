"""The debug server's exceptions, part of liveswap's hierarchy (see ``liveswap.errors``).

    LiveswapError
     '-- DebugError               anything the debug server raises on purpose
          |-- DebugBindError      the debug address is malformed, not loopback, or in use (also a ValueError)
          |    |-- DebugAddressInUseError   another socket already listens there
          |    '-- DebugPublicAddressError  a TCP address that is not loopback, without allow_public
          |-- DebugServerError    the debug server thread did not start or did not stop in time
          |-- ProfileBusyError    a CPU profile is already running in this process
          '-- HeapNotTracingError heap statistics were asked for while tracemalloc is off

As everywhere in liveswap, ``str(exc)`` is the message and ``exc.hint`` the one line that usually
fixes it; the CLI prints the hint as ``hint: ...`` under the message.
"""

from __future__ import annotations

from liveswap.errors import BindError, LiveswapError

__all__ = [
    "DebugAddressInUseError",
    "DebugBindError",
    "DebugError",
    "DebugPublicAddressError",
    "DebugServerError",
    "HeapNotTracingError",
    "ProfileBusyError",
]


class DebugError(LiveswapError):
    """Base class of the debug server's errors."""


class DebugBindError(BindError, DebugError, ValueError):
    """The debug address could not be parsed, is not loopback (without ``allow_public``), or is in use."""


class DebugAddressInUseError(DebugBindError):
    """Another socket already listens on the debug address (a TCP port in use, or a live unix socket)."""


class DebugPublicAddressError(DebugBindError):
    """A TCP address that is not loopback was given without ``allow_public``: the endpoints show
    stacks, heap sites and run a profiler, so exposing them must be asked for explicitly."""


class DebugServerError(DebugError, RuntimeError):
    """The debug server thread failed to start, or did not stop within its deadline."""


class ProfileBusyError(DebugError):
    """A CPU profile is already being taken in this process; profiles sample every thread, so one at a time."""


class HeapNotTracingError(DebugError):
    """tracemalloc is not tracing, so there are no allocation sites to show."""

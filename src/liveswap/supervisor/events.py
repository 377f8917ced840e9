"""What the supervisor reacts to. Signal handlers, readers and control requests only put one of
these on the queue; ``Supervisor._dispatch`` is the one place that turns them into actions."""

from __future__ import annotations

import signal
from dataclasses import dataclass

__all__ = ["ChildrenExited", "Event", "NotifyReadable", "ReloadAsked", "StopAsked"]


@dataclass(frozen=True)
class ChildrenExited:
    """SIGCHLD: one or more children can be reaped."""


@dataclass(frozen=True)
class NotifyReadable:
    """Datagrams (READY=1, ...) wait on our NOTIFY_SOCKET."""


@dataclass(frozen=True)
class ReloadAsked:
    reason: str  # "signal SIGHUP"


@dataclass(frozen=True)
class StopAsked:
    sig: signal.Signals  # SIGTERM for `liveswap stop`; a second SIGINT stops at once


Event = ChildrenExited | NotifyReadable | ReloadAsked | StopAsked

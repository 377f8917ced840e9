"""What the supervisor owes the processes below it when it is a container's PID 1 (or, elsewhere, their
child subreaper): it reaps every orphan, and it never dies of a signal it does not act on.

Reaping. ``Supervisor.reap`` calls ``waitpid(-1)`` on every SIGCHLD, so whatever was re-parented to
us (the double-forked orphan of a worker's subprocess, a command's own workers) is reaped along with
our workers and helpers. An exit whose pid we do not know yet is kept in :class:`EarlyExits`, because
a worker can exit before its spawn reply (which names its pid) reaches us; but an orphan's exit looks
just the same, and pids are reused, so an entry is only believed for ``EARLY_EXIT_TTL`` seconds. Without
that, a worker that got the pid of an orphan reaped long ago would be taken for dead at birth.

Signals. The kernel delivers to a PID 1 only the signals it has a handler for (SIGKILL and SIGSTOP
from an outer namespace aside); any other process dies of SIGUSR1, SIGUSR2, SIGALRM... by default. So
that ``kill -USR1`` means the same inside and outside a container, the supervisor handles SIGUSR1 and
SIGUSR2 by logging that it ignores them. What happens to each signal is in docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

__all__ = ["EARLY_EXIT_TTL", "IGNORED_SIGNALS", "EarlyExits", "ignore_other_signals"]

log = logging.getLogger("liveswap.supervisor")

EARLY_EXIT_TTL = 60.0  # far longer than a spawn reply takes; far shorter than pids take to come round
MAX_EARLY_EXITS = 4096  # bounds memory under a storm of orphans
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class EarlyExits:
    """Exit codes of reaped pids that were no known worker, helper or template (yet), for a while."""

    def __init__(self, ttl: float = EARLY_EXIT_TTL) -> None:
        self.ttl = ttl
        self._exits: dict[int, tuple[int, float]] = {}  # pid -> (exit code, when reaped), oldest first
        self.reaped = 0  # how many such exits there were (orphans, mostly)

    def add(self, pid: int, code: int) -> None:
        now = time.monotonic()
        self.reaped += 1
        self._exits.pop(pid, None)  # (re-inserted last: the dict stays in reaping order)
        self._exits[pid] = (code, now)
        for old, (_, when) in list(self._exits.items()):
            if now - when <= self.ttl and len(self._exits) <= MAX_EARLY_EXITS:
                break
            del self._exits[old]

    def __contains__(self, pid: object) -> bool:
        entry = self._exits.get(pid) if isinstance(pid, int) else None
        return entry is not None and time.monotonic() - entry[1] <= self.ttl

    def __len__(self) -> int:
        return len(self._exits)

    def pop(self, pid: int) -> int:
        """The exit code of ``pid`` (check ``pid in self`` first: a stale entry is a KeyError)."""
        if pid not in self:
            raise KeyError(pid)
        return self._exits.pop(pid)[0]


def ignore_other_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Handle SIGUSR1 and SIGUSR2 by logging them: without a handler they would end the supervisor
    (and, through PR_SET_PDEATHSIG, every worker with it) outside a container, and vanish inside one."""
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, _ignored, sig)


def _ignored(sig: signal.Signals) -> None:
    log.warning("%s ignored: liveswap reloads on SIGHUP and stops gracefully on SIGTERM, SIGINT or SIGQUIT", sig.name)

"""Linux process helpers: prctl, the child subreaper, dying with a parent, peer credentials, exit codes.

Everything here is a thin, named wrapper around one system facility, so that the modules that use
them say what they do ("die with the supervisor") rather than how (``prctl(1, 9)``).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "EXIT_BOOT_ERROR",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_ORPHANED",
    "EXIT_USAGE",
    "Credentials",
    "adopted_by",
    "alive",
    "wait_exit",
    "become_subreaper",
    "die_with_parent",
    "exit_text",
    "peer_credentials",
    "process_state",
    "ucred_from_ancillary",
    "UCRED_SIZE",
]

# Exit codes, the same for the supervisor, its workers and the CLI.
EXIT_OK = 0
EXIT_ERROR = 1  # a runtime failure: cannot bind, no instance, a reload rolled back, a stop that timed out
EXIT_USAGE = 2  # a bad option value or APP, before anything started (click uses 2 for unknown flags too)
EXIT_BOOT_ERROR = 3  # the app could not start (import error, lifespan failure, unhealthy)
EXIT_ORPHANED = 4  # a worker whose supervisor is gone

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
UCRED_SIZE = _UCRED.size
WAIT_INTERVAL = 0.02  # how often wait_exit looks when the kernel cannot tell it (no pidfd)

_libc: Any = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def become_subreaper() -> None:
    """Orphaned descendants (workers whose forking parent exited) become our children: we reap them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent: int) -> None:
    """SIGKILL us when ``parent`` dies (checked again after setting it: it may already be gone)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


def adopted_by(parent: int, timeout: float = 5.0) -> None:
    """Wait until ``parent`` is our parent (we were forked by a process that exits), then die with it."""
    deadline = time.monotonic() + timeout
    while os.getppid() != parent:
        if time.monotonic() > deadline:
            os._exit(EXIT_ORPHANED)
        time.sleep(0.0002)
    die_with_parent(parent)


class Credentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Credentials:
    """Who is at the other end of a connected unix socket (SO_PEERCRED)."""
    return Credentials(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def ucred_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> Credentials | None:
    """The sender's credentials in a datagram received with SO_PASSCRED (SCM_CREDENTIALS)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return Credentials(*_UCRED.unpack(data[:UCRED_SIZE]))
    return None


def exit_text(code: int) -> str:
    """``os.waitstatus_to_exitcode`` as words: "exit code 3", "killed by SIGKILL"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc/PID/stat ("R", "S", "T" for stopped, "Z"...), "" if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    end = stat.rfind(b")")  # the command name may itself contain ")"
    return stat[end + 2 : end + 3].decode()


def wait_exit(pid: int, control: Path, deadline: float) -> bool:
    """Wait until process ``pid`` has exited (it is not our child: no waitpid); False at the deadline.

    A pidfd says exactly when, whoever the parent is, and cannot be fooled by a reused pid. Without
    one (old kernel, seccomp), poll /proc. With no pid (the instance lives in another pid namespace),
    wait for its control socket to go: it is removed once every worker has exited.
    """
    if pid <= 0:
        while control.exists():
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_INTERVAL)
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        while alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_INTERVAL)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited (a zombie counts)
        while True:
            left = deadline - time.monotonic()
            if poller.poll(max(0, int(left * 1000) + 1)):
                return True
            if left <= 0:
                return False
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, its parent has not reaped it yet) does not."""
    state = process_state(pid)
    if state or os.path.isdir("/proc/self"):  # with /proc, no entry means gone
        return state not in ("", "Z")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

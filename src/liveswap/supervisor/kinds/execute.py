"""Starting an external command as a worker: its command line, its sockets, its environment.

A server learns its listening sockets from liveswap in the ways servers already understand:

- ``LISTEN_FDS`` / ``LISTEN_FDNAMES`` / ``LISTEN_PID`` (systemd socket activation: gunicorn, Go's
  ``coreos/go-systemd``, many others). ``LISTEN_PID`` must be the child's own pid, so the child is
  forked by us and sets it itself just before ``exec``: a shell wrapper would also do, but this
  way the child also gets its own process group and dies with the supervisor (PR_SET_PDEATHSIG,
  which survives ``exec``);
- einhorn's ``EINHORN_FD_COUNT`` / ``EINHORN_FD_<i>``;
- placeholders in the command line (circus's precedent): ``{fd}`` (the first socket), ``{fd:N}`` (the
  N-th, from 0, in ``--bind`` order), ``{fd:NAME}`` (by its systemd name, when liveswap was itself
  socket-activated), ``{fd:health}`` (the private health socket), ``{port}`` and ``{{`` / ``}}``.

The sockets are placed at fds 3, 4, ... in the order of ``--bind``; the private health socket
(named ``liveswap-health``) comes last. Everything else is closed.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..._os import die_with_parent
from ...errors import ConfigError

__all__ = ["HEALTH_NAME", "Placeholders", "exec_child", "expand", "placeholders"]

HEALTH_NAME = "liveswap-health"
FIRST_FD = 3  # SD_LISTEN_FDS_START
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_SIGNALS_TO_RESET = ("SIGPIPE", "SIGXFSZ", "SIGHUP", "SIGINT", "SIGTERM", "SIGQUIT", "SIGCHLD", "SIGUSR1", "SIGUSR2")


@dataclass(frozen=True)
class Placeholders:
    """What the command line asks for: whether it names sockets itself, and the health socket."""

    uses_fds: bool  # {fd} or {fd:NAME}: the server takes its sockets from the command line
    uses_health: bool  # {fd:health}
    uses_port: bool


def placeholders(command: Sequence[str], names: Sequence[str]) -> Placeholders:
    """Check every placeholder of ``command`` against the socket ``names``; raises ConfigError."""
    uses_fds = uses_health = uses_port = False
    keys = fd_keys(names)
    known = ["fd", "port", *(f"fd:{k}" for k in keys), "fd:health"]
    for arg in command:
        for match in _PLACEHOLDER.finditer(arg):
            key = match.group(1)
            if key is None:
                continue
            key = key.replace(" ", "")
            if key == "port":
                uses_port = True
            elif key == "fd:health":
                uses_health = uses_fds = True
            elif key == "fd" or (key.startswith("fd:") and key[3:] in keys):
                uses_fds = True
            else:
                raise ConfigError(
                    f"the command line has an unknown placeholder {match.group(0)!r} (in {arg!r})",
                    hint=f"known: {', '.join('{' + k + '}' for k in known)}; write {{{{ and }}}} for literal braces",
                )
    return Placeholders(uses_fds, uses_health, uses_port)


def fd_name(name: str) -> str:
    """The socket's name in LISTEN_FDNAMES: systemd's rules (no ':', no spaces), "unknown" otherwise
    (a --bind address such as 127.0.0.1:8000 is not a name)."""
    ok = name and len(name) <= 255 and all(33 <= ord(c) < 127 and c != ":" for c in name)
    return name if ok else "unknown"


def fd_keys(names: Sequence[str]) -> dict[str, int]:
    """What ``{fd:KEY}`` may say, and the index of the socket it means."""
    keys = {str(i): i for i in range(len(names))}
    for i, name in enumerate(names):
        if fd_name(name) != "unknown":
            keys.setdefault(fd_name(name), i)
    return keys


def expand(command: Sequence[str], fds: Mapping[str, int], port: int) -> list[str]:
    """The command line with placeholders replaced: ``fds`` maps socket names (and "" for the
    first socket, "health" for the private one) to the fd numbers the child will see."""

    def one(match: re.Match[str]) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        key = (match.group(1) or "").replace(" ", "")
        if key == "port":
            return str(port)
        return str(fds["" if key == "fd" else key[3:]])

    return [_PLACEHOLDER.sub(one, arg) for arg in command]


def exec_child(
    argv: Sequence[str], env: Mapping[str, str], fds: Sequence[int], stderr: int, parent: int, error_pipe: int
) -> None:
    """In the forked child, never returns: own process group, die with ``parent``, ``fds`` moved to
    3, 4, ..., stderr to ``stderr``, default signal dispositions, ``LISTEN_PID`` = our pid, then
    exec. On failure the reason goes to ``error_pipe`` (close-on-exec, so the parent reads EOF on
    success) and the child exits 127."""
    err = error_pipe
    try:
        os.setpgid(0, 0)
        die_with_parent(parent)
        # Out of the way first (a source fd may sit where another one must go), then into place.
        base = FIRST_FD + len(fds) + 1
        err = fcntl.fcntl(error_pipe, fcntl.F_DUPFD_CLOEXEC, base)
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in fds]
        os.dup2(stderr, 2)
        for i, fd in enumerate(moved):
            os.dup2(fd, FIRST_FD + i, inheritable=True)
        os.closerange(FIRST_FD + len(fds), err)
        os.closerange(err + 1, 65536)
        for name in _SIGNALS_TO_RESET:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        child_env = dict(env)
        child_env["LISTEN_PID"] = str(os.getpid())
        os.execvpe(argv[0], list(argv), child_env)
    except BaseException as exc:  # noqa: B036 - anything at all: the parent must hear why
        try:
            os.write(err, f"{type(exc).__name__}: {exc}".encode()[:2000])
        finally:
            os._exit(127)


def health_listener() -> socket.socket:
    """A private loopback listener: the health check reaches only the worker it is passed to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def free_port() -> int:
    """A loopback port nobody listens on now, for ``$PORT`` (the child binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

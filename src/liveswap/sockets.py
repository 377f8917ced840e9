"""Listening sockets: bind them once, inherit them (systemd's LISTEN_FDS), pass them down.

The supervisor owns every listening socket for its whole life and hands the same open sockets to
every worker of every generation, so a connection that arrives while workers change waits in the
kernel's accept queue. We never use SO_REUSEPORT to hand over (a closing socket drops its queue)
and never call shutdown() on a shared socket (it would shut it for every holder).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BindError

__all__ = [
    "accept_queued",
    "BIND",
    "SD_LISTEN_FDS_START",
    "BindSpec",
    "BindSyntax",
    "Listener",
    "adopt_fds",
    "bind_all",
    "describe",
    "inherit_listen_fds",
    "parse_bind",
]

SD_LISTEN_FDS_START = 3
BACKLOG = 2048


@dataclass(frozen=True)
class BindSpec:
    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    text: str = ""


@dataclass(frozen=True)
class BindSyntax:
    """Which address forms an option takes, and how its errors name it and what they suggest."""

    subject: str = "--bind"  # errors read "<subject> '<text>': <what is wrong>"
    example_port: int = 8000  # the port the hints show
    fd: bool = True  # fd://N: a socket the parent process opened
    wildcard: bool = True  # an empty host (":8000") means every interface; else a host must be named
    error: type[BindError] = BindError

    @property
    def forms(self) -> str:
        port = self.example_port
        fd = ", unix:/path/to.sock or fd://3" if self.fd else " or unix:/path/to.sock"
        return f"use HOST:PORT (127.0.0.1:{port}), [IPV6]:PORT ([::1]:{port}){fd}"


BIND = BindSyntax()


@dataclass
class Listener:
    """A listening socket and where it came from (``name`` goes into LISTEN_FDNAMES)."""

    sock: socket.socket
    name: str
    unlink_path: str = ""  # a unix socket path we created and remove at exit


def parse_bind(text: str, syntax: BindSyntax = BIND) -> BindSpec:
    """Parse ``127.0.0.1:8000``, ``[::1]:8000``, ``:8000``, ``unix:/path.sock`` or ``fd://3``.

    ``syntax`` says which of these forms are taken (the debug address takes neither ``fd://`` nor
    an empty host) and how errors read; they are ``syntax.error`` (a ``BindError``) with a hint.
    """
    error, what, hint = syntax.error, f"{syntax.subject} {text!r}", syntax.forms
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise error(f"{what}: no path after 'unix:'", hint=hint)
        return BindSpec("unix", path=path, text=text)
    if text.startswith("fd://"):
        if not syntax.fd:
            raise error(f"{what}: a file descriptor cannot be used here", hint=hint)
        try:
            fd = int(text[5:])
        except ValueError:
            raise error(f"{what}: {text[5:]!r} is not a file descriptor number", hint=hint) from None
        return BindSpec("fd", fd=fd, text=text)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise error(
                f"{what}: an IPv6 address needs brackets and a port, like [::1]:{syntax.example_port}", hint=hint
            )
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise error(f"{what}: no port", hint=hint)
        if ":" in host:
            raise error(f"{what}: put an IPv6 address in brackets, like [{host}]:{port_text}", hint=hint)
    if not host and not syntax.wildcard:
        raise error(
            f"{what}: no host (an empty host would mean every interface)",
            hint=f"write 127.0.0.1:{port_text or syntax.example_port} for this machine only",
        )
    port_hint = f"a port is a number from 0 to 65535, e.g. 127.0.0.1:{syntax.example_port} (port 0 picks a free port)"
    try:
        port = int(port_text)
    except ValueError:
        raise error(f"{what}: port {port_text!r} is not a number", hint=port_hint) from None
    if not 0 <= port <= 65535:
        raise error(f"{what}: port {port} is out of range 0-65535", hint=port_hint)
    return BindSpec("tcp", host=host or "0.0.0.0", port=port, text=text)


def _bind_tcp(spec: BindSpec) -> socket.socket:
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(
            f"cannot bind {spec.text}: {spec.host!r} does not resolve ({exc.strerror})",
            hint="check the host name, or use an IP address",
        ) from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        # SO_REUSEADDR only lets us rebind over TIME_WAIT leftovers; no SO_REUSEPORT (see module doc).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = None
        if exc.errno == 98:  # EADDRINUSE
            hint = f"another process listens on {spec.text}: stop it, or choose another port with --bind"
        elif exc.errno == 13:  # EACCES
            hint = "ports below 1024 need privileges; use a port >= 1024, or socket activation (LISTEN_FDS)"
        elif exc.errno == 99:  # EADDRNOTAVAIL
            hint = f"{spec.host} is not an address of this machine"
        raise BindError(f"cannot bind {spec.text}: {exc.strerror}", hint=hint) from None
    return sock


def _bind_unix(spec: BindSpec) -> tuple[socket.socket, str]:
    path = spec.path
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise BindError(
                f"cannot bind {spec.text}: {path} exists and is not a socket", hint="remove it or choose another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket file from a process that is gone
        else:
            raise BindError(
                f"cannot bind {spec.text}: a process is listening there", hint="stop it, or choose another path"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"cannot bind {spec.text}: {exc.strerror}", hint="check that the directory exists and is writable"
        ) from None
    return sock, path


def _from_fd(spec: BindSpec) -> socket.socket:
    try:
        sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise BindError(
            f"--bind {spec.text}: fd {spec.fd} is not an open socket ({exc.strerror})",
            hint="pass an fd that the parent process opened as a listening socket",
        ) from None
    if sock.type != socket.SOCK_STREAM:
        raise BindError(f"--bind {spec.text}: fd {spec.fd} is not a stream socket")
    return sock


def bind_all(texts: Sequence[str]) -> list[Listener]:
    """Bind every ``--bind`` address (closing what was bound if one fails)."""
    listeners: list[Listener] = []
    try:
        for text in texts:
            spec = parse_bind(text)
            if spec.kind == "tcp":
                listeners.append(Listener(_bind_tcp(spec), text))
            elif spec.kind == "unix":
                sock, path = _bind_unix(spec)
                listeners.append(Listener(sock, text, unlink_path=path))
            else:
                listeners.append(Listener(_from_fd(spec), text))
    except BaseException:
        close_all(listeners)
        raise
    return listeners


def inherit_listen_fds(environ: Mapping[str, str], *, unset: bool = True) -> list[Listener] | None:
    """Take the sockets systemd (or a parent supervisor) passed with LISTEN_FDS, or None if there are none.

    As sd_listen_fds(3): only when LISTEN_PID is our pid; the variables are removed from
    os.environ (``unset``) so that our own children do not inherit them by accident.
    """
    count_text = environ.get("LISTEN_FDS")
    if not count_text:
        return None
    pid_text = environ.get("LISTEN_PID", "")
    if pid_text and pid_text != str(os.getpid()):
        return None
    try:
        count = int(count_text)
    except ValueError:
        raise BindError(f"LISTEN_FDS={count_text!r} is not a number") from None
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    listeners = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(f"LISTEN_FDS={count} but fd {fd} is not a socket ({exc.strerror})") from None
        os.set_inheritable(fd, False)
        listeners.append(Listener(sock, names[i] if i < len(names) else f"fd{fd}"))
    if unset:
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
    return listeners


def adopt_fds(fds: Sequence[int], names: Sequence[str]) -> list[Listener]:
    """Listening sockets received as open fds (a liveswap worker gets them with its spawn request)."""
    listeners = []
    for i, fd in enumerate(fds):
        os.set_inheritable(fd, False)
        listeners.append(Listener(socket.socket(fileno=fd), names[i] if i < len(names) else f"fd{fd}"))
    return listeners


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """A URL-ish description of where a socket listens, for logs."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"


def close_all(listeners: Sequence[Listener]) -> None:
    for lst in listeners:
        lst.sock.close()
        if lst.unlink_path:
            try:
                os.unlink(lst.unlink_path)
            except FileNotFoundError:
                pass


def accept_queued(
    sockets: Sequence[socket.socket],
    protocol: Callable[[], asyncio.Protocol],
    tasks: set[asyncio.Task[Any]],
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """At a final stop, nobody else will accept from these listeners: take every connection waiting
    in their queues (non-blocking listeners) and serve it with ``protocol``; the tasks that attach
    them are kept in ``tasks`` until done, so the caller can wait for them."""
    loop = asyncio.get_running_loop()
    for sock in sockets:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(protocol, conn, ssl=ssl_context))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

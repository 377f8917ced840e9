"""Takeover: a new liveswap instance takes the listening sockets of a running one (risefront,
littleboss, HAProxy's ``-x``), so a new liveswap version, new options or a new virtualenv goes live
without a gap.

Over one control connection, in Envoy's order (fully ready before taking traffic):

1. new -> old ``{"cmd": "takeover"}``; old -> new: ``{"ok": true, "pid", "names"}`` with the
   listening sockets attached (SCM_RIGHTS). The old instance keeps serving.
2. The new instance boots its generation on those sockets and health-checks it. Its workers then
   accept beside the old ones, like a reload's new generation.
3. new -> old ``{"cmd": "release"}``: the old instance stops listening on its control socket (the
   new one binds it), hands over the unix socket files it created, drains its workers and exits.
   If the new instance fails, it closes the connection instead (or dies, which closes it): the old
   instance logs it and goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._os import peer_credentials
from ..errors import ControlError, LiveswapError, NoInstanceError
from ..sockets import Listener, parse_bind
from .paths import socket_path

__all__ = ["Handover", "give_sockets", "take_over", "unix_path"]

MAX_FDS = 64


@dataclass
class Handover:
    """The new instance's side: the old instance's sockets and the connection that releases it."""

    sock: socket.socket
    pid: int  # the old supervisor's
    listeners: list[Listener]

    async def release(self, timeout: float = 10.0) -> dict[str, Any]:
        """Tell the old instance to drain and exit; its answer."""
        self.sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        try:
            writer.write(b'{"cmd": "release"}\n')
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if not line:
            raise ControlError(f"the old instance (pid {self.pid}) closed the takeover connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def abandon(self) -> None:
        self.sock.close()


def take_over(name: str, binds: Sequence[str], timeout: float = 10.0) -> Handover:
    """Ask the instance ``name`` for its listening sockets. Each ``--bind`` address it already
    listens on is reused; the caller binds the rest. Raises NoInstanceError / ControlError."""
    path = socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoInstanceError(
                f"--takeover: no liveswap instance named {name!r} is running (no {path})",
                hint="start it without --takeover, or give the running instance's --name",
            ) from None
        creds = peer_credentials(sock)
        if creds.uid != os.getuid():
            raise ControlError(
                f"--takeover: the instance {name!r} is run by uid {creds.uid}, not by you (uid {os.getuid()})",
                hint="take it over as the user that runs it",
            )
        sock.sendall(b'{"cmd": "takeover"}\n')
        data, fds, _flags, _addr = socket.recv_fds(sock, 65536, MAX_FDS)
    except TimeoutError:
        sock.close()
        raise ControlError(f"--takeover: the instance {name!r} did not answer within {timeout:g} s") from None
    except BaseException:
        sock.close()
        raise
    reply: dict[str, Any]
    try:
        reply = json.loads(data) if data else {"ok": False, "error": "it closed the connection"}
    except ValueError:
        reply = {"ok": False, "error": f"it answered {data[:80]!r}"}
    if not reply.get("ok"):
        for fd in fds:
            os.close(fd)
        sock.close()
        raise ControlError(f"--takeover: the instance {name!r} refused: {reply.get('error')}", hint=reply.get("hint"))
    theirs = [socket.socket(fileno=fd) for fd in fds]
    listeners = []
    for text in binds:
        mine = next((x for x in theirs if _same_address(text, x)), None)
        if mine is not None:
            theirs.remove(mine)
            listeners.append(Listener(mine, text))
    for left in theirs:  # sockets the new options no longer ask for: the old instance closes its own
        left.close()
    sock.settimeout(None)
    return Handover(sock, int(reply.get("pid", creds.pid)), listeners)


def _same_address(text: str, sock: socket.socket) -> bool:
    """Does ``--bind text`` name the address ``sock`` listens on (``127.0.0.1:0`` never does;
    ``localhost:8000`` does for a socket on 127.0.0.1:8000)?"""
    try:
        spec = parse_bind(text)
    except LiveswapError:
        return False
    bound = sock.getsockname()
    if spec.kind == "unix":
        return sock.family == socket.AF_UNIX and os.path.abspath(spec.path) == os.path.abspath(str(bound))
    if spec.kind != "tcp" or spec.port == 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    return any(family == sock.family and addr[:2] == bound[:2] for family, _, _, _, addr in infos[:1])


def give_sockets(conn: socket.socket, listeners: Sequence[Listener], pid: int) -> None:
    """The old instance's side of step 1: send the sockets over ``conn`` (a dup of the control
    connection's fd: asyncio's transport offers no sendmsg). The message is small and the
    connection fresh, so the non-blocking send does not block."""
    payload = json.dumps({"ok": True, "pid": pid, "names": [x.name for x in listeners]}).encode() + b"\n"
    socket.send_fds(conn, [payload], [x.sock.fileno() for x in listeners])


def unix_path(listener: Listener) -> str:
    """The file of a unix socket the new instance now owns (removed when it stops), or ""."""
    try:
        spec = parse_bind(listener.name)
    except LiveswapError:
        return ""
    return spec.path if spec.kind == "unix" else ""

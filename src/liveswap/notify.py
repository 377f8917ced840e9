"""systemd's sd_notify protocol, as sender and as receiver.

Sender: a worker (or liveswap itself, when systemd runs it) sends ``READY=1``, ``RELOADING=1``,
``STOPPING=1``, ``STATUS=...`` as one datagram to the unix socket named by ``NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Receiver: the supervisor binds such a socket with
SO_PASSCRED, so the kernel tells it which pid sent each message, as systemd does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from ._os import UCRED_SIZE, ucred_from_ancillary

__all__ = ["Notifier", "NotifyReceiver", "notify", "parse_message"]


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET`` (does nothing when it is unset)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.target = env.get("NOTIFY_SOCKET", "")

    def __bool__(self) -> bool:
        return bool(self.target)

    def send(self, **fields: str | int) -> bool:
        """Send e.g. ``send(READY=1, STATUS="serving")``; True if it was delivered."""
        if not self.target:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(payload, _address(self.target))
            except OSError:
                return False
        return True

    def reloading(self) -> bool:
        # systemd (Type=notify-reload) wants the CLOCK_MONOTONIC time with RELOADING=1.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)


def notify(**fields: str | int) -> bool:
    """Send one sd_notify message, e.g. ``notify(READY=1)``."""
    return Notifier().send(**fields)


def parse_message(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


class NotifyReceiver:
    """A NOTIFY_SOCKET for our children: a datagram socket in the abstract namespace with SO_PASSCRED."""

    def __init__(self, tag: str) -> None:
        self.name = f"@liveswap/{os.getpid()}/{tag}/{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(_address(self.name))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[tuple[int, dict[str, str]]]:
        """Every pending message as (sender pid, fields); never blocks."""
        out: list[tuple[int, dict[str, str]]] = []
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED_SIZE))
            except (BlockingIOError, InterruptedError):
                return out
            creds = ucred_from_ancillary(ancdata)
            pid = creds.pid if creds is not None else 0
            out.append((pid, parse_message(data)))

    def close(self) -> None:
        self.sock.close()

"""The health check: one HTTP request to a new worker before it takes public traffic, and what its
answer proves."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from ..sockets import Listener
from .generation import BootFailed

__all__ = ["health_host", "probe", "request", "warning_for"]

_HINT_4XX = (
    "point --health-path at a route that answers 200; Django answers 400 to a Host that is not in ALLOWED_HOSTS: "
    "add it there, or pass --health-host"
)


def health_host(listeners: Sequence[Listener]) -> str:
    """The Host header of health checks: the first public TCP address, as a client would name it
    (an app that checks Host, like Django's ALLOWED_HOSTS, must accept it, or the check proves nothing)."""
    for listener in listeners:
        if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = listener.sock.getsockname()[:2]
            if host in ("0.0.0.0", "::"):
                host = "localhost"
            elif ":" in host:
                host = f"[{host}]"
            return f"{host}:{port}"
    return "localhost"


def request(path: str, host: str) -> bytes:
    """The health check's request."""
    return f"GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: liveswap-health\r\nconnection: close\r\n\r\n".encode()


async def probe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, host: str, sent: bool = False
) -> int:
    """Send ``GET path`` on a fresh connection (unless it was ``sent`` already); the status code of
    the answer. Raises BootFailed when the answer is not HTTP."""
    try:
        if not sent:
            writer.write(request(path, host))
        line = await reader.readline()
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise BootFailed(f"health check GET {path} got no HTTP answer ({line[:80]!r})")
    return int(parts[1])


def warning_for(generation: int, statuses: Sequence[int], path: str, host: str) -> tuple[str, str]:
    """A warning and its hint when the health check answered 4xx: it then proves little."""
    bad = sorted({s for s in statuses if 400 <= s < 500})
    if not bad:
        return "", ""
    return (
        f"generation {generation} went live, but its health check GET {path} (Host: {host}) answered "
        f"{', '.join(map(str, bad))}: a 4xx proves little (a broken release may pass it)",
        _HINT_4XX,
    )

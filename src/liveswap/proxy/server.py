"""The proxy's public side: liveswap's own HTTP server (``WorkerServer``) serving a ``ProxyApp``.

So the proxy's clients get every guard a liveswap worker gives its clients: the header-read timeout,
the header size limit, and a drain that answers every request it read (``Connection: close`` on the
last one, idle connections kept for a grace period, WebSockets closed with 1012). It runs in the
caller's event loop (the supervisor's)::

    server = ProxyServer([listener], app, keepalive_timeout=5.0)
    await server.start()          # accepting at once
    ...
    await server.close(30.0)      # stop accepting, drain the clients, close the upstream pools
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from ..http.server import WorkerServer
from .app import ProxyApp

__all__ = ["ProxyServer"]

log = logging.getLogger("liveswap.proxy")


class ProxyServer:
    """Serves ``app`` on ``listeners`` (bound, listening sockets; each is duplicated, so closing the
    proxy closes only its own copies, and the caller's stay open for the next holder).

    ``limits`` are WorkerServer's keyword arguments: ``keepalive_timeout``, ``header_timeout``,
    ``max_header_bytes``, ``idle_grace``, ``max_connections``, ``access_log``, ``http``.
    """

    def __init__(self, listeners: Sequence[socket.socket], app: ProxyApp, **limits: Any) -> None:
        self.app = app
        # The proxy is the edge: the client's address is the peer's, never a header's (uvicorn's
        # proxy_headers would take X-Forwarded-For from 127.0.0.1 peers, and we append the peer);
        # the upstream's Server and Date headers pass through, so uvicorn adds none of its own.
        limits = {"proxy_headers": False, **limits, "server_header": False, "date_header": False}
        # socket(fileno=) reads family, type and protocol back from the kernel. sock.dup() would copy
        # the Python object's, and a socket made with socket.socket() says protocol 0: asyncio then
        # leaves Nagle on for the connections it accepts, and every keep-alive answer waits ~40 ms for
        # the client's delayed ACK.
        copies = [socket.socket(fileno=os.dup(sock.fileno())) for sock in listeners]
        self.server = WorkerServer(app, copies, **limits)
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Start accepting on the listeners."""
        await self.server.startup()
        await self.server.go()
        self._started = True

    async def close(self, timeout: float = 30.0, *, final: bool = True) -> bool:
        """Stop accepting, let every client connection finish within ``timeout`` (True if all did),
        then close every upstream pool.

        ``final`` (the default): nobody else will accept on these listening sockets, so connections
        already queued in the kernel are accepted and answered too, rather than reset when the last
        copy is closed. False when another process takes over the sockets.
        """
        if self._closed:
            return True
        self._closed = True
        try:
            if not self._started:
                return True
            self.server.stop_accepting(final)
            log.info(
                "proxy: stopped accepting; draining %d client connection(s) for up to %.1f s",
                len(self.server.state.connections),
                timeout,
            )
            finished = await self.server.drain(timeout)
            await self.server.shutdown()
            return finished
        finally:
            for sock in self.server.sockets:
                sock.close()
            await self.app.aclose()

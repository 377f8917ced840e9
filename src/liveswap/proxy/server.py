"""The proxy's public side as a server: accepts client connections on listening sockets it is given
and serves them with ``client_side.ClientConnection``, in the caller's event loop (the supervisor's)::

    server = ProxyServer([listener], app, keepalive_timeout=5.0)
    await server.start()          # accepting at once
    ...
    await server.close(30.0)      # stop accepting, drain the clients, close the upstream connections
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from ..sockets import accept_queued
from .app import ProxyApp
from .client_side import ClientConnection, ClientSide

__all__ = ["ProxyServer"]

log = logging.getLogger("liveswap.proxy")


class ProxyServer:
    """Serves ``app`` on ``listeners`` (bound, listening sockets; each is duplicated, so closing the
    proxy closes only its own copies, and the caller's stay open for the next holder).

    The limits, as a liveswap worker has them: ``keepalive_timeout`` (an idle client connection is
    closed after it), ``header_timeout`` (a request head must arrive within it: else 408),
    ``max_header_bytes`` (else 431), ``idle_grace`` (how long an idle connection stays open when
    the proxy drains), ``max_connections`` (0: no limit; beyond it, 503), ``access_log`` (one INFO
    line per answer).
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        app: ProxyApp,
        *,
        keepalive_timeout: float = 5.0,
        header_timeout: float = 10.0,
        max_header_bytes: int = 65536,
        idle_grace: float = 1.0,
        max_connections: int = 0,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.side = ClientSide(
            app._routes,
            keepalive_timeout=keepalive_timeout,
            header_timeout=header_timeout,
            max_header_bytes=max_header_bytes,
            idle_grace=idle_grace,
            max_connections=max_connections,
            access_log=access_log,
        )
        # socket(fileno=) reads family, type and protocol back from the kernel. sock.dup() would copy
        # the Python object's, and a socket made with socket.socket() says protocol 0: asyncio then
        # leaves Nagle on for the connections it accepts, and every keep-alive answer waits ~40 ms for
        # the client's delayed ACK.
        self.sockets = [socket.socket(fileno=os.dup(sock.fileno())) for sock in listeners]
        self.servers: list[asyncio.AbstractServer] = []
        self._adopting: set[asyncio.Task[Any]] = set()  # queued connections accepted at a final stop
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    def _protocol(self) -> ClientConnection:
        return ClientConnection(self.side)

    async def start(self) -> None:
        """Start accepting on the listeners."""
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick())
        for sock in self.sockets:
            self.servers.append(await loop.create_server(self._protocol, sock=sock, backlog=2048))
        self._started = True

    async def _tick(self) -> None:
        # The header timeout, the keep-alive timeout and the linger after an early answer are swept
        # a few times a second (cheaper than a timer per request).
        timeout = self.side.header_timeout
        interval = min(1.0, max(0.05, timeout / 4)) if timeout > 0 else 1.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.side.tick(loop.time())

    async def close(self, timeout: float = 30.0, *, final: bool = True) -> bool:
        """Stop accepting, let every client connection finish within ``timeout`` (True if all did),
        then close every upstream connection.

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
            self.side.draining = True
            if final:
                accept_queued(self.sockets, self._protocol, self._adopting)
            # close() closes only this process's copy of each listening socket: the supervisor and
            # the other generation still hold theirs, so queued connections are not lost.
            for server in self.servers:
                server.close()
            log.info(
                "proxy: stopped accepting; draining %d client connection(s) for up to %.1f s",
                len(self.side.connections) + len(self._adopting),
                timeout,
            )
            self.side.drain()
            if self._adopting:
                await asyncio.gather(*self._adopting, return_exceptions=True)
            try:
                await asyncio.wait_for(self.side.empty.wait(), timeout)
            except TimeoutError:
                log.error(
                    "proxy: drain timeout: %d client connection(s) still open after %.1f s; closing them",
                    len(self.side.connections),
                    timeout,
                )
                for conn in list(self.side.connections):
                    conn.transport.abort()
                return False
            return True
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
            for sock in self.sockets:
                sock.close()
            await self.app.aclose()

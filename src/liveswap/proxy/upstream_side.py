"""The proxy's connections to an upstream: one response at a time, parsed with httptools to find its
end, relayed to the client as it arrives; or, after a ``101 Switching Protocols``, bytes spliced
both ways."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .upstreams import Pool

if TYPE_CHECKING:
    from .client_side import ClientConnection
    from .exchange import Exchange

__all__ = ["UpstreamConnection", "connect"]


async def connect(pool: Pool, timeout: float) -> UpstreamConnection:
    """A new connection to ``pool``'s upstream: raises OSError (refused...) or TimeoutError."""
    loop = asyncio.get_running_loop()
    upstream = pool.upstream
    # An IP address is used as it is (no resolver thread); asyncio sets TCP_NODELAY on the socket.
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: UpstreamConnection(pool), upstream.host, upstream.port), timeout
    )
    return conn


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, lent to one exchange at a time."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.splice: ClientConnection | None = None  # after an upgrade: where the bytes go
        self.idle_since = 0.0
        self.closing = False
        self.reset_parser = False  # a HEAD's answer ended with its head: the parser expects a body
        self.eof_body = False  # the response's body ends when the connection does
        self.held: ClientConnection | None = None  # a client we stopped reading: our buffer is full
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is not None:
            splice.write_up(data)
            return
        ex = self.exchange
        if ex is None:  # nothing was asked: an idle connection the upstream wants closed, or garbage
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upgraded(self, data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self.abort()
            ex.upstream_lost(self, None, f"sent an invalid response ({type(exc).__name__}: {exc})")
        if self.reset_parser:
            self.reset_parser = False
            self.parser = httptools.HttpResponseParser(self)
        ex.client.flush()

    def eof_received(self) -> bool | None:
        self.closing = True
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.pool.conns.discard(self)
        if self in self.pool.spare:
            self.pool.spare.remove(self)
        self.release_client()
        if self.splice is not None:
            client, self.splice = self.splice, None
            client.splice_lost()
        elif self.exchange is not None:
            self.exchange.upstream_lost(self, exc, None)

    def pause_writing(self) -> None:
        # The upstream reads the request body slower than the client sends it: stop reading the client.
        ex = self.exchange
        client = self.splice or (ex.client if ex is not None else None)
        if client is not None and self.held is None:
            self.held = client
            client.hold(1)

    def resume_writing(self) -> None:
        self.release_client()

    def release_client(self) -> None:
        if self.held is not None:
            self.held.hold(-1)
            self.held = None

    # -- httptools ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            parser = self.parser
            ex.response_head(self, parser.get_status_code(), self._reason, self._headers, parser.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_body(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_complete(self)

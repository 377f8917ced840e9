"""The proxy's public side: one asyncio Protocol per client connection, parsing requests with
httptools, with the guards a liveswap worker gives its clients.

- Keep-alive, with ``keepalive_timeout`` for an idle connection; pipelined requests are answered in
  order (the next is forwarded when the previous answer is complete).
- A header-read timeout: a client that trickles its request head is answered 408 and disconnected
  after ``header_timeout`` (a silent connection too); more than ``max_header_bytes`` of head: 431.
- A drain that keeps every promise: the last request received on each connection is answered with
  ``Connection: close`` (a response whose head already promised keep-alive is honoured, and the
  connection is then idle); an idle connection stays open for ``idle_grace``, so that a request
  already on the wire is answered (with ``Connection: close``) rather than reset.
- ``Upgrade`` (WebSocket): after the upstream's ``101``, bytes are spliced both ways, pinned to that
  upstream, in flight until either side closes (``splice.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from ..http.access import AccessLog
from . import messages
from .exchange import Exchange
from .splice import FrameTracker
from .upstreams import Routes

if TYPE_CHECKING:
    from .upstream_side import UpstreamConnection

__all__ = ["ClientConnection", "ClientSide"]

log = logging.getLogger("liveswap.proxy")
access = AccessLog(True)  # written when the side's access_log says so
_LINGER = 5.0  # how long an answered client may go on sending a request body nobody will read


class ClientSide:
    """What the client connections of one server share: the routes, the limits and the drain."""

    def __init__(
        self,
        routes: Routes,
        *,
        keepalive_timeout: float,
        header_timeout: float,
        max_header_bytes: int,
        idle_grace: float,
        max_connections: int,
        access_log: bool,
    ) -> None:
        self.routes = routes
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.idle_grace = idle_grace
        self.max_connections = max_connections
        self.access_log = access_log
        self.connections: set[ClientConnection] = set()
        self.empty = asyncio.Event()
        self.empty.set()
        self.draining = False

    def tick(self, now: float) -> None:
        for conn in list(self.connections):
            conn.tick(now)

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


class ClientConnection(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, side: ClientSide) -> None:
        self.side = side
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.out: list[bytes] = []  # bytes for the client, written at once by flush()
        self.exchange: Exchange | None = None  # the request being answered
        self.reading: Exchange | None = None  # the request whose body is arriving (a later one when pipelined)
        self.queue: list[Exchange] = []  # pipelined requests behind ``exchange``
        self.holds = 0  # reasons not to read the client now (an upstream to connect, a full buffer)
        self.paused = False
        self.write_paused = False
        self.up_reading: UpstreamConnection | None = None  # what feeds us: paused when our buffer is full
        self.splice: UpstreamConnection | None = None
        self.splice_ex: Exchange | None = None
        self.frames: FrameTracker | None = None
        self.early: list[bytes] | None = None  # after an upgrade request: bytes held until the 101
        self.gone = False
        self.draining = False
        self.partial = False  # a request head has begun and is not complete
        self.head_since: float | None = None
        self.idle_since: float | None = None
        self.linger_until: float | None = None
        self.head_bytes = 0
        self.data_len = 0
        self.grace: asyncio.TimerHandle | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = str(peer[0]).encode("latin-1")
        side = self.side
        side.connections.add(self)
        side.empty.clear()
        self.head_since = self.loop.time()  # the first request's clock starts at accept
        if side.max_connections and len(side.connections) > side.max_connections:
            self.transport.write(messages.BUSY_503)
            self.transport.close()
        elif side.draining:  # accepted just as the listener closed
            self.drain()

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.transport.write(data)
            return
        if self.early is not None:
            self.early.append(data)
            return
        self.data_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.early = [data[exc.args[0] :]]
            self._sync_reading()
        except httptools.HttpParserCallbackError:
            log.exception("proxy: failed handling a request; closing the client connection")
            self.cut()
            return
        except httptools.HttpParserError:
            if self.exchange is None and not self.queue:
                self.transport.write(messages.BAD_REQUEST)
            self.cut()
            return
        ex = self.exchange
        if ex is not None:
            ex.flush()
        if self.partial:
            self.head_bytes += len(data)
            if self.head_bytes > self.side.max_header_bytes:
                self._too_large()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.out.clear()
        side = self.side
        side.connections.discard(self)
        if not side.connections:
            side.empty.set()
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        up, self.splice = self.splice, None
        if up is not None:
            up.splice = None
            up.close()  # after what is buffered for it
            if self.splice_ex is not None:
                self.splice_ex.abort()
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.abort()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up_reading is not None:
            self.up_reading.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up_reading is not None:
            self.up_reading.transport.resume_reading()

    # -- httptools ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.partial = True
        self.idle_since = None
        if self.head_since is None:
            self.head_since = self.loop.time()
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.partial = False
        self.head_since = None
        limit = self.side.max_header_bytes
        if self.head_bytes + self.data_len > limit:  # maybe too large: count exactly
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limit:
                self._too_large()
                return
        self.head_bytes = 0
        parser = self.parser
        method = parser.get_method()
        if method == b"CONNECT":
            message = "Method Not Allowed: this is a reverse proxy; CONNECT tunnels are not supported"
            self.transport.write(messages.plain_answer(405, message, "send the request itself", keep_alive=False))
            self.cut()
            return
        upgrade: bytes | None = None
        if parser.should_upgrade():
            upgrade = next((v for n, v in self.headers if n.lower() == b"upgrade"), b"")
        request = messages.request_head(method, self.url, self.headers, self.peer, upgrade)
        ex = Exchange(
            self,
            method,
            self.url,
            request,
            keep_alive=parser.should_keep_alive(),
            http10=parser.get_http_version() == "1.0",
            upgrade=upgrade,
        )
        self.reading = ex
        if self.exchange is None:
            self.exchange = ex
            ex.start()
        else:
            self.queue.append(ex)
            self._sync_reading()

    def on_body(self, data: bytes) -> None:
        ex = self.reading
        if ex is not None:
            ex.body(data)

    def on_message_complete(self) -> None:
        ex = self.reading
        if ex is not None:
            ex.request_complete()
            if ex.done and not ex.keep_alive:
                self.cut()  # the rest of an answered request has arrived: now close

    # -- from the exchanges -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out and not self.gone:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def hold(self, n: int) -> None:
        self.holds += n
        self._sync_reading()

    def _sync_reading(self) -> None:
        want = self.holds <= 0 and not self.queue and self.early is None
        if want == self.paused and not self.gone:
            self.paused = not want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def may_keep_alive(self) -> bool:
        """False for the last request received while draining: its answer closes the connection."""
        return not self.draining or bool(self.queue) or self.partial

    def exchange_done(self, ex: Exchange) -> None:
        ex.done = True
        self.exchange = None
        self.up_reading = None
        self.flush()
        if self.side.access_log:
            path, _, query = ex.target.decode("latin-1").partition("?")
            version = "1.0" if ex.http10 else "1.1"
            access.log(self.peer.decode() or "-", ex.method.decode(), path, query, version, ex.status, ex.age())
        if not ex.keep_alive:
            if ex.request_done or self.reading is not ex:
                self.cut()
            else:  # let the client finish sending: closing now could reset the answer away
                self.linger_until = self.loop.time() + _LINGER
            return
        if self.queue:
            self.loop.call_soon(self._next)
        else:
            self.idle_since = self.loop.time()
            if self.draining and not self.partial:
                self._arm_grace()
        self._sync_reading()

    def _next(self) -> None:
        if self.gone or self.exchange is not None or not self.queue:
            return
        ex = self.queue.pop(0)
        self.exchange = ex
        ex.start()
        ex.flush()
        self._sync_reading()

    def cut(self) -> None:
        """Close after what was written (an upstream failed mid-answer, or this was the last answer)."""
        self.flush()
        self.transport.close()

    def splice_to(self, up: UpstreamConnection, ex: Exchange, rest: bytes) -> None:
        """The upstream switched protocols: bytes both ways from now on."""
        self.splice = up
        self.splice_ex = ex
        up.splice = self
        self.exchange = None
        self.up_reading = up
        if self.write_paused:
            up.transport.pause_reading()
        early, self.early = self.early or [], None
        if ex.upgrade is not None and ex.upgrade.lower() == b"websocket":
            self.frames = FrameTracker(self.transport)
        self.write_up(rest)
        if early:
            up.transport.write(b"".join(early))
        self._sync_reading()
        if self.draining:
            self.drain()

    def write_up(self, data: bytes) -> None:
        """Bytes from a spliced upstream to the client."""
        self.flush()
        if self.frames is None:
            self.transport.write(data)
        elif data:
            self.frames.relay(data)

    def splice_lost(self) -> None:
        if self.splice_ex is not None:
            self.splice_ex.abort()
        self.splice = None
        self.cut()

    # -- timers and the drain -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        side = self.side
        if self.gone or self.transport.is_closing():
            return
        if self.head_since is not None and 0 < side.header_timeout < now - self.head_since:
            if self.exchange is None and not self.queue:
                self.transport.write(messages.TIMEOUT_408)
            self.cut()
        elif self.idle_since is not None and now - self.idle_since > side.keepalive_timeout:
            self.cut()
        elif self.linger_until is not None and now > self.linger_until:
            self.cut()

    def drain(self) -> None:
        """Graceful close of this connection: see the module's docstring."""
        self.draining = True
        if self.frames is not None:
            self.frames.close_at_boundary()  # a WebSocket: 1012, service restart
        elif self.splice is None and self.exchange is None and not self.queue and not self.partial:
            self._arm_grace()

    def _arm_grace(self) -> None:
        if self.grace is None and not self.gone:
            self.grace = self.loop.call_later(self.side.idle_grace, self._grace_over)

    def _grace_over(self) -> None:
        # Close only if still idle: a request that arrived in the grace period is being answered with
        # Connection: close, which closes the connection after its response.
        self.grace = None
        if not self.gone and self.exchange is None and not self.queue and not self.partial:
            self.transport.close()

    def _too_large(self) -> None:
        if self.exchange is None and not self.queue:
            self.transport.write(messages.TOO_LARGE_431)
        self.reading = None
        self.cut()

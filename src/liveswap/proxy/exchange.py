"""One request through the proxy: the client's request to an upstream, its answer back.

The upstream is picked when the request's head is complete (round robin, counted in flight in the
same step); the head is rewritten (``messages.request_head``) and the body follows as it arrives, on
a pooled keep-alive connection. The answer is relayed as it arrives, chunk by chunk; the request
leaves the in-flight count when the answer is complete.

What the client sees when the upstream fails:

- before any byte of the answer: ``502`` (``504`` for a connect timeout), a plain-text reason naming
  the upstream and a ``hint:`` line; never a traceback;
- after the head went out: the connection is closed mid-body (the client sees a short body or an
  unfinished chunked stream, never a complete-looking wrong one);
- with no upstream at all for the hold timeout: ``503``.

Nothing that may have reached the upstream is sent twice. Only a GET or HEAD without a body whose
connection could not be made is tried once more, on the next upstream in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from . import messages
from .messages import Headers
from .upstream_side import UpstreamConnection, connect
from .upstreams import NoUpstream, Pool

if TYPE_CHECKING:
    from .client_side import ClientConnection

__all__ = ["Exchange"]

log = logging.getLogger("liveswap.proxy")

_RETRYABLE = frozenset({b"GET", b"HEAD"})
_NO_BODY = frozenset({204, 304})


class Exchange:
    """A request and its response; ``client`` calls in with the request, the upstream connection
    with the response."""

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        target: bytes,
        request: messages.Request,
        *,
        keep_alive: bool,
        http10: bool,
        upgrade: bytes | None,
    ) -> None:
        self.client = client
        self.method = method
        self.target = target
        self.head = request.head  # without its final empty line: a Host is added when the client sent none
        self.has_host = request.has_host
        self.chunked_in = request.chunked
        self.keep_alive = keep_alive  # the client's connection, after this exchange
        self.http10 = http10
        self.upgrade = upgrade
        self.retries = 1 if method in _RETRYABLE and not request.has_body and upgrade is None else 0
        self.pending: list[bytes] = []  # request bytes for the upstream, not written yet
        self.request_done = False
        self.pool: Pool | None = None
        self.up: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.status = 0
        self.received = time.perf_counter()  # the request's head, for the access log's duration
        self.started = False  # the response's head went to the client
        self.interim = False  # an 1xx answer is being relayed
        self.rechunk = False  # the client gets the body chunked by us
        self.up_keep_alive = False
        self.done = False  # answered: what is left of the request body is dropped

    # -- the request, from the client ---------------------------------------------------------

    def age(self) -> float:
        """Seconds since the request's head arrived."""
        return time.perf_counter() - self.received

    def start(self) -> None:
        routes = self.client.side.routes
        pool = routes.pick()
        if pool is not None:
            self.pool = pool
            conn = pool.take(self.client.loop.time())
            if conn is not None:
                self._attach(conn)
                return
        # Hold the client's bytes back until the upstream is connected (or there is none).
        self.client.hold(1)
        self.task = self.client.loop.create_task(self._connect())

    async def _connect(self) -> None:
        side = self.client.side
        routes = side.routes
        try:
            while True:
                if self.pool is None:
                    try:
                        self.pool = await routes.acquire()
                    except NoUpstream:
                        self.answer(503, *messages.no_upstream(routes.hold_timeout))
                        return
                    conn = self.pool.take(self.client.loop.time())
                    if conn is not None:
                        break
                upstream = self.pool.upstream
                try:
                    conn = await connect(self.pool, routes.connect_timeout)
                    break
                except TimeoutError:
                    self._release()
                    reason = f"Gateway Timeout: upstream {upstream} did not accept a connection in time"
                    self.answer(504, reason, messages.DOWN_HINT)
                    return
                except OSError as exc:
                    self._release()
                    if self.retries:
                        self.retries -= 1
                        continue  # not a byte was written: the next upstream in turn may take it
                    what = (
                        "refused the connection"
                        if isinstance(exc, ConnectionRefusedError)
                        else "could not be connected to"
                    )
                    reason = f"Bad Gateway: upstream {upstream} {what} ({exc})"
                    log.warning("proxy: %s %s: %s", self.method.decode("latin-1"), self.target[:200], reason)
                    self.answer(502, reason, messages.DOWN_HINT)
                    return
        finally:
            self.task = None
            self.client.hold(-1)
        if self.client.gone:
            conn.close()
            self._release()
            return
        self._attach(conn)
        self.flush()

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        conn.exchange = self
        client = self.client
        client.up_reading = conn
        if client.write_paused:
            conn.transport.pause_reading()
        host = b"" if self.has_host else b"host: %s\r\n" % conn.pool.upstream.address.encode()
        self.pending.insert(0, self.head + host + b"\r\n")

    def body(self, data: bytes) -> None:
        if self.done:
            return
        if self.chunked_in:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.pending.append(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked_in and not self.done:
            self.pending.append(b"0\r\n\r\n")

    def flush(self) -> None:
        """Write what the client sent so far to the upstream, once it is connected."""
        up = self.up
        pending = self.pending
        if up is not None and pending:
            up.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    def abort(self) -> None:
        """The client went away: nobody to answer. The upstream connection cannot be reused."""
        if self.task is not None:
            self.task.cancel()
        up = self.up
        if up is not None:
            self.up = None
            up.exchange = None
            up.splice = None
            up.release_client()
            up.abort()
        self._release()

    def _release(self) -> None:
        pool = self.pool
        if pool is not None:
            self.pool = None
            self.client.side.routes.release(pool)

    # -- the response, from the upstream ------------------------------------------------------

    def response_head(self, up: UpstreamConnection, status: int, reason: bytes, headers: Headers, keep: bool) -> None:
        client = self.client
        if status < 200 and status != 101:  # 100 Continue and the like: passed on as they are
            self.interim = True
            if not self.http10:
                lines = [messages.status_line(status, reason)]
                lines += [b"%s: %s\r\n" % h for h in headers]
                client.send(b"".join(lines) + b"\r\n")
            return
        self.status = status
        self.up_keep_alive = keep
        skip = messages.hop_by_hop(headers)
        out = [messages.status_line(status, reason)]
        length = chunked = False
        upgrade = b""
        for name, value in headers:
            low = name.lower()
            if low in skip or low.startswith(b"proxy-"):
                if low == b"transfer-encoding":
                    chunked = True
                elif low == b"upgrade":
                    upgrade = value
                continue
            if low == b"content-length":
                length = True
            out += (name, b": ", value, b"\r\n")
        head_only = self.method == b"HEAD"
        bodiless = head_only or status in _NO_BODY or status == 101
        keep_alive = self.keep_alive and self.request_done and client.may_keep_alive()
        if status == 101:
            out += (b"connection: upgrade\r\nupgrade: ", upgrade or self.upgrade or b"", b"\r\n")
        else:
            if self.upgrade is not None:
                keep_alive = False  # we stopped reading the client's requests at its upgrade
            if bodiless:
                if chunked and head_only and not self.http10:
                    out.append(b"transfer-encoding: chunked\r\n")
            elif not length:
                up.eof_body = not chunked
                if self.http10:
                    keep_alive = False  # the end of the body is the end of the connection
                else:
                    self.rechunk = True
                    out.append(b"transfer-encoding: chunked\r\n")
            if not keep_alive:
                out.append(b"connection: close\r\n")
            elif self.http10:
                out.append(b"connection: keep-alive\r\n")
        self.keep_alive = keep_alive
        out.append(b"\r\n")
        client.send(b"".join(out))
        self.started = True
        if head_only:  # no body follows, whatever the head says: the parser must not wait for one
            up.reset_parser = True
            self._finish(up, keep)

    def response_body(self, data: bytes) -> None:
        if self.rechunk:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.client.send(data)

    def response_complete(self, up: UpstreamConnection) -> None:
        if self.interim:
            self.interim = False
            return
        if self.status == 101:
            return  # httptools raises HttpParserUpgrade next: see upgraded()
        if self.rechunk:
            self.client.send(b"0\r\n\r\n")
        self._finish(up, self.up_keep_alive and self.request_done and self.upgrade is None)

    def _finish(self, up: UpstreamConnection, reuse: bool) -> None:
        self.up = None
        up.exchange = None
        up.eof_body = False
        up.release_client()
        client = self.client
        if client.up_reading is up:
            client.up_reading = None
            if client.write_paused:
                up.transport.resume_reading()
        if reuse and not up.closing and self.pool is not None:
            self.pool.give_back(up, client.loop.time())
        else:
            up.close()
        self._release()
        client.exchange_done(self)

    def upgraded(self, up: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: from now on, bytes both ways, until either side closes. The lease
        on the upstream is kept until then."""
        if self.status != 101:
            up.abort()
            return
        self.up = None
        up.exchange = None
        self.client.splice_to(up, self, rest)

    def upstream_lost(self, up: UpstreamConnection, exc: Exception | None, invalid: str | None) -> None:
        if self.up is not up:
            return
        if up.eof_body and exc is None and self.started and invalid is None:
            self.response_complete(up)  # the body that lasts until the connection ends has ended
            self.client.flush()
            return
        self.up = None
        up.exchange = None
        self._release()
        where = f"upstream {up.pool.upstream}"
        if self.started:
            log.warning(
                "proxy: %s failed mid-response (%s); closing the client connection", where, invalid or exc or "EOF"
            )
            self.client.cut()
            return
        if invalid is not None:
            reason = invalid
        elif exc is None:
            reason = "closed the connection before answering"
        else:
            reason = f"reset the connection before answering ({type(exc).__name__}: {exc})"
        reason = f"Bad Gateway: {where} {reason}"
        log.warning("proxy: %s %s: %s", self.method.decode("latin-1"), self.target[:200], reason)
        self.answer(502, reason, messages.CRASH_HINT)

    def answer(self, status: int, message: str, hint: str) -> None:
        """The proxy's own answer, instead of an upstream's."""
        client = self.client
        if client.gone:
            return
        self.status = status
        self.keep_alive = self.keep_alive and self.request_done and self.upgrade is None and client.may_keep_alive()
        client.send(messages.plain_answer(status, message, hint, keep_alive=self.keep_alive))
        self.started = True
        client.exchange_done(self)

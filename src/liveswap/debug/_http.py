"""HTTP/1.1 over asyncio streams with h11, for the supervisor's debug port (``supervisor_proxy``).

The supervisor must stay small (no uvicorn, no HTTP client library), so this is the least HTTP it
needs: ``ServerConnection`` reads whole requests (body included, bounded) from one client and writes
answers, streamed or not, with keep-alive; ``WorkerRequest`` sends one request to a worker's debug
server over its unix socket and streams the answer back. h11 does the parsing and framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

__all__ = ["HOP_BY_HOP", "HTTPError", "Headers", "Request", "ServerConnection", "WorkerRequest"]

Headers = list[tuple[bytes, bytes]]

REQUEST_TIMEOUT = 10.0  # from connect (or the previous answer) to a whole request; then we hang up
MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
TEXT = b"text/plain; charset=utf-8"
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
SECURITY_HEADERS: Headers = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
]


@dataclass
class Request:
    """One request, read whole."""

    method: str
    target: bytes  # as received: path and query, still percent-encoded
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


class HTTPError(Exception):
    """An error answer: ``status``, a message and a hint, as text; ``headers`` go with it."""

    def __init__(self, status: int, message: str, hint: str | None = None, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.headers = headers or []


class ServerConnection:
    """One connection to the debug port: h11's state plus the stream, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.head_only = False  # answering a HEAD request

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(65536))  # b"" at EOF: h11 reports it

    async def read_request(self) -> Request | None:
        """The next request with its whole body, or None when the client is done.

        Raises TimeoutError for a client that does not send a whole request within REQUEST_TIMEOUT,
        whether it trickles one in or keeps an idle keep-alive connection open.
        """
        async with asyncio.timeout(REQUEST_TIMEOUT):
            event = await self._event()
            if not isinstance(event, h11.Request):
                return None  # ConnectionClosed
            if self.conn.they_are_waiting_for_100_continue:  # curl does for bodies over 1 KiB
                self.writer.write(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = bytearray()
            while isinstance(part := await self._event(), h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    raise HTTPError(
                        413,
                        f"request body larger than {MAX_BODY} bytes",
                        "the debug endpoints take their arguments in the query string",
                    )
        self.head_only = event.method == b"HEAD"
        url = urlsplit(bytes(event.target).decode("latin-1"))
        return Request(
            method=event.method.decode("ascii", "replace"),
            target=bytes(event.target),
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers=[(bytes(k), bytes(v)) for k, v in event.headers],
            body=bytes(body),
        )

    def start(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        if not reason:
            with contextlib.suppress(ValueError):
                reason = HTTPStatus(status).phrase.encode()
        self.writer.write(self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))

    async def data(self, chunk: bytes) -> None:
        if chunk and not self.head_only:
            self.writer.write(self.conn.send(h11.Data(data=chunk)))
            await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()

    async def respond(
        self, status: int, body: bytes, content_type: bytes = TEXT, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.start(
            status,
            [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *headers,
            ],
        )
        if body and not self.head_only:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        await self.end()

    def next_cycle(self) -> bool:
        """Ready for another request on this connection (keep-alive)?"""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


class WorkerRequest:
    """One request to a worker's debug server over its unix socket (``Connection: close``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    @classmethod
    async def request(
        cls, path: Path, method: str, target: bytes, headers: Headers, body: bytes = b""
    ) -> tuple[WorkerRequest, h11.Response]:
        """Connect, send the request, read the answer's head; then iterate ``body()`` and ``close()``."""
        reader, writer = await asyncio.open_unix_connection(str(path))
        req = cls(reader, writer)
        try:
            head = [*headers, (b"host", b"liveswap-debug"), (b"connection", b"close")]
            if body or method not in ("GET", "HEAD"):
                head.append((b"content-length", str(len(body)).encode()))
            writer.write(req.conn.send(h11.Request(method=method, target=target, headers=head)))
            if body:
                writer.write(req.conn.send(h11.Data(data=body)))
            writer.write(req.conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = await req._event()
                if isinstance(event, h11.Response):
                    return req, event
                if not isinstance(event, h11.InformationalResponse):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} from the worker")
        except BaseException:
            req.close()
            raise

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the worker closed the connection before it finished its answer")
            else:
                return event

    async def body(self) -> AsyncIterator[bytes]:
        while isinstance(event := await self._event(), h11.Data):
            yield bytes(event.data)

    def close(self) -> None:
        self.writer.close()

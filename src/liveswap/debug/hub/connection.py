"""One client of the hub's port: HTTP/1.1 over asyncio streams, parsed and framed by h11.

The supervisor must stay small (no uvicorn, no HTTP client library), so this is the least HTTP it
needs: ``ServerConnection`` reads whole requests (body included, bounded) from one client and writes
answers, streamed or not, with keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from .._common import SECURITY_HEADERS, TEXT, Headers, HTTPError

__all__ = ["MAX_HEAD", "Request", "ServerConnection"]

REQUEST_TIMEOUT = 10.0  # from connect (or the previous answer) to a whole request; then we hang up
MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


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
        self, status: int, body: bytes, content_type: str = TEXT, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.start(
            status,
            [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *headers,
            ],
        )
        if body and not self.head_only:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        await self.end()

    async def error(self, exc: HTTPError) -> None:
        await self.respond(exc.status, exc.body(), headers=exc.headers)

    def next_cycle(self) -> bool:
        """Ready for another request on this connection (keep-alive)?"""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

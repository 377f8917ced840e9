"""One WSGI request on the native path: its body read by the loop, the app called once, the response
framed and written with backpressure.

- The body is kept in memory up to ``SPOOL_BYTES``, in a temporary file beyond, before the app is
  called: a slow upload never ties up the app (gunicorn's sync worker gives it the worker).
- ``--threads 1``: the app runs in the loop's thread, one request at a time. A list, or a Django or
  Flask response with a buffered body, is written at once (a list with ``Content-Length``), pumped
  while the transport takes it; any other iterable may block between chunks (a stream): it goes on
  in the stream thread (``wsgi_threads.py``) and the next requests wait for it to end.
- ``--threads N``: the app and its iterable run in the pool (``wsgi_threads.py``).
- Framing (PEP 3333, RFC 9112): the app's ``Content-Length``; else one we compute when the whole
  body is known; else chunked on HTTP/1.1, or close-delimited on HTTP/1.0. HEAD, 1xx, 204 and 304
  carry no body. Past its ``Content-Length`` a body is cut short; a shorter one closes the connection.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from .wsgi import FileWrapper, close_iterable
from .wsgi_sendfile import send_file
from .wsgi_threads import ThreadedResponse, buffered

__all__ = ["SPOOL_BYTES", "WSGICycle"]

log = logging.getLogger("liveswap.worker")

SPOOL_BYTES = 1024 * 1024  # request bodies beyond this go to a temporary file
_CHUNKS_PER_TURN = 64  # an iterable's chunks written before the pump lets the loop turn

_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class WSGICycle(ThreadedResponse):
    message_event = SimpleNamespace(set=lambda: None)  # uvicorn's connection_lost sets it

    def __init__(self, proto: Any, environ: dict[str, Any], keep_alive: bool, expect_100: bool) -> None:
        self.proto = proto
        self.environ = environ
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.special: bytes | None = None
        self.active = False
        self.more_body = True  # the request body is still arriving
        self.body = bytearray()
        self.spool: Any = None
        self.disconnected = False
        # The response, as the app gives it.
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.response_started = False  # the head went out
        self.response_complete = False
        self.head_only = environ["REQUEST_METHOD"] == "HEAD"
        self.no_body = False
        self.chunked = False
        self.remaining: int | None = None  # bytes still owed to the Content-Length
        self.result: Any = None
        self.iterator: Iterator[bytes] | None = None
        self.thread = False
        self.handed = False  # the thread handed a write over: the loop may not write a whole body
        self.inflight = 0
        self.cond: threading.Condition | None = None
        self.code = 0  # the status sent
        self.started = 0.0  # when the head was parsed (only with the access log or metrics on)

    # The request --------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.spool is not None:
            self.spool.write(data)
            return
        self.body += data
        if len(self.body) > SPOOL_BYTES:
            self.spool = tempfile.TemporaryFile()
            self.spool.write(self.body)
            self.body = bytearray()

    def activate(self) -> None:
        """This request is the connection's current one: answer it once its body is complete."""
        if self.disconnected or self.response_complete:
            return
        self.active = True
        if self.special is not None:
            self._answer_special(self.special)
            return
        if self.more_body and self.expect_100:
            self.proto.transport.write(_100)
        if not self.more_body:
            self.run()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - never into the parser's callback (it would answer 400)
            self._failed(exc)

    def _run(self) -> None:
        if self.special is not None:
            self._answer_special(self.special)
            return
        if self.disconnected or self.response_complete:
            return
        environ = self.environ
        if "wsgi.input" not in environ:  # (else it waited for a stream to end: its input is ready)
            if self.spool is not None:
                length = self.spool.tell()
                self.spool.seek(0)
                environ["wsgi.input"] = self.spool
            else:
                length = len(self.body)
                environ["wsgi.input"] = io.BytesIO(self.body)
            if length or "CONTENT_LENGTH" in environ:
                environ["CONTENT_LENGTH"] = str(length)  # a chunked body too: its length is known now
        runner = self.proto.runner
        if runner.pool is not None:  # --threads N: the app and its iterable in the pool
            self._to_thread(runner.pool, self._in_thread)
            return
        if runner.streaming is not None:  # one request at a time: wait for the stream in progress
            runner.waiting.append(self)
            return
        try:
            result = runner.app(environ, self.start_response)
        except BaseException as exc:  # noqa: BLE001 - the app's error becomes a 500, not ours
            self._failed(exc)
            return
        if (type(result) is list or type(result) is tuple) and not self.response_started:
            try:
                body = result[0] if len(result) == 1 else b"".join(result)
            except BaseException as exc:  # noqa: BLE001
                self._failed(exc)
                return
            self._whole(body)
            return
        self.result = result
        if not buffered(result) and not isinstance(result, FileWrapper):
            # A generator may block between chunks (a stream, server-sent events): it goes on in the
            # worker's stream thread, so that the loop keeps turning (drains, health, slow clients).
            runner.streaming = self
            self._to_thread(runner.stream_pool(), self._iterate)
            return
        self._send_file(result)

    def _send_file(self, result: Any) -> None:
        """A buffered response or a ``wsgi.file_wrapper`` (sendfile where it can), from the loop."""
        try:
            if isinstance(result, FileWrapper) and send_file(self, result):
                return
            self.iterator = iter(result)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return
        self._pump()

    def _answer_special(self, answer: bytes) -> None:
        self.proto.transport.write(answer)  # a 431, 503 or dev's 307: the app is not called
        self.code = int(answer[9:12])
        self.keep_alive = False
        self.response_started = True
        self._complete()

    # What the app calls -------------------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.response_started or self.handed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response was called a second time without exc_info (PEP 3333)")
        if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError(f"invalid status {status!r}: a str like '200 OK' (PEP 3333)")
        self.status = status
        self.headers = headers
        return self._write

    def _write(self, data: bytes) -> None:
        """PEP 3333's ``write()`` callable."""
        if self.thread:
            self._thread_write(data)
        else:
            self._write_inline(data)

    # The response -------------------------------------------------------------------------------

    def _head(self, length: int | None) -> bytes:
        status = self.status
        if status is None:
            raise RuntimeError("the app returned without calling start_response")
        code = self.code = int(status[:3])
        parts = [b"HTTP/1.1 ", status.encode("latin-1"), b"\r\n"]
        for name, value in self.proto.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        declared = None
        close = False
        for name, value in self.headers:
            lower = name.lower()
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise ValueError(f"invalid response header {name!r}: {value!r}")
            if lower == "content-length":
                declared = int(value)
            elif lower == "connection":
                close = "close" in value.lower()
                self.keep_alive = self.keep_alive and not close
            elif lower == "transfer-encoding":
                continue  # hop-by-hop, ours to choose (PEP 3333 forbids it to the app)
            parts += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        self.no_body = self.head_only or code < 200 or code in (204, 304)
        if declared is not None:
            self.remaining = 0 if self.no_body else declared
        elif length is not None and code >= 200 and code not in (204, 304):
            parts += [b"content-length: ", str(length).encode(), b"\r\n"]
            self.remaining = 0 if self.no_body else length
        elif not self.no_body:
            if self.environ["SERVER_PROTOCOL"] == "HTTP/1.1":
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the end of the body is the end of the connection
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.response_started = True
        return b"".join(parts)

    def _whole(self, body: bytes) -> None:
        try:
            if type(body) is not bytes:
                raise TypeError(f"the app's body is {type(body).__name__}, not bytes (PEP 3333)")
            head = self._head(len(body))
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return
        if self.no_body:
            self.proto.transport.write(head)
        elif self.remaining == len(body):
            self.proto.transport.write(head + body)
        else:
            self._mismatch(head, body)
            return
        self.remaining = 0
        self._complete()

    def _mismatch(self, head: bytes, body: bytes) -> None:
        # Longer than its Content-Length: what is past it is dropped (as gunicorn does), the framing
        # stays right and the connection goes on. Shorter: the client would wait for the rest, so
        # the connection is closed.
        remaining = self.remaining or 0
        self.proto.transport.write(head + body[:remaining])
        if len(body) < remaining:
            log.error(
                "WSGI app %s: body of %d bytes against a Content-Length of %d; closing the connection",
                self.environ["PATH_INFO"],
                len(body),
                remaining,
            )
            self.proto.transport.close()
            self.keep_alive = False
        self.remaining = 0
        self._complete()

    def _send(self, data: bytes) -> None:
        """Write one chunk of the body (the loop's thread)."""
        out = self._frame(data)
        if out:
            self.proto.transport.write(out)

    def _frame(self, data: bytes) -> bytes:
        """The bytes that put ``data`` on the wire: the head first if it has not gone, then ``data``
        as the framing chosen says (nothing for a response without a body)."""
        if self.disconnected or self.response_complete:
            return b""
        head = b"" if self.response_started else self._head(None)
        if type(data) is not bytes:
            raise TypeError(f"the app's body is {type(data).__name__}, not bytes (PEP 3333)")
        if self.no_body or not data:
            return head
        if self.chunked:
            return b"".join((head, b"%x\r\n" % len(data), data, b"\r\n"))
        if self.remaining is not None:
            if len(data) > self.remaining:  # past its Content-Length: dropped, as gunicorn does
                data = data[: self.remaining]
            self.remaining -= len(data)
        return head + data if head else data

    def _pump(self) -> None:
        """Write the iterable while the transport takes it; park when it is full."""
        iterator = self.iterator
        assert iterator is not None
        flow = self.proto.flow
        try:
            for _ in range(_CHUNKS_PER_TURN):
                if self.disconnected:
                    self._close_result()
                    return
                if flow.write_paused:
                    self.proto.writer = self._pump
                    return
                try:
                    chunk = next(iterator)
                except StopIteration:
                    self._end()
                    return
                self._send(chunk)
                if self.remaining == 0:  # its Content-Length is sent: the rest would be dropped
                    self._end()
                    return
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return
        self.proto.loop.call_soon(self._pump)

    def _end(self) -> None:
        try:
            if not self.response_started:
                self.proto.transport.write(self._head(0))
            if self.chunked:
                self.proto.transport.write(b"0\r\n\r\n")
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return
        if self.remaining:
            log.error(
                "WSGI app %s: body %d bytes shorter than its Content-Length; closing the connection",
                self.environ["PATH_INFO"],
                self.remaining,
            )
            self.proto.transport.close()
            self.keep_alive = False
        self._close_result()
        self._complete()

    def _close_result(self) -> None:
        result, self.result = self.result, None
        if result is not None and not self.thread:
            close_iterable(result, self.environ["PATH_INFO"])

    def _failed(self, exc: BaseException) -> None:
        env = self.environ
        if self.disconnected or self.proto.transport.is_closing() or isinstance(exc, ConnectionError):
            # The client went away (the app's write() or our sendfile met it): not the app's error.
            log.debug("client gone during %s %s: %s", env["REQUEST_METHOD"], env["PATH_INFO"], exc)
        else:
            log.error("Exception in WSGI application (%s %s)", env["REQUEST_METHOD"], env["PATH_INFO"], exc_info=exc)
        self._close_result()
        if self.response_complete:
            return
        if not self.response_started and not self.disconnected:
            self.proto.transport.write(_500)
            self.code = 500
            self.response_started = True
        self.proto.transport.close()  # a response already begun cannot be taken back: cut it
        self.keep_alive = False
        self._complete()

    def _complete(self) -> None:
        if self.response_complete:
            return
        self.response_complete = True
        if self.started:
            self.proto.record(self)
        self.body = bytearray()
        if self.spool is not None:
            self.spool.close()
        if not self.keep_alive:
            self.proto.transport.close()
        runner = self.proto.runner
        if runner.streaming is self:
            runner.streaming = None
            if runner.waiting:
                self.proto.loop.call_soon(runner.next_waiting)
        self.proto.on_response_complete()

    def lost(self) -> None:
        """The client went away before the response completed."""
        self.disconnected = True
        if self.cond is not None:
            with self.cond:
                self.cond.notify_all()
        elif self.iterator is not None and self.proto.writer == self._pump:
            self.proto.writer = None
            self._close_result()
        if not self.thread:  # (a thread's response completes when the thread sees it)
            self._complete()

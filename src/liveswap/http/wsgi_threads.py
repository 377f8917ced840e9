"""The native WSGI path's writes from outside the loop's turn.

``--threads N`` runs the app in a pool; with ``--threads 1``, a response that may block between
chunks (a generator: a stream, server-sent events) is iterated in the worker's one stream thread,
so that the event loop keeps turning. Chunks cross to the loop one at a time; a thread waits while
the transport is full or while more than ``_THREAD_INFLIGHT`` bytes it handed over are unwritten,
so a large or endless response never fills memory. ``write()`` from an app in the loop's thread
goes straight to the socket (``_write_inline``).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from .wsgi import FileWrapper, close_iterable

__all__ = ["ThreadedResponse", "buffered"]

log = logging.getLogger("liveswap.worker")

_THREAD_INFLIGHT = 256 * 1024  # bytes a thread may hand over before the loop has written them


def buffered(result: Any) -> bool:
    """Whether iterating ``result`` cannot block: a Django response that is not streaming, or a
    Flask/werkzeug response whose body is a list (werkzeug wraps it in a ClosingIterator whose close
    callbacks include the response's own). Anything else may be a stream."""
    if getattr(result, "streaming", None) is False:
        return True
    for callback in getattr(result, "_callbacks", ()):
        owner = getattr(callback, "__self__", None)
        if owner is not None and getattr(owner, "is_sequence", False) and not getattr(owner, "is_streamed", False):
            return True
    return False


class ThreadedResponse:
    """The writes of :class:`~.wsgi_cycle.WSGICycle` made while its app runs outside the loop's
    turn: from a thread, or from ``write()`` in the loop's own thread (a mixin: the rest is there)."""

    proto: Any
    environ: dict[str, Any]
    result: Any
    thread: bool
    handed: bool
    inflight: int
    disconnected: bool
    cond: threading.Condition | None
    start_response: Callable[..., Any]
    _whole: Callable[[bytes], None]
    _end: Callable[[], None]
    _failed: Callable[[BaseException], None]
    _send: Callable[[bytes], None]
    _frame: Callable[[bytes], bytes]
    _send_file: Callable[[FileWrapper], None]

    def _write_inline(self, data: bytes) -> None:
        """``write()`` called by an app running in the loop's thread: the loop cannot flush the
        transport while the app runs, so what the transport would buffer without bound is sent
        straight to the socket, waiting for it as gunicorn's sync worker does (plain sockets, when
        the transport holds nothing unsent; else, as under TLS, the transport buffers it)."""
        out = self._frame(data)
        transport = self.proto.transport
        sock = transport.get_extra_info("socket")
        if not out or sock is None or self.proto.scheme == "https" or transport.get_write_buffer_size():
            if out:
                transport.write(out)
            return
        fd = sock.fileno()
        view = memoryview(out)
        while view and not transport.is_closing():
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                # No deadline of its own: the loop does not turn meanwhile, so past --worker-timeout
                # the supervisor finds this worker hung, starts a replacement and kills it (as
                # gunicorn's timeout kills a sync worker stuck writing).
                select.select([], [fd], [], 1.0)
            except OSError as exc:  # the client went away: the app learns it from write()
                transport.close()
                raise ConnectionError(f"client disconnected: {exc}") from None

    def _to_thread(self, pool: Any, work: Callable[[], None]) -> None:
        self.thread = True
        self.cond = threading.Condition()
        pool.submit(work)

    def _in_thread(self) -> None:
        """--threads N: the app, then its response, in a pool thread."""
        loop = self.proto.loop
        try:
            result = self.proto.runner.app(self.environ, self.start_response)
            if type(result) is list and not self.handed:
                body = result[0] if len(result) == 1 else b"".join(result)
                loop.call_soon_threadsafe(self._whole, body)
                return
        except BaseException as exc:  # noqa: BLE001
            loop.call_soon_threadsafe(self._failed, exc)
            return
        if isinstance(result, FileWrapper) and not self.handed:  # the loop sends it (sendfile)
            loop.call_soon_threadsafe(self._file_in_loop, result)
            return
        self.result = result
        self._iterate()

    def _file_in_loop(self, file: FileWrapper) -> None:
        self.thread = False  # from here on the loop's: its close() too
        self.result = file
        self._send_file(file)

    def _iterate(self) -> None:
        """The stream thread: the rest of a response the app already returned."""
        loop = self.proto.loop
        result = self.result
        try:
            for chunk in result:
                if self.disconnected:
                    break
                if chunk:
                    self._thread_write(chunk)
            loop.call_soon_threadsafe(self._end)
        except BaseException as exc:  # noqa: BLE001
            loop.call_soon_threadsafe(self._failed, exc)
        finally:
            close_iterable(result, self.environ["PATH_INFO"])

    def _thread_write(self, data: bytes) -> None:
        """The thread's write: hand the chunk to the loop, waiting while the transport is full."""
        cond = self.cond
        assert cond is not None
        self.handed = True
        stall = self.proto.runner.stall_timeout
        deadline = time.monotonic() + stall if stall > 0 else float("inf")
        with cond:
            while not self.disconnected and (self.inflight > _THREAD_INFLIGHT or self.proto.flow.write_paused):
                if time.monotonic() > deadline:
                    # A client that takes nothing for --worker-timeout holds a thread (with --threads 1,
                    # the worker's only one): cut it off, as gunicorn's timeout would kill the worker.
                    log.warning(
                        "%s %s: the client read nothing for %.0f s; connection closed",
                        self.environ["REQUEST_METHOD"],
                        self.environ["PATH_INFO"],
                        stall,
                    )
                    self.disconnected = True
                    self.proto.loop.call_soon_threadsafe(self.proto.transport.abort)
                    return
                cond.wait(0.5)
            if self.disconnected:
                return
            self.inflight += len(data)
        self.proto.loop.call_soon_threadsafe(self._written, data)

    def _written(self, data: bytes) -> None:
        try:
            self._send(data)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
        cond = self.cond
        assert cond is not None
        with cond:
            self.inflight -= len(data)
            cond.notify_all()
        if self.proto.flow.write_paused:
            self.proto.writer = self._wake

    def _wake(self) -> None:
        cond = self.cond
        if cond is not None:
            with cond:
                cond.notify_all()

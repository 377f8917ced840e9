"""``wsgi.file_wrapper`` with ``sendfile``: the file goes from the page cache to the socket without
passing through Python.

uvloop's transports do not support ``loop.sendfile``, so this works beside the transport: once the
response head is written and the transport holds nothing unsent (it is idle, and the connection's
next response waits for this one to complete), ``os.sendfile`` writes the file on a duplicate of the
socket's descriptor, waiting for it to be writable with ``add_writer`` on that duplicate when the
socket is full (the transport's own descriptor is the loop's, and stays untouched). Only for plain
TCP and Unix sockets (TLS needs the transport) and a real file of known length; anything else is
read in blocks through the transport (``WSGICycle._pump``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .wsgi import FileWrapper

__all__ = ["send_file"]

log = logging.getLogger("liveswap.worker")


def send_file(cycle: Any, wrapper: FileWrapper) -> bool:
    """Send ``wrapper``'s file as ``cycle``'s response with sendfile; False: not possible here (the
    caller pumps it instead, nothing having been written)."""
    proto = cycle.proto
    transport = proto.transport
    sock = transport.get_extra_info("socket")
    source = wrapper.fileno()
    if source is None or sock is None or proto.scheme != "http" or cycle.head_only:
        return False
    try:
        start = os.lseek(source, 0, os.SEEK_CUR)
        size = os.fstat(source).st_size - start
    except OSError:
        return False
    if size <= 0:
        return False
    head = cycle._head(size)  # the app's own Content-Length wins; else the file's
    count = cycle.remaining if cycle.remaining is not None else size
    if cycle.no_body or cycle.chunked or count > size:
        cycle.response_started = False  # not ours to send this way: the pump starts over
        return False
    transport.write(head)
    if transport.get_write_buffer_size():  # the head did not all go out: the transport is busy
        return _pump_rest(cycle, wrapper)
    _Sendfile(cycle, os.dup(sock.fileno()), source, start, count).step()
    return True


def _pump_rest(cycle: Any, wrapper: FileWrapper) -> bool:
    cycle.iterator = iter(wrapper)
    cycle._pump()
    return True


class _Sendfile:
    def __init__(self, cycle: Any, fd: int, source: int, offset: int, count: int) -> None:
        self.cycle = cycle
        self.loop = cycle.proto.loop
        self.fd = fd
        self.source = source
        self.offset = offset
        self.left = count
        self.waiting = False

    def step(self) -> None:
        cycle = self.cycle
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        try:
            while self.left > 0 and not cycle.disconnected and not cycle.response_complete:
                try:
                    sent = os.sendfile(self.fd, self.source, self.offset, self.left)
                except BlockingIOError:
                    self.loop.add_writer(self.fd, self.step)
                    self.waiting = True
                    return
                if sent == 0:  # the file shrank under us: the response cannot be completed
                    raise OSError(f"the file ended {self.left} bytes early")
                self.offset += sent
                self.left -= sent
        except OSError as exc:
            self._close()
            if not cycle.disconnected and not cycle.response_complete:
                cycle._failed(exc)
            else:
                cycle._close_result()
            return
        self._close()
        if cycle.disconnected or cycle.response_complete:
            cycle._close_result()
            return
        cycle.remaining = 0
        cycle._end()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

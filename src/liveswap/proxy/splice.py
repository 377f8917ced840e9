"""A WebSocket spliced through the proxy: the bytes pass as they are, both ways. To close it gently
when the proxy drains, the proxy follows the frame boundaries of the upstream's side (a few header
bytes per frame), puts a close frame of its own (1012, service restart: the code that tells a client
to reconnect) between two frames, and drops what the upstream sends after it. The client's reply
goes on to the upstream, which answers and closes: the splice ends."""

from __future__ import annotations

import asyncio

__all__ = ["FrameTracker"]

_CLOSE_1012 = b"\x88\x02\x03\xf4"  # FIN + close, 2 bytes of payload: the code, no reason


def _header_size(head: bytes) -> int:
    second = head[1]
    size = 2 + (2 if second & 0x7F == 126 else 8 if second & 0x7F == 127 else 0)
    return size + 4 if second & 0x80 else size


class FrameTracker:
    """The upstream-to-client direction of one WebSocket."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.left = 0  # payload bytes of the current frame still to come
        self.head = b""  # a frame header received in part
        self.closing = False  # our close frame goes at the next frame boundary
        self.closed = False  # it went: the upstream's frames are dropped from now on

    def relay(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.closing:
            self._scan(data, stop=False)
            self.transport.write(data)
            return
        at = self._scan(data, stop=True)
        self.transport.write(data[:at] + _CLOSE_1012)
        self.closed = True

    def close_at_boundary(self) -> None:
        if self.closing or self.transport.is_closing():
            return
        self.closing = True
        if not self.left and not self.head:
            self.transport.write(_CLOSE_1012)
            self.closed = True

    def _scan(self, data: bytes, *, stop: bool) -> int:
        """Follow ``data``; with ``stop``, return the offset of its first frame boundary."""
        i, n = 0, len(data)
        while True:
            if stop and not self.left and not self.head:
                return i
            if i >= n:
                return n
            if self.left:
                step = min(self.left, n - i)
                self.left -= step
                i += step
                continue
            head = self.head
            want = 2 if len(head) < 2 else _header_size(head)
            take = min(want - len(head), n - i)
            head = self.head = head + data[i : i + take]
            i += take
            if len(head) >= 2 and len(head) == _header_size(head):
                size = head[1] & 0x7F
                if size >= 126:
                    size = int.from_bytes(head[2 : 4 if size == 126 else 10], "big")
                self.left = size
                self.head = b""

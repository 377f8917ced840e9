"""A small load client for streaming responses, which classifies what wrk cannot tell apart.

wrk counts a stream cut mid-body and a connection closed before any response alike, as a "read"
error. This client keeps ``conns`` keep-alive connections (one thread each), requests the
streaming endpoint on each, back to back, and classifies every request exactly once:

    complete                the whole body arrived (its framing ended and it carries the app's end marker)
    cut_mid_body            the head arrived, then the connection ended (EOF or reset) before the body did
    closed_before_response  a clean EOF before any byte of the response
    reset                   a reset (ECONNRESET, EPIPE) before any byte of the response
    refused                 the connection could not be made
    timeout                 no complete answer within ``timeout`` seconds
    bad_response            not a 200, unparsable, or framed complete without the end marker

It also says whether the NEXT request on a connection whose last response promised keep-alive
(no ``Connection: close``) was answered: ``reused`` counts such requests, ``reused_failed`` those
that failed, by class. A client with a pool would send its next request there, so a server that
closes such a connection (or resets it) loses that request.

    python benchmarks/streamclient.py PORT [--seconds 5] [--conns 8]

Loopback only, bounded: every blocking call has a deadline and ``stop()`` joins every thread.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
CLASSES = ("complete", "cut_mid_body", "closed_before_response", "reset", "refused", "timeout", "bad_response")
_RESET = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_END_RE = re.compile(rb"(?:^|\n)end (\S+)\n$")
MAX_EXAMPLES = 10


class _Outcome(Exception):
    def __init__(self, kind: str, message: str, got_head: bool = False, by_reset: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.got_head = got_head
        self.by_reset = by_reset


@dataclass
class StreamResult:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    reused: int = 0  # requests sent on a connection whose previous response promised keep-alive
    reused_failed: dict[str, int] = field(default_factory=dict)
    cut_by_eof: int = 0
    cut_by_reset: int = 0
    server_closes: int = 0  # complete responses that said Connection: close (or were close-framed)
    connections: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # complete streams per version
    examples: list[str] = field(default_factory=list)
    duration: float = 0.0
    unjoined: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.total - self.counts["complete"]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["total"], d["failed"] = self.total, self.failed
        return d


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buf, self.got = sock, deadline, bytearray(), 0

    def fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.got += len(data)
        self.buf += data

    def until(self, sep: bytes, limit: int = 65536) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise _Outcome("bad_response", "line or head too long", got_head=self.got > 0)
            self.fill()

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        try:
            while True:
                self.fill()
        except EOFError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _request(
    sock: socket.socket, request: bytes, timeout: float, on_head: Callable[[], None] | None = None
) -> tuple[bool, str]:
    """One request and its whole response; returns (keep_alive, version) or raises _Outcome.
    ``on_head`` is called once the head has arrived (the body is then on its way)."""
    deadline = time.monotonic() + timeout
    got_head = False
    reader = _Reader(sock, deadline)
    try:
        sock.settimeout(timeout)
        sock.sendall(request)
        head = reader.until(b"\r\n\r\n")
        got_head = True
        if on_head is not None:
            on_head()
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.") or len(lines[0]) < 12:
            raise _Outcome("bad_response", f"status line {lines[0][:60]!r}", got_head=True)
        status = int(lines[0][9:12])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        conn = headers.get(b"connection", b"").lower()
        keep_alive = lines[0].startswith(b"HTTP/1.1") and b"close" not in conn
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            parts = []
            while True:
                size = int(reader.until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    reader.until(b"\r\n")  # no trailers from these apps: the empty line
                    break
                parts.append(reader.exactly(size))
                reader.exactly(2)
            body = b"".join(parts)
        elif b"content-length" in headers:
            body = reader.exactly(int(headers[b"content-length"]))
        else:
            body = reader.rest()  # close-delimited
            keep_alive = False
        if status != 200:
            raise _Outcome("bad_response", f"status {status}", got_head=True)
        m = _END_RE.search(body)
        if not m:
            raise _Outcome("bad_response", f"body without the end marker ({len(body)} bytes)", got_head=True)
        return keep_alive, m.group(1).decode()
    except _Outcome:
        raise
    except EOFError:
        if got_head or reader.got:
            raise _Outcome("cut_mid_body", f"EOF after {reader.got} bytes", got_head=True) from None
        raise _Outcome("closed_before_response", "EOF before any byte of the response") from None
    except TimeoutError:
        raise _Outcome("timeout", f"no complete answer in {timeout:g} s ({reader.got} bytes)", got_head) from None
    except OSError as exc:
        if exc.errno in _RESET:
            if got_head or reader.got:
                message = f"{type(exc).__name__} after {reader.got} bytes"
                raise _Outcome("cut_mid_body", message, got_head=True, by_reset=True) from None
            raise _Outcome("reset", type(exc).__name__) from None
        raise _Outcome("bad_response", f"{type(exc).__name__}: {exc}", got_head) from None
    except ValueError as exc:
        raise _Outcome("bad_response", f"unparsable: {exc}", got_head) from None


class StreamClient:
    """``conns`` threads, each on its own keep-alive connection, requesting ``path`` back to back."""

    def __init__(self, port: int, conns: int = 8, path: str = "/", timeout: float = 5.0, post: bool = False) -> None:
        self.port, self.conns, self.timeout = port, conns, timeout
        if post:
            body = b"x" * 1024
            self.request = (
                f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        else:
            self.request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        self.result = StreamResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._mid_body = 0  # requests whose head has arrived and whose body has not ended yet
        self._heads_seen: dict[int, int] = {}  # slot thread -> 1 while its response is mid-body

    def mid_body(self) -> int:
        """How many responses are mid-body right now (head received, body not ended)."""
        with self._lock:
            return self._mid_body

    def _head_arrived(self) -> None:
        with self._lock:
            self._mid_body += 1
            self._heads_seen[threading.get_ident()] = 1

    def _body_ended(self) -> None:
        """The request of this slot is over (complete or failed): no longer mid-body."""
        with self._lock:
            self._mid_body -= self._heads_seen.pop(threading.get_ident(), 0)

    def start(self) -> None:
        self._t0 = time.monotonic()
        for i in range(self.conns):
            t = threading.Thread(target=self._slot, name=f"stream-slot-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> StreamResult:
        """Let every slot finish the request it is on (bounded by the timeout), then return the counts."""
        self._stop.set()
        end = time.monotonic() + self.timeout + 5
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self.result.unjoined = sum(t.is_alive() for t in self._threads)
        self.result.duration = time.monotonic() - self._t0
        return self.result

    def _count(self, kind: str, reused: bool, message: str = "") -> None:
        with self._lock:
            r = self.result
            r.counts[kind] += 1
            if reused:
                r.reused += 1
                if kind != "complete":
                    r.reused_failed[kind] = r.reused_failed.get(kind, 0) + 1
            if kind != "complete" and len(r.examples) < MAX_EXAMPLES:
                what = "next request on a kept-alive connection" if reused else "first request on a connection"
                r.examples.append(f"[{time.monotonic() - self._t0:7.3f}s] {kind} ({what}): {message}")

    def _slot(self) -> None:
        sock: socket.socket | None = None
        reused = False
        try:
            while not self._stop.is_set():
                if sock is None:
                    try:
                        sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
                    except OSError as exc:
                        kind = "refused" if isinstance(exc, ConnectionRefusedError) else "reset"
                        self._count(kind, False, f"connect: {type(exc).__name__}")
                        time.sleep(0.01)
                        continue
                    with self._lock:
                        self.result.connections += 1
                    reused = False
                try:
                    keep_alive, version = _request(sock, self.request, self.timeout, self._head_arrived)
                except _Outcome as out:
                    if out.kind == "cut_mid_body":
                        with self._lock:
                            if out.by_reset:
                                self.result.cut_by_reset += 1
                            else:
                                self.result.cut_by_eof += 1
                    self._count(out.kind, reused, str(out))
                    sock.close()
                    sock = None
                    continue
                finally:
                    self._body_ended()
                self._count("complete", reused)
                with self._lock:
                    self.result.versions[version] = self.result.versions.get(version, 0) + 1
                    if not keep_alive:
                        self.result.server_closes += 1
                if keep_alive:
                    reused = True
                else:
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--post", action="store_true", help="POST 1 KiB instead of GET")
    args = p.parse_args()
    client = StreamClient(args.port, conns=args.conns, post=args.post)
    client.start()
    time.sleep(args.seconds)
    res = client.stop()
    print(res.as_dict())
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

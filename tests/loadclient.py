"""A load client that counts every request and classifies every failure.

Raw sockets on purpose: no HTTP library, so no hidden retries and no guessing about what
happened on the wire. One thread per connection slot; every attempt is counted exactly once,
either as ``ok`` or under one failure class.

    lc = LoadClient(port=port, mode="keepalive", concurrency=8, timeout=10.0)
    lc.start()                      # returns once every slot has made one attempt
    lc.wait_for(lambda r: "v2" in r.versions, timeout=10.0)
    res = lc.stop()
    assert res.failed == 0, res.summary()
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import re
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FAILURE_CLASSES", "MODES", "Connection", "Example", "LoadClient", "RequestFailed", "Response", "Result"]

MODES = ("keepalive", "close", "post")
FAILURE_CLASSES = ("refused", "reset", "closed_before_response", "http_5xx", "timeout", "bad_response", "other")
MAX_EXAMPLES = 20
_RECV_SIZE = 16384
_MAX_HEAD = 65536
_MAX_LINE = 8192
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.ENOENT}  # ENOENT: unix socket path missing
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_LEN_RE = re.compile(rb"\blen=(\d+)")
_SHA_RE = re.compile(rb"\bsha256=([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class Example:
    """One failure: its class, when (seconds since ``start()``) and what happened on the wire."""

    kind: str
    at: float
    message: str

    def __str__(self) -> str:
        return f"[{self.at:8.3f}s] {self.kind}: {self.message}"


@dataclass
class Result:
    """Counts for one run. ``ok + failed == total`` always holds."""

    total: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_CLASSES, 0))
    examples: dict[str, list[Example]] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)  # x-app-version, in order first seen
    version_counts: dict[str, int] = field(default_factory=dict)
    pids: list[str] = field(default_factory=list)  # x-worker-pid, in order first seen
    pid_counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    connections: int = 0  # successful connects
    idle_closes: int = 0  # idle keep-alive connections the server closed cleanly before we sent
    server_closes: int = 0  # responses carrying Connection: close (or framed by close)
    verified: int = 0  # POST responses whose len=/sha256= matched what we sent
    max_latency: float = 0.0
    started: float = 0.0  # time.monotonic() at start(); example times are relative to it
    duration: float = 0.0
    unjoined_threads: int = 0  # slots still running when stop() gave up waiting (should be 0)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def rps(self) -> float:
        return self.total / self.duration if self.duration > 0 else 0.0

    def summary(self) -> str:
        """A multi-line description for assertion messages."""
        bad = ", ".join(f"{k}={v}" for k, v in self.failures.items() if v) or "none"
        lines = [
            f"total={self.total} ok={self.ok} failed={self.failed} ({bad}) in {self.duration:.2f}s "
            f"({self.rps:.0f} rps, max latency {self.max_latency * 1000:.0f} ms)",
            f"connections={self.connections} idle_closes={self.idle_closes} server_closes={self.server_closes} "
            f"verified={self.verified} statuses={self.statuses}",
            f"versions={self.version_counts} pids={self.pid_counts}",
        ]
        if self.unjoined_threads:
            lines.append(f"WARNING: {self.unjoined_threads} slot thread(s) did not stop in time")
        for kind in FAILURE_CLASSES:
            for ex in self.examples.get(kind, []):
                lines.append(f"  {ex}")
            if self.failures[kind] > len(self.examples.get(kind, [])):
                lines.append(f"  ... {self.failures[kind] - len(self.examples.get(kind, []))} more {kind}")
        return "\n".join(lines)


class _Failure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _PeerClosed(Exception):
    """Clean EOF from the peer."""


def _classify(exc: Exception, phase: str, timeout: float) -> tuple[str, str]:
    """The failure class and a description of an exception raised while connecting, sending or reading."""
    if isinstance(exc, _Failure):
        return exc.kind, str(exc)
    if isinstance(exc, _PeerClosed):
        return "closed_before_response", "clean EOF from the server"
    if isinstance(exc, TimeoutError):
        return "timeout", f"no complete response within {timeout}s ({exc or 'socket timeout'})"
    if isinstance(exc, OSError):
        code = exc.errno or 0
        if code in _REFUSED_ERRNOS and phase == "connect":
            kind = "refused"
        elif code in _RESET_ERRNOS:
            kind = "reset"
        elif code == errno.ETIMEDOUT:
            kind = "timeout"
        else:
            kind = "other"
        return kind, f"{errno.errorcode.get(code, str(code))}: {exc.strerror or exc}"
    return "other", f"{type(exc).__name__}: {exc}"


@dataclass
class Response:
    """One complete response. ``keep_alive`` is False when the server said (or framed by) close."""

    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Reader:
    """Reads one HTTP/1.x response from a socket, every blocking call bounded by ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.received = 0

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(_RECV_SIZE)
        if not data:
            raise _PeerClosed()
        self.received += len(data)
        self.buf += data

    def line(self) -> bytes:
        start = 0
        while (end := self.buf.find(b"\n", start)) < 0:
            if len(self.buf) > _MAX_LINE:
                raise _Failure("bad_response", f"line longer than {_MAX_LINE} bytes: {bytes(self.buf[:80])!r}")
            start = len(self.buf)
            self._fill()
        out = bytes(self.buf[:end]).rstrip(b"\r")
        del self.buf[: end + 1]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def until_close(self) -> bytes:
        try:
            while True:
                self._fill()
        except _PeerClosed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def response(self, method: str) -> Response:
        while True:
            status, version, headers = self._head()
            if not (100 <= status < 200) or status == 101:
                break  # skip interim 1xx responses
        if status == 101 or status < 100:
            raise _Failure("bad_response", f"unexpected status {status}")
        conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in conn_tokens and (version == "HTTP/1.1" or "keep-alive" in conn_tokens)
        te = headers.get("transfer-encoding")
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif te is not None:
            if te.split(",")[-1].strip().lower() != "chunked":
                body, keep_alive = self.until_close(), False
            else:
                body = self._chunked()
        elif "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise _Failure("bad_response", f"bad Content-Length {headers['content-length']!r}")
            body = self.exact(int(values.pop()))
        else:
            body, keep_alive = self.until_close(), False
        return Response(status, headers, body, keep_alive)

    def _head(self) -> tuple[int, str, dict[str, str]]:
        status_line = self.line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not re.fullmatch(rb"\d{3}", parts[1]):
            raise _Failure("bad_response", f"bad status line {status_line[:120]!r}")
        headers: dict[str, str] = {}
        size = len(status_line)
        while line := self.line():
            size += len(line)
            if size > _MAX_HEAD:
                raise _Failure("bad_response", f"response head larger than {_MAX_HEAD} bytes")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise _Failure("bad_response", f"bad header line {line[:120]!r}")
            key = name.decode("latin-1").lower()
            val = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        return int(parts[1]), parts[0].decode(), headers

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = self.line().split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_line):
                raise _Failure("bad_response", f"bad chunk size line {size_line[:40]!r}")
            size = int(size_line, 16)
            if size == 0:
                while self.line():  # trailers, up to the empty line
                    pass
                return b"".join(chunks)
            chunks.append(self.exact(size))
            if self.line():
                raise _Failure("bad_response", "chunk data not followed by CRLF")


class _Stats:
    """Shared counters; every update under one lock, waiters woken through a condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.res = Result(started=time.monotonic())
        self.ready = 0  # slots that finished a first attempt (or ended without one)
        self.running = 0  # slot threads not yet finished
        self.finished_at: float | None = None

    def record(self, kind: str | None, message: str, resp: Response | None, latency: float) -> None:
        with self.cond:
            res = self.res
            res.total += 1
            res.max_latency = max(res.max_latency, latency)
            if resp is not None:
                res.statuses[resp.status] = res.statuses.get(resp.status, 0) + 1
                _tally(res.versions, res.version_counts, resp.headers.get("x-app-version"))
                _tally(res.pids, res.pid_counts, resp.headers.get("x-worker-pid"))
            if kind is None:
                res.ok += 1
            else:
                res.failures[kind] += 1
                examples = res.examples.setdefault(kind, [])
                if len(examples) < MAX_EXAMPLES:
                    examples.append(Example(kind, time.monotonic() - res.started, message))
            self.cond.notify_all()

    def bump(self, name: str) -> None:
        with self.cond:
            setattr(self.res, name, getattr(self.res, name) + 1)

    def snapshot(self) -> Result:
        with self.cond:
            r = self.res
            end = self.finished_at if self.finished_at is not None else time.monotonic()
            return dataclasses.replace(  # copy every mutable field: the caller may keep it
                r,
                failures=dict(r.failures),
                examples={k: list(v) for k, v in r.examples.items()},
                versions=list(r.versions),
                version_counts=dict(r.version_counts),
                pids=list(r.pids),
                pid_counts=dict(r.pid_counts),
                statuses=dict(r.statuses),
                duration=end - r.started,
            )


def _tally(order: list[str], counts: dict[str, int], value: str | None) -> None:
    if value is None:
        return
    if value not in counts:
        order.append(value)
        counts[value] = 0
    counts[value] += 1


class LoadClient:
    """Continuous HTTP/1.1 load from ``concurrency`` threads, each with its own connection.

    ``mode``: ``"keepalive"`` (GET, persistent connections), ``"close"`` (GET, one connection
    per request) or ``"post"`` (POST of random bytes on persistent connections, never retried;
    a ``len=<n>`` / ``sha256=<hex>`` in the response body is checked against what was sent).
    ``timeout`` bounds each attempt (connect + send + complete response). ``max_requests``
    bounds the total number of attempts. ``pause`` is a think time between requests per slot.

    ``pipeline=N`` (keepalive and post modes): each slot writes N requests at once and then reads
    the N responses; each request is counted on its own. A request left unanswered counts as a
    failure too, even after a response that said ``Connection: close``: RFC 9112 lets a client
    retry it, but this client retries nothing, and liveswap promises to answer every request it
    has read.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        mode: str = "keepalive",
        concurrency: int = 8,
        timeout: float = 10.0,
        path: str = "/",
        max_requests: int | None = None,
        unix_path: str | None = None,
        *,
        post_size: tuple[int, int] = (1024, 8192),
        pause: float = 0.0,
        start_timeout: float | None = None,
        pipeline: int = 1,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0 or None, got {max_requests}")
        if not 0 < post_size[0] <= post_size[1]:
            raise ValueError(f"post_size must be (min, max) with 0 < min <= max, got {post_size}")
        if pipeline < 1 or (pipeline > 1 and mode == "close"):
            raise ValueError(f"pipeline must be >= 1 (and 1 in close mode), got {pipeline} in {mode} mode")
        self.pipeline = pipeline
        self.ssl_context = ssl_context  # HTTPS: every connection is wrapped (handshake part of "connect")
        self._server_hostname = None if unix_path is not None else host
        self.mode, self.concurrency, self.timeout, self.path = mode, concurrency, timeout, path
        self.max_requests, self.unix_path, self.post_size, self.pause = max_requests, unix_path, post_size, pause
        self.start_timeout = start_timeout if start_timeout is not None else timeout + 5.0
        self._addr: tuple[int, str | tuple[object, ...]]
        if unix_path is not None:
            self._addr = (socket.AF_UNIX, unix_path)
            host_header = "localhost"
        else:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self._addr = (family, sockaddr)
            host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn = "close" if mode == "close" else "keep-alive"
        method = "POST" if mode == "post" else "GET"
        self._head = f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: liveswap-loadclient\r\n"
        self._head += f"Connection: {conn}\r\n"
        self._stats = _Stats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._issued = 0
        self._result: Result | None = None

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the slots; return once each has finished one attempt (or raise TimeoutError)."""
        if self._threads:
            raise RuntimeError("LoadClient.start() called twice; create a new LoadClient per run")
        self._stats = _Stats()
        self._stats.running = self.concurrency
        for slot in range(self.concurrency):
            t = threading.Thread(target=self._run, args=(slot,), name=f"loadclient-{slot}", daemon=True)
            self._threads.append(t)
            t.start()
        with self._stats.cond:
            ok = self._stats.cond.wait_for(lambda: self._stats.ready >= self.concurrency, self.start_timeout)
        if not ok:
            res = self.stop()
            raise TimeoutError(
                f"load client: not every slot finished a first attempt within {self.start_timeout:.1f}s\n"
                + res.summary()
            )

    def snapshot(self) -> Result:
        """The counts so far (thread-safe copy)."""
        return self._stats.snapshot()

    def wait_for(self, predicate: Callable[[Result], bool], timeout: float) -> Result:
        """Block until ``predicate(result)`` holds (checked after every attempt); return a snapshot.

        The predicate sees the live counters under the lock (no copy per check, to keep CPU
        low), so it must be quick and must not keep the object. Raises TimeoutError, with the
        summary, at the deadline or as soon as every slot has finished (``max_requests``).
        """
        deadline = time.monotonic() + timeout
        stats = self._stats
        with stats.cond:
            while True:
                stats.res.duration = time.monotonic() - stats.res.started
                if predicate(stats.res):
                    return stats.snapshot()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._threads and stats.running == 0):
                    why = f"within {timeout:.1f}s" if remaining <= 0 else "and every slot has finished"
                    raise TimeoutError(f"load client: condition not met {why}\n{stats.snapshot().summary()}")
                stats.cond.wait(remaining)

    def stop(self) -> Result:
        """Stop the slots, letting in-flight attempts finish (each is bounded by ``timeout``)."""
        if self._result is not None:
            return self._result
        if not self._threads:
            raise RuntimeError("LoadClient.stop() called before start()")
        self._stop.set()
        deadline = time.monotonic() + self.timeout + 2.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self._threads)
        with self._stats.cond:
            self._stats.res.unjoined_threads = alive
            self._stats.finished_at = time.monotonic()
        self._result = self._stats.snapshot()
        return self._result

    def __enter__(self) -> LoadClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- slots ------------------------------------------------------------------------------

    def _claim(self, n: int = 1) -> int:
        """Claim up to ``n`` attempts from the ``max_requests`` budget; return how many were granted."""
        with self._stats.cond:
            if self.max_requests is not None:
                n = min(n, self.max_requests - self._issued)
            if n <= 0:
                return 0
            self._issued += n
            return n

    def _unclaim(self, n: int) -> None:
        with self._stats.cond:
            self._issued -= n

    def _mark_ready(self) -> None:
        with self._stats.cond:
            self._stats.ready += 1
            self._stats.cond.notify_all()

    def _run(self, slot: int) -> None:
        st = _Slot(slot)
        ready = False
        try:
            while not self._stop.is_set() and (n := self._claim(self.pipeline)):
                if self.pipeline == 1:
                    self._attempt(st)
                else:
                    self._attempt_pipelined(st, n)
                if not ready:
                    ready = True
                    self._mark_ready()
                if self.pause > 0 and self._stop.wait(self.pause):
                    break
        except BaseException:  # a bug in this client must show up as a failure, not a silent thread death
            self._stats.record("other", f"slot {slot}: load client crashed:\n{traceback.format_exc()}", None, 0.0)
            raise
        finally:
            st.close()
            with self._stats.cond:
                self._stats.ready += 0 if ready else 1
                self._stats.running -= 1
                self._stats.cond.notify_all()

    def _attempt(self, st: _Slot) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        st.seq += 1
        rid = f"s{st.slot}-{st.seq}"
        if st.sock is not None and not self._idle_ok(st, rid):
            return
        phase, sent, reader, resp = "connect", False, None, None
        kind: str | None = None
        message = ""
        wire, body = self._request(st, rid)
        try:
            if st.sock is None:
                st.sock, st.nreq = self._connect(deadline), 0
                self._stats.bump("connections")
            sock = st.sock
            st.nreq += 1
            phase = "send"
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            _sendall(sock, wire)
            sent, phase = True, "response"
            reader = _Reader(sock, deadline)
            resp = reader.response("POST" if self.mode == "post" else "GET")
            kind, message = self._check(resp, body)
            if reader.buf:
                kind, message = "bad_response", f"{len(reader.buf)} unexpected bytes after the response"
        except (_Failure, _PeerClosed, OSError) as e:  # OSError includes TimeoutError
            kind, message = _classify(e, phase, self.timeout)
        latency = time.monotonic() - t0
        if kind is not None:
            got = reader.received if reader is not None else 0
            message = (
                f"{rid} {message} [phase={phase}, request sent={sent}, bytes received={got}, "
                f"latency={latency * 1000:.0f}ms, request #{st.nreq} on its connection]"
            )
        if resp is not None and not resp.keep_alive:
            self._stats.bump("server_closes")
        if kind is not None or resp is None or not resp.keep_alive or self.mode == "close":
            st.close()
        self._stats.record(kind, message, resp, latency)

    def _request(self, st: _Slot, rid: str) -> tuple[bytes, bytes]:
        """The bytes of one request on the wire, and its body (random bytes in post mode)."""
        body = b""
        head = self._head + f"X-Request-Id: {rid}\r\n"
        if self.mode == "post":
            body = os.urandom(st.rng.randint(*self.post_size))
            head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        return head.encode("latin-1") + b"\r\n" + body, body

    def _attempt_pipelined(self, st: _Slot, n: int) -> None:
        """``n`` requests in one write, then ``n`` responses; every request recorded exactly once."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        st.seq += 1
        rids = [f"s{st.slot}-{st.seq}.{j}" for j in range(n)]
        if st.sock is not None and not self._idle_ok(st, rids[0]):
            self._unclaim(n - 1)  # only the first was counted (as a failure); the others were never sent
            return
        requests = [self._request(st, rid) for rid in rids]
        method = "POST" if self.mode == "post" else "GET"
        phase, sent, reader = "connect", False, None
        answered = 0  # responses read so far
        lost_kind, lost_message = "", ""  # why the requests after the answered ones got no response
        failed = False
        first_nreq = 0
        try:
            if st.sock is None:
                st.sock, st.nreq = self._connect(deadline), 0
                self._stats.bump("connections")
            sock = st.sock
            first_nreq = st.nreq + 1
            st.nreq += n
            phase = "send"
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            _sendall(sock, b"".join(wire for wire, _ in requests))
            sent, phase = True, "response"
            reader = _Reader(sock, deadline)
            for j, (_, body) in enumerate(requests):
                resp = reader.response(method)
                kind, message = self._check(resp, body)
                if kind is None and j == n - 1 and reader.buf:
                    kind, message = "bad_response", f"{len(reader.buf)} unexpected bytes after the response"
                answered += 1
                latency = time.monotonic() - t0
                if kind is not None:
                    message = (
                        f"{rids[j]} {message} [pipelined {j + 1} of {n}, bytes received={reader.received}, "
                        f"latency={latency * 1000:.0f}ms, request #{first_nreq + j} on its connection]"
                    )
                if not resp.keep_alive:
                    self._stats.bump("server_closes")
                self._stats.record(kind, message, resp, latency)
                failed = failed or kind is not None
                if not resp.keep_alive:  # a complete response, then the server closes
                    lost_kind = "closed_before_response"
                    lost_message = f"unanswered: the server closed after {rids[j]} (Connection: close)"
                    break
        except (_Failure, _PeerClosed, OSError) as e:  # OSError includes TimeoutError
            lost_kind, lost_message = _classify(e, phase, self.timeout)
        latency = time.monotonic() - t0
        got = reader.received if reader is not None else 0
        for j in range(answered, n):
            where = f"pipelined {j + 1} of {n}, request #{first_nreq + j} on its connection"
            message = (
                f"{rids[j]} {lost_message} [phase={phase}, request sent={sent}, {where}, "
                f"bytes received={got}, latency={latency * 1000:.0f}ms]"
            )
            self._stats.record(lost_kind, message, None, latency)
        if failed or answered < n or lost_kind:
            st.close()

    def _idle_ok(self, st: _Slot, rid: str) -> bool:
        """Before reusing a kept-alive connection, check the server has not closed it meanwhile.

        A clean close found here is not a failure (nothing was sent yet); a reset or unsolicited
        data is, because a correct server does neither to an idle connection.
        """
        if st.sock is None:
            return True
        kind, message = None, ""
        try:
            st.sock.settimeout(0.0)  # with a timeout set, Python would first wait for readability
            data = _tls_pending(st.sock) if isinstance(st.sock, ssl.SSLSocket) else st.sock.recv(256, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing pending: the connection is still open as far as we can know
        except OSError as e:
            kind = "reset" if e.errno in _RESET_ERRNOS else "other"
            message = f"{errno.errorcode.get(e.errno or 0, e.errno)} on idle connection"
        else:
            if data:
                kind, message = "bad_response", f"unsolicited data on idle connection: {data[:80]!r}"
        nreq = st.nreq
        st.close()
        if kind is None:
            self._stats.bump("idle_closes")
            return True
        self._stats.record(kind, f"{rid} {message}, before sending (after {nreq} requests on it)", None, 0.0)
        return False

    def _connect(self, deadline: float) -> socket.socket:
        family, sockaddr = self._addr
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(sockaddr)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self._server_hostname)
        except BaseException:
            sock.close()
            raise
        return sock

    def _check(self, resp: Response, sent_body: bytes) -> tuple[str | None, str]:
        if resp.status >= 500:
            return "http_5xx", f"HTTP {resp.status}: {resp.body[:120]!r}"
        if resp.status >= 400:
            return "other", f"HTTP {resp.status} (client error): {resp.body[:120]!r}"
        if self.mode == "post":
            checked = False
            if m := _LEN_RE.search(resp.body):
                if int(m.group(1)) != len(sent_body):
                    return "bad_response", f"sent {len(sent_body)} bytes, server says len={int(m.group(1))}"
                checked = True
            if m := _SHA_RE.search(resp.body):
                if m.group(1).decode().lower() != hashlib.sha256(sent_body).hexdigest():
                    return "bad_response", f"sha256 of the {len(sent_body)} bytes sent does not match the server's"
                checked = True
            if checked:
                self._stats.bump("verified")
        return None, ""


def _sendall(sock: socket.socket, data: bytes) -> None:
    if isinstance(sock, ssl.SSLSocket):  # it takes no flags (and Python ignores SIGPIPE anyway)
        sock.sendall(data)
    else:
        sock.sendall(data, _SEND_FLAGS)


def _tls_pending(sock: ssl.SSLSocket) -> bytes:
    """What MSG_PEEK tells on a plain socket, for TLS (which cannot peek): b"" if the server closed,
    data if it sent some (consumed: the connection is given up then), BlockingIOError if nothing came.
    TLS records without data (a TLS 1.3 session ticket) are read and count as nothing."""
    try:
        return sock.recv(256)
    except ssl.SSLWantReadError:
        raise BlockingIOError from None


class _Slot:
    """One connection slot's state; used only by its own thread."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.seq = 0
        self.rng = random.Random()
        self.sock: socket.socket | None = None
        self.nreq = 0  # requests sent on the current connection

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.nreq = 0


class RequestFailed(Exception):
    """A request on a ``Connection`` failed; ``kind`` is one of ``FAILURE_CLASSES``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Connection:
    """One raw HTTP/1.1 client connection, for tests that need to control the wire: several requests
    on one kept-alive connection, pipelined requests, long streams.

    It uses the load client's parser and failure classes, retries nothing, and every blocking call
    has a deadline. Failures raise ``RequestFailed`` (``closed_before_response`` for a clean EOF
    where a response was due, ``reset``, ``timeout``, ``bad_response``, ...).

        with Connection(host, port) as conn:
            conn.send(conn.request("/stream?n=10") + conn.request("/"))  # pipelined
            stream, after = conn.read_response(), conn.read_response()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(timeout)
            self.sock.connect(sockaddr)
        except OSError as e:
            self.sock.close()
            raise RequestFailed(*_classify(e, "connect", timeout)) from None
        self._reader = _Reader(self.sock, 0.0)  # one buffer for every response: pipelined bytes stay in it

    def request(
        self, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> bytes:
        """The bytes of one HTTP/1.1 request (keep-alive unless ``headers`` say otherwise)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", "User-Agent: liveswap-loadclient"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data, _SEND_FLAGS)
        except OSError as e:
            raise RequestFailed(*_classify(e, "send", self.timeout)) from None

    def read_response(self, method: str = "GET", timeout: float | None = None) -> Response:
        """Read the next complete response (waiting at most ``timeout``, default the connection's)."""
        reader = self._reader
        reader.deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        before = reader.received
        try:
            return reader.response(method)
        except (_Failure, _PeerClosed, OSError) as e:  # OSError includes TimeoutError
            kind, message = _classify(e, "response", self.timeout if timeout is None else timeout)
            raise RequestFailed(
                kind, f"{message} [bytes received for this response={reader.received - before}]"
            ) from None

    def get(self, path: str = "/", headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        """Send one GET and read its response."""
        self.send(self.request(path, "GET", headers))
        return self.read_response("GET", timeout)

    def received(self) -> bytes:
        """The bytes received but not yet parsed as a response, without waiting (a peek: nothing is consumed)."""
        self.sock.settimeout(0.0)  # with a timeout set, Python would first wait for readability
        try:
            pending = self.sock.recv(1 << 20, socket.MSG_PEEK)
        except BlockingIOError:
            pending = b""
        except OSError:
            pending = b""  # reset: the next read reports it
        return bytes(self._reader.buf) + pending

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The load client must classify every failure correctly, against tiny real servers on loopback."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import select
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loadclient import FAILURE_CLASSES, LoadClient, Result

Handler = Callable[["TinyServer", socket.socket], None]


class TinyServer:
    """A threaded raw-socket server: bound once on port 0 (or a unix path), one thread per connection."""

    def __init__(self, handler: Handler, unix_path: str | None = None) -> None:
        self.handler = handler
        self.lock = threading.Lock()
        self.accepts = 0
        self.requests = 0  # requests fully read
        self.responses = 0  # responses fully written
        self.version = "v1"
        if unix_path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.port = 0
        self.sock.listen(128)
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            readable, _, _ = select.select([self.sock, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            conn, _ = self.sock.accept()
            with self.lock:
                if self._closing:
                    conn.close()
                    return
                self.accepts += 1
                self._conns.append(conn)
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(self, conn)
        except OSError:
            pass  # the client went away, or close() shut the socket under us
        finally:
            conn.close()

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._acceptor.join(5)
        with self.lock:
            self._closing = True
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv()
        for t in threads:
            t.join(5)
        assert not self._acceptor.is_alive() and not any(t.is_alive() for t in threads)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()


def read_request(conn: socket.socket, buf: bytearray) -> tuple[dict[str, str], bytes] | None:
    """Read one request (head + Content-Length body); None on a clean EOF between requests."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            if buf:
                raise ConnectionError("EOF inside a request head")
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    buf[:] = rest
    while len(buf) < n:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("EOF inside a request body")
        buf += data
    body = bytes(buf[:n])
    del buf[:n]
    return headers, body


def response(status: int, body: bytes, headers: dict[str, str], chunked: bool = False, framed: bool = True) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]) if p)
        payload += b"0\r\nX-Trailer: yes\r\n\r\n"
    else:
        if framed:
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def serve_requests(answer: Callable[[TinyServer, int, dict[str, str], bytes], bytes | None]) -> Handler:
    """A keep-alive handler: ``answer(server, n, headers, body)`` gives the bytes to send, or None to close."""

    def handler(server: TinyServer, conn: socket.socket) -> None:
        buf = bytearray()
        n = 0
        while (req := read_request(conn, buf)) is not None:
            server.count("requests")
            n += 1
            out = answer(server, n, *req)
            if out is None:
                return
            conn.sendall(out)
            server.count("responses")
            if b"Connection: close" in out.split(b"\r\n\r\n")[0]:
                return

    return handler


def healthy(server: TinyServer, n: int, headers: dict[str, str], body: bytes) -> bytes:
    """Varies the framing (Content-Length / chunked / until close) so the parser sees all of them."""
    hdrs = {"x-app-version": server.version, "x-worker-pid": str(1000 + server.accepts % 3)}
    close = headers.get("connection") == "close"
    if close:
        hdrs["Connection"] = "close"
    if close and server.accepts % 2:
        return response(200, b"hello, until close", hdrs, framed=False)
    return response(200, b"hello %d" % n, hdrs, chunked=n % 3 == 0)


@pytest.fixture
def servers() -> Iterator[Callable[..., TinyServer]]:
    made: list[TinyServer] = []

    def make(handler: Handler, unix_path: str | None = None) -> TinyServer:
        made.append(TinyServer(handler, unix_path))
        return made[-1]

    yield make
    for s in made:
        s.close()


def run(port: int, predicate: Callable[[Result], bool], **kw: object) -> Result:
    """Start a client, wait (with a deadline) until ``predicate`` holds, stop it."""
    lc = LoadClient(port=port, **kw)  # type: ignore[arg-type]
    lc.start()
    try:
        lc.wait_for(predicate, timeout=10)
    finally:
        res = lc.stop()
    assert res.ok + res.failed == res.total, res.summary()
    assert res.unjoined_threads == 0, res.summary()
    return res


def only(res: Result, kind: str) -> None:
    """Every attempt failed, and all with ``kind``."""
    assert res.total > 0 and res.ok == 0, res.summary()
    assert res.failures[kind] == res.total, res.summary()
    assert all(v == 0 for k, v in res.failures.items() if k != kind), res.summary()
    assert 0 < len(res.examples[kind]) <= 20, res.summary()


@pytest.mark.timeout(30)
def test_healthy_keepalive_counts_versions_and_pids(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(healthy))
    lc = LoadClient(port=srv.port, concurrency=4, timeout=5)
    lc.start()
    try:
        lc.wait_for(lambda r: r.ok >= 200, timeout=10)
        srv.version = "v2"
        lc.wait_for(lambda r: r.version_counts.get("v2", 0) >= 50, timeout=10)
    finally:
        res = lc.stop()
    assert res.failed == 0, res.summary()
    assert res.versions == ["v1", "v2"], res.summary()
    assert sum(res.version_counts.values()) == res.total == res.ok
    # The server counts a request before answering it, and stop() waited for every in-flight one.
    assert srv.requests == res.total, res.summary()
    assert set(res.pids) <= {"1000", "1001", "1002"} and sum(res.pid_counts.values()) == res.total
    assert res.statuses == {200: res.total}
    assert res.duration > 0 and res.rps > 0
    assert "total=" in res.summary() and "failed=0" in res.summary()


@pytest.mark.timeout(30)
def test_keepalive_reuses_connections(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(healthy))
    res = run(srv.port, lambda r: r.total >= 300, concurrency=4, max_requests=300)
    assert res.total == 300 and res.failed == 0, res.summary()
    assert srv.accepts == res.connections == 4, res.summary()


@pytest.mark.timeout(30)
def test_keepalive_reconnects_after_connection_close(servers: Callable[..., TinyServer]) -> None:
    def every_fifth_closes(server: TinyServer, n: int, headers: dict[str, str], body: bytes) -> bytes:
        hdrs = {"x-app-version": "v1"} | ({"Connection": "close"} if n == 5 else {})
        return response(200, b"ok", hdrs, chunked=n % 2 == 0)

    srv = servers(serve_requests(every_fifth_closes))
    res = run(srv.port, lambda r: r.total >= 200, concurrency=4, max_requests=200)
    assert res.total == 200 and res.failed == 0, res.summary()
    assert srv.accepts == res.connections >= 40 and res.server_closes >= 36, res.summary()


@pytest.mark.timeout(30)
def test_idle_close_before_sending_is_not_a_failure(servers: Callable[..., TinyServer]) -> None:
    # The server answers as keep-alive, then closes the connection at once. With TCP_CORK the
    # response is held and the FIN rides in the same segment, so the client always finds the
    # close before its next send: deterministic, no timing involved.
    def answer_then_close(server: TinyServer, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        if read_request(conn, bytearray()) is None:
            return
        server.count("requests")
        conn.sendall(response(200, b"bye", {"x-app-version": "v1"}))
        conn.shutdown(socket.SHUT_WR)
        server.count("responses")
        read_request(conn, bytearray())  # the client closes; any request here would be a lost one

    srv = servers(answer_then_close)
    res = run(srv.port, lambda r: r.total >= 100, concurrency=2, max_requests=100)
    assert res.total == 100 and res.failed == 0, res.summary()
    assert srv.accepts == srv.requests == 100
    assert res.idle_closes >= 98, res.summary()


@pytest.mark.timeout(30)
def test_close_mode_opens_a_connection_per_request(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(healthy))
    res = run(srv.port, lambda r: r.total >= 100, mode="close", concurrency=3, max_requests=100)
    assert res.total == 100 and res.failed == 0, res.summary()
    assert srv.accepts == res.connections == 100
    assert res.server_closes == 100


@pytest.mark.timeout(30)
def test_closed_without_answer_is_closed_before_response(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(lambda server, n, headers, body: None))
    for mode in ("keepalive", "close", "post"):
        only(run(srv.port, lambda r: r.total >= 20, mode=mode, concurrency=2), "closed_before_response")


@pytest.mark.timeout(30)
def test_half_response_then_close_is_closed_before_response(servers: Callable[..., TinyServer]) -> None:
    partial = response(200, b"0123456789", {"Connection": "close"})[:-4]  # then the handler closes
    srv = servers(serve_requests(lambda server, n, headers, body: partial))
    res = run(srv.port, lambda r: r.total >= 20, concurrency=2)
    only(res, "closed_before_response")
    assert "bytes received=" in res.examples["closed_before_response"][0].message


@pytest.mark.timeout(30)
def test_503_is_http_5xx(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(lambda server, n, headers, body: response(503, b"busy", {"x-app-version": "v9"})))
    res = run(srv.port, lambda r: r.total >= 20, concurrency=2)
    only(res, "http_5xx")
    assert res.versions == ["v9"] and res.statuses == {503: res.total}


@pytest.mark.timeout(30)
def test_404_is_other(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(lambda server, n, headers, body: response(404, b"nope", {})))
    only(run(srv.port, lambda r: r.total >= 10, concurrency=2), "other")


@pytest.mark.timeout(30)
def test_linger_zero_close_is_reset(servers: Callable[..., TinyServer]) -> None:
    def rst(server: TinyServer, conn: socket.socket) -> None:
        if read_request(conn, bytearray()) is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    srv = servers(rst)
    for mode in ("keepalive", "close", "post"):
        only(run(srv.port, lambda r: r.total >= 20, mode=mode, concurrency=2), "reset")


@pytest.mark.timeout(30)
def test_nothing_listening_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound and kept, never listening: the port is ours and refuses
        res = run(s.getsockname()[1], lambda r: r.total >= 50, concurrency=2)
    only(res, "refused")
    assert res.connections == 0


@pytest.mark.timeout(30)
def test_unix_socket_healthy_and_refused(servers: Callable[..., TinyServer]) -> None:
    with tempfile.TemporaryDirectory(prefix="lc") as d:  # short path: AF_UNIX paths max ~108 bytes
        path = str(Path(d) / "s")
        srv = servers(serve_requests(healthy), unix_path=path)
        res = run(0, lambda r: r.total >= 100, unix_path=path, concurrency=2, max_requests=100)
        assert res.ok == 100 and srv.accepts == 2, res.summary()

        dead = str(Path(d) / "dead")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(dead)  # bound, not listening
            only(run(0, lambda r: r.total >= 20, unix_path=dead, concurrency=2), "refused")
        only(run(0, lambda r: r.total >= 20, unix_path=str(Path(d) / "missing"), concurrency=2), "refused")


@pytest.mark.timeout(30)
def test_no_answer_is_timeout_and_stop_is_bounded(servers: Callable[..., TinyServer]) -> None:
    def hang(server: TinyServer, conn: socket.socket) -> None:
        read_request(conn, bytearray())
        server.count("requests")
        conn.recv(1)  # until the client or close() ends it

    srv = servers(hang)
    lc = LoadClient(port=srv.port, concurrency=3, timeout=0.3)
    t0 = time.monotonic()
    lc.start()
    assert time.monotonic() - t0 < 0.3 + 5  # start()'s handshake: one (timed out) attempt per slot
    lc.wait_for(lambda r: r.total >= 6, timeout=10)
    t1 = time.monotonic()
    res = lc.stop()
    assert time.monotonic() - t1 < 0.3 + 2.0, "stop() must be bounded by the request timeout"
    only(res, "timeout")
    assert res.unjoined_threads == 0


def _fixed_reply(reply: bytes, server: object, n: int, headers: object, body: object) -> bytes:
    return reply


def _at_least(budget: int, r: Result) -> bool:
    return r.total >= budget


@pytest.mark.timeout(30)
def test_garbage_is_bad_response(servers: Callable[..., TinyServer]) -> None:
    for garbage in (b"HELLO\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):  # fmt: skip
        srv = servers(serve_requests(functools.partial(_fixed_reply, garbage)))
        only(run(srv.port, lambda r: r.total >= 10, concurrency=2), "bad_response")


@pytest.mark.timeout(30)
def test_extra_bytes_after_response_is_bad_response(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(lambda server, n, headers, body: response(200, b"ok", {}) + b"junk"))
    only(run(srv.port, lambda r: r.total >= 10, concurrency=2), "bad_response")


def echo(lie: int) -> Callable[[TinyServer, int, dict[str, str], bytes], bytes]:
    def answer(server: TinyServer, n: int, headers: dict[str, str], body: bytes) -> bytes:
        assert headers["content-type"] == "application/octet-stream"
        digest = hashlib.sha256(body).hexdigest()
        return response(200, f"len={len(body) + lie} sha256={digest}".encode(), {"x-app-version": "v1"})

    return answer


@pytest.mark.timeout(30)
def test_post_verifies_length_and_hash(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(echo(0)))
    res = run(srv.port, lambda r: r.total >= 200, mode="post", concurrency=4, max_requests=200)
    assert res.ok == res.verified == 200 and res.failed == 0, res.summary()
    assert srv.accepts == 4

    liar = servers(serve_requests(echo(-1)))
    res = run(liar.port, lambda r: r.total >= 20, mode="post", concurrency=2)
    only(res, "bad_response")
    assert "server says len=" in res.examples["bad_response"][0].message


@pytest.mark.timeout(30)
def test_max_requests_is_exact_and_handshake_survives_small_budgets(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(healthy))
    for budget in (0, 3, 57):
        res = run(srv.port, functools.partial(_at_least, budget), concurrency=8, max_requests=budget)
        assert res.total == res.ok == budget, res.summary()

    lc = LoadClient(port=srv.port, concurrency=2, max_requests=5)
    lc.start()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="every slot has finished"):
        lc.wait_for(lambda r: r.total > 5, timeout=20)  # never true: must not wait the full 20 s
    assert time.monotonic() - t0 < 10
    assert lc.stop().total == 5


@pytest.mark.timeout(30)
def test_examples_are_capped_and_summary_lists_them(servers: Callable[..., TinyServer]) -> None:
    srv = servers(serve_requests(lambda server, n, headers, body: response(503, b"x", {})))
    res = run(srv.port, lambda r: r.total >= 60, concurrency=2)
    assert res.failures["http_5xx"] >= 60 and len(res.examples["http_5xx"]) == 20
    text = res.summary()
    assert "http_5xx=" in text and "more http_5xx" in text and "HTTP 503" in text
    assert all(e.at >= 0 for e in res.examples["http_5xx"])
    assert set(res.failures) == set(FAILURE_CLASSES)


@pytest.mark.timeout(30)
def test_invalid_arguments_raise() -> None:
    for kw in ({"mode": "pipeline"}, {"concurrency": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            LoadClient(**kw)

"""The proxy (``liveswap.proxy``) with real processes and sockets: the proxy runs in its own process
(``apps/proxy_runner.py``), driven as the supervisor drives it, in front of uvicorn servers on
private loopback ports (``apps/proxy_upstream.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import APPS, wait_until
from loadclient import LoadClient, Result
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

ROOT = APPS.parent.parent
_ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "src"))


class _Child:
    """A child process in its own session; its output lines are kept, its group is killed at the end."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_ENV,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.log: list[str] = []
        self.cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.log), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            into.append("<<EOF>>")
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if m := rx.search(line):
                        return m
                left = deadline - time.monotonic()
                if "<<EOF>>" in self.lines or left <= 0:
                    raise AssertionError(f"no line {pattern!r} within {timeout} s:\n{self.output()}")
                self.cond.wait(left)

    def output(self) -> str:
        return "\n".join(self.lines[-50:] + self.log[-80:])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        for pump in self._pumps:
            pump.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Upstream(_Child):
    def __init__(self, name: str) -> None:
        super().__init__([str(APPS / "proxy_upstream.py"), name])
        self.name = name
        self.port = int(self.wait_line(r"^listening (\d+)").group(1))
        self.spec = [name, "127.0.0.1", self.port]

    def get(self, path: str) -> str:
        """A request straight to this upstream (not through the proxy)."""
        status, _, body = request(self.port, "GET", path)
        assert status == 200, body
        return body.decode()

    def count(self) -> int:
        return int(self.get("/__count"))

    def term(self) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(15)


class Proxy(_Child):
    def __init__(self, *args: str) -> None:
        super().__init__([str(APPS / "proxy_runner.py"), *args])
        self.port = int(self.wait_line(r'"event": "listening", "port": (\d+)').group(1))
        self._ids = 0

    def call(self, op: str, wait: float = 20.0, **args: Any) -> Any:
        self._ids += 1
        ident = self._ids
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "op": op, **args}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.wait_line(rf'^\{{"id": {ident}, .*', wait).group(0))
        if "error" in answer:
            raise AssertionError(f"{op} failed in the proxy: {answer['error']}")
        return answer["result"]


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[_Child]]:
    started: list[_Child] = []
    yield started
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for child in started:
        if failed:
            print(f"\n----- {child.proc.args!r} -----\n{child.output()}")
        child.kill()


def upstream(procs: list[_Child], name: str) -> Upstream:
    child = Upstream(name)
    procs.append(child)
    return child


def proxy(procs: list[_Child], *args: str) -> Proxy:
    child = Proxy(*args)
    procs.append(child)
    return child


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def test_passes_requests_and_answers_through(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=20)  # one keep-alive connection
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"hello from A\n")
    assert len(resp.headers.get_all("date") or []) == 1 and resp.headers.get_all("server") == ["uvicorn"]

    body = os.urandom(1 << 20)
    conn.request("POST", "/upload", body=body)
    resp = conn.getresponse()
    assert resp.read().decode() == f"len={len(body)} sha256={hashlib.sha256(body).hexdigest()}\n"

    conn.request("GET", "/cookies")
    resp = conn.getresponse()
    assert resp.headers.get_all("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    resp.read()

    conn.request("GET", "/nothing-here")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (404, b"not found here\n")

    conn.request("GET", "/gzip")  # passed on as it is: no decompression on the way
    resp = conn.getresponse()
    assert resp.getheader("content-encoding") == "gzip"
    assert resp.read().startswith(b"\x1f\x8b")

    conn.request(
        "GET",
        "/headers",
        headers={
            "Host": "example.test:1234",
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Proto": "https",  # a client's claim: the proxy says what it saw
            "Connection": "keep-alive, x-secret",
            "X-Secret": "hop-by-hop, named by Connection",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eDp5",
            "X-Custom": "kept",
        },
    )
    resp = conn.getresponse()
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(resp.read())["headers"]:
        seen.setdefault(name, []).append(value)
    assert seen["host"] == ["example.test:1234"]
    assert seen["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["example.test:1234"]
    assert seen["x-custom"] == ["kept"]
    assert seen["accept-encoding"] == ["identity"]  # http.client's, unchanged; nothing added
    for hop in ("x-secret", "keep-alive", "proxy-authorization", "user-agent"):
        assert hop not in seen, (hop, seen)
    assert seen.get("connection", ["keep-alive"]) == ["keep-alive"]  # httpx's own, to the upstream

    # A chunked stream: its first chunk arrives while the upstream still holds the rest back.
    conn.request("GET", "/gate?key=s1")
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.readline() == b"first s1\n"
    assert a.get("/release?key=s1") == "released\n"
    assert resp.read() == b"rest 0 s1\nrest 1 s1\nrest 2 s1\nend\n"
    conn.close()


def _wait_answered_by(load: LoadClient, name: str, n: int) -> None:
    load.wait_for(lambda r: r.version_counts.get(name, 0) >= n, timeout=30.0)


def test_switch_under_load_loses_nothing(procs: list[_Child]) -> None:
    old = upstream(procs, "gen0")
    px = proxy(procs)
    px.call("add", upstream=old.spec)
    gets = LoadClient(port=px.port, mode="keepalive", concurrency=4, timeout=10.0)
    posts = LoadClient(port=px.port, mode="post", concurrency=2, timeout=10.0, post_size=(1024, 65536))
    results: list[Result] = []
    try:
        gets.start()
        posts.start()
        for generation in range(1, 4):
            new = upstream(procs, f"gen{generation}")
            px.call("switch", upstreams=[new.spec])
            assert px.call("drained", upstream=old.spec, timeout=15) is True
            assert px.call("in_flight", upstream=old.spec) == 0
            seen = old.count()
            _wait_answered_by(gets, new.name, 50)  # the load goes on, all of it to the new one
            _wait_answered_by(posts, new.name, 20)
            assert old.count() == seen, f"{old.name} got requests after drained() returned True"
            assert old.term() == -signal.SIGTERM  # uvicorn re-raises the signal after its graceful exit
            old = new
    finally:
        results = [gets.stop(), posts.stop()]
    for res in results:
        assert res.failed == 0, res.summary()
        assert set(res.version_counts) <= {"gen0", "gen1", "gen2", "gen3"}, res.summary()
    assert results[1].verified == results[1].ok > 0, results[1].summary()


def test_stream_and_websocket_in_flight_finish_on_the_old_upstream(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    b = upstream(procs, "B")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=20)
    conn.request("GET", "/gate?key=slow")
    stream = conn.getresponse()
    assert stream.readline() == b"first slow\n"
    url = f"ws://127.0.0.1:{px.port}/ws"
    with contextlib.closing(conn), ws_connect(url, subprotocols=[Subprotocol("chat")], open_timeout=10) as ws:
        assert ws.subprotocol == "chat"
        ws.send("one")
        assert ws.recv(10) == "A: one"
        assert px.call("in_flight", upstream=a.spec) == 2

        px.call("switch", upstreams=[b.spec])
        assert request(px.port, "GET", "/")[2] == b"hello from B\n"  # new requests: B
        ws.send("two")
        assert ws.recv(10) == "A: two"  # the WebSocket stays where it connected
        ws.send(b"\x00\x01")
        assert ws.recv(10) == b"\x00\x01"
        assert px.call("drained", upstream=a.spec, timeout=0.3) is False  # both still open

        assert a.get("/release?key=slow") == "released\n"
        assert stream.read() == b"rest 0 slow\nrest 1 slow\nrest 2 slow\nend\n"
        assert px.call("drained", upstream=a.spec, timeout=0.3) is False  # the WebSocket still is
        ws.send("three")
        assert ws.recv(10) == "A: three"
        ws.close(code=4002, reason="done")
    assert px.call("drained", upstream=a.spec, timeout=10) is True
    assert a.get("/__lastclose") == "4002"  # the client's close code reached the upstream

    # The upstream's close code reaches the client; a new WebSocket goes to B.
    with ws_connect(f"ws://127.0.0.1:{px.port}/ws", open_timeout=10) as ws2:
        ws2.send("x")
        assert ws2.recv(10) == "B: x"
        ws2.send("close 4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws2.recv(10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_requests_are_held_until_an_upstream_comes(procs: list[_Child]) -> None:
    px = proxy(procs, "--hold-timeout", "20")
    answers: list[tuple[int, bytes]] = []

    def ask() -> None:
        status, _, body = request(px.port, "GET", "/")
        answers.append((status, body))

    held = threading.Thread(target=ask, daemon=True)
    held.start()
    wait_until(lambda: px.call("held") == 1, 10, "the request to be held")
    a = upstream(procs, "A")
    px.call("add", upstream=a.spec)
    held.join(20)
    assert answers == [(200, b"hello from A\n")]

    quick = proxy(procs, "--hold-timeout", "0.3")
    status, _, body = request(quick.port, "GET", "/")
    assert status == 503
    assert body.startswith(b"503 Service Unavailable: no upstream server was running for 0.3 s\nhint: ")


def test_dead_upstream_gets_a_readable_502(procs: list[_Child]) -> None:
    closed = socket.socket()  # bound, never listening: connections to it are refused
    closed.bind(("127.0.0.1", 0))
    try:
        dead = ["gen7 pid 999", "127.0.0.1", closed.getsockname()[1]]
        px = proxy(procs)
        px.call("add", upstream=dead)
        status, _, body = request(px.port, "GET", "/")
        assert status == 502
        text = body.decode()
        assert text.startswith(f"502 Bad Gateway: upstream gen7 pid 999 (127.0.0.1:{dead[2]}) refused the connection")
        assert "\nhint: " in text and "Traceback" not in text

        # With a live upstream beside it, a GET that found the dead one is tried once more on the
        # next; a POST never is.
        b = upstream(procs, "B")
        px.call("add", upstream=b.spec)
        gets = [request(px.port, "GET", "/")[0] for _ in range(4)]
        posts = [request(px.port, "POST", "/", body=b"x")[0] for _ in range(4)]
        assert gets == [200] * 4
        assert sorted(posts) == [200, 200, 502, 502]
    finally:
        closed.close()


def test_upstream_that_resets_before_answering(procs: list[_Child]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[bytes] = []

    def reset_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn.recv(65536))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # linger 0: a reset

    thread = threading.Thread(target=reset_each, daemon=True)
    thread.start()
    try:
        px = proxy(procs)
        px.call("add", upstream=["resetter", "127.0.0.1", listener.getsockname()[1]])
        status, _, body = request(px.port, "POST", "/", body=b"payload")
        assert status == 502
        assert body.startswith(b"502 Bad Gateway: upstream resetter (127.0.0.1:"), body
        assert b"before answering" in body and b"\nhint: " in body
        assert len(accepted) == 1  # not retried
    finally:
        listener.close()
        thread.join(5)


def test_close_drains_client_connections(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=20)
    with contextlib.closing(conn):
        conn.request("GET", "/gate?key=last")
        stream = conn.getresponse()
        assert stream.readline() == b"first last\n"
        closing: list[Any] = []
        closer = threading.Thread(target=lambda: closing.append(px.call("close", timeout=10)), daemon=True)
        closer.start()
        wait_until(lambda: any("proxy: stopped accepting" in line for line in px.log), 10, "the proxy to drain")
        assert a.get("/release?key=last") == "released\n"
        assert stream.read() == b"rest 0 last\nrest 1 last\nrest 2 last\nend\n"  # finished, not cut
        assert stream.getheader("connection") is None
        closer.join(15)
    assert closing == [True]


# -- the connection-level forwarder: HTTP/1.1 details -------------------------------------------


def _raw(port: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return sock, sock.makefile("rb")


def _read_response(f: Any) -> tuple[int, dict[str, str], bytes]:
    """One response from a raw connection (Content-Length or chunked), leaving what follows unread."""
    line = f.readline()
    assert line.startswith(b"HTTP/1.1 "), line
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, f.read(int(headers["content-length"]))
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while (size := int(f.readline().strip(), 16)) > 0:
            body += f.read(size)
            f.readline()
        f.readline()
    return status, headers, body


def test_http11_details_pass_through(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    sock, f = _raw(px.port)
    with contextlib.closing(sock), contextlib.closing(f):
        # Pipelined: both answered, in order, on the one connection.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(f)[::2] == (200, b"hello from A\n")
        assert _read_response(f)[::2] == (404, b"not found here\n")
        # HEAD: a head without a body, and the connection goes on.
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200"), line
        while f.readline() != b"\r\n":
            pass
        # A chunked request body, forwarded chunked.
        body = os.urandom(70000)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:1000], body[1000:])) + b"0\r\n\r\n"
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        expected = f"len={len(body)} sha256={hashlib.sha256(body).hexdigest()}\n".encode()
        assert _read_response(f)[::2] == (200, expected)
        # Expect: 100-continue passes through: the upstream's 100 comes before the body is sent.
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        while f.readline() != b"\r\n":
            pass
        sock.sendall(b"hello")
        expected = f"len=5 sha256={hashlib.sha256(b'hello').hexdigest()}\n".encode()
        assert _read_response(f)[::2] == (200, expected)
        # HTTP/1.0 without keep-alive: answered, then closed.
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, _ = _read_response(f)
        assert status == 200 and headers.get("connection") == "close"
        assert f.read() == b""


def test_upstream_dying_mid_response_cuts_the_client_off(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=20)
    with contextlib.closing(conn):
        conn.request("GET", "/gate?key=k")
        resp = conn.getresponse()
        assert resp.readline() == b"first k\n"
        a.signal(signal.SIGKILL)
        with pytest.raises(http.client.IncompleteRead):
            resp.read()  # a short chunked body, never a complete-looking one
    wait_until(lambda: px.call("in_flight", upstream=a.spec) == 0, 10, "the request to leave the count")


def test_header_timeout_and_size_limit(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs, "--header-timeout", "0.5")
    px.call("add", upstream=a.spec)
    sock, f = _raw(px.port)
    with contextlib.closing(sock), contextlib.closing(f):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        status, headers, body = _read_response(f)
        assert (status, headers["connection"]) == (408, "close")
        assert f.read() == b""
    sock, f = _raw(px.port)
    with contextlib.closing(sock), contextlib.closing(f):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n")
        assert _read_response(f)[0] == 431
    assert request(px.port, "GET", "/")[2] == b"hello from A\n"


def test_close_answers_a_request_sent_on_an_idle_connection(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs, "--idle-grace", "10", "--hold-timeout", "20")
    px.call("add", upstream=a.spec)
    idle = http.client.HTTPConnection("127.0.0.1", px.port, timeout=20)
    with contextlib.closing(idle):
        idle.request("GET", "/")
        first = idle.getresponse()
        assert first.read() == b"hello from A\n" and first.getheader("connection") is None
        closing: list[Any] = []
        closer = threading.Thread(target=lambda: closing.append(px.call("close", timeout=15)), daemon=True)
        closer.start()
        wait_until(lambda: any("proxy: stopped accepting" in line for line in px.log), 10, "the proxy to drain")
        # The client did not know yet: its next request on the kept-alive connection is answered,
        # with Connection: close, rather than reset.
        idle.request("GET", "/")
        last = idle.getresponse()
        assert (last.status, last.read(), last.getheader("connection")) == (200, b"hello from A\n", "close")
        closer.join(20)
    assert closing == [True]


def test_close_sends_1012_to_websockets(procs: list[_Child]) -> None:
    a = upstream(procs, "A")
    px = proxy(procs)
    px.call("add", upstream=a.spec)
    with ws_connect(f"ws://127.0.0.1:{px.port}/ws", open_timeout=10) as ws:
        ws.send("one")
        assert ws.recv(10) == "A: one"
        closing: list[Any] = []
        closer = threading.Thread(target=lambda: closing.append(px.call("close", timeout=15)), daemon=True)
        closer.start()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    closer.join(20)
    assert closing == [True]
    assert a.get("/__lastclose") == "1012"  # the client's answer reached the upstream

"""liveswap's WSGI path (issue 10): PEP 3333 from the app's side, Flask and Django projects, threads, guards.

One ``liveswap run`` instance per app and configuration, started together once for the module
(tests/apps/wsgi_pep3333.py wraps its routes in ``wsgiref.validate``; tests/apps/flaskproj and
tests/apps/djangoproj are small real projects). The tests use raw sockets (tests/loadclient.py's
``Connection``) wherever httpx would hide the framing: pipelining, chunked request bodies, HEAD,
keep-alive reuse, a cut connection. They test whichever WSGI adapter is the default
(``LIVESWAP_WSGI_ADAPTER=a2wsgi`` in the environment runs them against a2wsgi instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps.wsgi_pep3333 import MIB, pattern
from conftest import _LISTENING, Instance, wait_until
from loadclient import Connection, RequestFailed, Response

pytestmark = pytest.mark.timeout(60)

PEP = "wsgi_pep3333:application"
# name -> (app, extra arguments)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "pep": (PEP, ["--header-timeout", "1"]),
    "threads4": (PEP, ["--threads", "4"]),
    "maxconn": (PEP, ["--max-connections", "4"]),
    "rootpath": (PEP, ["--root-path", "/mount", "--forwarded-allow-ips", "10.0.0.0/8"]),
    "flask": ("flaskproj.app:app", ["--preload", "flask"]),
    "django": ("djangoproj.wsgi:application", ["--preload", "django.core.handlers.wsgi"]),
}


class Instances:
    """The module's instances, started at once; one that failed to start fails only its own tests."""

    def __init__(self, tmp: Path) -> None:
        self.all: dict[str, Instance] = {}
        self.errors: dict[str, str] = {}
        for name, (app, args) in CONFIGS.items():
            (tmp / name).mkdir()
            self.all[name] = Instance(tmp / name, app, ["--workers", "1", *args], "1", None).start(wait=False)
        for name, inst in self.all.items():
            try:
                m = inst.wait_for(_LISTENING, 60)
            except AssertionError as e:
                self.errors[name] = str(e)
                continue
            inst.host, inst.port = m.group(1).strip("[]"), int(m.group(2))

    def __getitem__(self, name: str) -> Instance:
        if name in self.errors:
            pytest.fail(f"the {name!r} instance ({CONFIGS[name]}) did not start:\n{self.errors[name]}", pytrace=False)
        return self.all[name]

    def close(self) -> None:
        for inst in self.all.values():
            inst.kill_group()


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instances]:
    insts = Instances(tmp_path_factory.mktemp("wsgi"))
    try:
        yield insts
    finally:
        insts.close()


@pytest.fixture(autouse=True)
def _output_on_failure(request: pytest.FixtureRequest, instances: Instances) -> Iterator[None]:
    mark = {name: inst.mark() for name, inst in instances.all.items()}
    yield
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for name, inst in instances.all.items():
            out = inst.output_since(mark[name])
            if out:
                print(f"\n----- liveswap output ({name}) during the test -----\n{out}")


@pytest.fixture
def pep(instances: Instances) -> Instance:
    return instances["pep"]


# -- helpers ---------------------------------------------------------------------------------------


def raw_request(
    inst: Instance,
    path: str,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}", f"Host: {inst.host}:{inst.port}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body and not any(k.lower() == "transfer-encoding" for k, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def conn(inst: Instance, timeout: float = 10.0) -> Connection:
    return Connection(inst.host, inst.port, timeout=timeout)


def exchange(inst: Instance, data: bytes, method: str = "GET") -> Response:
    with conn(inst) as c:
        c.send(data)
        return c.read_response(method)


def until_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def environ_of(inst: Instance, path: str = "/environ/", **kw: Any) -> dict[str, Any]:
    r = exchange(inst, raw_request(inst, path, **kw))
    assert r.status == 200, r.text
    result: dict[str, Any] = json.loads(r.body)
    return result


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reset_peak_rss(pid: int) -> int:
    """Reset the process's VmHWM (peak RSS) to its current RSS, which it returns (KiB)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return rss_kib(pid)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def closed_state(inst: Instance, token: str) -> str:
    return httpx.get(f"{inst.url}/closed?token={token}", timeout=10).text


def wait_closed(inst: Instance, token: str, timeout: float = 10.0) -> int:
    """Chunks the iterable had produced when the server called its close() (fails if it never does)."""
    state = ""

    def closed() -> bool:
        nonlocal state
        state = closed_state(inst, token)
        return state.startswith("closed after ")

    wait_until(closed, timeout, f"close() of the response iterable {token} (last answer: {state!r})", 0.05)
    return int(state.rpartition(" ")[2])


def max_running(inst: Instance, clients: int, ms: int) -> int:
    """Send ``clients`` requests to /sleep at once (connections opened first); the app's own count
    of requests running at the same time."""
    assert httpx.get(f"{inst.url}/active?reset=1", timeout=10).status_code == 200
    conns = [conn(inst) for _ in range(clients)]
    barrier = threading.Barrier(clients)
    answers: list[int] = []

    def one(c: Connection) -> None:
        barrier.wait(10)
        c.send(c.request(f"/sleep?ms={ms}"))
        answers.append(c.read_response().status)

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for c in conns:
            c.close()
    assert answers == [200] * clients, answers
    text = httpx.get(f"{inst.url}/active", timeout=10).text
    return int(text.removeprefix("max="))


# -- the environ -----------------------------------------------------------------------------------


def test_environ_has_every_key_pep_3333_asks_for(pep: Instance) -> None:
    mark = pep.mark()
    env = environ_of(
        pep,
        "/environ/caf%C3%A9?a=1&b=%20x&errors=tok42",
        headers=[("Accept", "*/*")],
    )
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/caf\xc3\xa9"  # percent-decoded, the bytes as latin-1
    assert env["QUERY_STRING"] == "a=1&b=%20x&errors=tok42"  # as sent
    assert env["SERVER_NAME"] in ("127.0.0.1", "localhost")
    assert env["SERVER_PORT"] == str(pep.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{pep.port}"
    assert env["HTTP_ACCEPT"] == "*/*"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.multithread"] is False  # --threads 1: never two requests at once in a worker
    assert isinstance(env["wsgi.multiprocess"], bool)
    assert env["wsgi.run_once"] is False
    assert env["has_file_wrapper"] is True
    assert env["in_main_thread"] is True  # --threads 1: called in the event loop's thread (--threads' help)
    assert set(env["types"].values()) == {"str"}, env["types"]
    pep.wait_for(r"wsgi\.errors works tok42", 10, start=mark)


def test_repeated_headers_are_joined_with_a_comma(pep: Instance) -> None:
    env = environ_of(pep, headers=[("X-Repeat", "a"), ("X-Repeat", "b"), ("X-Repeat", "c d")])
    assert env["HTTP_X_REPEAT"] == "a, b, c d"


def test_a_header_with_an_underscore_cannot_pass_for_one_with_a_dash(pep: Instance) -> None:
    env = environ_of(pep, headers=[("X-Real-User", "alice"), ("X_Real_User", "mallory")])
    assert env["HTTP_X_REAL_USER"] == "alice"


def test_environ_of_a_post_and_of_http_1_0(pep: Instance) -> None:
    env = environ_of(pep, "/environ/p", method="POST", headers=[("Content-Type", "text/x-test")], body=b"12345")
    assert (env["REQUEST_METHOD"], env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("POST", "text/x-test", "5")
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    env = environ_of(pep, "/environ/old", version="HTTP/1.0")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_proxy_headers_from_a_trusted_peer_set_remote_addr_and_scheme(pep: Instance) -> None:
    # As for ASGI apps: loopback is a trusted proxy by default (uvicorn's forwarded_allow_ips).
    env = environ_of(pep, headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")])
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.7", "https")


def test_the_nearest_untrusted_address_of_a_chain_is_remote_addr(pep: Instance) -> None:
    env = environ_of(pep, headers=[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")])
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_proxy_headers_from_a_peer_not_allowed_are_ignored(instances: Instances) -> None:
    inst = instances["rootpath"]  # --forwarded-allow-ips 10.0.0.0/8: loopback is not a trusted proxy
    env = environ_of(inst, headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")])
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.1", "http")


def test_script_name_from_root_path(instances: Instances) -> None:
    inst = instances["rootpath"]
    env = environ_of(inst, "/environ/x")  # a proxy in front stripped /mount
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mount", "/environ/x")


# -- wsgi.input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "n"), [(20 * MIB + 7, 65536), (300_001, 1000), (0, 100)])
def test_input_read_n_gives_the_whole_body(pep: Instance, size: int, n: int) -> None:
    body = os.urandom(size)
    r = exchange(pep, raw_request(pep, f"/input/read-n?n={n}", "POST", body=body))
    assert r.status == 200, r.text
    assert r.text.startswith(f"len={size} sha256={sha(body)} "), r.text


def test_chunked_request_body(pep: Instance) -> None:
    body = os.urandom(3 * MIB + 11)
    sizes = [1, 7, 4096, 65535, 1 << 20]
    wire, i, k = bytearray(), 0, 0
    while i < len(body):
        piece = body[i : i + sizes[k % len(sizes)]]
        wire += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        i, k = i + len(piece), k + 1
    wire += b"0\r\n\r\n"
    head = raw_request(pep, "/input/read-n?n=50000", "POST", headers=[("Transfer-Encoding", "chunked")])
    with conn(pep) as c:
        c.send(head + bytes(wire) + raw_request(pep, "/hello"))  # and a request after it, pipelined
        r = c.read_response()
        after = c.read_response()
    assert r.status == 200, r.text
    assert r.text.startswith(f"len={len(body)} sha256={sha(body)} "), r.text
    assert after.status == 200 and after.text.startswith("hello")


LINES = b"first line\nsecond\n\n\xe9t\xe9 latin-1\nlast without newline"


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("readline", ["fir", "st line\n", "second\n", "\n", "\xe9t\xe9 latin-1\n", "last without newline"]),
        ("readlines", ["first line\n", "second\n", "\n", "\xe9t\xe9 latin-1\n", "last without newline"]),
        ("iter", ["first line\n", "second\n", "\n", "\xe9t\xe9 latin-1\n", "last without newline"]),
    ],
)
def test_input_lines(pep: Instance, how: str, expected: list[str]) -> None:
    r = exchange(pep, raw_request(pep, f"/input/{how}", "POST", body=LINES))
    assert r.status == 200, r.text
    assert json.loads(r.body) == expected


def test_a_large_upload_is_not_held_in_memory(pep: Instance) -> None:
    """Issue 10: the body is buffered in memory up to a limit, spooled to a temporary file beyond
    it. 100 MiB read by the app 64 KiB at a time: the worker's peak RSS grows by far less."""
    (pid,) = pep.worker_pids()
    base = reset_peak_rss(pid)
    body = pattern(100 * MIB)
    r = exchange(pep, raw_request(pep, "/input/read-n?n=65536", "POST", body=body))
    assert r.status == 200 and r.text.startswith(f"len={len(body)} sha256={sha(body)} "), r.text
    grew = (rss_kib(pid, "VmHWM") - base) / 1024
    assert grew < 48, f"the worker's peak RSS grew by {grew:.0f} MiB for a 100 MiB upload"


def test_expect_100_continue(pep: Instance) -> None:
    """curl sends Expect: 100-continue before a body over 1 KiB and waits (1 s) for the 100: a server
    that reads the body before calling the app must send it itself."""
    body = os.urandom(5000)
    head = raw_request(
        pep, "/input/read-n?n=1000", "POST", headers=[("Content-Length", "5000"), ("Expect", "100-continue")]
    )
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(3)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body + raw_request(pep, "/hello", headers=[("Connection", "close")]))
        data, _ = until_close(sock, 10)
    assert f"len=5000 sha256={sha(body)} ".encode() in data and b"hello pid=" in data, data


def test_an_unread_body_does_not_spill_into_the_next_request(pep: Instance) -> None:
    body = b"GET /raise HTTP/1.1\r\nHost: x\r\n\r\n" * 30000  # ~1 MiB that looks like requests
    with conn(pep) as c:
        c.send(raw_request(pep, "/hello", "POST", body=body) + raw_request(pep, "/write"))
        first, second = c.read_response(), c.read_response()
    assert (first.status, second.status, second.body) == (200, 200, b"one two three")


def test_a_client_gone_mid_upload_leaves_the_worker_serving(pep: Instance) -> None:
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(raw_request(pep, "/input/read-n", "POST", headers=[("Content-Length", str(10 * MIB))]))
        sock.sendall(os.urandom(MIB))
    assert httpx.get(f"{pep.url}/hello", timeout=10).status_code == 200
    r = exchange(pep, raw_request(pep, "/input/read-n", "POST", body=b"after"))
    assert r.text.startswith(f"len=5 sha256={sha(b'after')} "), r.text


def test_input_read_without_a_size(pep: Instance) -> None:
    body = os.urandom(1 * MIB + 3)
    r = exchange(pep, raw_request(pep, "/raw/input/read", "POST", body=body))
    assert r.status == 200 and r.text == f"len={len(body)} sha256={sha(body)}", r.text


def test_a_slow_upload_does_not_hold_up_the_worker(pep: Instance) -> None:
    """--threads 1: a client trickling its body for ~1 s; another client's request on the same
    worker is answered meanwhile (the body is read by the event loop, not by the app's thread)."""
    body = b"0123456789abcdefghij"
    done_sending = threading.Event()
    with conn(pep) as slow:
        slow.send(raw_request(pep, "/input/read-n?n=4096", "POST", headers=[("Content-Length", str(len(body)))]))

        def trickle() -> None:
            for b in body:
                slow.send(bytes([b]))
                time.sleep(0.05)
            done_sending.set()

        t = threading.Thread(target=trickle)
        t.start()
        try:
            started = time.monotonic()
            other = httpx.get(f"{pep.url}/hello", timeout=10)
            took = time.monotonic() - started
            still_uploading = not done_sending.is_set()
        finally:
            t.join(10)
        r = slow.read_response()
    assert other.status_code == 200
    assert still_uploading, f"the other request waited for the slow upload to end ({took:.2f} s)"
    assert r.status == 200 and r.text.startswith(f"len={len(body)} sha256={sha(body)}"), r.text


# -- the response ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pep", "threads4"])
def test_write_callable(instances: Instances, name: str) -> None:
    pep = instances[name]
    with conn(pep) as c:
        r = c.get("/write")
        assert (r.status, r.body) == (200, b"one two three")
        assert r.keep_alive and c.get("/hello").status == 200


def test_close_is_called_after_the_response(pep: Instance) -> None:
    token = os.urandom(6).hex()
    r = httpx.get(f"{pep.url}/closing?token={token}&n=3&size=10", timeout=10)
    assert r.status_code == 200 and len(r.content) == 30
    assert wait_closed(pep, token) == 3


@pytest.mark.parametrize("name", ["pep", "threads4"])
def test_close_is_called_when_the_client_goes_away(instances: Instances, name: str) -> None:
    pep = instances[name]
    token, n = os.urandom(6).hex(), 4000  # 4000 x 64 KiB: 250 MiB, far more than the client reads
    sock = socket.create_connection((pep.host, pep.port), timeout=10)
    try:
        sock.sendall(raw_request(pep, f"/closing?token={token}&n={n}&size=65536"))
        got = 0
        while got < 256 * 1024:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the stream early"
            got += len(chunk)
    finally:
        sock.close()
    produced = wait_closed(pep, token)
    assert produced < n, "the server iterated the whole body for a client that had gone"


@pytest.mark.parametrize("name", ["pep", "threads4"])
def test_exc_info_before_the_headers_replaces_the_response(instances: Instances, name: str) -> None:
    pep = instances[name]
    r = httpx.get(f"{pep.url}/exc-before", timeout=10)
    assert (r.status_code, r.text) == (500, "replaced after exc_info")


@pytest.mark.parametrize("name", ["pep", "threads4"])
@pytest.mark.parametrize("route", ["/exc-after", "/raise-mid"])
def test_an_error_after_the_headers_cuts_the_connection(instances: Instances, name: str, route: str) -> None:
    """start_response(exc_info) once headers are out must raise; the server cuts the connection
    instead of completing a 200 with half a body (and the worker goes on serving)."""
    pep = instances[name]
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(raw_request(pep, route))
        data, closed = until_close(sock, 10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert closed, f"the connection was left open after {len(data)} bytes"
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"must never be sent" not in body
    framed_complete = body.endswith(b"\r\n0\r\n\r\n") or (b"content-length" in head.lower() and len(body) >= 256 * 1024)
    assert not framed_complete, f"a cut response was framed as complete: {head!r} ... {body[-40:]!r}"
    assert httpx.get(f"{pep.url}/hello", timeout=10).status_code == 200


def test_app_exception_is_a_500_and_the_worker_serves_on(pep: Instance) -> None:
    before = httpx.get(f"{pep.url}/hello", timeout=10).text
    r = httpx.get(f"{pep.url}/raise", timeout=10)
    assert r.status_code == 500
    assert httpx.get(f"{pep.url}/hello", timeout=10).text == before  # the same worker (pid) answers


@pytest.mark.parametrize("name", ["pep", "threads4"])
def test_a_body_of_str_is_the_apps_error_not_the_clients(instances: Instances, name: str) -> None:
    pep = instances[name]
    mark = pep.mark()
    r = httpx.get(f"{pep.url}/raw/str-body", timeout=5)
    assert r.status_code == 500, (r.status_code, r.text)
    pep.wait_for(r"Exception in WSGI application \(GET /raw/str-body\)", 10, start=mark)
    assert httpx.get(f"{pep.url}/hello", timeout=10).status_code == 200


@pytest.mark.parametrize(("path", "size"), [("/file", 1_000_003), ("/raw/file", 32 * MIB + 123)])
def test_file_wrapper_download(pep: Instance, path: str, size: int) -> None:
    r = httpx.get(f"{pep.url}{path}?size={size}", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(size)
    assert len(r.content) == size and sha(r.content) == sha(pattern(size))


@pytest.mark.parametrize("path", ["/file", "/raw/file"])
def test_file_wrapper_sends_from_the_files_position_and_no_more_than_content_length(pep: Instance, path: str) -> None:
    size = 5 * MIB
    with conn(pep) as c:
        c.send(
            raw_request(pep, f"{path}?size={size}&offset=100&length=1000")
            + raw_request(pep, f"{path}?size={size}&offset={MIB}")
            + raw_request(pep, "/hello")
        )
        part, rest, after = c.read_response(), c.read_response(), c.read_response()
    assert part.body == pattern(size)[100:1100]
    assert rest.body == pattern(size)[MIB:]
    assert after.status == 200 and after.text.startswith("hello")


def test_a_slow_reader_of_a_file_does_not_hold_up_the_worker(pep: Instance) -> None:
    """--threads 1: the file goes out from the event loop, so a client that reads it slowly does
    not keep the worker's one thread from other requests."""
    with socket.create_connection((pep.host, pep.port), timeout=10) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.sendall(raw_request(pep, f"/raw/file?size={64 * MIB}"))
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")  # it has begun; now the client reads nothing
        r = httpx.get(f"{pep.url}/hello", timeout=5)
        assert r.status_code == 200


def io_counter(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/io")


@pytest.mark.parametrize("name", ["pep", "threads4"])
def test_file_wrapper_uses_sendfile(instances: Instances, name: str) -> None:
    """Issue 10: wsgi.file_wrapper is sent with sendfile where the transport allows (plain TCP
    here). Read in the app's 4 KiB blocks, 32 MiB takes 8192 read() calls; sendfile moves far more
    per call (what the socket takes), and each counts once in the process's syscr."""
    pep = instances[name]
    (pid,) = pep.worker_pids()
    size, blksize = 32 * MIB, 4096
    url = f"{pep.url}/raw/file?size={size}&blksize={blksize}"
    assert httpx.get(url.replace("/raw/file", "/hello"), timeout=10).status_code == 200
    before = io_counter(pid, "syscr")
    r = httpx.get(url, timeout=30)
    reads = io_counter(pid, "syscr") - before
    assert r.status_code == 200 and sha(r.content) == sha(pattern(size))
    assert reads < size // blksize // 4, (
        f"{reads} read calls for {size // blksize} blocks: the file went through read()"
    )


@pytest.mark.parametrize(("route", "mb"), [("/stream", 200), ("/write-big", 100)])
def test_a_large_body_read_slowly_keeps_the_worker_small(pep: Instance, route: str, mb: int) -> None:
    """200 MiB from a generator (a fresh 1 MiB object per chunk), 100 MiB through write(), to a
    client that stops reading for a second after the first MiB: the worker's memory must not grow
    by the body (backpressure)."""
    (pid,) = pep.worker_pids()
    base = reset_peak_rss(pid)
    peak = base
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(raw_request(pep, f"{route}?mb={mb}", headers=[("Connection", "close")]))
        first = sock.recv(MIB)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        paused_until = time.monotonic() + 1.0
        while time.monotonic() < paused_until:  # the slow reader: reads nothing for 1 s
            peak = max(peak, rss_kib(pid))
            time.sleep(0.05)
        data, closed = until_close(sock, 30)
    head, _, body = (first + data).partition(b"\r\n\r\n")
    peak = max(peak, rss_kib(pid, "VmHWM"))
    assert closed and len(body) == mb * MIB, (len(body), head)
    assert body[-MIB:] == pattern(MIB)[:-1] + bytes([(mb - 1) % 256])
    grew = (peak - base) / 1024
    assert grew < 64, f"the worker's RSS grew by {grew:.0f} MiB while streaming {mb} MiB (from {base // 1024} MiB)"


def test_content_length_or_chunked_chosen_correctly(pep: Instance) -> None:
    with conn(pep) as c:
        known = c.get("/hello")
        assert "transfer-encoding" not in known.headers
        assert known.headers["content-length"] == str(len(known.body))
        unknown = c.get("/nolength?n=5")
        assert unknown.headers.get("transfer-encoding") == "chunked" and "content-length" not in unknown.headers
        assert unknown.body == b"".join(f"part {i}\n".encode() for i in range(5))
        assert unknown.keep_alive and c.get("/hello").status == 200
    # HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(raw_request(pep, "/nolength?n=5", version="HTTP/1.0"))
        data, closed = until_close(sock, 10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert closed and b"chunked" not in head.lower(), head
    assert body == b"".join(f"part {i}\n".encode() for i in range(5))


def test_a_body_shorter_than_its_content_length_cuts_the_connection(pep: Instance) -> None:
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(raw_request(pep, "/mislength?declared=100&sent=50"))
        data, closed = until_close(sock, 3)
    assert closed, f"the client was left waiting for the 50 missing bytes: {data!r}"
    assert httpx.get(f"{pep.url}/hello", timeout=10).status_code == 200


def test_a_body_longer_than_its_content_length_does_not_corrupt_the_connection(pep: Instance) -> None:
    # The server may cut the connection (at once, or after 100 bytes) or drop the extra bytes; what it
    # must not do is send them, where the client reads them as the start of the next response.
    outcomes: list[Response | str] = []
    with conn(pep) as c:
        c.send(raw_request(pep, "/mislength?declared=100&sent=150") + raw_request(pep, "/hello"))
        for _ in range(2):
            try:
                outcomes.append(c.read_response())
            except RequestFailed as e:
                outcomes.append(e.kind)
                break
    ok = ("closed_before_response", "reset")
    assert outcomes[0] in ok or (isinstance(outcomes[0], Response) and outcomes[0].body == b"m" * 100), outcomes
    assert outcomes[-1] in ok or (isinstance(outcomes[-1], Response) and outcomes[-1].status == 200), outcomes


def test_header_values_are_latin_1(pep: Instance) -> None:
    with socket.create_connection((pep.host, pep.port), timeout=10) as sock:
        sock.sendall(raw_request(pep, "/latin1", headers=[("Connection", "close")]))
        data, _ = until_close(sock, 10)
    assert b"\r\nx-latin: caf\xe9 \xa7 ok\r\n" in data.lower(), data


def test_head_sends_no_body_and_the_same_headers(pep: Instance) -> None:
    for path in ("/hello", "/nolength?n=3", "/raw/file?size=5000", "/write"):
        with conn(pep) as c:
            c.send(raw_request(pep, path, "HEAD") + raw_request(pep, path))  # pipelined: HEAD framing shows
            head = c.read_response("HEAD")
            get = c.read_response("GET")
        assert (head.status, get.status) == (200, 200)
        for name in ("content-type", "content-length"):
            assert head.headers.get(name) == get.headers.get(name), (path, name, head.headers, get.headers)
        # RFC 9112 6.1: a HEAD response may leave out the Transfer-Encoding a GET would have
        assert head.headers.get("transfer-encoding") in (None, get.headers.get("transfer-encoding")), head.headers


def test_204_and_304_have_no_body(pep: Instance) -> None:
    with conn(pep) as c:
        c.send(raw_request(pep, "/status/204") + raw_request(pep, "/status/304") + raw_request(pep, "/hello"))
        rs = [c.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [204, 304, 200]
    for r in rs[:2]:
        assert "transfer-encoding" not in r.headers and r.headers.get("content-length", "0") == "0", r.headers


def test_keep_alive_reuse_and_pipelining(pep: Instance) -> None:
    with conn(pep) as c:
        answers = [c.get("/hello") for _ in range(3)]
        assert all(r.status == 200 and r.keep_alive for r in answers)
        c.send(raw_request(pep, "/hello") + raw_request(pep, "/nolength?n=2") + raw_request(pep, "/write"))
        piped = [c.read_response() for _ in range(3)]
    assert [r.body for r in piped] == [answers[0].body, b"part 0\npart 1\n", b"one two three"]


# -- guards ----------------------------------------------------------------------------------------


def test_oversized_headers_get_431(pep: Instance) -> None:
    r = httpx.get(f"{pep.url}/hello", headers={"x-big": "a" * 70_000}, timeout=10)
    assert r.status_code == 431
    assert httpx.get(f"{pep.url}/hello", headers={"x-fine": "a" * 10_000}, timeout=10).status_code == 200


def test_slow_head_gets_408(pep: Instance) -> None:
    with socket.create_connection((pep.host, pep.port), timeout=10) as slow:
        slow.sendall(b"GET /hello HTTP/1.1\r\n")
        started, data = time.monotonic(), b""
        while time.monotonic() - started < 6 and b"408" not in data:
            try:
                slow.sendall(b"x-trickle: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            slow.settimeout(0.2)
            try:
                chunk = slow.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
    assert b"408 Request Timeout" in data, data
    assert 0.8 < elapsed < 4, elapsed


def test_max_connections_answers_503_beyond_the_limit(instances: Instances) -> None:
    inst = instances["maxconn"]  # --max-connections 4
    conns: list[Connection] = []
    statuses = []
    try:
        for _ in range(6):  # one at a time: connect, ask, keep the connection open
            conns.append(conn(inst))
            statuses.append(conns[-1].get("/hello").status)
    finally:
        for c in conns:
            c.close()
    assert statuses[0] == 200 and 503 in statuses, statuses
    wait_until(lambda: httpx.get(f"{inst.url}/hello", timeout=10).status_code == 200, 10, "a 200 after the closes")


# -- threads ---------------------------------------------------------------------------------------


def test_threads_1_runs_one_request_at_a_time(pep: Instance) -> None:
    assert max_running(pep, clients=4, ms=50) == 1


def test_threads_4_runs_four_requests_at_a_time(instances: Instances) -> None:
    inst = instances["threads4"]
    env = environ_of(inst)
    assert (env["wsgi.multithread"], env["in_main_thread"]) == (True, False)
    running = max_running(inst, clients=8, ms=50)
    assert 3 <= running <= 4, running


# -- Flask and Django ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flask", "django"])
def test_framework_upload_of_20_mb(instances: Instances, kind: str) -> None:
    inst = instances[kind]
    data = os.urandom(20 * 1000 * 1000)
    r = httpx.post(f"{inst.url}/upload", files={"file": ("up.bin", data, "application/octet-stream")}, timeout=30)
    assert r.status_code == 200, r.text[:2000]
    assert r.text.startswith(f"len={len(data)} sha256={sha(data)} name=up.bin"), r.text


def test_flask_chunked_upload(instances: Instances) -> None:
    inst = instances["flask"]
    data = os.urandom(5 * MIB + 1)
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    r = httpx.post(f"{inst.url}/echo-hash", content=pieces, timeout=30)  # an iterator: httpx sends it chunked
    assert r.status_code == 200 and r.text == f"len={len(data)} sha256={sha(data)}\n", r.text


@pytest.mark.parametrize("kind", ["flask", "django"])
def test_framework_file_download(instances: Instances, kind: str) -> None:
    inst = instances[kind]
    size = 20 * MIB + 5
    r = httpx.get(f"{inst.url}/download?size={size}", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(size)
    assert "attachment" in r.headers["content-disposition"] and "data.bin" in r.headers["content-disposition"]
    assert sha(r.content) == sha(pattern(size))


def test_flask_range_request(instances: Instances) -> None:
    inst = instances["flask"]  # (Django's FileResponse answers a Range request in full)
    size = 3 * MIB
    r = httpx.get(f"{inst.url}/download?size={size}", headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert r.status_code == 206, r.headers
    assert r.content == pattern(size)[1000:2000]


@pytest.mark.parametrize("kind", ["flask", "django"])
def test_framework_streamed_response(instances: Instances, kind: str) -> None:
    inst = instances[kind]
    with conn(inst) as c:
        r = c.get("/stream?n=7")
        assert r.status == 200
        assert r.headers.get("transfer-encoding") == "chunked", r.headers
        assert r.body == b"".join(f"item {i} of 7\n".encode() for i in range(7))
        assert r.keep_alive and c.get("/").status == 200


@pytest.mark.parametrize(
    ("kind", "path", "location", "target"),
    [
        ("flask", "/redirect", "/target?x=1", "target x=1 script_name=''"),
        ("flask", "/debug/redirect", "/debug/target?x=1", "target x=1 script_name='/debug'"),
        ("django", "/redirect", "/target", "target script_name='' path=/target"),
    ],
)
def test_framework_redirect(instances: Instances, kind: str, path: str, location: str, target: str) -> None:
    inst = instances[kind]
    r = httpx.get(f"{inst.url}{path}", timeout=10)
    assert r.status_code == 302
    assert r.headers["location"] in (location, f"{inst.url}{location}")
    followed = httpx.get(f"{inst.url}{path}", timeout=10, follow_redirects=True)
    assert (followed.status_code, followed.text) == (200, target + "\n")


@pytest.mark.parametrize(
    ("kind", "path", "debug_page"),
    [("flask", "/boom", False), ("flask", "/debug/boom", True), ("django", "/boom", True)],
)
def test_framework_exception_page(instances: Instances, kind: str, path: str, debug_page: bool) -> None:
    inst = instances[kind]
    r = httpx.get(f"{inst.url}{path}", timeout=10)
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/html")
    shows_traceback = "ZeroDivisionError" in r.text and f"{kind}proj boom on purpose" in r.text
    assert shows_traceback == debug_page, r.text[:1000]
    assert httpx.get(f"{inst.url}/", timeout=10).status_code == 200


# -- last: what the validator saw ------------------------------------------------------------------


def test_the_validator_saw_no_breach(instances: Instances) -> None:
    """wsgiref.validate raises AssertionError (a 500 and a traceback) or warns for each breach it
    sees, and complains of an iterable the server never closed; none of that was logged."""
    for name in ("pep", "threads4"):
        out = instances[name].output_since(0)
        for sign in ("AssertionError", "WSGIWarning", "garbage collected without being closed"):
            assert sign not in out, f"{name}: {sign}:\n{out}"


# The routes that fail on purpose. Anything else logged as the app's exception is the server's
# fault: a client that went away (mid-stream, mid-upload) is no error of the app's.
FAILING_ROUTES = ("/raise", "/raise-mid", "/exc-after", "/raw/str-body", "/mislength", "/boom", "/debug/boom")


def test_only_the_failing_routes_were_logged_as_app_errors(instances: Instances) -> None:
    wrong = []
    for name in instances.all:
        if name in instances.errors:
            continue
        lines = instances[name].output_since(0).splitlines()
        for i, line in enumerate(lines):
            if "Exception in" in line or "Internal Server Error:" in line:
                path = line.rpartition(" ")[2].strip("()").partition("?")[0]
                if path not in FAILING_ROUTES:
                    error = next((x for x in lines[i + 1 :] if x and not x.startswith((" ", "Traceback"))), "")
                    wrong.append(f"{name}: {line.partition(' ERROR ')[2] or line}: {error}")
    assert not wrong, "\n".join(sorted(set(wrong)))

"""A WSGI app that exercises PEP 3333 from the app's side, wrapped in ``wsgiref.validate.validator``:
``wsgi_pep3333:application``. tests/test_wsgi.py drives it route by route.

Every route runs under the validator, which turns any breach of the spec by the server (a missing
environ key, a non-str value, a header with ``\\n``, a read() without a size, an iterable never
closed) into an AssertionError, i.e. a 500 and a traceback in the log. Routes under ``/raw/`` reach
the same handlers without it: the validator wraps ``wsgi.input`` (it allows ``read()`` only with a
size) and the response iterable (which hides a ``wsgi.file_wrapper`` object from the server, so a
server cannot use sendfile for it).

Routes (``GET`` unless said):

- ``/environ/...``: the environ as JSON (str values, the ``wsgi.*`` flags, whether the app runs in the
  main thread); writes a line to ``wsgi.errors`` when ``?errors=TOKEN``.
- ``POST /input/read-n?n=N``: reads ``wsgi.input`` with ``read(N)`` until ``b""``; answers ``len``,
  ``sha256`` and the number of reads. ``POST /raw/input/read``: one ``read()`` with no size.
- ``POST /input/readline``, ``/input/readlines``, ``/input/iter``: the lines as JSON (latin-1).
- ``/write``: the ``write()`` callable, then a returned iterable. ``/write-big?mb=N``: N MiB by write().
- ``/closing?token=T&n=N&size=S``: N chunks of S bytes from an iterable with ``close()``;
  ``/closed?token=T`` answers ``closed after K`` (K chunks produced) once its close() was called.
- ``/exc-before``: start_response(200), an error, start_response(500, ..., exc_info): replaced.
- ``/exc-after?size=S``: a first chunk of S bytes, then start_response(..., exc_info): must re-raise.
- ``/file?size=N&blksize=B&offset=O&length=L`` (and ``/raw/file``): ``wsgi.file_wrapper`` of a file of N
  deterministic bytes, seeked to O, with a Content-Length of L (default: the rest).
- ``/stream?mb=N``: a generator of N fresh 1 MiB chunks (backpressure: the worker must not buffer).
- ``/nolength?n=N``: N chunks from a generator, no Content-Length. ``/hello``: with Content-Length.
  ``/mislength?declared=D&sent=S``: a Content-Length of D, S bytes sent. ``/latin1``: a latin-1 header.
- ``/status/CODE``: an empty answer with that status (204, 304).
- ``/raise``: the app raises before start_response. ``/raise-mid``: after a first chunk.
  ``/raw/str-body``: a list of one str (not bytes).
- ``/sleep?ms=M``: sleeps, counting requests running at once; ``/active?reset=1``: the highest count.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

MIB = 1024 * 1024
_lock = threading.Lock()
_closed: dict[str, int] = {}  # token -> chunks produced when close() was called
_active = 0
_max_active = 0
_files: dict[int, str] = {}


def pattern(size: int) -> bytes:
    """N deterministic bytes (what /file serves; the test computes the same)."""
    block = bytes(range(256)) * 256  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _query(environ: WSGIEnvironment) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response: StartResponse, body: str, status: str = "200 OK") -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def _json(start_response: StartResponse, obj: object) -> list[bytes]:
    data = json.dumps(obj).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _environ(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    token = _query(environ).get("errors")
    if token:
        environ["wsgi.errors"].write(f"wsgi.errors works {token}\n")
        environ["wsgi.errors"].flush()
    out: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
    for key in ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        value = environ.get(key)
        out[key] = list(value) if isinstance(value, tuple) else value
    out["has_file_wrapper"] = "wsgi.file_wrapper" in environ
    out["types"] = {k: type(v).__name__ for k, v in environ.items() if not k.startswith("wsgi.")}
    out["in_main_thread"] = threading.current_thread() is threading.main_thread()
    return _json(start_response, out)


class Closing:
    """An iterable with close(): records that the server called it."""

    def __init__(self, token: str, n: int, size: int) -> None:
        self.token, self.n, self.size = token, n, size
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        base = pattern(self.size)
        for i in range(self.n):
            self.produced += 1
            yield base[:-1] + bytes([i % 256])

    def close(self) -> None:
        with _lock:
            _closed[self.token] = self.produced


def _closing(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Closing(q["token"], int(q.get("n", "3")), int(q.get("size", "10")))


def _read_n(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    n = int(_query(environ).get("n", "65536"))
    h, total, reads = hashlib.sha256(), 0, 0
    stream = environ["wsgi.input"]
    while True:
        data = stream.read(n)
        assert len(data) <= n, (len(data), n)
        if not data:
            break
        h.update(data)
        total += len(data)
        reads += 1
    return _text(start_response, f"len={total} sha256={h.hexdigest()} reads={reads}")


def _lines(environ: WSGIEnvironment, start_response: StartResponse, how: str) -> list[bytes]:
    stream = environ["wsgi.input"]
    lines: list[bytes]
    if how == "readline":
        first = stream.readline(3)  # a size: at most 3 bytes, the rest of the line comes next
        lines = [first]
        while line := stream.readline():
            lines.append(line)
    elif how == "readlines":
        lines = stream.readlines()
    else:
        lines = list(stream)
    return _json(start_response, [line.decode("latin-1") for line in lines])


def _write(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one ")
    write(b"two ")
    return [b"three"]


def _exc_before(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("failed before the body")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced after exc_info"]


def _exc_after(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    size = int(_query(environ).get("size", str(256 * 1024)))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    yield b"x" * size
    try:
        raise ValueError("failed after the headers were sent")
    except ValueError:
        # PEP 3333: the headers are out, so start_response must re-raise; the server must then
        # cut the connection rather than pass the response off as complete.
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    yield b"must never be sent"


def file_of(size: int) -> str:
    """The path of a temporary file of ``pattern(size)`` (made once per process and size)."""
    with _lock:
        path = _files.get(size)
        if path is None:
            fd, path = tempfile.mkstemp(prefix="wsgi-pep3333-")
            with os.fdopen(fd, "wb") as f:
                f.write(pattern(size))
            _files[size] = path
    return path


def _file(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    q = _query(environ)
    size = int(q.get("size", "100000"))
    offset = int(q.get("offset", "0"))
    f = open(file_of(size), "rb")  # noqa: SIM115  # closed by the file wrapper's close()
    f.seek(offset)  # the server sends from the file's position...
    length = q.get("length", str(size - offset))  # ...and never more than the Content-Length
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", length)])
    wrapper = environ["wsgi.file_wrapper"]
    result: Iterable[bytes] = wrapper(f, int(q.get("blksize", "65536")))
    return result


def _stream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    mb = int(_query(environ).get("mb", "10"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(mb * MIB))])
    base = pattern(MIB)
    for i in range(mb):
        yield base[:-1] + bytes([i % 256])  # a fresh object each time: buffering them would show in RSS


def _write_big(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    mb = int(_query(environ).get("mb", "10"))
    write = start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(mb * MIB))])
    base = pattern(MIB)
    for i in range(mb):
        write(base[:-1] + bytes([i % 256]))  # write() must not return before the data is on its way
    return []


def _mislength(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", q["declared"])])
    sent = int(q["sent"])
    yield b"m" * (sent // 2)
    yield b"m" * (sent - sent // 2)


def _nolength(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    n = int(_query(environ).get("n", "3"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(n):
        yield f"part {i}\n".encode()


def _status(environ: WSGIEnvironment, start_response: StartResponse, code: str) -> list[bytes]:
    reason = {"204": "No Content", "304": "Not Modified"}.get(code, "Whatever")
    start_response(f"{code} {reason}", [("X-Status", code)])
    return []


def _raise_mid(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"y" * (256 * 1024)
    raise RuntimeError("the app failed in the middle of its body")


def _sleep(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    global _active, _max_active
    with _lock:
        _active += 1
        _max_active = max(_max_active, _active)
    try:
        time.sleep(int(_query(environ).get("ms", "50")) / 1000)
    finally:
        with _lock:
            _active -= 1
    return _text(start_response, f"slept pid={os.getpid()}")


def _max(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    global _max_active
    with _lock:
        value = _max_active
        if _query(environ).get("reset"):
            _max_active = 0
    return _text(start_response, f"max={value}")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The handlers, without the validator."""
    path = environ["PATH_INFO"].removeprefix("/raw")
    method = environ["REQUEST_METHOD"]
    if path.startswith("/environ"):
        return _environ(environ, start_response)
    if path == "/input/read-n" and method == "POST":
        return _read_n(environ, start_response)
    if path == "/input/read" and method == "POST":
        data = environ["wsgi.input"].read()
        return _text(start_response, f"len={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
    if path in ("/input/readline", "/input/readlines", "/input/iter") and method == "POST":
        return _lines(environ, start_response, path.rpartition("/")[2])
    if path == "/write":
        return _write(environ, start_response)
    if path == "/write-big":
        return _write_big(environ, start_response)
    if path == "/closing":
        return _closing(environ, start_response)
    if path == "/closed":
        with _lock:
            produced = _closed.get(_query(environ)["token"])
        return _text(start_response, "open" if produced is None else f"closed after {produced}")
    if path == "/exc-before":
        return _exc_before(environ, start_response)
    if path == "/exc-after":
        return _exc_after(environ, start_response)
    if path == "/file":
        return _file(environ, start_response)
    if path == "/stream":
        return _stream(environ, start_response)
    if path == "/nolength":
        return _nolength(environ, start_response)
    if path == "/mislength":
        return _mislength(environ, start_response)
    if path == "/latin1":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Latin", "caf\xe9 \xa7 ok")])
        return [b"latin-1 header"]
    if path == "/str-body":  # a str where bytes belong: the app's error (under /raw/: the validator would catch it)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes"]  # type: ignore[list-item]
    if path == "/hello":
        return _text(start_response, f"hello pid={os.getpid()}\n")
    if path.startswith("/status/"):
        return _status(environ, start_response, path.rpartition("/")[2])
    if path == "/raise":
        raise RuntimeError("the app failed before start_response")
    if path == "/raise-mid":
        return _raise_mid(environ, start_response)
    if path == "/sleep":
        return _sleep(environ, start_response)
    if path == "/active":
        return _max(environ, start_response)
    return _text(start_response, f"no route {path}\n", "404 Not Found")


_validated = validator(app)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``app`` under ``wsgiref.validate``, except for ``/raw/...`` (see the module's docstring)."""
    if environ.get("PATH_INFO", "").startswith("/raw/"):
        return app(environ, start_response)
    result: Iterable[bytes] = _validated(environ, start_response)
    return result

"""A WSGI app for gunicorn's sync worker: each answer says its version and the pid that served it;
a POST answers the length and sha256 of the body it read (the load client checks both)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

from ._state import VERSION


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        body = f"len={len(data)} sha256={hashlib.sha256(data).hexdigest()} version={VERSION}\n".encode()
    else:
        body = f"version={VERSION} pid={os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-App-Version", VERSION),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [body]

"""The benchmark app as a plain WSGI function (no framework): ``bench_wsgi:app``.

The same contract as ``bench_app``: ``VERSION`` is read once, at import, from the file named by
``BENCH_VERSION_FILE`` (``0`` when unset) and sent back in an ``x-app-version`` header, so a
client can tell which code answered; a POST body is read fully.

    liveswap run bench_wsgi:app                     (liveswap detects WSGI and adapts it with a2wsgi)
    gunicorn -k sync bench_wsgi:app, gunicorn -k gthread bench_wsgi:app
    uvicorn --interface wsgi bench_wsgi:app
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def _read_version() -> str:
    path = os.environ.get("BENCH_VERSION_FILE")
    if not path:
        return "0"
    with open(path, encoding="ascii") as f:
        return f.read().strip() or "0"


VERSION = _read_version()
BODY = f"hello from version {VERSION}\n".encode()
_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(BODY))),
    ("X-App-Version", VERSION),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:  # read the whole body, as a real handler would
        environ["wsgi.input"].read(length)
    start_response("200 OK", list(_HEADERS))
    return [BODY]

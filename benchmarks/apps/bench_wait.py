"""A WSGI app that waits 10 ms per request (``time.sleep``), as one that waits on a database or an
upstream would: ``bench_wait:app``. Its throughput is bounded by how many requests a server has in
the app at once (a thread per request), not by the CPU: 1 thread gives at most ~100 requests/s,
8 threads ~800.

    liveswap run bench_wait:app --threads 8
    gunicorn -k gthread --threads 8 bench_wait:app
    granian --interface wsgi --blocking-threads 8 bench_wait:app
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

WAIT_S = 0.010
BODY = b"waited 10 ms\n"
_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    time.sleep(WAIT_S)
    start_response("200 OK", list(_HEADERS))
    return [BODY]

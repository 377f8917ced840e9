"""What every kind shares: the version file (read once, at import), request parsing and the bodies."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import parse_qs

__all__ = [
    "BEHAVIOUR",
    "STREAM_DEFAULTS",
    "VERSION",
    "chunk",
    "headers",
    "index",
    "post_body",
    "query",
    "slow_seconds",
    "sse_event",
    "started",
    "stream_params",
    "text",
]


def _read_state() -> tuple[str, str]:
    with open(os.environ["LIVESWAP_TEST_STATE"]) as f:
        version, _, behaviour = f.read().strip().partition(" ")
    return version, behaviour


VERSION, BEHAVIOUR = _read_state()

if BEHAVIOUR == "fail-import":
    raise RuntimeError(f"broken code in version {VERSION}")

STREAM_DEFAULTS = (10, 0.1)


def headers(content_type: str = "text/plain; charset=utf-8") -> list[tuple[str, str]]:
    """The headers of every answer: the load client tallies x-app-version and x-worker-pid."""
    return [("content-type", content_type), ("x-app-version", VERSION), ("x-worker-pid", str(os.getpid()))]


def query(query_string: str | bytes) -> dict[str, str]:
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(query_string).items()}


def slow_seconds(query_string: str | bytes) -> float:
    return float(query(query_string).get("s", "1.5"))


def stream_params(query_string: str | bytes) -> tuple[int, float]:
    """``n`` chunks ``s`` seconds apart."""
    q = query(query_string)
    return int(q.get("n", STREAM_DEFAULTS[0])), float(q.get("s", STREAM_DEFAULTS[1]))


def index() -> tuple[int, bytes]:
    """GET /: (status, body)."""
    if BEHAVIOUR == "unhealthy":
        return 500, f"unhealthy {VERSION}\n".encode()
    return 200, f"version={VERSION}\n".encode()


def text(line: str) -> bytes:
    return f"{line}\n".encode()


def post_body(data: bytes) -> bytes:
    """What the load client's post mode checks: len= and sha256= of the bytes it sent."""
    return f"len={len(data)} sha256={hashlib.sha256(data).hexdigest()} version={VERSION}\n".encode()


def chunk(i: int) -> bytes:
    return f"chunk {i} {VERSION}\n".encode()


def sse_event(i: int) -> bytes:
    return f"id: {i}\ndata: event {i} {VERSION}\n\n".encode()


def started(what: str) -> None:
    """Tell the test (through liveswap's output) that a request is in flight: 'slow request started' etc."""
    print(f"{what} started in pid {os.getpid()}", flush=True)

"""The heads the proxy writes: the client's request head rewritten for the upstream, the upstream's
response head rewritten for the client, and the proxy's own plain-text answers.

What passes unchanged: the method, the raw target, the Host the client sent, every end-to-end header
(names as the client spelled them), the body, the status and every response header, each
``Set-Cookie`` on its own. What changes: the hop-by-hop headers are dropped both ways (they describe
one connection, and the proxy makes two), and ``X-Forwarded-For`` (appended), ``X-Forwarded-Proto``
and ``X-Forwarded-Host`` (set) tell the upstream who asked. ``Expect: 100-continue`` passes through,
and so does the upstream's ``100 Continue``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

__all__ = ["HOP_BY_HOP", "Request", "hop_by_hop", "plain_answer", "request_head"]

# RFC 9110 7.6.1, plus Proxy-* (Proxy-Authorization, Proxy-Authenticate, Proxy-Connection).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

Headers = list[tuple[bytes, bytes]]


class Request(NamedTuple):
    head: bytes
    has_host: bool
    chunked: bool
    has_body: bool


def hop_by_hop(headers: Headers) -> frozenset[bytes]:
    """The fixed set, plus any header the message's own ``Connection`` names."""
    named = [
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    ]
    return HOP_BY_HOP.union(named) if named else HOP_BY_HOP


def request_head(method: bytes, target: bytes, headers: Headers, peer: bytes, upgrade: bytes | None) -> Request:
    """The head to send upstream, without its final empty line, and what the proxy must know of the body.

    ``upgrade``: the client asked to switch to this protocol, and the upstream is asked the same.
    A chunked body goes on chunked (httptools refuses a request with a Content-Length as well)."""
    skip = hop_by_hop(headers)
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    chain: list[bytes] = []
    host = b""
    chunked = has_body = False
    for name, value in headers:
        low = name.lower()
        if low in skip or low.startswith(b"proxy-"):
            if low == b"transfer-encoding":
                chunked = has_body = True
            continue
        if low in _FORWARDED:
            if low == b"x-forwarded-for":
                chain.append(value)
            continue  # Proto and Host are ours to say: a client could claim anything
        if low == b"host":
            host = value
        elif low == b"content-length":
            has_body = value.strip() not in (b"0", b"")
        out += (name, b": ", value, b"\r\n")
    if peer:
        chain.append(peer)
    if chain:
        out += (b"x-forwarded-for: ", b", ".join(chain), b"\r\n")
    out.append(b"x-forwarded-proto: http\r\n")
    if host:
        out += (b"x-forwarded-host: ", host, b"\r\n")
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    if upgrade is not None:
        out += (b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n")
    return Request(b"".join(out), bool(host), chunked, has_body)


def status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def plain_answer(status: int, message: str, hint: str, *, keep_alive: bool = True) -> bytes:
    """``502 <message>`` and, on the next line, ``hint: ...``: the proxy's own answers, as a response."""
    body = f"{status} {message}\nhint: {hint}\n".encode()
    reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ else b""
    head = status_line(
        status, reason
    ) + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\ncache-control: no-store\r\n" % len(body)
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def no_upstream(hold_timeout: float) -> tuple[str, str]:
    return (
        f"Service Unavailable: no upstream server was running for {hold_timeout:g} s",
        "the server command is still starting, or failed to start or keeps crashing: "
        "its output and liveswap's reasons are in the liveswap log",
    )


DOWN_HINT = "liveswap replaces a server that exits; if this persists, see the liveswap log for its output"
CRASH_HINT = "the server may have crashed or been killed while handling this request; see the liveswap log"

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 12\r\n"
    b"connection: close\r\n\r\nBad request\n"
)
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\n"
    b"connection: close\r\n\r\nRequest headers not received within limit."
)
TOO_LARGE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nRequest header fields too large."
)
BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 20\r\n"
    b"connection: close\r\n\r\nToo many connections"
)

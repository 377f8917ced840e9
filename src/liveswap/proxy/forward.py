"""One HTTP request through the proxy: the client's request to an upstream, its answer back.

What passes unchanged: the method, the raw target, the Host the client sent, every end-to-end header,
the body (streamed both ways, never decompressed: ``aiter_raw``), the status and every response
header, each ``Set-Cookie`` on its own. What changes: the hop-by-hop headers are dropped both ways
(they describe one connection, and the proxy makes two), and ``X-Forwarded-For`` (appended),
``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (set) tell the upstream who asked.

What the client sees when the upstream fails:

- before any byte of the answer: ``502`` (``504`` for a connect timeout), a plain-text reason naming
  the upstream and a ``hint:`` line; never a traceback;
- after the head went out: the connection is closed mid-body (the client sees a short body or an
  unfinished chunked stream, never a complete-looking wrong one);
- with no upstream at all for the hold timeout: ``503``.

Nothing that may have reached the upstream is sent twice. Only a GET or HEAD without a body whose
connection failed before a byte was written (httpx's ``ConnectError``) is tried once more, on the
next upstream in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .upstreams import NoUpstream, Routes, Upstream

__all__ = ["HOP_BY_HOP", "forward_http", "plain_answer", "request_headers"]

log = logging.getLogger("liveswap.proxy")

# RFC 9110 7.6.1, plus Proxy-* (Proxy-Authorization, Proxy-Authenticate, Proxy-Connection). Expect
# too: the public server already answered ``100 Continue`` when the body was first read.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_RETRYABLE = frozenset({"GET", "HEAD"})
_SCHEMES = {"ws": b"http", "wss": b"https"}


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The fixed set, plus any header the message's own ``Connection`` names."""
    named = [
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    ]
    return HOP_BY_HOP.union(named) if named else HOP_BY_HOP


def request_headers(scope: Any, drop: frozenset[bytes] = frozenset()) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers to send upstream, and the Host the client sent (b"" if none)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    skip = _hop_by_hop(headers)
    out: list[tuple[bytes, bytes]] = []
    chain: list[bytes] = []
    host = b""
    for name, value in headers:  # uvicorn gives names in lower case, as ASGI requires
        if name in skip or name in drop or name.startswith(b"proxy-"):
            continue
        if name in _FORWARDED:
            if name == b"x-forwarded-for":
                chain.append(value)
            continue  # Proto and Host are ours to say: a client could claim anything
        if name == b"host":
            host = value
        out.append((name, value))
    client = scope.get("client")
    if client:
        chain.append(str(client[0]).encode("latin-1"))
    if chain:
        out.append((b"x-forwarded-for", b", ".join(chain)))
    scheme = scope.get("scheme", "http")
    out.append((b"x-forwarded-proto", _SCHEMES.get(scheme, scheme.encode("latin-1"))))
    if host:
        out.append((b"x-forwarded-host", host))
    return out, host


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    skip = _hop_by_hop(raw)
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        name = name.lower()
        if name not in skip and not name.startswith(b"proxy-"):
            out.append((name, value))
    return out


def plain_answer(status: int, message: str, hint: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``502 <message>`` and, on the next line, ``hint: ...``: the proxy's own answers."""
    body = f"{status} {message}\nhint: {hint}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return headers, body


async def _answer(send: Any, status: int, message: str, hint: str) -> None:
    headers, body = plain_answer(status, message, hint)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def no_upstream_answer(routes: Routes) -> tuple[str, str]:
    return (
        f"Service Unavailable: no upstream server was running for {routes.hold_timeout:g} s",
        "the server command is still starting, or failed to start or keeps crashing: "
        "its output and liveswap's reasons are in the liveswap log",
    )


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


async def _body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _root_cause(exc: BaseException) -> BaseException:
    """The OS error under httpx's and anyio's wrappers ("All connection attempts failed")."""
    for _ in range(8):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _failure(exc: httpx.TransportError, upstream: Upstream) -> tuple[int, str, str]:
    """Status, reason and hint for an upstream that failed before its answer began."""
    where = f"upstream {upstream}"
    down = "liveswap replaces a server that exits; if this persists, see the liveswap log for its output"
    if isinstance(exc, httpx.ConnectTimeout):
        return 504, f"Gateway Timeout: {where} did not accept a connection in time", down
    if isinstance(exc, httpx.ConnectError):
        cause = _root_cause(exc)
        what = "refused the connection" if isinstance(cause, ConnectionRefusedError) else "could not be connected to"
        return 502, f"Bad Gateway: {where} {what} ({cause or exc or 'connect failed'})", down
    if isinstance(exc, httpx.RemoteProtocolError):
        reason = f"closed the connection without answering ({exc})"
    elif isinstance(exc, httpx.ReadError | httpx.WriteError):
        reason = f"reset the connection before answering ({exc or type(exc).__name__})"
    else:
        reason = f"failed before answering: {type(exc).__name__}: {exc}"
    hint = "the server may have crashed or been killed while handling this request; see the liveswap log"
    return 502, f"Bad Gateway: {where} {reason}", hint


async def forward_http(routes: Routes, scope: Any, receive: Any, send: Any) -> None:
    """Serve one ``http`` scope through an upstream."""
    headers, _ = request_headers(scope)
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    method: str = scope["method"]
    body = _body(receive) if _has_body(scope["headers"]) else None
    retries = 1 if body is None and method in _RETRYABLE else 0
    while True:
        try:
            pool = await routes.acquire()
        except NoUpstream:
            await _answer(send, 503, *no_upstream_answer(routes))
            return
        try:
            upstream = pool.upstream
            url = httpx.URL(scheme="http", host=upstream.host, port=upstream.port, raw_path=target)
            request = httpx.Request(method, url, headers=headers, content=body)
            try:
                response = await pool.client.send(request, stream=True)
            except httpx.ConnectError:
                if retries:
                    retries -= 1
                    continue  # not a byte was written: the next upstream in turn may take it
                raise
            try:
                await _relay(response, receive, send)
            finally:
                await response.aclose()
            return
        except ClientGone:
            return  # nobody left to answer
        except httpx.TransportError as exc:
            status, reason, hint = _failure(exc, pool.upstream)
            log.warning("proxy: %s %s: %s", method, scope["path"], reason)
            await _answer(send, status, reason, hint)
            return
        finally:
            routes.release(pool)


async def _relay(response: httpx.Response, receive: Any, send: Any) -> None:
    """The upstream's answer to the client. A client that disconnects mid-stream ends the relay (a
    watcher task waits for its ``http.disconnect``), so an endless stream does not keep the upstream
    in flight for ever; it is started only for a body that does not arrive at once."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response_headers(response.headers.raw),
        }
    )
    length = response.headers.get("content-length")
    expected = int(length) if length is not None and length.isdigit() else -1
    task = asyncio.current_task()
    watcher: asyncio.Task[None] | None = None
    gone = asyncio.Event()
    finished = False
    try:
        async for chunk in response.aiter_raw():
            if response.num_bytes_downloaded == expected:
                # The whole body: the client has it in one message. The loop still runs to its end
                # (at once), so that httpx sees the end of the response and pools the connection.
                await send({"type": "http.response.body", "body": chunk})
                finished = True
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if watcher is None and task is not None:
                watcher = asyncio.get_running_loop().create_task(_watch(receive, task, gone))
        if watcher is not None:
            watcher.cancel()  # before the end of the response, which it would take for a disconnect
        if not finished:
            await send({"type": "http.response.body", "body": b""})
    except httpx.TransportError as exc:
        # The head has gone out: all we can do is cut the connection, so the client sees a short
        # body rather than a complete-looking wrong one. uvicorn closes it when we return.
        log.warning(
            "proxy: upstream failed mid-response (%s: %s); closing the client connection", type(exc).__name__, exc
        )
    except asyncio.CancelledError:
        if gone.is_set() and task is not None and task.uncancel() == 0:
            return  # the client went away: stop reading the upstream
        raise
    finally:
        if watcher is not None:
            watcher.cancel()


async def _watch(receive: Any, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    task.cancel()

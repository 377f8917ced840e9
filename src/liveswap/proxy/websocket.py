"""One WebSocket through the proxy, pinned for its whole life to the upstream it connected to.

The client's handshake is answered only once the upstream accepted its own (same path, Host, cookies
and other end-to-end headers, the client's subprotocols; the upstream's choice is passed back). Then
messages are relayed both ways as they are (text stays text, bytes stay bytes), and a close on either
side is passed on with its code and reason. An upstream that vanishes without a close frame (killed
at a drain deadline, crashed) closes the client's side with 1012 (service restart): the code that
tells a client to reconnect, which reaches the next upstream.

A refused handshake is answered as HTTP (the ASGI ``websocket.http.response`` extension, which
uvicorn supports): the upstream's own rejection (403, 404...) as it sent it, or the proxy's 502/503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.uri import parse_uri

from .forward import no_upstream_answer, plain_answer, request_headers, response_headers
from .upstreams import NoUpstream, Routes, Upstream

__all__ = ["forward_websocket"]

log = logging.getLogger("liveswap.proxy")

# The handshake's own headers: websockets writes the upstream's, from its own key and extensions.
_HANDSHAKE = frozenset(
    {b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
# Codes that may not be sent in a close frame (RFC 6455 7.4.1), and what to send instead: to the
# client, an upstream that vanished is a service restart; to the upstream, a vanished client went away.
_TO_CLIENT: dict[int, int] = {
    CloseCode.NO_STATUS_RCVD: 1000,
    CloseCode.ABNORMAL_CLOSURE: 1012,
    CloseCode.TLS_HANDSHAKE: 1012,
}
_TO_UPSTREAM: dict[int, int] = {
    CloseCode.NO_STATUS_RCVD: 1000,
    CloseCode.ABNORMAL_CLOSURE: 1001,
    CloseCode.TLS_HANDSHAKE: 1001,
}
_SERVICE_RESTART = 1012


class _connect(connect):
    """websockets' connect, without following redirects: a 3xx goes back to the client as it is."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


async def _refuse(scope: Any, send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:  # the server answers 403
        await send({"type": "websocket.close", "code": 1011})


async def _open(upstream: Upstream, scope: Any, connect_timeout: float) -> ClientConnection:
    headers, host = request_headers(scope, drop=_HANDSHAKE)
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    path = target.decode("latin-1")
    # websockets writes Host from the URI, and connects to the host and port given apart: so the URI
    # carries the client's Host and the upstream receives it unchanged.
    uri = f"ws://{upstream.address}{path}"
    if host:
        try:
            parse_uri(f"ws://{host.decode('latin-1')}{path}")
            uri = f"ws://{host.decode('latin-1')}{path}"
        except (InvalidURI, ValueError):
            pass  # an odd Host: the upstream sees its own address instead
    return await _connect(
        uri,
        host=upstream.host,
        port=upstream.port,
        additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
        subprotocols=scope.get("subprotocols") or None,
        compression=None,  # loopback: deflate would only cost CPU twice
        user_agent_header=None,  # the client's own User-Agent is among the headers
        proxy=None,
        open_timeout=connect_timeout,
        ping_interval=None,  # the upstream pings if it wants to; websockets answers by itself
        max_size=None,  # the public side enforces the message size limit
        close_timeout=5.0,
    )


async def forward_websocket(routes: Routes, scope: Any, receive: Any, send: Any) -> None:
    """Serve one ``websocket`` scope through an upstream."""
    if (await receive())["type"] != "websocket.connect":
        return
    try:
        pool = await routes.acquire()
    except NoUpstream:
        headers, body = plain_answer(503, *no_upstream_answer(routes))
        await _refuse(scope, send, 503, headers, body)
        return
    upstream = pool.upstream
    try:
        try:
            ws = await _open(upstream, scope, routes.connect_timeout)
        except InvalidStatus as exc:  # the upstream answered the handshake with a refusal: pass it on
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.response.headers.raw_items()]
            await _refuse(scope, send, exc.response.status_code, response_headers(raw), bytes(exc.response.body))
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            reason = f"Bad Gateway: upstream {upstream} failed the WebSocket handshake ({type(exc).__name__}: {exc})"
            log.warning("proxy: WebSocket %s: %s", scope["path"], reason)
            hint = "liveswap replaces a server that exits; if this persists, see the liveswap log for its output"
            headers, body = plain_answer(502, reason, hint)
            await _refuse(scope, send, 502, headers, body)
            return
        try:
            cookies = ws.response.headers.get_all("Set-Cookie") if ws.response is not None else []
            accepted = [(b"set-cookie", v.encode("latin-1")) for v in cookies]
            await send({"type": "websocket.accept", "subprotocol": ws.subprotocol, "headers": accepted})
            await _relay(ws, receive, send)
        finally:
            ws.transport.abort()  # after a clean close there is nothing left to cut
    finally:
        routes.release(pool)


async def _relay(ws: ClientConnection, receive: Any, send: Any) -> None:
    loop = asyncio.get_running_loop()
    down = loop.create_task(_downstream(ws, send))
    up = loop.create_task(_upstream(ws, receive))
    try:
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if up in done:
            # The client left and we passed its close on: the upstream's reply ends ``down``,
            # within websockets' close timeout.
            await down
        else:
            up.cancel()
            client_open = down.result()
            if client_open:
                frame = ws.protocol.close_rcvd
                if frame is None:
                    code, reason = _SERVICE_RESTART, "upstream went away"
                else:
                    code, reason = _TO_CLIENT.get(frame.code, frame.code), frame.reason
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
    finally:
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)


async def _downstream(ws: ClientConnection, send: Any) -> bool:
    """Upstream to client, until the upstream closes; False if the client went away meanwhile."""
    try:
        async for message in ws:
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})
    except ConnectionClosed:
        pass  # an abnormal end (no close frame): reported to the client as a restart
    except OSError:  # uvicorn's ClientDisconnected: nobody to pass the rest to
        return False
    return True


async def _upstream(ws: ClientConnection, receive: Any) -> None:
    """Client to upstream, until the client closes (its close code goes on to the upstream)."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            try:
                await ws.send(text if text is not None else message.get("bytes") or b"")
            except ConnectionClosed:
                return  # the upstream is closing: ``down`` reports it
        elif kind == "websocket.disconnect":
            code = int(message.get("code", 1000))
            code = _TO_UPSTREAM.get(code, code)
            await ws.close(code, message.get("reason") or "")
            return

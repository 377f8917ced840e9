"""The browser-refresh script in a WSGI app's HTML pages, for ``liveswap dev`` on the native WSGI path.

The same rules as the ASGI :class:`~.refresh.RefreshMiddleware`, as a WSGI middleware: an
uncompressed HTML page (not a download, not HEAD, not 204/206/304) whose body comes to at most
``BUFFER_LIMIT`` is held until complete, then sent with the script before its last ``</body>`` and
its ``Content-Length`` fixed. Anything longer, or that is not such a page, passes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .refresh import _NO_BODY, BUFFER_LIMIT, _injectable, _insert, _with_length, script_tag

__all__ = ["WSGIRefresh"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGIRefresh:
    def __init__(self, app: WSGIApp, generation: int, *, limit: int = BUFFER_LIMIT) -> None:
        self.app = app
        self.snippet = script_tag(generation).encode()
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "HEAD":
            return self.app(environ, start_response)
        held: dict[str, Any] = {}
        written: list[bytes] = []
        returned = False

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            length = next((v for k, v in raw if k == b"content-length"), None)
            if (
                returned  # called from the iterable (a generator's first step): too late to hold
                or int(status[:3]) in _NO_BODY
                or not _injectable(raw)
                or (length is not None and (not length.strip().isdigit() or int(length) > self.limit))
            ):
                held.clear()
                return start_response(status, headers, exc_info)  # type: ignore[no-any-return]
            held.update(status=status, headers=headers, exc_info=exc_info)
            return written.append

        result = self.app(environ, hold)
        returned = True
        if not held:
            return result
        return _Held(self, result, held, written, start_response)


class _Held:
    """The response of an HTML page: read whole (up to the limit), then sent with the script."""

    def __init__(
        self,
        owner: WSGIRefresh,
        result: Iterable[bytes],
        held: dict[str, Any],
        written: list[bytes],
        start_response: Callable[..., Any],
    ) -> None:
        self.result = result
        body = bytearray(b"".join(written))
        iterator = iter(result)
        rest: list[bytes] = []
        for chunk in iterator:
            body += chunk
            if len(body) > owner.limit:  # longer than we hold: unchanged, the rest as it comes
                rest = [bytes(body)]
                break
        overflow = bool(rest)
        headers = held["headers"]
        if not rest:
            new = _insert(bytes(body), owner.snippet)
            if new is not None:
                raw = _with_length([(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers], len(new))
                if any(k.lower() == "content-length" for k, _ in headers):
                    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
                body = bytearray(new)
            rest = [bytes(body)]
        start_response(held["status"], headers, held["exc_info"])
        self.chunks: Iterator[bytes] = _chain(rest, iterator)
        # Read whole (the usual case): liveswap's native path writes it from the loop, no stream thread.
        self.streaming = overflow

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest

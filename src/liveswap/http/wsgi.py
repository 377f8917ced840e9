"""The native WSGI path's app side: the app as loaded, its environ, and ``wsgi.file_wrapper``.

a2wsgi runs a WSGI app behind an ASGI adapter: every message of every request crosses between the
event loop and a thread, which costs Flask and Django users most of their throughput. Here the
request is parsed by the same protocol as ASGI requests (``wsgi_protocol.py``), its body is read by
the event loop before the app is called, and the app is called once per request: in the loop's own
thread with ``--threads 1`` (one request at a time, like gunicorn's sync worker), or with one
handoff to a pool of ``--threads N``.

:class:`NativeWSGI` is what ``load_app`` returns for a WSGI app. It is also an ASGI app (through
a2wsgi, made on first use), so that whatever wraps apps in ASGI middleware (the dev server's
refresh script, the debug metrics) keeps working; ``WorkerServer`` serves an unwrapped one natively.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any
from urllib.parse import unquote_to_bytes

__all__ = ["FileWrapper", "NativeWSGI", "close_iterable", "environ_base", "header_key", "path_info"]

log = logging.getLogger("liveswap.worker")


class NativeWSGI:
    """A WSGI app served natively; called as ASGI, it goes through a2wsgi (the fallback).

    ``asgi_paths``: request paths served by an ASGI app beside it (``liveswap dev``'s event stream).
    """

    def __init__(self, app: Callable[..., Any], asgi_paths: dict[str, Any] | None = None) -> None:
        self.app = app
        self.asgi_paths = {path.encode("latin-1"): asgi for path, asgi in (asgi_paths or {}).items()}
        self._asgi: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        beside = self.asgi_paths.get(scope.get("raw_path", b"")) if scope["type"] == "http" else None
        if beside is not None:
            await beside(scope, receive, send)
            return
        if self._asgi is None:
            from a2wsgi import WSGIMiddleware

            self._asgi = WSGIMiddleware(self.app)
        await self._asgi(scope, receive, send)


class FileWrapper:
    """``wsgi.file_wrapper``: a file sent with ``sendfile`` when the transport allows (plain TCP or
    Unix sockets, a real file, a known length), else read in blocks of ``blksize``."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block

    def fileno(self) -> int | None:
        try:
            return self.filelike.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None


# Header name -> environ key, kept for the names seen (a few dozen in practice; bounded).
_KEYS: dict[bytes, str | None] = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def header_key(name: bytes) -> str | None:
    """The environ key of a (lower-case) header name; None for names with ``_``, which a client
    could use to pass for another header once ``-`` becomes ``_`` (gunicorn and nginx drop them)."""
    key = _KEYS.get(name)
    if key is None and name not in _KEYS:
        text = name.decode("latin-1")
        key = None if "_" in text else "HTTP_" + text.upper().replace("-", "_")
        if len(_KEYS) < 512:
            _KEYS[name] = key
    return key


def environ_base(server: tuple[str, int | None] | None, root_path: str, multithread: bool) -> dict[str, Any]:
    """What every request of one connection shares (copied per request)."""
    host, port = server if server else ("localhost", 80)
    return {
        "SCRIPT_NAME": root_path,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port or 0),
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
    }


def path_info(raw_path: bytes, root_path: str) -> str:
    """PEP 3333's PATH_INFO: percent-decoded bytes as latin-1, less ``--root-path`` when the request
    path starts with it (a proxy that did not strip its prefix), as gunicorn does."""
    path = unquote_to_bytes(raw_path).decode("latin-1") if b"%" in raw_path else raw_path.decode("latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        path = path[len(root_path) :]
    return path


def close_iterable(result: Iterable[bytes], path: str) -> None:
    """PEP 3333: the server calls the iterable's ``close()``, whatever happened; what it raises is logged."""
    close = getattr(result, "close", None)
    if close is None:
        return
    try:
        close()
    except BaseException as exc:  # noqa: BLE001 - the app's; the response is over either way
        log.error("WSGI app %s: its iterable's close() raised", path, exc_info=exc)

"""What every debug answer has in common, whoever serves it.

Two servers speak for the debug endpoints: a process's own (``app.py``, on uvicorn, in a worker or
under ``serve()``) and the supervisor's hub (``hub/``, on h11, for ``liveswap run``). Both take
the same token, send the same security headers, write errors the same way and bound a profile the
same way, all from here. Nothing here imports an HTTP engine: the supervisor loads it.
"""

from __future__ import annotations

import hmac
import json
import traceback
from typing import Any
from urllib.parse import quote

__all__ = [
    "HTML",
    "JSON",
    "PROFILE_DEFAULT_SECONDS",
    "PROFILE_MAX_SECONDS",
    "PROFILE_MIN_SECONDS",
    "PROMETHEUS",
    "SECURITY_HEADERS",
    "TEXT",
    "Headers",
    "HTTPError",
    "check_token",
    "internal_error",
    "json_body",
    "method_not_allowed",
    "not_found",
    "with_token",
]

Headers = list[tuple[bytes, bytes]]

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

# Sent with every answer: the pages show stacks and source lines, which no cache should keep and no
# browser should guess the type of; they need no script and load nothing from elsewhere.
SECURITY_HEADERS: Headers = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"),
]

# A worker's /profile?seconds=N takes N within these bounds; the hub's proxy waits that long.
PROFILE_MIN_SECONDS = 1.0
PROFILE_MAX_SECONDS = 60.0
PROFILE_DEFAULT_SECONDS = 10.0


class HTTPError(Exception):
    """An error answer: ``status``, a message and a hint, as text; ``headers`` go with it."""

    def __init__(self, status: int, message: str, hint: str | None = None, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.headers = headers or []

    def body(self) -> bytes:
        """``404 no debug endpoint at /x`` and, on the next line, ``hint: ...``."""
        return (f"{self.status} {self.message}\n" + (f"hint: {self.hint}\n" if self.hint else "")).encode("utf-8")


def internal_error() -> bytes:
    """The 500 body for the exception being handled: a debug server shows its own failures."""
    return ("500 the debug endpoint failed:\n\n" + traceback.format_exc()).encode("utf-8")


def check_token(expected: bytes | None, query_token: str | None, authorization: str | None) -> None:
    """Raise a 401 ``HTTPError`` unless ``expected`` is None or was given, as ``?token=`` or as
    ``Authorization: Bearer``. Compared in constant time."""
    if expected is None:
        return
    given = query_token
    if given is None:
        scheme, _, credentials = (authorization or "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
        raise HTTPError(
            401,
            "this debug server requires a token",
            "add ?token=<token> to the URL or send 'Authorization: Bearer <token>', "
            "with the token the server was started with (--debug-token)",
            [(b"www-authenticate", b'Bearer realm="liveswap debug"')],
        )


def not_found(path: str, listing: str) -> HTTPError:
    return HTTPError(404, f"no debug endpoint at {path}; the endpoints are:\n{listing}")


def method_not_allowed(path: str, method: str, allowed: tuple[str, ...]) -> HTTPError:
    methods = ", ".join(allowed)
    return HTTPError(405, f"{path} accepts {methods}, not {method}", headers=[(b"allow", methods.encode())])


def json_body(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=str).encode("utf-8") + b"\n"


def with_token(href: str, token: str | None) -> str:
    """``href`` with ``token=`` added, so that a page's links work for a client that sent ``?token=``."""
    if token is None:
        return href
    return href + ("&" if "?" in href else "?") + "token=" + quote(token, safe="")

"""liveswap's worker protocol as plain uvicorn ``--http`` classes, to price it apart from the rest.

    uvicorn bench_app:app --http guarded_variants:Guarded       # the protocol liveswap's workers run
    uvicorn bench_app:app --http guarded_variants:PassThrough   # uvicorn's protocol with an empty override

Defaults as ``liveswap run``: header timeout 10 s, 64 KiB header limit, 1 s idle grace. Plain
uvicorn has no tick sweep, so the header timeout is not enforced here: only the per-request cost
of the protocol is measured (the sweep runs once a tick per worker, not per request).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from liveswap.http.protocol import GuardedHttpToolsProtocol, Limits

_DEFAULT = Limits(header_timeout=10.0, max_header_bytes=65536, idle_grace=1.0)


class Guarded(GuardedHttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, limits=_DEFAULT, **kwargs)


class PassThrough(HttpToolsProtocol):
    """The floor for any Python-level mixin: the one method liveswap overrides on every request
    (data_received), overridden to do nothing but call uvicorn's."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)

"""liveswap's worker protocol as plain uvicorn ``--http`` classes, to price its parts one by one.

    uvicorn bench_app:app --http guarded_variants:Guarded                  # as liveswap's workers run
    uvicorn bench_app:app --http guarded_variants:GuardedNoHeaderTimer     # header timeout off
    uvicorn bench_app:app --http guarded_variants:GuardedNoTimerNo431Check # and the 431 check off

Defaults as ``liveswap run``: header timeout 10 s, 64 KiB header limit, 1 s idle grace.
"""

from __future__ import annotations

from typing import Any

from liveswap.worker.protocol import GuardedHttpToolsProtocol, Limits

_DEFAULT = Limits(header_timeout=10.0, max_header_bytes=65536, idle_grace=1.0)
_NO_TIMER = Limits(header_timeout=0.0, max_header_bytes=65536, idle_grace=1.0)


class Guarded(GuardedHttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, limits=_DEFAULT, **kwargs)


class GuardedNoHeaderTimer(GuardedHttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, limits=_NO_TIMER, **kwargs)


class GuardedNoTimerNo431Check(GuardedNoHeaderTimer):
    # A plain class attribute shadows the mixin's ``app`` property (the per-request header-size
    # check), so uvicorn's ``self.app = ...`` is an ordinary instance attribute again.
    app = None

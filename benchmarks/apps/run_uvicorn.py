"""``uvicorn.run`` on the benchmark app, as a user would start it: ``python run_uvicorn.py PORT``.

uvicorn's defaults pick uvloop and httptools when installed, as ``liveswap.serve`` does. To price
serve()'s parts one at a time (``serve_bench.py --only parts``):

    --metrics   wrap the app in liveswap's MetricsMiddleware, as serve() does
    --guarded   run liveswap's worker protocol (``--http guarded_variants:Guarded``)
    --wrap      wrap the app in an empty middleware that only wraps ``send``, the way the metrics
                middleware does: the floor for any such middleware
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from bench_app import app

OPTIONS = {"--metrics", "--guarded", "--wrap"}


class SendWrapper:
    """An ASGI middleware that wraps ``send`` in a closure per request and does nothing else."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped_send(message: Any) -> None:
            await send(message)

        await self.app(scope, receive, wrapped_send)


if __name__ == "__main__":
    port, flags = int(sys.argv[1]), set(sys.argv[2:])
    if flags - OPTIONS:
        sys.exit(f"unknown option(s) {sorted(flags - OPTIONS)}; expected some of {', '.join(sorted(OPTIONS))}")
    served: Any = app
    http: Any = "auto"
    if "--metrics" in flags:
        from liveswap.debug import Metrics, MetricsMiddleware

        served = MetricsMiddleware(served, Metrics())
    if "--wrap" in flags:
        served = SendWrapper(served)
    if "--guarded" in flags:
        from guarded_variants import Guarded

        http = Guarded
    uvicorn.run(served, host="127.0.0.1", port=port, http=http, log_level="warning", access_log=False)

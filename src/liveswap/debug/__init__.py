"""liveswap's debug server, like Go's net/http/pprof on its own port.

    from liveswap.debug import DebugServer, Metrics, MetricsMiddleware, bind_debug

    metrics = Metrics()
    app = MetricsMiddleware(app, metrics)               # count the app's requests
    server = DebugServer(bind_debug("127.0.0.1:6060"), metrics=metrics, main_loop=loop)
    server.start()                                      # own thread, own loop: answers while the app blocks

Endpoints: ``/`` (index), ``/stacks``, ``/profile``, ``/heap`` (+ ``/heap/start``, ``/heap/stop``),
``/stats``, ``/metrics``. Modules: ``metrics``, ``profile`` (+ ``flamegraph``), ``stacks``, ``heap``,
``stats``, ``app`` (router), ``bind`` (address parsing), ``server`` (the thread), ``errors``,
``_common`` (token, headers and error answers, shared by ``app`` and ``hub``), and ``hub`` (the one
debug port of ``liveswap run``, served by the supervisor for all workers).

Names are imported on first use: ``server`` imports uvicorn, which the supervisor must not load
(it imports ``bind``, ``metrics`` and ``hub`` only).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    DebugAddressInUseError,
    DebugBindError,
    DebugError,
    DebugPublicAddressError,
    DebugServerError,
    HeapNotTracingError,
    ProfileBusyError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .app import DebugApp, make_debug_app
    from .bind import bind_debug
    from .metrics import Metrics, MetricsMiddleware, merge_snapshots, render_prometheus
    from .server import DebugServer

__all__ = [
    "DebugAddressInUseError",
    "DebugApp",
    "DebugBindError",
    "DebugError",
    "DebugPublicAddressError",
    "DebugServer",
    "DebugServerError",
    "HeapNotTracingError",
    "Metrics",
    "MetricsMiddleware",
    "ProfileBusyError",
    "bind_debug",
    "make_debug_app",
    "merge_snapshots",
    "render_prometheus",
]

_LAZY = {
    "DebugApp": ".app",
    "make_debug_app": ".app",
    "bind_debug": ".bind",
    "Metrics": ".metrics",
    "MetricsMiddleware": ".metrics",
    "merge_snapshots": ".metrics",
    "render_prometheus": ".metrics",
    "DebugServer": ".server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'liveswap.debug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # next time, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

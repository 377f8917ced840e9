"""liveswap's debug server, like Go's net/http/pprof on its own port.

    from liveswap.debug import DebugServer, Metrics, MetricsMiddleware, bind_debug

    metrics = Metrics()
    app = MetricsMiddleware(app, metrics)               # count the app's requests
    server = DebugServer(bind_debug("127.0.0.1:6060"), metrics=metrics, main_loop=loop)
    server.start()                                      # own thread, own loop: answers while the app blocks

Endpoints: ``/`` (index), ``/stacks``, ``/profile``, ``/heap`` (+ ``/heap/start``, ``/heap/stop``),
``/stats``, ``/metrics``. Modules: ``metrics``, ``profile`` (+ ``flamegraph``), ``stacks``, ``heap``,
``stats``, ``app`` (router), ``bind`` (address parsing), ``server`` (the thread), ``errors``.
"""

from __future__ import annotations

from .app import DebugApp, make_debug_app
from .bind import bind_debug
from .errors import (
    DebugAddressInUseError,
    DebugBindError,
    DebugError,
    DebugServerError,
    HeapNotTracingError,
    ProfileBusyError,
)
from .metrics import Metrics, MetricsMiddleware, merge_snapshots, render_prometheus
from .server import DebugServer

__all__ = [
    "DebugAddressInUseError",
    "DebugApp",
    "DebugBindError",
    "DebugError",
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

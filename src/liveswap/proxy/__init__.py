"""liveswap's HTTP/1.1 and WebSocket proxy, in front of server commands on private loopback ports.

The supervisor boots a new upstream, health-checks it, ``switch``-es the proxy to it, waits until
the old one has ``drained``, then stops it; clients keep their connections to the proxy throughout.
"""

from .app import ProxyApp
from .server import ProxyServer
from .upstreams import Upstream

__all__ = ["ProxyApp", "ProxyServer", "Upstream"]

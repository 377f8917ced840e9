"""The proxy's routing, as the supervisor drives it; ``ProxyServer`` serves clients through it.

::

    app = ProxyApp(hold_timeout=30.0)
    app.add(Upstream("generation 1 pid 4242", "127.0.0.1", 40123))
    ...                                        # generation 2 booted and passed its health check:
    app.switch([new])                          # new requests go to it alone, from now on
    if await app.drained(old, timeout=30.0):   # nothing in flight to the old one any more
        ...                                    # SIGTERM it: no request can reach it

Every method runs in the one event loop that serves the requests; the table changes take effect
at once (no ``await``), so the order of the supervisor's calls is the order of the routing.
"""

from __future__ import annotations

from .upstreams import Routes, Upstream

__all__ = ["ProxyApp"]


class ProxyApp:
    """Forwards every request and WebSocket to one of a set of upstreams (served by ProxyServer).

    ``hold_timeout``: while no upstream is routed (before the first one, or between a crash and its
    replacement), requests wait this long for one, then get 503. ``connect_timeout`` bounds a
    connection to an upstream (then 504); ``keepalive_expiry`` is how long an idle pooled connection
    to an upstream is reused: keep it well under the upstream's own keep-alive timeout (uvicorn's
    is 5 s), so that no request is written to a connection the upstream is closing.
    """

    def __init__(self, hold_timeout: float = 30.0, *, connect_timeout: float = 5.0, keepalive_expiry: float = 1.0):
        self._routes = Routes(
            hold_timeout=hold_timeout, connect_timeout=connect_timeout, keepalive_expiry=keepalive_expiry
        )

    def add(self, upstream: Upstream) -> None:
        """Route new requests to ``upstream`` too, along with the current ones (round-robin)."""
        self._routes.add(upstream)

    def switch(self, upstreams: list[Upstream]) -> None:
        """From now on, new requests go to these upstreams only. Requests, streams and WebSockets in
        flight to the others finish where they are: wait for them with :meth:`drained`."""
        self._routes.switch(list(upstreams))

    def remove(self, upstream: Upstream) -> None:
        """No new request goes to ``upstream`` (a crashed server); with none left, requests are held."""
        self._routes.remove(upstream)

    async def drained(self, upstream: Upstream, timeout: float) -> bool:
        """Wait until nothing is in flight to ``upstream`` (requests, streams, WebSockets): True, and
        its idle connections are closed; or False after ``timeout`` (its pool is then closed when the last
        one ends, or by :meth:`aclose`). Raises ValueError while it is still routed: remove() or switch()
        away from it first. True at once for an upstream never added or already drained."""
        return await self._routes.drained(upstream, timeout)

    def in_flight(self, upstream: Upstream) -> int:
        """Requests, streams and WebSockets in flight to ``upstream`` now."""
        pool = self._routes.pools.get(upstream)
        return pool.in_flight if pool is not None else 0

    @property
    def upstreams(self) -> list[Upstream]:
        """The upstreams new requests go to, in routing order."""
        return [pool.upstream for pool in self._routes.live]

    @property
    def held(self) -> int:
        """Requests waiting for an upstream to be routed."""
        return self._routes.held

    async def aclose(self) -> None:
        """Close every upstream connection (the proxy is stopping)."""
        await self._routes.aclose()

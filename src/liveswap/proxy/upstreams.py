"""The proxy's routing table: which upstreams take new requests, and what is still in flight to each.

The supervisor changes the table (``add``, ``switch``, ``remove``) and waits for an old upstream to
finish (``drained``). Every request and WebSocket takes a *lease* on the upstream it is routed to,
in the same synchronous step that picks it (no ``await`` in between), so nothing can be routed to an
upstream after a ``switch`` returned, and nothing routed before it escapes the count that
``drained`` waits on. That is what lets the supervisor SIGTERM the old server the moment ``drained``
says True: no request can reach it any more.

Each upstream has its own pool of keep-alive connections (``Pool.spare``, newest last); closing the
pool when the server has drained closes exactly those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .upstream_side import UpstreamConnection

__all__ = ["NoUpstream", "Pool", "Routes", "Upstream"]

log = logging.getLogger("liveswap.proxy")


@dataclass(frozen=True)
class Upstream:
    """One server behind the proxy, listening on a private loopback port::

    Upstream("generation 3 pid 1234", "127.0.0.1", 40123)
    """

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


class NoUpstream(Exception):
    """No upstream was routed within the hold timeout."""


class Pool:
    """One upstream's connections and what is in flight to it."""

    def __init__(self, upstream: Upstream, *, keepalive_expiry: float) -> None:
        self.upstream = upstream
        self.routed = True
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.close_when_idle = False  # a drained() gave up waiting: close when the last lease ends
        # Idle keep-alive connections, the most recently used last. One is reused only within
        # keepalive_expiry of its last response, well before the upstream's own keep-alive timeout
        # closes it: so a request is never written to a connection the upstream is closing.
        self.keepalive_expiry = keepalive_expiry
        self.spare: list[UpstreamConnection] = []
        self.conns: set[UpstreamConnection] = set()  # all of them, idle or busy
        self.closed = False

    def take(self, now: float) -> UpstreamConnection | None:
        """The most recently used idle connection, if it is fresh enough."""
        spare = self.spare
        if spare:
            conn = spare.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.closing:
                return conn
            conn.close()
            for older in spare:  # older still: expired too
                older.close()
            spare.clear()
        return None

    def give_back(self, conn: UpstreamConnection, now: float) -> None:
        if self.closed:
            conn.close()
        else:
            conn.idle_since = now
            self.spare.append(conn)

    async def aclose(self) -> None:
        self.closed = True
        self.spare.clear()
        for conn in list(self.conns):
            conn.close()


class Routes:
    """The table. All methods run in the one event loop; none of them blocks."""

    def __init__(self, *, hold_timeout: float, connect_timeout: float, keepalive_expiry: float) -> None:
        if hold_timeout < 0:
            raise ValueError(f"hold_timeout must be >= 0 seconds, got {hold_timeout}")
        self.hold_timeout = hold_timeout
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.live: list[Pool] = []
        self.pools: dict[Upstream, Pool] = {}
        self.held = 0  # requests waiting for an upstream to exist
        self._next = 0
        self._available = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()

    # -- changes, from the supervisor --------------------------------------------------------

    def _pool(self, upstream: Upstream) -> Pool:
        pool = self.pools.get(upstream)
        if pool is None:
            pool = Pool(upstream, keepalive_expiry=self.keepalive_expiry)
            self.pools[upstream] = pool
        pool.routed = True
        pool.close_when_idle = False
        return pool

    def _route(self, pools: list[Pool]) -> None:
        for pool in self.live:
            if pool not in pools:
                pool.routed = False
        self.live = pools
        if pools:
            self._available.set()
            log.info("proxy: routing new requests to %s", ", ".join(str(p.upstream) for p in pools))
        else:
            self._available.clear()
            log.warning("proxy: no upstream routed; new requests are held for up to %.1f s", self.hold_timeout)

    def add(self, upstream: Upstream) -> None:
        if any(p.upstream == upstream for p in self.live):
            return
        self._route([*self.live, self._pool(upstream)])

    def switch(self, upstreams: list[Upstream]) -> None:
        pools: list[Pool] = []
        for upstream in upstreams:
            pool = self._pool(upstream)
            if pool not in pools:
                pools.append(pool)
        self._route(pools)

    def remove(self, upstream: Upstream) -> None:
        self._route([p for p in self.live if p.upstream != upstream])

    # -- leases, from requests ----------------------------------------------------------------

    def pick(self) -> Pool | None:
        """A lease on the next upstream (round-robin), or None while none is routed."""
        live = self.live
        if not live:
            return None
        self._next = (self._next + 1) % len(live)
        pool = live[self._next]
        pool.in_flight += 1
        if pool.in_flight == 1:
            pool.idle.clear()
        return pool

    async def acquire(self) -> Pool:
        """A lease on the next upstream (round-robin); with none routed, wait for one up to the hold
        timeout, then raise NoUpstream. Release with :meth:`release`."""
        pool = self.pick()
        if pool is not None:
            return pool
        deadline = time.monotonic() + self.hold_timeout
        self.held += 1
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoUpstream()
                try:
                    await asyncio.wait_for(self._available.wait(), left)
                except TimeoutError:
                    raise NoUpstream() from None
                pool = self.pick()
                if pool is not None:
                    return pool
        finally:
            self.held -= 1

    def release(self, pool: Pool) -> None:
        pool.in_flight -= 1
        if pool.in_flight == 0:
            pool.idle.set()
            if pool.close_when_idle and not pool.routed:
                self._close_later(pool)

    # -- the end of an upstream ----------------------------------------------------------------

    async def drained(self, upstream: Upstream, timeout: float) -> bool:
        pool = self.pools.get(upstream)
        if pool is None:
            return True  # never added, or already drained and closed
        if pool.routed:
            raise ValueError(
                f"upstream {upstream} still takes new requests: remove() it or switch() away from it "
                "before waiting for it to drain"
            )
        deadline = time.monotonic() + timeout
        while pool.in_flight:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(pool.idle.wait(), left)
            except TimeoutError:
                if not pool.routed:  # re-added meanwhile: it stays open
                    pool.close_when_idle = True
                log.warning(
                    "proxy: %d request(s) still in flight to %s after %.1f s", pool.in_flight, upstream, timeout
                )
                return False
        if pool.routed:  # re-added while we waited: it is live again, not drained
            return False
        await self._close(pool)
        return True

    async def _close(self, pool: Pool) -> None:
        if self.pools.get(pool.upstream) is pool:
            del self.pools[pool.upstream]
        await pool.aclose()

    def _close_later(self, pool: Pool) -> None:
        task = asyncio.get_running_loop().create_task(self._close(pool))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        """Close every pool (the proxy is stopping)."""
        pools = list(self.pools.values())
        self.pools.clear()
        self.live = []
        self._available.clear()
        for pool in pools:
            await pool.aclose()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

"""``--max-requests``: the worker's side. Once it has served its limit it asks the supervisor to
replace it (``Recycle`` on its channel) and goes on serving: the supervisor boots a replacement
through the same boot and health check as a reload, makes it live, and only then tells this worker
to drain. So no request waits for a worker to come back, and none is lost.

The counter (``Limits.requests``) is read a few times a second rather than checked on every
request: the request path stays as it is, and a worker serves a few more than its limit, which it
does anyway while its replacement boots.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ..http.protocol import Limits
from . import channel

__all__ = ["CHECK_INTERVAL", "ASK_AGAIN", "limit_for", "recycle_when_due"]

log = logging.getLogger("liveswap.worker")

CHECK_INTERVAL = 0.1  # how often the counter is read
ASK_AGAIN = 5.0  # a replacement that failed to boot: ask again this often, serving meanwhile


def limit_for(max_requests: int, jitter: int) -> int:
    """This worker's limit: gunicorn's rule, ``max_requests + randint(0, jitter)``. Each worker draws
    its own (``random`` is reseeded in every forked child), so workers started together part ways."""
    return max_requests + random.randint(0, jitter) if jitter else max_requests


async def recycle_when_due(limits: Limits, limit: int, writer: asyncio.StreamWriter) -> None:
    """Wait until ``limits.requests`` reaches ``limit``, then ask to be replaced (again every
    ``ASK_AGAIN`` s until cancelled: the worker is told to drain once its replacement is live)."""
    while limits.requests < limit:
        await asyncio.sleep(CHECK_INTERVAL)
    log.info("served %d requests (--max-requests: %d for this worker): asking to be replaced", limits.requests, limit)
    while True:
        writer.write(channel.encode(channel.Recycle(limits.requests, limit)))
        await asyncio.sleep(ASK_AGAIN)

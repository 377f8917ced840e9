"""The supervisor: one asyncio loop that owns the sockets and turns events into actions.

core.py         the loop: events in, actions out; children, stop, control, status
events.py       what can happen (typed), put on the queue by signal handlers and readers
generation.py   generations and workers, their states
transaction.py  the reload transaction, written once, and what a failure leaves (policies)
health.py       the health probe and what its answer proves
restarts.py     crashed and hung workers: replacement with backoff, the heartbeat watchdog
kinds/          how a kind of worker is spawned, made ready, activated and drained
"""

from .core import Supervisor

__all__ = ["Supervisor"]

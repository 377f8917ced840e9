"""Tie background tasks' lifetimes to a server's: when one of them dies, all of them stop.

A :class:`Group` runs a *main* coroutine (the server) together with *members*: metrics
reporters, cache refreshers, queue consumers. It is modelled on Go's ``heptio/workgroup``:

- an ``async def`` member runs as an asyncio task in the server's event loop and is stopped by
  cancellation;
- a plain function member runs in its own daemon thread and receives a :class:`threading.Event`
  that is set when the group stops;
- the group stops when main returns or raises, when a member raises, or when
  :meth:`Group.request_stop` is called (``liveswap.serve`` calls it on SIGINT/SIGTERM). A member
  that *returns* does not stop the group: one-shot tasks are fine;
- on stop, main's ``stop_event`` is set so the server drains, coroutine members are cancelled
  and thread members' events are set. Everything gets ``shutdown_timeout`` seconds; whatever is
  still running then is logged by name and cancelled again (coroutines) or abandoned (threads);
- the first error, in time order, is re-raised by :meth:`Group.run`; later errors are logged and
  listed in a note on it.

See :class:`Group` for an example.
"""

from __future__ import annotations

from ._group import Group
from ._shutdown import RECANCEL_GRACE

__all__ = ["Group", "RECANCEL_GRACE"]

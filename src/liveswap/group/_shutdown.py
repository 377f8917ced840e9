"""The end of a group's run: waiting for everything to stop, dealing with stragglers, raising the
first error."""

from __future__ import annotations

import asyncio
import logging

from ._members import Failure, Member

__all__ = ["RECANCEL_GRACE", "raise_failures", "wait_for_stop"]

logger = logging.getLogger("liveswap.group")

#: Seconds that coroutines still running at the shutdown deadline get to unwind after being
#: cancelled a second time, before :meth:`Group.run` returns without them.
RECANCEL_GRACE = 1.0


async def wait_for_stop(
    waiting: dict[asyncio.Future[None], tuple[str, Member | None]],
    timeout: float,
    cancelled: asyncio.CancelledError | None,
) -> asyncio.CancelledError | None:
    """Wait for main and the members (``waiting``: each one's future, label and member; None for
    main) to stop; deal with stragglers. Returns a CancelledError if cancelled here, else ``cancelled``."""
    pending = {f for f in waiting if not f.done()}
    # Even when run() itself was cancelled (Ctrl-C under asyncio.run), everything gets its
    # shutdown_timeout; a second cancellation cuts the waiting short.
    if pending:
        try:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        except asyncio.CancelledError as exc:
            logger.warning("Group.run() was cancelled while stopping; not waiting for the rest")
            cancelled = exc
            pending = {f for f in pending if not f.done()}

    recancelled: set[asyncio.Future[None]] = set()
    for fut in sorted(pending, key=lambda f: waiting[f][0]):
        label, member = waiting[fut]
        if member is not None and not member.is_coroutine:
            logger.warning("%s did not stop within %s s; abandoning its thread", label, timeout)
        else:
            logger.warning("%s did not stop within %s s; cancelling it again", label, timeout)
            fut.cancel()
            recancelled.add(fut)
    if recancelled:
        try:
            _, still = await asyncio.wait(recancelled, timeout=RECANCEL_GRACE)
        except asyncio.CancelledError as exc:
            cancelled = exc
            still = {f for f in recancelled if not f.done()}
        for fut in still:
            logger.error("%s ignored cancellation; leaving it running in the event loop", waiting[fut][0])
    return cancelled


def raise_failures(failures: list[Failure], cancelled: asyncio.CancelledError | None) -> None:
    """Raise ``cancelled`` (logging every failure), or the first failure in time order (logging the
    later ones and listing them in a note on it); return if there is neither."""
    failures = sorted(failures, key=lambda f: (f.at, f.seq))
    if cancelled is not None:
        for f in failures:
            logger.error("%s failed", f.label, exc_info=f.exc)
        raise cancelled
    if not failures:
        return
    first, later = failures[0], failures[1:]
    if later:
        for f in later:
            logger.error("%s also failed (after %s)", f.label, first.label, exc_info=f.exc)
        lines = "\n".join(f"  - {f.label}: {f.exc!r}" for f in later)
        first.exc.add_note(f"liveswap.Group: {len(later)} later error(s), also logged:\n{lines}")
    raise first.exc

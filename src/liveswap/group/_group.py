"""``Group``: adding members, running them with main, stopping them all (see the package docstring)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, TypeVar, cast, overload

from ._members import EXPECTED, Failure, Member, callable_name, check_signature, is_coroutine_function, unique_name
from ._shutdown import raise_failures, wait_for_stop

__all__ = ["Group"]

logger = logging.getLogger("liveswap.group")

_F = TypeVar("_F", bound=Callable[..., object])


class Group:
    """Background tasks that live and die with a server.

    Example::

        group = Group(shutdown_timeout=30.0)

        @group.task
        async def reporter() -> None:
            while True:
                await asyncio.sleep(10)
                report_metrics()

        def cleaner(stop: threading.Event) -> None:
            while not stop.wait(60):
                remove_stale_files()

        group.add(cleaner)

        async def main(stop: asyncio.Event) -> None:  # the server: drain and return once stop is set
            await stop.wait()

        asyncio.run(group.run(main))

    A Group runs once. Add members before calling :meth:`run`; adding later raises
    :class:`RuntimeError`.
    """

    def __init__(self, shutdown_timeout: float = 30.0) -> None:
        """Create an empty group.

        ``shutdown_timeout`` is how long, in seconds, main and the members get to finish once the
        group stops, before the stragglers are cancelled again or abandoned.
        """
        if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout, (int, float)):
            raise TypeError(
                f"shutdown_timeout must be a number of seconds, like 30.0; got {shutdown_timeout!r}"
                f" of type {type(shutdown_timeout).__name__}"
            )
        if not math.isfinite(shutdown_timeout) or shutdown_timeout < 0:
            raise ValueError(
                f"shutdown_timeout must be a finite number of seconds >= 0, like 30.0; got {shutdown_timeout!r}"
            )
        self._shutdown_timeout = float(shutdown_timeout)
        self._members: list[Member] = []
        # Guards _members and _started so that add() racing run() either lands or raises. Never
        # taken by request_stop(), which may run inside a signal handler.
        self._lock = threading.Lock()
        self._started = False
        self._finished = False
        self._stopping = False
        self._early_stop: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._failures: list[Failure] = []

    @property
    def shutdown_timeout(self) -> float:
        """Seconds everything gets to stop once the group stops."""
        return self._shutdown_timeout

    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, in the order they were added (duplicates get ``#2``, ``#3`` ...)."""
        with self._lock:
            return tuple(m.name for m in self._members)

    def __repr__(self) -> str:
        state = (
            "finished" if self._finished else "stopping" if self._stopping else "running" if self._started else "new"
        )
        return f"<Group {state} members={list(self.names)!r} shutdown_timeout={self._shutdown_timeout}>"

    # -- adding members ---------------------------------------------------------------------------

    @overload
    def add(self, fn: Callable[..., Coroutine[Any, Any, object]], *args: object, name: str | None = None) -> None: ...

    @overload
    def add(
        self, fn: Callable[Concatenate[threading.Event, ...], object], *args: object, name: str | None = None
    ) -> None: ...

    def add(self, fn: Callable[..., object], *args: object, name: str | None = None) -> None:
        """Add a member: ``fn(*args)`` if it is an ``async def`` function, else ``fn(stop, *args)`` in a thread.

        ``name`` (default: the function's name) identifies the member in logs; a name already in
        use gets a ``#2``, ``#3`` ... suffix.

        Example::

            group.add(poll_feed, "https://example.com/feed", name="feed-poller")  # async def poll_feed(url)
            group.add(consumer)                                                    # def consumer(stop)
        """
        if inspect.iscoroutine(fn):
            label = callable_name(fn)
            fn.close()  # we will never run it; closing avoids a "never awaited" warning on top of this error
            raise TypeError(
                f"Group.add() got a coroutine object; pass the function itself, not the result of calling it: "
                f"group.add({label}), not group.add({label}())"
            )
        if not callable(fn):
            raise TypeError(f"Group.add() expects {EXPECTED}; got {fn!r} of type {type(fn).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"Group.add(name=...) must be a non-empty string; got {name!r}")
        is_coroutine = is_coroutine_function(fn)
        check_signature(fn, args, is_coroutine)
        with self._lock:
            if self._started:
                raise RuntimeError(
                    f"cannot add member {name or callable_name(fn)!r}: this Group is already running. "
                    "Add every member before calling Group.run() (or liveswap.serve())."
                )
            label = unique_name(name or callable_name(fn), {m.name for m in self._members})
            self._members.append(Member(label, fn, args, is_coroutine))

    @overload
    def task(self, fn: _F, /) -> _F: ...

    @overload
    def task(self, fn: None = None, /, *, name: str | None = None) -> Callable[[_F], _F]: ...

    def task(self, fn: Callable[..., object] | None = None, /, *, name: str | None = None) -> Callable[..., object]:
        """Decorator form of :meth:`add`; returns the function unchanged.

        Example::

            @group.task
            async def refresher() -> None: ...

            @group.task(name="queue-consumer")
            def consume(stop: threading.Event) -> None: ...
        """

        def decorate(f: Callable[..., object]) -> Callable[..., object]:
            self.add(f, name=name)
            return f

        return decorate if fn is None else decorate(fn)

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop the group: main drains, members are cancelled or signalled. Returns at once.

        Safe to call from any thread and from a signal handler: it only schedules the stop on the
        group's event loop with ``loop.call_soon_threadsafe``. Called before :meth:`run`, the group
        stops as soon as it starts; called after it finished, it does nothing. ``reason`` is logged.

        Example::

            signal.signal(signal.SIGTERM, lambda signum, frame: group.request_stop("SIGTERM"))
        """
        # Flag first, then look for the loop: run() publishes the loop before reading the flag, so
        # one of the two paths always sees the request. No locks here: we may be in a signal handler.
        self._early_stop = reason
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._begin_stop, reason)
        except RuntimeError:
            pass  # the loop is closed, so run() is over: nothing left to stop

    def _begin_stop(self, reason: str) -> None:
        """Runs in the loop. The single place where the group decides to stop."""
        if self._stopping or self._finished or self._stop_event is None or self._wake is None:
            return
        self._stopping = True
        running = [m.name for m in self._members if m.done is not None and not m.done.done()]
        if self._main_task is not None and not self._main_task.done():
            running.insert(0, "main")
        logger.info(
            "stopping the group (%s); waiting up to %s s for %s",
            reason,
            self._shutdown_timeout,
            ", ".join(running) or "nothing: all done",
        )
        self._stop_event.set()
        for m in self._members:
            if m.is_coroutine:
                if m.done is not None:
                    m.done.cancel()
            else:
                m.stop.set()
        self._wake.set()

    def _record(self, label: str, exc: BaseException, at: float | None = None) -> None:
        if self._finished:
            logger.error("%s raised after its group finished", label, exc_info=exc)
            return
        seq = len(self._failures)
        self._failures.append(Failure(time.monotonic() if at is None else at, seq, label, exc))

    def _returned(self, m: Member) -> None:
        if self._stopping or self._finished:
            logger.debug("member %r stopped", m.name)
        else:
            logger.info("member %r returned; the group keeps running", m.name)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run ``main(stop_event)`` and every member until the group stops; then stop them all.

        ``main`` is the server: it must drain and return once ``stop_event`` is set. The group stops
        when main returns or raises, a member raises, :meth:`request_stop` is called, or this
        coroutine is cancelled. Then main's ``stop_event`` is set, coroutine members are cancelled
        and thread members' events are set; all get ``shutdown_timeout`` seconds. Stragglers are
        logged by name: main and coroutine members are cancelled again (and get
        :data:`RECANCEL_GRACE` more seconds), threads are abandoned (they are daemon threads).

        Raises the first error (in time order) of main or a member, the original exception object;
        later errors are logged and listed in a note on it. Stopping by cancellation is not an
        error. If this coroutine is cancelled, it stops the group, logs any errors and re-raises
        :class:`asyncio.CancelledError`.

        Example::

            async def main(stop: asyncio.Event) -> None:
                server = await start_server()
                await stop.wait()
                await server.drain()

            asyncio.run(group.run(main))
        """
        if inspect.iscoroutine(main):
            label = callable_name(main)
            main.close()
            raise TypeError(
                f"Group.run() got a coroutine object; pass the function itself: "
                f"group.run({label}), not group.run({label}(...))"
            )
        if not callable(main):
            raise TypeError(
                f"Group.run() expects an async function taking an asyncio.Event (set when the group stops) "
                f"and returning once it has drained; got {main!r} of type {type(main).__name__}"
            )
        with self._lock:
            if self._started:
                raise RuntimeError(
                    "this Group has already been run; a Group runs once. Create a new Group, "
                    "and add its members again, for each run."
                )
            self._started = True
            members = list(self._members)

        loop = asyncio.get_running_loop()
        self._stop_event = stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        main_label = f"main {callable_name(main)!r}"
        self._main_task = main_task = loop.create_task(
            self._run_main(main, stop_event, main_label), name="liveswap.group:main"
        )
        for m in members:
            self._start(m, loop)
        self._loop = loop  # published last: request_stop() now schedules on this loop
        if self._early_stop is not None:
            self._begin_stop(self._early_stop)

        cancelled: asyncio.CancelledError | None = None
        try:
            await self._wake.wait()
        except asyncio.CancelledError as exc:
            cancelled = exc
            self._begin_stop("Group.run() was cancelled")
        try:
            cancelled = await self._shutdown(main_task, main_label, members, cancelled)
        finally:
            self._finished = True
            self._loop = None
        self._raise_failures(cancelled)

    def _start(self, m: Member, loop: asyncio.AbstractEventLoop) -> None:
        if m.is_coroutine:
            m.done = loop.create_task(self._run_coroutine_member(m), name=f"liveswap.group:{m.name}")
            return
        done: asyncio.Future[None] = loop.create_future()
        m.done = done
        thread = threading.Thread(
            target=self._run_thread_member, args=(m, loop, done), name=f"liveswap.group:{m.name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": fail the group like any member error
            done.set_result(None)
            self._record(f"member {m.name!r}", exc)
            loop.call_soon(self._begin_stop, f"member {m.name!r} could not start its thread")

    async def _run_main(
        self, main: Callable[[asyncio.Event], Awaitable[None]], stop_event: asyncio.Event, label: str
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await main(stop_event)
        except asyncio.CancelledError:
            if not self._stopping:
                loop.call_soon(self._begin_stop, f"{label} was cancelled")
            raise
        except Exception as exc:
            self._record(label, exc)
            loop.call_soon(self._begin_stop, f"{label} raised {type(exc).__name__}")
        else:
            if not self._stopping:
                logger.info("%s returned", label)
            loop.call_soon(self._begin_stop, f"{label} returned")

    async def _run_coroutine_member(self, m: Member) -> None:
        loop = asyncio.get_running_loop()
        try:
            await cast(Awaitable[object], m.fn(*m.args))
        except asyncio.CancelledError:
            if not self._stopping:
                logger.warning("member %r was cancelled from outside the group; stopping the group", m.name)
                loop.call_soon(self._begin_stop, f"member {m.name!r} was cancelled")
            raise
        except Exception as exc:
            self._record(f"member {m.name!r}", exc)
            loop.call_soon(self._begin_stop, f"member {m.name!r} raised {type(exc).__name__}")
        else:
            self._returned(m)

    def _run_thread_member(self, m: Member, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        try:
            result = m.fn(m.stop, *m.args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"member {m.name!r} runs in a thread but returned an awaitable, which nothing would await; "
                    "declare it with `async def` so it runs as a task in the event loop"
                )
        except BaseException as exc:  # SystemExit too: in a thread it would otherwise vanish silently
            error = exc
        at = time.monotonic()
        try:
            loop.call_soon_threadsafe(self._thread_finished, m, done, error, at)
        except RuntimeError:
            # The loop is closed: run() finished long ago and abandoned this thread.
            if error is not None:
                logger.error("member %r raised after its group finished", m.name, exc_info=error)

    def _thread_finished(self, m: Member, done: asyncio.Future[None], error: BaseException | None, at: float) -> None:
        if not done.done():
            done.set_result(None)
        if error is None:
            self._returned(m)
        else:
            self._record(f"member {m.name!r}", error, at)
            self._begin_stop(f"member {m.name!r} raised {type(error).__name__}")

    async def _shutdown(
        self,
        main_task: asyncio.Task[None],
        main_label: str,
        members: list[Member],
        cancelled: asyncio.CancelledError | None,
    ) -> asyncio.CancelledError | None:
        """Wait for everything to stop; deal with stragglers. Returns a CancelledError if cancelled here."""
        waiting: dict[asyncio.Future[None], tuple[str, Member | None]] = {main_task: (main_label, None)}
        for m in members:
            if m.done is not None:
                waiting[m.done] = (f"member {m.name!r}", m)
        return await wait_for_stop(waiting, self._shutdown_timeout, cancelled)

    def _raise_failures(self, cancelled: asyncio.CancelledError | None) -> None:
        failures, self._failures = self._failures, []  # they hold tracebacks and frames: don't keep them here
        raise_failures(failures, cancelled)

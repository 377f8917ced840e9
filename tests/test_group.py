"""liveswap.group.Group: members live and die with main.

Every test drives a real event loop (asyncio.run) with real threads. Ordering comes from
handshakes (threading.Event / asyncio.Event) that each carry a deadline, never from sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from liveswap.group import RECANCEL_GRACE, Group

# How long any handshake may take before the test fails. Generous: only a broken build hits it.
DEADLINE = 10.0


class Boom(Exception):
    pass


class FakeServer:
    """A stand-in for the HTTP server: reports it is up, waits for stop, then drains."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.drained = threading.Event()
        self.started_async = asyncio.Event()  # binds to the loop of the test's asyncio.run on first use

    async def main(self, stop: asyncio.Event) -> None:
        self.started.set()
        self.started_async.set()
        await asyncio.wait_for(stop.wait(), DEADLINE)
        self.drained.set()


def must(event: threading.Event, what: str) -> None:
    """Wait for a threading handshake, failing loudly at the deadline."""
    if not event.wait(DEADLINE):
        raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")


async def must_async(event: asyncio.Event | threading.Event, what: str) -> None:
    """The same, from a coroutine (a threading.Event is waited for in a worker thread)."""
    try:
        if isinstance(event, asyncio.Event):
            await asyncio.wait_for(event.wait(), DEADLINE)
        elif not await asyncio.to_thread(event.wait, DEADLINE):
            raise TimeoutError
    except TimeoutError:
        raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}") from None


def run(group: Group, main: Callable[[asyncio.Event], Any]) -> float:
    """Run the group to completion on a fresh loop; returns the elapsed seconds."""
    start = time.monotonic()
    asyncio.run(group.run(main))
    return time.monotonic() - start


@pytest.fixture(autouse=True)
def no_leaked_member_threads() -> Iterator[None]:
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("liveswap.group:"):
            thread.join(DEADLINE)
            assert not thread.is_alive(), f"member thread {thread.name} outlived its test"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="liveswap.group")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "liveswap.group" and r.levelno >= level]


class Members:
    """A steady coroutine member and a steady thread member, recording how they were stopped."""

    def __init__(self, group: Group) -> None:
        self.coro_running = threading.Event()
        self.coro_cancelled = threading.Event()
        self.thread_running = threading.Event()
        self.thread_stopped = threading.Event()
        group.add(self.steady)
        group.add(self.consumer)

    async def steady(self) -> None:
        self.coro_running.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), DEADLINE)
        except asyncio.CancelledError:
            self.coro_cancelled.set()
            raise

    def consumer(self, stop: threading.Event) -> None:
        self.thread_running.set()
        must(stop, "the consumer's stop event")
        self.thread_stopped.set()

    async def all_running(self, server: FakeServer) -> None:
        await must_async(server.started_async, "the server to start")
        await must_async(self.coro_running, "the coroutine member to start")
        await must_async(self.thread_running, "the thread member to start")

    def assert_stopped(self) -> None:
        assert self.coro_cancelled.is_set(), "the coroutine member was not cancelled"
        assert self.thread_stopped.is_set(), "the thread member's stop event was not set"


# -- what stops the group ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_failing_coroutine_member_stops_main_and_the_others(logs: pytest.LogCaptureFixture) -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)
    boom = Boom("refresher died")

    @group.task
    async def refresher() -> None:
        await members.all_running(server)
        raise boom

    with pytest.raises(Boom) as excinfo:
        run(group, server.main)

    assert excinfo.value is boom
    assert server.drained.is_set()
    members.assert_stopped()
    assert any("stopping the group (member 'refresher' raised Boom)" in m for m in messages(logs))


@pytest.mark.timeout(20)
def test_failing_thread_member_stops_main_and_the_others() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)
    boom = Boom("consumer died")

    def poller(stop: threading.Event) -> None:
        must(server.started, "the server to start")
        must(members.coro_running, "the coroutine member to start")
        must(members.thread_running, "the thread member to start")
        raise boom

    group.add(poller)
    with pytest.raises(Boom) as excinfo:
        run(group, server.main)

    assert excinfo.value is boom
    assert server.drained.is_set()
    members.assert_stopped()


@pytest.mark.timeout(20)
def test_request_stop_from_another_thread_stops_everything_cleanly(logs: pytest.LogCaptureFixture) -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)

    def operator() -> None:
        must(server.started, "the server to start")
        must(members.coro_running, "the coroutine member to start")
        must(members.thread_running, "the thread member to start")
        group.request_stop("operator asked")

    outsider = threading.Thread(target=operator, name="test-operator")
    outsider.start()
    try:
        run(group, server.main)  # no exception: a requested stop is not an error
    finally:
        outsider.join(DEADLINE)

    assert server.drained.is_set()
    members.assert_stopped()
    assert any("stopping the group (operator asked)" in m for m in messages(logs))
    assert not [m for m in messages(logs, logging.WARNING)], "a clean stop logs no warnings"


@pytest.mark.timeout(20)
def test_request_stop_from_a_real_signal_handler() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def sender() -> None:
        must(server.started, "the server to start")
        must(members.thread_running, "the thread member to start")
        # At the main thread, where Python runs signal handlers: delivery is immediate.
        signal.pthread_kill(main_thread, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: group.request_stop("SIGUSR1"))
    outsider = threading.Thread(target=sender, name="test-signal-sender")
    try:
        outsider.start()
        run(group, server.main)
    finally:
        outsider.join(DEADLINE)
        signal.signal(signal.SIGUSR1, previous)

    assert server.drained.is_set()
    members.assert_stopped()


@pytest.mark.timeout(20)
def test_main_returning_stops_the_group() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    members = Members(group)
    server = FakeServer()

    async def main(stop: asyncio.Event) -> None:
        server.started_async.set()
        await members.all_running(server)  # then return without being asked: e.g. the server crashed cleanly

    run(group, main)
    members.assert_stopped()


@pytest.mark.timeout(20)
def test_a_member_returning_does_not_stop_the_group(logs: pytest.LogCaptureFixture) -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    warmed_up = asyncio.Event()

    @group.task
    async def warmup() -> None:
        warmed_up.set()

    @group.task
    async def checker() -> None:
        await must_async(warmed_up, "the one-shot member to finish")
        await must_async(server.started_async, "the server to start")
        group.request_stop("checker finished")

    run(group, server.main)

    assert server.drained.is_set()
    assert "member 'warmup' returned; the group keeps running" in messages(logs, logging.INFO)
    # Had warmup's return stopped the group, that would be the logged reason, not the checker's request.
    stops = [m for m in messages(logs) if m.startswith("stopping the group")]
    assert len(stops) == 1 and "(checker finished)" in stops[0], stops


@pytest.mark.timeout(20)
def test_request_stop_before_run_stops_as_soon_as_it_starts() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    members = Members(group)
    server = FakeServer()
    group.request_stop("early")
    run(group, server.main)
    assert server.drained.is_set()
    assert members.thread_stopped.is_set()
    group.request_stop("late")  # after the run: a harmless no-op


@pytest.mark.timeout(20)
def test_cancelling_run_stops_the_members_and_propagates() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)

    async def scenario() -> None:
        runner = asyncio.create_task(group.run(server.main))
        await members.all_running(server)
        runner.cancel()  # what asyncio.run does on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
    assert server.drained.is_set()
    members.assert_stopped()


# -- shutdown deadline -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_members_ignoring_the_stop_are_abandoned_at_the_deadline(logs: pytest.LogCaptureFixture) -> None:
    timeout = 0.5
    group = Group(shutdown_timeout=timeout)
    stubborn_running = threading.Event()
    release = threading.Event()
    coro_running = threading.Event()
    cancels_seen: list[str] = []

    def stubborn(stop: threading.Event) -> None:
        stubborn_running.set()
        release.wait(DEADLINE)  # ignores `stop` on purpose; the test releases it at the end
        raise Boom("too late to matter")

    async def stubborn_coro() -> None:
        coro_running.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), DEADLINE)
        except asyncio.CancelledError:
            cancels_seen.append("first")  # swallowed: a badly behaved member
        try:
            await asyncio.wait_for(asyncio.Event().wait(), DEADLINE)
        except asyncio.CancelledError:
            cancels_seen.append("second")
            raise

    group.add(stubborn)
    group.add(stubborn_coro)

    async def main(stop: asyncio.Event) -> None:
        await must_async(stubborn_running, "the stubborn thread to start")
        await must_async(coro_running, "the stubborn coroutine to start")

    try:
        elapsed = run(group, main)
    finally:
        release.set()
    (abandoned,) = [t for t in threading.enumerate() if t.name == "liveswap.group:stubborn"]
    abandoned.join(DEADLINE)

    assert timeout * 0.8 <= elapsed < timeout + RECANCEL_GRACE + 2.0, elapsed
    assert cancels_seen == ["first", "second"]
    warnings = messages(logs, logging.WARNING)
    assert "member 'stubborn' did not stop within 0.5 s; abandoning its thread" in warnings
    assert "member 'stubborn_coro' did not stop within 0.5 s; cancelling it again" in warnings
    # Its loop is closed by now, so the abandoned thread's late error is logged from the thread itself.
    assert "member 'stubborn' raised after its group finished" in messages(logs, logging.ERROR)


@pytest.mark.timeout(20)
def test_main_that_does_not_drain_in_time_is_cancelled(logs: pytest.LogCaptureFixture) -> None:
    group = Group(shutdown_timeout=0.2)
    main_cancelled = threading.Event()
    main_running = asyncio.Event()
    boom = Boom("trigger")

    async def slow_server(stop: asyncio.Event) -> None:
        main_running.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), DEADLINE)  # never looks at `stop`
        except asyncio.CancelledError:
            main_cancelled.set()
            raise

    @group.task
    async def trigger() -> None:
        await must_async(main_running, "main to start")
        raise boom

    with pytest.raises(Boom) as excinfo:
        run(group, slow_server)
    assert excinfo.value is boom
    assert main_cancelled.is_set()
    assert "main 'slow_server' did not stop within 0.2 s; cancelling it again" in messages(logs, logging.WARNING)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_main_raising_is_the_error_and_stops_the_members() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    members = Members(group)
    boom = Boom("bind failed")

    async def main(stop: asyncio.Event) -> None:
        server.started_async.set()
        await members.all_running(server)
        raise boom

    with pytest.raises(Boom) as excinfo:
        run(group, main)
    assert excinfo.value is boom
    members.assert_stopped()


@pytest.mark.timeout(20)
def test_later_errors_are_logged_and_noted_on_the_first(logs: pytest.LogCaptureFixture) -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    first = Boom("first")
    second = ValueError("second, while stopping")
    cleanup_running = threading.Event()

    def cleanup(stop: threading.Event) -> None:
        cleanup_running.set()
        must(stop, "the cleanup thread's stop event")
        raise second

    @group.task
    async def failing() -> None:
        await must_async(server.started_async, "the server to start")
        await must_async(cleanup_running, "the cleanup thread to start")
        raise first

    group.add(cleanup)
    with pytest.raises(Boom) as excinfo:
        run(group, server.main)

    assert excinfo.value is first
    notes = getattr(excinfo.value, "__notes__", [])
    assert len(notes) == 1, notes
    assert "1 later error(s)" in notes[0] and "member 'cleanup': ValueError('second, while stopping')" in notes[0]
    logged = [r for r in logs.records if r.name == "liveswap.group" and r.levelno == logging.ERROR]
    assert [r.exc_info[1] for r in logged if r.exc_info] == [second]
    assert server.drained.is_set()


@pytest.mark.timeout(20)
def test_errors_are_ordered_by_time_not_by_kind() -> None:
    # The thread fails first; the coroutine fails while being cancelled, i.e. later.
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()
    thread_error = Boom("thread first")
    coro_error = ValueError("coroutine second")
    coro_running = threading.Event()

    async def flaky_cleanup() -> None:
        coro_running.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), DEADLINE)
        except asyncio.CancelledError:
            raise coro_error from None

    def worker(stop: threading.Event) -> None:
        must(server.started, "the server to start")
        must(coro_running, "the coroutine member to start")
        raise thread_error

    group.add(flaky_cleanup)
    group.add(worker)
    with pytest.raises(Boom) as excinfo:
        run(group, server.main)
    assert excinfo.value is thread_error
    assert "member 'flaky_cleanup': ValueError('coroutine second')" in excinfo.value.__notes__[0]


@pytest.mark.timeout(20)
def test_thread_member_returning_a_coroutine_is_a_teaching_error() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    server = FakeServer()

    async def work() -> None:
        pass

    def looks_async(stop: threading.Event) -> Any:
        return work()

    group.add(looks_async)
    with pytest.raises(TypeError, match=r"member 'looks_async' runs in a thread but returned an awaitable.*async def"):
        run(group, server.main)


# -- misuse ----------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_group_runs_once() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    group.request_stop()
    run(group, FakeServer().main)
    with pytest.raises(RuntimeError, match="already been run; a Group runs once. Create a new Group"):
        run(group, FakeServer().main)


@pytest.mark.timeout(20)
def test_adding_a_member_while_running_raises() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    errors: list[RuntimeError] = []

    async def late() -> None:
        pass

    async def main(stop: asyncio.Event) -> None:
        with pytest.raises(RuntimeError) as excinfo:
            group.add(late)
        errors.append(excinfo.value)

    run(group, main)
    assert len(errors) == 1
    assert "cannot add member 'late'" in str(errors[0])
    assert "Add every member before calling Group.run()" in str(errors[0])


@pytest.mark.timeout(20)
def test_add_rejects_what_it_cannot_run() -> None:
    group = Group()
    not_callable: Any = 42
    with pytest.raises(TypeError, match=r"expects an `async def` function .* taking a threading.Event") as excinfo:
        group.add(not_callable)
    assert "got 42 of type int" in str(excinfo.value)

    async def refresher() -> None:
        pass

    coroutine_object: Any = refresher()  # closed by add(): no "never awaited" warning (warnings are errors)
    with pytest.raises(
        TypeError, match=r"pass the function itself.*: group.add\(refresher\), not group.add\(refresher\(\)\)"
    ):
        group.add(coroutine_object)

    def no_stop_parameter() -> None:
        pass

    sloppy: Any = no_stop_parameter
    with pytest.raises(TypeError, match=r"cannot be called as .*no_stop_parameter\(stop\).*threading.Event"):
        group.add(sloppy)

    async def takes_url(url: str) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"takes_url\(url: .*cannot be called as takes_url\(\): missing a required argument: 'url'"
    ):
        group.add(takes_url)

    with pytest.raises(TypeError, match="name=.... must be a non-empty string"):
        group.add(refresher, name="")
    assert group.names == ()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
@pytest.mark.timeout(20)
def test_shutdown_timeout_must_be_a_finite_number_of_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        Group(shutdown_timeout=bad)


@pytest.mark.timeout(20)
def test_shutdown_timeout_must_be_a_number() -> None:
    anything: Any = "30"
    with pytest.raises(TypeError, match="must be a number of seconds"):
        Group(shutdown_timeout=anything)


@pytest.mark.timeout(20)
def test_run_rejects_a_coroutine_object_for_main() -> None:
    group = Group()
    server = FakeServer()
    coroutine_object: Any = server.main(asyncio.Event())
    with pytest.raises(TypeError, match=r"pass the function itself: group.run\(FakeServer.main\)"):
        asyncio.run(group.run(coroutine_object))


# -- adding ----------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_forms_of_adding_and_names() -> None:
    group = Group(shutdown_timeout=DEADLINE)
    seen: list[tuple[str, object]] = []
    all_ran = threading.Event()

    def note(label: str, value: object) -> None:
        seen.append((label, value))
        if len(seen) == 5:
            all_ran.set()

    @group.task
    async def plain() -> None:
        note("plain", None)

    @group.task(name="named")
    def threaded(stop: threading.Event) -> None:
        note("named", stop.is_set())

    async def with_args(a: int, b: str) -> None:
        note("with_args", (a, b))

    class Callback:
        async def __call__(self) -> None:
            note("callable object", None)

    group.add(with_args, 1, "x")
    group.add(functools.partial(with_args, 2), "y")
    group.add(Callback())

    assert plain.__name__ == "plain" and threaded.__name__ == "threaded"  # decorators return the function
    assert group.names == (
        "plain",
        "named",
        "with_args",
        "with_args#2",
        "Callback",
    )

    async def main(stop: asyncio.Event) -> None:
        await must_async(all_ran, "every member to run")

    run(group, main)
    assert sorted(seen, key=repr) == sorted(
        [
            ("plain", None),
            ("named", False),
            ("with_args", (1, "x")),
            ("with_args", (2, "y")),
            ("callable object", None),
        ],
        key=repr,
    )

"""The debug endpoints over real sockets: a DebugServer thread, an "app" event loop on another thread, httpx."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from liveswap.debug import DebugServer, Metrics, bind_debug, merge_snapshots
from liveswap.debug.profile import exclusive

pytestmark = pytest.mark.timeout(30)

DEADLINE = 10.0


# -- the app side: an event loop on its own thread, playing the worker's main loop ----------------


class AppLoop:
    """An asyncio loop running on a thread; tasks started here are kept referenced until close()."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.loop = factory()
        self.thread = threading.Thread(target=self.loop.run_forever, name="app-main-loop", daemon=True)
        self.thread.start()
        self.tasks: list[asyncio.Task[Any]] = []

    def start_task(self, factory: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        async def create() -> None:
            self.tasks.append(asyncio.get_running_loop().create_task(factory(), name=name))
            await asyncio.sleep(0)  # let it run to its first await

        asyncio.run_coroutine_threadsafe(create(), self.loop).result(DEADLINE)

    def close(self) -> None:
        async def cancel_all() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


@pytest.fixture
def app_loop() -> Iterator[AppLoop]:
    loop = AppLoop()
    yield loop
    loop.close()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set in teardown: releases whatever blocks on it, even when the test failed."""
    event = threading.Event()
    yield event
    event.set()


def blocked_in_known_function_xyz(entered: threading.Event, release: threading.Event) -> None:
    entered.set()
    release.wait(DEADLINE * 3)


async def awaiting_in_known_coroutine_qrs(event: asyncio.Event) -> None:
    await event.wait()


async def outer_coroutine_qrs(event: asyncio.Event) -> None:
    await awaiting_in_known_coroutine_qrs(event)


async def blocking_the_loop_xyz(entered: threading.Event, release: threading.Event) -> None:
    blocked_in_known_function_xyz(entered, release)  # synchronous: the whole loop stands still


def spin_known_function_abc(started: threading.Event, stop: threading.Event) -> None:
    started.set()
    while not stop.is_set():
        pass


# -- the debug side -------------------------------------------------------------------------------


class Running:
    def __init__(self, server: DebugServer, client: httpx.Client, metrics: Metrics) -> None:
        self.server = server
        self.client = client
        self.metrics = metrics


def start_server(app_loop: AppLoop | None, **options: Any) -> tuple[DebugServer, httpx.Client]:
    metrics = options.pop("metrics", Metrics())
    server = DebugServer(
        bind_debug("127.0.0.1:0"), metrics=metrics, main_loop=app_loop.loop if app_loop else None, **options
    )
    server.start()
    assert server.url is not None
    return server, httpx.Client(base_url=server.url, timeout=DEADLINE)


@pytest.fixture
def debug(app_loop: AppLoop) -> Iterator[Running]:
    metrics = Metrics()
    server, client = start_server(
        app_loop, metrics=metrics, extra=lambda: {"generation": 7, "worker": {"state": "live"}}
    )
    try:
        yield Running(server, client, metrics)
    finally:
        client.close()
        server.stop()


# -- /stacks --------------------------------------------------------------------------------------


def test_stacks_show_a_blocked_thread_and_a_waiting_task(
    debug: Running, app_loop: AppLoop, release: threading.Event
) -> None:
    entered = threading.Event()
    blocked = threading.Thread(
        target=blocked_in_known_function_xyz, args=(entered, release), name="blocked-thread-xyz", daemon=True
    )
    blocked.start()
    assert entered.wait(DEADLINE)
    event_holder: list[asyncio.Event] = []

    async def waiting() -> None:
        event_holder.append(asyncio.Event())
        await outer_coroutine_qrs(event_holder[0])

    app_loop.start_task(waiting, "known-task-qrs")

    response = debug.client.get("/stacks")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    threads_part, _, tasks_part = response.text.partition("asyncio tasks on the main event loop")
    assert "Thread 'blocked-thread-xyz'" in threads_part
    thread_section = threads_part.split("Thread 'blocked-thread-xyz'")[1].split("\nThread ")[0]
    assert "in blocked_in_known_function_xyz" in thread_section
    assert "release.wait(DEADLINE * 3)" in thread_section  # the source line, as in a traceback
    task_section = tasks_part.split("Task 'known-task-qrs'")[1].split("\nTask ")[0]
    # the whole await chain, down to the innermost coroutine (Task.get_stack() stops at the outermost)
    assert "in outer_coroutine_qrs" in task_section and "in awaiting_in_known_coroutine_qrs" in task_section
    assert "(suspended)" in task_section.splitlines()[0] and "awaiting <Future pending" in task_section

    data = debug.client.get("/stacks", params={"format": "json"}).json()
    thread = next(t for t in data["threads"] if t["name"] == "blocked-thread-xyz")
    assert thread["ident"] == blocked.ident and thread["daemon"] is True
    assert thread["frames"][-1]["function"] != "blocked_in_known_function_xyz"  # innermost is Event.wait
    assert "blocked_in_known_function_xyz" in [f["function"] for f in thread["frames"]]
    task = next(t for t in data["tasks"] if t["name"] == "known-task-qrs")
    assert task["frames"][-2]["function"] == "awaiting_in_known_coroutine_qrs"
    assert task["frames"][-1]["function"] == "Event.wait"


def test_tasks_of_a_uvloop_main_loop() -> None:
    uvloop = pytest.importorskip("uvloop")  # what workers run when it is installed
    app_loop = AppLoop(uvloop.new_event_loop)
    try:
        holder: list[asyncio.Event] = []

        async def waiting() -> None:
            holder.append(asyncio.Event())
            await outer_coroutine_qrs(holder[0])

        app_loop.start_task(waiting, "uvloop-task-qrs")
        server, client = start_server(app_loop)
        try:
            data = client.get("/stacks", params={"format": "json"}).json()
        finally:
            client.close()
            server.stop()
        task = next(t for t in data["tasks"] if t["name"] == "uvloop-task-qrs")
        functions = [f["function"] for f in task["frames"]]
        assert functions[0].endswith("<locals>.waiting")
        assert functions[1:3] == ["outer_coroutine_qrs", "awaiting_in_known_coroutine_qrs"]
    finally:
        app_loop.close()


def test_answers_while_the_app_loop_is_blocked(debug: Running, app_loop: AppLoop, release: threading.Event) -> None:
    entered = threading.Event()

    async def block() -> None:
        await blocking_the_loop_xyz(entered, release)

    asyncio.run_coroutine_threadsafe(block(), app_loop.loop)
    assert entered.wait(DEADLINE)  # the app loop's thread is now stuck in synchronous code

    text = debug.client.get("/stacks").text
    loop_thread = text.split("Thread 'app-main-loop'")[1].split("\nThread ")[0]
    assert "in blocking_the_loop_xyz" in loop_thread and "in blocked_in_known_function_xyz" in loop_thread
    task_section = text.split("asyncio tasks on the main event loop")[1]
    running = next(part for part in task_section.split("\nTask ") if "(running)" in part.splitlines()[0])
    # a running task shows what it executes now, not just its coroutine's line
    assert "in blocked_in_known_function_xyz" in running
    assert debug.client.get("/stats").status_code == 200
    release.set()


# -- /profile -------------------------------------------------------------------------------------


@pytest.fixture
def spinner(release: threading.Event) -> Iterator[None]:
    started = threading.Event()
    thread = threading.Thread(target=spin_known_function_abc, args=(started, release), name="spinner-abc", daemon=True)
    thread.start()
    assert started.wait(DEADLINE)
    yield
    release.set()
    thread.join(DEADLINE)


def test_profile_svg_shows_the_spinning_function(debug: Running, spinner: None) -> None:
    response = debug.client.get("/profile", params={"seconds": 1})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml; charset=utf-8"
    root = ET.fromstring(response.text)
    tips = [el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith(f"{__name__}:spin_known_function_abc\n{__file__}:") for t in tips)
    assert "liveswap-debug" not in response.text  # the debug server's thread is left out


def test_profile_speedscope_is_a_download(debug: Running, spinner: None) -> None:
    response = debug.client.get("/profile", params={"seconds": "1", "format": "speedscope"})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == "attachment; filename=profile.speedscope.json"
    doc = response.json()
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert f"{__name__}:spin_known_function_abc" in names
    assert "spinner-abc" in [p["name"] for p in doc["profiles"]]


def test_other_endpoints_answer_during_a_profile(debug: Running, spinner: None) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(debug.client.get, "/profile", params={"seconds": 2, "format": "collapsed"})
        # Handshake: /stacks answering *while* it shows the sampler at work proves both at once.
        deadline = time.monotonic() + DEADLINE
        while "liveswap/debug/profile.py" not in debug.client.get("/stacks").text:
            assert time.monotonic() < deadline, "the profile never started"
            assert not pending.done(), pending.result().text
        assert debug.client.get("/stats").status_code == 200
        response = pending.result(timeout=DEADLINE)
    assert response.status_code == 200
    spins = [
        line
        for line in response.text.splitlines()
        if line.startswith("spinner-abc;") and f"{__name__}:spin_known_function_abc " in line
    ]
    assert spins and all(int(line.rsplit(" ", 1)[1]) > 0 for line in spins)


def test_a_second_profile_gets_409(debug: Running) -> None:
    with exclusive():  # hold the process's profiling slot, as a running profile does
        response = debug.client.get("/profile", params={"seconds": 1})
    assert response.status_code == 409
    assert "already running" in response.text and "hint:" in response.text


@pytest.mark.parametrize("query", ["seconds=0", "seconds=61", "seconds=soon", "seconds=nan", "format=png"])
def test_bad_profile_requests_get_400_with_a_hint(debug: Running, query: str) -> None:
    response = debug.client.get("/profile?" + query)
    assert response.status_code == 400
    assert "hint: e.g. /profile?" in response.text


# -- /heap ----------------------------------------------------------------------------------------


def allocate_known_blocks_xyz() -> list[bytearray]:
    return [bytearray(10_000) for _ in range(300)]


def test_heap_start_top_stop(debug: Running) -> None:
    assert not tracemalloc.is_tracing()
    try:
        refused = debug.client.get("/heap")
        assert refused.status_code == 409 and "hint: start it with /heap/start" in refused.text

        started = debug.client.post("/heap/start", params={"frames": 3})
        assert started.status_code == 200 and "tracemalloc started with 3 frames" in started.text
        assert tracemalloc.is_tracing()
        blocks = allocate_known_blocks_xyz()

        text = debug.client.get("/heap", params={"top": 5}).text
        line = allocate_known_blocks_xyz.__code__.co_firstlineno + 1
        assert f"#1: {__file__}:{line}:" in text

        data = debug.client.get("/heap", params={"top": 3, "group_by": "traceback", "format": "json"}).json()
        assert len(data["top"]) == 3 and data["status"]["frames"] == 3
        first = data["top"][0]
        assert first["frames"][-1] == {"file": __file__, "line": line} and first["size"] >= 3_000_000
        del blocks

        stopped = debug.client.get("/heap/stop")
        assert stopped.status_code == 200 and stopped.text == "tracemalloc stopped\n"
        assert not tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


# -- /stats, /metrics, index, errors --------------------------------------------------------------


def test_stats_include_the_hosts_extra(debug: Running) -> None:
    data = debug.client.get("/stats").json()
    assert data["pid"] == os.getpid() and data["generation"] == 7 and data["worker"] == {"state": "live"}
    assert data["threads"]["python"] >= 3 and "liveswap-debug" in data["threads"]["names"]
    assert data["memory"]["rss_bytes"] > 0 and data["open_fds"] > 0 and data["uptime_seconds"] >= 0
    assert len(data["gc"]["counts"]) == 3


def test_metrics_endpoint(debug: Running) -> None:
    debug.metrics.set_gauge("generation", 7, "Generation of this worker.")
    debug.metrics.request_started()
    debug.metrics.request_finished("GET", 200, 0.01)
    response = debug.client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'liveswap_http_requests_total{method="GET",status="2xx"} 1\n' in response.text
    assert f'liveswap_generation{{pid="{os.getpid()}"}} 7.0\n' in response.text
    snapshot = debug.client.get("/metrics", params={"format": "json"}).json()
    assert merge_snapshots([snapshot])["requests_total"] == [{"method": "GET", "status": "2xx", "value": 1}]


def test_index_links_every_endpoint(debug: Running) -> None:
    response = debug.client.get("/")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for path in ("/stacks", "/profile?seconds=10", "/heap?top=25", "/heap/start", "/heap/stop", "/stats", "/metrics"):
        assert f'href="{path}' in response.text


def test_unknown_paths_list_the_endpoints(debug: Running) -> None:
    response = debug.client.get("/debug/pprof/")
    assert response.status_code == 404
    assert "no debug endpoint at /debug/pprof" in response.text and "/profile?seconds=10" in response.text


def test_wrong_method_and_head(debug: Running) -> None:
    response = debug.client.post("/stacks")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    head = debug.client.head("/stats")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0


def test_responses_are_not_cached_or_sniffed(debug: Running) -> None:
    headers = debug.client.get("/stats").headers
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    assert "server" not in headers


def test_json_is_json(debug: Running) -> None:
    for path in ("/stats", "/stacks?format=json", "/metrics?format=json", "/heap/stop?format=json"):
        response = debug.client.get(path)
        assert response.headers["content-type"] == "application/json"
        json.loads(response.text)

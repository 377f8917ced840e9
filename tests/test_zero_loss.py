"""Zero loss for every kind of app liveswap runs: the zero-downtime suite, across app kinds.

The same scenarios against one test app per kind (tests/apps/kinds: raw ASGI, FastAPI, a WSGI
function, Flask, Django under WSGI and under ASGI), each a real ``liveswap run`` subprocess:

- reloads at random intervals under load (keep-alive, one connection per request, POST), 2 workers;
- a stream and an SSE stream in flight across a reload, on a kept-alive connection: the stream must
  complete, and the next request on that connection must be answered;
- pipelined requests in flight across a reload: every one answered;
- a storm of SIGHUPs under load;
- broken reloads (import error, unhealthy) rolled back under load.

The load client (tests/loadclient.py) uses raw sockets, retries nothing and classifies every
failure; zero failures is the only passing result. Everything is synchronised on what liveswap
and the apps report (``liveswap reload``'s exit status, the version GET / answers, "... started"
lines in the output), never on sleeps.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from conftest import Instance, MakeInstance
from loadclient import MODES, Connection, LoadClient, RequestFailed, Response, Result

pytestmark = pytest.mark.timeout(180)

KINDS = {
    "raw_asgi": "kinds.raw_asgi:app",
    "fastapi": "kinds.fastapi_app:app",
    "wsgi_func": "kinds.wsgi_func:application",
    "flask": "kinds.flask_app:app",
    "django_wsgi": "kinds.django_project.wsgi:application",
    "django_asgi": "kinds.django_project.asgi:application",
}
WSGI_KINDS = {"wsgi_func", "flask", "django_wsgi"}
LIFESPAN_KINDS = {"raw_asgi", "fastapi"}  # the kinds whose test app can fail its lifespan startup
# As deployed: the framework is imported once by the template (--preload), each worker imports only
# the app. (Without it, every FastAPI worker imports FastAPI afresh, about 300 ms of CPU per worker.)
PRELOAD = {
    "fastapi": ["fastapi"],
    "flask": ["flask"],
    "django_wsgi": ["django.core.handlers.wsgi"],
    "django_asgi": ["django.core.handlers.asgi"],
}

RELOADS = 10
SPACING = [0.0, 0.01, 0.05, 0.1, 0.2]  # seconds between reloads, including back-to-back ones
CONCURRENCY = 6
STREAM_ITEMS, STREAM_PAUSE = 25, 0.1  # 2.5 s: outlasts a reload (the test checks it did)
SLOW = 2.0  # seconds the first of the pipelined requests takes
PIPELINED = 5


# -- helpers ---------------------------------------------------------------------------------------


def _read(conn: Connection, what: str, method: str = "GET") -> Response:
    """The next response on ``conn``; a failure is reported with the load client's failure class."""
    try:
        return conn.read_response(method)
    except RequestFailed as e:
        failure = e
    pytest.fail(f"{what}: no complete response: {failure}", pytrace=False)


def _start(liveswap: MakeInstance, kind: str, workers: int = 1, threads: int = 1) -> Instance:
    args = ["--workers", str(workers), "--threads", str(threads)]
    for name in PRELOAD.get(kind, []):
        args += ["--preload", name]
    return liveswap(KINDS[kind], args=args)


def _version_of(inst: Instance) -> str:
    """The version a fresh connection's GET / reaches."""
    with Connection(inst.host, inst.port, timeout=15.0) as conn:
        resp = conn.get("/", headers={"Connection": "close"})
    assert resp.status == 200, f"GET / answered {resp.status}: {resp.text!r}"
    return resp.headers["x-app-version"]


def _reload_to(inst: Instance, version: str) -> None:
    """Write a new version, reload; the reload must succeed and a fresh GET / must reach the new code."""
    inst.write_state(version)
    out = inst.reload()
    assert out.returncode == 0, f"reload to {version} exited {out.returncode}: {out.stdout}{out.stderr}"
    got = _version_of(inst)
    assert got == version, f"after the reload to {version} (exit 0), GET / on a new connection answers {got}"


def _reload_many(inst: Instance, count: int, rng: random.Random) -> list[str]:
    versions = []
    for i in range(count):
        version = f"v{i + 2}"
        _reload_to(inst, version)
        versions.append(version)
        time.sleep(rng.choice(SPACING))  # the spacing under test, not a wait for anything
    return versions


def _load(inst: Instance, mode: str = "keepalive", pipeline: int = 1) -> LoadClient:
    lc = LoadClient(host=inst.host, port=inst.port, mode=mode, concurrency=CONCURRENCY, timeout=15.0, pipeline=pipeline)
    lc.start()
    return lc


def _host_probe(inst: Instance, host: str) -> str:
    """What GET / with this Host header answers (for failure messages)."""
    try:
        with Connection(inst.host, inst.port, timeout=10.0) as conn:
            conn.send(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            resp = conn.read_response()
    except RequestFailed as e:
        return f"no answer ({e})"
    return f"{resp.status} {resp.text[:80]!r}"


# -- a. reloads under load -------------------------------------------------------------------------


def _reloads_under_load(inst: Instance, mode: str, rng: random.Random) -> tuple[Result, list[str]]:
    """RELOADS reloads under ``mode`` load, until the load has seen the last version: nothing may be
    lost, and every POST body must come back whole."""
    lc = _load(inst, mode)
    try:
        versions = _reload_many(inst, RELOADS, rng)
        lc.wait_for(lambda r: versions[-1] in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert result.ok > RELOADS * 5, result.summary()
    if mode == "post":
        assert result.verified == result.ok, result.summary()
    return result, versions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_reloads_under_load_lose_nothing(liveswap: MakeInstance, kind: str, mode: str) -> None:
    rng = random.Random(f"zero-loss {kind} {mode}")
    inst = _start(liveswap, kind, workers=2)
    result, versions = _reloads_under_load(inst, mode, rng)
    seen = set(result.versions) & set(versions)
    assert len(seen) >= RELOADS // 2, f"the load saw few of the new versions: {result.versions}"
    status = inst.status()
    assert status["reloads_ok"] == RELOADS and status["reloads_failed"] == 0, status


@pytest.mark.parametrize("mode", ["keepalive", "post"])
def test_wsgi_thread_pool_reloads_under_load_lose_nothing(liveswap: MakeInstance, mode: str) -> None:
    """The native WSGI path with ``--threads 4`` (each request handed to a pool thread and back)
    under keep-alive and POST load across reloads: nothing lost, every POST body echoed whole."""
    rng = random.Random(f"zero-loss threads {mode}")
    _reloads_under_load(_start(liveswap, "flask", workers=2, threads=4), mode, rng)


@pytest.mark.parametrize("kind", ["raw_asgi", "wsgi_func"])
def test_pipelined_load_loses_nothing_across_reloads(liveswap: MakeInstance, kind: str) -> None:
    """Pipelined keep-alive load (4 requests per write) across reloads: every request answered."""
    rng = random.Random(f"zero-loss pipelined {kind}")
    inst = _start(liveswap, kind, workers=2)
    lc = _load(inst, pipeline=4)
    try:
        versions = _reload_many(inst, RELOADS, rng)
        lc.wait_for(lambda r: versions[-1] in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert result.ok > RELOADS * 5, result.summary()


# -- b. streams across a reload --------------------------------------------------------------------


def _expected_items(endpoint: str, version: str) -> bytes:
    if endpoint == "sse":
        return b"".join(f"id: {i}\ndata: event {i} {version}\n\n".encode() for i in range(STREAM_ITEMS))
    return b"".join(f"chunk {i} {version}\n".encode() for i in range(STREAM_ITEMS))


@pytest.mark.parametrize("endpoint", ["stream", "sse"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_stream_in_flight_across_a_reload(liveswap: MakeInstance, kind: str, endpoint: str) -> None:
    """A stream that started before a reload completes, and its kept-alive connection still answers.

    The stream's headers went out (keep-alive) before the old worker started draining, so they
    cannot say ``Connection: close``: the server must keep the connection open after the stream
    and answer the next request on it (with ``Connection: close`` then, if it likes).
    """
    inst = _start(liveswap, kind)
    expected = _expected_items(endpoint, "1")
    last_item = expected.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with Connection(inst.host, inst.port, timeout=30.0) as conn:
        mark = inst.mark()
        conn.send(conn.request(f"/{endpoint}?n={STREAM_ITEMS}&s={STREAM_PAUSE}"))
        inst.wait_for(f"{endpoint} started in pid", timeout=20, start=mark)
        _reload_to(inst, "2")
        so_far = conn.received()
        assert b"200" in so_far.split(b"\r\n", 1)[0], f"the stream's head had not arrived: {so_far[:200]!r}"
        assert last_item not in so_far, "test premise: the stream ended before the reload completed"

        stream = _read(conn, f"the {endpoint} response in flight during the reload")
        assert stream.status == 200, f"{stream.status}: {stream.text[:200]!r}"
        assert "content-length" not in stream.headers, stream.headers
        assert stream.body == expected, f"incomplete or wrong {endpoint}: {stream.text[-300:]!r}"
        if endpoint == "sse":
            assert stream.headers["content-type"].startswith("text/event-stream"), stream.headers
        assert stream.keep_alive, f"test premise: the {endpoint} started before the reload, yet said close"

        conn.send(conn.request("/"))  # at once, as a client reusing its connection would
        after = _read(conn, f"the request sent on the same connection after the {endpoint}")
        assert after.status == 200 and after.text in ("version=1\n", "version=2\n"), (after.status, after.text)


# -- c. pipelined requests across a reload ---------------------------------------------------------


@pytest.mark.parametrize("sent", ["before", "during"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_pipelined_requests_in_flight_across_a_reload(liveswap: MakeInstance, kind: str, sent: str) -> None:
    """A slow request and 4 more pipelined behind it, a reload while the slow one runs: all 5 are
    answered, and only the last may say ``Connection: close``.

    ``before``: the 5 requests in one write, before the reload. ``during``: the slow one before the
    reload, the 4 others (one write) once the old worker is draining, still before the slow answer.

    WSGI apps run with ``--threads 2`` here: with ``--threads 1`` the app runs in the loop's own
    thread, so the old worker takes its Drain only once the slow request returned, and the reload
    cannot complete while it runs (the premise); ``test_inline_slow_request_across_a_reload`` is
    that case.
    """
    inst = _start(liveswap, kind, threads=2 if kind in WSGI_KINDS else 1)
    slow, rest = f"/slow?s={SLOW}", ["/"] * (PIPELINED - 1)
    with Connection(inst.host, inst.port, timeout=30.0) as conn:
        mark = inst.mark()
        if sent == "before":
            conn.send(b"".join(conn.request(path) for path in [slow, *rest]))
        else:
            conn.send(conn.request(slow))
        inst.wait_for("slow request started", timeout=20, start=mark)
        _reload_to(inst, "2")
        assert conn.received() == b"", "test premise: the slow request ended before the reload completed"
        if sent == "during":
            conn.send(b"".join(conn.request(path) for path in rest))
        responses: list[Response] = []
        for i in range(PIPELINED):
            resp = _read(conn, f"pipelined request {i + 1} of {PIPELINED} (after {len(responses)} answered)")
            responses.append(resp)
            if i < PIPELINED - 1 and not resp.keep_alive:
                pytest.fail(
                    f"closed_before_response: response {i + 1} of {PIPELINED} said Connection: close, so pipelined "
                    f"requests {i + 2}..{PIPELINED}, sent before that response, were never answered",
                    pytrace=False,
                )
    assert responses[0].status == 200 and responses[0].text == "slow 1\n", (responses[0].status, responses[0].text)
    for resp in responses[1:]:
        assert resp.status == 200 and resp.text in ("version=1\n", "version=2\n"), (resp.status, resp.text)


def test_inline_slow_request_across_a_reload(liveswap: MakeInstance) -> None:
    """``--threads 1``: a slow WSGI request runs in the old worker's loop thread while a reload is
    asked. The reload completes once it returned; it and the 4 requests pipelined behind it are all
    answered, and a new connection reaches the new code."""
    inst = _start(liveswap, "wsgi_func")
    with Connection(inst.host, inst.port, timeout=30.0) as conn:
        mark = inst.mark()
        conn.send(b"".join(conn.request(p) for p in [f"/slow?s={SLOW}", *["/"] * (PIPELINED - 1)]))
        inst.wait_for("slow request started", timeout=20, start=mark)
        _reload_to(inst, "2")
        responses = [_read(conn, f"pipelined request {i + 1} of {PIPELINED}") for i in range(PIPELINED)]
    assert responses[0].status == 200 and responses[0].text == "slow 1\n", (responses[0].status, responses[0].text)
    for resp in responses[1:]:
        assert resp.status == 200 and resp.text in ("version=1\n", "version=2\n"), (resp.status, resp.text)
    assert all(resp.keep_alive for resp in responses[:-1]), "only the last response may close the connection"


# -- d. a storm of SIGHUPs -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wsgi_func", "raw_asgi"])
def test_sighup_storm_under_load_loses_nothing(liveswap: MakeInstance, kind: str) -> None:
    """50 SIGHUPs in about a second (each after writing a new version): reloads coalesce, nothing is lost."""
    inst = _start(liveswap, kind, workers=2)
    assert inst.proc is not None
    lc = _load(inst)
    try:
        for i in range(50):
            inst.write_state(f"storm{i}")
            os.kill(inst.proc.pid, signal.SIGHUP)
            time.sleep(0.02)  # the storm's pace
        _reload_to(inst, "final")
        lc.wait_for(lambda r: "final" in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    status = inst.status()
    assert status["reloads_failed"] == 0 and status["restarts"] == 0, status
    assert inst.proc.poll() is None, "the supervisor exited"
    assert "exited unexpectedly" not in inst.output_since(0)


# -- broken reloads --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_broken_reloads_are_rolled_back_under_load(liveswap: MakeInstance, kind: str) -> None:
    """Code that fails to import, fails its startup or answers its health check 500 never goes live."""
    inst = _start(liveswap, kind, workers=2)
    behaviours = ["fail-import", "unhealthy", *(["fail-startup"] if kind in LIFESPAN_KINDS else [])]
    lc = _load(inst)
    try:
        for behaviour in behaviours:
            inst.write_state(f"bad-{behaviour} {behaviour}")
            out = inst.reload()
            if out.returncode != 1:
                pytest.fail(
                    f"a reload to {behaviour!r} code exited {out.returncode} (want 1, rolled back): "
                    f"{out.stdout}{out.stderr}\nGET / now answers {_host_probe(inst, '127.0.0.1')} for Host: "
                    f"127.0.0.1 and {_host_probe(inst, 'liveswap-health')} for Host: liveswap-health",
                    pytrace=False,
                )
            assert _version_of(inst) == "1"
        _reload_to(inst, "good")
        lc.wait_for(lambda r: "good" in r.versions, timeout=15)
    finally:
        result = lc.stop()
    assert result.failed == 0, result.summary()
    assert not any(v.startswith("bad") for v in result.versions), result.versions
    status = inst.status()
    assert status["reloads_failed"] == len(behaviours) and status["reloads_ok"] == 1, status

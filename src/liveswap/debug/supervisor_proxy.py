"""The debug port of ``liveswap run``: served by the supervisor, for every worker.

Workers cannot all bind one port, so each serves its own debug endpoints on a private unix socket
(``<runtime dir>/<name>.debug/<pid>.sock``, see ``worker/main.py``) and the supervisor
serves the public one:

    /                         index: the generations and their workers, with links
    /status                   the supervisor's status (what ``liveswap status --json`` shows)
    /metrics                  every worker's request metrics summed, plus the supervisor's own
    /workers/<pid>/<rest>     proxied to that worker's debug server: /stacks, /profile, /heap ...

It runs in the supervisor's event loop on asyncio streams and h11 (sans-IO HTTP/1.1). The supervisor
never imports uvicorn (its memory budget is 40 MB RSS), and its loop never blocks, so no thread.

    hub = DebugHub.bind("127.0.0.1:6060", name="myapp", status=supervisor.status, token=None)
    await hub.start()
    ...
    await hub.close()

Counters stay monotonic across reloads: a worker's last scraped snapshot is folded into a
"retired" total when it exits, so the summed ``liveswap_http_requests_total`` does not drop when a
generation drains away (only the requests a worker finished after its last scrape are missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import os
import re
import socket
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11

from ._http import HOP_BY_HOP, Headers, HTTPError, Request, ServerConnection, WorkerRequest
from .bind import bind_debug, describe_address
from .errors import DebugPublicAddressError
from .metrics import DEFAULT_BUCKETS, PREFIX, SNAPSHOT_FORMAT, _num, merge_snapshots, render_prometheus

__all__ = ["DebugHub", "worker_socket_dir"]

log = logging.getLogger("liveswap.debug")

StatusFn = Callable[[], Mapping[str, Any]]

MAX_CONNECTIONS = 32
SCRAPE_TIMEOUT = 2.0  # per worker, all at once: a slow worker delays /metrics by this much at most
PROXY_TIMEOUT = 10.0
HEAP_TIMEOUT = 30.0  # a heap snapshot of a big process takes a while
PROFILE_GRACE = 15.0  # a profile of N seconds may take N + this
PROFILE_DEFAULT_SECONDS = 10.0  # as the workers' /profile
PROFILE_MAX_SECONDS = 60.0
WORKER_STATES = ("booting", "ready", "live", "draining")

PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
# The client's credentials and Host are replaced by ours on the way to a worker.
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"authorization", b"content-length", b"expect", b"x-forwarded-prefix"}
_WORKER_PATH = re.compile(r"/workers/(\d+)(/.*)?\Z", re.S)


def worker_socket_dir(name: str) -> Path:
    """Where the workers of instance ``name`` put their debug sockets."""
    from ..control import worker_debug_dir

    return worker_debug_dir(name)


class DebugHub:
    """Serves the supervisor's debug port; see the module docstring. Takes ownership of ``sock``.

    ``status()`` is the supervisor's status dict (``Supervisor.status()``); its generations say which
    worker pids exist. ``token`` (if non-empty) is required on every request and sent on to workers.
    """

    def __init__(self, sock: socket.socket, *, name: str, status: StatusFn, token: str | None = None) -> None:
        self._sock = sock
        self.address = describe_address(sock)
        """Where it listens, in ``bind_debug`` syntax (``127.0.0.1:6060``, ``unix:/path``)."""
        self.socket_dir = worker_socket_dir(name)
        self._status = status
        self._token = token.encode("utf-8") if token else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._scrape_lock = asyncio.Lock()
        self._last: dict[int, dict[str, Any]] = {}  # pid -> its last good metrics snapshot
        self._retired: dict[str, Any] | None = None  # counters of workers that have exited, summed

    @classmethod
    def bind(cls, address: str, *, name: str, status: StatusFn, token: str | None = None) -> DebugHub:
        """Bind ``address`` (loopback only) for ``liveswap run``; raises ``DebugBindError`` with a hint."""
        try:
            sock = bind_debug(address)
        except DebugPublicAddressError as exc:
            port = address.rpartition(":")[2] or "6060"
            raise DebugPublicAddressError(
                f"--debug-bind {address}: {exc}",
                hint=f"use --debug-bind 127.0.0.1:{port} and reach it from elsewhere through a tunnel "
                f"(ssh -L {port}:127.0.0.1:{port} host) or an authenticating reverse proxy",
            ) from None
        return cls(sock, name=name, status=status, token=token)

    @property
    def url(self) -> str:
        return f"http://{self.address}/" if not self.address.startswith("unix:") else self.address

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        else:
            self._sock.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        with contextlib.suppress(OSError):  # empty unless a worker was SIGKILLed along with us
            self.socket_dir.rmdir()

    def worker_exited(self, pid: int) -> None:
        """Remove the debug socket a worker left behind (it was killed, or crashed)."""
        with contextlib.suppress(FileNotFoundError):
            (self.socket_dir / f"{pid}.sock").unlink()

    # ---- connections ------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= MAX_CONNECTIONS:
            writer.close()  # loopback only: a full house is a runaway script, not a crowd of users
            return
        self._connections.add(task)
        client = ServerConnection(reader, writer)
        try:
            while True:
                try:
                    req = await client.read_request()
                except HTTPError as exc:
                    await self._error(client, exc)
                    break
                except h11.RemoteProtocolError as exc:
                    if client.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await self._error(client, HTTPError(exc.error_status_hint, f"bad request: {exc}"))
                    break
                if req is None:
                    break
                await self._answer(client, req)
                if not client.next_cycle():
                    break
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # the client went away, or was too slow, or we had to cut an answer short
        except Exception:  # a bug here must not reach the supervisor's loop; show it and hang up
            log.exception("internal error on the debug port")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _error(self, client: ServerConnection, exc: HTTPError) -> None:
        text = f"{exc.status} {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else "")
        await client.respond(exc.status, text.encode("utf-8"), headers=exc.headers)

    async def _answer(self, client: ServerConnection, req: Request) -> None:
        try:
            if not self._authorized(req):
                raise HTTPError(
                    401,
                    "this debug server requires a token",
                    "add ?token=<token> to the URL or send 'Authorization: Bearer <token>', "
                    "with the token liveswap was started with (--debug-token)",
                    [(b"www-authenticate", b'Bearer realm="liveswap debug"')],
                )
            worker = _WORKER_PATH.match(req.path)
            if worker is not None:
                await self._proxy(client, req, int(worker.group(1)), worker.group(2))
                return
            route = {"/": self._index, "/status": self._status_json, "/metrics": self._metrics}.get(req.path)
            if route is None:
                raise HTTPError(404, f"no debug endpoint at {req.path}; the endpoints are:\n{_LISTING}")
            if req.method not in ("GET", "HEAD"):
                raise HTTPError(
                    405, f"{req.path} accepts GET and HEAD, not {req.method}", headers=[(b"allow", b"GET, HEAD")]
                )
            status, body, content_type = await route(req)
            await client.respond(status, body, content_type)
        except HTTPError as exc:
            await self._error(client, exc)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            raise
        except Exception:  # a debug server shows its own failures instead of hiding them
            if client.conn.our_state is not h11.SEND_RESPONSE:
                raise  # the answer had begun: all we can do is cut the connection
            await client.respond(500, ("500 the debug endpoint failed:\n\n" + traceback.format_exc()).encode())

    def _authorized(self, req: Request) -> bool:
        if self._token is None:
            return True
        given = req.arg("token")
        if given is None:
            scheme, _, credentials = (req.header(b"authorization") or "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else None
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self._token)

    # ---- /, /status ----------------------------------------------------------------------------------
    async def _status_json(self, req: Request) -> tuple[int, bytes, bytes]:
        return 200, json.dumps(self._status(), indent=2, default=str).encode() + b"\n", b"application/json"

    async def _index(self, req: Request) -> tuple[int, bytes, bytes]:
        status = self._status()
        token = req.arg("token")

        def link(href: str, text: str) -> str:
            if token is not None:
                href += ("&" if "?" in href else "?") + "token=" + quote(token, safe="")
            return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'

        rows = []
        for gen in status.get("generations", []):
            rows.append(f'<tr><th colspan="5">generation {gen["generation"]} ({html.escape(gen["state"])})</th></tr>')
            for w in gen["workers"]:
                pid = w["pid"]
                tools = " ".join(
                    link(f"/workers/{pid}/{path}", path.partition("?")[0])
                    for path in ("stacks", "profile?seconds=10", "heap", "stats", "metrics")
                )
                rows.append(
                    f"<tr><td>{link(f'/workers/{pid}/', f'pid {pid}')}</td>"
                    f"<td>{html.escape(w['state'])}</td><td>up {w['uptime']:.0f} s</td>"
                    f"<td>{w['restarts']} restarts</td><td>{tools}</td></tr>"
                )
        page = _INDEX.format(
            pid=status.get("pid", os.getpid()),
            app=html.escape(str(status.get("app", ""))),
            state=html.escape(str(status.get("state", ""))),
            uptime=float(status.get("uptime", 0.0)),
            rows="\n".join(rows) or '<tr><td colspan="5">no workers</td></tr>',
            metrics=link("/metrics", "/metrics"),
            status=link("/status", "/status"),
        )
        return 200, page.encode("utf-8"), b"text/html; charset=utf-8"

    # ---- /metrics ------------------------------------------------------------------------------------
    def _pids(self) -> set[int]:
        return {int(w["pid"]) for g in self._status().get("generations", []) for w in g["workers"] if w["pid"]}

    async def _scrape(self, pid: int) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                status, body = await self._fetch(pid, b"/metrics?format=json")
            snapshot = json.loads(body)
        except (OSError, TimeoutError, h11.ProtocolError, ValueError) as exc:
            log.debug("metrics of worker pid %d not read: %r", pid, exc)
            return None
        if (
            status != 200
            or not isinstance(snapshot, dict)
            or snapshot.get("format") != SNAPSHOT_FORMAT
            or snapshot.get("buckets") != list(DEFAULT_BUCKETS)
        ):
            log.debug("metrics of worker pid %d not usable: HTTP %d %.200r", pid, status, body)
            return None
        return snapshot

    async def _fetch(self, pid: int, target: bytes) -> tuple[int, bytes]:
        upstream, response = await WorkerRequest.request(self._socket(pid), "GET", target, self._auth())
        try:
            return response.status_code, b"".join([chunk async for chunk in upstream.body()])
        finally:
            upstream.close()

    def _retire(self, snapshot: dict[str, Any]) -> None:
        gone = dict(snapshot, in_flight=0, gauges={}, pids=[])
        self._retired = merge_snapshots([self._retired, gone] if self._retired else [gone]) | {"pids": []}

    async def _metrics(self, req: Request) -> tuple[int, bytes, bytes]:
        async with self._scrape_lock:  # one scrape at a time, so that no worker is retired twice
            pids = sorted(pid for pid in self._pids() if self._socket(pid).exists())
            results = await asyncio.gather(*(self._scrape(pid) for pid in pids))
            status = self._status()
            alive = {int(w["pid"]) for g in status.get("generations", []) for w in g["workers"]}
            for pid, snapshot in zip(pids, results, strict=True):
                if snapshot is not None:
                    self._last[pid] = snapshot
            for pid in [p for p in self._last if p not in alive]:
                self._retire(self._last.pop(pid))
            # A worker that did not answer counts with its last values: sums must not go down.
            parts = ([self._retired] if self._retired else []) + [self._last[p] for p in sorted(self._last)]
            merged = merge_snapshots(parts)
        errors = sum(result is None for result in results)
        text = render_prometheus(merged) + _supervisor_metrics(status, errors)
        return 200, text.encode("utf-8"), PROMETHEUS

    # ---- /workers/<pid>/... ----------------------------------------------------------------------------
    def _socket(self, pid: int) -> Path:
        return self.socket_dir / f"{pid}.sock"

    def _auth(self) -> Headers:
        return [(b"authorization", b"Bearer " + self._token)] if self._token else []

    async def _proxy(self, client: ServerConnection, req: Request, pid: int, rest: str | None) -> None:
        """Forward ``req`` to worker ``pid`` as ``<rest>?<query>`` and stream its answer back."""
        query = req.target.partition(b"?")[2]
        if rest is None:  # relative links in the worker's pages need the slash
            location = f"/workers/{pid}/".encode() + (b"?" + query if query else b"")
            raise HTTPError(308, f"see /workers/{pid}/", headers=[(b"location", location)])
        pids = self._pids()
        if pid not in pids:
            live = ", ".join(str(p) for p in sorted(pids)) or "none"
            raise HTTPError(
                404,
                f"no worker with pid {pid}; the workers now are: {live}",
                "workers change at every reload and restart; / lists them with links",
            )
        # The path as received (still percent-encoded), without the /workers/<pid> prefix.
        target = req.target.partition(b"?")[0][len(f"/workers/{pid}") :] + (b"?" + query if query else b"")
        timeout = self._proxy_timeout(rest, req)
        headers = [(k, v) for k, v in req.headers if k not in _NOT_FORWARDED]
        headers += [(b"x-forwarded-prefix", f"/workers/{pid}".encode()), *self._auth()]
        started = False
        try:
            async with asyncio.timeout(timeout):
                upstream, response = await WorkerRequest.request(
                    self._socket(pid), req.method, target, headers, req.body
                )
                try:
                    client.start(
                        response.status_code,
                        [(k, v) for k, v in response.headers if k not in HOP_BY_HOP],
                        bytes(response.reason),
                    )
                    started = True
                    async for chunk in upstream.body():
                        await client.data(chunk)
                    await client.end()
                finally:
                    upstream.close()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise HTTPError(
                502,
                f"worker pid {pid} has no debug server listening ({exc.strerror})",
                "a worker opens it right after importing the app: it may still be booting, "
                "or be exiting; / lists the workers",
            ) from None
        except TimeoutError:
            if started:
                raise
            raise HTTPError(
                504,
                f"worker pid {pid} did not answer within {timeout:g} s",
                f"its debug server runs on its own thread, so the process may be stuck outside "
                f"Python (py-spy dump --pid {pid} can still tell)",
            ) from None
        except (OSError, h11.ProtocolError) as exc:
            if started:
                raise  # the answer has begun: all we can do is cut the connection
            raise HTTPError(
                502,
                f"worker pid {pid} gave no usable answer: {exc}",
                "it may have exited meanwhile; / lists the workers",
            ) from None

    @staticmethod
    def _proxy_timeout(rest: str, req: Request) -> float:
        if rest.rstrip("/") == "/profile":
            try:
                seconds = float(req.arg("seconds") or PROFILE_DEFAULT_SECONDS)
            except ValueError:
                seconds = PROFILE_DEFAULT_SECONDS  # the worker will answer 400
            return min(max(seconds, 0.0), PROFILE_MAX_SECONDS) + PROFILE_GRACE
        if rest.rstrip("/") == "/heap":
            return HEAP_TIMEOUT
        return PROXY_TIMEOUT


def _family(name: str, kind: str, description: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {PREFIX}{name} {description}", f"# TYPE {PREFIX}{name} {kind}"]
    lines += [f"{PREFIX}{name}{labels} {_num(value)}" for labels, value in samples]
    return lines


def _supervisor_metrics(status: Mapping[str, Any], scrape_errors: int) -> str:
    generations = status.get("generations", [])
    live = max((g["generation"] for g in generations if g["state"] == "live"), default=0)
    states = dict.fromkeys(WORKER_STATES, 0)
    for g in generations:
        for w in g["workers"]:
            states[w["state"]] = states.get(w["state"], 0) + 1
    lines = [
        *_family("generation", "gauge", "Number of the live generation (0 until the first one is live).", [("", live)]),
        *_family(
            "reloads_total",
            "counter",
            "Reload transactions since the supervisor started, by outcome "
            "(failed: rolled back, the previous generation kept serving).",
            [('{outcome="ok"}', status.get("reloads_ok", 0)), ('{outcome="failed"}', status.get("reloads_failed", 0))],
        ),
        *_family(
            "worker_restarts_total",
            "counter",
            "Workers started to replace one that crashed.",
            [("", status.get("restarts", 0))],
        ),
        *_family(
            "workers",
            "gauge",
            "Worker processes, by state.",
            [(f'{{state="{state}"}}', count) for state, count in states.items()],
        ),
        *_family(
            "debug_scrape_errors",
            "gauge",
            "Workers whose metrics could not be read for this answer (their last values are counted).",
            [("", scrape_errors)],
        ),
    ]
    return "\n".join(lines) + "\n"


_LISTING = "\n".join(
    f"  {path:<28} {text}"
    for path, text in (
        ("/", "this instance's generations and workers, with links"),
        ("/status", "the supervisor's status as JSON (as `liveswap status --json`)"),
        ("/metrics", "all workers' request metrics summed, and the supervisor's (Prometheus text)"),
        ("/workers/<pid>/<endpoint>", "one worker's debug server: stacks, profile, heap, stats, metrics"),
    )
)

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>liveswap debug: supervisor pid {pid}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.25em 1em .25em 0;text-align:left}}</style>
</head><body>
<h1>liveswap {app}: supervisor pid {pid}</h1>
<p>State: <b>{state}</b>, up {uptime:.0f} s.</p>
<table>
{rows}
</table>
<p>A worker's page shows its own debug endpoints: <i>stacks</i> (every thread and asyncio task, e.g. where a
request is stuck), <i>profile</i> (a flame graph of all threads), <i>heap</i> (allocation sites),
<i>stats</i> (memory, CPU, fds), <i>metrics</i> (that worker alone). Pids change at every reload.</p>
<ul>
<li>{metrics}: every worker's request counters and latency summed, with the generation, reloads and restarts
(Prometheus text format)</li>
<li>{status}: the supervisor's status as JSON, as <code>liveswap status --json</code> prints it</li>
</ul>
</body></html>
"""

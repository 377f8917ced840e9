"""The hub's server: the one public debug port of ``liveswap run``, in the supervisor's loop.

Routes ``/`` (the generations and their workers, with links), ``/status`` (the supervisor's
status as JSON) and ``/metrics`` (``metrics.py``) itself, and hands ``/workers/<pid>/...`` to the
proxy (``proxy.py``). Every route wants the token, when one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Any

import h11

from ...control.paths import worker_debug_dir
from .._common import (
    HTML,
    JSON,
    PROMETHEUS,
    HTTPError,
    check_token,
    internal_error,
    json_body,
    method_not_allowed,
    not_found,
    with_token,
)
from ..bind import bind_debug, describe_address
from ..errors import DebugPublicAddressError
from .connection import Request, ServerConnection
from .metrics import MetricsAggregator
from .proxy import StatusFn, WorkerProxy

if TYPE_CHECKING:
    from ...config import Settings

__all__ = ["DebugHub"]

log = logging.getLogger("liveswap.debug")

MAX_CONNECTIONS = 32
_WORKER_PATH = re.compile(r"/workers/(\d+)(/.*)?\Z", re.S)
_GET = ("GET", "HEAD")


class DebugHub:
    """Serves the supervisor's debug port; see the module docstring. Takes ownership of ``sock``.

    ``status()`` is the supervisor's status dict (``Supervisor.status()``); its generations say which
    worker pids exist. ``token`` (if non-empty) is required on every request and sent on to workers.
    """

    def __init__(self, sock: socket.socket, *, name: str, status: StatusFn, token: str | None = None) -> None:
        self._sock = sock
        self.address = describe_address(sock)
        """Where it listens, in ``bind_debug`` syntax (``127.0.0.1:6060``, ``unix:/path``)."""
        self._status = status
        self._token = token.encode("utf-8") if token else None
        self.proxy = WorkerProxy(worker_debug_dir(name), status, self._token)
        self._metrics = MetricsAggregator(self.proxy)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @classmethod
    def bind(
        cls, address: str, *, name: str, status: StatusFn, token: str | None = None, allow_public: bool = False
    ) -> DebugHub:
        """Bind ``address`` for ``liveswap run``: loopback only, unless ``allow_public`` (--debug-allow-public,
        which the settings accept only with a token); raises ``DebugBindError`` with a hint."""
        try:
            sock = bind_debug(address, allow_public=allow_public and bool(token))
        except DebugPublicAddressError as exc:
            port = address.rpartition(":")[2] or "6060"
            raise DebugPublicAddressError(
                f"--debug-bind {address}: {exc}",
                hint=f"use --debug-bind 127.0.0.1:{port} and reach it from elsewhere through a tunnel "
                f"(ssh -L {port}:127.0.0.1:{port} host), or, for a scraper on another host, add "
                "--debug-allow-public with a --debug-token",
            ) from None
        return cls(sock, name=name, status=status, token=token)

    @classmethod
    def for_settings(cls, settings: Settings, *, name: str, status: StatusFn) -> DebugHub:
        """``bind`` with --debug-bind, --debug-token and --debug-allow-public."""
        token = settings.debug_token or None
        return cls.bind(
            settings.debug_bind, name=name, status=status, token=token, allow_public=settings.debug_allow_public
        )

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
            self.proxy.socket_dir.rmdir()

    def worker_exited(self, pid: int) -> None:
        """Remove the debug socket a worker left behind (it was killed, or crashed)."""
        self.proxy.worker_exited(pid)

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
                    await client.error(exc)
                    break
                except h11.RemoteProtocolError as exc:
                    if client.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await client.error(HTTPError(exc.error_status_hint, f"bad request: {exc}"))
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

    async def _answer(self, client: ServerConnection, req: Request) -> None:
        try:
            check_token(self._token, req.arg("token"), req.header(b"authorization"))
            worker = _WORKER_PATH.match(req.path)
            if worker is not None:
                await self.proxy.forward(client, req, int(worker.group(1)), worker.group(2))
                return
            route = {"/": self._index, "/status": self._status_json, "/metrics": self._metrics_text}.get(req.path)
            if route is None:
                raise not_found(req.path, _LISTING)
            if req.method not in _GET:
                raise method_not_allowed(req.path, req.method, _GET)
            body, content_type = await route(req)
            await client.respond(200, body, content_type)
        except HTTPError as exc:
            await client.error(exc)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            raise
        except Exception:  # a debug server shows its own failures instead of hiding them
            if client.conn.our_state is not h11.SEND_RESPONSE:
                raise  # the answer had begun: all we can do is cut the connection
            await client.respond(500, internal_error())

    # ---- /, /status, /metrics -------------------------------------------------------------------------
    async def _status_json(self, req: Request) -> tuple[bytes, str]:
        return json_body(self._status()), JSON

    async def _metrics_text(self, req: Request) -> tuple[bytes, str]:
        return (await self._metrics.render(self._status)).encode("utf-8"), PROMETHEUS

    async def _index(self, req: Request) -> tuple[bytes, str]:
        status = self._status()
        token = req.arg("token")

        def link(href: str, text: str) -> str:
            return f'<a href="{html.escape(with_token(href, token))}">{html.escape(text)}</a>'

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
        return page.encode("utf-8"), HTML


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

"""The hub's way to the workers: each serves its debug endpoints on a private unix socket.

``WorkerProxy.forward`` passes ``/workers/<pid>/<rest>`` on to that worker's debug server and streams
its answer back; ``fetch`` reads one answer whole (the metrics scrape). Each request goes over a
fresh connection (``Connection: close``), carries the hub's own token, never the client's
credentials, and has a deadline that fits the endpoint (a 60 s profile may take 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import h11

from .._common import PROFILE_DEFAULT_SECONDS, PROFILE_MAX_SECONDS, Headers, HTTPError
from .connection import MAX_HEAD, Request, ServerConnection

__all__ = ["StatusFn", "WorkerProxy", "WorkerRequest", "worker_pids"]

StatusFn = Callable[[], Mapping[str, Any]]

PROXY_TIMEOUT = 10.0
HEAP_TIMEOUT = 30.0  # a heap snapshot of a big process takes a while
PROFILE_GRACE = 15.0  # a profile of N seconds may take N + this

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
# The client's credentials and Host are replaced by ours on the way to a worker.
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"authorization", b"content-length", b"expect", b"x-forwarded-prefix"}


class WorkerRequest:
    """One request to a worker's debug server over its unix socket (``Connection: close``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    @classmethod
    async def request(
        cls, path: Path, method: str, target: bytes, headers: Headers, body: bytes = b""
    ) -> tuple[WorkerRequest, h11.Response]:
        """Connect, send the request, read the answer's head; then iterate ``body()`` and ``close()``."""
        reader, writer = await asyncio.open_unix_connection(str(path))
        req = cls(reader, writer)
        try:
            head = [*headers, (b"host", b"liveswap-debug"), (b"connection", b"close")]
            if body or method not in ("GET", "HEAD"):
                head.append((b"content-length", str(len(body)).encode()))
            writer.write(req.conn.send(h11.Request(method=method, target=target, headers=head)))
            if body:
                writer.write(req.conn.send(h11.Data(data=body)))
            writer.write(req.conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = await req._event()
                if isinstance(event, h11.Response):
                    return req, event
                if not isinstance(event, h11.InformationalResponse):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} from the worker")
        except BaseException:
            req.close()
            raise

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the worker closed the connection before it finished its answer")
            else:
                return event

    async def body(self) -> AsyncIterator[bytes]:
        while isinstance(event := await self._event(), h11.Data):
            yield bytes(event.data)

    def close(self) -> None:
        self.writer.close()


def worker_pids(status: Mapping[str, Any]) -> set[int]:
    """The pids of the workers in the supervisor's ``status`` (``Supervisor.status()``)."""
    return {int(w["pid"]) for g in status.get("generations", []) for w in g["workers"] if w["pid"]}


class WorkerProxy:
    """Requests to the workers that ``status()`` lists, whose sockets are in ``socket_dir``.

    ``token`` (if any) is sent to the workers, which were started with the same one.
    """

    def __init__(self, socket_dir: Path, status: StatusFn, token: bytes | None) -> None:
        self.socket_dir = socket_dir
        self._status = status
        self._token = token

    def pids(self) -> set[int]:
        return worker_pids(self._status())

    def socket(self, pid: int) -> Path:
        return self.socket_dir / f"{pid}.sock"

    def worker_exited(self, pid: int) -> None:
        """Remove the debug socket a worker left behind (it was killed, or crashed)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket(pid).unlink()

    def _auth(self) -> Headers:
        return [(b"authorization", b"Bearer " + self._token)] if self._token else []

    async def fetch(self, pid: int, target: bytes) -> tuple[int, bytes]:
        """GET ``target`` from worker ``pid``: its status and whole body (no deadline: the caller sets one)."""
        upstream, response = await WorkerRequest.request(self.socket(pid), "GET", target, self._auth())
        try:
            return response.status_code, b"".join([chunk async for chunk in upstream.body()])
        finally:
            upstream.close()

    async def forward(self, client: ServerConnection, req: Request, pid: int, rest: str | None) -> None:
        """Forward ``req`` to worker ``pid`` as ``<rest>?<query>`` and stream its answer back."""
        query = req.target.partition(b"?")[2]
        if rest is None:  # relative links in the worker's pages need the slash
            location = f"/workers/{pid}/".encode() + (b"?" + query if query else b"")
            raise HTTPError(308, f"see /workers/{pid}/", headers=[(b"location", location)])
        pids = self.pids()
        if pid not in pids:
            live = ", ".join(str(p) for p in sorted(pids)) or "none"
            raise HTTPError(
                404,
                f"no worker with pid {pid}; the workers now are: {live}",
                "workers change at every reload and restart; / lists them with links",
            )
        # The path as received (still percent-encoded), without the /workers/<pid> prefix.
        target = req.target.partition(b"?")[0][len(f"/workers/{pid}") :] + (b"?" + query if query else b"")
        timeout = _timeout(rest, req)
        headers = [(k, v) for k, v in req.headers if k not in _NOT_FORWARDED]
        headers += [(b"x-forwarded-prefix", f"/workers/{pid}".encode()), *self._auth()]
        started = False
        try:
            async with asyncio.timeout(timeout):
                upstream, response = await WorkerRequest.request(
                    self.socket(pid), req.method, target, headers, req.body
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


def _timeout(rest: str, req: Request) -> float:
    if rest.rstrip("/") == "/profile":
        try:
            seconds = float(req.arg("seconds") or PROFILE_DEFAULT_SECONDS)
        except ValueError:
            seconds = PROFILE_DEFAULT_SECONDS  # the worker will answer 400
        return min(max(seconds, 0.0), PROFILE_MAX_SECONDS) + PROFILE_GRACE
    if rest.rstrip("/") == "/heap":
        return HEAP_TIMEOUT
    return PROXY_TIMEOUT

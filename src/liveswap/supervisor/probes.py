"""Kubernetes termination: the probe port (``--probe-bind``), the shutdown delay (``--shutdown-delay``)
and the grace-period check (``--grace-period``).

The probe port answers ``GET``/``HEAD`` ``/livez`` and ``/readyz`` and nothing else (no state
beyond one word, so it may listen on every interface for the kubelet). It is served by the
supervisor's own loop, without an HTTP library: one request per connection, its head at most
``MAX_HEAD`` bytes and read within ``READ_TIMEOUT``, at most ``MAX_CONNECTIONS`` at a time, and the
connection is closed after the answer.

- ``/livez``: 200 while the supervisor's loop turns, from the first boot to the end of the last
  drain. A degraded instance (workers crash-looping) stays live: it keeps retrying with backoff,
  and restarting the container would not fix the app.
- ``/readyz``: 200 while a generation is live with at least one live worker and no stop was asked
  for; 503 while the first generation boots, while no worker is up, and from the first SIGTERM
  (or ``liveswap stop``) on.

A stop request first makes ``/readyz`` answer 503; the workers then serve (and accept) for
``--shutdown-delay`` more, while load balancers and kube-proxy learn that the pod is going, and only
then does the usual drain begin. A second SIGTERM, SIGINT or ``liveswap stop`` during the delay
skips the rest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import BindError
from ..sockets import bind_all, describe
from .generation import WorkerState

if TYPE_CHECKING:
    import socket

    from .core import Supervisor

__all__ = ["KUBERNETES_GRACE", "Termination"]

log = logging.getLogger("liveswap.supervisor")

MAX_HEAD = 4096  # a kubelet's probe request is ~150 bytes
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
KUBERNETES_GRACE = 30.0  # terminationGracePeriodSeconds when a pod does not set it
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Termination:
    """The probe server and the way a stop request becomes a stop."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.settings = sup.settings
        self.stop_asked = False  # from the first stop request on, /readyz answers 503
        self.delaying = False  # within --shutdown-delay
        self._skip = asyncio.Event()
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""

    # ---- start and end --------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve --probe-bind (a ``BindError`` with a hint if it cannot), and say when the
        shutdown delay and drain timeout do not fit in the grace period."""
        self.check_grace_period(os.environ)
        text = self.settings.probe_bind
        if not text:
            return
        try:
            [listener] = bind_all([text])
        except BindError as exc:
            hint = exc.hint.replace("--bind", "--probe-bind") if exc.hint else None
            raise BindError(f"--probe-bind {exc.message}", hint=hint) from None
        self._sock = listener.sock
        self.address = describe(self._sock)
        self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=MAX_HEAD)
        log.info("probes on %s: /livez, /readyz", self.address)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)

    def check_grace_period(self, environ: Mapping[str, str]) -> float:
        """Warn when --shutdown-delay plus --drain-timeout exceed the grace period (given, or Kubernetes'
        default when it looks like a pod); returns the grace period used (0: unknown)."""
        grace, source = self.settings.grace_period, "--grace-period"
        if not grace and environ.get("KUBERNETES_SERVICE_HOST"):
            grace, source = KUBERNETES_GRACE, "Kubernetes' default, assumed: KUBERNETES_SERVICE_HOST is set"
        delay, drain = self.settings.shutdown_delay, self.settings.drain_timeout
        if grace and delay + drain > grace:
            log.warning(
                "--shutdown-delay %g s + --drain-timeout %g s = %g s is longer than the grace period, %g s (%s): "
                "requests still in flight when it ends will be cut by SIGKILL",
                delay,
                drain,
                delay + drain,
                grace,
                source,
            )
            log.warning(
                "  hint: set terminationGracePeriodSeconds to at least %g (plus any preStop sleep) and --grace-period "
                "to match, or lower --drain-timeout",
                delay + drain + 5,
            )
        return grace

    # ---- stopping -------------------------------------------------------------------------------
    def asked(self, sig: signal.Signals) -> None:
        """A stop request (SIGTERM, SIGINT, SIGQUIT, liveswap stop) while not yet stopping."""
        if self.delaying:
            log.info("%s during the shutdown delay: skipping the rest of it", sig.name)
            self._skip.set()
            return
        self.stop_asked = True
        delay = self.settings.shutdown_delay
        if delay <= 0:
            log.info("%s: stopping gracefully (send SIGINT again to stop at once)", sig.name)
            self.sup.spawn_task(self.sup.stop(graceful=True))
            return
        self.delaying = True
        log.info(
            "%s: not ready (/readyz answers 503); serving %g s more (--shutdown-delay), then stopping gracefully "
            "(send SIGTERM or SIGINT again to skip the delay)",
            sig.name,
            delay,
        )
        self.sup.spawn_task(self._delay_then_stop(delay))

    async def _delay_then_stop(self, delay: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._skip.wait(), delay)
        finally:
            self.delaying = False
        if not self.sup.stopping:
            log.info("shutdown delay over: stopping gracefully (send SIGINT again to stop at once)")
            await self.sup.stop(graceful=True)

    # ---- the probes -----------------------------------------------------------------------------
    def live(self) -> bool:
        stopped = self.sup._stopped
        return stopped is None or not stopped.done()

    def readiness(self) -> str:
        """ "" when ready, else why not, in a word or two."""
        if self.stop_asked or self.sup.stopping:
            return "stopping"
        live = self.sup.live
        if live is None:
            return "starting"
        if not any(w.state is WorkerState.LIVE for w in live.workers):
            return "no live worker"
        return ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        try:
            status, body, head_only = await self._answer(reader)
            reason = _REASONS[status]
            allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n".encode()
                + (b"" if head_only else data)
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bool]:
        """(status, body, whether to send the head only) for the request on ``reader``."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            return 400, "bad request\n", False
        except TimeoutError:
            return 400, f"no complete request within {READ_TIMEOUT:g} s\n", False
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/livez", b"/readyz"):
            return 404, "not found: the probe port answers /livez and /readyz\n", method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return 405, "method not allowed\n", False
        head_only = method == b"HEAD"
        if target == b"/livez":
            return (200, "ok\n", head_only) if self.live() else (503, "stopped\n", head_only)
        why = self.readiness()
        return (200, "ready\n", head_only) if not why else (503, f"not ready: {why}\n", head_only)

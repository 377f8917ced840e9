"""``--build COMMAND``: a shell command run once before each generation of a server command starts
(``go build -o ./server .``, ``npm run build``). Its output is shown as it comes and kept: when it
fails, the generation fails with that output (``liveswap dev`` shows it on the error page).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
from collections.abc import Callable

from ..generation import BootFailed

__all__ = ["Builds"]

TAIL_LINES = 60


class Builds:
    def __init__(self, command: str, expect_exit: Callable[[int], asyncio.Future[int]], timeout: float) -> None:
        self.command = command
        self.expect_exit = expect_exit
        self.timeout = timeout
        self.runs: dict[int, asyncio.Future[None]] = {}  # by generation: its workers share one build

    async def ready(self, generation: int) -> None:
        """Build for ``generation`` (once, however many workers it has); raises BootFailed."""
        run = self.runs.get(generation)
        if run is None:
            run = self.runs[generation] = asyncio.ensure_future(self._build(generation))
            for old in [g for g in self.runs if g < generation - 4]:
                del self.runs[old]
        await asyncio.shield(run)

    async def _build(self, generation: int) -> None:
        read, write = os.pipe()
        env = {**os.environ, "LIVESWAP_GENERATION": str(generation)}
        env.pop("NOTIFY_SOCKET", None)
        try:
            pid = os.posix_spawn(
                "/bin/sh",
                ["/bin/sh", "-c", self.command],
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, write, 2)],
                setpgroup=0,
            )
        finally:
            os.close(write)
        exited = self.expect_exit(pid)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read, "rb", buffering=0)
        )
        try:
            async with asyncio.timeout(self.timeout):
                while line := await reader.readline():
                    sys.stderr.buffer.write(line)
                    sys.stderr.buffer.flush()
                    tail.append(line.decode("utf-8", "replace").rstrip())
                code = await exited
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            raise BootFailed(
                f"--build {self.command!r} did not finish within {self.timeout:g} s (--boot-timeout)",
                "\n".join(tail),
            ) from None
        finally:
            transport.close()
        if code != 0:
            raise BootFailed(f"--build {self.command!r} exited with status {code}", "\n".join(tail))

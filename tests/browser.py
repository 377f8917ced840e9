"""A small headless-Chromium driver for the tests: the DevTools protocol over one WebSocket per page
(the ``websockets`` package, which uvicorn[standard] brings), and a threaded uvicorn server for the
pages it visits. Every wait has a deadline; the browser's process group is killed at the end::

    with serve(app) as url, Browser() as browser:
        page = browser.new_page()
        page.navigate(url)
        page.wait_for("document.title === 'hello'")
        assert len(page.navigations()) == 1

Chromium is the Debian package ``chromium`` (``.ci/run`` installs it). Without it, :class:`Browser`
raises :class:`BrowserError` saying how to install it: the tests that need it fail, never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any

import uvicorn
from websockets.sync.client import connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--remote-debugging-port=0",
]
_LISTENING = re.compile(r"DevTools listening on (ws://[^\s]+)")


class BrowserError(AssertionError):
    """Chromium is missing, did not start, or did not answer in time."""


def find_chromium() -> str:
    """The Chromium executable: /usr/bin/chromium, or ``chromium`` on PATH."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrowserError(
        "headless Chromium is needed for the browser tests and was not found (/usr/bin/chromium, or chromium "
        "on PATH); install it: apt-get install chromium (Debian's package; .ci/run installs it)"
    )


class Page:
    """One tab, driven over its own DevTools WebSocket. Events are kept in ``events``, in order."""

    def __init__(self, ws_url: str, timeout: float = 10.0) -> None:
        self._stack = ExitStack()  # websockets wants connect() used as a context manager
        self.ws = self._stack.enter_context(connect(ws_url, max_size=None, open_timeout=timeout, compression=None))
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")  # console messages and exceptions, to show when a test fails

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """One message, or None at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            message: dict[str, Any] = json.loads(self.ws.recv(timeout=left))
        except TimeoutError:
            return None
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Send a DevTools command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        ident = self._next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message is None:
                raise BrowserError(f"no answer to {method} within {timeout} s")
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(deadline)

    def wait_event(
        self, method: str, since: int = 0, timeout: float = 10.0, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The first event ``method`` (that ``match`` accepts) from index ``since`` of ``events`` on."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event["method"] == method and (match is None or match(event)):
                    return event
            since = len(self.events)
            if self._read(deadline) is None:
                raise BrowserError(f"no {method} within {timeout} s; console:\n{self.console()}")

    def navigate(self, url: str, timeout: float = 10.0) -> None:
        """Go to ``url`` and wait for its load event."""
        mark = len(self.events)
        result = self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", since=mark, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", params, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluate ``expression`` until it is truthy; while the page navigates, errors count as not yet."""
        deadline = time.monotonic() + timeout
        last = "never evaluated"
        while True:
            try:
                value = self.evaluate(expression, timeout=max(0.5, deadline - time.monotonic()))
                if value:
                    return value
                last = repr(value)
            except BrowserError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise BrowserError(f"{expression} is not true within {timeout} s ({last}); console:\n{self.console()}")
            self.pump(0.05)  # the poll interval; events read meanwhile are kept

    def navigations(self) -> list[str]:
        """The URLs of the main frame's navigations so far (a reload is one)."""
        return [
            e["params"]["frame"]["url"]
            for e in self.events
            if e["method"] == "Page.frameNavigated" and not e["params"]["frame"].get("parentId")
        ]

    def loads(self) -> int:
        """How many load events the page has fired."""
        return sum(1 for e in self.events if e["method"] == "Page.loadEventFired")

    def console(self) -> str:
        """What the page wrote to its console, and the exceptions it threw."""
        lines = []
        for e in self.events:
            if e["method"] == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
                lines.append(f"{e['params']['type']}: {args}")
            elif e["method"] == "Runtime.exceptionThrown":
                lines.append(f"exception: {e['params']['exceptionDetails'].get('text')}")
        return "\n".join(lines)

    def close(self) -> None:
        self._stack.close()


class Browser:
    """A headless Chromium in its own process group and a throwaway profile."""

    def __init__(self, timeout: float = 30.0) -> None:
        executable = find_chromium()
        self.profile = tempfile.mkdtemp(prefix="lsbrowser-")
        self.lines: list[str] = []
        self.pages: list[Page] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        # Read stderr for the browser's whole life: a full pipe would block it.
        self._pump = threading.Thread(target=self._read_stderr, daemon=True)
        self._pump.start()
        try:
            self.port = self._devtools_port(timeout)
        except BaseException:
            self.close()
            raise

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<<EOF>>")
            self._cond.notify_all()

    def _devtools_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if m := _LISTENING.search(line):
                        port = m.group(1).split("/")[2].rpartition(":")[2]
                        return int(port)
                if "<<EOF>>" in self.lines:
                    raise BrowserError(f"chromium exited before listening for DevTools:\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"chromium did not listen for DevTools within {timeout} s:\n{self.output()}")
                self._cond.wait(left)

    def output(self) -> str:
        """The end of chromium's stderr."""
        return "\n".join(self.lines[-40:])

    def new_page(self, timeout: float = 10.0) -> Page:
        """A new tab at about:blank."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            target = json.load(answer)
        page = Page(target["webSocketDebuggerUrl"], timeout)
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            try:
                page.close()
            except Exception:  # noqa: BLE001 - the browser is killed next anyway
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._pump.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


@contextmanager
def serve(app: Any, timeout: float = 10.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread, on a socket bound to 127.0.0.1 port 0 (kept
    bound: no free-port race); yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", loop="asyncio", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise BrowserError(f"the test server did not start within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

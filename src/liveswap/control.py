"""The control socket: ``liveswap reload | stop | status`` talk to a running instance through it.

A unix stream socket ``<runtime dir>/<name>.sock``, mode 0600, in a 0700 directory
(``$XDG_RUNTIME_DIR/liveswap``, else ``<tmp>/liveswap-<uid>``). Peers with another uid are refused
(SO_PEERCRED). One request per connection: a JSON object on one line, ``{"cmd": "reload"}``; the
answer is one JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "hint": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._os import peer_credentials
from .errors import ControlError, NoInstanceError

__all__ = ["COMMANDS", "ControlServer", "Exchange", "exchange", "request", "runtime_dir", "socket_path"]

COMMANDS = ("reload", "stop", "status")
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

log = logging.getLogger("liveswap.control")


def runtime_dir(create: bool = True) -> Path:
    """Our per-user directory, checked to be ours and private."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        base = Path(xdg) / "liveswap"
    else:
        base = Path(tempfile.gettempdir()) / f"liveswap-{os.getuid()}"
    if create:
        try:
            base.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ControlError(
                f"cannot create the runtime directory {base}: {exc.strerror}",
                hint="set XDG_RUNTIME_DIR to a writable directory",
            ) from None
    if base.exists():
        st = base.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ControlError(
                f"{base} is not a private directory owned by uid {os.getuid()}",
                hint="remove it (it may have been planted by another user) or set XDG_RUNTIME_DIR",
            )
    return base


def worker_debug_dir(name: str) -> Path:
    """Where the workers of instance ``name`` put their private debug sockets (``<pid>.sock``); the
    supervisor's debug port proxies to them. One definition for both sides."""
    return runtime_dir() / f"{name}.debug"


def socket_path(name: str) -> Path:
    return runtime_dir() / f"{name}.sock"


class ControlServer:
    """Serves control requests; ``handler`` gets the parsed request and returns the reply."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.path = socket_path(name)
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self._serving: set[asyncio.Task[Any]] = set()  # requests being answered

    async def start(self) -> None:
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # left by an instance that is gone
            else:
                raise ControlError(
                    f"another liveswap instance named {self.path.stem!r} is running (control socket {self.path})",
                    hint="stop it (liveswap stop --name ...), or give this one another --name",
                )
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if peer_credentials(sock).uid != os.getuid():
                reply: dict[str, Any] = {"ok": False, "error": "permission denied: peer has another uid"}
            else:
                reply = await self._answer(reader)
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._serving.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5.0)
        except (ValueError, asyncio.LimitOverrunError):
            return _malformed(f"longer than {MAX_REQUEST} bytes")
        except TimeoutError:
            return _malformed("no complete line within 5 s")
        try:
            req = json.loads(line)
        except RecursionError:  # e.g. 60,000 nested brackets: the decoder gives up, and so do we
            return _malformed("nested too deeply")
        except (ValueError, UnicodeDecodeError):
            return _malformed("not JSON")
        if not isinstance(req, dict):
            return _malformed(f"expected a JSON object, got {_json_type(req)}")
        cmd = req.get("cmd")
        if not isinstance(cmd, str) or cmd not in COMMANDS:
            # Never echo the value itself: it can be long, or nested deep enough to break repr().
            shown = repr(cmd[:40]) if isinstance(cmd, str) else f"({_json_type(cmd)})"
            return {"ok": False, "error": f"unknown command {shown}", "hint": f"commands: {', '.join(COMMANDS)}"}
        try:
            return await self.handler(req)
        except Exception:
            # A bug on our side: log it with its traceback, and still answer the caller.
            log.exception("internal error answering the control command %r", cmd)
            return {"ok": False, "error": f"internal error answering {cmd!r}; the instance's log has the traceback"}

    async def close(self, timeout: float = 2.0) -> None:
        """Stop listening; requests being answered (a reload's outcome at a stop) get ``timeout`` to finish."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=timeout)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _malformed(what: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": f"malformed request: {what}",
        "hint": 'send one JSON object on one line, e.g. {"cmd": "status"}',
    }


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def find_instance(name: str | None) -> Path:
    """The control socket of ``name``, or of the only running instance when no name is given."""
    if name:
        path = socket_path(name)
        if not path.exists():
            raise NoInstanceError(f"no liveswap instance named {name!r} is running (no {path})", hint=_running_hint())
        return path
    running = _running()
    if not running:
        raise NoInstanceError("no liveswap instance is running", hint="start one with `liveswap run APP`")
    if len(running) > 1:
        names = ", ".join(p.stem for p in running)
        raise ControlError(f"several liveswap instances are running: {names}", hint="choose one with --name")
    return running[0]


def _running() -> list[Path]:
    return sorted(runtime_dir().glob("*.sock"))


def _running_hint() -> str:
    names = [p.stem for p in _running()]
    return f"running instances: {', '.join(names)}" if names else "start one with `liveswap run APP`"


@dataclass(frozen=True)
class Exchange:
    """One request's reply, with who answered it."""

    reply: dict[str, Any]
    path: Path  # the instance's control socket
    peer_pid: int  # the instance's pid as seen from here (SO_PEERCRED); 0 if it is in another pid namespace


def request(cmd: str, name: str | None = None, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
    """Send one command to a running instance and return its reply."""
    return exchange(cmd, name, timeout, **args).reply


def exchange(cmd: str, name: str | None = None, timeout: float = 120.0, **args: Any) -> Exchange:
    """Like :func:`request`, and also say which process answered (``liveswap stop`` waits for it to exit)."""
    path = find_instance(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NoInstanceError(
                f"the instance {path.stem!r} is not answering (stale socket {path})",
                hint="it has exited; start it again with `liveswap run`",
            ) from None
        # The credentials of the process that listens: the supervisor, with its pid in our namespace.
        peer_pid = peer_credentials(sock).pid
        sock.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise ControlError(f"no answer from {path.stem!r} within {timeout:g} s") from None
    finally:
        sock.close()
    if not data:
        raise ControlError(f"the instance {path.stem!r} closed the connection without answering")
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"the instance {path.stem!r} answered something that is not a JSON object: {data[:80]!r}")
    return Exchange(reply, path, peer_pid)

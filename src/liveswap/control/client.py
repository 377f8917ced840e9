"""The control socket's client side: ``liveswap reload | stop | status`` find an instance and ask it."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._os import peer_credentials
from ..errors import ControlError, NoInstanceError
from .paths import runtime_dir, socket_path

__all__ = ["Exchange", "exchange", "find_instance", "request"]


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
        raise ControlError(
            f"several liveswap instances are running: {names}",
            hint=f"choose one with --name (--name {running[0].stem}), or give the project's under [tool.liveswap] "
            "in its pyproject.toml; `liveswap status` lists them",
        )
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

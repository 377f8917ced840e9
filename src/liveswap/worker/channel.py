"""The channel between the supervisor and one Python worker: typed messages, one JSON object a line.

Both ends use this module. It is a socket pair made for each worker; it carries, besides these
lines, what ``faulthandler`` writes when the worker dies of a fatal signal (its threads' stacks),
which the supervisor keeps as the worker's last words.

    supervisor -> worker   Go()                      start accepting on the public sockets
                           Drain(final, next_generation)
                                                     stop accepting (final: accept what is queued
                                                     first, the service is stopping) and finish;
                                                     next_generation: the one now live (dev mode
                                                     tells open pages to reload onto it)
    worker -> supervisor   BootError(error, detail, failure)
                                                     the app could not load or start (failure: the
                                                     dev error page's JSON, in dev mode)
                           Live()                    accepting now
                           Draining()                its listeners are closed
                           Beat()                    its event loop turns (every beat_interval)
                           Imported(paths)           dev mode: the files of the modules it imported
                           Recycle(served, limit)    it served its --max-requests: replace it (sent
                                                     again every few seconds until it is told to drain)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Beat",
    "BootError",
    "Command",
    "Drain",
    "Draining",
    "Event",
    "Go",
    "Imported",
    "Live",
    "Recycle",
    "beat_interval",
    "decode_command",
    "decode_event",
    "encode",
    "outside_modules",
]


def beat_interval(worker_timeout: float) -> float:
    """How often a worker proves that its event loop turns: often enough that a late beat or two
    never looks like a hang, and ``status`` stays fresh."""
    return min(0.5, worker_timeout / 8)


@dataclass(frozen=True)
class Go:
    pass


@dataclass(frozen=True)
class Drain:
    final: bool = False
    next_generation: int = 0


@dataclass(frozen=True)
class BootError:
    error: str
    detail: str = ""
    failure: str = ""


@dataclass(frozen=True)
class Live:
    pass


@dataclass(frozen=True)
class Draining:
    pass


@dataclass(frozen=True)
class Beat:
    pass


@dataclass(frozen=True)
class Imported:
    paths: list[str]  # dev: the files of its modules, to watch
    modules: list[str] = field(default_factory=list)  # the top-level modules from outside the project


@dataclass(frozen=True)
class Recycle:
    served: int  # requests served so far
    limit: int  # its --max-requests plus its share of the jitter


def outside_modules(project: str, known: Collection[str] = ()) -> list[str]:
    """The top-level modules imported so far whose files are not under ``project``: what the
    template may learn to preload. ``known``: names to leave out (a forked worker's are those of the
    template, which has them already; skipping them skips a realpath each, ~3 ms for FastAPI)."""
    root = os.path.join(os.path.realpath(project), "")
    names = []
    for name, module in list(sys.modules.items()):
        if "." in name or name in _NEVER or name.startswith("liveswap") or name in known:
            continue
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.realpath(file).startswith(root) and not _installed(file):
            continue  # the project's own code: never preloaded
        names.append(name)
    return sorted(names)


_NEVER = {"__main__", "__mp_main__", "site", "sitecustomize", "usercustomize"}


def _installed(file: str) -> bool:
    return any(part in ("site-packages", "dist-packages", ".venv", "venv") for part in file.split(os.sep))


Command = Go | Drain
Event = BootError | Live | Draining | Beat | Imported | Recycle

_COMMANDS: dict[str, type[Command]] = {"go": Go, "drain": Drain}
_EVENTS: dict[str, type[Event]] = {
    "boot_error": BootError,
    "live": Live,
    "draining": Draining,
    "beat": Beat,
    "imported": Imported,
    "recycle": Recycle,
}
_NAMES: dict[type[Any], str] = {cls: name for name, cls in (*_COMMANDS.items(), *_EVENTS.items())}


def encode(message: Command | Event) -> bytes:
    """One line: ``{"type": "drain", "final": true}``."""
    return (json.dumps({"type": _NAMES[type(message)], **asdict(message)}) + "\n").encode()


def _decode(line: bytes, table: dict[str, Any]) -> Any:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    cls = table.get(str(data.pop("type", "")))
    if cls is None:
        return None
    try:
        return cls(**data)
    except TypeError:  # fields of another version: ignore the line rather than fail the channel
        return None


def decode_command(line: bytes) -> Command | None:
    """A supervisor's command, or None for a line that is not one."""
    message: Command | None = _decode(line, _COMMANDS)
    return message


def decode_event(line: bytes) -> Event | None:
    """A worker's event, or None for a line that is not one (e.g. a stack dump's)."""
    message: Event | None = _decode(line, _EVENTS)
    return message

"""Vetting modules for the template's learned preload, in a throwaway process.

The template forks workers, so it must hold nothing that does not survive a fork: no thread (a
forked child has only the forking thread; a lock another thread held stays locked forever), no open
socket (shared with every worker), no event loop. A module that starts one of those when imported is
kept out, with the reason::

    python -m liveswap.template.vet NAME...        prints {"accepted": [...], "rejected": {NAME: why}}

Modules are imported one by one, each checked against what was there before it. A module imported
as a dependency of an earlier one is already there when its own turn comes, so the accepted set is
imported once more, all together, in a second fresh process (``--verify``): if that is not clean
either, nothing is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
import threading

__all__ = ["main"]


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _has_loop() -> bool:
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)
    return getattr(local, "_loop", None) is not None


def _dirty(threads: set[threading.Thread], sockets: int) -> str:
    new = [t for t in threading.enumerate() if t not in threads]
    if new:
        return f"starts a thread at import ({new[0].name})"
    if _sockets() > sockets:
        return "leaves a socket open at import"
    if _has_loop():
        return "creates an event loop at import"
    return ""


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError):  # in the background: a worker booting new code comes first
        os.nice(10)
    verify = argv[:1] == ["--verify"]
    names = argv[1:] if verify else argv
    threads, sockets = set(threading.enumerate()), _sockets()
    accepted: list[str] = []
    rejected: dict[str, str] = {}
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - any failure keeps the module out
            rejected[name] = f"cannot be imported alone ({type(exc).__name__}: {exc})"
            continue
        why = "" if verify else _dirty(threads, sockets)
        if why:
            rejected[name] = why
            threads, sockets = set(threading.enumerate()), _sockets()
        else:
            accepted.append(name)
    if verify:
        why = _dirty(threads, sockets)
        if why:
            rejected = {name: f"together they are not clean: one {why}" for name in accepted}
            accepted = []
    sys.stdout.write(json.dumps({"accepted": accepted, "rejected": rejected}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a module's atexit or thread must not hang the vetting


if __name__ == "__main__":
    main(sys.argv[1:])

"""The control socket: ``liveswap reload | stop | status`` talk to a running instance through it.

A unix stream socket ``<runtime dir>/<name>.sock``, mode 0600, in a 0700 directory
(``$XDG_RUNTIME_DIR/liveswap``, else ``<tmp>/liveswap-<uid>``). Peers with another uid are refused
(SO_PEERCRED). One request per connection: a JSON object on one line, ``{"cmd": "reload"}``; the
answer is one JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "hint": "..."}``.

Modules: ``paths`` (the runtime directory and the sockets in it), ``server`` (``ControlServer``, in
the supervisor), ``client`` (``request``, ``exchange``: the CLI's side).
"""

from __future__ import annotations

from .client import Exchange, exchange, find_instance, request
from .paths import runtime_dir, socket_path, worker_debug_dir
from .server import COMMANDS, ControlServer

__all__ = [
    "COMMANDS",
    "ControlServer",
    "Exchange",
    "exchange",
    "find_instance",
    "request",
    "runtime_dir",
    "socket_path",
    "worker_debug_dir",
]

"""The options of the logs and of running behind a proxy (docs/logging.md), as keyword arguments
of ``Option`` (``options.py`` declares them in its table, in this order)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ._parse import boolean, choice, forwarded_ips, log_config_file, root_path

__all__ = ["HTTP_OPTIONS", "refuse_for_command"]

_SWITCH_ON = {"parse": boolean, "flag_is_switch": True, "negatable": True}  # --x/--no-x, on by default

HTTP_OPTIONS: tuple[dict[str, Any], ...] = (
    dict(
        name="access_log",
        default=False,
        help="Log every request: client, method, path, status and duration (never the supervisor's health checks).",
        parse=boolean,
        flag_is_switch=True,
    ),
    dict(
        name="log_format",
        default="text",
        help="Log lines as text (one line per event, UTC timestamps) or json (one JSON object per line: time, "
        "level, role, pid, generation, message and the event's own fields).",
        parse=choice("text", "json"),
    ),
    dict(
        name="log_config",
        default="",
        help="A logging config file applied in the supervisor, the template and every worker after liveswap's own "
        "setup, as uvicorn reads it: .json or .yaml (logging.config.dictConfig), else .ini (fileConfig).",
        parse=log_config_file,
    ),
    dict(
        name="proxy_headers",
        default=True,
        help="Take the client address and scheme from X-Forwarded-For and X-Forwarded-Proto, when the peer is in "
        "--forwarded-allow-ips (uvicorn's --proxy-headers).",
        **_SWITCH_ON,
    ),
    dict(
        name="forwarded_allow_ips",
        default="",
        help="Comma-separated IP addresses or networks of the proxies whose X-Forwarded-* headers are trusted, or * "
        "(any peer). Default: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1 (uvicorn's).",
        parse=forwarded_ips,
    ),
    dict(
        name="root_path",
        default="",
        help="The ASGI root_path: the prefix a proxy mounts the app under (/api), for apps that build URLs with it.",
        parse=root_path,
    ),
    dict(
        name="server_header",
        default=True,
        help="Send a Server: uvicorn header (an app's own Server header replaces it).",
        **_SWITCH_ON,
    ),
    dict(
        name="date_header",
        default=True,
        help="Send a Date header (an app's own Date header replaces it).",
        **_SWITCH_ON,
    ),
)


def refuse_for_command(values: Mapping[str, Any]) -> None:
    """Command mode: these options act in liveswap's Python workers only; a command's server has its
    own (given to it, not to liveswap), so one given here would silently do nothing."""
    for name in ("root_path", "forwarded_allow_ips", "proxy_headers", "server_header", "date_header"):
        value = values[name]
        if value in ("", True):  # the defaults
            continue
        flag = "--" + name.replace("_", "-") if value is not False else "--no-" + name.replace("_", "-")
        raise ConfigError(
            f"{flag} is for Python apps: a command's server does not see it",
            hint=f"give your server its own setting (uvicorn and hypercorn take {flag} too), after the --",
        )

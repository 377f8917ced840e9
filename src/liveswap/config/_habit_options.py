"""Habits of the ecosystem (docs/configuration.md): --env-file, gunicorn's --max-requests and
--max-requests-jitter, and --debug-allow-public, as keyword arguments of ``Option``
(``options.py`` declares them in its table, in this order)."""

from __future__ import annotations

from typing import Any

from ._parse import boolean, integer
from .envfile import env_file_path

__all__ = ["HABIT_OPTIONS"]

HABIT_OPTIONS: tuple[dict[str, Any], ...] = (
    dict(
        name="env_file",
        default="",
        help="A dotenv file (KEY=VALUE lines; # comments, quotes and an export prefix allowed) whose variables are "
        "put in the environment of the workers (or the command), re-read at every reload; a variable already in "
        "liveswap's own environment wins.",
        parse=env_file_path,
    ),
    dict(
        name="max_requests",
        default=0,
        help="Recycle a worker once it has served this many requests (0: never), like gunicorn's --max-requests: "
        "its replacement boots and passes its health check first, then it drains (a slow leak never grows for "
        "good).",
        parse=integer(0, why="0 means never"),
        commands=("run",),
    ),
    dict(
        name="max_requests_jitter",
        default=0,
        help="With --max-requests N: each worker's limit is N plus a random 0 to this, so workers started together "
        "are not all recycled at once.",
        parse=integer(0, why="0 means no jitter"),
        commands=("run",),
    ),
    dict(
        name="debug_allow_public",
        default=False,
        help="Allow --debug-bind on a non-loopback address (metrics scraped from another host); needs --debug-token.",
        parse=boolean,
        flag_is_switch=True,
    ),
)

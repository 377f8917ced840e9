"""Every option of liveswap, declared once.

One declaration (:class:`Option`) gives the CLI flag, the ``LIVESWAP_*`` environment variable, the
``[tool.liveswap]`` key in pyproject.toml, the parsed value in :class:`Settings` and the docs table
(``python -m liveswap.config`` prints it). Precedence: CLI flag > environment > pyproject > default.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["OPTIONS", "Option", "Settings", "load_settings", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Parse ``"30"``, ``"30s"``, ``"500ms"``, ``"2m"`` into seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a duration; expected a number of seconds or e.g. 500ms, 30s, 2m")
        value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    if value < 0:
        raise ValueError(f"{text!r} is negative; durations must be >= 0")
    return value


def _positive_int(text: str | int) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be a whole number >= 1")
    return value


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return text

    return parse


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class Option:
    """One setting: its name, type, default and help, from which the flag/env/pyproject key derive."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str
    multiple: bool = False
    flag_is_switch: bool = False
    commands: tuple[str, ...] = ("run", "dev")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "LIVESWAP_" + self.name.upper()

    @property
    def key(self) -> str:
        return self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "bind",
        ["127.0.0.1:8000"],
        "Where to listen: HOST:PORT, [IPV6]:PORT, unix:/path.sock or fd://N. "
        "Repeatable. Ignored when started with LISTEN_FDS (systemd socket activation).",
        multiple=True,
    ),
    Option("workers", 1, "Number of worker processes per generation.", _positive_int),
    Option(
        "factory",
        False,
        "Treat APP as a factory: call it with no arguments to get the app.",
        _bool,
        flag_is_switch=True,
    ),
    Option("interface", "auto", "Application interface: auto (detect), asgi or wsgi.", _choice("auto", "asgi", "wsgi")),
    Option("app_dir", ".", "Directory put first on sys.path when importing APP."),
    Option("name", "", "Instance name for the control socket (default: derived from APP)."),
    Option(
        "health_path",
        "/",
        "Path of the health check each new worker must pass (answer below 500) before it takes public traffic.",
        _path,
    ),
    Option(
        "boot_timeout",
        30.0,
        "How long a new worker may take to import, start and pass its health check.",
        parse_duration,
    ),
    Option(
        "drain_timeout",
        30.0,
        "How long a draining worker may take to finish in-flight requests before it is killed (hammer time).",
        parse_duration,
    ),
    Option(
        "idle_grace",
        1.0,
        "While draining, how long an idle keep-alive connection is kept open so a request "
        "already on its way is answered (with Connection: close) rather than reset.",
        parse_duration,
    ),
    Option("keepalive_timeout", 5.0, "Close keep-alive connections idle for this long.", parse_duration),
    Option(
        "header_timeout",
        10.0,
        "Disconnect a client that has not sent a complete request line and headers "
        "within this long (slow-header protection; 0 disables).",
        parse_duration,
    ),
    Option("max_header_bytes", 65536, "Largest request line plus headers accepted; larger gets 431.", _positive_int),
    Option(
        "max_connections",
        1000,
        "Most concurrent connections plus requests per worker; beyond it requests get 503 (0: no limit).",
        lambda v: int(v),
    ),
    Option("backoff_max", 30.0, "Longest wait between restarts of a worker that keeps crashing.", parse_duration),
    Option(
        "preload",
        [],
        "Module the template process imports before forking workers (a library, never your app). Repeatable.",
        multiple=True,
    ),
    Option(
        "log_level", "info", "Log level: debug, info, warning, error.", _choice("debug", "info", "warning", "error")
    ),
    Option("access_log", False, "Log every request.", _bool, flag_is_switch=True),
    Option(
        "debug_bind",
        "",
        "Serve the debug endpoints (stacks, profile, heap, metrics) on this loopback "
        "address, e.g. 127.0.0.1:6060. Off by default.",
        commands=("run",),
    ),
    Option(
        "debug_token",
        "",
        "Require this token (?token= or Authorization: Bearer) on the debug server.",
        commands=("run",),
    ),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass
class Settings:
    """The resolved options of one liveswap instance."""

    app: str
    # Types only: the defaults live in OPTIONS above (Settings.defaults() fills them in).
    bind: list[str]
    workers: int
    factory: bool
    interface: str
    app_dir: str
    name: str
    health_path: str
    boot_timeout: float
    drain_timeout: float
    idle_grace: float
    keepalive_timeout: float
    header_timeout: float
    max_header_bytes: int
    max_connections: int
    backoff_max: float
    preload: list[str]
    log_level: str
    access_log: bool
    debug_bind: str
    debug_token: str

    @classmethod
    def defaults(cls, app: str, **overrides: Any) -> Settings:
        """Settings with every option at its declared default, then ``overrides`` applied."""
        values = {o.name: copy.deepcopy(o.default) for o in OPTIONS}
        unknown = set(overrides) - set(values)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(app=app, **values)

    def instance_name(self) -> str:
        if self.name:
            return self.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.app).strip("-") or "app"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_pyproject(start: Path) -> Mapping[str, Any]:
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                with candidate.open("rb") as f:
                    data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{candidate} is not valid TOML: {exc}") from exc
            section = data.get("tool", {}).get("liveswap", {})
            if not isinstance(section, dict):
                raise ConfigError(f"[tool.liveswap] in {candidate} must be a table")
            return section
    return {}


def _convert(option: Option, raw: Any, origin: str) -> Any:
    try:
        if option.multiple:
            items: Sequence[Any] = raw if isinstance(raw, list) else [x for x in str(raw).split(",") if x.strip()]
            return [option.parse(x.strip() if isinstance(x, str) else x) for x in items]
        return option.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{origin}: {exc}", hint=f"{option.flag}: {option.help}") from None


def load_settings(
    app: str, cli: Mapping[str, Any], environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Settings:
    """Resolve every option: CLI values (None or empty = not given) > LIVESWAP_* > pyproject > default."""
    environ = os.environ if environ is None else environ
    project = _read_pyproject(cwd or Path.cwd())
    unknown = sorted(set(project) - {o.key for o in OPTIONS} - {"app"})
    if unknown:
        known = ", ".join(o.key for o in OPTIONS)
        raise ConfigError(f"[tool.liveswap] has unknown key(s): {', '.join(unknown)}", hint=f"known keys: {known}")
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = cli.get(option.name)
        if given not in (None, (), []) and not (option.flag_is_switch and given is False):
            values[option.name] = _convert(option, list(given) if option.multiple else given, option.flag)
        elif option.env in environ:
            values[option.name] = _convert(option, environ[option.env], option.env)
        elif option.key in project:
            values[option.name] = _convert(option, project[option.key], f"[tool.liveswap] {option.key}")
        else:
            values[option.name] = copy.deepcopy(option.default)
    if not app:
        app = str(project.get("app", ""))
    if not app:
        raise ConfigError(
            "no APP given",
            hint="pass the app as MODULE:ATTRIBUTE, e.g. `liveswap run myapp:app`, "
            'or set app = "myapp:app" under [tool.liveswap] in pyproject.toml',
        )
    return Settings(app=app, **values)


def option(name: str) -> Option:
    return _BY_NAME[name]


def docs_table() -> str:
    """The options table for docs/configuration.md."""
    rows = ["| flag | env | pyproject key | default | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        rows.append(f"| `{o.flag}` | `{o.env}` | `{o.key}` | `{o.default!r}` | {o.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(docs_table())

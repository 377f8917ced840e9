"""Every option of liveswap, declared once.

One declaration (:class:`Option`) gives the CLI flag, the ``LIVESWAP_*`` environment variable, the
``[tool.liveswap]`` key in pyproject.toml, the parsed value in :class:`Settings` and the docs table
(``python -m liveswap.config`` prints it). Precedence: CLI flag > environment > pyproject > default.

Each option's ``parse`` refuses values that make no sense (a zero boot timeout, a negative limit, a
month-long duration) with a message that says what is expected; it raises ``ValueError``, which
:func:`load_settings` turns into a :class:`ConfigError` naming where the value came from.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BindError, ConfigError
from .sockets import parse_bind

__all__ = ["MAX_DURATION", "OPTIONS", "Option", "Settings", "load_settings", "parse_duration"]

_DURATION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
MAX_DURATION = 24 * 3600.0
"""The longest duration any option takes: longer is a unit mistake (``30000`` meant as ms), not a plan."""
MAX_WORKERS = 1024
MAX_NAME = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_DURATION_HINT = "durations are a number of seconds or take a unit: 500ms, 30s, 2m, 1h"


class _Invalid(ValueError):
    """A value refused by a parse function, with a hint better than the option's help text."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def parse_duration(text: str | float | int) -> float:
    """Parse ``"30"``, ``"30s"``, ``"500ms"``, ``"2m"``, ``"1h"`` (or a number of seconds) into seconds.

    Refuses negative, non-finite and longer than :data:`MAX_DURATION` (24 h) values with a
    ``ValueError`` saying what is expected::

        >>> parse_duration("500ms"), parse_duration(2), parse_duration("1.5m")
        (0.5, 2.0, 90.0)
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise _Invalid(f"{text!r} is not a duration", hint=_DURATION_HINT)
    if isinstance(text, str):
        m = _DURATION.match(text)
        if m is None:
            raise _Invalid(f"{text!r} is not a duration", hint=_DURATION_HINT)
        value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    else:
        value = float(text)
    if not math.isfinite(value):
        raise _Invalid(f"{text!r} is not a finite duration", hint=_DURATION_HINT)
    if value < 0:
        raise _Invalid(f"{text!r} is negative; durations must be >= 0", hint=_DURATION_HINT)
    if value > MAX_DURATION:
        raise _Invalid(
            f"{text!r} is longer than 24 h",
            hint=f"durations are at most {MAX_DURATION:g} s; a bare number is seconds (use 500ms for milliseconds)",
        )
    return value


def _duration(minimum: float = 0.0, *, above: bool = False, why: str = "") -> Callable[[Any], float]:
    """A duration parser with a lower bound: ``>= minimum``, or ``> minimum`` when ``above``."""

    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum or (above and seconds == minimum):
            bound = f"more than {minimum:g} s" if above else f"at least {minimum:g} s"
            raise _Invalid(f"{value!r} is too short: it must be {bound}", hint=why or None)
        return seconds

    return parse


def _int(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[Any], int]:
    """A whole-number parser with bounds (``True`` and ``2.5`` are refused, not truncated)."""

    def parse(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Invalid(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except ValueError:
            raise _Invalid(f"{value!r} is not a whole number") from None
        if number < minimum or (maximum is not None and number > maximum):
            expected = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise _Invalid(f"{value!r} is out of range: expected a whole number {expected}", hint=why or None)
        return number

    return parse


def _bind(value: Any) -> str:
    text = str(value)
    try:
        parse_bind(text)
    except BindError as exc:
        raise _Invalid(str(exc).removeprefix("--bind "), hint=exc.hint) from None
    return text


def _directory(value: Any) -> str:
    text = str(value)
    if not text:
        raise _Invalid("'' is not a directory", hint="give a directory, e.g. . or src")
    if not os.path.isdir(text):
        what = "is not a directory" if os.path.exists(text) else "does not exist"
        raise _Invalid(
            f"{text!r} {what}", hint=f"give the directory that contains your app's module (cwd: {os.getcwd()})"
        )
    return text


def _instance_name(value: Any) -> str:
    text = str(value)
    if text and (len(text) > MAX_NAME or not _NAME.match(text)):
        raise _Invalid(
            f"{text!r} is not a valid instance name",
            hint=f"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_NAME} "
            "characters (it names the control socket <runtime dir>/<name>.sock)",
        )
    return text


def _module(value: Any) -> str:
    text = str(value)
    if not _MODULE.match(text):
        raise _Invalid(
            f"{text!r} is not a module name", hint="give an importable module name, e.g. fastapi or sqlalchemy.orm"
        )
    return text


def _path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise _Invalid(f"{text!r} must start with '/'", hint="e.g. / or /healthz")
    if not all(33 <= ord(c) < 127 for c in text):
        raise _Invalid(
            f"{text!r} has spaces or characters that cannot go in a request line",
            hint="percent-encode them, e.g. /health%20check",
        )
    return text


def _host_header(value: Any) -> str:
    text = str(value)
    if not all(33 <= ord(c) < 127 for c in text):
        raise _Invalid(
            f"{text!r} cannot be a Host header: it has spaces or control characters",
            hint="give a host name, optionally with a port, e.g. example.com or localhost:8000",
        )
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise _Invalid(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise _Invalid(f"{text!r} is not a boolean; use true or false")


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
        _bind,
        multiple=True,
    ),
    Option(
        "workers",
        1,
        f"Number of worker processes per generation (1 to {MAX_WORKERS}).",
        _int(
            1,
            MAX_WORKERS,
            why="each worker is a process, and each has a spare forked ahead: a few per CPU core is plenty",
        ),
    ),
    Option(
        "factory",
        False,
        "Treat APP as a factory: call it with no arguments to get the app.",
        _bool,
        flag_is_switch=True,
    ),
    Option("interface", "auto", "Application interface: auto (detect), asgi or wsgi.", _choice("auto", "asgi", "wsgi")),
    Option("app_dir", ".", "Directory put first on sys.path when importing APP (must exist).", _directory),
    Option(
        "name",
        "",
        f"Instance name for the control socket (default: derived from APP): letters, digits, '.', '_', '-', "
        f"at most {MAX_NAME} characters.",
        _instance_name,
    ),
    Option(
        "health_path",
        "/",
        "Path of the health check each new worker must pass (answer below 500) before it takes public traffic.",
        _path,
    ),
    Option(
        "health_host",
        "",
        "Host header of the health check (default: the first --bind address; localhost for a wildcard or unix "
        "address). Django answers 400 to a Host not in ALLOWED_HOSTS, which proves nothing: set it to one it allows.",
        _host_header,
    ),
    Option(
        "worker_timeout",
        30.0,
        "A live worker whose event loop has not turned for this long is hung: a replacement boots and passes its "
        "health check, then the hung one's stacks are logged and it is killed (0 disables).",
        parse_duration,
    ),
    Option(
        "boot_timeout",
        30.0,
        "How long a new worker may take to import, start and pass its health check (more than 0).",
        _duration(
            0.0,
            above=True,
            why="a new worker needs time to import the app, start it and answer its health "
            "check: give it seconds, e.g. 30s",
        ),
    ),
    Option(
        "drain_timeout",
        30.0,
        "How long a draining worker may take to finish in-flight requests before it is killed (hammer time; "
        "0: no grace, in-flight requests are cut).",
        _duration(),
    ),
    Option(
        "idle_grace",
        1.0,
        "While draining, how long an idle keep-alive connection is kept open so a request "
        "already on its way is answered (with Connection: close) rather than reset (0: close at once).",
        _duration(),
    ),
    Option(
        "keepalive_timeout",
        5.0,
        "Close keep-alive connections idle for this long (0: close after each response).",
        _duration(),
    ),
    Option(
        "header_timeout",
        10.0,
        "Disconnect a client that has not sent a complete request line and headers "
        "within this long (slow-header protection; 0 disables).",
        _duration(),
    ),
    Option(
        "max_header_bytes",
        65536,
        "Largest request line plus headers accepted; larger gets 431 (1024 to 16777216).",
        _int(
            1024,
            16 * 1024 * 1024,
            why="a request head needs a few hundred bytes; more than 16 MiB per "
            "connection only helps a client exhaust memory",
        ),
    ),
    Option(
        "max_connections",
        1000,
        "Most concurrent connections plus requests per worker; beyond it requests get 503 (0: no limit).",
        _int(0, why="0 means no limit"),
    ),
    Option(
        "backoff_max",
        30.0,
        "Longest wait between restarts of a worker that keeps crashing (at least 0.1 s).",
        _duration(
            0.1, why="restarts back off from 0.1 s, doubling; a smaller cap restarts a crashing worker in a tight loop"
        ),
    ),
    Option(
        "preload",
        [],
        "Module the template process imports before forking workers (a library, never your app). Repeatable.",
        _module,
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
    health_host: str
    worker_timeout: float
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
        # Derived names follow the rules of --name, so the control socket path stays short and plain.
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.app).strip("-.")[:MAX_NAME].rstrip("-.") or "app"

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
        hint = getattr(exc, "hint", None) or f"{option.flag}: {option.help}"
        raise ConfigError(f"{origin}: {exc}", hint=hint) from None


def _check_together(app: str, values: Mapping[str, Any]) -> None:
    """Values that are fine alone but make no sense together."""
    if not values["bind"]:
        raise ConfigError("--bind: no address given", hint="give at least one, e.g. --bind 127.0.0.1:8000")
    seen: set[str] = set()
    for text in values["bind"]:
        if text in seen and not text.endswith(":0"):  # port 0 twice is two ports; anything else fails to bind
            raise ConfigError(f"--bind: {text!r} is given twice", hint="give each address once")
        seen.add(text)
    module = app.partition(":")[0]
    for name in values["preload"]:
        if name == module or name.startswith(module + "."):
            raise ConfigError(
                f"--preload: {name!r} is your app's module",
                hint="the template imports preloaded modules once, so a reload would not see your new code: "
                "preload libraries only (fastapi, sqlalchemy, ...)",
            )


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
    _check_together(app, values)
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

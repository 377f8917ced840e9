"""Resolving the options of one instance: CLI flag > ``LIVESWAP_*`` environment > ``[tool.liveswap]``
in the nearest pyproject.toml > the declared default."""

from __future__ import annotations

import copy
import os
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._http_options import refuse_for_command
from ._parse import MAX_NAME
from .options import OPTIONS, Option

__all__ = ["Settings", "load_settings"]


@dataclass
class Settings:
    """The resolved options of one liveswap instance."""

    app: str
    # Types only: the defaults live in OPTIONS (options.py); Settings.defaults() fills them in.
    bind: list[str]
    workers: int
    factory: bool
    interface: str
    threads: int
    wsgi_adapter: str
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
    log_format: str
    log_config: str
    proxy_headers: bool
    forwarded_allow_ips: str
    root_path: str
    server_header: bool
    date_header: bool
    env_file: str
    max_requests: int
    max_requests_jitter: int
    debug_allow_public: bool
    debug_bind: str
    debug_token: str
    certfile: str
    keyfile: str
    ca_certs: str
    ssl_min_version: str
    watch_certs: bool
    watch: list[str]
    ignore: list[str]
    no_browser_reload: bool
    proxy: bool
    build: str
    upstream: str
    ready_after: float
    stop_signal: str
    takeover: bool
    pid_file: str
    on_reload_start: str
    on_reload_done: str
    on_stop: str
    probe_bind: str
    shutdown_delay: float
    grace_period: float
    # Command mode (`liveswap run -- COMMAND ...`): the command line; APP is then its display name.
    command: list[str] = field(default_factory=list)

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
        source = Path(self.command[0]).name if self.command else self.app
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", source).strip("-.")[:MAX_NAME].rstrip("-.") or "app"

    def connection_limits(self) -> dict[str, Any]:
        """What guards each client connection, as WorkerServer and ProxyServer take it."""
        names = ("keepalive_timeout", "header_timeout", "max_header_bytes", "idle_grace", "max_connections")
        return {**{name: getattr(self, name) for name in names}, "access_log": self.access_log}

    def http_options(self) -> dict[str, Any]:
        """What a Python worker's HTTP server takes from behind-a-proxy options (WorkerServer's names)."""
        names = ("proxy_headers", "forwarded_allow_ips", "root_path", "server_header", "date_header")
        return {name: getattr(self, name) for name in names}

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
    _check_both(values)
    module = app.partition(":")[0]
    for name in values["preload"]:
        if name == module or name.startswith(module + "."):
            raise ConfigError(
                f"--preload: {name!r} is your app's module",
                hint="the template imports preloaded modules once, so a reload would not see your new code: "
                "preload libraries only (fastapi, sqlalchemy, ...)",
            )


def _check_command(values: Mapping[str, Any]) -> None:
    if values["preload"]:
        raise ConfigError("--preload is for Python apps", hint="a command imports what it needs itself")
    refuse_for_command(values)
    if values["max_requests"]:
        raise ConfigError(
            "--max-requests is for Python apps: liveswap cannot count a command's requests",
            hint="use the server's own setting (gunicorn --max-requests), or run a Python app: liveswap run app:app",
        )


def _check_both(values: Mapping[str, Any]) -> None:
    """Checks that hold for apps and commands alike."""
    if values["debug_allow_public"] and not values["debug_token"]:
        raise ConfigError(
            "--debug-allow-public needs --debug-token: the debug endpoints show stacks and heap sites and start "
            "profilers, and a public address lets anyone who can reach it use them",
            hint="set a long random token (--debug-token or LIVESWAP_DEBUG_TOKEN) and give it to the scraper: "
            "Authorization: Bearer <token> (Prometheus: authorization.credentials)",
        )
    if values["max_requests_jitter"] and not values["max_requests"]:
        raise ConfigError(
            "--max-requests-jitter without --max-requests",
            hint="give both: --max-requests 10000 --max-requests-jitter 1000",
        )


def load_settings(
    app: str,
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    command: Sequence[str] = (),
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
        if given not in (None, (), []) and not (option.flag_is_switch and not option.negatable and given is False):
            values[option.name] = _convert(option, list(given) if option.multiple else given, option.flag)
        elif option.env in environ:
            values[option.name] = _convert(option, environ[option.env], option.env)
        elif option.key in project:
            values[option.name] = _convert(option, project[option.key], f"[tool.liveswap] {option.key}")
        else:
            values[option.name] = copy.deepcopy(option.default)
    if command:
        if app:
            raise ConfigError(
                f"both an APP ({app!r}) and a command after -- were given",
                hint="give one: `liveswap run myapp:app` serves a Python app, `liveswap run -- gunicorn myapp:app` "
                "runs a server command",
            )
        _check_command(values)
        _check_both(values)
        return Settings(app=shlex.join(command), command=list(command), **values)
    for flag in ("proxy", "build", "upstream"):
        if values[flag]:
            raise ConfigError(
                f"--{flag} is for command mode", hint="run a server command: liveswap run --proxy -- CMD ..."
            )
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

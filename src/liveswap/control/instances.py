"""Which instance ``liveswap status | reload | stop`` mean when no ``--name`` is given, and every
running instance at a glance.

The name comes, as ``liveswap run`` resolves it, from ``LIVESWAP_NAME``, else ``[tool.liveswap]``
in the nearest pyproject.toml (its ``name``, else the name derived from its ``app``). Without one,
the only running instance is meant; with several running, ``status`` lists them all and the
commands that act refuse to guess (their hint lists the names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LiveswapError, NoInstanceError
from .client import request
from .paths import runtime_dir, socket_path

__all__ = ["default_name", "format_instances", "project_name", "running_names", "several", "statuses"]


def project_name(cwd: Path | None = None) -> tuple[str, str]:
    """The instance name this directory's configuration gives ("" if none), and where it comes from:
    ``LIVESWAP_NAME``, else ``[tool.liveswap]`` name, else the name ``liveswap run`` derives from its app."""
    from ..config.options import option
    from ..config.settings import Settings, _read_pyproject

    try:
        if os.environ.get("LIVESWAP_NAME"):
            return option("name").parse(os.environ["LIVESWAP_NAME"]), "from LIVESWAP_NAME"
        project = _read_pyproject(cwd or Path.cwd())
        if project.get("name"):
            return option("name").parse(project["name"]), "the name in [tool.liveswap] of pyproject.toml"
    except ValueError as exc:
        raise ConfigError(f"the default instance name: {exc}", hint="fix it, or give --name") from None
    if project.get("app"):
        derived = Settings.defaults(str(project["app"])).instance_name()
        return derived, f"derived from app = {project['app']!r} in [tool.liveswap] of pyproject.toml"
    return "", ""


def default_name(cwd: Path | None = None) -> str | None:
    """The instance meant when no --name is given: the project's (which must be running), or None
    for the only running instance."""
    name, origin = project_name(cwd)
    if not name:
        return None
    if not socket_path(name).exists():
        running = running_names()
        raise NoInstanceError(
            f"no liveswap instance named {name!r} is running ({origin})",
            hint=f"running instances: {', '.join(running)}; choose one with --name"
            if running
            else "start it with `liveswap run`",
        )
    return name


def running_names() -> list[str]:
    """The names of the instances whose control socket exists (a crashed one may leave a stale one)."""
    return sorted(p.stem for p in runtime_dir().glob("*.sock"))


def statuses(names: list[str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """Each instance's status reply; one that does not answer is listed with its error."""
    out: list[dict[str, Any]] = []
    for name in names:
        try:
            out.append(request("status", name, timeout=timeout))
        except LiveswapError as exc:
            out.append({"ok": False, "name": name, "error": str(exc)})
    return out


def _live(status: dict[str, Any]) -> tuple[str, str]:
    """The live generation's number and its live workers out of the configured count."""
    live = [g for g in status.get("generations", []) if g["state"] == "live"]
    if not live:
        return "-", f"0/{status.get('workers', '?')}"
    gen = live[-1]
    up = sum(1 for w in gen["workers"] if w["state"] == "live")
    return str(gen["generation"]), f"{up}/{status.get('workers', '?')}"


def _uptime(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def several(as_json: bool) -> str:
    """``liveswap status`` with several instances running: every one's status ("" unless several run)."""
    names = running_names()
    if len(names) < 2:
        return ""
    replies = statuses(names)
    return json.dumps({"instances": replies}, indent=2) if as_json else format_instances(replies)


def format_instances(replies: list[dict[str, Any]]) -> str:
    """One line per instance: name, pid, app, generation, workers, uptime, state."""
    rows = [("NAME", "PID", "APP", "GEN", "WORKERS", "UPTIME", "STATE")]
    for s in replies:
        if not s.get("ok", True) or "pid" not in s:
            rows.append((s["name"], "-", "-", "-", "-", "-", f"not answering: {s.get('error', '?')}"))
            continue
        gen, workers = _live(s)
        rows.append(
            (s["name"], str(s["pid"]), s["app"], gen, workers, _uptime(float(s["uptime"])), s["state"].split(":")[0])
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    lines.append(f"\n{len(replies)} instances; one in detail: liveswap status --name NAME")
    return "\n".join(line.rstrip() for line in lines)

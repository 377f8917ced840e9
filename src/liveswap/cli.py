"""The ``liveswap`` command. The library raises; only this module turns errors into exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import OPTIONS, Option, load_settings
from .errors import LiveswapError, ReloadFailed

EXIT_ERROR = 1
EXIT_USAGE = 2


def _fail(exc: LiveswapError, code: int = EXIT_ERROR) -> None:
    click.echo(f"liveswap: error: {exc}", err=True)
    if exc.hint:
        lines = exc.hint.splitlines()
        click.echo(f"     hint: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"           {line}", err=True)
    sys.exit(code)


def _add_options(command: str) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for opt in reversed([o for o in OPTIONS if command in o.commands]):
            fn = _click_option(opt)(fn)
        return fn

    return decorate


def _click_option(opt: Option) -> Callable[[Any], Any]:
    help_text = f"{opt.help} [env {opt.env}; default {opt.default!r}]"
    if opt.flag_is_switch:
        return click.option(opt.flag, opt.name, is_flag=True, default=None, help=help_text)
    if opt.multiple:
        return click.option(opt.flag, opt.name, multiple=True, help=help_text, metavar="TEXT")
    return click.option(opt.flag, opt.name, default=None, help=help_text, metavar=type(opt.default).__name__.upper())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liveswap")
def cli() -> None:
    """liveswap runs Python web services so that no request is ever lost: across reloads, deploys,
    worker crashes and file saves."""


@cli.command()
@click.argument("app", required=False, default="")
@_add_options("run")
def run(app: str, **options: Any) -> None:
    """Serve APP (module:attribute, an ASGI or WSGI app) in production.

    Reload with `liveswap reload` or `kill -HUP <pid>`; stop with Ctrl-C, SIGTERM or `liveswap stop`.
    """
    from ._log import setup_logging
    from .sockets import bind_all, inherit_listen_fds
    from .supervisor import Supervisor

    try:
        settings = load_settings(app, options)
        settings.app_dir = str(Path(settings.app_dir).resolve())
        setup_logging(settings.log_level, role="supervisor")
        listeners = inherit_listen_fds(os.environ)
        if listeners is None:
            listeners = bind_all(settings.bind)
        supervisor = Supervisor(settings, listeners)
        code = asyncio.run(supervisor.run())
    except LiveswapError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _name_option(fn: Any) -> Any:
    return click.option("--name", default=None, help="Instance name (default: the only running instance).")(fn)


def _request(cmd: str, name: str | None, timeout: float = 120.0) -> dict[str, Any]:
    from .control import request

    try:
        reply = request(cmd, name, timeout=timeout)
    except LiveswapError as exc:
        _fail(exc)
    if not reply.get("ok") and cmd != "reload":
        _fail(LiveswapError(str(reply.get("error")), hint=reply.get("hint")))
    return reply


@cli.command()
@_name_option
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the outcome.")
def reload(name: str | None, timeout: float) -> None:
    """Reload a running instance; exits 0 when the new code is live, 1 when it was rolled back."""
    reply = _request("reload", name, timeout)
    if reply.get("ok"):
        click.echo(f"reload ok: generation {reply['generation']} live in {reply['duration_ms']} ms")
        return
    if "generation" not in reply:
        _fail(LiveswapError(str(reply.get("error")), hint=reply.get("hint")))
    click.echo(
        f"reload failed after {reply.get('duration_ms')} ms; rolled back, the previous generation keeps serving",
        err=True,
    )
    err = ReloadFailed(str(reply.get("error")), hint=None)
    click.echo(f"liveswap: error: {err}", err=True)
    if reply.get("detail"):
        click.echo(str(reply["detail"]), err=True)
    sys.exit(EXIT_ERROR)


@cli.command()
@_name_option
def stop(name: str | None) -> None:
    """Stop a running instance gracefully (it drains, then exits)."""
    reply = _request("stop", name, 10.0)
    click.echo(f"stopping liveswap pid {reply['pid']}")


@cli.command()
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show generations, workers and the last reload of a running instance."""
    reply = _request("status", name, 10.0)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    click.echo(format_status(reply))


def _ago(ts: float) -> str:
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f} s ago" if secs < 120 else f"{secs / 60:.0f} min ago"


def format_status(s: dict[str, Any]) -> str:
    lines = [
        f"liveswap {s['name']}  pid {s['pid']}  app {s['app']}  up {s['uptime']:.0f} s",
        f"state: {s['state']}",
        f"listening: {', '.join(s['listening'])}",
        f"reloads: {s['reloads_ok']} ok, {s['reloads_failed']} failed; worker restarts: {s['restarts']}",
        "",
        f"{'GEN':>4}  {'STATE':<9} {'PID':>8}  {'SLOT':>4}  {'WORKER':<9} {'UPTIME':>9}  {'RESTARTS':>8}",
    ]
    for g in s["generations"]:
        if not g["workers"]:
            lines.append(f"{g['generation']:>4}  {g['state']:<9} {'-':>8}")
        for w in g["workers"]:
            lines.append(
                f"{g['generation']:>4}  {g['state']:<9} {w['pid']:>8}  {w['slot']:>4}  {w['state']:<9} "
                f"{w['uptime']:>8.1f}s  {w['restarts']:>8}"
            )
    last = s.get("last_reload")
    if last:
        outcome = "ok" if last["ok"] else f"FAILED: {last.get('error')}"
        lines += [
            "",
            f"last reload: {_ago(last['time'])}, generation {last['generation']}, {outcome}, "
            f"{last['duration_ms']} ms ({last['reason']})",
        ]
    return "\n".join(lines)


def main() -> None:
    cli(prog_name="liveswap")


if __name__ == "__main__":
    main()

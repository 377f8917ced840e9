"""The ``liveswap`` command. The library raises; only this module turns errors into exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from ._os import EXIT_ERROR, EXIT_USAGE, wait_exit
from .config import OPTIONS, Option, Settings, load_settings, option, parse_duration
from .errors import AppLoadError, ConfigError, LiveswapError


def _fail(exc: LiveswapError, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"liveswap: error: {exc}", err=True)
    if exc.hint:
        lines = exc.hint.splitlines()
        click.echo(f"     hint: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"           {line}", err=True)
    sys.exit(code)


def _warn(message: str, hint: str | None) -> None:
    click.echo(f"liveswap: warning: {message}", err=True)
    if hint:
        click.echo(f"     hint: {hint}", err=True)


def _add_options(command: str) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for opt in reversed([o for o in OPTIONS if command in o.commands]):
            fn = _click_option(opt)(fn)
        return fn

    return decorate


def _click_option(opt: Option) -> Callable[[Any], Any]:
    help_text = f"{opt.help} [env {opt.env}; default {opt.default!r}]"
    if opt.negatable:
        return click.option(f"{opt.flag}/--no-{opt.key}", opt.name, default=None, help=help_text)
    if opt.flag_is_switch:
        return click.option(opt.flag, opt.name, is_flag=True, default=None, help=help_text)
    flags = (opt.short, opt.flag) if opt.short else (opt.flag,)  # -w/--workers, -b/--bind
    if opt.multiple:
        return click.option(*flags, opt.name, multiple=True, help=help_text, metavar="TEXT")
    return click.option(*flags, opt.name, default=None, help=help_text, metavar=type(opt.default).__name__.upper())


class _WithCommand(click.Command):
    """Everything after ``--`` is a server command to supervise (command mode), kept verbatim."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["liveswap.command"] = args[at + 1 :]
            if not args[at + 1 :]:
                raise click.UsageError("nothing after --: give the server command to run, e.g. -- gunicorn app:app")
            args = args[:at]
        return super().parse_args(ctx, args)


def _command_line() -> list[str]:
    return list(click.get_current_context().meta.get("liveswap.command", []))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liveswap")
def cli() -> None:
    """liveswap runs Python web services so that no request is ever lost: across reloads, deploys,
    worker crashes and file saves."""


@cli.command(cls=_WithCommand)
@click.argument("app", required=False, default="")
@_add_options("run")
def run(app: str, **options: Any) -> None:
    """Serve APP (module:attribute, an ASGI or WSGI app) in production, or any server command given
    after `--` (command mode: `liveswap run -- gunicorn app:app`; see docs/command-mode.md).

    Reload with `liveswap reload` or `kill -HUP <pid>`; stop with Ctrl-C, SIGTERM or `liveswap stop`.
    """
    _supervise(app, options, dev=False, command=_command_line())


@cli.command(cls=_WithCommand)
@click.argument("app", required=False, default="")
@_add_options("dev")
def dev(app: str, **options: Any) -> None:
    """Develop APP (module:attribute): reload on every save of a file it imported, an error page
    while the code is broken, open pages that follow.

    One worker; `liveswap reload`, `status` and `stop` work as with `run`. Any other server: give its
    command after `--` (`liveswap dev --build 'go build -o bin/server .' -- bin/server`): it runs on a
    private $PORT behind liveswap's proxy and restarts on every save in the project.
    """
    _supervise(app, options, dev=True, command=_command_line())


def _check_command(command: list[str], settings: Settings) -> None:
    """Before anything is bound: the program exists and the placeholders make sense."""
    import shutil

    from .supervisor.kinds.execute import placeholders

    program = command[0]
    if shutil.which(program) is None and not settings.build:  # (a --build may make it)
        where = "is not executable" if os.path.exists(program) else "was not found"
        raise ConfigError(
            f"the command {program!r} {where}",
            hint="check the spelling; give its full path, or ./name for a program in this folder"
            if where == "was not found"
            else f"chmod +x {program}, or run it through its interpreter",
        )
    names = os.environ.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDS" in os.environ else settings.bind
    placeholders(command, names)


def _upgrade_state() -> dict[str, Any] | None:
    text = os.environ.pop("LIVESWAP_UPGRADE", "")
    if not text:
        return None
    state: dict[str, Any] = json.loads(text)
    return state


def _supervise(app: str, options: dict[str, Any], dev: bool, command: list[str] | None = None) -> None:
    from ._log import setup_logging
    from ._proctitle import set_title
    from .http.app import check_app
    from .sockets import bind_all, inherit_listen_fds
    from .supervisor import Supervisor
    from .supervisor.certs import check_startup as check_tls

    try:
        settings = load_settings(app, options, command=command or ())
        settings.app_dir = str(Path(settings.app_dir).resolve())
        # Before any socket is bound: a typo in APP is a usage error, not a boot failure. The
        # supervisor never imports the app; this only looks for its top-level module.
        if settings.command:
            if dev:
                settings.proxy = True  # lrt's way: the command on a private $PORT, behind the proxy
            if settings.build and not settings.proxy:
                raise ConfigError(
                    "--build needs --proxy", hint="liveswap run --proxy --build '...' -- CMD (liveswap dev: always)"
                )
            _check_command(settings.command, settings)
        else:
            check_app(settings.app, settings.app_dir)
        check_tls(settings, dev)  # --certfile: a pair that cannot serve is a usage error, before any bind
        # Here: a log config that logging refuses is a usage error too (and a dry run checks it).
        setup_logging(settings.log_level, "supervisor", log_format=settings.log_format, log_config=settings.log_config)
    except (ConfigError, AppLoadError) as exc:
        _fail(exc, EXIT_USAGE)
    upgraded = _upgrade_state()
    if os.environ.pop("LIVESWAP_DRY_RUN", ""):  # liveswap upgrade's check of the code on disk
        import liveswap.supervisor  # noqa: F401 - everything a supervisor imports, imported once
        import liveswap.worker.main  # noqa: F401

        click.echo(f"liveswap {__version__}: dry run ok ({settings.app})")
        sys.exit(0)
    try:
        set_title(f"supervisor {settings.app} ({settings.instance_name()})")
        handover = None
        if upgraded is not None:  # liveswap upgrade: this process's previous image held these
            from .supervisor.upgrade import listeners_from

            listeners = listeners_from(upgraded)
        elif settings.takeover:
            from .control.takeover import take_over

            handover = take_over(settings.instance_name(), settings.bind)
            taken = {x.name: x for x in handover.listeners}
            fresh = {x.name: x for x in bind_all([b for b in settings.bind if b not in taken])}
            listeners = [taken.get(b) or fresh[b] for b in settings.bind]
        else:
            listeners = inherit_listen_fds(os.environ) or bind_all(settings.bind)
        session = None
        if dev:
            settings.workers = 1
            from .dev.session import DevSession

            session = DevSession(
                Path(settings.app_dir),
                settings.watch,
                settings.ignore,
                not settings.no_browser_reload,
                settings.command or None,
            )
        supervisor = Supervisor(settings, listeners, session, handover, upgraded)
        code = asyncio.run(supervisor.run())
    except LiveswapError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _check_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:  # LIVESWAP_NAME, [tool.liveswap] in pyproject.toml, else the only running instance
        from .control.instances import default_name

        try:
            return default_name()
        except LiveswapError as exc:
            _fail(exc)
    try:
        parsed: str = option("name").parse(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} ({getattr(exc, 'hint', '')})") from None
    return parsed


_NAME_HELP = "Instance name (default: LIVESWAP_NAME, [tool.liveswap] in pyproject.toml, else the only one running)."


def _name_option(fn: Any) -> Any:
    return click.option("--name", default=None, callback=_check_name, help=_NAME_HELP)(fn)


def _duration(_ctx: click.Context, _param: click.Parameter, value: Any) -> float:
    """A duration as the options take it (500ms, 30s, 2m or seconds), more than 0."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} must be more than 0")
    return seconds


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
@click.option(
    "--timeout", default="120s", callback=_duration, show_default=True, help="How long to wait for the outcome."
)
def reload(name: str | None, timeout: float) -> None:
    """Reload a running instance; exits 0 when the new code is live, 1 when it was rolled back."""
    reply = _request("reload", name, timeout)
    if reply.get("ok"):
        click.echo(f"reload ok: generation {reply['generation']} live in {reply['duration_ms']} ms")
        if reply.get("warning"):
            _warn(str(reply["warning"]), reply.get("warning_hint"))
        return
    if "generation" not in reply or reply.get("stopping"):
        _fail(LiveswapError(str(reply.get("error")), hint=reply.get("hint")))
    click.echo(
        f"reload failed after {reply.get('duration_ms')} ms; rolled back, the previous generation keeps serving",
        err=True,
    )
    click.echo(f"liveswap: error: {reply.get('error')}", err=True)
    if reply.get("detail"):
        click.echo(str(reply["detail"]), err=True)
    sys.exit(EXIT_ERROR)


@cli.command()
@_name_option
@click.option(
    "--timeout", default="120s", callback=_duration, show_default=True, help="How long to wait for each step."
)
@click.option("--no-reload", is_flag=True, help="Only re-execute the supervisor; leave the workers as they are.")
def upgrade(name: str | None, timeout: float, no_reload: bool) -> None:
    """Upgrade a running instance's supervisor in place to the liveswap now on disk: same pid,
    sockets and workers (after a dry run of the new version), then reload the workers onto it."""
    from .control import exchange

    before = _request("status", name, 10.0)
    answer = exchange("upgrade", name, timeout=timeout)
    reply = answer.reply
    if not reply.get("ok"):
        click.echo(f"liveswap: error: {reply.get('error')}", err=True)
        if reply.get("detail"):
            click.echo(str(reply["detail"]), err=True)
        if reply.get("hint"):
            click.echo(f"     hint: {reply['hint']}", err=True)
        sys.exit(EXIT_ERROR)
    pid = reply["pid"]
    click.echo(f"upgrading liveswap pid {pid} in place: dry run ok, re-executing")
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.05)
        try:
            now = _poll_status(answer.path.stem)
        except LiveswapError:
            now = None  # between the old image's exit of the socket and the new image's bind
        if now is not None and now.get("upgrades", 0) > before.get("upgrades", 0):
            break
        if now is not None and now.get("upgrade_error") and now.get("upgrade_error") != before.get("upgrade_error"):
            _fail(LiveswapError(f"upgrade failed: {now['upgrade_error']}; the old supervisor keeps serving"))
        if time.monotonic() > deadline:
            _fail(
                LiveswapError(
                    f"liveswap pid {pid} did not come back within {timeout:g} s after re-executing",
                    hint="look at its log; `liveswap status` tells whether it serves",
                )
            )
    click.echo(
        f"liveswap pid {now['pid']} runs liveswap {now['version']} (was {before.get('version')}), "
        f"same sockets and workers"
    )
    if no_reload:
        return
    click.echo("reloading the workers onto it")
    reload.callback(name=answer.path.stem, timeout=timeout)  # type: ignore[misc]


def _poll_status(name: str) -> dict[str, Any]:
    from .control import request

    return request("status", name, timeout=2.0)


@cli.command()
@_name_option
@click.option(
    "--timeout",
    default="120s",
    callback=_duration,
    show_default=True,
    help="How long to wait for the instance to exit.",
)
@click.option("--no-wait", is_flag=True, help="Return once the stop is accepted, without waiting for the drain.")
def stop(name: str | None, timeout: float, no_wait: bool) -> None:
    """Stop a running instance gracefully: it drains, then exits. Returns once it has exited."""
    from .control import exchange

    t0 = time.monotonic()
    try:
        answer = exchange("stop", name, timeout=min(timeout, 10.0))
    except LiveswapError as exc:
        _fail(exc)
    reply = answer.reply
    if not reply.get("ok"):
        _fail(LiveswapError(str(reply.get("error")), hint=reply.get("hint")))
    pid = answer.peer_pid or int(reply.get("pid", 0))
    if no_wait:
        click.echo(f"stopping liveswap pid {pid}")
        return
    click.echo(f"stopping liveswap pid {pid}: waiting for it to drain and exit")
    if not wait_exit(answer.peer_pid, answer.path, t0 + timeout):
        _fail(
            LiveswapError(
                f"liveswap pid {pid} has not exited {timeout:g} s after the stop request",
                hint=f"it is still draining (in-flight requests get --drain-timeout); wait longer with --timeout, "
                f"watch it with `liveswap status --name {answer.path.stem}`, or stop it at once (cutting requests) "
                f"with `kill -INT {pid}`",
            )
        )
    click.echo(f"stopped liveswap pid {pid} in {time.monotonic() - t0:.2f} s")


@cli.command()
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show an instance's generations, workers and last reload (several running, no --name: a line each)."""
    from .control.instances import several

    if name is None and (text := several(as_json)):
        return click.echo(text)
    reply = _request("status", name, 10.0)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    from .control.statustext import format_status

    click.echo(format_status(reply))


def main() -> None:
    cli(prog_name="liveswap")


if __name__ == "__main__":
    main()

"""Every option of liveswap, declared once.

One declaration (:class:`Option`) gives the CLI flag, the ``LIVESWAP_*`` environment variable, the
``[tool.liveswap]`` key in pyproject.toml, the field of :class:`~liveswap.config.Settings` and the
row of the docs table (:func:`docs_table`; ``python -m liveswap.config`` prints it).

Each option's ``parse`` (from ``_parse``) refuses values that make no sense (a zero boot timeout, a
negative limit, a month-long duration) with a message that says what is expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._habit_options import HABIT_OPTIONS
from ._http_options import HTTP_OPTIONS
from ._parse import (
    MAX_NAME,
    MAX_WORKERS,
    bind_address,
    boolean,
    choice,
    directory,
    duration,
    host_header,
    host_port,
    instance_name,
    integer,
    module_name,
    parse_duration,
    probe_address,
    request_path,
    stop_signal,
)

__all__ = ["OPTIONS", "Option", "docs_table", "option"]


@dataclass(frozen=True)
class Option:
    """One setting: its name, type, default and help, from which the flag/env/pyproject key derive."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str
    multiple: bool = False
    flag_is_switch: bool = False
    negatable: bool = False  # a switch that is on by default: --x/--no-x, as uvicorn spells them
    commands: tuple[str, ...] = ("run", "dev")  # the CLI commands that take it
    short: str = ""  # a one-letter flag users type daily ("-w"), besides the long one

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
        bind_address,
        multiple=True,
        short="-b",
    ),
    Option(
        "workers",
        1,
        f"Number of worker processes per generation (1 to {MAX_WORKERS}).",
        integer(
            1,
            MAX_WORKERS,
            why="each worker is a process, and each has a spare forked ahead: a few per CPU core is plenty",
        ),
        commands=("run",),  # liveswap dev runs one worker
        short="-w",
    ),
    Option(
        "factory",
        False,
        "Treat APP as a factory: call it with no arguments to get the app.",
        boolean,
        flag_is_switch=True,
    ),
    Option("interface", "auto", "Application interface: auto (detect), asgi or wsgi.", choice("auto", "asgi", "wsgi")),
    Option(
        "threads",
        1,
        "WSGI apps: threads per worker. 1 (the default): one request at a time per worker, called in the "
        "event loop's thread like gunicorn's sync worker, while the loop still handles keep-alive and slow "
        "clients. N: a pool of N threads per worker for apps that wait on I/O, like gunicorn's gthread "
        "(1 to 256; ASGI apps ignore it).",
        integer(1, 256, why="threads wait on I/O for the app; more than a few hundred per worker only adds memory"),
    ),
    Option(
        "wsgi_adapter",
        "native",
        "How WSGI apps are served: native (liveswap's WSGI path: parsed and buffered by the event loop, the app "
        "called once per request) or a2wsgi (the a2wsgi ASGI adapter, kept until the native path has proven itself).",
        choice("native", "a2wsgi"),
    ),
    Option("app_dir", ".", "Directory put first on sys.path when importing APP (must exist).", directory),
    Option(
        "name",
        "",
        f"Instance name for the control socket (default: derived from APP): letters, digits, '.', '_', '-', "
        f"at most {MAX_NAME} characters.",
        instance_name,
    ),
    Option(
        "health_path",
        "/",
        "Path of the health check each new worker must pass (answer below 500) before it takes public traffic.",
        request_path,
    ),
    Option(
        "health_host",
        "",
        "Host header of the health check (default: the first --bind address; localhost for a wildcard or unix "
        "address). Django answers 400 to a Host not in ALLOWED_HOSTS, which proves nothing: set it to one it allows.",
        host_header,
    ),
    Option(
        "worker_timeout",
        30.0,
        "A live worker whose event loop has not turned for this long is hung: a replacement boots and passes its "
        "health check, then the hung one's stacks are logged and it is killed (0 disables). WSGI: also how long a "
        "client may read nothing of a response before it is cut off.",
        parse_duration,
    ),
    Option(
        "boot_timeout",
        30.0,
        "How long a new worker may take to import, start and pass its health check (more than 0).",
        duration(
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
        duration(),
    ),
    Option(
        "idle_grace",
        1.0,
        "While draining, how long an idle keep-alive connection is kept open so a request "
        "already on its way is answered (with Connection: close) rather than reset (0: close at once).",
        duration(),
    ),
    Option(
        "keepalive_timeout",
        5.0,
        "Close keep-alive connections idle for this long (0: close after each response).",
        duration(),
    ),
    Option(
        "header_timeout",
        10.0,
        "Disconnect a client that has not sent a complete request line and headers "
        "within this long (slow-header protection; 0 disables).",
        duration(),
    ),
    Option(
        "max_header_bytes",
        65536,
        "Largest request line plus headers accepted; larger gets 431 (1024 to 16777216).",
        integer(
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
        integer(0, why="0 means no limit"),
    ),
    Option(
        "backoff_max",
        30.0,
        "Longest wait between restarts of a worker that keeps crashing (at least 0.1 s).",
        duration(
            0.1, why="restarts back off from 0.1 s, doubling; a smaller cap restarts a crashing worker in a tight loop"
        ),
    ),
    Option(
        "preload",
        [],
        "Module the template process imports before forking workers (a library, never your app). Repeatable.",
        module_name,
        multiple=True,
    ),
    Option("log_level", "info", "Log level: debug, info, warning, error.", choice("debug", "info", "warning", "error")),
    *(Option(**kwargs) for kwargs in (*HTTP_OPTIONS, *HABIT_OPTIONS)),  # logs, behind a proxy, habits
    Option(
        "debug_bind",
        "",
        "Serve the debug endpoints (stacks, profile, heap, metrics) on this loopback "
        "address, e.g. 127.0.0.1:6060. Off by default.",
    ),
    Option(
        "debug_token",
        "",
        "Require this token (?token= or Authorization: Bearer) on the debug server.",
    ),
    Option(
        "certfile",
        "",
        "Serve HTTPS with this PEM certificate (the server's first, then its chain); needs --keyfile. Read and "
        "checked at each reload (key matches, dates, chain): a bad pair fails the reload and the old one serves on.",
        commands=("run",),
    ),
    Option("keyfile", "", "The PEM private key of --certfile (not encrypted).", commands=("run",)),
    Option(
        "ca_certs",
        "",
        "With --certfile: require a client certificate signed by one of the CAs in this PEM file.",
        commands=("run",),
    ),
    Option(
        "ssl_min_version",
        "1.2",
        "With --certfile: the oldest TLS version accepted, 1.2 or 1.3.",
        choice("1.2", "1.3"),
        commands=("run",),
    ),
    Option(
        "watch_certs",
        False,
        "With --certfile: reload when the content of the certificate files changes (watched by directory, so "
        "Kubernetes' ..data symlink swap counts), as SIGHUP does.",
        boolean,
        flag_is_switch=True,
        commands=("run",),
    ),
    Option(
        "proxy",
        False,
        "Command mode: run each generation of the command on a private loopback $PORT and proxy the public "
        "sockets to it: a new generation gets public traffic only once healthy (for any server, and servers "
        "that cannot take a socket).",
        boolean,
        flag_is_switch=True,
        commands=("run", "dev"),
    ),
    Option(
        "upstream",
        "",
        "liveswap dev -- COMMAND: the HOST:PORT where a command that ignores $PORT listens. Two copies cannot "
        "share it, so on each save the old copy finishes its requests and exits (new requests wait) before the "
        "new one starts.",
        host_port,
        commands=("dev",),
    ),
    Option(
        "build",
        "",
        "Command mode with --proxy (always so under liveswap dev): a shell command run once before each generation "
        "starts (go build -o bin/server .); if it fails, so does the generation, with its output.",
        commands=("run", "dev"),
    ),
    Option(
        "ready_after",
        0.0,
        "Command mode: take the command as ready this long after it starts, when it neither sends READY=1 nor "
        "can be health-checked (0: wait for those; 1 s when the command takes its socket by {fd} alone).",
        duration(),
        commands=("run", "dev"),
    ),
    Option(
        "stop_signal",
        "SIGTERM",
        "Command mode: the signal that makes the command drain and exit (SIGKILL follows at --drain-timeout).",
        stop_signal,
        commands=("run", "dev"),
    ),
    Option(
        "takeover",
        False,
        "Take the listening sockets of the running instance of the same --name, boot and health-check this one's "
        "workers on them, then make it drain and exit (a new liveswap version, options or virtualenv, no gap). "
        "If this one fails, the old one keeps serving.",
        boolean,
        flag_is_switch=True,
        commands=("run",),
    ),
    Option(
        "pid_file",
        "",
        "Write the supervisor's pid to this file once it serves (kept across liveswap upgrade: same pid); "
        "removed when it stops.",
        commands=("run",),
    ),
    Option(
        "on_reload_start",
        "",
        "Shell command run when a reload starts (not awaited), with LIVESWAP_EVENT, LIVESWAP_NAME, LIVESWAP_PID, "
        "LIVESWAP_GENERATION and LIVESWAP_REASON in its environment.",
        commands=("run",),
    ),
    Option(
        "on_reload_done",
        "",
        "Shell command run when a reload ends (not awaited), with LIVESWAP_OUTCOME (ok, failed, stopping), "
        "LIVESWAP_GENERATION, LIVESWAP_ERROR, LIVESWAP_DURATION_MS and LIVESWAP_REASON in its environment.",
        commands=("run",),
    ),
    Option(
        "on_stop",
        "",
        "Shell command run when a stop begins, while the workers drain; the supervisor waits up to 10 s for it "
        "before it exits.",
        commands=("run",),
    ),
    Option(
        "probe_bind",
        "",
        "Serve Kubernetes probes on this HOST:PORT (0.0.0.0:8081): GET /livez (200 while the supervisor runs) and "
        "/readyz (200 while a generation serves; 503 while booting and from the first SIGTERM on), nothing else. "
        "Off by default.",
        probe_address,
        commands=("run",),
    ),
    Option(
        "shutdown_delay",
        0.0,
        "On SIGTERM (or liveswap stop), keep serving this long with /readyz answering 503 before the drain begins, "
        "while load balancers stop sending new requests (a second SIGTERM or SIGINT skips the rest).",
        duration(),
        commands=("run",),
    ),
    Option(
        "grace_period",
        0.0,
        "How long the platform waits after SIGTERM before SIGKILL (the pod's terminationGracePeriodSeconds, less "
        "any preStop sleep): liveswap warns at start when --shutdown-delay plus --drain-timeout exceed it "
        "(0: unknown; 30 s is assumed when KUBERNETES_SERVICE_HOST is set).",
        duration(),
        commands=("run",),
    ),
    Option(
        "watch",
        [],
        "liveswap dev: also reload when a file matching this glob changes (templates/**/*.html, .env); "
        "the modules the app imported are always watched. Repeatable.",
        multiple=True,
        commands=("dev",),
    ),
    Option(
        "ignore",
        [],
        "liveswap dev: never reload for files matching this glob (wins over --watch). Repeatable.",
        multiple=True,
        commands=("dev",),
    ),
    Option(
        "no_browser_reload",
        False,
        "liveswap dev: do not add the script that reloads open pages when new code is live.",
        boolean,
        flag_is_switch=True,
        commands=("dev",),
    ),
)

_BY_NAME = {o.name: o for o in OPTIONS}


def option(name: str) -> Option:
    """The declaration of option ``name`` (``"bind"``, ``"workers"`` ...)."""
    return _BY_NAME[name]


def docs_table() -> str:
    """The options table for docs/configuration.md."""
    rows = ["| flag | env | pyproject key | default | commands | meaning |", "|---|---|---|---|---|---|"]
    for o in OPTIONS:
        flag = (f"{o.short}`, `" if o.short else "") + (f"{o.flag}/--no-{o.key}" if o.negatable else o.flag)
        rows.append(f"| `{flag}` | `{o.env}` | `{o.key}` | `{o.default!r}` | {', '.join(o.commands)} | {o.help} |")
    return "\n".join(rows)

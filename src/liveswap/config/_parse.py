"""The options' value parsers: each refuses a value that makes no sense with a message saying
what is expected, as a ``ValueError`` (with a ``hint`` when there is a better one than the option's
help text); ``load_settings`` turns it into a ``ConfigError`` naming where the value came from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

from ..errors import BindError
from ..sockets import BindSyntax, parse_bind

__all__ = [
    "MAX_DURATION",
    "MAX_NAME",
    "MAX_WORKERS",
    "Invalid",
    "bind_address",
    "boolean",
    "choice",
    "directory",
    "duration",
    "forwarded_ips",
    "host_header",
    "instance_name",
    "integer",
    "log_config_file",
    "module_name",
    "parse_duration",
    "probe_address",
    "request_path",
    "root_path",
]

_DURATION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
MAX_DURATION = 24 * 3600.0
"""The longest duration any option takes: longer is a unit mistake (``30000`` meant as ms), not a plan."""
MAX_WORKERS = 1024
MAX_NAME = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_DURATION_HINT = "durations are a number of seconds or take a unit: 500ms, 30s, 2m, 1h"


class Invalid(ValueError):
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
        raise Invalid(f"{text!r} is not a duration", hint=_DURATION_HINT)
    if isinstance(text, str):
        m = _DURATION.match(text)
        if m is None:
            raise Invalid(f"{text!r} is not a duration", hint=_DURATION_HINT)
        value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    else:
        value = float(text)
    if not math.isfinite(value):
        raise Invalid(f"{text!r} is not a finite duration", hint=_DURATION_HINT)
    if value < 0:
        raise Invalid(f"{text!r} is negative; durations must be >= 0", hint=_DURATION_HINT)
    if value > MAX_DURATION:
        raise Invalid(
            f"{text!r} is longer than 24 h",
            hint=f"durations are at most {MAX_DURATION:g} s; a bare number is seconds (use 500ms for milliseconds)",
        )
    return value


def duration(minimum: float = 0.0, *, above: bool = False, why: str = "") -> Callable[[Any], float]:
    """A duration parser with a lower bound: ``>= minimum``, or ``> minimum`` when ``above``."""

    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum or (above and seconds == minimum):
            bound = f"more than {minimum:g} s" if above else f"at least {minimum:g} s"
            raise Invalid(f"{value!r} is too short: it must be {bound}", hint=why or None)
        return seconds

    return parse


def integer(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[Any], int]:
    """A whole-number parser with bounds (``True`` and ``2.5`` are refused, not truncated)."""

    def parse(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except ValueError:
            raise Invalid(f"{value!r} is not a whole number") from None
        if number < minimum or (maximum is not None and number > maximum):
            expected = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise Invalid(f"{value!r} is out of range: expected a whole number {expected}", hint=why or None)
        return number

    return parse


def bind_address(value: Any) -> str:
    text = str(value)
    try:
        parse_bind(text)
    except BindError as exc:
        raise Invalid(str(exc).removeprefix("--bind "), hint=exc.hint) from None
    return text


_PROBE = BindSyntax("--probe-bind", example_port=8081, fd=False)
_PROBE_HINT = "use HOST:PORT, e.g. 0.0.0.0:8081 or [::]:8081 (every interface: the answers carry no data)"


def probe_address(value: Any) -> str:
    """``--probe-bind``: '' (off) or a TCP ``HOST:PORT`` (the kubelet probes over TCP)."""
    text = str(value)
    if not text:
        return text
    try:
        spec = parse_bind(text, _PROBE)
    except BindError as exc:
        raise Invalid(str(exc).removeprefix("--probe-bind "), hint=_PROBE_HINT) from None
    if spec.kind != "tcp":
        raise Invalid(f"{text!r}: the probes are served over TCP (the kubelet's httpGet)", hint=_PROBE_HINT)
    return text


def directory(value: Any) -> str:
    text = str(value)
    if not text:
        raise Invalid("'' is not a directory", hint="give a directory, e.g. . or src")
    if not os.path.isdir(text):
        what = "is not a directory" if os.path.exists(text) else "does not exist"
        raise Invalid(
            f"{text!r} {what}", hint=f"give the directory that contains your app's module (cwd: {os.getcwd()})"
        )
    return text


def instance_name(value: Any) -> str:
    text = str(value)
    if text and (len(text) > MAX_NAME or not _NAME.match(text)):
        raise Invalid(
            f"{text!r} is not a valid instance name",
            hint=f"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_NAME} "
            "characters (it names the control socket <runtime dir>/<name>.sock)",
        )
    return text


def module_name(value: Any) -> str:
    text = str(value)
    if not _MODULE.match(text):
        raise Invalid(
            f"{text!r} is not a module name", hint="give an importable module name, e.g. fastapi or sqlalchemy.orm"
        )
    return text


def request_path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise Invalid(f"{text!r} must start with '/'", hint="e.g. / or /healthz")
    if not all(33 <= ord(c) < 127 for c in text):
        raise Invalid(
            f"{text!r} has spaces or characters that cannot go in a request line",
            hint="percent-encode them, e.g. /health%20check",
        )
    return text


def host_header(value: Any) -> str:
    text = str(value)
    if not all(33 <= ord(c) < 127 for c in text):
        raise Invalid(
            f"{text!r} cannot be a Host header: it has spaces or control characters",
            hint="give a host name, optionally with a port, e.g. example.com or localhost:8000",
        )
    return text


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise Invalid(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def stop_signal(value: Any) -> str:
    """A signal that asks a server to stop gracefully: ``TERM``, ``SIGTERM`` or ``term``; SIGKILL is
    refused (it is what the hammer sends after --drain-timeout)."""
    text = str(value).strip().upper()
    name = text if text.startswith("SIG") else "SIG" + text
    if name == "SIGKILL":
        raise Invalid(
            f"{value!r} cannot be caught: in-flight requests would be cut",
            hint="give the signal your server drains on (most: SIGTERM; nginx: SIGQUIT); liveswap sends "
            "SIGKILL itself after --drain-timeout",
        )
    if name not in STOP_SIGNALS:
        raise Invalid(f"{value!r} is not a stop signal", hint=f"one of: {', '.join(STOP_SIGNALS)}")
    return name


def host_port(value: Any) -> str:
    """``HOST:PORT`` of a server on this machine (``--upstream``)."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise Invalid(f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8080 or localhost:3000")
    return text


def boolean(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise Invalid(f"{text!r} is not a boolean; use true or false")


def forwarded_ips(value: Any) -> str:
    """``--forwarded-allow-ips``: ``*``, or a comma-separated list of IP addresses and networks
    (CIDR). uvicorn takes a malformed address for a literal that never matches; we refuse it."""
    import ipaddress

    text = str(value).strip()
    if text in ("", "*"):
        return text
    for item in (x.strip() for x in text.split(",")):
        try:
            if "/" in item:
                ipaddress.ip_network(item)
            else:
                ipaddress.ip_address(item)
        except ValueError:
            raise Invalid(
                f"{item!r} is not an IP address or network",
                hint="give the addresses of the proxies you trust, comma-separated: 127.0.0.1,::1, 10.0.0.0/8, "
                "or * to trust any peer (only when nothing but your proxy can reach this server)",
            ) from None
    return ",".join(x.strip() for x in text.split(","))


def root_path(value: Any) -> str:
    """``--root-path``: '' or a path prefix such as ``/api`` (no trailing slash)."""
    text = str(value)
    if not text:
        return text
    if not text.startswith("/") or text.endswith("/") or not all(33 <= ord(c) < 127 for c in text):
        raise Invalid(
            f"{text!r} is not a path prefix",
            hint="the prefix your proxy mounts the app under: starts with '/', no trailing '/', no spaces, "
            "e.g. /api (empty: none)",
        )
    return text


def log_config_file(value: Any) -> str:
    """``--log-config``: a logging config file that exists: .json or .yaml/.yml (dictConfig), else
    an .ini-style file (fileConfig), as uvicorn reads it. Returned as an absolute path."""
    text = str(value)
    if not text:
        return text
    if not os.path.isfile(text):
        what = "is not a file" if os.path.exists(text) else "does not exist"
        raise Invalid(
            f"{text!r} {what}",
            hint="give a logging config file: .json or .yaml (logging.config.dictConfig), or .ini (fileConfig)",
        )
    if text.endswith((".yaml", ".yml")):
        import importlib.util

        if importlib.util.find_spec("yaml") is None:
            raise Invalid(
                f"{text!r} is YAML, and PyYAML is not installed", hint="pip install PyYAML, or write it as .json"
            )
    return os.path.abspath(text)

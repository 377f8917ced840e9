"""``--env-file``: a dotenv file whose variables go into the workers' (or the command's) environment.

Parsed by python-dotenv (the format everyone's ``.env`` is written in: ``KEY=VALUE``, ``# comments``,
single or double quotes, an ``export`` prefix, ``${VAR}`` expansion), but stricter about mistakes: a
line it cannot parse is an error naming the line, where python-dotenv only logs a warning and skips
it (a silently missing ``DATABASE_URL`` is worse than a refused reload).

The file is read again for every generation (each reload, each crash restart), so a changed value
reaches the new code without a restart of liveswap. A variable already in liveswap's own environment
wins over the file (python-dotenv's and uvicorn's rule: the real environment is the operator's say).

    >>> env_vars("/srv/app/.env", {"HOME": "/root"})      # doctest: +SKIP
    {'DATABASE_URL': 'postgres://db/app', 'DEBUG': '0'}
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ._parse import Invalid

__all__ = ["EnvFile", "env_file_path", "env_vars", "read_env_file"]

_HINT = "create it, or give the right path: --env-file .env (relative to the directory liveswap starts in)"


def env_file_path(value: Any) -> str:
    """The option's parser: an existing file that parses ("" for none), made absolute (it is read
    again at each reload, whatever the directory then)."""
    text = str(value)
    if not text:
        return ""
    if not os.path.isfile(text):
        what = "is not a file" if os.path.exists(text) else "does not exist"
        raise Invalid(f"{text!r} {what}", hint=f"{_HINT} (cwd: {os.getcwd()})")
    path = os.path.abspath(text)
    try:
        read_env_file(path)  # a bad line is a usage error now, not a failed first boot
    except ConfigError as exc:
        raise Invalid(str(exc).removeprefix("--env-file "), hint=exc.hint) from None
    return path


def read_env_file(path: str) -> dict[str, str]:
    """Every ``KEY=VALUE`` of the file; raises ConfigError for a missing file or a line that is not one."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--env-file {path}: cannot read it: {reason}", hint=_HINT) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip().splitlines()[0] if binding.original.string.strip() else ""
            raise ConfigError(
                f"--env-file {path}, line {binding.original.line}: {line[:80]!r} is not KEY=VALUE",
                hint='one variable a line: NAME=value, NAME="a value with spaces", export NAME=value or # a comment',
            )
    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}  # a bare NAME sets nothing


def env_vars(path: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The file's variables that ``environ`` (liveswap's own environment) does not set already."""
    if not path:
        return {}
    environ = os.environ if environ is None else environ
    return {key: value for key, value in read_env_file(path).items() if key not in environ}


class EnvFile:
    """``--env-file`` as the worker kinds use it: read once per generation (a reload reads it again;
    a crash restart in the same generation gets what its siblings got)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._generation = -1
        self._values: dict[str, str] = {}

    def variables(self, generation: int) -> dict[str, str]:
        """The variables for the workers of ``generation``; raises ConfigError (missing file, bad line)."""
        if not self.path:
            return {}
        if generation != self._generation:
            self._values = env_vars(self.path)
            self._generation = generation
        return dict(self._values)

"""Logging: one line per event, tagged with the process's role, pid and generation.

Text (the default)::

    2025-06-01T09:30:00.123Z liveswap[4242] gen=3 INFO ready in 41.2 ms (asgi app imported in 30.1 ms)

JSON (``--log-format json``), one object per line, with the fields given by ``extra=`` too::

    {"time": "2025-06-01T09:30:00.123Z", "level": "INFO", "role": "worker", "pid": 4242, "generation": 3,
     "logger": "liveswap.worker", "message": "ready in 41.2 ms (asgi app imported in 30.1 ms)"}

Every record made in the process carries ``role``, ``generation`` (None outside a worker) and the
text ``tag`` (``supervisor``, ``template``, ``gen=3``, ``serve``), so a ``--log-config`` file's
formats may use them: ``%(role)s``, ``%(generation)s``, ``%(tag)s``.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
import sys
import time
from typing import Any

from .errors import ConfigError

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]

_FORMAT = "%(asctime)s.%(msecs)03dZ liveswap[%(process)d] %(tag)s %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%dT%H:%M:%S"

# A record's own attributes; anything else on it came with extra= and goes into the JSON object.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "role",
    "generation",
    "tag",
    "taskName",
}


class TextFormatter(logging.Formatter):
    """liveswap's text lines; UTC: an app may change its process's time zone (Django sets TZ from
    TIME_ZONE), and the lines of the supervisor and of its workers must still read on one clock."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt or _FORMAT, datefmt or _DATEFMT, *args, **kwargs)
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "tag"):  # made without the record factory (logging.makeLogRecord)
            record.tag = "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO 8601, UTC), level, role, pid, generation,
    logger, message, the fields given with ``extra=``, and ``exc`` (the traceback) when there is one.
    Usable in a ``--log-config`` file as ``liveswap._log.JsonFormatter``."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime(_DATEFMT, time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": getattr(record, "role", None),
            "pid": record.process,
            "generation": getattr(record, "generation", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        # No line breaks inside an object: json.dumps escapes them in strings.
        return json.dumps(out, default=str, ensure_ascii=False)


def _tag_records(role: str, generation: int | None) -> None:
    """Every record made in this process carries its role, generation and text tag (a record
    factory rather than a handler's filter, so that a --log-config file's handlers see them too)."""
    tag = f"gen={generation}" if role == "worker" else role
    base = logging.getLogRecordFactory()
    base = getattr(base, "_liveswap_base", base)  # set up twice (serve() in a test): wrap the original once

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.role = role
        record.generation = generation
        record.tag = tag
        return record

    factory._liveswap_base = base  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def setup_logging(
    level: str = "info",
    role: str = "supervisor",
    *,
    generation: int | None = None,
    log_format: str = "text",
    log_config: str = "",
) -> None:
    """Configure the ``liveswap`` and ``uvicorn`` loggers to write tagged lines to stderr, then apply
    ``log_config`` (a file as uvicorn's ``--log-config`` takes it) on top. Raises ConfigError for a
    config file that logging refuses.

    ``role`` is ``supervisor``, ``template``, ``worker`` (with its ``generation``) or ``serve``.
    """
    _tag_records(role, generation)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    numeric = getattr(logging, level.upper(), logging.INFO)
    for name in ("liveswap", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name in ("liveswap", "uvicorn") else []
        logger.propagate = name not in ("liveswap", "uvicorn")
        logger.setLevel(numeric)
    # uvicorn's access log has no duration and would log the health checks: ours is liveswap.access.
    logging.getLogger("uvicorn.access").disabled = True
    if log_config:
        apply_config(log_config)


def apply_config(path: str) -> None:
    """Apply a logging config file: .json or .yaml/.yml through ``logging.config.dictConfig``, anything
    else through ``fileConfig``, as uvicorn does. Unlike a bare dictConfig, a file that does not say
    ``disable_existing_loggers`` keeps liveswap's own loggers enabled (they exist before it is read)."""
    try:
        if path.endswith((".json", ".yaml", ".yml")):
            with open(path, encoding="utf-8") as f:
                if path.endswith(".json"):
                    config = json.load(f)
                else:
                    config = importlib.import_module("yaml").safe_load(f)
            if not isinstance(config, dict):
                raise ValueError("the file must hold a mapping (a logging dictConfig)")
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as exc:  # noqa: BLE001 - json, yaml, configparser and logging each raise their own
        raise ConfigError(
            f"--log-config {path}: {type(exc).__name__}: {exc}",
            hint="a .json/.yaml file is a logging.config.dictConfig mapping (with a version: 1 key); any other "
            "file is read by logging.config.fileConfig (.ini: [loggers], [handlers], [formatters])",
        ) from None

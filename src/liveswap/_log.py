"""Logging: one line per event, tagged with the process's role, pid and generation."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["setup_logging"]

_FORMAT = "%(asctime)s.%(msecs)03dZ liveswap[%(process)d] %(role)s %(levelname)s %(message)s"


def _formatter() -> logging.Formatter:
    # UTC: an app may change its process's time zone (Django sets TZ from TIME_ZONE), and the lines
    # of the supervisor and of its workers must still read on one clock.
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


class _Tag(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "role"):
            record.role = self.role
        return True


def setup_logging(level: str = "info", role: str = "supervisor", access_log: bool = False) -> None:
    """Configure the ``liveswap`` and ``uvicorn`` loggers to write tagged lines to stderr.

    ``role`` is ``supervisor``, ``template`` or ``gen=N`` for a worker of generation N.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter())
    handler.addFilter(_Tag(role))
    numeric = getattr(logging, level.upper(), logging.INFO)
    for name in ("liveswap", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name in ("liveswap", "uvicorn") else []
        logger.propagate = name not in ("liveswap", "uvicorn")
        logger.setLevel(numeric)
    access = logging.getLogger("uvicorn.access")
    access.disabled = not access_log
    if access_log:
        access.handlers = [handler]
        access.propagate = False

"""A plain WSGI function for ``command_bench.py``: ``gunicorn command_wsgi:app``.

The version is read once, at import, from ``version.txt`` beside this file (``0`` when missing), and
sent back in an ``x-app-version`` header, so a client can tell which code answered. Two words in
the version (dash-separated) play a deploy: ``slow`` makes the import take ``SLOW_IMPORT_S`` (a big
app's import), ``raise`` makes it fail (a bad deploy: gunicorn's worker exits with its boot-error
status, 3), after the sleep when both are there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _read_version() -> str:
    try:
        return (Path(__file__).with_name("version.txt").read_text(encoding="ascii").strip()) or "0"
    except FileNotFoundError:
        return "0"


SLOW_IMPORT_S = 1.0
VERSION = _read_version()
_WORDS = VERSION.split("-")
if "slow" in _WORDS:
    time.sleep(SLOW_IMPORT_S)
if "raise" in _WORDS:
    raise RuntimeError(f"bad deploy: the version file says {VERSION!r}")

BODY = f"hello from version {VERSION}\n".encode()
_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(BODY))),
    ("X-App-Version", VERSION),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", list(_HEADERS))
    return [BODY]

"""What the ``liveswap dev`` tests do to a project: save files, and wait for the reload a save makes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import Instance

# The page's refresh script has its hello and is not reloading (the browser tests wait for it).
SETTLED = "window.__liveswap && window.__liveswap.hello && !window.__liveswap.reloading"


def save(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip())


def views(project: Path, value: str) -> None:
    """A new ``pkg/views.py`` whose ``message()`` returns ``value``."""
    save(project / "pkg" / "views.py", f"def message():\n    return {value!r}\n")


def reloaded(inst: Instance, mark: int) -> str:
    """Wait for the next reload's outcome after ``mark``; its log line."""
    m = inst.wait_for(r"reload ok: generation \d+ live|serves the error page until the next save", 20, start=mark)
    return m.group(0)

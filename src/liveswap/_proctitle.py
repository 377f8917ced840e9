"""Process titles, so that ``ps`` tells liveswap's processes apart::

    liveswap: supervisor myapp:app (myapp)
    liveswap: template myapp:app
    liveswap: spare myapp:app
    liveswap: worker gen 3 myapp:app

Every one of them is ``python -m liveswap ...`` or a fork of one otherwise, and a worker forked from
the template would even show the template's command line.
"""

from __future__ import annotations

import setproctitle

__all__ = ["set_title"]


def set_title(text: str) -> None:
    """Set this process's title (``/proc/PID/cmdline``, what ``ps`` and ``top`` show) to ``liveswap: text``."""
    setproctitle.setproctitle(f"liveswap: {text}")

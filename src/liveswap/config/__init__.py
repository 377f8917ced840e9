"""Every option of liveswap, declared once, and how one instance's settings are resolved.

One declaration (``options.Option``) gives the CLI flag, the ``LIVESWAP_*`` environment variable,
the ``[tool.liveswap]`` key in pyproject.toml, the parsed value in :class:`Settings` and the docs
table (``python -m liveswap.config`` prints it). Precedence: CLI flag > environment > pyproject >
default.

Modules: ``options`` (the declarations), ``_parse`` (the value parsers: each refuses what makes no
sense, saying what is expected), ``settings`` (``Settings`` and ``load_settings``).
"""

from __future__ import annotations

from ._parse import MAX_DURATION, parse_duration
from .options import OPTIONS, Option, docs_table, option
from .settings import Settings, load_settings

__all__ = ["MAX_DURATION", "OPTIONS", "Option", "Settings", "docs_table", "load_settings", "option", "parse_duration"]

"""liveswap: run Python web services so that no request is ever lost.

Across code reloads, deploys of new versions, worker crashes and file saves. See the README.
"""

from __future__ import annotations

from .errors import (
    AppLoadError,
    BindError,
    ConfigError,
    ControlError,
    LiveswapError,
    NoInstanceError,
    ReloadFailed,
)

__version__ = "0.1.0"

__all__ = [
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ControlError",
    "LiveswapError",
    "NoInstanceError",
    "ReloadFailed",
    "__version__",
]

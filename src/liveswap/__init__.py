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
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._serve import serve
    from .group import Group

__version__ = "0.1.0"

__all__ = [
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ControlError",
    "Group",
    "LiveswapError",
    "NoInstanceError",
    "__version__",
    "serve",
]


def __getattr__(name: str) -> object:
    # serve and Group import uvicorn: load them on first use, so that the supervisor and the
    # control commands (liveswap reload/status/stop) stay small and start fast.
    # The module is private (_serve): a public submodule named "serve" would replace this
    # attribute with itself whenever something imported it.
    if name == "serve":
        from ._serve import serve

        globals()["serve"] = serve
        return serve
    if name == "Group":
        from .group import Group

        globals()["Group"] = Group
        return Group
    raise AttributeError(f"module 'liveswap' has no attribute {name!r}")

"""liveswap's exceptions. The library raises these; only the CLI turns them into exit codes.

    LiveswapError                 every error liveswap raises on purpose
     |-- ConfigError              an option has a bad value (message says which and what is expected)
     |-- BindError                a listening socket could not be bound or inherited
     |-- AppLoadError             the app could not be imported or is not an ASGI/WSGI app
     '-- ControlError             talking to a running instance failed
          '-- NoInstanceError     no running instance answers on the control socket

Every error carries an optional ``hint``: one line saying what usually fixes it, printed by the CLI
as ``hint: ...`` under the message (as lrt does).
"""

from __future__ import annotations

__all__ = [
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ControlError",
    "LiveswapError",
    "NoInstanceError",
]


class LiveswapError(Exception):
    """Base class of liveswap's errors. ``hint`` says what usually fixes it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(LiveswapError):
    """An option has a bad value."""


class BindError(LiveswapError):
    """A listening socket could not be bound or inherited."""


class AppLoadError(LiveswapError):
    """The app could not be imported, or is not an ASGI or WSGI application."""


class ControlError(LiveswapError):
    """Talking to a running liveswap instance over its control socket failed."""


class NoInstanceError(ControlError):
    """No running liveswap instance answers on the control socket."""

# Removed once supervisor imports from debug.hub (``from .debug.hub import DebugHub``).
from .hub import DebugHub

__all__ = ["DebugHub"]

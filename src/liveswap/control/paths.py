"""Where a liveswap instance's sockets live: one private directory per user.

``$XDG_RUNTIME_DIR/liveswap``, else ``<tmp>/liveswap-<uid>``, mode 0700 and checked to be ours;
in it ``<name>.sock`` (the control socket) and ``<name>.debug/`` (the workers' debug sockets).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ..errors import ControlError

__all__ = ["runtime_dir", "socket_path", "worker_debug_dir"]


def runtime_dir() -> Path:
    """Our per-user directory (created if need be), checked to be ours and private."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        base = Path(xdg) / "liveswap"
    else:
        base = Path(tempfile.gettempdir()) / f"liveswap-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ControlError(
            f"cannot create the runtime directory {base}: {exc.strerror}",
            hint="set XDG_RUNTIME_DIR to a writable directory",
        ) from None
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ControlError(
            f"{base} is not a private directory owned by uid {os.getuid()}",
            hint="remove it (it may have been planted by another user) or set XDG_RUNTIME_DIR",
        )
    return base


def worker_debug_dir(name: str) -> Path:
    """Where the workers of instance ``name`` put their private debug sockets (``<pid>.sock``); the
    supervisor's debug port proxies to them. One definition for both sides."""
    return runtime_dir() / f"{name}.debug"


def socket_path(name: str) -> Path:
    return runtime_dir() / f"{name}.sock"

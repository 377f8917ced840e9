"""Parse and bind the debug server's address: loopback only, unless the operator insists.

    sock = bind_debug("127.0.0.1:6060")      # also "[::1]:6060", "localhost:6060", "unix:/run/app/debug.sock"

The debug endpoints show stacks, source lines, heap contents' origins and let anyone start a
profiler, so a non-loopback TCP address is refused unless ``allow_public=True`` (and then a token
should be set). A unix socket is created mode 0600: only its owner can connect.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat

from ..sockets import BindSyntax, parse_bind
from .errors import DebugAddressInUseError, DebugBindError, DebugPublicAddressError

__all__ = ["bind_debug", "describe_address"]

_BACKLOG = 64
# The forms of --bind but fd://N (the debug server binds its own socket), with a host named: an
# empty host would mean every interface.
_SYNTAX = BindSyntax("debug address", example_port=6060, fd=False, wildcard=False, error=DebugBindError)


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 (Python 3.11 does not see through it)
    return ip.is_loopback


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    if host == "localhost":  # not DNS or /etc/hosts: localhost is loopback, and IPv4 is always there
        return socket.AF_INET, "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DebugBindError(
                f"debug address host {host!r} does not resolve: {exc}", hint="use an IP address such as 127.0.0.1"
            ) from exc
        family, _, _, _, sockaddr = infos[0]
        return family, str(sockaddr[0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def _bind_unix(path: str) -> socket.socket:
    try:
        mode: int | None = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise DebugBindError(
                f"cannot serve the debug server on unix:{path}: the path exists and is not a socket",
                hint="choose another path, or remove the file if it is yours",
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # left behind by a process that died: nobody listens on it
            except OSError as exc:
                raise DebugBindError(
                    f"cannot check whether unix:{path} is in use: {exc}", hint="choose another path"
                ) from exc
            else:
                raise DebugAddressInUseError(
                    f"unix:{path} is in use: another process is listening on it",
                    hint="stop that process or choose another path",
                )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise DebugBindError(
            f"cannot bind the debug server to unix:{path}: {exc}",
            hint="check that the directory exists and is writable, and that the path is shorter than 108 bytes",
        ) from exc
    return sock


def bind_debug(address: str, allow_public: bool = False) -> socket.socket:
    """Bind and listen on ``address`` for the debug server; refuses non-loopback TCP unless ``allow_public``.

    Raises ``DebugBindError`` (a ``ValueError``) with a hint for a malformed, public
    (``DebugPublicAddressError``) or busy (``DebugAddressInUseError``) address.
    The returned socket is listening, so connections queue even before ``DebugServer.start()``.
    """
    address = address.strip()
    spec = parse_bind(address, _SYNTAX)
    if spec.kind == "unix":
        return _bind_unix(spec.path)
    host, port = spec.host, spec.port
    family, ip = _resolve(host, port)
    if not allow_public and not _is_loopback(ipaddress.ip_address(ip)):
        where = host if host == ip else f"{host} ({ip})"
        raise DebugPublicAddressError(
            f"refusing to serve the debug server on {where}: not a loopback address, and its endpoints expose "
            "stacks, heap sites and a profiler to anyone who can reach it",
            hint=f"bind 127.0.0.1:{port} and reach it with 'ssh -L {port or 6060}:127.0.0.1:{port or 6060} host', "
            "or allow a public address explicitly (allow_public) and set a debug token",
        )
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # restart on the same port while old connections sit in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        kind = DebugAddressInUseError if exc.errno == errno.EADDRINUSE else DebugBindError
        raise kind(
            f"cannot bind the debug server to {address}: {exc.strerror or exc}",
            hint="another process (perhaps an earlier liveswap) may hold the port: choose another one, "
            "or port 0 for any free port",
        ) from exc
    return sock


def describe_address(sock: socket.socket) -> str:
    """The socket's address in ``bind_debug`` syntax: ``127.0.0.1:6060``, ``[::1]:6060`` or ``unix:/path``."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name.decode('utf-8', 'replace') if isinstance(name, bytes) else name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"

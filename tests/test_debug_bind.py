"""bind_debug: address forms, the loopback rule, busy addresses, unix sockets."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveswap.debug import DebugAddressInUseError, DebugBindError, bind_debug
from liveswap.debug.bind import describe_address
from liveswap.errors import BindError, LiveswapError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_loopback_ipv4(sockets: list[socket.socket]) -> None:
    sock = bind_debug("127.0.0.1:0")
    sockets.append(sock)
    host, port = sock.getsockname()
    assert host == "127.0.0.1" and port > 0
    assert describe_address(sock) == f"127.0.0.1:{port}"
    # listening already: a client can connect before the server thread runs
    with socket.create_connection((host, port), timeout=5):
        pass


def test_localhost_means_ipv4_loopback(sockets: list[socket.socket]) -> None:
    sock = bind_debug(" localhost:0 ")
    sockets.append(sock)
    assert sock.family == socket.AF_INET and sock.getsockname()[0] == "127.0.0.1"


def test_loopback_ipv6(sockets: list[socket.socket]) -> None:
    if not ipv6_loopback_available():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    sock = bind_debug("[::1]:0")
    sockets.append(sock)
    assert sock.family == socket.AF_INET6
    assert describe_address(sock) == f"[::1]:{sock.getsockname()[1]}"


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0", "192.0.2.10:6060", "[::ffff:10.0.0.1]:6060"])
def test_public_addresses_are_refused_with_a_hint(address: str) -> None:
    with pytest.raises(DebugBindError) as info:
        bind_debug(address)
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, BindError) and isinstance(exc, LiveswapError)
    assert "not a loopback address" in str(exc)
    assert exc.hint is not None and "127.0.0.1" in exc.hint and "allow_public" in exc.hint


def test_ipv4_mapped_loopback_counts_as_loopback() -> None:
    if not ipv6_loopback_available():
        pytest.skip("this machine has no IPv6")
    try:
        sock = bind_debug("[::ffff:127.0.0.1]:0")
    except DebugBindError as exc:  # refused by the kernel is fine; refused by our rule is not
        assert "loopback" not in str(exc)
    else:
        sock.close()


def test_public_address_with_allow_public(sockets: list[socket.socket]) -> None:
    sock = bind_debug("0.0.0.0:0", allow_public=True)
    sockets.append(sock)
    assert sock.getsockname()[0] == "0.0.0.0"


@pytest.mark.parametrize(
    ("address", "hint_part"),
    [
        ("6060", "HOST:PORT"),
        ("localhost", "HOST:PORT"),
        (":6060", "127.0.0.1:6060"),
        ("127.0.0.1:http", "port 0 picks a free port"),
        ("127.0.0.1:70000", "port 0 picks a free port"),
        ("::1:6060", "[::1]:6060"),
        ("[::1]6060", "[::1]:6060"),
        ("unix:", "unix:/"),
    ],
)
def test_malformed_addresses_are_explained(address: str, hint_part: str) -> None:
    with pytest.raises(DebugBindError) as info:
        bind_debug(address)
    assert info.value.hint is not None and hint_part in info.value.hint, info.value.hint


def test_a_port_in_use_is_explained(sockets: list[socket.socket]) -> None:
    first = bind_debug("127.0.0.1:0")
    sockets.append(first)
    port = first.getsockname()[1]
    with pytest.raises(DebugAddressInUseError) as info:
        bind_debug(f"127.0.0.1:{port}")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EADDRINUSE
    assert info.value.hint is not None and "port 0" in info.value.hint


def test_unix_socket_is_private(tmp_path: Path, sockets: list[socket.socket]) -> None:
    path = tmp_path / "debug.sock"
    sock = bind_debug(f"unix:{path}")
    sockets.append(sock)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert describe_address(sock) == f"unix:{path}"


def test_unix_socket_left_by_a_dead_process_is_replaced(tmp_path: Path, sockets: list[socket.socket]) -> None:
    path = tmp_path / "debug.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closed without unlinking: nobody listens on the path any more
    sock = bind_debug(f"unix:{path}")
    sockets.append(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))


def test_unix_socket_in_use_is_refused(tmp_path: Path, sockets: list[socket.socket]) -> None:
    path = tmp_path / "debug.sock"
    sockets.append(bind_debug(f"unix:{path}"))
    with pytest.raises(DebugAddressInUseError, match="in use"):
        bind_debug(f"unix:{path}")


def test_unix_path_that_is_a_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(DebugBindError, match="not a socket"):
        bind_debug(f"unix:{path}")
    assert path.read_text() == "keep me"

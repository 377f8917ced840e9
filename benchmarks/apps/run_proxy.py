"""liveswap's proxy alone, in front of one upstream: ``python run_proxy.py PORT UPSTREAM_PORT [asyncio|uvloop]``.

Binds 127.0.0.1:PORT, serves a ``ProxyServer`` (ProxyApp with one Upstream) on it, and stops on
SIGTERM (a graceful close). The loop is plain asyncio by default: the supervisor, which runs the
proxy, runs asyncio's loop.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from liveswap.proxy import ProxyApp, ProxyServer, Upstream


async def main(port: int, upstream_port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    app = ProxyApp()
    app.add(Upstream("bench upstream", "127.0.0.1", upstream_port))
    server = ProxyServer([sock], app, access_log=False)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close(5.0)
    sock.close()


if __name__ == "__main__":
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    loop = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    if loop == "uvloop":
        import uvloop

        uvloop.run(main(port, upstream_port))
    else:
        asyncio.run(main(port, upstream_port))

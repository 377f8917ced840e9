"""A client that stops reading a streamed WSGI response does not hold a ``--threads 1`` worker forever.

The stream thread waits while the transport is full; past ``--worker-timeout`` of no progress the
connection is cut (gunicorn's timeout would kill the sync worker instead), and the worker's one
thread serves the next request.
"""

from __future__ import annotations

import socket
import time

import httpx
from conftest import MakeInstance

PEP = "wsgi_pep3333:application"


def test_a_client_that_stops_reading_a_stream_is_cut_off(liveswap: MakeInstance) -> None:
    inst = liveswap(PEP, args=["--threads", "1", "--worker-timeout", "2"])
    url = f"http://{inst.host}:{inst.port}"
    with socket.create_connection((inst.host, inst.port), timeout=10) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled.sendall(f"GET /raw/stream?mb=400 HTTP/1.1\r\nhost: {inst.host}\r\n\r\n".encode())
        assert stalled.recv(4096).startswith(b"HTTP/1.1 200")  # streaming; now it reads nothing
        mark = inst.mark()
        started = time.monotonic()
        # The worker's one thread is the stream's: this request waits until the stall is cut.
        r = httpx.get(f"{url}/hello", timeout=20)
        waited = time.monotonic() - started
        assert r.status_code == 200
        inst.wait_for("the client read nothing for 2 s; connection closed", timeout=5, start=mark)
        assert waited < 10, f"the next request waited {waited:.1f} s"
        stalled.settimeout(10)
        try:
            while stalled.recv(1 << 20):  # what was in flight, then the end: it was cut
                pass
        except ConnectionResetError:
            pass

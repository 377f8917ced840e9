"""``liveswap.serve`` on the benchmark app with every protection on: ``python run_serve.py PORT``.

The defaults enable the header timeout, the 431 limit, max connections and the drain on signals;
``debug="127.0.0.1:0"`` adds the debug server (and its metrics middleware) on a free loopback
port, which serve() logs at info level ("debug server on http://127.0.0.1:N/"): the benchmark
reads it there. Nothing is logged per request at info (the access log is off).

    --no-debug   debug=None: no debug server, and so no metrics middleware either
"""

from __future__ import annotations

import sys

from bench_app import app

import liveswap

if __name__ == "__main__":
    port, flags = int(sys.argv[1]), set(sys.argv[2:])
    if flags - {"--no-debug"}:
        sys.exit(f"unknown option(s) {sorted(flags - {'--no-debug'})}; expected --no-debug")
    debug = None if "--no-debug" in flags else "127.0.0.1:0"
    liveswap.serve(app, f"127.0.0.1:{port}", debug=debug, log_level="info")

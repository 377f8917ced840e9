"""The benchmark app as a small Flask app: ``bench_flask:app``.

The same contract as ``bench_app``: ``VERSION`` is read once, at import, from the file named by
``BENCH_VERSION_FILE`` (``0`` when unset) and sent back in an ``x-app-version`` header; a POST
body is read fully (``request.get_data()``). Flask is imported by the app, so every new worker
imports it after a reload, under every server alike (no server here preloads it).
"""

from __future__ import annotations

import os

from flask import Flask, Response, request


def _read_version() -> str:
    path = os.environ.get("BENCH_VERSION_FILE")
    if not path:
        return "0"
    with open(path, encoding="ascii") as f:
        return f.read().strip() or "0"


VERSION = _read_version()
BODY = f"hello from version {VERSION}\n".encode()

app = Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def index() -> Response:
    if request.method == "POST":
        request.get_data()
    return Response(BODY, headers={"X-App-Version": VERSION}, content_type="text/plain; charset=utf-8")

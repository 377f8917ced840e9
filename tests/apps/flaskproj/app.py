"""Flask routes that WSGI servers get wrong: a 20 MB upload (checked by hash), ``send_file``, a
streamed response (``stream_with_context``), a redirect and an exception.

``app`` serves the routes as deployed (an exception is Flask's plain 500) and, mounted under
``/debug`` (so with ``SCRIPT_NAME=/debug``), the same routes under Werkzeug's debugger as
``flask run --debug`` serves them: an exception shows its traceback page.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, redirect, request, send_file, stream_with_context, url_for
from werkzeug.debug import DebuggedApplication
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response as BaseResponse
from wsgi_pep3333 import MIB, file_of, pattern  # type: ignore[import-not-found]  # tests/apps is the app dir

routes = Blueprint("routes", __name__)


@routes.get("/")
def index() -> Response:
    return Response(f"flask pid={os.getpid()}\n", mimetype="text/plain")


@routes.post("/upload")
def upload() -> Response:
    """A multipart upload (``file``): its length and sha256, read as Flask's users do."""
    stored = request.files["file"]
    h, total = hashlib.sha256(), 0
    while chunk := stored.stream.read(MIB):
        h.update(chunk)
        total += len(chunk)
    return Response(f"len={total} sha256={h.hexdigest()} name={stored.filename}\n", mimetype="text/plain")


@routes.post("/echo-hash")
def echo_hash() -> Response:
    """A raw body (any length, chunked too), read with ``request.stream``."""
    h, total = hashlib.sha256(), 0
    while chunk := request.stream.read(MIB):
        h.update(chunk)
        total += len(chunk)
    return Response(f"len={total} sha256={h.hexdigest()}\n", mimetype="text/plain")


@routes.get("/download")
def download() -> Response:
    size = request.args.get("size", 1000, type=int)
    return send_file(file_of(size), mimetype="application/octet-stream", as_attachment=True, download_name="data.bin")


@routes.get("/stream")
def stream() -> Response:
    n = request.args.get("n", 5, type=int)

    def items() -> Iterator[bytes]:
        for i in range(n):
            # request is still usable inside the generator: that is what stream_with_context is for
            yield f"item {i} of {request.args.get('n', '5')}\n".encode()

    return Response(stream_with_context(items()), mimetype="text/plain")


@routes.get("/big")
def big() -> Response:
    mb = request.args.get("mb", 1, type=int)
    base = pattern(MIB)
    return Response((base for _ in range(mb)), mimetype="application/octet-stream")


@routes.get("/redirect")
def go_elsewhere() -> BaseResponse:
    return redirect(url_for(".target", x="1"))


@routes.get("/target")
def target() -> Response:
    return Response(f"target x={request.args.get('x')} script_name={request.script_root!r}\n", mimetype="text/plain")


@routes.get("/boom")
def boom() -> Response:
    raise ZeroDivisionError("flaskproj boom on purpose")


def create_app(debug: bool = False) -> Flask:
    flask_app = Flask(__name__)
    flask_app.debug = debug  # exceptions propagate to the debugger instead of Flask's plain 500
    flask_app.register_blueprint(routes)
    return flask_app


plain = create_app()
app = DispatcherMiddleware(plain, {"/debug": DebuggedApplication(create_app(debug=True), evalex=False)})

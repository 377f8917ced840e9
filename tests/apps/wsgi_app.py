"""A plain WSGI app (no framework): liveswap must detect it and adapt it with a2wsgi."""

import os


def application(environ, start_response):  # type: ignore[no-untyped-def]
    body = f"wsgi {environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Worker-Pid", str(os.getpid()))])
    return [body]


def create_app():  # type: ignore[no-untyped-def]
    return application

"""``python -m liveswap.dev.errorserver``: the error page of ``liveswap dev -- COMMAND``.

When a command's new code fails (its build, its start or its health check), the proxy routes to
this process instead, on its own private ``$PORT``: every request gets the failure at once (HTML,
JSON or text, as for Python apps) until the next save. The failure comes as JSON in
``LIVESWAP_ERROR_PAGE``.
"""

from __future__ import annotations

import os

import uvicorn

from .errorpage import Failure, error_app


def main() -> None:
    failure = Failure.from_json(os.environ["LIVESWAP_ERROR_PAGE"])
    app = error_app(failure, refresh=False)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()

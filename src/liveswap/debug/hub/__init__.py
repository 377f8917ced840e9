"""The debug port of ``liveswap run``: served by the supervisor, for every worker.

Workers cannot all bind one port, so each serves its own debug endpoints on a private unix socket
(``<runtime dir>/<name>.debug/<pid>.sock``, see ``worker/main.py``) and the supervisor serves the
public one:

    /                         index: the generations and their workers, with links
    /status                   the supervisor's status (what ``liveswap status --json`` shows)
    /metrics                  every worker's request metrics summed, plus the supervisor's own
    /workers/<pid>/<rest>     proxied to that worker's debug server: /stacks, /profile, /heap ...

It runs in the supervisor's event loop on asyncio streams and h11 (sans-IO HTTP/1.1). The supervisor
never imports uvicorn (its memory budget is 40 MB RSS), and its loop never blocks, so no thread.

    hub = DebugHub.bind("127.0.0.1:6060", name="myapp", status=supervisor.status, token=None)
    await hub.start()
    ...
    await hub.close()

Modules: ``server`` (the port, its routes and pages), ``connection`` (one client, HTTP/1.1 with h11),
``proxy`` (requests to the workers' sockets), ``metrics`` (the summed ``/metrics``).
"""

from .server import DebugHub

__all__ = ["DebugHub"]

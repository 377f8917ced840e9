"""The template process: a warm interpreter that forks workers on request.

It imports liveswap's worker runtime, uvicorn and the ``--preload`` libraries once, but never the
app itself, so a forked worker imports the app's current code and boots in milliseconds instead
of paying for a fresh interpreter. Each worker is forked twice so that it is re-parented to the
supervisor (a child subreaper): the supervisor reaps it and sees its exit status, and a crash of
the template takes no worker with it.

If a file of anything it preloaded has changed since (a deploy upgraded a library), it answers
``stale`` and exits; the supervisor starts a fresh template. New code always runs. A spare is handed
its request first and checked for meanwhile (the stat of every file takes a few ms): its worker
imports the app, then waits for the verdict before it runs anything else or writes to any channel,
and a stale template's worker exits unseen.

Protocol on the SOCK_SEQPACKET pair (one JSON object per message):
  template -> supervisor  {"op": "ready", "import_ms": ...}
  supervisor -> template  {"op": "spawn", "id": N, "env": {...}}
                          with SCM_RIGHTS [control_fd, health_fd, listener_fd, ...]

The listening sockets travel with each spawn request: neither the template nor a spare holds one,
so when the service stops, the workers are the last holders and answer what is queued.
  template -> supervisor  {"op": "spawned", "id": N, "pid": P} (sent by the intermediate process)
                          | {"op": "stale", "id": N} | {"op": "error", "id": N, "error": "..."}
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from liveswap._os import adopted_by, die_with_parent

MAX_FDS = 2 + 64  # control, health and up to 64 listening sockets per spawn request


def _fingerprint() -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            try:
                st = os.stat(path)
            except OSError:
                continue
            files[path] = (st.st_mtime_ns, st.st_size)
    return files


def _stale(files: dict[str, tuple[int, int]]) -> bool:
    for path, sig in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != sig:
            return True
    return False


def _recv(chan: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = chan.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    if not msg:
        raise EOFError
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return json.loads(msg), list(fds)


def _spawn(chan: socket.socket, supervisor: int, request: dict[str, Any], fds: list[int], spares: list[_Spare]) -> None:
    """Double-fork a worker. The intermediate process reports the worker's pid to the supervisor
    itself, so the template can fork the next worker of the generation right away."""
    middle = os.fork()
    if middle == 0:
        try:
            pid = os.fork()
            if pid == 0:
                for spare in spares:
                    spare.sock.close()
                _become_worker(chan, supervisor, request, fds)
            chan.send(json.dumps({"op": "spawned", "id": request.get("id"), "pid": pid}).encode())
        except OSError as exc:
            chan.send(json.dumps({"op": "error", "id": request.get("id"), "error": str(exc)}).encode())
        finally:
            os._exit(0)
    for fd in fds:
        os.close(fd)


def _reap() -> None:
    """Collect exited intermediates (each lives only for one fork)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_worker(chan: socket.socket | None, supervisor: int, request: dict[str, Any], fds: list[int]) -> None:
    code = 1
    try:
        if chan is not None:
            chan.close()
        # Our parent (the intermediate) is exiting; we become the supervisor's child when it is
        # gone. The worker checks that (and asks to die with the supervisor) before it reports
        # ready: waiting here would put the intermediate's exit on every reload's critical path.
        os.environ["LIVESWAP_SUPERVISOR_PID"] = str(supervisor)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control_fd, health_fd, *listen_fds = fds
        os.environ.update(request["env"])
        os.environ["LIVESWAP_LISTEN_FDS"] = ",".join(map(str, listen_fds))
        os.environ["LIVESWAP_CONTROL_FD"] = str(control_fd)
        os.environ["LIVESWAP_HEALTH_FD"] = str(health_fd)
        from liveswap.worker.main import main

        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, never return into the template's loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


QUIET = 0.05  # seconds without a spawn request before the template forks new spares


class _Spare:
    """A worker forked ahead of time: re-parented to the supervisor, the app not imported, waiting
    on its socket for the spawn request that makes it a worker. No fork on a reload's critical path."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


def _fork_spare(chan: socket.socket, supervisor: int, others: list[_Spare], app: str = "?") -> _Spare:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    middle = os.fork()
    if middle == 0:
        try:
            pid = os.fork()
            if pid == 0:
                ours.close()
                chan.close()
                for other in others:  # else a spare would keep the others from seeing the template go
                    other.sock.close()
                _spare_main(theirs, supervisor, app)
            theirs.send(str(pid).encode())
        finally:
            os._exit(0)
    theirs.close()
    pid = int(ours.recv(64) or b"0")
    with contextlib.suppress(ChildProcessError):  # (the SIGCHLD handler may have reaped it already)
        os.waitpid(middle, 0)
    if not pid:
        ours.close()
        raise OSError("fork failed in the intermediate process")
    return _Spare(pid, ours)


def _spare_main(sock: socket.socket, supervisor: int, app: str) -> None:
    code = 0
    try:
        from liveswap._proctitle import set_title

        set_title(f"spare {app}")
        adopted_by(supervisor)  # while waiting: off the critical path
        try:
            request, fds = _recv(sock)
        except (EOFError, ConnectionError):
            os._exit(0)  # the template closed: not needed any more
        os.environ["LIVESWAP_VERDICT_FD"] = str(sock.detach())  # fresh or stale: see _verdict
        _become_worker(None, supervisor, request, fds)
    except BaseException:  # noqa: BLE001 - never return into the template's code
        code = 1
    os._exit(code)


def _dispatch(spare: _Spare, request: dict[str, Any], fds: list[int]) -> None:
    payload = json.dumps(request).encode()
    try:
        spare.sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
    except OSError:
        spare.sock.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _verdict(spare: _Spare, stale: bool) -> None:
    """Tell a dispatched spare's worker whether it may go on (``worker.main`` waits for this)."""
    with contextlib.suppress(OSError):
        spare.sock.send(b"stale" if stale else b"fresh")
    spare.sock.close()


def _pending(chan: socket.socket, wait: float) -> bool:
    readable, _, _ = select.select([chan], [], [], wait)
    return bool(readable)


def _setup_logging() -> str:
    """Logging as the supervisor's options say, and the process title; the app's name."""
    from liveswap._log import setup_logging
    from liveswap._proctitle import set_title

    log = json.loads(os.environ.pop("LIVESWAP_TEMPLATE_LOG", "{}"))
    app = str(log.get("app", "?"))
    set_title(f"template {app}")
    setup_logging(
        log.get("level", "info"), "template", log_format=log.get("format", "text"), log_config=log.get("config", "")
    )
    return app


def main() -> None:
    supervisor = int(os.environ.pop("LIVESWAP_SUPERVISOR_PID"))
    chan = socket.socket(fileno=int(os.environ.pop("LIVESWAP_TEMPLATE_FD")))
    die_with_parent(supervisor)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # group-wide signals are the supervisor's to act on
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Reap each intermediate as it exits, not at the next request: until then it would stay a zombie
    # (workers and spares reset SIGCHLD in _become_worker).
    signal.signal(signal.SIGCHLD, lambda signum, frame: _reap())
    started = time.perf_counter()
    app = _setup_logging()
    # Everything a worker needs before it imports the app; never the app itself.
    import liveswap.worker.main  # noqa: F401
    from liveswap.http.server import warm_up

    warm_up()

    preload_errors = []
    for name in json.loads(os.environ.pop("LIVESWAP_PRELOAD", "[]")):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a bad --preload must not stop the service
            preload_errors.append(f"{name}: {type(exc).__name__}: {exc}")
    import_ms = (time.perf_counter() - started) * 1000
    files = _fingerprint()
    # Move everything imported so far out of the collector's reach: a worker's first collections
    # then do not write to (and so copy) every page it shares with the template.
    gc.collect()
    gc.freeze()
    checked = 0.0
    want = int(os.environ.pop("LIVESWAP_SPARES", "0"))
    spares: list[_Spare] = []
    if threading.active_count() > 1:  # forking a process with threads can deadlock its children
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        preload_errors.append(f"the template has threads after its imports ({names}): forking it is unsafe")
    modules = sorted(name for name in sys.modules if "." not in name)
    chan.send(
        json.dumps(
            {"op": "ready", "import_ms": import_ms, "preload_errors": preload_errors, "modules": modules}
        ).encode()
    )
    while True:
        # Refill the pool only once the channel has been quiet for a moment: the other workers of
        # a generation are asked for within milliseconds of the first, and come first.
        while len(spares) < want and not _pending(chan, QUIET):
            try:
                spares.append(_fork_spare(chan, supervisor, spares, app))
            except OSError:
                break
        try:
            request, fds = _recv(chan)
        except (EOFError, ConnectionError):
            return
        rid = request.get("id")
        # One check per generation: the other workers' requests arrive within milliseconds.
        now = time.monotonic()
        check, stale = now - checked > 0.05, False
        if check:
            checked = now
        try:
            if spares:
                spare = spares.pop(0)
                _dispatch(spare, request, fds)  # the worker starts on the app while we check
                stale = check and _stale(files)
                if not stale:  # first: a worker told "fresh" is one the supervisor knows of
                    chan.send(json.dumps({"op": "spawned", "id": rid, "pid": spare.pid}).encode())
                _verdict(spare, stale)
            elif check and _stale(files):
                stale = True
                for fd in fds:
                    os.close(fd)
            else:
                _spawn(chan, supervisor, request, fds, spares)
            if stale:
                chan.send(json.dumps({"op": "stale", "id": rid}).encode())
                return
        except OSError as exc:
            chan.send(json.dumps({"op": "error", "id": rid, "error": str(exc)}).encode())
        _reap()


if __name__ == "__main__":
    main()

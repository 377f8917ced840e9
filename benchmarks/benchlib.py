"""Helpers for the benchmarks: the servers under test, loopback HTTP probes, wrk, /proc.

Everything here is bounded in time and targets 127.0.0.1 only. Every server is started in its own
session (its own process group) and stopped by that group id, so nothing else is ever signalled.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS_DIR = HERE / "apps"
APP_SOURCE = APPS_DIR / "bench_app.py"
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent  # the venv's bin: liveswap, gunicorn, uvicorn
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    pass


# ---- small utilities ----------------------------------------------------------------------------
def free_port() -> int:
    """A port that was free a moment ago. The servers under test bind their own sockets, as their
    users run them, so we cannot hand them a bound socket; the race is accepted (loopback only)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    """Direct children of pid (all threads)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return kids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(dist)
        except Exception:  # noqa: BLE001 - informational only
            return "?"

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        # Others may be editing the tree while we run: say which source files differ from the commit.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=HERE.parent, capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
    except OSError:
        commit, dirty = "", []
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "liveswap": version("liveswap"),
        "uvicorn": version("uvicorn"),
        "gunicorn": version("gunicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].strip() if (wrk.stdout + wrk.stderr) else "?",
        "git_commit": commit,
        "git_uncommitted_src": [line.strip() for line in dirty],
        # What the servers import: the working tree's src (the editable install), or a snapshot
        # (--snapshot, see snapshot_src), in which case git_uncommitted_src does not apply.
        "liveswap_imported_from": imported_from(),
        "liveswap_snapshot_of": os.environ.get("LIVESWAP_BENCH_SNAPSHOT", ""),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def imported_from() -> str:
    """Where a fresh interpreter with our environment imports liveswap from (as the servers do)."""
    r = subprocess.run(
        [sys.executable, "-c", "import liveswap; print(liveswap.__file__)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() or f"? ({r.stderr.strip().splitlines()[-1:]})"


def snapshot_src(commit: str) -> Path:
    """Export ``src/`` at ``commit`` (``git archive``: reads the repository, touches neither the
    working tree nor the index) to a temp dir and put it first on PYTHONPATH, for this process's
    children: every server then runs that commit's liveswap, whatever others are editing in the
    working tree meanwhile (a supervisor that imports a module renamed under it fails). Returns the
    snapshot's root, which the caller removes."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix=f"liveswap-src-{full[:8]}-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", full, "src"], cwd=HERE.parent, capture_output=True, timeout=60, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True, timeout=60)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")]))
    os.environ["LIVESWAP_BENCH_SNAPSHOT"] = full
    return root


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# ---- the apps under test ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AppKind:
    """One benchmark app: its module in apps/ and its ASGI and/or WSGI attribute.

    Every app reads its version at import from ``BENCH_VERSION_FILE`` and answers with it in an
    ``x-app-version`` header. ``servers`` are the servers the load phase runs it under: ASGI apps
    under gunicorn's UvicornWorker, WSGI apps under gunicorn's sync and gthread workers and uvicorn's
    ``--interface wsgi``; liveswap runs both (it detects WSGI and adapts it with a2wsgi).
    """

    name: str
    module: str
    asgi: str | None
    wsgi: str | None
    servers: tuple[str, ...]
    streams: bool = False

    @property
    def source(self) -> Path:
        return APPS_DIR / f"{self.module}.py"

    def target(self, server: str) -> str:
        """``module:attr`` for a server kind: gunicorn's sync and gthread workers take the WSGI
        callable, gunicorn's UvicornWorker the ASGI one; liveswap and uvicorn the ASGI one if there
        is one (the existing scenarios), else the WSGI one."""
        if server in ("gunicorn-sync", "gunicorn-gthread"):
            attr = self.wsgi
        elif server == "gunicorn-uvicorn":
            attr = self.asgi
        else:
            attr = self.asgi or self.wsgi
        if attr is None:
            raise ValueError(f"app {self.name} cannot run under {server}")
        return f"{self.module}:{attr}"

    def interface(self, server: str) -> str:
        """``asgi`` or ``wsgi``: what ``target(server)`` is."""
        return "asgi" if self.asgi and server not in ("gunicorn-sync", "gunicorn-gthread") else "wsgi"


WSGI_SERVERS = ("liveswap", "gunicorn-sync", "gunicorn-gthread", "uvicorn-reload")
APP_KINDS: dict[str, AppKind] = {
    # the original scenario: an ASGI app, and its WSGI twin for gunicorn's sync workers
    "asgi": AppKind(
        "asgi", "bench_app", "app", "wsgi_app", ("liveswap", "gunicorn-uvicorn", "uvicorn-reload", "gunicorn-sync")
    ),
    "wsgi": AppKind("wsgi", "bench_wsgi", None, "app", WSGI_SERVERS),
    "flask": AppKind("flask", "bench_flask", None, "app", WSGI_SERVERS),
    "stream-asgi": AppKind(
        "stream-asgi", "bench_stream", "app", None, ("liveswap", "gunicorn-uvicorn", "uvicorn-reload"), streams=True
    ),
    "stream-wsgi": AppKind("stream-wsgi", "bench_stream", None, "wsgi_app", WSGI_SERVERS, streams=True),
}


# ---- HTTP probes ----------------------------------------------------------------------------------
_VERSION_RE = re.compile(rb"\r\nx-app-version:\s*([^\r]*)\r\n", re.I)


def probe(port: int, timeout: float = 2.0) -> tuple[int, str]:
    """One GET on a fresh loopback connection: (status, x-app-version). Raises OSError on failure."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    if not buf.startswith(b"HTTP/1."):
        raise ConnectionError(f"no HTTP response ({len(buf)} bytes)")
    status = int(buf[9:12])
    m = _VERSION_RE.search(buf)
    return status, (m.group(1).decode() if m else "")


def wait_for_version(
    port: int, version: str | None, deadline: float, interval: float = 0.001, errors: list[str] | None = None
) -> float:
    """Poll with fresh connections every ``interval`` until a 200 carries ``version`` (any version if
    None); returns perf_counter() at that response. Failed probes are appended to ``errors``."""
    while True:
        try:
            status, got = probe(port)
            if status == 200 and (version is None or got == version):
                return time.perf_counter()
        except OSError as exc:
            if errors is not None:
                errors.append(type(exc).__name__)
        if time.perf_counter() > deadline:
            raise BenchError(f"port {port}: version {version!r} not served before the deadline")
        time.sleep(interval)


@dataclass
class RaceResult:
    """What ``race_for_version`` saw: when the new version first answered, and the probes on the way."""

    t_new: float  # perf_counter() when the head of the first 200 carrying the version arrived
    probes: int = 0  # connections opened
    old_answers: int = 0  # complete answers from other versions
    errors: dict[str, int] = field(default_factory=dict)  # failed probes by kind
    max_open: int = 0  # most probes in flight at once


def race_for_version(port: int, version: str, deadline: float, interval: float = 0.0005, limit: int = 8) -> RaceResult:
    """Open a fresh loopback connection every ``interval`` seconds, whether or not the earlier ones
    have been answered, each sending one ``GET /`` with ``Connection: close`` as soon as it is
    connected, until the head of a 200 carrying ``version`` arrives.

    A sequential prober cannot start a probe while the previous one waits in a server's accept
    queue or behind other requests, so its resolution is the slowest probe's latency; here it is
    ``interval`` plus one answer. At most ``limit`` probes are in flight: more would only queue up
    in front of the server's workers and measure the prober's own backlog (a sync worker serves one
    connection at a time). Probes still in flight at the end are closed unanswered.
    """
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytearray] = {}
    res = RaceResult(t_new=0.0)

    def fail(s: socket.socket, kind: str) -> None:
        res.errors[kind] = res.errors.get(kind, 0) + 1
        drop(s)

    def drop(s: socket.socket) -> None:
        with_key = bufs.pop(s, None) is not None
        if with_key:
            sel.unregister(s)
        s.close()

    next_at = time.perf_counter()
    try:
        while True:
            now = time.perf_counter()
            if now > deadline:
                raise BenchError(
                    f"port {port}: version {version!r} not served before the deadline "
                    f"({res.probes} probes, errors {res.errors})"
                )
            if now >= next_at and len(bufs) < limit:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                res.probes += 1
                err = s.connect_ex((HOST, port))
                if err in (0, errno.EINPROGRESS):
                    bufs[s] = bytearray()
                    res.max_open = max(res.max_open, len(bufs))
                    try:  # loopback connects at once, as a rule: send now, not a select round later
                        sent = s.send(request)
                    except (BlockingIOError, OSError):
                        sent = -1
                    if sent == len(request):
                        sel.register(s, selectors.EVENT_READ, s)
                    elif sent > 0:
                        sel.register(s, selectors.EVENT_READ, s)
                        fail(s, "short write")
                    else:
                        sel.register(s, selectors.EVENT_WRITE, s)
                else:
                    kind = errno.errorcode.get(err, str(err))
                    res.errors[kind] = res.errors.get(kind, 0) + 1
                    s.close()
                next_at = max(next_at + interval, now)  # no catch-up bursts after a slow select
            # At the limit, wait for an answer (which frees a slot) instead of spinning.
            timeout = max(0.0, next_at - time.perf_counter()) if len(bufs) < limit else 0.05
            for key, events in sel.select(timeout):
                s = key.data
                if events & selectors.EVENT_WRITE and key.events == selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(s, errno.errorcode.get(err, str(err)))
                        continue
                    try:
                        sent = s.send(request)
                    except OSError as exc:
                        fail(s, type(exc).__name__)
                        continue
                    if sent != len(request):
                        fail(s, "short write")
                        continue
                    sel.modify(s, selectors.EVENT_READ, s)
                    continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(s, type(exc).__name__)
                    continue
                buf = bufs[s]
                if not data:
                    if buf.startswith(b"HTTP/1.") and b"\r\n\r\n" in buf:
                        res.old_answers += 1  # an answer from other code, read to its end
                        drop(s)
                    else:
                        fail(s, "closed before response")
                    continue
                head_done = b"\r\n\r\n" in buf
                buf += data
                if not head_done and b"\r\n\r\n" in buf:
                    t = time.perf_counter()
                    m = _VERSION_RE.search(bytes(buf))
                    if buf.startswith(b"HTTP/1.") and buf[9:12] == b"200" and m and m.group(1).decode() == version:
                        res.t_new = t
                        return res
    finally:
        for s in list(bufs):
            drop(s)
        sel.close()


# ---- wrk -------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int = 0
    rps: float = 0.0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non2xx: int = 0
    latency_avg: str = ""
    raw: str = ""

    @property
    def failures(self) -> int:
        return self.connect + self.read + self.write + self.timeout + self.non2xx

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "raw"}
        d["failures"] = self.failures
        return d


def parse_wrk(out: str) -> WrkResult:
    r = WrkResult(raw=out)
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    r.requests = int(m.group(1))
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    r.rps = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r.connect, r.read, r.write, r.timeout = (int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r.non2xx = int(m.group(1))
    m = re.search(r"Latency\s+(\S+)", out)
    r.latency_avg = m.group(1) if m else ""
    return r


WRK_POST = HERE / "wrk_post.lua"


def wrk_start(
    port: int, duration: float, threads: int, conns: int, close: bool = False, post: bool = False
) -> subprocess.Popen[str]:
    """wrk with keep-alive GETs, ``close``: Connection: close, ``post``: keep-alive 1 KiB POSTs."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "2s"]
    if close:
        argv += ["-H", "Connection: close"]
    if post:
        argv += ["-s", str(WRK_POST)]
    argv.append(f"http://{HOST}:{port}/")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wrk_finish(proc: subprocess.Popen[str], duration: float) -> WrkResult:
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise BenchError("wrk did not finish in time") from None
    return parse_wrk(out)


def run_wrk(port: int, duration: float, threads: int = 2, conns: int = 32, close: bool = False) -> WrkResult:
    return wrk_finish(wrk_start(port, duration, threads, conns, close), duration)


# ---- the servers under test ------------------------------------------------------------------------
@dataclass
class Server:
    """One server process under test, with its own app directory, version file and log file.

    kind: liveswap | gunicorn-uvicorn | gunicorn-sync | gunicorn-gthread | uvicorn-reload | uvicorn
    app: a key of APP_KINDS (default ``asgi``: bench_app, as before)
    """

    kind: str
    workers: int = 2
    port: int = 0
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="liveswap-bench-")))
    proc: subprocess.Popen[bytes] | None = None
    version: int = 0
    name: str = ""
    extra_args: list[str] = field(default_factory=list)
    app: str = "asgi"
    gthread_threads: int = 4

    def __post_init__(self) -> None:
        os.chmod(self.tmp, 0o700)
        self.app_dir = self.tmp / "app"
        self.app_dir.mkdir()
        self.runtime = self.tmp / "run"  # XDG_RUNTIME_DIR for liveswap's control socket
        self.runtime.mkdir(mode=0o700)
        self.version_file = self.app_dir / "VERSION"
        self.app_kind = APP_KINDS[self.app]
        self.app_source = self.app_kind.source
        self.app_file = self.app_dir / self.app_source.name
        shutil.copyfile(self.app_source, self.app_file)
        self.log_path = self.tmp / "server.log"
        self.name = self.name or f"bench-{os.getpid()}-{self.tmp.name[-6:]}"
        self.set_version(1)

    # -- version --
    def set_version(self, v: int) -> None:
        self.version = v
        tmp = self.version_file.with_suffix(".tmp")
        tmp.write_text(f"{v}\n")
        os.replace(tmp, self.version_file)

    def touch_app(self) -> None:
        """Rewrite the app file (new content, so any watcher sees a real change)."""
        source = self.app_source.read_text() + f"# bench version {self.version}\n"
        self.app_file.write_text(source)

    # -- process --
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BENCH_VERSION_FILE"] = str(self.version_file)
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the app file changes; keep every server on equal terms
        env.pop("LISTEN_FDS", None)
        env.pop("LISTEN_PID", None)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def argv(self) -> list[str]:
        return self._argv() + self.extra_args

    def _argv(self) -> list[str]:
        addr = f"{HOST}:{self.port}"
        w = str(self.workers)
        target = self.app_kind.target(self.kind)
        if self.kind == "liveswap":
            return [
                str(BIN / "liveswap"),
                "run",
                target,
                "--bind",
                addr,
                "--workers",
                w,
                "--name",
                self.name,
                "--app-dir",
                str(self.app_dir),
            ]
        if self.kind == "gunicorn-uvicorn":
            return [
                str(BIN / "gunicorn"),
                target,
                "-k",
                "uvicorn.workers.UvicornWorker",
                "-w",
                w,
                "-b",
                addr,
                "--chdir",
                str(self.app_dir),
                "--log-level",
                "info",
            ]
        if self.kind == "gunicorn-sync":
            return [
                str(BIN / "gunicorn"),
                target,
                "-k",
                "sync",
                "-w",
                w,
                "-b",
                addr,
                "--chdir",
                str(self.app_dir),
                "--log-level",
                "info",
            ]
        if self.kind == "gunicorn-gthread":
            return [
                str(BIN / "gunicorn"),
                target,
                "-k",
                "gthread",
                "--threads",
                str(self.gthread_threads),
                "-w",
                w,
                "-b",
                addr,
                "--chdir",
                str(self.app_dir),
                "--log-level",
                "info",
            ]
        interface = ["--interface", "wsgi"] if self.app_kind.interface(self.kind) == "wsgi" else []
        if self.kind == "uvicorn-reload":
            return [
                str(BIN / "uvicorn"),
                target,
                *interface,
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--app-dir",
                str(self.app_dir),
                "--reload",
                "--reload-dir",
                str(self.app_dir),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "info",
            ]
        if self.kind == "uvicorn":
            return [
                str(BIN / "uvicorn"),
                target,
                *interface,
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--app-dir",
                str(self.app_dir),
                "--workers",
                w,
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        raise ValueError(self.kind)

    def start(self, deadline_s: float = 60.0) -> float:
        """Start and wait for the first 200; returns seconds from exec to that response."""
        self.port = free_port()
        log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv(),
            env=self.env(),
            cwd=self.app_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        try:
            t1 = self._wait_up(time.perf_counter() + deadline_s)
        except BenchError:
            self.stop()
            raise
        return t1 - t0

    def _wait_up(self, deadline: float) -> float:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = probe(self.port, timeout=1.0)
                if status == 200:
                    return time.perf_counter()
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.kind} not answering on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.001)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to our process group, SIGKILL to it after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"  ! {self.kind}: SIGTERM, waited {timeout:.0f} s, sending SIGKILL to group {self.proc.pid}")
        # The group may still hold workers (a draining worker, a reloader child): kill what is left.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode

    def cleanup(self, failed: bool = False) -> None:
        """Remove the temp dir; after a failure, keep the server's log in results/ and show its end."""
        if failed and self.log_path.exists():
            RESULTS.mkdir(exist_ok=True)
            keep = RESULTS / f"failed-{self.kind}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            shutil.copyfile(self.log_path, keep)
            print(f"  ! {self.kind} log kept in {keep}; its end:\n{self.log_tail(40)}", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        self.cleanup(failed=exc_type is not None)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- reloads --
    def trigger_reload(self) -> None:
        """Send the server's own reload command (the file write for uvicorn --reload)."""
        if self.kind == "uvicorn-reload":
            self.touch_app()
        else:
            os.kill(self.pid, signal.SIGHUP)

    def liveswap_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "liveswap"), *args, "--name", self.name],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def liveswap_status(self) -> dict[str, Any]:
        r = self.liveswap_cli("status", "--json", timeout=30)
        if r.returncode != 0:
            raise BenchError(f"liveswap status failed: {r.stdout}{r.stderr}")
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def reloads_done(self) -> int:
        """Reloads that completed, counted the server's own way."""
        text = self.log_text()
        if self.kind == "liveswap":
            return int(self.liveswap_status()["reloads_ok"])
        if self.kind.startswith("gunicorn"):
            booted = len(re.findall(r"Booting worker with pid", text))
            return max(0, booted - self.workers) // self.workers
        if self.kind == "uvicorn-reload":
            return max(0, len(re.findall(r"Started server process", text)) - 1)
        return 0

    def settled(self) -> bool:
        """No reload in flight: exactly the steady-state set of children (old workers gone)."""
        kids = children(self.pid)
        if self.kind == "liveswap":
            # the template, the live workers and the template's spares (one per worker, already
            # re-parented to the supervisor, waiting to become the next generation's workers)
            return len(kids) == 2 * self.workers + 1
        if self.kind.startswith("gunicorn"):
            return len(kids) == self.workers
        if self.kind == "uvicorn-reload":
            return len(kids) >= 1  # the reloader's server process
        return True  # bare uvicorn --workers 1 serves in-process

    def wait_settled(self, deadline: float) -> None:
        while not self.settled():
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.kind} did not settle: children {children(self.pid)}\n{self.log_tail()}")
            time.sleep(0.005)


def per_cpu_rounds(
    name: str,
    variants: dict[str, tuple[str, list[str]]],
    base: str,
    rounds: int,
    duration: float,
    *,
    ratio_key: str = "ratio_to_base",
    extra: Callable[[Server], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Requests per CPU-second of each variant's server processes (one worker, wrk -t2 -c64 keep-alive
    GET after a 1 s warm-up), rounds interleaved (the order reversed every other round), as a ratio
    to ``base``'s median; printed, and written to results/NAME-*.json (returned). ``extra(srv)``,
    read before each server stops, adds fields to its run (printed after the figures)."""
    out: dict[str, Any] = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "rounds": rounds,
        "duration_s": duration,
        "machine": machine_info(),
        "runs": [],
    }
    width = max(len(label) for label in variants)
    per_cpu: dict[str, list[float]] = {k: [] for k in variants}
    rps: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(rounds):
        order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
        for label in order:
            kind, extra_args = variants[label]
            with Server(kind, workers=1, extra_args=extra_args) as srv:
                srv.start()
                run_wrk(srv.port, 1, threads=2, conns=64)  # warm-up
                tree = process_tree(srv.pid)
                cpu0 = sum(cpu_seconds(pid) for pid in tree)
                r = run_wrk(srv.port, duration, threads=2, conns=64)
                cpu = sum(cpu_seconds(pid) for pid in tree) - cpu0
                more = extra(srv) if extra is not None else {}
            per_cpu[label].append(r.requests / cpu)
            rps[label].append(r.rps)
            out["runs"].append({"variant": label, "round": rnd, "cpu_s": cpu, **more, **r.as_dict()})
            shown = "".join(f" {v:8} {k}" for k, v in more.items())
            print(f"  {label:{width}s} {r.rps:9.0f} req/s {per_cpu[label][-1]:9.0f} req/CPU-s{shown}", flush=True)
    base_median = median(per_cpu[base])
    print(f"\n  {'variant':{width}s} {'req/CPU-s':>10s} {'ratio':>6s} {'req/s':>9s}")
    summary = {}
    for label in variants:
        m = median(per_cpu[label])
        summary[label] = {"median_req_per_cpu_s": m, ratio_key: m / base_median, "median_rps": median(rps[label])}
        print(f"  {label:{width}s} {m:10.0f} {m / base_median:6.3f} {median(rps[label]):9.0f}")
    out["summary"] = summary
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\nwrote {write_results(name, out)}")
    return out

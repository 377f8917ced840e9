"""Save to new code: ``liveswap dev`` against ``uvicorn --reload`` and ``granian --reload``.

Two projects in apps/devbench/: ``plain`` (a raw ASGI app whose ``VERSION`` comes from
``core/version.py``) and ``fastapi`` (FastAPI, 10 routes on a router, 5 pydantic models, ``VERSION``
from ``shop/version.py``). Every server serves its own copy of the project from a private temp dir,
on 127.0.0.1 and a free port, in its own session.

One save: record t0, write a new ``VERSION`` into the version module (open, write, close: an
editor's plain save; every version is unique and of the same length), then probe ``GET /`` with
``Connection: close`` on a fresh loopback connection every 2 ms until a 200 carries the new version
in ``x-app-version``. The latency is from t0 to the head of that response. Every probe that fails
(refused, reset, closed before a response, cut mid-body, a 5xx or other non-200, a timeout) is
counted as a failed request; a redirect (liveswap dev answers 307 to the same URL to a request
that reaches the worker being replaced) is counted apart, in the ``307s`` column. After the new
version is seen the server settles (300 ms, then its process tree back to its size after startup;
for liveswap also ``liveswap status --json`` showing one generation, no reload in flight) before
anything else is saved, so saves never overlap. The servers take turns in rounds, in a random
order per round, so they share the machine's noise; the first rounds are warm-up and are kept in
the JSON but not in the statistics.

    .venv/bin/python benchmarks/dev_bench.py                     # 30 saves per server per app, ~3 min
    .venv/bin/python benchmarks/dev_bench.py --saves 10 --apps plain
    .venv/bin/python benchmarks/dev_bench.py --servers liveswap,uvicorn --seed 1
    .venv/bin/python benchmarks/dev_bench.py --servers liveswap,uvicorn,granian,liveswap-preload

``liveswap-preload`` (opt-in) is ``liveswap dev --preload fastapi``, for the FastAPI app only.
granian is not a dependency of the project: without it (``.venv/bin/pip install granian``) its
rows are skipped with a line saying why.

liveswap runs from a copy of the working tree's ``src/`` taken at the start, first on its
PYTHONPATH (others may be editing ``src/`` meanwhile); ``--snapshot COMMIT`` runs ``src/`` of a
commit, ``--live-src`` the working tree itself. Every server runs with PYTHONDONTWRITEBYTECODE=1:
a same-size save within the second of the last would otherwise be served from a stale ``.pyc`` by
the servers that start fresh interpreters.

Prints a table per app and writes benchmarks/results/dev-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BIN, HOST, RESULTS, BenchError, free_port, machine_info, median, percentile  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEVBENCH = HERE / "apps" / "devbench"
REQUEST = b"GET / HTTP/1.1\r\nHost: devbench\r\nConnection: close\r\n\r\n"
VERSION_RE = re.compile(rb"\r\nx-app-version:[ \t]*([^\r]*)\r\n", re.I)


@dataclass(frozen=True)
class DevApp:
    name: str
    directory: str  # under apps/devbench/
    version_module: str  # the file each save rewrites, relative to the project
    title: str
    preload: tuple[str, ...] = ()  # what the liveswap-preload variant passes to --preload


APPS: dict[str, DevApp] = {
    "plain": DevApp("plain", "plain", "core/version.py", "plain ASGI app (main.py + core/version.py)"),
    "fastapi": DevApp(
        "fastapi", "fastapi_app", "shop/version.py", "FastAPI app (10 routes, 5 pydantic models)", ("fastapi",)
    ),
}
SERVERS = ("liveswap", "uvicorn", "granian")  # the default set
# liveswap-preload (opt-in, --servers): liveswap dev with the app's libraries in the template
# (--preload fastapi), for the apps that have some; not a server of the issue's comparison.
EXTRA_SERVERS = ("liveswap-preload",)
LABELS = {
    "liveswap": "liveswap dev",
    "liveswap-preload": "liveswap dev --preload",
    "uvicorn": "uvicorn --reload",
    "granian": "granian --reload",
}
TAGS = {"liveswap": "liv", "liveswap-preload": "lvp", "uvicorn": "uvi", "granian": "gra"}
TARGETS = {  # the issue's targets for liveswap dev
    "fastapi": {"median_ms": 60.0, "p90_ms": 100.0, "uvicorn_ratio": 10.0, "stretch_median_ms": 35.0},
    "plain": {"median_ms": 30.0},
}


def say(msg: str = "") -> None:
    print(msg, flush=True)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        padded = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        say("  " + "  ".join(padded).rstrip())
        if n == 0:
            say("  " + "  ".join("-" * w for w in widths))


# ---- the probe ---------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One ``GET /`` on a fresh connection. ``outcome`` is ``ok`` (a 200) or the kind of failure."""

    outcome: str
    version: str = ""
    at: float = 0.0  # perf_counter() when the response head had arrived


def _os_kind(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def probe_once(port: int, timeout: float) -> Probe:
    """``GET /`` with ``Connection: close`` on a new loopback connection, every step bounded by
    ``timeout``; the body is read to its end (the server closes) so that no probe ends in a reset."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    head = bytearray()
    at = 0.0
    try:
        s.connect((HOST, port))
        s.sendall(REQUEST)
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            if not chunk:
                return Probe("closed before response")
            head += chunk
        at = time.perf_counter()
        while s.recv(65536):
            pass
    except OSError as exc:
        kind = _os_kind(exc)
        return Probe(f"{kind} mid-body" if at else kind)
    finally:
        s.close()
    if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
        return Probe("not HTTP")
    status = int(head[9:12])
    if status in (301, 302, 303, 307, 308):
        return Probe(f"redirect {status}")  # not a failure of the issue's kinds; counted apart
    if status != 200:
        return Probe("5xx" if status >= 500 else f"status {status}")
    m = VERSION_RE.search(bytes(head))
    return Probe("ok", m.group(1).decode() if m else "", at)


# ---- processes -------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[2])


def group_members(pgid: int, with_zombies: bool = False) -> list[int]:
    """Processes of the group ``pgid`` (ours: every server runs in its own session)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] == pgid and (with_zombies or st[0] != "Z"):
                out.append(int(name))
    return sorted(out)


def src_digest(src: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=60, check=True)


def _export(commit: str, into: Path) -> str:
    """``src/`` of ``commit`` into ``into`` (``git archive``: neither the working tree nor the index
    is touched); returns the full commit id."""
    full = _git("rev-parse", "--verify", f"{commit}^{{commit}}").stdout.decode().strip()
    archive = _git("archive", "--format=tar", full, "src").stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return full


def freeze_src(snapshot: str | None) -> tuple[Path, dict[str, Any]]:
    """liveswap's source for this run, in a temp dir that goes first on its PYTHONPATH: a copy of the
    working tree's ``src/liveswap`` as it is now, or ``src/`` of the commit ``snapshot``. Says which
    commit's ``src/`` the copy equals, if HEAD's does."""
    tmp = Path(tempfile.mkdtemp(prefix="devbench-src-"))
    info: dict[str, Any] = {"frozen_src": True}
    if snapshot:
        info["src_of"] = f"commit {_export(snapshot, tmp)}"
        root = tmp / "src"
    else:
        root = tmp / "src"
        shutil.copytree(ROOT / "src" / "liveswap", root / "liveswap", ignore=shutil.ignore_patterns("__pycache__"))
        info["src_of"] = "the working tree at the start"
    info["src_digest"] = src_digest(root / "liveswap")
    with tempfile.TemporaryDirectory(prefix="devbench-head-") as head:
        try:
            full = _export("HEAD", Path(head))
            info["head"] = full
            info["src_equals_head"] = src_digest(Path(head) / "src" / "liveswap") == info["src_digest"]
        except (OSError, subprocess.SubprocessError) as exc:
            info["head"] = f"? ({exc})"
    return root, info


def _pkg_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def granian_available() -> str | None:
    """None when granian can run, else why not."""
    exe = BIN / "granian"
    if not exe.exists():
        return f"{exe} not found (install it with .venv/bin/pip install granian)"
    try:
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"granian --version failed: {exc}"
    if r.returncode != 0:
        return f"granian --version exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"
    try:
        import watchfiles  # noqa: F401 - granian --reload needs it
    except ImportError:
        return "granian --reload needs watchfiles (granian[reload])"
    return None


# ---- one server under test --------------------------------------------------------------------------------
@dataclass
class Sample:
    """One reload, whatever caused it (a save, a SIGHUP): when the new code answered, and what failed."""

    round: int
    slot: int  # position in the round's random order
    warmup: bool
    version: str
    latency_ms: float | None  # None: the new version was not served before the deadline
    probes: int = 0
    old_answers: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failed_at_ms: list[tuple[float, str]] = field(default_factory=list)  # the first 50, from t0
    settle_ms: float = 0.0
    settle_timeout: bool = False
    supervisor_ms: float | None = None  # liveswap: what the supervisor said this reload took

    def record(self, p: Probe, new: str, t0: float, start: float) -> bool:
        """Count one probe started at ``start`` (t0: the save or signal); True once it carries ``new``."""
        self.probes += 1
        if p.outcome != "ok":
            self.failed[p.outcome] = self.failed.get(p.outcome, 0) + 1
            if len(self.failed_at_ms) < 50:
                self.failed_at_ms.append((round((start - t0) * 1000, 2), p.outcome))
        elif p.version == new:
            self.latency_ms = (p.at - t0) * 1000
            return True
        else:
            self.old_answers += 1
        return False


@dataclass
class Save(Sample):
    """One measured save."""

    write_ms: float = 0.0  # open + write + close
    # 307 answers (a probe that reached a dev worker draining for this reload, sent to the new
    # worker): not one of the issue's failures, not the new code either; counted apart.
    redirects: int = 0
    redirect_at_ms: list[float] = field(default_factory=list)

    def record(self, p: Probe, new: str, t0: float, start: float) -> bool:
        if p.outcome.startswith("redirect"):
            self.probes += 1
            self.redirects += 1
            self.redirect_at_ms.append(round((start - t0) * 1000, 2))
            return False
        return super().record(p, new, t0, start)

    tree_after: int = 0
    reloads: int | None = None  # uvicorn: how many restarts it logged
    reloads_failed: int | None = None
    generation: int | None = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class GroupServer:
    """What the benchmark servers share: a process group to stop and a log file to read.
    Subclasses set ``proc``, ``log_path`` and ``label``."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    @property
    def label(self) -> str:
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> list[int]:
        """SIGTERM to the server's process group, SIGKILL to what is left of it after ``timeout``.
        Returns the group's processes still there after that (should be none)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"  ! {self.label}: not gone {timeout:.0f} s after SIGTERM; SIGKILL to group {pgid}")
        end = time.perf_counter() + 5
        while group_members(pgid, with_zombies=True) and time.perf_counter() < end:
            time.sleep(0.05)  # a draining worker or a reloader's child finishing
        if group_members(pgid, with_zombies=True):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.2)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return group_members(pgid, with_zombies=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def liveswap_status(env: dict[str, str], name: str = "") -> dict[str, Any]:
    """``liveswap status --json`` of the instance (the only one, or ``name``)."""
    r = subprocess.run(
        [sys.executable, "-m", "liveswap", "status", "--json", *(["--name", name] if name else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise BenchError(f"liveswap status failed: {r.stdout}{r.stderr}")
    data: dict[str, Any] = json.loads(r.stdout)
    return data


class DevServer(GroupServer):
    def __init__(self, kind: str, app: DevApp, nonce: str, args: argparse.Namespace, src: Path | None) -> None:
        self.kind = kind
        self.app = app
        self.nonce = nonce
        self.args = args
        self.src = src
        self.tmp = Path(tempfile.mkdtemp(prefix=f"devbench-{kind}-{app.name}-"))
        os.chmod(self.tmp, 0o700)
        self.app_dir = self.tmp / "app"
        shutil.copytree(DEVBENCH / app.directory, self.app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.runtime = self.tmp / "run"  # XDG_RUNTIME_DIR: liveswap's control socket
        self.runtime.mkdir(mode=0o700)
        self.log_path = self.tmp / "server.log"
        self.version_file = self.app_dir / app.version_module
        self.seq = 0
        self.version = self._version(0)
        self.version_file.write_text(f'VERSION = "{self.version}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tree = 0  # processes in the group once started and quiet
        self.reloads_seen = 0
        self.saves: list[Save] = []
        self.startup_s = 0.0
        self.dead = ""

    @property
    def label(self) -> str:
        if self.kind == "liveswap-preload":
            return f"liveswap dev --preload {','.join(self.app.preload)}"
        return LABELS[self.kind]

    @property
    def is_liveswap(self) -> bool:
        return self.kind.startswith("liveswap")

    def _version(self, seq: int) -> str:
        return f"{TAGS[self.kind]}{seq:05d}-{self.nonce}"

    # -- process --
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
            env.pop(key, None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        if self.is_liveswap and self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.src), env.get("PYTHONPATH")]))
        return env

    def argv(self) -> list[str]:
        d = str(self.app_dir)
        if self.is_liveswap:
            argv = [sys.executable, "-m", "liveswap", "dev", "main:app", "--bind", f"{HOST}:{self.port}"]
            argv += ["--app-dir", d]
            if self.kind == "liveswap-preload":
                for module in self.app.preload:
                    argv += ["--preload", module]
            return argv
        if self.kind == "uvicorn":
            return [
                str(BIN / "uvicorn"),
                "main:app",
                "--reload",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--app-dir",
                d,
                "--reload-dir",
                d,
            ]
        if self.kind == "granian":
            return [
                str(BIN / "granian"),
                "--interface",
                "asgi",
                "--reload",
                "main:app",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ]
        raise ValueError(self.kind)

    def start(self, deadline_s: float = 60.0) -> None:
        """Start on a free port (another port when it was taken meanwhile) and wait for the first 200
        with the current version, then for the process tree to be quiet."""
        for attempt in range(5):
            self.port = free_port()
            argv = self.argv()
            with open(self.log_path, "ab") as log:
                log.write(f"---- devbench start, attempt {attempt + 1}: {' '.join(argv)}\n".encode())
                log.flush()
                t0 = time.perf_counter()
                self.proc = subprocess.Popen(
                    argv,
                    env=self.env(),
                    cwd=self.app_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            try:
                self._wait_up(t0 + deadline_s)
            except BenchError:
                text = self.log_text().lower()
                self.stop()
                if "address already in use" in text or "errno 98" in text:
                    say(f"    {self.label}: port {self.port} taken meanwhile, another one")
                    continue
                raise
            self.startup_s = time.perf_counter() - t0
            self.tree = self._quiet_tree(time.perf_counter() + 20)
            if self.is_liveswap:
                self.reloads_seen = int(self.status()["reloads_ok"])
            return
        raise BenchError(f"{self.label}: no free port after 5 attempts")

    def _wait_up(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
            p = probe_once(self.port, 1.0)
            if p.outcome == "ok" and p.version == self.version:
                return
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.label} not serving {self.version} on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.01)

    def _quiet_tree(self, deadline: float) -> int:
        """The size of the process group once it has not changed for 0.5 s (spares forked, etc.)."""
        assert self.proc is not None
        last, since = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            n = len(group_members(self.proc.pid))
            if n != last:
                last, since = n, time.perf_counter()
            elif time.perf_counter() - since >= 0.5:
                break
            time.sleep(0.02)
        return last

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        return liveswap_status(self.env())

    # -- one save --
    def save(self, round_no: int, slot: int, warmup: bool) -> Save:
        assert self.proc is not None
        args = self.args
        self.seq += 1
        new = self._version(self.seq)
        text = f'VERSION = "{new}"\n'
        log_before = len(self.log_text())
        t0 = time.perf_counter()
        with open(self.version_file, "w") as f:
            f.write(text)
        t_written = time.perf_counter()
        sample = Save(round_no, slot, warmup, new, None, write_ms=(t_written - t0) * 1000)
        deadline = t0 + args.save_timeout
        next_at = t0
        while True:
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            start = time.perf_counter()
            if start > deadline:
                break
            next_at = start + args.interval
            p = probe_once(self.port, args.probe_timeout)
            if sample.record(p, new, t0, start):
                break
        self.version = new
        self._settle(sample, log_before)
        self.saves.append(sample)
        return sample

    def _settle(self, sample: Save, log_before: int) -> None:
        """Let the reload finish before anything else is saved: 300 ms, then (liveswap) one live
        generation and no reload in flight, then the process tree back to its size after startup."""
        assert self.proc is not None
        t = time.perf_counter()
        deadline = t + self.args.settle_timeout
        if sample.latency_ms is None:  # late: give it the time it takes, still without overlap
            p = Probe("")
            while time.perf_counter() < deadline and not (p.outcome == "ok" and p.version == self.version):
                p = probe_once(self.port, self.args.probe_timeout)
                time.sleep(0.05)
        time.sleep(self.args.settle)
        if self.is_liveswap:
            while True:
                st = self.status()
                if len(st["generations"]) == 1 and not st["reloading"]:
                    break
                if time.perf_counter() > deadline:
                    sample.settle_timeout = True
                    break
                time.sleep(0.05)
            last = st.get("last_reload") or {}
            sample.supervisor_ms = last.get("duration_ms")
            sample.reloads = int(st["reloads_ok"]) - self.reloads_seen
            self.reloads_seen = int(st["reloads_ok"])
            sample.reloads_failed = int(st["reloads_failed"])
            sample.generation = int(st["generations"][0]["generation"])
        while (n := len(group_members(self.proc.pid))) != self.tree:
            if time.perf_counter() > deadline:
                sample.settle_timeout = True
                break
            time.sleep(0.02)
        sample.tree_after = n
        if self.kind == "uvicorn":
            sample.reloads = len(re.findall(r"Started server process", self.log_text()[log_before:]))
        sample.settle_ms = (time.perf_counter() - t) * 1000
        if self.proc.poll() is not None:
            self.dead = f"exited with {self.proc.returncode}"


# ---- the run ------------------------------------------------------------------------------------------------
IMPORT_FLOOR = """
import sys, time
t0 = time.perf_counter()
for name in sys.argv[1:]:
    __import__(name)
t1 = time.perf_counter()
import main
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000)
"""


FLOOR_STDLIB = ("typing", "collections.abc", "enum", "datetime")  # imported by any server already


def import_floor(app: DevApp, n: int) -> dict[str, Any]:
    """The app's own import in fresh interpreters (from source, as every server here imports it):
    the standard modules it uses and its libraries (``app.preload``) first, then ``import main``:
    the floor for any reload that starts from a process with the libraries already imported."""
    libs: list[float] = []
    own: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"devbench-floor-{app.name}-") as tmp:
        shutil.copytree(DEVBENCH / app.directory, Path(tmp) / "app", ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        for _ in range(n):
            r = subprocess.run(
                [sys.executable, "-c", IMPORT_FLOOR, *FLOOR_STDLIB, *app.preload],
                cwd=Path(tmp) / "app",
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            a, b = (float(x) for x in r.stdout.split())
            libs.append(a)
            own.append(b)
    return {
        "libraries": [*FLOOR_STDLIB, *app.preload],
        "libraries_ms": libs,
        "app_ms": own,
        "app_median_ms": median(own),
    }


def sample_stats(samples: Sequence[Sample]) -> dict[str, Any]:
    """Latency and failures of the measured (not warm-up) samples."""
    measured = [s for s in samples if not s.warmup]
    lat = [s.latency_ms for s in measured if s.latency_ms is not None]
    failed: dict[str, int] = {}
    for s in measured:
        for kind, n in s.failed.items():
            failed[kind] = failed.get(kind, 0) + n
    return {
        "served": len(lat),
        "late": len(measured) - len(lat),
        "median_ms": median(lat),
        "p90_ms": percentile(lat, 90),
        "min_ms": min(lat, default=float("nan")),
        "max_ms": max(lat, default=float("nan")),
        "probes": sum(s.probes for s in measured),
        "failed_probes": sum(failed.values()),
        "failed_by_kind": failed,
        "warmup_failed_probes": sum(sum(s.failed.values()) for s in samples if s.warmup),
        "settle_timeouts": sum(1 for s in samples if s.settle_timeout),
        "supervisor_median_ms": median([s.supervisor_ms for s in measured if s.supervisor_ms is not None]),
    }


def stats(saves: list[Save]) -> dict[str, Any]:
    measured = [s for s in saves if not s.warmup]
    return {
        "saves": len(measured),
        **sample_stats(saves),
        "saves_with_failures": sum(1 for s in measured if s.failed),
        "redirects": sum(s.redirects for s in measured),
        "warmup_redirects": sum(s.redirects for s in saves if s.warmup),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return f"{x:.{digits}f}"


def run_app(
    app: DevApp,
    kinds: list[str],
    args: argparse.Namespace,
    rng: random.Random,
    src: Path | None,
    deadline: float,
    out: dict[str, Any],
) -> None:
    """Start the servers, run the rounds, stop the servers; fills ``out`` (also when interrupted)."""
    nonce = f"{rng.getrandbits(24):06x}"
    servers = [DevServer(kind, app, nonce, args, src) for kind in kinds if kind != "liveswap-preload" or app.preload]
    out.update({"app": app.name, "title": app.title, "servers": {}, "notes": []})
    keep_log: dict[str, str] = {}  # server kind -> why its whole log goes into the JSON
    try:
        for srv in servers:
            srv.start()
            say(
                f"    {srv.label}: serving on port {srv.port} after {srv.startup_s * 1000:.0f} ms, "
                f"{srv.tree} processes in its group"
            )
        total = args.warmup + args.saves
        rounds_done = 0
        for r in range(total):
            if time.perf_counter() > deadline:
                note = f"time budget reached after {rounds_done} rounds ({max(0, rounds_done - args.warmup)} measured)"
                say(f"  ! {app.name}: {note}")
                out["notes"].append(note)
                break
            live = [s for s in servers if not s.dead]
            order = rng.sample(live, len(live))
            for slot, srv in enumerate(order):
                time.sleep(rng.uniform(0.05, 0.15))  # a quiet gap before each save
                sample = srv.save(r, slot, warmup=r < args.warmup)
                if sample.latency_ms is None:
                    say(f"  ! {srv.label}: {sample.version} not served within {args.save_timeout:.0f} s")
                if srv.is_liveswap and (
                    sample.failed or sample.redirects or sample.latency_ms is None or sample.reloads != 1
                ):
                    why = (
                        f"round {r}{' (warm-up)' if sample.warmup else ''}: {sample.failed_total} failed probes "
                        f"{sample.failed}, {sample.redirects} redirects at {sample.redirect_at_ms} ms, "
                        f"latency {fmt(sample.latency_ms)} ms, reloads {sample.reloads}"
                    )
                    say(f"  ! {srv.label}: {why}")
                    out["notes"].append(f"{srv.label} {why}")
                    keep_log.setdefault(srv.kind, why)
                if srv.dead:
                    say(f"  ! {srv.label}: {srv.dead}; its log goes into the JSON")
                    keep_log.setdefault(srv.kind, srv.dead)
            rounds_done += 1
            if rounds_done % 10 == 0:
                say(f"    {rounds_done}/{total} rounds")
    finally:
        for srv in servers:
            left = srv.stop()
            if left:
                say(f"  ! {srv.label}: processes {left} of its group still there after SIGKILL")
            out["servers"][srv.kind] = {
                "label": srv.label,
                "argv": srv.argv(),
                "startup_ms": srv.startup_s * 1000,
                "group_size": srv.tree,
                "dead": srv.dead,
                "left_after_stop": left,
                "stats": stats(srv.saves),
                "samples": [asdict(s) for s in srv.saves],
                "log_errors": [ln for ln in srv.log_text().splitlines() if re.search(r"\b(ERROR|Traceback)\b", ln)][
                    :20
                ],
            }
            if srv.kind in keep_log:  # the whole server log, after its stop
                out["servers"][srv.kind]["log_kept_because"] = keep_log[srv.kind]
                out["servers"][srv.kind]["log"] = srv.log_text()
            srv.cleanup()


def report(result: dict[str, Any]) -> None:
    servers: dict[str, Any] = result["servers"]
    say(f"\n  {result['title']}: save -> first response with the new code (measured saves only)")
    rows = []
    for data in servers.values():
        st = data["stats"]
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(st["failed_by_kind"].items())) or "-"
        rows.append(
            [
                data["label"],
                f"{st['served']}/{st['saves']}",
                fmt(st["median_ms"]),
                fmt(st["p90_ms"]),
                fmt(st["min_ms"]),
                fmt(st["max_ms"]),
                st["failed_probes"],
                kinds,
                st["redirects"],
                st["probes"],
            ]
        )
    table(
        ["server", "new code", "median ms", "p90 ms", "min ms", "max ms", "failed", "failed by kind", "307s", "probes"],
        rows,
    )
    # liveswap-preload's median next to liveswap dev's, then each liveswap's ratios and targets
    for lk in ("liveswap", "liveswap-preload"):
        if lk in servers:
            _targets(result, lk)


def _targets(result: dict[str, Any], lk: str) -> None:
    servers: dict[str, Any] = result["servers"]
    label = servers[lk]["label"]
    lst = servers[lk]["stats"]
    ratios = result.setdefault("ratios", {})
    parts = []
    for kind in ("uvicorn", "granian"):
        if kind in servers:
            ratio = servers[kind]["stats"]["median_ms"] / lst["median_ms"]
            ratios[f"{kind}/{lk}"] = ratio
            parts.append(f"{LABELS[kind]} / {label} = {ratio:.1f}")
    if parts:
        say("  medians: " + "; ".join(parts))
    say(f"  {label}: the supervisor's own reload time (median) {fmt(lst['supervisor_median_ms'])} ms")
    targets = TARGETS.get(result["app"], {})
    checks = []
    if "median_ms" in targets:
        checks.append(f"median <= {targets['median_ms']:.0f} ms: {_met(lst['median_ms'] <= targets['median_ms'])}")
    if "p90_ms" in targets:
        checks.append(f"p90 <= {targets['p90_ms']:.0f} ms: {_met(lst['p90_ms'] <= targets['p90_ms'])}")
    if "uvicorn_ratio" in targets and f"uvicorn/{lk}" in ratios:
        ok = ratios[f"uvicorn/{lk}"] >= targets["uvicorn_ratio"]
        checks.append(f">= {targets['uvicorn_ratio']:.0f}x uvicorn --reload: {_met(ok)}")
    if "stretch_median_ms" in targets:
        ok = lst["median_ms"] <= targets["stretch_median_ms"]
        checks.append(f"stretch median <= {targets['stretch_median_ms']:.0f} ms: {_met(ok)}")
    zero = lst["failed_probes"] == 0 and lst["warmup_failed_probes"] == 0
    redirects = lst["redirects"] + lst["warmup_redirects"]
    checks.append(f"0 failed probes: {_met(zero)}" + (f" (but {redirects} answered 307)" if redirects else ""))
    say(f"  targets ({label}): " + "; ".join(checks))


def _src_line(info: dict[str, Any]) -> str:
    if not info.get("frozen_src"):
        n = len(info["git_uncommitted_src"])
        return f"the working tree itself (HEAD {info['git_commit']}, {n} uncommitted files in src/)"
    same = " = HEAD's src/" if info.get("src_equals_head") else f", not HEAD's ({str(info.get('head'))[:12]})"
    return f"a copy of {info['src_of']} (digest {info['src_digest']}{same})"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apps", default="plain,fastapi", help="comma-separated: plain, fastapi")
    ap.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated: liveswap, uvicorn, granian, and the opt-in liveswap-preload (liveswap dev with the "
        "app's libraries preloaded: --preload fastapi; the apps that have none skip it)",
    )
    ap.add_argument("--saves", type=int, default=30, help="measured saves per server per app")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up rounds per app, not in the statistics")
    ap.add_argument("--interval", type=float, default=0.002, help="seconds from one probe's start to the next")
    ap.add_argument("--probe-timeout", type=float, default=1.0, help="connect / read timeout of one probe (s)")
    ap.add_argument("--save-timeout", type=float, default=15.0, help="how long a save may take to be served (s)")
    ap.add_argument("--settle", type=float, default=0.3, help="wait after the new version is seen (s)")
    ap.add_argument("--settle-timeout", type=float, default=20.0, help="the most a server may take to settle (s)")
    ap.add_argument("--budget", type=float, default=480.0, help="stop starting rounds after this long (s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--live-src", action="store_true", help="run liveswap from the working tree, not a copy of it")
    ap.add_argument("--snapshot", metavar="COMMIT", help="run liveswap from src/ of COMMIT (git archive)")
    args = ap.parse_args()

    apps = [APPS[a] for a in args.apps.split(",") if a]
    kinds = [k for k in args.servers.split(",") if k]
    for k in kinds:
        if k not in SERVERS + EXTRA_SERVERS:
            ap.error(f"unknown server {k!r}")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    started = time.perf_counter()

    skipped: dict[str, str] = {}
    if "granian" in kinds and (why := granian_available()) is not None:
        skipped["granian"] = why
        kinds.remove("granian")
        say(f"granian --reload: SKIPPED: {why}")

    src: Path | None = None
    src_info: dict[str, Any] = {"frozen_src": False}
    if any(k.startswith("liveswap") for k in kinds) and not args.live_src:
        src, src_info = freeze_src(args.snapshot)
    info = machine_info()
    info.update(
        {
            "granian": _pkg_version("granian"),
            "fastapi": _pkg_version("fastapi"),
            "pydantic": _pkg_version("pydantic"),
            "starlette": _pkg_version("starlette"),
            "watchfiles": _pkg_version("watchfiles"),
            **src_info,
            "working_tree_src_digest_start": src_digest(ROOT / "src" / "liveswap"),
        }
    )
    if src is not None:
        r = subprocess.run(
            [sys.executable, "-c", "import liveswap; print(liveswap.__file__)"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))},
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["liveswap_imported_from"] = r.stdout.strip()
        if not r.stdout.strip().startswith(str(src)):
            say(f"  ! liveswap is imported from {r.stdout.strip()!r}, not from the frozen copy in {src}")
    say(
        f"dev_bench: apps {', '.join(a.name for a in apps)}; servers {', '.join(LABELS[k] for k in kinds)}; "
        f"{args.saves} saves each (+{args.warmup} warm-up rounds); seed {seed}; load average {info['loadavg_start']}"
    )
    say(
        f"  liveswap from {_src_line(info)}; uvicorn {info['uvicorn']}, granian {info['granian']}, "
        f"fastapi {info['fastapi']}, pydantic {info['pydantic']}"
    )
    data: dict[str, Any] = {
        "benchmark": "dev_bench",
        "seed": seed,
        "args": vars(args),
        "machine": info,
        "skipped": skipped,
        "apps": {},
    }
    try:
        for i, app in enumerate(apps):
            say(f"\n== {app.title}")
            deadline = started + args.budget * (i + 1) / len(apps)
            floor = import_floor(app, 5)
            say(
                f"    the app's own import, fresh interpreter, after {', '.join(floor['libraries'])}: "
                f"{floor['app_median_ms']:.1f} ms (median of 5; the libraries took "
                f"{median(floor['libraries_ms']):.1f} ms)"
            )
            result: dict[str, Any] = {"import_floor": floor}
            data["apps"][app.name] = result
            run_app(app, kinds, args, rng, src, deadline, result)
            data["apps"][app.name] = result
            report(result)
    finally:
        data["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        data["machine"]["working_tree_src_digest_end"] = src_digest(ROOT / "src" / "liveswap")
        data["elapsed_s"] = time.perf_counter() - started
        if src is not None:
            shutil.rmtree(src.parent, ignore_errors=True)
        loads = f"load average {data['machine']['loadavg_start']} -> {data['machine']['loadavg_end']}"
        if data["apps"]:  # a run stopped before any server started leaves nothing behind
            RESULTS.mkdir(exist_ok=True)
            path = RESULTS / f"dev-{time.strftime('%Y%m%d-%H%M%S')}.json"
            path.write_text(json.dumps(data, indent=2) + "\n")
            say(f"\n{loads}; {data['elapsed_s']:.0f} s; wrote {path}")
        else:
            say(f"\n{loads}; {data['elapsed_s']:.0f} s; nothing measured, no results file")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gunicorn under ``liveswap run -- gunicorn`` against gunicorn's own HUP: SIGHUP to new code, failed
requests under load, and a bad deploy.

The app is [`apps/command_wsgi.py`](apps/command_wsgi.py), a plain WSGI function whose version is read
at import from ``version.txt`` beside it (answered in ``x-app-version``; ``raise`` in it fails the
import, ``slow`` makes the import take 1 s). Each server runs on its own copy in a private temp dir
(private ``XDG_RUNTIME_DIR``), 127.0.0.1 on a free port, in its own session, stopped by its process
group:

  gunicorn   gunicorn -w 2 -b 127.0.0.1:PORT command_wsgi:app; reload: SIGHUP to the master
  liveswap   python -m liveswap run --bind 127.0.0.1:PORT -- gunicorn -w 2 command_wsgi:app;
             reload: SIGHUP to liveswap
  proxy      python -m liveswap run --proxy --bind 127.0.0.1:PORT -- gunicorn -w 2 -b 127.0.0.1:{port}
             command_wsgi:app; reload: SIGHUP to liveswap

Every server is under a light constant load for the whole run: ``--ka`` keep-alive and ``--close``
``Connection: close`` clients, each ``GET /`` then ``--gap`` seconds of pause, retrying nothing. A
request fails as: refused, reset (before any byte of the answer), closed before response, cut
mid-response, 5xx, other status, timeout (``--timeout``). A keep-alive client opens a new connection
only after an answer that said ``Connection: close`` (gunicorn's sync worker says so every time) or a
failure.

One reload: write a new version, record t0, send SIGHUP, then ``GET /`` on a fresh connection every
``--interval`` s until a 200 carries the new version (HUP -> new code: t0 to that answer's head). Then
the server settles (gunicorn: its old workers gone; liveswap: one generation and no reload in flight),
then ``--pause``. The load's failures from t0 to the end of the pause are that reload's, and so is
the slowest answered load request (a request that waits in the listen queue is a stall, not a failure). Warm-up rounds
(3) then measured rounds (20), the servers in a random order in each round.

Then bad deploys, for each server and each of ``raise`` (the import fails at once) and ``slow-raise``
(it fails after 1 s): write the bad version, SIGHUP, watch ``--bad-watch`` s (load failures, a probe
every 50 ms); then write a good version and SIGHUP again (recovery): the slowest load request up to
the recovery tells how long requests waited; a server that died is started again, and one that does
not serve the good version within 20 s is restarted.

    .venv/bin/python benchmarks/command_bench.py                 # about 3 minutes
    .venv/bin/python benchmarks/command_bench.py --kinds gunicorn,liveswap --reloads 40

liveswap runs from a copy of the working tree's ``src/`` taken at the start (``--snapshot COMMIT``:
``src/`` of a commit). Prints tables and writes benchmarks/results/command-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import errno
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BIN, HOST, RESULTS, BenchError, children, free_port, machine_info, median  # noqa: E402
from dev_bench import GroupServer, Sample, freeze_src, liveswap_status, probe_once, sample_stats, say, table  # noqa: E402

APP = Path(__file__).resolve().parent / "apps" / "command_wsgi.py"
KINDS = ("gunicorn", "liveswap", "proxy")
LABELS = {
    "gunicorn": "gunicorn -w 2, HUP to its master",
    "liveswap": "liveswap run -- gunicorn -w 2",
    "proxy": "liveswap run --proxy -- gunicorn -w 2",
}
BAD = ("raise", "slow-raise")
_STATUS_RE = re.compile(rb"^HTTP/1\.[01] (\d{3})")
_LENGTH_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_CLOSE_RE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)
_RESETS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
SLOW_S = 0.2  # an answered load request slower than this is kept (a stall, not a failure)


# ---- the load -------------------------------------------------------------------------------------------
class _Failed(Exception):
    pass


class Load:
    """``ka`` keep-alive and ``close`` clients on ``port``, one thread each, until ``stop()``. Every
    request is counted once: ``ok``, or a failure kept in ``failures`` as (time, class, detail)."""

    def __init__(self, port: int, ka: int, close: int, gap: float, timeout: float) -> None:
        self.port, self.gap, self.timeout = port, gap, timeout
        self.ok = 0
        self.failures: list[tuple[float, str, str]] = []
        self.slow: list[tuple[float, float]] = []  # (end, seconds) of answered requests over SLOW_S
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(False, i), daemon=True) for i in range(ka)]
        self._threads += [threading.Thread(target=self._run, args=(True, i), daemon=True) for i in range(close)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 2)

    def _run(self, close: bool, n: int) -> None:
        request = f"GET / HTTP/1.1\r\nHost: bench\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
        mode = "close" if close else "keep-alive"
        sock: socket.socket | None = None
        while not self._stop.is_set():
            reused = sock is not None
            t = time.perf_counter()
            try:
                if sock is None:
                    sock = self._connect()
                again = self._one(sock, request)
                self.ok += 1
                if (end := time.perf_counter()) - t > SLOW_S:
                    self.slow.append((end, end - t))
                if close or not again:
                    sock.close()
                    sock = None
            except _Failed as exc:
                kind, _, detail = str(exc).partition(": ")
                self.failures.append((time.perf_counter(), kind, f"{mode} #{n}{' reused' if reused else ''}: {detail}"))
                if sock is not None:
                    sock.close()
                    sock = None
            self._stop.wait(self.gap)
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect((HOST, self.port))
        except OSError as exc:
            sock.close()
            raise _Failed(_kind(exc, False) + f": connect: {exc}") from None
        return sock

    def _one(self, sock: socket.socket, request: bytes) -> bool:
        """One request; True when the connection may carry the next one."""
        buf = bytearray()
        try:
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise _Failed(("cut mid-response" if buf else "closed before response") + ": EOF")
                buf += chunk
            head, _, body = bytes(buf).partition(b"\r\n\r\n")
            m = _LENGTH_RE.search(head)
            want = int(m.group(1)) if m else 0
            while len(body) < want:
                chunk = sock.recv(65536)
                if not chunk:
                    raise _Failed("cut mid-response: EOF in the body")
                body += chunk
        except OSError as exc:
            raise _Failed(_kind(exc, bool(buf)) + f": {exc}") from None
        st = _STATUS_RE.match(head)
        if st is None:
            raise _Failed(f"other status: {head[:40]!r}")
        code = int(st.group(1))
        if code != 200:
            raise _Failed(f"{'5xx' if code >= 500 else 'other status'}: {code}")
        return _CLOSE_RE.search(head) is None


def _kind(exc: OSError, got_bytes: bool) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if got_bytes:
        return "cut mid-response"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if exc.errno in _RESETS:
        return "reset"
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def by_class(failures: list[tuple[float, str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, kind, _ in failures:
        out[kind] = out.get(kind, 0) + 1
    return out


# ---- one server under test -----------------------------------------------------------------------------
@dataclass
class Reload(Sample):
    """One measured SIGHUP, with the load's failures from t0 to the end of its settle pause."""

    load_ok: int = 0
    load_failed: dict[str, int] = field(default_factory=dict)
    load_examples: list[str] = field(default_factory=list)
    load_max_s: float = 0.0  # the slowest answered load request ending in the window


class Server(GroupServer):
    def __init__(self, kind: str, nonce: str, args: argparse.Namespace, src: Path) -> None:
        self.kind, self.nonce, self.args, self.src = kind, nonce, args, src
        self.tmp = Path(tempfile.mkdtemp(prefix=f"cmdbench-{kind}-"))
        self.app_dir = self.tmp / "app"
        self.app_dir.mkdir()
        shutil.copy(APP, self.app_dir / APP.name)
        self.runtime = self.tmp / "run"
        self.runtime.mkdir(mode=0o700)
        self.log_path = self.tmp / "server.log"
        self.name = f"cmdbench-{os.getpid()}-{kind}"
        self.seq = 0
        self.version = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.load: Load | None = None
        self.loads: list[Load] = []
        self.attributed = 0  # load failures counted in a reload or a bad deploy
        self.starts: list[float] = []
        self.reloads: list[Reload] = []
        self.bad: list[dict[str, Any]] = []
        self.write(self.next_version())

    @property
    def label(self) -> str:
        return self.kind

    def next_version(self, prefix: str = "") -> str:
        self.seq += 1
        return f"{prefix}{self.kind[:3]}{self.seq:05d}{self.nonce}"

    def write(self, version: str) -> None:
        with open(self.app_dir / "version.txt", "w") as f:
            f.write(version + "\n")
        self.version = version

    def argv(self) -> list[str]:
        gunicorn = [str(BIN / "gunicorn"), "-w", "2"]
        app = "command_wsgi:app"
        if self.kind == "gunicorn":
            return [*gunicorn, "-b", f"{HOST}:{self.port}", app]
        ls = [sys.executable, "-m", "liveswap", "run", "--bind", f"{HOST}:{self.port}", "--name", self.name]
        if self.kind == "proxy":
            return [*ls, "--proxy", "--", *gunicorn, "-b", "127.0.0.1:{port}", app]
        return [*ls, "--", *gunicorn, app]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        if self.kind != "gunicorn":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.src), env.get("PYTHONPATH")]))
        return env

    def start(self, deadline_s: float = 60.0) -> None:
        self.port = free_port()
        with open(self.log_path, "ab") as log:
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
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            p = probe_once(self.port, 1.0)
            if p.outcome == "ok" and p.version == self.version:
                break
            if time.perf_counter() > t0 + deadline_s:
                raise BenchError(f"{self.kind} not serving on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.01)
        self.starts.append(time.perf_counter() - t0)
        self.settle(None, set())
        a = self.args
        self.load = Load(self.port, a.ka, a.close, a.gap, a.timeout)
        self.loads.append(self.load)

    def unattributed(self) -> int:
        return sum(len(x.failures) for x in self.loads) - self.attributed

    def restart(self) -> None:
        if self.load is not None:
            self.load.stop()
        self.stop()
        self.write(self.next_version())
        self.start()

    def hup(self, version: str) -> tuple[float, set[int]]:
        assert self.proc is not None
        old = set(children(self.proc.pid))
        self.write(version)
        t0 = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGHUP)
        return t0, old

    def reload(self, round_no: int, slot: int, warmup: bool) -> Reload:
        assert self.load is not None
        a = self.args
        i0, ok0 = len(self.load.failures), self.load.ok
        new = self.next_version()
        t0, old = self.hup(new)
        sample = Reload(round_no, slot, warmup, new, None)
        next_at = t0
        while (start := time.perf_counter()) < t0 + a.reload_timeout:
            if start < next_at:
                time.sleep(next_at - start)
                continue
            next_at = start + a.interval
            p = probe_once(self.port, a.probe_timeout)
            if sample.record(p, new, t0, start):
                break
        self.settle(sample, old)
        fails = self.load.failures[i0:]
        self.attributed += len(fails)
        sample.load_ok = self.load.ok - ok0
        sample.load_max_s = max((d for e, d in self.load.slow if e >= t0), default=0.0)
        sample.load_failed = by_class(fails)
        sample.load_examples = [f"+{(t - t0) * 1000:.1f} ms {k}: {d}" for t, k, d in fails[:10]]
        self.reloads.append(sample)
        return sample

    def settle(self, sample: Reload | None, old: set[int], timeout: float | None = None) -> None:
        """gunicorn: its old workers gone, two workers; liveswap: one generation, no reload in flight;
        each within ``timeout`` (``--settle-timeout``); then ``--pause``."""
        assert self.proc is not None
        t = time.perf_counter()
        timed_out = True
        while time.perf_counter() < t + (self.args.settle_timeout if timeout is None else timeout):
            if self.kind == "gunicorn":
                kids = set(children(self.proc.pid))
                if not kids & old and len(kids) == 2:
                    timed_out = False
                    break
            else:
                st = self.status()
                if len(st["generations"]) == 1 and not st["reloading"]:
                    timed_out = False
                    if sample is not None:
                        sample.supervisor_ms = (st.get("last_reload") or {}).get("duration_ms")
                    break
            time.sleep(0.02)
        time.sleep(self.args.pause)
        if sample is not None:
            sample.settle_timeout = timed_out
            sample.settle_ms = (time.perf_counter() - t) * 1000
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def status(self) -> dict[str, Any]:
        return liveswap_status(self.env(), self.name)

    def bad_deploy(self, scenario: str) -> dict[str, Any]:
        """A bad version, SIGHUP, ``--bad-watch`` s of watching; then a good version (recovery)."""
        assert self.load is not None and self.proc is not None
        a = self.args
        i0, ok0, log0 = len(self.load.failures), self.load.ok, len(self.log_text())
        bad = self.next_version(f"{scenario}-")
        t0, _ = self.hup(bad)
        probes: dict[str, int] = {}
        while time.perf_counter() < t0 + a.bad_watch:
            p = probe_once(self.port, 1.0)
            key = p.outcome if p.outcome != "ok" else ("old version" if p.version != bad else "bad version?!")
            probes[key] = probes.get(key, 0) + 1
            time.sleep(0.05)
        fails = self.load.failures[i0:]
        out: dict[str, Any] = {
            "scenario": scenario,
            "watch_s": a.bad_watch,
            "load_ok": self.load.ok - ok0,
            "load_failed": by_class(fails),
            "load_failed_total": len(fails),
            "first_failure_ms": round((fails[0][0] - t0) * 1000, 1) if fails else None,
            "load_examples": [f"+{(t - t0) * 1000:.1f} ms {k}: {d}" for t, k, d in fails[:10]],
            "probes": probes,
            "server_alive": self.proc.poll() is None,
            "server_exit": self.proc.returncode,
        }
        if self.kind != "gunicorn" and out["server_alive"]:
            st = self.status()
            out["status"] = {
                k: st.get(k) for k in ("state", "generations", "last_reload", "reloading", "reloads_failed")
            }
        # Recovery: a good version, SIGHUP; restart what died or does not serve it within 20 s.
        out["log"] = self.log_text()[log0:][-20_000:]
        good = self.next_version()
        if out["server_alive"]:
            t1, _ = self.hup(good)
            while time.perf_counter() < t1 + 20:
                p = probe_once(self.port, 1.0)
                if p.outcome == "ok" and p.version == good:
                    out["recovered_by_reload_ms"] = round((p.at - t1) * 1000, 1)
                    break
                time.sleep(0.02)
        if "recovered_by_reload_ms" in out:
            self.settle(None, set(), timeout=5.0)
        # Requests that waited in the queue through the watch are answered after the recovery.
        out["load_max_s"] = max((d for e, d in self.load.slow if e >= t0), default=0.0)
        out["load_over_1s"] = sum(1 for e, d in self.load.slow if e >= t0 and d > 1.0)
        rest = self.load.failures[i0 + len(fails) :]
        out["recovery_load_failed"] = by_class(rest)
        out["recovery_examples"] = [f"+{(t - t0) * 1000:.1f} ms {k}: {d}" for t, k, d in rest[:10]]
        self.attributed += len(fails) + len(rest)
        if "recovered_by_reload_ms" not in out:
            out["restarted"] = True
            self.restart()
        self.bad.append(out)
        return out


# ---- the run ---------------------------------------------------------------------------------------------
def stats(srv: Server) -> dict[str, Any]:
    measured = [r for r in srv.reloads if not r.warmup]
    failed: dict[str, int] = {}
    for r in measured:
        for k, n in r.load_failed.items():
            failed[k] = failed.get(k, 0) + n
    total = sum(failed.values())
    return {
        "reloads": len(measured),
        **sample_stats(srv.reloads),
        "load_ok": sum(r.load_ok for r in measured),
        "load_failed": total,
        "load_failed_by_class": failed,
        "load_failed_per_reload": total / len(measured) if measured else float("nan"),
        "reloads_with_load_failures": sum(1 for r in measured if r.load_failed),
        "warmup_load_failed": sum(sum(r.load_failed.values()) for r in srv.reloads if r.warmup),
        "settle_ms_median": median([r.settle_ms for r in measured]),
        "load_max_s": max((r.load_max_s for r in measured), default=0.0),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def classes(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"servers, comma-separated (default {','.join(KINDS)})")
    ap.add_argument("--reloads", type=int, default=20, help="measured reloads per server (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds, not counted (default 3)")
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between probes (default 0.002)")
    ap.add_argument("--probe-timeout", type=float, default=2.0, help="per-probe timeout (s, default 2)")
    ap.add_argument("--reload-timeout", type=float, default=20.0, help="deadline for the new version (s)")
    ap.add_argument("--settle-timeout", type=float, default=15.0, help="settle deadline (s)")
    ap.add_argument("--pause", type=float, default=0.3, help="pause after settling (s, default 0.3)")
    ap.add_argument("--ka", type=int, default=2, help="keep-alive load clients per server (default 2)")
    ap.add_argument("--close", type=int, default=2, help="Connection: close load clients per server (default 2)")
    ap.add_argument("--gap", type=float, default=0.005, help="pause between a client's requests (s, default 0.005)")
    ap.add_argument("--timeout", type=float, default=5.0, help="load request timeout (s, default 5)")
    ap.add_argument("--bad", default=",".join(BAD), help="bad deploys to try ('' for none; default raise,slow-raise)")
    ap.add_argument("--bad-watch", type=float, default=4.0, help="seconds watched after a bad deploy (default 4)")
    ap.add_argument("--budget", type=float, default=420.0, help="stop starting rounds after this many s")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--snapshot", default=None, help="run liveswap from src/ of this commit")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds) or "gunicorn" not in kinds:
        ap.error(f"--kinds: a subset of {','.join(KINDS)} with gunicorn in it")

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    t_start = time.perf_counter()
    src, src_info = freeze_src(args.snapshot)
    nonce = f"{rng.getrandbits(24):06x}"
    servers = [Server(kind, nonce, args, src) for kind in kinds]
    info = machine_info()
    data: dict[str, Any] = {
        "bench": "command",
        "args": vars(args),
        "seed": seed,
        "machine": info,
        "liveswap_src": src_info,
        "servers": {},
        "notes": [],
    }
    say(f"gunicorn under liveswap vs gunicorn's own HUP, plain WSGI app; seed {seed}")
    say(f"  {args.reloads} reloads each (+{args.warmup} warm-up); load average {info['loadavg_start']}")
    path = write_json(data)
    try:
        for srv in servers:
            srv.start()
            say(f"  {LABELS[srv.kind]}: serving on port {srv.port} after {srv.starts[-1] * 1000:.0f} ms")
        for r in range(args.warmup + args.reloads):
            if time.perf_counter() - t_start > args.budget:
                data["notes"].append(f"time budget reached after {r} rounds")
                say(f"  ! {data['notes'][-1]}")
                break
            for slot, srv in enumerate(rng.sample(servers, len(servers))):
                s = srv.reload(r, slot, warmup=r < args.warmup)
                if s.latency_ms is None or s.failed or s.load_failed or s.settle_timeout:
                    say(
                        f"  ! {srv.kind} round {r}: new code after {fmt(s.latency_ms)} ms, failed probes "
                        f"{classes(s.failed)}, failed load requests {classes(s.load_failed)}"
                        f"{', settle timeout' if s.settle_timeout else ''}"
                    )
                    for ex in s.load_examples[:3]:
                        say(f"      {ex}")
            if (r + 1) % 5 == 0 or r == args.warmup - 1:
                say(f"  round {r + 1} done ({time.perf_counter() - t_start:.0f} s)")
        for scenario in [b for b in args.bad.split(",") if b]:
            for srv in rng.sample(servers, len(servers)):
                b = srv.bad_deploy(scenario)
                say(
                    f"  bad deploy {scenario!r} on {srv.kind}: failed load requests {b['load_failed_total']} "
                    f"({classes(b['load_failed'])}), probes {classes(b['probes'])}, alive {b['server_alive']}"
                    f"{', restarted' if b.get('restarted') else ''}"
                )
    finally:
        for srv in servers:
            if srv.load is not None:
                srv.load.stop()
            left = srv.stop()
            data["servers"][srv.kind] = {
                "label": LABELS[srv.kind],
                "argv": srv.argv(),
                "startup_s": srv.starts,
                "stats": stats(srv),
                "failed_outside_reloads": srv.unattributed(),
                "reloads": [asdict(x) for x in srv.reloads],
                "bad_deploys": srv.bad,
                "left_in_group": left,
            }
            if data["servers"][srv.kind]["stats"]["load_failed"]:
                data["servers"][srv.kind]["log"] = srv.log_text()[-200_000:]
            shutil.rmtree(srv.tmp, ignore_errors=True)
        shutil.rmtree(src.parent, ignore_errors=True)
        data["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        data["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        write_json(data, path)
        say(f"  results: {path}")
    report(data, kinds)
    write_json(data, path)
    return 0


def report(data: dict[str, Any], kinds: list[str]) -> None:
    rows = []
    base = data["servers"]["gunicorn"]["stats"]
    ratios: dict[str, dict[str, float]] = {}
    for kind in kinds:
        st = data["servers"][kind]["stats"]
        ratios[kind] = {
            "median": st["median_ms"] / base["median_ms"],
            "p90": st["p90_ms"] / base["p90_ms"],
        }
        rows.append(
            [
                LABELS[kind],
                f"{st['served']}/{st['reloads']}",
                fmt(st["median_ms"]),
                fmt(st["p90_ms"]),
                fmt(st["max_ms"]),
                "-" if kind == "gunicorn" else f"{ratios[kind]['median']:.2f} / {ratios[kind]['p90']:.2f}",
                f"{st['load_failed_per_reload']:.2f} ({st['load_failed']} of {st['load_ok'] + st['load_failed']})",
                classes(st["load_failed_by_class"]),
                fmt(st["load_max_s"], 2),
                st["failed_probes"],
            ]
        )
    data["ratios_over_gunicorn"] = ratios
    say()
    say("  SIGHUP -> new code, and failed requests under load")
    table(
        [
            "server",
            "reloads",
            "median ms",
            "p90 ms",
            "max ms",
            "ratio med/p90",
            "failed per reload",
            "failure classes",
            "slowest s",
            "failed probes",
        ],
        rows,
    )
    bad_rows = []
    for kind in kinds:
        for b in data["servers"][kind]["bad_deploys"]:
            bad_rows.append(
                [
                    LABELS[kind],
                    b["scenario"],
                    f"{b['load_failed_total']} of {b['load_ok'] + b['load_failed_total']}",
                    classes(b["load_failed"]),
                    fmt(b["first_failure_ms"], 0),
                    f"{b['load_max_s']:.2f} ({b['load_over_1s']})",
                    classes(b["probes"]),
                    "yes" if b["server_alive"] else f"no (exit {b['server_exit']})",
                    "restart" if b.get("restarted") else f"reload, {b.get('recovered_by_reload_ms')} ms",
                ]
            )
    if bad_rows:
        say()
        say(f"  bad deploys: {data['args']['bad_watch']:g} s watched after SIGHUP")
        table(
            [
                "server",
                "deploy",
                "failed",
                "classes",
                "first fail ms",
                "slowest s (>1 s)",
                "probes",
                "alive",
                "recovered by",
            ],
            bad_rows,
        )
    info = data["machine"]
    say(f"\n  elapsed {data['elapsed_s']} s; load average {info['loadavg_start']} -> {info['loadavg_end']}")


def write_json(data: dict[str, Any], path: Path | None = None) -> Path:
    if path is None:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"command-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())

"""``liveswap run`` against gunicorn's UvicornWorker: SIGHUP to new code on the FastAPI app, no --preload.

The FastAPI project in apps/devbench/fastapi_app/ (10 routes, 5 pydantic models, ``VERSION`` from
``shop/version.py``, answered in ``x-app-version``), each server on its own copy in a private temp dir,
2 workers, 127.0.0.1 on a free port, in its own session, stopped by its process group:

  liveswap   python -m liveswap run main:app --workers 2 --bind 127.0.0.1:PORT --app-dir DIR
             (private XDG_RUNTIME_DIR; no --preload: the template learns what to preload from a
             healthy worker, so the first reload teaches it and the warm-up rounds cover that)
  gunicorn   gunicorn -k uvicorn.workers.UvicornWorker -w 2 -b 127.0.0.1:PORT --chdir DIR main:app

One reload: rewrite the version module (a new unique value of the same length), record t0, send
SIGHUP to the master / supervisor, then ``GET /`` with ``Connection: close`` on a fresh loopback
connection every 2 ms until a 200 carries the new version; the latency is from t0 to the head of that
response. Every other outcome than a 200 (refused, reset, closed, 5xx, timeout, ...) is a failed probe.
Then the server settles: liveswap until ``liveswap status --json`` shows one generation and no reload
in flight; gunicorn until its old workers are gone (at most 1.5 s); then 200 ms for both. Warm-up
rounds (3) then measured rounds (20), both servers in each round in a random order.

    .venv/bin/python benchmarks/run_fastapi_bench.py                 # about 2 minutes
    .venv/bin/python benchmarks/run_fastapi_bench.py --reloads 40 --seed 1
    .venv/bin/python benchmarks/run_fastapi_bench.py --snapshot HEAD

liveswap runs from a copy of the working tree's ``src/`` taken at the start (``--snapshot COMMIT``:
``src/`` of a commit). Every server runs with PYTHONDONTWRITEBYTECODE=1. Prints a table and writes
benchmarks/results/run-fastapi-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BIN, HOST, RESULTS, BenchError, children, free_port, machine_info  # noqa: E402
from dev_bench import DEVBENCH, GroupServer, Sample, freeze_src, liveswap_status, probe_once, sample_stats, say, table  # noqa: E402

APP_DIR = DEVBENCH / "fastapi_app"
VERSION_MODULE = "shop/version.py"
KINDS = ("liveswap", "gunicorn")
LABELS = {
    "liveswap": "liveswap run (2 workers)",
    "gunicorn": "gunicorn UvicornWorker (2 workers)",
}
TAGS = {"liveswap": "liv", "gunicorn": "gun"}


@dataclass
class Reload(Sample):
    """One measured SIGHUP."""

    generation: int | None = None


class RunServer(GroupServer):
    def __init__(self, kind: str, nonce: str, args: argparse.Namespace, src: Path) -> None:
        self.kind = kind
        self.nonce = nonce
        self.args = args
        self.src = src
        self.tmp = Path(tempfile.mkdtemp(prefix=f"runbench-{kind}-"))
        os.chmod(self.tmp, 0o700)
        self.app_dir = self.tmp / "app"
        shutil.copytree(APP_DIR, self.app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.runtime = self.tmp / "run"
        self.runtime.mkdir(mode=0o700)
        self.log_path = self.tmp / "server.log"
        self.version_file = self.app_dir / VERSION_MODULE
        self.name = f"runbench-{os.getpid()}-{kind}"
        self.seq = 0
        self.version = self._version(0)
        self.version_file.write_text(f'VERSION = "{self.version}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.startup_s = 0.0
        self.reloads: list[Reload] = []

    def _version(self, seq: int) -> str:
        return f"{TAGS[self.kind]}{seq:05d}-{self.nonce}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
            env.pop(key, None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        if self.kind == "liveswap":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.src), env.get("PYTHONPATH")]))
        return env

    def argv(self) -> list[str]:
        addr = f"{HOST}:{self.port}"
        if self.kind == "liveswap":
            return [sys.executable, "-m", "liveswap", "run", "main:app", "--workers", "2", "--bind", addr]
        return [str(BIN / "gunicorn"), "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "-b", addr]

    def full_argv(self) -> list[str]:
        if self.kind == "liveswap":
            return [*self.argv(), "--app-dir", str(self.app_dir), "--name", self.name]
        return [*self.argv(), "--chdir", str(self.app_dir), "main:app"]

    def start(self, deadline_s: float = 60.0) -> None:
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.full_argv(),
                env=self.env(),
                cwd=self.app_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = t0 + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            p = probe_once(self.port, 1.0)
            if p.outcome == "ok" and p.version == self.version:
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.kind} not serving on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.01)
        self.startup_s = time.perf_counter() - t0
        self._settle(Reload(-1, 0, True, self.version, None), set())

    @property
    def label(self) -> str:
        return self.kind

    def status(self) -> dict[str, Any]:
        return liveswap_status(self.env(), self.name)

    def reload(self, round_no: int, slot: int, warmup: bool) -> Reload:
        assert self.proc is not None
        args = self.args
        self.seq += 1
        new = self._version(self.seq)
        old_workers = set(children(self.proc.pid))
        with open(self.version_file, "w") as f:
            f.write(f'VERSION = "{new}"\n')
        t0 = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGHUP)
        sample = Reload(round_no, slot, warmup, new, None)
        deadline = t0 + args.reload_timeout
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
        self._settle(sample, old_workers)
        self.reloads.append(sample)
        return sample

    def _settle(self, sample: Reload, old_workers: set[int]) -> None:
        """liveswap: one generation, no reload in flight (deadline ``--settle-timeout``); gunicorn:
        its old workers gone and 2 workers (at most 1.5 s); then a fixed pause for both."""
        assert self.proc is not None
        t = time.perf_counter()
        if self.kind == "liveswap":
            deadline = t + self.args.settle_timeout
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
            sample.generation = int(st["generations"][0]["generation"])
        else:
            deadline = t + 1.5
            while True:
                kids = set(children(self.proc.pid))
                if not (kids & old_workers) and len(kids) == 2:
                    break
                if time.perf_counter() > deadline:
                    sample.settle_timeout = True
                    break
                time.sleep(0.01)
        time.sleep(self.args.pause)
        sample.settle_ms = (time.perf_counter() - t) * 1000
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")


def stats(reloads: list[Reload]) -> dict[str, Any]:
    return {
        "reloads": len([r for r in reloads if not r.warmup]),
        **sample_stats(reloads),
        "warmup_latency_ms": [r.latency_ms for r in reloads if r.warmup],
    }


def fmt(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reloads", type=int, default=20, help="measured reloads per server (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds, not counted (default 3)")
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between probes (default 0.002)")
    ap.add_argument("--probe-timeout", type=float, default=2.0, help="per-probe timeout in seconds (default 2)")
    ap.add_argument("--reload-timeout", type=float, default=20.0, help="deadline for the new version (s)")
    ap.add_argument("--settle-timeout", type=float, default=15.0, help="liveswap settle deadline (s)")
    ap.add_argument("--pause", type=float, default=0.2, help="pause after settling (s, default 0.2)")
    ap.add_argument("--budget", type=float, default=300.0, help="stop starting rounds after this many s")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--snapshot", default=None, help="run liveswap from src/ of this commit")
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    t_start = time.perf_counter()
    src, src_info = freeze_src(args.snapshot)
    nonce = f"{rng.getrandbits(24):06x}"
    servers = [RunServer(kind, nonce, args, src) for kind in KINDS]
    info = machine_info()
    data: dict[str, Any] = {
        "bench": "run-fastapi",
        "args": vars(args),
        "seed": seed,
        "machine": info,
        "liveswap_src": src_info,
        "servers": {},
        "notes": [],
    }
    say(f"liveswap run vs gunicorn UvicornWorker, FastAPI app, SIGHUP -> new code; seed {seed}")
    say(f"  {args.reloads} reloads each (+{args.warmup} warm-up rounds); load average {info['loadavg_start']}")
    failed_run = False
    try:
        for srv in servers:
            srv.start()
            say(f"  {LABELS[srv.kind]}: serving on port {srv.port} after {srv.startup_s * 1000:.0f} ms")
        for r in range(args.warmup + args.reloads):
            if time.perf_counter() - t_start > args.budget:
                note = f"time budget reached after {r} rounds"
                say(f"  ! {note}")
                data["notes"].append(note)
                break
            for slot, srv in enumerate(rng.sample(servers, len(servers))):
                time.sleep(rng.uniform(0.05, 0.15))
                s = srv.reload(r, slot, warmup=r < args.warmup)
                if s.latency_ms is None or s.failed:
                    say(f"  ! {srv.kind} round {r}: latency {fmt(s.latency_ms)} ms, failed probes {s.failed}")
            if r == args.warmup - 1 or (r + 1) % 5 == 0:
                say(f"  round {r + 1} done ({time.perf_counter() - t_start:.0f} s)")
        status_end = servers[0].status()
        data["liveswap_status_end"] = status_end
    except BaseException:
        failed_run = True
        raise
    finally:
        for srv in servers:
            left = srv.stop()
            st = stats(srv.reloads)
            entry: dict[str, Any] = {
                "label": LABELS[srv.kind],
                "argv": srv.full_argv(),
                "startup_s": srv.startup_s,
                "stats": st,
                "reloads": [asdict(x) for x in srv.reloads],
                "left_in_group": left,
            }
            if failed_run or st["failed_probes"] or st["late"]:
                entry["log"] = srv.log_text()[-200_000:]
            data["servers"][srv.kind] = entry
            shutil.rmtree(srv.tmp, ignore_errors=True)
        shutil.rmtree(src.parent, ignore_errors=True)
        data["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        data["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        path = write_json(data)
        say(f"  results: {path}")

    rows = []
    for kind in KINDS:
        st = data["servers"][kind]["stats"]
        fails = ", ".join(f"{k} {n}" for k, n in st["failed_by_kind"].items())
        rows.append(
            [
                LABELS[kind],
                f"{st['served']}/{st['reloads']}",
                fmt(st["median_ms"]),
                fmt(st["p90_ms"]),
                fmt(st["max_ms"]),
                f"{st['failed_probes']}{f' ({fails})' if fails else ''}",
            ]
        )
    say()
    table(["server", "reloads", "median ms", "p90 ms", "max ms", "failed probes"], rows)
    lv, gu = (data["servers"][k]["stats"]["median_ms"] for k in KINDS)
    ratio = lv / gu if gu else float("nan")
    data["ratio_median_liveswap_over_gunicorn"] = ratio
    write_json(data, path)
    say(f"\n  median ratio liveswap/gunicorn: {ratio:.3f} ({1 / ratio:.1f}x faster)" if ratio else "")
    say(f"  elapsed {data['elapsed_s']} s; load average {info['loadavg_start']} -> {data['machine']['loadavg_end']}")
    return 0


def write_json(data: dict[str, Any], path: Path | None = None) -> Path:
    if path is None:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"run-fastapi-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())

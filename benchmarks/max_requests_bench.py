"""--max-requests under load: liveswap's recycling against gunicorn's, in the same run.

Both run the same plain WSGI app ([`apps/command_wsgi.py`](apps/command_wsgi.py), copied to a temp
dir with ``version.txt`` = ``1-slow``: its import takes 1 s, as a real app's may) with 2 workers on
127.0.0.1, each in its own session (stopped by its process group), liveswap with a private
``XDG_RUNTIME_DIR``:

  gunicorn            gunicorn -w 2 --max-requests N --max-requests-jitter J command_wsgi:app
  liveswap            liveswap run -w 2 --max-requests N --max-requests-jitter J command_wsgi:app
  (and each without --max-requests, the baseline of the same run)

Each configuration serves ``--duration`` s of load: the keep-alive load client of the tests
(``tests/loadclient.py``: raw sockets, every attempt counted once, as ok or as a failure class),
``--concurrency`` connections, plus a probe thread that times a ``GET /`` on a fresh connection
every 10 ms (what a user arriving at a random moment waits: p50, p99, max). The configurations
run in a random order. Recycles are counted from each server's log (gunicorn: "Autorestarting
worker"; liveswap: "replaced ... (--max-requests)").

    .venv/bin/python benchmarks/max_requests_bench.py            # about 1 minute
    .venv/bin/python benchmarks/max_requests_bench.py --duration 20 --max-requests 5000

Prints a table and writes benchmarks/results/max-requests-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from benchlib import BIN, machine_info, percentile, probe, write_results  # noqa: E402
from loadclient import LoadClient  # noqa: E402

APP = HERE / "apps" / "command_wsgi.py"
SRC = HERE.parent / "src"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(kind: str, port: int, recycle: bool, n: int, jitter: int) -> list[str]:
    limits = ["--max-requests", str(n), "--max-requests-jitter", str(jitter)] if recycle else []
    if kind == "gunicorn":
        return [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", *limits, "command_wsgi:app"]
    return [sys.executable, "-m", "liveswap", "run", "-w", "2", "-b", f"127.0.0.1:{port}", *limits, "command_wsgi:app"]


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if probe(port, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not serving on {port} within {timeout} s:\n{log.read_text(errors='replace')[-2000:]}")


def _probe_loop(port: int, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status, _ = probe(port, timeout=10.0)
            if status != 200:
                failures.append(f"HTTP {status}")
            else:
                latencies.append(time.perf_counter() - t0)
        except OSError as exc:
            failures.append(type(exc).__name__)
        stop.wait(0.01)


def run_one(kind: str, recycle: bool, args: argparse.Namespace, app_dir: Path) -> dict[str, Any]:
    port = _free_port()
    runtime = Path(tempfile.mkdtemp(prefix="mrbench-run-"))
    os.chmod(runtime, 0o700)
    log = runtime / "server.log"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PYTHONPATH=f"{SRC}:{app_dir}")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _command(kind, port, recycle, args.max_requests, args.jitter),
            cwd=app_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(port, proc, log)
        latencies: list[float] = []
        probe_failures: list[str] = []
        stop = threading.Event()
        prober = threading.Thread(target=_probe_loop, args=(port, stop, latencies, probe_failures), daemon=True)
        lc = LoadClient(port=port, mode="keepalive", concurrency=args.concurrency, timeout=10.0)
        lc.start()
        prober.start()
        time.sleep(args.duration)
        stop.set()
        res = lc.stop()
        prober.join(15)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    text = log.read_text(errors="replace")
    shutil.rmtree(runtime, ignore_errors=True)
    recycles = text.count("Autorestarting worker") if kind == "gunicorn" else text.count("(--max-requests)\n")
    return {
        "server": kind,
        "max_requests": args.max_requests if recycle else 0,
        "jitter": args.jitter if recycle else 0,
        "recycles": recycles,
        "requests": res.total,
        "rps": round(res.rps, 1),
        "failed": res.failed,
        "failures": {k: v for k, v in res.failures.items() if v},
        "load_max_latency_ms": round(res.max_latency * 1000, 1),
        "probes": len(latencies),
        "probe_failures": len(probe_failures),
        "probe_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "probe_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "probe_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=12.0, help="seconds of load per configuration")
    ap.add_argument("--max-requests", type=int, default=3000)
    ap.add_argument("--jitter", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    app_dir = Path(tempfile.mkdtemp(prefix="mrbench-app-"))
    shutil.copy(APP, app_dir / APP.name)
    (app_dir / "version.txt").write_text("1-slow\n")
    configs = [(kind, recycle) for kind in ("gunicorn", "liveswap") for recycle in (False, True)]
    rng.shuffle(configs)
    rows = []
    t0 = time.monotonic()
    for kind, recycle in configs:
        row = run_one(kind, recycle, args, app_dir)
        rows.append(row)
        print(
            f"{kind:9} max-requests {row['max_requests']:>5}: {row['requests']:>6} requests ({row['rps']:>7.1f}/s), "
            f"{row['failed']} failed, {row['recycles']} recycles; fresh-connection probe p50 {row['probe_p50_ms']} ms, "
            f"p99 {row['probe_p99_ms']} ms, max {row['probe_max_ms']} ms; load max {row['load_max_latency_ms']} ms",
            flush=True,
        )
    shutil.rmtree(app_dir, ignore_errors=True)
    by = {(r["server"], bool(r["max_requests"])): r for r in rows}
    ratios = {
        "throughput_kept_with_recycling": {
            k: round(by[(k, True)]["rps"] / by[(k, False)]["rps"], 3) for k in ("gunicorn", "liveswap")
        },
        "probe_p99_gunicorn_over_liveswap_recycling": round(
            by[("gunicorn", True)]["probe_p99_ms"] / by[("liveswap", True)]["probe_p99_ms"], 2
        ),
        "probe_max_gunicorn_over_liveswap_recycling": round(
            by[("gunicorn", True)]["probe_max_ms"] / by[("liveswap", True)]["probe_max_ms"], 2
        ),
    }
    print(f"ratios (same run): {ratios}")
    path = write_results(
        "max-requests",
        {
            "args": vars(args),
            "machine": machine_info(),
            "rows": rows,
            "ratios": ratios,
            "seconds": round(time.monotonic() - t0, 1),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

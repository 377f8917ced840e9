"""The proxy's cost: requests/s of a keep-alive load straight to an upstream, and through liveswap's
proxy (``liveswap.proxy.ProxyServer``) in front of it, in the same run.

The upstream is ``uvicorn.run`` on the benchmark app (``apps/run_uvicorn.py``: hello world, uvloop
and httptools); the proxy runs in its own process (``apps/run_proxy.py``), on plain asyncio as in the
supervisor, and on uvloop for comparison. The load is ``wrk -t1 -c16 -d5s`` (keep-alive GET; a Python
client with 16 threads when wrk is not installed), one run per target per round, targets in a
different random order each round, after a 2 s warm-up of each. Everything shares one machine: wrk,
the proxy and the upstream compete for its cores, as they would on a small server.

    .venv/bin/python benchmarks/proxy_bench.py                # 3 rounds: about 1 minute
    .venv/bin/python benchmarks/proxy_bench.py --rounds 5 --duration 10

Reports each target's median requests/s, its ratio to the direct one, and the proxy process's CPU
time per request; writes benchmarks/results/proxy-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    APPS_DIR,
    HOST,
    BenchError,
    cpu_seconds,
    free_port,
    machine_info,
    median,
    probe,
    run_wrk,
    write_results,
)

TARGETS = ("direct", "proxy-asyncio", "proxy-uvloop")


class Child:
    """A server process in its own session, stopped by its process group."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=APPS_DIR
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if probe(port)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{argv} did not answer 200 on port {port}")
            time.sleep(0.05)  # polling a port for readiness: the deadline above bounds it

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def python_load(port: int, duration: float, conns: int) -> dict[str, Any]:
    """The fallback when wrk is missing: ``conns`` threads, each one keep-alive connection."""
    counts = [0] * conns
    errors = [0] * conns
    end = time.monotonic() + duration

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        while time.monotonic() < end:
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                counts[slot] += resp.status == 200
                errors[slot] += resp.status != 200
            except (OSError, http.client.HTTPException):
                errors[slot] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 10)
    return {"requests": sum(counts), "rps": sum(counts) / duration, "failures": sum(errors)}


def load(port: int, duration: float, conns: int, use_wrk: bool) -> dict[str, Any]:
    if use_wrk:
        return run_wrk(port, duration, threads=1, conns=conns).as_dict()
    return python_load(port, duration, conns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    rng = random.Random(args.seed)
    info: dict[str, Any] = machine_info() if use_wrk else {"nproc": os.cpu_count(), "wrk": "absent: python client"}
    py = sys.executable
    upstream_port = free_port()
    children: dict[str, Child] = {}
    runs: list[dict[str, Any]] = []
    try:
        children["direct"] = Child([py, "run_uvicorn.py", str(upstream_port)], upstream_port)
        for target, loop in (("proxy-asyncio", "asyncio"), ("proxy-uvloop", "uvloop")):
            port = free_port()
            children[target] = Child([py, "run_proxy.py", str(port), str(upstream_port), loop], port)
        for target in TARGETS:  # warm-up
            load(children[target].port, 2.0, args.conns, use_wrk)
        for rnd in range(args.rounds):
            order = list(TARGETS)
            rng.shuffle(order)
            for target in order:
                child = children[target]
                cpu0 = cpu_seconds(child.proc.pid)
                result = load(child.port, args.duration, args.conns, use_wrk)
                result.update(target=target, round=rnd, server_cpu_s=cpu_seconds(child.proc.pid) - cpu0)
                runs.append(result)
                print(f"round {rnd + 1} {target:14} {result['rps']:9.0f} req/s  failures {result['failures']}")
    finally:
        for child in children.values():
            child.stop()
    summary: dict[str, Any] = {}
    direct = median([r["rps"] for r in runs if r["target"] == "direct"])
    print(f"\n{'target':14} {'median req/s':>12} {'ratio':>6} {'server CPU us/req':>18}")
    for target in TARGETS:
        mine = [r for r in runs if r["target"] == target]
        rps = median([r["rps"] for r in mine])
        cpu_per_req = median([r["server_cpu_s"] / r["requests"] * 1e6 for r in mine if r["requests"]])
        summary[target] = {
            "median_rps": rps,
            "ratio_to_direct": rps / direct if direct else float("nan"),
            "server_cpu_us_per_request": cpu_per_req,
            "failures": sum(r["failures"] for r in mine),
        }
        print(f"{target:14} {rps:12.0f} {rps / direct:6.3f} {cpu_per_req:18.1f}")
    print("(server CPU: the upstream's for direct; the proxy process's alone for the proxy rows)")
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    path = write_results(
        "proxy",
        {
            "machine": info,
            "load": f"wrk -t1 -c{args.conns} -d{args.duration:g}s" if use_wrk else "python client",
            "rounds": args.rounds,
            "runs": runs,
            "summary": summary,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

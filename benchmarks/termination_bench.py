"""The endpoint-removal race: what a pod's clients see when it is told to stop.

When Kubernetes deletes a pod, the kubelet sends SIGTERM to the container's PID 1 while kube-proxy,
ingress controllers and load balancers learn *later* that the pod is going; until they do, new
connections keep arriving. This benchmark plays that: a few client threads open a new connection
per request (as a load balancer that has not caught up would) from before SIGTERM until ``--lag``
seconds after it, and count the requests that failed (refused, reset, no answer) in that window.

Servers, each sent SIGTERM on its main process only (as the kubelet does), in interleaved rounds:
liveswap without a shutdown delay, liveswap with ``--shutdown-delay`` longer than the lag, uvicorn
(``--workers 2``) and gunicorn with uvicorn workers. Every failure is a request a user would have
seen fail during a rollout.

    .venv/bin/python benchmarks/termination_bench.py [--lag 1.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from benchlib import BenchError, Server, machine_info, probe, write_results

CLIENTS = 4


def _load(port: int, stop_at: list[float], out: list[tuple[float, bool]]) -> None:
    """New connection per request until ``stop_at[0]`` (perf_counter); (time, ok) per request."""
    while time.perf_counter() < stop_at[0]:
        t = time.perf_counter()
        try:
            ok = probe(port, timeout=2.0)[0] == 200
        except OSError:
            ok = False
        out.append((t, ok))
        if not ok:
            time.sleep(0.002)  # a refused port fails in microseconds: keep the count comparable


def one_round(kind: str, extra: list[str], lag: float) -> dict[str, Any]:
    with Server(kind, workers=2, extra_args=extra) as server:
        server.start()
        results: list[tuple[float, bool]] = []
        stop_at = [float("inf")]
        threads = [threading.Thread(target=_load, args=(server.port, stop_at, results)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # steady load before the signal (this is the load, not a synchronisation)
        t0 = time.perf_counter()
        stop_at[0] = t0 + lag
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # the main process only, as the kubelet does
        for t in threads:
            t.join(lag + 10)
        try:
            code = server.proc.wait(30)
        except Exception:  # noqa: BLE001 - reported as no exit code; Server.__exit__ kills the group
            code = None
        window = [(t - t0, ok) for t, ok in results if t >= t0]
        failed = [t for t, ok in window if not ok]
        return {
            "before_ok": sum(1 for t, ok in results if t < t0 and ok),
            "window_requests": len(window),
            "window_failed": len(failed),
            "first_failure_s": round(min(failed), 4) if failed else None,
            "exit_code": code,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lag", type=float, default=1.0, help="seconds the clients keep coming after SIGTERM")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    delay = f"{args.lag + 0.5:g}s"
    servers = {
        "liveswap": ("liveswap", []),
        f"liveswap --shutdown-delay {delay}": ("liveswap", ["--shutdown-delay", delay]),
        "uvicorn --workers 2": ("uvicorn", []),
        "gunicorn -k uvicorn": ("gunicorn-uvicorn", []),
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for r in range(args.rounds):
        for name, (kind, extra) in servers.items():
            try:
                res = one_round(kind, extra, args.lag)
            except BenchError as exc:
                res = {"error": str(exc)[:300]}
            rows[name].append(res)
            print(f"round {r + 1} {name:32s} {res}", flush=True)
    print(f"\nrequests that failed in the {args.lag:g} s after SIGTERM ({CLIENTS} clients, a new connection each):")
    print(f"{'server':34s} {'failed/requests per round':34s} {'first failure after SIGTERM':>28s}")
    summary = {}
    for name, runs in rows.items():
        ok_runs = [x for x in runs if "error" not in x]
        failed = [x["window_failed"] for x in ok_runs]
        total = [x["window_requests"] for x in ok_runs]
        firsts = [x["first_failure_s"] for x in ok_runs if x["first_failure_s"] is not None]
        per_round = ", ".join(f"{f}/{t}" for f, t in zip(failed, total, strict=True))
        first = f"{min(firsts) * 1000:.0f}-{max(firsts) * 1000:.0f} ms" if firsts else "none"
        print(f"{name:34s} {per_round:34s} {first:>28s}")
        summary[name] = {"failed": failed, "requests": total, "first_failure_s": firsts}
    path = write_results(
        "termination",
        {"lag_s": args.lag, "clients": CLIENTS, "rounds": rows, "summary": summary, "machine": machine_info()},
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()

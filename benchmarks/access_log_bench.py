"""What the access log costs: `liveswap run` without it, with it (text and JSON lines), against
uvicorn without and with its own access log (which has no duration); one worker each, interleaved.

    .venv/bin/python benchmarks/access_log_bench.py           # 3 rounds x 5 variants x 3 s, ~1.5 min
    .venv/bin/python benchmarks/access_log_bench.py --quick

The measure is requests per CPU-second of the server's processes (wrk -t2 -c64, keep-alive GET; the
log lines go to a file), as a ratio to uvicorn --no-access-log. Writes
results/access-log-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Server, cpu_seconds, machine_info, median, process_tree, run_wrk, write_results  # noqa: E402

BASE = "uvicorn --no-access-log"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    BASE: ("uvicorn", []),
    "uvicorn --access-log": ("uvicorn", ["--access-log", "--log-level", "info"]),  # (its lines are INFO)
    "liveswap run": ("liveswap", []),
    "liveswap run --access-log": ("liveswap", ["--access-log"]),
    "liveswap run --access-log --log-format json": ("liveswap", ["--access-log", "--log-format", "json"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="runs per variant [3]")
    p.add_argument("--duration", type=float, default=None, help="seconds per run [3]")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    duration = args.duration or (2.0 if args.quick else 3.0)
    out: dict[str, Any] = {
        "benchmark": "access-log",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "rounds": rounds,
        "duration_s": duration,
        "machine": machine_info(),
        "runs": [],
    }
    per_cpu: dict[str, list[float]] = {k: [] for k in VARIANTS}
    rps: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for rnd in range(rounds):
        order = list(VARIANTS) if rnd % 2 == 0 else list(reversed(VARIANTS))
        for label in order:
            kind, extra = VARIANTS[label]
            with Server(kind, workers=1, extra_args=extra) as srv:
                srv.start()
                run_wrk(srv.port, 1, threads=2, conns=64)  # warm-up
                tree = process_tree(srv.pid)
                cpu0 = sum(cpu_seconds(pid) for pid in tree)
                r = run_wrk(srv.port, duration, threads=2, conns=64)
                cpu = sum(cpu_seconds(pid) for pid in tree) - cpu0
                lines = sum(1 for _ in open(srv.log_path, "rb"))
            per_cpu[label].append(r.requests / cpu)
            rps[label].append(r.rps)
            out["runs"].append({"variant": label, "round": rnd, "cpu_s": cpu, "log_lines": lines, **r.as_dict()})
            print(f"  {label:45s} {r.rps:9.0f} req/s {per_cpu[label][-1]:9.0f} req/CPU-s {lines:8d} lines", flush=True)
    base = median(per_cpu[BASE])
    print(f"\n  {'variant':45s} {'req/CPU-s':>10s} {'ratio':>6s} {'req/s':>9s}")
    summary = {}
    for label in VARIANTS:
        m = median(per_cpu[label])
        summary[label] = {"median_req_per_cpu_s": m, "ratio_to_base": m / base, "median_rps": median(rps[label])}
        print(f"  {label:45s} {m:10.0f} {m / base:6.3f} {median(rps[label]):9.0f}")
    out["summary"] = summary
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\nwrote {write_results('access-log', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where liveswap's per-request cost goes: uvicorn alone, uvicorn with liveswap's worker protocol,
uvicorn's protocol with an empty Python override of the per-request method that protocol overrides
(the floor for any such mixin), and ``liveswap run``; one worker each, interleaved.

    .venv/bin/python benchmarks/protocol_overhead.py           # 4 rounds x 4 variants x 4 s, ~2 min
    .venv/bin/python benchmarks/protocol_overhead.py --quick

The measure is requests per CPU-second of the server's processes (wrk -t2 -c64, keep-alive GET),
reported as a ratio to plain uvicorn. Writes results/protocol-overhead-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import HERE, Server, cpu_seconds, machine_info, median, process_tree, run_wrk, write_results  # noqa: E402

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "uvicorn": ("uvicorn", []),
    "uvicorn + liveswap protocol": ("uvicorn", ["--http", "guarded_variants:Guarded"]),
    "uvicorn + empty overrides": ("uvicorn", ["--http", "guarded_variants:PassThrough"]),
    "liveswap run": ("liveswap", []),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="runs per variant [4]")
    p.add_argument("--duration", type=float, default=None, help="seconds per run [4]")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    duration = args.duration or (2.0 if args.quick else 4.0)
    # uvicorn imports the --http class before --app-dir applies: put the variants on the path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "apps"), os.environ.get("PYTHONPATH")]))
    out: dict[str, Any] = {
        "benchmark": "protocol-overhead",
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
            per_cpu[label].append(r.requests / cpu)
            rps[label].append(r.rps)
            out["runs"].append({"variant": label, "round": rnd, "cpu_s": cpu, **r.as_dict()})
            print(f"  {label:30s} {r.rps:9.0f} req/s {per_cpu[label][-1]:9.0f} req/CPU-s", flush=True)
    base = median(per_cpu["uvicorn"])
    print(f"\n  {'variant':30s} {'req/CPU-s':>10s} {'ratio':>6s} {'req/s':>9s}")
    summary = {}
    for label in VARIANTS:
        m = median(per_cpu[label])
        summary[label] = {"median_req_per_cpu_s": m, "ratio_to_uvicorn": m / base, "median_rps": median(rps[label])}
        print(f"  {label:30s} {m:10.0f} {m / base:6.3f} {median(rps[label]):9.0f}")
    out["summary"] = summary
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\nwrote {write_results('protocol-overhead', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

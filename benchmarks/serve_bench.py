"""``liveswap.serve()`` with every protection on, against ``uvicorn.run``; and the cost of a profile.

  1. serve    the same app served by ``uvicorn.run(app, ...)`` (apps/run_uvicorn.py), by
              ``liveswap.serve(app, ..., debug=None)`` (header timeout, 431 limit, max connections,
              drain: every protection) and by ``liveswap.serve(app, ..., debug="127.0.0.1:0")`` (the
              same plus the debug server and its metrics middleware), order rotated each round,
              median req/s and req/CPU-s, and the ratios
  2. profile  serve() under the same load, with ``GET /profile?seconds=D&format=collapsed`` on its
              debug server during the wrk run, against serve() without a profile, interleaved
  3. parts    where serve()'s cost goes: uvicorn.run, + an empty send-wrapping middleware (the floor
              for any such middleware), + liveswap's metrics middleware, + its worker protocol,
              + both, serve(debug=None), serve(); req/CPU-s as a ratio to uvicorn.run

    .venv/bin/python benchmarks/serve_bench.py             # about 7 minutes
    .venv/bin/python benchmarks/serve_bench.py --quick     # a smoke run, not a measurement
    .venv/bin/python benchmarks/serve_bench.py --only profile --rounds 4

Each run is a fresh server, a 2 s wrk warm-up, then wrk -t2 -c64 -dD (keep-alive GET).
Prints tables and writes benchmarks/results/serve-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402 - after the path tweak
    HERE,
    HOST,
    BenchError,
    Server,
    cpu_seconds,
    machine_info,
    median,
    process_tree,
    run_wrk,
    write_results,
    wrk_finish,
    wrk_start,
)

PHASES = ("serve", "profile", "parts")
APPS = HERE / "apps"
DEBUG_LINE = re.compile(r"debug server on http://([\d.]+):(\d+)/")


def say(msg: str = "") -> None:
    print(msg, flush=True)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        padded = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        say("  " + "  ".join(padded))
        if n == 0:
            say("  " + "  ".join("-" * w for w in widths))


def loadavg() -> str:
    return open("/proc/loadavg").read().split()[0]


@dataclass
class ScriptServer(Server):
    """A server started by one of the runner scripts in apps/: ``python apps/<script> PORT``."""

    script: str = ""

    def _argv(self) -> list[str]:
        return [sys.executable, str(APPS / self.script), str(self.port)]

    def debug_port(self, deadline: float) -> int:
        """The debug server's port, from serve()'s "debug server on http://..." log line."""
        while True:
            m = DEBUG_LINE.search(self.log_text())
            if m:
                return int(m.group(2))
            if time.perf_counter() > deadline:
                raise BenchError(f"no 'debug server on' line in the log:\n{self.log_tail()}")
            time.sleep(0.01)


# label -> (runner script in apps/, its options). The first two are the comparison the issue asks
# for; the others price serve()'s parts one at a time (phase "parts").
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "uvicorn.run": ("run_uvicorn.py", []),
    "liveswap.serve": ("run_serve.py", []),
    "uvicorn.run + empty send wrapper": ("run_uvicorn.py", ["--wrap"]),
    "uvicorn.run + metrics middleware": ("run_uvicorn.py", ["--metrics"]),
    "uvicorn.run + liveswap protocol": ("run_uvicorn.py", ["--guarded"]),
    "uvicorn.run + both": ("run_uvicorn.py", ["--metrics", "--guarded"]),
    "serve(debug=None)": ("run_serve.py", ["--no-debug"]),
}
PARTS = [
    "uvicorn.run",
    "uvicorn.run + empty send wrapper",
    "uvicorn.run + metrics middleware",
    "uvicorn.run + liveswap protocol",
    "uvicorn.run + both",
    "serve(debug=None)",
    "liveswap.serve",
]


def debug_get(port: int, target: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def one_run(kind: str, duration: float, profile: bool) -> dict[str, Any]:
    """A fresh server, a 2 s warm-up, then wrk for ``duration`` (with a profile alongside if asked)."""
    script, options = VARIANTS[kind]
    srv = ScriptServer(kind, workers=1, script=script, extra_args=options)
    with srv:
        srv.start()
        has_debug = script == "run_serve.py" and "--no-debug" not in options
        dport = srv.debug_port(time.perf_counter() + 10) if has_debug else None
        run_wrk(srv.port, 2, threads=2, conns=64)  # warm-up, discarded
        tree = process_tree(srv.pid)  # one process; its threads (the debug server's) are counted in it
        prof: dict[str, Any] = {}
        thread: threading.Thread | None = None
        if profile:
            assert dport is not None

            def take() -> None:
                t0 = time.perf_counter()
                try:
                    status, body = debug_get(
                        dport, f"/profile?seconds={duration:g}&format=collapsed", timeout=duration + 30
                    )
                except OSError as exc:
                    prof["error"] = repr(exc)
                    return
                prof["status"] = status
                prof["elapsed_s"] = round(time.perf_counter() - t0, 3)
                lines = [ln for ln in body.decode(errors="replace").splitlines() if ln.strip()]
                prof["stacks"] = len(lines)
                prof["samples"] = sum(int(ln.rsplit(" ", 1)[1]) for ln in lines if ln.rsplit(" ", 1)[-1].isdigit())
                prof["bytes"] = len(body)
                prof["top_stacks"] = sorted(
                    lines, key=lambda ln: -int(ln.rsplit(" ", 1)[1]) if ln.rsplit(" ", 1)[-1].isdigit() else 0
                )[:5]

        cpu0 = sum(cpu_seconds(p) for p in tree)
        wrk = wrk_start(srv.port, duration, threads=2, conns=64)
        if profile:
            thread = threading.Thread(target=take, daemon=True)
            thread.start()
        r = wrk_finish(wrk, duration)
        cpu = sum(cpu_seconds(p) for p in tree) - cpu0
        if thread is not None:
            thread.join(duration + 40)
            if thread.is_alive():
                raise BenchError("the profile request did not return in time")
            if prof.get("status") != 200:
                raise BenchError(f"the profile request failed: {prof}\n{srv.log_tail()}")
        counted = None
        if dport is not None:  # the metrics middleware saw the requests (a check that it is on)
            status, body = debug_get(dport, "/metrics?format=json", timeout=10)
            if status == 200:
                counted = sum(int(x["value"]) for x in json.loads(body).get("requests_total", []))
        log_lines = len(srv.log_text().splitlines())
    return {
        "server": kind,
        "profile": profile,
        "cpu_s": cpu,
        "processes": len(tree),
        "req_per_cpu_s": r.requests / cpu if cpu > 0 else float("nan"),
        "load1": loadavg(),
        "metrics_requests": counted,
        "log_lines": log_lines,
        "profile_result": prof or None,
        **r.as_dict(),
    }


def compare(label: str, a: str, b: str, runs: list[dict[str, Any]], key_a: Any, key_b: Any) -> dict[str, Any]:
    """Medians of two interleaved series and their ratio b / a."""
    ra = [x for x in runs if key_a(x)]
    rb = [x for x in runs if key_b(x)]
    ma, mb = median([x["rps"] for x in ra]), median([x["rps"] for x in rb])
    ca, cb = median([x["req_per_cpu_s"] for x in ra]), median([x["req_per_cpu_s"] for x in rb])
    pairs = [y["rps"] / x["rps"] for x, y in zip(ra, rb, strict=False)]
    table(
        ["", "median req/s", "runs (req/s)", "median req/CPU-s", "failures"],
        [
            [a, f"{ma:.1f}", " ".join(f"{x['rps']:.0f}" for x in ra), f"{ca:.0f}", sum(x["failures"] for x in ra)],
            [b, f"{mb:.1f}", " ".join(f"{x['rps']:.0f}" for x in rb), f"{cb:.0f}", sum(x["failures"] for x in rb)],
        ],
    )
    say(
        f"  {label}: {mb / ma:.3f} by median req/s; per round: {' '.join(f'{p:.3f}' for p in pairs)}; "
        f"by req/CPU-s: {cb / ca:.3f}"
    )
    return {
        "median_rps": {a: ma, b: mb},
        "median_req_per_cpu_s": {a: ca, b: cb},
        "ratio": mb / ma,
        "ratio_per_round": pairs,
        "ratio_per_cpu": cb / ca,
    }


def phase_serve(args: argparse.Namespace) -> dict[str, Any]:
    say(
        f"\n== 1. liveswap.serve() (all protections; debug server off, then on) vs uvicorn.run, same app "
        f"(wrk -t2 -c64 -d{args.duration:g}s, {args.rounds} runs each, order rotated, 2 s warm-up each) =="
    )
    runs = []
    kinds = ["uvicorn.run", "serve(debug=None)", "liveswap.serve"]
    for i in range(args.rounds):
        order = kinds[i % 3 :] + kinds[: i % 3]
        if i % 2:
            order.reverse()
        for kind in order:
            r = one_run(kind, args.duration, profile=False)
            r["round"] = i
            runs.append(r)
            say(
                f"  {kind:15s} {r['rps']:10.1f} req/s  {r['req_per_cpu_s']:8.0f} req/CPU-s  (failures {r['failures']}, "
                f"latency avg {r['latency_avg']}, load {r['load1']}"
                + (f", metrics counted {r['metrics_requests']}" if r["metrics_requests"] is not None else "")
                + ")"
            )
    protections = compare(
        "ratio serve(debug=None)/uvicorn.run",
        "uvicorn.run",
        "serve(debug=None)",
        runs,
        lambda x: x["server"] == "uvicorn.run",
        lambda x: x["server"] == "serve(debug=None)",
    )
    summary = compare(
        "ratio serve()/uvicorn.run",
        "uvicorn.run",
        "liveswap.serve",
        runs,
        lambda x: x["server"] == "uvicorn.run",
        lambda x: x["server"] == "liveswap.serve",
    )
    return {"runs": runs, "protections_only": protections, **summary}


def phase_profile(args: argparse.Namespace) -> dict[str, Any]:
    say(
        f"\n== 2. liveswap.serve() under load, with GET /profile?seconds={args.duration:g}&format=collapsed during "
        f"the wrk run vs without (wrk -t2 -c64 -d{args.duration:g}s, {args.rounds} runs each, ABBA-interleaved) =="
    )
    runs = []
    for i in range(args.rounds):
        order = [False, True] if i % 2 == 0 else [True, False]
        for profile in order:
            r = one_run("liveswap.serve", args.duration, profile=profile)
            r["round"] = i
            runs.append(r)
            p = r["profile_result"]
            say(
                f"  {'profiling' if profile else 'no profile':15s} {r['rps']:10.1f} req/s  "
                f"{r['req_per_cpu_s']:8.0f} req/CPU-s  (failures {r['failures']}, latency avg {r['latency_avg']}, "
                f"load {r['load1']}"
                + (
                    f", profile: {p['samples']} samples in {p['stacks']} stacks, answered in {p['elapsed_s']:.1f} s"
                    if p
                    else ""
                )
                + ")"
            )
    summary = compare(
        "ratio profiling/without", "no profile", "profiling", runs, lambda x: not x["profile"], lambda x: x["profile"]
    )
    return {"runs": runs, **summary}


def phase_parts(args: argparse.Namespace) -> dict[str, Any]:
    dur = args.parts_duration
    say(
        f"\n== 3. where serve()'s cost goes: uvicorn.run with serve()'s parts added one at a time "
        f"(wrk -t2 -c64 -d{dur:g}s, {args.parts_rounds} rounds, order reversed every other round) =="
    )
    runs = []
    for i in range(args.parts_rounds):
        for label in PARTS if i % 2 == 0 else list(reversed(PARTS)):
            r = one_run(label, dur, profile=False)
            r["round"] = i
            runs.append(r)
            say(
                f"  {label:34s} {r['rps']:9.0f} req/s {r['req_per_cpu_s']:9.0f} req/CPU-s  "
                f"(failures {r['failures']}, load {r['load1']})"
            )
    per_cpu = {k: median([x["req_per_cpu_s"] for x in runs if x["server"] == k]) for k in PARTS}
    rps = {k: median([x["rps"] for x in runs if x["server"] == k]) for k in PARTS}
    base, base_rps = per_cpu["uvicorn.run"], rps["uvicorn.run"]
    table(
        ["variant", "median req/CPU-s", "ratio", "median req/s", "ratio (req/s)"],
        [
            [k, f"{per_cpu[k]:.0f}", f"{per_cpu[k] / base:.3f}", f"{rps[k]:.0f}", f"{rps[k] / base_rps:.3f}"]
            for k in PARTS
        ],
    )
    return {
        "runs": runs,
        "median_req_per_cpu_s": per_cpu,
        "median_rps": rps,
        "ratio_per_cpu": {k: per_cpu[k] / base for k in PARTS},
        "ratio_rps": {k: rps[k] / base_rps for k in PARTS},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--rounds", type=int, default=None, help="runs per server (or per profile setting) [6]")
    p.add_argument("--duration", type=float, default=None, help="seconds of wrk per run, and of the profile [8]")
    p.add_argument("--parts-rounds", type=int, default=None, help="rounds of the parts phase [4]")
    p.add_argument("--parts-duration", type=float, default=None, help="seconds of wrk per run in the parts phase [4]")
    args = p.parse_args()
    args.parts_rounds = args.parts_rounds or (1 if args.quick else 4)
    args.parts_duration = args.parts_duration or (2.0 if args.quick else 4.0)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    phases = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    started = time.time()
    out: dict[str, Any] = {
        "benchmark": "serve",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv[1:],
        "quick": args.quick,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "machine": machine_info(),
    }
    say(f"liveswap serve() benchmark, {out['date']}; machine: {json.dumps(out['machine'])}")
    for phase in phases:
        if phase == "serve":
            out["serve"] = phase_serve(args)
        elif phase == "profile":
            out["profile"] = phase_profile(args)
        elif phase == "parts":
            out["parts"] = phase_parts(args)
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    out["elapsed_s"] = round(time.time() - started, 1)
    path = write_results("serve-quick" if args.quick else "serve", out)
    say(f"\nwrote {path} ({out['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

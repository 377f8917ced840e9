"""liveswap against gunicorn HUP and uvicorn --reload: same app, same run.

  1. load     failures per reload under wrk load: keep-alive GET, Connection: close GET and
              keep-alive 1 KiB POST (wrk never retries), a reload every 0.5-1 s
  2. latency  time from the reload command to the first response from the new code, next to the
              app's own import-and-startup time
  3. rps      steady-state requests/s, liveswap (1 worker) / bare uvicorn (1 worker), interleaved
  4. memory   RSS of the supervisor after startup and after 20 reloads (template, worker for context)

    .venv/bin/python benchmarks/reload_bench.py            # everything, about 5 minutes
    .venv/bin/python benchmarks/reload_bench.py --quick    # a short smoke run, about 1.5 minutes
    .venv/bin/python benchmarks/reload_bench.py --only latency,memory

Prints tables and writes benchmarks/results/reload-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402 - after the path tweak
    BIN,
    BenchError,
    Server,
    children,
    cmdline,
    cpu_seconds,
    machine_info,
    median,
    percentile,
    process_tree,
    rss_kb,
    run_wrk,
    wait_for_version,
    write_results,
    wrk_finish,
    wrk_start,
)

PHASES = ("load", "latency", "rps", "memory")
LIVE_IN = re.compile(r"reload ok: generation (\d+) live in ([\d.]+) ms")


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


# ---- 1. failures under load -------------------------------------------------------------------------
MODES: dict[str, dict[str, bool]] = {"keep-alive": {}, "close": {"close": True}, "post": {"post": True}}


def load_scenario(kind: str, mode: str, duration: float, conns: int, rng: random.Random) -> dict[str, Any]:
    with Server(kind, workers=2) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        wrk = wrk_start(srv.port, duration, threads=2, conns=conns, **MODES[mode])
        t0 = time.perf_counter()
        sent = 0
        next_at = t0 + 1.0
        # Reloads at random intervals of 0.5-1 s, none in the last second so the last one lands.
        while time.perf_counter() < t0 + duration - 1.0:
            now = time.perf_counter()
            if now >= next_at:
                srv.set_version(srv.version + 1)
                srv.trigger_reload()
                sent += 1
                next_at = now + rng.uniform(0.5, 1.0)
            time.sleep(0.005)
        res = wrk_finish(wrk, duration)
        # Let the last reload finish before counting (coalesced requests end on the last version).
        wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
        srv.wait_settled(time.perf_counter() + 30)
        done = srv.reloads_done()
        extra: dict[str, Any] = {}
        log = srv.log_text()
        if kind == "liveswap":
            st = srv.liveswap_status()
            extra = {"reloads_failed": st["reloads_failed"], "restarts": st["restarts"],
                     "log_errors": [ln for ln in log.splitlines() if " ERROR " in ln][:20]}
        return {"server": kind, "mode": mode, "duration_s": duration,
                "conns": conns, "reload_commands": sent, "reloads": done, "wrk": res.as_dict(),
                "failures_per_reload": round(res.failures / done, 2) if done else None, **extra}


def phase_load(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    say(f"\n== 1. failures per reload under load (wrk -t2 -c{args.conns} -d{args.load_duration:g}s, "
        "a reload every 0.5-1 s) ==")
    runs = []
    for mode in args.modes:
        kinds = list(args.load_servers)
        rng.shuffle(kinds)
        for kind in kinds:
            say(f"  running {kind} ({mode}) ...")
            r = load_scenario(kind, mode, args.load_duration, args.conns, rng)
            runs.append(r)
            if r["server"] == "liveswap" and (r["wrk"]["failures"] or r.get("log_errors") or r.get("reloads_failed")):
                say(f"  ! liveswap: {json.dumps(r['wrk'])}; failed reloads {r.get('reloads_failed')}; "
                    f"log errors: {r.get('log_errors')}")
    rows = []
    for r in sorted(runs, key=lambda r: (r["mode"], r["server"])):
        w = r["wrk"]
        rows.append([r["server"], r["mode"], f"{r['reloads']}/{r['reload_commands']}", w["requests"],
                     f"{w['rps']:.0f}", w["connect"], w["read"], w["write"],
                     w["timeout"], w["non2xx"], w["failures"],
                     "-" if r["failures_per_reload"] is None else r["failures_per_reload"]])
    table(["server", "mode", "reloads/sent", "requests", "req/s", "connect", "read", "write", "timeout", "non-2xx",
           "failures", "per reload"], rows)
    return {"runs": runs}


# ---- 2. reload latency --------------------------------------------------------------------------------
def measure_reload(srv: Server, method: str) -> dict[str, Any]:
    """One reload with no load: new version, reload command, poll until the new version answers."""
    srv.wait_settled(time.perf_counter() + 30)
    wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
    time.sleep(0.2)  # a quiet gap between measurements, not a synchronisation
    log_before = srv.log_text()
    new = srv.version + 1
    srv.set_version(new)
    errors: list[str] = []
    out: dict[str, Any] = {}
    cli: subprocess.Popen[str] | None = None
    t0 = time.perf_counter()
    if method == "cli":
        cli = subprocess.Popen([str(BIN / "liveswap"), "reload", "--name", srv.name], env=srv.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    else:
        srv.trigger_reload()
    t1 = wait_for_version(srv.port, str(new), t0 + 30, errors=errors)
    out["ms"] = (t1 - t0) * 1000
    out["probe_errors"] = len(errors)
    out["probe_error_kinds"] = {kind: errors.count(kind) for kind in sorted(set(errors))}
    if cli is not None:
        text, _ = cli.communicate(timeout=60)
        out["cli_ms"] = (time.perf_counter() - t0) * 1000  # an upper bound: we polled first
        out["cli_rc"] = cli.returncode
        m = LIVE_IN.search(text)
        out["cli_said_ms"] = float(m.group(2)) if m else None
    if srv.kind == "liveswap":
        srv.wait_settled(time.perf_counter() + 30)
        m = LIVE_IN.search(srv.log_text()[len(log_before):])
        out["supervisor_said_ms"] = float(m.group(2)) if m else None
    return out


def startup_baselines(n: int) -> dict[str, Any]:
    """The app's own import-and-startup time: fresh interpreters, and a bare uvicorn to first 200."""
    py = sys.executable
    bare: list[float] = []
    imp: list[float] = []
    uv_import: list[float] = []
    uvicorn_up: list[float] = []
    with Server("uvicorn", workers=1) as probe_srv:
        env = probe_srv.env()
        for _ in range(n):
            for code, into in (("pass", bare), ("import bench_app", imp), ("import uvicorn, bench_app", uv_import)):
                t0 = time.perf_counter()
                subprocess.run([py, "-c", code], cwd=probe_srv.app_dir, env=env, check=True, timeout=60)
                into.append((time.perf_counter() - t0) * 1000)
            uvicorn_up.append(probe_srv.start() * 1000)
            probe_srv.stop()
    return {"python_pass_ms": bare, "python_import_app_ms": imp, "python_import_uvicorn_app_ms": uv_import,
            "uvicorn_exec_to_first_200_ms": uvicorn_up}


def phase_latency(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    n = args.reloads
    say(f"\n== 2. reload command -> first response from the new code ({args.latency_workers} worker(s), no load, "
        f"{n} reloads each, interleaved, probes on fresh connections 1 ms apart) ==")
    kinds = ("liveswap", "gunicorn-sync", "gunicorn-uvicorn", "uvicorn-reload")
    methods = [("liveswap SIGHUP", "liveswap", "signal"), ("liveswap reload (CLI)", "liveswap", "cli"),
               ("gunicorn sync HUP", "gunicorn-sync", "signal"), ("gunicorn uvicorn-worker HUP", "gunicorn-uvicorn",
                                                                    "signal"),
               ("uvicorn --reload (file write)", "uvicorn-reload", "signal")]
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in methods}
    rss_after: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        servers = {k: stack.enter_context(Server(k, workers=args.latency_workers)) for k in kinds}
        for srv in servers.values():
            srv.start()
        for i in range(n):
            order = list(methods)
            rng.shuffle(order)
            for label, kind, method in order:
                samples[label].append(measure_reload(servers[kind], method))
            say(f"  round {i + 1}/{n} done")
        for kind, srv in servers.items():
            rss_after[kind] = {"top_process_kb": rss_kb(srv.pid), "reloads": srv.reloads_done()}
    base = startup_baselines(args.startup_runs)

    summary: dict[str, Any] = {}
    rows = []
    for label, _, method in methods:
        ms = [s["ms"] for s in samples[label]]
        summary[label] = {"median_ms": median(ms), "p90_ms": percentile(ms, 90), "min_ms": min(ms),
                          "max_ms": max(ms), "probe_errors": sum(s["probe_errors"] for s in samples[label])}
        said = [s["supervisor_said_ms"] for s in samples[label] if s.get("supervisor_said_ms") is not None]
        if said:
            summary[label]["supervisor_said_median_ms"] = median(said)
        if method == "cli":
            summary[label]["cli_exit_median_ms"] = median([s["cli_ms"] for s in samples[label]])
            summary[label]["cli_failures"] = sum(1 for s in samples[label] if s["cli_rc"] != 0)
        rows.append([label, f"{median(ms):.1f}", f"{percentile(ms, 90):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}",
                     summary[label]["probe_errors"], f"{median(said):.1f}" if said else "-"])
    table(["reload", "median ms", "p90 ms", "min ms", "max ms", "probe errors", "supervisor says (median)"], rows)
    cli = summary["liveswap reload (CLI)"]
    say(f"  liveswap reload CLI: process exit at {cli['cli_exit_median_ms']:.1f} ms (median, includes the CLI's "
        f"own interpreter start), {cli['cli_failures']} failed")
    ratio = summary["liveswap SIGHUP"]["median_ms"] / summary["gunicorn sync HUP"]["median_ms"]
    ratio_cli = cli["median_ms"] / summary["gunicorn sync HUP"]["median_ms"]
    say(f"  ratio liveswap SIGHUP / gunicorn sync HUP (medians): {ratio:.2f}   "
        f"(liveswap CLI / gunicorn sync: {ratio_cli:.2f})")
    b = {k: median(v) for k, v in base.items()}
    say("  the app's own import-and-startup (medians of "
        f"{args.startup_runs}): python -c pass {b['python_pass_ms']:.1f} ms, "
        f"python -c 'import bench_app' {b['python_import_app_ms']:.1f} ms, "
        f"python -c 'import uvicorn, bench_app' {b['python_import_uvicorn_app_ms']:.1f} ms, "
        f"bare uvicorn exec -> first 200 {b['uvicorn_exec_to_first_200_ms']:.1f} ms")
    rss = [f"{kind} {v['top_process_kb']['VmRSS'] / 1024:.1f} MB ({v['reloads']} reloads)"
           for kind, v in rss_after.items()]
    say("  RSS of each server's top process after these reloads: " + ", ".join(rss))
    return {"samples": samples, "summary": summary, "ratio_liveswap_hup_to_gunicorn_sync": ratio,
            "ratio_liveswap_cli_to_gunicorn_sync": ratio_cli, "startup": base,
            "startup_medians_ms": b, "after_reloads": rss_after}


# ---- 3. steady-state throughput -----------------------------------------------------------------------
def phase_rps(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    reps, dur = args.rps_reps, args.rps_duration
    say(f"\n== 3. steady-state requests/s: liveswap run --workers 1 vs uvicorn --workers 1 "
        f"(wrk -t2 -c64 -d{dur:g}s, {reps} runs each, ABBA-interleaved, 2 s warm-up each) ==")
    results: dict[str, list[float]] = {"liveswap": [], "uvicorn": []}
    per_cpu: dict[str, list[float]] = {"liveswap": [], "uvicorn": []}
    runs = []
    for i in range(reps):
        order = ["liveswap", "uvicorn"] if i % 2 == 0 else ["uvicorn", "liveswap"]
        for kind in order:
            with Server(kind, workers=1) as srv:
                srv.start()
                srv.wait_settled(time.perf_counter() + 30)
                run_wrk(srv.port, 2, threads=2, conns=64)  # warm-up, discarded
                tree = process_tree(srv.pid)  # liveswap: supervisor, template, worker
                cpu0 = sum(cpu_seconds(p) for p in tree)
                r = run_wrk(srv.port, dur, threads=2, conns=64)
                cpu = sum(cpu_seconds(p) for p in tree) - cpu0
            results[kind].append(r.rps)
            # Requests per CPU-second of the server's processes: less sensitive to a noisy neighbour
            # stealing the core than req/s, so a second opinion on the ratio.
            per_cpu[kind].append(r.requests / cpu if cpu > 0 else float("nan"))
            runs.append({"server": kind, "round": i, "cpu_s": cpu, "processes": len(tree), **r.as_dict()})
            say(f"  {kind:9s} {r.rps:10.1f} req/s  {per_cpu[kind][-1]:8.0f} req/CPU-s  "
                f"(failures {r.failures}, latency avg {r.latency_avg}, load {open('/proc/loadavg').read().split()[0]})")
    ml, mu = median(results["liveswap"]), median(results["uvicorn"])
    cl, cu = median(per_cpu["liveswap"]), median(per_cpu["uvicorn"])
    pairs = [a / b for a, b in zip(results["liveswap"], results["uvicorn"], strict=False)]
    table(["server", "median req/s", "runs (req/s)", "median req/CPU-s"],
          [["liveswap (1 worker)", f"{ml:.1f}", " ".join(f"{x:.0f}" for x in results["liveswap"]), f"{cl:.0f}"],
           ["uvicorn (1 worker)", f"{mu:.1f}", " ".join(f"{x:.0f}" for x in results["uvicorn"]), f"{cu:.0f}"]])
    say(f"  ratio liveswap/uvicorn (median req/s): {ml / mu:.3f}; per round: {' '.join(f'{p:.3f}' for p in pairs)}; "
        f"by req/CPU-s: {cl / cu:.3f}")
    return {"runs": runs, "median_rps": {"liveswap": ml, "uvicorn": mu}, "ratio": ml / mu,
            "ratio_per_round": pairs, "median_req_per_cpu_s": {"liveswap": cl, "uvicorn": cu},
            "ratio_per_cpu": cl / cu}


# ---- 4. memory ---------------------------------------------------------------------------------------
def liveswap_processes(srv: Server) -> dict[str, int]:
    """The template and one live worker. Workers are forked from the template (same cmdline), so
    they are told apart by the worker pids in ``liveswap status``."""
    st = srv.liveswap_status()
    workers = [w["pid"] for g in st["generations"] if g["state"] == "live" for w in g["workers"]]
    template = [k for k in children(srv.pid) if k not in workers and "liveswap._template" in cmdline(k)]
    return {"template": template[0] if template else 0, "worker": workers[0] if workers else 0}


def phase_memory(args: argparse.Namespace) -> dict[str, Any]:
    n = args.memory_reloads
    say(f"\n== 4. memory: liveswap run --workers 2, VmRSS after startup and after {n} reloads ==")
    with Server("liveswap", workers=2) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        time.sleep(0.5)  # let startup finish its work (not a synchronisation: readings only)
        procs = liveswap_processes(srv)
        before = {"supervisor": rss_kb(srv.pid), "template": rss_kb(procs["template"]) if procs["template"] else {},
                  "worker": rss_kb(procs["worker"]) if procs["worker"] else {}}
        for _ in range(n):
            srv.wait_settled(time.perf_counter() + 30)
            srv.set_version(srv.version + 1)
            srv.trigger_reload()
            wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
        srv.wait_settled(time.perf_counter() + 30)
        time.sleep(0.5)
        procs = liveswap_processes(srv)
        after = {"supervisor": rss_kb(srv.pid), "template": rss_kb(procs["template"]) if procs["template"] else {},
                 "worker": rss_kb(procs["worker"]) if procs["worker"] else {}}
        reloads = srv.reloads_done()
    rows = []
    for role in ("supervisor", "template", "worker"):
        b, a = before[role], after[role]
        rows.append([role, f"{b.get('VmRSS', 0) / 1024:.1f}", f"{a.get('VmRSS', 0) / 1024:.1f}",
                     f"{a.get('VmHWM', 0) / 1024:.1f}"])
    table(["process", "RSS after start MB", f"RSS after {reloads} reloads MB", "peak (VmHWM) MB"], rows)
    say("  (RSS counts pages shared with other processes; the workers are forked from the template)")
    return {"before_kb": before, "after_kb": after, "reloads": reloads}


# ---- main ---------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--seed", type=int, default=None, help="seed for the reload intervals and orders")
    p.add_argument("--load-duration", type=float, default=None, help="seconds of wrk per load scenario [10]")
    p.add_argument("--conns", type=int, default=32, help="wrk connections in the load scenarios [32]")
    p.add_argument("--load-servers", default="liveswap,gunicorn-uvicorn,uvicorn-reload,gunicorn-sync",
                   help="servers in the load scenarios")
    p.add_argument("--modes", default="keep-alive,close,post",
                   help="load modes: keep-alive (GET), close (GET, Connection: close), post (keep-alive 1 KiB POST)")
    p.add_argument("--reloads", type=int, default=None, help="reloads per server in the latency phase [15]")
    p.add_argument("--latency-workers", type=int, default=2, help="workers per server in the latency phase [2]")
    p.add_argument("--startup-runs", type=int, default=None, help="runs of each startup baseline [7]")
    p.add_argument("--rps-reps", type=int, default=None, help="throughput runs per server [3]")
    p.add_argument("--rps-duration", type=float, default=None, help="seconds per throughput run [10]")
    p.add_argument("--memory-reloads", type=int, default=20, help="reloads before the second RSS reading [20]")
    args = p.parse_args()
    q = args.quick
    args.load_duration = args.load_duration or (5.0 if q else 10.0)
    args.reloads = args.reloads or (5 if q else 15)
    args.startup_runs = args.startup_runs or (3 if q else 7)
    args.rps_reps = args.rps_reps or (2 if q else 3)
    args.rps_duration = args.rps_duration or (3.0 if q else 10.0)
    args.load_servers = [s for s in args.load_servers.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        p.error(f"unknown mode(s) {sorted(set(args.modes) - set(MODES))}; choose from {', '.join(MODES)}")
    phases = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    started = time.time()
    out: dict[str, Any] = {"benchmark": "reload", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                           "argv": sys.argv[1:], "seed": seed, "quick": q, "machine": machine_info()}
    say(f"liveswap reload benchmark, {out['date']}; machine: {json.dumps(out['machine'])}; seed {seed}")
    # A probe so a broken setup fails before minutes of runs.
    if not (BIN / "liveswap").exists():
        raise BenchError(f"no liveswap in {BIN}; run with the project's venv python")
    for phase in phases:
        if phase == "load":
            out["load"] = phase_load(args, rng)
        elif phase == "latency":
            out["latency"] = phase_latency(args, rng)
        elif phase == "rps":
            out["rps"] = phase_rps(args, rng)
        elif phase == "memory":
            out["memory"] = phase_memory(args)
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    out["elapsed_s"] = round(time.time() - started, 1)
    path = write_results("reload-quick" if q else "reload", out)
    say(f"\nwrote {path} ({out['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

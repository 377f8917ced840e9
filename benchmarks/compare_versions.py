"""liveswap against itself: three versions of src/, and bare uvicorn, interleaved in one run.

Each version's ``src/`` is exported with ``git archive`` (benchlib.snapshot_src) to a temp dir that
is put first on PYTHONPATH for that version's servers only, so the versions run side by side and
edits to the working tree during the run reach none of them.

  1. latency     SIGHUP -> first 200 carrying the new version, ASGI bench app, 2 workers, no load; the
                 three versions run side by side, one reload of each per round in a random order, each
                 after the previous one has settled; probed with a fresh loopback connection every
                 0.5 ms (reload_bench.measure_race); median and p90 per version, ratios B/A, C/B, C/A
  2. throughput  ``liveswap run --workers 1`` of each version and bare ``uvicorn --workers 1 --loop uvloop
                 --http httptools --no-access-log``, a fresh server per run, 2 s warm-up then
                 ``wrk -t2 -c64 -d8s``; per round all four in a random order, the next round reversed;
                 medians of req/s and of requests per CPU-second of the server's processes
  3. zero-loss   per version, 8 s of ``wrk -t2 -c32`` keep-alive GETs with a SIGHUP every 0.5-1 s
                 (reload_bench's load scenario); failures per reload, expected 0

    .venv/bin/python benchmarks/compare_versions.py                       # A=6374cb7 B=332c7d0 C=HEAD, about 3 minutes
    .venv/bin/python benchmarks/compare_versions.py --versions A=6374cb7,B=332c7d0,C=e62879c
    .venv/bin/python benchmarks/compare_versions.py --quick               # a smoke run, not a measurement

Prints tables and writes benchmarks/results/compare-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402 - after the path tweak
    HERE,
    BenchError,
    Server,
    children,
    cmdline,
    cpu_seconds,
    machine_info,
    median,
    percentile,
    process_tree,
    run_wrk,
    snapshot_src,
    write_results,
    wrk_finish,
    wrk_start,
)
from reload_bench import drive_reloads, finish_scenario, measure_race, say, table  # noqa: E402

PHASES = ("latency", "rps", "zero-loss")
DEFAULT_VERSIONS = "A=6374cb7,B=332c7d0,C=HEAD"
UVICORN = "uvicorn"


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


# ---- the versions ------------------------------------------------------------------------------------
@dataclass
class Version:
    """One version of liveswap: a commit whose ``src/`` was exported to ``root``."""

    label: str
    ref: str
    commit: str
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    def env_pythonpath(self) -> str:
        return os.pathsep.join(filter(None, [str(self.src), os.environ.get("PYTHONPATH")]))


def export_version(label: str, ref: str) -> Version:
    """benchlib.snapshot_src, which also puts the snapshot on this process's PYTHONPATH for every
    server; here each version's servers get their own, so the environment is put back."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "LIVESWAP_BENCH_SNAPSHOT")}
    try:
        root = snapshot_src(ref)
        commit = os.environ["LIVESWAP_BENCH_SNAPSHOT"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Version(label, ref, commit, root)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def version_info(v: Version) -> dict[str, Any]:
    """What the JSON says about a version, and where a fresh interpreter with its environment
    imports liveswap from (must be its snapshot)."""
    env = dict(os.environ, PYTHONPATH=v.env_pythonpath())
    r = subprocess.run(
        [sys.executable, "-c", "import liveswap; print(liveswap.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    imported = r.stdout.strip()
    if not imported.startswith(str(v.src)):
        raise BenchError(f"version {v.label}: liveswap imported from {imported!r}, not {v.src} ({r.stderr.strip()})")
    return {
        "ref": v.ref,
        "commit": v.commit,
        "short": v.commit[:7],
        "subject": git("log", "-1", "--format=%s", v.commit)[:200],
        "date": git("log", "-1", "--format=%cI", v.commit),
        "src_tree": git("rev-parse", f"{v.commit}:src"),
        "liveswap_imported_from": imported,
    }


@dataclass
class VersionServer(Server):
    """A benchlib Server whose processes import liveswap from one version's snapshot."""

    pythonpath: str = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env


def server_for(label: str, versions: dict[str, Version], workers: int) -> Server:
    if label == UVICORN:
        return Server("uvicorn", workers=workers)
    return VersionServer("liveswap", workers=workers, pythonpath=versions[label].env_pythonpath())


def ratio_ci(num: list[float], den: list[float], rng: random.Random, n: int = 2000) -> tuple[float, float]:
    """Bootstrap 90 % interval of median(num) / median(den), each resampled on its own."""
    rs = sorted(median(rng.choices(num, k=len(num))) / median(rng.choices(den, k=len(den))) for _ in range(n))
    return rs[int(0.05 * n)], rs[int(0.95 * n) - 1]


PAIRS = (("B", "A"), ("C", "B"), ("C", "A"))


# ---- 1. reload latency -------------------------------------------------------------------------------
def phase_latency(args: argparse.Namespace, versions: dict[str, Version], rng: random.Random) -> dict[str, Any]:
    n, interval = args.reloads, args.probe_interval
    labels = list(versions)
    say(
        f"\n== 1. SIGHUP -> first response from the new code (bench_app:app, 2 workers, no load; the {len(labels)} "
        f"versions side by side, {n} reloads each, one of each per round in a random order, each after the previous "
        f"one settled + 0.2 s; a fresh connection every {interval * 1000:g} ms) =="
    )
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    orders: list[list[str]] = []
    processes: dict[str, list[str]] = {}
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(server_for(label, versions, 2)) for label in labels}
        start_order = list(labels)
        rng.shuffle(start_order)
        for label in start_order:
            servers[label].start()
        for label in labels:
            srv = servers[label]
            srv.wait_settled(time.perf_counter() + 30)
            processes[label] = [cmdline(p) for p in children(srv.pid)]
        for i in range(n):
            order = list(labels)
            rng.shuffle(order)
            orders.append(order)
            for label in order:
                samples[label].append(measure_race(servers[label], interval))
            if (i + 1) % 5 == 0 or i + 1 == n:
                say(f"  round {i + 1}/{n} done (load {loadavg()[0]})")
        reloads_ok = {label: servers[label].reloads_done() for label in labels}
    summary: dict[str, Any] = {}
    rows = []
    for label in labels:
        ms = [s["ms"] for s in samples[label]]
        said = [s["supervisor_said_ms"] for s in samples[label] if s.get("supervisor_said_ms") is not None]
        summary[label] = {
            "median_ms": median(ms),
            "p90_ms": percentile(ms, 90),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "probe_errors": sum(s["probe_errors"] for s in samples[label]),
            "old_answers": sum(s["old_answers"] for s in samples[label]),
            "supervisor_said_median_ms": median(said) if said else None,
            "reloads_ok": reloads_ok[label],
        }
        sm = summary[label]
        rows.append(
            [
                f"{label} {versions[label].commit[:7]}",
                f"{sm['median_ms']:.1f}",
                f"{sm['p90_ms']:.1f}",
                f"{sm['min_ms']:.1f}",
                f"{sm['max_ms']:.1f}",
                sm["probe_errors"],
                f"{sm['supervisor_said_median_ms']:.1f}" if said else "-",
                f"{reloads_ok[label]}/{n}",
            ]
        )
    table(
        [
            "version",
            "median ms",
            "p90 ms",
            "min ms",
            "max ms",
            "probe errors",
            "supervisor says (median)",
            "reloads ok",
        ],
        rows,
    )
    boot = random.Random(args.seed_used)
    ratios: dict[str, Any] = {}
    rows = []
    for a, b in PAIRS:
        if a not in versions or b not in versions:
            continue
        xa = [s["ms"] for s in samples[a]]
        xb = [s["ms"] for s in samples[b]]
        lo, hi = ratio_ci(xa, xb, boot)
        ratios[f"{a}/{b}"] = {
            "median": summary[a]["median_ms"] / summary[b]["median_ms"],
            "p90": summary[a]["p90_ms"] / summary[b]["p90_ms"],
            "median_bootstrap_90": [lo, hi],
        }
        r = ratios[f"{a}/{b}"]
        rows.append([f"{a}/{b}", f"{r['median']:.2f}", f"{lo:.2f}-{hi:.2f}", f"{r['p90']:.2f}"])
    table(["ratio", "medians", "bootstrap 90 % of medians' ratio", "p90s"], rows)
    return {
        "samples": samples,
        "orders": orders,
        "summary": summary,
        "ratios": ratios,
        "probe_interval_s": interval,
        "processes": processes,
    }


# ---- 2. steady-state throughput ----------------------------------------------------------------------
def phase_rps(args: argparse.Namespace, versions: dict[str, Version], rng: random.Random) -> dict[str, Any]:
    reps, dur, warm = args.rps_reps, args.rps_duration, args.warmup
    labels = [*versions, UVICORN]
    say(
        f"\n== 2. steady-state requests/s, 1 worker: liveswap run of each version and bare uvicorn --loop uvloop "
        f"--http httptools (a fresh server per run, {warm:g} s warm-up, then wrk -t2 -c64 -d{dur:g}s; {reps} rounds, "
        f"all four in a random order, the next round reversed) =="
    )
    rps: dict[str, list[float]] = {label: [] for label in labels}
    per_cpu: dict[str, list[float]] = {label: [] for label in labels}
    runs: list[dict[str, Any]] = []
    orders: list[list[str]] = []
    order = list(labels)
    for i in range(reps):
        if i % 2 == 0:
            rng.shuffle(order)
        else:
            order.reverse()
        orders.append(list(order))
        for label in order:
            with server_for(label, versions, 1) as srv:
                srv.start()
                srv.wait_settled(time.perf_counter() + 30)
                run_wrk(srv.port, warm, threads=2, conns=64)  # warm-up, discarded
                tree = process_tree(srv.pid)  # liveswap: supervisor, template, worker, spare
                cpu0 = sum(cpu_seconds(p) for p in tree)
                r = run_wrk(srv.port, dur, threads=2, conns=64)
                cpu = sum(cpu_seconds(p) for p in tree) - cpu0
            rps[label].append(r.rps)
            per_cpu[label].append(r.requests / cpu if cpu > 0 else float("nan"))
            load = loadavg()[0]
            runs.append(
                {"label": label, "round": i, "cpu_s": cpu, "processes": len(tree), "loadavg": load, **r.as_dict()}
            )
            say(
                f"  {label:8s} {r.rps:10.1f} req/s  {per_cpu[label][-1]:8.0f} req/CPU-s  "
                f"(failures {r.failures}, latency avg {r.latency_avg}, load {load})"
            )
    med = {label: median(rps[label]) for label in labels}
    med_cpu = {label: median(per_cpu[label]) for label in labels}
    rows = []
    for label in labels:
        name = f"{label} {versions[label].commit[:7]}" if label in versions else "uvicorn (bare)"
        rows.append(
            [
                name,
                f"{med[label]:.1f}",
                " ".join(f"{x:.0f}" for x in rps[label]),
                f"{med[label] / med[UVICORN]:.3f}",
                f"{med_cpu[label]:.0f}",
                " ".join(f"{x:.0f}" for x in per_cpu[label]),
                f"{med_cpu[label] / med_cpu[UVICORN]:.3f}",
            ]
        )
    table(
        ["server", "median req/s", "runs req/s", "/ uvicorn", "median req/CPU-s", "runs req/CPU-s", "/ uvicorn"],
        rows,
    )

    def per_round(xs: dict[str, list[float]], a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(xs[a], xs[b], strict=True)]

    ratios: dict[str, Any] = {}
    rows = []
    pairs = [(a, b) for a, b in PAIRS if a in versions and b in versions] + [(v, UVICORN) for v in versions]
    for a, b in pairs:
        rr, rc = per_round(rps, a, b), per_round(per_cpu, a, b)
        ratios[f"{a}/{b}"] = {
            "median_rps": med[a] / med[b],
            "rps_per_round": rr,
            "median_per_cpu": med_cpu[a] / med_cpu[b],
            "per_cpu_per_round": rc,
        }
        rows.append(
            [
                f"{a}/{b}",
                f"{med[a] / med[b]:.3f}",
                " ".join(f"{x:.3f}" for x in rr),
                f"{med_cpu[a] / med_cpu[b]:.3f}",
                " ".join(f"{x:.3f}" for x in rc),
            ]
        )
    table(["ratio", "req/s (medians)", "req/s per round", "req/CPU-s (medians)", "req/CPU-s per round"], rows)
    return {
        "runs": runs,
        "orders": orders,
        "median_rps": med,
        "median_req_per_cpu_s": med_cpu,
        "ratios": ratios,
        "wrk": f"-t2 -c64 -d{dur:g}s after {warm:g} s warm-up",
    }


# ---- 3. zero-loss check ------------------------------------------------------------------------------
def zero_loss_scenario(
    label: str, versions: dict[str, Version], duration: float, conns: int, rng: random.Random
) -> dict[str, Any]:
    """reload_bench's keep-alive load scenario (its drive_reloads and finish_scenario) on one version."""
    with server_for(label, versions, 2) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        wrk = wrk_start(srv.port, duration, threads=2, conns=conns)
        sent = drive_reloads(srv, time.perf_counter(), duration, rng)
        res = wrk_finish(wrk, duration)
        extra = finish_scenario(srv)
    done = extra.pop("reloads")
    return {
        "label": label,
        "mode": "keep-alive",
        "duration_s": duration,
        "conns": conns,
        "reload_commands": sent,
        "reloads": done,
        "wrk": res.as_dict(),
        "failures_per_reload": round(res.failures / done, 2) if done else None,
        **extra,
    }


def phase_zero_loss(args: argparse.Namespace, versions: dict[str, Version], rng: random.Random) -> dict[str, Any]:
    dur, conns = args.load_duration, args.conns
    say(
        f"\n== 3. zero-loss check: wrk -t2 -c{conns} -d{dur:g}s keep-alive GET, a SIGHUP every 0.5-1 s, 2 workers, "
        "the versions in a random order =="
    )
    order = list(versions)
    rng.shuffle(order)
    runs = []
    for label in order:
        say(f"  running {label} ...")
        runs.append(zero_loss_scenario(label, versions, dur, conns, rng))
    rows = []
    for r in sorted(runs, key=lambda r: str(r["label"])):
        w = r["wrk"]
        rows.append(
            [
                f"{r['label']} {versions[r['label']].commit[:7]}",
                f"{r['reloads']}/{r['reload_commands']}",
                w["requests"],
                f"{w['rps']:.0f}",
                w["connect"],
                w["read"],
                w["write"],
                w["timeout"],
                w["non2xx"],
                w["failures"],
                "-" if r["failures_per_reload"] is None else r["failures_per_reload"],
                r["reloads_failed"],
                r["restarts"],
                len(r["log_errors"]),
            ]
        )
    table(
        [
            "version",
            "reloads/sent",
            "requests",
            "req/s",
            "connect",
            "read",
            "write",
            "timeout",
            "non-2xx",
            "failures",
            "per reload",
            "failed reloads",
            "restarts",
            "ERROR lines",
        ],
        rows,
    )
    return {"order": order, "runs": runs}


# ---- main --------------------------------------------------------------------------------------------
def parse_versions(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        label, sep, ref = item.partition("=")
        if not sep or not label or not ref or label == UVICORN:
            raise ValueError(f"bad version {item!r}: expected LABEL=COMMIT")
        out.append((label, ref))
    if len({label for label, _ in out}) != len(out):
        raise ValueError("version labels must differ")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--versions",
        default=DEFAULT_VERSIONS,
        help=f"LABEL=COMMIT,...; the ratios are B/A, C/B and C/A [{DEFAULT_VERSIONS}]",
    )
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    p.add_argument("--seed", type=int, default=None, help="seed for the orders and reload intervals")
    p.add_argument("--reloads", type=int, default=None, help="reloads per version in the latency phase [30]")
    p.add_argument(
        "--probe-interval", type=float, default=0.0005, help="seconds between fresh probe connections [0.0005]"
    )
    p.add_argument("--rps-reps", type=int, default=None, help="throughput rounds [3]")
    p.add_argument("--rps-duration", type=float, default=None, help="seconds of wrk per throughput run [8]")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each throughput run [2]")
    p.add_argument("--load-duration", type=float, default=None, help="seconds of wrk per zero-loss check [8]")
    p.add_argument("--conns", type=int, default=32, help="wrk connections in the zero-loss check [32]")
    args = p.parse_args()
    q = args.quick
    args.reloads = args.reloads or (4 if q else 30)
    args.rps_reps = args.rps_reps or (2 if q else 3)
    args.rps_duration = args.rps_duration or (2.0 if q else 8.0)
    args.load_duration = args.load_duration or (3.0 if q else 8.0)
    if q:
        args.warmup = min(args.warmup, 1.0)
    phases = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(phases) - set(PHASES):
        p.error(f"unknown phase(s) {sorted(set(phases) - set(PHASES))}; choose from {', '.join(PHASES)}")
    try:
        wanted = parse_versions(args.versions)
    except ValueError as exc:
        p.error(str(exc))
    args.seed_used = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(args.seed_used)

    versions: dict[str, Version] = {}
    try:
        for label, ref in wanted:
            versions[label] = export_version(label, ref)
        return run(args, phases, versions, rng)
    finally:
        for v in versions.values():
            shutil.rmtree(v.root, ignore_errors=True)


def run(args: argparse.Namespace, phases: list[str], versions: dict[str, Version], rng: random.Random) -> int:
    started = time.time()
    machine = machine_info()
    # machine_info() says where this process's environment imports liveswap from (the working tree):
    # the servers import their version's snapshot instead, recorded per version.
    machine["liveswap_imported_from"] = "per version, see versions"
    out: dict[str, Any] = {
        "benchmark": "compare-versions",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv[1:],
        "seed": args.seed_used,
        "quick": args.quick,
        "head_at_start": git("rev-parse", "HEAD"),
        "versions": {label: version_info(v) for label, v in versions.items()},
        "machine": machine,
        "settings": {
            "reloads": args.reloads,
            "probe_interval_s": args.probe_interval,
            "rps_reps": args.rps_reps,
            "rps_duration_s": args.rps_duration,
            "warmup_s": args.warmup,
            "load_duration_s": args.load_duration,
            "conns": args.conns,
        },
    }
    la = float(machine["loadavg_start"][0])
    vs = ", ".join(f"{label}={v['short']}" for label, v in out["versions"].items())
    say(f"liveswap version comparison, {out['date']}; versions {vs}; seed {args.seed_used}")
    say(f"machine: {json.dumps(machine)}")
    if la > 6:
        say(f"  ! load average {la:.2f} at the start (above 6): the machine is busy; ratios only, and noisier")
    out["phase_elapsed_s"] = {}
    for phase in phases:
        t = time.time()
        if phase == "latency":
            out["latency"] = phase_latency(args, versions, rng)
        elif phase == "rps":
            out["rps"] = phase_rps(args, versions, rng)
        elif phase == "zero-loss":
            out["zero_loss"] = phase_zero_loss(args, versions, rng)
        out["phase_elapsed_s"][phase] = round(time.time() - t, 1)
        out["machine"][f"loadavg_after_{phase}"] = loadavg()
    out["machine"]["loadavg_end"] = loadavg()
    out["elapsed_s"] = round(time.time() - started, 1)
    path = write_results("compare-quick" if args.quick else "compare", out)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in out["phase_elapsed_s"].items())
    say(
        f"\nload average {' '.join(machine['loadavg_start'])} at the start, {' '.join(out['machine']['loadavg_end'])} "
        f"at the end\nwrote {path} ({out['elapsed_s']:.0f} s: {times})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

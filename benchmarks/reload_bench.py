"""liveswap against gunicorn HUP and uvicorn --reload: same apps, same run.

  1. load     failures per reload under wrk load: keep-alive GET, Connection: close GET and
              keep-alive 1 KiB POST (wrk never retries), a reload every 0.5-1 s, for each app kind
              (--apps): asgi, wsgi, flask, stream-asgi, stream-wsgi; for the streaming apps also a
              Python client (streamclient.py) that tells streams cut mid-body from the rest
  2. latency  time from the reload command to the first response from the new code, next to the
              app's own import-and-startup time; for the WSGI app, liveswap against gunicorn sync,
              with no load and under wrk load, probing with a fresh connection every 0.5 ms
  3. rps      steady-state requests/s, liveswap (1 worker) / bare uvicorn (1 worker), interleaved
  4. memory   RSS of the supervisor after startup and after 20 reloads (template, worker for context)

    .venv/bin/python benchmarks/reload_bench.py            # everything, about 15 minutes
    .venv/bin/python benchmarks/reload_bench.py --quick    # a short smoke run, not a measurement
    .venv/bin/python benchmarks/reload_bench.py --only latency,memory
    .venv/bin/python benchmarks/reload_bench.py --only load --apps wsgi,stream-wsgi

Prints tables and writes benchmarks/results/reload-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402 - after the path tweak
    APP_KINDS,
    BIN,
    BenchError,
    Server,
    children,
    cmdline,
    cpu_seconds,
    machine_info,
    median,
    parse_wrk,
    percentile,
    process_tree,
    race_for_version,
    rss_kb,
    run_wrk,
    snapshot_src,
    wait_for_version,
    write_results,
    wrk_finish,
    wrk_start,
)
from streamclient import StreamClient  # noqa: E402

PHASES = ("load", "latency", "rps", "memory")
SERVERS = ("liveswap", "gunicorn-uvicorn", "uvicorn-reload", "gunicorn-sync", "gunicorn-gthread")
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


def drive_reloads(
    srv: Server, t0: float, duration: float, rng: random.Random, before: Callable[[], None] | None = None
) -> int:
    """Reloads at random intervals of 0.5-1 s from t0 + 1 s, none in the last second so the last one
    lands; returns the number of reload commands sent. ``before`` runs just before each one."""
    sent = 0
    next_at = t0 + 1.0
    while time.perf_counter() < t0 + duration - 1.0:
        now = time.perf_counter()
        if now >= next_at:
            srv.set_version(srv.version + 1)
            if before is not None:
                before()
            srv.trigger_reload()
            sent += 1
            next_at = now + rng.uniform(0.5, 1.0)
        time.sleep(0.005)
    return sent


def finish_scenario(srv: Server) -> dict[str, Any]:
    """After the load: let the last reload finish (coalesced requests end on the last version), then
    count the reloads the server's own way, and for liveswap its failed reloads, restarts and errors."""
    wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
    srv.wait_settled(time.perf_counter() + 30)
    out: dict[str, Any] = {"reloads": srv.reloads_done()}
    if srv.kind == "liveswap":
        st = srv.liveswap_status()
        out.update(
            reloads_failed=st["reloads_failed"],
            restarts=st["restarts"],
            log_errors=[ln for ln in srv.log_text().splitlines() if " ERROR " in ln][:20],
        )
    return out


def load_scenario(
    kind: str, mode: str, duration: float, conns: int, rng: random.Random, app: str = "asgi"
) -> dict[str, Any]:
    with Server(kind, workers=2, app=app) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        wrk = wrk_start(srv.port, duration, threads=2, conns=conns, **MODES[mode])
        sent = drive_reloads(srv, time.perf_counter(), duration, rng)
        res = wrk_finish(wrk, duration)
        extra = finish_scenario(srv)
        done = extra.pop("reloads")
        return {
            "server": kind,
            "app": app,
            "target": srv.app_kind.target(kind),
            "mode": mode,
            "duration_s": duration,
            "conns": conns,
            "reload_commands": sent,
            "reloads": done,
            "wrk": res.as_dict(),
            "failures_per_reload": round(res.failures / done, 2) if done else None,
            **extra,
        }


def stream_scenario(kind: str, app: str, duration: float, conns: int, rng: random.Random) -> dict[str, Any]:
    """The streaming app under the Python stream client (keep-alive GETs) while it is reloaded."""
    with Server(kind, workers=2, app=app) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        client = StreamClient(srv.port, conns=conns, timeout=5.0)
        t0 = time.perf_counter()
        client.start()
        mid: list[int] = []  # responses mid-body (head received, body not ended) as each reload was sent
        sent = drive_reloads(srv, t0, duration, rng, before=lambda: mid.append(client.mid_body()))
        while time.perf_counter() < t0 + duration:
            time.sleep(0.01)
        res = client.stop()
        extra = finish_scenario(srv)
        done = extra.pop("reloads")
        return {
            "server": kind,
            "app": app,
            "target": srv.app_kind.target(kind),
            "mode": "streams",
            "duration_s": duration,
            "conns": conns,
            "reload_commands": sent,
            "reloads": done,
            "streams": res.as_dict(),
            "mid_body_at_reload": mid,
            "failures_per_reload": round(res.failed / done, 2) if done else None,
            **extra,
        }


def liveswap_lost(r: dict[str, Any]) -> bool:
    failures = r["wrk"]["failures"] if "wrk" in r else r["streams"]["failed"]
    return r["server"] == "liveswap" and bool(failures or r.get("log_errors") or r.get("reloads_failed"))


def load_table(runs: list[dict[str, Any]]) -> None:
    rows = []
    for r in sorted(runs, key=lambda r: (r["mode"], r["server"])):
        w = r["wrk"]
        rows.append(
            [
                r["server"],
                r["mode"],
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
            ]
        )
    table(
        [
            "server",
            "mode",
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
        ],
        rows,
    )


def stream_table(runs: list[dict[str, Any]]) -> None:
    rows = []
    for r in sorted(runs, key=lambda r: (r["app"], r["server"])):
        c = r["streams"]
        counts = c["counts"]
        rows.append(
            [
                r["server"],
                r["app"],
                f"{r['reloads']}/{r['reload_commands']}",
                c["total"],
                counts["complete"],
                f"{counts['cut_mid_body']} ({c['cut_by_eof']}/{c['cut_by_reset']})",
                counts["closed_before_response"],
                counts["reset"],
                counts["refused"],
                counts["timeout"],
                counts["bad_response"],
                f"{c['reused'] - sum(c['reused_failed'].values())}/{c['reused']}",
                f"{median([float(x) for x in r['mid_body_at_reload']]):g}" if r["mid_body_at_reload"] else "-",
                c["failed"],
                "-" if r["failures_per_reload"] is None else r["failures_per_reload"],
            ]
        )
    table(
        [
            "server",
            "app",
            "reloads/sent",
            "streams",
            "complete",
            "cut mid-body (eof/reset)",
            "closed before resp",
            "reset",
            "refused",
            "timeout",
            "bad",
            "next answered",
            "mid-body at HUP",
            "failures",
            "per reload",
        ],
        rows,
    )


def phase_load(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    say(
        f"\n== 1. failures per reload under load (wrk -t2 -c{args.conns} -d{args.load_duration:g}s, "
        f"-c{args.stream_conns} for the streaming apps; a reload every 0.5-1 s) =="
    )
    runs: list[dict[str, Any]] = []
    stream_runs: list[dict[str, Any]] = []
    for app in args.apps:
        kind_of_app = APP_KINDS[app]
        servers = [s for s in kind_of_app.servers if s in args.load_servers]
        conns = args.stream_conns if kind_of_app.streams else args.conns
        for mode in args.modes:
            order = list(servers)
            rng.shuffle(order)
            for kind in order:
                say(f"  running {kind} ({app}, {mode}) ...")
                r = load_scenario(kind, mode, args.load_duration, conns, rng, app=app)
                runs.append(r)
                if liveswap_lost(r):
                    say(
                        f"  ! liveswap ({app}, {mode}): {json.dumps(r['wrk'])}; failed reloads "
                        f"{r.get('reloads_failed')}; log errors: {r.get('log_errors')}"
                    )
        if kind_of_app.streams and args.stream_client:
            order = list(servers)
            rng.shuffle(order)
            for kind in order:
                say(f"  running {kind} ({app}, stream client) ...")
                r = stream_scenario(kind, app, args.load_duration, args.stream_conns, rng)
                stream_runs.append(r)
                if liveswap_lost(r):
                    say(
                        f"  ! liveswap ({app}, stream client): {json.dumps(r['streams'])}; failed reloads "
                        f"{r.get('reloads_failed')}; log errors: {r.get('log_errors')}"
                    )
    for app in args.apps:
        app_runs = [r for r in runs if r["app"] == app]
        if not app_runs:
            continue
        targets = sorted({f"{r['server']}: {r['target']}" for r in app_runs})
        say(f"\n  -- app {app} ({'; '.join(targets)}) --")
        load_table(app_runs)
    if stream_runs:
        say(
            f"\n  -- streaming apps under the stream client ({args.stream_conns} keep-alive connections, each a "
            f"GET after the other; a reload every 0.5-1 s for {args.load_duration:g} s) --"
        )
        stream_table(stream_runs)
        say(
            "  (next answered: requests sent on a connection whose previous response promised keep-alive, "
            "answered/sent; mid-body at HUP: median number of responses whose head had arrived and whose body "
            "had not ended when each reload was sent)"
        )
    lost = [r for r in runs + stream_runs if liveswap_lost(r)]
    liveswap_runs = [r for r in runs + stream_runs if r["server"] == "liveswap"]
    say(
        f"\n  liveswap: {len(liveswap_runs)} scenarios, {sum(r['reloads'] for r in liveswap_runs)} reloads, "
        f"{sum(r['wrk']['requests'] if 'wrk' in r else r['streams']['total'] for r in liveswap_runs)} requests; "
        f"scenarios with a failure, a failed reload or an ERROR line: {len(lost)}"
        + "".join(f"\n    {r['app']} {r['mode']}" for r in lost)
    )
    return {"runs": runs, "stream_runs": stream_runs}


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
        cli = subprocess.Popen(
            [str(BIN / "liveswap"), "reload", "--name", srv.name],
            env=srv.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
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
        m = LIVE_IN.search(srv.log_text()[len(log_before) :])
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
    return {
        "python_pass_ms": bare,
        "python_import_app_ms": imp,
        "python_import_uvicorn_app_ms": uv_import,
        "uvicorn_exec_to_first_200_ms": uvicorn_up,
    }


def phase_latency(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    n = args.reloads
    say(
        f"\n== 2. reload command -> first response from the new code ({args.latency_workers} worker(s), no load, "
        f"{n} reloads each, interleaved, probes on fresh connections 1 ms apart) =="
    )
    kinds = ("liveswap", "gunicorn-sync", "gunicorn-uvicorn", "uvicorn-reload")
    methods = [
        ("liveswap SIGHUP", "liveswap", "signal"),
        ("liveswap reload (CLI)", "liveswap", "cli"),
        ("gunicorn sync HUP", "gunicorn-sync", "signal"),
        ("gunicorn uvicorn-worker HUP", "gunicorn-uvicorn", "signal"),
        ("uvicorn --reload (file write)", "uvicorn-reload", "signal"),
    ]
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
        summary[label] = {
            "median_ms": median(ms),
            "p90_ms": percentile(ms, 90),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "probe_errors": sum(s["probe_errors"] for s in samples[label]),
        }
        said = [s["supervisor_said_ms"] for s in samples[label] if s.get("supervisor_said_ms") is not None]
        if said:
            summary[label]["supervisor_said_median_ms"] = median(said)
        if method == "cli":
            summary[label]["cli_exit_median_ms"] = median([s["cli_ms"] for s in samples[label]])
            summary[label]["cli_failures"] = sum(1 for s in samples[label] if s["cli_rc"] != 0)
        rows.append(
            [
                label,
                f"{median(ms):.1f}",
                f"{percentile(ms, 90):.1f}",
                f"{min(ms):.1f}",
                f"{max(ms):.1f}",
                summary[label]["probe_errors"],
                f"{median(said):.1f}" if said else "-",
            ]
        )
    table(["reload", "median ms", "p90 ms", "min ms", "max ms", "probe errors", "supervisor says (median)"], rows)
    cli = summary["liveswap reload (CLI)"]
    say(
        f"  liveswap reload CLI: process exit at {cli['cli_exit_median_ms']:.1f} ms (median, includes the CLI's "
        f"own interpreter start), {cli['cli_failures']} failed"
    )
    ratio = summary["liveswap SIGHUP"]["median_ms"] / summary["gunicorn sync HUP"]["median_ms"]
    ratio_cli = cli["median_ms"] / summary["gunicorn sync HUP"]["median_ms"]
    say(
        f"  ratio liveswap SIGHUP / gunicorn sync HUP (medians): {ratio:.2f}   "
        f"(liveswap CLI / gunicorn sync: {ratio_cli:.2f})"
    )
    b = {k: median(v) for k, v in base.items()}
    say(
        "  the app's own import-and-startup (medians of "
        f"{args.startup_runs}): python -c pass {b['python_pass_ms']:.1f} ms, "
        f"python -c 'import bench_app' {b['python_import_app_ms']:.1f} ms, "
        f"python -c 'import uvicorn, bench_app' {b['python_import_uvicorn_app_ms']:.1f} ms, "
        f"bare uvicorn exec -> first 200 {b['uvicorn_exec_to_first_200_ms']:.1f} ms"
    )
    rss = [
        f"{kind} {v['top_process_kb']['VmRSS'] / 1024:.1f} MB ({v['reloads']} reloads)" for kind, v in rss_after.items()
    ]
    say("  RSS of each server's top process after these reloads: " + ", ".join(rss))
    return {
        "samples": samples,
        "summary": summary,
        "ratio_liveswap_hup_to_gunicorn_sync": ratio,
        "ratio_liveswap_cli_to_gunicorn_sync": ratio_cli,
        "startup": base,
        "startup_medians_ms": b,
        "after_reloads": rss_after,
    }


def measure_race(srv: Server, interval: float) -> dict[str, Any]:
    """One SIGHUP reload, timed with ``race_for_version``: a fresh connection every ``interval``."""
    srv.wait_settled(time.perf_counter() + 30)
    wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
    time.sleep(0.2)  # a quiet gap between measurements, not a synchronisation
    log_before = srv.log_text()
    new = srv.version + 1
    srv.set_version(new)
    t0 = time.perf_counter()
    srv.trigger_reload()
    r = race_for_version(srv.port, str(new), t0 + 30, interval=interval)
    out: dict[str, Any] = {
        "ms": (r.t_new - t0) * 1000,
        "probes": r.probes,
        "old_answers": r.old_answers,
        "probe_errors": sum(r.errors.values()),
        "probe_error_kinds": r.errors,
        "max_in_flight": r.max_open,
    }
    if srv.kind == "liveswap":
        srv.wait_settled(time.perf_counter() + 30)
        m = LIVE_IN.search(srv.log_text()[len(log_before) :])
        out["supervisor_said_ms"] = float(m.group(2)) if m else None
    return out


def stop_wrk(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """End a wrk started with a long -d early: SIGINT makes it stop and print its totals."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise BenchError("wrk did not stop on SIGINT") from None
    return parse_wrk(out).as_dict()


WSGI_LATENCY = {"liveswap SIGHUP": "liveswap", "gunicorn sync HUP": "gunicorn-sync"}


def phase_latency_wsgi(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    n, interval, c = args.reloads, args.probe_interval, args.latency_load_conns
    say(
        f"\n== 2b. WSGI app (bench_wsgi:app): SIGHUP -> first response from the new code, liveswap vs gunicorn "
        f"sync ({args.latency_workers} workers each), {n} reloads each per condition, interleaved in a random "
        f"order; a fresh connection every {interval * 1000:g} ms whether or not the earlier ones were answered; "
        f"first with no load, then with wrk -t1 -c{c} (keep-alive GET) on each server throughout =="
    )
    conditions = ("no load", f"wrk -c{c} each")
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        cond: {label: [] for label in WSGI_LATENCY} for cond in conditions
    }
    wrk_during: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            label: stack.enter_context(Server(kind, workers=args.latency_workers, app="wsgi"))
            for label, kind in WSGI_LATENCY.items()
        }
        for srv in servers.values():
            srv.start()
            srv.wait_settled(time.perf_counter() + 30)
        for cond in conditions:
            loaded = cond != "no load"
            wrks: dict[str, subprocess.Popen[str]] = {}
            if loaded:
                # -d is an upper bound; wrk is stopped with SIGINT when the reloads are done.
                for label, srv in servers.items():
                    wrks[label] = wrk_start(srv.port, 600, threads=1, conns=c)
                time.sleep(1.0)  # let both servers reach their steady state under load
            try:
                for i in range(n):
                    order = list(servers)
                    rng.shuffle(order)
                    for label in order:
                        samples[cond][label].append(measure_race(servers[label], interval))
                    if (i + 1) % 5 == 0 or i + 1 == n:
                        say(f"  {cond}: round {i + 1}/{n} done")
            finally:
                for label, proc in wrks.items():
                    wrk_during[label] = stop_wrk(proc)
    summary: dict[str, Any] = {}
    rows = []
    for cond in conditions:
        summary[cond] = {}
        for label in WSGI_LATENCY:
            ss = samples[cond][label]
            ms = [x["ms"] for x in ss]
            said = [x["supervisor_said_ms"] for x in ss if x.get("supervisor_said_ms") is not None]
            summary[cond][label] = {
                "median_ms": median(ms),
                "p90_ms": percentile(ms, 90),
                "min_ms": min(ms),
                "max_ms": max(ms),
                "probe_errors": sum(x["probe_errors"] for x in ss),
                "probes_median": median([x["probes"] for x in ss]),
                "supervisor_said_median_ms": median(said) if said else None,
            }
            sm = summary[cond][label]
            rows.append(
                [
                    label,
                    cond,
                    f"{sm['median_ms']:.1f}",
                    f"{sm['p90_ms']:.1f}",
                    f"{sm['min_ms']:.1f}",
                    f"{sm['max_ms']:.1f}",
                    f"{sm['probes_median']:.0f}",
                    sm["probe_errors"],
                    f"{sm['supervisor_said_median_ms']:.1f}" if said else "-",
                ]
            )
    table(
        [
            "reload",
            "load",
            "median ms",
            "p90 ms",
            "min ms",
            "max ms",
            "probes/reload (median)",
            "probe errors",
            "supervisor says (median)",
        ],
        rows,
    )
    ratios = {
        cond: summary[cond]["liveswap SIGHUP"]["median_ms"] / summary[cond]["gunicorn sync HUP"]["median_ms"]
        for cond in conditions
    }
    ratios_p90 = {
        cond: summary[cond]["liveswap SIGHUP"]["p90_ms"] / summary[cond]["gunicorn sync HUP"]["p90_ms"]
        for cond in conditions
    }
    say(
        "  ratio liveswap SIGHUP / gunicorn sync HUP: "
        + "; ".join(f"{cond}: {ratios[cond]:.2f} (medians), {ratios_p90[cond]:.2f} (p90)" for cond in conditions)
    )
    if wrk_during:
        say(
            "  wrk during the loaded block: "
            + "; ".join(
                f"{label}: {w['requests']} requests, {w['rps']:.0f} req/s, {w['failures']} failures "
                f"(connect {w['connect']}, read {w['read']}, write {w['write']}, timeout {w['timeout']}, "
                f"non-2xx {w['non2xx']})"
                for label, w in wrk_during.items()
            )
        )
    return {
        "samples": samples,
        "summary": summary,
        "ratio_liveswap_to_gunicorn_sync": ratios,
        "ratio_p90_liveswap_to_gunicorn_sync": ratios_p90,
        "wrk_during_load": wrk_during,
        "probe_interval_s": interval,
        "load_conns_each": c,
    }


# ---- 3. steady-state throughput -----------------------------------------------------------------------
def phase_rps(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    reps, dur = args.rps_reps, args.rps_duration
    say(
        f"\n== 3. steady-state requests/s: liveswap run --workers 1 vs uvicorn --workers 1 "
        f"(wrk -t2 -c64 -d{dur:g}s, {reps} runs each, ABBA-interleaved, 2 s warm-up each) =="
    )
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
            say(
                f"  {kind:9s} {r.rps:10.1f} req/s  {per_cpu[kind][-1]:8.0f} req/CPU-s  "
                f"(failures {r.failures}, latency avg {r.latency_avg}, load {open('/proc/loadavg').read().split()[0]})"
            )
    ml, mu = median(results["liveswap"]), median(results["uvicorn"])
    cl, cu = median(per_cpu["liveswap"]), median(per_cpu["uvicorn"])
    pairs = [a / b for a, b in zip(results["liveswap"], results["uvicorn"], strict=False)]
    table(
        ["server", "median req/s", "runs (req/s)", "median req/CPU-s"],
        [
            ["liveswap (1 worker)", f"{ml:.1f}", " ".join(f"{x:.0f}" for x in results["liveswap"]), f"{cl:.0f}"],
            ["uvicorn (1 worker)", f"{mu:.1f}", " ".join(f"{x:.0f}" for x in results["uvicorn"]), f"{cu:.0f}"],
        ],
    )
    say(
        f"  ratio liveswap/uvicorn (median req/s): {ml / mu:.3f}; per round: {' '.join(f'{p:.3f}' for p in pairs)}; "
        f"by req/CPU-s: {cl / cu:.3f}"
    )
    return {
        "runs": runs,
        "median_rps": {"liveswap": ml, "uvicorn": mu},
        "ratio": ml / mu,
        "ratio_per_round": pairs,
        "median_req_per_cpu_s": {"liveswap": cl, "uvicorn": cu},
        "ratio_per_cpu": cl / cu,
    }


# ---- 4. memory ---------------------------------------------------------------------------------------
def liveswap_processes(srv: Server) -> dict[str, int]:
    """The template and one live worker. Workers are forked from the template (same cmdline), so
    they are told apart by the worker pids in ``liveswap status``."""
    st = srv.liveswap_status()
    workers = [w["pid"] for g in st["generations"] if g["state"] == "live" for w in g["workers"]]
    # "-m liveswap.template.process" since a555377, "-m liveswap._template" before it
    markers = ("liveswap.template", "liveswap._template")
    template = [k for k in children(srv.pid) if k not in workers and any(m in cmdline(k) for m in markers)]
    return {"template": template[0] if template else 0, "worker": workers[0] if workers else 0}


def phase_memory(args: argparse.Namespace) -> dict[str, Any]:
    n = args.memory_reloads
    say(f"\n== 4. memory: liveswap run --workers 2, VmRSS after startup and after {n} reloads ==")
    with Server("liveswap", workers=2) as srv:
        srv.start()
        srv.wait_settled(time.perf_counter() + 30)
        time.sleep(0.5)  # let startup finish its work (not a synchronisation: readings only)
        procs = liveswap_processes(srv)
        before = {
            "supervisor": rss_kb(srv.pid),
            "template": rss_kb(procs["template"]) if procs["template"] else {},
            "worker": rss_kb(procs["worker"]) if procs["worker"] else {},
        }
        for _ in range(n):
            srv.wait_settled(time.perf_counter() + 30)
            srv.set_version(srv.version + 1)
            srv.trigger_reload()
            wait_for_version(srv.port, str(srv.version), time.perf_counter() + 30)
        srv.wait_settled(time.perf_counter() + 30)
        time.sleep(0.5)
        procs = liveswap_processes(srv)
        after = {
            "supervisor": rss_kb(srv.pid),
            "template": rss_kb(procs["template"]) if procs["template"] else {},
            "worker": rss_kb(procs["worker"]) if procs["worker"] else {},
        }
        reloads = srv.reloads_done()
    rows = []
    for role in ("supervisor", "template", "worker"):
        b, a = before[role], after[role]
        rows.append(
            [
                role,
                f"{b.get('VmRSS', 0) / 1024:.1f}",
                f"{a.get('VmRSS', 0) / 1024:.1f}",
                f"{a.get('VmHWM', 0) / 1024:.1f}",
            ]
        )
    table(["process", "RSS after start MB", f"RSS after {reloads} reloads MB", "peak (VmHWM) MB"], rows)
    say("  (RSS counts pages shared with other processes; the workers are forked from the template)")
    return {"before_kb": before, "after_kb": after, "reloads": reloads}


# ---- main ---------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--seed", type=int, default=None, help="seed for the reload intervals and orders")
    p.add_argument(
        "--snapshot",
        metavar="COMMIT",
        default=None,
        help="run every server on liveswap's src/ as of COMMIT (git archive to a temp dir, first on PYTHONPATH), "
        "so that edits to the working tree during the run do not reach the servers",
    )
    p.add_argument(
        "--load-duration", type=float, default=None, help="seconds of wrk per load scenario [10; 3 with --quick]"
    )
    p.add_argument("--conns", type=int, default=32, help="wrk connections in the load scenarios [32]")
    p.add_argument(
        "--apps",
        default=",".join(APP_KINDS),
        help=f"app kinds: {', '.join(APP_KINDS)} [all]; the latency phase runs its ASGI part for asgi "
        "and its WSGI part (liveswap vs gunicorn sync) for wsgi",
    )
    p.add_argument(
        "--load-servers",
        default=",".join(SERVERS),
        help="servers in the load scenarios (each app runs under those that apply to it) [all]",
    )
    p.add_argument(
        "--stream-conns", type=int, default=8, help="connections for the streaming apps, wrk and the stream client [8]"
    )
    p.add_argument(
        "--no-stream-client",
        dest="stream_client",
        action="store_false",
        help="skip the stream client scenarios of the streaming apps",
    )
    p.add_argument(
        "--modes",
        default="keep-alive,close,post",
        help="load modes: keep-alive (GET), close (GET, Connection: close), post (keep-alive 1 KiB POST)",
    )
    p.add_argument("--reloads", type=int, default=None, help="reloads per server in the latency phase [15]")
    p.add_argument("--latency-workers", type=int, default=2, help="workers per server in the latency phase [2]")
    p.add_argument(
        "--probe-interval",
        type=float,
        default=0.0005,
        help="seconds between fresh probe connections in the WSGI latency part [0.0005]",
    )
    p.add_argument(
        "--latency-load-conns",
        type=int,
        default=16,
        help="wrk connections on each server in the loaded WSGI latency block [16]",
    )
    p.add_argument("--startup-runs", type=int, default=None, help="runs of each startup baseline [7]")
    p.add_argument("--rps-reps", type=int, default=None, help="throughput runs per server [3]")
    p.add_argument("--rps-duration", type=float, default=None, help="seconds per throughput run [10]")
    p.add_argument("--memory-reloads", type=int, default=20, help="reloads before the second RSS reading [20]")
    args = p.parse_args()
    q = args.quick
    args.load_duration = args.load_duration or (3.0 if q else 10.0)
    args.reloads = args.reloads or (5 if q else 15)
    args.startup_runs = args.startup_runs or (3 if q else 7)
    args.rps_reps = args.rps_reps or (2 if q else 3)
    args.rps_duration = args.rps_duration or (3.0 if q else 10.0)
    args.load_servers = [s for s in args.load_servers.split(",") if s]
    if set(args.load_servers) - set(SERVERS):
        p.error(f"unknown server(s) {sorted(set(args.load_servers) - set(SERVERS))}; choose from {', '.join(SERVERS)}")
    args.apps = [a for a in args.apps.split(",") if a]
    if set(args.apps) - set(APP_KINDS):
        p.error(f"unknown app(s) {sorted(set(args.apps) - set(APP_KINDS))}; choose from {', '.join(APP_KINDS)}")
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        p.error(f"unknown mode(s) {sorted(set(args.modes) - set(MODES))}; choose from {', '.join(MODES)}")
    phases = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    snapshot = snapshot_src(args.snapshot) if args.snapshot else None
    try:
        return run(args, phases, seed, rng, q)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)


def run(args: argparse.Namespace, phases: list[str], seed: int, rng: random.Random, q: bool) -> int:
    started = time.time()
    out: dict[str, Any] = {
        "benchmark": "reload",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv[1:],
        "seed": seed,
        "quick": q,
        "machine": machine_info(),
    }
    say(f"liveswap reload benchmark, {out['date']}; machine: {json.dumps(out['machine'])}; seed {seed}")
    # A probe so a broken setup fails before minutes of runs.
    if not (BIN / "liveswap").exists():
        raise BenchError(f"no liveswap in {BIN}; run with the project's venv python")
    out["phase_elapsed_s"] = {}
    for phase in phases:
        phase_started = time.time()
        if phase == "load":
            out["load"] = phase_load(args, rng)
        elif phase == "latency":
            out["latency"] = phase_latency(args, rng) if "asgi" in args.apps else {}
            if "wsgi" in args.apps:
                out["latency"]["wsgi_app"] = phase_latency_wsgi(args, rng)
        elif phase == "rps":
            out["rps"] = phase_rps(args, rng)
        elif phase == "memory":
            out["memory"] = phase_memory(args)
        out["phase_elapsed_s"][phase] = round(time.time() - phase_started, 1)
        out["machine"][f"loadavg_after_{phase}"] = open("/proc/loadavg").read().split()[:3]
    out["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    out["elapsed_s"] = round(time.time() - started, 1)
    path = write_results("reload-quick" if q else "reload", out)
    phase_times = ", ".join(f"{k} {v:.0f} s" for k, v in out["phase_elapsed_s"].items())
    say(f"\nwrote {path} ({out['elapsed_s']:.0f} s: {phase_times})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

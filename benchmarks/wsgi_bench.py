"""WSGI at native speed (issue 10): requests/s of one worker of each WSGI server, in the same run.

Servers (each one worker, each binding 127.0.0.1 port 0 itself; the real port is read back from
/proc, so there is no bind-close-rebind race):

    liveswap          liveswap run APP --workers 1                      (--wsgi-adapter native, the default)
    liveswap-a2wsgi   liveswap run APP --workers 1 --wsgi-adapter a2wsgi
    gunicorn-sync     gunicorn -k sync -w 1
    gunicorn-gthread  gunicorn -k gthread -w 1 --threads 4              (8 in the wait case)
    uvicorn-wsgi      uvicorn --interface wsgi (uvloop, httptools, no access log; one process)
    granian-wsgi      granian --interface wsgi --workers 1 (its default blocking threads)

Cases (``--cases``):

    trivial  apps/bench_wsgi.py: a plain WSGI function; all six servers; keep-alive and close
    flask    apps/bench_flask.py: a one-route Flask app; all six servers; keep-alive and close
    wait     apps/bench_wait.py: sleeps 10 ms per request; liveswap --threads 8, gunicorn gthread
             --threads 8, gunicorn sync and granian --blocking-threads 8 for reference; keep-alive

Load: ``wrk -t2 -c32 -dD`` keep-alive GET, and the same with ``-H 'Connection: close'``. Every server
of a case is started once, warmed up (1 s of wrk), then measured in rounds, every server and mode
once a round (A B C ... A B C, the order rotated by one each round). Reports the median req/s over
the rounds, its ratio to gunicorn sync and to granian, the server's CPU time per request (its whole
process tree: a second opinion that a busy neighbour disturbs less), non-2xx and socket errors,
and checks the issue's targets on the keep-alive figures. This machine has 2 cores: wrk runs on
them too and takes roughly one, so every figure is "with the client on the same cores". Others
work on the same machine: each run also records the CPU that neither the server nor wrk used
(/proc/stat less the server's tree and wrk's rusage); a run where that exceeds ``--disturbed``
cores (0.3) is measured again, up to ``--retries`` times (1) within ``--retry-budget`` seconds in all
(40), keeping the least disturbed, and the tables count the runs still disturbed ("disturb").

    .venv/bin/python benchmarks/wsgi_bench.py                       # about 2.5-3 minutes
    .venv/bin/python benchmarks/wsgi_bench.py --rounds 3 --duration 3 --cases trivial
    .venv/bin/python benchmarks/wsgi_bench.py --profile 8           # + py-spy on liveswap's worker

Writes benchmarks/results/wsgi-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402 - after the path tweak
    APPS_DIR,
    BIN,
    HOST,
    BenchError,
    cpu_seconds,
    machine_info,
    median,
    probe,
    process_tree,
    run_wrk,
    snapshot_src,
    write_results,
    wrk_finish,
    wrk_start,
)

WRK_THREADS, WRK_CONNS = 2, 32
MODES = ("keep-alive", "close")
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str = "", end: str = "\n") -> None:
    print(msg, end=end, flush=True)


# ---- the servers --------------------------------------------------------------------------------
def argv_for(server: str, target: str, threads: int) -> list[str]:
    """The command line of one server kind, one worker, port 0 on 127.0.0.1."""
    if server.startswith("liveswap"):
        argv = [str(BIN / "liveswap"), "run", target, "--bind", f"{HOST}:0", "--workers", "1"]
        argv += ["--app-dir", str(APPS_DIR), "--name", f"wsgibench-{os.getpid()}-{server}"]
        if server == "liveswap-a2wsgi":
            argv += ["--wsgi-adapter", "a2wsgi"]
        if threads > 1:
            argv += ["--threads", str(threads)]
        return argv
    if server.startswith("gunicorn"):
        # --no-control-socket: gunicorn 27 otherwise binds ~/.gunicorn/gunicorn.ctl, one path for all.
        argv = [str(BIN / "gunicorn"), target, "-w", "1", "-b", f"{HOST}:0", "--chdir", str(APPS_DIR)]
        argv += ["--no-control-socket", "--log-level", "warning"]
        if server == "gunicorn-sync":
            return argv + ["-k", "sync"]
        return argv + ["-k", "gthread", "--threads", str(threads)]
    if server == "uvicorn-wsgi":
        return [
            str(BIN / "uvicorn"),
            target,
            "--interface",
            "wsgi",
            "--host",
            HOST,
            "--port",
            "0",
            "--app-dir",
            str(APPS_DIR),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    if server == "granian-wsgi":
        argv = [str(BIN / "granian"), "--interface", "wsgi", "--host", HOST, "--port", "0", "--workers", "1"]
        argv += ["--no-access-log", "--working-dir", str(APPS_DIR), "--log-level", "warning"]
        if threads > 1:
            argv += ["--blocking-threads", str(threads)]
        return argv + [target]
    raise ValueError(server)


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state held by any of ``pids`` (their fds matched to /proc/net/tcp*)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Running:
    """One server process in its own session (process group), stopped by that group id."""

    label: str
    argv: list[str]
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wsgibench-")))
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    start_s: float = 0.0

    def start(self, deadline_s: float = 60.0) -> None:
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.tmp), PYTHONUNBUFFERED="1")
        for var in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "BENCH_VERSION_FILE"):
            env.pop(var, None)
        os.chmod(self.tmp, 0o700)
        t0 = time.perf_counter()
        with open(self.tmp / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=APPS_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = t0 + deadline_s
        while True:  # the port: bound by the server itself, read back from /proc
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
            ports = listening_ports(process_tree(self.proc.pid))
            if len(ports) > 1:
                raise BenchError(f"{self.label} listens on several ports {sorted(ports)}: which one?")
            if ports:
                self.port = ports.pop()
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.label} bound no port within {deadline_s} s:\n{self.log_tail()}")
            time.sleep(0.01)  # polling /proc for the bind; the deadline above bounds it
        while True:  # then its first 200
            try:
                if probe(self.port, timeout=2.0)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                raise BenchError(f"{self.label} not answering 200 on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.01)
        self.start_s = time.perf_counter() - t0

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.tmp / "server.log").read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(10)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    say(f"  ! {self.label}: SIGTERM, waited 10 s, sending SIGKILL to group {self.proc.pid}")
            try:  # whatever is left in the group (a worker, a template)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- the cases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    title: str
    target: str
    servers: tuple[tuple[str, str, int], ...]  # (label, kind, threads)
    modes: tuple[str, ...]


ALL_SIX = ("liveswap", "liveswap-a2wsgi", "gunicorn-sync", "gunicorn-gthread", "uvicorn-wsgi", "granian-wsgi")
CASES = {
    "trivial": Case(
        "trivial",
        "trivial WSGI app (bench_wsgi:app)",
        "bench_wsgi:app",
        tuple((s, s, 4 if s == "gunicorn-gthread" else 1) for s in ALL_SIX),
        MODES,
    ),
    "flask": Case(
        "flask",
        "small Flask app (bench_flask:app)",
        "bench_flask:app",
        tuple((s, s, 4 if s == "gunicorn-gthread" else 1) for s in ALL_SIX),
        MODES,
    ),
    "wait": Case(
        "wait",
        "WSGI app that sleeps 10 ms per request (bench_wait:app)",
        "bench_wait:app",
        (
            ("liveswap-t8", "liveswap", 8),
            ("gunicorn-gthread-t8", "gunicorn-gthread", 8),
            ("gunicorn-sync", "gunicorn-sync", 1),
            ("granian-wsgi-bt8", "granian-wsgi", 8),
        ),
        ("keep-alive",),
    ),
}


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat's first line: busy is
    user + nice + system + steal; irq and softirq time is left out, as much of it is the loopback
    traffic of the run itself (guest time is already in user)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    busy = user + nice + system + steal
    return float(busy), float(busy + idle + iowait + irq + softirq)


def runqueue_wait(pids: list[int]) -> float:
    """Seconds that the threads of ``pids`` spent runnable but waiting for a CPU, so far
    (/proc/PID/task/TID/schedstat: on-CPU ns, run-queue wait ns, time slices)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total / 1e9


def measure(srv: Running, mode: str, duration: float) -> dict[str, Any]:
    pids = srv.pids()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    wait0 = runqueue_wait(pids)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's CPU, once it is reaped
    busy0, total0 = machine_busy()
    r = run_wrk(srv.port, duration, threads=WRK_THREADS, conns=WRK_CONNS, close=mode == "close")
    busy1, total1 = machine_busy()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    wait = runqueue_wait(pids) - wait0
    wrk_cpu = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    out = r.as_dict()
    out["server_cpu_s"] = round(cpu, 3)
    out["server_cpu_us_per_request"] = round(cpu / r.requests * 1e6, 1) if r.requests else None
    out["wrk_cpu_s"] = round(wrk_cpu, 3)
    # The machine's busy CPU during the run, in cores; what neither the server nor wrk used is
    # someone else's (others work on this machine): a run where they took much is a disturbed one.
    ncpu = os.cpu_count() or 1
    wall = (total1 - total0) / ncpu / TICK if total1 > total0 else 0.0
    busy_s = (busy1 - busy0) / TICK
    out["machine_busy_cores"] = round(busy_s / wall, 2) if wall else None
    # how long the server's threads were ready to run but had no CPU (summed over its threads)
    out["server_runqueue_wait_s"] = round(wait, 3)
    out["others_cores"] = round(max(0.0, busy_s - cpu - wrk_cpu) / wall, 2) if wall else None
    return out


def measure_quietest(srv: Running, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement; if others took more than ``--disturbed`` cores meanwhile, up to
    ``--retries`` more while the ``--retry-budget`` (seconds, for the whole script) lasts, keeping
    the one they disturbed least (every try's req/s is kept in the JSON)."""
    tries = [measure(srv, mode, args.duration)]
    while tries[-1]["others_cores"] is not None and tries[-1]["others_cores"] > args.disturbed:
        if len(tries) > args.retries or args.retry_budget < args.duration:
            break
        args.retry_budget -= args.duration
        tries.append(measure(srv, mode, args.duration))
    best = min(tries, key=lambda t: t["others_cores"] if t["others_cores"] is not None else 0.0)
    best["tries"] = [{k: t[k] for k in ("rps", "others_cores", "machine_busy_cores")} for t in tries]
    best["disturbed"] = best["others_cores"] is not None and best["others_cores"] > args.disturbed
    return best


def run_case(case: Case, args: argparse.Namespace, runs: list[dict[str, Any]], starts: dict[str, Any]) -> None:
    say(f"\n== {case.title}: {len(case.servers)} servers, modes {', '.join(case.modes)}")
    servers: list[Running] = []
    try:
        for label, kind, threads in case.servers:
            srv = Running(label, argv_for(kind, case.target, threads))
            servers.append(srv)
            srv.start()
            starts[f"{case.name}/{label}"] = {"argv": srv.argv, "start_s": round(srv.start_s, 3)}
            say(f"  {label:20} up on port {srv.port} in {srv.start_s:.2f} s: {' '.join(srv.argv[1:])}")
        for srv in servers:  # warm-up: imports done, caches filled, Flask's first request served
            run_wrk(srv.port, args.warmup, threads=WRK_THREADS, conns=WRK_CONNS)
        for rnd in range(args.rounds):
            k = rnd % len(servers)
            for srv in servers[k:] + servers[:k]:
                for mode in case.modes:
                    res = measure_quietest(srv, mode, args)
                    res.update(case=case.name, server=srv.label, mode=mode, round=rnd)
                    runs.append(res)
                    retried = f" (best of {len(res['tries'])})" if len(res["tries"]) > 1 else ""
                    say(
                        f"  round {rnd + 1} {srv.label:20} {mode:10} {res['rps']:9.0f} req/s"
                        f"  non-2xx {res['non2xx']}  socket errors {res['failures'] - res['non2xx']}"
                        f"  others' CPU {res['others_cores']} cores, server waited {res['server_runqueue_wait_s']} s"
                        f" for a CPU{retried}{' DISTURBED' if res['disturbed'] else ''}"
                    )
    finally:
        for srv in servers:
            if srv.proc is not None and srv.proc.poll() is not None:
                say(f"  ! {srv.label} had exited ({srv.proc.returncode}):\n{srv.log_tail()}")
            srv.stop()


# ---- the summary and the targets ------------------------------------------------------------------
def summarize(case: Case, runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in case.modes:
        mine = [r for r in runs if r["case"] == case.name and r["mode"] == mode]
        if not mine:
            continue
        by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in mine:
            by[r["server"]].append(r)
        rps = {s: median([r["rps"] for r in rs]) for s, rs in by.items()}
        sync = rps.get("gunicorn-sync")
        granian = next((v for s, v in rps.items() if s.startswith("granian")), None)
        table: dict[str, Any] = {}
        for label, _, _ in case.servers:
            if label not in rps:
                continue
            rs = by[label]
            cpu = [r["server_cpu_us_per_request"] for r in rs if r["server_cpu_us_per_request"] is not None]
            quiet = [r["rps"] for r in rs if not r.get("disturbed")]
            table[label] = {
                "median_rps": round(rps[label], 1),
                # the runs that others' load left alone (None when every run was disturbed)
                "median_rps_quiet": round(median(quiet), 1) if quiet else None,
                "rps_per_round": [round(r["rps"], 1) for r in sorted(rs, key=lambda r: r["round"])],
                "x_gunicorn_sync": round(rps[label] / sync, 3) if sync else None,
                "x_granian": round(rps[label] / granian, 3) if granian else None,
                "server_cpu_us_per_request": round(median(cpu), 1) if cpu else None,
                "non2xx": sum(r["non2xx"] for r in rs),
                "socket_errors": sum(r["failures"] - r["non2xx"] for r in rs),
                "disturbed_runs": sum(bool(r.get("disturbed")) for r in rs),
                "others_cores_max": max((r["others_cores"] or 0.0) for r in rs),
            }
        out[mode] = table
    return out


def print_summary(case: Case, summary: dict[str, Any]) -> None:
    for mode, table in summary.items():
        say(f"\n{case.title}, {mode} (wrk -t{WRK_THREADS} -c{WRK_CONNS}, median of the rounds)")
        head = f"{'req/s':>9} {'x sync':>7} {'x granian':>9} {'CPU us/req':>10} {'non-2xx':>8} {'sock err':>8} disturb"
        say(f"  {'server':20} {head}")
        for label, row in table.items():

            def fmt(x: float | None, spec: str) -> str:
                return "-" if x is None else format(x, spec)

            say(
                f"  {label:20} {row['median_rps']:9.0f} {fmt(row['x_gunicorn_sync'], '7.2f')}"
                f" {fmt(row['x_granian'], '9.2f')} {fmt(row['server_cpu_us_per_request'], '10.1f')}"
                f" {row['non2xx']:8d} {row['socket_errors']:8d} {row['disturbed_runs']}/{len(row['rps_per_round'])}"
            )


def check_targets(summaries: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets, on the median req/s (the issue's own figures are keep-alive; close is
    checked alongside). Each also carries the same ratio in requests per server CPU-second
    (``cpu_value``: the peer's CPU us/request over liveswap's), a second opinion that others' load
    on the machine disturbs less, and the ratio of the medians of the undisturbed runs alone
    (``quiet_value``, when both have some); the verdict is on the medians of all runs."""
    targets: list[dict[str, Any]] = []

    def row(case: str, mode: str, server: str) -> dict[str, Any] | None:
        r: dict[str, Any] | None = summaries.get(case, {}).get(mode, {}).get(server)
        return r

    def add(name: str, case: str, mode: str, me: str, peer: str, need: float) -> None:
        a, b = row(case, mode, me), row(case, mode, peer)
        if a is None or b is None or not b["median_rps"]:
            return
        value = round(a["median_rps"] / b["median_rps"], 2)
        ca, cb = a["server_cpu_us_per_request"], b["server_cpu_us_per_request"]
        cpu_value = round(cb / ca, 2) if ca and cb else None
        qa, qb = a["median_rps_quiet"], b["median_rps_quiet"]
        quiet_value = round(qa / qb, 2) if qa and qb else None
        disturbed = a["disturbed_runs"] + b["disturbed_runs"]
        targets.append(
            {
                "target": name,
                "mode": mode,
                "what": f"{me} / {peer}",
                "value": value,
                "need": need,
                "met": value >= need,
                "cpu_value": cpu_value,
                "quiet_value": quiet_value,
                "disturbed_runs": disturbed,
            }
        )

    for mode in MODES:
        add("trivial >= 5x gunicorn sync", "trivial", mode, "liveswap", "gunicorn-sync", 5.0)
        add("trivial >= granian", "trivial", mode, "liveswap", "granian-wsgi", 1.0)
        peers = {s: r["median_rps"] for s, r in summaries.get("trivial", {}).get(mode, {}).items()}
        peers = {s: v for s, v in peers.items() if not s.startswith("liveswap")}
        if peers:
            add("trivial ahead of every peer", "trivial", mode, "liveswap", max(peers, key=lambda s: peers[s]), 1.0)
        add("flask >= 1.5x gunicorn sync", "flask", mode, "liveswap", "gunicorn-sync", 1.5)
    add("wait: --threads 8 >= gthread 8", "wait", "keep-alive", "liveswap-t8", "gunicorn-gthread-t8", 1.0)
    return targets


# ---- a profile of liveswap's worker ---------------------------------------------------------------
# frames under every sample (thread and process start-up): left out of the "total" list
_BOOTSTRAP = ("(threading.py:", "<frozen runpy>", "liveswap/template/process.py", "concurrent/futures/thread.py")


def profile(seconds: float, mode: str = "keep-alive") -> dict[str, Any]:
    """py-spy on liveswap's busiest process (its worker) under the trivial app's load (``mode``:
    keep-alive or close), with C
    frames (``--native``: a syscall shows as libc's ``write`` or ``read``, not as the Python line
    that made it): the functions with the most samples, on their own (self) and with what they call
    (total). py-spy's samples over-weight syscalls against /proc's user/system split (printed too):
    read the two together."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not os.path.exists(spy):
        raise BenchError("py-spy is not installed (.venv/bin/pip install py-spy)")
    srv = Running("liveswap", argv_for("liveswap", "bench_wsgi:app", 1))
    try:
        srv.start()
        pids = srv.pids()
        cpu0 = {p: cpu_seconds(p) for p in pids}
        close = mode == "close"
        run_wrk(srv.port, 1.0, threads=WRK_THREADS, conns=WRK_CONNS, close=close)
        worker = max(pids, key=lambda p: cpu_seconds(p) - cpu0[p])
        out = srv.tmp / "profile.txt"
        wrk = wrk_start(srv.port, seconds + 2, WRK_THREADS, WRK_CONNS, close=close)
        time.sleep(0.5)  # let wrk's connections open before sampling
        t0, times0, wait0 = time.perf_counter(), _user_system(worker), runqueue_wait([worker])
        subprocess.run(
            [spy, "record", "-p", str(worker), "-d", str(max(1, int(seconds))), "-r", "500", "--native"]
            + ["-f", "raw", "-o", str(out)],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
        times1, wait1, wall = _user_system(worker), runqueue_wait([worker]), time.perf_counter() - t0
        rps = wrk_finish(wrk, seconds + 2).rps
        own: collections.Counter[str] = collections.Counter()  # by function
        own_lines: collections.Counter[str] = collections.Counter()  # by line
        total: collections.Counter[str] = collections.Counter()  # by function, callees included
        samples = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own_lines[frames[-1]] += n
            own[_function(frames[-1])] += n
            for func in {_function(f) for f in frames}:
                if not any(skip in func for skip in _BOOTSTRAP):
                    total[func] += n
    finally:
        srv.stop()
    if not samples:
        raise BenchError(f"py-spy recorded no sample of pid {worker}")

    def top(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(f, round(n / samples * 100, 1)) for f, n in counter.most_common(k)]

    result: dict[str, Any] = {
        "worker_pid": worker,
        "samples": samples,
        "rps_while_profiled": rps,
        # the worker's CPU while sampled, in cores: time in Python and C (user) and in syscalls (system)
        "worker_user_cores": round((times1[0] - times0[0]) / wall, 2),
        "worker_system_cores": round((times1[1] - times0[1]) / wall, 2),
        "worker_runqueue_wait_share": round((wait1 - wait0) / wall, 2),
        "self": top(own, 15),
        "self_lines": top(own_lines, 10),
        # less the frames under (nearly) every sample: the loop's own run_forever, uv_run and the like
        "total": top(collections.Counter({f: n for f, n in total.items() if n < 0.99 * samples}), 20),
    }
    say(f"\nprofile of liveswap's worker (pid {worker}), trivial app, {mode}, {samples} samples (--native)")
    say(
        f"  {rps:.0f} req/s while sampled (py-spy slows it); the worker used {result['worker_user_cores']} cores"
        f" in user mode and {result['worker_system_cores']} in the kernel (syscalls: reads, writes, epoll),"
        f" and its threads waited for a CPU {result['worker_runqueue_wait_share']:.0%} of the time"
    )
    for title, key in (("self", "self"), ("self, by line", "self_lines"), ("total (with callees)", "total")):
        say(f"  {title}:")
        for f, pct in result[key]:
            say(f"    {pct:5.1f} %  {f}")
    return result


def _user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def _function(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``."""
    head, sep, _ = frame.rpartition(":")
    return f"{head})" if sep and frame.endswith(")") else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="trivial,flask,wait", help="comma-separated: trivial, flask, wait")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of wrk per measurement (whole seconds)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk per server before the rounds")
    parser.add_argument(
        "--disturbed",
        type=float,
        default=0.3,
        help="a run during which other processes took more than this many cores is measured again",
    )
    parser.add_argument("--retries", type=int, default=1, help="at most this many re-measurements of a disturbed run")
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=40.0,
        help="seconds of re-measurements in all (keeps the default run near 3 minutes on a busy machine)",
    )
    parser.add_argument("--profile", type=float, default=0.0, help="also py-spy liveswap's worker for this long")
    parser.add_argument("--profile-modes", default="keep-alive", help="comma-separated: keep-alive, close")
    parser.add_argument(
        "--snapshot",
        metavar="COMMIT",
        help="run liveswap from `git archive COMMIT src` (others may be editing the working tree meanwhile)",
    )
    args = parser.parse_args()
    unknown = [c for c in args.cases.split(",") if c and c not in CASES]
    unknown += [m for m in args.profile_modes.split(",") if m and m not in MODES]
    if unknown:
        known = f"cases: {', '.join(CASES)}; modes: {', '.join(MODES)}"
        parser.error(f"unknown case or profile mode {', '.join(unknown)} ({known})")
    cases = [CASES[c] for c in args.cases.split(",") if c]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    t0 = time.perf_counter()
    snapshot = snapshot_src(args.snapshot) if args.snapshot else None
    try:
        run(args, cases, t0)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)


def run(args: argparse.Namespace, cases: list[Case], t0: float) -> None:
    given = dict(vars(args))  # the retry budget is spent as the runs go
    info = machine_info()
    for dist in ("granian", "flask", "a2wsgi"):
        try:
            from importlib.metadata import version

            info[dist] = version(dist)
        except Exception:  # noqa: BLE001 - informational only
            info[dist] = "?"
    say(f"wsgi_bench: {', '.join(c.name for c in cases)}; {args.rounds} rounds of {args.duration:g} s per server/mode")
    say(f"liveswap imported from {info['liveswap_imported_from']} (git {info['git_commit']}", end="")
    say(f", snapshot of {info['liveswap_snapshot_of'][:10]})" if args.snapshot else ")")
    say(
        f"NOTE: {info['nproc']} cores, shared: wrk (-t{WRK_THREADS}) runs on the same cores as the server and takes"
        " about one of them, so these are figures with the client competing for the CPU; load average at the start"
        f" {' '.join(info['loadavg_start'])} (others' work on this machine adds noise: see machine_busy_cores)"
    )
    runs: list[dict[str, Any]] = []
    starts: dict[str, Any] = {}
    summaries: dict[str, Any] = {}
    for case in cases:
        run_case(case, args, runs, starts)
    for case in cases:
        summaries[case.name] = summarize(case, runs)
        print_summary(case, summaries[case.name])
    targets = check_targets(summaries)
    say("\nissue 10's targets (liveswap = --wsgi-adapter native, the default; keep-alive is the issue's figure)")
    say(
        "  verdict on the median req/s of all runs; 'per CPU-s': the same ratio in requests per server CPU-second;"
        " 'quiet runs only': the medians of the runs others left alone (both second opinions)"
    )
    for t in targets:
        verdict = "met    " if t["met"] else "NOT met"
        note = f"  ({t['disturbed_runs']} disturbed runs)" if t["disturbed_runs"] else ""
        say(
            f"  {verdict}  {t['target']:31} {t['mode']:10} {t['what']:38} = {t['value']:5.2f}"
            f" (need {t['need']:g}; per CPU-s {t['cpu_value']}; quiet runs only {t['quiet_value']}){note}"
        )
    disturbed = sum(bool(r.get("disturbed")) for r in runs)
    if disturbed:
        say(
            f"  ! {disturbed} of {len(runs)} runs were disturbed (others took more than {args.disturbed:g} cores"
            " even after the retries): their req/s measure the machine's load as much as the server"
        )
    prof = {m: profile(args.profile, m) for m in args.profile_modes.split(",") if m} if args.profile > 0 else None
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    elapsed = round(time.perf_counter() - t0, 1)
    path = write_results(
        "wsgi",
        {
            "machine": info,
            "load": f"wrk -t{WRK_THREADS} -c{WRK_CONNS} -d{max(1, round(args.duration))}s, keep-alive and close",
            "note": "wrk shares the machine's cores with the server under test",
            "args": given,
            "retry_budget_left_s": args.retry_budget,
            "servers": starts,
            "runs": runs,
            "summary": summaries,
            "targets": targets,
            "profile": prof,
            "elapsed_s": elapsed,
        },
    )
    say(f"\nelapsed {elapsed} s; load average {' '.join(info['loadavg_end'])} at the end; results: {path}")


if __name__ == "__main__":
    main()
